//! CORS for browser-safe public keys (Raily's `pk` keys): which browser origins may call with
//! a key, the preflights keygate answers itself, and the `Access-Control-*` headers every
//! response to a browser carries. One place decides; both engines render the headers it
//! returns (hyper's side in `proxy::handle`, keygate's own HTTP/1.1 in `wire::response`), as
//! they render the header rulebook.
//!
//! # Who may call from a browser
//!
//! Only public (`pk`) keys: a secret key in a web page is a leaked secret. A `pk` key names
//! its own origins (`keys create --allow-origin https://app.example.com`, or
//! `https://*.example.com` for every subdomain); a key naming none takes `[cors]
//! allow_origins`; with neither, the key is not for browsers and a request carrying an
//! `Origin` is refused (403 `origin_not_allowed`). A secret key's `Origin` is ignored: it
//! gets no `Access-Control-Allow-Origin`, so a browser never hands its response to a page.
//!
//! # Preflights: answered for any well-formed origin, by default
//!
//! A browser sends the preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) without the key, so keygate cannot know whose origins
//! apply. It could answer only for `[cors] allow_origins`, but then a key's own
//! `--allow-origin` would be useless (every call with a key in a header is preflighted); or
//! for the union of every `pk` key's origins, which is a scan of the whole store, stale as
//! soon as a key is created, on every sidecar. Neither buys safety: saying yes to a preflight
//! grants nothing but the browser's permission to send the actual request, which carries the
//! key and is checked against that key's own origins before anything reaches the upstream;
//! a page on a disallowed origin gets a 403 without `Access-Control-Allow-Origin`, which the
//! browser does not let it read. Keys are not cookies: the browser never attaches one on its
//! own, so there is no ambient credential for a cross-site page to ride on, and
//! `Access-Control-Allow-Credentials` is never sent. So by default (`preflight = "any"`) a
//! preflight from any well-formed `http(s)` origin is answered `204` with the methods a
//! public key may use and the credential headers; `preflight = "listed"` answers only
//! `[cors] allow_origins`, for an operator who wants preflights to reveal nothing.
//! Preflights never reach the upstream, and cost no key lookup.
//!
//! # Errors a browser can read
//!
//! Refusals before the key is known (a missing or invalid key) carry the CORS headers for the
//! origins a preflight is answered for, so the page can read why; once the key is known, its
//! own origins decide.

use std::fmt;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::vocab::{CredentialHeader, KeyType};

/// Headers keygate adds to one response (names lowercase).
pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// What a browser page may read of a response besides the CORS-safelisted headers: the
/// rate-limit headers and when to retry, and the rotation reminders.
pub const EXPOSE: &str = "x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, \
                          ratelimit-policy, ratelimit, retry-after, deprecation, sunset";

/// The methods a public key may use ([`crate::authz`]), as a preflight lists them.
const METHODS: &str = "GET, HEAD";

/// `[cors]`, validated.
#[derive(Debug, Clone, Serialize)]
pub struct CorsConfig {
    /// Origins of public keys that name none of their own.
    pub allow_origins: Vec<OriginPattern>,
    pub preflight: PreflightPolicy,
    /// Request headers a page may send besides the credential headers and `content-type`
    /// (lowercase).
    pub allow_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            preflight: PreflightPolicy::Any,
            allow_headers: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

/// Which origins a preflight is answered for (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreflightPolicy {
    /// Any well-formed `http(s)` origin: the actual request decides.
    Any,
    /// Only `[cors] allow_origins`.
    Listed,
}

/// Why an origin may not call with this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginDenial {
    /// The key's (or the default) origins do not include it.
    NotListed,
    /// A public key with no origins of its own and no `[cors] allow_origins`.
    NoneAllowed,
}

