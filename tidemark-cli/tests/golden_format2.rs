//! Old backups stay readable: golden archive chains written by earlier builds of format 2 are
//! committed under `tests/fixtures/` and must verify, restore every checkpoint exactly
//! (compared with the `sqlite3` shell's `.dump` taken when each fixture was made), and take new
//! backups that continue the chain:
//!
//! - `format2-e4da6cf.tar`: the first days of format 2 (no store marks, no scan-part counts,
//!   version 1 capture triggers): a zstd chain of a full and two incrementals at checkpoints 0,
//!   71 and 73, and a deflate chain of one full at 73;
//! - `format2-3ec49bf.tar`: before store marks, with the block-indexed key state and three key
//!   deltas: a zstd chain of a full and three incrementals at 0, 71, 73 and 95;
//! - `format2-values-bcd0904.tar`: the first chain with values kept apart from their lines
//!   (value entries), which only verifies and restores (below, [`VALUE_ROUNDS`]).
//!
//! Each holds the tracked SQLite database at its last point (a rowid table with an index, BLOBs,
//! NULLs and REALs; a WITHOUT ROWID table of mixed types).
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, unpack_fixture as unpack, without_tracking as normalize};

/// A fixture: its name, its chains, and its points (checkpoint, the dump taken there).
type Fixture = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);

/// Each fixture, its chains, and its points.
const FIXTURES: [Fixture; 2] = [
    (
        "format2-e4da6cf",
        &["chain", "chain-deflate"],
        &[("0", "at-1.sql"), ("71", "at-2.sql"), ("73", "at-3.sql")],
    ),
    (
        "format2-3ec49bf",
        &["chain"],
        &[
            ("0", "at-1.sql"),
            ("71", "at-2.sql"),
            ("73", "at-3.sql"),
            ("95", "at-4.sql"),
        ],
    ),
];

/// Restores the chain `chain` in `root` at checkpoint `at` into `r<at>.db` and compares its
/// dump with `want`, tracking objects aside.
fn restores_at(root: &std::path::Path, at: &str, want: &str, what: &str) {
    let target = format!("r{at}.db");
    ok(
        &[
            "restore",
            "--from",
            "chain",
            "--to",
            &format!("sqlite:{target}"),
            "--at",
            at,
        ],
        root,
    );
    common::assert_same_dump(
        &normalize(&dump(&root.join(&target))),
        &normalize(want),
        what,
    );
}

#[test]
fn early_format_2_chains_verify_and_restore_every_checkpoint_exactly() {
    for (name, chains, points) in FIXTURES {
        let t = tempfile::tempdir().unwrap();
        let root = unpack(t.path(), name);
        for chain in chains {
            let out = ok(&["verify", chain], &root);
            assert!(out.contains("is intact"), "{name} {chain}: {out}");
        }
        let listed = ok(&["list", "chain"], &root);
        assert_eq!(listed.lines().count(), points.len() + 1, "{listed}");
        for (at, file) in points {
            let want = std::fs::read_to_string(root.join(file)).unwrap();
            restores_at(&root, at, &want, &format!("{name} --at {at}"));
        }
        let last = points.last().unwrap().1;
        for chain in &chains[1..] {
            let target = format!("{chain}.db");
            ok(
                &[
                    "restore",
                    "--from",
                    chain,
                    "--to",
                    &format!("sqlite:{target}"),
                ],
                &root,
            );
            common::assert_same_dump(
                &normalize(&dump(&root.join(&target))),
                &normalize(&std::fs::read_to_string(root.join(last)).unwrap()),
                &format!("{name} {chain}"),
            );
        }
    }
}

/// A new tidemark continues an early format-2 chain from its database, and the old points
/// still restore. From e4da6cf the next backup is full (the database's capture triggers are of
/// an older version, which it says); from 3ec49bf it is incremental, reading that version's key
/// state and its deltas. A second backup is incremental in both.
#[test]
fn early_format_2_chains_take_new_backups() {
    for (name, _, points) in FIXTURES {
        let t = tempfile::tempdir().unwrap();
        let root = unpack(t.path(), name);
        let db = root.join("src.db");
        let backup = || {
            ok(
                &[
                    "backup",
                    "--source",
                    "sqlite:src.db",
                    "--to",
                    "chain",
                    "--format",
                    "archive",
                ],
                &root,
            )
        };
        common::sql(&db, "UPDATE t SET score = score + 1 WHERE id % 3 = 0;");
        let out = backup();
        if name == "format2-3ec49bf" {
            assert!(out.contains("Archive (incremental)"), "{name}: {out}");
        } else {
            assert!(out.contains("capture triggers"), "{name}: {out}");
        }
        common::sql(
            &db,
            "DELETE FROM kv WHERE k = 'c'; INSERT INTO t(name) VALUES ('later');",
        );
        let out = backup();
        assert!(out.contains("Archive (incremental)"), "{name}: {out}");
        let out = ok(&["verify", "chain"], &root);
        assert!(out.contains("is intact"), "{name}: {out}");
        ok(
            &["restore", "--from", "chain", "--to", "sqlite:now.db"],
            &root,
        );
        common::assert_same_dump(
            &normalize(&dump(&root.join("now.db"))),
            &normalize(&dump(&db)),
            &format!("{name} after the new backups"),
        );
        let (at, file) = points[1];
        ok(
            &[
                "restore",
                "--from",
                "chain",
                "--to",
                "sqlite:old.db",
                "--at",
                at,
            ],
            &root,
        );
        common::assert_same_dump(
            &normalize(&dump(&root.join("old.db"))),
            &normalize(&std::fs::read_to_string(root.join(file)).unwrap()),
            &format!("{name}: an old point after the new backups"),
        );
    }
}

/// The SQL that made `format2-values-bcd0904.tar`'s chain, one round per archive (a tracked
/// database; the zstd chain's full and two incrementals end at checkpoints 0, 2 and 4). Its
/// rows hold values of 1 MiB or more, which the archives keep apart from their lines, in value
/// entries (docs/FORMAT.md §3.1, since 2026-12-04): BLOBs of 1.1 MB and 5 MB (two entries),
/// TEXTs of 1.2 MB and 2 MiB.
const VALUE_ROUNDS: [(&str, &str); 3] = [
    (
        "0",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, img BLOB, doc TEXT);
         INSERT INTO t VALUES (1, zeroblob(1100000), replace(hex(zeroblob(600000)), '00', 'ab')),
                              (2, x'01', 'small');",
    ),
    (
        "2",
        "UPDATE t SET img = zeroblob(5000000) WHERE id = 2; UPDATE t SET doc = 'short' WHERE id = 1;",
    ),
    (
        "4",
        "DELETE FROM t WHERE id = 1;
         INSERT INTO t VALUES (3, NULL, replace(hex(zeroblob(1048576)), '00', 'cd'));",
    ),
];

/// The first chain with values kept apart verifies, and every point restores to what the
/// `sqlite3` shell makes of the same SQL.
#[test]
fn the_first_chain_with_values_kept_apart_restores_every_point() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path(), "format2-values-bcd0904");
    let out = ok(&["verify", "chain"], &root);
    assert!(out.contains("is intact"), "{out}");
    let expected = root.join("expected.db");
    for (at, sql) in VALUE_ROUNDS {
        common::sql(&expected, sql);
        restores_at(&root, at, &dump(&expected), &format!("--at {at}"));
    }
}
