//! What unit tests share: keys in memory and a [`Proxy`] in front of a given upstream, built
//! from a real `proxy.toml` through [`Config::from_toml`], so a unit test of a session or a
//! stage runs the request path exactly as the binary does, minus the sockets it scripts
//! itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::keys::audit::{AuditEvent, AuditQuery};
use crate::keys::cache::KeyCache;
use crate::keys::{Batch, ChangeSink, KeyRecord, KeyStore};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::vocab::{Environment, KeyHash, KeyType, StoreError};

/// Keys in memory, read-only: management calls fail as a store that is down would.
pub struct MemoryStore(pub HashMap<KeyHash, Arc<KeyRecord>>);

#[async_trait::async_trait]
impl KeyStore for MemoryStore {
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.0.get(hash).cloned())
    }
    async fn by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        Ok(self
            .0
            .iter()
            .find(|(_, r)| r.id == id)
            .map(|(h, r)| (*h, (**r).clone())))
    }
    async fn list(&self, _: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(self.0.values().map(|r| (**r).clone()).collect())
    }
    async fn commit(&self, _: Batch) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("read-only".into()))
    }
    async fn append_audit(&self, _: &[AuditEvent]) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("read-only".into()))
    }
    async fn audit_events(&self, _: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn record_usage(&self, _: Vec<(String, SystemTime)>) -> Result<(), StoreError> {
        Ok(())
    }
    fn watch(self: Arc<Self>, _: ChangeSink, _: CancellationToken) {}
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A proxy in front of `upstream` with one valid live secret key ([`KeyRecord::for_tests`]:
/// every scope, no limits), every path open to it; `extra` is appended to the config (plans,
/// routes, `[server]` settings). Returns the proxy and the key.
pub fn proxy(upstream: SocketAddr, extra: &str) -> (Proxy, String) {
    let toml = format!(
        "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"http://{upstream}\"\n\
         [store]\nkind = \"file\"\npath = \"keys.json\"\n\
         [auth]\nunmatched = \"allow\"\n{extra}"
    );
    let config = Arc::new(Config::from_toml(&toml, Path::new("test.toml"), []).unwrap());
    let key =
        crate::credential::generate_key(&config.keys.prefix, KeyType::Secret, Environment::LIVE)
            .unwrap();
    let store = MemoryStore(HashMap::from([(
        KeyHash::of(&key),
        Arc::new(KeyRecord::for_tests()),
    )]));
    let metrics = Arc::new(Metrics::new());
    let keys = KeyCache::new(Arc::new(store), config.cache.clone(), metrics.clone());
    (Proxy::new(config, keys, metrics).unwrap(), key)
}
