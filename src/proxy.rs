//! The request path: `Proxy::admit` runs the ordered stages that decide whether a request
//! goes upstream (reading it top to bottom is reading the product), `Proxy::finish` records
//! every request (metrics, access log). Both HTTP engines use them: keygate's own HTTP/1.1
//! (`server::session`) and hyper for HTTP/2 clients, whose request path is [`Proxy::handle`].
//!
//! The reloadable part (config, upstream client) sits behind one `ArcSwap`: a request takes
//! one snapshot when it starts and uses it to the end, so a reload never mixes two configs
//! within one request.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::authz::{self, Policy, RequestFacts};
use crate::config::Config;
use crate::credential::{self, HeaderSet, KeyClaims};
use crate::forward::links::{Forwarded, WebSocket};
use crate::forward::{self, ClientError, Forwarder, Origin, Prepared, ResponseBody};
use crate::guard::{Guard, Source, Verdict};
use crate::head::Head;
use crate::header_rules;
use crate::keys::cache::KeyCache;
use crate::keys::cached_key::CachedKey;
use crate::keys::rotation::Due;
use crate::limits::{self, Limited, Limiter, SharedSettings, WindowState};
use crate::metrics::{Decision, Metrics, Outcome};
use crate::path;
use crate::reject::Reject;
use crate::routes::Found;
use crate::token;
use crate::vocab::KeyHash;
use crate::wire::request::{FramingRules, HeadError};

/// A response body: the upstream's stream (the pool's, or read from keygate's own upstream
/// connection), or keygate's own small JSON.
pub type Body = Either<ResponseBody, Full<Bytes>>;

pub struct Proxy {
    current: ArcSwap<Current>,
    keys: Arc<KeyCache>,
    limiter: Limiter,
    guard: Guard,
    metrics: Arc<Metrics>,
}

/// What a config reload replaces.
pub(crate) struct Current {
    pub config: Arc<Config>,
    pub forwarder: Forwarder,
}

/// How the request reached keygate: one per client connection.
pub struct Connection {
    pub peer: SocketAddr,
    /// Over keygate's own TLS listener.
    pub tls: bool,
    /// The peer's address as an `X-Forwarded-For` value, formatted once per connection.
    pub peer_header: HeaderValue,
}

impl Connection {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let ip = authz::canonical(peer.ip()).to_string();
        Self {
            peer,
            tls,
            peer_header: HeaderValue::from_str(&ip).expect("an IP address is a valid header value"),
        }
    }
}

/// What the stages learned about one request: read by forwarding (the key's identity, whether
/// the peer is trusted) and by the metrics and the access log.
#[derive(Default)]
pub(crate) struct Audit<'a> {
    /// The route rule that matched (its pattern, never the raw path), `public` for a public
    /// path, `unmatched` when no rule did.
    pub route: Option<&'a str>,
    pub key: Option<Arc<CachedKey>>,
    pub client_ip: Option<std::net::IpAddr>,
    /// The TCP peer is one of `[network] trusted_proxies`.
    pub peer_trusted: bool,
    /// The most constraining rate-limit window, for the response headers.
    pub limit: Option<WindowState>,
    /// The key is due for rotation (`[keys] max_age` / `warn_before`): `Deprecation` and
    /// `Sunset` for the response.
    pub rotation: Option<Due>,
    /// The `Access-Control-*` headers for a browser's request ([`crate::cors`]), refusals
    /// included; each engine renders them in place of the upstream's own.
    pub cors: Option<crate::cors::Headers>,
    pub now_secs: u64,
    /// Set by the engine before admission: the request asks for a WebSocket, which outlives
    /// it; then admission keeps what it checked ([`Audit::held`]).
    pub tunnel: bool,
    /// For a tunnel: what its request was admitted on, to check again while it lives.
    pub held: Option<Box<Admitted>>,
}

