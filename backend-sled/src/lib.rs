//! # backend-sled
//!
//! tidemark's [`StorageBackend`] for sled 0.34.
//!
//! - Collections are trees (the default tree `__sled__default` included).
//! - sled keeps no change history: applications write through [`TrackedDb`], which logs every
//!   write in the same sled transaction (see [`tracked`]). The checkpoint is the log position.
//! - sled has no snapshots. A full backup scans every tree while writers go on, then replays the
//!   log entries written during the scan (full values or tombstones) over what it scanned: the
//!   result is exactly the state at the position read after the scan.
//! - Writes made around the handle cannot be seen; the first backup after each open of the
//!   database therefore compares every record with the previous backup (diff-based incremental).
//!
//! ```
//! use backend_sled::{SledBackend, TrackedDb};
//!
//! let dir = tempfile::tempdir()?;
//! let db = TrackedDb::open(&dir.path().join("db"))?;
//! db.insert("users", b"ann", br#"{"age": 40}"#)?;
//! let backend = SledBackend::new(db.clone());
//! let summary = backup_core::backup_folder(&backend, &dir.path().join("backup"),
//!     &backup_core::BackupOptions::default(), &mut |_| {})?;
//! assert_eq!(summary.records_total, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod tracked;

use backup_core::{
    Change, ChangeOp, Checkpoint, CollectionInfo, CollectionName, Error, Key, Record, RestoreSink,
    Result, StorageBackend, StoreFactory, StoreId, StoreKind, StoreSchema, Value, View,
};
use std::path::Path;
use std::time::{Duration, Instant};
pub use tracked::{TrackedDb, TrackedTx};

/// A sled database as a tidemark store: through its tracked handle, or, for a database that
/// was never tracked, read as it is.
#[derive(Debug, Clone)]
pub struct SledBackend {
    handle: Handle,
}

#[derive(Debug, Clone)]
enum Handle {
    /// Writes are logged ([`TrackedDb`]).
    Tracked(TrackedDb),
    /// A database without tidemark's trees, opened by the command line. Nothing is written to
    /// it: sled has no read-only open, and rewrites its snapshot file whenever it opens a
    /// database, so the backup reads a private copy ([`PlainCopy`]) while it holds the
    /// database's lock as sled would. Every incremental compares every record.
    Plain {
        /// The copy (declared first: closed before its directory is removed).
        db: sled::Db,
        path: std::path::PathBuf,
        /// See [`UNTRACKED_ID`].
        id: String,
        _copy: std::sync::Arc<PlainCopy>,
    },
}

/// The copy of a plain database that a backup reads, and the lock that keeps the original
/// unchanged meanwhile: an exclusive `flock` on its `db` file, which sled itself takes, so no
/// application opens it while the backup runs (as when the backup held it open itself).
#[derive(Debug)]
struct PlainCopy {
    _dir: backup_core::ScratchDir,
    _lock: std::fs::File,
}

/// The prefix of the identity reported for a sled database without tidemark's trees. It has
/// no identity of its own, and adding one would write to it: the identity is this prefix with
/// the device and inode of its `db` file, which sled grows in place and never replaces, so a
/// different database put at the same path (or a restored copy) is a different store.
pub const UNTRACKED_ID: &str = "untracked-sled";

/// Opens the sled database at `at` (the database at `path`, or its copy) with tidemark's page
/// cache; an error names `path`.
fn open_with_tool_cache(at: &Path, path: &Path) -> Result<sled::Db> {
    tracked::open_db_with_cache(at, tracked::TOOL_CACHE_BYTES)
        .map_err(|e| tracked::open_error(path, e))
}

/// Whether `db` holds tidemark's change log (its application writes through [`TrackedDb`]).
fn is_tracked(db: &sled::Db) -> bool {
    db.tree_names()
        .iter()
        .any(|n| n.as_ref() == tracked::META_TREE.as_bytes())
}

impl SledBackend {
    /// A backend over a tracked handle the application writes through.
    pub fn new(db: TrackedDb) -> Self {
        SledBackend {
            handle: Handle::Tracked(db),
        }
    }

