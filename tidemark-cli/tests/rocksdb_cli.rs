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
    common::sql(
        &d.join("app.db"),
        "CREATE TABLE t(a); INSERT INTO t VALUES (1);",
    );
    std::fs::write(d.join("notes.txt"), "text").unwrap();
    write(&d.join("real"), |db| db.put(b"k", b"v").unwrap());
    for (src, want) in [
        ("rocksdb:nope", "no such directory"),
        ("rocksdb:empty", "no CURRENT file"),
        // A SQLite file given as RocksDB: the kind it is, not only what it is not.
        (
            "rocksdb:app.db",
            "a RocksDB database is a directory: this is a SQLite database (sqlite:app.db)",
        ),
        (
            "rocksdb:notes.txt",
            "a file, and a RocksDB database is a directory",
        ),
        // And a RocksDB directory given as SQLite.
        (
            "sqlite:real",
            "a SQLite database is a file: this is a RocksDB database (rocksdb:real)",
        ),
    ] {
        let out = Command::new(common::bin())
            .args(["backup", "--source", src, "--to", "bk"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{e}");
    }
    assert!(!d.join("bk").exists());
    // A destination inside the database directory would be written into the store.
    for dest in ["real/bk", "real"] {
        let out = Command::new(common::bin())
            .args(["backup", "--source", "rocksdb:real", "--to", dest])
            .args(["--format", "archive"])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("inside the database it would back up"), "{e}");
    }
    assert!(!d.join("real/bk").exists());
}

/// The data an application on its own RocksDB (rocksdict, 9.x) reads from the database at
/// `dir`: it must open it.
fn app_dump(d: &Path, dir: &str) -> serde_json::Value {
    serde_json::from_str(&common::rocksapp(&["dump", dir], d)).unwrap()
}

/// Restores the backup `dest` into a new database `copy` and asserts that the application
/// reads there what `expected` (an [`app_dump`]) holds.
fn assert_restores(d: &Path, dest: &str, copy: &str, expected: &serde_json::Value) {
    ok(
        &[
            "restore",
            "--from",
            dest,
            "--to",
            &format!("rocksdb:{copy}"),
        ],
        d,
    );
    assert_eq!(&app_dump(d, copy), expected, "restore of {dest}");
}

/// A restore writes each column family's files with the compression the source gave its last
/// level (where ingested files go): an application's uncompressed column family comes back
/// uncompressed, a zstd one compressed, and one that compresses only its last level
/// compressed. Sizes and contents as the application (rocksdict, its own RocksDB) reads them.
/// A restore of another store's backup gets RocksDB's default compression.
#[test]
fn a_restore_keeps_each_column_familys_compression() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["compressed", "src", "2000"], d);
    let sizes = |dir: &str| -> BTreeMap<String, u64> {
        serde_json::from_str(&common::rocksapp(&["sizes", dir], d)).unwrap()
    };
    let source = sizes("src");
    // 2,000 values of 994 bytes each: uncompressed in `plain` and (at level 0) in `bottom`.
    assert!(
        source["p"] > 1_900_000 && source["b"] > 1_900_000,
        "{source:?}"
    );
    assert!(source["z"] < 200_000, "{source:?}");
    // Both backups first: the application's opens below (read-write) write an OPTIONS file
    // with their own options, which a later backup would record.
    for format in ["archive", "folder"] {
        let dest = format!("bk-{format}");
        ok(
            &[
                "backup",
                "--source",
                "rocksdb:src",
                "--to",
                &dest,
                "--format",
                format,
            ],
            d,
        );
    }
    for format in ["archive", "folder"] {
        let (dest, copy) = (format!("bk-{format}"), format!("copy-{format}"));
        ok(
            &[
                "restore",
                "--from",
                &dest,
                "--to",
                &format!("rocksdb:{copy}"),
            ],
            d,
        );
        let restored = sizes(&copy);
        assert!(restored["p"] > 1_900_000, "{format}: {restored:?}");
        assert!(
            restored["z"] < 200_000 && restored["b"] < 200_000,
            "{format}: {restored:?}"
        );
        assert_eq!(app_dump(d, &copy), app_dump(d, "src"), "{format}");
    }
    // Into SQLite and back: no compression recorded, RocksDB's default (which compresses).
    ok(
        &["restore", "--from", "bk-archive", "--to", "sqlite:c.db"],
        d,
    );
    ok(
        &["backup", "--source", "sqlite:c.db", "--to", "bk-sqlite"],
        d,
    );
    ok(
        &["restore", "--from", "bk-sqlite", "--to", "rocksdb:back"],
        d,
    );
    // 6,000 records of about 1,000 bytes: well under 6 MB once compressed.
    let back: u64 = sizes("back").values().sum();
    assert!(back > 0 && back < 2_000_000, "{back}");
}

