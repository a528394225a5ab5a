//! The second backend: Linux native AIO (`io_setup` / `io_submit` / `io_getevents`), for where
//! io_uring is refused but AIO is not, as under the default seccomp profiles of Docker and
//! containerd (the module doc says why that matters, with figures).
//!
//! For a socket, `io_submit` with `IOCB_CMD_PWRITE` runs the write at once, inside the call
//! (`aio_write` → `sock_write_iter`, which never returns `-EIOCBQUEUED`), and posts its
//! completion to the context's ring before the call returns: sent, partly sent, `EAGAIN`, or
//! an error. So, as with io_uring, one system call hands the kernel the writes of a turn to
//! many sockets, and all have landed before keygate is back in user space. What keeps that
//! call from blocking is the socket's non-blocking mode: `RWF_NOWAIT` where the kernel takes
//! it for sockets (it then sends with `MSG_DONTWAIT` whatever the descriptor's mode), and
//! `O_NONBLOCK` in any case (every [`super::Socket`] wraps a tokio stream, always
//! non-blocking). The probe checks both once per process.
//!
//! AIO writes cannot carry `MSG_NOSIGNAL`: a write to a connection the peer reset raises
//! `SIGPIPE` unless it is ignored. Rust's runtime ignores it before `main`, and the probe
//! refuses AIO if something changed that.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::probe::CANCEL_WAIT;

/// `RWF_NOWAIT` (linux/fs.h): fail with `EAGAIN` instead of waiting.
const RWF_NOWAIT: i32 = 0x8;
const IOCB_CMD_PWRITE: u16 = 1;
/// More than a socket buffer holds: the first write fills it, the second finds no room.
const PROBE_BYTES: usize = 4 << 20;

