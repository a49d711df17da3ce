//! The key index kept with a backup: per collection, every key with its record's CRC32 and
//! length, in ascending key order. A diff-based incremental merges it with a key-ordered scan of
//! the store and writes only what changed (deletions included), in memory bounded by one key.
//!
//! File layout (little-endian; `varint` is LEB128, 7 bits a byte, low bits first):
//!
//! - version 3 (written since block-indexed key state): version 2's entries under
//!   `"TMKIDX03"`, cut into blocks of about [`BLOCK_BYTES`] whose first key is stored whole
//!   (`shared` 0); after the end marker and key count, a block index (per block: its first
//!   key, its length and its CRC32) and a 24-byte tail (block count, the end marker's offset,
//!   the CRC32 of the end marker, count and block index, and the file's CRC32). A sequential
//!   reader reads it as version 2; [`write_delta`] opens it by its block index and decodes only
//!   the blocks that hold changed keys (docs/FORMAT.md §1.8).
//! - version 2 (written from archive format 2 until version 3): `"TMKIDX02"`, then per key
//!   `varint (shared + 1) | varint suffix length | suffix | u32 record CRC32 | varint value
//!   length`, where `shared` is the length of the prefix the key shares with the previous key
//!   (0 for the first) and the key is that prefix followed by the suffix; then `varint 0 | u64
//!   key count | u32 CRC32 of every byte before it`. Sorted keys share long prefixes, so a
//!   12-byte key costs about 12 bytes in all (version 1: 28).
//! - version 1: `"TMKIDX01"`, then per key `u32 key length | key | u32 record CRC32 | u64 value
//!   length`, then `u32 0xFFFFFFFF | u64 key count | u32 CRC32 of every byte before it`. Still
//!   read; replaced by version 2 the next time the index is written.
//! - delta (written since layered key state): `"TMKDLT01"`, then the entries as in version 2
//!   except that the value length is stored plus one, and `0` marks a deleted key (whose
//!   CRC32 field is 0); the same end marker and trailer (the count includes deletions).
//!
//! An incremental archive does not rewrite a collection's index: it writes the keys it changed
//! as a delta file over it. [`Layered`] reads a base index and its deltas as one index (the
//! newest entry of a key wins, a deletion hides the key), and the next rewrite folds them into a
//! new base.

use crate::durable::Unsynced;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC_V1: &[u8; 8] = b"TMKIDX01";
const MAGIC_V2: &[u8; 8] = b"TMKIDX02";
const MAGIC: &[u8; 8] = b"TMKIDX03";
const MAGIC_DELTA: &[u8; 8] = b"TMKDLT01";
const END_V1: u32 = u32::MAX;
/// A version 3 block is cut once it holds this many bytes of entries: a lookup decodes one
/// block, and the block index costs about 20 bytes a block.
pub const BLOCK_BYTES: u64 = 512;
/// The tail of a version 3 index: u64 block count, u64 end marker offset, u32 block index
/// CRC32, u32 file CRC32.
const TAIL_V3: u64 = 24;
/// Keys longer than this are refused as damage when read (RocksDB's limit is far above any
/// real key, but a flipped length byte must not allocate gigabytes).
const MAX_KEY: u64 = 1 << 30;

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes the LEB128 varint at `buf[*at..]` and moves `at` past it; `None` (with `at` where
/// it was) if the buffer ends first or it runs past ten bytes (the slow path then decides).
#[inline]
fn varint_at(buf: &[u8], at: &mut usize) -> Option<u64> {
    // Most varints of an index (lengths, shared prefixes) are one byte.
    let b = *buf.get(*at)?;
    if b < 0x80 {
        *at += 1;
        return Some(u64::from(b));
    }
    varint_long(buf, at)
}

/// [`varint_at`] for a varint of two bytes or more.
fn varint_long(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = *buf.get(*at + i)?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *at += i + 1;
            return Some(v);
        }
    }
    None
}

/// Decodes the version 2 (or delta) entry at `buf[*at..]`, whose key shares a prefix with
/// `last`: `last` becomes its key, `at` moves past it, and its record CRC32 and stored value
/// length are returned. `None`, with `at` and `last` as they were, if `buf` ends inside the
/// entry, or the entry is an end marker or cannot follow `last` (the caller decides which).
#[inline(always)]
fn entry_at(buf: &[u8], at: &mut usize, last: &mut Vec<u8>) -> Option<(u32, u64)> {
    let mut i = *at;
    let shared = varint_at(buf, &mut i)?.checked_sub(1)?;
    let suffix = varint_at(buf, &mut i)?;
    if shared > last.len() as u64 || shared + suffix > MAX_KEY {
        return None;
    }
    let key = buf.get(i..i.checked_add(suffix as usize)?)?;
    i += key.len();
    let crc32 = u32::from_le_bytes(buf.get(i..i + 4)?.try_into().expect("4 bytes"));
    i += 4;
    let vlen = varint_at(buf, &mut i)?;
    last.truncate(shared as usize);
    last.extend_from_slice(key);
    *at = i;
    Some((crc32, vlen))
}

/// Passes bytes through to a file, with the CRC32 of the first `limit` of them: the index's
/// checksum is computed over the large blocks the buffers move, not field by field (per-field
/// updates of a few bytes were a tenth of an incremental's time).
struct Crc {
    file: File,
    hasher: crc32fast::Hasher,
    /// Bytes moved so far.
    seen: u64,
    /// Bytes that count towards the CRC32 (a reader stops before the trailer's own CRC32).
    limit: u64,
}

impl Crc {
    fn new(file: File, limit: u64) -> Self {
        Crc {
            file,
            hasher: crc32fast::Hasher::new(),
            seen: 0,
            limit,
        }
    }

    fn hash(&mut self, b: &[u8]) {
        let room = self.limit.saturating_sub(self.seen);
        let take = (b.len() as u64).min(room) as usize;
        self.hasher.update(&b[..take]);
        self.seen += b.len() as u64;
    }
}

impl Read for Crc {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hash(&buf[..n]);
        Ok(n)
    }
}

impl Write for Crc {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The length of the longest common prefix of `a` and `b`, eight bytes at a time.
#[inline(always)]
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            return i + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// What the index knows of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The record's CRC32 (`document::record_crc32`).
    pub crc32: u32,
    /// Its value's length.
    pub len: u64,
}

/// A collection's key changes for its key state (`None` = deleted), gathered in the order they
/// were made: [`KeyChanges::push`] appends, which is cheaper than keeping them sorted as they
/// come (a tree insert per change, on the engine's thread), and [`KeyChanges::into_sorted`]
/// sorts them once, on the thread that writes the key state. Memory stays within about twice
/// the distinct keys changed: once the list doubles, it is sorted and each key's last change
/// kept.
#[derive(Debug, Default)]
pub struct KeyChanges {
    items: Vec<(Vec<u8>, Option<Entry>)>,
    /// The length at which the list is next compacted.
    compact_at: usize,
}

/// A list of key changes shorter than this is never compacted before it is sorted.
const COMPACT_FLOOR: usize = 1 << 16;

impl KeyChanges {
    /// Records `change` of `key`, which replaces any earlier change of it.
    pub fn push(&mut self, key: Vec<u8>, change: Option<Entry>) {
        self.items.push((key, change));
        if self.items.len() >= self.compact_at.max(COMPACT_FLOOR) {
            sort_keeping_last(&mut self.items, |a, b| a.0.cmp(&b.0));
            self.compact_at = 2 * self.items.len();
        }
    }

    /// Whether no change was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The changes in ascending key order, each key's last.
    pub fn into_sorted(mut self) -> SortedChanges {
        sort_keeping_last(&mut self.items, |a, b| a.0.cmp(&b.0));
        SortedChanges(self.items)
    }
}

