//! Long windows (hour, day, calendar month, all UTC): a counter per key and window, exact
//! within one keygate process.
//!
//! One `AtomicU64` packs the window's number (hours, days or months since 1970) in its top
//! 24 bits and the count in the low 40, so rolling over to a new window and counting are one
//! compare-and-swap, with no lock.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calendar {
    Hour,
    Day,
    Month,
}

impl Calendar {
    /// The window containing `secs` (since the epoch): its number and its end (exclusive).
    pub fn window(self, secs: u64) -> (u64, u64) {
        match self {
            Calendar::Hour => (secs / 3600, (secs / 3600 + 1) * 3600),
            Calendar::Day => (secs / 86_400, (secs / 86_400 + 1) * 86_400),
            Calendar::Month => {
                let (y, m, _) = civil_from_days((secs / 86_400) as i64);
                let id = (y * 12 + (m as i64 - 1)) as u64;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (id, days_from_civil(ny, nm, 1) as u64 * 86_400)
            }
        }
    }

    /// Nominal length, for the `w=` of `RateLimit-Policy`.
    pub fn nominal_secs(self) -> u64 {
        match self {
            Calendar::Hour => 3600,
            Calendar::Day => 86_400,
            Calendar::Month => 30 * 86_400,
        }
    }
}

/// What a window looks like after a decision, for the headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset_secs: u64,
}

#[derive(Debug, Default)]
pub struct Counter {
    state: AtomicU64,
}

impl Counter {
    /// Counts one request in the window containing `now_secs`, if `limit` allows.
    pub fn try_acquire(
        &self,
        limit: u64,
        calendar: Calendar,
        now_secs: u64,
    ) -> Result<Usage, Usage> {
        let (id, end) = calendar.window(now_secs);
        let reset_secs = end - now_secs;
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let used = if state >> COUNT_BITS == id {
                state & COUNT_MASK
            } else {
                0
            };
            if used >= limit {
                return Err(Usage {
                    remaining: 0,
                    reset_secs,
                });
            }
            let next = (id << COUNT_BITS) | (used + 1);
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Usage {
                        remaining: limit - used - 1,
                        reset_secs,
                    });
                }
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives back one request (another window refused it), if still in the same window.
    pub fn release(&self, calendar: Calendar, now_secs: u64) {
        let (id, _) = calendar.window(now_secs);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state >> COUNT_BITS == id && state & COUNT_MASK > 0).then(|| state - 1)
            });
    }

    /// Requests counted in the window containing `now_secs`.
    pub fn used(&self, calendar: Calendar, now_secs: u64) -> u64 {
        let (id, _) = calendar.window(now_secs);
        let state = self.state.load(Ordering::Acquire);
        if state >> COUNT_BITS == id {
            state & COUNT_MASK
        } else {
            0
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number: (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, hh: u64, mm: u64, ss: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * 86_400 + hh * 3600 + mm * 60 + ss
    }

    #[test]
    fn calendar_round_trip() {
        for day in [0, 59, 60, 365, 10_956, 11_016, 20_000, 24_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn month_windows_follow_month_lengths() {
        let cases = [
            // (a moment, the end of its month)
            (at(2026, 1, 31, 23, 59, 59), at(2026, 2, 1, 0, 0, 0)),
            (at(2026, 2, 14, 12, 0, 0), at(2026, 3, 1, 0, 0, 0)),
            (at(2024, 2, 29, 23, 0, 0), at(2024, 3, 1, 0, 0, 0)),
            (at(2026, 4, 30, 0, 0, 0), at(2026, 5, 1, 0, 0, 0)),
            (at(2026, 12, 31, 23, 59, 59), at(2027, 1, 1, 0, 0, 0)),
            (at(2100, 2, 28, 0, 0, 0), at(2100, 3, 1, 0, 0, 0)),
        ];
        for (now, end) in cases {
            assert_eq!(Calendar::Month.window(now).1, end, "{now}");
        }
        let (jan, _) = Calendar::Month.window(at(2026, 1, 31, 23, 59, 59));
        let (feb, _) = Calendar::Month.window(at(2026, 2, 1, 0, 0, 0));
        assert_eq!(feb, jan + 1);
    }

    #[test]
    fn counters_roll_over_at_the_boundary() {
        for (calendar, last, first) in [
            (
                Calendar::Hour,
                at(2026, 11, 22, 5, 59, 59),
                at(2026, 11, 22, 6, 0, 0),
            ),
            (
                Calendar::Day,
                at(2026, 11, 22, 23, 59, 59),
                at(2026, 11, 23, 0, 0, 0),
            ),
            (
                Calendar::Month,
                at(2026, 2, 28, 23, 59, 59),
                at(2026, 3, 1, 0, 0, 0),
            ),
        ] {
            let c = Counter::default();
            assert_eq!(c.try_acquire(2, calendar, last).unwrap().remaining, 1);
            assert_eq!(c.try_acquire(2, calendar, last).unwrap().remaining, 0);
            let refused = c.try_acquire(2, calendar, last).unwrap_err();
            assert_eq!(refused.reset_secs, 1, "{calendar:?}");
            let fresh = c.try_acquire(2, calendar, first).unwrap();
            assert_eq!(fresh.remaining, 1, "{calendar:?} rolled over");
            assert_eq!(c.used(calendar, first), 1);
        }
    }

    #[test]
    fn release_only_within_the_window() {
        let c = Counter::default();
        let t = at(2026, 1, 1, 0, 30, 0);
        c.try_acquire(5, Calendar::Hour, t).unwrap();
        c.release(Calendar::Hour, t);
        assert_eq!(c.used(Calendar::Hour, t), 0);
        c.try_acquire(5, Calendar::Hour, t).unwrap();
        c.release(Calendar::Hour, t + 3600);
        assert_eq!(
            c.used(Calendar::Hour, t),
            1,
            "a later window does not release this one"
        );
    }
}
