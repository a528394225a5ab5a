//! What a key is ([`KeyRecord`]), where records live ([`KeyStore`]: [`file`](mod@file), [`redis`]), the
//! cache in front of every store ([`cache`], holding each key in the request path's compact
//! form, [`cached_key`]), the management operations every store shares ([`manage`], and
//! [`usage`] for `keys usage`), the audit trail of those operations ([`audit`]), and when a
//! key is due for rotation ([`rotation`]).
//!
//! Stores are indexed by [`KeyHash`], the SHA-256 of the full key: the secret itself is never
//! stored, so a leaked keys file or Redis dump cannot be replayed.

pub mod audit;
pub mod cache;
pub mod cached_key;
pub mod file;
pub mod manage;
pub mod redis;
pub mod rotation;
pub mod usage;

pub use manage::{Change, CreatedKey, KeyPolicy, KeySpec};
// The shared vocabulary lives below every layer (`crate::vocab`); re-exported where keys are
// the subject.
pub use crate::vocab::{
    Environment, KeyHash, KeyHashHasher, KeyHashState, KeyType, Status, StoreError,
};

/// `[store]`, validated: which store holds the keys.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    File {
        path: PathBuf,
        #[serde(with = "humantime_serde")]
        reload_interval: Duration,
        /// Where the proxy writes last-used times; `None`: beside the keys file if that
        /// folder is writable, else in memory (a read-only Secret mount).
        #[serde(skip_serializing_if = "Option::is_none")]
        last_used_path: Option<PathBuf>,
    },
    Redis(redis::RedisConfig),
}

/// `[keys]`, validated.
#[derive(Debug, Clone, Serialize)]
pub struct KeysConfig {
    pub prefix: String,
    /// Live (not revoked) keys one owner may hold; `None` for no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_owner: Option<u32>,
    /// Keys older than this are due for rotation (`rotation`).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// How long before its replace-by date a key is reported due.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub warn_before: Option<Duration>,
}

impl KeysConfig {
    pub fn rotation(&self) -> rotation::RotationPolicy {
        rotation::RotationPolicy {
            max_age: self.max_age,
            warn_before: self.warn_before,
        }
    }
}

/// Opens the configured store for a management command (the CLI): like [`open`], except that
/// the file store does not load its in-memory index (the proxy's; a single-key command finds
/// its key in the file instead).
pub fn open_for_management(
    config: &StoreConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn KeyStore>, StoreError> {
    Ok(match config {
        StoreConfig::File {
            path,
            reload_interval,
            last_used_path,
        } => Arc::new(file::FileStore::open_unloaded(
            path,
            *reload_interval,
            last_used_path.clone(),
        )),
        StoreConfig::Redis(_) => open(config, metrics)?,
    })
}

/// Opens the configured store. Nothing here waits on the network: a Redis store connects on
/// first use, so a proxy can start while Redis is down.
pub fn open(
    config: &StoreConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn KeyStore>, StoreError> {
    Ok(match config {
        StoreConfig::File {
            path,
            reload_interval,
            last_used_path,
        } => Arc::new(file::FileStore::open_with(
            path,
            *reload_interval,
            last_used_path.clone(),
        )?),
        StoreConfig::Redis(redis) => Arc::new(redis::RedisStore::new(redis.clone(), metrics)?),
    })
}

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Everything keygate knows about a key, except the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// Public identifier (`key_…`), safe for logs, headers and URLs.
    pub id: String,
    pub name: String,
    pub owner: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub env: Environment,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_cidrs: Vec<IpNet>,
    #[serde(default, with = "humantime_serde")]
    pub expires_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Limits that override the plan's for this key only.
    #[serde(default, skip_serializing_if = "crate::limits::Limits::is_empty")]
    pub limits: crate::limits::Limits,
    /// Binding: the key only works on `{workspace}` routes for this workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Binding: the key only works on `{project}` routes for this project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Header binding: the only headers the key is accepted in (`keys create --header`);
    /// empty: any configured credential header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<crate::credential::CredentialHeader>,
    /// Browser origins a public key may be called from (`keys create --allow-origin`,
    /// [`crate::cors`]); empty: `[cors] allow_origins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    pub status: Status,
    /// The key's non-secret hint (`kg_sk_live_...a1B2`: its prefix and last 4 characters), so
    /// a person can match a key in their config to its record. Keys made before hints existed
    /// have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_used_at: Option<SystemTime>,
    /// The management key that created this key through the API (`None` for keys made at
    /// the CLI: see [`audit::Actor::creator`]). The history fields are written by the management operations
    /// ([`audit::Trail`]) and never read on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// The key this one replaced by a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
}

#[cfg(test)]
impl KeyRecord {
    /// An active, unbound, unlimited secret live key holding every scope: the base that unit
    /// tests adjust.
    pub(crate) fn for_tests() -> Self {
        KeyRecord {
            allowed_origins: Vec::new(),
            id: "key_1".into(),
            name: "n".into(),
            owner: "acme".into(),
            key_type: KeyType::Secret,
            env: Environment::LIVE,
            scopes: vec!["*".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: None,
            limits: Default::default(),
            workspace: None,
            project: None,
            headers: vec![],
            status: Status::Active,
            hint: None,
            created_at: SystemTime::UNIX_EPOCH,
            last_used_at: None,
            created_by: None,
            revoked_at: None,
            revoked_by: None,
            rotated_from: None,
            rotated_to: None,
        }
    }
}

/// A set of changes a store applies atomically: all or none.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// New keys. Fails with [`StoreError::Duplicate`] if a hash or id exists.
    pub inserts: Vec<(KeyHash, KeyRecord)>,
    /// Compare-and-set updates: applied only if the stored record still equals `before`,
    /// otherwise the whole batch fails with [`StoreError::Changed`] (the caller re-reads and
    /// retries).
    pub updates: Vec<Update>,
    /// Records removed, compare-and-delete: only if the stored record still equals the one
    /// given, as for `updates` (a revoked key's record, `keys delete`).
    pub deletes: Vec<(KeyHash, KeyRecord)>,
    /// Fail with [`StoreError::OwnerCap`] if an owner would hold more keys that count
    /// ([`manage::counts_against_cap`]) than this, counting the inserts and the updates that
    /// make a key count again.
    pub max_per_owner: Option<u32>,
    /// The audit events of this change ([`audit::Trail`]), committed with it: both or neither,
    /// whatever the moment the process is killed.
    pub events: Vec<audit::AuditEvent>,
}

#[derive(Debug, Clone)]
pub struct Update {
    pub hash: KeyHash,
    pub before: KeyRecord,
    pub after: KeyRecord,
}

/// Something changed in the store, seen by a running proxy: the cache drops what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    Key(KeyHash),
    /// The change feed lost track (file reloaded, pub/sub gap): drop everything.
    All,
    /// The feed just checked the store: every change made until now has been reported.
    UpToDate,
    /// The feed could not check just now (its connection may be dead): it vouches for
    /// nothing until its next [`Invalidation::UpToDate`].
    Doubt,
}

