//! WebSocket framing (RFC 6455 §5.2), as much of it as a tunnel reads: where each frame ends,
//! whether a Close has gone by, and the Close keygate says when it ends a tunnel itself.
//!
//! A tunnel relays bytes, not messages, and never changes them while it runs. It follows the
//! frames only so that, when keygate stops, the tunnel's key stops admitting or the tunnel
//! idles out ([`Farewell`]), it can tell both ends so between two frames instead of cutting
//! the connection: a browser then sees a clean close with a status it can act on (1001:
//! reconnect, to another instance or when there is something to say; 1008: not with this
//! key), not the abnormal 1006 of a dropped connection, and the process need not wait out
//! `shutdown_timeout` for tunnels that would otherwise live for hours.
//!
//! Any byte sequence reads as frames (a header's length fields say where the next one
//! begins), so the reader keeps no error state; a nonsensical length only means the next
//! boundary never comes, and then the tunnel is cut off once its close wait is over
//! ([`super::tunnel::CLOSE_WAIT`]).
//! What a frame says (its mask, its opcode beyond Close, its payload) is the ends' business,
//! as are the extensions they agreed on, none of which change where a frame ends.

/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte masking key.
const MAX_HEAD: usize = 14;

/// The opcode of a Close frame.
const CLOSE: u8 = 0x8;

/// Where the frames are in one direction of a tunnel, read as the bytes pass.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// The header under way, while incomplete.
    head: [u8; MAX_HEAD],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// Whether a Close frame has begun in this direction.
    closed: bool,
}

impl Frames {
    /// Whether the bytes read so far end at a frame's end (or are none).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Whether a Close frame has gone by in this direction: its sender is done sending.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Reads `bytes` as what comes next, up to the end of the frame under way (at a boundary:
    /// of the frame they begin), and returns how many it took: all of them, or fewer when a
    /// frame ended before their end. Takes at least one byte of a non-empty slice.
    pub fn step(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        if self.left == 0 {
            while used < bytes.len() {
                self.head[self.have] = bytes[used];
                self.have += 1;
                used += 1;
                if let Some((opcode, payload)) = parse_head(&self.head[..self.have]) {
                    self.have = 0;
                    self.left = payload;
                    self.closed |= opcode == CLOSE;
                    break;
                }
            }
            if self.have > 0 || self.left == 0 {
                // The header is not through yet, or its frame has no payload.
                return used;
            }
        }
        let take = self.left.min((bytes.len() - used) as u64);
        self.left -= take;
        // `take` is at most the slice's length, which is a usize.
        used + take as usize
    }

    /// Reads all of `bytes`.
    pub fn skip(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            at += self.step(&bytes[at..]);
        }
    }
}

/// A frame header's opcode and payload length, once `head` holds all of it; `None` while it
/// is incomplete.
fn parse_head(head: &[u8]) -> Option<(u8, u64)> {
    let [first, second, ..] = *head else {
        return None;
    };
    let (extended, short) = match second & 0x7f {
        126 => (2, None),
        127 => (8, None),
        len => (0, Some(u64::from(len))),
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    if head.len() < 2 + extended + mask {
        return None;
    }
    let payload = short.unwrap_or_else(|| {
        head[2..2 + extended]
            .iter()
            .fold(0u64, |n, &b| (n << 8) | u64::from(b))
    });
    Some((first & 0x0f, payload))
}

/// Why keygate closes a tunnel itself, which its Close says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// keygate is stopping: 1001, going away (RFC 6455 §7.4.1); the client may reconnect,
    /// to another instance.
    Shutdown,
    /// The key the tunnel was admitted with was revoked, suspended, deleted or has expired:
    /// 1008, policy violation; reconnecting with it will be refused.
    KeyLapsed,
    /// Nothing moved either way for `[upstream] tunnel_idle_timeout`: 1001, going away; the
    /// client may reconnect when it has something to say.
    Idle,
}

impl Farewell {
    pub fn status(self) -> u16 {
        match self {
            Self::Shutdown | Self::Idle => 1001,
            Self::KeyLapsed => 1008,
        }
    }

    /// The Close's reason text: what happened, never which key.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Shutdown => "server shutting down",
            Self::KeyLapsed => "API key no longer valid",
            Self::Idle => "idle timeout",
        }
    }
}

/// keygate's Close frame for `farewell`. `mask`: the masking key a client's frame must carry
/// (RFC 6455 §5.3: towards the upstream, keygate speaks as the client); `None` for a frame to
/// the client, which a server sends unmasked.
pub fn close(farewell: Farewell, mask: Option<[u8; 4]>) -> Vec<u8> {
    let reason = farewell.reason().as_bytes();
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&farewell.status().to_be_bytes());
    payload.extend_from_slice(reason);
    // A control frame's payload fits the 7-bit length (at most 125).
    let len = payload.len() as u8;
    let mut frame = vec![0x80 | CLOSE];
    match mask {
        Some(key) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => {
            frame.push(len);
            frame.extend_from_slice(&payload);
        }
    }
    frame
}

