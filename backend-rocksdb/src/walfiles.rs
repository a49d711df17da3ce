//! RocksDB's WAL files read directly, without opening the database: the write batches after a
//! sequence number, and where the WAL ends.
//!
//! A secondary instance costs most of a small incremental: its open replays every WAL file into
//! memtables and opens every SST file (7–10 ms on a store of 68 files, docs/BENCHMARKS.md), and
//! an incremental then reads the WAL again through it. A run that reads only the WAL needs
//! neither: the MANIFEST ([`crate::manifest::replay`]) gives the column families, the live SST
//! files and the last flushed sequence number, and the WAL files give the batches after it.
//!
//! Format: a WAL file `NNNNNN.log` (in the database's directory, or in `archive/` once
//! obsolete and kept by a WAL TTL) is a log of 32 KiB blocks ([`crate::logformat`]), in which a
//! write batch is one logical record. Its payload starts with the batch's first sequence number
//! (8 bytes) and its count of sequence-consuming records (4).
//!
//! A WAL file grows to the size of a memtable (64 MiB by default) and an incremental's batches
//! are often its last few, so neither reading starts at a file's start: a log's every block
//! begins with a physical record, so the WAL's end is read from the last block in which a
//! batch starts, and the batches after a point from the block a binary search over the first
//! batch of each block finds (after one over the files' first batches).
//!
//! Anything this reader does not know makes it stop with an error, and the caller falls back to
//! reading through RocksDB: recyclable records (`recycle_log_file_num`), WAL compression, user
//! timestamp sizes, a bad checksum, a fragment out of place. Records whose type has the
//! ignorable bit (0x80) set are skipped, as RocksDB does. A record cut short at the end of a
//! file is where that file ends (the application is writing it, or crashed writing it).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::logformat::{self, Assembler, Kind, Physical, Piece, BLOCK};

/// A WAL file: its number and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalFile {
    pub(crate) number: u64,
    pub(crate) path: PathBuf,
}

/// The WAL files in `dir` and `dir/archive` in number order (a file moved to the archive while
/// listed is found in either).
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<WalFile>> {
    let mut out: Vec<WalFile> = Vec::new();
    for (d, required) in [(dir.to_path_buf(), true), (dir.join("archive"), false)] {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(WalFile {
                number: n,
                path: e.path(),
            });
        }
    }
    // A file moved to the archive while the directory was listed may be listed twice: once
    // is enough (either path finds it, [`LogReader::open`]). Sorted, then deduplicated: a WAL
    // TTL can keep thousands of files in `archive/`, and a search of the list for each one
    // was most of the listing's time.
    out.sort_by_key(|f| f.number);
    out.dedup_by_key(|f| f.number);
    Ok(out)
}

/// Reads one WAL file's logical records in order.
pub(crate) struct LogReader {
    file: File,
    number: u64,
    block: Vec<u8>,
    /// Bytes of `block` read from the file.
    len: usize,
    /// Where `block` starts in the file.
    offset: u64,
    /// Where the next record header is in `block`.
    pos: usize,
    /// The file gave less than a block: nothing comes after `len`.
    last: bool,
    /// A block was read.
    started: bool,
}

