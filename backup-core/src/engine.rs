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
use crate::keyindex::{self, Entry, IndexReader, IndexWriter};
use crate::manifest::{
    now_rfc3339, FolderManifest, ManifestCollection, RunKind, FOLDER_FORMAT, FOLDER_FORMAT_VERSION,
};
use crate::model::{ChangeOp, CollectionInfo, CollectionName, Key, Record, Value};
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
}

/// What a backup run did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    /// Full or incremental (as the manifest records it).
    pub kind: RunKind,
    /// How the run found what to write.
    pub method: Method,
    /// Why the change log was not used, when it was not.
    pub full_reason: Option<String>,
    /// The checkpoint the backup now holds.
    pub checkpoint: Checkpoint,
    /// When the store was read at that checkpoint (RFC 3339, UTC): the backup holds the state
    /// the store had at this moment.
    pub captured_at: String,
    /// Records written (full: every record; incremental: the changed ones).
    pub records_written: u64,
    /// Records deleted from the backup.
    pub records_deleted: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Records the backup holds in all.
    pub records_total: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// What one path of the engine produced.
struct Outcome {
    run: FolderRun,
    method: Method,
    checkpoint: Checkpoint,
    collections: Vec<CollectionInfo>,
    indexes: BTreeMap<CollectionName, Option<String>>,
    written: u64,
    deleted: u64,
}

/// Changes to apply to a collection's key index (`None` = deleted).
type IndexChanges = BTreeMap<CollectionName, BTreeMap<Vec<u8>, Option<Entry>>>;

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

