//! The header rulebook: every header name keygate acts on, classified in one place
//! ([`name`]), and what the upstream ([`to_upstream`]) and the client ([`to_client`]) may see
//! of each. Both HTTP engines render these decisions and decide nothing of their own:
//! keygate's own HTTP/1.1 on header lines (`wire::request` for framing and connection options,
//! `forward::upstream_head` for the upstream's head, `wire::response` for the client's response head) and
//! hyper's side on a header map (`forward::headers`). Two copies of a rule drift apart, and in
//! a proxy a drift is a bypass; `forward`'s tests run one table of header cases through both
//! engines and require the same result.

use crate::credential::{self, CredentialHeader};
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

/// Whether `name` spells, with `_` for `-`, a header keygate acts on: one only keygate or a
/// trusted proxy may set, one that carries a key, framing (`Transfer_Encoding`,
/// `Content_Length`) or a hop-by-hop header. Servers that map headers to variables CGI-style
/// (`HTTP_X_KEYGATE_OWNER`) cannot tell `X_Keygate_Owner` from `X-Keygate-Owner`, so the
/// underscore spelling is dropped too (nginx drops every header with `_` by default).
pub fn underscore_alias(name: &[u8]) -> bool {
    if !name.contains(&b'_') {
        return false;
    }
    let dash = |b: u8| if b == b'_' { b'-' } else { b };
    if name.len() > 64 {
        // Every controlled name but `x-keygate-*` is shorter: a long one can only be that.
        return name[..10]
            .iter()
            .zip(b"x-keygate-")
            .all(|(&b, want)| dash(b).eq_ignore_ascii_case(want));
    }
    let mut dashed = [0u8; 64];
    for (d, &b) in dashed.iter_mut().zip(name) {
        *d = dash(b);
    }
    matches!(
        self::name(&dashed[..name.len()]),
        Name::Credential(_)
            | Name::ForwardedFor
            | Name::ForwardedProto
            | Name::ForwardedHost
            | Name::ClientAddress
            | Name::Identity
            | Name::ContentLength
            | Name::TransferEncoding
            | Name::Connection
            | Name::Upgrade
            | Name::HopByHop
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
        for token in list(value) {
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

/// Whether an `Upgrade` value (a request's, or a `101`'s) names WebSocket, the one upgrade
/// keygate passes on: after the switch it copies bytes blindly, so a switch to anything else
/// (h2c) would carry requests no key check saw.
pub fn is_websocket(upgrade: &[u8]) -> bool {
    upgrade.trim_ascii().eq_ignore_ascii_case(b"websocket")
}

/// Whether an HTTP/1.1 request's header lines ask to switch to WebSocket: a `Connection`
/// with `upgrade` and an `Upgrade` naming WebSocket (the last one, as keygate's own engine
/// reads a head).
pub fn asks_websocket<'a>(lines: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> bool {
    let mut options = Options::default();
    let mut websocket = false;
    for (line, value) in lines {
        match name(line) {
            Name::Connection => options.add(value, |_| {}),
            Name::Upgrade => websocket = is_websocket(value),
            _ => {}
        }
    }
    options.upgrade && websocket
}

/// The elements of a comma-separated header value, trimmed, empty ones skipped.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|s| !s.is_empty())
}

/// What becomes of one request header on its way to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToUpstream {
    /// Passed on as received.
    Keep,
    /// Never passed on: framing and hop-by-hop headers (the engine writes its own), keygate's
    /// configured credentials, any value carrying a key, `x-keygate-*` and the `_` spellings
    /// of controlled headers, and what an untrusted client says of its own address.
    Drop,
    /// `Host`: kept or replaced by the upstream's, as `[upstream] preserve_host` says. (A
    /// `Host`, or the authority of an absolute-form target, that carries a key is `Drop`: the
    /// upstream gets its own host and no `X-Forwarded-Host`.)
    Host,
    /// `X-Forwarded-For` from a trusted proxy: its hops go on, with the peer's address after
    /// them. (From anyone else it is dropped and replaced by the peer's address.)
    Chain,
}

