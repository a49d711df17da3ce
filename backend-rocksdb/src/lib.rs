//! # backend-rocksdb
//!
//! tidemark's [`StorageBackend`] for RocksDB.
//!
//! - Collections are column families (`default` included); records are their keys and values.
//! - The checkpoint is RocksDB's sequence number; the store's identity is `get_db_identity()`.
//! - A view is one RocksDB snapshot across every column family.
//! - Changes since a checkpoint are read from the write-ahead log with `get_updates_since`,
//!   decoded by [`wal`] (never the C API's lossy handler), and checked for continuity: every
//!   batch must start where the previous one ended, and the log must reach the view's sequence.
//!   Merges are resolved by reading the key from the view's snapshot. A range deletion, or a
//!   record type the decoder does not turn into changes, makes the changes unavailable: the
//!   engine then takes a full backup and says why.
//! - A database opened by path ([`RocksBackend::open`]) is read through a secondary instance,
//!   opened on first use. An incremental first tries a WAL-only view
//!   ([`StorageBackend::log_view`]): the WAL files read directly and the MANIFEST replayed, with
//!   the same checks, without opening RocksDB (its open replays every WAL file and opens every
//!   SST file: most of a small incremental's time). What that view cannot give, the engine
//!   takes again through the secondary instance.
//!
//! ```no_run
//! use backend_rocksdb::RocksBackend;
//! use std::sync::Arc;
//!
//! // A service hands its own open database to the backend; nothing is reopened.
//! let db = Arc::new(rocksdb::DB::open_default("/var/lib/app/db")?);
//! let backend = RocksBackend::from_db(db);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Keep WAL files long enough for the next incremental: set `Options::set_wal_ttl_seconds` (or
//! `set_wal_size_limit_mb`) in the application; otherwise RocksDB deletes WAL files as soon as
//! their memtables are flushed and incrementals fall back to full backups.

mod infolog;
mod ingest;
mod logformat;
mod manifest;
pub mod wal;
mod walfiles;

