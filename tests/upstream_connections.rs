//! How keygate uses upstream connections: each HTTP/1.1 client connection gets one of its own,
//! kept across its requests and parked for the next client connection when it ends; one the
//! upstream closed is replaced without failing a request; a reload or a sandbox key never
//! reuses a connection to the wrong upstream. The echo upstream reports the TCP peer of each
//! request, which names keygate's upstream connection.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A client that keeps one connection alive across its requests.
fn keep_alive_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http()
}

async fn get_on(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    key: &str,
) -> (StatusCode, Bytes) {
    let req = Request::get(url)
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// The upstream connection a request came over, as the echo upstream saw it.
fn peer(body: &Bytes) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["peer"]
        .as_str()
        .expect("echo reports its peer")
        .to_owned()
}

#[tokio::test]
async fn a_client_connection_keeps_its_upstream_connection_and_parks_it_when_done() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(&upstream.url(), "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/things");

    // One keep-alive client connection: one upstream connection for all of its requests.
    let client = keep_alive_client();
    let mut seen = HashSet::new();
    for _ in 0..5 {
        let (status, body) = get_on(&client, &url, &key).await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(peer(&body));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let first = seen.into_iter().next().unwrap();

    // A second client connection at the same time gets an upstream connection of its own.
    let other = keep_alive_client();
    let (_, body) = get_on(&other, &url, &key).await;
    assert_ne!(peer(&body), first);
    drop(other);

    // A connection per request: each client connection ends before the next starts, so the
    // upstream connection parked by one is taken by the next (the first may still be in use
    // when its client's close has not been seen yet).
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut parked = HashSet::new();
    for _ in 0..10 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        parked.insert(peer(&reply.body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        parked.len() <= 2,
        "10 client connections, one after another, used {} upstream connections",
        parked.len()
    );
}

/// An HTTP/1.1 upstream that answers `ok` and then closes the connection after `linger`,
/// without saying so in the response (as servers with a short keep-alive timeout do).
async fn closing_upstream(linger: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn upstream_connections_closed_by_the_upstream_are_replaced_without_an_error() {
    let (url, accepted) = closing_upstream(Duration::from_millis(200)).await;
    let ws = Workspace::new(&url, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let target = kg.url("/v1/things");

    // The same client connection, each time after its upstream connection was closed while
    // idle (the client connection's task notices).
    let client = keep_alive_client();
    for round in 1..=3 {
        if round > 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (status, body) = get_on(&client, &target, &key).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "round {round}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);

    // The client leaves at once, so its upstream connection is parked while still open; the
    // upstream closes it there, and the next client connection must not be handed a dead one.
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = get(&target, &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert!(
        !kg.all_logs().contains("upstream request failed"),
        "{}",
        kg.all_logs()
    );
}

#[tokio::test]
async fn a_reload_that_moves_the_upstream_moves_open_client_connections_too() {
    let before = Upstream::start().await;
    let (after, _) = closing_upstream(Duration::from_secs(5)).await;
    let ws = Workspace::new(&before.url(), "[server]\nwatch_interval = \"0s\"\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let target = kg.url("/v1/things");

    let client = keep_alive_client();
    let (status, body) = get_on(&client, &target, &key).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"{"), "the echo upstream answers JSON");

    let config = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(ws.config(), config.replace(&before.url(), &after)).unwrap();
    kg.signal("HUP");
    // Same client connection: the next requests go to the new upstream.
    let moved = eventually(Duration::from_secs(5), || async {
        get_on(&client, &target, &key).await.1 == b"ok"[..]
    })
    .await;
    assert!(moved.is_some(), "requests still reach the old upstream");
}

#[tokio::test]
async fn live_and_sandbox_keys_on_one_client_connection_each_reach_their_upstream() {
    let production = Upstream::start().await;
    let sandbox = Upstream::start().await;
    let ws = Workspace::new(&production.url(), "");
    let (_, live) = ws.create_key(&["--env", "live"]);
    let (_, test) = ws.create_key(&["--env", "test"]);
    let kg = ws.serve_with_env(&[
        ("KEYGATE_UPSTREAM__SANDBOX_URL", sandbox.url().as_str()),
        ("KEYGATE_UPSTREAM__PRESERVE_HOST", "false"),
    ]);
    let target = kg.url("/v1/things");

    let client = keep_alive_client();
    for (key, upstream) in [(&live, &production), (&test, &sandbox)].repeat(3) {
        let (status, body) = get_on(&client, &target, key).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["headers"]["host"][0], upstream.addr.to_string());
    }
}

/// An upstream that answers `ok` at once, except on `/slow`, where it takes 10 s.
async fn sometimes_slow_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn the_upstream_timeout_holds_for_every_request_on_a_client_connection() {
    let url = sometimes_slow_upstream().await;
    let ws = Workspace::new(&url, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve_with_env(&[("KEYGATE_UPSTREAM__TIMEOUT", "300ms")]);

    // One client connection: a timed-out request gives up its upstream connection (it cannot
    // carry another request while the old answer is pending), not the client connection, and
    // the timer is armed again for each request after it fired.
    let client = keep_alive_client();
    for (path, want) in [
        ("/fast", StatusCode::OK),
        ("/slow", StatusCode::GATEWAY_TIMEOUT),
        ("/fast", StatusCode::OK),
        ("/slow", StatusCode::GATEWAY_TIMEOUT),
        ("/fast", StatusCode::OK),
        ("/fast", StatusCode::OK),
    ] {
        let (status, body) = get_on(&client, &kg.url(path), &key).await;
        assert_eq!(status, want, "{path}: {}", text(&body));
    }
}

#[tokio::test]
async fn an_idle_client_connection_lends_its_upstream_connection_to_others() {
    let upstream = Upstream::start().await;
    // The watchdog looks every half header timeout: every 500 ms here.
    let ws = Workspace::new(&upstream.url(), "[server]\nheader_read_timeout = \"1s\"\n");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/things");

    let idle = keep_alive_client();
    let (_, body) = get_on(&idle, &url, &key).await;
    let lent = peer(&body);
    // `idle` keeps its client connection open, without requests, past a watchdog tick: its
    // upstream connection is parked, and the next client connection gets it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let other = keep_alive_client();
    let (status, body) = get_on(&other, &url, &key).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(peer(&body), lent);
    // The idle client connection is still served (on an upstream connection of its own).
    let (status, _) = get_on(&idle, &url, &key).await;
    assert_eq!(status, StatusCode::OK);
}

/// Requests from many client connections at once, each with its own path and body: every
/// response must be the echo of its own request and reach its own client, whether the writes
/// of a turn go out in one io_uring submission (the default, where the kernel allows it) or
/// one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_reach_the_upstream_whole_with_or_without_batched_writes() {
    let upstream = Upstream::start().await;
    for batched in [true, false] {
        let extra = format!("[server]\nbatch_writes = {batched}\nworkers = 1\n");
        let ws = Workspace::new(&upstream.url(), &extra);
        let (_, key) = ws.create_key(&[]);
        let kg = ws.serve();
        let clients: Vec<_> = (0..64).map(|_| keep_alive_client()).collect();
        for round in 0..5 {
            let requests = clients.iter().enumerate().map(|(i, client)| {
                let url = kg.url(&format!("/v1/item-{i}-{round}"));
                let key = key.clone();
                let body = format!("body of {i} in round {round}").repeat(i + 1);
                async move {
                    let req = Request::post(&url)
                        .header("x-api-key", &key)
                        .body(Full::new(Bytes::from(body.clone())))
                        .unwrap();
                    let response =
                        tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await
                            .expect("request timed out")
                            .expect("request failed");
                    assert_eq!(response.status(), StatusCode::OK);
                    let echo = response.into_body().collect().await.unwrap().to_bytes();
                    let echo: serde_json::Value = serde_json::from_slice(&echo).unwrap();
                    assert_eq!(echo["path"], format!("/v1/item-{i}-{round}"));
                    assert_eq!(echo["body"], body);
                }
            });
            futures_util::future::join_all(requests).await;
        }
        let batches = kg.metric("keygate_write_batches_total").await.unwrap();
        let writes = kg.metric("keygate_batched_writes_total").await.unwrap();
        if !batched {
            assert_eq!((batches, writes), (0.0, 0.0));
        } else if writes > 0.0 {
            // 320 requests, 64 at a time: most turns carry several writes.
            assert_eq!(
                writes, 640.0,
                "every request and response head went in a batch"
            );
            assert!(
                batches < writes / 2.0,
                "{batches} batches for {writes} writes"
            );
        } else {
            eprintln!("io_uring is not available here: writes went one by one");
        }
    }
}
