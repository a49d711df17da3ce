//! Zip files of many small entries in constant memory.
//!
//! The `zip` crate's writer keeps about 550 bytes of metadata per entry until it writes the
//! central directory, and its reader parses the whole central directory before the first entry:
//! both measured about 600 MiB for an archive of a million records. [`StreamWriter`] spools the
//! central directory to a temporary file as it goes and needs no seeking (so it streams into a
//! multipart upload); [`read_entries`] reads the entries in file order from their local headers
//! and then checks the central directory against them, holding one entry at a time.
//!
//! What is written (docs/FORMAT.md §3): local headers carry the CRC32 and sizes (no data
//! descriptors), names are UTF-8 (flag bit 11), entries are regular files with mode 0644, and
//! zip64 records are used where sizes, offsets or the entry count need them.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
/// "Made by" Unix (3), spec version 4.5.
const MADE_BY: u16 = (3 << 8) | 45;
/// 1980-01-01 00:00 in MS-DOS form: entries carry no time (the manifest does).
const DOS_DATE: u16 = (1 << 5) | 1;
const REGULAR_0644: u32 = 0o100_644 << 16;
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const MAX32: u64 = u32::MAX as u64;

/// How entries are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Stored (method 0).
    Stored,
    /// Deflate (method 8) at a level 1–9.
    Deflate(u32),
    /// Zstandard (method 93) at a level.
    Zstd(i32),
}

impl Method {
    fn code(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflate(_) => 8,
            Method::Zstd(_) => 93,
        }
    }
}

/// Writes a zip file entry by entry; see the module documentation.
pub struct StreamWriter<W: Write> {
    out: W,
    offset: u64,
    entries: u64,
    central: BufWriter<File>,
    central_len: u64,
    packer: Packer,
    packed: Vec<u8>,
}

/// What the zip headers say of an entry compressed by a [`Packer`].
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    /// CRC32 of the uncompressed bytes.
    pub crc: u32,
    /// Uncompressed size.
    pub size: u64,
    /// How the bytes were compressed (an empty entry is always stored).
    pub method: Method,
}

/// Compresses entries with one method, reusing its context: one per thread.
pub struct Packer {
    method: Method,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Packer {
    /// A packer for `method`.
    pub fn new(method: Method) -> io::Result<Self> {
        let zstd = match method {
            Method::Zstd(level) => Some(zstd::bulk::Compressor::new(level)?),
            _ => None,
        };
        Ok(Packer { method, zstd })
    }

    /// Compresses `data` into `out` (cleared first; left empty when the entry is stored, whose
    /// bytes are `data` itself).
    pub fn pack_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<Packed> {
        out.clear();
        let method = if data.is_empty() {
            Method::Stored
        } else {
            self.method
        };
        match method {
            Method::Stored => {}
            Method::Deflate(level) => {
                let mut enc = flate2::write::DeflateEncoder::new(
                    std::mem::take(out),
                    flate2::Compression::new(level),
                );
                enc.write_all(data)?;
                *out = enc.finish()?;
            }
            Method::Zstd(_) => {
                let z = self
                    .zstd
                    .as_mut()
                    .ok_or_else(|| io::Error::other("no zstd"))?;
                out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                z.compress_to_buffer(data, out)?;
            }
        }
        Ok(Packed {
            crc: crc32fast::hash(data),
            size: data.len() as u64,
            method,
        })
    }
}

impl<W: Write> StreamWriter<W> {
    /// A writer into `out` compressing every entry with `method`.
    pub fn new(out: W, method: Method) -> io::Result<Self> {
        Ok(StreamWriter {
            out,
            offset: 0,
            entries: 0,
            central: BufWriter::new(tempfile::tempfile()?),
            central_len: 0,
            packer: Packer::new(method)?,
            packed: Vec::new(),
        })
    }

    /// Adds one entry, compressing it here.
    pub fn add(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.packed);
        let entry = self.packer.pack_into(data, &mut buf)?;
        let r = if matches!(entry.method, Method::Stored) {
            self.add_packed(name, &entry, data)
        } else {
            self.add_packed(name, &entry, &buf)
        };
        self.packed = buf;
        r
    }

