//! Archive chains end to end: full + incrementals, point-in-time restores, damage anywhere,
//! hostile entry names, crash safety, codecs, and reading archives with standard tools.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::archive_paths as archives;
use common::{assert_same_dump, checkpoint_of, dump, fails, ok, sql, tidemark, ARCHIVE_BACKUP};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `src.db` in `d`: table `t(id INTEGER PRIMARY KEY, v TEXT)` with `rows` rows, tracked.
fn tracked_rows(d: &Path, rows: u32) -> PathBuf {
    let db = d.join("src.db");
    sql(
        &db,
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO t SELECT i, 'value ' || i FROM n;"
        ),
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    db
}

/// A SQLite source with a full and three incremental archives; the source's dump at each one.
fn chain(d: &Path, extra: &[&str]) -> Vec<(u64, String)> {
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, pic BLOB);
         CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE INDEX t_name ON t(name);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t SELECT i, 'name ' || i, randomblob(i % 40) FROM n;
         INSERT INTO kv VALUES ('a', 1), ('b', 2.5);",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let rounds = [
        "",
        "UPDATE t SET name = 'renamed' WHERE id % 7 = 0; DELETE FROM t WHERE id > 290;",
        "INSERT INTO kv VALUES ('c', x'00ff'); DELETE FROM kv WHERE k = 'a'; CREATE TABLE late(x PRIMARY KEY);",
        "INSERT INTO late VALUES (1), (2); UPDATE t SET pic = NULL WHERE id < 10; DROP INDEX t_name;",
    ];
    let mut states = Vec::new();
    for (i, round) in rounds.iter().enumerate() {
        if !round.is_empty() {
            sql(&db, round);
        }
        let mut args = ARCHIVE_BACKUP.to_vec();
        args.extend_from_slice(extra);
        let out = ok(&args, d);
        assert!(
            out.contains(if i == 0 {
                "Archive (full)"
            } else {
                "Archive (incremental)"
            }),
            "{out}"
        );
        let newest = archives(&d.join("ar")).pop().unwrap();
        states.push((checkpoint_of(&newest), dump(&db)));
    }
    states
}

#[test]
fn every_checkpoint_of_the_chain_restores_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = chain(d, &[]);
    assert_eq!(archives(&d.join("ar")).len(), 4);
    let v = ok(&["verify", "ar"], d);
    assert!(v.contains("intact"), "{v}");
    let list = ok(&["list", "ar"], d);
    assert_eq!(list.lines().count(), 5, "{list}");
    for (i, (at, want)) in states.iter().enumerate() {
        let target = format!("sqlite:at-{i}.db");
        ok(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                &target,
                "--at",
                &at.to_string(),
            ],
            d,
        );
        assert_same_dump(
            &dump(&d.join(format!("at-{i}.db"))),
            want,
            &format!("--at {at}"),
        );
    }
    ok(&["restore", "--from", "ar", "--to", "sqlite:newest.db"], d);
    assert_same_dump(
        &dump(&d.join("newest.db")),
        &states.last().unwrap().1,
        "newest",
    );
    // A checkpoint no backup ends at: the error names the ones there are.
    let unknown_at = || {
        fails(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                "sqlite:x.db",
                "--at",
                "999999",
            ],
            d,
        )
    };
    let e = unknown_at();
    let available: Vec<String> = states.iter().map(|(at, _)| at.to_string()).collect();
    let available = format!("(available: {})", available.join(", "));
    assert!(
        e.contains("no backup ends at that checkpoint") && e.contains(&available),
        "{e}"
    );
    // A backup with nothing to add ends where the one before did: each checkpoint is still
    // named once (before, the last one was named twice).
    ok(&ARCHIVE_BACKUP, d);
    let e = unknown_at();
    assert!(e.contains(&available), "{e}");
    // A local date and time without an offset (TZ names it here) and a time ago.
    let at = |when: &str, target: &str| {
        Command::new(common::bin())
            .current_dir(d)
            .env("TZ", "UTC")
            .args(["restore", "--from", "ar", "--to", target, "--at", when])
            .output()
            .unwrap()
    };
    let out = at("2999-01-01 00:00:00", "sqlite:local-time.db");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_dump(
        &dump(&d.join("local-time.db")),
        &states.last().unwrap().1,
        "--at a local time after every capture",
    );
    let out = at("-1d", "sqlite:a-day-ago.db");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("no backup was captured at or before that time"),
        "{e}"
    );
    let out = at("-2x", "sqlite:bad.db");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("a time ago is"), "{e}");
    // Standard tools read it: a collection's records are JSON lines for jq.
    let first = archives(&d.join("ar")).remove(0);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "unzip -p '{}' 'data/t/*' | jq -r 'select(.key == \"1\") | .row.name'",
            first.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "name 1");
}

