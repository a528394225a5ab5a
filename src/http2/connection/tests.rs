//! The connection scripted frame by frame, as a client would send them, and what it answers
//! read back with the frame layer.

use super::*;
use crate::http2::frame::{
    DEFAULT_MAX_FRAME_SIZE, write_data_header, write_goaway, write_headers, write_ping,
    write_rst_stream, write_settings, write_window_update,
};

/// One client: its HPACK encoder, the connection under test, and what came out of it.
struct Client {
    conn: Connection,
    encoder: loona_hpack::Encoder<'static>,
}

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "api.example.com"),
    (":path", "/v1/items"),
];

const POST: [(&str, &str); 4] = [
    (":method", "POST"),
    (":scheme", "https"),
    (":authority", "api.example.com"),
    (":path", "/v1/items"),
];

/// What a test looks at in an event.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Request(u32, String, bool),
    Data(u32, Vec<u8>, bool),
    Reset(u32, ErrorCode),
    TooLarge(u32),
    WindowOpened,
    GoAway(ErrorCode),
}

impl Client {
    /// A connection past its preface and SETTINGS exchange.
    fn new(limits: Limits) -> Self {
        let mut client = Self {
            conn: Connection::new(limits),
            encoder: loona_hpack::Encoder::new(),
        };
        let mut bytes = frame::PREFACE.to_vec();
        write_settings(&mut bytes, &Settings::default());
        assert_eq!(client.send(&bytes), Ok(vec![]));
        let frames = client.output();
        assert_eq!(frames[0], "SETTINGS");
        assert!(frames.contains(&"SETTINGS ack".to_owned()), "{frames:?}");
        client
    }

    /// Feeds `bytes` to the connection, in one piece, and returns what it made of them.
    fn send(&mut self, bytes: &[u8]) -> Result<Vec<Seen>, ConnectionError> {
        let mut seen = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            match self.conn.read(&bytes[at..])? {
                Step::Incomplete => panic!("incomplete at {at} of {}", bytes.len()),
                Step::Took { len, event } => {
                    at += len;
                    seen.extend(event.map(|e| match e {
                        Event::Request {
                            stream,
                            head,
                            end_stream,
                        } => Seen::Request(stream, head.target().to_owned(), end_stream),
                        Event::Data {
                            stream,
                            data,
                            end_stream,
                        } => Seen::Data(stream, data.to_vec(), end_stream),
                        Event::Reset { stream, code } => Seen::Reset(stream, code),
                        Event::TooLarge { stream } => Seen::TooLarge(stream),
                        Event::WindowOpened => Seen::WindowOpened,
                        Event::GoAway { code } => Seen::GoAway(code),
                    }));
                }
            }
        }
        Ok(seen)
    }

    /// The server's output since the last call, frame by frame (kind, stream, a summary).
    fn output(&mut self) -> Vec<String> {
        let out = std::mem::take(self.conn.output());
        let mut at = 0;
        let mut frames = Vec::new();
        while at < out.len() {
            let Ok(Read::Frame { frame, len }) = frame::read(&out[at..], 1 << 24) else {
                panic!("the server wrote something that is not a frame at {at}");
            };
            frames.push(match frame {
                Frame::Settings(_) => "SETTINGS".to_owned(),
                Frame::SettingsAck => "SETTINGS ack".to_owned(),
                Frame::Ping { ack, .. } => format!("PING ack={ack}"),
                Frame::WindowUpdate { stream, increment } => {
                    format!("WINDOW_UPDATE {stream} {increment}")
                }
                Frame::RstStream { stream, code } => format!("RST_STREAM {stream} {code:?}"),
                Frame::GoAway {
                    last_stream, code, ..
                } => format!("GOAWAY {last_stream} {code:?}"),
                Frame::Headers {
                    stream, end_stream, ..
                } => format!("HEADERS {stream} end_stream={end_stream}"),
                Frame::Data {
                    stream,
                    data,
                    end_stream,
                    ..
                } => format!("DATA {stream} {} end_stream={end_stream}", data.len()),
                other => format!("{other:?}"),
            });
            at += len;
        }
        frames
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let block = self
            .encoder
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let mut out = Vec::new();
        write_headers(&mut out, stream, &block, end_stream, DEFAULT_MAX_FRAME_SIZE);
        out
    }
}

fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::new();
    write_data_header(&mut out, stream, bytes.len(), end_stream);
    out.extend_from_slice(bytes);
    out
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[test]
fn a_request_is_answered_and_its_stream_closes() {
    let mut c = Client::new(Limits::default());
    let req = c.headers(1, &GET, true);
    assert_eq!(
        c.send(&req),
        Ok(vec![Seen::Request(1, "/v1/items".into(), true)])
    );
    assert_eq!(c.conn.open_streams(), 1);
    let mut block = Vec::new();
    crate::http2::response::encode(&mut block, 200, [("content-type", "application/json")]);
    c.conn.send_headers(1, &block, false);
    assert_eq!(c.conn.send_data(1, b"{}", true), 2);
    assert_eq!(
        c.output(),
        ["HEADERS 1 end_stream=false", "DATA 1 2 end_stream=true"]
    );
    assert_eq!(c.conn.open_streams(), 0);
}

#[test]
fn the_server_s_preface_announces_its_limits() {
    let mut conn = Connection::new(Limits::default());
    let out = std::mem::take(conn.output());
    let Ok(Read::Frame {
        frame: Frame::Settings(settings),
        len,
    }) = frame::read(&out, DEFAULT_MAX_FRAME_SIZE)
    else {
        panic!("not SETTINGS first");
    };
    assert_eq!(settings.max_concurrent_streams, Some(128));
    assert_eq!(settings.initial_window_size, Some(1 << 20));
    assert_eq!(settings.max_header_list_size, Some(16 << 10));
    assert_eq!(settings.enable_push, Some(false));
    assert_eq!(settings.enable_connect_protocol, Some(true));
    assert_eq!(
        frame::read(&out[len..], DEFAULT_MAX_FRAME_SIZE),
        Ok(Read::Frame {
            frame: Frame::WindowUpdate {
                stream: 0,
                increment: (1 << 20) - 65_535
            },
            len: out.len() - len
        })
    );
}

#[test]
fn the_preface_and_first_settings_are_required() {
    let mut conn = Connection::new(Limits::default());
    assert!(matches!(
        conn.read(b"PRI * HTTP/2.0\r\n"),
        Ok(Step::Incomplete)
    ));
    assert_eq!(
        conn.read(b"GET / HTTP/1.1\r\n\r\n").unwrap_err().reason,
        "not the HTTP/2 preface"
    );
    let mut conn = Connection::new(Limits::default());
    let mut bytes = frame::PREFACE.to_vec();
    write_ping(&mut bytes, false, *b"12345678");
    let Ok(Step::Took { len, .. }) = conn.read(&bytes) else {
        panic!("preface not taken");
    };
    assert_eq!(
        conn.read(&bytes[len..]).unwrap_err(),
        ConnectionError {
            code: ErrorCode::PROTOCOL_ERROR,
            reason: "the client's first frame is not SETTINGS"
        }
    );
}

/// What a client sends, written with its own encoder.
type Script = Box<dyn Fn(&mut Client) -> Vec<u8>>;