use backup_core::{
    Change, ChangeOp, Checkpoint, CollectionInfo, CollectionName, Error, Record, RestoreSink,
    Result, StorageBackend, StoreFactory, StoreId, StoreKind, StoreSchema, Value, View,
};
use rocksdb::{
    AsColumnFamilyRef, DBCompressionType, DBWithThreadMode, IngestExternalFileOptions,
    IteratorMode, MultiThreaded, Options, ReadOptions, SnapshotWithThreadMode, SstFileWriter,
    WriteBatch, WriteOptions,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The RocksDB handle type the backend works with (`rocksdb::DB` with the `multi-threaded-cf`
/// feature, which this crate enables).
pub type Db = DBWithThreadMode<MultiThreaded>;

/// How long the CLI keeps archived WAL files when it opens a database itself.
pub const CLI_WAL_TTL_SECONDS: u64 = 7 * 24 * 3600;
/// How much archived WAL the CLI keeps when it opens a database itself.
pub const CLI_WAL_SIZE_LIMIT_MB: u64 = 4096;

/// A RocksDB database as a tidemark store.
pub struct RocksBackend {
    /// The handle: given (`from_db`, `create`), or for a database opened by path a secondary
    /// instance, opened on first use (a WAL-only incremental never needs it: [`walfiles`]).
    db: std::sync::OnceLock<Arc<Db>>,
    path: PathBuf,
    /// Set when the database is read through a secondary instance (every source the CLI opens):
    /// the instance's temporary directory, once it is opened.
    secondary: Option<std::sync::OnceLock<backup_core::ScratchDir>>,
    /// Held while the secondary instance is being opened (one opening at a time).
    opening: std::sync::Mutex<()>,
    /// Restore targets: how new column families and SST files are written (`None` for a
    /// database the backend did not create, which is written through its memtables only).
    layout: Option<Layout>,
    /// What [`StorageBackend::wait_for_changes`] compares with to notice an ingested file,
    /// which moves no sequence number: set by each view.
    watch: std::sync::Mutex<Option<Watch>>,
}

/// The SST files as of the last view (and the files found since that were not ingested), and
/// each column family's super-version number when they were listed (a new number means a new
/// set of files: a flush, a compaction or an ingest).
struct Watch {
    cfs: Vec<String>,
    versions: Vec<Option<u64>>,
    files: std::collections::BTreeSet<u64>,
    /// How far the MANIFEST's edits were read (none: it could not be read).
    manifest: Option<manifest::Position>,
    /// Why the edits read since the view hold changes the WAL does not, for the next view.
    said: Option<String>,
    /// The view's FIFO column families (see [`fifo_ids`]).
    fifo: Option<std::collections::BTreeSet<u32>>,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend")
            .field("path", &self.path)
            .field("secondary", &self.secondary.is_some())
            .finish()
    }
}

/// Threads a secondary instance opens its SST files with.
///
/// RocksDB starts `max_file_opening_threads - 1` threads (16 by default) each time it loads
/// table handlers, and a secondary instance loads them once per MANIFEST step it replays, so
/// opening a database of four SST files started over 200 threads and took about a quarter of a
/// small incremental. One thread per 32 SST files (at least one, at most RocksDB's default)
/// keeps the parallel open for large databases.
fn file_opening_threads(path: &Path) -> i32 {
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
    fn handle(&self) -> Result<&Arc<Db>> {
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
    fn opened(&self) -> Option<&Arc<Db>> {
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
    fn create_with_layout(path: &Path, layout: Layout) -> Result<Self> {
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
    fn wal_only_view(&self) -> std::result::Result<RocksView<'_>, String> {
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

    fn err(&self, what: &str, e: rocksdb::Error) -> Error {
        Error::store_cause(self.describe(), what, e)
    }

    fn store_id(&self) -> Result<StoreId> {
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
    fn column_families(&self) -> Result<Vec<(String, u32)>> {
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
    fn watch_from(
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
    fn ingested_since_view(&self) -> Result<bool> {
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
enum Cf<'a> {
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
fn cf<'a>(db: &'a Db, path: &Path, name: &str) -> Result<Cf<'a>> {
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
fn all_empty(db: &Db, path: &Path, names: &[String]) -> Result<bool> {
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

fn describe(path: &Path) -> String {
    format!("rocksdb:{}", path.display())
}

/// The column family name of a collection (`docs/FORMAT.md` §2.1): RocksDB's names are C
/// strings, so a name holding NUL (or bytes that are not UTF-8) is escaped.
fn stored(collection: &CollectionName) -> String {
    collection.stored_as(|s| !s.contains('\0'))
}

/// The block-based table `format_version` a restore writes when the source's is unknown (a
/// backup of another store, or of a database without an OPTIONS file): version 4 is read by
/// RocksDB 5.16 and every later release.
pub const DEFAULT_FORMAT_VERSION: i32 = 4;

/// The newest table `format_version` this build of RocksDB writes.
pub const MAX_FORMAT_VERSION: i32 = 7;

/// Options whose block-based tables use `format_version`.
fn table_options(format_version: i32) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_format_version(format_version);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts
}

/// The compression types tidemark records and writes, by the names RocksDB's OPTIONS files
/// (and `SetOptions`) give them.
const COMPRESSIONS: [(&str, DBCompressionType); 7] = [
    ("kNoCompression", DBCompressionType::None),
    ("kSnappyCompression", DBCompressionType::Snappy),
    ("kZlibCompression", DBCompressionType::Zlib),
    ("kBZip2Compression", DBCompressionType::Bz2),
    ("kLZ4Compression", DBCompressionType::Lz4),
    ("kLZ4HCCompression", DBCompressionType::Lz4hc),
    ("kZSTD", DBCompressionType::Zstd),
];

/// How a restore target writes: the table `format_version` of every SST file, and for the
/// column families of a RocksDB source, the compression the source gave their files.
struct Layout {
    /// SST files of column families the source said nothing about (RocksDB's default
    /// compression), and the database's own options.
    default: Options,
    /// Per column family (stored name): the compression's OPTIONS name and the options of its
    /// SST files and of the column family itself.
    by_cf: BTreeMap<String, (&'static str, Options)>,
}

impl Layout {
    /// `compression`: per column family, a compression's OPTIONS name (names tidemark does not
    /// know are left to RocksDB's default).
    fn new(format_version: i32, compression: BTreeMap<String, String>) -> Self {
        let by_cf = compression
            .into_iter()
            .filter_map(|(cf, name)| {
                let (name, t) = COMPRESSIONS.iter().find(|(n, _)| *n == name)?;
                let mut opts = table_options(format_version);
                opts.set_compression_type(*t);
                Some((cf, (*name, opts)))
            })
            .collect();
        Layout {
            default: table_options(format_version),
            by_cf,
        }
    }

    /// The options column family `cf` and its SST files are written with.
    fn options(&self, cf: &str) -> &Options {
        self.by_cf.get(cf).map_or(&self.default, |(_, o)| o)
    }
}

/// What the newest `OPTIONS-*` file of the database at `path` says about the RocksDB that
/// wrote it: its version and the default column family's table `format_version`. Read-only;
/// `None` where the file or a field is missing.
pub fn read_store_format(path: &Path) -> (Option<String>, Option<i32>) {
    read_options(path).map_or((None, None), |o| (o.version, o.format))
}

/// What tidemark reads in an OPTIONS file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct StoreOptions {
    /// The RocksDB that wrote it.
    version: Option<String>,
    /// The default column family's table `format_version`.
    format: Option<i32>,
    /// The column families with FIFO compaction, which deletes whole files without a WAL
    /// record.
    fifo: std::collections::BTreeSet<String>,
    /// Per column family, the compression of the files written into its last level (and so of
    /// an ingested file, as `SstFileWriter` chooses it): `bottommost_compression` where set,
    /// else the last of `compression_per_level` where given, else `compression`.
    compression: BTreeMap<String, String>,
}

/// The `OPTIONS-*` files of the database at `path`, read: the version and table format of the
/// newest, and the column families any of them gives FIFO compaction (RocksDB keeps the two
/// newest: a session that opened the database with other options, say to read it, leaves the
/// previous session's, whose FIFO compaction may have dropped files since the last backup).
/// `None` when there is none.
fn read_options(path: &Path) -> Option<StoreOptions> {
    let files = numbered_files(path, "OPTIONS-").ok()?;
    let mut read = files
        .iter()
        .rev()
        .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
        .map(|text| parse_options_file(&text));
    let mut newest = read.next()?;
    for older in read {
        newest.fifo.extend(older.fifo);
    }
    Some(newest)
}

/// The ids of `cfs` that `options` gives FIFO compaction (`None`: no OPTIONS file to tell).
fn fifo_ids(
    options: Option<&StoreOptions>,
    cfs: &[(String, u32)],
) -> Option<std::collections::BTreeSet<u32>> {
    let names = &options?.fifo;
    Some(
        cfs.iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(_, id)| *id)
            .collect(),
    )
}

/// Parses the fields of [`StoreOptions`] from an OPTIONS file's text.
fn parse_options_file(text: &str) -> StoreOptions {
    let mut options = StoreOptions::default();
    let mut section = String::new();
    // Per column family: `compression`, `bottommost_compression`, `compression_per_level`.
    let mut compression: BTreeMap<String, [Option<String>; 3]> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if section == "[Version]" && k == "rocksdb_version" {
            options.version = Some(v.to_string());
        }
        if section == "[TableOptions/BlockBasedTable \"default\"]" && k == "format_version" {
            options.format = v.parse().ok();
        }
        let cf = section
            .strip_prefix("[CFOptions \"")
            .and_then(|l| l.strip_suffix("\"]"));
        if let (Some(cf), "compaction_style", "kCompactionStyleFIFO") = (cf, k, v) {
            options.fifo.insert(cf.to_string());
        }
        let slot = match k {
            "compression" => 0,
            "bottommost_compression" => 1,
            "compression_per_level" => 2,
            _ => continue,
        };
        if let Some(cf) = cf {
            compression.entry(cf.to_string()).or_default()[slot] = Some(v.to_string());
        }
    }
    for (cf, [all, bottom, per_level]) in compression {
        let last_level = per_level.and_then(|l| {
            let last = l.rsplit(':').next()?.trim().to_string();
            (!last.is_empty()).then_some(last)
        });
        let chosen = bottom
            .filter(|b| b != "kDisableCompressionOption")
            .or(last_level)
            .or(all);
        if let Some(c) = chosen {
            options.compression.insert(cf, c);
        }
    }
    options
}

impl StorageBackend for RocksBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Rocksdb
    }

    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn prepare(&self) -> Result<()> {
        // A secondary instance not yet opened is caught up when it opens.
        if let (Some(_), Some(db)) = (&self.secondary, self.opened()) {
            db.try_catch_up_with_primary()
                .map_err(|e| self.err("catching up with the primary", e))?;
        }
        Ok(())
    }

    fn current_checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint::new(
            self.store_id()?,
            self.handle()?.latest_sequence_number(),
        ))
    }

    fn view(&self) -> Result<Box<dyn View + '_>> {
        let store_id = self.store_id()?;
        let cfs = self.column_families()?;
        // Where the MANIFEST ends, then the files, before the snapshot: an edit written in
        // between is read by the next backup, and its files are this one's (so known then).
        let manifest_at = manifest::current(&self.path).map_err(|e| e.to_string());
        // What waiting for this view found in edits it may no longer read.
        let said = self
            .watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .and_then(|w| w.said.take());
        // Listed before the snapshot: a file ingested in between is new to the next backup
        // too, which checks it again.
        let db = self.handle()?;
        let ssts = ingest::SstFiles::of(db).map_err(|e| self.err("listing SST files", e))?;
        // One reading of the OPTIONS file for the view: its FIFO column families, and the
        // RocksDB version and table format the store schema records.
        let options = read_options(&self.path);
        self.watch_from(
            &cfs,
            &ssts,
            manifest_at.as_ref().ok(),
            fifo_ids(options.as_ref(), &cfs),
        );
        let (snapshot, position) = if self.secondary.is_some() {
            (None, db.latest_sequence_number())
        } else {
            let snapshot = db.snapshot();
            let position = snapshot.sequence_number();
            (Some(snapshot), position)
        };
        let checkpoint = Checkpoint::new(store_id, position);
        Ok(Box::new(RocksView {
            backend: self,
            snapshot,
            checkpoint,
            cfs,
            ssts,
            manifest_at,
            manifest_end: None,
            said,
            options,
            verify: None,
            last_batch: None,
            wal_files: None,
        }))
    }

    fn log_view(&self) -> Result<Option<Box<dyn View + '_>>> {
        // Only before the secondary instance is opened: a live backup, or a second run in one
        // process, already holds it.
        if self.secondary.is_none() || self.opened().is_some() {
            return Ok(None);
        }
        match self.wal_only_view() {
            Ok(view) => {
                tracing::debug!(
                    checkpoint = view.checkpoint.position,
                    wal_files = view.wal_files.as_ref().map_or(0, Vec::len),
                    "reading the WAL files directly, without opening RocksDB"
                );
                Ok(Some(Box::new(view)))
            }
            Err(why) => {
                tracing::debug!(%why, "no WAL-only view: reading through RocksDB");
                Ok(None)
            }
        }
    }

    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.prepare()?;
            if self.handle()?.latest_sequence_number() > after.position
                || self.ingested_since_view()?
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn trim_changes(&self, _upto: &Checkpoint) -> Result<()> {
        // RocksDB owns its WAL's lifetime (wal_ttl_seconds / wal_size_limit_mb).
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        let names: Vec<String> = self
            .column_families()?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        all_empty(self.handle()?, &self.path, &names)
    }

    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        if self.secondary.is_some() {
            return Err(Error::store(
                self.describe(),
                "cannot restore into a database another process holds open",
            ));
        }
        Ok(Box::new(RocksRestore {
            backend: self,
            created: Vec::new(),
            loads: BTreeMap::new(),
            files: 0,
        }))
    }
}

