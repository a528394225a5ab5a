//! What the upstream may see of a request, and who sent it: hop-by-hop headers and
//! credentials removed, keygate's identity headers set (after any a client sent are removed),
//! and the client's real address behind trusted proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::authz::canonical;
use crate::config::is_identity_header;
use crate::credential::CredentialHeader;
use crate::h1::names::underscore_alias;
use crate::head::Head;
use crate::keys::cached::CachedKey;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
static OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
static SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
static ENV: HeaderName = HeaderName::from_static("x-keygate-env");
static WORKSPACE: HeaderName = HeaderName::from_static("x-keygate-workspace");
static PROJECT: HeaderName = HeaderName::from_static("x-keygate-project");

/// Hop-by-hop headers: meaningful for one connection only, never forwarded. `Connection`
/// first (see [`strip_hop_by_hop`]). `Transfer-Encoding` is framing: hyper re-frames the body
/// for the next hop (`te: trailers` is the one TE value a proxy may pass, but the upstream is
/// HTTP/1.1 here).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
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
pub fn client_ip(peer: IpAddr, head: &impl Head, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut ip = canonical(peer);
    if !is_trusted(&ip) {
        return ip;
    }
    let hops: Vec<&str> = head
        .values("x-forwarded-for")
        .filter_map(|v| std::str::from_utf8(v).ok())
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

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds what is there: removing a name that is absent still
    // hashes it, and most messages carry none of these (or only `Connection`). This runs twice
    // per request.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let mut named: Vec<String> = Vec::new();
        for value in &headers.get_all(header::CONNECTION) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                // `close` is an option, not a header name; the standard hop-by-hop headers
                // are handled below.
                let standard = HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()));
                if token.is_empty() || standard || token.eq_ignore_ascii_case(b"close") {
                    continue;
                }
                if let Ok(name) = std::str::from_utf8(token) {
                    named.push(name.to_owned());
                }
            }
        }
        for name in &named {
            headers.remove(name.as_str());
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The position of a (lowercase) header name in [`HOP_BY_HOP`].
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "transfer-encoding" => 1,
        "keep-alive" => 2,
        "proxy-connection" => 3,
        "proxy-authenticate" => 4,
        "proxy-authorization" => 5,
        "te" => 6,
        "trailer" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes every header that can carry an API key, every `x-keygate-*` header a client sent
/// (only keygate may set those), and their spellings with `_` (see [`underscore_alias`]). `Authorization` is kept when it carries another scheme
/// (Basic, …): that credential is for the upstream, not for us.
pub(super) fn strip_credentials(headers: &mut HeaderMap, which: &[CredentialHeader]) {
    // One pass over the names (cheap comparisons) instead of a hashed removal per configured
    // header: a request carries one credential header, if any.
    let mut present = 0u8;
    let mut foreign = false;
    for name in headers.keys() {
        if let Some(i) = which.iter().position(|h| h.header_name() == name) {
            present |= 1 << i;
        } else if is_identity_header(name) || underscore_alias(name.as_str().as_bytes()) {
            foreign = true;
        }
    }
    for (i, &h) in which.iter().enumerate() {
        if present & (1 << i) == 0 {
            continue;
        }
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
    if foreign {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| is_identity_header(name) || underscore_alias(name.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(&name);
        }
    }
}

pub(super) fn add_identity(headers: &mut HeaderMap, record: &CachedKey) {
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
            let mut h = http::Request::new(());
            for v in *xff {
                h.headers_mut()
                    .append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            let got = client_ip(peer.parse().unwrap(), &h, &trusted);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "case {name}");
        }
    }

    #[test]
    fn hop_index_matches_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_index("x-api-key"), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        // (headers in, names left)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "keep-alive, x-secret-hop"),
                    ("x-secret-hop", "1"),
                    ("keep-alive", "timeout=5"),
                    ("te", "trailers"),
                    ("x-stays", "1"),
                ],
                &["x-stays"],
            ),
            // Tokens are case-insensitive and may repeat across Connection headers.
            (
                &[
                    ("connection", "Close"),
                    ("connection", " X-Secret-Hop ,,"),
                    ("x-secret-hop", "1"),
                    ("x-stays", "1"),
                ],
                &["x-stays"],
            ),
            (
                &[("transfer-encoding", "chunked"), ("x-stays", "1")],
                &["x-stays"],
            ),
            (
                &[("upgrade", "websocket"), ("proxy-authorization", "Basic x")],
                &[],
            ),
            // Nothing hop-by-hop: untouched.
            (
                &[("host", "a"), ("x-api-key", "k"), ("accept", "*/*")],
                &["accept", "host", "x-api-key"],
            ),
        ];
        for (given, left) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *given {
                h.append(*k, HeaderValue::from_static(v));
            }
            strip_hop_by_hop(&mut h);
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(&names, left, "{given:?}");
        }
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

        let mut h = HeaderMap::new();
        h.insert("x_keygate_owner", HeaderValue::from_static("forged"));
        h.insert("x_api_key", HeaderValue::from_static("k"));
        h.insert("x_custom", HeaderValue::from_static("stays"));
        strip_credentials(&mut h, &all);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x_custom"]
        );
    }
}
