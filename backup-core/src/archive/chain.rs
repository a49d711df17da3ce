//! Where archives live and how they chain: the chain stores (a local directory; object stores
//! implement the same trait), the chain head, listing, continuity and restore planning.

use super::{damaged, file_name_of, ArchiveManifest, ChainItem, ManifestEntry, MANIFEST_ENTRY};
use super::{ARCHIVE_FORMAT, ARCHIVE_FORMAT_VERSION};
use crate::durable;
use crate::error::{Error, Result};
use crate::manifest::RunKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use zip::ZipArchive;
/// Where a chain's archives are kept: a local directory ([`LocalChain`]) or an object store
/// (the `tidemark-remote` crate). An archive is visible only once complete: a reader never sees
/// one that is being written or was cut short.
pub trait ChainStore: Send + Sync + std::fmt::Debug {
    /// Where the chain is (a directory, a URL), for messages.
    fn location(&self) -> PathBuf;
    /// Where `name` (an archive's file name) lives, for messages and summaries.
    fn location_of(&self, name: &str) -> PathBuf;
    /// The complete archives, in sequence order.
    fn read_chain(&self) -> Result<Vec<ChainItem>>;
    /// Removes what interrupted writes left behind (never a complete archive).
    fn clean_partial(&self) -> Result<()>;
    /// Starts writing the archive `slot` names; `buffer_size` bounds the memory it uses for
    /// output (beyond the entry being written). Finishing a backup's archive (not a compacted
    /// one) also records it as the chain's head.
    fn begin(&self, slot: Slot, buffer_size: usize) -> Result<Box<dyn ArchiveOutput>>;
    /// The chain as a reader finds it: its archives, what is wrong with the listing (an
    /// unreadable manifest, a newest archive that went missing), and the sequences prune
    /// removed. Verify reports the problems; restore refuses on the first.
    fn survey(&self) -> Result<Survey>;
    /// Opens a complete archive of the chain for reading.
    fn open(&self, item: &ChainItem) -> Result<Box<dyn ArchiveRead>>;
    /// The prune log's bytes (`None` when nothing was ever pruned).
    fn read_prune_log(&self) -> Result<Option<Vec<u8>>>;
    /// Replaces the prune log, atomically and durably.
    fn write_prune_log(&self, bytes: &[u8]) -> Result<()>;
    /// Removes archives from the chain (gone already is fine), durably once all are gone.
    fn remove(&self, items: &[&ChainItem]) -> Result<()>;
    /// The chain's key file ([`crate::crypt::KEY_FILE`]), if the chain is encrypted.
    fn read_key(&self) -> Result<Option<Vec<u8>>>;
    /// Writes the chain's key file, atomically and durably, only if there is none yet (an
    /// existing one is never replaced: it would strand every archive sealed with it).
    fn write_key(&self, bytes: &[u8]) -> Result<()>;
    /// The copy of the chain's key file ([`crate::crypt::KEY_FILE_COPY`]), if there is one.
    fn read_key_copy(&self) -> Result<Option<Vec<u8>>>;
    /// Writes `name` (the key file or its copy) with `bytes`, replacing it, atomically and
    /// durably. Only ever with the bytes of the other file, checked and proven to open the
    /// chain, by a writer that holds the destination's lock ([`crate::crypt::repair_key_files`]).
    fn replace_key_file(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Whether the chain is encrypted: it holds its key file or the copy.
    fn is_encrypted(&self) -> Result<bool> {
        Ok(self.read_key()?.is_some() || self.read_key_copy()?.is_some())
    }
    /// Every archive as stored, from names (and an object store's seals) alone, without reading
    /// a manifest: its name (with the CRC32 of its stored bytes) and a reader of those bytes.
    /// This is what can be checked of an encrypted chain without its key
    /// ([`crate::crypt::verify_sealed`]).
    fn stored(&self) -> Result<Vec<(PathBuf, Box<dyn ArchiveRead>)>>;
    /// Takes the destination's one-writer lock for `command` (e.g. "prune"), held until the
    /// returned guard is dropped; another holder makes it fail with [`Error::Locked`].
    fn lock(&self, command: &str) -> Result<ChainLock>;
    /// The newest archive a backup wrote (what the next one continues), if any. A store that
    /// can tell it from the names of its archives reads only its manifest.
    fn newest(&self) -> Result<Option<ChainItem>> {
        Ok(self
            .read_chain()?
            .into_iter()
            .rfind(|i| i.manifest.covers.is_none()))
    }
    /// The head and the slots of the complete archives, read from names only where the store
    /// can (the default reads every manifest). The head is read before the listing, as in
    /// [`ChainStore::survey`].
    fn listing(&self) -> Result<Listing> {
        let survey = self.survey()?;
        if let Some(problem) = survey.problems.into_iter().next() {
            return Err(problem);
        }
        Ok(Listing {
            head: None,
            slots: survey
                .items
                .iter()
                .chain(&survey.leftovers)
                .map(|i| Slot::of(&i.manifest))
                .collect(),
        })
    }
    /// The archives in `slots` (sorted), as [`ChainStore::read_chain`] lists them, reading only
    /// their manifests where the store can.
    fn read_slots(&self, slots: &[Slot]) -> Result<Vec<ChainItem>> {
        Ok(self
            .read_chain()?
            .into_iter()
            .filter(|i| slots.contains(&Slot::of(&i.manifest)))
            .collect())
    }
    /// The archives lying within sequences `first..=last` (sorted), as [`ChainStore::read_chain`]
    /// lists them. A store that can tell the sequences from the names reads only their
    /// manifests.
    fn read_range(&self, first: u64, last: u64) -> Result<Vec<ChainItem>> {
        Ok(self
            .read_chain()?
            .into_iter()
            .filter(|i| i.manifest.first() >= first && i.manifest.sequence <= last)
            .collect())
    }
}

/// What a restore of the newest point needs to know without reading every manifest: the
/// chain head (read first), the slots of the complete archives (from their names), and the
/// prune log.
#[derive(Debug)]
pub struct Listing {
    /// The chain head, if there is one.
    pub head: Option<Head>,
    /// The complete archives' slots.
    pub slots: Vec<Slot>,
}

/// The slot an archive's name gives (`tidemark-000002-incr-…`, `tidemark-000005-000100-incr-…`,
/// with any suffix: a file's CRC32 and `.zip`, a seal's `.json`); `None` for other names.
pub fn slot_of_name(name: &str) -> Option<Slot> {
    let rest = name.strip_prefix("tidemark-")?;
    let mut parts = rest.split(['-', '.']);
    let a: u64 = parts.next()?.parse().ok()?;
    let kind = |w: &str| match w {
        "full" => Some(RunKind::Full),
        "incr" => Some(RunKind::Incremental),
        _ => None,
    };
    let b = parts.next()?;
    if let Some(k) = kind(b) {
        return Some(Slot::single(a, k));
    }
    let last: u64 = b.parse().ok()?;
    let k = kind(parts.next()?)?;
    (last > a).then_some(Slot {
        sequence: last,
        first: a,
        kind: k,
    })
}

/// A held destination lock (released when dropped).
pub type ChainLock = Box<dyn std::any::Any + Send>;

/// What a reader found listing a chain: see [`ChainStore::survey`].
#[derive(Debug, Default)]
pub struct Survey {
    /// The archives whose manifest could be read, in sequence order.
    pub items: Vec<ChainItem>,
    /// Problems found on the way.
    pub problems: Vec<Error>,
    /// Sequences `tidemark prune` removed.
    pub pruned: BTreeSet<u64>,
    /// Whether anything of a chain is there at all (an archive, or a head naming one).
    pub anything: bool,
    /// Archives the prune log records as removed that are still there (a prune was killed
    /// before it deleted them): not part of the chain.
    pub leftovers: Vec<ChainItem>,
    /// The prune log's bytes as the survey read them (empty when nothing was ever pruned):
    /// what a prune appends to.
    pub prune_log: Vec<u8>,
}

impl Survey {
    /// Completes a survey with the prune log (its bytes, stored at `log_path`): the sequences
    /// it explains, and the leftovers set apart from the chain, which is sorted.
    pub fn settle(&mut self, log_path: &Path, log: Option<&[u8]>) -> Result<()> {
        let (entries, damage) = crate::prune::parse_prune_log(log_path, log);
        self.problems.extend(damage);
        self.pruned = super::graph::pruned_sequences(&entries);
        let (chain, leftovers) = super::graph::settle(std::mem::take(&mut self.items), &entries);
        self.items = chain;
        self.leftovers = leftovers;
        self.prune_log = log.map(<[u8]>::to_vec).unwrap_or_default();
        Ok(())
    }
}

/// The archives of the chain in `store` (sorted), and apart from them the leftovers of an
/// interrupted prune (archives its log names as removed), which are no part of it.
pub fn settled_chain(store: &dyn ChainStore) -> Result<(Vec<ChainItem>, Vec<ChainItem>)> {
    let (chain, leftovers, _) = load_chain(store)?;
    Ok((chain, leftovers))
}

/// The chain in `store` as a writer (prune, compact) and `list` see it: the archives of the
/// chain (sorted), the leftovers of an interrupted prune, and the prune log's bytes.
///
/// Damage (an archive whose manifest cannot be read, a damaged line of the prune log, a head
/// that does not add up) is said on stderr and left as it is, for verify to report: a damaged
/// archive counts as a hole in the chain, which prune plans around as it does around a lost
/// one (keeping everything back to a full archive for a point whose path crosses it) and never
/// removes. Anything else (a wrong key, an I/O error) fails.
pub(crate) fn load_chain(
    store: &dyn ChainStore,
) -> Result<(Vec<ChainItem>, Vec<ChainItem>, Vec<u8>)> {
    let (survey, damage) = survey_damage(store)?;
    for problem in damage {
        tracing::warn!("{problem} (left as it is: `tidemark verify` reports it)");
    }
    Ok((survey.items, survey.leftovers, survey.prune_log))
}

/// The chain in `store` as `list` shows it: what [`settled_chain`] gives, and the damage it
/// would only warn of (an archive whose manifest cannot be read, a damaged line of the prune
/// log, a point whose archive is gone: [`LOST_POINT`], named `tidemark-NNNNNN`), each naming
/// its file, to be shown beside the archives. A wrong key or an I/O error fails.
pub fn chain_and_damage(
    store: &dyn ChainStore,
) -> Result<(Vec<ChainItem>, Vec<ChainItem>, Vec<Error>)> {
    let (survey, mut damage) = survey_damage(store)?;
    for m in super::graph::lost_points(&survey.items, &survey.pruned, &damage) {
        damage.push(Error::Damaged {
            path: store.location_of(&format!("tidemark-{m:06}")),
            cause: LOST_POINT.into(),
        });
    }
    Ok((survey.items, survey.leftovers, damage))
}

/// How many times a survey is taken again when archives were removed under it (a prune or a
/// compaction beside a verify or a restore).
pub(super) const RETRIES_AFTER_REMOVAL: usize = 5;

/// A survey of `store`, taken again (at most [`RETRIES_AFTER_REMOVAL`] times) while an archive
/// it listed was gone when it read the archive's manifest: removed by a prune beside the
/// reader, which is not damage.
pub(super) fn survey_settled(store: &dyn ChainStore) -> Result<Survey> {
    let mut survey = store.survey()?;
    for _ in 0..RETRIES_AFTER_REMOVAL {
        if !survey.problems.iter().any(is_gone) {
            break;
        }
        tracing::debug!("archives were removed while the chain was surveyed: surveying again");
        survey = store.survey()?;
    }
    Ok(survey)
}

/// What verify and restore say of a point whose archive `m` is gone.
pub(super) fn archive_gone(m: u64) -> String {
    format!("archive {m} is missing (neither there nor pruned)")
}

/// Whether `e` says that a file was not there (removed since it was listed).
pub(super) fn is_gone(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// What is wrong with a point whose archive is gone: neither there nor pruned.
pub const LOST_POINT: &str =
    "missing (neither there nor pruned): its point can no longer be restored";

/// The sequence of the archive a damage problem is about, from the archive's file name in its
/// path (`…/tidemark-000004-incr-f538718c.zip/tidemark/manifest.json`); `None` for any other
/// problem.
pub(super) fn problem_sequence(problem: &Error) -> Option<u64> {
    let path = match problem {
        Error::Damaged { path, .. } | Error::Manifest { path, .. } => path,
        _ => return None,
    };
    path.iter()
        .find_map(|c| slot_of_name(&c.to_string_lossy()))
        .map(|s| s.sequence)
}

/// The store's survey with its problems taken out: the damage, which a chain is read around;
/// any other problem fails. An archive removed between the listing and the reading of its
/// manifest (a prune beside `list`) makes the survey run again ([`survey_settled`]).
fn survey_damage(store: &dyn ChainStore) -> Result<(Survey, Vec<Error>)> {
    let mut survey = survey_settled(store)?;
    let mut damage = Vec::new();
    for problem in std::mem::take(&mut survey.problems) {
        match problem {
            Error::Damaged { .. } | Error::Manifest { .. } => damage.push(problem),
            other => return Err(other),
        }
    }
    Ok((survey, damage))
}

/// An archive opened for reading: ranged reads at any offset, from any thread (an object
/// store serves each as one ranged GET, so several can be in flight), and one front-to-back
/// stream.
pub trait ArchiveRead: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> &Path;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Exactly `len` bytes from `offset`.
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// The whole archive, front to back.
    fn stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>>;
    /// How many bytes a restore may fetch in one ranged read when it needs several entries
    /// that lie next to each other (0: one read per entry). An object store wants fewer,
    /// larger requests; a local file does not care.
    fn span(&self) -> usize {
        0
    }
    /// Checks the whole archive against `crc` (the CRC32 in its name) before a restore reads
    /// parts of it, where that is cheap: a local file is read once more; an object store's
    /// archive is not downloaded twice, its entries being checked one by one as they are read
    /// (and its size against its seal, by [`ArchiveRead::size`]).
    fn check_before_restore(&self, crc: u32) -> Result<()>;
    /// The size of the bytes as stored (what the CRC32 in the name covers): the same as
    /// [`ArchiveRead::size`] unless the archive is sealed (encrypted).
    fn raw_size(&self) -> u64 {
        self.size()
    }
    /// The bytes as stored, front to back (see [`ArchiveRead::raw_size`]).
    fn raw_stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        self.stream()
    }
    /// Turns a stream of the stored bytes into the archive's bytes (opens a sealed archive;
    /// nothing to do for a plain one).
    fn decode<'a>(&'a self, raw: Box<dyn Read + 'a>) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(raw)
    }
}

