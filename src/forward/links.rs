//! HTTP/2 clients' requests over keygate's own upstream connections, for an HTTP/1.1
//! upstream: each admitted stream takes a parked [`Link`] (or dials one), writes the upstream's
//! head with [`upstream_head::write_request_head`] (the same rendering of the rulebook as
//! keygate's own HTTP/1.1), streams the request body, reads the response head with
//! [`response_head::parse`], and hands hyper a [`LinkBody`] that reads the response body from
//! the link and parks the link when the body is through. All of it runs in the stream's own
//! task.
//!
//! Why not hyper's pooled client: on the benchmark machine, with h2load's 50 connections × 10
//! streams and the pooled client behind them, a perf profile put ~37 % of keygate's CPU in the
//! pool's HTTP/1.1 connection tasks, and every request crossed three tasks (h2 connection,
//! stream, pooled connection); keygate served 0.48-0.59× HAProxy (bench/RESULTS.md,
//! 2026-12-06). The pool stays for an HTTP/2 upstream and for HTTP/1.1 clients hyper serves.
//!
//! An HTTP/2 client's WebSocket (RFC 8441: an extended CONNECT with `:protocol websocket`)
//! takes the same way: [`WebSocket::take`] turns the CONNECT into the `GET` an HTTP/1.1 client
//! would have sent, before any stage reads it, so it is authorized, limited and forwarded as
//! that `GET`; the upstream gets an HTTP/1.1 handshake with keygate's own key, and when its
//! `101` answers that key the client is told `200` and its stream is joined to the link
//! ([`OpenTunnel::run`]). Any other answer is relayed as a response, except a `2xx`, which a
//! client would take for an open tunnel: that is the upstream's failure (502).
//!
//! What the session's forwarding does, this does too: one retry on a fresh connection when a
//! reused one turns out closed (only for a request without a body, and for a close before any
//! response byte only when the method is idempotent), the upstream timeout counted from the
//! request's latest progress (a 408 when it runs out waiting on the client's body), failures
//! counted by kind. A link is parked only when both
//! messages ended where their framing said; a response body cut short, a client that went
//! away, or an answer that came before the request body was through close it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::SEC_WEBSOCKET_ACCEPT;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::failure::{Failure, report_silence};
use super::response_head::{self, Parsed, UpstreamResponse};
use super::silence::Silence;
use super::tunnel::{self, KeepOpen};
use super::upstream::{Destination, Link, Parking, Stream};
use super::upstream_head::{self, Fields, RequestContext};
use super::{Forwarder, Origin, UpstreamFailure};
use crate::header_rules;
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::wire::request::{FramingRules, HeadError};
use crate::wire::{self, BodyError, Buffer, Decoder, Encoding, Framing};

/// How an HTTP/2 request's body goes upstream: the length it declares, or chunked when it
/// declares none and has one; refused where the framing rules of keygate's own HTTP/1.1
/// refuse (conflicting lengths, a `Transfer-Encoding`, more than one `Host`). `end_stream`:
/// the request ended with its headers.
pub fn request_framing(headers: &HeaderMap, end_stream: bool) -> Result<Framing, &'static str> {
    let mut rules = FramingRules::default();
    let why = |e| match e {
        HeadError::Invalid(why) => why,
        HeadError::TooLarge => "the request head is too large",
    };
    for (name, value) in headers {
        rules
            .line(
                header_rules::name(name.as_str().as_bytes()),
                value.as_bytes(),
            )
            .map_err(why)?;
    }
    // An HTTP/2 request's target always names its authority; `Host` is optional.
    match rules.finish(true, true).map_err(why)? {
        Framing::Chunked => Err("Transfer-Encoding is not allowed in HTTP/2"),
        Framing::Empty if !end_stream => Ok(Framing::Chunked),
        framing => Ok(framing),
    }
}

/// An HTTP/2 client's WebSocket handshake, taken off its request (module doc).
pub struct WebSocket {
    /// The client's stream, handed over by hyper once the `200` is sent.
    upgrade: OnUpgrade,
    /// Holds the client connection open while the tunnel lives.
    keep_open: Option<KeepOpen>,
}

