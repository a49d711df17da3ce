//! A view: a snapshot (or a caught-up secondary instance) read by scans, and changes read from
//! the WAL, checked for gaps and for batches that were rolled back.

use crate::open::{cf, Cf};
use crate::options::{fifo_ids, StoreOptions};
use crate::{ingest, manifest, stored, wal, walfiles, Db, RocksBackend};
use backup_core::{
    Change, ChangeOp, Checkpoint, CollectionInfo, CollectionName, Error, Record, Result,
    StoreSchema, Value, View,
};
use rocksdb::{IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch};
use std::collections::BTreeMap;
use std::path::Path;

pub(crate) struct RocksView<'a> {
    pub(crate) backend: &'a RocksBackend,
    /// The snapshot; `None` on a secondary instance, which has no snapshots but changes only
    /// when it catches up with the primary, so plain reads between catch-ups are consistent.
    pub(crate) snapshot: Option<SnapshotWithThreadMode<'a, Db>>,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) cfs: Vec<(String, u32)>,
    /// The SST files the view holds (listed before its snapshot).
    pub(crate) ssts: ingest::SstFiles,
    /// The MANIFEST and its size when the view was taken (before its files were listed), or
    /// why it could not be told.
    pub(crate) manifest_at: std::result::Result<manifest::Position, String>,
    /// Where this run's reading of the MANIFEST stopped (after its last whole edit).
    pub(crate) manifest_end: Option<manifest::Position>,
    /// What a live backup's wait for this view found in the MANIFEST's edits.
    pub(crate) said: Option<String>,
    /// The OPTIONS file as of the view.
    pub(crate) options: Option<StoreOptions>,
    /// The WAL batch the previous backup read last (it ends at that backup's checkpoint), to
    /// be found again where the WAL still holds it ([`View::changes_outside_log`] sets it).
    pub(crate) verify: Option<WalBatch>,
    /// The WAL batch that ends at this view's checkpoint, where the changes' reading saw it.
    pub(crate) last_batch: Option<WalBatch>,
    /// A WAL-only view ([`StorageBackend::log_view`](backup_core::StorageBackend::log_view)): the WAL files it reads directly, listed
    /// when it was taken. `None`: the view reads through the database handle.
    pub(crate) wal_files: Option<Vec<walfiles::WalFile>>,
}

/// Where a view reads WAL batches from.
pub(crate) enum Batches {
    /// RocksDB's WAL iterator.
    Db(rocksdb::DBWALIterator),
    /// The WAL files, read directly.
    Files(walfiles::Batches),
}

/// Why the next batch could not be read.
pub(crate) enum BatchError {
    /// The WAL rotated under RocksDB's iterator: read again from where it stopped.
    TryAgain,
    /// RocksDB found the WAL damaged.
    Corruption(rocksdb::Error),
    /// Anything else (the WAL cannot be read).
    Other(String),
}

/// A batch's bytes as its source gives them (RocksDB's batch is not copied).
pub(crate) enum BatchData {
    Db(WriteBatch),
    Files(Vec<u8>),
}

impl std::ops::Deref for BatchData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            BatchData::Db(batch) => batch.data(),
            BatchData::Files(bytes) => bytes,
        }
    }
}

impl Iterator for Batches {
    type Item = std::result::Result<(u64, BatchData), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Batches::Db(iter) => Some(match iter.next()? {
                Ok((seq, batch)) => Ok((seq, BatchData::Db(batch))),
                Err(e) => Err(match e.kind() {
                    rocksdb::ErrorKind::TryAgain => BatchError::TryAgain,
                    rocksdb::ErrorKind::Corruption => BatchError::Corruption(e),
                    _ => BatchError::Other(e.to_string()),
                }),
            }),
            Batches::Files(files) => Some(
                files
                    .next()?
                    .map(|(seq, bytes)| (seq, BatchData::Files(bytes)))
                    .map_err(BatchError::Other),
            ),
        }
    }
}

/// A WAL batch as the store marks keep it: its first and last sequence numbers and the CRC32
/// of its bytes (`"start:end:crc32"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalBatch {
    start: u64,
    end: u64,
    crc: u32,
}

/// Why a run cannot read the WAL when the previous backup's last batch `was` is another now.
fn rolled_back(was: WalBatch) -> String {
    format!(
        "the WAL batch at sequence {}..{} is not the one the previous backup read: the database \
         went back to an older state (a copy of its directory put back, a disk snapshot) and was \
         written since, so changes the backup holds never happened in it",
        was.start, was.end
    )
}