/// Sorts `items` by their keys, which `by_key` compares (stably: equal keys keep their order),
/// and keeps, of equal keys, the last item given: the key changes of an incremental, and the
/// keys [`IndexBuilder`] buffers.
fn sort_keeping_last<T>(items: &mut Vec<T>, by_key: impl Fn(&T, &T) -> std::cmp::Ordering) {
    items.sort_by(&by_key);
    // `dedup_by` keeps the first of a run: the later item is swapped into its place.
    items.dedup_by(|later, kept| {
        let same = by_key(later, kept).is_eq();
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
}

/// Key changes in ascending key order, each key once (`None` = deleted): what a key state is
/// written from.
#[derive(Debug, Default)]
pub struct SortedChanges(Vec<(Vec<u8>, Option<Entry>)>);

impl SortedChanges {
    /// How many keys changed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no key changed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The changes, in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Option<Entry>)> {
        self.0.iter().map(|(k, c)| (k.as_slice(), *c))
    }
}

impl From<BTreeMap<Vec<u8>, Option<Entry>>> for SortedChanges {
    fn from(changes: BTreeMap<Vec<u8>, Option<Entry>>) -> Self {
        SortedChanges(changes.into_iter().collect())
    }
}

/// Writes an index in ascending key order (aside; renamed into place by [`IndexWriter::finish`]).
pub struct IndexWriter {
    out: BufWriter<Crc>,
    tmp: PathBuf,
    path: PathBuf,
    count: u64,
    last: Option<Vec<u8>>,
    /// The encoding of the current entry (reused).
    scratch: Vec<u8>,
    /// A delta file (value lengths stored plus one, 0 = deleted).
    delta: bool,
    /// Bytes written so far.
    offset: u64,
    /// Version 3 (base indexes): the open block's entries (written, and checksummed in one
    /// pass, when it is closed), and the block index so far.
    block: Vec<u8>,
    blocks: Vec<u8>,
    block_count: u64,
}

impl IndexWriter {
    /// Starts an index that will replace `path`.
    pub fn create(path: &Path) -> Result<Self> {
        Self::start(path, false)
    }

    /// Starts a delta file at `path`: keys changed since the index it lies over, deletions
    /// included ([`IndexWriter::push_change`]).
    pub fn create_delta(path: &Path) -> Result<Self> {
        Self::start(path, true)
    }

    fn start(path: &Path, delta: bool) -> Result<Self> {
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all(dir)?;
        }
        let tmp = crate::durable::temp_path(path);
        let file = crate::durable::create_temp(&tmp)?;
        let mut w = IndexWriter {
            out: BufWriter::with_capacity(1 << 16, Crc::new(file, u64::MAX)),
            tmp,
            path: path.to_path_buf(),
            count: 0,
            last: None,
            scratch: Vec::with_capacity(64),
            delta,
            offset: 0,
            block: Vec::new(),
            blocks: Vec::new(),
            block_count: 0,
        };
        w.write(if delta { MAGIC_DELTA } else { MAGIC })?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.offset += b.len() as u64;
        self.out
            .write_all(b)
            .map_err(|e| Error::io("write", &self.tmp, e))
    }

    /// Version 3: writes the open block (if any) and adds it to the block index.
    fn close_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let mut block = std::mem::take(&mut self.block);
        let written = self.write(&block);
        put_varint(&mut self.blocks, block.len() as u64);
        let crc = crc32fast::hash(&block);
        self.blocks.extend_from_slice(&crc.to_le_bytes());
        block.clear();
        self.block = block;
        written
    }

    /// Appends a key. Returns `Ok(false)`, writing nothing, if it is not greater than the last.
    pub fn push(&mut self, key: &[u8], entry: Entry) -> Result<bool> {
        self.push_change(key, Some(entry))
    }

    /// Appends a key's change (`None`: deleted, only in a delta file). Returns `Ok(false)`,
    /// writing nothing, if the key is not greater than the last.
    pub fn push_change(&mut self, key: &[u8], change: Option<Entry>) -> Result<bool> {
        let (crc32, len) = match (change, self.delta) {
            (Some(e), false) => (e.crc32, e.len),
            (Some(e), true) => (e.crc32, e.len + 1),
            (None, true) => (0, 0),
            (None, false) => {
                return Err(Error::Damaged {
                    path: self.path.clone(),
                    cause: "a deletion cannot be written into a base index".into(),
                })
            }
        };
        let last = self.last.get_or_insert_with(Vec::new);
        let mut shared = common_prefix(last, key);
        // `key` > `last` exactly when it goes on past their common prefix and either `last`
        // ends there or `key`'s next byte is greater (one pass over the bytes, not two).
        let greater = shared < key.len() && (shared == last.len() || key[shared] > last[shared]);
        if self.count > 0 && !greater {
            return Ok(false);
        }
        // A base index starts a block at its first key and after every BLOCK_BYTES: the key
        // is stored whole and goes into the block index.
        if !self.delta && (self.count == 0 || self.block.len() as u64 >= BLOCK_BYTES) {
            self.close_block()?;
            self.block_count += 1;
            put_varint(&mut self.blocks, key.len() as u64);
            self.blocks.extend_from_slice(key);
            shared = 0;
        }
        let last = self.last.get_or_insert_with(Vec::new);
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        put_varint(&mut buf, shared as u64 + 1);
        put_varint(&mut buf, (key.len() - shared) as u64);
        buf.extend_from_slice(&key[shared..]);
        buf.extend_from_slice(&crc32.to_le_bytes());
        put_varint(&mut buf, len);
        last.clear();
        last.extend_from_slice(key);
        let written = if self.delta {
            self.write(&buf)
        } else {
            self.block.extend_from_slice(&buf);
            Ok(())
        };
        self.scratch = buf;
        written?;
        self.count += 1;
        Ok(true)
    }

    /// Closes the index, fsyncs it and renames it into place; returns the number of keys.
    pub fn finish(self) -> Result<u64> {
        commit(self.finish_unsynced()?)
    }

    /// Closes the index and returns the number of keys and the file, whose fsync and rename
    /// are the caller's (see [`durable::Unsynced`](crate::durable::Unsynced)).
    pub fn finish_unsynced(mut self) -> Result<(u64, Unsynced)> {
        let count = self.count;
        if !self.delta {
            self.close_block()?;
        }
        let end = self.offset;
        self.write(&[0])?;
        self.write(&count.to_le_bytes())?;
        if !self.delta {
            let blocks = std::mem::take(&mut self.blocks);
            self.write(&blocks)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[0]);
            crc.update(&count.to_le_bytes());
            crc.update(&blocks);
            self.write(&self.block_count.to_le_bytes())?;
            self.write(&end.to_le_bytes())?;
            self.write(&crc.finalize().to_le_bytes())?;
        }
        self.out
            .flush()
            .map_err(|e| Error::io("write", &self.tmp, e))?;
        let inner = self.out.get_mut();
        let crc = inner.hasher.clone().finalize();
        inner
            .file
            .write_all(&crc.to_le_bytes())
            .map_err(|e| Error::io("write", &self.tmp, e))?;
        let out = self
            .out
            .into_inner()
            .map_err(|e| Error::io("write", &self.tmp, e.into_error()))?;
        let file = Unsynced::new(out.file, self.tmp, self.path);
        // The caller fsyncs it later, beside the archive: its bytes are on their way by then.
        file.start_writeback();
        Ok((count, file))
    }

    /// Abandons the index (removes the partial file).
    pub fn abandon(self) {
        // Best effort: a leftover `.tmp` is ignored by readers and replaced by the next writer.
        crate::durable::remove_temp(&self.tmp);
    }
}

/// Reads an index in order, checking its trailer and CRC32 at the end.
pub struct IndexReader {
    input: BufReader<Crc>,
    path: PathBuf,
    /// The file's length (its last 4 bytes are the CRC32 of all before them).
    len: u64,
    count: u64,
    done: bool,
    /// Version 2's prefix-compressed keys (`false`: version 1).
    compact: bool,
    /// Version 3: a block index and tail follow the key count.
    blocked: bool,
    /// A delta file.
    delta: bool,
    /// The last key read (version 2 keys are stored as a suffix of it).
    last: Vec<u8>,
}