impl WebSocket {
    /// If `req` is an extended CONNECT for a WebSocket: it becomes the `GET` an HTTP/1.1
    /// client's handshake is, which is what every stage reads and the upstream receives, and
    /// the handshake is returned. Any other request is left as it is (a CONNECT stays one, and
    /// is refused).
    pub fn take<B>(req: &mut Request<B>) -> Option<Self> {
        if req.method() != Method::CONNECT
            || !req
                .extensions()
                .get::<Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
        {
            return None;
        }
        // hyper gives every HTTP/2 CONNECT its stream to hand over; without one the request
        // stays a CONNECT, and is refused.
        let upgrade = req.extensions_mut().remove::<OnUpgrade>()?;
        let keep_open = req.extensions_mut().remove::<KeepOpen>();
        req.extensions_mut().remove::<Protocol>();
        *req.method_mut() = Method::GET;
        Some(Self { upgrade, keep_open })
    }
}

/// What an HTTP/2 client's request became upstream.
pub enum Forwarded {
    /// A response to relay.
    Response(Response<LinkBody>),
    /// The upstream switched to WebSocket: the client is told `200` with `headers`, then the
    /// tunnel runs.
    Tunnel {
        headers: HeaderMap,
        tunnel: OpenTunnel,
    },
}

/// A WebSocket the upstream accepted, waiting for hyper to hand over the client's stream.
pub struct OpenTunnel {
    link: Link,
    websocket: WebSocket,
}

impl OpenTunnel {
    /// Once the `200` is out: the client's stream and the link joined until either closes or
    /// nothing moves for `idle` ([`tunnel`]). What the upstream sent after its `101` goes
    /// first.
    pub async fn run(self, idle: Duration, metrics: &Metrics, lapse: impl Future<Output = ()>) {
        let Self {
            mut link,
            websocket,
        } = self;
        let keep_open = websocket.keep_open;
        let mut client = match websocket.upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            // The client reset the stream, or the connection ended, before the `200` went.
            Err(e) => {
                tracing::debug!(error = %e, "the client's stream was not handed over");
                return;
            }
        };
        let early = link.buf.filled();
        if write_flush(&mut client, early).await.is_err() {
            return;
        }
        let relayed = tunnel::Relayed {
            up: &[],
            down: early,
        };
        let stopping = async {
            match &keep_open {
                Some(held) => held.closing.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let ending = tunnel::ending(stopping, lapse);
        tunnel::run(
            &mut client,
            &mut link.stream,
            relayed,
            idle,
            metrics,
            ending,
        )
        .await;
    }
}

impl Forwarder {
    /// Forwards an admitted HTTP/2 request over keygate's own upstream connections (module
    /// doc); the caller has normalized its path. `websocket`: the request is a WebSocket
    /// handshake ([`WebSocket::take`]). A failure is counted in `metrics` by its kind.
    pub async fn over_link(
        &self,
        req: Request<Incoming>,
        origin: &Origin<'_>,
        metrics: &Metrics,
        batch_writes: bool,
        websocket: Option<WebSocket>,
    ) -> Result<Forwarded, Reject> {
        let (parts, mut body) = req.into_parts();
        let framing =
            request_framing(&parts.headers, body.is_end_stream()).map_err(Reject::BadRequest)?;
        let upstream = self.upstream_for(origin.key);
        let target = self.target(upstream);
        let key = match websocket {
            Some(_) => Some(tunnel::websocket_key().map_err(|e| {
                tracing::error!(error = %e, "no random source for a WebSocket key");
                Reject::UpstreamUnavailable
            })?),
            None => None,
        };
        let mut fields = Fields::new(&parts.method, &parts.uri, &parts.headers);
        if let Some(key) = &key {
            fields = fields.websocket(key);
        }
        let mut head = Vec::with_capacity(1024);
        upstream_head::write_request_head(
            &mut head,
            &fields,
            &RequestContext {
                base_path: &target.base_path,
                path: parts.uri.path(),
                upstream_host: target.authority.as_bytes(),
                preserve_host: self.preserve_host,
                credential_headers: &self.credential_headers,
                key_prefix: &self.key_prefix,
                key: origin.key,
                peer: origin.peer_header.as_bytes(),
                peer_trusted: origin.peer_trusted,
                tls: origin.tls,
                framing,
                upgrade: websocket.is_some(),
            },
        );
        let head_request = parts.method == Method::HEAD;
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        // Nothing but the head to send: it can be sent again.
        let whole = matches!(framing, Framing::Empty | Framing::Length(0));
        let route = self.route(upstream);
        let mut link = self.link(route, metrics).await?;
        let mut retried = false;
        let (response, request_done) = loop {
            let outcome = if whole {
                self.exchange(
                    &mut link,
                    &mut head,
                    head_request,
                    key.is_some(),
                    batch_writes,
                )
                .await
                .map(|r| (r, true))
            } else {
                self.exchange_streaming(&mut link, &head, &mut body, framing, head_request)
                    .await
            };
            let failure = match outcome {
                Ok(done) => break done,
                Err(failure) => failure,
            };
            if link.reused && !retried && whole && failure.may_retry(idempotent) {
                retried = true;
                link = self.dial(route, metrics).await?;
                continue;
            }
            return Err(failure.report(metrics));
        };
        let UpstreamResponse {
            status,
            mut headers,
            framing,
            keep_alive,
            ..
        } = response;
        if let (Some(key), Some(websocket)) = (&key, websocket) {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // RFC 8441 §5: no `Sec-WebSocket-Accept` over HTTP/2; the answer is keygate's.
                let accept = headers.remove(SEC_WEBSOCKET_ACCEPT);
                if !accept.is_some_and(|a| tunnel::accepts(key, a.as_bytes())) {
                    return Err(Failure::malformed(
                        "a 101 whose Sec-WebSocket-Accept does not answer the key",
                    )
                    .report(metrics));
                }
                return Ok(Forwarded::Tunnel {
                    headers,
                    tunnel: OpenTunnel { link, websocket },
                });
            }
            if status.is_success() {
                return Err(Failure::malformed("a 2xx to a WebSocket handshake").report(metrics));
            }
        }
        let mut decoder = Decoder::new(framing);
        let mut first = Vec::new();
        if let Err(e) =
            wire::body::take_buffered(&mut decoder, Encoding::Raw, &mut link.buf, &mut first)
        {
            return Err(Failure::malformed(e).report(metrics));
        }
        let mut body = LinkBody {
            link: Some(link),
            decoder,
            first: (!first.is_empty()).then(|| Bytes::from(first)),
            reuse: keep_alive && request_done,
            parking: self.parking.clone(),
        };
        if body.decoder.is_done() {
            // The whole body came with the head: the link is free before hyper even sends it.
            body.finish();
        }
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(Forwarded::Response(response))
    }

