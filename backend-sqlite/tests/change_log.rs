//! Reading the change log: a short range is reduced to each key's last change in memory, a long
//! one by SQLite's GROUP BY. Both are checked against the log itself, read with plain SQL.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sqlite::SqliteBackend;
use backup_core::{Change, ChangeOp, Checkpoint, StorageBackend};
use rusqlite::Connection;
use std::collections::BTreeMap;

/// A new database made by `schema`, tracked: its directory, a plain connection to it, the
/// backend and the checkpoint tracking starts at.
fn tracked(schema: &str) -> (tempfile::TempDir, Connection, SqliteBackend, Checkpoint) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("s.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(schema).unwrap();
    let backend = SqliteBackend::open(&path).unwrap();
    backend.track().unwrap();
    let start = backend.current_checkpoint().unwrap();
    (d, conn, backend, start)
}

/// Rows 0 to `n - 1` of table `a(id, v)`, value 'x', in one transaction.
fn insert_rows(conn: &mut Connection, n: i64) {
    let tx = conn.transaction().unwrap();
    for i in 0..n {
        tx.execute("INSERT INTO a(id, v) VALUES (?1, 'x')", [i])
            .unwrap();
    }
    tx.commit().unwrap();
}

/// What the log says changed after `from`, by plain SQL: per (table, key as text), whether the
/// row is still there and the last sequence number that logged it, sorted.
fn expected(conn: &Connection, from: u64) -> Vec<(String, String, bool, u64)> {
    let mut stmt = conn
        .prepare(
            "SELECT tbl, k0, k1, max(seq) AS s FROM _tidemark_changes WHERE seq > ?1 \
             AND tbl IS NOT NULL GROUP BY tbl, k0, k1 ORDER BY s",
        )
        .unwrap();
    let rows: Vec<(String, rusqlite::types::Value, rusqlite::types::Value, i64)> = stmt
        .query_map([from as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut rows: Vec<_> = rows
        .into_iter()
        .map(|(tbl, k0, k1, seq)| {
            let (key, exists) = match tbl.as_str() {
                "a" => {
                    let rusqlite::types::Value::Integer(id) = k0 else {
                        panic!("{k0:?}")
                    };
                    let n: i64 = conn
                        .query_row("SELECT count(*) FROM a WHERE id = ?1", [id], |r| r.get(0))
                        .unwrap();
                    (id.to_string(), n == 1)
                }
                _ => {
                    let (rusqlite::types::Value::Text(k), rusqlite::types::Value::Integer(n)) =
                        (k0, k1)
                    else {
                        panic!("a key of b")
                    };
                    let c: i64 = conn
                        .query_row(
                            "SELECT count(*) FROM b WHERE k = ?1 AND n = ?2",
                            rusqlite::params![k, n],
                            |r| r.get(0),
                        )
                        .unwrap();
                    (format!("{k}/{n}"), c == 1)
                }
            };
            (tbl, key, exists, seq as u64)
        })
        .collect();
    rows.sort();
    rows
}

/// The changes the backend reads after `from`, in batches of at most 1,000.
fn changes(backend: &SqliteBackend, from: &Checkpoint) -> Vec<Change> {
    let mut view = backend.view().unwrap();
    let mut got: Vec<Change> = Vec::new();
    view.changes_since(from, 1000, &mut |batch| {
        assert!(batch.len() <= 1000);
        got.extend(batch);
        Ok(())
    })
    .unwrap();
    got
}

/// What the backend reads: per change, (collection, its key's fields as text, put, position),
/// in the order read.
fn read(backend: &SqliteBackend, from: &Checkpoint) -> Vec<(String, String, bool, u64)> {
    changes(backend, from)
        .into_iter()
        .map(|c| {
            let fields = backend_sqlite::table::decode_key(&c.key).unwrap();
            let key = fields
                .iter()
                .map(|f| match f {
                    backup_core::Field::Integer(i) => i.to_string(),
                    backup_core::Field::Text(t) => String::from_utf8(t.clone()).unwrap(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join("/");
            let put = matches!(c.op, ChangeOp::Put(_));
            (c.collection.to_string(), key, put, c.position)
        })
        .collect()
}

#[test]
fn short_and_long_log_ranges_give_each_keys_last_change_once_integer_keys_in_key_order() {
    let (_d, mut conn, backend, start) = tracked(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE b(k TEXT, n INTEGER, v BLOB, PRIMARY KEY (k, n)) WITHOUT ROWID;",
    );
    // Over 2^16 log rows in all, so that a read from the start is grouped by SQLite.
    let tx = conn.transaction().unwrap();
    for i in 0..40_000i64 {
        tx.execute("INSERT INTO a(id, v) VALUES (?1, 'x')", [i])
            .unwrap();
    }
    for i in 0..30_000i64 {
        tx.execute(
            "INSERT INTO b(k, n, v) VALUES (?1, ?2, x'00')",
            rusqlite::params![format!("k{}", i % 100), i / 100],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let middle = backend.current_checkpoint().unwrap();
    // A short range: keys written several times, deleted, deleted and written again, and a
    // key changed by an update of the primary key.
    let tx = conn.transaction().unwrap();
    for round in 0..3 {
        for i in (0..40_000i64).step_by(97) {
            tx.execute(
                "UPDATE a SET v = ?1 WHERE id = ?2",
                rusqlite::params![round, i],
            )
            .unwrap();
        }
    }
    tx.execute("DELETE FROM a WHERE id % 1000 = 5", []).unwrap();
    tx.execute("INSERT INTO a(id, v) VALUES (5, 'back')", [])
        .unwrap();
    tx.execute("UPDATE a SET id = 50000 WHERE id = 7", [])
        .unwrap();
    tx.execute("DELETE FROM b WHERE k = 'k3'", []).unwrap();
    tx.execute("UPDATE b SET v = x'01' WHERE n = 7", [])
        .unwrap();
    tx.commit().unwrap();
    let end = backend.current_checkpoint().unwrap();
    assert!(end.position - start.position > 1 << 16, "a long range");
    assert!(end.position - middle.position < 1 << 16, "a short range");

    for (from, what) in [(&start, "long"), (&middle, "short")] {
        let want = expected(&conn, from.position);
        let mut got = read(&backend, from);
        assert_eq!(got.len(), want.len(), "{what} range");
        // Each key once (the order is then free): table `a`'s integer keys are looked up, and
        // handed on, in key order, the order of the table's pages.
        let a: Vec<i64> = got
            .iter()
            .filter(|c| c.0 == "a")
            .map(|c| c.1.parse().unwrap())
            .collect();
        assert!(
            a.windows(2).all(|w| w[0] < w[1]),
            "{what} range: table a's keys out of key order"
        );
        let b: Vec<u64> = got.iter().filter(|c| c.0 == "b").map(|c| c.3).collect();
        assert!(
            what == "long" || b.windows(2).all(|w| w[0] < w[1]),
            "short range: table b's composite keys keep the log's order"
        );
        // Table names are the collection names here; each key's last position.
        got.sort();
        assert_eq!(got, want, "{what} range");
    }
    // The short range, tallied: 413 keys of `a` updated, 40 deleted (one back), 7 moved.
    let short = read(&backend, &middle);
    let mut tally: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for (c, _, put, _) in &short {
        *tally.entry((c.as_str(), *put)).or_default() += 1;
    }
    assert_eq!(tally.get(&("a", false)), Some(&(40 - 1 + 1)), "{tally:?}");
    assert_eq!(tally.get(&("b", false)), Some(&300), "{tally:?}");
}

#[test]
fn a_visitor_that_fails_stops_the_reading_with_its_own_error() {
    let (_d, mut conn, backend, start) = tracked("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT)");
    insert_rows(&mut conn, 20_000);
    let mut view = backend.view().unwrap();
    let mut batches = 0;
    // Far more batches than the reader may have in flight: it must stop, not wait forever.
    let result = view.changes_since(&start, 10, &mut |_| {
        batches += 1;
        if batches == 3 {
            return Err(backup_core::Error::BadInput {
                path: "visitor".into(),
                cause: "refused".into(),
                source: None,
            });
        }
        Ok(())
    });
    match result {
        Err(backup_core::Error::BadInput { cause, .. }) => assert_eq!(cause, "refused"),
        other => panic!("{other:?}"),
    }
    assert_eq!(batches, 3);
    // The view still reads after a failed visit.
    let mut all = 0;
    view.changes_since(&start, 1000, &mut |b| {
        all += b.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(all, 20_000);
}

/// A column without a type keeps an integer and a text that reads as the same number as two
/// keys, and the reduction to each key's last change keeps them apart (the integer's is taken
/// by value, the text's by the bytes the backup stores it as).
#[test]
fn an_integer_key_and_a_text_key_with_its_digits_stay_two_keys() {
    let (_d, conn, backend, start) = tracked("CREATE TABLE d(k PRIMARY KEY, v)");
    conn.execute_batch(
        "INSERT INTO d VALUES (42, 'int'), ('42', 'text'), ('042', 'padded');
         UPDATE d SET v = v || '!';
         UPDATE d SET v = v || '?' WHERE k = 42;
         DELETE FROM d WHERE k = '042';",
    )
    .unwrap();
    let keys: Vec<(Vec<backup_core::Field>, bool)> = changes(&backend, &start)
        .iter()
        .map(|c| {
            (
                backend_sqlite::table::decode_key(&c.key).unwrap(),
                matches!(c.op, ChangeOp::Put(_)),
            )
        })
        .collect();
    use backup_core::Field::{Integer, Text};
    // Each key once: the integer key first (integer keys in key order), then the others in
    // the order of their last log row: the text '42' (first update), then the deletion.
    assert_eq!(
        keys,
        vec![
            (vec![Integer(42)], true),
            (vec![Text(b"42".to_vec())], true),
            (vec![Text(b"042".to_vec())], false),
        ]
    );
}

/// Log rows of tables whose names share their length and last byte, interleaved row by row,
/// and of a table dropped since: each change is told to its own table (the reader tries the
/// last row's table first and tells names apart by length and last byte before their bytes),
/// and the dropped table's rows are left out.
#[test]
fn interleaved_tables_with_like_names_keep_their_changes_apart() {
    let names = ["left_1", "right1", "mid__1", "x1"];
    let schema: String = names
        .iter()
        .chain(["gone_1"].iter())
        .map(|t| format!("CREATE TABLE \"{t}\"(id INTEGER PRIMARY KEY, v TEXT);"))
        .collect();
    let (_d, conn, backend, start) = tracked(&schema);
    for i in 0..600i64 {
        let t = names[(i as usize * 7) % names.len()];
        conn.execute(
            &format!("INSERT OR REPLACE INTO \"{t}\"(id, v) VALUES (?1, 'v')"),
            [i % 150],
        )
        .unwrap();
        if i % 11 == 0 {
            conn.execute(&format!("DELETE FROM \"{t}\" WHERE id = ?1"), [i % 13])
                .unwrap();
        }
        conn.execute("INSERT INTO gone_1(id, v) VALUES (?1, 'g')", [i])
            .unwrap();
    }
    conn.execute_batch("DROP TABLE gone_1").unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT tbl, k0, max(seq) AS s FROM _tidemark_changes WHERE seq > ?1 \
             AND tbl IS NOT NULL AND tbl <> 'gone_1' GROUP BY tbl, k0 ORDER BY s",
        )
        .unwrap();
    let mut want: Vec<(String, String, bool)> = stmt
        .query_map([start.position as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .map(|(tbl, id)| {
            let n: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM \"{tbl}\" WHERE id = ?1"),
                    [id],
                    |r| r.get(0),
                )
                .unwrap();
            (tbl, id.to_string(), n == 1)
        })
        .collect();
    assert_eq!(want.len(), 300, "75 keys in each table");
    for name in names {
        assert!(want.iter().any(|(t, _, _)| t == name), "{name}");
    }
    let got: Vec<(String, String, bool)> = read(&backend, &start)
        .into_iter()
        .map(|(t, k, put, _)| (t, k, put))
        .collect();
    // Each table's changes together, its integer keys in key order.
    for name in names {
        let ids: Vec<i64> = got
            .iter()
            .filter(|c| c.0 == name)
            .map(|c| c.1.parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: {ids:?}");
    }
    let mut got = got;
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

/// Log rows deleted by something other than tidemark (a script clearing every table, say) are
/// changes lost: a short range and a long one both refuse with `ChangesUnavailable` before any
/// change is handed on, where the reading used to give the changes left and call it complete.
/// Untouched, the same ranges read in full.
#[test]
fn log_rows_deleted_behind_tidemarks_back_make_the_changes_unavailable() {
    let (_d, mut conn, backend, start) = tracked("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT)");
    insert_rows(&mut conn, 70_000);
    let middle = backend.current_checkpoint().unwrap();
    conn.execute("UPDATE a SET v = 'y' WHERE id < 100", [])
        .unwrap();
    assert_eq!(read(&backend, &start).len(), 70_000);
    assert_eq!(read(&backend, &middle).len(), 100);
    // One row of the short range's, which is also one of the long range's.
    conn.execute(
        "DELETE FROM _tidemark_changes WHERE seq = ?1",
        [middle.position as i64 + 50],
    )
    .unwrap();
    for (from, what) in [(&start, "long"), (&middle, "short")] {
        let mut view = backend.view().unwrap();
        let mut handed = 0;
        let result = view.changes_since(from, 1000, &mut |b| {
            handed += b.len();
            Ok(())
        });
        match result {
            Err(backup_core::Error::ChangesUnavailable { reason, .. }) => {
                assert!(
                    reason.contains("something other than tidemark"),
                    "{what}: {reason}"
                )
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(handed, 0, "{what}");
    }
}

/// In WAL mode a range of many changes is read in two halves, by the view's connection and a
/// second one at the same snapshot. A log row deleted behind tidemark's back in either half
/// still makes the changes unavailable before any is handed on; untouched, the range reads
/// in full.
#[test]
fn a_log_row_missing_from_either_half_of_a_shared_reading_makes_the_changes_unavailable() {
    for (half, at) in [("first", 100), ("later", 4_900)] {
        let (_d, mut conn, backend, _) =
            tracked("PRAGMA journal_mode = WAL; CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);");
        insert_rows(&mut conn, 5_000);
        let middle = backend.current_checkpoint().unwrap();
        conn.execute("UPDATE a SET v = 'y'", []).unwrap();
        assert_eq!(read(&backend, &middle).len(), 5_000, "{half}");
        conn.execute(
            "DELETE FROM _tidemark_changes WHERE seq = ?1",
            [middle.position as i64 + at],
        )
        .unwrap();
        let mut view = backend.view().unwrap();
        let mut handed = 0;
        let result = view.changes_since(&middle, 1000, &mut |b| {
            handed += b.len();
            Ok(())
        });
        match result {
            Err(backup_core::Error::ChangesUnavailable { reason, .. }) => assert!(
                reason.contains("holds 4999 of the 5000 entries"),
                "{half}: {reason}"
            ),
            other => panic!("{half}: {other:?}"),
        }
        assert_eq!(handed, 0, "{half}");
    }
}

/// A short range of many keys (at least 2,048 after the reduction) is looked up by two
/// connections, each taking a range of the keys: together they give each key's last change
/// once, as the log says, with the row as of the view.
#[test]
fn many_changed_keys_are_looked_up_by_two_connections_and_each_comes_once() {
    let (_d, mut conn, backend, _) = tracked(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);
         CREATE TABLE b(k TEXT, n INTEGER, v BLOB, PRIMARY KEY (k, n)) WITHOUT ROWID;",
    );
    insert_rows(&mut conn, 20_000);
    let middle = backend.current_checkpoint().unwrap();
    // 6,000 keys in an order of their own (a multiplicative step through the table), some
    // twice, some deleted, some inserted anew, and composite keys of the other table.
    let tx = conn.transaction().unwrap();
    for j in 0..6_000i64 {
        let id = (j * 7_919) % 20_000;
        tx.execute(
            "UPDATE a SET v = ?1 WHERE id = ?2",
            rusqlite::params![j, id],
        )
        .unwrap();
    }
    tx.execute("UPDATE a SET v = 'again' WHERE id % 10 = 3", [])
        .unwrap();
    tx.execute("DELETE FROM a WHERE id % 97 = 1", []).unwrap();
    tx.execute(
        "INSERT INTO a(id, v) VALUES (-5, 'new'), (30000, 'new')",
        [],
    )
    .unwrap();
    for i in 0..500i64 {
        tx.execute(
            "INSERT INTO b(k, n, v) VALUES (?1, ?2, x'00')",
            rusqlite::params![format!("k{}", i % 50), i],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let want = expected(&conn, middle.position);
    assert!(want.len() > 4_096, "{} keys", want.len());
    let mut got = read(&backend, &middle);
    assert_eq!(got.len(), want.len());
    got.sort();
    assert_eq!(got, want);
}

/// The second connection only reads beside the view's when it sees the same snapshot: with a
/// writer's commit between the view's start and its change reading (WAL lets it in), every
/// change is still as of the view. Here the commit deletes every row, so a lookup in the newer
/// snapshot would hand on deletions.
#[test]
fn a_commit_after_the_view_started_does_not_reach_its_change_reading() {
    let (_d, mut conn, backend, _) =
        tracked("PRAGMA journal_mode = WAL; CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);");
    insert_rows(&mut conn, 10_000);
    let middle = backend.current_checkpoint().unwrap();
    conn.execute("UPDATE a SET v = 'y' WHERE id % 2 = 0", [])
        .unwrap();
    let mut view = backend.view().unwrap();
    // The view's snapshot is fixed; this commit comes after it.
    conn.execute("DELETE FROM a", []).unwrap();
    let mut got = Vec::new();
    view.changes_since(&middle, 1000, &mut |batch| {
        got.extend(batch);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 5_000);
    let deletions = got
        .iter()
        .filter(|c| !matches!(c.op, ChangeOp::Put(_)))
        .count();
    assert_eq!(deletions, 0, "changes read from the newer snapshot");
}

/// In a rollback journal mode an application's commit waits for the view's shared lock while
/// holding the PENDING lock, which refuses new readers. The change reading must not open a
/// reader then and wait for it (the view would keep its lock and the commit its wait until the
/// application's busy timeout refused the commit): it reads alone, and the commit goes through
/// once the view ends.
#[test]
fn a_commit_waiting_on_the_view_in_rollback_mode_is_not_held_up_by_the_reading() {
    let (d, mut conn, backend, _) = tracked("CREATE TABLE a(id INTEGER PRIMARY KEY, v TEXT);");
    insert_rows(&mut conn, 10_000);
    let middle = backend.current_checkpoint().unwrap();
    conn.execute("UPDATE a SET v = 'y' WHERE id % 3 = 0", [])
        .unwrap();
    let mut view = backend.view().unwrap();
    // The application: a write transaction whose commit waits (up to 5 s) for the view.
    let path = d.path().join("s.db");
    let app = {
        let path = path.clone();
        std::thread::spawn(move || {
            let c = Connection::open(&path).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            c.execute_batch("BEGIN IMMEDIATE; UPDATE a SET v = 'app' WHERE id = 1; COMMIT;")
        })
    };
    // Its commit is waiting once a new reader is refused (the PENDING lock).
    let probe = Connection::open(&path).unwrap();
    probe.busy_timeout(std::time::Duration::ZERO).unwrap();
    while probe
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok()
    {
        assert!(!app.is_finished(), "the commit did not wait for the view");
        std::thread::yield_now();
    }
    let mut got = 0;
    view.changes_since(&middle, 1000, &mut |batch| {
        got += batch.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(got, 3_334);
    drop(view);
    app.join()
        .unwrap()
        .expect("the application's commit goes through once the view ends");
}
