//! Rate-limited logging for errors that repeat.
//!
//! During an outage every request can fail the same way, and a line per failure buries
//! everything else in the logs and costs I/O exactly when there is least to spare (a dead
//! upstream under load was seen to write 268,000 lines in 7 s; a dead Redis, two lines per
//! lookup, 15 MB a minute). So each kind of repeated error logs its first occurrence in full,
//! with its details, then at most one full line per [`PERIOD`]; the ones in between are
//! counted, and a summary line every period says how many there were. Metrics still count
//! every one (`keygate_requests_total{decision}`, `keygate_key_store_errors_total`).
//!
//! Each kind is a static [`Throttle`]; the call site asks it whether to log:
//! `if ratelog::UPSTREAM_FAILED.allow() { tracing::warn!(…) }`. [`run`] writes the summaries.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// At most one full line per kind per period, and a summary per period of the rest.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Requests that could not be forwarded: refused, reset or cut short by the upstream.
pub static UPSTREAM_FAILED: Throttle = Throttle::new("upstream request failed", Level::Warn);
/// Key reads the store did not answer (the cache's side: one per coalesced read).
pub static KEY_STORE_READ: Throttle = Throttle::new("key store read failed", Level::Warn);
/// Requests refused because their key could not be looked up (one per request).
pub static KEY_LOOKUP: Throttle = Throttle::new("key store lookup failed", Level::Error);
/// Accepts that failed (EMFILE and friends), retried every 50 ms.
pub static ACCEPT: Throttle = Throttle::new("accept failed", Level::Warn);

const ALL: [&Throttle; 4] = [&UPSTREAM_FAILED, &KEY_STORE_READ, &KEY_LOOKUP, &ACCEPT];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Error,
}

/// One kind of repeated error.
pub struct Throttle {
    kind: &'static str,
    level: Level,
    /// No full line before this (ms on [`clock`]).
    next_full_ms: AtomicU64,
    /// Occurrences not logged since the last summary.
    suppressed: AtomicU64,
}

impl Throttle {
    pub const fn new(kind: &'static str, level: Level) -> Self {
        Self {
            kind,
            level,
            next_full_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether to log this occurrence in full; if not, it is counted for the next summary.
    pub fn allow(&self) -> bool {
        self.allow_at(clock())
    }

    fn allow_at(&self, now_ms: u64) -> bool {
        let next = self.next_full_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_full_ms
                .compare_exchange(
                    next,
                    now_ms + PERIOD.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Takes the count of occurrences not logged since the last call.
    fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }

    /// Writes the summary line, if anything was left out.
    fn summarize(&self) {
        let count = self.take_suppressed();
        if count == 0 {
            return;
        }
        let seconds = PERIOD.as_secs();
        match self.level {
            Level::Warn => tracing::warn!(
                kind = self.kind,
                count,
                "{}: {count} more in the last {seconds} s (not logged one by one)",
                self.kind
            ),
            Level::Error => tracing::error!(
                kind = self.kind,
                count,
                "{}: {count} more in the last {seconds} s (not logged one by one)",
                self.kind
            ),
        }
    }
}

/// Milliseconds since the first use, plus one (0 is "no full line yet").
fn clock() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

/// Writes every kind's summary once per [`PERIOD`], and a last time at `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let stop = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        for throttle in ALL {
            throttle.summarize();
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_full_line_per_period_and_the_rest_counted() {
        let t = Throttle::new("test", Level::Warn);
        let period = PERIOD.as_millis() as u64;
        // (ms, logged in full?)
        let table = [
            (1, true),
            (2, false),
            (period / 2, false),
            (period, false),
            (period + 1, true),
            (period + 2, false),
            // A quiet spell: the next one is logged in full again.
            (10 * period, true),
        ];
        for (at, full) in table {
            assert_eq!(t.allow_at(at), full, "at {at} ms");
        }
        assert_eq!(t.take_suppressed(), 4);
        assert_eq!(t.take_suppressed(), 0, "each counted once");
    }

    #[test]
    fn concurrent_occurrences_log_once() {
        let t = Throttle::new("test", Level::Error);
        let full: usize = std::thread::scope(|s| {
            (0..4)
                .map(|_| s.spawn(|| (0..1_000).filter(|_| t.allow_at(7)).count()))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(full, 1);
        assert_eq!(t.take_suppressed(), 3_999);
    }
}
