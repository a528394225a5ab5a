//! Reading the caller's key from request headers, and the key format itself.
//!
//! Everything here is pure and allocation-free on the request path: a malformed or
//! mistyped key is rejected before it costs a hash, a cache probe or a store round-trip.
//!
//! Key format: `<prefix>_<sk|pk>_<live|test>_<body>`, where `body` is [`RANDOM_LEN`] base62
//! characters from the OS CSPRNG (28 × log2(62) ≈ 166 bits) followed by [`CHECKSUM_LEN`] base62
//! characters encoding the CRC32 of everything before them. The checksum lets keygate (and
//! secret scanners) tell a typo or a made-up string from a real key without any lookup; it is
//! not a security boundary — the 166 random bits are.

pub use crate::vocab::{CredentialHeader, HeaderSet};

use crate::head::Head;
use crate::reject::Reject;
use crate::vocab::{Environment, KeyType};

pub const RANDOM_LEN: usize = 28;
pub const CHECKSUM_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The one key a request presents, and every header it arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presented<'a> {
    pub key: &'a str,
    pub via: HeaderSet,
}

impl From<CredentialHeader> for &'static str {
    fn from(h: CredentialHeader) -> &'static str {
        match h {
            CredentialHeader::Authorization => "authorization",
            CredentialHeader::XApiKey => "x-api-key",
            CredentialHeader::ProjectAccessToken => "project-access-token",
        }
    }
}

/// Finds the one key this request presents.
///
/// Headers are read in `order`. The same key repeated (in several headers or several lines of
/// one header) is accepted; two different values are refused, because silently picking one
/// would let a client or an intermediary choose which identity gets authorized. Values longer
/// than `max_len` are refused before anything else looks at them.
pub fn extract<'a>(
    head: &'a impl Head,
    order: &[CredentialHeader],
    max_len: usize,
) -> Result<&'a str, Reject> {
    present(head, order, max_len).map(|p| p.key)
}

/// [`extract`], and which headers the key arrived in (for header-bound keys).
pub fn present<'a>(
    head: &'a impl Head,
    order: &[CredentialHeader],
    max_len: usize,
) -> Result<Presented<'a>, Reject> {
    let mut found: Option<&'a str> = None;
    let mut via = HeaderSet::EMPTY;
    for &which in order {
        for value in head.values(which.as_str()) {
            if value.len() > max_len {
                return Err(Reject::InvalidApiKey);
            }
            // Visible ASCII only, as a header value's `to_str` would have it: both parsers
            // already refuse control characters but tab, so ASCII is enough to check.
            let text = std::str::from_utf8(value)
                .ok()
                .filter(|text| text.is_ascii())
                .ok_or(Reject::InvalidApiKey)?;
            let Some(key) = candidate(which, text)? else {
                continue;
            };
            match found {
                Some(prev) if prev != key => return Err(Reject::ConflictingCredentials),
                _ => found = Some(key),
            }
            via = via.with(which);
        }
    }
    found
        .map(|key| Presented { key, via })
        .ok_or(Reject::MissingApiKey)
}

/// The key carried by one header value, `None` if this value carries no API key at all.
fn candidate(which: CredentialHeader, text: &str) -> Result<Option<&str>, Reject> {
    let text = text.trim_matches([' ', '\t']);
    let key = match which {
        // Basic, Digest, … are other kinds of credential: not ours to judge.
        CredentialHeader::Authorization => match bearer_token(text.as_bytes()) {
            // ASCII in, ASCII out: the token is a slice of `text` on a char boundary.
            Some(token) => &text[text.len() - token.len()..],
            None => return Ok(None),
        },
        CredentialHeader::XApiKey | CredentialHeader::ProjectAccessToken => text,
    };
    if key.is_empty() {
        return Err(Reject::MissingApiKey);
    }
    Ok(Some(key))
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case, RFC 9110
/// §11.1), trimmed; `None` for another scheme. The one Bearer parser: key extraction and the
/// stripping of credentials on their way upstream both read a value through it.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|&b| b == b' ' || b == b'\t')?;
    let (scheme, rest) = value.split_at(split);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii_start())
}

