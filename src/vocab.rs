//! The words every layer shares: what identifies a key ([`KeyHash`]), what kind it is
//! ([`KeyType`], [`Environment`], [`Status`]), the headers it may arrive in
//! ([`CredentialHeader`], [`HeaderSet`]), and how a store fails ([`StoreError`]).
//!
//! A leaf: it imports nothing from the rest of keygate, so the request path's stages, the
//! stores, the limits and the config can all speak of keys without depending on each other.

use std::fmt;

use http::header::{AUTHORIZATION, HeaderName};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The headers a key may arrive in. Written by name (`"project-access-token"`) in key records
/// and the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum CredentialHeader {
    /// `Authorization: Bearer <key>`; other schemes (Basic, Digest) are not API keys.
    Authorization,
    XApiKey,
    ProjectAccessToken,
}

impl CredentialHeader {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "authorization" => Some(Self::Authorization),
            "x-api-key" => Some(Self::XApiKey),
            "project-access-token" => Some(Self::ProjectAccessToken),
            _ => None,
        }
    }

    pub fn header_name(self) -> HeaderName {
        match self {
            Self::Authorization => AUTHORIZATION,
            Self::XApiKey => HeaderName::from_static("x-api-key"),
            Self::ProjectAccessToken => HeaderName::from_static("project-access-token"),
        }
    }

    /// The header's name in lowercase.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn all() -> [Self; 3] {
        [Self::Authorization, Self::XApiKey, Self::ProjectAccessToken]
    }

    /// How a client is told to send a key in it (error messages).
    pub fn usage(self) -> &'static str {
        match self {
            Self::Authorization => "Authorization: Bearer",
            Self::XApiKey => "X-Api-Key",
            Self::ProjectAccessToken => "Project-Access-Token",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl TryFrom<String> for CredentialHeader {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Self::from_name(&name).ok_or_else(|| {
            format!(
                "{name:?} is not a credential header; use authorization, x-api-key or \
                 project-access-token"
            )
        })
    }
}

/// A set of [`CredentialHeader`]s in one byte: the headers one request's key arrived in, or
/// the headers a key may arrive in (a header-bound key, `keys create --header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HeaderSet(u8);

impl HeaderSet {
    pub const EMPTY: Self = Self(0);

    pub fn of(headers: &[CredentialHeader]) -> Self {
        headers.iter().fold(Self::EMPTY, |set, &h| set.with(h))
    }

    #[must_use]
    pub fn with(self, header: CredentialHeader) -> Self {
        Self(self.0 | header.bit())
    }

    pub fn contains(self, header: CredentialHeader) -> bool {
        self.0 & header.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every header in `self` is in `other`.
    pub fn is_subset(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// One bit per header, for compact storage; [`HeaderSet::from_bits`] reads it back.
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 0b111)
    }

    pub fn iter(self) -> impl Iterator<Item = CredentialHeader> {
        CredentialHeader::all()
            .into_iter()
            .filter(move |&h| self.contains(h))
    }
}

/// SHA-256 of a full key string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

/// A SHA-256 is already uniformly distributed: its first 8 bytes are a perfect table hash, and
/// running SipHash over it again (the std default) is wasted work on every request. Keys are
/// not attacker-chosen in a way that helps: finding SHA-256 inputs that collide in 64 bits of
/// output is a 2^32-work search per bucket, and the maps it feeds are bounded.
#[derive(Clone, Copy, Default)]
pub struct KeyHashHasher(u64);

impl std::hash::Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for types other than KeyHash: fold the bytes in (FNV-1a).
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type KeyHashState = std::hash::BuildHasherDefault<KeyHashHasher>;

impl KeyHash {
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Another hash, of this one and `salt`: counters of this key kept apart from its own
    /// (per-route limits), never equal to any key's hash short of a SHA-256 collision.
    pub fn derive(self, salt: &str) -> Self {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update([0]);
        h.update(salt.as_bytes());
        Self(h.finalize().into())
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    // Short on purpose: the hash is not secret, but full hashes in logs invite grepping for
    // them elsewhere and add nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than `String::deserialize`: loading a million-key file must not
        // leave a million freed temporaries behind in the allocator (see `keys::file`).
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = KeyHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 hash as 64 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KeyHash, E> {
                KeyHash::from_hex(s).ok_or_else(|| E::custom("hash must be 64 hex digits"))
            }
        }
        d.deserialize_str(Hex)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    /// Full access to its scopes.
    Secret,
    /// Safe to embed in a browser or app: read-only whatever its scopes say.
    Public,
}

