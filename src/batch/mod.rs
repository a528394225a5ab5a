//! The writes of one event-loop turn, handed to the kernel together in one system call, in
//! both directions: request heads to upstreams, and responses to clients (keygate's own
//! HTTP/1.1 through [`send`]; hyper's HTTP/2 and TLS records at their flush through
//! [`Batched`]), over TCP. Two backends do the submitting: io_uring where it works, else Linux
//! native AIO (`aio.rs`), which container runtimes' default seccomp profiles allow where they
//! refuse io_uring.
//!
//! # Invariants
//!
//! This is the one place where keygate hands raw descriptors and buffer addresses to the
//! kernel, so a mistake here sends one client's bytes to another. Whatever safe code does
//! around it (a write cancelled, its future leaked, its connection closed), these hold, for
//! both backends ("ring" below is the io_uring ring or the AIO context):
//!
//! 1. **The queue owns what the kernel touches.** A queued write holds its buffer and a
//!    reference to its connection ([`Socket`], a counted handle whose descriptor closes with
//!    the last reference). The slot lets go of neither before the send's completion has been
//!    reaped, so the descriptor number a submission names is still that connection's.
//! 2. **No send outlives its submission.** io_uring sends carry `MSG_DONTWAIT`, so each
//!    completes inside `io_uring_enter` (sent, partly sent, or `EAGAIN`). An AIO write to a
//!    socket runs inside `io_submit` and never blocks there (`RWF_NOWAIT` where the kernel
//!    takes it, and the socket's `O_NONBLOCK` always). Each backend's probe checks that once
//!    per process and always returns (a send it finds in flight is cancelled, or its peer
//!    closed). A flush still waits for every completion, for at most `ENTER_BUDGET`: a send
//!    not complete by then is reported lost, its buffer and connection are left to the kernel
//!    (never freed, so never reused; an AIO context is then never destroyed either, as that
//!    would wait for it), and the ring fails (3).
//! 3. **A ring that fails is never entered again.** Failing is decided under the queue's lock
//!    and drops the ring, so entries it still holds die with it; every write not taken by the
//!    kernel goes back to its writer unsent, and a write that passed the process-wide check
//!    just before is refused under the same lock. The process then writes the usual way and
//!    says so once (a log line, and [`Report::batching`] for `keygate_write_batching_enabled`).
//!    io_uring says how many entries it took by what is left in the ring; `io_submit` by its
//!    count (it takes iocbs in order and stops at the first it refuses).
//! 4. **No write waits on another's future.** There is no leader: after one yield, each write
//!    flushes the queue itself if its entry is still there. A future leaked or never polled
//!    again stalls nothing; its entry goes out with the next flush, to its own connection,
//!    which then closes if its owner is gone.
//! 5. **Bounded under the lock.** A flush submits what was queued when it began; `EINTR`,
//!    `EAGAIN` and `EBUSY` are retried at most `ENTER_RETRIES` times within `ENTER_BUDGET`,
//!    then the ring fails (3) and the writes come back unsent.
//! 6. **Nothing is sent twice.** A write comes back with its buffer and how much went out,
//!    or with an error; an outcome nobody knows comes back with an empty buffer, so that
//!    nobody sends it again.
//!
//! # Why
//!
//! A sidecar's upstream usually shares a CPU with it. A write to an idle upstream wakes it,
//! and the kernel lets the woken process run as soon as the writer returns to user space: on
//! the benchmark machine after nearly every `send` (0.55 context switches per request with one
//! `sendto` per write, 0.03 batched; keygate's system time 12 → 8 µs per request,
//! bench/RESULTS.md, 2026-12-04). The upstream then finds one request per wake-up, and keygate
//! is switched out and back in once per request. Writes submitted in one system call all land
//! before keygate returns to user space, so the upstream wakes once and finds them all.
//! Responses to clients go the same way: one system call for the turn, and a client process
//! that is woken once for several of its connections.
//!
//! Why AIO as well: the default seccomp profiles of Docker 25+ and containerd 2.0+ (and so
//! Kubernetes' `RuntimeDefault`) refuse the io_uring calls, and there keygate wrote one call
//! per write, 1.1× HAProxy key+limit instead of about 1.5×. Moby's default profile
//! (`profiles/seccomp/default.json`, as vendored in moby/moby at `b985e23`, 2026-08) allows
//! `io_setup`, `io_submit`, `io_getevents`, `io_destroy` (with `io_cancel` and
//! `io_pgetevents`) in its first, unconditional rule, and lists no `io_uring_*` call;
//! containerd's (`contrib/seccomp/seccomp_default.go`, as stored at `078b6d9`) does the same.
//! For a socket, `io_submit` runs each write synchronously, so it batches the same way: a
//! same-CPU upstream woken by 8 writes per call preempted the writer 0.12 times per write
//! against 0.70 with one `write` each (a standalone check), and keygate with the AIO backend
//! switched 0.03 times per request, as with io_uring, against 0.43–0.53 writing one call at a
//! time, for 4–8 µs less CPU per request (bench/RESULTS.md, 2026-12-06). What it cannot do
//! that io_uring does: an AIO write carries no `MSG_NOSIGNAL` (keygate ignores `SIGPIPE`, as
//! every Rust program does; the probe checks), and completions are read with one
//! `io_getevents` more per flush.
//!
//! # How
//!
//! Each runtime thread has its queue and ring. A write queues itself and yields once, so
//! that every connection with something to write in this turn queues behind it; the first
//! write back flushes them all, the others find theirs done. Whatever was not sent (no room,
//! a failed ring) goes the usual way. The first use probes the backend `[server]
//! batch_backend` allows ([`choose`]; `auto`: io_uring, then AIO). Where neither works (an
//! old kernel, a seccomp profile that forbids both, `kernel.io_uring_disabled` and no AIO),
//! nothing is queued and every write goes the usual way.
//!
//! The submission is hand-rolled on the `io-uring` crate (and on the raw AIO system calls,
//! which `libc` only numbers) rather than an io_uring runtime (tokio-uring, monoio): keygate's
//! connections stay on tokio's epoll loop, and only this one write per turn per connection
//! goes through the ring.

