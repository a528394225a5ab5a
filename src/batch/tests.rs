//! Each test runs on real loopback sockets, with a queue and a process switch of its own
//! (so that a test that fails a ring leaves the others batching), except where it says so.
//! Those in `on_every_backend!` run once per backend: `<name>::io_uring`, `<name>::aio` and
//! `<name>::aio_without_nowait`.

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use futures_util::poll;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use super::queue::{ENTER_BUDGET, ENTER_RETRIES};
use super::*;

/// What a switch told its report.
#[derive(Default)]
struct Told {
    batching: Mutex<Vec<bool>>,
    backend: Mutex<Option<Backend>>,
    submissions: AtomicUsize,
    writes: AtomicUsize,
}

impl Report for Told {
    fn batching(&self, backend: Option<Backend>) {
        self.batching.lock().unwrap().push(backend.is_some());
        *self.backend.lock().unwrap() = backend;
    }

    fn submitted(&self, writes: usize) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }
}

impl Told {
    fn totals(&self) -> (usize, usize) {
        (
            self.submissions.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

/// The backend a test runs on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    IoUring,
    /// AIO as the probe finds it here (`RWF_NOWAIT` where the kernel takes it for sockets).
    Aio,
    /// AIO as a kernel that refuses `RWF_NOWAIT` for sockets gets it (the probe's fallback):
    /// no flags, the sockets' `O_NONBLOCK` the only guard against a blocking write.
    AioWithoutNowait,
}

/// The test as a module of three: `io_uring`, `aio` and `aio_without_nowait`, each calling it
/// with its [`Kind`].
macro_rules! on_every_backend {
    ($(#[$doc:meta])* async fn $name:ident($kind:ident: Kind) $body:block) => {
        $(#[$doc])*
        mod $name {
            use super::*;

            async fn run($kind: Kind) $body

            #[tokio::test(flavor = "current_thread")]
            async fn io_uring() {
                run(Kind::IoUring).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn aio() {
                run(Kind::Aio).await
            }

            #[tokio::test(flavor = "current_thread")]
            async fn aio_without_nowait() {
                run(Kind::AioWithoutNowait).await
            }
        }
    };
    ($(#[$doc:meta])* fn $name:ident($kind:ident: Kind) $body:block) => {
        $(#[$doc])*
        mod $name {
            use super::*;

            fn run($kind: Kind) $body

            #[test]
            fn io_uring() {
                run(Kind::IoUring)
            }

            #[test]
            fn aio() {
                run(Kind::Aio)
            }

            #[test]
            fn aio_without_nowait() {
                run(Kind::AioWithoutNowait)
            }
        }
    };
}

/// A queue of `kind` with its own switch (probed: the process probe passed) and what it
/// told. `None` where that backend does not work here: such a test has nothing to test.
fn test_queue(kind: Kind) -> Option<(Arc<Queue>, Arc<Told>)> {
    let backend = match kind {
        Kind::IoUring => probe::run().map(|()| Backend::IoUring),
        Kind::Aio => aio::probe().map(|rw_flags| Backend::Aio { rw_flags }),
        Kind::AioWithoutNowait => aio::probe_with(0, true)
            .map(|()| Backend::Aio { rw_flags: 0 })
            .map_err(|e| e.to_string()),
    };
    let backend = match backend {
        Ok(backend) => backend,
        Err(why) => {
            eprintln!("{kind:?} unavailable here ({why}): nothing to test");
            return None;
        }
    };
    let switch: &'static Switch = Box::leak(Box::new(Switch::new()));
    switch.probe_with(|| Ok(backend));
    let told = Arc::new(Told::default());
    switch.report_to(told.clone());
    assert_eq!(*told.backend.lock().unwrap(), Some(backend));
    Some((Queue::new(switch)?, told))
}

/// Loopback connections from one listener: keygate's end as a [`Socket`], and the peer.
struct Net(TcpListener);

impl Net {
    async fn new() -> Self {
        Self(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    async fn pair(&self) -> (Socket, TcpStream) {
        let addr = self.0.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), self.0.accept());
        (Socket::new(client.unwrap()), server.unwrap().0)
    }
}

/// Everything `peer` receives until `ours` closes (bounded: a test never hangs here).
async fn all_of(ours: Socket, peer: &mut TcpStream) -> Vec<u8> {
    drop(ours);
    received(peer).await
}

async fn received(peer: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut got))
        .await
        .expect("the connection did not close")
        .unwrap();
    got
}

on_every_backend! {
async fn writes_of_one_turn_arrive_whole_and_in_one_submission(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let mut pairs = Vec::new();
    for _ in 0..5 {
        pairs.push(net.pair().await);
    }
    let sends = pairs.iter().enumerate().map(|(i, (ours, _))| {
        let queue = queue.clone();
        async move {
            let mut buf = format!("request {i}").into_bytes();
            let sent = send_on(&queue, ours, &mut buf).await.unwrap().unwrap();
            (sent, buf)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    assert_eq!(told.totals(), (1, 5), "one submission of five");
    for (i, ((sent, buf), (ours, mut peer))) in results.into_iter().zip(pairs).enumerate() {
        let want = format!("request {i}");
        assert_eq!(sent, want.len());
        assert_eq!(buf, want.as_bytes(), "the buffer comes back");
        assert_eq!(all_of(ours, &mut peer).await, want.as_bytes());
    }
    assert!(queue.is_idle(), "every slot free again");
}
}

/// The process's own queue, as keygate's connections use it.
#[tokio::test(flavor = "current_thread")]
async fn the_threads_queue_sends_and_says_when_batching_is_off() {
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    let mut buf = b"hello".to_vec();
    match send(&ours, &mut buf).await {
        Some(sent) => {
            assert!(available());
            assert_eq!(sent.unwrap(), 5);
            assert_eq!(all_of(ours, &mut peer).await, b"hello");
        }
        None => {
            assert!(!available());
            assert_eq!(buf, b"hello", "not taken");
            assert!(all_of(ours, &mut peer).await.is_empty(), "nothing sent");
        }
    }
}

on_every_backend! {
async fn a_write_dropped_while_queued_is_never_sent_and_the_others_still_go(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    // Either one dropped before the flush: the first queued or the second.
    for drop_first in [true, false] {
        let (a, a_peer) = net.pair().await;
        let (b, b_peer) = net.pair().await;
        let (mut first, mut second) = (b"first".to_vec(), b"second".to_vec());
        let mut one = Box::pin(send_on(&queue, &a, &mut first));
        let mut two = Box::pin(send_on(&queue, &b, &mut second));
        assert!(poll!(&mut one).is_pending());
        assert!(poll!(&mut two).is_pending());
        let (kept, kept_ours, mut kept_peer, gone, mut gone_peer, want) = if drop_first {
            drop(one);
            (two.await, b, b_peer, a, a_peer, &b"second"[..])
        } else {
            drop(two);
            (one.await, a, a_peer, b, b_peer, &b"first"[..])
        };
        assert_eq!(kept.unwrap().unwrap(), want.len());
        assert_eq!(all_of(kept_ours, &mut kept_peer).await, want);
        let rest = all_of(gone, &mut gone_peer).await;
        assert!(rest.is_empty(), "the dropped write was sent: {rest:?}");
        assert!(queue.is_idle());
    }
}
}

on_every_backend! {
async fn a_slot_freed_and_queued_again_in_one_turn_is_sent_once(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, mut a_peer) = net.pair().await;
    let (b, _b_peer) = net.pair().await;
    let (c, mut c_peer) = net.pair().await;
    let (mut first, mut second, mut third) =
        (b"first".to_vec(), b"second".to_vec(), b"third".to_vec());
    let mut lead = Box::pin(send_on(&queue, &a, &mut first));
    let mut cancelled = Box::pin(send_on(&queue, &b, &mut second));
    assert!(poll!(&mut lead).is_pending());
    assert!(poll!(&mut cancelled).is_pending());
    drop(cancelled);
    // Queued in the same turn, into the slot the cancelled write left.
    let mut again = Box::pin(send_on(&queue, &c, &mut third));
    assert!(poll!(&mut again).is_pending());
    let (lead, again) = tokio::join!(lead, again);
    assert_eq!(lead.unwrap().unwrap(), 5);
    assert_eq!(again.unwrap().unwrap(), 5);
    assert_eq!(all_of(c, &mut c_peer).await, b"third", "sent exactly once");
    assert_eq!(all_of(a, &mut a_peer).await, b"first");
}
}

on_every_backend! {
async fn a_full_socket_takes_what_fits_and_the_rest_is_the_callers(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, _peer) = net.pair().await;
    let mut big = vec![1u8; 64 << 20];
    let sent = send_on(&queue, &a, &mut big).await.unwrap().unwrap();
    assert!(sent < big.len(), "64 MiB fit a socket buffer?");
    assert_eq!(big.len(), 64 << 20, "the buffer comes back whole");
    // The kernel may still move bytes on to the peer's receive buffer (and grow it) between
    // two sends: send until nothing fits, which must come, and then lose nothing.
    for round in 0.. {
        let sent = send_on(&queue, &a, &mut big).await.unwrap().unwrap();
        assert_eq!(big.len(), 64 << 20, "the buffer comes back whole");
        if sent == 0 {
            break;
        }
        assert!(round < 1_000, "the socket never filled up");
    }
}
}

on_every_backend! {
/// Case 1 of issue 24: a write whose future is leaked while queued, and whose connection is
/// then closed by its owner. Were the queue to hold only the descriptor number, the next
/// connection would get that number and the next flush would send the leaked write there.
async fn a_forgotten_write_never_reaches_the_connection_that_takes_its_descriptor(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (z, mut z_peer) = net.pair().await;
    let (x, mut x_peer) = net.pair().await;
    let x_fd = x.tcp().as_raw_fd();

    let mut first = b"z's own".to_vec();
    let mut lead = Box::pin(send_on(&queue, &z, &mut first));
    assert!(poll!(&mut lead).is_pending());
    let mut secret = b"x's secret".to_vec();
    let mut forgotten = Box::pin(send_on(&queue, &x, &mut secret));
    assert!(poll!(&mut forgotten).is_pending());
    std::mem::forget(forgotten);
    // The owner is done with x: its handle goes, as when a connection task ends.
    drop(x);
    // The lowest free descriptor number goes to the next socket: x's, had it been closed.
    let y = Socket::new(
        TcpStream::connect(net.0.local_addr().unwrap())
            .await
            .unwrap(),
    );
    let mut y_peer = net.0.accept().await.unwrap().0;
    assert_ne!(
        y.tcp().as_raw_fd(),
        x_fd,
        "x's descriptor was closed while queued"
    );

    let mut own = b"y's own".to_vec();
    let (lead, mine) = tokio::join!(lead, send_on(&queue, &y, &mut own));
    assert_eq!(lead.unwrap().unwrap(), 7);
    assert_eq!(mine.unwrap().unwrap(), 7);
    assert_eq!(
        all_of(y, &mut y_peer).await,
        b"y's own",
        "only y's bytes on y"
    );
    assert_eq!(all_of(z, &mut z_peer).await, b"z's own");
    // The leaked write went to its own connection, which closed once it was reaped.
    assert_eq!(received(&mut x_peer).await, b"x's secret");
}
}

on_every_backend! {
/// Case 1, the other half: a leaked write that was first in its turn (it would have led the
/// turn before) holds up no later write.
async fn a_forgotten_first_write_stalls_no_later_write(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, mut a_peer) = net.pair().await;
    let mut buf = b"forgotten".to_vec();
    let mut forgotten = Box::pin(send_on(&queue, &a, &mut buf));
    assert!(poll!(&mut forgotten).is_pending());
    std::mem::forget(forgotten);
    for turn in 0..3 {
        let (b, mut b_peer) = net.pair().await;
        let want = format!("turn {turn}");
        let mut msg = want.clone().into_bytes();
        let sent = tokio::time::timeout(Duration::from_secs(10), send_on(&queue, &b, &mut msg))
            .await
            .expect("a later write stalled behind a forgotten one");
        assert_eq!(sent.unwrap().unwrap(), want.len());
        assert_eq!(all_of(b, &mut b_peer).await, want.as_bytes());
    }
    assert_eq!(all_of(a, &mut a_peer).await, b"forgotten");
}
}

/// Case 2: a kernel that leaves a non-blocking send in flight, simulated by leaving out
/// `MSG_DONTWAIT` on a blocking socket whose buffer the probe fills. The probe must return
/// (it runs inside a `OnceLock` every thread waits on) and say no.
#[test]
fn the_probe_returns_and_batching_is_off_when_a_send_stays_in_flight() {
    if io_uring::IoUring::new(2).is_err() {
        eprintln!("io_uring unavailable here: nothing to test");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(probe::probe_with(libc::MSG_NOSIGNAL, false)));
    let answer = rx
        .recv_timeout(probe::CANCEL_WAIT + Duration::from_secs(30))
        .expect("the probe did not return");
    let why = answer.expect_err("a send left in flight passed the probe");
    assert!(
        why.contains("did not complete within its submission"),
        "{why}"
    );

    let switch = Switch::new();
    let probed = switch
        .probe_with(|| probe::probe_with(libc::MSG_NOSIGNAL, false).map(|()| Backend::IoUring));
    assert!(probed.is_none());
    assert!(!switch.on(), "batching is off");
    let told = Arc::new(Told::default());
    switch.report_to(told.clone());
    assert_eq!(*told.batching.lock().unwrap(), [false]);
    // The real probe, for contrast: it passes wherever io_uring honours MSG_DONTWAIT.
    assert_eq!(probe::run().is_ok(), available());
}

on_every_backend! {
/// Case 3: a submission fails (simulated: `io_uring_enter` returns `EINVAL`) on one worker
/// while a write on another worker has passed the process-wide check and waits for the
/// queue's lock. The failed ring is never entered again: the stale entry it holds is never
/// submitted, the waiting write is refused, and the failed flush's write comes back unsent.
fn a_failed_submission_with_two_workers_never_submits_a_stale_entry(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let net = first.block_on(Net::new());
    let (x, mut x_peer) = first.block_on(net.pair());
    let (w, mut w_peer) = first.block_on(net.pair());

    let enters = Arc::new(AtomicUsize::new(0));
    let (go, wait) = std::sync::mpsc::channel::<()>();
    queue.lock().fault = Some(Box::new({
        let enters = enters.clone();
        move || {
            // The first call fails, once the other worker is on its way to the lock; any
            // later call would enter the ring for real and submit what is left in it.
            if enters.fetch_add(1, Ordering::SeqCst) > 0 {
                return None;
            }
            go.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            Some(libc::EINVAL)
        }
    }));
    let second = std::thread::spawn({
        let queue = queue.clone();
        move || {
            wait.recv().unwrap();
            runtime().block_on(async move {
                let mut buf = b"w's write".to_vec();
                let result = send_on(&queue, &w, &mut buf).await;
                (result.map(|r| r.map_err(|e| e.to_string())), buf, w)
            })
        }
    });
    let mut buf = b"x's write".to_vec();
    let result = first.block_on(send_on(&queue, &x, &mut buf));
    assert_eq!(result.unwrap().unwrap(), 0, "handed back unsent");
    assert_eq!(buf, b"x's write", "with its buffer");
    let (refused, w_buf, w) = second.join().unwrap();
    assert!(refused.is_none(), "queued on a failed ring: {refused:?}");
    assert_eq!(w_buf, b"w's write", "not taken");

    assert!(!queue.has_ring(), "the failed ring is dropped");
    assert!(queue.is_idle());
    assert_eq!(
        enters.load(Ordering::SeqCst),
        1,
        "entered again after failing"
    );
    assert!(!queue.switch().on(), "the process writes the usual way");
    assert_eq!(*told.batching.lock().unwrap(), [true, false], "said once");
    let mut again = b"later".to_vec();
    assert!(first.block_on(send_on(&queue, &x, &mut again)).is_none());

    // Neither peer got a byte, and x's descriptor number, now free, can go to a new
    // connection that nothing from the failed ring reaches.
    first.block_on(async {
        assert!(all_of(x, &mut x_peer).await.is_empty());
        assert!(all_of(w, &mut w_peer).await.is_empty());
        let (y, mut y_peer) = net.pair().await;
        let Some((healthy, _)) = test_queue(kind) else {
            return;
        };
        let mut own = b"y's own".to_vec();
        assert_eq!(send_on(&healthy, &y, &mut own).await.unwrap().unwrap(), 7);
        assert_eq!(all_of(y, &mut y_peer).await, b"y's own");
    });
}
}

on_every_backend! {
/// Case 4: `EAGAIN` from every `io_uring_enter`. The write comes back unsent after exactly
/// `ENTER_RETRIES` retries, the ring fails, and the process stops batching.
async fn a_persistent_eagain_ends_in_an_unsent_write_after_the_retries(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, mut a_peer) = net.pair().await;
    let enters = Arc::new(AtomicUsize::new(0));
    queue.lock().fault = Some(Box::new({
        let enters = enters.clone();
        move || {
            enters.fetch_add(1, Ordering::SeqCst);
            Some(libc::EAGAIN)
        }
    }));
    let mut buf = b"waits for room".to_vec();
    let result = tokio::time::timeout(Duration::from_secs(10), send_on(&queue, &a, &mut buf))
        .await
        .expect("retried without end");
    assert_eq!(result.unwrap().unwrap(), 0, "unsent");
    assert_eq!(buf, b"waits for room");
    assert_eq!(
        enters.load(Ordering::SeqCst),
        ENTER_RETRIES as usize + 1,
        "the first try and the retries"
    );
    assert!(!queue.has_ring());
    assert_eq!(*told.batching.lock().unwrap(), [true, false]);
    assert!(all_of(a, &mut a_peer).await.is_empty());
}
}

on_every_backend! {
/// Case 4, bounded in time too: retries that each take 5 ms stop at `ENTER_BUDGET`, before
/// the count runs out.
async fn slow_retries_end_at_the_time_budget(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, _a_peer) = net.pair().await;
    let enters = Arc::new(AtomicUsize::new(0));
    queue.lock().fault = Some(Box::new({
        let enters = enters.clone();
        move || {
            enters.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            Some(libc::EINTR)
        }
    }));
    let mut buf = b"interrupted".to_vec();
    let result = send_on(&queue, &a, &mut buf).await;
    assert_eq!(result.unwrap().unwrap(), 0, "unsent");
    assert_eq!(buf, b"interrupted");
    let tries = enters.load(Ordering::SeqCst);
    let most = (ENTER_BUDGET.as_millis() / 5) as usize + 1;
    assert!(
        tries <= most && tries < ENTER_RETRIES as usize + 1,
        "{tries} tries: not ended by the time budget"
    );
}
}

/// Invariant 2: a send the kernel still holds when the budget runs out (simulated: no
/// `MSG_DONTWAIT`, a full socket) is reported lost with an empty buffer, never resent, and
/// the flush returns; a send of the same submission that completed keeps its outcome.
#[tokio::test(flavor = "current_thread")]
async fn a_send_still_in_flight_at_the_budget_is_lost_not_resent() {
    let Some((queue, told)) = test_queue(Kind::IoUring) else {
        return;
    };
    let net = Net::new().await;
    let (a, _a_peer) = net.pair().await;
    let (b, mut b_peer) = net.pair().await;
    // Fill a's send buffer and the peer's receive buffer.
    let chunk = vec![0u8; 1 << 16];
    while a.tcp().try_write(&chunk).is_ok() {}
    // Blocking, so that the kernel waits for room instead of answering EAGAIN.
    socket2::SockRef::from(a.tcp())
        .set_nonblocking(false)
        .unwrap();
    queue.let_sends_wait();
    let (mut stuck, mut fine) = (b"stuck".to_vec(), b"fine".to_vec());
    let both = async {
        tokio::join!(
            send_on(&queue, &a, &mut stuck),
            send_on(&queue, &b, &mut fine)
        )
    };
    let (stuck_result, fine_result) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the flush did not return");
    let e = stuck_result
        .unwrap()
        .expect_err("an in-flight send reported sent");
    assert!(e.to_string().contains("not resent"), "{e}");
    assert!(stuck.is_empty(), "handed back for a resend");
    assert_eq!(
        fine_result.unwrap().unwrap(),
        4,
        "the completed send keeps its outcome"
    );
    assert_eq!(fine, b"fine");
    assert_eq!(all_of(b, &mut b_peer).await, b"fine");
    assert!(!queue.has_ring());
    assert_eq!(*told.batching.lock().unwrap(), [true, false]);
}

/// The AIO backend's second guard against a blocking write: with `RWF_NOWAIT`, a write to a
/// full socket left in blocking mode answers `EAGAIN` inside `io_submit` instead of waiting
/// for room (which would stall the whole event loop). Skipped where the kernel does not take
/// `RWF_NOWAIT` for sockets (the socket's `O_NONBLOCK` is then the only guard).
#[test]
fn an_aio_write_to_a_full_blocking_socket_returns_at_once() {
    let Some((queue, told)) = test_queue(Kind::Aio) else {
        return;
    };
    if !matches!(*told.backend.lock().unwrap(), Some(Backend::Aio { rw_flags }) if rw_flags != 0) {
        eprintln!("no RWF_NOWAIT for sockets here: nothing to test");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let net = Net::new().await;
            let (a, _peer) = net.pair().await;
            let chunk = vec![0u8; 1 << 16];
            while a.tcp().try_write(&chunk).is_ok() {}
            socket2::SockRef::from(a.tcp())
                .set_nonblocking(false)
                .unwrap();
            let mut buf = b"no room".to_vec();
            let sent = send_on(&queue, &a, &mut buf).await;
            tx.send((sent.map(|r| r.map_err(|e| e.to_string())), buf))
                .unwrap();
        });
    });
    let (sent, buf) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("io_submit blocked on a full socket");
    assert_eq!(sent, Some(Ok(0)), "nothing fits");
    assert_eq!(buf, b"no room", "the buffer comes back for the usual write");
    assert_eq!(told.totals(), (1, 1));
}

