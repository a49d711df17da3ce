//! Archive format 2: records packed as JSON lines into a few entries per collection.
//!
//! ```text
//! data/<collection-dir>/000001.jsonl     records, one JSON object per line, cut at ~2 MiB
//! data/<collection-dir>/000002.jsonl
//! values/<collection-dir>/000001-000001.bin   a value of 1 MiB or more, kept apart from its line
//! tidemark/manifest.json                 last entry
//! ```
//!
//! A put is `{"key": …, "value": … | "value_utf8": … | "value_base64": … | "row": {…},
//! "rowid": n, "crc32": n}`; a deletion is `{"key": …, "deleted": true}` (`key_base64` for keys
//! that are not UTF-8). A value of [`APART_BYTES`] or more is kept apart from its line, in
//! value entries of up to [`VALUE_CHUNK`] bytes each, and the line names them
//! (`"value_entries": {…}`, or a column `{"$entries": {…}}`): it is compressed over every core,
//! never base64-encoded, and read back one entry at a time. Within an archive a later line for a
//! key supersedes an earlier one.
//! The manifest lists, per collection, its number of parts and how many of the first ones hold a
//! scan (each key once, puts only). See `docs/FORMAT.md` §3.

use super::chain::{crc_in_name, read_whole, ArchiveRead, ChainStore, RangeReader};
use super::{damaged, ArchiveCollection, ChainItem, MANIFEST_ENTRY};
use crate::backend::RestoreSink;
use crate::document::{field_from_json_owned, field_to_json, record_crc32};
use crate::error::{Error, Result};
use crate::manifest::RunKind;
use crate::model::{CollectionName, Field, Key, Record, Row, Value};
use crate::pipeline::Pipeline;
use crate::restore::{Batch, RestoreOptions, RestoreSummary};
use crate::zipstream::{self, DirEntry, Refused};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The name of a collection's `n`th data entry (from 1).
pub(super) fn part_name(dir: &str, n: u64) -> String {
    format!("data/{dir}/{n:06}.jsonl")
}

/// A value (a key-value record's, or a row's BLOB or TEXT column) of this many bytes or more is
/// kept apart from its line, in value entries.
pub(super) const APART_BYTES: usize = 1 << 20;

/// The size of a value entry; a value's last entry may be shorter.
pub(super) const VALUE_CHUNK: usize = 4 << 20;

/// The name of the `chunk`th entry (from 1) of a collection's value `id` (from 1).
pub(super) fn value_name(dir: &str, id: u64, chunk: u64) -> String {
    format!("values/{dir}/{id:06}-{chunk:06}.bin")
}

/// Where a value kept apart lies: its number in the archive's collection, how many entries
/// hold it, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Stored {
    pub(super) id: u64,
    pub(super) chunks: u64,
    pub(super) bytes: u64,
}

/// Which value of a record is kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// A key-value record's value.
    Value,
    /// A row's column, by its index.
    Column(usize),
}

/// A value of a record kept apart from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Apart {
    pub(super) place: Place,
    pub(super) stored: Stored,
}

/// One line of a data entry.
pub(super) enum Line {
    /// A record (with its CRC32, computed once by the engine).
    Put(Record, u32),
    /// A record (with its CRC32) whose values at `Apart`'s places were moved out into value
    /// entries: those places hold empty values, and the line names the entries instead.
    Apart(Record, u32, Vec<Apart>),
    /// A deletion.
    Delete(Key),
}

fn stored_json(out: &mut Vec<u8>, s: &Stored) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(n.format(s.id).as_bytes());
    out.extend_from_slice(b",\"chunks\":");
    out.extend_from_slice(n.format(s.chunks).as_bytes());
    out.extend_from_slice(b",\"bytes\":");
    out.extend_from_slice(n.format(s.bytes).as_bytes());
    out.push(b'}');
}

/// Appends one line (with its newline) to `out`.
pub(super) fn encode_line(out: &mut Vec<u8>, line: &Line) {
    let key = match line {
        Line::Put(r, _) | Line::Apart(r, _, _) => &r.key,
        Line::Delete(k) => k,
    };
    match std::str::from_utf8(key.as_bytes()) {
        Ok(k) => {
            out.extend_from_slice(b"{\"key\":");
            json_string(out, k);
        }
        Err(_) => {
            out.extend_from_slice(b"{\"key_base64\":\"");
            base64_into(out, key.as_bytes());
            out.push(b'"');
        }
    }
    match line {
        Line::Delete(_) => out.extend_from_slice(b",\"deleted\":true}\n"),
        Line::Put(record, crc) | Line::Apart(record, crc, _) => {
            let apart: &[Apart] = match line {
                Line::Apart(_, _, a) => a,
                _ => &[],
            };
            let apart_at = |place| apart.iter().find(|a| a.place == place).map(|a| &a.stored);
            match &record.value {
                Value::Bytes(bytes) => {
                    if let Some(stored) = apart_at(Place::Value) {
                        out.extend_from_slice(b",\"value_entries\":");
                        stored_json(out, stored);
                    } else if is_exact_json(bytes) {
                        out.extend_from_slice(b",\"value\":");
                        out.extend_from_slice(bytes);
                    } else if let Ok(text) = std::str::from_utf8(bytes) {
                        out.extend_from_slice(b",\"value_utf8\":");
                        json_string(out, text);
                    } else {
                        out.extend_from_slice(b",\"value_base64\":\"");
                        base64_into(out, bytes);
                        out.push(b'"');
                    }
                }
                Value::Row(row) => {
                    out.extend_from_slice(b",\"row\":{");
                    for (i, (name, field)) in row.columns.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        json_string(out, name);
                        out.push(b':');
                        match apart_at(Place::Column(i)) {
                            Some(stored) => {
                                out.extend_from_slice(match field {
                                    Field::Text(_) => b"{\"$text_entries\":",
                                    _ => b"{\"$entries\":",
                                });
                                stored_json(out, stored);
                                out.push(b'}');
                            }
                            None => json_field(out, field),
                        }
                    }
                    out.push(b'}');
                    if let Some(id) = row.rowid {
                        out.extend_from_slice(b",\"rowid\":");
                        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
                    }
                }
            }
            out.extend_from_slice(b",\"crc32\":");
            out.extend_from_slice(itoa::Buffer::new().format(*crc).as_bytes());
            out.extend_from_slice(b"}\n");
        }
    }
}

/// A column's value as [`field_to_json`] gives it, written as serde_json writes that. Text,
/// integers and nulls (nearly every column) are written directly: through a
/// `serde_json::Value`, every text was first copied into a `String` of its own.
pub(super) fn json_field(out: &mut Vec<u8>, field: &Field) {
    match field {
        Field::Null => out.extend_from_slice(b"null"),
        Field::Integer(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Field::Text(t) => match std::str::from_utf8(t) {
            Ok(text) => json_string(out, text),
            Err(_) => {
                let _ = serde_json::to_writer(&mut *out, &field_to_json(field));
            }
        },
        // As serde_json writes `{"$base64": "…"}` (base64 needs no escapes), encoded in place:
        // through a `serde_json::Value`, a BLOB of 100 MB became a 133 MB `String`, then was
        // copied into a line that grew by doubling to 266 MB.
        Field::Blob(b) => {
            out.extend_from_slice(b"{\"$base64\":\"");
            base64_into(out, b);
            out.extend_from_slice(b"\"}");
        }
        Field::Real(_) => {
            let _ = serde_json::to_writer(&mut *out, &field_to_json(field));
        }
    }
}

/// Appends the standard base64 of `bytes` to `out`, encoded in place. A large value gets room
/// for the rest of its line too, so that the closing bytes do not double the buffer.
fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    // A slice holds at most isize::MAX bytes, whose base64 fits in usize (B64.encode relies
    // on the same).
    let len = base64::encoded_len(bytes.len(), true).expect("the base64 of a slice fits in usize");
    let at = out.len();
    if out.capacity() - at < len {
        out.reserve_exact(len + 256);
    }
    out.resize(at + len, 0);
    let written = B64
        .encode_slice(bytes, &mut out[at..])
        .expect("room for the encoded length");
    out.truncate(at + written);
}