/// `struct iocb` of linux/aio_abi.h (64 bytes; `aio_key` and `aio_rw_flags` swap places on
/// big-endian machines).
#[repr(C)]
#[derive(Default)]
pub struct Iocb {
    aio_data: u64,
    #[cfg(target_endian = "little")]
    aio_key: u32,
    aio_rw_flags: i32,
    #[cfg(target_endian = "big")]
    aio_key: u32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event` of linux/aio_abi.h.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct IoEvent {
    /// The `aio_data` of its iocb: the queue's slot.
    pub data: u64,
    obj: u64,
    /// Bytes written, or a negative errno.
    pub res: i64,
    res2: i64,
}

impl Iocb {
    /// A write of `buf` to `fd`, reported with `data`. The kernel reads `buf` during the
    /// `io_submit` that takes this iocb (it copies the iocb itself at once).
    pub fn write(fd: RawFd, buf: &[u8], data: u64, rw_flags: i32) -> Self {
        Self {
            aio_data: data,
            aio_rw_flags: rw_flags,
            aio_lio_opcode: IOCB_CMD_PWRITE,
            aio_fildes: fd as u32,
            aio_buf: buf.as_ptr() as u64,
            // A longer buffer is sent in part (the caller sends the rest); the result then
            // fits the `i32` of an outcome.
            aio_nbytes: buf.len().min(i32::MAX as usize) as u64,
            ..Self::default()
        }
    }
}

/// One AIO context (`aio_context_t`).
pub struct Aio {
    ctx: libc::c_ulong,
    /// `RWF_NOWAIT` where the probe found the kernel takes it for sockets, else 0.
    pub rw_flags: i32,
    /// Destroying a context waits for its writes in flight: one that may have some is never
    /// destroyed (see [`Aio::leak`]).
    leaked: bool,
}

impl Aio {
    /// A context for up to `entries` writes in flight at once.
    pub fn new(entries: u32, rw_flags: i32) -> io::Result<Self> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context's id into `ctx`, which is zero as it wants.
        let r = unsafe { libc::syscall(libc::SYS_io_setup, entries, &mut ctx as *mut _) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ctx,
            rw_flags,
            leaked: false,
        })
    }

    /// Submits `iocbs` in order; returns how many the kernel took (from the first: a shorter
    /// count means the next one was refused, and an error that the first was).
    ///
    /// # Safety
    /// Each iocb's buffer must stay valid, and its descriptor must stay the connection it
    /// names, until its completion is reaped.
    pub unsafe fn submit(&self, iocbs: &mut [*mut Iocb]) -> io::Result<usize> {
        // SAFETY: the pointers are to live iocbs (the caller's); what they point at is the
        // caller's promise.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.ctx,
                iocbs.len() as libc::c_long,
                iocbs.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// Reaps between `min` and `events.len()` completions, waiting up to `timeout` for `min`
    /// of them (zero: only those there already).
    pub fn reap(&self, events: &mut [IoEvent], min: usize, timeout: Duration) -> io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the kernel writes at most `events.len()` events into `events`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.ctx,
                min.min(events.len()) as libc::c_long,
                events.len() as libc::c_long,
                events.as_mut_ptr(),
                &ts as *const libc::timespec,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }

    /// A write may still be in flight: the context is never destroyed (that would wait for
    /// it), and stays reserved until the process exits.
    pub fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        if !self.leaked {
            // SAFETY: the context is ours and nothing of it is in flight.
            unsafe { libc::syscall(libc::SYS_io_destroy, self.ctx) };
        }
    }
}

/// Whether batched writes work through AIO here; `Ok` has the `aio_rw_flags` to use, `Err`
/// says why not. Always returns, within [`CANCEL_WAIT`] at worst.
pub fn probe() -> Result<i32, String> {
    if !sigpipe_ignored() {
        return Err("SIGPIPE is not ignored, and an AIO write cannot carry MSG_NOSIGNAL".into());
    }
    match probe_with(RWF_NOWAIT, true) {
        Ok(()) => Ok(RWF_NOWAIT),
        // Kernels before sockets took RWF_NOWAIT refuse it at submission, sending nothing:
        // the sockets' O_NONBLOCK keeps the writes from blocking there.
        Err(Refused(e)) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
            probe_with(0, true).map(|()| 0).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Why the probe said no: the submission itself was refused (nothing was sent), or
/// something else.
pub enum ProbeError {
    Refused(io::Error),
    Other(String),
}
use ProbeError::{Other, Refused};

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused(e) => write!(f, "io_submit: {e}"),
            Other(why) => f.write_str(why),
        }
    }
}

/// Writes to a socket pair twice, more than its buffer holds: the first write must complete
/// within its `io_submit`, partly, and the second with `EAGAIN`. `nonblocking` sets the
/// socket's mode (a test leaves it blocking to see `RWF_NOWAIT` alone at work).
pub fn probe_with(rw_flags: i32, nonblocking: bool) -> Result<(), ProbeError> {
    // Declared before the context, so dropped after it: see `cancel`.
    let buf = vec![0u8; PROBE_BYTES];
    let (a, peer) = UnixStream::pair().map_err(|e| Other(e.to_string()))?;
    a.set_nonblocking(nonblocking)
        .map_err(|e| Other(e.to_string()))?;
    let aio = Aio::new(4, rw_flags).map_err(|e| Other(format!("io_setup: {e}")))?;
    for want_room in [true, false] {
        let mut iocb = Iocb::write(a.as_raw_fd(), &buf, 1, rw_flags);
        let mut ptrs = [&mut iocb as *mut Iocb];
        // SAFETY: `buf` and `a` outlive the write: see `cancel`.
        match unsafe { aio.submit(&mut ptrs) } {
            Ok(1) => {}
            Ok(n) => return Err(Other(format!("io_submit took {n} of 1"))),
            Err(e) => return Err(Refused(e)),
        }
        let mut events = [IoEvent::default()];
        let reaped = aio.reap(&mut events, 1, Duration::ZERO);
        if reaped.as_ref().ok() != Some(&1) {
            return Err(Other(cancel(aio, peer, buf)));
        }
        match (want_room, events[0].res) {
            (true, n) if n > 0 => {}
            (false, e) if e == -i64::from(libc::EAGAIN) => {}
            (_, r) => return Err(Other(format!("unexpected write result {r}"))),
        }
    }
    Ok(())
}

/// Ends a write that stayed in flight: closes the peer (the write fails with `EPIPE`) and
/// waits a bounded time for its completion. Returns why the probe says no.
fn cancel(mut aio: Aio, peer: UnixStream, buf: Vec<u8>) -> String {
    const WHY: &str = "an AIO write to a socket did not complete within its io_submit";
    drop(peer);
    let deadline = Instant::now() + CANCEL_WAIT;
    let mut events = [IoEvent::default()];
    let mut ended = false;
    while !ended {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match aio.reap(&mut events, 1, left) {
            Ok(n) => ended = n == 1,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => break,
        }
    }
    if ended {
        drop(aio);
        drop(buf);
        return WHY.into();
    }
    // Still the kernel's: neither the buffer nor the context is ever let go.
    aio.leak();
    std::mem::forget(buf);
    format!("{WHY}, nor ended within {CANCEL_WAIT:?} of its peer's close")
}

/// Whether `SIGPIPE` is ignored in this process (Rust's runtime does that before `main`).
fn sigpipe_ignored() -> bool {
    // SAFETY: asks for the current action only (a null new action changes nothing).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
