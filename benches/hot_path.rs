//! Micro-benchmarks of the request path's stages: `cargo bench --bench hot_path`. The load
//! benchmark against nginx and HAProxy is `bench/run.sh`.
//!
//! In request order: parse the HTTP/1.1 head, find and check the key, hash it, look it up in
//! the cache, authorize, admit it to its plan, write the upstream's head, rewrite the
//! response head.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use keygate::authz::{Policy, RequestFacts, authorize};
use keygate::credential::{self, CredentialHeader};
use keygate::forward::upstream_head::{RequestContext, write_request_head};
use keygate::keys::cache::{CacheConfig, KeyCache};
use keygate::keys::file::FileStore;
use keygate::keys::manage::{self, KeyPolicy, KeySpec};
use keygate::keys::{Environment, KeyHash, KeyType};
use keygate::limits::{Limiter, Limits, LimitsConfig, ResetStyle};
use keygate::metrics::Metrics;
use keygate::routes::{PathPattern, Route, RouteTable, Unmatched};
use keygate::wire::response::{Limit, ResponseContext, response_head};
use keygate::wire::{Framing, ParsedRequest, RequestHead};

fn spec() -> KeySpec {
    KeySpec {
        allowed_origins: Vec::new(),
        name: "bench".into(),
        owner: "acme".into(),
        key_type: KeyType::Secret,
        env: Environment::LIVE,
        scopes: vec!["content:read".into(), "analytics:*".into()],
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        expires_at: None,
        plan: None,
        limits: Default::default(),
        workspace: Some("ws_1".into()),
        project: None,
        headers: Vec::new(),
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
    let record = keygate::keys::cached_key::CachedKey::from(&created[4242].record);

    // What the load benchmark's wrk sends.
    let raw = format!("GET /v1/resource HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {key}\r\n\r\n");
    let mut head = RequestHead::default();
    c.bench_function("parse the request head", |b| {
        b.iter(|| head.parse(black_box(raw.as_bytes()), 32 * 1024).unwrap())
    });
    head.parse(raw.as_bytes(), 32 * 1024).unwrap();
    let req = ParsedRequest::new(&head, raw.as_bytes());
    let order = CredentialHeader::all();

    c.bench_function("extract + format/CRC check", |b| {
        b.iter(|| {
            let k = credential::extract(black_box(&req), &order, 256).unwrap();
            credential::parse_key(k, "kg").unwrap()
        })
    });

    c.bench_function("sha256 of the key", |b| {
        b.iter(|| KeyHash::of(black_box(&key)))
    });

    // What an access token costs instead of the two stages above: checksum, AEAD open, expiry.
    let secrets =
        keygate::token::Secrets::new(&[b"a-token-secret-of-at-least-thirty-two-bytes".to_vec()])
            .unwrap();
    let claims = keygate::token::Claims {
        key: KeyHash::of(&key),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        scopes: vec!["content:read".into()],
    };
    let token = keygate::token::issue(&claims, &secrets, "kg").unwrap();
    c.bench_function("open an access token", |b| {
        b.iter(|| {
            keygate::token::open(black_box(&token), &secrets, "kg", SystemTime::now()).unwrap()
        })
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
        limits: None,
        path: PathPattern::parse(path, false).unwrap(),
        methods: vec![],
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        scopes_all: vec![],
        environments: vec![Environment::LIVE, Environment::TEST],
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
        via: credential::HeaderSet::EMPTY,
        narrowed: &[],
    };
    let policy = Policy {
        environments: &[Environment::LIVE, Environment::TEST],
        routes: &routes,
        sandbox_upstream: false,
    };
    c.bench_function("authorize (4 routes, binding, allowlist)", |b| {
        b.iter(|| authorize(black_box(&record), claims, &facts, &policy).unwrap())
    });

    // The benchmark's plan: evaluated on every request, never binding.
    let plan = Limits {
        per_second: Some(1_000_000_000),
        burst: Some(1_000_000_000),
        per_hour: Some(1 << 38),
        ..Limits::default()
    };
    let limits = LimitsConfig {
        plans: [("bench".to_owned(), plan)].into(),
        default_plan: Some("bench".into()),
        ..LimitsConfig::default()
    };
    let limiter = Limiter::new(limits, 10_000);
    let now = SystemTime::now();
    c.bench_function("limiter admit (per second + per hour)", |b| {
        b.iter(|| {
            rt.block_on(limiter.admit(black_box(hash), &record, now))
                .unwrap()
                .unwrap()
        })
    });

    let mut out = Vec::with_capacity(1024);
    let window = rt
        .block_on(limiter.admit(hash, &record, now))
        .unwrap()
        .unwrap();
    let upstream = RequestContext {
        base_path: "",
        path: "/v1/resource",
        upstream_host: b"127.0.0.1:8081",
        preserve_host: true,
        credential_headers: &order,
        key_prefix: "kg",
        key: Some(&record),
        peer: b"127.0.0.1",
        peer_trusted: false,
        tls: false,
        framing: Framing::Empty,
        upgrade: false,
    };
    c.bench_function("write the upstream request head", |b| {
        b.iter(|| {
            out.clear();
            write_request_head(&mut out, black_box(&req), &upstream);
        })
    });

    // What the benchmark's nginx upstream answers.
    let response = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 02:10:45 GMT\r\n\
                     Content-Type: application/json\r\nContent-Length: 39\r\nConnection: keep-alive\r\n\r\n";
    let rcx = ResponseContext {
        head_request: false,
        client_http11: true,
        keep_alive: true,
        upgrade: false,
        limit: Some(Limit {
            window: &window,
            now_secs: 1_780_000_000,
            style: ResetStyle::Epoch,
        }),
        added: &[],
        cors: &[],
    };
    c.bench_function("rewrite the response head (+ rate-limit headers)", |b| {
        b.iter(|| {
            out.clear();
            response_head(black_box(response), &mut out, &rcx).unwrap()
        })
    });
}

criterion_group!(benches, stages);
criterion_main!(benches);