/// Each case: frames after a good start, and the connection error they must end in (with a
/// GOAWAY of that code as the last thing written).
#[test]
fn what_breaks_the_connection_s_rules_ends_it() {
    let mut cases: Vec<(&str, Script, ErrorCode, &str)> = vec![
        (
            "a PING inside a header block",
            Box::new(|c| {
                let mut b = c.headers(1, &GET, true);
                b[4] &= !0x4; // END_HEADERS off
                write_ping(&mut b, false, [0; 8]);
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a frame inside another stream's header block",
        ),
        (
            "a bad PRIORITY frame (a stream's error elsewhere) inside a header block",
            Box::new(|c| {
                let mut b = c.headers(1, &GET, true);
                b[4] &= !0x4;
                b.extend(raw(0x2, 0, 3, b"\0\0\0\x01"));
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a frame inside another stream's header block",
        ),
        (
            "another stream's CONTINUATION inside a header block",
            Box::new(|c| {
                let mut b = c.headers(1, &GET, true);
                b[4] &= !0x4;
                b.extend(raw(0x9, 0x4, 3, b""));
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a frame inside another stream's header block",
        ),
        (
            "a CONTINUATION outside a header block",
            Box::new(|_| raw(0x9, 0x4, 1, b"\x82")),
            ErrorCode::PROTOCOL_ERROR,
            "a CONTINUATION frame outside a header block",
        ),
        (
            "DATA on an idle stream",
            Box::new(|_| data(1, b"x", true)),
            ErrorCode::PROTOCOL_ERROR,
            "a DATA frame on an idle stream",
        ),
        (
            "RST_STREAM on an idle stream",
            Box::new(|_| {
                let mut b = Vec::new();
                write_rst_stream(&mut b, 5, ErrorCode::CANCEL);
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a RST_STREAM on an idle stream",
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            Box::new(|_| {
                let mut b = Vec::new();
                write_window_update(&mut b, 7, 1);
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a WINDOW_UPDATE on an idle stream",
        ),
        (
            "a stream identifier lower than one used",
            Box::new(|c| {
                let mut b = c.headers(5, &GET, true);
                b.extend(c.headers(3, &GET, true));
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "a stream identifier lower than one already used",
        ),
        (
            "trailers without END_STREAM",
            Box::new(|c| {
                let mut b = c.headers(1, &POST, false);
                b.extend(c.headers(1, &[("x-trailer", "v")], false));
                b
            }),
            ErrorCode::PROTOCOL_ERROR,
            "trailers without END_STREAM",
        ),
        (
            "DATA past the connection's window",
            Box::new(|c| {
                let mut b = Vec::new();
                // Four streams of 256 KiB reach the connection's 1 MiB; one byte more is over.
                for stream in [1, 3, 5, 7] {
                    b.extend(c.headers(stream, &POST, false));
                    for _ in 0..16 {
                        b.extend(data(stream, &[0; 16 << 10], false));
                    }
                }
                b.extend(c.headers(9, &POST, false));
                b.extend(data(9, b"x", false));
                b
            }),
            ErrorCode::FLOW_CONTROL_ERROR,
            "DATA beyond the connection's window",
        ),
        (
            "a WINDOW_UPDATE past 2^31-1",
            Box::new(|_| {
                let mut b = Vec::new();
                write_window_update(&mut b, 0, frame::MAX_WINDOW);
                b
            }),
            ErrorCode::FLOW_CONTROL_ERROR,
            "a WINDOW_UPDATE past 2^31-1 for the connection",
        ),
        (
            "a CONTINUATION flood",
            Box::new(|c| {
                let mut b = c.headers(1, &GET, true);
                b[4] &= !0x4;
                for _ in 0..MAX_FRAGMENTS {
                    b.extend(raw(0x9, 0, 1, b""));
                }
                b
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
            "a header block in too many frames or too many bytes",
        ),
        (
            "a header block past twice the list limit",
            Box::new(|c| {
                let mut b = c.headers(1, &GET, true);
                b[4] &= !0x4;
                b.extend(raw(0x9, 0, 1, &[0x82; 16 << 10]));
                b.extend(raw(0x9, 0, 1, &[0x82; 16 << 10]));
                b
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
            "a header block in too many frames or too many bytes",
        ),
        (
            "a block that does not decode",
            Box::new(|_| raw(0x1, 0x5, 1, b"\xff\x7f")),
            ErrorCode::COMPRESSION_ERROR,
            "a header block that does not decode",
        ),
        (
            "a rapid reset: streams opened and cancelled before any answer",
            Box::new(|c| {
                let mut b = Vec::new();
                for i in 0..=100u32 {
                    let stream = 2 * i + 1;
                    b.extend(c.headers(stream, &GET, true));
                    write_rst_stream(&mut b, stream, ErrorCode::CANCEL);
                }
                b
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
            "too many streams reset before their response",
        ),
        (
            "a stream of malformed requests",
            Box::new(|c| {
                let mut b = Vec::new();
                for i in 0..=1024u32 {
                    b.extend(c.headers(2 * i + 1, &[(":method", "GET")], true));
                }
                b
            }),
            ErrorCode::ENHANCE_YOUR_CALM,
            "too many streams reset for the client's errors",
        ),
    ];
    for (what, script, code, reason) in cases.drain(..) {
        let mut c = Client::new(Limits::default());
        let bytes = script(&mut c);
        assert_eq!(
            c.send(&bytes).map(|_| ()),
            Err(ConnectionError { code, reason }),
            "{what}"
        );
        let frames = c.output();
        assert!(
            frames.last().unwrap().starts_with("GOAWAY")
                && frames.last().unwrap().ends_with(&format!("{code:?}")),
            "{what}: {frames:?}"
        );
    }
}

#[test]
fn a_stream_s_errors_reset_only_that_stream() {
    let mut c = Client::new(Limits::default());
    // Malformed: no event, a reset.
    let b = c.headers(1, &[(":method", "GET"), (":path", "/")], true);
    assert_eq!(c.send(&b), Ok(vec![]));
    assert_eq!(c.output(), ["RST_STREAM 1 PROTOCOL_ERROR"]);
    // Its late DATA is dropped quietly.
    assert_eq!(c.send(&data(1, b"late", true)), Ok(vec![]));

    // A body longer than its Content-Length.
    let mut b = c.headers(
        3,
        &[POST.as_slice(), &[("content-length", "3")]].concat(),
        false,
    );
    b.extend(data(3, b"four", true));
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(3, "/v1/items".into(), false),
            Seen::Reset(3, ErrorCode::PROTOCOL_ERROR)
        ])
    );
    // Shorter, then ended.
    let mut b = c.headers(
        5,
        &[POST.as_slice(), &[("content-length", "3")]].concat(),
        false,
    );
    b.extend(data(5, b"ab", true));
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(5, "/v1/items".into(), false),
            Seen::Reset(5, ErrorCode::PROTOCOL_ERROR)
        ])
    );
    // Declared but never sent: END_STREAM on the HEADERS frame.
    let b = c.headers(
        7,
        &[POST.as_slice(), &[("content-length", "3")]].concat(),
        true,
    );
    assert_eq!(c.send(&b), Ok(vec![]));
    // DATA after the body ended, on a stream still being answered.
    let b = c.headers(9, &GET, true);
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Request(9, "/v1/items".into(), true)])
    );
    assert_eq!(
        c.send(&data(9, b"x", false)),
        Ok(vec![Seen::Reset(9, ErrorCode::STREAM_CLOSED)])
    );
    // A stream that depends on itself.
    let mut b = raw(0x2, 0, 11, b"\x00\x00\x00\x0b\x10");
    b.extend(c.headers(13, &GET, true));
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Request(13, "/v1/items".into(), true)])
    );
    assert_eq!(
        c.output()[..],
        [
            "RST_STREAM 3 PROTOCOL_ERROR",
            "RST_STREAM 5 PROTOCOL_ERROR",
            "RST_STREAM 7 PROTOCOL_ERROR",
            "RST_STREAM 9 STREAM_CLOSED",
            "RST_STREAM 11 PROTOCOL_ERROR",
        ]
    );
    // The connection lives on.
    let b = c.headers(15, &GET, true);
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Request(15, "/v1/items".into(), true)])
    );
}

#[test]
fn a_request_body_flows_and_the_window_reopens_as_the_engine_passes_it_on() {
    let limits = Limits {
        stream_window: 1000,
        connection_window: 4000,
        ..Limits::default()
    };
    let mut c = Client::new(limits);
    let mut b = c.headers(1, &POST, false);
    b.extend(data(1, &[7; 600], false));
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(1, "/v1/items".into(), false),
            Seen::Data(1, vec![7; 600], false)
        ])
    );
    // 400 more fill the stream's window; one byte past it is the stream's error.
    assert_eq!(
        c.send(&data(1, &[7; 400], false)),
        Ok(vec![Seen::Data(1, vec![7; 400], false)])
    );
    assert!(c.output().is_empty(), "nothing given back yet");
    c.conn.release(1, 1000);
    // A quarter of each window is back: the stream's and the connection's are announced.
    assert_eq!(c.output(), ["WINDOW_UPDATE 1 1000", "WINDOW_UPDATE 0 1000"]);
    // Given back in small pieces: announced once a quarter of the window is back.
    assert_eq!(
        c.send(&data(1, &[7; 500], false)),
        Ok(vec![Seen::Data(1, vec![7; 500], false)])
    );
    c.conn.release(1, 200);
    assert!(c.output().is_empty());
    c.conn.release(1, 300);
    assert_eq!(
        c.output(),
        ["WINDOW_UPDATE 1 500"],
        "the connection's 500 wait"
    );
    // Padding is given back at once.
    let padded = raw(0x0, 0x8 | 0x1, 1, &[&[9u8][..], b"end", &[0; 9]].concat());
    assert_eq!(
        c.send(&padded),
        Ok(vec![Seen::Data(1, b"end".to_vec(), true)])
    );
    // Past the stream's window.
    let mut c = Client::new(limits);
    let mut b = c.headers(1, &POST, false);
    b.extend(data(1, &[7; 1001], false));
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(1, "/v1/items".into(), false),
            Seen::Reset(1, ErrorCode::FLOW_CONTROL_ERROR)
        ])
    );
}

