//! Route rules: which scopes, methods and environments a path needs, and the path patterns
//! they (and `[auth] public_paths`) are written in.
//!
//! Patterns are matched segment by segment against a normalized path:
//! `/content/**` (the prefix and everything below it), `/v1/*/items` (`*` is one segment),
//! `/files/*.json` (a glob inside a segment), `/api/v2/w/{workspace}/**` (a named parameter,
//! captured). The first rule whose pattern and method match decides. A path no rule matches
//! gets the explicit `[auth] unmatched` policy; a path some rule matches, but for other
//! methods only, is refused (405): a rule that lists methods never lets the others fall
//! through to a more permissive policy. A rule for `GET` also takes `HEAD`, which every
//! upstream serves as a `GET` without the body.
//!
//! Paths are normalized first ([`crate::path`]), and patterns must be written in that normal
//! form (checked when they are parsed), so a literal can never miss the path it names. With
//! `[paths] case_insensitive`, literals and globs match regardless of ASCII letter case.

use std::fmt;

use http::Method;

use crate::vocab::Environment;

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
    /// Literals and globs match regardless of ASCII letter case.
    case_insensitive: bool,
}

/// Values captured by `{name}` segments, in pattern order.
pub type Captures<'a, 'p> = Vec<(&'a str, &'p str)>;

