//! One contract every key store keeps, run against the file store and against real Redis:
//! standalone, Cluster (three `redis-server --cluster-enabled yes`) and Sentinel.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::redis::{RedisCluster, RedisSentinel, RedisServer};
use keygate::keys::file::FileStore;
use keygate::keys::manage::{self, Change, Edit, KeyPolicy, KeySpec, UNSTAMPED};
use keygate::keys::redis::{RedisConfig, RedisMode, RedisStore};
use keygate::keys::{
    Batch, Environment, Invalidation, KeyHash, KeyStore, KeyType, Status, StoreError, Update,
};
use keygate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

fn spec(owner: &str) -> KeySpec {
    KeySpec {
        allowed_origins: Vec::new(),
        name: "contract".into(),
        owner: owner.into(),
        key_type: KeyType::Secret,
        env: Environment::LIVE,
        scopes: vec!["content:read".into()],
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        expires_at: None,
        plan: Some("pro".into()),
        limits: Default::default(),
        workspace: Some("ws_1".into()),
        project: None,
        headers: Vec::new(),
    }
}

fn policy(max: Option<u32>) -> KeyPolicy {
    KeyPolicy {
        prefix: "kg".into(),
        max_per_owner: max,
    }
}

fn redis_store(mode: RedisMode) -> Arc<dyn KeyStore> {
    Arc::new(
        RedisStore::new(
            RedisConfig {
                mode,
                username: None,
                password: None,
                ca_file: None,
                namespace: "contract".into(),
                timeout: Duration::from_secs(2),
                epoch_poll: Duration::from_millis(200),
                confirm_within: Duration::from_secs(5),
                ready_requires_current: false,
                quota_fallback: Default::default(),
            },
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    )
}

/// The contract. `a` and `b` are two handles on the same storage (two processes, in effect).
async fn contract(a: Arc<dyn KeyStore>, b: Arc<dyn KeyStore>) {
    let now = SystemTime::now();
    // Both handles run their change feeds, as a serving proxy does: that is how a store that
    // keeps records in memory (the file store) learns of another process's writes.
    let feeds = CancellationToken::new();
    for store in [&a, &b] {
        store.clone().watch(Arc::new(|_| {}), feeds.clone());
    }

    // Create, read back by hash and by id, from the other handle too.
    let k1 = manage::create(a.as_ref(), &policy(None), spec("acme"), now)
        .await
        .unwrap();
    let hash = KeyHash::of(&k1.key);
    let got = a
        .get(&hash)
        .await
        .unwrap()
        .expect("created key is readable");
    assert_eq!(got.id, k1.record.id);
    assert_eq!(got.scopes, vec!["content:read"]);
    assert_eq!(got.workspace.as_deref(), Some("ws_1"));
    let (by_id_hash, by_id) = b.by_id(&k1.record.id).await.unwrap().unwrap();
    assert_eq!(by_id_hash, hash);
    assert_eq!(by_id.plan.as_deref(), Some("pro"));
    assert!(b.by_id("key_missing").await.unwrap().is_none());
    assert!(
        a.get(&KeyHash::of("kg_sk_live_nope"))
            .await
            .unwrap()
            .is_none()
    );

    // Many at once; list and owner filter; the secret is never listed.
    manage::create_many(a.as_ref(), &policy(None), spec("other"), 3, now)
        .await
        .unwrap();
    let all = b.list(None).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(b.list(Some("acme")).await.unwrap().len(), 1);
    assert!(!serde_json::to_string(&all).unwrap().contains(&k1.key));

    // Status changes, seen through the other handle; revocation is final.
    let suspended = manage::update(b.as_ref(), &k1.record.id, Change::Suspend)
        .await
        .unwrap();
    assert_eq!(suspended.status, Status::Suspended);
    eventually_status(&a, hash, Status::Suspended).await;
    manage::update(a.as_ref(), &k1.record.id, Change::Resume)
        .await
        .unwrap();
    assert!(
        manage::update(a.as_ref(), &k1.record.id, Change::Resume)
            .await
            .is_err()
    );
    manage::update(a.as_ref(), &k1.record.id, Change::Revoke)
        .await
        .unwrap();
    eventually_status(&b, hash, Status::Revoked).await;
    assert!(matches!(
        manage::update(a.as_ref(), &k1.record.id, Change::Resume).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        manage::update(a.as_ref(), "key_missing", Change::Revoke).await,
        Err(StoreError::NotFound(_))
    ));

    // Deletion: a revoked key's record only; afterwards it is unknown by hash and by id
    // through both handles, and a second delete finds nothing.
    let gone = manage::create(a.as_ref(), &policy(None), spec("gone"), now)
        .await
        .unwrap();
    let gone_hash = KeyHash::of(&gone.key);
    assert!(matches!(
        manage::delete(b.as_ref(), &gone.record.id, manage::UNSTAMPED).await,
        Err(StoreError::Conflict { .. })
    ));
    manage::update(a.as_ref(), &gone.record.id, Change::Revoke)
        .await
        .unwrap();
    let deleted = manage::delete(b.as_ref(), &gone.record.id, manage::UNSTAMPED)
        .await
        .unwrap();
    assert_eq!(deleted.status, Status::Revoked);
    assert!(b.by_id(&gone.record.id).await.unwrap().is_none());
    eventually_status_of(&a, gone_hash, None).await;
    assert!(a.by_id(&gone.record.id).await.unwrap().is_none());
    assert!(b.list(Some("gone")).await.unwrap().is_empty());
    assert!(matches!(
        manage::delete(a.as_ref(), &gone.record.id, manage::UNSTAMPED).await,
        Err(StoreError::NotFound(_))
    ));

    // Compare-and-set: an update from a stale read fails and changes nothing.
    let k2 = manage::create(a.as_ref(), &policy(None), spec("cas"), now)
        .await
        .unwrap();
    let h2 = KeyHash::of(&k2.key);
    let mut stale = k2.record.clone();
    stale.name = "not what is stored".into();
    let mut after = k2.record.clone();
    after.status = Status::Revoked;
    let err = a
        .commit(Batch {
            updates: vec![Update {
                hash: h2,
                before: stale,
                after,
            }],
            ..Batch::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Changed), "{err}");
    assert_eq!(a.get(&h2).await.unwrap().unwrap().status, Status::Active);

    // Duplicates are refused.
    let dup = a
        .commit(Batch {
            inserts: vec![(h2, k2.record.clone())],
            ..Batch::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::Duplicate), "{dup}");

    // The owner cap counts live keys, refuses atomically, and frees a slot on revocation.
    let capped = policy(Some(2));
    let c1 = manage::create(a.as_ref(), &capped, spec("railz"), now)
        .await
        .unwrap();
    manage::create(b.as_ref(), &capped, spec("railz"), now)
        .await
        .unwrap();
    let before = a.list(Some("railz")).await.unwrap().len();
    let err = manage::create(a.as_ref(), &capped, spec("railz"), now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OwnerCap { max: 2, .. }), "{err}");
    let err = manage::create_many(a.as_ref(), &capped, spec("fresh"), 3, now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OwnerCap { .. }), "{err}");
    assert_eq!(
        a.list(Some("railz")).await.unwrap().len(),
        before,
        "nothing written"
    );
    assert!(
        a.list(Some("fresh")).await.unwrap().is_empty(),
        "all or none"
    );
    manage::update(a.as_ref(), &c1.record.id, Change::Revoke)
        .await
        .unwrap();
    manage::create(a.as_ref(), &capped, spec("railz"), now)
        .await
        .unwrap();

    // An expired key holds no slot, so giving it a new expiry (or none) takes one, as a
    // create does: refused at the cap, whatever else the edit changes.
    let one = policy(Some(1));
    let expired_spec = KeySpec {
        expires_at: Some(now - Duration::from_secs(3600)),
        ..spec("lift")
    };
    let expired = manage::create(a.as_ref(), &one, expired_spec, now)
        .await
        .unwrap();
    let live = manage::create(b.as_ref(), &one, spec("lift"), now)
        .await
        .unwrap();
    let later = now + Duration::from_secs(86_400);
    let lifts = [Some(later), None].map(|at| Edit {
        expires_at: Some(at),
        ..Edit::default()
    });
    for lift in &lifts {
        let err = manage::edit(
            b.as_ref(),
            &one,
            &expired.record.id,
            lift.clone(),
            UNSTAMPED,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, StoreError::OwnerCap { max: 1, ref owner } if owner == "lift"),
            "{err}"
        );
    }
    let (_, still) = a.by_id(&expired.record.id).await.unwrap().unwrap();
    assert_eq!(
        still.expires_at, expired.record.expires_at,
        "nothing written"
    );
    // An edit that leaves it expired takes no slot; nor does one of a key that counts.
    let rename = Edit {
        name: Some("renamed".into()),
        ..Edit::default()
    };
    manage::edit(
        a.as_ref(),
        &one,
        &expired.record.id,
        rename.clone(),
        UNSTAMPED,
    )
    .await
    .unwrap();
    let extend = Edit {
        expires_at: Some(Some(later)),
        ..Edit::default()
    };
    manage::edit(a.as_ref(), &one, &live.record.id, extend, UNSTAMPED)
        .await
        .unwrap();
    // With the slot free again, the lift goes through.
    manage::update(a.as_ref(), &live.record.id, Change::Revoke)
        .await
        .unwrap();
    let lifted = manage::edit(
        b.as_ref(),
        &one,
        &expired.record.id,
        lifts[0].clone(),
        UNSTAMPED,
    )
    .await
    .unwrap();
    assert_eq!(lifted.expires_at, Some(later));
    let err = manage::create(a.as_ref(), &one, spec("lift"), now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::OwnerCap { .. }),
        "the lifted key holds the slot: {err}"
    );

    // Rotation: a new key with the same settings; the old one expires after the grace.
    let old = manage::create(a.as_ref(), &policy(None), spec("rot"), now)
        .await
        .unwrap();
    let new = manage::rotate(
        b.as_ref(),
        &policy(None),
        &old.record.id,
        Duration::from_secs(3600),
        now,
    )
    .await
    .unwrap();
    assert_ne!(new.key, old.key);
    assert_eq!(new.record.scopes, old.record.scopes);
    eventually_status(&a, KeyHash::of(&new.key), Status::Active).await;
    let old_now = a.get(&KeyHash::of(&old.key)).await.unwrap().unwrap();
    assert_eq!(old_now.status, Status::Active);
    let expires = old_now.expires_at.expect("the old key got an expiry");
    assert!(expires > now && expires <= now + Duration::from_secs(3600));

    // Last-used, written behind in a batch, shows in list and by_id.
    let used_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    a.record_usage(vec![(k2.record.id.clone(), used_at)])
        .await
        .unwrap();
    let (_, shown) = b.by_id(&k2.record.id).await.unwrap().unwrap();
    assert_eq!(shown.last_used_at, Some(used_at));
    let listed = b.list(Some("cas")).await.unwrap();
    assert_eq!(listed[0].last_used_at, Some(used_at));
    // A busy period's batch (more ids than one Redis write carries) lands whole.
    let bulk = manage::create_many(a.as_ref(), &policy(None), spec("bulk"), 1_201, now)
        .await
        .unwrap();
    let bulk_at = used_at + Duration::from_secs(60);
    a.record_usage(
        bulk.iter()
            .map(|k| (k.record.id.clone(), bulk_at))
            .collect(),
    )
    .await
    .unwrap();
    let listed = b.list(Some("bulk")).await.unwrap();
    assert_eq!(listed.len(), 1_201);
    assert!(listed.iter().all(|r| r.last_used_at == Some(bulk_at)));
    // Usage does not disturb compare-and-set updates.
    manage::update(b.as_ref(), &k2.record.id, Change::Suspend)
        .await
        .unwrap();

    // The change feed: a change made through one handle reaches the other's watcher. The
    // feeds started above stop first: two pollers of one file store race for each change,
    // and the one that sees it first is the one that reports it.
    feeds.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heard: Arc<Mutex<Vec<Invalidation>>> = Arc::default();
    let sink_heard = heard.clone();
    let stop = CancellationToken::new();
    a.clone().watch(
        Arc::new(move |inv| sink_heard.lock().unwrap().push(inv)),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let watched = manage::create(b.as_ref(), &policy(None), spec("watch"), now)
        .await
        .unwrap();
    let wh = KeyHash::of(&watched.key);
    manage::update(b.as_ref(), &watched.record.id, Change::Revoke)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let seen = heard.lock().unwrap().clone();
        if seen.contains(&Invalidation::Key(wh)) || seen.contains(&Invalidation::All) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no invalidation heard: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();

    audit_contract(&a, &b).await;
}

