//! What a key is ([`KeyRecord`]), where records live ([`KeyStore`]), and the management
//! operations every store shares ([`create`], [`KeySpec`]).
//!
//! Stores are indexed by [`KeyHash`], the SHA-256 of the full key: the secret itself is never
//! stored, so a leaked keys file or Redis dump cannot be replayed.

pub mod file;

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::credential;

/// SHA-256 of a full key string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

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
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("hash must be 64 hex digits"))
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

/// What a caller asks for when creating a key.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub name: String,
    pub owner: String,
    pub key_type: KeyType,
    pub env: Environment,
    pub scopes: Vec<String>,
    pub allowed_cidrs: Vec<IpNet>,
    pub expires_at: Option<SystemTime>,
    pub plan: Option<String>,
    pub workspace: Option<String>,
    pub project: Option<String>,
}

/// A freshly created key: the only moment the secret exists outside the caller's hands.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub record: KeyRecord,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store unavailable: {0}")]
    Unavailable(String),
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
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A change to an existing record, applied atomically by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Revoke,
    Suspend,
    Resume,
}

impl Change {
    /// Applies the change, refusing transitions that make no sense. Revocation is final.
    pub fn apply(self, record: &mut KeyRecord) -> Result<(), StoreError> {
        let conflict = |message| {
            Err(StoreError::Conflict {
                id: record.id.clone(),
                status: record.status,
                message,
            })
        };
        record.status = match (self, record.status) {
            (Change::Revoke, _) => Status::Revoked,
            (_, Status::Revoked) => {
                return conflict("a revoked key cannot be suspended or resumed");
            }
            (Change::Suspend, _) => Status::Suspended,
            (Change::Resume, Status::Suspended) => Status::Active,
            (Change::Resume, Status::Active) => return conflict("the key is not suspended"),
        };
        Ok(())
    }
}

/// Keys that count against `[keys] max_per_owner`: every key not revoked.
pub fn counts_against_cap(record: &KeyRecord) -> bool {
    record.status != Status::Revoked
}

/// Where key records live. The proxy only calls [`KeyStore::get`]; the CLI (and later the
/// admin API) calls the rest. `get` is on the hot path: the file store answers it from memory,
/// and networked stores sit behind the in-process cache.
///
/// Methods are async (boxed by `async_trait`) so that a networked store fits the same trait;
/// one small allocation per lookup is noise next to parsing an HTTP request.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The record for a key hash, `None` if no such key exists.
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError>;

    /// Stores new records, all or none. Fails if an id or hash already exists, or if an owner
    /// would hold more than `max_per_owner` keys (checked atomically with the write).
    async fn insert(
        &self,
        entries: Vec<(KeyHash, KeyRecord)>,
        max_per_owner: Option<u32>,
    ) -> Result<(), StoreError>;

    /// Applies `change` to the record with `id` and returns the updated record.
    async fn update(&self, id: &str, change: Change) -> Result<KeyRecord, StoreError>;

    /// All records, optionally only one owner's, ordered by creation time.
    async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;

    async fn by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.list(None).await?.into_iter().find(|r| r.id == id))
    }
}

/// The `[keys]` settings that shape new keys.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub prefix: String,
    pub max_per_owner: Option<u32>,
}

impl From<&crate::config::KeysConfig> for KeyPolicy {
    fn from(c: &crate::config::KeysConfig) -> Self {
        Self {
            prefix: c.prefix.clone(),
            max_per_owner: c.max_per_owner,
        }
    }
}

/// Generates a key for `spec`, stores only its hash, and returns the key once.
pub async fn create(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    spec: KeySpec,
    now: SystemTime,
) -> Result<CreatedKey, StoreError> {
    let mut created = create_many(store, policy, spec, 1, now).await?;
    Ok(created.pop().expect("create_many returns `count` keys"))
}

/// Creates `count` keys with the same spec in one store write (fleets, load tests).
pub async fn create_many(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    spec: KeySpec,
    count: usize,
    now: SystemTime,
) -> Result<Vec<CreatedKey>, StoreError> {
    validate_spec(&spec)?;
    let rng_err = |e: getrandom::Error| StoreError::Unavailable(format!("OS random source: {e}"));
    let mut created = Vec::with_capacity(count);
    for _ in 0..count {
        let key =
            credential::generate_key(&policy.prefix, spec.key_type, spec.env).map_err(rng_err)?;
        let id = format!("key_{}", credential::random_base62(20).map_err(rng_err)?);
        let record = KeyRecord {
            id,
            name: spec.name.clone(),
            owner: spec.owner.clone(),
            key_type: spec.key_type,
            env: spec.env,
            scopes: spec.scopes.clone(),
            allowed_cidrs: spec.allowed_cidrs.clone(),
            expires_at: spec.expires_at,
            plan: spec.plan.clone(),
            workspace: spec.workspace.clone(),
            project: spec.project.clone(),
            status: Status::Active,
            created_at: now,
            last_used_at: None,
        };
        created.push(CreatedKey { record, key });
    }
    let entries = created
        .iter()
        .map(|c| (KeyHash::of(&c.key), c.record.clone()))
        .collect();
    store.insert(entries, policy.max_per_owner).await?;
    Ok(created)
}

fn validate_spec(spec: &KeySpec) -> Result<(), StoreError> {
    let bad = |m: String| Err(StoreError::InvalidSpec(m));
    // Name and owner travel in headers and logs: printable, one line, bounded.
    let printable =
        |s: &str| !s.trim().is_empty() && s.len() <= 200 && !s.chars().any(char::is_control);
    if !printable(&spec.name) {
        return bad("--name must be 1-200 printable characters".into());
    }
    if !printable(&spec.owner) {
        return bad("--owner must be 1-200 printable characters".into());
    }
    if spec.scopes.is_empty() {
        return bad("--scopes needs at least one scope (e.g. content:read, or * for all)".into());
    }
    for scope in &spec.scopes {
        crate::routes::check_scope(scope, true).map_err(StoreError::InvalidSpec)?;
    }
    for (flag, value) in [
        ("--workspace", &spec.workspace),
        ("--project", &spec.project),
    ] {
        if let Some(v) = value {
            let ok = !v.is_empty()
                && v.len() <= 100
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return bad(format!(
                    "{flag} {v:?}: use 1-100 letters, digits or _-. (it must match a path segment)"
                ));
            }
        }
    }
    Ok(())
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
