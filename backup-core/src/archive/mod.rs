//! The archive format (OrientDB-style): one compressed zip file per backup in a directory, a
//! full one then incrementals, each naming its parent and its checkpoint range.
//!
//! ```text
//! DIR/tidemark-000001-full-1a2b3c4d.zip      the first backup (full)
//! DIR/tidemark-000002-incr-5e6f7a8b.zip      changes since 000001's checkpoint
//! DIR/.tidemark-state/                       key state of the newest archive (a cache)
//! ```
//!
//! A file's name carries the CRC32 of the whole file, so one changed byte anywhere is found.
//! Format 2 (written since) packs records as JSON lines into a few entries per collection
//! (`data/<collection>/000001.jsonl`, …); format 1 (still read) held one entry per document.
//! `tidemark/manifest.json` is the last entry. See `docs/FORMAT.md` §3.
//!
//! The modules follow the data: [`write`](self) streams the engine's records into an archive
//! over every core; `chain` knows where archives live and how they follow each other; `v1`
//! and `v2` read the two formats; `verify` and `restore` drive them. Only `crate::zipstream`
//! knows zip bytes.

mod chain;
pub(crate) use chain::read_whole;
mod compact;
mod graph;
mod line;
mod restore;
mod v1;
mod v2;
mod verify;
mod write;

pub(crate) use chain::load_chain;
pub use chain::{
    chain_and_damage, check_manifest_format, is_archive_dir, read_chain, settled_chain,
    slot_of_name, ArchiveOutput, ArchiveRead, ChainLock, ChainStore, Head, Listing, LocalChain,
    PartSink, PartWriter, RestorePoint, Slot, Survey, HEAD_FILE, LOST_POINT,
};
pub use compact::{
    compact_chain, compact_recent, CompactOptions, CompactSummary, Compacted, DEFAULT_FANOUT,
};
pub use graph::sort_chain;
pub(crate) use graph::{from_full as paths_from_full, path_to as path_of};
pub use restore::{restore_archives_to_path, restore_chain};
pub use verify::{verify_archives, verify_chain, verify_chain_with};
pub use write::{backup_archive, backup_archive_to};

use crate::checkpoint::Checkpoint;
use crate::engine::BackupSummary;
use crate::error::{Error, Result};
use crate::manifest::RunKind;
use crate::model::{CollectionInfo, StoreKind, StoreSchema};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The working mirror's directory that format-1 runs kept in an archive directory; runs now
/// remove it.
pub const LEGACY_MIRROR_DIR: &str = ".tidemark-mirror";
/// The manifest entry, always the last one in an archive.
pub const MANIFEST_ENTRY: &str = "tidemark/manifest.json";
/// The `format` value of an archive manifest.
pub const ARCHIVE_FORMAT: &str = "tidemark-archive";
/// The archive format version this crate writes (it reads 1 and 2).
pub const ARCHIVE_FORMAT_VERSION: u32 = 2;

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

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Deflate(level) => write!(f, "deflate level {level}"),
            Compression::Zstd(level) => write!(f, "zstd level {level}"),
            Compression::None => f.write_str("stored (no compression)"),
        }
    }
}

/// Options of the archive writer.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveOptions {
    /// The codec and level.
    pub compression: Compression,
    /// The output buffer size in bytes (memory is bounded by it, not by the store).
    pub buffer_size: usize,
    /// Threads that encode and compress (decompress, for restores): every core by default.
    pub threads: usize,
    /// Backups: continue an existing chain in the codec of its newest archive, at that codec's
    /// default level (a zip records the method, not the level), and use `compression` for a
    /// new chain only. So a chain begun with zstd stays zstd when a later backup names no
    /// codec. `false` (the default): every archive in `compression`.
    pub follow_chain: bool,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            compression: Compression::default(),
            buffer_size: 1 << 20,
            threads: crate::pipeline::default_threads(),
            follow_chain: false,
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
    /// Format 2: its data entries, `data/<dir>/000001.jsonl` up to this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u64>,
    /// Format 2: how many of the first parts hold a scan (every key at most once, puts
    /// only); the rest replay changes (later lines supersede earlier ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_parts: Option<u64>,
}

/// The manifest of one archive (`tidemark/manifest.json`, the last entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveManifest {
    /// Always `ARCHIVE_FORMAT`.
    pub format: String,
    /// Always `ARCHIVE_FORMAT_VERSION`.
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
    /// Format 2: parts of collections dropped while the archive was written (directory →
    /// number of parts); they belong to no collection and readers skip them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_parts: Option<std::collections::BTreeMap<String, u64>>,
    /// A compacted archive (`tidemark compact`): the first sequence it covers (its
    /// `sequence` is the last) and the archive it ends as. `None` for an archive a backup wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers: Option<Covers>,
}

/// What a compacted archive stands for: the archives `first..=sequence` of its chain, merged
/// (each key's last line). See `docs/FORMAT.md` §3.4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Covers {
    /// The first sequence it covers.
    pub first: u64,
    /// The file name of the archive that was written at its last sequence (what a later
    /// incremental names as its `parent`).
    pub last_archive: String,
}

impl ArchiveManifest {
    /// The first sequence the archive covers: its own, unless it is compacted.
    pub fn first(&self) -> u64 {
        self.covers.as_ref().map_or(self.sequence, |c| c.first)
    }
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
    /// The run's summary (how changes were found, records, checkpoint).
    pub backup: BackupSummary,
    /// The archive written.
    pub file: PathBuf,
    /// Full or incremental archive.
    pub kind: RunKind,
    /// Compressed size of the archive.
    pub size: u64,
    /// Records and deletions in it.
    pub entries: u64,
    /// The codec and level it was written with.
    pub compression: Compression,
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

fn damaged(path: &Path, cause: impl Into<String>) -> Error {
    Error::Damaged {
        path: path.to_path_buf(),
        cause: cause.into(),
    }
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The compact JSON the manifest's CRC32 covers, and the pretty entry text.
fn manifest_text(manifest: &ArchiveManifest) -> Result<Vec<u8>> {
    let body = serde_json::to_value(manifest).map_err(|e| Error::Manifest {
        path: PathBuf::from(MANIFEST_ENTRY),
        cause: e.to_string(),
    })?;
    let crc32 = crc32fast::hash(&serde_json::to_vec(&body).unwrap_or_default());
    serde_json::to_vec_pretty(&ManifestEntry {
        crc32,
        manifest: body,
    })
    .map_err(|e| Error::Manifest {
        path: PathBuf::from(MANIFEST_ENTRY),
        cause: e.to_string(),
    })
}
