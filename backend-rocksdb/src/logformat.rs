//! RocksDB's log format, which both WAL files ([`crate::walfiles`]) and the MANIFEST
//! ([`crate::manifest`]) are written in: one parser of physical records and one assembler of
//! logical records serve both readers.
//!
//! Format (RocksDB's `db/log_format.h`, `db/log_writer.cc`, `db/log_reader.cc`): the file is a
//! sequence of 32 KiB blocks. A block holds physical records, each a header and its payload: a
//! masked CRC32C (4 bytes, little-endian) of the type byte and what follows it, the payload's
//! length (2 bytes), the type (1 byte), and for the recyclable types the number of the log the
//! record was written to (4 bytes more: an 11-byte header). A record never crosses a block:
//! when fewer bytes than a header are left, the block ends in zeros (its trailer). A logical
//! record (a write batch, a version edit) is one FULL record, or a FIRST, any MIDDLE and a
//! LAST fragment, one after another. Types 9 to 11 carry metadata (WAL compression, user-defined
//! timestamp sizes), and a type with bit 0x80 set may be skipped by a reader that does not know
//! it. A zero header is preallocated space (nothing written yet); a record that goes past the
//! bytes read is still being written, or was cut short by a crash.

/// Bytes in a block.
pub(crate) const BLOCK: usize = 32 * 1024;

/// A header's bytes, recyclable types aside.
const HEADER: usize = 7;

/// A recyclable type's header: the log number follows the type.
const RECYCLABLE_HEADER: usize = 11;

/// What a physical record's type says it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A piece of a logical record; `recyclable` for the types of a recycled log
    /// (`recycle_log_file_num`), which carry the log's number.
    Data { piece: Piece, recyclable: bool },
    /// WAL compression's type (`wal_compression`): the records after it are compressed.
    Compression,
    /// User-defined timestamp sizes, the plain and the recyclable type.
    TimestampSizes,
    /// A type with the ignorable bit (0x80) set.
    Ignorable,
    /// A type RocksDB does not define.
    Unknown(u8),
}

/// Which piece of a logical record a data record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    Full,
    First,
    Middle,
    Last,
}

impl Kind {
    fn of(t: u8) -> Kind {
        let data = |piece, recyclable| Kind::Data { piece, recyclable };
        match t {
            1 => data(Piece::Full, false),
            2 => data(Piece::First, false),
            3 => data(Piece::Middle, false),
            4 => data(Piece::Last, false),
            5 => data(Piece::Full, true),
            6 => data(Piece::First, true),
            7 => data(Piece::Middle, true),
            8 => data(Piece::Last, true),
            9 => Kind::Compression,
            10 | 11 => Kind::TimestampSizes,
            t if t & 0x80 != 0 => Kind::Ignorable,
            t => Kind::Unknown(t),
        }
    }

    /// The header's length for type `t`: the recyclable types add the log number.
    fn header(t: u8) -> usize {
        // 131: the recyclable predecessor-WAL record (an ignorable type).
        if matches!(t, 5..=8 | 11 | 131) {
            RECYCLABLE_HEADER
        } else {
            HEADER
        }
    }
}

/// What is at a position in a log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Physical<'a> {
    /// A physical record whose checksum holds, `len` bytes with its header.
    Record {
        kind: Kind,
        payload: &'a [u8],
        len: usize,
    },
    /// The block's trailer: the next record is at the next block.
    Trailer,
    /// Nothing more has been written here (preallocated zeros, or a record cut short).
    End,
}

