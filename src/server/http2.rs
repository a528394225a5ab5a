//! SPIKE, measured and reverted in the next commit (bench/RESULTS.md, 2026-12-06 12:52–13:22):
//! no real gain over hyper's server (1.5–2.5 µs per request at 10 streams, none at 1). No tests
//! cover it beyond the benchmark's status checks; `H2INLINE_PLAIN_WAKE=1` turns [`ConnWake`]
//! off (the variant measured as "inline").
//!
//! HTTP/2 clients of an HTTP/1.1 upstream, served with the `h2` crate directly: one task per
//! connection drives the connection and every stream's work (admit, forward over keygate's own
//! upstream connections, pipe the response body) in a [`FuturesUnordered`], so a stream costs
//! no task of its own and no hop between tasks.
//!
//! Why not hyper's HTTP/2 server, which serves them otherwise the same way: hyper spawns one
//! task per stream and every request crosses from the connection's task to it and back. With
//! HTTP/2 clients the only clients left on hyper, a perf profile put what remained per request
//! in that shape (bench/RESULTS.md, 2026-12-06 07:16); see the section of this branch there
//! for what serving the streams inline saves.
//!
//! What hyper's server did around the `h2` crate, this does too: the same settings (windows,
//! frame and send-buffer sizes, `[server]`'s concurrent streams and header list size, local
//! reset limits), a client's `RST_STREAM` cancelling the stream's work while its response is
//! awaited and while its body is sent, connection-specific headers stripped from responses, a
//! `Date`, `Content-Length` from an exact body size, request flow-control windows handed back
//! as the body is read ([`ClientBody::H2`]), response data sent as the client's windows allow
//! (a buffered chunk waits for capacity), `GOAWAY` and a drain on shutdown or idleness, the
//! header clock until the first request and the idle clock after ([`Activity`]). The `h2`
//! crate itself checks the protocol: pseudo-headers, connection-specific request headers,
//! `Content-Length` against the DATA received, stream limits and resets.
//!
//! An HTTP/2 upstream, and HTTP/1.1 clients keygate hands to hyper, stay on hyper
//! (`server::conn`).

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;
use h2::server::{Connection as H2Connection, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{Activity, Alarm, Gated, Serving, Verdict, Watched};
use crate::config;
use crate::forward::ClientBody;
use crate::proxy::{self, Connection, Proxy};

/// Receive windows: as hyper's server sets them (1 MiB per stream and per connection).
const WINDOW: u32 = 1024 * 1024;
/// DATA frames up to 16 KiB, hyper's default.
const MAX_FRAME: u32 = 16 * 1024;
/// Response bytes buffered per stream beyond what the client's window lets out, hyper's
/// default.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams the client's errors may make keygate reset before the connection is closed,
/// hyper's default.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The `h2` server settings from `[server]` (see the module doc).
pub fn builder(server: &config::Server) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(server.http2_max_concurrent_streams);
    builder
}

/// Serves one HTTP/2 client connection until the client closes it, a clock runs out, or
/// `serving.closing` is cancelled (then `GOAWAY`, and the streams in flight finish).
pub async fn serve<IO>(serving: &Serving, io: IO, proxy: Arc<Proxy>, conn: Connection)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = Watched::new(io, activity.clone());
    let tick = (serving.header_timeout / 2).min(serving.idle_timeout / 2);
    let mut connection = {
        let handshake = serving.h2.handshake::<_, Bytes>(io);
        tokio::select! {
            shaken = handshake => match shaken {
                Ok(connection) => connection,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/2 handshake failed");
                    return;
                }
            },
            () = tokio::time::sleep(serving.header_timeout) => {
                tracing::debug!("HTTP/2 preface not received in time; closing");
                return;
            }
            () = serving.closing.cancelled() => return,
        }
    };
    let proxy = &*proxy;
    let conn = &conn;
    let activity = &activity;
    let mut streams = FuturesUnordered::new();
    let wake = Arc::new(ConnWake {
        state: AtomicU8::new(IDLE),
        task: AtomicWaker::new(),
        enabled: std::env::var_os("H2INLINE_PLAIN_WAKE").is_none(),
    });
    let mut closing_requested = false;
    loop {
        let (closing, listen) = (&serving.closing, !closing_requested);
        let mut watch = pin!(Gated::new(async move {
            tokio::select! {
                () = closing.cancelled(), if listen => Alarm::Closing,
                () = tokio::time::sleep(tick) => Alarm::Tick,
            }
        }));
        let event = poll_fn(|cx| {
            if let Poll::Ready(alarm) = watch.as_mut().poll(cx) {
                return Poll::Ready(Err(alarm));
            }
            drive(&mut connection, &mut streams, &wake, cx, |req, reply| {
                stream(proxy, conn, activity, req, reply)
            })
            .map(Ok)
        })
        .await;
        match event {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                return;
            }
            Err(Alarm::Closing) => {
                closing_requested = true;
                connection.graceful_shutdown();
            }
            Err(Alarm::Tick) => {
                match activity.check(serving.header_timeout, serving.idle_timeout) {
                    Verdict::Fine => {}
                    Verdict::HeaderTimeout => {
                        tracing::debug!("request head not received in time; closing");
                        return;
                    }
                    Verdict::Idle if !closing_requested => {
                        closing_requested = true;
                        connection.graceful_shutdown();
                    }
                    Verdict::Idle => {}
                }
            }
        }
    }
}

