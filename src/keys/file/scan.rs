//! Single-key management on a large keys file without reading it whole (issue 21.7: at
//! 100,000 keys, `keys show/create/revoke` used to parse the ~46 MB file into ~140 MB of
//! records).
//!
//! The file keeps its format (one pretty-printed JSON document, replaced atomically); what
//! changes is how a single-key command finds its way in it:
//!
//! - **find**: the file is searched as bytes (`memchr::memmem`, 1 MiB at a time, so the process
//!   never holds more than that) for the one field that names the entry: `"hash": "<hex>"` or
//!   `"id": "<id>"`, exactly as keygate writes them. The entry around a hit is parsed alone and
//!   checked (its id or hash must be the one asked for), so a hit in the wrong place (an id
//!   quoted in another record's `rotated_from`) is skipped, never trusted.
//! - **splice**: a write copies the bytes before the entry and after it into the temporary
//!   file with `copy_file_range` (in the kernel, no user-space copy), writes the one changed
//!   entry between them, then fsyncs and renames as before. An insert goes before the closing
//!   `]`.
//!
//! All of it applies only to a file in keygate's own layout (`{"version": 1, "keys": [` as
//! `serde_json`'s pretty printer writes it: [`canonical`]). Anything else (a file edited by
//! hand into another layout) takes the slow path, the whole document, as before.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::Entry;
use crate::keys::KeyHash;

/// How the file keygate writes begins: the version, the audit sequence (files written before
/// it existed have none: 0), then the list of entries.
const HEAD_START: &[u8] = b"{\n  \"version\": 1,\n  ";
const HEAD_SEQ: &[u8] = b"\"audit_seq\": ";
const HEAD_KEYS: &[u8] = b"\"keys\": [";
/// Bytes read per step while searching.
const CHUNK: usize = 1 << 20;
/// The largest entry the fast path parses (larger: the slow path).
const MAX_ENTRY: usize = 1 << 20;

/// The head of a keys file in keygate's own layout: where its entries begin, and the audit
/// sequence committed with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes up to and including the `[` of `keys`.
    pub len: u64,
    pub audit_seq: u64,
}

/// The file's head, if the file is in keygate's own layout.
pub fn head(file: &mut File) -> std::io::Result<Option<Head>> {
    let mut bytes = [0u8; 96];
    file.seek(SeekFrom::Start(0))?;
    let n = read_full(file, &mut bytes)?;
    Ok(parse_head(&bytes[..n]))
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut rest = bytes.strip_prefix(HEAD_START)?;
    let mut audit_seq = 0;
    if let Some(after) = rest.strip_prefix(HEAD_SEQ) {
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        audit_seq = std::str::from_utf8(&after[..digits]).ok()?.parse().ok()?;
        rest = after[digits..].strip_prefix(b",\n  ")?;
    }
    rest.strip_prefix(HEAD_KEYS)?;
    let len = bytes.len() - rest.len() + HEAD_KEYS.len();
    Some(Head {
        len: len as u64,
        audit_seq,
    })
}

/// The head keygate writes for `audit_seq` (what `serde_json`'s pretty printer writes for
/// the document's first fields).
pub fn render_head(audit_seq: u64) -> Vec<u8> {
    let mut out = HEAD_START.to_vec();
    out.extend_from_slice(HEAD_SEQ);
    out.extend_from_slice(audit_seq.to_string().as_bytes());
    out.extend_from_slice(b",\n  ");
    out.extend_from_slice(HEAD_KEYS);
    out
}

/// Whether the file is in keygate's own layout (and exists).
pub fn canonical(file: &mut File) -> std::io::Result<bool> {
    Ok(head(file)?.is_some())
}

/// Offsets of every occurrence of `needle` in the file.
fn find_all(file: &mut File, needle: &[u8]) -> std::io::Result<Vec<u64>> {
    find_any(file, &[needle])
}

