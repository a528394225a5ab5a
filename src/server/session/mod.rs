//! One HTTP/1.1 client connection, served by keygate's own HTTP/1.1 ([`crate::wire`]): request
//! after request, each head read into the connection's buffer, admitted by [`Proxy::admit`],
//! then forwarded over the connection's own upstream connection ([`crate::forward::upstream`])
//! or refused, all in this task.
//!
//! Clocks: until the first request's head, the header timeout from the connection's start
//! (accept, or the end of the TLS handshake); between requests the idle timeout (and, at half
//! the header timeout, the upstream connection is lent to the parking); from a head's first
//! byte the header timeout (slow-loris clients are cut off silently); from a request's last
//! byte sent upstream the upstream timeout for the response head (counted from the request
//! body's latest progress while one streams; run out while the body waits on the client, it is
//! the client's 408). A response body from the upstream has only the clock of the gap between
//! two of its pieces (`[upstream] body_timeout`, [`crate::forward::silence`]): a slow stream
//! (server-sent events) is not a dead one, a silent one is; and a client that accepts no
//! response bytes for an idle timeout is let go ([`clock::Patient`]). After a `101`, the tunnel
//! has only the clock of no byte either way (`[upstream] tunnel_idle_timeout`,
//! [`crate::forward::tunnel`]), and the client's socket gets TCP keepalive ([`crate::tcp`]).
//! Each clock costs nothing per request. A connection idle for a second gives back its read
//! buffer and scratch space, and takes them again when its client's next bytes are readable: an
//! idle connection costs its task and socket (and over TLS, rustls's state), not 10 KiB of
//! buffers ([`idle`]).
//!
//! Retries: a request whose upstream connection was reused and that met a close before any
//! response byte goes once more on a new connection, if it was sent whole and is idempotent
//! (RFC 9110 §9.2.2) or could not be written at all. That close is the upstream's idle
//! timeout crossing the request on the wire, not an answer.

use std::time::Duration;

use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod clock;
mod forward;
mod idle;
mod refuse;
#[cfg(test)]
mod tests;

use clock::{Closing, Deadline, Patient};
pub use idle::Idle;
use refuse::Body;

use super::conn::Rewind;
use crate::batch::{self, Batchable};
use crate::forward::upstream::Link;
use crate::forward::upstream_head::{RequestContext, write_request_head};
use crate::head::Head;
use crate::metrics::Outcome;
use crate::proxy::{Audit, Connection, Current, Ended, Proxy};
use crate::reject::Reject;
use crate::wire::{self, Buffer, Framing, HeadError, RequestHead};

/// The client connection's read buffer to start with; it grows for larger heads.
const READ_BUFFER: usize = 8 * 1024;
/// An idle connection gives its buffers back after this long.
const SHED_AFTER: Duration = Duration::from_secs(1);
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
    /// Request heads to the upstream and response heads to the client (plain TCP) go out
    /// with the turn's other writes ([`crate::batch`]).
    pub batch_writes: bool,
}

/// How serving a connection ended.
pub enum Served<IO> {
    Done,
    /// Not keygate's HTTP/1.1 to serve (an HTTP/2 client with prior knowledge, or a reload made
    /// the upstream HTTP/2): hyper takes the connection, with the bytes already read.
    Handoff(Rewind<IO>),
}

/// A client connection's transport as the session uses it: plain TCP, or TLS over it.
pub trait Transport: AsyncRead + AsyncWrite + Batchable + Idle + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Batchable + Idle + Unpin + Send> Transport for T {}

