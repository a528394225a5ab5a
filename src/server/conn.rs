//! Serving one connection with hyper (HTTP/2 clients, the admin port, the plain port's
//! refusals): the builder from `[server]`, the header and idle clocks, and a polite close on
//! shutdown. The connection cap, the TLS handshake and the choice between hyper and
//! keygate's own HTTP/1.1 (`session`) are `server/mod.rs`'s; [`Rewind`] replays the bytes
//! `session` read before it handed an HTTP/2 connection over.
//!
//! Why keygate times connections itself instead of using hyper's `header_read_timeout`: hyper
//! runs that one timer from the moment it waits for a request head, so it also closes every
//! keep-alive connection idle for longer than the header timeout. A slow-loris guard wants
//! seconds; a keep-alive idle timeout must outlast the load balancer's pool (often 60 s), or
//! the balancer reuses a connection keygate just closed and answers 502. [`Activity`] tells the
//! two apart: bytes arriving while no request is in flight start the header clock; silence
//! with nothing in flight runs the idle clock.
//!
//! Three quiet ways to hold a connection forever are closed by [`Watchdog`] too. An HTTP/2
//! client that only sends PINGs (gRPC's keep-alive does, hyper's client can) used to count as
//! active: on HTTP/2 only requests do now. A client that answers nothing after keygate's
//! polite close (hyper's HTTP/2 GOAWAY waits for a PING's answer) is cut off a header timeout
//! after its last request ended. And a client that stops taking its response (never opening
//! its HTTP/2 flow-control window, or not reading the socket) is cut off after the idle
//! timeout, as keygate's own HTTP/1.1 does (`session::clock`): hyper sends a response body's
//! piece once the client made room for it and only then asks for the next, so [`Tracked`]
//! counts the asks and the watchdog notices when they stop. The bound is in pieces, not bytes: a client that takes
//! less than one piece (at most a read buffer of the upstream's) per idle timeout counts as
//! stalled.
//!
//! A WebSocket on an HTTP/2 stream (RFC 8441) outlives its response: the `200` is sent when
//! the tunnel opens. So each `CONNECT` carries a second [`InFlight`] to the request path
//! ([`KeepOpen`]), which a tunnel holds until it ends; otherwise the idle clock would close the
//! whole connection under a quiet tunnel.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Method, Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::forward::tunnel::KeepOpen;

/// Header lines an HTTP/1 request may carry.
const MAX_HEADER_LINES: usize = 100;

