//! The upstream's HTTP/1.1 request head, written in one pass from a client's head: keygate's
//! own HTTP/1.1 ([`ParsedRequest`], header lines as received) and hyper's HTTP/2 streams sent
//! over keygate's own upstream connections ([`Fields`], a header map) render the rulebook
//! through this one function, so an HTTP/2 client's request reaches the upstream as the same
//! request an HTTP/1.1 client would have sent. Header names keep the case the client sent
//! (HTTP/2's are lowercase).

use http::HeaderMap;
use http::header::{CONNECTION, HeaderValue, SEC_WEBSOCKET_KEY};

use crate::credential::CredentialHeader;
use crate::head::Head;
use crate::header_rules::{self, Name, RequestPolicy, ToUpstream};
use crate::keys::cached_key::CachedKey;
use crate::wire::{Framing, ParsedRequest};

/// What the head needs besides the client's request.
pub struct RequestContext<'a> {
    /// Path prefix of the upstream URL ("" for none).
    pub base_path: &'a str,
    /// The path to forward (normalized when the client's was not).
    pub path: &'a str,
    /// `Host` for the upstream when the client's is not kept.
    pub upstream_host: &'a [u8],
    pub preserve_host: bool,
    pub credential_headers: &'a [CredentialHeader],
    /// `[keys] prefix`: a value carrying one of our keys never goes upstream.
    pub key_prefix: &'a str,
    pub key: Option<&'a CachedKey>,
    /// The TCP peer's address, canonical.
    pub peer: &'a [u8],
    pub peer_trusted: bool,
    pub tls: bool,
    /// How the body goes upstream: `Content-Length` or chunked (keygate's own framing).
    pub framing: Framing,
    /// Keep `Connection: upgrade` + `Upgrade` (the request is an admitted upgrade).
    pub upgrade: bool,
}

/// A client's request head as [`write_request_head`] reads it, whichever engine parsed it.
pub trait RequestSource<'a> {
    fn method_name(&self) -> &str;
    fn query(&self) -> Option<&'a str>;
    /// An authority that stands for `Host` ahead of any `Host` line (an absolute-form target's).
    fn target_authority(&self) -> Option<&'a [u8]>;
    /// An authority that stands for `Host` when there is no `Host` line (HTTP/2's
    /// `:authority`, RFC 9113 §8.3.1).
    fn fallback_authority(&self) -> Option<&'a [u8]>;
    /// About how many bytes the header lines take.
    fn head_len(&self) -> usize;
    /// Whether `Connection` lists `name` (other than its own options): a hop-by-hop header.
    fn connection_names(&self, name: &[u8]) -> bool;
    /// The protocol an admitted upgrade asks for.
    fn upgrade(&self) -> Option<&'a [u8]>;
    /// Every header line as (name, value, the line as received from the name to the end of
    /// the value, if there is one), in the order received.
    fn each_line(&self, line: impl FnMut(&'a [u8], &'a [u8], Option<&'a [u8]>));
}

impl<'a> RequestSource<'a> for ParsedRequest<'a> {
    fn method_name(&self) -> &str {
        self.method().as_str()
    }

    fn query(&self) -> Option<&'a str> {
        ParsedRequest::query(self)
    }

    fn target_authority(&self) -> Option<&'a [u8]> {
        ParsedRequest::target_authority(self).map(str::as_bytes)
    }

    fn fallback_authority(&self) -> Option<&'a [u8]> {
        None
    }

    fn head_len(&self) -> usize {
        self.head.len
    }

    fn connection_names(&self, name: &[u8]) -> bool {
        ParsedRequest::connection_names(self, name)
    }

    fn upgrade(&self) -> Option<&'a [u8]> {
        ParsedRequest::upgrade(self)
    }

    fn each_line(&self, mut line: impl FnMut(&'a [u8], &'a [u8], Option<&'a [u8]>)) {
        for (name, value, raw) in self.lines() {
            line(name, value, Some(raw));
        }
    }
}

