//! # backend-sqlite
//!
//! tidemark's [`StorageBackend`] for SQLite (through rusqlite).
//!
//! - Collections are the user tables; a record is a row keyed by its primary key (or rowid),
//!   with every value's SQL type kept exactly.
//! - Changes are captured by triggers installed with [`SqliteBackend::track`] (see
//!   [`tracking`]), so writes by any connection or process are seen. The checkpoint is the
//!   change log's sequence number.
//! - A view is one read transaction: consistent, and in WAL mode it does not block writers.
//!
//! ```
//! use backend_sqlite::SqliteBackend;
//! use backup_core::{backup_folder, BackupOptions, StorageBackend};
//!
//! let dir = tempfile::tempdir()?;
//! let db = dir.path().join("app.db");
//! let conn = rusqlite::Connection::open(&db)?;
//! conn.execute_batch("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); \
//!                     INSERT INTO users(name) VALUES ('ann'), ('bob');")?;
//! let backend = SqliteBackend::open(&db)?;
//! backend.track()?;
//! let summary = backup_folder(&backend, &dir.path().join("backup"), &BackupOptions::default(),
//!                             &mut |_| {})?;
//! assert_eq!(summary.records_total, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod table;
pub mod tracking;

use backup_core::{
    Change, ChangeOp, Checkpoint, CollectionInfo, CollectionName, Error, Field, Record,
    RestoreSink, Result, Row, StorageBackend, StoreFactory, StoreId, StoreKind, StoreSchema, Value,
    View,
};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use table::{encode_key, field, quote_ident, user_tables, SqlField, Table};

pub use tracking::TrackReport;

/// The identity reported for a database without tracking (it always gets full backups).
pub const UNTRACKED_ID: &str = "untracked";

/// How long a connection waits for a lock another connection holds (SQLite's busy timeout).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the change log's trim waits for the write lock; past it, the next backup trims.
pub(crate) const TRIM_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a wait for a lock goes on before it is said (a warning on stderr).
const BUSY_NOTICE: Duration = Duration::from_secs(1);

/// The sleeps, in milliseconds, between a waiting connection's tries: SQLite's own busy
/// timeout's (`sqliteDefaultBusyCallback`), then its last one over and over.
const BUSY_SLEEPS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

/// Waits for a lock as [`BUSY_TIMEOUT`] does, and says so once the wait passes
/// [`BUSY_NOTICE`]: a database held in exclusive locking mode, or a long commit in
/// rollback-journal mode, made a backup stand still for 30 s without a word. `tries` is how
/// many times SQLite already asked during this wait; `false` gives up (SQLITE_BUSY).
fn wait_for_lock(tries: i32) -> bool {
    let tries = tries.max(0) as usize;
    let last = BUSY_SLEEPS[BUSY_SLEEPS.len() - 1];
    let sleep_of = |i: usize| BUSY_SLEEPS.get(i).copied().unwrap_or(last);
    let slept: u64 = BUSY_SLEEPS.iter().take(tries).sum::<u64>()
        + last * tries.saturating_sub(BUSY_SLEEPS.len()) as u64;
    let limit = BUSY_TIMEOUT.as_millis() as u64;
    if slept >= limit {
        return false;
    }
    let sleep = sleep_of(tries).min(limit - slept);
    let notice = BUSY_NOTICE.as_millis() as u64;
    if slept < notice && slept + sleep >= notice {
        let db = WAITING_ON.with(|w| w.borrow().clone());
        tracing::warn!(
            "{}the SQLite database is locked by another connection (a commit in progress, an \
             exclusive transaction, or an application in exclusive locking mode); waiting up to \
             {} s for it",
            db.map(|p| format!("{p}: ")).unwrap_or_default(),
            BUSY_TIMEOUT.as_secs()
        );
    }
    std::thread::sleep(Duration::from_millis(sleep));
    true
}

std::thread_local! {
    /// The database whose connection this thread set up to wait last, for the waiting notice
    /// to name (SQLite's busy handler is told nothing but the number of tries).
    static WAITING_ON: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Makes `conn` wait up to [`BUSY_TIMEOUT`] for a lock, saying so past [`BUSY_NOTICE`].
fn wait_for_locks(conn: &Connection) -> rusqlite::Result<()> {
    let path = conn.path().filter(|p| !p.is_empty()).map(str::to_string);
    WAITING_ON.with(|w| *w.borrow_mut() = path);
    conn.busy_handler(Some(wait_for_lock))
}

/// A SQLite database as a tidemark store.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Read the database without writing even its shared-memory index (`-shm`): an
    /// untracked database an application left a `-wal` beside (see
    /// [`SqliteBackend::open_for_backup`]).
    readonly_shm: bool,
    /// The recovered copy read instead of a database SQLite can read only by writing (see
    /// [`SqliteBackend::open_for_backup`]).
    copy: Option<RecoveredCopy>,
    /// Whether the virtual tables backups leave out were named (once per backend).
    named_virtual: std::sync::atomic::AtomicBool,
    /// The `-wal` of an untracked database in WAL mode that this backend's read-write
    /// connection opened without one (see [`SqliteBackend::keep_others_wal`]).
    others_wal: Option<PathBuf>,
    /// The connection's `PRAGMA data_version` when the last view was opened: an untracked
    /// database has no change log, and this is how [`StorageBackend::wait_for_changes`] sees
    /// that another connection committed since.
    seen_version: std::sync::atomic::AtomicI64,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        // An application that wrote while the backup was connected left its WAL to the last
        // connection to close, this one, whose close would checkpoint the WAL into the database
        // file and remove it: a write to a database the user never opted in to. It is left as
        // the application would have left it had it closed last after a crash, which SQLite
        // reads as usual. An empty WAL (nobody wrote) goes as it came.
        let Some(wal) = &self.others_wal else {
            return;
        };
        if std::fs::metadata(wal).is_ok_and(|m| m.len() > 0) {
            let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
            let _ = conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
        }
    }
}

/// A copy of a database and of what its last writer left beside it ([`Leftover`]), in a
/// scratch directory: SQLite recovers the copy when it is opened, and the database itself is
/// not written.
struct RecoveredCopy {
    /// The copy of the database file.
    file: PathBuf,
    /// What made the copy necessary.
    why: Leftover,
    _dir: backup_core::ScratchDir,
}

/// What [`SqliteBackend::open_rollback_reader`] found.
enum Reader {
    /// A read-only backend over the database.
    Opened(Box<SqliteBackend>),
    /// A database it does not apply to: opened read-write instead.
    NotApplicable,
    /// A hot journal ([`Leftover::HotJournal`]).
    HotJournal,
}

/// What a writer left beside a database that SQLite can read only by writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftover {
    /// A hot rollback journal, left by a writer that died inside a transaction (its pages may
    /// be in the database file already): the next connection that may write rolls the
    /// database back, writing it and removing the journal. SQLite itself tells one, with its
    /// locks: a read-only connection refuses to read (`SQLITE_READONLY_ROLLBACK`). The journal
    /// of a writer still running is not hot.
    HotJournal,
    /// A `-wal` file without its `-shm` index (copied without it, or left by an application in
    /// exclusive locking mode, which keeps the index in memory): a read-only connection cannot
    /// build the index, and a read-write one writes it and checkpoints the WAL.
    WalWithoutIndex,
    /// A database in WAL mode without its `-shm` index, in a directory the backup cannot
    /// write (a read-only file system, such as a mounted snapshot, or no write permission):
    /// SQLite reads a WAL database through that index, which it cannot create there, and
    /// refuses to open it. Its `-wal` file, if any, is copied with it.
    ReadOnlyDirectory,
}

impl Leftover {
    /// The file beside the database.
    fn suffix(self) -> &'static str {
        match self {
            Leftover::HotJournal => "-journal",
            Leftover::WalWithoutIndex | Leftover::ReadOnlyDirectory => "-wal",
        }
    }

    /// What it is, for messages.
    fn what(self) -> &'static str {
        match self {
            Leftover::HotJournal => {
                "a hot journal (a writer died inside a transaction, which SQLite rolls back at \
                 the next open that may write)"
            }
            Leftover::WalWithoutIndex => {
                "a -wal file without its -shm index (which SQLite writes again at the next open \
                 that may write, and checkpoints the WAL into the database)"
            }
            Leftover::ReadOnlyDirectory => {
                "WAL mode in a directory the backup cannot write (a read-only file system or no \
                 write permission), where SQLite cannot make the -shm index it reads the \
                 database through"
            }
        }
    }

    /// Whether the copy needs the file beside the database ([`Leftover::suffix`]): a
    /// database in a directory the backup cannot write may have no `-wal` file.
    fn needs_beside(self) -> bool {
        self != Leftover::ReadOnlyDirectory
    }
}

/// Whether the directory of the database at `real` (its real path) can be written: `access`
/// with `W_OK`, which a read-only file system refuses even to root.
fn directory_writable(real: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = match real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return true; // a path SQLite could not open either; its own error says so
    };
    #[allow(unsafe_code)]
    // SAFETY: `dir` is a NUL-terminated path that lives across the call; `access` only reads it.
    let answer = unsafe { libc::access(dir.as_ptr(), libc::W_OK) };
    answer == 0
}

/// `path` with `suffix` appended to its file name (`-wal`, `-journal`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether the database file's header says WAL mode: its file format read and write versions
/// (bytes 18 and 19) are 2, which `PRAGMA journal_mode = WAL` writes and only a change of the
/// journal mode rewrites. `false` when it cannot be read or is no SQLite header.
fn wal_mode_on_disk(path: &Path) -> bool {
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok()
        && header.starts_with(b"SQLite format 3\0")
        && header[18] == 2
        && header[19] == 2
}

/// Whether SQLite refused a read-only connection because of a hot journal.
fn is_hot_journal(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(e, _)
        if e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK)
}

/// An error of `store` while `what` (may be empty), caused by `e`; a read refused for a hot
/// journal left after the backend opened (a live backup's writer was killed) says so.
fn store_err(store: &str, what: &str, e: rusqlite::Error) -> Error {
    if !is_hot_journal(&e) {
        return Error::store_cause(store, what, e);
    }
    let what = if what.is_empty() {
        HOT_JOURNAL_SINCE.to_string()
    } else {
        format!("{what}: {HOT_JOURNAL_SINCE}")
    };
    Error::store_cause(store, what, e)
}

/// Why a backup stopped on a hot journal left after it opened the database.
const HOT_JOURNAL_SINCE: &str = "a writer died inside a transaction and left a hot journal, \
     which the backup does not roll back (it writes nothing to the database); back it up again \
     once the application has opened the database, or now with a one-off backup, which reads a \
     rolled-back copy";