/// Offsets of every occurrence of any of `needles` in the file, in one pass.
fn find_any(file: &mut File, needles: &[&[u8]]) -> std::io::Result<Vec<u64>> {
    let finders: Vec<_> = needles.iter().map(memchr::memmem::Finder::new).collect();
    let longest = needles.iter().map(|n| n.len()).max().unwrap_or(1).max(1);
    let mut found = Vec::new();
    let mut buf = vec![0u8; CHUNK + longest];
    // `keep` bytes from the end of the last chunk stay in front, so a needle across two
    // chunks is seen.
    let mut keep = 0usize;
    let mut base = 0u64; // file offset of buf[0]
    file.seek(SeekFrom::Start(0))?;
    loop {
        let n = read_full(file, &mut buf[keep..])?;
        let len = keep + n;
        for finder in &finders {
            for at in finder.find_iter(&buf[..len]) {
                // A hit entirely within the kept bytes was found last round.
                if at + finder.needle().len() > keep {
                    found.push(base + at as u64);
                }
            }
        }
        if n == 0 {
            return Ok(found);
        }
        let next_keep = (longest - 1).min(len);
        buf.copy_within(len - next_keep..len, 0);
        base += (len - next_keep) as u64;
        keep = next_keep;
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// An entry of the file and where its bytes are: `[start, end)`, from its `{` to its `}`.
#[derive(Debug)]
pub struct Located {
    pub start: u64,
    pub end: u64,
    pub entry: Entry,
}

/// The entry whose field `"id": …` is at `hit`, if the bytes there are one.
fn entry_at(file: &mut File, hit: u64) -> std::io::Result<Option<Located>> {
    // The entry's first field, `"hash"`, is a line or two before its record's `"id"`: look
    // back a little for it, then parse from the `{` before it.
    let back = 512u64.min(hit);
    let mut window = vec![0u8; back as usize];
    file.seek(SeekFrom::Start(hit - back))?;
    file.read_exact(&mut window)?;
    match memchr::memmem::rfind(&window, b"\"hash\": \"") {
        Some(at) => parse_from_brace(file, hit - back + at as u64),
        None => Ok(None),
    }
}

/// Parses the entry whose first field starts at `field_at` (its `{` just before it).
fn parse_from_brace(file: &mut File, field_at: u64) -> std::io::Result<Option<Located>> {
    let back = 64u64.min(field_at);
    let mut window = vec![0u8; back as usize];
    file.seek(SeekFrom::Start(field_at - back))?;
    file.read_exact(&mut window)?;
    let Some(brace) = window.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    if !window[brace + 1..].iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let start = field_at - back + brace as u64;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity(4096);
    (&mut *file)
        .take(MAX_ENTRY as u64)
        .read_to_end(&mut bytes)?;
    let mut stream = serde_json::Deserializer::from_slice(&bytes).into_iter::<Entry>();
    match stream.next() {
        Some(Ok(entry)) => Ok(Some(Located {
            start,
            end: start + stream.byte_offset() as u64,
            entry,
        })),
        _ => Ok(None),
    }
}

/// The entry for `hash`, found as described at the top. `None`: not in the file.
pub fn by_hash(file: &mut File, hash: &KeyHash) -> std::io::Result<Option<Located>> {
    let needle = format!("\"hash\": \"{}\"", hash.to_hex());
    for hit in find_all(file, needle.as_bytes())? {
        if let Some(found) = parse_from_brace(file, hit)?
            && found.entry.hash == *hash
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The entry with this id. `None`: not in the file.
pub fn by_id(file: &mut File, id: &str) -> std::io::Result<Option<Located>> {
    let needle = format!("\"id\": {}", serde_json::to_string(id).expect("a string"));
    for hit in find_all(file, needle.as_bytes())? {
        if let Some(found) = entry_at(file, hit)?
            && found.entry.record.id == id
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// What a page of `keys list` needs of an entry before parsing it: where its bytes are, and
/// the fields the list is ordered by (`created_at`, then `id`), read from the bytes as keygate
/// writes them.
#[derive(Debug)]
pub struct Brief {
    /// From its `{` to the next entry's (or the end of the list).
    pub start: u64,
    pub end: u64,
    pub created_at: std::time::SystemTime,
    /// Inline (ids are 24 bytes): no allocation per entry.
    pub id: compact_str::CompactString,
}

/// Where each entry begins: its `{` on a line of its own at the list's indent, then its first
/// field. JSON strings hold no raw newline, so nothing inside a value looks like this.
const ENTRY: &[u8] = b"\n    {\n      \"hash\": \"";

/// The [`Brief`] of every entry of a file in keygate's own layout whose owner is `owner` (as
/// JSON, quotes included; `None`: every entry), in file order, found by searching its bytes
/// 1 MiB at a time (no entry is parsed). `None`: an entry did not read as keygate writes one
/// (the caller parses the whole document instead).
pub fn briefs(
    file: &mut File,
    head: &Head,
    owner: Option<&[u8]>,
) -> std::io::Result<Option<Vec<Brief>>> {
    let finder = memchr::memmem::Finder::new(ENTRY);
    let fields = Fields {
        id: memchr::memmem::Finder::new(b"\n        \"id\": "),
        owner: memchr::memmem::Finder::new(b"\n        \"owner\": "),
        created_at: memchr::memmem::Finder::new(b"\n        \"created_at\": "),
    };
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + MAX_ENTRY);
    // File offset of buf[0].
    let mut base = head.len;
    file.seek(SeekFrom::Start(head.len))?;
    let mut chunk = vec![0u8; CHUNK];
    let mut starts = Vec::new();
    loop {
        let n = read_full(file, &mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        starts.clear();
        starts.extend(finder.find_iter(&buf));
        // Every entry but the last found is whole; at the end, the last one is too.
        let whole = if n == 0 {
            starts.len()
        } else {
            starts.len().saturating_sub(1)
        };
        for i in 0..whole {
            let from = starts[i] + 1;
            let to = starts.get(i + 1).map_or(buf.len(), |&next| next + 1);
            match fields.brief(&buf[from..to], base + from as u64, owner) {
                Some(Some(brief)) => out.push(brief),
                Some(None) => {}
                None => return Ok(None),
            }
        }
        if n == 0 {
            return Ok(Some(out));
        }
        // Keep the last entry (not yet whole) for the next round.
        let keep = starts
            .get(whole)
            .copied()
            .unwrap_or(buf.len().saturating_sub(ENTRY.len()));
        buf.drain(..keep);
        base += keep as u64;
        if buf.len() > MAX_ENTRY + CHUNK {
            return Ok(None);
        }
    }
}

/// The record fields a [`Brief`] reads, each on a line of its own at the record's indent, in
/// the order [`crate::keys::KeyRecord`] declares them (`id`, …, `owner`, …, `created_at`).
struct Fields {
    id: memchr::memmem::Finder<'static>,
    owner: memchr::memmem::Finder<'static>,
    created_at: memchr::memmem::Finder<'static>,
}

impl Fields {
    /// An entry's brief from its bytes (`{` first); `Some(None)`: another owner's entry;
    /// `None`: not as keygate writes an entry.
    fn brief(&self, bytes: &[u8], start: u64, owner: Option<&[u8]>) -> Option<Option<Brief>> {
        // The value after `finder`'s field, searched from `from`: (value, where it ends).
        let value = |finder: &memchr::memmem::Finder<'_>, from: usize| -> Option<(&[u8], usize)> {
            let at = from + finder.find(&bytes[from..])? + finder.needle().len();
            let len = memchr::memchr(b'\n', &bytes[at..])?;
            let value = &bytes[at..at + len];
            Some((value.strip_suffix(b",").unwrap_or(value), at + len))
        };
        let (id, at) = value(&self.id, 0)?;
        let (owned, at) = value(&self.owner, at)?;
        if owner.is_some_and(|o| o != owned) {
            return Some(None);
        }
        let (created_at, _) = value(&self.created_at, at)?;
        let created_at = std::str::from_utf8(string(created_at)?).ok()?;
        let id = match string(id) {
            Some(inner) if !inner.contains(&b'\\') => {
                compact_str::CompactString::from(std::str::from_utf8(inner).ok()?)
            }
            _ => serde_json::from_slice::<String>(id).ok()?.into(),
        };
        Some(Some(Brief {
            start,
            end: start + bytes.len() as u64,
            created_at: humantime::parse_rfc3339_weak(created_at).ok()?,
            id,
        }))
    }
}

/// The inside of a JSON string as written (escapes left as they are).
fn string(raw: &[u8]) -> Option<&[u8]> {
    raw.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// Reads the entries [`briefs`] found, through a window of the file, so that entries next to
/// each other cost one read (at 100,000 keys, a read per entry made a scan of every entry 4
/// times slower than parsing the file whole).
pub struct Entries<'f> {
    file: &'f File,
    window: Vec<u8>,
    /// File offset of `window[0]`.
    at: u64,
}

impl<'f> Entries<'f> {
    pub fn new(file: &'f File) -> Self {
        Self {
            file,
            window: Vec::new(),
            at: 0,
        }
    }

    /// The entry whose bytes `brief` found, parsed; `None` if they do not hold it. A miss
    /// reads `window` bytes from the entry on.
    pub fn get(&mut self, brief: &Brief, window: usize) -> std::io::Result<Option<Entry>> {
        use std::os::unix::fs::FileExt;
        let inside = brief.start >= self.at && brief.end <= self.at + self.window.len() as u64;
        if !inside {
            let len = ((brief.end - brief.start) as usize).max(window);
            self.window.resize(len, 0);
            let mut n = 0;
            while n < len {
                match self
                    .file
                    .read_at(&mut self.window[n..], brief.start + n as u64)?
                {
                    0 => break,
                    k => n += k,
                }
            }
            self.window.truncate(n);
            self.at = brief.start;
            if brief.end > self.at + n as u64 {
                return Ok(None);
            }
        }
        let from = (brief.start - self.at) as usize;
        let to = (brief.end - self.at) as usize;
        let mut stream =
            serde_json::Deserializer::from_slice(&self.window[from..to]).into_iter::<Entry>();
        Ok(match stream.next() {
            Some(Ok(entry)) if entry.record.id == brief.id => Some(entry),
            _ => None,
        })
    }
}

/// Whether any of `needles` occurs in the file (a quick "certainly absent" for inserts).
pub fn contains_any(file: &mut File, needles: &[String]) -> std::io::Result<bool> {
    let needles: Vec<&[u8]> = needles.iter().map(String::as_bytes).collect();
    Ok(!find_any(file, &needles)?.is_empty())
}

/// The entry that starts (its `{`) exactly at `start`, if one does.
pub fn entry_from(file: &mut File, start: u64) -> std::io::Result<Option<Located>> {
    file.seek(SeekFrom::Start(start))?;
    let mut first = [0u8; 1];
    if file.read(&mut first)? != 1 || first[0] != b'{' {
        return Ok(None);
    }
    parse_from_brace(file, start + 1)
}

/// Where an insert goes: the offset of the newline before the closing `]` of `keys`, and
/// whether the list is empty. `None`: the file does not end as keygate writes it.
pub fn insert_point(file: &mut File) -> std::io::Result<Option<(u64, bool)>> {
    let len = file.metadata()?.len();
    let back = 64u64.min(len);
    let mut tail = vec![0u8; back as usize];
    file.seek(SeekFrom::Start(len - back))?;
    file.read_exact(&mut tail)?;
    // Non-empty: `\n    }\n  ]\n}\n`; empty: `"keys": []\n}\n`.
    if tail.ends_with(b"\n    }\n  ]\n}\n") {
        let at = len - b"\n  ]\n}\n".len() as u64;
        return Ok(Some((at, false)));
    }
    if tail.ends_with(b"\"keys\": []\n}\n") {
        let at = len - b"]\n}\n".len() as u64;
        return Ok(Some((at, true)));
    }
    Ok(None)
}

/// An entry as it sits in the file: pretty-printed, indented for its place in `keys`.
pub fn render(entry: &Entry) -> Vec<u8> {
    let pretty = serde_json::to_vec_pretty(entry).expect("entries serialize");
    // JSON strings hold no raw newline, so every newline is the printer's: indent after it.
    let mut out = Vec::with_capacity(pretty.len() + pretty.len() / 8);
    for (i, line) in pretty.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\n    ");
        }
        out.extend_from_slice(line);
    }
    out
}

/// Copies `[from, to)` of `src` to the end of `dst` in the kernel.
pub fn copy_range(src: &File, dst: &File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut off_in = from as libc::loff_t;
    let mut left = (to - from) as usize;
    while left > 0 {
        // SAFETY: both descriptors are open for the call's duration; `off_in` is a valid
        // pointer; a null `off_out` writes at (and advances) `dst`'s file position.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                left,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A filesystem without copy_file_range (or a kernel): copy through user space.
            if left == (to - from) as usize
                && matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP)
                )
            {
                let mut src = src;
                let mut dst = dst;
                src.seek(SeekFrom::Start(from))?;
                let copied = std::io::copy(&mut src.take(to - from), &mut dst)?;
                if copied != to - from {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(());
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the keys file shrank while being copied",
            ));
        }
        left -= n as usize;
    }
    Ok(())
}

