//! # tidemark
//!
//! Back up and restore the database a service embeds — RocksDB, sled or SQLite — while the
//! service runs: full and incremental backups into a folder of JSON documents or a chain of
//! compressed archives (on a disk or on object storage), a live backup that follows the store's
//! writes, restores into any of the three stores, and verification.
//!
//! This crate is the one dependency a service adds. The engine ([`backup_core`]) is always
//! there; each store's backend comes with its feature, so a service builds only what it uses:
//!
//! ```toml
//! [dependencies]
//! tidemark = { version = "0.1", features = ["sqlite"] }   # or "rocksdb", "sled"; + "remote"
//! ```
//!
//! | feature | module | what it adds |
//! |---|---|---|
//! | `sqlite` | `tidemark::sqlite` | `SqliteBackend`, `SqliteFactory`, change tracking |
//! | `rocksdb` | `tidemark::rocksdb` | `RocksBackend` (also over the service's own open `DB`), `RocksFactory` |
//! | `sled` | `tidemark::sled` | `TrackedDb` (a sled handle that logs its writes), `SledBackend`, `SledFactory` |
//! | `remote` | `tidemark::remote` | archive chains on S3, GCS and Azure (`object_store`) |
//!
//! Everything of the engine is re-exported at the root: [`backup_folder`], [`backup_archive`],
//! [`LiveBackup`], [`restore_folder_to_path`], [`restore_archives_to_path`], [`verify_folder`],
//! [`prune_archives`], [`compact_chain`], the [`StorageBackend`] trait for another store, and
//! the data model.
//!
//! ## A backup and a restore (SQLite)
//!
#![cfg_attr(feature = "sqlite", doc = "```")]
#![cfg_attr(not(feature = "sqlite"), doc = "```ignore")]
//! use tidemark::sqlite::{SqliteBackend, SqliteFactory};
//! use tidemark::{backup_folder, restore_folder_to_path, verify_folder};
//! use tidemark::{BackupOptions, RestoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let db = dir.path().join("app.db");
//! let conn = rusqlite::Connection::open(&db)?;
//! conn.execute_batch(
//!     "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);
//!      INSERT INTO users VALUES (1, 'ada'), (2, 'grace');",
//! )?;
//!
//! // Back up into a folder (full the first time, incremental after), reporting write events.
//! let source = SqliteBackend::open_for_backup(&db)?;
//! let summary = backup_folder(&source, &dir.path().join("bk"), &BackupOptions::default(),
//!                             &mut |_event| {})?;
//! assert_eq!(summary.records_total, 2);
//! assert!(verify_folder(&dir.path().join("bk"))?.problems.is_empty());
//!
//! // Restore into a new database, built aside and moved into place when complete.
//! let copy = dir.path().join("copy.db");
//! restore_folder_to_path(&dir.path().join("bk"), &SqliteFactory, &copy,
//!                        &RestoreOptions::default())?;
//! let n: i64 = rusqlite::Connection::open(&copy)?
//!     .query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
//! assert_eq!(n, 2);
//! # Ok(())
//! # }
//! ```
//!
//! ## A live backup beside the service's own writers (RocksDB)
//!
//! The service keeps its `DB` open; the backup reads the same handle, follows its write-ahead
//! log and makes what was committed durable in the backup every `flush_interval`. `stop` takes
//! one last run, so a clean shutdown leaves a backup of everything written before it.
//!
#![cfg_attr(feature = "rocksdb", doc = "```")]
#![cfg_attr(not(feature = "rocksdb"), doc = "```ignore")]
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tidemark::rocksdb::{Db, RocksBackend};
//! use tidemark::{LiveBackup, LiveOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let mut opts = rocksdb::Options::default();
//! opts.create_if_missing(true);
//! let db = Arc::new(Db::open(&opts, dir.path().join("db"))?);
//!
//! let live = LiveBackup::start(
//!     Arc::new(RocksBackend::from_db(db.clone())),
//!     dir.path().join("bk"),
//!     LiveOptions { flush_interval: Duration::from_millis(200), ..LiveOptions::default() },
//! );
//! live.wait_initial(&mut |_| {});
//! db.put(b"order-1", b"{\"total\": 12}")?;
//! let summary = live.stop()?;
//! assert_eq!(summary.last.map(|s| s.records_total), Some(1));
//! # Ok(())
//! # }
//! ```
//!
//! Runnable services for each store are in `tidemark/examples/` (`cargo run -p tidemark
//! --example sqlite_service --features sqlite`, `rocksdb_service`, `sled_service`).

pub use backup_core;
pub use backup_core::*;

/// SQLite (with the `sqlite` feature): the backend over a database file, its restore factory,
/// and change tracking (`SqliteBackend::track`).
#[cfg(feature = "sqlite")]
pub use backend_sqlite as sqlite;

/// RocksDB (with the `rocksdb` feature): the backend (over a path, or over the service's own
/// open `Db`), its restore factory.
#[cfg(feature = "rocksdb")]
pub use backend_rocksdb as rocksdb;

/// sled (with the `sled` feature): `TrackedDb`, a sled handle that logs every write it makes
/// so that incrementals are exact, the backend and its restore factory.
#[cfg(feature = "sled")]
pub use backend_sled as sled;

/// Object storage (with the `remote` feature): archive chains on S3, GCS and Azure.
#[cfg(feature = "remote")]
pub use tidemark_remote as remote;
