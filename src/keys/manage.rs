//! Key management shared by every store and by both front ends (the CLI and the HTTP API):
//! what a caller asks for ([`Draft`], [`Edit`]) validated into changes, then create, change
//! status, edit, rotate. Each operation reads, decides in Rust, and hands the store one atomic
//! [`Batch`]; a concurrent writer makes the compare-and-set fail and the operation re-reads and
//! retries. [`super::audit::Trail`] wraps these with the audit trail.

use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Batch, Environment, KeyHash, KeyRecord, KeyStore, KeyType, Status, StoreError, Update,
};
use crate::credential;

/// How often a compare-and-set update is retried against concurrent writers.
const CAS_ATTEMPTS: usize = 5;

/// Sets the audit events a batch commits with its change ([`Batch::events`]): how
/// [`super::audit::Trail`] makes an action and its event one write. Called on the batch as it
/// is about to be committed, before every attempt (a retry after a concurrent write commits a
/// different batch).
pub type Stamp<'a> = &'a (dyn Fn(&mut Batch) + Send + Sync);

/// No audit events (tests, the demo).
pub const UNSTAMPED: Stamp<'static> = &|_| {};

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
    /// Browser origins a public key may be called from (`crate::cors`); empty: the default.
    pub allowed_origins: Vec<String>,
}

impl KeySpec {
    /// The settings of an existing key.
    pub fn of(record: &KeyRecord) -> Self {
        Self {
            name: record.name.clone(),
            owner: record.owner.clone(),
            key_type: record.key_type,
            env: record.env,
            scopes: record.scopes.clone(),
            allowed_cidrs: record.allowed_cidrs.clone(),
            expires_at: record.expires_at,
            plan: record.plan.clone(),
            limits: record.limits.clone(),
            workspace: record.workspace.clone(),
            project: record.project.clone(),
            headers: record.headers.clone(),
            allowed_origins: record.allowed_origins.clone(),
        }
    }
}

/// A key to create as a person or a program states it (CLI flags, an API body): text that
/// [`Draft::into_spec`] validates into a [`KeySpec`]. Errors name the field as the API does;
/// the CLI's flags have the same names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    pub name: String,
    pub scopes: Vec<String>,
    #[serde(rename = "type", default)]
    pub key_type: Option<KeyType>,
    #[serde(default)]
    pub env: Option<Environment>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    /// Overrides of the plan's limits: `per_second`, `per_hour`, …
    #[serde(default)]
    pub limits: BTreeMap<String, u64>,
    /// `30d`, `12h`, `never`.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// RFC 3339.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// The only credential headers the key is accepted in (`authorization`, `x-api-key`,
    /// `project-access-token`); empty: any configured one.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Browser origins a public key may be called from (`https://app.example.com`,
    /// `https://*.example.com`); empty: `[cors] allow_origins`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn invalid<T>(message: String) -> Result<T, StoreError> {
    Err(StoreError::InvalidSpec(message))
}

/// `headers`: known credential headers, each once, each one the proxy reads keys from (a key
/// bound to a header keygate ignores could never be used).
fn header_binding(
    names: &[String],
    configured: &[credential::CredentialHeader],
) -> Result<Vec<credential::CredentialHeader>, StoreError> {
    let mut headers = Vec::new();
    for name in names {
        let Some(header) = credential::CredentialHeader::from_name(name) else {
            return invalid(format!(
                "headers {name:?}: use authorization, x-api-key or project-access-token"
            ));
        };
        if !configured.contains(&header) {
            return invalid(format!(
                "headers {name:?}: not in [auth] credential_headers, so the key could never be \
                 used; add it there first"
            ));
        }
        headers.push(header);
    }
    // One order for every record (and the file store's packed form).
    Ok(credential::HeaderSet::of(&headers).iter().collect())
}