/// Calls `each` with every entry of the keys document read from `reader`, one at a time (the
/// document is never held whole), with the refusals of the document's own parse: a version
/// other than [`super::FORMAT_VERSION`], an unknown field, trailing bytes.
pub fn each_entry(reader: impl Read, each: &mut dyn FnMut(Entry)) -> Result<(), serde_json::Error> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_reader(reader);
    de.deserialize_map(Document { each })?;
    de.end()
}

struct Document<'a> {
    each: &'a mut dyn FnMut(Entry),
}

impl<'de> serde::de::Visitor<'de> for Document<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a keys document {\"version\": 1, \"keys\": [...]}")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut version = None;
        let mut keys = false;
        while let Some(field) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match field.as_ref() {
                "version" => {
                    let v = map.next_value::<u32>()?;
                    if v != super::FORMAT_VERSION {
                        return Err(A::Error::custom(format!(
                            "format version {v} is not supported (expected {})",
                            super::FORMAT_VERSION
                        )));
                    }
                    version = Some(v);
                }
                "audit_seq" => {
                    map.next_value::<u64>()?;
                }
                "keys" => {
                    map.next_value_seed(Keys { each: self.each })?;
                    keys = true;
                }
                other => {
                    return Err(A::Error::unknown_field(
                        other,
                        &["version", "audit_seq", "keys"],
                    ));
                }
            }
        }
        if version.is_none() {
            return Err(A::Error::missing_field("version"));
        }
        if !keys {
            return Err(A::Error::missing_field("keys"));
        }
        Ok(())
    }
}

