//! Route rules: which scopes, methods and environments a path needs, and the path patterns
//! they (and `[auth] public_paths`) are written in.
//!
//! Patterns are matched segment by segment against a normalized path:
//! `/content/**` (the prefix and everything below it), `/v1/*/items` (`*` is one segment),
//! `/files/*.json` (a glob inside a segment), `/api/v2/w/{workspace}/**` (a named parameter,
//! captured). The first rule whose pattern and method match decides; a path no rule matches
//! gets the explicit `[auth] unmatched` policy.

use std::fmt;

use http::Method;

use crate::keys::Environment;

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: any one segment, captured under `name`.
    Param(String),
    /// `*`: any one segment.
    Any,
    /// A segment with `*` inside it, e.g. `*.json` or `v*`.
    Glob(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
    /// Ends in `/**`: also matches any number (zero included) of further segments.
    rest: bool,
}

/// Values captured by `{name}` segments, in pattern order.
pub type Captures<'a, 'p> = Vec<(&'a str, &'p str)>;

impl PathPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let body = raw
            .strip_prefix('/')
            .ok_or_else(|| format!("{raw:?} must start with '/'"))?;
        let (body, rest) = if body == "**" {
            ("", true)
        } else if let Some(b) = body.strip_suffix("/**") {
            (b, true)
        } else {
            (body, false)
        };
        let mut segments = Vec::new();
        if !(rest && body.is_empty()) {
            for seg in body.split('/') {
                segments.push(parse_segment(raw, seg)?);
            }
        }
        let mut names: Vec<&str> = segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(format!("{raw:?} names the same parameter twice"));
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
            rest,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Matches a normalized path (see [`normalize`]); on success, the captured parameters.
    pub fn matches<'a, 'p>(&'a self, path: &'p str) -> Option<Captures<'a, 'p>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut captures = Vec::new();
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Param(name) if !part.is_empty() => captures.push((name.as_str(), part)),
                Segment::Any if !part.is_empty() => {}
                Segment::Glob(g) if glob(g.as_bytes(), part.as_bytes()) => {}
                _ => return None,
            }
        }
        if self.rest || parts.next().is_none() {
            Some(captures)
        } else {
            None
        }
    }

    /// Whether every path this pattern matches is also matched by `self` (conservative: a
    /// `false` may be a missed cover, never a wrong one). Used to find rules that can never
    /// match because an earlier rule takes all their paths.
    pub fn covers(&self, other: &PathPattern) -> bool {
        if other.rest && !self.rest {
            return false;
        }
        if self.segments.len() > other.segments.len()
            || (!self.rest && self.segments.len() != other.segments.len())
        {
            return false;
        }
        self.segments
            .iter()
            .zip(&other.segments)
            .all(|(mine, theirs)| match (mine, theirs) {
                (Segment::Any | Segment::Param(_), _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Glob(g), Segment::Literal(b)) => glob(g.as_bytes(), b.as_bytes()),
                (Segment::Glob(a), Segment::Glob(b)) => a == b,
                _ => false,
            })
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl serde::Serialize for PathPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

fn parse_segment(raw: &str, seg: &str) -> Result<Segment, String> {
    if seg == "*" {
        return Ok(Segment::Any);
    }
    if seg.contains("**") {
        return Err(format!("{raw:?}: '**' is only allowed as the last segment"));
    }
    if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        return if ok {
            Ok(Segment::Param(name.to_owned()))
        } else {
            Err(format!(
                "{raw:?}: parameter {{{name}}} must be letters, digits or '_'"
            ))
        };
    }
    if seg.contains(['{', '}']) {
        return Err(format!(
            "{raw:?}: a parameter must be a whole segment, like {{id}}"
        ));
    }
    if seg.contains('*') {
        return Ok(Segment::Glob(seg.to_owned()));
    }
    Ok(Segment::Literal(seg.to_owned()))
}

/// `*` matches any run of bytes (within one segment: the caller never passes a '/').
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tr)| t == c && glob(rest, tr)),
    }
}

/// Why a path cannot be matched safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsafePath;