/// What [`to_upstream`] needs to know besides the header.
#[derive(Debug, Clone, Copy)]
pub struct RequestPolicy<'a> {
    /// `[auth] credential_headers`: where keygate reads keys from.
    pub credential_headers: &'a [CredentialHeader],
    /// `[keys] prefix`, to recognize a key wherever it is.
    pub key_prefix: &'a str,
    /// The TCP peer is one of `[network] trusted_proxies`.
    pub peer_trusted: bool,
}

/// The rule for one request header line: `class` is [`name`]`(name)`, `name` as received (any
/// case). Headers that the request's `Connection` names are hop-by-hop too; the engine drops
/// those before asking.
pub fn to_upstream(class: Name, name: &[u8], value: &[u8], policy: &RequestPolicy) -> ToUpstream {
    use ToUpstream::*;
    let trusted = policy.peer_trusted;
    let decided = match class {
        Name::Host => Host,
        Name::ContentLength
        | Name::TransferEncoding
        | Name::Connection
        | Name::Upgrade
        | Name::HopByHop
        | Name::Identity => Drop,
        // `Authorization: Basic …` is the upstream's own credential, not an API key; a Bearer
        // token in a header keygate does not read keys from is the upstream's too, unless it
        // is shaped like one of our keys (below).
        Name::Credential(which)
            if policy.credential_headers.contains(&which)
                && (which != CredentialHeader::Authorization
                    || credential::bearer_token(value).is_some()) =>
        {
            Drop
        }
        Name::ForwardedFor if trusted => Chain,
        Name::ForwardedFor => Drop,
        Name::ForwardedProto | Name::ForwardedHost | Name::ClientAddress if !trusted => Drop,
        // keygate answered it itself (own engine) or hyper did.
        Name::Expect if value.eq_ignore_ascii_case(b"100-continue") => Drop,
        Name::Other if underscore_alias(name) => Drop,
        _ => Keep,
    };
    // Whatever would go on as it came (a kept value, `Host`, a trusted proxy's hops): never a
    // key.
    if decided != Drop && credential::carries_key(value, policy.key_prefix) {
        return Drop;
    }
    decided
}