/// An allowed origin: `https://app.example.com`, `http://127.0.0.1:8080`,
/// `https://*.example.com` (any subdomain, at any depth, never the domain itself), or `*`
/// (any origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    text: Box<str>,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Any,
    Exact,
    /// Everything after `*` (`.example.com`), with the scheme and port around it.
    Subdomains {
        scheme: Box<str>,
        suffix: Box<str>,
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Parses a pattern; the error says what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "write scheme://host[:port] with no path, e.g. \"https://app.example.com\" \
                    or \"https://*.example.com\" for its subdomains";
        if text == "*" {
            return Ok(Self {
                text: text.into(),
                kind: Kind::Any,
            });
        }
        let lower = text.to_ascii_lowercase();
        if lower != text {
            return Err(format!("{text:?}: origins are lowercase; {hint}"));
        }
        if let Some((scheme, rest)) = text.split_once("://")
            && let Some(wild) = rest.strip_prefix("*.")
        {
            // The rest must be an origin on its own: `https://example.com`.
            let bare = format!("{scheme}://{wild}");
            let origin =
                Origin::parse(bare.as_bytes()).ok_or_else(|| format!("{text:?}: {hint}"))?;
            if !origin.host.contains('.') {
                return Err(format!(
                    "{text:?}: a wildcard covers subdomains of a registrable domain, such as \
                     \"https://*.example.com\"; {hint}"
                ));
            }
            return Ok(Self {
                text: text.into(),
                kind: Kind::Subdomains {
                    scheme: origin.scheme.into(),
                    suffix: format!(".{}", origin.host).into(),
                    port: origin.port,
                },
            });
        }
        if text.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard may only be the first label (\"https://*.example.com\") \
                 or the whole pattern (\"*\")"
            ));
        }
        match Origin::parse(text.as_bytes()) {
            Some(origin) if origin.serialized() == text => Ok(Self {
                text: text.into(),
                kind: Kind::Exact,
            }),
            _ => Err(format!("{text:?}: {hint}")),
        }
    }

    /// Whether the `Origin` a browser sent (as received) is one this pattern allows.
    pub fn matches(&self, origin: &Origin) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => origin.serialized() == &*self.text,
            Kind::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                origin.scheme == &**scheme
                    && origin.port == *port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(&**suffix)
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for OriginPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A well-formed `Origin` header: `http` or `https`, a lowercase host of letters, digits,
/// `-` and `.` (or a bracketed IPv6 address), an optional port. Browsers send exactly this
/// serialization (RFC 6454 §6.2); anything else (`null`, a path, uppercase) matches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    raw: &'a str,
}

impl<'a> Origin<'a> {
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        let raw = std::str::from_utf8(raw).ok()?;
        let (scheme, rest) = raw.split_once("://")?;
        if scheme != "http" && scheme != "https" {
            return None;
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6.split_once(']')?;
                addr.parse::<std::net::Ipv6Addr>().ok()?;
                let host = &rest[..addr.len() + 2];
                match after {
                    "" => (host, None),
                    _ => (host, Some(after.strip_prefix(':')?)),
                }
            }
            None => match rest.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !host.starts_with('[') && (host.len() > 253 || !host.split('.').all(label_ok)) {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok().filter(|&n| n != 0)?)
            }
            Some(_) => return None,
        };
        Some(Self {
            scheme,
            host,
            port,
            raw,
        })
    }

    /// The origin as sent (already its serialization when it parsed).
    pub fn serialized(&self) -> &str {
        self.raw
    }
}

impl CorsConfig {
    /// The answer to a preflight from `origin` (the `Origin` header as received); the
    /// credential headers are the ones keygate reads keys from.
    pub fn preflight(
        &self,
        origin: &[u8],
        credential_headers: &[CredentialHeader],
    ) -> Result<Headers, OriginDenial> {
        let origin = Origin::parse(origin).ok_or(OriginDenial::NotListed)?;
        if self.preflight == PreflightPolicy::Listed
            && !self.allow_origins.iter().any(|p| p.matches(&origin))
        {
            return Err(match self.allow_origins.is_empty() {
                true => OriginDenial::NoneAllowed,
                false => OriginDenial::NotListed,
            });
        }
        let mut allowed: Vec<&str> = credential_headers.iter().map(|h| h.as_str()).collect();
        allowed.push("content-type");
        allowed.extend(self.allow_headers.iter().map(String::as_str));
        let mut headers = allow(&origin);
        headers.extend([
            (
                HeaderName::from_static("access-control-allow-methods"),
                HeaderValue::from_static(METHODS),
            ),
            (
                HeaderName::from_static("access-control-allow-headers"),
                HeaderValue::from_str(&allowed.join(", "))
                    .expect("validated header names are a valid value"),
            ),
            (
                HeaderName::from_static("access-control-max-age"),
                HeaderValue::from(self.max_age.as_secs()),
            ),
        ]);
        Ok(headers)
    }

    /// The headers for a response decided before the key is known (a refusal): those of the
    /// origins a preflight is answered for, so the page can read why.
    pub fn before_key(&self, origin: Option<&[u8]>) -> Option<Headers> {
        let origin = Origin::parse(origin?)?;
        let listed = || self.allow_origins.iter().any(|p| p.matches(&origin));
        (self.preflight == PreflightPolicy::Any || listed()).then(|| actual(&origin))
    }

