//! Giving memory back after a flood of connections.
//!
//! glibc's malloc keeps what a burst of connections freed in its arenas, as free chunks between
//! live ones, and returns to the system only what lies at the top of a heap: after thousands
//! of connections come and go, resident memory stays near its peak (191 → 234 → 246 MB over
//! three floods was measured). `malloc_trim(0)` walks the arenas and returns every free page.
//! It costs a pass over the heap (milliseconds with a million cached keys), so it runs only
//! once the open connections have fallen to half their peak since the last trim, by at least
//! [`MIN_DROP`], once idle connections and the parking's sweep have given back [`MIN_SHED`] of
//! buffers (see `server::session` and `forward::upstream`: the buffers go, but the pages they
//! sat on stay until a trim), or once
//! [`MIN_PARKED`] parked upstream connections have been closed (`forward::upstream`: a flood
//! leaves up to 256 parked, closed 30 s later, when the first trim is long past; measured, a
//! trim then gives back about 4 KB each, the pages their few small allocations pinned),
//! looked at every [`CHECK`], on a blocking thread. Not with the `mimalloc` feature (mimalloc
//! returns freed pages by itself), and only where glibc is the allocator.
//!
//! `malloc_trim` does not shrink the top of a worker thread's arena: that happens on a free
//! only once the top exceeds the trim threshold, and glibc raises that threshold (to twice
//! the largest freed `mmap`ed block, up to 64 MiB) as the process runs. Measured after three
//! floods of 5,000 connections, the two workers' arenas kept 1.8 and 3.1 MB resident with
//! 70 KB live in each (RSS +55 % of the start, 40 s after); with the thresholds fixed at
//! [`TRIM_THRESHOLD`] and [`MMAP_THRESHOLD`] ([`fix_thresholds`]), +14–17 %. An operator's
//! own `MALLOC_TRIM_THRESHOLD_` or `MALLOC_MMAP_THRESHOLD_` wins.
//!
//! What was left after that was glibc's per-thread cache of freed small blocks (the
//! "tcache", up to 7 blocks of each of 64 sizes per thread): malloc counts those blocks as in
//! use, so neither a free nor a trim returns the pages they sit on, and after a flood they sit
//! scattered over the whole extent the flood gave each worker's arena. Measured
//! (`bench/conn_memory.py`, 3 floods of 5,000 connections, 40 s after): anonymous memory
//! 0.19 MB at start, 1.75 MB after with the tcache, 0.32 MB without it (RSS +15 % → +3 % of
//! the start; a tcache of 2 blocks per size gave +5 %, one for blocks up to 128 bytes +7 %),
//! and no throughput difference measurable on HTTP/1.1 (wrk, one worker, interleaved A/B).
//! glibc reads that setting only from `GLIBC_TUNABLES` when a process starts, so `keygate
//! serve` starts itself again with `glibc.malloc.tcache_count=0` before any thread exists
//! ([`restart_without_tcache`]); an operator's own `GLIBC_TUNABLES`, even empty, is kept as
//! it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// An arena's free top beyond this is given back when freed (glibc's initial value, kept).
const TRIM_THRESHOLD: i32 = 128 << 10;
/// Blocks above this are `mmap`ed on their own (fixed: glibc would raise it, and the trim
/// threshold with it, as it meets larger blocks). Above every buffer of the request path.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// How often the connection count is looked at.
const CHECK: Duration = Duration::from_secs(2);
/// A drop smaller than this is not worth a pass over the heap.
const MIN_DROP: i64 = 500;
/// Nor are fewer buffer bytes given back than this.
const MIN_SHED: u64 = 16 << 20;

/// Nor are fewer closed parked upstream connections than this.
const MIN_PARKED: u64 = 64;

/// Buffer bytes idle connections gave back since the last trim.
static SHED: AtomicU64 = AtomicU64::new(0);
/// Parked upstream connections closed since the last trim.
static PARKED: AtomicU64 = AtomicU64::new(0);

