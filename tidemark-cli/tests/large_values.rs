//! Values of a MiB or more are kept apart from their record lines, in value entries of their own
//! (docs/FORMAT.md §3.1): read here with clients tidemark did not write (Python's `zipfile` and
//! `sqlite3`, the `sqlite3` shell, rocksdict, plain sled), through incrementals, compaction and
//! damage.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::archive_paths as archives;
use common::{assert_same_dump, dump, ok, python_script, sql, tidemark};

use std::path::Path;

/// A table `t` of a row with a BLOB of 6,000,000 random bytes (two value entries) and one of a
/// single byte.
const ONE_LARGE_ROW: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, img BLOB);
     INSERT INTO t VALUES (1, randomblob(6000000)), (2, x'01');";

/// `tidemark backup` of `src.db` into the archive chain `ar`, quietly.
fn backup_args() -> Vec<&'static str> {
    [&common::ARCHIVE_BACKUP[..], &["-q"]].concat()
}

/// Checks with Python's `zipfile` (deflate, the default codec) that every BLOB or TEXT column of
/// `db`'s table `t` of 1 MiB or more is in value entries whose bytes are the column's, that
/// smaller ones are in their lines, and that `apart` columns and `entries` value entries are
/// there.
fn check_with_python(d: &Path, archive: &Path, apart: usize, entries: usize) {
    python_script(
        d,
        &format!(
            r#"
import json, sqlite3, zipfile
z = zipfile.ZipFile({archive:?})
names = z.namelist()
values = [n for n in names if n.startswith("values/")]
db = sqlite3.connect("src.db")
apart = 0
for n in names:
    if not n.startswith("data/t/"):
        continue
    for line in z.read(n).splitlines():
        row = json.loads(line)["row"]
        img, doc = db.execute("SELECT img, doc FROM t WHERE id = ?", (row["id"],)).fetchone()
        for col, want in (("img", img), ("doc", doc)):
            v = row[col]
            if isinstance(v, dict) and ("$entries" in v or "$text_entries" in v):
                s = v.get("$entries") or v.get("$text_entries")
                got = b"".join(z.read("values/t/%06d-%06d.bin" % (s["id"], c))
                               for c in range(1, s["chunks"] + 1))
                assert len(got) == s["bytes"], (row["id"], col)
                assert got == (want if isinstance(want, bytes) else want.encode()), (row["id"], col)
                assert len(got) >= 1 << 20, (row["id"], col, len(got))
                apart += 1
            elif want is not None:
                assert len(want) < 1 << 20, (row["id"], col, len(want))
assert apart == {apart}, apart
assert len(values) == {entries}, values
"#
        ),
    );
}

#[test]
fn sqlite_values_of_a_mib_or_more_are_kept_apart_and_restore_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let db = d.join("src.db");
    // 9,000,000 bytes: three entries of 4 MiB at most; exactly 1 MiB is kept apart, one byte
    // less is not; a TEXT of 1.2 MB too.
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, img BLOB, doc TEXT, n INT);
         INSERT INTO t VALUES (1, randomblob(9000000), hex(randomblob(600000)), 1);
         INSERT INTO t VALUES (2, x'00ff', 'small', 2);
         INSERT INTO t VALUES (3, randomblob(1048576), NULL, 3);
         INSERT INTO t VALUES (4, randomblob(1048575), 'x', 4);",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    ok(&backup_args(), d);
    let full = archives(&d.join("ar")).pop().unwrap();
    check_with_python(d, &full, 3, 5);
    let v = ok(&["verify", "ar"], d);
    assert!(v.contains("4 records"), "{v}");

    // Incrementals: a value kept apart replaced, a row deleted, a small change beside a large
    // value (the whole row is written again), a new large row.
    let rounds = [
        "UPDATE t SET img = randomblob(5000000) WHERE id = 3; DELETE FROM t WHERE id = 2;",
        "UPDATE t SET n = 10 WHERE id = 1; INSERT INTO t VALUES (5, randomblob(2000000), 'y', 5);",
        "UPDATE t SET img = NULL WHERE id = 5;",
        "INSERT INTO t VALUES (6, 'z', randomblob(1500000), 6);",
    ];
    let mut states = vec![dump(&db)];
    for round in rounds {
        sql(&db, round);
        let out = ok(&backup_args(), d);
        assert!(out.is_empty(), "{out}");
        states.push(dump(&db));
    }
    let newest = archives(&d.join("ar")).pop().unwrap();
    assert!(newest.to_string_lossy().contains("-incr-"), "{newest:?}");
    ok(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &states[4], "the newest point");
    // The point of the second incremental, whose archive holds rows 1 and 5 (whole, their
    // values kept apart: 3 + 1 + 1 entries).
    let second = &archives(&d.join("ar"))[2];
    let zip = zip::ZipArchive::new(std::fs::File::open(second).unwrap()).unwrap();
    let values = zip
        .file_names()
        .filter(|n| n.starts_with("values/t/"))
        .count();
    assert_eq!(values, 5, "{:?}", zip.file_names().collect::<Vec<_>>());
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:at2.db",
            "--at",
            &common::checkpoint_of(second).to_string(),
        ],
        d,
    );
    assert_same_dump(
        &dump(&d.join("at2.db")),
        &states[2],
        "the second incremental",
    );

    // Compaction merges the incrementals, reading each value kept apart and writing it anew.
    ok(&["compact", "ar", "--fanout", "2"], d);
    let names: Vec<String> = archives(&d.join("ar"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.matches('-').count() == 4),
        "a compacted archive: {names:?}"
    );
    ok(&["verify", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "sqlite:c.db"], d);
    assert_same_dump(&dump(&d.join("c.db")), &states[4], "after compaction");
    // The sqlite3 shell finds the restored database sound.
    let out = std::process::Command::new("sqlite3")
        .arg(d.join("c.db"))
        .arg("PRAGMA integrity_check; SELECT length(img), length(doc) FROM t WHERE id = 1;")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok\n9000000|1200000\n"
    );
}

