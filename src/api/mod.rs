//! The management API: JSON over HTTP under `/v1/`, described by the OpenAPI 3.1 document
//! `openapi/keygate.json` (served at `/v1/openapi.json`).
//!
//! It has a listener of its own, `[listen] manage`, off unless configured, rather than
//! sharing the admin listener. The admin listener is unauthenticated by design and, in a pod,
//! bound to `0.0.0.0` so the kubelet and Prometheus reach it; the management API creates keys
//! and returns their secrets, so it gets an address that can stay on loopback, or be exposed
//! on its own (to a customer portal, through an ingress with TLS) without exposing probes and
//! metrics with it, and a connection cap of its own, so a busy portal cannot starve probes.
//! With `[tls]`, it speaks TLS with the same certificate as the public listener.
//!
//! Every call but the document itself is authenticated with a keygate key holding management
//! scopes ([`auth`]). The key is checked by the proxy's own `admit()`: the same credential
//! headers, stuffing guard, cache, status, expiry, IP allowlist and rate limits as a proxied
//! request; only the route rules differ (none: the management scopes decide). Every refusal
//! is a [`Reject`], rendered as the proxy's JSON errors. Every change goes through
//! [`crate::keys::audit::Trail`], as the CLI's do, and so leaves an audit event.

pub mod auth;
pub mod idempotency;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use crate::authz::{self, Policy, RequestFacts};
use crate::config::Config;
use crate::credential;
use crate::keys::audit::{Actor, AuditQuery, Trail};
use crate::keys::cache::KeyCache;
use crate::keys::manage::{
    Draft, EFFECTIVE_STATUSES, EditDraft, KeyPolicy, effective_status, view,
};
use crate::keys::{Change, KeyRecord, KeyStore};
use crate::limits::{Limited as LimitRefusal, WindowState};
use crate::proxy::{Audit, Connection, Current, OwnBodyError, Proxy, read_own_body};
use crate::reject::{Denial, Reject};
use crate::routes::{RouteTable, Unmatched, grants};
use crate::vocab::HeaderSet;
use crate::vocab::{Environment, KeyHash, StoreError};
use auth::{Need, Reach};
use idempotency::{Claim, Idempotency};

/// The OpenAPI document, as committed.
pub const OPENAPI: &str = include_str!("../../openapi/keygate.json");

/// Every route the API serves: method and path template. A test checks that each is in the
/// OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys/verify"),
    ("GET", "/v1/keys/{id}"),
    ("PATCH", "/v1/keys/{id}"),
    ("DELETE", "/v1/keys/{id}"),
    ("POST", "/v1/keys/{id}/revoke"),
    ("POST", "/v1/keys/{id}/suspend"),
    ("POST", "/v1/keys/{id}/resume"),
    ("POST", "/v1/keys/{id}/rotate"),
    ("GET", "/v1/keys/{id}/usage"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/health"),
];

/// Request bodies are small JSON documents.
const MAX_BODY: usize = 64 * 1024;
/// Page size of list endpoints: default and most.
const PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// How long a rotated key keeps working when the request does not say.
const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// The management API of one keygate process.
pub struct Api {
    proxy: Arc<Proxy>,
    cache: Arc<KeyCache>,
    gate: ArcSwap<Gate>,
    idempotency: Idempotency,
}

/// The proxy's config as management calls are admitted with it: no public paths, no route
/// rules (any valid key passes `admit`; the management scopes decide what it may do), and
/// sandbox keys accepted (they have no upstream to be kept from). Rebuilt when the config
/// reloads.
struct Gate {
    source: Arc<Config>,
    current: Current,
}

impl Gate {
    fn new(source: Arc<Config>) -> Result<Self, String> {
        let mut config = (*source).clone();
        config.routes =
            RouteTable::new(Vec::new(), Unmatched::Allow).expect("an empty table is valid");
        config.auth.public_paths.clear();
        config.upstream.sandbox_url = Some(config.upstream.url.clone());
        config.log.access = false;
        let current = Current::new(Arc::new(config)).map_err(|e| e.to_string())?;
        Ok(Self { source, current })
    }
}

/// The authenticated management key.
struct Caller {
    id: String,
    owner: String,
    scopes: Vec<String>,
}

