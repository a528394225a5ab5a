//! Path normalization (`path::normalize`) and route matching (`routes`).
//!
//! Input: one byte of settings (`[paths] case_insensitive`, `parameters`), then up to three
//! lines: a request path, and two route patterns.
//!
//! - A normalized path is a fixed point, and in the normal form the module promises: starts
//!   with `/`, visible ASCII only, no empty, `.` or `..` segment, no raw `;` or `\`, escapes
//!   in uppercase hex for bytes that are neither unreserved nor separators nor controls, no
//!   double encoding, UTF-8 once decoded.
//! - A case-insensitive pattern that matches a path matches it in lower and upper case too,
//!   and matches whatever the same pattern matches case-sensitively, with the same captures.
//! - Captures are non-empty segments of the path. A pattern written without wildcards is a
//!   normal path and matches itself. `covers` is never wrong: what the covered pattern
//!   matches, the covering one matches. The route table's answer agrees with the patterns.

#![no_main]

use std::borrow::Cow;

use http::Method;
use keygate::keys::Environment;
use keygate::path::{self, Parameters, PathRules};
use keygate::routes::{Found, PathPattern, Route, RouteTable, Unmatched};
use libfuzzer_sys::fuzz_target;

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normal form, checked from its definition (module doc of `path`).
fn check_normal(normal: &str, rules: &PathRules) {
    let b = normal.as_bytes();
    assert_eq!(b.first(), Some(&b'/'), "{normal:?}");
    assert!(b.iter().all(|c| (b'!'..=b'~').contains(c)), "{normal:?}");
    assert!(!b.contains(&b'\\') && !b.contains(&b';'), "{normal:?}");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        assert!(!matches!(*seg, "." | ".."), "{normal:?}");
        assert!(!seg.is_empty() || last, "empty segment in {normal:?}");
    }
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(hi), Some(lo)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                panic!("not an uppercase escape at {i}: {normal:?}");
            };
            let byte = hi << 4 | lo;
            assert!(
                !is_unreserved(byte),
                "{normal:?} keeps an unreserved escape"
            );
            assert!(
                !matches!(byte, b'/' | b'\\' | 0..=0x1f | 0x7f),
                "{normal:?}"
            );
            assert!(
                byte != b';' || rules.parameters == Parameters::Strip,
                "{normal:?}"
            );
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(b[i]);
            i += 1;
        }
    }
    assert!(
        !normal.as_bytes().windows(5).any(|w| w[0] == b'%'
            && w[1..3] == *b"25"
            && w[3].is_ascii_hexdigit()
            && w[4].is_ascii_hexdigit()),
        "double encoding in {normal:?}"
    );
    assert!(std::str::from_utf8(&decoded).is_ok(), "{normal:?}");
}

fn route(path: PathPattern, methods: Vec<Method>) -> Route {
    Route {
        path,
        methods,
        scopes: vec![],
        scopes_all: vec![],
        environments: vec![Environment::LIVE],
        limits: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        parameters: match settings & 2 {
            0 => Parameters::Reject,
            _ => Parameters::Strip,
        },
        case_insensitive: settings & 1 != 0,
    };
    let mut parts = rest.splitn(3, |&b| b == b'\n').map(String::from_utf8_lossy);
    let raw_path = parts.next().unwrap_or_default();
    let patterns: Vec<Cow<str>> = parts.collect();

    let normal = match path::normalize(&raw_path, &rules) {
        Ok(normal) => {
            check_normal(&normal, &rules);
            let again = path::normalize(&normal, &rules);
            assert_eq!(again.as_deref(), Ok(&*normal), "not a fixed point");
            assert!(
                matches!(again, Ok(Cow::Borrowed(_))) || normal.contains('%'),
                "a normal path without escapes cost an allocation"
            );
            Some(normal.into_owned())
        }
        Err(_) => None,
    };

    let mut parsed = Vec::new();
    for raw in &patterns {
        let (Ok(folding), Ok(exact)) = (
            PathPattern::parse(raw, true),
            PathPattern::parse(raw, false),
        ) else {
            continue;
        };
        // Written without wildcards, a pattern is a normal path and names itself.
        if !raw.contains(['*', '{']) {
            assert_eq!(
                path::normalize(raw, &PathRules::default()).as_deref(),
                Ok(&**raw),
                "a literal pattern that no normalized path equals"
            );
            assert!(exact.matches(raw).is_some(), "{raw:?} misses itself");
        }
        if let Some(normal) = &normal {
            let folded = folding.matches(normal);
            if let Some(captures) = exact.matches(normal) {
                assert_eq!(folded.as_ref(), Some(&captures), "{raw:?} vs {normal:?}");
            }
            if let Some(captures) = &folded {
                for (_, value) in captures {
                    assert!(!value.is_empty() && !value.contains('/'), "{captures:?}");
                }
                for other in [normal.to_ascii_lowercase(), normal.to_ascii_uppercase()] {
                    assert!(
                        folding.matches(&other).is_some(),
                        "case-insensitive {raw:?} matches {normal:?} but not {other:?}"
                    );
                }
            }
        }
        parsed.push(if rules.case_insensitive {
            folding
        } else {
            exact
        });
    }

    let Some(normal) = normal else {
        return;
    };
    if let [first, second] = &parsed[..] {
        for (a, b) in [(first, second), (second, first)] {
            if a.covers(b) && b.matches(&normal).is_some() {
                assert!(
                    a.matches(&normal).is_some(),
                    "{a} covers {b}, which matches {normal:?}, but it does not"
                );
            }
        }
        let routes = vec![
            route(first.clone(), vec![Method::GET]),
            route(second.clone(), vec![]),
        ];
        if let Ok(table) = RouteTable::new(routes, Unmatched::Deny) {
            let by_pattern = |i: usize| table.routes[i].path.matches(&normal).is_some();
            for method in [Method::GET, Method::HEAD, Method::POST] {
                match table.find(&method, &normal) {
                    Found::Rule(rule, captures) => {
                        assert_eq!(rule.path.matches(&normal), Some(captures));
                        let first_takes = by_pattern(0) && method != Method::POST;
                        assert_eq!(std::ptr::eq(rule, &table.routes[0]), first_takes);
                        assert!(first_takes || by_pattern(1));
                    }
                    // The first rule is for GET (and HEAD) only; the second takes every method.
                    Found::OtherMethods => {
                        assert!(method == Method::POST && by_pattern(0) && !by_pattern(1))
                    }
                    Found::Unmatched => assert!(!by_pattern(0) && !by_pattern(1)),
                }
            }
        }
    }
});