    /// Adds one entry compressed elsewhere (e.g. on another thread, by a [`Packer`]).
    pub fn add_packed(&mut self, name: &str, entry: &Packed, packed: &[u8]) -> io::Result<()> {
        let (crc, method) = (entry.crc, entry.method);
        let data_len = entry.size;
        let (size, csize) = (data_len, packed.len() as u64);
        let name = name.as_bytes();
        let name_len = u16::try_from(name.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry name too long"))?;
        let large = size >= MAX32 || csize >= MAX32;
        let needed: u16 = if large || matches!(method, Method::Zstd(_)) {
            45
        } else if matches!(method, Method::Deflate(_)) {
            20
        } else {
            10
        };
        let flags: u16 = if name.is_ascii() { 0 } else { 1 << 11 };

        let mut local = Vec::with_capacity(30 + name.len() + 20);
        put32(&mut local, LOCAL);
        put16(&mut local, needed);
        put16(&mut local, flags);
        put16(&mut local, method.code());
        put16(&mut local, 0);
        put16(&mut local, DOS_DATE);
        put32(&mut local, crc);
        let (s32, c32) = if large {
            (u32::MAX, u32::MAX)
        } else {
            (size as u32, csize as u32)
        };
        put32(&mut local, c32);
        put32(&mut local, s32);
        put16(&mut local, name_len);
        put16(&mut local, if large { 20 } else { 0 });
        local.extend_from_slice(name);
        if large {
            put16(&mut local, 1);
            put16(&mut local, 16);
            put64(&mut local, size);
            put64(&mut local, csize);
        }
        self.out.write_all(&local)?;
        self.out.write_all(packed)?;

        let mut extra = Vec::new();
        if large {
            extra.extend_from_slice(&size.to_le_bytes());
            extra.extend_from_slice(&csize.to_le_bytes());
        }
        let far = self.offset >= MAX32;
        if far {
            extra.extend_from_slice(&self.offset.to_le_bytes());
        }
        let mut central = Vec::with_capacity(46 + name.len() + 28);
        put32(&mut central, CENTRAL);
        put16(&mut central, MADE_BY);
        put16(&mut central, needed.max(if far { 45 } else { 0 }));
        put16(&mut central, flags);
        put16(&mut central, method.code());
        put16(&mut central, 0);
        put16(&mut central, DOS_DATE);
        put32(&mut central, crc);
        put32(&mut central, c32);
        put32(&mut central, s32);
        put16(&mut central, name_len);
        put16(
            &mut central,
            if extra.is_empty() {
                0
            } else {
                4 + extra.len() as u16
            },
        );
        put16(&mut central, 0); // comment
        put16(&mut central, 0); // disk
        put16(&mut central, 0); // internal attributes
        put32(&mut central, REGULAR_0644);
        put32(
            &mut central,
            if far { u32::MAX } else { self.offset as u32 },
        );
        central.extend_from_slice(name);
        if !extra.is_empty() {
            put16(&mut central, 1);
            put16(&mut central, extra.len() as u16);
            central.extend_from_slice(&extra);
        }
        self.central.write_all(&central)?;
        self.central_len += central.len() as u64;
        self.offset += local.len() as u64 + csize;
        self.entries += 1;
        Ok(())
    }

    /// Writes the central directory and the end records; returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let cd_offset = self.offset;
        let mut spool = self.central.into_inner().map_err(|e| e.into_error())?;
        spool.seek(SeekFrom::Start(0))?;
        let copied = io::copy(&mut spool, &mut self.out)?;
        if copied != self.central_len {
            return Err(io::Error::other(
                "the central directory spool was cut short",
            ));
        }
        let zip64 = self.entries >= 0xFFFF || cd_offset >= MAX32 || self.central_len >= MAX32;
        let mut end = Vec::with_capacity(98);
        if zip64 {
            let at = cd_offset + self.central_len;
            put32(&mut end, EOCD64);
            put64(&mut end, 44);
            put16(&mut end, MADE_BY);
            put16(&mut end, 45);
            put32(&mut end, 0);
            put32(&mut end, 0);
            put64(&mut end, self.entries);
            put64(&mut end, self.entries);
            put64(&mut end, self.central_len);
            put64(&mut end, cd_offset);
            put32(&mut end, LOCATOR64);
            put32(&mut end, 0);
            put64(&mut end, at);
            put32(&mut end, 1);
        }
        put32(&mut end, EOCD);
        put16(&mut end, 0);
        put16(&mut end, 0);
        let n16 = if zip64 { 0xFFFF } else { self.entries as u16 };
        put16(&mut end, n16);
        put16(&mut end, n16);
        put32(
            &mut end,
            if zip64 {
                u32::MAX
            } else {
                self.central_len as u32
            },
        );
        put32(&mut end, if zip64 { u32::MAX } else { cd_offset as u32 });
        put16(&mut end, 0);
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Reads `N` little-endian bytes at `at` of `b`.
fn le<const N: usize>(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x[..N].copy_from_slice(&b[at..at + N]);
    u64::from_le_bytes(x)
}

/// A running digest of what the central directory must repeat about each entry.
#[derive(Default)]
struct Ledger {
    hash: crc32fast::Hasher,
    count: u64,
}

impl Ledger {
    fn note(&mut self, name: &[u8], offset: u64, crc: u32, csize: u64, size: u64) {
        for x in [offset, u64::from(crc), csize, size, name.len() as u64] {
            self.hash.update(&x.to_le_bytes());
        }
        self.hash.update(name);
        self.count += 1;
    }
}

/// Why a zip file was refused, with the entry it concerns (if any).
#[derive(Debug)]
pub struct Refused {
    /// The entry's name, when the problem is in one entry.
    pub entry: Option<String>,
    /// What is wrong.
    pub cause: String,
}

fn refused(entry: Option<&str>, cause: impl Into<String>) -> Refused {
    Refused {
        entry: entry.map(str::to_string),
        cause: cause.into(),
    }
}

/// Receives each entry's name and content.
pub type Visitor<'a, E> = dyn FnMut(&str, Vec<u8>) -> Result<(), E> + 'a;

/// Reads every entry of the zip file `file` in order, checking each entry's CRC32, and hands
/// its name and content to `visit`; then checks that the central directory lists exactly those
/// entries (names, offsets, CRC32s, sizes) as regular files. Errors from `visit` pass through.
pub fn read_entries<E>(
    file: impl Read,
    refuse: impl Fn(Refused) -> E,
    visit: &mut Visitor<'_, E>,
) -> Result<u64, E> {
    match read_all(file, visit) {
        Ok(n) => Ok(n),
        Err(Stop::Refused(r)) => Err(refuse(r)),
        Err(Stop::Visit(e)) => Err(e),
    }
}

/// Why reading stopped.
enum Stop<E> {
    Refused(Refused),
    Visit(E),
}

impl<E> From<Refused> for Stop<E> {
    fn from(r: Refused) -> Self {
        Stop::Refused(r)
    }
}

fn read_all<E>(file: impl Read, visit: &mut Visitor<'_, E>) -> Result<u64, Stop<E>> {
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut ledger = Ledger::default();
    let mut offset = 0u64;
    let mut zstd = None;
    let io = |entry: Option<&str>, what: &str, offset: u64, e: io::Error| {
        refused(entry, format!("{what} at byte {offset}: {e}"))
    };
    loop {
        let mut h = [0u8; 30];
        r.read_exact(&mut h[..4])
            .map_err(|e| io(None, "reading a header", offset, e))?;
        match le::<4>(&h, 0) as u32 {
            LOCAL => {}
            CENTRAL => {
                check_central(&mut r, &ledger)?;
                return Ok(ledger.count);
            }
            EOCD | EOCD64 if ledger.count == 0 => return Ok(0),
            other => {
                return Err(refused(
                    None,
                    format!("byte {offset}: expected an entry header, found {other:#010x}"),
                )
                .into())
            }
        }
        r.read_exact(&mut h[4..])
            .map_err(|e| io(None, "reading a header", offset, e))?;
        let flags = le::<2>(&h, 6);
        let method = le::<2>(&h, 8);
        let crc = le::<4>(&h, 14) as u32;
        let (mut csize, mut size) = (le::<4>(&h, 18), le::<4>(&h, 22));
        let (name_len, extra_len) = (le::<2>(&h, 26) as usize, le::<2>(&h, 28) as usize);
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name)
            .map_err(|e| io(None, "reading a name", offset, e))?;
        let name = String::from_utf8(name)
            .map_err(|_| refused(None, format!("byte {offset}: entry name is not UTF-8")))?;
        let at = Some(name.as_str());
        let mut extra = vec![0u8; extra_len];
        r.read_exact(&mut extra)
            .map_err(|e| io(at, "reading extra fields", offset, e))?;
        if flags & 1 != 0 {
            return Err(refused(at, "encrypted entries are refused").into());
        }
        if flags & (1 << 3) != 0 {
            return Err(refused(
                at,
                "entry sizes follow the data (data descriptor): not written by tidemark",
            )
            .into());
        }
        if csize == MAX32 || size == MAX32 {
            let z64 = find_extra(&extra, 1)
                .filter(|f| f.len() >= 16)
                .ok_or_else(|| refused(at, "zip64 sizes missing"))?;
            (size, csize) = (le::<8>(z64, 0), le::<8>(z64, 8));
        }
        let len = usize::try_from(csize).map_err(|_| refused(at, "entry too large"))?;
        let mut packed = vec![0u8; len];
        r.read_exact(&mut packed)
            .map_err(|e| io(at, "reading entry data", offset, e))?;
        let data = unpack(&name, method as u16, packed, size, crc, &mut zstd)?;
        ledger.note(name.as_bytes(), offset, crc, csize, size);
        offset += 30 + name_len as u64 + extra_len as u64 + csize;
        visit(&name, data).map_err(Stop::Visit)?;
    }
}

fn find_extra(extra: &[u8], id: u64) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (tag, len) = (le::<2>(extra, at), le::<2>(extra, at + 2) as usize);
        let body = extra.get(at + 4..at + 4 + len)?;
        if tag == id {
            return Some(body);
        }
        at += 4 + len;
    }
    None
}

