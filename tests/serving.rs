//! The serving layer against abuse and operations, on the real binary: slow-loris and idle
//! connections, the connection cap, body and header-line limits, HTTPS-only behind a
//! terminator, WebSockets, SIGTERM under load, config reload, Prometheus output and secrets in
//! logs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn setup(extra: &str) -> (Upstream, Workspace, String) {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), extra);
    let (_, key) = ws.create_key(&[]);
    (up, ws, key)
}

/// Reads until the peer closes (Ok(0)) or errors; `None` if it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_but_idle_keep_alive_outlives_the_header_timeout() {
    let (_up, ws, key) =
        setup("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"4s\"\n").await;
    let kg = ws.serve();

    // Slow-loris: a header line every 300 ms, forever.
    let mut loris = TcpStream::connect(kg.public).await.unwrap();
    loris
        .write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if loris
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return (i, loris);
            }
        }
        (40, loris)
    });
    let (lines, mut loris) = tokio::time::timeout(Duration::from_secs(15), trickle)
        .await
        .unwrap()
        .unwrap();
    assert!(lines < 40, "the trickling client was never cut off");
    let answer = closed_within(&mut loris, Duration::from_secs(5)).await;
    assert_eq!(answer.as_deref(), Some(&[][..]), "expected a silent close");

    // A keep-alive connection idle for longer than the header timeout (but shorter than the
    // idle timeout) still carries the next request.
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let keyed = || {
        Request::get("/v1/k")
            .header("host", "a")
            .header("x-api-key", &key)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = sender.send_request(keyed()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().collect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = sender.send_request(keyed()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "closed before the idle timeout");
    r.into_body().collect().await.unwrap();

    // Left idle past the idle timeout, keygate closes it.
    let closed_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle connection still open after 10 s")
        .unwrap()
        .unwrap();
    assert!(
        closed_at.elapsed() >= Duration::from_secs(3),
        "closed too early"
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_without_costing_memory() {
    let (_up, ws, key) =
        setup("[server]\nmax_connections = 2\nheader_read_timeout = \"30s\"\n").await;
    let kg = ws.serve();
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(kg.public).await.unwrap(),
        TcpStream::connect(kg.public).await.unwrap(),
    ];
    let url = kg.url("/v1/queued");
    let waiting = tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served over the cap"
    );

    // Many more clients knocking: they wait in the kernel's backlog, not in keygate.
    let rss = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss(kg.child.id());
    let mut knocking = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(kg.public).await.unwrap();
        s.write_all(b"GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        knocking.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss(kg.child.id()).saturating_sub(before);
    assert!(
        grown < 4 << 20,
        "RSS grew by {grown} bytes for queued clients"
    );
    assert_eq!(
        kg.metric("keygate_open_connections").await,
        Some(2.0),
        "only the connections within the cap are open"
    );

    // A slot frees up: the waiting request is served.
    drop(knocking);
    drop(held);
    let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the queued request was never served")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_never_reach_the_upstream_whole() {
    let (_up, ws, key) = setup("[server]\nmax_body_bytes = 1024\n").await;
    let kg = ws.serve();
    let url = kg.url("/v1/upload");

    let small = send(
        Method::POST,
        &url,
        &[("x-api-key", &key)],
        Bytes::from(vec![b'a'; 512]),
    )
    .await;
    assert_eq!(small.status, StatusCode::OK);
    assert_eq!(small.json()["body_len"], 512);

    // Declared too large: refused before anything is forwarded.
    let forwarded = "keygate_upstream_duration_seconds_count";
    let before = kg.metric(forwarded).await.unwrap();
    let big = send(
        Method::POST,
        &url,
        &[("x-api-key", &key)],
        Bytes::from(vec![b'a'; 2048]),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(big.error_code(), "request_too_large");
    assert_eq!(kg.metric(forwarded).await.unwrap(), before);

    // Streamed without a length: cut off at the limit, still a 413.
    let req = Request::post(&url)
        .header("x-api-key", &key)
        .body(PatternBody::new(8 * 1024))
        .unwrap();
    let reply = request(req).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "request_too_large");
}

#[tokio::test]
async fn header_lines_beyond_the_cap_get_431_and_a_close() {
    let (_up, ws, key) = setup("").await;
    let kg = ws.serve();
    // A head of `lines` header lines in all (Host, Connection and the key among them), sent
    // raw; the answer is everything read until keygate closes.
    let answer = |lines: usize| {
        let mut head = format!(
            "GET /v1/many HTTP/1.1\r\nHost: a\r\nConnection: close\r\nx-api-key: {key}\r\n"
        );
        for i in 3..lines {
            head.push_str(&format!("x-extra-{i}: {i}\r\n"));
        }
        head.push_str("\r\n");
        async move {
            let mut tcp = TcpStream::connect(kg.public).await.unwrap();
            tcp.write_all(head.as_bytes()).await.unwrap();
            let got = closed_within(&mut tcp, Duration::from_secs(10))
                .await
                .expect("the connection stayed open");
            String::from_utf8_lossy(&got).into_owned()
        }
    };

    // 90 lines: served, and the upstream saw the last of them. (Not 100: keygate adds its
    // identity headers, and the test upstream has the same 100-line cap.)
    let reply = answer(90).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("x-extra-89"), "{reply}");

    // 101 lines: hyper's own 431, before keygate sees the request, then a close; nothing
    // reached the upstream.
    let forwarded = "keygate_upstream_duration_seconds_count";
    let before = kg.metric(forwarded).await.unwrap();
    let reply = answer(101).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert!(!reply.contains(&key), "the key was echoed");
    assert_eq!(kg.metric(forwarded).await.unwrap(), before);

    // Still serving.
    let ok = get(&kg.url("/v1/after"), &[("x-api-key", &key)]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn https_only_behind_a_terminator_trusts_forwarded_proto_from_trusted_proxies_only() {
    let (_up, ws, key) =
        setup("[network]\nrequire_https = true\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    let plain = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    assert_eq!(plain.error_code(), "https_required");
    let terminated = get(&url, &[("x-api-key", &key), ("x-forwarded-proto", "https")]).await;
    assert_eq!(terminated.status, StatusCode::OK);
    drop(kg);

    // The same header from a peer that is not a trusted proxy proves nothing.
    let (_up, ws, key) = setup("[network]\nrequire_https = true\n").await;
    let kg = ws.serve();
    let spoofed = get(
        &kg.url("/v1/x"),
        &[("x-api-key", &key), ("x-forwarded-proto", "https")],
    )
    .await;
    assert_eq!(spoofed.status, StatusCode::FORBIDDEN);
    assert_eq!(spoofed.error_code(), "https_required");
}

/// A WebSocket echo upstream that reports the headers of each handshake it accepts.
#[allow(clippy::result_large_err)] // tungstenite's callback signature, not ours
async fn websocket_upstream() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<http::HeaderMap>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let callback =
                    |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                        let _ = tx.send(req.headers().clone());
                        Ok(resp)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// A WebSocket through keygate to `/v1/stream` with `key`, and the client's own address.
async fn websocket_through(
    kg: &Keygate,
    key: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    std::net::SocketAddr,
) {
    websocket_through_with(kg, &[("x-api-key", key)]).await
}

/// [`websocket_through`] with the handshake's `headers` (the key among them).
async fn websocket_through_with(
    kg: &Keygate,
    headers: &[(&'static str, &str)],
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    std::net::SocketAddr,
) {
    let mut req = format!("ws://{}/v1/stream", kg.public)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().unwrap());
    }
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (socket, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap()
    .expect("WebSocket handshake through keygate");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    (socket, client)
}

#[tokio::test]
async fn websockets_pass_through_after_the_key_is_admitted() {
    let (upstream, mut handshakes) = websocket_upstream().await;
    let ws = Workspace::new(&upstream, "");
    let (id, key) = ws.create_key(&[]);
    let kg = ws.serve();

    let (mut socket, _) = websocket_through(&kg, &key).await;
    for text in ["hello", "world"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    let seen = handshakes.recv().await.unwrap();
    assert!(
        seen.get("x-api-key").is_none(),
        "the key reached the upstream"
    );
    assert_eq!(seen["x-keygate-key-id"], id.as_str());
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(1.0));
    socket.close(None).await.unwrap();
    // The tunnel ends when both sides have closed their half.
    drop(socket);
    let counted = eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_tunnels_closed_total{reason=\"closed\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "the closed tunnel was not counted");
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(0.0));

    // Without a key the handshake is refused with keygate's JSON 401, upstream untouched.
    let req = format!("ws://{}/v1/stream", kg.public)
        .into_client_request()
        .unwrap();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let body = response.body().clone().unwrap_or_default();
            assert!(text(&body).contains("missing_api_key"), "{}", text(&body));
        }
        other => panic!("expected a refused handshake, got {:?}", other.map(|_| ())),
    }
    assert!(
        handshakes.try_recv().is_err(),
        "a refused handshake reached the upstream"
    );
}

#[tokio::test]
async fn a_websocket_tunnel_lives_while_bytes_move_and_is_told_when_idle() {
    // `tunnel_idle_timeout` 1 s: a message every 300 ms (echoed, so bytes move both ways)
    // keeps the tunnel open well past it; then silence ends it, both ends told 1001 with the
    // reason. While it is a tunnel, the kernel watches the client's connection (keepalive),
    // since no other clock does.
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(&upstream, "");
    ws.upstream_options("tunnel_idle_timeout = \"1s\"\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let (mut socket, client) = websocket_through(&kg, &key).await;
    let opened = Instant::now();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = format!("message {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .expect("the tunnel closed while bytes moved")
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    assert!(opened.elapsed() >= Duration::from_millis(2400));

    assert_keepalive(&kg, client);
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(1.0));

    let quiet = Instant::now();
    told_close(&mut socket, "client", IDLE_OUT, "its silence").await;
    let waited = quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "told after {waited:?} of silence"
    );
    let upstream_told = tokio::time::timeout(Duration::from_secs(5), closes.recv())
        .await
        .expect("the upstream was not told");
    assert_eq!(upstream_told, Some(Some(IDLE_OUT.0)));
    let closed = eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_tunnels_open").await == Some(0.0)
    })
    .await;
    assert!(closed.is_some(), "the tunnel is still counted open");
    for (reason, count) in [("idle", 1.0), ("closed", 0.0), ("error", 0.0)] {
        assert_eq!(
            kg.metric(&format!(
                "keygate_tunnels_closed_total{{reason=\"{reason}\"}}"
            ))
            .await,
            Some(count),
            "{reason}"
        );
    }
}

/// An HTTP/2 connection to keygate (prior knowledge) that has read keygate's SETTINGS, which
/// must allow extended CONNECT (RFC 8441).
async fn h2_connection(
    kg: &Keygate,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>> {
    h2_connection_from(kg).await.0
}

/// [`h2_connection`], and the client's own address.
async fn h2_connection_from(
    kg: &Keygate,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    std::net::SocketAddr,
) {
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (mut sender, mut conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let allowed = Arc::new(AtomicBool::new(false));
    let seen = allowed.clone();
    tokio::spawn(std::future::poll_fn(move |cx| {
        let polled = std::pin::Pin::new(&mut conn).poll(cx);
        seen.store(
            conn.is_extended_connect_protocol_enabled(),
            Ordering::Relaxed,
        );
        polled
    }));
    // Two exchanges first (requests without a key, which keygate answers itself): by the
    // first answer keygate's SETTINGS are in (hyper reads them in a task of its own), and
    // sending the second polls the connection above, which notes them.
    for _ in 0..2 {
        let unkeyed = Request::get(format!("http://{}/v1/settings", kg.public))
            .body(http_body_util::Empty::new())
            .unwrap();
        assert_eq!(
            h2_send(&mut sender, unkeyed).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert!(
        allowed.load(Ordering::Relaxed),
        "keygate did not allow extended CONNECT"
    );
    (sender, client)
}

/// An extended CONNECT for a WebSocket at `path` (`protocol` in `:protocol`), with `headers`.
fn extended_connect(
    kg: &Keygate,
    path: &str,
    protocol: &'static str,
    headers: &[(&str, &str)],
) -> Request<http_body_util::Empty<Bytes>> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{}{path}", kg.public))
        .extension(hyper::ext::Protocol::from_static(protocol))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(http_body_util::Empty::new()).unwrap()
}

type H2WebSocket = tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket opened through keygate by an HTTP/2 client, and the `200`'s headers.
async fn websocket_over_h2(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    req: Request<http_body_util::Empty<Bytes>>,
) -> (H2WebSocket, http::HeaderMap) {
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    let headers = response.headers().clone();
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (socket, headers)
}

/// A text message out and its echo back, within 5 s.
async fn echoes<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(Message::text(text)).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .expect("the tunnel closed")
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), text);
}

/// The WebSocket's close handshake, then the stream's end (`END_STREAM`), as a browser ends it.
async fn close_h2_websocket(mut socket: H2WebSocket) {
    socket.close(None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(end.is_ok(), "no close from the upstream");
    socket.get_mut().shutdown().await.unwrap();
}

/// A request on an HTTP/2 connection, its status and body.
async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    req: Request<http_body_util::Empty<Bytes>>,
) -> (StatusCode, String) {
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, text(&body))
}