/// The CRC32 an archive's file name carries.
pub(super) fn crc_in_name(path: &Path) -> Result<u32> {
    file_name_of(path)
        .trim_end_matches(".zip")
        .rsplit('-')
        .next()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| damaged(path, "the file name carries no CRC32"))
}

/// Streams an archive (named `path`, whose name carries the CRC32) through `read` (which reads
/// the zip entries from it), computing the CRC32 of every stored byte; fails if it differs from
/// the one in the archive's name. One pass; `tick` is told the bytes read so far as they are
/// read.
pub(crate) fn read_whole<T>(
    path: &Path,
    archive: &dyn ArchiveRead,
    tick: &mut dyn FnMut(u64),
    read: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<T> {
    let want = crc_in_name(path)?;
    let stream = archive
        .raw_stream()
        .map_err(|e| Error::io("read", archive.location(), e))?;
    // The CRC32 in the name covers the bytes as stored (sealed, for an encrypted chain).
    let mut r = CrcReader {
        inner: stream,
        hash: crc32fast::Hasher::new(),
        bytes: 0,
        tick,
    };
    let out = {
        let mut plain = archive
            .decode(Box::new(&mut r))
            .map_err(|e| Error::io("read", archive.location(), e))?;
        let out = read(&mut plain);
        // Damage anywhere in the file is reported as such, before what it caused downstream.
        let rest = std::io::copy(&mut plain, &mut std::io::sink());
        (out, rest)
    };
    let (out, rest) = out;
    let drained = std::io::copy(&mut r, &mut std::io::sink());
    let crc = r.hash.clone().finalize();
    if crc != want {
        return Err(damaged(
            path,
            format!("file CRC32 {crc:08x} does not match {want:08x} in its name"),
        ));
    }
    rest.and(drained)
        .map_err(|e| Error::io("read", archive.location(), e))?;
    if r.bytes != archive.raw_size() {
        return Err(damaged(
            path,
            format!(
                "{} bytes where {} were expected",
                r.bytes,
                archive.raw_size()
            ),
        ));
    }
    out
}

struct CrcReader<'a, R> {
    inner: R,
    hash: crc32fast::Hasher,
    bytes: u64,
    tick: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for CrcReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        (self.tick)(self.bytes);
        Ok(n)
    }
}