/// Reads the central directory (its first signature already consumed) and compares it with
/// the entries read.
fn check_central(r: &mut impl Read, local: &Ledger) -> Result<(), Refused> {
    let mut seen = Ledger::default();
    loop {
        let e = central_entry(r)?;
        seen.note(e.name.as_bytes(), e.offset, e.crc, e.csize, e.size);
        let mut sig = [0u8; 4];
        r.read_exact(&mut sig)
            .map_err(|e| refused(None, format!("reading the central directory: {e}")))?;
        match le::<4>(&sig, 0) as u32 {
            CENTRAL => continue,
            EOCD | EOCD64 => break,
            other => {
                return Err(refused(
                    None,
                    format!("unexpected record {other:#010x} in the central directory"),
                ))
            }
        }
    }
    if seen.count != local.count || seen.hash.finalize() != local.hash.clone().finalize() {
        return Err(refused(
            None,
            format!(
                "the central directory ({} entries) does not match the {} entries in the file",
                seen.count, local.count
            ),
        ));
    }
    Ok(())
}

/// One entry as the central directory lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: String,
    /// Offset of its local header.
    pub offset: u64,
    /// Compression method (0, 8 or 93).
    pub method: u16,
    /// CRC32 of the uncompressed bytes.
    pub crc: u32,
    /// Compressed size.
    pub csize: u64,
    /// Uncompressed size.
    pub size: u64,
}