/// The path rules are matched against. Percent-encoded `.` `/` `\` are refused outright: the
/// upstream may decode them into a different path than the one authorized. Empty and `.`
/// segments are dropped and `..` resolved, so `/public/../admin` is authorized as `/admin`.
/// Returns `None` when the path is already normal (the common case: no allocation).
pub fn normalize(path: &str) -> Result<Option<String>, UnsafePath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(UnsafePath);
    }
    // One pass over the bytes: this runs on every request, and almost every path is normal.
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(UnsafePath),
            b'%' => {
                let code = bytes.get(i + 1..i + 3).unwrap_or_default();
                if [b"2e", b"2f", b"5c"]
                    .iter()
                    .any(|c| code.eq_ignore_ascii_case(*c))
                {
                    return Err(UnsafePath);
                }
            }
            b'/' => {
                let rest = &bytes[i + 1..];
                let segment = &rest[..rest.iter().position(|&c| c == b'/').unwrap_or(rest.len())];
                // `//`, `/./`, `/../`, or a path ending in `/.` or `/..`.
                needs_work |=
                    (segment.is_empty() && !rest.is_empty()) || segment == b"." || segment == b"..";
            }
            _ => {}
        }
    }
    if !needs_work {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for seg in &segments {
        match *seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = matches!(segments[last], "" | "." | "..");
    let mut normal = String::with_capacity(path.len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Ok(Some(normal))
}

/// A scope a key holds: `content:read`, `content:*` (everything under `content:`) or `*`.
pub fn grants(held: &str, required: &str) -> bool {
    held == "*"
        || held == required
        || held
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with(':') && required.starts_with(prefix))
}

/// Scope syntax: segments of letters, digits, `_`, `-`, `.` joined by `:`, e.g.
/// `content:read`; a held scope may also be `*` or end in `:*`.
pub fn check_scope(scope: &str, held: bool) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    };
    let body = match scope.strip_suffix(":*") {
        Some(prefix) if held => prefix,
        _ if held && scope == "*" => return Ok(()),
        _ => scope,
    };
    if scope.len() <= 100 && body.split(':').all(segment_ok) {
        Ok(())
    } else if held {
        Err(format!(
            "scope {scope:?}: use names like content:read, content:* or * (letters, digits, _-. joined by ':')"
        ))
    } else {
        Err(format!(
            "scope {scope:?}: a route requires concrete scopes like content:read (letters, digits, _-. joined by ':'; no '*')"
        ))
    }
}

/// One `[[route]]` rule, validated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Route {
    pub path: PathPattern,
    /// Empty: every method.
    #[serde(serialize_with = "methods")]
    pub methods: Vec<Method>,
    /// The key needs at least one of these (when not empty)…
    pub scopes: Vec<String>,
    /// …and all of these.
    pub scopes_all: Vec<String>,
    /// Which key environments may use the route.
    pub environments: Vec<Environment>,
}

fn methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

impl Route {
    fn matches_method(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }

    /// Every method this rule matches is also matched by `other`.
    fn methods_within(&self, other: &Route) -> bool {
        other.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| other.methods.contains(m)))
    }
}

/// What a path no rule matches gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    Deny,
    /// Any valid key may use it.
    Allow,
    /// A key holding this scope may use it.
    Scope(String),
}

impl Unmatched {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Self::Deny),
            "allow" => Ok(Self::Allow),
            _ => match s.strip_prefix("scope:") {
                Some(scope) => check_scope(scope, false).map(|()| Self::Scope(scope.to_owned())),
                None => Err(format!(
                    "{s:?}: use \"deny\", \"allow\" (any valid key) or \"scope:NAME\""
                )),
            },
        }
    }
}

impl serde::Serialize for Unmatched {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Deny => s.serialize_str("deny"),
            Self::Allow => s.serialize_str("allow"),
            Self::Scope(scope) => s.collect_str(&format_args!("scope:{scope}")),
        }
    }
}

/// The ordered rules plus the policy for everything else.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteTable {
    pub routes: Vec<Route>,
    pub unmatched: Unmatched,
}

