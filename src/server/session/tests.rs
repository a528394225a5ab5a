//! The HTTP/1.1 session's transitions, pinned down by scripting both of its sockets: the
//! client is one end of an in-memory pipe the test writes requests into and reads answers
//! from; the upstream is a loopback listener the test accepts from and answers by hand; keys
//! come from an in-memory store (`crate::testing`). Clocks run on tokio's paused time where a test is about
//! them, so a 75-second idle timeout takes no time and its firing is exact.

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;

use super::*;
use crate::batch::Socket;
use crate::forward::websocket::frame;

/// The client's end of the pipe is not a socket: no batched writes.
impl Batchable for DuplexStream {
    fn socket(&self) -> Option<&Socket> {
        None
    }
}

/// Nor a socket to wait on without buffers.
impl Idle for DuplexStream {
    fn shed(&mut self) -> bool {
        false
    }

    fn tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

const HEADER: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(75);

struct Setup {
    proxy: Proxy,
    conn: Connection,
    timing: Timing,
    closing: CancellationToken,
    key: String,
}

impl Setup {
    /// Serves the session's end of the pipe until the session ends.
    async fn serve(&self, io: DuplexStream) -> Served<DuplexStream> {
        serve(io, &self.proxy, &self.conn, &self.timing, &self.closing).await
    }
}

/// A proxy in front of `upstream` with one valid key, every path open to it.
fn setup(upstream: std::net::SocketAddr) -> Setup {
    let (proxy, key) = crate::testing::proxy(upstream, "");
    Setup {
        proxy,
        conn: Connection::new("127.0.0.1:40000".parse().unwrap(), false),
        timing: Timing {
            header: HEADER,
            idle: IDLE,
            max_header_bytes: 16 * 1024,
            batch_writes: false,
        },
        closing: CancellationToken::new(),
        key,
    }
}

/// A loopback upstream the test answers by hand, and a proxy in front of it.
async fn with_upstream() -> (TcpListener, Setup) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = setup(upstream.local_addr().unwrap());
    (upstream, s)
}

/// An address nothing listens on: a test that must never reach the upstream would get a 502.
async fn nowhere() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One response as the client reads it: status, lower-cased head, body (by Content-Length).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn read_answer(io: &mut (impl AsyncRead + Unpin), pending: &mut Vec<u8>) -> Answer {
    let end = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response head");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(pending.drain(..end).collect())
        .unwrap()
        .to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    while pending.len() < length {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the whole body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8(pending.drain(..length).collect()).unwrap();
    Answer { status, head, body }
}

/// Reads until the peer closes; returns what came.
async fn read_to_close(io: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    rest
}

/// Accepts one upstream connection and reads one request head from it.
async fn upstream_head(listener: &TcpListener) -> (tokio::net::TcpStream, String) {
    let (mut up, _) = listener.accept().await.unwrap();
    let head = next_head(&mut up).await;
    (up, head)
}

async fn next_head(up: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            up.read(&mut byte).await.unwrap(),
            1,
            "upstream request cut short"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test]
async fn a_refusal_and_a_forwarded_request_share_one_connection() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let mut pending = Vec::new();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
            .await
            .unwrap();
        let refused = read_answer(&mut client, &mut pending).await;
        assert_eq!(refused.status, 401);
        assert!(
            refused.body.contains("\"missing_api_key\""),
            "{}",
            refused.body
        );
        assert!(
            !refused.head.contains("connection: close"),
            "{}",
            refused.head
        );

        let request = format!(
            "GET /b?q=1 HTTP/1.1\r\nHost: api\r\nx-api-key: {}\r\n\r\n",
            s.key
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let (mut up, head) = upstream_head(&upstream).await;
        assert!(head.starts_with("get /b?q=1 http/1.1\r\n"), "{head}");
        assert!(
            !head.contains(&s.key.to_ascii_lowercase()),
            "the key went upstream: {head}"
        );
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        let served = read_answer(&mut client, &mut pending).await;
        assert_eq!((served.status, served.body.as_str()), (200, "ok"));
        drop(client);
    };
    let (served, ()) = tokio::join!(s.serve(server), script);
    assert!(matches!(served, Served::Done));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_over_one_upstream_connection() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let one = |path: &str| {
            format!(
                "GET /{path} HTTP/1.1\r\nHost: api\r\nx-api-key: {}\r\n\r\n",
                s.key
            )
        };
        // Both at once: the second is in the buffer before the first is answered.
        client
            .write_all(format!("{}{}", one("first"), one("second")).as_bytes())
            .await
            .unwrap();
        let (mut up, head) = upstream_head(&upstream).await;
        assert!(head.starts_with("get /first "), "{head}");
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
            .await
            .unwrap();
        let head = next_head(&mut up).await;
        assert!(head.starts_with("get /second "), "{head}");
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
            .await
            .unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_answer(&mut client, &mut pending).await.body, "1");
        assert_eq!(read_answer(&mut client, &mut pending).await.body, "2");
        drop(client);
    };
    tokio::join!(s.serve(server), script);
}

