//! Black-box tests of plans and rate limits: the header set on 200 and 429 in both reset
//! styles, per-key overrides, and refusals that count against nothing.

mod common;

use common::*;
use http::StatusCode;

const PLANS: &str = r#"
[plans.tiny]
per_minute = 3
per_hour = 100

[plans.pro]
per_second = 100
per_day = 10000

[limits]
default_plan = "tiny"
"#;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn headers_on_200_and_429_with_epoch_reset() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), PLANS);
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let h = &reply.headers;
        assert_eq!(h["x-ratelimit-limit"], "3");
        remaining.push(
            h["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            reset >= now_secs() && reset <= now_secs() + 61,
            "epoch reset {reset}"
        );
        assert_eq!(h["ratelimit-policy"], "\"per_minute\";q=3;w=60");
        assert!(
            h["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"per_minute\";r=")
        );
    }
    assert_eq!(remaining, vec![2, 1, 0]);

    let refused = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "rate_limit_exceeded");
    assert!(
        text(&refused.body).contains("per minute"),
        "{}",
        text(&refused.body)
    );
    let h = &refused.headers;
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let t: u64 = h["ratelimit"]
        .to_str()
        .unwrap()
        .rsplit("t=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry >= 1 && retry >= t,
        "Retry-After {retry} before the reset {t}"
    );
    assert!(h["ratelimit"].to_str().unwrap().contains(";r=0;"));
}

#[tokio::test]
async fn delta_reset_and_per_key_overrides() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), &format!("{PLANS}reset = \"delta\"\n"));
    let (_, key) = ws.create_key(&["--plan", "pro", "--limit", "per_second=2"]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    let first = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers["x-ratelimit-limit"], "2",
        "the key's own per_second"
    );
    let reset: u64 = first.headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset <= 1, "delta seconds, got {reset}");
    get(&url, &[("x-api-key", &key)]).await;
    let refused = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "1");

    // Unknown plans and bad overrides are refused at creation, not discovered in traffic.
    let out = ws.cli(&[
        "keys", "create", "--name", "x", "--scopes", "*", "--plan", "gold",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("gold"));
    let out = ws.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scopes",
        "*",
        "--limit",
        "per_year=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("per_year"));
}

#[tokio::test]
async fn refused_requests_do_not_consume_quota() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        "[plans.p]\nper_hour = 2\n[limits]\ndefault_plan = \"p\"\n",
    );
    let (_, key) = ws.create_key(&["--allow-ip", "10.0.0.0/8"]);
    let (_, good) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/");
    // 403s (outside the allowlist) never reach the limiter: no headers, no count.
    for _ in 0..5 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(!reply.headers.contains_key("x-ratelimit-remaining"));
    }
    assert_eq!(
        get(&url, &[("x-api-key", &good)]).await.headers["x-ratelimit-remaining"],
        "1"
    );
    assert_eq!(
        get(&url, &[("x-api-key", &good)]).await.headers["x-ratelimit-remaining"],
        "0"
    );
    for _ in 0..3 {
        assert_eq!(
            get(&url, &[("x-api-key", &good)]).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // Keys without a plan (no default) carry no rate-limit headers at all.
    let plain = Workspace::new(&up.url(), "");
    let (_, free) = plain.create_key(&[]);
    let kg2 = plain.serve();
    let reply = get(&kg2.url("/"), &[("x-api-key", &free)]).await;
    assert!(!reply.headers.contains_key("x-ratelimit-limit"));
}

#[test]
fn check_config_validates_plans() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    for (extra, needle) in [
        ("[plans.free]\n", "sets no limit"),
        ("[plans.free]\nper_hour = 0\n", "[plans.free]"),
        ("[plans.free]\nper_fortnight = 1\n", "per_fortnight"),
        ("[plans.free]\nburst = 5\nper_hour = 1\n", "burst needs"),
        ("[limits]\ndefault_plan = \"gold\"\n", "limits.default_plan"),
        ("[limits]\nreset = \"soon\"\n", "limits.reset"),
        ("[limits]\nlocal_share = 0\n", "limits.local_share"),
    ] {
        std::fs::write(
            ws.config(),
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\nunmatched = \"allow\"\n{extra}"
            ),
        )
        .unwrap();
        let out = ws.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(
            text(&out.stderr).contains(needle),
            "{needle}: {}",
            text(&out.stderr)
        );
    }
}