/// What tells one state of a file from another: device, inode, length, modification time and
/// first bytes (a rollback deletes the journal, truncates it or zeroes its header); `None`
/// once it is gone.
fn file_state(path: &Path) -> Option<(u64, u64, u64, i64, i64, [u8; 8])> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let mut head = [0u8; 8];
    let _ = file.read(&mut head).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        head,
    ))
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteBackend {
    /// Opens an existing database. Fails with a plain error if the file is missing or is not a
    /// SQLite database.
    pub fn open(path: &Path) -> Result<Self> {
        Self::check_file(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_else(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        })
        .map_err(|e| Error::bad_input_cause(path, "cannot open as a SQLite database", e))?;
        Self::check_database(&conn, path)?;
        Self::with(path, conn)
    }

    /// Opens an existing database to back it up, writing nothing to it unless it is tracked
    /// (`tidemark track`, which opts in to triggers and a change log):
    ///
    /// - without a `-wal` file (no writer has it open, or not in WAL mode), read-write: SQLite
    ///   then removes the `-wal`/`-shm` files it creates for a WAL database when the backup's
    ///   last connection closes, and the database file is left as it was;
    /// - with a `-wal` file (an application has it open, or was killed), read-only: the
    ///   application's WAL is neither checkpointed nor removed by the backup;
    /// - with a hot journal (a writer in a rollback-journal mode died inside a transaction, and
    ///   pages of it may be in the database file), from a copy in the system's temporary
    ///   directory, rolled back there, with a warning: a read-write open would roll the
    ///   database itself back (writing it and removing the journal); the same with a `-wal`
    ///   file without its `-shm` index, which a read-only connection cannot read. Space for one
    ///   copy of the database is needed there, and a live backup refuses such a database
    ///   ([`SqliteBackend::open_for_live`]).
    ///
    /// The `-wal` file can vanish between the look and the open: the application's last
    /// connection closes, and SQLite removes the `-shm` (which a read-only connection cannot
    /// create) and then the `-wal`. A read-only open that fails is therefore tried again, a
    /// little later, from the choice on (at most three times).
    pub fn open_for_backup(path: &Path) -> Result<Self> {
        // SQLite names the -wal, -shm and -journal files after the database's real path (it
        // resolves symbolic links): looked for beside a link, a crashed writer's WAL was
        // missed, and the read-write open checkpointed it and removed it.
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let wal_present = || suffixed(&real, "-wal").exists();
        let mut attempt = 0;
        loop {
            // A WAL database with no -shm index in a directory that cannot be written. With
            // one (its application has it open, or died), a read-only connection reads
            // through it, or through the -wal file itself when no application keeps the
            // index up (SQLite's "unreliable" index: `wal_databases_on_read_only_mounts…`).
            // The directory is asked first: a writable one (nearly always) spares reading the
            // header here as well as in `open_rollback_reader`.
            let leftover = if !suffixed(&real, "-shm").exists()
                && !directory_writable(&real)
                && wal_mode_on_disk(&real)
            {
                Leftover::ReadOnlyDirectory
            } else if !wal_present() {
                match Self::open_rollback_reader(path, &real)? {
                    Reader::Opened(backend) => return Ok(*backend),
                    Reader::NotApplicable => {
                        let mut backend = Self::open(path)?;
                        backend.keep_others_wal(&real)?;
                        return Ok(backend);
                    }
                    Reader::HotJournal => Leftover::HotJournal,
                }
            } else if !suffixed(&real, "-shm").exists() {
                Leftover::WalWithoutIndex
            } else {
                match Self::open_read_only(path) {
                    Err(_) if attempt < 3 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    }
                    done => return done,
                }
            };
            match Self::open_recovered_copy(path, &real, leftover)? {
                Some(backend) => return Ok(backend),
                None if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                None => {
                    return Err(Error::BadInput {
                        path: path.to_path_buf(),
                        cause: format!(
                            "it has {}, and it changed every time it was copied: another \
                             process is recovering or writing the database; back it up once it \
                             has",
                            leftover.what()
                        ),
                        source: None,
                    })
                }
            }
        }
    }

    /// [`SqliteBackend::open_for_backup`] of an untracked database in a rollback-journal mode:
    /// its own connection is read-only, as its views' are, so that a hot journal that a writer
    /// killed during the backup (or during a live backup, which keeps the connection for its
    /// whole run) leaves is not rolled back in place by the backup's next read, as a
    /// read-write connection's would be. Not applicable to a database in WAL mode (a read-only
    /// connection cannot create its `-shm`) or a tracked one (the user opted in to writes).
    /// Its first read is also how a hot journal is told ([`Leftover::HotJournal`]).
    /// `real` is the database's real path, beside which a hot journal would be.
    fn open_rollback_reader(path: &Path, real: &Path) -> Result<Reader> {
        Self::check_file(path)?;
        // A database whose header says WAL mode, with no journal beside it, is not applicable
        // without the open below, which cost another open of the database (about 1 ms of a
        // 50 ms incremental).
        if wal_mode_on_disk(real) && !suffixed(real, "-journal").exists() {
            return Ok(Reader::NotApplicable);
        }
        let Ok(conn) = open_reader(path, false) else {
            return Ok(Reader::NotApplicable);
        };
        wait_for_locks(&conn)
            .map_err(|e| Error::store_cause(describe(path), "setting the busy timeout", e))?;
        let mode = conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0));
        match mode {
            Err(e) if is_hot_journal(&e) => return Ok(Reader::HotJournal),
            Ok(mode) if !mode.eq_ignore_ascii_case("wal") => {}
            // WAL mode, or an error the read-write open reports with its own words.
            _ => return Ok(Reader::NotApplicable),
        }
        if tracking::is_tracked(&conn).unwrap_or(true) {
            return Ok(Reader::NotApplicable);
        }
        Ok(Reader::Opened(Box::new(Self::with(path, conn)?)))
    }

    /// The connection's `PRAGMA data_version`, which changes when another connection commits.
    fn data_version(&self) -> Result<i64> {
        self.lock()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Notes the `-wal` (beside `real`, the database's real path) of an untracked database in
    /// WAL mode opened read-write without one, whose close would checkpoint what an
    /// application wrote meanwhile (see the `Drop` impl).
    fn keep_others_wal(&mut self, real: &Path) -> Result<()> {
        let conn = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| Error::store_cause(describe(&self.path), "reading the journal mode", e))?;
        let tracked = tracking::is_tracked(conn)
            .map_err(|e| Error::store_cause(describe(&self.path), "", e))?;
        if mode.eq_ignore_ascii_case("wal") && !tracked {
            self.others_wal = Some(suffixed(real, "-wal"));
        }
        Ok(())
    }

    /// [`SqliteBackend::open_for_backup`] for a live backup, which follows the database as its
    /// application writes it: a database read through a recovered copy (a hot journal, a
    /// `-wal` without its `-shm`) is refused (a live backup of the copy would never see a
    /// change), until its application opens it and recovers it.
    pub fn open_for_live(path: &Path) -> Result<Self> {
        let backend = Self::open_for_backup(path)?;
        if let Some(copy) = &backend.copy {
            let when = match copy.why {
                Leftover::ReadOnlyDirectory => "back it up live where its directory can be written",
                _ => "start the live backup once its application has opened it again",
            };
            return Err(Error::BadInput {
                path: path.to_path_buf(),
                cause: format!(
                    "it has {}, and a live backup follows the database itself without writing \
                     to it: {when} (a one-off backup reads a recovered copy)",
                    copy.why.what()
                ),
                source: None,
            });
        }
        Ok(backend)
    }

    /// [`SqliteBackend::open_for_backup`] of a database SQLite can read only by writing
    /// ([`Leftover`]), whose real path (symbolic links resolved) is `real`: the file beside
    /// it, then the database file, are copied to a scratch
    /// directory, where SQLite recovers the copy when it is opened. `None` if either file
    /// changed or vanished meanwhile (another process recovered the database, or wrote): the
    /// copy may mix two states, and the caller looks again.
    fn open_recovered_copy(path: &Path, real: &Path, why: Leftover) -> Result<Option<Self>> {
        let beside = suffixed(real, why.suffix());
        let beside_was = file_state(&beside);
        let Some(db_was) = file_state(real) else {
            return Ok(None);
        };
        if beside_was.is_none() && why.needs_beside() {
            return Ok(None);
        }
        let dir = backup_core::ScratchDir::new("tidemark-sqlite-copy-")?;
        let file = dir.path().join("db");
        let copies = [
            (&beside, suffixed(&file, why.suffix())),
            (&real.to_path_buf(), file.clone()),
        ];
        // The file beside it first (when there is one), then the database.
        let skip = usize::from(beside_was.is_none());
        for (from, to) in copies.iter().skip(skip) {
            match dir.copy_in(from, to) {
                Ok(()) => {}
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
        if file_state(&beside) != beside_was || file_state(real) != Some(db_was) {
            return Ok(None);
        }
        let after = match why {
            Leftover::ReadOnlyDirectory => {
                "the database cannot be written there, so the change log of a tracked one is \
                 not trimmed"
            }
            _ => "its application recovers it when it opens it",
        };
        tracing::warn!(
            "{} has {}: the backup reads a copy recovered in {} and leaves the database as it \
             is ({after})",
            describe(path),
            why.what(),
            dir.path().display()
        );
        let mut backend = Self::open(&file).map_err(|e| match e {
            Error::BadInput { cause, source, .. } => Error::BadInput {
                path: path.to_path_buf(),
                cause: format!("{cause} (in its copy, recovered from {})", why.what()),
                source,
            },
            e => e,
        })?;
        backend.path = path.to_path_buf();
        backend.copy = Some(RecoveredCopy {
            file,
            why,
            _dir: dir,
        });
        Ok(Some(backend))
    }

    /// [`SqliteBackend::open_for_backup`] of a database with a `-wal` file.
    fn open_read_only(path: &Path) -> Result<Self> {
        Self::check_file(path)?;
        let conn = open_reader(path, true)
            .map_err(|e| Error::bad_input_cause(path, "cannot open as a SQLite database", e))?;
        Self::check_database(&conn, path)?;
        if tracking::is_tracked(&conn).unwrap_or(false) {
            // Tracked: the user opted in to tidemark writing its change log.
            drop(conn);
            return Self::open(path);
        }
        let mut backend = Self::with(path, conn)?;
        backend.readonly_shm = true;
        Ok(backend)
    }

    fn check_file(path: &Path) -> Result<()> {
        if path.is_file() {
            return Ok(());
        }
        Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: if path.join("CURRENT").is_file() {
                format!(
                    "a directory, and a SQLite database is a file: this is a RocksDB database \
                     (rocksdb:{})",
                    path.display()
                )
            } else if path.join("conf").is_file() && path.join("db").is_file() {
                format!(
                    "a directory, and a SQLite database is a file: this looks like a sled \
                     database (sled:{})",
                    path.display()
                )
            } else if path.exists() {
                "not a file".into()
            } else {
                "no such file".into()
            },
            source: None,
        })
    }

    /// Creates a new, empty database at `path` (a restore target).
    pub fn create(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| Error::bad_input_cause(path, "cannot create a SQLite database", e))?;
        Self::with(path, conn)
    }

    fn with(path: &Path, conn: Connection) -> Result<Self> {
        wait_for_locks(&conn)
            .map_err(|e| Error::store_cause(describe(path), "setting the busy timeout", e))?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            readonly_shm: false,
            copy: None,
            named_virtual: std::sync::atomic::AtomicBool::new(false),
            others_wal: None,
            seen_version: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    fn check_database(conn: &Connection, path: &Path) -> Result<()> {
        // The check waits for a commit in progress (rollback-journal mode locks readers out
        // while it writes the file) as every read of the backup does: without a busy timeout
        // here, a backup that opened during an application's commit failed at once.
        wait_for_locks(conn)
            .map_err(|e| Error::store_cause(describe(path), "setting the busy timeout", e))?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|_| ())
        .map_err(|e| {
            use rusqlite::ErrorCode;
            let why = match e.sqlite_error_code() {
                Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen) => "a SQLite database that \
                     cannot be read without write access (a database in WAL mode needs its \
                     directory writable for the -shm and -wal files; grant write access, or \
                     copy it somewhere writable first)"
                    .to_string(),
                // Another connection kept even readers out for the whole busy timeout: an
                // application in exclusive locking mode, or one committing for that long.
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
                    "another connection kept readers out of the database for {} s (an \
                     application holds it in exclusive locking mode, `PRAGMA locking_mode = \
                     EXCLUSIVE`, or a commit took that long; back it up when it lets readers \
                     in)",
                    BUSY_TIMEOUT.as_secs()
                ),
                _ => "not a SQLite database".to_string(),
            };
            Error::bad_input_cause(path, why, e)
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file read: the database's, or its recovered copy ([`Leftover`]).
    fn file(&self) -> &Path {
        self.copy.as_ref().map_or(&self.path, |c| &c.file)
    }

    /// Installs change tracking (triggers and a change log inside the database), or completes
    /// it for tables created since. Idempotent.
    pub fn track(&self) -> Result<TrackReport> {
        tracking::install(&mut self.lock(), &self.describe())
    }

    /// Removes change tracking from the database.
    pub fn untrack(&self) -> Result<()> {
        tracking::uninstall(&mut self.lock(), &self.describe())
    }

    /// Whether change tracking is installed.
    pub fn is_tracked(&self) -> Result<bool> {
        tracking::is_tracked(&self.lock()).map_err(|e| self.err(e))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves nothing half-done in it (SQLite rolls
        // back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        store_err(&self.describe(), "", e)
    }
}

/// A read-only connection. With `readonly_shm`, SQLite maps the `-shm` index read-only too
/// (URI parameter `readonly_shm`): a WAL left by a killed writer is then read into memory
/// instead of being recovered into the `-shm` file, so not one byte of the database's files
/// changes.
fn open_reader(path: &Path, readonly_shm: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !readonly_shm {
        return Connection::open_with_flags(path, flags);
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut uri = String::from("file:");
    for b in absolute.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(*b as char)
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push_str("?mode=ro&readonly_shm=1");
    Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
}

/// The part of the change log an incremental reads: sequence numbers after `from` up to `to`,
/// in a log with `width` key columns, handed on in batches of at most `batch_size`.
struct LogRange {
    width: usize,
    from: u64,
    to: u64,
    batch_size: usize,
}

/// Reads the changes of `log`: each logged key at its last log row, looked up in the
/// connection's read transaction.
fn read_log(
    conn: &Connection,
    tables: &[Table],
    store: &str,
    log: &LogRange,
    tx: &std::sync::mpsc::SyncSender<Vec<Change>>,
    second: &(dyn Fn() -> Option<Connection> + Sync),
) -> Result<()> {
    // The receiver is gone only once the visitor failed, whose error is kept.
    let stopped = || Error::store(store, "reading the change log: stopped");
    let mut send_one = |batch| tx.send(batch).map_err(|_| stopped());
    let send = &mut send_one;
    let err = |e: rusqlite::Error| Error::store_cause(store, "reading the change log", e);
    let ks: Vec<String> = (0..log.width).map(|i| format!("k{i}")).collect();
    let ks = ks.join(", ");
    let range = [log.from as i64, log.to as i64];
    let mut emit = ChangeEmitter::new(conn, log, tables, send);
    // Sequence numbers are handed out one after another and never reused (AUTOINCREMENT, in
    // the writers' transactions), and only the trim deletes log rows, all at or before the
    // floor: so the range holds exactly this many rows. Fewer means that something else deleted
    // some (a script clearing every table, a user shrinking a log that grew), and the changes
    // they logged are lost: checked before any change is handed on.
    let expected = log.to - log.from;
    let incomplete = |held: u64| Error::ChangesUnavailable {
        from: log.from,
        earliest: None,
        reason: format!(
            "the change log holds {held} of the {expected} entries after it, up to {}: \
             something other than tidemark deleted rows of {}, and the changes they logged \
             are lost",
            log.to,
            tracking::CHANGES
        ),
    };
    if expected <= DEDUPLICATE_IN_MEMORY {
        // Read in log order (a rowid range, no sort) and keep each key's last row: SQLite's
        // GROUP BY and ORDER BY sorted twice through temporary b-trees, which was a third of
        // the time of a 1% incremental. Rows of no table (capture-gap markers) are counted.
        let sql = format!(
            "SELECT seq, tbl, {ks} FROM {} WHERE seq > ?1 AND seq <= ?2",
            tracking::CHANGES
        );
        // Many lookups are shared with a second connection on a thread of its own, when it can
        // be opened at the same snapshot ([`second_reader`]). It is opened at once, and reads
        // the later half of the log while this connection reads the first: one connection read
        // the whole log while the other core waited (a tenth of a 1% incremental).
        let share = expected >= SHARED_LOOKUPS as u64;
        let mid = if share {
            log.from + expected / 2
        } else {
            log.to
        };
        let sql = sql.as_str();
        return std::thread::scope(|s| {
            // The helper's half of the log, or nothing (the sender dropped) when it has no
            // second connection; then the runs of lookups it shares.
            let (half_tx, half_rx) = std::sync::mpsc::sync_channel::<Result<Logged>>(1);
            let (runs_tx, runs_rx) = std::sync::mpsc::sync_channel::<Arc<LookupRuns>>(1);
            let tx2 = tx.clone();
            let helper = share
                .then(|| {
                    std::thread::Builder::new()
                        .name("sqlite-lookups".into())
                        .spawn_scoped(s, move || {
                            let Some(conn2) = second() else {
                                return Ok(());
                            };
                            let mut send2 = |batch| tx2.send(batch).map_err(|_| stopped());
                            let mut emit2 = ChangeEmitter::new(&conn2, log, tables, &mut send2);
                            let half =
                                read_logged(&conn2, sql, (mid, log.to), &mut emit2).map_err(err);
                            let read = half.is_ok();
                            // This reader's error is the main reader's to report.
                            if half_tx.send(half).is_err() || !read {
                                return Ok(());
                            }
                            let Ok(runs) = runs_rx.recv() else {
                                return Ok(()); // no lookups shared
                            };
                            while let Some(run) = runs.next() {
                                if let Err(e) = emit_all(&mut emit2, run, err) {
                                    runs.stop();
                                    return Err(e);
                                }
                            }
                            emit2.finish()
                        })
                })
                .transpose()
                .map_err(|e| Error::io("start a thread", "sqlite-lookups", e))?;
            let join = |helper: Option<std::thread::ScopedJoinHandle<'_, Result<()>>>| {
                helper.map_or(Ok(()), |h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::store(
                            store,
                            "reading the change log: a reader panicked",
                        ))
                    })
                })
            };
            let (mut logged, mut held) =
                read_logged(conn, sql, (log.from, mid), &mut emit).map_err(err)?;
            let mut helped = false;
            if mid < log.to {
                let (later, n) = match half_rx.recv() {
                    Ok(half) => {
                        helped = true;
                        half?
                    }
                    // No second connection: this one reads the rest.
                    Err(_) => read_logged(conn, sql, (mid, log.to), &mut emit).map_err(err)?,
                };
                logged.extend(later);
                held += n;
            }
            if held != expected {
                return Err(incomplete(held));
            }
            let kept = last_of_each_key(logged);
            // The keys are dealt out in runs of [`LOOKUP_RUN`] (each a range of a table: the
            // same locality) to whichever connection is free: halves fixed in advance finished
            // up to 3 ms apart, the engine and the compression taking turns on the cores with
            // one reader or the other.
            if helped && kept.len() >= SHARED_LOOKUPS {
                let runs = Arc::new(LookupRuns::new(kept));
                // The helper waits for them (it has sent its half, and stops only on error).
                let _ = runs_tx.send(Arc::clone(&runs));
                let mut mine = Ok(());
                while let Some(run) = runs.next() {
                    mine = emit_all(&mut emit, run, err);
                    if mine.is_err() {
                        // The other reader stops at the next run.
                        runs.stop();
                        break;
                    }
                }
                let theirs = join(helper);
                mine.and(theirs)?;
            } else {
                drop(runs_tx);
                let mine = emit_all(&mut emit, kept, err);
                mine.and(join(helper))?;
            }
            emit.finish()
        });
    } else {
        let held: i64 = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE seq > ?1 AND seq <= ?2",
                    tracking::CHANGES
                ),
                range,
                |r| r.get(0),
            )
            .map_err(err)?;
        if held as u64 != expected {
            return Err(incomplete(held as u64));
        }
        // A long log is grouped by SQLite, whose sorter spills to disk. The groups come in
        // key order (each key once: the order is free), which is also the order of the
        // lookups that read the table's pages fastest; no second sort by position.
        let sql = format!(
            "SELECT max(seq) AS s, tbl, {ks} FROM {} WHERE seq > ?1 AND seq <= ?2 \
             AND tbl IS NOT NULL GROUP BY tbl, {ks}",
            tracking::CHANGES
        );
        let mut stmt = conn.prepare(&sql).map_err(err)?;
        let mut rows = stmt.query(range).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            if let Some((position, ti, key_fields)) = emit.logged(r).map_err(err)? {
                emit.change(position, ti, key_fields).map_err(err)??;
            }
        }
    }
    emit.finish()
}

