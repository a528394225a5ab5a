//! The request path's view of a key: what the cache holds for every known key.
//!
//! A busy sidecar caches up to `[cache] capacity` keys (a million by default), so this form
//! is made small. A [`KeyRecord`] is the store's full form (name, creation and last-use times,
//! every string owned): about 600 bytes with its allocations. A [`CachedKey`] keeps only what
//! admission, limits and forwarding read, and shares what many keys have in common (owner,
//! plan, scope set) through a [`Pool`]: with the cache's own bookkeeping, about 220 bytes per
//! key (measured by `examples/cache_memory.rs` at 80 bytes a `CachedKey`, before `created`
//! added 8; figures in bench/RESULTS.md).

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use compact_str::CompactString;
use http::HeaderValue;
use ipnet::IpNet;

use super::{Environment, KeyRecord, KeyType, Status};
use crate::cors::OriginPattern;
use crate::credential::HeaderSet;
use crate::limits::Limits;

/// A known key as the request path reads it: 88 bytes, plus what it shares.
#[derive(Debug)]
pub struct CachedKey {
    /// Public identifier (`key_…`), safe for logs and headers; held inline (ids the CLI
    /// makes are 24 bytes).
    pub id: CompactString,
    pub owner: Arc<Owner>,
    pub key_type: KeyType,
    pub env: Environment,
    pub status: Status,
    pub scopes: Arc<Scopes>,
    pub plan: Option<Arc<str>>,
    /// Out of line: most keys have none of these, and then they cost 8 bytes.
    restrictions: Option<Box<Restrictions>>,
    /// When the key was created, in seconds since the Unix epoch (rotation reminders).
    created: u32,
    /// When the cache read it from the store, as nanoseconds since the cache started.
    pub(super) fetched: u64,
    /// When the last use was queued for the last-used write-behind: seconds on the cache's
    /// clock, plus one (0: never).
    pub(super) reported: AtomicU32,
}

/// What only some keys carry.
#[derive(Debug)]
struct Restrictions {
    allowed_cidrs: Box<[IpNet]>,
    expires_at: Option<SystemTime>,
    /// The key's own limit overrides.
    limits: Option<Limits>,
    workspace: Option<Box<str>>,
    project: Option<Box<str>>,
    /// The only headers the key is accepted in; empty: any.
    headers: HeaderSet,
    /// Browser origins (a public key); empty: `[cors] allow_origins`.
    origins: Box<[OriginPattern]>,
}

/// A key's owner, and the same as the `X-Keygate-Owner` header value. (The header is made
/// from the name, so comparing and hashing both is comparing and hashing the name.)
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    name: Box<str>,
    header: Option<HeaderValue>,
}

impl Owner {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            header: HeaderValue::from_bytes(name.as_bytes()).ok(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// `None` if the owner cannot be a header value (the header is then left out).
    pub fn header(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }
}

/// A key's scopes, and the same list comma-joined as the `X-Keygate-Scopes` header value
/// (built once per distinct set; forwarding clones it, no formatting per request).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Scopes {
    list: Box<[Box<str>]>,
    header: Option<HeaderValue>,
}

impl Scopes {
    pub fn new(list: &[String]) -> Self {
        Self {
            list: list.iter().map(|s| s.as_str().into()).collect(),
            header: HeaderValue::from_bytes(list.join(",").as_bytes()).ok(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|s| &**s)
    }

    /// `None` if the scopes cannot be a header value (the header is then left out).
    pub fn header(&self) -> Option<&HeaderValue> {
        self.header.as_ref()
    }
}

impl CachedKey {
    /// The cached form of `record`, sharing owner, plan and scopes with other keys in `pool`;
    /// `fetched` is the cache's clock reading when the store returned it.
    pub fn new(record: &KeyRecord, pool: &Pool, fetched: u64) -> Self {
        let mut shared = pool.0.lock().unwrap_or_else(|p| p.into_inner());
        let owner = shared.owners.intern_value(Owner::new(&record.owner));
        let plan = record.plan.as_deref().map(|p| shared.plans.intern(p));
        let scopes = shared.scopes.intern_value(Scopes::new(&record.scopes));
        drop(shared);
        let restricted = !record.allowed_cidrs.is_empty()
            || record.expires_at.is_some()
            || !record.limits.is_empty()
            || record.workspace.is_some()
            || record.project.is_some()
            || !record.headers.is_empty()
            || !record.allowed_origins.is_empty();
        Self {
            id: record.id.as_str().into(),
            owner,
            key_type: record.key_type,
            env: record.env,
            status: record.status,
            scopes,
            plan,
            restrictions: restricted.then(|| {
                Box::new(Restrictions {
                    allowed_cidrs: record.allowed_cidrs.as_slice().into(),
                    expires_at: record.expires_at,
                    limits: (!record.limits.is_empty()).then(|| record.limits.clone()),
                    workspace: record.workspace.as_deref().map(Into::into),
                    project: record.project.as_deref().map(Into::into),
                    headers: HeaderSet::of(&record.headers),
                    // Checked when the key was made; one that no longer parses allows nothing.
                    origins: record
                        .allowed_origins
                        .iter()
                        .filter_map(|o| OriginPattern::parse(o).ok())
                        .collect(),
                })
            }),
            created: record
                .created_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            fetched,
            reported: AtomicU32::new(0),
        }
    }