impl KeyType {
    /// The two letters inside the key string.
    pub fn code(self) -> &'static str {
        match self {
            Self::Secret => "sk",
            Self::Public => "pk",
        }
    }
}

/// A key's environment: the tag in the key (`kg_sk_<env>_…`). `live` (production) and `test`
/// (sandbox) always exist; `[environments.<tag>]` adds others (Raily's `dev`, `staging`).
///
/// One byte, like the enum it was (a cached key's size rests on it): an index into a table
/// of the tags this process has seen from trusted sources (the config, stored records, the
/// CLI and the management API), at most 256. A key presented in a request only looks its tag
/// up ([`Environment::known`]), so made-up tags cannot fill the table.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Environment(u8);

static TAGS: std::sync::RwLock<Vec<&'static str>> = std::sync::RwLock::new(Vec::new());

impl Environment {
    /// Production.
    pub const LIVE: Self = Self(0);
    /// Sandbox.
    pub const TEST: Self = Self(1);

    fn valid(tag: &str) -> bool {
        (1..=15).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }

    fn find(tags: &[&'static str], tag: &str) -> Option<Self> {
        match tag {
            "live" => Some(Self::LIVE),
            "test" => Some(Self::TEST),
            _ => tags
                .iter()
                .position(|t| *t == tag)
                .and_then(|i| u8::try_from(i + 2).ok())
                .map(Self),
        }
    }

    /// An environment tag from a trusted source: 1 to 15 lowercase ASCII letters and digits
    /// (it sits between two `_` in a key, so it can never hold one); `None` if malformed or
    /// if 256 tags are already known.
    pub fn parse(tag: &str) -> Option<Self> {
        if !Self::valid(tag) {
            return None;
        }
        if let Some(env) = Self::known(tag) {
            return Some(env);
        }
        let mut tags = TAGS.write().unwrap_or_else(|p| p.into_inner());
        if let Some(env) = Self::find(&tags, tag) {
            return Some(env);
        }
        let index = u8::try_from(tags.len() + 2).ok()?;
        tags.push(Box::leak(tag.to_owned().into_boxed_str()));
        Some(Self(index))
    }

    /// A tag this process already knows (a key presented in a request).
    pub fn known(tag: &str) -> Option<Self> {
        match tag {
            // The request path's common case, without the lock.
            "live" => Some(Self::LIVE),
            "test" => Some(Self::TEST),
            _ => Self::find(&TAGS.read().unwrap_or_else(|p| p.into_inner()), tag),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self.0 {
            0 => "live",
            1 => "test",
            n => TAGS.read().unwrap_or_else(|p| p.into_inner())[usize::from(n - 2)],
        }
    }

    /// The tag as a header value (`X-Keygate-Env`), without allocating.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_static(self.as_str())
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Environment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let tag = std::borrow::Cow::<str>::deserialize(d)?;
        Self::parse(&tag).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "environment {tag:?}: 1 to 15 lowercase letters and digits, e.g. \"live\""
            ))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Revoked,
    Suspended,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within its budget (as opposed to refusing or failing).
    #[error("key store timed out: {0}")]
    TimedOut(String),
    #[error("keys file {path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("no key with id {0:?}")]
    NotFound(String),
    #[error("invalid key spec: {0}")]
    InvalidSpec(String),
    #[error(
        "owner {owner:?} already has {max} keys, the most [keys] max_per_owner allows; revoke one first"
    )]
    OwnerCap { owner: String, max: u32 },
    // The message says what is wrong (revoked, expired, not suspended): the stored status alone
    // would call an expired key "Active".
    #[error("key {id}: {message}")]
    Conflict {
        id: String,
        status: Status,
        message: &'static str,
    },
    #[error("a key with this id or hash already exists")]
    Duplicate,
    #[error("the key changed while it was being updated; try again")]
    Changed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A CIDR (`10.0.0.0/24`, `2001:db8::/32`) or a single address, as allowlists take them.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/24 or 2001:db8::/32"))
}