    /// A parked connection to `route`, or a new one.
    async fn link(&self, route: Destination, metrics: &Metrics) -> Result<Link, Reject> {
        match self.parking.take(route) {
            Some(link) => Ok(link),
            None => self.dial(route, metrics).await,
        }
    }

    async fn dial(&self, route: Destination, metrics: &Metrics) -> Result<Link, Reject> {
        // Boxed: rare, and its state would otherwise make every request's future larger.
        Box::pin(self.dialer.dial(route))
            .await
            .map_err(|e| Failure::Dial(e).report(metrics))
    }

    /// A request without a body: its head out, the response head in. `websocket`: the head is
    /// a WebSocket handshake.
    async fn exchange(
        &self,
        link: &mut Link,
        head: &mut Vec<u8>,
        head_request: bool,
        websocket: bool,
        batch_writes: bool,
    ) -> Result<UpstreamResponse, Failure> {
        let deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline, write_head(link, head, batch_writes))
            .await
            .map_err(|_| Failure::Timeout)??;
        read_head(
            &mut link.stream,
            &mut link.buf,
            head_request,
            websocket,
            &|| deadline,
        )
        .await
    }

    /// A request with a body: the head, then the body streamed while the response head is
    /// awaited, the timeout counted from the body's latest progress. Also says whether the
    /// request went out whole (an upstream may answer before it is).
    async fn exchange_streaming(
        &self,
        link: &mut Link,
        head: &[u8],
        body: &mut Incoming,
        framing: Framing,
        head_request: bool,
    ) -> Result<(UpstreamResponse, bool), Failure> {
        let base = Instant::now();
        let timeout = self.timeout;
        // Milliseconds after `base` of the latest request bytes sent upstream.
        let progress = AtomicU64::new(0);
        let deadline = || base + Duration::from_millis(progress.load(Ordering::Relaxed)) + timeout;
        tokio::time::timeout_at(deadline(), write_flush(&mut link.stream, head))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(Failure::Write)?;
        let Link { stream, buf, .. } = link;
        let (mut up_read, mut up_write) = tokio::io::split(stream);
        let max = self.max_body as u64;
        let waiting = AtomicBool::new(false);
        let pump = pump(body, &mut up_write, framing, max, &waiting, || {
            progress.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        let answer = read_head(&mut up_read, buf, head_request, false, &deadline);
        tokio::pin!(pump, answer);
        let pumped = tokio::select! {
            pumped = &mut pump => pumped,
            // The upstream answered before the body was through (it refused it, most likely):
            // the answer goes to the client, the rest of the body is not read. Or the
            // upstream timeout ran out while the body waited on the client: its silence.
            early = &mut answer => {
                return match early {
                    Err(Failure::Timeout) if waiting.load(Ordering::Relaxed) => {
                        Err(Failure::Client(Reject::RequestTimeout))
                    }
                    early => early.map(|r| (r, false)),
                };
            }
        };
        let done = match pumped {
            Ok(()) => true,
            Err(BodyError::Write(e)) => {
                // The upstream stopped reading: its answer may already be on the way.
                tracing::debug!(error = %e, "upstream stopped reading the request body");
                false
            }
            Err(BodyError::TooLarge) => return Err(Failure::Client(Reject::PayloadTooLarge)),
            Err(_) => {
                return Err(Failure::Client(Reject::BadRequest(
                    "the request body is malformed or cut short",
                )));
            }
        };
        answer.await.map(|r| (r, done))
    }
}

/// The request head out: with this turn's other upstream writes where batching works
/// ([`crate::batch`]: an upstream on the same CPU then wakes once per turn, not once per
/// request), else on its own. `head` comes back as it went, or empty when a batched write's
/// outcome is unknown (then it is not sent again: no retry).
async fn write_head(
    link: &mut Link,
    head: &mut Vec<u8>,
    batch_writes: bool,
) -> Result<(), Failure> {
    let mut sent = 0;
    if batch_writes && let Stream::Plain(socket) = &link.stream {
        match crate::batch::send(socket, head).await {
            Some(Ok(n)) => sent = n,
            Some(Err(e)) if head.is_empty() => {
                return Err(Failure::Broken(
                    UpstreamFailure::of_io(&e, false),
                    e.to_string(),
                ));
            }
            Some(Err(e)) => return Err(Failure::Write(e)),
            None => {}
        }
    }
    write_flush(&mut link.stream, &head[sent..])
        .await
        .map_err(Failure::Write)
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, bytes: &[u8]) -> io::Result<()> {
    if !bytes.is_empty() {
        io.write_all(bytes).await?;
    }
    io.flush().await
}

/// Streams the client's body to the upstream, framed as the head said: its declared length
/// (which HTTP/2 holds the client to, and this checks again) or chunks. At most `max` bytes.
/// `waiting` says whether it waits on the client.
async fn pump<W: AsyncWrite + Unpin>(
    body: &mut Incoming,
    dst: &mut W,
    framing: Framing,
    max: u64,
    waiting: &AtomicBool,
    mut progress: impl FnMut(),
) -> Result<(), BodyError> {
    let encoding = match framing {
        Framing::Chunked => Encoding::Chunked,
        _ => Encoding::Raw,
    };
    let declared = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut sent = 0u64;
    let mut out = Vec::new();
    loop {
        waiting.store(true, Ordering::Relaxed);
        let frame = body.frame().await;
        waiting.store(false, Ordering::Relaxed);
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| BodyError::Read(io::Error::other(e)))?;
        // Trailers are dropped, as keygate's own HTTP/1.1 drops them.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > max {
            return Err(BodyError::TooLarge);
        }
        if declared.is_some_and(|n| sent > n) {
            return Err(BodyError::Malformed);
        }
        if data.is_empty() {
            continue;
        }
        match encoding {
            Encoding::Raw => dst.write_all(&data).await,
            Encoding::Chunked => {
                out.clear();
                encoding.frame(&data, &mut out);
                dst.write_all(&out).await
            }
        }
        .map_err(BodyError::Write)?;
        progress();
    }
    if declared.is_some_and(|n| sent != n) {
        return Err(BodyError::Truncated);
    }
    out.clear();
    encoding.finish(&mut out);
    write_flush(dst, &out).await.map_err(BodyError::Write)?;
    progress();
    Ok(())
}

