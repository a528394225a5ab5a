//! Shared quota counters and suspensions in Redis (see [`crate::limits::shared`]): lease
//! grants (`lease.lua`) and the per-tick sync (`sync.lua`), both atomic scripts under the
//! store's hash tag, so they work on Cluster like every other keygate key.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:quota:<sha256 hex>:<hour\|day\|month>` | hash | `w` window number, `used` requests handed out, `limit`, and per sidecar `g:<id>` / `f:<id>` / `b:<id>` its granted, fell-back and handed-back totals (idempotent grants), `c:<id>` the most its fell-back total can reach before it reports (held back after an outage; see `lease.lua`); expires when the window ends |
//! | `{ns}:sidecars` | sorted set | instance ids scored by last heartbeat (ms) |
//! | `{ns}:suspended` | sorted set | key hashes scored by when their suspension lifts (ms) |
//! | `{ns}:outage` | hash | `at` when a sidecar last came back from being cut off (ms): for a while after, grants hold back what every sidecar may admit alone (see `lease.lua`) |

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{MANAGEMENT_TIMEOUT, RedisStore};
use crate::keys::{KeyHash, StoreError};
use crate::limits::lease::Sender;
use crate::limits::quota::Calendar;
use crate::limits::shared::{Grant, GrantAsk, QuotaStore, StoredWindow, SyncState};

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lease.lua")));
static SYNC: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("sync.lua")));

const CALENDARS: [Calendar; 3] = [Calendar::Hour, Calendar::Day, Calendar::Month];

fn window_name(calendar: Calendar) -> &'static str {
    match calendar {
        Calendar::Hour => "hour",
        Calendar::Day => "day",
        Calendar::Month => "month",
    }
}

impl RedisStore {
    fn quota_key(&self, hash: &KeyHash, calendar: Calendar) -> String {
        self.name(&format!(
            "quota:{}:{}",
            hash.to_hex(),
            window_name(calendar)
        ))
    }
}

#[async_trait::async_trait]
impl QuotaStore for RedisStore {
    async fn grant(
        &self,
        instance: &str,
        sender: Sender,
        hash: KeyHash,
        asks: Vec<GrantAsk>,
    ) -> Result<Vec<Grant>, StoreError> {
        let mut invocation = LEASE.prepare_invoke();
        invocation
            .key(self.name("outage"))
            .arg(instance)
            .arg(sender.live)
            .arg(u8::from(sender.recovering))
            .arg(sender.hold_ms)
            .arg(u8::from(sender.falls_back));
        for ask in &asks {
            invocation.key(self.quota_key(&hash, ask.calendar));
            invocation
                .arg(&window_name(ask.calendar)[..1])
                .arg(ask.limit)
                .arg(ask.want)
                .arg(ask.ack.0)
                .arg(ask.ack.1)
                .arg(ask.fell_back.0)
                .arg(ask.fell_back.1)
                .arg(ask.returned.0)
                .arg(ask.returned.1);
        }
        let grants: Vec<(u64, u64, u64, u64, u64, u64, u64)> = self
            .run(self.config.timeout, async move |mut c| {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(grants
            .into_iter()
            .map(
                |(granted, used, window, total, held, hold_left_ms, reply)| Grant {
                    granted,
                    total,
                    used,
                    window,
                    held,
                    hold_left: Duration::from_millis(hold_left_ms),
                    reply,
                },
            )
            .collect())
    }

    async fn sync(
        &self,
        instance: &str,
        alive_for: Duration,
        suspend: Vec<(KeyHash, Duration)>,
    ) -> Result<SyncState, StoreError> {
        let mut invocation = SYNC.prepare_invoke();
        invocation
            .key(self.name("sidecars"))
            .key(self.name("suspended"))
            .arg(instance)
            .arg(alive_for.as_millis() as u64);
        for (hash, lasts) in &suspend {
            invocation.arg(hash.to_hex()).arg(lasts.as_millis() as u64);
        }
        let (live, hashes, left): (u64, Vec<String>, Vec<i64>) = self
            .run(self.config.timeout, async move |mut c| {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        let suspended = hashes
            .iter()
            .zip(left)
            .filter_map(|(h, ms)| {
                Some((
                    KeyHash::from_hex(h)?,
                    Duration::from_millis(ms.max(0) as u64),
                ))
            })
            .collect();
        Ok(SyncState { live, suspended })
    }

    async fn usage(&self, hash: KeyHash) -> Result<Vec<StoredWindow>, StoreError> {
        let keys = CALENDARS.map(|c| self.quota_key(&hash, c));
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HMGET").arg(key).arg("used").arg("limit");
            pipe.cmd("PTTL").arg(key);
        }
        let replies: Vec<redis::Value> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                pipe.query_async(&mut c).await
            })
            .await?;
        let mut out = Vec::new();
        for (calendar, pair) in CALENDARS.iter().zip(replies.chunks(2)) {
            let [fields, ttl] = pair else { continue };
            let fields: Vec<Option<u64>> =
                redis::from_redis_value(fields.clone()).map_err(super::unavailable)?;
            let ttl_ms: i64 = redis::from_redis_value(ttl.clone()).map_err(super::unavailable)?;
            if let ([Some(used), Some(limit)], true) = (fields.as_slice(), ttl_ms >= 0) {
                out.push(StoredWindow {
                    calendar: *calendar,
                    used: *used,
                    limit: *limit,
                    reset_secs: (ttl_ms as u64).div_ceil(1_000),
                });
            }
        }
        Ok(out)
    }
}
