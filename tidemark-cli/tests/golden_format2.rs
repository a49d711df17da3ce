//! Old backups stay readable: a golden archive chain written by tidemark at e4da6cf (the first
//! days of format 2: no store marks, no scan-part counts, key state of that time, version 1
//! capture triggers) is committed under `tests/fixtures/format2-e4da6cf.tar`. It must verify,
//! restore every checkpoint exactly (compared with the `sqlite3` shell's `.dump` taken when the
//! fixture was made), and take new backups that continue the chain. The fixture: a tracked
//! SQLite database (a rowid table with an index, BLOBs, NULLs and REALs; a WITHOUT ROWID table
//! of mixed types), a zstd chain of a full and two incrementals (updates, deletes, inserts) at
//! checkpoints 0, 71 and 73, a deflate chain of one full at 73, and the database at 73.
#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok};

use std::path::{Path, PathBuf};

const FIXTURE: &str = "format2-e4da6cf";

/// The fixture, unpacked into `d` (a copy: the committed files are never written to).
fn unpack(d: &Path) -> PathBuf {
    let tar = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{FIXTURE}.tar"));
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(d)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tar.display());
    d.join(FIXTURE)
}

/// A dump without tidemark's tracking objects and the `sqlite_sequence` reset they cause.
fn normalize(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("_tidemark_") && *l != "DELETE FROM sqlite_sequence;")
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn early_format_2_chains_verify_and_restore_every_checkpoint_exactly() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path());
    for chain in ["chain", "chain-deflate"] {
        let out = ok(&["verify", chain], &root);
        assert!(out.contains("is intact"), "{chain}: {out}");
    }
    let listed = ok(&["list", "chain"], &root);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    for (at, file) in [("0", "at-1.sql"), ("71", "at-2.sql"), ("73", "at-3.sql")] {
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
            &format!("--at {at}"),
        );
    }
    ok(
        &["restore", "--from", "chain-deflate", "--to", "sqlite:d.db"],
        &root,
    );
    common::assert_same_dump(
        &normalize(&dump(&root.join("d.db"))),
        &normalize(&std::fs::read_to_string(root.join("at-3.sql")).unwrap()),
        "the deflate chain",
    );
}

/// A new tidemark continues an early format-2 chain from its database: the next backup (full:
/// the database's capture triggers are of an older version, which it says) and an incremental
/// after it verify and restore equal to the database, and the old points still restore.
#[test]
fn early_format_2_chains_take_new_backups() {
    let t = tempfile::tempdir().unwrap();
    let root = unpack(t.path());
    let db = root.join("src.db");
    common::sql(&db, "UPDATE t SET score = score + 1 WHERE id % 3 = 0;");
    let out = ok(
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
    );
    assert!(out.contains("Backup ("), "{out}");
    common::sql(
        &db,
        "DELETE FROM kv WHERE k = 'c'; INSERT INTO t(name) VALUES ('later');",
    );
    let out = ok(
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
    );
    assert!(out.contains("Archive (incremental)"), "{out}");
    let out = ok(&["verify", "chain"], &root);
    assert!(out.contains("is intact"), "{out}");
    ok(
        &["restore", "--from", "chain", "--to", "sqlite:now.db"],
        &root,
    );
    common::assert_same_dump(
        &normalize(&dump(&root.join("now.db"))),
        &normalize(&dump(&db)),
        "after the new backups",
    );
    ok(
        &[
            "restore",
            "--from",
            "chain",
            "--to",
            "sqlite:old.db",
            "--at",
            "71",
        ],
        &root,
    );
    common::assert_same_dump(
        &normalize(&dump(&root.join("old.db"))),
        &normalize(&std::fs::read_to_string(root.join("at-2.sql")).unwrap()),
        "an old point after the new backups",
    );
}
