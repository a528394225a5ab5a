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
                if read_request_head(&mut stream).await.is_none() {
                    return;
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

/// Many client connections at once, through keygate's HTTP/1.1, with writes batched through
/// io_uring, through Linux AIO (`batch_backend = "aio"`, as where io_uring is refused), and
/// not, on one worker thread and two: every response must reach the client that
/// asked for it, whole, and every request the upstream sees must be one client's, whole.
///
/// Two phases per configuration. First, 64 keep-alive clients send 5 rounds of requests in
/// step (the writes of a turn then go in few submissions, which the metrics show). Then raw
/// connections misuse the proxy in every way the batching must survive: pipelined requests,
/// clients that reset mid-request (their partial requests never complete upstream) and
/// mid-response, and slow readers of large responses. Each request carries an id and its
/// body's SHA-256 ([`Ledger`] checks both upstream); each response is derived from its id and
/// carries its own SHA-256, so a byte from anyone else's exchange fails a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_reach_the_upstream_whole_with_or_without_batched_writes() {
    for (config, (batched, backend, workers)) in [
        (true, "io_uring", 1),
        (true, "io_uring", 2),
        (true, "aio", 1),
        (true, "aio", 2),
        (false, "auto", 1),
        (false, "auto", 2),
    ]
    .into_iter()
    .enumerate()
    {
        let (url, ledger) = checking_upstream().await;
        let extra = format!(
            "[server]\nbatch_writes = {batched}\nbatch_backend = \"{backend}\"\nworkers = {workers}\n"
        );
        let ws = Workspace::new(&url, &extra);
        let (_, key) = ws.create_key(&[]);
        let kg = ws.serve();
        let what =
            format!("batch_writes = {batched}, batch_backend = {backend}, workers = {workers}");

        // Phase 1: in step.
        let clients: Vec<_> = (0..64).map(|_| keep_alive_client()).collect();
        let mut expected = Vec::new();
        for round in 0..5 {
            let requests = clients.iter().enumerate().map(|(i, client)| {
                let id = format!("p{config}-{i}-{round}");
                expected.push(id.clone());
                let exchange = Exchange::new(id, 20 * (i + 1), 64 + i);
                let (kg, key) = (&kg, key.as_str());
                async move { exchange.over(client, kg, key).await }
            });
            futures_util::future::join_all(requests).await;
        }
        drop(clients);
        ledger.lock().unwrap().each_once(&expected, &what);
        let batches = kg.metric("keygate_write_batches_total").await.unwrap();
        let writes = kg.metric("keygate_batched_writes_total").await.unwrap();
        let enabled = kg.metric("keygate_write_batching_enabled").await.unwrap();
        let backend_on = |name: &str| {
            let sample = format!("keygate_write_batching_backend{{backend=\"{name}\"}}");
            let kg = &kg;
            async move { kg.metric(&sample).await.unwrap() }
        };
        let (uring_on, aio_on) = (backend_on("io_uring").await, backend_on("aio").await);
        if !batched {
            assert_eq!((batches, writes, enabled), (0.0, 0.0, 0.0), "{what}");
            assert_eq!((uring_on, aio_on), (0.0, 0.0), "{what}");
        } else if enabled == 1.0 {
            let want = if backend == "aio" {
                (0.0, 1.0)
            } else {
                (1.0, 0.0)
            };
            assert_eq!(
                (uring_on, aio_on),
                want,
                "{what}: the backend chosen is the one at work"
            );
            // 320 requests, 64 at a time: most turns carry several writes.
            assert_eq!(
                writes, 640.0,
                "{what}: every request and response head went in a batch"
            );
            assert!(
                batches < writes / 2.0,
                "{what}: {batches} batches for {writes} writes"
            );
        } else {
            assert_eq!((batches, writes), (0.0, 0.0), "{what}");
            eprintln!("{backend} is not available here: writes went one by one");
        }

        // Phase 2: HTTP/2, eight streams at a time on each of eight connections, some of the
        // responses larger than a batched burst: hyper's flushes join the batches, the large
        // bodies go the usual way, and every byte reaches its own stream.
        let h2_clients: Vec<_> = (0..8)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build_http()
            })
            .collect();
        let mut h2_expected = Vec::new();
        for round in 0..3 {
            let mut requests = Vec::new();
            for (c, client) in h2_clients.iter().enumerate() {
                for s in 0..8 {
                    let id = format!("h{config}-{c}-{s}-{round}");
                    h2_expected.push(id.clone());
                    let reply = if s == 7 { 40_000 + c } else { 64 + c * 8 + s };
                    let exchange = Exchange::new(id, 16 * (s + 1), reply);
                    let (kg, key) = (&kg, key.as_str());
                    requests.push(async move { exchange.over(client, kg, key).await });
                }
            }
            futures_util::future::join_all(requests).await;
        }
        drop(h2_clients);
        ledger.lock().unwrap().each_once(&h2_expected, &what);
        if batched && enabled == 1.0 {
            // The requests carry bodies, whose heads go to the upstream the usual way: what
            // is batched here is the responses, at least one flush per connection per round.
            let after = kg.metric("keygate_batched_writes_total").await.unwrap();
            let h2_writes = after - writes;
            eprintln!("{what}: {h2_writes} batched writes for 192 HTTP/2 requests");
            assert!(
                h2_writes >= 24.0,
                "{what}: {h2_writes} batched writes for 8 HTTP/2 connections over 3 rounds"
            );
        }
        let writes = kg.metric("keygate_batched_writes_total").await.unwrap();

        // Phase 3: misuse.
        let scripts = (0..16).map(|conn| {
            let (addr, key) = (kg.public, key.clone());
            tokio::spawn(
                async move { misuse(addr, &key, &format!("m{config}-{conn}"), conn).await },
            )
        });
        let mut whole = Vec::new();
        let mut never = Vec::new();
        for script in futures_util::future::join_all(scripts).await {
            let (w, n) = script.unwrap();
            whole.extend(w);
            never.extend(n);
        }
        {
            let ledger = ledger.lock().unwrap();
            ledger.each_once(&whole, &what);
            for id in &never {
                assert!(
                    !ledger.whole.contains_key(id),
                    "{what}: {id} was reset mid-request, yet the upstream saw it whole"
                );
            }
            assert!(
                whole.len() > 100 && never.len() > 10,
                "{what}: {} whole, {} reset mid-request",
                whole.len(),
                never.len()
            );
        }
        if batched && enabled == 1.0 {
            let after = kg.metric("keygate_batched_writes_total").await.unwrap();
            assert!(after > writes, "{what}: the misuse phase was not batched");
            assert_eq!(
                kg.metric("keygate_write_batching_enabled").await,
                Some(1.0),
                "{what}: no ring failed"
            );
        }
    }
}