/// `tidemark [FLAGS] backup --source rocksdb:src --to DEST --format FORMAT` in `d`: its output,
/// and its stdout and stderr as one text (a run says on stderr why it does not read the WAL).
fn backup_of_src(
    d: &Path,
    flags: &[&str],
    dest: &str,
    format: &str,
) -> (std::process::Output, String) {
    let backup = [
        "backup",
        "--source",
        "rocksdb:src",
        "--to",
        dest,
        "--format",
        format,
    ];
    let out = common::tidemark(&[flags, &backup[..]].concat(), d);
    let text = common::output_text(&out);
    (out, text)
}

/// Backups never write to the source: full, incremental and archive runs leave every file of
/// a database that no process holds byte for byte as it was, and the application (on its own,
/// older RocksDB) opens it afterwards, as it opens the restored copies. Two cases from the
/// field: an application killed with its last writes only in the WAL, and a cleanly closed
/// database with many L0 files.
#[test]
fn backups_never_write_to_a_rocksdb_source_and_the_application_still_opens_it() {
    for case in ["crashed", "many-l0"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        if case == "crashed" {
            common::rocksapp(&["write", "src", "0", "200"], d);
            common::rocksapp(&["write", "src", "200", "50", "--crash"], d);
        } else {
            common::rocksapp(&["write", "src", "0", "300", "--flush-each", "50"], d);
        }
        for round in 0..2 {
            let before = common::snapshot_files(&d.join("src"));
            for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
                let out = common::backup(d, "rocksdb:src", dest, format);
                let want = if round == 0 {
                    "Backup (full)"
                } else {
                    "Backup (incremental"
                };
                assert!(out.contains(want), "{case} {format} round {round}: {out}");
                common::assert_unchanged(
                    &d.join("src"),
                    &before,
                    &format!("{case}: {format} backup, round {round}"),
                );
            }
            for dest in ["bk", "ar"] {
                ok(&["verify", dest], d);
                let copy = format!("copy-{dest}-{round}");
                ok(
                    &[
                        "restore",
                        "--from",
                        dest,
                        "--to",
                        &format!("rocksdb:{copy}"),
                    ],
                    d,
                );
            }
            // Only now does the application open its database again (replaying its WAL).
            let expected = app_dump(d, "src");
            assert_eq!(
                expected["users"].as_object().unwrap().len(),
                if case == "crashed" { 250 } else { 300 } + 40 * round,
                "{case}: the application reads every key"
            );
            for dest in ["bk", "ar"] {
                let copy = format!("copy-{dest}-{round}");
                assert_eq!(app_dump(d, &copy), expected, "{case}: restore of {dest}");
            }
            // The application writes more and is killed again: the incrementals read that.
            common::rocksapp(&["write", "src", "1000", "40", "--crash"], d);
        }
    }
}

/// A different database put at the same path is never continued from the old chain's
/// sequence numbers (the identity is read from the IDENTITY file, also under a secondary
/// instance): the next backup is full and says why.
#[test]
fn a_different_database_at_the_same_path_starts_a_full_backup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "100"], d);
    for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
        common::backup(d, "rocksdb:src", dest, format);
    }
    std::fs::rename(d.join("src"), d.join("old")).unwrap();
    common::rocksapp(&["write", "src", "5000", "30"], d);
    for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
        let out = common::backup(d, "rocksdb:src", dest, format);
        assert!(
            out.contains("Backup (full)") && out.contains("identity changed"),
            "{format}: {out}"
        );
        let copy = format!("copy-{dest}");
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("rocksdb:{copy}"),
            ],
            d,
        );
        assert_eq!(app_dump(d, &copy), app_dump(d, "src"), "{format}");
    }
}

/// `restore --force` refuses a RocksDB target that an application has open (its writes would
/// go to a replaced database), and replaces one that nobody holds, atomically.
#[test]
fn restore_force_refuses_a_rocksdb_target_held_by_its_application() {
    use std::io::BufRead;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "50"], d);
    common::rocksapp(&["write", "target", "900", "5"], d);
    ok(&["backup", "--source", "rocksdb:src", "--to", "bk"], d);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rocksapp.py");
    let mut app = Command::new(common::python())
        .arg(script)
        .args(["hold", "target"])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(app.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let err = common::fails(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "rocksdb:target",
            "--force",
        ],
        d,
    );
    assert!(
        err.contains("open in another process") && err.contains(&format!("pid {}", app.id())),
        "{err}"
    );
    drop(app.stdin.take());
    assert!(app.wait().unwrap().success());
    let old = app_dump(d, "target");
    assert_eq!(old["users"].as_object().unwrap().len(), 5);
    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "rocksdb:target",
            "--force",
        ],
        d,
    );
    assert_eq!(app_dump(d, "target"), app_dump(d, "src"));
    let leftovers: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tidemark-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A restore into a new RocksDB directory never replaces a database that appeared there while
