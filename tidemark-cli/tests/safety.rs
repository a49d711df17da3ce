//! Data safety, tried as a user would with independent clients (the `sqlite3` shell, plain
//! processes holding files open): one writer per destination, one format per destination,
//! restores that swap atomically and refuse targets in use, schemas with foreign keys in any
//! order, database settings restored, deleted archives noticed, sources never written.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{assert_same_dump, dump, fails, ok, sql, tidemark};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn shop(d: &Path) {
    sql(
        &d.join("src.db"),
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO users SELECT i, printf('user %d', i) FROM n;",
    );
}

/// A live backup into `dest` (holding the destination's lock until stopped).
fn start_live(d: &Path, dest: &str, format: &str) -> Child {
    let child = Command::new(common::bin())
        .args(["backup", "--source", "sqlite:src.db", "--to", dest])
        .args(["--format", format, "--live", "--interval", "0.2", "--quiet"])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The lock file names the holder once it holds the lock.
    let lock = d.join(dest).join(".tidemark-lock");
    let pid = format!("pid {}", child.id());
    common::wait_for("live to take the lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&pid))
    });
    let start = Instant::now();
    // Then the initial backup completes: its last file appears, and nothing moves after.
    let done = if format == "archive" {
        d.join(dest).join(".tidemark-head")
    } else {
        d.join(dest).join(".tidemark/manifest.json")
    };
    let mut last = None;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the initial backup never ended"
        );
        std::thread::sleep(Duration::from_millis(300));
        let now = common::snapshot_files(&d.join(dest));
        if done.exists() && last.as_ref() == Some(&now) {
            break;
        }
        last = Some(now);
    }
    child
}

fn sigterm(child: Child) {
    common::stop_cleanly(child);
}

#[test]
fn a_second_writer_is_refused_at_once_naming_the_holder() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
        let live = start_live(d, dest, format);
        let before = common::snapshot_files(&d.join(dest));
        let started = Instant::now();
        let err = fails(
            &[
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                dest,
                "--full",
                "--format",
                format,
            ],
            d,
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
        assert!(
            err.contains("in use by another tidemark run")
                && err.contains(&format!("pid {}", live.id()))
                && err.contains("backup --live"),
            "{err}"
        );
        if format == "archive" {
            let err = fails(&["prune", dest, "--keep-last", "1"], d);
            assert!(err.contains("in use by another tidemark run"), "{err}");
        }
        // The refused runs changed nothing (the live run writes only when the store changes).
        common::assert_unchanged(&d.join(dest), &before, "refused runs");
        sigterm(live);
        // The lock went with its holder.
        let out = common::backup(d, "sqlite:src.db", dest, format);
        assert!(out.contains("50 in backup"), "{out}");
        ok(&["verify", dest], d);
    }
}

#[test]
fn a_killed_holder_never_blocks_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    let mut live = start_live(d, "bk", "folder");
    live.kill().unwrap();
    live.wait().unwrap();
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    ok(&["verify", "bk"], d);
}

#[test]
fn a_destination_keeps_one_format() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "bk",
            "--format",
            "archive",
        ],
        d,
    );
    assert!(
        err.contains("holds folder backups") && err.contains("--format folder"),
        "{err}"
    );
    common::backup(d, "sqlite:src.db", "ar", "archive");
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "ar",
            "--format",
            "folder",
        ],
        d,
    );
    assert!(err.contains("holds archive backups"), "{err}");
    // Without --format, a backup goes on in the format its destination holds: here a second
    // archive (before, the folder default was refused), a diff-based incremental of the
    // untracked database.
    sql(
        &d.join("src.db"),
        "UPDATE users SET name = 'renamed' WHERE id = 3;",
    );
    let out = ok(&["backup", "--source", "sqlite:src.db", "--to", "ar"], d);
    assert!(
        out.contains("Archive (incremental) ar/tidemark-000002-incr-"),
        "{out}"
    );
    assert_eq!(common::files_ending(&d.join("ar"), ".zip"), 2);
    assert!(!d.join("ar/.tidemark").exists());
    ok(&["restore", "--from", "ar", "--to", "sqlite:ra.db"], d);
    assert_same_dump(&dump(&d.join("ra.db")), &dump(&d.join("src.db")), "archive");
    // Two destinations of different formats in one run are refused, naming both.
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "bk",
            "--to",
            "ar",
        ],
        d,
    );
    assert!(
        err.contains("bk holds folder backups and ar archive backups"),
        "{err}"
    );
    // Readers follow the recorded format: the folder's state is the source's.
    sql(&d.join("src.db"), "DELETE FROM users WHERE id > 10;");
    ok(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "bk",
            "--full",
        ],
        d,
    );
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&d.join("src.db")), "folder");
    assert_eq!(
        std::fs::read_to_string(d.join("bk/.tidemark-format")).unwrap(),
        "folder\n"
    );
}

/// A process that holds `path` open (as an application would) until killed.
fn holder(path: &Path) -> Child {
    let child = Command::new("python3")
        .args([
            "-c",
            "import sys, time; f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(120)",
        ])
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

#[test]
fn restore_force_refuses_a_target_in_use_and_replaces_one_that_is_not() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    sql(
        &d.join("old.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE keep(x); INSERT INTO keep VALUES ('old data');",
    );
    let old = dump(&d.join("old.db"));
    let mut app = holder(&d.join("old.db"));
    let err = fails(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:old.db",
            "--force",
        ],
        d,
    );
    assert!(
        err.contains("open in another process") && err.contains(&format!("pid {}", app.id())),
        "{err}"
    );
    assert_eq!(dump(&d.join("old.db")), old, "the target is untouched");
    app.kill().unwrap();
    app.wait().unwrap();
    // Debris of an interrupted restore (nobody holds it) is removed by the next one.
    let debris = d.join(".old.db.tidemark-restore-0123456789abcdef0123456789abcdef");
    std::fs::write(&debris, vec![0u8; 4096]).unwrap();
    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:old.db",
            "--force",
        ],
        d,
    );
    assert!(!debris.exists());
    assert_same_dump(
        &dump(&d.join("old.db")),
        &dump(&d.join("src.db")),
        "replaced",
    );
    for companion in ["old.db-wal", "old.db-shm", "old.db-journal"] {
        assert!(
            !d.join(companion).exists(),
            "{companion} of the old database is gone"
        );
    }
    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tidemark-"))
        .collect();
    assert!(names.is_empty(), "no temporary files left: {names:?}");
}