impl PathPattern {
    /// Parses a pattern, matching letter case exactly or (`case_insensitive`) not at all.
    pub fn parse(raw: &str, case_insensitive: bool) -> Result<Self, String> {
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
            let parts: Vec<&str> = body.split('/').collect();
            for (i, seg) in parts.iter().enumerate() {
                // A trailing `/` is part of a normal path; an empty segment anywhere else is not.
                if seg.is_empty() && i + 1 == parts.len() {
                    segments.push(Segment::Literal(String::new()));
                } else {
                    segments.push(parse_segment(raw, seg)?);
                }
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
            case_insensitive,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Matches a normalized path (see [`crate::path::normalize`]); on success, the captured
    /// parameters.
    pub fn matches<'a, 'p>(&'a self, path: &'p str) -> Option<Captures<'a, 'p>> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut captures = Vec::new();
        let fold = self.case_insensitive;
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if same(fold, l.as_bytes(), part.as_bytes()) => {}
                Segment::Param(name) if !part.is_empty() => captures.push((name.as_str(), part)),
                Segment::Any if !part.is_empty() => {}
                Segment::Glob(g) if glob(fold, g.as_bytes(), part.as_bytes()) => {}
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
        let fold = self.case_insensitive;
        self.segments
            .iter()
            .zip(&other.segments)
            .all(|(mine, theirs)| match (mine, theirs) {
                // One segment, but not an empty one: `/a/*` does not take `/a/`.
                (Segment::Any | Segment::Param(_), Segment::Literal(l)) => !l.is_empty(),
                (Segment::Any | Segment::Param(_), _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => {
                    same(fold, a.as_bytes(), b.as_bytes())
                }
                (Segment::Glob(g), Segment::Literal(b)) => glob(fold, g.as_bytes(), b.as_bytes()),
                (Segment::Glob(a), Segment::Glob(b)) => same(fold, a.as_bytes(), b.as_bytes()),
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
    // A literal must be what a normalized path would carry, or it could never match: no
    // `%61` for `a`, no lowercase hex, no `;`, no `.` or `..` segments.
    let check = format!("/{}", seg.replace('*', "x"));
    let normal = crate::path::normalize(&check, &crate::path::PathRules::default());
    if seg.is_empty() || seg == "." || seg == ".." || normal.as_deref() != Ok(check.as_str()) {
        let hint = match normal {
            Ok(n) if !seg.is_empty() && seg != "." && seg != ".." => {
                format!("write it as {:?}", &n[1..])
            }
            Ok(_) => "empty, `.` and `..` segments never reach the rules".to_owned(),
            Err(e) => e.to_string(),
        };
        return Err(format!(
            "{raw:?}: segment {seg:?} is not in the normal form paths are matched in ({hint})"
        ));
    }
    if seg.contains('*') {
        return Ok(Segment::Glob(seg.to_owned()));
    }
    Ok(Segment::Literal(seg.to_owned()))
}

fn same(fold: bool, a: &[u8], b: &[u8]) -> bool {
    if fold {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// `*` matches any run of bytes (within one segment: the caller never passes a '/').
fn glob(fold: bool, pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(fold, rest, &text[i..])),
        Some((c, rest)) => text
            .split_first()
            .is_some_and(|(t, tr)| same(fold, &[*t], &[*c]) && glob(fold, rest, tr)),
    }
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
    /// The route's own limits, per key, on top of the key's plan (`crate::limits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<RouteLimits>,
}

/// `[[route]] limits`: what one key may send to this route, counted apart from its plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteLimits {
    #[serde(flatten)]
    pub limits: crate::limits::Limits,
    /// The route's name in the counters: its methods and pattern, so a reload that reorders
    /// the table keeps them.
    #[serde(skip)]
    pub id: std::sync::Arc<str>,
}

impl RouteLimits {
    pub fn as_limit(&self) -> crate::limits::RouteLimit<'_> {
        crate::limits::RouteLimit {
            limits: &self.limits,
            id: &self.id,
        }
    }
}

fn methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

impl Route {
    fn matches_method(&self, method: &Method) -> bool {
        self.methods.is_empty() || lists(&self.methods, method)
    }

    /// Every method this rule matches is also matched by `other`.
    fn methods_within(&self, other: &Route) -> bool {
        other.methods.is_empty()
            || (!self.methods.is_empty() && self.methods.iter().all(|m| lists(&other.methods, m)))
    }
}

/// `methods` names `method`; `GET` names `HEAD` too.
fn lists(methods: &[Method], method: &Method) -> bool {
    methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
}

/// What the route table says of one request.
#[derive(Debug)]
pub enum Found<'a, 'p> {
    /// The first rule matching path and method, with its captures.
    Rule(&'a Route, Captures<'a, 'p>),
    /// Rules match the path, but none of them this method: refused, never `unmatched`.
    OtherMethods,
    /// No rule matches the path: `[auth] unmatched` decides.
    Unmatched,
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

    /// The rule for `method` on the normalized `path` (see [`Found`]).
    /// Some rule carries limits of its own (else the request path need not look).
    pub fn has_limits(&self) -> bool {
        self.routes.iter().any(|r| r.limits.is_some())
    }

    pub fn find<'a, 'p>(&'a self, method: &Method, path: &'p str) -> Found<'a, 'p> {
        let mut path_matched = false;
        for route in &self.routes {
            if let Some(captures) = route.path.matches(path) {
                if route.matches_method(method) {
                    return Found::Rule(route, captures);
                }
                path_matched = true;
            }
        }
        if path_matched {
            Found::OtherMethods
        } else {
            Found::Unmatched
        }
    }

    /// The methods some rule allows on `path` (for a 405's `Allow`), in rule order. Empty
    /// when a matching rule takes every method.
    pub fn allowed_methods(&self, path: &str) -> Vec<Method> {
        let mut allowed: Vec<Method> = Vec::new();
        for route in self
            .routes
            .iter()
            .filter(|r| r.path.matches(path).is_some())
        {
            if route.methods.is_empty() {
                return Vec::new();
            }
            for m in &route.methods {
                if !allowed.contains(m) {
                    allowed.push(m.clone());
                }
                if *m == Method::GET && !allowed.contains(&Method::HEAD) {
                    allowed.push(Method::HEAD);
                }
            }
        }
        allowed
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
            let p = PathPattern::parse(pattern, false).unwrap();
            assert_eq!(p.matches(path).as_deref(), *want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "content", "/a/**/b", "/a**", "/{}/x", "/{a-b}", "/x{id}", "/{a}/{a}",
        ] {
            assert!(PathPattern::parse(bad, false).is_err(), "{bad}");
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
            limits: None,
            path: PathPattern::parse(path, false).unwrap(),
            methods: methods.to_vec(),
            scopes: vec![],
            scopes_all: vec![],
            environments: vec![Environment::LIVE, Environment::TEST],
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
            // Found by the `routes` fuzz target: these were refused as never matching.
            ("/content/*", &[], "/content/", &[]),
            ("/a/{x}/**", &[], "/a//**", &[]),
            ("/*", &[], "/", &[]),
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
        let idx = |m: Method, p: &str| match table.find(&m, p) {
            Found::Rule(r, _) => Some(
                table
                    .routes
                    .iter()
                    .position(|x| std::ptr::eq(x, r))
                    .unwrap(),
            ),
            _ => None,
        };
        assert_eq!(idx(Method::GET, "/content/a"), Some(0));
        assert_eq!(idx(Method::HEAD, "/content/a"), Some(0));
        assert_eq!(idx(Method::POST, "/content/a"), Some(1));
        assert_eq!(idx(Method::DELETE, "/content/a"), Some(2));
    }

    #[test]
    fn a_path_ruled_for_other_methods_is_not_unmatched() {
        let table = RouteTable::new(
            vec![
                route("/admin/**", &[Method::GET]),
                route("/admin/users", &[Method::POST]),
            ],
            Unmatched::Allow,
        )
        .unwrap();
        assert!(matches!(
            table.find(&Method::DELETE, "/admin/users"),
            Found::OtherMethods
        ));
        assert_eq!(
            table.allowed_methods("/admin/users"),
            [Method::GET, Method::HEAD, Method::POST]
        );
        assert!(matches!(
            table.find(&Method::DELETE, "/other"),
            Found::Unmatched
        ));
        let any = RouteTable::new(
            vec![route("/a/**", &[Method::GET]), route("/a/b", &[])],
            Unmatched::Deny,
        )
        .unwrap();
        assert!(any.allowed_methods("/a/b").is_empty());
    }

    #[test]
    fn case_insensitive_patterns_ignore_ascii_case_only() {
        let p = PathPattern::parse("/Admin/*.JSON", true).unwrap();
        assert!(p.matches("/admin/x.json").is_some());
        assert!(p.matches("/ADMIN/X.Json").is_some());
        assert!(p.matches("/admin%C3%A9/x.json").is_none());
        let exact = PathPattern::parse("/Admin/**", false).unwrap();
        assert!(exact.matches("/admin/x").is_none());
        assert!(exact.matches("/Admin/x").is_some());
        // Captures keep the case the client sent.
        let w = PathPattern::parse("/w/{workspace}", true).unwrap();
        assert_eq!(w.matches("/W/Ws_1"), Some(vec![("workspace", "Ws_1")]));
    }

    #[test]
    fn patterns_must_be_written_normalized() {
        for (bad, hint) in [
            ("/%61dmin/**", "\"admin\""),
            ("/a/%2f/b", "encoded"),
            ("/a;v=1", "parameters"),
            ("/a/../b", "never reach"),
            ("/a//b", "never reach"),
            ("/a/./b", "never reach"),
            ("/caf%c3%a9", "\"caf%C3%A9\""),
        ] {
            let err = PathPattern::parse(bad, false).expect_err(bad);
            assert!(err.contains(hint), "{bad}: {err}");
        }
        for good in [
            "/caf%C3%A9",
            "/a%20b/**",
            "/v1/items:batchGet",
            "/files/*.json",
        ] {
            PathPattern::parse(good, false).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
