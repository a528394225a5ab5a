//! The change feed: how a sidecar learns that a key changed somewhere else, and that the Redis
//! it reads is still the one whose keys it cached.
//!
//! - A pub/sub subscriber drops keys as change messages arrive (milliseconds). It pings its
//!   connection every `epoch_poll` and resubscribes after [`DEAD_AFTER`] pings in a row go
//!   unanswered: a silently dead subscriber would otherwise wait for messages forever.
//! - An epoch poll every `epoch_poll` catches up from the change log whatever the subscriber
//!   missed (a lost message, a killed or dead connection). Each poll that finds nothing it
//!   has not reported confirms the cache current ([`Invalidation::UpToDate`]); a poll that
//!   fails withdraws that at once ([`Invalidation::Doubt`]), and after a timeout it polls again
//!   right away, so a dead command connection is replaced (see [`super::link`]) and the poll
//!   answered within `epoch_poll + DEAD_AFTER × timeout` plus one connect: with the defaults
//!   (1 s, 250 ms) a revocation reaches a sidecar whose connections died silently within about
//!   1.6 s, as soon as any path to Redis works.
//! - The first poll sets the baseline epoch, and flushes what requests read before it: a
//!   change made between such a read and the baseline is in no message this sidecar will
//!   get and in no part of the log it will read.
//! - Store identity. Redis that lost its data (restarted empty, replaced, flushed) could hand
//!   out epochs that catch up with the one a sidecar last saw, and the sidecar would go on
//!   serving keys that exist nowhere. So the poll also reads `{ns}:instance`, a random token
//!   written once next to the epoch by whoever finds it missing; a token other than the one
//!   this sidecar saw means another store: the whole cache is flushed, logged once at ERROR
//!   and counted (`keygate_key_store_replaced_total`), and every key is read again (a key the
//!   new store does not hold is refused). A second signal is the server's `run_id`, read when
//!   the command connection is made: another process (a restart, a Sentinel failover to a
//!   replica that may lag) flushes the cache too, logged at WARN, since its data may well be
//!   intact. Either way a phantom key is served at most until the next poll.
//! - A sidecar that cannot confirm its cache current for longer than `[store] confirm_within`
//!   says so: an ERROR once, `keygate_key_feed_current 0`, and (with
//!   `[store] ready_requires_current`) a failing `/readyz`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::link::DEAD_AFTER;
use super::{CHANGE_LOG_EPOCHS, RedisStore, backoff, unavailable};
use crate::keys::{ChangeSink, Invalidation, KeyHash, StoreError};

/// What the poller last saw of the store.
#[derive(Debug, Default)]
struct Seen {
    epoch: Option<u64>,
    /// The store's instance token.
    token: Option<String>,
    /// The server's `run_id`, when known.
    run_id: Option<String>,
}

/// How one poll ended.
#[derive(Debug, PartialEq, Eq)]
enum Polled {
    /// The cache is known current.
    Current,
    TimedOut,
    Failed,
}

/// What a poll found about the store's identity.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    /// The first poll, or the store we know.
    Same,
    /// Another instance token: the data this sidecar cached is gone.
    Replaced,
    /// Same token, another server process.
    Restarted,
}

fn identity(seen: &Seen, token: &str, run_id: Option<&str>) -> Identity {
    match (&seen.token, &seen.run_id, run_id) {
        (Some(known), _, _) if known != token => Identity::Replaced,
        (Some(_), Some(known), Some(now)) if known != now => Identity::Restarted,
        _ => Identity::Same,
    }
}