/// it ran: the application's (written here through the rocksdb crate), or a second restore's.
#[test]
fn a_restore_never_replaces_a_rocksdb_that_appeared_while_it_ran() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::big_backup(d, 1500);
    let start = |target: &str| common::start_restore(d, target);
    let in_progress = || common::restores_in_progress(d).len();

    let child = start("rocksdb:app");
    common::wait_for("the restore to start", || in_progress() > 0);
    write(&d.join("app"), |db| db.put(b"k", b"mine").unwrap());
    assert!(
        in_progress() > 0,
        "the restore ended before the application wrote: the test needs a larger backup"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not empty (use --force"), "{err}");
    let want: Content = [(("default".into(), b"k".to_vec()), b"mine".to_vec())].into();
    assert_eq!(content(&d.join("app")), want);
    assert_eq!(in_progress(), 0);

    common::one_of_two_restores_wins(d, "rocksdb:r");
    // The database in place is whole: the same as one restored alone, read with the rocksdb
    // crate.
    ok(&["restore", "--from", "bk", "--to", "rocksdb:alone"], d);
    let (got, want) = (content(&d.join("r")), content(&d.join("alone")));
    assert_eq!(got.len(), 1500);
    assert!(
        got == want,
        "the restored database differs from one restored alone"
    );
}

/// The application's database `src` with 100 keys in `default` and `users` (WAL files kept),
/// backed up to an archive chain `ar` and a folder `bk`: those destinations.
fn written_and_backed_up(d: &Path) -> [(&'static str, &'static str); 2] {
    common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
    let dests = [("ar", "archive"), ("bk", "folder")];
    for (dest, format) in dests {
        common::backup(d, "rocksdb:src", dest, format);
    }
    dests
}

/// Restores each of `dests` into a new database `copy-<dest>` and asserts that the
/// application reads there what `expected` holds ([`assert_restores`]).
fn assert_each_restores(d: &Path, dests: &[(&str, &str)], expected: &serde_json::Value) {
    for &(dest, _) in dests {
        assert_restores(d, dest, &format!("copy-{dest}"), expected);
    }
}

/// Backs `src` up to each of `dests` and asserts that each run compared every record (a
/// diff-based incremental) and said all of `says`.
fn backups_compare_every_record(d: &Path, dests: &[(&str, &str)], says: &[&str]) {
    for &(dest, format) in dests {
        let (out, text) = backup_of_src(d, &[], dest, format);
        assert!(
            out.status.success()
                && text.contains("Backup (incremental, diff-based)")
                && says.iter().all(|s| text.contains(s)),
            "{dest}: {text}"
        );
    }
}

/// An SST file that the application ingests (`IngestExternalFile`, through its own, older
/// RocksDB) into a key range no data covers gets sequence number 0: no WAL record and no gap
/// in the sequence. The next backup, to an archive chain and to a folder, finds the new file,
/// says why it does not read the WAL, and compares every record; the restores hold the
/// ingested keys. The file is then known, so the backup after reads the WAL again, and a
/// compaction's output (a new file with sequence number 0 too, but no ingest) keeps it doing so.
#[test]
fn keys_ingested_without_a_sequence_number_are_backed_up() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dests = written_and_backed_up(d);
    common::rocksapp(&["ingest", "src", "0", "100"], d);
    let restored_equal = |round: &str| {
        let expected = app_dump(d, "src");
        for (dest, _) in dests {
            assert_restores(d, dest, &format!("copy-{dest}-{round}"), &expected);
        }
        expected
    };
    for (dest, format) in dests {
        let out = common::backup(d, "rocksdb:src", dest, format);
        assert!(
            out.contains("Backup (incremental, diff-based)") && out.contains("101 records written"),
            "{dest}: {out}"
        );
        assert!(
            out.contains("was ingested with IngestExternalFile"),
            "{dest}: {out}"
        );
        // The file is known now: the next run reads the WAL.
        let again = common::backup(d, "rocksdb:src", dest, format);
        assert!(!again.contains("diff-based"), "{dest}: {again}");
    }
    let expected = restored_equal("ingested");
    assert_eq!(expected["default"].as_object().unwrap().len(), 201);
    // Writes that overlap the old keys, compacted into new files with sequence number 0.
    common::rocksapp(&["write", "src", "50", "100", "--keep-wal"], d);
    common::rocksapp(&["compact", "src"], d);
    for (dest, format) in dests {
        let out = common::backup(d, "rocksdb:src", dest, format);
        assert!(
            out.contains("Backup (incremental)") && !out.contains("diff-based"),
            "{dest}: the WAL is read again: {out}"
        );
    }
    restored_equal("compacted");
}