/// `allowed_origins`: origin patterns (`crate::cors`), on a public key only (a secret key in
/// a web page is a leaked secret).
fn origins(values: &[String], key_type: KeyType) -> Result<Vec<String>, StoreError> {
    if !values.is_empty() && key_type != KeyType::Public {
        return invalid(
            "allowed_origins: only public keys (type public) are for browsers; a secret key in \
             a web page is a leaked secret"
                .into(),
        );
    }
    let mut list: Vec<String> = Vec::new();
    for value in values {
        if let Err(e) = crate::cors::OriginPattern::parse(value) {
            return invalid(format!("allowed_origins {e}"));
        }
        if !list.contains(value) {
            list.push(value.clone());
        }
    }
    Ok(list)
}

/// `plan`, checked against the config's plans.
fn check_plan(plan: &str, limits: &crate::limits::LimitsConfig) -> Result<(), StoreError> {
    if limits.plans.contains_key(plan) {
        return Ok(());
    }
    let known: Vec<&String> = limits.plans.keys().collect();
    invalid(format!(
        "plan {plan:?}: no [plans.{plan}] in the config (defined: {known:?})"
    ))
}

/// `expires_in` (`30d`, `never`) or `expires_at` (RFC 3339), at most one, in the future.
pub fn expiry(
    expires_in: Option<&str>,
    expires_at: Option<&str>,
    now: SystemTime,
) -> Result<Option<SystemTime>, StoreError> {
    let at = match (expires_in, expires_at) {
        (Some(_), Some(_)) => return invalid("give expires_in or expires_at, not both".into()),
        (Some(lifetime), None) => lifetime_of(lifetime)?.map(|d| now + d),
        (None, Some(at)) => Some(parse_time("expires_at", at)?),
        (None, None) => None,
    };
    if at.is_some_and(|at| at <= now) {
        return invalid("the expiry must be in the future".into());
    }
    Ok(at)
}

/// An RFC 3339 time (`2027-01-01T00:00:00Z`) for the field `field`.
pub fn parse_time(field: &str, at: &str) -> Result<SystemTime, StoreError> {
    humantime::parse_rfc3339_weak(at).or_else(|e| {
        invalid(format!(
            "{field} {at:?}: {e}; use RFC 3339 like 2027-01-01T00:00:00Z"
        ))
    })
}

/// A rotation's grace period: `1h`, `7d`, `0s` (expire the old key now).
pub fn grace(s: &str) -> Result<Duration, StoreError> {
    if s.trim_start().starts_with('-') {
        return invalid(format!(
            "grace {s:?}: a grace period cannot be negative; use e.g. 1h, 7d, or 0s to end \
             the old key now"
        ));
    }
    humantime::parse_duration(s)
        .or_else(|e| invalid(format!("grace {s:?}: {e}; use e.g. 1h, 7d or 0s")))
}

/// `30d`, `12h`, `1h 30m` or `never`.
pub fn lifetime_of(s: &str) -> Result<Option<Duration>, StoreError> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    if s.trim_start().starts_with('-') {
        return invalid(format!(
            "expires_in {s:?}: a lifetime counts forward from now and cannot be negative; \
             use e.g. 30d, 90d, 12h or never (or expires_at for a fixed time)"
        ));
    }
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => invalid(format!(
            "expires_in {s:?}: a key must live longer than 0; use e.g. 30d, 90d, 12h or never"
        )),
        Err(e) => invalid(format!(
            "expires_in {s:?}: {e}; use e.g. 30d, 90d, 12h or never"
        )),
    }
}

fn cidrs(list: &[String]) -> Result<Vec<IpNet>, StoreError> {
    list.iter()
        .map(|s| crate::vocab::parse_net(s).or_else(|e| invalid(format!("allowed_cidrs: {e}"))))
        .collect()
}

/// Limit overrides by name (`per_hour` → 5000).
fn limits_of(map: &BTreeMap<String, u64>) -> Result<crate::limits::Limits, StoreError> {
    let mut limits = crate::limits::Limits::default();
    for (name, value) in map {
        limits
            .set(name, *value)
            .or_else(|e| invalid(format!("limits: {e}")))?;
    }
    Ok(limits)
}