/// The physical record at the start of `rest`: the bytes read from its position up to the end
/// of its block or of the bytes read, whichever comes first. `left` is how many bytes of the
/// block are left from the position (so a record that goes past `rest` but not past `left` is
/// one not yet whole). An error says what is wrong with the record.
pub(crate) fn physical(rest: &[u8], left: usize) -> Result<Physical<'_>, &'static str> {
    if left < HEADER {
        return Ok(Physical::Trailer);
    }
    let Some(h) = rest.get(..HEADER) else {
        return Ok(Physical::End);
    };
    let t = h[6];
    let size = usize::from(u16::from_le_bytes([h[4], h[5]]));
    if t == 0 && size == 0 {
        return Ok(Physical::End);
    }
    let len = Kind::header(t) + size;
    if len > left {
        return Err("a record that crosses its block");
    }
    let Some(record) = rest.get(..len) else {
        return Ok(Physical::End);
    };
    let want = unmask(u32::from_le_bytes([h[0], h[1], h[2], h[3]]));
    // Over the type, a recyclable record's log number and the payload, which follow one
    // another.
    if crc32c(&record[6..]) != want {
        return Err("a record that does not match its checksum");
    }
    Ok(Physical::Record {
        kind: Kind::of(t),
        payload: &record[len - size..],
        len,
    })
}

/// A logical record and the offset of its first physical record.
pub(crate) type Record = (u64, Vec<u8>);

/// Puts logical records together from their pieces, in order, each with the offset of its
/// first physical record.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    pending: Option<Record>,
}

impl Assembler {
    /// Adds the piece whose physical record is at offset `at`; the logical record it ends, if
    /// it ends one. A piece out of place (a FULL or FIRST inside a fragmented record, a MIDDLE
    /// or LAST outside one) is an error, as RocksDB's reader reports it.
    pub(crate) fn add(
        &mut self,
        at: u64,
        piece: Piece,
        payload: &[u8],
    ) -> Result<Option<Record>, &'static str> {
        match piece {
            Piece::Full | Piece::First if self.pending.is_some() => {
                Err("a record that starts inside a fragmented one")
            }
            Piece::Full => Ok(Some((at, payload.to_vec()))),
            Piece::First => {
                self.pending = Some((at, payload.to_vec()));
                Ok(None)
            }
            Piece::Middle | Piece::Last => {
                let Some((_, record)) = self.pending.as_mut() else {
                    return Err("a fragment that continues nothing");
                };
                record.extend_from_slice(payload);
                Ok(if piece == Piece::Last {
                    self.pending.take()
                } else {
                    None
                })
            }
        }
    }

    /// Whether a fragmented record is under way.
    pub(crate) fn pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// RocksDB's stored checksum, unmasked (`crc32c::Unmask`).
pub(crate) fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(0xa282_ead8);
    rot.rotate_left(15)
}