/// An ingested file that a compaction merged into another before the backup: its keys are in a
/// compaction's output, which carries no ingest property, and the WAL never had them. The
/// MANIFEST's edits still show a file added by itself and gone: the backup compares every
/// record, and the restores hold the ingested keys (before, the incremental read the WAL alone
/// and lost them, and verify called the chain intact). The backup after reads the WAL again.
#[test]
fn keys_ingested_then_compacted_away_before_the_backup_are_backed_up() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dests = written_and_backed_up(d);
    common::rocksapp(&["ingest-compact", "src", "0", "50"], d);
    // The application's dump comes after the backups: opening the database writes a new
    // MANIFEST, and the edits of the session before are then gone (docs/RELIABILITY.md).
    backups_compare_every_record(
        d,
        &dests,
        &["compacted into another file", "51 records written"],
    );
    let expected = app_dump(d, "src");
    assert_eq!(expected["default"].as_object().unwrap().len(), 151);
    for (dest, format) in dests {
        assert_restores(d, dest, &format!("copy-{dest}"), &expected);
        let again = common::backup(d, "rocksdb:src", dest, format);
        assert!(!again.contains("diff-based"), "{dest}: {again}");
    }
}

/// The same, with the database opened once more before the backup (the application read it,
/// or restarted): that open wrote a new MANIFEST, and the edits that showed the ingestion are
/// gone. What the new MANIFEST still holds is each file's smallest sequence number: the
/// compaction's output, new since the previous backup, holds keys at sequence number 0, which
/// only an ingestion or a bottommost compaction writes, and the info LOG shows the ingestion.
/// The backup compares every record, and the restores hold the ingested keys (before, the incremental read the WAL alone and lost
/// them: docs/RELIABILITY.md called it the one case the MANIFEST could not show).
#[test]
fn keys_ingested_then_compacted_away_are_backed_up_after_the_database_was_reopened() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dests = written_and_backed_up(d);
    common::rocksapp(&["ingest-compact", "src", "0", "50"], d);
    // Opens the database: a new MANIFEST, the session's edits gone.
    let expected = app_dump(d, "src");
    assert_eq!(expected["default"].as_object().unwrap().len(), 151);
    backups_compare_every_record(
        d,
        &dests,
        &[
            "sequence number 0",
            "the LOG shows a file ingested since",
            "51 records written",
        ],
    );
    assert_each_restores(d, &dests, &expected);
    // Another session of plain writes and a reopen: the files are the previous backup's now,
    // and the WAL is read again.
    common::rocksapp(&["write", "src", "100", "10", "--keep-wal"], d);
    let expected = app_dump(d, "src");
    for (dest, format) in dests {
        let again = common::backup(d, "rocksdb:src", dest, format);
        assert!(!again.contains("diff-based"), "{dest}: {again}");
        assert_restores(d, dest, &format!("again-{dest}"), &expected);
    }
}

/// RocksDB writes its info LOG through a buffer it flushes every 5 seconds and when the
/// database closes: a session that was killed may have lost its last lines, an ingestion's
/// among them. Here the killed session's LOG is cut after its first lines (as such a loss
/// leaves it): without the check that every session before the last closed the database
/// (`Shutdown complete`), the LOG showed no ingestion, the incremental read the WAL alone and the
/// restores lacked the 50 ingested keys.
#[test]
fn a_session_killed_after_an_ingest_proves_nothing_by_its_log() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let dests = written_and_backed_up(d);
    common::rocksapp(&["ingest-compact", "src", "0", "50", "--crash"], d);
    let log = d.join("src/LOG");
    let text = std::fs::read_to_string(&log).unwrap();
    let cut = text
        .find("Creating manifest")
        .expect("the session's LOG names its MANIFEST");
    let cut = cut + text[cut..].find('\n').unwrap() + 1;
    assert!(
        text[cut..].contains("ingest_finished"),
        "the ingestion was logged"
    );
    std::fs::write(&log, &text[..cut]).unwrap();
    // Opens the database again (and recovers it): a new MANIFEST.
    let expected = app_dump(d, "src");
    assert_eq!(expected["default"].as_object().unwrap().len(), 151);
    backups_compare_every_record(d, &dests, &["ended without closing the database"]);
    assert_each_restores(d, &dests, &expected);
}

