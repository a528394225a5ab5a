//! A WebSocket tunnel after a `101`: the client and the upstream joined byte for byte until
//! one closes, or until neither has sent a byte for `[upstream] tunnel_idle_timeout`.
//!
//! A quiet tunnel is legitimate (a chat nobody writes in), so a tunnel gets no clock on the
//! gap between two pieces the way a response body does ([`super::silence`]). What it gets is
//! what HAProxy calls `timeout tunnel` (an hour in its documentation's example; nginx applies
//! its 60 s `proxy_read_timeout`): a tunnel in which nothing has moved either way for that
//! long is closed. That bounds what TCP keepalive cannot see: two live kernels under a hung
//! application, which answer every probe and never send a byte. An application that pings
//! now and then (many WebSocket servers do, every 20–60 s) is never touched by it.
//!
//! The clock reads the time once per read that brings bytes, which only tunnels pay, and
//! keeps one timer for the whole tunnel, moved when it fires before the current deadline.
//!
//! An HTTP/2 client opens its WebSocket with an extended CONNECT (RFC 8441) instead of an
//! `Upgrade`; the upstream still gets an HTTP/1.1 handshake, in which keygate is the WebSocket
//! client: it sends a key of its own ([`websocket_key`]) and checks the upstream's answer to it
//! ([`accepts`]) before the client is told the tunnel is open. While such a tunnel lives it
//! holds a [`KeepOpen`], so the client connection's idle clock does not close the whole
//! connection under a quiet tunnel.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::metrics::{Metrics, TunnelClose};

/// Counts as a request in flight on its client connection for as long as it lives. The
/// connection (`server::conn`) puts one on each `CONNECT` hyper serves; a tunnel opened by that
/// request takes it and holds it to its end.
#[derive(Clone)]
pub struct KeepOpen(pub std::sync::Arc<dyn Send + Sync>);

/// RFC 6455 §1.3: what `Sec-WebSocket-Accept` must say to a handshake's `Sec-WebSocket-Key`.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn websocket_key() -> Result<String, getrandom::Error> {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(nonce))
}

/// Whether `accept` (the upstream's `Sec-WebSocket-Accept`) answers `key`: proof that the
/// upstream took the handshake as a WebSocket one.
pub fn accepts(key: &str, accept: &[u8]) -> bool {
    use aws_lc_rs::digest;
    use base64::Engine as _;
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(ACCEPT_GUID);
    let want = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    accept.trim_ascii() == want.as_bytes()
}

/// A tunnel from open to close, as `keygate_tunnels_open` and `keygate_tunnels_closed_total`
/// count it (module doc for the clock).
pub async fn run<C, U>(client: &mut C, upstream: &mut U, idle: Duration, metrics: &Metrics)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let open = metrics.tunnel_opened();
    let end = join(client, upstream, idle).await;
    drop(open);
    metrics.tunnel_closed(end.reason());
    match end {
        TunnelEnd::Closed { up, down } => tracing::debug!(up, down, "tunnel closed"),
        TunnelEnd::Idle(idle) => tracing::debug!(?idle, "tunnel closed: idle"),
        TunnelEnd::Failed(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// One side closed; the bytes each way.
    Closed { up: u64, down: u64 },
    /// Nothing either way for the tunnel idle timeout.
    Idle(Duration),
    /// A read or write failed (a reset, or a dead path found by TCP keepalive).
    Failed(io::Error),
}

impl TunnelEnd {
    /// How `keygate_tunnels_closed_total` counts it.
    pub fn reason(&self) -> TunnelClose {
        match self {
            Self::Closed { .. } => TunnelClose::Closed,
            Self::Idle(_) => TunnelClose::Idle,
            Self::Failed(_) => TunnelClose::Error,
        }
    }
}

/// Copies between `client` and `upstream` until one side closes, an I/O error, or no byte has
/// moved either way for `idle`.
pub async fn join<C, U>(client: &mut C, upstream: &mut U, idle: Duration) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // Milliseconds from `start` to the last read that brought bytes, from either side.
    let heard = AtomicU64::new(0);
    let mut client = Heard {
        inner: client,
        start,
        heard: &heard,
    };
    let mut upstream = Heard {
        inner: upstream,
        start,
        heard: &heard,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            copied = copy.as_mut() => {
                return match copied {
                    Ok((up, down)) => TunnelEnd::Closed { up, down },
                    Err(e) => TunnelEnd::Failed(e),
                };
            }
            () = timer.as_mut() => {
                let due = start + Duration::from_millis(heard.load(Ordering::Relaxed)) + idle;
                if Instant::now() >= due {
                    return TunnelEnd::Idle(idle);
                }
                timer.as_mut().reset(due);
            }
        }
    }
}

