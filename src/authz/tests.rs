//! `authorize()` as a table of cases, and two properties over random route tables.

use super::*;
use crate::credential::CredentialHeader;
use crate::keys::KeyRecord;
use crate::routes::{PathPattern, Route};
use std::time::Duration;

fn record() -> KeyRecord {
    KeyRecord::for_tests()
}

fn route(
    path: &str,
    methods: &[Method],
    any: &[&str],
    all: &[&str],
    envs: &[Environment],
) -> Route {
    Route {
        limits: None,
        path: PathPattern::parse(path, false).unwrap(),
        methods: methods.to_vec(),
        scopes: any.iter().map(|s| s.to_string()).collect(),
        scopes_all: all.iter().map(|s| s.to_string()).collect(),
        environments: envs.to_vec(),
    }
}

const BOTH: &[Environment] = &[Environment::LIVE, Environment::TEST];

/// The route table every case runs against.
fn table(unmatched: Unmatched) -> RouteTable {
    RouteTable::new(
        vec![
            route(
                "/content/**",
                &[Method::GET, Method::HEAD],
                &["content:read", "content:write"],
                &[],
                BOTH,
            ),
            route("/content/**", &[], &["content:write"], &[], BOTH),
            route(
                "/analytics/**",
                &[],
                &[],
                &["analytics:read", "analytics:export"],
                BOTH,
            ),
            route("/members", &[Method::GET], &["read:members"], &[], BOTH),
            route(
                "/data/**",
                &[Method::POST, Method::PUT],
                &["write:data"],
                &[],
                BOTH,
            ),
            route(
                "/billing/**",
                &[],
                &["billing:read"],
                &[],
                &[Environment::LIVE],
            ),
            route("/api/v2/w/{workspace}/p/{project}/**", &[], &[], &[], BOTH),
            route("/api/v2/w/{workspace}/**", &[], &[], &[], BOTH),
            route("/api/v2/items/{id}", &[], &[], &[], BOTH),
            route("/open/**", &[], &[], &[], BOTH),
        ],
        unmatched,
    )
    .unwrap()
}

type Edit = fn(&mut KeyRecord);

struct Case {
    name: &'static str,
    edit: Edit,
    claims: Option<KeyClaims>,
    method: Method,
    path: &'static str,
    ip: &'static str,
    unmatched: Unmatched,
    sandbox: bool,
    want: Result<(), Reject>,
}

fn case(
    name: &'static str,
    edit: Edit,
    method: Method,
    path: &'static str,
    want: Result<(), Reject>,
) -> Case {
    Case {
        name,
        edit,
        claims: None,
        method,
        path,
        ip: "1.2.3.4",
        unmatched: Unmatched::Deny,
        sandbox: true,
        want,
    }
}

fn scopes(r: &mut KeyRecord, s: &[&str]) {
    r.scopes = s.iter().map(|x| x.to_string()).collect();
}

fn deny(d: Denial) -> Result<(), Reject> {
    Err(Reject::InsufficientPermissions(d))
}

fn missing(s: &[&str]) -> Result<(), Reject> {
    deny(Denial::MissingScope(
        s.iter().map(|x| x.to_string()).collect(),
    ))
}

const NOW_SECS: u64 = 1_000_000;

