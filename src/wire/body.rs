//! Message bodies on the wire: reading one as its sender framed it (a length, chunks, or until
//! close) and writing it as the receiver needs it, streamed through one buffer, never whole.
//!
//! Chunked bodies are decoded and encoded again rather than passed through: what the next hop
//! parses is then keygate's own framing (no chunk extensions, no trailers, CRLF line ends), so a
//! quirk in the sender's chunking cannot be read two ways. The decoder is strict: hex digits,
//! an optional extension of bounded length, CRLF.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Framing;
use super::buffer::Buffer;

/// A chunk-size line longer than this (hex digits plus extensions) is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields after the last chunk, in all: read and dropped.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the body: {0}")]
    Read(#[source] io::Error),
    #[error("writing the body: {0}")]
    Write(#[source] io::Error),
    #[error("the connection closed before the body ended")]
    Truncated,
    #[error("malformed chunked encoding")]
    Malformed,
    #[error("the body is larger than allowed")]
    TooLarge,
}

/// Where a body reader is in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// Bytes of a `Content-Length` body still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the sender closes.
    Close,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left, then CRLF.
    Data(u64),
    /// After a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes of them seen so far.
    Trailers(usize),
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::Size),
            Framing::Close => Self::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }

    /// Takes what it can from the front of `input`: returns how many bytes it consumed and the
    /// range of body data among them (empty when `input` held only framing). Call again with
    /// the rest until it consumes nothing (then it needs more input) or it is done.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, std::ops::Range<usize>), BodyError> {
        match self {
            Self::Done => Ok((0, 0..0)),
            Self::Close => Ok((input.len(), 0..input.len())),
            Self::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                Ok((n, 0..n))
            }
            Self::Chunked(state) => {
                let step = state.step(input)?;
                if step.done {
                    *self = Self::Done;
                }
                Ok((step.consumed, step.data))
            }
        }
    }
}

struct Step {
    consumed: usize,
    data: std::ops::Range<usize>,
    done: bool,
}

impl Chunked {
    fn step(&mut self, input: &[u8]) -> Result<Step, BodyError> {
        let none = |consumed| Step {
            consumed,
            data: 0..0,
            done: false,
        };
        match *self {
            Self::Size => {
                let Some(end) = find_crlf(input, MAX_CHUNK_LINE)? else {
                    return Ok(none(0));
                };
                let size = chunk_size(&input[..end])?;
                *self = if size == 0 {
                    Self::Trailers(0)
                } else {
                    Self::Data(size)
                };
                Ok(none(end + 2))
            }
            Self::Data(left) => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                *self = if n as u64 == left {
                    Self::DataEnd
                } else {
                    Self::Data(left - n as u64)
                };
                Ok(Step {
                    consumed: n,
                    data: 0..n,
                    done: false,
                })
            }
            Self::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    *self = Self::Size;
                    Ok(none(2))
                }
                [] | [b'\r'] => Ok(none(0)),
                _ => Err(BodyError::Malformed),
            },
            Self::Trailers(seen) => {
                let Some(end) = find_crlf(input, MAX_TRAILERS.saturating_sub(seen))? else {
                    return Ok(none(0));
                };
                if end == 0 {
                    return Ok(Step {
                        consumed: 2,
                        data: 0..0,
                        done: true,
                    });
                }
                *self = Self::Trailers(seen + end + 2);
                Ok(none(end + 2))
            }
        }
    }
}

/// The position of the first CRLF in `input`, if it is within `max` bytes; a bare LF, or no
/// line end within `max`, is malformed.
fn find_crlf(input: &[u8], max: usize) -> Result<Option<usize>, BodyError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(lf) if lf > 0 && input[lf - 1] == b'\r' && lf - 1 <= max => Ok(Some(lf - 1)),
        Some(_) => Err(BodyError::Malformed),
        None if input.len() > max + 1 => Err(BodyError::Malformed),
        None => Ok(None),
    }
}

/// `1a3f` or `1a3f;name=value` (extensions ignored), hex digits first, at most 15 of them.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Malformed);
    }
    // No control character but tab anywhere after the digits (a bare CR, a form feed); then
    // only spaces or tabs before an extension.
    let rest = &line[digits..];
    if rest.iter().any(|&b| b < b' ' && b != b'\t' || b == 0x7f) {
        return Err(BodyError::Malformed);
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BodyError::Malformed);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::Malformed)?;
    u64::from_str_radix(hex, 16).map_err(|_| BodyError::Malformed)
}

/// How a body is written to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As the bytes come (a `Content-Length` body, or one delimited by closing).
    Raw,
    Chunked,
}