/// `[server] batch_backend`: `aio` never picks io_uring, `io_uring` never picks AIO, and
/// `auto` picks io_uring first; each probes what it picks for real.
#[test]
fn the_choice_decides_which_backend_is_probed() {
    let uring = probe::run().is_ok();
    let aio = aio::probe().ok();
    let picked = |choice| super::probe(choice).ok();
    assert_eq!(
        picked(Choice::Aio),
        aio.map(|rw_flags| Backend::Aio { rw_flags })
    );
    assert_eq!(picked(Choice::IoUring), uring.then_some(Backend::IoUring));
    let auto = if uring {
        Some(Backend::IoUring)
    } else {
        aio.map(|rw_flags| Backend::Aio { rw_flags })
    };
    assert_eq!(picked(Choice::Auto), auto);
    if let Err(why) = super::probe(Choice::IoUring) {
        assert!(why.contains("AIO: not chosen"), "{why}");
    }
    eprintln!("io_uring works here: {uring}; AIO: {aio:?}");
}

/// The kernel reads `struct iocb` and writes `struct io_event` by these offsets
/// (linux/aio_abi.h).
#[test]
fn the_aio_structs_have_the_kernels_layout() {
    use std::mem::{offset_of, size_of};
    assert_eq!(size_of::<aio::Iocb>(), 64);
    assert_eq!(size_of::<aio::IoEvent>(), 32);
    let iocb = aio::Iocb::write(7, b"abc", 42, 0x8);
    // SAFETY: reads the plain-old-data iocb as its 64 bytes.
    let bytes: [u8; 64] = unsafe { std::mem::transmute(iocb) };
    let at = |offset: usize, len: usize| &bytes[offset..offset + len];
    assert_eq!(at(0, 8), 42u64.to_ne_bytes(), "aio_data");
    let rw_flags = if cfg!(target_endian = "little") {
        12
    } else {
        8
    };
    assert_eq!(at(rw_flags, 4), 0x8i32.to_ne_bytes(), "aio_rw_flags");
    assert_eq!(
        at(16, 2),
        1u16.to_ne_bytes(),
        "aio_lio_opcode: IOCB_CMD_PWRITE"
    );
    assert_eq!(at(20, 4), 7u32.to_ne_bytes(), "aio_fildes");
    assert_eq!(at(32, 8), 3u64.to_ne_bytes(), "aio_nbytes");
    assert_eq!(offset_of!(aio::IoEvent, res), 16);
}

