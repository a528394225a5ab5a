//! The request path: [`Proxy::handle`] (logging, error rendering) around [`Proxy::admit`]
//! (the ordered stages). Reading `admit` top to bottom is reading the product.
//!
//! The reloadable part (config, upstream client) sits behind one `ArcSwap`: a request takes
//! one snapshot when it starts and uses it to the end, so a reload never mixes two configs
//! within one request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authz::{self, Policy, RequestFacts};
use crate::config::Config;
use crate::credential;
use crate::forward::{self, ClientError, Forwarder, Origin, Paired, Prepared};
use crate::keys::KeyHash;
use crate::keys::cache::KeyCache;
use crate::keys::cached::CachedKey;
use crate::limits::{self, Limited, Limiter, SharedSettings, WindowState};
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::routes;

/// A response body: the upstream's stream, or keygate's own small JSON.
pub type Body = Either<Incoming, Full<Bytes>>;

pub struct Proxy {
    current: ArcSwap<Current>,
    keys: Arc<KeyCache>,
    limiter: Limiter,
    metrics: Arc<Metrics>,
}

/// What a config reload replaces.
struct Current {
    config: Arc<Config>,
    forwarder: Forwarder,
}

/// How the request reached keygate: one per client connection.
pub struct Connection {
    pub peer: SocketAddr,
    /// Over keygate's own TLS listener.
    pub tls: bool,
    /// The peer's address as an `X-Forwarded-For` value, formatted once per connection.
    pub peer_header: HeaderValue,
    /// The connection's own upstream connection; the caller drives it.
    pub paired: Arc<Paired>,
}

impl Connection {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = authz::canonical(peer.ip()).to_string();
        Self {
            peer,
            tls,
            peer_header: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
            paired: Paired::new(),
        }
    }
}

/// What `handle` needs to know about one request after `admit`; stages fill it in as they
/// learn it.
#[derive(Default)]
struct Audit<'a> {
    /// The route rule that matched (its pattern, never the raw path), `public` for a public
    /// path, `unmatched` when no rule did.
    route: Option<&'a str>,
    key: Option<Arc<CachedKey>>,
    client_ip: Option<std::net::IpAddr>,
    /// The most constraining rate-limit window, for the response headers.
    limit: Option<WindowState>,
    now_secs: u64,
}

impl Proxy {
    pub fn new(
        config: Arc<Config>,
        keys: Arc<KeyCache>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ClientError> {
        let mut limiter = Limiter::new(config.limits.clone(), config.cache.capacity);
        // A store that can share counters (Redis) shares long-window quotas and suspensions
        // between sidecars; the file store keeps them exact in this process.
        if let (Some(quotas), crate::config::StoreConfig::Redis(redis)) =
            (keys.store().clone().quotas(), &config.store)
        {
            let settings = SharedSettings {
                timeout: redis.timeout,
                sync_every: redis.epoch_poll,
            };
            limiter = limiter.with_shared_quotas(quotas, settings, metrics.clone());
        }
        Ok(Self {
            current: ArcSwap::from_pointee(Current::new(config)?),
            keys,
            limiter,
            metrics,
        })
    }

    /// The config requests are being served with.
    pub fn config(&self) -> Arc<Config> {
        self.current.load().config.clone()
    }

    /// Serves every request that starts from now on with `config`. Requests in flight finish
    /// with the config they started with. The caller decides which sections may change.
    pub fn reload(&self, config: Arc<Config>) -> Result<(), ClientError> {
        let next = Current::new(config)?;
        // Plans change, counters, leases and suspensions stay.
        self.limiter.reconfigure(next.config.limits.clone());
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// The limiter, e.g. to [`Limiter::reconfigure`] it on a config reload.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Runs one request and never fails: a refusal becomes its JSON response here, and
    /// nowhere else.
    pub async fn handle(&self, req: Request<Incoming>, conn: &Connection) -> Response<Body> {
        let started = Instant::now();
        let current = self.current.load_full();
        let method = req.method().clone();
        // The path only: query strings carry secrets often enough (`?api_key=`).
        let path = current
            .config
            .log
            .access
            .then(|| req.uri().path().to_owned());
        let mut audit = Audit::default();
        let outcome = self.admit(&current, req, conn, &mut audit).await;
        let (mut response, decision) = match outcome {
            Ok(response) => (response.map(Either::Left), "allowed"),
            Err(reject) => {
                let code = reject.code();
                (reject.into_response().map(Either::Right), code)
            }
        };
        if let Some(window) = &audit.limit {
            limits::headers::apply(
                response.headers_mut(),
                window,
                audit.now_secs,
                self.limiter.reset_style(),
            );
        }
        self.metrics
            .request(decision, response.status().as_u16(), started.elapsed());
        if current.config.log.access {
            let key = audit.key.as_deref();
            tracing::info!(
                target: "keygate::access",
                method = %method,
                path = path.as_deref().unwrap_or_default(),
                route = audit.route,
                status = response.status().as_u16(),
                decision,
                key_id = key.map(|k| &*k.id),
                owner = key.map(|k| k.owner.as_str()),
                env = key.map(|k| k.env.as_str()),
                client_ip = audit.client_ip.map(tracing::field::display),
                latency_us = started.elapsed().as_micros() as u64,
            );
        }
        response
    }

    /// The ordered stages. Cheap, I/O-free checks come first so that junk never costs a store
    /// lookup; authorization needs the record, so it follows the lookup; only an admitted
    /// request reaches the upstream.
    async fn admit<'a>(
        &self,
        current: &'a Current,
        mut req: Request<Incoming>,
        conn: &Connection,
        audit: &mut Audit<'a>,
    ) -> Result<Response<Incoming>, Reject> {
        let config = &*current.config;
        let trusted = &config.network.trusted_proxies;
        let peer = conn.peer.ip();
        let peer_trusted = trusted
            .iter()
            .any(|net| net.contains(&authz::canonical(peer)));
        let client_ip = forward::client_ip(peer, req.headers(), trusted);
        audit.client_ip = Some(client_ip);
        let origin = |key| Origin {
            peer,
            peer_trusted,
            tls: conn.tls,
            peer_header: &conn.peer_header,
            key,
        };

        // 0. Transport rules, before anything is read into: HTTPS only (if asked), bounded
        //    headers and body.
        if config.network.require_https
            && !conn.tls
            && !(peer_trusted && forwarded_https(req.headers()))
        {
            return Err(Reject::HttpsRequired);
        }
        check_sizes(&req, &config.server)?;

        // 1. The path rules are matched against, made unambiguous first: what is authorized
        //    must be what the upstream serves (no `/open/../admin`, no `%2e%2e`).
        if let Some(normal) =
            routes::normalize(req.uri().path()).map_err(|_| Reject::InvalidPath)?
        {
            set_path(&mut req, &normal);
        }

        // 2. Public paths (an upstream's own health check, docs) need no key at all.
        let path = req.uri().path();
        if config
            .auth
            .public_paths
            .iter()
            .any(|p| p.matches(path).is_some())
        {
            audit.route = Some("public");
            let req = current.forwarder.prepare(req, &origin(None));
            return self.send(current, req, conn).await;
        }

        // 3. Which key? Exactly one, from the configured headers, length-capped.
        let auth = &config.auth;
        let key =
            credential::extract(req.headers(), &auth.credential_headers, auth.max_key_length)?;

        // 4. Is it shaped like one of ours? Prefix, type, environment, checksum: no I/O.
        let claims = credential::parse_key(key, &config.keys.prefix)?;

        // 5. Do we know it? Only the hash is ever looked up or stored.
        let hash = KeyHash::of(key);
        let record = self
            .keys
            .lookup(hash)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key store lookup failed");
                Reject::KeyStoreUnavailable
            })?
            .ok_or(Reject::InvalidApiKey)?;
        audit.key = Some(record.clone());

