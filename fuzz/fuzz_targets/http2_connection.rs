//! One HTTP/2 connection's state (`http2::connection::Connection`) fed a client's bytes, with
//! a small engine that answers each request and gives each body piece back.
//!
//! Input: one byte of limits (bits 0-2: SETTINGS_MAX_CONCURRENT_STREAMS 1-8; bit 3: small
//! windows), then the client's bytes (the preface and a SETTINGS frame are put first).
//!
//! - Nothing panics; the bytes are taken whole, frame by frame, until a connection error,
//!   which leaves a GOAWAY as the last frame written.
//! - Everything written is well-formed frames, as a client reads them.
//! - Streams open never exceed the concurrency limit; a request event names a stream above
//!   every earlier one; a body piece comes only on a stream whose request came.

#![no_main]

use std::collections::HashSet;

use keygate::http2::connection::{Connection, Event, Limits, Step};
use keygate::http2::frame::{self, Frame, Read, Settings, write_settings};
use libfuzzer_sys::fuzz_target;

/// Every frame in `out`, or a panic; the last one.
fn frames(out: &[u8]) -> Option<String> {
    let mut at = 0;
    let mut last = None;
    while at < out.len() {
        match frame::read(&out[at..], 1 << 24) {
            Ok(Read::Frame { frame, len }) => {
                last = Some(match frame {
                    Frame::GoAway { .. } => "GOAWAY".to_owned(),
                    other => format!("{other:?}").chars().take(16).collect(),
                });
                at += len;
            }
            other => panic!("the server wrote a broken frame at {at}: {other:?}"),
        }
    }
    last
}

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, rest)) = input.split_first() else {
        return;
    };
    let limits = Limits {
        max_concurrent_streams: u32::from(knobs & 7) + 1,
        stream_window: if knobs & 8 != 0 { 100 } else { 1 << 20 },
        connection_window: if knobs & 8 != 0 { 300 } else { 1 << 20 },
        ..Limits::default()
    };
    let mut conn = Connection::new(limits);
    let mut bytes = frame::PREFACE.to_vec();
    write_settings(&mut bytes, &Settings::default());
    bytes.extend_from_slice(rest);
    let mut requests = HashSet::new();
    let mut highest = 0;
    let mut at = 0;
    loop {
        match conn.read(&bytes[at..]) {
            Ok(Step::Incomplete) => break,
            Err(_) => {
                let out = std::mem::take(conn.output());
                assert_eq!(frames(&out).as_deref(), Some("GOAWAY"), "a GOAWAY last");
                return;
            }
            Ok(Step::Took { len, event }) => {
                assert!(len > 0 && len <= bytes.len() - at);
                at += len;
                match event {
                    Some(Event::Request { stream, .. }) => {
                        assert!(stream > highest, "stream {stream} after {highest}");
                        highest = stream;
                        requests.insert(stream);
                        conn.send_headers(stream, b"\x88", false);
                        conn.send_data(stream, b"answer", true);
                    }
                    Some(Event::Data { stream, data, .. }) => {
                        assert!(requests.contains(&stream), "a body for no request");
                        conn.release(stream, data.len() as u32);
                    }
                    _ => {}
                }
                assert!(conn.open_streams() <= limits.max_concurrent_streams as usize);
            }
        }
        if !conn.wants_read() {
            frames(&std::mem::take(conn.output()));
        }
    }
    frames(&std::mem::take(conn.output()));
});
