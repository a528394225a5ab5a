//! HTTP/2 clients in front of an HTTP/1.1 upstream: every stream goes over keygate's own
//! upstream connections (`forward::links`). A recording upstream written here (raw TCP, its
//! own HTTP/1.1 parsing) shows what arrives and how it is framed, counts its connections, and
//! answers each path its own way: sized, chunked, to the close, cut short, 204, HEAD, an early
//! hint, a broken head.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type ReqBody = Either<Full<Bytes>, PatternBody>;

/// One request as the upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    /// The request line.
    line: String,
    /// Header lines, names lowercased, sorted.
    headers: Vec<(String, String)>,
    /// `length` or `chunked` or `none`.
    framing: String,
    body_len: usize,
    body_sha: String,
}

#[derive(Default)]
struct Recorder {
    accepted: AtomicUsize,
    /// Connections that ended (keygate closed them, or the upstream did).
    ended: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i % PatternBody::CHUNK % 251) as u8)
        .collect()
}

fn sha_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn recording_upstream() -> (String, Arc<Recorder>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rec = Arc::new(Recorder::default());
    let shared = rec.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            let rec = shared.clone();
            tokio::spawn(async move {
                let _ = serve_connection(tcp, &rec).await;
                rec.ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (url, rec)
}

/// Reads until `buf` holds `n` bytes; false at EOF.
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    while buf.len() < n {
        let got = tcp.read(&mut chunk).await?;
        if got == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(true)
}

/// Reads until `buf` holds `needle`; its end, or None at EOF.
async fn fill_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> Option<usize> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
            return Some(at + needle.len());
        }
        let got = tcp.read(&mut chunk).await.ok()?;
        if got == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

async fn serve_connection(mut tcp: TcpStream, rec: &Recorder) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(end) = fill_until(&mut tcp, &mut buf, b"\r\n\r\n").await else {
            return Ok(());
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut lines);
        assert!(req.parse(&head).unwrap().is_complete());
        let method = req.method.unwrap().to_owned();
        let target = req.path.unwrap().to_owned();
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        headers.sort();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let (framing, body) = if let Some(len) = value("content-length") {
            let len: usize = len.parse().unwrap();
            if !fill(&mut tcp, &mut buf, len).await? {
                return Ok(());
            }
            ("length", buf.drain(..len).collect::<Vec<u8>>())
        } else if value("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let Some(end) = fill_until(&mut tcp, &mut buf, b"\r\n").await else {
                    return Ok(());
                };
                let size_line: Vec<u8> = buf.drain(..end).collect();
                let size = usize::from_str_radix(
                    std::str::from_utf8(&size_line[..size_line.len() - 2]).unwrap(),
                    16,
                )
                .unwrap();
                if !fill(&mut tcp, &mut buf, size + 2).await? {
                    return Ok(());
                }
                body.extend(buf.drain(..size));
                assert_eq!(buf.drain(..2).collect::<Vec<u8>>(), b"\r\n");
                if size == 0 {
                    break;
                }
            }
            ("chunked", body)
        } else {
            ("none", Vec::new())
        };
        rec.seen.lock().unwrap().push(Seen {
            line: format!("{method} {target}"),
            headers: headers.clone(),
            framing: framing.to_owned(),
            body_len: body.len(),
            body_sha: sha_hex(&body),
        });

        let path = target.split('?').next().unwrap().to_owned();
        let mut parts = path.trim_start_matches('/').split('/');
        let (what, n) = (
            parts.next().unwrap_or_default(),
            parts
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0),
        );
        let head_request = method == "HEAD";
        match what {
            "sized" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nX-Up: sized\r\n\r\n");
                tcp.write_all(head.as_bytes()).await?;
                if !head_request {
                    tcp.write_all(&pattern(n)).await?;
                }
            }
            "chunked" => {
                tcp.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
                )
                .await?;
                let body = pattern(n);
                for piece in body.chunks(1000) {
                    tcp.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .await?;
                    tcp.write_all(piece).await?;
                    tcp.write_all(b"\r\n").await?;
                }
                tcp.write_all(b"0\r\n\r\n").await?;
            }
            "close" => {
                tcp.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await?;
                tcp.write_all(&pattern(n)).await?;
                return Ok(());
            }
            "cut" => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                tcp.write_all(head.as_bytes()).await?;
                tcp.write_all(&pattern(n / 2)).await?;
                return Ok(());
            }
            "nocontent" => {
                tcp.write_all(b"HTTP/1.1 204 No Content\r\nX-Up: none\r\n\r\n")
                    .await?;
            }
            "early" => {
                tcp.write_all(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await?;
            }
            "broken" => {
                tcp.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok",
                )
                .await?;
            }
            _ => {
                let reply = format!(
                    "{{\"framing\":\"{framing}\",\"len\":{},\"sha\":\"{}\"}}",
                    body.len(),
                    sha_hex(&body)
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    reply.len()
                );
                tcp.write_all(head.as_bytes()).await?;
                if !head_request {
                    tcp.write_all(reply.as_bytes()).await?;
                }
            }
        }
    }
}