impl Caller {
    fn reach(&self, need: Need) -> Result<Reach, Reject> {
        auth::access(&self.scopes, &self.owner, need).map_err(Reject::InsufficientPermissions)
    }

    /// Refuses unless this caller holds every scope in `scopes`.
    fn may_hold(&self, scopes: &[String]) -> Result<(), Reject> {
        let missing = auth::not_held(&self.scopes, scopes);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Reject::InsufficientPermissions(Denial::ScopesNotHeld(
                missing,
            )))
        }
    }
}

/// A response before it is rendered: status and JSON body.
type Answer = (StatusCode, Bytes);

impl Api {
    pub fn new(proxy: Arc<Proxy>, cache: Arc<KeyCache>) -> Result<Self, String> {
        let gate = Gate::new(proxy.config())?;
        Ok(Self {
            proxy,
            cache,
            gate: ArcSwap::from_pointee(gate),
            idempotency: Idempotency::default(),
        })
    }

    /// Serves one request; never fails: a refusal becomes its JSON error here.
    pub async fn handle<B>(&self, req: Request<B>, conn: &Connection) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut window = None;
        let mut response = match self.serve(req, conn, &mut window).await {
            Ok((status, body)) => crate::admin::json(status, body),
            Err(reject) => reject.into_response(),
        };
        // The management key's own rate-limit headers, as on a proxied request.
        if let Some((window, now_secs)) = window {
            crate::limits::headers::apply(
                response.headers_mut(),
                &window,
                now_secs,
                self.proxy.limiter().reset_style(),
            );
        }
        response
    }

    fn gate(&self) -> Arc<Gate> {
        let config = self.proxy.config();
        let gate = self.gate.load_full();
        if Arc::ptr_eq(&gate.source, &config) {
            return gate;
        }
        match Gate::new(config) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.gate.store(fresh.clone());
                fresh
            }
            Err(e) => {
                tracing::error!(error = %e, "management API keeps its previous config");
                gate
            }
        }
    }

    fn store(&self) -> &Arc<dyn KeyStore> {
        self.cache.store()
    }

    /// `window`: the management key's tightest rate-limit window, once it is known.
    async fn serve<B>(
        &self,
        req: Request<B>,
        conn: &Connection,
        window: &mut Option<(WindowState, u64)>,
    ) -> Result<Answer, Reject>
    where
        B: hyper::body::Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (template, id) = find(req.method(), req.uri().path())?;
        let id = id.map(str::to_owned);
        let method = req.method().clone();
        if template == "/v1/openapi.json" {
            return Ok((StatusCode::OK, Bytes::from_static(OPENAPI.as_bytes())));
        }
        let gate = self.gate();
        let caller = self.authenticate(&gate, &req, conn, window).await?;
        let config = &gate.source;
        let query = req.uri().query().unwrap_or_default().to_owned();
        let path = req.uri().path().to_owned();
        let idempotency_key = idempotency_key(&req)?;
        let body = read_body(req.into_body(), config.server.header_read_timeout).await?;
        let id = id.as_deref().unwrap_or_default();
        match (method.as_str(), template) {
            ("POST", "/v1/keys") => {
                let fp = idempotency::fingerprint("POST", &path, &body);
                self.idempotent(&caller, idempotency_key, fp, async {
                    self.create(config, &caller, &body).await
                })
                .await
            }
            ("GET", "/v1/keys") => self.list(&caller, &query).await,
            ("POST", "/v1/keys/verify") => self.verify(config, &caller, conn, &body).await,
            ("GET", "/v1/keys/{id}") => {
                let (_, record) = self.target(&caller, id, Need::Read).await?;
                ok(&view(&record, SystemTime::now()))
            }
            ("PATCH", "/v1/keys/{id}") => self.update(config, &caller, id, &body).await,
            ("DELETE", "/v1/keys/{id}") => self.delete(config, &caller, id).await,
            ("POST", "/v1/keys/{id}/revoke") => {
                self.change(config, &caller, id, Change::Revoke).await
            }
            ("POST", "/v1/keys/{id}/suspend") => {
                self.change(config, &caller, id, Change::Suspend).await
            }
            ("POST", "/v1/keys/{id}/resume") => {
                self.change(config, &caller, id, Change::Resume).await
            }
            ("POST", "/v1/keys/{id}/rotate") => {
                let fp = idempotency::fingerprint("POST", &path, &body);
                self.idempotent(&caller, idempotency_key, fp, async {
                    self.rotate(config, &caller, id, &body).await
                })
                .await
            }
            ("GET", "/v1/keys/{id}/usage") => self.usage(config, &caller, id).await,
            ("GET", "/v1/audit") => self.audit(&caller, &query).await,
            ("GET", "/v1/health") => self.health(&caller),
            _ => Err(Reject::NotFound("route")),
        }
    }

    /// The management key, checked by the proxy's own `admit()` (see the module doc).
    async fn authenticate<B>(
        &self,
        gate: &Gate,
        req: &Request<B>,
        conn: &Connection,
        window: &mut Option<(WindowState, u64)>,
    ) -> Result<Caller, Reject> {
        let mut audit = Audit::default();
        let admitted = self.proxy.admit(&gate.current, req, conn, &mut audit).await;
        *window = audit.limit.map(|w| (w, audit.now_secs));
        admitted?;
        let key = audit.key.ok_or(Reject::MissingApiKey)?;
        Ok(Caller {
            id: key.id.to_string(),
            owner: key.owner.as_str().to_owned(),
            scopes: key.scopes.iter().map(str::to_owned).collect(),
        })
    }

    fn trail<'a>(&'a self, policy: &'a KeyPolicy, caller: &Caller) -> Trail<'a> {
        Trail {
            store: self.store().as_ref(),
            policy,
            actor: Actor::key(&caller.id),
        }
    }

    /// Runs `run` once per `Idempotency-Key` (see [`idempotency`]).
    async fn idempotent(
        &self,
        caller: &Caller,
        key: Option<String>,
        fingerprint: [u8; 32],
        run: impl Future<Output = Result<Answer, Reject>>,
    ) -> Result<Answer, Reject> {
        let Some(key) = key else { return run.await };
        match self
            .idempotency
            .claim(&caller.id, &key, fingerprint, Instant::now())
        {
            Claim::Fresh => {}
            Claim::Replay(status, body) => {
                return Ok((StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body));
            }
            Claim::Reused => return Err(Reject::IdempotencyKeyReused),
            Claim::InProgress => return Err(Reject::IdempotencyInProgress),
        }
        // Given up unless finished: a refusal is answered again by running it again, and a
        // request dropped midway must not leave its key "in progress".
        let pending = self.idempotency.pending(&caller.id, &key);
        let result = run.await;
        if let Ok((status, body)) = &result {
            pending.finish(status.as_u16(), body.clone());
        }
        result
    }

    /// The key `id`, if the caller may reach it with `need`; out of reach is 404.
    async fn target(
        &self,
        caller: &Caller,
        id: &str,
        need: Need,
    ) -> Result<(KeyHash, KeyRecord), Reject> {
        let reach = caller.reach(need)?;
        let found = self.store().by_id(id).await.map_err(store_reject)?;
        match found {
            Some((hash, record)) if reach.covers(&record.owner) => Ok((hash, record)),
            _ => Err(Reject::NotFound("key")),
        }
    }

    /// Refuses unless the caller may change the key `id`: within its reach, and holding no
    /// scope the caller does not hold.
    async fn may_change(&self, caller: &Caller, id: &str) -> Result<(), Reject> {
        let (_, record) = self.target(caller, id, Need::Write).await?;
        caller.may_hold(&record.scopes)
    }

    async fn create(
        &self,
        config: &Config,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Answer, Reject> {
        let reach = caller.reach(Need::Write)?;
        let mut draft: Draft = parse_json(body)?;
        if let Reach::Owner(mine) = &reach {
            match &draft.owner {
                Some(owner) if owner != mine => {
                    return Err(Reject::InsufficientPermissions(Denial::OtherOwner));
                }
                _ => draft.owner = Some(mine.clone()),
            }
        }
        caller.may_hold(&draft.scopes)?;
        let now = SystemTime::now();
        let spec = draft
            .into_spec(&config.limits, &config.auth.credential_headers, now)
            .map_err(store_reject)?;
        // A key of an environment this keygate does not serve could never be used.
        if !config.environments.contains(&spec.env) {
            let known: Vec<&str> = config.environments.iter().map(|e| e.as_str()).collect();
            return Err(Reject::InvalidParameter(format!(
                "env: {:?} is not configured; use one of {}",
                spec.env.as_str(),
                known.join(", ")
            )));
        }
        let policy = KeyPolicy::from(&config.keys);
        let created = self
            .trail(&policy, caller)
            .create(spec, now)
            .await
            .map_err(store_reject)?;
        answer(StatusCode::CREATED, &created)
    }

    async fn list(&self, caller: &Caller, query: &str) -> Result<Answer, Reject> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ListQuery {
            owner: Option<String>,
            /// As the key reads now: `expired` is an active key past its expiry.
            status: Option<String>,
            env: Option<Environment>,
            plan: Option<String>,
            /// RFC 3339: keys that expire before then.
            expiring_before: Option<String>,
            /// RFC 3339: keys not used since then (or never).
            unused_since: Option<String>,
            limit: Option<usize>,
            cursor: Option<String>,
        }
        let q: ListQuery = parse_query(query)?;
        let owner = match caller.reach(Need::Read)? {
            Reach::All => q.owner,
            Reach::Owner(mine) => match q.owner {
                Some(other) if other != mine => {
                    return Err(Reject::InsufficientPermissions(Denial::OtherOwner));
                }
                _ => Some(mine),
            },
        };
        if let Some(status) = &q.status
            && !EFFECTIVE_STATUSES.contains(&status.as_str())
        {
            return Err(Reject::InvalidBody(format!(
                "query: status {status:?}: use one of {}",
                EFFECTIVE_STATUSES.join(", ")
            )));
        }
        let limit = page_size(q.limit)?;
        let after = q.cursor.as_deref().map(Cursor::decode).transpose()?;
        let time = |field, value: Option<&str>| {
            value
                .map(|v| crate::keys::manage::parse_time(field, v))
                .transpose()
                .map_err(store_reject)
        };
        let expiring_before = time("expiring_before", q.expiring_before.as_deref())?;
        let unused_since = time("unused_since", q.unused_since.as_deref())?;
        let records = self
            .store()
            .list(owner.as_deref())
            .await
            .map_err(store_reject)?;
        let now = SystemTime::now();
        let mut page: Vec<KeyRecord> = records
            .into_iter()
            .filter(|r| {
                q.status
                    .as_ref()
                    .is_none_or(|s| effective_status(r, now) == s)
            })
            .filter(|r| q.env.is_none_or(|e| r.env == e))
            .filter(|r| q.plan.as_ref().is_none_or(|p| r.plan.as_ref() == Some(p)))
            .filter(|r| expiring_before.is_none_or(|t| r.expires_at.is_some_and(|at| at < t)))
            .filter(|r| unused_since.is_none_or(|t| r.last_used_at.is_none_or(|at| at < t)))
            .filter(|r| after.as_ref().is_none_or(|c| c.before(r)))
            .take(limit + 1)
            .collect();
        let next_cursor = (page.len() > limit).then(|| {
            page.truncate(limit);
            Cursor::of(page.last().expect("a full page")).encode()
        });
        #[derive(Serialize)]
        struct Page {
            data: Vec<serde_json::Value>,
            next_cursor: Option<String>,
        }
        ok(&Page {
            data: page.iter().map(|r| view(r, now)).collect(),
            next_cursor,
        })
    }

    async fn update(
        &self,
        config: &Config,
        caller: &Caller,
        id: &str,
        body: &[u8],
    ) -> Result<Answer, Reject> {
        let draft: EditDraft = parse_json(body)?;
        self.may_change(caller, id).await?;
        if let Some(scopes) = &draft.scopes {
            caller.may_hold(scopes)?;
        }
        let now = SystemTime::now();
        let edit = draft.into_edit(&config.limits, now).map_err(store_reject)?;
        let policy = KeyPolicy::from(&config.keys);
        let record = self
            .trail(&policy, caller)
            .edit(id, edit, now)
            .await
            .map_err(store_reject)?;
        ok(&view(&record, now))
    }

    async fn change(
        &self,
        config: &Config,
        caller: &Caller,
        id: &str,
        change: Change,
    ) -> Result<Answer, Reject> {
        self.may_change(caller, id).await?;
        let policy = KeyPolicy::from(&config.keys);
        let record = self
            .trail(&policy, caller)
            .change(id, change)
            .await
            .map_err(store_reject)?;
        ok(&view(&record, SystemTime::now()))
    }

    /// `DELETE /v1/keys/{id}`: a revoked key's record removed (409 for any other key).
    async fn delete(&self, config: &Config, caller: &Caller, id: &str) -> Result<Answer, Reject> {
        self.may_change(caller, id).await?;
        let policy = KeyPolicy::from(&config.keys);
        let record = self
            .trail(&policy, caller)
            .delete(id)
            .await
            .map_err(store_reject)?;
        ok(&serde_json::json!({"id": record.id, "deleted": true}))
    }

    async fn rotate(
        &self,
        config: &Config,
        caller: &Caller,
        id: &str,
        body: &[u8],
    ) -> Result<Answer, Reject> {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct RotateBody {
            /// `1h`, `7d`, `0s`.
            grace: Option<String>,
        }
        let rotation: RotateBody = if body.is_empty() {
            RotateBody::default()
        } else {
            parse_json(body)?
        };
        self.may_change(caller, id).await?;
        let grace = match rotation.grace.as_deref() {
            None => DEFAULT_GRACE,
            Some(g) => crate::keys::manage::grace(g).map_err(store_reject)?,
        };
        let policy = KeyPolicy::from(&config.keys);
        let created = self
            .trail(&policy, caller)
            .rotate(id, grace, SystemTime::now())
            .await
            .map_err(store_reject)?;
        answer(StatusCode::CREATED, &created)
    }

    async fn usage(&self, config: &Config, caller: &Caller, id: &str) -> Result<Answer, Reject> {
        let (hash, record) = self.target(caller, id, Need::Read).await?;
        let quotas = self.store().clone().quotas();
        let usage = crate::keys::usage::read(
            &config.limits,
            hash,
            &record,
            quotas.as_deref(),
            SystemTime::now(),
        )
        .await
        .map_err(store_reject)?;
        ok(&usage)
    }

    async fn audit(&self, caller: &Caller, query: &str) -> Result<Answer, Reject> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AuditParams {
            key_id: Option<String>,
            since: Option<String>,
            limit: Option<usize>,
        }
        let q: AuditParams = parse_query(query)?;
        let owner = match caller.reach(Need::Read)? {
            Reach::All => None,
            Reach::Owner(mine) => Some(mine),
        };
        let since = q
            .since
            .as_deref()
            .map(|s| crate::keys::manage::parse_time("since", s))
            .transpose()
            .map_err(store_reject)?;
        let query = AuditQuery {
            key_id: q.key_id,
            owner,
            since,
            limit: Some(page_size(q.limit)?),
        };
        let events = self
            .store()
            .audit_events(&query)
            .await
            .map_err(store_reject)?;
        #[derive(Serialize)]
        struct Events {
            data: Vec<crate::keys::audit::AuditEvent>,
        }
        ok(&Events { data: events })
    }

    /// `GET /v1/health`: the key store as this keygate sees it (what `/metrics` says of it).
    fn health(&self, caller: &Caller) -> Result<Answer, Reject> {
        caller.reach(Need::Read)?;
        #[derive(Serialize)]
        struct Health {
            /// Kind and address, never credentials.
            store: String,
            /// The store answers (`keygate_key_store_up`).
            up: bool,
            /// The change feed confirmed recently that the cache is current
            /// (`keygate_key_feed_current`).
            cache_current: bool,
            #[serde(with = "humantime_serde")]
            confirmed_at: Option<SystemTime>,
            cached_keys: u64,
        }
        let metrics = self.proxy.metrics();
        let confirmed = metrics.store_health.feed_confirmed.get();
        ok(&Health {
            store: self.store().describe(),
            up: metrics.store_up.get() == 1,
            cache_current: metrics.store_health.feed_current.get() == 1,
            confirmed_at: (confirmed > 0.0)
                .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(confirmed)),
            cached_keys: self.cache.len(),
        })
    }

    /// `POST /v1/keys/verify`: the proxy's decision for a key, without a proxied request. The
    /// same stages as `admit()` from the format check on: the checksum, the key cache (and
    /// the store behind it), `authz::authorize` (status, expiry, IP allowlist; no route rules)
    /// and, when `count` is set, the limiter, counting one request against the key's plan.
    async fn verify(
        &self,
        config: &Config,
        caller: &Caller,
        conn: &Connection,
        body: &[u8],
    ) -> Result<Answer, Reject> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct VerifyBody {
            key: String,
            /// The address of the client that presented the key (checked against the key's
            /// allowlist); the caller's own address when absent.
            ip: Option<std::net::IpAddr>,
            /// A scope the key must hold.
            scope: Option<String>,
            /// Count one request against the key's rate limits and quotas.
            #[serde(default)]
            count: bool,
        }
        caller.reach(Need::Verify)?;
        let request: VerifyBody = parse_json(body)?;
        let mut verdict = Verdict::default();
        let decided = self
            .decide(
                config,
                &request.key,
                request.ip.unwrap_or(conn.peer.ip()),
                request.scope.as_deref(),
                request.count,
                &mut verdict,
            )
            .await;
        match decided {
            Ok(()) => verdict.valid = true,
            // No decision could be made: the caller's request fails as the proxy's would.
            Err(
                unavailable @ (Reject::KeyStoreUnavailable | Reject::QuotaStoreUnavailable { .. }),
            ) => {
                return Err(unavailable);
            }
            Err(reject) => verdict.code = Some(reject.code()),
        }
        ok(&verdict)
    }

    async fn decide(
        &self,
        config: &Config,
        key: &str,
        client_ip: std::net::IpAddr,
        scope: Option<&str>,
        count: bool,
        verdict: &mut Verdict,
    ) -> Result<(), Reject> {
        if key.len() > config.auth.max_key_length {
            return Err(Reject::InvalidApiKey);
        }
        let claims = credential::parse_key(key, &config.keys.prefix)?;
        let hash = KeyHash::of(key);
        let record = self
            .cache
            .lookup(hash)
            .await
            .map_err(|_| Reject::KeyStoreUnavailable)?
            .ok_or(Reject::InvalidApiKey)?;
        verdict.key_id = Some(record.id.to_string());
        verdict.owner = Some(record.owner.as_str().to_owned());
        verdict.env = Some(record.env);
        verdict.scopes = record.scopes.iter().map(str::to_owned).collect();
        verdict.expires_at = record.expires_at();
        let now = SystemTime::now();
        let routes =
            RouteTable::new(Vec::new(), Unmatched::Allow).expect("an empty table is valid");
        let facts = RequestFacts {
            method: &Method::GET,
            path: "/",
            client_ip,
            now,
            // The key came in the body: a binding to credential headers does not apply.
            via: HeaderSet::EMPTY,
            narrowed: &[],
        };
        let policy = Policy {
            routes: &routes,
            sandbox_upstream: true,
            environments: &config.environments,
        };
        authz::authorize(&record, claims, &facts, &policy)?;
        if let Some(scope) = scope
            && !record.scopes.iter().any(|held| grants(held, scope))
        {
            return Err(Reject::InsufficientPermissions(Denial::MissingScope(vec![
                scope.to_owned(),
            ])));
        }
        if count {
            match self.proxy.limiter().admit(hash, &*record, now).await {
                Ok(window) => verdict.ratelimit = window.map(RateState::of),
                Err(refused) => {
                    if let LimitRefusal::Rate(over) = refused {
                        verdict.ratelimit = Some(RateState::of(over.window));
                    }
                    return Err(refused.into());
                }
            }
        }
        // A valid verify is a use of the key (the caller serves the request it came with).
        self.cache.used(&record);
        Ok(())
    }
}

