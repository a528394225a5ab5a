//! One HTTP/1.1 client connection, served by keygate's own HTTP/1.1 ([`crate::h1`]): request
//! after request, each head read into the connection's buffer, admitted by [`Proxy::admit`],
//! then forwarded over the connection's own upstream connection ([`crate::forward::upstream`])
//! or refused, all in this task.
//!
//! Clocks: between requests the idle timeout (and, at half the header timeout, the upstream
//! connection is lent to the parking); from a head's first byte the header timeout
//! (slow-loris clients are cut off silently); from a request's last byte sent upstream the
//! upstream timeout for the response head. Bodies have no clock of their own, as with hyper:
//! a slow stream is not a dead one. Each clock is a [`Deadline`] that costs nothing per
//! request.
//!
//! Retries: a request whose upstream connection was reused and that met a close before any
//! response byte goes once more on a new connection, if it was sent whole and is idempotent
//! (RFC 9110 §9.2.2) or could not be written at all. That close is the upstream's idle
//! timeout crossing the request on the wire, not an answer.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::conn::{Gated, Rewind};
use crate::forward::Forwarder;
use crate::forward::h1::{RequestContext, write_request_head};
use crate::forward::upstream::{DialError, Link, Route};
use crate::h1::write::{self, Limit, Parsed, Response, ResponseContext};
use crate::h1::{self, BodyError, Buffer, Decoder, Encoding, Framing, HeadError, RequestHead};
use crate::head::Head;
use crate::proxy::{Audit, Connection, Current, Ended, Proxy};
use crate::reject::Reject;

/// The client connection's read buffer to start with; it grows for larger heads.
const READ_BUFFER: usize = 8 * 1024;
/// A refused request's body up to this size is read and dropped, so the connection stays
/// open; a larger one closes it.
const DRAIN_MAX: u64 = 64 * 1024;
/// A connection closed with input still coming keeps reading (and dropping) it this long, so
/// that the client reads the response before a reset could destroy it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// How an HTTP/2 client with prior knowledge starts (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The connection's settings from `[server]` (which a reload does not change).
pub struct Timing {
    pub header: Duration,
    pub idle: Duration,
    pub max_header_bytes: usize,
}

/// How serving a connection ended.
pub enum Served<IO> {
    Done,
    /// Not keygate's HTTP/1.1 to serve (an HTTP/2 client with prior knowledge, or a reload made
    /// the upstream HTTP/2): hyper takes the connection, with the bytes already read.
    Handoff(Rewind<IO>),
}

pub async fn serve<IO>(
    io: IO,
    proxy: &Proxy,
    conn: &Connection,
    timing: &Timing,
    closing: &CancellationToken,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = Session {
        proxy,
        conn,
        timing,
        io,
        buf: Buffer::with_capacity(READ_BUFFER),
        head: RequestHead::default(),
        up: Vec::with_capacity(1024),
        down: Vec::with_capacity(1024),
        link: None,
        clock: Deadline::new(),
        upstream_clock: Deadline::new(),
        closing: Closing::new(closing),
        first: true,
    };
    let end = session.run().await;
    session.release_link();
    match end {
        Next::Handoff => Served::Handoff(Rewind::new(session.buf.take_all(), session.io)),
        _ => Served::Done,
    }
}

struct Session<'s, IO> {
    proxy: &'s Proxy,
    conn: &'s Connection,
    timing: &'s Timing,
    io: IO,
    /// What the client sent and keygate has not used yet.
    buf: Buffer,
    head: RequestHead,
    /// Scratch for what goes upstream (a request head, body pieces)...
    up: Vec<u8>,
    /// ... and for what goes to the client.
    down: Vec<u8>,
    /// This connection's upstream connection, between requests.
    link: Option<Link>,
    /// The idle and header clocks.
    clock: Deadline,
    /// The response head's.
    upstream_clock: Deadline,
    closing: Closing,
    /// No request has been read yet (an HTTP/2 preface is possible).
    first: bool,
}

/// What becomes of the connection after a step.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    /// Close: the response said so, or the client asked.
    Close,
    /// Close, but the client may still be sending (an unread body): keep reading a while.
    Linger,
    /// The connection is unusable (a write failed) or was handed to an upgrade.
    Gone,
    Handoff,
}