/// What a WebSocket's request was admitted on: while the tunnel lives, the same checks (the
/// key's browser origins, stage 6b, and its authorization, stage 7) run again whenever the key
/// may have changed ([`KeyCache::lapsed`]), against the key as it is then, under the config the
/// request was admitted with (a reload applies to tunnels opened after it, as to any request in
/// flight).
#[derive(Clone)]
pub(crate) struct Admitted {
    hash: KeyHash,
    /// When the access token the key came as runs out.
    token_expires: Option<SystemTime>,
    claims: KeyClaims,
    /// Normalized, as the rules matched it.
    path: String,
    client_ip: std::net::IpAddr,
    via: HeaderSet,
    narrowed: Vec<String>,
    /// The browser page's `Origin`, which a public key's origins must allow (stage 6b).
    origin: Option<Box<[u8]>>,
    config: Arc<Config>,
}

impl Admitted {
    /// Whether `record` still admits the request: from the origin (a public key's), and
    /// status, expiry, IP allowlist, scopes, ...
    fn admits(&self, record: &CachedKey) -> bool {
        let from_origin = self
            .config
            .cors
            .for_key(
                self.origin.as_deref(),
                record.key_type,
                record.allowed_origins(),
            )
            .is_ok();
        let facts = RequestFacts {
            method: &http::Method::GET,
            path: &self.path,
            client_ip: self.client_ip,
            now: SystemTime::now(),
            via: self.via,
            narrowed: &self.narrowed,
        };
        from_origin && authz::authorize(record, self.claims, &facts, &policy(&self.config)).is_ok()
    }
}

/// The configured rules a key is held to.
fn policy(config: &Config) -> Policy<'_> {
    Policy {
        routes: &config.routes,
        sandbox_upstream: config.upstream.sandbox_url.is_some(),
        environments: &config.environments,
    }
}

/// What the request presented, once its shape is checked.
enum Credential {
    Key(KeyClaims),
    Token(token::Claims),
}

/// An admitted request: what forwarding needs besides the request and `Audit`.
pub(crate) struct Admission {
    /// The normalized path, when it differs from the request's (forwarded instead of it).
    pub path: Option<String>,
    /// A CORS preflight, answered `204` by keygate itself with `Audit::cors`; never forwarded.
    pub preflight: bool,
}

