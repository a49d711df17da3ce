//! The archive format (OrientDB-style): one compressed zip file per backup in a directory, a
//! full one then incrementals, each naming its parent and its checkpoint range.
//!
//! ```text
//! DIR/tidemark-000001-full-1a2b3c4d.zip      the first backup (full)
//! DIR/tidemark-000002-incr-5e6f7a8b.zip      changes since 000001's checkpoint
//! DIR/.tidemark-mirror/                      working folder backup the archives are cut from
//! ```
//!
//! A file's name carries the CRC32 of the whole file, so one changed byte anywhere is found.
//! Inside, entries use the folder format's layout (`<collection>/<id>/document.json`,
//! `…/attachments/<name>`), deletions are empty `<collection>/<id>/deleted` entries, and
//! `tidemark/manifest.json` is the last entry. See `docs/FORMAT.md` §3.
//!
//! Each run first updates the mirror with the ordinary engine (change log, diff or full), then
//! cuts the archive from it: a full archive walks the mirror; an incremental one holds the
//! documents the run touched. Archives are written aside, fsynced and renamed; the mirror
//! remembers which archive it was cut into, and a run that finds the chain behind the mirror
//! (a crash between the two) first cuts a full archive from the mirror.

use crate::backend::StorageBackend;
use crate::checkpoint::Checkpoint;
use crate::docid;
use crate::durable;
use crate::engine::{backup_folder, BackupMode, BackupOptions, BackupSummary, Event, Method};
use crate::error::{Error, Result};
use crate::folder::{FolderBackup, ATTACHMENTS_DIR, DOCUMENT_FILE};
use crate::manifest::{now_rfc3339, FolderManifest, RunKind};
use crate::model::{CollectionInfo, CollectionName, StoreKind, StoreSchema};
use crate::restore::{RestoreOptions, RestoreSummary, StoreFactory};
use crate::verify::VerifyReport;
use crate::zipstream::{self, Refused, StreamWriter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zip::ZipArchive;

/// The working mirror's directory inside an archive directory.
pub const MIRROR_DIR: &str = ".tidemark-mirror";
/// The manifest entry, always the last one in an archive.
pub const MANIFEST_ENTRY: &str = "tidemark/manifest.json";
/// The `format` value of an archive manifest.
pub const ARCHIVE_FORMAT: &str = "tidemark-archive";
/// The archive format version this crate writes and reads.
pub const ARCHIVE_FORMAT_VERSION: u32 = 1;
const DELETED_ENTRY: &str = "deleted";

/// How archive entries are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Deflate, level 0–9: readable by any `unzip`.
    Deflate(u8),
    /// Zstandard (zip method 93), level 1–22: faster; needs an unzip that knows zstd.
    Zstd(i32),
    /// Stored, uncompressed.
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Deflate(9)
    }
}

/// Options of the archive writer.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveOptions {
    /// The codec and level.
    pub compression: Compression,
    /// The output buffer size in bytes (memory is bounded by it, not by the store).
    pub buffer_size: usize,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            compression: Compression::default(),
            buffer_size: 1 << 20,
        }
    }
}

/// One collection in an archive's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveCollection {
    /// The collection and its schema.
    #[serde(flatten)]
    pub info: CollectionInfo,
    /// Its directory name inside the archive.
    pub dir: String,
    /// Records the collection holds at the archive's checkpoint.
    pub records: u64,
    /// Documents this archive holds for it.
    pub documents: u64,
    /// Deletions this archive holds for it.
    pub deletions: u64,
}

/// The manifest of one archive (`tidemark/manifest.json`, the last entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveManifest {
    /// Always [`ARCHIVE_FORMAT`].
    pub format: String,
    /// Always [`ARCHIVE_FORMAT_VERSION`].
    pub format_version: u32,
    /// The archive's sequence number in its directory (1, 2, …).
    pub sequence: u64,
    /// Full or incremental.
    pub kind: RunKind,
    /// The file name of the archive this one continues (incrementals only).
    pub parent: Option<String>,
    /// The checkpoint the archive starts after (incrementals only: the parent's `to`).
    pub from: Option<Checkpoint>,
    /// The checkpoint the chain is at once this archive is applied.
    pub to: Checkpoint,
    /// The kind of store backed up.
    pub store_kind: StoreKind,
    /// The store as the user named it.
    pub source: String,
    /// When the archive was written (RFC 3339, UTC).
    pub created_at: String,
    /// When the store was read at `to` (RFC 3339, UTC): `restore --at TIME` picks the newest
    /// archive captured at or before TIME.
    pub captured_at: String,
    /// The collections at `to` (a collection missing here was dropped).
    pub collections: Vec<ArchiveCollection>,
    /// Store-level schema at `to`.
    #[serde(default)]
    pub store_schema: StoreSchema,
    /// Payload bytes of the entries before compression.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    crc32: u32,
    manifest: serde_json::Value,
}

/// What an archive backup did.
#[derive(Debug, Clone)]
pub struct ArchiveSummary {
    /// The mirror update's summary (how changes were found, records, checkpoint).
    pub backup: BackupSummary,
    /// The archive written.
    pub file: PathBuf,
    /// Full or incremental archive.
    pub kind: RunKind,
    /// Compressed size of the archive.
    pub size: u64,
    /// Documents and deletions in it.
    pub entries: u64,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
}

