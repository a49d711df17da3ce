//! The store-independent data model: collections, keys, values, records and changes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which kind of store a backup came from or a backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite (tables are collections, primary keys are keys).
    Sqlite,
    /// RocksDB (column families are collections).
    Rocksdb,
    /// sled (trees are collections).
    Sled,
    /// The in-memory reference backend of the conformance suite (`conformance_tests::memory`):
    /// a store for tests, never named in a URL.
    Memory,
}

impl StoreKind {
    /// The lowercase name used in URLs (`sqlite:PATH`) and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Rocksdb => "rocksdb",
            StoreKind::Sled => "sled",
            StoreKind::Memory => "memory",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sqlite" => Ok(StoreKind::Sqlite),
            "rocksdb" => Ok(StoreKind::Rocksdb),
            "sled" => Ok(StoreKind::Sled),
            other => Err(format!(
                "unknown store kind `{other}` (expected sqlite, rocksdb or sled)"
            )),
        }
    }
}

/// The name of a collection: a SQLite table, a RocksDB column family or a sled tree.
///
/// The name is shared, not copied, when the name is cloned: a change reader hands one on with
/// every change it reads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollectionName(pub std::sync::Arc<str>);

impl Serialize for CollectionName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CollectionName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(CollectionName::new)
    }
}

impl CollectionName {
    /// Wraps a name.
    pub fn new(name: impl Into<String>) -> Self {
        CollectionName(name.into().into())
    }
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The prefix of an escaped collection name (`docs/FORMAT.md` §2.1).
pub const NAME_ESCAPE: &str = "~tm~";

impl CollectionName {
    /// The collection name of a store's raw name `bytes` (a sled tree's name may be any bytes):
    /// the bytes as text when they are UTF-8 and do not start with `NAME_ESCAPE`, otherwise
    /// `~tm~` followed by the bytes in lowercase hex. [`CollectionName::to_bytes`] inverts it.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) if !s.starts_with(NAME_ESCAPE) => CollectionName(s.into()),
            _ => CollectionName::new(format!("{NAME_ESCAPE}{}", hex(bytes))),
        }
    }

    /// The raw name bytes this collection name stands for (inverse of
    /// [`CollectionName::from_bytes`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0
            .strip_prefix(NAME_ESCAPE)
            .and_then(unhex)
            .unwrap_or_else(|| self.0.as_bytes().to_vec())
    }

    /// The name a store whose names must satisfy `can_hold` gives this collection: its raw
    /// bytes as text where the store can hold them (and they do not start with
    /// `NAME_ESCAPE`), else `~tm~` and the bytes in hex, which every store can hold.
    /// [`CollectionName::from_stored`] maps it back.
    pub fn stored_as(&self, can_hold: impl Fn(&str) -> bool) -> String {
        let bytes = self.to_bytes();
        match std::str::from_utf8(&bytes) {
            Ok(s) if !s.starts_with(NAME_ESCAPE) && can_hold(s) => s.to_string(),
            _ => format!("{NAME_ESCAPE}{}", hex(&bytes)),
        }
    }

    /// The collection a store's name `stored` (as written by [`CollectionName::stored_as`])
    /// stands for.
    pub fn from_stored(stored: &str) -> Self {
        match stored.strip_prefix(NAME_ESCAPE).and_then(unhex) {
            Some(bytes) => CollectionName::from_bytes(&bytes),
            None => CollectionName(stored.into()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record's key: arbitrary bytes, unique within its collection.
///
/// Key-value stores use their keys as they are. The SQLite backend encodes a row's primary key
/// as described in `docs/FORMAT.md` (a lone integer key is its decimal digits).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<u8>);

impl Key {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", crate::docid::display_key(&self.0))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::docid::display_key(&self.0))
    }
}

/// One typed SQL value. Types are kept exactly: an INTEGER never becomes a REAL, TEXT keeps its
/// bytes even when they are not valid UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// An IEEE-754 double, kept bit-exact.
    Real(f64),
    /// Text, as the bytes the store holds (normally UTF-8).
    Text(Vec<u8>),
    /// A binary blob; stored as an attachment in the folder format.
    Blob(Vec<u8>),
}

impl Field {
    /// Bit-exact equality (unlike `==`, distinguishes `0.0` from `-0.0`).
    pub fn same_as(&self, other: &Field) -> bool {
        match (self, other) {
            (Field::Real(a), Field::Real(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }
}

/// A row of a SQL table: named columns in table order, plus the rowid where the table has a
/// hidden one that the primary key does not carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// Columns in the table's order.
    pub columns: Vec<(String, Field)>,
    /// The hidden rowid of a rowid table whose primary key is not an INTEGER PRIMARY KEY.
    pub rowid: Option<i64>,
}

/// A record's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Opaque bytes (key-value stores). JSON stays JSON in a backup; anything else is kept exactly.
    Bytes(Vec<u8>),
    /// A typed row (SQL stores).
    Row(Row),
}

impl Value {
    /// Approximate size in bytes of the value's payload, for summaries.
    pub fn payload_len(&self) -> u64 {
        match self {
            Value::Bytes(b) => b.len() as u64,
            Value::Row(row) => row
                .columns
                .iter()
                .map(|(name, f)| {
                    name.len() as u64
                        + match f {
                            Field::Null => 0,
                            Field::Integer(_) | Field::Real(_) => 8,
                            Field::Text(t) | Field::Blob(t) => t.len() as u64,
                        }
                })
                .sum(),
        }
    }
}

/// One key with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The record's key.
    pub key: Key,
    /// The record's value.
    pub value: Value,
}

/// What happened to a key.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    /// The key now holds this value.
    Put(Value),
    /// The key was removed.
    Delete,
}

