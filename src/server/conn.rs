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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{Request, Response, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config;

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
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Per-connection timing state, shared by the I/O wrapper, the service wrapper and the
/// connection's watchdog. Times are milliseconds since `base`.
pub struct Activity {
    base: Instant,
    in_flight: AtomicUsize,
    last_io: AtomicU64,
    /// When the first byte of a request head arrived (0: not reading a head).
    head_started: AtomicU64,
    /// An HTTP/2 connection: frames (PING, WINDOW_UPDATE) arrive between requests, so only
    /// the idle clock applies once a request was seen.
    http2: AtomicBool,
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
        })
    }

    fn now(&self) -> u64 {
        // +1 keeps 0 free to mean "none".
        self.base.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
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

    /// What the watchdog should do now, and when to look again.
    fn check(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now();
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            let deadline = head + header_timeout.as_millis() as u64;
            if now >= deadline {
                return Verdict::HeaderTimeout;
            }
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 && head == 0 {
            let deadline = self.last_io.load(Ordering::Relaxed) + idle_timeout.as_millis() as u64;
            if now >= deadline {
                return Verdict::Idle;
            }
        }
        Verdict::Fine
    }
}

enum Verdict {
    Fine,
    HeaderTimeout,
    Idle,
}

/// One request in flight; ends when the response body has been sent (or dropped).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
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

/// A response body that holds its request's [`InFlight`] until it is fully sent.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    };
    let conn = serving
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Look at the clocks often enough to act within half a header timeout of a deadline.
    let tick = (serving.header_timeout / 2).min(serving.idle_timeout / 2);
    let mut closing_requested = false;
    loop {
        let watch = Gated::new(async {
            tokio::select! {
                _ = serving.closing.cancelled(), if !closing_requested => Alarm::Closing,
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
                    closing_requested = true;
                    conn.as_mut().graceful_shutdown();
                }
                Alarm::Tick => match activity.check(serving.header_timeout, serving.idle_timeout) {
                    Verdict::Fine => {}
                    Verdict::HeaderTimeout => {
                        tracing::debug!("request head not received in time; closing");
                        return;
                    }
                    Verdict::Idle if !closing_requested => {
                        closing_requested = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Verdict::Idle => {}
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
}

impl<S, B> Service<Request<Incoming>> for Tracking<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
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
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|inner| Tracked {
            inner,
            _in_flight: in_flight,
        })))
    }
}