/// An archive found in a directory.
#[derive(Debug, Clone)]
pub struct ChainItem {
    /// Its path.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: ArchiveManifest,
    /// Its size in bytes.
    pub size: u64,
}

/// Where a chain's archives are kept: a local directory ([`LocalChain`]) or an object store
/// (the `tidemark-remote` crate). An archive is visible only once complete: a reader never sees
/// one that is being written or was cut short.
pub trait ChainStore {
    /// Where `name` (an archive's file name) lives, for messages and summaries.
    fn location_of(&self, name: &str) -> PathBuf;
    /// The complete archives, in sequence order.
    fn read_chain(&self) -> Result<Vec<ChainItem>>;
    /// Removes what interrupted writes left behind (never a complete archive).
    fn clean_partial(&self) -> Result<()>;
    /// Starts writing archive `sequence` of `kind`; `buffer_size` bounds the memory it uses for
    /// output (beyond the entry being written).
    fn begin(
        &self,
        sequence: u64,
        kind: RunKind,
        buffer_size: usize,
    ) -> Result<Box<dyn ArchiveOutput>>;
}

/// An archive being written, front to back in one pass (the zip writer never seeks), so an
/// output may hand bytes on (upload them) as soon as it has them. See [`PartWriter`].
pub trait ArchiveOutput: Write {
    /// Makes the archive complete, durable and visible, last of all; returns its file name (which
    /// carries the CRC32 of the whole file) and size.
    fn finish(self: Box<Self>, kind: RunKind, manifest: &ArchiveManifest) -> Result<(String, u64)>;
}

/// The archive's file name: sequence, kind and the CRC32 of the whole file.
pub fn archive_file_name(sequence: u64, kind: RunKind, crc: u32) -> String {
    file_name(sequence, kind, crc)
}

/// Archives in a local directory: written to `.tidemark-NNNNNN.zip.tmp`, fsynced, renamed to
/// their final name (with the file's CRC32), directory fsynced.
#[derive(Debug, Clone)]
pub struct LocalChain {
    dir: PathBuf,
}

impl LocalChain {
    /// The chain in `dir` (which must exist to write to it).
    pub fn new(dir: &Path) -> Self {
        LocalChain {
            dir: dir.to_path_buf(),
        }
    }
}

impl ChainStore for LocalChain {
    fn location_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_chain(&self) -> Result<Vec<ChainItem>> {
        read_chain(&self.dir)
    }

    fn clean_partial(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)
            .map_err(|e| Error::io("read directory", &self.dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tidemark-") && name.ends_with(".zip.tmp") {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
            }
        }
        Ok(())
    }

    fn begin(
        &self,
        sequence: u64,
        _kind: RunKind,
        buffer_size: usize,
    ) -> Result<Box<dyn ArchiveOutput>> {
        let tmp = self.dir.join(format!(".tidemark-{sequence:06}.zip.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        Ok(Box::new(LocalOutput {
            dir: self.dir.clone(),
            sequence,
            file: BufWriter::with_capacity(buffer_size, file),
            tmp,
        }))
    }
}

struct LocalOutput {
    dir: PathBuf,
    sequence: u64,
    file: BufWriter<File>,
    tmp: PathBuf,
}

impl Write for LocalOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl ArchiveOutput for LocalOutput {
    fn finish(self: Box<Self>, kind: RunKind, _: &ArchiveManifest) -> Result<(String, u64)> {
        let tmp = self.tmp;
        let file = self
            .file
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        durable::sync_file(&file, &tmp)?;
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", &tmp, e))?
            .len();
        drop(file);
        let crc = file_crc32(&tmp)?;
        let name = file_name(self.sequence, kind, crc);
        let path = self.dir.join(&name);
        durable::rename(&tmp, &path)?;
        durable::sync_dir(&self.dir)?;
        write_head(&self.dir, self.sequence, &name)?;
        Ok((name, size))
    }
}

/// The chain head's file name in a local chain directory: the newest archive written, so that
/// verify and restore notice a newest archive that was deleted or withheld.
pub const HEAD_FILE: &str = ".tidemark-head";

/// The chain head: the newest archive written to the directory, with a CRC32 of its fields.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Head {
    sequence: u64,
    file: String,
    crc32: u32,
}

fn head_crc(sequence: u64, file: &str) -> u32 {
    crc32fast::hash(format!("{sequence} {file}").as_bytes())
}

/// Records `file` (archive `sequence`) as the chain's head (written aside, fsynced, renamed).
/// A run killed before this leaves the previous head, which an archive newer than it is fine
/// with; only a head newer than every archive present is a loss.
fn write_head(dir: &Path, sequence: u64, file: &str) -> Result<()> {
    let head = Head {
        sequence,
        file: file.to_string(),
        crc32: head_crc(sequence, file),
    };
    let bytes = serde_json::to_vec(&head).map_err(|e| Error::Manifest {
        path: dir.join(HEAD_FILE),
        cause: e.to_string(),
    })?;
    durable::write_atomic(&dir.join(HEAD_FILE), &bytes, durable::Sync::Now)
}