/// `s` as a JSON string (serde_json's escapes: a table lookup per byte, which a check of eight
/// bytes at a time did not beat on JSON texts, whose quotes are escaped every few bytes).
pub(super) fn json_string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Whether the bytes are one JSON value that a parser's raw value gives back byte for byte
/// (so that `value` can embed them verbatim) and hold no newline (one line per record).
fn is_exact_json(bytes: &[u8]) -> bool {
    let Some(&first) = bytes.first() else {
        return false;
    };
    if !matches!(
        first,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    ) || bytes.contains(&b'\n')
    {
        return false;
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => raw.get().len() == bytes.len(),
        Err(_) => false,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineJson<'a> {
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    key_base64: Option<Cow<'a, str>>,
    // Not through `Option`'s own reading, which takes `"value":null` for no value: the
    // encoder writes the four bytes `null` as that (a JSON document store's null value).
    #[serde(default, borrow, deserialize_with = "crate::document::present")]
    value: Option<&'a RawValue>,
    #[serde(default, borrow)]
    value_utf8: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    value_base64: Option<Cow<'a, str>>,
    #[serde(default)]
    value_entries: Option<Stored>,
    #[serde(default)]
    row: Option<RowJson>,
    #[serde(default)]
    rowid: Option<i64>,
    #[serde(default)]
    crc32: Option<u32>,
    #[serde(default)]
    deleted: Option<bool>,
}

/// A row's columns as a line holds them, in order, each value already a [`Field`] (or why it
/// is not one, named with its column once the line is read). Read straight from the JSON
/// object: no map and no JSON values in between (a restore reads millions of them).
struct RowJson(Vec<(String, FieldJson)>);

impl<'de> Deserialize<'de> for RowJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Columns;
        impl<'de> serde::de::Visitor<'de> for Columns {
            type Value = RowJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of columns")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RowJson, A::Error> {
                let mut columns: Vec<(String, FieldJson)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(name) = map.next_key::<String>()? {
                    if columns.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "column `{name}` appears twice"
                        )));
                    }
                    let field: FieldJson = map.next_value()?;
                    columns.push((name, field));
                }
                Ok(RowJson(columns))
            }
        }
        d.deserialize_map(Columns)
    }
}

/// One column's value: what [`field_from_json_owned`] makes of it, without building the JSON
/// value first for the common kinds (text, integers, reals, null). A value kept apart
/// (`{"$entries": {…}}`, `{"$text_entries": {…}}`) is an empty BLOB or TEXT and where it lies.
struct FieldJson(std::result::Result<Field, String>, Option<Stored>);

impl From<std::result::Result<Field, String>> for FieldJson {
    fn from(field: std::result::Result<Field, String>) -> Self {
        FieldJson(field, None)
    }
}

/// A JSON string, borrowed from the line when it has no escapes (base64 never has).
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visit)
    }
}

impl<'de> Deserialize<'de> for FieldJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::value::SeqAccessDeserializer;
        struct Value;
        impl<'de> serde::de::Visitor<'de> for Value {
            type Value = FieldJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a column value")
            }
            fn visit_unit<E>(self) -> std::result::Result<FieldJson, E> {
                Ok(Ok(Field::Null).into())
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<FieldJson, E> {
                Ok(Ok(Field::Integer(v)).into())
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<FieldJson, E> {
                Ok(i64::try_from(v)
                    .map(Field::Integer)
                    .map_err(|_| format!("integer {v} is out of range"))
                    .into())
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<FieldJson, E> {
                Ok(Ok(Field::Real(v)).into())
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<FieldJson, E> {
                Ok(Ok(Field::Text(v.as_bytes().to_vec())).into())
            }
            fn visit_string<E>(self, v: String) -> std::result::Result<FieldJson, E> {
                Ok(Ok(Field::Text(v.into_bytes())).into())
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<FieldJson, E> {
                Ok(field_from_json_owned(serde_json::Value::Bool(v)).into())
            }
            // A BLOB, `{"$base64": "…"}`, is decoded from the line's own bytes: through a JSON
            // value, a 100 MB BLOB was first copied into a 133 MB `String`. Other tagged
            // values (`{"$real": "nan"}`) and anything else go through the JSON value, as
            // before, and so does a `$base64` object with more keys (an error there).
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<FieldJson, A::Error> {
                let mut object = serde_json::Map::new();
                if let Some(tag) = map.next_key::<String>()? {
                    if tag == "$base64" {
                        let Text(text) = map.next_value()?;
                        match map.next_key::<String>()? {
                            None => {
                                return Ok(B64
                                    .decode(text.as_bytes())
                                    .map(Field::Blob)
                                    .map_err(|e| format!("$base64: {e}"))
                                    .into())
                            }
                            Some(next) => {
                                object.insert(tag, serde_json::Value::String(text.into_owned()));
                                object.insert(next, map.next_value()?);
                            }
                        }
                    } else if tag == "$entries" || tag == "$text_entries" {
                        let stored: Stored = map.next_value()?;
                        if let Some(next) = map.next_key::<String>()? {
                            return Err(serde::de::Error::custom(format!(
                                "`{tag}` with another member `{next}`"
                            )));
                        }
                        let field = match tag.as_str() {
                            "$entries" => Field::Blob(Vec::new()),
                            _ => Field::Text(Vec::new()),
                        };
                        return Ok(FieldJson(Ok(field), Some(stored)));
                    } else {
                        object.insert(tag, map.next_value()?);
                    }
                }
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    object.insert(key, value);
                }
                Ok(field_from_json_owned(serde_json::Value::Object(object)).into())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> std::result::Result<FieldJson, A::Error> {
                let json = serde_json::Value::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(field_from_json_owned(json).into())
            }
        }
        d.deserialize_any(Value)
    }
}

/// A decoded line: a put, or a deletion of a key.
#[derive(Debug)]
pub(super) enum Decoded {
    /// The key now holds this record.
    Put(Record),
    /// The key now holds this record once its values kept apart are read in (empty at their
    /// places here), and then its CRC32 must be the one stored.
    Apart(Record, u32, Vec<Apart>),
    /// The key was deleted.
    Delete(Key),
}

impl Decoded {
    /// The line's key.
    pub(super) fn key(&self) -> &Key {
        match self {
            Decoded::Put(r) | Decoded::Apart(r, _, _) => &r.key,
            Decoded::Delete(k) => k,
        }
    }

    /// The record of a put; `None` for a deletion.
    #[cfg(test)]
    pub(super) fn into_record(self) -> Option<Record> {
        match self {
            Decoded::Put(r) => Some(r),
            Decoded::Apart(..) | Decoded::Delete(_) => None,
        }
    }
}

/// Decodes one line (without its newline), checking the record CRC32 (of a record with values
/// kept apart: once they are read in, [`Decoded::Apart`]). Errors name the cause.
pub(super) fn decode_line(line: &[u8]) -> std::result::Result<Decoded, String> {
    let ((key, put), apart) = match super::line::read(line) {
        Some(read) => (read, Vec::new()),
        None => read_any_line(line)?,
    };
    let Some((value, want)) = put else {
        return Ok(Decoded::Delete(key));
    };
    let record = Record { key, value };
    if !apart.is_empty() {
        return Ok(Decoded::Apart(record, want, apart));
    }
    check_crc(&record, want)?;
    Ok(Decoded::Put(record))
}

fn check_crc(record: &Record, want: u32) -> std::result::Result<(), String> {
    let crc = record_crc32(record);
    if crc != want {
        return Err(format!(
            "record CRC32 {crc:08x} does not match the stored {want:08x}"
        ));
    }
    Ok(())
}

/// Reads a line as [`read_any_line`] does, without values kept apart.
#[cfg(test)]
pub(super) fn read_line(line: &[u8]) -> std::result::Result<super::line::Read, String> {
    match read_any_line(line)? {
        (read, apart) if apart.is_empty() => Ok(read),
        _ => Err("a value kept apart".into()),
    }
}

/// Reads any line serde accepts as [`LineJson`] (the fields in any order, any whitespace, every
/// escape and value kind), checking everything but the record CRC32, and where its values
/// kept apart lie.
fn read_any_line(line: &[u8]) -> std::result::Result<(super::line::Read, Vec<Apart>), String> {
    let j: LineJson<'_> =
        serde_json::from_slice(line).map_err(|e| format!("not a tidemark record line: {e}"))?;
    let key = match (j.key, j.key_base64) {
        (Some(k), None) => k.into_owned().into_bytes(),
        (None, Some(b)) => B64
            .decode(b.as_bytes())
            .map_err(|e| format!("key_base64: {e}"))?,
        _ => return Err("exactly one of `key` and `key_base64` must be present".into()),
    };
    let key = Key(key);
    let values = [
        j.value.is_some(),
        j.value_utf8.is_some(),
        j.value_base64.is_some(),
        j.value_entries.is_some(),
        j.row.is_some(),
    ]
    .iter()
    .filter(|p| **p)
    .count();
    if j.deleted == Some(true) {
        if values != 0 || j.crc32.is_some() || j.rowid.is_some() {
            return Err("a deletion holds only its key".into());
        }
        return Ok(((key, None), Vec::new()));
    }
    if j.deleted.is_some() || values != 1 {
        return Err(
            "exactly one of `value`, `value_utf8`, `value_base64`, `value_entries` and `row` must \
             be present"
                .into(),
        );
    }
    let mut apart = Vec::new();
    let value = if let Some(stored) = j.value_entries {
        apart.push(Apart {
            place: Place::Value,
            stored,
        });
        Value::Bytes(Vec::new())
    } else if let Some(raw) = j.value {
        Value::Bytes(raw.get().as_bytes().to_vec())
    } else if let Some(text) = j.value_utf8 {
        Value::Bytes(text.into_owned().into_bytes())
    } else if let Some(b) = j.value_base64 {
        Value::Bytes(
            B64.decode(b.as_bytes())
                .map_err(|e| format!("value_base64: {e}"))?,
        )
    } else {
        let RowJson(parsed) = j.row.unwrap_or(RowJson(Vec::new()));
        let mut columns = Vec::with_capacity(parsed.len());
        for (name, FieldJson(field, stored)) in parsed {
            let field = field.map_err(|e| format!("column `{name}`: {e}"))?;
            if let Some(stored) = stored {
                apart.push(Apart {
                    place: Place::Column(columns.len()),
                    stored,
                });
            }
            columns.push((name, field));
        }
        Value::Row(Row {
            columns,
            rowid: j.rowid,
        })
    };
    if j.rowid.is_some() && !matches!(value, Value::Row(_)) {
        return Err("`rowid` belongs to rows only".into());
    }
    let want = j.crc32.ok_or("`crc32` is missing")?;
    for a in &apart {
        if a.stored.id == 0 || a.stored.chunks == 0 {
            return Err("a value kept apart numbers its entries from 1".into());
        }
    }
    Ok(((key, Some((value, want))), apart))
}

/// Decodes a whole data entry; errors name the entry and line.
fn decode_part(path: &Path, data: &[u8]) -> Result<Vec<Decoded>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let body = data
        .strip_suffix(b"\n")
        .ok_or_else(|| damaged(path, "the last line is cut short"))?;
    let mut decoded = Vec::with_capacity(memchr::memchr_iter(b'\n', data).count());
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain([body.len()]) {
        let line = &body[start..end];
        let record = decode_line(line)
            .map_err(|cause| damaged(path, format!("line {}: {cause}", decoded.len() + 1)))?;
        decoded.push(record);
        start = end + 1;
    }
    Ok(decoded)
}

/// The counts one collection's parts must add up to.
#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
struct Counts {
    puts: u64,
    deletions: u64,
    parts: u64,
}

/// What an entry of a format-2 archive is, by its name.
#[derive(Debug, PartialEq, Eq)]
enum EntryName<'a> {
    /// `tidemark/manifest.json`.
    Manifest,
    /// `data/<dir>/<n>.jsonl`: a collection's `n`th part.
    Part(&'a str, u64),
    /// `values/<dir>/<id>-<chunk>.bin`: the `chunk`th entry of a collection's value `id`.
    Value(&'a str, u64, u64),
}

impl EntryName<'_> {
    /// The collection directory the entry belongs to (none for the manifest).
    fn dir(&self) -> Option<&str> {
        match self {
            EntryName::Manifest => None,
            EntryName::Part(dir, _) | EntryName::Value(dir, _, _) => Some(dir),
        }
    }
}

/// An entry name's number: six digits or more (no leading zero beyond six), from 1.
fn entry_number(s: &str) -> Option<u64> {
    let fine = s.len() >= 6
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s.len() == 6 || !s.starts_with('0'));
    let n: u64 = if fine { s.parse().ok()? } else { return None };
    (n >= 1).then_some(n)
}

