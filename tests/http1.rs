//! keygate's own HTTP/1.1 on the wire, against the real binary with raw TCP clients: framing
//! that could smuggle a request is refused before the upstream, chunked bodies both ways,
//! pipelining, HTTP/1.0 clients, `Expect: 100-continue`, interim responses, `HEAD`, an
//! upstream that answers before an upload ends, and the one retry a reused upstream
//! connection may take.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A response as a raw client reads it.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// One client connection, read response by response.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn open(kg: &Keygate) -> Self {
        Self {
            tcp: TcpStream::connect(kg.public).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer within 10 s; read so far: {}", text(&self.buf)),
        }
    }

    /// The next response; `head_request` for the answer to a HEAD.
    async fn response(&mut self, head_request: bool) -> Raw {
        let (status, headers, len) = loop {
            let mut lines = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut lines);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), text(h.value)))
                    .collect::<Vec<_>>();
                break (resp.code.unwrap(), headers, len);
            }
            assert!(self.fill().await, "closed in a head: {}", text(&self.buf));
        };
        self.buf.drain(..len);
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return raw;
        }
        if let Some(n) = raw.header("content-length") {
            let n: usize = n.parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill().await, "closed in a body");
            }
            raw.body = self.buf.drain(..n).collect();
        } else if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "closed in a chunk line");
                };
                let size = usize::from_str_radix(&text(&self.buf[..line_end]), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "closed in a chunk");
                }
                raw.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                assert_eq!(&self.buf[line_end + 2 + size..][..2], b"\r\n");
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill().await {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    /// Whether keygate closes the connection (with nothing more to say) within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(limit, self.tcp.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

const FORWARDED: &str = "keygate_upstream_duration_seconds_count";

async fn echo_setup(extra: &str) -> (Upstream, Workspace, Keygate, String) {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), extra);
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    (up, ws, kg, key)
}

#[tokio::test]
async fn framing_that_could_smuggle_a_request_is_refused_before_the_upstream() {
    let (_up, _ws, kg, key) = echo_setup("").await;
    let cases = smuggling_cases(&key);
    let before = kg.metric(FORWARDED).await.unwrap();
    for raw in &cases {
        let mut wire = Wire::open(&kg).await;
        wire.send(raw.as_bytes()).await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status, 400, "{raw:?}: {reply:?}");
        assert_eq!(reply.json()["error"]["code"], "invalid_request", "{raw:?}");
        assert_eq!(reply.header("connection"), Some("close"), "{raw:?}");
        assert!(!text(&reply.body).contains(&key), "the key was echoed");
        assert!(wire.closed_within(Duration::from_secs(5)).await, "{raw:?}");
    }
    assert_eq!(
        kg.metric(FORWARDED).await.unwrap(),
        before,
        "something was forwarded"
    );
}

/// With an HTTP/2 upstream, HTTP/1.1 clients are parsed by hyper, and held to the same framing
/// rules through `h1::head::FramingRules`. The one reading that differs: hyper drops a
/// `Content-Length` beside `Transfer-Encoding: chunked` before keygate sees the head, reads
/// the body as chunked and closes the connection after the exchange, so nothing can follow
/// the ambiguous body on that connection.
#[tokio::test]
async fn http1_clients_served_by_hyper_meet_the_same_framing_rules() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve_with_env(&[("KEYGATE_UPSTREAM__HTTP2", "true")]);
    let mut wire = Wire::open(&kg).await;
    wire.send(format!("GET /ok HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["version"], "HTTP/2.0", "{reply:?}");

    let before = kg
        .metric("keygate_upstream_duration_seconds_count")
        .await
        .unwrap();
    for raw in smuggling_cases(&key) {
        let mut wire = Wire::open(&kg).await;
        wire.send(raw.as_bytes()).await;
        let reply = wire.response(false).await;
        let cl_te = raw.contains("Content-Length: 5\r\nTransfer-Encoding: chunked");
        if cl_te {
            assert!(
                reply.status == 200 || reply.status == 400,
                "{raw:?}: {reply:?}"
            );
        } else {
            assert_eq!(reply.status, 400, "{raw:?}: {reply:?}\n{}", kg.all_logs());
            if reply.header("content-type") == Some("application/json") {
                assert_eq!(reply.json()["error"]["code"], "invalid_request", "{raw:?}");
            }
        }
        assert!(!text(&reply.body).contains(&key), "the key was echoed");
        assert!(wire.closed_within(Duration::from_secs(5)).await, "{raw:?}");
    }
    // Only requests whose head passed went upstream: the CL+TE case (as an empty chunked
    // body) and the two whose chunk syntax breaks after the head, whose HTTP/2 streams the
    // upstream saw reset, never complete.
    let forwarded = kg
        .metric("keygate_upstream_duration_seconds_count")
        .await
        .unwrap()
        - before;
    assert!(forwarded <= 3.0, "{forwarded} forwarded");
}

/// Requests whose framing two parsers could read differently.
fn smuggling_cases(key: &str) -> Vec<String> {
    let k = format!("x-api-key: {key}\r\n");
    vec![
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        ),
        format!("POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Content-Length: +5\r\n\r\nhello"),
        format!("POST /v1/x HTTP/1.0\r\n{k}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
        ),
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: a\r\n{k}Transfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n"
        ),
        format!("GET /v1/x HTTP/1.1\r\n{k}\r\n"),
        format!("GET /v1/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n{k}\r\n"),
        format!("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n{k}\r\n"),
    ]
}

