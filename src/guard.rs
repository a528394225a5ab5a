//! The credential-stuffing guard: keys that fail (malformed, or well-formed but unknown) are
//! counted per source, and a source past `[guard] max_invalid` failures within `window` is
//! refused with 429 `too_many_invalid_keys` for `block_for`, before its keys cost a lookup.
//!
//! A source is a client IPv4 address, or the /64 an IPv6 address belongs to (one subscriber's
//! usual allocation: counting single IPv6 addresses would let one host rotate through 2^64 of
//! them). Counts live in this process; with a store that can share them (Redis), unknown keys
//! are also counted across every sidecar, so a burst spread over N sidecars is stopped after
//! about `max_invalid` failures in all, not N times that. Malformed keys (bad prefix or
//! checksum) cost no store read, and are counted here only: sharing them would turn junk into
//! Redis traffic.
//!
//! The bound: a source costs the store at most `max_invalid` reads per window on one sidecar;
//! on N sidecars sharing Redis, at most `max_invalid + N - 1` (each sidecar learns the shared
//! count on its own next failure from that source). A blocked source's requests whose key this
//! sidecar already knows as a valid key still pass (`block_known_keys = false`, the default),
//! so a client behind the same NAT as an attacker is not locked out by the attacker's junk.
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked; when full, sources whose
//! window has passed and which are not blocked make room first, then the oldest.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Sources tracked at once, over all shards.
pub const MAX_SOURCES: usize = 65_536;
const SHARDS: usize = 16;

/// `[guard]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuardConfig {
    /// Failures a source may have within `window`; the next request is refused. 0: off.
    pub max_invalid: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub block_for: Duration,
    /// Refuse a blocked source's known-valid keys too.
    pub block_known_keys: bool,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_invalid: 20,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(300),
            block_known_keys: false,
        }
    }
}

/// Where failures are counted: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Failure counts shared between sidecars.
#[async_trait::async_trait]
pub trait SharedFailures: Send + Sync + 'static {
    /// Adds one failure for `source` in the window of length `window` it falls in, and returns
    /// the failures counted there by every sidecar.
    async fn add_failure(&self, source: &str, window: Duration) -> Result<u64, SharedUnavailable>;
}

/// The shared count could not be reached; the local count decides alone.
#[derive(Debug, thiserror::Error)]
#[error("shared failure count unavailable: {0}")]
pub struct SharedUnavailable(pub String);

/// What the guard says of a request, before its key is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Refused for `retry_after` more seconds.
    Blocked {
        retry_after: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u64,
    blocked_until: Option<Instant>,
}

/// What a failure did to its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Still under the threshold.
    Counted,
    /// This failure reached it: the source is refused from now on.
    Blocked,
}

pub struct Guard {
    shards: [Mutex<HashMap<Source, Entry>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    /// The latest moment any block lasts to, as ms since `born` (0: none ever). A request
    /// arriving after it skips the shards entirely: the check costs one atomic load while no
    /// source is blocked.
    blocked_until_ms: AtomicU64,
    born: Instant,
    shared: Option<Arc<dyn SharedFailures>>,
}

impl Guard {
    pub fn new(shared: Option<Arc<dyn SharedFailures>>) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
            blocked_until_ms: AtomicU64::new(0),
            born: Instant::now(),
            shared,
        }
    }

    /// Whether `source` is refused right now.
    pub fn check(&self, source: Source, now: Instant) -> Verdict {
        if self.ms(now) >= self.blocked_until_ms.load(Ordering::Relaxed) {
            return Verdict::Pass;
        }
        let shard = self.shard(source).lock().unwrap_or_else(|e| e.into_inner());
        match shard.get(&source).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Verdict::Blocked {
                retry_after: (until - now).as_secs().max(1),
            },
            _ => Verdict::Pass,
        }
    }

    /// A key from `source` that fails its format or checksum: counted here only.
    pub fn malformed(&self, config: &GuardConfig, source: Source, now: Instant) -> Counted {
        self.count(config, source, now, None)
    }

    /// A well-formed key from `source` that the store does not know: counted here and, with a
    /// shared store, across sidecars.
    pub async fn unknown(&self, config: &GuardConfig, source: Source, now: Instant) -> Counted {
        if config.max_invalid == 0 {
            return Counted::Counted;
        }
        let shared = match &self.shared {
            Some(shared) => match shared.add_failure(&source.to_string(), config.window).await {
                Ok(total) => Some(total),
                Err(e) => {
                    tracing::debug!(error = %e, "stuffing guard counts locally");
                    None
                }
            },
            None => None,
        };
        self.count(config, source, now, shared)
    }

    fn count(
        &self,
        config: &GuardConfig,
        source: Source,
        now: Instant,
        shared: Option<u64>,
    ) -> Counted {
        if config.max_invalid == 0 {
            return Counted::Counted;
        }
        let mut shard = self.shard(source).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= MAX_SOURCES / SHARDS && !shard.contains_key(&source) {
            make_room(&mut shard, config, now);
            if shard.len() >= MAX_SOURCES / SHARDS {
                // Every slot holds a blocked source: this one goes uncounted rather than
                // growing the map without bound.
                return Counted::Counted;
            }
        }
        let entry = shard.entry(source).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if now.duration_since(entry.window_start) >= config.window {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        let failures = entry.failures.max(shared.unwrap_or(0));
        if failures < u64::from(config.max_invalid) || entry.blocked_until.is_some_and(|u| u > now)
        {
            return Counted::Counted;
        }
        let until = now + config.block_for;
        entry.blocked_until = Some(until);
        self.blocked_until_ms
            .fetch_max(self.ms(until), Ordering::Relaxed);
        tracing::warn!(
            source = %source,
            failures,
            block_for_secs = config.block_for.as_secs(),
            "too many invalid API keys from one source: refusing it"
        );
        Counted::Blocked
    }

    /// Sources refused right now (for the metric); walks every shard.
    pub fn blocked_sources(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(|e| e.into_inner());
                shard
                    .values()
                    .filter(|e| e.blocked_until.is_some_and(|u| u > now))
                    .count()
            })
            .sum()
    }

    fn shard(&self, source: Source) -> &Mutex<HashMap<Source, Entry>> {
        let h = self.hasher.hash_one(source);
        &self.shards[(h as usize) % SHARDS]
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.born).as_millis() as u64 + 1
    }
}

