//! The in-process key cache in front of every store: the reason a known key costs no network
//! round-trip.
//!
//! Consistency, in one place:
//! - A positive entry is served for as long as it is cached. Once it is older than `ttl` it is
//!   still served, and one background read (coalesced) refreshes it: the request never waits.
//!   If the store cannot answer, the entry keeps serving until `max_stale` after the last
//!   moment it was known to be exact (its read, or a later confirmation by the change feed,
//!   below), then it is dropped and the key gets 503 `key_store_unavailable` like any
//!   uncached key.
//! - A negative entry (a well-formed key the store does not know) lives `negative_ttl`, so a
//!   flood of made-up keys costs one store read per key per `negative_ttl`.
//! - Changes reach the cache through the store's change feed ([`KeyStore::watch`]): the cache
//!   drops the changed key (or everything, when the feed lost track). While the feed keeps
//!   confirming that it is up to date, an entry it has not invalidated is still exact, so a
//!   stale entry is only re-read when the feed has not confirmed within `ttl` since the entry
//!   was read: `ttl` bounds how long a lost change could go unnoticed if the feed itself
//!   failed, and a healthy sidecar reads a hot key from the store once, not every `ttl`. The
//!   moment the feed cannot check ([`Invalidation::Doubt`]: its poll failed or timed out) it
//!   vouches for nothing, and entries older than `ttl` are refreshed from then on.
//! - A read that raced a change must not re-insert what the change removed: every read
//!   remembers the invalidation generation it started in and only inserts if it is unchanged.
//! - Concurrent misses for one key share one store read, run in its own task so that a
//!   client hanging up cannot cancel it for everyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use quick_cache::UnitWeighter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cached_key::{CachedKey, Pool};
use super::{Invalidation, KeyHash, KeyHashState, KeyStore, StoreError};
use crate::metrics::Metrics;

/// `[cache]` settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    pub capacity: u64,
    /// The longest a request waits for the store on a miss.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            max_stale: Duration::from_secs(300),
            capacity: 1_000_000,
            store_timeout: Duration::from_millis(250),
        }
    }
}

/// How often used keys are written back as `last_used_at`.
const USAGE_FLUSH: Duration = Duration::from_secs(10);

/// One holder's registration in [`KeyCache::held`], removed with the last holder of its key.
struct Watch<'a> {
    cache: &'a KeyCache,
    hash: KeyHash,
    notify: Arc<tokio::sync::Notify>,
}

impl<'a> Watch<'a> {
    fn new(cache: &'a KeyCache, hash: KeyHash) -> Self {
        let notify = cache
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash)
            .or_default()
            .clone();
        Self {
            cache,
            hash,
            notify,
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut held = self.cache.held.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and this one: no other holder of the key is left.
        if Arc::strong_count(&self.notify) == 2 {
            held.remove(&self.hash);
        }
    }
}

/// What the cache holds for a key hash. Expiry is checked on read: `quick_cache` has no
/// timers, and an expired entry nobody asks for again costs nothing but its slot until
/// eviction reclaims it.
#[derive(Clone)]
enum Entry {
    /// Served until `max_stale` after it was last known to be exact.
    Known(Arc<CachedKey>),
    /// A well-formed key the store does not know, remembered until `until` (the cache's
    /// clock, as for `CachedKey::fetched`).
    Unknown { until: u64 },
}

impl Entry {
    /// Whether the entry may still be served at `now` (the cache's clock). `confirmed`: when
    /// the change feed last confirmed it had reported every change (0: never).
    fn is_live(&self, now: u64, max_stale: Duration, confirmed: u64) -> bool {
        match self {
            // An entry still cached after a confirmation was not invalidated before it, so it
            // was exact then. Counting from the read alone would drop every hot key each
            // `max_stale` and make its next request wait for the store, while the feed
            // vouched for it all along.
            Entry::Known(key) => now.saturating_sub(key.fetched.max(confirmed)) < ns(max_stale),
            Entry::Unknown { until } => now < *until,
        }
    }
}

type Fetched = Result<Option<Arc<CachedKey>>, String>;

