//! Where a tunnel thinks WebSocket frames end (`forward::websocket::Frames`), which decides
//! where keygate's Close goes in when it stops: between two frames, never inside one.
//!
//! Input: one byte (how many cut sizes follow, up to 15), the cut sizes, then the bytes of one
//! direction of a tunnel.
//!
//! - The frame ends found, and whether a Close had begun at each, are those of a plain
//!   reading of the whole input (header, lengths, payload skipped) whatever the pieces the
//!   bytes arrive in.
//! - `step` takes at least one byte of a non-empty slice and never more than it has.
//! - keygate's own Close, masked with the input's first four bytes or not, reads as one whole
//!   Close frame with its status.

#![no_main]

use keygate::forward::websocket::{Farewell, Frames, close};
use libfuzzer_sys::fuzz_target;

/// (offset of each frame's end, whether a Close had begun by then), read in `pieces`.
fn ends<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<(usize, bool)> {
    let mut frames = Frames::default();
    let mut out = Vec::new();
    let mut at = 0;
    for piece in pieces {
        let mut used = 0;
        while used < piece.len() {
            let took = frames.step(&piece[used..]);
            assert!(took >= 1 && took <= piece.len() - used, "took {took}");
            used += took;
            if frames.at_boundary() {
                out.push((at + used, frames.closed()));
            }
        }
        at += piece.len();
    }
    out
}

/// The same, read plainly from the whole input.
fn reference(bytes: &[u8]) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let (mut at, mut closed) = (0usize, false);
    while bytes.len() - at >= 2 {
        let (first, second) = (bytes[at], bytes[at + 1]);
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let head = 2 + extended + mask;
        if bytes.len() - at < head {
            break;
        }
        let payload = match second & 0x7f {
            126 | 127 => bytes[at + 2..at + 2 + extended]
                .iter()
                .fold(0u128, |n, &b| (n << 8) | u128::from(b)),
            len => u128::from(len),
        };
        closed |= first & 0x0f == 0x8;
        let end = at as u128 + head as u128 + payload;
        if end > bytes.len() as u128 {
            break;
        }
        at = end as usize;
        out.push((at, closed));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 0x0f).min(rest.len());
    let (cuts, wire) = rest.split_at(count);

    let want = reference(wire);
    assert_eq!(ends([wire]), want, "read whole");
    let mut pieces = Vec::new();
    let mut left = wire;
    for &cut in cuts {
        let (piece, tail) = left.split_at(usize::from(cut).min(left.len()));
        pieces.push(piece);
        left = tail;
    }
    pieces.push(left);
    assert_eq!(
        ends(pieces.iter().copied()),
        want,
        "read in pieces {cuts:?}"
    );
    assert_eq!(ends(wire.chunks(1)), want, "read byte by byte");

    let mask = wire.get(..4).map(|m| [m[0], m[1], m[2], m[3]]);
    for farewell in [Farewell::Shutdown, Farewell::KeyLapsed, Farewell::Idle] {
        for frame in [close(farewell, None), close(farewell, mask)] {
            assert_eq!(reference(&frame), [(frame.len(), true)]);
            let payload: Vec<u8> = match frame[1] & 0x80 {
                0 => frame[2..].to_vec(),
                _ => frame[6..]
                    .iter()
                    .zip(frame[2..6].iter().cycle())
                    .map(|(b, k)| b ^ k)
                    .collect(),
            };
            assert_eq!(payload[..2], farewell.status().to_be_bytes());
        }
    }
});
