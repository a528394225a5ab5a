//! Black-box tests of the request path: the real binary, the echo upstream, keys created
//! through the CLI.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};

async fn setup(extra_toml: &str) -> (Upstream, Workspace) {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(&upstream.url(), extra_toml);
    (upstream, ws)
}

#[tokio::test]
async fn each_credential_header_is_accepted_and_never_forwarded() {
    let (_up, ws) = setup("").await;
    let (id, key) = ws.create_key(&["--owner", "acme", "--scopes", "content:read,analytics:read"]);
    let kg = ws.serve();
    let bearer = format!("Bearer {key}");
    for (header, value) in [
        ("authorization", bearer.as_str()),
        ("x-api-key", key.as_str()),
        ("project-access-token", key.as_str()),
    ] {
        let reply = get(&kg.url("/v1/things?page=2"), &[(header, value)]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{header}: {}",
            text(&reply.body)
        );
        let seen = reply.json();
        assert_eq!(seen["path"], "/v1/things");
        assert_eq!(seen["query"], "page=2");
        let headers = reply.upstream_headers();
        assert!(
            !headers.contains_key(header),
            "{header} reached the upstream"
        );
        assert!(
            !text(&reply.body).contains(&key),
            "the key reached the upstream"
        );
        assert_eq!(headers["x-keygate-key-id"][0], id.as_str());
        assert_eq!(headers["x-keygate-owner"][0], "acme");
        assert_eq!(
            headers["x-keygate-scopes"][0],
            "content:read,analytics:read"
        );
        assert_eq!(headers["x-keygate-env"][0], "live");
        assert_eq!(headers["x-forwarded-for"][0], "127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"][0], "http");
        assert_eq!(headers["x-forwarded-host"][0], kg.public.to_string());
        // Host is preserved by default.
        assert_eq!(headers["host"][0], kg.public.to_string());
    }
    assert!(
        !kg.all_logs().contains(&key),
        "the secret appeared in the logs"
    );
}

