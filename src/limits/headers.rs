//! The rate-limit headers on every response to a limited key, 2xx and 429 alike:
//! `X-RateLimit-Limit/-Remaining/-Reset` (the de-facto set) and the IETF draft-11 structured
//! fields `RateLimit-Policy: "per_hour";q=1000;w=3600` and `RateLimit: "per_hour";r=999;t=42`,
//! all for the most constraining window. Headers the upstream set itself are left alone.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

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
    let mut set = |name: &HeaderName, value: HeaderValue| {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), value);
        }
    };
    set(&LIMIT, HeaderValue::from(w.limit));
    set(&REMAINING, HeaderValue::from(w.remaining));
    set(&RESET, HeaderValue::from(reset));
    let policy = format!("\"{}\";q={};w={}", w.name, w.limit, w.window_secs);
    let current = format!("\"{}\";r={};t={}", w.name, w.remaining, w.reset_secs);
    if let Ok(v) = HeaderValue::from_str(&policy) {
        set(&POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&current) {
        set(&RATELIMIT, v);
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