#[test]
fn a_response_is_sent_as_the_client_s_windows_allow() {
    let mut c = Client::new(Limits::default());
    let b = c.headers(1, &GET, true);
    c.send(&b).unwrap();
    c.conn.send_headers(1, b"\x88", false);
    // The client's windows start at 65,535.
    let body = vec![1u8; 100_000];
    assert_eq!(c.conn.send_data(1, &body, true), 65_535);
    let frames = c.output();
    assert_eq!(frames.len(), 1 + 4, "{frames:?}");
    assert_eq!(frames[4], "DATA 1 16383 end_stream=false");
    assert_eq!(c.conn.send_capacity(1), 0);
    // The stream's window opens; the connection's is still shut.
    let mut b = Vec::new();
    write_window_update(&mut b, 1, 50_000);
    assert_eq!(c.send(&b), Ok(vec![Seen::WindowOpened]));
    assert_eq!(c.conn.send_capacity(1), 0);
    let mut b = Vec::new();
    write_window_update(&mut b, 0, 40_000);
    assert_eq!(c.send(&b), Ok(vec![Seen::WindowOpened]));
    assert_eq!(c.conn.send_capacity(1), 40_000);
    assert_eq!(c.conn.send_data(1, &body[65_535..], true), 34_465);
    assert_eq!(c.output().last().unwrap(), "DATA 1 1697 end_stream=true");
    assert_eq!(c.conn.open_streams(), 0);

    // SETTINGS_INITIAL_WINDOW_SIZE moves open streams' windows, and larger frames are
    // allowed once the client says so.
    let b = c.headers(3, &GET, true);
    c.send(&b).unwrap();
    let mut b = Vec::new();
    write_window_update(&mut b, 0, 1 << 20);
    write_settings(
        &mut b,
        &Settings {
            initial_window_size: Some(200_000),
            max_frame_size: Some(1 << 17),
            ..Settings::default()
        },
    );
    assert_eq!(c.send(&b), Ok(vec![Seen::WindowOpened, Seen::WindowOpened]));
    assert_eq!(c.conn.send_capacity(3), 200_000);
    assert_eq!(c.conn.send_data(3, &body, true), 100_000);
    assert_eq!(
        c.output(),
        ["SETTINGS ack", "DATA 3 100000 end_stream=true"]
    );
}

