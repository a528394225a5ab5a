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

mod client;
pub mod upgrade;

use std::net::IpAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use http_body_util::Limited;
use hyper::body::Incoming;
use ipnet::IpNet;

pub use client::{ClientError, UpstreamBody};

use crate::authz::canonical;
use crate::config::{Upstream, is_identity_header};
use crate::credential::CredentialHeader;
use crate::keys::Environment;
use crate::keys::cached::CachedKey;
use crate::reject::Reject;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
static OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
static SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
static ENV: HeaderName = HeaderName::from_static("x-keygate-env");
static WORKSPACE: HeaderName = HeaderName::from_static("x-keygate-workspace");
static PROJECT: HeaderName = HeaderName::from_static("x-keygate-project");

/// Hop-by-hop headers: meaningful for one connection only, never forwarded.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The address a request really comes from: the TCP peer, unless that peer is one of our
/// trusted proxies, in which case walk `X-Forwarded-For` from the right (the entries our own
/// proxies appended) to the first address that is not a trusted proxy. Entries further left
/// were written by the client and prove nothing.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut ip = canonical(peer);
    if !is_trusted(&ip) {
        return ip;
    }
    let hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(next) => {
                ip = canonical(next);
                if !is_trusted(&ip) {
                    return ip;
                }
            }
            // Garbage in the chain: nothing left of it can be believed.
            Err(_) => return ip,
        }
    }
    ip
}

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
    production: Target,
    /// Where sandbox keys go; `None` refuses them (enforced by authorization).
    sandbox: Option<Target>,
    timeout: Duration,
    preserve_host: bool,
    credential_headers: Vec<CredentialHeader>,
    max_body: usize,
}

impl Forwarder {
    pub fn new(
        upstream: &Upstream,
        credential_headers: &[CredentialHeader],
        max_body: Option<u64>,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            client: client::build(upstream)?,
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
    pub fn prepare(&self, mut req: Request<Incoming>, origin: &Origin) -> Request<UpstreamBody> {
        let target = match (origin.key.map(|k| k.env), &self.sandbox) {
            (Some(Environment::Test), Some(sandbox)) => sandbox,
            _ => &self.production,
        };
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let path = if target.base_path.is_empty() {
            path.parse::<PathAndQuery>()
        } else {
            format!("{}{path}", target.base_path).parse()
        };
        let mut parts = target.base.clone().into_parts();
        parts.path_and_query = path.ok();
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| target.base.clone());
        // The upstream speaks HTTP/1.1 whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        let upgrade = upgrade::requested(headers);
        strip_hop_by_hop(headers);
        if let Some(protocol) = upgrade {
            upgrade::restore(headers, protocol);
        }
        strip_credentials(headers, &self.credential_headers);
        let foreign: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_identity_header(name))
            .cloned()
            .collect();
        for name in foreign {
            headers.remove(&name);
        }
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
        req.map(|body| Limited::new(body, max_body))
    }

    /// Sends the prepared request; waits at most the configured timeout for response headers.
    pub async fn send(&self, mut req: Request<UpstreamBody>) -> Result<Response<Incoming>, Reject> {
        let client_side = if req.headers().contains_key(header::UPGRADE) {
            upgrade::take_client_side(&mut req)
        } else {
            None
        };
        let response = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => return Err(Reject::UpstreamTimeout),
            Ok(Err(e)) => {
                if is_body_too_large(&e) {
                    return Err(Reject::PayloadTooLarge);
                }
                tracing::warn!(error = %error_chain(&e), "upstream request failed");
                return Err(if is_timeout(&e) {
                    Reject::UpstreamTimeout
                } else {
                    Reject::UpstreamUnavailable
                });
            }
            Ok(Ok(response)) => response,
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `transfer-encoding` is framing: hyper re-frames the body for the next hop. `te:
    // trailers` is the one TE value a proxy may pass, but the upstream is HTTP/1.1 here.
    headers.remove(header::TRANSFER_ENCODING);
}

/// Removes every header that can carry an API key. `Authorization` is kept when it carries
/// another scheme (Basic, …): that credential is for the upstream, not for us.
fn strip_credentials(headers: &mut HeaderMap, which: &[CredentialHeader]) {
    for &h in which {
        if h == CredentialHeader::Authorization {
            let bearer = headers.get_all(header::AUTHORIZATION).iter().any(|v| {
                v.as_bytes()
                    .trim_ascii_start()
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer"))
            });
            if !bearer {
                continue;
            }
        }
        headers.remove(h.header_name());
    }
}

fn add_identity(headers: &mut HeaderMap, record: &CachedKey) {
    let value = |s: &str| HeaderValue::from_bytes(s.as_bytes()).ok();
    if let Some(v) = value(&record.id) {
        headers.insert(&KEY_ID, v);
    }
    if let Some(v) = record.owner.header() {
        headers.insert(&OWNER, v.clone());
    }
    if let Some(v) = record.scopes.header() {
        headers.insert(&SCOPES, v.clone());
    }
    headers.insert(&ENV, HeaderValue::from_static(record.env.as_str()));
    for (name, bound) in [
        (&WORKSPACE, record.workspace()),
        (&PROJECT, record.project()),
    ] {
        if let Some(v) = bound.and_then(value) {
            headers.insert(name, v);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_table() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        let cases: &[(&str, &[&str], &str, &str)] = &[
            (
                "untrusted peer ignores XFF",
                &["6.6.6.6"],
                "1.2.3.4",
                "1.2.3.4",
            ),
            ("untrusted peer without XFF", &[], "1.2.3.4", "1.2.3.4"),
            ("trusted peer, one hop", &["1.2.3.4"], "10.0.0.1", "1.2.3.4"),
            (
                "trusted peer, spoofed left entries",
                &["6.6.6.6, 1.2.3.4"],
                "10.0.0.1",
                "1.2.3.4",
            ),
            (
                "trusted chain",
                &["1.2.3.4, 10.0.0.9"],
                "10.0.0.1",
                "1.2.3.4",
            ),
            (
                "chain over two header lines",
                &["1.2.3.4", "10.0.0.9"],
                "10.0.0.1",
                "1.2.3.4",
            ),
            (
                "all trusted: leftmost",
                &["10.0.0.3, 10.0.0.9"],
                "10.0.0.1",
                "10.0.0.3",
            ),
            ("trusted peer, no XFF", &[], "10.0.0.1", "10.0.0.1"),
            (
                "garbage stops the walk",
                &["1.2.3.4, junk, 10.0.0.9"],
                "10.0.0.1",
                "10.0.0.9",
            ),
            (
                "v4-mapped peer canonicalised",
                &[],
                "::ffff:1.2.3.4",
                "1.2.3.4",
            ),
            ("ipv6 trusted peer", &["2001:db8::5"], "::1", "2001:db8::5"),
        ];
        for (name, xff, peer, want) in cases {
            let mut h = HeaderMap::new();
            for v in *xff {
                h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            let got = client_ip(peer.parse().unwrap(), &h, &trusted);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "case {name}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-stays", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-stays"));
    }

    #[test]
    fn credentials_go_but_basic_stays() {
        let all = CredentialHeader::all();
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("project-access-token", HeaderValue::from_static("k"));
        strip_credentials(&mut h, &all);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Basic dTpw");

        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("  bearer k"),
        );
        strip_credentials(&mut h, &all);
        assert!(h.is_empty());
    }
}
