//! The shared key store: Redis standalone (`redis://`, `rediss://`), Sentinel or Cluster.
//!
//! Client crate: `redis` (redis-rs) rather than `fred`. Both reconnect with backoff and speak
//! Cluster and Sentinel; `fred` also re-subscribes pub/sub by itself. We chose redis-rs because
//! it is the most widely used and most actively maintained Rust client, and its `Script` type
//! handles EVALSHA/NOSCRIPT on Cluster. What it does not do for us we need to control anyway:
//! noticing that a connection went silently dead (its `ConnectionManager` reconnects only on
//! an I/O error, which a blackholed path never gives), so keygate keeps its own command
//! connection ([`link`]); resubscribing, and noticing what was missed while unsubscribed: after
//! any reconnect the change feed must catch up from the epoch log, which no client library
//! knows about. That loop is [`RedisStore::feed`]; it also checks that the Redis it talks to
//! is the one whose keys it cached (the instance token below).
//!
//! Layout in Redis (every name carries the hash tag `{<namespace>}`, so all of keygate's keys
//! live in one Cluster slot and every multi-key change is one atomic Lua script; the key store
//! is small, so one shard is not a capacity concern, and Cluster still gives failover):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:key:<sha256 hex>` | string | the record as JSON (never the secret) |
//! | `{ns}:id:<id>` | string | the sha256 hex of that id's key |
//! | `{ns}:owner:<owner>` | set | ids of the owner's keys that count for the cap (`manage::counts_against_cap`): each write sets its key's membership; keys expired by time alone are taken out before a capped insert counts (`prune.lua`) |
//! | `{ns}:ids` | sorted set | every id, scored by creation time (ms) |
//! | `{ns}:epoch` | integer | bumped by every change |
//! | `{ns}:instance` | string | a random token written once, to tell this store from an emptied or replaced one |
//! | `{ns}:changes` | sorted set | changed key hashes, scored by the epoch of their change |
//! | `{ns}:last_used` | hash | id → unix seconds, written behind in batches |
//! | `{ns}:audit` | stream | management events (field `e`: the event as JSON), capped at [`AUDIT_MAX_EVENTS`] (approximately); a change's events are added by the script that makes the change (`commit.lua`), so both or neither exist; a refused action's event, which changes nothing, by `XADD` alone |
//! | `{ns}:quota:…`, `{ns}:sidecars`, `{ns}:suspended` | | shared quotas: see [`quota`] |
//!
//! Every change also publishes `"<epoch> <hash> <ms>"` on the channel `{ns}:changes`. A sidecar
//! drops a key from its cache when the message arrives, and once a second compares the epoch
//! with its own: if it moved, it reads the changed hashes from `{ns}:changes` (or flushes its
//! whole cache, if it fell further behind than the log keeps), so a lost message delays a
//! revocation by at most the poll interval.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{Client, IntoConnectionInfo, Script};
use tokio_util::sync::CancellationToken;

mod feed;
mod guard;
mod link;
mod quota;

use link::{Conn, Dialer, Link};

use super::manage::counts_against_cap;
use super::{Batch, ChangeSink, KeyHash, KeyRecord, KeyStore, StoreError};
use crate::metrics::Metrics;

/// How many epochs of change log are kept; a sidecar further behind flushes its cache.
const CHANGE_LOG_EPOCHS: u64 = 100_000;
/// Inserts per Lua call: a `keys create --count 1000000` is atomic per chunk, not as a whole.
const INSERT_CHUNK: usize = 2_000;
/// Events kept in the audit stream (trimmed approximately, as `XADD MAXLEN ~` does).
pub const AUDIT_MAX_EVENTS: u64 = 100_000;
/// Management commands (the CLI) may take longer than the hot path's budget.
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[store] kind = "redis"`, validated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisConfig {
    pub mode: RedisMode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Never printed: `check-config` shows whether one is set.
    #[serde(serialize_with = "masked")]
    pub password: Option<String>,
    /// PEM CA bundle for `rediss://` when the server's certificate is not publicly trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub namespace: String,
    /// Budget for each Redis call on the request path.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the epoch is polled (bounds staleness when a pub/sub message is lost).
    #[serde(with = "humantime_serde")]
    pub epoch_poll: Duration,
    /// A sidecar whose change feed cannot confirm the cache current for longer than this
    /// says so (ERROR log, `keygate_key_feed_current 0`).
    #[serde(with = "humantime_serde")]
    pub confirm_within: Duration,
    /// `/readyz` fails while the cache cannot be confirmed current.
    pub ready_requires_current: bool,
    /// What a request whose quota lease is spent gets while Redis does not answer.
    pub quota_fallback: crate::limits::QuotaFallback,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum RedisMode {
    Standalone {
        url: String,
    },
    Sentinel {
        master_name: String,
        sentinels: Vec<String>,
    },
    Cluster {
        nodes: Vec<String>,
    },
}

