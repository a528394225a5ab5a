//! A client's request head, parsed by keygate's HTTP/1.1 parser, its path normalized, and the
//! upstream's head written from it: the path a request takes before a byte goes upstream.
//!
//! Input: two bytes of settings (see `Settings::from`), then the client's bytes.
//!
//! For every head that parses completely and whose path normalizes, the upstream's head must
//! be exactly one complete HTTP/1.1 request to httparse and to keygate's own parser, with the
//! client's framing and no other (at most one of `Content-Length` / `Transfer-Encoding`), the
//! normalized path plus the query as its target, one `Host`, one `X-Forwarded-For`, no value
//! carrying a key, no configured credential header, no hop-by-hop header, no `x-keygate-*`
//! header but keygate's own, no `_` spelling of a header keygate controls, and no CR or LF
//! except as line ends.

#![no_main]

use std::time::SystemTime;

use keygate::credential::{self, CredentialHeader};
use keygate::forward::upstream_head::{RequestContext, write_request_head};
use keygate::head::Head;
use keygate::header_rules::{self, Name};
use keygate::keys::cached_key::CachedKey;
use keygate::keys::{Environment, KeyRecord, KeyType, Status};
use keygate::path::{self, Parameters, PathRules};
use keygate::wire::{Framing, ParsedRequest, RequestHead};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "kg";
const MAX_HEAD: usize = 64 * 1024;
/// Header lines httparse may find in the written head: the client's (at most
/// `MAX_HEADER_LINES`) plus the few keygate adds.
const MAX_LINES: usize = 256;

/// What the server would take from its config and the connection, chosen by the input.
struct Settings {
    peer_trusted: bool,
    preserve_host: bool,
    tls: bool,
    rules: PathRules,
    credential_headers: &'static [CredentialHeader],
    base_path: &'static str,
    key: Option<KeyRecord>,
}

impl Settings {
    fn from(a: u8, b: u8) -> Self {
        use CredentialHeader::*;
        let credential_headers: &'static [CredentialHeader] = match (a >> 4) & 3 {
            0 => &[Authorization, XApiKey, ProjectAccessToken],
            1 => &[XApiKey],
            2 => &[Authorization],
            _ => &[XApiKey, ProjectAccessToken],
        };
        let env = match b & 4 {
            0 => Environment::LIVE,
            _ => Environment::TEST,
        };
        let key = match b & 3 {
            0 => None,
            1 => Some(record(
                "key_01",
                "acme",
                &["content:read", "admin:*"],
                None,
                env,
            )),
            // A hand-edited store: values that could break a head if written as they are.
            2 => Some(record(
                "key_x\r\nX-Injected: 1",
                "own\u{e9}r",
                &["a", "b\nc"],
                Some("ws\nX-Also: 1"),
                env,
            )),
            _ => Some(record("key_02", "", &[], Some("ws_1"), env)),
        };
        Self {
            peer_trusted: a & 1 != 0,
            preserve_host: a & 2 != 0,
            tls: a & 4 != 0,
            rules: PathRules {
                parameters: match a & 8 {
                    0 => Parameters::Reject,
                    _ => Parameters::Strip,
                },
                case_insensitive: false,
            },
            credential_headers,
            base_path: if a & 0x80 != 0 { "/base" } else { "" },
            key,
        }
    }
}

fn record(
    id: &str,
    owner: &str,
    scopes: &[&str],
    workspace: Option<&str>,
    env: Environment,
) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        name: "fuzz".into(),
        owner: owner.into(),
        key_type: KeyType::Secret,
        env,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        allowed_cidrs: vec![],
        expires_at: None,
        plan: None,
        limits: Default::default(),
        workspace: workspace.map(str::to_owned),
        project: Some("proj_1".into()),
        headers: Vec::new(),
        allowed_origins: Vec::new(),
        status: Status::Active,
        hint: None,
        created_at: SystemTime::UNIX_EPOCH,
        last_used_at: None,
        created_by: None,
        revoked_at: None,
        revoked_by: None,
        rotated_from: None,
        rotated_to: None,
    }
}

/// The names keygate itself writes, as it writes them (lowercase).
const OWN_NAMES: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "connection",
    "upgrade",
    "x-keygate-key-id",
    "x-keygate-owner",
    "x-keygate-scopes",
    "x-keygate-env",
    "x-keygate-workspace",
    "x-keygate-project",
];