/// The old data's WAL frames must never be replayed onto the restored file: a target whose
/// last transactions sit only in its `-wal` (an application killed) is replaced cleanly.
#[test]
fn restore_force_over_a_database_with_a_live_wal() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    // A writer killed with its WAL not checkpointed.
    let script = "import sqlite3, os\n\
                  c = sqlite3.connect('old.db')\n\
                  c.execute('PRAGMA journal_mode=WAL')\n\
                  c.execute('PRAGMA wal_autocheckpoint=0')\n\
                  c.execute('CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)')\n\
                  c.executemany('INSERT INTO users VALUES (?, ?)', [(i, 'stale') for i in range(1, 500)])\n\
                  c.commit()\n\
                  os._exit(0)\n";
    common::python_script(d, script);
    assert!(std::fs::metadata(d.join("old.db-wal")).unwrap().len() > 0);
    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:old.db",
            "--force",
        ],
        d,
    );
    assert_same_dump(
        &dump(&d.join("old.db")),
        &dump(&d.join("src.db")),
        "replaced",
    );
}

#[test]
fn foreign_keys_in_any_order_restore_from_both_formats() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "PRAGMA foreign_keys=ON;
         PRAGMA application_id=1234567; PRAGMA user_version=42;
         CREATE TABLE line(id INTEGER PRIMARY KEY, ord INTEGER REFERENCES ord(id), item TEXT);
         CREATE TABLE ord(id INTEGER PRIMARY KEY, customer INTEGER REFERENCES customer(id));
         CREATE TABLE customer(id INTEGER PRIMARY KEY, best_order INTEGER REFERENCES ord(id),
                               referrer INTEGER REFERENCES customer(id));
         INSERT INTO customer VALUES (1, NULL, NULL), (2, NULL, 1);
         INSERT INTO ord VALUES (10, 1), (11, 2);
         UPDATE customer SET best_order = 10 WHERE id = 1;
         INSERT INTO line VALUES (100, 10, 'apple'), (101, 11, 'pear');",
    );
    for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
        common::backup(d, "sqlite:src.db", dest, format);
        let copy = format!("{dest}.db");
        ok(
            &["restore", "--from", dest, "--to", &format!("sqlite:{copy}")],
            d,
        );
        assert_same_dump(&dump(&d.join(&copy)), &dump(&d.join("src.db")), format);
        let conn = rusqlite::Connection::open(d.join(&copy)).unwrap();
        let (app, user): (i64, i64) = conn
            .query_row(
                "SELECT * FROM pragma_application_id, pragma_user_version",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((app, user), (1234567, 42));
        let violations: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(violations, 0);
        // A table restored without the one it references is named, not half-restored.
        let err = fails(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sqlite:part-{copy}"),
                "--collections",
                "line",
            ],
            d,
        );
        assert!(
            err.contains("`ord`") && err.contains("--collections"),
            "{err}"
        );
        assert!(!d.join(format!("part-{copy}")).exists());
        ok(
            &[
                "restore",
                "--from",
                dest,
                "--to",
                &format!("sqlite:part-{copy}"),
                "--collections",
                "line,ord,customer",
            ],
            d,
        );
    }
}

#[test]
fn page_size_and_auto_vacuum_are_restored() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "PRAGMA page_size=8192; PRAGMA auto_vacuum=FULL; CREATE TABLE t(x); INSERT INTO t VALUES (1);",
    );
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    let conn = rusqlite::Connection::open(d.join("r.db")).unwrap();
    let (ps, av): (i64, i64) = conn
        .query_row(
            "SELECT * FROM pragma_page_size, pragma_auto_vacuum",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((ps, av), (8192, 1));
}

#[test]
fn a_deleted_newest_archive_is_noticed_and_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    ok(&["track", "--source", "sqlite:src.db"], d);
    common::backup(d, "sqlite:src.db", "ar", "archive");
    for i in 0..2 {
        sql(
            &d.join("src.db"),
            &format!("INSERT INTO users VALUES ({}, 'new');", 100 + i),
        );
        common::backup(d, "sqlite:src.db", "ar", "archive");
    }
    let mut zips: Vec<_> = std::fs::read_dir(d.join("ar"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "zip"))
        .collect();
    zips.sort();
    assert_eq!(zips.len(), 3);
    let newest = zips.pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    let out = tidemark(&["verify", "ar"], d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&name) && err.contains("missing"),
        "{err}"
    );
    let err = fails(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert!(
        err.contains(&name) && err.contains("\n  restore --skip-damaged restores what is intact"),
        "{err}"
    );
    assert!(!d.join("r.db").exists());
    // Partial recovery restores the newest backup present and lists the missing one; it exits
    // 3 (damage found) and says what it left out.
    let skip_damaged = |target: &str| {
        let partial = tidemark(
            &["restore", "--from", "ar", "--to", target, "--skip-damaged"],
            d,
        );
        let err = String::from_utf8_lossy(&partial.stderr).into_owned();
        assert_eq!(partial.status.code(), Some(3), "{err}");
        err
    };
    let err = skip_damaged("sqlite:r.db");
    assert!(
        err.contains("left out (damaged)") && err.contains(&name),
        "{err}"
    );
    let one_new = dump(&d.join("r.db"));
    assert!(
        one_new.contains("(100,'new')") && !one_new.contains("(101,"),
        "{one_new}"
    );
    // A flipped byte in the chain head (a file of a few bytes) refuses a restore the same
    // way, and partial recovery goes around it; before, even --skip-damaged refused, and a
    // user whose source was gone could not restore without deleting the file by hand.
    common::backup(d, "sqlite:src.db", "ar", "archive");
    let head = d.join("ar/.tidemark-head");
    let mut bytes = std::fs::read(&head).unwrap();
    bytes[20] ^= 0x04;
    std::fs::write(&head, bytes).unwrap();
    let err = fails(&["restore", "--from", "ar", "--to", "sqlite:r2.db"], d);
    assert!(
        err.contains(".tidemark-head") && err.contains("--skip-damaged"),
        "{err}"
    );
    let err = skip_damaged("sqlite:r2.db");
    assert!(err.contains(".tidemark-head"), "{err}");
    assert_same_dump(&dump(&d.join("r2.db")), &dump(&d.join("src.db")), "r2");
    // The next backup writes the head again, and the chain is whole.
    common::backup(d, "sqlite:src.db", "ar", "archive");
    ok(&["verify", "ar"], d);
}

