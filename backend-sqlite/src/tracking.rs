//! Change capture with triggers.
//!
//! `track` adds, inside the database:
//!
//! - `_tidemark_meta(key, value)`: the store's identity (`store_id`, a uuid), `floor`, the
//!   position after which the log is known complete, `floor_reason` (the floor a capture gap
//!   or a trigger upgrade raised it to, and why, for the message of the full backup that
//!   follows), and `triggers`, the version of the triggers' SQL (a database whose triggers are
//!   older gets new ones, and a new floor);
//! - `_tidemark_changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl, k0, k1, …)`: one row per
//!   written key, in the writer's own transaction. `k*` columns have no type, so values keep
//!   theirs. AUTOINCREMENT never reuses a number, even after trimming.
//! - per user table, triggers `_tidemark_ins_T`, `_tidemark_upd_T`, `_tidemark_updk_T` (old
//!   key, when an update changes the key) and `_tidemark_del_T`.
//!
//! The log records keys, not values: a backup reads each changed key's row in the same read
//! transaction that fixes its checkpoint, so the row is the state at that checkpoint. This also
//! keeps `INSERT OR REPLACE` right without `recursive_triggers`: the insert trigger logs the key.
//!
//! Where capture may have missed writes (a table created or rebuilt after tracking began, so
//! without triggers for a while, that already holds rows), installing its triggers logs a
//! marker row and raises `floor` to it: incrementals from before the marker get
//! `ChangesUnavailable`.

use crate::table::{quote_ident, quote_literal, user_tables, Table, TRACKING_PREFIX};
use backup_core::{Error, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// The change log table.
pub const CHANGES: &str = "_tidemark_changes";
/// The meta table.
pub const META: &str = "_tidemark_meta";

/// The version of the capture triggers, kept in the meta table (`triggers`). Version 2 compares
/// an update's old key with its new one by bytes and type (`COLLATE BINARY`, `typeof`); version
/// 1 (no entry) compared them with the column's own collation and affinity, so a key changed
/// only in case in a NOCASE column (or from 1 to 1.0 in a column without a type) logged no old
/// key, and the backup kept the row under both.
const TRIGGERS_VERSION: i64 = 2;

/// The version of the installed triggers ([`TRIGGERS_VERSION`]).
fn triggers_version(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'triggers'"),
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(1))
}

/// Whether tracking is installed in this database.
pub fn is_tracked(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [META],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// What [`install`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrackReport {
    /// Tables that got triggers now.
    pub newly_tracked: Vec<String>,
    /// Tables tracked in all.
    pub tables: usize,
    /// Whether tracking was installed for the first time.
    pub first_install: bool,
}