/// The HTTP/1.1 + HTTP/2 connection builder, from `[server]`.
pub fn builder(server: &config::Server) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses a head beyond its read buffer with a bare 431; sizing the buffer above the
    // configured cap lets `proxy::check_sizes` answer everything in between with JSON.
    let buffer = (server.max_header_bytes * 2 + 8192).max(16 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(buffer)
        // As many header lines as hyper parses on the stack (and HAProxy's default, 101):
        // a larger cap makes hyper allocate two 8 KiB arrays for every request it parses.
        // A request with more lines gets hyper's bare 431 and the connection is closed.
        .max_headers(MAX_HEADER_LINES)
        // One `send` of head and body copied together beats a `writev` of the two for the
        // small responses an API mostly answers (bench/RESULTS.md); a large body is still
        // written in buffer-sized pieces.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSockets from HTTP/2 clients (RFC 8441): `forward::links::WebSocket`.
        .enable_connect_protocol()
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Per-connection timing state, shared by the I/O wrapper, the service wrapper, the response
/// bodies and the connection's watchdog. Times are milliseconds since `base`.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    last_io: AtomicU64,
    /// When the first byte of a request head arrived (0: not reading a head).
    head_started: AtomicU64,
    /// An HTTP/2 connection (known at its first request). Its frames between requests (PING,
    /// SETTINGS, WINDOW_UPDATE) are not requests: they start no head (a request's HEADERS
    /// reach the service whole) and do not hold the idle clock back, so a client cannot keep
    /// a connection forever by pinging it. Its idle clock runs from the end of its last
    /// request.
    http2: AtomicBool,
    /// Response bodies that gave hyper a piece and have been neither asked for the next one
    /// nor dropped. hyper sends a piece once the client has made room for it (HTTP/2 flow
    /// control, or a socket that drains), and only then asks for the next (or drops the body
    /// after the last), so a count that stays above zero while `body_steps` stands still is a
    /// client that accepts nothing.
    awaiting_client: AtomicUsize,
    /// Bumped whenever hyper asks a response body for a piece. The watchdog compares it
    /// between looks rather than every piece reading the clock.
    body_steps: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        let base = Instant::now();
        Arc::new(Self {
            base,
            in_flight: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            // A fresh connection is waiting for its first head.
            head_started: AtomicU64::new(1),
            http2: AtomicBool::new(false),
            awaiting_client: AtomicUsize::new(0),
            body_steps: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        // +1 keeps 0 free to mean "none".
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        if self.http2.load(Ordering::Relaxed) {
            return;
        }
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        if !self.http2.load(Ordering::Relaxed) {
            self.touch();
        }
    }

    fn touch(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn request_started(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// One look for the watchdog.
    fn seen(&self) -> Seen {
        Seen {
            now: self.now(),
            head_started: self.head_started.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_io: self.last_io.load(Ordering::Relaxed),
            awaiting_client: self.awaiting_client.load(Ordering::Relaxed),
            body_steps: self.body_steps.load(Ordering::Relaxed),
        }
    }
}

/// What the watchdog reads off [`Activity`] at one look (milliseconds on its clock).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    now: u64,
    head_started: u64,
    in_flight: usize,
    last_io: u64,
    awaiting_client: usize,
    body_steps: u64,
}

/// The connection's clocks, decided at each look: a head that takes too long, a connection
/// idle too long, a client that accepts no response bytes, and a close the client never
/// finishes.
struct Watchdog {
    header_timeout: u64,
    idle_timeout: u64,
    /// When keygate asked the connection to close politely (idle, or shutting down). hyper's
    /// HTTP/2 close waits for the client to answer a PING and for open streams; a client that
    /// answers nothing is given a header timeout once nothing is in flight, then cut off.
    closing_since: Option<u64>,
    /// `body_steps` at the last look, and since when (the first look that saw it) it has
    /// stood still while a body waited on the client.
    steps: u64,
    stalled_since: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// Close at once: a request head took longer than the header timeout.
    HeaderTimeout,
    /// Close politely: nothing in flight for the idle timeout.
    Idle,
    /// Close at once: a response waited on the client for the idle timeout.
    Stalled,
    /// Close at once: the polite close was not finished a header timeout after the last
    /// request ended.
    Lingered,
}

impl Watchdog {
    fn new(header_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            header_timeout: header_timeout.as_millis() as u64,
            idle_timeout: idle_timeout.as_millis() as u64,
            closing_since: None,
            steps: 0,
            stalled_since: None,
        }
    }

    fn closing(&mut self, now: u64) {
        self.closing_since.get_or_insert(now);
    }

    fn look(&mut self, seen: Seen) -> Verdict {
        if seen.head_started != 0 && seen.now >= seen.head_started + self.header_timeout {
            return Verdict::HeaderTimeout;
        }
        match self.stalled_since {
            _ if seen.awaiting_client == 0 => self.stalled_since = None,
            Some(since) if seen.body_steps == self.steps => {
                if seen.now >= since + self.idle_timeout {
                    return Verdict::Stalled;
                }
            }
            _ => {
                self.steps = seen.body_steps;
                self.stalled_since = Some(seen.now);
            }
        }
        if seen.in_flight != 0 || seen.head_started != 0 {
            return Verdict::Fine;
        }
        match self.closing_since {
            None if seen.now >= seen.last_io + self.idle_timeout => {
                self.closing_since = Some(seen.now);
                Verdict::Idle
            }
            Some(since) if seen.now >= since.max(seen.last_io) + self.header_timeout => {
                Verdict::Lingered
            }
            _ => Verdict::Fine,
        }
    }
}

/// One request in flight; ends when the response body has been sent (or dropped).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The connection's I/O, reporting activity.
pub struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that holds its request's [`InFlight`] until it is fully sent, and tells
/// [`Activity`] whether hyper is waiting on the client to take the next piece.
pub struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
    /// A piece was handed to hyper (or the response head, for the first) and the next has
    /// not been asked for: hyper holds it until the client has room.
    handed: bool,
}

