//! Opening a database: a service's own handle, or a secondary instance the CLI opens (with
//! enough file descriptors and threads for its SST files), and column family lookups.

use crate::options::{fifo_ids, read_options, Layout, DEFAULT_FORMAT_VERSION};
use crate::view::{gone, RocksView};
use crate::{
    describe, ingest, manifest, walfiles, Db, RocksBackend, Watch, CLI_WAL_SIZE_LIMIT_MB,
    CLI_WAL_TTL_SECONDS,
};
use backup_core::{Checkpoint, Error, Result, StorageBackend, StoreId};
use rocksdb::{AsColumnFamilyRef, IteratorMode, Options};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Threads a secondary instance opens its SST files with.
///
/// RocksDB starts `max_file_opening_threads - 1` threads (16 by default) each time it loads
/// table handlers, and a secondary instance loads them once per MANIFEST step it replays, so
/// opening a database of four SST files started over 200 threads and took about a quarter of a
/// small incremental. One thread per 32 SST files (at least one, at most RocksDB's default)
/// keeps the parallel open for large databases.
pub(crate) fn file_opening_threads(path: &Path) -> i32 {
    let ssts = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
                .count()
        })
        .unwrap_or(0);
    (ssts / 32).clamp(1, 16) as i32
}

impl RocksBackend {
    /// Wraps a database the application has open. The backend never reopens it or changes its
    /// options.
    pub fn from_db(db: Arc<Db>) -> Self {
        let path = db.path().to_path_buf();
        RocksBackend {
            db: std::sync::OnceLock::from(db),
            path,
            secondary: None,
            opening: std::sync::Mutex::new(()),
            layout: None,
            watch: std::sync::Mutex::new(None),
        }
    }