impl IndexReader {
    /// Opens an index.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("read", path, e))?
            .len();
        let mut r = IndexReader {
            input: BufReader::with_capacity(1 << 16, Crc::new(file, len.saturating_sub(4))),
            path: path.to_path_buf(),
            len,
            count: 0,
            done: false,
            compact: true,
            blocked: false,
            delta: false,
            last: Vec::new(),
        };
        let mut magic = [0u8; 8];
        r.read(&mut magic)?;
        if &magic == MAGIC_V1 {
            r.compact = false;
        } else if &magic == MAGIC_DELTA {
            r.delta = true;
        } else if &magic == MAGIC {
            r.blocked = true;
        } else if &magic != MAGIC_V2 {
            return Err(r.damaged("not a tidemark key index"));
        }
        Ok(r)
    }

    fn damaged(&self, cause: &str) -> Error {
        Error::Damaged {
            path: self.path.clone(),
            cause: cause.to_string(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<()> {
        self.input
            .read_exact(buf)
            .map_err(|e| Error::io("read", &self.path, e))
    }

    /// How far into the file the entries read so far reach.
    fn position(&self) -> u64 {
        self.input.get_ref().seen - self.input.buffer().len() as u64
    }

    fn read_u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_varint(&mut self) -> Result<u64> {
        // Fast path: decode straight from the buffer when a whole varint is surely in it.
        let buf = self.input.buffer();
        if buf.len() >= 10 {
            let mut v = 0u64;
            for (i, b) in buf[..10].iter().enumerate() {
                v |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    self.input.consume(i + 1);
                    return Ok(v);
                }
            }
            return Err(self.damaged("varint longer than 64 bits"));
        }
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8; 1];
            self.read(&mut b)?;
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.damaged("varint longer than 64 bits"))
    }

    /// Checks the trailer (key count and CRC32) after the end marker.
    fn check_end(&mut self) -> Result<()> {
        // The end marker was this byte (version 1's four bytes are never blocked).
        let end = self.position() - 1;
        let count = self.read_u64()?;
        if self.blocked {
            // The block index and tail (all but the file's CRC32) are read through the
            // checksum; the tail must name this end marker.
            let rest = self.len.saturating_sub(4 + self.position());
            if rest < TAIL_V3 - 4 {
                return Err(self.damaged("the block index is cut short"));
            }
            let mut tail = vec![0u8; rest as usize];
            self.read(&mut tail)?;
            let at = tail.len() - 12;
            let named = u64::from_le_bytes(tail[at..at + 8].try_into().expect("8 bytes"));
            if named != end {
                return Err(self.damaged("the block index does not name the end marker"));
            }
        }
        // The trailer's CRC32 must be the file's last 4 bytes, right after the count.
        if self.position() + 4 != self.len {
            return Err(self.damaged("the end marker is not at the end of the file"));
        }
        let want = self.input.get_ref().hasher.clone().finalize();
        let mut b = [0u8; 4];
        self.input
            .read_exact(&mut b)
            .map_err(|e| Error::io("read", &self.path, e))?;
        if u32::from_le_bytes(b) != want || count != self.count {
            return Err(self.damaged("CRC32 or key count does not match"));
        }
        self.done = true;
        Ok(())
    }

    /// The next key, or `None` at the (checked) end.
    pub fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        Ok(self.advance()?.map(|e| (self.last.clone(), e)))
    }

    /// Moves to the next key, which [`IndexReader::key`] then shows, and returns its entry;
    /// `None` at the (checked) end. Allocates nothing per key. A deletion (in a delta file)
    /// is damage here: deltas are read through [`Layered`].
    pub fn advance(&mut self) -> Result<Option<Entry>> {
        match self.advance_change()? {
            None => Ok(None),
            Some(Some(e)) => Ok(Some(e)),
            Some(None) => Err(self.damaged("a deletion where a base index was expected")),
        }
    }

    /// Whether this is a delta file.
    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// Like [`IndexReader::advance`], for delta files too: `Some(None)` is a deleted key.
    pub fn advance_change(&mut self) -> Result<Option<Option<Entry>>> {
        if self.done {
            return Ok(None);
        }
        if !self.compact {
            let len = self.read_u32()?;
            if len == END_V1 {
                self.check_end()?;
                return Ok(None);
            }
            if u64::from(len) > MAX_KEY {
                return Err(self.damaged("impossible key length"));
            }
            let mut key = std::mem::take(&mut self.last);
            key.resize(len as usize, 0);
            let read = self.read(&mut key);
            self.last = key;
            read?;
            let crc32 = self.read_u32()?;
            let vlen = self.read_u64()?;
            self.count += 1;
            return Ok(Some(Some(Entry { crc32, len: vlen })));
        }
        // Fast path: the whole entry is in the read buffer (all but the last few of each
        // 64 KiB): decode it from there, copying the suffix once.
        let mut at = 0;
        if let Some((crc32, vlen)) = entry_at(self.input.buffer(), &mut at, &mut self.last) {
            self.input.consume(at);
            self.count += 1;
            return self.entry(crc32, vlen);
        }
        let shared = self.read_varint()?;
        if shared == 0 {
            self.check_end()?;
            return Ok(None);
        }
        let shared = shared - 1;
        let suffix = self.read_varint()?;
        if shared > self.last.len() as u64 || shared + suffix > MAX_KEY {
            return Err(self.damaged("impossible key length"));
        }
        // The key is the previous key's first `shared` bytes and the suffix: read in place.
        let mut key = std::mem::take(&mut self.last);
        key.truncate(shared as usize);
        key.resize((shared + suffix) as usize, 0);
        let read = self.read(&mut key[shared as usize..]);
        self.last = key;
        read?;
        let crc32 = self.read_u32()?;
        let vlen = self.read_varint()?;
        self.count += 1;
        self.entry(crc32, vlen)
    }

    /// The entry of a version 2 or delta key, from its stored CRC32 and value length.
    fn entry(&self, crc32: u32, vlen: u64) -> Result<Option<Option<Entry>>> {
        if !self.delta {
            return Ok(Some(Some(Entry { crc32, len: vlen })));
        }
        match vlen.checked_sub(1) {
            Some(len) => Ok(Some(Some(Entry { crc32, len }))),
            None if crc32 == 0 => Ok(Some(None)),
            None => Err(self.damaged("a deletion with a CRC32")),
        }
    }

    /// The key [`IndexReader::advance`] moved to.
    pub fn key(&self) -> &[u8] {
        &self.last
    }
}

/// The files of a collection's key state: a base index and the delta files written over it
/// since, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFiles {
    /// The base index.
    pub base: PathBuf,
    /// The deltas over it, oldest first.
    pub deltas: Vec<PathBuf>,
}

impl StateFiles {
    /// A base index alone.
    pub fn base(path: &Path) -> Self {
        StateFiles {
            base: path.to_path_buf(),
            deltas: Vec::new(),
        }
    }

    /// Whether every file is there.
    pub fn exist(&self) -> bool {
        self.base.is_file() && self.deltas.iter().all(|d| d.is_file())
    }
}

/// The most delta files over one base: the change after them rewrites the base.
pub const MAX_DELTAS: usize = 8;

/// Whether the next change to `state` is written as a delta file ([`write_delta`]) rather than
/// as a new base ([`apply_changes`]): while it has fewer than [`MAX_DELTAS`] deltas and their
/// bytes stay under a quarter of the base's. Reading the deltas costs every later run, so they
/// are folded into a new base before they grow; a missing file answers `false`.
pub fn takes_delta(state: &StateFiles) -> bool {
    if state.deltas.len() >= MAX_DELTAS {
        return false;
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    let Some(base) = size(&state.base) else {
        return false;
    };
    let mut deltas = 0u64;
    for d in &state.deltas {
        match size(d) {
            Some(n) => deltas += n,
            None => return false,
        }
    }
    deltas <= base / 4
}

/// Reads a base index and its deltas as one index, in ascending key order: of the entries for
/// a key, the newest file's wins, and a deletion hides the key. Every file's CRC32 is checked
/// when it has been read to its end.
///
/// The first file (the base, most of the keys) is compared with the smallest key of the
/// others, which is sought again only when one of them moves: a key of the base alone costs
/// one comparison, however many deltas there are. Readers move lazily, when the next key is
/// asked for, so the key shown is the reader's own and is never copied. (Comparing every
/// file's key at every step, and copying the key, made the fold of eight deltas into a base of
/// 250,000 keys take 50 ms.)
pub struct Layered {
    /// The base first, then the deltas, oldest first.
    readers: Vec<IndexReader>,
    /// Each reader's current entry (`Some(None)`: a deletion); `None` once it is exhausted.
    current: Vec<Option<Option<Entry>>>,
    /// Of the readers after the first, the one with the smallest current key (the newest of
    /// equal keys), if any is left.
    rest_min: Option<usize>,
    /// The reader whose key was returned last ([`Layered::key`]).
    shown: usize,
    /// The readers at the key returned last, which move before the next key is sought.
    at_key: Vec<usize>,
}

impl Layered {
    /// Opens a key state.
    pub fn open(state: &StateFiles) -> Result<Self> {
        let files = std::iter::once(&state.base).chain(&state.deltas);
        Self::of(files, true)
    }

    /// Opens delta files alone (oldest first), to be read with [`Layered::advance_change`].
    fn deltas(paths: &[PathBuf]) -> Result<Self> {
        Self::of(paths.iter(), false)
    }

    /// Opens `files`: a base index first when `base`, delta files otherwise.
    fn of<'a>(files: impl Iterator<Item = &'a PathBuf>, base: bool) -> Result<Self> {
        let mut readers = Vec::new();
        for (i, path) in files.enumerate() {
            let r = IndexReader::open(path)?;
            if r.is_delta() == (base && i == 0) {
                let what = if base && i == 0 {
                    "a delta file where a base index was expected"
                } else {
                    "a base index where a delta file was expected"
                };
                return Err(r.damaged(what));
            }
            readers.push(r);
        }
        let mut layered = Layered {
            current: Vec::with_capacity(readers.len()),
            readers,
            rest_min: None,
            shown: 0,
            at_key: Vec::new(),
        };
        if layered.readers.len() > 1 {
            for r in layered.readers.iter_mut() {
                layered.current.push(r.advance_change()?);
            }
            layered.seek_rest_min();
        }
        Ok(layered)
    }

    /// Moves to the next key present in the state, which [`Layered::key`] then shows, and
    /// returns its entry; `None` at the (checked) end of every file.
    pub fn advance(&mut self) -> Result<Option<Entry>> {
        if let [only] = &mut self.readers[..] {
            return only.advance();
        }
        loop {
            match self.advance_change()? {
                None => return Ok(None),
                Some(Some(e)) => return Ok(Some(e)),
                Some(None) => {}
            }
        }
    }

    /// Finds [`Layered::rest_min`] among the readers after the first.
    fn seek_rest_min(&mut self) {
        let mut best: Option<usize> = None;
        for i in 1..self.readers.len() {
            if self.current[i].is_none() {
                continue;
            }
            best = match best {
                Some(b) if self.readers[i].key() > self.readers[b].key() => Some(b),
                _ => Some(i),
            };
        }
        self.rest_min = best;
    }

    /// Like [`Layered::advance`], but a key whose newest entry is a deletion is returned too,
    /// as `Some(None)`.
    fn advance_change(&mut self) -> Result<Option<Option<Entry>>> {
        match self.readers.len() {
            0 => return Ok(None), // no deltas
            1 => return self.readers[0].advance_change(),
            _ => {}
        }
        // The readers at the key returned last move on.
        let mut rest_moved = false;
        for &i in &self.at_key {
            self.current[i] = self.readers[i].advance_change()?;
            rest_moved |= i > 0;
        }
        self.at_key.clear();
        if rest_moved {
            self.seek_rest_min();
        }
        let first = self.current[0].is_some();
        let order = match (first, self.rest_min) {
            (false, None) => return Ok(None),
            (true, None) => std::cmp::Ordering::Less,
            (false, Some(_)) => std::cmp::Ordering::Greater,
            (true, Some(m)) => self.readers[0].key().cmp(self.readers[m].key()),
        };
        if order == std::cmp::Ordering::Less {
            // A key of the first file alone: the common case.
            self.shown = 0;
            self.at_key.push(0);
            return Ok(self.current[0]);
        }
        let m = self.rest_min.expect("some reader after the first is left");
        // The newest file's entry wins; every reader at the key moves on next time.
        self.shown = m;
        if order == std::cmp::Ordering::Equal {
            self.at_key.push(0);
        }
        for i in 1..self.readers.len() {
            if self.current[i].is_some() && self.readers[i].key() == self.readers[m].key() {
                self.at_key.push(i);
            }
        }
        Ok(self.current[m])
    }

    /// The key [`Layered::advance`] moved to.
    pub fn key(&self) -> &[u8] {
        self.readers.get(self.shown).map_or(&[], IndexReader::key)
    }

    /// The next key and its entry, or `None` at the (checked) end.
    pub fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        Ok(self.advance()?.map(|e| (self.key().to_vec(), e)))
    }
}