pub struct KeyCache {
    store: Arc<dyn KeyStore>,
    /// Why `quick_cache` and not `moka`: about 35 bytes of bookkeeping per entry against
    /// moka's ~330 (its access and write deques, timer wheel and per-entry `Arc`s), which
    /// alone would put a million cached keys past the sidecar's 300 MB budget. The cache needs
    /// nothing moka adds beyond that: expiry is one comparison on read, coalescing is ours.
    entries: quick_cache::sync::Cache<KeyHash, Entry, UnitWeighter, KeyHashState>,
    pool: Pool,
    inflight: Mutex<HashMap<KeyHash, watch::Receiver<Option<Fetched>>>>,
    generation: AtomicU64,
    /// What holds a key past its request (a WebSocket tunnel), by key: woken when that key
    /// changes, or everything does, to look at it again ([`KeyCache::lapsed`]). By key, so a
    /// change costs the tunnels of its own key only.
    held: Mutex<HashMap<KeyHash, Arc<tokio::sync::Notify>>>,
    /// When the change feed last confirmed it was up to date, as ns since `born` (0: never).
    confirmed_ns: AtomicU64,
    /// The feed could not check since its last confirmation: it vouches for nothing.
    doubt: AtomicBool,
    born: Instant,
    config: CacheConfig,
    metrics: Arc<Metrics>,
    used: Mutex<Vec<(String, SystemTime)>>,
    /// Held for the whole of a flush: the shutdown's last flush waits for one the write-behind
    /// task started a moment before, instead of finding nothing to take and letting the
    /// process exit under it.
    flushing: tokio::sync::Mutex<()>,
}

impl KeyCache {
    pub fn new(store: Arc<dyn KeyStore>, config: CacheConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let capacity = config.capacity.max(1);
        // Grown on demand: a sidecar with a handful of keys should not pay for a million.
        let entries = quick_cache::sync::Cache::with(
            usize::try_from(capacity.min(4096)).unwrap_or(4096),
            capacity,
            UnitWeighter,
            KeyHashState::default(),
            Default::default(),
        );
        Arc::new(Self {
            store,
            entries,
            pool: Pool::default(),
            inflight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            confirmed_ns: AtomicU64::new(0),
            doubt: AtomicBool::new(false),
            born: Instant::now(),
            config,
            metrics,
            used: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    /// The store behind the cache.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }

    /// Starts the store's change feed into this cache, and the last-used write-behind.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = Arc::downgrade(self);
        self.store.clone().watch(
            Arc::new(move |inv| {
                if let Some(cache) = this.upgrade() {
                    cache.invalidate(inv);
                }
            }),
            shutdown.clone(),
        );
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(USAGE_FLUSH);
            tick.tick().await;
            loop {
                let stop = tokio::select! {
                    _ = shutdown.cancelled() => true,
                    _ = tick.tick() => false,
                };
                this.flush_usage().await;
                if stop {
                    return;
                }
            }
        });
    }

    /// The record for `hash`: from memory when possible, from the store (one coalesced read)
    /// otherwise. `Ok(None)`: no such key.
    pub async fn lookup(
        self: &Arc<Self>,
        hash: KeyHash,
    ) -> Result<Option<Arc<CachedKey>>, StoreError> {
        let now = self.clock();
        match self.entries.get(&hash) {
            Some(entry) if !self.is_live(&entry, now) => {
                // Expired: too old to trust, whether or not the store can be asked now. The
                // read below replaces it.
            }
            Some(Entry::Known(key)) => {
                if now.saturating_sub(key.fetched) >= ns(self.config.ttl)
                    && !self.feed_vouches_for(key.fetched, now)
                {
                    self.fetch(hash, false);
                    self.metrics.cache.stale_hit.inc();
                } else {
                    self.metrics.cache.hit.inc();
                }
                return Ok(Some(key));
            }
            Some(Entry::Unknown { .. }) => {
                self.metrics.cache.negative_hit.inc();
                return Ok(None);
            }
            None => {}
        }
        self.metrics.cache.miss.inc();
        let mut rx = self.fetch(hash, true);
        let outcome = rx.wait_for(Option::is_some).await.map(|v| v.clone());
        match outcome {
            Ok(Some(Ok(found))) => Ok(found),
            Ok(Some(Err(message))) => Err(StoreError::Unavailable(message)),
            // The fetch task ended without answering (it panicked): never hang the request.
            Ok(None) | Err(_) => Err(StoreError::Unavailable("key lookup failed".into())),
        }
    }

