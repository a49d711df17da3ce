//! What the backend knows about a user table: columns, key, rowid, and how keys are encoded.

use backup_core::field_to_json;
use backup_core::{Error, Field, Key, Result};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::json;

/// Prefix of every object the backend adds to a database (tables and triggers).
pub const TRACKING_PREFIX: &str = "_tidemark_";

/// The schema field of a table keyed by its rowid that holds the database's schema version
/// when its rows were read ([`Table::schema_json`]).
pub const ROWIDS_AS_OF: &str = "rowids_as_of_schema_version";

/// How a table's records are keyed.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The table's name.
    pub name: String,
    /// Its `CREATE TABLE` statement, exactly as `sqlite_schema` holds it.
    pub sql: String,
    /// Stored (non-generated) columns, in table order.
    pub columns: Vec<String>,
    /// The primary-key columns in key order; empty for a rowid table without a primary key.
    pub key: Vec<String>,
    /// Whether rows carry a hidden rowid the key does not hold (rowid tables without an
    /// INTEGER PRIMARY KEY): it is backed up so a restore keeps the rows' order.
    pub hidden_rowid: bool,
    /// The name that reaches the table's rowid: `rowid`, or `oid` or `_rowid_` where a column
    /// of that name hides it ([`rowid_alias`]).
    pub rowid: &'static str,
    /// The name that reaches the rowid of a rowid table, by which a scan can go on where it
    /// stopped; `None` for a WITHOUT ROWID table, or one whose columns hide all three names.
    pub scan_rowid: Option<&'static str>,
}

/// SQLite's three names for a rowid table's rowid. A column of one of these names hides it
/// under that name: `SELECT rowid` then reads the column.
const ROWID_NAMES: [&str; 3] = ["rowid", "oid", "_rowid_"];

/// The first of SQLite's names for the rowid that no column of `columns` (all of them,
/// generated ones included) takes, if any.
pub fn rowid_alias<'a>(columns: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'static str> {
    ROWID_NAMES.into_iter().find(|alias| {
        !columns
            .clone()
            .into_iter()
            .any(|c| c.eq_ignore_ascii_case(alias))
    })
}

impl Table {
    /// The key columns as SQL expressions over the table (its rowid's name when there is no
    /// primary key).
    pub fn key_exprs(&self) -> Vec<String> {
        if self.key.is_empty() {
            vec![self.rowid.to_string()]
        } else {
            self.key.iter().map(|c| quote_ident(c)).collect()
        }
    }

    /// The schema recorded in a backup's manifest, read when the database's `PRAGMA
    /// schema_version` was `schema_version`. A table keyed by its rowid (no primary key) also
    /// records that version ([`ROWIDS_AS_OF`]): a `VACUUM` may renumber its rowids, firing no
    /// trigger, and what it leaves is a new schema version, so a new value means that the change
    /// log may not match the backup's keys any more.
    pub fn schema_json(&self, schema_version: i64) -> serde_json::Value {
        let mut schema = json!({
            "sql": self.sql,
            "columns": self.columns,
            "key": self.key,
            "hidden_rowid": self.hidden_rowid,
        });
        if self.key.is_empty() {
            schema[ROWIDS_AS_OF] = json!(schema_version);
        }
        schema
    }

    /// The columns a scan in steps goes on by: the rowid where a name reaches it (the
    /// table's storage order), else the primary key; none for a rowid table with neither.
    pub fn step_columns(&self) -> Vec<String> {
        match self.scan_rowid {
            Some(rowid) => vec![rowid.to_string()],
            None => self.key.iter().map(|c| quote_ident(c)).collect(),
        }
    }

    /// A step of a scan in steps over `step` ([`Table::step_columns`]): `SELECT [rowid,] cols,
    /// step FROM table [WHERE (step) > (?1, …)] ORDER BY step LIMIT ?n`, the step columns last;
    /// the first step has no WHERE clause and its limit is `?1`.
    pub fn select_step_sql(&self, step: &[String], first: bool) -> String {
        let list = step.join(", ");
        let after = if first {
            String::new()
        } else {
            let params: Vec<String> = (1..=step.len()).map(|i| format!("?{i}")).collect();
            format!(" WHERE ({list}) > ({})", params.join(", "))
        };
        let limit = if first { 1 } else { step.len() + 1 };
        format!(
            "SELECT {}, {list} FROM {}{after} ORDER BY {list} LIMIT ?{limit}",
            self.select_list(),
            quote_ident(&self.name)
        )
    }

    /// `SELECT [rowid,] cols FROM table` (without a WHERE clause).
    pub fn select_sql(&self) -> String {
        format!(
            "SELECT {} FROM {}",
            self.select_list(),
            quote_ident(&self.name)
        )
    }