impl LogReader {
    /// Opens `file` (looked for in the archive too, if it moved there since it was listed).
    pub(crate) fn open(dir: &Path, file: &WalFile) -> std::io::Result<Self> {
        let f = match File::open(&file.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open(dir.join("archive").join(format!("{:06}.log", file.number)))?
            }
            Err(e) => return Err(e),
        };
        Ok(LogReader {
            file: f,
            number: file.number,
            block: vec![0; BLOCK],
            len: 0,
            offset: 0,
            pos: 0,
            last: false,
            started: false,
        })
    }

    /// Reads the next block; `false` at the end of the file.
    fn next_block(&mut self) -> Result<bool, String> {
        if self.last {
            return Ok(false);
        }
        let mut n = 0;
        while n < BLOCK {
            match self.file.read(&mut self.block[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("WAL file {:06}.log: {e}", self.number)),
            }
        }
        if self.started {
            self.offset += BLOCK as u64;
        }
        self.started = true;
        self.len = n;
        self.pos = 0;
        self.last = n < BLOCK;
        Ok(n > 0)
    }

    /// Moves to block `index` of the file, to its first record; `false` when the file holds no
    /// byte of that block.
    fn seek_block(&mut self, index: u64) -> Result<bool, String> {
        let at = index * BLOCK as u64;
        self.file
            .seek(SeekFrom::Start(at))
            .map_err(|e| format!("WAL file {:06}.log: {e}", self.number))?;
        self.offset = at;
        self.started = false;
        self.last = false;
        self.next_block()
    }

    /// Where in the block read last the first logical record that starts there starts (a
    /// FULL or FIRST record): a block always begins with a physical record, but it may be the
    /// rest of a record begun before. `None` when none starts in it.
    fn first_start(&self) -> Result<Option<usize>, String> {
        let mut pos = 0;
        loop {
            let rest = &self.block[pos..self.len];
            let damage = |what: &str| {
                format!(
                    "WAL file {:06}.log holds {what} at byte {}",
                    self.number,
                    self.offset + pos as u64
                )
            };
            match logformat::physical(rest, BLOCK - pos).map_err(damage)? {
                Physical::Trailer | Physical::End => return Ok(None),
                Physical::Record {
                    kind:
                        Kind::Data {
                            piece: Piece::Full | Piece::First,
                            recyclable: false,
                        },
                    ..
                } => return Ok(Some(pos)),
                Physical::Record {
                    kind:
                        Kind::Data {
                            recyclable: false, ..
                        }
                        | Kind::Ignorable,
                    len,
                    ..
                } => pos += len,
                // What the reader refuses, it refuses here too.
                Physical::Record { .. } => return Err(damage("a record it cannot read")),
            }
        }
    }

    /// Moves to where reading the batches after sequence number `since` starts: the first
    /// batch that starts in the last block whose first batch starts at or before `since + 1`
    /// (the file's start when none does), found by a binary search over the file's blocks
    /// (the batches before it are all at or before `since`). A WAL file grows to the size of a
    /// memtable, and an incremental's batches are often its last few.
    fn skip_to(&mut self, since: u64) -> Result<(), String> {
        let target = since.saturating_add(1);
        let size = self
            .file
            .metadata()
            .map_err(|e| format!("WAL file {:06}.log: {e}", self.number))?
            .len();
        self.check_head()?;
        let (mut lo, mut hi) = (0, size.div_ceil(BLOCK as u64));
        let mut best = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first batch that starts in a block from `mid` on (a long batch's fragments
            // fill whole blocks).
            let mut found = None;
            let mut b = mid;
            while found.is_none() && b < hi && self.seek_block(b)? {
                found = self.first_start()?.map(|start| (b, start));
                b += 1;
            }
            let Some((block, start)) = found else {
                hi = mid;
                continue;
            };
            self.pos = start;
            match self.next_record()?.as_deref().and_then(batch_header) {
                Some((seq, _)) if seq <= target => {
                    best = Some((block, start));
                    lo = block + 1;
                }
                // Later, or being written.
                _ => hi = mid,
            }
        }
        let (block, start) = best.unwrap_or((0, 0));
        self.seek_block(block)?;
        self.pos = start.min(self.len);
        Ok(())
    }

    /// Checks the file's first block: reading from a later block skips the records before it,
    /// and a recycled WAL file (`recycle_log_file_num`) starts with records of the recyclable
    /// types, which this reader refuses, while its later blocks may still hold a previous
    /// life's records, whole and with good checksums.
    fn check_head(&mut self) -> Result<(), String> {
        if self.seek_block(0)? {
            self.first_start()?;
        }
        Ok(())
    }

    /// The next whole logical record (a write batch), `None` at the end of the file or at a
    /// record cut short there.
    pub(crate) fn next_record(&mut self) -> Result<Option<Vec<u8>>, String> {
        let mut assembler = Assembler::default();
        loop {
            if !self.started && !self.next_block()? {
                return Ok(None);
            }
            let rest = &self.block[self.pos..self.len];
            let step = logformat::physical(rest, BLOCK - self.pos).map_err(|e| self.damage(e))?;
            let Physical::Record { kind, payload, len } = step else {
                // A whole block's trailer; a short block is the end of the file.
                let trailer = matches!(step, Physical::Trailer);
                if trailer && self.len == BLOCK && self.next_block()? {
                    continue;
                }
                return Ok(None);
            };
            let piece = match kind {
                Kind::Data {
                    recyclable: false,
                    piece,
                } => piece,
                Kind::Ignorable => {
                    self.pos += len;
                    continue;
                }
                Kind::Data { .. } => {
                    return Err(self.damage("a recyclable record (recycle_log_file_num)"))
                }
                Kind::Compression => return Err(self.damage("WAL compression (wal_compression)")),
                Kind::TimestampSizes => return Err(self.damage("user-defined timestamp sizes")),
                Kind::Unknown(t) => {
                    return Err(self.damage(&format!("a record of unknown type {t}")))
                }
            };
            let record = assembler
                .add(0, piece, payload)
                .map_err(|e| self.damage(e))?;
            self.pos += len;
            if let Some((_, record)) = record {
                return Ok(Some(record));
            }
        }
    }

    fn damage(&self, what: &str) -> String {
        format!(
            "WAL file {:06}.log holds {what} at byte {}",
            self.number,
            self.offset + self.pos as u64
        )
    }
}

