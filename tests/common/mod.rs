//! Shared harness for the black-box tests: the real `keygate` binary on loopback port 0, the
//! echo upstream on its own port, and a small HTTP client. Every test gets its own folder,
//! ports and processes, so tests never depend on each other.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// The echo upstream, running inside the test process until dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(keygate::echo::serve(listener, stop.clone()));
        Self { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A test's own folder with a `proxy.toml` pointing at `upstream_url`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// `extra_toml` is appended; unless it has an `[auth]` table of its own, one allowing any
    /// valid key on every path is added.
    pub fn new(upstream_url: &str, extra_toml: &str) -> Self {
        Self::with_store(
            upstream_url,
            "[store]\nkind = \"file\"\npath = \"keys.json\"\n",
            extra_toml,
        )
    }

    /// A Redis store at `url`, in its own namespace.
    pub fn redis(upstream_url: &str, url: &str, extra_toml: &str) -> Self {
        let store = format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\nepoch_poll = \"1s\"\n");
        Self::with_store(upstream_url, &store, extra_toml)
    }

    pub fn with_store(upstream_url: &str, store_toml: &str, extra_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = if extra_toml.contains("[auth]") {
            ""
        } else {
            "[auth]\nunmatched = \"allow\"\n"
        };
        let config = format!(
            "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n\
             [upstream]\nurl = \"{upstream_url}\"\n\n\
             {store_toml}\n{auth}{extra_toml}"
        );
        std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
        Self { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// Adds `lines` to the config's `[upstream]` section.
    pub fn upstream_options(&self, lines: &str) {
        let config = std::fs::read_to_string(self.config()).unwrap();
        let config = config.replacen("[upstream]\n", &format!("[upstream]\n{lines}"), 1);
        std::fs::write(self.config(), config).unwrap();
    }

    pub fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    /// Runs `keygate <args> -c proxy.toml` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(self.config())
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap()
    }

    /// `keys create` through the CLI; returns (id, key).
    pub fn create_key(&self, extra: &[&str]) -> (String, String) {
        let mut args = vec!["keys", "create", "--name", "test key"];
        if !extra.contains(&"--scopes") {
            args.extend(["--scopes", "*"]);
        }
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "keys create failed: {}",
            text(&out.stderr)
        );
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            json["id"].as_str().unwrap().to_owned(),
            json["key"].as_str().unwrap().to_owned(),
        )
    }

    pub fn serve(&self) -> Keygate {
        self.serve_with_env(&[])
    }

    pub fn serve_with_env(&self, env: &[(&str, &str)]) -> Keygate {
        Keygate::spawn(&self.config(), env)
    }
}

/// A running `keygate serve`, killed on drop. Its stderr (the logs) is kept for assertions.
pub struct Keygate {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// `listen.plain`, when configured.
    pub plain: Option<SocketAddr>,
    /// `listen.manage` (the management API), when configured.
    pub manage: Option<SocketAddr>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Keygate {
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("-c")
            .arg(config)
            .env_remove("KEYGATE_CONFIG")
            .env("KEYGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Kept before it is announced: a test that looks at the logs once `spawn`
                // returns finds the ready line there.
                sink.lock().unwrap().push(line.clone());
                if line.contains("keygate listening") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("keygate did not start; logs: {:?}", logs.lock().unwrap());
            }
        };
        let json: Value = serde_json::from_str(&line).unwrap();
        let addr = |k: &str| json[k].as_str().unwrap().parse().unwrap();
        Self {
            public: addr("public"),
            admin: addr("admin"),
            plain: json["plain"].as_str().map(|a| a.parse().unwrap()),
            manage: json["manage"].as_str().map(|a| a.parse().unwrap()),
            child,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn manage_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.manage.expect("[listen] manage is configured")
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Sends a signal by name (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// The value of one sample in `/metrics`, e.g. `keygate_reloads_total{what="tls",result="ok"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let body = get(&self.admin_url("/metrics"), &[]).await.body;
        text(&body).lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    /// With a Redis store: waits for the change feed's first epoch poll, which flushes what
    /// requests cached before it (a test that caches a key and then breaks Redis needs the
    /// key cached after it).
    pub async fn first_poll(&self) {
        let polled = eventually(Duration::from_secs(10), || async {
            self.metric("keygate_key_feed_last_confirmed_timestamp_seconds")
                .await
                .is_some_and(|at| at > 0.0)
        })
        .await;
        assert!(polled.is_some(), "the change feed never polled");
    }

    /// Waits up to `limit` for the process to exit (after a SIGTERM), and asserts it exited
    /// with success.
    pub async fn exits_cleanly_within(&mut self, limit: Duration) {
        let exited = eventually(limit, || {
            let done = self.child.try_wait().unwrap();
            async move { done.is_some() }
        })
        .await;
        assert!(exited.is_some(), "still running {limit:?} after SIGTERM");
        assert!(self.child.wait().unwrap().success());
    }

    pub fn all_logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Resident memory of the proxy process now, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Peak resident memory of the proxy process so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&self.body)))
    }

    /// The error code of a keygate JSON error, checking the body's shape on the way.
    pub fn error_code(&self) -> String {
        assert_eq!(
            self.headers
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "status {}",
            self.status
        );
        let json = self.json();
        assert!(json["error"]["message"].is_string(), "{json}");
        assert!(json["error"]["type"].is_string(), "{json}");
        json["error"]["code"].as_str().unwrap().to_owned()
    }

    /// The headers the echo upstream received.
    pub fn upstream_headers(&self) -> serde_json::Map<String, Value> {
        self.json()["headers"].as_object().unwrap().clone()
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    request(req.body(Full::new(body)).unwrap()).await
}

