//! The probe at first use: does a `MSG_DONTWAIT` send through io_uring complete within its
//! submission, even when the socket has no room? Batching relies on it (invariant 2 of the
//! module doc). The probe itself always returns, within [`CANCEL_WAIT`] at worst: a send it
//! finds still in flight is cancelled, and the answer is no.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use super::FLAGS;

/// How long a send found in flight may take to complete once cancelled and its peer closed
/// (both end it at once on every kernel known); past this its buffer is left to the kernel.
pub const CANCEL_WAIT: Duration = Duration::from_secs(1);
/// More than a socket buffer holds: the first send fills it, the second finds no room.
const PROBE_BYTES: usize = 4 << 20;
const SEND: u64 = 1;
const CANCEL: u64 = 2;

/// Whether batched writes work here; `Err` says why not.
pub fn run() -> Result<(), String> {
    probe_with(FLAGS, true)
}

/// The probe, with the send flags and socket mode as given: a test leaves out
/// `MSG_DONTWAIT` (and `O_NONBLOCK`) to see what happens when a send stays in flight.
pub fn probe_with(flags: i32, nonblocking: bool) -> Result<(), String> {
    // Declared before the ring, so dropped after it. No send is in the kernel's hands when
    // this function returns: each completes within its submission or is cancelled and waited
    // for (`cancel`), which leaks `buf` if that wait runs out.
    let buf = vec![0u8; PROBE_BYTES];
    let (a, peer) = UnixStream::pair().map_err(|e| e.to_string())?;
    a.set_nonblocking(nonblocking).map_err(|e| e.to_string())?;
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        // Every wait of a flush is bounded by a timeout, which needs IORING_FEAT_EXT_ARG (5.11).
        return Err("the kernel's io_uring cannot bound a wait (no IORING_FEAT_EXT_ARG)".into());
    }
    for want_room in [true, false] {
        let entry = opcode::Send::new(types::Fd(a.as_raw_fd()), buf.as_ptr(), len32(&buf))
            .flags(flags)
            .build()
            .user_data(SEND);
        // SAFETY: `buf` and `a` outlive the send: see the comment at their declaration.
        unsafe { ring.submission().push(&entry) }.map_err(|e| e.to_string())?;
        // An error here means nothing was submitted (io_uring_enter reports a submission
        // count whenever there is one), so nothing is in flight.
        ring.submit().map_err(|e| format!("io_uring_enter: {e}"))?;
        let Some(cqe) = ring.completion().next() else {
            return Err(cancel(ring, peer, buf));
        };
        match (want_room, cqe.result()) {
            (true, n) if n > 0 => {}
            (false, e) if e == -libc::EAGAIN => {}
            (_, r) => return Err(format!("unexpected send result {r}")),
        }
    }
    Ok(())
}

/// Ends a send that stayed in flight: closes the peer (the send fails with `EPIPE`), asks the
/// kernel to cancel it as well, and waits a bounded time for its completion. Returns why the
/// probe says no.
fn cancel(mut ring: IoUring, peer: UnixStream, buf: Vec<u8>) -> String {
    const WHY: &str = "a non-blocking send did not complete within its submission";
    drop(peer);
    let entry = opcode::AsyncCancel::new(SEND).build().user_data(CANCEL);
    // SAFETY: a cancellation names its target by `user_data` and points at no memory.
    let _ = unsafe { ring.submission().push(&entry) };
    let deadline = Instant::now() + CANCEL_WAIT;
    let mut ended = false;
    while !ended {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let timeout = types::Timespec::from(left);
        let args = types::SubmitArgs::new().timespec(&timeout);
        let entered = ring.submitter().submit_with_args(1, &args);
        ended = ring.completion().any(|cqe| cqe.user_data() == SEND);
        if let Err(e) = entered
            && e.raw_os_error() != Some(libc::EINTR)
            && !ended
        {
            break;
        }
    }
    drop(ring);
    if ended {
        drop(buf);
        return WHY.into();
    }
    // Still the kernel's: it may read `buf` whenever it gets round to the send, so `buf` is
    // never freed.
    std::mem::forget(buf);
    format!("{WHY}, nor ended within {CANCEL_WAIT:?} of its cancellation")
}

/// A send's length: a longer buffer is sent in part (the caller sends the rest).
pub fn len32(buf: &[u8]) -> u32 {
    u32::try_from(buf.len()).unwrap_or(u32::MAX)
}