/// What the checking upstream saw.
#[derive(Default)]
struct Ledger {
    /// Requests received whole and correct, by id.
    whole: std::collections::HashMap<String, usize>,
    /// Anything else that was not a connection closing mid-request.
    violations: Vec<String>,
}

impl Ledger {
    /// No violation, and each of `ids` reached the upstream exactly once.
    fn each_once(&self, ids: &[String], what: &str) {
        assert!(self.violations.is_empty(), "{what}: {:?}", self.violations);
        for id in ids {
            assert_eq!(
                self.whole.get(id),
                Some(&1),
                "{what}: request {id} at the upstream"
            );
        }
    }
}

/// An upstream that checks every request: the path names its `x-id`, the body hashes to its
/// `x-sum`, and nothing comes between requests. It answers with `x-reply` bytes derived from
/// the id, their SHA-256 in `x-sum`.
async fn checking_upstream() -> (String, Arc<std::sync::Mutex<Ledger>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let ledger = Arc::new(std::sync::Mutex::new(Ledger::default()));
    let kept = ledger.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(check_requests(stream, kept.clone()));
        }
    });
    (url, ledger)
}

async fn check_requests(mut stream: tokio::net::TcpStream, ledger: Arc<std::sync::Mutex<Ledger>>) {
    let violation = |why: String| ledger.lock().unwrap().violations.push(why);
    let mut buf = Vec::new();
    loop {
        let (len, path, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_ascii_lowercase(), value)
                        })
                        .collect();
                    break (len, req.path.unwrap_or_default().to_owned(), headers);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    let start = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
                    return violation(format!("not a request ({e}): {start:?}"));
                }
            }
            if !read_more(&mut stream, &mut buf).await {
                return; // closed between requests or mid-head
            }
        };
        buf.drain(..len);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (id, sum) = (header("x-id"), header("x-sum"));
        let length: usize = header("content-length").parse().unwrap_or(0);
        let reply: usize = header("x-reply").parse().unwrap_or(0);
        while buf.len() < length {
            if !read_more(&mut stream, &mut buf).await {
                return; // closed mid-body: the client went away
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        if path != format!("/v1/r/{id}") {
            return violation(format!("{id}: path {path}"));
        }
        if sha256_hex(&body) != sum {
            return violation(format!(
                "{id}: a body that is not its own ({} bytes)",
                body.len()
            ));
        }
        *ledger.lock().unwrap().whole.entry(id.clone()).or_default() += 1;
        let body = pattern(&id, reply);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {reply}\r\nx-id: {id}\r\nx-sum: {}\r\n\r\n",
            sha256_hex(&body)
        );
        let response = [head.as_bytes(), &body].concat();
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes that name `id` throughout.
fn pattern(id: &str, len: usize) -> Vec<u8> {
    format!("{id}.").bytes().cycle().take(len).collect()
}

/// One request and the response it must get.
struct Exchange {
    id: String,
    body: Vec<u8>,
    reply: usize,
}

impl Exchange {
    fn new(id: String, body: usize, reply: usize) -> Self {
        let body = pattern(&id, body);
        Self { id, body, reply }
    }

    fn path(&self) -> String {
        format!("/v1/r/{}", self.id)
    }

    fn body(&self) -> Vec<u8> {
        self.body.clone()
    }

    fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("x-id", self.id.clone()),
            ("x-sum", sha256_hex(&self.body)),
            ("x-reply", self.reply.to_string()),
        ]
    }

    /// The request as raw HTTP/1.1.
    fn wire(&self, key: &str) -> Vec<u8> {
        let mut head = format!(
            "POST {} HTTP/1.1\r\nhost: keygate\r\nx-api-key: {key}\r\ncontent-length: {}\r\n",
            self.path(),
            self.body.len()
        );
        for (name, value) in self.headers() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        [head.as_bytes(), &self.body].concat()
    }

    /// Sends this request on `client` and checks that the response is its own.
    async fn over<C>(&self, client: &Client<C, Full<Bytes>>, kg: &Keygate, key: &str)
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let mut req = Request::post(kg.url(&self.path())).header("x-api-key", key);
        for (name, value) in self.headers() {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(self.body()))).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name| {
            response.headers()[name]
                .to_str()
                .unwrap_or_default()
                .to_owned()
        };
        let (id, sum) = (header("x-id"), header("x-sum"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        self.check_response(&id, &sum, &body).unwrap();
    }

    /// The response is this request's: its id, its length, its own bytes.
    fn check_response(&self, id: &str, sum: &str, body: &[u8]) -> Result<(), String> {
        if id != self.id {
            return Err(format!("{}: the response of {id}", self.id));
        }
        if body != pattern(&self.id, self.reply).as_slice() || sum != sha256_hex(body) {
            return Err(format!("{}: a response body that is not its own", self.id));
        }
        Ok(())
    }
}

