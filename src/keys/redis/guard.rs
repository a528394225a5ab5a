//! Failure counts of the credential-stuffing guard ([`crate::guard`]), shared by every sidecar.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:guard:<source>:<window number>` | string | unknown keys from the source in that window, by every sidecar; expires two windows later |
//!
//! Windows are numbered from the Unix epoch, so every sidecar counts into the same one. One
//! `INCR` + `PEXPIRE` (atomic) per unknown key: a request that already cost a store read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RedisStore;
use crate::guard::{SharedFailures, SharedUnavailable};

#[async_trait::async_trait]
impl SharedFailures for RedisStore {
    async fn add_failure(&self, source: &str, window: Duration) -> Result<u64, SharedUnavailable> {
        let window_ms = window.as_millis().max(1) as u64;
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let key = self.name(&format!("guard:{source}:{}", now_ms / window_ms));
        let (count,): (u64,) = self
            .run(self.config.timeout, async move |mut c| {
                redis::pipe()
                    .atomic()
                    .incr(&key, 1)
                    .pexpire(&key, (window_ms * 2) as i64)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await
            .map_err(|e| SharedUnavailable(e.to_string()))?;
        Ok(count)
    }
}
