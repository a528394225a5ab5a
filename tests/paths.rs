//! What is authorized is what the upstream serves: a differential test against real upstream
//! parsers.
//!
//! Every request target in `tests/paths/corpus.txt` (plus generated encodings and letter
//! cases of the protected segment) goes through the real keygate binary to nginx, aiohttp,
//! Flask (Werkzeug), Starlette on uvicorn and a Node.js service, each of which answers which of
//! its own routes served the request: `route=admin` or `route=open`. keygate's rules protect
//! `/admin/**` with the scope `admin`; everything else needs the scope `open`. Two keys, one
//! holding each scope, send every target, so a disagreement shows either way:
//!
//! - the `open` key must never be served by an upstream's admin route (a bypass);
//! - the `admin` key must never be served by an upstream's open route (keygate authorized one
//!   path, the upstream served another).
//!
//! keygate refusing a target (400 `invalid_path` and the like) is always allowed; the
//! baselines at the top of the corpus check that the harness does see both routes.
//!
//! Each upstream is run in both `[paths] parameters` modes; nginx also case-insensitively
//! (`location ~*`) against `[paths] case_insensitive = true`. HTTP/1.1 goes over raw TCP so the
//! targets reach keygate byte for byte; the same targets go over HTTP/2 (prior knowledge)
//! where an `http::Uri` can carry them.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::free_port;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Which of the upstream's routes answered, or who refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Served {
    Admin,
    Open,
    /// keygate's own JSON refusal, by code.
    Refused(String),
    /// The upstream answered without either route (its own 400, 404, a redirect).
    Neither(u16),
}

/// One upstream server process, killed on drop.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nginx { case_insensitive: bool },
    Aiohttp,
    Flask,
    Starlette,
    Node,
}

fn fixture(name: &str) -> String {
    format!("{}/tests/paths/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Whether a tool the harness needs is installed; under CI it must be (scripts/test.sh
/// installs it), elsewhere a missing one skips that upstream with a note.
fn available(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{program} {probe:?} failed: scripts/test.sh installs what tests/paths.rs needs"
        );
        eprintln!("skipping: {program} {probe:?} is not available");
    }
    ok
}

impl Server {
    fn start(kind: Kind) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (name, mut cmd) = match kind {
            Kind::Nginx { case_insensitive } => {
                if !available("nginx", &["-v"]) {
                    return None;
                }
                let admin = if case_insensitive {
                    r#"location ~* ^/admin(/|$) { return 200 "route=admin\n"; }"#
                } else {
                    r#"location = /admin { return 200 "route=admin\n"; }
                       location /admin/ { return 200 "route=admin\n"; }"#
                };
                let conf = std::fs::read_to_string(fixture("nginx.conf"))
                    .unwrap()
                    .replace("@DIR@", dir.path().to_str().unwrap())
                    .replace("@PORT@", &port.to_string())
                    .replace("@ADMIN_LOCATION@", admin);
                let path = dir.path().join("nginx.conf");
                std::fs::write(&path, conf).unwrap();
                let mut cmd = Command::new("nginx");
                cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
                let name = if case_insensitive {
                    "nginx (case-insensitive)"
                } else {
                    "nginx"
                };
                (name, cmd)
            }
            Kind::Aiohttp | Kind::Flask | Kind::Starlette => {
                let (name, module, script) = match kind {
                    Kind::Aiohttp => ("aiohttp", "aiohttp", "aiohttp_app.py"),
                    Kind::Flask => ("flask", "flask", "flask_app.py"),
                    _ => ("starlette", "uvicorn", "starlette_app.py"),
                };
                if !available("python3", &["-c", &format!("import {module}")]) {
                    return None;
                }
                let mut cmd = Command::new("python3");
                cmd.arg(fixture(script)).arg(port.to_string());
                (name, cmd)
            }
            Kind::Node => {
                if !available("node", &["--version"]) {
                    return None;
                }
                let mut cmd = Command::new("node");
                cmd.arg(fixture("node_app.js")).arg(port.to_string());
                ("node", cmd)
            }
        };
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut server = Self {
            name,
            addr,
            child,
            _dir: dir,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited before listening: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{name} did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }
}

