//! The upstream side: who the client is, what the upstream may see, and sending it.
//!
//! Header hygiene, in the order [`Forwarder::prepare`] applies it:
//! 1. hop-by-hop headers (RFC 9110 §7.6.1, plus whatever `Connection` names) are removed;
//! 2. the credential is removed, so the upstream never holds a client's key;
//! 3. every `x-keygate-*` header from the client is removed, then keygate's identity headers
//!    are added, so the upstream can trust them;
//! 4. `X-Forwarded-For/-Proto/-Host` are set. Values a client sent are kept only when the
//!    TCP peer is a trusted proxy; otherwise they are replaced, never appended to, and
//!    `Forwarded` and `X-Real-IP` are removed. Spellings with `_` of the headers in 1-4 are
//!    removed too (CGI-style servers read `X_Keygate_Owner` as `X-Keygate-Owner`).
//!
//! Which header falls under which step is [`crate::header_rules`]'s decision, one rulebook for
//! both engines. [`upstream_head`] renders it into the upstream's HTTP/1.1 request head, for
//! keygate's own HTTP/1.1 (from header lines) and for HTTP/2 clients' streams (from hyper's
//! header map); `headers` renders it on a header map for hyper's pooled client (an HTTP/2
//! upstream, and HTTP/1.1 clients hyper serves). An admitted WebSocket upgrade is the one
//! hop-by-hop exchange passed on: [`upstream_head`] writes its `Connection` and `Upgrade` again
//! after step 1, for an HTTP/1.1 client's upgrade and for an HTTP/2 client's extended CONNECT
//! ([`links::WebSocket`]); towards an HTTP/2 upstream (the pool) an upgrade is stripped like
//! any hop-by-hop header.
//!
//! Bodies are never buffered: they stream through. Upstream connections, by who is served:
//! - HTTP/1.1 clients (keygate's own engine): each client connection's own upstream connection
//!   ([`upstream`]), parked between client connections.
//! - HTTP/2 clients, HTTP/1.1 upstream: each stream takes a parked upstream connection or dials
//!   one, in the stream's own task, and parks it when the response body is through
//!   ([`links`]; [`response_head`] reads the upstream's response head for it). This replaced
//!   hyper's pooled client, whose connection tasks took ~37 % of keygate's CPU under h2load
//!   (bench/RESULTS.md, 2026-12-06).
//! - An HTTP/2 upstream (`[upstream] http2`), and HTTP/1.1 clients hyper serves in front of
//!   it: the shared pool (`client`), one multiplexed connection.
//!
//! Every response body, by either engine, is relayed on [`silence`]'s clock: an upstream that
//! sends nothing mid-body for `[upstream] body_timeout` has its response cut off. A WebSocket
//! tunnel has [`tunnel`]'s clock instead: nothing either way for `tunnel_idle_timeout`; and
//! when keygate stops, a Close (1001, going away) to each end between two frames
//! ([`websocket`]).

mod client;
pub mod failure;
mod headers;
pub mod links;
pub mod response_head;
pub mod silence;
pub mod tunnel;
pub mod upstream;
pub mod upstream_head;
pub mod websocket;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use client::BodyState;
pub use client::{ClientError, UpstreamBody};
pub use headers::client_ip;
use headers::{X_FORWARDED_FOR, add_identity, apply_request_rules, strip_hop_by_hop};
use upstream::{Destination, Dialer, Parking};

use crate::config::Upstream;
use crate::credential::CredentialHeader;
use crate::header_rules::{self, Name, RequestPolicy, ToUpstream};
use crate::keys::cached_key::CachedKey;
use crate::metrics::Metrics;
use crate::reject::Reject;
use crate::vocab::Environment;
pub use failure::UpstreamFailure;
pub use links::{LinkBody, ResponseBody};

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
    /// Shared with the response bodies of HTTP/2 streams, which park their link when through.
    parking: Arc<Parking>,
    /// Tells this forwarder's upstream connections from those of the one a reload replaced.
    id: u64,
    /// The upstream speaks HTTP/2: one shared connection multiplexes every request.
    http2: bool,
    production: Target,
    /// Where sandbox keys go; `None` refuses them (enforced by authorization).
    sandbox: Option<Target>,
    /// `[environments.<tag>] upstream`: where those keys go.
    environments: Vec<(Environment, Target)>,
    timeout: Duration,
    body_timeout: Duration,
    tunnel_idle_timeout: Duration,
    preserve_host: bool,
    credential_headers: Vec<CredentialHeader>,
    /// `[keys] prefix`: a header value carrying one of our keys never goes upstream.
    key_prefix: String,
    max_body: usize,
}