struct RocksView<'a> {
    backend: &'a RocksBackend,
    /// The snapshot; `None` on a secondary instance, which has no snapshots but changes only
    /// when it catches up with the primary, so plain reads between catch-ups are consistent.
    snapshot: Option<SnapshotWithThreadMode<'a, Db>>,
    checkpoint: Checkpoint,
    cfs: Vec<(String, u32)>,
    /// The SST files the view holds (listed before its snapshot).
    ssts: ingest::SstFiles,
    /// The MANIFEST and its size when the view was taken (before its files were listed), or
    /// why it could not be told.
    manifest_at: std::result::Result<manifest::Position, String>,
    /// Where this run's reading of the MANIFEST stopped (after its last whole edit).
    manifest_end: Option<manifest::Position>,
    /// What a live backup's wait for this view found in the MANIFEST's edits.
    said: Option<String>,
    /// The OPTIONS file as of the view.
    options: Option<StoreOptions>,
    /// The WAL batch the previous backup read last (it ends at that backup's checkpoint), to
    /// be found again where the WAL still holds it ([`View::changes_outside_log`] sets it).
    verify: Option<WalBatch>,
    /// The WAL batch that ends at this view's checkpoint, where the changes' reading saw it.
    last_batch: Option<WalBatch>,
    /// A WAL-only view ([`StorageBackend::log_view`]): the WAL files it reads directly, listed
    /// when it was taken. `None`: the view reads through the database handle.
    wal_files: Option<Vec<walfiles::WalFile>>,
}

