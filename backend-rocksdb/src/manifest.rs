//! The MANIFEST's version edits since the previous backup: files that came and went around the
//! WAL.
//!
//! [`crate::ingest`] reads the tail of every SST file new since the previous backup, and finds
//! a file ingested with `IngestExternalFile` (sequence number 0, no WAL record) by its
//! property. A file that a compaction merged into another before the backup is gone by then,
//! and its keys sit in a compaction's output, which has no such property. The MANIFEST still
//! tells: RocksDB appends one *version edit* per change of the set of files, and
//!
//! - a flush's edit names the WAL it obsoletes (a log number): its keys came through the WAL;
//! - a compaction's (and a move's) edit removes the files it read;
//! - an ingestion's or an import's edit only adds files;
//! - a FIFO compaction's edit only removes files: their keys go without a WAL record. So does a
//!   level or universal compaction's whose input was all deleted keys and that wrote nothing (a
//!   queue's work makes many), but those deletions are in the WAL: removals count only in
//!   column families the OPTIONS file gives FIFO compaction. (`DeleteFilesInRange`'s edit has
//!   the same shape, and is not told apart.)
//!
//! So a backup keeps where it stopped reading the MANIFEST (its name and offset), and the next
//! reads the edits written since: a file added alone that the previous backup did not have
//! (gone since, or there: an imported file carries no ingest property), or files a FIFO
//! compaction removed, make the WAL unusable for that run. When the application reopened the
//! database, RocksDB wrote a new MANIFEST (it begins with the files of that moment, in edits
//! that name log numbers): its edits are read from the start; those of the sessions in between
//! are gone, and what they may have hidden is told from the files' smallest sequence numbers,
//! the info LOG ([`crate::infolog`]) and, for FIFO compaction, the files that are gone.
//!
//! Formats (RocksDB's `db/version_edit.cc`): the file is a log ([`crate::logformat`]) whose
//! logical records are edits, each a sequence of varint tags and their fields.

use std::path::Path;

/// Where reading a MANIFEST stopped: its file name and the offset after its last whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) name: String,
    pub(crate) offset: u64,
}

impl Position {
    /// As a store mark keeps it: `"MANIFEST-000012 4567"`.
    pub(crate) fn text(&self) -> String {
        format!("{} {}", self.name, self.offset)
    }

    /// The MANIFEST's number (`MANIFEST-000012`: 12).
    pub(crate) fn number(&self) -> Option<u64> {
        self.name.strip_prefix("MANIFEST-")?.parse().ok()
    }

    /// The position a store mark holds, if it parses.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (name, offset) = text.split_once(' ')?;
        let fine = name.starts_with("MANIFEST-") && !name.contains('/');
        fine.then(|| {
            offset.parse().ok().map(|offset| Position {
                name: name.to_string(),
                offset,
            })
        })?
    }
}

/// The MANIFEST that `CURRENT` names in `dir`, and its size now.
pub(crate) fn current(dir: &Path) -> std::io::Result<Position> {
    let text = std::fs::read_to_string(dir.join("CURRENT"))?;
    let name = text.trim_end_matches('\n').to_string();
    if !name.starts_with("MANIFEST-") || name.contains('/') {
        return Err(std::io::Error::other(format!(
            "CURRENT names `{name}`, not a MANIFEST"
        )));
    }
    let offset = std::fs::metadata(dir.join(&name))?.len();
    Ok(Position { name, offset })
}

/// What the edits read tell.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Edits {
    /// Files added by edits that add files only (neither a flush nor a compaction).
    pub(crate) added_alone: Vec<u64>,
    /// Files removed by edits that remove files only, with their column family's id.
    pub(crate) removed_alone: Vec<(u32, u64)>,
    /// Files removed by any edit read.
    pub(crate) removed: std::collections::BTreeSet<u64>,
    /// Files added by edits that remove none (a new MANIFEST's list of the files there were,
    /// a flush, an ingestion) that hold keys at sequence number 0.
    pub(crate) listed_at_zero: Vec<u64>,
    /// Where the reading stopped.
    pub(crate) end: u64,
}