impl Draft {
    /// The spec this draft asks for, or what is wrong with it ([`StoreError::InvalidSpec`]).
    pub fn into_spec(
        self,
        limits_config: &crate::limits::LimitsConfig,
        credential_headers: &[credential::CredentialHeader],
        now: SystemTime,
    ) -> Result<KeySpec, StoreError> {
        if let Some(plan) = &self.plan {
            check_plan(plan, limits_config)?;
        }
        let limits = limits_of(&self.limits)?;
        let key_type = self.key_type.unwrap_or(KeyType::Secret);
        let spec = KeySpec {
            headers: header_binding(&self.headers, credential_headers)?,
            allowed_origins: origins(&self.allowed_origins, key_type)?,
            expires_at: expiry(self.expires_in.as_deref(), self.expires_at.as_deref(), now)?,
            allowed_cidrs: cidrs(&self.allowed_cidrs)?,
            name: self.name,
            owner: self.owner.unwrap_or_else(|| "default".into()),
            key_type,
            env: self.env.unwrap_or(Environment::LIVE),
            scopes: self.scopes,
            plan: self.plan,
            limits,
            workspace: self.workspace,
            project: self.project,
        };
        validate_spec(&spec)?;
        Ok(spec)
    }
}

/// Changes to an existing key's settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edit {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<SystemTime>>,
    pub allowed_cidrs: Option<Vec<IpNet>>,
    /// `Some(None)` removes the plan (the default plan applies).
    pub plan: Option<Option<String>>,
    /// Replaces the key's own limit overrides (empty: the plan's limits).
    pub limits: Option<crate::limits::Limits>,
    /// Replaces a public key's browser origins (empty: `[cors] allow_origins`); checked
    /// against the key's type when applied.
    pub allowed_origins: Option<Vec<String>>,
}

/// An [`Edit`] as an API body states it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditDraft {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// RFC 3339, or `null` for no expiry.
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<String>>,
    #[serde(default)]
    pub allowed_cidrs: Option<Vec<String>>,
    /// A plan name, or `null` for the default plan.
    #[serde(default, deserialize_with = "present")]
    pub plan: Option<Option<String>>,
    /// The key's own limit overrides, replacing the ones it has (`{}`: none).
    #[serde(default)]
    pub limits: Option<BTreeMap<String, u64>>,
    /// A public key's browser origins, replacing the ones it has (`[]`: `[cors]
    /// allow_origins`).
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl EditDraft {
    pub fn into_edit(
        self,
        limits_config: &crate::limits::LimitsConfig,
        now: SystemTime,
    ) -> Result<Edit, StoreError> {
        if let Some(Some(plan)) = &self.plan {
            check_plan(plan, limits_config)?;
        }
        let expires_at = match self.expires_at {
            None => None,
            Some(None) => Some(None),
            Some(Some(at)) => {
                let at = parse_time("expires_at", &at)?;
                if at <= now {
                    return invalid("the expiry must be in the future".into());
                }
                Some(Some(at))
            }
        };
        Ok(Edit {
            limits: self.limits.as_ref().map(limits_of).transpose()?,
            name: self.name,
            scopes: self.scopes,
            expires_at,
            allowed_cidrs: self.allowed_cidrs.as_deref().map(cidrs).transpose()?,
            plan: self.plan,
            allowed_origins: self.allowed_origins,
        })
    }
}