/// Whether a header value carries what looks like one of our keys anywhere in it:
/// `<prefix>_sk_` or `<prefix>_pk_` (a token or a whole key), in the clear or inside
/// `Basic` credentials. Such a value never reaches the upstream, whichever header or scheme
/// carried it: a client that put its key somewhere keygate does not read it from must not hand
/// it to the upstream either.
pub fn carries_key(value: &[u8], prefix: &str) -> bool {
    if marked(value, prefix.as_bytes()) {
        return true;
    }
    // `Basic base64(id:secret)`: the one common scheme that hides a key from the scan above.
    // Read as the most forgiving server would (scheme in any case, spaces or tabs after it,
    // see `basic_credentials`), or a key could reach an upstream that decodes what keygate
    // did not.
    let value = value.trim_ascii();
    let Some(split) = value.iter().position(|&b| b == b' ' || b == b'\t') else {
        return false;
    };
    let (scheme, token) = value.split_at(split);
    scheme.eq_ignore_ascii_case(b"basic")
        && basic_credentials(token).is_some_and(|plain| marked(&plain, prefix.as_bytes()))
}

/// Base64 as forgiving decoders read it (Python's `b64decode` drops what is not in the
/// alphabet, Node's `Buffer.from` takes the URL-safe alphabet and no padding, and either
/// ignores the unused bits of the last character): only the alphabet's characters kept, `-`
/// and `_` read as `+` and `/`, padding optional, trailing bits ignored. Everything a strict
/// decoder accepts decodes the same way.
fn basic_credentials(token: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const FORGIVING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let mut symbols: Vec<u8> = token
        .iter()
        .filter_map(|&b| match b {
            b'-' => Some(b'+'),
            b'_' => Some(b'/'),
            b'+' | b'/' => Some(b),
            _ if b.is_ascii_alphanumeric() => Some(b),
            _ => None,
        })
        .collect();
    // A single symbol left over holds no whole byte.
    if symbols.len() % 4 == 1 {
        symbols.pop();
    }
    FORGIVING.decode(symbols).ok()
}

/// `<prefix>_sk_`, `<prefix>_pk_` or `<prefix>_at_` (an access token) anywhere in `haystack`. Every occurrence of the prefix is
/// tried, overlapping ones included: with a prefix such as `abab`, `ababab_sk_…` holds a key
/// that a search for non-overlapping matches steps over.
fn marked(haystack: &[u8], prefix: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(prefix);
    let mut from = 0;
    while let Some(found) = haystack.get(from..).and_then(|rest| finder.find(rest)) {
        let after = from + found + prefix.len();
        if haystack[after..]
            .get(..4)
            .is_some_and(|tag| tag == b"_sk_" || tag == b"_pk_" || tag == b"_at_")
        {
            return true;
        }
        from += found + 1;
    }
    false
}

/// What the key string itself says, once its format and checksum are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyClaims {
    pub key_type: KeyType,
    pub env: Environment,
}

/// Verifies the shape and checksum of `key` for the configured `prefix`.
pub fn parse_key(key: &str, prefix: &str) -> Result<KeyClaims, Reject> {
    let bad = || Reject::InvalidApiKey;
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or_else(bad)?;
    let (key_type, rest) = match rest.split_at_checked(3).ok_or_else(bad)? {
        ("sk_", rest) => (KeyType::Secret, rest),
        ("pk_", rest) => (KeyType::Public, rest),
        _ => return Err(bad()),
    };
    // Any well-formed tag: whether its environment is served is authorization's question.
    let (tag, body) = rest.split_once('_').ok_or_else(bad)?;
    // A tag no config, record or management call ever named cannot be a key of ours.
    let env = Environment::known(tag).ok_or_else(bad)?;
    if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    let (signed, checksum) = key.split_at(key.len() - CHECKSUM_LEN);
    if encode_checksum(crc32fast::hash(signed.as_bytes())).as_slice() != checksum.as_bytes() {
        return Err(bad());
    }
    Ok(KeyClaims { key_type, env })
}

