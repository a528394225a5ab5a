//! Access tokens (RFC 6749 §4.4, client credentials; the Railz scheme): what `POST
//! /oauth/token` issues for a key, and how a request bearing one is read back to its key.
//!
//! # Self-contained, sealed tokens
//!
//! A token is `<prefix>_at_<body><checksum>`: `body` is base64url (no padding) of a 12-byte
//! random nonce and a ChaCha20-Poly1305 box (aws-lc-rs) holding the key's hash, the expiry and
//! the narrowed scopes; `checksum` is six base62 characters of CRC32 over everything before
//! it, as for keys, so a typo or a truncated token is refused before any cryptography, and
//! a secret scanner can recognise one. The box's key is SHA-256 of a secret file every
//! sidecar reads (`[tokens] secret_files`); nothing about a token is stored anywhere.
//!
//! Why sealed rather than stored with a TTL:
//!
//! - **Cost per request.** Opening a token is a checksum and one AEAD open (about a
//!   microsecond), then exactly what a key costs: a lookup of the key's hash in the cache.
//!   A stored token would add a store round trip per new token per sidecar (a cache miss),
//!   and a write per issued token.
//! - **Cost of revocation.** None beyond the key's: a token is only ever as alive as its key's
//!   record, which every request reads through the same cache the key uses. Revoking,
//!   suspending, expiring or rotating the key (its grace ends by setting `expires_at`) kills
//!   its tokens on every sidecar within the same bound as the key itself (pub/sub, then the
//!   epoch poll). There is no per-token revocation; tokens are short-lived (default 1 h), and
//!   revoking the key is the way to kill them early.
//! - **Signing secret rotation.** The first file in `secret_files` seals new tokens; every
//!   file opens them. Rotate by putting the new secret first and keeping the old one listed
//!   for one token lifetime, then dropping it; a token sealed with a dropped secret is
//!   refused as `invalid_token` and the client asks for a new one. A leaked secret lets its
//!   holder mint tokens for any key whose hash they know, so it is a secret like the Redis
//!   password: from a file, never from proxy.toml.
//!
//! The box hides the key's hash (a store index that never leaves keygate otherwise) and the
//! scopes from whoever holds the token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::crypto::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use crate::reject::{OAuthError, Reject};
use crate::vocab::KeyHash;
use crate::{credential, crypto};

/// The longest `scope` a token may carry (bytes, space-separated): the token must fit in a
/// header under `[auth] max_key_length`.
pub const MAX_SCOPE_LEN: usize = 96;
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

/// `[tokens]`, validated: present means the endpoint is on and tokens are accepted.
#[derive(Debug, Clone, Serialize)]
pub struct TokensConfig {
    /// Where the public listener answers `POST` with a token.
    pub path: String,
    /// How long an issued token lives (`expires_in`).
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    /// The first seals new tokens; every one opens them.
    pub secret_files: Vec<PathBuf>,
    #[serde(skip)]
    pub secrets: Arc<Secrets>,
}

/// The sealing keys read from `secret_files`, never printed. Empty until the files are read
/// (`Config::load`); then nothing can be issued or opened.
#[derive(Default)]
pub struct Secrets(Vec<LessSafeKey>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// One sealing key per secret; each secret must be at least 32 bytes (whitespace around
    /// it, such as a trailing newline, is ignored).
    pub fn new(secrets: &[Vec<u8>]) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, secret) in secrets.iter().enumerate() {
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(format!(
                    "secret {} is {} bytes; use at least 32 random bytes, e.g. \
                     `openssl rand -base64 48 > token.secret`",
                    i + 1,
                    secret.len()
                ));
            }
            let digest = crypto::digest::digest(&crypto::digest::SHA256, secret);
            let key = UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref())
                .map_err(|_| "cannot make a sealing key".to_owned())?;
            keys.push(LessSafeKey::new(key));
        }
        if keys.is_empty() {
            return Err("list at least one secret file".into());
        }
        Ok(Self(keys))
    }

    /// Reads each file (relative paths already resolved).
    pub fn read(files: &[PathBuf]) -> Result<Self, String> {
        let mut secrets = Vec::new();
        for file in files {
            secrets.push(
                std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?,
            );
        }
        Self::new(&secrets)
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The key it was issued for.
    pub key: KeyHash,
    pub expires_at: SystemTime,
    /// The scopes asked for at issue (a subset of the key's); empty: all the key's.
    pub scopes: Vec<String>,
}

