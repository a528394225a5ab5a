//! Per-route limits (issue 22.4), black-box: a `[[route]]` with limits of its own
//! (`POST /v1/exports`, 10 an hour per key) on top of the key's plan, counted exactly by one
//! sidecar (file store) and by three sharing Redis; the headers report the tighter window.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::redis::RedisServer;
use common::*;
use http::{Method, StatusCode};

const CONFIG: &str = r#"
[plans.web]
per_hour = 1000

[plans.trial]
per_hour = 3

[limits]
default_plan = "web"

[[route]]
path = "/v1/exports"
methods = ["POST"]
limits = { per_hour = 10 }
"#;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An hourly quota test must not straddle the top of the hour: wait it out if close.
async fn clear_of_the_hour_boundary() {
    let into = now_secs() % 3600;
    if into > 3600 - 45 {
        tokio::time::sleep(Duration::from_secs(3600 - into + 1)).await;
    }
}

async fn export(kg: &Keygate, key: &str) -> Reply {
    send(
        Method::POST,
        &kg.url("/v1/exports"),
        &[("x-api-key", key)],
        Bytes::new(),
    )
    .await
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply.headers.get(name).map_or("-", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn one_sidecar_counts_a_route_exactly_per_key() {
    clear_of_the_hour_boundary().await;
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), CONFIG);
    let (_, a) = ws.create_key(&[]);
    let (_, b) = ws.create_key(&[]);
    let (_, trial) = ws.create_key(&["--plan", "trial"]);
    let kg = ws.serve();

    let mut admitted = 0;
    for i in 0..15 {
        let reply = export(&kg, &a).await;
        match reply.status {
            StatusCode::OK => {
                admitted += 1;
                // The route's window is the tighter one: it is what the headers report.
                assert_eq!(header(&reply, "x-ratelimit-limit"), "10", "request {i}");
                assert_eq!(
                    header(&reply, "x-ratelimit-remaining"),
                    (10 - admitted).to_string(),
                    "request {i}"
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(reply.error_code(), "rate_limit_exceeded");
                assert_eq!(header(&reply, "x-ratelimit-limit"), "10");
                assert_eq!(header(&reply, "x-ratelimit-remaining"), "0");
                let retry: u64 = header(&reply, "retry-after").parse().unwrap();
                assert!((1..=3600).contains(&retry), "{retry}");
            }
            other => panic!("{other}: {}", text(&reply.body)),
        }
    }
    assert_eq!(admitted, 10);

    // The key's other requests: its plan alone, which the 5 refused exports did not touch
    // (10 exports + this one of its 1000 an hour).
    let other = get(&kg.url("/v1/things"), &[("x-api-key", &a)]).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(header(&other, "x-ratelimit-limit"), "1000");
    assert_eq!(header(&other, "x-ratelimit-remaining"), "989");

    // Another key has ten exports of its own.
    for _ in 0..10 {
        assert_eq!(export(&kg, &b).await.status, StatusCode::OK);
    }
    assert_eq!(export(&kg, &b).await.status, StatusCode::TOO_MANY_REQUESTS);

    // A key whose plan is tighter than the route (3 an hour against 10): the plan is what
    // binds and what the headers report.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let reply = export(&kg, &trial).await;
        seen.push((
            reply.status.as_u16(),
            header(&reply, "x-ratelimit-limit").to_owned(),
            header(&reply, "x-ratelimit-remaining").to_owned(),
        ));
    }
    let want: Vec<(u16, String, String)> = [
        (200, "3", "2"),
        (200, "3", "1"),
        (200, "3", "0"),
        (429, "3", "0"),
        (429, "3", "0"),
    ]
    .iter()
    .map(|(s, l, r)| (*s, (*l).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn three_sidecars_on_redis_share_a_route_limit_exactly() {
    clear_of_the_hour_boundary().await;
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(&up.url(), &redis.url(), CONFIG);
    let (_, a) = ws.create_key(&[]);
    let (_, b) = ws.create_key(&[]);
    let sidecars: Vec<Keygate> = (0..3).map(|_| ws.serve()).collect();

    // Round robin over the sidecars until every one refuses: whatever a sidecar holds of
    // the route's quota is spent on it, so the total is exact.
    for key in [&a, &b] {
        let (mut admitted, mut refused) = (0, 0);
        for i in 0..45 {
            let reply = export(&sidecars[i % 3], key).await;
            match reply.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("{other}: {}", text(&reply.body)),
            }
        }
        eprintln!(
            "3 sidecars, POST /v1/exports 10 per hour: {admitted} admitted, {refused} refused"
        );
        assert_eq!(admitted, 10, "key {}", &key[..12]);
        assert_eq!(refused, 35);
    }
    // Redis holds the route's counters beside the keys' own: two keys' plans, and two keys
    // on one route.
    let counters = redis.cli(&["--scan", "--pattern", "*quota*hour*"]);
    assert_eq!(counters.lines().count(), 4, "{counters}");
}

#[test]
fn check_config_names_a_bad_route_limit() {
    for (limits, needle) in [
        (
            "{ per_hour = 0 }",
            "route[0] (/v1/exports): limits: limits must be between",
        ),
        ("{}", "route[0] (/v1/exports): limits: set at least one"),
        ("{ per_hours = 10 }", "unknown field `per_hours`"),
        (
            "{ burst = 5, per_hour = 10 }",
            "burst needs per_second or per_minute",
        ),
    ] {
        let config = format!("[[route]]\npath = \"/v1/exports\"\nlimits = {limits}\n");
        let ws = Workspace::new("http://127.0.0.1:9", &config);
        let out = ws.cli(&["check-config"]);
        assert!(!out.status.success(), "{limits}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{limits}: {err}");
    }
}