impl Edit {
    /// The names of the fields this edit sets (for the audit trail).
    pub fn fields(&self) -> Vec<String> {
        [
            ("name", self.name.is_some()),
            ("scopes", self.scopes.is_some()),
            ("expires_at", self.expires_at.is_some()),
            ("allowed_cidrs", self.allowed_cidrs.is_some()),
            ("plan", self.plan.is_some()),
            ("limits", self.limits.is_some()),
            ("allowed_origins", self.allowed_origins.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_owned())
        .collect()
    }

    /// Applies the edit to `record`, checking the result as a new key's spec is checked.
    fn apply(&self, record: &mut KeyRecord) -> Result<(), StoreError> {
        if record.status == Status::Revoked {
            return Err(StoreError::Conflict {
                id: record.id.clone(),
                status: record.status,
                message: "a revoked key cannot be changed",
            });
        }
        if let Some(name) = &self.name {
            record.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            record.scopes.clone_from(scopes);
        }
        if let Some(at) = self.expires_at {
            // A rotated-out key holds no cap slot of its own only because its grace ends.
            let extends = match (record.expires_at, at) {
                (Some(old), Some(new)) => new > old,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if record.rotated_to.is_some() && extends {
                return Err(StoreError::Conflict {
                    id: record.id.clone(),
                    status: record.status,
                    message: "the key was rotated out; its grace period cannot be extended",
                });
            }
            record.expires_at = at;
        }
        if let Some(cidrs) = &self.allowed_cidrs {
            record.allowed_cidrs.clone_from(cidrs);
        }
        if let Some(plan) = &self.plan {
            record.plan.clone_from(plan);
        }
        if let Some(limits) = &self.limits {
            record.limits.clone_from(limits);
        }
        if let Some(list) = &self.allowed_origins {
            record.allowed_origins = origins(list, record.key_type)?;
        }
        validate_spec(&KeySpec::of(record))
    }
}

/// Applies `edit` to the key with `id` and returns the updated record. An edit that makes a
/// key count against `[keys] max_per_owner` again (a new expiry for an expired key) needs a
/// free slot, as a create does: the store checks the cap for it.
pub async fn edit(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    id: &str,
    edit: Edit,
    stamp: Stamp<'_>,
) -> Result<KeyRecord, StoreError> {
    modify(store, id, policy.max_per_owner, stamp, |record| {
        edit.apply(record)
    })
    .await
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

/// Keys that count against `[keys] max_per_owner` at `now`: every key that can still be used
/// (not revoked, not expired) and has not been rotated out. A key in its rotation grace shares
/// its slot with the key that replaced it, so a rotation never needs a free slot, and rotating
/// the same key twice during its grace (two successors) does.
pub fn counts_against_cap(record: &KeyRecord, now: SystemTime) -> bool {
    record.status != Status::Revoked && !is_expired(record, now) && record.rotated_to.is_none()
}

/// Whether the key's expiry has passed at `now` (as the proxy decides: expired at the instant).
pub fn is_expired(record: &KeyRecord, now: SystemTime) -> bool {
    record.expires_at.is_some_and(|at| at <= now)
}

/// What the proxy would make of the key at `now`, as `keys list`/`show` print it: `revoked`
/// and `suspended` as stored (the proxy checks those first), then `expired` for an active key
/// past its expiry, else `active`. The stored status of an expired key stays `active`: expiry
/// is a time, not a write.
pub fn effective_status(record: &KeyRecord, now: SystemTime) -> &'static str {
    match record.status {
        Status::Revoked => "revoked",
        Status::Suspended => "suspended",
        Status::Active if is_expired(record, now) => "expired",
        Status::Active => "active",
    }
}

/// A record as the CLI and the API show it: `status` is [`effective_status`], so an expired
/// key reads `expired`, not `active`.
pub fn view(record: &KeyRecord, now: SystemTime) -> serde_json::Value {
    let mut value = serde_json::to_value(record).expect("key records always serialize");
    value["status"] = effective_status(record, now).into();
    value
}

/// The words [`effective_status`] says, for filters that take one.
pub const EFFECTIVE_STATUSES: [&str; 4] = ["active", "suspended", "revoked", "expired"];

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
    create_many_by(store, policy, spec, count, now, None, UNSTAMPED).await
}

/// [`create_many`], the keys' `created_by` naming the actor.
pub async fn create_many_by(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    spec: KeySpec,
    count: usize,
    now: SystemTime,
    by: Option<&str>,
    stamp: Stamp<'_>,
) -> Result<Vec<CreatedKey>, StoreError> {
    validate_spec(&spec)?;
    let mut created = Vec::with_capacity(count);
    for _ in 0..count {
        created.push(new_key(policy, &spec, now, by)?);
    }
    let inserts = created
        .iter()
        .map(|c| (KeyHash::of(&c.key), c.record.clone()))
        .collect();
    let mut batch = Batch {
        inserts,
        max_per_owner: policy.max_per_owner,
        ..Batch::default()
    };
    stamp(&mut batch);
    store.commit(batch).await?;
    Ok(created)
}

/// Applies `change` to the key with `id` and returns the updated record.
pub async fn update(
    store: &dyn KeyStore,
    id: &str,
    change: Change,
) -> Result<KeyRecord, StoreError> {
    update_by(store, id, change, None, SystemTime::now(), UNSTAMPED).await
}

/// [`update`], a revocation recording when and by whom (`revoked_at`, `revoked_by`).
pub async fn update_by(
    store: &dyn KeyStore,
    id: &str,
    change: Change,
    by: Option<&str>,
    now: SystemTime,
    stamp: Stamp<'_>,
) -> Result<KeyRecord, StoreError> {
    // A status change never makes a key count against the cap again (a suspended key
    // counts; a revoked one never returns): no cap to check.
    modify(store, id, None, stamp, |record| {
        let was = record.status;
        change.apply(record)?;
        if change == Change::Revoke && was != Status::Revoked {
            record.revoked_at = Some(now);
            record.revoked_by = by.map(str::to_owned);
        }
        Ok(())
    })
    .await
}

/// Changes the record of `id` with `change` by compare-and-set, re-reading and retrying when
/// a concurrent writer got there first.
async fn modify(
    store: &dyn KeyStore,
    id: &str,
    max_per_owner: Option<u32>,
    stamp: Stamp<'_>,
    change: impl Fn(&mut KeyRecord) -> Result<(), StoreError>,
) -> Result<KeyRecord, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let (hash, before) = current(store, id).await?;
        let mut after = before.clone();
        change(&mut after)?;
        let mut batch = single_update(hash, before, after.clone());
        batch.max_per_owner = max_per_owner;
        stamp(&mut batch);
        match store.commit(batch).await {
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
    rotate_by(store, policy, id, grace, now, None, UNSTAMPED).await
}

/// [`rotate`], the new key's `created_by` naming the actor.
pub async fn rotate_by(
    store: &dyn KeyStore,
    policy: &KeyPolicy,
    id: &str,
    grace: Duration,
    now: SystemTime,
    by: Option<&str>,
    stamp: Stamp<'_>,
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
        // An expired key is refused rather than rotated. Its successor would either inherit
        // the expiry (a key dead on arrival) or lose it (a key that never expires, which is
        // how an expiry used to be lifted by accident). Rotation hands working clients over to
        // a new key during a grace period; an expired key has no working clients to hand
        // over, so the honest command is `keys create` with a lifetime chosen anew.
        if is_expired(&before, now) {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                status: before.status,
                message: "the key has expired and cannot be rotated; create a new key with \
                          `keys create --expires-in …` instead",
            });
        }
        // The successor keeps the same expiry: rotating must not extend a key's life.
        let spec = KeySpec::of(&before);
        let mut created = new_key(policy, &spec, now, by)?;
        created.record.rotated_from = Some(before.id.clone());
        let mut after = before.clone();
        after.rotated_to = Some(created.record.id.clone());
        let grace_end = now + grace;
        after.expires_at = Some(after.expires_at.map_or(grace_end, |at| at.min(grace_end)));
        let mut batch = single_update(hash, before, after);
        batch.inserts = vec![(KeyHash::of(&created.key), created.record.clone())];
        // The old key, rotated out, shares its slot with the new one (`counts_against_cap`):
        // a rotation fits under the cap unless the key was already rotated once and that
        // successor still holds a slot.
        batch.max_per_owner = policy.max_per_owner;
        stamp(&mut batch);
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
        updates: vec![Update {
            hash,
            before,
            after,
        }],
        ..Batch::default()
    }
}