/// Whether `credential` is shaped like a token of ours at all (`<prefix>_at_…`): such a value
/// is read as a token, never as a key.
pub fn is_token(credential: &str, prefix: &str) -> bool {
    credential
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with("_at_"))
}

/// Seals `claims` into a token with the first secret.
pub fn issue(claims: &Claims, secrets: &Secrets, prefix: &str) -> Result<String, Reject> {
    let scopes = claims.scopes.join(" ");
    let expires = claims
        .expires_at
        .duration_since(UNIX_EPOCH)
        // Rounded up: a token never dies before the `expires_in` it was issued with.
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let mut plain = Vec::with_capacity(1 + 8 + 32 + scopes.len() + TAG_LEN);
    plain.push(VERSION);
    plain.extend_from_slice(&expires.to_be_bytes());
    plain.extend_from_slice(&claims.key.0);
    plain.extend_from_slice(scopes.as_bytes());
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|_| Reject::KeyStoreUnavailable)?;
    let head = format!("{prefix}_at_");
    let Some(sealer) = secrets.0.first() else {
        return Err(Reject::KeyStoreUnavailable);
    };
    sealer
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(head.as_bytes()),
            &mut plain,
        )
        .map_err(|_| Reject::KeyStoreUnavailable)?;
    let mut sealed = nonce.to_vec();
    sealed.extend_from_slice(&plain);
    let mut token = head;
    URL_SAFE_NO_PAD.encode_string(&sealed, &mut token);
    let checksum = credential::checksum(&token);
    token.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
    Ok(token)
}

/// Reads a token back: checksum, then the box with each secret, then its expiry. Pure but for
/// the clock reading passed in.
pub fn open(
    token: &str,
    secrets: &Secrets,
    prefix: &str,
    now: SystemTime,
) -> Result<Claims, Reject> {
    let bad = || Reject::InvalidToken;
    if !is_token(token, prefix) || token.len() < prefix.len() + 4 + credential::CHECKSUM_LEN {
        return Err(bad());
    }
    let (signed, checksum) = token.split_at(token.len() - credential::CHECKSUM_LEN);
    if credential::checksum(signed).as_slice() != checksum.as_bytes() {
        return Err(bad());
    }
    let head = &signed[..prefix.len() + 4];
    let body = URL_SAFE_NO_PAD
        .decode(&signed[head.len()..])
        .map_err(|_| bad())?;
    if body.len() < NONCE_LEN + 1 + 8 + 32 + TAG_LEN {
        return Err(bad());
    }
    let (nonce, sealed) = body.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    let plain = secrets
        .0
        .iter()
        .find_map(|key| {
            let mut buf = sealed.to_vec();
            let len = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(head.as_bytes()),
                    &mut buf,
                )
                .ok()?
                .len();
            buf.truncate(len);
            Some(buf)
        })
        .ok_or_else(bad)?;
    if plain[0] != VERSION {
        return Err(bad());
    }
    let expires = u64::from_be_bytes(plain[1..9].try_into().expect("8 bytes"));
    let expires_at = UNIX_EPOCH + Duration::from_secs(expires);
    if expires_at <= now {
        return Err(Reject::ExpiredToken);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&plain[9..41]);
    let scopes = std::str::from_utf8(&plain[41..])
        .map_err(|_| bad())?
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Claims {
        key: KeyHash(key),
        expires_at,
        scopes,
    })
}

