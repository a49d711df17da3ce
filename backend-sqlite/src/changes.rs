//! An incremental's changes: the change log's range read (in memory, or grouped by SQLite for a
//! long log), each key's last change looked up in the view's snapshot, shared between two
//! connections for a large incremental.

use crate::table::{encode_key, field, SqlField, Table};
use crate::tracking;
use crate::view::{has_null_key, read_row};
use backup_core::{Change, ChangeOp, CollectionName, Error, Field, Record, Result};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};

/// The part of the change log an incremental reads: sequence numbers after `from` up to `to`,
/// in a log with `width` key columns, handed on in batches of at most `batch_size`.
pub(crate) struct LogRange {
    pub(crate) width: usize,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) batch_size: usize,
}

/// Reads the changes of `log`: each logged key at its last log row, looked up in the
/// connection's read transaction.
pub(crate) fn read_log(
    conn: &Connection,
    tables: &[Table],
    store: &str,
    log: &LogRange,
    tx: &std::sync::mpsc::SyncSender<Vec<Change>>,
    second: &(dyn Fn() -> Option<Connection> + Sync),
) -> Result<()> {
    // The receiver is gone only once the visitor failed, whose error is kept.
    let stopped = || Error::store(store, "reading the change log: stopped");
    let mut send_one = |batch| tx.send(batch).map_err(|_| stopped());
    let send = &mut send_one;
    let err = |e: rusqlite::Error| Error::store_cause(store, "reading the change log", e);
    let ks: Vec<String> = (0..log.width).map(|i| format!("k{i}")).collect();
    let ks = ks.join(", ");
    let range = [log.from as i64, log.to as i64];
    let mut emit = ChangeEmitter::new(conn, log, tables, send);
    // Sequence numbers are handed out one after another and never reused (AUTOINCREMENT, in
    // the writers' transactions), and only the trim deletes log rows, all at or before the
    // floor: so the range holds exactly this many rows. Fewer means that something else deleted
    // some (a script clearing every table, a user shrinking a log that grew), and the changes
    // they logged are lost: checked before any change is handed on.
    let expected = log.to - log.from;
    let incomplete = |held: u64| Error::ChangesUnavailable {
        from: log.from,
        earliest: None,
        reason: format!(
            "the change log holds {held} of the {expected} entries after it, up to {}: \
             something other than tidemark deleted rows of {}, and the changes they logged \
             are lost",
            log.to,
            tracking::CHANGES
        ),
    };
    if expected <= DEDUPLICATE_IN_MEMORY {
        // Read in log order (a rowid range, no sort) and keep each key's last row: SQLite's
        // GROUP BY and ORDER BY sorted twice through temporary b-trees, which was a third of
        // the time of a 1% incremental. Rows of no table (capture-gap markers) are counted.
        let sql = format!(
            "SELECT seq, tbl, {ks} FROM {} WHERE seq > ?1 AND seq <= ?2",
            tracking::CHANGES
        );
        // Many lookups are shared with a second connection on a thread of its own, when it can
        // be opened at the same snapshot ([`second_reader`]). It is opened at once, and reads
        // the later half of the log while this connection reads the first: one connection read
        // the whole log while the other core waited (a tenth of a 1% incremental).
        let share = expected >= SHARED_LOOKUPS as u64;
        let mid = if share {
            log.from + expected / 2
        } else {
            log.to
        };
        let sql = sql.as_str();
        return std::thread::scope(|s| {
            // The helper's half of the log, or nothing (the sender dropped) when it has no
            // second connection; then the runs of lookups it shares.
            let (half_tx, half_rx) = std::sync::mpsc::sync_channel::<Result<Logged>>(1);
            let (runs_tx, runs_rx) = std::sync::mpsc::sync_channel::<Arc<LookupRuns>>(1);
            let tx2 = tx.clone();
            let helper = share
                .then(|| {
                    std::thread::Builder::new()
                        .name("sqlite-lookups".into())
                        .spawn_scoped(s, move || {
                            let Some(conn2) = second() else {
                                return Ok(());
                            };
                            let mut send2 = |batch| tx2.send(batch).map_err(|_| stopped());
                            let mut emit2 = ChangeEmitter::new(&conn2, log, tables, &mut send2);
                            let half =
                                read_logged(&conn2, sql, (mid, log.to), &mut emit2).map_err(err);
                            let read = half.is_ok();
                            // This reader's error is the main reader's to report.
                            if half_tx.send(half).is_err() || !read {
                                return Ok(());
                            }
                            let Ok(runs) = runs_rx.recv() else {
                                return Ok(()); // no lookups shared
                            };
                            while let Some(run) = runs.next() {
                                if let Err(e) = emit_all(&mut emit2, run, err) {
                                    runs.stop();
                                    return Err(e);
                                }
                            }
                            emit2.finish()
                        })
                })
                .transpose()
                .map_err(|e| Error::io("start a thread", "sqlite-lookups", e))?;
            let join = |helper: Option<std::thread::ScopedJoinHandle<'_, Result<()>>>| {
                helper.map_or(Ok(()), |h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::store(
                            store,
                            "reading the change log: a reader panicked",
                        ))
                    })
                })
            };
            let (mut logged, mut held) =
                read_logged(conn, sql, (log.from, mid), &mut emit).map_err(err)?;
            let mut helped = false;
            if mid < log.to {
                let (later, n) = match half_rx.recv() {
                    Ok(half) => {
                        helped = true;
                        half?
                    }
                    // No second connection: this one reads the rest.
                    Err(_) => read_logged(conn, sql, (mid, log.to), &mut emit).map_err(err)?,
                };
                logged.extend(later);
                held += n;
            }
            if held != expected {
                return Err(incomplete(held));
            }
            let kept = last_of_each_key(logged);
            // The keys are dealt out in runs of [`LOOKUP_RUN`] (each a range of a table: the
            // same locality) to whichever connection is free: halves fixed in advance finished
            // up to 3 ms apart, the engine and the compression taking turns on the cores with
            // one reader or the other.
            if helped && kept.len() >= SHARED_LOOKUPS {
                let runs = Arc::new(LookupRuns::new(kept));
                // The helper waits for them (it has sent its half, and stops only on error).
                let _ = runs_tx.send(Arc::clone(&runs));
                let mut mine = Ok(());
                while let Some(run) = runs.next() {
                    mine = emit_all(&mut emit, run, err);
                    if mine.is_err() {
                        // The other reader stops at the next run.
                        runs.stop();
                        break;
                    }
                }
                let theirs = join(helper);
                mine.and(theirs)?;
            } else {
                drop(runs_tx);
                let mine = emit_all(&mut emit, kept, err);
                mine.and(join(helper))?;
            }
            emit.finish()
        });
    } else {
        let held: i64 = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE seq > ?1 AND seq <= ?2",
                    tracking::CHANGES
                ),
                range,
                |r| r.get(0),
            )
            .map_err(err)?;
        if held as u64 != expected {
            return Err(incomplete(held as u64));
        }
        // A long log is grouped by SQLite, whose sorter spills to disk. The groups come in
        // key order (each key once: the order is free), which is also the order of the
        // lookups that read the table's pages fastest; no second sort by position.
        let sql = format!(
            "SELECT max(seq) AS s, tbl, {ks} FROM {} WHERE seq > ?1 AND seq <= ?2 \
             AND tbl IS NOT NULL GROUP BY tbl, {ks}",
            tracking::CHANGES
        );
        let mut stmt = conn.prepare(&sql).map_err(err)?;
        let mut rows = stmt.query(range).map_err(err)?;
        while let Some(r) = rows.next().map_err(err)? {
            if let Some((position, ti, key_fields)) = emit.logged(r).map_err(err)? {
                emit.change(position, ti, key_fields).map_err(err)??;
            }
        }
    }
    emit.finish()
}