/// A frame as an end would send it: `opcode` (final), `payload`, masked with `mask` as a
/// client's must be; for the tests of what reads frames.
#[cfg(test)]
pub(crate) fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(bit | n as u8),
        n if n <= 0xffff => {
            out.push(bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame ends `bytes` reach, fed in pieces of `piece` bytes.
    fn ends(bytes: &[u8], piece: usize) -> Vec<usize> {
        let mut frames = Frames::default();
        let mut out = Vec::new();
        let mut at = 0;
        for chunk in bytes.chunks(piece) {
            let mut used = 0;
            while used < chunk.len() {
                used += frames.step(&chunk[used..]);
                if frames.at_boundary() {
                    out.push(at + used);
                }
            }
            at += chunk.len();
        }
        out
    }

    #[test]
    fn frame_ends_are_found_whatever_the_pieces() {
        let key = Some([1, 2, 3, 4]);
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("one short text frame", vec![frame(0x1, b"hello", None)]),
            ("masked, as a client sends", vec![frame(0x1, b"hello", key)]),
            (
                "empty payloads",
                vec![frame(0x9, b"", None), frame(0xA, b"", key)],
            ),
            (
                "16-bit length",
                vec![frame(0x2, &[7; 300], None), frame(0x1, b"x", None)],
            ),
            (
                "64-bit length",
                vec![frame(0x2, &[7; 70_000], key), frame(0x9, b"", key)],
            ),
            (
                "126 bytes: the first length that needs 16 bits",
                vec![frame(0x2, &[0; 126], None), frame(0x2, &[0; 125], None)],
            ),
            (
                "a fragmented message with a ping between its pieces",
                vec![
                    vec![0x01, 0x02, b'a', b'b'],
                    frame(0x9, b"p", None),
                    vec![0x80, 0x01, b'c'],
                ],
            ),
        ];
        for (name, frames) in cases {
            let bytes = frames.concat();
            let want: Vec<usize> = frames
                .iter()
                .scan(0, |at, f| {
                    *at += f.len();
                    Some(*at)
                })
                .collect();
            for piece in [1, 2, 3, 7, 64, bytes.len()] {
                assert_eq!(ends(&bytes, piece), want, "{name}, pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_close_is_noticed_only_once_its_header_is_through() {
        let mut frames = Frames::default();
        frames.skip(&frame(0x1, b"bye", Some([9; 4])));
        frames.skip(&frame(0xA, b"", None));
        assert!(!frames.closed(), "text and pong are not a close");
        let close = frame(CLOSE, &[0x03, 0xe8], Some([5; 4]));
        frames.skip(&close[..5]);
        assert!(!frames.closed(), "half a header");
        frames.skip(&close[5..6]);
        assert!(frames.closed());
        assert!(!frames.at_boundary(), "its payload is still to come");
        frames.skip(&close[6..]);
        assert!(frames.at_boundary());
    }

    #[test]
    fn an_impossible_length_leaves_no_boundary() {
        let mut frames = Frames::default();
        frames.skip(&[0x82, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        frames.skip(&[0; 4096]);
        assert!(!frames.at_boundary());
    }

    #[test]
    fn keygate_s_close_says_why_masked_or_not() {
        for farewell in [Farewell::Shutdown, Farewell::KeyLapsed, Farewell::Idle] {
            let reason = farewell.reason().as_bytes();
            assert!(2 + reason.len() <= 125, "a control frame's payload");
            let plain = close(farewell, None);
            assert_eq!(plain[..2], [0x88, 2 + reason.len() as u8]);
            assert_eq!(plain[2..4], farewell.status().to_be_bytes());
            assert_eq!(&plain[4..], reason);
            let key = [0xa5, 0x5a, 0x0f, 0xf0];
            let masked = close(farewell, Some(key));
            assert_eq!(masked[..2], [0x88, 0x80 | (2 + reason.len() as u8)]);
            assert_eq!(masked[2..6], key);
            let unmasked: Vec<u8> = masked[6..]
                .iter()
                .zip(key.iter().cycle())
                .map(|(b, k)| b ^ k)
                .collect();
            assert_eq!(unmasked, plain[2..]);
            // Each is one whole Close frame to a reader of frames.
            for f in [plain, masked] {
                let mut frames = Frames::default();
                assert_eq!(frames.step(&f), f.len());
                assert!(frames.at_boundary() && frames.closed());
            }
        }
        assert_eq!(
            [Farewell::Shutdown, Farewell::KeyLapsed, Farewell::Idle].map(Farewell::status),
            [1001, 1008, 1001]
        );
    }
}
