//! The request path, normalized once: the rules match it and the upstream receives it, so
//! what is authorized is what the upstream serves.
//!
//! An upstream may read the same bytes as a different path: it may decode `%61dmin` to
//! `admin`, resolve `/x/../admin`, drop `;jsessionid=…` path parameters before routing, or
//! decode an overlong UTF-8 `%C0%AE` into a dot. Whatever any common server could decode,
//! fold or resolve is either made canonical here, before a rule sees it, or refused:
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986
//!   §6.2.2.2) and the remaining escapes are written in uppercase hex (§6.2.2.1);
//! - escapes that could change the path's structure or meaning are refused: an encoded `/` or
//!   `\`, an encoded control character (`%00`…`%1F`, `%7F`), a double encoding (`%25`
//!   followed by two hex digits, which a server that decodes twice reads as another escape),
//!   bytes that do not decode to UTF-8 (overlong forms such as `%C0%AE` included), and
//!   malformed escapes (`%zz`, `%u0061`);
//! - raw backslashes, control characters, spaces and non-ASCII bytes are refused;
//! - `;` path parameters are refused, or, with `[paths] parameters = "strip"`, removed from
//!   every segment (as Tomcat and Spring do before routing), so no upstream routes on a
//!   segment the rules did not see;
//! - `.` and `..` segments (decoded ones included) are resolved and empty segments merged.
//!
//! The result is a fixed point: normalizing it again changes nothing. Letter case is kept;
//! whether rules match it exactly is [`PathRules::case_insensitive`]'s business
//! ([`crate::routes`]). Almost every real path is already normal: checking one costs one scan
//! of its bytes and no allocation.

use std::borrow::Cow;

use serde::Serialize;

/// How paths are treated, from `[paths]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathRules {
    pub parameters: Parameters,
    /// Route and public-path patterns match regardless of ASCII letter case (for upstreams
    /// that serve `/ADMIN` as `/admin`).
    pub case_insensitive: bool,
}

/// What to do with `;` path parameters (`/a;v=1/b`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parameters {
    /// Refuse the request (400 `invalid_path`).
    #[default]
    Reject,
    /// Remove them from every segment; the upstream receives the path without them.
    Strip,
}

/// Why a path was refused. The text is the error's message to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("The request path must start with '/'")]
    NotAbsolute,
    #[error("The request path contains a character that must be percent-encoded")]
    RawByte,
    #[error("The request path contains a backslash")]
    Backslash,
    #[error("The request path contains a malformed percent-encoding")]
    BadEscape,
    #[error("The request path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("The request path contains an encoded control character")]
    EncodedControl,
    #[error("The request path is percent-encoded twice")]
    DoubleEncoded,
    #[error("The request path's percent-encoded bytes are not valid UTF-8")]
    NotUtf8,
    #[error("The request path carries ';' path parameters, which are not accepted here")]
    Parameters,
}

/// The path the rules see and the upstream receives: borrowed when `path` is already normal.
pub fn normalize<'p>(path: &'p str, rules: &PathRules) -> Result<Cow<'p, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass over the bytes: this runs on every request, and almost every path is normal.
    let mut needs_work = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b'%' | b';' => needs_work = true,
            b'/' => {
                let rest = &bytes[i + 1..];
                let segment = &rest[..rest.iter().position(|&c| c == b'/').unwrap_or(rest.len())];
                // `//`, `/./`, `/../`, or a path ending in `/.` or `/..`.
                needs_work |=
                    (segment.is_empty() && !rest.is_empty()) || segment == b"." || segment == b"..";
            }
            b'!'..=b'~' => {}
            _ => return Err(PathError::RawByte),
        }
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = canonical_escapes(bytes, rules.parameters)?;
    Ok(Cow::Owned(resolve_segments(&decoded)))
}

