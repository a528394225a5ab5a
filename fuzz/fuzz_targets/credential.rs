//! Reading the key from a request and the key format (`credential`).
//!
//! Input: one byte of settings, up to seven bytes of key prefix (its length in the settings),
//! then header lines ending in a blank line, appended to `GET / HTTP/1.1` + `Host`.
//!
//! - `extract` reads the same key from keygate's own parsed head and from the same lines on
//!   an `http::Request` (hyper's side); a key it returns is non-empty ASCII within the length
//!   cap, trimmed, without control characters, and the (trimmed, or Bearer) value of a
//!   configured header.
//! - `generate_key` makes keys `parse_key` accepts with the type and environment asked for,
//!   for any prefix; changing any one byte of one makes `parse_key` refuse it.
//! - `carries_key` sees a generated key wherever it sits in a value, and inside `Basic`
//!   credentials however the scheme is spelled and spaced.
//! - `parse_key` and `bearer_token` never panic on anything.

#![no_main]

use base64::Engine;
use keygate::credential::{self, CredentialHeader, KeyClaims};
use keygate::keys::{Environment, KeyType};
use keygate::wire::{ParsedRequest, RequestHead};
use libfuzzer_sys::fuzz_target;

const MAX_KEY_LEN: usize = 256;

fn orders(settings: u8) -> &'static [CredentialHeader] {
    use CredentialHeader::*;
    match (settings >> 2) & 3 {
        0 => &[Authorization, XApiKey, ProjectAccessToken],
        1 => &[XApiKey],
        2 => &[ProjectAccessToken, Authorization],
        _ => &[XApiKey, Authorization],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let prefix_len = usize::from(settings >> 5).min(rest.len());
    let (prefix, lines) = rest.split_at(prefix_len);
    let prefix = String::from_utf8_lossy(prefix);
    let order = orders(settings);

    // Anything at all through the format check and the Bearer parser.
    let text = String::from_utf8_lossy(lines);
    let _ = credential::parse_key(&text, &prefix);
    if let Some(token) = credential::bearer_token(lines) {
        assert_eq!(token.trim_ascii(), token, "an untrimmed token");
    }

    // The key of a request, read by both engines.
    let mut raw = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    raw.extend_from_slice(lines);
    let mut head = RequestHead::default();
    if head.parse(&raw, 64 * 1024) == Ok(true) {
        let req = ParsedRequest::new(&head, &raw);
        let got = credential::extract(&req, order, MAX_KEY_LEN);
        if let Ok(key) = got {
            assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN && key.is_ascii());
            assert_eq!(key, key.trim_matches([' ', '\t']), "{key:?} is not trimmed");
            assert!(
                key.bytes()
                    .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic()),
                "{key:?}"
            );
            let from_a_value = req.fields().any(|(name, value)| {
                let Some(which) = std::str::from_utf8(name)
                    .ok()
                    .and_then(CredentialHeader::from_name)
                    .filter(|w| order.contains(w))
                else {
                    return false;
                };
                let value = value.trim_ascii();
                match which {
                    CredentialHeader::Authorization => {
                        credential::bearer_token(value) == Some(key.as_bytes())
                    }
                    _ => value == key.as_bytes(),
                }
            });
            assert!(from_a_value, "{key:?} is no configured header's value");
        }
        let mut map = http::Request::new(());
        let names_and_values = req.fields().map(|(name, value)| {
            Some((
                http::HeaderName::from_bytes(name).ok()?,
                http::HeaderValue::from_bytes(value).ok()?,
            ))
        });
        if let Some(pairs) = names_and_values.collect::<Option<Vec<_>>>() {
            for (name, value) in pairs {
                map.headers_mut().append(name, value);
            }
            assert_eq!(
                credential::extract(&map, order, MAX_KEY_LEN),
                got,
                "the two engines read different keys"
            );
        }
    }

    // Generated keys, for this prefix.
    let key_type = if settings & 1 == 0 {
        KeyType::Secret
    } else {
        KeyType::Public
    };
    let env = if settings & 2 == 0 {
        Environment::LIVE
    } else {
        Environment::TEST
    };
    let key = credential::generate_key(&prefix, key_type, env).expect("the OS CSPRNG");
    assert_eq!(
        credential::parse_key(&key, &prefix),
        Ok(KeyClaims { key_type, env }),
        "{key}"
    );
    // One byte changed anywhere: refused (CRC32 catches every burst shorter than 32 bits).
    if let Some(&pick) = lines.first() {
        let mut typo = key.clone().into_bytes();
        let at = usize::from(pick) % typo.len();
        let with = lines.get(1).copied().unwrap_or(b'x') & 0x7f;
        if typo[at] != with {
            typo[at] = with;
            if let Ok(typo) = String::from_utf8(typo) {
                assert!(credential::parse_key(&typo, &prefix).is_err(), "{typo}");
            }
        }
    }

    // Wherever a key sits in a value, keygate sees it.
    let at = lines
        .first()
        .map_or(0, |&b| usize::from(b) % (lines.len() + 1));
    let mut hidden = lines[..at].to_vec();
    hidden.extend_from_slice(key.as_bytes());
    hidden.extend_from_slice(&lines[at..]);
    assert!(credential::carries_key(&hidden, &prefix), "{hidden:?}");
    // Inside Basic credentials: scheme in any case, spaces or tabs after it, base64 standard or
    // URL-safe, padded or not (servers differ in what they accept: a key must not slip through
    // any of them).
    let user = String::from_utf8_lossy(&lines[..at]).replace(':', "");
    let plain = format!("{user}:{key}");
    let variant = usize::from(lines.get(2).copied().unwrap_or(0));
    let encoded = {
        use base64::engine::general_purpose::*;
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD][variant % 4].encode(&plain)
    };
    let scheme = ["Basic", "basic", "BASIC"][variant / 4 % 3];
    let gap = [" ", "  ", "\t", " \t"][variant / 12 % 4];
    let value = format!("{scheme}{gap}{encoded}");
    assert!(
        credential::carries_key(value.as_bytes(), &prefix),
        "{value:?} hides {key}"
    );
});
