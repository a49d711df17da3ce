//! Restoring into SQLite: the restore sink (tables, rows, then indexes, triggers and views) and
//! the factory that makes and replaces restore targets.

use crate::table::{quote_ident, SqlField};
use crate::{describe, table, SqliteBackend};
use backup_core::{
    CollectionInfo, CollectionName, Error, Field, Record, RestoreSink, Result, StorageBackend,
    StoreFactory, StoreKind, StoreSchema, Value,
};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

/// How a restored collection is laid out.
pub(crate) enum Layout {
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

pub(crate) struct SqliteRestore<'a> {
    pub(crate) conn: MutexGuard<'a, Connection>,
    pub(crate) store: String,
    pub(crate) tables: BTreeMap<CollectionName, Layout>,
    /// Batches written, freed off the store's thread (a restore's critical path).
    pub(crate) written: backup_core::DropBehind<Vec<Record>>,
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
