//! For the tests of this module's layers: a client's frames, read off the server's end of an
//! in-memory socket whose other end a real client (the `h2` crate's) writes.

use tokio::io::{AsyncReadExt, DuplexStream};
use tokio::time::Instant;

use super::frame::{self, Frame, PREFACE, Read};

/// Reads from `io` into `buf` (dropping the client's preface) and hands each whole frame to
/// `each`, until `each` returns something; what is left in `buf` waits for the next call.
/// Panics if the client goes quiet past `deadline`, closes, or sends a broken frame.
pub(crate) async fn until<T>(
    io: &mut DuplexStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    mut each: impl FnMut(Frame<'_>) -> Option<T>,
) -> T {
    loop {
        while let Read::Frame { frame, len } =
            frame::read(buf, frame::DEFAULT_MAX_FRAME_SIZE).expect("a well-formed frame")
        {
            let found = each(frame);
            buf.drain(..len);
            if let Some(found) = found {
                return found;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, io.read(&mut chunk))
            .await
            .expect("the client went quiet")
            .unwrap();
        assert!(n > 0, "the client closed");
        buf.extend_from_slice(&chunk[..n]);
        if buf.starts_with(PREFACE) {
            buf.drain(..PREFACE.len());
        }
    }
}
