//! The rate-limit headers on every response to a limited key, 2xx and 429 alike:
//! `X-RateLimit-Limit/-Remaining/-Reset` (the de-facto set) and the IETF draft-11 structured
//! fields `RateLimit-Policy: "per_hour";q=1000;w=3600` and `RateLimit: "per_hour";r=999;t=42`,
//! all for the most constraining window. Headers the upstream set itself are left alone.

use bytes::BytesMut;
use http::HeaderMap;
use http::header::{Entry, HeaderName, HeaderValue};

use super::{ResetStyle, WindowState};

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub fn apply(headers: &mut HeaderMap, w: &WindowState, now_secs: u64, style: ResetStyle) {
    let reset = match style {
        ResetStyle::Epoch => now_secs + w.reset_secs,
        ResetStyle::Delta => w.reset_secs,
    };
    // This runs on every response to a limited key: the five values are written into one
    // buffer (one allocation, integers formatted without `fmt`) and each header value is a
    // slice of it.
    let mut buf = BytesMut::with_capacity(96 + 2 * w.name.len());
    let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
    let mut put = |parts: &[&[u8]]| {
        let start = buf.len();
        for part in parts {
            buf.extend_from_slice(part);
        }
        start..buf.len()
    };
    let name = w.name.as_bytes();
    let limit = put(&[a.format(w.limit).as_bytes()]);
    let remaining = put(&[a.format(w.remaining).as_bytes()]);
    let reset = put(&[a.format(reset).as_bytes()]);
    let policy = put(&[
        b"\"",
        name,
        b"\";q=",
        a.format(w.limit).as_bytes(),
        b";w=",
        b.format(w.window_secs).as_bytes(),
    ]);
    let current = put(&[
        b"\"",
        name,
        b"\";r=",
        a.format(w.remaining).as_bytes(),
        b";t=",
        b.format(w.reset_secs).as_bytes(),
    ]);
    let buf = buf.freeze();
    for (header, range) in [
        (&LIMIT, limit),
        (&REMAINING, remaining),
        (&RESET, reset),
        (&POLICY, policy),
        (&RATELIMIT, current),
    ] {
        if let Entry::Vacant(slot) = headers.entry(header)
            && let Ok(value) = HeaderValue::from_maybe_shared(buf.slice(range))
        {
            slot.insert(value);
        }
    }
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
    fn upstream_headers_win() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", HeaderValue::from_static("5"));
        apply(&mut h, &window(), 0, ResetStyle::Delta);
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "998");
    }
}