/// Reads `dir`'s chain head, before its archives are listed (a backup renames its archive
/// before it updates the head, so a head read first never names an archive the listing
/// misses). `Ok(None)` for a directory without one (chains written before heads existed).
fn read_head(dir: &Path) -> Result<Option<Head>> {
    let path = dir.join(HEAD_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let head: Head = serde_json::from_slice(&bytes)
        .map_err(|e| damaged(&path, format!("the chain head is unreadable: {e}")))?;
    if head.crc32 != head_crc(head.sequence, &head.file) {
        return Err(damaged(&path, "the chain head does not match its CRC32"));
    }
    Ok(Some(head))
}

/// Checks a chain against the head read before it: the archive the head names must be there
/// (or a newer one).
fn check_head(dir: &Path, head: Option<&Head>, chain: &[ChainItem]) -> Option<Error> {
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
                "replaced: the chain's newest archive (sequence {}) was written as {}, and this \
                 file is not it",
                head.sequence, head.file
            ),
        ));
    }
    Some(damaged(
        &dir.join(&head.file),
        format!(
            "missing: the chain's newest archive (sequence {}) was written but is not in the \
             directory (newest present: {}); it was deleted or withheld",
            head.sequence,
            if newest == 0 {
                "none".to_string()
            } else {
                newest.to_string()
            }
        ),
    ))
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

/// The mirror remembers the archive it was last cut into.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct MirrorState {
    last_archive: String,
    sequence: u64,
    checkpoint: Checkpoint,
    /// CRC32 of the mirror's manifest file when the archive was cut. A checkpoint alone does
    /// not show that the mirror moved: a store whose position does not move between runs
    /// (plain sled, diff-based) keeps its checkpoint while the mirror's documents change.
    /// Absent in states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mirror_manifest_crc: Option<u32>,
}

/// CRC32 of the mirror's manifest file, if it can be read.
fn mirror_manifest_crc(mirror: &Path) -> Option<u32> {
    fs::read(
        mirror
            .join(crate::folder::META_DIR)
            .join(crate::folder::MANIFEST_FILE),
    )
    .ok()
    .map(|b| crc32fast::hash(&b))
}

fn mirror_state_path(mirror: &Path) -> PathBuf {
    mirror.join(".tidemark").join("archive-state.json")
}

/// Whether `dir` holds an archive chain (any `tidemark-*.zip`).
pub fn is_archive_dir(dir: &Path) -> bool {
    archive_files(dir).map(|f| !f.is_empty()).unwrap_or(false)
}

