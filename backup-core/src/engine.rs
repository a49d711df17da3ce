//! The backup engine: full and incremental runs over any [`StorageBackend`].

use crate::backend::{StorageBackend, View};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::folder::{collection_dir_name, FolderBackup, FolderRun, WriteEvent};
use crate::manifest::{
    now_rfc3339, FolderManifest, ManifestCollection, RunKind, FOLDER_FORMAT, FOLDER_FORMAT_VERSION,
};
use crate::model::{ChangeOp, CollectionInfo};
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
    /// Full or incremental.
    pub kind: RunKind,
    /// Why a full backup was taken, when it was.
    pub full_reason: Option<String>,
    /// The checkpoint the backup now holds.
    pub checkpoint: Checkpoint,
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

/// Backs `backend` up into the folder backup at `dir`: incremental from the folder's manifest
/// when the store can give the changes since its checkpoint, full otherwise (saying why).
pub fn backup_folder(
    backend: &dyn StorageBackend,
    dir: &Path,
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<BackupSummary> {
    let started = Instant::now();
    let folder = FolderBackup::open(dir)?;
    let previous = folder.manifest()?;
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
    backend.prepare()?;
    let mut view = backend.view()?;
    let checkpoint = view.checkpoint().clone();
    let collections = view.collections()?;
    let store_schema = view.store_schema()?;

    let mut full_reason = full_reason(previous.as_ref(), options, &checkpoint, &collections);
    let mut outcome = None;
    if full_reason.is_none() {
        let prev = previous
            .as_ref()
            .expect("incremental runs have a previous manifest");
        match incremental(&folder, prev, view.as_mut(), &collections, options, events)? {
            Ok(done) => outcome = Some(done),
            Err(reason) => {
                events(Event::Notice(format!(
                    "incremental backup not possible, taking a full backup: {reason}"
                )));
                full_reason = Some(reason);
            }
        }
    }
    let (run, written, deleted, kind) = match outcome {
        Some((run, written, deleted)) => (run, written, deleted, RunKind::Incremental),
        None => {
            let (run, written) = full(&folder, view.as_mut(), &collections, events)?;
            (run, written, 0, RunKind::Full)
        }
    };
    drop(view);

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
        full_reason,
        checkpoint,
        records_written: written,
        records_deleted: deleted,
        bytes_written,
        records_total: manifest.collections.iter().map(|c| c.records).sum(),
        elapsed: started.elapsed(),
    })
}

/// Why this run must be full, or `None` if an incremental may be tried.
fn full_reason(
    previous: Option<&FolderManifest>,
    options: &BackupOptions,
    checkpoint: &Checkpoint,
    collections: &[CollectionInfo],
) -> Option<String> {
    let Some(prev) = previous else {
        return Some("first backup in this directory".into());
    };
    if options.mode == BackupMode::Full {
        return Some("full backup requested".into());
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

type Incremental = (FolderRun, u64, u64);

/// Applies the changes since the previous checkpoint. The inner `Err` is a reason to fall back
/// to a full backup; the outer one a real failure.
fn incremental(
    folder: &FolderBackup,
    prev: &FolderManifest,
    view: &mut dyn View,
    collections: &[CollectionInfo],
    options: &BackupOptions,
    events: &mut dyn FnMut(Event),
) -> Result<Result<Incremental, String>> {
    let mut run = folder.begin(RunKind::Incremental, Some(prev))?;
    for old in &prev.collections {
        if !collections.iter().any(|c| c.name == old.info.name) {
            run.drop_collection(&old.info.name);
        }
    }
    for c in collections {
        run.create_collection(&c.name)?;
    }
    let (mut written, mut deleted) = (0u64, 0u64);
    let applied = view.changes_since(&prev.checkpoint, options.batch_size, &mut |batch| {
        for change in batch {
            if !collections.iter().any(|c| c.name == change.collection) {
                continue; // the collection was dropped later; the run drops it
            }
            match change.op {
                ChangeOp::Put(value) => {
                    let record = crate::model::Record {
                        key: change.key,
                        value,
                    };
                    events(Event::Written(run.put(&change.collection, &record)?));
                    written += 1;
                }
                ChangeOp::Delete => {
                    if let Some(ev) = run.delete(&change.collection, &change.key)? {
                        events(Event::Written(ev));
                        deleted += 1;
                    }
                }
            }
        }
        Ok(())
    });
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
    Ok(Ok((run, written, deleted)))
}

fn full(
    folder: &FolderBackup,
    view: &mut dyn View,
    collections: &[CollectionInfo],
    events: &mut dyn FnMut(Event),
) -> Result<(FolderRun, u64)> {
    let mut run = folder.begin(RunKind::Full, None)?;
    let mut written = 0u64;
    for c in collections {
        run.create_collection(&c.name)?;
        let total = view.count(&c.name)?;
        let mut done = 0u64;
        view.scan(&c.name, &mut |record| {
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
    }
    Ok((run, written))
}