fn masked<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

pub struct RedisStore {
    /// The command connection.
    link: Link,
    /// Clients for pub/sub: the standalone server, or the Cluster seeds (rotated through on
    /// failures). Empty with Sentinel: the link's current master is used.
    pubsub: Vec<Client>,
    config: RedisConfig,
    commit: Script,
    prune: Script,
    metrics: Arc<Metrics>,
    describe: String,
    /// How long a new connection may take (command link and pub/sub).
    connect_timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Builds the client. Nothing is connected yet: the proxy starts (and serves cached keys)
    /// while Redis is down, and connects when it can.
    pub fn new(config: RedisConfig, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        // rustls (for rediss://) needs a process-wide crypto provider; a second install (or
        // one made elsewhere) is fine.
        crate::crypto::install_default();
        // A dial (Sentinel lookup included) gets more than a command: on a healthy network it
        // takes a millisecond, and only a hung one waits this long.
        let connect_timeout = (config.timeout * 2).max(Duration::from_secs(1));
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let client_for = |url: &str| -> Result<Client, StoreError> {
            let mut info = url
                .into_connection_info()
                .map_err(unavailable)?
                .set_tcp_settings(link::tcp_settings());
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &config.password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
            match &ca {
                Some(root) => Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root.clone()),
                    },
                ),
                None => Client::open(info),
            }
            .map_err(unavailable)
        };
        let (dialer, pubsub, describe) = match &config.mode {
            RedisMode::Standalone { url } => {
                let client = client_for(url)?;
                (
                    Dialer::Standalone(client.clone()),
                    vec![client],
                    format!("redis {}", redact(url)),
                )
            }
            RedisMode::Sentinel {
                master_name,
                sentinels,
            } => {
                let addrs = sentinels
                    .iter()
                    .map(|s| {
                        s.as_str()
                            .into_connection_info()
                            .map(|i| i.addr().clone())
                            .map_err(unavailable)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder =
                    SentinelClientBuilder::new(addrs, master_name, SentinelServerType::Master)
                        .map_err(unavailable)?
                        .set_client_to_redis_tcp_settings(link::tcp_settings())
                        .set_client_to_sentinel_tcp_settings(link::tcp_settings());
                if let Some(user) = &config.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                let sentinel = builder.build().map_err(unavailable)?;
                (
                    Dialer::Sentinel(tokio::sync::Mutex::new(sentinel)),
                    Vec::new(),
                    format!("redis sentinel {master_name} via {}", sentinels.join(",")),
                )
            }
            RedisMode::Cluster { nodes } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(
                    nodes
                        .iter()
                        .map(|n| n.as_str().into_connection_info())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(unavailable)?,
                )
                .response_timeout(config.timeout)
                .connection_timeout(connect_timeout)
                .tcp_settings(link::tcp_settings())
                .retries(2);
                if let Some(user) = &config.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password);
                }
                if let Some(root) = &ca {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root.clone()),
                    });
                }
                let seeds = nodes
                    .iter()
                    .map(|n| client_for(n))
                    .collect::<Result<Vec<_>, _>>()?;
                (
                    Dialer::Cluster(builder.build().map_err(unavailable)?),
                    seeds,
                    format!(
                        "redis cluster {}",
                        nodes
                            .iter()
                            .map(|n| redact(n))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                )
            }
        };
        Ok(Self {
            link: Link::new(dialer, connect_timeout, metrics.clone()),
            pubsub,
            commit: Script::new(include_str!("commit.lua")),
            prune: Script::new(include_str!("prune.lua")),
            metrics,
            describe,
            connect_timeout,
            config,
        })
    }

    fn key(&self, hash: &KeyHash) -> String {
        format!("{{{}}}:key:{}", self.config.namespace, hash.to_hex())
    }

    fn name(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.config.namespace)
    }

    /// Runs `call` on the command connection within `budget` (see [`link`] for what a
    /// timeout or a dropped connection leads to).
    async fn run<T: redis::FromRedisValue>(
        &self,
        budget: Duration,
        call: impl AsyncFnOnce(Conn) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.link.run(budget, call).await
    }

    /// A plain client for pub/sub: the standalone server, the Sentinel master, or the
    /// `attempt`-th Cluster seed (rotating through seeds on failures).
    async fn pubsub_client(&self, attempt: usize) -> Result<Client, StoreError> {
        if self.pubsub.is_empty() {
            return self
                .link
                .get()
                .await?
                .master
                .clone()
                .ok_or_else(|| unavailable("no Sentinel master known"));
        }
        Ok(self.pubsub[attempt % self.pubsub.len()].clone())
    }

    async fn commit_chunk(&self, batch: &Batch) -> Result<(), StoreError> {
        let now = SystemTime::now();
        let mut invocation = self.commit.prepare_invoke();
        invocation
            .key(self.name("epoch"))
            .key(self.name("changes"))
            .key(self.name("ids"));
        invocation
            .arg(self.name("changes"))
            .arg(batch.max_per_owner.unwrap_or(0))
            .arg(batch.inserts.len())
            .arg(batch.updates.len())
            .arg(batch.deletes.len());
        for (hash, record) in &batch.inserts {
            invocation
                .key(self.key(hash))
                .key(self.name(&format!("id:{}", record.id)))
                .key(self.name(&format!("owner:{}", record.owner)));
            let created_ms = record
                .created_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            invocation
                .arg(hash.to_hex())
                .arg(&record.id)
                .arg(record_json(record))
                .arg(created_ms)
                .arg(u8::from(counts_against_cap(record, now)));
        }
        for update in &batch.updates {
            invocation
                .key(self.key(&update.hash))
                .key(self.name(&format!("owner:{}", update.after.owner)));
            invocation
                .arg(update.hash.to_hex())
                .arg(&update.after.id)
                .arg(record_json(&update.before))
                .arg(record_json(&update.after))
                .arg(u8::from(counts_against_cap(&update.after, now)));
        }
        for (hash, before) in &batch.deletes {
            invocation
                .key(self.key(hash))
                .key(self.name(&format!("id:{}", before.id)))
                .key(self.name(&format!("owner:{}", before.owner)));
            invocation
                .arg(hash.to_hex())
                .arg(&before.id)
                .arg(record_json(before));
        }
        // The change's audit events, added to the stream by the same script.
        invocation
            .key(self.name("audit"))
            .arg(AUDIT_MAX_EVENTS)
            .arg(batch.events.len());
        for event in &batch.events {
            invocation.arg(serde_json::to_string(event).expect("audit events serialize"));
        }
        let result: Result<u64, StoreError> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                invocation.invoke_async(&mut c).await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(StoreError::Unavailable(msg)) if msg.contains("KG_DUPLICATE") => {
                Err(StoreError::Duplicate)
            }
            Err(StoreError::Unavailable(msg)) if msg.contains("KG_CHANGED") => {
                Err(StoreError::Changed)
            }
            Err(StoreError::Unavailable(msg)) if msg.contains("KG_OWNER_CAP") => {
                Err(StoreError::OwnerCap {
                    owner: (batch.inserts.first().map(|(_, r)| r.owner.clone()))
                        .or_else(|| batch.updates.first().map(|u| u.after.owner.clone()))
                        .unwrap_or_default(),
                    max: batch.max_per_owner.unwrap_or(0),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn usage_of(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.name("last_used");
        let ids = ids.to_vec();
        self.run(MANAGEMENT_TIMEOUT, async move |mut c| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&ids)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Takes the owner's keys that stopped counting against the cap by time alone (expired:
    /// no write says so) out of its set before a capped insert counts it (`prune.lua`).
    async fn prune_owner(&self, owner: &str) -> Result<(), StoreError> {
        let set = self.name(&format!("owner:{owner}"));
        let members = set.clone();
        let ids: Vec<String> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("SMEMBERS")
                    .arg(&members)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(());
        }
        let id_keys: Vec<String> = ids
            .iter()
            .map(|id| self.name(&format!("id:{id}")))
            .collect();
        let hashes: Vec<Option<String>> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("MGET").arg(&id_keys).query_async(&mut c).await
            })
            .await?;
        let found: Vec<(String, KeyHash)> = ids
            .into_iter()
            .zip(hashes)
            .filter_map(|(id, h)| Some((id, KeyHash::from_hex(&h?)?)))
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = found.iter().map(|(_, h)| self.key(h)).collect();
        let docs: Vec<Option<String>> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await?;
        let now = SystemTime::now();
        let mut invocation = self.prune.prepare_invoke();
        invocation.key(&set);
        let mut any = false;
        for ((id, hash), doc) in found.iter().zip(docs) {
            let Some(doc) = doc else { continue };
            if counts_against_cap(&parse_record(&doc)?, now) {
                continue;
            }
            invocation.key(self.key(hash)).arg(id).arg(doc);
            any = true;
        }
        if !any {
            return Ok(());
        }
        let _: u64 = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    async fn records(&self, ids: Vec<String>) -> Result<Vec<(KeyHash, KeyRecord)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_keys: Vec<String> = ids
            .iter()
            .map(|id| self.name(&format!("id:{id}")))
            .collect();
        let hashes: Vec<Option<String>> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("MGET").arg(&id_keys).query_async(&mut c).await
            })
            .await?;
        let hashes: Vec<KeyHash> = hashes
            .iter()
            .flatten()
            .filter_map(|h| KeyHash::from_hex(h))
            .collect();
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.key(h)).collect();
        let docs: Vec<Option<String>> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await
            })
            .await?;
        let mut out = Vec::with_capacity(docs.len());
        for (hash, doc) in hashes.into_iter().zip(docs) {
            if let Some(doc) = doc {
                out.push((hash, parse_record(&doc)?));
            }
        }
        let ids: Vec<String> = out.iter().map(|(_, r)| r.id.clone()).collect();
        for ((_, record), used) in out.iter_mut().zip(self.usage_of(&ids).await?) {
            record.last_used_at = used.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        }
        Ok(out)
    }
}

