//! The backup engine: full, change-log incremental and diff-based incremental runs over any
//! [`StorageBackend`].
//!
//! A run tries, in order: an incremental from the change log (when the previous backup's
//! checkpoint is still reachable); a diff-based incremental (when the log cannot prove it is
//! complete, the store scans in key order and the previous backup kept key indexes: every record
//! is compared with the index by CRC32 and length, and only what differs is written); a full
//! backup. Whenever it does not use the log, it says why.

use crate::backend::{StorageBackend, View};
use crate::checkpoint::Checkpoint;
use crate::document::record_crc32;
use crate::error::{Error, Result};
use crate::folder::{collection_dir_name, FolderBackup, FolderRun, WriteEvent};
use crate::keyindex::{self, Entry, IndexBuilder, IndexWriter, KeyChanges, Layered, StateFiles};
use crate::manifest::{
    now_rfc3339, FolderManifest, ManifestCollection, RunKind, FOLDER_FORMAT, FOLDER_FORMAT_VERSION,
};
use crate::model::{
    Change, ChangeOp, CollectionInfo, CollectionName, Key, Record, StoreSchema, Value,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a backup run should proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackupMode {
    /// Incremental from the previous backup's checkpoint when possible, full otherwise.
    #[default]
    Auto,
    /// Always a full backup.
    Full,
}

/// How a run found what to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// It copied every record.
    Full,
    /// It read the store's change log since the previous checkpoint.
    ChangeLog,
    /// It compared every record with the previous backup's key index.
    Diff,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Full => "full",
            Method::ChangeLog => "incremental",
            Method::Diff => "incremental, diff-based",
        })
    }
}

/// Options of a backup run.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Full or automatic.
    pub mode: BackupMode,
    /// The most changes asked from the backend at once.
    pub batch_size: usize,
    /// Forget changes in the store's change log once the backup holds them.
    pub trim_changes: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            mode: BackupMode::Auto,
            batch_size: 1024,
            trim_changes: true,
        }
    }
}

/// Something a running backup reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message for the operator (e.g. why a full backup was taken instead of an incremental).
    Notice(String),
    /// A document was written or deleted.
    Written(WriteEvent),
    /// Progress through a collection.
    Progress {
        /// The collection being copied.
        collection: String,
        /// Records done so far in it.
        done: u64,
        /// Records in it, when known.
        total: Option<u64>,
    },
    /// Every record is read: what follows (changes made during the scan, the archive's last
    /// parts, the key state, syncing, the manifest) makes the backup durable.
    Finishing,
}

/// What a backup run did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// Full or incremental (as the manifest records it).
    pub kind: RunKind,
    /// How the run found what to write.
    pub method: Method,
    /// Why the change log was not used, when it was not.
    pub full_reason: Option<FullReason>,
    /// The checkpoint the backup now holds.
    pub checkpoint: Checkpoint,
    /// When the store was read at that checkpoint (RFC 3339, UTC): the backup holds the state
    /// the store had at this moment.
    pub captured_at: String,
    /// Records written (full: every record; incremental: the changed ones; a full folder
    /// backup refreshed in place: the records whose documents differed).
    pub records_written: u64,
    /// Records a full folder backup refreshed in place found in the backup exactly as they are
    /// in the store, and so did not write again (0 otherwise).
    pub records_unchanged: u64,
    /// Records deleted from the backup.
    pub records_deleted: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Records the backup holds in all.
    pub records_total: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// Why a run did not use the change log (and so took a full backup or a diff-based
/// incremental).
#[derive(Debug, Clone, PartialEq)]
pub enum FullReason {
    /// Nothing was backed up to this destination before.
    FirstBackup,
    /// The user asked for a full backup.
    Requested,
    /// What the previous backup left to continue from is damaged or missing (the cause).
    PreviousDamaged(String),
    /// The previous run was interrupted, so the backup may not match its manifest.
    Interrupted,
    /// The store reports no identity, so its change log cannot be matched.
    NoStoreIdentity,
    /// The store at the path is not the one backed up before (replaced or restored).
    StoreReplaced {
        /// The identity the backup holds.
        was: String,
        /// The store's identity now.
        now: String,
    },
    /// The store is behind the backup: it was rolled back.
    RolledBack {
        /// The store's position.
        store: u64,
        /// The backup's position.
        backup: u64,
    },
    /// A collection's schema changed.
    SchemaChanged(CollectionName),
    /// A collection's recorded schema changed, and the store says why that makes its change log
    /// unusable for it ([`View::schema_change`]).
    SchemaChangedBecause(CollectionName, String),
    /// The store cannot give the changes any more (the backend's explanation).
    ChangesUnavailable(String),
    /// After applying the changes, a collection's record count disagrees with the store's.
    CountMismatch {
        /// The collection.
        collection: CollectionName,
        /// Records in the store.
        store: u64,
        /// Records the backup would hold.
        backup: u64,
    },
    /// The newest archive is in an older archive format: a new chain starts in the current one.
    OlderArchiveFormat(u32),
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::FirstBackup => f.write_str("first backup in this directory"),
            FullReason::Requested => f.write_str("full backup requested"),
            FullReason::PreviousDamaged(why) => {
                write!(f, "the previous backup cannot be continued ({why})")
            }
            FullReason::Interrupted => f.write_str(
                "the previous run was interrupted (its documents may be newer than its \
                 manifest): a full backup replaces them",
            ),
            FullReason::NoStoreIdentity => {
                f.write_str("the store reports no identity, so its change log cannot be matched")
            }
            FullReason::StoreReplaced { was, now } => write!(
                f,
                "the store's identity changed ({was} → {now}): it was replaced or restored"
            ),
            FullReason::RolledBack { store, backup } => write!(
                f,
                "the store is behind the backup (position {store} < {backup}): it was rolled back"
            ),
            FullReason::SchemaChanged(c) => write!(f, "the schema of collection `{c}` changed"),
            FullReason::SchemaChangedBecause(c, why) => write!(f, "collection `{c}`: {why}"),
            FullReason::ChangesUnavailable(why) => f.write_str(why),
            FullReason::CountMismatch {
                collection,
                store,
                backup,
            } => write!(
                f,
                "collection `{collection}` holds {store} records but the change log accounts \
                 for {backup}"
            ),
            FullReason::OlderArchiveFormat(v) => write!(
                f,
                "the newest archive is in archive format {v}: a new chain starts in format {}",
                crate::archive::ARCHIVE_FORMAT_VERSION
            ),
        }
    }
}

