//! Old backups stay readable: golden backups written by tidemark at 5cbf1f1 (format 1, before
//! destinations had a format marker, a lock or a chain head) are committed under
//! `tests/fixtures/format1-5cbf1f1.tar` and must verify, list and restore exactly, forever.
//! SQLite: a folder backup and two archive chains (deflate, zstd), each a full backup and an
//! incremental; RocksDB (written by rocksdict) and sled: folder and archive. The expected
//! states are `.dump`s taken by the `sqlite3` shell when the fixtures were made.
#![cfg(all(feature = "sqlite", feature = "rocksdb", feature = "sled"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{dump, ok, without_tracking as normalize};

use std::path::{Path, PathBuf};

/// The fixtures, unpacked once per test into `d`.
fn unpack(d: &Path) -> PathBuf {
    common::unpack_fixture(d, "format1-5cbf1f1")
}

/// Fixture `name`, unpacked in `d` (a copy: the committed files are never written to); its
/// path relative to `d`.
fn copy(d: &Path, name: &str) -> String {
    let root = if d.join("format1-5cbf1f1").exists() {
        d.join("format1-5cbf1f1")
    } else {
        unpack(d)
    };
    assert!(root.join(name).exists(), "no fixture {name}");
    format!("format1-5cbf1f1/{name}")
}

fn fixtures_in(d: &Path) -> PathBuf {
    d.join("format1-5cbf1f1")
}

fn expected(d: &Path, file: &str) -> String {
    normalize(&std::fs::read_to_string(fixtures_in(d).join(file)).unwrap())
}

#[test]
fn format_1_sqlite_backups_verify_and_restore_exactly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for name in ["sqlite-folder", "sqlite-chain", "sqlite-chain-zstd"] {
        let dest = copy(d, name);
        let out = ok(&["verify", &dest], d);
        assert!(out.contains("is intact"), "{name}: {out}");
        let target = format!("{name}.db");
        ok(
            &[
                "restore",
                "--from",
                &dest,
                "--to",
                &format!("sqlite:{target}"),
            ],
            d,
        );
        common::assert_same_dump(
            &normalize(&dump(&d.join(&target))),
            &expected(d, "sqlite-at-2.sql"),
            name,
        );
        if name != "sqlite-folder" {
            let out = ok(&["list", &dest], d);
            assert!(out.contains("full") && out.contains("incremental"), "{out}");
            // The first archive's state (checkpoint 0).
            let then = format!("{name}-at-0.db");
            ok(
                &[
                    "restore",
                    "--from",
                    &dest,
                    "--to",
                    &format!("sqlite:{then}"),
                    "--at",
                    "0",
                ],
                d,
            );
            common::assert_same_dump(
                &normalize(&dump(&d.join(&then))),
                &expected(d, "sqlite-at-1.sql"),
                name,
            );
        }
    }
}

/// A new tidemark carries on in an old destination: it recognises the format from the content,
/// records it, and its backups (full here: the database is a restored copy, a new identity)
/// verify and restore.
#[test]
fn format_1_destinations_take_new_backups() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (name, format) in [("sqlite-folder", "folder"), ("sqlite-chain", "archive")] {
        let dest = copy(d, name);
        let src = format!("src-{name}.db");
        ok(
            &["restore", "--from", &dest, "--to", &format!("sqlite:{src}")],
            d,
        );
        ok(&["track", "--source", &format!("sqlite:{src}")], d);
        common::sql(&d.join(&src), "INSERT INTO tags VALUES ('new', 9);");
        if format == "archive" {
            // Format-1 chains kept a per-record working mirror; the new format needs none.
            std::fs::create_dir_all(d.join(&dest).join(".tidemark-mirror/t/1")).unwrap();
        }
        let out = common::backup(d, &format!("sqlite:{src}"), &dest, format);
        assert!(out.contains("Backup (full)"), "{out}");
        if format == "archive" {
            // A chain never mixes versions: a new format-2 chain starts with a full archive,
            // the old archives stay, and every point of both restores.
            assert!(out.contains("archive format 1"), "{out}");
            assert!(!d.join(&dest).join(".tidemark-mirror").exists());
            let then = format!("then-{name}.db");
            ok(
                &[
                    "restore",
                    "--from",
                    &dest,
                    "--to",
                    &format!("sqlite:{then}"),
                    "--at",
                    "0",
                ],
                d,
            );
            common::assert_same_dump(
                &normalize(&dump(&d.join(&then))),
                &expected(d, "sqlite-at-1.sql"),
                "the format-1 point of a mixed directory",
            );
            let list = ok(&["list", &dest], d);
            let fulls: Vec<&str> = list.lines().filter(|l| l.contains("-full-")).collect();
            assert_eq!(fulls.len(), 2, "{list}");
            assert!(
                fulls[0].contains(" v1 ") && fulls[1].contains(" v2 "),
                "{list}"
            );
        }
        let other = if format == "folder" {
            "archive"
        } else {
            "folder"
        };
        let err = common::fails(
            &[
                "backup",
                "--source",
                &format!("sqlite:{src}"),
                "--to",
                &dest,
                "--format",
                other,
            ],
            d,
        );
        assert!(err.contains(&format!("holds {format} backups")), "{err}");
        ok(&["verify", &dest], d);
        let r = format!("r-{name}.db");
        ok(
            &["restore", "--from", &dest, "--to", &format!("sqlite:{r}")],
            d,
        );
        common::assert_same_dump(&dump(&d.join(&r)), &dump(&d.join(&src)), name);
    }
}

#[test]
fn format_1_rocksdb_and_sled_backups_restore_into_every_store() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for name in ["rocks-folder", "rocks-chain", "sled-folder", "sled-chain"] {
        let dest = copy(d, name);
        ok(&["verify", &dest], d);
        let target = format!("{name}.db");
        ok(
            &[
                "restore",
                "--from",
                &dest,
                "--to",
                &format!("sqlite:{target}"),
            ],
            d,
        );
        common::assert_same_dump(
            &normalize(&dump(&d.join(&target))),
            &expected(d, &format!("{name}.expected.sql")),
            name,
        );
        // Into the store it came from, and back out: the same records.
        let kind = if name.starts_with("rocks") {
            "rocksdb"
        } else {
            "sled"
        };
        let native = format!("{kind}:{name}-native");
        ok(&["restore", "--from", &dest, "--to", &native], d);
        let again = format!("again-{name}");
        ok(&["backup", "--source", &native, "--to", &again], d);
        let back = format!("back-{name}.db");
        ok(
            &[
                "restore",
                "--from",
                &again,
                "--to",
                &format!("sqlite:{back}"),
            ],
            d,
        );
        common::assert_same_dump(
            &normalize(&dump(&d.join(&back))),
            &expected(d, &format!("{name}.expected.sql")),
            name,
        );
    }
}