/// Makes a key state file written by this module durable and puts it in place (the
/// directory's fsync is the caller's); returns its key count.
pub fn commit((count, file): (u64, Unsynced)) -> Result<u64> {
    crate::durable::commit_all(vec![file])?;
    Ok(count)
}

/// Writes `changes` (`None` = deleted) as a delta file at `path` over the key state `old`,
/// which holds `held` keys (the count recorded with it), and returns how many keys the state
/// holds with it, and the file, whose fsync and rename are the caller's (see
/// [`Unsynced`]); the deletion of a key it does not hold is left out.
///
/// Over a version 3 base, only the blocks that hold changed keys are read (each checked
/// against its CRC32, as is the block index), and the deltas are read through. Over an older
/// base, the whole state is read through, which counts its keys and checks every CRC32.
pub fn write_delta(
    old: &StateFiles,
    path: &Path,
    changes: &SortedChanges,
    held: u64,
) -> Result<(u64, Unsynced)> {
    let Some(mut base) = BlockIndex::open(&old.base, changes.len())? else {
        return write_delta_through(old, path, changes);
    };
    // No deltas read as an empty state.
    let mut deltas = Layered::deltas(&old.deltas)?;
    let mut current = deltas.advance_change()?;
    let mut w = IndexWriter::create_delta(path)?;
    let mut count = held;
    for (key, change) in changes.iter() {
        while current.is_some() && deltas.key() < key {
            current = deltas.advance_change()?;
        }
        let had = match current {
            Some(entry) if deltas.key() == key => entry.is_some(),
            _ => base.contains(key)?,
        };
        count = match (change, had) {
            (Some(_), false) => count + 1,
            (None, false) => continue,
            (None, true) => count.checked_sub(1).ok_or_else(|| Error::Damaged {
                path: old.base.clone(),
                cause: format!("the key state holds more keys than the {held} recorded"),
            })?,
            (Some(_), true) => count,
        };
        w.push_change(key, change)?;
    }
    // The deltas are read to their ends, which checks their CRC32s.
    while current.is_some() {
        current = deltas.advance_change()?;
    }
    let (_, file) = w.finish_unsynced()?;
    Ok((count, file))
}

/// [`write_delta`] over a base written before version 3: the state is read through.
fn write_delta_through(
    old: &StateFiles,
    path: &Path,
    changes: &SortedChanges,
) -> Result<(u64, Unsynced)> {
    let mut state = Layered::open(old)?;
    let mut w = IndexWriter::create_delta(path)?;
    let mut count = 0u64;
    let mut current = state.advance()?;
    for (key, change) in changes.iter() {
        while current.is_some() && state.key() < key {
            count += 1;
            current = state.advance()?;
        }
        let held = current.is_some() && state.key() == key;
        if held {
            current = state.advance()?;
        }
        match change {
            Some(_) => count += 1,
            None if !held => continue,
            None => {}
        }
        w.push_change(key, change)?;
    }
    while current.is_some() {
        count += 1;
        current = state.advance()?;
    }
    let (_, file) = w.finish_unsynced()?;
    Ok((count, file))
}

/// A version 3 base index opened by its block index, for lookups: [`BlockIndex::contains`]
/// reads and checks one block at a time and decodes it only as far as the key asked, and keys
/// must be asked in ascending order to read each block once.
struct BlockIndex {
    file: File,
    path: PathBuf,
    /// Each block's first key, end to end; `first_ends[i]` is where block `i`'s ends.
    first_keys: Vec<u8>,
    first_ends: Vec<usize>,
    /// Each block's offset, length and CRC32.
    blocks: Vec<(u64, u64, u32)>,
    /// Where the blocks end (the end marker's offset).
    end: u64,
    /// Bytes to read at a time: a block, or more when the lookups are dense enough that the
    /// blocks after it are likely to be asked for (one read instead of one per block).
    readahead: usize,
    /// The file's bytes from `window_at`, as last read.
    window: Vec<u8>,
    window_at: u64,
    /// The block being read (checked against its CRC32), the end of its bytes in `window`, the
    /// cursor (the entry after `key`) and the key last decoded.
    loaded: Option<usize>,
    block_end: usize,
    at: usize,
    key: Vec<u8>,
}

/// Bytes a [`BlockIndex`] reads at a time when lookups are dense.
const READAHEAD: usize = 64 << 10;