/// A client-credentials request (RFC 6749 §4.4.2), its client authenticated (§2.3.1).
#[derive(Debug, PartialEq, Eq)]
pub struct Grant {
    /// The key id (`key_…`).
    pub client_id: String,
    /// The key itself.
    pub secret: String,
    /// Space-separated scopes asked for; `None`: all the key's.
    pub scope: Option<Vec<String>>,
}

/// Reads a token request: `Authorization: Basic base64(id:secret)` or `client_id` and
/// `client_secret` in the form body (not both: RFC 6749 §2.3), `grant_type=client_credentials`,
/// optional `scope`. Pure; `body` is the whole `application/x-www-form-urlencoded` body.
pub fn grant(authorization: Option<&[u8]>, body: &[u8]) -> Result<Grant, OAuthError> {
    use OAuthError::*;
    let mut grant_type = None;
    let (mut form_id, mut form_secret, mut scope) = (None, None, None);
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match &*name {
            "grant_type" => &mut grant_type,
            "client_id" => &mut form_id,
            "client_secret" => &mut form_secret,
            "scope" => &mut scope,
            _ => continue,
        };
        // RFC 6749 §3.1: parameters must not be repeated.
        if slot.replace(value.into_owned()).is_some() {
            return Err(InvalidRequest("a parameter is repeated"));
        }
    }
    match grant_type.as_deref() {
        None => return Err(InvalidRequest("grant_type is missing")),
        Some("client_credentials") => {}
        Some(_) => return Err(UnsupportedGrantType),
    }
    let basic = match authorization {
        Some(value) => Some(basic(value).ok_or(InvalidClient)?),
        None => None,
    };
    let (client_id, secret) = match (basic, form_id, form_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(InvalidRequest(
                "send the client credentials once: Basic or the form",
            ));
        }
        (Some(pair), None, None) => pair,
        (None, Some(id), Some(secret)) => (id, secret),
        (None, _, _) => return Err(InvalidClient),
    };
    let scope = match scope {
        None => None,
        Some(s) if s.len() > MAX_SCOPE_LEN => return Err(InvalidScope),
        Some(s) => {
            let list: Vec<String> = s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if list.is_empty()
                || list
                    .iter()
                    .any(|s| s.chars().any(|c| c.is_control() || c == '"' || c == '\\'))
            {
                return Err(InvalidScope);
            }
            Some(list)
        }
    };
    Ok(Grant {
        client_id,
        secret,
        scope,
    })
}

/// The scopes a token is issued with: `asked`, each held by one of the key's `held` scopes
/// (`*` and `resource:*` cover what they cover); nothing asked: none narrowed (all the
/// key's).
pub fn narrow(held: &[&str], asked: Option<Vec<String>>) -> Result<Vec<String>, OAuthError> {
    let asked = asked.unwrap_or_default();
    if asked
        .iter()
        .all(|s| held.iter().any(|h| crate::routes::grants(h, s)))
    {
        Ok(asked)
    } else {
        Err(OAuthError::InvalidScope)
    }
}

