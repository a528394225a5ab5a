//! Forwarding one admitted request: its head and body upstream, the response back, with the
//! one retry a reused upstream connection may take (see the module doc of `server::session`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::clock::{Deadline, Patient};
use super::{Body, Facts, Next, Session, Transport, write_flush};
use crate::batch;
use crate::forward::Forwarder;
use crate::forward::UpstreamFailure;
use crate::forward::failure::{Failure, report_silence};
use crate::forward::silence::{self, Quiet};
use crate::forward::tunnel;
use crate::forward::upstream::{Destination, Link, Stream};
use crate::keys::rotation::Due;
use crate::metrics::{Decision, Outcome};
use crate::proxy::Audit;
use crate::reject::Reject;
use crate::wire::response::{self, Limit, Parsed, ResponseContext, ResponseHead};
use crate::wire::{self, BodyError, Buffer, Decoder, Encoding, Framing};

/// A client that left before its response could be written (499, as nginx logs it).
const CLIENT_CLOSED: Outcome = Outcome {
    status: 499,
    decision: Decision::ClientClosed,
};

impl<IO: Transport> Session<'_, IO> {
    /// Sends the request upstream and relays the response. Returns the status the client got
    /// with the decision logged for it.
    pub(super) async fn forward(
        &mut self,
        forwarder: &Forwarder,
        route: Destination,
        audit: &Audit<'_>,
        facts: &Facts,
    ) -> (Outcome, Next) {
        // The body bytes that came with the head go with the upstream's head, in one write.
        let mut decoder = Decoder::new(facts.framing);
        let encoding = match facts.framing {
            Framing::Chunked => Encoding::Chunked,
            _ => Encoding::Raw,
        };
        let mut sent =
            match wire::body::take_buffered(&mut decoder, encoding, &mut self.buf, &mut self.up) {
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
        if !whole && facts.expect_continue && self.send_down(response::CONTINUE).await.is_err() {
            return (CLIENT_CLOSED, Next::Gone);
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
        let mut batched = Some(self.batch_write(&mut link).await);
        let sent_at = Instant::now();
        let mut retried = false;
        let response = loop {
            // What the batch sent (the first time round) and the rest.
            let written = match batched.take().unwrap_or(Ok(0)) {
                Ok(n) => write_flush(&mut link.stream, &self.up[n..]).await,
                Err(e) => Err(e),
            };
            let outcome = match written {
                Err(e) => Err(Failure::Write(e)),
                Ok(()) => {
                    let rotation = audit.rotation.as_ref().map(Due::headers);
                    let added = rotation.as_ref().map_or(&[][..], |h| &h[..]);
                    let cx = self.response_context(facts, audit, added);
                    if whole {
                        let deadline = sent_at + forwarder.timeout();
                        self.await_head(&mut link, &cx, || deadline).await
                    } else {
                        match self
                            .stream_body(
                                &mut link,
                                &mut decoder,
                                encoding,
                                forwarder,
                                &mut sent,
                                &cx,
                            )
                            .await
                        {
                            Ok(outcome) => outcome,
                            Err(reject) => {
                                return self.refuse(reject, audit, facts, Body::Partial).await;
                            }
                        }
                    }
                }
            };
            let failure = match outcome {
                Ok(response) => break response,
                Err(failure) => failure,
            };
            // `up` comes back empty only from a batch whose fate is unknown: never resent.
            if link.reused
                && !retried
                && whole
                && !self.up.is_empty()
                && failure.may_retry(idempotent)
            {
                retried = true;
                link = match self.dial(forwarder, route).await {
                    Ok(link) => link,
                    Err(reject) => return self.refuse(reject, audit, facts, body).await,
                };
                continue;
            }
            let reject = failure.report(self.proxy.metrics());
            let body = if decoder.is_done() {
                Body::Consumed
            } else {
                Body::Partial
            };
            return self.refuse(reject, audit, facts, body).await;
        };
        self.proxy
            .metrics()
            .upstream_latency
            .observe(sent_at.elapsed().as_secs_f64());
        let request_done = decoder.is_done();
        // The body bytes that came with the head go to the client with it, in one write.
        // Broken ones are still the upstream's failure to report: nothing was sent yet.
        let mut body = Decoder::new(response.framing);
        if !response.switching
            && let Err(e) = wire::body::take_buffered(
                &mut body,
                response.encoding,
                &mut link.buf,
                &mut self.down,
            )
        {
            let reject = Failure::malformed(e).report(self.proxy.metrics());
            self.down.clear();
            let body = if request_done {
                Body::Consumed
            } else {
                Body::Partial
            };
            return self.refuse(reject, audit, facts, body).await;
        }
        self.relay(link, response, body, request_done, forwarder, audit)
            .await
    }

    /// Waits for the end of this event-loop turn, so that every connection whose request
    /// arrived in it has its upstream write ready, and sends them together: one io_uring
    /// submission where it works ([`batch`]), else each on its own after the turn. An
    /// upstream on the same CPU (a sidecar's usual place) then wakes once per batch instead of
    /// once per request (bench/RESULTS.md, 2026-12-04). Returns how much of `up` went out;
    /// the caller sends the rest.
    async fn batch_write(&mut self, link: &mut Link) -> std::io::Result<usize> {
        if self.timing.batch_writes
            && let Stream::Plain(socket) = &link.stream
            && let Some(sent) = batch::send(socket, &mut self.up).await
        {
            return sent;
        }
        tokio::task::yield_now().await;
        Ok(0)
    }

    /// Streams the rest of the request body upstream while watching for the response head,
    /// with the upstream timeout counted from the body's latest progress.
    pub(super) async fn stream_body(
        &mut self,
        link: &mut Link,
        decoder: &mut Decoder,
        encoding: Encoding,
        forwarder: &Forwarder,
        sent: &mut u64,
        cx: &ResponseContext<'_>,
    ) -> Result<Result<ResponseHead, Failure>, Reject> {
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
        let stall = self.timing.idle;
        let (client_read, mut client_write) = tokio::io::split(&mut *io);
        let mut client_write = Patient::new(&mut client_write, stall);
        let waiting = AtomicBool::new(false);
        let mut client_read = Awaited {
            inner: client_read,
            waiting: &waiting,
        };
        let (mut up_read, mut up_write) = tokio::io::split(&mut link.stream);
        let pump = wire::body::copy(
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
            // the answer goes to the client, the rest of the body is not read. Or the
            // upstream timeout ran out while the body waited on the client: its silence.
            early = &mut head => {
                return match early {
                    Err(Failure::Timeout) if waiting.load(Ordering::Relaxed) => {
                        Err(Reject::RequestTimeout)
                    }
                    early => Ok(early),
                };
            }
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
    pub(super) async fn await_head(
        &mut self,
        link: &mut Link,
        cx: &ResponseContext<'_>,
        deadline: impl Fn() -> Instant + Sync,
    ) -> Result<ResponseHead, Failure> {
        read_head(
            &mut link.stream,
            &mut link.buf,
            &mut self.down,
            &mut Patient::new(&mut self.io, self.timing.idle),
            &mut self.upstream_clock,
            cx,
            &deadline,
        )
        .await
    }

    /// The response head (and the body bytes that came with it, taken by `decoder`) is in
    /// `down`: it goes to the client, the rest of the body after it, cut off if the upstream
    /// sends nothing for `body_timeout` ([`crate::forward::silence`]); after a `101`, the
    /// tunnel.
    pub(super) async fn relay(
        &mut self,
        mut link: Link,
        mut response: ResponseHead,
        mut decoder: Decoder,
        request_done: bool,
        forwarder: &Forwarder,
        audit: &Audit<'_>,
    ) -> (Outcome, Next) {
        let status = Outcome {
            status: response.status,
            decision: Decision::Allowed,
        };
        if response.client_keep_alive && (!request_done || self.closing.check()) {
            // The head was written for a connection that stays open, and this one cannot:
            // answered before the body was through, or keygate began stopping while the
            // upstream answered (the client must not send another request on it).
            response::close_instead(&mut self.down);
            response.client_keep_alive = false;
        }
        if response.switching {
            // What the upstream sent behind its `101` goes out with it.
            let early = link.buf.filled().to_vec();
            self.down.extend_from_slice(&early);
            link.buf.consume(link.buf.len());
            let next = self
                .splice(link, &early, forwarder.tunnel_idle_timeout(), audit)
                .await;
            return (status, next);
        }
        if self.send_down_scratch().await.is_err() {
            return (status, Next::Gone);
        }
        if !decoder.is_done() {
            let mut relayed = 0;
            let copied = wire::body::copy(
                &mut Quiet::new(&mut link.stream, forwarder.body_timeout()),
                &mut link.buf,
                &mut Patient::new(&mut self.io, self.timing.idle),
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
                match &e {
                    BodyError::Read(e) if let Some(silent) = silence::of(e) => {
                        let metrics = self.proxy.metrics();
                        report_silence(
                            metrics.upstream_failure(UpstreamFailure::BodyTimeout),
                            silent,
                        );
                    }
                    _ => tracing::debug!(error = %e, "response body not relayed whole"),
                }
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

    /// After a `101` (in `down`, with `early`, what the upstream sent behind it): the client
    /// and the upstream are joined byte for byte until one closes, until nothing has moved
    /// either way for `idle`, or until keygate stops or what the request was admitted on no
    /// longer holds ([`tunnel`]).
    pub(super) async fn splice(
        &mut self,
        mut link: Link,
        early: &[u8],
        idle: Duration,
        audit: &Audit<'_>,
    ) -> Next {
        if self.send_down_scratch().await.is_err() {
            return Next::Gone;
        }
        let up = self.buf.take_all();
        if !up.is_empty() && write_flush(&mut link.stream, &up).await.is_err() {
            return Next::Gone;
        }
        // Between requests a vanished client is let go by the idle clock, within a response
        // by the stall clock; a quiet tunnel has neither, so the kernel watches the path.
        super::watch_client(&self.io);
        let relayed = tunnel::Relayed {
            up: &up,
            down: early,
        };
        let metrics = self.proxy.metrics();
        let ending = tunnel::ending(
            self.closing.wait(),
            self.proxy.key_lapse(audit.held.clone()),
        );
        tunnel::run(
            &mut self.io,
            &mut link.stream,
            relayed,
            idle,
            metrics,
            ending,
        )
        .await;
        Next::Gone
    }

    /// The response head is written for a connection that stays open if the client wants it;
    /// an answer that comes before the request body is through is rewritten to close
    /// ([`response::close_instead`]).
    pub(super) fn response_context<'a>(
        &mut self,
        facts: &Facts,
        audit: &'a Audit<'_>,
        added: &'a [(http::HeaderName, http::HeaderValue)],
    ) -> ResponseContext<'a> {
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
            added,
            cors: audit.cors.as_deref().unwrap_or_default(),
        }
    }

    /// This connection's upstream connection if it goes to `route` and is still good, else a
    /// parked one, else a new one.
    pub(super) async fn take_link(
        &mut self,
        forwarder: &Forwarder,
        route: Destination,
    ) -> Result<Link, Reject> {
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

    pub(super) async fn dial(
        &self,
        forwarder: &Forwarder,
        route: Destination,
    ) -> Result<Link, Reject> {
        // Boxed: rare (once per upstream connection), and its state would otherwise make
        // every request's future larger.
        Box::pin(forwarder.dialer().dial(route))
            .await
            .map_err(|e| Failure::Dial(e).report(self.proxy.metrics()))
    }
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
) -> Result<ResponseHead, Failure>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    clock.set(deadline());
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            down.clear();
            match response::response_head(buf.filled(), down, cx) {
                Ok(Parsed::Partial) => {}
                Ok(Parsed::Final(response)) => {
                    buf.consume(response.len);
                    return Ok(response);
                }
                Ok(Parsed::Interim { len }) => {
                    buf.consume(len);
                    if !down.is_empty() && write_flush(client, down).await.is_err() {
                        return Err(Failure::ClientLeft);
                    }
                    down.clear();
                    continue;
                }
                Err(e) => return Err(Failure::malformed(e)),
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
        buf.filled_by(Failure::of_head_read(read, heard)?);
        heard = true;
    }
}

fn body_reject(e: &BodyError) -> Reject {
    match e {
        BodyError::TooLarge => Reject::PayloadTooLarge,
        _ => Reject::BadRequest("the chunked request body is malformed"),
    }
}

/// The client's side of a request body being pumped upstream, saying whether a read waits on
/// the client: when the upstream timeout runs out then, the silence is the client's.
struct Awaited<'a, R> {
    inner: R,
    waiting: &'a AtomicBool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Awaited<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.waiting.store(read.is_pending(), Ordering::Relaxed);
        read
    }
}