/// Log rows as (position, table, key), in log order, and how many rows were read (rows of no
/// table included).
type Logged = (Vec<(i64, usize, KeyFields)>, u64);

/// Reads the log rows of `range` (sequence numbers after the first up to the second) with
/// `sql` (a range query of the log) through `emit`'s table names.
fn read_logged(
    conn: &Connection,
    sql: &str,
    (after, upto): (u64, u64),
    emit: &mut ChangeEmitter<'_, '_>,
) -> rusqlite::Result<Logged> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([after as i64, upto as i64])?;
    // Sized once (at most 2^16 rows): grown by doubling, it was copied and faulted in anew.
    let mut logged = Vec::with_capacity(upto.saturating_sub(after) as usize);
    let mut held = 0u64;
    while let Some(r) = rows.next()? {
        held += 1;
        logged.extend(emit.logged(r)?);
    }
    Ok((logged, held))
}

/// Each key of `logged` (in log order) once, at its last row, in the order its lookups read
/// fastest.
fn last_of_each_key(logged: Vec<(i64, usize, KeyFields)>) -> Vec<(i64, usize, KeyFields)> {
    // A key's last row is the one kept; keys are told apart as the backup stores them
    // (SQLite's GROUP BY would also merge an integer with an equal real, which then gives
    // the same row twice: the later line of a key supersedes the earlier).
    // foldhash, not SipHash: the keys are the store's own, and the set's inserts were 4% of
    // the reader's time.
    let mut seen = std::collections::HashSet::with_capacity_and_hasher(
        logged.len(),
        foldhash::fast::RandomState::default(),
    );
    let mut last = vec![false; logged.len()];
    for (i, (_, ti, key_fields)) in logged.iter().enumerate().rev() {
        last[i] = seen.insert(SeenKey::of(*ti, key_fields));
    }
    drop(seen);
    let mut kept: Vec<_> = logged
        .into_iter()
        .zip(last)
        .filter_map(|(logged, last)| last.then_some(logged))
        .collect();
    // Each key now comes once, so the order is free (the trait's contract): looked up by
    // table and, for integer keys, in key order, which is the order of the table's pages,
    // the lookups read the same leaf page one after another instead of jumping across
    // the table (10,000 lookups in 1M rows: 16 ms instead of 20). Other keys keep the
    // log's order.
    kept.sort_unstable_by_key(|(position, ti, key_fields)| match &key_fields[..] {
        [Field::Integer(i)] => (*ti, false, *i),
        _ => (*ti, true, *position),
    });
    kept
}