/// Whether tracking is installed and complete: the log and meta tables exist, every user table
/// has its four triggers under its current name, and no trigger is left under an old name.
/// Read in one read transaction, so that a backup of a tracked database whose capture is
/// complete (the usual case) never asks for the application's write lock: [`install`] takes
/// it, and waits behind an application's long write transaction.
pub fn is_complete(conn: &Connection, store: &str) -> Result<bool> {
    let err = |e: rusqlite::Error| Error::store_cause(store, "checking change tracking", e);
    // A deferred transaction: everything below reads one snapshot, without a write lock. It
    // only reads, so it ends by rolling back when dropped.
    let tx = conn.unchecked_transaction().map_err(err)?;
    if !is_tracked(&tx).map_err(err)?
        || !stale_triggers(&tx).map_err(err)?.is_empty()
        || triggers_version(&tx).map_err(err)? < TRIGGERS_VERSION
    {
        return Ok(false);
    }
    // A table's triggers are created after the log has a key column for each of its key
    // values (install widens it first), so a table with its triggers needs nothing more.
    let found = capture_triggers(&tx).map_err(err)?;
    for table in user_tables(&tx, store)? {
        if triggers_of(&found, &table) != Triggers::Intact {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Installs tracking, or completes it (tables created since), in one write transaction.
pub fn install(conn: &mut Connection, store: &str) -> Result<TrackReport> {
    let err = |e: rusqlite::Error| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            Error::store(
                store,
                format!(
                    "installing change tracking: another connection held the database's write \
                     lock for over {} s ({e}); tracking is installed in one write transaction, \
                     so try again when the application's write transaction has ended",
                    crate::BUSY_TIMEOUT.as_secs()
                ),
            )
        } else {
            Error::store_cause(store, "installing change tracking", e)
        }
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let first_install = !is_tracked(&tx).map_err(err)?;
    if first_install {
        tx.execute_batch(&format!(
            "CREATE TABLE {META}(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
             CREATE TABLE {CHANGES}(seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT, k0);
             INSERT INTO {META}(key, value) VALUES ('store_id', {}), ('floor', 0);",
            quote_literal(&uuid::Uuid::new_v4().to_string())
        ))
        .map_err(err)?;
    }
    // Triggers of an older version are all replaced, in this transaction.
    let outdated = !first_install && triggers_version(&tx).map_err(err)? < TRIGGERS_VERSION;
    drop_stale_triggers(&tx).map_err(err)?;
    let tables = user_tables(&tx, store)?;
    // Each table's own triggers: what the loop below creates for one table is not looked up
    // for another.
    let triggers = capture_triggers(&tx).map_err(err)?;
    let mut width = log_key_width(&tx).map_err(err)?;
    let mut report = TrackReport {
        first_install,
        tables: tables.len(),
        ..TrackReport::default()
    };
    // The tables that held rows when they got triggers: their rows may have been written
    // without capture.
    let mut uncaptured: Vec<&str> = Vec::new();
    // The tables whose triggers were there but not as tidemark wrote them: they may have
    // logged nothing.
    let mut altered: Vec<&str> = Vec::new();
    for table in &tables {
        let exprs = table.key_exprs();
        while width < exprs.len() {
            tx.execute_batch(&format!("ALTER TABLE {CHANGES} ADD COLUMN k{width}"))
                .map_err(err)?;
            width += 1;
        }
        let found = triggers_of(&triggers, table);
        // An older tidemark's triggers differ from today's: that is the upgrade, not a
        // replacement by someone else.
        if found == Triggers::Intact || (outdated && found == Triggers::Altered) {
            if outdated {
                tx.execute_batch(&trigger_sql(table)).map_err(err)?;
            }
            continue;
        }
        let holds_rows: bool = tx
            .query_row(
                &format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(&table.name)),
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        tx.execute_batch(&trigger_sql(table)).map_err(err)?;
        match found {
            Triggers::Altered => altered.push(&table.name),
            _ => {
                report.newly_tracked.push(table.name.clone());
                if holds_rows {
                    uncaptured.push(&table.name);
                }
            }
        }
    }
    // An empty table cannot have had uncaptured writes that matter (a dropped and recreated
    // table's lost rows are caught by the engine's count check); one holding rows can.
    // Older triggers missed a key changed in a way only bytes or types tell apart: what they
    // logged is not known complete either.
    let gap = !uncaptured.is_empty() || !altered.is_empty();
    if !first_install && (gap || outdated) {
        // Those tables may have been written without capture: nothing before here is complete.
        tx.execute(&format!("INSERT INTO {CHANGES}(tbl) VALUES (NULL)"), [])
            .map_err(err)?;
        let marker = tx.last_insert_rowid();
        tx.execute(
            &format!("UPDATE {META} SET value = ?1 WHERE key = 'floor'"),
            [marker],
        )
        .map_err(err)?;
        // Why, for the backup that finds its checkpoint below the floor; it holds while the
        // floor is this marker (a trim raises the floor past it, and the reason lapses).
        let why = if !altered.is_empty() {
            format!(
                "the capture triggers of table(s) {} were not the ones tidemark writes (replaced \
                 under the same name, or written by a tidemark from before 2026-12-03 that took \
                 a column named rowid for the rowid), so they may have logged nothing, or the \
                 wrong key",
                altered.join(", ")
            )
        } else if gap {
            format!(
                "table(s) {} got capture triggers while holding rows, which may have been \
                 written without capture",
                uncaptured.join(", ")
            )
        } else {
            format!(
                "tidemark's capture triggers were replaced by a newer version ({TRIGGERS_VERSION}), \
                 and the older ones could miss a key changed only in case or type"
            )
        };
        tx.execute(
            &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES ('floor_reason', ?1)"),
            [format!("{marker} {why}")],
        )
        .map_err(err)?;
    }
    tx.execute(
        &format!("INSERT OR REPLACE INTO {META}(key, value) VALUES ('triggers', ?1)"),
        [TRIGGERS_VERSION],
    )
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(report)
}

/// Removes tracking: triggers, log and meta tables.
pub fn uninstall(conn: &mut Connection, store: &str) -> Result<()> {
    let err = |e: rusqlite::Error| Error::store_cause(store, "removing change tracking", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let names: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare(
                "SELECT type, name FROM sqlite_schema WHERE name LIKE '\\_tidemark\\_%' ESCAPE '\\' \
                 AND type IN ('trigger', 'table') ORDER BY type = 'table'",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    for (kind, name) in names {
        let kind = if kind == "table" { "TABLE" } else { "TRIGGER" };
        tx.execute_batch(&format!("DROP {kind} IF EXISTS {}", quote_ident(&name)))
            .map_err(err)?;
    }
    // The log's last number, kept by AUTOINCREMENT (a database that never had an AUTOINCREMENT
    // table, one never tracked say, has no sqlite_sequence).
    let has_sequence: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if has_sequence {
        tx.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [CHANGES])
            .map_err(err)?;
    }
    tx.commit().map_err(err)
}

/// The store's identity and floor, if tracked.
pub fn meta(conn: &Connection) -> rusqlite::Result<Option<(String, u64)>> {
    if !is_tracked(conn)? {
        return Ok(None);
    }
    let id: String = conn.query_row(
        &format!("SELECT value FROM {META} WHERE key = 'store_id'"),
        [],
        |r| r.get(0),
    )?;
    let floor: i64 = conn.query_row(
        &format!("SELECT value FROM {META} WHERE key = 'floor'"),
        [],
        |r| r.get(0),
    )?;
    Ok(Some((id, floor.max(0) as u64)))
}

/// Why the floor was raised to `floor` by [`install`], if it recorded why at that floor.
pub fn floor_reason(conn: &Connection, floor: u64) -> rusqlite::Result<Option<String>> {
    let text: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {META} WHERE key = 'floor_reason'"),
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.and_then(|t| {
        let (at, why) = t.split_once(' ')?;
        (at.parse::<u64>().ok()? == floor).then(|| why.to_string())
    }))
}

/// The last sequence number handed out (0 before the first change).
pub fn last_seq(conn: &Connection) -> rusqlite::Result<u64> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            [CHANGES],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// How many of the log's last entries a backup keeps a fingerprint of ([`log_tail`]).
pub const TAIL_ENTRIES: usize = 8;

/// The fingerprints of the log's last [`TAIL_ENTRIES`] entries at or before `upto`, newest
/// first: each entry's sequence number and the CRC32 of its table and key values (`literals_fingerprint`).
pub fn log_tail(conn: &Connection, upto: u64) -> rusqlite::Result<Vec<(u64, u32)>> {
    let width = log_key_width(conn)?;
    let sql = format!(
        "SELECT seq, {} FROM {CHANGES} WHERE seq <= ?1 ORDER BY seq DESC LIMIT {TAIL_ENTRIES}",
        entry_literals(width)
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([upto as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, literals_fingerprint(r, width)?))
    })?;
    rows.collect()
}

/// The fingerprint of the log's entry `seq`, if the log holds it.
pub fn log_entry(conn: &Connection, seq: u64) -> rusqlite::Result<Option<u32>> {
    let width = log_key_width(conn)?;
    let sql = format!(
        "SELECT seq, {} FROM {CHANGES} WHERE seq = ?1",
        entry_literals(width)
    );
    conn.query_row(&sql, [seq as i64], |r| literals_fingerprint(r, width))
        .optional()
}

/// The entry's table and key values as SQL literals (`quote()`), one column each.
fn entry_literals(width: usize) -> String {
    let mut cols = vec!["quote(tbl)".to_string()];
    cols.extend((0..width).map(|i| format!("quote(k{i})")));
    cols.join(", ")
}

/// CRC32 of an entry's literals (result columns 1..): its table and key values, types
/// included, without trailing NULLs, so that key columns the log gains later (a table with a
/// longer key tracked since) leave an entry's fingerprint as it was.
fn literals_fingerprint(r: &rusqlite::Row<'_>, width: usize) -> rusqlite::Result<u32> {
    let mut parts: Vec<String> = (1..=width + 1)
        .map(|i| r.get::<_, String>(i))
        .collect::<rusqlite::Result<_>>()?;
    while parts.len() > 1 && parts.last().is_some_and(|p| p == "NULL") {
        parts.pop();
    }
    Ok(crc32fast::hash(parts.join("\u{1f}").as_bytes()))
}

/// Deletes log rows at or before `upto` and raises the floor to it. In WAL mode the connection
/// then leaves the WAL as it is when it closes (see the comment inside).
pub fn trim(conn: &mut Connection, store: &str, upto: u64) -> Result<()> {
    let err = |e: rusqlite::Error| {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) {
            Error::store(
                store,
                format!(
                    "another connection held the database's write lock for over {} s ({e}); \
                     the next backup trims the log",
                    crate::TRIM_BUSY_TIMEOUT.as_secs()
                ),
            )
        } else {
            Error::store_cause(store, "trimming the change log", e)
        }
    };
    // In WAL mode the trim commits without syncing the WAL (SQLite's `synchronous = NORMAL`,
    // which WAL mode keeps free of corruption): a trim lost to a power cut leaves the rows and
    // the floor as they were, and the next incremental reads those changes again. The next
    // checkpoint syncs it. Rollback-journal mode keeps the connection's setting.
    let wal = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
        .map_err(err)?
        .eq_ignore_ascii_case("wal");
    if !wal {
        return delete_through(conn, upto).map_err(err);
    }
    let synchronous: i64 = conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(err)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(err)?;
    let trimmed = delete_through(conn, upto).map_err(err);
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}"))
        .map_err(err)?;
    trimmed?;
    // The trim waits in the WAL for the next checkpoint, the application's (automatic, or when
    // its last connection closes), as its own writes do. Were this the last connection, its
    // close would otherwise checkpoint the trim into the database file (two more fsyncs) and
    // delete the `-wal` and `-shm` files: a twentieth of a small incremental's time.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(err)?;
    Ok(())
}