/// Where a view reads WAL batches from.
enum Batches {
    /// RocksDB's WAL iterator.
    Db(rocksdb::DBWALIterator),
    /// The WAL files, read directly.
    Files(walfiles::Batches),
}

/// Why the next batch could not be read.
enum BatchError {
    /// The WAL rotated under RocksDB's iterator: read again from where it stopped.
    TryAgain,
    /// RocksDB found the WAL damaged.
    Corruption(rocksdb::Error),
    /// Anything else (the WAL cannot be read).
    Other(String),
}

/// A batch's bytes as its source gives them (RocksDB's batch is not copied).
enum BatchData {
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
struct WalBatch {
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
fn gone(
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
    fn batches_since(&self, since: u64) -> std::result::Result<Batches, String> {
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

/// A run of keys shorter than this that breaks the ascending order switches its collection to
/// the memtable path: a store whose keys come in no byte order (a SQLite source's row ids, say)
/// would otherwise make one tiny SST file per record.
const MIN_SST_RUN: u64 = 4096;

/// How one collection of a restore is being loaded.
enum Load<'a> {
    /// Every key so far ascending: written straight into an SST file (`file`), ingested whole.
    Sst {
        writer: SstFileWriter<'a>,
        file: PathBuf,
        last: Vec<u8>,
        count: u64,
    },
    /// Keys came out of order after a short run: written through the memtables (no WAL).
    Memtable,
}

/// A restore: records that arrive in ascending key order per collection (a scan of RocksDB or
/// sled, the bulk of any archive) are written into SST files with `SstFileWriter` and ingested,
/// which costs one sequential write and a block of memory; anything out of order goes through
/// the memtables. An SST file is ingested as soon as its run ends, before its collection gets
/// any memtable write, so later records always have the higher sequence numbers and win, as
/// they must.
struct RocksRestore<'a> {
    backend: &'a RocksBackend,
    created: Vec<String>,
    loads: BTreeMap<String, Load<'a>>,
    /// SST files written so far (names the next one).
    files: u64,
}

impl<'a> RocksRestore<'a> {
    /// Starts an SST file for column family `name`.
    fn start_sst(&mut self, name: &str) -> Result<Option<Load<'a>>> {
        let Some(layout) = self.backend.layout.as_ref() else {
            return Ok(None);
        };
        let opts = layout.options(name);
        let file = self
            .backend
            .path
            .join(format!("tidemark-restore-{:06}.sst", self.files));
        self.files += 1;
        let writer = SstFileWriter::create(opts);
        writer
            .open(&file)
            .map_err(|e| self.backend.err(&format!("creating {}", file.display()), e))?;
        Ok(Some(Load::Sst {
            writer,
            file,
            last: Vec::new(),
            count: 0,
        }))
    }

