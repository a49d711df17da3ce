//! A fast reader for the record lines of archive format 2, in the shape [`super::v2`]'s encoder
//! writes them (docs/FORMAT.md §3.1): the members in the encoder's order, no whitespace, keys and
//! texts as JSON strings with the short escapes, integers and nulls as row columns.
//!
//! A restore decodes every line of a backup, and decoding through serde's derived visitors was
//! half of a SQLite restore's CPU time (a row's text value is JSON itself, so its quotes are
//! escaped). [`read`] takes the lines it recognises and gives up (`None`) on anything else,
//! which then goes through serde: what it accepts, serde accepts with the same result (a test
//! compares the two on encoded and on damaged lines), so errors keep serde's wording.

use crate::model::{Field, Key, Row, Value};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::value::RawValue;

/// A line's key and, for a put, its value and stored record CRC32 (`None`: a deletion). The
/// CRC32 is not checked here.
pub(super) type Read = (Key, Option<(Value, u32)>);

/// Reads a line in the encoder's shape; `None` for anything else (which serde then reads, or
/// refuses with its reason).
pub(super) fn read(line: &[u8]) -> Option<Read> {
    // Control characters are never raw in a JSON string, and outside strings the encoder
    // writes no whitespace; valid UTF-8 throughout is what serde asks of its strings.
    if line.iter().any(|&b| b < 0x20) {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let mut c = Cursor { s: line, at: 0 };
    c.expect(b"{\"key")?;
    let key = if c.eat(b"\":") {
        c.string()?
    } else if c.eat(b"_base64\":") {
        B64.decode(c.plain_string()?).ok()?
    } else {
        return None;
    };
    c.expect(b",\"")?;
    if c.eat(b"deleted\":true}") {
        return c.at_end().then_some((Key(key), None));
    }
    // A put ends in `,"crc32":N}`: read from the end, it also bounds a raw JSON value.
    let (body_end, crc) = crc_suffix(line)?;
    if body_end < c.at {
        return None;
    }
    c.s = &line[..body_end];
    let value = if c.eat(b"value\":") {
        // Between ASCII bytes (`:` and `,`), so on character boundaries of the checked text.
        let raw = text.get(c.at..body_end)?;
        let parsed: &RawValue = serde_json::from_str(raw).ok()?;
        if parsed.get().len() != raw.len() {
            return None; // whitespace around it: serde's path decides
        }
        c.at = c.s.len();
        Value::Bytes(raw.as_bytes().to_vec())
    } else if c.eat(b"value_utf8\":") {
        Value::Bytes(c.string()?)
    } else if c.eat(b"value_base64\":") {
        Value::Bytes(B64.decode(c.plain_string()?).ok()?)
    } else if c.eat(b"row\":{") {
        let mut columns: Vec<(String, Field)> = Vec::with_capacity(4);
        if !c.eat(b"}") {
            loop {
                let name = String::from_utf8(c.string()?).ok()?;
                if columns.iter().any(|(n, _)| *n == name) {
                    return None; // serde refuses it, naming the column
                }
                c.expect(b":")?;
                let field = c.field()?;
                columns.push((name, field));
                if c.eat(b"}") {
                    break;
                }
                c.expect(b",")?;
            }
        }
        let rowid = if c.eat(b",\"rowid\":") {
            Some(c.integer()?)
        } else {
            None
        };
        Value::Row(Row { columns, rowid })
    } else {
        return None;
    };
    c.at_end().then_some((Key(key), Some((value, crc))))
}

/// Where `,"crc32":N}` starts at the end of `line`, and N.
fn crc_suffix(line: &[u8]) -> Option<(usize, u32)> {
    let body = line.strip_suffix(b"}")?;
    let digits = body.len() - body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let crc = unsigned(&body[digits..])?;
    let start = body[..digits].strip_suffix(b",\"crc32\":")?.len();
    Some((start, u32::try_from(crc).ok()?))
}

/// Decimal digits as JSON writes an unsigned integer (no leading zero), if they fit a `u64`.
fn unsigned(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => None,
        [b'0', _, ..] => None,
        _ => digits.iter().try_fold(0u64, |v, d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        }),
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Steps over `lit` if the text continues with it.
    fn eat(&mut self, lit: &[u8]) -> bool {
        let found = self.s[self.at..].starts_with(lit);
        if found {
            self.at += lit.len();
        }
        found
    }

    fn expect(&mut self, lit: &[u8]) -> Option<()> {
        self.eat(lit).then_some(())
    }

    fn at_end(&self) -> bool {
        self.at == self.s.len()
    }

    /// A JSON string's bytes, unescaped; `None` for `\u` escapes (serde decides those).
    fn string(&mut self) -> Option<Vec<u8>> {
        self.expect(b"\"")?;
        let rest = &self.s[self.at..];
        // One pass, byte by byte: a row's text is often JSON itself, with an escaped quote
        // every few bytes, where a search per escape cost more than it skipped.
        let (mut out, mut run, mut i) = (Vec::new(), 0, 0);
        loop {
            match *rest.get(i)? {
                b'"' => {
                    if run == 0 {
                        out = rest[..i].to_vec();
                    } else {
                        out.extend_from_slice(&rest[run..i]);
                    }
                    self.at += i + 1;
                    return Some(out);
                }
                b'\\' => {
                    if out.capacity() == 0 {
                        // The unescaped text is shorter than what is left of the line.
                        out.reserve_exact(rest.len());
                    }
                    out.extend_from_slice(&rest[run..i]);
                    out.push(match rest.get(i + 1)? {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => return None,
                    });
                    i += 2;
                    run = i;
                }
                _ => i += 1,
            }
        }
    }

    /// A JSON string without escapes (base64), borrowed.
    fn plain_string(&mut self) -> Option<&[u8]> {
        self.expect(b"\"")?;
        let rest = &self.s[self.at..];
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.at += end + 1;
        Some(&rest[..end])
    }

    /// A JSON integer that fits an `i64`; `None` for anything serde would read otherwise
    /// (`-0` and integers beyond `i64` as reals, fractions and exponents).
    fn integer(&mut self) -> Option<i64> {
        let negative = self.eat(b"-");
        let rest = &self.s[self.at..];
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let v = unsigned(&rest[..len])?;
        self.at += len;
        match negative {
            false => i64::try_from(v).ok(),
            true if v == 0 || v > 1 << 63 => None,
            true => Some((v as i64).wrapping_neg()),
        }
    }

    /// A column's value: text, an integer or null (anything else is left to serde).
    fn field(&mut self) -> Option<Field> {
        match self.s.get(self.at)? {
            b'"' => self.string().map(Field::Text),
            b'n' => self.eat(b"null").then_some(Field::Null),
            b'-' | b'0'..=b'9' => self.integer().map(Field::Integer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::v2::{encode_line, read_line, Line};
    use super::*;
    use crate::document::record_crc32;
    use crate::model::Record;
    use proptest::prelude::*;

    fn encoded(line: &Line) -> Vec<u8> {
        let mut out = Vec::new();
        encode_line(&mut out, line);
        out.pop();
        out
    }

    fn put(key: Vec<u8>, value: Value) -> Line {
        let r = Record {
            key: Key(key),
            value,
        };
        let crc = record_crc32(&r);
        Line::Put(r, crc)
    }

    /// Whatever the fast reader accepts, serde's reader accepts with the same result.
    fn agrees(line: &[u8]) -> Option<Read> {
        let fast = read(line)?;
        let slow = read_line(line).unwrap_or_else(|e| {
            panic!(
                "the fast reader took a line serde refuses ({e}): {}",
                String::from_utf8_lossy(line)
            )
        });
        assert_eq!(fast, slow, "{}", String::from_utf8_lossy(line));
        Some(fast)
    }

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            Just(Field::Null),
            any::<i64>().prop_map(Field::Integer),
            prop_oneof![Just(0.0), Just(-0.0), any::<f64>()].prop_map(Field::Real),
            prop::collection::vec(any::<u8>(), 0..40).prop_map(Field::Text),
            ".{0,40}".prop_map(|s: String| Field::Text(s.into_bytes())),
            "[\"\\\\/a-z{}:,\t\n]{0,40}".prop_map(|s: String| Field::Text(s.into_bytes())),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(Field::Blob),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..60).prop_map(Value::Bytes),
            "[\"\\\\a-z0-9{}:,\\[\\] ]{0,60}".prop_map(|s: String| Value::Bytes(s.into_bytes())),
            Just(Value::Bytes(br#"{"a":[1,2.5,"x\"y"],"b":null}"#.to_vec())),
            Just(Value::Bytes(b"null".to_vec())),
            Just(Value::Bytes(b"-0".to_vec())),
            (
                prop::collection::btree_map("[a-z\"\\\\]{0,6}", field(), 0..5),
                any::<Option<i64>>()
            )
                .prop_map(|(columns, rowid)| Value::Row(Row {
                    columns: columns.into_iter().collect(),
                    rowid
                })),
        ]
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..12),
            "[0-9a-z\"\\\\/]{0,12}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The encoder writes column values byte for byte as serde_json writes them through
        /// `field_to_json`, as it did before it wrote text, integers and nulls itself.
        #[test]
        fn fields_are_written_as_serde_json_writes_them(f in field()) {
            let mut out = Vec::new();
            super::super::v2::json_field(&mut out, &f);
            prop_assert_eq!(
                out,
                serde_json::to_vec(&crate::document::field_to_json(&f)).expect("serializes")
            );
        }

        /// Every line the encoder writes reads the same both ways.
        #[test]
        fn encoded_lines_read_the_same_both_ways(key in key(), value in value(), delete: bool) {
            let line = if delete { Line::Delete(Key(key)) } else { put(key, value) };
            let bytes = encoded(&line);
            let slow = read_line(&bytes).expect("serde reads the encoder's lines");
            if let Some(fast) = agrees(&bytes) {
                prop_assert_eq!(fast, slow);
            }
        }

        /// A damaged line (bytes changed, cut or inserted) is never read differently: the
        /// fast reader takes it only if serde takes it the same way.
        #[test]
        fn damaged_lines_are_refused_or_read_as_serde_reads_them(
            key in key(),
            value in value(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
        ) {
            let mut bytes = encoded(&put(key, value));
            let specials = b"\"\\{}:,0-.e9nu \t/";
            for (at, how, b) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                let b = if b % 2 == 0 { specials[usize::from(b) % specials.len()] } else { b };
                match how {
                    0 => bytes[i] = b,
                    1 => { bytes.remove(i); }
                    2 => bytes.insert(i, b),
                    _ => bytes.truncate(i),
                }
            }
            agrees(&bytes);
        }
    }

    /// The fast reader does take the common lines (it would be no use otherwise): text keys,
    /// rows of integers, texts (with escapes) and nulls, JSON values, deletions.
    #[test]
    fn the_encoders_common_lines_take_the_fast_path() {
        let row = Value::Row(Row {
            columns: vec![
                ("id".into(), Field::Integer(-9_223_372_036_854_775_808)),
                ("doc".into(), Field::Text(br#"{"a":"b\c/d"}"#.to_vec())),
                ("z".into(), Field::Null),
            ],
            rowid: Some(7),
        });
        for line in [
            put(b"17".to_vec(), row),
            put(b"k".to_vec(), Value::Bytes(br#"{"n":[1,2]}"#.to_vec())),
            put(b"k".to_vec(), Value::Bytes(b"null".to_vec())),
            put(b"k".to_vec(), Value::Bytes(b"plain \"text\"".to_vec())),
            put(vec![0, 255], Value::Bytes(vec![1, 2, 255])),
            Line::Delete(Key(b"gone".to_vec())),
        ] {
            let bytes = encoded(&line);
            assert!(
                agrees(&bytes).is_some(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
