//! The HTTP/1.1 body decoder (chunked, and by length) and the chunked encoder.
//!
//! Input: one byte of settings (framing, how many cut sizes follow), the cut sizes, then the
//! bytes on the wire.
//!
//! - The same bytes fed whole or in pieces (cut where the input says) decode to the same body,
//!   end at the same byte (what follows a body is the next request: ending elsewhere is
//!   smuggling) or fail the same way, and what a body is followed by never changes where
//!   it ends.
//! - A decoded body, encoded again, decodes to itself; so does any body, chunked any way, and
//!   the decoder stops exactly at the end of the encoding, whatever comes after it.

#![no_main]

use keygate::wire::{BodyError, Decoder, Encoding, Framing};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The body ended after this many bytes of input.
    Done(usize),
    Malformed,
    /// The input ran out before the body ended.
    Truncated,
}

/// Feeds `pieces` one after another, as the connection loop does: decode until the decoder
/// takes nothing more (it needs more input) or is done. The body decoded and how it ended.
fn decode<'a>(framing: Framing, pieces: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, End) {
    let mut decoder = Decoder::new(framing);
    let mut pending: Vec<u8> = Vec::new();
    let (mut body, mut taken) = (Vec::new(), 0);
    let mut pieces = pieces.into_iter();
    loop {
        while !decoder.is_done() {
            match decoder.decode(&pending) {
                Ok((consumed, data)) => {
                    assert!(consumed <= pending.len() && data.end <= consumed);
                    assert!(data.start <= data.end);
                    body.extend_from_slice(&pending[data]);
                    pending.drain(..consumed);
                    taken += consumed;
                    if consumed == 0 {
                        break;
                    }
                }
                Err(BodyError::Malformed) => return (body, End::Malformed),
                Err(e) => panic!("a decoder that reads no I/O failed with {e}"),
            }
        }
        if decoder.is_done() {
            return (body, End::Done(taken));
        }
        match pieces.next() {
            Some(piece) => pending.extend_from_slice(piece),
            None if decoder == Decoder::Close => return (body, End::Done(taken)),
            None => return (body, End::Truncated),
        }
    }
}

/// `input` cut into pieces of the sizes in `cuts` (1 to 256 bytes each, cycled).
fn pieces<'a>(input: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = cuts.iter().map(|&c| usize::from(c) + 1).cycle();
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(sizes.next().unwrap_or(1).min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

fn chunked(body: &[u8], cuts: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in pieces(body, cuts) {
        Encoding::Chunked.frame(piece, &mut wire);
    }
    Encoding::Chunked.frame(b"", &mut wire);
    Encoding::Chunked.finish(&mut wire);
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    let n_cuts = usize::from(settings & 7).min(rest.len());
    let (cuts, wire) = rest.split_at(n_cuts);
    let cuts = if cuts.is_empty() { &[0u8][..] } else { cuts };
    let framing = match settings >> 6 {
        0 | 1 => Framing::Chunked,
        2 => Framing::Length(u64::from(cuts[0]) * 3),
        _ => Framing::Close,
    };

    // Whole, in pieces, one byte at a time: one reading.
    let whole = decode(framing, [wire]);
    let split = decode(framing, pieces(wire, cuts));
    assert_eq!(whole, split, "fed whole vs in pieces ({cuts:?})");
    if wire.len() <= 512 {
        let bytes = decode(framing, wire.chunks(1));
        assert_eq!(whole, bytes, "fed whole vs byte by byte");
    }

    if let (body, End::Done(end)) = &whole {
        assert!(body.len() <= *end && *end <= wire.len());
        // What follows the body does not move its end.
        assert_eq!(decode(framing, [&wire[..*end]]), whole, "the body alone");
        // Encoded again (keygate's own framing to the next hop), it reads back the same.
        if framing == Framing::Chunked {
            let again = chunked(body, cuts);
            assert_eq!(
                decode(Framing::Chunked, [&again[..]]),
                (body.clone(), End::Done(again.len()))
            );
        }
    }

    // Any bytes as a body: chunked in the input's sizes, with a request after it.
    let mut encoded = chunked(wire, cuts);
    let end = encoded.len();
    encoded.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
    let want = (wire.to_vec(), End::Done(end));
    assert_eq!(decode(Framing::Chunked, [&encoded[..]]), want, "round trip");
    assert_eq!(
        decode(Framing::Chunked, pieces(&encoded, cuts)),
        want,
        "round trip in pieces"
    );
    let mut raw = Vec::new();
    Encoding::Raw.frame(wire, &mut raw);
    Encoding::Raw.finish(&mut raw);
    assert_eq!(raw, wire);
});
