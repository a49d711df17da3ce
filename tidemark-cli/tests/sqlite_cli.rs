//! End-to-end tests of the `tidemark` binary on real SQLite databases, written by the `sqlite3`
//! shell (an independent client).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;
use common::{assert_same_dump, dump, fails, ok, sql, tidemark};

use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Self {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn join(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
}

const RICH_SCHEMA: &str = r#"
PRAGMA journal_mode=WAL;
PRAGMA user_version=7;
CREATE TABLE t_int(id INTEGER PRIMARY KEY AUTOINCREMENT, i INTEGER, r REAL, t TEXT, b BLOB, n);
CREATE TABLE t_text(name TEXT PRIMARY KEY, v);
CREATE TABLE t_norowid(a INTEGER, b TEXT, c, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE t_nopk(x, y);
CREATE TABLE "we""ird / name"("col space" TEXT PRIMARY KEY, "é" BLOB);
CREATE TABLE t_gen(id INTEGER PRIMARY KEY, a INTEGER, twice INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL);
CREATE INDEX t_int_i ON t_int(i);
CREATE VIEW v_int AS SELECT id, i FROM t_int;
CREATE TRIGGER t_int_touch AFTER INSERT ON t_int BEGIN INSERT INTO t_nopk VALUES ('trig', NEW.id); END;
INSERT INTO t_int(i, r, t, b, n) VALUES
  (9223372036854775807, -1.5, 'plain', x'00ff', NULL),
  (-9223372036854775808, 1e308, CAST(x'80ff41' AS TEXT), x'', 1.5),
  (0, 4.9e-324, '', NULL, 'txt'),
  (42, 0.1, 'snow ☃', zeroblob(100000), x'01');
INSERT INTO t_text VALUES ('zeta', 1), ('alpha', 2), ('mid', 3.25);
INSERT INTO t_norowid VALUES (1, 'a', x'01'), (1, 'b', NULL), (2, 'a', 'x');
INSERT INTO t_nopk VALUES (1, 2), (1, 2), (NULL, NULL);
INSERT INTO "we""ird / name" VALUES ('k 1', x'cafe');
INSERT INTO t_gen(id, a) VALUES (1, 21);
"#;

#[test]
fn full_then_shell_written_incrementals_dump_identically() {
    let d = Dir::new();
    let db = d.join("src.db");
    sql(&db, RICH_SCHEMA);
    let first = ok(
        &["backup", "--source", "sqlite:src.db", "--to", "bk"],
        d.path(),
    );
    assert!(first.contains("Backup (full)"), "{first}");
    ok(&["track", "--source", "sqlite:src.db"], d.path());
    ok(
        &["backup", "--source", "sqlite:src.db", "--to", "bk"],
        d.path(),
    );
    let rounds = [
        "UPDATE t_int SET r = r * 10 WHERE id = 2;
         DELETE FROM t_int WHERE id = 3;
         INSERT INTO t_int(i) VALUES (5);
         UPDATE t_text SET name = 'beta' WHERE name = 'alpha';
         INSERT OR REPLACE INTO t_text VALUES ('mid', 'replaced');
         DELETE FROM t_nopk WHERE x IS NULL;
         UPDATE t_norowid SET c = c || 'y' WHERE a = 2;
         UPDATE t_gen SET a = 50;",
        "INSERT INTO t_text VALUES ('zeta2', x'00');
         DELETE FROM t_norowid WHERE a = 1 AND b = 'a';
         UPDATE \"we\"\"ird / name\" SET \"é\" = NULL;
         BEGIN; INSERT INTO t_int(i, t) VALUES (6, 'in a txn'); DELETE FROM t_int WHERE id = 1; COMMIT;",
        "DELETE FROM t_nopk; INSERT INTO t_nopk VALUES (3, 4);",
    ];
    for (i, round) in rounds.iter().enumerate() {
        sql(&db, round);
        let out = ok(
            &["backup", "--source", "sqlite:src.db", "--to", "bk"],
            d.path(),
        );
        assert!(out.contains("Backup (incremental)"), "round {i}: {out}");
        let restored = format!("r{i}.db");
        ok(
            &[
                "restore",
                "--from",
                "bk",
                "--to",
                &format!("sqlite:{restored}"),
            ],
            d.path(),
        );
        assert_same_dump(&dump(&d.join(&restored)), &dump(&db), &format!("round {i}"));
    }
    let verified = ok(&["verify", "bk"], d.path());
    assert!(verified.contains("intact"), "{verified}");
}

/// A database without change tracking, written by the sqlite3 shell, backed up into an archive
/// chain: every backup after the first is a diff-based incremental (two scans of one snapshot:
/// one sorts the keys and finds what changed, one writes it) that holds exactly the records
/// changed and deleted, and restores equal to the database; integer keys past 9 (whose decimal
/// keys do not sort as numbers) and every kind of table in the rich schema. The database is
/// never written: tracking stays absent.
#[test]
fn an_untracked_database_gets_diff_based_incrementals_in_an_archive_chain() {
    let d = Dir::new();
    let db = d.join("src.db");
    sql(&db, RICH_SCHEMA);
    sql(
        &db,
        "INSERT INTO t_int(id, i) VALUES (10, 1), (100, 2), (11, 3), (9, 4), (1000, 5);",
    );
    let backup = || ok(&common::ARCHIVE_BACKUP, d.path());
    let first = backup();
    assert!(first.contains("Backup (full)"), "{first}");
    // (script, records written, records deleted): the trigger on t_int adds a t_nopk row for
    // each row inserted into t_int.
    let rounds = [
        ("UPDATE t_int SET r = 2.5 WHERE id = 100;", 1, 0),
        (
            "DELETE FROM t_int WHERE id = 10;
             INSERT INTO t_int(id, i) VALUES (12, 7);
             UPDATE t_text SET v = 'changed' WHERE name = 'alpha';
             UPDATE t_norowid SET c = c || 'y' WHERE a = 2;",
            4,
            1,
        ),
        (
            "DELETE FROM t_nopk WHERE x IS NULL;
             UPDATE \"we\"\"ird / name\" SET \"é\" = NULL;
             UPDATE t_gen SET a = 50;
             INSERT INTO t_text VALUES ('zeta2', x'00');",
            3,
            1,
        ),
        ("", 0, 0),
    ];
    for (i, (script, written, deleted)) in rounds.iter().enumerate() {
        if !script.is_empty() {
            sql(&db, script);
        }
        let out = backup();
        assert!(
            out.contains("Backup (incremental, diff-based)")
                && out.contains(&format!(": {written} records written, {deleted} deleted")),
            "round {i}: {out}"
        );
        let restored = format!("r{i}.db");
        ok(
            &[
                "restore",
                "--from",
                "ar",
                "--to",
                &format!("sqlite:{restored}"),
            ],
            d.path(),
        );
        assert_same_dump(&dump(&d.join(&restored)), &dump(&db), &format!("round {i}"));
    }
    let verified = ok(&["verify", "ar"], d.path());
    assert!(verified.contains("intact"), "{verified}");
    let objects = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM sqlite_schema WHERE name LIKE '%tidemark%'")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&objects.stdout).trim(), "0");
}

#[test]
fn shipped_example_round_trips() {
    let d = Dir::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop.db");
    std::fs::copy(example, d.join("shop.db")).unwrap();
    let out = ok(
        &["backup", "--source", "sqlite:shop.db", "--to", "bk"],
        d.path(),
    );
    assert!(out.contains("2300 in backup"), "{out}");
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:copy.db"],
        d.path(),
    );
    assert_same_dump(
        &dump(&d.join("copy.db")),
        &dump(&d.join("shop.db")),
        "restore",
    );
    let doc = d.join("bk/products/SKU-0001/document.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&doc).unwrap()).unwrap();
    assert_eq!(json["row"]["price_cents"], 236, "{json}");
}

#[test]
fn bad_input_gets_plain_errors_and_writes_nothing() {
    let d = Dir::new();
    let src = |s: &str| format!("sqlite:{s}");
    let e = fails(
        &["backup", "--source", "mongo:x.db", "--to", "bk"],
        d.path(),
    );
    assert!(e.contains("unknown store kind `mongo`"), "{e}");
    // URL habit: `sqlite://app.db` is refused with the form that works.
    let e = fails(
        &["backup", "--source", "sqlite://app.db", "--to", "bk"],
        d.path(),
    );
    assert!(e.contains("did you mean `sqlite:app.db`?"), "{e}");
    let e = fails(
        &["restore", "--from", "bk", "--to", "sqlite:///tmp/x.db"],
        d.path(),
    );
    assert!(e.contains("did you mean `sqlite:/tmp/x.db`?"), "{e}");
    let e = fails(
        &["backup", "--source", &src("missing.db"), "--to", "bk"],
        d.path(),
    );
    assert!(
        e.contains("missing.db") && e.contains("no such file"),
        "{e}"
    );
    std::fs::write(d.join("junk.db"), b"this is not a database, just text").unwrap();
    let e = fails(
        &["backup", "--source", &src("junk.db"), "--to", "bk"],
        d.path(),
    );
    assert!(
        e.contains("junk.db") && e.contains("not a SQLite database"),
        "{e}"
    );
    assert!(!d.join("bk").exists(), "nothing written for a bad source");

    sql(
        &d.join("ok.db"),
        "CREATE TABLE t(a); INSERT INTO t VALUES (1);",
    );
    std::fs::write(d.join("a-file"), b"x").unwrap();
    let e = fails(
        &["backup", "--source", &src("ok.db"), "--to", "a-file"],
        d.path(),
    );
    assert!(
        e.contains("a-file") && e.contains("not a backup directory"),
        "{e}"
    );
    // A database given where its backup was meant: every command says it is not a backup
    // directory (not "Not a directory (os error 20)" from inside it, nor "no such" one).
    for args in [
        &["verify", "ok.db"][..],
        &["restore", "--from", "ok.db", "--to", "sqlite:new.db"],
        &["list", "ok.db"],
        &["prune", "ok.db", "--keep-last", "1"],
        &["compact", "ok.db"],
    ] {
        let e = fails(args, d.path());
        assert!(
            e.contains("ok.db: not a backup directory") && !e.contains("os error"),
            "{args:?}: {e}"
        );
    }
    assert!(!d.join("new.db").exists());

    // An unwritable backup directory (root ignores permissions, so use a path under a file).
    let e = fails(
        &["backup", "--source", &src("ok.db"), "--to", "a-file/sub"],
        d.path(),
    );
    assert!(e.contains("a-file/sub"), "{e}");
    // The cause is said once, not once per layer that carries it.
    assert_eq!(e.matches("(os error").count(), 1, "{e}");

    ok(
        &["backup", "--source", &src("ok.db"), "--to", "bk"],
        d.path(),
    );
    // A non-empty target is refused and left alone.
    sql(
        &d.join("taken.db"),
        "CREATE TABLE keep(x); INSERT INTO keep VALUES ('mine');",
    );
    let before = dump(&d.join("taken.db"));
    let e = fails(
        &["restore", "--from", "bk", "--to", &src("taken.db")],
        d.path(),
    );
    assert!(e.contains("taken.db") && e.contains("--force"), "{e}");
    assert_same_dump(&dump(&d.join("taken.db")), &before, "refused target");
    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            &src("taken.db"),
            "--force",
        ],
        d.path(),
    );
    assert_same_dump(
        &dump(&d.join("taken.db")),
        &dump(&d.join("ok.db")),
        "restore",
    );

    // A damaged manifest stops restore, naming the file; the next backup replaces it with a
    // full backup and says why (it never fails every later run).
    let manifest = d.join("bk/.tidemark/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"records\": 1", "\"records\": 2")).unwrap();
    let e = fails(
        &["restore", "--from", "bk", "--to", &src("new.db")],
        d.path(),
    );
    assert!(e.contains("manifest.json") && e.contains("damaged"), "{e}");
    assert!(!d.join("new.db").exists());
    let out = ok(
        &["backup", "--source", &src("ok.db"), "--to", "bk"],
        d.path(),
    );
    assert!(
        out.contains("Backup (full)") && out.contains("manifest is damaged"),
        "{out}"
    );
    ok(&["verify", "bk"], d.path());
    let e = fails(
        &["restore", "--from", "nowhere", "--to", &src("new.db")],
        d.path(),
    );
    assert!(e.contains("nowhere"), "{e}");
}

