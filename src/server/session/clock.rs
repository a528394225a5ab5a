//! A connection's clocks, its view of keygate stopping, and the limit on a client that stops
//! reading: all cheap enough to consult on every request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::super::conn::Gated;

/// A deadline on a timer that is touched only when it must fire earlier than it is set for.
/// Moving a tokio timer earlier re-registers it under the timer wheel's lock; the clocks here
/// move later with every request, so that would be every request. Instead the timer keeps its
/// old deadline, and when it fires early it is set to the current one: one wake per clock
/// period, not one registration per request.
pub(super) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
}

impl Deadline {
    pub(super) fn new() -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            at: far,
        }
    }

    pub(super) fn set(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        self.at = at;
    }

    pub(super) async fn expired(&mut self) {
        std::future::poll_fn(|cx| {
            loop {
                std::task::ready!(self.sleep.as_mut().poll(cx));
                if Instant::now() >= self.at {
                    return Poll::Ready(());
                }
                self.sleep.as_mut().reset(self.at);
            }
        })
        .await;
    }
}

/// keygate stopping, as a connection sees it: waited for between requests, checked before a
/// response head is written (so the response says the connection closes).
pub(super) struct Closing {
    signal: Pin<Box<Gated<WaitForCancellationFutureOwned>>>,
    stopping: bool,
}

impl Closing {
    pub(super) fn new(token: &CancellationToken) -> Self {
        let mut closing = Self {
            signal: Box::pin(Gated::new(token.clone().cancelled_owned())),
            stopping: false,
        };
        // The first poll registers with the token.
        closing.check();
        closing
    }

    /// Whether keygate is stopping. Cheap: the signal itself is polled only after its waker
    /// fired.
    pub(super) fn check(&mut self) -> bool {
        if !self.stopping && self.signal.fired() {
            let mut cx = Context::from_waker(Waker::noop());
            self.stopping = self.signal.as_mut().poll(&mut cx).is_ready();
        }
        self.stopping
    }

    pub(super) async fn wait(&mut self) {
        std::future::poll_fn(|cx| {
            if !self.stopping {
                self.stopping = self.signal.as_mut().poll(cx).is_ready();
            }
            if self.stopping {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// A writer to the client that gives up when the client accepts nothing for `limit`: a client
/// that stops reading its response would otherwise hold the connection, its buffers and an
/// upstream connection for good. The clock runs only while a write waits, so a write that
/// completes at once (nearly all of them) costs nothing extra.
pub(super) struct Patient<'a, W: ?Sized> {
    inner: &'a mut W,
    limit: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<'a, W: ?Sized> Patient<'a, W> {
    pub(super) fn new(inner: &'a mut W, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            waiting: None,
        }
    }

    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let limit = self.limit;
        let clock = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no response bytes in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<W: AsyncWrite + Unpin + ?Sized> AsyncWrite for Patient<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_write(cx, buf);
        this.waited(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut *this.inner).poll_flush(cx);
        this.waited(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}