/// `Read + Seek` over an [`ArchiveRead`]: each refill is one ranged read of at least
/// `readahead` bytes (clipped to the archive), so a caller that knows how much it will read
/// sequentially gets it in one request.
pub(super) struct RangeReader<'a> {
    archive: &'a dyn ArchiveRead,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
    readahead: usize,
}

impl<'a> RangeReader<'a> {
    pub(super) fn new(archive: &'a dyn ArchiveRead, readahead: usize) -> Self {
        RangeReader {
            archive,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
            readahead: readahead.max(1),
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let size = self.archive.size();
        if self.pos >= size || out.is_empty() {
            return Ok(0);
        }
        let end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || self.pos >= end {
            let len = (size - self.pos).min(self.readahead.max(out.len()) as u64) as usize;
            self.buf = self.archive.read_at(self.pos, len)?;
            self.buf_at = self.pos;
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.archive.size() as i128;
        let at = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if at < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        }
        self.pos = at as u64;
        Ok(self.pos)
    }
}

/// A local archive file.
struct LocalArchive {
    path: PathBuf,
    file: File,
    size: u64,
}

impl LocalArchive {
    /// Opens the archive file at `path` (its bytes as stored).
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        Ok(LocalArchive {
            path: path.to_path_buf(),
            file,
            size,
        })
    }
}

impl ArchiveRead for LocalArchive {
    fn location(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
    fn stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, f)))
    }
    fn check_before_restore(&self, crc: u32) -> Result<()> {
        let got = file_crc32(&self.path)?;
        if got != crc {
            return Err(damaged(
                &self.path,
                format!("file CRC32 {got:08x} does not match {crc:08x} in its name"),
            ));
        }
        Ok(())
    }
}

/// An archive being written, front to back in one pass (the zip writer never seeks), so an
/// output may hand bytes on (upload them) as soon as it has them. See [`PartWriter`].
pub trait ArchiveOutput: Write {
    /// Makes the archive complete, durable and visible, last of all; returns its file name (which
    /// carries the CRC32 of the whole file) and size.
    fn finish(self: Box<Self>, manifest: &ArchiveManifest) -> Result<(String, u64)>;

    /// [`ArchiveOutput::finish`], then `companion` writes files aside for the archive's name
    /// (the key state that names it), which are made durable and put in place after the
    /// archive: renamed in the order given, their directories fsynced. A local output fsyncs
    /// them side by side with the archive itself, and puts them in place with the chain head.
    fn finish_with(
        self: Box<Self>,
        manifest: &ArchiveManifest,
        companion: &mut dyn FnMut(&str) -> Result<Vec<durable::Unsynced>>,
    ) -> Result<(String, u64)> {
        let (name, size) = self.finish(manifest)?;
        let files = companion(&name)?;
        durable::sync_all(&files.iter().collect::<Vec<_>>())?;
        durable::place_all(files, Vec::new())?;
        Ok((name, size))
    }
}

/// Which archive is being written: the sequence it ends at, the first it covers (the same,
/// unless it is compacted) and its kind. Names the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The (last) sequence.
    pub sequence: u64,
    /// The first sequence covered.
    pub first: u64,
    /// Full or incremental.
    pub kind: RunKind,
}

impl Slot {
    /// A backup's archive: it covers its own sequence.
    pub fn single(sequence: u64, kind: RunKind) -> Self {
        Slot {
            sequence,
            first: sequence,
            kind,
        }
    }

    /// Whether this is a compacted archive (covering more than its own sequence).
    pub fn compacted(&self) -> bool {
        self.first != self.sequence
    }

    /// The name without the CRC32: `tidemark-000002-incr`, or for a compacted archive
    /// `tidemark-000005-000100-incr` (first and last sequence).
    pub fn stem(&self) -> String {
        let k = match self.kind {
            RunKind::Full => "full",
            RunKind::Incremental => "incr",
        };
        if self.compacted() {
            format!("tidemark-{:06}-{:06}-{k}", self.first, self.sequence)
        } else {
            format!("tidemark-{:06}-{k}", self.sequence)
        }
    }

    /// The file name, with the CRC32 of the whole file.
    pub fn file_name(&self, crc: u32) -> String {
        format!("{}-{crc:08x}.zip", self.stem())
    }

    /// The slot an archive of the chain was written to.
    pub fn of(manifest: &ArchiveManifest) -> Self {
        Slot {
            sequence: manifest.sequence,
            first: manifest.first(),
            kind: manifest.kind,
        }
    }
}

/// Archives in a local directory: written to `.tidemark-NNNNNN.zip.tmp`, fsynced, renamed to
/// their final name (with the file's CRC32), directory fsynced.
#[derive(Debug, Clone)]
pub struct LocalChain {
    dir: PathBuf,
    /// The chain's key, when it is encrypted: archives are sealed with it.
    key: Option<crate::crypt::SharedKey>,
}