/// Log rows as (position, table, key), in log order, and how many rows were read (rows of no
/// table included).
type Logged = (Vec<(i64, usize, KeyFields)>, u64);

/// Reads the log rows of `range` (sequence numbers after the first up to the second) with
/// `sql` (a range query of the log) through `emit`'s table names.
fn read_logged(
    conn: &Connection,
    sql: &str,
    (after, upto): (u64, u64),
    emit: &mut ChangeEmitter<'_, '_>,
) -> rusqlite::Result<Logged> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([after as i64, upto as i64])?;
    // Sized once (at most 2^16 rows): grown by doubling, it was copied and faulted in anew.
    let mut logged = Vec::with_capacity(upto.saturating_sub(after) as usize);
    let mut held = 0u64;
    while let Some(r) = rows.next()? {
        held += 1;
        logged.extend(emit.logged(r)?);
    }
    Ok((logged, held))
}

/// Each key of `logged` (in log order) once, at its last row, in the order its lookups read
/// fastest.
fn last_of_each_key(logged: Vec<(i64, usize, KeyFields)>) -> Vec<(i64, usize, KeyFields)> {
    // A key's last row is the one kept; keys are told apart as the backup stores them
    // (SQLite's GROUP BY would also merge an integer with an equal real, which then gives
    // the same row twice: the later line of a key supersedes the earlier).
    // foldhash, not SipHash: the keys are the store's own, and the set's inserts were 4% of
    // the reader's time.
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        logged.len(),
        foldhash::fast::RandomState::default(),
    );
    let mut last = vec![false; logged.len()];
    for (i, (_, ti, key_fields)) in logged.iter().enumerate().rev() {
        last[i] = seen.insert(SeenKey::of(*ti, key_fields));
    }
    drop(seen);
    let mut kept: Vec<_> = logged
        .into_iter()
        .zip(last)
        .filter_map(|(logged, last)| last.then_some(logged))
        .collect();
    // Each key now comes once, so the order is free (the trait's contract): looked up by
    // table and, for integer keys, in key order, which is the order of the table's pages,
    // the lookups read the same leaf page one after another instead of jumping across
    // the table (10,000 lookups in 1M rows: 16 ms instead of 20). Other keys keep the
    // log's order.
    kept.sort_unstable_by_key(|(position, ti, key_fields)| match &key_fields[..] {
        [Field::Integer(i)] => (*ti, false, *i),
        _ => (*ti, true, *position),
    });
    kept
}