/// A request rewritten for the upstream, and where it goes.
pub struct Prepared {
    request: Request<UpstreamBody>,
    upstream: u8,
    body: Arc<BodyState>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Forwarder {
    pub fn new(
        upstream: &Upstream,
        credential_headers: &[CredentialHeader],
        key_prefix: &str,
        max_body: Option<u64>,
        shards: usize,
    ) -> Result<Self, ClientError> {
        static FORWARDERS: AtomicU64 = AtomicU64::new(0);
        let tls = client::tls_config(upstream)?;
        let mut h1_tls = tls.clone();
        h1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let dialer = Dialer::new(
            &upstream.url,
            upstream.sandbox_url.as_ref(),
            &upstream
                .environments
                .iter()
                .map(|(_, u)| u)
                .collect::<Vec<_>>(),
            Arc::new(h1_tls),
            upstream.connect_timeout,
        )
        .map_err(ClientError::Address)?;
        Ok(Self {
            client: client::build(upstream, tls)?,
            dialer,
            parking: Arc::new(Parking::new(shards)),
            id: FORWARDERS.fetch_add(1, Ordering::Relaxed),
            http2: upstream.http2,
            production: Target::new(&upstream.url),
            sandbox: upstream.sandbox_url.as_ref().map(Target::new),
            environments: upstream
                .environments
                .iter()
                .map(|(e, u)| (*e, Target::new(u)))
                .collect(),
            timeout: upstream.timeout,
            body_timeout: upstream.body_timeout,
            tunnel_idle_timeout: upstream.tunnel_idle_timeout,
            preserve_host: upstream.preserve_host,
            credential_headers: credential_headers.to_vec(),
            key_prefix: key_prefix.to_owned(),
            max_body: max_body.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX)),
        })
    }

    /// Rewrites a client request into the upstream request (see the module doc). Sandbox
    /// keys go to the sandbox upstream, everything else to production.
    pub fn prepare(&self, mut req: Request<Incoming>, origin: &Origin) -> Prepared {
        let upstream = self.upstream_for(origin.key);
        let target = self.target(upstream);
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

        let cx = HeaderContext {
            credential_headers: &self.credential_headers,
            key_prefix: &self.key_prefix,
            preserve_host: self.preserve_host,
            upstream_host: &target.authority,
        };
        upstream_headers(req.headers_mut(), &cx, origin, original_host);
        let (parts, body) = req.into_parts();
        let (body, failure) = UpstreamBody::new(body, self.max_body);
        Prepared {
            request: Request::from_parts(parts, body),
            upstream,
            body: failure,
        }
    }

    /// Which upstream a key's request goes to: 1, the sandbox, for a sandbox key
    /// (authorization refused it if there is none); `2 + i` for a key of the `i`th
    /// `[environments.<tag>]`; 0, production, for everything else.
    pub fn upstream_for(&self, key: Option<&CachedKey>) -> u8 {
        let Some(key) = key else { return 0 };
        match key.env {
            Environment::LIVE => 0,
            Environment::TEST if self.sandbox.is_some() => 1,
            env => self
                .environments
                .iter()
                .position(|(e, _)| *e == env)
                .map_or(0, |i| u8::try_from(i + 2).unwrap_or(0)),
        }
    }

    pub fn target(&self, upstream: u8) -> &Target {
        match (upstream, &self.sandbox) {
            (1, Some(sandbox)) => sandbox,
            (n @ 2.., _) => self
                .environments
                .get(usize::from(n - 2))
                .map_or(&self.production, |(_, t)| t),
            _ => &self.production,
        }
    }

    /// Where keygate's own HTTP/1.1 connections for `upstream` go.
    pub fn route(&self, upstream: u8) -> Destination {
        Destination {
            forwarder: self.id,
            upstream,
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

    /// The longest the upstream may go quiet within a response body ([`silence::Silence`]).
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    /// The longest a WebSocket tunnel may carry nothing either way ([`tunnel`]).
    pub fn tunnel_idle_timeout(&self) -> Duration {
        self.tunnel_idle_timeout
    }

    pub fn preserve_host(&self) -> bool {
        self.preserve_host
    }

    pub fn credential_headers(&self) -> &[CredentialHeader] {
        &self.credential_headers
    }

    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// `server.max_body_bytes`, or no limit.
    pub fn max_body(&self) -> u64 {
        self.max_body as u64
    }

    /// The upstream speaks HTTP/2: everything hyper serves goes through the shared pool
    /// (HTTP/2 clients of an HTTP/1.1 upstream go over [`links`] instead).
    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// Sends the prepared request through the shared pool and waits for the response head at
    /// most the configured timeout after the request body's latest progress: a 408 if it runs
    /// out while the body waits on the client, a 504 otherwise. A failure is counted in
    /// `metrics` by its kind.
    pub async fn send(
        &self,
        prepared: Prepared,
        metrics: &Metrics,
    ) -> Result<Response<Incoming>, Reject> {
        let Prepared {
            request,
            upstream,
            body,
        } = prepared;
        let exchange = self.via_pool(upstream, request);
        tokio::pin!(exchange);
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        let outcome = loop {
            tokio::select! {
                outcome = &mut exchange => break Ok(outcome),
                () = &mut timer => {
                    let due = body.deadline(self.timeout);
                    if tokio::time::Instant::now() >= due {
                        break Err(());
                    }
                    timer.as_mut().reset(due);
                }
            }
        };
        let mut response = match outcome {
            Err(()) if body.waiting() => return Err(Reject::RequestTimeout),
            Err(()) => {
                metrics.upstream_failed(UpstreamFailure::Timeout);
                return Err(Reject::UpstreamTimeout);
            }
            Ok(Err(e)) => {
                // The client's body failed first: its fault, whatever the pool made of it.
                if body.too_large() {
                    return Err(Reject::PayloadTooLarge);
                }
                if body.broken() {
                    return Err(Reject::BadRequest(
                        "the request body is malformed or cut short",
                    ));
                }
                if crate::ratelog::UPSTREAM_FAILED.allow() {
                    tracing::warn!(error = %error_chain(&*e), "upstream request failed");
                }
                metrics.upstream_failed(UpstreamFailure::of_error(&*e));
                return Err(if is_timeout(&*e) {
                    Reject::UpstreamTimeout
                } else {
                    Reject::UpstreamUnavailable
                });
            }
            Ok(Ok(response)) => response,
        };
        // hyper reads any three digits as a status; a client must get a valid one.
        if response.status().as_u16() > 599 {
            return Err(Reject::UpstreamUnavailable);
        }
        strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    async fn via_pool(
        &self,
        upstream: u8,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut parts = self.target(upstream).base.clone().into_parts();
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() = Uri::from_parts(parts)?;
        Ok(self.client.request(req).await?)
    }
}

/// What [`upstream_headers`] needs from the forwarder.
struct HeaderContext<'a> {
    credential_headers: &'a [CredentialHeader],
    key_prefix: &'a str,
    preserve_host: bool,
    /// The upstream's authority, for `Host` when the client's is not kept.
    upstream_host: &'a HeaderValue,
}

/// Steps 1-4 of the module doc on a header map: the rulebook applied, then keygate's identity
/// and forwarding headers and `Host` written.
fn upstream_headers(
    headers: &mut HeaderMap,
    cx: &HeaderContext,
    origin: &Origin,
    original_host: Option<HeaderValue>,
) {
    let policy = RequestPolicy {
        credential_headers: cx.credential_headers,
        key_prefix: cx.key_prefix,
        peer_trusted: origin.peer_trusted,
    };
    let forwarding = apply_request_rules(headers, &policy);
    // `Host`, or the target's authority standing for it, meets the rulebook like any header.
    let original_host = original_host.filter(|h| {
        header_rules::to_upstream(Name::Host, b"host", h.as_bytes(), &policy) == ToUpstream::Host
    });
    // What follows adds up to eight headers: one reservation instead of the map growing
    // (and rehashing) twice on the way.
    headers.reserve(8);
    if let Some(record) = origin.key {
        add_identity(headers, record);
    }

    let peer = origin.peer_header.clone();
    let xff = if forwarding.chain.is_empty() {
        peer
    } else {
        let mut chain = Vec::new();
        for hop in &forwarding.chain {
            chain.extend_from_slice(hop.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&chain).unwrap_or(peer)
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    if !forwarding.has_proto {
        let proto = if origin.tls { "https" } else { "http" };
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !forwarding.has_forwarded_host {
        match &original_host {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    match (original_host, cx.preserve_host) {
        (Some(host), true) => headers.insert(header::HOST, host),
        _ => headers.insert(header::HOST, cx.upstream_host.clone()),
    };
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
    //! One table of header cases through every rendering: keygate's own HTTP/1.1 writing the
    //! upstream's head from header lines ([`upstream_head::write_request_head`]), the same
    //! function writing it from an HTTP/2 stream's header map ([`links`]), and hyper's pool
    //! rewriting a header map ([`upstream_headers`]). Whatever the case, the upstream must see
    //! the same headers from all three.

    use super::*;
    use crate::keys::KeyRecord;
    use crate::wire::{Framing, ParsedRequest, RequestHead};

    const KEY: &str = "kg_sk_live_Hfo7DoI4rNoNONO6QNveL6yhlIWG4GlMPa";

    /// The upstream's headers, lowercased and sorted, as keygate's own HTTP/1.1 writes them.
    fn own_engine(
        lines: &[(&str, &str)],
        reads: &[CredentialHeader],
        trusted: bool,
        key: Option<&CachedKey>,
    ) -> Vec<(String, String)> {
        let mut raw = String::from("GET /x HTTP/1.1\r\n");
        for (name, value) in lines {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        let mut head = RequestHead::default();
        assert!(head.parse(raw.as_bytes(), 64 * 1024).unwrap(), "{raw}");
        let req = ParsedRequest::new(&head, raw.as_bytes());
        let mut out = Vec::new();
        upstream_head::write_request_head(&mut out, &req, &context(reads, trusted, key));
        written_headers(&out)
    }

    /// What both of keygate's renderings of an upstream head are given besides the headers.
    fn context<'a>(
        reads: &'a [CredentialHeader],
        trusted: bool,
        key: Option<&'a CachedKey>,
    ) -> upstream_head::RequestContext<'a> {
        upstream_head::RequestContext {
            base_path: "",
            path: "/x",
            upstream_host: b"upstream:3000",
            preserve_host: true,
            credential_headers: reads,
            key_prefix: "kg",
            key,
            peer: b"10.0.0.7",
            peer_trusted: trusted,
            tls: false,
            framing: Framing::Empty,
            upgrade: false,
        }
    }

    /// The header lines of a written upstream head for `/x`, lowercased and sorted.
    fn written_headers(out: &[u8]) -> Vec<(String, String)> {
        let mut lines = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut lines);
        assert!(parsed.parse(out).unwrap().is_complete());
        assert_eq!(parsed.path, Some("/x"));
        let mut seen: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        seen.sort();
        seen
    }

    /// The same as an HTTP/2 stream over keygate's own upstream connection writes it
    /// ([`links`]: the rulebook rendered from a header map by `write_request_head`).
    fn fields(
        lines: &[(&str, &str)],
        reads: &[CredentialHeader],
        trusted: bool,
        key: Option<&CachedKey>,
    ) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let (method, uri) = (http::Method::GET, Uri::from_static("/x"));
        let mut out = Vec::new();
        upstream_head::write_request_head(
            &mut out,
            &upstream_head::Fields::new(&method, &uri, &headers),
            &context(reads, trusted, key),
        );
        written_headers(&out)
    }

    /// The same through hyper's side.
    fn header_map(
        lines: &[(&str, &str)],
        reads: &[CredentialHeader],
        trusted: bool,
        key: Option<&CachedKey>,
    ) -> Vec<(String, String)> {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let original_host = headers.get(header::HOST).cloned();
        let peer_header = HeaderValue::from_static("10.0.0.7");
        let origin = Origin {
            peer: "10.0.0.7".parse().unwrap(),
            peer_trusted: trusted,
            tls: false,
            peer_header: &peer_header,
            key,
        };
        let upstream_host = HeaderValue::from_static("upstream:3000");
        let cx = HeaderContext {
            credential_headers: reads,
            key_prefix: "kg",
            preserve_host: true,
            upstream_host: &upstream_host,
        };
        upstream_headers(&mut headers, &cx, &origin, original_host);
        let mut seen: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn both_engines_show_the_upstream_the_same_headers() {
        let all = CredentialHeader::all();
        let x_api_key = [CredentialHeader::XApiKey];
        let bearer = format!("Bearer {KEY}");
        let basic = {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("id:{KEY}"))
            )
        };
        let record = CachedKey::from(&KeyRecord::for_tests());
        let host_with_key = format!("{KEY}.example");
        let chain_with_key = format!("1.2.3.4, {KEY}");
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str)>,
            &'a [CredentialHeader],
            bool,
        );
        let cases: Vec<Case> = vec![
            (
                "plain",
                vec![("Host", "a.example"), ("Accept", "*/*")],
                &all,
                false,
            ),
            (
                "x-api-key",
                vec![("Host", "a"), ("X-Api-Key", KEY)],
                &all,
                false,
            ),
            (
                "bearer",
                vec![("Host", "a"), ("Authorization", &bearer)],
                &all,
                false,
            ),
            (
                "basic stays",
                vec![("Host", "a"), ("Authorization", "Basic dTpw")],
                &all,
                false,
            ),
            (
                "basic and bearer",
                vec![
                    ("Host", "a"),
                    ("Authorization", "Basic dTpw"),
                    ("Authorization", &bearer),
                ],
                &all,
                false,
            ),
            (
                "basic hiding a key",
                vec![("Host", "a"), ("Authorization", &basic)],
                &all,
                false,
            ),
            (
                "key in an unread header",
                vec![
                    ("Host", "a"),
                    ("Authorization", &bearer),
                    ("X-Api-Key", KEY),
                ],
                &x_api_key,
                false,
            ),
            (
                "upstream's bearer passes",
                vec![
                    ("Host", "a"),
                    ("Authorization", "Bearer their.jwt"),
                    ("X-Api-Key", KEY),
                ],
                &x_api_key,
                false,
            ),
            (
                "key in a cookie",
                vec![
                    ("Host", "a"),
                    ("Cookie", "a=1"),
                    ("Cookie", "k=kg_pk_test_x"),
                ],
                &all,
                false,
            ),
            (
                "identity forged",
                vec![
                    ("Host", "a"),
                    ("X-Keygate-Owner", "evil"),
                    ("x_keygate_scopes", "*"),
                ],
                &all,
                false,
            ),
            (
                "identity set",
                vec![("Host", "a"), ("X-Keygate-Owner", "evil")],
                &all,
                false,
            ),
            (
                "underscore framing",
                vec![
                    ("Host", "a"),
                    ("Transfer_Encoding", "chunked"),
                    ("Content_Length", "5"),
                ],
                &all,
                false,
            ),
            (
                "hop-by-hop",
                vec![
                    ("Host", "a"),
                    ("Connection", "keep-alive, x-hop"),
                    ("X-Hop", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Proxy-Authorization", "Basic eDp5"),
                ],
                &all,
                false,
            ),
            (
                "expect",
                vec![("Host", "a"), ("Expect", "100-continue")],
                &all,
                false,
            ),
            (
                "untrusted forwarding",
                vec![
                    ("Host", "a"),
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "evil"),
                    ("Forwarded", "for=6.6.6.6"),
                    ("X-Real-IP", "6.6.6.6"),
                    ("X_Forwarded_For", "6.6.6.6"),
                ],
                &all,
                false,
            ),
            (
                "trusted forwarding",
                vec![
                    ("Host", "a"),
                    ("X-Forwarded-For", "1.2.3.4"),
                    ("X-Forwarded-For", "10.0.0.9"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "public.example"),
                    ("Forwarded", "for=1.2.3.4"),
                    ("X-Real-IP", "1.2.3.4"),
                ],
                &all,
                true,
            ),
            // Found by the `request_head` fuzz target: a key in `Host` went upstream in `Host`
            // and `X-Forwarded-Host`, one in a trusted proxy's chain in `X-Forwarded-For`.
            (
                "host carrying a key",
                vec![("Host", &host_with_key), ("Accept", "*/*")],
                &all,
                false,
            ),
            (
                "trusted chain carrying a key",
                vec![("Host", "a"), ("X-Forwarded-For", &chain_with_key)],
                &all,
                true,
            ),
            (
                "rate-limit headers from a client",
                vec![("Host", "a"), ("X-RateLimit-Remaining", "999")],
                &all,
                false,
            ),
        ];
        for (name, lines, reads, trusted) in &cases {
            for key in [None, Some(&record)] {
                let own = own_engine(lines, reads, *trusted, key);
                let map = header_map(lines, reads, *trusted, key);
                assert_eq!(own, map, "case {name:?} (key: {})", key.is_some());
                let h2 = fields(lines, reads, *trusted, key);
                assert_eq!(own, h2, "case {name:?} (key: {}, HTTP/2)", key.is_some());
                for (n, v) in &own {
                    assert!(
                        !v.contains("kg_sk_") && !v.contains("kg_pk_"),
                        "case {name:?}: {n}: {v}"
                    );
                    assert!(!n.contains('_'), "case {name:?}: {n}");
                }
            }
        }
    }
}