fn archive_files(dir: &Path) -> Result<Vec<PathBuf>> {
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

/// The archive's file name: sequence, kind and the CRC32 of the whole file.
fn file_name(sequence: u64, kind: RunKind, crc: u32) -> String {
    let k = match kind {
        RunKind::Full => "full",
        RunKind::Incremental => "incr",
    };
    format!("tidemark-{sequence:06}-{k}-{crc:08x}.zip")
}

/// Backs `backend` up as the next archive in `dir`: full the first time (or with
/// `BackupMode::Full`), incremental after.
pub fn backup_archive(
    backend: &dyn StorageBackend,
    dir: &Path,
    options: &BackupOptions,
    archive: &ArchiveOptions,
    events: &mut dyn FnMut(Event),
) -> Result<ArchiveSummary> {
    // The lock refuses a path that is not a directory.
    let _lock = crate::lock::DestinationLock::acquire(dir, "backup")?;
    crate::destination::claim_format(dir, crate::destination::DestFormat::Archive)?;
    backup_archive_to(
        backend,
        &LocalChain::new(dir),
        &dir.join(MIRROR_DIR),
        options,
        archive,
        events,
    )
}

/// Backs `backend` up as the next archive of `chain` (a local directory or an object store),
/// cutting it from the working folder backup `mirror`: full the first time (or with
/// `BackupMode::Full`, or when the mirror is not at the chain's head), incremental after.
pub fn backup_archive_to(
    backend: &dyn StorageBackend,
    chain_store: &dyn ChainStore,
    mirror: &Path,
    options: &BackupOptions,
    archive: &ArchiveOptions,
    events: &mut dyn FnMut(Event),
) -> Result<ArchiveSummary> {
    let started = Instant::now();
    // What a killed run left half-written is never part of the chain: remove it.
    chain_store.clean_partial()?;
    let chain = chain_store.read_chain()?;
    let mirror = mirror.to_path_buf();
    let state: Option<MirrorState> = fs::read(mirror_state_path(&mirror))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let head = chain.last();
    // The mirror must sit exactly at the chain's head; anything else (a crash between the
    // mirror's commit and the archive's rename, a deleted archive, a lost mirror) starts the
    // chain's next archive as a full one.
    // The mirror's own manifest must agree too: a run killed after the mirror's commit but
    // before its archive was complete leaves the mirror ahead of the chain, and an incremental
    // from there would miss the changes in between.
    let mirror_at = FolderBackup::open_existing(&mirror)
        .ok()
        .filter(|(f, _)| !f.was_interrupted())
        .map(|(_, m)| m.checkpoint);
    let in_step = match (&state, head) {
        (Some(s), Some(h)) => {
            s.last_archive == file_name_of(&h.path)
                && s.checkpoint == h.manifest.to
                && mirror_at.as_ref() == Some(&h.manifest.to)
                && s.mirror_manifest_crc
                    .is_none_or(|crc| mirror_manifest_crc(&mirror) == Some(crc))
        }
        _ => false,
    };
    if head.is_some() && !in_step && mirror.join(".tidemark").exists() {
        events(Event::Notice(
            "the working mirror and the newest archive disagree: this archive will be full".into(),
        ));
    }
    if !in_step {
        // The mirror is working state, not the backup: a full archive rebuilds it from
        // nothing, so that no damage in it (a flipped manifest byte, a bad key index) can make
        // this or any later run fail, and a full run does not pay for the old mirror.
        durable::remove_dir_all_if_exists(&mirror)?;
    }
    let mut touched: BTreeSet<(CollectionName, String)> = BTreeSet::new();
    let mode = if in_step {
        options.mode
    } else {
        BackupMode::Full
    };
    // An incremental archive holds the documents the run touched; a run known to be full needs
    // no list (a million ids measured 150 MiB). A run that falls back to full on its own
    // (e.g. the change log was trimmed) still collects them.
    let collect = mode != BackupMode::Full && head.is_some();
    let summary = backup_folder(
        backend,
        &mirror,
        &BackupOptions {
            mode,
            ..options.clone()
        },
        &mut |e| {
            if let Event::Written(w) = &e {
                if collect {
                    touched.insert((w.collection.clone(), w.document_id.clone()));
                }
            }
            events(e)
        },
    )?;
    let (_, manifest) = FolderBackup::open_existing(&mirror)?;
    let sequence = head.map_or(1, |h| h.manifest.sequence + 1);
    let full = summary.method == Method::Full || head.is_none();
    let (kind, parent, from) = if full {
        (RunKind::Full, None, None)
    } else {
        let h = head.expect("incrementals have a head");
        (
            RunKind::Incremental,
            Some(file_name_of(&h.path)),
            Some(h.manifest.to.clone()),
        )
    };
    let cut = Cut {
        mirror: &mirror,
        manifest: &manifest,
        sequence,
        kind,
        parent,
        from,
        touched: (!full).then_some(&touched),
        captured_at: &summary.captured_at,
    };
    let (name, size, entries) = cut.write(chain_store, archive)?;
    let state = MirrorState {
        last_archive: name.clone(),
        sequence,
        checkpoint: manifest.checkpoint.clone(),
        mirror_manifest_crc: mirror_manifest_crc(&mirror),
    };
    durable::write_atomic(
        &mirror_state_path(&mirror),
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        durable::Sync::Now,
    )?;
    Ok(ArchiveSummary {
        backup: summary,
        file: chain_store.location_of(&name),
        kind,
        size,
        entries,
        elapsed: started.elapsed(),
    })
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct Cut<'a> {
    mirror: &'a Path,
    manifest: &'a FolderManifest,
    sequence: u64,
    kind: RunKind,
    parent: Option<String>,
    from: Option<Checkpoint>,
    /// The documents an incremental holds; `None` for a full archive (every document).
    touched: Option<&'a BTreeSet<(CollectionName, String)>>,
    captured_at: &'a str,
}

impl Cut<'_> {
    fn write(
        &self,
        chain: &dyn ChainStore,
        options: &ArchiveOptions,
    ) -> Result<(String, u64, u64)> {
        let out = chain.begin(self.sequence, self.kind, options.buffer_size.max(4096))?;
        let what = chain.location_of(&format!("archive {:06}", self.sequence));
        let method = match options.compression {
            // Level 0 is "no compression" (as in OrientDB).
            Compression::Deflate(0) | Compression::None => zipstream::Method::Stored,
            Compression::Deflate(level) => zipstream::Method::Deflate(u32::from(level.min(9))),
            Compression::Zstd(level) => zipstream::Method::Zstd(level),
        };
        let mut zip = StreamWriter::new(out, method).map_err(|e| Error::io("write", &what, e))?;
        let add = |zip: &mut StreamWriter<Box<dyn ArchiveOutput>>, name: &str, bytes: &[u8]| {
            zip.add(name, bytes)
                .map_err(|e| Error::io("write", &what, e))
        };
        let mut collections = Vec::with_capacity(self.manifest.collections.len());
        let (mut entries, mut bytes) = (0u64, 0u64);
        for c in &self.manifest.collections {
            let cdir = self.mirror.join(&c.dir);
            let (mut documents, mut deletions) = (0u64, 0u64);
            // Full archives stream the mirror's directory (memory bounded by one entry);
            // incrementals hold the run's touched ids (bounded by the changes).
            let ids: Box<dyn Iterator<Item = Result<String>>> = match self.touched {
                Some(t) => Box::new(
                    t.iter()
                        .filter(|(name, _)| *name == c.info.name)
                        .map(|(_, id)| Ok(id.clone())),
                ),
                None => Box::new(
                    fs::read_dir(&cdir)
                        .map_err(|e| Error::io("read directory", &cdir, e))?
                        .map(|e| {
                            e.map(|e| e.file_name().to_string_lossy().into_owned())
                                .map_err(|e| Error::io("read directory", &cdir, e))
                        })
                        .filter(|n| !matches!(n, Ok(n) if n.ends_with(".tmp"))),
                ),
            };
            for id in ids {
                let id = id?;
                let docdir = cdir.join(&id);
                let prefix = format!("{}/{id}", c.dir);
                let doc = docdir.join(DOCUMENT_FILE);
                match fs::read(&doc) {
                    Ok(json) => {
                        let atts = crate::document::attachment_list(&json).map_err(|cause| {
                            Error::Damaged {
                                path: doc.clone(),
                                cause,
                            }
                        })?;
                        for name in atts.keys() {
                            let p = docdir.join(ATTACHMENTS_DIR).join(name);
                            let data = fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
                            bytes += data.len() as u64;
                            add(
                                &mut zip,
                                &format!("{prefix}/{ATTACHMENTS_DIR}/{name}"),
                                &data,
                            )?;
                        }
                        bytes += json.len() as u64;
                        add(&mut zip, &format!("{prefix}/{DOCUMENT_FILE}"), &json)?;
                        documents += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        add(&mut zip, &format!("{prefix}/{DELETED_ENTRY}"), b"")?;
                        deletions += 1;
                    }
                    Err(e) => return Err(Error::io("read", &doc, e)),
                }
            }
            entries += documents + deletions;
            collections.push(ArchiveCollection {
                info: c.info.clone(),
                dir: c.dir.clone(),
                records: c.records,
                documents,
                deletions,
            });
        }
        // Deletions of whole collections: the manifest's collection list is authoritative.
        let manifest = ArchiveManifest {
            format: ARCHIVE_FORMAT.into(),
            format_version: ARCHIVE_FORMAT_VERSION,
            sequence: self.sequence,
            kind: self.kind,
            parent: self.parent.clone(),
            from: self.from.clone(),
            to: self.manifest.checkpoint.clone(),
            store_kind: self.manifest.store_kind,
            source: self.manifest.source.clone(),
            created_at: now_rfc3339(),
            captured_at: self.captured_at.to_string(),
            collections,
            store_schema: self.manifest.store_schema.clone(),
            bytes,
        };
        let body = serde_json::to_value(&manifest).expect("a manifest serializes");
        let crc32 = crc32fast::hash(&serde_json::to_vec(&body).expect("JSON serializes"));
        let text = serde_json::to_vec_pretty(&ManifestEntry {
            crc32,
            manifest: body,
        })
        .expect("a manifest serializes");
        add(&mut zip, MANIFEST_ENTRY, &text)?;
        let out = zip.finish().map_err(|e| Error::io("write", &what, e))?;
        let (name, size) = out.finish(self.kind, &manifest)?;
        Ok((name, size, entries))
    }
}