/// A write batch's first sequence number and count, from its header.
pub(crate) fn batch_header(data: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    Some((seq, u64::from(count)))
}

/// The first batch's sequence number of `file` (`None` while it holds none), reading one
/// record.
fn first_sequence(dir: &Path, file: &WalFile) -> Result<Option<u64>, String> {
    let mut r = LogReader::open(dir, file).map_err(|e| format!("{}: {e}", file.path.display()))?;
    Ok(r.next_record()?
        .as_deref()
        .and_then(batch_header)
        .map(|(s, _)| s))
}

/// The file to start reading at for the batches after sequence number `since`: the last one
/// whose first batch starts at or before `since + 1` (the first file if none does), found by
/// a binary search that reads the first record of a few files only (a WAL TTL can keep
/// thousands in `archive/`). A file that holds no batch yet counts as starting after it; were
/// one ever in the middle, the search could start too late, and the reading's continuity
/// check finds the gap.
pub(crate) fn starting_file(dir: &Path, files: &[WalFile], since: u64) -> Result<usize, String> {
    let target = since.saturating_add(1);
    let (mut lo, mut hi, mut best) = (0, files.len(), 0);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match first_sequence(dir, &files[mid])? {
            Some(s) if s <= target => {
                best = mid;
                lo = mid + 1;
            }
            _ => hi = mid,
        }
    }
    Ok(best)
}