impl LocalChain {
    /// The chain in `dir` (which must exist to write to it). An encrypted chain (one with a
    /// key file) is refused by every read and write: open it with [`LocalChain::encrypted`].
    pub fn new(dir: &Path) -> Self {
        LocalChain {
            dir: dir.to_path_buf(),
            key: None,
        }
    }

    /// The encrypted chain in `dir`, whose archives are sealed with `key` (see [`crate::ChainKey`]).
    pub fn encrypted(dir: &Path, key: crate::crypt::SharedKey) -> Self {
        LocalChain {
            dir: dir.to_path_buf(),
            key: Some(key),
        }
    }

    /// The chain's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses to read or write an encrypted chain without its key (its sealed archives would
    /// read as damage, and a plain archive would join a sealed chain).
    fn guard(&self) -> Result<()> {
        if self.key.is_none() && crate::crypt::is_encrypted_dir(&self.dir) {
            return Err(Error::Key {
                path: self.dir.join(crate::crypt::KEY_FILE),
                cause: crate::crypt::NEEDS_KEY.into(),
            });
        }
        Ok(())
    }

    /// The archive file at `path` as this chain reads it (opened with the key, if sealed).
    fn open_path(&self, path: &Path) -> Result<Box<dyn ArchiveRead>> {
        let plain = Box::new(LocalArchive::open(path)?);
        Ok(match &self.key {
            Some(k) => Box::new(crate::crypt::SealedArchive::new(k, plain)?),
            None => plain,
        })
    }

    /// Reads and checks the manifest of the archive file at `path`.
    fn manifest(&self, path: &Path) -> Result<ArchiveManifest> {
        if self.key.is_none() {
            return read_manifest(path);
        }
        let archive = self.open_path(path)?;
        read_manifest_from(path, RangeReader::new(&*archive, 1 << 20))
    }

    /// An archive file of this chain, with its manifest.
    fn item(&self, path: PathBuf) -> Result<ChainItem> {
        let manifest = self.manifest(&path)?;
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(ChainItem {
            path,
            manifest,
            size,
        })
    }

    /// The archives whose slot (from the file name) `keep` accepts, sorted; only their
    /// manifests are read.
    fn read_where(&self, keep: &dyn Fn(Slot) -> bool) -> Result<Vec<ChainItem>> {
        self.guard()?;
        let mut out = archive_files(&self.dir)?
            .into_iter()
            .filter(|p| slot_of_name(&file_name_of(p)).is_some_and(keep))
            .map(|p| self.item(p))
            .collect::<Result<Vec<_>>>()?;
        super::graph::sort_chain(&mut out);
        Ok(out)
    }
}

impl ChainStore for LocalChain {
    fn location(&self) -> PathBuf {
        self.dir.clone()
    }

    fn location_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_chain(&self) -> Result<Vec<ChainItem>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        self.read_where(&|_| true)
    }

    fn clean_partial(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)
            .map_err(|e| Error::io("read directory", &self.dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tidemark-") && name.ends_with(".zip.tmp") {
                // `.tidemark-NNNNNN.zip.tmp` (older runs) or `.tidemark-…-incr.zip.tmp`.
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
            }
        }
        Ok(())
    }

    fn survey(&self) -> Result<Survey> {
        let dir = &self.dir;
        let mut survey = Survey::default();
        if !dir.is_dir() {
            return Err(Error::BadInput {
                path: dir.clone(),
                cause: "no such backup directory".into(),
                source: None,
            });
        }
        self.guard()?;
        // The head first: a backup renames its archive before it updates the head.
        let head = read_head(dir).unwrap_or_else(|e| {
            survey.problems.push(e);
            None
        });
        let files = archive_files(dir)?;
        survey.anything = !files.is_empty() || head.is_some();
        for path in files {
            match self.manifest(&path) {
                Ok(manifest) => {
                    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    survey.items.push(ChainItem {
                        path,
                        manifest,
                        size,
                    });
                }
                // Nothing of a chain a newer tidemark continued is read or written.
                Err(e @ Error::NewerFormat { .. }) => return Err(e),
                Err(e) => survey.problems.push(e),
            }
        }
        survey
            .problems
            .extend(Head::problem(head.as_ref(), &survey.items, &|name| {
                dir.join(name)
            }));
        survey.settle(
            &dir.join(crate::prune::PRUNED_LOG),
            self.read_prune_log()?.as_deref(),
        )?;
        Ok(survey)
    }

    fn open(&self, item: &ChainItem) -> Result<Box<dyn ArchiveRead>> {
        self.guard()?;
        self.open_path(&item.path)
    }

    fn stored(&self) -> Result<Vec<(PathBuf, Box<dyn ArchiveRead>)>> {
        let mut out: Vec<(PathBuf, Box<dyn ArchiveRead>)> = Vec::new();
        for path in archive_files(&self.dir)? {
            let archive = LocalArchive::open(&path)?;
            out.push((path, Box::new(archive)));
        }
        Ok(out)
    }

    fn read_key(&self) -> Result<Option<Vec<u8>>> {
        durable::read_if_exists(&self.dir.join(crate::crypt::KEY_FILE))
    }

    fn write_key(&self, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(crate::crypt::KEY_FILE);
        if path.exists() {
            return Err(Error::Key {
                path,
                cause: "the chain has a key file already; it is never replaced".into(),
            });
        }
        durable::write_atomic(&path, bytes, durable::Sync::Now)
    }

    fn read_key_copy(&self) -> Result<Option<Vec<u8>>> {
        durable::read_if_exists(&self.dir.join(crate::crypt::KEY_FILE_COPY))
    }

    fn replace_key_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        durable::write_atomic(&self.dir.join(name), bytes, durable::Sync::Now)
    }

    fn read_prune_log(&self) -> Result<Option<Vec<u8>>> {
        durable::read_if_exists(&self.dir.join(crate::prune::PRUNED_LOG))
    }

    fn write_prune_log(&self, bytes: &[u8]) -> Result<()> {
        durable::write_atomic(
            &self.dir.join(crate::prune::PRUNED_LOG),
            bytes,
            durable::Sync::Now,
        )
    }

    fn remove(&self, items: &[&ChainItem]) -> Result<()> {
        for item in items {
            durable::crash_point("remove", &item.path);
            match fs::remove_file(&item.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &item.path, e)),
            }
        }
        // One directory sync for the lot.
        durable::sync_dir(&self.dir)
    }

    fn lock(&self, command: &str) -> Result<ChainLock> {
        Ok(Box::new(crate::lock::DestinationLock::acquire(
            &self.dir, command,
        )?))
    }

    fn newest(&self) -> Result<Option<ChainItem>> {
        if !self.dir.exists() {
            return Ok(None);
        }
        self.guard()?;
        let newest = archive_files(&self.dir)?
            .into_iter()
            .filter_map(|p| slot_of_name(&file_name_of(&p)).map(|s| (s, p)))
            .filter(|(s, _)| !s.compacted())
            .max_by_key(|(s, _)| s.sequence);
        newest.map(|(_, p)| self.item(p)).transpose()
    }

    fn listing(&self) -> Result<Listing> {
        self.guard()?;
        let head = read_head(&self.dir)?;
        let slots = archive_files(&self.dir)?
            .iter()
            .filter_map(|p| slot_of_name(&file_name_of(p)))
            .collect();
        Ok(Listing { head, slots })
    }

    fn read_slots(&self, slots: &[Slot]) -> Result<Vec<ChainItem>> {
        self.read_where(&|s| slots.contains(&s))
    }

    fn read_range(&self, first: u64, last: u64) -> Result<Vec<ChainItem>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        self.read_where(&|s| s.first >= first && s.sequence <= last)
    }

    fn begin(&self, slot: Slot, buffer_size: usize) -> Result<Box<dyn ArchiveOutput>> {
        self.guard()?;
        let tmp = self.dir.join(format!(".{}.zip.tmp", slot.stem()));
        let file = durable::create_temp(&tmp)?;
        let out = Box::new(LocalOutput {
            dir: self.dir.clone(),
            slot,
            file: BufWriter::with_capacity(buffer_size, file),
            crc: crc32fast::Hasher::new(),
            unfinished: Unfinished(Some(tmp.clone())),
            tmp,
        });
        match &self.key {
            Some(k) => crate::crypt::seal_output(k, out),
            None => Ok(out),
        }
    }
}