/// A compaction into the last level writes keys at sequence number 0 too (RocksDB zeroes those
/// no snapshot needs), and after another open the MANIFEST no longer tells it from an
/// ingestion. The info LOG does: each session's names the MANIFEST it opened and the one it
/// created, and an ingestion logs an event. With a whole chain of sessions and no ingestion,
/// the incremental reads the WAL (every such run compared every record before the LOG was
/// read); with the LOG files gone, nothing rules an ingestion out, and it compares.
#[test]
fn a_compaction_before_a_reopen_keeps_the_wal_in_use_where_the_log_shows_no_ingestion() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
    common::backup(d, "rocksdb:src", "ar", "archive");
    for round in [1, 2] {
        // New values of the same keys: the compaction merges them with the last level's
        // (where new keys would be moved there as they are, their sequence numbers kept).
        common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
        common::rocksapp(&["compact", "src"], d);
        if round == 2 {
            for e in std::fs::read_dir(d.join("src")).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().starts_with("LOG") {
                    std::fs::remove_file(e.path()).unwrap();
                }
            }
        }
        // Opens the database again: a new MANIFEST.
        let expected = app_dump(d, "src");
        if round == 1 {
            let (out, text) = backup_of_src(d, &[], "ar", "archive");
            assert!(
                out.status.success()
                    && text.contains("Backup (incremental)")
                    && text.contains("200 records written"),
                "{text}"
            );
        } else {
            backups_compare_every_record(
                d,
                &[("ar", "archive")],
                &["sequence number 0", "info LOG does not tell"],
            );
        }
        assert_restores(d, "ar", &format!("copy{round}"), &expected);
    }
}

/// FIFO compaction deletes the oldest SST files once they grow beyond a size: their keys go
/// without a WAL record. The MANIFEST's edit removes files and adds none, in a column family
/// the OPTIONS file gives FIFO compaction: the backup compares every record, and the restores hold what the application holds (before, an incremental
/// read the WAL alone and kept the expired keys).
#[test]
fn keys_a_fifo_compaction_dropped_are_deleted_from_the_backup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["fifo", "src", "0", "2"], d);
    let dests = [("ar", "archive"), ("bk", "folder")];
    for (dest, format) in dests {
        common::backup(d, "rocksdb:src", dest, format);
    }
    common::rocksapp(&["fifo", "src", "2", "3"], d);
    backups_compare_every_record(d, &dests, &["by its FIFO compaction"]);
    let expected = app_dump(d, "src");
    assert!(expected["default"].as_object().unwrap().len() < 5000);
    assert_each_restores(d, &dests, &expected);
}

/// The same, with the database opened again before the backup: the edits that removed the
/// files are gone with the MANIFEST they were in. In a database with a FIFO column family, a
/// file of the previous backup that is no longer there may have been dropped with its keys: the
/// backup compares every record (before, it read the WAL alone and kept the expired keys).
#[test]
fn keys_a_fifo_compaction_dropped_are_deleted_after_the_database_was_reopened() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["fifo", "src", "0", "2"], d);
    common::backup(d, "rocksdb:src", "ar", "archive");
    common::rocksapp(&["fifo", "src", "2", "3"], d);
    let expected = app_dump(d, "src");
    assert!(expected["default"].as_object().unwrap().len() < 5000);
    backups_compare_every_record(
        d,
        &[("ar", "archive")],
        &["of the previous backup is gone", "FIFO compaction"],
    );
    assert_restores(d, "ar", "copy", &expected);
}

/// A queue's deletions (jobs put, flushed, deleted, flushed) make compactions that write no
/// file: their MANIFEST edits remove files and add none, as FIFO's do, but the keys went with
/// WAL records. Outside a FIFO column family (the OPTIONS file tells) they leave the WAL in use:
/// every incremental reads it (with the removals counted as FIFO's, each was diff-based).
#[test]
fn a_queues_compactions_keep_incrementals_reading_the_wal() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["queue", "src", "0"], d);
    common::backup(d, "rocksdb:src", "ar", "archive");
    for round in ["1", "2", "3"] {
        common::rocksapp(&["queue", "src", round], d);
        let (out, text) = backup_of_src(d, &[], "ar", "archive");
        assert!(
            out.status.success()
                && text.contains("Backup (incremental)")
                && !text.contains("diff-based"),
            "round {round}: {text}"
        );
    }
    let expected = app_dump(d, "src");
    assert_eq!(expected["default"].as_object().unwrap().len(), 12_000);
    assert_restores(d, "ar", "copy", &expected);
}

