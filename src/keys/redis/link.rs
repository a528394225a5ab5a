//! The command connection to Redis, and how it notices that it is dead.
//!
//! A Redis connection can die without a sound: a stuck NAT entry, a half-open path or a hung
//! proxy leaves the socket open while no reply ever comes. The client library's own manager
//! replaces a connection only on an I/O error, and such a path never gives one (with a peer
//! that keeps acknowledging, not even TCP's retransmission timeout fires), so every command
//! times out for good while Redis itself is healthy, and each one leaves its slot in the
//! connection's reply queue. Hence this module, which the library has no notion of:
//!
//! - every Redis socket (this one, pub/sub, Cluster and Sentinel) gets TCP keepalive with
//!   short probes and `TCP_USER_TIMEOUT` ([`tcp_settings`]), so a path that stops
//!   acknowledging is declared dead by the kernel in seconds, not the 15 minutes of default
//!   retransmissions;
//! - [`DEAD_AFTER`] consecutive timeouts with no answer in between drop the connection (its
//!   queued commands fail and free their memory) and the next command dials a new one; an
//!   I/O error or a closed connection drops it at once. A reply of any kind, error replies
//!   included, proves the path alive and resets the count;
//! - dials run in their own task, one at a time, so a caller that gives up (the request path
//!   waits at most `[store] timeout`) does not abort the dial for everyone; failed dials back
//!   off exponentially with jitter (50 ms doubling up to 2 s), and callers meanwhile fail
//!   fast instead of queueing;
//! - the change feed's epoch poll is this connection's periodic health check (it runs every
//!   `[store] epoch_poll` whether or not requests come), and retries at once after a timeout,
//!   so a dead connection is replaced within `epoch_poll + DEAD_AFTER × timeout` plus one
//!   connect even on an idle sidecar.
//!
//! Each dial also records the server's `run_id` (`INFO server`): a different one means another
//! Redis process (a restart, a failover), which the change feed takes as a reason to distrust
//! its cache (see `feed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::SentinelClient;
use redis::{AsyncConnectionConfig, Client, RedisFuture, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::unavailable;
use crate::keys::StoreError;
use crate::metrics::Metrics;

/// Consecutive timeouts after which a connection is taken for dead.
pub const DEAD_AFTER: u32 = 2;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Socket options for every connection to Redis: those of every connection keygate opens
/// ([`crate::tcp`]), a silent path found dead in about 11 s.
pub fn tcp_settings() -> TcpSettings {
    TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(crate::tcp::keepalive())
        .set_user_timeout(crate::tcp::USER_TIMEOUT)
}

/// A connection for one command: standalone/Sentinel (multiplexed) or Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How a new connection is made.
pub(super) enum Dialer {
    Standalone(Client),
    /// The master is asked of the sentinels at every dial, so a failover is followed.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A connection in use.
pub(super) struct Live {
    pub conn: Conn,
    /// Sentinel: the master's client, for pub/sub.
    pub master: Option<Client>,
    /// The server's `run_id` when this connection was made (standalone and Sentinel).
    pub run_id: Option<String>,
}

/// The command connection (see the module doc). Cheap to share: the state sits behind an
/// `Arc`, because dials run in tasks of their own.
pub(super) struct Link(Arc<Inner>);

struct Inner {
    dialer: Dialer,
    connect_timeout: Duration,
    current: ArcSwapOption<Live>,
    /// Consecutive timeouts on the current connection.
    timeouts: AtomicU32,
    /// Consecutive failed dials, for the backoff.
    failures: AtomicU32,
    /// No dial before this (ms since `born`).
    retry_at_ms: AtomicU64,
    dialing: AtomicBool,
    /// Bumped when a dial ends, with its error if it failed.
    dialed: watch::Sender<Option<String>>,
    born: Instant,
    metrics: Arc<Metrics>,
}

impl Link {
    pub(super) fn new(dialer: Dialer, connect_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            dialer,
            connect_timeout,
            current: ArcSwapOption::empty(),
            timeouts: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
            dialing: AtomicBool::new(false),
            dialed: watch::channel(None).0,
            born: Instant::now(),
            metrics,
        }))
    }

    /// The connection, dialing one first if there is none. Fails at once while dials back
    /// off.
    pub(super) async fn get(&self) -> Result<Arc<Live>, StoreError> {
        // Subscribe before looking, so a dial ending in between is not missed.
        let mut ended = self.0.dialed.subscribe();
        if let Some(live) = self.0.current.load_full() {
            return Ok(live);
        }
        if !self.start_dial() {
            return Err(unavailable(
                "reconnecting (backing off after failed connects)",
            ));
        }
        let _ = ended.changed().await;
        match self.0.current.load_full() {
            Some(live) => Ok(live),
            None => Err(unavailable(
                ended
                    .borrow()
                    .clone()
                    .unwrap_or_else(|| "connect failed".into()),
            )),
        }
    }

    /// The `run_id` of the server the current connection talks to, if known.
    pub(super) fn run_id(&self) -> Option<String> {
        self.0.current.load().as_ref()?.run_id.clone()
    }

    /// Runs `call` on the connection within `budget` (dialing included) and keeps score of
    /// the connection's health.
    pub(super) async fn run<T>(
        &self,
        budget: Duration,
        call: impl AsyncFnOnce(Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let live = match tokio::time::timeout(budget, self.get()).await {
            Ok(got) => got?,
            Err(_) => return Err(StoreError::TimedOut("redis: connecting".into())),
        };
        let mut pending = Pending {
            link: self,
            live: &live,
            budget,
            started,
            settled: false,
        };
        let left = budget.saturating_sub(started.elapsed());
        let outcome = tokio::time::timeout(left, call(live.conn.clone())).await;
        pending.settled = true;
        match outcome {
            Ok(Ok(v)) => {
                self.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                if e.is_timeout() {
                    // Cluster connections time their commands themselves.
                    self.timed_out(&live);
                    return Err(StoreError::TimedOut(format!("redis: {e}")));
                } else if e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_io_error()
                {
                    self.drop_conn(&live, "closed", &e);
                } else {
                    // A reply, if an error one: the path works.
                    self.answered();
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.timed_out(&live);
                Err(StoreError::TimedOut("redis: no reply".into()))
            }
        }
    }

    fn answered(&self) {
        self.0.timeouts.store(0, Ordering::Relaxed);
        self.0.failures.store(0, Ordering::Relaxed);
    }

    fn timed_out(&self, live: &Arc<Live>) {
        let n = self.0.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= DEAD_AFTER {
            self.drop_conn(live, "timeouts", &format!("{n} timeouts in a row"));
        }
    }

    /// Forgets `live` (if it is still the current connection): its task ends, its queued
    /// commands fail, and the next command dials.
    fn drop_conn(&self, live: &Arc<Live>, reason: &'static str, why: &dyn std::fmt::Display) {
        let previous = self.0.current.compare_and_swap(live, None::<Arc<Live>>);
        let was_current = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, live));
        if was_current {
            self.0.timeouts.store(0, Ordering::Relaxed);
            self.0
                .metrics
                .store_health
                .reconnects
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(error = %why, "redis connection given up; the next command reconnects");
        }
    }

    /// Starts a dial unless one runs or the backoff forbids it; false: neither is running.
    fn start_dial(&self) -> bool {
        if self.0.dialing.swap(true, Ordering::AcqRel) {
            return true;
        }
        if self.0.now_ms() < self.0.retry_at_ms.load(Ordering::Acquire) {
            self.0.dialing.store(false, Ordering::Release);
            return false;
        }
        let inner = self.0.clone();
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(inner.connect_timeout, inner.dial()).await {
                Ok(Ok(live)) => {
                    inner.current.store(Some(Arc::new(live)));
                    inner.timeouts.store(0, Ordering::Relaxed);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("connect timed out".to_owned()),
            };
            if let Some(why) = &outcome {
                let failures = inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
                let wait = backoff(failures, jitter());
                inner
                    .retry_at_ms
                    .store(inner.now_ms() + wait.as_millis() as u64, Ordering::Release);
                tracing::debug!(error = %why, retry_in = ?wait, "redis connect failed");
            }
            inner.dialing.store(false, Ordering::Release);
            inner.dialed.send_replace(outcome);
        });
        true
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    async fn dial(&self) -> Result<Live, StoreError> {
        let config = AsyncConnectionConfig::new()
            // Our own budgets time every command (`Link::run`); the library's would cut a
            // management command short.
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.connect_timeout));
        match &self.dialer {
            Dialer::Standalone(client) => {
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?;
                Ok(single(conn, None).await)
            }
            Dialer::Sentinel(sentinel) => {
                let client = sentinel
                    .lock()
                    .await
                    .async_get_client()
                    .await
                    .map_err(unavailable)?;
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?;
                Ok(single(conn, Some(client)).await)
            }
            Dialer::Cluster(client) => Ok(Live {
                conn: Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?),
                master: None,
                run_id: None,
            }),
        }
    }
}

