//! The rate-limit headers on every response to a limited key, 2xx and 429 alike:
//! `X-RateLimit-Limit/-Remaining/-Reset` (the de-facto set) and the IETF draft-11 structured
//! fields `RateLimit-Policy: "per_hour";q=1000;w=3600` and `RateLimit: "per_hour";r=999;t=42`,
//! all for the most constraining window. Headers the upstream set itself are left alone.

use std::cell::RefCell;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{Entry, HeaderName, HeaderValue};

use super::{ResetStyle, WindowState};

/// The five names, lowercase, in the order they are written.
const NAMES: [&str; 5] = [
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
];

/// The position of `name` (any case) among the five, to note which ones an upstream response
/// already carries.
pub fn index(name: &[u8]) -> Option<usize> {
    NAMES
        .iter()
        .position(|n| n.len() == name.len() && n.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends the value of header `i` of [`NAMES`] to `out`. This runs on every response to a
/// limited key: integers are formatted without `fmt`, into a buffer the caller reuses.
fn value(i: usize, w: &WindowState, reset: u64, out: &mut Vec<u8>) {
    let mut n = itoa::Buffer::new();
    let mut put = |parts: &[&[u8]]| {
        for part in parts {
            out.extend_from_slice(part);
        }
    };
    let name = w.name.as_bytes();
    match i {
        0 => put(&[n.format(w.limit).as_bytes()]),
        1 => put(&[n.format(w.remaining).as_bytes()]),
        2 => put(&[n.format(reset).as_bytes()]),
        3 => {
            put(&[b"\"", name, b"\";q=", n.format(w.limit).as_bytes()]);
            put(&[b";w=", n.format(w.window_secs).as_bytes()]);
        }
        _ => {
            put(&[b"\"", name, b"\";r=", n.format(w.remaining).as_bytes()]);
            put(&[b";t=", n.format(w.reset_secs).as_bytes()]);
        }
    }
}

fn reset(w: &WindowState, now_secs: u64, style: ResetStyle) -> u64 {
    match style {
        ResetStyle::Epoch => now_secs + w.reset_secs,
        ResetStyle::Delta => w.reset_secs,
    }
}

/// Adds the headers to a response (hyper's side), each unless the upstream set it.
pub fn apply(headers: &mut HeaderMap, w: &WindowState, now_secs: u64, style: ResetStyle) {
    let reset = reset(w, now_secs, style);
    // One buffer for the five values; each header value is a slice of it.
    let mut buf = Vec::with_capacity(96 + 2 * w.name.len());
    let ranges: [_; 5] = std::array::from_fn(|i| {
        let start = buf.len();
        value(i, w, reset, &mut buf);
        start..buf.len()
    });
    let buf = Bytes::from(buf);
    for (name, range) in NAMES.iter().zip(ranges) {
        if let Entry::Vacant(slot) = headers.entry(HeaderName::from_static(name))
            && let Ok(value) = HeaderValue::from_maybe_shared(buf.slice(range))
        {
            slot.insert(value);
        }
    }
}

/// Writes the headers as header lines into `out` (keygate's own HTTP/1.1), leaving out those
/// whose bit is set in `present` (the upstream set them; see [`index`]).
pub fn write(out: &mut Vec<u8>, w: &WindowState, now_secs: u64, style: ResetStyle, present: u8) {
    let reset = reset(w, now_secs, style);
    if present != 0 {
        for (i, name) in NAMES.iter().enumerate() {
            if present & (1 << i) == 0 {
                line(out, name, |out| value(i, w, reset, out));
            }
        }
        return;
    }
    // `X-RateLimit-Limit` and `RateLimit-Policy` depend on the window alone: formatted once
    // per window and thread, not per response.
    thread_local! {
        static FIXED: RefCell<((usize, u64, u64), Vec<u8>)> = const { RefCell::new(((0, 0, 0), Vec::new())) };
    }
    FIXED.with_borrow_mut(|(of, lines)| {
        let window = (w.name.as_ptr() as usize, w.limit, w.window_secs);
        if *of != window || lines.is_empty() {
            lines.clear();
            line(lines, NAMES[0], |out| value(0, w, reset, out));
            line(lines, NAMES[3], |out| value(3, w, reset, out));
            *of = window;
        }
        out.extend_from_slice(lines);
    });
    for i in [1, 2, 4] {
        line(out, NAMES[i], |out| value(i, w, reset, out));
    }
}

fn line(out: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    value(out);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> WindowState {
        WindowState {
            name: "per_hour",
            limit: 1000,
            remaining: 998,
            reset_secs: 42,
            window_secs: 3600,
        }
    }

    #[test]
    fn both_styles() {
        let mut h = HeaderMap::new();
        apply(&mut h, &window(), 1_000_000, ResetStyle::Epoch);
        assert_eq!(h["x-ratelimit-limit"], "1000");
        assert_eq!(h["x-ratelimit-remaining"], "998");
        assert_eq!(h["x-ratelimit-reset"], "1000042");
        assert_eq!(h["ratelimit-policy"], "\"per_hour\";q=1000;w=3600");
        assert_eq!(h["ratelimit"], "\"per_hour\";r=998;t=42");
        let mut h = HeaderMap::new();
        apply(&mut h, &window(), 1_000_000, ResetStyle::Delta);
        assert_eq!(h["x-ratelimit-reset"], "42");
    }

    #[test]
    fn header_lines_match_the_header_map() {
        let mut out = Vec::new();
        write(&mut out, &window(), 1_000_000, ResetStyle::Epoch, 0);
        let text = String::from_utf8(out).unwrap();
        let mut h = HeaderMap::new();
        apply(&mut h, &window(), 1_000_000, ResetStyle::Epoch);
        assert_eq!(text.lines().count(), 5);
        for line in text.lines() {
            let (name, value) = line.split_once(": ").unwrap();
            assert_eq!(h[name], value, "{name}");
        }
        // Another window on the same thread: the fixed lines are its own, not the last one's.
        let other = WindowState {
            name: "per_second",
            limit: 7,
            window_secs: 1,
            ..window()
        };
        let mut out = Vec::new();
        write(&mut out, &other, 0, ResetStyle::Delta, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("x-ratelimit-limit: 7\r\n"), "{text}");
        assert!(
            text.contains("ratelimit-policy: \"per_second\";q=7;w=1\r\n"),
            "{text}"
        );
        // Those the upstream set are left out.
        let mut out = Vec::new();
        let present = 1 << index(b"X-RateLimit-Limit").unwrap();
        write(&mut out, &window(), 0, ResetStyle::Delta, present);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("x-ratelimit-limit:"), "{text}");
        assert!(text.contains("x-ratelimit-remaining: 998\r\n"), "{text}");
    }

    #[test]
    fn upstream_headers_win() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("5"));
        apply(&mut h, &window(), 0, ResetStyle::Delta);
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "998");
    }
}