impl BlockIndex {
    /// Opens `path` by its block index, checked against its CRC32, for `lookups` keys; `None`
    /// if it is not a version 3 base index.
    fn open(path: &Path, lookups: usize) -> Result<Option<Self>> {
        let damaged = |cause: &str| Error::Damaged {
            path: path.to_path_buf(),
            cause: cause.to_string(),
        };
        let io = |e| Error::io("read", path, e);
        let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let len = file.metadata().map_err(io)?.len();
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Ok(None);
        }
        if len < 8 + 9 + TAIL_V3 {
            return Err(damaged("shorter than an empty index"));
        }
        let mut tail = [0u8; TAIL_V3 as usize];
        read_at(&file, len - TAIL_V3, &mut tail).map_err(io)?;
        let word = |at: usize| u64::from_le_bytes(tail[at..at + 8].try_into().expect("8 bytes"));
        let (block_count, end) = (word(0), word(8));
        let want = u32::from_le_bytes(tail[16..20].try_into().expect("4 bytes"));
        if end < 8 || end + 9 > len - TAIL_V3 {
            return Err(damaged("the tail names no end marker"));
        }
        let mut index = vec![0u8; (len - TAIL_V3 - end) as usize];
        read_at(&file, end, &mut index).map_err(io)?;
        if crc32fast::hash(&index) != want || index[0] != 0 {
            return Err(damaged("the block index does not match its CRC32"));
        }
        let mut at = 9;
        // Sized once: a fresh allocation grown by doubling faulted its pages in again and again.
        let blocks_hint = block_count.min(index.len() as u64) as usize;
        let mut first_keys = Vec::with_capacity(index.len());
        let mut first_ends = Vec::with_capacity(blocks_hint);
        let mut blocks = Vec::with_capacity(blocks_hint);
        let mut offset = 8u64;
        while at < index.len() {
            let k = varint_at(&index, &mut at).ok_or_else(|| damaged("a cut block entry"))?;
            let key = index
                .get(at..at.saturating_add(k as usize))
                .ok_or_else(|| damaged("a cut block key"))?;
            first_keys.extend_from_slice(key);
            first_ends.push(first_keys.len());
            at += k as usize;
            let n = varint_at(&index, &mut at).ok_or_else(|| damaged("a cut block entry"))?;
            let crc = index
                .get(at..at + 4)
                .ok_or_else(|| damaged("a cut block entry"))?;
            blocks.push((
                offset,
                n,
                u32::from_le_bytes(crc.try_into().expect("4 bytes")),
            ));
            at += 4;
            offset = offset.saturating_add(n);
        }
        if blocks.len() as u64 != block_count || offset != end {
            return Err(damaged("the blocks do not add up to the index"));
        }
        // Read ahead when at least one block in 16 is expected to be asked for, so that a
        // window serves several; sparse lookups read their blocks alone.
        let readahead = if lookups.saturating_mul(16) >= blocks.len() {
            READAHEAD
        } else {
            0
        };
        Ok(Some(BlockIndex {
            file,
            path: path.to_path_buf(),
            first_keys,
            first_ends,
            blocks,
            end,
            readahead,
            window: Vec::new(),
            window_at: 0,
            loaded: None,
            block_end: 0,
            at: 0,
            key: Vec::new(),
        }))
    }

    fn damaged(&self, cause: &str) -> Error {
        Error::Damaged {
            path: self.path.clone(),
            cause: cause.to_string(),
        }
    }

    /// Whether the index holds `key`.
    fn contains(&mut self, key: &[u8]) -> Result<bool> {
        // The last block whose first key is not above `key`: searched forward from the block
        // the cursor is in when `key` lies after it (keys asked in order, most often in the
        // same block or the next few), else among all blocks.
        let found = match self.loaded {
            Some(at) if self.key.as_slice() <= key => Some(self.forward(at, key)),
            _ => last_not_above(&self.first_keys, &self.first_ends, key),
        };
        let Some(i) = found else {
            return Ok(false);
        };
        // A key below the cursor (asked out of order) starts the block again.
        if self.loaded != Some(i) || key < self.key.as_slice() {
            self.load(i)?;
        }
        // The keys are compared by their prefixes: while the cursor's key is below `key` and
        // shares `common` bytes with it, an entry that shares more with the cursor's key is
        // below `key` too, and one that shares less is above it; only an entry that shares
        // exactly `common` bytes needs its bytes compared.
        let mut common = common_prefix(&self.key, key);
        loop {
            if common == key.len() && common == self.key.len() {
                return Ok(true);
            }
            if common < self.key.len() && (common == key.len() || self.key[common] > key[common]) {
                return Ok(false); // the cursor's key is above `key`
            }
            let Some(shared) = self.next_shared() else {
                return Ok(false); // the end of the block
            };
            if shared < common {
                return Ok(false); // the next key is above `key`
            }
            if !self.next_key()? {
                return Ok(false);
            }
            if shared == common {
                common += common_prefix(&self.key[common..], &key[common..]);
            }
        }
    }

    /// The prefix the entry at the cursor shares with the cursor's key; `None` at the end of
    /// the block (a cut entry is left to [`BlockIndex::next_key`] to report).
    #[inline(always)]
    fn next_shared(&self) -> Option<usize> {
        if self.at == self.block_end {
            return None;
        }
        let mut at = self.at;
        match varint_at(&self.window[..self.block_end], &mut at) {
            Some(v) => Some(v.saturating_sub(1) as usize),
            None => Some(usize::MAX),
        }
    }

    /// The last block at or after `from` whose first key is not above `key` (block `from`'s is
    /// not): steps of 1, 2, 4 … blocks find a block whose first key is above it, and a binary
    /// search the block before that.
    fn forward(&self, from: usize, key: &[u8]) -> usize {
        let (keys, ends) = (&self.first_keys, &self.first_ends);
        // Block `lo`'s first key is not above `key`; from `hi` on, all are (or there are none).
        let (mut lo, mut step) = (from, 1);
        let hi = loop {
            let probe = lo + step;
            if probe >= ends.len() {
                break ends.len();
            }
            if nth_key(keys, ends, probe) > key {
                break probe;
            }
            lo = probe;
            step *= 2;
        };
        first_above(keys, ends, key, lo + 1, hi) - 1
    }

    /// Reads block `i` (from the window, or into a new one), checks its CRC32 and decodes its
    /// first key, which must be the one the block index gives.
    fn load(&mut self, i: usize) -> Result<()> {
        self.loaded = None;
        let (offset, len, crc) = self.blocks[i];
        let window_end = self.window_at + self.window.len() as u64;
        if offset < self.window_at || offset + len > window_end {
            let want = (len as usize).max(self.readahead);
            let want = want.min((self.end - offset) as usize);
            self.window.resize(want, 0);
            self.window_at = offset;
            read_at(&self.file, offset, &mut self.window)
                .map_err(|e| Error::io("read", &self.path, e))?;
        }
        let from = (offset - self.window_at) as usize;
        self.block_end = from + len as usize;
        if crc32fast::hash(&self.window[from..self.block_end]) != crc {
            return Err(self.damaged("a block does not match its CRC32"));
        }
        self.at = from;
        self.key.clear();
        if !self.next_key()? || self.key != nth_key(&self.first_keys, &self.first_ends, i) {
            return Err(self.damaged("a block does not match the block index"));
        }
        self.loaded = Some(i);
        Ok(())
    }

    /// Decodes the entry at the cursor into `key`; `false` at the end of the block.
    #[inline(always)]
    fn next_key(&mut self) -> Result<bool> {
        if self.at == self.block_end {
            return Ok(false);
        }
        // A block's first entry is stored whole (`key` is empty before it); later ones share
        // a prefix of the key before.
        if entry_at(&self.window[..self.block_end], &mut self.at, &mut self.key).is_none() {
            return Err(self.damaged(
                "a block holds a cut entry, or a key that does not follow its previous key",
            ));
        }
        Ok(true)
    }
}

/// Key `n` of keys stored end to end in `keys`, key `i` ending at `ends[i]`.
fn nth_key<'a>(keys: &'a [u8], ends: &[usize], n: usize) -> &'a [u8] {
    let from = if n == 0 { 0 } else { ends[n - 1] };
    &keys[from..ends[n]]
}

/// The last of the ascending keys stored as for [`nth_key`] that is not above `key`, if any.
fn last_not_above(keys: &[u8], ends: &[usize], key: &[u8]) -> Option<usize> {
    first_above(keys, ends, key, 0, ends.len()).checked_sub(1)
}

/// The first of the keys `lo..hi` (stored as for [`nth_key`], ascending) that is above `key`,
/// or `hi`: a binary search.
fn first_above(keys: &[u8], ends: &[usize], key: &[u8], mut lo: usize, mut hi: usize) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if nth_key(keys, ends, mid) <= key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Reads exactly `buf.len()` bytes of `file` from `offset` (one `pread`, no seek).
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Writes `path` anew as a base index: the old key state (if any) with `changes` applied
/// (`None` = deleted); returns the number of keys it holds and the file, whose fsync and rename
/// are the caller's (see [`Unsynced`]).
pub fn apply_changes(
    old: Option<&StateFiles>,
    path: &Path,
    changes: &SortedChanges,
) -> Result<(u64, Unsynced)> {
    let (written, _, file) = merge_state(old, path, changes)?;
    Ok((written, file))
}

/// [`apply_changes`] over a key state recorded as holding `held` keys: a state that holds
/// another number is damage. Deltas are counted from the recorded count ([`write_delta`]);
/// folding them reads every key and checks that count, so a count that went wrong is found
/// within [`MAX_DELTAS`] incrementals.
pub fn fold_changes(
    old: &StateFiles,
    path: &Path,
    changes: &SortedChanges,
    held: u64,
) -> Result<(u64, Unsynced)> {
    let (written, read, file) = merge_state(Some(old), path, changes)?;
    if read != held {
        return Err(Error::Damaged {
            path: old.base.clone(),
            cause: format!("the key state holds {read} keys, but {held} were recorded"),
        });
    }
    Ok((written, file))
}

/// [`merge_into`] of a key state (if any) and `changes`.
fn merge_state(
    old: Option<&StateFiles>,
    path: &Path,
    changes: &SortedChanges,
) -> Result<(u64, u64, Unsynced)> {
    let reader = old.map(Layered::open).transpose()?;
    merge_into(reader, path, changes.iter())
}

/// Writes `path` anew as the old index (if any) merged with `changes`: keys in ascending order,
/// each once, an entry replacing the old key's and `None` deleting it. Returns the keys written,
/// the keys the old index held, and the file to commit.
fn merge_into<'a>(
    mut reader: Option<Layered>,
    path: &Path,
    changes: impl Iterator<Item = (&'a [u8], Option<Entry>)>,
) -> Result<(u64, u64, Unsynced)> {
    let mut writer = IndexWriter::create(path)?;
    let mut pending = changes.peekable();
    // The reader's current key is `reader.key()` while `current` holds its entry.
    let mut current = match reader.as_mut() {
        Some(r) => r.advance()?,
        None => None,
    };
    let mut read = u64::from(current.is_some());
    loop {
        let take_change = match (current.is_some(), pending.peek()) {
            (false, None) => break,
            (false, Some(_)) => true,
            (true, None) => false,
            (true, Some((ck, _))) => {
                let r = reader.as_ref().expect("current came from it");
                *ck <= r.key()
            }
        };
        if take_change {
            let (ck, change) = pending.next().expect("peeked");
            if current.is_some() {
                let r = reader.as_mut().expect("current came from it");
                if r.key() == ck {
                    current = r.advance()?;
                    read += u64::from(current.is_some());
                }
            }
            if let Some(entry) = change {
                writer.push(ck, entry)?;
            }
        } else {
            let r = reader.as_mut().expect("current came from it");
            let e = current.take().expect("checked");
            writer.push(r.key(), e)?;
            current = r.advance()?;
            read += u64::from(current.is_some());
        }
    }
    let (written, file) = writer.finish_unsynced()?;
    Ok((written, read, file))
}

/// Builds an index from keys in any order in bounded memory: keys that arrive in ascending
/// order go straight to a sorted run on disk; once one arrives out of order, keys are gathered
/// in memory up to `budget` bytes, sorted and spilled as further runs; [`IndexBuilder::finish`]
/// merges the runs (a key given twice keeps its last entry). A store that scans in key order
/// costs one sequential write; any other store, an external sort.
pub struct IndexBuilder {
    path: PathBuf,
    budget: usize,
    direct: Option<IndexWriter>,
    /// The buffered keys' bytes, one after another (no allocation per key).
    arena: Vec<u8>,
    /// Each buffered key's place in `arena` and its entry, in the order given.
    items: Vec<(usize, usize, Entry)>,
    runs: Vec<PathBuf>,
}

/// Memory per buffered key beyond its bytes (its place in the arena and its entry).
const KEY_OVERHEAD: usize = std::mem::size_of::<(usize, usize, Entry)>();

