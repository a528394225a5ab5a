//! One HTTP/2 connection as the server keeps it, without I/O: the client's bytes go in
//! ([`Connection::read`], one frame at a time), what the engine must act on comes out as an
//! [`Event`], and what the server sends (its own frames and the responses the engine gives it)
//! collects in one output buffer ([`Connection::output`]) for the engine to write in one call.
//!
//! It keeps every rule that needs the connection's state (RFC 9113 §5 and §6): the preface
//! and the first SETTINGS; stream states and identifiers (a stream opens once, with a higher
//! identifier than any before it; frames on idle and closed streams); header blocks that
//! nothing may interrupt; flow control both ways, for the connection and each stream; a
//! request body's length against its `Content-Length`; the client's settings. And the limits
//! that keep a client from making the server work for nothing (each a GOAWAY or RST_STREAM
//! with the code RFC 9113 or its errata give):
//!
//! - streams beyond SETTINGS_MAX_CONCURRENT_STREAMS are refused (REFUSED_STREAM: the client
//!   may retry them);
//! - a header block may not grow past twice SETTINGS_MAX_HEADER_LIST_SIZE, nor come in more
//!   than [`MAX_FRAGMENTS`] frames (a flood of CONTINUATION frames, empty or not, ends the
//!   connection: ENHANCE_YOUR_CALM);
//! - streams the client resets before their response has begun, beyond what it lets finish,
//!   end the connection ([`Limits::max_client_resets`]: the "rapid reset" attack, where a
//!   client opens and cancels streams to make the server start work it never collects);
//! - streams keygate has to reset for the client's errors are counted too
//!   ([`Limits::max_error_resets`]);
//! - [`Connection::wants_read`] turns false while the output holds more than
//!   [`MAX_OUTPUT`] bytes: a client that sends PINGs, SETTINGS or bad frames without reading
//!   the answers stops being read, as it must not make the server's memory grow.
//!
//! Frames on a stream keygate reset lately are dropped (a header block decoded first, so the
//! HPACK table stays in step; DATA given back to the connection's window), as they may have
//! been in flight before the client saw the reset.

use std::collections::{HashMap, VecDeque};

use super::frame::{self, ErrorCode, Frame, FrameError, Read, Settings};
use super::request::{self, BlockError, RequestHead};
use crate::head::Head;

/// The most frames (HEADERS and CONTINUATION) one header block may come in.
pub const MAX_FRAGMENTS: usize = 32;

/// Output beyond which the client is not read until it has taken some (see the module doc).
pub const MAX_OUTPUT: usize = 256 << 10;

/// How many lately reset streams are remembered, so their late frames are dropped quietly.
const RECENT_RESETS: usize = 64;

/// What the server announces and holds the client to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    /// Each stream's receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// The connection's receive window (grown from 65,535 by a WINDOW_UPDATE at the start).
    pub connection_window: u32,
    /// Streams the client may reset before their response began, more than it let finish.
    pub max_client_resets: u32,
    /// Streams keygate may reset for the client's errors, over the connection's life.
    pub max_error_resets: u32,
    /// Whether to offer RFC 8441's extended CONNECT (WebSockets over HTTP/2).
    pub connect_protocol: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_header_list_size: 16 << 10,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            max_client_resets: 100,
            max_error_resets: 1024,
            connect_protocol: true,
        }
    }
}

/// What the engine must act on.
#[derive(Debug)]
pub enum Event<'a> {
    /// A request: admit it, forward it, answer it on `stream`. `end_stream`: it has no body.
    Request {
        stream: u32,
        head: Box<RequestHead>,
        end_stream: bool,
    },
    /// A piece of a request's body; the engine gives its length back with
    /// [`Connection::release`] once it has passed it on.
    Data {
        stream: u32,
        data: &'a [u8],
        end_stream: bool,
    },
    /// The client reset a stream (or its body broke a rule and keygate did): drop its work.
    Reset { stream: u32, code: ErrorCode },
    /// A request whose header list is over the limit: answer it 431, do not forward it.
    TooLarge { stream: u32 },
    /// The client's send windows opened: streams waiting to send may go on.
    WindowOpened,
    /// The client will open no more streams (those up to `last_stream` go on).
    GoAway { code: ErrorCode },
}