    /// When the key was created (to the second).
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(self.created.into())
    }

    /// The networks the key may be used from; empty: any.
    pub fn allowed_cidrs(&self) -> &[IpNet] {
        self.restrictions.as_ref().map_or(&[], |r| &r.allowed_cidrs)
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.restrictions.as_ref()?.expires_at
    }

    /// Limits that override the plan's for this key only.
    pub fn limits(&self) -> Option<&Limits> {
        self.restrictions.as_ref()?.limits.as_ref()
    }

    /// The workspace the key is bound to (`{workspace}` route parameters), if any.
    pub fn workspace(&self) -> Option<&str> {
        self.restrictions.as_ref()?.workspace.as_deref()
    }

    /// The project the key is bound to (`{project}` route parameters), if any.
    pub fn project(&self) -> Option<&str> {
        self.restrictions.as_ref()?.project.as_deref()
    }

    /// Browser origins the key may be called from; empty: `[cors] allow_origins`.
    pub fn allowed_origins(&self) -> &[OriginPattern] {
        self.restrictions.as_ref().map_or(&[], |r| &r.origins)
    }

    /// The only headers the key is accepted in; empty: any configured one.
    pub fn headers(&self) -> HeaderSet {
        self.restrictions
            .as_ref()
            .map_or(HeaderSet::EMPTY, |r| r.headers)
    }
}

/// Outside the cache (the CLI's `keys usage`, tests, benchmarks): nothing to share with.
impl From<&KeyRecord> for CachedKey {
    fn from(record: &KeyRecord) -> Self {
        Self::new(record, &Pool::default(), 0)
    }
}

/// The values cached keys share. Only cache misses take its lock.
#[derive(Default)]
pub struct Pool(Mutex<Shared>);

#[derive(Default)]
struct Shared {
    owners: Interner<Owner>,
    plans: Interner<str>,
    scopes: Interner<Scopes>,
}

/// One copy of each distinct value. Values no cached key holds any more are dropped whenever
/// the set has doubled since the last sweep, so churning owners cannot grow it without bound.
struct Interner<T: ?Sized> {
    set: HashSet<Arc<T>>,
    sweep_at: usize,
}