/// A folder backup a newer tidemark wrote (its manifest checks out but says format version
/// 99) is not damage: every command refuses it with exit 1, and a backup does not replace it
/// with a full one (it used to, taking it for a damaged manifest; verify called it damaged).
#[test]
fn a_folder_of_a_newer_format_is_refused_not_replaced() {
    let d = Dir::new();
    sql(
        &d.join("s.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    ok(
        &["backup", "--source", "sqlite:s.db", "--to", "bk"],
        d.path(),
    );
    let manifest = d.join("bk/.tidemark/manifest.json");
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    file["manifest"]["format_version"] = 99.into();
    let crc = crc32fast::hash(&serde_json::to_vec(&file["manifest"]).unwrap());
    file["crc32"] = crc.into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    let before = common::snapshot_files(&d.join("bk"));
    sql(&d.join("s.db"), "INSERT INTO t VALUES (2, 'b');");
    for args in [
        &["backup", "--source", "sqlite:s.db", "--to", "bk"][..],
        &["verify", "bk"],
        &["list", "bk"],
        &["restore", "--from", "bk", "--to", "sqlite:no.db"],
    ] {
        let out = tidemark(args, d.path());
        common::assert_refused_as_newer(&out, args, "format version 99 is not supported");
    }
    assert!(!d.join("no.db").exists());
    // The lock file names its last holder (the refused backup): everything else is as it was.
    let after = common::snapshot_files(&d.join("bk"));
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .filter(|k| k != ".tidemark-lock")
        .collect();
    assert!(
        changed.is_empty(),
        "the newer backup is left as it was: {changed:?}"
    );
}

#[test]
fn damage_is_found_by_verify_and_refused_by_restore() {
    let d = Dir::new();
    sql(
        &d.join("s.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, s TEXT);
         INSERT INTO t VALUES (1, x'00112233', 'one'), (2, randomblob(1000), 'two');",
    );
    ok(
        &["backup", "--source", "sqlite:s.db", "--to", "bk"],
        d.path(),
    );
    // Flip one byte of an attachment.
    let att = d.join("bk/t/2/attachments/b");
    let mut bytes = std::fs::read(&att).unwrap();
    bytes[500] ^= 0x01;
    std::fs::write(&att, bytes).unwrap();
    let out = tidemark(&["verify", "bk"], d.path());
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("bk/t/2/document.json") && e.contains("attachment `b`"),
        "{e}"
    );
    let e = fails(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert!(e.contains("CRC32"), "{e}");
    assert!(
        !d.join("r.db").exists(),
        "a refused restore leaves no target behind"
    );
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tidemark-restore"))
        .collect();
    assert!(leftovers.is_empty(), "temporary restore files removed");
    // Flip a byte inside a document's JSON text.
    std::fs::write(&att, b"").unwrap();
    let doc = d.join("bk/t/1/document.json");
    let text = std::fs::read_to_string(&doc).unwrap();
    std::fs::write(&doc, text.replace("\"one\"", "\"onE\"")).unwrap();
    let out = tidemark(&["verify", "bk"], d.path());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("bk/t/1/document.json") && e.contains("record CRC32"),
        "{e}"
    );
    assert!(e.contains("2 problems"), "{e}");
}

#[test]
fn replace_on_unique_conflict_is_caught_by_the_count_check() {
    let d = Dir::new();
    let db = d.join("u.db");
    sql(&db, "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT UNIQUE); INSERT INTO u VALUES (1, 'a'), (2, 'b');");
    ok(&["track", "--source", "sqlite:u.db"], d.path());
    ok(
        &["backup", "--source", "sqlite:u.db", "--to", "bk"],
        d.path(),
    );
    // REPLACE deletes row 1 (UNIQUE conflict on email) without firing delete triggers.
    sql(&db, "INSERT OR REPLACE INTO u VALUES (3, 'a');");
    let out = ok(
        &["backup", "--source", "sqlite:u.db", "--to", "bk"],
        d.path(),
    );
    assert!(
        out.contains("Backup (full)") && out.contains("change log accounts for"),
        "{out}"
    );
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
}

/// The same hole through a `CREATE UNIQUE INDEX`, in an archive chain; a REPLACE that
/// conflicts on the key itself needs no check (the insert trigger logs that key) and stays an
/// exact incremental.
#[test]
fn replace_through_a_unique_index_is_caught_and_key_conflicts_stay_incremental() {
    let d = Dir::new();
    let db = d.join("u.db");
    sql(
        &db,
        "CREATE TABLE u(id INTEGER PRIMARY KEY, email TEXT); CREATE UNIQUE INDEX u_email ON u(email);
         CREATE TABLE p(name TEXT PRIMARY KEY, n INTEGER);
         INSERT INTO u VALUES (1, 'a'), (2, 'b'); INSERT INTO p VALUES ('x', 1), ('y', 2);",
    );
    ok(&["track", "--source", "sqlite:u.db"], d.path());
    let backup = || {
        ok(
            &[
                "backup",
                "--source",
                "sqlite:u.db",
                "--to",
                "bk",
                "--format",
                "archive",
            ],
            d.path(),
        )
    };
    backup();
    sql(&db, "INSERT OR REPLACE INTO p VALUES ('x', 10);");
    let out = backup();
    assert!(out.contains("Backup (incremental)"), "{out}");
    sql(&db, "INSERT OR REPLACE INTO u VALUES (3, 'a');");
    let out = backup();
    assert!(
        out.contains("Backup (full)") && out.contains("change log accounts for"),
        "{out}"
    );
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
}

#[test]
fn tables_created_after_tracking_are_never_missed() {
    let d = Dir::new();
    let db = d.join("n.db");
    sql(
        &db,
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v); INSERT INTO a VALUES (1, 'x');",
    );
    ok(&["track", "--source", "sqlite:n.db"], d.path());
    ok(
        &["backup", "--source", "sqlite:n.db", "--to", "bk"],
        d.path(),
    );
    // A new table written before any backup saw it: capture missed those rows.
    sql(
        &db,
        "CREATE TABLE b(id INTEGER PRIMARY KEY, v); INSERT INTO b VALUES (1, 'y');",
    );
    let out = ok(
        &["backup", "--source", "sqlite:n.db", "--to", "bk"],
        d.path(),
    );
    assert!(
        out.contains("Backup (full)")
            && out.contains("no longer available")
            && out.contains("table(s) b got capture triggers while holding rows"),
        "{out}"
    );
    // A new, still empty table is tracked at the next backup without a gap.
    sql(&db, "CREATE TABLE c(id INTEGER PRIMARY KEY, v);");
    let out = ok(
        &["backup", "--source", "sqlite:n.db", "--to", "bk"],
        d.path(),
    );
    assert!(out.contains("Backup (incremental)"), "{out}");
    sql(&db, "INSERT INTO c VALUES (7, 'z'); ALTER TABLE a RENAME TO a2; INSERT INTO a2 VALUES (2, 'w');");
    let out = ok(
        &["backup", "--source", "sqlite:n.db", "--to", "bk"],
        d.path(),
    );
    assert!(out.contains("Backup ("), "{out}");
    sql(
        &db,
        "INSERT INTO a2 VALUES (3, 'after rename'); DROP TABLE b;",
    );
    let out = ok(
        &["backup", "--source", "sqlite:n.db", "--to", "bk"],
        d.path(),
    );
    assert!(out.contains("Backup (incremental)"), "{out}");
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
}