/// Reads until the final response head is parsed (interim ones skipped). On the clock running
/// out, `deadline()` says whether time is really up (it moves with a request body's progress).
async fn read_head<R: AsyncRead + Unpin + ?Sized>(
    src: &mut R,
    buf: &mut Buffer,
    head_request: bool,
    websocket: bool,
    deadline: &(dyn Fn() -> Instant + Sync),
) -> Result<UpstreamResponse, Failure> {
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            match response_head::parse(buf.filled(), head_request, websocket) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Final(response)) => {
                    buf.consume(response.len);
                    return Ok(response);
                }
                Ok(Parsed::Interim { len }) => {
                    buf.consume(len);
                    continue;
                }
                Err(e) => return Err(Failure::malformed(e)),
            }
        }
        let read = loop {
            let at = deadline();
            tokio::select! {
                biased;
                read = src.read(buf.spare()) => break read,
                () = tokio::time::sleep_until(at) => {
                    if Instant::now() >= deadline() {
                        return Err(Failure::Timeout);
                    }
                }
            }
        };
        buf.filled_by(Failure::of_head_read(read, heard)?);
        heard = true;
    }
}

/// The upstream's response body for hyper to send to an HTTP/2 client, read from the link as
/// hyper asks for it. The link is parked when the body ended where its framing said (and the
/// request went out whole and the upstream keeps the connection); dropped, so closed, when
/// the body is cut short or malformed, or when hyper drops the body early (the client reset
/// the stream or went away).
pub struct LinkBody {
    link: Option<Link>,
    decoder: Decoder,
    /// Body bytes that came with the head.
    first: Option<Bytes>,
    reuse: bool,
    parking: Arc<Parking>,
}