    /// Finishes an SST file and ingests it into column family `name` (moving it into the
    /// database).
    fn ingest(&self, name: &str, mut writer: SstFileWriter<'a>, file: &Path) -> Result<()> {
        let db = self.backend.handle()?;
        writer
            .finish()
            .map_err(|e| self.backend.err(&format!("writing {}", file.display()), e))?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let ingested = match cf(db, &self.backend.path, name)? {
            Cf::Default => db.ingest_external_file_opts(&opts, vec![file]),
            Cf::Named(h) => db.ingest_external_file_cf_opts(&h, &opts, vec![file]),
        };
        ingested.map_err(|e| self.backend.err(&format!("ingesting into `{name}`"), e))?;
        // Moved files are hard links; the original name goes.
        match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", file, e)),
            _ => Ok(()),
        }
    }
}

impl RestoreSink for RocksRestore<'_> {
    fn create_collection(&mut self, info: &CollectionInfo, _source: StoreKind) -> Result<()> {
        let stored = stored(&info.name);
        let name = stored.as_str();
        let db = self.backend.handle()?;
        let layout = self.backend.layout.as_ref();
        if name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && db.cf_handle(name).is_none() {
            let default = Options::default();
            let opts = layout.map_or(&default, |l| l.options(name));
            db.create_cf(name, opts).map_err(|e| {
                self.backend
                    .err(&format!("creating column family `{name}`"), e)
            })?;
        } else if let Some((compression, _)) = layout.and_then(|l| l.by_cf.get(name)) {
            // A column family the new database already has (`default`): its memtables flush
            // with the source's compression too.
            let set = [("compression", *compression)];
            let done = match cf(db, &self.backend.path, name)? {
                Cf::Default => db.set_options(&set),
                Cf::Named(h) => db.set_options_cf(&h, &set),
            };
            done.map_err(|e| {
                self.backend
                    .err(&format!("setting the compression of `{name}`"), e)
            })?;
        }
        self.created.push(name.to_string());
        Ok(())
    }

    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        let name = stored(collection);
        let db = self.backend.handle()?;
        let mut batch = WriteBatch::default();
        let mut load = match self.loads.remove(&name) {
            Some(l) => l,
            None => self.start_sst(&name)?.unwrap_or(Load::Memtable),
        };
        let mut handle = None;
        for record in &records {
            let row_json;
            let value: &[u8] = match &record.value {
                Value::Bytes(v) => v,
                Value::Row(row) => {
                    row_json = backup_core::row_to_json_bytes(row);
                    &row_json
                }
            };
            let key = record.key.as_bytes();
            if let Load::Sst {
                writer,
                file,
                last,
                count,
            } = &mut load
            {
                if *count == 0 || key > last.as_slice() {
                    writer
                        .put(key, value)
                        .map_err(|e| self.backend.err(&format!("writing {}", file.display()), e))?;
                    last.clear();
                    last.extend_from_slice(key);
                    *count += 1;
                    continue;
                }
                let long_run = *count >= MIN_SST_RUN;
                let Load::Sst { writer, file, .. } = std::mem::replace(&mut load, Load::Memtable)
                else {
                    unreachable!("matched above")
                };
                self.ingest(&name, writer, &file)?;
                if long_run {
                    if let Some(Load::Sst {
                        mut writer,
                        file,
                        mut last,
                        ..
                    }) = self.start_sst(&name)?
                    {
                        writer.put(key, value).map_err(|e| {
                            self.backend.err(&format!("writing {}", file.display()), e)
                        })?;
                        last.extend_from_slice(key);
                        load = Load::Sst {
                            writer,
                            file,
                            last,
                            count: 1,
                        };
                        continue;
                    }
                }
            }
            let h = match &handle {
                Some(h) => h,
                None => handle.insert(cf(db, &self.backend.path, &name)?),
            };
            match h {
                Cf::Default => batch.put(key, value),
                Cf::Named(h) => batch.put_cf(h, key, value),
            }
        }
        self.loads.insert(name, load);
        if batch.is_empty() {
            return Ok(());
        }
        // Bulk load without the WAL; `finish` flushes every column family to SST files.
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        db.write_opt(batch, &opts)
            .map_err(|e| self.backend.err(&format!("writing into `{collection}`"), e))
    }

    fn finish(mut self: Box<Self>, _schema: &StoreSchema, _source: StoreKind) -> Result<()> {
        for (name, load) in std::mem::take(&mut self.loads) {
            if let Load::Sst { writer, file, .. } = load {
                self.ingest(&name, writer, &file)?;
            }
        }
        let db = self.backend.handle()?;
        for name in &self.created {
            let flushed = match cf(db, &self.backend.path, name)? {
                Cf::Default => db.flush(),
                Cf::Named(h) => db.flush_cf(&h),
            };
            flushed.map_err(|e| self.backend.err(&format!("flushing `{name}`"), e))?;
        }
        db.flush_wal(true)
            .map_err(|e| self.backend.err("syncing the WAL", e))
    }
}

