//! What the upstream may see of a request, and who sent it: hop-by-hop headers and
//! credentials removed, keygate's identity headers set (after any a client sent are removed),
//! and the client's real address behind trusted proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::authz::canonical;
use crate::head::Head;
use crate::header_rules::{self, Name, RequestPolicy, ToUpstream};
use crate::keys::cached_key::CachedKey;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
static OWNER: HeaderName = HeaderName::from_static("x-keygate-owner");
static SCOPES: HeaderName = HeaderName::from_static("x-keygate-scopes");
static ENV: HeaderName = HeaderName::from_static("x-keygate-env");
static WORKSPACE: HeaderName = HeaderName::from_static("x-keygate-workspace");
static PROJECT: HeaderName = HeaderName::from_static("x-keygate-project");

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

/// Headers the message's `Connection` header names (RFC 9110 §7.6.1), lowercased. An
/// HTTP/2 message has none; an HTTP/1.1 one served by hyper may.
fn connection_named(headers: &HeaderMap) -> Vec<Vec<u8>> {
    let mut named = Vec::new();
    for value in &headers.get_all(header::CONNECTION) {
        header_rules::Options::default().add(value.as_bytes(), |token| {
            named.push(token.to_ascii_lowercase());
        });
    }
    named
}

/// A response's headers for the client: what the rulebook keeps ([`header_rules::to_client`]),
/// less whatever its `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    let gone: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let raw = name.as_str().as_bytes();
            !header_rules::to_client(header_rules::name(raw)) || named.iter().any(|n| n == raw)
        })
        .cloned()
        .collect();
    for name in gone {
        headers.remove(&name);
    }
}

/// What the rulebook leaves for the engine to write after [`apply_request_rules`].
#[derive(Debug, Default)]
pub(super) struct Forwarding {
    /// `X-Forwarded-For` hops from a trusted proxy, in order; the peer's address goes after.
    pub chain: Vec<HeaderValue>,
    /// A trusted proxy's `X-Forwarded-Proto` / `X-Forwarded-Host` stayed: keygate adds none.
    pub has_proto: bool,
    pub has_forwarded_host: bool,
}

/// Renders [`header_rules::to_upstream`] on a request's header map: every value it drops is
/// removed (value by value where one name carries both kinds, e.g. a Basic and a Bearer
/// `Authorization`), `X-Forwarded-For` from a trusted proxy is taken out for the engine to
/// continue, `Host` is left for the engine to keep or replace.
pub(super) fn apply_request_rules(headers: &mut HeaderMap, policy: &RequestPolicy) -> Forwarding {
    let named = connection_named(headers);
    let decide = |name: &HeaderName, value: &HeaderValue| {
        let raw = name.as_str().as_bytes();
        if named.iter().any(|n| n == raw) {
            return ToUpstream::Drop;
        }
        header_rules::to_upstream(header_rules::name(raw), raw, value.as_bytes(), policy)
    };
    let mut forwarding = Forwarding::default();
    // Names whose every value goes, and names with values going and staying.
    let mut gone: Vec<HeaderName> = Vec::new();
    let mut mixed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let (mut values, mut dropped) = (0, 0);
        for value in headers.get_all(name) {
            values += 1;
            match decide(name, value) {
                ToUpstream::Keep => match header_rules::name(name.as_str().as_bytes()) {
                    Name::ForwardedProto => forwarding.has_proto = true,
                    Name::ForwardedHost => forwarding.has_forwarded_host = true,
                    _ => {}
                },
                ToUpstream::Host => {}
                ToUpstream::Chain => {
                    forwarding.chain.push(value.clone());
                    dropped += 1;
                }
                ToUpstream::Drop => dropped += 1,
            }
        }
        if dropped == values {
            gone.push(name.clone());
        } else if dropped > 0 {
            mixed.push(name.clone());
        }
    }
    for name in mixed {
        let kept: Vec<HeaderValue> = headers
            .get_all(&name)
            .iter()
            .filter(|v| decide(&name, v) != ToUpstream::Drop)
            .cloned()
            .collect();
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
    for name in gone {
        headers.remove(&name);
    }
    forwarding
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
    headers.insert(&ENV, record.env.header_value());
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
    use crate::credential::CredentialHeader;

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
    fn credentials_go_but_basic_stays_value_by_value() {
        let all = CredentialHeader::all();
        let policy = RequestPolicy {
            credential_headers: &all,
            key_prefix: "kg",
            peer_trusted: false,
        };
        let mut h = HeaderMap::new();
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert("project-access-token", HeaderValue::from_static("k"));
        h.insert("x_keygate_owner", HeaderValue::from_static("forged"));
        h.insert("x-custom", HeaderValue::from_static("stays"));
        apply_request_rules(&mut h, &policy);
        let mut left: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [("authorization", "Basic dTpw"), ("x-custom", "stays")]
        );
    }
}
