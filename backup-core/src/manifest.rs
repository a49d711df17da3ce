//! The folder format's manifest: what a folder backup holds and up to which checkpoint.

use crate::checkpoint::Checkpoint;
use crate::durable::{self, Sync};
use crate::error::{Error, Result};
use crate::model::{CollectionInfo, StoreKind, StoreSchema};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` value of a folder manifest.
pub const FOLDER_FORMAT: &str = "tidemark-folder";
/// The folder format version this crate writes and reads.
pub const FOLDER_FORMAT_VERSION: u32 = 1;

/// Whether a backup run copied the whole store or only its changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// A consistent copy of the whole store.
    Full,
    /// The changes since the previous backup's checkpoint.
    Incremental,
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunKind::Full => "full",
            RunKind::Incremental => "incremental",
        })
    }
}

/// One collection in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestCollection {
    /// The collection and its schema.
    #[serde(flatten)]
    pub info: CollectionInfo,
    /// Its directory under the backup root (the encoded name).
    pub dir: String,
    /// How many records it holds at the checkpoint.
    pub records: u64,
    /// The key index file (under `.tidemark/index/`) matching this backup, if the store scans
    /// in key order: what a diff-based incremental compares against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_index: Option<String>,
    /// Delta files over `key_index` (same directory, oldest first): the keys each incremental
    /// since the index was written changed. Only an archive's key state has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_deltas: Vec<String>,
}

/// The manifest of a folder backup (`DIR/.tidemark/manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderManifest {
    /// Always `FOLDER_FORMAT`.
    pub format: String,
    /// Always `FOLDER_FORMAT_VERSION`.
    pub format_version: u32,
    /// The kind of store backed up.
    pub store_kind: StoreKind,
    /// The store as the user named it (for messages only).
    pub source: String,
    /// Every change at or before this checkpoint is in the backup, none after it.
    pub checkpoint: Checkpoint,
    /// When the first full backup in this folder was taken (RFC 3339, UTC).
    pub created_at: String,
    /// When the last run finished (RFC 3339, UTC).
    pub updated_at: String,
    /// What the last run was.
    pub last_run: RunKind,
    /// The collections, in the store's order.
    pub collections: Vec<ManifestCollection>,
    /// Store-level schema (e.g. SQLite indexes, views, triggers).
    #[serde(default)]
    pub store_schema: StoreSchema,
    /// What the store asked to be kept for the next backup's check that every change since is
    /// in its change log ([`crate::View::store_marks`]; RocksDB: the SST files of this
    /// backup's view). Absent where the store keeps none, and in states written before
    /// 2026-12-03.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_marks: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    crc32: u32,
    manifest: serde_json::Value,
}

impl FolderManifest {
    /// Reads and checks a manifest file. `Ok(None)` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<FolderManifest>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let bad = |cause: String| Error::Manifest {
            path: path.to_path_buf(),
            cause,
        };
        let file: ManifestFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not a tidemark manifest: {e}")))?;
        let body = serde_json::to_vec(&file.manifest).expect("a JSON value serializes");
        let crc = crc32fast::hash(&body);
        if crc != file.crc32 {
            return Err(bad(format!(
                "CRC32 {crc:08x} does not match the stored {:08x}: the manifest is damaged",
                file.crc32
            )));
        }
        // Past the CRC32 the bytes are as they were written: what this tidemark cannot take is
        // a newer writer's, not damage (a backup must not replace it with a full one).
        let newer = |cause: String| Error::NewerFormat {
            path: path.to_path_buf(),
            cause,
            reads: FOLDER_FORMAT_VERSION,
        };
        let manifest: FolderManifest = serde_json::from_value(file.manifest)
            .map_err(|e| newer(format!("unexpected content: {e}")))?;
        if manifest.format != FOLDER_FORMAT {
            return Err(newer(format!(
                "format is `{}`, expected `{FOLDER_FORMAT}`",
                manifest.format
            )));
        }
        if manifest.format_version != FOLDER_FORMAT_VERSION {
            return Err(newer(format!(
                "format version {} is not supported",
                manifest.format_version
            )));
        }
        Ok(Some(manifest))
    }

    /// Writes the manifest durably (aside, fsync, rename, fsync the directory).
    pub fn write(&self, path: &Path) -> Result<()> {
        let body = serde_json::to_value(self).expect("a manifest serializes");
        let crc32 = crc32fast::hash(&serde_json::to_vec(&body).expect("a JSON value serializes"));
        let mut bytes = serde_json::to_vec_pretty(&ManifestFile {
            crc32,
            manifest: body,
        })
        .expect("a manifest serializes");
        bytes.push(b'\n');
        durable::write_atomic(path, &bytes, Sync::Now)
    }
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("the current time formats as RFC 3339")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A damaged manifest file never panics the reader and is never accepted as another
        /// valid manifest.
        #[test]
        fn damaged_manifests_are_refused(pos in 0usize..10_000, bit in 0u8..8) {
            let dir = tempfile::tempdir().expect("tmp");
            let path = dir.path().join("manifest.json");
            let m = FolderManifest {
                format: FOLDER_FORMAT.into(),
                format_version: FOLDER_FORMAT_VERSION,
                store_kind: StoreKind::Sled,
                source: "sled:/x".into(),
                checkpoint: Checkpoint::new(crate::StoreId("id".into()), 42),
                created_at: now_rfc3339(),
                updated_at: now_rfc3339(),
                last_run: RunKind::Full,
                collections: vec![],
                store_schema: StoreSchema::default(),
                store_marks: Some(serde_json::json!({ "sst_files": [7, 9] })),
            };
            m.write(&path).expect("write");
            let mut bytes = std::fs::read(&path).expect("read");
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            std::fs::write(&path, &bytes).expect("write");
            if let Ok(Some(read)) = FolderManifest::read(&path) {
                prop_assert_eq!(read, m);
            }
        }
    }
}