/// Where a run writes: the folder format's run, or an archive being written. The engine
/// drives it with the records it reads; it never reads them back.
pub(crate) trait RunWriter {
    /// Makes sure a collection exists in the run.
    fn create_collection(&mut self, collection: &CollectionName) -> Result<()>;
    /// Removes a collection the store no longer has.
    fn drop_collection(&mut self, collection: &CollectionName);
    /// Writes one record (`entry`: its key-index entry, computed once by the engine).
    fn put(
        &mut self,
        collection: &CollectionName,
        record: Record,
        entry: Entry,
    ) -> Result<Option<WriteEvent>>;
    /// Deletes one key; `Ok(None)` when the writer knows the backup does not hold it.
    fn delete(
        &mut self,
        collection: &CollectionName,
        key: &Key,
    ) -> Result<Option<Option<WriteEvent>>>;
    /// From now on, writes replay changes made while the store was scanned (stores without
    /// snapshots): a key may be written again.
    fn replaying(&mut self) -> Result<()> {
        Ok(())
    }
    /// Hands everything written so far on to be stored (an archive's open parts go to its
    /// compressing workers), so that this work overlaps what the engine does next.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Records the backup holds in `collection` after the writes so far, when the writer
    /// counts them itself (otherwise the key index counts them).
    fn count(&self, collection: &CollectionName) -> Option<u64>;
    /// A new key index file for a collection: (name, path).
    fn new_index(&self, collection: &CollectionName, tag: &str) -> (String, std::path::PathBuf);
    /// The path of an existing key index file named in the previous state.
    fn index_path(&self, name: &str) -> std::path::PathBuf;
    /// Whether every collection needs a key index (also for stores that do not scan in key
    /// order): an archive cannot count its records or deletions otherwise.
    fn needs_index(&self) -> bool;
    /// Whether an incremental may write its key changes as a delta file over the previous key
    /// state (named in the manifest's `key_deltas`) instead of rewriting the index.
    fn index_deltas(&self) -> bool;
}

/// Starts runs of one destination.
pub(crate) trait Target {
    /// The run's writer.
    type Run: RunWriter;
    /// Starts a run of `kind` continuing `previous` (incrementals).
    fn begin(&self, kind: RunKind, previous: Option<&FolderManifest>) -> Result<Self::Run>;
}

impl RunWriter for FolderRun {
    fn create_collection(&mut self, collection: &CollectionName) -> Result<()> {
        FolderRun::create_collection(self, collection)
    }
    fn drop_collection(&mut self, collection: &CollectionName) {
        FolderRun::drop_collection(self, collection)
    }
    fn put(
        &mut self,
        collection: &CollectionName,
        record: Record,
        _: Entry,
    ) -> Result<Option<WriteEvent>> {
        FolderRun::put(self, collection, &record)
    }
    fn delete(
        &mut self,
        collection: &CollectionName,
        key: &Key,
    ) -> Result<Option<Option<WriteEvent>>> {
        Ok(FolderRun::delete(self, collection, key)?.map(Some))
    }
    fn count(&self, collection: &CollectionName) -> Option<u64> {
        Some(FolderRun::count(self, collection))
    }
    fn new_index(&self, collection: &CollectionName, tag: &str) -> (String, std::path::PathBuf) {
        FolderRun::new_index(self, collection, tag)
    }
    fn index_path(&self, name: &str) -> std::path::PathBuf {
        FolderRun::index_path(self, name)
    }
    fn needs_index(&self) -> bool {
        false
    }
    fn index_deltas(&self) -> bool {
        // A folder's manifest is read by earlier versions too: it keeps one index file.
        false
    }
}

impl Target for FolderBackup {
    type Run = FolderRun;
    fn begin(&self, kind: RunKind, previous: Option<&FolderManifest>) -> Result<FolderRun> {
        FolderBackup::begin(self, kind, previous)
    }
}

/// What one path of the engine produced.
pub(crate) struct Outcome<R> {
    pub(crate) run: R,
    pub(crate) method: Method,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) collections: Vec<CollectionInfo>,
    /// Per collection: its key state files (if kept) and the records the backup holds.
    pub(crate) indexes: BTreeMap<CollectionName, Option<IndexNames>>,
    pub(crate) counts: BTreeMap<CollectionName, u64>,
    pub(crate) written: u64,
    pub(crate) deleted: u64,
    /// Key state files written but not yet fsynced nor in place: made durable and put in
    /// place before the state that names them (an archive's with the archive itself, a
    /// folder's by [`crate::durable::commit_all`]).
    pub(crate) unsynced: Vec<crate::durable::Unsynced>,
}

/// A collection's key state as a manifest names it: its base index and the delta files over it
/// (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexNames {
    pub(crate) base: String,
    pub(crate) deltas: Vec<String>,
}

impl IndexNames {
    /// A base index alone.
    fn base(name: String) -> Self {
        IndexNames {
            base: name,
            deltas: Vec::new(),
        }
    }

    /// The key state a manifest names for one of its collections.
    fn of(c: &ManifestCollection) -> Option<Self> {
        c.key_index.as_ref().map(|base| IndexNames {
            base: base.clone(),
            deltas: c.key_deltas.clone(),
        })
    }
}

/// A collection's entry in a new manifest.
pub(crate) fn manifest_collection(
    c: &CollectionInfo,
    indexes: &BTreeMap<CollectionName, Option<IndexNames>>,
    counts: &BTreeMap<CollectionName, u64>,
) -> ManifestCollection {
    let index = indexes.get(&c.name).cloned().flatten();
    ManifestCollection {
        info: c.clone(),
        dir: collection_dir_name(&c.name),
        records: counts.get(&c.name).copied().unwrap_or(0),
        key_index: index.as_ref().map(|i| i.base.clone()),
        key_deltas: index.map(|i| i.deltas).unwrap_or_default(),
    }
}

/// A run the engine completed, ready for its destination to commit.
pub(crate) struct Completed<R> {
    pub(crate) outcome: Outcome<R>,
    pub(crate) reason: Option<FullReason>,
    pub(crate) captured_at: String,
    pub(crate) store_schema: crate::model::StoreSchema,
    /// What the store keeps for the next run's check of its change log ([`View::store_marks`]).
    pub(crate) store_marks: Option<serde_json::Value>,
}

/// Changes to apply to a collection's key index (`None` = deleted).
type IndexChanges = BTreeMap<CollectionName, KeyChanges>;

fn entry_of(record: &Record) -> Entry {
    let len = match &record.value {
        Value::Bytes(b) => b.len() as u64,
        Value::Row(_) => record.value.payload_len(),
    };
    Entry {
        crc32: record_crc32(record),
        len,
    }
}

/// Memory for sorting the key index of a store that does not scan in key order.
const INDEX_SORT_BUDGET: usize = 32 << 20;

