//! Opening a database for a backup without writing to it: lock waits that say so, the
//! leftovers a killed writer or a read-only mount leave (read from a recovered copy), and the
//! backend's own connection (tracking, its errors).

use crate::{describe, tracking, SqliteBackend, TrackReport, BUSY_TIMEOUT};
use backup_core::{Error, Result, StorageBackend};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

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
pub(crate) fn wait_for_locks(conn: &Connection) -> rusqlite::Result<()> {
    let path = conn.path().filter(|p| !p.is_empty()).map(str::to_string);
    WAITING_ON.with(|w| *w.borrow_mut() = path);
    conn.busy_handler(Some(wait_for_lock))
}

/// A copy of a database and of what its last writer left beside it ([`Leftover`]), in a
/// scratch directory: SQLite recovers the copy when it is opened, and the database itself is
/// not written.
pub(crate) struct RecoveredCopy {
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
pub(crate) fn store_err(store: &str, what: &str, e: rusqlite::Error) -> Error {
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
    pub(crate) fn data_version(&self) -> Result<i64> {
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
    pub(crate) fn file(&self) -> &Path {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves nothing half-done in it (SQLite rolls
        // back), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> Error {
        store_err(&self.describe(), "", e)
    }
}

/// A read-only connection. With `readonly_shm`, SQLite maps the `-shm` index read-only too
/// (URI parameter `readonly_shm`): a WAL left by a killed writer is then read into memory
/// instead of being recovered into the `-shm` file, so not one byte of the database's files
/// changes.
pub(crate) fn open_reader(path: &Path, readonly_shm: bool) -> rusqlite::Result<Connection> {
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
