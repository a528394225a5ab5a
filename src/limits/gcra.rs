//! The generic cell rate algorithm for short windows (per second, per minute), lock-free.
//!
//! One `AtomicU64` per key and window holds the theoretical arrival time (TAT, ns since the
//! epoch): when the next request would be due if requests came exactly at the rate. A
//! request at `now` is admitted if `max(TAT, now) - now <= τ`, where τ = (burst − 1) × T and
//! T = period / limit, and then TAT becomes `max(TAT, now) + T`. So at most `burst` requests
//! pass back to back, and over any span of `d` ns at most `burst + d / T` pass — the bound
//! the tests check exactly.

use std::sync::atomic::{AtomicU64, Ordering};

/// A rate: `limit` requests per `period_ns`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub period_ns: u64,
    pub burst: u64,
}

impl Rate {
    /// T: the spacing of requests at exactly the rate.
    fn interval(&self) -> u64 {
        (self.period_ns / self.limit.max(1)).max(1)
    }

    /// τ: how far ahead of the rate a burst may run.
    fn tolerance(&self) -> u64 {
        self.interval() * (self.burst.max(1) - 1)
    }
}

/// What a window looks like after a decision, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests that would still pass right now.
    pub remaining: u64,
    /// Nanoseconds until the window is back to full capacity (admitted) or until the next
    /// request can pass (refused).
    pub reset_ns: u64,
}

#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

impl Gcra {
    /// Admits one request at `now_ns`, or says how long until one would pass.
    pub fn try_acquire(&self, rate: Rate, now_ns: u64) -> Result<Window, Window> {
        let (t, tau) = (rate.interval(), rate.tolerance());
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let base = tat.max(now_ns);
            if base - now_ns > tau {
                return Err(Window {
                    remaining: 0,
                    reset_ns: base - tau - now_ns,
                });
            }
            let next = base + t;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(window_after(next, now_ns, t, tau)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back one request admitted by [`Gcra::try_acquire`] (another window refused it).
    pub fn release(&self, rate: Rate) {
        let t = rate.interval();
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.saturating_sub(t))
            });
    }
}

impl Gcra {
    /// Forgets every request: the next one starts a fresh burst.
    pub fn reset(&self) {
        self.tat.store(0, Ordering::Release);
    }
}

fn window_after(tat: u64, now_ns: u64, t: u64, tau: u64) -> Window {
    let ahead = tat.saturating_sub(now_ns);
    Window {
        remaining: if ahead > tau {
            0
        } else {
            (tau - ahead) / t + 1
        },
        reset_ns: ahead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_exactly_the_rate() {
        let rate = Rate {
            limit: 10,
            period_ns: SEC,
            burst: 20,
        };
        let g = Gcra::default();
        let start = 1_000 * SEC;
        // 20 at once…
        for i in 0..20 {
            let w = g.try_acquire(rate, start).expect("within the burst");
            assert_eq!(w.remaining, 19 - i);
        }
        let refused = g.try_acquire(rate, start).unwrap_err();
        assert_eq!(
            refused.reset_ns,
            SEC / 10,
            "the next slot is one interval away"
        );
        // …then one every 100 ms.
        assert!(g.try_acquire(rate, start + SEC / 10 - 1).is_err());
        assert!(g.try_acquire(rate, start + SEC / 10).is_ok());
        assert!(g.try_acquire(rate, start + SEC / 10).is_err());
    }

    #[test]
    fn admits_exactly_burst_plus_rate_over_any_span() {
        // Requests every 1 ms for 10 s against 50/s, burst 5: exactly 5 + 50 × 10 pass.
        let rate = Rate {
            limit: 50,
            period_ns: SEC,
            burst: 5,
        };
        let g = Gcra::default();
        let start = 7 * SEC;
        let mut admitted = 0;
        for ms in 0..10_000 {
            if g.try_acquire(rate, start + ms * 1_000_000).is_ok() {
                admitted += 1;
            }
        }
        // The last slot at exactly 10 s is outside the loop; the first burst gives 5 and
        // each 20 ms interval one more: 5 + 499 in [0, 9.999 s].
        assert_eq!(admitted, 5 + 499);
    }

    #[test]
    fn release_gives_the_slot_back() {
        let rate = Rate {
            limit: 1,
            period_ns: SEC,
            burst: 1,
        };
        let g = Gcra::default();
        assert!(g.try_acquire(rate, SEC).is_ok());
        assert!(g.try_acquire(rate, SEC).is_err());
        g.release(rate);
        assert!(g.try_acquire(rate, SEC).is_ok());
    }

    #[test]
    fn concurrent_callers_never_exceed_the_burst() {
        let rate = Rate {
            limit: 1_000,
            period_ns: SEC,
            burst: 100,
        };
        let g = std::sync::Arc::new(Gcra::default());
        let now = 5 * SEC;
        let admitted: u64 = std::thread::scope(|s| {
            (0..8)
                .map(|_| {
                    let g = g.clone();
                    s.spawn(move || {
                        (0..1_000)
                            .filter(|_| g.try_acquire(rate, now).is_ok())
                            .count() as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(admitted, 100);
    }
}