struct LocalOutput {
    dir: PathBuf,
    slot: Slot,
    file: BufWriter<File>,
    /// The CRC32 of the bytes written so far (archives are written front to back, never
    /// seeked), which names the archive: reading it back for that cost a full backup a second
    /// pass over its archive.
    crc: crc32fast::Hasher,
    tmp: PathBuf,
    /// Removes `tmp` if the output is dropped unfinished.
    unfinished: Unfinished,
}

/// Removes an archive's temporary file when its output is dropped before it was renamed into
/// place: an incremental abandoned for a full backup (the change log was trimmed, say) must
/// not leave its partial archive in a run that succeeds. A killed run's leftover is removed
/// by the next run instead.
struct Unfinished(Option<PathBuf>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            durable::remove_temp(&path);
        }
    }
}

impl Write for LocalOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl ArchiveOutput for LocalOutput {
    fn finish(self: Box<Self>, manifest: &ArchiveManifest) -> Result<(String, u64)> {
        self.finish_with(manifest, &mut |_| Ok(Vec::new()))
    }

    fn finish_with(
        self: Box<Self>,
        _: &ArchiveManifest,
        companion: &mut dyn FnMut(&str) -> Result<Vec<durable::Unsynced>>,
    ) -> Result<(String, u64)> {
        let LocalOutput {
            dir,
            slot,
            file,
            crc,
            tmp,
            mut unfinished,
        } = *self;
        let file = file
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        let name = slot.file_name(crc.finalize());
        let archive = durable::Unsynced::new(file, tmp, dir.join(&name));
        // Its writeback starts while the companion files are written, so the fsync below waits
        // for less (its share of a 1% incremental's commit went from 3.7 to 2.4 ms).
        archive.start_writeback();
        let size = archive.size()?;
        let files = companion(&name)?;
        // The chain head's temporary file (and the companion files) are fsynced side by side
        // with the archive; the head is renamed only once the archive's rename is durable. A
        // run killed before that leaves the previous head, which an archive newer than it is
        // fine with; only a head newer than every archive present is a loss.
        let head = (!slot.compacted())
            .then(|| {
                durable::write_aside(&dir.join(HEAD_FILE), &Head::encode(slot.sequence, &name))
            })
            .transpose()?;
        let mut all: Vec<&durable::Unsynced> = vec![&archive];
        all.extend(head.iter());
        all.extend(files.iter());
        durable::sync_all(&all)?;
        archive.rename()?;
        unfinished.0 = None;
        durable::sync_dir(&dir)?;
        // The head and the companion files go into place together, their directories fsynced
        // side by side. After a power cut either may be durable without the other: the next
        // backup then finds a key state that does not name the newest archive, and writes a
        // full one, as after a run killed between the two.
        let mut dirs = Vec::new();
        if let Some(head) = head {
            head.rename()?;
            dirs.push(dir.clone());
        }
        durable::place_all(files, dirs)?;
        Ok((name, size))
    }
}

/// The chain head's file name in a local chain directory: the newest archive written, so that
/// verify and restore notice a newest archive that was deleted or withheld.
pub const HEAD_FILE: &str = ".tidemark-head";

/// The chain head: the newest archive written to the destination, with a CRC32 of its fields.
/// A local directory keeps it in [`HEAD_FILE`]; an object store in an object of that name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Head {
    sequence: u64,
    file: String,
    crc32: u32,
}

fn head_crc(sequence: u64, file: &str) -> u32 {
    crc32fast::hash(format!("{sequence} {file}").as_bytes())
}

impl Head {
    /// The head naming archive `file` (sequence `sequence`), as bytes to store.
    pub fn encode(sequence: u64, file: &str) -> Vec<u8> {
        let head = Head {
            sequence,
            file: file.to_string(),
            crc32: head_crc(sequence, file),
        };
        serde_json::to_vec(&head).expect("a head serializes")
    }

    /// Reads a head's bytes (stored at `path`), checking its CRC32.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Head> {
        let head: Head = serde_json::from_slice(bytes)
            .map_err(|e| damaged(path, format!("the chain head is unreadable: {e}")))?;
        if head.crc32 != head_crc(head.sequence, &head.file) {
            return Err(damaged(path, "the chain head does not match its CRC32"));
        }
        Ok(head)
    }

    /// Checks a chain against the head read before it: the archive the head names must be
    /// there (or a newer one). `location_of` names an archive for the message.
    pub fn problem(
        head: Option<&Head>,
        chain: &[ChainItem],
        location_of: &dyn Fn(&str) -> PathBuf,
    ) -> Option<Error> {
        let head = head?;
        let present = chain.iter().any(|item| {
            item.manifest.sequence == head.sequence
                && item.path.file_name().and_then(|n| n.to_str()) == Some(head.file.as_str())
        });
        let newest = chain.iter().map(|i| i.manifest.sequence).max().unwrap_or(0);
        if present || newest > head.sequence {
            return None;
        }
        if let Some(other) = chain.iter().find(|i| i.manifest.sequence == head.sequence) {
            return Some(damaged(
                &other.path,
                format!(
                    "replaced: the chain's newest archive (sequence {}) was written as {}, and \
                     this file is not it",
                    head.sequence, head.file
                ),
            ));
        }
        Some(damaged(
            &location_of(&head.file),
            format!(
                "missing: the chain's newest archive (sequence {}) was written but is not in \
                 the chain (newest present: {}); it was deleted or withheld",
                head.sequence,
                if newest == 0 {
                    "none".to_string()
                } else {
                    newest.to_string()
                }
            ),
        ))
    }
}

/// Reads `dir`'s chain head, before its archives are listed (a backup renames its archive
/// before it updates the head, so a head read first never names an archive the listing
/// misses). `Ok(None)` for a directory without one (chains written before heads existed).
pub(super) fn read_head(dir: &Path) -> Result<Option<Head>> {
    let path = dir.join(HEAD_FILE);
    durable::read_if_exists(&path)?
        .map(|b| Head::decode(&path, &b))
        .transpose()
}

/// Where a [`PartWriter`] hands the bytes of an archive, in order, in parts.
pub trait PartSink {
    /// Takes the next part (every part but the last is exactly the writer's part size).
    fn put_part(&mut self, part: Vec<u8>) -> std::io::Result<()>;
}