#[test]
fn another_process_writing_in_rollback_journal_mode() {
    let d = Dir::new();
    let db = d.join("busy.db");
    sql(&db, "PRAGMA journal_mode=DELETE; CREATE TABLE log(id INTEGER PRIMARY KEY, msg TEXT, n INTEGER);");
    ok(&["track", "--source", "sqlite:busy.db"], d.path());
    let script: String = (0..1500)
        .map(|i| format!("INSERT INTO log(msg, n) VALUES ('line {i}', {i}); UPDATE log SET n = n + 1 WHERE id = {};\n", i / 2 + 1))
        .collect();
    let db2 = db.clone();
    let writer = std::thread::spawn(move || sql(&db2, &script));
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let out = ok(
            &[
                "backup",
                "--source",
                "sqlite:busy.db",
                "--to",
                "bk",
                "--quiet",
            ],
            d.path(),
        );
        kinds.push(out);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    writer.join().unwrap();
    let out = ok(
        &["backup", "--source", "sqlite:busy.db", "--to", "bk"],
        d.path(),
    );
    assert!(out.contains("Backup (incremental)"), "{out}");
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
    let n: String = String::from_utf8(
        Command::new("sqlite3")
            .arg(d.join("r.db"))
            .arg("SELECT count(*) FROM log")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(n.trim(), "1500");
}

#[test]
fn json_events_and_partial_restores() {
    let d = Dir::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop.db");
    std::fs::copy(example, d.join("shop.db")).unwrap();
    let out = ok(
        &[
            "backup",
            "--source",
            "sqlite:shop.db",
            "--to",
            "bk",
            "--json",
        ],
        d.path(),
    );
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect();
    let writes: Vec<&serde_json::Value> = events.iter().filter(|e| e["type"] == "write").collect();
    assert_eq!(writes.len(), 2300);
    // Write events name the files where they end up, and those files exist.
    for w in writes.iter().take(50) {
        let file = w["files"][0].as_str().unwrap();
        assert!(!file.contains("staging"), "{file}");
        assert!(d.join(file).is_file(), "{file}");
    }
    let summary = events.last().unwrap();
    assert_eq!(
        (summary["type"].as_str(), summary["records_total"].as_u64()),
        (Some("summary"), Some(2300))
    );

    ok(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:part.db",
            "--collections",
            "customers,orders",
        ],
        d.path(),
    );
    let conn = rusqlite::Connection::open(d.join("part.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["customers", "orders"]);
    let index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'orders_by_customer'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1, "indexes of restored tables come along");
    let e = fails(
        &[
            "restore",
            "--from",
            "bk",
            "--to",
            "sqlite:x.db",
            "--collections",
            "nope",
        ],
        d.path(),
    );
    assert!(
        e.contains("nope") && e.contains("no such collection"),
        "{e}"
    );
}

/// `list` on a folder backup describes its one state (text and `--json`) instead of saying
/// there are no archives.
#[test]
fn list_describes_a_folder_backup() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    );
    ok(
        &["backup", "--source", "sqlite:app.db", "--to", "bk"],
        d.path(),
    );
    let text = ok(&["list", "bk"], d.path());
    assert!(
        text.contains("Folder backup bk") && text.contains("3 records in 1 collections"),
        "{text}"
    );
    let line: serde_json::Value =
        serde_json::from_str(ok(&["list", "bk", "--json"], d.path()).trim()).unwrap();
    assert_eq!(line["type"], "folder");
    assert_eq!(line["records_in_backup"], 3);
    assert_eq!(line["last_run"], "full");
}

/// Why a backup is full is said once (the summary's `Full backup: <reason>`), not twice.
#[test]
fn the_reason_for_a_full_backup_is_said_once() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    ok(
        &["backup", "--source", "sqlite:app.db", "--to", "bk"],
        d.path(),
    );
    // Untracked: the next backup cannot be incremental from a change log and says why.
    sql(&d.join("app.db"), "INSERT INTO t VALUES (2, 'b');");
    let out = ok(
        &["backup", "--source", "sqlite:app.db", "--to", "bk"],
        d.path(),
    );
    let reasons = out.lines().filter(|l| l.contains("full backup")).count()
        + out
            .lines()
            .filter(|l| l.starts_with("Full backup:"))
            .count();
    assert!(out.contains("Full backup:"), "{out}");
    assert_eq!(reasons, 1, "said once: {out}");
}

/// Virtual tables (an FTS5 index, an R*Tree) are not backed up, and the backup says so, naming
/// each with its module, once per run (it said nothing, and the restore lacked them); the
/// ordinary tables, and the FTS index's content table, are restored.
#[test]
fn virtual_tables_left_out_are_named() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE docs(id INTEGER PRIMARY KEY, body TEXT);
         CREATE VIRTUAL TABLE docs_fts USING fts5(body, content='docs', content_rowid='id');
         CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1);
         INSERT INTO docs VALUES (1, 'hello world'), (2, 'other');
         INSERT INTO docs_fts(docs_fts) VALUES ('rebuild');
         INSERT INTO boxes VALUES (1, 0.0, 1.0);",
    );
    for format in ["folder", "archive"] {
        let out = Command::new(common::bin())
            .args(["backup", "--source", "sqlite:app.db", "--to", format])
            .args(["--format", format])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let named: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("not backed up"))
            .collect();
        assert_eq!(named.len(), 1, "{format}: named once: {err}");
        assert!(
            named[0].contains("`docs_fts` (fts5)") && named[0].contains("`boxes` (rtree)"),
            "{format}: {err}"
        );
        // Shadow tables are neither backed up nor named.
        assert!(!named[0].contains("docs_fts_data"), "{format}: {err}");
        ok(
            &[
                "restore",
                "--from",
                format,
                "--to",
                &format!("sqlite:{format}.db"),
            ],
            d.path(),
        );
        let conn = rusqlite::Connection::open(d.join(&format!("{format}.db"))).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(tables, ["docs"], "{format}");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM docs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "{format}");
    }
}

/// An archive backup's summary counts the bytes it wrote (it said `0 B` while parts were still
/// being compressed when it was counted).
#[test]
fn an_archive_summary_counts_its_bytes() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    let out = ok(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "ar",
            "--format",
            "archive",
            "--json",
        ],
        d.path(),
    );
    let summary: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "summary")
        .unwrap();
    assert!(summary["bytes_written"].as_u64().unwrap() > 0, "{out}");
}

/// Every line `--json` prints, of every command that takes it, in both formats, is one JSON
/// object of schema 1 with a known type and snake_case fields; summaries name their command;
/// `-q` prints nothing on success.
#[test]
fn every_command_speaks_one_json_schema_and_q_is_quiet() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    );
    ok(&["track", "--source", "sqlite:app.db"], d.path());
    let change = |n: u32| {
        sql(
            &d.join("app.db"),
            &format!(
                "INSERT INTO t VALUES ({}, 'x'); UPDATE t SET v = 'r{n}' WHERE id = 1;",
                n + 10
            ),
        )
    };
    let mut lines = Vec::new();
    let mut run = |args: &[&str]| {
        let out = ok(args, d.path());
        assert!(!out.trim().is_empty(), "{args:?} printed nothing");
        for l in out.lines() {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{args:?}: not one JSON object per line ({e}): {l}"));
            lines.push((args.join(" "), v));
        }
    };
    let backup = ["backup", "--source", "sqlite:app.db"];
    run(&[&backup[..], &["--to", "fb", "--json"]].concat());
    for n in 0..5 {
        change(n);
        run(&[
            &backup[..],
            &["--to", "ab", "--format", "archive", "--json"],
        ]
        .concat());
    }
    for dest in ["fb", "ab"] {
        run(&["list", dest, "--json"]);
        run(&["verify", dest, "--json"]);
        run(&[
            "restore",
            "--from",
            dest,
            "--to",
            &format!("sqlite:{dest}.db"),
            "--json",
        ]);
    }
    run(&["compact", "ab", "--fanout", "2", "--json"]);
    run(&["prune", "ab", "--keep-last", "2", "--dry-run", "--json"]);
    let known = [
        "write",
        "progress",
        "notice",
        "run",
        "archive",
        "folder",
        "compacted",
        "problem",
        "summary",
    ];
    for (cmd, v) in &lines {
        assert_eq!(v["schema"], 1, "{cmd}: {v}");
        let t = v["type"].as_str().unwrap_or_default();
        assert!(known.contains(&t), "{cmd}: type {t}");
        for key in v.as_object().unwrap().keys() {
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{cmd}: field `{key}` is not snake_case"
            );
        }
        if t == "summary" {
            let command = v["command"].as_str().unwrap_or_default();
            assert!(
                cmd.starts_with(command) && !command.is_empty(),
                "{cmd}: {v}"
            );
        }
    }
    for t in ["write", "archive", "folder", "compacted", "summary"] {
        assert!(lines.iter().any(|(_, v)| v["type"] == t), "no `{t}` line");
    }
    // -q: nothing on stdout.
    change(9);
    for args in [
        &[&backup[..], &["--to", "ab", "--format", "archive", "-q"]].concat()[..],
        &["verify", "ab", "-q"],
        &["restore", "--from", "ab", "--to", "sqlite:q.db", "-q"],
        &["compact", "ab", "--fanout", "2", "-q"],
        &["prune", "ab", "--keep-last", "3", "-q"],
    ] {
        let out = ok(args, d.path());
        assert!(out.is_empty(), "{args:?} -q printed: {out}");
    }
}