#[tokio::test]
async fn an_http2_client_opens_a_websocket_that_the_upstream_gets_as_an_http11_one() {
    // The idle and header clocks at 1 s: the tunnel below stays quiet for 3 s, long enough
    // for the connection to be closed under it if the tunnel did not count as in flight.
    let (upstream, mut handshakes) = websocket_upstream().await;
    let ws = Workspace::new(
        &upstream,
        "[server]\nidle_timeout = \"1s\"\nheader_read_timeout = \"1s\"\n\n\
         [plans.web]\nper_hour = 1000\n\n[limits]\ndefault_plan = \"web\"\n",
    );
    let (id, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let (mut sender, client) = h2_connection_from(&kg).await;
    // Any stream of it may become a tunnel, so the kernel watches the client's path.
    assert_keepalive(&kg, client);

    let keyed = [("x-api-key", key.as_str())];
    let req = extended_connect(&kg, "/v1/stream", "websocket", &keyed);
    let (mut socket, headers) = websocket_over_h2(&mut sender, req).await;
    assert!(
        headers.get("sec-websocket-accept").is_none(),
        "RFC 8441 has no accept: {headers:?}"
    );
    // Admitted and counted as the GET it stands for.
    assert_eq!(headers["x-ratelimit-limit"], "1000", "{headers:?}");
    echoes(&mut socket, "hello").await;
    echoes(&mut socket, "world").await;

    // The upstream got an HTTP/1.1 handshake with keygate's own key, and no client key.
    let seen = handshakes.recv().await.unwrap();
    assert!(
        seen.get("x-api-key").is_none(),
        "the key reached the upstream"
    );
    assert_eq!(seen["x-keygate-key-id"], id.as_str());
    assert_eq!(seen["sec-websocket-key"].len(), 24, "{seen:?}");
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(1.0));

    // Other streams share the connection while the tunnel is open: a second WebSocket.
    let req = extended_connect(&kg, "/v1/other", "websocket", &keyed);
    let (mut second, _) = websocket_over_h2(&mut sender, req).await;
    assert!(handshakes.recv().await.is_some(), "the second handshake");
    echoes(&mut second, "second").await;
    echoes(&mut socket, "first").await;
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(2.0));
    close_h2_websocket(second).await;

    // Quiet for three idle timeouts: the connection stays, and so does the tunnel.
    tokio::time::sleep(Duration::from_secs(3)).await;
    echoes(&mut socket, "still here").await;
    close_h2_websocket(socket).await;
    let counted = eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_tunnels_closed_total{reason=\"closed\"}")
            .await
            == Some(2.0)
    })
    .await;
    assert!(counted.is_some(), "the closed tunnels were not counted");
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(0.0));

    // Refused before the upstream: no key, and CONNECT that is no WebSocket.
    let mut sender = h2_connection(&kg).await;
    let (status, body) = h2_send(
        &mut sender,
        extended_connect(&kg, "/v1/stream", "websocket", &[]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("missing_api_key"), "{body}");
    let (status, body) = h2_send(
        &mut sender,
        extended_connect(&kg, "/v1/stream", "connect-udp", &keyed),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("only to open a WebSocket"), "{body}");
    assert!(
        handshakes.try_recv().is_err(),
        "a refused handshake reached the upstream"
    );
}