/// CRC32C (Castagnoli) of `data` (with the CPU's instructions where it has them).
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// A log as RocksDB's `log::Writer` writes it, for tests: each payload as one logical record
/// cut into fragments at block ends, with a block's last bytes zeroed when a header does not
/// fit, from `start` (an offset in the file, for the first block's room).
#[cfg(test)]
pub(crate) fn write(payloads: &[&[u8]], start: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = start;
    for payload in payloads {
        let mut rest: &[u8] = payload;
        let mut first = true;
        loop {
            let left = BLOCK - at % BLOCK;
            if left < HEADER {
                out.resize(out.len() + left, 0);
                at += left;
                continue;
            }
            let n = rest.len().min(left - HEADER);
            let last = n == rest.len();
            let t: u8 = match (first, last) {
                (true, true) => 1,
                (true, false) => 2,
                (false, false) => 3,
                (false, true) => 4,
            };
            let typed: Vec<u8> = std::iter::once(t)
                .chain(rest[..n].iter().copied())
                .collect();
            let masked = crc32c(&typed).rotate_right(15).wrapping_add(0xa282_ead8);
            out.extend_from_slice(&masked.to_le_bytes());
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.extend_from_slice(&typed);
            at += HEADER + n;
            rest = &rest[n..];
            first = false;
            if last {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every logical record of `log` (from offset 0) and where reading stopped, as the
    /// readers walk it.
    fn walk(log: &[u8]) -> (Vec<Record>, Result<(), &'static str>) {
        let mut out = Vec::new();
        let mut asm = Assembler::default();
        let mut pos = 0;
        loop {
            let left = BLOCK - pos % BLOCK;
            let rest = &log[pos.min(log.len())..log.len().min(pos + left)];
            match physical(rest, left) {
                Ok(Physical::Trailer) => pos += left,
                Ok(Physical::End) => return (out, Ok(())),
                Ok(Physical::Record { kind, payload, len }) => {
                    if let Kind::Data { piece, .. } = kind {
                        match asm.add(pos as u64, piece, payload) {
                            Ok(Some(r)) => out.push(r),
                            Ok(None) => {}
                            Err(e) => return (out, Err(e)),
                        }
                    }
                    pos += len;
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }

    #[test]
    fn crc32c_is_castagnolis() {
        // RFC 3720's check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(
            unmask(0x1234_5678_u32.rotate_right(15).wrapping_add(0xa282_ead8)),
            0x1234_5678
        );
    }

    #[test]
    fn records_come_whole_across_blocks_and_trailers() {
        // A record that ends 3 bytes before a block's end (a trailer follows), one of two
        // blocks and more (FIRST, MIDDLE, LAST), and small ones.
        let a = vec![b'a'; BLOCK - HEADER - 3];
        let b: Vec<u8> = (0..2 * BLOCK + 100).map(|i| i as u8).collect();
        let payloads: [&[u8]; 4] = [&a, &b, b"c", b""];
        let log = write(&payloads, 0);
        let (records, end) = walk(&log);
        assert_eq!(end, Ok(()));
        let got: Vec<&[u8]> = records.iter().map(|(_, r)| &r[..]).collect();
        assert_eq!(got, payloads);
        assert_eq!(
            records[1].0, BLOCK as u64,
            "b starts after a's block's trailer"
        );
        // Cut anywhere, the records before the cut come whole and nothing else does.
        for (cut, whole) in [
            (1, 0),
            (HEADER + 5, 0),
            (BLOCK - 2, 1),
            (BLOCK + 9, 1),
            (3 * BLOCK + 40, 1),
            (log.len() - 1, 3),
        ] {
            let (records, end) = walk(&log[..cut]);
            assert_eq!(end, Ok(()), "cut at {cut}");
            let got: Vec<&[u8]> = records.iter().map(|(_, r)| &r[..]).collect();
            assert_eq!(got, payloads[..whole], "cut at {cut}");
        }
        // Preallocated zeros end the log.
        let mut padded = log.clone();
        padded.resize(padded.len() + 100, 0);
        assert_eq!(walk(&padded).0.len(), 4);
    }

    #[test]
    fn damage_and_misplaced_pieces_are_errors() {
        let b: Vec<u8> = (0..BLOCK + 100).map(|i| i as u8).collect();
        let log = write(&[b"first", &b], 0);
        // A flipped byte in a payload, then in a length.
        for at in [HEADER + 1, HEADER + 5 + 4] {
            let mut bad = log.clone();
            bad[at] ^= 1;
            let (records, end) = walk(&bad);
            assert!(end.is_err(), "flip at {at}: {records:?}");
        }
        // A length that runs past its block.
        let mut bad = write(&[b"x"], 0);
        bad[4..6].copy_from_slice(&(BLOCK as u16).to_le_bytes());
        bad.resize(BLOCK, 0);
        assert_eq!(walk(&bad).1, Err("a record that crosses its block"));
        // The LAST fragment of b without its FIRST, and a FULL inside a fragmented record.
        let mut asm = Assembler::default();
        assert!(asm.add(0, Piece::Last, b"x").is_err());
        assert_eq!(asm.add(0, Piece::First, b"x"), Ok(None));
        assert!(asm.pending());
        assert!(asm.add(9, Piece::Full, b"y").is_err());
        // The recyclable types' header carries the log number, inside the checksum.
        let mut rec = Vec::new();
        let typed = [5u8, 0, 0, 0, 7, b'h', b'i'];
        let masked = crc32c(&typed).rotate_right(15).wrapping_add(0xa282_ead8);
        rec.extend_from_slice(&masked.to_le_bytes());
        rec.extend_from_slice(&2u16.to_le_bytes());
        rec.extend_from_slice(&typed);
        assert_eq!(
            physical(&rec, BLOCK),
            Ok(Physical::Record {
                kind: Kind::Data {
                    piece: Piece::Full,
                    recyclable: true
                },
                payload: b"hi",
                len: 13
            })
        );
    }
}
