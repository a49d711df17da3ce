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
//! Backups are killed for the folder format, archive chains and (SQLite) encrypted archive
//! chains, whose first run also writes the key file.
//!
//! Each case runs until a run reaches no more crash points, so every point is tried. Sources
//! and targets are of every kind: SQLite written by the `sqlite3` shell, RocksDB written by an
//! application keeping its WAL, plain sled; each read back by its own independent client.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, sql};

use std::path::Path;
use std::process::Command;

/// Runs `tidemark` with crash point `n` armed. Returns `true` if it was killed there, `false`
/// if it finished (it has fewer than `n` points); any other failure fails the test.
fn run_crashing(args: &[&str], d: &Path, n: u64) -> bool {
    let out = Command::new(common::bin())
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

/// A store kind the backup fault cases run against: how its application writes, and how an
/// independent client reads a database of it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    #[cfg(feature = "rocksdb")]
    Rocksdb,
    #[cfg(feature = "sled")]
    Sled,
}

impl Kind {
    fn url(self, name: &str) -> String {
        match self {
            Kind::Sqlite => format!("sqlite:{name}.db"),
            #[cfg(feature = "rocksdb")]
            Kind::Rocksdb => format!("rocksdb:{name}"),
            #[cfg(feature = "sled")]
            Kind::Sled => format!("sled:{name}"),
        }
    }

    fn path(self, d: &Path, name: &str) -> std::path::PathBuf {
        match self {
            Kind::Sqlite => d.join(format!("{name}.db")),
            #[allow(unreachable_patterns)]
            _ => d.join(name),
        }
    }

    /// Creates the source `src` with a first state.
    fn create(self, d: &Path) {
        match self {
            Kind::Sqlite => source(d),
            #[allow(unreachable_patterns)]
            _ => {
                let ops: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..12u32)
                    .map(|i| {
                        (
                            i.to_be_bytes().to_vec(),
                            Some(vec![i as u8; 20 + i as usize]),
                        )
                    })
                    .collect();
                self.write(d, &ops);
            }
        }
    }

    /// The application changes the source (round `round`).
    fn change(self, d: &Path, round: u32) {
        match self {
            Kind::Sqlite => change(d, round),
            #[allow(unreachable_patterns)]
            _ => self.write(
                d,
                &[
                    (
                        2u32.to_be_bytes().to_vec(),
                        Some(format!("renamed {round}").into_bytes()),
                    ),
                    ((4 + round).to_be_bytes().to_vec(), None),
                    ((100 + round).to_be_bytes().to_vec(), Some(vec![0, 0xff])),
                ],
            ),
        }
    }

    /// Writes to `users` as the application (RocksDB keeping its WAL; plain sled).
    #[allow(unused_variables)]
    fn write(self, d: &Path, ops: &[(Vec<u8>, Option<Vec<u8>>)]) {
        match self {
            Kind::Sqlite => unreachable!("SQLite sources are written with the sqlite3 shell"),
            #[cfg(feature = "rocksdb")]
            Kind::Rocksdb => {
                let mut opts = rocksdb::Options::default();
                opts.create_if_missing(true);
                opts.create_missing_column_families(true);
                opts.set_wal_ttl_seconds(3600);
                let db = rocksdb::DB::open_cf(&opts, d.join("src"), ["users"]).unwrap();
                let cf = db.cf_handle("users").unwrap();
                for (k, v) in ops {
                    match v {
                        Some(v) => db.put_cf(&cf, k, v).unwrap(),
                        None => db.delete_cf(&cf, k).unwrap(),
                    }
                }
            }
            #[cfg(feature = "sled")]
            Kind::Sled => {
                let db = common::open_sled(&d.join("src"));
                let tree = db.open_tree("users").unwrap();
                for (k, v) in ops {
                    match v {
                        Some(v) => tree.insert(k, v.clone()).map(|_| ()).unwrap(),
                        None => tree.remove(k).map(|_| ()).unwrap(),
                    }
                }
                db.flush().unwrap();
            }
        }
    }

    /// Everything the database `name` holds, read by an independent client.
    fn content(self, d: &Path, name: &str) -> String {
        let path = self.path(d, name);
        match self {
            Kind::Sqlite => dump(&path),
            #[cfg(feature = "rocksdb")]
            Kind::Rocksdb => {
                let opts = rocksdb::Options::default();
                let names = rocksdb::DB::list_cf(&opts, &path).unwrap();
                let db = rocksdb::DB::open_cf_for_read_only(&opts, &path, &names, false).unwrap();
                let mut out = String::new();
                for n in &names {
                    let cf = db.cf_handle(n).unwrap();
                    for item in db.iterator_cf(&cf, rocksdb::IteratorMode::Start) {
                        let (k, v) = item.unwrap();
                        out.push_str(&format!("{n} {k:?} {v:?}\n"));
                    }
                }
                out
            }
            #[cfg(feature = "sled")]
            Kind::Sled => {
                let db = common::open_sled(&path);
                let mut names: Vec<_> = db
                    .tree_names()
                    .into_iter()
                    .filter(|n| !n.starts_with(b"__tidemark_"))
                    .collect();
                names.sort();
                let mut out = String::new();
                for n in names {
                    for item in db.open_tree(&n).unwrap().iter() {
                        let (k, v) = item.unwrap();
                        out.push_str(&format!("{n:?} {k:?} {v:?}\n"));
                    }
                }
                out
            }
        }
    }
}