#[test]
fn table_of_rules() {
    use Method as M;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let noop: Edit = |_| {};
    let cases = vec![
        // Status, expiry, claims.
        case("active wildcard key", noop, M::GET, "/content/a", Ok(())),
        case(
            "revoked",
            |r| r.status = Status::Revoked,
            M::GET,
            "/content/a",
            Err(Reject::InvalidApiKey),
        ),
        case(
            "suspended",
            |r| r.status = Status::Suspended,
            M::GET,
            "/content/a",
            Err(Reject::KeySuspended),
        ),
        case(
            "expires in future",
            |r| r.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS + 1)),
            M::GET,
            "/content/a",
            Ok(()),
        ),
        case(
            "expires exactly now",
            |r| r.expires_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS)),
            M::GET,
            "/content/a",
            Err(Reject::ExpiredApiKey),
        ),
        case(
            "expired",
            |r| r.expires_at = Some(SystemTime::UNIX_EPOCH),
            M::GET,
            "/content/a",
            Err(Reject::ExpiredApiKey),
        ),
        case(
            "revoked beats expired",
            |r| {
                r.status = Status::Revoked;
                r.expires_at = Some(SystemTime::UNIX_EPOCH)
            },
            M::GET,
            "/content/a",
            Err(Reject::InvalidApiKey),
        ),
        case(
            "suspended beats missing scope",
            |r| {
                r.status = Status::Suspended;
                scopes(r, &[])
            },
            M::GET,
            "/content/a",
            Err(Reject::KeySuspended),
        ),
        Case {
            claims: Some(KeyClaims {
                key_type: KeyType::Public,
                env: Environment::LIVE,
            }),
            ..case(
                "type mismatch",
                noop,
                M::GET,
                "/content/a",
                Err(Reject::InvalidApiKey),
            )
        },
        Case {
            claims: Some(KeyClaims {
                key_type: KeyType::Secret,
                env: Environment::TEST,
            }),
            ..case(
                "env mismatch",
                noop,
                M::GET,
                "/content/a",
                Err(Reject::InvalidApiKey),
            )
        },
        // IP allowlists.
        Case {
            ip: "10.0.0.7",
            ..case(
                "ip in v4 allowlist",
                |r| r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()],
                M::GET,
                "/open",
                Ok(()),
            )
        },
        Case {
            ip: "10.0.1.7",
            ..case(
                "ip outside v4 allowlist",
                |r| r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()],
                M::GET,
                "/open",
                Err(Reject::IpNotAllowed(ip("10.0.1.7"))),
            )
        },
        Case {
            ip: "::ffff:10.0.0.7",
            ..case(
                "v4-mapped client in v4 list",
                |r| r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()],
                M::GET,
                "/open",
                Ok(()),
            )
        },
        Case {
            ip: "::ffff:10.9.0.7",
            ..case(
                "v4-mapped reported as v4",
                |r| r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()],
                M::GET,
                "/open",
                Err(Reject::IpNotAllowed(ip("10.9.0.7"))),
            )
        },
        Case {
            ip: "2001:db8::1",
            ..case(
                "ip in v6 allowlist",
                |r| r.allowed_cidrs = vec!["2001:db8::/32".parse().unwrap()],
                M::GET,
                "/open",
                Ok(()),
            )
        },
        Case {
            ip: "2001:db9::1",
            ..case(
                "v6 outside",
                |r| r.allowed_cidrs = vec!["2001:db8::/32".parse().unwrap()],
                M::GET,
                "/open",
                Err(Reject::IpNotAllowed(ip("2001:db9::1"))),
            )
        },
        Case {
            ip: "192.168.1.5",
            ..case(
                "second of two nets",
                |r| {
                    r.allowed_cidrs = vec![
                        "10.0.0.0/24".parse().unwrap(),
                        "192.168.1.5/32".parse().unwrap(),
                    ]
                },
                M::GET,
                "/open",
                Ok(()),
            )
        },
        Case {
            ip: "8.8.8.8",
            ..case(
                "expired beats ip",
                |r| {
                    r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()];
                    r.expires_at = Some(SystemTime::UNIX_EPOCH)
                },
                M::GET,
                "/open",
                Err(Reject::ExpiredApiKey),
            )
        },
        Case {
            ip: "8.8.8.8",
            ..case(
                "ip beats missing scope",
                |r| {
                    r.allowed_cidrs = vec!["10.0.0.0/24".parse().unwrap()];
                    scopes(r, &[])
                },
                M::GET,
                "/content/a",
                Err(Reject::IpNotAllowed(ip("8.8.8.8"))),
            )
        },
        // Scopes: any-of, all-of, wildcards.
        case(
            "exact read scope",
            |r| scopes(r, &["content:read"]),
            M::GET,
            "/content/a",
            Ok(()),
        ),
        case(
            "other any-of scope",
            |r| scopes(r, &["content:write"]),
            M::GET,
            "/content/a",
            Ok(()),
        ),
        case(
            "resource wildcard",
            |r| scopes(r, &["content:*"]),
            M::DELETE,
            "/content/a",
            Ok(()),
        ),
        case(
            "read scope cannot write",
            |r| scopes(r, &["content:read"]),
            M::POST,
            "/content/a",
            missing(&["content:write"]),
        ),
        case(
            "write scope can write",
            |r| scopes(r, &["content:write"]),
            M::POST,
            "/content/a",
            Ok(()),
        ),
        case(
            "unrelated scope",
            |r| scopes(r, &["analytics:read"]),
            M::GET,
            "/content/a",
            missing(&["content:read", "content:write"]),
        ),
        case(
            "no scopes at all",
            |r| scopes(r, &[]),
            M::GET,
            "/content/a",
            missing(&["content:read", "content:write"]),
        ),
        case(
            "all-of satisfied",
            |r| scopes(r, &["analytics:read", "analytics:export"]),
            M::GET,
            "/analytics/x",
            Ok(()),
        ),
        case(
            "all-of names the missing one",
            |r| scopes(r, &["analytics:read"]),
            M::GET,
            "/analytics/x",
            missing(&["analytics:export"]),
        ),
        case(
            "all-of by wildcard",
            |r| scopes(r, &["analytics:*"]),
            M::GET,
            "/analytics/x",
            Ok(()),
        ),
        case(
            "gravity rail read:members",
            |r| scopes(r, &["read:members"]),
            M::GET,
            "/members",
            Ok(()),
        ),
        case(
            "method outside the path's rules is refused, never unmatched",
            |r| scopes(r, &["read:members"]),
            M::POST,
            "/members",
            Err(Reject::MethodNotAllowed(vec![M::GET, M::HEAD])),
        ),
        case(
            "write:data on POST",
            |r| scopes(r, &["write:data"]),
            M::POST,
            "/data/rows",
            Ok(()),
        ),
        case(
            "write:data rule not for GET",
            |r| scopes(r, &["write:data"]),
            M::GET,
            "/data/rows",
            Err(Reject::MethodNotAllowed(vec![M::POST, M::PUT])),
        ),
        case(
            "prefix boundary",
            noop,
            M::GET,
            "/contentx",
            deny(Denial::NoRoute),
        ),
        // Public keys.
        case(
            "public key reads",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["content:read"])
            },
            M::GET,
            "/content/a",
            Ok(()),
        ),
        case(
            "public key HEAD",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["content:read"])
            },
            M::HEAD,
            "/content/a",
            Ok(()),
        ),
        case(
            "public key OPTIONS",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["*"])
            },
            M::OPTIONS,
            "/open",
            Ok(()),
        ),
        case(
            "public key + write scope + POST",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["content:write"])
            },
            M::POST,
            "/content/a",
            deny(Denial::PublicKeyReadOnly),
        ),
        case(
            "public key + * + DELETE",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["*"])
            },
            M::DELETE,
            "/open",
            deny(Denial::PublicKeyReadOnly),
        ),
        case(
            "public key + * + TRACE",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["*"])
            },
            M::TRACE,
            "/open",
            deny(Denial::PublicKeyReadOnly),
        ),
        case(
            "public key read still needs scope",
            |r| {
                r.key_type = KeyType::Public;
                scopes(r, &["analytics:read"])
            },
            M::GET,
            "/content/a",
            missing(&["content:read", "content:write"]),
        ),
        // Environments.
        case(
            "sandbox key with sandbox upstream",
            |r| r.env = Environment::TEST,
            M::GET,
            "/content/a",
            Ok(()),
        ),
        Case {
            sandbox: false,
            ..case(
                "sandbox key, no sandbox upstream",
                |r| r.env = Environment::TEST,
                M::GET,
                "/content/a",
                deny(Denial::SandboxRefused),
            )
        },
        Case {
            sandbox: false,
            ..case(
                "live key, no sandbox upstream",
                noop,
                M::GET,
                "/content/a",
                Ok(()),
            )
        },
        case(
            "live-only route, live key",
            noop,
            M::GET,
            "/billing/x",
            Ok(()),
        ),
        case(
            "live-only route, sandbox key",
            |r| r.env = Environment::TEST,
            M::GET,
            "/billing/x",
            deny(Denial::Environment(Environment::TEST)),
        ),
        // Workspace / project binding.
        case(
            "bound workspace matches",
            |r| r.workspace = Some("ws1".into()),
            M::GET,
            "/api/v2/w/ws1/things",
            Ok(()),
        ),
        case(
            "bound to another workspace",
            |r| r.workspace = Some("ws1".into()),
            M::GET,
            "/api/v2/w/ws2/things",
            deny(Denial::NotBound {
                param: "workspace",
                value: "ws2".into(),
            }),
        ),
        case(
            "unbound key on workspace route",
            noop,
            M::GET,
            "/api/v2/w/ws1/things",
            deny(Denial::NotBound {
                param: "workspace",
                value: "ws1".into(),
            }),
        ),
        case(
            "workspace and project both match",
            |r| {
                r.workspace = Some("ws1".into());
                r.project = Some("p1".into())
            },
            M::GET,
            "/api/v2/w/ws1/p/p1/x",
            Ok(()),
        ),
        case(
            "project mismatch",
            |r| {
                r.workspace = Some("ws1".into());
                r.project = Some("p1".into())
            },
            M::GET,
            "/api/v2/w/ws1/p/p2/x",
            deny(Denial::NotBound {
                param: "project",
                value: "p2".into(),
            }),
        ),
        case(
            "other params are free",
            noop,
            M::GET,
            "/api/v2/items/42",
            Ok(()),
        ),
        case(
            "bound key on unbound route",
            |r| r.workspace = Some("ws1".into()),
            M::GET,
            "/open/x",
            Ok(()),
        ),
        // Unmatched policy.
        case(
            "unmatched deny",
            noop,
            M::GET,
            "/elsewhere",
            deny(Denial::NoRoute),
        ),
        Case {
            unmatched: Unmatched::Allow,
            ..case(
                "unmatched allow",
                |r| scopes(r, &["x:y"]),
                M::GET,
                "/elsewhere",
                Ok(()),
            )
        },
        Case {
            unmatched: Unmatched::Scope("api:access".into()),
            ..case(
                "unmatched scope held",
                |r| scopes(r, &["api:access"]),
                M::GET,
                "/elsewhere",
                Ok(()),
            )
        },
        Case {
            unmatched: Unmatched::Scope("api:access".into()),
            ..case(
                "unmatched scope missing",
                |r| scopes(r, &["content:read"]),
                M::GET,
                "/elsewhere",
                missing(&["api:access"]),
            )
        },
        Case {
            unmatched: Unmatched::Scope("api:access".into()),
            ..case("unmatched scope by *", noop, M::GET, "/elsewhere", Ok(()))
        },
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for c in cases {
        let mut rec = record();
        (c.edit)(&mut rec);
        let claims = c.claims.unwrap_or(KeyClaims {
            key_type: rec.key_type,
            env: rec.env,
        });
        let routes = table(c.unmatched.clone());
        let facts = RequestFacts {
            method: &c.method,
            path: c.path,
            client_ip: ip(c.ip),
            now,
            via: HeaderSet::of(&[CredentialHeader::XApiKey]),
            narrowed: &[],
        };
        let policy = Policy {
            environments: &[Environment::LIVE, Environment::TEST],
            routes: &routes,
            sandbox_upstream: c.sandbox,
        };
        assert_eq!(
            authorize(&CachedKey::from(&rec), claims, &facts, &policy),
            c.want,
            "case {}",
            c.name
        );
    }
}