/// Invariant 3 for AIO: `io_submit` takes the first of two writes, and the next call fails
/// (simulated: one iocb a call, then `EINVAL`). The write the kernel took keeps its outcome
/// (sent, never sent again), the other comes back unsent with its buffer, and the context is
/// dropped for good.
#[tokio::test(flavor = "current_thread")]
async fn an_aio_submission_taken_in_part_settles_each_write_by_what_the_kernel_took() {
    let Some((queue, told)) = test_queue(Kind::Aio) else {
        return;
    };
    let net = Net::new().await;
    let (a, mut a_peer) = net.pair().await;
    let (b, mut b_peer) = net.pair().await;
    let calls = Arc::new(AtomicUsize::new(0));
    {
        let mut inner = queue.lock();
        inner.take_at_most = Some(1);
        inner.fault = Some(Box::new({
            let calls = calls.clone();
            move || (calls.fetch_add(1, Ordering::SeqCst) > 0).then_some(libc::EINVAL)
        }));
    }
    let (mut taken, mut left) = (b"taken".to_vec(), b"left".to_vec());
    let (first, second) = tokio::join!(
        send_on(&queue, &a, &mut taken),
        send_on(&queue, &b, &mut left)
    );
    assert_eq!(
        first.unwrap().unwrap(),
        5,
        "the write the kernel took went out"
    );
    assert_eq!(taken, b"taken");
    assert_eq!(second.unwrap().unwrap(), 0, "the other comes back unsent");
    assert_eq!(left, b"left", "with its buffer");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one call took one, the next failed"
    );
    assert!(!queue.has_ring(), "the context is dropped");
    assert!(queue.is_idle());
    assert_eq!(*told.batching.lock().unwrap(), [true, false]);
    assert_eq!(all_of(a, &mut a_peer).await, b"taken", "sent once");
    assert!(
        all_of(b, &mut b_peer).await.is_empty(),
        "nothing of the untaken write"
    );
}