/// Reads the edits of MANIFEST `name` in `dir` from byte `from` (a record's start) up to byte
/// `to` (its size when the view was taken); a record not yet whole there is left to the next
/// reading. Errors say why the edits cannot be told.
pub(crate) fn read(dir: &Path, name: &str, from: u64, to: u64) -> Result<Edits, String> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(name);
    let mut f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = to
        .checked_sub(from)
        .ok_or("the MANIFEST is shorter than where it was read to")?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut edits = Edits {
        end: from,
        ..Edits::default()
    };
    let (records, end) = records(&bytes, from).map_err(|e| format!("{}: {e}", path.display()))?;
    for (at, record) in records {
        let edit = parse_edit(&record)
            .map_err(|e| format!("{}: the edit at byte {at}: {e}", path.display()))?;
        if edit.deleted.is_empty() {
            edits.listed_at_zero.extend(&edit.at_zero);
        }
        edits.removed.extend(&edit.deleted);
        match (
            edit.new_files.is_empty(),
            edit.deleted.is_empty(),
            edit.log_number,
        ) {
            (false, true, false) => {
                edits
                    .added_alone
                    .extend(edit.new_files.iter().map(|(n, _, _)| *n));
            }
            (true, false, _) => edits
                .removed_alone
                .extend(edit.deleted.into_iter().map(|n| (edit.cf, n))),
            _ => {}
        }
    }
    edits.end = end;
    Ok(edits)
}

/// Reads the edits written since `since` (in the same MANIFEST from its offset, in another one
/// from its start; without one, from the start) up to `now` (the MANIFEST and its size), and
/// tells where the reading stopped and why the edits hold changes the WAL does not:
///
/// - a file added by itself (an ingestion's or an import's edit) that the previous backup `had`
///   not: gone now (compacted into another file), or `present` (an ingested file is also found
///   by its property, an imported one, which has none, only here);
/// - read from the start (the database was opened since the previous backup, and the edits of
///   the sessions in between are gone): a file listed or flushed that the previous backup
///   `had` not, with keys at sequence number 0. Only an ingestion into the last level and a
///   compaction into the last level write those (RocksDB zeroes the sequence numbers of keys no
///   snapshot needs there), and without the edits the two cannot be told apart. A flush's keys
///   keep theirs, all after the previous backup's or in its WAL; a sequence number consumed
///   without a WAL record (an ingestion given one, a write without the WAL) is a gap the WAL's
///   reading finds;
/// - files removed by themselves from a column family that `drops` (FIFO compaction:
///   elsewhere such an edit is a compaction whose input was all deleted keys, which wrote
///   nothing, and a queue's deletions make many);
/// - read from the start, a file of the previous backup that is `gone` (the callers list them
///   only where a column family has FIFO compaction) and that no edit read removed: the edit
///   that did is gone too.
///
/// Errors say why the edits cannot be read.
pub(crate) fn since(
    dir: &Path,
    since: Option<&Position>,
    now: &Position,
    (present, had, gone): (impl Fn(u64) -> bool, impl Fn(u64) -> bool, &[u64]),
    drops: impl Fn(u32) -> bool,
) -> Result<(Position, Option<String>), String> {
    let from = since
        .filter(|p| p.name == now.name && p.offset <= now.offset)
        .map_or(0, |p| p.offset);
    let edits = read(dir, &now.name, from, now.offset)?;
    let end = Position {
        name: now.name.clone(),
        offset: edits.end,
    };
    let reopened = from == 0;
    let why = if let Some(n) = edits.added_alone.iter().find(|n| !had(**n)) {
        Some(if present(*n) {
            format!(
                "SST file {n:06}.sst was added to the database by itself (IngestExternalFile or \
                 an import, neither a flush nor a compaction); its keys have no WAL record"
            )
        } else {
            format!(
                "SST file {n:06}.sst was added to the database by itself (IngestExternalFile or \
                 an import, neither a flush nor a compaction) and compacted into another file \
                 before this backup; its keys have no WAL record"
            )
        })
    } else if let Some((n, log)) = edits
        .listed_at_zero
        .iter()
        .find(|n| reopened && !had(**n))
        .and_then(|n| {
            // The info LOG may show that no file was ingested since (see `infolog`).
            let log = match since.and_then(|p| p.number()).zip(now.number()) {
                Some((from, to)) => crate::infolog::no_ingestion_between(dir, from, to).err()?,
                None => "no MANIFEST is known for the previous backup".to_string(),
            };
            Some((n, log))
        })
    {
        Some(format!(
            "SST file {n:06}.sst is new since the previous backup and holds keys at sequence \
             number 0, which an ingestion (IngestExternalFile, no WAL record) or a compaction \
             into the last level writes; the database was opened again since, and the MANIFEST \
             that told which is gone, and the info LOG does not tell either: {log}"
        ))
    } else if let Some((_, n)) = edits.removed_alone.iter().find(|(cf, _)| drops(*cf)) {
        Some(format!(
            "SST file {n:06}.sst was removed from the database by its FIFO compaction; its keys \
             went without a WAL record"
        ))
    } else {
        gone.iter()
            .find(|n| reopened && !edits.removed.contains(n))
            .map(|n| {
                format!(
                    "SST file {n:06}.sst of the previous backup is gone, and a column family has \
                     FIFO compaction, which drops files with their keys (no WAL record); the \
                     database was opened again since, and the MANIFEST that told whether it was \
                     dropped is gone"
                )
            })
    };
    Ok((end, why))
}

