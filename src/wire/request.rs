//! Request heads from clients, parsed by `httparse` into an index over the connection's read
//! buffer, and the message-framing rules of RFC 9112 §6 applied to them.
//!
//! Framing is where proxies get smuggled through: two hops that disagree about where a body
//! ends see different requests. keygate accepts one reading only and refuses the rest with
//! 400 before anything is forwarded: `Transfer-Encoding` must be exactly `chunked` (no other
//! coding, not on HTTP/1.0, never beside `Content-Length`), and `Content-Length` must be
//! digits, repeated only with the same value. The upstream then gets a head keygate wrote
//! itself, with framing keygate chose.

use std::mem::MaybeUninit;
use std::ops::Range;

use http::Method;

use crate::head::Head;
use crate::header_rules::{self as names, Name, list};

/// Header lines a request may carry (HAProxy's default is 101): a larger head is refused
/// with 431 before it is looked at.
pub const MAX_HEADER_LINES: usize = 100;

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    Close,
}

/// Why a request head was refused before admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Request line and headers over `server.max_header_bytes`, or over [`MAX_HEADER_LINES`].
    TooLarge,
    /// Not an HTTP/1.x request keygate will forward; the text says what is wrong.
    Invalid(&'static str),
}

/// One header field: byte ranges of its name and value in the read buffer.
#[derive(Debug, Clone)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// A request head, indexed. One per client connection, refilled for every request so that
/// parsing allocates nothing once the connection has seen its largest head.
#[derive(Debug)]
pub struct RequestHead {
    pub len: usize,
    method: Method,
    /// HTTP/1.1 (or HTTP/1.0).
    pub http11: bool,
    path: Range<usize>,
    query: Option<Range<usize>>,
    /// An absolute-form target (`GET http://host/path`): its authority and path-and-query,
    /// which replace `Host` and the target (RFC 9112 §3.2.2). Rare, so owned.
    absolute: Option<Absolute>,
    fields: Vec<Field>,
    /// Header names `Connection` lists (beside `close`, `keep-alive`, `upgrade`): hop-by-hop.
    named: Vec<Range<usize>>,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
    pub expect_continue: bool,
    /// The protocol an `Upgrade` request asks for (`Connection: upgrade` + `Upgrade`).
    upgrade: Option<Range<usize>>,
}

#[derive(Debug)]
struct Absolute {
    authority: String,
    path: String,
    query: Option<String>,
}

/// A parsed head together with the buffer it indexes.
#[derive(Clone, Copy)]
pub struct ParsedRequest<'a> {
    pub head: &'a RequestHead,
    pub buf: &'a [u8],
    path: &'a str,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self {
            len: 0,
            method: Method::GET,
            http11: true,
            path: 0..0,
            query: None,
            absolute: None,
            fields: Vec::with_capacity(16),
            named: Vec::new(),
            framing: Framing::Empty,
            keep_alive: true,
            expect_continue: false,
            upgrade: None,
        }
    }
}