/// A `Write` that hands what is written to a [`PartSink`] in parts of `part_size` bytes: an
/// archive streams out (to an object store's multipart upload) without a local copy of the
/// whole file. Memory: one part. Computes the CRC32 and size of the whole stream on the way.
pub struct PartWriter<S: PartSink> {
    sink: S,
    buf: Vec<u8>,
    handed: u64,
    part_size: usize,
    crc: crc32fast::Hasher,
}

impl<S: PartSink> PartWriter<S> {
    /// A writer handing parts of `part_size` bytes to `sink`.
    pub fn new(sink: S, part_size: usize) -> Self {
        PartWriter {
            sink,
            buf: Vec::new(),
            handed: 0,
            part_size: part_size.max(1),
            crc: crc32fast::Hasher::new(),
        }
    }

    fn hand_on(&mut self, part: Vec<u8>) -> std::io::Result<()> {
        self.crc.update(&part);
        self.handed += part.len() as u64;
        self.sink.put_part(part)
    }

    /// Hands on every remaining byte (the last part may be short or, if the stream is a
    /// multiple of the part size, absent) and returns the sink, the stream's CRC32 and size.
    pub fn finish(mut self) -> std::io::Result<(S, u32, u64)> {
        if !self.buf.is_empty() {
            let part = std::mem::take(&mut self.buf);
            self.hand_on(part)?;
        }
        Ok((self.sink, self.crc.finalize(), self.handed))
    }
}

impl<S: PartSink> Write for PartWriter<S> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let room = self.part_size - self.buf.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buf.extend_from_slice(now);
            data = rest;
            if self.buf.len() == self.part_size {
                let part = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
                self.hand_on(part)?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `dir` holds an archive chain (any `tidemark-*.zip`).
pub fn is_archive_dir(dir: &Path) -> bool {
    archive_files(dir).map(|f| !f.is_empty()).unwrap_or(false)
}

pub(super) fn archive_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tidemark-") && n.ends_with(".zip"))
        })
        .collect();
    files.sort();
    Ok(files)
}

pub(super) fn file_crc32(path: &Path) -> Result<u32> {
    let mut f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Reads every archive's manifest in `dir`, in sequence order (without checking entries; see
/// `verify_archives`). An encrypted chain is refused (see [`LocalChain::encrypted`]).
pub fn read_chain(dir: &Path) -> Result<Vec<ChainItem>> {
    LocalChain::new(dir).read_chain()
}

/// Reads and checks one (plain) archive file's manifest entry.
pub fn read_manifest(path: &Path) -> Result<ArchiveManifest> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    read_manifest_from(path, f)
}

/// Reads and checks the manifest entry of the archive `path` names, read through `file`.
fn read_manifest_from(path: &Path, mut file: impl Read + Seek) -> Result<ArchiveManifest> {
    let entry_path = path.join(MANIFEST_ENTRY);
    // The manifest is the last entry: read it from the file's tail, without parsing the central
    // directory of every record (hundreds of MB for a million entries, read by every run that
    // lists the chain). Anything unexpected falls back to the full zip reader.
    let text = match manifest_from_tail(&mut file) {
        Ok(Some(text)) => text,
        // A sealed archive whose bytes do not authenticate: say so, not what the zip reader
        // makes of it.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(damaged(path, e.to_string()))
        }
        _ => {
            let mut zip = ZipArchive::new(file)
                .map_err(|e| damaged(path, format!("not a readable zip archive: {e}")))?;
            let mut text = Vec::new();
            zip.by_name(MANIFEST_ENTRY)
                .map_err(|e| damaged(&entry_path, format!("missing: {e}")))?
                .read_to_end(&mut text)
                .map_err(|e| damaged(&entry_path, e.to_string()))?;
            text
        }
    };
    let file: ManifestEntry = serde_json::from_slice(&text)
        .map_err(|e| damaged(&entry_path, format!("not a tidemark manifest: {e}")))?;
    let crc = crc32fast::hash(&serde_json::to_vec(&file.manifest).expect("JSON serializes"));
    if crc != file.crc32 {
        return Err(damaged(&entry_path, "manifest CRC32 does not match"));
    }
    // Past the CRC32 the bytes are as they were written: what this tidemark cannot take is not
    // damage but a newer writer's (a backup must refuse it, not start a full archive after it).
    let m: ArchiveManifest = serde_json::from_value(file.manifest)
        .map_err(|e| newer_format(&entry_path, format!("unexpected content: {e}")))?;
    check_manifest_format(&entry_path, &m)?;
    Ok(m)
}

/// Refuses the manifest at `path` (a local archive's entry, an object store's seal) when this
/// tidemark cannot read its archive: another format, or a version after
/// `ARCHIVE_FORMAT_VERSION`. Not damage (its bytes check out) but a newer writer's, which a
/// backup must not continue nor go around, and a reader must not read as an older format.
pub fn check_manifest_format(path: &Path, m: &ArchiveManifest) -> Result<()> {
    if m.format != ARCHIVE_FORMAT || !(1..=ARCHIVE_FORMAT_VERSION).contains(&m.format_version) {
        return Err(newer_format(
            path,
            format!("format {} v{} is not supported", m.format, m.format_version),
        ));
    }
    Ok(())
}

/// A manifest this tidemark cannot read, `cause` saying what in it.
fn newer_format(path: &Path, cause: String) -> Error {
    Error::NewerFormat {
        path: path.to_path_buf(),
        cause,
        reads: ARCHIVE_FORMAT_VERSION,
    }
}

/// The manifest entry's bytes, found from the end of the file: the end of central directory
/// record (and its zip64 form) gives the central directory's offset; the manifest's local header
/// is the last one before it. `None` when the file does not look as tidemark writes it.
fn manifest_from_tail(f: &mut (impl Read + Seek)) -> std::io::Result<Option<Vec<u8>>> {
    // Windows before the central directory, smallest first: a manifest is a few KiB, and
    // reading 16 MiB of every archive's tail was a tenth of an incremental's time.
    const WINDOWS: [u64; 3] = [64 << 10, 1 << 20, 16 << 20];
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let Some(end) = crate::zipstream::end_record(f)? else {
        return Ok(None); // a comment, or not a zip: let the zip reader decide
    };
    let cd_offset = end.cd_offset;
    let name = MANIFEST_ENTRY.as_bytes();
    for size in WINDOWS {
        let start = cd_offset.saturating_sub(size);
        let mut window = vec![0u8; usize::try_from(cd_offset - start).unwrap_or(0)];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut window)?;
        let Some(at) = (0..window.len().saturating_sub(30 + name.len()))
            .rev()
            .find(|&i| {
                le32(&window, i) == 0x0403_4b50
                    && usize::from(le16(&window, i + 26)) == name.len()
                    && &window[i + 30..i + 30 + name.len()] == name
            })
        else {
            if start == 0 {
                return Ok(None); // the whole file was searched
            }
            continue;
        };
        let mut reader = std::io::Cursor::new(&window[at..]);
        let Ok(Some(mut entry)) = zip::read::read_zipfile_from_stream(&mut reader) else {
            // The header was found but its entry runs past the window (a manifest larger than
            // it, or a cut file): a larger window, or the zip reader, decides.
            continue;
        };
        if entry.name() != MANIFEST_ENTRY {
            return Ok(None);
        }
        let mut text = Vec::new();
        // Reading to the end checks the entry's CRC32.
        return match entry.read_to_end(&mut text) {
            Ok(_) => Ok(Some(text)),
            Err(_) => Ok(None),
        };
    }
    Ok(None)
}

