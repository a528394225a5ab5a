//! One thread's queue of writes and the io_uring ring or AIO context that submits them (the
//! module doc's invariants are kept here, for both).

use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use tokio::net::TcpStream;

use super::aio::{Aio, IoEvent, Iocb};
use super::probe::len32;
use super::{Backend, FLAGS, Switch};

/// Writes submitted per system call (the ring's entries, the AIO context's events); a longer
/// queue takes more than one.
const RING_ENTRIES: u32 = 256;
/// How long one submission may take, retries and the wait for its completions included.
/// Sends complete within the submission (invariant 2), so a healthy one takes microseconds;
/// past this the ring (or AIO context) fails.
pub const ENTER_BUDGET: Duration = Duration::from_millis(20);
/// How many `EINTR` / `EAGAIN` / `EBUSY` from `io_uring_enter` (or `io_submit`,
/// `io_getevents`) one submission tries again after, within [`ENTER_BUDGET`]; the next one
/// fails the ring.
pub const ENTER_RETRIES: u32 = 8;

/// One thread's queue of writes waiting for the end of the turn.
pub struct Queue {
    inner: Mutex<Inner>,
    switch: &'static Switch,
}

/// What submits a queue's writes: the process's [`Backend`]. One per thread, so the ring's
/// size next to the context's does not matter.
#[allow(clippy::large_enum_variant)]
enum Engine {
    Uring(IoUring),
    Aio(Aio),
}

pub(super) struct Inner {
    /// `None` once it failed: never entered again (invariant 3).
    engine: Option<Engine>,
    /// io_uring's send flags: [`FLAGS`], but a test may leave out `MSG_DONTWAIT`.
    flags: i32,
    slots: Vec<Slot>,
    /// Slots no write holds, to be reused.
    free: Vec<usize>,
    /// Slots queued since the last flush, in order.
    queued: Vec<usize>,
    /// The slots of the submission being made, in the order they went into the ring.
    pushed: Vec<usize>,
    /// AIO: the iocbs of the submission being made (in `pushed`'s order), how many of them
    /// the kernel took, and room for their completions.
    iocbs: Vec<Iocb>,
    in_kernel: usize,
    events: Vec<IoEvent>,
    /// Stands in for `io_uring_enter` (or `io_submit`) in tests: `Some(errno)` fails the call
    /// without entering.
    #[cfg(test)]
    pub(super) fault: Option<Box<dyn FnMut() -> Option<i32> + Send>>,
    /// AIO in tests: hands `io_submit` at most this many iocbs a call, as a kernel that takes
    /// fewer than it was given.
    #[cfg(test)]
    pub(super) take_at_most: Option<usize>,
}

enum Slot {
    Free,
    /// The queue holds the connection and the buffer until the send's completion is reaped
    /// (invariant 1).
    Queued {
        socket: Arc<TcpStream>,
        buf: Vec<u8>,
    },
    Done {
        buf: Vec<u8>,
        outcome: Outcome,
    },
}

/// What became of one queued write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many bytes went out (0: the socket had no room).
    Sent(usize),
    /// Never handed to the kernel (the ring failed first): the writer sends it.
    Unsent,
    Failed(i32),
    /// Handed to the kernel, no completion seen: it may or may not have gone out, so it must
    /// not be sent again. Its buffer and connection were left to the kernel.
    Unknown,
}

impl Outcome {
    fn of(result: i32) -> Self {
        match result {
            n if n >= 0 => Self::Sent(n as usize),
            e if e == -libc::EAGAIN => Self::Sent(0),
            e => Self::Failed(-e),
        }
    }

    /// As `send` reports it: bytes sent (0 for none yet, the caller sends the rest) or the
    /// error.
    pub fn into_result(self) -> io::Result<usize> {
        match self {
            Self::Sent(n) => Ok(n),
            Self::Unsent => Ok(0),
            Self::Failed(errno) => Err(io::Error::from_raw_os_error(errno)),
            Self::Unknown => Err(io::Error::other(
                "batched write lost in a failed io_uring submission (not resent)",
            )),
        }
    }
}

/// Why a submission failed the ring.
struct Failure(String);

impl Queue {
    /// A queue of its own ring or AIO context (as `switch` probed), reporting to `switch`;
    /// `None` where batching is off or none can be made.
    pub fn new(switch: &'static Switch) -> Option<Arc<Self>> {
        let engine = match switch.backend()? {
            Backend::IoUring => Engine::Uring(IoUring::new(RING_ENTRIES).ok()?),
            Backend::Aio { rw_flags } => Engine::Aio(Aio::new(RING_ENTRIES, rw_flags).ok()?),
        };
        Some(Arc::new(Self {
            inner: Mutex::new(Inner {
                engine: Some(engine),
                flags: FLAGS,
                slots: Vec::new(),
                free: Vec::new(),
                queued: Vec::new(),
                pushed: Vec::new(),
                iocbs: Vec::new(),
                in_kernel: 0,
                events: Vec::new(),
                #[cfg(test)]
                fault: None,
                #[cfg(test)]
                take_at_most: None,
            }),
            switch,
        }))
    }

