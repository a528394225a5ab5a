//! `[server] sharded` on the real binary: every shard accepts clients on the public port,
//! over HTTP/1.1 and HTTP/2; the shards share one key cache and one limiter (a key's limit
//! holds across them exactly); a revocation through a real Redis reaches every shard; and
//! SIGTERM stops them all in order, the last writes to Redis included.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::redis::RedisServer;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

const SHARDS: usize = 2;
const LIMIT: usize = 120;

/// One request on a connection of its own (so that the kernel picks a shard for each),
/// HTTP/1.1 or h2c by `i`.
async fn on_a_new_connection(url: &str, key: &str, i: usize) -> Reply {
    let req = Request::get(url)
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    if i.is_multiple_of(2) {
        request(req).await
    } else {
        request_h2(req).await
    }
}

/// Listening sockets on `port` in the kernel's table (`/proc/net/tcp`, state 0A).
fn listening_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1).is_some_and(|a| a.ends_with(&local)) && fields.get(3) == Some(&"0A")
        })
        .count()
}

#[tokio::test]
async fn shards_share_the_port_the_keys_and_the_limits_and_stop_in_order() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        &format!(
            "[server]\nworkers = {SHARDS}\nsharded = true\ndrain_period = \"200ms\"\n\
             [plans.p]\nper_hour = {LIMIT}\n[limits]\ndefault_plan = \"p\"\n"
        ),
    );
    let (_, key) = ws.create_key(&[]);
    let mut kg = ws.serve();
    assert!(
        kg.all_logs().contains(&format!("\"shards\":{SHARDS}")),
        "the ready line names the shards: {}",
        kg.all_logs()
    );
    assert_eq!(
        listening_on(kg.public.port()),
        SHARDS,
        "one socket per shard on the public port"
    );

    // Every request on a connection of its own, so that the kernel spreads them; HTTP/1.1
    // and HTTP/2 alike. One key: its limit is one count, whichever shard admits.
    let url = kg.url("/v1/sharded");
    let mut tasks = Vec::new();
    for i in 0..LIMIT + 40 {
        let (url, key) = (url.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            on_a_new_connection(&url, &key, i).await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(reply.error_code(), "rate_limit_exceeded");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", text(&reply.body)),
        }
    }
    assert_eq!(
        (admitted, refused),
        (LIMIT, 40),
        "the limit holds across shards"
    );

    let mut accepted = Vec::new();
    for shard in 0..SHARDS {
        let sample = format!("keygate_connections_accepted_total{{shard=\"{shard}\"}}");
        accepted.push(kg.metric(&sample).await.unwrap_or(0.0));
    }
    assert!(
        accepted.iter().all(|&n| n > 0.0),
        "every shard accepted clients: {accepted:?}"
    );
    assert!(
        accepted.iter().sum::<f64>() >= (LIMIT + 40) as f64,
        "{accepted:?}"
    );

    // A client still connected when SIGTERM comes is served through the drain.
    kg.signal("TERM");
    let during = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(during.status, StatusCode::TOO_MANY_REQUESTS);
    kg.exits_cleanly_within(Duration::from_secs(10)).await;
    assert!(
        kg.all_logs().contains("keygate stopped"),
        "{}",
        kg.all_logs()
    );
}

#[tokio::test]
async fn with_redis_a_revocation_reaches_every_shard_and_the_exit_flush_still_writes() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(
        &up.url(),
        &redis.url(),
        &format!("[server]\nworkers = {SHARDS}\nsharded = true\ndrain_period = \"200ms\"\n"),
    );
    let (kept, kept_key) = ws.create_key(&[]);
    let (revoked, revoked_key) = ws.create_key(&[]);
    let mut kg = ws.serve();
    kg.first_poll().await;
    let url = kg.url("/v1/sharded");
    for i in 0..40 {
        for key in [&kept_key, &revoked_key] {
            let reply = on_a_new_connection(&url, key, i).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
        }
    }

    let out = ws.cli(&["keys", "revoke", &revoked]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let refused = eventually(Duration::from_secs(5), || async {
        on_a_new_connection(&url, &revoked_key, 0).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused.is_some(), "the revocation never arrived");
    // Every later connection, whichever shard takes it, refuses the key and admits the other.
    for i in 0..40 {
        let reply = on_a_new_connection(&url, &revoked_key, i).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "request {i}");
        let reply = on_a_new_connection(&url, &kept_key, i).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
    }
    for shard in 0..SHARDS {
        let sample = format!("keygate_connections_accepted_total{{shard=\"{shard}\"}}");
        let accepted = kg.metric(&sample).await.unwrap_or(0.0);
        assert!(accepted > 0.0, "shard {shard} accepted no client");
    }

    // The last-used write-behind goes to Redis after the shards stopped accepting.
    kg.signal("TERM");
    kg.exits_cleanly_within(Duration::from_secs(10)).await;
    let shown: serde_json::Value =
        serde_json::from_slice(&ws.cli(&["keys", "show", &kept]).stdout).unwrap();
    assert!(shown["last_used_at"].is_string(), "{shown}");
}