/// Backs `backend` up into the folder backup at `dir`: see the module documentation for how a
/// run chooses between change log, diff and full.
pub fn backup_folder(
    backend: &dyn StorageBackend,
    dir: &Path,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<BackupSummary> {
    let started = Instant::now();
    // Before the lock, whose file would be left in a directory that is not ours.
    crate::destination::check_new_folder_destination(dir)?;
    let _lock = crate::lock::DestinationLock::acquire(dir, "backup")?;
    crate::destination::claim_format(dir, crate::destination::DestFormat::Folder)?;
    let folder = FolderBackup::open(dir)?;
    let previous = match folder.manifest() {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(FullReason::FirstBackup),
        // A damaged manifest must not fail every later run: a full backup replaces it.
        Err(e @ (Error::Manifest { .. } | Error::Damaged { .. })) => Err(
            FullReason::PreviousDamaged(format!("its manifest is damaged: {e}")),
        ),
        Err(e) => return Err(e),
    };
    let interrupted = folder.was_interrupted();
    let done = run(
        backend,
        &folder,
        previous.as_ref(),
        interrupted,
        options,
        events,
    )?;
    let Completed {
        outcome,
        reason,
        captured_at,
        store_schema,
        store_marks,
    } = done;
    let kind = outcome.method.kind();
    let now = now_rfc3339();
    let manifest = FolderManifest {
        format: FOLDER_FORMAT.into(),
        format_version: FOLDER_FORMAT_VERSION,
        store_kind: backend.kind(),
        source: backend.describe(),
        checkpoint: outcome.checkpoint.clone(),
        created_at: match (&previous, kind) {
            (Ok(p), RunKind::Incremental) => p.created_at.clone(),
            _ => now.clone(),
        },
        updated_at: now,
        last_run: kind,
        collections: outcome
            .collections
            .iter()
            .map(|c| manifest_collection(c, &outcome.indexes, &outcome.counts))
            .collect(),
        store_schema,
        store_marks,
    };
    let bytes_written = outcome.run.bytes_written();
    let unchanged = outcome.run.unchanged();
    crate::durable::commit_all(outcome.unsynced)?;
    let swept = outcome.run.commit(&manifest)?;
    trim(backend, options, &outcome.checkpoint, events);
    Ok(BackupSummary {
        kind,
        method: outcome.method,
        full_reason: reason,
        checkpoint: outcome.checkpoint,
        captured_at,
        records_written: outcome.written.saturating_sub(unchanged),
        records_unchanged: unchanged,
        records_deleted: outcome.deleted + swept,
        bytes_written,
        records_total: manifest.collections.iter().map(|c| c.records).sum(),
        elapsed: started.elapsed(),
    })
}

/// Lets the store forget changes the backup now holds (a failure is only reported).
pub(crate) fn trim(
    backend: &dyn StorageBackend,
    options: &BackupOptions,
    checkpoint: &Checkpoint,
    events: &mut dyn FnMut(Event),
) {
    if options.trim_changes {
        let started = std::time::Instant::now();
        if let Err(e) = backend.trim_changes(checkpoint) {
            events(Event::Notice(format!(
                "backup complete, but trimming the change log failed: {e}"
            )));
        }
        tracing::debug!(
            upto = checkpoint.position,
            seconds = started.elapsed().as_secs_f64(),
            "change log trimmed"
        );
    }
}

impl Method {
    /// What a run of this method is, as a manifest records it.
    pub fn kind(self) -> RunKind {
        match self {
            Method::Full => RunKind::Full,
            Method::ChangeLog | Method::Diff => RunKind::Incremental,
        }
    }
}

/// One run over any destination: the store is checked against the previous state once
/// (identity, position, schemas), then the change log, a diff or a full scan feeds `target`.
/// `previous` is the state to continue from, or why there is none.
pub(crate) fn run<T: Target>(
    backend: &dyn StorageBackend,
    target: &T,
    previous: std::result::Result<&FolderManifest, &FullReason>,
    interrupted: bool,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Completed<T::Run>> {
    let once = |events: &mut dyn FnMut(Event), one_snapshot| {
        run_once(
            backend,
            target,
            previous,
            interrupted,
            options,
            events,
            one_snapshot,
        )
    };
    match once(events, false) {
        // A scan in steps that its change log could not set right (an application changed the
        // schema meanwhile, say): once more, in one snapshot. The failed run left nothing.
        Err(Error::StepsUnsettled { store, reason }) => {
            events(Event::Notice(format!(
                "{store}: {reason}; reading it again in one snapshot"
            )));
            once(events, true)
        }
        other => other,
    }
}

/// [`run`], once; with `one_snapshot`, the views read everything in their one snapshot
/// ([`View::read_in_one_snapshot`]).
fn run_once<T: Target>(
    backend: &dyn StorageBackend,
    target: &T,
    previous: std::result::Result<&FolderManifest, &FullReason>,
    interrupted: bool,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
    one_snapshot: bool,
) -> Result<Completed<T::Run>> {
    // A view of the store, with what a run reads of it first.
    let open_view = || -> Result<Taken<'_>> {
        let mut view = backend.view()?;
        if one_snapshot {
            view.read_in_one_snapshot();
        }
        Taken::of(view)
    };
    if let Ok(p) = previous {
        if p.store_kind != backend.kind() {
            return Err(Error::BadInput {
                path: std::path::PathBuf::from(backend.describe()),
                cause: format!(
                    "the destination holds a backup of a {} store, not of {}",
                    p.store_kind,
                    backend.describe()
                ),
                source: None,
            });
        }
    }
    backend.prepare()?;
    let captured_at = now_rfc3339();
    // A run that means to be incremental reads through the backend's log-only view where it
    // has one (RocksDB: its WAL files, without opening the database); whatever that view
    // cannot take, a view of the store takes again from the start.
    let wants_log =
        previous.is_ok() && options.mode == BackupMode::Auto && !interrupted && !one_snapshot;
    let log_view = if wants_log { backend.log_view()? } else { None };
    let log_only = log_view.is_some();
    let mut taken = match log_view {
        Some(v) => Taken::of(v)?,
        None => open_view()?,
    };
    // The previous backup's marks, where it was of this same store.
    let previous_marks = previous
        .ok()
        .filter(|p| p.checkpoint.store_id == taken.start.store_id)
        .and_then(|p| p.store_marks.as_ref());
    let full_because = |reason: FullReason, events: &mut dyn FnMut(Event)| {
        if !matches!(reason, FullReason::FirstBackup | FullReason::Requested) {
            events(Event::Notice(format!("taking a full backup: {reason}")));
        }
        reason
    };

    // The store's marks, when an incremental asked for them before it let its snapshot go.
    let mut marks = EarlyMarks {
        previous: previous_marks,
        released_with: None,
    };
    // The previous backup to continue, or why this run is a full one.
    let continued = match (previous, options.mode) {
        (Err(reason), _) => Err(full_because(reason.clone(), events)),
        (Ok(_), BackupMode::Full) => Err(FullReason::Requested),
        (Ok(_), BackupMode::Auto) if interrupted => {
            Err(full_because(FullReason::Interrupted, events))
        }
        (Ok(prev), BackupMode::Auto) => Ok(prev),
    };
    let (outcome, reason) = match continued {
        Err(reason) => (
            full(
                target,
                taken.view.as_mut(),
                taken.collections,
                options,
                events,
            )?,
            Some(reason),
        ),
        Ok(prev) => {
            let mut attempt = try_incremental(
                target,
                prev,
                (taken.view.as_mut(), &taken.start, &taken.collections),
                options,
                events,
                &mut marks,
            )?;
            if let (Err(reason), true) = (&attempt, log_only) {
                tracing::debug!(%reason, "the log-only view cannot take the incremental: reading the store");
                marks.released_with = None;
                taken = open_view()?;
                attempt = try_incremental(
                    target,
                    prev,
                    (taken.view.as_mut(), &taken.start, &taken.collections),
                    options,
                    events,
                    &mut marks,
                )?;
            }
            match attempt {
                Ok(done) => (done, None),
                Err(reason) => {
                    // An incremental that let its snapshot go before it failed: whatever comes
                    // next reads a new one.
                    if marks.released_with.take().is_some() {
                        taken = open_view()?;
                    }
                    // A different store at the same path starts over with a full backup: a
                    // chain never mixes two databases.
                    let same_store = prev.checkpoint.store_id == taken.start.store_id;
                    let diffable = same_store
                        && (taken.view.scans_in_key_order() || taken.view.scans_alike())
                        && prev.collections.iter().all(|c| c.key_index.is_some());
                    let done = if diffable {
                        events(Event::Notice(format!(
                            "the change log cannot be used ({reason}): comparing every record \
                             with the previous backup (diff-based incremental)"
                        )));
                        let diffed = diff(
                            target,
                            prev,
                            taken.view.as_mut(),
                            taken.collections.clone(),
                            options,
                            events,
                        );
                        match diffed {
                            Ok(Ok(done)) => Some(done),
                            Ok(Err(why)) => {
                                events(Event::Notice(format!("diff not possible: {why}")));
                                None
                            }
                            // A damaged or missing key index is the backup's problem, not the
                            // store's: a full backup replaces it.
                            Err(e @ (Error::Damaged { .. } | Error::Io { .. })) => {
                                events(Event::Notice(format!("diff not possible: {e}")));
                                None
                            }
                            Err(e) => return Err(e),
                        }
                    } else {
                        None
                    };
                    match done {
                        Some(done) => (done, Some(reason)),
                        None => {
                            events(Event::Notice(format!(
                                "incremental backup not possible, taking a full backup: {reason}"
                            )));
                            (
                                full(
                                    target,
                                    taken.view.as_mut(),
                                    taken.collections,
                                    options,
                                    events,
                                )?,
                                Some(reason),
                            )
                        }
                    }
                }
            }
        }
    };
    // Asked last: a store may keep what its changes' reading saw (RocksDB: the WAL batch at
    // the checkpoint). An incremental that let the snapshot go asked before.
    let store_marks = match marks.released_with {
        Some(marks) => marks,
        None => taken.view.store_marks(previous_marks)?,
    };
    Ok(Completed {
        outcome,
        reason,
        captured_at,
        store_schema: taken.store_schema,
        store_marks,
    })
}

/// A view and what a run reads of it first: its checkpoint, collections and store schema.
struct Taken<'a> {
    view: Box<dyn View + 'a>,
    start: Checkpoint,
    collections: Vec<CollectionInfo>,
    store_schema: StoreSchema,
}