/// One change in a store's stream of committed changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The position of the change in the store's change stream (strictly increasing).
    pub position: u64,
    /// The collection the key belongs to.
    pub collection: CollectionName,
    /// The key that changed.
    pub key: Key,
    /// The key's new state.
    pub op: ChangeOp,
}

/// A collection as a backend describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// The collection's name.
    pub name: CollectionName,
    /// Store-specific schema (e.g. SQLite's `CREATE TABLE` and column list), opaque to the
    /// engine and replayed only by a backend of the same kind.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub schema: serde_json::Value,
}

impl CollectionInfo {
    /// A collection with no schema (key-value stores).
    pub fn plain(name: impl Into<String>) -> Self {
        CollectionInfo {
            name: CollectionName::new(name),
            schema: serde_json::Value::Null,
        }
    }
}

/// Store-level schema: everything that is not a collection's rows (SQLite indexes, views,
/// triggers, pragmas). Opaque to the engine.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StoreSchema(pub serde_json::Value);

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_round_trip_through_stores_that_cannot_hold_them() {
        let no_nul = |s: &str| !s.contains('\0');
        let sqlite = |s: &str| !s.contains('\0') && !s.to_ascii_lowercase().starts_with("sqlite_");
        for raw in [
            &b"users"[..],
            &[0, 255, 1],
            b"a\0b",
            b"sqlite_stat1",
            b"~tm~00",
            b"",
            "caf\u{e9}".as_bytes(),
        ] {
            let name = CollectionName::from_bytes(raw);
            assert_eq!(name.to_bytes(), raw, "{name}");
            for rule in [&no_nul as &dyn Fn(&str) -> bool, &sqlite] {
                let stored = name.stored_as(rule);
                assert!(rule(&stored) && !stored.contains('\0'), "{stored:?}");
                assert_eq!(CollectionName::from_stored(&stored), name);
            }
        }
        assert_eq!(CollectionName::from_bytes(b"users").as_str(), "users");
        assert_eq!(
            CollectionName::from_bytes(&[0, 255, 1]).as_str(),
            "~tm~00ff01"
        );
        assert_eq!(
            CollectionName::from_bytes(b"a\0b").stored_as(|s| !s.contains('\0')),
            "~tm~610062"
        );
    }
}
