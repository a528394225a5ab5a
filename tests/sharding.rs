//! `[server] sharded` on the real binary: every shard accepts clients on the public port,
//! over HTTP/1.1 and HTTP/2; the shards share one key cache and one limiter (a key's limit
//! holds across them exactly); and SIGTERM stops them all in order.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;

const SHARDS: usize = 2;
const LIMIT: usize = 120;

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
            let req = Request::get(&url)
                .header("x-api-key", &key)
                .body(Full::new(Bytes::new()))
                .unwrap();
            if i % 2 == 0 {
                request(req).await
            } else {
                request_h2(req).await
            }
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
