//! The HTTP/2 frame layer (RFC 9113 §4 and §6), as a server reads a client's frames and
//! writes its own.
//!
//! [`read`] takes a frame from the front of a buffer without copying it: its payload is
//! borrowed from the buffer, so a header block or a body piece goes on without passing
//! through a frame struct of its own. It applies every rule that one frame alone decides (its
//! size against our SETTINGS_MAX_FRAME_SIZE, stream 0 or not, fixed lengths, padding, the
//! values a SETTINGS frame may carry, a client never pushing nor opening an even stream), so
//! the connection layer is left only with the rules that need its state: which stream is in
//! which state, what may come inside a header block, flow control.
//!
//! A broken rule is a [`FrameError`]: either an error of the whole connection (GOAWAY with
//! its code, then close) or, for the few that RFC 9113 lets stay with one stream (a PRIORITY
//! frame of the wrong size or on itself, a stream's WINDOW_UPDATE of 0), an error of that
//! stream (RST_STREAM), with the frame's length so the connection can read on past it.
//!
//! What a frame does not decide, the caller must: a HEADERS frame whose priority names its
//! own stream is a stream error too (§5.3.1), but its header block must still be decoded
//! first, or the connection's HPACK state would part from the client's; so it is returned as
//! a frame, and [`Priority::on_itself`] tells.
//!
//! Priority signals (the PRIORITY frame, a HEADERS frame's priority fields) are read, checked
//! and otherwise ignored, as RFC 9113 §5.3.2 allows: keygate serves streams in the order
//! their work finishes.

/// What a client sends first (§3.4), before its first SETTINGS frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The length of every frame's header (§4.1).
pub const HEADER_LEN: usize = 9;

/// The largest payload either end may send until the other's SETTINGS allow more, and the
/// least SETTINGS_MAX_FRAME_SIZE may say (§4.2, §6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;

/// The most SETTINGS_MAX_FRAME_SIZE may say (§6.5.2).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;

/// The largest a flow-control window may grow, and the most SETTINGS_INITIAL_WINDOW_SIZE may
/// say (§6.9.1, §6.5.2).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// The frame types of RFC 9113 §6.
mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// The flags this layer reads and writes; one bit means different things in different
/// frame types (END_STREAM and ACK are both 0x1).
mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// The settings' identifiers (§6.5.2; ENABLE_CONNECT_PROTOCOL: RFC 8441 §3).
mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// An error code of RST_STREAM and GOAWAY (§7). Codes this endpoint does not know are kept
/// as they came: a peer's unknown code must not be treated as anything special.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: Self = Self(0x0);
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    pub const INTERNAL_ERROR: Self = Self(0x2);
    pub const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub const SETTINGS_TIMEOUT: Self = Self(0x4);
    pub const STREAM_CLOSED: Self = Self(0x5);
    pub const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub const REFUSED_STREAM: Self = Self(0x7);
    pub const CANCEL: Self = Self(0x8);
    pub const COMPRESSION_ERROR: Self = Self(0x9);
    pub const CONNECT_ERROR: Self = Self(0xa);
    pub const ENHANCE_YOUR_CALM: Self = Self(0xb);
    pub const INADEQUATE_SECURITY: Self = Self(0xc);
    pub const HTTP_1_1_REQUIRED: Self = Self(0xd);

    /// The code's name in RFC 9113, for logs.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl std::fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "ErrorCode({:#x})", self.0),
        }
    }
}

/// A priority signal (§5.3.2, deprecated by RFC 9113 and ignored by keygate once checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub exclusive: bool,
    pub depends_on: u32,
    pub weight: u8,
}

impl Priority {
    fn read(bytes: [u8; 5]) -> Self {
        let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        Self {
            exclusive: word & 0x8000_0000 != 0,
            depends_on: word & MAX_WINDOW,
            weight: bytes[4],
        }
    }

    /// Whether the signal makes `stream` depend on itself, a stream error of type
    /// PROTOCOL_ERROR (§5.3.1).
    pub fn on_itself(&self, stream: u32) -> bool {
        self.depends_on == stream
    }
}

/// The values one SETTINGS frame sets, each checked against the range §6.5.2 allows. A value
/// sent twice in one frame counts as its last (settings are applied in order); identifiers
/// this endpoint does not know are ignored, as they must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
    pub enable_connect_protocol: Option<bool>,
}