/// A table dropped, then created again (SQLite's change capture cannot follow the new table,
/// so that run is a full archive): every checkpoint restores exactly, also one collection.
/// The incremental path of the same case is in `sled_cli.rs`.
#[test]
fn a_table_dropped_and_created_again_restores_at_every_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         CREATE TABLE t(id INTEGER PRIMARY KEY, n);
         INSERT INTO kv VALUES ('a', 1), ('b', 2);
         INSERT INTO t VALUES (1, 1), (2, 2), (3, 3);",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let backup = |d: &Path| ok(&ARCHIVE_BACKUP, d);
    let mut states = Vec::new();
    for round in [
        "",
        "DROP TABLE kv; UPDATE t SET n = 20 WHERE id = 2; DELETE FROM t WHERE id = 3;",
        "CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO kv VALUES ('z', 9);
         UPDATE t SET n = 200 WHERE id = 2; INSERT INTO t VALUES (3, 'back');",
    ] {
        if !round.is_empty() {
            sql(&db, round);
        }
        backup(d);
        let newest = archives(&d.join("ar")).pop().unwrap();
        states.push((checkpoint_of(&newest), dump(&db)));
    }
    for (i, (at, want)) in states.iter().enumerate() {
        let target = format!("sqlite:at-{i}.db");
        ok(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                &target,
                "--at",
                &at.to_string(),
            ],
            d,
        );
        assert_same_dump(
            &dump(&d.join(format!("at-{i}.db"))),
            want,
            &format!("--at {at}"),
        );
    }
    // One collection only: the newest kv, nothing of t.
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:kv.db",
            "--collections",
            "kv",
        ],
        d,
    );
    let out = Command::new("sqlite3")
        .arg(d.join("kv.db"))
        .arg("SELECT group_concat(k || '=' || v) FROM kv; SELECT count(*) FROM sqlite_master WHERE name = 't';")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "z=9\n0\n");
}

#[test]
fn a_flipped_byte_anywhere_is_found_and_nothing_is_restored() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    chain(d, &[]);
    let files = archives(&d.join("ar"));
    let mut rng = 0x9E3779B97F4A7C15u64;
    for file in &files {
        let original = std::fs::read(file).unwrap();
        let n = original.len();
        let mut spots = vec![0, n / 2, n - 1, n - 30];
        for _ in 0..6 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            spots.push((rng % n as u64) as usize);
        }
        for pos in spots {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(file, &bytes).unwrap();
            let v = tidemark(&["verify", "ar"], d);
            assert!(
                !v.status.success(),
                "{}: byte {pos} flipped, verify passed",
                file.display()
            );
            let e = String::from_utf8_lossy(&v.stderr);
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            assert!(e.contains(&name), "the damaged file is named: {e}");
            let r = tidemark(&["restore", "--from", "ar", "--to", "sqlite:never.db"], d);
            assert!(!r.status.success(), "restore refused");
            assert!(!d.join("never.db").exists(), "nothing written");
        }
        std::fs::write(file, &original).unwrap();
    }
    ok(&["verify", "ar"], d);
}

#[test]
fn hostile_entry_names_are_refused() {
    for bad in [
        "../escape/1/document.json",
        "/abs/1/document.json",
        "t/../../x/document.json",
    ] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        chain(d, &[]);
        let ar = d.join("ar");
        // The newest archive rewritten with one extra entry before the manifest, renamed with
        // its correct file CRC32.
        let newest = archives(&ar).pop().unwrap();
        {
            let mut old = zip::ZipArchive::new(std::fs::File::open(&newest).unwrap()).unwrap();
            let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            for i in 0..old.len() {
                let entry = old.by_index_raw(i).unwrap();
                if entry.name() == "tidemark/manifest.json" {
                    z.start_file(bad, zip::write::SimpleFileOptions::default())
                        .unwrap();
                    z.write_all(b"{}").unwrap();
                }
                z.raw_copy_file(entry).unwrap();
            }
            std::fs::write(&newest, z.finish().unwrap().into_inner()).unwrap();
        }
        let crc = crc32fast::hash(&std::fs::read(&newest).unwrap());
        let name = newest.file_name().unwrap().to_string_lossy().into_owned();
        let renamed = ar.join(format!("{}{crc:08x}.zip", &name[..name.len() - 12]));
        std::fs::rename(&newest, &renamed).unwrap();
        // The chain head would name the replaced file first; this test is about the entry
        // names, so the tampering takes the head too.
        std::fs::remove_file(ar.join(".tidemark-head")).unwrap();
        let v = tidemark(&["verify", "ar"], d);
        let e = String::from_utf8_lossy(&v.stderr);
        assert!(!v.status.success() && e.contains("refused"), "{bad}: {e}");
        let e = fails(&["restore", "--from", "ar", "--to", "sqlite:never.db"], d);
        assert!(e.contains("refused"), "{bad}: {e}");
        assert!(!d.join("never.db").exists() && !d.join("escape").exists());
        assert!(!Path::new("/abs/1/document.json").exists());
    }
}

#[test]
fn killed_or_lost_archives_leave_a_valid_chain_that_carries_on() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    chain(d, &[]);
    let db = d.join("src.db");
    // Killed mid-run: whatever it left, the chain verifies and the next run carries on.
    sql(&db, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) INSERT INTO t(name, pic) SELECT 'bulk', randomblob(2000) FROM n;");
    for ms in [40u64, 150, 400] {
        let mut child = Command::new(common::bin())
            .args(ARCHIVE_BACKUP)
            .arg("--quiet")
            .current_dir(d)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        let v = tidemark(&["verify", "ar"], d);
        assert!(
            v.status.success(),
            "after a kill at {ms} ms: {}",
            String::from_utf8_lossy(&v.stderr)
        );
    }
    ok(&ARCHIVE_BACKUP, d);
    ok(&["verify", "ar"], d);
    restores_as_source(d, &db, "after-kills", "after kills");
    // An archive lost after the key state moved on (a deleted file): the next run says so
    // and starts with a full archive.
    sql(&db, "DELETE FROM t WHERE id < 5;");
    ok(&ARCHIVE_BACKUP, d);
    let newest = archives(&d.join("ar")).pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    sql(&db, "DELETE FROM t WHERE id < 9;");
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(
        out.contains("Archive (full)") && out.contains("key state matches"),
        "{out}"
    );
    ok(&["verify", "ar"], d);
    restores_as_source(d, &db, "after-loss", "after loss");
}

