//! A WebSocket tunnel after a `101`: the client and the upstream joined byte for byte until
//! one closes, or until keygate ends it, telling both ends why between two frames ([`join`]):
//! it is stopping, the key the tunnel was admitted with lapsed, or neither end has sent a
//! byte for `[upstream] tunnel_idle_timeout`.
//!
//! A quiet tunnel is legitimate (a chat nobody writes in), so a tunnel gets no clock on the
//! gap between two pieces the way a response body does ([`super::silence`]). What it gets is
//! what HAProxy calls `timeout tunnel` (an hour in its documentation's example; nginx applies
//! its 60 s `proxy_read_timeout`): a tunnel in which nothing has moved either way for that
//! long is closed, both ends told 1001 (going away, `idle timeout`) as when keygate stops,
//! and cut off [`CLOSE_WAIT`] later if an end does not answer. That bounds what TCP
//! keepalive cannot see: two live kernels under a hung application, which answer every probe
//! and never send a byte. An application that pings now and then (many WebSocket servers do,
//! every 20–60 s) is never touched by it.
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
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::websocket::{self, Farewell};
use crate::metrics::{Metrics, TunnelClose};

/// What an HTTP/2 stream's tunnel needs from its connection (`server::conn` puts one on each
/// `CONNECT` hyper serves; a tunnel opened by that request takes it and holds it to its end).
#[derive(Clone)]
pub struct KeepOpen {
    /// Counts as a request in flight on the client connection for as long as it is held.
    pub held: std::sync::Arc<dyn Send + Sync>,
    /// Cancelled when keygate begins closing connections: the tunnel says goodbye.
    pub closing: tokio_util::sync::CancellationToken,
}

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

/// How long a tunnel has, once keygate decides to end it, to close: time for both ends to
/// answer keygate's Close over any network a person uses (an answer takes one round trip).
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Bytes each way that went before the tunnel began (sent by the caller): what the client
/// sent behind its handshake, what the upstream sent behind its `101`. The tunnel reads them
/// only to know where the frames are ([`websocket`]).
#[derive(Default)]
pub struct Relayed<'a> {
    pub up: &'a [u8],
    pub down: &'a [u8],
}

/// A tunnel from open to close, as `keygate_tunnels_open` and `keygate_tunnels_closed_total`
/// count it (module doc for the clock). When `ending` resolves (keygate begins closing
/// connections, or the tunnel's key stops admitting), both ends are told why ([`join`]).
pub async fn run<C, U>(
    client: &mut C,
    upstream: &mut U,
    relayed: Relayed<'_>,
    idle: Duration,
    metrics: &Metrics,
    ending: impl Future<Output = Farewell>,
) where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let open = metrics.tunnel_opened();
    let end = join(client, upstream, relayed, idle, ending).await;
    drop(open);
    metrics.tunnel_closed(end.reason());
    match end {
        TunnelEnd::Closed { up, down } => tracing::debug!(up, down, "tunnel closed"),
        TunnelEnd::WentAway { farewell, up, down } => {
            tracing::debug!(?farewell, up, down, "tunnel closed by keygate");
        }
        TunnelEnd::Unanswered(farewell) => {
            tracing::debug!(
                ?farewell,
                "tunnel cut off: keygate's close was not answered"
            );
        }
        TunnelEnd::Failed(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
    }
}

