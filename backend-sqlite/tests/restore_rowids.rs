//! Restoring rows that carry a hidden rowid, read back with plain rusqlite.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sqlite::SqliteFactory;
use backup_core::{
    CollectionInfo, CollectionName, Field, Key, Record, Row, StoreFactory, StoreKind, StoreSchema,
    Value,
};
use serde_json::json;

fn row(rowid: i64, name: &str, n: i64) -> Record {
    Record {
        key: Key(name.as_bytes().to_vec()),
        value: Value::Row(Row {
            columns: vec![
                ("name".into(), Field::Text(name.as_bytes().to_vec())),
                ("n".into(), Field::Integer(n)),
            ],
            rowid: Some(rowid),
        }),
    }
}

/// Restores `records` into a new table made by `sql` (keyed by `key`); the error, if any.
fn restore(
    path: &std::path::Path,
    sql: &str,
    key: &[&str],
    records: Vec<Record>,
) -> Option<String> {
    let store = SqliteFactory.create(path).unwrap();
    let mut sink = store.restore_sink().unwrap();
    let info = CollectionInfo {
        name: CollectionName::from_stored("t"),
        schema: json!({"sql": sql, "columns": ["name", "n"], "key": key, "hidden_rowid": true}),
    };
    sink.create_collection(&info, StoreKind::Sqlite).unwrap();
    if let Err(e) = sink.put_batch(&info.name, records) {
        return Some(e.to_string());
    }
    sink.finish(&StoreSchema(json!({})), StoreKind::Sqlite)
        .unwrap();
    None
}

/// A backup taken across a `VACUUM` can hold, in a table keyed by a primary key, a row's old
/// rowid and the same rowid, new, of another row (a VACUUM renumbers without a trigger firing).
/// The rowid only keeps the rows' order there: the second row goes in with a new rowid, and
/// every row is restored.
#[test]
fn a_rowid_taken_twice_in_a_table_keyed_by_its_primary_key_gets_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("r.db");
    let records = vec![row(2, "y", 2), row(3, "z", 3), row(3, "w", 4)];
    let failed = restore(
        &path,
        "CREATE TABLE t(name TEXT PRIMARY KEY, n INTEGER)",
        &["name"],
        records,
    );
    assert_eq!(failed, None);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(i64, String, i64)> = conn
        .prepare("SELECT rowid, name, n FROM t ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [(2, "y".into(), 2), (3, "z".into(), 3), (4, "w".into(), 4)]
    );
}

/// In a table keyed by its rowid, two rows with one rowid are one key twice, which a backup
/// never holds: the restore fails rather than invent a key.
#[test]
fn a_rowid_taken_twice_in_a_table_keyed_by_it_fails_the_restore() {
    let d = tempfile::tempdir().unwrap();
    let records = vec![row(3, "z", 3), row(3, "w", 4)];
    let failed = restore(
        &d.path().join("r.db"),
        "CREATE TABLE t(name TEXT, n INTEGER)",
        &[],
        records,
    );
    let e = failed.expect("the restore fails");
    assert!(e.contains("UNIQUE constraint failed: t.rowid"), "{e}");
}