/// One side of a tunnel, noting when it last brought bytes.
struct Heard<'a, T: ?Sized> {
    inner: &'a mut T,
    start: Instant,
    heard: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Heard<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Rounded up, so the deadline never falls before `idle` after the bytes came.
            let millis = this.start.elapsed().as_nanos().div_ceil(1_000_000);
            this.heard
                .store(u64::try_from(millis).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Heard<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(10);

    /// A tunnel between two in-memory pipes: (client's end, upstream's end, the tunnel).
    fn tunnel() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<TunnelEnd>,
    ) {
        let (client, mut keygate_client_side) = tokio::io::duplex(1024);
        let (upstream, mut keygate_upstream_side) = tokio::io::duplex(1024);
        let joined = tokio::spawn(async move {
            join(&mut keygate_client_side, &mut keygate_upstream_side, IDLE).await
        });
        (client, upstream, joined)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_tunnel_open_and_silence_closes_it() {
        let (mut client, mut upstream, joined) = tunnel();
        let opened = Instant::now();
        let mut byte = [0u8; 1];
        // Twelve gaps of 9 s, the talker taking turns: 108 s of a tunnel that never idled
        // for 10 s, though each side alone was quiet for 18 s at a time.
        for turn in 0..12u8 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            if turn % 2 == 0 {
                client.write_all(&[turn]).await.unwrap();
                upstream.read_exact(&mut byte).await.unwrap();
            } else {
                upstream.write_all(&[turn]).await.unwrap();
                client.read_exact(&mut byte).await.unwrap();
            }
            assert_eq!(byte[0], turn);
            assert!(!joined.is_finished(), "closed at turn {turn}");
        }
        let last = Instant::now();
        let end = joined.await.unwrap();
        assert!(matches!(end, TunnelEnd::Idle(d) if d == IDLE), "{end:?}");
        assert_eq!(Instant::now() - last, IDLE);
        assert_eq!(last - opened, Duration::from_secs(108));
        // Both sides see the close.
        assert_eq!(client.read(&mut byte).await.unwrap(), 0);
        assert_eq!(upstream.read(&mut byte).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_that_never_carries_a_byte_closes_after_the_limit() {
        let (_client, _upstream, joined) = tunnel();
        let opened = Instant::now();
        let end = joined.await.unwrap();
        assert!(matches!(end, TunnelEnd::Idle(_)), "{end:?}");
        assert_eq!(Instant::now() - opened, IDLE);
    }

    #[test]
    fn the_accept_answers_the_key() {
        // RFC 6455 §1.3's example.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(accepts(key, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(accepts(key, b" s3pPLMBiTxaQ9kYGzzhZRbK+xOo= "));
        for wrong in [
            &b""[..],
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo",
            b"S3PPLMBITXAQ9KYGZZHZRBK+XOO=",
        ] {
            assert!(!accepts(key, wrong), "{wrong:?}");
        }
        assert!(!accepts("another key", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let (a, b) = (websocket_key().unwrap(), websocket_key().unwrap());
        assert_eq!(a.len(), 24, "16 bytes in base64: {a}");
        assert_ne!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_side_that_closes_ends_the_tunnel_with_its_counts() {
        let (mut client, mut upstream, joined) = tunnel();
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(b"hi").await.unwrap();
        client.read_exact(&mut got[..2]).await.unwrap();
        drop(client);
        drop(upstream);
        match joined.await.unwrap() {
            TunnelEnd::Closed { up, down } => assert_eq!((up, down), (5, 2)),
            other => panic!("{other:?}"),
        }
    }
}