/// A fresh key from the OS CSPRNG.
pub fn generate_key(
    prefix: &str,
    key_type: KeyType,
    env: Environment,
) -> Result<String, getrandom::Error> {
    let mut key = format!("{prefix}_{}_{}_", key_type.code(), env.as_str());
    key.push_str(&random_base62(RANDOM_LEN)?);
    let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
    key.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
    Ok(key)
}

/// A key's non-secret hint: its prefix up to the random part, and its last 4 characters
/// (`kg_sk_live_...a1B2`). The last 4 are checksum characters (the last six carry a CRC32
/// of the rest): they tell at most 24 of the random part's 166 bits, which leaves 2^142
/// keys to try.
pub fn hint(key: &str) -> String {
    let head = key.rfind('_').map_or("", |at| &key[..=at]);
    let tail = &key[key.len().saturating_sub(4)..];
    format!("{head}...{tail}")
}

/// `n` uniformly random base62 characters (rejection sampling, so no modulo bias).
pub fn random_base62(n: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 × 62: bytes at or above it would favour the first characters.
            if b < 248 && out.len() < n {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// The six base62 characters of CRC32 over `signed` that end a key or a token.
pub fn checksum(signed: &str) -> [u8; CHECKSUM_LEN] {
    encode_checksum(crc32fast::hash(signed.as_bytes()))
}

fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_LEN] {
    // 62^6 ≈ 5.7e10 > 2^32, so six digits hold any CRC32.
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue, Request};

    #[test]
    fn a_hint_shows_the_prefix_and_the_last_four_characters_only() {
        let key = generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap();
        let h = hint(&key);
        assert!(h.starts_with("kg_sk_live_..."), "{h}");
        assert!(h.ends_with(&key[key.len() - 4..]), "{h}");
        assert_eq!(h.len(), "kg_sk_live_...".len() + 4);
        assert!(!h.contains(&key[11..key.len() - 4]), "no random characters");
    }

    const ORDER: [CredentialHeader; 3] = [
        CredentialHeader::Authorization,
        CredentialHeader::XApiKey,
        CredentialHeader::ProjectAccessToken,
    ];

    fn headers(pairs: &[(&str, &[u8])]) -> Request<()> {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let mut req = Request::new(());
        *req.headers_mut() = h;
        req
    }

    #[test]
    fn extraction_table() {
        let long = "k".repeat(257);
        let at_cap = "k".repeat(256);
        let bearer_long = format!("Bearer {}", "k".repeat(261));
        type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, Result<&'a str, Reject>);
        let cases: Vec<Case> = vec![
            ("no headers", vec![], Err(Reject::MissingApiKey)),
            ("bearer", vec![("authorization", b"Bearer abc")], Ok("abc")),
            (
                "bearer lowercase scheme",
                vec![("authorization", b"bearer abc")],
                Ok("abc"),
            ),
            (
                "bearer uppercase scheme",
                vec![("authorization", b"BEARER abc")],
                Ok("abc"),
            ),
            (
                "bearer mixed case",
                vec![("authorization", b"BeArEr abc")],
                Ok("abc"),
            ),
            (
                "bearer extra spaces",
                vec![("authorization", b"Bearer    abc")],
                Ok("abc"),
            ),
            (
                "bearer tab",
                vec![("authorization", b"Bearer\tabc")],
                Ok("abc"),
            ),
            (
                "bearer trailing space",
                vec![("authorization", b"Bearer abc  ")],
                Ok("abc"),
            ),
            (
                "bearer no token",
                vec![("authorization", b"Bearer")],
                Err(Reject::MissingApiKey),
            ),
            (
                "bearer only spaces",
                vec![("authorization", b"Bearer   ")],
                Err(Reject::MissingApiKey),
            ),
            (
                "basic is not a key",
                vec![("authorization", b"Basic dXNlcjpwYXNz")],
                Err(Reject::MissingApiKey),
            ),
            (
                "basic plus x-api-key",
                vec![
                    ("authorization", b"Basic dXNlcjpwYXNz"),
                    ("x-api-key", b"abc"),
                ],
                Ok("abc"),
            ),
            (
                "digest is not a key",
                vec![("authorization", b"Digest username=x")],
                Err(Reject::MissingApiKey),
            ),
            (
                "bearerabc is no scheme",
                vec![("authorization", b"Bearerabc")],
                Err(Reject::MissingApiKey),
            ),
            ("x-api-key", vec![("x-api-key", b"abc")], Ok("abc")),
            (
                "x-api-key padded",
                vec![("x-api-key", b"  abc\t")],
                Ok("abc"),
            ),
            (
                "x-api-key empty",
                vec![("x-api-key", b"")],
                Err(Reject::MissingApiKey),
            ),
            (
                "project-access-token",
                vec![("project-access-token", b"abc")],
                Ok("abc"),
            ),
            (
                "same key twice, two headers",
                vec![("authorization", b"Bearer abc"), ("x-api-key", b"abc")],
                Ok("abc"),
            ),
            (
                "same key in all three",
                vec![
                    ("authorization", b"Bearer abc"),
                    ("x-api-key", b"abc"),
                    ("project-access-token", b"abc"),
                ],
                Ok("abc"),
            ),
            (
                "different keys, two headers",
                vec![("authorization", b"Bearer abc"), ("x-api-key", b"xyz")],
                Err(Reject::ConflictingCredentials),
            ),
            (
                "different keys, one header twice",
                vec![("x-api-key", b"abc"), ("x-api-key", b"xyz")],
                Err(Reject::ConflictingCredentials),
            ),
            (
                "same key, one header twice",
                vec![("x-api-key", b"abc"), ("x-api-key", b"abc")],
                Ok("abc"),
            ),
            (
                "two bearer lines differ",
                vec![
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer b"),
                ],
                Err(Reject::ConflictingCredentials),
            ),
            (
                "non-ascii value",
                vec![("x-api-key", "kéy".as_bytes())],
                Err(Reject::InvalidApiKey),
            ),
            (
                "obs-text in bearer",
                vec![("authorization", b"Bearer \xff\xfe")],
                Err(Reject::InvalidApiKey),
            ),
            (
                "over-long value",
                vec![("x-api-key", long.as_bytes())],
                Err(Reject::InvalidApiKey),
            ),
            (
                "value at the cap",
                vec![("x-api-key", at_cap.as_bytes())],
                Ok(at_cap.as_str()),
            ),
            (
                "over-long bearer",
                vec![("authorization", bearer_long.as_bytes())],
                Err(Reject::InvalidApiKey),
            ),
            (
                "key with inner space kept whole",
                vec![("x-api-key", b"ab c")],
                Ok("ab c"),
            ),
            (
                "unrelated header",
                vec![("api-key", b"abc")],
                Err(Reject::MissingApiKey),
            ),
        ];
        for (name, pairs, want) in cases {
            let h = headers(&pairs);
            assert_eq!(extract(&h, &ORDER, 256), want, "case {name}");
        }
    }

    #[test]
    fn presented_names_every_header_the_key_came_in() {
        use CredentialHeader::*;
        type Lines<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Lines, HeaderSet)] = &[
            (
                &[("authorization", b"Bearer k")],
                HeaderSet::of(&[Authorization]),
            ),
            (&[("x-api-key", b"k")], HeaderSet::of(&[XApiKey])),
            (
                &[("project-access-token", b"k")],
                HeaderSet::of(&[ProjectAccessToken]),
            ),
            (
                &[("project-access-token", b"k"), ("x-api-key", b"k")],
                HeaderSet::of(&[ProjectAccessToken, XApiKey]),
            ),
            // A Basic credential is no key: it does not count as the key's header.
            (
                &[("authorization", b"Basic dTpw"), ("x-api-key", b"k")],
                HeaderSet::of(&[XApiKey]),
            ),
            (
                &[
                    ("authorization", b"Bearer k"),
                    ("authorization", b"Bearer k"),
                ],
                HeaderSet::of(&[Authorization]),
            ),
        ];
        for (pairs, want) in cases {
            let req = headers(pairs);
            let got = present(&req, &ORDER, 256).unwrap();
            assert_eq!((got.key, got.via), ("k", *want), "{pairs:?}");
        }
    }

    #[test]
    fn header_sets() {
        use CredentialHeader::*;
        let pat = HeaderSet::of(&[ProjectAccessToken]);
        let both = HeaderSet::of(&[ProjectAccessToken, XApiKey]);
        assert!(pat.is_subset(both) && !both.is_subset(pat));
        assert!(HeaderSet::EMPTY.is_subset(pat) && HeaderSet::EMPTY.is_empty());
        assert_eq!(
            both.iter().collect::<Vec<_>>(),
            [XApiKey, ProjectAccessToken]
        );
        for h in CredentialHeader::all() {
            let json = serde_json::to_string(&h).unwrap();
            assert_eq!(serde_json::from_str::<CredentialHeader>(&json).unwrap(), h);
        }
        assert!(serde_json::from_str::<CredentialHeader>("\"cookie\"").is_err());
    }

    #[test]
    fn order_limits_which_headers_count() {
        let h = headers(&[("authorization", b"Bearer abc"), ("x-api-key", b"xyz")]);
        assert_eq!(extract(&h, &[CredentialHeader::XApiKey], 256), Ok("xyz"));
        assert_eq!(
            extract(&h, &[CredentialHeader::ProjectAccessToken], 256),
            Err(Reject::MissingApiKey)
        );
    }

    #[test]
    fn generated_keys_parse_back() {
        for (t, e) in [
            (KeyType::Secret, Environment::LIVE),
            (KeyType::Secret, Environment::TEST),
            (KeyType::Public, Environment::LIVE),
            (KeyType::Public, Environment::TEST),
        ] {
            let key = generate_key("kg", t, e).unwrap();
            assert_eq!(
                key.len(),
                "kg_sk_live_".len() + RANDOM_LEN + CHECKSUM_LEN,
                "{key}"
            );
            assert_eq!(
                parse_key(&key, "kg"),
                Ok(KeyClaims {
                    key_type: t,
                    env: e
                })
            );
        }
    }

    #[test]
    fn random_keys_differ() {
        let a = generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap();
        let b = generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn format_table() {
        let good = generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap();
        let body_start = "kg_sk_live_".len();
        // Flip one character of the random part: the checksum must catch it.
        let mut flipped = good.clone().into_bytes();
        flipped[body_start] = if flipped[body_start] == b'a' {
            b'b'
        } else {
            b'a'
        };
        let flipped = String::from_utf8(flipped).unwrap();
        // Change the type: the checksum covers the whole prefix too.
        let retyped = good.replacen("_sk_", "_pk_", 1);
        let reenv = good.replacen("_live_", "_test_", 1);
        let cases: Vec<(&str, String, Result<(), Reject>)> = vec![
            ("valid", good.clone(), Ok(())),
            (
                "wrong prefix",
                good.replacen("kg_", "xx_", 1),
                Err(Reject::InvalidApiKey),
            ),
            (
                "prefix without separator",
                good.replacen("kg_", "kg", 1),
                Err(Reject::InvalidApiKey),
            ),
            ("flipped random char", flipped, Err(Reject::InvalidApiKey)),
            ("type changed", retyped, Err(Reject::InvalidApiKey)),
            ("env changed", reenv, Err(Reject::InvalidApiKey)),
            (
                "truncated",
                good[..good.len() - 1].to_string(),
                Err(Reject::InvalidApiKey),
            ),
            ("extended", format!("{good}0"), Err(Reject::InvalidApiKey)),
            (
                "unknown type",
                good.replacen("_sk_", "_xk_", 1),
                Err(Reject::InvalidApiKey),
            ),
            (
                "unknown env",
                good.replacen("_live_", "_prod_", 1),
                Err(Reject::InvalidApiKey),
            ),
            (
                "non-base62 body",
                format!("{}-{}", &good[..body_start], &good[body_start + 1..]),
                Err(Reject::InvalidApiKey),
            ),
            ("empty", String::new(), Err(Reject::InvalidApiKey)),
            ("just prefix", "kg_".into(), Err(Reject::InvalidApiKey)),
            ("garbage", "hello world".into(), Err(Reject::InvalidApiKey)),
            (
                "non-ascii",
                "kg_sk_live_é".into(),
                Err(Reject::InvalidApiKey),
            ),
        ];
        for (name, key, want) in cases {
            assert_eq!(
                parse_key(&key, "kg").map(|_| ()),
                want,
                "case {name}: {key}"
            );
        }
    }

    /// Found by the `credential` fuzz target: `Basic<TAB>…` hid a key from `carries_key`,
    /// though servers that split the scheme off at any whitespace (werkzeug) decode it; so
    /// would unpadded, URL-safe or non-canonical base64 for a forgiving decoder (Node, Python).
    #[test]
    fn keys_inside_basic_credentials_are_seen_however_written() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
        let key = generate_key("kg", KeyType::Secret, Environment::LIVE).unwrap();
        // Two bytes that encode to `+/` (`-_` URL-safe), and a length that needs `==`.
        let mut plain = b"\xfb\xff:".to_vec();
        plain.extend_from_slice(key.as_bytes());
        while plain.len() % 3 != 1 {
            plain.push(b'x');
        }
        let padded = STANDARD.encode(&plain);
        assert!(padded.contains("+/") && padded.ends_with("=="), "{padded}");
        // The last symbol's four unused bits set: still the same bytes to a forgiving decoder.
        let mut loose = padded.clone().into_bytes();
        let last = loose.len() - 3;
        let at = BASE64_ALPHABET
            .iter()
            .position(|&c| c == loose[last])
            .unwrap();
        loose[last] = BASE64_ALPHABET[at | 1];
        let loose = String::from_utf8(loose).unwrap();
        let junk = format!("{}.{}", &padded[..8], &padded[8..]);
        for value in [
            format!("Basic {padded}"),
            format!("basic\t{padded}"),
            format!("BASIC \t {padded}  "),
            format!("Basic {}", STANDARD_NO_PAD.encode(&plain)),
            format!("Basic {}", URL_SAFE.encode(&plain)),
            format!("Basic {loose}"),
            format!("Basic {junk}"),
            format!("Token {key}"),
        ] {
            assert!(carries_key(value.as_bytes(), "kg"), "{value:?}");
        }
        for value in [
            "Basic dTpw".to_owned(),
            "Basic".to_owned(),
            format!("Basicx {padded}"),
            format!("Bearer {padded}"),
            format!("Basic {}", STANDARD.encode("client:kg_sx_live_x")),
        ] {
            assert!(!carries_key(value.as_bytes(), "kg"), "{value:?}");
        }
    }

    /// Found by the `credential` fuzz target: a key right after part of its own prefix
    /// (`k` + `kk_pk_…` for the prefix `kk`) was stepped over by a search for
    /// non-overlapping matches.
    #[test]
    fn keys_behind_a_partial_prefix_are_seen() {
        for (prefix, value, carries) in [
            ("kk", "kkk_pk_test_x", true),
            ("kk", "kkkkk_sk_live_x", true),
            ("abab", "ababab_sk_live_x", true),
            ("abab", "x=ab; y=abab_pk_live_x", true),
            ("kg", "kgkg_sk_live_x", true),
            ("kg", "", false),
            ("kk", "kkk_xk_live_x", false),
            ("abab", "abababab", false),
        ] {
            assert_eq!(
                carries_key(value.as_bytes(), prefix),
                carries,
                "{prefix}: {value}"
            );
        }
    }

    const BASE64_ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    #[test]
    fn checksum_encoding_covers_u32() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn base62_is_roughly_uniform() {
        let s = random_base62(62 * 400).unwrap();
        let mut counts = [0u32; 62];
        for b in s.bytes() {
            counts[BASE62.iter().position(|&c| c == b).unwrap()] += 1;
        }
        // Mean 400 per symbol; a biased generator (e.g. b % 62 without rejection) still
        // passes this, but a broken one (a constant, a short alphabet) does not.
        assert!(counts.iter().all(|&c| c > 250 && c < 550), "{counts:?}");
    }
}
