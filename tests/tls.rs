//! TLS, end to end with real certificates (rcgen) and a verifying rustls client: termination
//! with HTTP/1.1 and HTTP/2, plain HTTP refused or redirected, certificate hot reload, and an
//! upstream reached over TLS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

/// A rustls client config trusting exactly the CAs in `cas`, offering `alpn`.
fn client_config(cas: &[&Path], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(keygate::crypto::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
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

fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP/1.1 connection over `stream`, kept alive until the sender is dropped.
async fn h1(stream: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn keyed(path: &str, key: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn body_json(response: http::Response<hyper::body::Incoming>) -> serde_json::Value {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

struct TlsSetup {
    _up: Upstream,
    ws: Workspace,
    ca: PathBuf,
    cert: PathBuf,
    key_pem: PathBuf,
}

async fn tls_setup(extra: &str) -> TlsSetup {
    let up = Upstream::start().await;
    let (ws, ca, cert, key_pem) = tls_workspace(&up.url(), extra);
    TlsSetup {
        _up: up,
        ws,
        ca,
        cert,
        key_pem,
    }
}

/// A workspace whose public port speaks TLS with a fresh test certificate: (workspace, CA,
/// certificate, key).
fn tls_workspace(upstream: &str, extra: &str) -> (Workspace, PathBuf, PathBuf, PathBuf) {
    let certs = tempfile::tempdir().unwrap().keep();
    let (ca, cert, key_pem) = test_certificates(&certs);
    let ws = Workspace::new(
        upstream,
        &format!(
            "[tls]\ncert = {cert:?}\nkey = {key_pem:?}\n{extra}",
            cert = cert.display().to_string(),
            key_pem = key_pem.display().to_string()
        ),
    );
    (ws, ca, cert, key_pem)
}

#[tokio::test]
async fn tls_serves_http1_and_http2_and_refuses_plain_http() {
    let s = tls_setup("[server]\nwatch_interval = \"0s\"\n").await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();

    // HTTP/1.1 over TLS, verified against the test CA.
    let stream = tls_connect(kg.public, client_config(&[&s.ca], &[b"http/1.1"])).await;
    let mut sender = h1(stream).await;
    let response = sender.send_request(keyed("/v1/hello", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let echo = body_json(response).await;
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    assert!(echo["headers"].get("x-api-key").is_none());

    // HTTP/2 chosen by ALPN; the kernel watches its path, since any of its streams may
    // become a WebSocket tunnel.
    let stream = tls_connect(kg.public, client_config(&[&s.ca], &[b"h2"])).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_keepalive(&kg, stream.get_ref().0.local_addr().unwrap());
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(format!("https://localhost:{}/v1/h2", kg.public.port()))
        .header("x-api-key", &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(body_json(response).await["path"], "/v1/h2");

    // Plain HTTP to the TLS port: a readable 403, and nothing reaches the upstream.
    let forwarded = "keygate_upstream_duration_seconds_count";
    let before = kg.metric(forwarded).await.unwrap();
    let reply = get(
        &format!("http://{}/v1/hello", kg.public),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "https_required");
    assert_eq!(kg.metric(forwarded).await.unwrap(), before);
    assert!(
        kg.metric("keygate_tls_handshake_failures_total")
            .await
            .unwrap()
            >= 1.0
    );
}

/// keygate's crypto provider with only `groups` for key exchange, in that order.
fn with_groups(groups: &[rustls::NamedGroup]) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = (*keygate::crypto::tls_provider()).clone();
    let all = rustls::crypto::aws_lc_rs::ALL_KX_GROUPS;
    provider.kx_groups = groups
        .iter()
        .map(|name| *all.iter().find(|g| g.name() == *name).unwrap())
        .collect();
    Arc::new(provider)
}

#[tokio::test]
async fn a_client_offering_the_hybrid_post_quantum_group_gets_it_and_no_client_waits_a_retry() {
    use rustls::{HandshakeKind, NamedGroup};

    let s = tls_setup("[server]\nwatch_interval = \"0s\"\n").await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();
    // (what the client offers, in its order of preference; what it must get)
    let cases: &[(&[NamedGroup], NamedGroup)] = &[
        // A browser or OpenSSL 3.5: the hybrid group first, a classical one as well.
        (
            &[NamedGroup::X25519MLKEM768, NamedGroup::X25519],
            NamedGroup::X25519MLKEM768,
        ),
        (&[NamedGroup::X25519MLKEM768], NamedGroup::X25519MLKEM768),
        // Clients without it (OpenSSL 3.0, older libraries) get what they had before.
        (&[NamedGroup::X25519], NamedGroup::X25519),
        (&[NamedGroup::secp256r1], NamedGroup::secp256r1),
        // The client's order decides: one that prefers X25519 is not sent back for another.
        (
            &[NamedGroup::X25519, NamedGroup::X25519MLKEM768],
            NamedGroup::X25519,
        ),
    ];
    for (offered, want) in cases {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&s.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(with_groups(offered))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let stream = tls_connect(kg.public, Arc::new(config)).await;
        let session = stream.get_ref().1;
        let got = session.negotiated_key_exchange_group().map(|g| g.name());
        assert_eq!(got, Some(*want), "offered {offered:?}");
        // A client sends a key share for its first group only; a server that wanted another
        // would answer HelloRetryRequest and cost a round trip.
        assert_eq!(
            session.handshake_kind(),
            Some(HandshakeKind::Full),
            "offered {offered:?}"
        );
        let mut sender = h1(stream).await;
        let response = sender.send_request(keyed("/v1/pq", &key)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "offered {offered:?}");
    }
    // What an operator watching the rollout sees.
    for (group, count) in [("X25519MLKEM768", 2.0), ("X25519", 2.0), ("secp256r1", 1.0)] {
        assert_eq!(
            kg.metric(&handshakes("1.3", group, false)).await,
            Some(count),
            "{group}"
        );
    }
}

/// The sample name of `keygate_tls_handshakes_total` for these labels.
fn handshakes(version: &str, group: &str, resumed: bool) -> String {
    format!(
        "keygate_tls_handshakes_total{{group=\"{group}\",resumed=\"{resumed}\",version=\"{version}\"}}"
    )
}

/// A real browser (headless Chromium) gets the hybrid post-quantum key exchange from keygate:
/// what README promises browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_gets_the_hybrid_post_quantum_key_exchange() {
    let s = tls_setup("[server]\nwatch_interval = \"0s\"\n").await;
    let kg = s.ws.serve();
    // The test CA is not in the browser's store; the handshake is what is tested.
    let url = format!("https://localhost:{}/v1/browser", kg.public.port());
    let out = chromium(&url, &["--ignore-certificate-errors"]);
    // The page is keygate's refusal (no key): the browser got through the handshake.
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("missing_api_key"), "{dom}");
    let pq = kg.metric(&handshakes("1.3", "X25519MLKEM768", false)).await;
    assert!(pq.is_some_and(|n| n >= 1.0), "no hybrid handshake: {pq:?}");
    for classical in ["X25519", "secp256r1", "secp384r1"] {
        let n = kg.metric(&handshakes("1.3", classical, false)).await;
        assert_eq!(n.unwrap_or(0.0), 0.0, "{classical}");
    }
}

/// When a browser upstream answers `/hold`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Once a message has been echoed.
    Echo,
    /// Once a Close has come in from keygate.
    Close,
}

/// What a browser upstream saw on its WebSockets.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Echoed,
    /// A Close, and its status.
    Close(Option<u16>),
}

/// An upstream for a browser: a WebSocket handshake gets an echo server (its head, as
/// received, goes to the first receiver, what it then sees to the second), `/hold` is
/// answered when `hold` says (a page's image from it holds back the load event, at which the
/// browser dumps the page, until then), any other request gets `html`.
async fn page_and_websocket_upstream(
    html: &'static str,
    hold: Hold,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tx, seen_tx, release) = (tx.clone(), seen_tx.clone(), release.clone());
            tokio::spawn(async move {
                // The head is peeked, not read: a handshake is read again by tungstenite.
                let mut buf = vec![0u8; 8192];
                let head = loop {
                    let Ok(n) = tcp.peek(&mut buf).await else {
                        return;
                    };
                    let seen = text(&buf[..n]);
                    if seen.contains("\r\n\r\n") || n == buf.len() {
                        break seen;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                };
                if head.to_ascii_lowercase().contains("upgrade: websocket") {
                    let _ = tx.send(head);
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            Message::Text(_) => {
                                if ws.send(msg).await.is_err() {
                                    return;
                                }
                                let _ = seen_tx.send(Seen::Echoed);
                                if hold == Hold::Echo {
                                    release.notify_one();
                                }
                            }
                            Message::Close(frame) => {
                                let _ = seen_tx.send(Seen::Close(frame.map(|f| f.code.into())));
                                if hold == Hold::Close {
                                    release.notify_one();
                                }
                            }
                            _ => {}
                        }
                    }
                } else {
                    let mut tcp = tcp;
                    let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
                    let body = if head.starts_with("GET /hold ") {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), release.notified()).await;
                        // Time for the echo, or the Close, to reach the browser through keygate.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        "held"
                    } else {
                        html
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ =
                        tokio::io::AsyncWriteExt::write_all(&mut tcp, response.as_bytes()).await;
                }
            });
        }
    });
    (url, rx, seen_rx)
}