    pub fn switch(&self) -> &'static Switch {
        self.switch
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves every slot in a state the next holder can
        // use: states change in single assignments.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Queues `buf` for `socket` and takes it; `None` (and `buf` untouched) once the ring
    /// failed.
    pub(super) fn enqueue(&mut self, socket: Arc<TcpStream>, buf: &mut Vec<u8>) -> Option<usize> {
        self.engine.as_ref()?;
        let queued = Slot::Queued {
            socket,
            buf: mem::take(buf),
        };
        let slot = match self.free.pop() {
            Some(free) => {
                self.slots[free] = queued;
                free
            }
            None => {
                self.slots.push(queued);
                self.slots.len() - 1
            }
        };
        self.queued.push(slot);
        Some(slot)
    }

    pub(super) fn is_queued(&self, slot: usize) -> bool {
        matches!(self.slots[slot], Slot::Queued { .. })
    }

    /// The outcome of a flushed write; the slot is free again.
    pub(super) fn collect(&mut self, slot: usize) -> (Outcome, Vec<u8>) {
        let taken = mem::replace(&mut self.slots[slot], Slot::Free);
        self.free.push(slot);
        match taken {
            Slot::Done { buf, outcome } => (outcome, buf),
            // Only a flush settles a slot and only its writer frees it; were it otherwise, the
            // write would be reported lost, never sent twice.
            _ => (Outcome::Unknown, Vec::new()),
        }
    }

    /// A write given up by its writer (its future dropped): out of the queue, its connection
    /// and buffer let go, before its writer can close the connection.
    pub(super) fn cancel(&mut self, slot: usize) -> Option<Arc<TcpStream>> {
        let taken = mem::replace(&mut self.slots[slot], Slot::Free);
        // Out of this turn's list too: the slot may be queued again before the flush.
        self.queued.retain(|&at| at != slot);
        self.free.push(slot);
        match taken {
            Slot::Queued { socket, .. } => Some(socket),
            _ => None,
        }
    }

    /// Submits every queued write and settles each. Connections whose last reference this
    /// drops go to `released`, to be closed after the lock.
    pub(super) fn flush(&mut self, switch: &Switch, released: &mut Vec<Arc<TcpStream>>) {
        let queued = mem::take(&mut self.queued);
        let mut rest = &queued[..];
        while !rest.is_empty() {
            match self.submit(rest, switch, released) {
                Ok(taken) => rest = &rest[taken..],
                Err(Failure(why)) => {
                    self.fail(rest, released);
                    switch.fail(&why);
                    break;
                }
            }
        }
        // The list's allocation is kept for the next turn.
        let mut queued = queued;
        queued.clear();
        self.queued = queued;
    }

    /// Submits as many of the writes `ids` as one system call takes and reaps every
    /// completion. Returns how many of `ids` were dealt with.
    fn submit(
        &mut self,
        ids: &[usize],
        switch: &Switch,
        released: &mut Vec<Arc<TcpStream>>,
    ) -> Result<usize, Failure> {
        match self.engine {
            Some(Engine::Uring(_)) => self.submit_uring(ids, switch, released),
            Some(Engine::Aio(_)) => self.submit_aio(ids, switch, released),
            None => Err(Failure("the ring failed before".into())),
        }
    }

