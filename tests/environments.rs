//! Configurable environments (issue 22.3), black-box: Raily's `dev` / `staging` / `prod`
//! configured beside the default `live` / `test`, each with its own key tag, upstream and
//! default plan; keys made before the change keep working after it.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// An upstream that answers every request with its own name.
async fn named(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn key_of(ws: &Workspace, env: &str) -> String {
    ws.create_key(&["--env", env]).1
}

#[tokio::test]
async fn three_environments_route_to_three_upstreams_and_old_keys_keep_working() {
    let live = named("live").await;
    let sandbox = named("sandbox").await;
    let ws = Workspace::new(&live, "");
    let config = std::fs::read_to_string(ws.config()).unwrap().replacen(
        "[upstream]\n",
        &format!("[upstream]\nsandbox_url = \"{sandbox}\"\n"),
        1,
    );
    std::fs::write(ws.config(), &config).unwrap();

    // Keys made under today's config: live and test only.
    let old_live = key_of(&ws, "live");
    let old_test = key_of(&ws, "test");
    assert!(old_live.starts_with("kg_sk_live_") && old_test.starts_with("kg_sk_test_"));
    let out = ws.cli(&[
        "keys", "create", "--name", "k", "--scopes", "*", "--env", "dev",
    ]);
    assert!(!out.status.success(), "dev is not configured yet");
    assert!(
        text(&out.stderr).contains("use one of live, test"),
        "{}",
        text(&out.stderr)
    );

    // Then three more environments, each with its upstream and plan.
    let (dev, staging, prod) = (
        named("dev").await,
        named("staging").await,
        named("prod").await,
    );
    let extra = format!(
        "\n[plans.dev]\nper_hour = 7\n\n[plans.prod]\nper_hour = 1000\n\n\
         [environments.dev]\nupstream = \"{dev}\"\nplan = \"dev\"\n\n\
         [environments.staging]\nupstream = \"{staging}\"\n\n\
         [environments.prod]\nupstream = \"{prod}\"\nplan = \"prod\"\n"
    );
    std::fs::write(ws.config(), format!("{config}{extra}")).unwrap();
    let out = ws.cli(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let keys = [
        ("dev", key_of(&ws, "dev"), "7"),
        ("staging", key_of(&ws, "staging"), "-"),
        ("prod", key_of(&ws, "prod"), "1000"),
        ("live", old_live, "-"),
        ("sandbox", old_test, "-"),
    ];
    assert!(keys[0].1.starts_with("kg_sk_dev_"), "{}", keys[0].1);
    assert!(keys[1].1.starts_with("kg_sk_staging_"));

    let kg = ws.serve();
    for (upstream, key, limit) in &keys {
        let reply = get(&kg.url("/v1/things"), &[("x-api-key", key)]).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{upstream}: {}",
            text(&reply.body)
        );
        assert_eq!(text(&reply.body), *upstream, "a {upstream} key's request");
        // Each environment's default plan.
        let shown = reply
            .headers
            .get("x-ratelimit-limit")
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        assert_eq!(shown, *limit, "{upstream}");
    }
    // The same routing for HTTP/2 clients (hyper's engine).
    for (upstream, key, _) in &keys {
        let req = Request::get(kg.url("/v1/things"))
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = request_h2(req).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{upstream} over HTTP/2: {}",
            text(&reply.body)
        );
        assert_eq!(
            text(&reply.body),
            *upstream,
            "a {upstream} key's request over HTTP/2"
        );
    }
    drop(kg);

    // An environment taken out of the config: its keys are refused, naming it.
    std::fs::write(ws.config(), &config).unwrap();
    let kg = ws.serve();
    let reply = get(&kg.url("/v1/things"), &[("x-api-key", &keys[0].1)]).await;
    assert_eq!(reply.error_code(), "insufficient_permissions");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dev API keys")
    );
    let reply = get(&kg.url("/v1/things"), &[("x-api-key", &keys[3].1)]).await;
    assert_eq!(text(&reply.body), "live");
}

#[test]
fn check_config_names_a_bad_environment() {
    for (toml, needle) in [
        (
            "[environments.Dev]\nupstream = \"http://127.0.0.1:1\"\n",
            "[environments.Dev]: a tag is",
        ),
        (
            "[environments.dev_1]\nupstream = \"http://127.0.0.1:1\"\n",
            "lowercase letters and digits",
        ),
        ("[environments.dev]\n", "upstream is required"),
        (
            "[environments.live]\nupstream = \"http://127.0.0.1:1\"\n",
            "keep [upstream] url",
        ),
        (
            "[environments.dev]\nupstream = \"http://127.0.0.1:1\"\nplan = \"nope\"\n",
            "no [plans.nope]",
        ),
        (
            "[environments.dev]\nupstream = \"nope\"\n",
            "[environments.dev]: upstream",
        ),
        (
            "[environments.dev]\nupstream = \"http://127.0.0.1:1\"\nplna = \"x\"\n",
            "unknown field `plna`",
        ),
        (
            "[[route]]\npath = \"/x\"\nenvironments = [\"qa\"]\n",
            "use one of live, test",
        ),
    ] {
        let ws = Workspace::new("http://127.0.0.1:9", toml);
        let out = ws.cli(&["check-config"]);
        assert!(!out.status.success(), "{toml}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{toml}: {err}");
    }
}

/// The management API makes keys in configured environments only.
#[tokio::test]
async fn the_api_creates_keys_in_configured_environments() {
    let up = Upstream::start().await;
    let staging = named("staging").await;
    let ws = Workspace::new(
        &up.url(),
        &format!("[environments.staging]\nupstream = \"{staging}\"\n"),
    );
    let (_, admin) = ws.create_key(&["--scopes", "*,keygate:keys:write"]);
    let kg = ws.serve_with_env(&[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0")]);
    let create = |env: &'static str| {
        let (url, admin) = (kg.manage_url("/v1/keys"), admin.clone());
        async move {
            let body = serde_json::json!({"name": "k", "scopes": ["*"], "env": env});
            send(
                http::Method::POST,
                &url,
                &[
                    ("authorization", &format!("Bearer {admin}")),
                    ("content-type", "application/json"),
                ],
                Bytes::from(body.to_string()),
            )
            .await
        }
    };
    let made = create("staging").await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", text(&made.body));
    let key = made.json()["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("kg_sk_staging_"), "{key}");
    let reply = get(&kg.url("/v1/things"), &[("x-api-key", &key)]).await;
    assert_eq!(text(&reply.body), "staging");

    let refused = create("qa").await;
    assert_eq!(refused.error_code(), "invalid_parameter");
    assert!(text(&refused.body).contains("use one of live, test, staging"));
}