/// A real browser (headless Chromium) loads a page over HTTP/2 and opens a WebSocket on the
/// same connection (RFC 8441), through keygate to an HTTP/1.1 upstream: the message comes
/// back, and the handshake the upstream got is the one keygate writes for an HTTP/2 stream
/// (a browser's own HTTP/1.1 handshake reaches the upstream with its lines as it sent them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_a_websocket_over_http2() {
    const PAGE: &str = r#"<!doctype html><html><body><pre id="result">pending</pre><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
const show = t => { document.getElementById("result").textContent = t; };
ws.onopen = () => ws.send("hi over h2");
ws.onmessage = e => { show("got=" + e.data); ws.close(); };
ws.onerror = () => show("failed");
</script><img src="/hold"></body></html>"#;
    let (upstream, mut handshakes, _) = page_and_websocket_upstream(PAGE, Hold::Echo).await;
    // A browser's WebSocket carries no header of the page's choosing: the paths are public.
    let (ws, _, _, _) = tls_workspace(
        &upstream,
        "[server]\nwatch_interval = \"0s\"\n\n\
         [auth]\nunmatched = \"deny\"\npublic_paths = [\"/page\", \"/ws\", \"/hold\"]\n",
    );
    let kg = ws.serve();
    let url = format!("https://localhost:{}/page", kg.public.port());
    let out = tokio::task::spawn_blocking(move || chromium(&url, &["--ignore-certificate-errors"]))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("got=hi over h2"),
        "{dom}; chromium said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = handshakes
        .try_recv()
        .expect("a handshake reached the upstream");
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    // HTTP/2 names are lowercase, and keygate's own key goes last before the upgrade lines;
    // Chromium's HTTP/1.1 handshake spells it `Sec-WebSocket-Key`.
    assert!(
        head.contains("\r\nsec-websocket-key: ") && !head.contains("Sec-WebSocket-Key"),
        "not an HTTP/2 client's handshake: {head}"
    );
    assert!(handshakes.try_recv().is_err(), "a second handshake: {head}");
}

