//! Plans, rate limits and quotas, and the headers that report them.
//!
//! Accuracy versus latency, decided here once:
//! - Short windows (per second, per minute) are enforced by GCRA ([`gcra`]) in each process,
//!   lock-free, with no network round-trip. With N sidecars behind a load balancer, set
//!   `[limits] local_share = 1/N`: each sidecar then admits its share of the rate. This is
//!   what every sidecar-based limiter does for sub-second windows; sharing them through Redis
//!   would cost more than the request.
//! - Long windows (per hour, day, calendar month UTC) are counted exactly in this process
//!   ([`quota`]). That is exact for one keygate (the file store's deployment). Sharing long
//!   windows across sidecars through Redis quota leases is not built yet: with several
//!   sidecars each one currently enforces the full quota on its own share of the traffic.
//! - A request refused by any window consumes nothing in any window; requests refused before
//!   the limiter (401, 403) never reach it.

pub mod gcra;
pub mod headers;
pub mod quota;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::keys::{Environment, KeyHash, KeyHashState, KeyRecord};
use gcra::{Gcra, Rate};
use quota::{Calendar, Counter};

/// Limits of a plan, or one key's overrides of its plan's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_month: Option<u64>,
    /// Requests allowed at once in the shortest short window (default: its limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// `self` with every limit `over` sets replaced.
    pub fn overridden_by(&self, over: &Limits) -> Limits {
        Limits {
            per_second: over.per_second.or(self.per_second),
            per_minute: over.per_minute.or(self.per_minute),
            per_hour: over.per_hour.or(self.per_hour),
            per_day: over.per_day.or(self.per_day),
            per_month: over.per_month.or(self.per_month),
            burst: over.burst.or(self.burst),
        }
    }

    /// Sets one limit by name (`per_hour=5000`), for `keys create --limit`.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), String> {
        if value == 0 {
            return Err(format!("{name}: a limit must be at least 1"));
        }
        let slot = match name {
            "per_second" => &mut self.per_second,
            "per_minute" => &mut self.per_minute,
            "per_hour" => &mut self.per_hour,
            "per_day" => &mut self.per_day,
            "per_month" => &mut self.per_month,
            "burst" => &mut self.burst,
            _ => {
                return Err(format!(
                    "unknown limit {name:?}: use per_second, per_minute, per_hour, per_day, per_month or burst"
                ));
            }
        };
        *slot = Some(value);
        Ok(())
    }

    pub fn check(&self) -> Result<(), String> {
        let all = [
            self.per_second,
            self.per_minute,
            self.per_hour,
            self.per_day,
            self.per_month,
            self.burst,
        ];
        if all.iter().flatten().any(|v| *v == 0 || *v > (1 << 39)) {
            return Err("limits must be between 1 and 549755813888".into());
        }
        if self.burst.is_some() && self.per_second.is_none() && self.per_minute.is_none() {
            return Err("burst needs per_second or per_minute".into());
        }
        Ok(())
    }
}

/// How `X-RateLimit-Reset` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetStyle {
    /// Unix time in seconds when the window resets (GitHub, Twitter style).
    Epoch,
    /// Seconds until the window resets.
    Delta,
}

/// `[plans.*]` and `[limits]`, validated.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsConfig {
    pub plans: std::collections::BTreeMap<String, Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_plan: Option<String>,
    pub reset: ResetStyle,
    /// Fraction of the short-window limits this process enforces (1/N with N sidecars).
    pub local_share: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            plans: Default::default(),
            default_plan: None,
            sandbox_plan: None,
            reset: ResetStyle::Epoch,
            local_share: 1.0,
        }
    }
}

/// One window's state after a decision: what the headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub name: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets (rounded up).
    pub reset_secs: u64,
    /// The window's length in seconds, for `RateLimit-Policy`.
    pub window_secs: u64,
}

/// A request refused by a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub window: WindowState,
    /// Seconds until a request can pass: never earlier than the window's reset.
    pub retry_after: u64,
}

