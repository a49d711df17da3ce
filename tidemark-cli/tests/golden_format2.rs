//! Old backups stay readable: golden archive chains written by earlier builds of format 2 are
//! committed under `tests/fixtures/` and must verify, restore every checkpoint exactly
//! (compared with the `sqlite3` shell's `.dump` taken when each fixture was made), and take new
//! backups that continue the chain:
//!
//! - `format2-e4da6cf.tar`: the first days of format 2 (no store marks, no scan-part counts,
//!   version 1 capture triggers): a zstd chain of a full and two incrementals at checkpoints 0,
//!   71 and 73, and a deflate chain of one full at 73;
//! - `format2-3ec49bf.tar`: before store marks, with the block-indexed key state and three key
//!   deltas: a zstd chain of a full and three incrementals at 0, 71, 73 and 95.
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
                &root,
            );
            common::assert_same_dump(
                &normalize(&dump(&root.join(&target))),
                &normalize(&std::fs::read_to_string(root.join(file)).unwrap()),
                &format!("{name} --at {at}"),
            );
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