/// The logical records of `bytes` (which start at offset `start` of the file, on a record's
/// start), and the offset after the last whole one. Unlike a WAL file's, a MANIFEST's records
/// may be of the recyclable types (their log number is not checked: a MANIFEST is never
/// recycled), and metadata records are skipped.
fn records(bytes: &[u8], start: u64) -> Result<(Vec<Record>, u64), String> {
    let block = logformat::BLOCK as u64;
    let mut out = Vec::new();
    let mut end = start;
    let mut pos = start;
    let mut assembler = Assembler::default();
    loop {
        let left = (block - pos % block) as usize;
        let at = (pos - start) as usize;
        let rest = bytes
            .get(at..bytes.len().min(at + left))
            .unwrap_or_default();
        let damage = |e| format!("record at byte {pos}: {e}");
        let (kind, payload, len) = match logformat::physical(rest, left).map_err(damage)? {
            Physical::Trailer => {
                pos += left as u64;
                continue;
            }
            Physical::End => break,
            Physical::Record { kind, payload, len } => (kind, payload, len),
        };
        let next = pos + len as u64;
        match kind {
            Kind::Data { piece, .. } => {
                if let Some(record) = assembler.add(pos, piece, payload).map_err(damage)? {
                    out.push(record);
                    end = next;
                }
            }
            // Compression and timestamp-size records (WAL only) and ignorable ones.
            Kind::Compression | Kind::TimestampSizes | Kind::Ignorable => {
                if !assembler.pending() {
                    end = next;
                }
            }
            Kind::Unknown(t) => return Err(damage(&format!("of unknown type {t}"))),
        }
        pos = next;
    }
    Ok((out, end))
}

/// The state a MANIFEST describes: what a secondary instance would recover from it, told
/// without opening RocksDB (a WAL-only incremental's view, see [`crate::walfiles`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// Column families by id (`default` is 0).
    pub(crate) cfs: std::collections::BTreeMap<u32, String>,
    /// Live SST files by number: their column family's id and smallest and largest user keys.
    pub(crate) files: std::collections::BTreeMap<u64, (u32, Vec<u8>, Vec<u8>)>,
    /// The last sequence number the MANIFEST records (keys flushed up to it).
    pub(crate) last_sequence: u64,
}