#[test]
fn header_binding_table() {
    use CredentialHeader::*;
    let set = HeaderSet::of;
    let refused = |allowed: &[CredentialHeader]| {
        Err(Reject::CredentialHeaderNotAllowed(HeaderSet::of(allowed)))
    };
    type Row<'a> = (
        &'a [CredentialHeader],
        &'a [CredentialHeader],
        Result<(), Reject>,
    );
    let cases: &[Row] = &[
        // An unbound key: any header.
        (&[], &[Authorization], Ok(())),
        (&[], &[XApiKey, ProjectAccessToken], Ok(())),
        // Railway's project token: Project-Access-Token only.
        (&[ProjectAccessToken], &[ProjectAccessToken], Ok(())),
        (
            &[ProjectAccessToken],
            &[Authorization],
            refused(&[ProjectAccessToken]),
        ),
        (
            &[ProjectAccessToken],
            &[XApiKey],
            refused(&[ProjectAccessToken]),
        ),
        // Beside the allowed header is still elsewhere.
        (
            &[ProjectAccessToken],
            &[ProjectAccessToken, Authorization],
            refused(&[ProjectAccessToken]),
        ),
        // Railway's account token: Bearer only.
        (&[Authorization], &[Authorization], Ok(())),
        (
            &[Authorization],
            &[ProjectAccessToken],
            refused(&[Authorization]),
        ),
        (&[Authorization, XApiKey], &[XApiKey], Ok(())),
        (&[Authorization, XApiKey], &[Authorization, XApiKey], Ok(())),
    ];
    for (allowed, via, want) in cases {
        assert_eq!(
            &arrival(set(allowed), set(via)),
            want,
            "allowed {allowed:?}, via {via:?}"
        );
    }
}