impl IndexBuilder {
    /// Starts an index that will replace `path`, buffering at most `budget` bytes of keys.
    pub fn create(path: &Path, budget: usize) -> Result<Self> {
        let first = Self::run_path(path, 0);
        // Runs are temporary files too: an interrupted run removes them (durable::track_temp).
        crate::durable::track_temp(&first);
        Ok(IndexBuilder {
            path: path.to_path_buf(),
            budget: budget.max(1 << 16),
            direct: Some(IndexWriter::create(&first)?),
            arena: Vec::new(),
            items: Vec::new(),
            runs: vec![first],
        })
    }

    fn run_path(path: &Path, n: usize) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".run{n}"));
        PathBuf::from(name)
    }

    /// Adds a key (in any order).
    pub fn push(&mut self, key: &[u8], entry: Entry) -> Result<()> {
        if let Some(w) = self.direct.as_mut() {
            if w.push(key, entry)? {
                return Ok(());
            }
            self.direct.take().expect("checked").finish()?;
        }
        self.items.push((self.arena.len(), key.len(), entry));
        self.arena.extend_from_slice(key);
        if self.arena.len() + self.items.len() * KEY_OVERHEAD >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Sorts the buffered keys (stable: equal keys keep their order) and gives them in order,
    /// each once with its last entry; the buffer is empty afterwards.
    fn sorted(&mut self) -> (Vec<u8>, Vec<(usize, usize, Entry)>) {
        let arena = std::mem::take(&mut self.arena);
        let mut items = std::mem::take(&mut self.items);
        let key = |&(at, len, _): &(usize, usize, Entry)| &arena[at..at + len];
        sort_keeping_last(&mut items, |a, b| key(a).cmp(key(b)));
        (arena, items)
    }

    /// Sorts the buffer and writes it as a run (the last of equal keys wins).
    fn spill(&mut self) -> Result<()> {
        let (arena, items) = self.sorted();
        let path = Self::run_path(&self.path, self.runs.len());
        crate::durable::track_temp(&path);
        let mut w = IndexWriter::create(&path)?;
        for &(at, len, e) in &items {
            w.push(&arena[at..at + len], e)?;
        }
        w.finish()?;
        self.runs.push(path);
        Ok(())
    }

    /// Writes the index; returns the number of keys.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(w) = self.direct.take() {
            let n = w.finish()?;
            if self.items.is_empty() && self.runs.len() == 1 {
                crate::durable::rename(&self.runs[0], &self.path)?;
                self.runs.clear();
                return Ok(n);
            }
        }
        if self.runs.len() > 1 && !self.items.is_empty() {
            self.spill()?;
        }
        let runs = std::mem::take(&mut self.runs);
        let result = if runs.len() == 1 {
            // Nothing was spilled: the keys still in memory merge straight with the keys that
            // came in order, without a run written and read back.
            let (arena, items) = self.sorted();
            let first = Layered::open(&StateFiles::base(&runs[0]))?;
            merge_into(
                Some(first),
                &self.path,
                items
                    .iter()
                    .map(|&(at, len, e)| (&arena[at..at + len], Some(e))),
            )
            .and_then(|(written, _, file)| commit((written, file)))
        } else {
            merge_runs(&runs, &self.path)
        };
        for r in &runs {
            crate::durable::remove_temp(r);
        }
        result
    }
}

impl Drop for IndexBuilder {
    fn drop(&mut self) {
        if let Some(w) = self.direct.take() {
            w.abandon();
        }
        for r in &self.runs {
            crate::durable::remove_temp(r);
        }
    }
}