/// What ends a tunnel from outside, and why: `stopping` (keygate begins closing connections)
/// or `lapse` (the key it was opened with stops admitting), whichever comes first.
pub async fn ending(
    stopping: impl Future<Output = ()>,
    lapse: impl Future<Output = ()>,
) -> Farewell {
    tokio::select! {
        biased;
        () = stopping => Farewell::Shutdown,
        () = lapse => Farewell::KeyLapsed,
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// One side closed; the bytes each way.
    Closed { up: u64, down: u64 },
    /// keygate ended it (stopping, or its key lapsed): both ends were told, and closed.
    WentAway {
        farewell: Farewell,
        up: u64,
        down: u64,
    },
    /// keygate ended it, and it had not closed [`CLOSE_WAIT`] later (a frame that did not
    /// end, or an end that did not answer): cut off.
    Unanswered(Farewell),
    /// A read or write failed (a reset, or a dead path found by TCP keepalive).
    Failed(io::Error),
}

impl TunnelEnd {
    /// How `keygate_tunnels_closed_total` counts it.
    pub fn reason(&self) -> TunnelClose {
        match self {
            Self::Closed { .. } => TunnelClose::Closed,
            Self::WentAway { farewell, .. } | Self::Unanswered(farewell) => match farewell {
                Farewell::Shutdown => TunnelClose::Closed,
                Farewell::KeyLapsed => TunnelClose::KeyLapsed,
                Farewell::Idle => TunnelClose::Idle,
            },
            Self::Failed(_) => TunnelClose::Error,
        }
    }
}

/// Copies between `client` and `upstream` until one side closes or an I/O error, or until
/// keygate ends the tunnel: `ending` resolves, or no byte has moved either way for `idle`.
///
/// Then each direction, at its next frame boundary, carries a Close that keygate writes,
/// saying why ([`websocket::close`]: 1001 going away when keygate stops or the tunnel idled
/// out, 1008 when the key lapsed), and nothing of its sender's after that: the client gets
/// one as from the server, the upstream one as from a client. Then each side's bytes are
/// read and dropped until its own Close (its answer) or its end, and the direction towards
/// the other side is shut. A direction whose sender has already sent a Close is left as it
/// is (its close is under way). The bound: a tunnel still open [`CLOSE_WAIT`] after keygate
/// ended it (a frame that does not end, an end that does not answer: a phone out of
/// coverage, which TCP keepalive would take a minute to notice, or a hung application) is
/// cut off, so that one dead client does not hold the process for `shutdown_timeout`.
pub async fn join<C, U>(
    client: &mut C,
    upstream: &mut U,
    relayed: Relayed<'_>,
    idle: Duration,
    ending: impl Future<Output = Farewell>,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    // Milliseconds from `start` to the last read that brought bytes, from either side.
    let heard = AtomicU64::new(0);
    let going_away = OnceLock::new();
    let mut client = Side::new(
        client,
        Toward::Upstream,
        relayed.up,
        start,
        &heard,
        &going_away,
    );
    let mut upstream = Side::new(
        upstream,
        Toward::Client,
        relayed.down,
        start,
        &heard,
        &going_away,
    );
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    tokio::pin!(ending);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    // Why keygate ends the tunnel, once `ending` fires or it idles out (the sides read
    // `going_away`); and by when it must have closed.
    let mut ended = None;
    let close_wait = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(close_wait);
    loop {
        tokio::select! {
            copied = copy.as_mut() => {
                return match copied {
                    Ok((up, down)) if let Some(farewell) = ended => {
                        TunnelEnd::WentAway { farewell, up, down }
                    }
                    Ok((up, down)) => TunnelEnd::Closed { up, down },
                    Err(e) => TunnelEnd::Failed(e),
                };
            }
            farewell = ending.as_mut(), if ended.is_none() => {
                ended = Some(farewell);
            }
            () = close_wait.as_mut(), if ended.is_some() => {
                if let Some(farewell) = ended {
                    return TunnelEnd::Unanswered(farewell);
                }
            }
            () = timer.as_mut(), if ended.is_none() => {
                let due = start + Duration::from_millis(heard.load(Ordering::Relaxed)) + idle;
                if Instant::now() >= due {
                    ended = Some(Farewell::Idle);
                } else {
                    timer.as_mut().reset(due);
                }
            }
        }
        // Said once: the next turn of the loop polls the copy again, and each side's read
        // sees the flag.
        if let Some(farewell) = ended
            && going_away.set(farewell).is_ok()
        {
            close_wait.as_mut().reset(Instant::now() + CLOSE_WAIT);
        }
    }
}

/// Where the bytes a [`Side`] reads go, which decides how keygate's Close is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Toward {
    /// Read from the client, written to the upstream: keygate's Close is masked, as a
    /// client's must be.
    Upstream,
    /// Read from the upstream, written to the client.
    Client,
}

/// A direction's part in saying goodbye.
enum Goodbye {
    /// Not begun: bytes pass.
    Not,
    /// keygate's Close is being handed out, `sent` bytes of it so far.
    Saying { frame: Vec<u8>, sent: usize },
    /// keygate's Close is out: the sender's bytes are dropped until its own Close.
    Awaiting,
    /// The sender answered, or ended: the direction reads as ended.
    Done,
}

/// One side of a tunnel: its reads note when bytes came (the idle clock) and where its frames
/// end (the goodbye); its writes pass straight through.
struct Side<'a, T: ?Sized> {
    inner: &'a mut T,
    toward: Toward,
    frames: websocket::Frames,
    goodbye: Goodbye,
    start: Instant,
    heard: &'a AtomicU64,
    /// Set once keygate ends the tunnel, with why.
    going_away: &'a OnceLock<Farewell>,
}