impl RequestHead {
    /// Parses the head at the start of `buf`: `Ok(true)` when it is complete (then `len` is
    /// its length), `Ok(false)` when more bytes are needed.
    pub fn parse(&mut self, buf: &[u8], max_len: usize) -> Result<bool, HeadError> {
        // Uninitialized: filling 100 empty headers first would cost more than parsing.
        let mut lines = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADER_LINES];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut lines) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_len => {
                return Err(HeadError::TooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Version) => {
                return Err(HeadError::Invalid(
                    "only HTTP/1.0 and HTTP/1.1 are spoken here",
                ));
            }
            Err(_) => return Err(HeadError::Invalid("the request head is malformed")),
        };
        if len > max_len {
            return Err(HeadError::TooLarge);
        }
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - buf.as_ptr() as usize;
            start..start + s.len()
        };
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(HeadError::Invalid("the request line is malformed"));
        };
        self.len = len;
        self.method = Method::from_bytes(method.as_bytes())
            .map_err(|_| HeadError::Invalid("the method is malformed"))?;
        if self.method == Method::CONNECT {
            return Err(HeadError::Invalid("CONNECT is not supported"));
        }
        self.http11 = version == 1;
        if !target.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HeadError::Invalid("the request target must be ASCII"));
        }
        // A fragment has no place in a request target; a client that sends one anyway has it
        // cut off, as hyper does, so that `/admin#x` is authorized and forwarded as `/admin`.
        let target = target.split_once('#').map_or(target, |(before, _)| before);
        let target_range = at(target.as_bytes());
        self.absolute = None;
        if target.starts_with('/') {
            let (path, query) = match target.find('?') {
                Some(q) => (
                    target_range.start..target_range.start + q,
                    Some(target_range.start + q + 1..target_range.end),
                ),
                None => (target_range, None),
            };
            (self.path, self.query) = (path, query);
        } else {
            self.absolute = Some(absolute(target)?);
            (self.path, self.query) = (0..0, None);
        }

        self.fields.clear();
        self.named.clear();
        self.upgrade = None;
        self.expect_continue = false;
        let mut framing = FramingRules::default();
        let mut options = names::Options::default();
        let mut upgrade = None;
        for line in req.headers.iter() {
            let name = line.name.as_bytes();
            self.fields.push(Field {
                name: at(name),
                value: at(line.value),
            });
            let value = line.value;
            let class = names::name(name);
            framing.line(class, value)?;
            match class {
                Name::Connection => options.add(value, |token| self.named.push(at(token))),
                Name::Upgrade => upgrade = Some(at(value)),
                Name::Expect => {
                    self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
                }
                _ => {}
            }
        }
        self.framing = framing.finish(self.http11, self.absolute.is_some())?;
        self.keep_alive = !options.close && (self.http11 || options.keep_alive);
        // An HTTP/1.0 server must ignore `Upgrade` (RFC 9110 §7.8). Only WebSocket is passed
        // on: after a `101` keygate copies bytes blindly, and an upgrade to another HTTP (h2c)
        // would carry requests to the upstream that no key check ever saw. Any other upgrade
        // is dropped with the hop-by-hop headers and the request served as it is.
        let websocket = |r: &Range<usize>| names::is_websocket(&buf[r.clone()]);
        if self.http11 && options.upgrade && upgrade.as_ref().is_some_and(websocket) {
            self.upgrade = upgrade;
        }
        self.expect_continue &= self.http11 && self.framing != Framing::Empty;
        Ok(true)
    }

    pub fn method(&self) -> &Method {
        &self.method
    }
}

/// The framing rules above, fed one header line at a time: `Content-Length` digits only and
/// repeated only with the same value, `Transfer-Encoding` exactly `chunked` and never with
/// `Content-Length` or on HTTP/1.0, exactly one `Host` on HTTP/1.1 (or an absolute-form
/// target). keygate's own parser and the HTTP/1.1 clients hyper serves (when the upstream
/// speaks HTTP/2) are held to the same rules through this one type.
#[derive(Debug, Default)]
pub struct FramingRules {
    length: Option<u64>,
    chunked: bool,
    hosts: usize,
}

impl FramingRules {
    /// One header line; `class` is its [`names::name`].
    pub fn line(&mut self, class: Name, value: &[u8]) -> Result<(), HeadError> {
        match class {
            Name::ContentLength => {
                for part in list(value) {
                    let n =
                        digits(part).ok_or(HeadError::Invalid("Content-Length is malformed"))?;
                    if self.length.is_some_and(|seen| seen != n) {
                        return Err(HeadError::Invalid(
                            "the request carries conflicting Content-Length values",
                        ));
                    }
                    self.length = Some(n);
                }
            }
            Name::TransferEncoding => {
                let mut any = false;
                for coding in list(value) {
                    if self.chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(HeadError::Invalid(
                            "only Transfer-Encoding: chunked is accepted",
                        ));
                    }
                    self.chunked = true;
                    any = true;
                }
                if !any {
                    return Err(HeadError::Invalid("Transfer-Encoding is empty"));
                }
            }
            Name::Host => self.hosts += 1,
            _ => {}
        }
        Ok(())
    }

    /// The body's framing once every line is in.
    pub fn finish(self, http11: bool, absolute_target: bool) -> Result<Framing, HeadError> {
        if http11 && self.hosts != 1 && !absolute_target {
            return Err(HeadError::Invalid(
                "an HTTP/1.1 request needs exactly one Host header",
            ));
        }
        if self.hosts > 1 {
            return Err(HeadError::Invalid(
                "the request has more than one Host header",
            ));
        }
        Ok(match (self.chunked, self.length) {
            (true, Some(_)) => {
                return Err(HeadError::Invalid(
                    "Content-Length and Transfer-Encoding together are refused",
                ));
            }
            (true, None) if !http11 => {
                return Err(HeadError::Invalid(
                    "Transfer-Encoding is not allowed in HTTP/1.0",
                ));
            }
            (true, None) => Framing::Chunked,
            (false, None) => Framing::Empty,
            // `Content-Length: 0` stays one: some servers want it on a POST without a body.
            (false, Some(n)) => Framing::Length(n),
        })
    }
}

