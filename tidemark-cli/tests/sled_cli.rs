//! Migration off sled: `tidemark backup --source sled:A` then restore into RocksDB or SQLite.
#![cfg(all(feature = "sled", feature = "rocksdb", feature = "sqlite"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::kv::{sled_content, Content};
use common::{fails, ok};

use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn sled_migrates_to_rocksdb_and_sqlite() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    {
        // An application that uses plain sled, never the tracked handle.
        let db = sled::open(d.join("app")).unwrap();
        let users = db.open_tree("users").unwrap();
        for i in 0..200u32 {
            users
                .insert(
                    format!("user:{i:03}"),
                    format!("{{\"n\":{i}}}").into_bytes(),
                )
                .unwrap();
        }
        db.insert(b"\xffbinary", b"\x00\x01".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let out = ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    assert!(
        out.contains("Backup (full)") && out.contains("201 in backup"),
        "{out}"
    );
    {
        let db = sled::open(d.join("app")).unwrap();
        let users = db.open_tree("users").unwrap();
        users.insert("user:000", b"{\"n\":-1}".to_vec()).unwrap();
        users.remove("user:001").unwrap();
        db.flush().unwrap();
    }
    let out = ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    assert!(
        out.contains("Backup (incremental, diff-based)")
            && out.contains("1 records written, 1 deleted"),
        "{out}"
    );
    let want = sled_content(&d.join("app"));

    ok(&["restore", "--from", "bk", "--to", "sled:copy"], d);
    assert_eq!(sled_content(&d.join("copy")), want);

    ok(&["restore", "--from", "bk", "--to", "rocksdb:migrated"], d);
    let db = rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        d.join("migrated"),
        ["default", "users", "__sled__default"],
    )
    .unwrap();
    let mut got = Content::new();
    for cf_name in ["users", "__sled__default"] {
        let cf = db.cf_handle(cf_name).unwrap();
        for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.unwrap();
            got.insert((cf_name.to_string(), k.to_vec()), v.to_vec());
        }
    }
    assert_eq!(
        got, want,
        "every sled tree is a column family with the same keys and values"
    );

    ok(
        &["restore", "--from", "bk", "--to", "sqlite:migrated.db"],
        d,
    );
    let conn = rusqlite::Connection::open(d.join("migrated.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 199);
    let v: i64 = conn
        .query_row(
            "SELECT json_extract(value, '$.n') FROM users WHERE key = 'user:000'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, -1);
}

/// A restore replays an archive chain newest first: a tree dropped (incremental without it)
/// and created again (incremental with it) must not get back the records of its first life
/// from the full archive.
#[test]
fn a_tree_dropped_and_created_again_keeps_nothing_from_before_the_drop() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let backup = |want: &str| {
        let out = common::backup(d, "sled:app", "ar", "archive");
        assert!(out.contains(want), "{out}");
    };
    {
        let db = sled::open(d.join("app")).unwrap();
        let users = db.open_tree("users").unwrap();
        for i in 0..50u32 {
            users
                .insert(format!("user:{i:03}"), b"old".to_vec())
                .unwrap();
        }
        db.open_tree("keep")
            .unwrap()
            .insert("k", b"1".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    backup("Archive (full)");
    {
        let db = sled::open(d.join("app")).unwrap();
        db.drop_tree("users").unwrap();
        db.open_tree("keep")
            .unwrap()
            .insert("k", b"2".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    backup("Archive (incremental)");
    {
        let db = sled::open(d.join("app")).unwrap();
        db.open_tree("users")
            .unwrap()
            .insert("user:007", b"new".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    backup("Archive (incremental)");
    ok(&["restore", "--from", "ar", "--to", "sled:back"], d);
    let got = sled_content(&d.join("back"));
    assert_eq!(got, sled_content(&d.join("app")));
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn a_sled_database_open_in_another_process_is_refused_plainly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // This test process is the other process.
    let db = sled::open(d.join("app")).unwrap();
    db.open_tree("users").unwrap().insert(b"k", b"v").unwrap();
    db.flush().unwrap();
    let started = std::time::Instant::now();
    let err = fails(&["backup", "--source", "sled:app", "--to", "bk"], d);
    assert!(
        err.contains("open in another process") && err.contains("app"),
        "{err}"
    );
    // The wait for a lock released late is bounded.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(!d.join("bk").join(".tidemark").exists(), "{err}");
    drop(db);
}

/// A plain sled database (never tracked) is not written when it is backed up, full or
/// incremental, folder or archive: every file's bytes are the same after the backup (sled
/// itself rewrites its snapshot file whenever it opens a database, so the backup reads a
/// copy); the application's plain sled opens it afterwards and sees exactly its own trees.
/// `--live` on a sled database is refused at once, plain or tracked, naming the way to follow
/// one (from inside its application): sled allows one process at a time, and the live backup
/// held the database's lock for its whole run, so the application could not open it (and the
/// copy it read never changed). The database is left unchanged and unlocked.
#[test]
fn a_live_backup_of_sled_is_refused_and_holds_no_lock() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    {
        let db = sled::open(d.join("app")).unwrap();
        db.insert(b"k", b"v".to_vec()).unwrap();
        db.flush().unwrap();
    }
    common::wait_for_sled_to_let_go(&d.join("app"));
    let before = sled_content(&d.join("app"));
    common::wait_for_sled_to_let_go(&d.join("app"));
    let err = fails(
        &["backup", "--source", "sled:app", "--to", "bk", "--live"],
        d,
    );
    assert!(err.contains("TrackedDb") && err.contains("lock"), "{err}");
    assert!(!d.join("bk").exists(), "nothing written: {err}");
    // The application opens its database at once.
    let db = sled::open(d.join("app")).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(db);
    common::wait_for_sled_to_let_go(&d.join("app"));
    assert_eq!(sled_content(&d.join("app")), before);
}

#[test]
fn backups_add_nothing_to_a_plain_sled_database() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let trees = |path: &Path| -> Vec<Vec<u8>> {
        let db = sled::open(path).unwrap();
        let mut names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
        names.sort();
        names
    };
    let mut content = Default::default();
    for round in 0..2u32 {
        // The application writes and closes the database; the backups come next, before
        // anything else opens it.
        {
            let db = sled::open(d.join("app")).unwrap();
            for i in 0..50u32 {
                db.open_tree("users")
                    .unwrap()
                    .insert(i.to_be_bytes(), vec![(i + round) as u8; 8])
                    .unwrap();
            }
            db.flush().unwrap();
        }
        let before = common::snapshot_files(&d.join("app"));
        for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
            let out = common::backup(d, "sled:app", dest, format);
            assert!(out.contains("Backup ("), "{out}");
            common::assert_unchanged(
                &d.join("app"),
                &before,
                &format!("round {round} {format} backup"),
            );
        }
        assert_eq!(
            trees(&d.join("app")),
            vec![b"__sled__default".to_vec(), b"users".to_vec()],
            "round {round}: trees"
        );
        content = sled_content(&d.join("app"));
    }
    for dest in ["bk", "ar"] {
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sled:copy-{dest}"),
            ],
            d,
        );
        assert_eq!(sled_content(&d.join(format!("copy-{dest}"))), content);
    }
}

/// Tree names that RocksDB or SQLite cannot hold (NUL, bytes that are not UTF-8, SQLite's
/// reserved `sqlite_` prefix) are escaped on the way in (`docs/FORMAT.md` §2.1) and come back
/// byte for byte: sled → RocksDB → sled and sled → SQLite → sled.
#[test]
fn hostile_tree_names_round_trip_through_every_store() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let names: Vec<Vec<u8>> = vec![
        vec![0, 255, 1],
        b"a\0b".to_vec(),
        b"sqlite_master2".to_vec(),
        b"~tm~00".to_vec(),
        "caf\u{e9}".as_bytes().to_vec(),
        b"plain".to_vec(),
    ];
    type Trees = BTreeMap<Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>>;
    let raw_trees = |path: &Path| -> Trees {
        let db = sled::open(path).unwrap();
        db.tree_names()
            .into_iter()
            .filter(|n| !n.starts_with(b"__tidemark_") && n.as_ref() != b"__sled__default")
            .map(|n| {
                let tree = db.open_tree(&n).unwrap();
                let kv = tree
                    .iter()
                    .map(|r| {
                        let (k, v) = r.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .collect();
                (n.to_vec(), kv)
            })
            .collect()
    };
    {
        let db = sled::open(d.join("app")).unwrap();
        for (i, name) in names.iter().enumerate() {
            db.open_tree(name)
                .unwrap()
                .insert([i as u8, 0xff], vec![i as u8; 3])
                .unwrap();
        }
        db.flush().unwrap();
    }
    let want = raw_trees(&d.join("app"));
    assert_eq!(want.len(), names.len());
    ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    for via in ["rocksdb", "sqlite"] {
        let mid = if via == "sqlite" { "mid.db" } else { "mid" };
        let mid = format!("{via}:{via}-{mid}");
        ok(&["restore", "--from", "bk", "--to", &mid], d);
        let bk2 = format!("bk-{via}");
        ok(&["backup", "--source", &mid, "--to", &bk2], d);
        let back = format!("back-{via}");
        ok(
            &["restore", "--from", &bk2, "--to", &format!("sled:{back}")],
            d,
        );
        let mut got = raw_trees(&d.join(&back));
        // RocksDB always has a `default` column family, and sled's default tree is called
        // `__sled__default`: the round trip through RocksDB adds an empty `default` tree
        // (FORMAT.md §2 maps names one to one).
        if via == "rocksdb" {
            assert_eq!(got.remove(b"default".as_slice()), Some(vec![]));
        }
        if via == "rocksdb" {
            assert_eq!(got, want, "via {via}");
        } else {
            // SQLite holds keys and values as TEXT or BLOB: the bytes are the same, the names
            // must be.
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "via {via}"
            );
        }
    }
}

/// `restore --force` refuses a sled target that another process (here: this test, as the
/// application) has open, and leaves it as it was.
#[test]
fn restore_force_refuses_a_sled_target_in_use() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    {
        let db = sled::open(d.join("app")).unwrap();
        db.insert(b"k", b"v".to_vec()).unwrap();
        db.flush().unwrap();
    }
    ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    let held = sled::open(d.join("target")).unwrap();
    held.insert(b"mine", b"1".to_vec()).unwrap();
    held.flush().unwrap();
    let e = fails(
        &["restore", "--from", "bk", "--to", "sled:target", "--force"],
        d,
    );
    assert!(
        e.contains("open in another process") && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    assert_eq!(held.get(b"mine").unwrap().as_deref(), Some(&b"1"[..]));
}

/// A different plain sled database put at the same path is a different store: the next backup
/// is full and says why (sled has no identity; tidemark uses its `db` file's inode).
#[test]
fn a_different_plain_sled_database_at_the_same_path_starts_a_full_backup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (name, n) in [("a", 30u32), ("b", 10)] {
        let db = sled::open(d.join(name)).unwrap();
        for i in 0..n {
            db.insert(i.to_be_bytes(), name.as_bytes().to_vec())
                .unwrap();
        }
        db.flush().unwrap();
    }
    for name in ["a", "b"] {
        common::wait_for_sled_to_let_go(&d.join(name));
    }
    std::fs::rename(d.join("a"), d.join("app")).unwrap();
    ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    let out = ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    assert!(
        out.contains("Backup (incremental"),
        "the same database: {out}"
    );
    std::fs::rename(d.join("app"), d.join("old")).unwrap();
    std::fs::rename(d.join("b"), d.join("app")).unwrap();
    let out = ok(&["backup", "--source", "sled:app", "--to", "bk"], d);
    assert!(
        out.contains("Backup (full)") && out.contains("identity changed"),
        "{out}"
    );
    ok(&["restore", "--from", "bk", "--to", "sled:copy"], d);
    assert_eq!(sled_content(&d.join("copy")), sled_content(&d.join("app")));
}

/// A database its application writes through `TrackedDb` carries the marker file that
/// `TrackedDb` puts there, and a backup opens it in place at once: with no usable temporary
/// directory (where a plain database's copy goes) the backup still succeeds, and restores
/// equal to the source, where a plain database's backup stops. A tracked database from before
/// the marker (removed here) is backed up through the copy, which finds it tracked, and gets
/// the marker then.
#[test]
fn a_tracked_sled_database_is_opened_in_place_without_a_copy() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let marker = d.join("app").join(backend_sled::tracked::TRACKED_MARKER);
    {
        let db = backend_sled::TrackedDb::open(&d.join("app")).unwrap();
        for i in 0..100u32 {
            db.insert("users", &i.to_be_bytes(), &[i as u8; 16])
                .unwrap();
        }
    }
    assert!(
        marker.is_file(),
        "TrackedDb puts its marker in the database's directory"
    );
    {
        let db = sled::open(d.join("plain")).unwrap();
        db.open_tree("users").unwrap().insert(b"k", b"v").unwrap();
        db.flush().unwrap();
    }
    let no_tmp = d.join("no-such-directory");
    let backup = |source: &str, dest: &str, tmpdir: &Path| {
        std::process::Command::new(common::bin())
            .current_dir(d)
            .env("TMPDIR", tmpdir)
            .args([
                "backup", "--source", source, "--to", dest, "--format", "folder",
            ])
            .output()
            .unwrap()
    };
    // A backup that must succeed; its stderr.
    let backed_up = |source: &str, dest: &str, tmpdir: &Path| {
        let out = backup(source, dest, tmpdir);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    backed_up("sled:app", "bk", &no_tmp);
    let plain = backup("sled:plain", "pr", &no_tmp);
    assert!(
        !plain.status.success(),
        "a plain database is read from a copy"
    );
    ok(&["restore", "--from", "bk", "--to", "sled:copy"], d);
    assert_eq!(sled_content(&d.join("copy")), sled_content(&d.join("app")));
    // A tracked database without the marker (written before it was kept).
    std::fs::remove_file(&marker).unwrap();
    backed_up("sled:app", "bk", &std::env::temp_dir());
    assert!(
        marker.is_file(),
        "the backup that found it tracked put the marker back"
    );
    // The marker outlives the tracking: tidemark's trees dropped with plain sled. The backup
    // reads the database as an untracked one and does not start tracking it again.
    {
        let db = sled::open(d.join("app")).unwrap();
        for tree in [
            backend_sled::tracked::LOG_TREE,
            backend_sled::tracked::META_TREE,
        ] {
            assert!(db.drop_tree(tree).unwrap(), "{tree} was there");
        }
        db.flush().unwrap();
    }
    let err = backed_up("sled:app", "bk2", &std::env::temp_dir());
    assert!(err.contains("read as an untracked database"), "{err}");
    let names: Vec<Vec<u8>> = sled::open(d.join("app"))
        .unwrap()
        .tree_names()
        .iter()
        .map(|n| n.to_vec())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(b"__tidemark_")),
        "the backup started tracking a database whose tracking was dropped: {names:?}"
    );
    ok(&["restore", "--from", "bk2", "--to", "sled:copy2"], d);
    assert_eq!(sled_content(&d.join("copy2")), sled_content(&d.join("app")));
}