#[test]
fn prune_of_a_missing_directory_fails() {
    let t = tempfile::tempdir().unwrap();
    let err = fails(&["prune", "nope", "--keep-last", "2"], t.path());
    assert!(err.contains("no such backup directory"), "{err}");
}

/// A directory holding no backup (empty, or what a first backup killed at its first crash
/// point leaves: the lock and an unfinished format marker) is an error (exit 1) for verify and
/// restore, not a damaged backup (exit 3, with a `--skip-damaged` hint), in either format.
#[test]
fn a_directory_without_a_backup_is_not_called_damaged() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    std::fs::create_dir(d.join("empty")).unwrap();
    for format in ["archive", "folder"] {
        let dest = format!("stopped-{format}");
        let out = Command::new(common::bin())
            .args(["backup", "--source", "sqlite:src.db", "--to", &dest])
            .args(["--format", format])
            .env("TIDEMARK_CRASH_AT", "1")
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success(), "the crash point was not reached");
        assert!(d.join(&dest).join(".tidemark-format.tmp").exists());
    }
    for dest in ["empty", "stopped-archive", "stopped-folder"] {
        for args in [
            vec!["verify", dest],
            vec!["restore", dest, "--to", "sqlite:r.db"],
        ] {
            let out = tidemark(&args, d);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains("holds no tidemark backup"), "{args:?}: {err}");
            assert!(!err.contains("--skip-damaged"), "{args:?}: {err}");
            if dest != "empty" {
                assert!(err.contains("stopped before it finished"), "{err}");
            }
        }
        assert!(!d.join("r.db").exists(), "{dest}: a target was created");
    }
    // The next backup into a stopped destination completes it.
    for format in ["archive", "folder"] {
        let dest = format!("stopped-{format}");
        common::backup(d, "sqlite:src.db", &dest, format);
        ok(&["verify", &dest], d);
    }
}

