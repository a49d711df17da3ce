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
use crate::manifest::{now_rfc3339, FolderManifest, ManifestCollection, RunKind};
use crate::model::{CollectionInfo, CollectionName, Key, StoreKind, StoreSchema};
use crate::restore::{restore_folder_to_path, RestoreOptions, RestoreSummary, StoreFactory};
use crate::verify::VerifyReport;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

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

/// The mirror remembers the archive it was last cut into.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct MirrorState {
    last_archive: String,
    sequence: u64,
    checkpoint: Checkpoint,
}

fn mirror_state_path(dir: &Path) -> PathBuf {
    dir.join(MIRROR_DIR)
        .join(".tidemark")
        .join("archive-state.json")
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
    let started = Instant::now();
    if dir.exists() && !dir.is_dir() {
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "exists and is not a directory".into(),
        });
    }
    durable::create_dir_all(dir)?;
    // What a killed run left half-written is never part of the chain: remove it.
    for entry in fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tidemark-") && name.ends_with(".zip.tmp") {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    let chain = read_chain(dir)?;
    let mirror = dir.join(MIRROR_DIR);
    let state: Option<MirrorState> = fs::read(mirror_state_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let head = chain.last();
    // The mirror must sit exactly at the chain's head; anything else (a crash between the
    // mirror's commit and the archive's rename, a deleted archive, a lost mirror) starts the
    // chain's next archive as a full one.
    let in_step = match (&state, head) {
        (Some(s), Some(h)) => {
            s.last_archive == file_name_of(&h.path) && s.checkpoint == h.manifest.to
        }
        _ => false,
    };
    if head.is_some() && !in_step && mirror.join(".tidemark").exists() {
        events(Event::Notice(
            "the working mirror and the newest archive disagree: this archive will be full".into(),
        ));
    }
    let mut touched: BTreeSet<(CollectionName, String)> = BTreeSet::new();
    let mode = if in_step {
        options.mode
    } else {
        BackupMode::Full
    };
    let summary = backup_folder(
        backend,
        &mirror,
        &BackupOptions {
            mode,
            ..options.clone()
        },
        &mut |e| {
            if let Event::Written(w) = &e {
                touched.insert((w.collection.clone(), w.document_id.clone()));
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
        dir,
        mirror: &mirror,
        manifest: &manifest,
        sequence,
        kind,
        parent,
        from,
        touched: (!full).then_some(&touched),
        captured_at: &summary.captured_at,
    };
    let (file, entries) = cut.write(archive)?;
    let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let state = MirrorState {
        last_archive: file_name_of(&file),
        sequence,
        checkpoint: manifest.checkpoint.clone(),
    };
    durable::write_atomic(
        &mirror_state_path(dir),
        &serde_json::to_vec_pretty(&state).expect("state serializes"),
        durable::Sync::Now,
    )?;
    Ok(ArchiveSummary {
        backup: summary,
        file,
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
    dir: &'a Path,
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
    fn write(&self, options: &ArchiveOptions) -> Result<(PathBuf, u64)> {
        let tmp = self
            .dir
            .join(format!(".tidemark-{:06}.zip.tmp", self.sequence));
        let file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let mut zip = ZipWriter::new(BufWriter::with_capacity(
            options.buffer_size.max(4096),
            file,
        ));
        let zerr = |e: zip::result::ZipError| Error::io("write", &tmp, std::io::Error::other(e));
        let opts = match options.compression {
            // Level 0 is "no compression" (as in OrientDB); zip's deflate has no level 0.
            Compression::Deflate(0) | Compression::None => {
                SimpleFileOptions::default().compression_method(CompressionMethod::Stored)
            }
            Compression::Deflate(level) => SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .compression_level(Some(i64::from(level.min(9)))),
            Compression::Zstd(level) => SimpleFileOptions::default()
                .compression_method(CompressionMethod::Zstd)
                .compression_level(Some(i64::from(level))),
        };
        let add = |zip: &mut ZipWriter<BufWriter<File>>, name: &str, bytes: &[u8]| {
            zip.start_file(name, opts.large_file(bytes.len() as u64 >= u32::MAX as u64))
                .map_err(zerr)?;
            zip.write_all(bytes)
                .map_err(|e| Error::io("write", &tmp, e))
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
        let out = zip.finish().map_err(zerr)?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        drop(file);
        let crc = file_crc32(&tmp)?;
        let path = self.dir.join(file_name(self.sequence, self.kind, crc));
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
        durable::sync_dir(self.dir)?;
        Ok((path, entries))
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
    let mut zip = open_zip(path)?;
    let entry_path = path.join(MANIFEST_ENTRY);
    let mut text = Vec::new();
    zip.by_name(MANIFEST_ENTRY)
        .map_err(|e| damaged(&entry_path, format!("missing: {e}")))?
        .read_to_end(&mut text)
        .map_err(|e| damaged(&entry_path, e.to_string()))?;
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
    let mut zip = open_zip(path)?;
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut records = 0u64;
    for i in 0..zip.len() {
        let (ename, is_link) = {
            let f = zip
                .by_index(i)
                .map_err(|e| damaged(path, format!("entry {i}: {e}")))?;
            (f.name().to_string(), f.is_symlink())
        };
        let epath = path.join(&ename);
        if is_link {
            return Err(damaged(&epath, "symbolic links are refused"));
        }
        let Some(kind) = entry_name(&ename) else {
            return Err(damaged(
                &epath,
                "entry name outside the archive layout (refused)",
            ));
        };
        let collection = |dir: &str| {
            m.collections
                .iter()
                .find(|c| c.dir == dir)
                .ok_or_else(|| damaged(&epath, "entry of a collection the manifest does not list"))
        };
        match kind {
            EntryName::Manifest | EntryName::Attachment => {
                // Read to the end so the zip CRC32 is checked; attachments are also read (and
                // checked against document.json) with their document.
                let mut sink = Vec::new();
                zip.by_index(i)
                    .and_then(|mut f| f.read_to_end(&mut sink).map_err(Into::into))
                    .map_err(|e| damaged(&epath, e.to_string()))?;
            }
            EntryName::Deleted { dir, id } => {
                let c = collection(&dir)?;
                counts.entry(dir.clone()).or_default().1 += 1;
                visit(c, None, &id)?;
            }
            EntryName::Document { dir, id } => {
                let c = collection(&dir)?;
                let mut json = Vec::new();
                zip.by_index(i)
                    .and_then(|mut f| f.read_to_end(&mut json).map_err(Into::into))
                    .map_err(|e| damaged(&epath, e.to_string()))?;
                let prefix = format!("{dir}/{id}/{ATTACHMENTS_DIR}/");
                let record = crate::document::decode(&json, &mut |att| {
                    let mut data = Vec::new();
                    zip.by_name(&format!("{prefix}{att}"))
                        .map_err(|e| format!("attachment `{att}`: {e}"))?
                        .read_to_end(&mut data)
                        .map_err(|e| format!("attachment `{att}`: {e}"))?;
                    Ok(data)
                })
                .map_err(|cause| damaged(&epath, cause))?;
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
    }
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
    let files = archive_files(dir)?;
    let mut report = VerifyReport::default();
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
/// store at `target`. Every archive it needs is verified before anything is written; the chain is
/// replayed into a temporary folder next to the target, which is then restored like a folder
/// backup (and removed).
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
    let chain = read_chain(dir)?;
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
    for item in items {
        read_archive(item, &mut |_, _, _| Ok(()))?;
    }
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".tidemark-replay-")
        .tempdir_in(parent)
        .map_err(|e| Error::io("create a scratch directory in", parent, e))?;
    let folder = FolderBackup::open(scratch.path())?;
    let mut previous: Option<FolderManifest> = None;
    for item in items {
        let m = &item.manifest;
        let mut run = folder.begin(m.kind, previous.as_ref())?;
        for c in &m.collections {
            run.create_collection(&c.info.name)?;
        }
        if let Some(p) = &previous {
            for old in &p.collections {
                if !m.collections.iter().any(|c| c.info.name == old.info.name) {
                    run.drop_collection(&old.info.name);
                }
            }
        }
        read_archive(item, &mut |c, record, id| {
            match record {
                Some(r) => {
                    run.put(&c.info.name, &r)?;
                }
                None => {
                    let key = docid::decode(id).map(Key);
                    match key {
                        Some(k) => {
                            run.delete(&c.info.name, &k)?;
                        }
                        None => run.delete_document(&c.info.name, id)?,
                    }
                }
            }
            Ok(())
        })?;
        let manifest = FolderManifest {
            format: crate::manifest::FOLDER_FORMAT.into(),
            format_version: crate::manifest::FOLDER_FORMAT_VERSION,
            store_kind: m.store_kind,
            source: m.source.clone(),
            checkpoint: m.to.clone(),
            created_at: m.created_at.clone(),
            updated_at: m.created_at.clone(),
            last_run: m.kind,
            collections: m
                .collections
                .iter()
                .map(|c| ManifestCollection {
                    info: c.info.clone(),
                    dir: c.dir.clone(),
                    records: run.count(&c.info.name),
                    key_index: None,
                })
                .collect(),
            store_schema: m.store_schema.clone(),
        };
        for (mc, ac) in manifest.collections.iter().zip(&m.collections) {
            if mc.records != ac.records {
                return Err(damaged(
                    &item.path,
                    format!(
                        "after replay collection `{}` holds {} records, the manifest says {}",
                        ac.info.name, mc.records, ac.records
                    ),
                ));
            }
        }
        run.commit(&manifest)?;
        previous = Some(manifest);
    }
    restore_folder_to_path(scratch.path(), factory, target, options)
}