    /// Opens a sled database on disk (sled allows one process at a time: the application must
    /// not have it open), with tidemark's smaller page cache ([`tracked::TOOL_CACHE_BYTES`]).
    /// A database an application tracks ([`TrackedDb`]) is opened tracked (in place at once
    /// when it has [`tracked::TRACKED_MARKER`], which `TrackedDb` writes); any other is read
    /// as it is, and not a byte of it changes: its lock is held as sled holds it, and a copy
    /// in the system's temporary directory is read (removed when the backend is dropped; one
    /// left by a killed process is removed by the next open). Space for one copy of the
    /// database is needed there.
    pub fn open(path: &Path) -> Result<Self> {
        backup_core::check_store_dir(path, "conf", "sled")?;
        if path.join(tracked::TRACKED_MARKER).is_file() {
            // A database its application opened through `TrackedDb` (which put the marker
            // there): opened in place at once, as the copy below would find it tracked.
            let db = open_with_tool_cache(path, path)?;
            if is_tracked(&db) {
                return Ok(SledBackend::new(TrackedDb::from_db(db, path)?));
            }
            // The marker outlived the tracking (its trees were dropped, or the directory was
            // put together by hand): the database is not tracked, so it is read as any other,
            // from a copy, and tracking is not started behind the application's back.
            drop(db);
            tracing::warn!(
                "{}: the database has {} but not tidemark's change log: it is read as an \
                 untracked database (remove the file to skip this check)",
                path.display(),
                tracked::TRACKED_MARKER
            );
        }
        let lock = tracked::lock_as_sled_does(path)?;
        let dir = backup_core::ScratchDir::new("tidemark-sled-copy-")?;
        let copy = dir.path().join("db");
        copy_database(&dir, path, &copy)?;
        let db = open_with_tool_cache(&copy, path)?;
        if is_tracked(&db) {
            // Its application writes through `TrackedDb`: the backup trims its log, which is
            // the opt-in to writes. The database itself is opened.
            drop((db, dir, lock));
            let db = open_with_tool_cache(path, path)?;
            return Ok(SledBackend::new(TrackedDb::from_db(db, path)?));
        }
        let id = {
            use std::os::unix::fs::MetadataExt;
            let file = path.join("db");
            let meta = std::fs::metadata(&file).map_err(|e| Error::io("inspect", &file, e))?;
            format!("{UNTRACKED_ID}:{}:{}", meta.dev(), meta.ino())
        };
        Ok(SledBackend {
            handle: Handle::Plain {
                db,
                path: path.to_path_buf(),
                id,
                _copy: std::sync::Arc::new(PlainCopy {
                    _dir: dir,
                    _lock: lock,
                }),
            },
        })
    }

    /// The tracked handle (`None` for a database read as it is).
    pub fn tracked(&self) -> Option<&TrackedDb> {
        match &self.handle {
            Handle::Tracked(db) => Some(db),
            Handle::Plain { .. } => None,
        }
    }

    /// The sled database.
    pub fn sled(&self) -> &sled::Db {
        match &self.handle {
            Handle::Tracked(db) => db.db(),
            Handle::Plain { db, .. } => db,
        }
    }

    fn path(&self) -> &Path {
        match &self.handle {
            Handle::Tracked(db) => db.path(),
            Handle::Plain { path, .. } => path,
        }
    }

    /// The existing tree of a collection, for reading (a plain database is never given a new
    /// tree). Tree names are any bytes: see [`CollectionName::from_bytes`].
    fn tree(&self, collection: &CollectionName) -> Result<sled::Tree> {
        let raw = collection.to_bytes();
        if let Handle::Plain { db, .. } = &self.handle {
            if !db.tree_names().iter().any(|n| n.as_ref() == raw.as_slice()) {
                return Err(Error::store(
                    self.describe(),
                    format!("tree `{collection}` does not exist"),
                ));
            }
        }
        self.sled().open_tree(&raw).map_err(|e| self.err(e))
    }

    fn err(&self, e: sled::Error) -> Error {
        Error::store_cause(self.describe(), "", e)
    }