impl Encoding {
    /// Appends `data`, framed, to `out`.
    pub fn frame(self, data: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Raw => out.extend_from_slice(data),
            Self::Chunked if data.is_empty() => {}
            Self::Chunked => {
                let mut hex = [0u8; 16];
                let digits = hex_len(data.len(), &mut hex);
                out.extend_from_slice(digits);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends what ends the body, if the encoding has an end marker.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self == Self::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Decodes what `buf` already holds into `out`, encoded: the part of a body that arrived with
/// its head. Returns the body bytes taken.
pub fn take_buffered(
    decoder: &mut Decoder,
    encoding: Encoding,
    buf: &mut Buffer,
    out: &mut Vec<u8>,
) -> Result<u64, BodyError> {
    let mut taken = 0;
    while !decoder.is_done() && !buf.is_empty() {
        let (consumed, data) = decoder.decode(buf.filled())?;
        if consumed == 0 {
            break;
        }
        encoding.frame(&buf.filled()[data.clone()], out);
        taken += data.len() as u64;
        buf.consume(consumed);
    }
    if decoder.is_done() {
        encoding.finish(out);
    }
    Ok(taken)
}

/// Streams the rest of a body from `src` to `dst`: `buf` is `src`'s read buffer (holding
/// whatever was already read), `out` scratch space. `limit` caps the body bytes in all,
/// `sent` counts them (what [`take_buffered`] took included). `progress` is called each time
/// bytes reach `dst`.
#[allow(clippy::too_many_arguments)]
pub async fn copy<R, W>(
    src: &mut R,
    buf: &mut Buffer,
    dst: &mut W,
    decoder: &mut Decoder,
    encoding: Encoding,
    out: &mut Vec<u8>,
    limit: u64,
    sent: &mut u64,
    mut progress: impl FnMut(),
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    loop {
        out.clear();
        *sent += take_buffered(decoder, encoding, buf, out)?;
        if *sent > limit {
            return Err(BodyError::TooLarge);
        }
        if !out.is_empty() {
            // Flushed piece by piece: a streamed response (server-sent events) must reach the
            // client before the upstream sends more, through whatever buffers `dst` (TLS, or a
            // batched connection, which sends at the flush). A plain socket's flush is free.
            dst.write_all(out).await.map_err(BodyError::Write)?;
            dst.flush().await.map_err(BodyError::Write)?;
            progress();
        }
        if decoder.is_done() {
            dst.flush().await.map_err(BodyError::Write)?;
            return Ok(());
        }
        let n = src.read(buf.spare()).await.map_err(BodyError::Read)?;
        if n == 0 {
            if *decoder == Decoder::Close {
                *decoder = Decoder::Done;
                continue;
            }
            return Err(BodyError::Truncated);
        }
        buf.filled_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the body, or the error.
    fn decode_all(framing: Framing, input: &[u8], step: usize) -> Result<Vec<u8>, BodyError> {
        let mut decoder = Decoder::new(framing);
        let mut pending: Vec<u8> = Vec::new();
        let mut body = Vec::new();
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            loop {
                let (consumed, data) = decoder.decode(&pending)?;
                body.extend_from_slice(&pending[data]);
                pending.drain(..consumed);
                if consumed == 0 || decoder.is_done() {
                    break;
                }
            }
            if decoder.is_done() {
                break;
            }
        }
        if decoder.is_done() || decoder == Decoder::Close {
            Ok(body)
        } else {
            Err(BodyError::Truncated)
        }
    }

    #[test]
    fn chunked_decoding_table() {
        let ok = |s: &str| Some(s.as_bytes().to_vec());
        let cases: &[(&str, &str, Option<Vec<u8>>)] = &[
            ("one chunk", "5\r\nhello\r\n0\r\n\r\n", ok("hello")),
            (
                "two chunks",
                "2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
                ok("hello"),
            ),
            (
                "upper hex",
                "A\r\n0123456789\r\n0\r\n\r\n",
                ok("0123456789"),
            ),
            ("leading zeros", "0005\r\nhello\r\n0\r\n\r\n", ok("hello")),
            ("extension", "5;name=v\r\nhello\r\n0;x\r\n\r\n", ok("hello")),
            (
                "space before extension",
                "5 ;a\r\nhello\r\n0\r\n\r\n",
                ok("hello"),
            ),
            (
                "trailers",
                "5\r\nhello\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n",
                ok("hello"),
            ),
            ("empty body", "0\r\n\r\n", ok("")),
            ("bare LF after size", "5\nhello\r\n0\r\n\r\n", None),
            ("bare LF after data", "5\r\nhello\n0\r\n\r\n", None),
            ("data longer than size", "3\r\nhello\r\n0\r\n\r\n", None),
            ("no digits", "\r\nhello\r\n0\r\n\r\n", None),
            ("sign", "+5\r\nhello\r\n0\r\n\r\n", None),
            ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", None),
            (
                "16 hex digits",
                "0000000000000005\r\nhello\r\n0\r\n\r\n",
                None,
            ),
            ("junk after size", "5 x\r\nhello\r\n0\r\n\r\n", None),
            (
                "bare CR before extension",
                "5\r;x\r\nhello\r\n0\r\n\r\n",
                None,
            ),
            ("form feed after size", "5\x0c\r\nhello\r\n0\r\n\r\n", None),
            ("CR inside the line", "5 \r\r\nhello\r\n0\r\n\r\n", None),
            (
                "tab before extension",
                "5\t;x\r\nhello\r\n0\r\n\r\n",
                ok("hello"),
            ),
            ("truncated", "5\r\nhel", None),
            ("no last chunk", "5\r\nhello\r\n", None),
            ("trailer without end", "0\r\nX: 1\r\n", None),
        ];
        for (name, input, want) in cases {
            for step in [1, 2, 7, input.len()] {
                let got = decode_all(Framing::Chunked, input.as_bytes(), step).ok();
                assert_eq!(&got, want, "{name}, fed {step} bytes at a time");
            }
        }
    }

    #[test]
    fn a_huge_chunk_line_is_refused() {
        let line = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(Framing::Chunked, line.as_bytes(), 64).is_err());
        let trailers = format!("0\r\nX: {}\r\n\r\n", "y".repeat(MAX_TRAILERS));
        assert!(decode_all(Framing::Chunked, trailers.as_bytes(), 512).is_err());
    }

    #[test]
    fn lengths_stop_at_their_end() {
        assert_eq!(
            decode_all(Framing::Length(5), b"helloEXTRA", 3).unwrap(),
            b"hello"
        );
        assert!(decode_all(Framing::Length(5), b"hel", 3).is_err());
        assert_eq!(
            decode_all(Framing::Close, b"all of it", 4).unwrap(),
            b"all of it"
        );
    }

    #[test]
    fn chunked_encoding_round_trips() {
        let mut out = Vec::new();
        Encoding::Chunked.frame(b"hello", &mut out);
        Encoding::Chunked.frame(&[b'x'; 300], &mut out);
        Encoding::Chunked.frame(b"", &mut out);
        Encoding::Chunked.finish(&mut out);
        assert!(out.starts_with(b"5\r\nhello\r\n12c\r\n"));
        let body = decode_all(Framing::Chunked, &out, 5).unwrap();
        assert_eq!(body.len(), 305);
        let mut hex = [0; 16];
        assert_eq!(hex_len(0, &mut hex), b"0");
        assert_eq!(hex_len(usize::MAX, &mut hex), b"ffffffffffffffff");
    }

    proptest::proptest! {
        /// Any body, chunked any way and fed in any pieces, decodes to itself.
        #[test]
        fn chunked_round_trips(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..2000),
            cuts in proptest::collection::vec(1usize..300, 1..20),
            step in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut rest = &body[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                Encoding::Chunked.frame(chunk, &mut wire);
                rest = tail;
            }
            Encoding::Chunked.finish(&mut wire);
            proptest::prop_assert_eq!(decode_all(Framing::Chunked, &wire, step).unwrap(), body);
        }

        /// Garbage never panics the decoder, and what it accepts is no longer than its input.
        #[test]
        fn garbage_is_refused_or_decoded_without_a_panic(
            input in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            step in 1usize..32,
        ) {
            if let Ok(body) = decode_all(Framing::Chunked, &input, step) {
                proptest::prop_assert!(body.len() <= input.len());
            }
        }
    }

    #[tokio::test]
    async fn copy_reencodes_and_enforces_the_limit() {
        // A chunked body arriving in dribs, re-encoded raw (as for a Content-Length hop).
        let (mut src_w, mut src) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for piece in ["4\r\nab", "cd\r\n3\r", "\nefg\r\n0\r\n", "\r\n"] {
                src_w.write_all(piece.as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut buf = Buffer::with_capacity(16);
        let mut dst = Vec::new();
        let mut decoder = Decoder::new(Framing::Chunked);
        let (mut out, mut sent, mut moved) = (Vec::new(), 0, 0);
        copy(
            &mut src,
            &mut buf,
            &mut dst,
            &mut decoder,
            Encoding::Raw,
            &mut out,
            u64::MAX,
            &mut sent,
            || moved += 1,
        )
        .await
        .unwrap();
        writer.await.unwrap();
        assert_eq!(dst, b"abcdefg");
        assert_eq!(sent, 7);
        assert!(moved >= 1);

        let (mut src_w, mut src) = tokio::io::duplex(64);
        src_w.write_all(&[b'z'; 40]).await.unwrap();
        let mut decoder = Decoder::new(Framing::Length(40));
        let mut sent = 0;
        let err = copy(
            &mut src,
            &mut Buffer::with_capacity(16),
            &mut Vec::new(),
            &mut decoder,
            Encoding::Chunked,
            &mut Vec::new(),
            30,
            &mut sent,
            || {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge), "{err}");
    }
}