/// The corpus as raw request targets, with the generated variants.
fn corpus() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(fixture("corpus.txt")).unwrap();
    let mut targets: Vec<Vec<u8>> = Vec::new();
    let mut add = |t: Vec<u8>| {
        if !targets.contains(&t) {
            targets.push(t);
        }
    };
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let target = unescape(line);
        add(target.clone());
        let s = String::from_utf8_lossy(&target).into_owned();
        if s.contains("admin") {
            for case in ["Admin", "ADMIN", "aDmIn"] {
                add(s.replace("admin", case).into_bytes());
            }
        }
    }
    // Every letter of the protected segment encoded, in both hex cases.
    for (i, c) in "admin".char_indices() {
        for hex in [format!("%{:02x}", c as u8), format!("%{:02X}", c as u8)] {
            let segment = format!("{}{hex}{}", &"admin"[..i], &"admin"[i + 1..]);
            add(format!("/{segment}/x").into_bytes());
            add(format!("/open/../{segment}/x").into_bytes());
        }
    }
    add(b"/%61%64%6d%69%6e/x".to_vec());
    targets
}

fn unescape(line: &str) -> Vec<u8> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (b'\\', Some(b'x')) => {
                out.push(u8::from_str_radix(&line[i + 2..i + 4], 16).unwrap());
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn classify(status: u16, content_type: Option<&str>, body: &[u8]) -> Served {
    let body = text(body);
    if content_type == Some("application/json")
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
        && let Some(code) = json["error"]["code"].as_str()
    {
        return Served::Refused(code.to_owned());
    }
    match (status, body.as_str()) {
        (200, "route=admin\n") => Served::Admin,
        (200, "route=open\n") => Served::Open,
        _ => Served::Neither(status),
    }
}

/// One request over its own HTTP/1.1 connection, the target sent as given.
async fn over_http1(kg: SocketAddr, target: &[u8], key: &str) -> Served {
    let mut tcp = TcpStream::connect(kg).await.unwrap();
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: upstream\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    tcp.write_all(&req).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut raw))
        .await
        .expect("no answer within 20 s")
        .ok();
    let mut lines = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut lines);
    let Ok(httparse::Status::Complete(len)) = resp.parse(&raw) else {
        panic!("not a response to {:?}: {:?}", text(target), text(&raw));
    };
    let content_type = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
        .map(|h| text(h.value));
    let status = resp.code.unwrap();
    classify(status, content_type.as_deref(), &raw[len..])
}

/// The same over HTTP/2 with prior knowledge, for targets an `http::Uri` can carry.
async fn over_http2(kg: SocketAddr, target: &[u8], key: &str) -> Option<Served> {
    let target = std::str::from_utf8(target).ok()?;
    let uri: http::Uri = if target.starts_with('/') {
        format!("http://upstream{target}").parse().ok()?
    } else {
        target.parse().ok()?
    };
    let tcp = TcpStream::connect(kg).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri)
        .header("x-api-key", key)
        .body(())
        .unwrap();
    let (response, _) = client.send_request(req, true).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("no HTTP/2 answer within 20 s")
        .ok()?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Some(classify(status, content_type.as_deref(), &bytes))
}

const RULES: &str = r#"
[auth]
unmatched = "scope:open"

[[route]]
path = "/admin/**"
scopes = ["admin"]
"#;

struct Mismatch {
    upstream: &'static str,
    mode: String,
    protocol: &'static str,
    key: &'static str,
    target: String,
    served: Served,
}

