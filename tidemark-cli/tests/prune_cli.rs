//! `tidemark prune`: retention over a real archive chain of a SQLite store. What is kept still
//! verifies and restores to the exact state it recorded; chains are never broken; a dry run
//! removes nothing; an archive lost without prune is still reported by verify.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::archive_names as archives;
use common::{assert_same_dump, dump, fails, ok, sql, ARCHIVE_BACKUP};
use std::path::{Path, PathBuf};

/// Two segments: full, incr, incr, then --full, incr. Returns the source dump after each run.
fn two_segments(d: &Path) -> Vec<String> {
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO t SELECT i, 'v' || i FROM n;",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let mut states = Vec::new();
    for round in 0..5 {
        if round > 0 {
            sql(
                &db,
                &format!("UPDATE t SET v = 'r{round}' WHERE id % 5 = {round}; DELETE FROM t WHERE id = {round};"),
            );
        }
        let mut args = ARCHIVE_BACKUP.to_vec();
        if round == 3 {
            args.push("--full");
        }
        ok(&args, d);
        states.push(dump(&db));
    }
    let names = archives(&d.join("ar"));
    let kinds: Vec<&str> = names.iter().map(|n| &n[16..20]).collect();
    assert_eq!(kinds, ["full", "incr", "incr", "full", "incr"], "{names:?}");
    states
}

/// The `to` checkpoint of an archive, from `tidemark list`.
fn checkpoint_of(d: &Path, name: &str) -> String {
    let out = ok(&["list", "ar"], d);
    let line = out.lines().find(|l| l.starts_with(name)).unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

fn restored(d: &Path, at: Option<&str>, name: &str) -> String {
    let to = format!("sqlite:{name}");
    let mut args = vec!["restore", "--from", "ar", "--to", &to];
    if let Some(at) = at {
        args.extend(["--at", at]);
    }
    ok(&args, d);
    dump(&d.join(name))
}

#[test]
fn keep_last_removes_whole_old_segments_only() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = two_segments(d);
    let before = archives(&d.join("ar"));
    let gone = checkpoint_of(d, &before[1]);

    // Dry run: prints the plan, removes nothing.
    let out = ok(&["prune", "ar", "--keep-last", "1", "--dry-run"], d);
    assert!(out.contains("Would remove 3 of 5 archives"), "{out}");
    assert_eq!(archives(&d.join("ar")), before);

    // keep-last 1 keeps the newest incremental and the full it needs; the older segment goes.
    let out = ok(&["prune", "ar", "--keep-last", "1"], d);
    assert!(out.contains("Removed 3 of 5 archives"), "{out}");
    assert!(out.contains("needed by 000005"), "{out}");
    assert_eq!(archives(&d.join("ar")), before[3..].to_vec());
    let v = ok(&["verify", "ar"], d);
    assert!(v.contains("is intact"), "{v}");
    assert_same_dump(
        &restored(d, None, "latest.db"),
        &states[4],
        "latest after prune",
    );
    let full = checkpoint_of(d, &before[3]);
    assert_same_dump(
        &restored(d, Some(&full), "x.db"),
        &states[3],
        "the kept full",
    );
    // What was pruned cannot be restored, and the error says what is available.
    let err = fails(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:gone.db",
            "--at",
            &gone,
        ],
        d,
    );
    assert!(err.contains("no backup ends at that checkpoint"), "{err}");

    // The chain continues after a prune.
    sql(
        &d.join("src.db"),
        "INSERT INTO t VALUES (1000, 'after prune');",
    );
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(out.contains("Archive (incremental)"), "{out}");
    ok(&["verify", "ar"], d);
    assert_same_dump(
        &restored(d, None, "after.db"),
        &dump(&d.join("src.db")),
        "after the next run",
    );
}

#[test]
fn a_kept_incremental_keeps_its_whole_chain() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = two_segments(d);
    let before = archives(&d.join("ar"));
    // keep-last 3 keeps 000003 (an incremental), so 000001 and 000002 stay too.
    let out = ok(&["prune", "ar", "--keep-last", "3"], d);
    assert!(out.contains("Removed 0 of 5"), "{out}");
    assert_eq!(archives(&d.join("ar")), before);
    // keep-daily 1: every archive was captured today, the newest is kept; 000001-000003 go.
    let out = ok(&["prune", "ar", "--keep-daily", "1"], d);
    assert!(out.contains("Removed 3 of 5"), "{out}");
    assert!(out.contains("daily "), "{out}");
    ok(&["verify", "ar"], d);
    assert_same_dump(&restored(d, None, "a.db"), &states[4], "latest");
}

#[test]
fn bad_requests_and_lost_archives() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    two_segments(d);
    let err = fails(&["prune", "ar"], d);
    assert!(err.contains("no retention rule"), "{err}");
    let err = fails(&["prune", "ar", "--keep-last", "0"], d);
    assert!(err.contains("keeps 0"), "{err}");
    // A folder backup has nothing to prune.
    ok(
        &["backup", "--source", "sqlite:src.db", "--to", "folder"],
        d,
    );
    let err = fails(&["prune", "folder", "--keep-last", "1"], d);
    assert!(err.contains("folder backup"), "{err}");

    // An archive deleted by hand (not pruned) before a full archive is reported as missing.
    let names = archives(&d.join("ar"));
    let third: PathBuf = d.join("ar").join(&names[2]);
    std::fs::remove_file(third).unwrap();
    let err = fails(&["verify", "ar"], d);
    assert!(
        err.contains("missing") && err.contains("not pruned"),
        "{err}"
    );
}

