//! The conformance suite, run against SQLite.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sqlite::table::{decode_key, quote_ident};
use backend_sqlite::{SqliteBackend, SqliteFactory};
use backup_core::{Field, Record, StorageBackend, StoreFactory, Value};
use conformance_tests::{Harness, Model, Op, TestStore, Writer};
use rusqlite::Connection;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct SqliteStore {
    path: PathBuf,
    backend: SqliteBackend,
    conn: Mutex<Connection>,
}

fn connect(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .unwrap();
    conn
}

fn apply(conn: &mut Connection, ops: &[Op]) {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    for op in ops {
        match op {
            Op::Put {
                collection,
                key,
                value,
            } => {
                tx.execute(
                    &format!(
                        "INSERT OR REPLACE INTO {}(k, v) VALUES (?1, ?2)",
                        quote_ident(collection)
                    ),
                    rusqlite::params![key, value],
                )
                .unwrap();
            }
            Op::Delete { collection, key } => {
                tx.execute(
                    &format!("DELETE FROM {} WHERE k = ?1", quote_ident(collection)),
                    [key],
                )
                .unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

impl TestStore for SqliteStore {
    fn backend(&self) -> &dyn StorageBackend {
        &self.backend
    }

    fn create_collection(&self, name: &str) {
        let conn = self.conn.lock().unwrap();
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .unwrap();
        if !exists {
            conn.execute_batch(&format!(
                "CREATE TABLE {}(k BLOB PRIMARY KEY, v BLOB)",
                quote_ident(name)
            ))
            .unwrap();
            drop(conn);
            if self.backend.is_tracked().unwrap() {
                self.backend.track().unwrap();
            }
        }
    }

    fn write(&self, ops: &[Op]) {
        apply(&mut self.conn.lock().unwrap(), ops);
    }

    fn writer(&self) -> Writer {
        let mut conn = connect(&self.path);
        Box::new(move |ops| apply(&mut conn, ops))
    }

    fn decode(&self, record: &Record) -> (Vec<u8>, Vec<u8>) {
        let key = match decode_key(&record.key).unwrap().as_slice() {
            [Field::Blob(k)] => k.clone(),
            other => panic!("unexpected key {other:?}"),
        };
        let value = match &record.value {
            Value::Row(row) => match row.columns.iter().find(|(n, _)| n == "v") {
                Some((_, Field::Blob(v))) => v.clone(),
                other => panic!("unexpected value column {other:?}"),
            },
            Value::Bytes(_) => Vec::new(),
        };
        (key, value)
    }
}

pub struct SqliteHarness;

impl Harness for SqliteHarness {
    type Store = SqliteStore;

    fn create(&self, path: &Path) -> SqliteStore {
        let conn = connect(path);
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        let backend = SqliteBackend::open(path).unwrap();
        backend.track().unwrap();
        SqliteStore {
            path: path.to_path_buf(),
            backend,
            conn: Mutex::new(conn),
        }
    }

    fn open(&self, path: &Path) -> SqliteStore {
        SqliteStore {
            path: path.to_path_buf(),
            backend: SqliteBackend::open(path).unwrap(),
            conn: Mutex::new(connect(path)),
        }
    }

    fn factory(&self) -> Box<dyn StoreFactory> {
        Box::new(SqliteFactory)
    }

    fn trims_changes(&self) -> bool {
        true
    }

    fn read_plain(&self, path: &Path) -> (Model, BTreeSet<String>) {
        let conn =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let names: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 AND name NOT LIKE '\\_tidemark\\_%' ESCAPE '\\'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut model = Model::new();
        for name in &names {
            let mut stmt = conn
                .prepare(&format!("SELECT k, v FROM {}", quote_ident(name)))
                .unwrap();
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .unwrap();
            for row in rows {
                let (k, v) = row.unwrap();
                model.insert((name.clone(), k), v);
            }
        }
        (model, names.into_iter().collect())
    }
}

conformance_tests::conformance_suite!(sqlite, crate::SqliteHarness);