    /// The columns [`Table::select_sql`] reads: `[rowid,] cols`.
    fn select_list(&self) -> String {
        let mut cols: Vec<String> = Vec::with_capacity(self.columns.len() + 1);
        if self.hidden_rowid {
            cols.push(self.rowid.into());
        }
        cols.extend(self.columns.iter().map(|c| quote_ident(c)));
        if cols.is_empty() {
            "NULL".to_string()
        } else {
            cols.join(", ")
        }
    }

    /// How many values a key has: its primary-key columns, or the rowid alone.
    pub fn key_len(&self) -> usize {
        self.key.len().max(1)
    }

    /// Index of each key column within `select_sql`'s result columns.
    pub fn key_positions(&self) -> Vec<usize> {
        let offset = usize::from(self.hidden_rowid);
        if self.key.is_empty() {
            return vec![0];
        }
        self.key
            .iter()
            .map(|k| {
                offset
                    + self
                        .columns
                        .iter()
                        .position(|c| c == k)
                        .expect("key columns are columns")
            })
            .collect()
    }
}

/// The virtual tables (FTS, R*Tree, …) of the main schema, with their modules, which backups
/// leave out (as [`user_tables`] does their shadow tables).
pub fn virtual_tables(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT s.name, s.sql FROM sqlite_schema s \
         JOIN pragma_table_list l ON l.name = s.name AND l.schema = 'main' \
         WHERE s.type = 'table' AND l.type = 'virtual' ORDER BY s.rowid",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, sql) = row?;
        // `CREATE VIRTUAL TABLE name USING module(args)`: the word after USING.
        let module = sql
            .as_deref()
            .and_then(|sql| {
                let upper = sql.to_ascii_uppercase();
                let at = upper.find(" USING ")? + " USING ".len();
                let rest = sql[at..].trim_start();
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                Some(rest[..end].to_string())
            })
            .unwrap_or_default();
        out.push((name, module));
    }
    Ok(out)
}