/// Deletes the log rows up to `upto` and raises the floor to it, in one write transaction.
fn delete_through(conn: &mut Connection, upto: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // The write lock is held: no row can be logged until the commit.
    let newest: Option<i64> =
        tx.query_row(&format!("SELECT max(seq) FROM {CHANGES}"), [], |r| r.get(0))?;
    if newest.is_some_and(|n| n > upto as i64) {
        tx.execute(
            &format!("DELETE FROM {CHANGES} WHERE seq <= ?1"),
            [upto as i64],
        )?;
    } else {
        // Every row goes (the common case: nothing was logged while the backup ran). Without a
        // WHERE, SQLite frees the table's pages instead of deleting row by row and rewriting
        // each page (its truncate optimization: the log has no triggers). AUTOINCREMENT keeps
        // the last number in `sqlite_sequence`, so none is reused.
        tx.execute(&format!("DELETE FROM {CHANGES}"), [])?;
    }
    tx.execute(
        &format!("UPDATE {META} SET value = max(value, ?1) WHERE key = 'floor'"),
        [upto as i64],
    )?;
    tx.commit()
}

/// How many key columns (`k0`, `k1` …) the log has.
pub fn log_key_width(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name GLOB 'k[0-9]*'",
        [CHANGES],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as usize)
}