/// Looks up and hands on each of `kept` (position, table, key) through `emit`.
fn emit_all(
    emit: &mut ChangeEmitter<'_, '_>,
    kept: Vec<(i64, usize, KeyFields)>,
    err: impl Fn(rusqlite::Error) -> Error,
) -> Result<()> {
    for (position, ti, key_fields) in kept {
        emit.change(position, ti, key_fields).map_err(&err)??;
    }
    Ok(())
}

/// Keys an incremental's two readers look up in turn: a run is taken by whichever is free.
const LOOKUP_RUN: usize = 256;

/// An incremental's kept keys (in lookup order) cut into runs of [`LOOKUP_RUN`], handed out
/// one at a time to the readers that share the lookups.
struct LookupRuns(Mutex<std::vec::IntoIter<Vec<(i64, usize, KeyFields)>>>);

impl LookupRuns {
    fn new(kept: Vec<(i64, usize, KeyFields)>) -> Self {
        let mut keys = kept.into_iter();
        let runs: Vec<Vec<_>> = std::iter::from_fn(|| {
            let run: Vec<_> = keys.by_ref().take(LOOKUP_RUN).collect();
            (!run.is_empty()).then_some(run)
        })
        .collect();
        LookupRuns(Mutex::new(runs.into_iter()))
    }

    /// The next run, if any is left.
    fn next(&self) -> Option<Vec<(i64, usize, KeyFields)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).next()
    }

    /// Hands out no more runs (a reader failed: its error ends the reading).
    fn stop(&self) {
        let mut runs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *runs = Vec::new().into_iter();
    }
}