// Paused time: the linger after each refusal (reading what follows, so the client reads the
// answer before a reset) takes none.
#[tokio::test(start_paused = true)]
async fn ambiguous_framing_is_refused_and_the_connection_closed_unread() {
    let s = setup(nowhere().await);
    // Each could be read two ways by some upstream: after the 400, nothing more is read.
    let gadgets: &[&str] = &[
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n Folded: value\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a bare\rcarriage return\r\n\r\n",
    ];
    for gadget in gadgets {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let script = async {
            let smuggled = format!("{gadget}GET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
            client.write_all(smuggled.as_bytes()).await.unwrap();
            let mut pending = Vec::new();
            let answer = read_answer(&mut client, &mut pending).await;
            assert_eq!(answer.status, 400, "{gadget:?}: {}", answer.head);
            assert!(answer.head.contains("connection: close"), "{gadget:?}");
            // No second answer: the smuggled request was never read as one.
            pending.extend(read_to_close(&mut client).await);
            assert!(
                pending.is_empty(),
                "{gadget:?}: {:?}",
                String::from_utf8_lossy(&pending)
            );
        };
        tokio::join!(s.serve(server), script);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_speaks_is_let_go_at_the_header_timeout() {
    let s = setup(nowhere().await);
    let (mut client, server) = tokio::io::duplex(1024);
    let started = Instant::now();
    let script = async {
        assert!(
            read_to_close(&mut client).await.is_empty(),
            "closed without a word"
        );
        started.elapsed()
    };
    let (_, closed_after) = tokio::join!(s.serve(server), script);
    // Paused time: the clock that fired is exact. Not the idle timeout's 75 s.
    assert!(
        closed_after >= HEADER && closed_after < HEADER * 2,
        "{closed_after:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_outlives_the_header_timeout_until_the_idle_timeout() {
    let s = setup(nowhere().await);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answered = read_answer(&mut client, &mut Vec::new()).await;
        assert_eq!(answered.status, 401);
        let idle_from = Instant::now();
        assert!(read_to_close(&mut client).await.is_empty());
        idle_from.elapsed()
    };
    let (_, idle) = tokio::join!(s.serve(server), script);
    assert!(idle >= IDLE && idle < IDLE + HEADER, "{idle:?}");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_stops_midway_is_cut_off_at_the_header_timeout() {
    let s = setup(nowhere().await);
    let (mut client, server) = tokio::io::duplex(1024);
    let script = async {
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let from = Instant::now();
        // Silently: a slow-loris client gets no answer to read.
        assert!(read_to_close(&mut client).await.is_empty());
        from.elapsed()
    };
    let (_, after) = tokio::join!(s.serve(server), script);
    assert!(after >= HEADER && after < HEADER * 2, "{after:?}");
}

#[tokio::test]
async fn an_http2_client_is_handed_over_with_every_byte_read_so_far() {
    let s = setup(nowhere().await);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    // Whole, and split inside the preface's first line.
    for split in [preface.len(), 8] {
        let (mut client, server) = tokio::io::duplex(1024);
        let script = async {
            client.write_all(&preface[..split]).await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(&preface[split..]).await.unwrap();
            client
        };
        let (served, _client) = tokio::join!(s.serve(server), script);
        let Served::Handoff(mut rewind) = served else {
            panic!("split at {split}: not handed to hyper");
        };
        let mut replayed = vec![0u8; preface.len()];
        rewind.read_exact(&mut replayed).await.unwrap();
        assert_eq!(replayed, preface, "split at {split}");
    }
}

#[tokio::test]
async fn shutting_down_mid_request_finishes_it_and_says_the_connection_closes() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: api\r\nx-api-key: {}\r\n\r\n",
            s.key
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let (mut up, _) = upstream_head(&upstream).await;
        // Shutdown begins while the request is in flight: it still gets its answer.
        s.closing.cancel();
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            .await
            .unwrap();
        let mut pending = Vec::new();
        let answer = read_answer(&mut client, &mut pending).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "done"));
        assert!(answer.head.contains("connection: close"), "{}", answer.head);
        pending.extend(read_to_close(&mut client).await);
        assert!(pending.is_empty());
    };
    tokio::join!(s.serve(server), script);
}