/// Reads a side makes in one poll while dropping bytes, before it lets other tasks run.
const DROPPED_READS_PER_POLL: usize = 16;

impl<'a, T: ?Sized> Side<'a, T> {
    fn new(
        inner: &'a mut T,
        toward: Toward,
        relayed: &[u8],
        start: Instant,
        heard: &'a AtomicU64,
        going_away: &'a OnceLock<Farewell>,
    ) -> Self {
        let mut frames = websocket::Frames::default();
        frames.skip(relayed);
        Self {
            inner,
            toward,
            frames,
            goodbye: Goodbye::Not,
            start,
            heard,
            going_away,
        }
    }

    /// Whether this direction should carry keygate's Close now.
    fn due(&self) -> bool {
        self.going_away.get().is_some() && !self.frames.closed() && self.frames.at_boundary()
    }

    /// keygate's Close for this direction, once [`Self::due`]; if no masking key could be
    /// had, the direction just ends.
    fn farewell(&self) -> Goodbye {
        let Some(&farewell) = self.going_away.get() else {
            return Goodbye::Not;
        };
        let mask = match self.toward {
            Toward::Client => None,
            Toward::Upstream => {
                let mut key = [0u8; 4];
                if let Err(e) = getrandom::fill(&mut key) {
                    tracing::debug!(error = %e, "no masking key for the upstream's Close");
                    return Goodbye::Done;
                }
                Some(key)
            }
        };
        Goodbye::Saying {
            frame: websocket::close(farewell, mask),
            sent: 0,
        }
    }
}