impl Settings {
    fn read(payload: &[u8]) -> Result<Self, FrameError> {
        let mut settings = Self::default();
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => settings.header_table_size = Some(value),
                setting::ENABLE_PUSH => {
                    settings.enable_push =
                        Some(flag_value(value, "SETTINGS_ENABLE_PUSH neither 0 nor 1")?)
                }
                setting::MAX_CONCURRENT_STREAMS => settings.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                    return Err(connection(
                        ErrorCode::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ));
                }
                setting::INITIAL_WINDOW_SIZE => settings.initial_window_size = Some(value),
                setting::MAX_FRAME_SIZE
                    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
                {
                    return Err(connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                    ));
                }
                setting::MAX_FRAME_SIZE => settings.max_frame_size = Some(value),
                setting::MAX_HEADER_LIST_SIZE => settings.max_header_list_size = Some(value),
                setting::ENABLE_CONNECT_PROTOCOL => {
                    settings.enable_connect_protocol = Some(flag_value(
                        value,
                        "SETTINGS_ENABLE_CONNECT_PROTOCOL neither 0 nor 1",
                    )?)
                }
                _ => {}
            }
        }
        Ok(settings)
    }

    /// The frame's entries, in the order [`read`] would apply them.
    fn entries(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (setting::HEADER_TABLE_SIZE, self.header_table_size),
            (setting::ENABLE_PUSH, self.enable_push.map(u32::from)),
            (setting::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (setting::INITIAL_WINDOW_SIZE, self.initial_window_size),
            (setting::MAX_FRAME_SIZE, self.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            (
                setting::ENABLE_CONNECT_PROTOCOL,
                self.enable_connect_protocol.map(u32::from),
            ),
        ]
        .into_iter()
        .filter_map(|(id, value)| value.map(|v| (id, v)))
    }
}

/// A boolean setting: 0 or 1, anything else a connection error (§6.5.2, RFC 8441 §3).
fn flag_value(value: u32, reason: &'static str) -> Result<bool, FrameError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(connection(ErrorCode::PROTOCOL_ERROR, reason)),
    }
}

/// One frame from a client, its payload borrowed from the buffer it was read from. Stream
/// identifiers have their reserved bit cleared (§4.1: it is ignored on receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `flow_len` is the whole payload's length, padding included: what the frame takes from
    /// the flow-control windows (§6.9.1), which `data.len()` would understate.
    Data {
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
        flow_len: u32,
    },
    /// A header block's first fragment; CONTINUATION frames carry the rest unless
    /// `end_headers`. Padding removed, the priority fields read.
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
        block: &'a [u8],
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    Settings(Settings),
    SettingsAck,
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: &'a [u8],
    },
    /// `stream` 0: the connection's window.
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        block: &'a [u8],
    },
    /// A frame of a type this endpoint does not know (extension frames): to be ignored
    /// (§4.1, §5.5), except inside a header block, where nothing but CONTINUATION may come
    /// (§6.10): the connection layer's rule, since only it knows a block is open.
    Unknown {
        kind: u8,
        stream: u32,
    },
}

/// What [`read`] found at the front of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole frame, `len` bytes of the buffer (header included).
    Frame { frame: Frame<'a>, len: usize },
    /// Not a whole frame yet; the frame's header, once read, has passed the size check, so
    /// the bytes still to come are bounded by the caller's SETTINGS_MAX_FRAME_SIZE.
    Incomplete,
}

/// A rule of RFC 9113 the frame broke, and what it costs (§5.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The connection ends: GOAWAY with `code`, then close.
    #[error("connection error {code:?}: {reason}")]
    Connection {
        code: ErrorCode,
        reason: &'static str,
    },
    /// Only `stream` ends (RST_STREAM with `code`); the connection reads on past the frame's
    /// `len` bytes.
    #[error("stream {stream} error {code:?}: {reason}")]
    Stream {
        stream: u32,
        code: ErrorCode,
        reason: &'static str,
        len: usize,
    },
}

fn connection(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::Connection { code, reason }
}

