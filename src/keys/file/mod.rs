//! The embedded key store: one JSON file of hashes and records, held in memory.
//!
//! - Reads on the request path never touch the disk: the parsed file lives in an [`ArcSwap`],
//!   so a lookup is a lock-free pointer load and a hash-map probe. Records are held packed
//!   (`packed`, ~100 bytes instead of ~600) and unpacked when the cache asks.
//! - Writers (the CLI, possibly several at once) take an exclusive lock on `<file>.lock`,
//!   re-read the file, apply their change, and replace the file atomically (temp file in the
//!   same folder, fsync, rename, fsync the folder), mode 0600. Readers therefore see either the
//!   old or the new file, never a mix.
//! - A running proxy polls the file's identity (inode, size, mtime) and reloads on change. A
//!   file that fails to parse — edited by hand, half-copied, truncated — is reported once and
//!   the last good keys keep serving. Polling rather than inotify also follows Kubernetes
//!   Secret volumes, which swap a symlink instead of writing the file.
//! - Management actions leave an audit trail in `<file>.audit.jsonl`: one JSON object per line,
//!   appended under the writer lock (mode 0600, fsynced), rotated to `<file>.audit.jsonl.1`
//!   once it passes [`AUDIT_ROTATE_BYTES`] (one older file is kept). A change's events are
//!   committed with it (below).
//! - The proxy never writes the keys file. Last-used times go to a file of their own
//!   (`[store] last_used_path`, default `<keys file>.last-used`); where that folder is not
//!   writable (a keys file mounted from a Secret, which is always read-only) the proxy says so
//!   once at start and keeps them in memory, served on the admin listener (`/last-used`).
//!
//! # Audit events and crashes
//!
//! A change and its audit events are two files, and no filesystem renames two files at once,
//! so one of them has to commit the other: the rename of the keys file is the one commit
//! point. The keys file's head carries `audit_seq`, the number of the last change committed
//! with events (files written before it have none: 0, and still open). Under the writer lock,
//! a write of change N = `audit_seq + 1`:
//!
//! 1. writes the new keys file (`audit_seq: N`) to a temporary file and fsyncs it;
//! 2. stages the events: `<file>.audit.pending` holds `{"seq": N, "audit_len": L}` (`L`: the
//!    trail's length now) and the event lines, fsynced with its folder;
//! 3. renames the temporary file over the keys file and fsyncs the folder: **the commit**;
//! 4. appends the staged lines to the trail at offset `L`, fsyncs, removes the pending file.
//!
//! What a kill (SIGKILL, out of memory, power loss) at each point leaves, and what the next
//! command that opens the store, writes, or reads the trail makes of it (under the lock):
//!
//! | killed | keys file | pending file | settled as |
//! |---|---|---|---|
//! | in 1 | as it was (a temporary file beside it, removed by the next write) | none | nothing happened |
//! | in 2, or between 2 and 3 | as it was (`audit_seq` < N) | staged, maybe cut short | dropped: no event for a change that never happened |
//! | between 3 and 4, or in 4 | changed (`audit_seq` = N) | staged in full | added to the trail at `L` (lines a cut-short append left there are cut first; lines already there whole are not written twice); the change keeps its event |
//! | after 4 | changed | none | nothing to do |
//!
//! The trail itself never holds an event of an uncommitted change: lines are appended only
//! after the rename, so a program tailing the file never sees one. Recovery is safe because
//! the trail only ever grows under the writer lock, and every append (a change's, or the
//! event of a refused action, which changes nothing and is appended alone) settles the pending
//! file first: while committed events wait, nothing is written after `L`. A pending file
//! older than the keys file (`seq` < `audit_seq`, possible only if its removal did not reach
//! the disk before a power loss) was already added by the change after it, and is dropped.
//!
//! The price: one more small file and two more fsyncs per change (the pending file and its
//! folder). Measured with `strace -T` on one `keys revoke` at 100,000 keys (ext4, shared
//! 2-core VM, 2026-12-06): 0.19 ms and 0.06 ms, against 28 ms for the fsync of the 50 MB keys
//! file that every write already pays; the commit point adds no fsync of its own.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

mod index;
mod packed;
mod scan;

use index::Index;

use super::audit::{AuditEvent, AuditQuery};
use super::manage::counts_against_cap;
use super::{Batch, ChangeSink, Invalidation, KeyHash, KeyRecord, KeyStore, StoreError};

const FORMAT_VERSION: u32 = 1;
/// Size at which the audit file is rotated (one older file is kept).
pub const AUDIT_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    /// The audit sequence committed with this version of the file (see `# Audit events and
    /// crashes`); files written before it existed have none (0).
    #[serde(default)]
    audit_seq: u64,
    keys: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    hash: KeyHash,
    record: KeyRecord,
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

pub struct FileStore {
    path: PathBuf,
    reload_interval: Duration,
    index: ArcSwap<Index>,
    /// The version last looked at, good or bad, so a bad file is reported once, not per poll.
    seen: Mutex<Option<Fingerprint>>,
    last_used: LastUsed,
    /// The running proxy's cache, told of the changes this process commits itself (the
    /// management API): the poll sees its own writes as nothing new.
    sink: Mutex<Option<ChangeSink>>,
    /// Opened for one management command ([`FileStore::open_unloaded`]): no in-memory index.
    unloaded: bool,
    /// The last entry `by_id` found in place: the file's version, the key, the entry's
    /// offset. A write that follows (the read half of compare-and-set) starts there.
    last_found: Mutex<Option<(Fingerprint, KeyHash, u64)>>,
    /// Where the next write stops as a SIGKILL would stop it (the crash tests).
    #[cfg(test)]
    kill_at: Mutex<Option<KillPoint>>,
}

/// The moments a writer can be killed at, in the order a write passes them.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillPoint {
    /// Half the pending file written.
    Staging,
    /// The pending file complete, the keys file not yet renamed.
    Staged,
    /// Renamed: the change and its events committed, nothing in the trail yet.
    Committed,
    /// Half the events appended to the trail.
    Publishing,
    /// Every event in the trail, the pending file not yet removed.
    Published,
}

/// Where last-used times are kept.
struct LastUsed {
    /// The file they are written to, unless `memory` holds them.
    path: PathBuf,
    /// Written in `[store]` by the operator (a failure to write there is theirs to hear of).
    configured: bool,
    /// `Some` once the proxy found `path` unwritable: the times live here instead.
    memory: Mutex<Option<HashMap<String, SystemTime>>>,
}