/// A point to restore to.
#[derive(Debug, Clone, PartialEq)]
pub enum RestorePoint {
    /// The newest backup.
    Latest,
    /// The backup that ends exactly at this checkpoint position.
    Checkpoint(u64),
    /// The newest backup captured at or before this moment.
    Time(time::OffsetDateTime),
}

impl std::str::FromStr for RestorePoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Ok(pos) = s.parse::<u64>() {
            return Ok(RestorePoint::Checkpoint(pos));
        }
        if let Some(ago) = s.strip_prefix('-') {
            return relative(ago)
                .map(|d| RestorePoint::Time(time::OffsetDateTime::now_utc() - d))
                .ok_or_else(|| {
                    format!("`{s}`: a time ago is a number and s, m, h, d or w (e.g. -2h, -30m)")
                });
        }
        // A time given to the second (as `list` prints them) means that whole second: a
        // backup captured at 03:29:47.536 is "at 03:29:47".
        let whole_second = |t: time::OffsetDateTime| {
            if s.contains('.') {
                t
            } else {
                t + time::Duration::nanoseconds(999_999_999)
            }
        };
        if let Ok(t) =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        {
            return Ok(RestorePoint::Time(whole_second(t)));
        }
        // A date and time without an offset: local time.
        let naive =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
        if let Ok(t) = time::PrimitiveDateTime::parse(&s.replacen(' ', "T", 1), naive) {
            let offset = time::UtcOffset::current_local_offset().map_err(|_| {
                format!(
                    "`{s}` has no UTC offset and the local one is unknown here; add Z or +hh:mm"
                )
            })?;
            return Ok(RestorePoint::Time(whole_second(t.assume_offset(offset))));
        }
        Err(format!(
            "`{s}` is not a checkpoint number, an RFC 3339 time (2026-12-01T03:29:47Z), a local \
             date and time (2026-12-01 03:29:47) or a time ago (-2h)"
        ))
    }
}

/// `90s`, `30m`, `2h`, `1d`, `1w` as a duration.
fn relative(s: &str) -> Option<time::Duration> {
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    if n < 0 {
        return None;
    }
    Some(time::Duration::seconds(n.checked_mul(secs)?))
}

fn captured(item: &ChainItem) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(
        &item.manifest.captured_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}