/// Looks up and hands on each of `kept` (position, table, key) through `emit`.
fn emit_all(
    emit: &mut ChangeEmitter<'_, '_>,
    kept: Vec<(i64, usize, KeyFields)>,
    err: impl Fn(rusqlite::Error) -> Error,
) -> Result<()> {
    for (position, ti, key_fields) in kept {
        emit.change(position, ti, key_fields).map_err(&err)??;
    }
    Ok(())
}

/// Keys an incremental's two readers look up in turn: a run is taken by whichever is free.
const LOOKUP_RUN: usize = 256;

/// An incremental's kept keys (in lookup order) cut into runs of [`LOOKUP_RUN`], handed out
/// one at a time to the readers that share the lookups.
struct LookupRuns(Mutex<std::vec::IntoIter<Vec<(i64, usize, KeyFields)>>>);

impl LookupRuns {
    fn new(kept: Vec<(i64, usize, KeyFields)>) -> Self {
        let mut keys = kept.into_iter();
        let runs: Vec<Vec<_>> = std::iter::from_fn(|| {
            let run: Vec<_> = keys.by_ref().take(LOOKUP_RUN).collect();
            (!run.is_empty()).then_some(run)
        })
        .collect();
        LookupRuns(Mutex::new(runs.into_iter()))
    }

    /// The next run, if any is left.
    fn next(&self) -> Option<Vec<(i64, usize, KeyFields)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).next()
    }

    /// Hands out no more runs (a reader failed: its error ends the reading).
    fn stop(&self) {
        let mut runs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *runs = Vec::new().into_iter();
    }
}

/// Changes at which an incremental's row lookups are shared between two connections (about
/// 1.6 µs a lookup against about half a millisecond to open the second connection).
const SHARED_LOOKUPS: usize = 2048;

/// A second read-only connection to `path` (a database in WAL mode) in a read transaction whose
/// snapshot holds the same tracked rows as the view's: the same store, the same last logged
/// change and the same schema. Every commit that changes a tracked row logs it (the capture
/// triggers, in the same transaction), so an equal last sequence number means equal tracked
/// tables. `None` when it cannot be opened at once or a writer committed in between: the view's
/// connection then reads alone. It never waits: in a rollback journal mode (where it is not
/// asked for) a writer waiting to commit holds the PENDING lock that refuses new readers, and a
/// reader that waited for it would keep the view's lock, and so the writer, waiting too.
fn second_reader(
    path: &Path,
    readonly_shm: bool,
    checkpoint: &Checkpoint,
    schema_version: i64,
) -> Option<Connection> {
    let (conn, (at, _), version) = open_snapshot(path, readonly_shm, false).ok()?;
    (at == *checkpoint && version == schema_version).then_some(conn)
}

/// A read-only connection to `path` in a read transaction, with the snapshot's checkpoint and
/// floor ([`checkpoint_of`]) and schema version: a view's, which `waits` for a lock (up to
/// [`BUSY_TIMEOUT`]), or a second reader's of the same snapshot, which does not.
fn open_snapshot(
    path: &Path,
    readonly_shm: bool,
    waits: bool,
) -> rusqlite::Result<(Connection, (Checkpoint, Option<u64>), i64)> {
    let conn = open_reader(path, readonly_shm)?;
    if waits {
        wait_for_locks(&conn)?;
    } else {
        conn.busy_timeout(Duration::ZERO)?;
    }
    // A view reads each page about once (a scan, or an incremental's row lookups spread over
    // the tables): 512 KiB of page cache holds the b-trees' interior pages, and SQLite's
    // default 2 MiB only cost its pages' first-touch faults (400 fewer of about 3,800 in a 1%
    // incremental of 1M rows; a full backup is as fast).
    conn.execute_batch("PRAGMA cache_size = -512; BEGIN")?;
    // The first read fixes the transaction's snapshot: everything after it is as of it.
    let checkpoint = checkpoint_of(&conn)?;
    let schema_version = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    Ok((conn, checkpoint, schema_version))
}

/// A logged key's fields: most keys have one, kept without an allocation of its own.
enum KeyFields {
    One([Field; 1]),
    Many(Vec<Field>),
}

impl KeyFields {
    /// The `n` key values of result row `r`, value `i` in its column `column(i)`.
    fn read(
        r: &rusqlite::Row<'_>,
        n: usize,
        column: impl Fn(usize) -> usize,
    ) -> rusqlite::Result<Self> {
        if n == 1 {
            return Ok(KeyFields::One([field(r.get_ref(column(0))?)]));
        }
        (0..n)
            .map(|i| r.get_ref(column(i)).map(field))
            .collect::<rusqlite::Result<_>>()
            .map(KeyFields::Many)
    }
}

impl std::ops::Deref for KeyFields {
    type Target = [Field];
    fn deref(&self) -> &[Field] {
        match self {
            KeyFields::One(f) => f,
            KeyFields::Many(v) => v,
        }
    }
}

/// A logged key as the in-memory reduction tells keys apart: by table and by the bytes the
/// backup stores the key as ([`encode_key`]), where a lone integer stands for its decimal digits
/// without formatting them (no other key encodes to a canonical integer's digits: a text that
/// reads as one is stored as a JSON array).
#[derive(PartialEq, Eq, Hash)]
enum SeenKey {
    Integer(usize, i64),
    Encoded(usize, Vec<u8>),
}

impl SeenKey {
    fn of(table: usize, key_fields: &[Field]) -> Self {
        match key_fields {
            [Field::Integer(i)] => SeenKey::Integer(table, *i),
            _ => SeenKey::Encoded(table, encode_key(key_fields).0),
        }
    }
}

/// Log ranges up to this many sequence numbers are reduced to each key's last change in
/// memory (about 100 bytes a row); longer ones by SQLite's GROUP BY.
const DEDUPLICATE_IN_MEMORY: u64 = 1 << 16;

/// Turns logged keys into changes: looks each up in the view's read transaction (a row is a
/// put of its current value, no row a deletion) and hands them on in batches.
struct ChangeEmitter<'c, 'v> {
    conn: &'c Connection,
    /// The position the changes are read after.
    from: u64,
    tables: &'c [Table],
    /// Per table, made on its first change: the row lookup by key (prepared once, not
    /// formatted and looked up in the statement cache for every change), its key columns'
    /// places, and the collection's name.
    lookups: Vec<Option<(rusqlite::CachedStatement<'c>, Vec<usize>, CollectionName)>>,
    batch: Vec<Change>,
    batch_size: usize,
    visit: &'v mut dyn FnMut(Vec<Change>) -> Result<()>,
    /// The table of the last log row ([`ChangeEmitter::table_named`]).
    last_table: usize,
}

impl<'c, 'v> ChangeEmitter<'c, 'v> {
    /// An emitter of `log`'s changes, looked up through `conn`, handed to `visit`.
    fn new(
        conn: &'c Connection,
        log: &LogRange,
        tables: &'c [Table],
        visit: &'v mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Self {
        ChangeEmitter {
            conn,
            from: log.from,
            tables,
            lookups: (0..tables.len()).map(|_| None).collect(),
            batch: Vec::with_capacity(log.batch_size.min(4096)),
            batch_size: log.batch_size,
            visit,
            last_table: 0,
        }
    }