/// Reads the frame at the front of `buf`, a client's, whose payload may be at most
/// `max_frame_size` (the SETTINGS_MAX_FRAME_SIZE this endpoint has announced, or
/// [`DEFAULT_MAX_FRAME_SIZE`] until the client has acknowledged it). A frame declaring more is
/// refused from its header alone, before its payload is waited for.
pub fn read(buf: &[u8], max_frame_size: u32) -> Result<Read<'_>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Read::Incomplete);
    };
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let (kind, flags) = (header[3], header[4]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & MAX_WINDOW;
    if len > max_frame_size {
        return Err(connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "a frame longer than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let total = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(Read::Incomplete);
    };
    let frame = match kind {
        kind::DATA => {
            on_a_stream(stream, "a DATA frame on stream 0")?;
            Frame::Data {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                data: unpad(payload, flags, 0)?,
                flow_len: len,
            }
        }
        kind::HEADERS => {
            on_a_stream(stream, "a HEADERS frame on stream 0")?;
            if stream.is_multiple_of(2) {
                // §5.1.1: a client opens odd streams only, and keygate never pushes.
                return Err(connection(
                    ErrorCode::PROTOCOL_ERROR,
                    "a HEADERS frame on an even stream",
                ));
            }
            let prioritized = flags & flag::PRIORITY != 0;
            let fields = unpad(payload, flags, if prioritized { 5 } else { 0 })?;
            let (priority, block) = match fields.split_first_chunk::<5>() {
                Some((priority, block)) if prioritized => (Some(Priority::read(*priority)), block),
                _ => (None, fields),
            };
            Frame::Headers {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                end_headers: flags & flag::END_HEADERS != 0,
                priority,
                block,
            }
        }
        kind::PRIORITY => {
            on_a_stream(stream, "a PRIORITY frame on stream 0")?;
            let Ok(&fields) = <&[u8; 5]>::try_from(payload) else {
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::FRAME_SIZE_ERROR,
                    reason: "a PRIORITY frame not 5 bytes long",
                    len: total,
                });
            };
            let priority = Priority::read(fields);
            if priority.on_itself(stream) {
                return Err(FrameError::Stream {
                    stream,
                    code: ErrorCode::PROTOCOL_ERROR,
                    reason: "a stream that depends on itself",
                    len: total,
                });
            }
            Frame::Priority { stream, priority }
        }
        kind::RST_STREAM => {
            on_a_stream(stream, "a RST_STREAM frame on stream 0")?;
            Frame::RstStream {
                stream,
                code: ErrorCode(word(payload, "a RST_STREAM frame not 4 bytes long")?),
            }
        }
        kind::SETTINGS => {
            on_stream_0(stream, "a SETTINGS frame on a stream")?;
            if flags & flag::ACK != 0 {
                if len != 0 {
                    return Err(connection(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "a SETTINGS acknowledgement with a payload",
                    ));
                }
                Frame::SettingsAck
            } else if !len.is_multiple_of(6) {
                return Err(connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "a SETTINGS frame not a multiple of 6 bytes long",
                ));
            } else {
                Frame::Settings(Settings::read(payload)?)
            }
        }
        kind::PUSH_PROMISE => {
            // §8.4: a client cannot push.
            return Err(connection(
                ErrorCode::PROTOCOL_ERROR,
                "a PUSH_PROMISE frame from a client",
            ));
        }
        kind::PING => {
            on_stream_0(stream, "a PING frame on a stream")?;
            let Ok(&data) = <&[u8; 8]>::try_from(payload) else {
                return Err(connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "a PING frame not 8 bytes long",
                ));
            };
            Frame::Ping {
                ack: flags & flag::ACK != 0,
                data,
            }
        }
        kind::GOAWAY => {
            on_stream_0(stream, "a GOAWAY frame on a stream")?;
            let Some((fields, debug)) = payload.split_first_chunk::<8>() else {
                return Err(connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "a GOAWAY frame shorter than 8 bytes",
                ));
            };
            let [a, b, c, d, e, f, g, h] = *fields;
            Frame::GoAway {
                last_stream: u32::from_be_bytes([a, b, c, d]) & MAX_WINDOW,
                code: ErrorCode(u32::from_be_bytes([e, f, g, h])),
                debug,
            }
        }
        kind::WINDOW_UPDATE => {
            let increment = word(payload, "a WINDOW_UPDATE frame not 4 bytes long")? & MAX_WINDOW;
            if increment == 0 {
                // §6.9: an error of what the window belongs to.
                let reason = "a WINDOW_UPDATE of 0";
                return Err(match stream {
                    0 => connection(ErrorCode::PROTOCOL_ERROR, reason),
                    _ => FrameError::Stream {
                        stream,
                        code: ErrorCode::PROTOCOL_ERROR,
                        reason,
                        len: total,
                    },
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            on_a_stream(stream, "a CONTINUATION frame on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: flags & flag::END_HEADERS != 0,
                block: payload,
            }
        }
        kind => Frame::Unknown { kind, stream },
    };
    Ok(Read::Frame { frame, len: total })
}

fn on_a_stream(stream: u32, reason: &'static str) -> Result<(), FrameError> {
    match stream {
        0 => Err(connection(ErrorCode::PROTOCOL_ERROR, reason)),
        _ => Ok(()),
    }
}

fn on_stream_0(stream: u32, reason: &'static str) -> Result<(), FrameError> {
    match stream {
        0 => Ok(()),
        _ => Err(connection(ErrorCode::PROTOCOL_ERROR, reason)),
    }
}

/// A 4-byte payload as a number, or FRAME_SIZE_ERROR.
fn word(payload: &[u8], reason: &'static str) -> Result<u32, FrameError> {
    match <[u8; 4]>::try_from(payload) {
        Ok(bytes) => Ok(u32::from_be_bytes(bytes)),
        Err(_) => Err(connection(ErrorCode::FRAME_SIZE_ERROR, reason)),
    }
}

/// The payload of a DATA or HEADERS frame without its padding (§6.1, §6.2), which must leave
/// room for the `fixed` bytes of fields that follow the pad length.
fn unpad(payload: &[u8], flags: u8, fixed: usize) -> Result<&[u8], FrameError> {
    let (pad, rest) = if flags & flag::PADDED != 0 {
        match payload.split_first() {
            Some((&pad, rest)) => (usize::from(pad), rest),
            None => {
                return Err(connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "a padded frame without room for its pad length",
                ));
            }
        }
    } else {
        (0, payload)
    };
    if rest.len() < fixed {
        return Err(connection(
            ErrorCode::FRAME_SIZE_ERROR,
            "a HEADERS frame without room for its priority",
        ));
    }
    match rest.len().checked_sub(pad) {
        Some(end) if end >= fixed => Ok(&rest[..end]),
        _ => Err(connection(
            ErrorCode::PROTOCOL_ERROR,
            "padding as long as the frame's payload or longer",
        )),
    }
}