/// A first backup killed at each of its crash points in turn (every rename and fsync it
/// depends on) leaves a destination that verify, restore and list describe the same way: a
/// stopped first backup (exit 1) while nothing of it is complete; a completed archive once the
/// archive is in place (verify intact, restore exact); a folder whose collections were being
/// swapped in as interrupted (exit 3), never as intact.
#[test]
fn a_first_backup_stopped_at_any_point_is_never_called_intact() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    let want = dump(&d.join("src.db"));
    for format in ["archive", "folder"] {
        let mut stopped = 0;
        for n in 1.. {
            let dest = format!("{format}-{n}");
            let out = Command::new(common::bin())
                .args(["backup", "--source", "sqlite:src.db", "--to", &dest])
                .args(["--format", format])
                .env("TIDEMARK_CRASH_AT", n.to_string())
                .current_dir(d)
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            stopped += 1;
            let verify = tidemark(&["verify", &dest], d);
            let list = tidemark(&["list", &dest], d);
            let restore = tidemark(&["restore", &dest, "--to", "sqlite:r.db"], d);
            let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
            let swapped_in = d.join(&dest).join("users").exists();
            if verify.status.success() {
                // Only an archive that is whole: it restores exactly.
                assert_eq!(format, "archive", "point {n}: {}", text(&verify));
                assert!(restore.status.success(), "point {n}: {}", text(&restore));
                assert_same_dump(&dump(&d.join("r.db")), &want, "restored");
                assert!(list.status.success(), "point {n}: {}", text(&list));
                std::fs::remove_file(d.join("r.db")).unwrap();
            } else if format == "folder" && swapped_in {
                // Stopped while swapping its collections in, or before removing the marker
                // that says so: repaired by the next run.
                for o in [&verify, &restore] {
                    assert_eq!(o.status.code(), Some(3), "point {n}: {}", text(o));
                    assert!(text(o).contains("interrupted"), "point {n}: {}", text(o));
                }
                // list shows the manifest it finds, and says that it is not to be trusted.
                if list.status.success() {
                    assert!(
                        text(&list).contains("interrupted"),
                        "point {n}: {}",
                        text(&list)
                    );
                    let json = ok(&["list", &dest, "--json"], d);
                    assert!(json.contains(r#""interrupted":true"#), "point {n}: {json}");
                }
            } else {
                for (what, o) in [("verify", &verify), ("list", &list), ("restore", &restore)] {
                    let err = text(o);
                    assert_eq!(o.status.code(), Some(1), "point {n}, {what}: {err}");
                    assert!(err.contains("stopped before it finished"), "{what}: {err}");
                    assert!(!err.contains("--skip-damaged"), "{what}: {err}");
                }
            }
            assert!(!d.join("r.db").exists(), "point {n}: a target was left");
            // The next backup completes what was stopped.
            common::backup(d, "sqlite:src.db", &dest, format);
            ok(&["verify", &dest], d);
        }
        assert!(stopped >= 3, "{format}: only {stopped} crash points");
    }
}

/// The files of the database `src.db` in `d` (it, its `-wal`, `-shm` and `-journal`) with
/// their bytes.
fn source_files(d: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    // Only these are read: the rest of `d` (a live backup's destination) changes meanwhile, and
    // a file renamed away between listing and reading failed the walk.
    std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("src.db"))
        .map(|n| {
            let bytes = std::fs::read(d.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

/// The source's files are hashed before and after full and incremental backups in both
/// formats: rollback journal, WAL cleanly closed, WAL left by a writer that was killed (its
/// last transactions only in the `-wal`, which a read-write open would checkpoint into the
/// database file and remove), the same WAL without its `-shm` index (which a read-only
/// connection cannot rebuild), and a hot rollback journal left by a writer killed in a
/// transaction whose pages had spilled into the database file (a read-write open rolls it back:
/// writes the database file and deletes the journal).
#[test]
fn backups_of_an_untracked_sqlite_database_write_nothing_to_it() {
    for mode in [
        "DELETE",
        "WAL",
        "WAL-crashed",
        "WAL-crashed-no-shm",
        "DELETE-crashed",
    ] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        sql(
            &d.join("src.db"),
            &format!(
                "PRAGMA journal_mode={}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b');",
                &mode[..mode.find('-').unwrap_or(mode.len())]
            ),
        );
        if mode.starts_with("WAL-crashed") {
            let script = "import sqlite3, os\n\
                          c = sqlite3.connect('src.db')\n\
                          c.execute('PRAGMA wal_autocheckpoint=0')\n\
                          c.executemany('INSERT INTO t(v) VALUES (?)', [('w',)] * 50)\n\
                          c.commit()\n\
                          os._exit(0)\n";
            common::python_script(d, script);
            assert!(std::fs::metadata(d.join("src.db-wal")).unwrap().len() > 0);
            if mode.ends_with("no-shm") {
                // The WAL without its index, as a copy of the two files leaves it (the index is
                // rebuilt from the WAL by the next connection that may write).
                std::fs::remove_file(d.join("src.db-shm")).unwrap();
            }
        }
        if mode == "DELETE-crashed" {
            // Committed: 2 + 2000 rows. Killed in a transaction that rewrote every one of them,
            // with a 5-page cache, so most of its pages are in the database file already.
            let script = "import sqlite3, os\n\
                          c = sqlite3.connect('src.db')\n\
                          c.executemany('INSERT INTO t(v) VALUES (?)', [('c' * 200,)] * 2000)\n\
                          c.commit()\n\
                          c.execute('PRAGMA cache_size=5')\n\
                          c.execute(\"UPDATE t SET v = 'uncommitted'\")\n\
                          os._exit(0)\n";
            common::python_script(d, script);
            assert!(std::fs::metadata(d.join("src.db-journal")).unwrap().len() > 0);
        }
        for round in 0..2 {
            let before = source_files(d);
            for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
                common::backup(d, "sqlite:src.db", dest, format);
            }
            let after = source_files(d);
            assert!(
                after == before,
                "{mode} round {round}: the source's files changed"
            );
            if mode.contains("-crashed") {
                // Every row the killed writer committed is in the backups, and nothing of the
                // transaction it left unfinished.
                let rows = if mode.starts_with("WAL") { 52 } else { 2002 };
                for (dest, target) in [("bk", "r.db"), ("ar", "ra.db"), ("", "src.db")] {
                    if !dest.is_empty() {
                        ok(
                            &[
                                "restore",
                                "--from",
                                dest,
                                "--to",
                                &format!("sqlite:{target}"),
                            ],
                            d,
                        );
                    }
                    // Last, the source itself: SQLite still rolls its journal back.
                    let conn = rusqlite::Connection::open(d.join(target)).unwrap();
                    let got: (i64, i64) = conn
                        .query_row(
                            "SELECT count(*), count(*) FILTER (WHERE v = 'uncommitted') FROM t",
                            [],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .unwrap();
                    assert_eq!(got, (rows, 0), "{mode}: {target} (restored from {dest:?})");
                }
                break;
            }
            sql(
                &d.join("src.db"),
                &format!("INSERT INTO t VALUES ({}, 'more');", 10 + round),
            );
        }
    }
}

/// A database named through a symbolic link: SQLite names its `-wal`, `-shm` and `-journal`
/// after the file the link names, and so must the backup's look for them. Before, the backup
/// looked beside the link, missed a killed writer's WAL, and its read-write open checkpointed
/// the WAL into the database and removed it (and would roll a hot journal back).
#[test]
fn a_source_behind_a_symbolic_link_is_read_without_writing_to_it() {
    for mode in ["WAL", "DELETE"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir(d.join("real")).unwrap();
        sql(
            &d.join("real/src.db"),
            &format!(
                "PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'a'), (2, 'b');"
            ),
        );
        // Killed: with its last commits in the WAL only, or inside a transaction whose pages
        // spilled into the database file (a hot journal).
        let script = if mode == "WAL" {
            "import sqlite3, os\n\
             c = sqlite3.connect('src.db')\n\
             c.execute('PRAGMA wal_autocheckpoint=0')\n\
             c.executemany('INSERT INTO t(v) VALUES (?)', [('w' * 200,)] * 50)\n\
             c.commit()\n\
             os._exit(0)\n"
        } else {
            "import sqlite3, os\n\
             c = sqlite3.connect('src.db')\n\
             c.executemany('INSERT INTO t(v) VALUES (?)', [('w' * 200,)] * 50)\n\
             c.commit()\n\
             c.execute('PRAGMA cache_size=1')\n\
             c.execute(\"UPDATE t SET v = 'uncommitted'\")\n\
             os._exit(0)\n"
        };
        common::python_script(&d.join("real"), script);
        let beside = if mode == "WAL" {
            "src.db-wal"
        } else {
            "src.db-journal"
        };
        assert!(d.join("real").join(beside).exists(), "{mode}");
        std::os::unix::fs::symlink("real/src.db", d.join("link.db")).unwrap();
        let before = common::snapshot_files(&d.join("real"));
        for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
            common::backup(d, "sqlite:link.db", dest, format);
        }
        common::assert_unchanged(&d.join("real"), &before, mode);
        for (dest, target) in [("bk", "r.db"), ("ar", "ra.db")] {
            ok(
                &[
                    "restore",
                    "--from",
                    dest,
                    "--to",
                    &format!("sqlite:{target}"),
                ],
                d,
            );
            let conn = rusqlite::Connection::open(d.join(target)).unwrap();
            let got: (i64, i64) = conn
                .query_row(
                    "SELECT count(*), count(*) FILTER (WHERE v = 'uncommitted') FROM t",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(got, (52, 0), "{mode}: restored from {dest}");
        }
    }
}

/// A live backup of an untracked database (WAL mode closed cleanly, and rollback-journal
/// mode) while an application opens it, commits 50 rows and closes it. Before, the live
/// backup never ran again after its first backup (an untracked database's position stays 0,
/// and that was all it waited on), and in WAL mode its close, the last, checkpointed the
/// application's WAL into the database and removed it. Now the commit is seen (another run,
/// the 50 rows restored) and the database and its WAL are left as the application left them
/// (the `-shm` index gets the read marks every WAL reader writes).
#[test]
fn a_live_backup_of_an_untracked_database_follows_other_writers_without_writing() {
    for mode in ["WAL", "DELETE"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        sql(
            &d.join("src.db"),
            &format!(
                "PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 INSERT INTO t VALUES (1, 'first');"
            ),
        );
        let live = start_live(d, "lv", "archive");
        let script = "import sqlite3\n\
                      c = sqlite3.connect('src.db')\n\
                      c.execute('PRAGMA wal_autocheckpoint=0')\n\
                      c.executemany('INSERT INTO t(v) VALUES (?)', [('w',)] * 50)\n\
                      c.commit()\n\
                      c.close()\n";
        common::python_script(d, script);
        let before = source_files(d);
        if mode == "WAL" {
            // The application was not the last to close: its WAL is still there.
            assert!(std::fs::metadata(d.join("src.db-wal")).unwrap().len() > 0);
        }
        // The next run takes the commit; then the live backup stops cleanly.
        common::wait_for("a second run", || {
            let out = common::tidemark(&["list", "lv", "--json"], d);
            String::from_utf8_lossy(&out.stdout)
                .matches("\"type\":\"archive\"")
                .count()
                >= 2
        });
        sigterm(live);
        let after = source_files(d);
        for (name, bytes) in &before {
            // The -shm is SQLite's shared-memory index of the WAL, not the database: every
            // reader of a WAL database takes a read mark in it, the application's own too.
            if name.ends_with("-shm") {
                continue;
            }
            assert!(
                after.get(name) == Some(bytes),
                "{mode}: {name} changed or went ({:?})",
                after.keys().collect::<Vec<_>>()
            );
        }
        assert_eq!(after.len(), before.len(), "{mode}: files added");
        ok(&["restore", "--from", "lv", "--to", "sqlite:r.db"], d);
        let conn = rusqlite::Connection::open(d.join("r.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 51, "{mode}");
    }
}

/// A live backup of an untracked database in rollback-journal mode whose writer is killed
/// inside a transaction while it runs (its pages spilled into the database file: a hot
/// journal). The backup keeps its connection for the whole run: read-write, its next read
/// rolled the journal back in place, writing the database and removing the journal. Now its
/// connections are read-only: the database and journal stay byte for byte, and the live backup
/// stops with an error that says what happened.
#[test]
fn a_live_backup_never_rolls_back_a_journal_left_while_it_runs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000)
         INSERT INTO t SELECT x, 'committed' FROM c;",
    );
    let live = start_live(d, "lv", "archive");
    let script = "import sqlite3, os\n\
                  c = sqlite3.connect('src.db')\n\
                  c.execute('PRAGMA cache_size=5')\n\
                  c.execute(\"UPDATE t SET v = 'uncommitted'\")\n\
                  os._exit(0)\n";
    common::python_script(d, script);
    assert!(d.join("src.db-journal").exists());
    let before = source_files(d);
    // Several of the live backup's polls go by.
    std::thread::sleep(Duration::from_millis(1000));
    let out = common::sigterm(live);
    assert!(source_files(d) == before, "the source's files changed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("hot journal"),
        "{err}"
    );
    // The backup holds the committed rows; SQLite still rolls the database back itself.
    ok(&["restore", "--from", "lv", "--to", "sqlite:r.db"], d);
    for db in ["r.db", "src.db"] {
        let conn = rusqlite::Connection::open(d.join(db)).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t WHERE v = 'committed'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 2000, "{db}");
    }
}

/// A tracked database (rollback journal) whose writer died inside a transaction: its
/// incremental reads a rolled-back copy, stays incremental, holds the rows committed since the
/// last backup and nothing of the unfinished transaction, and leaves the database and its hot
/// journal as they were.
#[test]
fn an_incremental_of_a_tracked_database_with_a_hot_journal_reads_a_rolled_back_copy() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("src.db");
    sql(
        &db,
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000)
         INSERT INTO t SELECT x, 'first' FROM c;",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    for dest in ["bk", "ar"] {
        let format = if dest == "bk" { "folder" } else { "archive" };
        common::backup(d, "sqlite:src.db", dest, format);
    }
    // Committed after the backups: rows 2001 to 2010 and an update of row 1.
    sql(
        &db,
        "WITH RECURSIVE c(x) AS (SELECT 2001 UNION ALL SELECT x + 1 FROM c WHERE x < 2010)
         INSERT INTO t SELECT x, 'second' FROM c; UPDATE t SET v = 'second' WHERE id = 1;",
    );
    let script = "import sqlite3, os\n\
                  c = sqlite3.connect('src.db')\n\
                  c.execute('PRAGMA cache_size=5')\n\
                  c.execute(\"UPDATE t SET v = 'uncommitted' || v\")\n\
                  c.execute(\"INSERT INTO t VALUES (9999, 'uncommitted')\")\n\
                  os._exit(0)\n";
    common::python_script(d, script);
    assert!(std::fs::metadata(d.join("src.db-journal")).unwrap().len() > 0);
    let before = source_files(d);
    for (dest, format) in [("bk", "folder"), ("ar", "archive")] {
        let out = common::backup(d, "sqlite:src.db", dest, format);
        assert!(out.contains("Backup (incremental)"), "{format}: {out}");
        assert!(out.contains("11 records written"), "{format}: {out}");
    }
    // A live backup would follow a copy that never changes: refused, naming the hot journal.
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "lv",
            "--live",
        ],
        d,
    );
    assert!(err.contains("hot journal"), "{err}");
    assert!(source_files(d) == before, "the source's files changed");
    for (dest, target) in [("bk", "r.db"), ("ar", "ra.db"), ("", "src.db")] {
        if !dest.is_empty() {
            ok(
                &[
                    "restore",
                    "--from",
                    dest,
                    "--to",
                    &format!("sqlite:{target}"),
                ],
                d,
            );
        }
        let conn = rusqlite::Connection::open(d.join(target)).unwrap();
        let got: (i64, i64, i64) = conn
            .query_row(
                "SELECT count(*), count(*) FILTER (WHERE v = 'second'),
                        count(*) FILTER (WHERE v LIKE 'uncommitted%') FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(got, (2010, 11, 0), "{target} (restored from {dest:?})");
    }
}

