//! `View::lookup`, which a diff in two scans uses to read the records it found changed: for
//! every kind of key a table can have, looking a scan's keys up gives exactly the scan's
//! records, a key the table does not hold gives nothing, and a table whose key may hold a NULL
//! is not looked up at all (the engine scans it instead).
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sqlite::SqliteBackend;
use backup_core::{CollectionName, Record, StorageBackend};
use rusqlite::Connection;

/// Each collection's records as a scan gives them, sorted by key.
fn scanned(view: &mut dyn backup_core::View, c: &CollectionName) -> Vec<Record> {
    let mut records = Vec::new();
    view.scan(c, &mut |r| {
        records.push(r);
        Ok(())
    })
    .unwrap();
    records.sort_by(|a, b| a.key.0.cmp(&b.key.0));
    records
}

/// The records `lookup` gives for `keys`, sorted by key, or `None` if it cannot look them up.
fn looked_up(
    view: &mut dyn backup_core::View,
    c: &CollectionName,
    keys: &[Vec<u8>],
) -> Option<Vec<Record>> {
    let mut records = Vec::new();
    let done = view
        .lookup(c, &mut keys.iter().map(Vec::as_slice), &mut |r| {
            records.push(r);
            Ok(())
        })
        .unwrap();
    if !done {
        assert!(records.is_empty(), "{c}: records handed on before refusing");
        return None;
    }
    records.sort_by(|a, b| a.key.0.cmp(&b.key.0));
    Some(records)
}

#[test]
fn looking_a_scans_keys_up_gives_the_scans_records_for_every_kind_of_key() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("s.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE ints(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO ints VALUES (-5, 'neg'), (0, 'zero'), (7, 'seven'), (10, 'ten'),
                                 (9223372036854775807, 'max');
         CREATE TABLE texts(k TEXT PRIMARY KEY COLLATE NOCASE, v);
         INSERT INTO texts VALUES ('Alice', 1), ('bob', 2), ('42', 3), ('[not json', 4), ('', 5);
         CREATE TABLE untyped(k PRIMARY KEY, v);
         INSERT INTO untyped VALUES (1, 'int'), ('1', 'text'), (1.5, 'real'), (x'0001', 'blob'),
                                    ('x', 'plain');
         CREATE TABLE pair(a INTEGER, b TEXT, v, PRIMARY KEY (a, b)) WITHOUT ROWID;
         INSERT INTO pair VALUES (1, 'a', 'one a'), (1, 'b', 'one b'), (2, 'a', 'two a');
         CREATE TABLE nokey(v TEXT);
         INSERT INTO nokey VALUES ('first'), ('second'), ('first');
         CREATE TABLE nullable(k TEXT PRIMARY KEY, v);
         INSERT INTO nullable VALUES (NULL, 'x'), (NULL, 'y'), ('a', 'z');",
    )
    .unwrap();
    drop(conn);
    let backend = SqliteBackend::open_for_backup(&path).unwrap();
    let mut view = backend.view().unwrap();
    let collections = view.collections().unwrap();
    assert_eq!(collections.len(), 6);
    for c in &collections {
        let c = &c.name;
        let all = scanned(view.as_mut(), c);
        let keys: Vec<Vec<u8>> = all.iter().map(|r| r.key.0.clone()).collect();
        let got = looked_up(view.as_mut(), c, &keys);
        if c.as_str() == "nullable" {
            assert_eq!(got, None, "a key that may hold a NULL is not looked up");
            continue;
        }
        assert_eq!(got.as_ref(), Some(&all), "{c}: every key looked up");
        // Every other key, and keys the table does not hold: only the held ones come back.
        let mut some: Vec<Vec<u8>> = keys.iter().step_by(2).cloned().collect();
        if c.as_str() == "pair" {
            some.extend([b"[3,\"z\"]".to_vec(), b"[1,\"c\"]".to_vec()]);
        } else {
            some.extend([b"999".to_vec(), b"nothing".to_vec(), b"[\"2\"]".to_vec()]);
        }
        let want: Vec<Record> = all.iter().step_by(2).cloned().collect();
        assert_eq!(looked_up(view.as_mut(), c, &some), Some(want), "{c}: some");
        // A key of another arity than the table's is not looked up: the engine scans.
        let other = if c.as_str() == "pair" {
            b"1".to_vec()
        } else {
            b"[1,2]".to_vec()
        };
        assert_eq!(looked_up(view.as_mut(), c, &[other]), None, "{c}: arity");
    }
}