/// Step one of the slow path: escapes decoded or uppercased, parameters refused or stripped,
/// everything that could mean something else refused. Segments are not touched yet.
fn canonical_escapes(bytes: &[u8], parameters: Parameters) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut in_parameter = false;
    let mut high_bytes = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            b'/' => {
                in_parameter = false;
                out.push('/');
            }
            // A stripped parameter's bytes are dropped, escapes and all (the upstream never
            // sees them); the first scan already refused raw bytes that are never valid.
            _ if in_parameter => {}
            b';' => match parameters {
                Parameters::Reject => return Err(PathError::Parameters),
                Parameters::Strip => in_parameter = true,
            },
            b'%' => {
                let value = bytes
                    .get(i..i + 2)
                    .and_then(|hex| Some(hex_value(hex[0])? << 4 | hex_value(hex[1])?))
                    .ok_or(PathError::BadEscape)?;
                i += 2;
                match value {
                    _ if is_unreserved(value) => out.push(value as char),
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    b';' if parameters == Parameters::Reject => {
                        return Err(PathError::Parameters);
                    }
                    _ => {
                        high_bytes |= value >= 0x80;
                        push_escape(&mut out, value);
                    }
                }
            }
            _ => out.push(b as char),
        }
    }
    if has_double_encoding(out.as_bytes()) {
        return Err(PathError::DoubleEncoded);
    }
    if high_bytes && std::str::from_utf8(&percent_decode(out.as_bytes())).is_err() {
        return Err(PathError::NotUtf8);
    }
    Ok(out)
}

/// Step two: `.` segments and empty segments dropped, `..` resolved (never above the root).
/// A path that ended in a separator, `.` or `..` keeps its trailing `/`.
fn resolve_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut kept: Vec<&str> = Vec::with_capacity(segments.len());
    for seg in &segments {
        match *seg {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let trailing = matches!(segments.last(), Some(&("" | "." | "..")));
    let mut normal = String::with_capacity(path.len());
    for seg in &kept {
        normal.push('/');
        normal.push_str(seg);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    normal
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(value >> 4)] as char);
    out.push(HEX[usize::from(value & 0xf)] as char);
}

/// `%25` followed by two hex digits: `%2561` is `%61` to a server that decodes once more.
fn has_double_encoding(path: &[u8]) -> bool {
    path.windows(5).any(|w| {
        w[0] == b'%'
            && w[1] == b'2'
            && w[2] == b'5'
            && w[3].is_ascii_hexdigit()
            && w[4].is_ascii_hexdigit()
    })
}

