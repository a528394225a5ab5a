//! The limiter: which limits apply to a key, and the decision for one request across all of
//! its windows. How each kind of window is counted is described in [`super`].

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use quick_cache::UnitWeighter;

use super::KeyPlan;
use super::gcra::{self, Gcra, Rate};
use super::lease::{Take, fallback_limit};
use super::quota::{self, Calendar, Counter};
use super::shared::{KeyLeases, QuotaFallback, QuotaStore, Refill, Shared, SharedSettings};
use super::suspend::Suspensions;
use super::{Limited, Limits, LimitsConfig, Refusal, ResetStyle, WindowState};
use crate::metrics::Metrics;
use crate::vocab::{Environment, KeyHash, KeyHashState};

const SECOND_NS: u64 = 1_000_000_000;
/// With `quota_fallback = "refuse"`, how long to wait before asking again when the store
/// granted for the window its clock is in and ours is not yet (or no longer) in.
const WINDOW_EDGE_RETRY: Duration = Duration::from_millis(10);
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
    /// Shared quotas only, made on first use: ~340 bytes that a key counted in this process
    /// alone (file store, or a plan with only per-second / per-minute limits) never needs.
    leases: OnceLock<Box<KeyLeases>>,
    /// Rate-limit refusals, for `[limits.suspend]`.
    refusals: Gcra,
}

impl AsRef<KeyLeases> for KeyState {
    fn as_ref(&self) -> &KeyLeases {
        self.leases()
    }
}

impl KeyState {
    fn leases(&self) -> &KeyLeases {
        self.leases.get_or_init(Box::default)
    }

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
    Admitted(Option<WindowState>, [Option<Taken>; 5]),
    Refused(Refusal),
    NeedGrant,
    StoreUnreachable,
}

/// Why one window did not take the request.
enum NotTaken {
    /// Over its limit, or held back for a moment: refused, reporting this window.
    Full(WindowState),
    /// The lease is empty: ask the store for a grant.
    NeedGrant,
    /// The lease is empty, the store does not answer, and `quota_fallback = "refuse"`.
    StoreUnreachable,
}

pub struct Limiter {
    config: ArcSwap<LimitsConfig>,
    /// Per-key counters, bounded like the key cache (and with the same crate, for the same
    /// reason: bookkeeping per entry; see `keys::cache`).
    state: quick_cache::sync::Cache<KeyHash, Arc<KeyState>, UnitWeighter, KeyHashState>,
    suspensions: Arc<Suspensions>,
    shared: Option<Arc<Shared>>,
    metrics: Option<Arc<Metrics>>,
}

impl Limiter {
    /// A limiter counting every window in this process.
    pub fn new(config: LimitsConfig, capacity: u64) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            state: quick_cache::sync::Cache::with(
                usize::try_from(capacity.min(4096)).unwrap_or(4096),
                capacity.max(1),
                UnitWeighter,
                KeyHashState::default(),
                Default::default(),
            ),
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
    pub fn limits_for(&self, key: &impl KeyPlan) -> Limits {
        limits_for(&self.config.load(), key)
    }

    /// Counts one request for the key, or refuses it. `Ok(None)`: the key has no limits.
    /// `Ok(Some(w))`: admitted, `w` the most constraining window (for the headers).
    ///
    /// Awaits only when a shared quota's lease is empty (see the module docs), and then for
    /// at most `[store] timeout`.
    pub async fn admit(
        &self,
        hash: KeyHash,
        key: &impl KeyPlan,
        now: SystemTime,
    ) -> Result<Option<WindowState>, Limited> {
        self.admit_with_route(hash, key, None, now).await
    }

    /// [`Limiter::admit`], and then the matched route's own limits (`[[route]] limits`),
    /// counted per key and route ([`RouteLimit::subject`]) like a key's, shared through the
    /// same leases. Both must admit; a request the route refuses is given back to the key's
    /// windows, so it counts in none. The headers report the tighter of the two
    /// ([`tighter`]).
    pub async fn admit_with_route(
        &self,
        hash: KeyHash,
        key: &impl KeyPlan,
        route: Option<RouteLimit<'_>>,
        now: SystemTime,
    ) -> Result<Option<WindowState>, Limited> {
        // The clock is only read when some key is suspended at all.
        if !self.suspensions.is_empty()
            && let Some(retry_after) = self.suspensions.check(&hash, Instant::now())
        {
            return Err(Limited::Suspended { retry_after });
        }
        let config = self.config.load();
        let limits = limits_for(&config, key);
        let (key_window, ticket) = match self.count(&config, hash, &limits, true, now).await {
            Ok(counted) => counted,
            Err(refused) => return Err(self.note_refusal(refused)),
        };
        let Some(route) = route else {
            self.note_admission([&ticket]);
            return Ok(key_window);
        };
        let subject = route.subject(hash);
        match self.count(&config, subject, route.limits, false, now).await {
            Ok((route_window, route_ticket)) => {
                self.note_admission([&ticket, &route_ticket]);
                Ok(tighter(key_window, route_window))
            }
            Err(refused) => {
                if let Some(ticket) = ticket {
                    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    for took in ticket.taken.iter().flatten() {
                        give_back(&ticket.state, *took, now_secs);
                    }
                }
                Err(self.note_refusal(refused))
            }
        }
    }

