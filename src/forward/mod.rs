//! The upstream side: who the client is, what the upstream may see, and sending it.
//!
//! Header hygiene, in the order [`Forwarder::prepare`] applies it:
//! 1. hop-by-hop headers (RFC 9110 §7.6.1, plus whatever `Connection` names) are removed;
//! 2. the credential is removed, so the upstream never holds a client's key;
//! 3. every `x-keygate-*` header from the client is removed, then keygate's identity headers
//!    are added, so the upstream can trust them;
//! 4. `X-Forwarded-For/-Proto/-Host` are set. Values a client sent are kept only when the
//!    TCP peer is a trusted proxy; otherwise they are replaced, never appended to, and
//!    `Forwarded` and `X-Real-IP` are removed. Spellings with `_` of the headers in 2-4 are
//!    removed too (CGI-style servers read `X_Keygate_Owner` as `X-Keygate-Owner`).
//!
//! Bodies are never buffered: they stream through. An `Upgrade` (WebSocket) survives step 1
//! when the client asked for one.
//!
//! The steps are in `headers` for hyper's requests (HTTP/2 clients) and in [`h1`] for
//! keygate's own HTTP/1.1, which writes the upstream's request head itself. HTTP/1.1 requests
//! go over a client connection's own upstream connection ([`upstream`]); hyper's go through
//! the shared pool (`client`).

pub mod batch;
mod client;
pub mod h1;
mod headers;
pub mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use http_body_util::Limited;
use hyper::body::Incoming;

pub use client::{ClientError, UpstreamBody};
pub use headers::client_ip;
use headers::{X_FORWARDED_FOR, add_identity, strip_credentials, strip_hop_by_hop};
use upstream::{Dialer, Parking, Route};

use crate::authz::canonical;
use crate::config::Upstream;
use crate::credential::CredentialHeader;
use crate::keys::Environment;
use crate::keys::cached::CachedKey;
use crate::reject::Reject;

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Everything [`Forwarder::prepare`] needs to know about the request besides its headers.
pub struct Origin<'a> {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    /// The client connection is TLS (keygate terminated it).
    pub tls: bool,
    /// `peer`, canonical, as a header value.
    pub peer_header: &'a HeaderValue,
    pub key: Option<&'a CachedKey>,
}

/// One upstream service: where requests go and what `Host` means for it.
pub struct Target {
    /// `scheme://authority/`.
    base: Uri,
    /// Path prefix of the upstream URL, without a trailing slash ("" for none).
    pub base_path: String,
    pub authority: HeaderValue,
}

impl Target {
    fn new(url: &Uri) -> Self {
        let authority = url.authority().expect("validated in config");
        Self {
            base: Uri::builder()
                .scheme(url.scheme_str().unwrap_or("http"))
                .authority(authority.as_str())
                .path_and_query("/")
                .build()
                .expect("validated in config"),
            base_path: url.path().trim_end_matches('/').to_owned(),
            authority: HeaderValue::from_str(authority.as_str()).expect("authority is ASCII"),
        }
    }
}

pub struct Forwarder {
    /// The shared pool (hyper's requests).
    client: client::UpstreamClient,
    /// Connections of keygate's own HTTP/1.1, and where they wait between client connections.
    dialer: Dialer,
    parking: Parking,
    /// Tells this forwarder's upstream connections from those of the one a reload replaced.
    id: u64,
    /// The upstream speaks HTTP/2: one shared connection multiplexes every request.
    http2: bool,
    production: Target,
    /// Where sandbox keys go; `None` refuses them (enforced by authorization).
    sandbox: Option<Target>,
    timeout: Duration,
    preserve_host: bool,
    credential_headers: Vec<CredentialHeader>,
    max_body: usize,
}

