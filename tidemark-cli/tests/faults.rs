//! The fault suite: every command killed at every crash point (each rename and fsync that
//! durability depends on; `TIDEMARK_CRASH_AT=N` aborts the process at the N-th, as `kill -9`
//! would), then checked with independent clients:
//!
//! - after a killed backup, `verify` and `restore` agree (a backup verify calls intact restores,
//!   and restores a state the source really had); the next backup succeeds, and the destination
//!   then verifies and restores equal to the source;
//! - after a killed `restore --force`, the target holds the complete old database or the
//!   complete new one, never neither, and the next restore leaves no temporary files.
//!
//! Each case runs until a run reaches no more crash points, so every point is tried. The
//! stores' own tests cover RocksDB's and sled's sources; here the source is SQLite (written by
//! the `sqlite3` shell) and targets are of every kind.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, sql};

use std::path::Path;
use std::process::Command;

/// Runs `tidemark` with crash point `n` armed. Returns `true` if it was killed there, `false`
/// if it finished (it has fewer than `n` points); any other failure fails the test.
fn run_crashing(args: &[&str], d: &Path, n: u64) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .env("TIDEMARK_CRASH_AT", n.to_string())
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert!(!err.contains("crash point"), "{err}");
        return false;
    }
    assert!(
        err.contains(&format!("crash point {n} reached")),
        "{args:?} failed without reaching crash point {n}: {err}"
    );
    true
}

fn source(d: &Path) {
    sql(
        &d.join("src.db"),
        "PRAGMA journal_mode=WAL;
         CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, pic BLOB);
         CREATE TABLE tags(name TEXT PRIMARY KEY) WITHOUT ROWID;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12)
         INSERT INTO users SELECT i, printf('user %d', i), randomblob(64) FROM n;
         INSERT INTO tags VALUES ('red'), ('blue');",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
}

fn change(d: &Path) {
    sql(
        &d.join("src.db"),
        "UPDATE users SET name = 'renamed' WHERE id IN (2, 3);
         DELETE FROM users WHERE id = 4;
         INSERT INTO users VALUES (100, 'new', x'00ff');
         DELETE FROM tags WHERE name = 'red';",
    );
}

/// Restores `dest` into a new SQLite file and returns its dump, or `None` if restore refused.
fn restored(d: &Path, dest: &str, name: &str) -> Option<String> {
    let out = common::tidemark(
        &["restore", "--from", dest, "--to", &format!("sqlite:{name}")],
        d,
    );
    if !out.status.success() {
        assert!(!d.join(name).exists(), "a refused restore leaves no target");
        return None;
    }
    Some(dump(&d.join(name)))
}

fn backups_killed_everywhere(format: &str, incremental: bool) -> u64 {
    let mut n = 1;
    loop {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        source(d);
        let backup = ["backup", "--source", "sqlite:src.db", "--to", "bk", "--format", format];
        let mut states = vec![];
        if incremental {
            ok(&backup, d);
            states.push(dump(&d.join("src.db")));
            change(d);
        }
        states.push(dump(&d.join("src.db")));
        if !run_crashing(&backup, d, n) {
            return n - 1;
        }
        let what = format!("{format}, {}, killed at point {n}", if incremental { "incremental" } else { "full" });
        // verify and restore agree, and a restore is a state the source had.
        let verified = common::tidemark(&["verify", "bk"], d).status.success();
        match restored(d, "bk", "after-kill.db") {
            Some(got) => assert!(
                states.contains(&got),
                "{what}: the restore is no state the source had"
            ),
            None => assert!(!verified, "{what}: verify called intact what restore refuses"),
        }
        // The next run repairs everything.
        ok(&backup, d);
        ok(&["verify", "bk"], d);
        let got = restored(d, "bk", "repaired.db").unwrap_or_else(|| panic!("{what}: restore"));
        common::assert_same_dump(&got, states.last().unwrap(), &what);
        // And the run after that is a normal one.
        change(d);
        ok(&backup, d);
        let got = restored(d, "bk", "later.db").unwrap();
        common::assert_same_dump(&got, &dump(&d.join("src.db")), &what);
        n += 1;
    }
}

