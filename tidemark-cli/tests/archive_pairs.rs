//! Archive chains (a full archive and incrementals) restored at every checkpoint into every kind
//! of store, read back with each store's own library (rusqlite, rocksdb, sled), never through
//! tidemark: every source × target pair of FORMAT.md §2.
#![cfg(all(feature = "sled", feature = "rocksdb", feature = "sqlite"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::kv::{
    differences, kv_content, kv_write, rocks_content, sled_content, sqlite_kv_content,
};
use common::{fails, ok};

use std::path::Path;

/// The checkpoints (`to` column) and capture times (last column) of the archives in `dir`,
/// oldest first.
/// Each archive's checkpoint and capture time, at full precision (`list --json`: the text
/// listing shows times to the second, and these backups come within one).
fn points(dir: &Path) -> Vec<(String, String)> {
    let out = ok(
        &["list", &dir.to_string_lossy(), "--json"],
        dir.parent().unwrap(),
    );
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["to"].to_string(),
                v["captured_at"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn key(i: u32) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

/// RocksDB and sled sources: a full archive and two incrementals (updates, deletions, a new
/// collection, binary keys and values), each restored at its checkpoint into all three stores.
#[test]
fn key_value_chains_restore_at_every_checkpoint_into_every_store() {
    for source in ["rocksdb", "sled"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let app = d.join("app");
        let src = format!("{source}:app");
        let mut puts: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..300)
            .map(|i| ("orders", key(i), format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        puts.push(("blobs", b"\xff\x00bin".to_vec(), b"\x00\x01\xfe".to_vec()));
        kv_write(source, &app, &puts, &[]);
        let mut states = vec![kv_content(source, &app)];
        common::backup(d, &src, "a", "archive");

        let changed: Vec<_> = (0..10)
            .map(|i| ("orders", key(i), b"changed".to_vec()))
            .chain([("extra", b"x".to_vec(), b"{\"new\":true}".to_vec())])
            .collect();
        kv_write(
            source,
            &app,
            &changed,
            &[("orders", b"k0100"), ("blobs", b"\xff\x00bin")],
        );
        states.push(kv_content(source, &app));
        common::backup(d, &src, "a", "archive");

        let again = vec![("orders", key(100), b"back".to_vec())];
        kv_write(source, &app, &again, &[("orders", b"k0005")]);
        states.push(kv_content(source, &app));
        common::backup(d, &src, "a", "archive");

        let points = points(&d.join("a"));
        assert_eq!(points.len(), 3, "{source}: {points:?}");
        // Plain sled has no change positions: every archive ends at checkpoint 0, so a
        // checkpoint does not name one and the restore is refused; the capture time does.
        let by_time = points.iter().all(|(to, _)| to == "0");
        assert_eq!(by_time, source == "sled", "{points:?}");
        if by_time {
            let e = fails(
                &["restore", "--from", "a", "--to", "sqlite:x.db", "--at", "0"],
                d,
            );
            assert!(
                e.contains("no change positions") && e.contains("--at TIME"),
                "{e}"
            );
            assert!(!d.join("x.db").exists());
        }
        for (n, ((to, time), want)) in points.iter().zip(&states).enumerate() {
            let at = if by_time { time } else { to };
            for target in ["sqlite", "rocksdb", "sled"] {
                let name = format!("{target}-{n}");
                let url = format!("{target}:{name}");
                ok(&["restore", "--from", "a", "--to", &url, "--at", at], d);
                let got = match target {
                    "sqlite" => sqlite_kv_content(&d.join(&name)),
                    kv => kv_content(kv, &d.join(&name)),
                };
                // RocksDB always has a `default` column family and sled a default tree: only
                // the collections that hold records are compared.
                let diff = differences(&got, want);
                assert!(
                    diff.is_empty(),
                    "{source} chain at checkpoint {at} restored into {target}: {diff:#?}"
                );
            }
        }
    }
}

/// A SQLite source: the chain restored at every checkpoint into SQLite gives the source's own
/// dump back (sqlite3 shell), and into RocksDB and sled the same keys and values in both.
#[test]
fn sqlite_chains_restore_at_every_checkpoint_into_every_store() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("app.db");
    common::sql(
        &db,
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, score REAL, pic BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO users SELECT i, 'user ' || i, i / 3.0, x'00ff' FROM n;",
    );
    ok(&["track", "--source", "sqlite:app.db"], d);
    let mut dumps = vec![common::dump(&db)];
    common::backup(d, "sqlite:app.db", "a", "archive");
    common::sql(
        &db,
        "UPDATE users SET name = 'renamed' WHERE id <= 10; DELETE FROM users WHERE id = 100;
         CREATE TABLE tags(t TEXT PRIMARY KEY) WITHOUT ROWID; INSERT INTO tags VALUES ('a'), ('b');",
    );
    ok(&["track", "--source", "sqlite:app.db"], d);
    dumps.push(common::dump(&db));
    common::backup(d, "sqlite:app.db", "a", "archive");
    common::sql(
        &db,
        "INSERT INTO users VALUES (100, 'again', 0, NULL); DELETE FROM tags WHERE t = 'a';",
    );
    dumps.push(common::dump(&db));
    common::backup(d, "sqlite:app.db", "a", "archive");

    let points = points(&d.join("a"));
    assert_eq!(points.len(), 3, "{points:?}");
    for (n, ((at, _), want)) in points.iter().zip(&dumps).enumerate() {
        let copy = format!("copy-{n}.db");
        ok(
            &[
                "restore",
                "--from",
                "a",
                "--to",
                &format!("sqlite:{copy}"),
                "--at",
                at,
            ],
            d,
        );
        common::assert_same_dump(
            &common::dump(&d.join(&copy)),
            want,
            &format!("checkpoint {at}"),
        );

        let rocks = format!("rocks-{n}");
        let sled = format!("sled-{n}");
        ok(
            &[
                "restore",
                "--from",
                "a",
                "--to",
                &format!("rocksdb:{rocks}"),
                "--at",
                at,
            ],
            d,
        );
        ok(
            &[
                "restore",
                "--from",
                "a",
                "--to",
                &format!("sled:{sled}"),
                "--at",
                at,
            ],
            d,
        );
        let in_rocks = rocks_content(&d.join(&rocks));
        let in_sled = sled_content(&d.join(&sled));
        let diff = differences(&in_sled, &in_rocks);
        assert!(
            diff.is_empty(),
            "checkpoint {at}: sled differs from RocksDB: {diff:#?}"
        );
        let users = in_rocks.keys().filter(|(c, _)| c == "users").count();
        let want_users = [300, 299, 300][n];
        assert_eq!(users, want_users, "checkpoint {at}: users rows in RocksDB");
        let renamed = in_rocks
            .iter()
            .filter(|((c, _), v)| c == "users" && String::from_utf8_lossy(v).contains("renamed"))
            .count();
        assert_eq!(renamed, if n == 0 { 0 } else { 10 }, "checkpoint {at}");
    }
}

/// RocksDB and sled sources, ten backups (keys rewritten again and again, deleted, written
/// again, a collection added), then `compact --fanout 2`: every point still restores, into
/// every store, to exactly what the store's own library read at that backup.
#[test]
fn key_value_chains_restore_at_every_point_after_compaction() {
    for source in ["rocksdb", "sled"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let app = d.join("app");
        let src = format!("{source}:app");
        let puts: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..200)
            .map(|i| ("orders", key(i), format!("{{\"n\":{i}}}").into_bytes()))
            .collect();
        kv_write(source, &app, &puts, &[]);
        let mut states = vec![kv_content(source, &app)];
        common::backup(d, &src, "a", "archive");
        for round in 1..10u32 {
            let changed: Vec<(&str, Vec<u8>, Vec<u8>)> = (0..20)
                .map(|i| {
                    let k = key((i * 7 + round * 13) % 220);
                    ("orders", k, format!("{{\"round\":{round}}}").into_bytes())
                })
                .chain((round == 4).then(|| ("later", b"x".to_vec(), b"y".to_vec())))
                .collect();
            let gone = key(round * 11 % 200);
            kv_write(source, &app, &changed, &[("orders", &gone)]);
            states.push(kv_content(source, &app));
            common::backup(d, &src, "a", "archive");
        }
        let out = ok(&["compact", "a", "--fanout", "2", "--json"], d);
        assert!(!out.contains("\"compacted\":0,"), "{source}: {out}");
        ok(&["verify", "a"], d);
        let points = points(&d.join("a"));
        let mut seen = std::collections::BTreeMap::new();
        for (to, time) in &points {
            seen.entry(time.clone()).or_insert_with(|| to.clone());
        }
        // One point per backup, whatever compaction added.
        assert_eq!(seen.len(), states.len(), "{source}: {points:?}");
        let by_time = source == "sled";
        for (n, ((time, to), want)) in seen.iter().zip(&states).enumerate() {
            let at = if by_time { time } else { to };
            for target in ["sqlite", "rocksdb", "sled"] {
                let name = format!("c-{target}-{n}");
                ok(
                    &[
                        "restore",
                        "a",
                        "--to",
                        &format!("{target}:{name}"),
                        "--at",
                        at,
                    ],
                    d,
                );
                let got = match target {
                    "sqlite" => sqlite_kv_content(&d.join(&name)),
                    kv => kv_content(kv, &d.join(&name)),
                };
                let diff = differences(&got, want);
                assert!(
                    diff.is_empty(),
                    "{source} point {n} after compaction, into {target}: {diff:#?}"
                );
            }
        }
    }
}