async fn single(mut conn: MultiplexedConnection, master: Option<Client>) -> Live {
    // Without INFO (an ACL may forbid it) there is simply no second signal.
    let info: Option<String> = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok();
    Live {
        conn: Conn::Single(conn),
        master,
        run_id: info.as_deref().and_then(run_id),
    }
}

/// The `run_id` field of an `INFO server` reply.
fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A number in 0..1 for the backoff's jitter.
fn jitter() -> f64 {
    f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX)
}

/// How long to wait after `failures` failed dials: exponential, with "equal jitter" (half
/// fixed, half random) so sidecars that lost Redis together do not redial in step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(10))
        .min(BACKOFF_MAX);
    base / 2 + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// A command in flight. A caller with its own, equal deadline (the key cache times every
/// read too) may drop the command at the very moment its budget ends: that still counts as
/// the timeout it is.
struct Pending<'a> {
    link: &'a Link,
    live: &'a Arc<Live>,
    budget: Duration,
    started: Instant,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled && self.started.elapsed() + self.budget / 10 >= self.budget {
            self.link.timed_out(self.live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        // (failures, jitter) -> wait
        let table: &[(u32, f64, u64)] = &[
            (1, 0.0, 25),
            (1, 1.0, 50),
            (2, 0.5, 75),
            (3, 0.0, 100),
            (6, 1.0, 1_600),
            (7, 0.0, 1_000),
            (7, 1.0, 2_000),
            (40, 1.0, 2_000),
            (40, 7.0, 2_000),
        ];
        for &(failures, jitter, ms) in table {
            assert_eq!(
                backoff(failures, jitter),
                Duration::from_millis(ms),
                "{failures} {jitter}"
            );
        }
    }

    #[test]
    fn run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:4f1c0a\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info).as_deref(), Some("4f1c0a"));
        assert_eq!(run_id("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id(""), None);
    }
}