#[test]
fn a_client_that_shrinks_its_table_hears_the_encoder_agree() {
    let mut c = Client::new(Limits::default());
    let mut b = Vec::new();
    for size in [256, 0] {
        write_settings(
            &mut b,
            &Settings {
                header_table_size: Some(size),
                ..Settings::default()
            },
        );
    }
    b.extend(c.headers(1, &GET, true));
    b.extend(c.headers(3, &GET, true));
    c.send(&b).unwrap();
    c.output();
    let mut block = Vec::new();
    crate::http2::response::encode(&mut block, 200, [("server", "keygate")]);
    c.conn.send_headers(1, &block, true);
    c.conn.send_headers(3, &block, true);
    let out = std::mem::take(c.conn.output());
    let mut decoder = loona_hpack::Decoder::new();
    let mut at = 0;
    let mut firsts = Vec::new();
    while at < out.len() {
        let Ok(Read::Frame {
            frame: Frame::Headers { block, .. },
            len,
        }) = frame::read(&out[at..], DEFAULT_MAX_FRAME_SIZE)
        else {
            panic!("not HEADERS");
        };
        firsts.push(block[0]);
        assert_eq!(
            decoder.decode(block).unwrap(),
            [
                (b":status".to_vec(), b"200".to_vec()),
                (b"server".to_vec(), b"keygate".to_vec())
            ]
        );
        at += len;
    }
    // The smallest size, once, at the start of the first head after it.
    assert_eq!(firsts, [0x20, 0x88]);
}

