//! What keygate writes to an HTTP/1.1 client: the upstream's response head, rewritten (framing
//! chosen for this client, hop-by-hop headers gone, rate-limit headers added), and keygate's own
//! JSON refusals, whose status, headers and body come from [`Reject`].

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;

use super::body::Encoding;
use super::request::{Framing, digits};
use crate::header_rules::{self as names, Name, list};
use crate::limits::{self, ResetStyle, WindowState};
use crate::reject::Reject;

/// An upstream response head larger than this, or with more lines, is a broken upstream.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_LINES: usize = 256;

/// The rate-limit window a response reports, when the key is on a plan.
#[derive(Clone, Copy)]
pub struct Limit<'a> {
    pub window: &'a WindowState,
    pub now_secs: u64,
    pub style: ResetStyle,
}

/// What the client's request says about its response.
pub struct ResponseContext<'a> {
    /// A `HEAD` request: the response has no body, whatever it declares.
    pub head_request: bool,
    pub client_http11: bool,
    /// The client connection may stay open after this response (the client wants it, its
    /// request body is consumed, keygate is not stopping).
    pub keep_alive: bool,
    /// The request was an upgrade and went upstream as one.
    pub upgrade: bool,
    pub limit: Option<Limit<'a>>,
    /// Headers keygate adds to a final response unless the upstream sent its own of the same
    /// name (a key due for rotation: `Deprecation`, `Sunset`).
    pub added: &'a [(http::HeaderName, http::HeaderValue)],
    /// [`crate::cors`]'s headers for a browser's request, in place of the upstream's own
    /// `Access-Control-*`; empty: the upstream's go through as sent.
    pub cors: &'a [(http::HeaderName, http::HeaderValue)],
}

/// A response head from the upstream, as far as it has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Partial,
    /// A 1xx before the final response: `len` bytes of head, written to `out` if the client
    /// should see it.
    Interim {
        len: usize,
    },
    Final(ResponseHead),
}

/// A final response head, written to `out`.
#[derive(Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    /// How the upstream delimits the body.
    pub framing: Framing,
    /// How it goes to the client.
    pub encoding: Encoding,
    pub client_keep_alive: bool,
    /// The upstream connection can carry another request once the body is read.
    pub upstream_keep_alive: bool,
    /// `101 Switching Protocols` to the requested upgrade: the connections are spliced next.
    pub switching: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the upstream's response head is larger than {MAX_RESPONSE_HEAD} bytes")]
    TooLarge,
    #[error("the upstream's response is malformed: {0}")]
    Malformed(&'static str),
}

/// Room for an upstream head's lines, on the stack and uninitialized: filling 256 empty
/// headers first would cost more than parsing.
pub type HeadLines<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_RESPONSE_LINES];

pub const fn head_lines<'b>() -> HeadLines<'b> {
    [const { MaybeUninit::uninit() }; MAX_RESPONSE_LINES]
}

/// An upstream's response head as it came, checked to be whole, within bounds and with a
/// status a client may see. Both engines start from it.
pub struct UpstreamHead<'h, 'b> {
    pub len: usize,
    pub http11: bool,
    pub status: u16,
    pub reason: Option<&'b str>,
    pub headers: &'h [httparse::Header<'b>],
}

/// Reads the response head at the start of `buf` into `lines`; `None` while it is partial.
pub fn upstream_head<'h, 'b>(
    buf: &'b [u8],
    lines: &'h mut HeadLines<'b>,
) -> Result<Option<UpstreamHead<'h, 'b>>, ResponseError> {
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, lines);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_RESPONSE_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed("the head does not parse")),
    };
    let httparse::Response {
        version,
        code,
        reason,
        headers,
    } = resp;
    let (Some(version), Some(status)) = (version, code) else {
        return Err(ResponseError::Malformed("no status line"));
    };
    // httparse reads any three digits; a client must only ever see a valid status line.
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("a status code outside 100-599"));
    }
    Ok(Some(UpstreamHead {
        len,
        http11: version == 1,
        status,
        reason,
        headers,
    }))
}