impl<'a> Taken<'a> {
    fn of(mut view: Box<dyn View + 'a>) -> Result<Self> {
        Ok(Taken {
            start: view.checkpoint().clone(),
            collections: view.collections()?,
            store_schema: view.store_schema()?,
            view,
        })
    }
}

/// An incremental over `prev` through `view` (at checkpoint `start`, with `collections`), or
/// why the change log cannot give one.
fn try_incremental<T: Target>(
    target: &T,
    prev: &FolderManifest,
    (view, start, collections): (&mut dyn View, &Checkpoint, &[CollectionInfo]),
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
    marks: &mut EarlyMarks<'_>,
) -> Result<std::result::Result<Outcome<T::Run>, FullReason>> {
    match log_unusable(prev, start, collections, view)? {
        Some(reason) => Ok(Err(reason)),
        None => incremental(target, prev, view, collections, options, events, marks),
    }
}

/// Why the change log cannot bring the previous backup up to `checkpoint`, if it cannot.
fn log_unusable(
    prev: &FolderManifest,
    checkpoint: &Checkpoint,
    collections: &[CollectionInfo],
    view: &mut dyn View,
) -> Result<Option<FullReason>> {
    if checkpoint.store_id.0.is_empty() {
        return Ok(Some(FullReason::NoStoreIdentity));
    }
    if prev.checkpoint.store_id != checkpoint.store_id {
        return Ok(Some(FullReason::StoreReplaced {
            was: prev.checkpoint.store_id.to_string(),
            now: checkpoint.store_id.to_string(),
        }));
    }
    if prev.checkpoint.position > checkpoint.position {
        return Ok(Some(FullReason::RolledBack {
            store: checkpoint.position,
            backup: prev.checkpoint.position,
        }));
    }
    for c in collections {
        if let Some(old) = prev.collections.iter().find(|p| p.info.name == c.name) {
            if old.info.schema != c.schema {
                return Ok(Some(match view.schema_change(c, &old.info.schema) {
                    Some(why) => FullReason::SchemaChangedBecause(c.name.clone(), why),
                    None => FullReason::SchemaChanged(c.name.clone()),
                }));
            }
        }
    }
    // Data that reached the store without passing through its log (a RocksDB file ingested
    // with sequence number 0) is in no change the log gives.
    Ok(view
        .changes_outside_log(prev.store_marks.as_ref())?
        .map(FullReason::ChangesUnavailable))
}

