//! The upstream's HTTP/1.1 response head read for an HTTP/2 client ([`super::links`]): the
//! status, the header map the client may see, and how the body that follows is delimited.
//!
//! The framing decision is `wire::response`'s ([`crate::wire::response::upstream_framing`])
//! and which header reaches the client is the rulebook's ([`crate::header_rules::to_client`]), so
//! both engines read an upstream's response the same way; only the rendering differs (a header
//! map for hyper's HTTP/2 instead of header lines). Connection-specific headers never reach
//! an HTTP/2 client (RFC 9113 §8.2.2 makes them malformed there): `Connection`, whatever it
//! names, `Transfer-Encoding`, `Upgrade`, `Keep-Alive` and the other hop-by-hop headers are
//! dropped. `Content-Length` is written once, from the agreed value, and only where the
//! HTTP/1.1 engine would write one.

use std::mem::MaybeUninit;

use http::StatusCode;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};

use crate::header_rules::{self as names, Name, list};
use crate::wire::Framing;
use crate::wire::request::digits;
use crate::wire::response::{MAX_RESPONSE_HEAD, ResponseError, Signs, upstream_framing};

const MAX_RESPONSE_LINES: usize = 256;

/// A response head from the upstream, as far as it has arrived.
#[derive(Debug)]
pub enum Parsed {
    Partial,
    /// A 1xx before the final response, `len` bytes long: hyper's HTTP/2 server sends no
    /// interim responses, so it is skipped (as hyper's client skips them).
    Interim {
        len: usize,
    },
    Final(UpstreamResponse),
}

/// A final response head.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// Bytes of head.
    pub len: usize,
    pub status: StatusCode,
    /// What the client may see.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream connection can carry another request once the body is read.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`. `head_request`: the response to a `HEAD`