/// What an upstream head's framing lines (`Content-Length`, `Transfer-Encoding`,
/// `Connection`) say, taken in line by line. Both engines read them here, so they agree on
/// where every body ends and which headers are the connection's own.
pub struct FramingLines<'b> {
    signs: Signs,
    options: names::Options,
    /// Headers a `Connection` line names: hop-by-hop, never passed on.
    named: Vec<&'b [u8]>,
}

impl<'b> FramingLines<'b> {
    pub fn new(head: &UpstreamHead<'_, 'b>) -> Self {
        Self {
            signs: Signs {
                status: head.status,
                upstream_http11: head.http11,
                length: None,
                coded: false,
                chunked_last: false,
                close: false,
                keep_alive: false,
            },
            options: names::Options::default(),
            named: Vec::new(),
        }
    }

    /// Takes in one line whose name is of `class`: `false` when it is no framing line.
    /// Copies of `Content-Length` that disagree are refused.
    pub fn note(&mut self, class: Name, value: &'b [u8]) -> Result<bool, ResponseError> {
        match class {
            Name::ContentLength => {
                for part in list(value) {
                    let n = digits(part).ok_or(ResponseError::Malformed("Content-Length"))?;
                    if self.signs.length.is_some_and(|seen| seen != n) {
                        return Err(ResponseError::Malformed("conflicting Content-Length"));
                    }
                    self.signs.length = Some(n);
                }
            }
            Name::TransferEncoding => {
                for coding in list(value) {
                    self.signs.coded = true;
                    self.signs.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
            Name::Connection => self.options.add(value, |token| self.named.push(token)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A `Connection` line named some header.
    pub fn names_any(&self) -> bool {
        !self.named.is_empty()
    }

    /// A `Connection` line named this header.
    pub fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Everything the lines said.
    pub fn signs(&self) -> Signs {
        Signs {
            close: self.options.close,
            keep_alive: self.options.keep_alive,
            ..self.signs
        }
    }
}

/// Parses the response head at the start of `buf` and writes the client's version of it to
/// `out`.
pub fn response_head(
    buf: &[u8],
    out: &mut Vec<u8>,
    cx: &ResponseContext,
) -> Result<Parsed, ResponseError> {
    let mut lines = head_lines();
    let Some(head) = upstream_head(buf, &mut lines)? else {
        return Ok(Parsed::Partial);
    };
    let UpstreamHead {
        len,
        status,
        reason,
        headers,
        ..
    } = head;
    // The line as received, from its name to the end of its value.
    fn raw<'b>(buf: &'b [u8], h: &httparse::Header<'b>) -> &'b [u8] {
        let at = |s: &[u8]| s.as_ptr() as usize - buf.as_ptr() as usize;
        let name = at(h.name.as_bytes());
        match h.value.is_empty() {
            // The name and its colon (the parser allows nothing between).
            true => &buf[name..name + h.name.len() + 1],
            false => &buf[name..at(h.value) + h.value.len()],
        }
    }
    out.reserve(len + 256);
    let start = out.len();
    status_line(out, status, reason);
    let fields = out.len();

    // One pass: framing and connection options noted, the rest written as it came.
    let mut framing_lines = FramingLines::new(&head);
    let mut present = 0u8;
    let mut has_date = false;
    let mut switched_to_websocket = false;
    for h in headers {
        let value = h.value;
        let class = names::name(h.name.as_bytes());
        if framing_lines.note(class, value)? {
            continue;
        }
        match class {
            Name::Upgrade => {
                switched_to_websocket |= names::is_websocket(value);
                continue;
            }
            Name::HopByHop => continue,
            Name::Date => has_date = true,
            Name::RateLimit(i) => present |= 1 << i,
            Name::Other
                if !cx.cors.is_empty() && crate::cors::is_cors_header(h.name.as_bytes()) =>
            {
                continue;
            }
            _ => {}
        }
        out.extend_from_slice(raw(buf, h));
        out.extend_from_slice(b"\r\n");
    }
    if framing_lines.names_any() {
        // Rare: `Connection` names more headers, which may have come before it.
        out.truncate(fields);
        for h in headers {
            let name = h.name.as_bytes();
            let dropped = matches!(
                names::name(name),
                Name::ContentLength
                    | Name::TransferEncoding
                    | Name::Connection
                    | Name::HopByHop
                    | Name::Upgrade
            ) || framing_lines.names(name)
                || (!cx.cors.is_empty() && crate::cors::is_cors_header(name));
            if !dropped {
                out.extend_from_slice(raw(buf, h));
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    if (100..200).contains(&status) {
        return match status {
            101 if cx.upgrade && switched_to_websocket => {
                // The handshake itself: its Connection and Upgrade go to the client as sent.
                out.truncate(fields);
                for h in headers {
                    out.extend_from_slice(raw(buf, h));
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
                Ok(Parsed::Final(ResponseHead {
                    len,
                    status,
                    framing: Framing::Empty,
                    encoding: Encoding::Raw,
                    client_keep_alive: false,
                    upstream_keep_alive: false,
                    switching: true,
                }))
            }
            // Only a switch to what was asked for: to anything else, the bytes copied next
            // could be requests no key check saw.
            101 if cx.upgrade => Err(ResponseError::Malformed(
                "101 to a WebSocket handshake without Upgrade: websocket",
            )),
            101 => Err(ResponseError::Malformed(
                "101 to a request that was no upgrade",
            )),
            // keygate answered any `Expect: 100-continue` itself; an HTTP/1.0 client gets no
            // interim response at all.
            _ if status == 100 || !cx.client_http11 => {
                out.truncate(start);
                Ok(Parsed::Interim { len })
            }
            _ => {
                out.extend_from_slice(b"\r\n");
                Ok(Parsed::Interim { len })
            }
        };
    }

    let signs = framing_lines.signs();
    let Plan {
        framing,
        encoding,
        upstream_keep_alive,
        client_keep_alive,
    } = plan(signs, cx);

    match framing {
        Framing::Length(n) => length_line(out, n),
        // A HEAD or 304 says what the body would be; a 204 has none to speak of.
        Framing::Empty if status != 204 => {
            if let (Some(n), false) = (signs.length, signs.coded) {
                length_line(out, n);
            }
        }
        Framing::Empty => {}
        Framing::Chunked | Framing::Close => {
            if encoding == Encoding::Chunked {
                line(out, b"transfer-encoding", b"chunked");
            }
        }
    }
    for (name, value) in cx.cors {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in cx.added {
        if !headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()))
        {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    finish(
        out,
        cx.limit,
        present,
        has_date,
        client_keep_alive,
        cx.client_http11,
    );
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        framing,
        encoding,
        client_keep_alive,
        upstream_keep_alive,
        switching: false,
    }))
}

/// What a final response head says about its body and its connection.
#[derive(Debug, Clone, Copy)]
pub struct Signs {
    pub status: u16,
    pub upstream_http11: bool,
    /// `Content-Length` (all copies agreeing).
    pub length: Option<u64>,
    /// A `Transfer-Encoding` was sent; `chunked_last`: its last coding is `chunked`.
    pub coded: bool,
    pub chunked_last: bool,
    /// `Connection: close` / `Connection: keep-alive`.
    pub close: bool,
    pub keep_alive: bool,
}

/// How a final response's body is delimited, how it goes to the client, and which
/// connections stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    framing: Framing,
    encoding: Encoding,
    upstream_keep_alive: bool,
    client_keep_alive: bool,
}

/// The framing decision, pure: RFC 9112 §6.3 in its order for the upstream's body (a
/// `Transfer-Encoding` overrides any `Content-Length`, and one not ending in `chunked` runs to
/// the close), re-chunked for an HTTP/1.1 client when the upstream's length is unknown, and
/// each connection kept only when both ends know where the body ends.
fn plan(signs: Signs, cx: &ResponseContext) -> Plan {
    let (framing, upstream_keep_alive) = upstream_framing(signs, cx.head_request);
    let encoding = match framing {
        Framing::Chunked | Framing::Close if cx.client_http11 => Encoding::Chunked,
        _ => Encoding::Raw,
    };
    // An HTTP/1.0 client learns where an undelimited body ends from the close.
    let delimited = !matches!(framing, Framing::Chunked | Framing::Close);
    Plan {
        framing,
        encoding,
        upstream_keep_alive,
        client_keep_alive: cx.keep_alive && (cx.client_http11 || delimited),
    }
}

/// The upstream's side of [`plan`], for every engine that reads an upstream's HTTP/1.1
/// response (`forward::response_head` too): how the body is delimited, and whether the
/// upstream connection can carry another request once it is read.
pub fn upstream_framing(signs: Signs, head_request: bool) -> (Framing, bool) {
    let framing = if head_request || signs.status == 204 || signs.status == 304 {
        Framing::Empty
    } else if signs.coded {
        if signs.chunked_last {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match signs.length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let upstream_keep_alive =
        framing != Framing::Close && !signs.close && (signs.upstream_http11 || signs.keep_alive);
    (framing, upstream_keep_alive)
}

/// A refusal, whole: head and JSON body; `extra`: headers keygate adds ([`crate::cors`]'s,
/// so a browser page can read it; a due key's rotation reminder).
pub fn refusal(
    out: &mut Vec<u8>,
    reject: &Reject,
    limit: Option<Limit>,
    extra: &[(http::HeaderName, http::HeaderValue)],
    keep_alive: bool,
    client_http11: bool,
) {
    let body = reject.body();
    status_line(out, reject.status().as_u16(), None);
    line(out, b"content-type", b"application/json");
    length_line(out, body.len() as u64);
    for (name, value) in reject.headers().chain(extra.iter().cloned()) {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(out, limit, 0, false, keep_alive, client_http11);
    out.extend_from_slice(body.as_bytes());
}

/// keygate's own answer to a CORS preflight: `204 No Content` with [`crate::cors`]'s headers.
pub fn preflight(
    out: &mut Vec<u8>,
    cors: &[(http::HeaderName, http::HeaderValue)],
    keep_alive: bool,
    client_http11: bool,
) {
    status_line(out, 204, None);
    for (name, value) in cors {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    finish(out, None, 0, false, keep_alive, client_http11);
}

/// Turns a head written by [`response_head`] for a connection that stays open into one that
/// says it closes: the only way its `connection` line can change after the fact.
pub fn close_instead(out: &mut Vec<u8>) {
    const KEEP: &[u8] = b"connection: keep-alive\r\n\r\n";
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut at = end + 2;
    if out[..end + 4].ends_with(KEEP) {
        at = end + 4 - KEEP.len();
    }
    let body = out.split_off(end + 4);
    out.truncate(at);
    line(out, b"connection", b"close");
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
}

/// The interim response to `Expect: 100-continue`, once the request is admitted.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Rate-limit headers, `Date` if the upstream sent none, the connection's fate, the blank line.
fn finish(
    out: &mut Vec<u8>,
    limit: Option<Limit>,
    present: u8,
    has_date: bool,
    keep_alive: bool,
    client_http11: bool,
) {
    if let Some(l) = limit {
        limits::headers::write(out, l.window, l.now_secs, l.style, present);
    }
    if !has_date {
        date(out);
    }
    if !keep_alive {
        line(out, b"connection", b"close");
    } else if !client_http11 {
        line(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let canonical = || {
        StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
    };
    let reason = reason.filter(|r| !r.is_empty()).or_else(canonical);
    out.extend_from_slice(reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn length_line(out: &mut Vec<u8>, n: u64) {
    line(
        out,
        b"content-length",
        itoa::Buffer::new().format(n).as_bytes(),
    );
}

/// `date: <IMF-fixdate>`, formatted once per second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            }
        }
        if *at == secs {
            line(out, b"date", text);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> ResponseContext<'static> {
        ResponseContext {
            head_request: false,
            client_http11: true,
            keep_alive: true,
            upgrade: false,
            limit: None,
            added: &[],
            cors: &[],
        }
    }

    fn rewrite(raw: &str, cx: &ResponseContext) -> (Result<Parsed, ResponseError>, String) {
        let mut out = Vec::new();
        let parsed = response_head(raw.as_bytes(), &mut out, cx);
        (parsed, String::from_utf8(out).unwrap())
    }

    fn fin(raw: &str, cx: &ResponseContext) -> (ResponseHead, String) {
        match rewrite(raw, cx) {
            (Ok(Parsed::Final(r)), text) => (r, text),
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn the_framing_decision() {
        use Encoding::{Chunked as Rechunk, Raw};
        use Framing::*;
        let signs = Signs {
            status: 200,
            upstream_http11: true,
            length: None,
            coded: false,
            chunked_last: false,
            close: false,
            keep_alive: false,
        };
        let cx = |head_request, client_http11, keep_alive| ResponseContext {
            head_request,
            client_http11,
            keep_alive,
            ..context()
        };
        let plan_of = |framing, encoding, upstream_keep_alive, client_keep_alive| Plan {
            framing,
            encoding,
            upstream_keep_alive,
            client_keep_alive,
        };
        // (what the upstream said, HEAD?, client HTTP/1.1?, client keep-alive?) ->
        // (framing, to the client as, upstream stays open, client stays open)
        #[rustfmt::skip]
        let table: &[(Signs, (bool, bool, bool), Plan)] = &[
            (Signs { length: Some(5), ..signs }, (false, true, true), plan_of(Length(5), Raw, true, true)),
            // Transfer-Encoding wins over Content-Length.
            (Signs { length: Some(5), coded: true, chunked_last: true, ..signs },
                (false, true, true), plan_of(Chunked, Rechunk, true, true)),
            // A coding that does not end in chunked runs to the close.
            (Signs { coded: true, ..signs }, (false, true, true), plan_of(Close, Rechunk, false, true)),
            // No length: to the close, re-chunked for an HTTP/1.1 client...
            (signs, (false, true, true), plan_of(Close, Rechunk, false, true)),
            // ...and the close tells an HTTP/1.0 client where it ends.
            (signs, (false, false, true), plan_of(Close, Raw, false, false)),
            (Signs { coded: true, chunked_last: true, ..signs },
                (false, false, true), plan_of(Chunked, Raw, true, false)),
            (Signs { length: Some(5), ..signs }, (false, false, true), plan_of(Length(5), Raw, true, true)),
            // No body whatever the head declares: HEAD, 204, 304.
            (Signs { length: Some(5), ..signs }, (true, true, true), plan_of(Empty, Raw, true, true)),
            (Signs { status: 204, coded: true, chunked_last: true, ..signs },
                (false, true, true), plan_of(Empty, Raw, true, true)),
            (Signs { status: 304, ..signs }, (false, true, true), plan_of(Empty, Raw, true, true)),
            // The upstream's connection options.
            (Signs { length: Some(5), close: true, ..signs },
                (false, true, true), plan_of(Length(5), Raw, false, true)),
            (Signs { length: Some(5), upstream_http11: false, ..signs },
                (false, true, true), plan_of(Length(5), Raw, false, true)),
            (Signs { length: Some(5), upstream_http11: false, keep_alive: true, ..signs },
                (false, true, true), plan_of(Length(5), Raw, true, true)),
            // The client's connection closes when it has to, whatever the framing.
            (Signs { length: Some(5), ..signs }, (false, true, false), plan_of(Length(5), Raw, true, false)),
        ];
        for &(signs, (head, http11, keep), expected) in table {
            assert_eq!(
                plan(signs, &cx(head, http11, keep)),
                expected,
                "{signs:?} {head} {http11} {keep}"
            );
        }
    }

    #[test]
    fn framing_table() {
        use Framing::*;
        let http10 = ResponseContext {
            client_http11: false,
            ..context()
        };
        let head = ResponseContext {
            head_request: true,
            ..context()
        };
        // (response, context, upstream framing, encoding to the client, client keeps alive,
        // upstream keeps alive, framing header the client gets)
        type Case<'a> = (
            &'a str,
            &'a ResponseContext<'a>,
            Framing,
            Encoding,
            bool,
            bool,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                &context(),
                Length(5),
                Encoding::Raw,
                true,
                true,
                "content-length: 5",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &context(),
                Chunked,
                Encoding::Chunked,
                true,
                true,
                "transfer-encoding: chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                &context(),
                Close,
                Encoding::Chunked,
                true,
                false,
                "transfer-encoding: chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                &context(),
                Close,
                Encoding::Chunked,
                true,
                false,
                "transfer-encoding: chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                &context(),
                Chunked,
                Encoding::Chunked,
                true,
                true,
                "transfer-encoding: chunked",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &http10,
                Chunked,
                Encoding::Raw,
                false,
                true,
                "connection: close",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                &http10,
                Length(5),
                Encoding::Raw,
                true,
                true,
                "connection: keep-alive",
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                &context(),
                Empty,
                Encoding::Raw,
                true,
                true,
                "",
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
                &context(),
                Empty,
                Encoding::Raw,
                true,
                true,
                "content-length: 50",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n",
                &head,
                Empty,
                Encoding::Raw,
                true,
                true,
                "content-length: 50",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                &context(),
                Length(5),
                Encoding::Raw,
                true,
                false,
                "content-length: 5",
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                &context(),
                Length(5),
                Encoding::Raw,
                true,
                false,
                "content-length: 5",
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
                &context(),
                Length(5),
                Encoding::Raw,
                true,
                true,
                "content-length: 5",
            ),
        ];
        for (raw, cx, framing, encoding, client, upstream, header) in cases {
            let (r, text) = fin(raw, cx);
            assert_eq!(
                (
                    r.framing,
                    r.encoding,
                    r.client_keep_alive,
                    r.upstream_keep_alive
                ),
                (*framing, *encoding, *client, *upstream),
                "{raw:?}"
            );
            assert!(text.contains(header), "{raw:?} gave {text:?}");
            assert!(text.ends_with("\r\n\r\n"), "{text:?}");
            assert_eq!(r.len, raw.len());
        }
    }

    #[test]
    fn broken_responses_are_errors() {
        let cases = [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 099 Too Early\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 000 Nothing\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 600 Beyond\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 999 Beyond\r\nContent-Length: 0\r\n\r\n",
        ];
        for raw in cases {
            assert!(rewrite(raw, &context()).0.is_err(), "{raw:?}");
        }
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_RESPONSE_HEAD)
        );
        assert_eq!(rewrite(&huge, &context()).0, Err(ResponseError::TooLarge));
        assert_eq!(
            rewrite("HTTP/1.1 200 OK\r\nX: y", &context()).0,
            Ok(Parsed::Partial)
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
                   Keep-Alive: timeout=5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
                   Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n";
        let (_, text) = fin(raw, &context());
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
             Date: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 0\r\n\r\n"
        );
        // An empty value keeps its colon.
        let (_, text) = fin(
            "HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n",
            &context(),
        );
        assert!(text.contains("\r\nX-Empty:\r\n"), "{text}");
        // No Date from the upstream: keygate adds one.
        let (_, text) = fin("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &context());
        assert!(text.contains("\r\ndate: "), "{text}");
    }

    #[test]
    fn interim_responses_and_upgrades() {
        let (parsed, text) = rewrite(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200",
            &context(),
        );
        assert_eq!(parsed, Ok(Parsed::Interim { len: 40 }));
        assert_eq!(text, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        let http10 = ResponseContext {
            client_http11: false,
            ..context()
        };
        let (_, text) = rewrite("HTTP/1.1 103 Early Hints\r\n\r\n", &http10);
        assert_eq!(text, "", "an HTTP/1.0 client gets no interim response");
        let (parsed, text) = rewrite("HTTP/1.1 100 Continue\r\n\r\n", &context());
        assert_eq!(parsed, Ok(Parsed::Interim { len: 25 }));
        assert_eq!(text, "");

        let upgrade = ResponseContext {
            upgrade: true,
            ..context()
        };
        let raw =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let (r, text) = fin(raw, &upgrade);
        assert!(r.switching);
        assert_eq!(text, raw);
        // A switch to anything but what was asked for is no handshake.
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
        ] {
            assert!(rewrite(raw, &upgrade).0.is_err(), "{raw:?}");
        }
    }

    #[test]
    fn rate_limit_headers_are_added_unless_the_upstream_set_them() {
        let window = WindowState {
            name: "per_hour",
            limit: 10,
            remaining: 9,
            reset_secs: 60,
            window_secs: 3600,
        };
        let cx = ResponseContext {
            limit: Some(Limit {
                window: &window,
                now_secs: 0,
                style: ResetStyle::Delta,
            }),
            ..context()
        };
        let raw = "HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 5\r\nContent-Length: 0\r\n\r\n";
        let (_, text) = fin(raw, &cx);
        assert!(text.contains("X-RateLimit-Limit: 5\r\n"), "{text}");
        assert!(!text.contains("x-ratelimit-limit"), "{text}");
        assert!(text.contains("x-ratelimit-remaining: 9\r\n"), "{text}");
        assert!(
            text.contains("ratelimit: \"per_hour\";r=9;t=60\r\n"),
            "{text}"
        );
    }

    #[test]
    fn added_headers_go_out_unless_the_upstream_sent_its_own() {
        let added = [
            (
                http::HeaderName::from_static("deprecation"),
                http::HeaderValue::from_static("@1700000000"),
            ),
            (
                http::HeaderName::from_static("sunset"),
                http::HeaderValue::from_static("Wed, 01 Jan 2031 00:00:00 GMT"),
            ),
        ];
        let cx = ResponseContext {
            added: &added,
            ..context()
        };
        let (_, text) = fin("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &cx);
        assert!(text.contains("\r\ndeprecation: @1700000000\r\n"), "{text}");
        assert!(
            text.contains("\r\nsunset: Wed, 01 Jan 2031 00:00:00 GMT\r\n"),
            "{text}"
        );
        // The upstream deprecating an endpoint itself wins.
        let (_, text) = fin(
            "HTTP/1.1 200 OK\r\nSunset: Thu, 01 Jan 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            &cx,
        );
        assert_eq!(text.matches("unset:").count(), 1, "{text}");
        assert!(text.contains("Sunset: Thu, 01 Jan 2026"), "{text}");
        assert!(text.contains("deprecation: @1700000000"), "{text}");
    }

    #[test]
    fn a_kept_alive_head_can_be_turned_into_a_closing_one() {
        let http10 = ResponseContext {
            client_http11: false,
            ..context()
        };
        for cx in [context(), http10] {
            let mut out = Vec::new();
            let raw = "HTTP/1.1 200 OK\r\nDate: x\r\nContent-Length: 2\r\n\r\nok";
            response_head(raw.as_bytes(), &mut out, &cx).unwrap();
            out.extend_from_slice(b"ok");
            close_instead(&mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text,
                "HTTP/1.1 200 OK\r\nDate: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    }

    #[test]
    fn refusals_are_whole_json_responses() {
        let mut out = Vec::new();
        refusal(&mut out, &Reject::InvalidApiKey, None, &[], true, true);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(
            head.contains("www-authenticate: Bearer realm=\"keygate\""),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "invalid_api_key");

        let mut out = Vec::new();
        refusal(
            &mut out,
            &Reject::KeyStoreUnavailable,
            None,
            &[],
            false,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
}
