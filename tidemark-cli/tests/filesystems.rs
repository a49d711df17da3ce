//! Hostile file systems, on real mounts (tmpfs; the suite runs as root, as `.ci/run` does):
//! a destination that fills up (ENOSPC), a read-only destination, read-only sources. Every
//! failure is a plain error with a non-zero exit, and what was there before stays valid.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, fails, ok, sql};

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of `size` mounted at a new directory; unmounted when dropped.
struct Mount {
    dir: PathBuf,
}

impl Mount {
    fn new(parent: &Path, name: &str, size: &str) -> Mount {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (scripts/test.sh and .ci/run run as root)"
        );
        Mount { dir }
    }

    fn read_only(&self) {
        let st = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn rows(d: &Path, db: &str, n: u32, size: u32) {
    sql(
        &d.join(db),
        &format!(
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
             INSERT OR REPLACE INTO t SELECT i, randomblob({size}) FROM n;"
        ),
    );
}

fn assert_plain(err: &str) {
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("tidemark: error:"), "{err}");
}

#[test]
fn a_full_destination_fails_plainly_and_keeps_the_last_backup() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rows(d, "src.db", 20, 200);
    ok(&["track", "--source", "sqlite:src.db"], d);
    let m = Mount::new(d, "small", "600k");
    for format in ["folder", "archive"] {
        let dest = m.dir.join(format);
        let dest = dest.to_str().unwrap();
        common::backup(d, "sqlite:src.db", dest, format);
        let first = dump(&d.join("src.db"));
        // Far more than the file system holds.
        rows(d, "src.db", 400, 4000);
        for full in [false, true] {
            let mut args = vec![
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                dest,
                "--format",
                format,
            ];
            if full {
                args.push("--full");
            }
            let err = fails(&args, d);
            assert_plain(&err);
            assert!(err.contains("No space left on device"), "{err}");
            // The destination still holds the last backup, whole.
            ok(&["verify", dest], d);
            let r = d.join(format!("r-{format}-{full}.db"));
            ok(
                &[
                    "restore",
                    "--from",
                    dest,
                    "--to",
                    &format!("sqlite:{}", r.display()),
                ],
                d,
            );
            common::assert_same_dump(&dump(&r), &first, "the last backup");
        }
        // Space again (the rows shrink): the next backup completes.
        sql(
            &d.join("src.db"),
            "DELETE FROM t WHERE id > 20; UPDATE t SET body = randomblob(200);",
        );
        common::backup(d, "sqlite:src.db", dest, format);
        ok(&["verify", dest], d);
        let r = d.join(format!("r-{format}-after.db"));
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sqlite:{}", r.display()),
            ],
            d,
        );
        common::assert_same_dump(&dump(&r), &dump(&d.join("src.db")), "after space returned");
        // Leave room for the next format.
        std::fs::remove_dir_all(m.dir.join(format)).unwrap();
        rows(d, "src.db", 20, 200);
        sql(&d.join("src.db"), "DELETE FROM t WHERE id > 20;");
    }
}

#[test]
fn a_restore_that_runs_out_of_space_leaves_the_target_and_no_debris() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rows(d, "src.db", 300, 4000);
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    let m = Mount::new(d, "small", "800k");
    let target = m.dir.join("app.db");
    sql(
        &target,
        "CREATE TABLE keep(x); INSERT INTO keep VALUES ('old');",
    );
    let old = dump(&target);
    let err = fails(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            &format!("sqlite:{}", target.display()),
            "--force",
        ],
        d,
    );
    assert_plain(&err);
    assert!(err.contains("full") || err.contains("No space"), "{err}");
    assert_eq!(dump(&target), old, "the target is untouched");
    let left: Vec<_> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["app.db".to_string()], "no temporary files");
}