/// One raw client connection to keygate, reconnecting after each reset.
struct Conn {
    addr: std::net::SocketAddr,
    stream: tokio::net::TcpStream,
    /// Read and not used yet (the next pipelined response).
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self {
            addr,
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Resets the connection (RST, not FIN) and opens a new one.
    async fn reset(&mut self) {
        self.stream.set_zero_linger().unwrap();
        *self = Self::open(self.addr).await;
    }

    async fn fill(&mut self, at_most: usize) {
        let mut chunk = vec![0u8; at_most];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("keygate did not answer")
            .unwrap();
        assert!(n > 0, "keygate closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads the next response head: (status, x-id, x-sum, content-length).
    async fn head(&mut self) -> (u16, String, String, usize) {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut res = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(len) = res.parse(&self.buf).unwrap() {
                let header = |name: &str| {
                    res.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                        .unwrap_or_default()
                };
                let head = (
                    res.code.unwrap(),
                    header("x-id"),
                    header("x-sum"),
                    header("content-length").parse().unwrap(),
                );
                self.buf.drain(..len);
                return head;
            }
            self.fill(16 * 1024).await;
        }
    }

    /// Reads the next response and checks it is `exchange`'s; a slow reader takes it 4 KiB at
    /// a time with a pause between.
    async fn response(&mut self, exchange: &Exchange, slow: bool) {
        let (status, id, sum, length) = self.head().await;
        assert_eq!(status, 200, "{}", exchange.id);
        while self.buf.len() < length {
            if slow {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            self.fill(if slow { 4096 } else { 64 * 1024 }).await;
        }
        let body: Vec<u8> = self.buf.drain(..length).collect();
        exchange.check_response(&id, &sum, &body).unwrap();
    }
}

/// One raw connection's script: every kind of step, in an order that differs per connection.
/// Returns the ids the upstream must have seen whole once, and those it must never see whole.
async fn misuse(
    addr: std::net::SocketAddr,
    key: &str,
    prefix: &str,
    conn: usize,
) -> (Vec<String>, Vec<String>) {
    let mut c = Conn::open(addr).await;
    let (mut whole, mut never) = (Vec::new(), Vec::new());
    for step in 0..12 {
        let id = |n: usize| format!("{prefix}-{step}-{n}");
        match (conn + step) % 6 {
            // One request, one response.
            0 => {
                let x = Exchange::new(id(0), 100 + 37 * step, 300 + 11 * conn);
                c.send(&x.wire(key)).await;
                c.response(&x, false).await;
                whole.push(x.id);
            }
            // Three requests in one write; their responses in order.
            1 => {
                let xs: Vec<_> = (0..3)
                    .map(|n| Exchange::new(id(n), 50 * n + conn, 200 + 100 * n))
                    .collect();
                let wire: Vec<u8> = xs.iter().flat_map(|x| x.wire(key)).collect();
                c.send(&wire).await;
                for x in xs {
                    c.response(&x, false).await;
                    whole.push(x.id);
                }
            }
            // The head and half the body, then a reset.
            2 => {
                let x = Exchange::new(id(0), 8000 + conn, 100);
                let wire = x.wire(key);
                c.send(&wire[..wire.len() - 4000]).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
                c.reset().await;
                never.push(x.id);
            }
            // A large response, reset after its first bytes.
            3 => {
                let x = Exchange::new(id(0), 10, 1 << 20);
                c.send(&x.wire(key)).await;
                c.fill(1024).await;
                c.reset().await;
                whole.push(x.id);
            }
            // A slow reader of a large response.
            4 => {
                let x = Exchange::new(id(0), 10, 128 * 1024 + conn);
                c.send(&x.wire(key)).await;
                c.response(&x, true).await;
                whole.push(x.id);
            }
            // A large request body.
            _ => {
                let x = Exchange::new(id(0), 200 * 1024 + conn, 50);
                c.send(&x.wire(key)).await;
                c.response(&x, false).await;
                whole.push(x.id);
            }
        }
    }
    (whole, never)
}