/// The audit trail: what one handle appends (in batches, in order) the other reads, filtered
/// by key, owner and time, the latest `limit` of them, oldest first.
async fn audit_contract(a: &Arc<dyn KeyStore>, b: &Arc<dyn KeyStore>) {
    use keygate::keys::audit::{AuditEvent, AuditQuery};
    let start = SystemTime::now();
    let event = |i: u64, key: &str, owner: &str| AuditEvent {
        at: start + Duration::from_millis(i),
        actor: "cli:test@host".into(),
        action: "revoke".into(),
        key_id: Some(key.into()),
        owner: Some(owner.into()),
        changed: vec!["status".into()],
        new_key_id: None,
        result: "ok".into(),
    };
    let first: Vec<AuditEvent> = (0..3).map(|i| event(i, "key_a", "acme")).collect();
    a.append_audit(&first).await.unwrap();
    b.append_audit(&[event(3, "key_b", "globex")])
        .await
        .unwrap();
    let since = |q: AuditQuery| AuditQuery {
        since: Some(start),
        ..q
    };
    let all = b.audit_events(&since(AuditQuery::default())).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[..3], first[..]);
    let only_b = a
        .audit_events(&since(AuditQuery {
            key_id: Some("key_b".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    let acme = a
        .audit_events(&since(AuditQuery {
            owner: Some("acme".into()),
            limit: Some(2),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(acme, first[1..]);

    // A change's events are committed with it (`Batch::events`): both or neither. A refused
    // change (a stale compare-and-set, the owner cap) leaves no event.
    let key = manage::create(a.as_ref(), &policy(None), spec("audited"), start)
        .await
        .unwrap();
    let id = key.record.id.clone();
    let stamped = |n: u64| {
        let event = event(10 + n, &id, "audited");
        move |batch: &mut Batch| batch.events = vec![event.clone()]
    };
    manage::update_by(b.as_ref(), &id, Change::Suspend, None, start, &stamped(0))
        .await
        .unwrap();
    let (hash, current) = a.by_id(&id).await.unwrap().unwrap();
    let mut stale = current.clone();
    stale.name = "not what is stored".into();
    let refused = Batch {
        updates: vec![Update {
            hash,
            before: stale,
            after: current.clone(),
        }],
        events: vec![event(11, &id, "audited")],
        ..Batch::default()
    };
    assert!(matches!(a.commit(refused).await, Err(StoreError::Changed)));
    let mut over = manage::create(a.as_ref(), &policy(None), spec("audited"), start)
        .await
        .unwrap()
        .record;
    over.id = "key_over_the_cap".into();
    let capped = Batch {
        inserts: vec![(KeyHash::of("kg_over_the_cap"), over)],
        max_per_owner: Some(1),
        events: vec![event(12, "key_over_the_cap", "audited")],
        ..Batch::default()
    };
    assert!(matches!(
        b.commit(capped).await,
        Err(StoreError::OwnerCap { .. })
    ));
    let trail = a
        .audit_events(&since(AuditQuery {
            owner: Some("audited".into()),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        trail,
        [event(10, &id, "audited")],
        "only the committed change's event"
    );
}

/// Reads through `store` until the key has `status` (a cross-process change may take one
/// reload or poll interval to arrive).
async fn eventually_status(store: &Arc<dyn KeyStore>, hash: KeyHash, status: Status) {
    eventually_status_of(store, hash, Some(status)).await;
}

/// `None`: the key is gone.
async fn eventually_status_of(store: &Arc<dyn KeyStore>, hash: KeyHash, status: Option<Status>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let got = store.get(&hash).await.unwrap().map(|r| r.status);
        if got == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {got:?}, wanted {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn file_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let open = || -> Arc<dyn KeyStore> {
        Arc::new(FileStore::open(&path, Duration::from_millis(50)).unwrap())
    };
    contract(open(), open()).await;
}

#[tokio::test]
async fn redis_standalone_keeps_the_contract() {
    let redis = RedisServer::start();
    let mode = || RedisMode::Standalone { url: redis.url() };
    contract(redis_store(mode()), redis_store(mode())).await;
    // Only hashes are stored: no value in Redis contains a full key (a key's prefix appears
    // only in its hint, `kg_sk_live_...` and its last 4 characters).
    let keys = redis.cli(&["--scan", "--pattern", "{contract}:key:*"]);
    assert!(keys.lines().count() >= 8, "{keys}");
    for key in keys.lines() {
        let doc = redis.cli(&["GET", key]);
        for (at, _) in doc.match_indices("kg_sk_live_") {
            let next = &doc[at + "kg_sk_live_".len()..];
            assert!(next.starts_with("..."), "a secret in {key}: {doc}");
        }
    }
}

#[tokio::test]
async fn redis_cluster_keeps_the_contract() {
    let cluster = RedisCluster::start();
    let mode = || RedisMode::Cluster {
        nodes: cluster.urls(),
    };
    contract(redis_store(mode()), redis_store(mode())).await;
}

#[tokio::test]
async fn redis_sentinel_keeps_the_contract() {
    let sentinel = RedisSentinel::start();
    let mode = || RedisMode::Sentinel {
        master_name: RedisSentinel::MASTER_NAME.into(),
        sentinels: vec![sentinel.url()],
    };
    contract(redis_store(mode()), redis_store(mode())).await;
    assert!(sentinel.master.calls("evalsha") + sentinel.master.calls("eval") > 0);
}

/// The grant script (`lease.lua`, run by real Redis) and its Rust mirror
/// (`WindowCounter::answer`, which the limiter's unit tests and in-memory stores run) answer
/// every request alike: random sequences of grant requests from three sidecars (some falling
/// back, some refusing; replies lost, reports of admissions made alone and of leases handed
/// back, outages reported), each sent to both, every answer compared.
#[tokio::test]
async fn the_grant_script_and_its_rust_mirror_agree() {
    use keygate::limits::lease::{Outage, Report, Sender, WindowCounter};
    use keygate::limits::quota::Calendar;
    use keygate::limits::shared::GrantAsk;

    let redis = RedisServer::start();
    let store = redis_store(RedisMode::Standalone { url: redis.url() });
    let quotas = store.quotas().expect("Redis shares quotas");
    let now_ms = || {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Both sides number windows by their own clock: stay clear of the top of the hour.
    let into = now_ms() / 1_000 % 3_600;
    if into > 3_600 - 30 {
        tokio::time::sleep(Duration::from_secs(3_600 - into + 1)).await;
    }
    // xorshift64*: the same sequences every run.
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |n: u64| {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    };
    const LIMIT: u64 = 500;
    // One outage record for every key, as in Redis.
    let mut outage = Outage::default();
    // What the sequences reached, so that they are known to test more than plain grants:
    // (answers with something held back, grants cut short by the limit or a hold, requests
    // acknowledging an older reply than the last).
    let (mut held, mut cut_short, mut stale_acks) = (0, 0, 0);
    for round in 0..8 {
        let hash = KeyHash::of(&format!("mirror-{round}"));
        let mut counter = WindowCounter::default();
        // Per sidecar: fell-back and handed-back totals, the last reply received, whether it
        // falls back.
        let mut sidecars: Vec<(String, u64, u64, u64, bool)> = (0..3)
            .map(|i| (format!("s{round}{i}"), 0, 0, 0, next(3) != 0))
            .collect();
        for step in 0..40 {
            let window = Calendar::Hour.window(now_ms() / 1_000).0;
            let s = &mut sidecars[next(3) as usize];
            if s.4 {
                s.1 += next(6);
            }
            if next(5) == 0 {
                s.2 += next(4);
            }
            let sender = Sender {
                live: 1 + next(3),
                recovering: next(6) == 0,
                // Long enough that an outage's hold lasts the whole sequence: both sides
                // read time, and the hold must not end between the two calls.
                hold_ms: 3_600_000,
                falls_back: s.4,
            };
            let want = next(40);
            let answer = counter.answer(
                &mut outage,
                &s.0,
                sender,
                now_ms(),
                Report {
                    limit: LIMIT,
                    want,
                    ack: s.3,
                    fell_back: s.1,
                    returned: s.2,
                },
            );
            let ask = GrantAsk {
                calendar: Calendar::Hour,
                limit: LIMIT,
                want,
                ack: (window, s.3),
                fell_back: (window, s.1),
                returned: (window, s.2),
            };
            let grant = quotas.grant(&s.0, sender, hash, vec![ask]).await.unwrap()[0];
            let case = format!("round {round}, step {step}, {sender:?}, {ask:?}");
            held += u32::from(answer.held > 0);
            cut_short += u32::from(answer.granted < want);
            stale_acks += u32::from(s.3 + 1 < answer.reply);
            assert_eq!(grant.window, window, "{case}");
            assert_eq!(
                (grant.granted, grant.total, grant.used, grant.held),
                (answer.granted, answer.total, counter.used, answer.held),
                "{case}"
            );
            assert_eq!(grant.reply, answer.reply, "{case}");
            assert_eq!(
                grant.hold_left.is_zero(),
                answer.hold_left_ms == 0,
                "{case}"
            );
            // One reply in five is lost: the sidecar goes on acknowledging the one before.
            if next(5) != 0 {
                s.3 = answer.reply;
            }
        }
    }
    eprintln!(
        "320 answers alike: {held} with something held back, {cut_short} grants cut short, \
         {stale_acks} requests acknowledging an older reply"
    );
    assert!(held > 0 && cut_short > 0 && stale_acks > 0);
}