/// Backs `backend` up into the folder backup at `dir`: see the module documentation for how a
/// run chooses between change log, diff and full.
pub fn backup_folder(
    backend: &dyn StorageBackend,
    dir: &Path,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<BackupSummary> {
    let started = Instant::now();
    let _lock = crate::lock::DestinationLock::acquire(dir, "backup")?;
    crate::destination::claim_format(dir, crate::destination::DestFormat::Folder)?;
    let folder = FolderBackup::open(dir)?;
    let mut first_reason = "first backup in this directory".to_string();
    let previous = match folder.manifest() {
        Ok(p) => p,
        // A damaged manifest must not fail every later run: a full backup replaces it.
        Err(e @ (Error::Manifest { .. } | Error::Damaged { .. })) => {
            first_reason = format!("the previous backup's manifest is damaged ({e})");
            events(Event::Notice(format!(
                "taking a full backup: {first_reason}"
            )));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(p) = &previous {
        if p.store_kind != backend.kind() {
            return Err(Error::BadInput {
                path: dir.to_path_buf(),
                cause: format!(
                    "holds a backup of a {} store, not of {}",
                    p.store_kind,
                    backend.describe()
                ),
            });
        }
    }
    let interrupted = folder.was_interrupted();
    backend.prepare()?;
    let captured_at = now_rfc3339();
    let mut view = backend.view()?;
    let start = view.checkpoint().clone();
    let collections = view.collections()?;
    let store_schema = view.store_schema()?;

    let (outcome, reason) = match (&previous, options.mode) {
        (None, _) => (
            full(&folder, view.as_mut(), collections, options, events)?,
            Some(first_reason),
        ),
        (Some(_), BackupMode::Full) => (
            full(&folder, view.as_mut(), collections, options, events)?,
            Some("full backup requested".to_string()),
        ),
        (Some(_), BackupMode::Auto) if interrupted => {
            let reason = "the previous run was interrupted (its documents may be newer than \
                          its manifest): a full backup replaces them"
                .to_string();
            events(Event::Notice(format!("taking a full backup: {reason}")));
            (
                full(&folder, view.as_mut(), collections, options, events)?,
                Some(reason),
            )
        }
        (Some(prev), BackupMode::Auto) => {
            let attempt = match log_unusable(prev, &start, &collections) {
                Some(reason) => Err(reason),
                None => incremental(&folder, prev, view.as_mut(), &collections, options, events)?,
            };
            match attempt {
                Ok(done) => (done, None),
                Err(reason) => {
                    // A different store at the same path starts over with a full backup: a
                    // chain never mixes two databases.
                    let same_store = prev.checkpoint.store_id == start.store_id;
                    let diffable = !interrupted
                        && same_store
                        && view.scans_in_key_order()
                        && prev.collections.iter().all(|c| c.key_index.is_some());
                    let done = if diffable {
                        events(Event::Notice(format!(
                            "the change log cannot be used ({reason}): comparing every record \
                             with the previous backup (diff-based incremental)"
                        )));
                        match diff(
                            &folder,
                            prev,
                            view.as_mut(),
                            collections.clone(),
                            options,
                            events,
                        ) {
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
                                full(&folder, view.as_mut(), collections, options, events)?,
                                Some(reason),
                            )
                        }
                    }
                }
            }
        }
    };
    drop(view);
    let Outcome {
        run,
        method,
        checkpoint,
        collections,
        indexes,
        written,
        deleted,
    } = outcome;
    let kind = match method {
        Method::Full => RunKind::Full,
        Method::ChangeLog | Method::Diff => RunKind::Incremental,
    };
    let now = now_rfc3339();
    let manifest = FolderManifest {
        format: FOLDER_FORMAT.into(),
        format_version: FOLDER_FORMAT_VERSION,
        store_kind: backend.kind(),
        source: backend.describe(),
        checkpoint: checkpoint.clone(),
        created_at: match (&previous, kind) {
            (Some(p), RunKind::Incremental) => p.created_at.clone(),
            _ => now.clone(),
        },
        updated_at: now,
        last_run: kind,
        collections: collections
            .iter()
            .map(|c| ManifestCollection {
                info: c.clone(),
                dir: collection_dir_name(&c.name),
                records: run.count(&c.name),
                key_index: indexes.get(&c.name).cloned().flatten(),
            })
            .collect(),
        store_schema,
    };
    let bytes_written = run.bytes_written();
    run.commit(&manifest)?;
    if options.trim_changes {
        if let Err(e) = backend.trim_changes(&checkpoint) {
            events(Event::Notice(format!(
                "backup complete, but trimming the change log failed: {e}"
            )));
        }
    }
    Ok(BackupSummary {
        kind,
        method,
        full_reason: reason,
        checkpoint,
        captured_at,
        records_written: written,
        records_deleted: deleted,
        bytes_written,
        records_total: manifest.collections.iter().map(|c| c.records).sum(),
        elapsed: started.elapsed(),
    })
}

/// Why the change log cannot bring the previous backup up to `checkpoint`, if it cannot.
fn log_unusable(
    prev: &FolderManifest,
    checkpoint: &Checkpoint,
    collections: &[CollectionInfo],
) -> Option<String> {
    if checkpoint.store_id.0.is_empty() {
        return Some("the store reports no identity, so its change log cannot be matched".into());
    }
    if prev.checkpoint.store_id != checkpoint.store_id {
        return Some(format!(
            "the store's identity changed ({} → {}): it was replaced or restored",
            prev.checkpoint.store_id, checkpoint.store_id
        ));
    }
    if prev.checkpoint.position > checkpoint.position {
        return Some(format!(
            "the store is behind the backup (position {} < {}): it was rolled back",
            checkpoint.position, prev.checkpoint.position
        ));
    }
    for c in collections {
        if let Some(old) = prev.collections.iter().find(|p| p.info.name == c.name) {
            if old.info.schema != c.schema {
                return Some(format!("the schema of collection `{}` changed", c.name));
            }
        }
    }
    None
}

/// Applies the changes since the previous checkpoint. The inner `Err` is a reason to fall back;
/// the outer one a real failure.
fn incremental(
    folder: &FolderBackup,
    prev: &FolderManifest,
    view: &mut dyn View,
    collections: &[CollectionInfo],
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Outcome, String>> {
    let mut run = folder.begin(RunKind::Incremental, Some(prev))?;
    for old in &prev.collections {
        if !collections.iter().any(|c| c.name == old.info.name) {
            run.drop_collection(&old.info.name);
        }
    }
    for c in collections {
        run.create_collection(&c.name)?;
    }
    let track_index = view.scans_in_key_order();
    let mut index_changes = IndexChanges::new();
    let (mut written, mut deleted) = (0u64, 0u64);
    let from = prev.checkpoint.clone();
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
    );
    match applied {
        Ok(()) => {}
        Err(e @ Error::ChangesUnavailable { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    }
    // Cross-check: where the store counts cheaply, the backup must now hold as many records.
    // This catches changes the store's capture could not see (e.g. SQLite's REPLACE removing a
    // row on a UNIQUE conflict without firing delete triggers).
    for c in collections {
        if let Some(n) = view.count(&c.name)? {
            let have = run.count(&c.name);
            if n != have {
                return Ok(Err(format!(
                    "collection `{}` holds {n} records but the change log accounts for {have}",
                    c.name
                )));
            }
        }
    }
    let mut indexes = BTreeMap::new();
    for c in collections {
        let old = prev
            .collections
            .iter()
            .find(|p| p.info.name == c.name)
            .map(|p| p.key_index.clone());
        let index = match (track_index, old) {
            // A collection with an index, or a new one, gets an up-to-date index.
            (true, Some(Some(_)) | None) => {
                let old_path = old_index_path(&run, prev, &c.name);
                let (name, path) = run.new_index(&c.name, "");
                let empty = BTreeMap::new();
                let changes = index_changes.get(&c.name).unwrap_or(&empty);
                keyindex::apply_changes(old_path.as_deref(), &path, changes)?;
                Some(name)
            }
            _ => None,
        };
        indexes.insert(c.name.clone(), index);
    }
    Ok(Ok(Outcome {
        run,
        method: Method::ChangeLog,
        checkpoint: view.checkpoint().clone(),
        collections: collections.to_vec(),
        indexes,
        written,
        deleted,
    }))
}

fn old_index_path(
    run: &FolderRun,
    prev: &FolderManifest,
    collection: &CollectionName,
) -> Option<std::path::PathBuf> {
    prev.collections
        .iter()
        .find(|p| &p.info.name == collection)
        .and_then(|p| p.key_index.as_deref())
        .map(|name| run.index_path(name))
}

/// Streams the changes after `from` into the run (and the index changes, when kept).
#[allow(clippy::too_many_arguments)]
fn apply_changes(
    view: &mut dyn View,
    from: &Checkpoint,
    collections: &[CollectionInfo],
    options: &BackupOptions,
    run: &mut FolderRun,
    mut index: Option<&mut IndexChanges>,
    written: &mut u64,
    deleted: &mut u64,
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    view.changes_since(from, options.batch_size, &mut |batch| {
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
                    events(Event::Written(run.put(&change.collection, &record)?));
                    if let Some(ix) = index.as_deref_mut() {
                        ix.entry(change.collection.clone())
                            .or_default()
                            .insert(record.key.0.clone(), Some(entry_of(&record)));
                    }
                    *written += 1;
                }
                ChangeOp::Delete => {
                    if let Some(ev) = run.delete(&change.collection, &change.key)? {
                        events(Event::Written(ev));
                        *deleted += 1;
                    }
                    if let Some(ix) = index.as_deref_mut() {
                        ix.entry(change.collection.clone())
                            .or_default()
                            .insert(change.key.0.clone(), None);
                    }
                }
            }
        }
        Ok(())
    })
}

/// For stores without snapshots: after the scans, replays the changes written meanwhile so the
/// run is exactly the state at the view's new checkpoint. Returns the (refreshed) collections.
#[allow(clippy::too_many_arguments)]
fn settle(
    view: &mut dyn View,
    start: &Checkpoint,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    run: &mut FolderRun,
    index: &mut IndexChanges,
    written: &mut u64,
    deleted: &mut u64,
    events: &mut dyn FnMut(Event),
) -> Result<Vec<CollectionInfo>> {
    if !view.settle()? {
        return Ok(collections);
    }
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
    )?;
    Ok(now)
}