/// A backup's commit renames the chain head and the key state after the archive, and fsyncs
/// their directories side by side (FORMAT §3.3): after a power cut, either rename may be durable
/// without the other, or a key state file's rename lost while `state.json`'s is kept. Each of
/// these states verifies, restores as the source was, and the next backup carries on, full
/// when the state cannot be trusted.
#[test]
fn a_power_cut_may_keep_either_rename_of_a_commit() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    chain(d, &[]);
    let db = d.join("src.db");
    let (ar, state) = (d.join("ar"), d.join("ar/.tidemark-state"));
    let head = ar.join(".tidemark-head");
    // What the cut left (`cut`) verifies and restores as the source is; after `change`, the
    // next backup's output holds every text of `want`, and its chain does the same.
    let carries_on = |cut: &str, change: &str, want: &[&str]| {
        ok(&["verify", "ar"], d);
        restores_as_source(d, &db, cut, cut);
        sql(&db, change);
        let out = ok(&ARCHIVE_BACKUP, d);
        assert!(want.iter().all(|w| out.contains(w)), "{cut}: {out}");
        ok(&["verify", "ar"], d);
        restores_as_source(d, &db, &format!("{cut}-next"), "the backup after it");
    };
    // The key state is new, the head old: the newest archive is newer than the head, which
    // verify and restore accept, and the next backup continues the chain from it.
    let old_head = std::fs::read(&head).unwrap();
    sql(&db, "UPDATE t SET name = 'cut 1' WHERE id % 3 = 0;");
    ok(&ARCHIVE_BACKUP, d);
    std::fs::write(&head, &old_head).unwrap();
    carries_on(
        "head-rename-lost",
        "DELETE FROM t WHERE id % 5 = 0;",
        &["Archive (incremental)"],
    );
    // The head is new, the key state old: it does not name the newest archive, so the next
    // archive is full and says why.
    let old_state = d.join("old-state");
    copy_dir(&state, &old_state);
    sql(&db, "UPDATE t SET name = 'cut 2' WHERE id % 4 = 0;");
    ok(&ARCHIVE_BACKUP, d);
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&old_state, &state);
    carries_on(
        "state-rename-lost",
        "INSERT INTO kv VALUES ('after cut 2', 1);",
        &["Archive (full)", "key state matches"],
    );
    // `state.json` is new but a key delta it names was not renamed: the next archive is full.
    sql(&db, "UPDATE t SET name = 'cut 3' WHERE id % 6 = 0;");
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(out.contains("Archive (incremental)"), "{out}");
    let (_, deltas) = &key_state(&state)["t"];
    let lost = deltas.last().expect("a delta after an incremental");
    std::fs::remove_file(state.join(lost)).unwrap();
    carries_on(
        "delta-rename-lost",
        "DELETE FROM t WHERE id % 11 = 0;",
        &["Archive (full)", "is missing"],
    );
}

#[test]
fn every_codec_round_trips() {
    for codec in [
        &["--compression", "zstd", "--level", "19"][..],
        &["--compression", "none"],
        &["--level", "0"],
    ] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let states = chain(d, codec);
        ok(&["verify", "ar"], d);
        ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
        assert_same_dump(
            &dump(&d.join("r.db")),
            &states.last().unwrap().1,
            &format!("{codec:?}"),
        );
    }
    let t = tempfile::tempdir().unwrap();
    sql(&t.path().join("x.db"), "CREATE TABLE a(b);");
    let e = fails(
        &[
            "backup",
            "--source",
            "sqlite:x.db",
            "--to",
            "ar",
            "--format",
            "archive",
            "--level",
            "12",
        ],
        t.path(),
    );
    assert!(e.contains("--level 12 is out of range"), "{e}");
}

/// The key state is a cache that must match the newest archive: an older state (a run killed
/// between the archive's rename and the state's, or a state copied back), a damaged one or
/// none makes the next archive full, with the reason, and every archive restores exactly.
#[test]
fn a_key_state_not_at_the_newest_archive_makes_the_next_archive_full() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let backup = || ok(&ARCHIVE_BACKUP, d);
    backup();
    let state = d.join("ar/.tidemark-state");
    let saved = d.join("saved-state");
    copy_dir(&state, &saved);
    sql(&db, "INSERT INTO t VALUES (3, 'c');");
    let out = backup();
    assert!(out.contains("Archive (incremental)"), "{out}");
    // An older state: full.
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&saved, &state);
    sql(
        &db,
        "INSERT INTO t VALUES (4, 'lost unless the next archive is full');",
    );
    let out = backup();
    assert!(
        out.contains("key state matches") && out.contains("Archive (full)"),
        "{out}"
    );
    // A damaged state: full.
    let file = state.join("state.json");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    sql(&db, "DELETE FROM t WHERE id = 1;");
    let out = backup();
    assert!(
        out.contains("key state is damaged") && out.contains("Archive (full)"),
        "{out}"
    );
    // No state: full.
    std::fs::remove_dir_all(&state).unwrap();
    sql(&db, "UPDATE t SET v = 'z' WHERE id = 2;");
    let out = backup();
    assert!(
        out.contains("is missing") && out.contains("Archive (full)"),
        "{out}"
    );
    // And back to incrementals.
    sql(&db, "INSERT INTO t VALUES (5, 'e');");
    let out = backup();
    assert!(out.contains("Archive (incremental)"), "{out}");
    ok(&["verify", "ar"], d);
    restores_as_source(d, &db, "r", "after every state");
}