mod aio;
mod probe;
mod queue;
mod socket;
#[cfg(test)]
mod tests;
mod writer;

use std::cell::OnceCell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use queue::Queue;
pub use socket::Socket;
pub use writer::Batched;

const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// The process's batching: probed once, off for good once a ring fails.
static SWITCH: Switch = Switch::new();

/// Sends `buf` on `socket` together with this turn's other writes, once the turn is over.
/// Returns how many bytes went out (0 if none did, e.g. the socket had no room: the caller
/// sends the rest), or `None` when batching is off, in which case nothing was sent.
/// `buf` comes back as it went, except after an error whose outcome is unknown (the kernel
/// may or may not have sent it): then it comes back empty, so that nobody sends it twice.
pub async fn send(socket: &Socket, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
    send_on(&current()?, socket, buf).await
}

/// [`send`] on a given queue (tests use queues of their own).
async fn send_on(
    queue: &Arc<Queue>,
    socket: &Socket,
    buf: &mut Vec<u8>,
) -> Option<io::Result<usize>> {
    let ticket = enqueue(queue.clone(), socket, buf)?;
    tokio::task::yield_now().await;
    let (outcome, sent) = ticket.finish();
    *buf = sent;
    Some(outcome.into_result())
}

/// Queues `buf` (taking it) in `queue` for this turn's batch; `None`, `buf` untouched, where
/// batching is off.
fn enqueue(queue: Arc<Queue>, socket: &Socket, buf: &mut Vec<u8>) -> Option<Ticket> {
    if !queue.switch().on() {
        return None;
    }
    Ticket::new(queue, socket, buf)
}

/// A transport whose writes can join a batch: plain TCP (TLS encrypts in user space first).
pub trait Batchable {
    fn socket(&self) -> Option<&Socket>;
}

impl Batchable for Socket {
    fn socket(&self) -> Option<&Socket> {
        Some(self)
    }
}

impl<T: Batchable + ?Sized> Batchable for Box<T> {
    fn socket(&self) -> Option<&Socket> {
        (**self).socket()
    }
}

impl<IO> Batchable for tokio_rustls::server::TlsStream<IO> {
    fn socket(&self) -> Option<&Socket> {
        None
    }
}

/// Whether batched writes work in this process (probed on the first call).
pub fn available() -> bool {
    SWITCH.on()
}

/// Which kernel interface submits the batches, as `[server] batch_backend` chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    /// io_uring where it works, else AIO where that works, else no batching.
    #[default]
    Auto,
    /// io_uring or no batching.
    IoUring,
    /// AIO or no batching, even where io_uring works (to compare, or to test).
    Aio,
}

/// The interface that submits this process's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    /// Linux AIO, with the `aio_rw_flags` its probe settled on.
    Aio {
        rw_flags: i32,
    },
}

impl Backend {
    /// As logs and the `backend` label of `keygate_write_batching_backend` say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Aio { .. } => "aio",
        }
    }
}

/// Sets which backend the probe may pick. Takes effect only before the first probe (the
/// server calls it before anything is written); a later, different choice is logged and
/// ignored.
pub fn choose(choice: Choice) {
    SWITCH.choose(choice);
}

/// What batching tells whoever watches it: the server points it at `/metrics`.
pub trait Report: Send + Sync {
    /// The backend after a successful probe; `None` when the probe failed or, for good, a
    /// submission did.
    fn batching(&self, backend: Option<Backend>);
    /// One submission carried `writes` writes.
    fn submitted(&self, writes: usize);
}

/// Reports to `report` from now on (the last caller wins: one server per process), and tells
/// it at once whether batching is on, probing if that was not done yet.
pub fn report_to(report: Arc<dyn Report>) {
    SWITCH.report_to(report);
}