/// A live backup notices an ingested file, which moves no sequence number (the application
/// writes nothing else): while it waits (an archive follows the ingest, also when the file was
/// compacted into others before the backup looked), and when it is stopped right after one
/// (its last run takes it). The restores are the application's
/// database.
#[test]
fn a_live_backup_takes_keys_ingested_without_a_sequence_number() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
    let live = |dest: &str, interval: &str| {
        Command::new(common::bin())
            .args(["backup", "--source", "rocksdb:src", "--to", dest])
            .args(["--format", "archive", "--live", "--interval", interval])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let archives = |dest: &str| {
        std::fs::read_dir(d.join(dest)).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with("tidemark-") && name.ends_with(".zip")
                })
                .count()
        })
    };
    let restored_equal =
        |dest: &str| assert_restores(d, dest, &format!("copy-{dest}"), &app_dump(d, "src"));
    // While it waits: the ingest alone brings the next run.
    let child = live("bk", "0.2");
    common::wait_for("the first archive", || archives("bk") == 1);
    common::rocksapp(&["ingest", "src", "0", "100", "--only"], d);
    common::wait_for("an archive after the ingest", || archives("bk") == 2);
    let out = common::stop_cleanly(child);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("was ingested with IngestExternalFile"),
        "{said}"
    );
    restored_equal("bk");
    // Stopped right after an ingest: the last run takes it.
    let child = live("bk2", "60");
    common::wait_for("the first archive", || archives("bk2") == 1);
    common::rocksapp(&["ingest", "src", "1000", "100", "--only"], d);
    common::stop_cleanly(child);
    assert_eq!(archives("bk2"), 2);
    restored_equal("bk2");
    // While it waits, an ingested file compacted into others before it looks: the MANIFEST's
    // edits bring the next run.
    let child = live("bk3", "0.2");
    common::wait_for("the first archive", || archives("bk3") == 1);
    common::rocksapp(&["ingest-compact", "src", "2000", "100", "--no-put"], d);
    common::wait_for("an archive after the ingest and compaction", || {
        archives("bk3") == 2
    });
    let out = common::stop_cleanly(child);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("compacted into another file"), "{said}");
    restored_equal("bk3");
    // The same, and the application reopens the database before the run: the MANIFEST that
    // held the ingest is gone by then (a new one is written at each open). What the wait read
    // in it is handed to the run (before, the run read the WAL alone and lost the keys), and
    // the run itself finds the compaction's output at sequence number 0 in the new MANIFEST.
    let log = d.join("bk4.log");
    let child = Command::new(common::bin())
        .args(["backup", "--source", "rocksdb:src", "--to", "bk4", "-vv"])
        .args(["--format", "archive", "--live", "--interval", "60"])
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    common::wait_for("the first archive", || archives("bk4") == 1);
    common::rocksapp(&["ingest-compact", "src", "3000", "100", "--no-put"], d);
    common::wait_for("the wait to read the MANIFEST", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("changes outside the WAL while waiting")
    });
    common::rocksapp(&["write", "src", "5000", "10", "--keep-wal"], d);
    let out = common::stop_cleanly(child);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("sequence number 0"), "{said}");
    assert_eq!(archives("bk4"), 2);
    restored_equal("bk4");
}

/// Copies the application's database `src` aside to `copy` (`cp -a`, as a disk snapshot
/// keeps it).
fn copy_source(d: &Path) {
    let copy = Command::new("cp")
        .args(["-a", "src", "copy"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(copy.success());
}

/// Puts the copy [`copy_source`] made back in place of `src`.
fn put_copy_back(d: &Path) {
    std::fs::remove_dir_all(d.join("src")).unwrap();
    std::fs::rename(d.join("copy"), d.join("src")).unwrap();
}

/// Backs `src` up to the archive chain `ar`, which must be a change-log incremental.
fn reads_the_wal(d: &Path) {
    let out = common::backup(d, "rocksdb:src", "ar", "archive");
    assert!(
        out.contains("(incremental)") && !out.contains("diff-based"),
        "{out}"
    );
}

/// Backs `src` up to `ar`, which must find the rollback and compare every record.
fn notices_the_rollback(d: &Path) {
    let out = common::backup(d, "rocksdb:src", "ar", "archive");
    assert!(
        out.contains("diff-based") && out.contains("went back to an older state"),
        "{out}"
    );
}

/// A database put back from an older copy of its directory (as a disk snapshot or `cp -a`
/// does) and written since hands the same sequence numbers out again, to other batches. Once
/// the writes pass the previous backup's checkpoint, an incremental read from the WAL would
/// keep keys that no longer exist and miss others. The next backup reads the previous one's
/// last batch again, finds another one, says so and compares every record; the restore is
/// what the application (its own, older RocksDB) reads.
#[test]
fn a_database_put_back_from_an_older_copy_is_noticed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
    common::backup(d, "rocksdb:src", "ar", "archive");
    common::rocksapp(&["write", "src", "100", "10", "--keep-wal"], d);
    assert!(common::backup(d, "rocksdb:src", "ar", "archive").contains("(incremental)"));
    copy_source(d);
    common::rocksapp(&["write", "src", "110", "50", "--keep-wal"], d);
    reads_the_wal(d);
    // A run with nothing new keeps the batch it found again.
    reads_the_wal(d);
    put_copy_back(d);
    // Exactly as many writes as the copy missed: the sequence number is the backup's again.
    common::rocksapp(&["write", "src", "1000", "50", "--keep-wal"], d);
    notices_the_rollback(d);
    ok(&["restore", "--from", "ar", "--to", "rocksdb:copy-ar"], d);
    assert_eq!(app_dump(d, "copy-ar"), app_dump(d, "src"));
    // The chain goes on from the diff-based run: the WAL is read again.
    common::rocksapp(&["write", "src", "2000", "1", "--keep-wal"], d);
    reads_the_wal(d);
    ok(&["restore", "--from", "ar", "--to", "rocksdb:copy-ar2"], d);
    assert_eq!(app_dump(d, "copy-ar2"), app_dump(d, "src"));
}

/// The same after a full backup, which reads no WAL: it looks up the batch at its checkpoint
/// in the (small) WAL, so a copy older than the full put back and written past it is noticed
/// by the first incremental.
#[test]
fn a_copy_older_than_a_full_backup_put_back_is_noticed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "100", "--keep-wal"], d);
    copy_source(d);
    common::rocksapp(&["write", "src", "100", "50", "--keep-wal"], d);
    assert!(common::backup(d, "rocksdb:src", "ar", "archive").contains("(full)"));
    put_copy_back(d);
    common::rocksapp(&["write", "src", "1000", "80", "--keep-wal"], d);
    notices_the_rollback(d);
    ok(&["restore", "--from", "ar", "--to", "rocksdb:copy-ar"], d);
    assert_eq!(app_dump(d, "copy-ar"), app_dump(d, "src"));
}

