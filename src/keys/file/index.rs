//! The proxy's in-memory copy of the keys file: key hash → packed record.
//!
//! Built straight from the file's bytes, one entry at a time: each record is parsed, checked,
//! packed and dropped before the next, so loading a million keys never holds a million
//! `KeyRecord`s at once, and the allocator reuses the same few chunks instead of being left
//! with a million freed ones (glibc then walks those free lists on every aligned allocation,
//! which made each new connection cost milliseconds on a 1M-key store).

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::path::Path;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::packed;
use super::{Entry, FORMAT_VERSION};
use crate::keys::{KeyHash, KeyHashState, KeyRecord, StoreError};

pub type Index = std::collections::HashMap<KeyHash, Box<[u8]>, KeyHashState>;

/// Adds records one by one, refusing a repeated hash or id.
pub struct Builder {
    index: Index,
    /// Hashes of ids seen: 8 bytes a key instead of a copy of every id. A collision is
    /// settled by comparing the real ids (see [`Builder::id_taken`]).
    ids: HashSet<u64>,
    ids_hasher: std::hash::RandomState,
}

impl Builder {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            index: Index::with_capacity_and_hasher(n, KeyHashState::default()),
            ids: HashSet::with_capacity(n),
            ids_hasher: std::hash::RandomState::new(),
        }
    }

    pub fn add(&mut self, hash: KeyHash, record: &KeyRecord) -> Result<(), String> {
        let duplicate = || format!("key {} appears twice", record.id);
        if self.index.contains_key(&hash) {
            return Err(duplicate());
        }
        let id_hash = self.ids_hasher.hash_one(&record.id);
        if !self.ids.insert(id_hash) && self.id_taken(&record.id) {
            return Err(duplicate());
        }
        self.index.insert(hash, packed::pack(record));
        Ok(())
    }

    /// The slow, exact check behind a 64-bit collision: practically never runs.
    fn id_taken(&self, id: &str) -> bool {
        self.index
            .values()
            .any(|p| packed::unpack(p).is_some_and(|r| r.id == id))
    }

    pub fn finish(mut self) -> Index {
        self.index.shrink_to_fit();
        self.index
    }
}

/// The index of entries already in memory (after a write by this process).
pub fn of_entries<'a>(
    path: &Path,
    entries: impl ExactSizeIterator<Item = &'a Entry>,
) -> Result<Index, StoreError> {
    let mut builder = Builder::with_capacity(entries.len());
    for entry in entries {
        builder
            .add(entry.hash, &entry.record)
            .map_err(|message| corrupt(path, message))?;
    }
    Ok(builder.finish())
}

/// Parses the keys file into an index without materializing the document.
pub fn parse(path: &Path, reader: impl std::io::Read) -> Result<Index, StoreError> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let index = de
        .deserialize_map(DocumentVisitor)
        .and_then(|index| de.end().map(|()| index))
        .map_err(|e| corrupt(path, e.to_string()))?;
    Ok(index)
}

fn corrupt(path: &Path, message: String) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        message,
    }
}

/// `{"version": 1, "keys": [...]}`, as `Document` reads it, with the same refusals.
struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Index;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a keys document {\"version\": 1, \"keys\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Index, A::Error> {
        let mut version = None;
        let mut index = None;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match field.as_ref() {
                "version" => version = Some(map.next_value::<u32>()?),
                "audit_seq" => {
                    map.next_value::<u64>()?;
                }
                "keys" => index = Some(map.next_value_seed(KeysSeed)?),
                other => {
                    let _: IgnoredAny = map.next_value()?;
                    return Err(de::Error::unknown_field(
                        other,
                        &["version", "audit_seq", "keys"],
                    ));
                }
            }
        }
        match version {
            Some(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(de::Error::custom(format!(
                    "format version {v} is not supported (expected {FORMAT_VERSION})"
                )));
            }
            None => return Err(de::Error::missing_field("version")),
        }
        index.ok_or_else(|| de::Error::missing_field("keys"))
    }
}

struct KeysSeed;

impl<'de> DeserializeSeed<'de> for KeysSeed {
    type Value = Index;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Index, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeysSeed {
    type Value = Index;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of key entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Index, A::Error> {
        let mut builder = Builder::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(entry) = seq.next_element::<Entry>()? {
            builder
                .add(entry.hash, &entry.record)
                .map_err(de::Error::custom)?;
        }
        Ok(builder.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash_byte: u8, id: &str) -> String {
        let mut record = KeyRecord::for_tests();
        record.id = id.into();
        let e = Entry {
            hash: KeyHash([hash_byte; 32]),
            record,
        };
        serde_json::to_string(&e).unwrap()
    }

    #[test]
    fn the_file_parses_into_packed_records_with_the_documents_refusals() {
        let path = Path::new("keys.json");
        let doc = |version: &str, entries: &[String], extra: &str| {
            format!(
                "{{\"version\": {version}, \"keys\": [{}]{extra}}}",
                entries.join(",")
            )
        };
        let good = doc("1", &[entry(1, "key_a"), entry(2, "key_b")], "");
        let index = parse(path, good.as_bytes()).unwrap();
        assert_eq!(index.len(), 2);
        let b = packed::unpack(&index[&KeyHash([2; 32])]).unwrap();
        assert_eq!(b.id, "key_b");

        let cases = [
            (
                doc("1", &[entry(1, "key_a"), entry(1, "key_b")], ""),
                "twice",
            ),
            (
                doc("1", &[entry(1, "key_a"), entry(2, "key_a")], ""),
                "twice",
            ),
            (doc("2", &[entry(1, "key_a")], ""), "version 2"),
            (doc("1", &[], ", \"extra\": 1"), "unknown field"),
            ("{\"keys\": []}".to_owned(), "version"),
            (good[..good.len() - 5].to_owned(), "EOF"),
            (format!("{good} trailing"), "trailing"),
        ];
        for (text, expect) in cases {
            let err = parse(path, text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expect), "{expect}: {err}");
        }
    }
}
