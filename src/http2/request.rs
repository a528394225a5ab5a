//! A client's request header block: decoded (HPACK, RFC 7541) and held to the rules of RFC 9113
//! §8, into a [`RequestHead`] the request path's stages read like keygate's HTTP/1.1 heads.
//!
//! What an upstream reading the forwarded HTTP/1.1 request could take differently is refused
//! here, as `h2` (hyper's HTTP/2) refuses it today, so the engine that replaces it keeps the
//! guarantee: names that are not lowercase tokens; values with NUL, CR, LF or another
//! control character, or that begin or end with whitespace (§8.2.1); the connection-specific
//! fields (`Connection`, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
//! a `TE` other than `trailers`: §8.2.2); pseudo-header fields after a regular one, twice,
//! unknown or missing (§8.3); a `:path` that is not an origin-form target (`*` only with
//! `OPTIONS`) or holds a byte outside visible ASCII (it becomes the upstream's request line);
//! a `Host` that names another authority than `:authority`, or two of them; `Content-Length`
//! as keygate's HTTP/1.1 parser reads it ([`FramingRules`]). Each is a malformed request
//! (§8.1.1): a stream error, never the connection's.
//!
//! The whole block is always decoded, a malformed request's too: the decoder's table must
//! stay the client's (§4.3), or every later block on the connection would read wrong.
//!
//! HPACK itself is `loona-hpack` (a maintained fork of the `hpack` crate, the codec of the
//! loona HTTP/2 server, which passes h2spec); keygate bounds what it may cost: the dynamic
//! table to the SETTINGS_HEADER_TABLE_SIZE keygate announces, the decoded list to
//! SETTINGS_MAX_HEADER_LIST_SIZE (counted as §6.5.2 counts it). The block's own size is the
//! connection layer's to bound, before it is decoded.

use std::borrow::Cow;
use std::ops::Range;

use http::Method;

use crate::head::Head;
use crate::header_rules::{self, Name};
use crate::wire::{Framing, HeadError, request::FramingRules};

/// The HPACK table size keygate announces and allows a client's encoder (the RFC's default).
pub const HEADER_TABLE_SIZE: usize = 4096;

/// What a header block costs when it breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// HPACK could not decode the block: the connection's table is lost with it, a
    /// connection error of type COMPRESSION_ERROR (§4.3).
    #[error("the header block does not decode: {0}")]
    Compression(String),
    /// The decoded fields are over SETTINGS_MAX_HEADER_LIST_SIZE: the request is refused
    /// (431), the connection goes on.
    #[error("the header list is larger than allowed")]
    TooLarge,
    /// A malformed request (§8.1.1): a stream error of type PROTOCOL_ERROR.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// One regular field: byte ranges of its name and value in the head's buffer.
#[derive(Debug, Clone)]
struct Field {
    name: Range<usize>,
    value: Range<usize>,
}

/// A request's header block, checked: the pseudo-header fields apart, the regular fields in
/// the order received, every byte of them in one buffer.
#[derive(Debug, Clone)]
pub struct RequestHead {
    buf: Vec<u8>,
    fields: Vec<Field>,
    method: Method,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    /// `:path`, query included; empty for a CONNECT without `:protocol`.
    target: Range<usize>,
    /// Where the path ends in `target` (at its `?`, or its end).
    path_end: usize,
    /// `:protocol` (RFC 8441: an extended CONNECT, a WebSocket's).
    protocol: Option<Range<usize>>,
    content_length: Option<u64>,
    /// The list's size as §6.5.2 counts it: each field's name and value, and 32 more.
    list_size: usize,
}

impl RequestHead {
    fn text(&self, range: &Range<usize>) -> &str {
        // Pseudo-header values are checked to be visible ASCII before they are kept.
        std::str::from_utf8(&self.buf[range.clone()]).unwrap_or_default()
    }

    pub fn scheme(&self) -> Option<&str> {
        self.scheme.as_ref().map(|r| self.text(r))
    }