/// The checkpoints `--at` can name in `chain`, once each, for an error message: all of them, or
/// for a long chain (a live backup's thousands) the first and last few and how many in all.
fn available_checkpoints(chain: &[ChainItem]) -> String {
    let mut have: Vec<u64> = chain.iter().map(|c| c.manifest.to.position).collect();
    have.sort_unstable();
    have.dedup();
    let text = |positions: &[u64]| {
        positions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if have.len() <= 20 {
        return text(&have);
    }
    format!(
        "{}, … {} ({} in all; `tidemark list` shows each)",
        text(&have[..5]),
        text(&have[have.len() - 10..]),
        have.len()
    )
}

/// Picks the archives to replay for a restore at `at` (in `chain`, settled and sorted): the
/// path from a full archive to the point that reads the fewest archives (a full archive and
/// the incrementals after it; compacted ones where they save reads).
pub(super) fn plan(chain: &[ChainItem], at: &RestorePoint) -> Result<Vec<ChainItem>> {
    let end = point_index(chain, at)?;
    let sequence = chain[end - 1].manifest.sequence;
    let best = super::graph::from_full(chain);
    let cheapest = (0..chain.len())
        .filter(|&i| chain[i].manifest.sequence == sequence)
        .filter_map(|i| best[i].map(|b| (b.objects, b.bytes, i)))
        .min();
    if let Some((_, _, i)) = cheapest {
        return Ok(super::graph::path_to(&best, i)
            .into_iter()
            .map(|i| chain[i].clone())
            .collect());
    }
    if let Some(p) = super::graph::check_continuity(&chain[..end], &BTreeSet::new())
        .into_iter()
        .next()
    {
        return Err(p);
    }
    Err(Error::BadInput {
        path: PathBuf::from("archives"),
        cause: "no full archive to start from".into(),
        source: None,
    })
}

/// Whether an archive of sequence `damaged` that cannot be read (outside `chain`, the archives
/// that can) cannot be the point `at` names, so that a restore of that point, whose path
/// [`plan`] then finds among the readable archives (each read and checked), never needs it:
///
/// - older than the point's archive: a point is never an older archive's (a checkpoint other
///   than 0, where the older one could only end at the same state of the same store; a time,
///   whose newest capture at or before it is the point's or later);
/// - newer, for a checkpoint whose archive comes before it (0 only when a readable archive
///   between the two ends at a later position: every backup of plain sled ends at 0, so the
///   damaged archive could be another backup at that number), or for a time at or before the
///   capture of a readable archive that comes before it (captures follow the sequence: a time
///   between the last readable capture and the damaged archive could follow the damaged one's,
///   which is then the point).
///
/// Also when a readable archive ends at the damaged one's sequence: that point is there.
/// Never for the newest point, which it may be.
pub(super) fn not_the_point(chain: &[ChainItem], at: &RestorePoint, damaged: u64) -> bool {
    if matches!(at, RestorePoint::Latest) || chain.is_empty() {
        return false;
    }
    // A readable archive ends at the same sequence (the damaged one is a compacted archive
    // beside it, or the reverse): the point is there, and a path to it is planned without the
    // damaged one.
    if chain.iter().any(|c| c.manifest.sequence == damaged) {
        return true;
    }
    let Some(point) = point_index(chain, at)
        .ok()
        .and_then(|end| end.checked_sub(1))
        .map(|last| chain[last].manifest.sequence)
    else {
        return false;
    };
    match at {
        RestorePoint::Latest => false,
        RestorePoint::Checkpoint(pos) => {
            (damaged < point && *pos > 0)
                || (point < damaged
                    && (*pos > 0
                        || chain.iter().any(|c| {
                            (point + 1..damaged).contains(&c.manifest.sequence)
                                && c.manifest.to.position > 0
                        })))
        }
        RestorePoint::Time(t) => {
            damaged < point
                || chain
                    .iter()
                    .any(|c| c.manifest.sequence < damaged && captured(c).is_some_and(|c| c >= *t))
        }
    }
}

/// The index one past the last archive of `chain` that ends at the point `at` names.
fn point_index(chain: &[ChainItem], at: &RestorePoint) -> Result<usize> {
    let end = match at {
        RestorePoint::Latest => chain.len(),
        RestorePoint::Time(t) => {
            let i = chain
                .iter()
                .rposition(|c| captured(c).is_some_and(|c| c <= *t))
                .ok_or_else(|| Error::BadInput {
                    path: PathBuf::from(format!(
                        "--at {}",
                        t.format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default()
                    )),
                    cause: format!(
                        "no backup was captured at or before that time (the first: {})",
                        chain[0].manifest.captured_at
                    ),
                    source: None,
                })?;
            i + 1
        }
        RestorePoint::Checkpoint(pos) => {
            let pos = *pos;
            // One archive per sequence (a compacted archive ends where a backup's did).
            let mut ends: Vec<usize> = (0..chain.len())
                .filter(|&i| chain[i].manifest.to.position == pos)
                .collect();
            ends.dedup_by_key(|i| chain[*i].manifest.sequence);
            let Some(&last) = ends.last() else {
                return Err(Error::BadInput {
                    path: PathBuf::from(format!("--at {pos}")),
                    cause: format!(
                        "no backup ends at that checkpoint (available: {})",
                        available_checkpoints(chain)
                    ),
                    source: None,
                });
            };
            // Backups of one store that end at one position hold the same state (nothing was
            // committed between them): the newest is taken. A store without change positions
            // (plain sled: always 0) or positions of two different stores (one replaced by a
            // restore) make the number ambiguous: refuse rather than guess.
            let store = &chain[last].manifest.to.store_id;
            let same = ends
                .iter()
                .all(|&i| &chain[i].manifest.to.store_id == store);
            if ends.len() > 1 && (pos == 0 || !same) {
                let which: Vec<String> = ends
                    .iter()
                    .map(|&i| {
                        let name = chain[i].path.file_name().unwrap_or_default();
                        format!(
                            "{} ({})",
                            name.to_string_lossy(),
                            chain[i].manifest.captured_at
                        )
                    })
                    .collect();
                return Err(Error::BadInput {
                    path: PathBuf::from(format!("--at {pos}")),
                    cause: format!(
                        "{} backups end at checkpoint {pos} ({}), so it does not name one; \
                         choose by the time it was captured instead (--at TIME): {}",
                        ends.len(),
                        if same {
                            "the store has no change positions"
                        } else {
                            "they come from different stores"
                        },
                        which.join(", ")
                    ),
                    source: None,
                });
            }
            last + 1
        }
    };
    Ok(end)
}

#[cfg(test)]
mod window_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::zipstream;
    use proptest::prelude::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    struct Parts(Vec<Vec<u8>>);
    impl PartSink for Parts {
        fn put_part(&mut self, part: Vec<u8>) -> std::io::Result<()> {
            self.0.push(part);
            Ok(())
        }
    }

    /// Writes of any sizes come out as the same bytes in parts of exactly `part` bytes but
    /// the last, handed on as they fill, with the stream's CRC32 and size.
    fn same_bytes(writes: &[usize], part: usize) {
        let mut w = PartWriter::new(Parts(Vec::new()), part);
        let mut want = Vec::new();
        let mut most_held = 0usize;
        for (i, n) in writes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*n).map(|j| (j * 7 + i) as u8).collect();
            w.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
            let handed: usize = w.sink.0.iter().map(Vec::len).sum();
            most_held = most_held.max(want.len() - handed);
        }
        assert!(most_held < part, "held {most_held} bytes, part {part}");
        let (parts, crc, size) = w.finish().unwrap();
        assert_eq!(parts.0.concat(), want);
        assert_eq!(size, want.len() as u64);
        assert_eq!(crc, crc32fast::hash(&want));
        if let Some((last, full)) = parts.0.split_last() {
            assert!(full.iter().all(|p| p.len() == part));
            assert!(!last.is_empty() && last.len() <= part);
        } else {
            assert!(want.is_empty());
        }
    }

    #[test]
    fn restore_points_read_every_documented_form() {
        use std::str::FromStr;
        assert!(matches!(
            RestorePoint::from_str("42"),
            Ok(RestorePoint::Checkpoint(42))
        ));
        let Ok(RestorePoint::Time(t)) = RestorePoint::from_str("2026-12-01T03:29:47Z") else {
            panic!("RFC 3339")
        };
        assert_eq!(t.unix_timestamp(), 1_796_095_787);
        let Ok(RestorePoint::Time(t)) = RestorePoint::from_str("-2h") else {
            panic!("two hours ago")
        };
        let ago = time::OffsetDateTime::now_utc() - t;
        assert!(
            ago >= time::Duration::hours(2)
                && ago < time::Duration::hours(2) + time::Duration::minutes(1)
        );
        for bad in ["-2x", "-h", "--2h", "yesterday", "2026-13-01 00:00:00"] {
            let e = RestorePoint::from_str(bad).err().unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn writes_larger_and_smaller_than_a_part() {
        same_bytes(&[10, 5000, 70_000, 3, 0, 200_000, 12], 4096);
        same_bytes(&[4096, 4096], 4096);
        same_bytes(&[], 4096);
    }

    /// An archive written through a part writer is a zip the zip crate reads.
    #[test]
    fn a_zip_streams_through_parts() {
        let mut zw = zipstream::StreamWriter::new(
            PartWriter::new(Parts(Vec::new()), 8192),
            zipstream::Method::Zstd(3),
        )
        .unwrap();
        for i in 0..2000 {
            zw.add(&format!("c/{i}/document.json"), &vec![b'x'; i % 300])
                .unwrap();
        }
        let (parts, _, _) = zw.finish().unwrap().finish().unwrap();
        assert!(parts.0.len() > 3);
        let z = ZipArchive::new(Cursor::new(parts.0.concat())).unwrap();
        assert_eq!(z.len(), 2000);
    }

    /// The manifest is found from the tail, also past 65,535 entries (zip64 end records).
    #[test]
    fn the_manifest_is_read_from_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        for (n, method) in [
            (10usize, CompressionMethod::Deflated),
            (70_000, CompressionMethod::Zstd),
        ] {
            let path = dir.path().join(format!("a{n}.zip"));
            let mut w = ZipWriter::new(File::create(&path).unwrap());
            let opts = SimpleFileOptions::default().compression_method(method);
            for i in 0..n {
                w.start_file(format!("c/{i}/document.json"), opts).unwrap();
                w.write_all(b"{}").unwrap();
            }
            w.start_file(MANIFEST_ENTRY, opts).unwrap();
            w.write_all(b"{\"the\": \"manifest\"}").unwrap();
            w.finish().unwrap();
            let got = manifest_from_tail(&mut File::open(&path).unwrap()).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&b"{\"the\": \"manifest\"}"[..]),
                "{n} entries"
            );
        }
    }

    /// A manifest larger than the first windows the tail is searched in (64 KiB, 1 MiB) is
    /// still found, stored or compressed, after entries that fill the windows before it.
    #[test]
    fn a_large_manifest_is_found_in_a_wider_window() {
        let dir = tempfile::tempdir().unwrap();
        let filler: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for (size, method) in [
            (60_000usize, CompressionMethod::Stored),
            (70_000, CompressionMethod::Stored),
            (1_500_000, CompressionMethod::Stored),
            (1_500_000, CompressionMethod::Deflated),
        ] {
            let manifest: Vec<u8> = format!("{{\"pad\": \"{}\"}}", "m".repeat(size)).into_bytes();
            let path = dir.path().join(format!("m{size}-{method:?}.zip"));
            let mut w = ZipWriter::new(File::create(&path).unwrap());
            let opts = SimpleFileOptions::default().compression_method(method);
            w.start_file("data/c/000001.jsonl", opts).unwrap();
            w.write_all(&filler).unwrap();
            w.start_file(MANIFEST_ENTRY, opts).unwrap();
            w.write_all(&manifest).unwrap();
            w.finish().unwrap();
            let got = manifest_from_tail(&mut File::open(&path).unwrap()).unwrap();
            assert_eq!(got.as_deref(), Some(&manifest[..]), "{size} {method:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn any_write_sizes(sizes in proptest::collection::vec(0usize..20_000, 0..40), part in 1usize..9000) {
            same_bytes(&sizes, part);
        }
    }
}