/// Restores the archive chain `d/ar` into a new SQLite database `d/<name>.db` and checks that
/// the sqlite3 shell dumps it as it dumps `db`.
fn restores_as_source(d: &Path, db: &Path, name: &str, what: &str) {
    let to = format!("sqlite:{name}.db");
    ok(&["restore", "--from", "ar", "--to", &to], d);
    assert_same_dump(&dump(&d.join(format!("{name}.db"))), &dump(db), what);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Each collection's key state files as `state.json` names them: (index, deltas).
fn key_state(state_dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<String>)> {
    let text = std::fs::read_to_string(state_dir.join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for c in v["state"]["backup"]["collections"].as_array().unwrap() {
        let deltas = c["key_deltas"]
            .as_array()
            .map(|a| a.iter().map(|d| d.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        out.insert(
            c["name"].as_str().unwrap().to_string(),
            (c["key_index"].as_str().unwrap().to_string(), deltas),
        );
    }
    out
}

/// An incremental reads only the key index blocks its changes fall in. A damaged block that no
/// change reads stays unread: the incrementals meanwhile restore exactly (checked against the
/// sqlite3 shell's dump), and the fold that reads every key finds the damage and takes a full
/// archive, saying why.
#[test]
fn a_damaged_index_block_no_change_reads_is_found_by_the_fold() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = tracked_rows(d, 2000);
    let backup = || ok(&ARCHIVE_BACKUP, d);
    assert!(backup().contains("Archive (full)"));
    let state = d.join("ar/.tidemark-state");
    let (base, _) = key_state(&state)["t"].clone();
    let base = state.join(base);
    let mut bytes = std::fs::read(&base).unwrap();
    assert_eq!(&bytes[..8], b"TMKIDX03");
    // Inside the first block (ids 1 to about 80); every change below is above id 1500.
    bytes[20] ^= 0x10;
    std::fs::write(&base, bytes).unwrap();
    let mut full_at = None;
    for round in 1..=12 {
        sql(
            &db,
            &format!(
                "UPDATE t SET v = 'round {round}' WHERE id = {};
                 DELETE FROM t WHERE id = {};",
                1500 + round,
                1800 + round
            ),
        );
        let out = backup();
        if out.contains("Archive (full)") {
            assert!(
                out.contains("key index is unusable"),
                "round {round}: {out}"
            );
            full_at = Some(round);
            break;
        }
        assert!(
            out.contains("Archive (incremental)"),
            "round {round}: {out}"
        );
        restores_as_source(d, &db, &format!("r{round}"), "round");
    }
    // Eight deltas, then the fold.
    assert_eq!(full_at, Some(9));
    ok(&["verify", "ar"], d);
    restores_as_source(d, &db, "last", "after the fold");
}

/// An incremental writes the keys it changed as a delta file over the collection's index, the
/// deltas are folded into a new index before they grow (at most 8), an untouched collection
/// keeps its files, the state directory holds only what `state.json` names, and the chain
/// restores exactly after every run. A damaged delta makes the next archive full.
#[test]
fn incrementals_write_key_deltas_that_fold_into_a_new_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE still(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO t SELECT i, 'value ' || i FROM n;
         INSERT INTO still VALUES ('a', 1), ('b', 2);",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let backup = || ok(&ARCHIVE_BACKUP, d);
    assert!(backup().contains("Archive (full)"));
    let state = d.join("ar/.tidemark-state");
    let mut most = 0;
    let mut folded = false;
    let still = key_state(&state)["still"].clone();
    for round in 1..=12 {
        // About 1% of `t`: updates, deletions (also of keys deleted before) and insertions.
        sql(
            &db,
            &format!(
                "UPDATE t SET v = 'round {round}' WHERE id % 97 = {round};
                 DELETE FROM t WHERE id % 101 = {round} OR id % 101 = {};
                 INSERT INTO t VALUES ({}, 'new'), ({}, 'new');",
                round - 1,
                3000 + round,
                4000 + round
            ),
        );
        let out = backup();
        assert!(
            out.contains("Archive (incremental)"),
            "round {round}: {out}"
        );
        let files = key_state(&state);
        let (_, deltas) = &files["t"];
        if deltas.is_empty() {
            folded |= most > 0;
        }
        most = most.max(deltas.len());
        assert!(deltas.len() <= 8, "round {round}: {deltas:?}");
        assert_eq!(
            files["still"], still,
            "an untouched collection keeps its files"
        );
        // The directory holds state.json and the files it names, nothing else.
        let mut named: Vec<String> = files
            .values()
            .flat_map(|(i, ds)| std::iter::once(i.clone()).chain(ds.iter().cloned()))
            .chain(["state.json".to_string()])
            .collect();
        named.sort();
        let mut present: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        assert_eq!(present, named, "round {round}");
        // The counts come from the key state: the newest archive's must be the store's.
        let listed = ok(&["list", "ar", "--json"], d);
        let newest: serde_json::Value =
            serde_json::from_str(listed.lines().last().unwrap()).unwrap();
        let rows = Command::new("sqlite3")
            .arg(&db)
            .arg("SELECT (SELECT count(*) FROM t) + (SELECT count(*) FROM still);")
            .output()
            .unwrap();
        let rows: u64 = String::from_utf8_lossy(&rows.stdout)
            .trim()
            .parse()
            .unwrap();
        assert_eq!(newest["records_in_backup"], rows, "round {round}");
        // Verify reports what the backup holds, and how many record lines it checked: each
        // archive's records, summed over the chain.
        let summary: serde_json::Value =
            serde_json::from_str(ok(&["verify", "ar", "--json"], d).trim()).unwrap();
        let archives: Vec<serde_json::Value> = listed
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let lines: u64 = archives
            .iter()
            .map(|a| a["records_in_archive"].as_u64().unwrap())
            .sum();
        assert_eq!(summary["records_in_backup"], rows, "round {round}");
        assert_eq!(summary["records"], lines, "round {round}");
        assert_eq!(summary["archives"], archives.len(), "round {round}");
        assert!(
            lines > rows,
            "round {round}: the chain holds superseded lines"
        );
        let text = ok(&["verify", "ar"], d);
        assert!(
            text.contains(&format!("intact: {rows} records in 2 collections")),
            "round {round}: {text}"
        );
        restores_as_source(d, &db, &format!("r{round}"), "round");
    }
    assert!(
        most >= 2 && folded,
        "deltas grew to {most}, folded: {folded}"
    );
    // A flipped byte in a delta: the next archive is full, and says why.
    sql(&db, "UPDATE t SET v = 'before the damage' WHERE id = 5;");
    backup();
    let (_, deltas) = &key_state(&state)["t"];
    let victim = state.join(deltas.last().expect("a delta after one incremental"));
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    sql(
        &db,
        "DELETE FROM t WHERE id = 6; INSERT INTO t VALUES (9999, 'last');",
    );
    let out = backup();
    assert!(
        out.contains("key index is unusable") && out.contains("Archive (full)"),
        "{out}"
    );
    ok(&["verify", "ar"], d);
    restores_as_source(d, &db, "last", "after the damage");
}

/// A backup that names no codec goes on in the chain's: a chain begun with zstd is not
/// continued in deflate-9 (four times slower) because a later command left the flag out. A
/// codec named switches the chain, which then keeps the new one; a new chain is deflate.
#[test]
fn a_backup_that_names_no_codec_keeps_the_chains() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = tracked_rows(d, 500);
    let steps: [(&[&str], &str, &str); 7] = [
        (&["--compression", "zstd"], "full", "Zstd"),
        (&[], "incremental", "Zstd"),
        (&["--full"], "full", "Zstd"),
        (&["--compression", "deflate"], "incremental", "Deflated"),
        (&[], "incremental", "Deflated"),
        (&["--compression", "none"], "incremental", "Stored"),
        (&[], "incremental", "Stored"),
    ];
    for (i, (flags, kind, method)) in steps.iter().enumerate() {
        if i > 0 {
            sql(
                &db,
                &format!("UPDATE t SET v = 'round {i}' WHERE id % 5 = {i} % 5;"),
            );
        }
        let mut args = ARCHIVE_BACKUP.to_vec();
        args.extend_from_slice(flags);
        let out = ok(&args, d);
        assert!(
            out.contains(&format!("Archive ({kind})")),
            "{flags:?}: {out}"
        );
        let newest = archives(&d.join("ar")).pop().unwrap();
        let want: std::collections::BTreeSet<String> = [method.to_string()].into();
        assert_eq!(
            common::entry_methods(std::fs::File::open(&newest).unwrap()),
            want,
            "{flags:?} after step {i}"
        );
    }
    ok(&["verify", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "the mixed chain");
    // The codec is a preference: a newest archive whose central directory is damaged does not
    // stop the next backup (it says so and writes deflate); verify reports the damage.
    let newest = archives(&d.join("ar")).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let cd = bytes.windows(4).rposition(|w| w == b"PK\x01\x02").unwrap();
    bytes[cd + 1] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    sql(&db, "UPDATE t SET v = 'after the damage' WHERE id = 1;");
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(out.contains("could not be read"), "{out}");
    assert!(out.contains("this archive is deflate level 9"), "{out}");
    let newest = archives(&d.join("ar")).pop().unwrap();
    let deflated: std::collections::BTreeSet<String> = ["Deflated".to_string()].into();
    assert_eq!(
        common::entry_methods(std::fs::File::open(&newest).unwrap()),
        deflated
    );
    fails(&["verify", "ar"], d);
    // A new chain, no codec named: deflate, which any unzip reads.
    let mut args = ARCHIVE_BACKUP.to_vec();
    let at = args.iter().position(|a| *a == "ar").unwrap();
    args[at] = "new";
    ok(&args, d);
    let first = archives(&d.join("new")).pop().unwrap();
    assert_eq!(
        common::entry_methods(std::fs::File::open(&first).unwrap()),
        ["Deflated".to_string()].into()
    );
}

/// `tidemark compact` with no codec named writes the compacted archives in the chain's, as a
/// backup would (it wrote deflate-9 whatever the chain held); `--compression` still chooses.
#[test]
fn compaction_keeps_the_chains_codec() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = tracked_rows(d, 300);
    for i in 0..5 {
        if i > 0 {
            sql(
                &db,
                &format!("UPDATE t SET v = 'round {i}' WHERE id % 7 = {i};"),
            );
        }
        let mut args = ARCHIVE_BACKUP.to_vec();
        if i == 0 {
            args.extend(["--compression", "zstd"]);
        }
        ok(&args, d);
    }
    ok(&["compact", "ar", "--fanout", "2"], d);
    let compacted: Vec<PathBuf> = archives(&d.join("ar"))
        .into_iter()
        .filter(|p| p.file_name().unwrap().len() >= 35)
        .collect();
    assert!(!compacted.is_empty(), "{:?}", archives(&d.join("ar")));
    for a in &compacted {
        let methods = common::entry_methods(std::fs::File::open(a).unwrap());
        assert_eq!(methods, ["Zstd".to_string()].into(), "{}", a.display());
    }
    ok(&["verify", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "after compaction");
}

/// Flips a byte inside the data of `archive`'s manifest entry (its local header found by name).
fn damage_manifest(archive: &Path) {
    let mut bytes = std::fs::read(archive).unwrap();
    let name = b"tidemark/manifest.json";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    let header = at - 30;
    let le16 = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let data = header + 30 + le16(header + 26) + le16(header + 28);
    bytes[data + 5] ^= 0x01;
    std::fs::write(archive, bytes).unwrap();
}

/// A point older than a damaged archive restores exactly: its archives are all read and
/// checked, and the damaged one, newer than it, is named in a warning (exit 0). A point whose
/// path crosses the damaged archive, or a time it may have been captured at or before, is
/// refused as before (exit 3). Read back with the sqlite3 shell. Before, any damaged archive in
/// the chain refused every `--at` without `--skip-damaged`.
#[test]
fn a_point_before_a_damaged_archive_restores_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = chain(d, &[]);
    let all = archives(&d.join("ar"));
    let third = &all[2];
    damage_manifest(third);
    let name = third.file_name().unwrap().to_string_lossy().into_owned();
    for (i, (at, state)) in states.iter().enumerate().take(2) {
        let to = format!("sqlite:older{i}.db");
        let out = tidemark(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                &to,
                "--at",
                &at.to_string(),
            ],
            d,
        );
        assert!(out.status.success(), "point {i}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning") && err.contains(&name) && err.contains("not needed"),
            "names the damaged archive: {err}"
        );
        assert_same_dump(
            &dump(&d.join(format!("older{i}.db"))),
            state,
            &format!("checkpoint {at}"),
        );
    }
    // The damaged archive's own point and the one after it need it.
    for (at, _) in &states[2..] {
        let out = tidemark(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                "sqlite:no.db",
                "--at",
                &at.to_string(),
            ],
            d,
        );
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(!d.join("no.db").exists());
    }
    // By time: the second archive's capture restores; a moment after it, which may be after
    // the damaged archive's capture, and the last archive's are refused.
    let listed = ok(&["list", "ar", "--json"], d);
    let captured: Vec<String> = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "archive")
        .map(|v| v["captured_at"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(captured.len(), 3, "{listed}");
    let restore_at =
        |at: &str, to: &str| tidemark(&["restore", "--from", "ar", "--to", to, "--at", at], d);
    let out = restore_at(&captured[1], "sqlite:bytime.db");
    assert!(out.status.success(), "{out:?}");
    assert_same_dump(&dump(&d.join("bytime.db")), &states[1].1, "by time");
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let later = (time::OffsetDateTime::parse(&captured[1], rfc3339).unwrap()
        + time::Duration::nanoseconds(1))
    .format(rfc3339)
    .unwrap();
    for at in [&later, &captured[2]] {
        let out = restore_at(at, "sqlite:no.db");
        assert_eq!(out.status.code(), Some(3), "{at}: {out:?}");
        assert!(!d.join("no.db").exists());
    }
    // The newest point needs every archive: refused, as before.
    let out = tidemark(&["restore", "--from", "ar", "--to", "sqlite:no.db"], d);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // A damaged archive older than the point, before the full archive its path starts from,
    // is not needed either: by checkpoint and by time.
    let db = d.join("src.db");
    ok(&[&ARCHIVE_BACKUP[..], &["--full"]].concat(), d);
    sql(&db, "UPDATE t SET name = 'after the full' WHERE id < 20;");
    ok(&ARCHIVE_BACKUP, d);
    let newest = archives(&d.join("ar")).pop().unwrap();
    let listed = ok(&["list", "ar", "--json"], d);
    let last_capture = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["type"] == "archive")
        .map(|v| v["captured_at"].as_str().unwrap().to_string())
        .unwrap();
    for (at, to) in [
        (checkpoint_of(&newest).to_string(), "later"),
        (last_capture, "later-by-time"),
    ] {
        let out = restore_at(&at, &format!("sqlite:{to}.db"));
        assert!(out.status.success(), "{at}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
        assert_same_dump(&dump(&d.join(format!("{to}.db"))), &dump(&db), &at);
    }
}

/// An archive deleted by hand (neither there nor pruned) may be the point a time names: a
/// restore at a time after its capture is refused (exit 3, naming it) instead of restoring
/// the archive before it, an older state, as the newest captured at or before that time (it
/// did before); `--skip-damaged` restores that older state and says what it left out. A time
/// or checkpoint it cannot be restores exactly, with a warning. Read back with the sqlite3 shell.
#[test]
fn a_time_whose_archive_is_gone_is_refused_not_taken_for_an_older_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = chain(d, &[]);
    let listed = ok(&["list", "ar", "--json"], d);
    let captured: Vec<String> = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "archive")
        .map(|v| v["captured_at"].as_str().unwrap().to_string())
        .collect();
    let third = archives(&d.join("ar")).remove(2);
    std::fs::remove_file(&third).unwrap();
    // list shows the lost point where it lies.
    let listed = ok(&["list", "ar"], d);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("tidemark-000003 ") && l.contains("MISSING")),
        "{listed}"
    );
    let restore = |at: &str, to: &str, extra: &[&str]| {
        tidemark(
            &[
                &["restore", "--from", "ar", "--to", to, "--at", at][..],
                extra,
            ]
            .concat(),
            d,
        )
    };
    // The third archive's own time and checkpoint: refused, naming it.
    for at in [captured[2].clone(), states[2].0.to_string()] {
        let out = restore(&at, "sqlite:no.db", &[]);
        assert_eq!(out.status.code(), Some(3), "{at}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("archive 3 is missing"), "{err}");
        assert!(!d.join("no.db").exists());
    }
    // With --skip-damaged the time gives the state before it, and says so.
    let out = restore(&captured[2], "sqlite:partial.db", &["--skip-damaged"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("archive 3 is missing"));
    assert_same_dump(&dump(&d.join("partial.db")), &states[1].1, "skip-damaged");
    // The second archive's time and checkpoint cannot be the third's: exact, with a warning.
    for (at, to) in [
        (captured[1].clone(), "second-by-time"),
        (states[1].0.to_string(), "second"),
    ] {
        let out = restore(&at, &format!("sqlite:{to}.db"), &[]);
        assert!(out.status.success(), "{at}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("archive 3 is missing"));
        assert_same_dump(&dump(&d.join(format!("{to}.db"))), &states[1].1, &at);
    }
}

/// [`chain`], a fifth backup (so that fanout 2 has two incrementals after the second to
/// compact), then `compact --fanout 2`: the compacted archives stand beside the originals.
fn compacted_chain(d: &Path) -> Vec<(u64, String)> {
    let states = chain(d, &[]);
    sql(
        &d.join("src.db"),
        "UPDATE t SET name = 'fifth' WHERE id < 5;",
    );
    ok(&ARCHIVE_BACKUP, d);
    ok(&["compact", "ar", "--fanout", "2"], d);
    states
}

/// The archive of `d/ar` whose file name starts with `prefix`; panics naming them all if none.
fn archive_named(d: &Path, prefix: &str) -> PathBuf {
    let all = archives(&d.join("ar"));
    all.iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .cloned()
        .unwrap_or_else(|| panic!("no archive {prefix}*: {all:?}"))
}

/// A backup deleted by hand under a compacted archive that covers it leaves a chain that a
/// restore can still walk, but its point is gone: verify says so (exit 3) instead of calling
/// the chain intact while `restore --at` that point is refused; the newest point restores.
#[test]
fn a_point_lost_under_a_compacted_archive_is_reported_by_verify() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = compacted_chain(d);
    ok(&["verify", "ar"], d);
    archive_named(d, "tidemark-000003-000004-incr");
    std::fs::remove_file(archive_named(d, "tidemark-000003-incr")).unwrap();
    let v = tidemark(&["verify", "ar"], d);
    assert_eq!(v.status.code(), Some(3), "{v:?}");
    assert!(String::from_utf8_lossy(&v.stderr).contains("archive 3 is missing"));
    let out = tidemark(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:no.db",
            "--at",
            &states[2].0.to_string(),
        ],
        d,
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(!d.join("no.db").exists());
    ok(&["restore", "--from", "ar", "--to", "sqlite:newest.db"], d);
    assert_same_dump(
        &dump(&d.join("newest.db")),
        &dump(&d.join("src.db")),
        "newest",
    );
}

/// A damaged compacted archive beside the originals it covers does not stand between a user
/// and the point it ends at: the original archive ending there is read instead (with a
/// warning naming the damaged one). Before, any damaged archive refused every `--at`.
#[test]
fn a_point_restores_beside_a_damaged_compacted_archive() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let states = compacted_chain(d);
    let compacted = archive_named(d, "tidemark-000003-000004-incr");
    damage_manifest(&compacted);
    let name = compacted
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let (at, state) = &states[3];
    let out = tidemark(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:fourth.db",
            "--at",
            &at.to_string(),
        ],
        d,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&name),
        "{out:?}"
    );
    assert_same_dump(&dump(&d.join("fourth.db")), state, "the fourth point");
}

