//! `keygate keys usage`: a key's long-window counters and when it was last used, as the CLI
//! can see them. With the Redis store that is the shared counters; with the file store the
//! counters live only inside each running keygate process, and the report says so rather
//! than showing zeros.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{KeyHash, KeyRecord, StoreError};
use crate::limits::quota::Calendar;
use crate::limits::{Limiter, LimitsConfig, QuotaStore};

#[derive(Debug, Serialize)]
pub struct KeyUsage {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `redis` (shared by every sidecar) or `process` (kept by each running keygate).
    pub counters: &'static str,
    pub windows: Vec<WindowUsage>,
    #[serde(with = "humantime_serde")]
    pub last_used_at: Option<SystemTime>,
    pub note: &'static str,
}

#[derive(Debug, Serialize)]
pub struct WindowUsage {
    pub window: &'static str,
    pub limit: u64,
    /// `None` when the counters are not readable from here (file store).
    pub used: Option<u64>,
    pub remaining: Option<u64>,
    #[serde(with = "humantime_serde")]
    pub resets_at: SystemTime,
    pub resets_in_secs: u64,
}

const SHARED_NOTE: &str = "used = requests handed out to sidecars: admitted, or still in a \
                           sidecar's lease (at most one chunk per sidecar)";
const LOCAL_NOTE: &str = "with the file store each running keygate counts its own requests in \
                          memory; the counters are not stored, so only the limits are shown";

/// Reads the key's counters: from `quotas` (Redis) if given, else only its limits.
pub async fn read(
    config: &LimitsConfig,
    hash: KeyHash,
    record: &KeyRecord,
    quotas: Option<&dyn QuotaStore>,
    now: SystemTime,
) -> Result<KeyUsage, StoreError> {
    let limits = Limiter::new(config.clone(), 1).limits_for(record);
    let stored = match quotas {
        Some(q) => Some(q.usage(hash).await?),
        None => None,
    };
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut windows = Vec::new();
    for (name, limit, calendar) in [
        ("per_hour", limits.per_hour, Calendar::Hour),
        ("per_day", limits.per_day, Calendar::Day),
        ("per_month", limits.per_month, Calendar::Month),
    ] {
        let Some(limit) = limit else { continue };
        let counter = stored
            .as_ref()
            .and_then(|s| s.iter().find(|w| w.calendar == calendar));
        let resets_in_secs = match counter {
            Some(c) => c.reset_secs,
            None => calendar.window(now_secs).1 - now_secs,
        };
        // No counter in Redis: nothing was handed out in this window yet.
        let used = stored.as_ref().map(|_| counter.map_or(0, |c| c.used));
        windows.push(WindowUsage {
            window: name,
            limit,
            used,
            remaining: used.map(|u| limit.saturating_sub(u)),
            resets_at: UNIX_EPOCH + Duration::from_secs(now_secs + resets_in_secs),
            resets_in_secs,
        });
    }
    Ok(KeyUsage {
        id: record.id.clone(),
        name: record.name.clone(),
        plan: record.plan.clone(),
        counters: if stored.is_some() { "redis" } else { "process" },
        windows,
        last_used_at: record.last_used_at,
        note: if stored.is_some() {
            SHARED_NOTE
        } else {
            LOCAL_NOTE
        },
    })
}

impl KeyUsage {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let plan = self.plan.as_deref().unwrap_or("default");
        let _ = writeln!(out, "{} {:?} (plan {plan})", self.id, self.name);
        if self.windows.is_empty() {
            let _ = writeln!(out, "no hourly, daily or monthly quota");
        } else {
            let _ = writeln!(
                out,
                "{:<10} {:>12} {:>12}  resets",
                "window", "used", "limit"
            );
        }
        for w in &self.windows {
            let used = w.used.map_or("-".to_owned(), |u| u.to_string());
            let _ = writeln!(
                out,
                "{:<10} {:>12} {:>12}  {} (in {} s)",
                w.window,
                used,
                w.limit,
                humantime::format_rfc3339_seconds(w.resets_at),
                w.resets_in_secs
            );
        }
        let last = self.last_used_at.map_or("never".to_owned(), |t| {
            humantime::format_rfc3339_seconds(t).to_string()
        });
        let _ = writeln!(out, "last used: {last}");
        let _ = writeln!(out, "counters: {} ({})", self.counters, self.note);
        out
    }
}