/// A live backup (folder and archive) of a source nobody writes meanwhile changes no file of
/// it: SQLite (untracked, rollback journal and WAL) and RocksDB (read through a secondary
/// instance). (A live backup of sled from the command line is refused:
/// `sled_cli::a_live_backup_of_sled_is_refused_and_holds_no_lock`.)
#[test]
fn live_backups_never_write_to_their_sources() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut sources: Vec<(String, std::path::PathBuf)> = Vec::new();
    sql(
        &d.join("journal.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    sources.push(("sqlite:journal.db".into(), d.join("journal.db")));
    sql(
        &d.join("wal.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    sources.push(("sqlite:wal.db".into(), d.join("wal.db")));
    #[cfg(feature = "rocksdb")]
    {
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, d.join("rocks")).unwrap();
        for i in 0..20u32 {
            db.put(i.to_be_bytes(), b"v").unwrap();
        }
        drop(db);
        sources.push(("rocksdb:rocks".into(), d.join("rocks")));
    }
    for (i, (url, path)) in sources.iter().enumerate() {
        let files = |p: &Path| {
            if p.is_dir() {
                common::snapshot_files(p)
            } else {
                common::snapshot_files(p.parent().unwrap())
                    .into_iter()
                    .filter(|(n, _)| n.starts_with(p.file_name().unwrap().to_str().unwrap()))
                    .collect()
            }
        };
        let before = files(path);
        for format in ["folder", "archive"] {
            let dest = format!("live-{i}-{format}");
            let child = Command::new(common::bin())
                .args(["backup", "--source", url, "--to", &dest, "--format", format])
                .args(["--live", "--interval", "0.2", "--quiet"])
                .current_dir(d)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let done = if format == "archive" {
                d.join(&dest).join(".tidemark-head")
            } else {
                d.join(&dest).join(".tidemark/manifest.json")
            };
            common::wait_for(&format!("{url}: the initial backup"), || done.exists());
            std::thread::sleep(Duration::from_millis(600)); // a few intervals of following
            sigterm(child);
            assert!(
                files(path) == before,
                "{url} {format}: the source's files changed"
            );
        }
    }
}

/// `verify` run again and again while a live backup follows a busy store always finds the
/// folder whole: readers wait for the run in progress (the run lock), never see half of it.
#[test]
fn verify_during_a_live_backup_always_finds_the_backup_whole() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    ok(&["track", "--source", "sqlite:src.db"], d);
    let live = start_live(d, "bk", "folder");
    let db = d.join("src.db");
    let writer = std::thread::spawn(move || {
        for i in 0..60 {
            sql(
                &db,
                &format!(
                    "INSERT INTO users(name) VALUES ('w{i}'); UPDATE users SET name = 'u{i}' WHERE id = {};
                     DELETE FROM users WHERE id = {};",
                    i % 50 + 1,
                    i + 2
                ),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let mut checks = 0;
    while !writer.is_finished() {
        let out = tidemark(&["verify", "bk"], d);
        assert!(
            out.status.success(),
            "verify during a live backup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checks += 1;
    }
    writer.join().unwrap();
    sigterm(live);
    assert!(checks >= 5, "only {checks} verifies ran");
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(
        &dump(&d.join("r.db")),
        &dump(&d.join("src.db")),
        "after live",
    );
}

/// A backup that starts as an incremental and finds that it cannot read the change log (the
/// source's change log is gone: here it never had one) completes another way, a diff-based
/// incremental into an archive chain and a full folder backup, and leaves nothing half-written
/// behind: the abandoned incremental's archive was left as a `.tmp` file beside the chain until
/// the next run.
#[test]
fn a_backup_that_falls_back_to_full_leaves_no_temporary_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    shop(d);
    for format in ["archive", "folder"] {
        let dest = format!("bk-{format}");
        common::backup(d, "sqlite:src.db", &dest, format);
        sql(
            &d.join("src.db"),
            "UPDATE users SET name = 'changed' WHERE id = 7;",
        );
        let out = common::backup(d, "sqlite:src.db", &dest, format);
        let fallback = if format == "archive" {
            "(incremental, diff-based)"
        } else {
            "(full)"
        };
        assert!(out.contains(fallback), "{format}: not a fallback: {out}");
        let mut left = Vec::new();
        let mut dirs = vec![d.join(&dest)];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                } else if name.contains(".tmp") {
                    left.push(e.path());
                }
            }
        }
        assert!(left.is_empty(), "{format}: left behind: {left:?}");
        ok(&["verify", &dest], d);
        ok(
            &["restore", &dest, "--to", &format!("sqlite:r-{format}.db")],
            d,
        );
        assert_same_dump(
            &dump(&d.join(format!("r-{format}.db"))),
            &dump(&d.join("src.db")),
            format,
        );
    }
}

/// Ctrl-C during a restore: the unfinished store beside the target is removed, the target is
/// not created (or, with --force, left as it was), and the exit code says it was interrupted.
#[test]
fn an_interrupted_restore_leaves_no_temporary_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::big_backup(d, 4000);
    let child = common::start_restore(d, "sqlite:r.db");
    let tmp = || common::restores_in_progress(d);
    common::wait_for("the restore to start", || !tmp().is_empty());
    std::thread::sleep(Duration::from_millis(50));
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(tmp().is_empty(), "left behind: {:?}", tmp());
    assert!(!d.join("r.db").exists());
}

/// Ctrl-C or SIGTERM during a backup: the archive being written and the key state's new files
/// are removed, the chain is as it was (the previous archive verifies and restores), the exit
/// code says it was interrupted, and the next backup runs. Before, the process died on the
/// signal and left them for the next run to remove.
#[test]
fn an_interrupted_backup_leaves_no_temporary_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t SELECT i, hex(randomblob(200)) FROM n;",
    );
    let args = [&common::ARCHIVE_BACKUP[..], &["--compression", "zstd"]].concat();
    ok(&args, d);
    let before = dump(&d.join("src.db"));
    // Everything below ar that is not a finished file.
    let unfinished = || {
        let mut found = Vec::new();
        for dir in [d.join("ar"), d.join("ar/.tidemark-state")] {
            for e in std::fs::read_dir(dir).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") || name.contains(".run") {
                    found.push(name);
                }
            }
        }
        found
    };
    for signal in ["-INT", "-TERM"] {
        // A slow compression level, so that the signal comes while the archive is written.
        let child = Command::new(common::bin())
            .args(&args)
            .args(["--full", "--level", "19", "--threads", "1"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_for("the archive to start", || !unfinished().is_empty());
        let out = common::signal(child, signal);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {err}");
        assert!(err.contains("backup interrupted"), "{signal}: {err}");
        assert!(
            unfinished().is_empty(),
            "{signal}: left behind: {:?}",
            unfinished()
        );
        let v = ok(&["verify", "ar"], d);
        assert!(v.contains("1 archive(s)"), "{signal}: {v}");
    }
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &before, "the chain as it was");
    // The next backup takes the next number: the interrupted ones left nothing in the chain.
    let out = ok(&args, d);
    assert!(out.contains("tidemark-000002-"), "{out}");
}

