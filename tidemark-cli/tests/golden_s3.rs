//! Old backups stay readable on an object store too: `format2-s3-0be2f12` (`tests/fixtures/`,
//! made by `make-format2-s3.sh` at that commit) holds the objects two archive chains left in a
//! bucket (docs/FORMAT.md §4), read back with boto3:
//!
//! - `objects/plain/`: a tracked SQLite database's chain, a full, four incrementals and the
//!   archives `tidemark compact --fanout 2` merged them into, with their seals and the head;
//! - `objects/sealed/`: a chain sealed to an age recipient (identity `id.txt`, key file and
//!   copy), a full and two incrementals, whose seals hold encrypted manifests (§5.3).
//!
//! `<chain>-at-<checkpoint>.sql` are the `sqlite3` shell's dumps at each point, and `src.db`
//! the plain chain's database at its last. The objects are put into a bucket of a real
//! S3-compatible server (moto) as they were, and every point must verify and restore exactly;
//! the plain chain then takes new backups.
#![cfg(all(feature = "sqlite", feature = "remote"))]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::dump;
use conformance_tests::s3::{bucket, http, keys};
use std::path::{Path, PathBuf};

const FIXTURE: &str = "format2-s3-0be2f12";

fn ok(args: &[&str], cwd: &Path) -> String {
    common::succeeds(&mut common::against_moto(cwd), args)
}

/// Unpacks the fixture into `d` and puts every object of `chain` into a new bucket `name`, at
/// its key; the fixture's root and the chain's URL.
fn in_bucket(d: &Path, name: &str, chain: &str) -> (PathBuf, String) {
    let root = common::unpack_fixture(d, FIXTURE);
    let url = bucket(name);
    let objects = root.join("objects");
    let mut dirs = vec![objects.join(chain)];
    let mut put = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let key = path.strip_prefix(&objects).unwrap().to_str().unwrap();
            let body = std::fs::read(&path).unwrap();
            assert_eq!(http("PUT", &format!("/{name}/{key}"), &body), 200, "{key}");
            put += 1;
        }
    }
    assert_eq!(keys(name).len(), put, "every object in the bucket");
    (root, format!("{url}/{chain}"))
}

/// Restores `url` (at `at`, if given) into `target` with `key`, and compares.
fn restores_as(root: &Path, url: &str, at: Option<u64>, key: &[&str], target: &str, want: &str) {
    common::assert_restores_as(ok, root, (url, at), key, target, want);
}

#[test]
fn a_chain_in_a_bucket_with_compacted_archives_restores_every_point_and_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let (root, url) = in_bucket(t.path(), "golden-s3-plain", "plain");
    let points = common::dumps_at(&root, "plain-at-");
    assert_eq!(points.len(), 5, "the fixture's points");
    let out = ok(&["verify", &url], &root);
    assert!(out.contains("is intact"), "{out}");
    // The five backups and the two compacted archives.
    let listed = ok(&["list", &url], &root);
    assert_eq!(listed.lines().count(), 1 + 7, "{listed}");
    assert!(listed.contains("tidemark-000002-000004-incr"), "{listed}");
    for (at, want) in &points {
        restores_as(&root, &url, Some(*at), &[], &format!("r{at}.db"), want);
    }
    restores_as(&root, &url, None, &[], "latest.db", &points[4].1);

    // A new tidemark continues the chain from its database (the key state stayed in the cache
    // of the machine that made it, so a full backup first, which it says), and the old points
    // still restore.
    let backup = || {
        ok(
            &[
                "backup",
                "--source",
                "sqlite:src.db",
                "--to",
                &url,
                "--format",
                "archive",
            ],
            &root,
        )
    };
    let db = root.join("src.db");
    common::sql(
        &db,
        "INSERT INTO kv VALUES ('f', 'new'); DELETE FROM t WHERE id = 1;",
    );
    let out = backup();
    assert!(
        out.contains("key state") && out.contains("Archive (full)"),
        "{out}"
    );
    common::sql(&db, "UPDATE t SET score = 0 WHERE id = 2;");
    let out = backup();
    assert!(out.contains("Archive (incremental)"), "{out}");
    let out = ok(&["verify", &url], &root);
    assert!(out.contains("is intact"), "{out}");
    restores_as(&root, &url, None, &[], "now.db", &dump(&db));
    let (at, want) = &points[2];
    restores_as(&root, &url, Some(*at), &[], "old.db", want);
}

#[test]
fn a_sealed_chain_in_a_bucket_restores_every_point_with_its_identity() {
    let t = tempfile::tempdir().unwrap();
    let (root, url) = in_bucket(t.path(), "golden-s3-sealed", "sealed");
    let points = common::dumps_at(&root, "sealed-at-");
    assert_eq!(points.len(), 3, "the fixture's points");
    let key = ["--encrypt-identity", "id.txt"];
    // Without the key, what can be checked is; with it, every record.
    let out = ok(&["verify", &url], &root);
    assert!(out.contains("intact as stored"), "{out}");
    let out = ok(&["verify", &url, key[0], key[1]], &root);
    assert!(
        out.contains("is intact") && out.contains("3 archive(s)"),
        "{out}"
    );
    for (at, want) in &points {
        restores_as(&root, &url, Some(*at), &key, &format!("r{at}.db"), want);
    }
}