#[async_trait::async_trait]
impl KeyStore for RedisStore {
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let key = self.key(hash);
        let doc: Option<String> = self
            .run(self.config.timeout, async move |mut c| {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        doc.map(|d| parse_record(&d).map(Arc::new)).transpose()
    }

    async fn by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        Ok(self.records(vec![id.to_owned()]).await?.pop())
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        let key = self.name("ids");
        let ids: Vec<String> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            out.extend(
                self.records(chunk.to_vec())
                    .await?
                    .into_iter()
                    .map(|(_, r)| r)
                    .filter(|r| owner.is_none_or(|o| r.owner == o)),
            );
        }
        Ok(out)
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.max_per_owner.is_some() {
            // Keys expired by time alone leave their owner's set first, so that neither they
            // nor (an edit lifting an expiry) the key being changed count twice.
            let owners: std::collections::BTreeSet<&str> = (batch.inserts.iter())
                .map(|(_, r)| r.owner.as_str())
                .chain(batch.updates.iter().map(|u| u.after.owner.as_str()))
                .collect();
            for owner in owners {
                self.prune_owner(owner).await?;
            }
        }
        if batch.updates.is_empty()
            && batch.deletes.is_empty()
            && batch.inserts.len() > INSERT_CHUNK
        {
            // Each chunk carries the events of its own keys: atomic per chunk, as the keys are.
            let mut events: std::collections::HashMap<&str, Vec<&crate::keys::audit::AuditEvent>> =
                std::collections::HashMap::new();
            for event in &batch.events {
                let id = event.key_id.as_deref().unwrap_or_default();
                events.entry(id).or_default().push(event);
            }
            for chunk in batch.inserts.chunks(INSERT_CHUNK) {
                let events = (chunk.iter())
                    .flat_map(|(_, r)| events.remove(r.id.as_str()).unwrap_or_default())
                    .cloned()
                    .collect();
                self.commit_chunk(&Batch {
                    inserts: chunk.to_vec(),
                    max_per_owner: batch.max_per_owner,
                    events,
                    ..Batch::default()
                })
                .await?;
            }
            return Ok(());
        }
        self.commit_chunk(&batch).await
    }

    async fn append_audit(
        &self,
        events: &[crate::keys::audit::AuditEvent],
    ) -> Result<(), StoreError> {
        /// `XADD`s per pipeline (`keys create --count` makes many events).
        const AUDIT_CHUNK: usize = 1_000;
        let key = self.name("audit");
        for chunk in events.chunks(AUDIT_CHUNK) {
            let mut pipe = redis::pipe();
            for event in chunk {
                let json = serde_json::to_string(event).expect("audit events serialize");
                pipe.cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(AUDIT_MAX_EVENTS)
                    .arg("*")
                    .arg("e")
                    .arg(json)
                    .ignore();
            }
            self.run(MANAGEMENT_TIMEOUT, async move |mut c| {
                pipe.query_async::<()>(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    async fn audit_events(
        &self,
        query: &crate::keys::audit::AuditQuery,
    ) -> Result<Vec<crate::keys::audit::AuditEvent>, StoreError> {
        let key = self.name("audit");
        // Stream ids are milliseconds since the epoch: `since` starts the range there.
        let start = query.since.map_or("-".to_owned(), |since| {
            since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                .to_string()
        });
        let entries: Vec<(String, std::collections::HashMap<String, String>)> = self
            .run(MANAGEMENT_TIMEOUT, async move |mut c| {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let events = entries
            .into_iter()
            .filter_map(|(_, fields)| serde_json::from_str(fields.get("e")?).ok());
        Ok(query.apply(events))
    }

    async fn record_usage(&self, used: Vec<(String, SystemTime)>) -> Result<(), StoreError> {
        /// Fields per `HSET` of the last-used write-behind.
        const USAGE_CHUNK: usize = 500;
        let key = self.name("last_used");
        let mut fields: Vec<(String, u64)> = Vec::with_capacity(used.len());
        for (id, at) in used {
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            fields.push((id, secs));
        }
        // One HSET per chunk, each awaited: a single command with every field of a busy
        // period (90,000 ids in 10 s were seen) holds Redis and this process's multiplexed
        // connection long enough that key reads queued behind it time out.
        for chunk in fields.chunks(USAGE_CHUNK) {
            self.run(self.config.timeout, async |mut c| {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(chunk)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await?;
        }
        Ok(())
    }

    fn watch(self: Arc<Self>, sink: ChangeSink, shutdown: CancellationToken) {
        self.feed(sink, shutdown);
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn quotas(self: Arc<Self>) -> Option<Arc<dyn crate::limits::QuotaStore>> {
        Some(self)
    }

    fn failures(self: Arc<Self>) -> Option<Arc<dyn crate::guard::SharedFailures>> {
        Some(self)
    }
}

/// A record as stored: `last_used_at` lives in its own hash, so a usage write never races a
/// management change of the record.
fn record_json(record: &KeyRecord) -> String {
    let mut r = record.clone();
    r.last_used_at = None;
    serde_json::to_string(&r).expect("key records always serialize")
}

fn parse_record(doc: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        path: "redis".into(),
        message: format!("unreadable key record: {e}"),
    })
}

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((50u64 << attempt.min(5)).min(2_000))
}

/// The URL with any password replaced, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:****@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact("redis://:pw@h:1"), "redis://:****@h:1");
        assert_eq!(redact("rediss://user:pw@h:1/0"), "rediss://user:****@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