/// What `POST /v1/keys/verify` answers.
#[derive(Debug, Default, Serialize)]
struct Verdict {
    valid: bool,
    /// Why not: the error code the proxy would have answered with.
    code: Option<&'static str>,
    key_id: Option<String>,
    owner: Option<String>,
    env: Option<Environment>,
    scopes: Vec<String>,
    #[serde(with = "humantime_serde")]
    expires_at: Option<SystemTime>,
    /// The most constraining window after this request, when it was counted.
    ratelimit: Option<RateState>,
}

#[derive(Debug, Serialize)]
struct RateState {
    window: &'static str,
    limit: u64,
    remaining: u64,
    reset_secs: u64,
}

impl RateState {
    fn of(w: crate::limits::WindowState) -> Self {
        Self {
            window: w.name,
            limit: w.limit,
            remaining: w.remaining,
            reset_secs: w.reset_secs,
        }
    }
}

/// A position in a list: after the record created at `nanos` with `id` (records are listed by
/// creation time, then id).
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    nanos: u128,
    id: String,
}

impl Cursor {
    fn of(record: &KeyRecord) -> Self {
        Self {
            nanos: record
                .created_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            id: record.id.clone(),
        }
    }

    /// Whether `record` comes after this position.
    fn before(&self, record: &KeyRecord) -> bool {
        let other = Cursor::of(record);
        (other.nanos, &other.id) > (self.nanos, &self.id)
    }

    fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{}.{}", self.nanos, self.id))
    }

    fn decode(s: &str) -> Result<Self, Reject> {
        use base64::Engine;
        let bad = || Reject::InvalidBody("cursor: not a cursor this API returned".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (nanos, id) = raw.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            nanos: nanos.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        })
    }
}

/// The route template `path` matches for `method`, with its `{id}`; 404 for a path no route
/// has, 405 (with `Allow`) for a method none of its routes takes. A literal path
/// (`/v1/keys/verify`) shadows the templates with a parameter (`/v1/keys/{id}`).
fn find<'p>(method: &Method, path: &'p str) -> Result<(&'static str, Option<&'p str>), Reject> {
    for literal in [true, false] {
        let mut allowed = Vec::new();
        for (m, template) in ROUTES {
            if template.contains('{') == literal {
                continue;
            }
            let Some(id) = matches(template, path) else {
                continue;
            };
            if *m == method.as_str() {
                return Ok((template, id));
            }
            if let Ok(m) = m.parse::<Method>() {
                allowed.push(m);
            }
        }
        if !allowed.is_empty() {
            return Err(Reject::MethodNotAllowed(allowed));
        }
    }
    Err(Reject::NotFound("route; see /v1/openapi.json"))
}

/// `Some(id)` (or `Some(None)` without a parameter) if `path` matches `template`.
fn matches<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut parts = path.split('/');
    for want in template.split('/') {
        let got = parts.next()?;
        if want == "{id}" {
            if got.is_empty() {
                return None;
            }
            id = Some(got);
        } else if want != got {
            return None;
        }
    }
    parts.next().is_none().then_some(id)
}

