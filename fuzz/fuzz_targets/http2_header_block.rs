//! A client's header blocks on one connection, decoded and checked
//! (`http2::request::Decoder::request`).
//!
//! Input: two bytes that set SETTINGS_MAX_HEADER_LIST_SIZE (up to 64 KiB), then header blocks
//! separated by the byte pair `0xff 0x00` (one decoder for all, as on one connection: each
//! block may refer to the table the ones before it filled).
//!
//! - Decoding never panics, whatever the blocks.
//! - A head that decodes holds what the request path and the upstream's request line rely
//!   on: a token method; a target that is empty only for a plain CONNECT and otherwise
//!   starts with `/` (or is `*` for OPTIONS), all visible ASCII, its path a prefix of it;
//!   an authority of visible ASCII; lowercase token names; values without NUL, CR or LF that
//!   neither begin nor end with whitespace; none of the connection-specific fields; a list
//!   no larger than allowed.

#![no_main]

use keygate::head::Head;
use keygate::http2::request::Decoder;
use libfuzzer_sys::fuzz_target;

fn visible(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x21..0x7f).contains(b))
}

fuzz_target!(|input: &[u8]| {
    let Some((size, rest)) = input.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes(*size));
    let mut decoder = Decoder::new(max);
    let mut blocks = Vec::new();
    let mut start = 0;
    for i in 0..rest.len() {
        if rest[i] == 0xff && rest.get(i + 1) == Some(&0x00) && i >= start {
            blocks.push(&rest[start..i]);
            start = i + 2;
        }
    }
    blocks.push(&rest[start.min(rest.len())..]);
    for block in blocks {
        let Ok(head) = decoder.request(block) else {
            continue;
        };
        assert!(head.list_size() <= max);
        let method = head.method().as_str();
        assert!(!method.is_empty() && visible(method.as_bytes()));
        let target = head.target();
        if target.is_empty() {
            assert_eq!(method, "CONNECT");
            assert!(head.protocol().is_none());
        } else {
            assert!(visible(target.as_bytes()));
            assert!(target.starts_with('/') || (target == "*" && method == "OPTIONS"));
            assert!(target.starts_with(head.path()));
        }
        if let Some(authority) = head.authority() {
            assert!(visible(authority.as_bytes()));
        }
        for (name, value) in head.fields() {
            assert!(!name.is_empty());
            assert!(
                !name
                    .iter()
                    .any(|b| b.is_ascii_uppercase() || *b <= b' ' || *b >= 0x7f)
            );
            assert!(!value.iter().any(|b| matches!(b, 0 | b'\r' | b'\n')));
            assert!(!value.first().is_some_and(|b| matches!(b, b' ' | b'\t')));
            assert!(!value.last().is_some_and(|b| matches!(b, b' ' | b'\t')));
            assert!(!matches!(
                name,
                b"connection"
                    | b"keep-alive"
                    | b"proxy-connection"
                    | b"transfer-encoding"
                    | b"upgrade"
            ));
        }
    }
});
