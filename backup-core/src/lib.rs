//! # backup-core
//!
//! tidemark's store-independent engine: the [`StorageBackend`] trait that RocksDB, sled and
//! SQLite implement, the data model, the backup formats, and the backup, restore and verify
//! logic, written once for every store. This crate names no concrete store.
//!
//! ```
//! use backup_core::{docid, CollectionName, Key};
//!
//! // Any key bytes map reversibly to a safe file name.
//! let key = Key(b"user/42".to_vec());
//! let name = docid::encode(key.as_bytes());
//! assert_eq!(name, "user%2F42");
//! assert_eq!(docid::decode(&name), Some(key.0));
//! let _ = CollectionName::new("users");
//! ```
//!
//! A backup is `backup_folder(&backend, dir, &options, &mut |event| …)`; a restore is
//! [`restore_folder_to_path`] (a new store built aside) or [`restore_folder_into`] (an open,
//! empty store). See `ARCHITECTURE.md` and `docs/FORMAT.md` at the repository root.

pub mod archive;
pub mod backend;
pub mod checkpoint;
pub mod crypt;
pub mod destination;
pub mod docid;
pub mod document;
pub mod durable;
pub mod engine;
pub mod error;
pub mod folder;
pub mod keyindex;
pub mod live;
pub mod lock;
pub mod manifest;
mod memory;
pub mod model;
mod pipeline;
pub mod prune;
pub mod restore;
pub mod scratch;
pub mod verify;
mod zipstream;

pub use archive::{
    backup_archive, backup_archive_to, compact_chain, compact_recent, read_chain,
    restore_archives_to_path, restore_chain, verify_archives, verify_chain, verify_chain_with,
    ArchiveOptions, ArchiveOutput, ArchiveRead, ArchiveSummary, ChainLock, ChainStore,
    CompactOptions, CompactSummary, Compacted, Compression, LocalChain, PartSink, PartWriter,
    RestorePoint, Survey, DEFAULT_FANOUT,
};
pub use backend::{RestoreSink, StorageBackend, View};
pub use checkpoint::{Checkpoint, StoreId};
pub use crypt::{ChainKey, KeyOptions, KEY_FILE};
pub use destination::{claim_format, detect_format, DestFormat};
pub use engine::{
    backup_folder, BackupMode, BackupOptions, BackupSummary, Event, FullReason, Method,
};
pub use error::{Error, Result};
pub use folder::WriteEvent;
pub use live::{LiveBackup, LiveEvent, LiveFormat, LiveOptions, LiveSummary};
pub use lock::DestinationLock;
pub use manifest::RunKind;
pub use memory::release_large_buffers_promptly;
pub use model::{
    Change, ChangeOp, CollectionInfo, CollectionName, Field, Key, Record, Row, StoreKind,
    StoreSchema, Value,
};
pub use pipeline::{default_threads, DropBehind};
pub use prune::{
    check_retention, plan_prune, prune_archives, prune_chain, prune_local, PrunePlan, Retention,
};
pub use restore::{
    check_store_dir, dir_store_holds_data, restore_folder_into, restore_folder_to_path,
    RestoreOptions, RestoreSummary, StoreFactory,
};
pub use scratch::ScratchDir;
pub use verify::{verify_folder, verify_folder_with, VerifyReport};
