//! # backup-core
//!
//! tidemark's store-independent engine: the [`StorageBackend`] trait that RocksDB, sled and
//! SQLite implement, the data model, the backup formats, and the backup, restore and verify
//! logic, written once for every store. This crate names no concrete store.
//!
//! ```
//! use backup_core::{decode_docid, encode_docid, CollectionName, Key};
//!
//! // Any key bytes map reversibly to a safe file name.
//! let key = Key(b"user/42".to_vec());
//! let name = encode_docid(key.as_bytes());
//! assert_eq!(name, "user%2F42");
//! assert_eq!(decode_docid(&name), Some(key.0));
//! let _ = CollectionName::new("users");
//! ```
//!
//! A backup is `backup_folder(&backend, dir, &options, &mut |event| …)`; a restore is
//! [`restore_folder_to_path`] (a new store built aside) or [`restore_folder_into`] (an open,
//! empty store). See `ARCHITECTURE.md` and `docs/FORMAT.md` at the repository root.
//!
//! The modules are private: everything another crate uses is re-exported here, so that the
//! crate's face is this list and a module can be split or moved without breaking its users.

mod archive;
mod backend;
mod checkpoint;
mod crypt;
mod destination;
mod docid;
mod document;
mod durable;
mod engine;
mod error;
mod folder;
mod keyindex;
mod limits;
mod live;
mod lock;
mod manifest;
mod memory;
mod model;
mod pipeline;
mod prune;
mod restore;
mod scratch;
mod verify;
mod zipstream;

pub use archive::{
    backup_archive, backup_archive_to, chain_and_damage, check_manifest_format, compact_chain,
    compact_recent, read_chain, restore_archives_to_path, restore_chain, settled_chain,
    slot_of_name, sort_chain, verify_archives, verify_chain, verify_chain_with, ArchiveCollection,
    ArchiveManifest, ArchiveOptions, ArchiveOutput, ArchiveRead, ArchiveSummary, ChainItem,
    ChainLock, ChainStore, CompactOptions, CompactSummary, Compacted, Compression, Head, Listing,
    LocalChain, PartSink, PartWriter, RestorePoint, Slot, Survey, DEFAULT_FANOUT, HEAD_FILE,
    LOST_POINT,
};
pub use backend::{RestoreSink, StorageBackend, View};
pub use checkpoint::{Checkpoint, StoreId};
pub use crypt::{
    is_encrypted_dir, open_chain_key, read_key_files, repair_key_files, seal_output, verify_sealed,
    ChainKey, KeyFiles, KeyOptions, OpenedKey, RememberedKeys, SealedArchive, SharedKey, KEY_FILE,
    KEY_FILE_COPY, NEEDS_KEY,
};
pub use destination::{claim_format, detect_format, no_backup, not_a_file, DestFormat};
pub use docid::{decode as decode_docid, display_key, encode as encode_docid};
pub use document::{field_from_json, field_to_json, row_to_json_bytes};
pub use durable::{remove_temp_files, write_atomic, Sync as SyncMode};
pub use engine::{
    backup_folder, BackupMode, BackupOptions, BackupSummary, Event, FullReason, Method,
};
pub use error::{Error, Result};
pub use folder::{FolderBackup, WriteEvent, MANIFEST_FILE, META_DIR};
pub use limits::{open_files_limit, raise_open_files_limit, OpenFilesLimit};
pub use live::{LiveBackup, LiveEvent, LiveFormat, LiveOptions, LiveSummary};
pub use lock::{flock, holder_line, hostname, process_alive, DestinationLock};
pub use manifest::{now_rfc3339, FolderManifest, RunKind};
pub use memory::release_large_buffers_promptly;
pub use model::{
    Change, ChangeOp, CollectionInfo, CollectionName, Field, Key, Record, Row, StoreKind,
    StoreSchema, Value,
};
pub use pipeline::{default_threads, DropBehind};
pub use prune::{
    check_retention, parse_within, plan_prune, prune_archives, prune_chain, prune_local, PrunePlan,
    Retention, PRUNED_LOG,
};
pub use restore::{
    abandon_in_progress, check_dir_store_replaceable, check_store_dir, dir_store_holds_data,
    restore_folder_into, restore_folder_to_path, starts_as_sqlite, RestoreOptions, RestoreProgress,
    RestoreSummary, StoreFactory,
};
pub use scratch::ScratchDir;
pub use verify::{verify_folder, verify_folder_with, VerifyReport};