/// Exit status: 2 for a command line that does not parse, 1 for an operational error, 3 when a
/// backup is found damaged (verify, and a restore that refuses it).
#[test]
fn exit_codes_tell_damage_from_failure() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    let code = |args: &[&str]| tidemark(args, d.path()).status.code();
    assert_eq!(code(&["verify"]), Some(2), "a missing argument");
    assert_eq!(
        code(&["backup", "--sourse", "x"]),
        Some(2),
        "a misspelt flag"
    );
    assert_eq!(code(&["verify", "nowhere"]), Some(1), "no such backup");
    ok(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "ab",
            "--format",
            "archive",
        ],
        d.path(),
    );
    assert_eq!(code(&["verify", "ab"]), Some(0));
    let archive = std::fs::read_dir(d.join("ab"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "zip"))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x5a;
    std::fs::write(&archive, bytes).unwrap();
    assert_eq!(code(&["verify", "ab"]), Some(3), "damage found");
    assert_eq!(
        code(&["restore", "--from", "ab", "--to", "sqlite:r.db"]),
        Some(3),
        "a restore refusing a damaged backup"
    );
    assert!(!d.join("r.db").exists());
}

/// Mistakes get a way forward: the first backup of an untracked database says how to get
/// incrementals (once: the second backup only gives its reason); a restore into SQLite says the
/// copy has no tracking; archive flags on a folder backup are refused naming the format; list
/// and restore print times to the second, and `--at` says which point it took.
#[test]
fn hints_and_refusals_show_the_way() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    let first = ok(
        &["backup", "--source", "sqlite:app.db", "--to", "fb"],
        d.path(),
    );
    assert_eq!(
        first
            .matches("tidemark track --source sqlite:app.db")
            .count(),
        1,
        "{first}"
    );
    sql(&d.join("app.db"), "INSERT INTO t VALUES (2, 'b');");
    let second = ok(
        &["backup", "--source", "sqlite:app.db", "--to", "fb"],
        d.path(),
    );
    assert!(!second.contains("Note:"), "said once: {second}");
    let err = fails(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "fb2",
            "--compression",
            "zstd",
            "--level",
            "5",
        ],
        d.path(),
    );
    assert!(
        err.contains("--compression, --level apply to archives (--format archive)"),
        "{err}"
    );
    assert!(!d.join("fb2").exists(), "a refused backup writes nothing");
    ok(&["track", "--source", "sqlite:app.db"], d.path());
    for n in 0..2 {
        sql(
            &d.join("app.db"),
            &format!("INSERT INTO t VALUES ({}, 'x');", n + 10),
        );
        ok(
            &[
                "backup",
                "--source",
                "sqlite:app.db",
                "--to",
                "ab",
                "--format",
                "archive",
            ],
            d.path(),
        );
    }
    // Times to the second, or exact where two backups share a second: either way, each time
    // `list` shows names its own backup under `--at`.
    let list = ok(&["list", "ab"], d.path());
    for (n, row) in list.lines().skip(1).enumerate() {
        let time = row.split_whitespace().last().unwrap();
        assert!(time.ends_with('Z') && time.len() >= 20, "{row}");
        let name = format!("sqlite:at{n}.db");
        let out = ok(&["restore", "ab", "--to", &name, "--at", time], d.path());
        assert!(
            out.contains(&format!("archive {:06}", n + 1)),
            "{time} names archive {}: {out}",
            n + 1
        );
    }
    sql(&d.join("app.db"), "INSERT INTO t VALUES (99, 'later');");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "ab",
            "--format",
            "archive",
        ],
        d.path(),
    );
    let last = ok(&["list", "ab"], d.path());
    let time = last
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap();
    assert_eq!(
        time.len(),
        "2026-12-01T03:29:47Z".len(),
        "a second of its own: {last}"
    );
    let restored = ok(
        &[
            "restore",
            "--from",
            "ab",
            "--to",
            "sqlite:copy.db",
            "--at",
            "-0s",
        ],
        d.path(),
    );
    assert!(
        restored.contains("Restore point: the newest backup captured at or before")
            && restored.contains("archive 000003"),
        "{restored}"
    );
    assert!(
        restored.contains("sqlite:copy.db has no change tracking"),
        "{restored}"
    );
}