/// A browser whose WebSocket (over HTTP/2) is open when keygate gets SIGTERM: keygate's Close
/// reaches the page as a clean close with 1001, going away (not the 1006 of a dropped
/// connection), the upstream gets one too, and keygate exits without waiting out
/// `shutdown_timeout` for the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_told_going_away_when_keygate_stops() {
    const PAGE: &str = r#"<!doctype html><html><body><pre id="result">pending</pre><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
const show = t => { document.getElementById("result").textContent = t; };
ws.onopen = () => ws.send("hi");
ws.onmessage = e => show("got=" + e.data);
ws.onclose = e => show("closed=" + e.code + " clean=" + e.wasClean + " reason=" + e.reason);
</script><img src="/hold"></body></html>"#;
    let (upstream, _, mut seen) = page_and_websocket_upstream(PAGE, Hold::Close).await;
    let (ws, _, _, _) = tls_workspace(
        &upstream,
        "[server]\nwatch_interval = \"0s\"\ndrain_period = \"200ms\"\n\
         shutdown_timeout = \"30s\"\n\n\
         [auth]\nunmatched = \"deny\"\npublic_paths = [\"/page\", \"/ws\", \"/hold\"]\n",
    );
    let mut kg = ws.serve();
    let url = format!("https://localhost:{}/page", kg.public.port());
    let browser =
        tokio::task::spawn_blocking(move || chromium(&url, &["--ignore-certificate-errors"]));
    let echoed = tokio::time::timeout(Duration::from_secs(30), seen.recv()).await;
    assert_eq!(
        echoed.ok().flatten(),
        Some(Seen::Echoed),
        "the page's WebSocket never echoed"
    );
    let signalled = Instant::now();
    kg.signal("TERM");
    let out = browser.await.unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("closed=1001 clean=true reason=server shutting down"),
        "{dom}; chromium said: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seen.try_recv().ok(), Some(Seen::Close(Some(1001))));
    kg.exits_cleanly_within(Duration::from_secs(10)).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "held until the shutdown deadline"
    );
}