/// Which collection and part or value an entry name is, vetted (no `..`, no absolute paths),
/// or the manifest; `None` for any other name.
fn parse_entry_name(name: &str) -> Option<EntryName<'_>> {
    if name == MANIFEST_ENTRY {
        return Some(EntryName::Manifest);
    }
    let (kind, rest) = name.split_once('/')?;
    let (dir, file) = rest.split_once('/')?;
    if dir.is_empty() || dir == "." || dir == ".." || dir.contains('\\') {
        return None;
    }
    match kind {
        "data" => Some(EntryName::Part(
            dir,
            entry_number(file.strip_suffix(".jsonl")?)?,
        )),
        "values" => {
            let (id, chunk) = file.strip_suffix(".bin")?.split_once('-')?;
            Some(EntryName::Value(
                dir,
                entry_number(id)?,
                entry_number(chunk)?,
            ))
        }
        _ => None,
    }
}

/// Puts a value read from its entries at its place in `record`.
fn place_value(
    record: &mut Record,
    place: Place,
    bytes: Vec<u8>,
) -> std::result::Result<(), String> {
    match (place, &mut record.value) {
        (Place::Value, Value::Bytes(b)) => *b = bytes,
        (Place::Column(i), Value::Row(row)) => match row.columns.get_mut(i) {
            Some((_, Field::Blob(b) | Field::Text(b))) => *b = bytes,
            _ => {
                return Err(format!(
                    "no BLOB or TEXT column {} for a value kept apart",
                    i + 1
                ))
            }
        },
        _ => return Err("a value kept apart does not fit the record".into()),
    }
    Ok(())
}

/// Verifies one format-2 archive: the file's CRC32, every entry's zip CRC32 and the central
/// directory (reading in file order), every line's record CRC32, the part numbering and the
/// counts of the manifest. Returns the records (puts) it holds.
pub(super) fn verify_archive(
    item: &ChainItem,
    archive: &dyn ArchiveRead,
    tick: &mut dyn FnMut(u64),
) -> Result<u64> {
    read_whole(&item.path, archive, tick, |r| verify_entries(item, r))
}