fn file_crc32(path: &Path) -> Result<u32> {
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
/// [`verify_archives`]).
pub fn read_chain(dir: &Path) -> Result<Vec<ChainItem>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for path in archive_files(dir)? {
        let manifest = read_manifest(&path)?;
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        out.push(ChainItem {
            path,
            manifest,
            size,
        });
    }
    Ok(out)
}

fn damaged(path: &Path, cause: impl Into<String>) -> Error {
    Error::Damaged {
        path: path.to_path_buf(),
        cause: cause.into(),
    }
}

fn open_zip(path: &Path) -> Result<ZipArchive<File>> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    ZipArchive::new(f).map_err(|e| damaged(path, format!("not a readable zip archive: {e}")))
}

/// Reads and checks one archive's manifest entry.
pub fn read_manifest(path: &Path) -> Result<ArchiveManifest> {
    let entry_path = path.join(MANIFEST_ENTRY);
    // The manifest is the last entry: read it from the file's tail, without parsing the central
    // directory of every record (hundreds of MB for a million entries, read by every run that
    // lists the chain). Anything unexpected falls back to the full zip reader.
    let text = match manifest_from_tail(path) {
        Ok(Some(text)) => text,
        _ => {
            let mut zip = open_zip(path)?;
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
    let m: ArchiveManifest = serde_json::from_value(file.manifest)
        .map_err(|e| damaged(&entry_path, format!("unexpected content: {e}")))?;
    if m.format != ARCHIVE_FORMAT || m.format_version != ARCHIVE_FORMAT_VERSION {
        return Err(damaged(
            &entry_path,
            format!("format {} v{} is not supported", m.format, m.format_version),
        ));
    }
    Ok(m)
}

/// The manifest entry's bytes, found from the end of the file: the end of central directory
/// record (and its zip64 form) gives the central directory's offset; the manifest's local header
/// is the last one before it. `None` when the file does not look as tidemark writes it.
fn manifest_from_tail(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    const WINDOW: u64 = 16 << 20;
    let le16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len < 22 + 20 {
        return Ok(None);
    }
    let mut tail = [0u8; 42];
    f.seek(SeekFrom::Start(len - 42))?;
    f.read_exact(&mut tail)?;
    let eocd = &tail[20..];
    if le32(eocd, 0) != 0x0605_4b50 {
        return Ok(None); // a comment, or not a zip: let the zip reader decide
    }
    let mut cd_offset = u64::from(le32(eocd, 16));
    if cd_offset == u64::from(u32::MAX) {
        let locator = &tail[..20];
        if le32(locator, 0) != 0x0706_4b50 {
            return Ok(None);
        }
        let mut z64 = [0u8; 56];
        let at = u64::from_le_bytes(locator[8..16].try_into().unwrap_or_default());
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut z64)?;
        if le32(&z64, 0) != 0x0606_4b50 {
            return Ok(None);
        }
        cd_offset = u64::from_le_bytes(z64[48..56].try_into().unwrap_or_default());
    }
    if cd_offset > len {
        return Ok(None);
    }
    let start = cd_offset.saturating_sub(WINDOW);
    let mut window = vec![0u8; usize::try_from(cd_offset - start).unwrap_or(0)];
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut window)?;
    let name = MANIFEST_ENTRY.as_bytes();
    let Some(at) = (0..window.len().saturating_sub(30 + name.len()))
        .rev()
        .find(|&i| {
            le32(&window, i) == 0x0403_4b50
                && usize::from(le16(&window, i + 26)) == name.len()
                && &window[i + 30..i + 30 + name.len()] == name
        })
    else {
        return Ok(None);
    };
    let mut reader = std::io::Cursor::new(&window[at..]);
    let Ok(Some(mut entry)) = zip::read::read_zipfile_from_stream(&mut reader) else {
        return Ok(None);
    };
    if entry.name() != MANIFEST_ENTRY {
        return Ok(None);
    }
    let mut text = Vec::new();
    // Reading to the end checks the entry's CRC32.
    match entry.read_to_end(&mut text) {
        Ok(_) => Ok(Some(text)),
        Err(_) => Ok(None),
    }
}