impl RouteTable {
    /// Builds the table, refusing rules that can never match (an earlier rule already takes
    /// all their requests). Errors name the rule by position and path.
    pub fn new(routes: Vec<Route>, unmatched: Unmatched) -> Result<Self, String> {
        for (i, later) in routes.iter().enumerate() {
            if later.environments.is_empty() {
                return Err(format!(
                    "route[{i}] ({}) allows no environment, so it can never match",
                    later.path
                ));
            }
            if let Some((j, earlier)) = routes[..i].iter().enumerate().find(|(_, earlier)| {
                earlier.path.covers(&later.path) && later.methods_within(earlier)
            }) {
                return Err(format!(
                    "route[{i}] ({}) can never match: route[{j}] ({}) comes first and takes all its requests",
                    later.path, earlier.path
                ));
            }
        }
        Ok(Self { routes, unmatched })
    }

    /// The first rule matching `method` and the normalized `path`, with its captures.
    pub fn find<'a, 'p>(
        &'a self,
        method: &Method,
        path: &'p str,
    ) -> Option<(&'a Route, Captures<'a, 'p>)> {
        self.routes.iter().find_map(|r| {
            if !r.matches_method(method) {
                return None;
            }
            r.path.matches(path).map(|c| (r, c))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        type Case<'a> = (&'a str, &'a str, Option<&'a [(&'a str, &'a str)]>);
        let cases: &[Case] = &[
            ("/content/**", "/content", Some(&[])),
            ("/content/**", "/content/", Some(&[])),
            ("/content/**", "/content/a/b", Some(&[])),
            ("/content/**", "/contents", None),
            ("/content", "/content", Some(&[])),
            ("/content", "/content/", None),
            ("/content", "/content/a", None),
            ("/", "/", Some(&[])),
            ("/", "/a", None),
            ("/**", "/", Some(&[])),
            ("/**", "/anything/at/all", Some(&[])),
            ("/v1/*/items", "/v1/abc/items", Some(&[])),
            ("/v1/*/items", "/v1//items", None),
            ("/v1/*/items", "/v1/a/b/items", None),
            ("/files/*.json", "/files/a.json", Some(&[])),
            ("/files/*.json", "/files/a.yaml", None),
            ("/files/*.json", "/files/.json", Some(&[])),
            ("/api/v*/x", "/api/v2/x", Some(&[])),
            (
                "/api/v2/w/{workspace}/**",
                "/api/v2/w/ws_1/projects",
                Some(&[("workspace", "ws_1")]),
            ),
            (
                "/api/v2/w/{workspace}/**",
                "/api/v2/w/ws_1",
                Some(&[("workspace", "ws_1")]),
            ),
            ("/api/v2/w/{workspace}/**", "/api/v2/w/", None),
            (
                "/w/{workspace}/p/{project}",
                "/w/a/p/b",
                Some(&[("workspace", "a"), ("project", "b")]),
            ),
            ("/w/{workspace}/p/{project}", "/w/a/p/b/c", None),
        ];
        for (pattern, path, want) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(path).as_deref(), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "content", "/a/**/b", "/a**", "/{}/x", "/{a-b}", "/x{id}", "/{a}/{a}",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn normalize_table() {
        let cases: &[(&str, Result<Option<&str>, UnsafePath>)] = &[
            ("/a/b", Ok(None)),
            ("/", Ok(None)),
            ("/a/b/", Ok(None)),
            ("/a//b", Ok(Some("/a/b"))),
            ("/a/./b", Ok(Some("/a/b"))),
            ("/public/../admin", Ok(Some("/admin"))),
            ("/../../etc", Ok(Some("/etc"))),
            ("/a/b/..", Ok(Some("/a/"))),
            ("/a/%2e%2e/b", Err(UnsafePath)),
            ("/a/%2E%2e/b", Err(UnsafePath)),
            ("/a%2fb", Err(UnsafePath)),
            ("/a%5Cb", Err(UnsafePath)),
            ("/a\\b", Err(UnsafePath)),
            ("/a%20b", Ok(None)),
            ("/a%2", Ok(None)),
            ("/a%", Ok(None)),
            ("/.hidden/x", Ok(None)),
            ("/a/..b", Ok(None)),
            ("/a/.", Ok(Some("/a/"))),
            ("//", Ok(Some("/"))),
            ("/a//", Ok(Some("/a/"))),
            ("*", Err(UnsafePath)),
            ("", Err(UnsafePath)),
        ];
        for (path, want) in cases {
            assert_eq!(
                normalize(path).as_ref().map(|o| o.as_deref()),
                want.as_ref().map(|o| *o),
                "{path}"
            );
        }
    }

    #[test]
    fn scope_grants() {
        let cases = [
            ("*", "content:read", true),
            ("content:read", "content:read", true),
            ("content:*", "content:read", true),
            ("content:*", "content:read:own", true),
            ("content:*", "contents:read", false),
            ("content:*", "content", false),
            ("content:read", "content:write", false),
            ("content", "content:read", false),
            ("con*", "content:read", false),
        ];
        for (held, required, want) in cases {
            assert_eq!(grants(held, required), want, "{held} -> {required}");
        }
    }

    #[test]
    fn scope_syntax() {
        for ok in ["content:read", "read:members", "a.b-c_d:e", "x"] {
            assert!(check_scope(ok, false).is_ok(), "{ok}");
            assert!(check_scope(ok, true).is_ok(), "{ok}");
        }
        for held_only in ["*", "content:*"] {
            assert!(check_scope(held_only, true).is_ok(), "{held_only}");
            assert!(check_scope(held_only, false).is_err(), "{held_only}");
        }
        for bad in ["", "a::b", ":a", "a:", "a b", "a/b", "a:*:b", "**", "é"] {
            assert!(check_scope(bad, true).is_err(), "{bad}");
        }
    }

    fn route(path: &str, methods: &[Method]) -> Route {
        Route {
            path: PathPattern::parse(path).unwrap(),
            methods: methods.to_vec(),
            scopes: vec![],
            scopes_all: vec![],
            environments: vec![Environment::Live, Environment::Test],
        }
    }

    #[test]
    fn shadowed_rules_are_refused() {
        let shadowed: &[(&str, &[Method], &str, &[Method])] = &[
            ("/**", &[], "/content", &[]),
            ("/content/**", &[], "/content/{id}", &[Method::GET]),
            ("/content/*", &[], "/content/x", &[]),
            (
                "/files/*.json",
                &[Method::GET],
                "/files/a.json",
                &[Method::GET],
            ),
            (
                "/a/{x}/**",
                &[Method::GET, Method::POST],
                "/a/b/c/**",
                &[Method::POST],
            ),
        ];
        for (first, m1, second, m2) in shadowed {
            let err = RouteTable::new(vec![route(first, m1), route(second, m2)], Unmatched::Deny)
                .expect_err(second);
            assert!(
                err.contains("route[1]") && err.contains("never match"),
                "{err}"
            );
        }
        let fine: &[(&str, &[Method], &str, &[Method])] = &[
            ("/content", &[], "/content/**", &[]),
            ("/content/**", &[Method::GET], "/content/**", &[]),
            ("/content/**", &[Method::GET], "/content/x", &[Method::POST]),
            ("/a/*", &[], "/a/**", &[]),
            ("/files/*.json", &[], "/files/*.yaml", &[]),
        ];
        for (first, m1, second, m2) in fine {
            RouteTable::new(vec![route(first, m1), route(second, m2)], Unmatched::Deny)
                .unwrap_or_else(|e| panic!("{first} then {second}: {e}"));
        }
    }

    #[test]
    fn first_match_wins_and_methods_filter() {
        let table = RouteTable::new(
            vec![
                route("/content/**", &[Method::GET]),
                route("/content/**", &[Method::POST]),
                route("/**", &[]),
            ],
            Unmatched::Deny,
        )
        .unwrap();
        let idx = |m: Method, p: &str| {
            table.find(&m, p).map(|(r, _)| {
                table
                    .routes
                    .iter()
                    .position(|x| std::ptr::eq(x, r))
                    .unwrap()
            })
        };
        assert_eq!(idx(Method::GET, "/content/a"), Some(0));
        assert_eq!(idx(Method::POST, "/content/a"), Some(1));
        assert_eq!(idx(Method::DELETE, "/content/a"), Some(2));
    }
}