/// Replays every edit of MANIFEST `at.name` in `dir` up to byte `at.offset`: the column
/// families, live SST files and last sequence number at its last whole edit. Errors say why
/// it cannot be told (the caller then opens RocksDB instead).
pub(crate) fn replay(dir: &Path, at: &Position) -> Result<Replayed, String> {
    use std::io::Read;
    let path = dir.join(&at.name);
    let mut bytes = Vec::with_capacity(usize::try_from(at.offset).unwrap_or(0));
    std::fs::File::open(&path)
        .and_then(|f| f.take(at.offset).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (records, _) = records(&bytes, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut state = Replayed::default();
    state.cfs.insert(0, "default".to_string());
    for (offset, record) in records {
        let edit = parse_edit(&record)
            .map_err(|e| format!("{}: the edit at byte {offset}: {e}", path.display()))?;
        if let Some(name) = edit.cf_added {
            state.cfs.insert(edit.cf, name);
        }
        if edit.cf_dropped {
            state.cfs.remove(&edit.cf);
            state.files.retain(|_, (cf, _, _)| *cf != edit.cf);
            continue;
        }
        // Within an edit RocksDB removes before it adds: a file moved to another level is
        // removed from one and added to the other.
        for n in &edit.deleted {
            state.files.remove(n);
        }
        for (n, smallest, largest) in edit.new_files {
            state.files.insert(n, (edit.cf, smallest, largest));
        }
        if let Some(seq) = edit.last_sequence {
            state.last_sequence = state.last_sequence.max(seq);
        }
    }
    Ok(state)
}

/// What one version edit does to the set of files.
#[derive(Debug, Default, PartialEq, Eq)]
struct Edit {
    /// The added files: their numbers, smallest and largest user keys.
    new_files: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// The column family this edit adds, by name.
    cf_added: Option<String>,
    /// Whether it drops its column family.
    cf_dropped: bool,
    /// The last sequence number it records.
    last_sequence: Option<u64>,
    /// Added files whose smallest sequence number is 0 (or not recorded: LevelDB's tag).
    at_zero: Vec<u64>,
    deleted: Vec<u64>,
    log_number: bool,
    /// The column family's id (0, `default`, unless the edit names one).
    cf: u32,
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err("a number cut short".into())
    }

    fn slice(&mut self) -> Result<&'a [u8], String> {
        let len = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
        if len > self.0.len() {
            return Err("a field cut short".into());
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    /// Custom fields (a tag, then a length-prefixed value) up to the tag `end`.
    fn custom_fields(&mut self, end: u64) -> Result<(), String> {
        while self.varint()? != end {
            self.slice()?;
        }
        Ok(())
    }
}

/// The files a version edit adds and removes, and whether it names a log number.
fn parse_edit(bytes: &[u8]) -> Result<Edit, String> {
    let mut edit = Edit::default();
    let mut i = Input(bytes);
    while !i.0.is_empty() {
        let tag = i.varint()?;
        match tag {
            1 => {
                i.slice()?; // comparator
            }
            201 => {
                edit.cf_added = Some(String::from_utf8_lossy(i.slice()?).into_owned());
            }
            2 => {
                i.varint()?;
                edit.log_number = true;
            }
            4 => {
                edit.last_sequence = Some(i.varint()?);
            }
            200 => {
                edit.cf =
                    u32::try_from(i.varint()?).map_err(|_| "a column family id out of range")?;
            }
            // Next file number, previous log number, log number to keep, max column family,
            // atomic group.
            3 | 9 | 10 | 203 | 300 => {
                i.varint()?;
            }
            5 => {
                i.varint()?;
                i.slice()?;
            }
            6 => {
                i.varint()?;
                edit.deleted.push(i.varint()?);
            }
            // New file (LevelDB's): level, number, size, smallest and largest keys.
            7 | 100 | 102 | 103 => {
                i.varint()?;
                let number = i.varint()?;
                if tag == 102 {
                    i.varint()?; // path id
                }
                i.varint()?;
                // Internal keys: the user key and an 8-byte sequence number and type.
                let user_key = |k: &[u8]| k[..k.len().saturating_sub(8)].to_vec();
                let smallest_key = user_key(i.slice()?);
                let largest_key = user_key(i.slice()?);
                edit.new_files.push((number, smallest_key, largest_key));
                // Smallest and largest sequence numbers.
                let smallest = if tag != 7 {
                    let smallest = i.varint()?;
                    i.varint()?;
                    smallest
                } else {
                    0
                };
                if smallest == 0 {
                    edit.at_zero.push(number);
                }
                if tag == 103 {
                    i.custom_fields(1)?;
                }
            }
            202 => edit.cf_dropped = true,
            // Blob file added: number, count, bytes, checksum method and value, custom fields.
            400 | 8194 => {
                i.varint()?;
                i.varint()?;
                i.varint()?;
                i.slice()?;
                i.slice()?;
                i.custom_fields(0)?;
            }
            // Blob file garbage: number, count, bytes, custom fields.
            401 | 8195 => {
                i.varint()?;
                i.varint()?;
                i.varint()?;
                i.custom_fields(0)?;
            }
            // WAL added (the first encoding): number, then tagged sizes up to 1.
            8196 => {
                i.varint()?;
                loop {
                    match i.varint()? {
                        1 => break,
                        2 => {
                            i.varint()?;
                        }
                        t => return Err(format!("WAL addition field {t}")),
                    }
                }
            }
            8197 => {
                i.varint()?; // WAL deleted (the first encoding)
            }
            // Any other tag from 8192 (kTagSafeIgnoreMask) on is a length-prefixed value.
            t if t & 8192 != 0 => {
                i.slice()?;
            }
            t => return Err(format!("unknown tag {t}")),
        }
    }
    Ok(edit)
}

use crate::logformat::{self, Assembler, Kind, Physical, Record};

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn slice(out: &mut Vec<u8>, s: &[u8]) {
        varint(out, s.len() as u64);
        out.extend_from_slice(s);
    }

    fn new_file4(out: &mut Vec<u8>, number: u64, smallest_seqno: u64) {
        varint(out, 103);
        varint(out, 6);
        varint(out, number);
        varint(out, 1234);
        slice(out, b"a\x01\0\0\0\0\0\0\0");
        slice(out, b"z\x01\0\0\0\0\0\0\0");
        varint(out, smallest_seqno);
        varint(out, smallest_seqno + 9);
        varint(out, 5); // a custom field, then the end
        slice(out, b"xyz");
        varint(out, 1);
    }

    /// What [`since`] says, with no column family that drops files: the edits of `dir`'s
    /// MANIFEST `now` read from `from`, files `present` now and `had` by the previous backup,
    /// and the previous backup's files `gone`.
    fn why_since(
        dir: &Path,
        from: Option<&Position>,
        now: &Position,
        present: impl Fn(u64) -> bool,
        had: impl Fn(u64) -> bool,
        gone: &[u64],
    ) -> Option<String> {
        since(dir, from, now, (present, had, gone), |_| false)
            .expect("read")
            .1
    }

    /// One logical record, as `log::Writer` writes it (all the tests' records fit in their
    /// block).
    fn record(out: &mut Vec<u8>, payload: &[u8]) {
        out.extend(logformat::write(&[payload], out.len()));
    }

    #[test]
    fn edits_tell_ingestions_flushes_compactions_and_removals_apart() {
        let mut ingest = Vec::new();
        varint(&mut ingest, 200);
        varint(&mut ingest, 0);
        new_file4(&mut ingest, 17, 0);
        let mut flush = Vec::new();
        varint(&mut flush, 9);
        varint(&mut flush, 0);
        varint(&mut flush, 2);
        varint(&mut flush, 12);
        new_file4(&mut flush, 18, 40);
        let mut compaction = Vec::new();
        varint(&mut compaction, 6);
        varint(&mut compaction, 0);
        varint(&mut compaction, 17);
        new_file4(&mut compaction, 19, 0);
        let mut removal = Vec::new();
        varint(&mut removal, 6);
        varint(&mut removal, 6);
        varint(&mut removal, 19);
        varint(&mut removal, 8193); // a db id, ignorable
        slice(&mut removal, b"id");
        let mut file = Vec::new();
        for e in [&ingest, &flush, &compaction, &removal] {
            record(&mut file, e);
        }
        let whole = file.len() as u64;
        // Half a record more: left for the next reading.
        record(&mut file, &ingest);
        file.truncate(file.len() - 5);
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("MANIFEST-000005"), &file).expect("write");
        let edits = read(dir.path(), "MANIFEST-000005", 0, file.len() as u64).expect("read");
        assert_eq!(
            edits,
            Edits {
                added_alone: vec![17],
                removed_alone: vec![(0, 19)],
                removed: [17, 19].into(),
                listed_at_zero: vec![17],
                end: whole,
            }
        );
        // A file added by itself that the previous backup did not have is named, gone
        // (ingested, then compacted into another file) or there (an import, which no property
        // marks).
        let now = Position {
            name: "MANIFEST-000005".into(),
            offset: whole,
        };
        let d = dir.path();
        let why = why_since(d, None, &now, |_| true, |n| n != 17, &[]).expect("named");
        assert!(
            why.contains("000017.sst was added to the database by itself")
                && !why.contains("compacted"),
            "{why}"
        );
        let why = why_since(d, None, &now, |_| false, |n| n != 17, &[]);
        assert!(why.expect("named").contains("compacted into another file"));
        assert_eq!(why_since(d, None, &now, |_| true, |_| true, &[]), None);
        let older = Position {
            name: "MANIFEST-000004".into(),
            offset: 900,
        };
        let why = why_since(d, Some(&older), &now, |_| true, |n| n != 17, &[]);
        assert!(why.expect("named").contains("000017.sst"));
        // Read from the start (another MANIFEST than the previous backup's), a file at sequence
        // number 0 that the previous backup did not have is named, whether or not it is still
        // there. Read on in the same MANIFEST, a flush (it names a log number) at sequence
        // number 0 is not named: there the edits tell what came how.
        let mut flush0 = Vec::new();
        varint(&mut flush0, 2);
        varint(&mut flush0, 12);
        new_file4(&mut flush0, 20, 0);
        let mut other = Vec::new();
        record(&mut other, &ingest);
        let first = other.len() as u64;
        record(&mut other, &flush0);
        std::fs::write(d.join("MANIFEST-000006"), &other).expect("write");
        let now6 = Position {
            name: "MANIFEST-000006".into(),
            offset: other.len() as u64,
        };
        let same = Position {
            name: "MANIFEST-000006".into(),
            offset: first,
        };
        assert_eq!(
            why_since(d, Some(&same), &now6, |_| true, |_| false, &[]),
            None
        );
        let why = why_since(d, Some(&now), &now6, |_| true, |n| n == 17, &[]);
        assert!(why.expect("named").contains("000020.sst"));
        let why = why_since(d, Some(&now), &now6, |_| true, |_| true, &[9]);
        assert!(why
            .expect("named")
            .contains("000009.sst of the previous backup is gone"));
        assert_eq!(
            why_since(d, Some(&same), &now6, |_| true, |_| true, &[9]),
            None
        );
        // A file of the previous backup whose removal (a compaction's) is read is not named.
        assert_eq!(why_since(d, None, &now, |_| true, |_| true, &[19]), None);
        // From where it stopped, nothing more until the record is whole.
        let again = read(dir.path(), "MANIFEST-000005", whole, file.len() as u64).expect("read");
        assert_eq!(again.end, whole);
        assert!(again.added_alone.is_empty());
        // A flipped byte is an error, not an edit misread.
        file[10] ^= 1;
        std::fs::write(dir.path().join("MANIFEST-000005"), &file).expect("write");
        let e = read(dir.path(), "MANIFEST-000005", 0, whole).expect_err("damaged");
        assert!(e.contains("checksum"), "{e}");
        assert!(parse_edit(&[0x7f])
            .expect_err("unknown")
            .contains("unknown tag 127"));
        assert_eq!(
            Position::parse("MANIFEST-000005 77"),
            Some(Position {
                name: "MANIFEST-000005".into(),
                offset: 77
            })
        );
        assert_eq!(Position::parse("../x 77"), None);
    }
}