/// Frees slots: sources done with their window and not blocked; if that frees nothing, the
/// eighth of unblocked sources with the oldest windows (a batch, so a spray of new sources
/// costs one scan per eighth of a shard, not one per source).
fn make_room(shard: &mut HashMap<Source, Entry>, config: &GuardConfig, now: Instant) {
    let blocked = |e: &Entry| e.blocked_until.is_some_and(|u| u > now);
    shard.retain(|_, e| blocked(e) || now.duration_since(e.window_start) < config.window);
    if shard.len() < MAX_SOURCES / SHARDS {
        return;
    }
    let mut candidates: Vec<(Instant, Source)> = shard
        .iter()
        .filter(|(_, e)| !blocked(e))
        .map(|(s, e)| (e.window_start, *s))
        .collect();
    let evict = (MAX_SOURCES / SHARDS / 8).min(candidates.len());
    if evict == 0 {
        return;
    }
    candidates.select_nth_unstable_by_key(evict - 1, |(start, _)| *start);
    for (_, source) in &candidates[..evict] {
        shard.remove(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u32) -> GuardConfig {
        GuardConfig {
            max_invalid: max,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(300),
            block_known_keys: false,
        }
    }

    fn ip(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn sources_are_addresses_or_ipv6_slash_64s() {
        assert_eq!(ip("1.2.3.4").to_string(), "1.2.3.4");
        assert_eq!(ip("::ffff:1.2.3.4"), ip("1.2.3.4"));
        assert_eq!(ip("2001:db8:1:2::5"), ip("2001:db8:1:2:ffff::1"));
        assert_ne!(ip("2001:db8:1:2::5"), ip("2001:db8:1:3::5"));
        assert_eq!(ip("2001:db8:1:2::5").to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_source_is_blocked_at_the_threshold_and_released_after_block_for() {
        let guard = Guard::new(None);
        let cfg = config(3);
        let t0 = Instant::now();
        let bad = ip("10.0.0.1");
        assert_eq!(guard.check(bad, t0), Verdict::Pass);
        assert_eq!(guard.malformed(&cfg, bad, t0), Counted::Counted);
        assert_eq!(guard.malformed(&cfg, bad, t0), Counted::Counted);
        assert_eq!(guard.check(bad, t0), Verdict::Pass);
        assert_eq!(guard.malformed(&cfg, bad, t0), Counted::Blocked);
        assert_eq!(
            guard.check(bad, t0 + Duration::from_secs(10)),
            Verdict::Blocked { retry_after: 290 }
        );
        // Another source is untouched.
        assert_eq!(guard.check(ip("10.0.0.2"), t0), Verdict::Pass);
        assert_eq!(guard.blocked_sources(), 1);
        // The block lifts by itself.
        assert_eq!(
            guard.check(bad, t0 + Duration::from_secs(300)),
            Verdict::Pass
        );
    }

    #[test]
    fn failures_spread_beyond_the_window_never_block() {
        let guard = Guard::new(None);
        let cfg = config(3);
        let t0 = Instant::now();
        let src = ip("10.0.0.1");
        for i in 0..10 {
            let at = t0 + Duration::from_secs(31 * i);
            assert_eq!(guard.malformed(&cfg, src, at), Counted::Counted, "{i}");
        }
    }

    #[test]
    fn off_counts_nothing() {
        let guard = Guard::new(None);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(
                guard.malformed(&config(0), ip("10.0.0.1"), t0),
                Counted::Counted
            );
        }
        assert_eq!(guard.check(ip("10.0.0.1"), t0), Verdict::Pass);
    }

    struct Fixed(u64);

    #[async_trait::async_trait]
    impl SharedFailures for Fixed {
        async fn add_failure(&self, _: &str, _: Duration) -> Result<u64, SharedUnavailable> {
            Ok(self.0)
        }
    }

    #[tokio::test]
    async fn a_shared_count_past_the_threshold_blocks_on_the_first_local_failure() {
        let guard = Guard::new(Some(Arc::new(Fixed(25))));
        let t0 = Instant::now();
        assert_eq!(
            guard.unknown(&config(20), ip("10.0.0.1"), t0).await,
            Counted::Blocked
        );
        let under = Guard::new(Some(Arc::new(Fixed(3))));
        assert_eq!(
            under.unknown(&config(20), ip("10.0.0.1"), t0).await,
            Counted::Counted
        );
    }

    #[test]
    fn memory_is_bounded_under_a_spray_of_sources() {
        let guard = Guard::new(None);
        let cfg = config(1000);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 * 2) {
            let src = Source::of(IpAddr::V4(i.into()));
            guard.malformed(&cfg, src, t0);
        }
        let tracked: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= MAX_SOURCES, "{tracked}");
    }
}