/// One byte flipped inside a value entry: `verify` finds it, and a restore writes nothing.
#[test]
fn a_flipped_byte_in_a_value_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    sql(
        &d.join("src.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, img BLOB, doc TEXT);
         INSERT INTO t VALUES (1, zeroblob(6000000), 'a');",
    );
    ok(&backup_args(), d);
    let archive = archives(&d.join("ar")).pop().unwrap();
    // Where the second value entry's data lies, from Python's zipfile.
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import struct, zipfile
z = zipfile.ZipFile({archive:?})
i = z.getinfo("values/t/000001-000002.bin")
f = open({archive:?}, "rb"); f.seek(i.header_offset)
h = f.read(30)
n, e = struct.unpack("<HH", h[26:30])
print(i.header_offset + 30 + n + e + i.compress_size // 2)
"#
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let at: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&archive, bytes).unwrap();
    let v = tidemark(&["verify", "ar"], d);
    assert!(!v.status.success());
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(err.contains("tidemark-000001-full-"), "{err}");
    let r = tidemark(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
    assert!(!r.status.success());
    assert!(!d.join("r.db").exists());
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_values_of_a_mib_or_more_restore_exactly() {
    use common::rocksapp;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    rocksapp(&["write", "src", "0", "50"], d);
    rocksapp(&["big", "src", "big-a", "7000000", "1"], d);
    rocksapp(&["big", "src", "big-b", "1048576", "2"], d);
    let backup = [
        "backup",
        "--source",
        "rocksdb:src",
        "--to",
        "ar",
        "--format",
        "archive",
        "--compression",
        "zstd",
        "-q",
    ];
    ok(&backup, d);
    rocksapp(&["big", "src", "big-b", "3000000", "3"], d);
    rocksapp(&["big", "src", "big-c", "2000000", "4"], d);
    ok(&backup, d);
    assert_eq!(archives(&d.join("ar")).len(), 2);
    ok(&["verify", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "rocksdb:copy"], d);
    assert_eq!(
        rocksapp(&["dump", "copy"], d),
        rocksapp(&["dump", "src"], d),
        "the restored database, read by rocksdict"
    );
}

#[cfg(feature = "sled")]
#[test]
fn sled_values_of_a_mib_or_more_restore_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let db = common::open_sled(&d.join("app"));
        db.insert(b"big", big.clone()).unwrap();
        db.insert(b"small", b"1".to_vec()).unwrap();
        db.flush().unwrap();
    }
    common::wait_for_sled_to_let_go(&d.join("app"));
    ok(
        &[
            "backup", "--source", "sled:app", "--to", "ar", "--format", "archive", "-q",
        ],
        d,
    );
    ok(&["verify", "ar"], d);
    ok(&["restore", "--from", "ar", "--to", "sled:copy"], d);
    let db = common::open_sled(&d.join("copy"));
    assert_eq!(db.get(b"big").unwrap().unwrap().as_ref(), &big[..]);
    assert_eq!(db.get(b"small").unwrap().unwrap().as_ref(), b"1");
    assert_eq!(db.len(), 2);
}

/// On S3 (a real S3-compatible server on loopback), a value's entries are read by ranged
/// requests of their own: an incremental chain with values kept apart verifies and restores.
#[cfg(feature = "remote")]
#[test]
fn values_kept_apart_round_trip_through_an_object_store() {
    use conformance_tests::s3::bucket;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let db = d.join("src.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, img BLOB, doc TEXT);
         INSERT INTO t VALUES (1, randomblob(9000000), 'a'), (2, x'01', 'b');",
    );
    ok(&["track", "--source", "sqlite:src.db"], d);
    let url = format!("{}/chain", bucket("large-values"));
    let run = |args: &[&str]| common::succeeds(&mut common::against_moto(d), args);
    let backup = [
        "backup",
        "--source",
        "sqlite:src.db",
        "--to",
        &url,
        "--compression",
        "zstd",
        "-q",
    ];
    run(&backup);
    sql(
        &db,
        "UPDATE t SET doc = hex(randomblob(700000)) WHERE id = 2; INSERT INTO t VALUES (3, NULL, 'c');",
    );
    run(&backup);
    let v = run(&["verify", &url]);
    assert!(v.contains("3 records"), "{v}");
    run(&["restore", "--from", &url, "--to", "sqlite:r.db"]);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restored from S3");
}