/// Changes at which an incremental's row lookups are shared between two connections (about
/// 1.6 µs a lookup against about half a millisecond to open the second connection).
const SHARED_LOOKUPS: usize = 2048;

/// A logged key's fields: most keys have one, kept without an allocation of its own.
pub(crate) enum KeyFields {
    One([Field; 1]),
    Many(Vec<Field>),
}

impl KeyFields {
    /// The `n` key values of result row `r`, value `i` in its column `column(i)`.
    pub(crate) fn read(
        r: &rusqlite::Row<'_>,
        n: usize,
        column: impl Fn(usize) -> usize,
    ) -> rusqlite::Result<Self> {
        if n == 1 {
            return Ok(KeyFields::One([field(r.get_ref(column(0))?)]));
        }
        (0..n)
            .map(|i| r.get_ref(column(i)).map(field))
            .collect::<rusqlite::Result<_>>()
            .map(KeyFields::Many)
    }
}

impl std::ops::Deref for KeyFields {
    type Target = [Field];
    fn deref(&self) -> &[Field] {
        match self {
            KeyFields::One(f) => f,
            KeyFields::Many(v) => v,
        }
    }
}

/// A logged key as the in-memory reduction tells keys apart: by table and by the bytes the
/// backup stores the key as ([`encode_key`]), where a lone integer stands for its decimal digits
/// without formatting them (no other key encodes to a canonical integer's digits: a text that
/// reads as one is stored as a JSON array).
#[derive(PartialEq, Eq, Hash)]
enum SeenKey {
    Integer(usize, i64),
    Encoded(usize, Vec<u8>),
}

impl SeenKey {
    fn of(table: usize, key_fields: &[Field]) -> Self {
        match key_fields {
            [Field::Integer(i)] => SeenKey::Integer(table, *i),
            _ => SeenKey::Encoded(table, encode_key(key_fields).0),
        }
    }
}

/// Log ranges up to this many sequence numbers are reduced to each key's last change in
/// memory (about 100 bytes a row); longer ones by SQLite's GROUP BY.
const DEDUPLICATE_IN_MEMORY: u64 = 1 << 16;

/// Turns logged keys into changes: looks each up in the view's read transaction (a row is a
/// put of its current value, no row a deletion) and hands them on in batches.
struct ChangeEmitter<'c, 'v> {
    conn: &'c Connection,
    /// The position the changes are read after.
    from: u64,
    tables: &'c [Table],
    /// Per table, made on its first change: the row lookup by key (prepared once, not
    /// formatted and looked up in the statement cache for every change), its key columns'
    /// places, and the collection's name.
    lookups: Vec<Option<(rusqlite::CachedStatement<'c>, Vec<usize>, CollectionName)>>,
    batch: Vec<Change>,
    batch_size: usize,
    visit: &'v mut dyn FnMut(Vec<Change>) -> Result<()>,
    /// The table of the last log row ([`ChangeEmitter::table_named`]).
    last_table: usize,
}

impl<'c, 'v> ChangeEmitter<'c, 'v> {
    /// An emitter of `log`'s changes, looked up through `conn`, handed to `visit`.
    fn new(
        conn: &'c Connection,
        log: &LogRange,
        tables: &'c [Table],
        visit: &'v mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Self {
        ChangeEmitter {
            conn,
            from: log.from,
            tables,
            lookups: (0..tables.len()).map(|_| None).collect(),
            batch: Vec::with_capacity(log.batch_size.min(4096)),
            batch_size: log.batch_size,
            visit,
            last_table: 0,
        }
    }