/// Whether `name`, with `_` read as `-` (as CGI-style servers do), is a header keygate
/// controls: one only keygate or a trusted proxy sets, one that carries a key, framing, or a
/// hop-by-hop header. Decided here from the names alone, not with the library's own helper.
fn controlled_when_dashed(name: &[u8]) -> bool {
    let dashed: Vec<u8> = name
        .iter()
        .map(|&b| {
            if b == b'_' {
                b'-'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect();
    dashed.starts_with(b"x-keygate-")
        || !matches!(
            header_rules::name(&dashed),
            Name::Other | Name::Host | Name::Expect | Name::Date | Name::RateLimit(_)
        )
}

fuzz_target!(|data: &[u8]| {
    let [a, b, raw @ ..] = data else {
        return;
    };
    let settings = Settings::from(*a, *b);
    let mut head = RequestHead::default();
    if head.parse(raw, MAX_HEAD) != Ok(true) {
        return;
    }
    let req = ParsedRequest::new(&head, raw);
    let Ok(normal) = path::normalize(req.path(), &settings.rules) else {
        return;
    };
    assert_eq!(
        path::normalize(&normal, &settings.rules).as_deref(),
        Ok(&*normal),
        "the normalized path is not a fixed point"
    );

    let key = settings.key.as_ref().map(CachedKey::from);
    let upgrade = req.upgrade().is_some();
    let cx = RequestContext {
        base_path: settings.base_path,
        path: &normal,
        upstream_host: b"upstream.internal:3000",
        preserve_host: settings.preserve_host,
        credential_headers: settings.credential_headers,
        key_prefix: PREFIX,
        key: key.as_ref(),
        peer: b"10.1.2.3",
        peer_trusted: settings.peer_trusted,
        tls: settings.tls,
        framing: head.framing,
        upgrade,
    };
    let mut out = Vec::new();
    write_request_head(&mut out, &req, &cx);
    let shown = String::from_utf8_lossy(&out);

    // CR and LF only as line ends: nothing the client sent can start a line of its own.
    for (i, &byte) in out.iter().enumerate() {
        match byte {
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}: {shown:?}"),
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}: {shown:?}"),
            _ => {}
        }
    }

    // Exactly one complete request, nothing after it.
    let mut lines = [httparse::EMPTY_HEADER; MAX_LINES];
    let mut up = httparse::Request::new(&mut lines);
    match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len(), "bytes after the head: {shown:?}")
        }
        other => panic!("the upstream head does not parse ({other:?}): {shown:?}"),
    }
    assert_eq!(up.method, Some(req.method().as_str()), "{shown:?}");
    assert_eq!(up.version, Some(1), "{shown:?}");
    let mut target = format!("{}{}", settings.base_path, normal);
    if let Some(query) = req.query() {
        target.push('?');
        target.push_str(query);
    }
    assert_eq!(up.path, Some(target.as_str()), "{shown:?}");

    let (mut hosts, mut chains, mut protos, mut forwarded_hosts) = (0, 0, 0, 0);
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut identity: Vec<(&str, &[u8])> = Vec::new();
    for h in up.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        let own = OWN_NAMES.contains(&h.name);
        assert!(
            !name.iter().chain(value).any(|&c| c == b'\r' || c == b'\n'),
            "{shown:?}"
        );
        assert!(
            !credential::carries_key(value, PREFIX),
            "{}: a value carrying a key went upstream: {shown:?}",
            h.name
        );
        assert!(
            own || !req.connection_names(name),
            "{} is named by Connection, so hop-by-hop: {shown:?}",
            h.name
        );
        match header_rules::name(name) {
            Name::Credential(which) if settings.credential_headers.contains(&which) => {
                assert!(
                    which == CredentialHeader::Authorization
                        && credential::bearer_token(value).is_none(),
                    "credential header {} went upstream: {shown:?}",
                    h.name
                );
            }
            Name::Host => hosts += 1,
            Name::ContentLength => lengths.push(value),
            Name::TransferEncoding => codings.push(value),
            Name::Expect => assert!(
                !value.eq_ignore_ascii_case(b"100-continue"),
                "keygate answers 100-continue itself: {shown:?}"
            ),
            Name::HopByHop => panic!("hop-by-hop {} went upstream: {shown:?}", h.name),
            Name::Connection => {
                assert!(upgrade && value == b"upgrade" && own, "{shown:?}")
            }
            Name::Upgrade => assert!(upgrade && own, "{shown:?}"),
            Name::Identity => {
                assert!(key.is_some() && own, "{} went upstream: {shown:?}", h.name);
                assert!(
                    identity.iter().all(|(n, _)| *n != h.name),
                    "{} twice: {shown:?}",
                    h.name
                );
                identity.push((h.name, value));
            }
            Name::ForwardedFor => chains += 1,
            Name::ForwardedProto => {
                protos += 1;
                if !settings.peer_trusted {
                    let want: &[u8] = if settings.tls { b"https" } else { b"http" };
                    assert!(own && value == want, "{shown:?}");
                }
            }
            Name::ForwardedHost => {
                forwarded_hosts += 1;
                assert!(settings.peer_trusted || own, "{shown:?}");
            }
            Name::ClientAddress => assert!(settings.peer_trusted, "{shown:?}"),
            _ => {}
        }
        assert!(
            !(name.contains(&b'_') && controlled_when_dashed(name)),
            "{} spells a controlled header with '_': {shown:?}",
            h.name
        );
    }
    assert_eq!(hosts, 1, "{shown:?}");
    assert_eq!(chains, 1, "{shown:?}");
    if !settings.peer_trusted {
        assert_eq!(protos, 1, "{shown:?}");
        assert!(forwarded_hosts <= 1, "{shown:?}");
    }
    if let Some(record) = &settings.key {
        let env = record.env.as_str().as_bytes();
        assert!(identity.contains(&("x-keygate-env", env)), "{shown:?}");
    }

    // One framing, the client's.
    let length = |n: u64| n.to_string().into_bytes();
    match head.framing {
        Framing::Length(n) => {
            assert!(
                lengths == [&length(n)[..]] && codings.is_empty(),
                "{shown:?}"
            )
        }
        Framing::Chunked => {
            assert!(
                lengths.is_empty() && codings == [&b"chunked"[..]],
                "{shown:?}"
            )
        }
        Framing::Empty | Framing::Close => {
            assert!(lengths.is_empty() && codings.is_empty(), "{shown:?}")
        }
    }

    // keygate's own parser reads the same request back (while the head has as many lines as
    // it accepts from a client).
    if up.headers.len() <= keygate::wire::MAX_HEADER_LINES {
        let mut again = RequestHead::default();
        assert_eq!(again.parse(&out, usize::MAX), Ok(true), "{shown:?}");
        assert_eq!(again.len, out.len());
        assert_eq!(again.framing, head.framing, "{shown:?}");
        let back = ParsedRequest::new(&again, &out);
        assert_eq!(back.method(), req.method());
        assert_eq!(
            back.path(),
            format!("{}{}", settings.base_path, normal),
            "{shown:?}"
        );
        assert_eq!(back.query(), req.query(), "{shown:?}");
    }
});