/// Reads one central directory record (its signature already consumed). Refuses anything
/// but a regular file with a UTF-8 name.
fn central_entry(r: &mut impl Read) -> Result<DirEntry, Refused> {
    let mut h = [0u8; 46];
    r.read_exact(&mut h[4..])
        .map_err(|e| refused(None, format!("reading the central directory: {e}")))?;
    let method = le::<2>(&h, 10) as u16;
    let crc = le::<4>(&h, 16) as u32;
    let (mut csize, mut size) = (le::<4>(&h, 20), le::<4>(&h, 24));
    let lens = [le::<2>(&h, 28), le::<2>(&h, 30), le::<2>(&h, 32)].map(|x| x as usize);
    let mode = le::<4>(&h, 38) as u32 >> 16;
    let mut offset = le::<4>(&h, 42);
    let mut rest = vec![0u8; lens.iter().sum()];
    r.read_exact(&mut rest)
        .map_err(|e| refused(None, format!("reading the central directory: {e}")))?;
    let name = String::from_utf8(rest[..lens[0]].to_vec())
        .map_err(|_| refused(None, "an entry name in the central directory is not UTF-8"))?;
    if mode != 0 && mode & S_IFMT != S_IFREG {
        return Err(refused(
            Some(&name),
            format!("not a regular file (mode {mode:o}): refused"),
        ));
    }
    let extra = &rest[lens[0]..lens[0] + lens[1]];
    if size == MAX32 || csize == MAX32 || offset == MAX32 {
        let z64 =
            find_extra(extra, 1).ok_or_else(|| refused(Some(&name), "zip64 fields missing"))?;
        let mut at = 0;
        for field in [&mut size, &mut csize, &mut offset] {
            if *field == MAX32 {
                *field = z64
                    .get(at..at + 8)
                    .map(|_| le::<8>(z64, at))
                    .ok_or_else(|| refused(Some(&name), "zip64 fields cut short"))?;
                at += 8;
            }
        }
    }
    Ok(DirEntry {
        name,
        offset,
        method,
        crc,
        csize,
        size,
    })
}