/// A folder backup pointed at a directory that holds something else is refused before it writes
/// anything: a full run replaces each collection's directory whole, so a directory of the same
/// name there (here `t/`, like the table) was lost. An archive chain writes only its own names,
/// and goes beside other files.
#[test]
fn a_folder_backup_never_replaces_what_was_in_its_directory() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'x');",
    );
    std::fs::create_dir_all(d.join("dest/t")).unwrap();
    std::fs::write(d.join("dest/t/mine.txt"), "precious").unwrap();
    std::fs::write(d.join("dest/notes.txt"), "keep").unwrap();
    let listing = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(d.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let err = fails(&["backup", "--source", "sqlite:src.db", "--to", "dest"], d);
    assert!(
        err.contains("dest: holds files that are not a tidemark backup (notes.txt, t)"),
        "{err}"
    );
    assert_eq!(
        listing("dest"),
        ["notes.txt", "t"],
        "nothing written, not even a lock"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("dest/t/mine.txt")).unwrap(),
        "precious"
    );
    // An archive chain there leaves the other files as they are.
    let out = ok(
        &[
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "dest",
            "--format",
            "archive",
        ],
        d,
    );
    assert!(out.contains("Archive (full)"), "{out}");
    assert_eq!(
        std::fs::read_to_string(d.join("dest/t/mine.txt")).unwrap(),
        "precious"
    );
    ok(&["verify", "dest"], d);
    // An empty directory, or a new one, takes a folder backup, and so does the next run.
    std::fs::create_dir(d.join("empty")).unwrap();
    for _ in 0..2 {
        ok(&["backup", "--source", "sqlite:src.db", "--to", "empty"], d);
        ok(&["backup", "--source", "sqlite:src.db", "--to", "new"], d);
    }
    ok(&["verify", "empty"], d);
}

