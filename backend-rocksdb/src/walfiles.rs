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
//! Anything this reader does not know makes it stop with an error, and the caller falls back to
//! reading through RocksDB: recyclable records (`recycle_log_file_num`), WAL compression, user
//! timestamp sizes, a bad checksum, a fragment out of place. Records whose type has the
//! ignorable bit (0x80) set are skipped, as RocksDB does. A record cut short at the end of a
//! file is where that file ends (the application is writing it, or crashed writing it).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::logformat::{self, Assembler, Kind, Physical, BLOCK};

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
            if !out.iter().any(|f| f.number == n) {
                out.push(WalFile {
                    number: n,
                    path: e.path(),
                });
            }
        }
    }
    out.sort_by_key(|f| f.number);
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
        let mut r = LogReader::open(dir, f).map_err(|e| format!("{}: {e}", f.path.display()))?;
        let mut last = None;
        while let Some(record) = r.next_record()? {
            let (seq, count) = batch_header(&record).ok_or_else(|| {
                format!(
                    "WAL file {:06}.log: a batch shorter than its header",
                    f.number
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
    Ok(Batches {
        dir: dir.to_path_buf(),
        files: files.to_vec(),
        next_file: starting_file(dir, files, since)?,
        reader: None,
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