/// Where the central directory is, as the end records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Offset of the central directory's first record.
    pub cd_offset: u64,
    /// Its size in bytes.
    pub cd_size: u64,
    /// The number of entries.
    pub entries: u64,
}

/// Reads the end records from the very end of the file (tidemark writes no archive comment):
/// the one place that parses them. `None` when the file does not end as tidemark's zips do.
pub fn end_record(f: &mut (impl Read + Seek)) -> io::Result<Option<End>> {
    let len = f.seek(SeekFrom::End(0))?;
    if len < 22 {
        return Ok(None);
    }
    let back = len.min(42);
    let mut tail = vec![0u8; back as usize];
    f.seek(SeekFrom::Start(len - back))?;
    f.read_exact(&mut tail)?;
    let eocd = &tail[tail.len() - 22..];
    if le::<4>(eocd, 0) as u32 != EOCD {
        return Ok(None);
    }
    let mut end = End {
        cd_offset: le::<4>(eocd, 16),
        cd_size: le::<4>(eocd, 12),
        entries: le::<2>(eocd, 10),
    };
    if end.cd_offset == MAX32 || end.entries == 0xFFFF || end.cd_size == MAX32 {
        if tail.len() < 42 {
            return Ok(None);
        }
        let locator = &tail[..20];
        if le::<4>(locator, 0) as u32 != LOCATOR64 {
            return Ok(None);
        }
        let at = le::<8>(locator, 8);
        if at + 56 > len {
            return Ok(None);
        }
        let mut z64 = [0u8; 56];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut z64)?;
        if le::<4>(&z64, 0) as u32 != EOCD64 {
            return Ok(None);
        }
        end = End {
            entries: le::<8>(&z64, 32),
            cd_size: le::<8>(&z64, 40),
            cd_offset: le::<8>(&z64, 48),
        };
    }
    if end.cd_offset.saturating_add(end.cd_size) > len {
        return Ok(None);
    }
    Ok(Some(end))
}