/// What one entry name means.
enum EntryName {
    Document { dir: String, id: String },
    Attachment,
    Deleted { dir: String, id: String },
    Manifest,
}

/// Parses and vets an entry name: no absolute paths, no `..`, nothing outside the layout.
fn entry_name(name: &str) -> Option<EntryName> {
    if name == MANIFEST_ENTRY {
        return Some(EntryName::Manifest);
    }
    let parts: Vec<&str> = name.split('/').collect();
    let safe = |s: &&str| !s.is_empty() && *s != "." && *s != ".." && !s.contains('\\');
    if name.starts_with('/') || !parts.iter().all(safe) {
        return None;
    }
    match parts.as_slice() {
        [dir, id, DOCUMENT_FILE] => Some(EntryName::Document {
            dir: dir.to_string(),
            id: id.to_string(),
        }),
        [_, _, ATTACHMENTS_DIR, _] => Some(EntryName::Attachment),
        [dir, id, DELETED_ENTRY] => Some(EntryName::Deleted {
            dir: dir.to_string(),
            id: id.to_string(),
        }),
        _ => None,
    }
}

/// Receives an archive's entries: the collection, the record (`None` for a deletion) and the
/// document id.
type EntryVisitor<'a> =
    dyn FnMut(&ArchiveCollection, Option<crate::model::Record>, &str) -> Result<()> + 'a;

/// Reads every entry of one archive, checking the file's CRC32 (from its name), every entry's
/// zip CRC32, every document's record CRC32 and the counts, and hands documents and deletions
/// to `visit` in order. Errors name the file and entry.
fn read_archive(item: &ChainItem, visit: &mut EntryVisitor<'_>) -> Result<u64> {
    let path = &item.path;
    let name = file_name_of(path);
    let want_crc = name
        .trim_end_matches(".zip")
        .rsplit('-')
        .next()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| damaged(path, "the file name carries no CRC32"))?;
    let crc = file_crc32(path)?;
    if crc != want_crc {
        return Err(damaged(
            path,
            format!("file CRC32 {crc:08x} does not match {want_crc:08x} in its name"),
        ));
    }
    let m = &item.manifest;
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut records = 0u64;
    // Attachments precede their document.json (the writer's order, docs/FORMAT.md §3); they are
    // held until it arrives, and dropped with it.
    let mut attachments: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    zipstream::read_entries(
        file,
        |r: Refused| match r.entry {
            Some(e) => damaged(&path.join(e), r.cause),
            None => damaged(path, r.cause),
        },
        &mut |ename, data| {
            let epath = path.join(ename);
            let Some(kind) = entry_name(ename) else {
                return Err(damaged(
                    &epath,
                    "entry name outside the archive layout (refused)",
                ));
            };
            let collection = |dir: &str| {
                m.collections.iter().find(|c| c.dir == dir).ok_or_else(|| {
                    damaged(&epath, "entry of a collection the manifest does not list")
                })
            };
            match kind {
                EntryName::Manifest => {}
                EntryName::Attachment => {
                    attachments.insert(ename.to_string(), data);
                }
                EntryName::Deleted { dir, id } => {
                    let c = collection(&dir)?;
                    counts.entry(dir.clone()).or_default().1 += 1;
                    visit(c, None, &id)?;
                }
                EntryName::Document { dir, id } => {
                    let c = collection(&dir)?;
                    let prefix = format!("{dir}/{id}/{ATTACHMENTS_DIR}/");
                    let record = crate::document::decode(&data, &mut |att| {
                        attachments
                            .remove(&format!("{prefix}{att}"))
                            .ok_or_else(|| {
                                format!(
                                    "attachment `{att}` is not in the archive before its document"
                                )
                            })
                    })
                    .map_err(|cause| damaged(&epath, cause))?;
                    attachments.clear();
                    if docid::encode(record.key.as_bytes()) != id {
                        return Err(damaged(
                            &epath,
                            "the document's key does not match its name",
                        ));
                    }
                    counts.entry(dir.clone()).or_default().0 += 1;
                    records += 1;
                    visit(c, Some(record), &id)?;
                }
            }
            Ok(())
        },
    )?;
    for c in &m.collections {
        let (d, x) = counts.get(&c.dir).copied().unwrap_or_default();
        if (d, x) != (c.documents, c.deletions) {
            return Err(damaged(
                path,
                format!(
                    "collection `{}` has {d} documents and {x} deletions, the manifest says {} and {}",
                    c.info.name, c.documents, c.deletions
                ),
            ));
        }
    }
    Ok(records)
}