#[derive(Default)]
struct KeyState {
    second: Gcra,
    minute: Gcra,
    hour: Counter,
    day: Counter,
    month: Counter,
}

enum Window {
    Short(Rate),
    Long(u64, Calendar),
}

pub struct Limiter {
    config: LimitsConfig,
    state: moka::sync::Cache<KeyHash, Arc<KeyState>, KeyHashState>,
}

impl Limiter {
    pub fn new(config: LimitsConfig, capacity: u64) -> Self {
        Self {
            config,
            state: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(KeyHashState::default()),
        }
    }

    pub fn reset_style(&self) -> ResetStyle {
        self.config.reset
    }

    /// The limits that apply to `record`: its plan (or the sandbox / default plan), with the
    /// key's own overrides on top. Empty: the key is not limited.
    pub fn limits_for(&self, record: &KeyRecord) -> Limits {
        let plan = record
            .plan
            .as_deref()
            .or(match record.env {
                Environment::Test => self
                    .config
                    .sandbox_plan
                    .as_deref()
                    .or(self.config.default_plan.as_deref()),
                Environment::Live => self.config.default_plan.as_deref(),
            })
            .and_then(|name| self.config.plans.get(name));
        plan.cloned()
            .unwrap_or_default()
            .overridden_by(&record.limits)
    }

    /// Counts one request for the key, or refuses it. `Ok(None)`: the key has no limits.
    /// `Ok(Some(w))`: admitted, `w` the most constraining window (for the headers).
    pub fn admit(
        &self,
        hash: KeyHash,
        record: &KeyRecord,
        now: SystemTime,
    ) -> Result<Option<WindowState>, Refusal> {
        let limits = self.limits_for(record);
        if limits.is_empty() {
            return Ok(None);
        }
        let windows = self.windows(&limits);
        let state = self.state.get_with(hash, Default::default);
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let now_secs = now_ns / 1_000_000_000;

        let mut tightest: Option<WindowState> = None;
        for (i, (name, window)) in windows.iter().enumerate() {
            let Some(window) = window else { continue };
            let outcome = match window {
                Window::Short(rate) => short(&state, i)
                    .try_acquire(*rate, now_ns)
                    .map(|w| short_state(name, *rate, w))
                    .map_err(|w| short_state(name, *rate, w)),
                Window::Long(limit, calendar) => long(&state, *calendar)
                    .try_acquire(*limit, *calendar, now_secs)
                    .map(|u| long_state(name, *limit, *calendar, u))
                    .map_err(|u| long_state(name, *limit, *calendar, u)),
            };
            match outcome {
                Ok(w) => {
                    if tightest
                        .is_none_or(|t| (w.remaining, w.reset_secs) < (t.remaining, t.reset_secs))
                    {
                        tightest = Some(w);
                    }
                }
                Err(refused) => {
                    // Nothing counts when anything refuses: give back what we took.
                    for (j, (_, earlier)) in windows[..i].iter().enumerate() {
                        match earlier {
                            Some(Window::Short(rate)) => short(&state, j).release(*rate),
                            Some(Window::Long(_, calendar)) => {
                                long(&state, *calendar).release(*calendar, now_secs)
                            }
                            None => {}
                        }
                    }
                    return Err(Refusal {
                        window: refused,
                        retry_after: refused.reset_secs.max(1),
                    });
                }
            }
        }
        Ok(tightest)
    }

