//! Key management shared by every store: create, change status, rotate. Each operation reads,
//! decides in Rust, and hands the store one atomic [`Batch`]; a concurrent writer makes the
//! compare-and-set fail and the operation re-reads and retries.

use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::Serialize;

use super::{
    Batch, Environment, KeyHash, KeyRecord, KeyStore, KeyType, Status, StoreError, Update,
};
use crate::credential;

/// How often a compare-and-set update is retried against concurrent writers.
const CAS_ATTEMPTS: usize = 5;

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
    pub limits: crate::limits::Limits,
    pub workspace: Option<String>,
    pub project: Option<String>,
    /// The only headers the key will be accepted in; empty: any.
    pub headers: Vec<credential::CredentialHeader>,
}

/// A freshly created key: the only moment the secret exists outside the caller's hands.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub record: KeyRecord,
    pub key: String,
}

/// The `[keys]` settings that shape new keys.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub prefix: String,
    pub max_per_owner: Option<u32>,
}

impl From<&super::KeysConfig> for KeyPolicy {
    fn from(c: &super::KeysConfig) -> Self {
        Self {
            prefix: c.prefix.clone(),
            max_per_owner: c.max_per_owner,
        }
    }
}

/// A change to an existing record's status.
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

/// Creates `count` keys with the same spec in one atomic write (fleets, load tests).
pub async fn create_many(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    spec: KeySpec,
    count: usize,
    now: SystemTime,
) -> Result<Vec<CreatedKey>, StoreError> {
    validate_spec(&spec)?;
    let mut created = Vec::with_capacity(count);
    for _ in 0..count {
        created.push(new_key(policy, &spec, now)?);
    }
    let inserts = created
        .iter()
        .map(|c| (KeyHash::of(&c.key), c.record.clone()))
        .collect();
    store
        .commit(Batch {
            inserts,
            updates: Vec::new(),
            max_per_owner: policy.max_per_owner,
        })
        .await?;
    Ok(created)
}

/// Applies `change` to the key with `id` and returns the updated record.
pub async fn update(
    store: &dyn KeyStore,
    id: &str,
    change: Change,
) -> Result<KeyRecord, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let (hash, before) = current(store, id).await?;
        let mut after = before.clone();
        change.apply(&mut after)?;
        match store
            .commit(single_update(hash, before, after.clone()))
            .await
        {
            Err(StoreError::Changed) => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(after),
        }
    }
    Err(StoreError::Changed)
}

/// Issues a new key with the same settings as `id` and lets the old one work for `grace`
/// more (then it expires), in one atomic write. Returns the new key.
pub async fn rotate(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    id: &str,
    grace: Duration,
    now: SystemTime,
) -> Result<CreatedKey, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let (hash, before) = current(store, id).await?;
        if before.status == Status::Revoked {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                status: before.status,
                message: "a revoked key cannot be rotated; create a new one",
            });
        }
        let spec = KeySpec {
            name: before.name.clone(),
            owner: before.owner.clone(),
            key_type: before.key_type,
            env: before.env,
            scopes: before.scopes.clone(),
            allowed_cidrs: before.allowed_cidrs.clone(),
            expires_at: before.expires_at.filter(|at| *at > now),
            plan: before.plan.clone(),
            limits: before.limits.clone(),
            workspace: before.workspace.clone(),
            project: before.project.clone(),
            headers: before.headers.clone(),
        };
        let created = new_key(policy, &spec, now)?;
        let mut after = before.clone();
        let grace_end = now + grace;
        after.expires_at = Some(after.expires_at.map_or(grace_end, |at| at.min(grace_end)));
        let mut batch = single_update(hash, before, after);
        batch.inserts = vec![(KeyHash::of(&created.key), created.record.clone())];
        // The old key still counts until it expires, so the cap cannot block a rotation.
        batch.max_per_owner = None;
        match store.commit(batch).await {
            Err(StoreError::Changed) => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(created),
        }
    }
    Err(StoreError::Changed)
}

/// The stored record for `id`, as compare-and-set expects it: without `last_used_at`, which
/// stores keep apart from the record.
async fn current(store: &dyn KeyStore, id: &str) -> Result<(KeyHash, KeyRecord), StoreError> {
    let (hash, mut record) = store
        .by_id(id)
        .await?
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
    record.last_used_at = None;
    Ok((hash, record))
}

fn single_update(hash: KeyHash, before: KeyRecord, after: KeyRecord) -> Batch {
    Batch {
        inserts: Vec::new(),
        updates: vec![Update {
            hash,
            before,
            after,
        }],
        max_per_owner: None,
    }
}

fn new_key(policy: &KeyPolicy, spec: &KeySpec, now: SystemTime) -> Result<CreatedKey, StoreError> {
    let rng_err = |e: getrandom::Error| StoreError::Unavailable(format!("OS random source: {e}"));
    let key = credential::generate_key(&policy.prefix, spec.key_type, spec.env).map_err(rng_err)?;
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
        limits: spec.limits.clone(),
        workspace: spec.workspace.clone(),
        project: spec.project.clone(),
        headers: spec.headers.clone(),
        status: Status::Active,
        created_at: now,
        last_used_at: None,
    };
    Ok(CreatedKey { record, key })
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
    spec.limits
        .check()
        .map_err(|e| StoreError::InvalidSpec(format!("--limit: {e}")))?;
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