fn verify_entries(item: &ChainItem, file: &mut dyn Read) -> Result<u64> {
    let path = &item.path;
    let m = &item.manifest;
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    // Values kept apart, read so far and not yet named by a line: (dir, id) → entries, bytes.
    // Each comes just before the part of its line, so this holds about one record's values.
    let mut values: HashMap<(String, u64), (u64, Vec<u8>)> = HashMap::new();
    let mut last_was_manifest = false;
    zipstream::read_entries(
        file,
        |r: Refused| match r.entry {
            Some(e) => damaged(&path.join(e), r.cause),
            None => damaged(path, r.cause),
        },
        &mut |name, data| {
            let epath = path.join(name);
            if last_was_manifest {
                return Err(damaged(&epath, "an entry after the manifest"));
            }
            let Some(kind) = parse_entry_name(name) else {
                return Err(damaged(
                    &epath,
                    "entry name outside the archive layout (refused)",
                ));
            };
            let Some(dir) = kind.dir() else {
                last_was_manifest = true;
                return Ok(());
            };
            let dropped = m.dropped_parts.as_ref().and_then(|d| d.get(dir)).copied();
            if !m.collections.iter().any(|c| c.dir == dir) && dropped.is_none() {
                return Err(damaged(
                    &epath,
                    "entry of a collection the manifest does not list",
                ));
            }
            let n = match kind {
                EntryName::Value(_, id, chunk) => {
                    let held = values.entry((dir.to_string(), id));
                    match (held, chunk) {
                        (std::collections::hash_map::Entry::Vacant(v), 1) => {
                            v.insert((1, data));
                        }
                        (std::collections::hash_map::Entry::Occupied(mut o), _)
                            if o.get().0 + 1 == chunk =>
                        {
                            let (chunks, bytes) = o.get_mut();
                            *chunks += 1;
                            bytes.extend_from_slice(&data);
                        }
                        _ => {
                            return Err(damaged(&epath, "a value's entry out of order or repeated"))
                        }
                    }
                    return Ok(());
                }
                EntryName::Part(_, n) => n,
                EntryName::Manifest => return Ok(()),
            };
            let c = counts.entry(dir.to_string()).or_default();
            if n != c.parts + 1 {
                return Err(damaged(
                    &epath,
                    format!("part {n} where part {} was expected", c.parts + 1),
                ));
            }
            c.parts += 1;
            for (i, line) in decode_part(&epath, &data)?.into_iter().enumerate() {
                match line {
                    Decoded::Put(_) => c.puts += 1,
                    Decoded::Apart(mut record, want, apart) => {
                        let at =
                            |cause: String| damaged(&epath, format!("line {}: {cause}", i + 1));
                        for a in apart {
                            let (chunks, bytes) = values
                                .remove(&(dir.to_string(), a.stored.id))
                                .ok_or_else(|| at(format!("value {} is missing", a.stored.id)))?;
                            if chunks != a.stored.chunks || bytes.len() as u64 != a.stored.bytes {
                                return Err(at(format!(
                                    "value {} has {chunks} entries of {} bytes, the line says {} \
                                     of {}",
                                    a.stored.id,
                                    bytes.len(),
                                    a.stored.chunks,
                                    a.stored.bytes
                                )));
                            }
                            place_value(&mut record, a.place, bytes).map_err(at)?;
                        }
                        check_crc(&record, want).map_err(at)?;
                        c.puts += 1;
                    }
                    Decoded::Delete(_) => c.deletions += 1,
                }
            }
            Ok(())
        },
    )?;
    if let Some((dir, id)) = values.keys().min() {
        return Err(damaged(
            &path.join(value_name(dir, *id, 1)),
            "a value that no line names",
        ));
    }
    for (dir, parts) in m.dropped_parts.iter().flatten() {
        if counts.remove(dir).map_or(0, |c| c.parts) != *parts {
            return Err(damaged(
                path,
                format!("the parts of dropped `{dir}` do not match"),
            ));
        }
    }
    let mut records = 0;
    for c in &m.collections {
        let got = counts.get(&c.dir).copied().unwrap_or_default();
        let want = Counts {
            puts: c.documents,
            deletions: c.deletions,
            parts: c.parts.unwrap_or(0),
        };
        if got != want {
            return Err(damaged(
                path,
                format!(
                    "collection `{}` has {} parts with {} records and {} deletions, the manifest \
                     says {} parts, {} and {}",
                    c.info.name,
                    got.parts,
                    got.puts,
                    got.deletions,
                    want.parts,
                    want.puts,
                    want.deletions
                ),
            ));
        }
        if c.scan_parts.unwrap_or(0) > want.parts {
            return Err(damaged(path, "more scan parts than parts"));
        }
        records += got.puts;
    }
    Ok(records)
}

/// An archive opened for random access: its directory and reader.
struct Opened {
    path: PathBuf,
    archive: Arc<dyn ArchiveRead>,
    entries: HashMap<String, DirEntry>,
}

fn open(store: &dyn ChainStore, item: &ChainItem, skipped: Option<&Skipped>) -> Result<Opened> {
    let path = item.path.clone();
    let archive: Arc<dyn ArchiveRead> = Arc::from(store.open(item)?);
    match (archive.check_before_restore(crc_in_name(&path)?), skipped) {
        (Ok(()), _) => {}
        // Partial recovery: the file is damaged somewhere; its entries are checked one by one.
        (Err(e @ Error::Damaged { .. }), Some(s)) => s.note(format!(
            "{e} (its entries are read one by one, each checked)"
        )),
        (Err(e), _) => return Err(e),
    }
    // A format-2 archive has a few entries per collection and some MiB of records.
    let list = zipstream::read_directory(&mut RangeReader::new(&*archive, 1 << 16), 10_000_000)
        .map_err(|r| refused(&path, r))?;
    // Every entry must belong to the layout, also those a restore would not read.
    let m = &item.manifest;
    for e in &list {
        let known = match parse_entry_name(&e.name).map(|n| n.dir().map(str::to_owned)) {
            Some(None) => true,
            Some(Some(dir)) => {
                m.collections.iter().any(|c| c.dir == dir)
                    || m.dropped_parts
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&dir))
            }
            None => false,
        };
        if !known {
            let e = damaged(
                &path.join(&e.name),
                "entry name outside the archive layout (refused)",
            );
            match skipped {
                Some(s) => s.note(e.to_string()),
                None => return Err(e),
            }
        }
    }
    let entries = list.into_iter().map(|e| (e.name.clone(), e)).collect();
    Ok(Opened {
        path,
        archive,
        entries,
    })
}

fn refused(path: &Path, r: Refused) -> Error {
    match r.entry {
        Some(e) => damaged(&path.join(e), r.cause),
        None => damaged(path, r.cause),
    }
}

/// What a partial recovery left out (`RestoreOptions::skip_damaged`): one message each, in
/// order, without repeats.
#[derive(Default)]
struct Skipped(std::sync::Mutex<Vec<String>>);

impl Skipped {
    fn note(&self, message: String) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains(&message) {
            all.push(message);
        }
    }
    fn into_inner(self) -> Vec<String> {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// One part to read: which archive, which entry, which collection (its index in the last
/// manifest).
struct PartRef {
    archive: usize,
    name: String,
    collection: usize,
}

/// Bytes of an archive that one or more consecutive parts lie in: fetched by one ranged read,
/// by whichever worker needs them first, and freed when the last job using them is done.
struct Span {
    archive: Arc<dyn ArchiveRead>,
    start: u64,
    len: usize,
    bytes: std::sync::Mutex<Option<Arc<Vec<u8>>>>,
}

impl Span {
    fn bytes(&self) -> std::io::Result<Arc<Vec<u8>>> {
        let mut held = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &*held {
            return Ok(b.clone());
        }
        let b = Arc::new(self.archive.read_at(self.start, self.len)?);
        *held = Some(b.clone());
        Ok(b)
    }
}

/// A part to read, decompress and decode, all on a worker: with an object store, as many
/// requests are in flight as there are workers.
struct Job {
    path: PathBuf,
    span: Arc<Span>,
    entry: DirEntry,
}

/// Room for a local header's extra field beyond what the central directory lists, so that an
/// entry is read in one request.
const HEADER_SLACK: usize = 30 + 64;

/// A decoding worker's state, reused from part to part: its zstd context and the buffer a
/// part is decompressed into (a fresh 4 MiB buffer per part cost a page fault per 4 KiB).
#[derive(Default)]
struct PartDecoder {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    data: Vec<u8>,
}

fn decode_job(decoder: &mut PartDecoder, job: Job) -> Result<Vec<Decoded>> {
    let path = job.path.join(&job.entry.name);
    let bytes = job
        .span
        .bytes()
        .map_err(|e| read_error(&*job.span.archive, e))?;
    unpack_entry(decoder, &job.path, &bytes, job.span.start, &job.entry)?;
    drop(bytes);
    decode_part(&path, &decoder.data)
}

/// An error reading an archive's bytes: a sealed archive's chunk that does not authenticate
/// is damage, as a CRC32 is.
fn read_error(archive: &dyn ArchiveRead, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData => damaged(archive.location(), e.to_string()),
        _ => Error::io("read", archive.location(), e),
    }
}

/// Unpacks `entry` of the archive at `path` into `decoder.data`, from `bytes` read from
/// offset `start` on.
fn unpack_entry(
    decoder: &mut PartDecoder,
    path: &Path,
    bytes: &[u8],
    start: u64,
    entry: &DirEntry,
) -> Result<()> {
    // The entry, as seen from the start of the bytes.
    let local = DirEntry {
        offset: entry.offset - start,
        ..entry.clone()
    };
    let packed = zipstream::read_packed(&mut std::io::Cursor::new(bytes), &local)
        .map_err(|r| refused(path, r))?;
    zipstream::unpack_into(
        &entry.name,
        entry.method,
        packed,
        entry.size,
        entry.crc,
        &mut decoder.zstd,
        &mut decoder.data,
    )
    .map_err(|r| refused(path, r))
}