    /// A log row (`seq`, `tbl`, then the key columns) as its position, its table and its key;
    /// `None` for a table dropped since (the engine drops the collection).
    fn logged(
        &mut self,
        r: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<Option<(i64, usize, KeyFields)>> {
        let rusqlite::types::ValueRef::Text(tbl) = r.get_ref(1)? else {
            return Ok(None);
        };
        let Some(ti) = self.table_named(tbl) else {
            return Ok(None);
        };
        let key_fields = KeyFields::read(r, self.tables[ti].key_len(), |i| 2 + i)?;
        Ok(Some((r.get(0)?, ti, key_fields)))
    }

    /// The table named `name` (as the log stores it), if the view has it. Called for every log
    /// row: the last table found is tried first, and a name is told apart by its length and
    /// last byte before its bytes are compared (a call of `memcmp` per table and row, with a
    /// UTF-8 check, was 7% of the reader's time).
    fn table_named(&mut self, name: &[u8]) -> Option<usize> {
        let is = |t: &Table| {
            let n = t.name.as_bytes();
            n.len() == name.len() && n.last() == name.last() && n == name
        };
        if self.tables.get(self.last_table).is_some_and(is) {
            return Some(self.last_table);
        }
        let ti = self.tables.iter().position(is)?;
        self.last_table = ti;
        Some(ti)
    }

    /// The change of table `ti`'s key `key_fields`, logged last at `position`. The outer error
    /// is SQLite's, the inner the visitor's.
    fn change(
        &mut self,
        position: i64,
        ti: usize,
        key_fields: KeyFields,
    ) -> rusqlite::Result<Result<()>> {
        let table = &self.tables[ti];
        // A logged NULL key does not say which of the rows with that key changed.
        if has_null_key(table, &key_fields) {
            return Ok(Err(Error::ChangesUnavailable {
                from: self.from,
                earliest: None,
                reason: format!(
                    "a row of table `{}` whose primary key holds a NULL changed, and the change \
                     log cannot tell which of the rows with that key it was",
                    table.name
                ),
            }));
        }
        let (get, positions, collection) = match &mut self.lookups[ti] {
            Some(l) => l,
            slot => {
                // The row whose key is exactly the logged one ([`lookup_sql`]). Matched by the
                // column's comparison alone, the logged old
                // key of a row whose key changed case found the row under its new key, so the
                // old key was never deleted: the backup held the row twice, and its restore
                // failed on the primary key.
                let get = self.conn.prepare_cached(&lookup_sql(table))?;
                let name = CollectionName::from_stored(&table.name);
                slot.insert((get, table.key_positions(), name))
            }
        };
        let (key, op) = match row_by_key(get, table, positions, &key_fields)? {
            Some(rec) => (rec.key, ChangeOp::Put(rec.value)),
            None => (encode_key(&key_fields), ChangeOp::Delete),
        };
        self.batch.push(Change {
            position: position as u64,
            collection: collection.clone(),
            key,
            op,
        });
        if self.batch.len() >= self.batch_size {
            return Ok((self.visit)(std::mem::take(&mut self.batch)));
        }
        Ok(Ok(()))
    }

    /// Hands on the last batch.
    fn finish(mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        (self.visit)(std::mem::take(&mut self.batch))
    }
}

/// The row of `table` whose key is exactly the one bound (`?1`, `?2`, … in key order): the
/// column's own comparison (which its index answers) and then the bytes and the type, since a
/// key column with another collation (NOCASE) or no type makes other keys equal ('Alice' and
/// 'alice', 1 and 1.0).
fn lookup_sql(table: &Table) -> String {
    let cond: Vec<String> = table
        .key_exprs()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n = i + 1;
            format!("{e} IS ?{n} AND {e} IS ?{n} COLLATE BINARY AND typeof({e}) = typeof(?{n})")
        })
        .collect();
    format!("{} WHERE {}", table.select_sql(), cond.join(" AND "))
}

/// The row of `table` whose key values are `fields`, through `get` (prepared from
/// [`lookup_sql`], `positions` its key columns' places), as a record; `None` if there is none.
fn row_by_key(
    get: &mut rusqlite::CachedStatement<'_>,
    table: &Table,
    positions: &[usize],
    fields: &[Field],
) -> rusqlite::Result<Option<Record>> {
    for (i, f) in fields.iter().enumerate() {
        get.raw_bind_parameter(i + 1, SqlField(f))?;
    }
    let mut found = get.raw_query();
    found
        .next()?
        .map(|row| read_row(table, positions, row))
        .transpose()
}