#[test]
fn streams_past_the_concurrency_limit_are_refused() {
    let mut c = Client::new(Limits {
        max_concurrent_streams: 2,
        ..Limits::default()
    });
    let mut b = Vec::new();
    for stream in [1, 3, 5] {
        b.extend(c.headers(stream, &GET, true));
    }
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(1, "/v1/items".into(), true),
            Seen::Request(3, "/v1/items".into(), true),
        ])
    );
    assert_eq!(c.output(), ["RST_STREAM 5 REFUSED_STREAM"]);
    // One answered, the next one is taken.
    c.conn.send_headers(1, b"\x88", true);
    let b = c.headers(7, &GET, true);
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Request(7, "/v1/items".into(), true)])
    );
}

#[test]
fn a_client_that_resets_what_it_lets_finish_is_not_cut_off() {
    let mut c = Client::new(Limits::default());
    // 300 streams, each cancelled before its answer, each followed by one answered: the
    // count of resets never builds up.
    for i in 0..300u32 {
        let (cancelled, answered) = (4 * i + 1, 4 * i + 3);
        let mut b = c.headers(cancelled, &GET, true);
        write_rst_stream(&mut b, cancelled, ErrorCode::CANCEL);
        b.extend(c.headers(answered, &GET, true));
        let seen = c.send(&b).expect("not cut off");
        assert_eq!(seen[1], Seen::Reset(cancelled, ErrorCode::CANCEL));
        c.conn.send_headers(answered, b"\x88", true);
    }
    // A reset after the answer began costs nothing either.
    let b = c.headers(2001, &GET, true);
    c.send(&b).unwrap();
    c.conn.send_headers(2001, b"\x88", false);
    let mut b = Vec::new();
    write_rst_stream(&mut b, 2001, ErrorCode::CANCEL);
    assert_eq!(c.send(&b), Ok(vec![Seen::Reset(2001, ErrorCode::CANCEL)]));
}

#[test]
fn trailers_end_a_body_and_are_dropped() {
    let mut c = Client::new(Limits::default());
    let mut b = c.headers(
        1,
        &[POST.as_slice(), &[("content-length", "2")]].concat(),
        false,
    );
    b.extend(data(1, b"ok", false));
    b.extend(c.headers(1, &[("x-checksum", "abc")], true));
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(1, "/v1/items".into(), false),
            Seen::Data(1, b"ok".to_vec(), false),
            Seen::Data(1, vec![], true),
        ])
    );
}

