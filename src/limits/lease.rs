//! Quota leases: the part of a key's shared long-window quota this sidecar may spend without
//! asking Redis, and the arithmetic that sizes them.
//!
//! A [`Lease`] is three atomics per key and window. The request path takes one request from
//! it with a compare-and-swap; only when it runs low does anything talk to Redis (see
//! [`super::shared`]). The sizing rules are pure functions here so that they can be tested
//! as tables:
//!
//! - [`chunk_size`]: ask for about [`HORIZON_SECS`] of this sidecar's recent rate, never less
//!   than [`MIN_CHUNK`], never more than `1 / (SPLIT × live sidecars)` of the quota that was
//!   left at the last grant. Hot keys far from their limit get big chunks (few round trips);
//!   as a quota runs out the chunks shrink geometrically, so the sidecars still sharing it
//!   split what is left instead of one of them sitting on it.
//! - [`grant`]: what Redis hands out, `min(want, limit - used)`: the sum of all grants in a
//!   window never exceeds the limit (the Lua script in `keys/redis/lease.lua` is the same
//!   rule, run atomically).
//! - [`fallback_limit`]: while Redis is unreachable, how much of the window this sidecar may
//!   admit on its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of this sidecar's recent rate a chunk should last.
pub const HORIZON_SECS: u64 = 10;
/// The smallest chunk asked for: a cold key costs one round trip per this many requests.
pub const MIN_CHUNK: u64 = 8;
/// One grant takes at most `1 / (SPLIT × live)` of what is left.
pub const SPLIT: u64 = 4;

/// The number of requests to ask Redis for.
///
/// `left`: the quota not yet handed out, as of the last grant (the limit before the first);
/// `live`: sidecars seen alive (at least 1); `rate_per_sec`: this sidecar's admissions per
/// second for the key since the last grant (0 if unknown).
pub fn chunk_size(left: u64, live: u64, rate_per_sec: f64) -> u64 {
    let wanted = ((rate_per_sec * HORIZON_SECS as f64).ceil() as u64).max(MIN_CHUNK);
    let fair = (left / (SPLIT * live.max(1))).max(1);
    wanted.min(fair)
}

/// Redis's side of a grant (mirrors `lease.lua`): hands out at most what is left.
/// Returns (granted, used after).
pub fn grant(limit: u64, used: u64, want: u64) -> (u64, u64) {
    let granted = want.min(limit.saturating_sub(used));
    (granted, used + granted)
}

/// What one sidecar may admit in a window while Redis is unreachable: `limit × local_share`
/// when a share is configured (below 1), otherwise an equal split between the sidecars last
/// seen alive. At least 1, so a key is never locked out by rounding.
pub fn fallback_limit(limit: u64, local_share: f64, live_last_seen: u64) -> u64 {
    let share = if local_share < 1.0 {
        (limit as f64 * local_share).ceil() as u64
    } else {
        limit / live_last_seen.max(1)
    };
    share.clamp(1, limit.max(1))
}

/// Refill in the background once the lease is down to this part of its last chunk.
pub fn low_water(chunk: u64) -> u64 {
    chunk / 3
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack(window: u64, count: u64) -> u64 {
    (window << COUNT_BITS) | (count & COUNT_MASK)
}

fn count_in(state: u64, window: u64) -> u64 {
    if state >> COUNT_BITS == window {
        state & COUNT_MASK
    } else {
        0
    }
}

/// The outcome of [`Lease::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// One request taken; this many are left in the lease.
    Taken { left: u64 },
    /// Nothing left in this window's lease: ask Redis (or the fallback).
    Empty,
    /// Redis said this window's quota is all handed out: refuse without asking again.
    Exhausted,
}

/// One key's lease for one long window.
#[derive(Debug, Default)]
pub struct Lease {
    /// Window number (top 24 bits) and requests still available (low 40).
    available: AtomicU64,
    /// Window number + 1 whose shared quota is all handed out (0: none).
    exhausted: AtomicU64,
    /// The last chunk granted, for the low-water mark.
    chunk: AtomicU64,
    /// `limit - used` in Redis after the last grant: the quota not yet handed out.
    left: AtomicU64,
    /// Window number and requests admitted while Redis was unreachable, not yet reported.
    unreported: AtomicU64,
    /// Requests available right after the last grant, and when it came (Unix ms): the rate
    /// since then sizes the next chunk.
    level: AtomicU64,
    granted_at_ms: AtomicU64,
}

impl Lease {
    pub fn take(&self, window: u64) -> Take {
        let mut state = self.available.load(Ordering::Acquire);
        loop {
            let count = count_in(state, window);
            if count == 0 {
                return if self.exhausted.load(Ordering::Acquire) == window + 1 {
                    Take::Exhausted
                } else {
                    Take::Empty
                };
            }
            let next = pack(window, count - 1);
            match self.available.compare_exchange_weak(
                state,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Take::Taken { left: count - 1 },
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives one request back (another window refused the request), if still `window`.
    pub fn give_back(&self, window: u64) {
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state >> COUNT_BITS == window).then(|| pack(window, (state & COUNT_MASK) + 1))
            });
    }

