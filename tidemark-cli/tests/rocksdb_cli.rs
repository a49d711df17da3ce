//! End-to-end tests of the `tidemark` binary on real RocksDB databases, and across stores.
#![cfg(all(feature = "rocksdb", feature = "sqlite"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::ok;

use rocksdb::{IteratorMode, Options, DB};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

type Content = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn app_db(path: &Path) -> DB {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_wal_ttl_seconds(3600);
    let names = DB::list_cf(&Options::default(), path).unwrap_or_else(|_| vec!["default".into()]);
    DB::open_cf(&opts, path, names).unwrap()
}

fn content(path: &Path) -> Content {
    let db = app_db(path);
    let mut out = Content::new();
    for name in DB::list_cf(&Options::default(), path).unwrap() {
        let cf = db.cf_handle(&name).unwrap();
        for item in db.iterator_cf(&cf, IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.insert((name.clone(), k.to_vec()), v.to_vec());
        }
    }
    out
}

fn write(path: &Path, f: impl FnOnce(&DB)) {
    let db = app_db(path);
    f(&db);
}

fn cf(db: &DB, name: &str) {
    if db.cf_handle(name).is_none() {
        db.create_cf(name, &Options::default()).unwrap();
    }
}

#[test]
fn full_incrementals_and_restore_into_rocksdb() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(&d.join("src"), |db| {
        cf(db, "users");
        cf(db, "bin");
        for i in 0..300u32 {
            db.put(format!("k{i:04}"), format!("{{\"n\":{i}}}"))
                .unwrap();
            let users = db.cf_handle("users").unwrap();
            db.put_cf(&users, i.to_be_bytes(), vec![i as u8; (i % 50) as usize])
                .unwrap();
        }
        db.put_cf(&db.cf_handle("bin").unwrap(), [0xff, 0, 0xfe], [0u8; 3])
            .unwrap();
    });
    let out = ok(&["backup", "--source", "rocksdb:src", "--to", "bk"], d);
    assert!(
        out.contains("Backup (full)") && out.contains("601 in backup"),
        "{out}"
    );
    for round in 0..3u32 {
        write(&d.join("src"), |db| {
            db.put(format!("round{round}"), b"x").unwrap();
            db.delete(format!("k{:04}", round * 10)).unwrap();
            db.delete_cf(&db.cf_handle("users").unwrap(), (round * 7).to_be_bytes())
                .unwrap();
        });
        let out = ok(&["backup", "--source", "rocksdb:src", "--to", "bk"], d);
        assert!(out.contains("Backup (incremental)"), "round {round}: {out}");
    }
    ok(&["verify", "bk"], d);
    ok(&["restore", "--from", "bk", "--to", "rocksdb:copy"], d);
    assert_eq!(content(&d.join("copy")), content(&d.join("src")));
}

#[test]
fn sqlite_into_rocksdb_and_rocksdb_into_sqlite() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // SQLite → RocksDB: tables become column families, rows JSON objects.
    let sql = rusqlite::Connection::open(d.join("a.db")).unwrap();
    sql.execute_batch(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, pic BLOB, score REAL);
         INSERT INTO users VALUES (1, 'ann', x'0001', 1.5), (2, 'bob', NULL, 2.0);
         CREATE TABLE tags(name TEXT PRIMARY KEY) WITHOUT ROWID; INSERT INTO tags VALUES ('red');",
    )
    .unwrap();
    ok(&["backup", "--source", "sqlite:a.db", "--to", "bk-sql"], d);
    ok(
        &["restore", "--from", "bk-sql", "--to", "rocksdb:from-sql"],
        d,
    );
    let got = content(&d.join("from-sql"));
    let user1: serde_json::Value =
        serde_json::from_slice(&got[&("users".to_string(), b"1".to_vec())]).unwrap();
    assert_eq!(
        user1,
        serde_json::json!({"id": 1, "name": "ann", "pic": {"$base64": "AAE="}, "score": 1.5})
    );
    assert_eq!(
        got[&("tags".to_string(), b"red".to_vec())],
        br#"{"name":"red"}"#
    );
    assert_eq!(got.len(), 3);

    // RocksDB → SQLite: column families become (key, value) tables.
    write(&d.join("kv"), |db| {
        cf(db, "docs");
        db.put_cf(
            &db.cf_handle("docs").unwrap(),
            b"d1",
            br#"{"title":"hello"}"#,
        )
        .unwrap();
        db.put_cf(&db.cf_handle("docs").unwrap(), [0xff, 0x00], [0xff, 0xfe])
            .unwrap();
    });
    ok(&["backup", "--source", "rocksdb:kv", "--to", "bk-kv"], d);
    ok(
        &["restore", "--from", "bk-kv", "--to", "sqlite:from-kv.db"],
        d,
    );
    let conn = rusqlite::Connection::open(d.join("from-kv.db")).unwrap();
    let title: String = conn
        .query_row(
            "SELECT json_extract(value, '$.title') FROM docs WHERE key = 'd1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(title, "hello");
    let bin: Vec<u8> = conn
        .query_row("SELECT value FROM docs WHERE key = x'ff00'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(bin, vec![0xff, 0xfe]);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM \"default\"", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the empty default column family is an empty table");
}

#[test]
fn a_database_held_open_by_another_process_is_read_through_a_secondary() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // This test process is "the application": it holds the database (and its LOCK) open.
    let db = app_db(&d.join("live"));
    for i in 0..100u32 {
        db.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    db.flush_wal(true).unwrap();
    let out = ok(&["backup", "--source", "rocksdb:live", "--to", "bk"], d);
    assert!(
        out.contains("Backup (full)") && out.contains("100 in backup"),
        "{out}"
    );
    for i in 100..150u32 {
        db.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    db.flush_wal(true).unwrap();
    let out = ok(&["backup", "--source", "rocksdb:live", "--to", "bk"], d);
    assert!(
        out.contains("Backup (incremental)") && out.contains("150 in backup"),
        "{out}"
    );
    assert!(
        db.get(b"k0").unwrap().is_some(),
        "the application's database still works"
    );
    drop(db);
    ok(&["restore", "--from", "bk", "--to", "rocksdb:copy"], d);
    assert_eq!(content(&d.join("copy")), content(&d.join("live")));
}

#[test]
fn bad_rocksdb_sources_get_plain_errors() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::create_dir(d.join("empty")).unwrap();
    for (src, want) in [
        ("rocksdb:nope", "no such directory"),
        ("rocksdb:empty", "no CURRENT file"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
            .args(["backup", "--source", src, "--to", "bk"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{e}");
    }
    assert!(!d.join("bk").exists());
}
