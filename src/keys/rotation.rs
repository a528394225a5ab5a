//! Rotation reminders (`[keys] max_age`, `[keys] warn_before`): when a key should be replaced,
//! and how its responses say so.
//!
//! A key is *due for rotation* from `warn_before` ahead of its replace-by date, the earlier of
//! its expiry and `created_at + max_age`. A due key keeps working (until it expires, if it
//! does): what changes is that its responses carry `Deprecation` (RFC 9745) with the replace-by
//! date and `Sunset` (RFC 8594) with the date it stops working (its expiry) or, for a key that
//! never expires, the replace-by date, so client libraries that watch for those headers warn
//! their users; `keygate_keys_due_for_rotation` and `keys list --rotation-due` tell operators.
//!
//! Everything here is pure: a policy, a record's dates and a clock reading in, a date out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use http::header::HeaderName;

use super::KeyRecord;

/// `[keys] max_age` and `[keys] warn_before`, validated. Both unset: no reminders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotationPolicy {
    pub max_age: Option<Duration>,
    pub warn_before: Option<Duration>,
}

/// A key due for rotation: the dates its responses name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// When it should be replaced by (`Deprecation`).
    pub replace_by: SystemTime,
    /// When it stops working, or `replace_by` for a key that never expires (`Sunset`).
    pub sunset: SystemTime,
}

pub const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
pub const SUNSET: HeaderName = HeaderName::from_static("sunset");

impl RotationPolicy {
    pub fn is_off(&self) -> bool {
        self.max_age.is_none() && self.warn_before.is_none()
    }

    /// `Some` when a key created at `created_at`, expiring at `expires_at`, is due at `now`.
    pub fn due(
        &self,
        created_at: SystemTime,
        expires_at: Option<SystemTime>,
        now: SystemTime,
    ) -> Option<Due> {
        if self.is_off() {
            return None;
        }
        let aged = self.max_age.and_then(|age| created_at.checked_add(age));
        let replace_by = match (aged, expires_at) {
            (Some(a), Some(e)) => a.min(e),
            (a, e) => a.or(e)?,
        };
        let warn_from = replace_by
            .checked_sub(self.warn_before.unwrap_or_default())
            .unwrap_or(UNIX_EPOCH);
        (now >= warn_from).then_some(Due {
            replace_by,
            sunset: expires_at.unwrap_or(replace_by),
        })
    }

    /// [`RotationPolicy::due`] for a stored record, as operators count it
    /// (`keygate_keys_due_for_rotation`, `keys list --rotation-due`): only a key someone still
    /// has to rotate. A revoked or expired key no longer works, and a rotated one
    /// (`rotated_to`) already has its successor: counting them would keep the count up after
    /// the operator did what it asks. (The old key of a rotation still carries the headers
    /// while its grace runs: the request path asks [`RotationPolicy::due`] of the cached
    /// key's dates, so its clients hear when it stops.)
    pub fn record_due(&self, record: &KeyRecord, now: SystemTime) -> Option<Due> {
        let expired = record.expires_at.is_some_and(|at| at <= now);
        if record.status == super::Status::Revoked || expired || record.rotated_to.is_some() {
            return None;
        }
        self.due(record.created_at, record.expires_at, now)
    }
}

impl Due {
    /// `Deprecation: @<unix seconds>` (RFC 9745) and `Sunset: <HTTP-date>` (RFC 8594).
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        let secs = self
            .replace_by
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        [
            (
                DEPRECATION,
                HeaderValue::from_str(&format!("@{secs}")).expect("digits are a header value"),
            ),
            (
                SUNSET,
                HeaderValue::from_str(&httpdate::fmt_http_date(self.sunset))
                    .expect("an HTTP-date is a header value"),
            ),
        ]
    }
}

/// How often a running proxy counts the keys due (`keygate_keys_due_for_rotation`): a scan
/// reads every record, so it is rare; dates move in days.
pub const SCAN_EVERY: Duration = Duration::from_secs(300);

/// The keys in `store` due for rotation at `now`.
pub async fn due_keys(
    store: &dyn super::KeyStore,
    policy: &RotationPolicy,
    now: SystemTime,
) -> Result<Vec<KeyRecord>, super::StoreError> {
    if policy.is_off() {
        return Ok(Vec::new());
    }
    let mut keys = store.list(None).await?;
    keys.retain(|r| policy.record_due(r, now).is_some());
    Ok(keys)
}