impl LastUsed {
    fn memory(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, SystemTime>>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FileStore {
    /// Opens the store. A missing file is an empty store (the first `keys create` makes it);
    /// an unreadable or corrupt one is an error, since there is no last good state yet.
    /// Last-used times go beside the file (`<file>.last-used`).
    pub fn open(path: impl Into<PathBuf>, reload_interval: Duration) -> Result<Self, StoreError> {
        Self::open_with(path, reload_interval, None)
    }

    /// Like [`FileStore::open`], with last-used times written to `last_used_path` if given.
    pub fn open_with(
        path: impl Into<PathBuf>,
        reload_interval: Duration,
        last_used_path: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let (index, fingerprint) = load_index(&path)?;
        let store = Self {
            reload_interval,
            index: ArcSwap::from_pointee(index),
            seen: Mutex::new(fingerprint),
            last_used: LastUsed {
                configured: last_used_path.is_some(),
                path: last_used_path.unwrap_or_else(|| sibling(&path, ".last-used")),
                memory: Mutex::new(None),
            },
            sink: Mutex::new(None),
            unloaded: false,
            last_found: Mutex::new(None),
            #[cfg(test)]
            kill_at: Mutex::new(None),
            path,
        };
        store.recover_at_open();
        Ok(store)
    }

    /// Opens the store for one management command (the CLI): without the proxy's in-memory
    /// index, which would read every record of the file at every command. Only the
    /// management methods work ([`KeyStore::get`] knows no key).
    pub fn open_unloaded(
        path: impl Into<PathBuf>,
        reload_interval: Duration,
        last_used_path: Option<PathBuf>,
    ) -> Self {
        let path = path.into();
        let store = Self {
            reload_interval,
            index: ArcSwap::from_pointee(Index::default()),
            seen: Mutex::new(None),
            last_used: LastUsed {
                configured: last_used_path.is_some(),
                path: last_used_path.unwrap_or_else(|| sibling(&path, ".last-used")),
                memory: Mutex::new(None),
            },
            sink: Mutex::new(None),
            unloaded: true,
            last_found: Mutex::new(None),
            #[cfg(test)]
            kill_at: Mutex::new(None),
            path,
        };
        store.recover_at_open();
        store
    }

    /// Settles a killed writer's staged audit events as the store opens (every write and
    /// every read of the trail does too; this one is best effort and only logs).
    fn recover_at_open(&self) {
        if let Err(e) = self.recover_audit() {
            tracing::warn!(error = %e, "staged audit events not settled at open");
        }
    }

    /// Whether last-used times are kept in memory (their file's folder was not writable).
    pub fn last_used_in_memory(&self) -> bool {
        self.last_used.memory().is_some()
    }

    /// Decides, once at the proxy's start, where last-used times go: their file if its folder
    /// takes a new file, memory otherwise, said in one log line.
    fn choose_last_used(&self) {
        let path = &self.last_used.path;
        let dir = folder(path);
        let Err(e) = can_create_in(dir) else { return };
        *self.last_used.memory() = Some(HashMap::new());
        if self.last_used.configured {
            tracing::error!(
                path = %path.display(), error = %e,
                "[store] last_used_path cannot be written: last-used times are kept in memory \
                 (admin listener: /last-used) and lost on restart"
            );
        } else {
            tracing::warn!(
                keys = %self.path.display(), folder = %dir.display(), error = %e,
                "the keys file's folder is read-only (a Secret mount?): last-used times are \
                 kept in memory (admin listener: /last-used) and lost on restart; set \
                 [store] last_used_path to a writable file to keep them"
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of keys in memory.
    pub fn len(&self) -> usize {
        self.index.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reloads the file if it changed since last seen. Returns whether new keys were loaded.
    /// On a parse error the previous keys stay in place and the error is returned (once per
    /// version of the file).
    pub fn reload_if_changed(&self) -> Result<bool, StoreError> {
        let current = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(Fingerprint::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&self.path, e)),
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == current {
                return Ok(false);
            }
            *seen = current;
        }
        if current.is_none() {
            // A deleted file is far more likely an operator mistake or a Secret being swapped
            // than a wish to lock every client out: keep serving the last good keys.
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                message: "file disappeared; keeping the last loaded keys".into(),
            });
        }
        let (index, _) = load_index(&self.path)?;
        self.index.store(Arc::new(index));
        Ok(true)
    }

    /// Polls the file every `reload_interval` until `shutdown`, logging reloads and errors and
    /// telling `sink` after each reload.
    fn poll(self: Arc<Self>, sink: ChangeSink, shutdown: CancellationToken) {
        let interval = self.reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let store = self.clone();
                let outcome = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                match outcome {
                    Ok(Ok(true)) => {
                        tracing::info!(
                            path = %self.path.display(), keys = self.len(), "keys file reloaded"
                        );
                        sink(Invalidation::All);
                        sink(Invalidation::UpToDate);
                    }
                    Ok(Ok(false)) => sink(Invalidation::UpToDate),
                    Ok(Err(e)) => tracing::error!(
                        error = %e, keys = self.len(),
                        "keys file not reloaded; still serving the last good keys"
                    ),
                    Err(e) => tracing::error!(error = %e, "keys file reload task failed"),
                }
            }
        });
    }

    /// Takes the writer lock (`<file>.lock`), held until the returned file is dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let lock_path = sibling(&self.path, ".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        lock.lock().map_err(|e| io_err(&lock_path, e))?;
        Ok(lock)
    }

    /// Where the audit trail is appended.
    pub fn audit_path(&self) -> PathBuf {
        sibling(&self.path, ".audit.jsonl")
    }

    /// Where the events of a change wait for its commit (see `# Audit events and crashes`).
    pub fn pending_path(&self) -> PathBuf {
        sibling(&self.path, ".audit.pending")
    }

    /// Replaces the keys file with what `fill` writes, committing `events` with it: staged
    /// durably first, then the rename commits both, then the events join the trail. Called
    /// under the writer lock, after [`FileStore::recover_audit_locked`].
    fn replace(
        &self,
        audit_seq: u64,
        events: &[AuditEvent],
        fill: impl FnOnce(&File) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let dir = folder(&self.path);
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        // tempfile creates the file with mode 0600, which the final file keeps after rename.
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix(&self.path))
            .suffix("")
            .tempfile_in(dir)
            .map_err(|e| io_err(dir, e))?;
        fill(tmp.as_file()).map_err(|e| io_err(tmp.path(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| io_err(tmp.path(), e))?;
        let staged = if events.is_empty() {
            None
        } else {
            Some(self.stage(audit_seq, events)?)
        };
        #[cfg(test)]
        if self.killed(KillPoint::Staged) {
            // A kill leaves the temporary file behind.
            let _ = tmp.into_temp_path().keep();
            return Err(killed());
        }
        // The commit point: the keys file and, through its audit_seq, the staged events.
        tmp.persist(&self.path)
            .map_err(|e| io_err(&self.path, e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
        #[cfg(test)]
        if self.killed(KillPoint::Committed) {
            return Err(killed());
        }
        if let Some(staged) = staged
            && let Err(e) = self.publish(&staged)
        {
            // Committed all the same: the events stay staged, and the next command that
            // opens the store, writes or reads the trail adds them.
            tracing::error!(
                error = %e, events = events.len(),
                "audit events committed but not yet in the trail; the next keygate command \
                 adds them"
            );
        }
        Ok(())
    }

    /// Writes `events` to the pending file, durably, as the change numbered `audit_seq`:
    /// `{"seq": N, "audit_len": L}` then the lines to append at offset `L` of the trail.
    fn stage(&self, audit_seq: u64, events: &[AuditEvent]) -> Result<Staged, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.audit_path();
        // Rotated now, not once committed: the offset staged is the one the lines go to.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= AUDIT_ROTATE_BYTES) {
            let older = sibling(&path, ".1");
            std::fs::rename(&path, &older).map_err(|e| io_err(&path, e))?;
        }
        let audit_len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&path, e)),
        };
        let staged = Staged {
            seq: audit_seq,
            audit_len,
            lines: lines(events),
        };
        let pending = self.pending_path();
        let mut file = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&pending)
            .map_err(|e| io_err(&pending, e))?;
        let head = serde_json::json!({"seq": staged.seq, "audit_len": staged.audit_len});
        let mut bytes = serde_json::to_vec(&head).expect("numbers serialize");
        bytes.push(b'\n');
        bytes.extend_from_slice(&staged.lines);
        #[cfg(test)]
        if self.killed(KillPoint::Staging) {
            file.write_all(&bytes[..bytes.len() / 2])
                .map_err(|e| io_err(&pending, e))?;
            return Err(killed());
        }
        file.write_all(&bytes).map_err(|e| io_err(&pending, e))?;
        file.sync_all().map_err(|e| io_err(&pending, e))?;
        // The pending file must be on disk before the rename that commits it is.
        let dir = folder(&self.path);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
        Ok(staged)
    }

    /// Puts committed, staged events into the trail at their offset (once: lines already
    /// there are not written twice), then drops the pending file.
    fn publish(&self, staged: &Staged) -> Result<(), StoreError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.audit_path();
        let io = |e| io_err(&path, e);
        let mut file = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let end = staged.audit_len + staged.lines.len() as u64;
        let there = len >= end && {
            let mut have = vec![0u8; staged.lines.len()];
            file.seek(std::io::SeekFrom::Start(staged.audit_len))
                .map_err(io)?;
            file.read_exact(&mut have).map_err(io)?;
            have == staged.lines
        };
        if !there {
            if len > staged.audit_len {
                // A part of these very lines, cut short by a kill: nothing else is ever
                // appended while committed events wait (every append recovers them first).
                file.set_len(staged.audit_len).map_err(io)?;
            }
            file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            #[cfg(test)]
            if self.killed(KillPoint::Publishing) {
                let half = &staged.lines[..staged.lines.len() / 2];
                file.write_all(half).map_err(io)?;
                return Err(killed());
            }
            file.write_all(&staged.lines).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        #[cfg(test)]
        if self.killed(KillPoint::Published) {
            return Err(killed());
        }
        let pending = self.pending_path();
        std::fs::remove_file(&pending).map_err(|e| io_err(&pending, e))
    }

    /// Settles what a killed writer left in the pending file: events the keys file committed
    /// are put in the trail, events it did not are dropped. Under the writer lock.
    fn recover_audit_locked(&self) -> Result<(), StoreError> {
        let pending = self.pending_path();
        let bytes = match std::fs::read(&pending) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&pending, e)),
        };
        let committed = self.committed_seq()?;
        match Staged::parse(&bytes) {
            Some(staged) if staged.seq == committed => {
                tracing::info!(
                    seq = staged.seq,
                    "adding audit events of a change committed by a writer that was stopped \
                     before it could add them"
                );
                self.publish(&staged)
            }
            // Cut short (the writer died staging: before its rename), past the keys file's
            // sequence (died before its rename), or older (already published by the change
            // that came after it, whose writer recovered it first).
            other => {
                if other.as_ref().is_some_and(|s| s.seq > committed) || other.is_none() {
                    tracing::info!(
                        "dropping audit events staged by a writer that was stopped before its \
                         change was committed"
                    );
                }
                std::fs::remove_file(&pending).map_err(|e| io_err(&pending, e))
            }
        }
    }

    /// [`FileStore::recover_audit_locked`] if there is anything to recover and the folder
    /// can be written (a read-only mount had no writer to kill).
    fn recover_audit(&self) -> Result<(), StoreError> {
        if !self.pending_path().exists() {
            return Ok(());
        }
        let Ok(lock) = self.lock() else {
            return Ok(());
        };
        let recovered = self.recover_audit_locked();
        drop(lock);
        recovered
    }

    /// Whether the write under way is to stop at `point` (once).
    #[cfg(test)]
    fn killed(&self, point: KillPoint) -> bool {
        let mut at = self.kill_at.lock().unwrap_or_else(|p| p.into_inner());
        if *at == Some(point) {
            *at = None;
            return true;
        }
        false
    }

    /// The audit sequence the keys file on disk committed (0: no file, or none yet).
    fn committed_seq(&self) -> Result<u64, StoreError> {
        let head = self.in_layout(scan::head)?;
        match head.flatten() {
            Some(head) => Ok(head.audit_seq),
            None => Ok(read_document(&self.path)?.0.audit_seq),
        }
    }

    /// Runs `edit` on the current file contents under the writer lock and replaces the file
    /// atomically. The in-memory index follows.
    fn modify<T>(
        &self,
        events: &[AuditEvent],
        edit: impl FnOnce(&mut Vec<Entry>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock = self.lock()?;
        // Under the lock no other writer is midway: a temporary file is a dead writer's.
        remove_dead_writes(&self.path);
        self.recover_audit_locked()?;

        let (mut doc, _) = read_document(&self.path)?;
        let out = edit(&mut doc.keys)?;
        doc.version = FORMAT_VERSION;
        doc.audit_seq += u64::from(!events.is_empty());
        let index = if self.unloaded {
            // Still checked: a duplicate hash or id never reaches the file.
            index::of_entries(&self.path, doc.keys.iter())?;
            None
        } else {
            Some(index::of_entries(&self.path, doc.keys.iter())?)
        };
        let json = serde_json::to_vec_pretty(&doc).expect("keys always serialize");
        self.replace(doc.audit_seq, events, |mut out| {
            out.write_all(&json)?;
            out.write_all(b"\n")
        })?;
        let meta = std::fs::metadata(&self.path).map_err(|e| io_err(&self.path, e))?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fingerprint::of(&meta));
        if let Some(index) = index {
            self.index.store(Arc::new(index));
        }
        drop(lock);
        Ok(out)
    }

    /// Refuses a batch that would give an owner more than `max` keys that count
    /// ([`counts_against_cap`]), with `spans`' updates applied: one streamed pass over the
    /// file, holding one record at a time.
    fn check_cap(
        &self,
        file: &File,
        max: u32,
        spans: &[(u64, u64, Entry)],
        batch: &Batch,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let inserts = &batch.inserts;
        let owners = gaining(batch, now);
        let replaced: HashMap<KeyHash, &KeyRecord> =
            spans.iter().map(|(_, _, e)| (e.hash, &e.record)).collect();
        let mut held: HashMap<String, u32> = HashMap::new();
        let mut count = |entry: Entry| {
            let record = replaced.get(&entry.hash).copied().unwrap_or(&entry.record);
            if owners.contains(record.owner.as_str()) && counts_against_cap(record, now) {
                *held.entry(record.owner.clone()).or_default() += 1;
            }
        };
        let mut reader = file;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| io_err(&self.path, e))?;
        let reader = std::io::BufReader::with_capacity(256 * 1024, reader);
        scan::each_entry(reader, &mut count).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        for (_, record) in inserts {
            if counts_against_cap(record, now) {
                *held.entry(record.owner.clone()).or_default() += 1;
            }
        }
        match held.into_iter().find(|(_, n)| *n > max) {
            Some((owner, _)) => Err(StoreError::OwnerCap { owner, max }),
            None => Ok(()),
        }
    }

    /// Applies `batch` to the whole document: the slow path, for what [`FileStore::splice`]
    /// does not take.
    fn commit_whole(&self, batch: &Batch) -> Result<(), StoreError> {
        // Everything is checked under the writer lock before anything is written, so two
        // concurrent `keys create` cannot both take an owner's last slot, and an update made
        // from a stale read fails instead of undoing someone else's change.
        self.modify(&batch.events, |keys| {
            for update in &batch.updates {
                let entry = keys
                    .iter_mut()
                    .find(|e| e.hash == update.hash)
                    .ok_or_else(|| StoreError::NotFound(update.before.id.clone()))?;
                if entry.record != update.before {
                    return Err(StoreError::Changed);
                }
                entry.record = update.after.clone();
            }
            for (hash, before) in &batch.deletes {
                let at = keys
                    .iter()
                    .position(|e| e.hash == *hash)
                    .ok_or_else(|| StoreError::NotFound(before.id.clone()))?;
                if keys[at].record != *before {
                    return Err(StoreError::Changed);
                }
                keys.remove(at);
            }
            if !batch.inserts.is_empty() {
                let mut hashes: HashSet<KeyHash> = keys.iter().map(|e| e.hash).collect();
                let mut ids: HashSet<String> = keys.iter().map(|e| e.record.id.clone()).collect();
                for (hash, record) in &batch.inserts {
                    if !hashes.insert(*hash) || !ids.insert(record.id.clone()) {
                        return Err(StoreError::Duplicate);
                    }
                    keys.push(Entry {
                        hash: *hash,
                        record: record.clone(),
                    });
                }
            }
            if let Some(max) = batch.max_per_owner {
                let mut held: HashMap<&str, u32> = HashMap::new();
                let now = SystemTime::now();
                for e in keys.iter().filter(|e| counts_against_cap(&e.record, now)) {
                    *held.entry(e.record.owner.as_str()).or_default() += 1;
                }
                let new_owners = gaining(batch, now);
                if let Some((owner, _)) = held
                    .into_iter()
                    .find(|(o, n)| *n > max && new_owners.contains(o))
                {
                    return Err(StoreError::OwnerCap {
                        owner: owner.to_owned(),
                        max,
                    });
                }
            }
            Ok(())
        })
    }

    /// Runs `find` on the keys file if it is in keygate's own layout; `Ok(None)` if it is not
    /// (or missing): take the slow path, the whole document.
    fn in_layout<T>(
        &self,
        find: impl FnOnce(&mut File) -> std::io::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let io = |e| io_err(&self.path, e);
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        if !scan::canonical(&mut file).map_err(io)? {
            return Ok(None);
        }
        find(&mut file).map(Some).map_err(io)
    }

    /// One page of `list` without parsing the entries before it or after it ([`scan::briefs`]):
    /// the file's bytes give every entry's place, creation time, id and owner; only entries
    /// from the cursor on are parsed, until the page is full. `Ok(None)`: the file is not in
    /// keygate's layout (the caller parses it whole).
    fn page_in_layout(
        &self,
        owner: Option<&str>,
        wanted: &(dyn for<'r> Fn(&'r KeyRecord) -> bool + Send + Sync),
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<Vec<KeyRecord>>, StoreError> {
        let io = |e| io_err(&self.path, e);
        // One handle for the briefs and the entries: a file renamed over meanwhile is not read.
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let Some(head) = scan::head(&mut file).map_err(io)? else {
            return Ok(None);
        };
        let owned = owner.map(|o| serde_json::to_vec(o).expect("a string"));
        let Some(briefs) = scan::briefs(&mut file, &head, owned.as_deref()).map_err(io)? else {
            return Ok(None);
        };
        let cursor = match after {
            None => None,
            // Not found among the owner's keys: no such key, for this caller.
            Some(id) => match briefs.iter().find(|b| b.id == id) {
                Some(b) => Some((b.created_at, b.id.clone())),
                None => return Err(StoreError::NotFound(id.to_owned())),
            },
        };
        // In list order, lazily: a heap built in one pass, popped only as far as the page
        // needs (sorting all 100,000 was a tenth of the time).
        let mut order: std::collections::BinaryHeap<_> = (briefs.iter().enumerate())
            .filter(|(_, b)| {
                (cursor.as_ref()).is_none_or(|(at, id)| (b.created_at, &b.id) > (*at, id))
            })
            .map(|(i, b)| std::cmp::Reverse((b.created_at, &b.id, i)))
            .collect();
        let limit = limit.unwrap_or(usize::MAX);
        let usage = self.usage()?;
        let mut entries = scan::Entries::new(&file);
        let mut read = |brief: &scan::Brief, window| -> Result<Option<KeyRecord>, StoreError> {
            // Bytes that are not what they seemed: the slow path decides.
            let Some(entry) = entries.get(brief, window).map_err(io)? else {
                return Ok(None);
            };
            let mut record = entry.record;
            if record.created_at != brief.created_at {
                return Ok(None);
            }
            record.last_used_at = usage.get(&record.id).copied();
            Ok(Some(record))
        };
        // Entries in list order, while the filter keeps enough of them. Keys made together
        // (`keys create --count`) share their creation time and are ordered by id, which is
        // random in the file: a small window each.
        let mut page = Vec::new();
        let mut tried = 0usize;
        while page.len() < limit && tried <= limit.saturating_mul(4).saturating_add(256) {
            let Some(std::cmp::Reverse((_, _, i))) = order.pop() else {
                return Ok(Some(page));
            };
            tried += 1;
            let Some(record) = read(&briefs[i], 16 * 1024)? else {
                return Ok(None);
            };
            if wanted(&record) {
                page.push(record);
            }
        }
        if page.len() < limit && !order.is_empty() {
            // A filter few keys pass: the rest in file order (1 MiB a read), keeping the
            // earliest (in list order) that pass, as the whole-document path does.
            let need = limit - page.len();
            let mut rest: Vec<usize> = order.into_iter().map(|r| r.0.2).collect();
            rest.sort_unstable_by_key(|&i| briefs[i].start);
            let mut best: std::collections::BinaryHeap<(
                SystemTime,
                compact_str::CompactString,
                usize,
            )> = std::collections::BinaryHeap::new();
            let mut kept = HashMap::new();
            for i in rest {
                let Some(record) = read(&briefs[i], 1 << 20)? else {
                    return Ok(None);
                };
                if !wanted(&record) {
                    continue;
                }
                best.push((record.created_at, briefs[i].id.clone(), i));
                kept.insert(i, record);
                if best.len() > need
                    && let Some((_, _, out)) = best.pop()
                {
                    kept.remove(&out);
                }
            }
            for (_, _, i) in best.into_sorted_vec() {
                page.extend(kept.remove(&i));
            }
        }
        Ok(Some(page))
    }

    /// When the key with `id` was last used, read from the last-used file without parsing
    /// all of it (`"<id>": "<time>"`, as [`KeyStore::record_usage`] writes it).
    fn used_at(&self, id: &str) -> Option<SystemTime> {
        if let Some(memory) = self.last_used.memory().as_ref() {
            return memory.get(id).copied();
        }
        let bytes = std::fs::read(&self.last_used.path).ok()?;
        let needle = format!("{}: \"", serde_json::to_string(id).ok()?);
        let at = memchr::memmem::find(&bytes, needle.as_bytes())? + needle.len();
        let end = at + memchr::memchr(b'"', &bytes[at..])?;
        humantime::parse_rfc3339_weak(std::str::from_utf8(&bytes[at..end]).ok()?).ok()
    }

    /// Applies a small batch by splicing the changed entries into a copy of the file
    /// ([`scan`]) rather than rewriting every record. `Ok(false)`: not applicable (a file in
    /// another layout, a cap to count, many changes): the caller takes the slow path.
    fn splice(&self, batch: &Batch) -> Result<bool, StoreError> {
        const MOST: usize = 16;
        // A delete is rare (a revoked key cleared away): the whole file is written for it.
        if batch.inserts.len() + batch.updates.len() > MOST || !batch.deletes.is_empty() {
            return Ok(false);
        }
        let lock = self.lock()?;
        remove_dead_writes(&self.path);
        self.recover_audit_locked()?;
        let io = |e| io_err(&self.path, e);
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        let Some(head) = scan::head(&mut file).map_err(io)? else {
            return Ok(false);
        };
        let mut spans = Vec::with_capacity(batch.updates.len());
        let fingerprint = file.metadata().map(|m| Fingerprint::of(&m)).ok();
        let last_found = *self.last_found.lock().unwrap_or_else(|p| p.into_inner());
        for update in &batch.updates {
            // Where `by_id` just found the entry, if the file is still that one (a rename by
            // another writer changes its inode): one parse instead of a search.
            let known = match last_found {
                Some((seen, hash, start)) if Some(seen) == fingerprint && hash == update.hash => {
                    scan::entry_from(&mut file, start)
                        .map_err(io)?
                        .filter(|l| l.entry.hash == update.hash)
                }
                _ => None,
            };
            let found = match known {
                Some(found) => found,
                None => scan::by_hash(&mut file, &update.hash)
                    .map_err(io)?
                    .ok_or_else(|| StoreError::NotFound(update.before.id.clone()))?,
            };
            if found.entry.record != update.before {
                return Err(StoreError::Changed);
            }
            let after = Entry {
                hash: update.hash,
                record: update.after.clone(),
            };
            spans.push((found.start, found.end, after));
        }
        spans.sort_by_key(|s| s.0);
        if spans.windows(2).any(|w| w[0].1 > w[1].0) {
            return Ok(false);
        }
        let mut hashes = HashSet::new();
        let mut ids = HashSet::new();
        for (hash, record) in &batch.inserts {
            let needles = [
                format!("\"hash\": \"{}\"", hash.to_hex()),
                format!(
                    "\"id\": {}",
                    serde_json::to_string(&record.id).expect("str")
                ),
            ];
            if !hashes.insert(*hash)
                || !ids.insert(record.id.as_str())
                || scan::contains_any(&mut file, &needles).map_err(io)?
            {
                return Err(StoreError::Duplicate);
            }
        }
        let now = SystemTime::now();
        if let Some(max) = batch.max_per_owner
            && !gaining(batch, now).is_empty()
        {
            self.check_cap(&file, max, &spans, batch, now)?;
        }
        let len = file.metadata().map_err(io)?.len();
        let (insert_at, empty) = if batch.inserts.is_empty() {
            (len, false)
        } else {
            match scan::insert_point(&mut file).map_err(io)? {
                Some(point) => point,
                None => return Ok(false),
            }
        };
        if spans.last().is_some_and(|s| s.1 > insert_at) {
            return Ok(false);
        }

        let audit_seq = head.audit_seq + u64::from(!batch.events.is_empty());
        self.replace(audit_seq, &batch.events, |out| {
            // The head carries the audit sequence: written anew, the rest copied.
            (&*out).write_all(&scan::render_head(audit_seq))?;
            let mut pos = head.len;
            for (start, end, entry) in &spans {
                scan::copy_range(&file, out, pos, *start)?;
                (&*out).write_all(&scan::render(entry))?;
                pos = *end;
            }
            if !batch.inserts.is_empty() {
                scan::copy_range(&file, out, pos, insert_at)?;
                for (i, (hash, record)) in batch.inserts.iter().enumerate() {
                    let sep: &[u8] = if empty && i == 0 {
                        b"\n    "
                    } else {
                        b",\n    "
                    };
                    let entry = Entry {
                        hash: *hash,
                        record: record.clone(),
                    };
                    (&*out).write_all(sep)?;
                    (&*out).write_all(&scan::render(&entry))?;
                }
                if empty {
                    (&*out).write_all(b"\n  ")?;
                }
                pos = insert_at;
            }
            scan::copy_range(&file, out, pos, len)
        })?;
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fingerprint::of(&meta));
        if !self.unloaded {
            // The running proxy's own write (the management API): its index follows.
            let mut index = Index::clone(&self.index.load());
            for (_, _, entry) in &spans {
                index.insert(entry.hash, packed::pack(&entry.record));
            }
            for (hash, record) in &batch.inserts {
                index.insert(*hash, packed::pack(record));
            }
            self.index.store(Arc::new(index));
        }
        drop(lock);
        Ok(true)
    }
}