// What a server writes. Each function appends whole frames to `out`; the payloads given must
// fit the client's SETTINGS_MAX_FRAME_SIZE, which the callers know (a header block is split
// here, since only this layer knows where CONTINUATION frames begin).

fn header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// This endpoint's SETTINGS.
pub fn write_settings(out: &mut Vec<u8>, settings: &Settings) {
    let at = out.len();
    header(out, 0, kind::SETTINGS, 0, 0);
    for (id, value) in settings.entries() {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    let len = ((out.len() - at - HEADER_LEN) as u32).to_be_bytes();
    out[at..at + 3].copy_from_slice(&len[1..]);
}

/// The acknowledgement of a client's SETTINGS (§6.5.3).
pub fn write_settings_ack(out: &mut Vec<u8>) {
    header(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// A PING: an acknowledgement carries the client's 8 bytes back (§6.7).
pub fn write_ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) {
    header(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&data);
}

pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    header(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(debug);
}

pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    header(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&code.0.to_be_bytes());
}

/// `stream` 0: the connection's window. `increment` must be 1..=2^31-1.
pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    debug_assert!((1..=MAX_WINDOW).contains(&increment));
    header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&increment.to_be_bytes());
}

/// A header block, as one HEADERS frame and as many CONTINUATION frames after it as
/// `max_frame_size` (the client's) requires (§6.10).
pub fn write_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    let max = max_frame_size.max(DEFAULT_MAX_FRAME_SIZE) as usize;
    let mut pieces = block.chunks(max);
    let first = pieces.next().unwrap_or_default();
    let mut rest = pieces.peekable();
    let end_headers = if rest.peek().is_none() {
        flag::END_HEADERS
    } else {
        0
    };
    let end_stream = if end_stream { flag::END_STREAM } else { 0 };
    header(
        out,
        first.len(),
        kind::HEADERS,
        end_headers | end_stream,
        stream,
    );
    out.extend_from_slice(first);
    while let Some(piece) = rest.next() {
        let end_headers = if rest.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        header(out, piece.len(), kind::CONTINUATION, end_headers, stream);
        out.extend_from_slice(piece);
    }
}

/// The header of a DATA frame of `len` bytes, which the caller sends after it (from wherever
/// the bytes are, without copying them here).
pub fn write_data_header(out: &mut Vec<u8>, stream: u32, len: usize, end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    header(out, len, kind::DATA, flags, stream);
}

#[cfg(test)]
mod tests;