/// Drops capture triggers whose name no longer matches their table (the table was renamed:
/// SQLite moves triggers along, but they would log the old name).
fn drop_stale_triggers(conn: &Connection) -> rusqlite::Result<()> {
    for name in stale_triggers(conn)? {
        conn.execute_batch(&format!("DROP TRIGGER {}", quote_ident(&name)))?;
    }
    Ok(())
}

/// The capture triggers whose name no longer matches their table.
fn stale_triggers(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' \
         AND name LIKE '\\_tidemark\\_%' ESCAPE '\\'",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut stale = Vec::new();
    for row in rows {
        let (name, table) = row?;
        if !["ins", "upd", "updk", "del"]
            .iter()
            .any(|k| trigger_name(k, &table) == name)
        {
            stale.push(name);
        }
    }
    Ok(stale)
}

fn trigger_name(kind: &str, table: &str) -> String {
    format!("{TRACKING_PREFIX}{kind}_{table}")
}

/// What a table's capture triggers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Triggers {
    /// One or more of the four is missing.
    Missing,
    /// All four are there, but one's statement is not the one tidemark writes (replaced by
    /// another with the same name: it may log nothing).
    Altered,
    /// All four, as tidemark writes them.
    Intact,
}

/// The capture triggers in the schema: (name, table) → statement. Read once and looked up
/// per table: a query of `sqlite_schema` per table (which has no index on `tbl_name`) read the
/// whole schema for each table, and a database of 2,000 tables spent 0.76 s of a 0.9 s
/// incremental there.
type CaptureTriggers = std::collections::HashMap<(String, String), Option<String>>;

