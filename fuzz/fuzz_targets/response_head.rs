//! The upstream's response head, rewritten for an HTTP/1.1 client (`h1::write::response_head`).
//!
//! Input: one byte of settings (the client's request: HEAD or not, HTTP/1.0 or 1.1,
//! keep-alive, upgrade, rate-limit headers or not), then the upstream's bytes.
//!
//! What a client receives must be one well-formed head whatever the upstream sent: a final
//! response starts with `HTTP/1.1 ddd ` (100 <= ddd <= 599, the status reported), parses with
//! httparse as exactly one response, has no CR or LF but as line ends, carries at most one
//! framing header and exactly the one the chosen encoding needs, no hop-by-hop header (but
//! the handshake of an admitted upgrade, which switches to WebSocket), and says `connection: close` when keygate closes.
//! An interim response is a 1xx head of its own, or nothing.

#![no_main]

use keygate::header_rules::{self, Name};
use keygate::limits::{ResetStyle, WindowState};
use keygate::wire::response::{Limit, Parsed, ResponseContext, response_head};
use keygate::wire::{Encoding, Framing};
use libfuzzer_sys::fuzz_target;

const MAX_LINES: usize = 512;

fn line_ends_only(out: &[u8], shown: &str) {
    for (i, &byte) in out.iter().enumerate() {
        match byte {
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}: {shown:?}"),
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}: {shown:?}"),
            _ => {}
        }
    }
}

/// `out` is one complete response head, nothing after it; its status and headers.
fn one_response<'h, 'b>(
    out: &'b [u8],
    lines: &'h mut [httparse::Header<'b>],
    shown: &str,
) -> (u16, &'h [httparse::Header<'b>]) {
    let mut resp = httparse::Response::new(lines);
    match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "{shown:?}"),
        other => panic!("the client's head does not parse ({other:?}): {shown:?}"),
    }
    assert_eq!(resp.version, Some(1), "{shown:?}");
    (resp.code.expect("parsed"), resp.headers)
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, upstream)) = data.split_first() else {
        return;
    };
    let window = WindowState {
        name: "per_hour",
        limit: 1000,
        remaining: 998,
        reset_secs: 1234,
        window_secs: 3600,
    };
    let cx = ResponseContext {
        head_request: settings & 1 != 0,
        client_http11: settings & 2 == 0,
        keep_alive: settings & 4 == 0,
        upgrade: settings & 8 != 0,
        limit: (settings & 16 != 0).then_some(Limit {
            window: &window,
            now_secs: 1_800_000_000,
            style: if settings & 32 != 0 {
                ResetStyle::Epoch
            } else {
                ResetStyle::Delta
            },
        }),
        added: &[],
        cors: &[],
    };
    // Whatever was already in the output buffer stays as it was.
    let mut out = b"earlier".to_vec();
    let parsed = response_head(upstream, &mut out, &cx);
    assert!(out.starts_with(b"earlier"));
    let out = &out[b"earlier".len()..];
    let shown = String::from_utf8_lossy(out);
    let mut lines = [httparse::EMPTY_HEADER; MAX_LINES];

    match parsed {
        Ok(Parsed::Final(r)) => {
            assert!(r.len <= upstream.len());
            assert!((100..=599).contains(&r.status), "{r:?}");
            let status_line = format!("HTTP/1.1 {} ", r.status);
            assert!(out.starts_with(status_line.as_bytes()), "{shown:?}");
            line_ends_only(out, &shown);
            let (code, headers) = one_response(out, &mut lines, &shown);
            assert_eq!(code, r.status);
            if r.switching {
                assert!(cx.upgrade && r.status == 101, "{r:?}");
                assert!(!r.client_keep_alive && !r.upstream_keep_alive);
                // Only a switch to WebSocket, the one upgrade passed on.
                assert!(
                    headers.iter().any(|h| {
                        header_rules::name(h.name.as_bytes()) == Name::Upgrade
                            && header_rules::is_websocket(h.value)
                    }),
                    "{shown:?}"
                );
                return;
            }
            assert!(r.status >= 200, "{r:?}");
            let (mut lengths, mut codings, mut closes) = (Vec::new(), Vec::new(), 0);
            for h in headers {
                match header_rules::name(h.name.as_bytes()) {
                    Name::ContentLength => lengths.push(h.value),
                    Name::TransferEncoding => codings.push(h.value),
                    Name::Connection => {
                        assert!(h.name == "connection", "the upstream's: {shown:?}");
                        closes += usize::from(h.value == b"close");
                    }
                    Name::HopByHop | Name::Upgrade => {
                        panic!("hop-by-hop {} went to the client: {shown:?}", h.name)
                    }
                    _ => {}
                }
            }
            assert!(lengths.len() + codings.len() <= 1, "{shown:?}");
            match (r.encoding, r.framing) {
                (Encoding::Chunked, _) => {
                    assert!(cx.client_http11, "{r:?}");
                    assert_eq!(codings, [b"chunked"], "{shown:?}");
                }
                (Encoding::Raw, Framing::Length(n)) => {
                    assert_eq!(lengths, [n.to_string().as_bytes()], "{shown:?}")
                }
                (Encoding::Raw, Framing::Chunked | Framing::Close) => {
                    // An HTTP/1.0 client reads to the close.
                    assert!(!cx.client_http11 && !r.client_keep_alive, "{r:?}");
                    assert!(codings.is_empty() && lengths.is_empty(), "{shown:?}");
                }
                (Encoding::Raw, Framing::Empty) => assert!(codings.is_empty(), "{shown:?}"),
            }
            assert_eq!(closes, usize::from(!r.client_keep_alive), "{shown:?}");
            assert!(!r.client_keep_alive || cx.keep_alive, "{r:?}");
            if cx.head_request || r.status == 204 || r.status == 304 {
                assert_eq!(r.framing, Framing::Empty);
            }
        }
        Ok(Parsed::Interim { len }) => {
            assert!(len <= upstream.len());
            if !out.is_empty() {
                assert!(cx.client_http11, "{shown:?}");
                line_ends_only(out, &shown);
                let (code, _) = one_response(out, &mut lines, &shown);
                assert!((102..200).contains(&code), "{shown:?}");
                let status_line = format!("HTTP/1.1 {code} ");
                assert!(out.starts_with(status_line.as_bytes()), "{shown:?}");
            }
        }
        Ok(Parsed::Partial) => assert!(out.is_empty(), "{shown:?}"),
        // The caller clears what was written and answers 502 itself.
        Err(_) => {}
    }
});