#[tokio::test]
async fn a_client_that_comes_back_resumes_its_session_by_ticket_or_by_id() {
    use rustls::HandshakeKind;
    use rustls::client::{Resumption, Tls12Resumption};

    let s = tls_setup("[server]\nwatch_interval = \"0s\"\n").await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();

    // (TLS version, how a TLS 1.2 client resumes)
    let cases = [
        (&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets),
        (&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets),
        (&rustls::version::TLS12, Tls12Resumption::SessionIdOnly),
    ];
    for (version, tls12) in cases {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&s.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(keygate::crypto::tls_provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::in_memory_sessions(16).tls12_resumption(tls12);
        let config = Arc::new(config);

        let mut kinds = Vec::new();
        for _ in 0..2 {
            let stream = tls_connect(kg.public, config.clone()).await;
            kinds.push(stream.get_ref().1.handshake_kind());
            // A request and its whole response: a TLS 1.3 ticket arrives after the handshake
            // and is taken in while the response is read.
            let mut sender = h1(stream).await;
            let response = sender.send_request(keyed("/v1/again", &key)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(body_json(response).await["path"], "/v1/again");
        }
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)],
            "{version:?} {tls12:?}"
        );
    }
    let resumed = [("1.3", "X25519MLKEM768", 1.0), ("1.2", "none", 2.0)];
    for (version, group, count) in resumed {
        let sample = handshakes(version, group, true);
        assert_eq!(kg.metric(&sample).await, Some(count), "{sample}");
    }
}

/// `[server] sharded`: every shard terminates TLS with the same session state, so a client
/// that comes back resumes whichever shard the kernel hands its new connection to.
#[tokio::test]
async fn sharded_every_shard_resumes_the_sessions_any_shard_began() {
    use rustls::HandshakeKind;

    let s = tls_setup(
        "[server]
watch_interval = \"0s\"\nworkers = 2\nsharded = true\n",
    )
    .await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();
    let config = client_config(&[&s.ca], &[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..16 {
        let stream = tls_connect(kg.public, config.clone()).await;
        kinds.push(stream.get_ref().1.handshake_kind());
        let mut sender = h1(stream).await;
        let response = sender.send_request(keyed("/v1/shard", &key)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_json(response).await["path"], "/v1/shard");
    }
    assert_eq!(kinds[0], Some(HandshakeKind::Full));
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == Some(HandshakeKind::Resumed)),
        "{kinds:?}"
    );
    for shard in ["0", "1"] {
        let sample = format!("keygate_connections_accepted_total{{shard=\"{shard}\"}}");
        let accepted = kg.metric(&sample).await.unwrap_or(0.0);
        assert!(accepted >= 1.0, "shard {shard} accepted {accepted}");
    }
}