/// An upstream that reads one request head, hands it to the test, and writes `answer(head)`.
async fn scripted_upstream(
    answer: fn(&str) -> String,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut tcp).await else {
                    return;
                };
                let head = text(&head);
                let _ = tcp.write_all(answer(&head).as_bytes()).await;
                let _ = tx.send(head);
                // Whatever comes next is echoed back, until the close.
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

/// What a handshake's `Sec-WebSocket-Accept` must say, from the head that carried its key.
fn accept_for(head: &str) -> String {
    let key = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then_some(value)
        })
        .expect("a Sec-WebSocket-Key");
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.trim().as_bytes())
}

#[tokio::test]
async fn an_http2_websocket_opens_only_on_a_101_that_answers_keygates_key() {
    // (what the upstream answers, what the client gets, a protocol failure counted)
    type Answer = fn(&str) -> String;
    let cases: [(&str, Answer, StatusCode, &str); 4] = [
        (
            "a refusal is relayed with its body",
            |_| "HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Why: origin\r\n\r\nnope".into(),
            StatusCode::FORBIDDEN,
            "nope",
        ),
        (
            "a 200 is no switch",
            |_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
        ),
        (
            "an accept that answers another key",
            |_| {
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                    .into()
            },
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
        ),
        (
            "a 101 that switches to something else",
            |head| {
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    accept_for(head)
                )
            },
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
        ),
    ];
    for (case, answer, status, body_has) in cases {
        let (upstream, mut heads) = scripted_upstream(answer).await;
        let ws = Workspace::new(&upstream, "");
        let (_, key) = ws.create_key(&[]);
        let kg = ws.serve();
        let mut sender = h2_connection(&kg).await;
        let req = extended_connect(&kg, "/v1/ws", "websocket", &[("x-api-key", &key)]);
        let (got, body) = h2_send(&mut sender, req).await;
        assert_eq!(got, status, "{case}: {body}");
        assert!(body.contains(body_has), "{case}: {body}");
        let head = heads.recv().await.unwrap();
        assert!(
            head.starts_with("GET /v1/ws HTTP/1.1\r\n"),
            "{case}: {head}"
        );
        let failures = kg
            .metric("keygate_upstream_failures_total{kind=\"protocol\"}")
            .await;
        let want = if status == StatusCode::BAD_GATEWAY {
            1.0
        } else {
            0.0
        };
        assert_eq!(failures, Some(want), "{case}");
    }

    // A good 101 with the upstream's first bytes in the same packet: the client gets them
    // first, then the tunnel carries bytes both ways (the upstream echoes them).
    let (upstream, _heads) = scripted_upstream(|head| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: chat\r\n\r\nearly",
            accept_for(head)
        )
    })
    .await;
    let ws = Workspace::new(&upstream, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut sender = h2_connection(&kg).await;
    let req = extended_connect(
        &kg,
        "/v1/ws",
        "websocket",
        &[("x-api-key", &key), ("sec-websocket-protocol", "chat")],
    );
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"early");
    tunnel.write_all(b"round trip").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"round trip");

    // An HTTP/1.1 client's upgrade is spliced only on a 101 that switches to WebSocket: a
    // switch to anything else could carry requests no key check saw.
    let (upstream, mut heads) = scripted_upstream(|head| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(head)
        )
    })
    .await;
    let ws = Workspace::new(&upstream, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut req = format!("ws://{}/v1/ws", kg.public)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("x-api-key", key.parse().unwrap());
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("no answer to the handshake");
    match handshake {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        }
        other => panic!("expected a 502, got {:?}", other.map(|_| ())),
    }
    let head = tokio::time::timeout(Duration::from_secs(5), heads.recv()).await;
    let head = head.unwrap().unwrap().to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");

    // An HTTP/2 upstream: keygate passes no WebSocket to it, and says so.
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    ws.upstream_options("http2 = true\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut sender = h2_connection(&kg).await;
    let req = extended_connect(&kg, "/v1/ws", "websocket", &[("x-api-key", &key)]);
    let (status, body) = h2_send(&mut sender, req).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("websocket_unsupported"), "{body}");
    // An HTTP/1.1 client's handshake gets the same answer from keygate, after its key is
    // checked, where the upstream used to get it as a plain GET (and the echo upstream
    // answered 200).
    for (headers, want) in [
        (
            vec![("x-api-key", key.as_str())],
            StatusCode::NOT_IMPLEMENTED,
        ),
        (vec![], StatusCode::UNAUTHORIZED),
    ] {
        let mut req = format!("ws://{}/v1/ws", kg.public)
            .into_client_request()
            .unwrap();
        for (name, value) in headers {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
        let tcp = TcpStream::connect(kg.public).await.unwrap();
        let handshake = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(req, tcp),
        )
        .await
        .expect("no answer to the handshake");
        match handshake {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), want);
                let body = text(&response.body().clone().unwrap_or_default());
                if want == StatusCode::NOT_IMPLEMENTED {
                    assert!(body.contains("websocket_unsupported"), "{body}");
                }
            }
            other => panic!("expected {want}, got {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn sigterm_under_load_fails_no_request_and_exits_in_time() {
    let (_up, ws, key) =
        setup("[server]\ndrain_period = \"1s\"\nshutdown_timeout = \"5s\"\n").await;
    let mut kg = ws.serve();
    let url = kg.url("/v1/load");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (url, key, stop, ok) = (url.clone(), key.clone(), stop.clone(), ok.clone());
        loaders.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(&url)
                    .header("x-api-key", &key)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                match client.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_term = ok.load(Ordering::Relaxed);
    assert!(before_term > 0, "no load ran");
    let signalled = Instant::now();
    kg.signal("TERM");

    // During the drain: readiness fails at once, requests are still served.
    let ready = eventually(Duration::from_millis(500), || async {
        get(&kg.admin_url("/readyz"), &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(ready.is_some(), "/readyz still OK during the drain");

    // A slow upload starts inside the drain and ends after the listeners closed.
    let slow_url = url.clone();
    let slow_key = key.clone();
    let slow = tokio::spawn(async move {
        let chunks = futures_util::stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"0123456789")))
        });
        let req = Request::post(&slow_url)
            .header("x-api-key", &slow_key)
            .body(StreamBody::new(Box::pin(chunks)))
            .unwrap();
        request(req).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load balancer has noticed: the clients stop sending.
    stop.store(true, Ordering::Relaxed);
    let after_term = ok.load(Ordering::Relaxed) - before_term;
    for loader in loaders {
        let failures = loader.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    assert!(after_term > 0, "nothing was served during the drain");
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.json()["body_len"], 100);

    kg.exits_cleanly_within(Duration::from_secs(10)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(1 + 5 + 3),
        "exited after the deadline"
    );
}

