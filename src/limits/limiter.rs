//! The limiter: which limits apply to a key, and the decision for one request across all of
//! its windows. How each kind of window is counted is described in [`super`].

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::gcra::{self, Gcra, Rate};
use super::lease::{Take, fallback_limit};
use super::quota::{self, Calendar, Counter};
use super::shared::{KeyLeases, QuotaStore, Shared, SharedSettings};
use super::suspend::Suspensions;
use super::{Limited, Limits, LimitsConfig, Refusal, ResetStyle, WindowState};
use crate::keys::{Environment, KeyHash, KeyHashState, KeyRecord};
use crate::metrics::Metrics;

const SECOND_NS: u64 = 1_000_000_000;
/// A count without a limit: what this process admitted in a window, for the fallback.
const UNLIMITED: u64 = (1 << 39) + 1;

#[derive(Default)]
struct KeyState {
    second: Gcra,
    minute: Gcra,
    /// What this process admitted in each long window (the quota itself with the file
    /// store; with shared quotas, what the fallback share is counted against).
    hour: Counter,
    day: Counter,
    month: Counter,
    /// Shared quotas only.
    leases: KeyLeases,
    /// Rate-limit refusals, for `[limits.suspend]`.
    refusals: Gcra,
}

impl AsRef<KeyLeases> for KeyState {
    fn as_ref(&self) -> &KeyLeases {
        &self.leases
    }
}

impl KeyState {
    fn counter(&self, calendar: Calendar) -> &Counter {
        match calendar {
            Calendar::Hour => &self.hour,
            Calendar::Day => &self.day,
            Calendar::Month => &self.month,
        }
    }

    fn gcra(&self, index: usize) -> &Gcra {
        if index == 0 {
            &self.second
        } else {
            &self.minute
        }
    }
}

#[derive(Clone, Copy)]
enum Window {
    Short(Rate),
    Long(u64, Calendar),
}

/// How long windows are counted for this decision.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Exactly, in this process (file store).
    Local,
    /// From leases; an empty lease means "ask for a grant".
    Leased,
    /// From leases while they last, then against this process's share (store unreachable).
    Fallback,
}

/// What one window took for an admitted request, so it can be given back if a later window
/// refuses.
#[derive(Clone, Copy)]
enum Taken {
    Short(usize, Rate),
    Counted(Calendar),
    Leased(Calendar, u64),
    Fallback(Calendar, u64),
}

enum Step {
    Admitted(Option<WindowState>),
    Refused(Refusal),
    NeedGrant,
}

pub struct Limiter {
    config: ArcSwap<LimitsConfig>,
    state: moka::sync::Cache<KeyHash, Arc<KeyState>, KeyHashState>,
    suspensions: Arc<Suspensions>,
    shared: Option<Arc<Shared>>,
    metrics: Option<Arc<Metrics>>,
}