#[async_trait::async_trait]
impl KeyStore for FileStore {
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let index = self.index.load();
        let Some(packed) = index.get(hash) else {
            return Ok(None);
        };
        packed::unpack(packed)
            .map(|record| Some(Arc::new(record)))
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.display().to_string(),
                message: "an in-memory record did not unpack".into(),
            })
    }

    async fn by_id(&self, id: &str) -> Result<Option<(KeyHash, KeyRecord)>, StoreError> {
        // Management reads the file, not the in-memory copy: the CLI is a separate process
        // and must see what other writers just did. Found in place when the file is in
        // keygate's own layout; else the whole document is read.
        let found = self.in_layout(|file| {
            let found = scan::by_id(file, id)?;
            let fingerprint = file.metadata().map(|m| Fingerprint::of(&m))?;
            Ok((found, fingerprint))
        })?;
        if let Some((found, fingerprint)) = found {
            *self.last_found.lock().unwrap_or_else(|p| p.into_inner()) =
                found.as_ref().map(|l| (fingerprint, l.entry.hash, l.start));
            return Ok(found.map(|located| {
                let mut record = located.entry.record;
                record.last_used_at = self.used_at(&record.id);
                (located.entry.hash, record)
            }));
        }
        let (doc, _) = read_document(&self.path)?;
        let usage = self.usage()?;
        Ok(doc.keys.into_iter().find(|e| e.record.id == id).map(|e| {
            let mut record = e.record;
            record.last_used_at = usage.get(&record.id).copied();
            (e.hash, record)
        }))
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        self.list_page(owner, &|_| true, None, None).await
    }

    async fn list_page(
        &self,
        owner: Option<&str>,
        wanted: &(dyn for<'r> Fn(&'r KeyRecord) -> bool + Send + Sync),
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        use std::collections::BinaryHeap;
        /// A record ordered as `list` orders them: by creation, then id.
        struct Ranked(KeyRecord);
        impl Ranked {
            fn key(&self) -> (SystemTime, &str) {
                (self.0.created_at, &self.0.id)
            }
        }
        impl PartialEq for Ranked {
            fn eq(&self, other: &Self) -> bool {
                self.key() == other.key()
            }
        }
        impl Eq for Ranked {}
        impl PartialOrd for Ranked {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Ranked {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.key().cmp(&other.key())
            }
        }

        if limit.is_some()
            && let Some(page) = self.page_in_layout(owner, wanted, after, limit)?
        {
            return Ok(page);
        }
        let cursor = match after {
            None => None,
            Some(id) => {
                let (_, record) = self
                    .by_id(id)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
                if owner.is_some_and(|o| record.owner != o) {
                    return Err(StoreError::NotFound(id.to_owned()));
                }
                Some((record.created_at, record.id))
            }
        };
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.path, e)),
        };
        let usage = self.usage()?;
        let limit = limit.unwrap_or(usize::MAX);
        // The page, as a max-heap: a new record pushes the latest one out once it is full, so
        // a page of 100 holds 101 records at most, whatever the file's size.
        let mut page = BinaryHeap::new();
        let mut keep = |entry: Entry| {
            let mut record = entry.record;
            if owner.is_some_and(|o| record.owner != o)
                || cursor
                    .as_ref()
                    .is_some_and(|(at, id)| (record.created_at, &record.id) <= (*at, id))
            {
                return;
            }
            record.last_used_at = usage.get(&record.id).copied();
            if limit == 0 || !wanted(&record) {
                return;
            }
            page.push(Ranked(record));
            if page.len() > limit {
                page.pop();
            }
        };
        let reader = std::io::BufReader::with_capacity(256 * 1024, file);
        scan::each_entry(reader, &mut keep).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(page.into_sorted_vec().into_iter().map(|r| r.0).collect())
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        // Everything is checked under the writer lock before anything is written, so two
        // concurrent `keys create` cannot both take an owner's last slot, and an update made
        // from a stale read fails instead of undoing someone else's change.
        let changed: Vec<KeyHash> = (batch.updates.iter().map(|u| u.hash))
            .chain(batch.inserts.iter().map(|(h, _)| *h))
            .chain(batch.deletes.iter().map(|(h, _)| *h))
            .collect();
        if !self.splice(&batch)? {
            self.commit_whole(&batch)?;
        }
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(sink) = sink {
            for hash in changed {
                sink(Invalidation::Key(hash));
            }
        }
        Ok(())
    }

    async fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let _lock = self.lock()?;
        // Committed events a killed writer left staged go first, in the order of their
        // changes.
        self.recover_audit_locked()?;
        let path = self.audit_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= AUDIT_ROTATE_BYTES) {
            let older = sibling(&path, ".1");
            std::fs::rename(&path, &older).map_err(|e| io_err(&path, e))?;
        }
        // One write and one fsync for all of them.
        let mut file = File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.write_all(&lines(events))
            .map_err(|e| io_err(&path, e))?;
        file.sync_data().map_err(|e| io_err(&path, e))
    }

    async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        self.recover_audit()?;
        let path = self.audit_path();
        let mut events = Vec::new();
        for file in [sibling(&path, ".1"), path] {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&file, e)),
            };
            // A line cut short by a crash mid-append is skipped, not fatal.
            events.extend(
                text.lines()
                    .filter_map(|line| serde_json::from_str::<AuditEvent>(line).ok())
                    .filter(|e| query.matches(e)),
            );
        }
        Ok(query.apply(events))
    }

    async fn record_usage(&self, used: Vec<(String, SystemTime)>) -> Result<(), StoreError> {
        // Usage lives in a file of its own, not in the keys file: the proxy never rewrites the
        // keys (which may be a read-only Secret mount), and a lost usage write costs nothing.
        // The disk work runs off the request threads.
        if let Some(memory) = self.last_used.memory().as_mut() {
            merge(memory, used);
            return Ok(());
        }
        let path = self.last_used.path.clone();
        let pending = used.clone();
        let write = move || {
            let mut usage = read_usage(&path);
            merge(&mut usage, used);
            let doc: HashMap<&String, String> = usage
                .iter()
                .map(|(id, at)| (id, humantime::format_rfc3339_seconds(*at).to_string()))
                .collect();
            write_atomically(&path, &doc).map(|()| usage)
        };
        let written = tokio::task::spawn_blocking(write)
            .await
            .map_err(|e| StoreError::Unavailable(format!("usage write task: {e}")))?;
        if let Err(e) = written {
            // Said once: from now on the times stay in memory, where nothing can fail, rather
            // than a warning every flush for as long as the disk stays full or read-only.
            let mut usage = read_usage(&self.last_used.path);
            merge(&mut usage, pending);
            *self.last_used.memory() = Some(usage);
            tracing::warn!(
                path = %self.last_used.path.display(), error = %e,
                "last-used times cannot be written: they are kept in memory from now on \
                 (admin listener: /last-used)"
            );
        }
        Ok(())
    }

    async fn last_used(&self) -> Result<HashMap<String, SystemTime>, StoreError> {
        self.usage()
    }

    fn watch(self: Arc<Self>, sink: ChangeSink, shutdown: CancellationToken) {
        // Only a running proxy watches: the one process that records usage.
        self.choose_last_used();
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink.clone());
        self.poll(sink, shutdown);
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