impl RedisStore {
    /// The instance token (written if missing) and the epoch, in one round trip.
    async fn identity_and_epoch(&self) -> Result<(String, u64), StoreError> {
        static IDENTITY: std::sync::LazyLock<Script> =
            std::sync::LazyLock::new(|| Script::new(include_str!("identity.lua")));
        let mut invocation = IDENTITY.prepare_invoke();
        invocation
            .key(self.name("epoch"))
            .key(self.name("instance"))
            .arg(fresh_token());
        self.run(self.config.timeout, async move |mut c| {
            invocation.invoke_async(&mut c).await
        })
        .await
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

    /// The change feed: the subscriber and the poller (see the module doc), both running
    /// until `shutdown`.
    pub(super) fn feed(self: Arc<Self>, sink: ChangeSink, shutdown: CancellationToken) {
        let (kick_tx, kick_rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(self.clone().poller(sink.clone(), kick_rx, shutdown.clone()));
        tokio::spawn(self.subscriber(sink, kick_tx, shutdown));
    }

    async fn poller(
        self: Arc<Self>,
        sink: ChangeSink,
        mut kick: tokio::sync::mpsc::Receiver<()>,
        stop: CancellationToken,
    ) {
        let mut seen = Seen::default();
        let mut currency = Currency::new(self.config.confirm_within);
        let mut tick = tokio::time::interval(self.config.epoch_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = kick.recv() => {}
            }
            // A timeout may be a dead connection: poll again at once, so that it is given up
            // and replaced now rather than one poll interval per timeout later.
            let mut polled = Polled::Failed;
            for _ in 0..=DEAD_AFTER {
                polled = self.catch_up(&mut seen, &sink).await;
                if polled != Polled::TimedOut {
                    break;
                }
            }
            let metrics = &self.metrics.store_health;
            match currency.after(polled == Polled::Current, Instant::now()) {
                Some(Change::Lost(unconfirmed)) => {
                    metrics.feed_current.set(0);
                    tracing::error!(
                        unconfirmed = ?unconfirmed,
                        bound = ?self.config.confirm_within,
                        "key cache cannot be confirmed current: revocations made meanwhile may \
                         not be seen here until the key store answers again"
                    );
                }
                Some(Change::Regained(after)) => {
                    metrics.feed_current.set(1);
                    tracing::info!(after = ?after, "key cache confirmed current again");
                }
                None => {}
            }
            if polled == Polled::Current {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                metrics.feed_confirmed.set(now);
            }
        }
    }

    /// Compares the store's identity and epoch with ours and invalidates what changed since.
    async fn catch_up(&self, seen: &mut Seen, sink: &ChangeSink) -> Polled {
        let (token, epoch) = match self.identity_and_epoch().await {
            Ok(found) => {
                self.metrics.store_up.set(1);
                found
            }
            Err(e) => return self.poll_failed(sink, &e),
        };
        let run_id = self.link.run_id();
        match identity(seen, &token, run_id.as_deref()) {
            Identity::Same => {}
            Identity::Replaced => {
                tracing::error!(
                    store = %self.describe,
                    "the key store lost its data or was replaced (its instance token changed): \
                     flushing the key cache; every key is read again, and keys the store no \
                     longer holds are refused"
                );
                self.metrics.store_health.replaced.inc();
                return self.start_over(seen, sink, token, epoch, run_id);
            }
            Identity::Restarted => {
                tracing::warn!(
                    store = %self.describe,
                    "the key store is another Redis process now (restart or failover): \
                     flushing the key cache, since a replica may lag"
                );
                return self.start_over(seen, sink, token, epoch, run_id);
            }
        }
        seen.token = Some(token);
        if run_id.is_some() {
            seen.run_id = run_id;
        }
        match seen.epoch {
            None => {
                // The first poll: keys read before it (a request can come first) are not
                // known to be current, and a change they missed (pub/sub not yet
                // subscribed, or dead) would never show in the log from here on.
                seen.epoch = Some(epoch);
                sink(Invalidation::All);
                sink(Invalidation::UpToDate);
            }
            Some(known) if epoch == known => sink(Invalidation::UpToDate),
            Some(known) if epoch < known || epoch - known > CHANGE_LOG_EPOCHS => {
                // Flushed or replaced (and the token lost with it, or a replica behind), or
                // further behind than the log keeps.
                tracing::warn!(
                    seen = known,
                    epoch,
                    "change feed lost track; flushing the key cache"
                );
                sink(Invalidation::All);
                sink(Invalidation::UpToDate);
                seen.epoch = Some(epoch);
            }
            Some(known) => match self.changes_since(known).await {
                Ok(hashes) => {
                    for hash in hashes {
                        sink(Invalidation::Key(hash));
                    }
                    sink(Invalidation::UpToDate);
                    seen.epoch = Some(epoch);
                }
                Err(e) => return self.poll_failed(sink, &e),
            },
        }
        Polled::Current
    }

    fn start_over(
        &self,
        seen: &mut Seen,
        sink: &ChangeSink,
        token: String,
        epoch: u64,
        run_id: Option<String>,
    ) -> Polled {
        sink(Invalidation::All);
        sink(Invalidation::UpToDate);
        *seen = Seen {
            epoch: Some(epoch),
            token: Some(token),
            run_id,
        };
        Polled::Current
    }

    fn poll_failed(&self, sink: &ChangeSink, e: &StoreError) -> Polled {
        self.metrics.store_up.set(0);
        self.metrics.store_errors.inc();
        sink(Invalidation::Doubt);
        tracing::debug!(error = %e, "epoch poll failed");
        if matches!(e, StoreError::TimedOut(_)) {
            Polled::TimedOut
        } else {
            Polled::Failed
        }
    }

    async fn subscriber(
        self: Arc<Self>,
        sink: ChangeSink,
        kick: tokio::sync::mpsc::Sender<()>,
        shutdown: CancellationToken,
    ) {
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
                    tokio::time::timeout(self.connect_timeout, client.get_async_pubsub())
                        .await
                        .map_err(|_| unavailable("pub/sub connect timed out"))?
                        .map_err(unavailable)?;
                tokio::time::timeout(self.connect_timeout, pubsub.subscribe(&channel))
                    .await
                    .map_err(|_| unavailable("subscribe timed out"))?
                    .map_err(unavailable)?;
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
            let _ = kick.try_send(());
            let (mut control, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(self.config.epoch_poll);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ping.tick().await;
            let mut unanswered = 0u32;
            let why = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    msg = messages.next() => match msg {
                        Some(msg) => {
                            if let Ok(payload) = msg.get_payload::<String>() {
                                self.on_message(&payload, &sink);
                            }
                        }
                        None => break "connection lost",
                    },
                    _ = ping.tick() => {
                        let answer = tokio::time::timeout(
                            self.config.timeout,
                            control.ping::<redis::Value>(),
                        )
                        .await;
                        match answer {
                            Ok(Ok(_)) => unanswered = 0,
                            Ok(Err(_)) => break "ping failed",
                            Err(_) => {
                                unanswered += 1;
                                if unanswered >= DEAD_AFTER {
                                    break "pings unanswered";
                                }
                            }
                        }
                    }
                }
            };
            tracing::warn!(
                reason = why,
                "change feed: pub/sub connection given up; resubscribing"
            );
        }
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
}