#[tokio::test]
async fn shutting_down_closes_an_idle_connection_between_requests() {
    let s = setup(nowhere().await);
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client, &mut Vec::new()).await.status, 401);
        s.closing.cancel();
        assert!(read_to_close(&mut client).await.is_empty());
    };
    let (served, ()) = tokio::join!(s.serve(server), script);
    assert!(matches!(served, Served::Done));
}

#[tokio::test]
async fn a_refused_request_s_body_is_drained_and_the_connection_kept() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        // The body arrives after the refusal is written: it is read and dropped, not taken
        // for the next request.
        let body = b"GET /smuggled HTTP/1.1\r\n\r\n";
        let head = format!(
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_answer(&mut client, &mut pending).await.status, 401);
        client.write_all(body).await.unwrap();
        let request = format!(
            "GET /next HTTP/1.1\r\nHost: a\r\nx-api-key: {}\r\n\r\n",
            s.key
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let (mut up, head) = upstream_head(&upstream).await;
        assert!(head.starts_with("get /next "), "{head}");
        up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client, &mut pending).await.status, 204);
        drop(client);
    };
    tokio::join!(s.serve(server), script);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_keygate_once_the_request_is_admitted() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        // Refused: a final answer and no 100, so the client never sends the body.
        client
            .write_all(
                b"PUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            )
            .await
            .unwrap();
        let mut pending = Vec::new();
        let refused = read_answer(&mut client, &mut pending).await;
        assert_eq!(refused.status, 401);
        assert!(
            refused.head.contains("connection: close"),
            "the body's fate is unknown"
        );
        assert!(read_to_close(&mut client).await.is_empty());
    };
    tokio::join!(s.serve(server), script);

    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let request = format!(
            "PUT /a HTTP/1.1\r\nHost: a\r\nx-api-key: {}\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\n\r\n",
            s.key
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut pending = Vec::new();
        let interim = read_answer(&mut client, &mut pending).await;
        assert_eq!(interim.status, 100);
        client.write_all(b"hello").await.unwrap();
        let (mut up, head) = upstream_head(&upstream).await;
        assert!(
            !head.contains("expect:"),
            "answered here, not upstream: {head}"
        );
        let mut body = [0u8; 5];
        up.read_exact(&mut body).await.unwrap();
        assert_eq!(&body, b"hello");
        up.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client, &mut pending).await.status, 201);
        drop(client);
    };
    tokio::join!(s.serve(server), script);
}