/// An encrypted chain reads a value's entries through its sealed chunks.
#[test]
fn values_kept_apart_round_trip_through_an_encrypted_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let db = d.join("src.db");
    sql(&db, ONE_LARGE_ROW);
    std::fs::write(d.join("pass"), "correct horse\n").unwrap();
    let key = ["--encrypt-passphrase-file", "pass"];
    let mut args = backup_args();
    args.extend(key);
    ok(&args, d);
    let v = ok(&["verify", "ar", key[0], key[1]], d);
    assert!(v.contains("2 records"), "{v}");
    ok(
        &[
            "restore",
            "--from",
            "ar",
            "--to",
            "sqlite:r.db",
            key[0],
            key[1],
        ],
        d,
    );
    assert_same_dump(
        &dump(&d.join("r.db")),
        &dump(&db),
        "restored from a sealed chain",
    );
}

/// The newest archive of `ar` rewritten by `edit` (given each entry of the old one in turn and
/// the new zip), renamed with its correct file CRC32, the chain head removed: damage only the
/// checks inside an archive can find.
fn rewrite(
    ar: &Path,
    mut edit: impl FnMut(
        zip::read::ZipFile<'_, std::fs::File>,
        &mut zip::ZipWriter<std::io::Cursor<Vec<u8>>>,
    ),
) {
    let newest = archives(ar).pop().unwrap();
    let mut old = zip::ZipArchive::new(std::fs::File::open(&newest).unwrap()).unwrap();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..old.len() {
        edit(old.by_index_raw(i).unwrap(), &mut z);
    }
    let bytes = z.finish().unwrap().into_inner();
    std::fs::remove_file(&newest).unwrap();
    let crc = crc32fast::hash(&bytes);
    let name = newest.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(
        ar.join(format!("{}{crc:08x}.zip", &name[..name.len() - 12])),
        bytes,
    )
    .unwrap();
    let _ = std::fs::remove_file(ar.join(".tidemark-head"));
}

/// Value entries missing, swapped or left over, in an archive whose file CRC32 matches: verify
/// names each, and a restore writes no wrong value.
#[test]
fn value_entries_missing_swapped_or_left_over_are_found() {
    use std::io::Write;
    let cases: [(&str, &str, &str); 3] = [
        (
            "missing",
            "value 1 has 1 entries",
            "missing from the archive",
        ),
        ("swapped", "out of order", "record CRC32"),
        ("left over", "a value that no line names", ""),
    ];
    for (case, verify_says, restore_says) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let db = d.join("src.db");
        sql(&db, ONE_LARGE_ROW);
        ok(&backup_args(), d);
        rewrite(&d.join("ar"), |entry, z| {
            let name = entry.name().to_string();
            match (case, name.as_str()) {
                ("missing", "values/t/000001-000002.bin") => {}
                ("swapped", "values/t/000001-000001.bin") => z
                    .raw_copy_file_rename(entry, "values/t/000001-000002.bin")
                    .unwrap(),
                ("swapped", "values/t/000001-000002.bin") => z
                    .raw_copy_file_rename(entry, "values/t/000001-000001.bin")
                    .unwrap(),
                ("left over", "tidemark/manifest.json") => {
                    z.start_file(
                        "values/t/000002-000001.bin",
                        zip::write::SimpleFileOptions::default()
                            .compression_method(zip::CompressionMethod::Stored),
                    )
                    .unwrap();
                    z.write_all(b"not named by any line").unwrap();
                    z.raw_copy_file(entry).unwrap();
                }
                _ => z.raw_copy_file(entry).unwrap(),
            }
        });
        let v = tidemark(&["verify", "ar"], d);
        let e = String::from_utf8_lossy(&v.stderr);
        assert!(
            !v.status.success() && e.contains(verify_says),
            "{case}: {e}"
        );
        let r = tidemark(&["restore", "--from", "ar", "--to", "sqlite:r.db"], d);
        if restore_says.is_empty() {
            // An entry no line names changes no record: the restore is exact.
            assert!(r.status.success(), "{case}: {r:?}");
            assert_same_dump(&dump(&d.join("r.db")), &dump(&db), case);
        } else {
            let e = String::from_utf8_lossy(&r.stderr);
            assert!(
                !r.status.success() && e.contains(restore_says),
                "{case}: {e}"
            );
            assert!(!d.join("r.db").exists(), "{case}");
            // A partial recovery leaves that record out, names why, and restores the others.
            let r = tidemark(
                &[
                    "restore",
                    "--from",
                    "ar",
                    "--to",
                    "sqlite:partial.db",
                    "--skip-damaged",
                ],
                d,
            );
            let said = common::output_text(&r);
            assert!(said.contains(restore_says), "{case}: {said}");
            let out = std::process::Command::new("sqlite3")
                .arg(d.join("partial.db"))
                .arg("SELECT id, hex(img) FROM t;")
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "2|01\n", "{case}");
        }
    }
}