/// The connection ends: a GOAWAY with `code` has been queued in the output; write it, then
/// close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 connection error {code:?}: {reason}")]
pub struct ConnectionError {
    pub code: ErrorCode,
    pub reason: &'static str,
}

/// What one call to [`Connection::read`] did.
#[derive(Debug)]
pub enum Step<'a> {
    /// Not a whole frame (or preface) in the bytes given; read more.
    Incomplete,
    /// `len` bytes taken; `event`, if any, for the engine.
    Took {
        len: usize,
        event: Option<Event<'a>>,
    },
}

#[derive(Debug)]
struct Stream {
    /// The client may still send on it (no END_STREAM yet).
    receiving: bool,
    /// keygate may still send on it (no END_STREAM or reset yet).
    sending: bool,
    /// Whether keygate has begun its response (for the reset count).
    responded: bool,
    recv_window: i64,
    send_window: i64,
    /// The request's `Content-Length`, and its body's bytes so far.
    length: Option<u64>,
    received: u64,
    /// Body bytes the engine gave back, not yet announced in a WINDOW_UPDATE.
    released: u32,
}

/// A header block under way.
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A trailer block, or one for a stream keygate already reset: decoded, then dropped.
    discard: bool,
    bytes: Vec<u8>,
    fragments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    /// Waiting for the client's first frame, which must be SETTINGS.
    FirstSettings,
    Open,
}

pub struct Connection {
    limits: Limits,
    phase: Phase,
    streams: HashMap<u32, Stream>,
    /// The highest stream keygate has taken on (a GOAWAY names it).
    last_stream: u32,
    /// The highest stream identifier the client has used: those above it are idle.
    last_seen: u32,
    /// keygate has sent a GOAWAY: new streams are ignored (RFC 9113 §6.8).
    going_away: bool,
    block: Option<Block>,
    decoder: request::Decoder,
    recent_resets: VecDeque<u32>,
    /// Streams closed lately, however: a HEADERS frame on one of them is STREAM_CLOSED, on an
    /// older identifier a PROTOCOL_ERROR (§5.1, §5.1.1).
    recent_closed: VecDeque<u32>,
    /// The client's settings as they apply to what keygate sends.
    send_initial_window: u32,
    send_max_frame: u32,
    /// The smallest SETTINGS_HEADER_TABLE_SIZE the client has set since the last response
    /// head, when below the default: the next head must say so first (RFC 7541 §4.2).
    table_update: Option<u32>,
    send_window: i64,
    recv_window: i64,
    /// Received bytes given back by the engine, not yet announced in a WINDOW_UPDATE.
    unannounced: u32,
    client_resets: u32,
    error_resets: u32,
    out: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("phase", &self.phase)
            .field("streams", &self.streams.len())
            .field("last_stream", &self.last_stream)
            .finish_non_exhaustive()
    }
}

/// The window every flow-control window starts at (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: u32 = 65_535;

impl Connection {
    /// A connection whose server's SETTINGS (and the WINDOW_UPDATE that opens the
    /// connection's window) are already in the output, as the server's preface.
    pub fn new(limits: Limits) -> Self {
        let mut out = Vec::with_capacity(4096);
        frame::write_settings(
            &mut out,
            &Settings {
                header_table_size: Some(request::HEADER_TABLE_SIZE as u32),
                enable_push: Some(false),
                max_concurrent_streams: Some(limits.max_concurrent_streams),
                initial_window_size: Some(limits.stream_window),
                max_header_list_size: Some(limits.max_header_list_size),
                enable_connect_protocol: limits.connect_protocol.then_some(true),
                ..Settings::default()
            },
        );
        if limits.connection_window > DEFAULT_WINDOW {
            frame::write_window_update(&mut out, 0, limits.connection_window - DEFAULT_WINDOW);
        }
        Self {
            decoder: request::Decoder::new(limits.max_header_list_size as usize),
            limits,
            phase: Phase::Preface,
            streams: HashMap::new(),
            last_stream: 0,
            last_seen: 0,
            going_away: false,
            block: None,
            recent_resets: VecDeque::new(),
            recent_closed: VecDeque::new(),
            send_initial_window: DEFAULT_WINDOW,
            send_max_frame: frame::DEFAULT_MAX_FRAME_SIZE,
            table_update: None,
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: i64::from(limits.connection_window.max(DEFAULT_WINDOW)),
            unannounced: 0,
            client_resets: 0,
            error_resets: 0,
            out,
        }
    }

