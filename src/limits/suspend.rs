//! Temporary suspension: a key that keeps sending after it was rate limited is refused with
//! 403 `key_suspended` for a while, on every sidecar, and lifts by itself.
//!
//! - What triggers it: more than `after` rate-limit refusals within `within`, counted by each
//!   sidecar for the refusals it makes (a Redis write per refusal would let an abusive client
//!   drive Redis load), as a GCRA so the count drains continuously rather than resetting at a
//!   boundary. Like the short windows, `after` is scaled by `[limits] local_share`.
//! - Where it lives: in this process always (a set of key hashes with their lift time, read
//!   lock-free-ish on the request path only when it is not empty); with the Redis store also
//!   in the sorted set `{ns}:suspended` (hash → lift time in ms, Redis clock), which every
//!   sidecar reads on its sync tick, so another sidecar refuses the key within one tick
//!   (`[store] epoch_poll`, 1 s by default).
//! - Suspensions only lift by time; a later, longer suspension extends an earlier one.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::vocab::{KeyHash, KeyHashState};

/// `[limits.suspend]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuspendConfig {
    /// Rate-limit refusals tolerated within `within`; one more suspends the key.
    pub after: u64,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// How long a suspension lasts.
    #[serde(rename = "for", with = "humantime_serde")]
    pub lasts: Duration,
}

/// The keys suspended right now, with when each lifts.
#[derive(Default)]
pub struct Suspensions {
    lifts: RwLock<HashMap<KeyHash, Instant, KeyHashState>>,
    /// `lifts.len()`, readable without the lock: the request path skips the map when 0.
    count: AtomicUsize,
}

impl Suspensions {
    /// Seconds until `hash` may send again (rounded up), if it is suspended at `now`.
    pub fn check(&self, hash: &KeyHash, now: Instant) -> Option<u64> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let lifts = self.lifts.read().unwrap_or_else(|e| e.into_inner());
        let lift = *lifts.get(hash)?;
        let left = lift.checked_duration_since(now).filter(|d| !d.is_zero())?;
        Some(left.as_millis().div_ceil(1_000).max(1) as u64)
    }

    /// Suspends `hash` until `lift`, unless it is already suspended for longer.
    pub fn insert(&self, hash: KeyHash, lift: Instant) {
        let mut lifts = self.lifts.write().unwrap_or_else(|e| e.into_inner());
        let entry = lifts.entry(hash).or_insert(lift);
        if *entry < lift {
            *entry = lift;
        }
        self.count.store(lifts.len(), Ordering::Release);
    }

    /// Forgets suspensions that have lifted.
    pub fn prune(&self, now: Instant) {
        let mut lifts = self.lifts.write().unwrap_or_else(|e| e.into_inner());
        lifts.retain(|_, lift| *lift > now);
        self.count.store(lifts.len(), Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspensions_lift_by_themselves_and_only_extend() {
        let s = Suspensions::default();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        let t0 = Instant::now();
        assert_eq!(s.check(&a, t0), None);
        s.insert(a, t0 + Duration::from_millis(2_500));
        assert_eq!(s.check(&a, t0), Some(3), "rounded up");
        assert_eq!(s.check(&b, t0), None);
        s.insert(a, t0 + Duration::from_secs(1));
        assert_eq!(
            s.check(&a, t0),
            Some(3),
            "a shorter suspension does not shorten it"
        );
        s.insert(a, t0 + Duration::from_secs(10));
        assert_eq!(s.check(&a, t0), Some(10));
        assert_eq!(s.check(&a, t0 + Duration::from_secs(10)), None, "lifted");
        s.prune(t0 + Duration::from_secs(11));
        assert!(s.is_empty());
    }
}
