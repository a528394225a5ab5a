//! `Idempotency-Key` on create and rotate: a retry of the same request (same caller, same key,
//! same method, path and body) gets the first answer again instead of a second key; the same
//! `Idempotency-Key` with a different request is refused (422 `idempotency_key_reused`), and
//! one whose first request is still running gets 409 `idempotency_in_progress`.
//!
//! Answers are kept in this process for [`RETAIN`], at most [`CAPACITY`] of them (the oldest
//! go first). They include the new key's secret, which is the point (a client that lost the
//! answer must get the key it was issued), so they live in memory only and never in the
//! store. Retries must therefore reach the same keygate process: with several, point the
//! management clients at one of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub const RETAIN: Duration = Duration::from_secs(24 * 3600);
pub const CAPACITY: usize = 10_000;

/// What a request's `Idempotency-Key` finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First use: run the request, then [`Idempotency::finish`] (or [`Idempotency::abandon`]).
    Fresh,
    /// The first answer, to send again.
    Replay(u16, Bytes),
    Reused,
    InProgress,
}

enum State {
    Running,
    Done(u16, Bytes),
}

struct Entry {
    fingerprint: [u8; 32],
    at: Instant,
    state: State,
}

#[derive(Default)]
pub struct Idempotency {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

/// SHA-256 over what makes two requests the same request.
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

impl Idempotency {
    pub fn claim(&self, caller: &str, key: &str, fingerprint: [u8; 32], now: Instant) -> Claim {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| now.duration_since(e.at) < RETAIN);
        let id = (caller.to_owned(), key.to_owned());
        if let Some(entry) = entries.get(&id) {
            return match &entry.state {
                _ if entry.fingerprint != fingerprint => Claim::Reused,
                State::Running => Claim::InProgress,
                State::Done(status, body) => Claim::Replay(*status, body.clone()),
            };
        }
        if entries.len() >= CAPACITY
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(
            id,
            Entry {
                fingerprint,
                at: now,
                state: State::Running,
            },
        );
        Claim::Fresh
    }

    /// The claim of a [`Claim::Fresh`] request until it ends: kept with its answer by
    /// [`Pending::finish`], given up when dropped unfinished (the request failed, or its client
    /// went away and the request was dropped midway), so that a retry runs it again instead of
    /// being refused as in progress.
    pub fn pending<'a>(&'a self, caller: &str, key: &str) -> Pending<'a> {
        Pending {
            store: self,
            caller: caller.to_owned(),
            key: key.to_owned(),
            settled: false,
        }
    }

    /// Keeps the answer of a claimed request for its retries.
    fn finish(&self, caller: &str, key: &str, status: u16, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get_mut(&(caller.to_owned(), key.to_owned())) {
            entry.state = State::Done(status, body);
        }
    }

    /// Forgets a claim whose request did not complete.
    fn abandon(&self, caller: &str, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&(caller.to_owned(), key.to_owned()));
    }
}

/// See [`Idempotency::pending`].
pub struct Pending<'a> {
    store: &'a Idempotency,
    caller: String,
    key: String,
    settled: bool,
}

impl Pending<'_> {
    pub fn finish(mut self, status: u16, body: Bytes) {
        self.store.finish(&self.caller, &self.key, status, body);
        self.settled = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.store.abandon(&self.caller, &self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let store = Idempotency::default();
        let now = Instant::now();
        let a = fingerprint("POST", "/v1/keys", b"{}");
        let b = fingerprint("POST", "/v1/keys", b"{\"x\":1}");
        assert_eq!(store.claim("k1", "i1", a, now), Claim::Fresh);
        assert_eq!(store.claim("k1", "i1", a, now), Claim::InProgress);
        assert_eq!(store.claim("k1", "i1", b, now), Claim::Reused);
        // Another caller's key of the same name is its own.
        assert_eq!(store.claim("k2", "i1", b, now), Claim::Fresh);
        store
            .pending("k1", "i1")
            .finish(201, Bytes::from_static(b"first"));
        assert_eq!(
            store.claim("k1", "i1", a, now),
            Claim::Replay(201, Bytes::from_static(b"first"))
        );
        assert_eq!(store.claim("k1", "i1", a, now + RETAIN), Claim::Fresh);
        // A request that ends without an answer (failed, or dropped midway) frees its key.
        drop(store.pending("k1", "i1"));
        assert_eq!(store.claim("k1", "i1", b, now), Claim::Fresh);
    }
}