    /// Options an application can open its database with so that tidemark's incrementals find
    /// the WAL: no creation, and archived WAL kept for [`CLI_WAL_TTL_SECONDS`] /
    /// [`CLI_WAL_SIZE_LIMIT_MB`]. tidemark itself never opens a source with them (it reads
    /// sources through a secondary instance).
    pub fn cli_options() -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(false);
        opts.set_wal_ttl_seconds(CLI_WAL_TTL_SECONDS);
        opts.set_wal_size_limit_mb(CLI_WAL_SIZE_LIMIT_MB);
        opts
    }

    /// Opens an existing database on disk for backups, read-only, whether or not another
    /// process holds it: always as a secondary instance (in a temporary directory, caught up
    /// with the database's files before each view). The database's own directory is never
    /// written: no WAL replay into it, no flush, no compaction, no new OPTIONS or LOG file, so
    /// an application on an older RocksDB still opens it afterwards. Full backups read the
    /// secondary's state (which only moves when it catches up); incrementals read the WAL files
    /// the application keeps, with the same continuity checks, and otherwise fall back to a
    /// diff-based incremental. The secondary instance is opened on first use: an incremental
    /// that can read the WAL files and the MANIFEST directly (a WAL-only view,
    /// [`StorageBackend::log_view`]) never opens it.
    pub fn open(path: &Path) -> Result<Self> {
        backup_core::check_store_dir(path, "CURRENT", "RocksDB")?;
        Db::list_cf(&Options::default(), path)
            .map_err(|e| Error::bad_input_cause(path, "cannot read the column families", e))?;
        check_open_files_limit(path)?;
        Ok(RocksBackend {
            db: std::sync::OnceLock::new(),
            path: path.to_path_buf(),
            secondary: Some(std::sync::OnceLock::new()),
            opening: std::sync::Mutex::new(()),
            layout: None,
            watch: std::sync::Mutex::new(None),
        })
    }

    /// The database handle, the secondary instance opened now if it is not yet.
    pub(crate) fn handle(&self) -> Result<&Arc<Db>> {
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let _one = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = self.db.get() {
            return Ok(db);
        }
        let Some(scratch) = &self.secondary else {
            return Err(Error::store(self.describe(), "no database handle"));
        };
        let names = Db::list_cf(&Options::default(), &self.path).map_err(|e| {
            Error::bad_input_cause(&self.path, "cannot read the column families", e)
        })?;
        let (db, dir) = Self::open_secondary(&self.path, &names)?;
        // The directory outlives the instance: fields drop in order, the handle first.
        let _ = scratch.set(dir);
        Ok(self.db.get_or_init(|| Arc::new(db)))
    }

    /// The handle if it is open (a secondary instance not yet opened has none).
    pub(crate) fn opened(&self) -> Option<&Arc<Db>> {
        self.db.get()
    }

    fn open_secondary(path: &Path, names: &[String]) -> Result<(Db, backup_core::ScratchDir)> {
        check_open_files_limit(path)?;
        // Removes the directories of runs killed before they could (see backup_core::ScratchDir).
        let dir = backup_core::ScratchDir::new("tidemark-rocksdb-secondary-")?;
        let mut opts = Options::default();
        opts.set_max_open_files(-1);
        opts.set_max_file_opening_threads(file_opening_threads(path));
        // The secondary's own LOG (in its temporary directory) gets warnings only, not the
        // options dump and every MANIFEST step; compaction statistics are not read at open.
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts.set_skip_stats_update_on_db_open(true);
        let db = Db::open_cf_as_secondary(&opts, path, dir.path(), names).map_err(|e| {
            Error::bad_input_cause(
                path,
                "cannot open as a RocksDB database (read-only secondary)",
                e,
            )
        })?;
        db.try_catch_up_with_primary()
            .map_err(|e| Error::store_cause(describe(path), "catching up", e))?;
        Ok((db, dir))
    }

    /// Creates a new, empty database (a restore target) whose SST files use table
    /// [`DEFAULT_FORMAT_VERSION`], which RocksDB 6.x to 11.x read.
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_with_format(path, DEFAULT_FORMAT_VERSION)
    }

    /// Creates a new, empty database (a restore target) whose SST files use the block-based
    /// table `format_version` given (the source's, so the application's RocksDB reads it).
    pub fn create_with_format(path: &Path, format_version: i32) -> Result<Self> {
        Self::create_with_layout(path, Layout::new(format_version, BTreeMap::new()))
    }

    /// Creates a new, empty database (a restore target) that writes as `layout` says.
    pub(crate) fn create_with_layout(path: &Path, layout: Layout) -> Result<Self> {
        let mut opts = layout.default.clone();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A restore writes every column family without the WAL; cap all memtables together so
        // memory stays bounded whatever the number of collections (each column family's 64 MiB
        // default, times two, times the families, measured 292 MiB for four). Applications open
        // the restored database with their own options.
        opts.set_db_write_buffer_size(64 << 20);
        let db = Db::open(&opts, path)
            .map_err(|e| Error::bad_input_cause(path, "cannot create a RocksDB database", e))?;
        Ok(RocksBackend {
            db: std::sync::OnceLock::from(Arc::new(db)),
            path: path.to_path_buf(),
            secondary: None,
            opening: std::sync::Mutex::new(()),
            layout: Some(layout),
            watch: std::sync::Mutex::new(None),
        })
    }

    /// The database handle (for a database opened by path, its secondary instance, opened
    /// now if it is not yet).
    pub fn db(&self) -> Result<&Arc<Db>> {
        self.handle()
    }

    /// A view of the WAL files and the MANIFEST, read without opening the database: what a
    /// secondary instance opened now would hold (the column families and live SST files the
    /// MANIFEST gives, up to the last sequence number it or the WAL files hold). Errors say why
    /// it cannot be told; the caller then reads through RocksDB.
    pub(crate) fn wal_only_view(&self) -> std::result::Result<RocksView<'_>, String> {
        let id = std::fs::read(self.path.join("IDENTITY"))
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .map_err(|e| format!("IDENTITY: {e}"))?;
        if id.is_empty() {
            return Err("the IDENTITY file is empty".into());
        }
        // The MANIFEST first, then the WAL files, as a view lists its files before its
        // snapshot: a flush in between leaves a gap the reading finds, never a change unseen.
        let at = manifest::current(&self.path).map_err(|e| e.to_string())?;
        let state = manifest::replay(&self.path, &at)?;
        let files = walfiles::list(&self.path).map_err(|e| format!("WAL files: {e}"))?;
        let end = walfiles::end(&self.path, &files)?;
        let position = state.last_sequence.max(end.unwrap_or(0));
        let cfs: Vec<(String, u32)> = state.cfs.iter().map(|(id, n)| (n.clone(), *id)).collect();
        let ssts = ingest::SstFiles::of_manifest(&state);
        let options = read_options(&self.path);
        // A live backup's waits that follow compare with these files (its secondary instance,
        // opened by the first wait, finds every column family's super version new).
        self.watch_from(&cfs, &ssts, Some(&at), fifo_ids(options.as_ref(), &cfs));
        Ok(RocksView {
            backend: self,
            snapshot: None,
            checkpoint: Checkpoint::new(StoreId(id), position),
            cfs,
            ssts,
            manifest_at: Ok(at),
            manifest_end: None,
            said: None,
            options,
            verify: None,
            last_batch: None,
            wal_files: Some(files),
        })
    }

    /// Whether this is a secondary instance of a database another process holds.
    pub fn is_secondary(&self) -> bool {
        self.secondary.is_some()
    }

    pub(crate) fn err(&self, what: &str, e: rocksdb::Error) -> Error {
        Error::store_cause(self.describe(), what, e)
    }

    pub(crate) fn store_id(&self) -> Result<StoreId> {
        // A secondary instance reports an empty identity: read the IDENTITY file instead
        // (read-only). Either way an empty identity stays empty, and the engine then never
        // trusts the change log across runs.
        let from_file = std::fs::read(self.path.join("IDENTITY"))
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default();
        if !from_file.is_empty() {
            return Ok(StoreId(from_file));
        }
        let id = self
            .handle()?
            .get_db_identity()
            .map_err(|e| self.err("reading the DB identity", e))?;
        Ok(StoreId(String::from_utf8_lossy(&id).trim().to_string()))
    }

    /// Column families with their ids, in the order RocksDB lists them.
    pub(crate) fn column_families(&self) -> Result<Vec<(String, u32)>> {
        let names = Db::list_cf(&Options::default(), &self.path)
            .map_err(|e| self.err("listing column families", e))?;
        names
            .into_iter()
            .map(|n| {
                let id = cf(self.handle()?, &self.path, &n)?.id();
                Ok((n, id))
            })
            .collect()
    }

    /// Each of `cfs`' super-version number (`None` where the property is not there).
    fn super_versions(&self, cfs: &[String]) -> Vec<Option<u64>> {
        const PROPERTY: &str = "rocksdb.current-super-version-number";
        let Some(db) = self.opened() else {
            return vec![None; cfs.len()];
        };
        cfs.iter()
            .map(|name| match cf(db, &self.path, name) {
                Ok(Cf::Default) => db.property_int_value(PROPERTY).ok().flatten(),
                Ok(Cf::Named(h)) => db.property_int_value_cf(&h, PROPERTY).ok().flatten(),
                Err(_) => None,
            })
            .collect()
    }

    /// Sets what [`RocksBackend::ingested_since_view`] compares with: a view's files.
    pub(crate) fn watch_from(
        &self,
        cfs: &[(String, u32)],
        files: &ingest::SstFiles,
        manifest: Option<&manifest::Position>,
        fifo: Option<std::collections::BTreeSet<u32>>,
    ) {
        let cfs: Vec<String> = cfs.iter().map(|(n, _)| n.clone()).collect();
        let versions = self.super_versions(&cfs);
        let watch = Watch {
            cfs,
            versions,
            files: files.numbers(),
            manifest: manifest.cloned(),
            said: None,
            fifo,
        };
        *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(watch);
    }

    /// Whether a file was ingested since the last view (or cannot be read to tell): such a
    /// file moves no sequence number, so [`StorageBackend::wait_for_changes`] asks this too.
    /// Cheap while no column family has a new super version.
    pub(crate) fn ingested_since_view(&self) -> Result<bool> {
        let mut guard = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        let Some(watch) = guard.as_mut() else {
            return Ok(false);
        };
        let versions = self.super_versions(&watch.cfs);
        if versions == watch.versions {
            return Ok(false);
        }
        let files =
            ingest::SstFiles::of(self.handle()?).map_err(|e| self.err("listing SST files", e))?;
        // The versions are taken as seen only once no new file was ingested: until the next
        // view, every call says so again.
        let mut ingested = false;
        // The files as of the view and the waits before, each vetted by the MANIFEST's edits
        // when it was added: a file new in this call that holds keys at sequence number 0 is
        // checked below, after `first_ingested` adds it (as not ingested by its property).
        let vetted = watch.files.clone();
        if let Some(why) = files.first_ingested(&self.path, &mut watch.files) {
            tracing::debug!(%why, "changes outside the WAL while waiting");
            watch.said = Some(why);
            ingested = true;
        }
        // A file ingested and already compacted away, or files removed without the WAL: the
        // MANIFEST's edits since (see `manifest`), as a run reads them. What either finds is
        // handed to the next view, which may no longer find it (the file compacted away, a new
        // MANIFEST).
        if !ingested && watch.manifest.is_some() {
            let now = files.numbers();
            let read = manifest::current(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|at| {
                    manifest::since(
                        &self.path,
                        watch.manifest.as_ref(),
                        &at,
                        (
                            |n| now.contains(&n),
                            |n| vetted.contains(&n),
                            &gone(&vetted, &now, watch.fifo.as_ref()),
                        ),
                        |cf| watch.fifo.as_ref().is_none_or(|f| f.contains(&cf)),
                    )
                });
            match read {
                Ok((end, None)) => watch.manifest = Some(end),
                Ok((_, Some(why))) => {
                    tracing::debug!(%why, "changes outside the WAL while waiting");
                    watch.said = Some(why);
                    ingested = true;
                }
                // What cannot be read now is for the next run to tell.
                Err(_) => ingested = true,
            }
        }
        if !ingested {
            watch.versions = versions;
        }
        Ok(ingested)
    }
}