/// Checks that each archive continues its predecessor: an incremental's parent is the previous
/// file and starts where it ended; a full archive starts a new chain. Sequence numbers may skip
/// only archives `tidemark prune` removed (`pruned`), and only before a full archive.
fn check_continuity(chain: &[ChainItem], pruned: &BTreeSet<u64>) -> Vec<Error> {
    let mut problems = Vec::new();
    for (i, item) in chain.iter().enumerate() {
        let m = &item.manifest;
        if let Some(prev) = i.checked_sub(1).map(|p| &chain[p]) {
            let after = prev.manifest.sequence;
            if m.sequence <= after {
                problems.push(damaged(
                    &item.path,
                    format!("sequence {} does not follow {after}", m.sequence),
                ));
            } else if m.sequence > after + 1 {
                let lost: Vec<u64> = (after + 1..m.sequence)
                    .filter(|s| !pruned.contains(s))
                    .collect();
                if !lost.is_empty() || m.kind != RunKind::Full {
                    problems.push(damaged(
                        &item.path,
                        format!(
                            "sequence {} where {} was expected (archives {}..{} are missing{})",
                            m.sequence,
                            after + 1,
                            after + 1,
                            m.sequence - 1,
                            if lost.is_empty() {
                                " and this incremental needs them"
                            } else {
                                ", not pruned"
                            }
                        ),
                    ));
                }
            }
        }
        if m.kind == RunKind::Full {
            continue;
        }
        match (i.checked_sub(1).map(|p| &chain[p]), &m.parent, &m.from) {
            (Some(prev), Some(parent), Some(from))
                if *parent == file_name_of(&prev.path) && *from == prev.manifest.to => {}
            (Some(prev), _, _) => problems.push(damaged(
                &item.path,
                format!(
                    "does not continue {}: it starts at {:?}, which ended at {}",
                    file_name_of(&prev.path),
                    m.from.as_ref().map(|f| f.to_string()),
                    prev.manifest.to
                ),
            )),
            (None, _, _) => problems.push(damaged(
                &item.path,
                "an incremental without a full archive before it",
            )),
        }
    }
    problems
}

/// Verifies every archive in `dir`: file CRC32s, entry and record CRC32s, counts, entry names and
/// the chain's continuity. Damage is listed in the report.
pub fn verify_archives(dir: &Path) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let head = read_head(dir).unwrap_or_else(|e| {
        report.problems.push(e);
        None
    });
    let files = archive_files(dir)?;
    if files.is_empty() && head.is_none() && report.problems.is_empty() {
        // Nothing to call intact (a first backup that never completed): restore refuses it too.
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "no tidemark archives in this directory".into(),
        });
    }
    let mut chain = Vec::new();
    for path in files {
        match read_manifest(&path) {
            Ok(manifest) => {
                let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                chain.push(ChainItem {
                    path,
                    manifest,
                    size,
                });
            }
            Err(e) => report.problems.push(e),
        }
    }
    for item in &chain {
        report.collections = report.collections.max(item.manifest.collections.len());
        match read_archive(item, &mut |_, _, _| Ok(())) {
            Ok(n) => report.records += n,
            Err(e) => report.problems.push(e),
        }
    }
    if report.problems.is_empty() {
        report.problems.extend(check_continuity(
            &chain,
            &crate::prune::pruned_sequences(dir)?,
        ));
    }
    report
        .problems
        .extend(check_head(dir, head.as_ref(), &chain));
    Ok(report)
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
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map(RestorePoint::Time)
            .map_err(|e| format!("`{s}` is neither a checkpoint number nor an RFC 3339 time: {e}"))
    }
}

fn captured(item: &ChainItem) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(
        &item.manifest.captured_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
}