fn change(d: &Path, round: u32) {
    sql(
        &d.join("src.db"),
        &format!(
            "UPDATE users SET name = 'renamed {round}' WHERE id IN (2, 3);
             DELETE FROM users WHERE id = {};
             INSERT INTO users VALUES ({}, 'new', x'00ff');
             DELETE FROM tags WHERE name = 'red';
             INSERT INTO tags VALUES ('t{round}');",
            4 + round,
            100 + round
        ),
    );
}

/// Restores `dest` into a new database `name` of `kind` (with `extra` arguments: the key of an
/// encrypted chain) and returns what it holds, or `None` if restore refused.
fn restored_with(kind: Kind, d: &Path, dest: &str, name: &str, extra: &[&str]) -> Option<String> {
    let url = kind.url(name);
    let mut args = vec!["restore", "--from", dest, "--to", &url];
    args.extend_from_slice(extra);
    let out = common::tidemark(&args, d);
    if !out.status.success() {
        assert!(
            !kind.path(d, name).exists(),
            "a refused restore leaves no target"
        );
        return None;
    }
    Some(kind.content(d, name))
}

/// How the killed backup relates to the destination.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// The first backup into an empty destination.
    Full,
    /// An incremental after a change.
    Incremental,
    /// `--full` over a complete backup, after a change (a folder refreshes it in place).
    FullOverExisting,
}

/// Kills a backup of `kind` at every crash point; returns how many points it has. `format` is
/// `folder`, `archive`, or `encrypted` (an archive chain sealed to an age recipient, whose key
/// file the first run writes: its key state in `cache` under the test's directory).
fn backups_killed_everywhere(kind: Kind, format: &str, mode: Mode) -> u64 {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let (format, keys, opens): (&str, Vec<&str>, Vec<&str>) = match format {
        "encrypted" => (
            "archive",
            vec![
                "--encrypt-recipient",
                &recipient,
                "--encrypt-identity",
                "id.txt",
                "--cache",
                "cache",
            ],
            vec!["--encrypt-identity", "id.txt"],
        ),
        other => (other, vec![], vec![]),
    };
    let label = if keys.is_empty() { format } else { "encrypted" };
    let mut n = 1;
    loop {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        kind.create(d);
        std::fs::write(d.join("id.txt"), identity.to_string().expose_secret()).unwrap();
        let src = kind.url("src");
        let mut backup = vec!["backup", "--source", &src, "--to", "bk", "--format", format];
        backup.extend_from_slice(&keys);
        let mut verify = vec!["verify", "bk"];
        verify.extend_from_slice(&opens);
        let backup = &backup[..];
        let mut killed: Vec<&str> = backup.to_vec();
        let mut states = vec![];
        if mode != Mode::Full {
            ok(backup, d);
            states.push(kind.content(d, "src"));
            kind.change(d, 0);
        }
        if mode == Mode::FullOverExisting {
            killed.push("--full");
        }
        states.push(kind.content(d, "src"));
        if !run_crashing(&killed, d, n) {
            let points = n - 1;
            println!("{kind:?} {label} {mode:?}: {points} crash points, each killed and repaired");
            return points;
        }
        let what = format!("{kind:?}, {label}, {mode:?}, killed at point {n}");
        // verify and restore agree, and a restore is a state the source had.
        let verified = common::tidemark(&verify, d).status.success();
        match restored_with(kind, d, "bk", "after-kill", &opens) {
            Some(got) => assert!(
                states.contains(&got),
                "{what}: the restore is no state the source had"
            ),
            None => assert!(
                !verified,
                "{what}: verify called intact what restore refuses"
            ),
        }
        // The next run repairs everything.
        ok(backup, d);
        ok(&verify, d);
        let got = restored_with(kind, d, "bk", "repaired", &opens)
            .unwrap_or_else(|| panic!("{what}: restore"));
        common::assert_same_dump(&got, states.last().unwrap(), &what);
        // And the run after that is a normal one.
        kind.change(d, 1);
        ok(backup, d);
        let got = restored_with(kind, d, "bk", "later", &opens).unwrap();
        common::assert_same_dump(&got, &kind.content(d, "src"), &what);
        n += 1;
    }
}

