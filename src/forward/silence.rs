//! The upstream's silence within a response body: `[upstream] body_timeout`.
//!
//! Once a response head is through, the upstream timeout no longer applies, and a slow stream
//! (server-sent events, a model writing tokens) must not be mistaken for a dead one. But an
//! upstream connection that goes silently dead mid-body (a host that vanished behind a
//! load balancer, a stuck NAT entry, a hung upstream process) would otherwise hold the client
//! and the upstream connection for as long as the client is patient. nginx cuts such a
//! response after 60 s without a byte (`proxy_read_timeout`), HAProxy after `timeout server`,
//! Envoy after 5 minutes (`stream_idle_timeout`); keygate after `body_timeout`, 5 minutes
//! unless configured. The response head is already out, so the client learns it the only way
//! left: an HTTP/1.1 connection closed before the body's end, an HTTP/2 stream reset.
//!
//! The clock runs only while a read from the upstream waits, and costs no timer registration
//! per wait: one timer per body, moved only when it fires before the current deadline (the
//! deadline only moves later).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a read gets once the upstream has been silent for the body timeout. Wrapped in
/// an [`io::Error`] (kind `TimedOut`) where a reader is expected; [`of`] finds it there.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing within a response body for {0:?} ([upstream] body_timeout)")]
pub struct SilentUpstream(pub Duration);

/// The upstream's silence, if that is what an I/O error is.
pub fn of(e: &io::Error) -> Option<&SilentUpstream> {
    e.get_ref()?.downcast_ref()
}

/// The clock of one response body.
pub struct Silence {
    limit: Duration,
    /// Since when reads have waited with nothing from the upstream; `None` while bytes come.
    since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Silence {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            since: None,
            timer: None,
        }
    }

    /// The upstream gave bytes (or ended the body): the clock stops.
    pub fn heard(&mut self) {
        self.since = None;
    }

    /// A read from the upstream waits: `Ready` once nothing has come for the limit.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<SilentUpstream> {
        let due = *self.since.get_or_insert_with(Instant::now) + self.limit;
        // A timer left from an earlier wait is due no later than this one: it fires early
        // at most once per wait and is moved then.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            std::task::ready!(timer.as_mut().poll(cx));
            if Instant::now() >= due {
                return Poll::Ready(SilentUpstream(self.limit));
            }
            timer.as_mut().reset(due);
        }
    }
}

/// An upstream reader on a [`Silence`] clock: a read that waits for the body timeout fails
/// with [`SilentUpstream`].
pub struct Quiet<'a, R: ?Sized> {
    inner: &'a mut R,
    silence: Silence,
}

impl<'a, R: ?Sized> Quiet<'a, R> {
    pub fn new(inner: &'a mut R, limit: Duration) -> Self {
        Self {
            inner,
            silence: Silence::new(limit),
        }
    }
}

impl<R: AsyncRead + Unpin + ?Sized> AsyncRead for Quiet<'_, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            Poll::Pending => this
                .silence
                .poll_expired(cx)
                .map(|silent| Err(io::Error::new(io::ErrorKind::TimedOut, silent))),
            ready => {
                this.silence.heard();
                ready
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_slow_stream_lives_and_a_silent_one_is_cut_off() {
        let (mut upstream, mut keygate_side) = tokio::io::duplex(64);
        let mut quiet = Quiet::new(&mut keygate_side, Duration::from_secs(10));
        let mut buf = [0u8; 16];
        // A piece every 9 s, three times: each wait is under the limit, their sum is not.
        for _ in 0..3 {
            let (read, ()) = tokio::join!(quiet.read(&mut buf), async {
                tokio::time::sleep(Duration::from_secs(9)).await;
                upstream.write_all(b"data").await.unwrap();
            });
            assert_eq!(read.unwrap(), 4);
        }
        // Then nothing: the read fails at the limit, not before.
        let started = Instant::now();
        let e = quiet.read(&mut buf).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(of(&e).map(|s| s.0), Some(Duration::from_secs(10)), "{e}");
        assert!(of(&io::Error::from(io::ErrorKind::TimedOut)).is_none());
        drop(upstream);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_body_is_not_silence() {
        let (upstream, mut keygate_side) = tokio::io::duplex(64);
        let mut quiet = Quiet::new(&mut keygate_side, Duration::from_secs(10));
        drop(upstream);
        let mut buf = [0u8; 16];
        assert_eq!(quiet.read(&mut buf).await.unwrap(), 0);
    }
}
