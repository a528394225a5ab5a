//! The upstream side: who the client is, what the upstream may see, and sending it.
//!
//! Header hygiene, in the order [`Forwarder::prepare`] applies it:
//! 1. hop-by-hop headers (RFC 9110 §7.6.1, plus whatever `Connection` names) are removed;
//! 2. the credential is removed, so the upstream never holds a client's key;
//! 3. every `x-keygate-*` header from the client is removed, then keygate's identity headers
//!    are added, so the upstream can trust them;
//! 4. `X-Forwarded-For/-Proto/-Host` are set. Values a client sent are kept only when the
//!    TCP peer is a trusted proxy; otherwise they are replaced, never appended to.
//!
//! Bodies are never buffered: the client's body stream is handed to the upstream request and
//! the upstream's body stream to the client response. An `Upgrade` (WebSocket) survives step 1
//! when the client asked for one; see [`upgrade`].
//!
//! The steps themselves are in `headers`; how requests reach the upstream (a client
//! connection's own upstream connection, or the shared pool) in [`paired`] and `client`.

mod client;
mod headers;
pub mod paired;
pub mod upgrade;

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
pub use paired::Paired;
use paired::{Lane, Link, Parking, Route, Sender};
use tower_service::Service;

use crate::authz::canonical;
use crate::config::Upstream;
use crate::credential::CredentialHeader;
use crate::keys::Environment;
use crate::keys::cached::CachedKey;
use crate::reject::Reject;

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
struct Target {
    /// `scheme://authority/`.
    base: Uri,
    /// Path prefix of the upstream URL, without a trailing slash ("" for none).
    base_path: String,
    authority: HeaderValue,
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
    client: client::UpstreamClient,
    connector: client::Connector,
    /// Tells this forwarder's upstream connections from those of the one a reload replaced.
    id: u64,
    parking: Arc<Parking>,
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
    /// It may use the client connection's own upstream connection (see [`paired`]).
    pairable: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Forwarder {
    pub fn new(
        upstream: &Upstream,
        credential_headers: &[CredentialHeader],
        max_body: Option<u64>,
    ) -> Result<Self, ClientError> {
        static FORWARDERS: AtomicU64 = AtomicU64::new(0);
        let (client, connector) = client::build(upstream)?;
        Ok(Self {
            client,
            connector,
            id: FORWARDERS.fetch_add(1, Ordering::Relaxed),
            parking: Arc::default(),
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
        let sandbox = matches!(
            (origin.key.map(|k| k.env), &self.sandbox),
            (Some(Environment::Test), Some(_))
        );
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
        let pairable = !self.http2 && req.version() <= Version::HTTP_11;
        // The upstream speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        let upgrade = upgrade::requested(headers);
        let pairable = pairable && upgrade.is_none();
        strip_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            upgrade::restore(headers, protocol);
        }
        strip_credentials(headers, &self.credential_headers);
        // What follows adds up to eight headers: one reservation instead of the map growing
        // (and rehashing) twice on the way.
        headers.reserve(8);
        if let Some(record) = origin.key {
            add_identity(headers, record);
        }

        let peer = origin.peer_header.clone();
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
            pairable,
        }
    }

    fn target(&self, sandbox: bool) -> &Target {
        match (sandbox, &self.sandbox) {
            (true, Some(sandbox)) => sandbox,
            _ => &self.production,
        }
    }

    /// Sends the prepared request, on the client connection's own upstream connection when it
    /// can (`paired`), and waits at most the configured timeout for response headers.
    pub async fn send(
        &self,
        prepared: Prepared,
        paired: Option<&Paired>,
    ) -> Result<Response<Incoming>, Reject> {
        let Prepared {
            request: mut req,
            sandbox,
            pairable,
        } = prepared;
        let client_side = if req.headers().contains_key(header::UPGRADE) {
            upgrade::take_client_side(&mut req)
        } else {
            None
        };
        let outcome = match paired.filter(|_| pairable) {
            Some(paired) => {
                paired
                    .within(self.timeout, self.via_paired(paired, sandbox, req))
                    .await
            }
            None => tokio::time::timeout(self.timeout, self.via_pool(sandbox, req))
                .await
                .ok(),
        };
        let response = match outcome {
            None => return Err(Reject::UpstreamTimeout),
            Some(Err(e)) => {
                if is_body_too_large(&*e) {
                    return Err(Reject::PayloadTooLarge);
                }
                tracing::warn!(error = %error_chain(&*e), "upstream request failed");
                return Err(if is_timeout(&*e) {
                    Reject::UpstreamTimeout
                } else {
                    Reject::UpstreamUnavailable
                });
            }
            Some(Ok(response)) => response,
        };
        let mut response = response;
        match client_side {
            Some(client) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                // Connection/Upgrade on a 101 are the handshake itself: they stay.
                upgrade::splice(client, &mut response);
            }
            _ => strip_hop_by_hop(response.headers_mut()),
        }
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

    async fn via_paired(
        &self,
        paired: &Paired,
        sandbox: bool,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let route = Route {
            forwarder: self.id,
            sandbox,
        };
        let (mut sender, mut reused) = match paired.lane(route, &self.parking) {
            Lane::Own(sender) => (sender, true),
            Lane::Open => (Box::pin(self.open(paired, route)).await?, false),
            Lane::Pool => return self.via_pool(sandbox, req).await,
        };
        // Twice at most: a connection that was reused may have been closed by the upstream
        // just now, before the request was written; then it goes on a new one.
        loop {
            if let Err(e) = std::future::poll_fn(|cx| sender.poll_ready(cx)).await {
                paired.detach();
                if !reused {
                    return Err(e.into());
                }
                (sender, reused) = (Box::pin(self.open(paired, route)).await?, false);
                continue;
            }
            let sent = sender.try_send_request(req);
            paired.give_back(route, sender);
            match sent.await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        req = unsent;
                        paired.detach();
                        (sender, reused) = (Box::pin(self.open(paired, route)).await?, false);
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// A new upstream connection, made `paired`'s. Boxed by its callers: it is rare (once per
    /// client connection), and its state would otherwise make every request's future larger,
    /// and every move of that future a larger copy.
    async fn open(&self, paired: &Paired, route: Route) -> Result<Sender, BoxError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector
            .call(self.target(route.sandbox).base.clone())
            .await?;
        // Flattened like the server side's writes (server::conn::builder says why).
        let (sender, driver) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await?;
        paired.attach(Link::new(route, driver, &self.parking));
        Ok(sender)
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