#[test]
fn after_keygate_s_goaway_new_streams_are_ignored_and_old_ones_finish() {
    let mut c = Client::new(Limits::default());
    let b = c.headers(1, &POST, false);
    c.send(&b).unwrap();
    c.conn.go_away(ErrorCode::NO_ERROR);
    assert_eq!(c.output(), ["GOAWAY 1 NO_ERROR"]);
    let mut b = c.headers(3, &GET, false);
    b.extend(data(3, b"ignored", true));
    b.extend(data(1, b"body", true));
    assert_eq!(c.send(&b), Ok(vec![Seen::Data(1, b"body".to_vec(), true)]));
    // The client's own GOAWAY is told to the engine.
    let mut b = Vec::new();
    write_goaway(&mut b, 0, ErrorCode::NO_ERROR, b"");
    assert_eq!(c.send(&b), Ok(vec![Seen::GoAway(ErrorCode::NO_ERROR)]));
}

#[test]
fn a_client_that_does_not_read_is_not_read_either() {
    let mut c = Client::new(Limits::default());
    let mut pings = Vec::new();
    for _ in 0..20_000 {
        write_ping(&mut pings, false, *b"flooding");
    }
    let mut at = 0;
    while c.conn.wants_read() {
        let Ok(Step::Took { len, .. }) = c.conn.read(&pings[at..]) else {
            panic!("not taken");
        };
        at += len;
    }
    assert!(c.conn.output().len() <= MAX_OUTPUT + 17, "bounded");
    assert!(at < pings.len(), "stopped before the flood's end");
    c.conn.output().clear();
    assert!(c.conn.wants_read());
}

/// The `h2` crate's client (hyper's HTTP/2) against this connection, driven by a small loop
/// that answers each request with its own path and body: 60 requests at once, some with
/// bodies larger than the windows, all answered as sent.
#[tokio::test]
async fn the_h2_crate_s_client_is_served_through_this_connection() {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let mut tasks = Vec::new();
        for i in 0..60usize {
            let mut client = client.clone().ready().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let body = vec![b'a' + (i % 26) as u8; i * 3_000];
                let request = http::Request::post(format!("https://api.example.com/echo/{i}"))
                    .body(())
                    .unwrap();
                let (response, mut send) = client.send_request(request, false).unwrap();
                send.reserve_capacity(body.len());
                let mut rest = Bytes::from(body.clone());
                while !rest.is_empty() {
                    let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    let piece = rest.split_to(capacity.min(rest.len()));
                    send.send_data(piece, false).unwrap();
                }
                send.send_data(Bytes::new(), true).unwrap();
                let response = response.await.unwrap();
                let path = response.headers()["x-path"].to_str().unwrap().to_owned();
                let mut received = response.into_body();
                let mut echoed = Vec::new();
                while let Some(piece) = received.data().await {
                    let piece = piece.unwrap();
                    received
                        .flow_control()
                        .release_capacity(piece.len())
                        .unwrap();
                    echoed.extend_from_slice(&piece);
                }
                assert_eq!(path, format!("/echo/{i}"));
                assert_eq!(echoed.len(), body.len(), "request {i}");
                assert!(echoed == body, "request {i}'s body echoed");
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });

    // The engine, in miniature: read, feed, answer each request with its path and, once its
    // body is in, the body back, as the windows allow.
    let mut conn = Connection::new(Limits::default());
    let mut buf = Vec::new();
    let mut bodies: HashMap<u32, (Vec<u8>, bool, usize)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut served = 0;
    while served < 60 {
        let mut chunk = vec![0u8; 1 << 16];
        let n = tokio::time::timeout_at(deadline, server_io.read(&mut chunk))
            .await
            .expect("the client went quiet")
            .unwrap();
        assert!(n > 0, "the client closed");
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Step::Took { len, event } = conn.read(&buf[at..]).unwrap() {
            at += len;
            match event {
                Some(Event::Request { stream, head, .. }) => {
                    let mut block = Vec::new();
                    crate::http2::response::encode(&mut block, 200, [("x-path", head.target())]);
                    conn.send_headers(stream, &block, false);
                    bodies.insert(stream, (Vec::new(), false, 0));
                }
                Some(Event::Data {
                    stream,
                    data,
                    end_stream,
                }) => {
                    let body = bodies.get_mut(&stream).unwrap();
                    body.0.extend_from_slice(data);
                    body.1 = end_stream;
                    conn.release(stream, data.len() as u32);
                }
                Some(Event::WindowOpened) | None => {}
                Some(other) => panic!("{other:?}"),
            }
        }
        buf.drain(..at);
        // Send what each finished body may send now.
        for (&stream, (body, done, sent)) in bodies.iter_mut() {
            if *done && *sent < body.len() + 1 {
                let n = conn.send_data(stream, &body[*sent..], true);
                *sent += n;
                if *sent == body.len() {
                    *sent += 1;
                    served += 1;
                }
            }
        }
        let out = std::mem::take(conn.output());
        server_io.write_all(&out).await.unwrap();
    }
    tokio::time::timeout_at(deadline, client)
        .await
        .expect("the client finished")
        .unwrap();
}