#[test]
fn a_dead_key_in_the_wrong_header_is_reported_dead() {
    let routes = table(Unmatched::Allow);
    let policy = Policy {
        environments: &[Environment::LIVE, Environment::TEST],
        routes: &routes,
        sandbox_upstream: true,
    };
    let facts = RequestFacts {
        method: &Method::GET,
        path: "/open/x",
        client_ip: "1.2.3.4".parse().unwrap(),
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS),
        via: HeaderSet::of(&[CredentialHeader::Authorization]),
        narrowed: &[],
    };
    let mut rec = record();
    rec.headers = vec![CredentialHeader::ProjectAccessToken];
    let claims = KeyClaims {
        key_type: rec.key_type,
        env: rec.env,
    };
    let check = |rec: &KeyRecord| authorize(&CachedKey::from(rec), claims, &facts, &policy);
    assert_eq!(
        check(&rec),
        Err(Reject::CredentialHeaderNotAllowed(HeaderSet::of(&[
            CredentialHeader::ProjectAccessToken
        ])))
    );
    rec.status = Status::Revoked;
    assert_eq!(check(&rec), Err(Reject::InvalidApiKey));
    rec.status = Status::Active;
    rec.expires_at = Some(SystemTime::UNIX_EPOCH);
    assert_eq!(check(&rec), Err(Reject::ExpiredApiKey));
}