fn all_backups_killed_everywhere(kind: Kind) {
    // An encrypted chain for SQLite only: sealing is below the store (the same for all).
    let formats: &[&str] = match kind {
        Kind::Sqlite => &["folder", "archive", "encrypted"],
        _ => &["folder", "archive"],
    };
    for &format in formats {
        for mode in [Mode::Full, Mode::Incremental, Mode::FullOverExisting] {
            let points = backups_killed_everywhere(kind, format, mode);
            assert!(points >= 4, "{kind:?} {format}: only {points} crash points");
        }
    }
}

#[test]
fn sqlite_backups_killed_at_every_point() {
    all_backups_killed_everywhere(Kind::Sqlite);
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_backups_killed_at_every_point() {
    all_backups_killed_everywhere(Kind::Rocksdb);
}

#[cfg(feature = "sled")]
#[test]
fn sled_backups_killed_at_every_point() {
    all_backups_killed_everywhere(Kind::Sled);
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
    ok(
        &["backup", "--source", "sqlite:old-src.db", "--to", "bk-old"],
        d,
    );
    let target = format!("{kind}:target");
    let path = "target";
    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            &format!("{kind}:expected"),
        ],
        d,
    );
    let new_state = target_state(d, kind, "expected").unwrap();
    let mut n = 1;
    loop {
        // A fresh old database at the target.
        let _ = std::fs::remove_dir_all(d.join(path));
        let _ = std::fs::remove_file(d.join(path));
        ok(&["restore", "--from", "bk-old", "--to", &target], d);
        let old = target_state(d, kind, path).unwrap();
        assert!(old != new_state);
        let crashed = run_crashing(
            &["restore", "--from", "bk", "--to", &target, "--force"],
            d,
            n,
        );
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

/// `tidemark compact --keep-last 3` (compaction, then retention) killed at every crash point,
/// on a chain of a full archive and nine incrementals: after each kill, verify calls the chain
/// intact, every point `list` still shows restores to exactly the database the `sqlite3` shell
/// read at that backup, and the three kept points are always among them; the next run
/// completes the work and the chain then holds only what the kept points need.
#[test]
fn compaction_killed_at_every_point() {
    let setup = tempfile::tempdir().unwrap();
    let s = setup.path();
    source(s);
    let backup = [
        "backup",
        "--source",
        "sqlite:src.db",
        "--to",
        "bk",
        "--format",
        "archive",
    ];
    let mut states = vec![];
    for round in 0..10 {
        if round > 0 {
            change(s, round);
        }
        ok(&backup, s);
        states.push(dump(&s.join("src.db")));
    }
    let compact = ["compact", "bk", "--fanout", "3", "--keep-last", "3"];
    let mut n = 1;
    loop {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let copy = Command::new("cp")
            .args(["-a", "bk"])
            .arg(d)
            .current_dir(s)
            .status()
            .unwrap();
        assert!(copy.success());
        if !run_crashing(&compact, d, n) {
            assert!(n > 8, "only {} crash points", n - 1);
            break;
        }
        let what = format!("compact killed at point {n}");
        every_point_restores(d, &states, &what);
        // The next run finishes the work: only what the kept points' cheapest paths need
        // stays (1, 2..3, 4..6, 7, 8 for point 8; 2..9 for 9; 10).
        ok(&compact, d);
        let archives = ok(&["list", "bk", "--json"], d)
            .lines()
            .filter(|l| l.contains("\"type\":\"archive\""))
            .count();
        assert_eq!(archives, 7, "{what}: archives left");
        every_point_restores(d, &states, &format!("{what}, then completed"));
        n += 1;
    }
}

/// Verify calls `bk` (in `d`) intact, the points retention keeps (8, 9, 10) are there, and a
/// restore at every point `list` shows is exactly the database at that backup.
fn every_point_restores(d: &Path, states: &[String], what: &str) {
    ok(&["verify", "bk"], d);
    let mut points: Vec<(usize, String)> = ok(&["list", "bk", "--json"], d)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "archive")
        .map(|v| {
            (
                v["sequence"].as_u64().unwrap() as usize,
                v["to"].to_string(),
            )
        })
        .collect();
    points.dedup();
    for seq in 8..=10 {
        assert!(
            points.iter().any(|(s, _)| *s == seq),
            "{what}: kept point {seq} is gone"
        );
    }
    for (seq, at) in &points {
        let name = format!("at-{seq}-{}.db", what.len());
        ok(
            &[
                "restore",
                "--from",
                "bk",
                "--at",
                at,
                "--to",
                &format!("sqlite:{name}"),
            ],
            d,
        );
        common::assert_same_dump(
            &dump(&d.join(&name)),
            &states[seq - 1],
            &format!("{what}: restore at {seq}"),
        );
        std::fs::remove_file(d.join(&name)).unwrap();
    }
}