/// Applies the changes since the previous checkpoint. The inner `Err` is a reason to fall back;
/// the outer one a real failure.
///
/// Where the view's snapshot keeps the store's writers waiting
/// ([`View::snapshot_blocks_writers`]), the changes are read into memory first (up to
/// [`HELD_CHANGES_BYTES`]), the store's marks are asked (into `marks`) and the snapshot is let
/// go before anything is written to the destination.
fn incremental<T: Target>(
    target: &T,
    prev: &FolderManifest,
    view: &mut dyn View,
    collections: &[CollectionInfo],
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
    marks: &mut EarlyMarks<'_>,
) -> Result<Result<Outcome<T::Run>, FullReason>> {
    let mut run = incremental_run(target, prev, collections)?;
    for c in collections {
        run.create_collection(&c.name)?;
    }
    let track_index = view.scans_in_key_order() || run.needs_index();
    let mut index_changes = IndexChanges::new();
    let (mut written, mut deleted) = (0u64, 0u64);
    let from = prev.checkpoint.clone();
    let started = std::time::Instant::now();
    let mut held = view.snapshot_blocks_writers().then(HeldChanges::default);
    let applied = apply_changes(
        view,
        &from,
        collections,
        options,
        &mut run,
        track_index.then_some(&mut index_changes),
        &mut written,
        &mut deleted,
        events,
        held.as_mut(),
    );
    match applied {
        Ok(()) => {}
        Err(e @ Error::ChangesUnavailable { .. }) => {
            return Ok(Err(FullReason::ChangesUnavailable(e.to_string())))
        }
        Err(e) => return Err(e),
    }
    // The cross-check's counts (below), as of the snapshot.
    let store_counts = unseen_deletion_counts(view, collections)?;
    if let Some(held) = held.filter(|h| !h.overflowed) {
        marks.released_with = Some(view.store_marks(marks.previous)?);
        view.release()?;
        tracing::debug!(
            changes = held.changes,
            bytes = held.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "snapshot released"
        );
        let mut index = track_index.then_some(&mut index_changes);
        for batch in held.batches {
            apply_batch(
                batch,
                collections,
                &mut run,
                index.as_deref_mut(),
                (&mut written, &mut deleted),
                events,
            )?;
        }
    }
    tracing::debug!(
        written,
        deleted,
        seconds = started.elapsed().as_secs_f64(),
        "changes read"
    );
    let mut indexes = BTreeMap::new();
    let mut counts = BTreeMap::new();
    // Key states to update: (collection, old state, new file, how it is written).
    let mut rewrites = Vec::new();
    for c in collections {
        let before = prev.collections.iter().find(|p| p.info.name == c.name);
        let recorded = before.map(|p| p.records);
        // `None`: a new collection; `Some(None)`: one the previous backup kept no index for.
        let prior = before.map(IndexNames::of);
        let old = prior
            .as_ref()
            .and_then(Option::as_ref)
            .map(|n| state_files(&run, n));
        let unchanged = index_changes.get(&c.name).is_none_or(KeyChanges::is_empty);
        let index = match (track_index, prior) {
            // A collection no change touched keeps its key state as it is (the new state
            // names its files again): rewriting a million keys for nothing was most of the
            // time of an incremental that changed little.
            (true, Some(Some(names)))
                if unchanged && old.as_ref().is_some_and(StateFiles::exist) =>
            {
                counts.insert(c.name.clone(), recorded.unwrap_or(0));
                Some(names)
            }
            // A collection with a key state gets the changes as a delta file over it, until
            // the deltas grow enough to be folded into a new base (`keyindex::takes_delta`).
            (true, Some(Some(mut names)))
                if run.index_deltas() && old.as_ref().is_some_and(keyindex::takes_delta) =>
            {
                let (name, path) = run.new_index(&c.name, ".delta");
                names.deltas.push(name);
                let write = KeyWrite::Delta(recorded.unwrap_or(0));
                rewrites.push((c.name.clone(), old, path, write));
                Some(names)
            }
            // Otherwise (and for a new collection) a new base index. A destination that writes
            // deltas counts them from the recorded count, so folding them checks it.
            (true, Some(Some(_)) | None) => {
                let (name, path) = run.new_index(&c.name, "");
                let write = KeyWrite::Base(recorded.filter(|_| run.index_deltas()));
                rewrites.push((c.name.clone(), old, path, write));
                Some(IndexNames::base(name))
            }
            _ => None,
        };
        indexes.insert(c.name.clone(), index);
    }
    // The key states are written side by side, two per core, while the archive's last parts
    // compress: submitted first (up to four per core before a result is waited for), they do
    // not wait for the flush below, which waits for the compressors. Their fsyncs come later,
    // with the archive's (`Outcome::unsynced`).
    // Each job sorts its collection's changes itself, off the engine's thread.
    type Job = (Option<StateFiles>, std::path::PathBuf, KeyWrite, KeyChanges);
    let mut pipeline = crate::pipeline::Pipeline::new(
        (2 * crate::pipeline::default_threads()).min(rewrites.len()),
        || (),
        |(), (old, path, write, changes): Job| {
            let changes = changes.into_sorted();
            match (old, write) {
                (Some(old), KeyWrite::Delta(held)) => {
                    keyindex::write_delta(&old, &path, &changes, held)
                }
                (Some(old), KeyWrite::Base(Some(held))) => {
                    keyindex::fold_changes(&old, &path, &changes, held)
                }
                (old, _) => keyindex::apply_changes(old.as_ref(), &path, &changes),
            }
        },
    );
    let mut rewritten = Vec::with_capacity(rewrites.len());
    // Written but not yet fsynced: the archive's finish overlaps their fsyncs.
    let mut unsynced = Vec::with_capacity(rewrites.len());
    for (name, old, path, write) in &rewrites {
        let changes = index_changes.remove(name).unwrap_or_default();
        let job = (old.clone(), path.clone(), *write, changes);
        pipeline.submit(job, &mut |n| {
            rewritten.push(n);
            Ok(())
        })?;
    }
    run.flush()?;
    pipeline.finish(&mut |n| {
        rewritten.push(n);
        Ok(())
    })?;
    tracing::debug!(
        files = rewrites.len(),
        seconds = started.elapsed().as_secs_f64(),
        "key states written"
    );
    for ((name, ..), n) in rewrites.iter().zip(rewritten) {
        match n {
            Ok((n, file)) => {
                counts.insert(name.clone(), n);
                unsynced.push(file);
            }
            // The previous backup's key index is working state: damaged or missing, a full
            // backup replaces it.
            Err(e @ (Error::Damaged { .. } | Error::Io { .. })) => {
                return Ok(Err(FullReason::PreviousDamaged(format!(
                    "a key index is unusable: {e}"
                ))))
            }
            Err(e) => return Err(e),
        }
    }
    for c in collections {
        if let Some(n) = run.count(&c.name) {
            counts.insert(c.name.clone(), n);
        }
    }
    // Cross-check: where the store's capture can miss a deletion (e.g. SQLite's REPLACE
    // removing a row on a UNIQUE conflict without firing delete triggers) and the store counts
    // cheaply, the backup must now hold as many records as the store.
    for (name, n) in store_counts {
        let have = counts.get(&name).copied().unwrap_or(0);
        if n != have {
            return Ok(Err(FullReason::CountMismatch {
                collection: name,
                store: n,
                backup: have,
            }));
        }
    }
    Ok(Ok(Outcome {
        run,
        method: Method::ChangeLog,
        checkpoint: view.checkpoint().clone(),
        collections: collections.to_vec(),
        indexes,
        counts,
        written,
        deleted,
        unsynced,
    }))
}

/// The store's marks ([`View::store_marks`]) as an incremental asks for them before it lets
/// the view's snapshot go: the run asks no more of the view then.
struct EarlyMarks<'a> {
    /// What the destination's previous backup of this store kept.
    previous: Option<&'a serde_json::Value>,
    /// Set once the snapshot was let go: the marks asked just before.
    released_with: Option<Option<serde_json::Value>>,
}

