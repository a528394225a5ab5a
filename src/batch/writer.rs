//! [`Batched`]: a connection for writers that flush (hyper's HTTP/2 and HTTP/1 connections,
//! and TLS), whose small flushes join the turn's batch.
//!
//! keygate's own HTTP/1.1 calls [`super::send`] where it writes a response. hyper instead
//! writes through `AsyncWrite` and ends each burst of writes with `poll_flush`, one burst per
//! turn of its connection task: for an HTTP/2 client, the frames of every response that became
//! ready. TLS (rustls) writes its records at every write and flushes at the end of each
//! response. `Batched` keeps a burst's bytes until that flush, then queues them as one write
//! and yields once, as `send` does; the flush completes when the task is polled again, by then
//! with this turn's other writes in the same submission. Whatever the batch did not send (no
//! room in the socket, a failed ring) goes out the usual way before the flush completes, and
//! later writes wait for it, so bytes leave in the order they were written. A writer must
//! therefore flush whatever it wants the peer to see now (a piece of a streamed response):
//! `AsyncWrite`'s contract, which plain sockets forgive.
//!
//! A burst larger than [`BATCH_MAX`] (a large response body) is written the usual way: copying
//! it costs more than the system call a batch saves, and flow control paces such writes anyway.
//!
//! Why: one stream per HTTP/2 connection cost keygate a `sendto` per response, several over
//! TLS (a record per frame). Batched, keygate's CPU per request fell by 2.35 µs over h2c
//! (17.05 → 15.75 µs, lower in 5 of 5 paired rounds) and by 3.3 µs over TLS h2 (20.2 → 16.1,
//! 5 of 5); at 10 streams, where responses already shared their flushes, nothing measurable
//! (medians of paired rounds −0.15 and 0.00 over h2c, −1.1 over TLS, all within that machine's
//! noise). keygate's own HTTP/1.1 over TLS, one write per response before, was unchanged
//! (+0.1 µs). bench/RESULTS.md, 2026-12-06 23:20.

use std::io;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::queue::Queue;
use super::{Batchable, Ticket};

/// The largest burst that is copied and batched; larger ones go the usual way. An HTTP/2
/// frame is at most 16 KiB unless the client asks for more, so every header frame and every
/// small response fits.
pub const BATCH_MAX: usize = 16 * 1024;

/// The buffer a connection keeps between bursts: enough for most API responses, so that a
/// connection allocates only for a larger one.
const KEEP_MAX: usize = 4 * 1024;

/// `io`, with writes kept until the flush, which joins this turn's batch.
pub struct Batched<IO: Batchable> {
    io: IO,
    /// Whose queue a flush joins; `None`: nothing is batched, every call goes straight to `io`.
    queue: Option<QueueOf>,
    /// Written, not yet sent: the burst being gathered, or what a batch left of it.
    pending: Vec<u8>,
    state: State,
}

/// Where the burst in `pending` is.
enum State {
    /// Being written; goes out at the next flush.
    Gathering,
    /// Queued in this turn's batch (`pending` is empty meanwhile).
    Queued(Ticket),
    /// Out of the batch, `sent` bytes of it sent: the rest goes the usual way.
    Draining { sent: usize },
}

enum QueueOf {
    /// The queue of the thread that flushes (the connection's task may move between threads).
    Thread,
    /// A given queue (tests).
    #[cfg(test)]
    Given(Arc<Queue>),
}

impl<IO: Batchable> Batched<IO> {
    /// Batches `io`'s flushes when `enabled` (`[server] batch_writes`), `io` is plain TCP and
    /// the process batches; otherwise every call goes straight to `io`.
    pub fn new(io: IO, enabled: bool) -> Self {
        let on = enabled && io.socket().is_some() && super::available();
        Self::with(io, on.then_some(QueueOf::Thread))
    }

    #[cfg(test)]
    pub(super) fn on(io: IO, queue: Arc<Queue>) -> Self {
        Self::with(io, Some(QueueOf::Given(queue)))
    }

