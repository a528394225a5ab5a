//! The change feed: how a sidecar learns that a key changed somewhere else. A pub/sub
//! subscriber drops keys as change messages arrive; an epoch poll catches up from the change
//! log whatever the subscriber missed (a lost message, a killed connection, a reconnect).

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{CHANGE_LOG_EPOCHS, MANAGEMENT_TIMEOUT, RedisStore, backoff, unavailable};
use crate::keys::{ChangeSink, Invalidation, KeyHash, StoreError};
use std::sync::Arc;

impl RedisStore {
    async fn epoch(&self) -> Result<u64, StoreError> {
        let key = self.name("epoch");
        let v: Option<u64> = self
            .run(self.config.timeout, async move |mut c| {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Hashes changed after epoch `since`.
    async fn changes_since(&self, since: u64) -> Result<Vec<KeyHash>, StoreError> {
        let key = self.name("changes");
        let members: Vec<String> = self
            .run(self.config.timeout, async move |mut c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({since}"))
                    .arg("+inf")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| KeyHash::from_hex(m))
            .collect())
    }

    /// The change feed: a pub/sub subscriber, and an epoch poll that catches up whatever the
    /// subscriber missed (message lost, connection killed, reconnect). Both run until
    /// `shutdown`.
    pub(super) fn feed(self: Arc<Self>, sink: ChangeSink, shutdown: CancellationToken) {
        let local = Arc::new(tokio::sync::Mutex::new(None::<u64>));

        // Poller.
        let (this, poll_sink, poll_local, stop) =
            (self.clone(), sink.clone(), local.clone(), shutdown.clone());
        let (kick_tx, mut kick_rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.epoch_poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = kick_rx.recv() => {}
                }
                this.catch_up(&poll_local, &poll_sink).await;
            }
        });

        // Subscriber.
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let channel = self.name("changes");
            let mut attempt = 0usize;
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                let subscribed = async {
                    let client = self.pubsub_client(attempt).await?;
                    let mut pubsub =
                        tokio::time::timeout(MANAGEMENT_TIMEOUT, client.get_async_pubsub())
                            .await
                            .map_err(|_| unavailable("pub/sub connect timed out"))?
                            .map_err(unavailable)?;
                    pubsub.subscribe(&channel).await.map_err(unavailable)?;
                    Ok::<_, StoreError>(pubsub)
                }
                .await;
                let pubsub = match subscribed {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed: cannot subscribe; retrying");
                        attempt += 1;
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff(attempt)) => continue,
                        }
                    }
                };
                tracing::info!(channel, "change feed subscribed");
                attempt = 0;
                // Whatever changed while we were not subscribed is in the epoch log.
                let _ = kick_tx.try_send(());
                let mut messages = pubsub.into_on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        msg = messages.next() => msg,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    self.on_message(&payload, &sink);
                }
                tracing::warn!("change feed: pub/sub connection lost; resubscribing");
            }
        });
    }

    fn on_message(&self, payload: &str, sink: &ChangeSink) {
        let mut parts = payload.split(' ');
        let (Some(_epoch), Some(hash), Some(ms)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Some(hash) = KeyHash::from_hex(hash) else {
            return;
        };
        sink(Invalidation::Key(hash));
        if let Ok(ms) = ms.parse::<u64>() {
            let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
            if let Ok(delay) = SystemTime::now().duration_since(sent) {
                self.metrics.propagated(delay);
            }
        }
    }

    /// Compares the store's epoch with ours and invalidates what changed in between.
    async fn catch_up(&self, local: &tokio::sync::Mutex<Option<u64>>, sink: &ChangeSink) {
        let mut local = local.lock().await;
        let epoch = match self.epoch().await {
            Ok(e) => {
                self.metrics.store_up.set(1);
                e
            }
            Err(e) => {
                self.metrics.store_up.set(0);
                self.metrics.store_errors.inc();
                tracing::debug!(error = %e, "epoch poll failed");
                return;
            }
        };
        match *local {
            None => *local = Some(epoch),
            Some(seen) if epoch == seen => sink(Invalidation::UpToDate),
            Some(seen) if epoch < seen || epoch - seen > CHANGE_LOG_EPOCHS => {
                // Redis was flushed or replaced, or we are further behind than the log.
                tracing::warn!(
                    seen,
                    epoch,
                    "change feed lost track; flushing the key cache"
                );
                sink(Invalidation::All);
                sink(Invalidation::UpToDate);
                *local = Some(epoch);
            }
            Some(seen) => match self.changes_since(seen).await {
                Ok(hashes) => {
                    for hash in hashes {
                        sink(Invalidation::Key(hash));
                    }
                    sink(Invalidation::UpToDate);
                    *local = Some(epoch);
                }
                Err(e) => tracing::debug!(error = %e, "reading the change log failed"),
            },
        }
    }
}
