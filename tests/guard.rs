//! The credential-stuffing guard against the real binary: a burst of made-up keys from one
//! address is refused with 429 after `[guard] max_invalid`, at no more store reads than that;
//! other addresses, and keys the sidecar knows, are unaffected; three sidecars on one Redis
//! share the count.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use keygate::credential::generate_key;
use keygate::keys::{Environment, KeyType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// One GET from the local address `from` (any 127.x.y.z): the status and, for a refusal,
/// keygate's error code.
async fn get_from(kg: SocketAddr, from: &str, key: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut tcp = socket.connect(kg).await.unwrap();
    let req =
        format!("GET /v1/x HTTP/1.1\r\nHost: a\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut raw))
        .await
        .expect("no answer")
        .unwrap();
    let text = text(&raw);
    let status: u16 = text[9..12].parse().unwrap();
    let code = text
        .split("\"code\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

fn made_up_key() -> String {
    generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap()
}

const GUARD: &str = "[guard]\nmax_invalid = 10\nwindow = \"1m\"\nblock_for = \"1m\"\n";

#[tokio::test]
async fn a_burst_of_made_up_keys_is_refused_after_the_threshold_at_no_more_reads() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), GUARD);
    let (_, good) = ws.create_key(&[]);
    let (_, good_unseen) = ws.create_key(&[]);
    let kg = ws.serve();
    // The good key is known to this sidecar before the attack.
    assert_eq!(get_from(kg.public, "127.0.0.1", &good).await.0, 200);
    let reads_before = kg.metric("keygate_key_store_reads_total").await.unwrap();

    let mut refused_at = None;
    for i in 0..50 {
        let (status, code) = get_from(kg.public, "127.0.0.1", &made_up_key()).await;
        match status {
            401 => assert_eq!(code, "invalid_api_key"),
            429 => {
                assert_eq!(code, "too_many_invalid_keys");
                refused_at.get_or_insert(i);
            }
            other => panic!("status {other} ({code})"),
        }
        if refused_at.is_some() {
            assert_eq!(status, 429, "request {i} after the block");
        }
    }
    assert_eq!(
        refused_at,
        Some(10),
        "the 11th made-up key is the first refused"
    );
    let reads = kg.metric("keygate_key_store_reads_total").await.unwrap() - reads_before;
    assert!(reads <= 10.0, "{reads} store reads for 10 allowed failures");

    // Malformed keys from the blocked address are refused too, before anything else.
    let (status, code) = get_from(kg.public, "127.0.0.1", "kg_sk_live_junk").await;
    assert_eq!((status, code.as_str()), (429, "too_many_invalid_keys"));
    // A key this sidecar knows still passes from there; one it would have to look up does not.
    assert_eq!(get_from(kg.public, "127.0.0.1", &good).await.0, 200);
    assert_eq!(get_from(kg.public, "127.0.0.1", &good_unseen).await.0, 429);
    // Another address is not affected.
    assert_eq!(get_from(kg.public, "127.0.0.2", &good_unseen).await.0, 200);
    assert_eq!(
        get_from(kg.public, "127.0.0.2", &made_up_key()).await.0,
        401
    );

    assert_eq!(kg.metric("keygate_guard_blocks_total").await, Some(1.0));
    assert_eq!(
        kg.metric(r#"keygate_requests_total{class="4xx",decision="too_many_invalid_keys"}"#)
            .await,
        Some(42.0)
    );
    let logs = kg.all_logs();
    assert_eq!(
        logs.matches("too many invalid API keys from one source")
            .count(),
        1,
        "one warning per block"
    );
}

#[tokio::test]
async fn a_junk_burst_of_malformed_keys_is_stopped_too_and_can_block_known_keys() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), &format!("{GUARD}block_known_keys = true\n"));
    let (_, good) = ws.create_key(&[]);
    let kg = ws.serve();
    assert_eq!(get_from(kg.public, "127.0.0.3", &good).await.0, 200);
    for _ in 0..10 {
        let (status, _) = get_from(kg.public, "127.0.0.3", "kg_sk_live_notakey").await;
        assert_eq!(status, 401);
    }
    let (status, code) = get_from(kg.public, "127.0.0.3", "kg_sk_live_notakey").await;
    assert_eq!((status, code.as_str()), (429, "too_many_invalid_keys"));
    assert_eq!(get_from(kg.public, "127.0.0.3", &good).await.0, 429);
}

#[tokio::test]
async fn three_sidecars_on_redis_share_the_count() {
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let ws = Workspace::redis(&up.url(), &redis.url(), GUARD);
    let sidecars = [ws.serve(), ws.serve(), ws.serve()];
    let mut reads = 0.0;
    for kg in &sidecars {
        reads -= kg.metric("keygate_key_store_reads_total").await.unwrap();
    }
    // Round robin over the three: each sidecar alone would allow 10 failures (30 in all).
    let mut unauthorized = 0;
    let mut blocked = [false; 3];
    for i in 0..60 {
        let n = i % 3;
        let (status, _) = get_from(sidecars[n].public, "127.0.0.4", &made_up_key()).await;
        match status {
            401 => {
                assert!(!blocked[n], "sidecar {n} answered 401 after refusing");
                unauthorized += 1;
            }
            429 => blocked[n] = true,
            other => panic!("status {other}"),
        }
    }
    assert_eq!(blocked, [true; 3]);
    // Each sidecar learns the shared count on its own next failure: at most one more each.
    assert!(
        (10..=12).contains(&unauthorized),
        "{unauthorized} made-up keys answered before all three refused"
    );
    for kg in &sidecars {
        reads += kg.metric("keygate_key_store_reads_total").await.unwrap();
    }
    assert!(reads <= 12.0, "{reads} store reads");
    // A fresh address is fine on every sidecar.
    for kg in &sidecars {
        assert_eq!(
            get_from(kg.public, "127.0.0.5", &made_up_key()).await.0,
            401
        );
    }
}
