//! CORS for public keys (issue 22.2), black-box: the real keygate binary in front of an
//! upstream that counts what reaches it, on both engines (keygate's own HTTP/1.1, and hyper's
//! when the upstream speaks HTTP/2), and a real browser: headless Chromium loads a page from
//! one loopback port (an origin the key allows) and from another (one it does not), and the
//! page calls keygate with the key through `fetch()`.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::{Reply, Workspace, request, request_h2};
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An upstream that counts the requests it is sent (HTTP/1.1 or HTTP/2 prior knowledge) and
/// how many of them were `OPTIONS`; it sends its own `Access-Control-Allow-Origin: *`, which
/// keygate must replace when it answers for CORS.
struct Counting {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    options: Arc<AtomicUsize>,
}

impl Counting {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let options = Arc::new(AtomicUsize::new(0));
        let (r, o) = (requests.clone(), options.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, o) = (r.clone(), o.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        if req.method() == Method::OPTIONS {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .header("access-control-allow-origin", "*")
                                    .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            options,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn options(&self) -> usize {
        self.options.load(Ordering::SeqCst)
    }
}

const CONFIG: &str = "[plans.web]\nper_minute = 100\n\n[plans.one]\nper_minute = 1\n\n[limits]\ndefault_plan = \"web\"\n";

/// A workspace in front of `upstream` (`http2`: the upstream speaks HTTP/2, so requests go
/// through hyper's engine), with a public key allowed from `origin`.
fn setup(upstream: &Counting, http2: bool, origin: &str, extra: &str) -> (Workspace, String) {
    let ws = Workspace::new(&upstream.url(), &format!("{CONFIG}{extra}"));
    if http2 {
        let config = std::fs::read_to_string(ws.config()).unwrap();
        let config = config.replacen("[upstream]\n", "[upstream]\nhttp2 = true\n", 1);
        std::fs::write(ws.config(), config).unwrap();
    }
    let (_, key) = ws.create_key(&["--type", "public", "--allow-origin", origin]);
    (ws, key)
}

async fn call(h2: bool, method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    match h2 {
        true => request_h2(req).await,
        false => request(req).await,
    }
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.headers.get(name).map(|v| v.to_str().unwrap())
}

/// Both engines, one table: the preflight answered by keygate (never forwarded, no key), the
/// actual request's CORS headers in place of the upstream's, refusals a page can read, and a
/// disallowed origin refused without `Access-Control-Allow-Origin`.
#[tokio::test]
async fn preflights_and_responses_on_both_engines() {
    const APP: &str = "https://app.example.com";
    for (engine, upstream_h2, client_h2) in [
        ("keygate's HTTP/1.1", false, false),
        ("hyper, HTTP/2 client", false, true),
        ("hyper, HTTP/2 upstream", true, false),
    ] {
        let upstream = Counting::start().await;
        let (ws, key) = setup(&upstream, upstream_h2, "https://*.example.com", "");
        let (_, one) = ws.create_key(&["--type", "public", "--allow-origin", APP, "--plan", "one"]);
        let kg = ws.serve();
        let url = kg.url("/v1/things");

        // The preflight: no key, answered 204 by keygate.
        let pre = call(
            client_h2,
            Method::OPTIONS,
            &url,
            &[
                ("origin", APP),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-api-key"),
            ],
        )
        .await;
        assert_eq!(pre.status, 204, "{engine}: {}", common::text(&pre.body));
        assert_eq!(
            header(&pre, "access-control-allow-origin"),
            Some(APP),
            "{engine}"
        );
        assert_eq!(
            header(&pre, "access-control-allow-methods"),
            Some("GET, HEAD")
        );
        assert!(
            header(&pre, "access-control-allow-headers")
                .unwrap()
                .contains("x-api-key"),
            "{engine}"
        );
        assert_eq!(header(&pre, "vary"), Some("Origin"), "{engine}");
        assert_eq!(
            upstream.requests(),
            0,
            "{engine}: a preflight reached the upstream"
        );

        // The actual request, from an allowed origin: keygate's CORS headers, not the
        // upstream's `*`.
        let ok = call(
            client_h2,
            Method::GET,
            &url,
            &[("origin", APP), ("x-api-key", &key)],
        )
        .await;
        assert_eq!(ok.status, 200, "{engine}");
        assert_eq!(
            header(&ok, "access-control-allow-origin"),
            Some(APP),
            "{engine}"
        );
        assert_eq!(
            ok.headers
                .get_all("access-control-allow-origin")
                .iter()
                .count(),
            1,
            "{engine}"
        );
        assert!(
            header(&ok, "access-control-expose-headers")
                .unwrap()
                .contains("x-ratelimit-remaining"),
            "{engine}"
        );
        assert!(
            ok.headers.get_all("vary").iter().any(|v| v == "Origin"),
            "{engine}"
        );
        assert_eq!(header(&ok, "x-ratelimit-remaining"), Some("99"), "{engine}");
        assert_eq!(upstream.requests(), 1, "{engine}");

        // Refused before the key is known: still readable by the page.
        let missing = call(client_h2, Method::GET, &url, &[("origin", APP)]).await;
        assert_eq!(missing.error_code(), "missing_api_key", "{engine}");
        assert_eq!(header(&missing, "access-control-allow-origin"), Some(APP));
        assert!(header(&missing, "access-control-expose-headers").is_some());

        // A public key writing: refused, readable.
        let write = call(
            client_h2,
            Method::POST,
            &url,
            &[("origin", APP), ("x-api-key", &key)],
        )
        .await;
        assert_eq!(write.error_code(), "insufficient_permissions", "{engine}");
        assert_eq!(header(&write, "access-control-allow-origin"), Some(APP));

        // Refused by its rate limit: the page can read the refusal and its rate-limit headers.
        let mut limited = Vec::new();
        for _ in 0..2 {
            limited.push(
                call(
                    client_h2,
                    Method::GET,
                    &url,
                    &[("origin", APP), ("x-api-key", &one)],
                )
                .await,
            );
        }
        assert_eq!(limited[0].status, 200, "{engine}");
        let over = &limited[1];
        assert_eq!(over.error_code(), "rate_limit_exceeded", "{engine}");
        assert_eq!(
            header(over, "access-control-allow-origin"),
            Some(APP),
            "{engine}"
        );
        assert!(
            header(over, "access-control-expose-headers")
                .unwrap()
                .contains("x-ratelimit-remaining"),
            "{engine}"
        );
        assert_eq!(header(over, "x-ratelimit-remaining"), Some("0"), "{engine}");
        assert_eq!(upstream.requests(), 2, "{engine}");

        // A disallowed origin: refused with JSON, and nothing a browser would hand the page.
        for evil in ["https://evil.io", "https://example.com", "null"] {
            let no = call(
                client_h2,
                Method::GET,
                &url,
                &[("origin", evil), ("x-api-key", &key)],
            )
            .await;
            assert_eq!(no.status, 403, "{engine} {evil}");
            assert_eq!(no.error_code(), "origin_not_allowed", "{engine} {evil}");
            assert_eq!(
                header(&no, "access-control-allow-origin"),
                None,
                "{engine} {evil}"
            );
        }

        // No Origin (a server, curl): no CORS headers, the upstream's own go through.
        let plain = call(client_h2, Method::GET, &url, &[("x-api-key", &key)]).await;
        assert_eq!(plain.status, 200);
        assert_eq!(
            header(&plain, "access-control-allow-origin"),
            Some("*"),
            "{engine}"
        );
        assert_eq!(upstream.requests(), 3, "{engine}");
        assert_eq!(upstream.options(), 0, "{engine}");
    }
}

/// A secret key's `Origin` is ignored (no CORS headers: the browser hides the answer), a public
/// key with no origins of its own takes `[cors] allow_origins`, and `preflight = "listed"`
/// answers only those.
#[tokio::test]
async fn config_default_and_listed_preflights() {
    let upstream = Counting::start().await;
    let ws = Workspace::new(
        &upstream.url(),
        &format!(
            "{CONFIG}[cors]\nallow_origins = [\"https://app.example.com\"]\npreflight = \
             \"listed\"\nmax_age = \"1m\"\n"
        ),
    );
    let (_, public) = ws.create_key(&["--type", "public"]);
    let (_, secret) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/things");
    let pre = |origin: &'static str| {
        let url = url.clone();
        async move {
            call(
                false,
                Method::OPTIONS,
                &url,
                &[("origin", origin), ("access-control-request-method", "GET")],
            )
            .await
        }
    };
    let listed = pre("https://app.example.com").await;
    assert_eq!(listed.status, 204);
    assert_eq!(header(&listed, "access-control-max-age"), Some("60"));
    let other = pre("https://evil.io").await;
    assert_eq!(other.error_code(), "origin_not_allowed");
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    let ok = call(
        false,
        Method::GET,
        &url,
        &[
            ("origin", "https://app.example.com"),
            ("x-api-key", &public),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        header(&ok, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let no = call(
        false,
        Method::GET,
        &url,
        &[("origin", "https://evil.io"), ("x-api-key", &public)],
    )
    .await;
    assert_eq!(no.error_code(), "origin_not_allowed");

    let sk = call(
        false,
        Method::GET,
        &url,
        &[
            ("origin", "https://app.example.com"),
            ("x-api-key", &secret),
        ],
    )
    .await;
    assert_eq!(sk.status, 200);
    assert_eq!(
        header(&sk, "access-control-allow-origin"),
        Some("*"),
        "the upstream's own"
    );
    assert_eq!(upstream.options(), 0);
}

#[test]
fn allow_origin_is_checked_at_creation() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    for (args, needle) in [
        (
            &["--type", "public", "--allow-origin", "app.example.com"][..],
            "--allow-origin \"app.example.com\"",
        ),
        (
            &["--type", "public", "--allow-origin", "https://*.com"][..],
            "registrable domain",
        ),
        (
            &["--allow-origin", "https://app.example.com"][..],
            "only public keys",
        ),
    ] {
        let mut all = vec!["keys", "create", "--name", "k", "--scopes", "*"];
        all.extend_from_slice(args);
        let out = ws.cli(&all);
        assert!(!out.status.success(), "{args:?}");
        let err = common::text(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Stored only when given: old records and keys without origins stay as they were.
    let (_, _) = ws.create_key(&["--type", "public"]);
    let file = std::fs::read_to_string(ws.keys_file()).unwrap();
    assert!(!file.contains("allowed_origins"), "{file}");
    ws.create_key(&[
        "--type",
        "public",
        "--allow-origin",
        "https://*.example.com",
    ]);
    let file = std::fs::read_to_string(ws.keys_file()).unwrap();
    assert!(file.contains("https://*.example.com"), "{file}");
}

// ---------------------------------------------------------------------------------------------
// The browser.

/// Serves one HTML page (the same on every path) on a free loopback port: a different port
/// is a different origin.
async fn page_server(html: String) -> std::net::SocketAddr {
    page_server_on(0, html).await
}

/// The page: calls keygate with the key in `x-api-key` (so the browser preflights) and writes
/// what it could read into `<pre id="result">`.
fn page(api: &str, key: &str) -> String {
    format!(
        r#"<!doctype html><html><body><pre id="result">pending</pre><script>
fetch({api:?}, {{ headers: {{ "x-api-key": {key:?} }} }})
  .then(async r => {{
    const body = await r.text();
    document.getElementById("result").textContent =
      "status=" + r.status + " remaining=" + r.headers.get("x-ratelimit-remaining") + " body=" + body;
  }})
  .catch(e => {{ document.getElementById("result").textContent = "failed=" + e.name; }});
</script></body></html>"#
    )
}

/// Loads `url` in headless Chromium and returns the text of `#result` once the page's fetch
/// has settled (virtual time waits for pending network requests), or panics after 60 s.
fn browse(url: &str) -> String {
    let out = common::chromium(url, &["--virtual-time-budget=15000"]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = dom.find("<pre id=\"result\">").unwrap_or_else(|| {
        let console = String::from_utf8_lossy(&out.stderr);
        panic!("no result in the DOM: {dom}; chromium said: {console}")
    });
    let rest = &dom[start + "<pre id=\"result\">".len()..];
    rest[..rest.find("</pre>").unwrap()].to_owned()
}

/// A real browser: the allowed origin's page reads the response and `X-RateLimit-Remaining`;
/// the other origin's page gets a failed fetch; neither preflight reached the upstream. Both
/// engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_with_a_public_key() {
    for upstream_h2 in [false, true] {
        let upstream = Counting::start().await;
        // Ports first (the origin is in the key), pages after keygate is up.
        let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let allowed_port = allowed.local_addr().unwrap().port();
        drop(allowed);
        let origin = format!("http://127.0.0.1:{allowed_port}");
        let (ws, key) = setup(&upstream, upstream_h2, &origin, "");
        let kg = ws.serve();
        let html = page(&kg.url("/v1/things"), &key);

        let good = page_server_on(allowed_port, html.clone()).await;
        let bad = page_server(html).await;

        let read = tokio::task::spawn_blocking(move || browse(&format!("http://{good}/")))
            .await
            .unwrap();
        assert!(
            read.starts_with("status=200 remaining=99 body="),
            "upstream h2 {upstream_h2}: the allowed origin read {read:?}"
        );
        assert!(read.contains("ok"), "{read}");
        assert_eq!(
            upstream.requests(),
            1,
            "the actual request, and nothing else"
        );

        let read = tokio::task::spawn_blocking(move || {
            browse(&format!("http://localhost:{}/", bad.port()))
        })
        .await
        .unwrap();
        assert_eq!(
            read, "failed=TypeError",
            "upstream h2 {upstream_h2}: another origin"
        );
        assert_eq!(
            upstream.requests(),
            1,
            "a refused origin reached the upstream"
        );
        assert_eq!(upstream.options(), 0, "a preflight reached the upstream");
        // Both pages' preflights were answered by keygate itself (two 2xx besides the one
        // forwarded), and the other origin's actual request refused.
        let answered = kg
            .metric("keygate_requests_total{class=\"2xx\",decision=\"allowed\"}")
            .await;
        assert_eq!(answered, Some(3.0), "logs: {}", kg.all_logs());
        let refused = kg
            .metric("keygate_requests_total{class=\"4xx\",decision=\"origin_not_allowed\"}")
            .await;
        assert_eq!(refused, Some(1.0));
    }
}

/// [`page_server`] on a given port (the allowed origin's, named in the key before it serves).
async fn page_server_on(port: u16, html: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let html = Bytes::from(html);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let html = html.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .body(Full::new(html))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