/// An idle connection, or the parking's sweep, gave `bytes` of buffers back.
pub fn shed(bytes: usize) {
    SHED.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// `n` parked upstream connections were closed.
pub fn closed_parked(n: usize) {
    PARKED.fetch_add(n as u64, Ordering::Relaxed);
}

/// Whether `open` connections, down from `peak`, `shed` bytes of idle buffers given back, or
/// `parked` upstream connections closed, call for a trim.
fn should_trim(peak: i64, open: i64, shed: u64, parked: u64) -> bool {
    (peak - open >= MIN_DROP && open <= peak / 2) || shed >= MIN_SHED || parked >= MIN_PARKED
}

/// Trims the heap after floods of connections (see the module doc) until `stop`.
pub fn trim_after_floods(metrics: Arc<Metrics>, stop: CancellationToken) {
    if !glibc::AVAILABLE {
        return;
    }
    tokio::spawn(async move {
        let mut peak = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CHECK) => {}
            }
            let open = metrics.open_connections.get();
            peak = peak.max(open);
            let (shed, parked) = (SHED.load(Ordering::Relaxed), PARKED.load(Ordering::Relaxed));
            if should_trim(peak, open, shed, parked) {
                SHED.store(0, Ordering::Relaxed);
                PARKED.store(0, Ordering::Relaxed);
                let _ = tokio::task::spawn_blocking(glibc::trim).await;
                tracing::debug!(peak, open, "free heap returned to the system");
                peak = open;
            }
        }
    });
}

/// Fixes glibc's trim and mmap thresholds (see the module doc), unless the environment sets
/// them.
pub fn fix_thresholds() {
    if !glibc::AVAILABLE {
        return;
    }
    for (name, param, value) in [
        (
            "MALLOC_TRIM_THRESHOLD_",
            glibc::Tunable::Trim,
            TRIM_THRESHOLD,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            glibc::Tunable::Mmap,
            MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(name).is_none() {
            glibc::set(param, value);
        }
    }
}

/// What `keygate serve` runs with unless the environment already says (see the module doc).
const TUNABLES: &str = "glibc.malloc.tcache_count=0";

/// Replaces this process with itself, same arguments and environment plus
/// `GLIBC_TUNABLES` turning glibc's thread cache off (see the module doc), unless
/// `GLIBC_TUNABLES` is already set (by an operator, or by this very restart). Call it first
/// thing in `main`, before any thread exists. Returns only if there is nothing to do or the
/// restart failed (then the process runs on with the cache, which costs memory, not
/// correctness).
pub fn restart_without_tcache() {
    if !glibc::AVAILABLE || std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let failed = glibc::restart_with(TUNABLES);
    eprintln!("keygate: could not restart with GLIBC_TUNABLES={TUNABLES} ({failed}); going on");
}

/// The allocator's calls, where glibc's malloc is the allocator; no-ops elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
mod glibc {
    pub const AVAILABLE: bool = true;

    pub enum Tunable {
        Trim,
        Mmap,
    }

    pub fn set(tunable: Tunable, value: i32) {
        let param = match tunable {
            Tunable::Trim => libc::M_TRIM_THRESHOLD,
            Tunable::Mmap => libc::M_MMAP_THRESHOLD,
        };
        // SAFETY: mallopt only sets glibc's own tunables under its lock; a value it refuses
        // leaves the default.
        unsafe {
            libc::mallopt(param, value);
        }
    }

    pub fn trim() {
        // SAFETY: malloc_trim only walks glibc's own heap under its locks; 0 keeps no padding.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// `exec`s this binary again with `GLIBC_TUNABLES=tunables`; returns only on failure.
    pub fn restart_with(tunables: &str) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec()
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
mod glibc {
    pub const AVAILABLE: bool = false;

    pub enum Tunable {
        Trim,
        Mmap,
    }

    pub fn set(_: Tunable, _: i32) {}

    pub fn trim() {}

    pub fn restart_with(_: &str) -> std::io::Error {
        std::io::ErrorKind::Unsupported.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_drop() {
        // (peak, open now, bytes shed, parked closed) -> trim?
        let table = [
            (0, 0, 0, 0, false),
            (100, 0, 0, 0, false),
            (499, 0, 0, 0, false),
            (500, 0, 0, 0, true),
            (10_000, 5_000, 0, 0, true),
            (10_000, 5_001, 0, 0, false),
            (10_000, 9_000, 0, 0, false),
            (1_200, 600, 0, 0, true),
            (10_000, 10_000, MIN_SHED - 1, 0, false),
            (10_000, 10_000, MIN_SHED, 0, true),
            (10_000, 10_000, 0, MIN_PARKED - 1, false),
            (10_000, 10_000, 0, MIN_PARKED, true),
        ];
        for (peak, open, shed, parked, want) in table {
            let got = should_trim(peak, open, shed, parked);
            assert_eq!(got, want, "{peak} {open} {shed} {parked}");
        }
    }
}