/// Keeps `gauge` at the number of keys due, rescanning every [`SCAN_EVERY`] with the policy
/// `policy()` returns then (a config reload may change it), until `stop`.
pub async fn watch(
    store: std::sync::Arc<dyn super::KeyStore>,
    policy: impl Fn() -> RotationPolicy,
    gauge: prometheus::IntGauge,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        match due_keys(store.as_ref(), &policy(), SystemTime::now()).await {
            Ok(due) => gauge.set(due.len() as i64),
            Err(e) => tracing::warn!(error = %e, "counting keys due for rotation failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + days * DAY)
    }

    fn days(n: u64) -> Option<Duration> {
        Some(Duration::from_secs(n * DAY))
    }

    #[test]
    fn when_a_key_is_due() {
        let off = RotationPolicy::default();
        let aged = RotationPolicy {
            max_age: days(90),
            warn_before: None,
        };
        let warned = RotationPolicy {
            max_age: days(90),
            warn_before: days(14),
        };
        let expiry_only = RotationPolicy {
            max_age: None,
            warn_before: days(7),
        };
        let due = |replace_by, sunset| {
            Some(Due {
                replace_by: at(replace_by),
                sunset: at(sunset),
            })
        };
        // (name, policy, expires_at (days), now (days), want); created at day 0.
        type Row = (&'static str, RotationPolicy, Option<u64>, u64, Option<Due>);
        let rows: &[Row] = &[
            ("off: never", off, Some(1), 1, None),
            ("off: even long past", off, None, 1000, None),
            ("young key", aged, None, 89, None),
            ("at its age", aged, None, 90, due(90, 90)),
            ("past its age", aged, None, 400, due(90, 90)),
            ("warned ahead of its age", warned, None, 76, due(90, 90)),
            ("not yet warned", warned, None, 75, None),
            ("expiry before its age", warned, Some(30), 16, due(30, 30)),
            (
                "expiry before its age, too early",
                warned,
                Some(30),
                15,
                None,
            ),
            ("age before expiry", warned, Some(365), 80, due(90, 365)),
            ("expiry only, near", expiry_only, Some(10), 3, due(10, 10)),
            ("expiry only, far", expiry_only, Some(10), 2, None),
            ("expiry only, no expiry", expiry_only, None, 1000, None),
            ("max_age only, expiring key", aged, Some(10), 9, None),
            ("max_age only, at expiry", aged, Some(10), 10, due(10, 10)),
        ];
        for (name, policy, expires, now, want) in rows {
            assert_eq!(
                policy.due(at(0), expires.map(at), at(*now)),
                *want,
                "{name}"
            );
        }
    }

    #[test]
    fn only_a_key_still_to_rotate_is_counted() {
        let policy = RotationPolicy {
            max_age: days(1),
            warn_before: days(1),
        };
        let aged = KeyRecord {
            hint: None,
            created_at: at(0),
            ..KeyRecord::for_tests()
        };
        // (name, the record, counted at day 5).
        let rows: Vec<(&str, KeyRecord, bool)> = vec![
            ("past its age", aged.clone(), true),
            (
                "revoked",
                KeyRecord {
                    status: super::super::Status::Revoked,
                    ..aged.clone()
                },
                false,
            ),
            (
                "suspended: still to rotate once resumed",
                KeyRecord {
                    status: super::super::Status::Suspended,
                    ..aged.clone()
                },
                true,
            ),
            (
                "expired",
                KeyRecord {
                    expires_at: Some(at(4)),
                    ..aged.clone()
                },
                false,
            ),
            (
                "expiring tomorrow",
                KeyRecord {
                    expires_at: Some(at(6)),
                    ..aged.clone()
                },
                true,
            ),
            (
                "rotated, its grace running",
                KeyRecord {
                    rotated_to: Some("key_new".into()),
                    expires_at: Some(at(6)),
                    ..aged.clone()
                },
                false,
            ),
        ];
        for (name, record, counted) in rows {
            assert_eq!(
                policy.record_due(&record, at(5)).is_some(),
                counted,
                "{name}"
            );
        }
    }

    #[test]
    fn the_headers_name_the_dates() {
        let due = Due {
            replace_by: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            sunset: UNIX_EPOCH + Duration::from_secs(1_767_225_600 + DAY),
        };
        let [(d, dv), (s, sv)] = due.headers();
        assert_eq!(
            (d.as_str(), dv.to_str().unwrap()),
            ("deprecation", "@1767225600")
        );
        assert_eq!(
            (s.as_str(), sv.to_str().unwrap()),
            ("sunset", "Fri, 02 Jan 2026 00:00:00 GMT")
        );
    }
}