#[tokio::test]
async fn the_plain_listener_refuses_or_redirects_and_never_forwards() {
    let s = tls_setup(
        "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplain = \"127.0.0.1:0\"\n",
    )
    .await;
    // tls_setup's Workspace already has a [listen] table; replace the file's first one.
    let config = std::fs::read_to_string(s.ws.config()).unwrap();
    let config = config.replacen(
        "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
        "",
        1,
    );
    std::fs::write(s.ws.config(), &config).unwrap();
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();
    let plain = kg.plain.expect("listen.plain is bound");
    let before = kg.metric("keygate_upstream_duration_seconds_count").await;
    let reply = get(&format!("http://{plain}/v1/x"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "https_required");
    assert_eq!(
        kg.metric("keygate_upstream_duration_seconds_count").await,
        before
    );
    drop(kg);

    let redirecting = config.replace(
        "[tls]\n",
        "[tls]\nplain_redirect = \"https://api.example.com\"\n",
    );
    std::fs::write(s.ws.config(), redirecting).unwrap();
    let kg = s.ws.serve();
    let plain = kg.plain.unwrap();
    let reply = get(&format!("http://{plain}/v1/x?page=2"), &[]).await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.headers["location"],
        "https://api.example.com/v1/x?page=2"
    );
}

#[tokio::test]
async fn a_new_certificate_is_served_without_dropping_open_connections() {
    let s = tls_setup("[server]\nwatch_interval = \"0s\"\n").await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();
    let next_dir = tempfile::tempdir().unwrap();
    let (next_ca, next_cert, next_key) = test_certificates(next_dir.path());
    let both = client_config(&[&s.ca, &next_ca], &[b"http/1.1"]);

    let stream = tls_connect(kg.public, both.clone()).await;
    let first_leaf = leaf(&stream);
    let mut open = h1(stream).await;
    let response = open.send_request(keyed("/v1/a", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    body_json(response).await;

    // Rotate: write the new pair into place the way cert-manager does (rename), then SIGHUP.
    for (from, to) in [(&next_cert, &s.cert), (&next_key, &s.key_pem)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    kg.signal("HUP");
    let served_new = eventually(Duration::from_secs(5), || {
        let both = both.clone();
        let public = kg.public;
        let first_leaf = first_leaf.clone();
        async move { leaf(&tls_connect(public, both).await) != first_leaf }
    })
    .await;
    assert!(served_new.is_some(), "the new certificate was not served");
    let new_leaf = leaf(&tls_connect(kg.public, both.clone()).await);
    let expected = CertificateDer::from_pem_file(&next_cert).unwrap();
    assert_eq!(new_leaf, expected.to_vec());

    // The connection opened before the swap still works.
    let response = open.send_request(keyed("/v1/b", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A broken certificate: reload fails, is counted, and the good one keeps serving.
    std::fs::write(&s.cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n").unwrap();
    kg.signal("HUP");
    let failed = r#"keygate_reloads_total{result="failed",what="tls"}"#;
    let counted = eventually(Duration::from_secs(5), || async {
        kg.metric(failed).await == Some(1.0)
    })
    .await;
    assert!(counted.is_some(), "failed reload not counted");
    let stream = tls_connect(kg.public, both.clone()).await;
    assert_eq!(leaf(&stream), expected.to_vec());
    let mut sender = h1(stream).await;
    let response = sender.send_request(keyed("/v1/c", &key)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(kg.all_logs().contains("TLS certificate reload failed"));
}

#[tokio::test]
async fn certificate_files_are_watched_without_a_signal() {
    let s = tls_setup("[server]\nwatch_interval = \"100ms\"\n").await;
    let kg = s.ws.serve();
    let next_dir = tempfile::tempdir().unwrap();
    let (next_ca, next_cert, next_key) = test_certificates(next_dir.path());
    let both = client_config(&[&s.ca, &next_ca], &[b"http/1.1"]);
    let before = leaf(&tls_connect(kg.public, both.clone()).await);
    std::fs::copy(&next_key, &s.key_pem).unwrap();
    std::fs::copy(&next_cert, &s.cert).unwrap();
    let changed = eventually(Duration::from_secs(5), || {
        let both = both.clone();
        let before = before.clone();
        let public = kg.public;
        async move { leaf(&tls_connect(public, both).await) != before }
    })
    .await;
    assert!(changed.is_some(), "the changed files were not picked up");
}

#[tokio::test]
async fn broken_certificates_at_start_are_a_clear_error() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = test_certificates(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, _, other_key) = test_certificates(other.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let cases = [
        (&garbage, &key, "tls.cert"),
        (&cert, &garbage, "tls.key"),
        (&cert, &other_key, "does not belong"),
    ];
    let secrets = [key.clone(), other_key.clone()];
    for (cert, key, expect) in cases {
        let ws = Workspace::new(
            &up.url(),
            &format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        let out = std::process::Command::new(BIN)
            .args(["serve", "-c"])
            .arg(ws.config())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{expect}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for secret in &secrets {
            let pem = std::fs::read_to_string(secret).unwrap();
            let material = pem.lines().nth(1).unwrap();
            assert!(!err.contains(material), "key material in an error: {err}");
        }
    }
}

/// An upstream that streams each response as a head and two pieces (server-sent events), each
/// piece only once the test lets it go: a piece held in a buffer on the way never arrives.
async fn streaming_upstream(go: Arc<tokio::sync::Semaphore>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let pieces = ["b\r\ndata: one\n\n\r\n", "b\r\ndata: two\n\n\r\n0\r\n\r\n"];
                stream.write_all(head.as_bytes()).await.unwrap();
                for piece in pieces {
                    go.acquire().await.unwrap().forget();
                    if stream.write_all(piece.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The next piece of a streamed body, within a bound.
async fn next_piece(body: &mut hyper::body::Incoming) -> Bytes {
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the piece was held back")
        .expect("the stream ended")
        .unwrap();
    frame.into_data().unwrap()
}

/// Over TLS, keygate's records go out at each flush (in the turn's batch): a streamed response
/// must still reach the client piece by piece, over HTTP/1.1 (keygate's engine) and HTTP/2
/// (hyper), and not wait in a buffer for the upstream's next piece.
#[tokio::test]
async fn a_streamed_response_reaches_tls_clients_piece_by_piece() {
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = streaming_upstream(go.clone()).await;
    let certs = tempfile::tempdir().unwrap().keep();
    let (ca, cert, key_pem) = test_certificates(&certs);
    let ws = Workspace::new(
        &format!("http://{upstream}"),
        &format!("[tls]\ncert = {cert:?}\nkey = {key_pem:?}\n"),
    );
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = format!("https://localhost:{}/v1/events", kg.public.port());
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let stream = tls_connect(kg.public, client_config(&[&ca], &[alpn])).await;
        let response = if alpn == b"h2" {
            let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let request = Request::get(&url)
                .header("x-api-key", &key)
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.send_request(request).await.unwrap()
        } else {
            let mut sender = h1(stream).await;
            sender.send_request(keyed(&url, &key)).await.unwrap()
        };
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        go.add_permits(1);
        assert_eq!(next_piece(&mut body).await, "data: one\n\n", "{alpn:?}");
        go.add_permits(1);
        assert_eq!(next_piece(&mut body).await, "data: two\n\n", "{alpn:?}");
    }
}

/// One HTTP/1.1 response read off `stream`, within a bound: its status and body (the upstream
/// echoes the request as JSON, `content-length` framed).
async fn read_response(stream: &mut TlsStream<TcpStream>) -> (StatusCode, serde_json::Value) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse::<u16>().unwrap();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().unwrap())
            })
            .expect("a content-length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        (
            StatusCode::from_u16(status).unwrap(),
            serde_json::from_slice(&body).unwrap(),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no response within 10 s")
}

/// An idle TLS keep-alive connection gives back its buffers after a second and waits on its
/// socket for the client's next bytes (`server::session::idle`). What comes next is served
/// whole: a request after the wait; one whose TLS record began before the wait and ends after
/// it (rustls holds half a record meanwhile); two requests in one record.
#[tokio::test]
async fn an_idle_tls_connection_serves_what_follows_once_it_gave_back_its_buffers() {
    use tokio::io::AsyncWriteExt;
    let s = tls_setup("").await;
    let (_, key) = s.ws.create_key(&[]);
    let kg = s.ws.serve();
    let mut stream = tls_connect(kg.public, client_config(&[&s.ca], &[b"http/1.1"])).await;
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {key}\r\n\r\n");
    // Past the shedding (1 s), well inside the header (10 s) and idle (75 s) timeouts.
    let idle = Duration::from_millis(1_500);

    stream
        .write_all(request("/first").as_bytes())
        .await
        .unwrap();
    let (status, echo) = read_response(&mut stream).await;
    assert_eq!((status, &echo["path"]), (StatusCode::OK, &"/first".into()));

    tokio::time::sleep(idle).await;
    stream
        .write_all(request("/after-idle").as_bytes())
        .await
        .unwrap();
    let (status, echo) = read_response(&mut stream).await;
    assert_eq!(
        (status, &echo["path"]),
        (StatusCode::OK, &"/after-idle".into())
    );

    // One record, its first half sent before the connection sheds and the rest after.
    let (tcp, tls) = stream.get_mut();
    std::io::Write::write_all(&mut tls.writer(), request("/split-record").as_bytes()).unwrap();
    let mut record = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut record).unwrap();
    }
    let half = record.len() / 2;
    tcp.write_all(&record[..half]).await.unwrap();
    tokio::time::sleep(idle).await;
    tcp.write_all(&record[half..]).await.unwrap();
    let (status, echo) = read_response(&mut stream).await;
    assert_eq!(
        (status, &echo["path"]),
        (StatusCode::OK, &"/split-record".into())
    );

    tokio::time::sleep(idle).await;
    let pipelined = request("/one") + &request("/two");
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    for path in ["/one", "/two"] {
        let (status, echo) = read_response(&mut stream).await;
        assert_eq!((status, &echo["path"]), (StatusCode::OK, &path.into()));
    }
}

/// An echo upstream behind TLS (ALPN h2 + http/1.1), for the upstream-TLS tests.
/// A TLS upstream that agrees only to the hybrid post-quantum key exchange: a keygate that
/// reaches it has offered X25519MLKEM768 to its upstream.
async fn tls_upstream(cert: &Path, key: &Path) -> SocketAddr {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = with_groups(&[rustls::NamedGroup::X25519MLKEM768]);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(tls),
                        hyper::service::service_fn(keygate::echo::echo),
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_upstream_can_be_reached_over_tls_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let upstream = tls_upstream(&cert, &key).await;
    let url = format!("https://localhost:{}", upstream.port());
    let ca = ca.display().to_string();
    for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let ws = Workspace::new(&url, "");
        // Extend the [upstream] table Workspace wrote.
        let config = std::fs::read_to_string(ws.config()).unwrap().replacen(
            &format!("[upstream]\nurl = \"{url}\"\n"),
            &format!("[upstream]\nurl = \"{url}\"\nca_file = {ca:?}\nhttp2 = {http2}\n"),
            1,
        );
        std::fs::write(ws.config(), config).unwrap();
        let (_, k) = ws.create_key(&[]);
        let kg = ws.serve();
        let reply = get(&kg.url("/v1/tls"), &[("x-api-key", &k)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
        assert_eq!(reply.json()["version"], version, "http2 = {http2}");
    }

    // Without the CA the upstream's certificate is not trusted: 502, never a plain connection.
    let ws = Workspace::new(&url, "");
    let (_, k) = ws.create_key(&[]);
    let kg = ws.serve();
    let reply = get(&kg.url("/v1/tls"), &[("x-api-key", &k)]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unavailable");
}

#[tokio::test]
async fn the_management_api_speaks_tls_with_the_public_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tls_setup("").await;
    let (_, admin) = s.ws.create_key(&["--scopes", "*,keygate:keys:read"]);
    let kg =
        s.ws.serve_with_env(&[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0")]);
    let manage = kg.manage.expect("the manage listener is configured");

    let stream = tls_connect(manage, client_config(&[&s.ca], &[b"http/1.1"])).await;
    let mut sender = h1(stream).await;
    let request = Request::get("/v1/keys")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {admin}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body_json(response).await["data"].as_array().unwrap().len(),
        1
    );

    // Plain HTTP gets no answer: no key travels in the clear to this port.
    let mut tcp = TcpStream::connect(manage).await.unwrap();
    tcp.write_all(b"GET /v1/keys HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "{}", text(&answer));
}
