//! The writes of one event-loop turn, handed to the kernel together in one system call:
//! request heads to the upstream and response heads to HTTP/1.1 clients, over plain TCP.
//!
//! Why: a sidecar's upstream usually shares a CPU with it. A write to an idle upstream wakes
//! it, and the kernel lets the woken process run as soon as the writer returns to user space:
//! on the benchmark machine after nearly every `send`. The upstream then finds one request per
//! wake-up, and keygate is switched out and back in once per request. Writes submitted in one
//! `io_uring_enter` all land before keygate returns to user space, so the upstream wakes once
//! and finds them all. Responses to clients go the same way: one system call for the turn,
//! and a client process that is woken once for several of its connections.
//!
//! How: the first write of a turn to get here leads the turn. It lets the event loop run
//! once more (`yield_now`), so that every connection with something to write in this turn
//! queues it behind, and then submits them all. Sends carry `MSG_DONTWAIT`: each one completes
//! within the submission (sent, partly sent, or `EAGAIN`), so no buffer is in the kernel's
//! hands once a flush returns, and whatever was not sent goes the usual way. A probe at
//! first use checks exactly that; where it fails, or io_uring is missing (an old kernel, a
//! seccomp profile that forbids it, `kernel.io_uring_disabled`), nothing is queued and every
//! write goes the usual way (upstream writes one turn late, as before).
//!
//! Each runtime thread has its queue. A queued write owns its buffer, and a write dropped
//! while queued (its request cancelled) takes itself out first, before its socket can close,
//! so a flush never sends on a descriptor nobody owns; a leader dropped before it flushed
//! flushes as it goes.

use std::cell::OnceCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Poll, Waker};

use io_uring::{IoUring, opcode, types};
use tokio::net::TcpStream;

/// Writes submitted per system call; a longer queue takes more than one.
const RING_ENTRIES: u32 = 256;
const FLAGS: i32 = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
/// Set when a submission failed in a way that leaves the ring's state unknown: from then on
/// every write goes the usual way.
static BROKEN: AtomicBool = AtomicBool::new(false);
/// io_uring submissions made and the writes they carried, for `/metrics`.
static SUBMISSIONS: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Submissions made so far and the writes they carried.
pub fn totals() -> (u64, u64) {
    (
        SUBMISSIONS.load(Ordering::Relaxed),
        WRITES.load(Ordering::Relaxed),
    )
}

/// Sends `buf` on `tcp` together with this turn's other writes, once the turn is over. Returns how many bytes went out (0 if the socket had no room; the caller sends the
/// rest), or `None` when batching is not available here, in which case nothing was sent.
/// `buf` comes back as it went, except after an error whose outcome is unknown (the kernel
/// may or may not have sent it): then it comes back empty, so that nobody sends it twice.
pub async fn send(tcp: &TcpStream, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
    if BROKEN.load(Ordering::Relaxed) {
        return None;
    }
    let queue = Queue::current()?;
    let mut ticket = Ticket::new(queue, tcp.as_raw_fd(), std::mem::take(buf));
    if ticket.leader {
        tokio::task::yield_now().await;
        ticket.lead();
    }
    let (result, sent) = poll_fn(|cx| ticket.poll_done(cx.waker())).await;
    *buf = sent;
    Some(result)
}

