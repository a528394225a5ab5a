//! The embedded key store: one JSON file of hashes and records, held in memory.
//!
//! - Reads on the request path never touch the disk: the parsed file lives in an [`ArcSwap`],
//!   so a lookup is a lock-free pointer load and a hash-map probe.
//! - Writers (the CLI, possibly several at once) take an exclusive lock on `<file>.lock`,
//!   re-read the file, apply their change, and replace the file atomically (temp file in the
//!   same folder, fsync, rename, fsync the folder), mode 0600. Readers therefore see either the
//!   old or the new file, never a mix.
//! - A running proxy polls the file's identity (inode, size, mtime) and reloads on change. A
//!   file that fails to parse — edited by hand, half-copied, truncated — is reported once and
//!   the last good keys keep serving. Polling rather than inotify also follows Kubernetes
//!   Secret volumes, which swap a symlink instead of writing the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Change, KeyHash, KeyRecord, KeyStore, StoreError, counts_against_cap};

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
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

type Index = HashMap<KeyHash, Arc<KeyRecord>>;

pub struct FileStore {
    path: PathBuf,
    index: ArcSwap<Index>,
    /// The version last looked at, good or bad, so a bad file is reported once, not per poll.
    seen: Mutex<Option<Fingerprint>>,
}

impl FileStore {
    /// Opens the store. A missing file is an empty store (the first `keys create` makes it);
    /// an unreadable or corrupt one is an error, since there is no last good state yet.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let (doc, fingerprint) = read_document(&path)?;
        Ok(Self {
            index: ArcSwap::from_pointee(index_of(&path, doc)?),
            seen: Mutex::new(fingerprint),
            path,
        })
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
        let (doc, _) = read_document(&self.path)?;
        self.index.store(Arc::new(index_of(&self.path, doc)?));
        Ok(true)
    }

    /// Polls the file every `interval` until `shutdown`, logging reloads and errors.
    pub fn watch(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
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
                    Ok(Ok(true)) => tracing::info!(
                        path = %self.path.display(), keys = self.len(), "keys file reloaded"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(
                        error = %e, keys = self.len(),
                        "keys file not reloaded; still serving the last good keys"
                    ),
                    Err(e) => tracing::error!(error = %e, "keys file reload task failed"),
                }
            }
        });
    }

    /// Runs `edit` on the current file contents under the writer lock and replaces the file
    /// atomically. The in-memory index follows.
    fn modify<T>(
        &self,
        edit: impl FnOnce(&mut Vec<Entry>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = sibling(&self.path, ".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        lock.lock().map_err(|e| io_err(&lock_path, e))?;

        let (mut doc, _) = read_document(&self.path)?;
        let out = edit(&mut doc.keys)?;
        doc.version = FORMAT_VERSION;
        let index = index_of(
            &self.path,
            Document {
                version: FORMAT_VERSION,
                keys: doc.keys.clone(),
            },
        )?;
        write_atomically(&self.path, &doc)?;
        let meta = std::fs::metadata(&self.path).map_err(|e| io_err(&self.path, e))?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(Fingerprint::of(&meta));
        self.index.store(Arc::new(index));
        drop(lock);
        Ok(out)
    }
}

#[async_trait::async_trait]
impl KeyStore for FileStore {
    async fn get(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.index.load().get(hash).cloned())
    }

    async fn insert(
        &self,
        entries: Vec<(KeyHash, KeyRecord)>,
        max_per_owner: Option<u32>,
    ) -> Result<(), StoreError> {
        // Duplicates (against the file or within the batch) are caught by `index_of` before
        // anything is written; the cap is checked under the writer lock, so two concurrent
        // `keys create` cannot both take the last slot.
        self.modify(|keys| {
            keys.extend(
                entries
                    .into_iter()
                    .map(|(hash, record)| Entry { hash, record }),
            );
            if let Some(max) = max_per_owner {
                let mut held: HashMap<&str, u32> = HashMap::new();
                for e in keys.iter().filter(|e| counts_against_cap(&e.record)) {
                    *held.entry(e.record.owner.as_str()).or_default() += 1;
                }
                if let Some((owner, _)) = held.into_iter().find(|(_, n)| *n > max) {
                    return Err(StoreError::OwnerCap {
                        owner: owner.to_owned(),
                        max,
                    });
                }
            }
            Ok(())
        })
    }

    async fn update(&self, id: &str, change: Change) -> Result<KeyRecord, StoreError> {
        self.modify(|keys| {
            let entry = keys
                .iter_mut()
                .find(|e| e.record.id == id)
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            change.apply(&mut entry.record)?;
            Ok(entry.record.clone())
        })
    }

    async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyRecord>, StoreError> {
        // Management reads the file, not the in-memory copy: the CLI is a separate process
        // and must see what other writers just did.
        let (doc, _) = read_document(&self.path)?;
        let mut out: Vec<KeyRecord> = doc
            .keys
            .into_iter()
            .map(|e| e.record)
            .filter(|r| owner.is_none_or(|o| r.owner == o))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

fn read_document(path: &Path) -> Result<(Document, Option<Fingerprint>), StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((
                Document {
                    version: FORMAT_VERSION,
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

fn index_of(path: &Path, doc: Document) -> Result<Index, StoreError> {
    let mut index = Index::with_capacity(doc.keys.len());
    let mut ids = std::collections::HashSet::with_capacity(doc.keys.len());
    for Entry { hash, record } in doc.keys {
        if !ids.insert(record.id.clone()) || index.contains_key(&hash) {
            return Err(StoreError::Corrupt {
                path: path.display().to_string(),
                message: format!("key {} appears twice", record.id),
            });
        }
        index.insert(hash, Arc::new(record));
    }
    Ok(index)
}

fn write_atomically(path: &Path, doc: &Document) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    // tempfile creates the file with mode 0600, which the final file keeps after rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".keys-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    let json = serde_json::to_vec_pretty(doc).expect("key records always serialize");
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

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Environment, KeyPolicy, KeySpec, KeyType, Status, create};

    fn policy(max: Option<u32>) -> KeyPolicy {
        KeyPolicy {
            prefix: "kg".into(),
            max_per_owner: max,
        }
    }
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    fn spec(owner: &str) -> KeySpec {
        KeySpec {
            name: "test".into(),
            owner: owner.into(),
            key_type: KeyType::Secret,
            env: Environment::Test,
            scopes: vec!["content:read".into()],
            allowed_cidrs: vec![],
            expires_at: None,
            plan: None,
            workspace: None,
            project: None,
        }
    }

    #[tokio::test]
    async fn create_get_revoke_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let store = FileStore::open(&path).unwrap();
        assert!(store.is_empty());

        let a = create(&store, &policy(None), spec("acme"), SystemTime::now())
            .await
            .unwrap();
        let b = create(&store, &policy(None), spec("other"), SystemTime::now())
            .await
            .unwrap();
        let got = store.get(&KeyHash::of(&a.key)).await.unwrap().unwrap();
        assert_eq!(got.id, a.record.id);

        // The secret is nowhere in the file; its hash is.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a.key));
        assert!(text.contains(&KeyHash::of(&a.key).to_hex()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        assert_eq!(store.list(Some("acme")).await.unwrap().len(), 1);
        assert_eq!(store.list(None).await.unwrap().len(), 2);

        let revoked = store.update(&b.record.id, Change::Revoke).await.unwrap();
        assert_eq!(revoked.status, Status::Revoked);
        let again = store.get(&KeyHash::of(&b.key)).await.unwrap().unwrap();
        assert_eq!(again.status, Status::Revoked);
        assert!(matches!(
            store.update("key_nope", Change::Revoke).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn second_handle_sees_changes_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let writer = FileStore::open(&path).unwrap();
        let reader = FileStore::open(&path).unwrap();
        let a = create(&writer, &policy(None), spec("acme"), SystemTime::now())
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
    async fn owner_cap_counts_live_keys_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("keys.json")).unwrap();
        let capped = policy(Some(2));
        let a = create(&store, &capped, spec("acme"), SystemTime::now())
            .await
            .unwrap();
        create(&store, &capped, spec("acme"), SystemTime::now())
            .await
            .unwrap();
        create(&store, &capped, spec("other"), SystemTime::now())
            .await
            .unwrap();
        let err = create(&store, &capped, spec("acme"), SystemTime::now())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::OwnerCap { max: 2, .. }), "{err}");
        assert_eq!(
            store.list(Some("acme")).await.unwrap().len(),
            2,
            "nothing written"
        );
        store.update(&a.record.id, Change::Revoke).await.unwrap();
        create(&store, &capped, spec("acme"), SystemTime::now())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn status_transitions() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("keys.json")).unwrap();
        let k = create(&store, &policy(None), spec("acme"), SystemTime::now())
            .await
            .unwrap();
        let id = k.record.id.as_str();
        assert!(
            store.update(id, Change::Resume).await.is_err(),
            "active cannot resume"
        );
        assert_eq!(
            store.update(id, Change::Suspend).await.unwrap().status,
            Status::Suspended
        );
        assert_eq!(
            store.update(id, Change::Resume).await.unwrap().status,
            Status::Active
        );
        assert_eq!(
            store.update(id, Change::Revoke).await.unwrap().status,
            Status::Revoked
        );
        assert!(
            store.update(id, Change::Resume).await.is_err(),
            "revocation is final"
        );
        assert!(
            store.update(id, Change::Suspend).await.is_err(),
            "revocation is final"
        );
    }

    #[test]
    fn corrupt_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
