//! The upstream's response head read for an HTTP/2 client (`forward::response_head::parse`).
//!
//! Input: one byte of settings (bit 0: the request was a HEAD; bit 1: a WebSocket handshake
//! from an HTTP/2 client's extended CONNECT), then the upstream's bytes.
//!
//! What an HTTP/2 client receives must be legal there and read as keygate's own HTTP/1.1 reads
//! it: a final status 200-599 (or a `101` to a WebSocket handshake that switches to
//! `websocket`, with no body and no `Content-Length`), no connection-specific header (RFC 9113 §8.2.2), at most one
//! `Content-Length`, equal to the body's length when the body is sized, none on a 204; and
//! the same status, framing and upstream keep-alive as `wire::response::response_head` finds
//! in the same bytes, which must not accept anything this refuses except a header HTTP/2
//! cannot carry.

#![no_main]

use keygate::forward::response_head::{Parsed, parse};
use keygate::header_rules::{self, Name};
use keygate::wire::Framing;
use keygate::wire::response::{self, ResponseContext, ResponseError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&settings, upstream)) = data.split_first() else {
        return;
    };
    let head_request = settings & 1 != 0;
    let websocket = settings & 2 != 0;
    let cx = ResponseContext {
        head_request,
        client_http11: true,
        keep_alive: true,
        upgrade: websocket,
        limit: None,
        added: &[],
        cors: &[],
    };
    let mut out = Vec::new();
    let theirs = response::response_head(upstream, &mut out, &cx);
    let ours = parse(upstream, head_request, websocket);
    match (ours, theirs) {
        (Ok(Parsed::Final(r)), Ok(response::Parsed::Final(t))) => {
            assert!(r.len <= upstream.len() && r.len == t.len);
            let status = r.status.as_u16();
            assert!(
                (200..=599).contains(&status) || (websocket && status == 101),
                "{r:?}"
            );
            assert_eq!(status, t.status);
            if status == 101 {
                assert!(t.switching && !r.keep_alive, "{r:?}");
                assert!(r.headers.get("content-length").is_none(), "{r:?}");
            }
            assert_eq!(r.framing, t.framing, "{r:?}");
            assert_eq!(r.keep_alive, t.upstream_keep_alive, "{r:?}");
            let mut lengths = Vec::new();
            for (name, value) in &r.headers {
                let class = header_rules::name(name.as_str().as_bytes());
                assert!(header_rules::to_client(class), "{name} went to the client");
                assert!(
                    !matches!(name.as_str(), "te" | "keep-alive" | "proxy-connection"),
                    "{name}"
                );
                if class == Name::ContentLength {
                    lengths.push(value.to_str().unwrap().parse::<u64>().unwrap());
                }
            }
            assert!(lengths.len() <= 1, "{r:?}");
            if let Framing::Length(n) = r.framing {
                assert_eq!(lengths, [n], "{r:?}");
            }
            if status == 204 {
                assert!(lengths.is_empty(), "{r:?}");
            }
            if head_request || status == 204 || status == 304 {
                assert_eq!(r.framing, Framing::Empty);
            }
            if r.framing == Framing::Close {
                assert!(!r.keep_alive);
            }
        }
        (Ok(Parsed::Interim { len }), Ok(response::Parsed::Interim { len: theirs })) => {
            assert_eq!(len, theirs);
        }
        (Ok(Parsed::Partial), Ok(response::Parsed::Partial)) => {}
        (Err(_), Err(_)) => {}
        (Err(ResponseError::Malformed(why)), Ok(_)) => {
            assert!(
                why.contains("HTTP/2 cannot carry"),
                "refused only here: {why}"
            );
        }
        (ours, theirs) => panic!("read two ways: {ours:?} / {theirs:?}"),
    }
});