    /// Counts an admitted request decided without the store, once however many subjects
    /// (the key, its route) it took a fallback budget from.
    fn note_admission<const N: usize>(&self, tickets: [&Option<Ticket>; N]) {
        let alone = tickets.iter().any(|ticket| {
            ticket.as_ref().is_some_and(|t| {
                t.taken
                    .iter()
                    .flatten()
                    .any(|took| matches!(took, Taken::Fallback(..)))
            })
        });
        if alone {
            self.count_alone("admitted");
        }
    }

    /// Counts a request refused for want of the store, and hands the refusal on.
    fn note_refusal(&self, refused: Limited) -> Limited {
        if let Limited::StoreUnreachable { .. } = refused {
            self.count_alone("refused");
        }
        refused
    }

    /// One subject's (a key's, or a key's on one route) windows for one request.
    /// `suspend`: repeated refusals may suspend the subject (keys only).
    async fn count(
        &self,
        config: &LimitsConfig,
        hash: KeyHash,
        limits: &Limits,
        suspend: bool,
        now: SystemTime,
    ) -> Result<(Option<WindowState>, Option<Ticket>), Limited> {
        if limits.is_empty() {
            return Ok((None, None));
        }
        let windows = windows(config, limits);
        let Ok(state) = self
            .state
            .get_or_insert_with(&hash, || Ok::<_, Infallible>(Arc::default()));
        let mut started = None;
        let mut local_only = false;
        let mut now = now;
        loop {
            let mode = match &self.shared {
                None => Mode::Local,
                Some(_) if local_only => Mode::Fallback,
                // While the store is known to be down, the budget is spent without asking it
                // again; a sidecar that refuses asks first (its refusal must mean that this
                // request's grant went unanswered).
                Some(shared)
                    if shared.in_fallback() && shared.fallback() == QuotaFallback::Budget =>
                {
                    Mode::Fallback
                }
                Some(_) => Mode::Leased,
            };
            match self.decide(config, &state, &windows, now, mode) {
                Step::Admitted(tightest, taken) => {
                    match (&self.shared, mode) {
                        (Some(_), Mode::Leased) => self.refill_if_low(&state, hash, &windows, now),
                        (Some(shared), Mode::Fallback) => {
                            shared.report_when_back(state.clone(), hash, long_windows(&windows));
                        }
                        _ => {}
                    }
                    let ticket = Ticket { state, taken };
                    return Ok((tightest, Some(ticket)));
                }
                Step::Refused(refusal) if !suspend => return Err(Limited::Rate(refusal)),
                Step::Refused(refusal) => {
                    return Err(self.refused(config, &state, hash, refusal));
                }
                Step::StoreUnreachable => {
                    let shared = self.shared.as_ref().expect("only shared quotas fall back");
                    return Err(Limited::StoreUnreachable {
                        retry_after: shared.retry_after_secs(),
                    });
                }
                Step::NeedGrant => {
                    let shared = self.shared.as_ref().expect("only leased decisions ask");
                    let started = *started.get_or_insert_with(Instant::now);
                    let budget = shared.timeout().saturating_sub(started.elapsed());
                    let longs = long_windows(&windows);
                    let refill = if budget.is_zero() {
                        Refill::NoAnswer
                    } else {
                        shared.refill(state.leases(), hash, &longs, budget).await
                    };
                    match refill {
                        Refill::Granted => {}
                        // The store answered, for the window its clock is in: a refusal now
                        // would say it did not. Wait for ours to follow (clocks a moment
                        // apart at a window's edge), within the budget.
                        Refill::OtherWindow if shared.fallback() == QuotaFallback::Refuse => {
                            tokio::time::sleep(WINDOW_EDGE_RETRY.min(budget)).await;
                            now = now.max(SystemTime::now());
                        }
                        // No grant in time, or with budgets one for the other window (until
                        // the clocks agree, asking again would get the same): decide this
                        // request as the fallback would.
                        Refill::OtherWindow | Refill::NoAnswer => local_only = true,
                    }
                }
            }
        }
    }

