//! Micro-benchmarks of the request path's pure stages: `cargo bench --bench hot_path`.
//! The load benchmark against nginx and HAProxy is `bench/run.sh`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Method, Request};
use keygate::authz::{Policy, RequestFacts, authorize};
use keygate::credential::{self, CredentialHeader};
use keygate::keys::cache::{CacheConfig, KeyCache};
use keygate::keys::file::FileStore;
use keygate::keys::manage::{self, KeyPolicy, KeySpec};
use keygate::keys::{Environment, KeyHash, KeyType};
use keygate::metrics::Metrics;
use keygate::routes::{PathPattern, Route, RouteTable, Unmatched};

fn spec() -> KeySpec {
    KeySpec {
        name: "bench".into(),
        owner: "acme".into(),
        key_type: KeyType::Secret,
        env: Environment::Live,
        scopes: vec!["content:read".into(), "analytics:*".into()],
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        expires_at: None,
        plan: None,
        limits: Default::default(),
        workspace: Some("ws_1".into()),
        project: None,
    }
}

fn stages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(FileStore::open(dir.path().join("keys.json"), Duration::from_secs(1)).unwrap());
    let policy = KeyPolicy {
        prefix: "kg".into(),
        max_per_owner: None,
    };
    let created = rt
        .block_on(manage::create_many(
            store.as_ref(),
            &policy,
            spec(),
            10_000,
            SystemTime::now(),
        ))
        .unwrap();
    let key = created[4242].key.clone();
    let record = keygate::keys::cached::CachedKey::from(&created[4242].record);

    let mut headers = Request::new(());
    let h = headers.headers_mut();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("x-api-key", HeaderValue::from_str(&key).unwrap());
    let order = CredentialHeader::all();

    c.bench_function("extract + format/CRC check", |b| {
        b.iter(|| {
            let k = credential::extract(black_box(&headers), &order, 256).unwrap();
            credential::parse_key(k, "kg").unwrap()
        })
    });

    c.bench_function("sha256 of the key", |b| {
        b.iter(|| KeyHash::of(black_box(&key)))
    });

    let cache = KeyCache::new(
        store.clone(),
        CacheConfig::default(),
        Arc::new(Metrics::new()),
    );
    let hash = KeyHash::of(&key);
    rt.block_on(cache.lookup(hash)).unwrap();
    c.bench_function("cache hit (10k keys)", |b| {
        b.iter(|| rt.block_on(cache.lookup(black_box(hash))).unwrap())
    });

    let route = |path: &str, scopes: &[&str]| Route {
        path: PathPattern::parse(path).unwrap(),
        methods: vec![],
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        scopes_all: vec![],
        environments: vec![Environment::Live, Environment::Test],
    };
    let routes = RouteTable::new(
        vec![
            route("/billing/**", &["billing:read"]),
            route("/admin/**", &["admin"]),
            route("/api/v2/w/{workspace}/**", &["content:read"]),
            route("/analytics/**", &["analytics:read"]),
        ],
        Unmatched::Deny,
    )
    .unwrap();
    let claims = credential::parse_key(&key, "kg").unwrap();
    let facts = RequestFacts {
        method: &Method::GET,
        path: "/api/v2/w/ws_1/projects/7",
        client_ip: "10.1.2.3".parse().unwrap(),
        now: SystemTime::now(),
    };
    let policy = Policy {
        routes: &routes,
        sandbox_upstream: false,
    };
    c.bench_function("authorize (4 routes, binding, allowlist)", |b| {
        b.iter(|| authorize(black_box(&record), claims, &facts, &policy).unwrap())
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