/// Asserts the next thing `socket` gets is keygate's Close with `status` and `reason`, within
/// 10 s of `after`, then the tunnel's end.
async fn told_close<S>(
    socket: &mut tokio_tungstenite::WebSocketStream<S>,
    who: &str,
    (status, reason): (u16, &str),
    after: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap_or_else(|_| panic!("{who}: no Close within 10 s of {after}"));
    match next {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), status, "{who}: {frame:?}");
            assert_eq!(frame.reason.as_str(), reason, "{who}");
        }
        other => panic!("{who}: expected a Close, got {other:?}"),
    }
    // tungstenite answers the Close; then the tunnel ends.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "{who}: the tunnel did not end after the Close"
    );
}

const GOING_AWAY: (u16, &str) = (1001, "server shutting down");
const KEY_LAPSED: (u16, &str) = (1008, "API key no longer valid");
const IDLE_OUT: (u16, &str) = (1001, "idle timeout");

#[tokio::test]
async fn sigterm_tells_websockets_going_away_and_exits_without_waiting_for_them() {
    // An HTTP/1.1 client's WebSocket and an HTTP/2 client's: at the drain's end each end of
    // each tunnel gets a Close with 1001, and keygate exits once they are closed, long
    // before `shutdown_timeout` (30 s), which used to be how long an open tunnel held it.
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(
        &upstream,
        "[server]\ndrain_period = \"300ms\"\nshutdown_timeout = \"30s\"\n",
    );
    let (_, key) = ws.create_key(&[]);
    let mut kg = ws.serve();
    let (mut http1, _) = websocket_through(&kg, &key).await;
    let (mut sender, _) = h2_connection_from(&kg).await;
    let req = extended_connect(&kg, "/v1/stream", "websocket", &[("x-api-key", &key)]);
    let (mut http2, _) = websocket_over_h2(&mut sender, req).await;
    echoes(&mut http1, "before").await;
    echoes(&mut http2, "before").await;
    assert_eq!(kg.metric("keygate_tunnels_open").await, Some(2.0));

    let signalled = Instant::now();
    kg.signal("TERM");
    told_close(
        &mut http1,
        "the HTTP/1.1 client",
        GOING_AWAY,
        "the drain's end",
    )
    .await;
    told_close(
        &mut http2,
        "the HTTP/2 client",
        GOING_AWAY,
        "the drain's end",
    )
    .await;
    let mut upstream_got = Vec::new();
    for _ in 0..2 {
        let close = tokio::time::timeout(Duration::from_secs(5), closes.recv())
            .await
            .expect("the upstream got no Close");
        upstream_got.push(close.unwrap());
    }
    assert_eq!(upstream_got, [Some(1001), Some(1001)]);
    kg.exits_cleanly_within(Duration::from_secs(10)).await;
    let logs = kg.all_logs();
    assert!(
        logs.lines().any(
            |l| l.contains("WebSocket tunnels told: going away") && l.contains("\"tunnels\":2")
        ),
        "{logs}"
    );
    // Both answered: keygate did not wait for the 5 s it gives ends that do not.
    assert!(
        signalled.elapsed() < Duration::from_millis(300) + Duration::from_secs(5),
        "held after both ends answered: {:?}",
        signalled.elapsed()
    );
    assert!(
        closes.try_recv().is_err(),
        "a second Close reached the upstream"
    );
}