/// A wide-column entity (`PutEntity`) cannot be read whole through RocksDB's C API, which gives
/// only its default column: an incremental that met one in the WAL used to fall back to a diff,
/// which kept the default column and dropped the others without a word. The backup now stops,
/// names the record and why, and adds nothing to the chain, which verify still calls intact.
#[test]
fn a_wide_column_entity_stops_the_backup_plainly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "20", "--keep-wal"], d);
    common::backup(d, "rocksdb:src", "ar", "archive");
    common::rocksapp(&["entity", "src"], d);
    let err = common::refused(
        Command::new(common::bin()).current_dir(d),
        &["backup", "--source", "rocksdb:src", "--to", "ar"],
    );
    assert!(
        err.contains("wide-column entity (PutEntity)") && err.contains("lose its other columns"),
        "{err}"
    );
    let archives = ok(&["list", "ar", "--json"], d)
        .lines()
        .filter(|l| l.contains("\"type\":\"archive\""))
        .count();
    assert_eq!(archives, 1);
    ok(&["verify", "ar"], d);
}

/// A backup of a RocksDB source killed mid-run (`kill -9`: no destructor runs) leaves its
/// secondary instance's temporary directory; the next run removes it, and never the directory
/// of a run that is still going.
#[test]
fn a_killed_run_leaves_no_secondary_directory_behind_for_long() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    common::rocksapp(&["write", "src", "0", "100"], d);
    let secondaries = || -> Vec<String> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("tidemark-rocksdb-secondary-"))
            .collect()
    };
    for n in 1..=3 {
        let out = Command::new(common::bin())
            .args([
                "backup",
                "--source",
                "rocksdb:src",
                "--to",
                &format!("bk{n}"),
            ])
            .env("TMPDIR", &tmp)
            // The fourth durable step: a new destination's first three come before the view,
            // which opens the secondary instance (it is opened on first use).
            .env("TIDEMARK_CRASH_AT", "4")
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the crash point was not reached");
        // Each killed run removed its predecessor's directory and left its own.
        assert_eq!(secondaries().len(), 1, "run {n}: {:?}", secondaries());
    }
    // A run that is still going (an application holding the source open does not matter: the
    // directory is the run's own) keeps its directory while another run starts and ends.
    let live = Command::new(common::bin())
        .args(["backup", "--source", "rocksdb:src", "--to", "lv"])
        .args(["--format", "archive", "--live", "--interval", "0.2"])
        .env("TMPDIR", &tmp)
        .current_dir(d)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_an_archive(&d.join("lv"));
    let live_dirs = secondaries();
    assert!(
        !live_dirs.is_empty(),
        "the live run has no secondary directory"
    );
    common::succeeds(
        Command::new(common::bin())
            .env("TMPDIR", &tmp)
            .current_dir(d),
        &["backup", "--source", "rocksdb:src", "--to", "bk"],
    );
    assert_eq!(
        secondaries(),
        live_dirs,
        "the live run's directory was removed"
    );
    common::stop_cleanly(live);
    assert!(secondaries().is_empty(), "left: {:?}", secondaries());
}