/// The bytes of an archive an entry lies in (its header, name and data), when they lie in it.
fn entry_end(o: &Opened, entry: &DirEntry) -> Result<u64> {
    let end = entry
        .offset
        .saturating_add((HEADER_SLACK + entry.name.len()) as u64)
        .saturating_add(entry.csize)
        .min(o.archive.size());
    if entry.offset >= end {
        return Err(damaged(
            &o.path.join(&entry.name),
            "the entry lies outside the archive",
        ));
    }
    Ok(end)
}

/// Reads the values that a line of collection `dir` in `o` keeps apart, one entry at a time,
/// into the record, and checks its CRC32; other lines come back as they are. Memory: the
/// values and one entry.
fn read_apart(o: &Opened, dir: &str, line: Decoded, decoder: &mut PartDecoder) -> Result<Decoded> {
    let Decoded::Apart(mut record, want, apart) = line else {
        return Ok(line);
    };
    for a in apart {
        let first = o.path.join(value_name(dir, a.stored.id, 1));
        // Its entries first, their sizes adding up to the line's: a damaged count is found
        // before anything is allocated or read.
        let mut entries = Vec::new();
        let mut total = 0u64;
        for chunk in 1..=a.stored.chunks {
            let name = value_name(dir, a.stored.id, chunk);
            let entry = o
                .entries
                .get(&name)
                .ok_or_else(|| damaged(&o.path.join(&name), "missing from the archive"))?;
            total = total.saturating_add(entry.size);
            entries.push(entry);
        }
        if total != a.stored.bytes {
            return Err(damaged(
                &first,
                format!(
                    "the value's entries hold {total} bytes, its line says {}",
                    a.stored.bytes
                ),
            ));
        }
        // Sizes the directory gives (each entry's is checked as it is unpacked): one that does
        // not fit in memory is an error, never an abort.
        let mut bytes = Vec::new();
        usize::try_from(total)
            .ok()
            .and_then(|n| bytes.try_reserve_exact(n).ok())
            .ok_or_else(|| Error::BadInput {
                path: first.clone(),
                cause: format!(
                    "a value of {total} bytes does not fit in memory (or the archive's directory \
                     is damaged: `verify` tells)"
                ),
                source: None,
            })?;
        for entry in entries {
            let end = entry_end(o, entry)?;
            let raw = o
                .archive
                .read_at(entry.offset, (end - entry.offset) as usize)
                .map_err(|e| read_error(&*o.archive, e))?;
            unpack_entry(decoder, &o.path, &raw, entry.offset, entry)?;
            bytes.extend_from_slice(&decoder.data);
        }
        place_value(&mut record, a.place, bytes).map_err(|cause| damaged(&first, cause))?;
    }
    check_crc(&record, want).map_err(|cause| {
        damaged(
            &o.path.join(format!("values/{dir}")),
            format!("key {}: {cause}", record.key),
        )
    })?;
    Ok(Decoded::Put(record))
}

/// Partial recovery: the parts that can be read (their archive opened, their entry listed);
/// the others are noted and left out.
fn readable(opened: &[Option<Opened>], parts: Vec<PartRef>, skipped: &Skipped) -> Vec<PartRef> {
    parts
        .into_iter()
        .filter(|p| match &opened[p.archive] {
            None => false,
            Some(o) if o.entries.contains_key(&p.name) => true,
            Some(o) => {
                skipped.note(format!(
                    "{}: missing from the archive (its records are left out)",
                    o.path.join(&p.name).display()
                ));
                false
            }
        })
        .collect()
}

/// Reads `parts` in order over `threads` decoders, handing each part's lines to `visit`.
/// Consecutive parts that lie next to each other in an archive share one ranged read of up to
/// [`ArchiveRead::span`] bytes (an object store: fewer, larger requests); otherwise each part
/// is its own read.
fn read_parts(
    opened: &[Option<Opened>],
    parts: &[PartRef],
    threads: usize,
    skipped: Option<&Skipped>,
    visit: &mut dyn FnMut(&PartRef, Vec<Decoded>) -> Result<()>,
) -> Result<()> {
    // Plan the reads first: spans (archive, start, end) and, per part, its entry and span.
    let mut spans: Vec<(usize, u64, u64, Arc<dyn ArchiveRead>)> = Vec::new();
    let mut planned: Vec<(usize, DirEntry)> = Vec::with_capacity(parts.len());
    for part in parts {
        let Some(o) = &opened[part.archive] else {
            return Err(damaged(
                Path::new(&part.name),
                "its archive could not be opened",
            ));
        };
        let entry = o
            .entries
            .get(&part.name)
            .cloned()
            .ok_or_else(|| damaged(&o.path.join(&part.name), "missing from the archive"))?;
        let end = entry_end(o, &entry)?;
        let limit = o.archive.span() as u64;
        match spans.last_mut() {
            Some((a, start, span_end, _))
                if *a == part.archive
                    && entry.offset >= *start
                    && entry.offset <= *span_end
                    && end - *start <= limit =>
            {
                *span_end = (*span_end).max(end);
            }
            _ => spans.push((part.archive, entry.offset, end, o.archive.clone())),
        }
        planned.push((spans.len() - 1, entry));
    }
    let spans: Vec<Arc<Span>> = spans
        .into_iter()
        .map(|(_, start, end, archive)| {
            Arc::new(Span {
                archive,
                start,
                len: (end - start) as usize,
                bytes: std::sync::Mutex::new(None),
            })
        })
        .collect();
    let jobs: Vec<(Arc<Span>, DirEntry)> = planned
        .into_iter()
        .map(|(i, entry)| (spans[i].clone(), entry))
        .collect();
    drop(spans);
    let mut pipeline = Pipeline::new(threads, PartDecoder::default, decode_job);
    let mut next = 0usize;
    let mut deliver = |r: Result<Vec<Decoded>>| -> Result<()> {
        let lines = match (r, skipped) {
            (Ok(lines), _) => lines,
            (Err(e @ Error::Damaged { .. }), Some(s)) => {
                s.note(format!("{e} (this part's records are left out)"));
                Vec::new()
            }
            (Err(e), _) => return Err(e),
        };
        let part = &parts[next];
        next += 1;
        visit(part, lines)
    };
    for ((span, entry), part) in jobs.into_iter().zip(parts) {
        pipeline.submit(
            Job {
                path: opened[part.archive]
                    .as_ref()
                    .map(|o| o.path.clone())
                    .unwrap_or_default(),
                span,
                entry,
            },
            &mut deliver,
        )?;
    }
    pipeline.finish(&mut deliver)
}