    /// What is to be written to the client. The engine writes it and clears it.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Whether the client should be read now (see the module doc).
    pub fn wants_read(&self) -> bool {
        self.out.len() <= MAX_OUTPUT
    }

    /// Streams open in either direction.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Reads the preface or one frame from the front of `buf`.
    pub fn read<'a>(&mut self, buf: &'a [u8]) -> Result<Step<'a>, ConnectionError> {
        if self.phase == Phase::Preface {
            let n = buf.len().min(frame::PREFACE.len());
            if buf[..n] != frame::PREFACE[..n] {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "not the HTTP/2 preface"));
            }
            if n < frame::PREFACE.len() {
                return Ok(Step::Incomplete);
            }
            self.phase = Phase::FirstSettings;
            return Ok(Step::Took {
                len: n,
                event: None,
            });
        }
        let (frame, len) = match frame::read(buf, frame::DEFAULT_MAX_FRAME_SIZE) {
            Ok(Read::Incomplete) => return Ok(Step::Incomplete),
            Ok(Read::Frame { frame, len }) => (frame, len),
            Err(FrameError::Connection { code, reason }) => return Err(self.fail(code, reason)),
            // A stream's error where no frame but one may come is the connection's.
            Err(FrameError::Stream { .. }) if self.block.is_some() => {
                return Err(self.fail(
                    ErrorCode::PROTOCOL_ERROR,
                    "a frame inside another stream's header block",
                ));
            }
            Err(FrameError::Stream { .. }) if self.phase == Phase::FirstSettings => {
                return Err(self.fail(
                    ErrorCode::PROTOCOL_ERROR,
                    "the client's first frame is not SETTINGS",
                ));
            }
            Err(FrameError::Stream {
                stream, code, len, ..
            }) => {
                let event = self.reset(stream, code)?;
                return Ok(Step::Took { len, event });
            }
        };
        if self.phase == Phase::FirstSettings && !matches!(frame, Frame::Settings(_)) {
            return Err(self.fail(
                ErrorCode::PROTOCOL_ERROR,
                "the client's first frame is not SETTINGS",
            ));
        }
        if let Some(block) = &self.block {
            // §6.10: nothing but the block's CONTINUATION frames until it ends.
            let ok = matches!(frame, Frame::Continuation { stream, .. } if stream == block.stream);
            if !ok {
                return Err(self.fail(
                    ErrorCode::PROTOCOL_ERROR,
                    "a frame inside another stream's header block",
                ));
            }
        }
        let event = self.frame(frame)?;
        Ok(Step::Took { len, event })
    }

    fn frame<'a>(&mut self, frame: Frame<'a>) -> Result<Option<Event<'a>>, ConnectionError> {
        match frame {
            Frame::Settings(settings) => self.settings(settings),
            Frame::SettingsAck | Frame::Priority { .. } | Frame::Unknown { .. } => Ok(None),
            Frame::Ping { ack: true, .. } => Ok(None),
            Frame::Ping { ack: false, data } => {
                frame::write_ping(&mut self.out, true, data);
                Ok(None)
            }
            Frame::GoAway { code, .. } => Ok(Some(Event::GoAway { code })),
            Frame::WindowUpdate { stream, increment } => self.window_update(stream, increment),
            Frame::RstStream { stream, code } => self.client_reset(stream, code),
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                priority,
                block,
            } => self.headers(stream, end_stream, end_headers, priority, block),
            Frame::Continuation {
                end_headers, block, ..
            } => {
                let Some(open) = &mut self.block else {
                    return Err(self.fail(
                        ErrorCode::PROTOCOL_ERROR,
                        "a CONTINUATION frame outside a header block",
                    ));
                };
                open.fragments += 1;
                open.bytes.extend_from_slice(block);
                self.fragment_limits()?;
                if end_headers {
                    self.end_block()
                } else {
                    Ok(None)
                }
            }
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => self.data(stream, end_stream, data, flow_len),
        }
    }

    fn settings<'a>(&mut self, settings: Settings) -> Result<Option<Event<'a>>, ConnectionError> {
        self.phase = match self.phase {
            Phase::FirstSettings => Phase::Open,
            phase => phase,
        };
        if let Some(size) = settings.max_frame_size {
            self.send_max_frame = size;
        }
        let mut opened = false;
        if let Some(window) = settings.initial_window_size {
            // §6.9.2: every stream's send window moves by the difference, and may go below 0.
            let delta = i64::from(window) - i64::from(self.send_initial_window);
            self.send_initial_window = window;
            let mut overflow = false;
            for stream in self.streams.values_mut() {
                stream.send_window += delta;
                overflow |= stream.send_window > i64::from(frame::MAX_WINDOW);
            }
            if overflow {
                return Err(self.fail(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream's window",
                ));
            }
            opened = delta > 0;
        }
        // keygate's encoder uses no dynamic table, but a decoder that lowered its table's size
        // may insist on hearing the encoder agree (nghttp2 does). Push, concurrency and list
        // size are the client's own business here.
        if let Some(size) = settings.header_table_size
            && size < request::HEADER_TABLE_SIZE as u32
        {
            self.table_update = Some(self.table_update.map_or(size, |s| s.min(size)));
        }
        frame::write_settings_ack(&mut self.out);
        Ok(opened.then_some(Event::WindowOpened))
    }

    fn window_update<'a>(
        &mut self,
        stream: u32,
        increment: u32,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        let increment = i64::from(increment);
        if stream == 0 {
            self.send_window += increment;
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(self.fail(
                    ErrorCode::FLOW_CONTROL_ERROR,
                    "a WINDOW_UPDATE past 2^31-1 for the connection",
                ));
            }
            return Ok(Some(Event::WindowOpened));
        }
        if stream > self.last_seen {
            return Err(self.fail(
                ErrorCode::PROTOCOL_ERROR,
                "a WINDOW_UPDATE on an idle stream",
            ));
        }
        let Some(open) = self.streams.get_mut(&stream) else {
            // Closed: it may have been on its way before the stream ended.
            return Ok(None);
        };
        open.send_window += increment;
        if open.send_window > i64::from(frame::MAX_WINDOW) {
            return self.reset(stream, ErrorCode::FLOW_CONTROL_ERROR);
        }
        Ok(Some(Event::WindowOpened))
    }

    fn client_reset<'a>(
        &mut self,
        stream: u32,
        code: ErrorCode,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        if stream > self.last_seen {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "a RST_STREAM on an idle stream"));
        }
        let Some(open) = self.close(stream) else {
            return Ok(None);
        };
        if !open.responded {
            self.client_resets += 1;
            if self.client_resets > self.limits.max_client_resets {
                return Err(self.fail(
                    ErrorCode::ENHANCE_YOUR_CALM,
                    "too many streams reset before their response",
                ));
            }
        }
        Ok(Some(Event::Reset { stream, code }))
    }

    fn headers<'a>(
        &mut self,
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<frame::Priority>,
        block: &[u8],
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        let discard = if stream > self.last_seen {
            self.last_seen = stream;
            if self.going_away {
                // §6.8: after keygate's GOAWAY, new streams are ignored (their block is still
                // decoded below, and their late frames dropped).
                self.remember_reset(stream);
                true
            } else {
                self.last_stream = stream;
                false
            }
        } else if let Some(open) = self.streams.get(&stream) {
            if !open.receiving {
                // §5.1, half-closed (remote): a stream error; the block is decoded all the same.
                let event = self.reset(stream, ErrorCode::STREAM_CLOSED)?;
                self.begin_block(stream, end_stream, true, block, end_headers)?;
                return Ok(event);
            }
            // Trailers (§8.1): they must end the request.
            if !end_stream {
                return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "trailers without END_STREAM"));
            }
            true
        } else if self.recent_resets.contains(&stream) {
            true
        } else if self.recent_closed.contains(&stream) {
            return Err(self.fail(
                ErrorCode::STREAM_CLOSED,
                "a HEADERS frame on a closed stream",
            ));
        } else {
            return Err(self.fail(
                ErrorCode::PROTOCOL_ERROR,
                "a stream identifier lower than one already used",
            ));
        };
        if !discard && priority.is_some_and(|p| p.on_itself(stream)) {
            // §5.3.1; the block is decoded all the same.
            self.begin_block(stream, end_stream, true, block, end_headers)?;
            return self.reset(stream, ErrorCode::PROTOCOL_ERROR);
        }
        self.begin_block(stream, end_stream, discard, block, end_headers)
    }

    fn begin_block<'a>(
        &mut self,
        stream: u32,
        end_stream: bool,
        discard: bool,
        bytes: &[u8],
        end_headers: bool,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        self.block = Some(Block {
            stream,
            end_stream,
            discard,
            bytes: bytes.to_vec(),
            fragments: 1,
        });
        self.fragment_limits()?;
        if end_headers {
            self.end_block()
        } else {
            Ok(None)
        }
    }

    fn fragment_limits(&mut self) -> Result<(), ConnectionError> {
        let Some(block) = &self.block else {
            return Ok(());
        };
        if block.fragments > MAX_FRAGMENTS
            || block.bytes.len() > 2 * self.limits.max_header_list_size as usize
        {
            return Err(self.fail(
                ErrorCode::ENHANCE_YOUR_CALM,
                "a header block in too many frames or too many bytes",
            ));
        }
        Ok(())
    }

    fn end_block<'a>(&mut self) -> Result<Option<Event<'a>>, ConnectionError> {
        let Some(block) = self.block.take() else {
            return Ok(None);
        };
        let decoded = self.decoder.request(&block.bytes);
        if block.discard {
            return match decoded {
                Err(BlockError::Compression(_)) => Err(self.fail(
                    ErrorCode::COMPRESSION_ERROR,
                    "a header block that does not decode",
                )),
                // A trailer block reads as a request without pseudo-header fields: malformed
                // as a request, fine as trailers. keygate drops trailers, as on HTTP/1.1.
                _ => {
                    if block.end_stream {
                        return self.end_receiving(block.stream);
                    }
                    Ok(None)
                }
            };
        }
        let stream = block.stream;
        match decoded {
            Err(BlockError::Compression(_)) => Err(self.fail(
                ErrorCode::COMPRESSION_ERROR,
                "a header block that does not decode",
            )),
            Err(BlockError::Malformed(_)) => {
                self.remember_reset(stream);
                self.error_reset(stream, ErrorCode::PROTOCOL_ERROR)?;
                Ok(None)
            }
            Err(BlockError::TooLarge) | Ok(_)
                if self.streams.len() >= self.limits.max_concurrent_streams as usize =>
            {
                self.remember_reset(stream);
                frame::write_rst_stream(&mut self.out, stream, ErrorCode::REFUSED_STREAM);
                Ok(None)
            }
            Err(BlockError::TooLarge) => {
                self.open(stream, None, block.end_stream);
                Ok(Some(Event::TooLarge { stream }))
            }
            Ok(head) => {
                self.open(stream, head.declared_length(), block.end_stream);
                if block.end_stream && head.declared_length().is_some_and(|n| n > 0) {
                    // §8.1.1: a body shorter than its Content-Length.
                    self.close(stream);
                    self.remember_reset(stream);
                    self.error_reset(stream, ErrorCode::PROTOCOL_ERROR)?;
                    return Ok(None);
                }
                Ok(Some(Event::Request {
                    stream,
                    head: Box::new(head),
                    end_stream: block.end_stream,
                }))
            }
        }
    }

    fn open(&mut self, stream: u32, length: Option<u64>, end_stream: bool) {
        self.streams.insert(
            stream,
            Stream {
                receiving: !end_stream,
                sending: true,
                responded: false,
                recv_window: i64::from(self.limits.stream_window),
                send_window: i64::from(self.send_initial_window),
                length,
                received: 0,
                released: 0,
            },
        );
    }

    fn data<'a>(
        &mut self,
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
        flow_len: u32,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        if stream > self.last_seen {
            return Err(self.fail(ErrorCode::PROTOCOL_ERROR, "a DATA frame on an idle stream"));
        }
        // §6.9: every DATA frame counts against the connection's window, whatever its stream.
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(self.fail(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA beyond the connection's window",
            ));
        }
        let open = match self.streams.get_mut(&stream) {
            Some(open) if open.receiving => open,
            _ => {
                // A closed stream (or one whose body ended): what it took is given back.
                self.release_connection(flow_len);
                if self.recent_resets.contains(&stream) {
                    return Ok(None);
                }
                return self.reset(stream, ErrorCode::STREAM_CLOSED);
            }
        };
        open.recv_window -= i64::from(flow_len);
        if open.recv_window < 0 {
            self.release_connection(flow_len);
            return self.reset(stream, ErrorCode::FLOW_CONTROL_ERROR);
        }
        open.received += data.len() as u64;
        let over = open.length.is_some_and(|n| open.received > n);
        let short = end_stream && open.length.is_some_and(|n| open.received < n);
        if over || short {
            // §8.1.1: a body that disagrees with its Content-Length is malformed.
            self.release_connection(flow_len);
            return self.reset(stream, ErrorCode::PROTOCOL_ERROR);
        }
        if end_stream {
            open.receiving = false;
        }
        // Padding is never the engine's to give back.
        let padding = flow_len - data.len() as u32;
        if padding > 0 {
            self.release(stream, padding);
        }
        if end_stream {
            self.close_if_done(stream);
        }
        Ok(Some(Event::Data {
            stream,
            data,
            end_stream,
        }))
    }

    /// The engine has passed `n` bytes of `stream`'s body on: the client may send as many
    /// more (WINDOW_UPDATE frames go out once a quarter of a window has been given back).
    pub fn release(&mut self, stream: u32, n: u32) {
        if let Some(open) = self.streams.get_mut(&stream)
            && open.receiving
        {
            open.released += n;
            if open.released >= self.limits.stream_window / 4 {
                open.recv_window += i64::from(open.released);
                frame::write_window_update(&mut self.out, stream, open.released);
                open.released = 0;
            }
        }
        self.release_connection(n);
    }

    fn release_connection(&mut self, n: u32) {
        self.unannounced += n;
        if self.unannounced >= self.limits.connection_window / 4 {
            self.recv_window += i64::from(self.unannounced);
            frame::write_window_update(&mut self.out, 0, self.unannounced);
            self.unannounced = 0;
        }
    }

    /// How many body bytes keygate may send on `stream` now (0: wait for
    /// [`Event::WindowOpened`]).
    pub fn send_capacity(&self, stream: u32) -> usize {
        let Some(open) = self.streams.get(&stream) else {
            return 0;
        };
        open.send_window.min(self.send_window).max(0) as usize
    }

    /// A response's header block (from [`super::response::encode`]) on `stream`.
    pub fn send_headers(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        let Some(open) = self.streams.get_mut(&stream) else {
            return;
        };
        if !open.sending {
            return;
        }
        open.responded = true;
        match self.table_update.take() {
            Some(size) => {
                let mut updated = Vec::with_capacity(block.len() + 6);
                super::response::table_size_update(&mut updated, size);
                updated.extend_from_slice(block);
                let max = self.send_max_frame;
                frame::write_headers(&mut self.out, stream, &updated, end_stream, max);
            }
            None => {
                let max = self.send_max_frame;
                frame::write_headers(&mut self.out, stream, block, end_stream, max);
            }
        }
        if end_stream {
            self.end_sending(stream);
        }
    }

    /// As much of `data` as the windows allow, in frames the client's SETTINGS_MAX_FRAME_SIZE
    /// allows; returns how many bytes were taken. END_STREAM goes with the last byte only if
    /// all of `data` was taken.
    pub fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> usize {
        let capacity = self.send_capacity(stream);
        let Some(open) = self.streams.get_mut(&stream) else {
            return 0;
        };
        if !open.sending {
            return 0;
        }
        let n = data.len().min(capacity);
        let end = end_stream && n == data.len();
        let mut pieces = data[..n].chunks(self.send_max_frame as usize).peekable();
        if n == 0 && end {
            frame::write_data_header(&mut self.out, stream, 0, true);
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            frame::write_data_header(&mut self.out, stream, piece.len(), end && last);
            self.out.extend_from_slice(piece);
        }
        open.send_window -= n as i64;
        open.responded = true;
        self.send_window -= n as i64;
        if end {
            self.end_sending(stream);
        }
        n
    }

    /// keygate gives up on `stream` (its upstream failed mid-response, say).
    pub fn cancel(&mut self, stream: u32, code: ErrorCode) {
        if self.close(stream).is_some() {
            self.remember_reset(stream);
            frame::write_rst_stream(&mut self.out, stream, code);
        }
    }

    /// A GOAWAY: streams up to the last one opened go on; the engine closes the connection once
    /// they are done ([`Self::open_streams`]).
    pub fn go_away(&mut self, code: ErrorCode) {
        self.going_away = true;
        frame::write_goaway(&mut self.out, self.last_stream, code, b"");
    }

    fn end_sending(&mut self, stream: u32) {
        if let Some(open) = self.streams.get_mut(&stream) {
            open.sending = false;
            if !open.receiving {
                // A response finished: one reset of the client's the less to hold against it.
                self.client_resets = self.client_resets.saturating_sub(1);
            }
        }
        self.close_if_done(stream);
    }

    /// Trailers ended `stream`'s body: as END_STREAM on a DATA frame would have.
    fn end_receiving<'a>(&mut self, stream: u32) -> Result<Option<Event<'a>>, ConnectionError> {
        let Some(open) = self.streams.get_mut(&stream) else {
            return Ok(None);
        };
        if open.length.is_some_and(|n| open.received != n) {
            return self.reset(stream, ErrorCode::PROTOCOL_ERROR);
        }
        open.receiving = false;
        self.close_if_done(stream);
        Ok(Some(Event::Data {
            stream,
            data: &[],
            end_stream: true,
        }))
    }

    fn close_if_done(&mut self, stream: u32) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| !s.sending && !s.receiving)
        {
            self.close(stream);
        }
    }

    /// Forgets `stream`, remembering for a while that it was closed.
    fn close(&mut self, stream: u32) -> Option<Stream> {
        remember(&mut self.recent_closed, stream);
        self.streams.remove(&stream)
    }

    /// A stream error of the client's making: RST_STREAM, counted.
    fn reset<'a>(
        &mut self,
        stream: u32,
        code: ErrorCode,
    ) -> Result<Option<Event<'a>>, ConnectionError> {
        let was_open = self.close(stream).is_some();
        self.remember_reset(stream);
        self.error_reset(stream, code)?;
        Ok(was_open.then_some(Event::Reset { stream, code }))
    }

    fn error_reset(&mut self, stream: u32, code: ErrorCode) -> Result<(), ConnectionError> {
        self.error_resets += 1;
        if self.error_resets > self.limits.max_error_resets {
            return Err(self.fail(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many streams reset for the client's errors",
            ));
        }
        frame::write_rst_stream(&mut self.out, stream, code);
        Ok(())
    }

    fn remember_reset(&mut self, stream: u32) {
        remember(&mut self.recent_resets, stream);
        remember(&mut self.recent_closed, stream);
    }

    /// A connection error: GOAWAY queued, the error returned for the engine to close on.
    fn fail(&mut self, code: ErrorCode, reason: &'static str) -> ConnectionError {
        frame::write_goaway(&mut self.out, self.last_stream, code, reason.as_bytes());
        ConnectionError { code, reason }
    }
}

/// Adds `stream` to a bounded list of recent streams.
fn remember(recent: &mut VecDeque<u32>, stream: u32) {
    if recent.len() == RECENT_RESETS {
        recent.pop_front();
    }
    recent.push_back(stream);
}

#[cfg(test)]
mod tests;