/// One turn of the connection: the streams that were woken make progress, then the
/// connection writes what they queued, reads what arrived and hands over new streams, which
/// start in the same turn. Ready when the connection is through.
///
/// The connection is polled with [`ConnWake`]: a stream that queues a frame wakes the
/// connection, and in this loop that wake is already answered by the poll that follows, so it
/// is not passed on (it would cost the task one more turn per response).
fn drive<IO, F>(
    connection: &mut H2Connection<IO, Bytes>,
    streams: &mut FuturesUnordered<F>,
    wake: &Arc<ConnWake>,
    cx: &mut Context<'_>,
    start: impl Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
) -> Poll<Result<(), h2::Error>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let filtered = Waker::from(wake.clone());
    let mut conn_cx = Context::from_waker(if wake.enabled { &filtered } else { cx.waker() });
    wake.task.register(cx.waker());
    loop {
        wake.state.store(DRAIN, Ordering::Release);
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        wake.state.store(ACCEPT, Ordering::Release);
        let mut started = false;
        let accepted = loop {
            match connection.poll_accept(&mut conn_cx) {
                Poll::Ready(Some(Ok((req, reply)))) => {
                    streams.push(start(req, reply));
                    started = true;
                }
                Poll::Ready(Some(Err(e))) => break Poll::Ready(Err(e)),
                Poll::Ready(None) => break Poll::Ready(Ok(())),
                Poll::Pending => break Poll::Pending,
            }
        };
        if wake.state.swap(IDLE, Ordering::AcqRel) == ACCEPT_WOKEN {
            // Woken while the connection itself was polled (it yielded): the executor's turn.
            cx.waker().wake_by_ref();
        }
        if accepted.is_ready() || !started {
            return accepted;
        }
    }
}

const IDLE: u8 = 0;
const DRAIN: u8 = 1;
const ACCEPT: u8 = 2;
const ACCEPT_WOKEN: u8 = 3;

/// The connection's waker (see [`drive`]): dropped while the streams are polled (the
/// connection is polled right after), remembered while the connection is, passed on to the
/// task otherwise (its sockets became ready).
struct ConnWake {
    state: AtomicU8,
    task: AtomicWaker,
    enabled: bool,
}

impl std::task::Wake for ConnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(ACCEPT, ACCEPT_WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(DRAIN | ACCEPT_WOKEN) => {}
            Err(_) => self.task.wake(),
        }
    }
}

/// One stream: the request through [`Proxy::handle`] (a client's reset cancels it, and with
/// it the upstream exchange: an upstream connection half used is closed, never parked), then
/// the response.
async fn stream(
    proxy: &Proxy,
    conn: &Connection,
    activity: &Arc<Activity>,
    req: Request<RecvStream>,
    mut reply: SendResponse<Bytes>,
) {
    let _in_flight = activity.request_started(Version::HTTP_2);
    let mut handled = pin!(proxy.handle(req.map(ClientBody::H2), conn));
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = handled.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        match reply.poll_reset(cx) {
            Poll::Ready(reason) => {
                tracing::debug!(?reason, "stream reset by the client");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(response) = response else { return };
    let (mut parts, body) = response.into_parts();
    strip_connection_headers(&mut parts.headers);
    if let header::Entry::Vacant(slot) = parts.headers.entry(header::DATE) {
        slot.insert(date());
    }
    let end = body.is_end_stream();
    if !end
        && let Some(len) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let send = match reply.send_response(Response::from_parts(parts, ()), end) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "sending a response head failed");
            reply.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    if !end && let Err(e) = pipe(body, send).await {
        tracing::debug!(error = %e, "sending a response body failed");
    }
}

/// The response body out as the client's flow-control windows allow: a chunk in hand waits
/// for capacity before the next is read (so at most one chunk per stream sits in `h2`'s send
/// buffer beyond the window). A client's reset ends it (the body is dropped: an upstream
/// connection it reads from is closed, not parked); a body that fails resets the stream.
async fn pipe(body: proxy::Body, mut send: SendStream<Bytes>) -> Result<(), h2::Error> {
    let mut body = pin!(body);
    let mut held: Option<(Bytes, bool)> = None;
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(reason) = send.poll_reset(cx) {
                return Poll::Ready(Err(h2::Error::from(reason?)));
            }
            if let Some((data, end)) = held.take() {
                while send.capacity() == 0 {
                    match send.poll_capacity(cx) {
                        Poll::Pending => {
                            held = Some((data, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                    }
                }
                send.send_data(data, end)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = body.is_end_stream();
                        if data.is_empty() {
                            send.send_data(data, end)?;
                            if end {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // A claim of one byte, not the chunk: claiming it all would make every
                        // waiting stream hold connection window (as hyper, hyperium/hyper#4003).
                        send.reserve_capacity(1);
                        held = Some((data, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            send.reserve_capacity(0);
                            send.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed");
                    send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(Ok(()));
                }
                None => return Poll::Ready(send.send_data(Bytes::new(), true)),
            }
        }
    })
    .await
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2), and those a `Connection` header names: the
/// upstream's HTTP/1.1 response may carry them; `h2` would refuse the whole response.
fn strip_connection_headers(headers: &mut HeaderMap) {
    static FORBIDDEN: [HeaderName; 5] = [
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ];
    for name in &FORBIDDEN {
        headers.remove(name);
    }
    if let Some(connection) = headers.remove(header::CONNECTION)
        && let Ok(names) = connection.to_str()
    {
        for name in names.split(',') {
            headers.remove(name.trim());
        }
    }
}

/// `Date`, formatted once per second per thread.
fn date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| match value {
        Some(value) if *at == secs => value.clone(),
        _ => {
            let fresh = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP date is a valid header value");
            *at = secs;
            *value = Some(fresh.clone());
            fresh
        }
    })
}