/// A transport whose writes can join a batch: plain TCP (TLS encrypts in user space first).
pub trait Batchable {
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Batchable for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<IO> Batchable for tokio_rustls::server::TlsStream<IO> {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// Whether batched writes work here (probed once per process).
pub fn available() -> bool {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    let probed = PROBED.get_or_init(|| {
        let result = probe();
        match &result {
            Ok(()) => tracing::debug!("writes are batched through io_uring"),
            Err(why) => tracing::info!(why, "writes are not batched (io_uring unavailable)"),
        }
        result
    });
    probed.is_ok()
}

/// One thread's queue of writes waiting for the end of the turn.
struct Queue {
    inner: Mutex<Inner>,
}

struct Inner {
    ring: IoUring,
    slots: Vec<Slot>,
    /// Slots no ticket holds, to be reused.
    free: Vec<usize>,
    /// Slots queued this turn, in order.
    queued: Vec<usize>,
    /// A request of this turn is waiting to submit the queue.
    led: bool,
}

enum Slot {
    Free,
    Queued {
        fd: RawFd,
        buf: Vec<u8>,
        waker: Option<Waker>,
    },
    Done {
        buf: Vec<u8>,
        result: i32,
    },
}

impl Queue {
    /// This thread's queue, made on first use; `None` where batching is unavailable.
    fn current() -> Option<Arc<Queue>> {
        thread_local! {
            static QUEUE: OnceCell<Option<Arc<Queue>>> = const { OnceCell::new() };
        }
        QUEUE.with(|q| {
            q.get_or_init(|| {
                if !available() {
                    return None;
                }
                let ring = IoUring::new(RING_ENTRIES).ok()?;
                Some(Arc::new(Queue {
                    inner: Mutex::new(Inner {
                        ring,
                        slots: Vec::new(),
                        free: Vec::new(),
                        queued: Vec::new(),
                        led: false,
                    }),
                }))
            })
            .clone()
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Submits every queued write and wakes the requests waiting on them.
    fn flush(&self) {
        let mut wakers = Vec::new();
        {
            let mut inner = self.lock();
            inner.led = false;
            let queued = std::mem::take(&mut inner.queued);
            let mut rest = &queued[..];
            while !rest.is_empty() {
                let (pushed, taken) = inner.push(rest);
                if taken == 0 {
                    // No room at all (only after an abandoned submission): these were never
                    // handed to the kernel, so their requests send them themselves.
                    settle(&mut inner.slots, rest, -libc::EAGAIN, &mut wakers);
                    break;
                }
                rest = &rest[taken..];
                if pushed > 0 {
                    SUBMISSIONS.fetch_add(1, Ordering::Relaxed);
                    WRITES.fetch_add(pushed as u64, Ordering::Relaxed);
                    inner.complete(pushed, &mut wakers);
                }
            }
            // The list's allocation is kept for the next turn.
            inner.queued = queued;
            inner.queued.clear();
        }
        for waker in wakers {
            waker.wake();
        }
    }
}

impl Inner {
    /// Puts the writes of the slots `ids` into the submission queue, as many as fit.
    /// Returns how many were pushed and how many of `ids` were dealt with.
    fn push(&mut self, ids: &[usize]) -> (usize, usize) {
        let mut sq = self.ring.submission();
        let mut pushed = 0;
        let mut taken = 0;
        for &at in ids {
            if let Slot::Queued { fd, buf, .. } = &self.slots[at] {
                let entry = opcode::Send::new(types::Fd(*fd), buf.as_ptr(), len32(buf))
                    .flags(FLAGS)
                    .build()
                    .user_data(at as u64);
                // SAFETY: the buffer and the descriptor stay valid until the send completes:
                // the slot owns the buffer and is freed only under this queue's lock, which
                // the caller holds until `complete` has seen every pushed send finish.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                pushed += 1;
            }
            taken += 1;
        }
        (pushed, taken)
    }

    /// Submits `pushed` sends and collects their results. Each completes within the
    /// submission (MSG_DONTWAIT, checked by `probe`), so the wait is only a guarantee.
    fn complete(&mut self, pushed: usize, wakers: &mut Vec<Waker>) {
        let mut done = 0;
        while done < pushed {
            if let Err(e) = self.ring.submit_and_wait(pushed - done) {
                let retry = matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::ResourceBusy
                );
                if !retry {
                    tracing::warn!(error = %e, "io_uring submission failed; writes are no longer batched");
                    self.abandon(wakers);
                    return;
                }
            }
            for cqe in self.ring.completion() {
                done += 1;
                settle(
                    &mut self.slots,
                    &[cqe.user_data() as usize],
                    cqe.result(),
                    wakers,
                );
            }
        }
    }

    /// After a failed submission it is unknown which sends the kernel took: their buffers
    /// are left to it (leaked), their requests told nothing can be said, and batching ends.
    fn abandon(&mut self, wakers: &mut Vec<Waker>) {
        BROKEN.store(true, Ordering::Relaxed);
        for slot in &mut self.slots {
            if let Slot::Queued { buf, .. } = slot {
                std::mem::forget(std::mem::take(buf));
            }
        }
        let all: Vec<usize> = (0..self.slots.len()).collect();
        settle(&mut self.slots, &all, -libc::ECANCELED, wakers);
    }
}

/// The writes of the slots `ids` that are still queued are done, with `result`.
fn settle(slots: &mut [Slot], ids: &[usize], result: i32, wakers: &mut Vec<Waker>) {
    for &at in ids {
        let slot = &mut slots[at];
        if let Slot::Queued { buf, waker, .. } = std::mem::replace(slot, Slot::Free) {
            wakers.extend(waker);
            *slot = Slot::Done { buf, result };
        }
    }
}

/// One queued write, from the request's side.
struct Ticket {
    queue: Arc<Queue>,
    slot: usize,
    leader: bool,
    finished: bool,
}

impl Ticket {
    fn new(queue: Arc<Queue>, fd: RawFd, buf: Vec<u8>) -> Self {
        let (slot, leader) = {
            let mut inner = queue.lock();
            let queued = Slot::Queued {
                fd,
                buf,
                waker: None,
            };
            let slot = match inner.free.pop() {
                Some(free) => {
                    inner.slots[free] = queued;
                    free
                }
                None => {
                    inner.slots.push(queued);
                    inner.slots.len() - 1
                }
            };
            inner.queued.push(slot);
            let leader = !std::mem::replace(&mut inner.led, true);
            (slot, leader)
        };
        Self {
            queue,
            slot,
            leader,
            finished: false,
        }
    }

    fn lead(&mut self) {
        self.leader = false;
        self.queue.flush();
    }

    fn poll_done(&mut self, waker: &Waker) -> Poll<(io::Result<usize>, Vec<u8>)> {
        let mut inner = self.queue.lock();
        let slot = &mut inner.slots[self.slot];
        if let Slot::Queued { waker: w, .. } = slot {
            match w {
                Some(w) if w.will_wake(waker) => {}
                _ => *w = Some(waker.clone()),
            }
            return Poll::Pending;
        }
        self.finished = true;
        let done = std::mem::replace(slot, Slot::Free);
        inner.free.push(self.slot);
        match done {
            Slot::Done { buf, result } => {
                let result = match result {
                    n if n >= 0 => Ok(n as usize),
                    e if e == -libc::EAGAIN => Ok(0),
                    e => Err(io::Error::from_raw_os_error(-e)),
                };
                Poll::Ready((result, buf))
            }
            // Only the ticket frees its slot; were it ever otherwise, the write would be
            // lost, never sent twice.
            _ => Poll::Ready((Err(io::Error::other("batched write lost")), Vec::new())),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped while queued (the request was cancelled): out of the queue before its
        // socket can close. A leader that had not flushed yet flushes for the others.
        {
            let mut inner = self.queue.lock();
            inner.slots[self.slot] = Slot::Free;
            // Out of this turn's list too: the slot may be queued again before the flush.
            let slot = self.slot;
            inner.queued.retain(|&at| at != slot);
            inner.free.push(slot);
        }
        if self.leader {
            self.queue.flush();
        }
    }
}

fn len32(buf: &[u8]) -> u32 {
    // Request heads are capped far below this; a longer buffer is sent in part and the
    // caller sends the rest.
    u32::try_from(buf.len()).unwrap_or(u32::MAX)
}

/// Checks that a `MSG_DONTWAIT` send through io_uring completes within the submission, even
/// when the socket has no room: otherwise a flush could leave a buffer in the kernel's hands.
fn probe() -> Result<(), String> {
    use std::os::unix::net::UnixStream;
    let mut ring = IoUring::new(2).map_err(|e| format!("io_uring: {e}"))?;
    let (a, _b) = UnixStream::pair().map_err(|e| e.to_string())?;
    a.set_nonblocking(true).map_err(|e| e.to_string())?;
    // More than a socket buffer: the first send fills it, the second finds no room.
    let buf = vec![0u8; 4 << 20];
    for want_room in [true, false] {
        let entry = opcode::Send::new(types::Fd(a.as_raw_fd()), buf.as_ptr(), len32(&buf))
            .flags(FLAGS)
            .build();
        // SAFETY: `buf` and `a` outlive the ring's use of them: the send completes within
        // `submit` or is checked for below, and the ring is dropped before either.
        unsafe { ring.submission().push(&entry) }.map_err(|e| e.to_string())?;
        ring.submit().map_err(|e| format!("io_uring_enter: {e}"))?;
        let Some(cqe) = ring.completion().next() else {
            // Still in flight: wait for it (the socket pair is ours), then say no.
            drop(a);
            let _ = ring.submit_and_wait(1);
            return Err("a non-blocking send did not complete within its submission".into());
        };
        match (want_room, cqe.result()) {
            (true, n) if n > 0 => {}
            (false, e) if e == -libc::EAGAIN => {}
            (_, r) => return Err(format!("unexpected send result {r}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_of_one_turn_arrive_whole_and_in_one_submission() {
        if !available() {
            eprintln!("io_uring unavailable here: nothing to test");
            return;
        }
        let mut pairs = Vec::new();
        for _ in 0..5 {
            pairs.push(pair().await);
        }
        let sends = pairs.iter().enumerate().map(|(i, (client, _))| async move {
            let mut buf = format!("request {i}").into_bytes();
            let sent = send(client, &mut buf).await.unwrap().unwrap();
            (sent, buf)
        });
        let before = totals();
        let results = futures_util::future::join_all(sends).await;
        let after = totals();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 5),
            "one submission of five"
        );
        for (i, ((sent, buf), (_, server))) in results.into_iter().zip(&mut pairs).enumerate() {
            let want = format!("request {i}");
            assert_eq!(sent, want.len());
            assert_eq!(buf, want.as_bytes(), "the buffer comes back");
            let mut got = vec![0u8; want.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want.as_bytes());
        }
        let queue = Queue::current().unwrap();
        let inner = queue.lock();
        assert!(!inner.led);
        assert!(inner.slots.iter().all(|s| matches!(s, Slot::Free)));
        assert_eq!(
            inner.free.len(),
            inner.slots.len(),
            "every slot back on the free list"
        );
        assert!(inner.queued.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_dropped_while_queued_is_never_sent_and_the_others_still_go() {
        if !available() {
            return;
        }
        // Either one dropped before the flush: the leader (which then flushes on its way
        // out) or the follower.
        for drop_leader in [true, false] {
            let (a, a_peer) = pair().await;
            let (b, b_peer) = pair().await;
            let (mut first, mut second) = (b"first".to_vec(), b"second".to_vec());
            let mut lead = Box::pin(send(&a, &mut first));
            let mut follow = Box::pin(send(&b, &mut second));
            assert!(futures_util::poll!(&mut lead).is_pending());
            assert!(futures_util::poll!(&mut follow).is_pending());
            let (kept, mut kept_peer, mut gone_peer, want) = if drop_leader {
                drop(lead);
                drop(a);
                (follow.await, b_peer, a_peer, &b"second"[..])
            } else {
                drop(follow);
                drop(b);
                (lead.await, a_peer, b_peer, &b"first"[..])
            };
            assert_eq!(kept.unwrap().unwrap(), want.len());
            let mut got = vec![0u8; want.len()];
            kept_peer.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            let mut rest = Vec::new();
            gone_peer.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "the dropped write was sent: {rest:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slot_freed_and_queued_again_in_one_turn_is_sent_once() {
        if !available() {
            return;
        }
        let (a, mut a_peer) = pair().await;
        let (b, _b_peer) = pair().await;
        let (c, mut c_peer) = pair().await;
        let (mut first, mut second, mut third) =
            (b"first".to_vec(), b"second".to_vec(), b"third".to_vec());
        let mut lead = Box::pin(send(&a, &mut first));
        let mut cancelled = Box::pin(send(&b, &mut second));
        assert!(futures_util::poll!(&mut lead).is_pending());
        assert!(futures_util::poll!(&mut cancelled).is_pending());
        drop(cancelled);
        // Queued in the same turn, into the slot the cancelled write left.
        let mut again = Box::pin(send(&c, &mut third));
        assert!(futures_util::poll!(&mut again).is_pending());
        let (lead, again) = tokio::join!(lead, again);
        assert_eq!(lead.unwrap().unwrap(), 5);
        assert_eq!(again.unwrap().unwrap(), 5);
        drop((a, c));
        let mut got = Vec::new();
        c_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"third", "sent exactly once");
        got.clear();
        a_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_takes_what_fits_and_the_rest_is_the_callers() {
        if !available() {
            return;
        }
        let (a, _peer) = pair().await;
        let mut big = vec![1u8; 64 << 20];
        let sent = send(&a, &mut big).await.unwrap().unwrap();
        assert!(sent < big.len(), "64 MiB fit a socket buffer?");
        assert_eq!(big.len(), 64 << 20, "the buffer comes back whole");
        let sent = send(&a, &mut big).await.unwrap().unwrap();
        assert_eq!(sent, 0, "no room left: nothing sent, nothing lost");
    }
}
