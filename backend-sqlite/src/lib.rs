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

mod changes;
mod open;
mod restore;
pub mod table;
pub mod tracking;
mod view;

use backup_core::{Checkpoint, RestoreSink, Result, StorageBackend, StoreId, StoreKind, View};
use open::{store_err, wait_for_locks, RecoveredCopy};
use restore::SqliteRestore;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use table::{quote_ident, user_tables};
use view::{open_snapshot, SqliteView};

pub use restore::SqliteFactory;
pub use tracking::TrackReport;

/// The identity reported for a database without tracking (it always gets full backups).
pub const UNTRACKED_ID: &str = "untracked";

/// How long a connection waits for a lock another connection holds (SQLite's busy timeout).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the change log's trim waits for the write lock; past it, the next backup trims.
pub(crate) const TRIM_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

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

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .finish()
    }
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