/// Finishes a collection's scan index: renames it into place, or merges the changes replayed
/// after the scan into it.
fn finish_index(
    run: &FolderRun,
    collection: &CollectionName,
    scanned: Option<(String, std::path::PathBuf)>,
    replayed: Option<&BTreeMap<Vec<u8>, Option<Entry>>>,
) -> Result<Option<String>> {
    let empty = BTreeMap::new();
    let changes = replayed.unwrap_or(&empty);
    match scanned {
        Some((name, path)) if changes.is_empty() => {
            let _ = name;
            let (final_name, final_path) = run.new_index(collection, "");
            crate::durable::rename(&path, &final_path)?;
            Ok(Some(final_name))
        }
        Some((_, path)) => {
            let (final_name, final_path) = run.new_index(collection, "");
            keyindex::apply_changes(Some(&path), &final_path, changes)?;
            std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            Ok(Some(final_name))
        }
        None => Ok(None),
    }
}

fn full(
    folder: &FolderBackup,
    view: &mut dyn View,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let start = view.checkpoint().clone();
    let mut run = folder.begin(RunKind::Full, None)?;
    let keyed = view.scans_in_key_order();
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
        let mut index = if keyed {
            let (name, path) = run.new_index(&c.name, ".scan");
            Some((IndexWriter::create(&path)?, name, path))
        } else {
            None
        };
        let mut in_order = true;
        let mut done = 0u64;
        view.scan(&c.name, &mut |record| {
            if let Some((w, _, _)) = index.as_mut() {
                in_order &= w.push(record.key.as_bytes(), entry_of(&record))?;
            }
            events(Event::Written(run.put(&c.name, &record)?));
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
            Some((w, name, path)) if in_order => {
                w.finish()?;
                Some((name, path))
            }
            Some((w, _, _)) => {
                w.abandon();
                None
            }
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
    for c in &collections {
        // A collection that appeared during the scan has only replayed changes.
        let index = match scanned.remove(&c.name) {
            Some(s) => finish_index(&run, &c.name, s, replayed.get(&c.name))?,
            None if keyed => finish_index(
                &run,
                &c.name,
                Some(empty_index(&run, &c.name)?),
                replayed.get(&c.name),
            )?,
            None => None,
        };
        indexes.insert(c.name.clone(), index);
    }
    Ok(Outcome {
        run,
        method: Method::Full,
        checkpoint: view.checkpoint().clone(),
        collections,
        indexes,
        written,
        deleted: 0,
    })
}

fn empty_index(run: &FolderRun, c: &CollectionName) -> Result<(String, std::path::PathBuf)> {
    let (name, path) = run.new_index(c, ".scan");
    IndexWriter::create(&path)?.finish()?;
    Ok((name, path))
}

/// The diff-based incremental: merges a key-ordered scan of every collection with the previous
/// backup's key index and writes only records whose CRC32 or length differ, deleting keys the
/// store no longer has. The inner `Err` is a reason to fall back to a full backup.
fn diff(
    folder: &FolderBackup,
    prev: &FolderManifest,
    view: &mut dyn View,
    collections: Vec<CollectionInfo>,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Outcome, String>> {
    let start = view.checkpoint().clone();
    let mut run = folder.begin(RunKind::Incremental, Some(prev))?;
    for old in &prev.collections {
        if !collections.iter().any(|c| c.name == old.info.name) {
            run.drop_collection(&old.info.name);
        }
    }
    let (mut written, mut deleted) = (0u64, 0u64);
    let mut scanned = BTreeMap::new();
    for c in &collections {
        run.create_collection(&c.name)?;
        let mut old = match old_index_path(&run, prev, &c.name) {
            Some(p) => Some(IndexReader::open(&p)?),
            None => None,
        };
        let mut pending = match old.as_mut() {
            Some(r) => r.next_entry()?,
            None => None,
        };
        let (name, path) = run.new_index(&c.name, ".scan");
        let mut index = IndexWriter::create(&path)?;
        let mut out_of_order = false;
        view.scan(&c.name, &mut |record| {
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
                if let Some(ev) = run.delete(&c.name, &Key(k.clone()))? {
                    events(Event::Written(ev));
                    deleted += 1;
                }
                pending = old.as_mut().expect("pending came from it").next_entry()?;
            }
            let unchanged = match &pending {
                Some((k, e)) if k.as_slice() == record.key.as_bytes() => {
                    let same = *e == entry;
                    pending = old.as_mut().expect("pending came from it").next_entry()?;
                    same
                }
                _ => false,
            };
            if !unchanged {
                events(Event::Written(run.put(&c.name, &record)?));
                written += 1;
            }
            Ok(())
        })?;
        if out_of_order {
            index.abandon();
            return Ok(Err(format!(
                "the store did not return collection `{}` in key order",
                c.name
            )));
        }
        while let Some((k, _)) = pending {
            if let Some(ev) = run.delete(&c.name, &Key(k))? {
                events(Event::Written(ev));
                deleted += 1;
            }
            pending = old.as_mut().expect("pending came from it").next_entry()?;
        }
        index.finish()?;
        scanned.insert(c.name.clone(), (name, path));
    }
    let mut replayed = IndexChanges::new();
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
    for c in &collections {
        let s = match scanned.remove(&c.name) {
            Some(s) => s,
            None => empty_index(&run, &c.name)?,
        };
        indexes.insert(
            c.name.clone(),
            finish_index(&run, &c.name, Some(s), replayed.get(&c.name))?,
        );
    }
    Ok(Ok(Outcome {
        run,
        method: Method::Diff,
        checkpoint: view.checkpoint().clone(),
        collections,
        indexes,
        written,
        deleted,
    }))
}
