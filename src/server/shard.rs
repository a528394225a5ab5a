//! `[server] sharded`: an event loop per worker thread, each accepting its own clients on the
//! public port, instead of one runtime whose workers steal tasks from each other.
//!
//! # Why
//!
//! On the 2-core benchmark machine two workers sharing one work-stealing runtime served
//! 0.88–0.93× what one worker served on one core, while two single-worker processes, one per
//! core, served 1.16–1.32× (bench/RESULTS.md, 2026-12-06 16:06 and 16:19): work stealing moves
//! a connection's wake-ups between cores, and every shared queue is a cache line both cores
//! fight over. A shard is what the second process was, inside one process: its own thread,
//! its own current-thread runtime, its own listening socket on the public address.
//!
//! # How
//!
//! Every shard's socket, the main one's too, is bound with `SO_REUSEPORT`: the kernel hashes
//! each new connection to one of them, and the connection stays on that shard's thread for
//! its life (its HTTP/2 streams too). The main thread is shard 0 and keeps everything else
//! (the admin, management and plain listeners, the cache's and the store's background tasks,
//! reloads). The key cache, the limiter, the connection cap and the metrics are the same
//! objects for every shard; the parking of idle upstream connections has a shelf per shard
//! ([`crate::forward::upstream::enter_shard`]).
//!
//! Each shard thread is started by [`Shard::spawn`] at bind time, builds its runtime there and
//! reports back, then waits for its accept loop. A shard never stops before the main thread
//! is through: a Redis connection or a pooled upstream connection opened on one shard's
//! event loop may be used by another until the end, so its loop must keep turning.
//!
//! # What it costs
//!
//! The kernel balances connections, not load: a few long-lived connections (HTTP/2 clients
//! multiplexing everything over one) can leave one shard busy and the others idle, where a
//! work-stealing runtime would spread their streams. With h2load's 50 connections × 10
//! streams the shards served a median 0.89× the shared runtime (bench/RESULTS.md,
//! 2026-12-06 22:25). Sharding suits many HTTP/1.1 connections; `sharded = false` (the
//! default) suits HTTP/2 clients and few connections.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;

/// What a shard runs: its accept loop, given its listener inside its runtime.
type Job = Box<dyn FnOnce(TcpListener) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A shard's thread, started and waiting for its job.
pub(super) struct Shard {
    index: usize,
    job: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("cannot listen on {addr} for shard {index} (`SO_REUSEPORT`): {source}")]
    Listen {
        index: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the thread of shard {index}: {source}")]
    Start {
        index: usize,
        source: std::io::Error,
    },
}

impl Shard {
    /// Binds shard `index`'s socket on `addr` (the main listener's resolved address) and
    /// starts its thread and runtime; fails if either cannot be had.
    pub(super) async fn spawn(index: usize, addr: SocketAddr) -> Result<Self, ShardError> {
        let listener = super::listen(addr, true)
            .and_then(TcpListener::into_std)
            .map_err(|source| ShardError::Listen {
                index,
                addr,
                source,
            })?;
        let start = |source| ShardError::Start { index, source };
        let (job, jobs) = mpsc::channel::<Job>();
        let (ready, started) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("keygate-shard-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let listener = {
                    let _entered = runtime.enter();
                    TcpListener::from_std(listener)
                };
                let listener = match listener {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                crate::forward::upstream::enter_shard(index);
                // No job: the server was dropped without running.
                if let Ok(job) = jobs.recv() {
                    runtime.block_on(job(listener));
                }
            })
            .map_err(start)?;
        match started.await {
            Ok(Ok(())) => Ok(Self { index, job, thread }),
            Ok(Err(e)) => Err(start(e)),
            Err(_) => Err(start(std::io::Error::other("the thread ended at start"))),
        }
    }

    pub(super) fn index(&self) -> usize {
        self.index
    }

    /// Hands the shard its accept loop; the thread ends when the future does.
    pub(super) fn run<F, Fut>(self, job: F) -> Running
    where
        F: FnOnce(TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let job: Job = Box::new(move |listener| -> Pin<Box<dyn Future<Output = ()>>> {
            Box::pin(job(listener))
        });
        if self.job.send(job).is_err() {
            tracing::error!(
                shard = self.index,
                "shard thread gone before it could serve"
            );
        }
        Running(self.thread)
    }
}

/// A shard's thread, serving.
pub(super) struct Running(JoinHandle<()>);

impl Running {
    /// Waits for the thread to end, off the async threads.
    pub(super) async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}