/// The key of the WAL batch in RocksDB's store marks.
const BATCH_MARK: &str = "wal_batch";

/// The key of the MANIFEST position in RocksDB's store marks (`"MANIFEST-000012 4567"`).
const MANIFEST_MARK: &str = "manifest";

impl WalBatch {
    /// The batch starting at `start` whose bytes (`WriteBatch::data`) are `data`.
    fn of(start: u64, data: &[u8]) -> Self {
        let count = walfiles::batch_header(data).map_or(0, |(_, n)| n);
        WalBatch {
            start,
            end: start + count.max(1) - 1,
            crc: crc32fast::hash(data),
        }
    }

    fn parse(marks: Option<&serde_json::Value>) -> Option<Self> {
        let text = marks?.get(BATCH_MARK)?.as_str()?;
        let mut parts = text.split(':');
        let start = parts.next()?.parse().ok()?;
        let end = parts.next()?.parse().ok()?;
        let crc = u32::from_str_radix(parts.next()?, 16).ok()?;
        Some(WalBatch { start, end, crc })
    }

    fn text(&self) -> String {
        format!("{}:{}:{:08x}", self.start, self.end, self.crc)
    }

    /// Whether `batch`, the first the WAL gives after this one's start (at sequence `seq`),
    /// shows that this batch was replaced: it starts inside this one's range but is not it.
    /// One that starts after it is all the WAL still holds (older files purged).
    fn replaced_by(&self, seq: u64, data: &[u8]) -> bool {
        seq <= self.end && WalBatch::of(seq, data) != *self
    }
}

/// A run that read no WAL looks up the batch at its checkpoint only where the WAL files come to
/// at most this much (RocksDB's WAL iterator reads a file from its start to find a sequence).
const WAL_LOOKUP_BYTES: u64 = 16 << 20;

/// How far before the checkpoint that lookup starts, in sequence numbers: a batch larger than
/// this is not found, and not kept.
const WAL_LOOKBACK: u64 = 4096;