        // 6. May it make this request? Status, expiry, IP allowlist, environment, key type,
        //    route scopes, workspace/project binding.
        let now = SystemTime::now();
        let facts = RequestFacts {
            method: req.method(),
            path: req.uri().path(),
            client_ip,
            now,
        };
        let policy = Policy {
            routes: &config.routes,
            sandbox_upstream: config.upstream.sandbox_url.is_some(),
        };
        if config.log.access {
            audit.route = Some(
                config
                    .routes
                    .find(facts.method, facts.path)
                    .map_or("unmatched", |(route, _)| route.path.as_str()),
            );
        }
        authz::authorize(&record, claims, &facts, &policy)?;

        // 7. Within its plan? Only a request that may be served counts against a quota; a
        //    refusal by any window counts in none. A key suspended for hammering its limit is
        //    refused here too, before anything is counted.
        audit.now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match self.limiter.admit(hash, &record, now).await {
            Ok(window) => audit.limit = window,
            Err(Limited::Rate(refused)) => {
                audit.limit = Some(refused.window);
                return Err(Reject::RateLimitExceeded(refused));
            }
            Err(Limited::Suspended { retry_after }) => {
                return Err(Reject::KeySuspendedFor { retry_after });
            }
        }

        // 8. Forward, without the key and with the verified identity.
        let req = current.forwarder.prepare(req, &origin(Some(&record)));
        self.send(current, req, conn).await
    }

    async fn send(
        &self,
        current: &Current,
        req: Prepared,
        conn: &Connection,
    ) -> Result<Response<Incoming>, Reject> {
        let started = Instant::now();
        let response = current.forwarder.send(req, Some(&conn.paired)).await;
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        response
    }
}

impl Current {
    fn new(config: Arc<Config>) -> Result<Self, ClientError> {
        let forwarder = Forwarder::new(
            &config.upstream,
            &config.auth.credential_headers,
            config.server.max_body_bytes,
        )?;
        Ok(Self { config, forwarder })
    }
}

/// `X-Forwarded-Proto: https`, as a TLS terminator in front of keygate sets it. Only believed
/// from a trusted proxy (the caller checks).
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// Header block and declared body size against the configured caps. hyper already refuses
/// blocks beyond its read buffer (sized from the same setting); this gives everything in
/// between our JSON 431. A streamed body without `Content-Length` is cut off in the forwarder.
fn check_sizes<B>(req: &Request<B>, server: &crate::config::Server) -> Result<(), Reject> {
    // Counted as on the wire: "name: value\r\n", plus the request line.
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let uri = req.uri();
    let line = req.method().as_str().len()
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    if headers + line > server.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    if let Some(max) = server.max_body_bytes {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(Reject::PayloadTooLarge);
        }
    }
    Ok(())
}

/// Replaces the request's path, keeping its query.
fn set_path(req: &mut Request<Incoming>, path: &str) {
    let uri = req.uri();
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}