/// Picks the archives to replay for a restore at `at`: the last full archive at or before it and
/// the incrementals after it.
fn plan<'a>(chain: &'a [ChainItem], at: &RestorePoint) -> Result<&'a [ChainItem]> {
    let end = match at {
        RestorePoint::Latest => chain.len(),
        RestorePoint::Time(t) => {
            let i = chain
                .iter()
                .rposition(|c| captured(c).is_some_and(|c| c <= *t))
                .ok_or_else(|| Error::BadInput {
                    path: PathBuf::from(format!("--at {t}")),
                    cause: format!(
                        "no backup was captured at or before that time (the first: {})",
                        chain[0].manifest.captured_at
                    ),
                })?;
            i + 1
        }
        RestorePoint::Checkpoint(pos) => {
            let pos = *pos;
            let i = chain
                .iter()
                .position(|c| c.manifest.to.position == pos)
                .ok_or_else(|| {
                    let have: Vec<String> = chain
                        .iter()
                        .map(|c| c.manifest.to.position.to_string())
                        .collect();
                    Error::BadInput {
                        path: PathBuf::from(format!("--at {pos}")),
                        cause: format!(
                            "no backup ends at that checkpoint (available: {})",
                            have.join(", ")
                        ),
                    }
                })?;
            i + 1
        }
    };
    let start = chain[..end]
        .iter()
        .rposition(|c| c.manifest.kind == RunKind::Full)
        .ok_or_else(|| Error::BadInput {
            path: PathBuf::from("archives"),
            cause: "no full archive to start from".into(),
        })?;
    Ok(&chain[start..end])
}

/// Restores the archive chain in `dir`, at `at`, into a new
/// store at `target`. The archives are read newest first straight into a new store beside the
/// target, checking every CRC32 and count on the way; the new store replaces the target only
/// when complete, and is removed if any check fails (the target is never touched).
pub fn restore_archives_to_path(
    dir: &Path,
    at: &RestorePoint,
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    if !options.force && factory.holds_data(target)? {
        return Err(Error::TargetNotEmpty {
            path: target.to_path_buf(),
        });
    }
    let head = read_head(dir)?;
    let chain = read_chain(dir)?;
    if let Some(problem) = check_head(dir, head.as_ref(), &chain) {
        return Err(problem);
    }
    if chain.is_empty() {
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "no tidemark archives in this directory".into(),
        });
    }
    let items = plan(&chain, at)?;
    if let Some(p) = check_continuity(items, &BTreeSet::new()).into_iter().next() {
        return Err(p);
    }
    let last = &items[items.len() - 1].manifest;
    crate::restore::check_collections(
        &|n| last.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    crate::restore::restore_to_path(
        factory,
        target,
        (&last.store_schema, last.store_kind),
        &mut |sink| replay_newest_first(items, sink, options),
    )
}

/// Writes the state at the last archive of `items` (a full archive and the incrementals after
/// it) into `sink` in one pass per archive, newest first: the first time a document id turns
/// up, its newest state (or deletion) is final and older entries for it are skipped. A
/// collection missing from an archive's manifest was dropped then, so entries older than that
/// are not its own. Memory: the ids found in the incrementals (the full archive adds none).
fn replay_newest_first(
    items: &[ChainItem],
    mut sink: Box<dyn crate::backend::RestoreSink + '_>,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let last = &items[items.len() - 1].manifest;
    let wanted = |n: &CollectionName| options.collections.as_ref().is_none_or(|w| w.contains(n));
    let mut open: BTreeSet<CollectionName> = BTreeSet::new();
    for c in last.collections.iter().filter(|c| wanted(&c.info.name)) {
        sink.create_collection(&c.info, last.store_kind)?;
        open.insert(c.info.name.clone());
    }
    let mut seen: std::collections::HashSet<(CollectionName, String)> = Default::default();
    let mut written: BTreeMap<CollectionName, u64> = BTreeMap::new();
    let mut batches: BTreeMap<CollectionName, crate::restore::Batch> = BTreeMap::new();
    let mut bytes = 0u64;
    for item in items.iter().rev() {
        open.retain(|n| item.manifest.collections.iter().any(|c| &c.info.name == n));
        let base = item.manifest.kind == RunKind::Full;
        read_archive(item, &mut |c, record, id| {
            let name = &c.info.name;
            if !open.contains(name) {
                return Ok(());
            }
            if base {
                if !seen.is_empty() && seen.contains(&(name.clone(), id.to_string())) {
                    return Ok(());
                }
            } else if !seen.insert((name.clone(), id.to_string())) {
                return Ok(());
            }
            if let Some(record) = record {
                *written.entry(name.clone()).or_default() += 1;
                let batch = batches
                    .entry(name.clone())
                    .or_insert_with(|| crate::restore::Batch::new(options));
                bytes += batch.push(&mut *sink, name, record)?;
            }
            Ok(())
        })?;
        if base {
            break;
        }
    }
    for (name, batch) in &mut batches {
        batch.flush(&mut *sink, name)?;
    }
    let path = &items[items.len() - 1].path;
    for c in last.collections.iter().filter(|c| wanted(&c.info.name)) {
        let n = written.get(&c.info.name).copied().unwrap_or(0);
        if n != c.records {
            return Err(damaged(
                path,
                format!(
                    "replaying the chain gives collection `{}` {n} records, the manifest says {}",
                    c.info.name, c.records
                ),
            ));
        }
    }
    sink.finish(&last.store_schema, last.store_kind)?;
    Ok(RestoreSummary {
        collections: last
            .collections
            .iter()
            .filter(|c| wanted(&c.info.name))
            .count(),
        records: written.values().sum(),
        bytes,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod window_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
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
            let got = manifest_from_tail(&path).unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&b"{\"the\": \"manifest\"}"[..]),
                "{n} entries"
            );
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