/// One finished request, for [`Proxy::finish`].
pub(crate) struct Ended<'a> {
    pub started: Instant,
    /// `None` for a request refused before its head could be read.
    pub method: Option<&'a http::Method>,
    /// The request's path (never its query), when access logs are on.
    pub path: Option<&'a str>,
    pub audit: &'a Audit<'a>,
    pub outcome: Outcome,
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
                fallback: redis.quota_fallback,
            };
            limiter = limiter.with_shared_quotas(quotas, settings, metrics.clone());
        }
        // Likewise the stuffing guard's counts of unknown keys.
        let guard = Guard::new(match &config.store {
            crate::config::StoreConfig::Redis(_) => keys.store().clone().failures(),
            crate::config::StoreConfig::File { .. } => None,
        });
        Ok(Self {
            current: ArcSwap::from_pointee(Current::new(config)?),
            keys,
            limiter,
            guard,
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

    /// The config and forwarder a request that starts now is served with, to the end.
    pub(crate) fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Resolves when what `held` was admitted on no longer is (never, for `None`: a public
    /// path's request): the end of a WebSocket tunnel it opened ([`KeyCache::lapsed`]).
    pub(crate) fn key_lapse(
        &self,
        held: Option<Box<Admitted>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let keys = self.keys.clone();
        async move {
            match held {
                Some(held) => {
                    let (hash, until) = (held.hash, held.token_expires);
                    keys.lapsed(hash, until, move |record| held.admits(record))
                        .await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// Runs one request from an HTTP/2 client (hyper's side of keygate; HTTP/1.1 clients are
    /// served by [`crate::wire`]) and never fails: a refusal becomes its JSON response here.
    /// An admitted HTTP/2 request to an HTTP/1.1 upstream goes over keygate's own upstream
    /// connections ([`forward::links`]), anything else through hyper's pool.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: &Connection) -> Response<Body> {
        let started = Instant::now();
        let current = self.current();
        // An HTTP/2 client's WebSocket is read from here on as the `GET` it stands for.
        let websocket = WebSocket::take(&mut req);
        let method = req.method().clone();
        // The path only: query strings carry secrets often enough (`?api_key=`).
        let path = current
            .config
            .log
            .access
            .then(|| req.uri().path().to_owned());
        let mut audit = Audit::default();
        // An HTTP/1.1 client hyper serves (the upstream speaks HTTP/2) is held to the framing
        // rules of keygate's own parser, and, as there, a request refused as malformed closes
        // its connection after the answer: what follows it could be read two ways.
        let http1 = req.version() < http::Version::HTTP_2;
        if let Some(tokens) = &current.config.tokens
            && req.uri().path() == tokens.path
        {
            let outcome = match http1_framing(&req) {
                Ok(()) => {
                    self.issue_token(&current.config, tokens, req, conn, &mut audit)
                        .await
                }
                Err(reject) => Err(reject),
            };
            audit.route = Some("token");
            let (response, decision) = match outcome {
                Ok(response) => (response, Decision::Allowed),
                Err(reject) => {
                    let code = reject.code();
                    (reject.into_response(), Decision::Refused(code))
                }
            };
            self.finish(
                &current.config,
                &Ended {
                    started,
                    method: Some(&method),
                    path: path.as_deref(),
                    audit: &audit,
                    outcome: Outcome {
                        status: response.status().as_u16(),
                        decision,
                    },
                },
            );
            return response.map(Either::Right);
        }
        audit.tunnel = websocket.is_some();
        let admitted = match http1_framing(&req) {
            Ok(()) => self.admit(&current, &req, conn, &mut audit).await,
            Err(reject) => Err(reject),
        };
        let outcome = match admitted {
            Ok(admission)
                if admission
                    .path
                    .as_deref()
                    .is_some_and(|normal| !set_path(&mut req, normal)) =>
            {
                // Never forward the path as received in place of the one authorized.
                Err(Reject::BadRequest(
                    "the normalized path is not a valid target",
                ))
            }
            Ok(admission) if admission.preflight => Ok(Response::builder()
                .status(http::StatusCode::NO_CONTENT)
                .body(Either::Right(Full::new(Bytes::new())))
                .expect("a static response is valid")),
            Ok(_) => {
                let origin = Origin {
                    peer: conn.peer.ip(),
                    peer_trusted: audit.peer_trusted,
                    tls: conn.tls,
                    peer_header: &conn.peer_header,
                    key: audit.key.as_deref(),
                };
                if req.version() == http::Version::HTTP_2 && !current.forwarder.is_http2() {
                    // keygate's own upstream connections, in this stream's task.
                    let started = Instant::now();
                    let forwarded = current
                        .forwarder
                        .over_link(
                            req,
                            &origin,
                            &self.metrics,
                            current.config.server.batch_writes,
                            websocket,
                        )
                        .await;
                    self.metrics
                        .upstream_latency
                        .observe(started.elapsed().as_secs_f64());
                    match forwarded {
                        Ok(Forwarded::Response(r)) => {
                            let body_timeout = current.forwarder.body_timeout();
                            Ok(r.map(|b| {
                                Either::Left(ResponseBody::link(b, body_timeout, &self.metrics))
                            }))
                        }
                        Ok(Forwarded::Tunnel { headers, tunnel }) => {
                            let (idle, metrics) = (
                                current.forwarder.tunnel_idle_timeout(),
                                self.metrics.clone(),
                            );
                            let lapse = self.key_lapse(audit.held.take());
                            tokio::spawn(async move { tunnel.run(idle, &metrics, lapse).await });
                            let mut response =
                                Response::new(Either::Right(Full::new(Bytes::new())));
                            *response.headers_mut() = headers;
                            Ok(response)
                        }
                        Err(reject) => Err(reject),
                    }
                } else if current.forwarder.is_http2()
                    && (websocket.is_some() || asks_websocket(&req))
                {
                    // Said, not stripped: the client waits for a `101` (or a `200` to its
                    // CONNECT) that a plain GET would never bring.
                    Err(Reject::WebSocketUnsupported)
                } else {
                    let prepared = current.forwarder.prepare(req, &origin);
                    let body_timeout = current.forwarder.body_timeout();
                    self.send(&current, prepared).await.map(|r| {
                        r.map(|b| Either::Left(ResponseBody::pool(b, body_timeout, &self.metrics)))
                    })
                }
            }
            Err(reject) => Err(reject),
        };
        let close = http1 && matches!(outcome, Err(Reject::BadRequest(_)));
        let (mut response, decision) = match outcome {
            Ok(response) => (response, Decision::Allowed),
            Err(reject) => {
                let code = reject.code();
                (
                    reject.into_response().map(Either::Right),
                    Decision::Refused(code),
                )
            }
        };
        if close {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(window) = &audit.limit {
            limits::headers::apply(
                response.headers_mut(),
                window,
                audit.now_secs,
                self.limiter.reset_style(),
            );
        }
        if let Some(cors) = audit.cors.take() {
            cors_headers(response.headers_mut(), cors);
        }
        if let Some(due) = &audit.rotation {
            // The upstream's own deprecation of an endpoint wins over the key's.
            for (name, value) in due.headers() {
                if let http::header::Entry::Vacant(slot) = response.headers_mut().entry(name) {
                    slot.insert(value);
                }
            }
        }
        self.finish(
            &current.config,
            &Ended {
                started,
                method: Some(&method),
                path: path.as_deref(),
                audit: &audit,
                outcome: Outcome {
                    status: response.status().as_u16(),
                    decision,
                },
            },
        );
        response
    }

    /// Metrics and the access log line for one finished request, from either engine.
    pub(crate) fn finish(&self, config: &Config, ended: &Ended) {
        let latency = ended.started.elapsed();
        self.metrics.request(ended.outcome, latency);
        if let (Some(key), Decision::Allowed) = (ended.audit.key.as_deref(), ended.outcome.decision)
        {
            self.metrics.used(key.plan.as_deref(), key.owner.as_str());
            self.keys.used(key);
        }
        if config.log.access {
            let audit = ended.audit;
            let key = audit.key.as_deref();
            tracing::info!(
                target: "keygate::access",
                method = ended.method.map_or("-", http::Method::as_str),
                path = ended.path.unwrap_or_default(),
                route = audit.route,
                status = ended.outcome.status,
                decision = ended.outcome.decision.as_str(),
                key_id = key.map(|k| &*k.id),
                owner = key.map(|k| k.owner.as_str()),
                env = key.map(|k| k.env.as_str()),
                client_ip = audit.client_ip.map(tracing::field::display),
                latency_us = latency.as_micros() as u64,
            );
        }
    }

    /// The ordered stages that decide whether a request goes to the upstream. Cheap, I/O-free
    /// checks come first so that junk never costs a store lookup; authorization needs the
    /// record, so it follows the lookup; counting against quotas comes last, so a refused
    /// request costs its key nothing. What the stages learn goes into `audit`.
    pub(crate) async fn admit<'a>(
        &self,
        current: &'a Current,
        head: &impl Head,
        conn: &Connection,
        audit: &mut Audit<'a>,
    ) -> Result<Admission, Reject> {
        let config = &*current.config;
        let trusted = &config.network.trusted_proxies;
        let peer = conn.peer.ip();
        audit.peer_trusted = trusted
            .iter()
            .any(|net| net.contains(&authz::canonical(peer)));
        let client_ip = forward::client_ip(peer, head, trusted);
        audit.client_ip = Some(client_ip);

        // 0. Transport rules, before anything is read into: HTTPS only (if asked), bounded
        //    headers and body.
        if config.network.require_https
            && !conn.tls
            && !(audit.peer_trusted && forwarded_https(head))
        {
            return Err(Reject::HttpsRequired);
        }
        check_sizes(head, &config.server)?;
        check_method(head.method())?;

        // 1. The path rules are matched against, made unambiguous first: what is authorized
        //    must be what the upstream serves (no `/open/../admin`, no `/%61dmin`, no `;`).
        let normal = path::normalize(head.path(), &config.paths).map_err(Reject::InvalidPath)?;
        let path = &*normal;
        let admission = |normal: Cow<str>| {
            Ok(Admission {
                path: match normal {
                    Cow::Owned(changed) => Some(changed),
                    Cow::Borrowed(_) => None,
                },
                preflight: false,
            })
        };

        // The token endpoint is answered by hyper's engine (`Proxy::handle`), to which
        // keygate's own HTTP/1.1 engine hands a connection whose request names it exactly; a
        // spelling that only normalizes to it is refused, never forwarded.
        if config.tokens.as_ref().is_some_and(|t| t.path == path) {
            return Err(Reject::OAuth(crate::reject::OAuthError::InvalidRequest(
                "request the token endpoint at its exact path",
            )));
        }

        // 2. Public paths (an upstream's own health check, docs) need no key at all.
        if config
            .auth
            .public_paths
            .iter()
            .any(|p| p.matches(path).is_some())
        {
            audit.route = Some("public");
            return admission(normal);
        }

        // 2b. A browser's CORS preflight carries no key: answered here, never forwarded
        //     (`crate::cors` says for which origins). Other requests from a browser: refusals
        //     until the key is known carry the preflight's CORS headers, so the page can read
        //     why; the key's own origins decide from step 6 on.
        let origin = origin(head);
        if head.method() == http::Method::OPTIONS
            && let Some(origin) = origin
            && head
                .values("access-control-request-method")
                .next()
                .is_some()
        {
            audit.route = Some("preflight");
            let headers = config
                .cors
                .preflight(origin, &config.auth.credential_headers)
                .map_err(Reject::OriginNotAllowed)?;
            audit.cors = Some(headers);
            return Ok(Admission {
                path: None,
                preflight: true,
            });
        }
        audit.cors = config.cors.before_key(origin);

        // 3. Which key? Exactly one, from the configured headers, length-capped.
        let auth = &config.auth;
        let presented = credential::present(head, &auth.credential_headers, auth.max_key_length)?;
        let key = presented.key;

        // 4. Has its source been sending junk? One past `[guard] max_invalid` failures is
        //    refused before its key costs anything, unless this sidecar knows the key.
        let source = Source::of(client_ip);
        if let Verdict::Blocked { retry_after } = self.guard.check(source, Instant::now())
            && (config.guard.block_known_keys || !self.keys.knows(&KeyHash::of(key)))
        {
            return Err(Reject::TooManyInvalidKeys { retry_after });
        }

        // 5. Is it shaped like one of ours? A key: prefix, type, environment, checksum. An
        //    access token: checksum, sealed box, expiry; from here on it stands for its key,
        //    narrowed to the scopes it was issued with. No I/O.
        let shape = match &config.tokens {
            Some(tokens) if token::is_token(key, &config.keys.prefix) => {
                token::open(key, &tokens.secrets, &config.keys.prefix, SystemTime::now())
                    .map(Credential::Token)
            }
            _ => credential::parse_key(key, &config.keys.prefix).map(Credential::Key),
        };
        let credential = match shape {
            Ok(credential) => credential,
            Err(reject) => {
                if reject != Reject::ExpiredToken {
                    let counted = self.guard.malformed(&config.guard, source, Instant::now());
                    self.metrics.guard(counted);
                }
                return Err(reject);
            }
        };
        let hash = match &credential {
            Credential::Key(_) => KeyHash::of(key),
            Credential::Token(token) => token.key,
        };

        // 6. Do we know it? Only the hash is ever looked up or stored.
        let found = self.keys.lookup(hash).await.map_err(|e| {
            if crate::ratelog::KEY_LOOKUP.allow() {
                tracing::error!(error = %e, "key store lookup failed");
            }
            Reject::KeyStoreUnavailable
        })?;
        let Some(record) = found else {
            if let Credential::Token(_) = credential {
                // Sealed by us for a key that is gone: as dead as the key.
                return Err(Reject::InvalidToken);
            }
            let counted = self
                .guard
                .unknown(&config.guard, source, Instant::now())
                .await;
            self.metrics.guard(counted);
            return Err(Reject::InvalidApiKey);
        };
        audit.key = Some(record.clone());
        let (claims, narrowed, via) = match &credential {
            Credential::Key(claims) => (*claims, &[][..], presented.via),
            // The box vouches for the key; a token is a Bearer credential of its own kind, so
            // its key's header binding does not apply to it.
            Credential::Token(token) => (
                KeyClaims {
                    key_type: record.key_type,
                    env: record.env,
                },
                token.scopes.as_slice(),
                HeaderSet::EMPTY,
            ),
        };
        // 6b. A browser's request: from an origin this key allows? Before anything else is
        //     said about the key, so a page on another origin learns nothing (no
        //     `Access-Control-Allow-Origin` on the refusal).
        // (Cleared first: a refused origin gets none of the preflight's headers either.)
        audit.cors = None;
        audit.cors = config
            .cors
            .for_key(origin, record.key_type, record.allowed_origins())
            .map_err(Reject::OriginNotAllowed)?;

        // 7. May it make this request? Status, expiry, the headers it may arrive in, IP
        //    allowlist, environment, key type, route scopes, workspace/project binding.
        let now = SystemTime::now();
        let facts = RequestFacts {
            method: head.method(),
            path,
            client_ip,
            now,
            via,
            narrowed,
        };
        let policy = policy(config);
        if config.log.access {
            audit.route = Some(match config.routes.find(facts.method, facts.path) {
                Found::Rule(route, _) => route.path.as_str(),
                Found::OtherMethods | Found::Unmatched => "unmatched",
            });
        }
        authz::authorize(&record, claims, &facts, &policy)?;
        if audit.tunnel {
            audit.held = Some(Box::new(Admitted {
                hash,
                token_expires: match &credential {
                    Credential::Key(_) => None,
                    Credential::Token(token) => Some(token.expires_at),
                },
                claims,
                path: facts.path.to_owned(),
                client_ip,
                via,
                narrowed: narrowed.to_vec(),
                origin: origin.map(Box::from),
                config: current.config.clone(),
            }));
        }

        // 7b. Due for rotation? It still works; its responses say by when to replace it.
        audit.rotation = config
            .keys
            .rotation()
            .due(record.created_at(), record.expires_at(), now);

        // 8. Within its plan? Only a request that may be served counts against a quota; a
        //    refusal by any window counts in none. A key suspended for hammering its limit is
        //    refused here too, before anything is counted.
        //    A route with limits of its own counts the key there too (`[[route]] limits`).
        audit.now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let route_limit = match config.routes.has_limits() {
            true => match config.routes.find(facts.method, facts.path) {
                Found::Rule(route, _) => route.limits.as_ref().map(|l| l.as_limit()),
                Found::OtherMethods | Found::Unmatched => None,
            },
            false => None,
        };
        match self
            .limiter
            .admit_with_route(hash, &*record, route_limit, now)
            .await
        {
            Ok(window) => audit.limit = window,
            Err(refused) => {
                if let Limited::Rate(over) = refused {
                    audit.limit = Some(over.window);
                }
                return Err(refused.into());
            }
        }

        // 9. Admitted: the engine forwards it, without the key and with the verified
        //    identity (`audit.key`).
        admission(normal)
    }

    /// `POST [tokens] path`: a client-credentials grant (RFC 6749 §4.4) answered by keygate
    /// itself. The client id is the key's id, the secret the key; the key must be alive now,
    /// and a `scope` must be a subset of its scopes. Failed client authentication counts with
    /// the stuffing guard like an unknown key.
    async fn issue_token(
        &self,
        config: &Config,
        tokens: &token::TokensConfig,
        req: Request<Incoming>,
        conn: &Connection,
        audit: &mut Audit<'_>,
    ) -> Result<Response<Full<Bytes>>, Reject> {
        use crate::reject::OAuthError;
        let peer = conn.peer.ip();
        let trusted = &config.network.trusted_proxies;
        audit.peer_trusted = trusted
            .iter()
            .any(|net| net.contains(&authz::canonical(peer)));
        let client_ip = forward::client_ip(peer, &req, trusted);
        audit.client_ip = Some(client_ip);
        if config.network.require_https
            && !conn.tls
            && !(audit.peer_trusted && forwarded_https(&req))
        {
            return Err(Reject::HttpsRequired);
        }
        if req.method() != http::Method::POST {
            return Err(Reject::MethodNotAllowed(vec![http::Method::POST]));
        }
        let source = Source::of(client_ip);
        if let Verdict::Blocked { retry_after } = self.guard.check(source, Instant::now()) {
            return Err(Reject::TooManyInvalidKeys { retry_after });
        }
        let form = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            return Err(Reject::OAuth(OAuthError::InvalidRequest(
                "send the parameters as application/x-www-form-urlencoded",
            )));
        }
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let body = read_own_body(req.into_body(), 4096, config.server.header_read_timeout)
            .await
            .map_err(|e| {
                Reject::OAuth(OAuthError::InvalidRequest(match e {
                    OwnBodyError::TooSlow(_) => {
                        "the body did not arrive within [server] header_read_timeout"
                    }
                    _ => "the body is broken or over 4 KiB",
                }))
            })?;
        let grant = token::grant(authorization.as_deref(), &body).map_err(Reject::OAuth)?;

        let now = SystemTime::now();
        let record = match credential::parse_key(&grant.secret, &config.keys.prefix) {
            Ok(_) => {
                let hash = KeyHash::of(&grant.secret);
                let found = self.keys.lookup(hash).await.map_err(|e| {
                    if crate::ratelog::KEY_LOOKUP.allow() {
                        tracing::error!(error = %e, "key store lookup failed");
                    }
                    Reject::KeyStoreUnavailable
                })?;
                found.filter(|r| {
                    *r.id == *grant.client_id
                        && r.status == crate::vocab::Status::Active
                        && r.expires_at().is_none_or(|at| at > now)
                })
            }
            Err(_) => None,
        };
        let Some(record) = record else {
            let counted = self
                .guard
                .unknown(&config.guard, source, Instant::now())
                .await;
            self.metrics.guard(counted);
            return Err(Reject::OAuth(OAuthError::InvalidClient));
        };
        audit.key = Some(record.clone());
        // RFC 6749 §5.2 `unauthorized_client`: a Railway-style project key may only arrive in
        // `Project-Access-Token`, and a token would carry it as Bearer.
        let bound = record.headers();
        if !bound.is_empty() && !bound.contains(crate::vocab::CredentialHeader::Authorization) {
            return Err(Reject::OAuth(OAuthError::UnauthorizedClient));
        }
        let held: Vec<&str> = record.scopes.iter().collect();
        let scopes = token::narrow(&held, grant.scope).map_err(Reject::OAuth)?;
        let claims = token::Claims {
            key: KeyHash::of(&grant.secret),
            expires_at: now + tokens.lifetime,
            scopes,
        };
        let access_token = token::issue(&claims, &tokens.secrets, &config.keys.prefix)?;
        let mut body = serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": tokens.lifetime.as_secs(),
        });
        if !claims.scopes.is_empty() {
            body["scope"] = claims.scopes.join(" ").into();
        }
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // RFC 6749 §5.1.
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    async fn send(&self, current: &Current, req: Prepared) -> Result<Response<Incoming>, Reject> {
        let started = Instant::now();
        let response = current.forwarder.send(req, &self.metrics).await;
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        response
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl Current {
    pub(crate) fn new(config: Arc<Config>) -> Result<Self, ClientError> {
        let forwarder = Forwarder::new(
            &config.upstream,
            &config.auth.credential_headers,
            &config.keys.prefix,
            config.server.max_body_bytes,
            config.server.shards(),
        )?;
        Ok(Self { config, forwarder })
    }
}

/// Renders [`crate::cors`]'s decision on hyper's header map: the upstream's own
/// `Access-Control-*` give way, `Vary: Origin` joins whatever the upstream varies on.
/// Why a body keygate answers itself (the token endpoint's form, a management request's
/// JSON) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OwnBodyError {
    #[error("the body is over {0} bytes")]
    TooLarge(usize),
    /// A client that sends a head and then too little of its body would otherwise hold its
    /// connection for as long as it likes: the request is in flight, so no idle clock runs.
    #[error("the body did not arrive within {0:?} ([server] header_read_timeout)")]
    TooSlow(std::time::Duration),
    #[error("the body could not be read: {0}")]
    Broken(String),
}

/// Reads a request body keygate answers itself: at most `max` bytes, all of them within
/// `within` (the header timeout: such bodies are small, and this one clock serves for a slow
/// head and a slow body alike).
pub async fn read_own_body<B>(
    body: B,
    max: usize,
    within: std::time::Duration,
) -> Result<Bytes, OwnBodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::{BodyExt, Limited};
    match tokio::time::timeout(within, Limited::new(body, max).collect()).await {
        Err(_) => Err(OwnBodyError::TooSlow(within)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(OwnBodyError::TooLarge(max))
        }
        Ok(Err(e)) => Err(OwnBodyError::Broken(e.to_string())),
    }
}

fn cors_headers(headers: &mut http::HeaderMap, cors: crate::cors::Headers) {
    let theirs: Vec<http::HeaderName> = headers
        .keys()
        .filter(|n| crate::cors::is_cors_header(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in theirs {
        headers.remove(name);
    }
    for (name, value) in cors {
        headers.append(name, value);
    }
}

/// The request's `Origin` (a browser's); more than one is no origin a pattern matches.
fn origin(head: &impl Head) -> Option<&[u8]> {
    let mut values = head.values("origin");
    let first = values.next()?;
    Some(match values.next() {
        None => first,
        Some(_) => b"",
    })
}

/// `X-Forwarded-Proto: https`, as a TLS terminator in front of keygate sets it. Only believed
/// from a trusted proxy (the caller checks).
fn forwarded_https(head: &impl Head) -> bool {
    head.values("x-forwarded-proto")
        .next()
        .is_some_and(|v| v.eq_ignore_ascii_case(b"https"))
}

/// Header block and declared body size against the configured caps. A streamed body without
/// `Content-Length` is cut off while it is forwarded.
fn check_sizes(head: &impl Head, server: &crate::config::Server) -> Result<(), Reject> {
    if head.head_len() > server.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    if let Some(max) = server.max_body_bytes
        && head.declared_length().is_some_and(|len| len > max)
    {
        return Err(Reject::PayloadTooLarge);
    }
    Ok(())
}

/// Whether `req` is an HTTP/1.1 client's WebSocket handshake ([`header_rules::asks_websocket`]).
fn asks_websocket<B>(req: &Request<B>) -> bool {
    // One map lookup first: the pool's other requests never read their headers twice.
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(http::header::UPGRADE)
        && header_rules::asks_websocket(
            req.headers()
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())),
        )
}

/// [`FramingRules`] for an HTTP/1.x request hyper parsed; HTTP/2 frames its own bodies.
fn http1_framing<B>(req: &Request<B>) -> Result<(), Reject> {
    let http11 = match req.version() {
        http::Version::HTTP_11 => true,
        http::Version::HTTP_10 | http::Version::HTTP_09 => false,
        _ => return Ok(()),
    };
    let mut rules = FramingRules::default();
    let refuse = |e| match e {
        HeadError::Invalid(why) => Reject::BadRequest(why),
        HeadError::TooLarge => Reject::HeadersTooLarge,
    };
    for (name, value) in req.headers() {
        rules
            .line(
                header_rules::name(name.as_str().as_bytes()),
                value.as_bytes(),
            )
            .map_err(refuse)?;
    }
    rules
        .finish(http11, req.uri().authority().is_some())
        .map(|_| ())
        .map_err(refuse)
}

/// `CONNECT` is refused (an HTTP/2 client's WebSocket reaches the stages as the `GET` it
/// stands for: [`WebSocket::take`]). Method names are case-sensitive (RFC 9110 §9.1), but not to every
/// upstream: some fold `get` into `GET` after a rule listing `GET` missed it. Refused rather
/// than guessed at.
fn check_method(method: &http::Method) -> Result<(), Reject> {
    // A tunnel carries bytes no rule ever sees.
    if method == http::Method::CONNECT {
        return Err(Reject::BadRequest(
            "CONNECT is supported only to open a WebSocket (RFC 8441)",
        ));
    }
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Reject::BadRequest(
            "method names are case-sensitive; send them in uppercase",
        ));
    }
    Ok(())
}

/// Replaces the request's path, keeping its query; false (and nothing changed) if the result
/// is not a valid target.
fn set_path<B>(req: &mut Request<B>, path: &str) -> bool {
    let uri = req.uri();
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    let Ok(pq) = path_and_query.parse() else {
        return false;
    };
    parts.path_and_query = Some(pq);
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            true
        }
        Err(_) => false,
    }
}
