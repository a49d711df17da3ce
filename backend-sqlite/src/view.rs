//! A view: one read transaction over the database (scans, counts, schema, changes), and the
//! snapshot connections it and its second reader open.

use crate::changes::{lookup_sql, read_log, row_by_key, KeyFields, LogRange};
use crate::open::{open_reader, wait_for_locks};
use crate::table::{encode_key, field, quote_ident, Table};
use crate::{checkpoint_of, table, tracking};
use backup_core::{
    Change, Checkpoint, CollectionInfo, CollectionName, Error, Field, Record, Result, Row,
    StoreSchema, Value, View,
};
use rusqlite::Connection;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A second read-only connection to `path` (a database in WAL mode) in a read transaction whose
/// snapshot holds the same tracked rows as the view's: the same store, the same last logged
/// change and the same schema. Every commit that changes a tracked row logs it (the capture
/// triggers, in the same transaction), so an equal last sequence number means equal tracked
/// tables. `None` when it cannot be opened at once or a writer committed in between: the view's
/// connection then reads alone. It never waits: in a rollback journal mode (where it is not
/// asked for) a writer waiting to commit holds the PENDING lock that refuses new readers, and a
/// reader that waited for it would keep the view's lock, and so the writer, waiting too.
pub(crate) fn second_reader(
    path: &Path,
    readonly_shm: bool,
    checkpoint: &Checkpoint,
    schema_version: i64,
) -> Option<Connection> {
    let (conn, (at, _), version) = open_snapshot(path, readonly_shm, false).ok()?;
    (at == *checkpoint && version == schema_version).then_some(conn)
}

/// A read-only connection to `path` in a read transaction, with the snapshot's checkpoint and
/// floor ([`checkpoint_of`]) and schema version: a view's, which `waits` for a lock (up to
/// [`BUSY_TIMEOUT`](crate::BUSY_TIMEOUT)), or a second reader's of the same snapshot, which does not.
pub(crate) fn open_snapshot(
    path: &Path,
    readonly_shm: bool,
    waits: bool,
) -> rusqlite::Result<(Connection, (Checkpoint, Option<u64>), i64)> {
    let conn = open_reader(path, readonly_shm)?;
    if waits {
        wait_for_locks(&conn)?;
    } else {
        conn.busy_timeout(Duration::ZERO)?;
    }
    // A view reads each page about once (a scan, or an incremental's row lookups spread over
    // the tables): 512 KiB of page cache holds the b-trees' interior pages, and SQLite's
    // default 2 MiB only cost its pages' first-touch faults (400 fewer of about 3,800 in a 1%
    // incremental of 1M rows; a full backup is as fast).
    conn.execute_batch("PRAGMA cache_size = -512; BEGIN")?;
    // The first read fixes the transaction's snapshot: everything after it is as of it.
    let checkpoint = checkpoint_of(&conn)?;
    let schema_version = conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
    Ok((conn, checkpoint, schema_version))
}

/// One read transaction over the database.
pub(crate) struct SqliteView {
    pub(crate) conn: Connection,
    /// The database file, for a second reader of the same snapshot ([`second_reader`]).
    pub(crate) path: PathBuf,
    /// As [`SqliteBackend`](crate::SqliteBackend)'s: how a reader opens the database.
    pub(crate) readonly_shm: bool,
    pub(crate) store: String,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) floor: Option<u64>,
    pub(crate) tables: Vec<Table>,
    /// `PRAGMA schema_version` in the view's snapshot ([`Table::schema_json`]).
    pub(crate) schema_version: i64,
    /// Whether the database is in a rollback-journal mode (not WAL), where the view's shared
    /// lock refuses every writer's commit while it is held.
    pub(crate) blocks_writers: bool,
    /// Whether the read transaction was ended early ([`View::release`]).
    pub(crate) released: bool,
    /// Whether a read transaction is open (the snapshot of `checkpoint`, or a scan's step).
    pub(crate) in_read: bool,
    /// Whether a scan read rows outside the snapshot of `checkpoint` (a scan in steps): the
    /// engine's [`View::settle`] then moves the view to a new snapshot and replays the changes.
    pub(crate) stepped: bool,
    /// Whether scans may read in steps (not after [`View::read_in_one_snapshot`]).
    pub(crate) steps: bool,
}