    /// [`Inner::submit`] through io_uring: as many of `ids` as fit the ring.
    fn submit_uring(
        &mut self,
        ids: &[usize],
        switch: &Switch,
        released: &mut Vec<Arc<TcpStream>>,
    ) -> Result<usize, Failure> {
        let Some(Engine::Uring(ring)) = &mut self.engine else {
            return Err(Failure("the ring failed before".into()));
        };
        self.pushed.clear();
        let mut taken = 0;
        {
            let mut sq = ring.submission();
            for &at in ids {
                if let Slot::Queued { socket, buf } = &self.slots[at] {
                    let entry =
                        opcode::Send::new(types::Fd(socket.as_raw_fd()), buf.as_ptr(), len32(buf))
                            .flags(self.flags)
                            .build()
                            .user_data(at as u64);
                    // SAFETY: the slot owns the buffer and a reference that keeps the
                    // descriptor open, and lets go of neither before the send's completion is
                    // reaped: slots change only under this queue's lock, which the caller holds
                    // until every send pushed here has completed, or until `fail` has left the
                    // ones that did not to the kernel for good. A ring that failed is gone, so
                    // an entry that was pushed and never submitted is never submitted later.
                    if unsafe { sq.push(&entry) }.is_err() {
                        break;
                    }
                    self.pushed.push(at);
                }
                taken += 1;
            }
        }
        if self.pushed.is_empty() {
            return Ok(taken);
        }
        let deadline = Instant::now() + ENTER_BUDGET;
        let mut retries = 0;
        let mut done = 0;
        while done < self.pushed.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure(format!(
                    "io_uring_enter: {} of {} sends not complete after {ENTER_BUDGET:?}",
                    self.pushed.len() - done,
                    self.pushed.len()
                )));
            }
            let want = self.pushed.len() - done;
            #[cfg(test)]
            let entered = match self.fault.as_mut().and_then(|fault| fault()) {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => enter(ring, want, left),
            };
            #[cfg(not(test))]
            let entered = enter(ring, want, left);
            if let Err(e) = entered {
                let again = matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                );
                if !again || retries == ENTER_RETRIES {
                    return Err(Failure(format!(
                        "io_uring_enter: {e} (after {retries} retries)"
                    )));
                }
                retries += 1;
            }
            for cqe in ring.completion() {
                done += 1;
                settle(
                    &mut self.slots[cqe.user_data() as usize],
                    Outcome::of(cqe.result()),
                    released,
                );
            }
        }
        switch.submitted(self.pushed.len());
        Ok(taken)
    }

    /// [`Inner::submit`] through AIO: up to [`RING_ENTRIES`] of `ids` in one `io_submit`
    /// (more calls only if the kernel takes fewer), whose writes all complete inside it.
    fn submit_aio(
        &mut self,
        ids: &[usize],
        switch: &Switch,
        released: &mut Vec<Arc<TcpStream>>,
    ) -> Result<usize, Failure> {
        let Some(Engine::Aio(aio)) = &mut self.engine else {
            return Err(Failure("the AIO context failed before".into()));
        };
        self.pushed.clear();
        self.iocbs.clear();
        self.in_kernel = 0;
        let mut taken = 0;
        for &at in ids {
            if self.pushed.len() == RING_ENTRIES as usize {
                break;
            }
            if let Slot::Queued { socket, buf } = &self.slots[at] {
                self.iocbs.push(Iocb::write(
                    socket.as_raw_fd(),
                    buf,
                    at as u64,
                    aio.rw_flags,
                ));
                self.pushed.push(at);
            }
            taken += 1;
        }
        if self.pushed.is_empty() {
            return Ok(taken);
        }
        let mut iocbs: Vec<*mut Iocb> = self.iocbs.iter_mut().map(|c| c as *mut Iocb).collect();
        let deadline = Instant::now() + ENTER_BUDGET;
        let mut retries = 0;
        let again = |e: &io::Error, retries: &mut u32, call: &str| {
            let again = matches!(
                e.raw_os_error(),
                Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
            );
            if !again || *retries == ENTER_RETRIES || Instant::now() >= deadline {
                return Err(Failure(format!("{call}: {e} (after {retries} retries)")));
            }
            *retries += 1;
            Ok(())
        };
        while self.in_kernel < self.pushed.len() {
            #[cfg(not(test))]
            let rest = &mut iocbs[self.in_kernel..];
            #[cfg(test)]
            let rest = {
                let most = self.take_at_most.unwrap_or(usize::MAX);
                let end = self.in_kernel.saturating_add(most).min(iocbs.len());
                &mut iocbs[self.in_kernel..end]
            };
            #[cfg(test)]
            let submitted = match self.fault.as_mut().and_then(|fault| fault()) {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                // SAFETY: as for the io_uring entries in `submit_uring`: each iocb's slot owns
                // its buffer and a reference that keeps its descriptor open, and lets go of
                // neither before its completion is reaped below, or before `fail` has left an
                // unreaped one to the kernel for good. The iocbs themselves are read during
                // the call only.
                None => unsafe { aio.submit(rest) },
            };
            #[cfg(not(test))]
            // SAFETY: see the same call above.
            let submitted = unsafe { aio.submit(rest) };
            match submitted {
                Ok(n) if n > 0 => self.in_kernel += n.min(rest.len()),
                Ok(_) => again(
                    &io::Error::from_raw_os_error(libc::EAGAIN),
                    &mut retries,
                    "io_submit",
                )?,
                Err(e) => again(&e, &mut retries, "io_submit")?,
            }
        }
        // Every write completed inside `io_submit` (invariant 2): all are reaped at once, and
        // waiting (bounded) is for a kernel that breaks that.
        let want = self.pushed.len();
        self.events.resize(want, IoEvent::default());
        let mut done = 0;
        let mut wait = Duration::ZERO;
        while done < want {
            let left = want - done;
            match aio.reap(&mut self.events[..left], left, wait) {
                Ok(n) => {
                    for event in &self.events[..n] {
                        done += 1;
                        if let Some(slot) = self.slots.get_mut(event.data as usize) {
                            let res = event.res.clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                            settle(slot, Outcome::of(res), released);
                        }
                    }
                }
                Err(e) => again(&e, &mut retries, "io_getevents")?,
            }
            if done < want {
                wait = deadline.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    return Err(Failure(format!(
                        "io_getevents: {} of {want} writes not complete after {ENTER_BUDGET:?}",
                        want - done
                    )));
                }
            }
        }
        switch.submitted(want);
        Ok(taken)
    }

    /// A submission of `self.pushed` failed, with `rest` the writes of this flush not yet
    /// done: what completed is settled, what the kernel never took goes back unsent, what it
    /// took without completing is left to it, and the ring (or AIO context) is dropped so that
    /// nothing left in it is ever submitted.
    fn fail(&mut self, rest: &[usize], released: &mut Vec<Arc<TcpStream>>) {
        let Some(mut engine) = self.engine.take() else {
            for &at in rest {
                settle(&mut self.slots[at], Outcome::Unsent, released);
            }
            return;
        };
        let taken = match &mut engine {
            Engine::Uring(ring) => {
                for cqe in ring.completion() {
                    settle(
                        &mut self.slots[cqe.user_data() as usize],
                        Outcome::of(cqe.result()),
                        released,
                    );
                }
                // The kernel takes entries from the head of the ring: the last `untaken`
                // pushed are still there.
                let untaken = ring.submission().len().min(self.pushed.len());
                self.pushed.len() - untaken
            }
            Engine::Aio(aio) => {
                let mut events = [IoEvent::default(); 16];
                while let Ok(n @ 1..) = aio.reap(&mut events, 0, Duration::ZERO) {
                    for event in &events[..n] {
                        if let Some(slot) = self.slots.get_mut(event.data as usize) {
                            let res = event.res.clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                            settle(slot, Outcome::of(res), released);
                        }
                    }
                }
                // `io_submit` takes iocbs in order and says how many.
                self.in_kernel.min(self.pushed.len())
            }
        };
        let mut lost = false;
        for &at in &self.pushed[..taken] {
            let slot = &mut self.slots[at];
            if let Slot::Queued { socket, buf } = slot {
                // The kernel may still read the buffer and look the descriptor up: neither is
                // ever freed, so neither can be reused.
                mem::forget(mem::take(buf));
                mem::forget(Arc::clone(socket));
                *slot = Slot::Done {
                    buf: Vec::new(),
                    outcome: Outcome::Unknown,
                };
                lost = true;
            }
        }
        for &at in &self.pushed[taken..] {
            settle(&mut self.slots[at], Outcome::Unsent, released);
        }
        for &at in rest {
            settle(&mut self.slots[at], Outcome::Unsent, released);
        }
        if lost && let Engine::Aio(aio) = &mut engine {
            // Destroying the context would wait for the lost write.
            aio.leak();
        }
        drop(engine);
    }
}

