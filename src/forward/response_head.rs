//! The upstream's HTTP/1.1 response head read for an HTTP/2 client ([`super::links`]): the
//! status, the header map the client may see, and how the body that follows is delimited.
//!
//! Reading the head and its framing lines is `wire::response`'s
//! ([`crate::wire::response::upstream_head`], [`crate::wire::response::FramingLines`]), so is
//! the framing decision ([`crate::wire::response::upstream_framing`]), and which header reaches
//! the client is the rulebook's ([`crate::header_rules::to_client`]): both engines read an
//! upstream's response the same way; only the rendering differs (a header map for hyper's
//! HTTP/2 instead of header lines). Connection-specific headers never reach
//! an HTTP/2 client (RFC 9113 §8.2.2 makes them malformed there): `Connection`, whatever it
//! names, `Transfer-Encoding`, `Upgrade`, `Keep-Alive` and the other hop-by-hop headers are
//! dropped. `Content-Length` is written once, from the agreed value, and only where the
//! HTTP/1.1 engine would write one.

use http::StatusCode;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};

use crate::header_rules::{self as names, Name};
use crate::wire::Framing;
use crate::wire::response::{
    FramingLines, ResponseError, head_lines, upstream_framing, upstream_head,
};

/// Room in the header map, beyond the upstream's lines and `Content-Length`, for what keygate
/// adds before hyper sends it: the five rate-limit headers (`limits::headers`). A map grown
/// on the way out allocates anew and moves every entry, on every response.
const ADDED_ON_THE_WAY_OUT: usize = 5;

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
/// has no body, whatever it declares. `websocket`: the request was a WebSocket handshake, to
/// which a `101` that switches to `websocket` is the final answer (with no body; the caller
/// checks its `Sec-WebSocket-Accept`).
pub fn parse(buf: &[u8], head_request: bool, websocket: bool) -> Result<Parsed, ResponseError> {
    let mut lines = head_lines();
    let Some(head) = upstream_head(buf, &mut lines)? else {
        return Ok(Parsed::Partial);
    };
    let (len, code, headers) = (head.len, head.status, head.headers);
    let mut framing_lines = FramingLines::new(&head);
    let mut kept = 0;
    let mut switched_to_websocket = false;
    for h in headers {
        let class = names::name(h.name.as_bytes());
        if !framing_lines.note(class, h.value)? && names::to_client(class) {
            kept += 1;
        }
        switched_to_websocket |= class == Name::Upgrade && names::is_websocket(h.value);
    }
    // After the lines are checked, as the HTTP/1.1 engine does: both refuse the same heads.
    let switching = match code {
        101 if websocket && switched_to_websocket => true,
        101 if websocket => {
            return Err(ResponseError::Malformed(
                "101 to a WebSocket handshake without Upgrade: websocket",
            ));
        }
        // Only a WebSocket handshake goes upstream as an upgrade from an HTTP/2 client.
        101 => {
            return Err(ResponseError::Malformed(
                "101 to a request that was no upgrade",
            ));
        }
        100..=199 => return Ok(Parsed::Interim { len }),
        _ => false,
    };
    let status = StatusCode::from_u16(code).map_err(|_| ResponseError::Malformed("status"))?;
    let signs = framing_lines.signs();
    // After a `101` the connection carries the tunnel's bytes, not a body.
    let (framing, keep_alive) = if switching {
        (Framing::Empty, false)
    } else {
        upstream_framing(signs, head_request)
    };

    let mut map = HeaderMap::with_capacity(kept + 1 + ADDED_ON_THE_WAY_OUT);
    for h in headers {
        let name = h.name.as_bytes();
        let class = names::name(name);
        if class == Name::ContentLength || !names::to_client(class) || framing_lines.names(name) {
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
        Framing::Empty if code != 204 && !switching && !signs.coded => signs.length,
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
    use crate::wire::response::MAX_RESPONSE_HEAD;

    fn fin(raw: &str, head_request: bool) -> UpstreamResponse {
        match parse(raw.as_bytes(), head_request, false) {
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
    fn a_websocket_handshake_takes_a_101_that_switches_to_websocket() {
        let switched = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                        Upgrade: WebSocket\r\nSec-WebSocket-Accept: a=\r\n\
                        Sec-WebSocket-Protocol: chat\r\nContent-Length: 7\r\n\r\n";
        let Ok(Parsed::Final(r)) = parse(switched.as_bytes(), false, true) else {
            panic!("{switched:?}");
        };
        assert_eq!(r.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            (r.framing, r.keep_alive, r.len),
            (Framing::Empty, false, switched.len())
        );
        // The handshake's own hop-by-hop headers stay behind; no length goes with a tunnel.
        assert_eq!(
            shown(&r),
            ["sec-websocket-accept: a=", "sec-websocket-protocol: chat"]
        );
        for (raw, websocket) in [
            // To anything else than WebSocket, or not switching at all.
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
                true,
            ),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", true),
            // A 101 to a request that asked for none.
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                false,
            ),
        ] {
            assert!(parse(raw.as_bytes(), false, websocket).is_err(), "{raw:?}");
        }
        // Any other answer to a handshake is an ordinary response.
        let refused = "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
        let Ok(Parsed::Final(r)) = parse(refused.as_bytes(), false, true) else {
            panic!("{refused:?}");
        };
        assert_eq!(
            (r.status, r.framing),
            (StatusCode::FORBIDDEN, Framing::Length(2))
        );
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
            assert!(
                parse(raw.as_bytes(), false, false).is_err(),
                "{want}: {raw:?}"
            );
        }
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", false, false),
            Ok(Parsed::Partial)
        ));
        let interim = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert!(matches!(
            parse(format!("{interim}HTTP/1.1 200 OK\r\n").as_bytes(), false, false),
            Ok(Parsed::Interim { len }) if len == interim.len()
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", false, false),
            Ok(Parsed::Interim { .. })
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(
            parse(huge.as_bytes(), false, false).unwrap_err(),
            ResponseError::TooLarge
        );
        assert!(matches!(
            parse(&huge.as_bytes()[..MAX_RESPONSE_HEAD + 10], false, false),
            Err(ResponseError::TooLarge)
        ));
    }
}