#[tokio::test]
async fn chunked_uploads_arrive_whole_and_pipelined_requests_are_answered_in_order() {
    let (_up, _ws, kg, key) = echo_setup("").await;
    let mut wire = Wire::open(&kg).await;
    // A chunked upload with an extension and a trailer, and two more requests behind it in
    // the same write.
    wire.send(
        format!(
            "POST /v1/upload HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n\
             0\r\nX-Trailer: t\r\n\r\n\
             GET /v1/second HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n\
             GET /v1/third HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let upload = wire.response(false).await;
    assert_eq!(upload.status, 200, "{upload:?}");
    let seen = upload.json();
    assert_eq!(seen["body"], "hello world");
    assert_eq!(seen["headers"]["transfer-encoding"][0], "chunked");
    assert!(seen["headers"].get("x-trailer").is_none(), "{seen}");
    for path in ["/v1/second", "/v1/third"] {
        let reply = wire.response(false).await;
        assert_eq!(reply.json()["path"], path);
    }
}

#[tokio::test]
async fn expect_continue_is_answered_for_admitted_requests_only() {
    let (_up, _ws, kg, key) = echo_setup("").await;
    let mut wire = Wire::open(&kg).await;
    wire.send(
        format!(
            "PUT /v1/doc HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\
             Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let go_on = wire.response(false).await;
    assert_eq!(go_on.status, 100);
    wire.send(b"hello").await;
    let done = wire.response(false).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.json()["body"], "hello");
    assert!(done.json()["headers"].get("expect").is_none());

    // Refused: no 100, the answer at once, and the connection closes (whether the client
    // would send the body anyway cannot be known).
    let mut wire = Wire::open(&kg).await;
    wire.send(
        b"PUT /v1/doc HTTP/1.1\r\nHost: a\r\nx-api-key: kg_sk_live_nope\r\n\
          Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    let refused = wire.response(false).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn refused_requests_with_small_bodies_keep_the_connection_open() {
    let (_up, _ws, kg, key) = echo_setup("").await;
    let mut wire = Wire::open(&kg).await;
    // The body arrives after the refusal: it is read and dropped, not taken for a request.
    wire.send(b"POST /v1/x HTTP/1.1\r\nHost: a\r\nx-api-key: kg_sk_live_nope\r\nContent-Length: 300\r\n\r\n")
        .await;
    let refused = wire.response(false).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("connection"), None);
    wire.send(&[b'z'; 300]).await;
    wire.send(format!("GET /v1/after HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await;
    let after = wire.response(false).await;
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.json()["path"], "/v1/after");
}

#[tokio::test]
async fn http10_clients_and_absolute_targets() {
    let (_up, _ws, kg, key) = echo_setup("").await;
    // HTTP/1.0 closes unless asked to keep alive.
    let mut wire = Wire::open(&kg).await;
    wire.send(format!("GET /v1/old HTTP/1.0\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await;
    let reply = wire.response(false).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(wire.closed_within(Duration::from_secs(5)).await);

    let mut wire = Wire::open(&kg).await;
    for _ in 0..2 {
        wire.send(
            format!("GET /v1/old HTTP/1.0\r\nConnection: keep-alive\r\nx-api-key: {key}\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let reply = wire.response(false).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("connection"), Some("keep-alive"));
    }

    // An absolute-form target names the host; its Host header is ignored.
    let mut wire = Wire::open(&kg).await;
    wire.send(
        format!(
            "GET http://api.example:81/v1/abs?q=1 HTTP/1.1\r\nHost: ignored\r\nx-api-key: {key}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let seen = wire.response(false).await.json();
    assert_eq!(seen["path"], "/v1/abs");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(seen["headers"]["host"][0], "api.example:81");
}

/// Requests as a scripted upstream received them: (connection number, request head).
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// An upstream that answers by path (see the match below) and records what it got. On each
/// connection its second request is met with a close and no answer, as by a server whose
/// idle timeout fired just as the request came.
async fn scripted_upstream() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            conn += 1;
            let (log, id) = (log.clone(), conn);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for nth in 1.. {
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = text(&buf[..end]);
                    buf.drain(..end);
                    log.lock().unwrap().push((id, head.clone()));
                    let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    if path.starts_with("/retry") && nth == 2 {
                        return;
                    }
                    let answer: &[u8] = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                        "/hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                        "/upload" => b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        "/until-close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
                        "/broken" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    if tcp.write_all(answer).await.is_err() {
                        return;
                    }
                    if path == "/upload" || path == "/until-close" {
                        return;
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn upstream_framing_reaches_each_client_in_a_form_it_reads() {
    let (url, _seen) = scripted_upstream().await;
    let ws = Workspace::new(&url, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let get = |path: &str, version: &str, extra: &str| {
        format!("GET {path} {version}\r\nHost: a\r\nx-api-key: {key}\r\n{extra}\r\n").into_bytes()
    };

    // HTTP/1.1: chunked stays chunked, close-delimited becomes chunked, and the client
    // connection carries on after both.
    let mut wire = Wire::open(&kg).await;
    wire.send(&get("/chunked", "HTTP/1.1", "")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.body, b"hello");
    wire.send(&get("/until-close", "HTTP/1.1", "")).await;
    let reply = wire.response(false).await;
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    assert_eq!(reply.body, b"until close");
    // Interim responses reach HTTP/1.1 clients ahead of the final one.
    wire.send(&get("/hints", "HTTP/1.1", "")).await;
    let hint = wire.response(false).await;
    assert_eq!((hint.status, hint.header("link")), (103, Some("</s.css>")));
    assert_eq!(wire.response(false).await.body, b"ok");
    // A HEAD says how long the body would be, and sends none.
    wire.send(format!("HEAD /head HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await;
    let head = wire.response(true).await;
    assert_eq!(head.header("content-length"), Some("10"));
    wire.send(&get("/plain", "HTTP/1.1", "")).await;
    assert_eq!(wire.response(false).await.body, b"ok");

    // A response whose chunking is broken before anything reached the client: a 502.
    wire.send(&get("/broken", "HTTP/1.1", "")).await;
    let broken = wire.response(false).await;
    assert_eq!(broken.status, 502, "{broken:?}");
    assert_eq!(broken.json()["error"]["code"], "upstream_unavailable");

    // HTTP/1.0 knows no chunks: the body comes raw and the close ends it.
    let mut wire = Wire::open(&kg).await;
    wire.send(&get("/chunked", "HTTP/1.0", "Connection: keep-alive\r\n"))
        .await;
    let reply = wire.response(false).await;
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(reply.header("connection"), Some("close"));
    assert_eq!(reply.body, b"hello");
}

#[tokio::test]
async fn an_upstream_that_refuses_an_upload_early_is_heard() {
    let (url, _seen) = scripted_upstream().await;
    let ws = Workspace::new(&url, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let tcp = TcpStream::connect(kg.public).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nContent-Length: 104857600\r\n\r\n"
    );
    // 100 MB announced, sent slowly; the upstream answers after the head.
    let sender = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await.unwrap();
        let piece = vec![b'u'; 64 * 1024];
        for _ in 0..1600 {
            if write.write_all(&piece).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut chunk))
            .await
            .expect("no answer while the upload ran")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&chunk[..n]);
    }
    let head = text(&got);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    sender.abort();
}

#[tokio::test]
async fn a_reused_upstream_connection_closed_under_a_request_is_retried_only_if_safe() {
    let (url, seen) = scripted_upstream().await;
    let ws = Workspace::new(&url, "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut wire = Wire::open(&kg).await;
    let request = |method: &str, path: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nContent-Length: 2\r\n\r\nhi"
        )
        .into_bytes()
    };
    // The first request opens upstream connection 1. The second meets its close and goes
    // again on connection 2: a GET may be sent twice.
    wire.send(&request("GET", "/retry/a")).await;
    assert_eq!(wire.response(false).await.status, 200);
    wire.send(&request("GET", "/retry/b")).await;
    assert_eq!(wire.response(false).await.status, 200);
    // A POST that meets the same close may have been acted on: 502, not a second send.
    wire.send(&request("POST", "/retry/c")).await;
    let refused = wire.response(false).await;
    assert_eq!(refused.status, 502);
    assert_eq!(refused.json()["error"]["code"], "upstream_unavailable");

    let seen = seen.lock().unwrap().clone();
    let sent: Vec<(usize, &str)> = seen
        .iter()
        .map(|(conn, head)| (*conn, head.split(' ').nth(1).unwrap()))
        .collect();
    assert_eq!(
        sent,
        [
            (1, "/retry/a"),
            (1, "/retry/b"),
            (2, "/retry/b"),
            (2, "/retry/c")
        ],
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_the_idle_timeout() {
    let upstream = HugeUpstream::start().await;
    let ws = Workspace::new(
        &upstream.url,
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\n",
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let mut wire = Wire::open(&kg).await;
    wire.send(format!("GET /huge HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n").as_bytes())
        .await;
    // Read the head and a little of the body, then read nothing more.
    assert!(wire.fill().await);
    assert!(
        text(&wire.buf).starts_with("HTTP/1.1 200"),
        "{}",
        text(&wire.buf)
    );
    let stopped = std::time::Instant::now();
    let after = upstream
        .let_go_after(stopped)
        .await
        .expect("keygate still holds a client that reads nothing");
    assert!(
        after >= Duration::from_millis(900),
        "let go too early: {after:?}"
    );
    drop(wire);
}

#[tokio::test]
async fn odd_requests_reach_the_upstream_as_authorized_and_nothing_more() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        "[auth]\nunmatched = \"allow\"\n\n[[route]]\npath = \"/admin/**\"\nscopes = [\"admin\"]\n",
    );
    let (_, key) = ws.create_key(&[]);
    let (_, reader) = ws.create_key(&["--scopes", "content:read"]);
    let kg = ws.serve();
    let send = |head: String| {
        let kg = &kg;
        async move {
            let mut wire = Wire::open(kg).await;
            wire.send(head.as_bytes()).await;
            wire.response(false).await
        }
    };
    // A fragment is cut off before the rules see the path, not after.
    let admin = send(format!(
        "GET /admin#x HTTP/1.1\r\nHost: a\r\nx-api-key: {reader}\r\n\r\n"
    ))
    .await;
    assert_eq!(admin.status, 403, "{admin:?}");
    let seen = send(format!(
        "GET /v1/x?q=1#frag HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\n\r\n"
    ))
    .await
    .json();
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/v1/x"), Some("q=1"))
    );

    // An empty header value stays a header line; `Content-Length: 0` stays; an upgrade to
    // anything but WebSocket is dropped (keygate would splice blindly after a 101); a
    // client's `Forwarded`, `X-Real-IP` and `_` spellings of keygate's headers go.
    let seen = send(format!(
        "POST /v1/x HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nX-Empty:\r\nContent-Length: 0\r\n\
         Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
         X_Keygate_Owner: forged\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n"
    ))
    .await
    .json();
    let headers = seen["headers"].as_object().unwrap();
    assert_eq!(headers["x-empty"][0], "", "{seen}");
    assert_eq!(headers["content-length"][0], "0", "{seen}");
    for gone in [
        "upgrade",
        "http2-settings",
        "connection",
        "x_keygate_owner",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the upstream: {seen}"
        );
    }
    assert_eq!(headers["x-keygate-owner"][0], "default");
}

/// An HTTP/2 client with prior knowledge whose preface arrives in pieces is still served as
/// HTTP/2, not refused as a malformed HTTP/1.1 request.
#[tokio::test]
async fn an_http2_preface_in_pieces_is_waited_for() {
    let (_up, _ws, kg, _key) = echo_setup("").await;
    let mut tcp = TcpStream::connect(kg.public).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tcp.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut frame))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(
        frame[3], 4,
        "the server's first frame is SETTINGS: {frame:?}"
    );
}