/// `Basic base64(id:secret)` (RFC 7617; RFC 6749 §2.3.1 form-encodes both before base64).
fn basic(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = text.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let plain = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let plain = String::from_utf8(plain).ok()?;
    let (id, secret) = plain.split_once(':')?;
    let decode = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(s: &[&str]) -> Secrets {
        Secrets::new(&s.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>()).unwrap()
    }

    const A: &str = "a-secret-of-at-least-thirty-two-bytes-aaaa";
    const B: &str = "another-secret-thirty-two-bytes-or-more-bbb";

    fn claims(scopes: &[&str]) -> Claims {
        Claims {
            key: KeyHash::of("kg_sk_live_x"),
            expires_at: UNIX_EPOCH + Duration::from_secs(2_000_000_000),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tokens_round_trip_and_fit_a_header() {
        let s = secrets(&[A]);
        for scopes in [
            &[][..],
            &["content:read"],
            &["content:read", "analytics:read"],
        ] {
            let c = claims(scopes);
            let token = issue(&c, &s, "kg").unwrap();
            assert!(
                token.starts_with("kg_at_") && is_token(&token, "kg"),
                "{token}"
            );
            assert!(token.len() < 200, "{} bytes", token.len());
            assert_eq!(open(&token, &s, "kg", UNIX_EPOCH).unwrap(), c);
        }
        let a = issue(&claims(&[]), &s, "kg").unwrap();
        let b = issue(&claims(&[]), &s, "kg").unwrap();
        assert_ne!(a, b, "a fresh nonce per token");
    }

    #[test]
    fn what_is_refused() {
        let s = secrets(&[A]);
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let good = issue(&claims(&["x:y"]), &s, "kg").unwrap();
        let body_at = "kg_at_".len() + 3;
        let mut flipped = good.clone().into_bytes();
        flipped[body_at] = if flipped[body_at] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        // Same body, checksum recomputed: only the box can tell.
        let forged = {
            let signed = &flipped[..flipped.len() - credential::CHECKSUM_LEN];
            let sum = credential::checksum(signed);
            format!("{signed}{}", std::str::from_utf8(&sum).unwrap())
        };
        let other_prefix = {
            let token = issue(&claims(&[]), &s, "zz").unwrap();
            token.replacen("zz_", "kg_", 1)
        };
        let cases: Vec<(&str, String, Result<(), Reject>)> = vec![
            ("valid", good.clone(), Ok(())),
            (
                "flipped, checksum catches",
                flipped,
                Err(Reject::InvalidToken),
            ),
            ("flipped, box catches", forged, Err(Reject::InvalidToken)),
            (
                "truncated",
                good[..good.len() - 1].into(),
                Err(Reject::InvalidToken),
            ),
            ("a key", "kg_sk_live_abc".into(), Err(Reject::InvalidToken)),
            ("empty body", "kg_at_".into(), Err(Reject::InvalidToken)),
            (
                "another prefix's token",
                other_prefix,
                Err(Reject::InvalidToken),
            ),
            (
                "sealed by an unknown secret",
                issue(&claims(&[]), &secrets(&[B]), "kg").unwrap(),
                Err(Reject::InvalidToken),
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(open(&token, &s, "kg", now).map(|_| ()), want, "{name}");
        }
        let expired = open(
            &good,
            &s,
            "kg",
            UNIX_EPOCH + Duration::from_secs(2_000_000_000),
        );
        assert_eq!(expired, Err(Reject::ExpiredToken));
    }

    #[test]
    fn secret_rotation_keeps_old_tokens_for_as_long_as_the_old_secret_is_listed() {
        let old = issue(&claims(&[]), &secrets(&[A]), "kg").unwrap();
        let rotated = secrets(&[B, A]);
        assert!(open(&old, &rotated, "kg", UNIX_EPOCH).is_ok());
        let new = issue(&claims(&[]), &rotated, "kg").unwrap();
        assert!(open(&new, &secrets(&[B]), "kg", UNIX_EPOCH).is_ok());
        assert_eq!(
            open(&old, &secrets(&[B]), "kg", UNIX_EPOCH),
            Err(Reject::InvalidToken)
        );
    }

    #[test]
    fn token_requests() {
        use OAuthError::*;
        use base64::engine::general_purpose::STANDARD;
        let basic = |pair: &str| format!("Basic {}", STANDARD.encode(pair));
        let ok = |id: &str, secret: &str, scope: Option<&[&str]>| {
            Ok(Grant {
                client_id: id.into(),
                secret: secret.into(),
                scope: scope.map(|s| s.iter().map(|x| x.to_string()).collect()),
            })
        };
        let long_scope = format!("grant_type=client_credentials&scope={}", "a".repeat(97));
        type Row<'a> = (&'a str, Option<String>, &'a str, Result<Grant, OAuthError>);
        let rows: Vec<Row> = vec![
            (
                "basic",
                Some(basic("key_1:kg_sk")),
                "grant_type=client_credentials",
                ok("key_1", "kg_sk", None),
            ),
            (
                "basic, lowercase scheme",
                Some(basic("key_1:kg_sk").replacen("Basic", "basic", 1)),
                "grant_type=client_credentials",
                ok("key_1", "kg_sk", None),
            ),
            (
                "form",
                None,
                "grant_type=client_credentials&client_id=key_1&client_secret=kg_sk",
                ok("key_1", "kg_sk", None),
            ),
            (
                "scope",
                Some(basic("key_1:kg_sk")),
                "grant_type=client_credentials&scope=content%3Aread+analytics:read",
                ok("key_1", "kg_sk", Some(&["content:read", "analytics:read"])),
            ),
            (
                "no grant_type",
                Some(basic("key_1:kg_sk")),
                "",
                Err(InvalidRequest("grant_type is missing")),
            ),
            (
                "password grant",
                Some(basic("key_1:kg_sk")),
                "grant_type=password",
                Err(UnsupportedGrantType),
            ),
            (
                "repeated",
                Some(basic("key_1:kg_sk")),
                "grant_type=client_credentials&grant_type=client_credentials",
                Err(InvalidRequest("a parameter is repeated")),
            ),
            (
                "no credentials",
                None,
                "grant_type=client_credentials",
                Err(InvalidClient),
            ),
            (
                "form id without secret",
                None,
                "grant_type=client_credentials&client_id=key_1",
                Err(InvalidClient),
            ),
            (
                "both",
                Some(basic("key_1:kg_sk")),
                "grant_type=client_credentials&client_id=key_1&client_secret=kg_sk",
                Err(InvalidRequest(
                    "send the client credentials once: Basic or the form",
                )),
            ),
            (
                "bearer is no client auth",
                Some("Bearer kg_sk".into()),
                "grant_type=client_credentials",
                Err(InvalidClient),
            ),
            (
                "basic without colon",
                Some(basic("key_1")),
                "grant_type=client_credentials",
                Err(InvalidClient),
            ),
            (
                "basic not base64",
                Some("Basic !!!".into()),
                "grant_type=client_credentials",
                Err(InvalidClient),
            ),
            (
                "empty scope",
                Some(basic("key_1:kg_sk")),
                "grant_type=client_credentials&scope=+",
                Err(InvalidScope),
            ),
            (
                "long scope",
                Some(basic("key_1:kg_sk")),
                long_scope.as_str(),
                Err(InvalidScope),
            ),
        ];
        for (name, auth, body, want) in rows {
            assert_eq!(
                grant(auth.as_deref().map(str::as_bytes), body.as_bytes()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn scope_narrowing() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Row<'a> = (
            &'a [&'a str],
            Option<Vec<String>>,
            Result<Vec<String>, OAuthError>,
        );
        let rows: Vec<Row> = vec![
            (&["a:read", "b:read"], None, Ok(vec![])),
            (
                &["a:read", "b:read"],
                Some(v(&["a:read"])),
                Ok(v(&["a:read"])),
            ),
            (
                &["a:read"],
                Some(v(&["a:read", "b:read"])),
                Err(OAuthError::InvalidScope),
            ),
            (
                &["a:*"],
                Some(v(&["a:read", "a:write"])),
                Ok(v(&["a:read", "a:write"])),
            ),
            (
                &["*"],
                Some(v(&["anything:at_all"])),
                Ok(v(&["anything:at_all"])),
            ),
            (
                &["a:read"],
                Some(v(&["a:*"])),
                Err(OAuthError::InvalidScope),
            ),
        ];
        for (held, asked, want) in rows {
            assert_eq!(narrow(held, asked.clone()), want, "{held:?} {asked:?}");
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(
            Secrets::new(&[b"short\n".to_vec()])
                .unwrap_err()
                .contains("32")
        );
        assert!(Secrets::new(&[]).is_err());
        assert!(format!("{:?}", secrets(&[A])).contains("redacted"));
    }
}