    fn trees(&self) -> Vec<String> {
        self.sled()
            .tree_names()
            .into_iter()
            .filter(|n| !tracked::is_internal(n))
            .map(|n| CollectionName::from_bytes(&n).0.to_string())
            .collect()
    }
}

/// Copies the sled database directory `from` (its `conf`, `db`, snapshot and blob files) to
/// the new directory `to` in `dir`, reading it only.
fn copy_database(dir: &backup_core::ScratchDir, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir(to).map_err(|e| Error::io("create", to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| Error::io("list", from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", from, e))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("inspect", &source, e))?;
        if kind.is_dir() {
            copy_database(dir, &source, &target)?;
        } else if kind.is_file() {
            dir.copy_in(&source, &target)?;
        }
    }
    Ok(())
}

impl StorageBackend for SledBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Sled
    }

    fn describe(&self) -> String {
        format!("sled:{}", self.path().display())
    }

    fn current_checkpoint(&self) -> Result<Checkpoint> {
        Ok(match &self.handle {
            Handle::Tracked(db) => Checkpoint::new(StoreId(db.store_id()?), db.last_seq()?),
            Handle::Plain { id, .. } => Checkpoint::new(StoreId(id.clone()), 0),
        })
    }

    fn view(&self) -> Result<Box<dyn View + '_>> {
        Ok(Box::new(SledView {
            backend: self,
            checkpoint: self.current_checkpoint()?,
            trees: self.trees(),
        }))
    }

    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let Handle::Tracked(db) = &self.handle else {
            // Nothing but this handle can write to a database it holds, and it does not write.
            std::thread::sleep(timeout);
            return Ok(false);
        };
        loop {
            if db.last_seq()? > after.position {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn trim_changes(&self, upto: &Checkpoint) -> Result<()> {
        if let Handle::Tracked(db) = &self.handle {
            if upto.store_id.0 == db.store_id()? {
                db.trim(upto.position)?;
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        for name in self.trees() {
            let tree = self.tree(&CollectionName::new(name))?;
            if !tree.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        match &self.handle {
            Handle::Tracked(db) => Ok(Box::new(SledRestore { backend: self, db })),
            Handle::Plain { .. } => Err(Error::store(
                self.describe(),
                "restores go into a new database (SledFactory), not one opened for backup",
            )),
        }
    }
}

struct SledView<'a> {
    backend: &'a SledBackend,
    checkpoint: Checkpoint,
    trees: Vec<String>,
}

impl View for SledView<'_> {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        Ok(self.trees.iter().map(CollectionInfo::plain).collect())
    }

    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        let tree = self.backend.tree(collection)?;
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| self.backend.err(e))?;
            visit(Record {
                key: Key(k.to_vec()),
                value: Value::Bytes(v.to_vec()),
            })?;
        }
        Ok(())
    }

    fn settle(&mut self) -> Result<bool> {
        let now = self.backend.current_checkpoint()?;
        if now == self.checkpoint {
            return Ok(false);
        }
        self.checkpoint = now;
        self.trees = self.backend.trees();
        Ok(true)
    }

    fn scans_in_key_order(&self) -> bool {
        true
    }

    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        let Handle::Tracked(db) = &self.backend.handle else {
            return Err(Error::ChangesUnavailable {
                from: from.position,
                earliest: None,
                reason: "the sled database is not tracked (tidemark reads it without writing to \
                         it; an application that writes through backend_sled::TrackedDb gets \
                         change-log incrementals)"
                    .into(),
            });
        };
        let floor = db.floor()?;
        let unavailable = |reason: String| Error::ChangesUnavailable {
            from: from.position,
            earliest: Some(floor),
            reason,
        };
        if from.store_id != self.checkpoint.store_id {
            return Err(unavailable(format!(
                "the checkpoint belongs to store {}, this is {}",
                from.store_id, self.checkpoint.store_id
            )));
        }
        if from.position < floor {
            return Err(unavailable(
                "the database was reopened since (writes around the tracked handle cannot be \
                 ruled out) or the change log was trimmed"
                    .into(),
            ));
        }
        if from.position > self.checkpoint.position {
            return Err(unavailable("the store is behind the checkpoint".into()));
        }
        let log = db.log();
        let start = (from.position + 1).to_be_bytes();
        let end = self.checkpoint.position.to_be_bytes();
        let mut out = Vec::with_capacity(batch_size.min(4096));
        for item in log.range(start..=end) {
            let (k, v) = item.map_err(|e| self.backend.err(e))?;
            let position = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                Error::store(self.backend.describe(), "a change log key is not 8 bytes")
            })?);
            let entry = tracked::decode_entry(&v).ok_or_else(|| {
                Error::store(
                    self.backend.describe(),
                    format!("the change log entry at {position} is damaged"),
                )
            })?;
            out.push(Change {
                position,
                collection: CollectionName::from_bytes(entry.tree.as_bytes()),
                key: Key(entry.key),
                op: match entry.value {
                    Some(v) => ChangeOp::Put(Value::Bytes(v)),
                    None => ChangeOp::Delete,
                },
            });
            if out.len() >= batch_size {
                visit(std::mem::take(&mut out))?;
            }
        }
        if !out.is_empty() {
            visit(out)?;
        }
        Ok(())
    }
}