#[test]
fn a_read_only_destination_is_read_and_refuses_writes_plainly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rows(d, "src.db", 30, 100);
    let m = Mount::new(d, "ro", "4m");
    for format in ["folder", "archive"] {
        let dest = m.dir.join(format);
        common::backup(d, "sqlite:src.db", dest.to_str().unwrap(), format);
    }
    m.read_only();
    for format in ["folder", "archive"] {
        let dest = m.dir.join(format);
        let dest = dest.to_str().unwrap();
        ok(&["verify", dest], d);
        let r = d.join(format!("r-{format}.db"));
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sqlite:{}", r.display()),
            ],
            d,
        );
        common::assert_same_dump(&dump(&r), &dump(&d.join("src.db")), format);
        let err = fails(
            &[
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                dest,
                "--format",
                format,
            ],
            d,
        );
        assert_plain(&err);
        assert!(err.contains("Read-only file system"), "{err}");
    }
}

#[test]
fn read_only_sources_are_backed_up_or_refused_plainly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = Mount::new(d, "ro", "8m");
    // A rollback-journal SQLite database and a WAL one, cleanly closed.
    rows(&m.dir, "journal.db", 30, 100);
    sql(
        &m.dir.join("wal.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    #[cfg(feature = "rocksdb")]
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, m.dir.join("rocks")).unwrap();
        for i in 0..50u32 {
            db.put(i.to_be_bytes(), b"v").unwrap();
        }
    }
    m.read_only();
    let src = format!("sqlite:{}", m.dir.join("journal.db").display());
    ok(&["backup", "--source", &src, "--to", "bk-journal"], d);
    ok(
        &[
            "restore",
            "--from",
            "bk-journal",
            "--to",
            "sqlite:journal-copy.db",
        ],
        d,
    );
    common::assert_same_dump(
        &dump(&d.join("journal-copy.db")),
        &dump(&m.dir.join("journal.db")),
        "journal",
    );
    // A WAL database is read through its -shm, which SQLite cannot make in a read-only
    // directory (the sqlite3 shell refuses it too): read from a copy, with a warning.
    let src = format!("sqlite:{}", m.dir.join("wal.db").display());
    let out = common::tidemark(&["backup", "--source", &src, "--to", "bk-wal"], d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("a directory the backup cannot write"), "{err}");
    ok(
        &["restore", "--from", "bk-wal", "--to", "sqlite:wal-copy.db"],
        d,
    );
    let restored = rusqlite::Connection::open(d.join("wal-copy.db")).unwrap();
    let x: i64 = restored
        .query_row("SELECT x FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 1);
    #[cfg(feature = "rocksdb")]
    {
        // RocksDB sources are read through a secondary instance, which writes only its own
        // temporary directory: a read-only database backs up.
        let src = format!("rocksdb:{}", m.dir.join("rocks").display());
        let out = ok(&["backup", "--source", &src, "--to", "bk-rocks"], d);
        assert!(out.contains("50 in backup"), "{out}");
    }
}