    /// `:authority`, or the `Host` field that stood for it.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(|r| self.text(r))
    }

    /// `:path` whole, query included: what the upstream's request line carries.
    pub fn target(&self) -> &str {
        self.text(&self.target)
    }

    /// `:protocol` of an extended CONNECT (`websocket`).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_ref().map(|r| self.text(r))
    }

    /// The regular fields, in the order received (cookie crumbs apart, as sent: §8.2.3).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|f| (&self.buf[f.name.clone()], &self.buf[f.value.clone()]))
    }

    /// The header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    pub fn list_size(&self) -> usize {
        self.list_size
    }
}

impl Head for RequestHead {
    fn method(&self) -> &Method {
        &self.method
    }

    fn path(&self) -> &str {
        &self.target()[..self.path_end]
    }

    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        // Names are lowercase here (a rule of the block) and asked for in lowercase.
        self.fields()
            .filter(move |(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    fn head_len(&self) -> usize {
        // As the HTTP/1.1 head it stands for: "METHOD target HTTP/1.1\r\n", "name: value\r\n".
        let fields: usize = self
            .fields
            .iter()
            .map(|f| f.name.len() + f.value.len() + 4)
            .sum();
        self.method.as_str().len() + self.target.len() + 12 + fields
    }

    fn declared_length(&self) -> Option<u64> {
        self.content_length
    }
}

/// A connection's decoder of request header blocks.
pub struct Decoder {
    hpack: loona_hpack::Decoder<'static>,
    max_list_size: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_list_size", &self.max_list_size)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// `max_list_size`: the SETTINGS_MAX_HEADER_LIST_SIZE keygate announces.
    pub fn new(max_list_size: usize) -> Self {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            hpack,
            max_list_size,
        }
    }

    /// Decodes a request's whole header block (HEADERS and CONTINUATION fragments joined).
    pub fn request(&mut self, block: &[u8]) -> Result<RequestHead, BlockError> {
        let mut reading = Reading::new(self.max_list_size);
        self.hpack
            .decode_with_cb(block, |name, value| reading.field(name, value))
            .map_err(|e| BlockError::Compression(format!("{e:?}")))?;
        reading.finish()
    }
}

/// A block under way: the head as far as it goes, and the first rule broken (after which
/// nothing more is kept, though the block is still decoded to its end).
struct Reading {
    head: RequestHead,
    method: Option<Range<usize>>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    protocol: Option<Range<usize>>,
    framing: FramingRules,
    host: Option<Range<usize>>,
    regular_seen: bool,
    broken: Option<BlockError>,
    max_list_size: usize,
}

impl Reading {
    fn new(max_list_size: usize) -> Self {
        Self {
            head: RequestHead {
                buf: Vec::with_capacity(256),
                fields: Vec::with_capacity(16),
                method: Method::GET,
                scheme: None,
                authority: None,
                target: 0..0,
                path_end: 0,
                protocol: None,
                content_length: None,
                list_size: 0,
            },
            method: None,
            scheme: None,
            authority: None,
            path: None,
            protocol: None,
            framing: FramingRules::default(),
            host: None,
            regular_seen: false,
            broken: None,
            max_list_size,
        }
    }