/// How an incremental writes a collection's key state.
#[derive(Debug, Clone, Copy)]
enum KeyWrite {
    /// A delta file over the old state, which was recorded with this many keys.
    Delta(u64),
    /// A new base index: the old state (if any) with the changes folded in; where a count was
    /// recorded with it (destinations that write deltas), the old state must hold as many keys.
    Base(Option<u64>),
}

/// The files of a collection's key state in the previous backup, if it kept one.
fn old_state<R: RunWriter>(
    run: &R,
    prev: &FolderManifest,
    collection: &CollectionName,
) -> Option<StateFiles> {
    let c = prev
        .collections
        .iter()
        .find(|p| &p.info.name == collection)?;
    Some(state_files(run, &IndexNames::of(c)?))
}

/// Where the files a manifest names for a key state are.
fn state_files<R: RunWriter>(run: &R, names: &IndexNames) -> StateFiles {
    StateFiles {
        base: run.index_path(&names.base),
        deltas: names.deltas.iter().map(|d| run.index_path(d)).collect(),
    }
}

/// The most bytes of changes (keys and values) an incremental holds in memory to let the
/// store's snapshot go before it writes them ([`View::snapshot_blocks_writers`]); past it, the
/// changes are written as they come and the snapshot is held to the end.
const HELD_CHANGES_BYTES: usize = 32 << 20;

/// An incremental's changes held in memory until the store's snapshot is let go.
#[derive(Default)]
struct HeldChanges {
    batches: Vec<Vec<Change>>,
    changes: usize,
    bytes: usize,
    /// Past [`HELD_CHANGES_BYTES`]: what was held has been written, the rest streams.
    overflowed: bool,
}

/// What `change` costs held in memory, about.
fn held_bytes(change: &Change) -> usize {
    let value = match &change.op {
        ChangeOp::Put(v) => v.payload_len() as usize,
        ChangeOp::Delete => 0,
    };
    std::mem::size_of::<Change>() + change.key.0.len() + value
}

/// The records the store holds, as of the view's snapshot, in each collection whose deletions
/// its change capture can miss and that it counts cheaply (the incremental's cross-check).
fn unseen_deletion_counts(
    view: &mut dyn View,
    collections: &[CollectionInfo],
) -> Result<BTreeMap<CollectionName, u64>> {
    let mut counts = BTreeMap::new();
    for c in collections {
        if view.deletions_may_go_unseen(&c.name)? {
            if let Some(n) = view.count(&c.name)? {
                counts.insert(c.name.clone(), n);
            }
        }
    }
    Ok(counts)
}

/// Streams the changes after `from` into the run (and the index changes, when kept); with
/// `held`, into it instead while they stay under [`HELD_CHANGES_BYTES`].
#[allow(clippy::too_many_arguments)]
fn apply_changes<R: RunWriter>(
    view: &mut dyn View,
    from: &Checkpoint,
    collections: &[CollectionInfo],
    options: &BackupOptions,
    run: &mut R,
    mut index: Option<&mut IndexChanges>,
    written: &mut u64,
    deleted: &mut u64,
    events: &mut dyn FnMut(Event),
    mut held: Option<&mut HeldChanges>,
) -> Result<()> {
    view.changes_since(from, options.batch_size, &mut |batch| {
        let ready = match held.as_deref_mut().filter(|h| !h.overflowed) {
            None => vec![batch],
            Some(h) => {
                h.changes += batch.len();
                h.bytes += batch.iter().map(held_bytes).sum::<usize>();
                h.batches.push(batch);
                if h.bytes <= HELD_CHANGES_BYTES {
                    return Ok(());
                }
                // Past the bound: what was held is written, and the rest streams.
                h.overflowed = true;
                std::mem::take(&mut h.batches)
            }
        };
        for batch in ready {
            apply_batch(
                batch,
                collections,
                run,
                index.as_deref_mut(),
                (written, deleted),
                events,
            )?;
        }
        Ok(())
    })
}

/// Writes a batch of changes into the run (and the index changes, when kept), counting the
/// records written and deleted.
fn apply_batch<R: RunWriter>(
    batch: Vec<Change>,
    collections: &[CollectionInfo],
    run: &mut R,
    mut index: Option<&mut IndexChanges>,
    (written, deleted): (&mut u64, &mut u64),
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    for change in batch {
        if !collections.iter().any(|c| c.name == change.collection) {
            continue; // the collection was dropped later; the run drops it
        }
        match change.op {
            ChangeOp::Put(value) => {
                let record = Record {
                    key: change.key,
                    value,
                };
                let entry = entry_of(&record);
                if let Some(ix) = index.as_deref_mut() {
                    changes_of(ix, &change.collection).push(record.key.0.clone(), Some(entry));
                }
                if let Some(ev) = run.put(&change.collection, record, entry)? {
                    events(Event::Written(ev));
                }
                *written += 1;
            }
            ChangeOp::Delete => {
                if let Some(ev) = run.delete(&change.collection, &change.key)? {
                    if let Some(ev) = ev {
                        events(Event::Written(ev));
                    }
                    *deleted += 1;
                }
                if let Some(ix) = index.as_deref_mut() {
                    changes_of(ix, &change.collection).push(change.key.0, None);
                }
            }
        }
    }
    Ok(())
}

/// `collection`'s changes in `index` (its name is cloned only for its first change).
fn changes_of<'a>(index: &'a mut IndexChanges, collection: &CollectionName) -> &'a mut KeyChanges {
    if !index.contains_key(collection) {
        index.insert(collection.clone(), KeyChanges::default());
    }
    index.get_mut(collection).expect("inserted")
}