    fn windows(&self, limits: &Limits) -> [(&'static str, Option<Window>); 5] {
        let share = |n: u64| ((n as f64 * self.config.local_share).ceil() as u64).max(1);
        // The burst belongs to the shortest short window; a longer one allows its whole
        // limit at once.
        let burst_second = limits.burst.or(limits.per_second);
        let burst_minute = if limits.per_second.is_some() {
            limits.per_minute
        } else {
            limits.burst.or(limits.per_minute)
        };
        let short_window = |limit: Option<u64>, burst: Option<u64>, period_ns| {
            limit.map(|l| {
                Window::Short(Rate {
                    limit: share(l),
                    period_ns,
                    burst: share(burst.unwrap_or(l)),
                })
            })
        };
        [
            (
                "per_second",
                short_window(limits.per_second, burst_second, SECOND_NS),
            ),
            (
                "per_minute",
                short_window(limits.per_minute, burst_minute, 60 * SECOND_NS),
            ),
            (
                "per_hour",
                limits.per_hour.map(|l| Window::Long(l, Calendar::Hour)),
            ),
            (
                "per_day",
                limits.per_day.map(|l| Window::Long(l, Calendar::Day)),
            ),
            (
                "per_month",
                limits.per_month.map(|l| Window::Long(l, Calendar::Month)),
            ),
        ]
    }

    /// Requests counted so far in each long window (for `keys usage`, later).
    pub fn used(&self, hash: &KeyHash, now: SystemTime) -> Option<[u64; 3]> {
        let state = self.state.get(hash)?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some([
            state.hour.used(Calendar::Hour, secs),
            state.day.used(Calendar::Day, secs),
            state.month.used(Calendar::Month, secs),
        ])
    }
}

const SECOND_NS: u64 = 1_000_000_000;

fn short(state: &KeyState, index: usize) -> &Gcra {
    if index == 0 {
        &state.second
    } else {
        &state.minute
    }
}

fn long(state: &KeyState, calendar: Calendar) -> &Counter {
    match calendar {
        Calendar::Hour => &state.hour,
        Calendar::Day => &state.day,
        Calendar::Month => &state.month,
    }
}

fn short_state(name: &'static str, rate: Rate, w: gcra::Window) -> WindowState {
    WindowState {
        name,
        limit: rate.burst,
        remaining: w.remaining,
        reset_secs: w.reset_ns.div_ceil(SECOND_NS),
        window_secs: rate.period_ns / SECOND_NS,
    }
}

fn long_state(name: &'static str, limit: u64, calendar: Calendar, u: quota::Usage) -> WindowState {
    WindowState {
        name,
        limit,
        remaining: u.remaining,
        reset_secs: u.reset_secs,
        window_secs: calendar.nominal_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(plan: Option<&str>, env: Environment) -> KeyRecord {
        KeyRecord {
            env,
            plan: plan.map(str::to_owned),
            ..KeyRecord::for_tests()
        }
    }

    fn limiter() -> Limiter {
        let mut plans = std::collections::BTreeMap::new();
        plans.insert(
            "free".to_owned(),
            Limits {
                per_second: Some(2),
                per_hour: Some(5),
                ..Limits::default()
            },
        );
        plans.insert(
            "sandbox".to_owned(),
            Limits {
                per_minute: Some(3),
                ..Limits::default()
            },
        );
        Limiter::new(
            LimitsConfig {
                plans,
                default_plan: Some("free".into()),
                sandbox_plan: Some("sandbox".into()),
                ..LimitsConfig::default()
            },
            100,
        )
    }

    fn t(secs: u64) -> SystemTime {
        // 2026-11-22T05:00:00Z plus `secs`.
        UNIX_EPOCH + Duration::from_secs(1_795_323_600 + secs)
    }

    #[test]
    fn plans_resolve_by_key_environment_and_override() {
        let l = limiter();
        assert_eq!(
            l.limits_for(&record(None, Environment::Live)).per_hour,
            Some(5)
        );
        assert_eq!(
            l.limits_for(&record(None, Environment::Test)).per_minute,
            Some(3)
        );
        assert_eq!(
            l.limits_for(&record(Some("free"), Environment::Test))
                .per_hour,
            Some(5)
        );
        let mut r = record(None, Environment::Live);
        r.limits.per_hour = Some(50);
        let limits = l.limits_for(&r);
        assert_eq!((limits.per_hour, limits.per_second), (Some(50), Some(2)));
        let none = Limiter::new(LimitsConfig::default(), 10);
        assert!(none.limits_for(&r).per_second.is_none());
        assert_eq!(
            none.admit(KeyHash::of("x"), &record(None, Environment::Live), t(0)),
            Ok(None)
        );
    }

    #[test]
    fn the_tightest_window_is_reported_and_a_refusal_counts_nowhere() {
        let l = limiter();
        let r = record(None, Environment::Live);
        let h = KeyHash::of("k");
        let first = l.admit(h, &r, t(0)).unwrap().unwrap();
        assert_eq!((first.name, first.remaining), ("per_second", 1));
        l.admit(h, &r, t(0)).unwrap();
        let refused = l.admit(h, &r, t(0)).unwrap_err();
        assert_eq!(refused.window.name, "per_second");
        assert!(refused.retry_after >= 1);
        // Three more over the next seconds exhaust the hour (5); per-second refusals above
        // did not eat into it.
        for s in 1..=3 {
            l.admit(h, &r, t(s)).unwrap();
        }
        assert_eq!(l.used(&h, t(3)).unwrap()[0], 5);
        let refused = l.admit(h, &r, t(10)).unwrap_err();
        assert_eq!(refused.window.name, "per_hour");
        assert_eq!(refused.retry_after, 3600 - 10, "retry when the hour resets");
        // The hourly refusal did not consume a per-second slot either.
        assert_eq!(l.used(&h, t(10)).unwrap()[0], 5);
        // Next hour: admitted again.
        assert!(l.admit(h, &r, t(3600)).is_ok());
    }

    #[test]
    fn local_share_scales_the_short_windows_only() {
        let mut config = LimitsConfig::default();
        config.plans.insert(
            "p".into(),
            Limits {
                per_second: Some(10),
                per_hour: Some(7),
                ..Limits::default()
            },
        );
        config.default_plan = Some("p".into());
        config.local_share = 0.5;
        let l = Limiter::new(config, 10);
        let r = record(None, Environment::Live);
        let h = KeyHash::of("share");
        let admitted = (0..10).filter(|_| l.admit(h, &r, t(0)).is_ok()).count();
        assert_eq!(admitted, 5, "half of 10/s");
    }

    proptest::proptest! {
        /// Within one window, Remaining never increases from one admitted request to the
        /// next, Reset is in the future, and Retry-After is never before the reset.
        #[test]
        fn headers_are_consistent(
            per_second in 1u64..20,
            per_hour in 1u64..50,
            steps in proptest::collection::vec(0u64..300, 1..80),
        ) {
            let mut config = LimitsConfig::default();
            config.plans.insert("p".into(), Limits {
                per_second: Some(per_second),
                per_hour: Some(per_hour),
                ..Limits::default()
            });
            config.default_plan = Some("p".into());
            let l = Limiter::new(config, 10);
            let r = record(None, Environment::Live);
            let h = KeyHash::of("prop");
            let mut ms = 0u64;
            let mut last_hour_remaining = u64::MAX;
            for step in steps {
                ms += step;
                let now = t(0) + Duration::from_millis(ms);
                match l.admit(h, &r, now) {
                    Ok(Some(w)) => {
                        proptest::prop_assert!(w.reset_secs >= 1 || w.name == "per_second");
                        proptest::prop_assert!(w.remaining <= w.limit);
                        let hour_left = per_hour - l.used(&h, now).unwrap()[0];
                        proptest::prop_assert!(hour_left <= last_hour_remaining);
                        last_hour_remaining = hour_left;
                    }
                    Ok(None) => proptest::prop_assert!(false, "limits configured"),
                    Err(refused) => {
                        proptest::prop_assert_eq!(refused.window.remaining, 0);
                        proptest::prop_assert!(refused.retry_after >= refused.window.reset_secs.max(1));
                        proptest::prop_assert!(refused.retry_after >= 1);
                    }
                }
            }
        }
    }
}