    /// Hands every key's unspent shared-quota leases back to the store: the sidecar is
    /// stopping, after its last request. Bounded by `budget`; what does not make it in time
    /// stays lost to the other sidecars until its window ends, as it would without this.
    /// Returns how many keys' leases were handed back.
    pub async fn surrender_leases(&self, budget: Duration) -> usize {
        use futures_util::StreamExt;
        let Some(shared) = &self.shared else {
            return 0;
        };
        let holding: Vec<(KeyHash, Arc<KeyState>)> = self
            .state
            .iter()
            .filter(|(_, state)| state.leases.get().is_some())
            .collect();
        let handed_back = futures_util::stream::iter(holding)
            .map(|(hash, state)| async move { shared.surrender(hash, state.leases()).await })
            .buffer_unordered(16)
            .filter(|result| std::future::ready(matches!(result, Ok(true))))
            .count();
        tokio::time::timeout(budget, handed_back).await.unwrap_or(0)
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
        // A window the store could not be asked about is refused only if no other window
        // refuses for good: a client over its daily quota is told so, not to retry in 1 s.
        let mut store_unreachable = false;
        for (i, (name, window)) in windows.iter().enumerate() {
            let Some(window) = window else { continue };
            let outcome = match *window {
                Window::Short(rate) => state
                    .gcra(i)
                    .try_acquire(rate, now_ns)
                    .map(|w| (short_state(name, rate, w), Taken::Short(i, rate)))
                    .map_err(|w| NotTaken::Full(short_state(name, rate, w))),
                Window::Long(limit, calendar) => {
                    self.take_long(config, state, name, limit, calendar, now_ns, mode)
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
                Err(NotTaken::StoreUnreachable) => store_unreachable = true,
                Err(refused) => {
                    // Nothing counts when anything refuses: give back what we took.
                    for took in taken.iter().flatten() {
                        give_back(state, *took, now_secs);
                    }
                    return match refused {
                        NotTaken::Full(window) => Step::Refused(Refusal {
                            window,
                            retry_after: window.reset_secs.max(1),
                        }),
                        NotTaken::NeedGrant => Step::NeedGrant,
                        NotTaken::StoreUnreachable => unreachable!("handled above"),
                    };
                }
            }
        }
        if store_unreachable {
            for took in taken.iter().flatten() {
                give_back(state, *took, now_secs);
            }
            return Step::StoreUnreachable;
        }
        Step::Admitted(tightest, taken)
    }

    /// One long window.
    #[allow(clippy::too_many_arguments)]
    fn take_long(
        &self,
        config: &LimitsConfig,
        state: &KeyState,
        name: &'static str,
        limit: u64,
        calendar: Calendar,
        now_ns: u64,
        mode: Mode,
    ) -> Result<(WindowState, Taken), NotTaken> {
        let now_secs = now_ns / SECOND_NS;
        let counter = state.counter(calendar);
        let as_state = |limit, u| long_state(name, limit, calendar, u);
        if mode == Mode::Local {
            return counter
                .try_acquire(limit, calendar, now_secs)
                .map(|u| (as_state(limit, u), Taken::Counted(calendar)))
                .map_err(|u| NotTaken::Full(as_state(limit, u)));
        }
        let (window, end) = calendar.window(now_secs);
        let reset_secs = end - now_secs;
        let lease = state.leases().get(calendar);
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
            Take::Exhausted => Err(NotTaken::Full(as_state(
                limit,
                quota::Usage {
                    remaining: 0,
                    reset_secs,
                },
            ))),
            Take::Empty if mode == Mode::Leased => match lease.held(window, now_ns / 1_000_000) {
                // Redis holds the rest back for a while after an outage, for what sidecars may
                // have admitted alone: refused for that moment, not for the window.
                Some(ms) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.limits.held.inc();
                    }
                    Err(NotTaken::Full(long_state(
                        name,
                        limit,
                        calendar,
                        quota::Usage {
                            remaining: 0,
                            reset_secs: ms.div_ceil(1_000),
                        },
                    )))
                }
                None => Err(NotTaken::NeedGrant),
            },
            Take::Empty
                if self
                    .shared
                    .as_ref()
                    .is_some_and(|s| s.fallback() == QuotaFallback::Refuse) =>
            {
                Err(NotTaken::StoreUnreachable)
            }
            Take::Empty => {
                let live = self.shared.as_ref().map_or(1, |s| s.live());
                // The key's own limit in the headers, what this sidecar may still admit alone
                // in Remaining.
                let Some(budget) = lease.budget(window, live) else {
                    // No grant yet in this window: nothing known of what is left but the
                    // limit; a share of it, counting all this process admitted.
                    let share = fallback_limit(limit, config.local_share, live);
                    return match counter.try_acquire(share, calendar, now_secs) {
                        Ok(u) => {
                            lease.note_fallback(window, 1);
                            Ok((as_state(limit, u), Taken::Fallback(calendar, window)))
                        }
                        Err(u) => Err(NotTaken::Full(as_state(limit, u))),
                    };
                };
                let usage = |remaining| quota::Usage {
                    remaining,
                    reset_secs,
                };
                match lease.fall_back(window, budget) {
                    Some(remaining) => {
                        let _ = counter.try_acquire(UNLIMITED, calendar, now_secs);
                        Ok((
                            as_state(limit, usage(remaining)),
                            Taken::Fallback(calendar, window),
                        ))
                    }
                    None => Err(NotTaken::Full(as_state(limit, usage(0)))),
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
        let now_ms = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Low, or holding admissions made alone that the store has not heard of yet (report
        // them now: another sidecar's grants are held back until then), unless the store is
        // holding back the rest of the quota anyway.
        let low = windows.iter().any(|(_, w)| match w {
            Some(Window::Long(_, c)) => {
                let (lease, window) = (state.leases().get(*c), c.window(now_secs).0);
                (lease.is_low(window) || lease.unreported(window))
                    && lease.held(window, now_ms).is_none()
            }
            _ => false,
        });
        if low {
            shared.refill_soon(state.clone(), hash, long_windows(windows));
        }
    }

    /// A request decided without the quota store: admitted on the fallback budget, or
    /// refused because of `quota_fallback = "refuse"`.
    fn count_alone(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics
                .limits
                .decided_alone
                .with_label_values(&[outcome])
                .inc();
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

/// What one admitted request took from a subject's windows, to give back.
struct Ticket {
    state: Arc<KeyState>,
    taken: [Option<Taken>; 5],
}

/// A route's own limits for one request: the limits, and the route's name in the counters
/// (its methods and pattern, so a reload that reorders routes keeps them).
#[derive(Clone, Copy)]
pub struct RouteLimit<'a> {
    pub limits: &'a Limits,
    pub id: &'a str,
}

impl RouteLimit<'_> {
    /// The key's counters on this route: a hash of the key's hash and the route's name, so
    /// they live beside the key's own (in this process and in Redis) and never collide with
    /// them.
    pub fn subject(&self, key: KeyHash) -> KeyHash {
        key.derive(self.id)
    }
}

/// The window the headers report, of two subjects' (the key's, the route's): the one with
/// fewer requests remaining, the one resetting sooner on a tie, as among one key's windows;
/// the key's on a full tie.
pub fn tighter(a: Option<WindowState>, b: Option<WindowState>) -> Option<WindowState> {
    match (a, b) {
        (Some(a), Some(b)) => Some(
            match (b.remaining, b.reset_secs) < (a.remaining, a.reset_secs) {
                true => b,
                false => a,
            },
        ),
        (a, b) => a.or(b),
    }
}

fn limits_for(config: &LimitsConfig, key: &impl KeyPlan) -> Limits {
    let plan = key
        .plan()
        .or_else(|| {
            let env = key.env();
            // An environment's own plan (`[environments.<tag>] plan`), else the sandbox plan
            // for `test`, else the default.
            config
                .environment_plans
                .iter()
                .find(|(e, _)| *e == env)
                .map(|(_, plan)| plan.as_str())
                .or(match env {
                    Environment::TEST => config.sandbox_plan.as_deref(),
                    _ => None,
                })
                .or(config.default_plan.as_deref())
        })
        .and_then(|name| config.plans.get(name));
    let limits = plan.cloned().unwrap_or_default();
    match key.overrides() {
        Some(own) => limits.overridden_by(own),
        None => limits,
    }
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
            state.leases().get(calendar).give_back(window);
            state.counter(calendar).release(calendar, now_secs);
        }
        Taken::Fallback(calendar, window) => {
            state.counter(calendar).release(calendar, now_secs);
            state.leases().get(calendar).note_fallback(window, -1);
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
mod tests;