/// A restore to a SQLite path where only the `-wal` and `-shm` of a deleted database are left
/// (killed with 50 rows in its WAL, then its file deleted): SQLite reads such a `-wal` as the
/// new database's own. Before, the restore put its database beside them and reported one
/// record, and the `sqlite3` shell read the old database's 50 rows instead (integrity_check
/// ok). Now it is refused without `--force`, naming the file, and `--force` removes them.
#[test]
fn a_restore_beside_a_deleted_databases_wal_never_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'fresh');",
    );
    ok(&common::ARCHIVE_BACKUP, d);
    sql(
        &d.join("old.db"),
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v);",
    );
    let script = "import sqlite3, os\n\
                  c = sqlite3.connect('old.db')\n\
                  c.execute('PRAGMA wal_autocheckpoint=0')\n\
                  c.executemany('INSERT INTO t(v) VALUES (?)', [('stale',)] * 50)\n\
                  c.commit()\n\
                  os._exit(0)\n";
    common::python_script(d, script);
    std::fs::remove_file(d.join("old.db")).unwrap();
    let wal = std::fs::read(d.join("old.db-wal")).unwrap();
    assert!(!wal.is_empty());
    let err = fails(&["restore", "--from", "ar", "--to", "sqlite:old.db"], d);
    assert!(
        err.contains("old.db-wal") && err.contains("--force"),
        "{err}"
    );
    assert!(!d.join("old.db").exists());
    assert_eq!(std::fs::read(d.join("old.db-wal")).unwrap(), wal);
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:old.db",
            "--force",
        ],
        d,
    );
    assert_same_dump(
        &dump(&d.join("old.db")),
        &dump(&d.join("src.db")),
        "restored",
    );
}