/// Makes RocksDB databases at paths (restore targets).
#[derive(Debug, Default, Clone, Copy)]
pub struct RocksFactory {
    /// The table `format_version` to write, overriding the one the backup recorded.
    pub format_version: Option<i32>,
}

impl RocksFactory {
    /// The compression a restore of a backup of `source` with `schema` gives each column
    /// family: the source's, where a RocksDB backup recorded it (by the OPTIONS file's
    /// names). Other column families get RocksDB's default.
    pub fn compression_for(
        &self,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> BTreeMap<String, String> {
        if source != StoreKind::Rocksdb {
            return BTreeMap::new();
        }
        schema
            .0
            .get("compression")
            .and_then(|c| c.as_object())
            .map(|c| {
                c.iter()
                    .filter_map(|(cf, v)| Some((cf.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The table `format_version` a restore of a backup of `source` with `schema` writes: the
    /// override, else the source's own (a RocksDB backup records it), else
    /// [`DEFAULT_FORMAT_VERSION`].
    pub fn format_for(&self, schema: &StoreSchema, source: StoreKind) -> i32 {
        if let Some(v) = self.format_version {
            return v;
        }
        if source == StoreKind::Rocksdb {
            if let Some(v) = schema.0.get("format_version").and_then(|v| v.as_i64()) {
                if (2..=MAX_FORMAT_VERSION as i64).contains(&v) {
                    return v as i32;
                }
            }
        }
        DEFAULT_FORMAT_VERSION
    }
}

impl StoreFactory for RocksFactory {
    fn kind(&self) -> StoreKind {
        StoreKind::Rocksdb
    }

    fn holds_data(&self, path: &Path) -> Result<bool> {
        // Read-only: checking a target must not change it.
        backup_core::dir_store_holds_data(path, "CURRENT", "RocksDB", || {
            let err = |e: rocksdb::Error| Error::store_cause(describe(path), "", e);
            let opts = Options::default();
            let names = Db::list_cf(&opts, path).map_err(err)?;
            let db = Db::open_cf_for_read_only(&opts, path, &names, false).map_err(err)?;
            all_empty(&db, path, &names)
        })
    }

    fn check_replaceable(&self, path: &Path) -> Result<()> {
        backup_core::check_dir_store_replaceable(path, "CURRENT", "RocksDB")
    }

    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>> {
        Ok(Box::new(RocksBackend::create_with_format(
            path,
            self.format_version.unwrap_or(DEFAULT_FORMAT_VERSION),
        )?))
    }

    fn create_like(
        &self,
        path: &Path,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> Result<Box<dyn StorageBackend>> {
        let layout = Layout::new(
            self.format_for(schema, source),
            self.compression_for(schema, source),
        );
        Ok(Box::new(RocksBackend::create_with_layout(path, layout)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a WAL-only view reads (the MANIFEST replayed, the WAL files read directly) equals
    /// what a secondary instance opened at the same moment holds, through a primary's life:
    /// writes in the WAL only, a column family created, batches larger than a log block (a
    /// record in fragments), flushes (new WAL files, the old ones kept in `archive/` by a WAL
    /// TTL), a column family dropped, a compaction, a file ingested, and a reopen (a new
    /// MANIFEST). Compared: the checkpoint, the column families with their ids, the live SST
    /// files, and every WAL batch after seven points, byte for byte.
    #[test]
    fn a_wal_only_view_holds_what_a_secondary_instance_holds() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("db");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_wal_ttl_seconds(3600);
        let check = |step: &str| {
            let lazy = RocksBackend::open(&path).expect("open");
            let wal = lazy.wal_only_view().expect("a WAL-only view");
            assert!(lazy.opened().is_none(), "{step}: the view opened RocksDB");
            let real = RocksBackend::open(&path).expect("open");
            let db = real.handle().expect("secondary");
            let seq = db.latest_sequence_number();
            assert_eq!(wal.checkpoint.position, seq, "{step}: checkpoint");
            assert_eq!(
                wal.cfs,
                real.column_families().expect("cfs"),
                "{step}: column families"
            );
            assert_eq!(
                wal.ssts.numbers(),
                ingest::SstFiles::of(db).expect("files").numbers(),
                "{step}: SST files"
            );
            for since in [0, 1, seq / 5, seq / 3, seq / 2, seq.saturating_sub(3), seq] {
                let mine: Vec<(u64, Vec<u8>)> = wal
                    .batches_since(since)
                    .expect("files")
                    .map(|b| b.ok().map(|(s, data)| (s, data.to_vec())).expect("a batch"))
                    .collect();
                let theirs: Vec<(u64, Vec<u8>)> = db
                    .get_updates_since(since)
                    .expect("iterator")
                    .map(|b| b.map(|(s, w)| (s, w.data().to_vec())).expect("a batch"))
                    .collect();
                assert_eq!(mine, theirs, "{step}: batches after {since}");
            }
        };
        let big = vec![7u8; 100_000];
        {
            let db = Db::open_cf(&opts, &path, ["default"]).expect("primary");
            for i in 0..50u32 {
                db.put(format!("k{i:03}"), format!("v{i}")).expect("put");
            }
            check("WAL only");
            db.create_cf("b", &opts).expect("cf");
            let b = db.cf_handle("b").expect("b");
            let mut batch = WriteBatch::default();
            for i in 0..20u32 {
                batch.put_cf(&b, format!("b{i}"), &big);
            }
            batch.delete(b"k001");
            db.write(batch).expect("a batch of 2 MB");
            db.put_cf(&b, b"small", b"1").expect("put");
            check("a column family and a fragmented batch");
            db.flush().expect("flush");
            db.flush_cf(&b).expect("flush");
            // Many WAL files (each flush starts one), found by a binary search.
            for round in 0..9u32 {
                for i in 0..20u32 {
                    db.put(format!("r{round}-{i}"), b"v").expect("put");
                }
                db.flush().expect("flush");
            }
            for i in 0..30u32 {
                db.put(format!("after{i}"), &big[..i as usize * 1000])
                    .expect("put");
            }
            check("flushed, then written");
            drop(b);
            db.drop_cf("b").expect("drop");
            db.create_cf("c", &opts).expect("cf");
            db.put_cf(&db.cf_handle("c").expect("c"), b"c1", b"x")
                .expect("put");
            db.compact_range(None::<&[u8]>, None::<&[u8]>);
            check("dropped, created, compacted");
            let sst = d.path().join("ingest.sst");
            let sst_opts = Options::default();
            let mut w = SstFileWriter::create(&sst_opts);
            w.open(&sst).expect("sst");
            w.put(b"zz1", b"i").expect("put");
            w.finish().expect("finish");
            db.ingest_external_file(vec![&sst]).expect("ingest");
            check("ingested");
        }
        let names = Db::list_cf(&opts, &path).expect("cfs");
        let db = Db::open_cf(&opts, &path, &names).expect("reopen");
        db.put(b"reopened", b"1").expect("put");
        check("reopened");
        db.flush_wal(true).expect("sync");
        drop(db);
        check("closed");
    }

    #[test]
    fn sst_files_are_opened_on_one_thread_until_there_are_many() {
        let d = tempfile::tempdir().expect("tmp");
        assert_eq!(file_opening_threads(d.path()), 1, "no SST files");
        assert_eq!(file_opening_threads(&d.path().join("missing")), 1);
        for i in 0..100 {
            std::fs::write(d.path().join(format!("{i:06}.sst")), b"").expect("write");
            std::fs::write(d.path().join(format!("{i:06}.log")), b"").expect("write");
        }
        assert_eq!(file_opening_threads(d.path()), 3, "100 SST files");
        for i in 100..2000 {
            std::fs::write(d.path().join(format!("{i:06}.sst")), b"").expect("write");
        }
        assert_eq!(
            file_opening_threads(d.path()),
            16,
            "RocksDB's default at most"
        );
    }

    #[test]
    fn options_file_fields_are_read() {
        let text = "[Version]\n  rocksdb_version=9.8.4\n  options_file_version=1.1\n\n\
                    [TableOptions/BlockBasedTable \"default\"]\n  block_size=4096\n  format_version=6\n\n\
                    [TableOptions/BlockBasedTable \"other\"]\n  format_version=7\n\n\
                    [CFOptions \"queue\"]\n  compaction_style=kCompactionStyleLevel\n\n\
                    [CFOptions \"events\"]\n  compaction_style=kCompactionStyleFIFO\n\
                    compression=kLZ4Compression\n  bottommost_compression=kDisableCompressionOption\n\n\
                    [CFOptions \"levels\"]\n  compression=kLZ4Compression\n\
                    compression_per_level=kNoCompression:kSnappyCompression:kZSTD\n\n\
                    [CFOptions \"bottom\"]\n  compression=kNoCompression\n\
                    compression_per_level=kNoCompression:kSnappyCompression\n\
                    bottommost_compression=kZlibCompression\n\n\
                    [CFOptions \"empty\"]\n  compression_per_level=\n  compression=kNoCompression\n";
        let o = parse_options_file(text);
        assert_eq!((o.version, o.format), (Some("9.8.4".to_string()), Some(6)));
        assert_eq!(o.fifo, ["events".to_string()].into());
        let compression: Vec<(&str, &str)> = o
            .compression
            .iter()
            .map(|(cf, c)| (cf.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            compression,
            [
                ("bottom", "kZlibCompression"),
                ("empty", "kNoCompression"),
                ("events", "kLZ4Compression"),
                ("levels", "kZSTD"),
            ]
        );
        assert_eq!(parse_options_file("garbage"), StoreOptions::default());
    }

    #[test]
    fn restores_write_the_source_format_or_a_conservative_one() {
        let f = RocksFactory::default();
        let schema = StoreSchema(serde_json::json!({"format_version": 5}));
        assert_eq!(f.format_for(&schema, StoreKind::Rocksdb), 5);
        assert_eq!(
            f.format_for(&schema, StoreKind::Sqlite),
            DEFAULT_FORMAT_VERSION
        );
        let bogus = StoreSchema(serde_json::json!({"format_version": 99}));
        assert_eq!(
            f.format_for(&bogus, StoreKind::Rocksdb),
            DEFAULT_FORMAT_VERSION
        );
        let forced = RocksFactory {
            format_version: Some(6),
        };
        assert_eq!(forced.format_for(&schema, StoreKind::Rocksdb), 6);
        // Compression: the source's where a RocksDB backup recorded it; names this build
        // does not know are left to RocksDB's default.
        let schema = StoreSchema(serde_json::json!({"compression": {
            "a": "kNoCompression", "b": "kXpressCompression", "c": 3
        }}));
        let compression = f.compression_for(&schema, StoreKind::Rocksdb);
        assert_eq!(compression.len(), 2, "{compression:?}");
        assert!(f.compression_for(&schema, StoreKind::Sqlite).is_empty());
        let layout = Layout::new(4, compression);
        assert_eq!(
            layout
                .by_cf
                .iter()
                .map(|(cf, (n, _))| (cf.as_str(), *n))
                .collect::<Vec<_>>(),
            [("a", "kNoCompression")]
        );
    }

    #[test]
    fn a_restore_through_sst_files_keeps_the_last_value_of_every_key() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("db");
        let target = RocksBackend::create(&path).expect("create");
        let name = CollectionName::new("c");
        let put = |k: &str, v: &str| Record {
            key: backup_core::Key(k.as_bytes().to_vec()),
            value: Value::Bytes(v.as_bytes().to_vec()),
        };
        {
            let mut sink = target.restore_sink().expect("sink");
            sink.create_collection(&CollectionInfo::plain("c"), StoreKind::Rocksdb)
                .expect("cf");
            // A long ascending run (one SST file), in two batches.
            let run: Vec<Record> = (0..10_000).map(|i| put(&format!("k{i:05}"), "1")).collect();
            let (a, b) = run.split_at(6_000);
            sink.put_batch(&name, a.to_vec()).expect("run");
            sink.put_batch(&name, b.to_vec()).expect("run");
            assert!(
                path.join("tidemark-restore-000000.sst").is_file(),
                "an ascending run is written as an SST file"
            );
            // Out of order after a long run: the first file is ingested, a second one starts
            // and overlaps it.
            let again: Vec<Record> = (5_000..5_010)
                .map(|i| put(&format!("k{i:05}"), "2"))
                .collect();
            sink.put_batch(&name, again).expect("second run");
            // Out of order after a short run: memtable from here on, and still the newest.
            sink.put_batch(
                &name,
                vec![put("a", "3"), put("k05000", "3"), put("k00001", "3")],
            )
            .expect("memtable");
            sink.finish(&StoreSchema::default(), StoreKind::Rocksdb)
                .expect("finish");
        }
        drop(target);
        // Read back with the plain RocksDB API.
        let db = Db::open_cf(&Options::default(), &path, ["default", "c"]).expect("open");
        let cf = db.cf_handle("c").expect("cf");
        let get = |k: &str| {
            db.get_cf(&cf, k.as_bytes())
                .expect("get")
                .map(|v| String::from_utf8(v).expect("utf8"))
        };
        assert_eq!(get("k00000").as_deref(), Some("1"));
        assert_eq!(get("k00001").as_deref(), Some("3"));
        assert_eq!(get("k05000").as_deref(), Some("3"));
        assert_eq!(get("k05009").as_deref(), Some("2"));
        assert_eq!(get("k05010").as_deref(), Some("1"));
        assert_eq!(get("k09999").as_deref(), Some("1"));
        assert_eq!(get("a").as_deref(), Some("3"));
        assert_eq!(db.iterator_cf(&cf, IteratorMode::Start).count(), 10_001);
        let left: Vec<_> = std::fs::read_dir(&path)
            .expect("dir")
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("tidemark-restore")
            })
            .collect();
        assert!(left.is_empty(), "SST files moved into the database");
    }
}
