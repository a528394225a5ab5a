//! Black-box tests of authorization: route scopes, public keys, sandbox routing, workspace
//! binding, suspension, the owner cap, and `check-config` on route rules.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};

const RULES: &str = r#"
[auth]
unmatched = "deny"
public_paths = ["/public/**"]

[[route]]
path = "/content/**"
methods = ["GET", "HEAD"]
scopes = ["content:read", "content:write"]

[[route]]
path = "/content/**"
scopes = ["content:write"]

[[route]]
path = "/billing/**"
scopes_all = ["billing:read"]
environments = ["live"]

[[route]]
path = "/api/v2/w/{workspace}/**"

[[route]]
path = "/open/**"
"#;

/// Production and sandbox upstreams, and a workspace whose proxy sends `Host` = the upstream's
/// address, so each reply tells which upstream served it.
async fn setup(extra: &str) -> (Upstream, Upstream, Workspace) {
    let production = Upstream::start().await;
    let sandbox = Upstream::start().await;
    let ws = Workspace::new(&production.url(), extra);
    (production, sandbox, ws)
}

fn served_by(reply: &Reply) -> String {
    reply.upstream_headers()["host"][0]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn route_scopes_are_enforced_and_the_missing_scope_is_named() {
    let (_p, _s, ws) = setup(RULES).await;
    let (_, reader) = ws.create_key(&["--scopes", "content:read"]);
    let (_, writer) = ws.create_key(&["--scopes", "content:write"]);
    let (_, analyst) = ws.create_key(&["--scopes", "analytics:read"]);
    let (_, wildcard) = ws.create_key(&["--scopes", "content:*"]);
    let kg = ws.serve();
    let url = kg.url("/content/posts/1");
    let post = |key: &str| {
        let key = key.to_owned();
        let url = url.clone();
        async move {
            send(
                Method::POST,
                &url,
                &[("x-api-key", &key)],
                Bytes::from("{}"),
            )
            .await
        }
    };

    assert_eq!(
        get(&url, &[("x-api-key", &reader)]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&url, &[("x-api-key", &writer)]).await.status,
        StatusCode::OK
    );
    assert_eq!(post(&writer).await.status, StatusCode::OK);
    assert_eq!(post(&wildcard).await.status, StatusCode::OK);

    let denied = post(&reader).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.error_code(), "insufficient_permissions");
    assert!(
        text(&denied.body).contains("content:write"),
        "{}",
        text(&denied.body)
    );

    let denied = get(&url, &[("x-api-key", &analyst)]).await;
    assert_eq!(denied.error_code(), "insufficient_permissions");
    assert!(text(&denied.body).contains("content:read, content:write"));

    // No rule matches, and `unmatched = "deny"`.
    let denied = get(&kg.url("/elsewhere"), &[("x-api-key", &wildcard)]).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.error_code(), "insufficient_permissions");
}

#[tokio::test]
async fn public_keys_may_only_read() {
    let (_p, _s, ws) = setup(RULES).await;
    let (_, public) = ws.create_key(&["--type", "public", "--scopes", "*"]);
    let kg = ws.serve();
    let url = kg.url("/open/thing");
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let reply = send(
            method.clone(),
            &url,
            &[("x-api-key", &public)],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
    }
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let reply = send(
            method.clone(),
            &url,
            &[("x-api-key", &public)],
            Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method}");
        assert_eq!(reply.error_code(), "insufficient_permissions");
        assert!(text(&reply.body).contains("Public API keys may only read"));
    }
}