/// Every escape decoded (the input's escapes are well-formed by now).
fn percent_decode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match (path[i], path.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                out.push(hex_value(hex[0]).unwrap_or(0) << 4 | hex_value(hex[1]).unwrap_or(0));
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: PathRules = PathRules {
        parameters: Parameters::Reject,
        case_insensitive: false,
    };
    const STRIP: PathRules = PathRules {
        parameters: Parameters::Strip,
        case_insensitive: false,
    };

    type Want = Result<&'static str, PathError>;

    fn check(rules: &PathRules, cases: &[(&str, Want)]) {
        for (path, want) in cases {
            let got = normalize(path, rules);
            assert_eq!(got.as_deref(), want.as_ref().map(|s| *s), "{path}");
            if let Ok(normal) = got {
                // A fixed point, and an already-normal path costs no allocation.
                let again = normalize(&normal, rules).unwrap();
                assert_eq!(again, normal, "{path} normalized twice");
                if normal == *path && !path.contains('%') {
                    assert!(matches!(again, Cow::Borrowed(_)), "{path} allocated");
                }
            }
        }
    }

    #[test]
    fn already_normal_paths_pass_unchanged() {
        check(
            &STRICT,
            &[
                ("/", Ok("/")),
                ("/a/b", Ok("/a/b")),
                ("/a/b/", Ok("/a/b/")),
                ("/.hidden/x", Ok("/.hidden/x")),
                ("/a/..b", Ok("/a/..b")),
                ("/a/b.json", Ok("/a/b.json")),
                ("/v1/items:batchGet", Ok("/v1/items:batchGet")),
                ("/a/~user/x-y_z", Ok("/a/~user/x-y_z")),
                ("/ADMIN", Ok("/ADMIN")),
            ],
        );
    }

    #[test]
    fn dot_and_empty_segments_are_resolved() {
        check(
            &STRICT,
            &[
                ("/a//b", Ok("/a/b")),
                ("/a/./b", Ok("/a/b")),
                ("/public/../admin", Ok("/admin")),
                ("/../../etc", Ok("/etc")),
                ("/a/b/..", Ok("/a/")),
                ("/a/.", Ok("/a/")),
                ("//", Ok("/")),
                ("/a//", Ok("/a/")),
                ("//admin", Ok("/admin")),
            ],
        );
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_the_rest_uppercased() {
        check(
            &STRICT,
            &[
                ("/%61dmin/x", Ok("/admin/x")),
                ("/ad%6Din/x", Ok("/admin/x")),
                ("/%41%42%43", Ok("/ABC")),
                ("/%7euser", Ok("/~user")),
                ("/a%2db%5fc%2E", Ok("/a-b_c.")),
                // Decoded dots are dot segments like any other.
                ("/a/%2e%2e/admin", Ok("/admin")),
                ("/a/%2E/b", Ok("/a/b")),
                ("/a/.%2e/admin", Ok("/admin")),
                // Reserved and other characters stay encoded, in uppercase hex.
                ("/a%20b", Ok("/a%20b")),
                ("/a%3fb", Ok("/a%3Fb")),
                ("/a%23b", Ok("/a%23b")),
                ("/caf%c3%a9", Ok("/caf%C3%A9")),
                ("/100%25", Ok("/100%25")),
                ("/%25zz", Ok("/%25zz")),
            ],
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathError::*;
        check(
            &STRICT,
            &[
                ("", Err(NotAbsolute)),
                ("*", Err(NotAbsolute)),
                ("admin", Err(NotAbsolute)),
                ("/a\\b", Err(Backslash)),
                ("/a%5Cb", Err(EncodedSeparator)),
                ("/a%5cb", Err(EncodedSeparator)),
                ("/a%2fb", Err(EncodedSeparator)),
                ("/a%2Fb", Err(EncodedSeparator)),
                ("/a%00", Err(EncodedControl)),
                ("/a%0d%0aHost:x", Err(EncodedControl)),
                ("/a%09", Err(EncodedControl)),
                ("/a%7f", Err(EncodedControl)),
                ("/%2561dmin", Err(DoubleEncoded)),
                ("/%25%36%31dmin", Err(DoubleEncoded)),
                ("/%252e%252e/admin", Err(DoubleEncoded)),
                ("/a%", Err(BadEscape)),
                ("/a%2", Err(BadEscape)),
                ("/a%zz", Err(BadEscape)),
                ("/%u0061dmin", Err(BadEscape)),
                ("/a%c0%ae%c0%ae/admin", Err(NotUtf8)),
                ("/%c0%af", Err(NotUtf8)),
                ("/%e0%80%ae", Err(NotUtf8)),
                ("/%ff", Err(NotUtf8)),
                ("/caf%c3", Err(NotUtf8)),
                ("/a b", Err(RawByte)),
                ("/a\tb", Err(RawByte)),
                ("/a\u{7f}", Err(RawByte)),
                ("/café", Err(RawByte)),
                ("/a;b", Err(Parameters)),
                ("/admin;/x", Err(Parameters)),
                ("/..;/admin", Err(Parameters)),
                ("/a%3bb", Err(Parameters)),
            ],
        );
    }

    #[test]
    fn parameters_can_be_stripped_instead() {
        check(
            &STRIP,
            &[
                ("/a;b", Ok("/a")),
                ("/admin;x=1/y", Ok("/admin/y")),
                ("/open/..;/admin", Ok("/admin")),
                ("/a;jsessionid=1%2f2/b", Ok("/a/b")),
                ("/;x/a", Ok("/a")),
                ("/a/b;v=2", Ok("/a/b")),
                // Encoded, it is data, not a parameter.
                ("/a%3bb", Ok("/a%3Bb")),
                ("/a;x\\y", Err(PathError::Backslash)),
            ],
        );
    }
}