    /// The headers for a response to `key` (a request from `origin`), or why that origin may
    /// not call with it. `None`: no CORS headers (no `Origin`, or a secret key).
    pub fn for_key(
        &self,
        origin: Option<&[u8]>,
        key_type: KeyType,
        key_origins: &[OriginPattern],
    ) -> Result<Option<Headers>, OriginDenial> {
        let (Some(origin), KeyType::Public) = (origin, key_type) else {
            return Ok(None);
        };
        let list = match key_origins {
            [] => &self.allow_origins[..],
            own => own,
        };
        if list.is_empty() {
            return Err(OriginDenial::NoneAllowed);
        }
        let origin = Origin::parse(origin).ok_or(OriginDenial::NotListed)?;
        match list.iter().any(|p| p.matches(&origin)) {
            true => Ok(Some(actual(&origin))),
            false => Err(OriginDenial::NotListed),
        }
    }
}

/// `Access-Control-Allow-Origin` naming the origin (never `*`: the answer depends on it, so
/// caches must keep one per origin: `Vary: Origin`).
fn allow(origin: &Origin) -> Headers {
    vec![
        (
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_str(origin.serialized()).expect("a parsed origin is a valid value"),
        ),
        (http::header::VARY, HeaderValue::from_static("Origin")),
    ]
}

/// The headers of an actual (not preflight) response.
fn actual(origin: &Origin) -> Headers {
    let mut headers = allow(origin);
    headers.push((
        http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE),
    ));
    headers
}