    /// Whether the change feed confirmed, after `fetched` and within the last `ttl`, that it
    /// reported every change: then an entry read at `fetched` and not invalidated is exact.
    fn feed_vouches_for(&self, fetched: u64, now: u64) -> bool {
        let confirmed = self.confirmed_ns.load(Ordering::Acquire);
        confirmed != 0
            && confirmed > fetched
            && now.saturating_sub(confirmed) < ns(self.config.ttl)
            && !self.doubt.load(Ordering::Acquire)
    }

    fn is_live(&self, entry: &Entry, now: u64) -> bool {
        let confirmed = self.confirmed_ns.load(Ordering::Acquire);
        entry.is_live(now, self.config.max_stale, confirmed)
    }

    /// The cache's clock: nanoseconds since it was created (8 bytes per entry, not 16).
    fn clock(&self) -> u64 {
        ns(self.born.elapsed())
    }

    /// Drops what a change made stale.
    pub fn invalidate(&self, what: Invalidation) {
        match what {
            Invalidation::UpToDate => {
                self.confirmed_ns
                    .store(self.clock().max(1), Ordering::Release);
                self.doubt.store(false, Ordering::Release);
                return;
            }
            Invalidation::Doubt => {
                // Entries keep ageing from the last confirmation (for `max_stale`); a stale
                // one is refreshed from now on, not after `ttl` more.
                self.doubt.store(true, Ordering::Release);
                return;
            }
            _ => {}
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        match what {
            Invalidation::Key(hash) => {
                self.entries.remove(&hash);
                if let Some(held) = self
                    .held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&hash)
                {
                    held.notify_waiters();
                }
            }
            Invalidation::All => {
                // Counted when it dropped something (the change feed's first poll flushes
                // whatever was read before it, usually nothing).
                if !self.entries.is_empty() {
                    self.metrics.cache_flushes.inc();
                }
                self.entries.clear();
                for held in self.held.lock().unwrap_or_else(|p| p.into_inner()).values() {
                    held.notify_waiters();
                }
            }
            Invalidation::UpToDate | Invalidation::Doubt => {}
        }
    }