/// Reads the central directory: every entry, in order. Refuses more than `max` entries (a
/// damaged count cannot make it allocate without bound).
pub fn read_directory(f: &mut (impl Read + Seek), max: u64) -> Result<Vec<DirEntry>, Refused> {
    let end = end_record(f)
        .map_err(|e| refused(None, format!("reading the end record: {e}")))?
        .ok_or_else(|| refused(None, "no zip end record at the end of the file"))?;
    if end.entries > max {
        return Err(refused(
            None,
            format!("{} entries, more than the {max} expected", end.entries),
        ));
    }
    f.seek(SeekFrom::Start(end.cd_offset))
        .map_err(|e| refused(None, format!("seeking to the central directory: {e}")))?;
    let mut r = BufReader::new(f.take(end.cd_size));
    let mut out = Vec::with_capacity(end.entries as usize);
    for _ in 0..end.entries {
        let mut sig = [0u8; 4];
        r.read_exact(&mut sig)
            .map_err(|e| refused(None, format!("reading the central directory: {e}")))?;
        if le::<4>(&sig, 0) as u32 != CENTRAL {
            return Err(refused(None, "the central directory is damaged"));
        }
        out.push(central_entry(&mut r)?);
    }
    Ok(out)
}

/// Reads an entry's compressed bytes from its local header, which must agree with the
/// directory (name, method, CRC32 and sizes, no data descriptor, no encryption).
pub fn read_packed(f: &mut (impl Read + Seek), e: &DirEntry) -> Result<Vec<u8>, Refused> {
    let at = Some(e.name.as_str());
    let io = |what: &str, err: io::Error| refused(at, format!("{what}: {err}"));
    f.seek(SeekFrom::Start(e.offset))
        .map_err(|err| io("seeking to the entry", err))?;
    let mut h = [0u8; 30];
    f.read_exact(&mut h)
        .map_err(|err| io("reading the entry header", err))?;
    let (name_len, extra_len) = (le::<2>(&h, 26), le::<2>(&h, 28));
    let mut rest = vec![0u8; (name_len + extra_len) as usize];
    f.read_exact(&mut rest)
        .map_err(|err| io("reading the entry header", err))?;
    let flags = le::<2>(&h, 6);
    let fine = le::<4>(&h, 0) as u32 == LOCAL
        && flags & 0b1001 == 0
        && le::<2>(&h, 8) as u16 == e.method
        && le::<4>(&h, 14) as u32 == e.crc
        && &rest[..name_len as usize] == e.name.as_bytes();
    if !fine {
        return Err(refused(
            at,
            "the entry's header does not match the central directory",
        ));
    }
    let len = usize::try_from(e.csize).map_err(|_| refused(at, "entry too large"))?;
    let mut packed = vec![0u8; len];
    f.read_exact(&mut packed)
        .map_err(|err| io("reading entry data", err))?;
    Ok(packed)
}

/// Decompresses an entry's bytes and checks their size and CRC32 (`zstd`: a decompressor to
/// reuse, made on first use).
pub fn unpack(
    name: &str,
    method: u16,
    packed: Vec<u8>,
    size: u64,
    crc: u32,
    zstd: &mut Option<zstd::bulk::Decompressor<'static>>,
) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::new();
    unpack_into(name, method, packed, size, crc, zstd, &mut out)?;
    Ok(out)
}

/// As [`unpack`], into `out`: a reader that decompresses many entries reuses one buffer instead
/// of mapping fresh pages for each. A stored entry's bytes are `packed` itself, moved into
/// `out`.
pub fn unpack_into(
    name: &str,
    method: u16,
    packed: Vec<u8>,
    size: u64,
    crc: u32,
    zstd: &mut Option<zstd::bulk::Decompressor<'static>>,
    out: &mut Vec<u8>,
) -> Result<(), Refused> {
    let at = Some(name);
    out.clear();
    match method {
        0 => *out = packed,
        // Reads stop one byte past the size the header gives, so a damaged header cannot
        // make a small entry allocate gigabytes.
        8 => {
            flate2::read::DeflateDecoder::new(&packed[..])
                .take(size.saturating_add(1))
                .read_to_end(out)
                .map_err(|e| refused(at, format!("deflate: {e}")))?;
        }
        93 if size <= 64 << 20 => {
            if zstd.is_none() {
                *zstd = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| refused(at, format!("zstd: {e}")))?,
                );
            }
            out.reserve(size as usize);
            zstd.as_mut()
                .expect("made above")
                .decompress_to_buffer(&packed, out)
                .map_err(|e| refused(at, format!("zstd: {e}")))?;
        }
        93 => {
            zstd::stream::read::Decoder::new(&packed[..])
                .and_then(|d| d.take(size.saturating_add(1)).read_to_end(out))
                .map_err(|e| refused(at, format!("zstd: {e}")))?;
        }
        m => {
            return Err(refused(
                at,
                format!("compression method {m} is not supported"),
            ))
        }
    }
    check_unpacked(name, out, size, crc)
}