/// The last sequence number the WAL files hold (the end of the last whole batch of the newest
/// file that holds one), or `None` when they hold none.
pub(crate) fn end(dir: &Path, files: &[WalFile]) -> Result<Option<u64>, String> {
    for f in files.iter().rev() {
        if let Some(end) = file_end(dir, f)? {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

/// The end of the last whole batch of `file`, read from its last blocks: from the last block
/// in which a batch starts, to the end of the file; when no batch there is whole (the last one
/// is being written), from the block before that one in which a batch starts, and so on. A
/// WAL file grows to the size of a memtable (64 MiB by default), and its older batches are
/// [`batches`]' to read, and check, when it needs them.
fn file_end(dir: &Path, file: &WalFile) -> Result<Option<u64>, String> {
    let mut r = LogReader::open(dir, file).map_err(|e| format!("{}: {e}", file.path.display()))?;
    let size = r
        .file
        .metadata()
        .map_err(|e| format!("{}: {e}", file.path.display()))?
        .len();
    r.check_head()?;
    for index in (0..size.div_ceil(BLOCK as u64)).rev() {
        if !r.seek_block(index)? {
            continue;
        }
        let Some(start) = r.first_start()? else {
            continue;
        };
        r.pos = start;
        let mut last = None;
        while let Some(record) = r.next_record()? {
            let (seq, count) = batch_header(&record).ok_or_else(|| {
                format!(
                    "WAL file {:06}.log: a batch shorter than its header",
                    file.number
                )
            })?;
            last = Some(seq + count.max(1) - 1);
        }
        if last.is_some() {
            return Ok(last);
        }
    }
    Ok(None)
}

/// The write batches of WAL files that start after a sequence number, in order, as RocksDB's
/// WAL iterator gives them (`get_updates_since`, which skips batches starting at or before
/// it): each its first sequence number and its bytes.
pub(crate) struct Batches {
    dir: PathBuf,
    files: Vec<WalFile>,
    next_file: usize,
    reader: Option<LogReader>,
    since: u64,
    done: bool,
}

/// The batches of `files` (in `dir`) that start after sequence number `since`.
pub(crate) fn batches(dir: &Path, files: &[WalFile], since: u64) -> Result<Batches, String> {
    let first = starting_file(dir, files, since)?;
    // The first file is read from the batch to start from, not from its start.
    let reader = match files.get(first) {
        Some(file) => {
            let mut r =
                LogReader::open(dir, file).map_err(|e| format!("{}: {e}", file.path.display()))?;
            r.skip_to(since)?;
            Some(r)
        }
        None => None,
    };
    Ok(Batches {
        dir: dir.to_path_buf(),
        files: files.to_vec(),
        next_file: first + 1,
        reader,
        since,
        done: false,
    })
}

impl Iterator for Batches {
    type Item = Result<(u64, Vec<u8>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let reader = match &mut self.reader {
                Some(r) => r,
                None => {
                    let file = self.files.get(self.next_file)?;
                    self.next_file += 1;
                    match LogReader::open(&self.dir, file) {
                        Ok(r) => self.reader.insert(r),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(format!("{}: {e}", file.path.display())));
                        }
                    }
                }
            };
            match reader.next_record() {
                Ok(Some(record)) => {
                    let Some((seq, _)) = batch_header(&record) else {
                        self.done = true;
                        return Some(Err(format!(
                            "WAL file {:06}.log: a batch shorter than its header",
                            reader.number
                        )));
                    };
                    if seq > self.since {
                        return Some(Ok((seq, record)));
                    }
                }
                Ok(None) => self.reader = None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `count` sequence numbers from `seq`, `len` bytes in all.
    fn batch(seq: u64, count: u32, len: usize) -> Vec<u8> {
        let mut b = seq.to_le_bytes().to_vec();
        b.extend_from_slice(&count.to_le_bytes());
        b.resize(len.max(12), 0xab);
        b
    }

    /// The end of the last whole batch of `file`, read from its start (what `file_end` did
    /// before it read from the tail).
    fn end_from_start(dir: &Path, file: &WalFile) -> Option<u64> {
        let mut r = LogReader::open(dir, file).expect("open");
        let mut last = None;
        while let Some(record) = r.next_record().expect("read") {
            let (seq, count) = batch_header(&record).expect("header");
            last = Some(seq + count.max(1) - 1);
        }
        last
    }

    /// The end is read from the file's first and last blocks only: damage in between (which
    /// [`batches`] finds when it reads there) does not stop it, and a batch being written at
    /// the end is not counted.
    #[test]
    fn the_end_is_read_from_the_last_blocks() {
        let batches: Vec<Vec<u8>> = (0..10u64).map(|i| batch(1 + 2 * i, 2, 20_000)).collect();
        let refs: Vec<&[u8]> = batches.iter().map(|b| &b[..]).collect();
        let mut log = crate::logformat::write(&refs, 0);
        log[2 * BLOCK + 100] ^= 1;
        let dir = tempfile::tempdir().expect("tmp");
        let file = WalFile {
            number: 9,
            path: dir.path().join("000009.log"),
        };
        std::fs::write(&file.path, &log).expect("write");
        assert_eq!(file_end(dir.path(), &file), Ok(Some(20)));
        let mut r = LogReader::open(dir.path(), &file).expect("open");
        let e = std::iter::from_fn(|| r.next_record().transpose())
            .find_map(Result::err)
            .expect("damaged");
        assert!(e.contains("does not match its checksum"), "{e}");
        // The last batch cut short: the one before it ends the file.
        log.truncate(log.len() - 3);
        std::fs::write(&file.path, &log).expect("write");
        assert_eq!(file_end(dir.path(), &file), Ok(Some(18)));
    }

    /// The WAL files of the directory and its archive, in number order, each once (a file
    /// moved to the archive while the directory was listed can be in both listings).
    #[test]
    fn wal_files_are_listed_in_order_each_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path();
        std::fs::create_dir(d.join("archive")).expect("archive");
        for (sub, n) in [
            ("", 12),
            ("archive", 3),
            ("archive", 12),
            ("", 7),
            ("archive", 100),
        ] {
            std::fs::write(d.join(sub).join(format!("{n:06}.log")), b"").expect("write");
        }
        std::fs::write(d.join("000009.sst"), b"").expect("write");
        std::fs::write(d.join("LOG"), b"").expect("write");
        let numbers: Vec<u64> = list(d).expect("list").iter().map(|f| f.number).collect();
        assert_eq!(numbers, [3, 7, 12, 100]);
    }

    /// A recycled WAL file (its head of the recyclable types, its tail a previous life's
    /// records) is refused, read from its tail or searched, as it is read from its start.
    #[test]
    fn a_recycled_file_is_refused_however_it_is_read() {
        let batches: Vec<Vec<u8>> = (0..6u64).map(|i| batch(100 + i, 1, 20_000)).collect();
        let refs: Vec<&[u8]> = batches.iter().map(|b| &b[..]).collect();
        let mut log = crate::logformat::write(&refs, 0);
        // A new life's first record over the old one's: type 5 (recyclable FULL), with the
        // log's number after the header, inside the checksum.
        let payload = batch(500, 1, 12);
        let mut typed = vec![5u8];
        typed.extend_from_slice(&10u32.to_le_bytes());
        typed.extend_from_slice(&payload);
        let masked = crate::logformat::crc32c(&typed)
            .rotate_right(15)
            .wrapping_add(0xa282_ead8);
        let mut head = masked.to_le_bytes().to_vec();
        head.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        head.extend_from_slice(&typed);
        log[..head.len()].copy_from_slice(&head);
        let dir = tempfile::tempdir().expect("tmp");
        let file = WalFile {
            number: 10,
            path: dir.path().join("000010.log"),
        };
        std::fs::write(&file.path, &log).expect("write");
        let from_start = LogReader::open(dir.path(), &file)
            .expect("open")
            .next_record()
            .expect_err("recyclable");
        assert!(from_start.contains("recyclable"), "{from_start}");
        let e = file_end(dir.path(), &file).expect_err("recycled");
        assert!(e.contains("000010.log"), "{e}");
        assert!(super::batches(dir.path(), std::slice::from_ref(&file), 102).is_err());
        let mut r = LogReader::open(dir.path(), &file).expect("open");
        assert!(r.skip_to(102).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Read from its tail, a WAL file ends where it ends read from its start, wherever it
        /// is cut (a batch being written), and whole with preallocated zeros after it; and the
        /// batches after a point, read from where the binary search over its blocks starts,
        /// are those read from its start.
        #[test]
        fn the_end_read_from_the_tail_is_the_end_read_from_the_start(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![0usize..200, 200usize..40_000, 60_000usize..140_000],
                1..12,
            ),
            cut in 0.0f64..=1.0,
            since_at in 0.0f64..=1.0,
            zeros in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..70_000],
        ) {
            let mut seq = 1u64;
            let batches: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let count = (i as u32 % 3) + 1;
                    let b = batch(seq, count, len);
                    seq += u64::from(count);
                    b
                })
                .collect();
            let refs: Vec<&[u8]> = batches.iter().map(|b| &b[..]).collect();
            let mut log = crate::logformat::write(&refs, 0);
            // Cut short (a batch being written), or whole with preallocated space after it
            // (zeros after a cut would be damage, which both readers refuse).
            if zeros == 0 {
                log.truncate((log.len() as f64 * cut) as usize);
            } else {
                log.resize(log.len() + zeros, 0);
            }
            let dir = tempfile::tempdir().expect("tmp");
            let file = WalFile {
                number: 7,
                path: dir.path().join("000007.log"),
            };
            std::fs::write(&file.path, &log).expect("write");
            let want = end_from_start(dir.path(), &file);
            proptest::prop_assert_eq!(file_end(dir.path(), &file).expect("end"), want);
            // The batches after any point, read from the block found by the binary search,
            // are those read from the start.
            let mut all = LogReader::open(dir.path(), &file).expect("open");
            let mut every = Vec::new();
            while let Some(record) = all.next_record().expect("read") {
                every.push((batch_header(&record).expect("header").0, record));
            }
            for since in [0.0, since_at * seq as f64, seq as f64 - 2.0, seq as f64 + 1.0] {
                let since = since.max(0.0) as u64;
                let got: Vec<(u64, Vec<u8>)> = super::batches(dir.path(), std::slice::from_ref(&file), since)
                    .expect("batches")
                    .collect::<Result<_, _>>()
                    .expect("read");
                let want: Vec<(u64, Vec<u8>)> =
                    every.iter().filter(|(s, _)| *s > since).cloned().collect();
                proptest::prop_assert_eq!(got, want, "after {}", since);
            }
            if cut == 1.0 || zeros > 0 {
                proptest::prop_assert_eq!(want, Some(seq - 1));
            }
        }
    }
}