/// Runs the corpus through one keygate (config `paths`) in front of `server`.
async fn differential(server: &Server, paths: &str, found: &mut Vec<Mismatch>) -> usize {
    let ws = Workspace::new(
        &format!("http://{}", server.addr),
        &format!("{RULES}\n[paths]\n{paths}\n"),
    );
    let (_, open) = ws.create_key(&["--scopes", "open"]);
    let (_, admin) = ws.create_key(&["--scopes", "admin"]);
    let kg = ws.serve();

    // The harness sees both routes, or it proves nothing.
    assert_eq!(
        over_http1(kg.public, b"/admin/x", &admin).await,
        Served::Admin,
        "{} baseline",
        server.name
    );
    assert_eq!(
        over_http1(kg.public, b"/open/x", &open).await,
        Served::Open,
        "{} baseline",
        server.name
    );
    assert_eq!(
        over_http1(kg.public, b"/admin/x", &open).await,
        Served::Refused("insufficient_permissions".into()),
        "{} baseline",
        server.name
    );

    let mut sent = 0;
    for target in corpus() {
        for (key_name, key, forbidden) in [
            ("open", &open, Served::Admin),
            ("admin", &admin, Served::Open),
        ] {
            let mut outcomes = vec![("HTTP/1.1", Some(over_http1(kg.public, &target, key).await))];
            outcomes.push(("HTTP/2", over_http2(kg.public, &target, key).await));
            for (protocol, served) in outcomes {
                let Some(served) = served else { continue };
                sent += 1;
                if served == forbidden {
                    found.push(Mismatch {
                        upstream: server.name,
                        mode: paths.replace('\n', " "),
                        protocol,
                        key: key_name,
                        target: format!("{:?}", text(&target)),
                        served,
                    });
                }
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_serves_exactly_what_keygate_authorized() {
    let kinds = [
        Kind::Nginx {
            case_insensitive: false,
        },
        Kind::Nginx {
            case_insensitive: true,
        },
        Kind::Aiohttp,
        Kind::Flask,
        Kind::Starlette,
        Kind::Node,
    ];
    let mut found = Vec::new();
    let mut sent = 0;
    for kind in kinds {
        let Some(server) = Server::start(kind) else {
            continue;
        };
        let case = if matches!(
            kind,
            Kind::Nginx {
                case_insensitive: true
            }
        ) {
            "case_insensitive = true"
        } else {
            "case_insensitive = false"
        };
        for parameters in ["reject", "strip"] {
            let paths = format!("parameters = \"{parameters}\"\n{case}");
            sent += differential(&server, &paths, &mut found).await;
        }
    }
    let report: Vec<String> = found
        .iter()
        .map(|m| {
            format!(
                "{} [{}] {}: key `{}` sent {} and was served by {:?}",
                m.upstream, m.mode, m.protocol, m.key, m.target, m.served
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "{} of {sent} requests reached a route keygate did not authorize:\n{}",
        report.len(),
        report.join("\n")
    );
    eprintln!("{sent} requests, every one served as authorized");
}

/// The reported bypass, pinned: a key without the `admin` scope sending `/%61dmin/x` (or
/// `/ad%6din/x`) reached a decoding upstream's admin route, with `unmatched = "deny"` and a
/// broader rule too, over both protocols.
#[tokio::test]
async fn encoded_letters_do_not_reach_a_protected_route() {
    let Some(server) = Server::start(Kind::Aiohttp) else {
        return;
    };
    let ws = Workspace::new(
        &format!("http://{}", server.addr),
        r#"
[auth]
unmatched = "deny"

[[route]]
path = "/admin/**"
scopes = ["admin"]

[[route]]
path = "/**"
scopes = ["read"]
"#,
    );
    let (_, reader) = ws.create_key(&["--scopes", "read"]);
    let (_, admin) = ws.create_key(&["--scopes", "admin"]);
    let kg = ws.serve();
    for target in ["/%61dmin/x", "/ad%6din/x", "/ADMIN/../%61dmin/x"] {
        let denied = Served::Refused("insufficient_permissions".into());
        assert_eq!(
            over_http1(kg.public, target.as_bytes(), &reader).await,
            denied,
            "{target}"
        );
        assert_eq!(
            over_http2(kg.public, target.as_bytes(), &reader).await,
            Some(denied),
            "{target}"
        );
        // Authorized under the rule of the path the upstream serves.
        assert_eq!(
            over_http1(kg.public, target.as_bytes(), &admin).await,
            Served::Admin,
            "{target}"
        );
    }
    assert_eq!(
        over_http1(kg.public, b"/open/x", &reader).await,
        Served::Open
    );
}

/// Lowercase methods never slip past a rule that lists methods (some servers fold `get` into
/// `GET`), and a method no rule for the path lists is refused even where `unmatched` allows.
#[tokio::test]
async fn methods_are_matched_as_the_upstream_would_and_never_fail_open() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(
        &upstream.url(),
        r#"
[auth]
unmatched = "allow"

[[route]]
path = "/admin/**"
methods = ["GET"]
scopes = ["admin:read"]
"#,
    );
    let (_, key) = ws.create_key(&["--scopes", "admin:read"]);
    let kg = ws.serve();
    let send = |method: &'static str| {
        let key = key.clone();
        async move {
            let mut tcp = TcpStream::connect(kg.public).await.unwrap();
            let req = format!(
                "{method} /admin/x HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            tcp.read_to_end(&mut raw).await.unwrap();
            text(&raw)
        }
    };
    let get = send("GET").await;
    assert!(get.starts_with("HTTP/1.1 200"), "{get}");
    let head = send("HEAD").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let delete = send("DELETE").await;
    assert!(delete.starts_with("HTTP/1.1 405"), "{delete}");
    assert!(delete.contains("method_not_allowed"), "{delete}");
    assert!(
        delete.to_ascii_lowercase().contains("allow: get, head"),
        "{delete}"
    );
    for lower in ["get", "Get", "delete"] {
        let reply = send(lower).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{lower}: {reply}");
        assert!(reply.contains("invalid_request"), "{lower}: {reply}");
    }
}