#[test]
fn a_send_window_pushed_past_2_31_fails_its_stream_or_the_connection() {
    // A stream's window: that stream is reset, the connection goes on.
    let mut c = Client::new(Limits::default());
    let mut b = c.headers(1, &GET, true);
    write_window_update(&mut b, 1, frame::MAX_WINDOW - 65_535);
    assert_eq!(
        c.send(&b),
        Ok(vec![
            Seen::Request(1, "/v1/items".into(), true),
            Seen::WindowOpened
        ])
    );
    let mut b = Vec::new();
    write_window_update(&mut b, 1, 1);
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Reset(1, ErrorCode::FLOW_CONTROL_ERROR)])
    );
    assert_eq!(c.output(), ["RST_STREAM 1 FLOW_CONTROL_ERROR"]);
    // Through SETTINGS_INITIAL_WINDOW_SIZE, with a stream whose window was opened: the
    // connection's error (§6.9.2).
    let mut b = c.headers(3, &GET, true);
    write_window_update(&mut b, 3, 1_000_000);
    write_settings(
        &mut b,
        &Settings {
            initial_window_size: Some(frame::MAX_WINDOW),
            ..Settings::default()
        },
    );
    assert_eq!(
        c.send(&b).unwrap_err(),
        ConnectionError {
            code: ErrorCode::FLOW_CONTROL_ERROR,
            reason: "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream's window"
        }
    );
}

#[test]
fn frames_rfc_9113_allows_on_idle_and_closed_streams_change_nothing() {
    let mut c = Client::new(Limits::default());
    // A request answered and closed.
    let b = c.headers(1, &GET, true);
    c.send(&b).unwrap();
    c.conn.send_headers(1, b"\x88", true);
    c.output();
    let mut b = Vec::new();
    // PRIORITY on an idle stream (§5.1), and on the closed one.
    b.extend(raw(0x2, 0, 9, b"\x00\x00\x00\x00\x10"));
    b.extend(raw(0x2, 0, 1, b"\x00\x00\x00\x00\x10"));
    // WINDOW_UPDATE and RST_STREAM on the closed stream: they may have crossed its end.
    write_window_update(&mut b, 1, 100);
    write_rst_stream(&mut b, 1, ErrorCode::CANCEL);
    // An extension frame, a PING's acknowledgement, an empty SETTINGS acknowledgement.
    b.extend(raw(0xfa, 0, 0, b"anything"));
    write_ping(&mut b, true, [0; 8]);
    b.extend(raw(0x4, 0x1, 0, b""));
    assert_eq!(c.send(&b), Ok(vec![]));
    assert!(c.output().is_empty(), "nothing to answer");
    // The connection goes on; stream 9 (idle, prioritized) may still open.
    let b = c.headers(9, &GET, true);
    assert_eq!(
        c.send(&b),
        Ok(vec![Seen::Request(9, "/v1/items".into(), true)])
    );
    // A PING is answered with its own bytes.
    let mut b = Vec::new();
    write_ping(&mut b, false, *b"answerme");
    c.send(&b).unwrap();
    let out = std::mem::take(c.conn.output());
    assert_eq!(
        frame::read(&out, DEFAULT_MAX_FRAME_SIZE),
        Ok(Read::Frame {
            frame: Frame::Ping {
                ack: true,
                data: *b"answerme"
            },
            len: 17
        })
    );
}