/// Bit rot in the newest archive's manifest must not stop every backup after it, which would
/// leave the store unprotected until someone deletes the file: the next run is a full archive
/// after it and says why, verify still reports the damaged archive, and the newest point
/// restores exactly (read back with the sqlite3 shell). Before, every later backup, `--full`
/// included, failed on the damaged manifest.
#[test]
fn a_damaged_newest_archive_does_not_stop_the_backups() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = tracked_rows(d, 500);
    ok(&ARCHIVE_BACKUP, d);
    sql(&db, "UPDATE t SET v = 'second ' || id WHERE id % 3 = 0;");
    ok(&ARCHIVE_BACKUP, d);
    let newest = archives(&d.join("ar")).pop().unwrap();
    damage_manifest(&newest);
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();

    sql(&db, "UPDATE t SET v = 'third ' || id WHERE id % 5 = 0;");
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(out.contains("Archive (full)"), "{out}");
    assert!(
        out.contains(&name) && out.contains("cannot be read"),
        "says why: {out}"
    );
    assert_eq!(
        archives(&d.join("ar")).len(),
        3,
        "the damaged archive stays"
    );
    assert!(newest.exists());
    let v = tidemark(&["verify", "ar"], d);
    assert_eq!(v.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&v.stderr).contains(&name));
    restores_as_source(d, &db, "after", "the full after the damaged archive");

    // The chain carries on from the new full.
    sql(&db, "DELETE FROM t WHERE id % 7 = 0;");
    let out = ok(&ARCHIVE_BACKUP, d);
    assert!(out.contains("Archive (incremental)"), "{out}");
    restores_as_source(d, &db, "later", "an incremental on the new full");
    // Retention, compaction and list go on around the damaged archive (a hole in the chain,
    // never removed), saying so; before, each failed on it.
    let first = archives(&d.join("ar")).remove(0);
    let out = tidemark(&["prune", "ar", "--keep-last", "1"], d);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tidemark: warning: ") && err.contains(&name),
        "{err}"
    );
    assert!(
        !first.exists(),
        "the first full, needed by no kept point, is removed"
    );
    assert!(newest.exists(), "the damaged archive is left as it is");
    ok(&["compact", "ar"], d);
    // list shows it where it lies, as damaged (before: left out of the table, named only in a
    // warning), and `--json` as a problem, as verify does.
    let listed = ok(&["list", "ar"], d);
    let row = listed
        .lines()
        .find(|l| l.starts_with(name.as_str()))
        .unwrap_or_else(|| panic!("no row for {name}: {listed}"));
    assert!(
        row.contains("DAMAGED") && row.contains("--skip-damaged"),
        "{row}"
    );
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(rows, sorted, "rows in sequence order: {listed}");
    let json = ok(&["list", "ar", "--json"], d);
    let problems: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "problem")
        .collect();
    assert_eq!(problems.len(), 1, "{json}");
    assert!(
        problems[0]["message"].as_str().unwrap().contains(&name),
        "{json}"
    );
    restores_as_source(d, &db, "pruned", "after the prune");
}