/// For stores without snapshots: after the scans, replays the changes written meanwhile so the
/// run is exactly the state at the view's new checkpoint. Returns the (refreshed) collections.
#[allow(clippy::too_many_arguments)]
fn settle<R: RunWriter>(
    view: &mut dyn View,
    start: &Checkpoint,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    run: &mut R,
    index: &mut IndexChanges,
    written: &mut u64,
    deleted: &mut u64,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<CollectionInfo>> {
    events(Event::Finishing);
    if !view.settle()? {
        return Ok(collections);
    }
    run.replaying()?;
    let now = view.collections()?;
    for c in &now {
        run.create_collection(&c.name)?;
    }
    for c in &collections {
        if !now.iter().any(|n| n.name == c.name) {
            run.drop_collection(&c.name);
        }
    }
    apply_changes(
        view,
        start,
        &now,
        options,
        run,
        Some(index),
        written,
        deleted,
        events,
        None,
    )?;
    Ok(now)
}

/// Finishes a collection's scan index: renames it into place, or merges the changes replayed
/// after the scan into it. Returns its name and key count.
fn finish_index<R: RunWriter>(
    run: &R,
    collection: &CollectionName,
    scanned: Option<(String, std::path::PathBuf, u64)>,
    replayed: Option<KeyChanges>,
) -> Result<Option<(String, u64)>> {
    let changes = replayed.unwrap_or_default().into_sorted();
    match scanned {
        Some((_, path, n)) if changes.is_empty() => {
            let (final_name, final_path) = run.new_index(collection, "");
            crate::durable::rename(&path, &final_path)?;
            Ok(Some((final_name, n)))
        }
        Some((_, path, _)) => {
            let (final_name, final_path) = run.new_index(collection, "");
            let n = keyindex::commit(keyindex::apply_changes(
                Some(&StateFiles::base(&path)),
                &final_path,
                &changes,
            )?)?;
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            Ok(Some((final_name, n)))
        }
        None => Ok(None),
    }
}

/// Records each finished index and the counts of a run's collections.
fn record_index<R: RunWriter>(
    run: &R,
    c: &CollectionName,
    index: Option<(String, u64)>,
    indexes: &mut BTreeMap<CollectionName, Option<IndexNames>>,
    counts: &mut BTreeMap<CollectionName, u64>,
) {
    let n = run
        .count(c)
        .or(index.as_ref().map(|(_, n)| *n))
        .unwrap_or(0);
    counts.insert(c.clone(), n);
    indexes.insert(c.clone(), index.map(|(name, _)| IndexNames::base(name)));
}

fn full<T: Target>(
    target: &T,
    view: &mut dyn View,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Outcome<T::Run>> {
    let start = view.checkpoint().clone();
    let mut run = target.begin(RunKind::Full, None)?;
    let indexed = view.scans_in_key_order() || run.needs_index();
    let mut written = 0u64;
    let mut scanned = BTreeMap::new();
    for c in &collections {
        run.create_collection(&c.name)?;
        let total = view.count(&c.name)?;
        events(Event::Progress {
            collection: c.name.to_string(),
            done: 0,
            total,
        });
        let (name, path) = run.new_index(&c.name, ".scan");
        let mut index = if indexed {
            Some(IndexBuilder::create(&path, INDEX_SORT_BUDGET)?)
        } else {
            None
        };
        let mut done = 0u64;
        view.scan(&c.name, &mut |record| {
            let entry = entry_of(&record);
            if let Some(b) = index.as_mut() {
                b.push(record.key.as_bytes(), entry)?;
            }
            if let Some(ev) = run.put(&c.name, record, entry)? {
                events(Event::Written(ev));
            }
            done += 1;
            if done % 10_000 == 0 {
                events(Event::Progress {
                    collection: c.name.to_string(),
                    done,
                    total,
                });
            }
            Ok(())
        })?;
        events(Event::Progress {
            collection: c.name.to_string(),
            done,
            total: Some(done),
        });
        written += done;
        let finished = match index {
            Some(b) => Some((name, path.clone(), b.finish()?)),
            None => None,
        };
        scanned.insert(c.name.clone(), finished);
    }
    let mut replayed = IndexChanges::new();
    let mut deleted = 0;
    let collections = settle(
        view,
        &start,
        collections,
        options,
        &mut run,
        &mut replayed,
        &mut written,
        &mut deleted,
        events,
    )?;
    let mut indexes = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for c in &collections {
        // A collection that appeared during the scan has only replayed changes.
        let index = match scanned.remove(&c.name) {
            Some(s) => finish_index(&run, &c.name, s, replayed.remove(&c.name))?,
            None if indexed => finish_index(
                &run,
                &c.name,
                Some(empty_index(&run, &c.name)?),
                replayed.remove(&c.name),
            )?,
            None => None,
        };
        record_index(&run, &c.name, index, &mut indexes, &mut counts);
    }
    Ok(Outcome {
        run,
        method: Method::Full,
        checkpoint: view.checkpoint().clone(),
        collections,
        indexes,
        counts,
        written,
        deleted: 0,
        unsynced: Vec::new(),
    })
}

fn empty_index<R: RunWriter>(
    run: &R,
    c: &CollectionName,
) -> Result<(String, std::path::PathBuf, u64)> {
    let (name, path) = run.new_index(c, ".scan");
    IndexWriter::create(&path)?.finish()?;
    Ok((name, path, 0))
}

/// An incremental run over `prev`, with the collections the store no longer has dropped.
fn incremental_run<T: Target>(
    target: &T,
    prev: &FolderManifest,
    collections: &[CollectionInfo],
) -> Result<T::Run> {
    let mut run = target.begin(RunKind::Incremental, Some(prev))?;
    for old in &prev.collections {
        if !collections.iter().any(|c| c.name == old.info.name) {
            run.drop_collection(&old.info.name);
        }
    }
    Ok(run)
}

/// Deletes `key` of `collection` in `run` (a diff found it gone), counting it in `deleted`
/// when the backup held it.
fn delete_gone<R: RunWriter>(
    run: &mut R,
    collection: &CollectionName,
    key: Vec<u8>,
    deleted: &mut u64,
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    if let Some(ev) = run.delete(collection, &Key(key))? {
        if let Some(ev) = ev {
            events(Event::Written(ev));
        }
        *deleted += 1;
    }
    Ok(())
}

/// What a diff has written and deleted so far.
#[derive(Default)]
struct Tally {
    written: u64,
    deleted: u64,
}

/// A collection's new key state as a diff leaves it: its name, its file and its key count.
type Scanned = (String, std::path::PathBuf, u64);

/// The diff-based incremental: compares every collection with the previous backup's key index
/// and writes only records whose CRC32 or length differ, deleting keys the store no longer
/// has: in one scan where the view scans in key order ([`compare_in_order`]), else in two
/// ([`compare_in_two_scans`], for a view that scans alike twice). The inner `Err` is a reason
/// to fall back to a full backup.
fn diff<T: Target>(
    target: &T,
    prev: &FolderManifest,
    view: &mut dyn View,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Outcome<T::Run>, String>> {
    let start = view.checkpoint().clone();
    let in_order = view.scans_in_key_order();
    let mut run = incremental_run(target, prev, &collections)?;
    let mut tally = Tally::default();
    let mut scanned = BTreeMap::new();
    for c in &collections {
        run.create_collection(&c.name)?;
        let old = match old_state(&run, prev, &c.name) {
            Some(state) => Some(Layered::open(&state)?),
            None => None,
        };
        let compare = if in_order {
            compare_in_order
        } else {
            compare_in_two_scans
        };
        match compare(&mut run, view, &c.name, old, &mut tally, events)? {
            Ok(s) => scanned.insert(c.name.clone(), s),
            Err(why) => return Ok(Err(why)),
        };
    }
    let mut replayed = IndexChanges::new();
    let collections = settle(
        view,
        &start,
        collections,
        options,
        &mut run,
        &mut replayed,
        &mut tally.written,
        &mut tally.deleted,
        events,
    )?;
    let mut indexes = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for c in &collections {
        let s = match scanned.remove(&c.name) {
            Some(s) => s,
            None => empty_index(&run, &c.name)?,
        };
        let index = finish_index(&run, &c.name, Some(s), replayed.remove(&c.name))?;
        record_index(&run, &c.name, index, &mut indexes, &mut counts);
    }
    Ok(Ok(Outcome {
        run,
        method: Method::Diff,
        checkpoint: view.checkpoint().clone(),
        collections,
        indexes,
        counts,
        written: tally.written,
        deleted: tally.deleted,
        unsynced: Vec::new(),
    }))
}

/// [`diff`]'s comparison of collection `c` in one key-ordered scan, merged as it goes with the
/// previous key state `old`: the collection's new key state, or why the diff cannot be taken.
fn compare_in_order<R: RunWriter>(
    run: &mut R,
    view: &mut dyn View,
    c: &CollectionName,
    mut old: Option<Layered>,
    tally: &mut Tally,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Scanned, String>> {
    let mut pending = next_of(&mut old)?;
    let (name, path) = run.new_index(c, ".scan");
    let mut index = IndexWriter::create(&path)?;
    let mut out_of_order = false;
    view.scan(c, &mut |record| {
        if out_of_order {
            return Ok(());
        }
        let entry = entry_of(&record);
        if !index.push(record.key.as_bytes(), entry)? {
            out_of_order = true;
            return Ok(());
        }
        // Keys of the old index before this one are gone from the store.
        while let Some((k, _)) = pending
            .as_ref()
            .filter(|(k, _)| k.as_slice() < record.key.as_bytes())
        {
            delete_gone(run, c, k.clone(), &mut tally.deleted, events)?;
            pending = next_of(&mut old)?;
        }
        let unchanged = match &pending {
            Some((k, e)) if k.as_slice() == record.key.as_bytes() => {
                let same = *e == entry;
                pending = next_of(&mut old)?;
                same
            }
            _ => false,
        };
        if !unchanged {
            if let Some(ev) = run.put(c, record, entry)? {
                events(Event::Written(ev));
            }
            tally.written += 1;
        }
        Ok(())
    })?;
    if out_of_order {
        index.abandon();
        return Ok(Err(format!(
            "the store did not return collection `{c}` in key order"
        )));
    }
    while let Some((k, _)) = pending {
        delete_gone(run, c, k, &mut tally.deleted, events)?;
        pending = next_of(&mut old)?;
    }
    let n = index.finish()?;
    Ok(Ok((name, path, n)))
}

/// The most bytes of changed keys a diff in two scans ([`compare_in_two_scans`]) keeps
/// between them: a change larger than that is taken as a full backup.
const DIFF_CHANGED_BUDGET: usize = 64 << 20;

/// A diff in two readings looks the changed records up ([`View::lookup`]) when they are at most
/// one in this many of the collection's, and scans it again when more.
const LOOKUP_SHARE: u64 = 8;

/// [`diff`]'s comparison of collection `c` through a view that does not scan in key order but
/// scans alike twice ([`View::scans_alike`]: SQLite without a usable change log). A first scan
/// sorts the keys and their entries into the new key state (an external sort, as a full
/// backup's), and merged with the previous backup's key state `old` it gives the keys deleted
/// (written at once) and those added or changed (kept in memory with their entries, up to
/// [`DIFF_CHANGED_BUDGET`]); their records are then looked up ([`View::lookup`]; when they are
/// few, [`LOOKUP_SHARE`]) or read in a second scan, and written. A record of this second
/// reading whose entry is not the first scan's, one it gives twice, or a changed key it does
/// not meet means the two readings differed, and the run is given up (a full backup follows),
/// never recorded half.
fn compare_in_two_scans<R: RunWriter>(
    run: &mut R,
    view: &mut dyn View,
    c: &CollectionName,
    mut old: Option<Layered>,
    tally: &mut Tally,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Scanned, String>> {
    let (name, path) = run.new_index(c, ".scan");
    let mut sorted = IndexBuilder::create(&path, INDEX_SORT_BUDGET)?;
    view.scan(c, &mut |record| {
        sorted.push(record.key.as_bytes(), entry_of(&record))
    })?;
    let n = sorted.finish()?;
    // The new key state against the old one, both in key order.
    let mut now = Some(Layered::open(&StateFiles::base(&path))?);
    // Each changed key's entry, and whether the second reading met it.
    let mut changed: std::collections::HashMap<Vec<u8>, (Entry, std::cell::Cell<bool>)> =
        Default::default();
    let mut held = 0usize;
    let (mut a, mut b) = (next_of(&mut now)?, next_of(&mut old)?);
    loop {
        let order = match (&a, &b) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            std::cmp::Ordering::Greater => {
                let (k, _) = b.take().expect("compared");
                delete_gone(run, c, k, &mut tally.deleted, events)?;
                b = next_of(&mut old)?;
            }
            order => {
                let (k, e) = a.take().expect("compared");
                let same = order == std::cmp::Ordering::Equal
                    && b.as_ref().is_some_and(|(_, old)| *old == e);
                if order == std::cmp::Ordering::Equal {
                    b = next_of(&mut old)?;
                }
                if !same {
                    held += k.len() + 64;
                    if held > DIFF_CHANGED_BUDGET {
                        drop(now);
                        let _ = std::fs::remove_file(&path);
                        return Ok(Err(format!(
                            "more of collection `{c}` changed than a diff keeps in memory"
                        )));
                    }
                    changed.insert(k, (e, std::cell::Cell::new(false)));
                }
                a = next_of(&mut now)?;
            }
        }
    }
    drop(now);
    let mut differed = false;
    let mut met = 0usize;
    if !changed.is_empty() {
        let mut write = |record: Record| {
            let Some((want, seen)) = changed.get(record.key.as_bytes()) else {
                return Ok(());
            };
            let entry = entry_of(&record);
            if entry != *want || seen.replace(true) {
                differed = true;
                return Ok(());
            }
            met += 1;
            if let Some(ev) = run.put(c, record, entry)? {
                events(Event::Written(ev));
            }
            tally.written += 1;
            Ok(())
        };
        // The changed records looked up where the view can, when they are few: SQLite looks up
        // a row in about 2 µs and scans one in about 0.3, and of 1M rows 5% changed took 0.58 s
        // looked up against 0.78 scanned, 30% 1.11 against 1.02.
        let few = (changed.len() as u64).saturating_mul(LOOKUP_SHARE) <= n;
        let mut keys = changed.keys().map(Vec::as_slice);
        if !(few && view.lookup(c, &mut keys, &mut write)?) {
            view.scan(c, &mut write)?;
        }
    }
    if differed || met != changed.len() {
        let _ = std::fs::remove_file(&path);
        return Ok(Err(format!(
            "collection `{c}` read differently in the diff's two scans"
        )));
    }
    Ok(Ok((name, path, n)))
}

/// The next entry of an optional index reader.
fn next_of(r: &mut Option<Layered>) -> Result<Option<(Vec<u8>, Entry)>> {
    match r.as_mut() {
        Some(r) => r.next_entry(),
        None => Ok(None),
    }
}
