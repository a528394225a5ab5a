//! What a key is ([`KeyRecord`]), where records live ([`KeyStore`]: [`file`], [`redis`]), the
//! cache in front of every store ([`cache`]), and the management operations every store shares
//! ([`manage`]).
//!
//! Stores are indexed by [`KeyHash`], the SHA-256 of the full key: the secret itself is never
//! stored, so a leaked keys file or Redis dump cannot be replayed.

pub mod cache;
pub mod cached;
pub mod file;
pub mod manage;
pub mod packed;
pub mod redis;

pub use manage::{Change, CreatedKey, KeyPolicy, KeySpec};

/// Opens the configured store. Nothing here waits on the network: a Redis store connects on
/// first use, so a proxy can start while Redis is down.
pub fn open(
    config: &crate::config::StoreConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Arc<dyn KeyStore>, StoreError> {
    Ok(match config {
        crate::config::StoreConfig::File {
            path,
            reload_interval,
            last_used_path,
        } => Arc::new(file::FileStore::open_with(
            path,
            *reload_interval,
            last_used_path.clone(),
        )?),
        crate::config::StoreConfig::Redis(redis) => {
            Arc::new(redis::RedisStore::new(redis.clone(), metrics)?)
        }
    })
}

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 of a full key string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// A SHA-256 is already uniformly distributed: its first 8 bytes are a perfect table hash, and
/// running SipHash over it again (the std default) is wasted work on every request. Keys are
/// not attacker-chosen in a way that helps: finding SHA-256 inputs that collide in 64 bits of
/// output is a 2^32-work search per bucket, and the maps it feeds are bounded.
#[derive(Clone, Copy, Default)]
pub struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for types other than KeyHash: fold the bytes in (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type KeyHashState = std::hash::BuildHasherDefault<KeyHashHasher>;

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    // Short on purpose: the hash is not secret, but full hashes in logs invite grepping for
    // them elsewhere and add nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize`: loading a million-key file must not
        // leave a million freed temporaries behind in the allocator (see `keys::file`).
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = KeyHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 hash as 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KeyHash, E> {
                KeyHash::from_hex(s).ok_or_else(|| E::custom("hash must be 64 hex digits"))
            }
        }
        d.deserialize_str(Hex)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Full access to its scopes.
    Secret,
    /// Safe to embed in a browser or app: read-only whatever its scopes say.
    Public,
}

impl KeyType {
    /// The two letters inside the key string.
    pub fn code(self) -> &'static str {
        match self {
            Self::Secret => "sk",
            Self::Public => "pk",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Production.
    Live,
    /// Sandbox.
    Test,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Revoked,
    Suspended,
}

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
    pub status: Status,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_used_at: Option<SystemTime>,
}

#[cfg(test)]
impl KeyRecord {
    /// An active, unbound, unlimited secret live key holding every scope: the base that unit
    /// tests adjust.
    pub(crate) fn for_tests() -> Self {
        KeyRecord {
            id: "key_1".into(),
            name: "n".into(),
            owner: "acme".into(),
            key_type: KeyType::Secret,
            env: Environment::Live,
            scopes: vec!["*".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: None,
            limits: Default::default(),
            workspace: None,
            project: None,
            status: Status::Active,
            created_at: SystemTime::UNIX_EPOCH,
            last_used_at: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within its budget (as opposed to refusing or failing).
    #[error("key store timed out: {0}")]
    TimedOut(String),
    #[error("keys file {path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("no key with id {0:?}")]
    NotFound(String),
    #[error("invalid key spec: {0}")]
    InvalidSpec(String),
    #[error(
        "owner {owner:?} already has {max} keys, the most [keys] max_per_owner allows; revoke one first"
    )]
    OwnerCap { owner: String, max: u32 },
    #[error("key {id} is {status:?}: {message}")]
    Conflict {
        id: String,
        status: Status,
        message: &'static str,
    },
    #[error("a key with this id or hash already exists")]
    Duplicate,
    #[error("the key changed while it was being updated; try again")]
    Changed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
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
    /// Fail with [`StoreError::OwnerCap`] if an owner would hold more live keys than this.
    pub max_per_owner: Option<u32>,
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

    /// Applies `batch` atomically, and tells every watching proxy.
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;

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