    fn field(&mut self, name: Cow<[u8]>, value: Cow<[u8]>) {
        if self.broken.is_some() {
            return;
        }
        self.head.list_size += name.len() + value.len() + 32;
        if self.head.list_size > self.max_list_size {
            self.broken = Some(BlockError::TooLarge);
            return;
        }
        if let Err(reason) = self.take(&name, &value) {
            self.broken = Some(BlockError::Malformed(reason));
        }
    }

    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.head.buf.len();
        self.head.buf.extend_from_slice(bytes);
        start..self.head.buf.len()
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return Err("a pseudo-header field after a regular field");
            }
            if !value.iter().all(|b| (0x21..0x7f).contains(b)) {
                return Err("a pseudo-header field with a byte outside visible ASCII");
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                b"protocol" => &mut self.protocol,
                _ => return Err("an unknown pseudo-header field"),
            };
            if slot.is_some() {
                return Err("a pseudo-header field twice");
            }
            let start = self.head.buf.len();
            self.head.buf.extend_from_slice(value);
            *slot = Some(start..self.head.buf.len());
            return Ok(());
        }
        self.regular_seen = true;
        if name.is_empty() || !name.iter().all(|&b| is_lowercase_tchar(b)) {
            return Err("a field name that is not a lowercase token");
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err("a field value with a control character");
        }
        if value.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
            || value.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
        {
            return Err("a field value that begins or ends with whitespace");
        }
        let class = header_rules::name(name);
        match class {
            Name::Connection | Name::Upgrade | Name::TransferEncoding => {
                return Err("a connection-specific field");
            }
            Name::HopByHop if name == b"keep-alive" || name == b"proxy-connection" => {
                return Err("a connection-specific field");
            }
            Name::HopByHop if name == b"te" && value != b"trailers" => {
                return Err("TE other than trailers");
            }
            _ => {}
        }
        self.framing.line(class, value).map_err(framing_reason)?;
        let name = self.keep(name);
        let value = self.keep(value);
        if class == Name::Host {
            self.host = Some(value.clone());
        }
        self.head.fields.push(Field { name, value });
        Ok(())
    }

    fn finish(mut self) -> Result<RequestHead, BlockError> {
        if let Some(broken) = self.broken.take() {
            return Err(broken);
        }
        self.check().map_err(BlockError::Malformed)?;
        Ok(self.head)
    }

    fn check(&mut self) -> Result<(), &'static str> {
        let method = self.method.clone().ok_or("no :method")?;
        self.head.method =
            Method::from_bytes(&self.head.buf[method]).map_err(|_| ":method is not a token")?;
        let framing = std::mem::take(&mut self.framing)
            .finish(false, true)
            .map_err(framing_reason)?;
        self.head.content_length = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let head = &mut self.head;
        head.scheme = self.scheme.take();
        head.protocol = self.protocol.take();
        head.authority = self.authority.take();
        if head.method == Method::CONNECT && head.protocol.is_none() {
            // §8.5: only `:authority`; keygate refuses the method itself later, with its error.
            if head.scheme.is_some() || self.path.is_some() {
                return Err("a CONNECT with :scheme or :path");
            }
            if head.authority.is_none() {
                return Err("a CONNECT without :authority");
            }
        } else {
            if head.protocol.is_some() && head.method != Method::CONNECT {
                return Err(":protocol on a request that is not a CONNECT");
            }
            if head.scheme.is_none() {
                return Err("no :scheme");
            }
            let target = match self.path.take() {
                Some(path) if !path.is_empty() => path,
                _ => return Err("no :path, or an empty one"),
            };
            let bytes = &head.buf[target.clone()];
            head.path_end = bytes.iter().position(|&b| b == b'?').unwrap_or(bytes.len());
            let origin_form = bytes[0] == b'/';
            let asterisk = bytes == b"*" && head.method == Method::OPTIONS;
            head.target = target;
            if !origin_form && !asterisk {
                return Err(":path is not an origin-form target");
            }
        }
        if let Some(host) = self.host.clone() {
            match &self.head.authority {
                Some(authority)
                    if !self.head.buf[authority.clone()]
                        .eq_ignore_ascii_case(&self.head.buf[host.clone()]) =>
                {
                    return Err("Host names another authority than :authority");
                }
                Some(_) => {}
                // §8.3.1: Host stands for a missing :authority, as in HTTP/1.1.
                None => {
                    if !self.head.buf[host.clone()]
                        .iter()
                        .all(|b| (0x21..0x7f).contains(b))
                    {
                        return Err("a Host with a byte outside visible ASCII");
                    }
                    self.head.authority = Some(host);
                }
            }
        }
        Ok(())
    }
}

/// What the HTTP/1.1 parser's framing rules say of a field, as a malformed request's reason.
fn framing_reason(e: HeadError) -> &'static str {
    match e {
        HeadError::Invalid(reason) => reason,
        HeadError::TooLarge => "the header list is too large",
    }
}

/// A `tchar` of RFC 9110 §5.6.2 that is not an uppercase letter.
fn is_lowercase_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

#[cfg(test)]
mod tests;