impl LinkBody {
    /// The body is through: the link goes back to the parking if it can carry another request.
    fn finish(&mut self) {
        if let Some(mut link) = self.link.take()
            && self.reuse
        {
            link.reused = true;
            self.parking.park(link);
        }
    }
}

impl Body for LinkBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            if this.decoder.is_done() {
                this.finish();
                return Poll::Ready(None);
            }
            let Some(link) = this.link.as_mut() else {
                return Poll::Ready(None);
            };
            if !link.buf.is_empty() {
                let (consumed, data) = match this.decoder.decode(link.buf.filled()) {
                    Ok(step) => step,
                    Err(e) => {
                        this.link = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                };
                if consumed > 0 {
                    let bytes = Bytes::copy_from_slice(&link.buf.filled()[data]);
                    link.buf.consume(consumed);
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    if !bytes.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    continue;
                }
            }
            let mut read = ReadBuf::new(link.buf.spare());
            match Pin::new(&mut link.stream).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.link = None;
                    return Poll::Ready(Some(Err(BodyError::Read(e))));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        // Closed: the end of a body delimited by the close, else a cut.
                        this.link = None;
                        if this.decoder == Decoder::Close {
                            this.decoder = Decoder::Done;
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(BodyError::Truncated)));
                    }
                    link.buf.filled_by(n);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.decoder.is_done() || self.link.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(first),
            Decoder::Length(left) => SizeHint::with_exact(first + left),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(first);
                hint
            }
        }
    }
}

/// The body of a response hyper sends: the pool's, or a [`LinkBody`], on the upstream's
/// silence clock (`[upstream] body_timeout`) unless it ended with its head.
pub struct ResponseBody {
    source: Source,
    silence: Option<Box<Clock>>,
}

enum Source {
    Pool(Incoming),
    Link(LinkBody),
}

/// The clock, and what counts its expiry: only a body still streaming after its head gets
/// one, so a response that came whole (most of them) costs nothing for it.
struct Clock {
    silence: Silence,
    counter: prometheus::IntCounter,
}

impl ResponseBody {
    /// A response from the shared pool (an HTTP/2 upstream).
    pub fn pool(body: Incoming, body_timeout: Duration, metrics: &Metrics) -> Self {
        Self::new(Source::Pool(body), body_timeout, metrics)
    }

    /// A response read from a link.
    pub fn link(body: LinkBody, body_timeout: Duration, metrics: &Metrics) -> Self {
        Self::new(Source::Link(body), body_timeout, metrics)
    }