/// The most rows a scan in steps reads in one read transaction ([`SqliteView::scan_in_steps`]).
const SCAN_STEP_ROWS: i64 = 4096;

/// The most bytes of values a step holds before its rows are handed on: large rows make
/// shorter steps.
const SCAN_STEP_BYTES: u64 = 8 << 20;

impl Drop for SqliteView {
    fn drop(&mut self) {
        // Ends the read transaction; a read-only transaction has nothing to lose.
        if self.in_read {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl SqliteView {
    fn table(&self, collection: &CollectionName) -> Result<&Table> {
        self.tables
            .iter()
            .find(|t| CollectionName::from_stored(&t.name) == *collection)
            .ok_or_else(|| Error::store(&self.store, format!("no table named `{collection}`")))
    }

    fn err(&self, what: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        let what = what.to_string();
        move |e| Error::store_cause(&self.store, what.clone(), e)
    }

    /// Ends the open read transaction, if any.
    fn end_read(&mut self) -> Result<()> {
        if self.in_read {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(self.err("ending the read transaction"))?;
            self.in_read = false;
        }
        Ok(())
    }

    /// Opens a read transaction on the database as it is now; refused if its schema is no
    /// longer the view's (a scan in steps, and its settle, read one schema).
    fn begin_read(&mut self) -> Result<()> {
        self.end_read()?;
        self.conn
            .execute_batch("BEGIN")
            .map_err(self.err("beginning a read transaction"))?;
        self.in_read = true;
        let version: i64 = self
            .conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .map_err(self.err("reading the schema version"))?;
        if version != self.schema_version {
            return Err(Error::StepsUnsettled {
                store: self.store.clone(),
                reason: "the database's schema changed while the backup read it in steps".into(),
            });
        }
        Ok(())
    }

    /// How `table` can be scanned in steps ([`SqliteView::scan_in_steps`]): its step columns
    /// and the SQL of its first and later steps; `None` where SQLite would not answer a step
    /// from the table's own order (a primary key with a DESC column sorts each step anew), or
    /// the table has no step columns.
    fn steps_of(&self, table: &Table) -> Result<Option<(usize, String, String)>> {
        let step = table.step_columns();
        if step.is_empty() {
            return Ok(None);
        }
        let (first, next) = (
            table.select_step_sql(&step, true),
            table.select_step_sql(&step, false),
        );
        if table.scan_rowid.is_none() {
            let mut plan = self
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {next}"))
                .map_err(self.err("planning a scan in steps"))?;
            let details: Vec<String> = plan
                .query_map(
                    rusqlite::params_from_iter(vec![rusqlite::types::Null; step.len() + 1]),
                    |r| r.get::<_, String>(3),
                )
                .and_then(|rows| rows.collect())
                .map_err(self.err("planning a scan in steps"))?;
            let searched = details.iter().any(|d| d.starts_with("SEARCH"));
            if !searched || details.iter().any(|d| d.contains("TEMP B-TREE")) {
                return Ok(None);
            }
        }
        Ok(Some((step.len(), first, next)))
    }

    /// Scans `table` in steps of at most [`SCAN_STEP_ROWS`] rows and [`SCAN_STEP_BYTES`] of
    /// values ([`SqliteView::steps_of`]: `n` step columns, the first and the later steps' SQL),
    /// each read in a read transaction of its own and ended before its rows are handed on: in
    /// rollback-journal mode a read refuses every writer's commit, and writing a whole table's
    /// records to a destination (a folder's documents) took seconds to minutes. Rows read after
    /// the view's snapshot are set right by [`View::settle`].
    fn scan_in_steps(
        &mut self,
        table: &Table,
        (n, first_sql, next_sql): (usize, String, String),
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        use rusqlite::types::Value as SqlValue;
        self.stepped = true;
        let keys = table.key_positions();
        let mut after: Option<Vec<SqlValue>> = None;
        loop {
            self.begin_read()?;
            let store = self.store.clone();
            let err = |e: rusqlite::Error| {
                Error::store_cause(&store, format!("reading table `{}`", table.name), e)
            };
            let mut step = Vec::new();
            let mut done = true;
            {
                let sql = if after.is_some() {
                    &next_sql
                } else {
                    &first_sql
                };
                let mut stmt = self.conn.prepare_cached(sql).map_err(&err)?;
                let at = stmt.column_count() - n;
                let mut params: Vec<SqlValue> = after.take().unwrap_or_default();
                params.push(SqlValue::Integer(SCAN_STEP_ROWS));
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params))
                    .map_err(&err)?;
                let mut bytes = 0u64;
                let mut last = None;
                while let Some(r) = rows.next().map_err(&err)? {
                    last = Some(
                        (at..at + n)
                            .map(|i| r.get(i))
                            .collect::<rusqlite::Result<_>>(),
                    );
                    let record = read_row(table, &keys, r).map_err(&err)?;
                    bytes += record.value.payload_len();
                    step.push(record);
                    if bytes >= SCAN_STEP_BYTES {
                        break;
                    }
                }
                after = last.transpose().map_err(&err)?;
                // A full step, or one cut short by its bytes: more rows may follow.
                if step.len() as i64 == SCAN_STEP_ROWS || bytes >= SCAN_STEP_BYTES {
                    done = false;
                }
            }
            self.end_read()?;
            for record in step {
                visit(record)?;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Refuses a read once the snapshot was let go ([`View::release`]): outside its read
    /// transaction the view would read a later state than its checkpoint's.
    fn snapshot_held(&self) -> Result<()> {
        if self.released {
            return Err(Error::store(
                &self.store,
                "read after the view's snapshot was released (a bug in the caller)",
            ));
        }
        Ok(())
    }
}

/// Reads a result row of `Table::select_sql` into a record.
pub(crate) fn read_row(
    table: &Table,
    keys: &[usize],
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Record> {
    let offset = usize::from(table.hidden_rowid);
    let mut columns = Vec::with_capacity(table.columns.len());
    for (i, name) in table.columns.iter().enumerate() {
        columns.push((name.clone(), field(r.get_ref(i + offset)?)));
    }
    let rowid = if table.hidden_rowid {
        Some(r.get::<_, i64>(0)?)
    } else {
        None
    };
    let key_fields = KeyFields::read(r, keys.len(), |i| keys[i])?;
    Ok(Record {
        key: row_key(table, &key_fields, rowid),
        value: Value::Row(Row { columns, rowid }),
    })
}

/// The key of a row whose primary-key values are `key_fields`. A rowid table lets its primary
/// key hold NULLs (a SQLite quirk: only INTEGER PRIMARY KEY and WITHOUT ROWID tables refuse
/// them), and NULLs do not collide there: such a row is keyed by its key values and its rowid,
/// one value more than any other row of the table has, so no other key equals it. Before, two
/// rows with a NULL key were one key, and the backup kept one of them.
fn row_key(table: &Table, key_fields: &[Field], rowid: Option<i64>) -> backup_core::Key {
    match rowid {
        Some(rowid) if has_null_key(table, key_fields) => {
            let mut fields = key_fields.to_vec();
            fields.push(Field::Integer(rowid));
            encode_key(&fields)
        }
        _ => encode_key(key_fields),
    }
}

/// Whether `key_fields` is a primary key with a NULL in a table where that is possible (a rowid
/// table whose primary key is not its rowid), which does not name one row.
pub(crate) fn has_null_key(table: &Table, key_fields: &[Field]) -> bool {
    table.hidden_rowid && !table.key.is_empty() && key_fields.contains(&Field::Null)
}

/// The key of the SQLite store marks' log fingerprints: `"seq:crc32 seq:crc32 …"`, newest
/// first (see [`tracking::log_tail`]).
const TAIL_MARK: &str = "log_tail";

fn parse_tail(marks: Option<&serde_json::Value>) -> Vec<(u64, u32)> {
    marks
        .and_then(|m| m.get(TAIL_MARK))
        .and_then(|t| t.as_str())
        .map(|t| {
            t.split(' ')
                .filter_map(|e| {
                    let (seq, crc) = e.split_once(':')?;
                    Some((seq.parse().ok()?, u32::from_str_radix(crc, 16).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl View for SqliteView {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn snapshot_blocks_writers(&self) -> bool {
        self.blocks_writers
    }

    fn read_in_one_snapshot(&mut self) {
        self.steps = false;
    }

    fn scans_alike(&self) -> bool {
        // Only a tracked database in rollback-journal mode is read in steps (`scan`).
        !(self.steps && self.blocks_writers && self.floor.is_some())
    }

    fn lookup(
        &mut self,
        collection: &CollectionName,
        keys: &mut dyn Iterator<Item = &[u8]>,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<bool> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        // Each key as its table's key values. A key that does not decode to as many, or that
        // holds a NULL (such a row is keyed by its rowid too, and the lookup by its key values
        // would not name one row), is not looked up: the engine scans instead.
        let mut wanted = Vec::new();
        for key in keys {
            match table::decode_key(&backup_core::Key(key.to_vec())) {
                Some(f) if f.len() == table.key_len() && !f.contains(&Field::Null) => {
                    wanted.push(f)
                }
                _ => return Ok(false),
            }
        }
        // Integer keys in order: the order of the table's pages, so that lookups one after
        // another read the same leaf page (as an incremental's do).
        wanted.sort_by_key(|f| match f[..] {
            [Field::Integer(i)] => (false, i),
            _ => (true, 0),
        });
        let err = self.err(&format!("looking up rows of table `{}`", table.name));
        let mut get = self.conn.prepare_cached(&lookup_sql(table)).map_err(&err)?;
        let positions = table.key_positions();
        for fields in &wanted {
            if let Some(record) = row_by_key(&mut get, table, &positions, fields).map_err(&err)? {
                visit(record)?;
            }
        }
        Ok(true)
    }

    fn release(&mut self) -> Result<()> {
        self.end_read()?;
        self.released = true;
        Ok(())
    }

    fn settle(&mut self) -> Result<bool> {
        if !self.stepped {
            return Ok(false);
        }
        // A new snapshot, whose changes since the old checkpoint the engine replays over the
        // steps' rows. The schema is the view's (checked); the store, the same one.
        self.begin_read()?;
        let (checkpoint, floor) =
            checkpoint_of(&self.conn).map_err(self.err("reading the checkpoint"))?;
        let unsettled = |reason: &str| Error::StepsUnsettled {
            store: self.store.clone(),
            reason: reason.into(),
        };
        if checkpoint.store_id != self.checkpoint.store_id {
            return Err(unsettled(
                "the database's change tracking was replaced while the backup read it in steps",
            ));
        }
        if floor.is_some_and(|f| self.checkpoint.position < f) {
            return Err(unsettled(
                "another backup of this database trimmed its change log while this one read it \
                 in steps, so the writes made meanwhile cannot be replayed",
            ));
        }
        self.checkpoint = checkpoint;
        self.floor = floor;
        self.stepped = false;
        Ok(true)
    }

    fn store_marks(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        self.snapshot_held()?;
        if self.floor.is_none() {
            return Ok(None);
        }
        let mut tail = tracking::log_tail(&self.conn, self.checkpoint.position)
            .map_err(self.err("reading the change log's last entries"))?;
        if tail.is_empty() {
            // Nothing logged since the last trim: the previous backup's entries are still the
            // last ones this database's history had at this position.
            tail = parse_tail(previous);
        }
        let text: Vec<String> = tail.iter().map(|(s, c)| format!("{s}:{c:08x}")).collect();
        Ok(Some(serde_json::json!({ TAIL_MARK: text.join(" ") })))
    }

    fn changes_outside_log(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<String>> {
        if self.floor.is_none() {
            return Ok(None);
        }
        // An entry the previous backup read that the log still holds must be the same entry:
        // a database restored from an older copy (or a disk snapshot) and written since has
        // handed the same sequence numbers out again, to other changes. Trimmed entries are
        // gone in either case, and say nothing.
        for (seq, crc) in parse_tail(previous) {
            let now =
                tracking::log_entry(&self.conn, seq).map_err(self.err("reading the change log"))?;
            if now.is_some_and(|c| c != crc) {
                return Ok(Some(format!(
                    "the change log's entry {seq} is not the one the previous backup read: the \
                     database went back to an older state (restored from a copy, or a disk \
                     snapshot) and was written since, so changes the backup holds never \
                     happened in it"
                )));
            }
        }
        Ok(None)
    }

    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        Ok(self
            .tables
            .iter()
            .map(|t| CollectionInfo {
                name: CollectionName::from_stored(&t.name),
                schema: t.schema_json(self.schema_version),
            })
            .collect())
    }

    fn schema_change(
        &self,
        collection: &CollectionInfo,
        old: &serde_json::Value,
    ) -> Option<String> {
        let without_version = |schema: &serde_json::Value| {
            let mut schema = schema.clone();
            if let Some(fields) = schema.as_object_mut() {
                fields.remove(table::ROWIDS_AS_OF);
            }
            schema
        };
        // Anything else changed: the table itself did, as the engine says.
        if without_version(old) != without_version(&collection.schema) {
            return None;
        }
        let now = self.schema_version;
        Some(
            match old.get(table::ROWIDS_AS_OF).and_then(|v| v.as_i64()) {
                Some(was) => format!(
                    "the database's schema version went from {was} to {now} with this table \
                 unchanged, as a VACUUM leaves; a VACUUM renumbers the rowids of a table without \
                 an INTEGER PRIMARY KEY, and this table's rows are keyed by theirs, so the change \
                 log cannot be trusted for it"
                ),
                None => {
                    "this table has no INTEGER PRIMARY KEY, so a VACUUM may have renumbered the \
                     rowids its rows are keyed by, and the previous backup (by a tidemark before \
                     2026-12-03) did not record when they were read"
                        .into()
                }
            },
        )
    }

    fn store_schema(&mut self) -> Result<StoreSchema> {
        let err = self.err("reading the schema");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT type, name, tbl_name, sql FROM sqlite_schema \
                 WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL \
                 AND name NOT LIKE '\\_tidemark\\_%' ESCAPE '\\' ORDER BY rowid",
            )
            .map_err(&err)?;
        let objects: Vec<serde_json::Value> = stmt
            .query_map([], |r| {
                Ok(json!({
                    "type": r.get::<_, String>(0)?,
                    "name": r.get::<_, String>(1)?,
                    "tbl_name": r.get::<_, String>(2)?,
                    "sql": r.get::<_, String>(3)?,
                }))
            })
            .map_err(&err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(&err)?;
        let has_sequence: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let mut sequences = Vec::new();
        if has_sequence {
            let mut stmt = self
                .conn
                .prepare("SELECT name, seq FROM sqlite_sequence WHERE name <> ?1 ORDER BY rowid")
                .map_err(&err)?;
            sequences = stmt
                .query_map([tracking::CHANGES], |r| {
                    Ok(json!([r.get::<_, String>(0)?, r.get::<_, i64>(1)?]))
                })
                .map_err(&err)?
                .collect::<rusqlite::Result<_>>()
                .map_err(&err)?;
        }
        let user_version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(&err)?;
        let journal_mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(&err)?;
        let pragma = |name: &str| -> Result<i64> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(&err)
        };
        Ok(StoreSchema(json!({
            "objects": objects,
            "sequences": sequences,
            "user_version": user_version,
            "application_id": pragma("application_id")?,
            "page_size": pragma("page_size")?,
            "auto_vacuum": pragma("auto_vacuum")?,
            "journal_mode": journal_mode,
        })))
    }

    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        // A tracked database in rollback-journal mode is read in steps, letting its writers in
        // between; the change log sets the steps right.
        if self.steps && self.blocks_writers && self.floor.is_some() {
            if let Some(steps) = self.steps_of(table)? {
                let table = table.clone();
                return self.scan_in_steps(&table, steps, visit);
            }
        }
        let err = self.err(&format!("reading table `{}`", table.name));
        let keys = table.key_positions();
        let mut stmt = self.conn.prepare(&table.select_sql()).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while let Some(r) = rows.next().map_err(&err)? {
            visit(read_row(table, &keys, r).map_err(&err)?)?;
        }
        Ok(())
    }

    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        self.snapshot_held()?;
        let unavailable = |reason: String| Error::ChangesUnavailable {
            from: from.position,
            earliest: self.floor,
            reason,
        };
        let Some(floor) = self.floor else {
            return Err(unavailable(
                "change tracking is not installed (run `tidemark track`)".into(),
            ));
        };
        if from.store_id != self.checkpoint.store_id {
            return Err(unavailable(format!(
                "the checkpoint belongs to store {}, this is {}",
                from.store_id, self.checkpoint.store_id
            )));
        }
        if from.position < floor {
            let why = tracking::floor_reason(&self.conn, floor)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    "the change log was trimmed or had a capture gap after that position".into()
                });
            return Err(unavailable(why));
        }
        if from.position > self.checkpoint.position {
            return Err(unavailable(format!(
                "the store is at position {}, behind the checkpoint",
                self.checkpoint.position
            )));
        }
        let width =
            tracking::log_key_width(&self.conn).map_err(self.err("reading the change log"))?;
        let log = LogRange {
            width,
            from: from.position,
            to: self.checkpoint.position,
            batch_size,
        };
        // The changes are read on a thread of their own (SQLite's row lookups are most of an
        // incremental's reading) and handed to `visit` here, which builds the records while
        // the next ones are read. A few batches in flight bound the memory.
        let store = self.store.as_str();
        // `&mut`: a connection may move to another thread but not be shared with one.
        let (conn, tables) = (&mut self.conn, &self.tables);
        let (path, readonly_shm) = (self.path.as_path(), self.readonly_shm);
        let (checkpoint, schema_version) = (&self.checkpoint, self.schema_version);
        // WAL only: in a rollback journal mode the view's lock already keeps writers out, and a
        // second reader could meet a writer's PENDING lock.
        let wal = !self.blocks_writers;
        let second =
            move || wal.then(|| second_reader(path, readonly_shm, checkpoint, schema_version))?;
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Change>>(4);
            let reader = std::thread::Builder::new()
                .name("sqlite-changes".into())
                .spawn_scoped(s, move || read_log(conn, tables, store, &log, &tx, &second))
                .map_err(|e| Error::io("start a thread", "sqlite-changes", e))?;
            let mut visited = Ok(());
            for batch in &rx {
                visited = visit(batch);
                if visited.is_err() {
                    break;
                }
            }
            drop(rx);
            let read = reader.join().unwrap_or_else(|_| {
                Err(Error::store(
                    store,
                    "reading the change log: the reader panicked",
                ))
            });
            visited.and(read)
        })
    }

    fn count(&mut self, collection: &CollectionName) -> Result<Option<u64>> {
        self.snapshot_held()?;
        let table = self.table(collection)?;
        let n: i64 = self
            .conn
            .query_row(
                &format!("SELECT count(*) FROM {}", quote_ident(&table.name)),
                [],
                |r| r.get(0),
            )
            .map_err(self.err("counting rows"))?;
        Ok(Some(n as u64))
    }

    fn deletions_may_go_unseen(&mut self, collection: &CollectionName) -> Result<bool> {
        // A REPLACE deletes the row it conflicts with, firing no delete trigger. That row has
        // another key when the conflict is on a unique index other than the key's own, or on
        // a key column whose collation is not BINARY (in a NOCASE key, 'ALICE' replaces
        // 'alice'); otherwise its key is the one the insert trigger logs. Tables with neither,
        // the common case, skip the count: a scan of the whole table.
        let table = self.table(collection)?;
        let n: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM pragma_index_list(?1) \
                         WHERE \"unique\" AND origin <> 'pk') \
                      + (SELECT count(*) FROM pragma_index_list(?1) AS l, \
                         pragma_index_xinfo(l.name) AS x \
                         WHERE l.origin = 'pk' AND x.key AND x.cid >= 0 \
                         AND x.coll <> 'BINARY')",
                [&table.name],
                |r| r.get(0),
            )
            .map_err(self.err("listing unique indexes"))?;
        Ok(n > 0)
    }
}
