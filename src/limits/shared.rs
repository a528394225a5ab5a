//! Long-window quotas shared between sidecars through a store (Redis): granting leases,
//! noticing that the store is unreachable, and the once-per-tick sync that tells each
//! sidecar how many others are alive and which keys are suspended.
//!
//! The store side is the [`QuotaStore`] trait (implemented by `keys::redis`); everything here
//! is store-agnostic. One [`Shared`] per [`super::Limiter`] holds:
//! - whether we are in fallback (the store did not answer the last grant or sync): then
//!   requests whose lease is empty are counted locally against a share of the limit
//!   ([`super::lease::fallback_limit`]) and reported to the store once it answers again, or
//!   refused ([`QuotaFallback`]);
//! - the number of live sidecars (a sorted set of instance ids scored by heartbeat time,
//!   pruned after three missed ticks), used to size chunks and the fallback share;
//! - suspensions this sidecar decided, queued for the next sync (which runs at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::lease::{Lease, Sender, Settled, chunk_size};
use super::quota::Calendar;
use super::suspend::Suspensions;
use crate::metrics::Metrics;
use crate::vocab::{KeyHash, StoreError};

/// One window's part of a grant request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantAsk {
    pub calendar: Calendar,
    pub limit: u64,
    /// Requests wanted (0: none, only report the totals and read the count).
    pub want: u64,
    /// (window number, number) of the last reply this sidecar received: the store then knows
    /// which fallback budget it goes by.
    pub ack: (u64, u64),
    /// (window number, running total) of requests this sidecar admitted without a lease
    /// while the store did not answer; the store adds what the total grew by since it last
    /// heard it, if the window is still the current one.
    pub fell_back: (u64, u64),
    /// (window number, running total) of requests granted to this sidecar and handed back
    /// unspent (it is stopping); the store takes off what the total grew by, likewise.
    pub returned: (u64, u64),
}

/// What the store granted for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u64,
    /// Everything granted to this sidecar in the window so far, this grant and any whose
    /// reply was lost included (see [`super::lease::Totals`]).
    pub total: u64,
    /// Requests handed out to all sidecars in this window, after this grant.
    pub used: u64,
    /// The window the grant is for, by the store's clock.
    pub window: u64,
    /// Held back after an outage, and for how much longer: see
    /// [`super::lease::WindowCounter::answer`].
    pub held: u64,
    pub hold_left: Duration,
    /// This reply's number, acknowledged with the next request.
    pub reply: u64,
}

/// How a [`Shared::refill`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// The store answered for our windows (or another request's grant already had).
    Granted,
    /// The store answered, but for another window than this sidecar's clock is in: around a
    /// window's edge, for as long as the two clocks disagree. Asking again at once would get
    /// the same answer.
    OtherWindow,
    /// No answer within the budget (or a malformed one): the store counts as unreachable.
    NoAnswer,
}

/// What a sync learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    pub live: u64,
    /// Suspended keys and how long until each lifts.
    pub suspended: Vec<(KeyHash, Duration)>,
}

/// A key's shared counter for one window, for `keys usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredWindow {
    pub calendar: Calendar,
    /// Requests handed out to sidecars (admitted, or sitting unused in a lease).
    pub used: u64,
    /// The limit the last grant was made under.
    pub limit: u64,
    pub reset_secs: u64,
}

/// Where shared quota counters live.
#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Grants leases for one key's long windows to sidecar `instance`, in one atomic round
    /// trip. Idempotent by running totals: see [`super::lease::Totals`].
    async fn grant(
        &self,
        instance: &str,
        sender: Sender,
        hash: KeyHash,
        asks: Vec<GrantAsk>,
    ) -> Result<Vec<Grant>, StoreError>;

    /// Heartbeat (`instance` is alive for `alive_for`), records `suspend`, and reads the
    /// live sidecars and every current suspension.
    async fn sync(
        &self,
        instance: &str,
        alive_for: Duration,
        suspend: Vec<(KeyHash, Duration)>,
    ) -> Result<SyncState, StoreError>;

    /// The key's current counters, for `keys usage`.
    async fn usage(&self, hash: KeyHash) -> Result<Vec<StoredWindow>, StoreError>;
}

/// Timing for shared quotas, and what to do without the store, from `[store]`.
#[derive(Debug, Clone, Copy)]
pub struct SharedSettings {
    /// The longest a request waits for a grant.
    pub timeout: Duration,
    /// How often the sync runs (heartbeat, suspensions, recovery from fallback).
    pub sync_every: Duration,
    pub fallback: QuotaFallback,
}