fn idempotency_key<B>(req: &Request<B>) -> Result<Option<String>, Reject> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v) if !v.is_empty() && v.len() <= 255 => Ok(Some(v.to_owned())),
        _ => Err(Reject::InvalidBody(
            "Idempotency-Key: use 1-255 printable ASCII characters".into(),
        )),
    }
}

async fn read_body<B>(body: B, within: Duration) -> Result<Bytes, Reject>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    read_own_body(body, MAX_BODY, within)
        .await
        .map_err(|e| match e {
            OwnBodyError::TooLarge(_) => Reject::PayloadTooLarge,
            e => Reject::InvalidBody(e.to_string()),
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reject> {
    serde_json::from_slice(body).map_err(|e| Reject::InvalidBody(format!("JSON body: {e}")))
}

fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, Reject> {
    // Through JSON, so that the query and bodies share one deserializer and its messages.
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let value = match k.as_ref() {
            "limit" => match v.parse::<u64>() {
                Ok(n) => serde_json::Value::from(n),
                Err(_) => {
                    return Err(Reject::InvalidBody(format!("limit {v:?}: not a number")));
                }
            },
            _ => serde_json::Value::from(v.into_owned()),
        };
        if map.insert(k.into_owned(), value).is_some() {
            return Err(Reject::InvalidBody("a query parameter is repeated".into()));
        }
    }
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| Reject::InvalidBody(format!("query: {e}")))
}