/// Removes a revoked key's record for good (its id then answers 404, the key itself
/// `invalid_api_key` like any unknown key). Only a revoked key: revocation is final, so
/// nothing it could still do is lost; an active, suspended or expired key is revoked first
/// (409 otherwise), which leaves the revocation in the audit trail.
pub async fn delete(
    store: &dyn KeyStore,
    id: &str,
    stamp: Stamp<'_>,
) -> Result<KeyRecord, StoreError> {
    for _ in 0..CAS_ATTEMPTS {
        let (hash, record) = current(store, id).await?;
        if record.status != Status::Revoked {
            return Err(StoreError::Conflict {
                id: id.to_owned(),
                status: record.status,
                message: "only a revoked key can be deleted; revoke it first",
            });
        }
        let mut batch = Batch {
            deletes: vec![(hash, record.clone())],
            ..Batch::default()
        };
        stamp(&mut batch);
        match store.commit(batch).await {
            Err(StoreError::Changed) => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(record),
        }
    }
    Err(StoreError::Changed)
}

fn new_key(
    policy: &KeyPolicy,
    spec: &KeySpec,
    now: SystemTime,
    by: Option<&str>,
) -> Result<CreatedKey, StoreError> {
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
        allowed_origins: spec.allowed_origins.clone(),
        status: Status::Active,
        hint: Some(credential::hint(&key)),
        created_at: now,
        last_used_at: None,
        created_by: by.map(str::to_owned),
        revoked_at: None,
        revoked_by: None,
        rotated_from: None,
        rotated_to: None,
    };
    Ok(CreatedKey { record, key })
}