/// A request hyper parsed (an HTTP/2 client's): its method, target and header map.
pub struct Fields<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    /// What `Connection` names, lowercased (HTTP/2 has no `Connection`: empty, no allocation).
    named: Vec<Vec<u8>>,
    /// A WebSocket handshake (an HTTP/2 client's extended CONNECT, RFC 8441): keygate's own
    /// `Sec-WebSocket-Key`, sent in place of any the client sent, since keygate is the
    /// upstream's WebSocket client and checks the answer to it.
    websocket_key: Option<&'a str>,
}

impl<'a> Fields<'a> {
    pub fn new(method: &'a http::Method, uri: &'a http::Uri, headers: &'a HeaderMap) -> Self {
        let mut named = Vec::new();
        for value in headers.get_all(CONNECTION) {
            header_rules::Options::default().add(value.as_bytes(), |token| {
                named.push(token.to_ascii_lowercase())
            });
        }
        Self {
            method,
            uri,
            headers,
            named,
            websocket_key: None,
        }
    }

    /// The request goes upstream as a WebSocket handshake with `key`.
    pub fn websocket(self, key: &'a str) -> Self {
        Self {
            websocket_key: Some(key),
            ..self
        }
    }
}

impl<'a> RequestSource<'a> for Fields<'a> {
    fn method_name(&self) -> &str {
        self.method.as_str()
    }

    fn query(&self) -> Option<&'a str> {
        self.uri.query()
    }

    fn target_authority(&self) -> Option<&'a [u8]> {
        None
    }

    fn fallback_authority(&self) -> Option<&'a [u8]> {
        self.uri.authority().map(|a| a.as_str().as_bytes())
    }

    fn head_len(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum()
    }

    fn connection_names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn upgrade(&self) -> Option<&'a [u8]> {
        self.websocket_key.map(|_| &b"websocket"[..])
    }

    fn each_line(&self, mut line: impl FnMut(&'a [u8], &'a [u8], Option<&'a [u8]>)) {
        for (name, value) in self.headers {
            if self.websocket_key.is_some() && name == SEC_WEBSOCKET_KEY {
                continue;
            }
            line(name.as_str().as_bytes(), HeaderValue::as_bytes(value), None);
        }
        if let Some(key) = self.websocket_key {
            line(b"sec-websocket-key", key.as_bytes(), None);
        }
    }
}