fn capture_triggers(conn: &Connection) -> rusqlite::Result<CaptureTriggers> {
    let mut stmt = conn.prepare(
        "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger' \
         AND name LIKE '\\_tidemark\\_%' ESCAPE '\\'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    rows.collect()
}

fn triggers_of(found: &CaptureTriggers, table: &Table) -> Triggers {
    let expected = trigger_statements(table);
    let mut intact = true;
    for (name, want) in &expected {
        match found.get(&(name.clone(), table.name.clone())) {
            None => return Triggers::Missing,
            Some(sql) => intact &= sql.as_deref() == Some(want.as_str()),
        }
    }
    if intact {
        Triggers::Intact
    } else {
        Triggers::Altered
    }
}

/// The four capture triggers of `table`: each one's name and its `CREATE TRIGGER` statement,
/// as `sqlite_schema` keeps it (without the closing semicolon).
fn trigger_statements(table: &Table) -> [(String, String); 4] {
    let exprs = table.key_exprs();
    let cols: Vec<String> = (0..exprs.len()).map(|i| format!("k{i}")).collect();
    let cols = cols.join(", ");
    let values = |row: &str| -> String {
        exprs
            .iter()
            .map(|e| format!("{row}.{e}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // By bytes and type, not by the column's collation or affinity ([`TRIGGERS_VERSION`]).
    let changed = exprs
        .iter()
        .map(|e| {
            format!(
                "OLD.{e} IS NOT NEW.{e} COLLATE BINARY OR typeof(OLD.{e}) IS NOT typeof(NEW.{e})"
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ");
    let t = quote_ident(&table.name);
    let lit = quote_literal(&table.name);
    let log = |row: &str| {
        format!(
            "INSERT INTO {CHANGES}(tbl, {cols}) VALUES ({lit}, {});",
            values(row)
        )
    };
    let (new, old) = (log("NEW"), log("OLD"));
    let trigger = |kind: &str, event: &str, when: &str, body: &str| {
        let name = trigger_name(kind, &table.name);
        let sql = format!(
            "CREATE TRIGGER {} {event} ON {t}{when} BEGIN {body} END",
            quote_ident(&name)
        );
        (name, sql)
    };
    [
        trigger("ins", "AFTER INSERT", "", &new),
        trigger("upd", "AFTER UPDATE", "", &new),
        trigger("updk", "AFTER UPDATE", &format!(" WHEN {changed}"), &old),
        trigger("del", "AFTER DELETE", "", &old),
    ]
}

/// Drops `table`'s capture triggers, whatever they are, and creates them anew.
fn trigger_sql(table: &Table) -> String {
    let mut sql = String::new();
    for (name, create) in trigger_statements(table) {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS {};\n", quote_ident(&name)));
        sql.push_str(&create);
        sql.push_str(";\n");
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new database at `path` in journal mode `mode`, its table `t` tracked and ten rows
    /// inserted (ten log rows).
    fn ten_logged_rows(path: &std::path::Path, mode: &str) -> Connection {
        let mut conn = Connection::open(path).expect("open");
        conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |_| Ok(()))
            .expect("journal mode");
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            .expect("create");
        install(&mut conn, "t").expect("track");
        for i in 0..10 {
            conn.execute("INSERT INTO t(id, v) VALUES (?1, 'x')", [i])
                .expect("insert");
        }
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {CHANGES}"), [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn capture_is_complete_until_a_table_is_created_or_renamed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = Connection::open(dir.path().join("c.db")).expect("open");
        let complete = |conn: &Connection| is_complete(conn, "c").expect("check");
        conn.execute_batch("CREATE TABLE a(id INTEGER PRIMARY KEY, v)")
            .expect("create");
        assert!(!complete(&conn), "not tracked yet");
        install(&mut conn, "c").expect("track");
        assert!(complete(&conn));
        for change in [
            "CREATE TABLE b(x, y)",
            "ALTER TABLE a RENAME TO a2",
            "CREATE TABLE wide(p, q, r, PRIMARY KEY (p, q, r)) WITHOUT ROWID",
        ] {
            conn.execute_batch(change).expect("change");
            assert!(!complete(&conn), "after {change}");
            install(&mut conn, "c").expect("complete");
            assert!(complete(&conn), "completed after {change}");
        }
        // The check leaves no transaction open.
        assert!(conn.is_autocommit());
    }

    #[test]
    fn a_trim_deletes_up_to_its_position_raises_the_floor_and_keeps_the_sync_setting() {
        for mode in ["wal", "delete"] {
            let d = tempfile::tempdir().expect("tmp");
            let mut conn = ten_logged_rows(&d.path().join("t.db"), mode);
            conn.execute_batch("PRAGMA synchronous = EXTRA")
                .expect("synchronous");
            assert_eq!(rows(&conn), 10);
            trim(&mut conn, "t", 6).expect("trim");
            assert_eq!(rows(&conn), 4, "{mode}");
            let (_, floor) = meta(&conn).expect("meta").expect("tracked");
            assert_eq!(floor, 6, "{mode}");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .expect("synchronous");
            assert_eq!(sync, 3, "{mode}: EXTRA again after the trim");
        }
    }

    /// A trim that covers the whole log empties it (SQLite's truncate path), and the rows
    /// logged after it are numbered on from the last one, never again from 1; a trim that
    /// covers part of it keeps the rest.
    #[test]
    fn a_trim_of_the_whole_log_empties_it_and_numbers_go_on() {
        for mode in ["wal", "delete"] {
            let d = tempfile::tempdir().expect("tmp");
            let mut conn = ten_logged_rows(&d.path().join("t.db"), mode);
            trim(&mut conn, "t", 10).expect("trim all");
            assert_eq!(rows(&conn), 0, "{mode}");
            assert_eq!(meta(&conn).expect("meta").expect("tracked").1, 10);
            conn.execute("UPDATE t SET v = 'y' WHERE id = 3", [])
                .expect("update");
            let seqs = |conn: &Connection| -> Vec<i64> {
                let mut stmt = conn
                    .prepare(&format!("SELECT seq FROM {CHANGES} ORDER BY seq"))
                    .expect("prepare");
                let got = stmt
                    .query_map([], |r| r.get(0))
                    .expect("query")
                    .collect::<rusqlite::Result<_>>()
                    .expect("rows");
                got
            };
            assert_eq!(seqs(&conn), vec![11], "{mode}: numbered on after the trim");
            trim(&mut conn, "t", 11).expect("trim all again");
            assert_eq!(rows(&conn), 0, "{mode}");
            trim(&mut conn, "t", 11).expect("trim an empty log");
            assert_eq!(meta(&conn).expect("meta").expect("tracked").1, 11);
            for i in 20..23 {
                conn.execute("INSERT INTO t(id, v) VALUES (?1, 'x')", [i])
                    .expect("insert");
            }
            assert_eq!(seqs(&conn), vec![12, 13, 14], "{mode}");
            trim(&mut conn, "t", 13).expect("trim part");
            assert_eq!(
                seqs(&conn),
                vec![14],
                "{mode}: the rows after the position stay"
            );
            assert_eq!(meta(&conn).expect("meta").expect("tracked").1, 13);
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity check");
            assert_eq!(check, "ok", "{mode}");
        }
    }

    /// In WAL mode the trim's connection leaves the trim in the `-wal` when it closes last;
    /// the next connection reads it from there, and that one's close checkpoints it into the
    /// database file.
    #[test]
    fn a_trim_in_wal_mode_is_left_in_the_wal_for_the_next_checkpoint() {
        let d = tempfile::tempdir().expect("tmp");
        let db = d.path().join("t.db");
        let wal = d.path().join("t.db-wal");
        let mut conn = ten_logged_rows(&db, "wal");
        trim(&mut conn, "t", 6).expect("trim");
        drop(conn);
        assert!(
            std::fs::metadata(&wal).expect("the -wal stays").len() > 0,
            "the trim is in the -wal"
        );
        let conn = Connection::open(&db).expect("open again");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
        assert_eq!(rows(&conn), 4, "the trim is read from the -wal");
        assert_eq!(meta(&conn).expect("meta").expect("tracked").1, 6);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 10, "the table's rows are untouched");
        drop(conn);
        assert!(
            !wal.exists(),
            "a default close checkpoints and removes the -wal"
        );
        let conn = Connection::open(&db).expect("open a third time");
        assert_eq!(rows(&conn), 4, "the trim is in the database file");
    }
}
