//! Old backups stay readable, for every store and for encrypted chains: `format2-stores-2a21c6b`
//! (`tests/fixtures/`, made by `make-format2-stores.sh` at that commit) holds three archive
//! chains of format 2 and what their stores held at each point, as independent clients read them
//! when the fixture was made:
//!
//! - `age-chain`: a tracked SQLite database sealed to a passphrase and an age recipient (the key
//!   file and its copy), a full and two incrementals; the `sqlite3` shell's `.dump` at each
//!   checkpoint (`at-<checkpoint>.sql`), and the database at its last point (`src.db`);
//! - `rocks-chain`: a RocksDB database written by rocksdict (puts, overwrites and deletions in
//!   two column families), a full and an incremental read from its WAL; rocksdict's dump at each
//!   point (`rocks-at-<n>.json`, the checkpoints in `rocks-points`);
//! - `sled-chain`: a sled database written with plain sled, a full and a diff-based incremental;
//!   the database itself at each point (`sled-at-<n>/`, the checkpoints in `sled-points`).
//!
//! Each must verify, restore every point exactly (read back with the store's own library), and,
//! for the SQLite chain, take new backups.
#![cfg(all(feature = "sqlite", feature = "rocksdb", feature = "sled"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::kv::{differences, sled_content};
use common::{dump, rocksapp};
use std::path::{Path, PathBuf};

const FIXTURE: &str = "format2-stores-2a21c6b";

/// Runs `tidemark` in `cwd` with a cache of its own (an encrypted chain keeps its key state
/// there), which must succeed; returns its stdout.
fn ok(args: &[&str], cwd: &Path) -> String {
    common::succeeds(&mut common::in_own_cache(cwd), args)
}

fn unpack(d: &Path) -> PathBuf {
    common::unpack_fixture(d, FIXTURE)
}

/// The checkpoints listed in `file` (one a line), numbered from 1 as the fixture's files are.
fn points(root: &Path, file: &str) -> Vec<(usize, String)> {
    std::fs::read_to_string(root.join(file))
        .unwrap()
        .lines()
        .map(str::to_string)
        .enumerate()
        .map(|(i, at)| (i + 1, at))
        .collect()
}

/// Restores the encrypted chain (at `at`, if given) into `target` with `key`, and compares.
fn restores_as(root: &Path, at: Option<u64>, key: &[&str], target: &str, want: &str) {
    common::assert_restores_as(ok, root, ("age-chain", at), key, target, want);
}

const IDENTITY: [&str; 2] = ["--encrypt-identity", "id.txt"];

#[test]
fn an_encrypted_chain_restores_every_point_with_either_key() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path());
    let points = common::dumps_at(&root, "at-");
    assert_eq!(points.len(), 3, "the fixture's points");

    // Without a key, what can be checked is; with either key, every record.
    let out = ok(&["verify", "age-chain"], &root);
    assert!(out.contains("intact as stored"), "{out}");
    for key in [&IDENTITY[..], &["--encrypt-passphrase-file", "pass"][..]] {
        let mut args = vec!["verify", "age-chain"];
        args.extend(key);
        let out = ok(&args, &root);
        assert!(
            out.contains("is intact") && out.contains("3 archive(s)"),
            "{key:?}: {out}"
        );
    }
    for (at, want) in &points {
        restores_as(&root, Some(*at), &IDENTITY, &format!("r{at}.db"), want);
    }
    let last = &points.last().unwrap().1;
    let pass = ["--encrypt-passphrase-file", "pass"];
    restores_as(&root, None, &pass, "latest.db", last);

    // A new tidemark continues the chain from the database: with a full backup first, since an
    // encrypted chain's key state stayed in the cache of the machine that made it (it says
    // so), then incrementally; and the old points still restore.
    let backup = || {
        let mut args = vec![
            "backup",
            "--source",
            "sqlite:src.db",
            "--to",
            "age-chain",
            "--format",
            "archive",
        ];
        args.extend(IDENTITY);
        ok(&args, &root)
    };
    common::sql(
        &root.join("src.db"),
        "INSERT INTO kv VALUES ('g', 'new'); DELETE FROM t WHERE id = 100;",
    );
    let out = backup();
    assert!(
        out.contains("key state") && out.contains("Archive (full)"),
        "{out}"
    );
    common::sql(&root.join("src.db"), "UPDATE t SET score = 0 WHERE id = 1;");
    let out = backup();
    assert!(out.contains("Archive (incremental)"), "{out}");
    let mut args = vec!["verify", "age-chain"];
    args.extend(IDENTITY);
    let out = ok(&args, &root);
    assert!(
        out.contains("is intact") && out.contains("5 archive(s)"),
        "{out}"
    );
    let now = dump(&root.join("src.db"));
    restores_as(&root, None, &IDENTITY, "now.db", &now);
    let (at, want) = &points[1];
    restores_as(&root, Some(*at), &IDENTITY, "old.db", want);
}

#[test]
fn a_rocksdb_chain_restores_every_point_as_rocksdict_wrote_it() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path());
    let out = ok(&["verify", "rocks-chain"], &root);
    assert!(out.contains("is intact"), "{out}");
    let points = points(&root, "rocks-points");
    assert_eq!(points.len(), 2, "the fixture's points");
    for (n, at) in &points {
        let target = format!("r{n}");
        ok(
            &[
                "restore",
                "--from",
                "rocks-chain",
                "--to",
                &format!("rocksdb:{target}"),
                "--at",
                at,
            ],
            &root,
        );
        // rocksdict (its own, older RocksDB) opens the restore and reads what it wrote.
        let got: serde_json::Value =
            serde_json::from_str(&rocksapp(&["dump", &target], &root)).unwrap();
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("rocks-at-{n}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(got, want, "point {n} (checkpoint {at})");
    }
    // The points differ (the incremental's puts, overwrites and deletions were restored).
    let first = std::fs::read_to_string(root.join("rocks-at-1.json")).unwrap();
    let second = std::fs::read_to_string(root.join("rocks-at-2.json")).unwrap();
    assert_ne!(first, second);
}

#[test]
fn a_sled_chain_restores_every_point_as_plain_sled_wrote_it() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path());
    let out = ok(&["verify", "sled-chain"], &root);
    assert!(out.contains("is intact"), "{out}");
    let points = points(&root, "sled-points");
    assert_eq!(points.len(), 2, "the fixture's points");
    let mut seen = Vec::new();
    for (n, at) in &points {
        let target = format!("r{n}");
        ok(
            &[
                "restore",
                "--from",
                "sled-chain",
                "--to",
                &format!("sled:{target}"),
                "--at",
                at,
            ],
            &root,
        );
        let want = sled_content(&root.join(format!("sled-at-{n}")));
        assert!(!want.is_empty(), "point {n} holds records");
        let diff = differences(&sled_content(&root.join(&target)), &want);
        assert!(diff.is_empty(), "point {n} (checkpoint {at}): {diff:#?}");
        seen.push(want);
    }
    assert_ne!(seen[0], seen[1], "the incremental changed records");
}