impl FileStore {
    fn usage(&self) -> Result<HashMap<String, SystemTime>, StoreError> {
        if let Some(memory) = self.last_used.memory().as_ref() {
            return Ok(memory.clone());
        }
        Ok(read_usage(&self.last_used.path))
    }
}

/// Owners that `batch` gives one more key that counts against the cap: its inserts' owners,
/// and the owners of keys an update makes count again (an expired key given a new expiry).
fn gaining(batch: &Batch, now: SystemTime) -> HashSet<&str> {
    let rising = (batch.updates.iter())
        .filter(|u| counts_against_cap(&u.after, now) && !counts_against_cap(&u.before, now))
        .map(|u| u.after.owner.as_str());
    (batch.inserts.iter().map(|(_, r)| r.owner.as_str()))
        .chain(rising)
        .collect()
}

/// Events staged for a change (see `# Audit events and crashes`).
struct Staged {
    /// The audit sequence of the change; committed once the keys file carries it.
    seq: u64,
    /// The trail's length when staged: where the lines go.
    audit_len: u64,
    /// The events as the trail holds them, one JSON object a line.
    lines: Vec<u8>,
}

impl Staged {
    /// The pending file's contents; `None` if cut short.
    fn parse(bytes: &[u8]) -> Option<Self> {
        #[derive(Deserialize)]
        struct Head {
            seq: u64,
            audit_len: u64,
        }
        let newline = memchr::memchr(b'\n', bytes)?;
        let head: Head = serde_json::from_slice(&bytes[..newline]).ok()?;
        let lines = bytes[newline + 1..].to_vec();
        // Every event line ends with a newline: anything else was cut short.
        if lines.is_empty() || !lines.ends_with(b"\n") {
            return None;
        }
        Some(Self {
            seq: head.seq,
            audit_len: head.audit_len,
            lines,
        })
    }
}