/// What a sidecar does with a request whose lease is empty when the store does not answer
/// within `[store] timeout` (`[store] quota_fallback`).
///
/// No sidecar can tell an outage every sidecar shares from one only it has (a partition, or
/// grants that answer later than the timeout for it alone): in the second, the others go on
/// being granted the rest of the quota while it admits alone. So a sidecar that admits
/// alone can push a window over its limit by what it admits (its
/// [`super::lease::fallback_budget`]) unless it reports before the others spend the rest;
/// only refusing keeps every window within its limit whatever happens to the link or to
/// Redis's availability (not if Redis loses its counters: a restart without persistence,
/// a failover to a lagging replica).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaFallback {
    /// Admit alone, up to the fallback budget (a share of what the last grant said was
    /// left): available through an outage, within the limit through one every sidecar
    /// shares, over it by at most the budget of each sidecar cut off alone.
    #[default]
    Budget,
    /// Refuse (503 `quota_store_unavailable`) once the lease is spent: never over the limit,
    /// but keys with a long-window quota fail while their sidecar cannot reach the store.
    Refuse,
}

pub struct Shared {
    store: Arc<dyn QuotaStore>,
    settings: SharedSettings,
    instance: String,
    fallback: AtomicBool,
    /// Times the store stopped answering (fallback began).
    outages: AtomicU64,
    live: AtomicU64,
    pending: Mutex<Vec<(KeyHash, Duration)>>,
    /// Keys that admitted requests on their own since the store last answered.
    admitted_alone: Mutex<std::collections::HashMap<KeyHash, (Leased, LongWindows)>>,
    wake: Notify,
    suspensions: Arc<Suspensions>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Hands back what `leases` hold unspent (this sidecar is stopping; otherwise no sidecar
    /// could use it until its window ends) and reports admissions made without a lease.
    /// `Ok(false)`: there was nothing to hand back.
    pub async fn surrender(&self, hash: KeyHash, leases: &KeyLeases) -> Result<bool, StoreError> {
        let asks: Vec<GrantAsk> = [Calendar::Hour, Calendar::Day, Calendar::Month]
            .into_iter()
            .filter_map(|calendar| {
                let lease = leases.get(calendar);
                let (returned, now) = lease.surrender();
                let fell_back = lease.fell_back();
                (now || fell_back.1 > 0).then_some(GrantAsk {
                    calendar,
                    limit: 0,
                    want: 0,
                    ack: lease.reply_heard(),
                    fell_back,
                    returned,
                })
            })
            .collect();
        if asks.is_empty() {
            return Ok(false);
        }
        let sender = Sender {
            recovering: false,
            ..self.sender()
        };
        self.store
            .grant(&self.instance, sender, hash, asks)
            .await
            .map(|_| true)
    }
}

/// A key's state as the limiter holds it, for refills in the background.
pub type Leased = Arc<dyn AsRef<KeyLeases> + Send + Sync>;

/// A key's long windows and their limits.
pub type LongWindows = Vec<(Calendar, u64)>;

/// The leases of one key, and what keeps its grants one at a time.
#[derive(Default)]
pub struct KeyLeases {
    pub hour: Lease,
    pub day: Lease,
    pub month: Lease,
    /// One grant in flight per key: concurrent requests that find the lease empty queue here
    /// and find it refilled, instead of each asking the store.
    grant: tokio::sync::Mutex<()>,
    /// A background refill is queued or running.
    refilling: AtomicBool,
    /// [`Shared`]'s outage count at the last reply for this key, plus one (0: no reply yet):
    /// a grant request after another outage says so ([`Sender::recovering`]).
    outages_seen: AtomicU64,
}

impl KeyLeases {
    pub fn get(&self, calendar: Calendar) -> &Lease {
        match calendar {
            Calendar::Hour => &self.hour,
            Calendar::Day => &self.day,
            Calendar::Month => &self.month,
        }
    }
}

impl Shared {
    pub fn new(
        store: Arc<dyn QuotaStore>,
        settings: SharedSettings,
        suspensions: Arc<Suspensions>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut id = [0u8; 8];
        // Only needs to be unique among sidecars; a clock-based id will do if the OS RNG
        // fails.
        if getrandom::fill(&mut id).is_err() {
            id = now_ms().to_le_bytes();
        }
        let shared = Arc::new(Self {
            store,
            settings,
            instance: id.iter().map(|b| format!("{b:02x}")).collect(),
            fallback: AtomicBool::new(false),
            outages: AtomicU64::new(0),
            live: AtomicU64::new(1),
            pending: Mutex::new(Vec::new()),
            admitted_alone: Mutex::default(),
            wake: Notify::new(),
            suspensions,
            metrics,
        });
        shared.metrics.limits.fallback.set(0);
        shared
    }