struct Keys<'a> {
    each: &'a mut dyn FnMut(Entry),
}

impl<'de> serde::de::DeserializeSeed<'de> for Keys<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Keys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of key entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<Entry>()? {
            (self.each)(entry);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyRecord;
    use std::io::Write;

    fn doc(entries: &[Entry]) -> Vec<u8> {
        let doc = super::super::Document {
            version: super::super::FORMAT_VERSION,
            audit_seq: 7,
            keys: entries.to_vec(),
        };
        let mut bytes = serde_json::to_vec_pretty(&doc).unwrap();
        bytes.push(b'\n');
        bytes
    }

    fn entry(n: u8) -> Entry {
        let mut record = KeyRecord::for_tests();
        record.id = format!("key_{n}");
        // A record naming another's id must not be taken for it.
        record.rotated_from = Some(format!("key_{}", n + 1));
        Entry {
            hash: KeyHash([n; 32]),
            record,
        }
    }

    #[test]
    fn finds_entries_by_id_and_hash_and_splices_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let entries: Vec<Entry> = (1..=5).map(entry).collect();
        std::fs::write(&path, doc(&entries)).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(canonical(&mut file).unwrap());
        for e in &entries {
            let found = by_id(&mut file, &e.record.id).unwrap().unwrap();
            assert_eq!(found.entry.hash, e.hash);
            let found = by_hash(&mut file, &e.hash).unwrap().unwrap();
            assert_eq!(found.entry.record.id, e.record.id);
        }
        assert!(by_id(&mut file, "key_9").unwrap().is_none());
        assert!(
            by_id(&mut file, "key_6").unwrap().is_none(),
            "only a rotated_from"
        );