/// A column family: `default` is reached through the plain (non-`_cf`) calls, because a handle
/// opened without naming it (`DB::open_default`) holds no handle for it.
pub(crate) enum Cf<'a> {
    Default,
    Named(Arc<rocksdb::BoundColumnFamily<'a>>),
}

/// File descriptors a secondary instance needs besides one per SST file: its MANIFEST, WAL
/// files, LOG, the process's own files and sockets.
const DESCRIPTORS_BESIDE_SSTS: u64 = 64;

/// Refuses, before opening, a database whose SST files outnumber the files this process may
/// open: the secondary instance keeps every SST file open (`max_open_files = -1`: opening them
/// lazily can fail beside a compacting primary), and with too many it failed with RocksDB's
/// "Too many open files" on one SST file, which said neither how many there are nor what to
/// raise. The tidemark CLI raises its soft limit to the hard one at start
/// ([`backup_core::raise_open_files_limit`]).
fn check_open_files_limit(path: &Path) -> Result<()> {
    let Some(limit) = backup_core::open_files_limit() else {
        return Ok(());
    };
    let Some(soft) = limit.soft else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(()); // the open reports an unreadable directory
    };
    let ssts = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .count() as u64;
    if ssts + DESCRIPTORS_BESIDE_SSTS > soft {
        return Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: format!(
                "holds {ssts} SST files, and reading it keeps every one open, but this process \
                 may open only {soft} files (RLIMIT_NOFILE; hard limit {}): raise the limit \
                 (`ulimit -n`, LimitNOFILE= in a systemd unit) to at least {}",
                limit
                    .hard
                    .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
                ssts + DESCRIPTORS_BESIDE_SSTS
            ),
            source: None,
        });
    }
    Ok(())
}

