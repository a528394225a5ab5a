//! The management API (`[listen] manage`, `/v1/…`) black-box: every endpoint and error code,
//! the management scopes (read, write, owner-bound), the proxy's checks applied to
//! management keys, verify, the audit trail from the API and the CLI, the OpenAPI document,
//! and a revocation through the API reaching sidecars on Redis.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::RedisServer;
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};

const MANAGE_ENV: &[(&str, &str)] = &[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0")];

/// One management call with `key` (if any) as `Authorization: Bearer`.
async fn call(
    kg: &Keygate,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(b) = &bearer {
        all.push(("authorization", b));
    }
    if body.is_some() {
        all.push(("content-type", "application/json"));
    }
    let body = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
    send(method, &kg.manage_url(path), &all, body).await
}

fn expect(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", text(&reply.body));
    assert_eq!(reply.error_code(), code, "{}", text(&reply.body));
}

fn ok(reply: &Reply, status: StatusCode) -> Value {
    assert_eq!(reply.status, status, "{}", text(&reply.body));
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json()
}

/// The admin key every test starts from: made by the CLI (the bootstrap).
fn bootstrap(ws: &Workspace, owner: &str) -> (String, String) {
    ws.create_key(&["--owner", owner, "--scopes", "*,keygate:keys:write"])
}

#[tokio::test]
async fn every_endpoint_and_error_code() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "[plans.small]\nper_hour = 100\n");
    let (admin_id, admin) = bootstrap(&ws, "ops");
    let (_, reader) = ws.create_key(&["--owner", "ops", "--scopes", "keygate:keys:read"]);
    let (_, writer_only) = ws.create_key(&["--owner", "ops", "--scopes", "keygate:keys:write"]);
    let (_, plain) = ws.create_key(&["--owner", "ops", "--scopes", "*"]);
    let kg = ws.serve_with_env(MANAGE_ENV);
    let a = Some(admin.as_str());

    // The document needs no key and is the committed one.
    let doc = get(&kg.manage_url("/v1/openapi.json"), &[]).await;
    assert_eq!(doc.status, StatusCode::OK);
    let committed = std::fs::read(tools::repo().join("openapi/keygate.json")).unwrap();
    assert_eq!(
        doc.body, committed,
        "the served document is the committed one"
    );

    // 401: no key, a made-up key; 403: a key without management scopes (`*` is not one),
    // a read-only key writing.
    let none = call(&kg, Method::GET, "/v1/keys", None, None, &[]).await;
    expect(&none, StatusCode::UNAUTHORIZED, "missing_api_key");
    let bad = call(
        &kg,
        Method::GET,
        "/v1/keys",
        Some("kg_sk_live_nope"),
        None,
        &[],
    )
    .await;
    expect(&bad, StatusCode::UNAUTHORIZED, "invalid_api_key");
    let star = call(&kg, Method::GET, "/v1/keys", Some(&plain), None, &[]).await;
    expect(&star, StatusCode::FORBIDDEN, "insufficient_permissions");
    let body = json!({"name": "svc", "scopes": ["content:read"]});
    let read_write = call(
        &kg,
        Method::POST,
        "/v1/keys",
        Some(&reader),
        Some(body.clone()),
        &[],
    )
    .await;
    expect(
        &read_write,
        StatusCode::FORBIDDEN,
        "insufficient_permissions",
    );
    // A write key may not grant scopes it does not hold.
    let ungranted = call(
        &kg,
        Method::POST,
        "/v1/keys",
        Some(&writer_only),
        Some(body.clone()),
        &[],
    )
    .await;
    expect(
        &ungranted,
        StatusCode::FORBIDDEN,
        "insufficient_permissions",
    );
    assert!(text(&ungranted.body).contains("content:read"));

    // 404 / 405 for routes.
    expect(
        &call(&kg, Method::GET, "/v1/nope", a, None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let put = call(&kg, Method::PUT, "/v1/keys/key_x", a, None, &[]).await;
    expect(&put, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = put.headers["allow"].to_str().unwrap().to_owned();
    for method in ["GET", "PATCH", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    expect(
        &call(&kg, Method::DELETE, "/v1/keys/key_x", a, None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Create: 201 with the secret once; 400 for bodies that cannot be read, 422 for values.
    let created = ok(
        &call(
            &kg,
            Method::POST,
            "/v1/keys",
            a,
            Some(json!({
                "name": "billing", "scopes": ["content:read"], "owner": "acme",
                "plan": "small", "expires_in": "30d"
            })),
            &[],
        )
        .await,
        StatusCode::CREATED,
    );
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["created_by"], admin_id.as_str(), "{created}");
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kg_sk_live_"));
    assert_eq!(
        get(&kg.url("/x"), &[("x-api-key", &secret)]).await.status,
        StatusCode::OK,
        "a key made through the API is served by the proxy"
    );
    for (body, status, code) in [
        (
            json!("not an object"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"scopes": ["a"]}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"name": "x", "scopes": ["bad scope"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"name": "x", "scopes": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "plan": "gold"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "expires_at": "2001-01-01T00:00:00Z"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "allowed_cidrs": ["10.0.0.0/33"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
    ] {
        let reply = call(&kg, Method::POST, "/v1/keys", a, Some(body.clone()), &[]).await;
        expect(&reply, status, code);
    }

    // Idempotent create: the retry gets the same key; the same Idempotency-Key with another
    // body is refused.
    let once = json!({"name": "retry", "scopes": ["content:read"], "owner": "acme"});
    let idem = [("idempotency-key", "create-1")];
    let first = ok(
        &call(&kg, Method::POST, "/v1/keys", a, Some(once.clone()), &idem).await,
        StatusCode::CREATED,
    );
    let again = ok(
        &call(&kg, Method::POST, "/v1/keys", a, Some(once.clone()), &idem).await,
        StatusCode::CREATED,
    );
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["key"], again["key"]);
    let other = json!({"name": "other", "scopes": ["content:read"], "owner": "acme"});
    expect(
        &call(&kg, Method::POST, "/v1/keys", a, Some(other), &idem).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );

    // Show and 404.
    let shown = ok(
        &call(&kg, Method::GET, &format!("/v1/keys/{id}"), a, None, &[]).await,
        StatusCode::OK,
    );
    assert_eq!(shown["name"], "billing");
    assert!(shown.get("key").is_none(), "never the secret");
    expect(
        &call(&kg, Method::GET, "/v1/keys/key_missing", a, None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Filters by plan and expiry.
    let by_plan = ok(
        &call(&kg, Method::GET, "/v1/keys?plan=small", a, None, &[]).await,
        StatusCode::OK,
    );
    let ids: Vec<&str> = by_plan["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let month = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + Duration::from_secs(31 * 86400),
    );
    let expiring = ok(
        &call(
            &kg,
            Method::GET,
            &format!("/v1/keys?expiring_before={month}"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(expiring["data"].as_array().unwrap().len(), 1, "{expiring}");
    ok(
        &call(
            &kg,
            Method::GET,
            "/v1/keys?unused_since=2000-01-01T00:00:00Z",
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    expect(
        &call(
            &kg,
            Method::GET,
            "/v1/keys?expiring_before=tomorrow",
            a,
            None,
            &[],
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );

    // Update name, scopes, expiry; the changes are read back.
    let updated = ok(
        &call(
            &kg,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            a,
            Some(json!({
                "name": "billing v2", "scopes": ["content:read", "content:write"],
                "expires_at": "2099-01-01T00:00:00Z"
            })),
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(updated["name"], "billing v2");
    assert_eq!(updated["scopes"], json!(["content:read", "content:write"]));
    assert_eq!(updated["expires_at"], "2099-01-01T00:00:00Z");
    let limited = ok(
        &call(
            &kg,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            a,
            Some(json!({"limits": {"per_hour": 50}, "allowed_cidrs": ["127.0.0.1/32"]})),
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(limited["limits"]["per_hour"], 50);
    assert_eq!(limited["allowed_cidrs"], json!(["127.0.0.1/32"]));
    let cleared = ok(
        &call(
            &kg,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            a,
            Some(json!({"expires_at": null})),
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert!(cleared["expires_at"].is_null());
    expect(
        &call(
            &kg,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            a,
            Some(json!({"scopes": ["*x"]})),
            &[],
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );

    // Suspend, resume, resume again (409).
    let suspended = ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/suspend"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(suspended["status"], "suspended");
    ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/resume"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    expect(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/resume"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // Usage.
    let usage = ok(
        &call(
            &kg,
            Method::GET,
            &format!("/v1/keys/{id}/usage"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(usage["id"], id.as_str());
    assert_eq!(usage["plan"], "small");

    // Rotate with grace (idempotent), then both keys work until the grace ends.
    let rot = [("idempotency-key", "rotate-1")];
    let rotated = ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            a,
            Some(json!({"grace": "1h"})),
            &rot,
        )
        .await,
        StatusCode::CREATED,
    );
    let rotated_again = ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            a,
            Some(json!({"grace": "1h"})),
            &rot,
        )
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(
        rotated["id"], rotated_again["id"],
        "a retried rotation issues one key"
    );
    let new_secret = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(rotated["rotated_from"], id.as_str());
    assert_eq!(rotated["created_by"], admin_id.as_str());
    expect(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            a,
            Some(json!({"grace": "soon"})),
            &[],
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_parameter",
    );

    // Revoke: the proxy refuses it; a revoked key cannot be changed or rotated (409).
    let revoked = ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_by"], admin_id.as_str());
    assert!(revoked["revoked_at"].is_string());
    assert_eq!(revoked["rotated_to"], rotated["id"]);
    let refused = eventually(Duration::from_secs(5), || async {
        get(&kg.url("/x"), &[("x-api-key", &secret)]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused.is_some(), "the revoked key is refused");
    assert_eq!(
        get(&kg.url("/x"), &[("x-api-key", &new_secret)])
            .await
            .status,
        StatusCode::OK
    );
    expect(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect(
        &call(
            &kg,
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            a,
            Some(json!({"name": "x"})),
            &[],
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    // List: cursor pages cover every key once; filters.
    for i in 0..5 {
        ok(&call(&kg, Method::POST, "/v1/keys", a, Some(json!({"name": format!("bulk {i}"), "scopes": ["x:y"], "owner": "bulk", "env": "test"})), &[]).await, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?owner=bulk&limit=2&cursor={c}"),
            None => "/v1/keys?owner=bulk&limit=2".into(),
        };
        let page = ok(
            &call(&kg, Method::GET, &path, a, None, &[]).await,
            StatusCode::OK,
        );
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5, "no key twice");
    let revoked_list = ok(
        &call(&kg, Method::GET, "/v1/keys?status=revoked", a, None, &[]).await,
        StatusCode::OK,
    );
    assert_eq!(revoked_list["data"].as_array().unwrap().len(), 1);
    let test_env = ok(
        &call(&kg, Method::GET, "/v1/keys?env=test", a, None, &[]).await,
        StatusCode::OK,
    );
    assert_eq!(test_env["data"].as_array().unwrap().len(), 5);
    let listed = call(&kg, Method::GET, "/v1/keys", a, None, &[]).await;
    assert!(!text(&listed.body).contains(&secret));
    for (query, status, code) in [
        (
            "limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        ),
        ("limit=many", StatusCode::BAD_REQUEST, "invalid_body"),
        ("cursor=@@", StatusCode::BAD_REQUEST, "invalid_body"),
        ("status=gone", StatusCode::BAD_REQUEST, "invalid_body"),
        ("colour=red", StatusCode::BAD_REQUEST, "invalid_body"),
    ] {
        expect(
            &call(&kg, Method::GET, &format!("/v1/keys?{query}"), a, None, &[]).await,
            status,
            code,
        );
    }

    // The audit trail: API actions with the management key as actor, in the API and the CLI.
    let events = ok(
        &call(
            &kg,
            Method::GET,
            &format!("/v1/audit?key_id={id}"),
            a,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "create", "update", "update", "update", "update", "suspend", "resume", "resume",
            "rotate", "revoke", "rotate", "update"
        ],
        "{events}"
    );
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == admin_id.as_str() && e["owner"] == "acme"),
        "every event names the actor and the key's owner, failed ones too: {events}"
    );
    let failed: Vec<&Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] != "ok")
        .collect();
    assert_eq!(
        failed.len(),
        4,
        "a bad scope, a resume, a rotation and an update of a revoked key failed: {events}"
    );
    let cli = ws.cli(&["keys", "suspend", first["id"].as_str().unwrap()]);
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    let listed = ws.cli(&["audit", "--key", first["id"].as_str().unwrap()]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<Value> = text(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "create (API) and suspend (CLI), once each: {lines:?}"
    );
    assert_eq!(lines[0]["actor"], admin_id.as_str());
    assert!(
        lines[1]["actor"].as_str().unwrap().starts_with("cli:"),
        "{lines:?}"
    );
    assert_eq!(lines[1]["changed"], json!(["status"]));
    // The CLI logs its actions too (stderr), never the key it printed.
    let made = ws.cli(&["keys", "create", "--name", "cli", "--scopes", "x:y"]);
    let printed: Value = serde_json::from_slice(&made.stdout).unwrap();
    let logged = text(&made.stderr);
    assert!(
        logged.contains("management action") && logged.contains("cli:"),
        "{logged}"
    );
    assert!(!logged.contains(printed["key"].as_str().unwrap()));
    assert!(
        printed.get("created_by").is_none(),
        "the audit trail names the CLI's user"
    );
    let since = ws.cli(&["audit", "--since", "1h", "--limit", "3"]);
    assert_eq!(text(&since.stdout).lines().count(), 3);

    // No secret and no hash in the audit file or the logs.
    let trail = std::fs::read_to_string(ws.dir.path().join("keys.json.audit.jsonl")).unwrap();
    let logs = kg.all_logs();
    let first_key = first["key"].as_str().unwrap().to_owned();
    for secret in [&secret, &new_secret, &first_key, &admin] {
        let hash = sha256_hex(secret);
        for (what, haystack) in [("audit file", &trail), ("logs", &logs)] {
            assert!(
                !haystack.contains(secret.as_str()),
                "a secret in the {what}"
            );
            assert!(!haystack.contains(&hash), "a key hash in the {what}");
        }
    }
    assert!(
        logs.contains("keygate::audit"),
        "audit events are logged too"
    );
}

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn owner_bound_keys_see_and_touch_only_their_owner() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "[keys]\nmax_per_owner = 4\n");
    let (_, admin) = bootstrap(&ws, "ops");
    let (_, portal) = ws.create_key(&["--owner", "acme", "--scopes", "content:*,keygate:keys:own"]);
    let (acme_admin_id, _) =
        ws.create_key(&["--owner", "acme", "--scopes", "*,keygate:keys:write"]);
    let (theirs, _) = ws.create_key(&["--owner", "globex", "--scopes", "content:read"]);
    let kg = ws.serve_with_env(MANAGE_ENV);
    let p = Some(portal.as_str());

    // Create: its own owner by default; another owner's is refused; scopes it lacks too.
    let mine = ok(
        &call(
            &kg,
            Method::POST,
            "/v1/keys",
            p,
            Some(json!({"name": "app", "scopes": ["content:read"]})),
            &[],
        )
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(mine["owner"], "acme");
    let mine_id = mine["id"].as_str().unwrap().to_owned();
    for refused in [
        json!({"name": "x", "scopes": ["content:read"], "owner": "globex"}),
        json!({"name": "x", "scopes": ["billing:read"]}),
        json!({"name": "x", "scopes": ["keygate:keys:write"]}),
    ] {
        let reply = call(&kg, Method::POST, "/v1/keys", p, Some(refused), &[]).await;
        expect(&reply, StatusCode::FORBIDDEN, "insufficient_permissions");
    }

    // List: only acme's keys; asking for globex's is refused.
    let listed = ok(
        &call(&kg, Method::GET, "/v1/keys", p, None, &[]).await,
        StatusCode::OK,
    );
    let owners: HashSet<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, HashSet::from(["acme"]));
    expect(
        &call(&kg, Method::GET, "/v1/keys?owner=globex", p, None, &[]).await,
        StatusCode::FORBIDDEN,
        "insufficient_permissions",
    );

    // Another owner's key does not exist for it: show, usage, update, revoke, rotate, suspend.
    for (method, path, body) in [
        (Method::GET, format!("/v1/keys/{theirs}"), None),
        (Method::GET, format!("/v1/keys/{theirs}/usage"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{theirs}"),
            Some(json!({"name": "mine now"})),
        ),
        (Method::POST, format!("/v1/keys/{theirs}/revoke"), None),
        (Method::POST, format!("/v1/keys/{theirs}/rotate"), None),
        (Method::POST, format!("/v1/keys/{theirs}/suspend"), None),
    ] {
        let reply = call(&kg, method.clone(), &path, p, body, &[]).await;
        expect(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    // A key of its own owner holding more than it does is out of its hands.
    expect(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{acme_admin_id}/revoke"),
            p,
            None,
            &[],
        )
        .await,
        StatusCode::FORBIDDEN,
        "insufficient_permissions",
    );
    // Its own keys it manages.
    ok(
        &call(
            &kg,
            Method::GET,
            &format!("/v1/keys/{mine_id}/usage"),
            p,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    let rotated = ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{mine_id}/rotate"),
            p,
            Some(json!({"grace": "0s"})),
            &[],
        )
        .await,
        StatusCode::CREATED,
    );
    ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{}/revoke", rotated["id"].as_str().unwrap()),
            p,
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );

    // Audit: only acme's events.
    ok(
        &call(
            &kg,
            Method::POST,
            &format!("/v1/keys/{theirs}/suspend"),
            Some(&admin),
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    let events = ok(
        &call(&kg, Method::GET, "/v1/audit", p, None, &[]).await,
        StatusCode::OK,
    );
    let data = events["data"].as_array().unwrap();
    assert!(!data.is_empty());
    assert!(data.iter().all(|e| e["owner"] == "acme"), "{events}");
    let all = ok(
        &call(&kg, Method::GET, "/v1/audit", Some(&admin), None, &[]).await,
        StatusCode::OK,
    );
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["owner"] == "globex")
    );

    // max_per_owner = 4 holds under 20 concurrent creates: acme holds 2 keys that count
    // (the portal and acme's admin; `mine`, expired by its rotation, reads `expired` and frees
    // its slot, and the rotated key was revoked), so exactly two more are made.
    let live_before = ok(
        &call(&kg, Method::GET, "/v1/keys?status=active", p, None, &[]).await,
        StatusCode::OK,
    )["data"]
        .as_array()
        .unwrap()
        .len();
    let creates = (0..20).map(|i| {
        let kg = &kg;
        let portal = portal.clone();
        async move {
            call(
                kg,
                Method::POST,
                "/v1/keys",
                Some(&portal),
                Some(json!({"name": format!("c{i}"), "scopes": ["content:read"]})),
                &[],
            )
            .await
        }
    });
    let replies = futures_util::future::join_all(creates).await;
    let made = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    for r in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        expect(r, StatusCode::CONFLICT, "owner_key_limit");
    }
    assert_eq!(
        live_before + made,
        4,
        "the cap holds: {live_before} active + {made} made"
    );
}

#[tokio::test]
async fn management_keys_meet_the_proxy_checks() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "[plans.tiny]\nper_minute = 2\n");
    let (_, limited) = ws.create_key(&["--scopes", "keygate:keys:read", "--plan", "tiny"]);
    let (_, fenced) =
        ws.create_key(&["--scopes", "keygate:keys:read", "--allow-ip", "10.9.9.0/24"]);
    let (suspended_id, suspended) = ws.create_key(&["--scopes", "keygate:keys:read"]);
    let (_, expiring) = ws.create_key(&["--scopes", "keygate:keys:read", "--expires-in", "2s"]);
    let out = ws.cli(&["keys", "suspend", &suspended_id]);
    assert!(out.status.success());
    let kg = ws.serve_with_env(MANAGE_ENV);

    let first = call(&kg, Method::GET, "/v1/keys", Some(&limited), None, &[]).await;
    ok(&first, StatusCode::OK);
    assert_eq!(
        first.headers["x-ratelimit-remaining"], "1",
        "the proxy's headers"
    );
    let last = call(&kg, Method::GET, "/v1/keys", Some(&limited), None, &[]).await;
    ok(&last, StatusCode::OK);
    assert_eq!(last.headers["x-ratelimit-remaining"], "0");
    let over = call(&kg, Method::GET, "/v1/keys", Some(&limited), None, &[]).await;
    expect(&over, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    assert!(over.headers.contains_key("retry-after"));
    assert!(over.headers.contains_key("x-ratelimit-limit"));
    expect(
        &call(&kg, Method::GET, "/v1/keys", Some(&fenced), None, &[]).await,
        StatusCode::FORBIDDEN,
        "ip_not_allowed",
    );
    expect(
        &call(&kg, Method::GET, "/v1/keys", Some(&suspended), None, &[]).await,
        StatusCode::FORBIDDEN,
        "key_suspended",
    );
    let expired = eventually(Duration::from_secs(10), || async {
        call(&kg, Method::GET, "/v1/keys", Some(&expiring), None, &[])
            .await
            .status
            == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(expired.is_some());
    expect(
        &call(&kg, Method::GET, "/v1/keys", Some(&expiring), None, &[]).await,
        StatusCode::UNAUTHORIZED,
        "expired_api_key",
    );
}

#[tokio::test]
async fn keys_carry_a_hint_and_read_as_expired_once_past_their_expiry() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, admin) = bootstrap(&ws, "ops");
    let (short_id, short) = ws.create_key(&["--scopes", "read", "--expires-in", "1s"]);
    let kg = ws.serve_with_env(MANAGE_ENV);
    let hint_of = |key: &str| {
        let head = &key[..=key.rfind('_').unwrap()];
        format!("{head}...{}", &key[key.len() - 4..])
    };

    // Made through the API: the answer's record carries the hint, never more of the key.
    let body = json!({"name": "portal", "scopes": ["read"]});
    let made = ok(
        &call(&kg, Method::POST, "/v1/keys", Some(&admin), Some(body), &[]).await,
        StatusCode::CREATED,
    );
    let key = made["key"].as_str().unwrap();
    assert_eq!(made["hint"], hint_of(key));
    let middle = &key[key.rfind('_').unwrap() + 1..key.len() - 4];
    let mut record = made.clone();
    record.as_object_mut().unwrap().remove("key");
    assert!(!record.to_string().contains(middle));

    // Made at the CLI: the same hint, in the API's answers and the CLI's table.
    let show = || async {
        let path = format!("/v1/keys/{short_id}");
        ok(
            &call(&kg, Method::GET, &path, Some(&admin), None, &[]).await,
            StatusCode::OK,
        )
    };
    let shown = show().await;
    assert_eq!(shown["hint"], hint_of(&short));
    let table = ws.cli(&["keys", "list", "--format", "table"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains("HINT"), "{table}");
    assert!(table.contains(&hint_of(&short)), "{table}");

    // Past its expiry the key reads `expired` (its stored status stays active), and the
    // status filter goes by what it reads.
    let listed = |status: &'static str| {
        let kg = &kg;
        let admin = &admin;
        async move {
            let page = ok(
                &call(
                    kg,
                    Method::GET,
                    &format!("/v1/keys?status={status}"),
                    Some(admin),
                    None,
                    &[],
                )
                .await,
                StatusCode::OK,
            );
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let seen = eventually(Duration::from_secs(10), || async {
        listed("expired").await == [short_id.clone()]
    })
    .await;
    assert!(seen.is_some(), "the 1 s key reads expired");
    assert!(!listed("active").await.contains(&short_id));
    let shown = show().await;
    assert_eq!(shown["status"], "expired");
    expect(
        &call(
            &kg,
            Method::GET,
            "/v1/keys?status=gone",
            Some(&admin),
            None,
            &[],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
}

#[tokio::test]
async fn the_api_makes_header_bound_keys_and_browser_keys_as_the_cli_does() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, admin) = bootstrap(&ws, "ops");
    let kg = ws.serve_with_env(MANAGE_ENV);
    let create = |body: Value| {
        let kg = &kg;
        let admin = &admin;
        async move { call(kg, Method::POST, "/v1/keys", Some(admin), Some(body), &[]).await }
    };
    let url = format!("http://{}/v1/hello", kg.public);

    // A project token: accepted in Project-Access-Token only.
    let made = ok(
        &create(json!({"name": "project", "scopes": ["*"], "headers": ["project-access-token"]}))
            .await,
        StatusCode::CREATED,
    );
    assert_eq!(made["headers"], json!(["project-access-token"]));
    let token = made["key"].as_str().unwrap();
    let fine = get(&url, &[("project-access-token", token)]).await;
    assert_eq!(fine.status, StatusCode::OK);
    let bearer = format!("Bearer {token}");
    let refused = get(&url, &[("authorization", &bearer)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "credential_header_not_allowed");

    // A browser key: its own origin reads the answer, another origin is refused.
    let made = ok(
        &create(json!({"name": "web", "scopes": ["*"], "type": "public",
                       "allowed_origins": ["https://app.example.com"]}))
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(made["allowed_origins"], json!(["https://app.example.com"]));
    let pk = made["key"].as_str().unwrap();
    let mine = get(
        &url,
        &[("x-api-key", pk), ("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(mine.status, StatusCode::OK);
    assert_eq!(
        mine.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = get(
        &url,
        &[("x-api-key", pk), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.error_code(), "origin_not_allowed");

    // What cannot be used is refused before a key is made.
    for body in [
        json!({"name": "x", "scopes": ["*"], "headers": ["cookie"]}),
        json!({"name": "x", "scopes": ["*"], "allowed_origins": ["https://app.example.com"]}),
        json!({"name": "x", "scopes": ["*"], "type": "public", "allowed_origins": ["not an origin"]}),
    ] {
        expect(
            &create(body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
        );
    }
}

#[tokio::test]
async fn a_revoked_key_can_be_deleted_and_is_then_unknown() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let (_, admin) = bootstrap(&ws, "ops");
    let (id, key) = ws.create_key(&["--scopes", "*"]);
    let (cli_id, _) = ws.create_key(&["--scopes", "*"]);
    let kg = ws.serve_with_env(MANAGE_ENV);
    let path = format!("/v1/keys/{id}");
    let url = format!("http://{}/v1/hello", kg.public);

    // Not while it can still be used: revoke first.
    expect(
        &call(&kg, Method::DELETE, &path, Some(&admin), None, &[]).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    ok(
        &call(
            &kg,
            Method::POST,
            &format!("{path}/revoke"),
            Some(&admin),
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    let gone = ok(
        &call(&kg, Method::DELETE, &path, Some(&admin), None, &[]).await,
        StatusCode::OK,
    );
    assert_eq!(gone, json!({"id": id, "deleted": true}));

    // Its id is unknown, and the key is refused as any unknown key is.
    expect(
        &call(&kg, Method::GET, &path, Some(&admin), None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &call(&kg, Method::DELETE, &path, Some(&admin), None, &[]).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let refused = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.error_code(), "invalid_api_key");

    // The CLI deletes too; the audit trail keeps both deletions, each once.
    assert!(ws.cli(&["keys", "revoke", &cli_id]).status.success());
    let out = ws.cli(&["keys", "delete", &cli_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"id": cli_id, "deleted": true}));
    let events = ok(
        &call(&kg, Method::GET, "/v1/audit", Some(&admin), None, &[]).await,
        StatusCode::OK,
    );
    let deletes: Vec<(&str, &str)> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "delete" && e["result"] == "ok")
        .map(|e| (e["key_id"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(deletes.len(), 2, "{events}");
    assert_eq!(deletes[0].0, id);
    assert!(
        deletes[0].1.starts_with("key_"),
        "the management key: {deletes:?}"
    );
    assert_eq!(deletes[1].0, cli_id);
    assert!(deletes[1].1.starts_with("cli:"), "{deletes:?}");
}

#[tokio::test]
async fn verify_answers_with_the_proxy_decision() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "[plans.tiny]\nper_minute = 2\n");
    let (_, verifier) = ws.create_key(&["--scopes", "keygate:keys:verify"]);
    let (_, portal) = ws.create_key(&["--owner", "acme", "--scopes", "*,keygate:keys:own"]);
    let (id, key) = ws.create_key(&[
        "--owner",
        "acme",
        "--scopes",
        "content:read",
        "--plan",
        "tiny",
    ]);
    let (revoked_id, revoked) = ws.create_key(&["--scopes", "content:read"]);
    let (_, fenced) = ws.create_key(&["--scopes", "content:read", "--allow-ip", "10.9.9.0/24"]);
    assert!(ws.cli(&["keys", "revoke", &revoked_id]).status.success());
    let kg = ws.serve_with_env(MANAGE_ENV);
    let v = Some(verifier.as_str());
    let verify = |body: Value| call(&kg, Method::POST, "/v1/keys/verify", v, Some(body), &[]);

    let valid = ok(&verify(json!({"key": key})).await, StatusCode::OK);
    assert_eq!(valid["valid"], true, "{valid}");
    assert_eq!(valid["key_id"], id.as_str());
    assert_eq!(valid["owner"], "acme");
    assert_eq!(valid["scopes"], json!(["content:read"]));
    assert!(valid["ratelimit"].is_null(), "not counted unless asked");
    let counted = ok(
        &verify(json!({"key": key, "count": true})).await,
        StatusCode::OK,
    );
    assert_eq!(counted["ratelimit"]["limit"], 2);
    assert_eq!(counted["ratelimit"]["remaining"], 1);
    ok(
        &verify(json!({"key": key, "count": true})).await,
        StatusCode::OK,
    );
    let over = ok(
        &verify(json!({"key": key, "count": true})).await,
        StatusCode::OK,
    );
    assert_eq!(
        (over["valid"].clone(), over["code"].clone()),
        (json!(false), json!("rate_limit_exceeded"))
    );
    // The proxy shares the counters: the key is over its limit there too.
    expect(
        &get(&kg.url("/x"), &[("x-api-key", &key)]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );

    for (body, code) in [
        (json!({"key": revoked}), "invalid_api_key"),
        (json!({"key": "kg_sk_live_madeup"}), "invalid_api_key"),
        (json!({"key": fenced}), "ip_not_allowed"),
        (
            json!({"key": key, "scope": "content:write"}),
            "insufficient_permissions",
        ),
    ] {
        let verdict = ok(&verify(body.clone()).await, StatusCode::OK);
        assert_eq!(
            (verdict["valid"].clone(), verdict["code"].clone()),
            (json!(false), json!(code)),
            "{body}"
        );
    }
    let inside = ok(
        &verify(json!({"key": fenced, "ip": "10.9.9.7"})).await,
        StatusCode::OK,
    );
    assert_eq!(inside["valid"], true);
    expect(
        &verify(json!({"secret": key})).await,
        StatusCode::BAD_REQUEST,
        "invalid_body",
    );
    expect(
        &call(
            &kg,
            Method::POST,
            "/v1/keys/verify",
            Some(&portal),
            Some(json!({"key": key})),
            &[],
        )
        .await,
        StatusCode::FORBIDDEN,
        "insufficient_permissions",
    );
    assert!(
        !kg.all_logs().contains(&key),
        "the verified key is never logged"
    );
}

#[tokio::test]
async fn a_key_revoked_through_the_api_is_refused_by_three_sidecars_on_redis() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(&up.url(), &redis.url(), "");
    let (admin_id, admin) = bootstrap(&ws, "ops");
    let manager = ws.serve_with_env(MANAGE_ENV);
    let sidecars: Vec<Keygate> = (0..3).map(|_| ws.serve()).collect();
    let created = ok(
        &call(
            &manager,
            Method::POST,
            "/v1/keys",
            Some(&admin),
            Some(json!({"name": "svc", "scopes": ["content:read"]})),
            &[],
        )
        .await,
        StatusCode::CREATED,
    );
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    for kg in &sidecars {
        kg.first_poll().await;
        assert_eq!(
            get(&kg.url("/"), &[("x-api-key", key)]).await.status,
            StatusCode::OK
        );
    }
    let started = Instant::now();
    ok(
        &call(
            &manager,
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(&admin),
            None,
            &[],
        )
        .await,
        StatusCode::OK,
    );
    let mut delays = Vec::new();
    for kg in &sidecars {
        let took = eventually(Duration::from_secs(5), || async {
            get(&kg.url("/"), &[("x-api-key", key)]).await.status == StatusCode::UNAUTHORIZED
        })
        .await
        .expect("a sidecar still admits the key revoked through the API after 5 s");
        delays.push(started.elapsed().max(took));
    }
    eprintln!("API revocation seen by the three sidecars after {delays:?}");
    // The bound of a lost pub/sub message is one epoch poll (1 s here); loaded CI included.
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(2)),
        "{delays:?}"
    );

    // The store's health as the manager sees it.
    let health = ok(
        &call(&manager, Method::GET, "/v1/health", Some(&admin), None, &[]).await,
        StatusCode::OK,
    );
    assert_eq!(health["up"], true, "{health}");
    assert!(
        health["store"].as_str().unwrap().starts_with("redis"),
        "{health}"
    );

    // The audit trail lives in Redis: the API's events and the CLI's, read by both.
    let (other, _) = ws.create_key(&["--scopes", "content:read"]);
    assert!(ws.cli(&["keys", "suspend", &other]).status.success());
    let events = ok(
        &call(&manager, Method::GET, "/v1/audit", Some(&admin), None, &[]).await,
        StatusCode::OK,
    );
    let actions: Vec<(&str, &str)> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    let names: Vec<&str> = actions.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        names,
        ["create", "create", "revoke", "create", "suspend"],
        "{events}"
    );
    assert_eq!(
        &actions[1..3],
        [("create", admin_id.as_str()), ("revoke", admin_id.as_str())]
    );
    assert!(
        actions
            .iter()
            .filter(|(_, actor)| actor.starts_with("cli:"))
            .count()
            == 3,
        "{actions:?}"
    );
    let cli = ws.cli(&["audit", "--key", &other]);
    assert!(cli.status.success(), "{}", text(&cli.stderr));
    let lines: Vec<Value> = text(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["create", "suspend"]
    );
}

#[tokio::test]
async fn a_store_that_cannot_answer_is_503() {
    let mut redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(&up.url(), &redis.url(), "");
    let (_, admin) = bootstrap(&ws, "ops");
    let kg = ws.serve_with_env(MANAGE_ENV);
    let a = Some(admin.as_str());
    ok(
        &call(&kg, Method::GET, "/v1/keys", a, None, &[]).await,
        StatusCode::OK,
    );
    redis.kill();
    // The management key is cached, so the call is admitted; the store cannot list.
    let reply = call(&kg, Method::GET, "/v1/keys", a, None, &[]).await;
    expect(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "key_store_unavailable",
    );
    assert!(reply.headers.contains_key("retry-after"));
    let create = json!({"name": "x", "scopes": ["content:read"]});
    expect(
        &call(
            &kg,
            Method::POST,
            "/v1/keys",
            a,
            Some(create),
            &[("idempotency-key", "k")],
        )
        .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "key_store_unavailable",
    );
}

/// `PATCH /v1/keys/{id}` giving an expired key a new expiry (or none) takes a slot under
/// `max_per_owner`, as a create does: 409 `owner_key_limit` at the cap, on the file store and
/// on Redis; an edit that leaves it expired needs no slot.
#[tokio::test]
async fn a_patch_lifting_an_expired_keys_expiry_respects_the_owner_cap() {
    let up = Upstream::start().await;
    let redis = common::redis::RedisServer::start();
    let cap = "[keys]\nmax_per_owner = 1\n";
    for ws in [
        Workspace::new(&up.url(), cap),
        Workspace::redis(&up.url(), &redis.url(), cap),
    ] {
        let (_, admin) = bootstrap(&ws, "ops");
        let admin = Some(admin.as_str());
        let (expired, _) = ws.create_key(&["--owner", "acme", "--expires-in", "1s"]);
        while ws
            .cli(&["keys", "show", &expired])
            .stdout
            .windows(9)
            .all(|w| w != b"\"expired\"")
        {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let (live, _) = ws.create_key(&["--owner", "acme"]);
        let kg = ws.serve_with_env(MANAGE_ENV);
        let path = format!("/v1/keys/{expired}");
        for lift in [
            json!({"expires_at": "2099-01-01T00:00:00Z"}),
            json!({"expires_at": null}),
        ] {
            let reply = call(&kg, Method::PATCH, &path, admin, Some(lift), &[]).await;
            expect(&reply, StatusCode::CONFLICT, "owner_key_limit");
        }
        let renamed = ok(
            &call(
                &kg,
                Method::PATCH,
                &path,
                admin,
                Some(json!({"name": "old"})),
                &[],
            )
            .await,
            StatusCode::OK,
        );
        assert_eq!(renamed["status"], "expired");
        let revoke = format!("/v1/keys/{live}/revoke");
        ok(
            &call(&kg, Method::POST, &revoke, admin, None, &[]).await,
            StatusCode::OK,
        );
        let lift = json!({"expires_at": "2099-01-01T00:00:00Z"});
        let lifted = ok(
            &call(&kg, Method::PATCH, &path, admin, Some(lift), &[]).await,
            StatusCode::OK,
        );
        assert_eq!(lifted["status"], "active");
        let body = json!({"name": "more", "scopes": ["read"], "owner": "acme"});
        let reply = call(&kg, Method::POST, "/v1/keys", admin, Some(body), &[]).await;
        expect(&reply, StatusCode::CONFLICT, "owner_key_limit");
    }
}

/// A management client that sends a request's head and then only part of its body gets a
/// JSON 400 and its connection closed after `header_read_timeout`: it could otherwise hold
/// one of the API's connections for ever, and enough of them would lock every operator out.
#[tokio::test]
async fn a_client_that_stops_sending_its_body_is_let_go() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        "[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n",
    );
    let (_, admin) = bootstrap(&ws, "ops");
    let kg = ws.serve_with_env(MANAGE_ENV);
    let head = format!(
        "POST /v1/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {admin}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\": "
    );
    let answer = send_and_stall(kg.manage.unwrap(), &head, Duration::from_secs(1)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("\"invalid_body\""), "{answer}");
    assert!(answer.contains("header_read_timeout"), "{answer}");
    assert!(!answer.contains(&admin), "{answer}");
}