/// Writes the state at the last archive of `items` (a full archive and the incrementals after
/// it, all format 2) into `sink`.
///
/// The full archive's scan parts hold each key once; everything after them (its replayed
/// parts and every incremental) is the *overlay*, where later lines win. Three passes: the
/// overlay's keys are indexed (key → its last line); the scan parts stream into the sink in
/// parallel, skipping keys the overlay has; the overlay's winning puts follow. Memory: the
/// overlay's keys, never the archive.
pub(super) fn replay(
    store: &dyn ChainStore,
    items: &[ChainItem],
    mut sink: Box<dyn RestoreSink + '_>,
    options: &RestoreOptions,
    threads: usize,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let last = &items[items.len() - 1].manifest;
    let wanted = |n: &CollectionName| options.wants(n);
    let collections: Vec<&ArchiveCollection> = last
        .collections
        .iter()
        .filter(|c| wanted(&c.info.name))
        .collect();
    for c in &collections {
        sink.create_collection(&c.info, last.store_kind)?;
    }
    let skipped = options.skip_damaged.then(Skipped::default);
    let sk = skipped.as_ref();
    let mut opened = Vec::with_capacity(items.len());
    for item in items {
        match (open(store, item, sk), sk) {
            (Ok(o), _) => opened.push(Some(o)),
            (Err(e @ Error::Damaged { .. }), Some(s)) => {
                s.note(format!("{e} (the whole archive is left out)"));
                opened.push(None);
            }
            (Err(e), _) => return Err(e),
        }
    }
    // Per collection: the parts of the scan, and the overlay parts in chain order. A
    // collection missing from an archive's manifest was dropped then: only archives after the
    // last such gap are its own.
    let (mut base, mut overlay) = (Vec::new(), Vec::new());
    for (ci, c) in collections.iter().enumerate() {
        let first = (0..items.len())
            .rev()
            .take_while(|&i| items[i].manifest.collections.iter().any(|x| x.dir == c.dir))
            .last()
            .unwrap_or(items.len());
        for (ai, item) in items.iter().enumerate().skip(first) {
            let Some(ac) = item.manifest.collections.iter().find(|x| x.dir == c.dir) else {
                continue;
            };
            let scan = if ai == 0 && item.manifest.kind == RunKind::Full {
                ac.scan_parts.unwrap_or(0)
            } else {
                0
            };
            for n in 1..=ac.parts.unwrap_or(0) {
                let part = PartRef {
                    archive: ai,
                    name: part_name(&c.dir, n),
                    collection: ci,
                };
                if n <= scan {
                    base.push(part);
                } else {
                    overlay.push(part);
                }
            }
        }
    }
    overlay.sort_by_key(|p| p.archive); // chain order; stable keeps part order
    if let Some(s) = sk {
        base = readable(&opened, base, s);
        overlay = readable(&opened, overlay, s);
    }
    // Pass 1: each overlay key's last line (per collection).
    let mut winner: Vec<KeyMap> = vec![KeyMap::default(); collections.len()];
    let ordinals = last_lines(&opened, &overlay, threads, sk, &mut winner)?;
    let mut written = vec![0u64; collections.len()];
    let mut bytes = 0u64;
    let mut batches: Vec<Batch> = collections.iter().map(|_| Batch::new(options)).collect();
    // A record's values kept apart are read here, once it is known to be written.
    let mut apart = PartDecoder::default();
    let mut read_in = |part: &PartRef, line: Decoded| -> Result<Option<Record>> {
        let o = opened[part.archive].as_ref();
        let line = match (o, line) {
            (Some(o), line @ Decoded::Apart(..)) => {
                read_apart(o, &collections[part.collection].dir, line, &mut apart)
            }
            (_, line) => Ok(line),
        };
        match (line, sk) {
            (Ok(Decoded::Put(record)), _) => Ok(Some(record)),
            (Ok(_), _) => Ok(None),
            (Err(e @ Error::Damaged { .. }), Some(s)) => {
                s.note(format!("{e} (this record is left out)"));
                Ok(None)
            }
            (Err(e), _) => Err(e),
        }
    };
    // Pass 2: the scan, without the keys the overlay decides.
    read_parts(&opened, &base, threads, sk, &mut |part, lines| {
        let ci = part.collection;
        for line in lines {
            if let Decoded::Delete(_) = line {
                let e = damaged(
                    &items[part.archive].path.join(&part.name),
                    "a deletion in a scan part",
                );
                match sk {
                    Some(s) => {
                        s.note(e.to_string());
                        continue;
                    }
                    None => return Err(e),
                }
            }
            if ordinals > 0 && winner[ci].contains_key(line.key().as_bytes()) {
                continue;
            }
            let Some(record) = read_in(part, line)? else {
                continue;
            };
            written[ci] += 1;
            bytes += batches[ci].push(&mut *sink, &collections[ci].info.name, record)?;
        }
        Ok(())
    })?;
    // Pass 3: the overlay's winning puts.
    let mut ordinal = 0u64;
    read_parts(&opened, &overlay, threads, sk, &mut |part, lines| {
        let ci = part.collection;
        for line in lines {
            let n = ordinal;
            ordinal += 1;
            if let Decoded::Delete(_) = line {
                continue;
            }
            if winner[ci].get(line.key().as_bytes()) == Some(&n) {
                let Some(record) = read_in(part, line)? else {
                    continue;
                };
                written[ci] += 1;
                bytes += batches[ci].push(&mut *sink, &collections[ci].info.name, record)?;
            }
        }
        Ok(())
    })?;
    for (ci, batch) in batches.iter_mut().enumerate() {
        batch.flush(&mut *sink, &collections[ci].info.name)?;
    }
    let path = &items[items.len() - 1].path;
    for (ci, c) in collections.iter().enumerate() {
        if written[ci] != c.records {
            let e = damaged(
                path,
                format!(
                    "replaying the chain gives collection `{}` {} records, the manifest says {}",
                    c.info.name, written[ci], c.records
                ),
            );
            match sk {
                Some(s) => s.note(e.to_string()),
                None => return Err(e),
            }
        }
    }
    sink.finish(&last.store_schema, last.store_kind)?;
    Ok(RestoreSummary {
        collections: collections.len(),
        records: written.iter().sum(),
        bytes,
        elapsed: started.elapsed(),
        archives: items.len(),
        point: Some((last.sequence, last.captured_at.clone())),
        avoided: Vec::new(),
        skipped: skipped.map(Skipped::into_inner).unwrap_or_default(),
    })
}

/// Merges `inputs` (consecutive incrementals, format 2, with the same collections) into the
/// lines one archive holds in their place: for each key of each collection its last line (a
/// put or a deletion), handed to `emit` (collection index in the last manifest, and the line)
/// in the order those lines come in the chain. Two passes over the inputs, as a restore's
/// overlay: memory holds the keys, never the records.
pub(super) fn merge(
    store: &dyn ChainStore,
    inputs: &[ChainItem],
    threads: usize,
    emit: &mut dyn FnMut(usize, Decoded) -> Result<()>,
) -> Result<()> {
    let Some(last) = inputs.last().map(|i| &i.manifest) else {
        return Ok(());
    };
    let opened = inputs
        .iter()
        .map(|i| open(store, i, None).map(Some))
        .collect::<Result<Vec<_>>>()?;
    let mut parts = Vec::new();
    for (ai, item) in inputs.iter().enumerate() {
        for (ci, c) in last.collections.iter().enumerate() {
            let Some(ac) = item.manifest.collections.iter().find(|x| x.dir == c.dir) else {
                continue;
            };
            for n in 1..=ac.parts.unwrap_or(0) {
                parts.push(PartRef {
                    archive: ai,
                    name: part_name(&c.dir, n),
                    collection: ci,
                });
            }
        }
    }
    // Chain order, then (stable) collection and part order.
    parts.sort_by_key(|p| p.archive);
    let mut winner: Vec<KeyMap> = vec![KeyMap::default(); last.collections.len()];
    last_lines(&opened, &parts, threads, None, &mut winner)?;
    let mut ordinal = 0u64;
    let mut apart = PartDecoder::default();
    read_parts(&opened, &parts, threads, None, &mut |part, lines| {
        let winner = &mut winner[part.collection];
        for line in lines {
            let n = ordinal;
            ordinal += 1;
            if winner.get(line.key().as_bytes()) == Some(&n) {
                winner.remove(line.key().as_bytes());
                let line = match &opened[part.archive] {
                    Some(o) => {
                        read_apart(o, &last.collections[part.collection].dir, line, &mut apart)?
                    }
                    None => line,
                };
                emit(part.collection, line)?;
            }
        }
        Ok(())
    })
}

/// Keys to their last line's ordinal. A restore looks up every key of the scan in it: foldhash
/// (seeded per process) instead of the default SipHash, which showed in a restore's profile.
type KeyMap = HashMap<Vec<u8>, u64, foldhash::fast::RandomState>;