#[tokio::test]
async fn a_reused_upstream_connection_closed_under_an_idempotent_request_is_retried_once() {
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let get = |path: &str| {
            format!(
                "GET /{path} HTTP/1.1\r\nHost: a\r\nx-api-key: {}\r\n\r\n",
                s.key
            )
        };
        let mut pending = Vec::new();
        client.write_all(get("one").as_bytes()).await.unwrap();
        let (mut up, _) = upstream_head(&upstream).await;
        up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client, &mut pending).await.body, "1");
        // The next request goes on the same upstream connection, which closes under it
        // (its idle timeout crossing the request): sent again on a new one.
        client.write_all(get("two").as_bytes()).await.unwrap();
        let head = next_head(&mut up).await;
        assert!(head.starts_with("get /two "), "{head}");
        drop(up);
        let (mut again, head) = upstream_head(&upstream).await;
        assert!(head.starts_with("get /two "), "{head}");
        again
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut client, &mut pending).await.body, "2");

        // Not a POST: it may have been acted on, so the client hears of the failure.
        client
            .write_all(
                format!(
                    "POST /three HTTP/1.1\r\nHost: a\r\nx-api-key: {}\r\nContent-Length: 0\r\n\r\n",
                    s.key
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let head = next_head(&mut again).await;
        assert!(head.starts_with("post /three "), "{head}");
        drop(again);
        let failed = read_answer(&mut client, &mut pending).await;
        assert_eq!(failed.status, 502, "{}", failed.body);
        drop(client);
    };
    tokio::join!(s.serve(server), script);
}

/// Reads one short frame and returns its first byte, whether it was masked, and the status
/// of a Close (its payload's first two bytes, unmasked).
async fn read_close(io: &mut (impl AsyncRead + Unpin)) -> (u8, bool, u16) {
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.unwrap();
    let masked = head[1] & 0x80 != 0;
    let mut key = [0u8; 4];
    if masked {
        io.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    io.read_exact(&mut payload).await.unwrap();
    for (b, k) in payload.iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
    (
        head[0],
        masked,
        u16::from_be_bytes([payload[0], payload[1]]),
    )
}

#[tokio::test]
async fn shutting_down_tells_a_tunnel_going_away_after_the_frames_under_way() {
    // Both ends are mid-frame when keygate starts stopping, and each frame began in bytes
    // that came with a handshake (the client's behind its request, the upstream's behind its
    // `101`), before the tunnel itself ran: its Close must still fall between frames.
    let (upstream, s) = with_upstream().await;
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let script = async {
        let up_frame = frame(0x1, b"from the client", Some([1, 2, 3, 4]));
        let down_frame = frame(0x1, b"from the upstream", None);
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: a\r\nx-api-key: {}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            s.key
        );
        client
            .write_all(&[request.as_bytes(), &up_frame[..4]].concat())
            .await
            .unwrap();
        let (mut up, head) = upstream_head(&upstream).await;
        assert!(head.contains("upgrade: websocket"), "{head}");
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
            Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        up.write_all(&[&switch[..], &down_frame[..3]].concat())
            .await
            .unwrap();
        let mut pending = Vec::new();
        assert_eq!(read_answer(&mut client, &mut pending).await.status, 101);
        let mut early = [0u8; 4];
        up.read_exact(&mut early).await.unwrap();
        assert_eq!(early, up_frame[..4]);

        s.closing.cancel();
        client.write_all(&up_frame[4..]).await.unwrap();
        let mut rest = vec![0u8; up_frame.len() - 4];
        up.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, up_frame[4..], "the client's frame goes through whole");
        assert_eq!(read_close(&mut up).await, (0x88, true, 1001));

        up.write_all(&[&down_frame[3..], &frame(0x8, &[0x03, 0xe9], None)[..]].concat())
            .await
            .unwrap();
        // The upstream's frame (its first bytes came behind the `101`), then keygate's Close
        // (1001 and its 20-byte reason).
        while pending.len() < down_frame.len() + 24 {
            let mut chunk = [0u8; 64];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before the upstream's frame and the Close were through"
            );
            pending.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(pending[..down_frame.len()], down_frame);
        let mut after = &pending[down_frame.len()..];
        assert_eq!(read_close(&mut after).await, (0x88, false, 1001));
        // The upstream's answering Close is not passed on: the client has keygate's.
        assert!(read_to_close(&mut client).await.is_empty());
        client
            .write_all(&frame(0x8, &[0x03, 0xe9], Some([5; 4])))
            .await
            .unwrap();
        assert!(read_to_close(&mut up).await.is_empty());
    };
    let both = async { tokio::join!(s.serve(server), script) };
    let (served, ()) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the tunnel did not close within 10 s of keygate stopping");
    assert!(matches!(served, Served::Done));
}
