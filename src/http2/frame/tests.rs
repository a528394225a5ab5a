use super::*;

/// A frame's bytes as a client would send them.
fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

fn frame(bytes: &[u8]) -> Frame<'_> {
    match read(bytes, DEFAULT_MAX_FRAME_SIZE) {
        Ok(Read::Frame { frame, len }) => {
            assert_eq!(len, bytes.len(), "the whole frame taken");
            frame
        }
        other => panic!("not one frame: {other:?}"),
    }
}

fn error(bytes: &[u8]) -> FrameError {
    match read(bytes, DEFAULT_MAX_FRAME_SIZE) {
        Err(e) => e,
        other => panic!("not refused: {other:?}"),
    }
}

fn conn(code: ErrorCode, reason: &'static str) -> FrameError {
    FrameError::Connection { code, reason }
}

#[test]
fn frames_read_as_rfc_9113_lays_them_out() {
    let cases: Vec<(&str, Vec<u8>, Frame<'static>)> = vec![
        (
            "DATA, END_STREAM",
            raw(kind::DATA, flag::END_STREAM, 1, b"hello"),
            Frame::Data {
                stream: 1,
                end_stream: true,
                data: b"hello",
                flow_len: 5,
            },
        ),
        (
            "DATA, padded: the padding counts for flow control only",
            raw(kind::DATA, flag::PADDED, 3, b"\x03hi\0\0\0"),
            Frame::Data {
                stream: 3,
                end_stream: false,
                data: b"hi",
                flow_len: 6,
            },
        ),
        (
            "DATA, padded with nothing left but the pad length",
            raw(kind::DATA, flag::PADDED, 3, b"\x00"),
            Frame::Data {
                stream: 3,
                end_stream: false,
                data: b"",
                flow_len: 1,
            },
        ),
        (
            "the reserved bit of a stream identifier is ignored",
            raw(kind::DATA, 0, 0x8000_0005, b"x"),
            Frame::Data {
                stream: 5,
                end_stream: false,
                data: b"x",
                flow_len: 1,
            },
        ),
        (
            "HEADERS, END_HEADERS",
            raw(kind::HEADERS, flag::END_HEADERS, 1, b"\x82\x84"),
            Frame::Headers {
                stream: 1,
                end_stream: false,
                end_headers: true,
                priority: None,
                block: b"\x82\x84",
            },
        ),
        (
            "HEADERS, padded, with priority, END_STREAM, no END_HEADERS",
            raw(
                kind::HEADERS,
                flag::PADDED | flag::PRIORITY | flag::END_STREAM,
                7,
                b"\x02\x80\x00\x00\x03\x10\x82\0\0",
            ),
            Frame::Headers {
                stream: 7,
                end_stream: true,
                end_headers: false,
                priority: Some(Priority {
                    exclusive: true,
                    depends_on: 3,
                    weight: 16,
                }),
                block: b"\x82",
            },
        ),
        (
            "PRIORITY",
            raw(kind::PRIORITY, 0, 5, b"\x00\x00\x00\x01\xff"),
            Frame::Priority {
                stream: 5,
                priority: Priority {
                    exclusive: false,
                    depends_on: 1,
                    weight: 255,
                },
            },
        ),
        (
            "RST_STREAM, a code this endpoint does not know",
            raw(kind::RST_STREAM, 0, 9, b"\x00\x00\x01\x00"),
            Frame::RstStream {
                stream: 9,
                code: ErrorCode(0x100),
            },
        ),
        (
            "SETTINGS: unknown identifiers ignored, the last of a repeated value wins",
            raw(
                kind::SETTINGS,
                0,
                0,
                b"\x00\x04\x00\x01\x00\x00\x00\x2a\x00\x00\x00\x01\x00\x04\x00\x00\xff\xff\
                  \x00\x08\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00",
            ),
            Frame::Settings(Settings {
                initial_window_size: Some(65_535),
                enable_connect_protocol: Some(true),
                enable_push: Some(false),
                ..Settings::default()
            }),
        ),
        (
            "SETTINGS, the bounds themselves",
            raw(
                kind::SETTINGS,
                0,
                0,
                b"\x00\x04\x7f\xff\xff\xff\x00\x05\x00\x00\x40\x00\x00\x05\x00\xff\xff\xff",
            ),
            Frame::Settings(Settings {
                initial_window_size: Some(MAX_WINDOW),
                max_frame_size: Some(MAX_MAX_FRAME_SIZE),
                ..Settings::default()
            }),
        ),
        (
            "SETTINGS, empty",
            raw(kind::SETTINGS, 0, 0, b""),
            Frame::Settings(Settings::default()),
        ),
        (
            "SETTINGS acknowledged",
            raw(kind::SETTINGS, flag::ACK, 0, b""),
            Frame::SettingsAck,
        ),
        (
            "PING",
            raw(kind::PING, 0, 0, b"12345678"),
            Frame::Ping {
                ack: false,
                data: *b"12345678",
            },
        ),
        (
            "GOAWAY with debug data",
            raw(
                kind::GOAWAY,
                0,
                0,
                b"\x80\x00\x00\x07\x00\x00\x00\x0bcalm down",
            ),
            Frame::GoAway {
                last_stream: 7,
                code: ErrorCode::ENHANCE_YOUR_CALM,
                debug: b"calm down",
            },
        ),
        (
            "WINDOW_UPDATE of the connection, reserved bit ignored",
            raw(kind::WINDOW_UPDATE, 0, 0, b"\x80\x00\x01\x00"),
            Frame::WindowUpdate {
                stream: 0,
                increment: 256,
            },
        ),
        (
            "CONTINUATION, END_HEADERS",
            raw(kind::CONTINUATION, flag::END_HEADERS, 1, b"\x86"),
            Frame::Continuation {
                stream: 1,
                end_headers: true,
                block: b"\x86",
            },
        ),
        (
            "an extension frame, even on stream 0",
            raw(0xfa, 0xff, 0, b"anything"),
            Frame::Unknown {
                kind: 0xfa,
                stream: 0,
            },
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(frame(&bytes), want, "{what}");
    }
}

#[test]
fn a_broken_rule_costs_what_rfc_9113_says() {
    use ErrorCode as E;
    let stream_error = |stream, code, reason, len| FrameError::Stream {
        stream,
        code,
        reason,
        len,
    };
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (
            raw(kind::DATA, 0, 0, b"x"),
            conn(E::PROTOCOL_ERROR, "a DATA frame on stream 0"),
        ),
        (
            raw(kind::DATA, flag::PADDED, 1, b"\x03ab"),
            conn(
                E::PROTOCOL_ERROR,
                "padding as long as the frame's payload or longer",
            ),
        ),
        (
            raw(kind::DATA, flag::PADDED, 1, b"\x01"),
            conn(
                E::PROTOCOL_ERROR,
                "padding as long as the frame's payload or longer",
            ),
        ),
        (
            raw(kind::DATA, flag::PADDED, 1, b""),
            conn(
                E::FRAME_SIZE_ERROR,
                "a padded frame without room for its pad length",
            ),
        ),
        (
            raw(kind::HEADERS, flag::END_HEADERS, 0, b"\x82"),
            conn(E::PROTOCOL_ERROR, "a HEADERS frame on stream 0"),
        ),
        (
            raw(kind::HEADERS, flag::END_HEADERS, 2, b"\x82"),
            conn(E::PROTOCOL_ERROR, "a HEADERS frame on an even stream"),
        ),
        (
            raw(kind::HEADERS, flag::PRIORITY, 1, b"\0\0\0\x03"),
            conn(
                E::FRAME_SIZE_ERROR,
                "a HEADERS frame without room for its priority",
            ),
        ),
        (
            // The padding eats into the priority fields.
            raw(
                kind::HEADERS,
                flag::PRIORITY | flag::PADDED,
                1,
                b"\x01\0\0\0\x03\x10",
            ),
            conn(
                E::PROTOCOL_ERROR,
                "padding as long as the frame's payload or longer",
            ),
        ),
        (
            raw(kind::PRIORITY, 0, 0, b"\0\0\0\x01\x10"),
            conn(E::PROTOCOL_ERROR, "a PRIORITY frame on stream 0"),
        ),
        (
            raw(kind::PRIORITY, 0, 3, b"\0\0\0\x01"),
            stream_error(
                3,
                E::FRAME_SIZE_ERROR,
                "a PRIORITY frame not 5 bytes long",
                13,
            ),
        ),
        (
            raw(kind::PRIORITY, 0, 3, b"\x80\0\0\x03\x10"),
            stream_error(3, E::PROTOCOL_ERROR, "a stream that depends on itself", 14),
        ),
        (
            raw(kind::RST_STREAM, 0, 0, b"\0\0\0\x08"),
            conn(E::PROTOCOL_ERROR, "a RST_STREAM frame on stream 0"),
        ),
        (
            raw(kind::RST_STREAM, 0, 1, b"\0\0\x08"),
            conn(E::FRAME_SIZE_ERROR, "a RST_STREAM frame not 4 bytes long"),
        ),
        (
            raw(kind::SETTINGS, 0, 1, b""),
            conn(E::PROTOCOL_ERROR, "a SETTINGS frame on a stream"),
        ),
        (
            raw(kind::SETTINGS, flag::ACK, 0, b"\0\x01\0\0\0\0"),
            conn(
                E::FRAME_SIZE_ERROR,
                "a SETTINGS acknowledgement with a payload",
            ),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x01\0\0\0"),
            conn(
                E::FRAME_SIZE_ERROR,
                "a SETTINGS frame not a multiple of 6 bytes long",
            ),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x02\0\0\0\x02"),
            conn(E::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH neither 0 nor 1"),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x08\xff\xff\xff\xff"),
            conn(
                E::PROTOCOL_ERROR,
                "SETTINGS_ENABLE_CONNECT_PROTOCOL neither 0 nor 1",
            ),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x04\x80\0\0\0"),
            conn(
                E::FLOW_CONTROL_ERROR,
                "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
            ),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x05\0\0\x3f\xff"),
            conn(
                E::PROTOCOL_ERROR,
                "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
            ),
        ),
        (
            raw(kind::SETTINGS, 0, 0, b"\0\x05\x01\0\0\0"),
            conn(
                E::PROTOCOL_ERROR,
                "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
            ),
        ),
        (
            raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, b"\0\0\0\x02"),
            conn(E::PROTOCOL_ERROR, "a PUSH_PROMISE frame from a client"),
        ),
        (
            raw(kind::PING, 0, 1, b"12345678"),
            conn(E::PROTOCOL_ERROR, "a PING frame on a stream"),
        ),
        (
            raw(kind::PING, 0, 0, b"1234567"),
            conn(E::FRAME_SIZE_ERROR, "a PING frame not 8 bytes long"),
        ),
        (
            raw(kind::GOAWAY, 0, 3, b"\0\0\0\0\0\0\0\0"),
            conn(E::PROTOCOL_ERROR, "a GOAWAY frame on a stream"),
        ),
        (
            raw(kind::GOAWAY, 0, 0, b"\0\0\0\0\0\0\0"),
            conn(E::FRAME_SIZE_ERROR, "a GOAWAY frame shorter than 8 bytes"),
        ),
        (
            raw(kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
            conn(E::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"),
        ),
        (
            // The reserved bit set and nothing else: still an increment of 0.
            raw(kind::WINDOW_UPDATE, 0, 5, b"\x80\0\0\0"),
            stream_error(5, E::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0", 13),
        ),
        (
            raw(kind::WINDOW_UPDATE, 0, 5, b"\0\0\0\x01\0"),
            conn(
                E::FRAME_SIZE_ERROR,
                "a WINDOW_UPDATE frame not 4 bytes long",
            ),
        ),
        (
            raw(kind::CONTINUATION, flag::END_HEADERS, 0, b"\x82"),
            conn(E::PROTOCOL_ERROR, "a CONTINUATION frame on stream 0"),
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(error(&bytes), want, "{bytes:02x?}");
    }
}

#[test]
fn a_frame_larger_than_allowed_is_refused_from_its_header_alone() {
    let mut big = Vec::new();
    header(&mut big, 16_385, kind::DATA, 0, 1);
    assert_eq!(
        read(&big, DEFAULT_MAX_FRAME_SIZE),
        Err(conn(
            ErrorCode::FRAME_SIZE_ERROR,
            "a frame longer than SETTINGS_MAX_FRAME_SIZE"
        )),
        "nothing of the payload waited for"
    );
    // Allowed once this endpoint has announced more (and the client acknowledged it).
    assert_eq!(read(&big, 1 << 20), Ok(Read::Incomplete));
    // Every type, extension frames too: the length is the first thing read.
    big[3] = 0xfa;
    assert!(read(&big, DEFAULT_MAX_FRAME_SIZE).is_err());
}

#[test]
fn a_frame_is_read_only_once_all_of_it_is_there() {
    let mut bytes = raw(kind::HEADERS, flag::END_HEADERS, 1, b"\x82\x86\x84");
    let whole = bytes.len();
    // A second frame behind it is left for the next read.
    bytes.extend(raw(kind::PING, 0, 0, b"abcdefgh"));
    for end in 0..whole {
        assert_eq!(
            read(&bytes[..end], DEFAULT_MAX_FRAME_SIZE),
            Ok(Read::Incomplete),
            "{end} bytes"
        );
    }
    let Ok(Read::Frame { len, .. }) = read(&bytes, DEFAULT_MAX_FRAME_SIZE) else {
        panic!("no frame");
    };
    assert_eq!(len, whole);
    assert_eq!(
        frame(&bytes[len..]),
        Frame::Ping {
            ack: false,
            data: *b"abcdefgh"
        }
    );
}

#[test]
fn what_a_server_writes_reads_back_the_same() {
    let settings = Settings {
        header_table_size: Some(0),
        enable_push: Some(false),
        max_concurrent_streams: Some(200),
        initial_window_size: Some(1 << 20),
        max_frame_size: Some(1 << 14),
        max_header_list_size: Some(16 << 10),
        enable_connect_protocol: Some(true),
    };
    let mut out = Vec::new();
    write_settings(&mut out, &settings);
    assert_eq!(out.len(), HEADER_LEN + 7 * 6);
    assert_eq!(frame(&out), Frame::Settings(settings));

    let cases: Vec<(Vec<u8>, Frame<'static>)> = vec![
        (
            {
                let mut out = Vec::new();
                write_settings_ack(&mut out);
                out
            },
            Frame::SettingsAck,
        ),
        (
            {
                let mut out = Vec::new();
                write_ping(&mut out, true, *b"pingpong");
                out
            },
            Frame::Ping {
                ack: true,
                data: *b"pingpong",
            },
        ),
        (
            {
                let mut out = Vec::new();
                write_goaway(&mut out, 41, ErrorCode::NO_ERROR, b"bye");
                out
            },
            Frame::GoAway {
                last_stream: 41,
                code: ErrorCode::NO_ERROR,
                debug: b"bye",
            },
        ),
        (
            {
                let mut out = Vec::new();
                write_rst_stream(&mut out, 3, ErrorCode::REFUSED_STREAM);
                out
            },
            Frame::RstStream {
                stream: 3,
                code: ErrorCode::REFUSED_STREAM,
            },
        ),
        (
            {
                let mut out = Vec::new();
                write_window_update(&mut out, 0, MAX_WINDOW);
                out
            },
            Frame::WindowUpdate {
                stream: 0,
                increment: MAX_WINDOW,
            },
        ),
        (
            {
                let mut out = Vec::new();
                write_data_header(&mut out, 5, 3, true);
                out.extend_from_slice(b"end");
                out
            },
            Frame::Data {
                stream: 5,
                end_stream: true,
                data: b"end",
                flow_len: 3,
            },
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(frame(&bytes), want);
    }
}

#[test]
fn a_long_header_block_goes_out_in_continuation_frames() {
    let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
    let mut out = Vec::new();
    write_headers(&mut out, 9, &block, true, DEFAULT_MAX_FRAME_SIZE);
    let mut at = 0;
    let mut frames = Vec::new();
    while at < out.len() {
        let Ok(Read::Frame { frame, len }) = read(&out[at..], DEFAULT_MAX_FRAME_SIZE) else {
            panic!("not a frame at {at}");
        };
        frames.push(frame);
        at += len;
    }
    let mut joined = Vec::new();
    let flags: Vec<(bool, bool)> = frames
        .iter()
        .map(|f| match f {
            Frame::Headers {
                stream: 9,
                end_stream,
                end_headers,
                priority: None,
                block,
            } => {
                joined.extend_from_slice(block);
                (*end_stream, *end_headers)
            }
            Frame::Continuation {
                stream: 9,
                end_headers,
                block,
            } => {
                joined.extend_from_slice(block);
                (false, *end_headers)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(joined, block);
    // 16,384 + 16,384 + 7,232: END_STREAM on the HEADERS frame, END_HEADERS on the last.
    assert_eq!(flags, [(true, false), (false, false), (false, true)]);

    // A short block, and an empty one, fit one frame.
    for block in [&b"\x88"[..], b""] {
        let mut out = Vec::new();
        write_headers(&mut out, 1, block, false, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(
            frame(&out),
            Frame::Headers {
                stream: 1,
                end_stream: false,
                end_headers: true,
                priority: None,
                block,
            }
        );
    }
}

#[test]
fn error_codes_have_their_names_and_unknown_ones_their_number() {
    assert_eq!(
        format!("{:?}", ErrorCode::HTTP_1_1_REQUIRED),
        "HTTP_1_1_REQUIRED"
    );
    assert_eq!(format!("{:?}", ErrorCode(0xe)), "ErrorCode(0xe)");
    assert_eq!(ErrorCode::NO_ERROR.name(), Some("NO_ERROR"));
}

/// The `h2` crate (hyper's HTTP/2, an independent reading of RFC 9113) as the client: what it
/// sends reads as the frames it meant, and what this layer writes back, it reads as meant.
#[tokio::test]
async fn the_h2_crate_and_this_layer_read_each_other() {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (mut client, mut connection) = h2::client::handshake(client_io).await.unwrap();
        let mut ping_pong = connection.ping_pong().unwrap();
        let driver = tokio::spawn(connection);
        // Answered before anything else is sent: a GOAWAY would fail a PING still waiting.
        ping_pong.ping(h2::Ping::opaque()).await.unwrap();
        let request = http::Request::post("http://example.test/v1/items")
            .header("x-api-key", "kg_sk_live_x")
            .body(())
            .unwrap();
        let (refused, mut body) = client.send_request(request.clone(), false).unwrap();
        body.send_data(Bytes::from_static(b"hello"), true).unwrap();
        let (_, mut cancelled) = client.send_request(request, false).unwrap();
        cancelled.send_reset(h2::Reason::CANCEL);
        let refused = refused.await.unwrap_err();
        drop(client);
        (refused.reason(), driver.await.unwrap())
    });

    // The server's side, written by this layer and answering as the frames come: SETTINGS
    // first, then an acknowledgement of the client's, its PING answered, and once it has
    // reset its second stream, the first refused and the connection ended.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut out = Vec::new();
    write_settings(
        &mut out,
        &Settings {
            max_concurrent_streams: Some(100),
            initial_window_size: Some(1 << 20),
            ..Settings::default()
        },
    );
    write_window_update(&mut out, 0, 1 << 20);
    server_io.write_all(&out).await.unwrap();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut preface = false;
    let (mut reset, mut pinged, mut done) = (false, false, false);
    while !done {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, server_io.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("the client went quiet; read so far: {seen:?}"))
            .unwrap();
        assert!(n > 0, "the client closed early; read so far: {seen:?}");
        buf.extend_from_slice(&chunk[..n]);
        if !preface {
            if buf.len() < PREFACE.len() {
                continue;
            }
            assert_eq!(&buf[..PREFACE.len()], PREFACE);
            buf.drain(..PREFACE.len());
            preface = true;
        }
        let mut out = Vec::new();
        while let Read::Frame { frame, len } = read(&buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
            seen.push(match frame {
                Frame::Settings(_) => {
                    write_settings_ack(&mut out);
                    "SETTINGS".to_owned()
                }
                Frame::SettingsAck => "SETTINGS ack".to_owned(),
                Frame::WindowUpdate { stream, .. } => format!("WINDOW_UPDATE {stream}"),
                Frame::Headers {
                    stream,
                    end_stream,
                    end_headers,
                    priority,
                    block,
                } => {
                    assert!(end_headers && priority.is_none() && !block.is_empty());
                    format!("HEADERS {stream} end_stream={end_stream}")
                }
                Frame::Data {
                    stream,
                    end_stream,
                    data,
                    ..
                } => format!(
                    "DATA {stream} {} end_stream={end_stream}",
                    String::from_utf8_lossy(data)
                ),
                Frame::RstStream { stream, code } => {
                    reset = true;
                    format!("RST_STREAM {stream} {code:?}")
                }
                Frame::Ping { ack, data } => {
                    write_ping(&mut out, true, data);
                    pinged = true;
                    format!("PING ack={ack}")
                }
                other => panic!("unexpected {other:?}"),
            });
            buf.drain(..len);
        }
        if reset && pinged {
            write_rst_stream(&mut out, 1, ErrorCode::REFUSED_STREAM);
            write_goaway(&mut out, 3, ErrorCode::NO_ERROR, b"done");
            done = true;
        }
        server_io.write_all(&out).await.unwrap();
    }
    let (reason, connection) = tokio::time::timeout_at(deadline, client)
        .await
        .expect("the client finished")
        .unwrap();
    assert_eq!(
        reason,
        Some(h2::Reason::REFUSED_STREAM),
        "the reset read as sent"
    );
    assert!(
        connection.is_ok(),
        "a GOAWAY with NO_ERROR ends the connection cleanly: {connection:?}"
    );
    // Each stream's frames in order (the h2 crate may put one stream's between another's).
    for stream in ["1", "3"] {
        let frames: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|s| s.split(' ').nth(1) == Some(stream))
            .collect();
        let want: &[&str] = match stream {
            "1" => &["HEADERS 1 end_stream=false", "DATA 1 hello end_stream=true"],
            _ => &["HEADERS 3 end_stream=false", "RST_STREAM 3 CANCEL"],
        };
        assert_eq!(frames, want, "{seen:?}");
    }
    assert_eq!(seen[0], "SETTINGS", "the client's SETTINGS first");
    for wanted in ["SETTINGS ack", "PING ack=false"] {
        assert!(
            seen.iter().any(|s| s == wanted),
            "{wanted} missing: {seen:?}"
        );
    }
}