/// A restore into a symbolic link restores into the store the link names, and the link stays:
/// a SQLite file and a RocksDB directory, there already (refused without `--force`, replaced
/// with it) or not yet (a dangling link). Before, `--force` renamed the new store over the
/// link: the link became the store, in the link's directory, and the store it named was left
/// with its old data.
#[test]
fn a_restore_into_a_symbolic_link_restores_what_the_link_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'new'), (2, 'new');",
    );
    ok(&common::ARCHIVE_BACKUP, d);
    std::fs::create_dir(d.join("data")).unwrap();
    sql(
        &d.join("data/app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'old');",
    );
    std::os::unix::fs::symlink("data/app.db", d.join("app.db")).unwrap();
    std::os::unix::fs::symlink("data/later.db", d.join("later.db")).unwrap();
    let err = fails(&["restore", "--from", "ar", "--to", "sqlite:app.db"], d);
    assert!(err.contains("use --force"), "{err}");
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:app.db",
            "--force",
        ],
        d,
    );
    ok(&["restore", "--from", "ar", "--to", "sqlite:later.db"], d);
    for link in ["app.db", "later.db"] {
        let meta = std::fs::symlink_metadata(d.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link} is still a link");
        // Read by the sqlite3 shell, through the link and at the file it names.
        for path in [d.join(link), d.join("data").join(link)] {
            assert_same_dump(
                &dump(&path),
                &dump(&d.join("src.db")),
                &path.display().to_string(),
            );
        }
    }
    #[cfg(feature = "rocksdb")]
    {
        ok(
            &["restore", "--from", "ar", "--to", "rocksdb:data/rocks"],
            d,
        );
        let want = common::kv::rocks_content(&d.join("data/rocks"));
        {
            // The application's own write, which the forced restore replaces.
            let path = d.join("data/rocks");
            let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
            let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &names).unwrap();
            db.put(b"extra", b"1").unwrap();
        }
        std::os::unix::fs::symlink("data/rocks", d.join("rocks")).unwrap();
        ok(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                "rocksdb:rocks",
                "--force",
            ],
            d,
        );
        assert!(std::fs::symlink_metadata(d.join("rocks"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(common::kv::rocks_content(&d.join("data/rocks")), want);
    }
}

/// `restore --force` replaces a store of the target's kind, never anything else: a text file
/// given as a SQLite target, or a directory of the user's given as a RocksDB or sled target,
/// is refused and left as it was. Before, `--force` replaced them (the directory's files were
/// gone), and the refusal without it even suggested `--force`.
#[test]
fn restore_force_replaces_a_store_never_other_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'x');",
    );
    ok(&common::ARCHIVE_BACKUP, d);
    std::fs::write(d.join("notes.txt"), "my notes").unwrap();
    std::fs::create_dir_all(d.join("home/sub")).unwrap();
    std::fs::write(d.join("home/sub/file.txt"), "precious").unwrap();
    #[allow(unused_mut)]
    let mut targets = vec![("sqlite:notes.txt", "notes.txt: is not a SQLite database")];
    #[cfg(feature = "rocksdb")]
    targets.push(("rocksdb:home", "home: holds files but no RocksDB database"));
    #[cfg(feature = "sled")]
    targets.push(("sled:home", "home: holds files but no sled database"));
    for (target, want) in targets {
        for force in [false, true] {
            let mut args = vec!["restore", "--from", "ar", "--to", target];
            if force {
                args.push("--force");
            }
            let err = fails(&args, d);
            assert!(
                err.contains(want) && !err.contains("use --force"),
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(d.join("notes.txt")).unwrap(),
        "my notes"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("home/sub/file.txt")).unwrap(),
        "precious"
    );
    // A database of the kind is replaced with --force, as before.
    ok(&["restore", "--from", "ar", "--to", "sqlite:copy.db"], d);
    sql(&d.join("copy.db"), "UPDATE t SET v = 'changed';");
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:copy.db",
            "--force",
        ],
        d,
    );
    assert_same_dump(
        &dump(&d.join("copy.db")),
        &dump(&d.join("src.db")),
        "replaced",
    );
}

/// A restore without --force checks its target when it starts, but what appears there while it
/// runs must not be replaced either: the application creating its database (with the `sqlite3`
/// shell), or a second restore to the same path. Before, the restore renamed its new database
/// over whatever was there by then, and the application's table was lost.
#[test]
fn a_restore_never_replaces_what_appeared_at_its_target_while_it_ran() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    common::big_backup(d, 1500);

    // The application creates its database while the restore runs.
    let child = common::start_restore(d, "sqlite:app.db");
    common::wait_for("the restore to start", || {
        !common::restores_in_progress(d).is_empty()
    });
    sql(
        &d.join("app.db"),
        "CREATE TABLE app(x TEXT); INSERT INTO app VALUES ('mine');",
    );
    assert!(
        !common::restores_in_progress(d).is_empty(),
        "the restore ended before the application wrote: the test needs a larger backup"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not empty (use --force"), "{err}");
    assert_same_dump(
        &dump(&d.join("app.db")),
        "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE app(x TEXT);\n\
         INSERT INTO app VALUES('mine');\nCOMMIT;",
        "the application's database",
    );
    assert!(
        common::restores_in_progress(d).is_empty(),
        "left behind: {:?}",
        common::restores_in_progress(d)
    );

    // Two restores to one new path: one puts its database there, the other is refused.
    common::one_of_two_restores_wins(d, "sqlite:r.db");
    assert_same_dump(&dump(&d.join("r.db")), &dump(&d.join("src.db")), "r.db");
}