fn describe(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

fn checkpoint_of(conn: &Connection) -> rusqlite::Result<(Checkpoint, Option<u64>)> {
    Ok(match tracking::meta(conn)? {
        Some((id, floor)) => (
            Checkpoint::new(StoreId(id), tracking::last_seq(conn)?),
            Some(floor),
        ),
        None => (Checkpoint::new(StoreId(UNTRACKED_ID.into()), 0), None),
    })
}

impl StorageBackend for SqliteBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    fn describe(&self) -> String {
        describe(&self.path)
    }

    fn prepare(&self) -> Result<()> {
        // Capture is completed (tables created or renamed since) only where it is incomplete:
        // completing it takes the write lock, which waits behind an application's write
        // transaction, and a backup of a tracked database otherwise needs none.
        let incomplete = {
            let conn = self.lock();
            // The usual case, a tracked database with complete capture, is one check.
            !tracking::is_complete(&conn, &self.describe())?
                && tracking::is_tracked(&conn).map_err(|e| self.err(e))?
        };
        if incomplete {
            self.track()?;
        }
        Ok(())
    }

    fn current_checkpoint(&self) -> Result<Checkpoint> {
        checkpoint_of(&self.lock())
            .map(|(c, _)| c)
            .map_err(|e| self.err(e))
    }

    fn view(&self) -> Result<Box<dyn View + '_>> {
        let store = self.describe();
        // Before the view's snapshot: a commit in between is in the view and seen again by
        // the next wait (one more run), never missed.
        self.seen_version
            .store(self.data_version()?, std::sync::atomic::Ordering::SeqCst);
        let err = |e: rusqlite::Error| store_err(&store, "opening a read view", e);
        let (conn, (checkpoint, floor), schema_version) =
            open_snapshot(self.file(), self.readonly_shm, true).map_err(err)?;
        let tables = user_tables(&conn, &store)?;
        if !self
            .named_virtual
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let virtuals = table::virtual_tables(&conn).map_err(err)?;
            if !virtuals.is_empty() {
                let names: Vec<String> = virtuals
                    .iter()
                    .map(|(name, module)| format!("`{name}` ({module})"))
                    .collect();
                tracing::warn!(
                    "{store}: virtual table{} {} {} not backed up (tidemark backs up ordinary \
                     tables; create {} again after a restore, e.g. an FTS index from the \
                     tables it indexes)",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    if names.len() == 1 { "is" } else { "are" },
                    if names.len() == 1 { "it" } else { "them" },
                );
            }
        }
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(err)?;
        Ok(Box::new(SqliteView {
            conn,
            path: self.file().to_path_buf(),
            readonly_shm: self.readonly_shm,
            store,
            checkpoint,
            floor,
            tables,
            schema_version,
            blocks_writers: !journal.eq_ignore_ascii_case("wal"),
            released: false,
            in_read: true,
            stepped: false,
            steps: true,
        }))
    }

    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        // Untracked, the position stays 0 whatever is committed: a live backup of such a
        // database took its first backup and never another. Another connection's commit
        // changes the data version instead.
        let untracked = after.store_id.0 == UNTRACKED_ID;
        loop {
            let moved = if untracked {
                self.data_version()? != self.seen_version.load(std::sync::atomic::Ordering::SeqCst)
            } else {
                self.current_checkpoint()?.position > after.position
            };
            if moved {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn trim_changes(&self, upto: &Checkpoint) -> Result<()> {
        let mut conn = self.lock();
        match tracking::meta(&conn).map_err(|e| self.err(e))? {
            Some((id, _)) if id == upto.store_id.0 => {
                // The backup is complete without the trim, which the next one can do: it waits
                // for an application's write transaction a short while, not BUSY_TIMEOUT.
                conn.busy_timeout(TRIM_BUSY_TIMEOUT)
                    .map_err(|e| self.err(e))?;
                let trimmed = tracking::trim(&mut conn, &self.describe(), upto.position);
                wait_for_locks(&conn).map_err(|e| self.err(e))?;
                trimmed
            }
            _ => Ok(()),
        }
    }

    fn is_empty(&self) -> Result<bool> {
        let conn = self.lock();
        for t in user_tables(&conn, &self.describe())? {
            let any: bool = conn
                .query_row(
                    &format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(&t.name)),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if any {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        let conn = self.lock();
        // Rows load in any table order (a child table before its parent, cycles): foreign keys
        // are checked once, after every row is in (see `finish`). The bundled SQLite enforces
        // them by default.
        conn.execute_batch("PRAGMA foreign_keys = OFF; BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        Ok(Box::new(SqliteRestore {
            conn,
            store: self.describe(),
            tables: BTreeMap::new(),
            written: backup_core::DropBehind::new("sqlite-free"),
        }))
    }
}

/// One read transaction over the database.
struct SqliteView {
    conn: Connection,
    /// The database file, for a second reader of the same snapshot ([`second_reader`]).
    path: PathBuf,
    /// As [`SqliteBackend`]'s: how a reader opens the database.
    readonly_shm: bool,
    store: String,
    checkpoint: Checkpoint,
    floor: Option<u64>,
    tables: Vec<Table>,
    /// `PRAGMA schema_version` in the view's snapshot ([`Table::schema_json`]).
    schema_version: i64,
    /// Whether the database is in a rollback-journal mode (not WAL), where the view's shared
    /// lock refuses every writer's commit while it is held.
    blocks_writers: bool,
    /// Whether the read transaction was ended early ([`View::release`]).
    released: bool,
    /// Whether a read transaction is open (the snapshot of `checkpoint`, or a scan's step).
    in_read: bool,
    /// Whether a scan read rows outside the snapshot of `checkpoint` (a scan in steps): the
    /// engine's [`View::settle`] then moves the view to a new snapshot and replays the changes.
    stepped: bool,
    /// Whether scans may read in steps (not after [`View::read_in_one_snapshot`]).
    steps: bool,
}

/// The most rows a scan in steps reads in one read transaction ([`SqliteView::scan_in_steps`]).
const SCAN_STEP_ROWS: i64 = 4096;

/// The most bytes of values a step holds before its rows are handed on: large rows make
/// shorter steps.
const SCAN_STEP_BYTES: u64 = 8 << 20;

impl Drop for SqliteView {
    fn drop(&mut self) {
        // Ends the read transaction; a read-only transaction has nothing to lose.
        if self.in_read {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl SqliteView {
    fn table(&self, collection: &CollectionName) -> Result<&Table> {
        self.tables
            .iter()
            .find(|t| CollectionName::from_stored(&t.name) == *collection)
            .ok_or_else(|| Error::store(&self.store, format!("no table named `{collection}`")))
    }

    fn err(&self, what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let what = what.to_string();
        move |e| Error::store_cause(&self.store, what.clone(), e)
    }

    /// Ends the open read transaction, if any.
    fn end_read(&mut self) -> Result<()> {
        if self.in_read {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(self.err("ending the read transaction"))?;
            self.in_read = false;
        }
        Ok(())
    }

    /// Opens a read transaction on the database as it is now; refused if its schema is no
    /// longer the view's (a scan in steps, and its settle, read one schema).
    fn begin_read(&mut self) -> Result<()> {
        self.end_read()?;
        self.conn
            .execute_batch("BEGIN")
            .map_err(self.err("beginning a read transaction"))?;
        self.in_read = true;
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))?;
        if version != self.schema_version {
            return Err(Error::StepsUnsettled {
                store: self.store.clone(),
                reason: "the database's schema changed while the backup read it in steps".into(),
            });
        }
        Ok(())
    }

    /// How `table` can be scanned in steps ([`SqliteView::scan_in_steps`]): its step columns
    /// and the SQL of its first and later steps; `None` where SQLite would not answer a step
    /// from the table's own order (a primary key with a DESC column sorts each step anew), or
    /// the table has no step columns.
    fn steps_of(&self, table: &Table) -> Result<Option<(usize, String, String)>> {
        let step = table.step_columns();
        if step.is_empty() {
            return Ok(None);
        }
        let (first, next) = (
            table.select_step_sql(&step, true),
            table.select_step_sql(&step, false),
        );
        if table.scan_rowid.is_none() {
            let mut plan = self
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {next}"))
                .map_err(self.err("planning a scan in steps"))?;
            let details: Vec<String> = plan
                .query_map(
                    rusqlite::params_from_iter(vec![rusqlite::types::Null; step.len() + 1]),
                    |r| r.get::<_, String>(3),
                )
                .and_then(|rows| rows.collect())
                .map_err(self.err("planning a scan in steps"))?;
            let searched = details.iter().any(|d| d.starts_with("SEARCH"));
            if !searched || details.iter().any(|d| d.contains("TEMP B-TREE")) {
                return Ok(None);
            }
        }
        Ok(Some((step.len(), first, next)))
    }

    /// Scans `table` in steps of at most [`SCAN_STEP_ROWS`] rows and [`SCAN_STEP_BYTES`] of
    /// values ([`SqliteView::steps_of`]: `n` step columns, the first and the later steps' SQL),
    /// each read in a read transaction of its own and ended before its rows are handed on: in
    /// rollback-journal mode a read refuses every writer's commit, and writing a whole table's
    /// records to a destination (a folder's documents) took seconds to minutes. Rows read after
    /// the view's snapshot are set right by [`View::settle`].
    fn scan_in_steps(
        &mut self,
        table: &Table,
        (n, first_sql, next_sql): (usize, String, String),
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        use rusqlite::types::Value as SqlValue;
        self.stepped = true;
        let keys = table.key_positions();
        let mut after: Option<Vec<SqlValue>> = None;
        loop {
            self.begin_read()?;
            let store = self.store.clone();
            let err = |e: rusqlite::Error| {
                Error::store_cause(&store, format!("reading table `{}`", table.name), e)
            };
            let mut step = Vec::new();
            let mut done = true;
            {
                let sql = if after.is_some() {
                    &next_sql
                } else {
                    &first_sql
                };
                let mut stmt = self.conn.prepare_cached(sql).map_err(&err)?;
                let at = stmt.column_count() - n;
                let mut params: Vec<SqlValue> = after.take().unwrap_or_default();
                params.push(SqlValue::Integer(SCAN_STEP_ROWS));
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params))
                    .map_err(&err)?;
                let mut bytes = 0u64;
                let mut last = None;
                while let Some(r) = rows.next().map_err(&err)? {
                    last = Some(
                        (at..at + n)
                            .map(|i| r.get(i))
                            .collect::<rusqlite::Result<_>>(),
                    );
                    let record = read_row(table, &keys, r).map_err(&err)?;
                    bytes += record.value.payload_len();
                    step.push(record);
                    if bytes >= SCAN_STEP_BYTES {
                        break;
                    }
                }
                after = last.transpose().map_err(&err)?;
                // A full step, or one cut short by its bytes: more rows may follow.
                if step.len() as i64 == SCAN_STEP_ROWS || bytes >= SCAN_STEP_BYTES {
                    done = false;
                }
            }
            self.end_read()?;
            for record in step {
                visit(record)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Refuses a read once the snapshot was let go ([`View::release`]): outside its read
    /// transaction the view would read a later state than its checkpoint's.
    fn snapshot_held(&self) -> Result<()> {
        if self.released {
            return Err(Error::store(
                &self.store,
                "read after the view's snapshot was released (a bug in the caller)",
            ));
        }
        Ok(())
    }
}

/// Reads a result row of `Table::select_sql` into a record.
fn read_row(table: &Table, keys: &[usize], r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let offset = usize::from(table.hidden_rowid);
    let mut columns = Vec::with_capacity(table.columns.len());
    for (i, name) in table.columns.iter().enumerate() {
        columns.push((name.clone(), field(r.get_ref(i + offset)?)));
    }
    let rowid = if table.hidden_rowid {
        Some(r.get::<_, i64>(0)?)
    } else {
        None
    };
    let key_fields = KeyFields::read(r, keys.len(), |i| keys[i])?;
    Ok(Record {
        key: row_key(table, &key_fields, rowid),
        value: Value::Row(Row { columns, rowid }),
    })
}

/// The key of a row whose primary-key values are `key_fields`. A rowid table lets its primary
/// key hold NULLs (a SQLite quirk: only INTEGER PRIMARY KEY and WITHOUT ROWID tables refuse
/// them), and NULLs do not collide there: such a row is keyed by its key values and its rowid,
/// one value more than any other row of the table has, so no other key equals it. Before, two
/// rows with a NULL key were one key, and the backup kept one of them.
fn row_key(table: &Table, key_fields: &[Field], rowid: Option<i64>) -> backup_core::Key {
    match rowid {
        Some(rowid) if has_null_key(table, key_fields) => {
            let mut fields = key_fields.to_vec();
            fields.push(Field::Integer(rowid));
            encode_key(&fields)
        }
        _ => encode_key(key_fields),
    }
}

/// Whether `key_fields` is a primary key with a NULL in a table where that is possible (a rowid
/// table whose primary key is not its rowid), which does not name one row.
fn has_null_key(table: &Table, key_fields: &[Field]) -> bool {
    table.hidden_rowid && !table.key.is_empty() && key_fields.contains(&Field::Null)
}

/// The key of the SQLite store marks' log fingerprints: `"seq:crc32 seq:crc32 …"`, newest
/// first (see [`tracking::log_tail`]).
const TAIL_MARK: &str = "log_tail";

fn parse_tail(marks: Option<&serde_json::Value>) -> Vec<(u64, u32)> {
    marks
        .and_then(|m| m.get(TAIL_MARK))
        .and_then(|t| t.as_str())
        .map(|t| {
            t.split(' ')
                .filter_map(|e| {
                    let (seq, crc) = e.split_once(':')?;
                    Some((seq.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl View for SqliteView {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn snapshot_blocks_writers(&self) -> bool {
        self.blocks_writers
    }

    fn read_in_one_snapshot(&mut self) {
        self.steps = false;
    }

    fn scans_alike(&self) -> bool {
        // Only a tracked database in rollback-journal mode is read in steps (`scan`).
        !(self.steps && self.blocks_writers && self.floor.is_some())
    }

    fn lookup(
        &mut self,
        collection: &CollectionName,
        keys: &mut dyn Iterator<Item = &[u8]>,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<bool> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        // Each key as its table's key values. A key that does not decode to as many, or that
        // holds a NULL (such a row is keyed by its rowid too, and the lookup by its key values
        // would not name one row), is not looked up: the engine scans instead.
        let mut wanted = Vec::new();
        for key in keys {
            match table::decode_key(&backup_core::Key(key.to_vec())) {
                Some(f) if f.len() == table.key_len() && !f.contains(&Field::Null) => {
                    wanted.push(f)
                }
                _ => return Ok(false),
            }
        }
        // Integer keys in order: the order of the table's pages, so that lookups one after
        // another read the same leaf page (as an incremental's do).
        wanted.sort_by_key(|f| match f[..] {
            [Field::Integer(i)] => (false, i),
            _ => (true, 0),
        });
        let err = self.err(&format!("looking up rows of table `{}`", table.name));
        let mut get = self.conn.prepare_cached(&lookup_sql(table)).map_err(&err)?;
        let positions = table.key_positions();
        for fields in &wanted {
            if let Some(record) = row_by_key(&mut get, table, &positions, fields).map_err(&err)? {
                visit(record)?;
            }
        }
        Ok(true)
    }

    fn release(&mut self) -> Result<()> {
        self.end_read()?;
        self.released = true;
        Ok(())
    }

    fn settle(&mut self) -> Result<bool> {
        if !self.stepped {
            return Ok(false);
        }
        // A new snapshot, whose changes since the old checkpoint the engine replays over the
        // steps' rows. The schema is the view's (checked); the store, the same one.
        self.begin_read()?;
        let (checkpoint, floor) =
            checkpoint_of(&self.conn).map_err(self.err("reading the checkpoint"))?;
        let unsettled = |reason: &str| Error::StepsUnsettled {
            store: self.store.clone(),
            reason: reason.into(),
        };
        if checkpoint.store_id != self.checkpoint.store_id {
            return Err(unsettled(
                "the database's change tracking was replaced while the backup read it in steps",
            ));
        }
        if floor.is_some_and(|f| self.checkpoint.position < f) {
            return Err(unsettled(
                "another backup of this database trimmed its change log while this one read it \
                 in steps, so the writes made meanwhile cannot be replayed",
            ));
        }
        self.checkpoint = checkpoint;
        self.floor = floor;
        self.stepped = false;
        Ok(true)
    }

    fn store_marks(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        self.snapshot_held()?;
        if self.floor.is_none() {
            return Ok(None);
        }
        let mut tail = tracking::log_tail(&self.conn, self.checkpoint.position)
            .map_err(self.err("reading the change log's last entries"))?;
        if tail.is_empty() {
            // Nothing logged since the last trim: the previous backup's entries are still the
            // last ones this database's history had at this position.
            tail = parse_tail(previous);
        }
        let text: Vec<String> = tail.iter().map(|(s, c)| format!("{s}:{c:08x}")).collect();
        Ok(Some(serde_json::json!({ TAIL_MARK: text.join(" ") })))
    }

    fn changes_outside_log(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<String>> {
        if self.floor.is_none() {
            return Ok(None);
        }
        // An entry the previous backup read that the log still holds must be the same entry:
        // a database restored from an older copy (or a disk snapshot) and written since has
        // handed the same sequence numbers out again, to other changes. Trimmed entries are
        // gone in either case, and say nothing.
        for (seq, crc) in parse_tail(previous) {
            let now =
                tracking::log_entry(&self.conn, seq).map_err(self.err("reading the change log"))?;
            if now.is_some_and(|c| c != crc) {
                return Ok(Some(format!(
                    "the change log's entry {seq} is not the one the previous backup read: the \
                     database went back to an older state (restored from a copy, or a disk \
                     snapshot) and was written since, so changes the backup holds never \
                     happened in it"
                )));
            }
        }
        Ok(None)
    }

    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        Ok(self
            .tables
            .iter()
            .map(|t| CollectionInfo {
                name: CollectionName::from_stored(&t.name),
                schema: t.schema_json(self.schema_version),
            })
            .collect())
    }

    fn schema_change(
        &self,
        collection: &CollectionInfo,
        old: &serde_json::Value,
    ) -> Option<String> {
        let without_version = |schema: &serde_json::Value| {
            let mut schema = schema.clone();
            if let Some(fields) = schema.as_object_mut() {
                fields.remove(table::ROWIDS_AS_OF);
            }
            schema
        };
        // Anything else changed: the table itself did, as the engine says.
        if without_version(old) != without_version(&collection.schema) {
            return None;
        }
        let now = self.schema_version;
        Some(
            match old.get(table::ROWIDS_AS_OF).and_then(|v| v.as_i64()) {
                Some(was) => format!(
                    "the database's schema version went from {was} to {now} with this table \
                 unchanged, as a VACUUM leaves; a VACUUM renumbers the rowids of a table without \
                 an INTEGER PRIMARY KEY, and this table's rows are keyed by theirs, so the change \
                 log cannot be trusted for it"
                ),
                None => {
                    "this table has no INTEGER PRIMARY KEY, so a VACUUM may have renumbered the \
                     rowids its rows are keyed by, and the previous backup (by a tidemark before \
                     2026-12-03) did not record when they were read"
                        .into()
                }
            },
        )
    }

    fn store_schema(&mut self) -> Result<StoreSchema> {
        let err = self.err("reading the schema");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT type, name, tbl_name, sql FROM sqlite_schema \
                 WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL \
                 AND name NOT LIKE '\\_tidemark\\_%' ESCAPE '\\' ORDER BY rowid",
            )
            .map_err(&err)?;
        let objects: Vec<serde_json::Value> = stmt
            .query_map([], |r| {
                Ok(json!({
                    "type": r.get::<_, String>(0)?,
                    "name": r.get::<_, String>(1)?,
                    "tbl_name": r.get::<_, String>(2)?,
                    "sql": r.get::<_, String>(3)?,
                }))
            })
            .map_err(&err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&err)?;
        let has_sequence: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let mut sequences = Vec::new();
        if has_sequence {
            let mut stmt = self
                .conn
                .prepare("SELECT name, seq FROM sqlite_sequence WHERE name <> ?1 ORDER BY rowid")
                .map_err(&err)?;
            sequences = stmt
                .query_map([tracking::CHANGES], |r| {
                    Ok(json!([r.get::<_, String>(0)?, r.get::<_, i64>(1)?]))
                })
                .map_err(&err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(&err)?;
        }
        let user_version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&err)?;
        let journal_mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(&err)?;
        let pragma = |name: &str| -> Result<i64> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(&err)
        };
        Ok(StoreSchema(json!({
            "objects": objects,
            "sequences": sequences,
            "user_version": user_version,
            "application_id": pragma("application_id")?,
            "page_size": pragma("page_size")?,
            "auto_vacuum": pragma("auto_vacuum")?,
            "journal_mode": journal_mode,
        })))
    }

    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        // A tracked database in rollback-journal mode is read in steps, letting its writers in
        // between; the change log sets the steps right.
        if self.steps && self.blocks_writers && self.floor.is_some() {
            if let Some(steps) = self.steps_of(table)? {
                let table = table.clone();
                return self.scan_in_steps(&table, steps, visit);
            }
        }
        let err = self.err(&format!("reading table `{}`", table.name));
        let keys = table.key_positions();
        let mut stmt = self.conn.prepare(&table.select_sql()).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            visit(read_row(table, &keys, r).map_err(&err)?)?;
        }
        Ok(())
    }

    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        self.snapshot_held()?;
        let unavailable = |reason: String| Error::ChangesUnavailable {
            from: from.position,
            earliest: self.floor,
            reason,
        };
        let Some(floor) = self.floor else {
            return Err(unavailable(
                "change tracking is not installed (run `tidemark track`)".into(),
            ));
        };
        if from.store_id != self.checkpoint.store_id {
            return Err(unavailable(format!(
                "the checkpoint belongs to store {}, this is {}",
                from.store_id, self.checkpoint.store_id
            )));
        }
        if from.position < floor {
            let why = tracking::floor_reason(&self.conn, floor)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    "the change log was trimmed or had a capture gap after that position".into()
                });
            return Err(unavailable(why));
        }
        if from.position > self.checkpoint.position {
            return Err(unavailable(format!(
                "the store is at position {}, behind the checkpoint",
                self.checkpoint.position
            )));
        }
        let width =
            tracking::log_key_width(&self.conn).map_err(self.err("reading the change log"))?;
        let log = LogRange {
            width,
            from: from.position,
            to: self.checkpoint.position,
            batch_size,
        };
        // The changes are read on a thread of their own (SQLite's row lookups are most of an
        // incremental's reading) and handed to `visit` here, which builds the records while
        // the next ones are read. A few batches in flight bound the memory.
        let store = self.store.as_str();
        // `&mut`: a connection may move to another thread but not be shared with one.
        let (conn, tables) = (&mut self.conn, &self.tables);
        let (path, readonly_shm) = (self.path.as_path(), self.readonly_shm);
        let (checkpoint, schema_version) = (&self.checkpoint, self.schema_version);
        // WAL only: in a rollback journal mode the view's lock already keeps writers out, and a
        // second reader could meet a writer's PENDING lock.
        let wal = !self.blocks_writers;
        let second =
            move || wal.then(|| second_reader(path, readonly_shm, checkpoint, schema_version))?;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Change>>(4);
            let reader = std::thread::Builder::new()
                .name("sqlite-changes".into())
                .spawn_scoped(s, move || read_log(conn, tables, store, &log, &tx, &second))
                .map_err(|e| Error::io("start a thread", "sqlite-changes", e))?;
            let mut visited = Ok(());
            for batch in &rx {
                visited = visit(batch);
                if visited.is_err() {
                    break;
                }
            }
            drop(rx);
            let read = reader.join().unwrap_or_else(|_| {
                Err(Error::store(
                    store,
                    "reading the change log: the reader panicked",
                ))
            });
            visited.and(read)
        })
    }

    fn count(&mut self, collection: &CollectionName) -> Result<Option<u64>> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(&table.name)),
                [],
                |r| r.get(0),
            )
            .map_err(self.err("counting rows"))?;
        Ok(Some(n as u64))
    }

    fn deletions_may_go_unseen(&mut self, collection: &CollectionName) -> Result<bool> {
        // A REPLACE deletes the row it conflicts with, firing no delete trigger. That row has
        // another key when the conflict is on a unique index other than the key's own, or on
        // a key column whose collation is not BINARY (in a NOCASE key, 'ALICE' replaces
        // 'alice'); otherwise its key is the one the insert trigger logs. Tables with neither,
        // the common case, skip the count: a scan of the whole table.
        let table = self.table(collection)?;
        let n: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM pragma_index_list(?1) \
                         WHERE \"unique\" AND origin <> 'pk') \
                      + (SELECT count(*) FROM pragma_index_list(?1) AS l, \
                         pragma_index_xinfo(l.name) AS x \
                         WHERE l.origin = 'pk' AND x.key AND x.cid >= 0 \
                         AND x.coll <> 'BINARY')",
                [&table.name],
                |r| r.get(0),
            )
            .map_err(self.err("listing unique indexes"))?;
        Ok(n > 0)
    }
}

