//! Quiet faults outside Redis: connections that never send a byte, an upstream that goes
//! silent in the middle of a response body, the log volume of an outage, a `keys create`
//! killed while it writes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use http::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CAP: usize = 20;

/// Holds `CAP` connections that never send a byte, then times a real client.
async fn served_after_silent_clients(
    kg: &Keygate,
    silent: Vec<Box<dyn std::any::Any + Send>>,
    request: impl Future<Output = StatusCode>,
) -> Duration {
    assert_eq!(silent.len(), CAP);
    // Every slot is taken (the gauge counts accepted connections).
    eventually(Duration::from_secs(5), || async {
        kg.metric("keygate_open_connections").await == Some(CAP as f64)
    })
    .await
    .expect("the silent connections were not all accepted");
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("a real client still waits behind silent connections after 20 s");
    assert_eq!(status, StatusCode::OK);
    drop(silent);
    started.elapsed()
}

#[tokio::test]
async fn silent_connections_at_the_cap_free_their_slots_within_the_header_timeout() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        &format!(
            "[server]\nmax_connections = {CAP}\nheader_read_timeout = \"1s\"\nidle_timeout = \"75s\"\n"
        ),
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut silent: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for _ in 0..CAP {
        silent.push(Box::new(TcpStream::connect(kg.public).await.unwrap()));
    }
    let url = kg.url("/");
    let took = served_after_silent_clients(&kg, silent, async {
        get(&url, &[("x-api-key", &key)]).await.status
    })
    .await;
    eprintln!("plain HTTP/1.1: served after {took:?} behind {CAP} silent connections");
    // The header timeout (1 s) plus a margin for a loaded machine; the idle timeout is 75 s.
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// Pieces the streaming upstream sends, one every 300 ms.
const TICKS: usize = 8;

/// An upstream that streams: a chunked body of a piece every 300 ms, then its end: [`TICKS`]
/// pieces (2.4 s in all) for `/stream`, a minute's worth for any other path (a stream that
/// outlasts the test, so no close ends a silence early). Each response closes its
/// connection, so no request meets another's.
async fn streaming_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut tcp).await else {
                    return;
                };
                let answer =
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if tcp.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let ticks = if head.starts_with(b"GET /stream ") {
                    TICKS
                } else {
                    200
                };
                for i in 0..ticks {
                    let piece = format!("tick {i}\n");
                    let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                    if tcp.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let _ = tcp.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    port
}

/// An HTTP/1.1 GET over a raw socket: what arrived, whether the connection closed within
/// 15 s, and when the first body piece came.
async fn raw_get(
    kg: &Keygate,
    path: &str,
    key: &str,
    on_first_piece: impl FnOnce(),
) -> (String, Instant) {
    let mut tcp = TcpStream::connect(kg.public).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut on_first_piece = Some(on_first_piece);
    let mut first_at = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("still open after 15 s: {}", text(&got)),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        if text(&got).contains("tick 0")
            && let Some(first) = on_first_piece.take()
        {
            first_at = Instant::now();
            first();
        }
        if got.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    (text(&got), first_at)
}