/// An archive a newer tidemark wrote (its manifest checks out but says format v99) is not
/// damage: a backup refuses to continue or go around it, naming it, and writes nothing; a
/// damaged one (next test above) is gone around.
#[test]
fn an_archive_of_a_newer_format_is_refused_not_taken_for_damage() {
    use std::io::Read;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    tracked_rows(d, 100);
    ok(&ARCHIVE_BACKUP, d);
    let newest = archives(&d.join("ar")).pop().unwrap();
    {
        let mut old = zip::ZipArchive::new(std::fs::File::open(&newest).unwrap()).unwrap();
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for i in 0..old.len() {
            let name = old.by_index_raw(i).unwrap().name().to_string();
            if name == "tidemark/manifest.json" {
                let mut text = String::new();
                old.by_index(i).unwrap().read_to_string(&mut text).unwrap();
                let mut entry: serde_json::Value = serde_json::from_str(&text).unwrap();
                entry["manifest"]["format_version"] = 99.into();
                let crc = crc32fast::hash(&serde_json::to_vec(&entry["manifest"]).unwrap());
                entry["crc32"] = crc.into();
                z.start_file(name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                z.write_all(&serde_json::to_vec(&entry).unwrap()).unwrap();
            } else {
                z.raw_copy_file(old.by_index_raw(i).unwrap()).unwrap();
            }
        }
        std::fs::write(&newest, z.finish().unwrap().into_inner()).unwrap();
    }
    let out = tidemark(&ARCHIVE_BACKUP, d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("v99 is not supported") && err.contains("newer"),
        "{err}"
    );
    assert_eq!(archives(&d.join("ar")).len(), 1, "nothing written");
    // Every reader says the same, and none calls it damage (exit 3): verify used to.
    for args in [
        &["verify", "ar"][..],
        &["list", "ar"],
        &["restore", "--from", "ar", "--to", "sqlite:no.db"],
        &["prune", "ar", "--keep-last", "1"],
    ] {
        let out = tidemark(args, d);
        common::assert_refused_as_newer(&out, args, "v99 is not supported");
    }
    assert!(!d.join("no.db").exists());
    assert_eq!(archives(&d.join("ar")).len(), 1, "nothing removed");
}