#[test]
fn folder_full_backups_killed_at_every_point() {
    let points = backups_killed_everywhere("folder", false);
    assert!(points >= 4, "only {points} crash points");
}

#[test]
fn folder_incrementals_killed_at_every_point() {
    let points = backups_killed_everywhere("folder", true);
    assert!(points >= 4, "only {points} crash points");
}

#[test]
fn archive_full_backups_killed_at_every_point() {
    let points = backups_killed_everywhere("archive", false);
    assert!(points >= 4, "only {points} crash points");
}

#[test]
fn archive_incrementals_killed_at_every_point() {
    let points = backups_killed_everywhere("archive", true);
    assert!(points >= 4, "only {points} crash points");
}

/// What a target of `kind` at `path` holds, as a sorted text (or `None` if nothing is there).
fn target_state(d: &Path, kind: &str, path: &str) -> Option<String> {
    let p = d.join(path);
    if !p.exists() {
        return None;
    }
    // SQLite: its dump (the `sqlite3` shell). Other stores: backed up and restored into SQLite,
    // then dumped (both the old and the new database are read the same way).
    match kind {
        "sqlite" => Some(dump(&p)),
        _ => {
            let tmp = tempfile::tempdir().unwrap();
            let out = common::tidemark(
                &[
                    "backup",
                    "--source",
                    &format!("{kind}:{}", p.display()),
                    "--to",
                    &tmp.path().join("bk").display().to_string(),
                    "--quiet",
                ],
                d,
            );
            if !out.status.success() {
                return Some(format!(
                    "unreadable: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let copy = tmp.path().join("copy.db");
            ok(
                &[
                    "restore",
                    "--from",
                    &tmp.path().join("bk").display().to_string(),
                    "--to",
                    &format!("sqlite:{}", copy.display()),
                ],
                d,
            );
            Some(dump(&copy))
        }
    }
}

fn restores_killed_everywhere(kind: &str) -> u64 {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    source(d);
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    sql(&d.join("old-src.db"), "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'old');");
    ok(&["backup", "--source", "sqlite:old-src.db", "--to", "bk-old"], d);
    let target = format!("{kind}:target");
    let path = "target";
    ok(&["restore", "--from", "bk", "--to", &format!("{kind}:expected")], d);
    let new_state = target_state(d, kind, "expected").unwrap();
    let mut n = 1;
    loop {
        // A fresh old database at the target.
        let _ = std::fs::remove_dir_all(d.join(path));
        let _ = std::fs::remove_file(d.join(path));
        ok(&["restore", "--from", "bk-old", "--to", &target], d);
        let old = target_state(d, kind, path).unwrap();
        assert!(old != new_state);
        let crashed = run_crashing(&["restore", "--from", "bk", "--to", &target, "--force"], d, n);
        let now = target_state(d, kind, path);
        let now = now.unwrap_or_else(|| panic!("{kind}, killed at point {n}: the target is gone"));
        assert!(
            now == old || now == new_state,
            "{kind}, killed at point {n}: the target is neither the old nor the new database"
        );
        if !crashed {
            assert!(now == new_state);
            return n - 1;
        }
        // The next restore completes and cleans up.
        ok(&["restore", "--from", "bk", "--to", &target, "--force"], d);
        assert!(target_state(d, kind, path).unwrap() == new_state);
        let debris: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tidemark-restore"))
            .collect();
        assert!(debris.is_empty(), "{kind}, point {n}: {debris:?}");
        n += 1;
    }
}

#[test]
fn sqlite_restores_killed_at_every_point() {
    assert!(restores_killed_everywhere("sqlite") >= 2);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_restores_killed_at_every_point() {
    assert!(restores_killed_everywhere("rocksdb") >= 2);
}

#[cfg(feature = "sled")]
#[test]
fn sled_restores_killed_at_every_point() {
    assert!(restores_killed_everywhere("sled") >= 2);
}