/// Appends the head to `out`.
pub fn write_request_head<'a>(
    out: &mut Vec<u8>,
    req: &impl RequestSource<'a>,
    cx: &RequestContext,
) {
    out.extend_from_slice(req.method_name().as_bytes());
    out.push(b' ');
    out.extend_from_slice(cx.base_path.as_bytes());
    out.extend_from_slice(cx.path.as_bytes());
    if let Some(query) = req.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let mut host: Option<&[u8]> = req.target_authority();
    let (mut has_proto, mut has_forwarded_host, mut has_host) = (false, false, false);
    let mut chain: Option<Vec<&[u8]>> = None;
    out.reserve(req.head_len() + 512);
    let policy = RequestPolicy {
        credential_headers: cx.credential_headers,
        key_prefix: cx.key_prefix,
        peer_trusted: cx.peer_trusted,
    };
    req.each_line(|name, value, raw| {
        // The rulebook decides; this only renders it (an upgrade's own headers are written
        // again below).
        if req.connection_names(name) {
            return;
        }
        let class = header_rules::name(name);
        has_host |= class == Name::Host;
        match header_rules::to_upstream(class, name, value, &policy) {
            ToUpstream::Drop => return,
            ToUpstream::Host => {
                host.get_or_insert(value);
                return;
            }
            ToUpstream::Chain => {
                chain.get_or_insert_with(Vec::new).push(value);
                return;
            }
            ToUpstream::Keep => match class {
                Name::ForwardedProto => has_proto = true,
                Name::ForwardedHost => has_forwarded_host = true,
                _ => {}
            },
        }
        match raw {
            // The line as the client sent it (name, separator, value), already validated.
            Some(raw) => out.extend_from_slice(raw),
            // A header map's: hyper validated name and value (no CR, LF or NUL).
            None => {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
            }
        }
        out.extend_from_slice(b"\r\n");
    });
    // Only without any `Host` line: one dropped for carrying a key is not replaced by the
    // authority (the upstream's own host goes instead, as from hyper's pool).
    if !has_host && host.is_none() {
        host = req.fallback_authority();
    }

    // The authority of an absolute-form target stands for `Host` (RFC 9112 §3.2.2), so it
    // meets the same rule: one carrying a key is not passed on.
    let host = host
        .filter(|h| header_rules::to_upstream(Name::Host, b"host", h, &policy) == ToUpstream::Host);
    match (host, cx.preserve_host) {
        (Some(host), true) => line(out, b"host", host),
        _ => line(out, b"host", cx.upstream_host),
    }
    match cx.framing {
        Framing::Length(n) => line(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        Framing::Chunked => line(out, b"transfer-encoding", b"chunked"),
        Framing::Empty | Framing::Close => {}
    }
    if let Some(key) = cx.key {
        identity(out, key);
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    for hop in chain.iter().flatten() {
        out.extend_from_slice(hop);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(cx.peer);
    out.extend_from_slice(b"\r\n");
    if !has_proto {
        let proto: &[u8] = if cx.tls { b"https" } else { b"http" };
        line(out, b"x-forwarded-proto", proto);
    }
    if let (false, Some(host)) = (has_forwarded_host, host) {
        line(out, b"x-forwarded-host", host);
    }
    if let (true, Some(protocol)) = (cx.upgrade, req.upgrade()) {
        line(out, b"connection", b"upgrade");
        line(out, b"upgrade", protocol);
    }
    out.extend_from_slice(b"\r\n");
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// keygate's identity headers (every `x-keygate-*` the client sent was dropped).
fn identity(out: &mut Vec<u8>, key: &CachedKey) {
    // Ids and bound values are made by `keys create`, but a hand-edited store could hold
    // anything: a value that could break the head (CR, LF, …) is left out, as the header-map
    // side refuses it. Owner and scopes are header values already.
    let safe = |v: &[u8]| v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    if safe(key.id.as_bytes()) {
        line(out, b"x-keygate-key-id", key.id.as_bytes());
    }
    if let Some(owner) = key.owner.header() {
        line(out, b"x-keygate-owner", owner.as_bytes());
    }
    if let Some(scopes) = key.scopes.header() {
        line(out, b"x-keygate-scopes", scopes.as_bytes());
    }
    line(out, b"x-keygate-env", key.env.as_str().as_bytes());
    for (name, bound) in [
        (&b"x-keygate-workspace"[..], key.workspace()),
        (b"x-keygate-project", key.project()),
    ] {
        if let Some(v) = bound.filter(|v| safe(v.as_bytes())) {
            line(out, name, v.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RequestHead;

    fn rewrite(raw: &str, cx: &RequestContext) -> String {
        let mut head = RequestHead::default();
        assert!(head.parse(raw.as_bytes(), 64 * 1024).unwrap());
        let req = ParsedRequest::new(&head, raw.as_bytes());
        let mut out = Vec::new();
        write_request_head(&mut out, &req, cx);
        String::from_utf8(out).unwrap()
    }

    fn context() -> RequestContext<'static> {
        RequestContext {
            base_path: "",
            path: "/v1/x",
            upstream_host: b"up:3000",
            preserve_host: true,
            credential_headers: &[
                CredentialHeader::Authorization,
                CredentialHeader::XApiKey,
                CredentialHeader::ProjectAccessToken,
            ],
            key_prefix: "kg",
            key: None,
            peer: b"10.0.0.7",
            peer_trusted: false,
            tls: false,
            framing: Framing::Empty,
            upgrade: false,
        }
    }

    #[test]
    fn what_the_upstream_sees() {
        let raw = "GET /v1//x?a=1 HTTP/1.1\r\nHost: api.example\r\nX-Api-Key: kg_secret\r\n\
                   Authorization: Basic dTpw\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                   Keep-Alive: 5\r\nTE: trailers\r\nX-Keygate-Owner: forged\r\n\
                   X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\
                   X_Keygate_Owner: forged2\r\nForwarded: for=6.6.6.7\r\nX-Real-IP: 6.6.6.8\r\n\r\n";
        let got = rewrite(raw, &context());
        assert!(got.starts_with("GET /v1/x?a=1 HTTP/1.1\r\n"), "{got}");
        for gone in [
            "kg_secret",
            "X-Hop",
            "Keep-Alive",
            "TE:",
            "forged",
            "6.6.6.",
            "https",
            "X_Keygate_Owner",
        ] {
            assert!(!got.contains(gone), "{gone} forwarded: {got}");
        }
        for kept in [
            "Authorization: Basic dTpw\r\n",
            "Accept: */*\r\n",
            "host: api.example\r\n",
            "x-forwarded-for: 10.0.0.7\r\n",
            "x-forwarded-proto: http\r\n",
            "x-forwarded-host: api.example\r\n",
        ] {
            assert!(got.contains(kept), "{kept:?} missing: {got}");
        }
        assert!(got.ends_with("\r\n\r\n"));
    }

    #[test]
    fn trusted_proxies_extend_the_chain_and_keep_proto_and_host() {
        let raw = "POST /v1/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\
                   X-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Proto: https\r\n\
                   X-Forwarded-Host: public.example\r\nContent-Length: 3\r\n\r\n";
        let cx = RequestContext {
            peer_trusted: true,
            preserve_host: false,
            framing: Framing::Length(3),
            ..context()
        };
        let got = rewrite(raw, &cx);
        for want in [
            "x-forwarded-for: 1.2.3.4, 10.0.0.9, 10.0.0.7\r\n",
            "X-Forwarded-Proto: https\r\n",
            "X-Forwarded-Host: public.example\r\n",
            "host: up:3000\r\n",
            "content-length: 3\r\n",
        ] {
            assert!(got.contains(want), "{want:?} missing: {got}");
        }
        assert!(!got.contains("x-forwarded-proto: http\r"), "{got}");
        assert_eq!(got.matches("Content-Length").count(), 0, "{got}");
    }

    #[test]
    fn upgrades_and_chunked_bodies_get_keygates_framing() {
        let raw = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Key: k\r\n\r\n";
        let got = rewrite(
            raw,
            &RequestContext {
                upgrade: true,
                ..context()
            },
        );
        assert!(
            got.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{got}"
        );
        assert!(got.contains("Sec-WebSocket-Key: k\r\n"), "{got}");
        let got = rewrite(raw, &context());
        assert!(!got.to_ascii_lowercase().contains("upgrade"), "{got}");

        let raw = "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                   Expect: 100-continue\r\n\r\n";
        let got = rewrite(
            raw,
            &RequestContext {
                framing: Framing::Chunked,
                ..context()
            },
        );
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(!got.contains("Transfer-Encoding"), "{got}");
        assert!(!got.contains("100-continue"), "{got}");
    }

    #[test]
    fn identity_values_that_could_break_the_head_are_left_out() {
        let record = crate::keys::KeyRecord {
            id: "key_x\r\nX-Injected: yes".into(),
            workspace: Some("ws\nX-Also: no".into()),
            ..crate::keys::KeyRecord::for_tests()
        };
        let key = CachedKey::from(&record);
        let got = rewrite(
            "GET /v1/x HTTP/1.1\r\nHost: a\r\n\r\n",
            &RequestContext {
                key: Some(&key),
                ..context()
            },
        );
        assert!(
            !got.contains("X-Injected") && !got.contains("X-Also"),
            "{got}"
        );
        assert!(got.contains("x-keygate-env: live\r\n"), "{got}");
    }

    #[test]
    fn an_absolute_target_names_the_host() {
        let raw = "GET http://api.example:8080/v1/x?q HTTP/1.1\r\nHost: ignored\r\n\r\n";
        let got = rewrite(raw, &context());
        assert!(got.starts_with("GET /v1/x?q HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("host: api.example:8080\r\n"), "{got}");
        assert!(!got.contains("ignored"), "{got}");
    }

    #[test]
    fn an_http2_authority_stands_for_host_only_without_one() {
        let render = |lines: &[(&'static str, &'static str)]| {
            let mut headers = http::HeaderMap::new();
            for (n, v) in lines {
                headers.append(*n, http::HeaderValue::from_static(v));
            }
            let (method, uri) = (
                http::Method::GET,
                http::Uri::from_static("https://api.example/v1/x?q"),
            );
            let mut out = Vec::new();
            write_request_head(&mut out, &Fields::new(&method, &uri, &headers), &context());
            String::from_utf8(out).unwrap()
        };
        let got = render(&[]);
        assert!(got.starts_with("GET /v1/x?q HTTP/1.1\r\n"), "{got}");
        assert!(got.contains("host: api.example\r\n"), "{got}");
        assert!(got.contains("x-forwarded-host: api.example\r\n"), "{got}");
        let got = render(&[("host", "other.example")]);
        assert!(got.contains("host: other.example\r\n"), "{got}");
        assert!(!got.contains("api.example"), "{got}");
        let got = render(&[("host", "kg_sk_live_x.example")]);
        assert!(got.contains("host: up:3000\r\n"), "{got}");
        assert!(
            !got.contains("kg_") && !got.contains("api.example"),
            "{got}"
        );
    }

    #[test]
    fn an_http2_websocket_goes_upstream_as_an_http11_handshake_with_keygates_key() {
        // What `links::WebSocket::take` leaves of an extended CONNECT: a GET with the
        // client's WebSocket headers (a `sec-websocket-key` it should not have sent too).
        let mut headers = http::HeaderMap::new();
        for (n, v) in [
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-key", "the client's"),
            ("x-api-key", "kg_sk_live_x"),
        ] {
            headers.append(n, http::HeaderValue::from_static(v));
        }
        let (method, uri) = (http::Method::GET, http::Uri::from_static("/ws"));
        let render = |fields: &Fields, upgrade| {
            let mut out = Vec::new();
            let cx = RequestContext {
                upgrade,
                path: "/ws",
                ..context()
            };
            write_request_head(&mut out, fields, &cx);
            String::from_utf8(out).unwrap()
        };
        let got = render(
            &Fields::new(&method, &uri, &headers).websocket("ours=="),
            true,
        );
        assert!(got.starts_with("GET /ws HTTP/1.1\r\n"), "{got}");
        for want in [
            "sec-websocket-version: 13\r\n",
            "sec-websocket-protocol: chat\r\n",
            "sec-websocket-key: ours==\r\n",
            "connection: upgrade\r\nupgrade: websocket\r\n\r\n",
        ] {
            assert!(got.contains(want), "{want:?} missing: {got}");
        }
        assert!(
            !got.contains("the client's") && !got.contains("kg_"),
            "{got}"
        );
        // Without the handshake, nothing of an upgrade is written.
        let got = render(&Fields::new(&method, &uri, &headers), true);
        assert!(
            !got.contains("upgrade") && got.contains("the client's"),
            "{got}"
        );
    }

    /// Found by the `request_head` fuzz target: a key in `Host` went upstream in `Host` and
    /// `X-Forwarded-Host`; so would one in an absolute-form target's authority.
    #[test]
    fn a_host_carrying_a_key_is_replaced_by_the_upstreams() {
        for raw in [
            "GET /v1/x HTTP/1.1\r\nHost: kg_sk_live_x.example\r\n\r\n",
            "GET http://kg_sk_live_x@api.example/v1/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http://kg_pk_test_x.example/v1/x HTTP/1.0\r\n\r\n",
        ] {
            let got = rewrite(raw, &context());
            assert!(got.starts_with("GET /v1/x HTTP/1.1\r\n"), "{got}");
            assert!(got.contains("host: up:3000\r\n"), "{got}");
            assert!(
                !got.contains("kg_") && !got.contains("x-forwarded-host"),
                "{got}"
            );
        }
    }
}