struct SledRestore<'a> {
    backend: &'a SledBackend,
    db: &'a TrackedDb,
}

/// The most records a restore puts in one `sled::Batch`. sled's memory grows with the size of
/// the batches it applies, far beyond its page cache: 1M records of 100 bytes in batches of
/// 10,000 peaked at 2.6 GiB, in batches of 1,000 at 290 MiB, in the same time (a standalone
/// sled 0.34 program; the restore engine hands over batches of its own size).
const SLED_BATCH_RECORDS: usize = 1000;

impl RestoreSink for SledRestore<'_> {
    fn create_collection(&mut self, info: &CollectionInfo, _source: StoreKind) -> Result<()> {
        if tracked::is_internal(&info.name.to_bytes()) {
            return Err(Error::store(
                self.backend.describe(),
                format!("cannot restore into tidemark's own tree `{}`", info.name),
            ));
        }
        self.db
            .db()
            .open_tree(info.name.to_bytes())
            .map(|_| ())
            .map_err(|e| self.backend.err(e))
    }

    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        // A restore fills a new store: its writes need no log (the store's floor starts past them).
        let tree = self
            .db
            .db()
            .open_tree(collection.to_bytes())
            .map_err(|e| self.backend.err(e))?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        for r in records {
            let value = match r.value {
                Value::Bytes(v) => v,
                Value::Row(row) => backup_core::row_to_json_bytes(&row),
            };
            batch.insert(r.key.0, value);
            in_batch += 1;
            if in_batch == SLED_BATCH_RECORDS {
                tree.apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| self.backend.err(e))?;
                in_batch = 0;
            }
        }
        tree.apply_batch(batch).map_err(|e| self.backend.err(e))
    }

    fn finish(self: Box<Self>, _schema: &StoreSchema, _source: StoreKind) -> Result<()> {
        self.db.flush()
    }
}

/// Makes sled databases at paths (restore targets).
#[derive(Debug, Default, Clone, Copy)]
pub struct SledFactory;

impl StoreFactory for SledFactory {
    fn kind(&self) -> StoreKind {
        StoreKind::Sled
    }

    fn holds_data(&self, path: &Path) -> Result<bool> {
        // A plain sled handle: checking a target must not add tidemark's trees to it.
        backup_core::dir_store_holds_data(path, "conf", "sled", || {
            let db = tracked::open_db_with_cache(path, tracked::TOOL_CACHE_BYTES)
                .map_err(|e| Error::store_cause(format!("sled:{}", path.display()), "", e))?;
            for name in db.tree_names() {
                if tracked::is_internal(&name) {
                    continue;
                }
                let tree = db
                    .open_tree(&name)
                    .map_err(|e| Error::store_cause(format!("sled:{}", path.display()), "", e))?;
                if !tree.is_empty() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    fn check_replaceable(&self, path: &Path) -> Result<()> {
        backup_core::check_dir_store_replaceable(path, "conf", "sled")
    }

    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>> {
        Ok(Box::new(SledBackend::new(TrackedDb::open_with_cache(
            path,
            tracked::RESTORE_CACHE_BYTES,
        )?)))
    }
}