    fn new(source: Source, body_timeout: Duration, metrics: &Metrics) -> Self {
        let silence = source.may_wait().then(|| {
            Box::new(Clock {
                silence: Silence::new(body_timeout),
                counter: metrics
                    .upstream_failure(UpstreamFailure::BodyTimeout)
                    .clone(),
            })
        });
        Self { source, silence }
    }
}

impl Source {
    /// Whether reading the rest may wait on the upstream: not when the whole body came with
    /// the head.
    fn may_wait(&self) -> bool {
        match self {
            Self::Pool(b) => !b.is_end_stream(),
            Self::Link(b) => !b.decoder.is_done() && b.link.is_some(),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Pool(b) => b.is_end_stream(),
            Self::Link(b) => b.is_end_stream(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::Pool(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::Link(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        };
        let Some(clock) = this.silence.as_mut() else {
            return polled;
        };
        if polled.is_ready() {
            clock.silence.heard();
            return polled;
        }
        // Dropping the body after this error closes the link (a `LinkBody` parks only a
        // finished one) and makes hyper reset the stream.
        clock.silence.poll_expired(cx).map(|silent| {
            report_silence(&clock.counter, &silent);
            Some(Err(silent.into()))
        })
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Pool(b) => b.size_hint(),
            Source::Link(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    #[test]
    fn how_an_http2_request_body_goes_upstream() {
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            bool,
            Option<Framing>,
        );
        let cases: &[Case] = &[
            ("no body", &[], true, Some(Framing::Empty)),
            (
                "a body of unknown length",
                &[],
                false,
                Some(Framing::Chunked),
            ),
            (
                "declared",
                &[("content-length", "5")],
                false,
                Some(Framing::Length(5)),
            ),
            (
                "declared empty",
                &[("content-length", "0")],
                true,
                Some(Framing::Length(0)),
            ),
            (
                "agreeing copies",
                &[("content-length", "5"), ("content-length", "5")],
                false,
                Some(Framing::Length(5)),
            ),
            (
                "conflicting copies",
                &[("content-length", "5"), ("content-length", "6")],
                false,
                None,
            ),
            (
                "a list that disagrees",
                &[("content-length", "5, 6")],
                false,
                None,
            ),
            ("not a number", &[("content-length", "five")], false, None),
            ("signed", &[("content-length", "+5")], false, None),
            (
                "transfer-encoding",
                &[("transfer-encoding", "chunked")],
                false,
                None,
            ),
            (
                "two hosts",
                &[("host", "a.example"), ("host", "b.example")],
                true,
                None,
            ),
            (
                "one host",
                &[("host", "a.example")],
                true,
                Some(Framing::Empty),
            ),
        ];
        for (name, lines, end_stream, want) in cases {
            let mut headers = HeaderMap::new();
            for (n, v) in *lines {
                headers.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            assert_eq!(request_framing(&headers, *end_stream).ok(), *want, "{name}");
        }
    }

    #[test]
    fn only_an_extended_connect_for_a_websocket_becomes_its_get() {
        // (method, `:protocol`, hyper's stream to hand over, taken, the method the stages see)
        let cases = [
            (Method::CONNECT, Some("websocket"), true, true, Method::GET),
            (Method::CONNECT, Some("WebSocket"), true, true, Method::GET),
            (
                Method::CONNECT,
                Some("connect-udp"),
                true,
                false,
                Method::CONNECT,
            ),
            (Method::CONNECT, None, true, false, Method::CONNECT),
            (
                Method::CONNECT,
                Some("websocket"),
                false,
                false,
                Method::CONNECT,
            ),
            (Method::GET, Some("websocket"), true, false, Method::GET),
        ];
        for (method, protocol, stream, taken, seen) in cases {
            let mut req = Request::builder().method(method.clone()).body(()).unwrap();
            if let Some(p) = protocol {
                req.extensions_mut().insert(Protocol::from_static(p));
            }
            if stream {
                let none = hyper::upgrade::on(Request::new(()));
                req.extensions_mut().insert(none);
            }
            let got = WebSocket::take(&mut req);
            let case = format!("{method} {protocol:?} {stream}");
            assert_eq!(got.is_some(), taken, "{case}");
            assert_eq!(req.method(), seen, "{case}");
            // What the stages see carries no trace of the CONNECT.
            assert_eq!(
                req.extensions().get::<Protocol>().is_some(),
                protocol.is_some() && !taken,
                "{case}"
            );
        }
    }
}
