//! The header names keygate's HTTP/1.1 acts on, recognized in one place: the request parser
//! (framing, connection options), the upstream's head (hygiene, credentials, forwarding) and
//! the client's response head (hop-by-hop, rate limits) each decide from the same answer.

use crate::credential::CredentialHeader;
use crate::limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Host,
    Expect,
    Upgrade,
    Connection,
    ContentLength,
    TransferEncoding,
    /// The other hop-by-hop headers (RFC 9110 §7.6.1): `TE`, `Trailer`, `Keep-Alive`,
    /// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`.
    HopByHop,
    /// A header an API key may arrive in.
    Credential(CredentialHeader),
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    /// `Forwarded` (RFC 7239) and `X-Real-IP`: what a client says of itself, believed only
    /// from trusted proxies.
    ClientAddress,
    /// `x-keygate-*`: only keygate may set these.
    Identity,
    Date,
    /// One of the rate-limit headers (its index in `limits::headers`).
    RateLimit(u8),
    Other,
}

/// What `name` (any case) is. Sorted by length first: most names are compared with nothing
/// at all, and none with more than two candidates.
pub fn name(name: &[u8]) -> Name {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    let limit = || match limits::headers::index(name) {
        Some(i) => Name::RateLimit(i as u8),
        None => Name::Other,
    };
    match name.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        4 if is("date") => Name::Date,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::HopByHop,
        9 if is("x-api-key") => Name::Credential(CredentialHeader::XApiKey),
        9 if is("forwarded") || is("x-real-ip") => Name::ClientAddress,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        13 if is("authorization") => Name::Credential(CredentialHeader::Authorization),
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("x-forwarded-host") => Name::ForwardedHost,
        16 if is("proxy-connection") => Name::HopByHop,
        17 if is("x-forwarded-proto") => Name::ForwardedProto,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        18 if is("proxy-authenticate") => Name::HopByHop,
        19 if is("proxy-authorization") => Name::HopByHop,
        20 if is("project-access-token") => Name::Credential(CredentialHeader::ProjectAccessToken),
        n if n >= 10 && name[..10].eq_ignore_ascii_case(b"x-keygate-") => Name::Identity,
        9 | 16 | 17 | 21 => limit(),
        _ => Name::Other,
    }
}

/// Whether `name` spells, with `_` for `-`, a header only keygate or a trusted proxy may set,
/// or one that carries a key: servers that map headers to variables CGI-style
/// (`HTTP_X_KEYGATE_OWNER`) cannot tell `X_Keygate_Owner` from `X-Keygate-Owner`, so the
/// underscore spelling is dropped too (nginx drops every header with `_` by default).
pub fn underscore_alias(name: &[u8]) -> bool {
    if !name.contains(&b'_') || name.len() > 64 {
        return false;
    }
    let mut dashed = [0u8; 64];
    for (d, &b) in dashed.iter_mut().zip(name) {
        *d = if b == b'_' { b'-' } else { b };
    }
    matches!(
        self::name(&dashed[..name.len()]),
        Name::Credential(_)
            | Name::ForwardedFor
            | Name::ForwardedProto
            | Name::ForwardedHost
            | Name::ClientAddress
            | Name::Identity
    )
}

/// What `Connection` headers said: its options, collected over every line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
}

impl Options {
    /// Takes in one `Connection` value; every other token names a hop-by-hop header, handed
    /// to `named`.
    pub fn add<'a>(&mut self, value: &'a [u8], mut named: impl FnMut(&'a [u8])) {
        for token in super::head::list(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                named(token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        for (text, want) in [
            ("Host", Name::Host),
            ("X-API-KEY", Name::Credential(CredentialHeader::XApiKey)),
            (
                "authorization",
                Name::Credential(CredentialHeader::Authorization),
            ),
            ("X-Keygate-Owner", Name::Identity),
            ("x-keygate-", Name::Identity),
            ("x-keygat", Name::Other),
            ("Transfer-Encoding", Name::TransferEncoding),
            ("x-forwarded-proto", Name::ForwardedProto),
            ("Proxy-Authorization", Name::HopByHop),
            ("TE", Name::HopByHop),
            ("Keep-Alive", Name::HopByHop),
            ("X-RateLimit-Remaining", Name::RateLimit(1)),
            ("RateLimit", Name::RateLimit(4)),
            ("ratelimit-policy", Name::RateLimit(3)),
            ("Date", Name::Date),
            ("Forwarded", Name::ClientAddress),
            ("X-Real-IP", Name::ClientAddress),
            ("Accept", Name::Other),
            ("Content-Type", Name::Other),
        ] {
            assert_eq!(name(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn underscore_spellings_of_controlled_headers() {
        for (text, alias) in [
            ("X_Keygate_Owner", true),
            ("x_forwarded_for", true),
            ("X_API_KEY", true),
            ("X_Real_IP", true),
            ("x-keygate-owner", false),
            ("X_Custom_Thing", false),
            ("user_agent", false),
        ] {
            assert_eq!(underscore_alias(text.as_bytes()), alias, "{text}");
        }
    }

    /// The hyper side strips the same hop-by-hop set by its own list.
    #[test]
    fn hop_by_hop_agrees_with_the_header_map_side() {
        for hop in [
            "connection",
            "transfer-encoding",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
        ] {
            assert!(
                matches!(
                    name(hop.as_bytes()),
                    Name::HopByHop | Name::Connection | Name::TransferEncoding | Name::Upgrade
                ),
                "{hop}"
            );
        }
    }
}