    /// Adds a grant for `window`. A grant for a new window replaces the old window's
    /// leftovers, which can no longer be spent.
    pub fn add(&self, window: u64, granted: u64, left: u64, now_ms: u64) {
        let before = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(pack(window, count_in(state, window) + granted))
            })
            .unwrap_or_else(|state| state);
        self.level
            .store(count_in(before, window) + granted, Ordering::Release);
        self.granted_at_ms.store(now_ms, Ordering::Release);
        if granted > 0 {
            self.chunk.store(granted, Ordering::Release);
        }
        self.left.store(left, Ordering::Release);
        if left == 0 && granted == 0 {
            self.exhausted.store(window + 1, Ordering::Release);
        }
    }

    pub fn available(&self, window: u64) -> u64 {
        count_in(self.available.load(Ordering::Acquire), window)
    }

    /// Requests per second taken from this lease since the last grant (0 before any).
    pub fn rate(&self, window: u64, now_ms: u64) -> f64 {
        let at = self.granted_at_ms.load(Ordering::Acquire);
        if at == 0 {
            return 0.0;
        }
        let taken = self
            .level
            .load(Ordering::Acquire)
            .saturating_sub(self.available(window));
        // A floor on the interval: two grants a moment apart say little about the rate.
        let secs = (now_ms.saturating_sub(at)).max(100) as f64 / 1_000.0;
        taken as f64 / secs
    }

    /// True when the lease should be topped up in the background.
    pub fn is_low(&self, window: u64) -> bool {
        let exhausted = self.exhausted.load(Ordering::Acquire) == window + 1;
        !exhausted && self.available(window) <= low_water(self.chunk.load(Ordering::Acquire))
    }

    /// True when a request would find nothing to take and should wait for a grant.
    pub fn needs_grant(&self, window: u64) -> bool {
        self.available(window) == 0 && self.exhausted.load(Ordering::Acquire) != window + 1
    }

    /// The quota not yet handed out at the last grant; `None` before any grant.
    pub fn left(&self, window: u64) -> Option<u64> {
        let ever = self.chunk.load(Ordering::Acquire) > 0
            || self.exhausted.load(Ordering::Acquire) == window + 1;
        ever.then(|| self.left.load(Ordering::Acquire))
    }

    /// Counts a request admitted without a lease (Redis unreachable), to report later.
    pub fn note_unreported(&self, window: u64, delta: i64) {
        let _ = self
            .unreported
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                let count = count_in(state, window) as i64 + delta;
                Some(pack(window, count.max(0) as u64))
            });
    }

    /// Empties the lease, as (window, count): what is handed back when the sidecar stops.
    pub fn surrender(&self) -> (u64, u64) {
        let state = self.available.swap(0, Ordering::AcqRel);
        (state >> COUNT_BITS, state & COUNT_MASK)
    }

    /// Takes the unreported count, as (window, count), for the next grant to add to Redis.
    pub fn take_unreported(&self) -> (u64, u64) {
        let state = self.unreported.swap(0, Ordering::AcqRel);
        (state >> COUNT_BITS, state & COUNT_MASK)
    }

    /// Puts back what [`Lease::take_unreported`] took, when the report failed.
    pub fn restore_unreported(&self, window: u64, count: u64) {
        if count > 0 {
            self.note_unreported(window, count as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizing() {
        // (left, live, rate/s) -> chunk
        let table: &[(u64, u64, f64, u64)] = &[
            // A cold key asks for the minimum.
            (1_000_000, 1, 0.0, MIN_CHUNK),
            (1_000_000, 3, 0.05, MIN_CHUNK),
            // A hot key far from its limit: ten seconds of its rate.
            (10_000_000, 3, 1_000.0, 10_000),
            (10_000_000, 3, 999.2, 9_992),
            // …but never more than 1/(4 × live) of what is left.
            (1_000, 3, 1_000.0, 83),
            (1_000, 1, 1_000.0, 250),
            (100, 3, 50.0, 8),
            // Near the end, one at a time, never zero.
            (20, 3, 100.0, 1),
            (1, 5, 100.0, 1),
            (0, 5, 100.0, 1),
            // Live sidecars never counted as zero.
            (1_000, 0, 1_000.0, 250),
        ];
        for &(left, live, rate, want) in table {
            assert_eq!(chunk_size(left, live, rate), want, "{left} {live} {rate}");
        }
    }

    #[test]
    fn grants_never_exceed_the_limit() {
        let table: &[(u64, u64, u64, u64, u64)] = &[
            // (limit, used, want) -> (granted, used after)
            (1_000, 0, 83, 83, 83),
            (1_000, 990, 83, 10, 1_000),
            (1_000, 1_000, 5, 0, 1_000),
            // Fallback admissions reported late can push `used` past the limit.
            (1_000, 1_200, 5, 0, 1_200),
            (5, 0, 0, 0, 0),
        ];
        for &(limit, used, want, granted, after) in table {
            assert_eq!(grant(limit, used, want), (granted, after), "{limit} {used}");
        }
        // Any interleaving of asks from any number of sidecars: the total stays ≤ limit.
        for sidecars in 1..6u64 {
            let limit = 1_000;
            let mut used = 0;
            let mut total = 0;
            let mut left = vec![limit; sidecars as usize];
            for round in 0..10_000u64 {
                let s = (round * 7 % sidecars) as usize;
                let want = chunk_size(left[s], sidecars, (round % 300) as f64);
                let (g, u) = grant(limit, used, want);
                used = u;
                total += g;
                left[s] = limit - used;
            }
            assert_eq!(total, limit, "{sidecars} sidecars hand out the whole quota");
        }
    }

    #[test]
    fn fallback_shares() {
        let table: &[(u64, f64, u64, u64)] = &[
            // (limit, local_share, live last seen) -> local limit
            (1_000, 1.0, 1, 1_000),
            (1_000, 1.0, 3, 333),
            (1_000, 1.0, 0, 1_000),
            (1_000, 0.25, 3, 250),
            (1_000, 0.3333, 7, 334),
            (2, 1.0, 5, 1),
            (1, 0.1, 1, 1),
        ];
        for &(limit, share, live, want) in table {
            assert_eq!(
                fallback_limit(limit, share, live),
                want,
                "{limit} {share} {live}"
            );
        }
    }

    #[test]
    fn a_lease_spends_what_it_was_granted_in_its_window_only() {
        let lease = Lease::default();
        assert_eq!(lease.take(7), Take::Empty);
        assert!(lease.needs_grant(7));
        assert_eq!(lease.left(7), None);
        lease.add(7, 3, 900, 1);
        assert_eq!(lease.left(7), Some(900));
        assert_eq!(lease.take(7), Take::Taken { left: 2 });
        assert!(!lease.is_low(7));
        assert_eq!(lease.take(7), Take::Taken { left: 1 });
        assert!(lease.is_low(7), "1 of a 3-chunk is below a third");
        lease.give_back(7);
        assert_eq!(lease.available(7), 2);
        // The next window starts empty: leftovers are not carried over.
        assert_eq!(lease.take(8), Take::Empty);
        lease.give_back(8);
        assert_eq!(lease.available(8), 0, "no give-back into another window");
        lease.add(8, 2, 0, 1);
        assert_eq!(lease.available(8), 2);
        assert_eq!(lease.available(7), 0);
    }

    #[test]
    fn the_rate_since_the_last_grant() {
        let lease = Lease::default();
        assert_eq!(lease.rate(1, 5_000), 0.0, "unknown before the first grant");
        lease.add(1, 100, 900, 10_000);
        for _ in 0..40 {
            lease.take(1);
        }
        assert_eq!(lease.rate(1, 12_000), 20.0, "40 in 2 s");
        assert_eq!(
            lease.rate(1, 10_001),
            400.0,
            "40 in under 100 ms counts as 100 ms"
        );
    }

    #[test]
    fn an_exhausted_window_refuses_without_asking_again() {
        let lease = Lease::default();
        lease.add(3, 1, 0, 1);
        assert_eq!(lease.take(3), Take::Taken { left: 0 });
        assert_eq!(
            lease.take(3),
            Take::Empty,
            "used up, but Redis may have more"
        );
        lease.add(3, 0, 0, 1);
        assert_eq!(lease.take(3), Take::Exhausted);
        assert!(!lease.needs_grant(3) && !lease.is_low(3));
        assert_eq!(lease.take(4), Take::Empty, "a new window asks again");
    }

    #[test]
    fn unreported_admissions_are_reported_once() {
        let lease = Lease::default();
        lease.note_unreported(5, 1);
        lease.note_unreported(5, 1);
        lease.note_unreported(5, -1);
        lease.note_unreported(5, 1);
        assert_eq!(lease.take_unreported(), (5, 2));
        assert_eq!(lease.take_unreported(), (0, 0));
        lease.restore_unreported(5, 2);
        lease.note_unreported(6, 1);
        assert_eq!(
            lease.take_unreported(),
            (6, 1),
            "a new window drops the old count"
        );
    }

    #[test]
    fn concurrent_takes_never_exceed_the_grant() {
        let lease = std::sync::Arc::new(Lease::default());
        lease.add(1, 1_000, 0, 1);
        let taken: u64 = std::thread::scope(|s| {
            (0..8)
                .map(|_| {
                    let lease = lease.clone();
                    s.spawn(move || {
                        (0..500)
                            .filter(|_| matches!(lease.take(1), Take::Taken { .. }))
                            .count() as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(taken, 1_000);
    }
}