/// Events as the trail holds them: one JSON object a line.
fn lines(events: &[AuditEvent]) -> Vec<u8> {
    let mut lines = Vec::new();
    for event in events {
        serde_json::to_writer(&mut lines, event).expect("audit events serialize");
        lines.push(b'\n');
    }
    lines
}

/// Keeps the later of two times per key.
fn merge(usage: &mut HashMap<String, SystemTime>, used: Vec<(String, SystemTime)>) {
    for (id, at) in used {
        let slot = usage.entry(id).or_insert(at);
        *slot = (*slot).max(at);
    }
}

/// Last-used times written by [`KeyStore::record_usage`]; missing or unreadable is empty.
fn read_usage(path: &Path) -> HashMap<String, SystemTime> {
    let Ok(bytes) = std::fs::read(path) else {
        return HashMap::new();
    };
    let raw: HashMap<String, String> = serde_json::from_slice(&bytes).unwrap_or_default();
    raw.into_iter()
        .filter_map(|(id, at)| Some((id, humantime::parse_rfc3339_weak(&at).ok()?)))
        .collect()
}

fn read_document(path: &Path) -> Result<(Document, Option<Fingerprint>), StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((
                Document {
                    version: FORMAT_VERSION,
                    audit_seq: 0,
                    keys: Vec::new(),
                },
                None,
            ));
        }
        Err(e) => return Err(io_err(path, e)),
    };
    let fingerprint = std::fs::metadata(path).ok().map(|m| Fingerprint::of(&m));
    let doc: Document = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if doc.version != FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            path: path.display().to_string(),
            message: format!(
                "format version {} is not supported (expected {FORMAT_VERSION})",
                doc.version
            ),
        });
    }
    Ok((doc, fingerprint))
}