/// Where a store's change feed reports invalidations.
pub type ChangeSink = Arc<dyn Fn(Invalidation) + Send + Sync>;

/// Where key records live. The proxy only calls [`KeyStore::get`] (through the cache in
/// [`cache`]) and [`KeyStore::watch`]; the CLI (and later the admin API) the rest, through the
/// operations in [`manage`].
///
/// Methods are async (boxed by `async_trait`) so that a networked store fits the same trait;
/// the boxing only happens on cache misses.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for a key hash, `None` if no such key exists.
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// The record with this public id, with its hash (and `last_used_at` filled in).
    async fn by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError>;

    /// All records, optionally only one owner's, ordered by creation time, with
    /// `last_used_at` filled in.
    async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;

    /// One page of [`KeyStore::list`]: the records `wanted` keeps, in `list`'s order, after
    /// the record with id `after` ([`StoreError::NotFound`] if there is none), at most
    /// `limit`. Stores that can avoid holding every record at once (the file store) do.
    async fn list_page(
        &self,
        owner: Option<&str>,
        wanted: &(dyn for<'r> Fn(&'r KeyRecord) -> bool + Send + Sync),
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut list = self.list(owner).await?;
        if let Some(after) = after {
            let at = list
                .iter()
                .position(|r| r.id == after)
                .ok_or_else(|| StoreError::NotFound(after.to_owned()))?;
            list.drain(..=at);
        }
        Ok(list
            .into_iter()
            .filter(|r| wanted(r))
            .take(limit.unwrap_or(usize::MAX))
            .collect())
    }

    /// Applies `batch` atomically, and tells every watching proxy.
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;

    /// Appends management events that change nothing (refused actions) to the store's audit
    /// trail, in order (durable once this returns). The events of a change go with the change
    /// ([`Batch::events`]).
    async fn append_audit(&self, events: &[audit::AuditEvent]) -> Result<(), StoreError>;

    /// The audit trail's events matching `query`, oldest first.
    async fn audit_events(
        &self,
        query: &audit::AuditQuery,
    ) -> Result<Vec<audit::AuditEvent>, StoreError>;

    /// Records when keys were last used (a batch from the write-behind; never per request).
    async fn record_usage(&self, used: Vec<(String, SystemTime)>) -> Result<(), StoreError>;

    /// When each key was last used, by key id, as far as the store knows (what the admin
    /// listener's `/last-used` serves).
    async fn last_used(&self) -> Result<HashMap<String, SystemTime>, StoreError> {
        Ok(self
            .list(None)
            .await?
            .into_iter()
            .filter_map(|r| Some((r.id, r.last_used_at?)))
            .collect())
    }

    /// Starts the store's change feed: `sink` hears of every change made elsewhere (by the
    /// CLI, another sidecar) until `shutdown`.
    fn watch(self: Arc<Self>, sink: ChangeSink, shutdown: tokio_util::sync::CancellationToken);

    /// A short description for logs: kind and address, never credentials.
    fn describe(&self) -> String;

    /// Where quota counters shared between sidecars live, if this store can hold them
    /// (Redis). `None`: every process counts its own (the file store).
    fn quotas(self: Arc<Self>) -> Option<Arc<dyn crate::limits::QuotaStore>> {
        None
    }

    /// Where the stuffing guard's failure counts are shared between sidecars, if this store
    /// can hold them (Redis). `None`: every process counts its own.
    fn failures(self: Arc<Self>) -> Option<Arc<dyn crate::guard::SharedFailures>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_hex_round_trip() {
        let h = KeyHash::of("kg_sk_live_x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        // Known SHA-256 test vector.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
