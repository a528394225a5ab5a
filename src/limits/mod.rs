//! Plans, rate limits and quotas, and the headers that report them.
//!
//! Accuracy versus latency, decided here once:
//! - Short windows (per second, per minute) are enforced by GCRA ([`gcra`]) in each process,
//!   lock-free, with no network round-trip. With N sidecars behind a load balancer, set
//!   `[limits] local_share = 1/N`: each sidecar then admits its share of the rate. This is
//!   what every sidecar-based limiter does for sub-second windows; sharing them through Redis
//!   would cost more than the request.
//! - Long windows (per hour, day, calendar month UTC) with the file store are counted exactly
//!   in this process ([`quota`]): one keygate, one exact count.
//! - Long windows with the Redis store are shared by every sidecar through quota leases
//!   ([`lease`], [`shared`]). Redis holds one counter per key and window (`{ns}:quota:<hash>:
//!   <hour|day|month>`, expiring with the window by Redis's clock); a Lua script hands a
//!   sidecar a chunk, `min(want, limit - used)`, and adds it to `used`. The request path only
//!   takes from the local lease (a compare-and-swap, no round trip); when a lease is down to
//!   a third of its last chunk a background task asks for the next one, sized to ~10 s of the
//!   key's recent rate on this sidecar and at most `1/(4 × live sidecars)` of what is left.
//!   Live sidecars are counted in Redis (`{ns}:sidecars`, instance ids scored by heartbeat,
//!   one per `[store] epoch_poll`, pruned after three missed beats). A hot key far from its
//!   limit costs one round trip per ~7 s of traffic: measured, one per ~15 000 requests at
//!   3 000/s (6.4e-5 per request), and fewer the hotter it is.
//!   - A request that finds its lease empty (the first one for a key in a window, or a burst
//!     faster than the refill) waits for one grant, coalesced per key and bounded by
//!     `[store] timeout`: exactness over latency, paid once per key and window in the common
//!     case. If the grant fails, the request is decided by the fallback below.
//!   - Never over: every admitted request was granted by the script, and grants in a window
//!     sum to at most the limit, so while Redis answers every sidecar within `[store]
//!     timeout` the total admitted by all sidecars never exceeds the limit.
//!   - Under: what sits unused in leases when a window ends is lost. Each sidecar holds at
//!     most one chunk, and a chunk is at most `max(8, 10 s of its rate)` and at most a
//!     `1/(4N)` share of what was left, so the loss is bounded by N chunks, and by about
//!     `8 × N` requests when the quota is being used up (chunks shrink as it runs out).
//!   - Faults cost nothing: a grant request carries running totals rather than deltas
//!     ([`lease::Totals`]), so one that is retried, or that Redis runs late after the sidecar
//!     gave up on it (a pause longer than `[store] timeout`), counts once, and what it granted
//!     reaches the sidecar with its next reply instead of being lost to the window. Until that
//!     reply, a sidecar asks for nothing more ([`lease::Lease::in_doubt`]). Measured: three
//!     sidecars, `per_hour = 3000`, Redis frozen (SIGSTOP) for 1, 3 or 5 s mid-traffic:
//!     exactly 3000 admitted each time, and Redis counts 3000 (it was 2280 admitted against
//!     3274 counted before).
//!   - `X-RateLimit-Remaining` is this sidecar's view: the quota not handed out at its last
//!     grant plus its own unused lease (exact with one sidecar, approximate with several).
//! - With Redis unreachable (a grant or the once-per-`epoch_poll` sync fails), leases keep
//!   being spent, and a sidecar whose lease is empty admits on its own, against a budget:
//!   half its share of what its last grant in the window said was left (less what its own
//!   unanswered requests may still take), [`lease::fallback_budget`]. Redis records with
//!   every grant the most each sidecar's running total of such admissions can reach before
//!   it next reports. When Redis answers again, each sidecar back starts a hold of five
//!   `epoch_poll`s (over again for each), during which every grant holds back what every
//!   sidecar may still admit alone and has not reported, those that have reported included
//!   ([`lease::WindowCounter::answer`]); every sidecar reports what it admitted alone at its
//!   first sync that succeeds, traffic or not ([`shared::Shared::report_when_back`]). A
//!   request that gets nothing only because of the hold is refused for a moment
//!   (`Retry-After` of a second or two), not for the window. So the total stays within the
//!   limit through an outage of any length, as long as every cut-off sidecar reports within
//!   the hold. Found by a test that froze
//!   Redis while two sidecars admitted alone and kept them cut off after it came back: the
//!   third was granted what they had spent (666 admitted of 600; now 524, and 600 once the
//!   leases are handed back). Not covered: a sidecar still cut off after the hold (its
//!   unreported admissions, at most its budget, can then push the window over), and a
//!   sidecar with no grant yet in the window (a sidecar started during the outage), whose
//!   budget is `limit × local_share` (or `limit / live sidecars last seen` with
//!   `local_share = 1`), counting everything it admitted in the window; the total can then
//!   exceed the limit by up to one share per such sidecar. Nor a sidecar cut off while the
//!   others are not (a partition, or its grants answering later than `[store] timeout`):
//!   no sidecar can tell that from an outage they all share, the others are granted the rest
//!   meanwhile, and the window can end over by what it admitted alone, at most its budget.
//!   Exactness under every such fault would need each sidecar's budget held back from the
//!   others' grants all the time, which strands it with sidecars that have gone idle on the
//!   key; instead `[store] quota_fallback = "refuse"` ([`shared::QuotaFallback`]) lets an
//!   operator choose never to admit alone (503 `quota_store_unavailable` once the lease is
//!   spent). `keygate_quota_fallback` is 1 while a sidecar cannot reach the store;
//!   `keygate_quota_decided_alone_total` counts what it admitted alone or refused for want
//!   of the store; `keygate_quota_live_sidecars` is the N its budgets are sized by.
//! - A request refused by any window consumes nothing in any window; requests refused before
//!   the limiter (401, 403) never reach it.
//! - A key refused again and again is suspended for a while on every sidecar ([`suspend`]).