/// Reads `parts` in order and notes, per collection, each key's last line by its ordinal (its
/// place among all lines of `parts`); returns the number of lines read.
fn last_lines(
    opened: &[Option<Opened>],
    parts: &[PartRef],
    threads: usize,
    skipped: Option<&Skipped>,
    winner: &mut [KeyMap],
) -> Result<u64> {
    let mut ordinal = 0u64;
    read_parts(opened, parts, threads, skipped, &mut |part, lines| {
        for line in lines {
            let key = match line {
                Decoded::Put(r) | Decoded::Apart(r, _, _) => r.key,
                Decoded::Delete(k) => k,
            };
            winner[part.collection].insert(key.0, ordinal);
            ordinal += 1;
        }
        Ok(())
    })?;
    Ok(ordinal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Field;

    /// A row's tagged values decode as they did through a JSON value: a BLOB (borrowed from the
    /// line, or with an escape in it), the other tags, and a `$base64` object with another key
    /// (an error, as before) or that is not a string.
    #[test]
    fn tagged_columns_decode_as_through_a_json_value() {
        for (column, want) in [
            (r#"{"$base64":"AAEC"}"#, Ok(Field::Blob(vec![0, 1, 2]))),
            (r#"{"$base64":"AA\u0045C"}"#, Ok(Field::Blob(vec![0, 1, 2]))),
            (r#"{"$base64":""}"#, Ok(Field::Blob(vec![]))),
            (r#"{"$real":"inf"}"#, Ok(Field::Real(f64::INFINITY))),
            (r#"{"$text_base64":"/w=="}"#, Ok(Field::Text(vec![0xff]))),
            (r#"{"$base64":"AAEC","x":1}"#, Err(())),
            (r#"{"x":1,"$base64":"AAEC"}"#, Err(())),
            (r#"{"$base64":"!!"}"#, Err(())),
            (r#"{}"#, Err(())),
        ] {
            // The CRC32 of the record expected (a wrong one would be an error of its own).
            let crc = match &want {
                Ok(field) => record_crc32(&Record {
                    key: Key(b"k".to_vec()),
                    value: Value::Row(Row {
                        rowid: None,
                        columns: vec![("c".into(), field.clone())],
                    }),
                }),
                Err(()) => 0,
            };
            let line = format!(r#"{{"key":"k","row":{{"c":{column}}},"crc32":{crc}}}"#);
            let got = decode_line(line.as_bytes());
            if let Err(e) = &got {
                assert!(!e.contains("CRC32"), "{column}: the field decoded: {e}");
            }
            let via_json = field_from_json_owned(serde_json::from_str(column).expect("JSON"));
            match (&want, &got) {
                (Ok(field), Ok(Decoded::Put(r))) => {
                    let Value::Row(row) = &r.value else {
                        panic!("{column}: not a row")
                    };
                    assert_eq!(&row.columns[0].1, field, "{column}");
                    assert_eq!(via_json.as_ref(), Ok(field), "{column}");
                }
                (Err(()), got) => {
                    assert!(got.is_err(), "{column}: decoded");
                    assert!(via_json.is_err(), "{column}: decoded through a JSON value");
                }
                (Ok(_), Err(e)) => panic!("{column}: {e}"),
                (Ok(_), Ok(Decoded::Delete(_))) => panic!("{column}: a deletion"),
                (Ok(_), Ok(Decoded::Apart(..))) => panic!("{column}: a value kept apart"),
            }
        }
    }

    /// BLOBs and binary values are base64-encoded in place, byte for byte as serde_json wrote
    /// them through a `serde_json::Value` (the format does not change), at every length's
    /// padding, after text already in the line and at a buffer's exact capacity.
    #[test]
    fn base64_in_place_is_what_serde_json_wrote() {
        for n in [0usize, 1, 2, 3, 4, 5, 57, 58, 1000, 70_000] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
            let field = Field::Blob(bytes.clone());
            for prefix in [&b""[..], b"{\"a\":1,\"b\":"] {
                let mut out = Vec::with_capacity(prefix.len());
                out.extend_from_slice(prefix);
                json_field(&mut out, &field);
                let mut want = prefix.to_vec();
                want.extend(serde_json::to_vec(&field_to_json(&field)).expect("JSON"));
                assert_eq!(out, want, "{n} bytes after {} bytes", prefix.len());
            }
            let mut out = b"x".to_vec();
            base64_into(&mut out, &bytes);
            assert_eq!(
                out,
                [b"x".to_vec(), B64.encode(&bytes).into_bytes()].concat()
            );
        }
    }

    fn round_trip(line: Line) -> Decoded {
        let mut out = Vec::new();
        encode_line(&mut out, &line);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        decode_line(&out[..out.len() - 1]).expect("decodes")
    }

    fn put(key: &[u8], value: Value) -> Line {
        let r = Record {
            key: Key(key.to_vec()),
            value,
        };
        let crc = record_crc32(&r);
        Line::Put(r, crc)
    }

    #[test]
    fn every_kind_of_record_round_trips() {
        let values = [
            Value::Bytes(br#"{"a":1}"#.to_vec()),
            Value::Bytes(b"null".to_vec()),
            Value::Bytes(b" {\"a\":1}".to_vec()),
            Value::Bytes(b"{\"a\":\n1}".to_vec()),
            Value::Bytes(b"plain text".to_vec()),
            Value::Bytes(vec![0, 255, 10, 13]),
            Value::Bytes(Vec::new()),
            Value::Row(Row {
                columns: vec![
                    ("i".into(), Field::Integer(-7)),
                    ("r".into(), Field::Real(-0.0)),
                    ("n".into(), Field::Real(f64::NAN)),
                    ("t".into(), Field::Text(vec![0xff, b'a'])),
                    ("b".into(), Field::Blob(vec![1, 2, 3])),
                    ("z".into(), Field::Null),
                ],
                rowid: Some(42),
            }),
        ];
        for key in [&b"k"[..], b"", &[0, 255], b"a\nb\"c"] {
            for v in &values {
                let line = round_trip(put(key, v.clone()));
                assert_eq!(line.key().as_bytes(), key);
                let r = line.into_record().expect("a put");
                assert_eq!(record_crc32(&r), {
                    let want = Record {
                        key: Key(key.to_vec()),
                        value: v.clone(),
                    };
                    record_crc32(&want)
                });
            }
            let line = round_trip(Line::Delete(Key(key.to_vec())));
            assert_eq!(line.key().as_bytes(), key);
            assert!(line.into_record().is_none());
        }
    }

    /// The examples of docs/FORMAT.md §3.1 are exactly what the encoder writes.
    #[test]
    fn the_documented_examples_are_exact() {
        let doc = include_str!("../../../docs/FORMAT.md");
        let lines = [
            put(
                b"user/42",
                Value::Bytes(br#"{"name":"Ann","visits":3}"#.to_vec()),
            ),
            put(&[0, 255, 1], Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])),
            put(
                b"7",
                Value::Row(Row {
                    columns: vec![
                        ("id".into(), Field::Integer(7)),
                        ("name".into(), Field::Text(b"bolt".to_vec())),
                        ("price".into(), Field::Real(0.25)),
                        ("img".into(), Field::Blob(vec![0x89, b'P', b'N', b'G'])),
                    ],
                    rowid: None,
                }),
            ),
            Line::Delete(Key(b"user/41".to_vec())),
            {
                // A row whose BLOB (9,000,000 zero bytes) is kept apart.
                let row = |img: Vec<u8>| Record {
                    key: Key(b"8".to_vec()),
                    value: Value::Row(Row {
                        columns: vec![
                            ("id".into(), Field::Integer(8)),
                            ("img".into(), Field::Blob(img)),
                        ],
                        rowid: None,
                    }),
                };
                let crc = record_crc32(&row(vec![0; 9_000_000]));
                let stored = Stored {
                    id: 1,
                    chunks: 3,
                    bytes: 9_000_000,
                };
                let place = Place::Column(1);
                Line::Apart(row(Vec::new()), crc, vec![Apart { place, stored }])
            },
        ];
        for line in &lines {
            let mut out = Vec::new();
            encode_line(&mut out, line);
            let text = String::from_utf8(out).expect("utf8");
            assert!(doc.contains(&text), "FORMAT.md lacks {text}");
        }
    }

    #[test]
    fn damaged_lines_are_refused() {
        let mut out = Vec::new();
        encode_line(&mut out, &put(b"k", Value::Bytes(b"\"v\"".to_vec())));
        let line = &out[..out.len() - 1];
        let text = std::str::from_utf8(line).expect("utf8");
        let changed = text.replace("\"v\"", "\"w\"");
        assert!(decode_line(changed.as_bytes())
            .expect_err("a changed value")
            .contains("CRC32"));
        assert!(decode_line(b"{\"key\":\"k\",\"deleted\":true,\"crc32\":1}").is_err());
        assert!(
            decode_line(b"{\"key\":\"k\",\"value\":1,\"value_utf8\":\"1\",\"crc32\":1}").is_err()
        );
        assert!(decode_line(b"{\"key\":\"k\",\"other\":1}").is_err());
    }

    #[test]
    fn bad_row_columns_are_refused_and_named() {
        let refused = |line: &str| match decode_line(line.as_bytes()) {
            Ok(d) => panic!("{line} decoded as {d:?}"),
            Err(e) => e,
        };
        let e = refused(r#"{"key":"k","row":{"a":1,"a":2},"crc32":1}"#);
        assert!(e.contains("column `a` appears twice"), "{e}");
        let e = refused(r#"{"key":"k","row":{"a":18446744073709551615},"crc32":1}"#);
        assert!(
            e.contains("column `a`: integer 18446744073709551615 is out of range"),
            "{e}"
        );
        let e = refused(r#"{"key":"k","row":{"id":1,"b":true},"crc32":1}"#);
        assert!(e.starts_with("column `b`: "), "{e}");
        let e = refused(r#"{"key":"k","row":[1,2],"crc32":1}"#);
        assert!(e.contains("not a tidemark record line"), "{e}");
    }

    /// Values a line's `row` holds in every form the writer uses (plain and tagged) decode to
    /// the same fields as through a JSON value, which is what format 2 readers did before the
    /// direct visitor.
    #[test]
    fn row_columns_decode_as_through_a_json_value() {
        let row = r#"{"n":null,"i":-7,"u":9223372036854775807,"r":1.5,"e":1e300,"t":"x\"y\u00e9","z":{"$real":"nan"},"b":{"$base64":"AAH/"},"x":{"$text_base64":"/w=="}}"#;
        let via_json: Vec<(String, Field)> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(row)
                .expect("json")
                .into_iter()
                .map(|(n, v)| (n, field_from_json_owned(v).expect("a field")))
                .collect();
        let RowJson(direct) = serde_json::from_str(row).expect("row");
        assert_eq!(direct.len(), via_json.len());
        for ((dn, df), (jn, jf)) in direct.into_iter().zip(via_json) {
            assert_eq!(dn, jn);
            assert_eq!(df.1, None, "column {dn}");
            assert!(df.0.expect("a field").same_as(&jf), "column {dn}");
        }
    }

    #[test]
    fn entry_names_are_vetted() {
        assert_eq!(
            parse_entry_name("data/orders/000001.jsonl"),
            Some(EntryName::Part("orders", 1))
        );
        assert_eq!(
            parse_entry_name("data/orders/1000000.jsonl"),
            Some(EntryName::Part("orders", 1_000_000))
        );
        assert_eq!(
            parse_entry_name("values/orders/000003-000012.bin"),
            Some(EntryName::Value("orders", 3, 12))
        );
        assert_eq!(parse_entry_name(MANIFEST_ENTRY), Some(EntryName::Manifest));
        for bad in [
            "data/../000001.jsonl",
            "data/a/1.jsonl",
            "data/a/0000001.jsonl",
            "/data/a/000001.jsonl",
            "x/a/000001.jsonl",
            "data/a/000000.jsonl",
            "data/a/b/000001.jsonl",
            "data/a/000001-000001.bin",
            "values/a/000001.jsonl",
            "values/a/000001-000000.bin",
            "values/a/000001.bin",
            "values/../000001-000001.bin",
            "values/a/b/000001-000001.bin",
        ] {
            assert_eq!(parse_entry_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_name_the_values_kept_apart_and_take_them_back() {
        let stored = |id, chunks, bytes| Stored { id, chunks, bytes };
        // A row: a BLOB and a TEXT column kept apart, an integer in its line.
        let full = Record {
            key: Key(b"7".to_vec()),
            value: Value::Row(Row {
                columns: vec![
                    ("id".into(), Field::Integer(7)),
                    ("img".into(), Field::Blob(vec![0, 1, 2, 3, 4])),
                    ("doc".into(), Field::Text(b"abc".to_vec())),
                ],
                rowid: Some(7),
            }),
        };
        let crc = record_crc32(&full);
        let mut record = full.clone();
        let Value::Row(row) = &mut record.value else {
            unreachable!()
        };
        row.columns[1].1 = Field::Blob(Vec::new());
        row.columns[2].1 = Field::Text(Vec::new());
        let apart = vec![
            Apart {
                place: Place::Column(1),
                stored: stored(1, 2, 5),
            },
            Apart {
                place: Place::Column(2),
                stored: stored(2, 1, 3),
            },
        ];
        let mut out = Vec::new();
        encode_line(&mut out, &Line::Apart(record.clone(), crc, apart.clone()));
        assert_eq!(
            String::from_utf8(out.clone()).expect("UTF-8"),
            format!(
                "{{\"key\":\"7\",\"row\":{{\"id\":7,\"img\":{{\"$entries\":{{\"id\":1,\"chunks\":2,\
                 \"bytes\":5}}}},\"doc\":{{\"$text_entries\":{{\"id\":2,\"chunks\":1,\"bytes\":3}}}}}},\
                 \"rowid\":7,\"crc32\":{crc}}}\n"
            )
        );
        let Decoded::Apart(mut got, want, got_apart) =
            decode_line(&out[..out.len() - 1]).expect("decodes")
        else {
            panic!("a line with values kept apart decodes as such")
        };
        assert_eq!((&got, want, &got_apart), (&record, crc, &apart));
        // Its CRC32 is the whole record's: the line alone does not match it.
        assert!(check_crc(&got, want).is_err());
        place_value(&mut got, Place::Column(1), vec![0, 1, 2, 3, 4]).expect("fits");
        place_value(&mut got, Place::Column(2), b"abc".to_vec()).expect("fits");
        assert_eq!(got, full);
        check_crc(&got, want).expect("fits");
        assert!(place_value(&mut got, Place::Column(0), Vec::new()).is_err());
        assert!(place_value(&mut got, Place::Value, Vec::new()).is_err());

        // A key-value record's value.
        let full = Record {
            key: Key(b"k".to_vec()),
            value: Value::Bytes(vec![0xff; 9]),
        };
        let crc = record_crc32(&full);
        let apart = vec![Apart {
            place: Place::Value,
            stored: stored(4, 1, 9),
        }];
        let empty = Record {
            key: Key(b"k".to_vec()),
            value: Value::Bytes(Vec::new()),
        };
        let mut out = Vec::new();
        encode_line(&mut out, &Line::Apart(empty.clone(), crc, apart.clone()));
        assert_eq!(
            String::from_utf8(out.clone()).expect("UTF-8"),
            format!(
                "{{\"key\":\"k\",\"value_entries\":{{\"id\":4,\"chunks\":1,\"bytes\":9}},\
                 \"crc32\":{crc}}}\n"
            )
        );
        let Decoded::Apart(mut got, want, got_apart) =
            decode_line(&out[..out.len() - 1]).expect("decodes")
        else {
            panic!("a line with its value kept apart decodes as such")
        };
        assert_eq!((&got, &got_apart), (&empty, &apart));
        place_value(&mut got, Place::Value, vec![0xff; 9]).expect("fits");
        check_crc(&got, want).expect("fits");

        // Damaged references are refused, named.
        for (bad, why) in [
            (
                r#"{"key":"k","value_entries":{"id":0,"chunks":1,"bytes":9},"crc32":1}"#,
                "from 1",
            ),
            (
                r#"{"key":"k","value_entries":{"id":1,"chunks":0,"bytes":9},"crc32":1}"#,
                "from 1",
            ),
            (
                r#"{"key":"k","value_entries":{"id":1,"chunks":1},"crc32":1}"#,
                "bytes",
            ),
            (
                r#"{"key":"k","value_entries":{"id":1,"chunks":1,"bytes":9,"x":1},"crc32":1}"#,
                "x",
            ),
            (
                r#"{"key":"k","value_entries":{"id":1,"chunks":1,"bytes":9},"value":1,"crc32":1}"#,
                "exactly one",
            ),
            (
                r#"{"key":"k","row":{"a":{"$entries":{"id":1,"chunks":1,"bytes":9},"b":1}},"crc32":1}"#,
                "another member",
            ),
        ] {
            let e = decode_line(bad.as_bytes()).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