#[tokio::test]
async fn an_upstream_that_goes_silent_mid_body_is_cut_off_and_a_slow_stream_is_not() {
    // keygate -> fault proxy -> an upstream streaming a piece every 300 ms for 2.4 s; the
    // body timeout is 1 s. The proxy blackholes a connection mid-body: bytes are acknowledged
    // and dropped both ways, as on a path that died without a reset.
    let fault = fault::FaultProxy::start(streaming_upstream().await);
    let ws = Workspace::new(&format!("http://127.0.0.1:{}", fault.port), "");
    ws.upstream_options("body_timeout = \"1s\"\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();

    // A slow stream is not a dead one: every gap is under the limit, the whole is not.
    let (whole, _) = raw_get(&kg, "/stream", &key, || {}).await;
    assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
    assert!(
        whole.contains(&format!("tick {}", TICKS - 1)) && whole.ends_with("0\r\n\r\n"),
        "{whole}"
    );
    let h2 = request_h2(
        http::Request::get(kg.url("/stream"))
            .header("x-api-key", &key)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(text(&h2.body).lines().count(), TICKS, "{}", text(&h2.body));

    // HTTP/1.1 (keygate's own engine): the path dies after the first piece; the client's
    // connection is closed without the body's end, about a body timeout later.
    let (cut, first_at) = raw_get(&kg, "/forever", &key, || {
        fault.set_existing(fault::Fault::Blackhole)
    })
    .await;
    let after = first_at.elapsed();
    assert!(
        cut.starts_with("HTTP/1.1 200") && cut.contains("tick 0"),
        "{cut}"
    );
    assert!(
        !cut.ends_with("0\r\n\r\n"),
        "a cut-off body looked whole: {cut}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "cut off before the body timeout: {after:?}"
    );
    fault.set_all(fault::Fault::Pass);

    // HTTP/2 (hyper, over keygate's own upstream connections): the stream is reset.
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(kg.url("/forever"))
        .header("x-api-key", &key)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.data().await.unwrap().unwrap();
    assert!(text(&first).contains("tick 0"), "{}", text(&first));
    fault.set_existing(fault::Fault::Blackhole);
    let cut_from = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match body.data().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("an HTTP/2 stream from a silent upstream was still open after 15 s");
    let e = end.expect("a cut-off HTTP/2 body ended as if whole");
    assert!(e.is_reset(), "{e}");
    assert!(
        cut_from.elapsed() >= Duration::from_millis(900),
        "{:?}",
        cut_from.elapsed()
    );

    // Both are counted as what they were.
    assert_eq!(
        kg.metric("keygate_upstream_failures_total{kind=\"body_timeout\"}")
            .await,
        Some(2.0)
    );
    let logs = kg.all_logs();
    assert!(logs.contains("upstream response cut off"), "{logs}");
}

/// Sets `[upstream]` options in a workspace's config.
#[tokio::test]
async fn an_http2_upstream_connection_that_stops_answering_is_replaced() {
    // keygate -> fault proxy -> the echo upstream over one multiplexed HTTP/2 connection,
    // which the proxy then blackholes: every byte acknowledged and dropped, so neither a reset
    // nor TCP's own timers ever say it is dead. Only keygate's PINGs can.
    let up = Upstream::start().await;
    let fault = fault::FaultProxy::start(up.addr.port());
    let ws = Workspace::new(&format!("http://127.0.0.1:{}", fault.port), "");
    ws.upstream_options("http2 = true\ntimeout = \"60s\"\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/a");
    let keyed = [("x-api-key", key.as_str())];
    assert_eq!(get(&url, &keyed).await.status, StatusCode::OK);
    assert_eq!(fault.accepted(), 1);

    fault.set_existing(fault::Fault::Blackhole);
    // Requests keep coming (each given up by its client after 3 s); one is served again once
    // keygate has replaced the connection: within a PING interval and its timeout (5 + 5 s),
    // far inside the upstream timeout (60 s) that would otherwise fail them one by one.
    let served = eventually(Duration::from_secs(25), || async {
        tokio::time::timeout(Duration::from_secs(3), get(&url, &keyed))
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    assert!(
        served.is_some(),
        "no request served 25 s after the HTTP/2 upstream connection went silent"
    );
    assert!(
        fault.accepted() >= 2,
        "no new upstream connection was dialed"
    );
}

#[tokio::test]
async fn upstream_connections_carry_keepalive_probes() {
    // keygate's own upstream connections (HTTP/1.1 clients' and HTTP/2 clients' links): the
    // kernel shows a keepalive timer on every socket that asked for probes.
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let keyed = [("x-api-key", key.as_str())];
    assert_eq!(get(&kg.url("/a"), &keyed).await.status, StatusCode::OK);
    let h2 = request_h2(
        http::Request::get(kg.url("/b"))
            .header("x-api-key", &key)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(h2.status, StatusCode::OK);
    let ss = std::process::Command::new("ss")
        .args(["-Htno", "state", "established"])
        .arg(format!("dst {}", up.addr))
        .output()
        .expect("ss (iproute2) runs");
    let sockets = text(&ss.stdout);
    assert!(!sockets.trim().is_empty(), "no connection to the upstream");
    for line in sockets.lines() {
        assert!(line.contains("timer:(keepalive"), "{line}");
    }
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(keygate::crypto::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake failed")
}

#[tokio::test]
async fn silent_connections_after_a_tls_handshake_free_their_slots_too() {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    let up = Upstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key_pem) = test_certificates(certs.path());
    let ws = Workspace::new(
        &up.url(),
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n\n[server]\nmax_connections = {CAP}\n\
             header_read_timeout = \"1s\"\nidle_timeout = \"75s\"\n",
            cert.display().to_string(),
            key_pem.display().to_string()
        ),
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let config = client_config(&ca);
    let mut silent: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for _ in 0..CAP {
        // The handshake completes; then nothing.
        silent.push(Box::new(tls_connect(kg.public, config.clone()).await));
    }
    let public = kg.public;
    let took = served_after_silent_clients(&kg, silent, async move {
        let stream = tls_connect(public, config).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("/")
            .header("host", "localhost")
            .header("x-api-key", &key)
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        sender.send_request(request).await.unwrap().status()
    })
    .await;
    eprintln!("TLS HTTP/1.1: served after {took:?} behind {CAP} silent connections");
    assert!(took < Duration::from_secs(6), "{took:?}");
}

/// Redis and the upstream both down for 10 s under steady traffic: every failure is counted
/// (metrics, and the log's summary lines), but the log itself stays a few dozen lines.
#[tokio::test]
async fn an_outage_logs_a_bounded_number_of_lines_with_counts() {
    use common::redis::{ClosedPort, RedisServer};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut redis = RedisServer::start();
    // Nothing listens there: every request that reaches the upstream fails.
    let dead_upstream_port = ClosedPort::new();
    let dead_upstream = dead_upstream_port.url();
    let ws = Workspace::redis(&dead_upstream, &redis.url(), "[log]\naccess = false\n");
    let (_, cached) = ws.create_key(&[]);
    let (_, uncached) = ws.create_key(&[]);
    let kg = ws.serve_with_env(&[("KEYGATE_LOG", "info")]);
    kg.first_poll().await;
    assert_eq!(
        get(&kg.url("/"), &[("x-api-key", &cached)]).await.status,
        StatusCode::BAD_GATEWAY
    );
    redis.kill();
    let first_line = kg.logs.lock().unwrap().len();

    let (bad_gateway, unavailable) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for i in 0..4 {
        let key = if i % 2 == 0 { &cached } else { &uncached }.clone();
        let (url, stop) = (kg.url("/"), stop.clone());
        let (bad_gateway, unavailable) = (bad_gateway.clone(), unavailable.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(&url, &[("x-api-key", &key)]).await.status {
                    StatusCode::BAD_GATEWAY => bad_gateway.fetch_add(1, Ordering::Relaxed),
                    StatusCode::SERVICE_UNAVAILABLE => unavailable.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected {other}"),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (bad_gateway, unavailable) = (
        bad_gateway.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
    );
    let during = || kg.logs.lock().unwrap()[first_line..].to_vec();
    let lines = during().len();

    // Every failure is in a line: logged in full, or counted in a summary (the last one is
    // written at the end of its period).
    let accounted = |kind: &str| {
        during()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|json| {
                if json["kind"] == kind {
                    json["count"].as_u64().unwrap()
                } else {
                    u64::from(
                        json["message"].as_str().unwrap().starts_with(kind)
                            && json["count"].is_null(),
                    )
                }
            })
            .sum::<u64>()
    };
    eventually(Duration::from_secs(8), || async {
        accounted("upstream request failed") == bad_gateway
            && accounted("key store lookup failed") == unavailable
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{bad_gateway} upstream failures, {} in the logs; {unavailable} lookups failed, {} \
             in the logs:\n{}",
            accounted("upstream request failed"),
            accounted("key store lookup failed"),
            during().join("\n")
        )
    });
    eprintln!(
        "10 s outage: {bad_gateway} requests got 502 and {unavailable} got 503; {lines} log \
         lines during it:\n{}",
        during()[..lines].join("\n")
    );
    assert!(
        bad_gateway > 200 && unavailable > 200,
        "too little traffic to tell"
    );
    assert!(lines <= 60, "{lines} log lines in a 10 s outage");
    // Metrics count every failure.
    assert_eq!(
        kg.metric("keygate_requests_total{class=\"5xx\",decision=\"upstream_unavailable\"}")
            .await,
        Some(bad_gateway as f64 + 1.0)
    );
    assert_eq!(
        kg.metric("keygate_requests_total{class=\"5xx\",decision=\"key_store_unavailable\"}")
            .await,
        Some(unavailable as f64)
    );
}

/// `keys create --count N` killed while it writes: the keys file is untouched, and the
/// temporary file it left is gone after the next write.
#[test]
fn a_killed_bulk_create_leaves_no_temporary_file_behind() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (_, before) = ws.create_key(&[]);
    let kept = std::fs::read(ws.keys_file()).unwrap();
    let temporary = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".keys.json.tmp-"))
            .collect()
    };
    let mut child = std::process::Command::new(BIN)
        .args(["keys", "create", "--name", "bulk", "--scopes", "*"])
        .args(["--count", "200000", "-c"])
        .arg(ws.config())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once its temporary file exists (it serializes 200,000 records into it).
    let started = Instant::now();
    while temporary(ws.dir.path()).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the write finished before it could be interrupted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no temporary file"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(temporary(ws.dir.path()).len(), 1);
    assert_eq!(
        std::fs::read(ws.keys_file()).unwrap(),
        kept,
        "the keys file changed"
    );
    // The next write cleans up.
    ws.create_key(&[]);
    assert_eq!(temporary(ws.dir.path()), Vec::<String>::new());
    let listed = ws.cli(&["keys", "list"]);
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(!before.is_empty());
}

/// An idle connection gives its buffers back after a second and takes them again when its
/// client sends: the next exchange, a large upload and its echo, is whole.
#[tokio::test]
async fn a_connection_that_shed_its_buffers_carries_the_next_exchange_whole() {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    const SIZE: usize = 3 * 1024 * 1024;
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let first = http::Request::get("/first")
        .header("host", "a")
        .header("x-api-key", &key)
        .body(PatternBody::new(0))
        .unwrap();
    let reply = sender.send_request(first).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.into_body().collect().await.unwrap();
    // Idle past the shedding (1 s) but not the idle timeout.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let second = http::Request::post("/second")
        .header("host", "a")
        .header("x-api-key", &key)
        .header("content-length", SIZE.to_string())
        .body(PatternBody::new(SIZE))
        .unwrap();
    let reply = sender.send_request(second).await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["body_len"], SIZE);
    assert_eq!(json["body_sha256"], PatternBody::sha256_hex(SIZE));
}