/// This thread's queue, made on first use; `None` where batching is off.
fn current() -> Option<Arc<Queue>> {
    thread_local! {
        static QUEUE: OnceCell<Option<Arc<Queue>>> = const { OnceCell::new() };
    }
    QUEUE.with(|q| {
        q.get_or_init(|| {
            if !SWITCH.on() {
                return None;
            }
            let queue = Queue::new(&SWITCH);
            if queue.is_none() {
                tracing::info!(
                    "writes of this thread are not batched (no io_uring ring or AIO context)"
                );
            }
            queue
        })
        .clone()
    })
}

/// Whether the process batches, through what, and whom it tells.
pub(crate) struct Switch {
    choice: OnceLock<Choice>,
    probed: OnceLock<Option<Backend>>,
    failed: AtomicBool,
    report: RwLock<Option<Arc<dyn Report>>>,
}

impl Switch {
    const fn new() -> Self {
        Self {
            choice: OnceLock::new(),
            probed: OnceLock::new(),
            failed: AtomicBool::new(false),
            report: RwLock::new(None),
        }
    }

    fn choose(&self, choice: Choice) {
        let chosen = *self.choice.get_or_init(|| choice);
        // The first probe fixes the choice too (to `Auto` if none was made).
        if chosen != choice {
            tracing::warn!(
                ?chosen,
                ?choice,
                "the batch backend was chosen or probed before: restart keygate to change it"
            );
        }
    }

    /// Batching is on: the probe passed (it runs on the first call) and no submission failed.
    fn on(&self) -> bool {
        self.backend().is_some()
    }

    /// The backend in use, if batching is on.
    fn backend(&self) -> Option<Backend> {
        let choice = *self.choice.get_or_init(Choice::default);
        self.probe_with(|| probe(choice))
            .filter(|_| !self.failed.load(Ordering::Relaxed))
    }

    /// The probe's answer, from `probe` if it is the first to ask.
    fn probe_with(&self, probe: impl FnOnce() -> Result<Backend, String>) -> Option<Backend> {
        *self.probed.get_or_init(|| match probe() {
            Ok(backend) => {
                tracing::info!(backend = backend.name(), "writes are batched");
                Some(backend)
            }
            Err(why) => {
                tracing::info!(why, "writes are not batched (io_uring unavailable)");
                None
            }
        })
    }

    /// A submission failed: every write goes the usual way from now on. Said once.
    fn fail(&self, why: &str) {
        if self.failed.swap(true, Ordering::Relaxed) {
            return;
        }
        let backend = self.probed.get().copied().flatten().map(Backend::name);
        tracing::warn!(
            why,
            backend,
            "a batched submission failed; writes are no longer batched"
        );
        if let Some(report) = self.reporter() {
            report.batching(None);
        }
    }

    fn submitted(&self, writes: usize) {
        if let Some(report) = self.reporter() {
            report.submitted(writes);
        }
    }

    fn report_to(&self, report: Arc<dyn Report>) {
        // Told under the lock: a ring failing meanwhile waits for it in `fail`, then tells
        // this report, so the last word is always the true one.
        let mut slot = self.report.write().unwrap_or_else(PoisonError::into_inner);
        report.batching(self.backend());
        *slot = Some(report);
    }

    fn reporter(&self) -> Option<Arc<dyn Report>> {
        self.report
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The backend `choice` allows that works here, io_uring first; `Err` says why none does.
fn probe(choice: Choice) -> Result<Backend, String> {
    let uring = match choice {
        Choice::Aio => Err("not chosen ([server] batch_backend = \"aio\")".to_owned()),
        _ => probe::run(),
    };
    let why_not_uring = match uring {
        Ok(()) => return Ok(Backend::IoUring),
        Err(why) => why,
    };
    if choice == Choice::IoUring {
        return Err(format!("io_uring: {why_not_uring}; AIO: not chosen"));
    }
    match aio::probe() {
        Ok(rw_flags) => {
            tracing::info!(why_not_uring, "io_uring unavailable: writes go through AIO");
            Ok(Backend::Aio { rw_flags })
        }
        Err(why) => Err(format!("io_uring: {why_not_uring}; AIO: {why}")),
    }
}

/// One queued write, from its writer's side.
struct Ticket {
    queue: Arc<Queue>,
    slot: usize,
    finished: bool,
}

impl Ticket {
    /// Queues `buf` (taking it); `None` if this thread's ring failed, `buf` untouched.
    fn new(queue: Arc<Queue>, socket: &Socket, buf: &mut Vec<u8>) -> Option<Self> {
        let slot = queue.lock().enqueue(socket.share(), buf)?;
        Some(Self {
            queue,
            slot,
            finished: false,
        })
    }

    /// Flushes the queue unless another write already did, and takes this write's outcome.
    fn finish(mut self) -> (queue::Outcome, Vec<u8>) {
        let mut released = Vec::new();
        let done = {
            let mut inner = self.queue.lock();
            if inner.is_queued(self.slot) {
                inner.flush(self.queue.switch(), &mut released);
            }
            inner.collect(self.slot)
        };
        self.finished = true;
        // Connections of leaked writes, whose owners are gone: closed outside the lock.
        drop(released);
        done
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped before it finished (its request was cancelled): out of the queue before its
        // socket can close.
        let socket = self.queue.lock().cancel(self.slot);
        drop(socket);
    }
}