fn validate_spec(spec: &KeySpec) -> Result<(), StoreError> {
    let bad = |m: String| Err(StoreError::InvalidSpec(m));
    // Name and owner travel in headers and logs: printable, one line, bounded.
    let printable =
        |s: &str| !s.trim().is_empty() && s.len() <= 200 && !s.chars().any(char::is_control);
    if !printable(&spec.name) {
        return bad("name must be 1-200 printable characters".into());
    }
    if !printable(&spec.owner) {
        return bad("owner must be 1-200 printable characters".into());
    }
    spec.limits
        .check()
        .map_err(|e| StoreError::InvalidSpec(format!("limits: {e}")))?;
    if spec.scopes.is_empty() {
        return bad("scopes needs at least one scope (e.g. content:read, or * for all)".into());
    }
    for scope in &spec.scopes {
        crate::routes::check_scope(scope, true).map_err(StoreError::InvalidSpec)?;
    }
    for (flag, value) in [("workspace", &spec.workspace), ("project", &spec.project)] {
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
    use credential::CredentialHeader::{self, *};

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn header_binding_table() {
        let all = CredentialHeader::all();
        assert_eq!(header_binding(&[], &all).unwrap(), []);
        assert_eq!(
            header_binding(&strings(&["Project-Access-Token"]), &all).unwrap(),
            [ProjectAccessToken]
        );
        assert_eq!(
            header_binding(
                &strings(&["authorization", "x-api-key", "authorization"]),
                &all
            )
            .unwrap(),
            [Authorization, XApiKey]
        );
        let err = header_binding(&strings(&["cookie"]), &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("headers \"cookie\""), "{err}");
        let err = header_binding(&strings(&["project-access-token"]), &[XApiKey])
            .unwrap_err()
            .to_string();
        assert!(err.contains("credential_headers"), "{err}");
    }

    #[test]
    fn origins_are_for_public_keys_and_well_formed() {
        let ok = strings(&["https://app.example.com", "https://*.example.com"]);
        assert_eq!(origins(&ok, KeyType::Public).unwrap(), ok);
        let twice = strings(&["https://a.example", "https://a.example"]);
        assert_eq!(origins(&twice, KeyType::Public).unwrap().len(), 1);
        assert_eq!(origins(&[], KeyType::Secret).unwrap(), Vec::<String>::new());
        let err = origins(&ok, KeyType::Secret).unwrap_err().to_string();
        assert!(err.contains("only public keys"), "{err}");
        let err = origins(&strings(&["app.example.com/path"]), KeyType::Public)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("allowed_origins \"app.example.com/path\""),
            "{err}"
        );
    }
}