/// Whether a response header is one keygate decides when it answers for CORS
/// (`Access-Control-*`): the upstream's own are dropped then, so one place decides.
pub fn is_cors_header(name: &[u8]) -> bool {
    name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(s: &str) -> OriginPattern {
        OriginPattern::parse(s).unwrap()
    }

    #[test]
    fn origins_parse_only_in_their_serialized_form() {
        type Parts = Option<(&'static str, &'static str, Option<u16>)>;
        let table: &[(&str, Parts)] = &[
            (
                "https://app.example.com",
                Some(("https", "app.example.com", None)),
            ),
            (
                "http://127.0.0.1:8080",
                Some(("http", "127.0.0.1", Some(8080))),
            ),
            (
                "http://localhost:3000",
                Some(("http", "localhost", Some(3000))),
            ),
            ("http://[::1]:80", Some(("http", "[::1]", Some(80)))),
            ("http://[::1]", Some(("http", "[::1]", None))),
            ("null", None),
            ("file://", None),
            ("ftp://example.com", None),
            ("https://example.com/", None),
            ("https://example.com/path", None),
            ("https://Example.com", None),
            ("HTTPS://example.com", None),
            ("https://", None),
            ("https://example..com", None),
            ("https://-a.example.com", None),
            ("https://example.com:", None),
            ("https://example.com:0", None),
            ("https://example.com:65536", None),
            ("https://example.com:80:80", None),
            ("https://user@example.com", None),
            ("https://[zz]:1", None),
            ("https://a b.com", None),
        ];
        for (raw, want) in table {
            let got = Origin::parse(raw.as_bytes()).map(|o| (o.scheme, o.host, o.port));
            assert_eq!(got, *want, "{raw}");
        }
    }

    #[test]
    fn patterns_exact_and_wildcard() {
        // (pattern, origin, allowed)
        let table: &[(&str, &str, bool)] = &[
            ("https://app.example.com", "https://app.example.com", true),
            ("https://app.example.com", "http://app.example.com", false),
            (
                "https://app.example.com",
                "https://app.example.com:8443",
                false,
            ),
            (
                "https://app.example.com",
                "https://evil.app.example.com",
                false,
            ),
            (
                "https://app.example.com",
                "https://app.example.com.evil.io",
                false,
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080", true),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8081", false),
            ("https://*.example.com", "https://a.example.com", true),
            ("https://*.example.com", "https://a.b.example.com", true),
            // The domain itself is not one of its subdomains.
            ("https://*.example.com", "https://example.com", false),
            // A suffix that is not on a label boundary.
            ("https://*.example.com", "https://evilexample.com", false),
            (
                "https://*.example.com",
                "https://a.example.com.evil.io",
                false,
            ),
            ("https://*.example.com", "http://a.example.com", false),
            ("https://*.example.com", "https://a.example.com:8443", false),
            (
                "https://*.example.com:8443",
                "https://a.example.com:8443",
                true,
            ),
            ("*", "https://anything.io", true),
            ("*", "null", false),
        ];
        for (p, origin, want) in table {
            let got = Origin::parse(origin.as_bytes()).is_some_and(|o| pattern(p).matches(&o));
            assert_eq!(got, *want, "{p} vs {origin}");
        }
    }

    #[test]
    fn bad_patterns_say_what_to_write() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://App.example.com",
            "https://a.*.example.com",
            "https://*example.com",
            "https://*.com",
            "*.example.com",
            "https://*",
            "null",
        ] {
            let err = OriginPattern::parse(bad).expect_err(bad);
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
        h.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_str().unwrap())
    }

    #[test]
    fn which_origin_a_key_answers() {
        let config = CorsConfig {
            allow_origins: vec![pattern("https://app.example.com")],
            ..CorsConfig::default()
        };
        let own = [pattern("https://*.partner.io")];
        let public = KeyType::Public;
        let o = |s: &'static str| Some(s.as_bytes());
        // (origin, key type, key's own origins, config default?) -> ACAO or the denial
        type Row<'a> = (
            Option<&'static [u8]>,
            KeyType,
            &'a [OriginPattern],
            bool,
            Result<Option<&'static str>, OriginDenial>,
        );
        let table: &[Row] = &[
            // No Origin: not a browser, nothing to add.
            (None, public, &[], true, Ok(None)),
            // The default list, for a key naming none.
            (
                o("https://app.example.com"),
                public,
                &[],
                true,
                Ok(Some("https://app.example.com")),
            ),
            (
                o("https://evil.io"),
                public,
                &[],
                true,
                Err(OriginDenial::NotListed),
            ),
            // The key's own list replaces the default.
            (
                o("https://x.partner.io"),
                public,
                &own,
                true,
                Ok(Some("https://x.partner.io")),
            ),
            (
                o("https://app.example.com"),
                public,
                &own,
                true,
                Err(OriginDenial::NotListed),
            ),
            // Neither: not a browser key.
            (
                o("https://app.example.com"),
                public,
                &[],
                false,
                Err(OriginDenial::NoneAllowed),
            ),
            (o("null"), public, &[], true, Err(OriginDenial::NotListed)),
            // A secret key's Origin is ignored: no CORS headers, the browser hides the answer.
            (
                o("https://app.example.com"),
                KeyType::Secret,
                &[],
                true,
                Ok(None),
            ),
        ];
        let bare = CorsConfig::default();
        for (i, (origin, kind, own, default, want)) in table.iter().enumerate() {
            let c = if *default { &config } else { &bare };
            let got = c.for_key(*origin, *kind, own);
            let got = got.map(|h| {
                h.and_then(|h| header(&h, "access-control-allow-origin").map(str::to_owned))
            });
            assert_eq!(got, want.map(|w| w.map(str::to_owned)), "row {i}");
        }
        let h = config
            .for_key(o("https://app.example.com"), public, &[])
            .unwrap()
            .unwrap();
        assert_eq!(header(&h, "vary"), Some("Origin"));
        assert!(
            header(&h, "access-control-expose-headers")
                .unwrap()
                .contains("x-ratelimit-remaining")
        );
        assert!(header(&h, "access-control-allow-credentials").is_none());
    }

    #[test]
    fn preflights_by_policy() {
        let listed = CorsConfig {
            allow_origins: vec![pattern("https://app.example.com")],
            preflight: PreflightPolicy::Listed,
            allow_headers: vec!["x-request-id".into()],
            ..CorsConfig::default()
        };
        let any = CorsConfig::default();
        let creds = [CredentialHeader::Authorization, CredentialHeader::XApiKey];
        let h = any.preflight(b"http://localhost:3000", &creds).unwrap();
        assert_eq!(
            header(&h, "access-control-allow-origin"),
            Some("http://localhost:3000")
        );
        assert_eq!(
            header(&h, "access-control-allow-methods"),
            Some("GET, HEAD")
        );
        assert_eq!(
            header(&h, "access-control-allow-headers"),
            Some("authorization, x-api-key, content-type")
        );
        assert_eq!(header(&h, "access-control-max-age"), Some("600"));
        assert_eq!(any.preflight(b"null", &creds), Err(OriginDenial::NotListed));
        let h = listed
            .preflight(b"https://app.example.com", &creds)
            .unwrap();
        assert_eq!(
            header(&h, "access-control-allow-headers"),
            Some("authorization, x-api-key, content-type, x-request-id")
        );
        assert_eq!(
            listed.preflight(b"https://evil.io", &creds),
            Err(OriginDenial::NotListed)
        );
        // Refusals before the key: the preflight's origins.
        assert!(any.before_key(Some(b"https://evil.io")).is_some());
        assert!(listed.before_key(Some(b"https://evil.io")).is_none());
        assert!(
            listed
                .before_key(Some(b"https://app.example.com"))
                .is_some()
        );
        assert!(any.before_key(None).is_none());
    }

    #[test]
    fn cors_headers_by_name() {
        assert!(is_cors_header(b"Access-Control-Allow-Origin"));
        assert!(is_cors_header(b"access-control-expose-headers"));
        assert!(!is_cors_header(b"access-control-"));
        assert!(!is_cors_header(b"vary"));
    }
}