/// An entry's decompressed bytes against the size and CRC32 its header gives.
fn check_unpacked(name: &str, data: &[u8], size: u64, crc: u32) -> Result<(), Refused> {
    let at = Some(name);
    if data.len() as u64 != size {
        return Err(refused(
            at,
            format!("{} bytes, the header says {size}", data.len()),
        ));
    }
    let got = crc32fast::hash(data);
    if got != crc {
        return Err(refused(
            at,
            format!("CRC32 {got:08x}, the header says {crc:08x}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn write(entries: &[(String, Vec<u8>)], method: Method) -> Vec<u8> {
        let mut w = StreamWriter::new(Cursor::new(Vec::new()), method).unwrap();
        for (n, d) in entries {
            w.add(n, d).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn read(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut got = Vec::new();
        read_entries(f, |r| r, &mut |n, d| {
            got.push((n.to_string(), d));
            Ok(())
        })
        .map_err(|e| format!("{:?}: {}", e.entry, e.cause))?;
        Ok(got)
    }

    fn sample(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 300));
                (format!("c/{i:x}/document.json"), body.into_bytes())
            })
            .chain([("c/é/deleted".to_string(), Vec::new())])
            .collect()
    }

    #[test]
    fn the_zip_crate_reads_what_is_written_and_we_read_it_back() {
        for method in [Method::Stored, Method::Deflate(6), Method::Zstd(3)] {
            for n in [0, 5, 70_000] {
                let entries = sample(n);
                let bytes = write(&entries, method);
                let mut z = zip::ZipArchive::new(Cursor::new(&bytes)).unwrap();
                assert_eq!(z.len(), entries.len());
                for (i, (name, data)) in entries.iter().enumerate().step_by(997) {
                    let mut f = z.by_index(i).unwrap();
                    assert_eq!(f.name(), name);
                    assert!(f.is_file());
                    let mut got = Vec::new();
                    f.read_to_end(&mut got).unwrap();
                    assert_eq!(&got, data);
                }
                assert_eq!(read(&bytes).unwrap(), entries, "{method:?} {n}");
            }
        }
    }

    #[test]
    fn we_read_what_the_zip_crate_writes() {
        let entries = sample(300);
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Zstd);
        for (n, d) in &entries {
            w.start_file(n.as_str(), opts).unwrap();
            w.write_all(d).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        assert_eq!(read(&bytes).unwrap(), entries);
    }

    #[test]
    fn damage_is_found_and_named() {
        let entries = sample(40);
        let bytes = write(&entries, Method::Deflate(6));
        // A flipped byte inside the tenth entry's data.
        let name = b"c/9/document.json";
        let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
        let mut bad = bytes.clone();
        bad[at + name.len() + 3] ^= 0x40;
        let e = read(&bad).unwrap_err();
        assert!(e.contains("c/9/document.json"), "{e}");
        // A central directory that names another entry.
        let cd = find_cd(&bytes);
        let mut bad = bytes.clone();
        let name_at = cd + 46;
        bad[name_at] = b'd';
        let e = read(&bad).unwrap_err();
        assert!(e.contains("central directory"), "{e}");
        // A symlink in the central directory.
        let mut bad = bytes.clone();
        bad[cd + 38..cd + 42].copy_from_slice(&(0o120_777u32 << 16).to_le_bytes());
        let e = read(&bad).unwrap_err();
        assert!(e.contains("regular file"), "{e}");
        // Cut short.
        let e = read(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(e.contains("byte"), "{e}");
    }

    fn find_cd(bytes: &[u8]) -> usize {
        let eocd = bytes.len() - 22;
        assert_eq!(le::<4>(bytes, eocd) as u32, EOCD);
        le::<4>(bytes, eocd + 16) as usize
    }
}