#[tokio::test]
async fn sandbox_keys_go_to_the_sandbox_upstream_and_never_to_production() {
    let (production, sandbox, ws) = setup(RULES).await;
    let (_, live) = ws.create_key(&["--env", "live", "--scopes", "*"]);
    let (_, test) = ws.create_key(&["--env", "test", "--scopes", "*"]);
    let sandbox_url = sandbox.url();

    // With a sandbox upstream: each environment to its own.
    let kg = ws.serve_with_env(&[
        ("KEYGATE_UPSTREAM__SANDBOX_URL", sandbox_url.as_str()),
        ("KEYGATE_UPSTREAM__PRESERVE_HOST", "false"),
    ]);
    let reply = get(&kg.url("/open/x"), &[("x-api-key", &live)]).await;
    assert_eq!(served_by(&reply), production.addr.to_string());
    assert_eq!(reply.upstream_headers()["x-keygate-env"][0], "live");
    let reply = get(&kg.url("/open/x"), &[("x-api-key", &test)]).await;
    assert_eq!(served_by(&reply), sandbox.addr.to_string());
    assert_eq!(reply.upstream_headers()["x-keygate-env"][0], "test");
    // A live-only route refuses sandbox keys.
    let (_, billing_test) = ws.create_key(&["--env", "test", "--scopes", "billing:read"]);
    let (_, billing_live) = ws.create_key(&["--env", "live", "--scopes", "billing:read"]);
    drop(kg);
    let kg = ws.serve_with_env(&[("KEYGATE_UPSTREAM__SANDBOX_URL", sandbox_url.as_str())]);
    let reply = get(
        &kg.url("/billing/invoices"),
        &[("x-api-key", &billing_test)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        text(&reply.body).contains("sandbox"),
        "{}",
        text(&reply.body)
    );
    let reply = get(
        &kg.url("/billing/invoices"),
        &[("x-api-key", &billing_live)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    // Without a sandbox upstream, sandbox keys are refused outright.
    drop(kg);
    let kg = ws.serve();
    let reply = get(&kg.url("/open/x"), &[("x-api-key", &test)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "insufficient_permissions");
    let reply = get(&kg.url("/open/x"), &[("x-api-key", &live)]).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn workspace_routes_admit_only_keys_bound_to_that_workspace() {
    let (_p, _s, ws) = setup(RULES).await;
    let (_, bound) = ws.create_key(&["--workspace", "ws_1", "--project", "prj_9"]);
    let (_, unbound) = ws.create_key(&[]);
    let kg = ws.serve();

    let reply = get(&kg.url("/api/v2/w/ws_1/projects"), &[("x-api-key", &bound)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.upstream_headers();
    assert_eq!(seen["x-keygate-workspace"][0], "ws_1");
    assert_eq!(seen["x-keygate-project"][0], "prj_9");

    let reply = get(&kg.url("/api/v2/w/ws_2/projects"), &[("x-api-key", &bound)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "insufficient_permissions");
    assert!(text(&reply.body).contains("ws_2"));

    let reply = get(
        &kg.url("/api/v2/w/ws_1/projects"),
        &[("x-api-key", &unbound)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // The binding cannot be dodged with dot segments.
    let reply = get(
        &kg.url("/api/v2/w/ws_1/../ws_2/x"),
        &[("x-api-key", &bound)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn paths_are_normalized_before_rules_and_encoded_traversal_is_refused() {
    let (_p, _s, ws) = setup(RULES).await;
    let (_, reader) = ws.create_key(&["--scopes", "content:read"]);
    let kg = ws.serve();

    // A public prefix does not open what lies beside it.
    let reply = get(&kg.url("/public/../content/x"), &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.error_code(), "missing_api_key");

    // Nor does a readable prefix lend its rule to a path the key may not write.
    let reply = send(
        Method::POST,
        &kg.url("/open/../content/x"),
        &[("x-api-key", &reader)],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(text(&reply.body).contains("content:write"));
}

#[tokio::test]
async fn encoded_slashes_are_refused_and_encoded_dots_resolved() {
    let (_p, _s, ws) = setup(RULES).await;
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    for path in [
        "/public/..%2Fcontent",
        "/open/a%5cb",
        "/open/%2561",
        "/open/a%00",
        "/open/a;v=1",
    ] {
        let reply = get(&kg.url(path), &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.error_code(), "invalid_path");
    }
    // Encoded dots are dots: resolved before the rules, and the upstream gets the result.
    let reply = get(
        &kg.url("/public/%2e%2e/c%6fntent/x"),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["path"], "/content/x");
    let reply = get(&kg.url("/open//a/./b?q=1"), &[("x-api-key", &key)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json();
    assert_eq!(seen["path"], "/open/a/b");
    assert_eq!(seen["query"], "q=1");
}

#[tokio::test]
async fn suspend_and_resume_through_the_cli() {
    let (_p, _s, ws) = setup(RULES).await;
    let (id, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/open/x");
    assert_eq!(
        get(&url, &[("x-api-key", &key)]).await.status,
        StatusCode::OK
    );

    let out = ws.cli(&["keys", "suspend", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually(Duration::from_secs(3), || async {
        get(&url, &[("x-api-key", &key)]).await.status == StatusCode::FORBIDDEN
    })
    .await
    .expect("suspension not applied");
    assert_eq!(
        get(&url, &[("x-api-key", &key)]).await.error_code(),
        "key_suspended"
    );

    let out = ws.cli(&["keys", "resume", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eventually(Duration::from_secs(3), || async {
        get(&url, &[("x-api-key", &key)]).await.status == StatusCode::OK
    })
    .await
    .expect("resume not applied");

    // Revocation is final: a revoked key cannot be resumed.
    assert!(ws.cli(&["keys", "revoke", &id]).status.success());
    let out = ws.cli(&["keys", "resume", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_owner_cap_refuses_the_extra_key_and_writes_nothing() {
    let ws = Workspace::new("http://127.0.0.1:9", "[keys]\nmax_per_owner = 2\n");
    ws.create_key(&["--owner", "railz-team"]);
    let (second, _) = ws.create_key(&["--owner", "railz-team"]);
    ws.create_key(&["--owner", "another-team"]);
    let before = std::fs::read(ws.keys_file()).unwrap();
    let out = ws.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scopes",
        "*",
        "--owner",
        "railz-team",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("railz-team") && text(&out.stderr).contains("max_per_owner")
    );
    assert!(out.stdout.is_empty(), "printed a key that was not stored");
    assert_eq!(
        std::fs::read(ws.keys_file()).unwrap(),
        before,
        "the file changed"
    );
    // Revoking one frees a slot.
    assert!(ws.cli(&["keys", "revoke", &second]).status.success());
    ws.create_key(&["--owner", "railz-team"]);
}

#[test]
fn check_config_refuses_bad_rules_and_names_them() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n";
    let cases = [
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"/**\"\n[[route]]\npath = \"/content/**\"\nscopes = [\"content:read\"]\n",
            "route[1] (/content/**) can never match",
        ),
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"/a\"\nscopes = [\"content read\"]\n",
            "route[0] (/a)",
        ),
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"/a\"\nscopes = [\"content:*\"]\n",
            "concrete scopes",
        ),
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"/a\"\nmethods = [\"FETCH\"]\n",
            "unknown method",
        ),
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"/a\"\nenvironments = []\n",
            "allows no environment",
        ),
        (
            "[auth]\nunmatched = \"deny\"\n[[route]]\npath = \"a/**\"\n",
            "must start with '/'",
        ),
        ("[auth]\nunmatched = \"maybe\"\n", "auth.unmatched"),
        ("", "auth.unmatched"),
        (
            "[auth]\nunmatched = \"deny\"\n[network]\ntrusted_proxies = [\"10.0.0.0/99\"]\n",
            "network.trusted_proxies",
        ),
    ];
    for (extra, needle) in cases {
        std::fs::write(ws.config(), format!("{base}{extra}")).unwrap();
        let out = ws.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(
            text(&out.stderr).contains(needle),
            "{needle}: {}",
            text(&out.stderr)
        );
    }
    std::fs::write(ws.config(), format!("{base}{RULES}")).unwrap();
    let out = ws.cli(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("/api/v2/w/{workspace}/**"));
}

/// Railway's scheme: project tokens only in `Project-Access-Token`, account tokens only as
/// Bearer; an unbound key anywhere. One row per (key, headers sent).
#[tokio::test]
async fn header_bound_keys_are_refused_in_any_other_header() {
    let (_p, _s, ws) = setup("").await;
    let (project_id, project) = ws.create_key(&["--header", "project-access-token"]);
    let (_, account) = ws.create_key(&["--header", "Authorization"]);
    let (_, either) = ws.create_key(&["--header", "authorization", "--header", "x-api-key"]);
    let (_, unbound) = ws.create_key(&[]);
    let shown = ws.cli(&["keys", "show", &project_id]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["headers"],
        serde_json::json!(["project-access-token"])
    );
    let kg = ws.serve();

    let bearer = |k: &str| format!("Bearer {k}");
    let ok = Ok(());
    let refused = |only: &'static str| Err(only);
    type Row<'a> = (&'a str, Vec<(&'a str, String)>, Result<(), &'static str>);
    let rows: Vec<Row> = vec![
        (
            "project token in its header",
            vec![("project-access-token", project.clone())],
            ok,
        ),
        (
            "project token as Bearer",
            vec![("authorization", bearer(&project))],
            refused("'Project-Access-Token'"),
        ),
        (
            "project token in x-api-key",
            vec![("x-api-key", project.clone())],
            refused("'Project-Access-Token'"),
        ),
        (
            "project token in its header and as Bearer",
            vec![
                ("project-access-token", project.clone()),
                ("authorization", bearer(&project)),
            ],
            refused("'Project-Access-Token'"),
        ),
        (
            "account token as Bearer",
            vec![("authorization", bearer(&account))],
            ok,
        ),
        (
            "account token in Project-Access-Token",
            vec![("project-access-token", account.clone())],
            refused("'Authorization: Bearer'"),
        ),
        (
            "account token in x-api-key",
            vec![("x-api-key", account.clone())],
            refused("'Authorization: Bearer'"),
        ),
        (
            "two-header key as Bearer",
            vec![("authorization", bearer(&either))],
            ok,
        ),
        (
            "two-header key in x-api-key",
            vec![("x-api-key", either.clone())],
            ok,
        ),
        (
            "two-header key in Project-Access-Token",
            vec![("project-access-token", either.clone())],
            refused("Authorization: Bearer, X-Api-Key"),
        ),
        (
            "unbound key as Bearer",
            vec![("authorization", bearer(&unbound))],
            ok,
        ),
        (
            "unbound key in Project-Access-Token",
            vec![("project-access-token", unbound.clone())],
            ok,
        ),
    ];
    for (name, headers, want) in rows {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = get(&kg.url("/v1/things"), &headers).await;
        match want {
            Ok(()) => assert_eq!(
                reply.status,
                StatusCode::OK,
                "{name}: {}",
                text(&reply.body)
            ),
            Err(named) => {
                assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
                assert_eq!(
                    reply.error_code(),
                    "credential_header_not_allowed",
                    "{name}"
                );
                let message = reply.json()["error"]["message"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(message.contains(named), "{name}: {message}");
            }
        }
    }

    // The CLI refuses a header keygate does not read keys from.
    let out = ws.cli(&[
        "keys", "create", "--name", "x", "--scopes", "*", "--header", "cookie",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--header \"cookie\""),
        "{}",
        text(&out.stderr)
    );
    drop(kg);
    let narrow = Workspace::new(
        "http://127.0.0.1:9",
        "[auth]\nunmatched = \"allow\"\ncredential_headers = [\"x-api-key\"]\n",
    );
    let out = narrow.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scopes",
        "*",
        "--header",
        "project-access-token",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("credential_headers"),
        "{}",
        text(&out.stderr)
    );
}
