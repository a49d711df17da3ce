//! Decoding RocksDB write batches from their serialized form (`WriteBatch::data()`).
//!
//! The C API's batch handler knows only Put, Delete and Merge and silently skips or stops at
//! anything else (SingleDelete, DeleteRange, wide columns, blob indexes, timed puts). This
//! decoder reads the format of RocksDB's `db/write_batch.cc` itself and names every record it
//! cannot turn into a change, so nothing is ever dropped silently.

/// One sequence-consuming record of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalOp<'a> {
    /// `Put` (column family, key, value).
    Put(u32, &'a [u8], &'a [u8]),
    /// `Delete` or `SingleDelete` (column family, key).
    Delete(u32, &'a [u8]),
    /// `Merge` (column family, key): the result must be read from a snapshot.
    Merge(u32, &'a [u8]),
    /// `DeleteRange` (column family, begin, end): cannot be turned into keys from the WAL.
    DeleteRange(u32, &'a [u8], &'a [u8]),
}

/// A decoded batch: its first sequence number and its records, one sequence number each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// The sequence number of the first record.
    pub sequence: u64,
    /// The records in order; record `i` has sequence `sequence + i`.
    pub ops: Vec<WalOp<'a>>,
}

/// Why a write batch could not be decoded into changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A record of a type that is no key change this decoder knows (its tag).
    Unsupported(u8),
    /// A batch that does not parse (truncated, a count that does not match).
    Damaged(String),
}

impl DecodeError {
    /// Whether the record is a wide-column entity (`PutEntity`): RocksDB's C API reads only an
    /// entity's default column, so no backup through it can hold the entity.
    pub fn is_wide_column(&self) -> bool {
        matches!(self, DecodeError::Unsupported(0x16 | 0x17))
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Unsupported(tag) => {
                write!(f, "record type 0x{tag:02x} ({})", type_name(*tag))
            }
            DecodeError::Damaged(why) => f.write_str(why),
        }
    }
}

impl From<String> for DecodeError {
    fn from(why: String) -> Self {
        DecodeError::Damaged(why)
    }
}

/// Decodes a serialized write batch. Errors name the record type or the damage.
pub fn decode(data: &[u8]) -> Result<Batch<'_>, DecodeError> {
    if data.len() < 12 {
        return Err(DecodeError::Damaged(format!(
            "write batch of {} bytes is shorter than its header",
            data.len()
        )));
    }
    let sequence = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
    let mut r = Reader { data, pos: 12 };
    let mut ops = Vec::with_capacity(count.min(1 << 16));
    while r.pos < data.len() {
        let tag = r.byte()?;
        let op = match tag {
            0x1 => WalOp::Put(0, r.slice()?, r.slice()?),
            0x5 => {
                let cf = r.varint32()?;
                WalOp::Put(cf, r.slice()?, r.slice()?)
            }
            0x0 | 0x7 => WalOp::Delete(0, r.slice()?),
            0x4 | 0x8 => {
                let cf = r.varint32()?;
                WalOp::Delete(cf, r.slice()?)
            }
            0x2 => {
                let (k, _) = (r.slice()?, r.slice()?);
                WalOp::Merge(0, k)
            }
            0x6 => {
                let cf = r.varint32()?;
                let (k, _) = (r.slice()?, r.slice()?);
                WalOp::Merge(cf, k)
            }
            0xF => WalOp::DeleteRange(0, r.slice()?, r.slice()?),
            0xE => {
                let cf = r.varint32()?;
                WalOp::DeleteRange(cf, r.slice()?, r.slice()?)
            }
            0x3 => {
                r.slice()?; // LogData: application blob, no sequence number
                continue;
            }
            0xD => continue, // Noop
            other => return Err(DecodeError::Unsupported(other)),
        };
        ops.push(op);
    }
    if ops.len() != count {
        return Err(DecodeError::Damaged(format!(
            "write batch at sequence {sequence} declares {count} records but holds {}",
            ops.len()
        )));
    }
    Ok(Batch { sequence, ops })
}

fn type_name(tag: u8) -> &'static str {
    match tag {
        0x9 | 0xA | 0xB | 0xC | 0x12 | 0x13 | 0x15 => "two-phase-commit transaction marker",
        0x10 | 0x11 => "BlobDB blob index",
        0x14 => "deletion with user timestamp",
        0x16 | 0x17 => "wide-column entity (PutEntity)",
        0x18 | 0x19 => "timed put (TimedPut)",
        _ => "unknown",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| format!("write batch truncated at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint32(&mut self) -> Result<u32, String> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            v |= u32::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("bad varint at byte {}", self.pos))
    }

    fn slice(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint32()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("write batch truncated in a {len}-byte field"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&data);
        }
    }

    #[test]
    fn unknown_types_are_named() {
        let mut data = vec![0u8; 12];
        data[8] = 1;
        data.push(0x16);
        let err = decode(&data).expect_err("wide columns are refused");
        assert!(err.is_wide_column());
        assert!(err.to_string().contains("PutEntity"), "{err}");
    }
}