/// What a head wait ended with.
enum Wait {
    Head,
    Closed,
    Http2,
    Refuse(Reject),
}

/// What forwarding needs to know of the request once its head is out of the buffer.
struct Facts {
    method: Method,
    log_path: Option<String>,
    framing: Framing,
    http11: bool,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// Why no usable response came from the upstream.
enum Failure {
    Timeout,
    /// Closed or reset before any response byte.
    ClosedEarly,
    Broken(String),
}

impl Failure {
    fn reject(&self) -> Reject {
        match self {
            Self::Timeout => Reject::UpstreamTimeout,
            Self::ClosedEarly | Self::Broken(_) => Reject::UpstreamUnavailable,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Session<'_, IO> {
    async fn run(&mut self) -> Next {
        loop {
            match self.next_head().await {
                Wait::Head => {}
                Wait::Closed => return Next::Close,
                Wait::Http2 => return Next::Handoff,
                Wait::Refuse(reject) => {
                    let next = self.refuse_unread(reject).await;
                    return self.close(next).await;
                }
            }
            self.first = false;
            match self.exchange().await {
                Next::KeepAlive => {}
                Next::Handoff => return Next::Handoff,
                next => return self.close(next).await,
            }
        }
    }

    /// Waits for the next request head (see the module doc for the clocks).
    async fn next_head(&mut self) -> Wait {
        let now = Instant::now();
        let idle_at = now + self.timing.idle;
        let mut lend_at = (self.link.is_some() && self.buf.is_empty())
            .then(|| now + (self.timing.header / 2).min(self.timing.idle / 2));
        // Bytes already here (a pipelined request) start the header clock now; otherwise it
        // starts once a read leaves a head incomplete.
        let mut reading = !self.buf.is_empty();
        self.clock.set(match (reading, lend_at) {
            (true, _) => now + self.timing.header,
            (false, Some(at)) => at,
            (false, None) => idle_at,
        });
        loop {
            if !self.buf.is_empty() {
                if self.first && http2_preface(self.buf.filled()) {
                    return Wait::Http2;
                }
                match self
                    .head
                    .parse(self.buf.filled(), self.timing.max_header_bytes)
                {
                    Ok(true) => return Wait::Head,
                    Ok(false) if !reading => {
                        reading = true;
                        self.clock.set(Instant::now() + self.timing.header);
                    }
                    Ok(false) => {}
                    Err(HeadError::TooLarge) => return Wait::Refuse(Reject::HeadersTooLarge),
                    Err(HeadError::Invalid(why)) => return Wait::Refuse(Reject::BadRequest(why)),
                }
            }
            let idle = self.buf.is_empty();
            let event = tokio::select! {
                biased;
                read = self.io.read(self.buf.spare()) => Some(read),
                () = self.clock.expired() => None,
                () = self.closing.wait(), if idle => return Wait::Closed,
            };
            match event {
                Some(Ok(0) | Err(_)) => return Wait::Closed,
                Some(Ok(n)) => self.buf.filled_by(n),
                None if reading => {
                    tracing::debug!("request head not received in time; closing");
                    return Wait::Closed;
                }
                None if lend_at.take().is_some() => {
                    self.release_link();
                    self.clock.set(idle_at);
                }
                None => return Wait::Closed,
            }
        }
    }

    /// One request: admitted and forwarded, or refused.
    async fn exchange(&mut self) -> Next {
        let started = std::time::Instant::now();
        let current = self.proxy.current();
        if current.forwarder.is_http2() {
            return Next::Handoff;
        }
        let mut audit = Audit::default();
        let req = h1::Request::new(&self.head, self.buf.filled());
        let admitted = self
            .proxy
            .admit(&current, &req, self.conn, &mut audit)
            .await;
        let head = &self.head;
        let facts = Facts {
            method: head.method().clone(),
            // The path only: query strings carry secrets often enough (`?api_key=`).
            log_path: current.config.log.access.then(|| req.path().to_owned()),
            framing: head.framing,
            http11: head.http11,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            upgrade: req.upgrade().is_some(),
        };
        let admission = match admitted {
            Ok(admission) => admission,
            Err(reject) => {
                let len = head.len;
                self.buf.consume(len);
                let (status, next) = self.refuse(reject, &audit, &facts, Body::Untouched).await;
                self.finish(&current, started, &facts, &audit, status.1, status.0);
                tracing::trace!(status = status.0, ?next, "request refused");
                return next;
            }
        };
        let forwarder = &current.forwarder;
        let sandbox = forwarder.sandboxed(audit.key.as_deref());
        let target = forwarder.target(sandbox);
        self.up.clear();
        write_request_head(
            &mut self.up,
            &req,
            &RequestContext {
                base_path: &target.base_path,
                path: admission.path.as_deref().unwrap_or(req.path()),
                upstream_host: target.authority.as_bytes(),
                preserve_host: forwarder.preserve_host(),
                credential_headers: forwarder.credential_headers(),
                key: audit.key.as_deref(),
                peer: self.conn.peer_header.as_bytes(),
                peer_trusted: audit.peer_trusted,
                tls: self.conn.tls,
                framing: facts.framing,
                upgrade: facts.upgrade,
            },
        );
        let len = head.len;
        self.buf.consume(len);
        let (status, next) = self
            .forward(forwarder, forwarder.route(sandbox), &audit, &facts)
            .await;
        self.finish(&current, started, &facts, &audit, status.1, status.0);
        tracing::trace!(status = status.0, ?next, "request forwarded");
        next
    }

    /// Sends the request upstream and relays the response. Returns the status the client got
    /// with the decision logged for it.
    async fn forward(
        &mut self,
        forwarder: &Forwarder,
        route: Route,
        audit: &Audit<'_>,
        facts: &Facts,
    ) -> ((u16, &'static str), Next) {
        // The body bytes that came with the head go with the upstream's head, in one write.
        let mut decoder = Decoder::new(facts.framing);
        let encoding = match facts.framing {
            Framing::Chunked => Encoding::Chunked,
            _ => Encoding::Raw,
        };
        let mut sent =
            match h1::body::take_buffered(&mut decoder, encoding, &mut self.buf, &mut self.up) {
                Ok(n) => n,
                Err(e) => {
                    return self
                        .refuse(body_reject(&e), audit, facts, Body::Partial)
                        .await;
                }
            };
        if sent > forwarder.max_body() {
            return self
                .refuse(Reject::PayloadTooLarge, audit, facts, Body::Partial)
                .await;
        }
        let whole = decoder.is_done();
        let body = if whole { Body::Consumed } else { Body::Partial };
        if !whole && facts.expect_continue && self.send_down(write::CONTINUE).await.is_err() {
            return ((499, "client_closed"), Next::Gone);
        }

        let mut link = match self.take_link(forwarder, route).await {
            Ok(link) => link,
            Err(reject) => return self.refuse(reject, audit, facts, body).await,
        };
        let idempotent = matches!(
            facts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        // One turn of the event loop first: every connection whose request arrived in this
        // turn parses and admits it, and then the upstream writes go out together. An upstream
        // on the same CPU (a sidecar's usual place) then wakes once per batch instead of once
        // per request: on the benchmark machine 0.70 instead of 0.92 context switches per
        // request and 18 % more throughput, at no cost at a fixed 5,000 req/s; a second turn
        // adds nothing (bench/RESULTS.md, 2026-12-04).
        tokio::task::yield_now().await;
        let sent_at = Instant::now();
        let mut retried = false;
        let response = loop {
            if let Err(e) = write_flush(&mut link.stream, &self.up).await {
                if link.reused && !retried && whole {
                    retried = true;
                    link = match self.dial(forwarder, route).await {
                        Ok(link) => link,
                        Err(reject) => return self.refuse(reject, audit, facts, body).await,
                    };
                    continue;
                }
                tracing::warn!(error = %e, "upstream request failed: writing the request");
                return self
                    .refuse(Reject::UpstreamUnavailable, audit, facts, body)
                    .await;
            }
            let cx = self.response_context(facts, audit);
            let outcome = if whole {
                let deadline = sent_at + forwarder.timeout();
                self.await_head(&mut link, &cx, || deadline).await
            } else {
                match self
                    .stream_body(&mut link, &mut decoder, encoding, forwarder, &mut sent, &cx)
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(reject) => return self.refuse(reject, audit, facts, Body::Partial).await,
                }
            };
            match outcome {
                Ok(response) => break response,
                Err(Failure::ClosedEarly) if link.reused && !retried && whole && idempotent => {
                    retried = true;
                    link = match self.dial(forwarder, route).await {
                        Ok(link) => link,
                        Err(reject) => return self.refuse(reject, audit, facts, body).await,
                    };
                }
                Err(failure) => {
                    if let Failure::Broken(why) = &failure {
                        tracing::warn!(error = %why, "upstream request failed");
                    } else if matches!(failure, Failure::ClosedEarly) {
                        tracing::warn!("upstream request failed: closed before responding");
                    }
                    let body = if decoder.is_done() {
                        Body::Consumed
                    } else {
                        Body::Partial
                    };
                    return self.refuse(failure.reject(), audit, facts, body).await;
                }
            }
        };
        self.proxy
            .metrics()
            .upstream_latency
            .observe(sent_at.elapsed().as_secs_f64());
        let request_done = decoder.is_done();
        self.relay(link, response, request_done).await
    }

    /// Streams the rest of the request body upstream while watching for the response head,
    /// with the upstream timeout counted from the body's latest progress.
    async fn stream_body(
        &mut self,
        link: &mut Link,
        decoder: &mut Decoder,
        encoding: Encoding,
        forwarder: &Forwarder,
        sent: &mut u64,
        cx: &ResponseContext<'_>,
    ) -> Result<Result<Response, Failure>, Reject> {
        let base = Instant::now();
        let timeout = forwarder.timeout();
        // Milliseconds after `base` of the last body bytes sent upstream.
        let progress = AtomicU64::new(0);
        let deadline = || base + Duration::from_millis(progress.load(Ordering::Relaxed)) + timeout;
        let limit = forwarder.max_body();
        let Self {
            io,
            buf,
            up,
            down,
            upstream_clock,
            ..
        } = self;
        let (mut client_read, mut client_write) = tokio::io::split(&mut *io);
        let (mut up_read, mut up_write) = tokio::io::split(&mut link.stream);
        let pump = h1::body::copy(
            &mut client_read,
            buf,
            &mut up_write,
            decoder,
            encoding,
            up,
            limit,
            sent,
            || progress.store(base.elapsed().as_millis() as u64, Ordering::Relaxed),
        );
        let head = read_head(
            &mut up_read,
            &mut link.buf,
            down,
            &mut client_write,
            upstream_clock,
            cx,
            &deadline,
        );
        tokio::pin!(pump, head);
        let pumped = tokio::select! {
            pumped = &mut pump => pumped,
            // The upstream answered before the body was through (it refused it, most likely):
            // the answer goes to the client, the rest of the body is not read.
            early = &mut head => return Ok(early),
        };
        match pumped {
            Ok(()) => {}
            Err(BodyError::Write(e)) => {
                // The upstream stopped reading: its answer may already be on the way.
                tracing::debug!(error = %e, "upstream stopped reading the request body");
            }
            Err(e @ (BodyError::Read(_) | BodyError::Truncated)) => {
                tracing::debug!(error = %e, "client left while sending its body");
                return Err(Reject::BadRequest("the request body ended early"));
            }
            Err(e) => return Err(body_reject(&e)),
        }
        Ok(head.await)
    }

    /// Waits for the final response head (writing interim ones to the client).
    async fn await_head(
        &mut self,
        link: &mut Link,
        cx: &ResponseContext<'_>,
        deadline: impl Fn() -> Instant + Sync,
    ) -> Result<Response, Failure> {
        read_head(
            &mut link.stream,
            &mut link.buf,
            &mut self.down,
            &mut self.io,
            &mut self.upstream_clock,
            cx,
            &deadline,
        )
        .await
    }

    /// The response head is in `down`: it goes to the client with the body after it.
    async fn relay(
        &mut self,
        mut link: Link,
        mut response: Response,
        request_done: bool,
    ) -> ((u16, &'static str), Next) {
        let status = (response.status, "allowed");
        if !request_done && response.client_keep_alive {
            // Answered before the body was through: the head was written for a connection
            // that stays open, and this one cannot.
            write::close_instead(&mut self.down);
            response.client_keep_alive = false;
        }
        let mut decoder = Decoder::new(response.framing);
        if response.switching {
            self.down.extend_from_slice(link.buf.filled());
            link.buf.consume(link.buf.len());
            let next = self.splice(link).await;
            return (status, next);
        }
        if let Err(e) = h1::body::take_buffered(
            &mut decoder,
            response.encoding,
            &mut link.buf,
            &mut self.down,
        ) {
            tracing::warn!(error = %e, "upstream request failed: its response body");
            return (status, Next::Gone);
        }
        if self.send_down_scratch().await.is_err() {
            return (status, Next::Gone);
        }
        if !decoder.is_done() {
            let mut relayed = 0;
            let copied = h1::body::copy(
                &mut link.stream,
                &mut link.buf,
                &mut self.io,
                &mut decoder,
                response.encoding,
                &mut self.down,
                u64::MAX,
                &mut relayed,
                || {},
            )
            .await;
            if let Err(e) = copied {
                // The head is out: closing is the only way left to tell the client.
                tracing::debug!(error = %e, "response body not relayed whole");
                return (status, Next::Gone);
            }
        }
        if response.upstream_keep_alive && request_done {
            link.reused = true;
            self.link = Some(link);
        }
        let next = match (response.client_keep_alive, request_done) {
            (true, true) => Next::KeepAlive,
            (_, false) => Next::Linger,
            (false, true) => Next::Close,
        };
        (status, next)
    }

    /// After a `101`: the client and the upstream are joined byte for byte until one closes.
    async fn splice(&mut self, mut link: Link) -> Next {
        if self.send_down_scratch().await.is_err() {
            return Next::Gone;
        }
        let early = self.buf.take_all();
        if !early.is_empty() && write_flush(&mut link.stream, &early).await.is_err() {
            return Next::Gone;
        }
        match tokio::io::copy_bidirectional(&mut self.io, &mut link.stream).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
        Next::Gone
    }

    /// The response to a refusal; what is left of the request body is skipped when that is
    /// cheap, or the connection closes after the response.
    async fn refuse(
        &mut self,
        reject: Reject,
        audit: &Audit<'_>,
        facts: &Facts,
        body: Body,
    ) -> ((u16, &'static str), Next) {
        let status = (reject.status().as_u16(), reject.code());
        let leftover = match body {
            Body::Untouched => self.skip_body(facts),
            Body::Consumed => Leftover::None,
            Body::Partial => Leftover::Unknown,
        };
        let keep_alive = facts.keep_alive && leftover != Leftover::Unknown && !self.closing.check();
        let limit = audit.limit.as_ref().map(|window| Limit {
            window,
            now_secs: audit.now_secs,
            style: self.proxy.limiter().reset_style(),
        });
        self.down.clear();
        write::refusal(&mut self.down, &reject, limit, keep_alive, facts.http11);
        if self.send_down_scratch().await.is_err() {
            return (status, Next::Gone);
        }
        let next = match leftover {
            _ if !keep_alive && leftover == Leftover::Unknown => Next::Linger,
            Leftover::Drain(n) if keep_alive => self.drain(n).await,
            _ if keep_alive => Next::KeepAlive,
            _ => Next::Close,
        };
        (status, next)
    }

    /// A head refused before it was parsed whole (too large, malformed).
    async fn refuse_unread(&mut self, reject: Reject) -> Next {
        self.down.clear();
        write::refusal(&mut self.down, &reject, None, false, true);
        let started = std::time::Instant::now();
        if self.send_down_scratch().await.is_err() {
            return Next::Gone;
        }
        let current = self.proxy.current();
        self.proxy.finish(
            &current.config,
            &Ended {
                started,
                method: None,
                path: None,
                audit: &Audit::default(),
                decision: reject.code(),
                status: reject.status().as_u16(),
            },
        );
        Next::Linger
    }

    /// What is left of a refused request's body, taking what is already buffered.
    fn skip_body(&mut self, facts: &Facts) -> Leftover {
        let mut decoder = Decoder::new(facts.framing);
        let mut scratch = Vec::new();
        match facts.framing {
            Framing::Empty => Leftover::None,
            // The client waits for a 100 before it sends: whether it then sends the body
            // anyway cannot be known, so the connection closes.
            _ if facts.expect_continue => Leftover::Unknown,
            Framing::Length(n) => {
                let here = (self.buf.len() as u64).min(n);
                self.buf.consume(here as usize);
                match n - here {
                    0 => Leftover::None,
                    left if left <= DRAIN_MAX => Leftover::Drain(left),
                    _ => Leftover::Unknown,
                }
            }
            Framing::Chunked => {
                let taken = h1::body::take_buffered(
                    &mut decoder,
                    Encoding::Raw,
                    &mut self.buf,
                    &mut scratch,
                );
                match (taken, decoder.is_done()) {
                    (Ok(_), true) => Leftover::None,
                    _ => Leftover::Unknown,
                }
            }
            Framing::Close => Leftover::Unknown,
        }
    }

    /// Reads and drops `n` body bytes, within a header timeout.
    async fn drain(&mut self, mut n: u64) -> Next {
        let deadline = Instant::now() + self.timing.header;
        while n > 0 {
            let read = tokio::time::timeout_at(deadline, self.io.read(self.buf.spare())).await;
            match read {
                Ok(Ok(got)) if got > 0 => {
                    self.buf.filled_by(got);
                    let here = (self.buf.len() as u64).min(n);
                    self.buf.consume(here as usize);
                    n -= here;
                }
                _ => return Next::Close,
            }
        }
        Next::KeepAlive
    }

    /// The response head is written for a connection that stays open if the client wants it;
    /// an answer that comes before the request body is through is rewritten to close
    /// ([`write::close_instead`]).
    fn response_context<'a>(&mut self, facts: &Facts, audit: &'a Audit<'_>) -> ResponseContext<'a> {
        ResponseContext {
            head_request: facts.method == Method::HEAD,
            client_http11: facts.http11,
            keep_alive: facts.keep_alive && !self.closing.check(),
            upgrade: facts.upgrade,
            limit: audit.limit.as_ref().map(|window| Limit {
                window,
                now_secs: audit.now_secs,
                style: self.proxy.limiter().reset_style(),
            }),
        }
    }

    /// This connection's upstream connection if it goes to `route` and is still good, else a
    /// parked one, else a new one.
    async fn take_link(&mut self, forwarder: &Forwarder, route: Route) -> Result<Link, Reject> {
        if let Some(mut link) = self.link.take() {
            if link.route == route && link.usable() {
                return Ok(link);
            }
            if link.route.forwarder == route.forwarder {
                // A live key after a sandbox one, or the reverse: lend it to others.
                forwarder.parking().park(link);
            }
        }
        match forwarder.parking().take(route) {
            Some(link) => Ok(link),
            None => self.dial(forwarder, route).await,
        }
    }

    async fn dial(&self, forwarder: &Forwarder, route: Route) -> Result<Link, Reject> {
        // Boxed: rare (once per upstream connection), and its state would otherwise make
        // every request's future larger.
        Box::pin(forwarder.dialer().dial(route)).await.map_err(|e| {
            tracing::warn!(error = %e, "upstream request failed");
            match e {
                DialError::Timeout => Reject::UpstreamTimeout,
                DialError::Io(_) => Reject::UpstreamUnavailable,
            }
        })
    }

    /// The connection's upstream connection goes to the parking of the config it belongs to
    /// (or is closed, if a reload replaced that config).
    fn release_link(&mut self) {
        if let Some(link) = self.link.take() {
            let current = self.proxy.current();
            if link.route.forwarder == current.forwarder.route(false).forwarder {
                current.forwarder.parking().park(link);
            }
        }
    }

    async fn send_down(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_flush(&mut self.io, bytes).await
    }

    async fn send_down_scratch(&mut self) -> std::io::Result<()> {
        let result = write_flush(&mut self.io, &self.down).await;
        self.down.clear();
        result
    }

    /// Ends the connection as `next` says: a FIN after the last response, and for `Linger`
    /// whatever the client still sends read and dropped for a while first.
    async fn close(&mut self, next: Next) -> Next {
        if next == Next::Gone {
            return next;
        }
        let _ = tokio::time::timeout(LINGER, self.io.shutdown()).await;
        if next == Next::Linger {
            let deadline = Instant::now() + LINGER;
            let mut dropped = 0;
            while dropped < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, self.io.read(self.buf.spare())).await {
                    Ok(Ok(n)) if n > 0 => dropped += n,
                    _ => break,
                }
            }
        }
        next
    }

    fn finish(
        &self,
        current: &Current,
        started: std::time::Instant,
        facts: &Facts,
        audit: &Audit<'_>,
        decision: &'static str,
        status: u16,
    ) {
        self.proxy.finish(
            &current.config,
            &Ended {
                started,
                method: Some(&facts.method),
                path: facts.log_path.as_deref(),
                audit,
                decision,
                status,
            },
        );
    }
}

/// A deadline on a timer that is touched only when it must fire earlier than it is set for.
/// Moving a tokio timer earlier re-registers it under the timer wheel's lock; the clocks here
/// move later with every request, so that would be every request. Instead the timer keeps its
/// old deadline, and when it fires early it is set to the current one: one wake per clock
/// period, not one registration per request.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
}

impl Deadline {
    fn new() -> Self {
        let far = Instant::now() + Duration::from_secs(86_400);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            at: far,
        }
    }

    fn set(&mut self, at: Instant) {
        if at < self.sleep.deadline() {
            self.sleep.as_mut().reset(at);
        }
        self.at = at;
    }

    async fn expired(&mut self) {
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
struct Closing {
    signal: Pin<Box<Gated<WaitForCancellationFutureOwned>>>,
    stopping: bool,
}

impl Closing {
    fn new(token: &CancellationToken) -> Self {
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
    fn check(&mut self) -> bool {
        if !self.stopping && self.signal.fired() {
            let mut cx = Context::from_waker(Waker::noop());
            self.stopping = self.signal.as_mut().poll(&mut cx).is_ready();
        }
        self.stopping
    }

    async fn wait(&mut self) {
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

/// How far the request body was read when a refusal is written.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// Not at all: the refusal came before forwarding.
    Untouched,
    Consumed,
    /// Partly: what is left cannot be told from the next request.
    Partial,
}

/// What is left of a refused request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftover {
    None,
    /// This many bytes, few enough to read and drop.
    Drain(u64),
    /// Too much, or unknown: the connection closes.
    Unknown,
}

/// Reads until the final response head is parsed, writing interim responses to `client`. On
/// `clock` running out, `deadline()` says whether time is really up (it moves with a request
/// body's progress).
async fn read_head<R, W>(
    src: &mut R,
    buf: &mut Buffer,
    down: &mut Vec<u8>,
    client: &mut W,
    clock: &mut Deadline,
    cx: &ResponseContext<'_>,
    deadline: &(dyn Fn() -> Instant + Sync),
) -> Result<Response, Failure>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    clock.set(deadline());
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            down.clear();
            match write::response_head(buf.filled(), down, cx) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Final(response)) => {
                    buf.consume(response.len);
                    return Ok(response);
                }
                Ok(Parsed::Interim { len }) => {
                    buf.consume(len);
                    if !down.is_empty() && write_flush(client, down).await.is_err() {
                        return Err(Failure::Broken("the client left".into()));
                    }
                    down.clear();
                    continue;
                }
                Err(e) => return Err(Failure::Broken(e.to_string())),
            }
        }
        let read = tokio::select! {
            biased;
            read = src.read(buf.spare()) => read,
            () = clock.expired() => {
                let at = deadline();
                if Instant::now() >= at {
                    return Err(Failure::Timeout);
                }
                clock.set(at);
                continue;
            }
        };
        match read {
            Ok(0) if !heard => return Err(Failure::ClosedEarly),
            Err(e) if !heard && is_reset(&e) => return Err(Failure::ClosedEarly),
            Ok(0) => return Err(Failure::Broken("closed within the response head".into())),
            Err(e) => return Err(Failure::Broken(e.to_string())),
            Ok(n) => {
                buf.filled_by(n);
                heard = true;
            }
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

fn body_reject(e: &BodyError) -> Reject {
    match e {
        BodyError::TooLarge => Reject::PayloadTooLarge,
        _ => Reject::BadRequest("the chunked request body is malformed"),
    }
}

/// The first bytes of an HTTP/2 connection with prior knowledge (or what could still become
/// them).
fn http2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFACE.len());
    buf[..n] == PREFACE[..n] && n == PREFACE.len()
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}