/// A RocksDB of 300 SST files backed up under a soft limit of 128 open files: the CLI raises
/// its soft limit to the hard one and the backup restores equal to the source (it failed with
/// RocksDB's "Too many open files" on one SST file, since the secondary keeps every one open).
/// With a hard limit of 128 too it is refused before anything is written, naming the count and
/// the limit to raise.
#[test]
fn a_database_of_more_sst_files_than_the_soft_open_files_limit() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_disable_auto_compactions(true);
        let db = DB::open(&opts, d.join("app")).unwrap();
        for f in 0..300u32 {
            for i in 0..10u32 {
                db.put(format!("k{f:03}-{i}"), b"v").unwrap();
            }
            db.flush().unwrap();
        }
    }
    let ssts = common::files_ending(&d.join("app"), ".sst");
    assert!(ssts >= 300, "{ssts} SST files");
    let backup = |ulimit: &str, dest: &str| {
        Command::new("bash")
            .arg("-c")
            .arg(format!(
                "ulimit {ulimit} 128 && exec \"$0\" backup --source rocksdb:app --to {dest} \
                 --format archive"
            ))
            .arg(common::bin())
            .current_dir(d)
            .output()
            .unwrap()
    };
    let out = backup("-Sn", "bk");
    assert!(out.status.success(), "{out:?}");
    ok(&["restore", "--from", "bk", "--to", "rocksdb:copy"], d);
    assert_eq!(content(&d.join("copy")), content(&d.join("app")));
    let out = backup("-n", "refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("holds {ssts} SST files")) && err.contains("ulimit -n"),
        "{err}"
    );
    assert!(!d.join("refused").exists());
}

/// `tidemark -vv backup … --format archive` of `src` to `ar`, which must succeed: its stdout
/// and stderr as one text.
fn traced_backup(d: &Path) -> String {
    let (out, text) = backup_of_src(d, &["-vv"], "ar", "archive");
    assert!(out.status.success(), "{text}");
    text
}

/// An incremental reads the WAL files and the MANIFEST directly, without opening RocksDB: after
/// the application (rocksdict, its own older RocksDB) wrote, and beside an application that
/// holds the database and writes a batch larger than a WAL block, creates a column family and
/// flushes between backups. Where the WAL holds what the files alone cannot give (a range
/// deletion), the run reads through RocksDB instead and, as before, compares every record.
/// Every restore is what the application reads (the last one read with this process's RocksDB).
#[test]
fn incrementals_read_the_wal_files_without_opening_rocksdb() {
    const DIRECT: &str = "reading the WAL files directly";
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::rocksapp(&["write", "src", "0", "200", "--keep-wal"], d);
    let out = traced_backup(d);
    assert!(
        out.contains("Backup (full)") && !out.contains(DIRECT),
        "{out}"
    );
    common::rocksapp(&["write", "src", "150", "100", "--keep-wal"], d);
    let out = traced_backup(d);
    assert!(
        out.contains(DIRECT) && out.contains("Backup (incremental) of") && !out.contains("diff"),
        "{out}"
    );
    assert_restores(d, "ar", "copy1", &app_dump(d, "src"));

    // Beside the application, which holds the database.
    let db = app_db(&d.join("src"));
    let big = vec![0x5a_u8; 100_000];
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..5u32 {
        batch.put(format!("big{i}"), &big);
    }
    db.write(batch).unwrap();
    cf(&db, "later");
    db.put_cf(&db.cf_handle("later").unwrap(), b"l1", b"x")
        .unwrap();
    db.flush().unwrap();
    db.put(b"after-flush", b"y").unwrap();
    db.delete(b"k000151").unwrap();
    db.flush_wal(true).unwrap();
    let out = traced_backup(d);
    assert!(
        out.contains(DIRECT)
            && out.contains("Backup (incremental) of")
            && out.contains("7 records written, 1 deleted")
            && !out.contains("diff"),
        "{out}"
    );
    db.delete_range_cf(&db.cf_handle("default").unwrap(), b"k000010", b"k000020")
        .unwrap();
    db.put(b"after-range", b"z").unwrap();
    db.flush_wal(true).unwrap();
    let out = traced_backup(d);
    assert!(
        out.contains(DIRECT)
            && out.contains("the log-only view cannot take the incremental")
            && out.contains("diff-based"),
        "{out}"
    );
    drop(db);
    // Read with this process's RocksDB: the flush above wrote a table format newer than the
    // application's.
    ok(&["restore", "--from", "ar", "--to", "rocksdb:copy2"], d);
    assert_eq!(content(&d.join("copy2")), content(&d.join("src")));
    ok(&["verify", "ar"], d);
}