fn page_size(limit: Option<usize>) -> Result<usize, Reject> {
    match limit.unwrap_or(PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        n => Err(Reject::InvalidParameter(format!(
            "limit {n}: use 1 to {MAX_PAGE}"
        ))),
    }
}

/// A store's refusal as the API answers it.
fn store_reject(e: StoreError) -> Reject {
    match e {
        StoreError::NotFound(_) => Reject::NotFound("key"),
        StoreError::InvalidSpec(message) => Reject::InvalidParameter(message),
        StoreError::OwnerCap { max, .. } => Reject::OwnerKeyLimit { max },
        StoreError::Conflict { message, .. } => Reject::Conflict(message.to_owned()),
        StoreError::Changed => Reject::Conflict("the key changed meanwhile; retry".into()),
        e => {
            if crate::ratelog::KEY_LOOKUP.allow() {
                tracing::error!(error = %e, "management API: key store failed");
            }
            Reject::KeyStoreUnavailable
        }
    }
}

fn answer(status: StatusCode, value: &impl Serialize) -> Result<Answer, Reject> {
    Ok((
        status,
        Bytes::from(serde_json::to_vec(value).expect("API answers serialize")),
    ))
}

fn ok(value: &impl Serialize) -> Result<Answer, Reject> {
    answer(StatusCode::OK, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_their_templates() {
        type Found<'a> = Result<(&'a str, Option<&'a str>), u16>;
        let cases: &[(&str, &str, Found)] = &[
            ("GET", "/v1/keys", Ok(("/v1/keys", None))),
            ("POST", "/v1/keys", Ok(("/v1/keys", None))),
            ("POST", "/v1/keys/verify", Ok(("/v1/keys/verify", None))),
            (
                "GET",
                "/v1/keys/key_1",
                Ok(("/v1/keys/{id}", Some("key_1"))),
            ),
            (
                "PATCH",
                "/v1/keys/key_1",
                Ok(("/v1/keys/{id}", Some("key_1"))),
            ),
            (
                "POST",
                "/v1/keys/key_1/rotate",
                Ok(("/v1/keys/{id}/rotate", Some("key_1"))),
            ),
            (
                "DELETE",
                "/v1/keys/key_1",
                Ok(("/v1/keys/{id}", Some("key_1"))),
            ),
            ("PUT", "/v1/keys/key_1", Err(405)),
            ("GET", "/v1/keys/key_1/revoke", Err(405)),
            ("GET", "/v1/keys/verify", Err(405)),
            ("GET", "/v1/keys/", Err(404)),
            ("GET", "/v1/keys/a/b", Err(404)),
            ("GET", "/v2/keys", Err(404)),
            ("GET", "/v1/audit", Ok(("/v1/audit", None))),
        ];
        for (method, path, want) in cases {
            let got = find(&method.parse().unwrap(), path).map_err(|r| r.status().as_u16());
            assert_eq!(&got, want, "{method} {path}");
        }
    }

    #[test]
    fn the_document_lists_exactly_the_routes_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn cursors_round_trip_and_order() {
        let mut r = KeyRecord::for_tests();
        r.created_at = SystemTime::UNIX_EPOCH + Duration::from_nanos(5);
        let c = Cursor::of(&r);
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(!c.before(&r));
        let mut later = r.clone();
        later.id = "key_2".into();
        assert!(c.before(&later));
        assert!(Cursor::decode("!!").is_err());
    }

    #[test]
    fn queries_are_strict() {
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Q {
            #[allow(dead_code)]
            limit: Option<usize>,
        }
        assert!(parse_query::<Q>("limit=5").is_ok());
        assert!(matches!(
            parse_query::<Q>("limit=x"),
            Err(Reject::InvalidBody(_))
        ));
        assert!(matches!(
            parse_query::<Q>("nope=1"),
            Err(Reject::InvalidBody(_))
        ));
        assert!(matches!(
            parse_query::<Q>("limit=1&limit=2"),
            Err(Reject::InvalidBody(_))
        ));
        assert_eq!(page_size(None).unwrap(), PAGE);
        assert!(matches!(
            page_size(Some(0)),
            Err(Reject::InvalidParameter(_))
        ));
    }
}