/// How a restored collection is laid out.
enum Layout {
    /// A SQLite table recreated from its own schema: whether its rows carry a hidden rowid,
    /// and whether that rowid is their key (no primary key at all).
    Native {
        hidden_rowid: bool,
        rowid_is_key: bool,
        /// The name that reaches the rowid in the new table (`None`: columns hide all three,
        /// and rows go in with new rowids).
        rowid: Option<&'static str>,
    },
    /// A key-value collection as `(key, value)` (see `docs/FORMAT.md`).
    KeyValue,
}

struct SqliteRestore<'a> {
    conn: MutexGuard<'a, Connection>,
    store: String,
    tables: BTreeMap<CollectionName, Layout>,
    /// Batches written, freed off the store's thread (a restore's critical path).
    written: backup_core::DropBehind<Vec<Record>>,
}

impl RestoreSink for SqliteRestore<'_> {
    fn create_collection(&mut self, info: &CollectionInfo, source: StoreKind) -> Result<()> {
        let err = |e: rusqlite::Error| {
            Error::store_cause(&self.store, format!("creating table `{}`", info.name), e)
        };
        let sql = info.schema.get("sql").and_then(|s| s.as_str());
        let layout = match (source, sql) {
            (StoreKind::Sqlite, Some(sql)) => {
                self.conn.execute_batch(sql).map_err(err)?;
                let columns: Vec<String> = self
                    .conn
                    .prepare("SELECT name FROM pragma_table_xinfo(?1)")
                    .and_then(|mut stmt| {
                        stmt.query_map([info.name.stored_as(sqlite_can_hold)], |r| r.get(0))?
                            .collect()
                    })
                    .map_err(err)?;
                Layout::Native {
                    rowid: table::rowid_alias(columns.iter().map(String::as_str)),
                    hidden_rowid: info
                        .schema
                        .get("hidden_rowid")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false),
                    rowid_is_key: info
                        .schema
                        .get("key")
                        .and_then(|v| v.as_array())
                        .is_some_and(Vec::is_empty),
                }
            }
            _ => {
                self.conn
                    .execute_batch(&format!(
                        "CREATE TABLE {}(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID",
                        quote_ident(&info.name.stored_as(sqlite_can_hold))
                    ))
                    .map_err(err)?;
                Layout::KeyValue
            }
        };
        self.tables.insert(info.name.clone(), layout);
        Ok(())
    }

    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        let err = |e: rusqlite::Error| {
            Error::store_cause(&self.store, format!("writing into `{collection}`"), e)
        };
        let layout = self.tables.get(collection).ok_or_else(|| {
            Error::store(
                &self.store,
                format!("collection `{collection}` was not created"),
            )
        })?;
        let t = quote_ident(&collection.stored_as(sqlite_can_hold));
        // The INSERT is built and prepared once per column layout (a batch's rows nearly always
        // share one), not once per row, and each row's fields are bound in place.
        let mut native: Option<(Vec<String>, bool, rusqlite::CachedStatement<'_>)> = None;
        let kv_sql = format!("INSERT INTO {t}(key, value) VALUES (?1, ?2)");
        for record in &records {
            match (&record.value, layout) {
                (
                    Value::Row(row),
                    Layout::Native {
                        hidden_rowid,
                        rowid_is_key,
                        rowid: rowid_name,
                    },
                ) => {
                    let rowid = row.rowid.filter(|_| *hidden_rowid && rowid_name.is_some());
                    let same = native.as_ref().is_some_and(|(names, r, _)| {
                        *r == rowid.is_some()
                            && names.len() == row.columns.len()
                            && names.iter().zip(&row.columns).all(|(a, (b, _))| a == b)
                    });
                    if !same {
                        let mut names: Vec<String> = Vec::with_capacity(row.columns.len() + 1);
                        if let (Some(_), Some(name)) = (rowid, rowid_name) {
                            names.push((*name).into());
                        }
                        names.extend(row.columns.iter().map(|(name, _)| quote_ident(name)));
                        let marks: Vec<String> =
                            (1..=names.len()).map(|i| format!("?{i}")).collect();
                        let sql = format!(
                            "INSERT INTO {t}({}) VALUES ({})",
                            names.join(", "),
                            marks.join(", ")
                        );
                        let raw = row.columns.iter().map(|(n, _)| n.clone()).collect();
                        drop(native.take()); // back to the cache before the next is prepared
                        let stmt = self.conn.prepare_cached(&sql).map_err(err)?;
                        native = Some((raw, rowid.is_some(), stmt));
                    }
                    let Some((_, _, stmt)) = &mut native else {
                        continue; // set just above
                    };
                    let mut at = 1;
                    if let Some(r) = rowid {
                        stmt.raw_bind_parameter(at, r).map_err(err)?;
                        at += 1;
                    }
                    for (_, f) in &row.columns {
                        stmt.raw_bind_parameter(at, SqlField(f)).map_err(err)?;
                        at += 1;
                    }
                    match stmt.raw_execute() {
                        Ok(_) => {}
                        // A rowid another row holds already, in a table keyed by its primary
                        // key, where the rowid only keeps the rows' order: a VACUUM renumbered
                        // the rowids (firing no trigger), and the backup holds the old rowid of
                        // a row not changed since beside the new one of a row changed after. The
                        // row goes in with a new rowid.
                        Err(rusqlite::Error::SqliteFailure(e, _))
                            if rowid.is_some()
                                && !rowid_is_key
                                && e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_ROWID =>
                        {
                            insert_without_rowid(&self.conn, &t, &row.columns).map_err(err)?;
                        }
                        Err(e) => return Err(err(e)),
                    }
                }
                (value, _) => {
                    let bytes = match value {
                        Value::Bytes(b) => b.clone(),
                        Value::Row(row) => backup_core::row_to_json_bytes(row),
                    };
                    let key = text_or_blob(record.key.as_bytes());
                    let value = text_or_blob(&bytes);
                    let mut stmt = self.conn.prepare_cached(&kv_sql).map_err(err)?;
                    stmt.execute([SqlField(&key), SqlField(&value)])
                        .map_err(err)?;
                }
            }
        }
        drop(native);
        self.written.later(records);
        Ok(())
    }

    fn finish(self: Box<Self>, schema: &StoreSchema, source: StoreKind) -> Result<()> {
        let err = |what: &str, e: rusqlite::Error| {
            Error::store_cause(&self.store, format!("restoring {what}"), e)
        };
        let s = &schema.0;
        if source == StoreKind::Sqlite {
            for obj in s
                .get("objects")
                .and_then(|o| o.as_array())
                .into_iter()
                .flatten()
            {
                let kind = obj.get("type").and_then(|v| v.as_str()).unwrap_or("");
                let tbl = obj.get("tbl_name").and_then(|v| v.as_str()).unwrap_or("");
                let Some(sql) = obj.get("sql").and_then(|v| v.as_str()) else {
                    continue;
                };
                if kind != "view" && !self.tables.contains_key(&CollectionName::from_stored(tbl)) {
                    continue; // its table was left out of this restore
                }
                let name = obj.get("name").and_then(|v| v.as_str()).unwrap_or("");
                self.conn
                    .execute_batch(sql)
                    .map_err(|e| err(&format!("{kind} `{name}`"), e))?;
            }
            let sequences: Vec<(String, i64)> = s
                .get("sequences")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p.get(0)?.as_str()?.to_string(), p.get(1)?.as_i64()?)))
                .filter(|(n, _)| self.tables.contains_key(&CollectionName::from_stored(n)))
                .collect();
            if !sequences.is_empty() {
                self.conn
                    .execute_batch("DELETE FROM sqlite_sequence")
                    .map_err(|e| err("sqlite_sequence", e))?;
                for (name, seq) in sequences {
                    self.conn
                        .execute(
                            "INSERT INTO sqlite_sequence(name, seq) VALUES (?1, ?2)",
                            rusqlite::params![name, seq],
                        )
                        .map_err(|e| err("sqlite_sequence", e))?;
                }
            }
            for pragma in ["user_version", "application_id"] {
                if let Some(v) = s.get(pragma).and_then(|v| v.as_i64()) {
                    self.conn
                        .execute_batch(&format!("PRAGMA {pragma} = {v}"))
                        .map_err(|e| err(pragma, e))?;
                }
            }
            self.check_foreign_keys()?;
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| err("(commit)", e))?;
        if let Some(mode) = s.get("journal_mode").and_then(|v| v.as_str()) {
            if mode.eq_ignore_ascii_case("wal") {
                self.conn
                    .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                    .map_err(|e| err("journal_mode", e))?;
            }
        }
        Ok(())
    }
}