/// A queued write is done with `outcome`; its connection reference goes (to `released` if it
/// was the last: a leaked write's connection closes after the lock).
fn settle(slot: &mut Slot, outcome: Outcome, released: &mut Vec<Arc<TcpStream>>) {
    if let Slot::Queued { .. } = slot
        && let Slot::Queued { socket, buf } = mem::replace(slot, Slot::Free)
    {
        *slot = Slot::Done { buf, outcome };
        if Arc::strong_count(&socket) == 1 {
            released.push(socket);
        }
    }
}

/// Submits what is in the ring and waits up to `timeout` for `want` completions.
fn enter(ring: &mut IoUring, want: usize, timeout: Duration) -> io::Result<usize> {
    let timeout = types::Timespec::from(timeout);
    let args = types::SubmitArgs::new().timespec(&timeout);
    ring.submitter().submit_with_args(want, &args)
}

#[cfg(test)]
impl Queue {
    /// Sends without `MSG_DONTWAIT` from now on, to see what a send left in flight does.
    pub(super) fn let_sends_wait(&self) {
        self.lock().flags = libc::MSG_NOSIGNAL;
    }

    pub(super) fn has_ring(&self) -> bool {
        self.lock().engine.is_some()
    }

    /// Every slot free and nothing queued: no write holds anything any more.
    pub(super) fn is_idle(&self) -> bool {
        let inner = self.lock();
        inner.slots.iter().all(|s| matches!(s, Slot::Free))
            && inner.free.len() == inner.slots.len()
            && inner.queued.is_empty()
    }
}