#[tokio::test]
async fn a_websocket_ends_when_its_key_may_no_longer_reach_its_route_or_expires() {
    // The whole authorization runs again on a change, not only the key's status: a key whose
    // scopes no longer cover the tunnel's route loses the tunnel; so does one that expires
    // while it is open. A scope change that still covers the route touches nothing.
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(
        &upstream,
        "[server]\nwatch_interval = \"0s\"\n\n\
         [auth]\nunmatched = \"deny\"\n\n\
         [[route]]\npath = \"/v1/**\"\nscopes = [\"stream:read\"]\n",
    );
    let (narrowed, key_n) = ws.create_key(&["--scopes", "stream:read,chat:read"]);
    let (expiring, key_e) = ws.create_key(&["--scopes", "stream:read"]);
    let kg = ws.serve();
    let (mut n1, _) = websocket_through(&kg, &key_n).await;
    let (mut e1, _) = websocket_through(&kg, &key_e).await;
    echoes(&mut n1, "before").await;
    echoes(&mut e1, "before").await;

    let still = ws.cli(&["keys", "update", &narrowed, "--scopes", "stream:read"]);
    assert!(still.status.success(), "{}", text(&still.stderr));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echoes(&mut n1, "still covered").await;
    let out = ws.cli(&["keys", "update", &narrowed, "--scopes", "chat:read"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    told_close(
        &mut n1,
        "the narrowed key's client",
        KEY_LAPSED,
        "the key's change",
    )
    .await;

    let out = ws.cli(&["keys", "update", &expiring, "--expires-in", "3s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let updated = Instant::now();
    echoes(&mut e1, "until it expires").await;
    told_close(
        &mut e1,
        "the expiring key's client",
        KEY_LAPSED,
        "the key's change",
    )
    .await;
    assert!(
        updated.elapsed() >= Duration::from_secs(2),
        "closed before the key expired: {:?}",
        updated.elapsed()
    );
    for _ in 0..2 {
        let close = tokio::time::timeout(Duration::from_secs(5), closes.recv()).await;
        assert_eq!(close.ok().flatten(), Some(Some(1008)), "the upstream's end");
    }
}

#[tokio::test]
async fn a_browser_s_websocket_ends_when_its_origin_is_no_longer_allowed() {
    // A public key's browser origins can be changed (`PATCH /v1/keys/{id}`); a WebSocket a
    // page opened from an origin the key no longer allows ends with 1008, as one whose key
    // lapsed. A change that still allows it, and a client that sent no Origin (not a
    // browser), are left alone.
    const APP: &str = "https://app.example.com";
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(&upstream, "[server]\nwatch_interval = \"0s\"\n");
    let (_, admin) = ws.create_key(&["--scopes", "*,keygate:keys:write"]);
    let (id, key) = ws.create_key(&["--type", "public", "--allow-origin", APP]);
    let (secret_id, _) = ws.create_key(&[]);
    let kg = ws.serve_with_env(&[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0")]);
    let (mut page, _) = websocket_through_with(&kg, &[("x-api-key", &key), ("origin", APP)]).await;
    let (mut tool, _) = websocket_through(&kg, &key).await;
    echoes(&mut page, "before").await;
    echoes(&mut tool, "before").await;
    let bearer = format!("Bearer {admin}");
    let patch = |id: String, origins: Vec<&str>| {
        let url = kg.manage_url(&format!("/v1/keys/{id}"));
        let body = serde_json::json!({ "allowed_origins": origins }).to_string();
        let bearer = bearer.clone();
        async move {
            send(
                Method::PATCH,
                &url,
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body),
            )
            .await
        }
    };

    let still = patch(id.clone(), vec![APP, "https://admin.example.com"]).await;
    assert_eq!(still.status, StatusCode::OK, "{}", text(&still.body));
    assert_eq!(
        still.json()["allowed_origins"],
        serde_json::json!([APP, "https://admin.example.com"])
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    echoes(&mut page, "still allowed").await;
    let moved = patch(id.clone(), vec!["https://new.example.com"]).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", text(&moved.body));
    told_close(
        &mut page,
        "the page's client",
        KEY_LAPSED,
        "the origins' change",
    )
    .await;
    let close = tokio::time::timeout(Duration::from_secs(5), closes.recv()).await;
    assert_eq!(close.ok().flatten(), Some(Some(1008)), "the upstream's end");
    echoes(&mut tool, "after the change").await;
    // The page cannot come back from its old origin.
    let again = get(
        &kg.url("/v1/stream"),
        &[("x-api-key", key.as_str()), ("origin", APP)],
    )
    .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert_eq!(again.error_code(), "origin_not_allowed");

    // Only a public key has origins: a secret key's change is refused, and changes nothing.
    let refused = patch(secret_id, vec![APP]).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_code(), "invalid_parameter");
    assert!(
        text(&refused.body).contains("only public keys"),
        "{}",
        text(&refused.body)
    );
}

#[tokio::test]
async fn a_websocket_ends_when_its_key_is_revoked_or_suspended() {
    // A tunnel outlives the handshake that admitted it: it must not outlive its key. Key A's
    // WebSockets (one per kind of client) end with 1008 when A is revoked; key B's, when B is
    // suspended; key C's goes on. A key created meanwhile (a change to the store) touches none.
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(&upstream, "[server]\nwatch_interval = \"0s\"\n");
    let (a, key_a) = ws.create_key(&[]);
    let (b, key_b) = ws.create_key(&[]);
    let (_, key_c) = ws.create_key(&[]);
    let kg = ws.serve();
    let (mut a1, _) = websocket_through(&kg, &key_a).await;
    let (mut sender, _) = h2_connection_from(&kg).await;
    let req = extended_connect(&kg, "/v1/stream", "websocket", &[("x-api-key", &key_a)]);
    let (mut a2, _) = websocket_over_h2(&mut sender, req).await;
    let (mut b1, _) = websocket_through(&kg, &key_b).await;
    let (mut c1, _) = websocket_through(&kg, &key_c).await;
    for socket in [&mut a1, &mut b1, &mut c1] {
        echoes(socket, "before").await;
    }
    echoes(&mut a2, "before").await;

    ws.create_key(&[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for socket in [&mut a1, &mut b1, &mut c1] {
        echoes(socket, "after an unrelated change").await;
    }
    echoes(&mut a2, "after an unrelated change").await;

    assert!(ws.cli(&["keys", "revoke", &a]).status.success());
    told_close(
        &mut a1,
        "key A's HTTP/1.1 client",
        KEY_LAPSED,
        "the key's change",
    )
    .await;
    told_close(
        &mut a2,
        "key A's HTTP/2 client",
        KEY_LAPSED,
        "the key's change",
    )
    .await;
    echoes(&mut b1, "B still").await;
    assert!(ws.cli(&["keys", "suspend", &b]).status.success());
    told_close(&mut b1, "key B's client", KEY_LAPSED, "the key's change").await;
    echoes(&mut c1, "C still").await;

    let mut upstream_got = Vec::new();
    for _ in 0..3 {
        let close = tokio::time::timeout(Duration::from_secs(5), closes.recv())
            .await
            .expect("the upstream got no Close");
        upstream_got.push(close.unwrap());
    }
    assert_eq!(upstream_got, [Some(1008); 3]);
    let counted = eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_tunnels_closed_total{reason=\"key_lapsed\"}")
            .await
            == Some(3.0)
            && kg.metric("keygate_tunnels_open").await == Some(1.0)
    })
    .await;
    assert!(
        counted.is_some(),
        "the three tunnels were not counted as key_lapsed, or C's was"
    );
    // Reconnecting with the revoked key is refused at the handshake, as any request.
    let mut req = format!("ws://{}/v1/stream", kg.public)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-api-key", key_a.parse().unwrap());
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn sigterm_cuts_off_a_websocket_whose_client_does_not_answer_after_five_seconds() {
    // A client that vanished without a reset (or just never reads): it is told going away
    // like any other, and cut off 5 s later instead of holding keygate for its 30 s
    // `shutdown_timeout`.
    let (upstream, mut closes) = websocket_upstream_reporting_closes().await;
    let ws = Workspace::new(
        &upstream,
        "[server]\ndrain_period = \"300ms\"\nshutdown_timeout = \"30s\"\n",
    );
    let (_, key) = ws.create_key(&[]);
    let mut kg = ws.serve();
    let mut silent = TcpStream::connect(kg.public).await.unwrap();
    let handshake = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    silent.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_request_head(&mut silent).await.expect("an answer");
    let head = text(&head);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // The `101` goes out just before the tunnel starts.
    let open = eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_tunnels_open").await == Some(1.0)
    })
    .await;
    assert!(open.is_some(), "the tunnel never opened");

    let signalled = Instant::now();
    kg.signal("TERM");
    let close = tokio::time::timeout(Duration::from_secs(5), closes.recv()).await;
    assert_eq!(
        close.ok().flatten(),
        Some(Some(1001)),
        "the upstream was told"
    );
    kg.exits_cleanly_within(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "cut off after {took:?}, not 5 s after the drain"
    );
    // What the client would have read: keygate's Close (1001), then the end.
    let rest = closed_within(&mut silent, Duration::from_secs(5)).await;
    let rest = rest.expect("the connection is closed");
    assert_eq!(rest[0], 0x88, "{rest:?}");
    assert_eq!(rest[2..4], 1001u16.to_be_bytes(), "{rest:?}");
}

#[tokio::test]
async fn sighup_and_file_changes_reload_the_config_and_bad_configs_change_nothing() {
    let (_up, ws, key) = setup("[server]\nwatch_interval = \"0s\"\n").await;
    let kg = ws.serve();
    let open = kg.url("/open/docs");
    assert_eq!(get(&open, &[]).await.status, StatusCode::UNAUTHORIZED);

    // Valid: /open/* becomes public.
    let original = std::fs::read_to_string(ws.config()).unwrap();
    let with_public = original.replace(
        "[auth]\nunmatched = \"allow\"\n",
        "[auth]\nunmatched = \"allow\"\npublic_paths = [\"/open/*\"]\n",
    );
    assert_ne!(with_public, original);
    std::fs::write(ws.config(), &with_public).unwrap();
    kg.signal("HUP");
    let applied = eventually(Duration::from_secs(5), || async {
        get(&open, &[]).await.status == StatusCode::OK
    })
    .await;
    assert!(
        applied.is_some(),
        "SIGHUP did not apply the new public path"
    );
    assert_eq!(
        kg.metric(r#"keygate_reloads_total{result="ok",what="config"}"#)
            .await,
        Some(1.0)
    );

    // Invalid: nothing changes, the failure is logged and counted.
    std::fs::write(ws.config(), format!("{with_public}\n[auth.bogus]\nx = 1\n")).unwrap();
    kg.signal("HUP");
    let counted = eventually(Duration::from_secs(5), || async {
        kg.metric(r#"keygate_reloads_total{result="failed",what="config"}"#)
            .await
            == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "the failed reload was not counted");
    assert_eq!(get(&open, &[]).await.status, StatusCode::OK);
    assert_eq!(
        get(&kg.url("/v1/x"), &[("x-api-key", &key)]).await.status,
        StatusCode::OK
    );
    assert!(kg.all_logs().contains("config reload failed"));
    drop(kg);

    // Watched: a changed file applies without a signal; a restart-only change is reported.
    let watched = original.replace("watch_interval = \"0s\"", "watch_interval = \"100ms\"");
    std::fs::write(ws.config(), &watched).unwrap();
    let kg = ws.serve();
    let open = kg.url("/open/docs");
    assert_eq!(get(&open, &[]).await.status, StatusCode::UNAUTHORIZED);
    let changed = watched
        .replace(
            "[auth]\nunmatched = \"allow\"\n",
            "[auth]\nunmatched = \"allow\"\npublic_paths = [\"/open/*\"]\n",
        )
        .replace(
            "watch_interval = \"100ms\"",
            "watch_interval = \"100ms\"\nmax_connections = 7",
        );
    std::fs::write(ws.config(), changed).unwrap();
    let applied = eventually(Duration::from_secs(5), || async {
        get(&open, &[]).await.status == StatusCode::OK
    })
    .await;
    assert!(applied.is_some(), "the watched file change was not applied");
    assert!(
        kg.all_logs().contains("change only on restart"),
        "{}",
        kg.all_logs()
    );
}

#[tokio::test]
async fn metrics_pass_promtool_and_carry_no_secrets() {
    let (_up, ws, key) = setup("").await;
    let kg = ws.serve();
    for headers in [vec![("x-api-key", key.as_str())], vec![]] {
        get(&kg.url("/v1/users/12345"), &headers).await;
    }
    let metrics = text(&get(&kg.admin_url("/metrics"), &[]).await.body);
    for name in [
        "keygate_requests_total",
        "keygate_request_duration_seconds_bucket",
        "keygate_upstream_duration_seconds_bucket",
        "keygate_open_connections",
        "keygate_tls_handshake_failures_total",
        "keygate_reloads_total",
        "keygate_key_cache_lookups_total",
        "keygate_key_store_up",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(!metrics.contains(&key), "a key in /metrics");
    assert!(!metrics.contains("12345"), "a raw path in /metrics");

    let Ok(mut promtool) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing in CI; scripts/test.sh installs it (Debian package prometheus)"
        );
        eprintln!("promtool not installed: skipping its check (scripts/test.sh installs it)");
        return;
    };
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test]
async fn no_secret_reaches_any_log_line_even_at_trace_level() {
    let (_up, ws, key) = setup("").await;
    let (_, other) = ws.create_key(&[]);
    let kg = ws.serve_with_env(&[("KEYGATE_LOG", "trace")]);
    let url = kg.url("/v1/audit");
    let bearer = format!("Bearer {key}");
    let unknown = keygate::credential::generate_key(
        "kg",
        keygate::keys::KeyType::Secret,
        keygate::keys::Environment::LIVE,
    )
    .unwrap();
    let attempts: Vec<Vec<(&str, &str)>> = vec![
        vec![("x-api-key", &key)],
        vec![("authorization", &bearer)],
        vec![("project-access-token", &key)],
        vec![("x-api-key", &unknown)],
        vec![("x-api-key", &key), ("x-api-key", &other)],
        vec![("x-api-key", "kg_sk_live_garbage-but-secret")],
    ];
    for headers in &attempts {
        get(&url, headers).await;
    }
    get(&format!("{url}?api_key={key}"), &[("x-api-key", &key)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = kg.all_logs();
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.contains("\"keygate::access\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        access.len(),
        attempts.len() + 1,
        "one access event per request"
    );
    let admitted = &access[0];
    for field in [
        "key_id",
        "owner",
        "env",
        "decision",
        "status",
        "route",
        "client_ip",
        "latency_us",
    ] {
        assert!(
            !admitted[field].is_null(),
            "access event lacks {field}: {admitted}"
        );
    }
    assert_eq!(admitted["decision"], "allowed");
    assert_eq!(admitted["route"], "unmatched");
    assert!(
        logs.lines().any(|l| l.contains(r#""level":"TRACE""#)),
        "trace logging did not run: {logs}"
    );
    for secret in [&key, &other, &unknown, &"garbage-but-secret".to_owned()] {
        // The random part alone, in case a prefix was trimmed somewhere.
        let tail = &secret[secret.len().saturating_sub(20)..];
        assert!(!logs.contains(tail), "a secret reached the logs");
    }
}

#[tokio::test]
async fn http2_clients_get_the_configured_stream_cap_and_header_limit() {
    let (_up, ws, key) =
        setup("[server]\nhttp2_max_concurrent_streams = 4\nmax_header_bytes = 4096\n").await;
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = |extra: Option<String>| {
        let mut req =
            Request::get(format!("http://{}/v1/h2c", kg.public)).header("x-api-key", &key);
        if let Some(v) = extra {
            req = req.header("x-big", v);
        }
        req.body(()).unwrap()
    };
    let (response, _) = client.send_request(request(None), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The server's SETTINGS have arrived by now.
    assert_eq!(client.current_max_send_streams(), 4);

    // A header block over max_header_bytes on HTTP/2 is refused too.
    let mut client = client.ready().await.unwrap();
    let (response, _) = client
        .send_request(request(Some("v".repeat(8 * 1024))), true)
        .unwrap();
    match response.await {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
    }
}

/// One HTTP/2 frame: 9-byte head (length, type, flags, stream), then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The frame types in `bytes`, read as a sequence of whole or partial frames.
fn h2_frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

/// A GET for `path` as an HPACK block of static-table entries and plain literals.
fn h2_get(path: &str, key: &str) -> Vec<u8> {
    let literal = |block: &mut Vec<u8>, text: &str| {
        block.push(u8::try_from(text.len()).ok().filter(|n| *n < 127).unwrap());
        block.extend_from_slice(text.as_bytes());
    };
    // :method GET, :scheme http (static indexes 2 and 6).
    let mut block = vec![0x82, 0x86];
    // :path and :authority: literals without indexing, names from the static table (4, 1).
    block.push(0x04);
    literal(&mut block, path);
    block.push(0x01);
    literal(&mut block, "a");
    // x-api-key: a literal name and value.
    block.push(0x00);
    literal(&mut block, "x-api-key");
    literal(&mut block, key);
    block
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_SETTINGS: u8 = 4;
const H2_PING: u8 = 6;
const H2_GOAWAY: u8 = 7;

#[tokio::test]
async fn an_http2_client_that_only_pings_is_closed_after_the_idle_timeout() {
    // hyper's client with keep-alive while idle, as gRPC clients are configured: a PING
    // every 300 ms, answered by keygate, is not a request and keeps no connection open.
    let (_up, ws, key) =
        setup("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n").await;
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get(format!("http://{}/v1/pinging", kg.public))
        .header("x-api-key", &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), conn)
        .await
        .expect("a pinging HTTP/2 connection was still open 15 s after its last request")
        .unwrap()
        .unwrap();
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        idle_from.elapsed()
    );
}

#[tokio::test]
async fn an_http2_client_that_ignores_the_goaway_is_cut_off() {
    // Frames written by hand: a request, then a PING of the client's own every 300 ms, and no
    // answer to anything keygate sends, so its graceful GOAWAY (which waits for the answer to
    // a PING of keygate's) never completes.
    let (_up, ws, key) =
        setup("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"2s\"\n").await;
    let kg = ws.serve();
    let mut tcp = TcpStream::connect(kg.public).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    // HEADERS with END_STREAM | END_HEADERS.
    hello.extend(h2_frame(1, 0x5, 1, &h2_get("/v1/raw", &key)));
    tcp.write_all(&hello).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let pinger = tokio::spawn(async move {
        // Longer than the test waits: the client never half-closes.
        for i in 0u64..200 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer
                .write_all(&h2_frame(H2_PING, 0, 0, &i.to_be_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    pinger.abort();
    let types = h2_frame_types(&got);
    assert!(types.contains(&1), "no response HEADERS: {types:?}");
    assert!(
        closed,
        "an HTTP/2 client that pings and ignores GOAWAY held its connection for 15 s \
         (frames received: {types:?})"
    );
    assert!(
        types.contains(&H2_GOAWAY),
        "closed without a GOAWAY: {types:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_is_let_go_after_the_idle_timeout() {
    // An upstream that sends 64 MiB; an HTTP/2 client that never opens its flow-control
    // window past the first 64 KiB but keeps answering PINGs (its connection task runs).
    let upstream = HugeUpstream::start().await;
    let ws = Workspace::new(
        &upstream.url,
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("http://{}/huge", kg.public))
        .header("x-api-key", &key)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.data().await.unwrap().unwrap();
    assert!(!first.is_empty());
    // Nothing more is read, and no capacity is released.
    let stopped = Instant::now();
    let after = upstream
        .let_go_after(stopped)
        .await
        .expect("keygate still holds the upstream for an HTTP/2 client that reads nothing");
    assert!(
        after >= Duration::from_millis(900),
        "let go too early: {after:?}"
    );
    // And the client's connection is closed, not left open with a dead stream.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the stalled HTTP/2 connection was still open 10 s later")
        .unwrap()
        .ok();
    drop(body);
}

#[tokio::test]
async fn an_http2_client_that_opens_no_window_is_let_go_after_the_idle_timeout() {
    // A client whose streams start with a flow-control window of 0 and never open it: no byte
    // of any response body can be sent, so hyper never asks keygate's body for one.
    let (_up, ws, key) =
        setup("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n").await;
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = Request::get(format!("http://{}/v1/closed-window", kg.public))
        .header("x-api-key", &key)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let waiting = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("a connection whose client opens no window was still open 10 s later")
        .unwrap()
        .ok();
    assert!(
        waiting.elapsed() >= Duration::from_millis(900),
        "let go before the idle timeout: {:?}",
        waiting.elapsed()
    );
    drop(response);
}

#[tokio::test]
async fn a_reload_changes_plans_without_losing_the_running_count() {
    let plan = |n: u32| {
        format!(
            "[server]\nwatch_interval = \"0s\"\n[plans.p]\nper_minute = {n}\n[limits]\ndefault_plan = \"p\"\n"
        )
    };
    let (_up, ws, key) = setup(&plan(100)).await;
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    for _ in 0..3 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.headers["x-ratelimit-limit"], "100");
    }
    let config = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(
        ws.config(),
        config.replace("per_minute = 100", "per_minute = 5"),
    )
    .unwrap();
    kg.signal("HUP");
    let applied = eventually(Duration::from_secs(5), || async {
        get(&url, &[("x-api-key", &key)]).await.headers["x-ratelimit-limit"] == "5"
    })
    .await;
    assert!(applied.is_some(), "the new plan was not applied");
    // Within the same minute: the requests already counted still count against the new limit.
    let mut admitted = 0;
    for _ in 0..10 {
        if get(&url, &[("x-api-key", &key)]).await.status == StatusCode::OK {
            admitted += 1;
        }
    }
    assert!(
        admitted < 5,
        "{admitted} admitted: the running count was lost"
    );
}

/// `keygate serve` restarts itself once with glibc's thread cache off (`server::memory`): same
/// PID, same command line, one more variable; an operator's own `GLIBC_TUNABLES`, even an
/// empty one, is left exactly as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn serve_runs_with_glibcs_thread_cache_off_unless_the_operator_says_otherwise() {
    let (_up, ws, key) = setup("").await;
    let environ = |pid: u32| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap()
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    let tunables = |env: &[String]| -> Vec<String> {
        env.iter()
            .filter(|v| v.starts_with("GLIBC_TUNABLES="))
            .cloned()
            .collect()
    };
    for (given, expected) in [
        (None, "GLIBC_TUNABLES=glibc.malloc.tcache_count=0"),
        (Some(""), "GLIBC_TUNABLES="),
        (
            Some("glibc.malloc.tcache_count=7"),
            "GLIBC_TUNABLES=glibc.malloc.tcache_count=7",
        ),
    ] {
        let env: Vec<(&str, &str)> = given.map(|v| ("GLIBC_TUNABLES", v)).into_iter().collect();
        let kg = ws.serve_with_env(&env);
        // Serving, under the PID it was started with.
        let reply = get(&kg.url("/"), &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
        let pid = kg.child.id();
        assert_eq!(
            tunables(&environ(pid)),
            vec![expected.to_owned()],
            "{given:?}"
        );
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .collect();
        assert!(
            args[0].ends_with(b"keygate"),
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        assert_eq!(args[1], b"serve", "{:?}", String::from_utf8_lossy(&cmdline));
    }
}