/// A request rewritten for the upstream, and where it goes.
pub struct Prepared {
    request: Request<UpstreamBody>,
    sandbox: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Forwarder {
    pub fn new(
        upstream: &Upstream,
        credential_headers: &[CredentialHeader],
        max_body: Option<u64>,
    ) -> Result<Self, ClientError> {
        static FORWARDERS: AtomicU64 = AtomicU64::new(0);
        let tls = client::tls_config(upstream)?;
        let mut h1_tls = tls.clone();
        h1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let dialer = Dialer::new(
            &upstream.url,
            upstream.sandbox_url.as_ref(),
            Arc::new(h1_tls),
            upstream.connect_timeout,
        )
        .map_err(ClientError::Address)?;
        Ok(Self {
            client: client::build(upstream, tls)?,
            dialer,
            parking: Parking::default(),
            id: FORWARDERS.fetch_add(1, Ordering::Relaxed),
            http2: upstream.http2,
            production: Target::new(&upstream.url),
            sandbox: upstream.sandbox_url.as_ref().map(Target::new),
            timeout: upstream.timeout,
            preserve_host: upstream.preserve_host,
            credential_headers: credential_headers.to_vec(),
            max_body: max_body.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
        })
    }

    /// Rewrites a client request into the upstream request (see the module doc). Sandbox
    /// keys go to the sandbox upstream, everything else to production.
    pub fn prepare(&self, mut req: Request<Incoming>, origin: &Origin) -> Prepared {
        let sandbox = self.sandboxed(origin.key);
        let target = self.target(sandbox);
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // Origin form (`/path?query`): the pool adds the upstream's scheme and authority.
        if !target.base_path.is_empty() || req.uri().authority().is_some() {
            let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
            let path = format!("{}{path}", target.base_path)
                .parse::<PathAndQuery>()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
        }
        // The upstream speaks HTTP/1.1 whatever the client spoke. (An `Upgrade` from a client
        // hyper serves has nowhere to go: it is stripped like any hop-by-hop header.)
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        strip_credentials(headers, &self.credential_headers);
        // What follows adds up to eight headers: one reservation instead of the map growing
        // (and rehashing) twice on the way.
        headers.reserve(8);
        if let Some(record) = origin.key {
            add_identity(headers, record);
        }

        let peer = origin.peer_header.clone();
        if !origin.peer_trusted {
            // What an untrusted client says of its own address is not passed on.
            headers.remove(&FORWARDED);
            headers.remove(&X_REAL_IP);
        }
        if origin.peer_trusted {
            let chain = headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let value = if chain.is_empty() {
                peer
            } else {
                HeaderValue::from_str(&format!("{chain}, {}", canonical(origin.peer)))
                    .unwrap_or(peer)
            };
            headers.insert(&X_FORWARDED_FOR, value);
        } else {
            headers.insert(&X_FORWARDED_FOR, peer);
        }
        if !origin.peer_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
            let proto = if origin.tls { "https" } else { "http" };
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !origin.peer_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
            match &original_host {
                Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
                None => headers.remove(&X_FORWARDED_HOST),
            };
        }
        match (&original_host, self.preserve_host) {
            (Some(host), true) => headers.insert(header::HOST, host.clone()),
            _ => headers.insert(header::HOST, target.authority.clone()),
        };
        let max_body = self.max_body;
        Prepared {
            request: req.map(|body| Limited::new(body, max_body)),
            sandbox,
        }
    }

    /// A sandbox key goes to the sandbox upstream (authorization refused it if there is none).
    pub fn sandboxed(&self, key: Option<&CachedKey>) -> bool {
        key.is_some_and(|k| k.env == Environment::Test) && self.sandbox.is_some()
    }

    pub fn target(&self, sandbox: bool) -> &Target {
        match (sandbox, &self.sandbox) {
            (true, Some(sandbox)) => sandbox,
            _ => &self.production,
        }
    }

    /// Where keygate's own HTTP/1.1 connections for `sandbox` go.
    pub fn route(&self, sandbox: bool) -> Route {
        Route {
            forwarder: self.id,
            sandbox,
        }
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    pub fn parking(&self) -> &Parking {
        &self.parking
    }

    /// Time allowed for the upstream's response head.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn preserve_host(&self) -> bool {
        self.preserve_host
    }

    pub fn credential_headers(&self) -> &[CredentialHeader] {
        &self.credential_headers
    }

    /// `server.max_body_bytes`, or no limit.
    pub fn max_body(&self) -> u64 {
        self.max_body as u64
    }

    /// The upstream speaks HTTP/2: everything goes through the shared pool.
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// Sends the prepared request through the shared pool and waits at most the configured
    /// timeout for the response head.
    pub async fn send(&self, prepared: Prepared) -> Result<Response<Incoming>, Reject> {
        let Prepared { request, sandbox } = prepared;
        let outcome = tokio::time::timeout(self.timeout, self.via_pool(sandbox, request)).await;
        let mut response = match outcome {
            Err(_) => return Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                if is_body_too_large(&*e) {
                    return Err(Reject::PayloadTooLarge);
                }
                if crate::ratelog::UPSTREAM_FAILED.allow() {
                    tracing::warn!(error = %error_chain(&*e), "upstream request failed");
                }
                return Err(if is_timeout(&*e) {
                    Reject::UpstreamTimeout
                } else {
                    Reject::UpstreamUnavailable
                });
            }
            Ok(Ok(response)) => response,
        };
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    async fn via_pool(
        &self,
        sandbox: bool,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut parts = self.target(sandbox).base.clone().into_parts();
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts)?;
        Ok(self.client.request(req).await?)
    }
}

/// The client's body ran past `server.max_body_bytes` while it streamed upstream.
fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