pub mod gcra;
pub mod headers;
pub mod lease;
mod limiter;
pub mod quota;
pub mod shared;
pub mod suspend;

use serde::{Deserialize, Serialize};

pub use limiter::{Limiter, RouteLimit, tighter};
pub use shared::QuotaFallback;

/// What limiting reads of a key: its plan, its environment (sandbox keys may have a plan of
/// their own) and its own overrides. The key cache's entries and stored records implement it;
/// limits never needs to know what else a key is.
pub trait KeyPlan {
    fn plan(&self) -> Option<&str>;
    fn env(&self) -> crate::vocab::Environment;
    fn overrides(&self) -> Option<&Limits>;
}
pub use shared::{QuotaStore, SharedSettings};
pub use suspend::SuspendConfig;

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
    /// `[environments.<tag>] plan`: the default plan of keys in that environment.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environment_plans: Vec<(crate::vocab::Environment, String)>,
    pub reset: ResetStyle,
    /// Fraction of the short-window limits this process enforces (1/N with N sidecars).
    pub local_share: f64,
    /// `[limits.suspend]`: off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<SuspendConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            plans: Default::default(),
            default_plan: None,
            sandbox_plan: None,
            environment_plans: Vec::new(),
            reset: ResetStyle::Epoch,
            local_share: 1.0,
            suspend: None,
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

/// Why the limiter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Over a window's limit: 429.
    Rate(Refusal),
    /// Suspended for repeatedly exceeding its limits: 403 until it lifts.
    Suspended { retry_after: u64 },
    /// A long window's lease is spent and the quota store did not answer, with
    /// `[store] quota_fallback = "refuse"`: 503, retry after `retry_after` seconds.
    StoreUnreachable { retry_after: u64 },
}