/// Read-only views (bind mounts) of a WAL database whose committed rows are still in its -wal
/// file: while its application has it open (read through the application's -shm index), as a
/// crashed application left it (its -wal and -shm, which no application keeps up: SQLite's
/// read-only connection then reads the -wal itself), and after the application closed it (no
/// index, which SQLite cannot make there: read from a copy). Every committed row is backed
/// up, and not a byte of the database's files changes.
#[test]
fn wal_databases_on_read_only_mounts_are_backed_up_with_their_wal() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mount = |args: &[&str]| {
        assert!(Command::new("mount").args(args).status().unwrap().success());
    };
    // `src` seen read-only at `ro`: unmounted when the returned guard is dropped.
    let read_only_view = |src: &Path, ro: &Path| {
        std::fs::create_dir(ro).unwrap();
        mount(&["--bind", src.to_str().unwrap(), ro.to_str().unwrap()]);
        let guard = Mount {
            dir: ro.to_path_buf(),
        };
        mount(&["-o", "remount,ro,bind", ro.to_str().unwrap()]);
        guard
    };
    // Backs up `db` (under a read-only view) to `dest` and checks the restore holds `rows`
    // rows; the stderr.
    let back_up = |db: &Path, dest: &str, rows: i64| -> String {
        let source = format!("sqlite:{}", db.display());
        let out = common::tidemark(&["backup", "--source", &source, "--to", dest], d);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{dest}: {err}");
        let copy = format!("sqlite:{dest}.db");
        ok(&["restore", "--from", dest, "--to", &copy], d);
        let restored = rusqlite::Connection::open(d.join(format!("{dest}.db"))).unwrap();
        let n: i64 = restored
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, rows, "{dest}");
        err
    };
    let src = d.join("src");
    std::fs::create_dir(&src).unwrap();
    let app = rusqlite::Connection::open(src.join("app.db")).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    for i in 0..300 {
        app.execute("INSERT INTO t VALUES (?1, ?2)", (i, format!("v{i}")))
            .unwrap();
    }
    assert!(std::fs::metadata(src.join("app.db-wal")).unwrap().len() > 0);
    // A crashed application's files: copied while it has the database open.
    let crashed = d.join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    for name in ["app.db", "app.db-wal", "app.db-shm"] {
        std::fs::copy(src.join(name), crashed.join(name)).unwrap();
    }
    let (ro, ro_crashed) = (d.join("ro"), d.join("ro-crashed"));
    let _views = (
        read_only_view(&src, &ro),
        read_only_view(&crashed, &ro_crashed),
    );
    for (files, db, dest) in [
        (&src, ro.join("app.db"), "bk-open"),
        (&crashed, ro_crashed.join("app.db"), "bk-crashed"),
    ] {
        let before = common::snapshot_files(files);
        back_up(&db, dest, 300);
        common::assert_unchanged(files, &before, dest);
    }
    drop(app);
    assert!(!src.join("app.db-wal").exists(), "the application's close");
    let before = common::snapshot_files(&src);
    let err = back_up(&ro.join("app.db"), "bk-closed", 300);
    assert!(err.contains("a directory the backup cannot write"), "{err}");
    common::assert_unchanged(&src, &before, "closed");
    // A live backup cannot follow the database through a copy: refused plainly (and not left
    // running, should it start).
    let source = format!("sqlite:{}", ro.join("app.db").display());
    let mut live = Command::new(common::bin())
        .current_dir(d)
        .args(["backup", "--source", &source, "--to", "live", "--live"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while live.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            live.kill().unwrap();
            panic!("the live backup of a database read through a copy started");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = live.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("tidemark: error:") && err.contains("where its directory can be written"),
        "{err}"
    );
}

/// A database read through a copy in the temporary directory (SQLite with a hot journal, plain
/// sled) whose copy does not fit there: a plain error naming the copy and `TMPDIR` (it named
/// the database's own file, as if its disk were full), nothing left in the temporary
/// directory, and the source unchanged.
#[test]
fn a_full_temporary_directory_is_named_as_such() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rows(d, "src.db", 300, 4000);
    // Killed inside a transaction that rewrote every row: a hot journal.
    common::python_script(
        d,
        "import sqlite3, os\n\
         c = sqlite3.connect('src.db')\n\
         c.execute('PRAGMA cache_size=5')\n\
         c.execute('UPDATE t SET body = zeroblob(10)')\n\
         os._exit(0)\n",
    );
    assert!(d.join("src.db-journal").exists());
    let m = Mount::new(d, "tmp", "400k");
    let before = common::snapshot_files(d);
    let out = Command::new(common::bin())
        .args(["backup", "--source", "sqlite:src.db", "--to", "bk"])
        .env("TMPDIR", &m.dir)
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_plain(err.lines().last().unwrap_or_default());
    assert!(
        err.contains("temporary directory") && err.contains("TMPDIR"),
        "{err}"
    );
    for (name, bytes) in &before {
        if name.starts_with("src.db") {
            assert!(
                std::fs::read(d.join(name)).unwrap() == *bytes,
                "{name} changed"
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(&m.dir).unwrap().count(),
        0,
        "left in the temporary directory"
    );
}