        // Replacing entry 3's bytes with its rendering and appending two gives exactly what
        // the whole document's printer writes.
        let found = by_id(&mut file, "key_3").unwrap().unwrap();
        let mut changed = entries.clone();
        changed[2].record.name = "renamed \"x\"\n".into();
        changed.push(entry(7));
        changed.push(entry(8));
        let (at, empty) = insert_point(&mut file).unwrap().unwrap();
        assert!(!empty);
        let out = tempfile::tempfile().unwrap();
        let len = file.metadata().unwrap().len();
        copy_range(&file, &out, 0, found.start).unwrap();
        (&out).write_all(&render(&changed[2])).unwrap();
        copy_range(&file, &out, found.end, at).unwrap();
        for e in &changed[5..] {
            (&out).write_all(b",\n    ").unwrap();
            (&out).write_all(&render(e)).unwrap();
        }
        copy_range(&file, &out, at, len).unwrap();
        let mut written = Vec::new();
        let mut out = out;
        out.seek(SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut written).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(doc(&changed)).unwrap()
        );

        // An empty list takes its first entry too.
        std::fs::write(&path, doc(&[])).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(canonical(&mut file).unwrap());
        let (at, empty) = insert_point(&mut file).unwrap().unwrap();
        assert!(empty);
        let mut bytes = std::fs::read(&path).unwrap();
        let mut middle = b"\n    ".to_vec();
        middle.extend(render(&entries[0]));
        middle.extend(b"\n  ");
        bytes.splice(at as usize..at as usize, middle);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(doc(&entries[..1])).unwrap()
        );

        let mut seen = Vec::new();
        each_entry(&doc(&entries)[..], &mut |e| seen.push(e.record.id)).unwrap();
        assert_eq!(seen.len(), 5);
        assert!(each_entry(&b"{\"version\": 2, \"keys\": []}"[..], &mut |_| {}).is_err());
    }
}