// `Batched`: the writes of hyper's connections, batched at their flush.

/// Writes `parts` to `writer` one call each, then flushes.
async fn burst(writer: &mut Batched<Socket>, parts: &[&[u8]]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    for part in parts {
        writer.write_all(part).await?;
    }
    writer.flush().await
}

on_every_backend! {
async fn flushes_of_one_turn_go_in_one_submission_each_burst_in_order(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let mut writers = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..4 {
        let (ours, peer) = net.pair().await;
        writers.push(Batched::on(ours, queue.clone()));
        peers.push(peer);
    }
    let bursts = writers.iter_mut().enumerate().map(|(i, writer)| async move {
        let body = format!("body {i}");
        burst(writer, &[b"head ", body.as_bytes()]).await.unwrap();
    });
    futures_util::future::join_all(bursts).await;
    assert_eq!(told.totals(), (1, 4), "one submission of four bursts");
    for (i, (writer, mut peer)) in writers.into_iter().zip(peers).enumerate() {
        drop(writer);
        assert_eq!(received(&mut peer).await, format!("head body {i}").as_bytes());
    }
    assert!(queue.is_idle(), "every slot free again");
}
}

on_every_backend! {
async fn what_the_batch_could_not_send_goes_out_before_the_flush_ends(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    // Fill the socket (the peer reads nothing yet), so the batch can take none of the burst.
    let mut filled = 0;
    let chunk = vec![7u8; 64 * 1024];
    for round in 0.. {
        match ours.tcp().try_write(&chunk) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(round < 10_000, "the socket never filled up");
    }
    let mut writer = Batched::on(ours, queue.clone());
    let mut flush = Box::pin(burst(&mut writer, &[b"the ", b"tail"]));
    for _ in 0..3 {
        assert!(poll!(&mut flush).is_pending(), "flushed into a full socket");
    }
    let reader = async {
        let mut got = vec![0u8; filled + 8];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("the tail never came")
            .unwrap();
        got
    };
    let (flushed, got) = tokio::join!(flush, reader);
    flushed.unwrap();
    assert!(got[..filled].iter().all(|&b| b == 7), "the filler first");
    assert_eq!(&got[filled..], b"the tail", "then the burst, whole");
    assert_eq!(told.totals().1, 1, "the burst was queued once, then written the usual way");
    drop(writer);
    assert!(received(&mut peer).await.is_empty(), "nothing sent twice");
    assert!(queue.is_idle());
}
}

