//! Batched writes (`keygate::batch`): what it costs per write that the queue owns a reference to
//! each connection it sends on, against what a `dup` of the descriptor per write would cost,
//! and a whole turn of batched writes against the same writes one `send` each, for scale:
//! `cargo bench --bench batch`. Loopback sockets, one thread.

use std::hint::black_box;
use std::os::fd::AsFd;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keygate::batch::{self, Socket};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const TURN: usize = 16;
/// About a request head.
const WRITE: usize = 300;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` loopback connections; the peers read and drop whatever arrives, in tasks on `rt`.
fn connections(rt: &Runtime, n: usize) -> Vec<TcpStream> {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ours = Vec::new();
        for _ in 0..n {
            let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let mut peer = server.unwrap().0;
            tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(peer.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            ours.push(client.unwrap());
        }
        ours
    })
}

fn ownership(c: &mut Criterion) {
    let rt = runtime();
    let tcp = connections(&rt, 1).pop().unwrap();
    let mut group = c.benchmark_group("batch_ownership_per_write");
    // The alternative: the queue holds a duplicate descriptor (fcntl F_DUPFD_CLOEXEC + close).
    group.bench_function("dup_and_close", |b| {
        b.iter(|| drop(black_box(tcp.as_fd().try_clone_to_owned().unwrap())))
    });
    // What keygate does: a queued write holds an `Arc` of the stream (clone, drop), and the
    // connection's next read or write checks it is the only one (`Arc::get_mut`).
    let mut shared = Arc::new(tcp);
    group.bench_function("arc_clone_drop_and_unique_check", |b| {
        b.iter(|| {
            drop(black_box(shared.clone()));
            black_box(Arc::get_mut(&mut shared).is_some())
        })
    });
    group.finish();
}

fn turn(c: &mut Criterion) {
    let rt = runtime();
    let streams = connections(&rt, TURN);
    let mut group = c.benchmark_group("batch_turn_of_16_writes");
    group.throughput(Throughput::Elements(TURN as u64));
    group.bench_function("one_send_each", |b| {
        let head = vec![b'x'; WRITE];
        b.iter(|| {
            rt.block_on(async {
                for tcp in &streams {
                    black_box(tcp.try_write(&head).ok());
                }
                // The peers read, as they do in the batched case.
                tokio::task::yield_now().await;
            })
        })
    });
    if !batch::available() {
        eprintln!("io_uring unavailable here: no batched figures");
        return;
    }
    let sockets: Vec<Socket> = streams.into_iter().map(Socket::new).collect();
    let mut bufs: Vec<Vec<u8>> = (0..TURN).map(|_| vec![b'x'; WRITE]).collect();
    group.bench_function("one_submission", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sends = sockets
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(socket, buf)| batch::send(socket, buf));
                for sent in futures_util::future::join_all(sends).await {
                    black_box(sent.unwrap().unwrap());
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, ownership, turn);
criterion_main!(benches);