/// Sweeping a small set costs more than it frees.
const MIN_SWEEP: usize = 1024;

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self {
            set: HashSet::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<T: ?Sized + Eq + Hash> Interner<T> {
    fn intern(&mut self, value: &T) -> Arc<T>
    where
        for<'a> &'a T: Into<Arc<T>>,
    {
        if let Some(found) = self.set.get(value) {
            return found.clone();
        }
        self.insert(value.into())
    }

    fn insert(&mut self, value: Arc<T>) -> Arc<T> {
        if self.set.len() >= self.sweep_at {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.sweep_at = (self.set.len() * 2).max(MIN_SWEEP);
        }
        self.set.insert(value.clone());
        value
    }
}

impl<T: Eq + Hash> Interner<T> {
    fn intern_value(&mut self, value: T) -> Arc<T> {
        if let Some(found) = self.set.get(&value) {
            return found.clone();
        }
        self.insert(Arc::new(value))
    }
}

impl crate::limits::KeyPlan for CachedKey {
    fn plan(&self) -> Option<&str> {
        self.plan.as_deref()
    }

    fn env(&self) -> Environment {
        self.env
    }

    fn overrides(&self) -> Option<&Limits> {
        self.limits()
    }
}

impl crate::limits::KeyPlan for KeyRecord {
    fn plan(&self) -> Option<&str> {
        self.plan.as_deref()
    }

    fn env(&self) -> Environment {
        self.env
    }

    fn overrides(&self) -> Option<&Limits> {
        (!self.limits.is_empty()).then_some(&self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: &str, scopes: &[&str]) -> KeyRecord {
        KeyRecord {
            owner: owner.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            plan: Some("pro".into()),
            ..KeyRecord::for_tests()
        }
    }

    #[test]
    fn a_cached_key_stays_small() {
        // The per-key memory figure in bench/RESULTS.md rests on this; grow it knowingly.
        // (80 -> 88 for `created`, which rotation reminders read on every request.)
        assert!(std::mem::size_of::<CachedKey>() <= 88);
    }

    #[test]
    fn keys_alike_share_owner_plan_and_scopes() {
        let pool = Pool::default();
        let a = CachedKey::new(&record("acme", &["a:read", "b:write"]), &pool, 0);
        let b = CachedKey::new(&record("acme", &["a:read", "b:write"]), &pool, 0);
        let c = CachedKey::new(&record("other", &["a:read"]), &pool, 0);
        assert!(Arc::ptr_eq(&a.owner, &b.owner));
        assert!(Arc::ptr_eq(&a.scopes, &b.scopes));
        assert!(Arc::ptr_eq(
            a.plan.as_ref().unwrap(),
            c.plan.as_ref().unwrap()
        ));
        assert!(!Arc::ptr_eq(&a.scopes, &c.scopes));
        assert_eq!(c.owner.as_str(), "other");
        assert_eq!(c.owner.header().unwrap(), "other");
        assert_eq!(a.scopes.header().unwrap(), "a:read,b:write");
        assert_eq!(a.scopes.iter().collect::<Vec<_>>(), ["a:read", "b:write"]);
    }

    #[test]
    fn the_record_survives_the_conversion() {
        let mut r = record("acme", &["*"]);
        r.allowed_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
        r.workspace = Some("ws_1".into());
        r.expires_at = Some(SystemTime::UNIX_EPOCH);
        r.status = Status::Suspended;
        let k = CachedKey::from(&r);
        assert_eq!(
            (&*k.id, k.key_type, k.env, k.status),
            (r.id.as_str(), r.key_type, r.env, r.status)
        );
        assert_eq!(k.allowed_cidrs(), r.allowed_cidrs.as_slice());
        assert_eq!((k.workspace(), k.project()), (Some("ws_1"), None));
        assert_eq!(k.expires_at(), r.expires_at);
        assert_eq!(k.created_at(), r.created_at);
        assert_eq!(k.limits(), None);
        assert!(k.headers().is_empty());
        r.headers = vec![crate::credential::CredentialHeader::ProjectAccessToken];
        assert_eq!(
            CachedKey::from(&r).headers(),
            HeaderSet::of(&r.headers),
            "a header-bound key keeps its headers"
        );
        r.limits.per_second = Some(5);
        assert_eq!(CachedKey::from(&r).limits().unwrap().per_second, Some(5));
        let plain = CachedKey::from(&record("acme", &[]));
        assert!(
            plain.restrictions.is_none(),
            "an unrestricted key allocates nothing more"
        );
        assert_eq!((plain.allowed_cidrs(), plain.expires_at()), (&[][..], None));
    }

    #[test]
    fn values_no_key_holds_are_swept_once_the_set_doubles() {
        let pool = Pool::default();
        let kept = CachedKey::new(&record("kept", &["x"]), &pool, 0);
        // Churn: owners whose keys are gone at once (evicted, revoked).
        for i in 0..3 * MIN_SWEEP {
            CachedKey::new(&record(&format!("gone-{i}"), &["x"]), &pool, 0);
        }
        let shared = pool.0.lock().unwrap();
        assert!(
            shared.owners.set.len() <= MIN_SWEEP + 1,
            "{} owners still interned",
            shared.owners.set.len()
        );
        assert!(shared.owners.set.iter().any(|o| o.as_str() == "kept"));
        drop(shared);
        assert_eq!(kept.owner.as_str(), "kept");
    }
}