/// Whether an upstream response header goes on to the client: hop-by-hop headers never do.
/// Framing (`Content-Length`, `Transfer-Encoding`) is each engine's own to write for its
/// client; headers the response's `Connection` names are dropped by the engine.
pub fn to_client(name: Name) -> bool {
    !matches!(
        name,
        Name::TransferEncoding | Name::Connection | Name::Upgrade | Name::HopByHop
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_websocket_upgrade_needs_both_headers() {
        let cases: [(&[(&str, &str)], bool); 7] = [
            (&[("Connection", "Upgrade"), ("Upgrade", "websocket")], true),
            (
                &[
                    ("connection", "keep-alive, upgrade"),
                    ("upgrade", " WebSocket "),
                ],
                true,
            ),
            (&[("Upgrade", "websocket")], false),
            (&[("Connection", "upgrade")], false),
            (&[("Connection", "upgrade"), ("Upgrade", "h2c")], false),
            (
                &[("Connection", "x-upgrade"), ("Upgrade", "websocket")],
                false,
            ),
            (
                &[
                    ("Connection", "upgrade"),
                    ("Upgrade", "websocket"),
                    ("Upgrade", "h2c"),
                ],
                false,
            ),
        ];
        for (lines, want) in cases {
            let bytes = lines.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
            assert_eq!(asks_websocket(bytes), want, "{lines:?}");
        }
    }

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
        // Found by the `request_head` fuzz target: past 64 bytes no spelling was an alias.
        let long_identity = format!("X_Keygate_Owner{}", "r".repeat(60));
        let long_other = format!("X_Custom_{}", "r".repeat(60));
        assert!(underscore_alias(long_identity.as_bytes()));
        assert!(!underscore_alias(long_other.as_bytes()));
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

    #[test]
    fn request_rules_table() {
        use ToUpstream::*;
        let key = "kg_sk_live_Hfo7DoI4rNoNONO6QNveL6yhlIWG4GlMPa";
        let basic_with_key = {
            use base64::Engine;
            let plain = format!("client:{key}");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(plain)
            )
        };
        let only_x_api_key = [CredentialHeader::XApiKey];
        let all = CredentialHeader::all();
        // (name, value, reads keys from, peer trusted, decision)
        let cases: &[(&str, &str, &[CredentialHeader], bool, ToUpstream)] = &[
            ("Host", "a", &all, false, Host),
            ("Content-Length", "3", &all, false, Drop),
            ("transfer-encoding", "chunked", &all, false, Drop),
            ("Transfer_Encoding", "chunked", &all, false, Drop),
            ("Content_Length", "3", &all, false, Drop),
            ("Keep_Alive", "timeout=5", &all, false, Drop),
            ("Connection", "close", &all, false, Drop),
            ("Upgrade", "websocket", &all, false, Drop),
            ("TE", "trailers", &all, false, Drop),
            ("Proxy-Authorization", "Basic eDp5", &all, false, Drop),
            ("x-api-key", "anything", &all, false, Drop),
            ("X_API_KEY", "anything", &all, false, Drop),
            ("Authorization", "Bearer abc", &all, false, Drop),
            ("Authorization", "bearer\tabc", &all, false, Drop),
            ("Authorization", "Basic dTpw", &all, false, Keep),
            ("Authorization", &basic_with_key, &all, false, Drop),
            // Not a header keygate reads keys from: the upstream's own token passes…
            (
                "Authorization",
                "Bearer upstream.jwt",
                &only_x_api_key,
                false,
                Keep,
            ),
            (
                "project-access-token",
                "theirs",
                &only_x_api_key,
                false,
                Keep,
            ),
            // …but never one of our keys, whichever header or scheme carries it.
            (
                "Authorization",
                &format!("Bearer {key}"),
                &only_x_api_key,
                false,
                Drop,
            ),
            ("Authorization", &format!("Token {key}"), &all, false, Drop),
            ("Api-Key", key, &all, false, Drop),
            (
                "Cookie",
                &format!("session=1; api_key={key}"),
                &all,
                false,
                Drop,
            ),
            ("X-Note", "kg_sk_", &all, false, Drop),
            ("X-Note", "kg_ski", &all, false, Keep),
            ("X-Keygate-Owner", "forged", &all, true, Drop),
            ("X_Keygate_Owner", "forged", &all, true, Drop),
            ("X-Forwarded-For", "1.2.3.4", &all, false, Drop),
            ("X-Forwarded-For", "1.2.3.4", &all, true, Chain),
            // Found by the `request_head` fuzz target: these went upstream as they came.
            ("Host", &format!("{key}.example"), &all, false, Drop),
            (
                "X-Forwarded-For",
                &format!("1.2.3.4, {key}"),
                &all,
                true,
                Drop,
            ),
            ("X_Forwarded_For", "1.2.3.4", &all, true, Drop),
            ("X-Forwarded-Proto", "https", &all, false, Drop),
            ("X-Forwarded-Proto", "https", &all, true, Keep),
            ("X-Forwarded-Host", "a", &all, false, Drop),
            ("Forwarded", "for=1.2.3.4", &all, false, Drop),
            ("Forwarded", "for=1.2.3.4", &all, true, Keep),
            ("X-Real-IP", "1.2.3.4", &all, false, Drop),
            ("Expect", "100-continue", &all, false, Drop),
            ("Expect", "something-else", &all, false, Keep),
            ("Accept", "*/*", &all, false, Keep),
            ("X-RateLimit-Limit", "5", &all, false, Keep),
            ("User_Agent", "curl", &all, false, Keep),
        ];
        for (name, value, reads, trusted, want) in cases {
            let policy = RequestPolicy {
                credential_headers: reads,
                key_prefix: "kg",
                peer_trusted: *trusted,
            };
            let class = self::name(name.as_bytes());
            assert_eq!(
                to_upstream(class, name.as_bytes(), value.as_bytes(), &policy),
                *want,
                "{name}: {value} (trusted: {trusted})"
            );
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