/// Lists the user tables in creation order (not `sqlite_*`, not the backend's own, not virtual
/// tables or their shadow tables).
pub fn user_tables(conn: &Connection, store: &str) -> Result<Vec<Table>> {
    let err = |e: rusqlite::Error| Error::store_cause(store, "reading the schema", e);
    let mut stmt = conn
        .prepare(
            "SELECT s.name, s.sql, l.wr FROM sqlite_schema s \
             JOIN pragma_table_list l ON l.name = s.name AND l.schema = 'main' \
             WHERE s.type = 'table' AND l.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND s.name NOT LIKE '\\_tidemark\\_%' ESCAPE '\\' ORDER BY s.rowid",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .map_err(err)?;
    let mut tables = Vec::new();
    for row in rows {
        let (name, sql, without_rowid) = row.map_err(err)?;
        let Some(sql) = sql else { continue };
        tables.push(describe(conn, store, name, sql, without_rowid)?);
    }
    Ok(tables)
}

fn describe(
    conn: &Connection,
    store: &str,
    name: String,
    sql: String,
    without_rowid: bool,
) -> Result<Table> {
    let err = |e: rusqlite::Error| Error::store_cause(store, format!("reading table `{name}`"), e);
    let mut stmt = conn
        .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
        .map_err(err)?;
    let mut columns = Vec::new();
    // Every column's name, generated ones too: each can hide the rowid's names.
    let mut names = Vec::new();
    let mut keyed: Vec<(i64, String, String)> = Vec::new();
    let rows = stmt
        .query_map([&name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(err)?;
    for row in rows {
        let (col, decl, pk, hidden) = row.map_err(err)?;
        names.push(col.clone());
        if hidden != 0 {
            continue; // generated columns are recomputed, never inserted
        }
        if pk > 0 {
            keyed.push((pk, col.clone(), decl));
        }
        columns.push(col);
    }
    keyed.sort();
    // A lone INTEGER primary key is the rowid under another name, except where SQLite keeps an
    // index for it: `id INTEGER PRIMARY KEY DESC` (a quirk SQLite keeps for compatibility) is
    // an ordinary column beside a rowid of its own, which the backup keeps.
    let rowid_alias_key = !without_rowid
        && keyed.len() == 1
        && keyed[0].2.eq_ignore_ascii_case("INTEGER")
        && conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk'",
                [&name],
                |r| r.get::<_, i64>(0),
            )
            .map_err(err)?
            == 0;
    let key: Vec<String> = keyed.into_iter().map(|(_, c, _)| c).collect();
    let alias = rowid_alias(names.iter().map(String::as_str));
    let mut hidden_rowid = !without_rowid && !rowid_alias_key;
    if hidden_rowid && alias.is_none() {
        if key.is_empty() {
            // Keyed by a rowid no name reaches: its rows cannot be told apart.
            return Err(Error::store(
                store,
                format!(
                    "table `{name}` has no primary key and columns named rowid, oid and \
                     _rowid_, which hide its rowid: tidemark keys such a table's rows by the \
                     rowid and cannot read it (rename one of those columns)"
                ),
            ));
        }
        // Its primary key keys it; the rowid only kept the rows' order.
        hidden_rowid = false;
    }
    Ok(Table {
        hidden_rowid,
        rowid: alias.unwrap_or("rowid"),
        scan_rowid: alias.filter(|_| !without_rowid),
        name,
        sql,
        columns,
        key,
    })
}

/// Reads one SQL value as a [`Field`].
#[inline]
pub fn field(v: ValueRef<'_>) -> Field {
    match v {
        ValueRef::Null => Field::Null,
        ValueRef::Integer(i) => Field::Integer(i),
        ValueRef::Real(r) => Field::Real(r),
        ValueRef::Text(t) => Field::Text(t.to_vec()),
        ValueRef::Blob(b) => Field::Blob(b.to_vec()),
    }
}

/// Encodes a primary-key tuple as key bytes: a lone INTEGER is its decimal digits (`42`); a
/// lone TEXT is its text (`SKU-1`) unless that would read as an integer or a JSON array;
/// anything else is the compact JSON array of its typed values (`["42"]`, `[1,"a"]`,
/// `[{"$base64":"AAE="}]`). See `docs/FORMAT.md`.
pub fn encode_key(fields: &[Field]) -> Key {
    match fields {
        [Field::Integer(i)] => return Key(decimal(*i)),
        [Field::Text(t)] if !text_key_is_ambiguous(t) => return Key(t.clone()),
        _ => {}
    }
    let arr: Vec<serde_json::Value> = fields.iter().map(field_to_json).collect();
    Key(serde_json::to_vec(&arr).expect("a JSON array serializes"))
}

/// The decimal digits of `i` (with a `-` if negative), as `i.to_string()` writes them but
/// without the formatting machinery (itoa, which serde_json writes integers with): every row
/// of a table keyed by an integer is keyed so.
fn decimal(i: i64) -> Vec<u8> {
    itoa::Buffer::new().format(i).as_bytes().to_vec()
}

/// Whether a lone TEXT key must be written as a JSON array to stay distinct from the other
/// encodings.
fn text_key_is_ambiguous(t: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(t) else {
        return true;
    };
    s.starts_with('[') || canonical_integer(s).is_some()
}

fn canonical_integer(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().filter(|i| i.to_string() == s)
}

/// Decodes key bytes made by [`encode_key`] back into the tuple.
pub fn decode_key(key: &Key) -> Option<Vec<Field>> {
    let bytes = key.as_bytes();
    if bytes.first() == Some(&b'[') {
        let arr: Vec<serde_json::Value> = serde_json::from_slice(bytes).ok()?;
        return arr
            .iter()
            .map(|v| backup_core::field_from_json(v).ok())
            .collect();
    }
    let s = std::str::from_utf8(bytes).ok()?;
    Some(vec![match canonical_integer(s) {
        Some(i) => Field::Integer(i),
        None => Field::Text(bytes.to_vec()),
    }])
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Binds a [`Field`] as an SQL parameter, bytes for bytes (TEXT need not be UTF-8).
pub struct SqlField<'a>(pub &'a Field);

impl rusqlite::ToSql for SqlField<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(Borrowed(match self.0 {
            Field::Null => ValueRef::Null,
            Field::Integer(i) => ValueRef::Integer(*i),
            Field::Real(r) => ValueRef::Real(*r),
            Field::Text(t) => ValueRef::Text(t),
            Field::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits are `to_string`'s for every magnitude and sign, the extremes included.
    #[test]
    fn decimal_matches_to_string() {
        let mut cases = vec![
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ];
        let mut x: i64 = 1;
        while let Some(next) = x.checked_mul(10) {
            cases.extend([x - 1, x, x + 1, -x, -x - 1, next / 3]);
            x = next;
        }
        for i in cases {
            assert_eq!(decimal(i), i.to_string().into_bytes(), "{i}");
        }
    }

    #[test]
    fn key_encoding_is_readable_and_reversible() {
        let cases: Vec<(Vec<Field>, &str)> = vec![
            (vec![Field::Integer(42)], "42"),
            (vec![Field::Integer(-7)], "-7"),
            (vec![Field::Text(b"SKU-1".to_vec())], "SKU-1"),
            (vec![Field::Text(b"42".to_vec())], "[\"42\"]"),
            (vec![Field::Text(b"042".to_vec())], "042"),
            (vec![Field::Text(b"[x".to_vec())], "[\"[x\"]"),
            (vec![Field::Text(b"".to_vec())], ""),
            (
                vec![Field::Integer(1), Field::Text(b"a".to_vec())],
                "[1,\"a\"]",
            ),
            (vec![Field::Blob(vec![0, 1])], "[{\"$base64\":\"AAE=\"}]"),
            (vec![Field::Real(1.5)], "[1.5]"),
        ];
        for (fields, want) in cases {
            let key = encode_key(&fields);
            assert_eq!(String::from_utf8_lossy(key.as_bytes()), want);
            assert_eq!(decode_key(&key), Some(fields));
        }
    }
}