/// The total size of the WAL files in `dir` and its `archive/` (those kept by a WAL TTL).
fn wal_bytes(dir: &Path) -> u64 {
    [dir.to_path_buf(), dir.join("archive")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The files in `dir` named `prefix` and a decimal number (`OPTIONS-000018`,
/// `LOG.old.1796382670284372`), with their numbers, in the numbers' order.
pub(crate) fn numbered_files(
    dir: &Path,
    prefix: &str,
) -> std::io::Result<Vec<(u64, std::path::PathBuf)>> {
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix(prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort_unstable();
    Ok(files)
}

/// The files of `had` (the previous backup's or view's files) that are not among `now`, where
/// a column family has FIFO compaction (`fifo`; `None`: all may) and so may have dropped them
/// with their keys ([`manifest::since`] names one whose removal it cannot read).
pub(crate) fn gone(
    had: &std::collections::BTreeSet<u64>,
    now: &std::collections::BTreeSet<u64>,
    fifo: Option<&std::collections::BTreeSet<u32>>,
) -> Vec<u64> {
    if fifo.is_some_and(|f| f.is_empty()) {
        return Vec::new();
    }
    had.difference(now).copied().collect()
}

impl RocksView<'_> {
    /// Why the MANIFEST's edits since the backup that kept `previous` hold changes the WAL
    /// does not have (see [`manifest::since`]: files added alone, files removed alone, and
    /// after a reopen what the new MANIFEST and the info LOG tell). Notes where the reading
    /// stopped, for [`View::store_marks`].
    fn manifest_says(&mut self, previous: Option<&serde_json::Value>) -> Option<String> {
        let since = previous
            .and_then(|m| m.get(MANIFEST_MARK))
            .and_then(|v| v.as_str())
            .and_then(manifest::Position::parse);
        let had = ingest::SstFiles::numbers_in(previous);
        let now_files = self.ssts.numbers();
        // Removed files drop keys in FIFO column families (all when there is no OPTIONS file).
        let fifo = fifo_ids(self.options.as_ref(), &self.cfs);
        let gone = gone(&had, &now_files, fifo.as_ref());
        let read = self.manifest_at.clone().and_then(|now| {
            manifest::since(
                &self.backend.path,
                since.as_ref(),
                &now,
                (|n| now_files.contains(&n), |n| had.contains(&n), &gone),
                |cf| fifo.as_ref().is_none_or(|f| f.contains(&cf)),
            )
        });
        match read {
            Ok((end, why)) => {
                self.manifest_end = Some(end);
                why
            }
            Err(e) => Some(format!(
                "the MANIFEST could not be read to rule out SST files ingested or removed since \
                 the previous backup ({e})"
            )),
        }
    }

    /// The WAL batch that ends at `at`, read back from the WAL where it is small (see
    /// [`WAL_LOOKUP_BYTES`]); `None` where the WAL does not hold it (written without the WAL,
    /// purged) or was not read.
    fn batch_ending_at(&self, at: u64) -> Option<WalBatch> {
        let bytes = wal_bytes(&self.backend.path);
        if at == 0 || bytes == 0 || bytes > WAL_LOOKUP_BYTES {
            return None;
        }
        let iter = self.batches_since(at.saturating_sub(WAL_LOOKBACK)).ok()?;
        for item in iter {
            let (seq, data) = item.ok()?;
            if seq > at {
                break;
            }
            let b = WalBatch::of(seq, &data);
            if b.end >= at {
                return Some(b);
            }
        }
        None
    }

    /// The WAL's batches that start after sequence number `since`: from the WAL files for a
    /// WAL-only view, else through the database handle.
    pub(crate) fn batches_since(&self, since: u64) -> std::result::Result<Batches, String> {
        match &self.wal_files {
            Some(files) => Ok(Batches::Files(walfiles::batches(
                &self.backend.path,
                files,
                since,
            )?)),
            None => self
                .backend
                .handle()
                .map_err(|e| e.to_string())?
                .get_updates_since(since)
                .map(Batches::Db)
                .map_err(|e| e.to_string()),
        }
    }

    /// Refuses `what` in a WAL-only view, which reads no value from the database (the engine
    /// takes a view through the database for anything but the WAL's changes).
    fn not_wal_only(&self, what: &str) -> Result<()> {
        if self.wal_files.is_some() {
            return Err(Error::ChangesUnavailable {
                from: self.checkpoint.position,
                earliest: None,
                reason: format!("{what} needs the database, which a WAL-only view does not read"),
            });
        }
        Ok(())
    }

    fn unavailable(&self, from: &Checkpoint, reason: String) -> Error {
        Error::ChangesUnavailable {
            from: from.position,
            earliest: None,
            reason,
        }
    }

    /// The value of a key as of the view (resolves merges).
    fn value_at_view(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.not_wal_only("a merge operand's result")?;
        let db = self.backend.handle()?;
        let handle = cf(db, &self.backend.path, name)?;
        let got = match (&self.snapshot, &handle) {
            (Some(s), Cf::Default) => s.get(key),
            (Some(s), Cf::Named(h)) => s.get_cf(h, key),
            (None, Cf::Default) => db.get(key),
            (None, Cf::Named(h)) => db.get_cf(h, key),
        };
        got.map_err(|e| self.backend.err("reading a merged key", e))
    }
}

impl View for RocksView<'_> {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        Ok(self
            .cfs
            .iter()
            .map(|(name, id)| CollectionInfo {
                name: CollectionName::from_stored(name),
                // The id changes when a column family is dropped and re-created, which the
                // WAL alone would not show: the engine then takes a full backup.
                schema: serde_json::json!({ "cf_id": id }),
            })
            .collect())
    }

    fn store_schema(&mut self) -> Result<StoreSchema> {
        let options = self.options.clone().unwrap_or_default();
        Ok(StoreSchema(serde_json::json!({
            "rocksdb_version": options.version,
            "format_version": options.format,
            "compression": options.compression,
        })))
    }

    fn store_marks(
        &mut self,
        _previous: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        let mut marks = self.ssts.marks();
        // The batch that ends at the checkpoint: the one the reading saw last, the previous
        // backup's when the store has not moved since (and it was found again, or the WAL can
        // no longer say), or for a run that read no WAL (full, diff-based) the one the WAL
        // holds, where it is small enough to read for it.
        let at = self.checkpoint.position;
        let batch = self
            .last_batch
            .or_else(|| self.batch_ending_at(at))
            .filter(|b| b.end == at);
        if let Some(b) = batch {
            marks[BATCH_MARK] = serde_json::Value::String(b.text());
        }
        // Where the next backup starts reading the MANIFEST: where this one stopped, or (a run
        // that read none: full) after the edits there were when the view was taken.
        let end = self.manifest_end.clone().or_else(|| {
            let at = self.manifest_at.as_ref().ok()?;
            let edits = manifest::read(&self.backend.path, &at.name, 0, at.offset).ok()?;
            Some(manifest::Position {
                name: at.name.clone(),
                offset: edits.end,
            })
        });
        if let Some(end) = end {
            marks[MANIFEST_MARK] = serde_json::Value::String(end.text());
        }
        Ok(Some(marks))
    }

    fn changes_outside_log(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<String>> {
        self.verify = WalBatch::parse(previous);
        // Both, so that this run notes where it stopped reading the MANIFEST.
        let manifest = self.manifest_says(previous);
        Ok(self
            .ssts
            .ingested_since(&self.backend.path, previous)
            .or(manifest)
            .or_else(|| self.said.take()))
    }

    fn scans_in_key_order(&self) -> bool {
        // True with the default bytewise comparator; the engine checks the order as it goes, so
        // a custom comparator makes it fall back to a full backup, never a wrong diff.
        true
    }

    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        self.not_wal_only("a scan")?;
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        let db = self.backend.handle()?;
        let handle = cf(db, &self.backend.path, &stored(collection))?;
        let iter = match (&self.snapshot, &handle) {
            (Some(s), Cf::Default) => s.iterator_opt(IteratorMode::Start, opts),
            (Some(s), Cf::Named(h)) => s.iterator_cf_opt(h, opts, IteratorMode::Start),
            (None, Cf::Default) => db.iterator_opt(IteratorMode::Start, opts),
            (None, Cf::Named(h)) => db.iterator_cf_opt(h, opts, IteratorMode::Start),
        };
        for item in iter {
            let (k, v) = item.map_err(|e| self.backend.err("scanning", e))?;
            visit(Record {
                key: backup_core::Key(k.into_vec()),
                value: Value::Bytes(v.into_vec()),
            })?;
        }
        Ok(())
    }

    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        let to = self.checkpoint.position;
        if from.store_id != self.checkpoint.store_id {
            return Err(self.unavailable(
                from,
                format!(
                    "the checkpoint belongs to database {}, this is {}",
                    from.store_id, self.checkpoint.store_id
                ),
            ));
        }
        if from.position > to {
            return Err(self.unavailable(
                from,
                format!("the database is at sequence {to}, behind the checkpoint"),
            ));
        }
        if from.position == to {
            // Nothing new, unless the previous backup's last batch is another one now. A WAL
            // that cannot say (purged, unreadable) leaves it at nothing new.
            let checked = self
                .verify
                .take()
                .filter(|b| b.end == from.position && b.start >= 1);
            let replaced = checked.and_then(|was| {
                let mut iter = self.batches_since(was.start - 1).ok()?;
                let (seq, data) = iter.next()?.ok()?;
                was.replaced_by(seq, &data).then_some(was)
            });
            return match replaced {
                Some(was) => Err(self.unavailable(from, rolled_back(was))),
                None => {
                    self.last_batch = checked;
                    Ok(())
                }
            };
        }
        let names: BTreeMap<u32, String> =
            self.cfs.iter().map(|(n, id)| (*id, n.clone())).collect();
        let mut expected = from.position + 1;
        let mut out: Vec<Change> = Vec::with_capacity(batch_size.min(4096));
        let mut retries = 0;
        // The previous backup's last batch, read again first where the WAL still holds it: a
        // database put back from an older copy (or a disk snapshot) and written since has
        // other batches under the same sequence numbers.
        let mut verifying = self
            .verify
            .take()
            .filter(|b| b.end == from.position && b.start >= 1);
        'reopen: while expected <= to {
            let since = verifying.map_or(expected - 1, |b| b.start - 1);
            let iter = self
                .batches_since(since)
                .map_err(|e| self.unavailable(from, format!("the WAL cannot be read: {e}")))?;
            for item in iter {
                let (seq, data) = match item {
                    Ok(x) => x,
                    Err(BatchError::TryAgain) if retries < 5 => {
                        retries += 1; // the WAL rotated under the iterator: resume at the seam
                        continue 'reopen;
                    }
                    // A WAL-only view leaves what it cannot read to a view through RocksDB.
                    Err(BatchError::Corruption(e)) if self.wal_files.is_none() => {
                        return Err(self.backend.err("reading the WAL", e));
                    }
                    Err(BatchError::Corruption(e)) => {
                        return Err(self.unavailable(from, format!("reading the WAL: {e}")));
                    }
                    Err(BatchError::TryAgain) => {
                        return Err(
                            self.unavailable(from, "reading the WAL: it kept rotating".into())
                        );
                    }
                    Err(BatchError::Other(e)) => {
                        return Err(self.unavailable(from, format!("reading the WAL: {e}")));
                    }
                };
                if let Some(was) = verifying.take() {
                    if was.replaced_by(seq, &data) {
                        return Err(self.unavailable(from, rolled_back(was)));
                    }
                    if seq == was.start {
                        continue; // found again: its changes are in the previous backup
                    }
                }
                if seq > to {
                    break;
                }
                if seq != expected {
                    return Err(self.unavailable(
                        from,
                        format!(
                            "the WAL has a gap: sequence {expected} is missing (next batch starts at {seq}); \
                             WAL files were purged or writes skipped the WAL (keep WAL files \
                             with the application's wal_ttl_seconds / wal_size_limit_mb)"
                        ),
                    ));
                }
                let decoded = match wal::decode(&data) {
                    Ok(d) => d,
                    // A diff or a full backup would read the entity's default column alone and
                    // lose the others without a word: the backup stops instead (a WAL-only view
                    // leaves saying so to a view through RocksDB).
                    Err(e) if e.is_wide_column() && self.wal_files.is_none() => {
                        return Err(Error::BadInput {
                            path: self.backend.path.clone(),
                            cause: format!(
                                "the WAL batch at sequence {seq} holds a {e}: this database stores \
                                 wide-column entities, and RocksDB's C API, which tidemark reads \
                                 through, gives only an entity's default column, so a backup would \
                                 lose its other columns; tidemark does not back such databases up"
                            ),
                            source: None,
                        })
                    }
                    Err(e) => {
                        return Err(self.unavailable(
                            from,
                            format!("the WAL batch at sequence {seq} holds a {e}"),
                        ))
                    }
                };
                for (i, op) in decoded.ops.iter().enumerate() {
                    let position = seq + i as u64;
                    let (cf, key, op) = match *op {
                        wal::WalOp::Put(cf, k, v) => {
                            (cf, k, ChangeOp::Put(Value::Bytes(v.to_vec())))
                        }
                        wal::WalOp::Delete(cf, k) => (cf, k, ChangeOp::Delete),
                        wal::WalOp::Merge(cf, k) => {
                            let Some(name) = names.get(&cf) else { continue };
                            match self.value_at_view(name, k)? {
                                Some(v) => (cf, k, ChangeOp::Put(Value::Bytes(v))),
                                None => (cf, k, ChangeOp::Delete),
                            }
                        }
                        wal::WalOp::DeleteRange(cf, begin, end) => {
                            return Err(self.unavailable(
                                from,
                                format!(
                                    "a range deletion at sequence {position} (column family id {cf}, \
                                     {} .. {}) cannot be turned into keys from the WAL",
                                    backup_core::display_key(begin),
                                    backup_core::display_key(end)
                                ),
                            ));
                        }
                    };
                    // A column family that no longer exists: the engine drops it.
                    let Some(name) = names.get(&cf) else { continue };
                    out.push(Change {
                        position,
                        collection: CollectionName::from_stored(name),
                        key: backup_core::Key(key.to_vec()),
                        op,
                    });
                    if out.len() >= batch_size {
                        visit(std::mem::take(&mut out))?;
                    }
                }
                expected = seq + decoded.ops.len() as u64;
                if expected > to {
                    self.last_batch = Some(WalBatch::of(seq, &data));
                }
            }
            break;
        }
        if expected <= to {
            return Err(self.unavailable(
                from,
                format!(
                    "the WAL ends at sequence {}, before the snapshot's {to}: the application's RocksDB \
                     purged WAL files, or wrote without the WAL (disableWAL, or an SST file \
                     ingested over existing keys) (for change-log incrementals, keep WAL files \
                     with the application's wal_ttl_seconds / wal_size_limit_mb, or back up \
                     from inside it through RocksBackend::from_db)",
                    expected - 1
                ),
            ));
        }
        if !out.is_empty() {
            visit(out)?;
        }
        Ok(())
    }
}