/// The proxy's index, parsed from the file without holding the whole document (see
/// [`index`]). A missing file is an empty store.
fn load_index(path: &Path) -> Result<(Index, Option<Fingerprint>), StoreError> {
    // Streamed, not read whole: the file (~420 bytes a key) would otherwise double the
    // start-up peak of a large store, which is what a container memory limit sees.
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Index::default(), None)),
        Err(e) => return Err(io_err(path, e)),
    };
    let fingerprint = file.metadata().ok().map(|m| Fingerprint::of(&m));
    let reader = std::io::BufReader::with_capacity(256 * 1024, file);
    Ok((index::parse(path, reader)?, fingerprint))
}

/// Whether this process may create files in `dir`: access(2) rather than the mode bits, so a
/// read-only mount (`EROFS`), an ACL or a foreign owner answer as the real write would, and
/// rather than a probe file, so a read-only folder sees no write attempt at all.
fn can_create_in(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; access only reads it.
    if unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The folder a file is in (`.` for a bare name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn write_atomically(path: &Path, doc: &impl Serialize) -> Result<(), StoreError> {
    let dir = folder(path);
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    // tempfile creates the file with mode 0600, which the final file keeps after rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix("")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    let json = serde_json::to_vec_pretty(doc).expect("keys and usage always serialize");
    tmp.write_all(&json).map_err(|e| io_err(tmp.path(), e))?;
    tmp.write_all(b"\n").map_err(|e| io_err(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    // The rename is durable only once the folder entry is on disk.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// The start of the name of a temporary file that will replace `path`: `.keys.json.tmp-`, and
/// `.keys.json.last-used.tmp-` for its last-used file (so cleaning up one never touches the
/// other's).
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.tmp-",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Removes what a writer killed midway left (`keys create --count 1000000` writes a 400 MB
/// temporary file before renaming it over the keys file): only the keys file's own temporary
/// files, called under the writer lock.
fn remove_dead_writes(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    file = %entry.path().display(),
                    "removed a temporary keys file left by an interrupted write"
                ),
                Err(e) => tracing::warn!(
                    file = %entry.path().display(), error = %e,
                    "cannot remove a temporary keys file left by an interrupted write"
                ),
            }
        }
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
fn killed() -> StoreError {
    StoreError::Unavailable("killed (a crash test)".into())
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    //! File-specific behaviour; what every store must do is in `tests/store_contract.rs`.
    use super::*;
    use crate::keys::manage::{KeyPolicy, KeySpec, create};
    use crate::keys::{Environment, KeyType, Status};
    use std::os::unix::fs::PermissionsExt;

    fn spec() -> KeySpec {
        KeySpec {
            allowed_origins: Vec::new(),
            name: "test".into(),
            owner: "acme".into(),
            key_type: KeyType::Secret,
            env: Environment::TEST,
            scopes: vec!["content:read".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: None,
            limits: Default::default(),
            workspace: None,
            project: None,
            headers: Vec::new(),
        }
    }

    const POLICY: fn() -> KeyPolicy = || KeyPolicy {
        prefix: "kg".into(),
        max_per_owner: None,
    };

    fn open(path: &Path) -> FileStore {
        FileStore::open(path, Duration::from_millis(10)).unwrap()
    }

    #[tokio::test]
    async fn the_file_holds_hashes_only_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = open(&path);
        let a = create(&store, &POLICY(), spec(), SystemTime::now())
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a.key));
        assert!(text.contains(&KeyHash::of(&a.key).to_hex()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn second_handle_sees_changes_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let writer = open(&path);
        let reader = open(&path);
        let a = create(&writer, &POLICY(), spec(), SystemTime::now())
            .await
            .unwrap();

        assert!(reader.reload_if_changed().unwrap());
        assert!(reader.get(&KeyHash::of(&a.key)).await.unwrap().is_some());
        assert!(
            !reader.reload_if_changed().unwrap(),
            "unchanged file reloads nothing"
        );

        std::fs::write(&path, b"{\"version\":1,\"keys\":[{\"hash\":").unwrap();
        assert!(matches!(
            reader.reload_if_changed(),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(reader.get(&KeyHash::of(&a.key)).await.unwrap().is_some());
        // Reported once per version of the file, not on every poll.
        assert!(!reader.reload_if_changed().unwrap());
    }

    #[tokio::test]
    async fn last_used_goes_to_memory_where_it_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let a = create(&open(&path), &POLICY(), spec(), SystemTime::now())
            .await
            .unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

        // A configured path whose folder cannot exist (its parent is a file): memory from the
        // start (as root, a read-only folder is writable, so this stands in for one).
        let blocker = dir.path().join("a-file");
        std::fs::write(&blocker, b"").unwrap();
        let store = FileStore::open_with(&path, Duration::from_millis(10), Some(blocker.join("x")))
            .unwrap();
        store.choose_last_used();
        assert!(store.last_used_in_memory());
        store
            .record_usage(vec![(a.record.id.clone(), at)])
            .await
            .unwrap();
        assert_eq!(store.last_used().await.unwrap()[&a.record.id], at);
        let (_, record) = store.by_id(&a.record.id).await.unwrap().unwrap();
        assert_eq!(record.last_used_at, Some(at));

        // Writable at start, then not (the file's place taken by a folder): the first failed
        // write moves the times to memory, and nothing is lost.
        let store = open(&path);
        store.choose_last_used();
        assert!(!store.last_used_in_memory());
        store
            .record_usage(vec![(a.record.id.clone(), at)])
            .await
            .unwrap();
        assert!(dir.path().join("keys.json.last-used").is_file());
        std::fs::remove_file(dir.path().join("keys.json.last-used")).unwrap();
        std::fs::create_dir(dir.path().join("keys.json.last-used")).unwrap();
        let later = at + Duration::from_secs(60);
        store
            .record_usage(vec![(a.record.id.clone(), later)])
            .await
            .unwrap();
        assert!(store.last_used_in_memory());
        assert_eq!(store.last_used().await.unwrap()[&a.record.id], later);
    }

    /// A revocation's event, as `audit::Trail` stamps it.
    fn revoke_event(id: &str) -> AuditEvent {
        AuditEvent {
            at: SystemTime::now(),
            actor: "cli:test@host".into(),
            action: "revoke".into(),
            key_id: Some(id.into()),
            owner: Some("acme".into()),
            changed: vec!["status".into()],
            new_key_id: None,
            result: "ok".into(),
        }
    }

    async fn revoke_with_event(store: &FileStore, id: &str) -> Result<KeyRecord, StoreError> {
        let stamp = |batch: &mut Batch| batch.events = vec![revoke_event(id)];
        crate::keys::manage::update_by(
            store,
            id,
            crate::keys::Change::Revoke,
            None,
            SystemTime::now(),
            &stamp,
        )
        .await
    }

    /// The trail's events naming `id` with `action`.
    async fn events_of(store: &FileStore, id: &str, action: &str) -> usize {
        let events = store.audit_events(&AuditQuery::default()).await.unwrap();
        events
            .iter()
            .filter(|e| e.key_id.as_deref() == Some(id) && e.action == action)
            .count()
    }

    /// Rewrites the keys file as one compact line: not keygate's layout, so writes take the
    /// whole-document path.
    fn compact(path: &Path) {
        let doc: Document = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&doc).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_change_and_its_audit_event_outlive_a_kill_at_any_point_together() {
        use KillPoint::*;
        for point in [Staging, Staged, Committed, Publishing, Published] {
            for splice in [true, false] {
                let case = format!("{point:?}, splice {splice}");
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("keys.json");
                let store = open(&path);
                let a = create(&store, &POLICY(), spec(), SystemTime::now())
                    .await
                    .unwrap();
                let b = create(&store, &POLICY(), spec(), SystemTime::now())
                    .await
                    .unwrap();
                revoke_with_event(&store, &b.record.id).await.unwrap();
                if !splice {
                    compact(&path);
                }

                *store.kill_at.lock().unwrap() = Some(point);
                // What the killed process would have answered is never seen.
                let _ = revoke_with_event(&store, &a.record.id).await;
                assert!(
                    store.kill_at.lock().unwrap().is_none(),
                    "{case}: not reached"
                );
                let committed = point >= Committed;
                drop(store);

                // Reopened, as the next command does: the keys and the trail agree.
                let store = open(&path);
                let (_, record) = store.by_id(&a.record.id).await.unwrap().unwrap();
                assert_eq!(record.status == Status::Revoked, committed, "{case}");
                let want = usize::from(committed);
                assert_eq!(
                    events_of(&store, &a.record.id, "revoke").await,
                    want,
                    "{case}"
                );
                assert_eq!(events_of(&store, &b.record.id, "revoke").await, 1, "{case}");
                assert!(!store.pending_path().exists(), "{case}: settled at open");

                // The next change and its event follow the recovered ones, once each.
                revoke_with_event(&store, &a.record.id).await.unwrap();
                assert_eq!(
                    events_of(&store, &a.record.id, "revoke").await,
                    1 + want,
                    "{case}"
                );
                let events = store.audit_events(&AuditQuery::default()).await.unwrap();
                assert_eq!(events.len(), 2 + want, "{case}: {events:?}");
                let (_, record) = store.by_id(&a.record.id).await.unwrap().unwrap();
                assert_eq!(record.status, Status::Revoked, "{case}");
            }
        }
    }

    #[tokio::test]
    async fn a_kill_is_settled_by_the_next_write_or_read_as_well_as_by_an_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = open(&path);
        let a = create(&store, &POLICY(), spec(), SystemTime::now())
            .await
            .unwrap();
        let b = create(&store, &POLICY(), spec(), SystemTime::now())
            .await
            .unwrap();
        // Committed, not published: a reader through the same handle (the API) sees it.
        *store.kill_at.lock().unwrap() = Some(KillPoint::Committed);
        revoke_with_event(&store, &a.record.id).await.unwrap_err();
        assert!(store.pending_path().exists());
        assert_eq!(events_of(&store, &a.record.id, "revoke").await, 1);
        // Staged, not committed: the next write drops it before staging its own.
        *store.kill_at.lock().unwrap() = Some(KillPoint::Staged);
        revoke_with_event(&store, &b.record.id).await.unwrap_err();
        assert!(store.pending_path().exists());
        store
            .append_audit(&[revoke_event("key_refused")])
            .await
            .unwrap();
        assert!(!store.pending_path().exists());
        assert_eq!(events_of(&store, &b.record.id, "revoke").await, 0);
        assert_eq!(events_of(&store, "key_refused", "revoke").await, 1);
    }

    #[tokio::test]
    async fn a_keys_file_written_before_the_audit_sequence_opens_and_takes_changes() {
        for splice in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keys.json");
            let created = create(&open(&path), &POLICY(), spec(), SystemTime::now())
                .await
                .unwrap();
            // The file as keygate wrote it before `audit_seq`: no such field.
            #[derive(Serialize)]
            struct Old<'a> {
                version: u32,
                keys: &'a [Entry],
            }
            let doc: Document = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let old = Old {
                version: 1,
                keys: &doc.keys,
            };
            let mut bytes = if splice {
                serde_json::to_vec_pretty(&old).unwrap()
            } else {
                serde_json::to_vec(&old).unwrap()
            };
            bytes.push(b'\n');
            assert!(!String::from_utf8_lossy(&bytes).contains("audit_seq"));
            std::fs::write(&path, &bytes).unwrap();
            {
                let mut file = File::open(&path).unwrap();
                let head = scan::head(&mut file).unwrap();
                assert_eq!(head.map(|h| h.audit_seq), splice.then_some(0));
            }

            let store = open(&path);
            assert_eq!(store.len(), 1, "the proxy's index loads it");
            let id = &created.record.id;
            assert!(store.by_id(id).await.unwrap().is_some());
            revoke_with_event(&store, id).await.unwrap();
            assert_eq!(events_of(&store, id, "revoke").await, 1);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("{\n  \"version\": 1,\n  \"audit_seq\": 1,\n"),
                "{text}"
            );
            assert_eq!(open(&path).len(), 1);
        }
    }

    #[tokio::test]
    async fn a_page_read_from_the_bytes_is_the_page_the_whole_document_gives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = open(&path);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let owners = ["acme", "ac\"me \u{e9}\\", "globex"];
        for i in 0..40u64 {
            let mut s = spec();
            s.owner = owners[i as usize % 3].into();
            s.env = if i % 4 == 0 {
                Environment::LIVE
            } else {
                Environment::TEST
            };
            // Out of file order, and some at the same instant (ordered by id then).
            let at = t0 + Duration::from_secs((i * 7) % 13);
            create(&store, &POLICY(), s, at).await.unwrap();
        }
        // Made together before them (one instant: ordered by id, random in the file), and
        // none live: a page of live keys passes them all before it finds one, so the scan
        // of the rest in file order is what finds it.
        let mut s = spec();
        s.env = Environment::TEST;
        let early = t0 - Duration::from_secs(1);
        crate::keys::manage::create_many(&store, &POLICY(), s, 300, early)
            .await
            .unwrap();
        // The same keys in another layout: only the whole-document path reads it.
        let other = dir.path().join("other.json");
        std::fs::copy(&path, &other).unwrap();
        compact(&other);
        let slow = open(&other);
        assert!(
            slow.page_in_layout(None, &|_| true, None, Some(1))
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .page_in_layout(None, &|_| true, None, Some(1))
                .unwrap()
                .is_some()
        );

        let all = slow.list(None).await.unwrap();
        let live = |r: &KeyRecord| r.env == Environment::LIVE;
        let any = |_: &KeyRecord| true;
        let filters: [&(dyn for<'r> Fn(&'r KeyRecord) -> bool + Send + Sync); 2] = [&any, &live];
        for owner in [None, Some(owners[0]), Some(owners[1])] {
            for filter in filters {
                for after in [None, Some(all[5].id.as_str()), Some(all[330].id.as_str())] {
                    for limit in [1, 3, 100] {
                        let case = format!("{owner:?} {after:?} {limit}");
                        let want = slow.list_page(owner, filter, after, Some(limit)).await;
                        let got = store.list_page(owner, filter, after, Some(limit)).await;
                        match (want, got) {
                            (Ok(want), Ok(got)) => assert_eq!(got, want, "{case}"),
                            (Err(StoreError::NotFound(_)), Err(StoreError::NotFound(_))) => {}
                            (want, got) => panic!("{case}: {want:?} vs {got:?}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn corrupt_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            FileStore::open(&path, Duration::from_secs(1)),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