    /// Starts the sync loop, which ends once the limiter is dropped.
    pub fn start(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime: shared quotas will not sync");
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                this.sync_once().await;
                tokio::select! {
                    _ = tokio::time::sleep(this.settings.sync_every) => {}
                    _ = this.wake.notified() => {}
                }
            }
        });
    }

    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Acquire)
    }

    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Acquire).max(1)
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    pub fn fallback(&self) -> QuotaFallback {
        self.settings.fallback
    }

    /// Seconds a request refused because the store did not answer should wait: by the next
    /// sync, the sidecar knows whether it answers again.
    pub fn retry_after_secs(&self) -> u64 {
        self.settings.sync_every.as_secs_f64().ceil().max(1.0) as u64
    }

    /// How this sidecar describes itself to the store; `recovering` is set per key.
    fn sender(&self) -> Sender {
        Sender {
            live: self.live(),
            recovering: false,
            // Long enough for every sidecar to sync (and so to report) after an outage, its
            // link to the store re-made if it has to be; it costs nothing unless the quota is
            // nearly used up.
            hold_ms: (self.settings.sync_every * 5).as_millis() as u64,
            falls_back: self.settings.fallback == QuotaFallback::Budget,
        }
    }

    /// Queues a suspension for every sidecar and syncs now.
    pub fn publish_suspension(&self, hash: KeyHash, lasts: Duration) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((hash, lasts));
        self.wake.notify_one();
    }

    fn set_fallback(&self, on: bool, why: &dyn std::fmt::Display) {
        if self.fallback.swap(on, Ordering::AcqRel) != on {
            self.metrics.limits.fallback.set(i64::from(on));
            if on {
                self.outages.fetch_add(1, Ordering::AcqRel);
                match self.settings.fallback {
                    QuotaFallback::Budget => tracing::warn!(
                        error = %why,
                        "quota store unreachable: counting quotas locally"
                    ),
                    QuotaFallback::Refuse => tracing::warn!(
                        error = %why,
                        "quota store unreachable: requests whose lease is spent are refused"
                    ),
                }
            } else {
                tracing::info!("quota store reachable again: quotas shared");
            }
        }
    }

    async fn sync_once(self: &Arc<Self>) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        let alive_for = self.settings.sync_every * 3;
        let call = self.store.sync(&self.instance, alive_for, pending.clone());
        let outcome = tokio::time::timeout(self.settings.timeout, call).await;
        match &outcome {
            // Counts only: suspended keys' hashes stay out of the logs.
            Ok(Ok(state)) => {
                tracing::debug!(
                    live = state.live,
                    suspended = state.suspended.len(),
                    "quota sync"
                );
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "quota sync"),
            Err(_) => tracing::debug!("quota sync timed out"),
        }
        match outcome {
            Ok(Ok(state)) => {
                self.live.store(state.live.max(1), Ordering::Release);
                self.metrics
                    .limits
                    .live_sidecars
                    .set(state.live.max(1) as i64);
                let now = Instant::now();
                for (hash, left) in state.suspended {
                    self.suspensions.insert(hash, now + left);
                }
                self.set_fallback(false, &"");
                self.report_what_was_admitted_alone();
            }
            Ok(Err(e)) => self.sync_failed(pending, &e),
            Err(_) => self.sync_failed(pending, &"sync timed out"),
        }
        self.suspensions.prune(Instant::now());
    }

    fn sync_failed(&self, pending: Vec<(KeyHash, Duration)>, why: &dyn std::fmt::Display) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(pending);
        self.set_fallback(true, why);
    }

    /// Tops up the key's leases for `windows` (calendar, limit): those that are empty or low
    /// get a chunk, all report what they admitted in fallback. One round trip, at most one
    /// per key at a time, bounded by `budget`.
    pub async fn refill(
        &self,
        leases: &KeyLeases,
        hash: KeyHash,
        windows: &[(Calendar, u64)],
        budget: Duration,
    ) -> Refill {
        let started = Instant::now();
        let Ok(_one_at_a_time) = tokio::time::timeout(budget, leases.grant.lock()).await else {
            return Refill::NoAnswer;
        };
        let now_secs = now_ms() / 1_000;
        let mut asks = Vec::with_capacity(windows.len());
        for &(calendar, limit) in windows {
            let lease = leases.get(calendar);
            let (window, _) = calendar.window(now_secs);
            // A request that got no reply may still be run: ask for nothing more until a
            // reply (this one, then) tells what became of it.
            let want = if lease.is_low(window) && lease.in_doubt(window) == 0 {
                let left = lease.left(window).unwrap_or(limit);
                chunk_size(left, self.live(), lease.rate(window, now_ms()))
            } else {
                0
            };
            asks.push(GrantAsk {
                calendar,
                limit,
                want,
                ack: lease.reply_heard(),
                fell_back: lease.fell_back(),
                returned: lease.returned(),
            });
        }
        let unsettled = asks.iter().any(|a| {
            let (lease, window) = (leases.get(a.calendar), a.calendar.window(now_secs).0);
            lease.unreported(window) || lease.in_doubt(window) > 0
        });
        if asks.iter().all(|a| a.want == 0) && !unsettled {
            // Someone else refilled while we queued.
            return Refill::Granted;
        }
        let outages = self.outages.load(Ordering::Acquire);
        let seen = leases.outages_seen.load(Ordering::Acquire);
        let sender = Sender {
            recovering: unsettled || (seen != 0 && seen - 1 != outages),
            ..self.sender()
        };
        let left = budget.saturating_sub(started.elapsed());
        let call = self.store.grant(&self.instance, sender, hash, asks.clone());
        let outcome = tokio::time::timeout(left, call).await;
        tracing::debug!(?sender, ?asks, ?outcome, "quota grant");
        let failed = match outcome {
            Ok(Ok(grants)) if grants.len() == asks.len() => {
                let at = now_ms();
                for (ask, grant) in asks.iter().zip(&grants) {
                    let reported = if ask.fell_back.0 == grant.window {
                        ask.fell_back.1
                    } else {
                        0
                    };
                    leases.get(ask.calendar).settle(
                        grant.window,
                        Settled {
                            granted: grant.granted,
                            total: grant.total,
                            left: ask.limit.saturating_sub(grant.used + grant.held),
                            reported,
                            reply: grant.reply,
                            live: sender.live,
                            // Soon: the others report at their next sync, and then less
                            // is held.
                            ask_again_in_ms: grant
                                .hold_left
                                .min(self.settings.sync_every / 4)
                                .as_millis() as u64,
                        },
                        at,
                    );
                }
                leases.outages_seen.store(outages + 1, Ordering::Release);
                self.metrics.limits.refills.with_label_values(&["ok"]).inc();
                self.set_fallback(false, &"");
                let ours = asks
                    .iter()
                    .zip(&grants)
                    .all(|(ask, grant)| grant.window == ask.calendar.window(now_secs).0);
                return if ours {
                    Refill::Granted
                } else {
                    Refill::OtherWindow
                };
            }
            Ok(Ok(grants)) => format!("{} grants for {} windows", grants.len(), asks.len()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "lease grant timed out".to_owned(),
        };
        // Nothing to put back: the totals are sent again with the next request, and counted
        // once whether or not this one ran. What it asked for, Redis may still grant.
        for ask in &asks {
            leases
                .get(ask.calendar)
                .doubt(ask.calendar.window(now_secs).0, ask.want);
        }
        self.metrics
            .limits
            .refills
            .with_label_values(&["error"])
            .inc();
        self.set_fallback(true, &failed);
        Refill::NoAnswer
    }

    /// Remembers a key that admitted requests on its own while the store did not answer, to
    /// be reported as soon as a sync succeeds: the store holds back what it may have
    /// admitted from every grant only for a while after an outage (see
    /// [`super::lease::WindowCounter::answer`]), and a key with no more traffic here would
    /// otherwise report only with its next grant.
    pub fn report_when_back(&self, key: Leased, hash: KeyHash, windows: LongWindows) {
        self.admitted_alone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(hash)
            .or_insert((key, windows));
    }

    fn report_what_was_admitted_alone(self: &Arc<Self>) {
        let keys = std::mem::take(
            &mut *self
                .admitted_alone
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (hash, (key, windows)) in keys {
            self.refill_soon(key, hash, windows);
        }
    }

    /// Refills in the background unless a refill is already queued for this key.
    pub fn refill_soon(
        self: &Arc<Self>,
        key: Leased,
        hash: KeyHash,
        windows: Vec<(Calendar, u64)>,
    ) {
        if (*key).as_ref().refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let leases: &KeyLeases = (*key).as_ref();
            this.refill(leases, hash, &windows, this.settings.timeout)
                .await;
            leases.refilling.store(false, Ordering::Release);
            // Admissions made alone that this refill did not carry (it failed, or they came
            // after it asked, while another refill_soon found this one running and gave up)
            // stay queued for the next sync: the key may see no more traffic, or an
            // exhausted lease, and then nothing else would ever report them.
            let now_secs = now_ms() / 1_000;
            if windows
                .iter()
                .any(|&(calendar, _)| leases.get(calendar).unreported(calendar.window(now_secs).0))
            {
                this.report_when_back(key.clone(), hash, windows);
            }
        });
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