on_every_backend! {
async fn a_writer_dropped_mid_flush_sends_nothing_and_stalls_no_one(kind: Kind) {
    let Some((queue, _)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (a, mut a_peer) = net.pair().await;
    let (b, mut b_peer) = net.pair().await;
    let mut dropped = Batched::on(a, queue.clone());
    let mut kept = Batched::on(b, queue.clone());
    {
        let mut flush = Box::pin(burst(&mut dropped, &[b"never"]));
        assert!(poll!(&mut flush).is_pending(), "queued, waiting for the turn");
    }
    drop(dropped);
    burst(&mut kept, &[b"kept"]).await.unwrap();
    drop(kept);
    assert!(received(&mut a_peer).await.is_empty(), "the dropped burst was sent");
    assert_eq!(received(&mut b_peer).await, b"kept");
    assert!(queue.is_idle());
}
}

on_every_backend! {
async fn a_large_burst_goes_the_usual_way_after_what_came_before(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    let mut writer = Batched::on(ours, queue.clone());
    let large: Vec<u8> = (0..writer::BATCH_MAX + 1).map(|i| (i % 251) as u8).collect();
    let reader = async {
        let mut got = vec![0u8; 6 + large.len() + 4];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
            .await
            .expect("the burst never came")
            .unwrap();
        got
    };
    let parts: [&[u8]; 3] = [b"small ", &large, b"tail"];
    let (flushed, got) = tokio::join!(burst(&mut writer, &parts), reader);
    flushed.unwrap();
    assert_eq!(&got[..6], b"small ");
    assert_eq!(&got[6..6 + large.len()], large.as_slice());
    assert_eq!(&got[6 + large.len()..], b"tail", "the tail after the large part");
    // "small " went out the usual way ahead of the large write; "tail" in a batch.
    assert_eq!(told.totals(), (1, 1));
}
}

on_every_backend! {
/// A ring that fails under a flush hands its burst back unsent: the writer sends it the usual
/// way, once.
async fn a_ring_failing_under_a_flush_leaves_the_burst_to_the_usual_way(kind: Kind) {
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    queue.lock().fault = Some(Box::new(|| Some(libc::EAGAIN)));
    let mut writer = Batched::on(ours, queue.clone());
    tokio::time::timeout(Duration::from_secs(10), burst(&mut writer, &[b"still ", b"sent"]))
        .await
        .expect("retried without end")
        .unwrap();
    assert!(!queue.has_ring());
    assert_eq!(*told.batching.lock().unwrap(), [true, false]);
    // The next burst is not queued at all.
    burst(&mut writer, &[b" and more"]).await.unwrap();
    drop(writer);
    assert_eq!(received(&mut peer).await, b"still sent and more");
}
}

/// Where batching is off, a write goes straight to the connection, before any flush.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_not_batched_writes_at_once() {
    use tokio::io::AsyncWriteExt;
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    let mut writer = Batched::new(ours, false);
    writer.write_all(b"at once").await.unwrap();
    let mut got = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut got))
        .await
        .expect("kept until a flush")
        .unwrap();
    assert_eq!(&got, b"at once");
}