/// Merges sorted runs into one index at `path`; for a key in several runs, the latest run's
/// entry wins.
fn merge_runs(runs: &[PathBuf], path: &Path) -> Result<u64> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut readers = runs
        .iter()
        .map(|p| IndexReader::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some((k, e)) = r.next_entry()? {
            heap.push(Reverse((k, Reverse(i), e.crc32, e.len)));
        }
    }
    let mut w = IndexWriter::create(path)?;
    let mut last: Option<Vec<u8>> = None;
    while let Some(Reverse((k, Reverse(i), crc32, len))) = heap.pop() {
        if let Some((nk, ne)) = readers[i].next_entry()? {
            heap.push(Reverse((nk, Reverse(i), ne.crc32, ne.len)));
        }
        // Equal keys pop latest run first (Reverse(i)): the first one wins.
        if last.as_deref() == Some(k.as_slice()) {
            continue;
        }
        w.push(&k, Entry { crc32, len })?;
        last = Some(k);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits a key state file written by the functions under test; its key count.
    fn committed(written: Result<(u64, Unsynced)>) -> Result<u64> {
        written.and_then(commit)
    }

    fn e(n: u32) -> Entry {
        Entry {
            crc32: n,
            len: n as u64,
        }
    }

    /// Writes a base index of `entries` (keys ascending, each entry `e(n)`) at `p`.
    fn write_base<K: AsRef<[u8]>>(p: &Path, entries: impl IntoIterator<Item = (K, u32)>) {
        let mut w = IndexWriter::create(p).expect("create");
        for (k, n) in entries {
            assert!(w.push(k.as_ref(), e(n)).expect("push"), "keys ascending");
        }
        w.finish().expect("finish");
    }

    /// Writes a version 2 base index of `entries` at `p`, as tidemark wrote them before
    /// version 3 (every key whole: `shared` 0 is valid version 2).
    fn write_v2<K: AsRef<[u8]>>(p: &Path, entries: impl IntoIterator<Item = (K, u32)>) {
        let mut bytes = b"TMKIDX02".to_vec();
        let mut n = 0u64;
        for (k, crc) in entries {
            let k = k.as_ref();
            put_varint(&mut bytes, 1);
            put_varint(&mut bytes, k.len() as u64);
            bytes.extend_from_slice(k);
            bytes.extend_from_slice(&crc.to_le_bytes());
            put_varint(&mut bytes, u64::from(crc));
            n += 1;
        }
        bytes.push(0);
        bytes.extend_from_slice(&n.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(p, bytes).expect("write");
    }

    fn read_all(p: &Path) -> Vec<(Vec<u8>, Entry)> {
        let mut r = IndexReader::open(p).expect("open");
        let mut out = Vec::new();
        while let Some(x) = r.next_entry().expect("entry") {
            out.push(x);
        }
        out
    }

    #[test]
    fn changes_merge_into_an_index() {
        let d = tempfile::tempdir().expect("tmp");
        let a = d.path().join("a.idx");
        let mut w = IndexWriter::create(&a).expect("create");
        for (k, n) in [(&b"b"[..], 1), (b"d", 2), (b"f", 3)] {
            assert!(w.push(k, e(n)).expect("push"));
        }
        assert!(
            !w.push(b"a", e(9)).expect("push"),
            "out of order is refused"
        );
        w.finish().expect("finish");
        let changes: BTreeMap<Vec<u8>, Option<Entry>> = [
            (b"a".to_vec(), Some(e(10))),
            (b"d".to_vec(), None),
            (b"f".to_vec(), Some(e(30))),
            (b"g".to_vec(), Some(e(40))),
        ]
        .into_iter()
        .collect();
        let b = d.path().join("b.idx");
        assert_eq!(
            committed(apply_changes(
                Some(&StateFiles::base(&a)),
                &b,
                &SortedChanges::from(changes.clone())
            ))
            .expect("apply"),
            4
        );
        let got: Vec<(Vec<u8>, u32)> = read_all(&b)
            .into_iter()
            .map(|(k, e)| (k, e.crc32))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), 10),
                (b"b".to_vec(), 1),
                (b"f".to_vec(), 30),
                (b"g".to_vec(), 40)
            ]
        );
        // One flipped byte is caught at the end.
        let mut bytes = std::fs::read(&b).expect("read");
        bytes[10] ^= 1;
        std::fs::write(&b, bytes).expect("write");
        let mut r = IndexReader::open(&b).expect("open");
        let mut err = None;
        loop {
            match r.next_entry() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(x) => {
                    err = Some(x);
                    break;
                }
            }
        }
        assert!(err.is_some(), "damage detected");
    }

    /// Keys in any order, with repeats, through spills: the index holds each key once, in
    /// order, with its last entry, whatever the budget.
    #[test]
    fn the_builder_sorts_in_bounded_memory() {
        let d = tempfile::tempdir().expect("tmp");
        for (budget, n) in [(1 << 16, 5000u32), (1 << 30, 5000), (1 << 16, 10)] {
            let p = d.path().join(format!("x{budget}-{n}.idx"));
            let mut b = IndexBuilder::create(&p, budget).expect("create");
            let mut want = BTreeMap::new();
            // Ascending first (the direct run), then scrambled with repeats.
            for i in 0..n / 2 {
                let k = format!("k{i:06}").into_bytes();
                b.push(&k, e(i)).expect("push");
                want.insert(k, i);
            }
            for j in 0..n {
                let i = (j * 7919) % n;
                let k = format!("k{i:06}").into_bytes();
                b.push(&k, e(j + 100_000)).expect("push");
                want.insert(k, j + 100_000);
            }
            assert_eq!(b.finish().expect("finish"), want.len() as u64);
            let got: BTreeMap<Vec<u8>, u32> = read_all(&p)
                .into_iter()
                .map(|(k, e)| (k, e.crc32))
                .collect();
            assert_eq!(got, want);
            let left: Vec<_> = std::fs::read_dir(d.path())
                .expect("dir")
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().contains(".run"))
                .collect();
            assert!(left.is_empty(), "runs removed");
        }
    }

    /// A key given several times out of order keeps its last entry, whether the repeats meet
    /// in memory (a large budget) or in different runs (a small one).
    #[test]
    fn the_builder_keeps_the_last_of_repeated_keys() {
        let d = tempfile::tempdir().expect("tmp");
        for budget in [1 << 16, 1 << 30] {
            let p = d.path().join(format!("r{budget}.idx"));
            let mut b = IndexBuilder::create(&p, budget).expect("create");
            let mut want = BTreeMap::new();
            for round in 0..3u32 {
                for j in 0..3000u32 {
                    let i = (j * 7919 + round * 13) % 3000;
                    if round > 0 && i % (round + 1) != 0 {
                        continue; // later rounds repeat some keys only
                    }
                    let k = format!("k{i:05}").into_bytes();
                    let n = round * 10_000 + j;
                    b.push(&k, e(n)).expect("push");
                    want.insert(k, n);
                }
            }
            assert_eq!(b.finish().expect("finish"), want.len() as u64);
            let got: BTreeMap<Vec<u8>, u32> = read_all(&p)
                .into_iter()
                .map(|(k, e)| (k, e.crc32))
                .collect();
            assert_eq!(got, want, "budget {budget}");
        }
    }

    #[test]
    fn version_1_indexes_are_still_read() {
        // Written by hand as version 1 laid them out (docs/FORMAT.md).
        let mut bytes = b"TMKIDX01".to_vec();
        for (k, crc, len) in [(&b"apple"[..], 7u32, 70u64), (b"apricot", 8, 80)] {
            bytes.extend_from_slice(&(k.len() as u32).to_le_bytes());
            bytes.extend_from_slice(k);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("old.idx");
        std::fs::write(&p, &bytes).expect("write");
        let want = vec![
            (b"apple".to_vec(), Entry { crc32: 7, len: 70 }),
            (b"apricot".to_vec(), Entry { crc32: 8, len: 80 }),
        ];
        assert_eq!(read_all(&p), want);
        // Rewriting it (an incremental's merge) gives version 2 with the same content.
        let q = d.path().join("new.idx");
        committed(apply_changes(
            Some(&StateFiles::base(&p)),
            &q,
            &SortedChanges::default(),
        ))
        .expect("merge");
        assert_eq!(&std::fs::read(&q).expect("read")[..8], b"TMKIDX03");
        assert_eq!(read_all(&q), want);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Changes pushed in any order, with repeats, sort to what a map that each change
        /// replaces holds: each key once, ascending, its last change.
        #[test]
        fn key_changes_sort_to_each_keys_last(
            log in proptest::collection::vec(
                (proptest::collection::vec(0u8..4, 0..4), proptest::option::of(0u32..1000)),
                0..300),
        ) {
            let mut changes = KeyChanges::default();
            let mut want = BTreeMap::new();
            for (k, c) in &log {
                changes.push(k.clone(), c.map(e));
                want.insert(k.clone(), c.map(e));
            }
            proptest::prop_assert_eq!(changes.is_empty(), log.is_empty());
            let got: Vec<(Vec<u8>, Option<Entry>)> =
                changes.into_sorted().iter().map(|(k, c)| (k.to_vec(), c)).collect();
            proptest::prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
        }
    }

    /// A long list of changes to few keys is compacted as it grows: its length stays within
    /// twice the keys (beyond the floor), and the last change of each key still wins.
    #[test]
    fn key_changes_stay_within_twice_the_keys() {
        let mut changes = KeyChanges::default();
        let rounds = 5 * COMPACT_FLOOR as u32;
        for i in 0..rounds {
            let key = (i % 1000).to_be_bytes().to_vec();
            changes.push(key, Some(e(i)));
            assert!(changes.items.len() <= COMPACT_FLOOR.max(2 * 1000));
        }
        let sorted = changes.into_sorted();
        assert_eq!(sorted.len(), 1000);
        for (k, c) in sorted.iter() {
            let key = u32::from_be_bytes(k.try_into().expect("four bytes"));
            let last = (rounds - 1 - key) / 1000 * 1000 + key;
            assert_eq!(c, Some(e(last)), "key {key}");
        }
    }

    proptest::proptest! {
        /// The word-at-a-time prefix is the byte-at-a-time one.
        #[test]
        fn common_prefix_is_exact(
            a in proptest::collection::vec(0u8..3, 0..30),
            b in proptest::collection::vec(0u8..3, 0..30),
        ) {
            let slow = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            proptest::prop_assert_eq!(common_prefix(&a, &b), slow);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any old index with any changes gives exactly the model's keys and entries, with
        /// keys sharing prefixes of every length.
        #[test]
        fn applied_changes_match_a_map(
            old in proptest::collection::btree_map(
                proptest::collection::vec(0u8..4, 0..6), 0u32..1000, 0..60),
            changes in proptest::collection::btree_map(
                proptest::collection::vec(0u8..4, 0..6),
                proptest::option::of(0u32..1000), 0..40),
        ) {
            let d = tempfile::tempdir().expect("tmp");
            let a = d.path().join("a.idx");
            write_base(&a, old.iter().map(|(k, n)| (k, *n)));
            let mut want = old.clone();
            let mut delta = BTreeMap::new();
            for (k, c) in &changes {
                match c {
                    Some(n) => { want.insert(k.clone(), *n); }
                    None => { want.remove(k); }
                }
                delta.insert(k.clone(), c.map(e));
            }
            let b = d.path().join("b.idx");
            let n = committed(apply_changes(Some(&StateFiles::base(&a)), &b, &SortedChanges::from(delta.clone()))).expect("apply");
            let got: BTreeMap<Vec<u8>, u32> =
                read_all(&b).into_iter().map(|(k, e)| (k, e.crc32)).collect();
            proptest::prop_assert_eq!(n as usize, want.len());
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// Reads a key state through [`Layered`].
    fn read_layered(state: &StateFiles) -> Result<BTreeMap<Vec<u8>, u32>> {
        let mut r = Layered::open(state)?;
        let mut out = BTreeMap::new();
        while let Some((k, e)) = r.next_entry()? {
            out.insert(k, e.crc32);
        }
        Ok(out)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// A base with up to five deltas written over it reads as the model after each one,
        /// counts as it, and folds into a new base that reads the same.
        #[test]
        fn deltas_over_a_base_match_a_map(
            old in proptest::collection::btree_map(
                proptest::collection::vec(0u8..4, 0..6), 0u32..1000, 0..60),
            rounds in proptest::collection::vec(proptest::collection::btree_map(
                proptest::collection::vec(0u8..4, 0..6),
                proptest::option::of(0u32..1000), 0..30), 1..6),
            version_2 in proptest::bool::ANY,
        ) {
            let d = tempfile::tempdir().expect("tmp");
            let base = d.path().join("base.idx");
            // Version 3 is looked up by its blocks; version 2 is read through.
            if version_2 {
                write_v2(&base, old.iter().map(|(k, n)| (k, *n)));
            } else {
                write_base(&base, old.iter().map(|(k, n)| (k, *n)));
            }
            let mut state = StateFiles::base(&base);
            let mut want = old.clone();
            for (i, changes) in rounds.iter().enumerate() {
                let held = want.len() as u64;
                let mut delta = BTreeMap::new();
                for (k, c) in changes {
                    match c {
                        Some(n) => { want.insert(k.clone(), *n); }
                        None => { want.remove(k); }
                    }
                    delta.insert(k.clone(), c.map(e));
                }
                let path = d.path().join(format!("d{i}.idx"));
                let n = committed(write_delta(&state, &path, &SortedChanges::from(delta.clone()), held)).expect("delta");
                state.deltas.push(path);
                proptest::prop_assert_eq!(n as usize, want.len());
                proptest::prop_assert_eq!(&read_layered(&state).expect("read"), &want);
            }
            let folded = d.path().join("folded.idx");
            let held = want.len() as u64;
            // Folding checks the recorded count: one off is damage.
            let wrong = committed(fold_changes(&state, &folded, &SortedChanges::default(), held + 1));
            let refused = matches!(wrong, Err(Error::Damaged { .. }));
            proptest::prop_assert!(refused, "a fold over a wrong count went through");
            let n = committed(fold_changes(&state, &folded, &SortedChanges::default(), held)).expect("fold");
            proptest::prop_assert_eq!(n as usize, want.len());
            let got: BTreeMap<Vec<u8>, u32> =
                read_all(&folded).into_iter().map(|(k, e)| (k, e.crc32)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_damaged_or_misplaced_delta_is_damage() {
        let d = tempfile::tempdir().expect("tmp");
        let base = d.path().join("base.idx");
        write_base(&base, (0..50u32).map(|i| (format!("k{i:03}"), i)));
        let state = StateFiles::base(&base);
        let delta = d.path().join("d.idx");
        let changes: BTreeMap<Vec<u8>, Option<Entry>> = [
            (b"k001".to_vec(), None),
            (b"k010".to_vec(), Some(e(99))),
            (b"k999".to_vec(), Some(e(7))),
            (b"zz".to_vec(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            committed(write_delta(
                &state,
                &delta,
                &SortedChanges::from(changes.clone()),
                50
            ))
            .expect("delta"),
            50
        );
        let layered = StateFiles {
            base: base.clone(),
            deltas: vec![delta.clone()],
        };
        let got = read_layered(&layered).expect("read");
        assert_eq!(got.len(), 50);
        assert!(!got.contains_key(&b"k001"[..]));
        assert_eq!(got[&b"k010"[..]], 99);
        // A deletion cannot go into a base index, nor can a delta be read as one.
        let mut w = IndexWriter::create(&d.path().join("x.idx")).expect("create");
        assert!(w.push_change(b"a", None).is_err());
        w.abandon();
        let swapped = StateFiles {
            base: delta.clone(),
            deltas: vec![base.clone()],
        };
        assert!(matches!(
            Layered::open(&swapped),
            Err(Error::Damaged { .. })
        ));
        let mut r = IndexReader::open(&delta).expect("open");
        assert!(
            matches!(r.advance(), Err(Error::Damaged { .. })),
            "k001's deletion"
        );
        // Every flipped byte of the delta is found when the state is read through.
        let bytes = std::fs::read(&delta).expect("read");
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            std::fs::write(&delta, &bad).expect("write");
            assert!(
                read_layered(&layered).is_err(),
                "byte {i} flipped went unseen"
            );
        }
    }

    #[test]
    fn every_flipped_truncated_or_extended_byte_is_damage() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("a.idx");
        let mut w = IndexWriter::create(&p).expect("create");
        for i in 0..40u32 {
            let key = format!("k{:03}", i * 7);
            let entry = Entry {
                crc32: i,
                len: 300 + u64::from(i),
            };
            assert!(w.push(key.as_bytes(), entry).expect("push"));
        }
        w.finish().expect("finish");
        let bytes = std::fs::read(&p).expect("read");
        let fails = |bad: &[u8]| -> bool {
            std::fs::write(&p, bad).expect("write");
            let Ok(mut r) = IndexReader::open(&p) else {
                return true;
            };
            loop {
                match r.next_entry() {
                    Ok(Some(_)) => {}
                    Ok(None) => return false,
                    Err(_) => return true,
                }
            }
        };
        assert!(!fails(&bytes), "the intact index reads");
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(fails(&bad), "flipped byte {at} went unnoticed");
            assert!(
                fails(&bytes[..at]),
                "truncation to {at} bytes went unnoticed"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(fails(&longer), "a byte after the trailer went unnoticed");
    }

    #[test]
    fn version_2_shares_prefixes_and_detects_damage() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("a.idx");
        let mut w = IndexWriter::create(&p).expect("create");
        let n = 10_000u32;
        for i in 0..n {
            let key = format!("key-{i:08}");
            let entry = Entry {
                crc32: i.wrapping_mul(2_654_435_761),
                len: 1000 + u64::from(i % 7),
            };
            assert!(w.push(key.as_bytes(), entry).expect("push"));
        }
        assert_eq!(w.finish().expect("finish"), u64::from(n));
        let bytes = std::fs::read(&p).expect("read");
        // 12-byte keys sharing 8 or more bytes with the previous one: at most 13 bytes a key.
        assert!(
            bytes.len() as u32 <= 13 * n + 32,
            "{} bytes for {n} keys",
            bytes.len()
        );
        let all = read_all(&p);
        assert_eq!(all.len() as u32, n);
        assert_eq!(all[1234].0, b"key-00001234".to_vec());
        assert_eq!(all[1234].1.len, 1000 + 1234 % 7);
        // Any flipped byte is reported (as damage or a failed read), never returned as keys.
        for at in [8, bytes.len() / 2, bytes.len() - 5] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x55;
            std::fs::write(&p, &bad).expect("write");
            let mut r = IndexReader::open(&p).expect("open");
            let mut failed = false;
            loop {
                match r.next_entry() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            assert!(failed, "flipped byte {at} went unnoticed");
        }
    }

    #[test]
    fn lookups_read_ahead_across_windows_and_back_out_of_order() {
        let d = tempfile::tempdir().expect("tmp");
        let base = d.path().join("base.idx");
        // About 300 KiB: lookups cross several read-ahead windows, and blocks straddle them.
        let n = 30_000u32;
        write_base(&base, (0..n).map(|i| (format!("key-{:08}", i * 3), i)));
        for lookups in [1, n as usize] {
            let mut index = BlockIndex::open(&base, lookups).expect("open").expect("v3");
            assert_eq!(index.readahead > 0, lookups > 1, "{lookups} lookups");
            for i in (0..n).step_by(7) {
                let held = format!("key-{:08}", i * 3);
                assert!(index.contains(held.as_bytes()).expect("held"), "{held}");
                let absent = format!("key-{:08}", i * 3 + 1);
                assert!(
                    !index.contains(absent.as_bytes()).expect("absent"),
                    "{absent}"
                );
            }
            // Asked out of order, a key below the cursor is still found.
            assert!(index.contains(b"key-00000003").expect("again"));
            assert!(index.contains(b"key-00089997").expect("last"));
            assert!(!index.contains(b"key-00089998").expect("past the last"));
        }
    }

    /// Keys that are prefixes of one another (the empty key too) are found, and keys between
    /// them are not, whether asked in order or not: the lookup compares keys by the prefix each
    /// entry shares with the one before.
    #[test]
    fn lookups_tell_apart_keys_that_are_prefixes_of_one_another() {
        // Every key of up to 5 bytes over a 4-letter alphabet; about half of them held.
        let mut all = vec![Vec::new()];
        let mut level = vec![Vec::new()];
        for _ in 0..5 {
            level = level
                .iter()
                .flat_map(|k: &Vec<u8>| {
                    (b'a'..=b'd').map(move |c| {
                        let mut k = k.clone();
                        k.push(c);
                        k
                    })
                })
                .collect();
            all.extend(level.iter().cloned());
        }
        all.sort();
        let mut x = 7u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        let held: std::collections::BTreeSet<Vec<u8>> =
            all.iter().filter(|_| next() % 2 == 0).cloned().collect();
        let d = tempfile::tempdir().expect("tmp");
        let base = d.path().join("base.idx");
        write_base(&base, held.iter().map(|k| (k.as_slice(), 1)));
        let mut shuffled = all.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, next() as usize % (i + 1));
        }
        for (order, keys) in [("in order", &all), ("shuffled", &shuffled)] {
            for lookups in [1, all.len()] {
                let mut index = BlockIndex::open(&base, lookups).expect("open").expect("v3");
                assert!(index.blocks.len() > 3, "{} blocks", index.blocks.len());
                for k in keys.iter() {
                    assert_eq!(
                        index.contains(k).expect("lookup"),
                        held.contains(k),
                        "{order}, {lookups} lookups: {:?}",
                        String::from_utf8_lossy(k)
                    );
                }
            }
        }
    }

    #[test]
    fn a_delta_reads_only_the_blocks_it_needs_and_never_a_damaged_one() {
        let d = tempfile::tempdir().expect("tmp");
        let base = d.path().join("base.idx");
        let n = 600u32;
        write_base(&base, (0..n).map(|i| (format!("key-{:06}", i * 2), i)));
        let bytes = std::fs::read(&base).expect("read");
        let mut index = BlockIndex::open(&base, 1)
            .expect("open")
            .expect("version 3");
        assert!(index.blocks.len() > 10, "{} blocks", index.blocks.len());
        for i in 0..n {
            assert!(index
                .contains(format!("key-{:06}", i * 2).as_bytes())
                .expect("held"));
            assert!(!index
                .contains(format!("key-{:06}", i * 2 + 1).as_bytes())
                .expect("not"));
        }
        assert!(!index.contains(b"a").expect("before the first"));
        assert!(!index.contains(b"z").expect("after the last"));
        // One change in the middle: an update, an insertion and a deletion.
        let changes: BTreeMap<Vec<u8>, Option<Entry>> = [
            (b"key-000300".to_vec(), Some(e(1))),
            (b"key-000301".to_vec(), Some(e(2))),
            (b"key-000302".to_vec(), None),
            (b"key-000303".to_vec(), None),
        ]
        .into_iter()
        .collect();
        let state = StateFiles::base(&base);
        let delta = d.path().join("d.idx");
        let held = u64::from(n);
        assert_eq!(
            committed(write_delta(
                &state,
                &delta,
                &SortedChanges::from(changes.clone()),
                held
            ))
            .expect("delta"),
            held
        );
        // Every flipped byte of the base is either refused by the delta, or it lies where the
        // delta does not read and the next full read (the fold) refuses it; a delta that
        // succeeds always counts right. The change touches one or two blocks of dozens, so
        // most flips lie where it does not read.
        let mut unread = 0;
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x04;
            std::fs::write(&base, &bad).expect("write");
            match committed(write_delta(
                &state,
                &delta,
                &SortedChanges::from(changes.clone()),
                held,
            )) {
                Err(Error::Damaged { .. }) => {}
                Err(other) => panic!("byte {at}: {other}"),
                Ok(count) => {
                    assert_eq!(count, held, "byte {at} flipped changed the count");
                    assert!(
                        read_layered(&state).is_err(),
                        "byte {at} flipped went unseen by a full read"
                    );
                    unread += 1;
                }
            }
        }
        assert!(
            unread > bytes.len() * 3 / 4,
            "{unread} of {} bytes not read",
            bytes.len()
        );
    }
}