impl Limiter {
    /// A limiter counting every window in this process.
    pub fn new(config: LimitsConfig, capacity: u64) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            state: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .build_with_hasher(KeyHashState::default()),
            suspensions: Arc::default(),
            shared: None,
            metrics: None,
        }
    }

    /// Shares long-window quotas and suspensions through `store`, and starts the sync loop
    /// (it ends when the limiter is dropped).
    pub fn with_shared_quotas(
        mut self,
        store: Arc<dyn QuotaStore>,
        settings: SharedSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Shared::new(store, settings, self.suspensions.clone(), metrics.clone());
        shared.start();
        self.shared = Some(shared);
        self.metrics = Some(metrics);
        self
    }

    /// Swaps the plans and limits (config reload). Counters, leases and suspensions are kept:
    /// a changed limit applies from the next request, and leases already granted under the
    /// old limit are spent first.
    pub fn reconfigure(&self, config: LimitsConfig) {
        self.config.store(Arc::new(config));
    }

    pub fn reset_style(&self) -> ResetStyle {
        self.config.load().reset
    }

    /// The limits that apply to `record`: its plan (or the sandbox / default plan), with the
    /// key's own overrides on top. Empty: the key is not limited.
    pub fn limits_for(&self, record: &KeyRecord) -> Limits {
        limits_for(&self.config.load(), record)
    }

    /// Counts one request for the key, or refuses it. `Ok(None)`: the key has no limits.
    /// `Ok(Some(w))`: admitted, `w` the most constraining window (for the headers).
    ///
    /// Awaits only when a shared quota's lease is empty (see the module docs), and then for
    /// at most `[store] timeout`.
    pub async fn admit(
        &self,
        hash: KeyHash,
        record: &KeyRecord,
        now: SystemTime,
    ) -> Result<Option<WindowState>, Limited> {
        if let Some(retry_after) = self.suspensions.check(&hash, Instant::now()) {
            return Err(Limited::Suspended { retry_after });
        }
        let config = self.config.load();
        let limits = limits_for(&config, record);
        if limits.is_empty() {
            return Ok(None);
        }
        let windows = windows(&config, &limits);
        let state = self.state.get_with(hash, Default::default);
        let started = Instant::now();
        let mut local_only = false;
        loop {
            let mode = match &self.shared {
                None => Mode::Local,
                Some(shared) if local_only || shared.in_fallback() => Mode::Fallback,
                Some(_) => Mode::Leased,
            };
            match self.decide(&config, &state, &windows, now, mode) {
                Step::Admitted(tightest) => {
                    if mode == Mode::Leased {
                        self.refill_if_low(&state, hash, &windows, now);
                    }
                    return Ok(tightest);
                }
                Step::Refused(refusal) => {
                    return Err(self.refused(&config, &state, hash, refusal));
                }
                Step::NeedGrant => {
                    let shared = self.shared.as_ref().expect("only leased decisions ask");
                    let budget = shared.timeout().saturating_sub(started.elapsed());
                    let longs = long_windows(&windows);
                    if budget.is_zero() || !shared.refill(&state.leases, hash, &longs, budget).await
                    {
                        // No grant in time: decide this request as the fallback would.
                        local_only = true;
                    }
                }
            }
        }
    }

    /// Requests counted by this process so far in each long window (hour, day, month).
    pub fn used(&self, hash: &KeyHash, now: SystemTime) -> Option<[u64; 3]> {
        let state = self.state.get(hash)?;
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(
            [Calendar::Hour, Calendar::Day, Calendar::Month]
                .map(|c| state.counter(c).used(c, secs)),
        )
    }

    fn decide(
        &self,
        config: &LimitsConfig,
        state: &KeyState,
        windows: &[(&'static str, Option<Window>); 5],
        now: SystemTime,
        mode: Mode,
    ) -> Step {
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let now_secs = now_ns / SECOND_NS;
        let mut taken: [Option<Taken>; 5] = [None; 5];
        let mut tightest: Option<WindowState> = None;
        for (i, (name, window)) in windows.iter().enumerate() {
            let Some(window) = window else { continue };
            let outcome = match *window {
                Window::Short(rate) => state
                    .gcra(i)
                    .try_acquire(rate, now_ns)
                    .map(|w| (short_state(name, rate, w), Taken::Short(i, rate)))
                    .map_err(|w| Some(short_state(name, rate, w))),
                Window::Long(limit, calendar) => {
                    self.take_long(config, state, name, limit, calendar, now_secs, mode)
                }
            };
            match outcome {
                Ok((w, took)) => {
                    taken[i] = Some(took);
                    if tightest
                        .is_none_or(|t| (w.remaining, w.reset_secs) < (t.remaining, t.reset_secs))
                    {
                        tightest = Some(w);
                    }
                }
                Err(refused) => {
                    // Nothing counts when anything refuses: give back what we took.
                    for took in taken.iter().flatten() {
                        give_back(state, *took, now_secs);
                    }
                    return match refused {
                        Some(window) => Step::Refused(Refusal {
                            window,
                            retry_after: window.reset_secs.max(1),
                        }),
                        None => Step::NeedGrant,
                    };
                }
            }
        }
        Step::Admitted(tightest)
    }

    /// One long window. `Err(None)`: the lease is empty, ask for a grant.
    #[allow(clippy::too_many_arguments)]
    fn take_long(
        &self,
        config: &LimitsConfig,
        state: &KeyState,
        name: &'static str,
        limit: u64,
        calendar: Calendar,
        now_secs: u64,
        mode: Mode,
    ) -> Result<(WindowState, Taken), Option<WindowState>> {
        let counter = state.counter(calendar);
        let as_state = |limit, u| long_state(name, limit, calendar, u);
        if mode == Mode::Local {
            return counter
                .try_acquire(limit, calendar, now_secs)
                .map(|u| (as_state(limit, u), Taken::Counted(calendar)))
                .map_err(|u| Some(as_state(limit, u)));
        }
        let (window, end) = calendar.window(now_secs);
        let reset_secs = end - now_secs;
        let lease = state.leases.get(calendar);
        match lease.take(window) {
            Take::Taken { left } => {
                let _ = counter.try_acquire(UNLIMITED, calendar, now_secs);
                let remaining = (lease.left(window).unwrap_or(limit) + left).min(limit);
                let usage = quota::Usage {
                    remaining,
                    reset_secs,
                };
                Ok((as_state(limit, usage), Taken::Leased(calendar, window)))
            }
            Take::Exhausted => Err(Some(as_state(
                limit,
                quota::Usage {
                    remaining: 0,
                    reset_secs,
                },
            ))),
            Take::Empty if mode == Mode::Leased => Err(None),
            Take::Empty => {
                let live = self.shared.as_ref().map_or(1, |s| s.live());
                let share = fallback_limit(limit, config.local_share, live);
                match counter.try_acquire(share, calendar, now_secs) {
                    // The key's own limit in the headers, this process's share in Remaining.
                    Ok(u) => {
                        lease.note_unreported(window, 1);
                        Ok((as_state(limit, u), Taken::Fallback(calendar, window)))
                    }
                    Err(u) => Err(Some(as_state(limit, u))),
                }
            }
        }
    }

    fn refill_if_low(
        &self,
        state: &Arc<KeyState>,
        hash: KeyHash,
        windows: &[(&'static str, Option<Window>); 5],
        now: SystemTime,
    ) {
        let Some(shared) = &self.shared else { return };
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let longs = long_windows(windows);
        let low = longs
            .iter()
            .any(|&(c, _)| state.leases.get(c).is_low(c.window(now_secs).0));
        if low {
            shared.refill_soon(state.clone(), hash, longs);
        }
    }

    /// A rate-limit refusal; with `[limits.suspend]`, one too many suspends the key.
    fn refused(
        &self,
        config: &LimitsConfig,
        state: &KeyState,
        hash: KeyHash,
        refusal: Refusal,
    ) -> Limited {
        let Some(suspend) = &config.suspend else {
            return Limited::Rate(refusal);
        };
        let tolerated = share(suspend.after, config.local_share);
        let rate = Rate {
            limit: tolerated,
            period_ns: suspend.within.as_nanos().min(u128::from(u64::MAX)) as u64,
            burst: tolerated,
        };
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if state.refusals.try_acquire(rate, now_ns).is_ok() {
            return Limited::Rate(refusal);
        }
        // Start counting afresh once it lifts.
        state.refusals.reset();
        self.suspensions
            .insert(hash, Instant::now() + suspend.lasts);
        if let Some(shared) = &self.shared {
            shared.publish_suspension(hash, suspend.lasts);
        }
        if let Some(metrics) = &self.metrics {
            metrics.limits.suspensions.inc();
        }
        tracing::info!(?hash, lasts = ?suspend.lasts, "key suspended after repeated refusals");
        Limited::Suspended {
            retry_after: suspend.lasts.as_secs().max(1),
        }
    }
}

fn limits_for(config: &LimitsConfig, record: &KeyRecord) -> Limits {
    let plan = record
        .plan
        .as_deref()
        .or(match record.env {
            Environment::Test => config
                .sandbox_plan
                .as_deref()
                .or(config.default_plan.as_deref()),
            Environment::Live => config.default_plan.as_deref(),
        })
        .and_then(|name| config.plans.get(name));
    plan.cloned()
        .unwrap_or_default()
        .overridden_by(&record.limits)
}

fn share(n: u64, local_share: f64) -> u64 {
    ((n as f64 * local_share).ceil() as u64).max(1)
}

fn windows(config: &LimitsConfig, limits: &Limits) -> [(&'static str, Option<Window>); 5] {
    let share = |n: u64| share(n, config.local_share);
    // The burst belongs to the shortest short window; a longer one allows its whole limit at
    // once.
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

fn long_windows(windows: &[(&'static str, Option<Window>); 5]) -> Vec<(Calendar, u64)> {
    windows
        .iter()
        .filter_map(|(_, w)| match w {
            Some(Window::Long(limit, calendar)) => Some((*calendar, *limit)),
            _ => None,
        })
        .collect()
}

fn give_back(state: &KeyState, took: Taken, now_secs: u64) {
    match took {
        Taken::Short(i, rate) => state.gcra(i).release(rate),
        Taken::Counted(calendar) => state.counter(calendar).release(calendar, now_secs),
        Taken::Leased(calendar, window) => {
            state.leases.get(calendar).give_back(window);
            state.counter(calendar).release(calendar, now_secs);
        }
        Taken::Fallback(calendar, window) => {
            state.counter(calendar).release(calendar, now_secs);
            state.leases.get(calendar).note_unreported(window, -1);
        }
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
    use crate::limits::SuspendConfig;
    use std::time::Duration;

    /// Decides without a runtime: a limiter without shared quotas never waits.
    fn admit(
        l: &Limiter,
        h: KeyHash,
        r: &KeyRecord,
        now: SystemTime,
    ) -> Result<Option<WindowState>, Refusal> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(l.admit(h, r, now));
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(w)) => Ok(w),
            Poll::Ready(Err(Limited::Rate(refusal))) => Err(refusal),
            Poll::Ready(Err(other)) => panic!("{other:?}"),
            Poll::Pending => panic!("a local limiter waited"),
        }
    }

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
            admit(
                &none,
                KeyHash::of("x"),
                &record(None, Environment::Live),
                t(0)
            ),
            Ok(None)
        );
    }

    #[test]
    fn the_tightest_window_is_reported_and_a_refusal_counts_nowhere() {
        let l = limiter();
        let r = record(None, Environment::Live);
        let h = KeyHash::of("k");
        let first = admit(&l, h, &r, t(0)).unwrap().unwrap();
        assert_eq!((first.name, first.remaining), ("per_second", 1));
        admit(&l, h, &r, t(0)).unwrap();
        let refused = admit(&l, h, &r, t(0)).unwrap_err();
        assert_eq!(refused.window.name, "per_second");
        assert!(refused.retry_after >= 1);
        // Three more over the next seconds exhaust the hour (5); per-second refusals above
        // did not eat into it.
        for s in 1..=3 {
            admit(&l, h, &r, t(s)).unwrap();
        }
        assert_eq!(l.used(&h, t(3)).unwrap()[0], 5);
        let refused = admit(&l, h, &r, t(10)).unwrap_err();
        assert_eq!(refused.window.name, "per_hour");
        assert_eq!(refused.retry_after, 3600 - 10, "retry when the hour resets");
        // The hourly refusal did not consume a per-second slot either.
        assert_eq!(l.used(&h, t(10)).unwrap()[0], 5);
        // Next hour: admitted again.
        assert!(admit(&l, h, &r, t(3600)).is_ok());
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
        let admitted = (0..10).filter(|_| admit(&l, h, &r, t(0)).is_ok()).count();
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
                match admit(&l, h, &r, now) {
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

    #[test]
    fn a_key_that_keeps_sending_is_suspended() {
        let mut config = LimitsConfig::default();
        config.plans.insert(
            "p".into(),
            Limits {
                per_minute: Some(1),
                ..Limits::default()
            },
        );
        config.default_plan = Some("p".into());
        config.suspend = Some(SuspendConfig {
            after: 2,
            within: Duration::from_secs(60),
            lasts: Duration::from_secs(600),
        });
        let l = Limiter::new(config, 10);
        let r = record(None, Environment::Live);
        let (h, other) = (KeyHash::of("abuser"), KeyHash::of("other"));
        let poll = |h| {
            use std::future::Future;
            use std::task::{Context, Poll, Waker};
            let mut fut = std::pin::pin!(l.admit(h, &r, t(0)));
            match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => panic!("a local limiter waited"),
            }
        };
        assert!(poll(h).is_ok());
        // Two refusals are tolerated…
        assert!(matches!(poll(h), Err(Limited::Rate(_))));
        assert!(matches!(poll(h), Err(Limited::Rate(_))));
        // …the third suspends, and from then on the key is refused before any window.
        assert_eq!(poll(h), Err(Limited::Suspended { retry_after: 600 }));
        let Err(Limited::Suspended { retry_after }) = poll(h) else {
            panic!("still suspended")
        };
        assert!((599..=600).contains(&retry_after));
        assert!(poll(other).is_ok(), "other keys are not affected");
    }

    #[test]
    fn reconfigure_keeps_the_counters() {
        let l = limiter();
        let r = record(None, Environment::Live);
        let h = KeyHash::of("reload");
        admit(&l, h, &r, t(0)).unwrap();
        let mut config = LimitsConfig::default();
        config.plans.insert(
            "free".into(),
            Limits {
                per_hour: Some(2),
                ..Limits::default()
            },
        );
        config.default_plan = Some("free".into());
        l.reconfigure(config);
        assert_eq!(l.limits_for(&r).per_second, None, "the new plan applies");
        assert_eq!(admit(&l, h, &r, t(1)).unwrap().unwrap().remaining, 0);
        assert!(
            admit(&l, h, &r, t(2)).is_err(),
            "the earlier request still counts"
        );
    }

    mod shared {
        use super::*;
        use crate::keys::StoreError;
        use crate::limits::lease;
        use crate::limits::shared::{Grant, GrantAsk, StoredWindow, SyncState};
        use std::collections::HashMap;
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        /// The quota store's contract, in memory: what `lease.lua` does, for unit tests of
        /// the limiter. (The black-box tests run the real script.)
        #[derive(Default)]
        struct Memory {
            used: Mutex<HashMap<(String, u64), u64>>,
            down: AtomicBool,
            grants: AtomicU64,
            live: AtomicU64,
        }

        #[async_trait::async_trait]
        impl QuotaStore for Memory {
            async fn grant(
                &self,
                hash: KeyHash,
                asks: Vec<GrantAsk>,
            ) -> Result<Vec<Grant>, StoreError> {
                if self.down.load(Ordering::SeqCst) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                self.grants.fetch_add(1, Ordering::SeqCst);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let mut used = self.used.lock().unwrap();
                Ok(asks
                    .iter()
                    .map(|ask| {
                        let (window, _) = ask.calendar.window(now);
                        let slot = used
                            .entry((format!("{hash:?}{:?}", ask.calendar), window))
                            .or_default();
                        if ask.unreported.0 == window {
                            *slot += ask.unreported.1;
                        }
                        let (granted, after) = lease::grant(ask.limit, *slot, ask.want);
                        *slot = after;
                        Grant {
                            granted,
                            used: after,
                            window,
                        }
                    })
                    .collect())
            }

            async fn sync(
                &self,
                _: &str,
                _: Duration,
                _: Vec<(KeyHash, Duration)>,
            ) -> Result<SyncState, StoreError> {
                if self.down.load(Ordering::SeqCst) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                Ok(SyncState {
                    live: self.live.load(Ordering::SeqCst),
                    suspended: vec![],
                })
            }

            async fn usage(&self, _: KeyHash) -> Result<Vec<StoredWindow>, StoreError> {
                Ok(vec![])
            }
        }

        fn sidecar(store: &Arc<Memory>, per_hour: u64) -> Limiter {
            let mut config = LimitsConfig::default();
            config.plans.insert(
                "p".into(),
                Limits {
                    per_hour: Some(per_hour),
                    ..Limits::default()
                },
            );
            config.default_plan = Some("p".into());
            let settings = SharedSettings {
                timeout: Duration::from_secs(5),
                sync_every: Duration::from_millis(20),
            };
            Limiter::new(config, 10).with_shared_quotas(
                store.clone(),
                settings,
                Arc::new(Metrics::new()),
            )
        }

        #[tokio::test]
        async fn sidecars_sharing_a_quota_admit_exactly_the_limit() {
            let store = Arc::new(Memory::default());
            store.live.store(3, Ordering::SeqCst);
            let sidecars: Vec<Limiter> = (0..3).map(|_| sidecar(&store, 500)).collect();
            let r = record(None, Environment::Live);
            let h = KeyHash::of("shared");
            let mut admitted = 0;
            for i in 0..1_500 {
                let now = SystemTime::now();
                if sidecars[i % 3].admit(h, &r, now).await.is_ok() {
                    admitted += 1;
                }
            }
            assert_eq!(admitted, 500);
            let grants = store.grants.load(Ordering::SeqCst);
            assert!(grants < 200, "{grants} grants for 500 requests");
        }

        #[tokio::test]
        async fn an_unreachable_store_falls_back_to_a_share_and_reports_it_later() {
            let store = Arc::new(Memory::default());
            store.live.store(2, Ordering::SeqCst);
            let l = sidecar(&store, 100);
            let r = record(None, Environment::Live);
            let h = KeyHash::of("fallback");
            // Let the first sync see two sidecars.
            while l.shared.as_ref().unwrap().live() != 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            store.down.store(true, Ordering::SeqCst);
            let mut admitted = 0;
            for _ in 0..80 {
                if l.admit(h, &r, SystemTime::now()).await.is_ok() {
                    admitted += 1;
                }
            }
            assert!(l.shared.as_ref().unwrap().in_fallback());
            assert_eq!(admitted, 50, "half of 100 with two sidecars last seen");

            store.down.store(false, Ordering::SeqCst);
            while l.shared.as_ref().unwrap().in_fallback() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(l.admit(h, &r, SystemTime::now()).await.is_ok());
            let used: u64 = store.used.lock().unwrap().values().sum();
            assert!(
                used >= 51,
                "the fallback's 50 were reported with the next grant: {used}"
            );
        }
    }
}