pub async fn request<B>(req: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send_with(Client::builder(TokioExecutor::new()).build_http(), req).await
}

/// The same over HTTP/2 (prior knowledge).
pub async fn request_h2<B>(req: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    send_with(client, req).await
}

async fn send_with<B>(client: Client<HttpConnector, B>, req: Request<B>) -> Reply
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
        .await
        .expect("body timed out")
        .expect("body failed")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// An upstream that answers its first request with 64 MiB, more than every socket buffer on
/// the way holds, and notes when its writing fails: when keygate let go of the connection.
pub struct HugeUpstream {
    pub url: String,
    failed: Arc<Mutex<Option<Instant>>>,
}

impl HugeUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let failed: Arc<Mutex<Option<Instant>>> = Arc::default();
        let note = failed.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = tcp.read(&mut head).await;
            let total = 64usize << 20;
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
            tcp.write_all(answer.as_bytes()).await.unwrap();
            let piece = vec![b'x'; 64 * 1024];
            for _ in 0..total / piece.len() {
                if tcp.write_all(&piece).await.is_err() {
                    *note.lock().unwrap() = Some(Instant::now());
                    return;
                }
            }
        });
        Self { url, failed }
    }

    /// Waits up to 15 s for keygate to let go; how long after `since` it did.
    pub async fn let_go_after(&self, since: Instant) -> Option<Duration> {
        eventually(Duration::from_secs(15), || async {
            self.failed.lock().unwrap().is_some()
        })
        .await?;
        let at = self.failed.lock().unwrap().unwrap();
        Some(at - since)
    }
}

/// Polls `probe` until it returns true or `limit` passes; returns the time it took.
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if probe().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Reads a request head (through its blank line, and whatever came with it) off `tcp`, as a
/// scripted upstream does; `None` if the connection ends first.
pub async fn read_request_head(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Asserts that keygate's socket to `client` has TCP keepalive on: `ss` shows its timer
/// once no data waits for an acknowledgement (until then it shows the retransmission timer).
pub fn assert_keepalive(kg: &Keygate, client: std::net::SocketAddr) {
    let mut sockets = String::new();
    for _ in 0..50 {
        let ss = std::process::Command::new("ss")
            .args(["-Htno", "state", "established"])
            .arg(format!("src {} dst {client}", kg.public))
            .output()
            .expect("ss (iproute2) runs");
        sockets = text(&ss.stdout);
        assert_eq!(sockets.lines().count(), 1, "{sockets}");
        if sockets.contains("timer:(keepalive") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no keepalive timer on keygate's socket to the client: {sockets}");
}

/// Sends `head` (which declares a longer body than it carries) over a new connection and
/// then nothing more, and returns what came back before the connection closed. The close must
/// come `clock` (the server's clock for such a client) after the head, give or take: not
/// before 90 % of it, and within 4 s after it.
pub async fn send_and_stall(addr: SocketAddr, head: &str, clock: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let sent = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        clock + Duration::from_secs(14),
        tcp.read_to_end(&mut answer),
    )
    .await;
    let waited = sent.elapsed();
    let answer = text(&answer);
    assert!(
        read.is_ok(),
        "still open {waited:?} after the body stopped: {answer}"
    );
    assert!(
        waited >= clock.mul_f64(0.9) && waited < clock + Duration::from_secs(4),
        "closed after {waited:?}, with a clock of {clock:?}: {answer}"
    );
    answer
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A request body of `total` bytes produced chunk by chunk, never held whole in memory.
pub struct PatternBody {
    remaining: usize,
    chunk: Bytes,
}

impl PatternBody {
    pub const CHUNK: usize = 64 * 1024;

    pub fn new(total: usize) -> Self {
        let chunk: Vec<u8> = (0..Self::CHUNK).map(|i| (i % 251) as u8).collect();
        Self {
            remaining: total,
            chunk: Bytes::from(chunk),
        }
    }

    /// SHA-256 (hex) of what this body sends, computed the same chunked way.
    pub fn sha256_hex(total: usize) -> String {
        use sha2::{Digest, Sha256};
        let body = Self::new(total);
        let mut hasher = Sha256::new();
        let mut left = total;
        while left > 0 {
            let n = left.min(Self::CHUNK);
            hasher.update(&body.chunk[..n]);
            left -= n;
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(Self::CHUNK);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}
/// Loads `url` in headless Chromium, with `extra` flags, and returns what it printed: the
/// page's DOM (`--dump-dom`) on stdout, its log on stderr. Panics unless it is done in 60 s.
pub fn chromium(url: &str, extra: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--dump-dom",
            "--enable-logging=stderr",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (scripts/test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

pub mod fault;
pub mod redis;
pub mod tools;

/// A throw-away CA and a server certificate for `localhost` / 127.0.0.1, as PEM files in
/// `dir`: (ca.pem, server.pem, server-key.pem).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keygate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, server_cert.pem()).unwrap();
    std::fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

/// A WebSocket echo upstream that reports the status of each Close it receives.
pub async fn websocket_upstream_reporting_closes()
-> (String, tokio::sync::mpsc::UnboundedReceiver<Option<u16>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut ws).await {
                    match msg {
                        tokio_tungstenite::tungstenite::Message::Close(frame) => {
                            let _ = tx.send(frame.map(|f| u16::from(f.code)));
                        }
                        msg if msg.is_text() => {
                            let _ = futures_util::SinkExt::send(&mut ws, msg).await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (url, rx)
}