impl<T: AsyncRead + Unpin + ?Sized> Side<'_, T> {
    /// A read of the inner stream, noting when bytes came.
    fn read_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            // Rounded up, so the deadline never falls before `idle` after the bytes came.
            let millis = self.start.elapsed().as_nanos().div_ceil(1_000_000);
            self.heard
                .store(u64::try_from(millis).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        read
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Side<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.goodbye, Goodbye::Not) && this.due() {
            this.goodbye = this.farewell();
        }
        match &mut this.goodbye {
            Goodbye::Not => {
                let before = buf.filled().len();
                std::task::ready!(this.read_inner(cx, buf))?;
                let filled = buf.filled().len();
                let mut at = before;
                while at < filled {
                    at += this.frames.step(&buf.filled()[at..filled]);
                    if this.due() {
                        // What follows this frame is dropped; only a Close in it counts.
                        this.frames.skip(&buf.filled()[at..filled]);
                        buf.set_filled(at);
                        this.goodbye = this.farewell();
                        break;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Goodbye::Saying { frame, sent } => {
                let n = buf.remaining().min(frame.len() - *sent);
                buf.put_slice(&frame[*sent..*sent + n]);
                *sent += n;
                if *sent == frame.len() {
                    // The sender's own Close may have come in what was dropped.
                    this.goodbye = if this.frames.closed() {
                        Goodbye::Done
                    } else {
                        Goodbye::Awaiting
                    };
                }
                Poll::Ready(Ok(()))
            }
            Goodbye::Awaiting => {
                for _ in 0..DROPPED_READS_PER_POLL {
                    let before = buf.filled().len();
                    std::task::ready!(this.read_inner(cx, buf))?;
                    let got = buf.filled().len() - before;
                    this.frames.skip(&buf.filled()[before..]);
                    buf.set_filled(before);
                    if got == 0 || this.frames.closed() {
                        this.goodbye = Goodbye::Done;
                        return Poll::Ready(Ok(()));
                    }
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Goodbye::Done => Poll::Ready(Ok(())),
        }
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Side<'_, T> {
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
    use super::websocket::frame;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(10);

    /// A tunnel between two in-memory pipes: (client's end, upstream's end, the tunnel).
    fn tunnel() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<TunnelEnd>,
    ) {
        let (client, upstream, joined, _stop) = stoppable(Vec::new(), Vec::new());
        (client, upstream, joined)
    }

    /// The same, with `up` and `down` relayed before it began, and the token that stops it.
    fn stoppable(
        up: Vec<u8>,
        down: Vec<u8>,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<TunnelEnd>,
        tokio_util::sync::CancellationToken,
    ) {
        let (client, mut keygate_client_side) = tokio::io::duplex(1024);
        let (upstream, mut keygate_upstream_side) = tokio::io::duplex(1024);
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let stopping = async move {
            stopped.cancelled().await;
            Farewell::Shutdown
        };
        let joined = tokio::spawn(async move {
            let relayed = Relayed {
                up: &up,
                down: &down,
            };
            join(
                &mut keygate_client_side,
                &mut keygate_upstream_side,
                relayed,
                IDLE,
                stopping,
            )
            .await
        });
        (client, upstream, joined, stop)
    }

    /// Reads one whole short frame: (first byte, masking key, unmasked payload).
    async fn read_frame(from: &mut tokio::io::DuplexStream) -> (u8, Option<[u8; 4]>, Vec<u8>) {
        let mut head = [0u8; 2];
        from.read_exact(&mut head).await.unwrap();
        assert!(head[1] & 0x7f < 126, "a short frame: {head:?}");
        let mask = if head[1] & 0x80 != 0 {
            let mut key = [0u8; 4];
            from.read_exact(&mut key).await.unwrap();
            Some(key)
        } else {
            None
        };
        let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
        from.read_exact(&mut payload).await.unwrap();
        if let Some(key) = mask {
            for (b, k) in payload.iter_mut().zip(key.iter().cycle()) {
                *b ^= k;
            }
        }
        (head[0], mask, payload)
    }

    /// Asserts `from` gets keygate's Close for `why`, masked as `masked` says.
    async fn assert_told(from: &mut tokio::io::DuplexStream, why: Farewell, masked: bool) {
        let (first, mask, payload) = read_frame(from).await;
        assert_eq!(first, 0x88, "a final Close frame");
        assert_eq!(mask.is_some(), masked);
        assert_eq!(payload[..2], why.status().to_be_bytes());
        assert_eq!(&payload[2..], why.reason().as_bytes());
    }

    /// Asserts `from` gets keygate's Close for stopping (1001).
    async fn assert_goodbye(from: &mut tokio::io::DuplexStream, masked: bool) {
        assert_told(from, Farewell::Shutdown, masked).await;
    }

    async fn assert_ended(from: &mut tokio::io::DuplexStream) {
        let mut rest = Vec::new();
        from.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after the Close: {rest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_tells_both_ends_going_away_and_closes_once_both_answer() {
        let (mut client, mut upstream, joined, stop) = stoppable(Vec::new(), Vec::new());
        let text = frame(0x1, b"hi", Some([1, 2, 3, 4]));
        client.write_all(&text).await.unwrap();
        let mut got = vec![0u8; text.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, text);
        stop.cancel();
        assert_goodbye(&mut client, false).await;
        assert_goodbye(&mut upstream, true).await;
        // What either sends before its answering Close is dropped, the Close with it.
        upstream
            .write_all(&frame(0x1, b"late", None))
            .await
            .unwrap();
        upstream
            .write_all(&frame(0x8, &[0x03, 0xe9], None))
            .await
            .unwrap();
        assert_ended(&mut client).await;
        assert!(!joined.is_finished(), "the client has not answered");
        client
            .write_all(&frame(0x8, &[0x03, 0xe9], Some([7; 4])))
            .await
            .unwrap();
        assert_ended(&mut upstream).await;
        match joined.await.unwrap() {
            TunnelEnd::WentAway { .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_goodbye_waits_for_the_frame_under_way() {
        // The client is half-way through a frame, whose first bytes (and the handshake's
        // leftovers) were relayed before the tunnel began; the upstream is mid-frame too.
        let big = frame(0x2, &[0xab; 100], Some([9, 8, 7, 6]));
        let early = [frame(0x9, b"", Some([1; 4])), big[..10].to_vec()].concat();
        let down = frame(0x1, b"server says", None);
        let (mut client, mut upstream, joined, stop) = stoppable(early, down[..3].to_vec());
        stop.cancel();
        // The rest of the client's frame, and a frame after it that must not pass.
        client.write_all(&big[10..60]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        client
            .write_all(&[&big[60..], &frame(0x1, b"after", Some([3; 4]))[..]].concat())
            .await
            .unwrap();
        let mut rest = vec![0u8; big.len() - 10];
        upstream.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, big[10..], "the frame under way goes through whole");
        assert_goodbye(&mut upstream, true).await;
        // Downstream likewise: the rest of the upstream's frame, then keygate's Close, which
        // the upstream's own answer in the same write does not follow.
        upstream
            .write_all(&[&down[3..], &frame(0x8, &[0x03, 0xe9], None)[..]].concat())
            .await
            .unwrap();
        let mut rest = vec![0u8; down.len() - 3];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, down[3..]);
        assert_goodbye(&mut client, false).await;
        assert_ended(&mut client).await;
        client
            .write_all(&frame(0x8, b"", Some([7; 4])))
            .await
            .unwrap();
        assert_ended(&mut upstream).await;
        assert!(matches!(joined.await.unwrap(), TunnelEnd::WentAway { .. }));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the client's frames, the pieces they arrive in and the moment keygate
        /// starts stopping, the upstream gets the client's first frames whole and in order,
        /// then keygate's Close, then nothing; and all of them when the stop comes after the
        /// last one went through.
        #[test]
        fn the_goodbye_falls_between_whole_frames(
            frames in proptest::collection::vec((0usize..4, 0usize..300), 0..10),
            cuts in proptest::collection::vec(1usize..200, 1..8),
            stop_at in 0usize..3500,
        ) {
            let opcodes = [0x1, 0x2, 0x9, 0xA];
            let frames: Vec<Vec<u8>> = frames
                .iter()
                .enumerate()
                .map(|(i, &(op, len))| {
                    let payload = vec![i as u8; if op >= 2 { len % 126 } else { len }];
                    frame(opcodes[op], &payload, Some([i as u8, 7, 0x80, 0xff]))
                })
                .collect();
            let wire = frames.concat();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let got = runtime.block_on(async {
                let (mut client, mut upstream, _joined, stop) = stoppable(Vec::new(), Vec::new());
                let reader = tokio::spawn(async move {
                    let mut all = Vec::new();
                    upstream.read_to_end(&mut all).await.unwrap();
                    all
                });
                let mut written = 0;
                for cut in cuts.iter().cycle() {
                    if written == wire.len() {
                        break;
                    }
                    let end = (written + cut).min(wire.len());
                    if !stop.is_cancelled() && written <= stop_at && stop_at < end {
                        client.write_all(&wire[written..stop_at]).await.unwrap();
                        stop.cancel();
                        written = stop_at;
                        continue;
                    }
                    client.write_all(&wire[written..end]).await.unwrap();
                    written = end;
                    tokio::task::yield_now().await;
                }
                // Everything the client sent is through before a late stop.
                tokio::time::sleep(Duration::from_millis(1)).await;
                stop.cancel();
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(client);
                reader.await.unwrap()
            });
            // Whole frames first: the longest run of them that `got` begins with.
            let mut at = 0;
            let mut whole = 0;
            while whole < frames.len() && got[at..].starts_with(&frames[whole]) {
                at += frames[whole].len();
                whole += 1;
            }
            if stop_at >= wire.len() {
                proptest::prop_assert_eq!(whole, frames.len(), "a late stop passes every frame");
            }
            let close = &got[at..];
            proptest::prop_assert_eq!(close.len(), 2 + 4 + 22, "one Close after {} frames: {:?}", whole, close);
            proptest::prop_assert_eq!(close[..2].to_vec(), vec![0x88, 0x80 | 22]);
            let payload: Vec<u8> = close[6..]
                .iter()
                .zip(close[2..6].iter().cycle())
                .map(|(b, k)| b ^ k)
                .collect();
            proptest::prop_assert_eq!(&payload[..2], &1001u16.to_be_bytes()[..]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_whose_ends_do_not_answer_is_cut_off_after_the_close_wait() {
        // The client answers; the upstream is stalled in the middle of a frame, so it never
        // even gets to its Close.
        let down = frame(0x2, &[1; 50], None);
        let (mut client, mut upstream, joined, stop) = stoppable(Vec::new(), down[..20].to_vec());
        stop.cancel();
        let stopped = Instant::now();
        assert_goodbye(&mut upstream, true).await;
        client
            .write_all(&frame(0x8, b"", Some([2; 4])))
            .await
            .unwrap();
        let end = joined.await.unwrap();
        assert!(
            matches!(end, TunnelEnd::Unanswered(Farewell::Shutdown)),
            "{end:?}"
        );
        assert_eq!(Instant::now() - stopped, CLOSE_WAIT);
        // Both ends see the connection end.
        assert_ended(&mut upstream).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "the client got {rest:?} of a frame that never ended"
        );
    }

    #[test]
    fn keygate_s_own_closes_are_counted_by_why() {
        let (up, down) = (1, 2);
        for (end, counted) in [
            (TunnelEnd::Closed { up, down }, TunnelClose::Closed),
            (
                TunnelEnd::WentAway {
                    farewell: Farewell::Shutdown,
                    up,
                    down,
                },
                TunnelClose::Closed,
            ),
            (
                TunnelEnd::Unanswered(Farewell::Shutdown),
                TunnelClose::Closed,
            ),
            (
                TunnelEnd::WentAway {
                    farewell: Farewell::KeyLapsed,
                    up,
                    down,
                },
                TunnelClose::KeyLapsed,
            ),
            (
                TunnelEnd::Unanswered(Farewell::KeyLapsed),
                TunnelClose::KeyLapsed,
            ),
            (
                TunnelEnd::WentAway {
                    farewell: Farewell::Idle,
                    up,
                    down,
                },
                TunnelClose::Idle,
            ),
            (TunnelEnd::Unanswered(Farewell::Idle), TunnelClose::Idle),
        ] {
            assert_eq!(end.reason(), counted, "{end:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_under_way_is_not_said_twice() {
        // The client has already said Close: the upstream gets no second one, and the client
        // gets keygate's in place of the upstream's answer.
        let (mut client, mut upstream, joined, stop) = stoppable(Vec::new(), Vec::new());
        let close = frame(0x8, &[0x03, 0xe8], Some([4; 4]));
        client.write_all(&close).await.unwrap();
        let mut got = vec![0u8; close.len()];
        upstream.read_exact(&mut got).await.unwrap();
        stop.cancel();
        assert_goodbye(&mut client, false).await;
        upstream
            .write_all(&frame(0x8, &[0x03, 0xe8], None))
            .await
            .unwrap();
        assert_ended(&mut client).await;
        drop(client);
        assert_ended(&mut upstream).await;
        assert!(matches!(joined.await.unwrap(), TunnelEnd::WentAway { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_either_way_keep_a_tunnel_open_and_silence_closes_it() {
        let (mut client, mut upstream, joined) = tunnel();
        let opened = Instant::now();
        // Twelve gaps of 9 s, the talker taking turns: 108 s of a tunnel that never idled
        // for 10 s, though each side alone was quiet for 18 s at a time.
        for turn in 0..12u8 {
            tokio::time::sleep(Duration::from_secs(9)).await;
            let (from, to, mask) = if turn % 2 == 0 {
                (&mut client, &mut upstream, Some([turn; 4]))
            } else {
                (&mut upstream, &mut client, None)
            };
            let message = frame(0x2, &[turn], mask);
            from.write_all(&message).await.unwrap();
            let mut got = vec![0u8; message.len()];
            to.read_exact(&mut got).await.unwrap();
            assert_eq!(got, message);
            assert!(!joined.is_finished(), "closed at turn {turn}");
        }
        let last = Instant::now();
        // Both ends are told, at the limit, and answer.
        assert_told(&mut client, Farewell::Idle, false).await;
        assert_eq!(Instant::now() - last, IDLE);
        assert_told(&mut upstream, Farewell::Idle, true).await;
        for (end, mask) in [(&mut client, Some([9; 4])), (&mut upstream, None)] {
            end.write_all(&frame(0x8, &[0x03, 0xe9], mask))
                .await
                .unwrap();
        }
        assert_ended(&mut client).await;
        assert_ended(&mut upstream).await;
        let end = joined.await.unwrap();
        assert!(
            matches!(
                end,
                TunnelEnd::WentAway {
                    farewell: Farewell::Idle,
                    ..
                }
            ),
            "{end:?}"
        );
        assert_eq!(end.reason(), TunnelClose::Idle);
        assert_eq!(last - opened, Duration::from_secs(108));
    }

    /// A hung application behind live kernels: told, it never answers, and is cut off.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_that_never_carries_a_byte_is_told_then_cut_off() {
        let (mut client, mut upstream, joined) = tunnel();
        let opened = Instant::now();
        assert_told(&mut client, Farewell::Idle, false).await;
        assert_told(&mut upstream, Farewell::Idle, true).await;
        assert_eq!(Instant::now() - opened, IDLE);
        let end = joined.await.unwrap();
        assert!(
            matches!(end, TunnelEnd::Unanswered(Farewell::Idle)),
            "{end:?}"
        );
        assert_eq!(Instant::now() - opened, IDLE + CLOSE_WAIT);
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
