//! Crash safety: `tidemark backup` killed (SIGKILL) at chosen moments, then run again, always
//! ends with a backup that restores exactly; an interrupted backup is never mistaken for a
//! finished one.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, sql, tidemark};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts a backup and SIGKILLs it after `ms` milliseconds (if it is still running).
fn killed_backup(cwd: &Path, ms: u64) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args([
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "bk",
            "--quiet",
        ])
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let killed = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    killed
}

#[test]
fn backups_killed_at_any_moment_are_completed_by_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT, pic BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
         INSERT INTO t SELECT i, printf('row %d', i), randomblob(512) FROM n;",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let mut kills = 0;
    // Full backups killed early, midway and late (a killed first run leaves no manifest).
    for ms in [30, 150, 400] {
        if killed_backup(d, ms) {
            kills += 1;
            let v = tidemark(&["restore", "--from", "bk", "--to", "sqlite:never.db"], d);
            assert!(!v.status.success() && !d.join("never.db").exists());
        }
    }
    ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
    ok(&["restore", "--from", "bk", "--to", "sqlite:r0.db"], d);
    assert!(
        dump(&d.join("r0.db")) == dump(&db),
        "full backup after kills restores exactly"
    );
    // Incrementals killed midway.
    for (round, ms) in [60u64, 200].into_iter().enumerate() {
        sql(
            &db,
            &format!(
                "UPDATE t SET body = 'round {round} ' || id WHERE id % 2 = {};
                 DELETE FROM t WHERE id % 97 = {round};
                 INSERT INTO t(body, pic) SELECT 'new', randomblob(100) FROM t LIMIT 300;",
                round % 2
            ),
        );
        if killed_backup(d, ms) {
            kills += 1;
            // The folder is mid-update: verify and restore say so instead of trusting it.
            let v = tidemark(&["verify", "bk"], d);
            let e = String::from_utf8_lossy(&v.stderr);
            assert!(!v.status.success() && e.contains("interrupted"), "{e}");
        }
        let out = ok(&["backup", "--source", "sqlite:src.db", "--to", "bk"], d);
        assert!(out.contains("Backup (incremental)"), "{out}");
        let r = format!("r{}.db", round + 1);
        ok(
            &["restore", "--from", "bk", "--to", &format!("sqlite:{r}")],
            d,
        );
        assert!(
            dump(&d.join(&r)) == dump(&db),
            "round {round} restores exactly"
        );
        ok(&["verify", "bk"], d);
    }
    assert!(
        kills >= 2,
        "the test must actually interrupt backups (killed {kills})"
    );
}
