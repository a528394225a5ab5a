//! How much memory the in-process key cache costs per cached key.
//!
//! `cargo run --release --example cache_memory -- 1000000` fills a `KeyCache` with that many
//! distinct keys through the real lookup path (each one a miss and one store read) and prints
//! the resident set before and after. The store builds records on demand, shaped like the
//! CLI's (`key_` + 20 characters of id, a name, one of 100 owners, two scopes, a plan), so the
//! figure is the cache's own cost, not the store's. With `--limited`, every key is also
//! admitted once by a limiter on a plan with per-second and per-hour limits, counted in this
//! process (the file store's way), which adds the limiter's per-key state.
//! `bench/RESULTS.md` records the results.

use std::sync::Arc;
use std::time::SystemTime;

use keygate::keys::cache::{CacheConfig, KeyCache};
use keygate::keys::{
    Batch, ChangeSink, Environment, KeyHash, KeyRecord, KeyStore, KeyType, Status, StoreError,
};
use keygate::limits::{Limiter, Limits, LimitsConfig};
use keygate::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Makes up a record for whatever hash it is asked about.
struct Generated;

#[async_trait::async_trait]
impl KeyStore for Generated {
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let n = u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"));
        Ok(Some(Arc::new(KeyRecord {
            allowed_origins: Vec::new(),
            id: format!("key_{:020}", n),
            name: format!("service {}", n % 10_000),
            owner: format!("owner-{}", n % 100),
            key_type: KeyType::Secret,
            env: Environment::LIVE,
            scopes: vec!["orders:read".into(), "orders:write".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: Some("pro".into()),
            limits: Default::default(),
            workspace: None,
            project: None,
            headers: Vec::new(),
            status: Status::Active,
            hint: None,
            created_at: SystemTime::UNIX_EPOCH,
            last_used_at: None,
            created_by: None,
            revoked_at: None,
            revoked_by: None,
            rotated_from: None,
            rotated_to: None,
        })))
    }
    async fn by_id(&self, _: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        Ok(None)
    }
    async fn list(&self, _: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(vec![])
    }
    async fn commit(&self, _: Batch) -> Result<(), StoreError> {
        Ok(())
    }
    async fn append_audit(&self, _: &[keygate::keys::audit::AuditEvent]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn audit_events(
        &self,
        _: &keygate::keys::audit::AuditQuery,
    ) -> Result<Vec<keygate::keys::audit::AuditEvent>, StoreError> {
        Ok(vec![])
    }
    async fn record_usage(&self, _: Vec<(String, SystemTime)>) -> Result<(), StoreError> {
        Ok(())
    }
    fn watch(self: Arc<Self>, _: ChangeSink, _: CancellationToken) {}
    fn describe(&self) -> String {
        "generated".into()
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let limited = std::env::args().any(|a| a == "--limited");
    let mut plans = std::collections::BTreeMap::new();
    plans.insert(
        "pro".to_owned(),
        Limits {
            per_second: Some(100),
            per_hour: Some(100_000),
            ..Limits::default()
        },
    );
    let limiter = Limiter::new(
        LimitsConfig {
            plans,
            ..LimitsConfig::default()
        },
        n + n / 10,
    );
    let config = CacheConfig {
        capacity: n + n / 10,
        ..CacheConfig::default()
    };
    let cache = KeyCache::new(Arc::new(Generated), config, Arc::new(Metrics::new()));
    let before = rss_kib();
    for i in 0..n {
        // Real SHA-256 hashes: the cache shards and indexes by their leading bytes.
        let hash = KeyHash::of(&format!("kg_sk_live_{i}"));
        let key = cache.lookup(hash).await.expect("generated store");
        let key = key.expect("the generated store knows every key");
        if limited {
            let admitted = limiter.admit(hash, &*key, SystemTime::now()).await;
            assert!(
                matches!(admitted, Ok(Some(_))),
                "the plan applies and admits"
            );
        }
    }
    // The last-used queue is flushed every 10 s in a running proxy; it is not the cache.
    cache.flush_usage().await;
    let after = rss_kib();
    println!(
        "{n} keys cached ({} entries){}: RSS {:.1} MB -> {:.1} MB, {:.0} bytes per key",
        cache.len(),
        if limited {
            ", each admitted by the limiter"
        } else {
            ""
        },
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64
    );
}
