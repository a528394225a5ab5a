//! keygate's HTTP/2 frame layer (`http2::frame::read` and the frames a server writes).
//!
//! Input: two bytes that set the SETTINGS_MAX_FRAME_SIZE the reader enforces (2^14 plus up to
//! 2^16 - 1 more), then a client's frames.
//!
//! - Reading never panics and takes what it says: a frame of `len` bytes is at least its
//!   header, at most what is there and the size allowed; one byte less of it reads as not
//!   yet whole; a stream error's frame is skipped like any other, a connection error ends it.
//! - A frame a server also writes (SETTINGS, its acknowledgement, PING, GOAWAY, RST_STREAM,
//!   WINDOW_UPDATE, DATA, a header block) reads back, once written by this layer, as what was
//!   read (DATA and HEADERS without their padding and priority).

#![no_main]

use keygate::http2::frame::{
    self, DEFAULT_MAX_FRAME_SIZE, Frame, FrameError, HEADER_LEN, Read, write_data_header,
    write_goaway, write_headers, write_ping, write_rst_stream, write_settings, write_settings_ack,
    write_window_update,
};
use libfuzzer_sys::fuzz_target;

/// `frame` written by this layer, if a server writes such frames, and what it should read as.
fn rewritten<'a>(frame: &Frame<'a>, max: u32) -> Option<(Vec<u8>, Frame<'a>)> {
    let mut out = Vec::new();
    let want = match *frame {
        Frame::Settings(settings) => {
            write_settings(&mut out, &settings);
            frame.clone()
        }
        Frame::SettingsAck => {
            write_settings_ack(&mut out);
            frame.clone()
        }
        Frame::Ping { ack, data } => {
            write_ping(&mut out, ack, data);
            frame.clone()
        }
        Frame::GoAway {
            last_stream,
            code,
            debug,
        } => {
            write_goaway(&mut out, last_stream, code, debug);
            frame.clone()
        }
        Frame::RstStream { stream, code } => {
            write_rst_stream(&mut out, stream, code);
            frame.clone()
        }
        Frame::WindowUpdate { stream, increment } => {
            write_window_update(&mut out, stream, increment);
            frame.clone()
        }
        Frame::Data {
            stream,
            end_stream,
            data,
            ..
        } => {
            write_data_header(&mut out, stream, data.len(), end_stream);
            out.extend_from_slice(data);
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len: data.len() as u32,
            }
        }
        Frame::Headers {
            stream,
            end_stream,
            block,
            ..
        } => {
            // A whole block in one frame when it fits (this layer splits longer ones).
            if block.len() > max as usize {
                return None;
            }
            write_headers(&mut out, stream, block, end_stream, max);
            Frame::Headers {
                stream,
                end_stream,
                end_headers: true,
                priority: None,
                block,
            }
        }
        _ => return None,
    };
    Some((out, want))
}

fuzz_target!(|input: &[u8]| {
    let Some((size, mut bytes)) = input.split_first_chunk::<2>() else {
        return;
    };
    let max = DEFAULT_MAX_FRAME_SIZE + u32::from(u16::from_be_bytes(*size));
    loop {
        let len = match frame::read(bytes, max) {
            Ok(Read::Incomplete) => return,
            Err(FrameError::Connection { .. }) => return,
            Err(FrameError::Stream { len, .. }) => len,
            Ok(Read::Frame { frame, len }) => {
                if let Some((out, want)) = rewritten(&frame, max) {
                    match frame::read(&out, max) {
                        Ok(Read::Frame { frame: again, len }) => {
                            assert_eq!(again, want, "rewritten");
                            assert_eq!(len, out.len(), "one frame");
                        }
                        other => panic!("{frame:?} rewritten reads as {other:?}"),
                    }
                }
                len
            }
        };
        assert!(len >= HEADER_LEN && len <= bytes.len(), "len {len}");
        assert!(len - HEADER_LEN <= max as usize);
        assert_eq!(
            frame::read(&bytes[..len - 1], max),
            Ok(Read::Incomplete),
            "one byte short"
        );
        bytes = &bytes[len..];
    }
});