impl<'a> ParsedRequest<'a> {
    /// `head` as parsed from `buf`.
    pub fn new(head: &'a RequestHead, buf: &'a [u8]) -> Self {
        let path = match &head.absolute {
            Some(abs) => &abs.path,
            None => text(buf, &head.path),
        };
        Self { head, buf, path }
    }

    pub fn query(&self) -> Option<&'a str> {
        match &self.head.absolute {
            Some(abs) => abs.query.as_deref(),
            None => self.head.query.as_ref().map(|q| text(self.buf, q)),
        }
    }

    /// The authority of an absolute-form target, which stands for `Host`.
    pub fn target_authority(&self) -> Option<&'a str> {
        self.head.absolute.as_ref().map(|a| a.authority.as_str())
    }

    /// Every header line as (name, value), in the order received.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.head
            .fields
            .iter()
            .map(move |f| (&buf[f.name.clone()], &buf[f.value.clone()]))
    }

    /// Every header line as (name, value, the line as received from the name to the end of
    /// the value), in the order received.
    pub fn lines(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8], &'a [u8])> + 'a {
        let buf = self.buf;
        self.head.fields.iter().map(move |f| {
            // An empty value: the name and its colon (the parser allows nothing between).
            let line = match f.value.is_empty() {
                true => &buf[f.name.start..f.name.end + 1],
                false => &buf[f.name.start..f.value.end],
            };
            (&buf[f.name.clone()], &buf[f.value.clone()], line)
        })
    }

    /// Whether `Connection` lists `name` (other than its own options): a hop-by-hop header.
    pub fn connection_names(&self, name: &[u8]) -> bool {
        self.head
            .named
            .iter()
            .any(|r| self.buf[r.clone()].eq_ignore_ascii_case(name))
    }

    pub fn upgrade(&self) -> Option<&'a [u8]> {
        self.head.upgrade.as_ref().map(|r| &self.buf[r.clone()])
    }
}

impl Head for ParsedRequest<'_> {
    fn method(&self) -> &Method {
        &self.head.method
    }

    fn path(&self) -> &str {
        self.path
    }

    fn values<'b>(&'b self, name: &'static str) -> impl Iterator<Item = &'b [u8]> + 'b {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn head_len(&self) -> usize {
        self.head.len
    }

    fn declared_length(&self) -> Option<u64> {
        match self.head.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// The target was checked to be ASCII.
fn text<'a>(buf: &'a [u8], range: &Range<usize>) -> &'a str {
    std::str::from_utf8(&buf[range.clone()]).unwrap_or_default()
}

/// `http://authority/path?query` → its parts; anything else is refused.
fn absolute(target: &str) -> Result<Absolute, HeadError> {
    let bad = HeadError::Invalid("the request target must be a path or an http(s) URL");
    let uri: http::Uri = target.parse().map_err(|_| bad)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad);
    }
    let authority = uri.authority().ok_or(bad)?.as_str().to_owned();
    Ok(Absolute {
        authority,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
    })
}