    fn with(io: IO, queue: Option<QueueOf>) -> Self {
        Self {
            io,
            queue,
            pending: Vec::new(),
            state: State::Gathering,
        }
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// An idle connection gives back the buffer kept between bursts: `false` (and nothing
    /// given back) while a burst is still unsent.
    pub fn shed(&mut self) -> bool {
        let idle = matches!(self.state, State::Gathering) && self.pending.is_empty();
        if idle {
            self.pending = Vec::new();
        }
        idle
    }

    /// The queue this flush joins, if batching is still on.
    fn queue(&self) -> Option<Arc<Queue>> {
        match self.queue.as_ref()? {
            QueueOf::Thread => super::current(),
            #[cfg(test)]
            QueueOf::Given(queue) => Some(queue.clone()),
        }
    }
}

impl<IO: AsyncWrite + Batchable + Unpin> Batched<IO> {
    /// Sends everything written so far: takes the batch's outcome, then writes what it left
    /// (or the whole burst, if it was never queued) the usual way.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Gathering if self.pending.is_empty() => return Poll::Ready(Ok(())),
                State::Gathering => self.state = State::Draining { sent: 0 },
                State::Queued(_) => {
                    let State::Queued(ticket) = mem::replace(&mut self.state, State::Gathering)
                    else {
                        unreachable!("matched above");
                    };
                    let (outcome, buf) = ticket.finish();
                    // An outcome nobody knows comes back empty: nothing is sent twice.
                    self.pending = buf;
                    match outcome.into_result() {
                        Ok(sent) => self.state = State::Draining { sent },
                        Err(e) => {
                            self.pending.clear();
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                State::Draining { sent } => {
                    while *sent < self.pending.len() {
                        let rest = &self.pending[*sent..];
                        let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *sent += n;
                    }
                    self.pending.clear();
                    if self.pending.capacity() > KEEP_MAX {
                        // An idle connection keeps no large buffer.
                        self.pending = Vec::new();
                    }
                    self.state = State::Gathering;
                }
            }
        }
    }

    /// Makes room for `len` more bytes in `pending`: `false` when a burst of that size goes
    /// the usual way instead (with everything before it sent first).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if !matches!(self.state, State::Gathering) {
            // Written while a flush is under way (hyper does not, but the contract allows
            // it): that flush ends first, so the order holds.
            ready!(self.poll_out(cx))?;
        }
        if self.pending.len() + len <= BATCH_MAX {
            return Poll::Ready(Ok(true));
        }
        ready!(self.poll_out(cx))?;
        Poll::Ready(Ok(len <= BATCH_MAX))
    }
}

impl<IO: AsyncWrite + Batchable + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.queue.is_none() || !ready!(this.poll_room(cx, buf.len()))? {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.queue.is_none() || !ready!(this.poll_room(cx, len))? {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        for buf in bufs {
            this.pending.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // Slices are copied into one burst: a writer that has several hands them over at once.
        self.queue.is_some() || self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.state, State::Gathering) && !this.pending.is_empty() {
            let ticket = match (this.queue(), this.io.socket()) {
                (Some(queue), Some(socket)) => super::enqueue(queue, socket, &mut this.pending),
                _ => None,
            };
            if let Some(ticket) = ticket {
                this.state = State::Queued(ticket);
                // One yield, as `send` does: the wake comes after this turn's other tasks ran
                // (and queued their writes), not at once.
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                return Poll::Pending;
            }
        }
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO: Batchable> Drop for Batched<IO> {
    fn drop(&mut self) {
        // Written and never flushed, e.g. the alert TLS writes as it gives up on a connection:
        // sent if the socket takes it now, as an unbuffered connection would have. A burst
        // still queued is taken out of the batch by its ticket, unsent.
        let unsent = match self.state {
            State::Gathering => &self.pending[..],
            State::Draining { sent } => &self.pending[sent..],
            State::Queued(_) => return,
        };
        if let (false, Some(socket)) = (unsent.is_empty(), self.io.socket()) {
            let _ = socket.tcp().try_write(unsent);
        }
    }
}

impl<IO: AsyncRead + Batchable + Unpin> AsyncRead for Batched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}