pub async fn serve<IO: Transport>(
    io: IO,
    proxy: &Proxy,
    conn: &Connection,
    timing: &Timing,
    closing: &CancellationToken,
) -> Served<IO> {
    // A plain-TCP connection takes its buffers when its first bytes arrive (see
    // `Session::shed_buffers`); a TLS one has just read the handshake through rustls, which
    // holds what followed it.
    let tcp = io.socket().is_some();
    let mut session = Session {
        proxy,
        conn,
        timing,
        io,
        buf: Buffer::with_capacity(if tcp { 0 } else { READ_BUFFER }),
        head: RequestHead::default(),
        up: Vec::new(),
        down: Vec::new(),
        shed: tcp,
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
    /// The buffers above were given back while the connection was idle: readability is
    /// awaited before they are taken again.
    shed: bool,
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

/// What woke a head wait.
enum Event {
    Read(std::io::Result<usize>),
    /// A connection whose buffers were shed has bytes to read.
    Readable,
    Clock,
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

impl<IO: Transport> Session<'_, IO> {
    async fn run(&mut self) -> Next {
        loop {
            match self.next_head().await {
                Wait::Head => {}
                Wait::Closed => return Next::Close,
                Wait::Http2 => {
                    // Its streams may become tunnels (RFC 8441).
                    watch_client(&self.io);
                    return Next::Handoff;
                }
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
        let pause = (self.timing.header / 2).min(self.timing.idle / 2);
        let mut lend_at = (self.link.is_some() && self.buf.is_empty()).then(|| now + pause);
        let mut shed_at = (!self.shed && self.buf.is_empty() && self.io.tcp().is_some())
            .then(|| now + SHED_AFTER.min(pause));
        // The first request's head is due within the header timeout of the connection's start
        // (accept, or the end of the TLS handshake): a client that connects and says nothing
        // must not hold a connection slot for an idle timeout. Later, bytes already here (a
        // pipelined request) start the header clock now; otherwise it starts once a read
        // leaves a head incomplete, and silence runs the idle clock.
        let mut head_by = (self.first || !self.buf.is_empty()).then(|| now + self.timing.header);
        loop {
            if !self.buf.is_empty() {
                let preface = if self.first {
                    http2_preface(self.buf.filled())
                } else {
                    Preface::No
                };
                match preface {
                    Preface::Whole => return Wait::Http2,
                    // Could still become one: wait for the rest rather than parse it as
                    // HTTP/1.1 (`PRI * HTTP/2.0` is no request keygate serves).
                    Preface::Partial => {}
                    Preface::No => match self
                        .head
                        .parse(self.buf.filled(), self.timing.max_header_bytes)
                    {
                        Ok(true) => return Wait::Head,
                        Ok(false) => {}
                        Err(HeadError::TooLarge) => return Wait::Refuse(Reject::HeadersTooLarge),
                        Err(HeadError::Invalid(why)) => {
                            return Wait::Refuse(Reject::BadRequest(why));
                        }
                    },
                }
                // An incomplete head: due within the header timeout.
                head_by.get_or_insert_with(|| Instant::now() + self.timing.header);
                shed_at = None;
            }
            let due = [lend_at, shed_at]
                .into_iter()
                .flatten()
                .fold(head_by.unwrap_or(idle_at), Instant::min);
            self.clock.set(due);
            let idle = self.buf.is_empty();
            let mut probe = [0u8; 1];
            let event = match self.io.tcp() {
                // Buffers shed: wait for the client's bytes before taking memory to read them
                // (a peek, so that a client that only closes costs no buffer either).
                Some(tcp) if self.shed => tokio::select! {
                    biased;
                    peeked = tcp.peek(&mut probe) => match peeked {
                        Ok(1..) => Event::Readable,
                        Ok(0) | Err(_) => return Wait::Closed,
                    },
                    () = self.clock.expired() => Event::Clock,
                    () = self.closing.wait(), if idle => return Wait::Closed,
                },
                _ => tokio::select! {
                    biased;
                    read = self.io.read(self.buf.spare()) => Event::Read(read),
                    () = self.clock.expired() => Event::Clock,
                    () = self.closing.wait(), if idle => return Wait::Closed,
                },
            };
            match event {
                Event::Readable => self.regrow(),
                Event::Read(Ok(0) | Err(_)) => return Wait::Closed,
                Event::Read(Ok(n)) => self.buf.filled_by(n),
                Event::Clock => {
                    let now = Instant::now();
                    let mut woke = false;
                    if lend_at.is_some_and(|at| at <= now) {
                        lend_at = None;
                        woke = true;
                        self.release_link();
                    }
                    if shed_at.is_some_and(|at| at <= now) {
                        shed_at = None;
                        woke = true;
                        self.shed_buffers();
                    }
                    if !woke {
                        if head_by.is_some() {
                            tracing::debug!("request head not received in time; closing");
                        }
                        return Wait::Closed;
                    }
                }
            }
        }
    }

    /// An idle connection gives its buffers back (read buffer and scratch, about 10 KiB, its
    /// upstream connection's 16 KiB, and a TLS connection's write buffer): a sidecar holding
    /// many keep-alive connections from a pool or a load balancer then costs little more than
    /// their sockets and tasks. Not while the transport holds bytes the client sent
    /// ([`Idle::shed`]): those are read the usual way.
    fn shed_buffers(&mut self) {
        if !self.io.shed() {
            return;
        }
        let mut bytes = READ_BUFFER + self.up.capacity() + self.down.capacity();
        self.buf = Buffer::with_capacity(0);
        self.up = Vec::new();
        self.down = Vec::new();
        // The upstream connection, kept for this client until it is lent to the parking,
        // gives back its read buffer too (16 KiB; nothing is in it between exchanges).
        if let Some(link) = &mut self.link
            && link.buf.is_empty()
        {
            link.buf = Buffer::with_capacity(0);
            bytes += crate::forward::upstream::READ_BUFFER;
        }
        super::memory::shed(bytes);
        self.shed = true;
    }

    /// The client is sending again after [`Session::shed_buffers`].
    fn regrow(&mut self) {
        self.buf = Buffer::with_capacity(READ_BUFFER);
        if let Some(link) = &mut self.link
            && link.buf.is_empty()
        {
            link.buf = Buffer::with_capacity(crate::forward::upstream::READ_BUFFER);
        }
        self.shed = false;
    }

    /// One request: admitted and forwarded, or refused.
    async fn exchange(&mut self) -> Next {
        let started = std::time::Instant::now();
        let current = self.proxy.current();
        if current.forwarder.is_http2() {
            return Next::Handoff;
        }
        let mut audit = Audit::default();
        let req = wire::ParsedRequest::new(&self.head, self.buf.filled());
        // The token endpoint is answered by keygate itself, which hyper's side does: the
        // connection goes there with this request unread, and stays there.
        if current
            .config
            .tokens
            .as_ref()
            .is_some_and(|tokens| req.path() == tokens.path)
        {
            return Next::Handoff;
        }
        audit.tunnel = req.upgrade().is_some();
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
                self.finish(&current, started, &facts, &audit, status);
                tracing::trace!(status = status.status, ?next, "request refused");
                return next;
            }
        };
        if admission.preflight {
            let len = head.len;
            self.buf.consume(len);
            let (status, next) = self.preflight(&audit, &facts).await;
            self.finish(&current, started, &facts, &audit, status);
            return next;
        }
        let forwarder = &current.forwarder;
        let upstream = forwarder.upstream_for(audit.key.as_deref());
        let target = forwarder.target(upstream);
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
                key_prefix: forwarder.key_prefix(),
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
            .forward(forwarder, forwarder.route(upstream), &audit, &facts)
            .await;
        self.finish(&current, started, &facts, &audit, status);
        tracing::trace!(status = status.status, ?next, "request forwarded");
        next
    }

    /// The connection's upstream connection goes to the parking of the config it belongs to
    /// (or is closed, if a reload replaced that config).
    fn release_link(&mut self) {
        if let Some(link) = self.link.take() {
            // The parking keeps it without a read buffer, and gives it one when it is taken.
            let current = self.proxy.current();
            if link.route.forwarder == current.forwarder.route(0).forwarder {
                current.forwarder.parking().park(link);
            }
        }
    }

    async fn send_down(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_flush(&mut Patient::new(&mut self.io, self.timing.idle), bytes).await
    }

    /// Sends `down` to the client, with this turn's other writes where they can be batched
    /// ([`batch`]), and empties it.
    async fn send_down_scratch(&mut self) -> std::io::Result<()> {
        let mut sent = 0;
        if self.timing.batch_writes
            && let Some(socket) = self.io.socket()
            && let Some(batched) = batch::send(socket, &mut self.down).await
        {
            sent = match batched {
                Ok(n) => n,
                Err(e) => {
                    self.down.clear();
                    return Err(e);
                }
            };
        }
        let mut client = Patient::new(&mut self.io, self.timing.idle);
        let result = write_flush(&mut client, &self.down[sent..]).await;
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
        outcome: Outcome,
    ) {
        self.proxy.finish(
            &current.config,
            &Ended {
                started,
                method: Some(&facts.method),
                path: facts.log_path.as_deref(),
                audit,
                outcome,
            },
        );
    }
}

/// TCP keepalive for a client connection that carries, or may carry, a WebSocket tunnel: the
/// one wait on a client without a clock of its own ([`crate::tcp`]).
pub(super) fn watch_client(io: &impl Idle) {
    if let Some(tcp) = io.tcp()
        && let Err(e) = crate::tcp::watch_client(tcp)
    {
        tracing::debug!(error = %e, "no keepalive on a client connection that may carry a tunnel");
    }
}

/// Whether a connection's first bytes are the HTTP/2 connection preface (prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preface {
    Whole,
    /// A beginning of it, and nothing else yet.
    Partial,
    No,
}

fn http2_preface(buf: &[u8]) -> Preface {
    let n = buf.len().min(PREFACE.len());
    match (buf[..n] == PREFACE[..n], n == PREFACE.len()) {
        (true, true) => Preface::Whole,
        (true, false) => Preface::Partial,
        (false, _) => Preface::No,
    }
}

async fn write_flush<W: AsyncWrite + Unpin + ?Sized>(
    io: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}