/// A key sent where keygate does not read keys from (another header, another scheme, a
/// cookie, inside Basic credentials) is still never handed to the upstream, over either
/// engine, while the upstream's own credentials pass.
#[tokio::test]
async fn a_key_in_any_other_header_or_scheme_never_reaches_the_upstream() {
    let (_up, ws) =
        setup("[auth]\nunmatched = \"allow\"\ncredential_headers = [\"x-api-key\"]\n").await;
    let (_, key) = ws.create_key(&[]);
    let (_, other) = ws.create_key(&[]);
    let kg = ws.serve();
    let bearer = format!("Bearer {other}");
    let token = format!("Token {other}");
    let cookie = format!("session=1; api_key={other}");
    let basic = {
        use base64::Engine;
        let plain = format!("client:{other}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )
    };
    for (header, value) in [
        ("authorization", bearer.as_str()),
        ("authorization", token.as_str()),
        ("authorization", basic.as_str()),
        ("cookie", cookie.as_str()),
        ("project-access-token", other.as_str()),
        ("x_api_key", other.as_str()),
        ("api-key", other.as_str()),
    ] {
        for http2 in [false, true] {
            let mut req = Request::get(kg.url("/v1/x"))
                .header("x-api-key", &key)
                .header(header, value);
            if http2 {
                req = req.version(http::Version::HTTP_2);
            }
            let reply = if http2 {
                request_h2(req.body(http_body_util::Full::new(Bytes::new())).unwrap()).await
            } else {
                request(req.body(http_body_util::Full::new(Bytes::new())).unwrap()).await
            };
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{header} {}",
                text(&reply.body)
            );
            let body = text(&reply.body);
            assert!(
                !body.contains(&other) && !body.contains(&key),
                "{header} carried a key upstream (HTTP/2: {http2}): {body}"
            );
        }
    }
    // The upstream's own Bearer token is not ours to take.
    let reply = get(
        &kg.url("/v1/x"),
        &[
            ("x-api-key", &key),
            ("authorization", "Bearer upstream.jwt.token"),
        ],
    )
    .await;
    assert_eq!(
        reply.upstream_headers()["authorization"][0],
        "Bearer upstream.jwt.token"
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let req = Request::get(kg.url("/h2"))
        .header("x-api-key", &key)
        .body(Default::default())
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
}

#[tokio::test]
async fn rejections_use_the_json_error_table() {
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&[]);
    let (_, other) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");

    let missing = get(&url, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.error_code(), "missing_api_key");
    assert!(missing.headers.contains_key("www-authenticate"));

    let basic = get(&url, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(basic.error_code(), "missing_api_key");

    // Well-formed, valid checksum, but no such key.
    let unknown = keygate::credential::generate_key(
        "kg",
        keygate::keys::KeyType::Secret,
        keygate::keys::Environment::LIVE,
    )
    .unwrap();
    let reply = get(&url, &[("x-api-key", &unknown)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "invalid_api_key");

    let reply = get(&url, &[("x-api-key", "kg_sk_live_short")]).await;
    assert_eq!(reply.error_code(), "invalid_api_key");

    // Over auth.max_key_length: refused before any hashing or lookup.
    let long = "k".repeat(4 * 1024);
    let reply = get(&url, &[("x-api-key", &long)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "invalid_api_key");
    assert!(!text(&reply.body).contains("kkkk"), "the key was echoed");

    // Over server.max_header_bytes (32 KiB by default): 431, still JSON.
    let giant = "k".repeat(64 * 1024);
    let reply = get(&url, &[("x-api-key", &giant)]).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(reply.error_code(), "request_header_fields_too_large");
    assert!(!text(&reply.body).contains("kkkk"), "the key was echoed");

    let bearer = format!("Bearer {other}");
    let reply = get(&url, &[("x-api-key", &key), ("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "conflicting_api_keys");
    assert!(!text(&reply.body).contains(&key) && !text(&reply.body).contains(&other));

    let same = format!("Bearer {key}");
    let reply = get(&url, &[("x-api-key", &key), ("authorization", &same)]).await;
    assert_eq!(reply.status, StatusCode::OK);

    let logs = kg.all_logs();
    assert!(!logs.contains(&key) && !logs.contains(&other) && !logs.contains(&unknown));
}

#[tokio::test]
async fn a_bad_checksum_is_refused_before_any_lookup() {
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&[]);
    // Plant a record under the hash of a string whose checksum is wrong. If the proxy looked
    // it up, it would find an active key and answer 200.
    let mut forged = key.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.keys_file()).unwrap()).unwrap();
    let mut entry = doc["keys"][0].clone();
    entry["hash"] = keygate::keys::KeyHash::of(&forged).to_hex().into();
    entry["record"]["id"] = "key_forged".into();
    doc["keys"].as_array_mut().unwrap().push(entry);
    std::fs::write(ws.keys_file(), serde_json::to_vec(&doc).unwrap()).unwrap();

    let kg = ws.serve();
    let reply = get(&kg.url("/"), &[("x-api-key", &forged)]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "invalid_api_key");
    let reply = get(&kg.url("/"), &[("x-api-key", &key)]).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the planted file is otherwise valid"
    );
}

#[tokio::test]
async fn revocation_through_the_cli_takes_effect_within_a_second() {
    let (_up, ws) = setup("").await;
    let (id, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    assert_eq!(
        get(&url, &[("x-api-key", &key)]).await.status,
        StatusCode::OK
    );

    let out = ws.cli(&["keys", "revoke", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let took = eventually(Duration::from_secs(3), || async {
        get(&url, &[("x-api-key", &key)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await
    .expect("revoked key still admitted after 3 s");
    eprintln!("revocation reached the proxy in {took:?}");
    // The reload polls every 250 ms; allow generous scheduling slack on a busy machine.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let reply = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(reply.error_code(), "invalid_api_key");

    // A key created while the proxy runs starts working the same way.
    let (_, fresh) = ws.create_key(&[]);
    eventually(Duration::from_secs(3), || async {
        get(&url, &[("x-api-key", &fresh)]).await.status == StatusCode::OK
    })
    .await
    .expect("new key not picked up");
}

#[tokio::test]
async fn expired_keys_get_expired_api_key() {
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&["--expires-in", "1s"]);
    let kg = ws.serve();
    let url = kg.url("/");
    let reply = eventually(Duration::from_secs(5), || async {
        get(&url, &[("x-api-key", &key)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(reply.is_some(), "key never expired");
    let reply = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(reply.error_code(), "expired_api_key");
}

#[tokio::test]
async fn spoofed_identity_headers_are_stripped() {
    let (_up, ws) = setup("[auth]\nunmatched = \"allow\"\npublic_paths = [\"/open/**\"]\n").await;
    let (id, key) = ws.create_key(&["--owner", "real"]);
    let kg = ws.serve();
    let spoof = [
        ("x-keygate-key-id", "key_admin"),
        ("x-keygate-owner", "someone-else"),
        ("x-keygate-scopes", "*"),
        ("x-keygate-env", "live"),
        ("x-keygate-made-up", "1"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
    ];
    let mut headers = spoof.to_vec();
    headers.push(("x-api-key", &key));
    let reply = get(&kg.url("/v1/x"), &headers).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.upstream_headers();
    assert_eq!(seen["x-keygate-key-id"], serde_json::json!([id]));
    assert_eq!(seen["x-keygate-owner"], serde_json::json!(["real"]));
    assert!(!seen.contains_key("x-keygate-made-up"));
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));

    // Public paths carry no identity at all, whatever the client claims.
    let reply = get(&kg.url("/open/health"), &spoof).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.upstream_headers();
    assert!(
        seen.keys().all(|k| !k.starts_with("x-keygate-")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn public_paths_need_no_key_and_never_forward_one() {
    let (_up, ws) =
        setup("[auth]\nunmatched = \"allow\"\npublic_paths = [\"/status\", \"/docs/**\"]\n").await;
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    for path in ["/status", "/docs", "/docs/a/b"] {
        let reply = get(&kg.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    for path in ["/status/x", "/statusx", "/documents"] {
        let reply = get(&kg.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let reply = get(&kg.url("/status"), &[("x-api-key", &key)]).await;
    assert!(!reply.upstream_headers().contains_key("x-api-key"));
}

#[tokio::test]
async fn ip_allowlist_uses_the_tcp_peer_not_x_forwarded_for() {
    let (_up, ws) = setup("").await;
    let (_, outside) = ws.create_key(&["--allow-ip", "10.0.0.0/8"]);
    let (_, inside) = ws.create_key(&["--allow-ip", "127.0.0.0/8", "--allow-ip", "::1/128"]);
    let kg = ws.serve();
    let reply = get(
        &kg.url("/"),
        &[("x-api-key", &outside), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "ip_not_allowed");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1")
    );
    let reply = get(&kg.url("/"), &[("x-api-key", &inside)]).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_trusted_proxy_may_name_the_client() {
    let (_up, ws) = setup("[network]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let (_, key) = ws.create_key(&["--allow-ip", "10.0.0.0/8"]);
    let kg = ws.serve();
    let reply = get(
        &kg.url("/"),
        &[("x-api-key", &key), ("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    assert_eq!(
        reply.upstream_headers()["x-forwarded-for"],
        serde_json::json!(["10.1.2.3, 127.0.0.1"])
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    // A port with nothing listening: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ws = Workspace::new(&format!("http://{dead}"), "");
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let reply = get(&kg.url("/"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unavailable");

    // An upstream that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let url = format!("http://{silent_addr}");
    let kg = ws.serve_with_env(&[
        ("KEYGATE_UPSTREAM__URL", url.as_str()),
        ("KEYGATE_UPSTREAM__TIMEOUT", "300ms"),
    ]);
    let reply = get(&kg.url("/"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "upstream_timeout");
    held.abort();
}

#[tokio::test]
async fn a_100_mb_upload_streams_through_without_being_buffered() {
    const SIZE: usize = 100 * 1024 * 1024;
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let before = kg.peak_rss();
    let req = Request::builder()
        .method(Method::POST)
        .uri(kg.url("/upload"))
        .header("x-api-key", &key)
        .body(PatternBody::new(SIZE))
        .unwrap();
    let reply = request(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["body_len"], SIZE);
    assert_eq!(seen["body_sha256"], PatternBody::sha256_hex(SIZE));
    let peak = kg.peak_rss();
    eprintln!(
        "proxy peak RSS: before {} MiB, after {} MiB",
        before >> 20,
        peak >> 20
    );
    // Buffering would add ~100 MiB; streaming adds a few socket buffers' worth.
    assert!(
        peak - before < 32 * 1024 * 1024,
        "peak RSS grew {} MiB for a 100 MiB body",
        (peak - before) >> 20
    );
}

#[tokio::test]
async fn a_corrupt_keys_file_keeps_the_last_good_keys() {
    let (_up, ws) = setup("").await;
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/");
    assert_eq!(
        get(&url, &[("x-api-key", &key)]).await.status,
        StatusCode::OK
    );

    std::fs::write(
        ws.keys_file(),
        b"{\"version\": 1, \"keys\": [ {\"hash\": \"ab",
    )
    .unwrap();
    let logged = eventually(Duration::from_secs(3), || async {
        kg.all_logs().contains("keys file not reloaded")
    })
    .await;
    assert!(logged.is_some(), "no error logged: {}", kg.all_logs());
    assert_eq!(
        get(&url, &[("x-api-key", &key)]).await.status,
        StatusCode::OK
    );

    // A good file again is picked up: create through the CLI (which refuses to edit a corrupt
    // file), so restore by hand first.
    std::fs::write(ws.keys_file(), b"{\"version\": 1, \"keys\": []}").unwrap();
    eventually(Duration::from_secs(3), || async {
        get(&url, &[("x-api-key", &key)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await
    .expect("the repaired (now empty) file was not loaded");
}

#[tokio::test]
async fn admin_probes_live_on_the_admin_port_only() {
    let (_up, ws) = setup("").await;
    let kg = ws.serve();
    let health = get(&kg.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = get(&kg.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK);
    // On the public port /healthz is just another upstream path, and needs a key.
    let public = get(&kg.url("/healthz"), &[]).await;
    assert_eq!(public.status, StatusCode::UNAUTHORIZED);
    assert_ne!(kg.public, kg.admin);
}

#[tokio::test]
async fn sigterm_stops_the_proxy_cleanly() {
    let (_up, ws) = setup("").await;
    let mut kg = ws.serve();
    let pid = kg.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    kg.exits_cleanly_within(Duration::from_secs(10)).await;
}