#[test]
fn a_token_narrowed_to_some_scopes_holds_only_those() {
    let routes = table(Unmatched::Deny);
    let policy = Policy {
        environments: &[Environment::LIVE, Environment::TEST],
        routes: &routes,
        sandbox_upstream: true,
    };
    let mut rec = record();
    scopes(
        &mut rec,
        &["content:*", "analytics:read", "analytics:export"],
    );
    let key = CachedKey::from(&rec);
    let claims = KeyClaims {
        key_type: rec.key_type,
        env: rec.env,
    };
    let narrowed = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // (token scopes, method, path, want)
    type Row = (Vec<String>, Method, &'static str, Result<(), Reject>);
    let rows: Vec<Row> = vec![
        (narrowed(&[]), Method::POST, "/content/x", Ok(())),
        (
            narrowed(&["content:read"]),
            Method::GET,
            "/content/x",
            Ok(()),
        ),
        (
            narrowed(&["content:read"]),
            Method::POST,
            "/content/x",
            missing(&["content:write"]),
        ),
        (narrowed(&["content:*"]), Method::POST, "/content/x", Ok(())),
        (
            narrowed(&["analytics:read"]),
            Method::GET,
            "/analytics/q",
            missing(&["analytics:export"]),
        ),
        (
            narrowed(&["analytics:read", "analytics:export"]),
            Method::GET,
            "/analytics/q",
            Ok(()),
        ),
    ];
    for (scopes, method, path, want) in rows {
        let facts = RequestFacts {
            method: &method,
            path,
            client_ip: "1.2.3.4".parse().unwrap(),
            now: SystemTime::UNIX_EPOCH,
            via: HeaderSet::EMPTY,
            narrowed: &scopes,
        };
        assert_eq!(
            authorize(&key, claims, &facts, &policy),
            want,
            "{scopes:?} {method} {path}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const WORDS: &[&str] = &["content", "analytics", "billing", "data"];
    const ACTIONS: &[&str] = &["read", "write", "export"];

    fn scope() -> impl Strategy<Value = String> {
        (0..WORDS.len(), 0..ACTIONS.len()).prop_map(|(w, a)| format!("{}:{}", WORDS[w], ACTIONS[a]))
    }

    fn method() -> impl Strategy<Value = Method> {
        prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
        ])
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["content", "analytics", "x", "1"]),
            0..4,
        )
        .prop_map(|segs| format!("/{}", segs.join("/")))
    }

    fn pattern() -> impl Strategy<Value = String> {
        (path(), prop::sample::select(vec!["", "/**", "/*"])).prop_map(|(p, tail)| {
            if p == "/" && !tail.is_empty() {
                tail.to_string()
            } else {
                format!("{p}{tail}")
            }
        })
    }

    fn rule() -> impl Strategy<Value = Route> {
        (
            pattern(),
            prop::collection::vec(method(), 0..3),
            prop::collection::vec(scope(), 0..3),
            prop::collection::vec(scope(), 0..2),
        )
            .prop_map(|(p, methods, any, all)| Route {
                limits: None,
                path: PathPattern::parse(&p, false).unwrap(),
                methods,
                scopes: any,
                scopes_all: all,
                environments: BOTH.to_vec(),
            })
    }

    fn unmatched() -> impl Strategy<Value = Unmatched> {
        prop_oneof![
            Just(Unmatched::Allow),
            Just(Unmatched::Deny),
            scope().prop_map(Unmatched::Scope),
        ]
    }

    fn check(
        scopes: Vec<String>,
        rules: Vec<Route>,
        unmatched: Unmatched,
        m: &Method,
        p: &str,
    ) -> (Result<(), Reject>, bool) {
        // Built directly: shadowed rules are a config error, not a reason to skip cases.
        let routes = RouteTable {
            routes: rules,
            unmatched,
        };
        let scoped = match routes.find(m, p) {
            Found::Rule(r, _) => !r.scopes.is_empty() || !r.scopes_all.is_empty(),
            Found::OtherMethods => true,
            Found::Unmatched => matches!(routes.unmatched, Unmatched::Scope(_)),
        };
        let mut rec = record();
        rec.scopes = scopes;
        let facts = RequestFacts {
            method: m,
            path: p,
            client_ip: "1.2.3.4".parse().unwrap(),
            now: SystemTime::UNIX_EPOCH,
            via: HeaderSet::EMPTY,
            narrowed: &[],
        };
        let policy = Policy {
            environments: &[Environment::LIVE, Environment::TEST],
            routes: &routes,
            sandbox_upstream: true,
        };
        let claims = KeyClaims {
            key_type: rec.key_type,
            env: rec.env,
        };
        (
            authorize(&CachedKey::from(&rec), claims, &facts, &policy),
            scoped,
        )
    }

    proptest! {
        #[test]
        fn a_wildcard_key_is_never_denied_by_scopes(
            rules in prop::collection::vec(rule(), 0..6),
            unmatched in unmatched(),
            m in method(),
            p in path(),
        ) {
            let (result, _) = check(vec!["*".into()], rules, unmatched, &m, &p);
            prop_assert!(
                !matches!(result, Err(Reject::InsufficientPermissions(Denial::MissingScope(_)))),
                "{result:?}"
            );
        }

        #[test]
        fn a_key_without_scopes_never_reaches_a_scoped_route(
            rules in prop::collection::vec(rule(), 0..6),
            unmatched in unmatched(),
            m in method(),
            p in path(),
        ) {
            let (result, scoped) = check(Vec::new(), rules, unmatched, &m, &p);
            if scoped {
                prop_assert!(result.is_err(), "admitted to a scoped route");
            }
        }

        #[test]
        fn a_rule_that_lists_methods_never_fails_open(
            rules in prop::collection::vec(rule(), 1..6),
            m in method(),
            p in path(),
        ) {
            // Whatever `unmatched` allows, a path some rule is written for is decided by the
            // rules: a method none of them lists is refused.
            let path_ruled = rules.iter().any(|r| r.path.matches(&p).is_some());
            let method_ruled = rules.iter().any(|r| {
                r.path.matches(&p).is_some()
                    && (r.methods.is_empty()
                        || r.methods.contains(&m)
                        || (m == Method::HEAD && r.methods.contains(&Method::GET)))
            });
            let (result, _) = check(vec!["*".into()], rules, Unmatched::Allow, &m, &p);
            if path_ruled && !method_ruled {
                prop_assert!(
                    matches!(result, Err(Reject::MethodNotAllowed(_))),
                    "{result:?}"
                );
            }
        }
    }
}