/// A `Content-Length`: ASCII digits only (no sign, no spaces inside), fitting in a u64.
pub fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<RequestHead, HeadError> {
        let mut head = RequestHead::default();
        match head.parse(raw.as_bytes(), 32 * 1024)? {
            true => Ok(head),
            false => Err(HeadError::Invalid("partial")),
        }
    }

    #[test]
    fn framing_table() {
        use Framing::*;
        let bad = |why| Err(HeadError::Invalid(why));
        let cases: &[(&str, &str, Result<Framing, HeadError>)] = &[
            ("no body", "", Ok(Empty)),
            ("length", "Content-Length: 12\r\n", Ok(Length(12))),
            ("zero length", "Content-Length: 0\r\n", Ok(Length(0))),
            (
                "same length twice",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                Ok(Length(5)),
            ),
            (
                "same length in a list",
                "Content-Length: 5, 5\r\n",
                Ok(Length(5)),
            ),
            (
                "two lengths",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                bad("the request carries conflicting Content-Length values"),
            ),
            (
                "signed length",
                "Content-Length: +5\r\n",
                bad("Content-Length is malformed"),
            ),
            (
                "hex length",
                "Content-Length: 0x5\r\n",
                bad("Content-Length is malformed"),
            ),
            (
                "overflowing length",
                "Content-Length: 99999999999999999999\r\n",
                bad("Content-Length is malformed"),
            ),
            ("chunked", "Transfer-Encoding: chunked\r\n", Ok(Chunked)),
            (
                "chunked any case",
                "transfer-encoding: CHUNKED\r\n",
                Ok(Chunked),
            ),
            (
                "chunked twice",
                "Transfer-Encoding: chunked, chunked\r\n",
                bad("only Transfer-Encoding: chunked is accepted"),
            ),
            (
                "chunked on two lines",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                bad("only Transfer-Encoding: chunked is accepted"),
            ),
            (
                "gzip then chunked",
                "Transfer-Encoding: gzip, chunked\r\n",
                bad("only Transfer-Encoding: chunked is accepted"),
            ),
            (
                "chunked then gzip",
                "Transfer-Encoding: chunked, gzip\r\n",
                bad("only Transfer-Encoding: chunked is accepted"),
            ),
            (
                "obfuscated chunked",
                "Transfer-Encoding: xchunked\r\n",
                bad("only Transfer-Encoding: chunked is accepted"),
            ),
            (
                "empty coding",
                "Transfer-Encoding: \r\n",
                bad("Transfer-Encoding is empty"),
            ),
            (
                "length and chunked",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                bad("Content-Length and Transfer-Encoding together are refused"),
            ),
        ];
        for (name, headers, want) in cases {
            let raw = format!("POST /x HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
            assert_eq!(parse(&raw).map(|h| h.framing), *want, "{name}");
        }
        let raw = "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse(raw).map(|h| h.framing),
            bad("Transfer-Encoding is not allowed in HTTP/1.0")
        );
    }

    #[test]
    fn request_line_and_host_table() {
        let ok = |raw: &str| parse(raw).is_ok();
        let cases: &[(&str, &str, bool)] = &[
            (
                "origin form",
                "GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n",
                true,
            ),
            ("no host", "GET /a HTTP/1.1\r\n\r\n", false),
            (
                "two hosts",
                "GET /a HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
                false,
            ),
            ("1.0 without host", "GET /a HTTP/1.0\r\n\r\n", true),
            ("absolute form", "GET http://h:1/a?q HTTP/1.1\r\n\r\n", true),
            (
                "ftp url",
                "GET ftp://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
                false,
            ),
            ("asterisk", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", false),
            (
                "connect",
                "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
                false,
            ),
            ("http/2 line", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", false),
            (
                "utf-8 path",
                "GET /\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n",
                false,
            ),
            (
                "space before colon",
                "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
                false,
            ),
            (
                "obs-fold",
                "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
                false,
            ),
            (
                "custom method",
                "PURGE /a HTTP/1.1\r\nHost: h\r\n\r\n",
                true,
            ),
        ];
        for (name, raw, want) in cases {
            assert_eq!(ok(raw), *want, "{name}: {:?}", parse(raw));
        }
        let head = parse("GET http://h:1/a/b?q=1 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        let req = ParsedRequest::new(&head, b"");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query(), Some("q=1"));
        assert_eq!(req.target_authority(), Some("h:1"));
    }

    #[test]
    fn fragments_are_cut_off_and_empty_values_keep_their_colon() {
        let raw = "GET /admin?x=1#frag HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Spaces:   \r\n\r\n";
        let head = parse(raw).unwrap();
        let req = ParsedRequest::new(&head, raw.as_bytes());
        assert_eq!(req.path(), "/admin");
        assert_eq!(req.query(), Some("x=1"));
        let fragment = "GET /admin#x HTTP/1.1\r\nHost: h\r\n\r\n";
        let head2 = parse(fragment).unwrap();
        assert_eq!(
            ParsedRequest::new(&head2, fragment.as_bytes()).path(),
            "/admin"
        );
        let lines: Vec<&[u8]> = req.lines().map(|(_, _, line)| line).collect();
        assert_eq!(lines, [&b"Host: h"[..], b"X-Empty:", b"X-Spaces:"]);
    }

    #[test]
    fn connection_options_table() {
        // (request, keep_alive, upgrade, expect_continue)
        let cases: &[(&str, bool, Option<&str>, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", true, None, false),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
                None,
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false, None, false),
            (
                "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                true,
                None,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
                true,
                Some("websocket"),
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
                true,
                None,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
                true,
                None,
                false,
            ),
            (
                "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                false,
                None,
                false,
            ),
            (
                "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
                true,
                None,
                true,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
                true,
                None,
                false,
            ),
        ];
        for (raw, keep_alive, upgrade, expect) in cases {
            let head = parse(raw).unwrap();
            let req = ParsedRequest::new(&head, raw.as_bytes());
            assert_eq!(head.keep_alive, *keep_alive, "{raw:?}");
            assert_eq!(req.upgrade(), upgrade.map(str::as_bytes), "{raw:?}");
            assert_eq!(head.expect_continue, *expect, "{raw:?}");
        }
        let raw = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n";
        let head = parse(raw).unwrap();
        let req = ParsedRequest::new(&head, raw.as_bytes());
        assert!(req.connection_names(b"x-hop"));
        assert!(!req.connection_names(b"keep-alive"));
    }

    #[test]
    fn heads_over_the_caps() {
        let mut head = RequestHead::default();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert_eq!(head.parse(big.as_bytes(), 1024), Err(HeadError::TooLarge));
        // Still incomplete, but already over the cap: no point waiting for the rest.
        assert_eq!(
            head.parse(&big.as_bytes()[..1500], 1024),
            Err(HeadError::TooLarge)
        );
        assert_eq!(head.parse(&big.as_bytes()[..500], 1024), Ok(false));
        let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..MAX_HEADER_LINES {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            head.parse(many.as_bytes(), 1 << 20),
            Err(HeadError::TooLarge)
        );
    }

    proptest::proptest! {
        /// Any bytes give a head, a wait for more, or a refusal: never a panic, and a parsed
        /// head's index stays inside the buffer.
        #[test]
        fn garbage_never_panics_the_parser(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            prefix in proptest::sample::select(vec!["", "GET / HTTP/1.1\r\nHost: h\r\n", "POST /x HTTP/1.0\r\n"]),
        ) {
            let mut raw = prefix.as_bytes().to_vec();
            raw.extend_from_slice(&input);
            let mut head = RequestHead::default();
            if let Ok(true) = head.parse(&raw, 1024) {
                proptest::prop_assert!(head.len <= raw.len());
                let req = ParsedRequest::new(&head, &raw);
                for (name, value) in req.fields() {
                    proptest::prop_assert!(!name.is_empty() && name.iter().all(|b| b.is_ascii_graphic()));
                    proptest::prop_assert!(!value.contains(&b'\n'));
                }
                let _ = (req.path(), req.query(), req.upgrade());
            }
        }
    }

    #[test]
    fn digits_table() {
        assert_eq!(digits(b"0"), Some(0));
        assert_eq!(digits(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            digits(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(digits(b""), None);
        assert_eq!(digits(b"1 2"), None);
        assert_eq!(digits(b"-1"), None);
    }
}