/// A random token for a store that has none yet.
fn fresh_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Unique enough for telling two stores apart.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the cache has been confirmed current recently enough: the feed's own verdict,
/// changing only when it crosses `bound`.
struct Currency {
    bound: Duration,
    /// The last confirmation, or when watching started.
    since: Instant,
    current: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Not confirmed for this long, past the bound.
    Lost(Duration),
    /// Confirmed again after this long.
    Regained(Duration),
}

impl Currency {
    fn new(bound: Duration) -> Self {
        Self {
            bound,
            since: Instant::now(),
            current: true,
        }
    }

    fn after(&mut self, confirmed: bool, now: Instant) -> Option<Change> {
        let unconfirmed = now.saturating_duration_since(self.since);
        if confirmed {
            self.since = now;
            if !self.current {
                self.current = true;
                return Some(Change::Regained(unconfirmed));
            }
        } else if self.current && unconfirmed > self.bound {
            self.current = false;
            return Some(Change::Lost(unconfirmed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_identity() {
        let seen = |token: Option<&str>, run: Option<&str>| Seen {
            epoch: Some(3),
            token: token.map(Into::into),
            run_id: run.map(Into::into),
        };
        // (what we saw, token now, run_id now) -> verdict
        let table = [
            (seen(None, None), "t1", Some("r1"), Identity::Same),
            (
                seen(Some("t1"), Some("r1")),
                "t1",
                Some("r1"),
                Identity::Same,
            ),
            (
                seen(Some("t1"), Some("r1")),
                "t2",
                Some("r1"),
                Identity::Replaced,
            ),
            (
                seen(Some("t1"), Some("r1")),
                "t2",
                Some("r2"),
                Identity::Replaced,
            ),
            (
                seen(Some("t1"), Some("r1")),
                "t1",
                Some("r2"),
                Identity::Restarted,
            ),
            // No run_id (Cluster, or INFO forbidden): the token alone decides.
            (seen(Some("t1"), None), "t1", Some("r2"), Identity::Same),
            (seen(Some("t1"), Some("r1")), "t1", None, Identity::Same),
        ];
        for (seen, token, run, want) in table {
            assert_eq!(
                identity(&seen, token, run),
                want,
                "{seen:?} {token} {run:?}"
            );
        }
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (fresh_token(), fresh_token());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn currency_changes_once_each_way() {
        let start = Instant::now();
        let mut c = Currency {
            bound: Duration::from_secs(5),
            since: start,
            current: true,
        };
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(c.after(true, at(1)), None);
        assert_eq!(c.after(false, at(2)), None);
        assert_eq!(
            c.after(false, at(6)),
            None,
            "5 s since the last confirmation"
        );
        assert_eq!(
            c.after(false, at(7)),
            Some(Change::Lost(Duration::from_secs(6)))
        );
        assert_eq!(c.after(false, at(30)), None, "said once");
        assert_eq!(
            c.after(true, at(31)),
            Some(Change::Regained(Duration::from_secs(30)))
        );
        assert_eq!(c.after(true, at(32)), None);
    }
}