/// has no body, whatever it declares.
pub fn parse(buf: &[u8], head_request: bool) -> Result<Parsed, ResponseError> {
    // Uninitialized: filling 256 empty headers first would cost more than parsing.
    let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_LINES];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut lines);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => {
            return Ok(Parsed::Partial);
        }
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed("the head does not parse")),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(ResponseError::Malformed("no status line"));
    };
    // httparse reads any three digits; a client must only ever see a valid status.
    if !(100..=599).contains(&code) {
        return Err(ResponseError::Malformed("a status code outside 100-599"));
    }
    let headers = &*resp.headers;

    let mut length: Option<u64> = None;
    let (mut coded, mut chunked_last) = (false, false);
    let mut options = names::Options::default();
    let mut named: Vec<&[u8]> = Vec::new();
    let mut kept = 0;
    for h in headers {
        match names::name(h.name.as_bytes()) {
            Name::ContentLength => {
                for part in list(h.value) {
                    let n = digits(part).ok_or(ResponseError::Malformed("Content-Length"))?;
                    if length.is_some_and(|seen| seen != n) {
                        return Err(ResponseError::Malformed("conflicting Content-Length"));
                    }
                    length = Some(n);
                }
            }
            Name::TransferEncoding => {
                for coding in list(h.value) {
                    coded = true;
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
            Name::Connection => options.add(h.value, |token| named.push(token)),
            class if names::to_client(class) => kept += 1,
            _ => {}
        }
    }
    // After the lines are checked, as the HTTP/1.1 engine does: both refuse the same heads.
    match code {
        // No upgrade goes upstream from an HTTP/2 client.
        101 => {
            return Err(ResponseError::Malformed(
                "101 to a request that was no upgrade",
            ));
        }
        100..=199 => return Ok(Parsed::Interim { len }),
        _ => {}
    }
    let status = StatusCode::from_u16(code).map_err(|_| ResponseError::Malformed("status"))?;
    let (framing, keep_alive) = upstream_framing(
        Signs {
            status: code,
            upstream_http11: version == 1,
            length,
            coded,
            chunked_last,
            close: options.close,
            keep_alive: options.keep_alive,
        },
        head_request,
    );

    let mut map = HeaderMap::with_capacity(kept + 1);
    for h in headers {
        let name = h.name.as_bytes();
        let class = names::name(name);
        if class == Name::ContentLength
            || !names::to_client(class)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| ResponseError::Malformed("a header name HTTP/2 cannot carry"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| ResponseError::Malformed("a header value HTTP/2 cannot carry"))?;
        map.append(name, value);
    }
    // As the HTTP/1.1 engine writes it: the body's length, or what a HEAD or 304 says the body
    // would be; a 204 has none to speak of.
    let declared = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty if code != 204 && !coded => length,
        _ => None,
    };
    if let Some(n) = declared {
        map.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(Parsed::Final(UpstreamResponse {
        len,
        status,
        headers: map,
        framing,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fin(raw: &str, head_request: bool) -> UpstreamResponse {
        match parse(raw.as_bytes(), head_request) {
            Ok(Parsed::Final(r)) => r,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn shown(r: &UpstreamResponse) -> Vec<String> {
        r.headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect()
    }

    #[test]
    fn framing_and_what_the_client_sees() {
        type Case = (
            &'static str,
            &'static str,
            bool,
            Framing,
            bool,
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            (
                "sized",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
                false,
                Framing::Length(5),
                true,
                &["x-a: 1", "content-length: 5"],
            ),
            (
                "chunked wins over a length",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Chunked,
                true,
                &[],
            ),
            (
                "not chunked last: to the close",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                false,
                Framing::Close,
                false,
                &[],
            ),
            (
                "no length: to the close",
                "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n",
                false,
                Framing::Close,
                false,
                &["x-a: 1"],
            ),
            (
                "close",
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
                Framing::Length(0),
                false,
                &["content-length: 0"],
            ),
            (
                "HTTP/1.0 without keep-alive",
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                Framing::Length(2),
                false,
                &["content-length: 2"],
            ),
            (
                "HTTP/1.0 with keep-alive",
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
                false,
                Framing::Length(2),
                true,
                &["content-length: 2"],
            ),
            (
                "HEAD keeps the declared length",
                "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
                true,
                Framing::Empty,
                true,
                &["content-length: 50"],
            ),
            (
                "204 has no body and no length",
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                false,
                Framing::Empty,
                true,
                &[],
            ),
            (
                "304",
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
                false,
                Framing::Empty,
                true,
                &["etag: \"x\""],
            ),
            (
                "hop-by-hop and what Connection names",
                "HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: keep-alive, x-hop\r\n\
                 Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nProxy-Authenticate: x\r\n\
                 Trailer: x\r\nX-Stay: 2\r\nContent-Length: 1\r\n\r\n",
                false,
                Framing::Length(1),
                true,
                &["x-stay: 2", "content-length: 1"],
            ),
            (
                "repeated names in order",
                "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
                false,
                Framing::Length(0),
                true,
                &["set-cookie: a=1", "set-cookie: b=2", "content-length: 0"],
            ),
            (
                "agreeing lengths",
                "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Length(3),
                true,
                &["content-length: 3"],
            ),
        ];
        for (name, raw, head, framing, keep_alive, seen) in cases {
            let r = fin(raw, *head);
            assert_eq!(r.framing, *framing, "{name}");
            assert_eq!(r.keep_alive, *keep_alive, "{name}");
            assert_eq!(r.len, raw.len(), "{name}");
            assert_eq!(shown(&r), *seen, "{name}");
        }
    }

    #[test]
    fn what_is_refused_or_skipped() {
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflict",
            ),
            ("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "length"),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\n", "length"),
            ("HTTP/1.1 600 Odd\r\n\r\n", "status"),
            ("HTTP/1.1 099 Odd\r\n\r\n", "status"),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
            ("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "parse"),
            ("HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n", "parse"),
            ("NOT HTTP\r\n\r\n", "parse"),
        ] {
            assert!(parse(raw.as_bytes(), false).is_err(), "{want}: {raw:?}");
        }
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(Parsed::Partial)
        ));
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert!(matches!(
            parse(format!("{interim}HTTP/1.1 200 OK\r\n").as_bytes(), false),
            Ok(Parsed::Interim { len }) if len == interim.len()
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(Parsed::Interim { .. })
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(
            parse(huge.as_bytes(), false).unwrap_err(),
            ResponseError::TooLarge
        );
        assert!(matches!(
            parse(&huge.as_bytes()[..MAX_RESPONSE_HEAD + 10], false),
            Err(ResponseError::TooLarge)
        ));
    }
}