/// The column family called `name`. A column family that exists but that the handle did not
/// open is an error: it would otherwise be left out of the backup without a word.
pub(crate) fn cf<'a>(db: &'a Db, path: &Path, name: &str) -> Result<Cf<'a>> {
    if name == rocksdb::DEFAULT_COLUMN_FAMILY_NAME {
        return Ok(Cf::Default);
    }
    db.cf_handle(name).map(Cf::Named).ok_or_else(|| {
        Error::store(
            describe(path),
            format!(
                "column family `{name}` exists but this database handle did not open it \
                 (open every column family: DB::list_cf, then DB::open_cf)"
            ),
        )
    })
}

impl Cf<'_> {
    fn id(&self) -> u32 {
        match self {
            Cf::Default => 0,
            Cf::Named(h) => cf_id(h),
        }
    }
}

/// Whether every one of the named column families is empty.
pub(crate) fn all_empty(db: &Db, path: &Path, names: &[String]) -> Result<bool> {
    for name in names {
        let mut iter = match cf(db, path, name)? {
            Cf::Default => db.iterator(IteratorMode::Start),
            Cf::Named(h) => db.iterator_cf(&h, IteratorMode::Start),
        };
        if iter.next().is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A column family's id (ids in the WAL refer to these; they are not creation order).
#[allow(unsafe_code)]
fn cf_id(cf: &impl AsColumnFamilyRef) -> u32 {
    // SAFETY: the handle is alive for the call (borrowed), and the function only reads it.
    unsafe { librocksdb_sys::rocksdb_column_family_handle_get_id(cf.inner()) }
}
