//! Access tokens (issue 22.1, the Railz scheme): `POST /oauth/token` with client credentials
//! (RFC 6749 §4.4), then `Authorization: Bearer <token>` authorized and limited as its key.
//! The endpoint is answered on hyper's engine, to which keygate's own HTTP/1.1 engine hands
//! such a connection; tokens are used over both.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use common::redis::RedisServer;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

const SECRET: &str = "a-token-secret-of-at-least-thirty-two-random-bytes\n";

fn tokens_toml(lifetime: &str) -> String {
    format!("[tokens]\nsecret_files = [\"token.secret\"]\nlifetime = \"{lifetime}\"\n")
}

fn workspace(upstream: &str, extra: &str) -> Workspace {
    let ws = Workspace::new(upstream, extra);
    std::fs::write(ws.dir.path().join("token.secret"), SECRET).unwrap();
    ws
}

/// `POST /oauth/token` over HTTP/2 with `body` and, if given, `id:secret` as Basic.
async fn ask(kg: &Keygate, basic: Option<(&str, &str)>, body: &str) -> Reply {
    let mut req = Request::post(kg.url("/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        req = req.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    request_h2(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
}

async fn token(kg: &Keygate, id: &str, key: &str, scope: Option<&str>) -> String {
    let body = match scope {
        Some(s) => format!("grant_type=client_credentials&scope={s}"),
        None => "grant_type=client_credentials".into(),
    };
    let reply = ask(kg, Some((id, key)), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const RULES: &str = r#"
[auth]
unmatched = "allow"

[[route]]
path = "/content/**"
methods = ["GET", "HEAD"]
scopes = ["content:read", "content:write"]

[[route]]
path = "/content/**"
scopes = ["content:write"]

[plans.small]
per_minute = 4

[log]
access = true
"#;

#[tokio::test]
async fn client_credentials_give_a_bearer_token_that_acts_as_its_key() {
    let up = Upstream::start().await;
    let ws = workspace(&up.url(), &format!("{RULES}\n{}", tokens_toml("1h")));
    let (id, key) = ws.create_key(&["--scopes", "content:read,content:write", "--plan", "small"]);
    let (other_id, _) = ws.create_key(&[]);
    // Railway-style project keys may only arrive in Project-Access-Token: no Bearer token.
    let (project_id, project) = ws.create_key(&["--header", "project-access-token"]);
    let (either_id, either) = ws.create_key(&[
        "--header",
        "project-access-token",
        "--header",
        "authorization",
    ]);
    let kg = ws.serve();

    // Basic credentials, as curl -u sends them.
    let reply = ask(&kg, Some((&id, &key)), "grant_type=client_credentials").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    assert_eq!(reply.headers["cache-control"], "no-store");
    let json = reply.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    let basic_token = json["access_token"].as_str().unwrap().to_owned();
    assert!(basic_token.starts_with("kg_at_"), "{basic_token}");

    // The same with curl itself, as Railz documents it (`curl -u id:secret -d …`).
    if let Some(curl) = common::tools::tool("curl") {
        let out = std::process::Command::new(curl)
            .args(["-s", "--max-time", "10", "--http2-prior-knowledge", "-u"])
            .arg(format!("{id}:{key}"))
            .args(["-d", "grant_type=client_credentials"])
            .arg(kg.url("/oauth/token"))
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
        assert!(
            json["access_token"].as_str().unwrap().starts_with("kg_at_"),
            "{json}"
        );
    }

    // Over HTTP/1.1 as well (keygate's own engine hands the connection to the one that
    // answers it).
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{key}"));
    let reply = send(
        Method::POST,
        &kg.url("/oauth/token"),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Basic {basic}")),
        ],
        Bytes::from("grant_type=client_credentials"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    assert!(
        reply.json()["access_token"]
            .as_str()
            .unwrap()
            .starts_with("kg_at_")
    );
    // A spelling that only normalizes to the endpoint is refused, never forwarded.
    let reply = send(
        Method::POST,
        &kg.url("/oauth/%74oken"),
        &[("content-type", "application/x-www-form-urlencoded")],
        Bytes::from("grant_type=client_credentials"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_request");

    // Form credentials.
    let reply = ask(
        &kg,
        None,
        &format!("grant_type=client_credentials&client_id={id}&client_secret={key}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    let form_token = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_ne!(form_token, basic_token);

    // The token is the key: its identity upstream, never the token itself (over HTTP/1.1).
    let reply = get(
        &kg.url("/content/1"),
        &[("authorization", &bearer(&basic_token))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
    let seen = reply.upstream_headers();
    assert_eq!(seen["x-keygate-key-id"][0], id.as_str());
    assert!(!text(&reply.body).contains(&basic_token));
    let reply = send(
        Method::POST,
        &kg.url("/content/1"),
        &[("authorization", &bearer(&form_token))],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));

    // RFC 6749 §5.2 refusals.
    type Row<'a> = (&'a str, Option<(&'a str, &'a str)>, String, u16, &'a str);
    let rows: Vec<Row> = vec![
        (
            "wrong secret",
            Some((&id, "kg_sk_live_nope")),
            "grant_type=client_credentials".into(),
            401,
            "invalid_client",
        ),
        (
            "another key's id",
            Some((&other_id, &key)),
            "grant_type=client_credentials".into(),
            401,
            "invalid_client",
        ),
        (
            "no credentials",
            None,
            "grant_type=client_credentials".into(),
            401,
            "invalid_client",
        ),
        (
            "password grant",
            Some((&id, &key)),
            "grant_type=password".into(),
            400,
            "unsupported_grant_type",
        ),
        (
            "no grant type",
            Some((&id, &key)),
            String::new(),
            400,
            "invalid_request",
        ),
        (
            "a scope it lacks",
            Some((&id, &key)),
            "grant_type=client_credentials&scope=billing:read".into(),
            400,
            "invalid_scope",
        ),
        (
            "a key bound to Project-Access-Token",
            Some((&project_id, &project)),
            "grant_type=client_credentials".into(),
            400,
            "unauthorized_client",
        ),
    ];
    for (name, basic, body, status, code) in rows {
        let reply = ask(&kg, basic, &body).await;
        assert_eq!(
            reply.status.as_u16(),
            status,
            "{name}: {}",
            text(&reply.body)
        );
        assert_eq!(reply.json()["error"], code, "{name}");
        if status == 401 {
            assert_eq!(
                reply.headers["www-authenticate"], "Basic realm=\"keygate\"",
                "{name}"
            );
        }
    }

    // A key that may also arrive as Bearer may trade itself for a token.
    let reply = ask(
        &kg,
        Some((&either_id, &either)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));

    // Scope narrowing: a content:read token reads but cannot write, though its key can.
    let reader = token(&kg, &id, &key, Some("content:read")).await;
    let reply = send(
        Method::POST,
        &kg.url("/content/1"),
        &[("authorization", &bearer(&reader))],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "insufficient_permissions");

    // Malformed tokens are refused before any lookup.
    let reads = kg.metric("keygate_key_store_reads_total").await;
    let mut flipped = basic_token.clone().into_bytes();
    let at = "kg_at_".len() + 5;
    flipped[at] = if flipped[at] == b'x' { b'y' } else { b'x' };
    let flipped = String::from_utf8(flipped).unwrap();
    for bad in [
        flipped.as_str(),
        &basic_token[..basic_token.len() - 2],
        "kg_at_short",
    ] {
        let reply = get(&kg.url("/x"), &[("authorization", &bearer(bad))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.error_code(), "invalid_token");
    }
    assert_eq!(kg.metric("keygate_key_store_reads_total").await, reads);

    // Rate-limited as the key: the plan allows 4 a minute, and the key, its tokens and the
    // narrowed token share them (4 used above: 2 + the refused write counts nothing).
    let mut statuses = Vec::new();
    for credential in [bearer(&basic_token), key.clone(), bearer(&reader)] {
        let header = if credential.starts_with("Bearer") {
            "authorization"
        } else {
            "x-api-key"
        };
        statuses.push(
            get(&kg.url("/x"), &[(header, &credential)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 429], "the key's minute is shared");

    // Neither the tokens nor the key ever reach a log line.
    let logs = kg.all_logs();
    assert!(logs.contains("keygate::access"), "access log on");
    for secret in [&basic_token, &form_token, &reader, &key] {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
    }
}

#[tokio::test]
async fn a_token_dies_with_its_lifetime_and_with_its_key() {
    let up = Upstream::start().await;
    let ws = workspace(&up.url(), &tokens_toml("3s"));
    let (id, key) = ws.create_key(&[]);
    let (suspended_id, suspended) = ws.create_key(&[]);
    let kg = ws.serve();
    let short = token(&kg, &id, &key, None).await;
    // Alive for its lifetime (3 s: room for a slow machine), then refused as expired.
    assert_eq!(
        get(&kg.url("/x"), &[("authorization", &bearer(&short))])
            .await
            .status,
        StatusCode::OK,
        "a fresh token is refused"
    );
    let expired = eventually(Duration::from_secs(10), || async {
        let reply = get(&kg.url("/x"), &[("authorization", &bearer(&short))]).await;
        reply.status == StatusCode::UNAUTHORIZED && reply.error_code() == "expired_token"
    })
    .await;
    assert!(expired.is_some(), "the 3 s token never expired");

    // Suspended key: its live token is refused, and no new one is issued.
    drop(kg);
    let ws2 = workspace(&up.url(), &tokens_toml("1h"));
    std::fs::copy(ws.keys_file(), ws2.keys_file()).unwrap();
    // (8 s: long enough to outlive the suspension's steps below on a slow machine.)
    let (expiring_id, expiring) = ws2.create_key(&["--expires-in", "8s"]);
    let (rotated_id, rotated) = ws2.create_key(&[]);
    let kg = ws2.serve();
    let live = token(&kg, &suspended_id, &suspended, None).await;
    assert_eq!(
        get(&kg.url("/x"), &[("authorization", &bearer(&live))])
            .await
            .status,
        StatusCode::OK
    );
    assert!(
        ws2.cli(&["keys", "suspend", &suspended_id])
            .status
            .success()
    );
    let refused = eventually(Duration::from_secs(10), || async {
        get(&kg.url("/x"), &[("authorization", &bearer(&live))])
            .await
            .status
            == StatusCode::FORBIDDEN
    })
    .await;
    assert!(refused.is_some(), "a suspended key's token still works");
    let reply = ask(
        &kg,
        Some((&suspended_id, &suspended)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(reply.json()["error"], "invalid_client");

    // A key that expires, and one rotated with no grace: their live tokens die with them.
    let of_expiring = token(&kg, &expiring_id, &expiring, None).await;
    let of_rotated = token(&kg, &rotated_id, &rotated, None).await;
    for t in [&of_expiring, &of_rotated] {
        assert_eq!(
            get(&kg.url("/x"), &[("authorization", &bearer(t))])
                .await
                .status,
            StatusCode::OK
        );
    }
    let out = ws2.cli(&["keys", "rotate", &rotated_id, "--grace", "0s"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (name, t) in [
        ("an expired key's token", &of_expiring),
        ("a rotated-out key's token", &of_rotated),
    ] {
        let refused = eventually(Duration::from_secs(15), || async {
            let reply = get(&kg.url("/x"), &[("authorization", &bearer(t))]).await;
            reply.status == StatusCode::UNAUTHORIZED && reply.error_code() == "expired_api_key"
        })
        .await;
        assert!(refused.is_some(), "{name} still works");
    }
}

/// Three sidecars sharing Redis and one token secret: a token issued by one works on all, and
/// revoking its key kills it on all within the revocation bound.
#[tokio::test]
async fn a_revoked_keys_token_is_refused_on_three_sidecars() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(&up.url(), &redis.url(), &tokens_toml("1h"));
    std::fs::write(ws.dir.path().join("token.secret"), SECRET).unwrap();
    let (id, key) = ws.create_key(&[]);
    let sidecars: Vec<Keygate> = (0..3).map(|_| ws.serve()).collect();
    let issued = token(&sidecars[0], &id, &key, None).await;
    for kg in &sidecars {
        kg.first_poll().await;
        assert_eq!(
            get(&kg.url("/x"), &[("authorization", &bearer(&issued))])
                .await
                .status,
            StatusCode::OK
        );
    }
    let started = Instant::now();
    assert!(ws.cli(&["keys", "revoke", &id]).status.success());
    let mut delays = Vec::new();
    for kg in &sidecars {
        let took = eventually(Duration::from_secs(5), || async {
            let reply = get(&kg.url("/x"), &[("authorization", &bearer(&issued))]).await;
            reply.status == StatusCode::UNAUTHORIZED
        })
        .await
        .expect("a sidecar still admits a revoked key's token after 5 s");
        delays.push(started.elapsed().max(took));
    }
    eprintln!("revoked key's token refused by the three sidecars after {delays:?}");
    // The same generous bound as the keys' own test (tests/redis.rs).
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(2)),
        "{delays:?}"
    );
    let reply = get(
        &sidecars[2].url("/x"),
        &[("authorization", &bearer(&issued))],
    )
    .await;
    assert_eq!(reply.error_code(), "invalid_api_key");
}

/// A token request whose body stops short is answered `invalid_request` and its connection
/// closed after `header_read_timeout`: the endpoint is on the public port and needs no key,
/// so anyone could otherwise hold connections there for as long as they liked.
#[tokio::test]
async fn a_token_request_whose_body_stops_short_is_let_go() {
    let up = Upstream::start().await;
    let ws = workspace(
        &up.url(),
        &format!(
            "{}\n[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
            tokens_toml("15m")
        ),
    );
    let kg = ws.serve();
    let head = "POST /oauth/token HTTP/1.1\r\nhost: x\r\n\
                content-type: application/x-www-form-urlencoded\r\n\
                content-length: 200\r\n\r\ngrant_type=client_";
    let answer = send_and_stall(kg.public, head, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\"invalid_request\""), "{answer}");
    assert!(answer.contains("header_read_timeout"), "{answer}");
}