/// A client that stops sending its request body while the upstream waits for the rest gets
/// 408 `request_timeout` after the upstream timeout, over HTTP/1.1 (its connection then
/// closes) and HTTP/2, with an HTTP/1.1 upstream (keygate's own links) and an HTTP/2 one
/// (hyper's pool); the silence is the client's, so no upstream failure is counted (an alert on
/// upstream time-outs must not page anyone for a slow client). An upload that keeps coming
/// for longer than the upstream timeout is no time-out at all.
#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_and_the_upstream_is_not_blamed() {
    let up = Upstream::start().await;
    for http2 in [false, true] {
        let ws = Workspace::new(&up.url(), "");
        ws.upstream_options(&format!("timeout = \"1s\"\nhttp2 = {http2}\n"));
        let (_, key) = ws.create_key(&[]);
        let kg = ws.serve();
        let upstream = if http2 { "HTTP/2" } else { "HTTP/1.1" };

        let head = format!(
            "POST /v1/upload HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\
             content-length: 100\r\n\r\nthe first ten"
        );
        let answer = send_and_stall(kg.public, &head, Duration::from_secs(1)).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{upstream}: {answer}");
        assert!(
            answer.contains("\"request_timeout\""),
            "{upstream}: {answer}"
        );

        // HTTP/2: a body that sends one piece and then nothing, the stream left open.
        let pieces = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            hyper::body::Frame::data(bytes::Bytes::from_static(b"the first ten")),
        )])
        .chain(futures_util::stream::pending());
        let sent = Instant::now();
        let reply = request_h2(
            http::Request::post(kg.url("/v1/upload"))
                .header("x-api-key", &key)
                .body(http_body_util::StreamBody::new(pieces))
                .unwrap(),
        )
        .await;
        let waited = sent.elapsed();
        assert_eq!(
            reply.status,
            StatusCode::REQUEST_TIMEOUT,
            "{upstream}: {}",
            text(&reply.body)
        );
        assert_eq!(reply.error_code(), "request_timeout");
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{upstream}: answered after {waited:?}"
        );

        // Eight pieces 300 ms apart: 2.4 s of upload under a 1 s timeout, over both.
        for h2 in [false, true] {
            let started = Instant::now();
            let req = http::Request::post(kg.url("/v1/upload"))
                .header("x-api-key", &key)
                .body(http_body_util::StreamBody::new(slow_upload()))
                .unwrap();
            let reply = if h2 {
                request_h2(req).await
            } else {
                request(req).await
            };
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{upstream}, HTTP/2 client {h2}: {}",
                text(&reply.body)
            );
            assert_eq!(
                reply.json()["body_len"],
                80,
                "{upstream}, HTTP/2 client {h2}"
            );
            assert!(started.elapsed() >= Duration::from_millis(2400));
        }

        assert_eq!(
            kg.metric("keygate_upstream_failures_total{kind=\"timeout\"}")
                .await,
            Some(0.0),
            "{upstream}"
        );
        assert_eq!(
            kg.metric("keygate_requests_total{class=\"4xx\",decision=\"request_timeout\"}")
                .await,
            Some(2.0),
            "{upstream}"
        );
    }
}

/// A request body of eight 10-byte pieces, 300 ms apart.
fn slow_upload() -> std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
            > + Send,
    >,
> {
    Box::pin(futures_util::stream::unfold(0, |i| async move {
        if i == 8 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                b"0123456789",
            ))),
            i + 1,
        ))
    }))
}