/// Completions and man pages come from the command line's definition: the bash script parses
/// (`bash -n`) and offers every subcommand; the man page is roff naming every subcommand; each
/// subcommand has its own page.
#[test]
fn completions_and_man_pages_are_generated() {
    let d = Dir::new();
    let bash = ok(&["completions", "bash"], d.path());
    std::fs::write(d.join("tidemark.bash"), &bash).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(d.join("tidemark.bash"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let subcommands = [
        "backup", "restore", "track", "verify", "list", "run", "prune", "compact",
    ];
    for s in subcommands {
        assert!(bash.contains(s), "completions offer `{s}`");
    }
    for shell in ["zsh", "fish"] {
        assert!(ok(&["completions", shell], d.path()).contains("compact"));
    }
    let man = ok(&["man"], d.path());
    assert!(
        man.contains(".TH tidemark 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    for s in subcommands {
        assert!(
            man.contains(&format!("tidemark\\-{s}")),
            "the main page names `{s}`"
        );
        let page = ok(&["man", s], d.path());
        assert!(
            page.contains(&format!(".TH tidemark-{s} 1")),
            "{s}: {}",
            &page[..100.min(page.len())]
        );
    }
    assert!(fails(&["man", "nope"], d.path()).contains("there are: backup"));
}

/// One grammar: every command that reads or maintains a backup names it positionally or with
/// `--from` (restore included), and refuses both at once.
#[test]
fn every_command_names_the_backup_both_ways() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    ok(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "ab",
            "--format",
            "archive",
        ],
        d.path(),
    );
    for cmd in [
        vec!["verify"],
        vec!["list"],
        vec!["prune", "--keep-last", "1"],
        vec!["compact"],
    ] {
        let positional: Vec<&str> = cmd.iter().copied().chain(["ab"]).collect();
        let flag: Vec<&str> = cmd.iter().copied().chain(["--from", "ab"]).collect();
        assert_eq!(ok(&positional, d.path()), ok(&flag, d.path()), "{cmd:?}");
        let both: Vec<&str> = cmd.iter().copied().chain(["ab", "--from", "ab"]).collect();
        assert_eq!(tidemark(&both, d.path()).status.code(), Some(2), "{cmd:?}");
    }
    ok(&["restore", "ab", "--to", "sqlite:one.db"], d.path());
    ok(
        &["restore", "--from", "ab", "--to", "sqlite:two.db"],
        d.path(),
    );
    assert_eq!(dump(&d.join("one.db")), dump(&d.join("two.db")));
}

/// Progress is drawn under a pseudo-terminal (`script(1)`), never into a pipe: a restore shows
/// a bar counting records with a whole-number rate, a verify one counting bytes, and a backup
/// one per collection.
#[test]
fn progress_shows_on_a_terminal_only() {
    let d = Dir::new();
    sql(
        &d.join("big.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO t SELECT i, printf('value %d', i) FROM n;",
    );
    let bin = common::bin();
    let in_pty = |cmd: &str| {
        let out = Command::new("script")
            .args(["-qec", &format!("{} {cmd}", bin.display()), "/dev/null"])
            .current_dir(d.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let backup =
        in_pty("backup --source sqlite:big.db --to ab --format archive --compression zstd");
    assert!(
        backup.contains("records (") && backup.contains("/s,"),
        "{backup}"
    );
    // Once every record is read, the archive's end is written under a spinner.
    assert!(
        backup.contains("finishing: making the backup durable"),
        "{backup}"
    );
    let verify = in_pty("verify ab");
    assert!(
        verify.contains("verifying") && verify.contains("is intact"),
        "{verify}"
    );
    let restore = in_pty("restore --from ab --to sqlite:r.db");
    assert!(restore.contains("restoring"), "{restore}");
    let rate = restore
        .split("records (")
        .nth(1)
        .and_then(|r| r.split("/s").next())
        .unwrap_or_default();
    assert!(
        !rate.is_empty() && rate.chars().all(|c| c.is_ascii_digit()),
        "a whole-number rate: `{rate}` in {restore}"
    );
    // A folder backup's verify counts documents.
    sql(
        &d.join("small.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000)
         INSERT INTO t SELECT i, printf('value %d', i) FROM n;",
    );
    ok(
        &["backup", "--source", "sqlite:small.db", "--to", "fb"],
        d.path(),
    );
    let verify = in_pty("verify fb");
    assert!(
        verify.contains("verifying")
            && verify.contains("records (")
            && verify.contains("is intact"),
        "{verify}"
    );
    // Compaction: a spinner saying how far it got.
    ok(&["track", "--source", "sqlite:small.db"], d.path());
    for n in 0..40 {
        sql(
            &d.join("small.db"),
            &format!("UPDATE t SET v = 'c{n}' WHERE id = {};", n + 1),
        );
        ok(
            &[
                "backup",
                "--source",
                "sqlite:small.db",
                "--to",
                "cb",
                "--format",
                "archive",
                "--compression",
                "zstd",
            ],
            d.path(),
        );
    }
    let compact = in_pty("compact cb --fanout 2");
    assert!(
        compact.contains("compacting: ") && compact.contains("compacted 000"),
        "{compact}"
    );
    // Prune: a spinner while it plans and removes.
    let prune = in_pty("prune cb --keep-last 2");
    assert!(
        prune.contains("pruning: ") && prune.contains("Removed "),
        "{prune}"
    );
    // Into a pipe: no bar, only the summary.
    let piped = ok(
        &["restore", "--from", "ab", "--to", "sqlite:r2.db"],
        d.path(),
    );
    assert!(
        !piped.contains("restoring") && !piped.contains('\u{1b}'),
        "{piped}"
    );
}

/// `-v` says what each step did on stderr (the archive written, the restore's path); without it
/// stderr stays empty on success.
#[test]
fn verbose_says_what_each_step_did() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    );
    ok(&["track", "--source", "sqlite:app.db"], d.path());
    let backup = [
        "backup",
        "--source",
        "sqlite:app.db",
        "--to",
        "ab",
        "--format",
        "archive",
    ];
    let quiet = tidemark(&backup, d.path());
    assert!(quiet.status.success() && quiet.stderr.is_empty());
    sql(&d.join("app.db"), "INSERT INTO t VALUES (2, 'b');");
    let loud = tidemark(&[&backup[..], &["-v"]].concat(), d.path());
    let err = String::from_utf8_lossy(&loud.stderr);
    assert!(
        loud.status.success() && err.contains("INFO archive written"),
        "{err}"
    );
    let restore = tidemark(&["-v", "restore", "ab", "--to", "sqlite:r.db"], d.path());
    let err = String::from_utf8_lossy(&restore.stderr);
    assert!(
        err.contains("restore path")
            && err.contains("archives=2")
            && err.contains("from_names=true"),
        "{err}"
    );
}

/// Partial recovery: with a byte flipped in one table's data (an archive part, a folder
/// document), a plain restore refuses (exit 3, no target); `--skip-damaged` restores everything
/// intact, names what it left out, and exits 3: the other table equals the source's exactly
/// (read back by the `sqlite3` shell) and the damaged one lost only the damaged records.
#[test]
fn skip_damaged_restores_everything_intact() {
    let d = Dir::new();
    sql(
        &d.join("app.db"),
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE b(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO a SELECT i, printf('a%d', i) FROM n;
         INSERT INTO b SELECT id, replace(v, 'a', 'b') FROM a;",
    );
    let table = |db: &str, t: &str| {
        let out = Command::new("sqlite3")
            .arg(d.join(db))
            .arg(format!("SELECT count(*), group_concat(id || v) FROM {t}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let count = |db: &str, t: &str| -> u64 {
        table(db, t)
            .split('|')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // An archive: a byte inside table a's first part.
    ok(
        &[
            "backup",
            "--source",
            "sqlite:app.db",
            "--to",
            "ab",
            "--format",
            "archive",
            "--compression",
            "none",
        ],
        d.path(),
    );
    let archive = std::fs::read_dir(d.join("ab"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "zip"))
        .unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let name = b"data/a/000001.jsonl";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 500;
    bytes[at] ^= 0x20;
    std::fs::write(&archive, bytes).unwrap();
    let plain = tidemark(&["restore", "ab", "--to", "sqlite:no.db"], d.path());
    assert_eq!(plain.status.code(), Some(3));
    assert!(!d.join("no.db").exists());
    let partial = tidemark(
        &["restore", "ab", "--to", "sqlite:part.db", "--skip-damaged"],
        d.path(),
    );
    let err = String::from_utf8_lossy(&partial.stderr);
    assert_eq!(partial.status.code(), Some(3), "{err}");
    assert!(
        err.contains("left out") && err.contains("data/a/000001.jsonl"),
        "{err}"
    );
    assert_eq!(
        table("part.db", "b"),
        table("app.db", "b"),
        "table b is whole"
    );
    assert!(
        count("part.db", "a") < 2000,
        "the damaged part's records are left out"
    );
    // A folder backup: one document of table a.
    ok(
        &["backup", "--source", "sqlite:app.db", "--to", "fb"],
        d.path(),
    );
    let doc = d.join("fb").join("a").join("7").join("document.json");
    let mut text = std::fs::read(&doc).unwrap();
    let last = text.len() - 3;
    text[last] ^= 0x01;
    std::fs::write(&doc, text).unwrap();
    assert_eq!(
        tidemark(&["restore", "fb", "--to", "sqlite:no2.db"], d.path())
            .status
            .code(),
        Some(3)
    );
    let partial = tidemark(
        &["restore", "fb", "--to", "sqlite:fpart.db", "--skip-damaged"],
        d.path(),
    );
    let err = String::from_utf8_lossy(&partial.stderr);
    assert_eq!(partial.status.code(), Some(3), "{err}");
    assert!(err.contains("a/7/document.json"), "{err}");
    assert_eq!(table("fpart.db", "b"), table("app.db", "b"));
    assert_eq!(
        count("fpart.db", "a"),
        1999,
        "only the damaged document is missing"
    );
}

/// `backup --full` over a folder backup refreshes it in place: documents that are already as
/// the store has them are left alone (same inode, not rewritten), a damaged document and a
/// changed row are rewritten, a document the store no longer has (or never had) goes, and a
/// dropped table's folder goes. The result dumps as the source does.
#[test]
fn a_full_backup_over_a_folder_refreshes_it_in_place() {
    use std::os::unix::fs::MetadataExt;
    let d = Dir::new();
    let db = d.join("app.db");
    sql(
        &db,
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE dropped(k TEXT PRIMARY KEY);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO t SELECT i, printf('row %d', i) FROM n;
         INSERT INTO dropped VALUES ('x');",
    );
    let backup = ["backup", "--source", "sqlite:app.db", "--to", "bk"];
    ok(&backup, d.path());
    let doc = |id: u32| d.join(&format!("bk/t/{id}/document.json"));
    let inode = |id: u32| std::fs::metadata(doc(id)).unwrap().ino();
    let (kept, damaged) = (inode(1), doc(7));
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.iter().position(|&b| b == b'w').unwrap();
    bytes[at] = b'W';
    std::fs::write(&damaged, bytes).unwrap();
    assert_eq!(
        tidemark(&["verify", "bk"], d.path()).status.code(),
        Some(3),
        "verify finds the damaged document"
    );
    // A document the store never had.
    let stray = d.join("bk/t/9999");
    std::fs::create_dir(&stray).unwrap();
    std::fs::copy(doc(2), stray.join("document.json")).unwrap();
    sql(
        &db,
        "UPDATE t SET v = 'changed' WHERE id = 3; DELETE FROM t WHERE id = 4;
         INSERT INTO t VALUES (51, 'new'); DROP TABLE dropped;",
    );
    let full = |d: &Dir| {
        let out = ok(
            &[
                "backup",
                "--source",
                "sqlite:app.db",
                "--to",
                "bk",
                "--full",
                "--json",
            ],
            d.path(),
        );
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(summary["kind"], "full", "{out}");
        summary
    };
    let s = full(&d);
    // Written: row 3 (changed), 51 (new) and 7 (damaged); deleted: 4 and the stray.
    assert_eq!(s["records_written"], 3, "{s}");
    assert_eq!(s["records_deleted"], 2, "{s}");
    assert_eq!(s["records_unchanged"], 47, "{s}");
    assert_eq!(s["records_total"], 50, "{s}");
    assert_eq!(inode(1), kept, "an unchanged document is not rewritten");
    assert!(!stray.exists() && !doc(4).exists());
    assert!(
        !d.join("bk/dropped").exists(),
        "a dropped table's folder goes"
    );
    let verified = ok(&["verify", "bk"], d.path());
    assert!(verified.contains("intact"), "{verified}");
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:restored.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("restored.db")), &dump(&db), "refreshed");
    // Nothing changed since: nothing is written, nothing deleted.
    let s = full(&d);
    assert_eq!(
        (
            &s["records_written"],
            &s["records_deleted"],
            &s["records_unchanged"]
        ),
        (&0.into(), &0.into(), &50.into()),
        "{s}"
    );
}

/// A restore over a tracked source (`--force`) says that tracking is gone and how to turn it
/// back on, and the next backup is full for the reason it gives; a mistyped subcommand gets
/// the right one, as a usage error (exit 2).
#[test]
fn a_restore_over_a_tracked_source_says_tracking_is_gone() {
    let d = Dir::new();
    let db = d.join("app.db");
    sql(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'a');",
    );
    ok(&["track", "--source", "sqlite:app.db"], d.path());
    let backup = ["backup", "--source", "sqlite:app.db", "--to", "bk"];
    ok(&backup, d.path());
    sql(&db, "INSERT INTO t VALUES (2, 'b');");
    let before = dump(&db);
    ok(&backup, d.path());
    let out = ok(
        &["restore", "bk", "--to", "sqlite:app.db", "--force"],
        d.path(),
    );
    assert!(
        out.contains("sqlite:app.db has no change tracking")
            && out.contains("tidemark track --source sqlite:app.db"),
        "{out}"
    );
    assert_same_dump(&dump(&db), &before, "restored over the source");
    // The sqlite3 shell sees no tracking objects left in the restored database.
    let objects = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT count(*) FROM sqlite_master WHERE name LIKE '%tidemark%'")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&objects.stdout).trim(), "0");
    sql(&db, "INSERT INTO t VALUES (3, 'c');");
    let next = ok(&backup, d.path());
    assert!(next.contains("Backup (full)"), "{next}");
    for (typo, right) in [
        ("backups", "backup"),
        ("verfy", "verify"),
        ("restor", "restore"),
    ] {
        let out = tidemark(&[typo, "bk"], d.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("a similar subcommand exists: '{right}'")),
            "{err}"
        );
    }
}

/// The `sqlite3` shell, as an application holding a lock: it has run a script that takes one
/// (`BEGIN IMMEDIATE` and a write, say), and waits, until [`Application::commit`].
struct Application {
    child: std::process::Child,
}

impl Application {
    /// Inside a write transaction (which holds the write lock) that wrote `update`.
    fn in_write_transaction(db: &Path, update: &str) -> Self {
        Self::holding(db, &format!("BEGIN IMMEDIATE;\n{update}"))
    }

    fn holding(db: &Path, script: &str) -> Self {
        use std::io::{BufRead, Write};
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the sqlite3 shell is installed");
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, ".bail on\n{script}\nSELECT 'holding the lock';").unwrap();
        stdin.flush().unwrap();
        // The shell answers once the statements before have run: the lock is held. (A pragma
        // answers too.)
        let mut out = std::io::BufReader::new(child.stdout.as_mut().unwrap());
        let mut line = String::new();
        while line.trim() != "holding the lock" {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the shell stopped");
        }
        Application { child }
    }

    fn commit(mut self) {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "COMMIT;").unwrap();
        drop(stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

#[test]
fn a_backup_does_not_wait_for_an_applications_write_transaction() {
    // In both journal modes an application's write transaction leaves the database readable:
    // a backup of a tracked database reads it, and only the trim, which can wait for the next
    // backup, needs the write lock. Before, every backup took the write lock to check the
    // capture triggers, and failed after 30 s of waiting behind such a transaction.
    for mode in ["WAL", "DELETE"] {
        let d = Dir::new();
        let db = d.join("app.db");
        sql(
            &db,
            &format!(
                "PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
                 INSERT INTO t SELECT i, 'v' || i FROM n;"
            ),
        );
        ok(&["track", "--source", "sqlite:app.db"], d.path());
        ok(
            &["backup", "--source", "sqlite:app.db", "--to", "bk"],
            d.path(),
        );
        sql(&db, "UPDATE t SET v = 'committed' WHERE id <= 5;");
        let app =
            Application::in_write_transaction(&db, "UPDATE t SET v = 'pending' WHERE id > 95;");
        let out = tidemark(
            &["backup", "--source", "sqlite:app.db", "--to", "bk"],
            d.path(),
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{mode}: {stdout}\n{stderr}");
        // The committed changes, not the pending ones.
        assert!(
            stdout.contains("Backup (incremental)") && stdout.contains("5 records written"),
            "{mode}: {stdout}\n{stderr}"
        );
        assert!(
            stdout.contains("the next backup trims the log"),
            "{mode}: {stdout}\n{stderr}"
        );
        app.commit();
        let logged = |db: &Path| {
            let out = Command::new("sqlite3")
                .arg(db)
                .arg("SELECT count(*) FROM _tidemark_changes")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(
            logged(&db),
            "10",
            "{mode}: the first five changes are still logged"
        );
        let out = ok(
            &["backup", "--source", "sqlite:app.db", "--to", "bk"],
            d.path(),
        );
        assert!(
            out.contains("Backup (incremental)") && out.contains("5 records written"),
            "{mode}: {out}"
        );
        assert_eq!(logged(&db), "0", "{mode}: the trim caught up");
        ok(
            &["restore", "--from", "bk", "--to", "sqlite:r.db"],
            d.path(),
        );
        assert_same_dump(&dump(&d.join("r.db")), &dump(&db), mode);
    }
}

#[test]
fn a_backup_waits_for_a_commit_and_names_an_exclusive_lock() {
    let d = Dir::new();
    let db = d.join("app.db");
    sql(
        &db,
        "PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    // In rollback-journal mode a writer that has taken the exclusive lock (as a commit does)
    // keeps readers out until it is done: the backup waits for it, as its reads do. It used
    // to fail at once, calling the database "not a SQLite database (database is locked)".
    let app = Application::holding(&db, "BEGIN EXCLUSIVE;\nUPDATE t SET v = 'c' WHERE id = 1;");
    let mut backup = Command::new(common::bin())
        .args(["backup", "--source", "sqlite:app.db", "--to", "bk"])
        .current_dir(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A second into its wait the backup says that it waits, and for what: the lock is held
    // until it has (were the warning never said, the backup would fail after 30 s and close
    // its stderr, ending the read).
    let mut stderr = String::new();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(backup.stderr.as_mut().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            stderr.push_str(&line);
            stderr.push('\n');
            if line.contains("locked by another connection") {
                break;
            }
        }
        app.commit();
        for line in lines {
            stderr.push_str(&line.unwrap());
            stderr.push('\n');
        }
    }
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("locked by another connection").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("waiting up to 30 s"), "{stderr}");
    // It names the database it waits for.
    assert!(
        stderr.contains("app.db: the SQLite database is locked"),
        "{stderr}"
    );
    ok(
        &["restore", "--from", "bk", "--to", "sqlite:r.db"],
        d.path(),
    );
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "after the commit");
    // An application in exclusive locking mode never lets a reader in: after the busy
    // timeout the backup fails, and says why.
    let app = Application::holding(&db, "PRAGMA locking_mode = EXCLUSIVE;\nBEGIN EXCLUSIVE;");
    let err = fails(
        &["backup", "--source", "sqlite:app.db", "--to", "bk2"],
        d.path(),
    );
    assert!(
        err.contains("app.db")
            && err.contains("exclusive locking mode")
            && !err.contains("not a SQLite database"),
        "{err}"
    );
    // The wait was said at its start, not only at its end.
    assert!(err.contains("waiting up to 30 s"), "{err}");
    app.commit();
}

#[test]
fn track_remove_is_idempotent_and_keeps_the_applications_sequences() {
    let d = Dir::new();
    let query = |db: &str, q: &str| {
        let out = Command::new("sqlite3")
            .arg(d.join(db))
            .arg(q)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Never tracked, and no AUTOINCREMENT table (so no sqlite_sequence): removing tracking
    // says there was none. It used to fail with "no such table: sqlite_sequence".
    sql(
        &d.join("plain.db"),
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v); INSERT INTO t VALUES (1, 'a');",
    );
    let out = ok(
        &["track", "--remove", "--source", "sqlite:plain.db"],
        d.path(),
    );
    assert!(
        out.contains("had no change tracking; nothing to remove"),
        "{out}"
    );
    ok(&["track", "--source", "sqlite:plain.db"], d.path());
    let out = ok(
        &["track", "--remove", "--source", "sqlite:plain.db"],
        d.path(),
    );
    assert!(out.contains("Change tracking removed"), "{out}");
    assert_eq!(
        query(
            "plain.db",
            "SELECT group_concat(name) FROM sqlite_schema WHERE name LIKE '%tidemark%'"
        ),
        ""
    );
    // The application's own AUTOINCREMENT numbers stay; the log's go.
    sql(
        &d.join("auto.db"),
        "CREATE TABLE u(id INTEGER PRIMARY KEY AUTOINCREMENT, v); INSERT INTO u(v) VALUES ('a'), ('b');",
    );
    ok(&["track", "--source", "sqlite:auto.db"], d.path());
    sql(&d.join("auto.db"), "INSERT INTO u(v) VALUES ('c');");
    ok(
        &["track", "--remove", "--source", "sqlite:auto.db"],
        d.path(),
    );
    assert_eq!(
        query(
            "auto.db",
            "SELECT group_concat(name || '=' || seq) FROM sqlite_sequence"
        ),
        "u=3"
    );
    assert_eq!(query("auto.db", "PRAGMA integrity_check"), "ok");
}

/// `SELECT rowid, *` of a table, with the `sqlite3` shell: the rowids a `.dump` leaves out.
fn rows_with_rowids(db: &Path, table: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(format!("SELECT rowid, * FROM {table} ORDER BY rowid"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Restores `dest` into a new database `name` in `d` and checks it against `db` with the
/// `sqlite3` shell: the same `.dump`, and the same rowids in each of `tables`. Returns its path.
fn restored_equal(d: &Path, dest: &str, name: &str, db: &Path, tables: &[&str]) -> PathBuf {
    ok(
        &["restore", "--from", dest, "--to", &format!("sqlite:{name}")],
        d,
    );
    let restored = d.join(name);
    assert_same_dump(&dump(&restored), &dump(db), name);
    for table in tables {
        assert_eq!(
            rows_with_rowids(&restored, table),
            rows_with_rowids(db, table),
            "{name}: {table}"
        );
    }
    restored
}

/// A `VACUUM` renumbers the rowids of a table without an INTEGER PRIMARY KEY and fires no
/// trigger. In a table keyed by its rowid (no primary key), an incremental that trusted the
/// change log put a changed row under its new rowid beside its old copy: the restore held a row
/// twice (5 rows for the source's 4). The new schema version a VACUUM leaves now makes the next
/// backup full, saying why, in both formats.
#[test]
fn a_vacuum_that_renumbers_rowids_makes_the_next_backup_full() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for (i, format) in ["folder", "archive"].into_iter().enumerate() {
        let db = d.join(format!("app{i}.db"));
        let source = format!("sqlite:app{i}.db");
        let dest = format!("bk{i}");
        sql(
            &db,
            "CREATE TABLE plain(a TEXT);
             CREATE TABLE keyed(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO plain VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f');
             INSERT INTO keyed VALUES (1, 'one'), (2, 'two'), (3, 'three');",
        );
        ok(&["track", "--source", &source], d);
        let backup = || {
            ok(
                &[
                    "backup", "--source", &source, "--to", &dest, "--format", format,
                ],
                d,
            )
        };
        backup();
        sql(
            &db,
            "DELETE FROM plain WHERE a IN ('a', 'b'); DELETE FROM keyed WHERE id = 1;",
        );
        let out = backup();
        assert!(out.contains("(incremental)"), "{out}");
        // The application vacuums, then changes a row: `c` moves from rowid 3 to 1.
        sql(&db, "VACUUM; UPDATE plain SET a = 'C' WHERE a = 'c';");
        assert!(rows_with_rowids(&db, "plain").starts_with("1|C\n"));
        let out = backup();
        assert!(
            out.contains("(full)")
                && out.contains("as a VACUUM leaves")
                && out.contains("INTEGER PRIMARY KEY"),
            "{out}"
        );
        restored_equal(d, &dest, &format!("r{i}.db"), &db, &["plain", "keyed"]);
        // Nothing vacuumed since: incremental again.
        sql(&db, "UPDATE plain SET a = 'D' WHERE a = 'd';");
        let out = backup();
        assert!(out.contains("(incremental)"), "{out}");
    }
}

/// Tables keyed by a primary key stay incremental over a `VACUUM`, which may renumber the
/// hidden rowids of one with a TEXT primary key (SQLite's documentation allows it; 3.40 keeps
/// them when the table has an index, as a primary key's is): the restore equals the source,
/// rowids included.
#[test]
fn a_vacuum_keeps_tables_with_a_primary_key_incremental_and_restorable() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for format in ["folder", "archive"] {
        let db = d.join(format!("{format}-src.db"));
        let source = format!("sqlite:{format}-src.db");
        sql(
            &db,
            "CREATE TABLE keyed(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE named(name TEXT PRIMARY KEY, n INTEGER);
             INSERT INTO keyed VALUES (1, 'one'), (2, 'two'), (3, 'three');
             INSERT INTO named VALUES ('x', 1), ('y', 2), ('z', 3);",
        );
        ok(&["track", "--source", &source], d);
        let backup = || {
            ok(
                &[
                    "backup", "--source", &source, "--to", format, "--format", format,
                ],
                d,
            )
        };
        backup();
        sql(
            &db,
            "DELETE FROM keyed WHERE id = 1; DELETE FROM named WHERE name = 'x'; VACUUM;
             UPDATE keyed SET v = 'TWO' WHERE id = 2; INSERT INTO named VALUES ('w', 4);",
        );
        let out = backup();
        assert!(out.contains("(incremental)"), "{out}");
        let v = ok(&["verify", format], d);
        assert!(v.contains("intact"), "{v}");
        restored_equal(d, format, &format!("{format}.db"), &db, &["keyed", "named"]);
    }
}

/// A source whose b-tree is damaged (a page header overwritten, as `PRAGMA quick_check` of the
/// `sqlite3` shell reports) fails the backup plainly, and the unfinished archive is removed
/// (before, `.tidemark-000001-full.zip.tmp` stayed for the next run to remove).
#[test]
fn a_malformed_source_fails_plainly_and_leaves_no_unfinished_file() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("bad.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t SELECT i, hex(randomblob(40)) FROM n;",
    );
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(std::io::SeekFrom::Start(4096 * 200)).unwrap();
        f.write_all(&[0x0d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
            .unwrap();
    }
    let check = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA quick_check")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&check.stdout).starts_with("ok"),
        "the damage is one SQLite sees"
    );
    for format in ["archive", "folder"] {
        let e = fails(
            &[
                "backup",
                "--source",
                "sqlite:bad.db",
                "--to",
                format,
                "--format",
                format,
            ],
            d,
        );
        assert!(
            e.contains("bad.db") && e.contains("database disk image is malformed"),
            "{e}"
        );
        let left: Vec<String> = std::fs::read_dir(d.join(format))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{format}: {left:?}");
    }
}

/// A user shrinks the change log by hand (`DELETE FROM _tidemark_changes` in the `sqlite3`
/// shell) between two writes: the change logged before is lost, so the next backup is full,
/// saying why, and the restore equals the source. Before, the incremental took the change
/// left and the restore kept the old value of the other row.
#[test]
fn a_change_log_cleared_by_hand_makes_the_next_backup_full() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("s.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    ok(&["track", "--source", "sqlite:s.db"], d);
    let backup = || ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    backup();
    sql(
        &db,
        "UPDATE t SET v = 'lost' WHERE id = 1; DELETE FROM _tidemark_changes;
         UPDATE t SET v = 'seen' WHERE id = 2;",
    );
    let out = backup();
    assert!(
        out.contains("(full)") && out.contains("something other than tidemark deleted rows"),
        "{out}"
    );
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
    sql(&db, "UPDATE t SET v = 'next' WHERE id = 2;");
    assert!(backup().contains("(incremental)"));
}

/// SQLite lets the primary key of a rowid table hold NULLs, and rows with a NULL key do not
/// collide there. They were one key in the backup: the folder kept one row of two, and the
/// archive's restore refused ("3 records, the manifest says 2"). Such a row is now keyed by its
/// key and its rowid; a change to one (which the log cannot tell apart) makes the next backup
/// full, saying why, and other changes stay incremental. Both formats, read back with the
/// `sqlite3` shell.
#[test]
fn rows_with_a_null_primary_key_are_each_backed_up() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for format in ["folder", "archive"] {
        let db = d.join(format!("{format}.db"));
        let source = format!("sqlite:{format}.db");
        sql(
            &db,
            "CREATE TABLE t(k TEXT PRIMARY KEY, v TEXT);
             INSERT INTO t VALUES (NULL, 'a'), (NULL, 'b'), ('x', 'c');",
        );
        ok(&["track", "--source", &source], d);
        let dest = format!("bk-{format}");
        let backup = || {
            ok(
                &[
                    "backup", "--source", &source, "--to", &dest, "--format", format,
                ],
                d,
            )
        };
        let restored = |n: u32| {
            restored_equal(d, &dest, &format!("r-{format}-{n}.db"), &db, &["t"]);
        };
        backup();
        restored(0);
        sql(
            &db,
            "UPDATE t SET v = 'A' WHERE v = 'a'; INSERT INTO t VALUES ('y', 'd');",
        );
        let out = backup();
        assert!(
            out.contains("(full)") && out.contains("primary key holds a NULL"),
            "{out}"
        );
        restored(1);
        sql(&db, "UPDATE t SET v = 'D' WHERE k = 'y';");
        assert!(backup().contains("(incremental)"));
        restored(2);
    }
}

/// A key that changes only in case in a NOCASE primary key ('Alice' to 'alice'), or from 1 to
/// 1.0 in a key column without a type, compares equal to the old one by the column's own rules.
/// The update trigger compared them so and logged no old key, and the row lookup matched so
/// too: the backup kept the row under both keys, verify called it intact, and its restore
/// failed on the primary key. Both compare by bytes and type now, and a REPLACE that removes a
/// row whose key differs only in case is caught by the count check.
#[test]
fn a_key_changed_only_in_case_or_type_is_followed() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    for format in ["folder", "archive"] {
        let db = d.join(format!("{format}.db"));
        let source = format!("sqlite:{format}.db");
        sql(
            &db,
            "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
             CREATE TABLE u(k PRIMARY KEY, v TEXT);
             INSERT INTO t VALUES ('Alice', 1), ('Bob', 2);
             INSERT INTO u VALUES (1, 'one'), (2, 'two');",
        );
        ok(&["track", "--source", &source], d);
        let dest = format!("bk-{format}");
        let args = [
            "backup", "--source", &source, "--to", &dest, "--format", format,
        ];
        ok(&args, d);
        sql(
            &db,
            "UPDATE t SET k = 'alice' WHERE k = 'Alice'; UPDATE u SET k = 1.0 WHERE k = 1;",
        );
        let out = ok(&args, d);
        assert!(out.contains("(incremental)"), "{out}");
        let v = ok(&["verify", &dest], d);
        assert!(v.contains("intact"), "{v}");
        let restored = restored_equal(d, &dest, &format!("r-{format}.db"), &db, &[]);
        let types = |db: &Path| {
            let out = Command::new("sqlite3")
                .arg(db)
                .arg("SELECT k, typeof(k) FROM u ORDER BY v")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(types(&restored), "1.0|real\n2|integer\n");
        // A REPLACE whose key differs from the row it replaces only in case deletes that row
        // without a trigger: the count check sees it and the backup is full.
        sql(&db, "INSERT OR REPLACE INTO t VALUES ('BOB', 3);");
        let out = ok(&args, d);
        assert!(
            out.contains("(full)") && out.contains("holds 2 records but the change log"),
            "{out}"
        );
        restored_equal(d, &dest, &format!("r2-{format}.db"), &db, &[]);
    }
}

/// A database tracked by a tidemark before 2026-12-03 has update triggers of version 1 (the
/// old comparison, made here by the `sqlite3` shell). The next backup replaces them in one
/// write transaction and is full, since what they logged is not known complete; the ones after
/// are incremental and follow a key changed in case.
#[test]
fn triggers_of_an_older_tidemark_are_replaced_and_the_next_backup_is_full() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("s.db");
    sql(
        &db,
        "CREATE TABLE t(k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
         INSERT INTO t VALUES ('Alice', 1), ('Bob', 2);",
    );
    ok(&["track", "--source", "sqlite:s.db"], d);
    let backup = || ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    backup();
    sql(
        &db,
        "DROP TRIGGER _tidemark_updk_t;
         CREATE TRIGGER \"_tidemark_updk_t\" AFTER UPDATE ON \"t\" WHEN OLD.\"k\" IS NOT NEW.\"k\"
           BEGIN INSERT INTO _tidemark_changes(tbl, k0) VALUES ('t', OLD.\"k\"); END;
         DELETE FROM _tidemark_meta WHERE key = 'triggers';",
    );
    sql(&db, "UPDATE t SET v = 10 WHERE k = 'Bob';");
    let out = backup();
    assert!(
        out.contains("(full)") && out.contains("capture triggers were replaced by a newer"),
        "{out}"
    );
    let trigger = Command::new("sqlite3")
        .arg(&db)
        .arg("SELECT sql FROM sqlite_schema WHERE name = '_tidemark_updk_t'")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&trigger.stdout).contains("COLLATE BINARY"));
    sql(&db, "UPDATE t SET k = 'alice' WHERE k = 'Alice';");
    let out = backup();
    assert!(out.contains("(incremental)"), "{out}");
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
}

/// A capture trigger that the application (here the `sqlite3` shell) drops and creates again
/// under the same name, logging nothing, would leave every later incremental without the
/// changes it should have logged. The next backup finds the statement is not tidemark's,
/// writes the triggers anew in one write transaction and is full, saying why; the restore is
/// the database, and the backups after are incremental again.
#[test]
fn a_capture_trigger_replaced_under_its_name_makes_the_next_backup_full() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("s.db");
    sql(
        &db,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('a'), ('b'), ('c');",
    );
    ok(&["track", "--source", "sqlite:s.db"], d);
    let backup = || ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    backup();
    sql(&db, "UPDATE t SET v = 'a2' WHERE id = 1;");
    assert!(backup().contains("(incremental)"));
    sql(
        &db,
        "DROP TRIGGER _tidemark_upd_t;
         CREATE TRIGGER \"_tidemark_upd_t\" AFTER UPDATE ON \"t\" BEGIN SELECT 1; END;
         UPDATE t SET v = 'b2' WHERE id = 2;",
    );
    let out = backup();
    assert!(
        out.contains("(full)") && out.contains("were not the ones tidemark writes (replaced"),
        "{out}"
    );
    sql(&db, "UPDATE t SET v = 'c2' WHERE id = 3;");
    assert!(backup().contains("(incremental)"));
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
}

/// A column named `rowid` (or `oid`, `_rowid_`) hides the rowid under that name. A table
/// without a primary key is keyed by its rowid, and such a column's values (NULL, or the same
/// in two rows) were read as the key: the backup failed, or it kept one row of two, verify
/// called it intact and the restore refused it. The backend now reads the rowid under a name
/// no column takes, in backups, capture triggers and restores; a table whose columns take all
/// three names is refused, named. Read back with the `sqlite3` shell.
#[test]
fn columns_named_rowid_do_not_hide_the_rowid() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("s.db");
    sql(
        &db,
        "CREATE TABLE nk(rowid INTEGER, v TEXT);
         INSERT INTO nk VALUES (1, 'a'), (1, 'b'), (NULL, 'c');
         CREATE TABLE nk2(oid INTEGER, _rowid_ INTEGER, v TEXT);
         INSERT INTO nk2 VALUES (7, 7, 'x'), (7, 7, 'y');
         CREATE TABLE pk(k TEXT PRIMARY KEY, rowid, oid, _rowid_);
         INSERT INTO pk VALUES ('z', 1, 1, 1), ('y', 1, 1, 1);",
    );
    ok(&["track", "--source", "sqlite:s.db"], d);
    let backup = || ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    let out = backup();
    assert!(
        out.contains("(full)") && out.contains("7 in backup"),
        "{out}"
    );
    sql(
        &db,
        "UPDATE nk SET v = 'b2' WHERE v = 'b'; INSERT INTO nk VALUES (1, 'd');
         DELETE FROM nk WHERE v = 'a'; UPDATE nk2 SET v = 'y2' WHERE v = 'y';
         UPDATE pk SET rowid = 5 WHERE k = 'y'; DELETE FROM pk WHERE k = 'z';",
    );
    let out = backup();
    assert!(
        out.contains("(incremental)") && out.contains("6 in backup"),
        "{out}"
    );
    ok(&["verify", "bk"], d);
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    assert_same_dump(&dump(&d.join("r.db")), &dump(&db), "restore");
    sql(&db, "CREATE TABLE hidden(rowid, oid, _rowid_);");
    let err = common::refused(
        Command::new(common::bin()).current_dir(d),
        &["backup", "--source", "sqlite:s.db", "--to", "bk"],
    );
    assert!(
        err.contains("table `hidden` has no primary key and columns named rowid, oid and _rowid_"),
        "{err}"
    );
}

/// A database put back from an older copy of its file (as a disk snapshot or a `cp` does) and
/// written since hands the same sequence numbers out again, to other changes. Once the
/// writes pass the previous backup's checkpoint, its position no longer shows the rollback,
/// and an incremental would keep changes that never happened in this database and miss those
/// that did. The next backup finds that a log entry it read before is another one now, says
/// so and is full; the restores are the database the `sqlite3` shell reads.
#[test]
fn a_database_put_back_from_an_older_copy_makes_the_next_backup_full() {
    for format in ["archive", "folder"] {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let db = d.join("s.db");
        sql(
            &db,
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO t(v) VALUES ('a'), ('b'), ('c'), ('d'), ('e');",
        );
        ok(&["track", "--source", "sqlite:s.db"], d);
        let backup = || common::backup(d, "sqlite:s.db", "bk", format);
        backup();
        std::fs::copy(&db, d.join("copy.db")).unwrap();
        sql(&db, "UPDATE t SET v = 'changed' WHERE id <= 3;");
        assert!(backup().contains("(incremental)"), "{format}");
        std::fs::copy(d.join("copy.db"), &db).unwrap();
        sql(
            &db,
            "INSERT INTO t(v) VALUES ('f'), ('g'), ('h'), ('i'), ('j');",
        );
        let out = backup();
        assert!(
            out.contains("(full)") && out.contains("went back to an older state"),
            "{format}: {out}"
        );
        ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
        assert_same_dump(&dump(&d.join("r.db")), &dump(&db), format);
        // The chain goes on from the full backup.
        sql(&db, "UPDATE t SET v = 'later' WHERE id = 1;");
        assert!(backup().contains("(incremental)"), "{format}");
    }
}

/// `id INTEGER PRIMARY KEY DESC` is not the rowid under another name (a quirk SQLite keeps):
/// the rows have rowids of their own, which the backup now keeps as it does for a TEXT key. A
/// restore renumbered them before (rows changed after the full went in last). Compared with
/// the `sqlite3` shell's `SELECT rowid, *`.
#[test]
fn an_integer_primary_key_desc_keeps_the_rows_rowids() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let db = d.join("s.db");
    sql(
        &db,
        "CREATE TABLE d(id INTEGER PRIMARY KEY DESC, v TEXT);
         INSERT INTO d VALUES (3, 'three'), (1, 'one');",
    );
    ok(&["track", "--source", "sqlite:s.db"], d);
    ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    sql(
        &db,
        "INSERT INTO d VALUES (2, 'two'); UPDATE d SET v = 'ONE' WHERE id = 1;",
    );
    ok(&["backup", "--source", "sqlite:s.db", "--to", "bk"], d);
    ok(&["restore", "--from", "bk", "--to", "sqlite:r.db"], d);
    let rows = |path: &Path| {
        let out = Command::new("sqlite3")
            .arg(path)
            .arg("SELECT rowid, * FROM d ORDER BY rowid")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(rows(&d.join("r.db")), rows(&db));
}