on_every_backend! {
/// What was written and never flushed (TLS's last alert) still goes out when the connection is
/// dropped, if the socket takes it.
async fn a_burst_never_flushed_is_sent_when_the_connection_is_dropped(kind: Kind) {
    use tokio::io::AsyncWriteExt;
    let Some((queue, told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    let mut writer = Batched::on(ours, queue.clone());
    writer.write_all(b"last words").await.unwrap();
    drop(writer);
    assert_eq!(received(&mut peer).await, b"last words");
    assert_eq!(told.totals(), (0, 0), "not through the batch");
}
}

on_every_backend! {
/// An idle connection gives back its write buffer (`Batched::shed`), but not while a burst is
/// unsent: that burst still goes out whole at its flush, and later bursts as before.
async fn a_writer_gives_back_its_buffer_only_with_nothing_unsent(kind: Kind) {
    use tokio::io::AsyncWriteExt;
    let Some((queue, _told)) = test_queue(kind) else {
        return;
    };
    let net = Net::new().await;
    let (ours, mut peer) = net.pair().await;
    let mut writer = Batched::on(ours, queue.clone());
    assert!(writer.shed(), "nothing written yet");
    writer.write_all(b"kept ").await.unwrap();
    assert!(!writer.shed(), "a burst is unsent");
    burst(&mut writer, &[b"until ", b"the flush"]).await.unwrap();
    assert!(writer.shed());
    burst(&mut writer, &[b"; then more"]).await.unwrap();
    drop(writer);
    assert_eq!(received(&mut peer).await, b"kept until the flush; then more");
    assert!(queue.is_idle());
}
}