fn h2_client() -> Client<HttpConnector, ReqBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn h1_client() -> Client<HttpConnector, ReqBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn sized(body: &'static [u8]) -> ReqBody {
    Either::Left(Full::new(Bytes::from_static(body)))
}

fn empty() -> ReqBody {
    Either::Left(Full::new(Bytes::new()))
}

/// Status, headers and the whole body, or the error that ended it.
async fn call(
    client: &Client<HttpConnector, ReqBody>,
    req: Request<ReqBody>,
) -> (StatusCode, http::HeaderMap, Result<Bytes, String>) {
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
        .await
        .expect("body timed out")
        .map(|b| b.to_bytes())
        .map_err(|e| format!("{e:?}"));
    (parts.status, parts.headers, body)
}

fn req(method: Method, url: &str, key: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-api-key", key)
        .body(body)
        .unwrap()
}

fn json(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", text(body)))
}

#[tokio::test]
async fn many_concurrent_streams_reach_the_upstream_whole_both_ways() {
    let (upstream, rec) = recording_upstream().await;
    let ws = Workspace::new(&upstream, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let client = h2_client();

    let mut tasks = Vec::new();
    for i in 0..48usize {
        let client = client.clone();
        let key = key.clone();
        let base = kg.url("");
        tasks.push(tokio::spawn(async move {
            // Sizes around buffer edges, and two big ones.
            let n = match i {
                0 => 8_000_000,
                1 => 3_000_001,
                _ => 997 * i + i % 7,
            };
            match i % 4 {
                0 => {
                    let (status, headers, body) = call(
                        &client,
                        req(Method::GET, &format!("{base}/sized/{n}"), &key, empty()),
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK);
                    assert_eq!(headers["content-length"], n.to_string().as_str());
                    assert_eq!(headers["x-up"], "sized");
                    let body = body.unwrap();
                    assert_eq!(sha_hex(&body), PatternBody::sha256_hex(n), "sized {n}");
                }
                1 => {
                    let (status, headers, body) = call(
                        &client,
                        req(Method::GET, &format!("{base}/chunked/{n}"), &key, empty()),
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK);
                    for hop in ["transfer-encoding", "connection", "keep-alive", "x-hop"] {
                        assert!(!headers.contains_key(hop), "{hop} reached the client");
                    }
                    assert_eq!(sha_hex(&body.unwrap()), PatternBody::sha256_hex(n));
                }
                2 => {
                    // No length declared: chunked upstream.
                    let (status, _, body) = call(
                        &client,
                        req(
                            Method::POST,
                            &format!("{base}/upload"),
                            &key,
                            Either::Right(PatternBody::new(n)),
                        ),
                    )
                    .await;
                    assert_eq!(status, StatusCode::OK);
                    let got = json(&body.unwrap());
                    assert_eq!(got["framing"], "chunked");
                    assert_eq!(got["len"], n);
                    assert_eq!(got["sha"], PatternBody::sha256_hex(n));
                }
                _ => {
                    let data: &'static [u8] = Box::leak(pattern(n).into_boxed_slice());
                    let mut r = req(Method::PUT, &format!("{base}/upload"), &key, sized(data));
                    r.headers_mut()
                        .insert("content-length", n.to_string().parse().unwrap());
                    let (status, _, body) = call(&client, r).await;
                    assert_eq!(status, StatusCode::OK);
                    let got = json(&body.unwrap());
                    assert_eq!(got["framing"], "length");
                    assert_eq!(got["len"], n);
                    assert_eq!(got["sha"], PatternBody::sha256_hex(n));
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 48);
    for s in &seen {
        let names: Vec<&str> = s.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"x-api-key"), "{s:?}");
        assert!(
            names.contains(&"host") && names.contains(&"x-keygate-key-id"),
            "{s:?}"
        );
        if s.line.starts_with("GET") {
            assert_eq!(s.framing, "none", "{s:?}");
        }
    }
    // At most one upstream connection per stream in flight; each one was reused or is
    // parked, none left half-read.
    assert!(rec.accepted.load(Ordering::SeqCst) <= 48);
}

#[tokio::test]
async fn upstream_connections_are_reused_and_never_after_a_cut() {
    let (upstream, rec) = recording_upstream().await;
    let ws = Workspace::new(&upstream, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let client = h2_client();

    // One stream after another: one upstream connection carries them all, whatever the
    // framing, HEAD and 204 included.
    for (method, path) in [
        (Method::GET, "/sized/10"),
        (Method::GET, "/chunked/2500"),
        (Method::HEAD, "/sized/100"),
        (Method::GET, "/nocontent"),
        (Method::GET, "/early"),
        (Method::DELETE, "/thing"),
        (Method::GET, "/sized/0"),
    ] {
        let (status, headers, body) =
            call(&client, req(method.clone(), &kg.url(path), &key, empty())).await;
        let body = body.unwrap();
        match path {
            "/sized/100" => {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(headers["content-length"], "100", "HEAD says what GET would");
                assert!(body.is_empty());
            }
            "/nocontent" => {
                assert_eq!(status, StatusCode::NO_CONTENT);
                assert_eq!(headers["x-up"], "none");
                assert!(body.is_empty() && !headers.contains_key("content-length"));
            }
            "/early" => {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(&body[..], b"ok");
            }
            _ => assert_eq!(status, StatusCode::OK, "{method} {path}"),
        }
    }
    let upstream_log = || {
        kg.all_logs()
            .lines()
            .filter(|l| l.contains("upstream"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        rec.accepted.load(Ordering::SeqCst),
        1,
        "one connection reused; keygate said: {}",
        upstream_log()
    );
    assert_eq!(rec.ended.load(Ordering::SeqCst), 0, "{}", upstream_log());

    // The upstream cuts a body short: the client's stream fails (never a short 200 taken for
    // whole), and the next request gets a new connection. The stream is reset either after
    // the head reached the client or before: a reset drops the frames hyper had queued but
    // not yet written, the head among them when the cut was already read with it.
    let cut = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(req(Method::GET, &kg.url("/cut/200000"), &key, empty())),
    )
    .await
    .expect("request timed out");
    match cut {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::OK);
            let body =
                tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
                    .await
                    .expect("body timed out");
            assert!(body.is_err(), "a cut body must not end cleanly");
        }
        Err(e) => assert!(format!("{e:?}").contains("INTERNAL_ERROR"), "{e:?}"),
    }
    let (status, _, body) = call(
        &client,
        req(Method::GET, &kg.url("/sized/5"), &key, empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap().len(), 5);
    assert_eq!(rec.accepted.load(Ordering::SeqCst), 2);

    // A body delimited by the close: whole, and its connection is not parked.
    let (status, _, body) = call(
        &client,
        req(Method::GET, &kg.url("/close/70000"), &key, empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha_hex(&body.unwrap()), PatternBody::sha256_hex(70000));
    let (status, _, _) = call(
        &client,
        req(Method::GET, &kg.url("/sized/5"), &key, empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rec.accepted.load(Ordering::SeqCst), 3);

    // The client goes away in the middle of a big body: keygate closes that upstream
    // connection instead of parking it half-read.
    let ended = rec.ended.load(Ordering::SeqCst);
    let response = client
        .request(req(Method::GET, &kg.url("/sized/50000000"), &key, empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let closed = eventually(Duration::from_secs(10), || async {
        rec.ended.load(Ordering::SeqCst) > ended
    })
    .await;
    assert!(closed.is_some(), "the half-read connection was kept");
    let (status, _, body) = call(
        &client,
        req(Method::GET, &kg.url("/sized/7"), &key, empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap().len(), 7);
}

#[tokio::test]
async fn http2_and_http1_clients_requests_reach_the_upstream_identically() {
    let (upstream, rec) = recording_upstream().await;
    let ws = Workspace::new(&upstream, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/a/./b//c/%7Euser?q=1&r=%20");
    let mut views = Vec::new();
    for client in [h1_client(), h2_client()] {
        let before = rec.seen.lock().unwrap().len();
        for (method, body) in [
            (Method::GET, empty()),
            (Method::POST, sized(b"hello")),
            (Method::PATCH, Either::Right(PatternBody::new(3000))),
        ] {
            let mut r = Request::builder()
                .method(method)
                .uri(&url)
                .header("x-api-key", &key)
                .header("accept", "*/*")
                .header("x-custom", "one")
                .header("x-custom", "two")
                .header("authorization", "Basic dTpw")
                .header("x-keygate-owner", "forged")
                .header("x-forwarded-for", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6")
                .header("cookie", "a=1")
                .header("te", "trailers")
                .body(body)
                .unwrap();
            if r.method() == Method::PATCH {
                // Let the HTTP/1.1 client chunk it too.
                r.headers_mut()
                    .insert("transfer-encoding", "chunked".parse().unwrap());
            }
            if let Either::Left(full) = r.body() {
                use hyper::body::Body;
                let n = full.size_hint().exact().unwrap();
                r.headers_mut()
                    .insert("content-length", n.to_string().parse().unwrap());
            }
            let (status, _, _) = call(&client, r).await;
            assert_eq!(status, StatusCode::OK);
        }
        views.push(rec.seen.lock().unwrap()[before..].to_vec());
    }
    let (h1, h2) = (&views[0], &views[1]);
    assert_eq!(h1.len(), 3);
    for (a, b) in h1.iter().zip(h2) {
        assert_eq!(a.line, b.line);
        assert_eq!(a.headers, b.headers, "{}", a.line);
        assert_eq!(
            (&a.framing, a.body_len, &a.body_sha),
            (&b.framing, b.body_len, &b.body_sha),
            "{}",
            a.line
        );
    }
    assert_eq!(h2[0].line, "GET /v1/a/b/c/~user?q=1&r=%20");
    let names: Vec<&str> = h2[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    for gone in ["x-api-key", "te", "forwarded"] {
        assert!(!names.contains(&gone), "{gone}: {names:?}");
    }
    for (name, value) in &h2[0].headers {
        assert!(
            !value.contains("forged") && !value.contains("6.6.6.6"),
            "{name}: {value}"
        );
    }
    assert_eq!(h2[2].framing, "chunked");
    assert_eq!(h2[1].framing, "length");
}

#[tokio::test]
async fn broken_upstream_heads_and_oversized_bodies_are_refused_with_json() {
    let (upstream, _rec) = recording_upstream().await;
    let ws = Workspace::new(&upstream, "[server]\nmax_body_bytes = 4096\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let client = h2_client();

    let (status, headers, body) =
        call(&client, req(Method::GET, &kg.url("/broken"), &key, empty())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        json(&body.unwrap())["error"]["code"],
        "upstream_unavailable"
    );
    assert_eq!(
        kg.metric("keygate_upstream_failures_total{kind=\"protocol\"}")
            .await,
        Some(1.0)
    );

    // A body without a length, over the cap while it streams: 413, the client's fault.
    let (status, _, body) = call(
        &client,
        req(
            Method::POST,
            &kg.url("/upload"),
            &key,
            Either::Right(PatternBody::new(100_000)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&body.unwrap())["error"]["code"], "request_too_large");
    // Under the cap it goes through.
    let (status, _, body) = call(
        &client,
        req(
            Method::POST,
            &kg.url("/upload"),
            &key,
            Either::Right(PatternBody::new(4096)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body.unwrap())["len"], 4096);
}

/// The rate-limit headers arrive whole on every response of a long HTTP/2 connection, one
/// after another and many streams at once: the values that change every response
/// (`Remaining`, `Reset`, `RateLimit`) churn HPACK's dynamic table, the fixed ones
/// (`X-RateLimit-Limit`, `RateLimit-Policy`) are shared values formatted once per window.
#[tokio::test]
async fn rate_limit_headers_arrive_intact_over_a_long_http2_connection() {
    let (upstream, _rec) = recording_upstream().await;
    let ws = Workspace::new(
        &upstream,
        "[plans.web]\nper_hour = 1000000\n\n[limits]\ndefault_plan = \"web\"\n",
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let client = h2_client();
    let url = kg.url("/sized/10");

    let check = |headers: &http::HeaderMap| -> u64 {
        let get = |name: &str| {
            headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(get("x-ratelimit-limit"), "1000000");
        assert_eq!(get("ratelimit-policy"), "\"per_hour\";q=1000000;w=3600");
        let remaining: u64 = get("x-ratelimit-remaining").parse().unwrap();
        let reset: u64 = get("x-ratelimit-reset").parse().unwrap();
        assert!(reset > 0);
        let combined = get("ratelimit");
        let prefix = format!("\"per_hour\";r={remaining};t=");
        let t: u64 = combined
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{combined} does not start with {prefix}"))
            .parse()
            .unwrap();
        assert!(t <= 3600, "{combined}");
        for name in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "ratelimit-policy",
            "ratelimit",
        ] {
            assert_eq!(headers.get_all(name).iter().count(), 1, "{name}");
        }
        remaining
    };

    // One after another on one connection: each count one less than the last.
    let mut last = 1_000_000;
    for i in 0..150 {
        let (status, headers, body) = call(&client, req(Method::GET, &url, &key, empty())).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(body.unwrap().len(), 10);
        let remaining = check(&headers);
        assert_eq!(remaining, last - 1, "request {i}");
        last = remaining;
    }
    // Then many streams at once on the same connection: every count different.
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tokio::spawn(async move { call(&client, req(Method::GET, &url, &key, empty())).await })
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, headers, _) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(seen.insert(check(&headers)));
    }
    assert_eq!(seen.len(), 100);
    assert_eq!(*seen.last().unwrap(), last - 1);
    assert_eq!(*seen.first().unwrap(), last - 100);
}