/// `src.db` in `d`: table `t` of 10,000 rows of 50 random bytes, tracked.
fn tracked_blobs(d: &Path) {
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO t SELECT i, randomblob(50) FROM n;",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
}

/// A new chain `d/ar` of twelve full archives, a twelfth of the rows changed before each.
fn twelve_fulls(d: &Path) {
    let _ = std::fs::remove_dir_all(d.join("ar"));
    for i in 0..12 {
        sql(
            &d.join("src.db"),
            &format!("UPDATE t SET v = randomblob(50) WHERE id % 12 = {i};"),
        );
        ok(&[&ARCHIVE_BACKUP[..], &["--full"]].concat(), d);
    }
}

/// A verify that runs while a prune removes archives (the prune holds the writer lock, readers
/// take none) called the backup damaged: an archive it had listed was gone when it opened it.
/// It now lists the chain again and verifies it as it stands. Three rounds of a verify started
/// beside a `prune --keep-last 1` of twelve full archives: every verify calls the chain intact
/// (before: 8 of 8 such rounds reported "damaged: ... No such file or directory").
#[test]
fn a_verify_beside_a_prune_is_not_fooled_by_removed_archives() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tracked_blobs(d);
    for round in 0..3 {
        twelve_fulls(d);
        let dir = d.to_path_buf();
        let verify = std::thread::spawn(move || {
            std::process::Command::new(common::bin())
                .args(["verify", "ar"])
                .current_dir(dir)
                .output()
                .unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(20 * round));
        ok(&["prune", "ar", "--keep-last", "1"], d);
        let out = verify.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}: {text}");
        assert!(text.contains("is intact"), "round {round}: {text}");
    }
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&d.join("src.db")), "after");
}

/// The same for a restore of a point (`--at`, which surveys the whole chain; the newest point
/// reads only its own path): an archive it had listed was gone when it opened its manifest, and
/// the restore failed. It now surveys the chain again. Three rounds of a restore `--at` the
/// newest checkpoint started beside a `prune --keep-last 1` of twelve full archives: every
/// restore equals the source (the sqlite3 shell).
#[test]
fn a_restore_at_a_point_beside_a_prune_is_not_fooled_by_removed_archives() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tracked_blobs(d);
    for round in 0..3u64 {
        twelve_fulls(d);
        let listed = ok(&["list", "ar", "--json"], d);
        let newest = listed
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["to"].as_u64())
            .max()
            .unwrap();
        let target = format!("sqlite:r{round}.db");
        let dir = d.to_path_buf();
        let restore = std::thread::spawn(move || {
            std::process::Command::new(common::bin())
                .args(["restore", "--from", "ar", "--to", &target, "--at"])
                .arg(newest.to_string())
                .current_dir(dir)
                .output()
                .unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(10 * round));
        ok(&["prune", "ar", "--keep-last", "1"], d);
        let out = restore.join().unwrap();
        assert!(out.status.success(), "round {round}: {out:?}");
        assert_same_dump(
            &dump(&d.join(format!("r{round}.db"))),
            &dump(&d.join("src.db")),
            "beside the prune",
        );
    }
}

/// A flipped byte in the prune log damages one line: verify reports that line (exit 3), while
/// restore (read back with the sqlite3 shell), list, prune, compact and backups go on with the
/// other lines. Before, the one line made every command refuse the whole chain.
#[test]
fn a_damaged_line_of_the_prune_log_is_reported_and_stops_nothing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    two_segments(d);
    ok(&["prune", "ar", "--keep-last", "1"], d);
    let log = d.join("ar/.tidemark-pruned");
    let mut bytes = std::fs::read(&log).unwrap();
    assert!(bytes.iter().filter(|&&b| b == b'\n').count() >= 2);
    bytes[5] ^= 0x01; // inside the first line's first field name
    std::fs::write(&log, &bytes).unwrap();

    let v = common::tidemark(&["verify", "ar"], d);
    assert_eq!(v.status.code(), Some(3));
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(err.contains(".tidemark-pruned: line 1"), "{err}");
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&d.join("src.db")), "restore");
    ok(&["list", "ar"], d);
    sql(
        &d.join("src.db"),
        "UPDATE t SET v = 'after' WHERE id % 2 = 0;",
    );
    ok(&ARCHIVE_BACKUP, d);
    ok(&["prune", "ar", "--keep-last", "1"], d);
    ok(&["compact", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "sqlite:r2.db"], d);
    assert_same_dump(&dump(&d.join("r2.db")), &dump(&d.join("src.db")), "after");
    // The damaged line is kept, not rewritten: verify goes on saying so.
    let v = common::tidemark(&["verify", "ar"], d);
    assert_eq!(v.status.code(), Some(3));
}