impl SqliteRestore<'_> {
    /// After every row is in: rows whose parent table this restore left out (`--collections`)
    /// are refused, naming the tables to add. Violations the source itself held (SQLite only
    /// enforces foreign keys where the application turns them on) are kept as they were.
    fn check_foreign_keys(&self) -> Result<()> {
        let err = |e: rusqlite::Error| Error::store_cause(&self.store, "checking foreign keys", e);
        let mut missing: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT \"table\", parent FROM pragma_foreign_key_check")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(err)?;
        for row in rows {
            let (table, parent) = row.map_err(err)?;
            if !self
                .tables
                .contains_key(&CollectionName::from_stored(&parent))
            {
                missing.entry(parent).or_default().insert(table);
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = missing
            .iter()
            .map(|(parent, children)| {
                let children: Vec<&str> = children.iter().map(String::as_str).collect();
                format!("`{parent}` (referenced by {})", children.join(", "))
            })
            .collect();
        Err(Error::store(
            &self.store,
            format!(
                "the restored tables reference rows of tables this restore leaves out: {}; add \
                 them to --collections",
                list.join(", ")
            ),
        ))
    }
}

/// Whether SQLite can hold `name` as a table name of its own (`docs/FORMAT.md` §2.1): no NUL,
/// and not in the `sqlite_` namespace SQLite reserves.
/// Inserts a row of `table` (quoted) with a rowid SQLite chooses.
fn insert_without_rowid(
    conn: &Connection,
    table: &str,
    columns: &[(String, Field)],
) -> rusqlite::Result<()> {
    let names: Vec<String> = columns.iter().map(|(name, _)| quote_ident(name)).collect();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sql = if names.is_empty() {
        format!("INSERT INTO {table} DEFAULT VALUES")
    } else {
        format!(
            "INSERT INTO {table}({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        )
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    for (i, (_, f)) in columns.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, SqlField(f))?;
    }
    stmt.raw_execute().map(drop)
}

fn sqlite_can_hold(name: &str) -> bool {
    !name.contains('\0') && !name.to_ascii_lowercase().starts_with("sqlite_")
}

/// UTF-8 bytes as TEXT, anything else as BLOB (the key-value layout of `docs/FORMAT.md`).
fn text_or_blob(bytes: &[u8]) -> Field {
    if std::str::from_utf8(bytes).is_ok() {
        Field::Text(bytes.to_vec())
    } else {
        Field::Blob(bytes.to_vec())
    }
}

/// Makes SQLite stores at paths (restore targets).
#[derive(Debug, Default, Clone, Copy)]
pub struct SqliteFactory;

impl StoreFactory for SqliteFactory {
    fn kind(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    fn check_replaceable(&self, path: &Path) -> Result<()> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("inspect", path, e)),
        };
        if meta.is_dir() {
            return Err(Error::BadInput {
                path: path.to_path_buf(),
                cause: "is a directory, not a SQLite database file".into(),
                source: None,
            });
        }
        // An empty file is an empty database; anything else must start as one does.
        if meta.len() == 0 || backup_core::starts_as_sqlite(path) {
            return Ok(());
        }
        Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: "is not a SQLite database: a restore replaces a database, never another \
                    file, even with --force; restore into a new path"
                .into(),
            source: None,
        })
    }

    fn holds_data(&self, path: &Path) -> Result<bool> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("inspect", path, e)),
        };
        if meta.is_dir() {
            return Err(Error::BadInput {
                path: path.to_path_buf(),
                cause: "is a directory, not a SQLite database file".into(),
                source: None,
            });
        }
        if meta.len() == 0 {
            return Ok(false);
        }
        // Anything that is not an empty SQLite database counts as data, unknown files included.
        let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
            return Ok(true);
        };
        Ok(conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .unwrap_or(true))
    }

    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>> {
        Ok(Box::new(SqliteBackend::create(path)?))
    }

    fn create_like(
        &self,
        path: &Path,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> Result<Box<dyn StorageBackend>> {
        let backend = SqliteBackend::create(path)?;
        if source == StoreKind::Sqlite {
            // Settings that only apply before the first table exists.
            let conn = backend.lock();
            for pragma in ["page_size", "auto_vacuum"] {
                if let Some(v) = schema.0.get(pragma).and_then(|v| v.as_i64()) {
                    conn.execute_batch(&format!("PRAGMA {pragma} = {v}"))
                        .map_err(|e| {
                            Error::store_cause(describe(path), format!("setting {pragma}"), e)
                        })?;
                }
            }
        }
        Ok(Box::new(backend))
    }

    fn store_files(&self, path: &Path) -> Vec<PathBuf> {
        let with = |suffix: &str| {
            let mut s = path.as_os_str().to_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        vec![
            path.to_path_buf(),
            with("-wal"),
            with("-shm"),
            with("-journal"),
        ]
    }

    fn prepare_replace(&self, path: &Path) -> Result<()> {
        let err = |e: rusqlite::Error| {
            Error::store_cause(
                format!("sqlite:{}", path.display()),
                "folding the old database's WAL into it before replacing it",
                e,
            )
        };
        {
            // Opening rolls back a hot journal; the checkpoint moves every WAL frame into the
            // main file and truncates the WAL, which SQLite removes at the last close.
            let conn = Connection::open(path).map_err(err)?;
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(err)?;
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(err)?;
            if busy != 0 {
                return Err(Error::store(
                    format!("sqlite:{}", path.display()),
                    "another connection keeps the old database's WAL from being checkpointed",
                ));
            }
        }
        let files = self.store_files(path);
        for companion in &files[1..] {
            match std::fs::metadata(companion) {
                Ok(m) if m.len() == 0 || companion.to_string_lossy().ends_with("-shm") => {
                    std::fs::remove_file(companion)
                        .map_err(|e| Error::io("remove", companion, e))?;
                }
                Ok(_) => {
                    return Err(Error::store(
                        format!("sqlite:{}", path.display()),
                        format!(
                            "{} still holds data after a checkpoint; refusing to replace the \
                             database under it",
                            companion.display()
                        ),
                    ))
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The header tells WAL mode as SQLite wrote it: a database switched to WAL and back, a
    /// rollback-journal database, a file that is not a database and a missing one are not.
    #[test]
    fn wal_mode_is_read_from_the_database_header() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(!wal_mode_on_disk(&path), "rollback journal");
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        assert!(wal_mode_on_disk(&path), "WAL");
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .unwrap();
        assert!(!wal_mode_on_disk(&path), "back to a rollback journal");
        let other = d.path().join("other");
        std::fs::write(&other, [2u8; 100]).unwrap();
        assert!(!wal_mode_on_disk(&other), "not a database");
        assert!(!wal_mode_on_disk(&d.path().join("missing")), "missing");
    }
}