    /// Resolves once the key `hash` no longer `admits` what it was admitted for (revoked,
    /// suspended, deleted, changed so that it may not, past its expiry or past `until`, when
    /// the access token it came as runs out). For what outlives the request that admitted it:
    /// a WebSocket tunnel ends on this, where an auth proxy that checks only the handshake
    /// would keep a revoked key's tunnel open for hours.
    ///
    /// Looks again when the key's entry is invalidated, or every entry is (a revocation
    /// reaches every sidecar's cache through the change feed: bound in README), and at the
    /// key's expiry; no clock per tunnel otherwise. A store that cannot be asked keeps the tunnel (as a cached key keeps
    /// serving requests).
    pub async fn lapsed(
        self: Arc<Self>,
        hash: KeyHash,
        until: Option<SystemTime>,
        admits: impl Fn(&CachedKey) -> bool,
    ) {
        let watch = Watch::new(&self, hash);
        loop {
            let changed = watch.notify.notified();
            tokio::pin!(changed);
            // Registered before the look, so a change during it is not missed.
            changed.as_mut().enable();
            let expires = match self.lookup(hash).await {
                Ok(Some(key)) if admits(&key) => match (key.expires_at(), until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                Ok(_) => return,
                Err(_) => until,
            };
            let left = expires.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
            if left == Some(Duration::ZERO) {
                return;
            }
            let expiry = async {
                match left {
                    Some(left) => tokio::time::sleep(left).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                () = expiry => return,
            }
        }
    }

    /// Whether `hash` is cached here as a known key, without asking the store: the stuffing
    /// guard lets a blocked source's known keys through on this.
    pub fn knows(&self, hash: &KeyHash) -> bool {
        let now = self.clock();
        match self.entries.get(hash) {
            Some(entry) => matches!(entry, Entry::Known(_)) && self.is_live(&entry, now),
            None => false,
        }
    }

    /// Number of cached entries, expired ones not yet reclaimed included.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the read in flight for `hash`, or starts one in its own task.
    ///
    /// `miss`: the caller found nothing usable in the cache. A read may have finished since
    /// it looked; a read inserts before it leaves `inflight`, so looking again under the
    /// `inflight` lock finds its answer rather than starting a second read for the same key.
    fn fetch(self: &Arc<Self>, hash: KeyHash, miss: bool) -> watch::Receiver<Option<Fetched>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&hash) {
            return rx.clone();
        }
        if miss && let Some(found) = self.usable(&hash) {
            return watch::channel(Some(Ok(found))).1;
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(hash, rx.clone());
        drop(inflight);
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.read_through(hash).await;
            this.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&hash);
            let _ = tx.send(Some(result));
        });
        rx
    }

    /// What the cache holds for `hash` that may be served as it is.
    fn usable(&self, hash: &KeyHash) -> Option<Option<Arc<CachedKey>>> {
        match self.entries.get(hash)? {
            entry if !self.is_live(&entry, self.clock()) => None,
            Entry::Known(key) => Some(Some(key)),
            Entry::Unknown { .. } => Some(None),
        }
    }

    async fn read_through(&self, hash: KeyHash) -> Fetched {
        let generation = self.generation.load(Ordering::SeqCst);
        self.metrics.store_reads.inc();
        let read = tokio::time::timeout(self.config.store_timeout, self.store.get(&hash)).await;
        let found = match read {
            Ok(Ok(found)) => {
                self.metrics.store_up.set(1);
                found
            }
            Ok(Err(e)) => {
                // Said once: the lookup's error wraps it in `Unavailable` again.
                let message = match e {
                    StoreError::Unavailable(message) => message,
                    other => other.to_string(),
                };
                return Err(self.store_failed(message));
            }
            Err(_) => return Err(self.store_failed("key store timed out".into())),
        };
        let (found, entry) = match found {
            Some(record) => {
                let key = Arc::new(CachedKey::new(&record, &self.pool, self.clock()));
                (Some(key.clone()), Entry::Known(key))
            }
            None => {
                let until = self.clock().saturating_add(ns(self.config.negative_ttl));
                (None, Entry::Unknown { until })
            }
        };
        // A change landed while we read: what we read may be the old record.
        if self.generation.load(Ordering::SeqCst) == generation {
            self.entries.insert(hash, entry);
        }
        Ok(found)
    }

    fn store_failed(&self, message: String) -> String {
        self.metrics.store_errors.inc();
        self.metrics.store_up.set(0);
        if crate::ratelog::KEY_STORE_READ.allow() {
            tracing::warn!(error = %message, "key store read failed");
        }
        message
    }

    /// Records that `key` was used: called for admitted requests only (`proxy::finish`, a
    /// valid verify), never by [`KeyCache::lookup`], so a request refused for its address,
    /// its scopes or its rate does not move `last_used_at`.
    pub fn used(&self, key: &CachedKey) {
        self.note_use(key, self.clock());
    }

    /// Queues `key` for the last-used write-behind, at most once per key per flush period.
    /// The wall clock is only read when a use is queued.
    fn note_use(&self, key: &CachedKey, now: u64) {
        let reported = &key.reported;
        // Seconds on the cache's clock, plus one: 0 stays "never reported".
        let secs = u32::try_from(now / 1_000_000_000 + 1).unwrap_or(u32::MAX);
        let last = reported.load(Ordering::Relaxed);
        if (last == 0 || u64::from(secs) >= u64::from(last) + USAGE_FLUSH.as_secs())
            && reported
                .compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key.id.to_string(), SystemTime::now()));
        }
    }

    /// Writes queued last-used times to the store in one batch.
    pub async fn flush_usage(&self) {
        let _flushing = self.flushing.lock().await;
        let batch = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_usage(batch).await {
            tracing::warn!(error = %e, "last-used write-behind failed; dropping this batch");
        }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    //! The cache's rules against an in-memory store that counts reads and can fail or stall.
    use super::*;
    use crate::keys::{Batch, ChangeSink, KeyRecord, Status};

    #[derive(Default)]
    struct MemStore {
        records: Mutex<HashMap<KeyHash, Arc<KeyRecord>>>,
        reads: AtomicU64,
        down: AtomicBool,
        delay_ms: AtomicU64,
        used: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl KeyStore for MemStore {
        async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            // Read first, answer late: like a reply still on the wire when the change lands.
            let found = self.records.lock().unwrap().get(hash).cloned();
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            Ok(found)
        }
        async fn by_id(&self, _: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn list(&self, _: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn commit(&self, _: Batch) -> Result<(), StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn append_audit(
            &self,
            _: &[crate::keys::audit::AuditEvent],
        ) -> Result<(), StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn audit_events(
            &self,
            _: &crate::keys::audit::AuditQuery,
        ) -> Result<Vec<crate::keys::audit::AuditEvent>, StoreError> {
            unimplemented!("not used by the cache")
        }
        async fn record_usage(&self, used: Vec<(String, SystemTime)>) -> Result<(), StoreError> {
            let mut seen = self.used.lock().unwrap();
            seen.extend(used.into_iter().map(|(id, _)| id));
            Ok(())
        }
        fn watch(self: Arc<Self>, _: ChangeSink, _: CancellationToken) {}
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn record(status: Status) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            status,
            ..KeyRecord::for_tests()
        })
    }

    fn setup(config: CacheConfig) -> (Arc<MemStore>, Arc<KeyCache>, KeyHash) {
        let store = Arc::new(MemStore::default());
        let hash = KeyHash::of("k");
        store
            .records
            .lock()
            .unwrap()
            .insert(hash, record(Status::Active));
        let cache = KeyCache::new(store.clone(), config, Arc::new(Metrics::new()));
        (store, cache, hash)
    }

    fn short() -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_millis(100),
            negative_ttl: Duration::from_millis(100),
            max_stale: Duration::from_millis(400),
            capacity: 100,
            store_timeout: Duration::from_millis(250),
        }
    }

    fn reads(store: &MemStore) -> u64 {
        store.reads.load(Ordering::SeqCst)
    }

    /// Lets every task run until each waits on something.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_key_lapses_when_it_is_revoked_and_not_on_other_changes() {
        let (store, cache, hash) = setup(short());
        let active = |key: &CachedKey| key.status == Status::Active;
        let lapsed = tokio::spawn(cache.clone().lapsed(hash, None, active));
        settle().await;
        // Another key's change, and a flush of everything: looked at again, still active.
        cache.invalidate(Invalidation::Key(KeyHash::of("another")));
        cache.invalidate(Invalidation::All);
        settle().await;
        assert!(!lapsed.is_finished());
        // The store cannot be asked: an open tunnel is kept, as cached keys keep serving.
        store.down.store(true, Ordering::SeqCst);
        cache.invalidate(Invalidation::Key(hash));
        settle().await;
        assert!(!lapsed.is_finished());
        store.down.store(false, Ordering::SeqCst);
        for status in [Status::Suspended, Status::Revoked] {
            store.records.lock().unwrap().insert(hash, record(status));
            let lapsed = tokio::spawn(cache.clone().lapsed(hash, None, active));
            settle().await;
            assert!(lapsed.is_finished(), "{status:?}: already not active");
        }
        cache.invalidate(Invalidation::Key(hash));
        tokio::time::timeout(Duration::from_secs(1), lapsed)
            .await
            .expect("revoked: lapsed")
            .unwrap();
        // Deleted: as dead.
        store.records.lock().unwrap().remove(&hash);
        cache.invalidate(Invalidation::Key(hash));
        let gone = tokio::spawn(cache.clone().lapsed(hash, None, active));
        settle().await;
        assert!(gone.is_finished());
        // Nothing holds a key any more: nothing is left registered.
        assert!(cache.held.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_key_lapses_at_its_expiry_or_its_token_s() {
        let (store, cache, hash) = setup(short());
        let hour = Duration::from_secs(3600);
        let expiring = KeyRecord {
            expires_at: Some(SystemTime::now() + hour),
            ..KeyRecord::for_tests()
        };
        store
            .records
            .lock()
            .unwrap()
            .insert(hash, Arc::new(expiring));
        for (until, lasts) in [
            (None, hour),
            (Some(SystemTime::now() + hour / 2), hour / 2),
            (Some(SystemTime::now() + hour * 2), hour),
        ] {
            let started = tokio::time::Instant::now();
            cache.clone().lapsed(hash, until, |_| true).await;
            let took = started.elapsed();
            // SystemTime moves on while the test runs; tokio's paused clock does not.
            assert!(
                took <= lasts && took + Duration::from_secs(5) > lasts,
                "{took:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_hit_costs_no_read() {
        let (store, cache, hash) = setup(CacheConfig::default());
        for _ in 0..10 {
            assert!(cache.lookup(hash).await.unwrap().is_some());
        }
        assert_eq!(reads(&store), 1);
    }

    #[tokio::test]
    async fn stale_entries_are_served_while_one_background_read_refreshes_them() {
        let (store, cache, hash) = setup(short());
        cache.lookup(hash).await.unwrap();
        store
            .records
            .lock()
            .unwrap()
            .insert(hash, record(Status::Revoked));
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Past ttl: still the cached record, right away…
        assert_eq!(
            cache.lookup(hash).await.unwrap().unwrap().status,
            Status::Active
        );
        assert_eq!(
            cache.lookup(hash).await.unwrap().unwrap().status,
            Status::Active
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
        // …and one refresh later, the store's.
        assert_eq!(
            cache.lookup(hash).await.unwrap().unwrap().status,
            Status::Revoked
        );
        assert_eq!(reads(&store), 2);
    }

    #[tokio::test]
    async fn a_confirming_feed_spares_the_refresh_read_and_a_silent_one_does_not() {
        let (store, cache, hash) = setup(short());
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        // The feed checked after the read: the old entry is still exact, no store read.
        cache.invalidate(Invalidation::UpToDate);
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reads(&store), 1);
        // The feed falls silent for longer than ttl: the entry is re-read.
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reads(&store), 2);
    }

    #[tokio::test]
    async fn a_feed_in_doubt_stops_vouching_at_once() {
        let (store, cache, hash) = setup(short());
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.invalidate(Invalidation::UpToDate);
        // Confirmed a moment ago, but the feed's next check failed: the stale entry is
        // refreshed now, not a ttl after the confirmation.
        cache.invalidate(Invalidation::Doubt);
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reads(&store), 2);
        // Confirmed again: vouching resumes.
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.invalidate(Invalidation::UpToDate);
        cache.lookup(hash).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(reads(&store), 2);
    }

    #[tokio::test]
    async fn max_stale_counts_from_the_feeds_last_confirmation() {
        let (store, cache, hash) = setup(CacheConfig {
            max_stale: Duration::from_millis(600),
            ..short()
        });
        cache.lookup(hash).await.unwrap();
        // A feed confirming every 50 ms for 800 ms, past max_stale of the read: the entry
        // stays, and is never re-read.
        for _ in 0..16 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cache.invalidate(Invalidation::UpToDate);
            assert!(cache.lookup(hash).await.unwrap().is_some());
        }
        assert_eq!(reads(&store), 1);
        // The store goes down and the feed falls silent: the entry serves on until max_stale
        // after the feed's last word (a refresh is tried meanwhile and fails)…
        store.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(cache.lookup(hash).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            reads(&store),
            2,
            "one refresh once the feed stopped vouching"
        );
        // …and not after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(cache.lookup(hash).await.is_err());
    }

    #[tokio::test]
    async fn unknown_keys_are_remembered_for_negative_ttl() {
        let (store, cache, _) = setup(short());
        let unknown = KeyHash::of("nope");
        assert!(cache.lookup(unknown).await.unwrap().is_none());
        assert!(cache.lookup(unknown).await.unwrap().is_none());
        assert_eq!(reads(&store), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cache.lookup(unknown).await.unwrap().is_none());
        assert_eq!(reads(&store), 2);
    }

    #[tokio::test]
    async fn a_down_store_serves_cached_keys_until_max_stale_then_fails() {
        let (store, cache, hash) = setup(short());
        cache.lookup(hash).await.unwrap();
        store.down.store(true, Ordering::SeqCst);
        assert!(
            cache.lookup(KeyHash::of("other")).await.is_err(),
            "uncached: unavailable"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            cache.lookup(hash).await.unwrap().is_some(),
            "stale but within max_stale"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            cache.lookup(hash).await.is_err(),
            "past max_stale the key is not trusted"
        );
        store.down.store(false, Ordering::SeqCst);
        assert!(cache.lookup(hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_read_that_raced_an_invalidation_is_not_cached() {
        let (store, cache, hash) = setup(CacheConfig::default());
        store.delay_ms.store(100, Ordering::SeqCst);
        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup(hash).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The key changes while the read is in flight.
        store
            .records
            .lock()
            .unwrap()
            .insert(hash, record(Status::Revoked));
        cache.invalidate(Invalidation::Key(hash));
        let stale = reader.await.unwrap().unwrap().unwrap();
        assert_eq!(
            stale.status,
            Status::Active,
            "the in-flight read saw the old record"
        );
        store.delay_ms.store(0, Ordering::SeqCst);
        // …but did not cache it: the next lookup reads again and sees the change.
        assert_eq!(
            cache.lookup(hash).await.unwrap().unwrap().status,
            Status::Revoked
        );
        assert_eq!(reads(&store), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_read_even_when_callers_give_up() {
        let (store, cache, hash) = setup(CacheConfig::default());
        store.delay_ms.store(100, Ordering::SeqCst);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move { cache.lookup(hash).await }));
        }
        // The first callers (the ones that started the read) hang up.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for t in &tasks[..25] {
            t.abort();
        }
        for t in tasks.drain(25..) {
            assert!(t.await.unwrap().unwrap().is_some());
        }
        assert_eq!(reads(&store), 1);
    }

    #[tokio::test]
    async fn capacity_bounds_the_entries() {
        let store = Arc::new(MemStore::default());
        let config = CacheConfig {
            capacity: 100,
            ..CacheConfig::default()
        };
        let cache = KeyCache::new(store.clone(), config, Arc::new(Metrics::new()));
        for i in 0..2_000 {
            let hash = KeyHash::of(&format!("k{i}"));
            store
                .records
                .lock()
                .unwrap()
                .insert(hash, record(Status::Active));
            assert!(cache.lookup(hash).await.unwrap().is_some());
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        assert!(cache.len() >= 50, "{} entries", cache.len());
    }

    #[tokio::test]
    async fn a_miss_that_lost_the_race_to_a_finished_read_takes_its_answer() {
        let (store, cache, hash) = setup(CacheConfig::default());
        cache.lookup(hash).await.unwrap();
        // A caller that saw no entry just before that read finished and left `inflight`.
        let mut rx = cache.fetch(hash, true);
        let answer = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert!(matches!(answer, Some(Ok(Some(_)))));
        assert_eq!(reads(&store), 1);
    }

    #[tokio::test]
    async fn uses_are_written_behind_once_per_key_per_period() {
        let (store, cache, hash) = setup(CacheConfig::default());
        // A lookup alone is no use: the request may yet be refused.
        let key = cache.lookup(hash).await.unwrap().unwrap();
        cache.flush_usage().await;
        assert!(store.used.lock().unwrap().is_empty());
        for _ in 0..5 {
            cache.used(&key);
        }
        cache.flush_usage().await;
        assert_eq!(*store.used.lock().unwrap(), ["key_1"]);
        cache.used(&key);
        cache.flush_usage().await;
        assert_eq!(
            store.used.lock().unwrap().len(),
            1,
            "not again within the period"
        );
    }

    #[tokio::test]
    async fn flushing_everything_forces_fresh_reads() {
        let (store, cache, hash) = setup(CacheConfig::default());
        cache.lookup(hash).await.unwrap();
        cache.invalidate(Invalidation::All);
        cache.lookup(hash).await.unwrap();
        assert_eq!(reads(&store), 2);
    }
}