    /// A log row (`seq`, `tbl`, then the key columns) as its position, its table and its key;
    /// `None` for a table dropped since (the engine drops the collection).
    fn logged(
        &mut self,
        r: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<Option<(i64, usize, KeyFields)>> {
        let rusqlite::types::ValueRef::Text(tbl) = r.get_ref(1)? else {
            return Ok(None);
        };
        let Some(ti) = self.table_named(tbl) else {
            return Ok(None);
        };
        let key_fields = KeyFields::read(r, self.tables[ti].key_len(), |i| 2 + i)?;
        Ok(Some((r.get(0)?, ti, key_fields)))
    }

    /// The table named `name` (as the log stores it), if the view has it. Called for every log
    /// row: the last table found is tried first, and a name is told apart by its length and
    /// last byte before its bytes are compared (a call of `memcmp` per table and row, with a
    /// UTF-8 check, was 7% of the reader's time).
    fn table_named(&mut self, name: &[u8]) -> Option<usize> {
        let is = |t: &Table| {
            let n = t.name.as_bytes();
            n.len() == name.len() && n.last() == name.last() && n == name
        };
        if self.tables.get(self.last_table).is_some_and(is) {
            return Some(self.last_table);
        }
        let ti = self.tables.iter().position(is)?;
        self.last_table = ti;
        Some(ti)
    }

    /// The change of table `ti`'s key `key_fields`, logged last at `position`. The outer error
    /// is SQLite's, the inner the visitor's.
    fn change(
        &mut self,
        position: i64,
        ti: usize,
        key_fields: KeyFields,
    ) -> rusqlite::Result<Result<()>> {
        let table = &self.tables[ti];
        // A logged NULL key does not say which of the rows with that key changed.
        if has_null_key(table, &key_fields) {
            return Ok(Err(Error::ChangesUnavailable {
                from: self.from,
                earliest: None,
                reason: format!(
                    "a row of table `{}` whose primary key holds a NULL changed, and the change \
                     log cannot tell which of the rows with that key it was",
                    table.name
                ),
            }));
        }
        let (get, positions, collection) = match &mut self.lookups[ti] {
            Some(l) => l,
            slot => {
                // The row whose key is exactly the logged one ([`lookup_sql`]). Matched by the
                // column's comparison alone, the logged old
                // key of a row whose key changed case found the row under its new key, so the
                // old key was never deleted: the backup held the row twice, and its restore
                // failed on the primary key.
                let get = self.conn.prepare_cached(&lookup_sql(table))?;
                let name = CollectionName::from_stored(&table.name);
                slot.insert((get, table.key_positions(), name))
            }
        };
        let (key, op) = match row_by_key(get, table, positions, &key_fields)? {
            Some(rec) => (rec.key, ChangeOp::Put(rec.value)),
            None => (encode_key(&key_fields), ChangeOp::Delete),
        };
        self.batch.push(Change {
            position: position as u64,
            collection: collection.clone(),
            key,
            op,
        });
        if self.batch.len() >= self.batch_size {
            return Ok((self.visit)(std::mem::take(&mut self.batch)));
        }
        Ok(Ok(()))
    }

    /// Hands on the last batch.
    fn finish(mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        (self.visit)(std::mem::take(&mut self.batch))
    }
}

/// The row of `table` whose key is exactly the one bound (`?1`, `?2`, … in key order): the
/// column's own comparison (which its index answers) and then the bytes and the type, since a
/// key column with another collation (NOCASE) or no type makes other keys equal ('Alice' and
/// 'alice', 1 and 1.0).
pub(crate) fn lookup_sql(table: &Table) -> String {
    let cond: Vec<String> = table
        .key_exprs()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n = i + 1;
            format!("{e} IS ?{n} AND {e} IS ?{n} COLLATE BINARY AND typeof({e}) = typeof(?{n})")
        })
        .collect();
    format!("{} WHERE {}", table.select_sql(), cond.join(" AND "))
}

/// The row of `table` whose key values are `fields`, through `get` (prepared from
/// [`lookup_sql`], `positions` its key columns' places), as a record; `None` if there is none.
pub(crate) fn row_by_key(
    get: &mut rusqlite::CachedStatement<'_>,
    table: &Table,
    positions: &[usize],
    fields: &[Field],
) -> rusqlite::Result<Option<Record>> {
    for (i, f) in fields.iter().enumerate() {
        get.raw_bind_parameter(i + 1, SqlField(f))?;
    }
    let mut found = get.raw_query();
    found
        .next()?
        .map(|row| read_row(table, positions, row))
        .transpose()
}