impl<B: Body> Tracked<B> {
    fn new(inner: B, in_flight: InFlight) -> Self {
        // A body with something to send waits on the client from its head on: the head too
        // needs the client to make room (a socket that drains), and a body hyper never asks
        // for is one whose client stopped before it began.
        let handed = !inner.is_end_stream();
        if handed {
            in_flight.0.awaiting_client.fetch_add(1, Ordering::Relaxed);
        }
        Self {
            inner,
            in_flight,
            handed,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let activity = &this.in_flight.0;
        if std::mem::take(&mut this.handed) {
            activity.awaiting_client.fetch_sub(1, Ordering::Relaxed);
        }
        activity.body_steps.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // The last piece too: hyper keeps the body until that piece is sent.
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            this.handed = true;
            activity.awaiting_client.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if self.handed {
            self.in_flight
                .0
                .awaiting_client
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a listener needs to serve one connection.
pub struct Serving {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Cancelled when keygate stops: finish what is in flight, then close.
    pub closing: CancellationToken,
    /// The same for keygate's own HTTP/1.1.
    pub http1: super::session::Timing,
}

/// Serves HTTP with hyper on `io` until the client closes, a timeout fires, or `closing` is
/// cancelled (then in-flight requests finish first).
pub async fn serve<IO, S, B>(serving: &Serving, io: IO, activity: Arc<Activity>, service: S)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = Watched {
        io,
        activity: activity.clone(),
    };
    let service = Tracking {
        inner: service,
        activity: activity.clone(),
        closing: serving.closing.clone(),
    };
    let conn = serving
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Look at the clocks often enough to act within half a header timeout of a deadline.
    let tick = (serving.header_timeout / 2).min(serving.idle_timeout / 2);
    let mut watchdog = Watchdog::new(serving.header_timeout, serving.idle_timeout);
    loop {
        let closing = watchdog.closing_since.is_some();
        let watch = Gated::new(async {
            tokio::select! {
                _ = serving.closing.cancelled(), if !closing => Alarm::Closing,
                _ = tokio::time::sleep(tick) => Alarm::Tick,
            }
        });
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            alarm = watch => match alarm {
                Alarm::Closing => {
                    watchdog.closing(activity.now());
                    conn.as_mut().graceful_shutdown();
                }
                Alarm::Tick => match watchdog.look(activity.seen()) {
                    Verdict::Fine => {}
                    Verdict::Idle => conn.as_mut().graceful_shutdown(),
                    Verdict::HeaderTimeout => {
                        tracing::debug!("request head not received in time; closing");
                        return;
                    }
                    Verdict::Stalled => {
                        tracing::debug!("the client accepted no response bytes for the idle timeout; closing");
                        return;
                    }
                    Verdict::Lingered => {
                        tracing::debug!("the client did not finish the polite close in time; closing");
                        return;
                    }
                },
            },
        }
    }
}

enum Alarm {
    Closing,
    Tick,
}

pin_project_lite::pin_project! {
    /// Polls `inner` only when its own waker fired (and on the first poll). The connection's
    /// task wakes several times per request for its sockets; the shutdown signal and the
    /// watchdog's clock need no look on those wakes, and the shutdown token's check takes a
    /// lock that every connection shares.
    pub(crate) struct Gated<F> {
        #[pin]
        inner: F,
        flag: Arc<Flag>,
    }
}

struct Flag {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> Gated<F> {
    /// Whether `inner`'s waker fired since it was last polled.
    pub(crate) fn fired(&self) -> bool {
        self.flag.fired.load(Ordering::Acquire)
    }

    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            flag: Arc::new(Flag {
                fired: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.flag.task.register(cx.waker());
        if !this.flag.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = Waker::from(this.flag.clone());
        this.inner.poll(&mut Context::from_waker(&waker))
    }
}

/// A connection whose first bytes were already read (by keygate's HTTP/1.1, before it handed
/// the connection to hyper): they are read again first.
pub struct Rewind<IO> {
    prefix: Vec<u8>,
    at: usize,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub fn new(prefix: Vec<u8>, io: IO) -> Self {
        Self { prefix, at: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: crate::batch::Batchable> crate::batch::Batchable for Rewind<IO> {
    fn socket(&self) -> Option<&crate::batch::Socket> {
        self.io.socket()
    }
}

/// Wraps a service so every request is counted in flight until its response body is sent.
struct Tracking<S> {
    inner: S,
    activity: Arc<Activity>,
    /// keygate stopping, for the tunnels of `CONNECT`s ([`KeepOpen`]).
    closing: CancellationToken,
}

impl<S, B> Service<Request<Incoming>> for Tracking<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    B: Body,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        if req.method() == Method::CONNECT {
            // Should it open a tunnel, the tunnel holds the connection open as a request in
            // flight: its response (the `200`) is sent long before the tunnel ends.
            let held = self.activity.request_started(req.version());
            req.extensions_mut().insert(KeepOpen {
                held: Arc::new(held),
                closing: self.closing.clone(),
            });
        }
        let in_flight = self.activity.request_started(req.version());
        TrackedFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future, handing its [`InFlight`] to the response body when it resolves
    /// (no boxing: this runs once per request).
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|inner| Tracked::new(inner, in_flight))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A look at `now` ms: a connection between requests that last did I/O at `last_io`.
    fn between(now: u64, last_io: u64) -> Seen {
        Seen {
            now,
            last_io,
            ..Seen::default()
        }
    }

    /// A look at `now` ms with one request in flight whose body has taken `steps` steps,
    /// `awaiting` of them waiting on the client.
    fn serving(now: u64, awaiting: usize, steps: u64) -> Seen {
        Seen {
            now,
            in_flight: 1,
            awaiting_client: awaiting,
            body_steps: steps,
            ..Seen::default()
        }
    }

    #[test]
    fn the_watchdog_tells_the_clocks_apart() {
        use Verdict::*;
        // Header timeout 1 s, idle timeout 4 s. Each case is a connection's looks in order.
        let fresh = |now| Seen {
            now,
            head_started: 1,
            ..Seen::default()
        };
        let cases: &[(&str, &[(Seen, Verdict)])] = &[
            (
                "a head must arrive within the header timeout of its first byte",
                &[(fresh(900), Fine), (fresh(1001), HeaderTimeout)],
            ),
            (
                "idle: a polite close after the idle timeout, cut off a header timeout later",
                &[
                    (between(3000, 100), Fine),
                    (between(4100, 100), Idle),
                    (between(4600, 100), Fine),
                    (between(5100, 100), Lingered),
                ],
            ),
            (
                "a request that began during the polite close is served; the cut-off counts \
                 from its end",
                &[
                    (between(4100, 100), Idle),
                    (serving(5500, 0, 3), Fine),
                    (between(6000, 5800), Fine),
                    (between(6800, 5800), Lingered),
                ],
            ),
            (
                "a long request with no response bytes waiting is never idle",
                &[(serving(1000, 0, 1), Fine), (serving(60_000, 0, 1), Fine)],
            ),
            (
                "a response waiting on a client that takes nothing for the idle timeout",
                &[
                    (serving(1000, 1, 5), Fine),
                    (serving(4000, 1, 5), Fine),
                    (serving(5000, 1, 5), Stalled),
                ],
            ),
            (
                "a client that keeps taking pieces, however slowly, is not stalled",
                &[
                    (serving(1000, 1, 5), Fine),
                    (serving(4500, 1, 6), Fine),
                    (serving(8000, 1, 7), Fine),
                    (serving(11_000, 1, 8), Fine),
                ],
            ),
            (
                "the stall clock starts when a body begins to wait, not at its last step",
                &[
                    (serving(1000, 0, 5), Fine),
                    (serving(4500, 1, 5), Fine),
                    (serving(8000, 1, 5), Fine),
                    (serving(8500, 1, 5), Stalled),
                ],
            ),
        ];
        for (what, looks) in cases {
            let mut dog = Watchdog::new(Duration::from_secs(1), Duration::from_secs(4));
            for (i, (seen, expected)) in looks.iter().enumerate() {
                assert_eq!(dog.look(*seen), *expected, "{what}: look {i} at {seen:?}");
            }
        }
    }

    #[test]
    fn shutting_down_cuts_off_a_connection_that_never_finishes_closing() {
        let mut dog = Watchdog::new(Duration::from_secs(1), Duration::from_secs(4));
        dog.closing(500);
        // In flight: served to the end.
        assert_eq!(dog.look(serving(2000, 0, 1)), Verdict::Fine);
        // Ended at 2100: the client has a header timeout to finish the close.
        assert_eq!(dog.look(between(2500, 2100)), Verdict::Fine);
        assert_eq!(dog.look(between(3100, 2100)), Verdict::Lingered);
    }
}
