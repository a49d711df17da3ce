//! Restore: rebuild a store from a backup, into any backend.

use crate::backend::{RestoreSink, StorageBackend};
use crate::durable;
use crate::error::{Error, Result};
use crate::folder::FolderBackup;
use crate::manifest::FolderManifest;
use crate::model::{CollectionName, Record, StoreKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Creates stores at paths, for restores that build a new store aside and rename it into place.
pub trait StoreFactory {
    /// The kind of store this factory makes.
    fn kind(&self) -> StoreKind;
    /// Whether a store at `path` holds data (a missing path holds none).
    fn holds_data(&self, path: &Path) -> Result<bool>;
    /// Creates a new, empty store at `path` (which does not exist).
    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>>;
    /// The files or directories that make up the store at `path` (the path itself first, then
    /// companions such as SQLite's `-wal` and `-shm`).
    fn store_files(&self, path: &Path) -> Vec<PathBuf> {
        vec![path.to_path_buf()]
    }
}

/// For stores that live in a directory (RocksDB, sled): checks that `path` is such a store,
/// recognized by its `marker` file, naming the problem otherwise.
pub fn check_store_dir(path: &Path, marker: &str, what: &str) -> Result<()> {
    if path.join(marker).is_file() {
        return Ok(());
    }
    Err(Error::BadInput {
        path: path.to_path_buf(),
        cause: if path.is_dir() {
            format!("not a {what} database (no {marker} file)")
        } else if path.exists() {
            "not a directory".into()
        } else {
            "no such directory".into()
        },
    })
}

/// [`StoreFactory::holds_data`] for stores that live in a directory: a missing or empty
/// directory holds nothing; a store (recognized by `marker`) holds data unless `is_empty` says
/// otherwise; anything else holds data, so it is never overwritten unasked.
pub fn dir_store_holds_data(
    path: &Path,
    marker: &str,
    what: &str,
    is_empty: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    if !path.is_dir() {
        return Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: format!("is a file, not a {what} directory"),
        });
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| Error::io("read", path, e))?;
    if entries.next().is_none() {
        return Ok(false);
    }
    if !path.join(marker).is_file() {
        return Ok(true);
    }
    // A store that cannot be opened is not known to be empty.
    Ok(!is_empty().unwrap_or(false))
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore only these collections (all when `None`).
    pub collections: Option<Vec<CollectionName>>,
    /// Replace a target that holds data.
    pub force: bool,
    /// Records handed to the store at once.
    pub batch_size: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            collections: None,
            force: false,
            batch_size: 4096,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSummary {
    /// Collections restored.
    pub collections: usize,
    /// Records restored.
    pub records: u64,
    /// Payload bytes restored.
    pub bytes: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// Restores the folder backup at `dir` into a new store at `target`, built aside and renamed
/// into place once complete: a damaged backup leaves the target untouched. Refuses a target
/// holding data unless `options.force`.
pub fn restore_folder_to_path(
    dir: &Path,
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    if !options.force && factory.holds_data(target)? {
        return Err(Error::TargetNotEmpty {
            path: target.to_path_buf(),
        });
    }
    let (folder, manifest) = FolderBackup::open_existing(dir)?;
    check_collections(
        &|n| manifest.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    restore_to_path(factory, target, &mut |sink| {
        write_all(&folder, &manifest, sink, options)
    })
}

/// Fills a new store beside `target` through `fill`, then swaps it into place (the old store,
/// if any, moved aside and removed only after the new one is in); on error the new store is
/// removed and the target is untouched.
pub(crate) fn restore_to_path(
    factory: &dyn StoreFactory,
    target: &Path,
    fill: &mut dyn FnMut(Box<dyn RestoreSink + '_>) -> Result<RestoreSummary>,
) -> Result<RestoreSummary> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::BadInput {
            path: target.to_path_buf(),
            cause: format!("the directory {} does not exist", parent.display()),
        });
    }
    let name = target
        .file_name()
        .ok_or_else(|| Error::BadInput {
            path: target.to_path_buf(),
            cause: "not a file path".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tmp = parent.join(format!(".{name}.tidemark-restore-{tag}"));
    let result = (|| {
        let backend = factory.create(&tmp)?;
        let summary = fill(backend.restore_sink()?)?;
        drop(backend);
        Ok(summary)
    })();
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            remove_store(factory, &tmp);
            return Err(e);
        }
    };
    // Swap: move the old store aside, the new one in, then delete the old one.
    let old: Vec<(PathBuf, PathBuf)> = factory
        .store_files(target)
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| {
            let aside = parent.join(format!(
                ".{}.tidemark-old-{tag}",
                p.file_name().unwrap_or_default().to_string_lossy()
            ));
            (p, aside)
        })
        .collect();
    for (p, aside) in &old {
        std::fs::rename(p, aside).map_err(|e| Error::io("rename", p, e))?;
    }
    for (from, to) in factory
        .store_files(&tmp)
        .iter()
        .zip(factory.store_files(target))
    {
        if from.exists() {
            std::fs::rename(from, &to).map_err(|e| Error::io("rename", from, e))?;
        }
    }
    durable::sync_dir(&parent)?;
    for (_, aside) in old {
        let removed = if aside.is_dir() {
            std::fs::remove_dir_all(&aside)
        } else {
            std::fs::remove_file(&aside)
        };
        removed.map_err(|e| Error::io("remove", &aside, e))?;
    }
    Ok(summary)
}

/// Restores the folder backup at `dir` into an open, empty store (library use). The backup is
/// verified completely first, so a damaged backup writes nothing.
pub fn restore_folder_into(
    dir: &Path,
    backend: &dyn StorageBackend,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    if !options.force && !backend.is_empty()? {
        return Err(Error::TargetNotEmpty {
            path: PathBuf::from(backend.describe()),
        });
    }
    let (folder, manifest) = FolderBackup::open_existing(dir)?;
    check_collections(
        &|n| manifest.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    let report = crate::verify::verify_folder(dir)?;
    if let Some(problem) = report.problems.into_iter().next() {
        return Err(problem);
    }
    write_all(&folder, &manifest, backend.restore_sink()?, options)
}

/// Refuses `--collections` names the backup does not hold.
pub(crate) fn check_collections(
    held: &dyn Fn(&CollectionName) -> bool,
    options: &RestoreOptions,
) -> Result<()> {
    for wanted in options.collections.iter().flatten() {
        if !held(wanted) {
            return Err(Error::BadInput {
                path: PathBuf::from(wanted.as_str()),
                cause: "no such collection in the backup".into(),
            });
        }
    }
    Ok(())
}

fn write_all(
    folder: &FolderBackup,
    manifest: &FolderManifest,
    mut sink: Box<dyn RestoreSink + '_>,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let (mut records, mut bytes, mut collections) = (0u64, 0u64, 0usize);
    for c in &manifest.collections {
        if let Some(wanted) = &options.collections {
            if !wanted.contains(&c.info.name) {
                continue;
            }
        }
        sink.create_collection(&c.info, manifest.store_kind)?;
        let mut batch = Batch::new(options);
        let n = folder.read_collection(&c.dir, &mut |record, _| {
            bytes += batch.push(&mut *sink, &c.info.name, record)?;
            Ok(())
        })?;
        batch.flush(&mut *sink, &c.info.name)?;
        if n != c.records {
            return Err(Error::Damaged {
                path: folder.root().join(&c.dir),
                cause: format!(
                    "holds {n} documents, the manifest says {}: documents are missing or extra",
                    c.records
                ),
            });
        }
        records += n;
        collections += 1;
    }
    sink.finish(&manifest.store_schema, manifest.store_kind)?;
    Ok(RestoreSummary {
        collections,
        records,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// Records on their way to a sink, handed on every `batch_size` records or 32 MiB.
pub(crate) struct Batch {
    records: Vec<Record>,
    bytes: u64,
    size: usize,
}

impl Batch {
    pub(crate) fn new(options: &RestoreOptions) -> Self {
        Batch {
            records: Vec::with_capacity(options.batch_size.clamp(1, 4096)),
            bytes: 0,
            size: options.batch_size.max(1),
        }
    }

    /// Adds a record of `collection`; returns its size in bytes (key and payload).
    pub(crate) fn push(
        &mut self,
        sink: &mut dyn RestoreSink,
        collection: &CollectionName,
        record: Record,
    ) -> Result<u64> {
        let len = record.value.payload_len() + record.key.as_bytes().len() as u64;
        self.bytes += len;
        self.records.push(record);
        if self.records.len() >= self.size || self.bytes >= 32 << 20 {
            self.flush(sink, collection)?;
        }
        Ok(len)
    }

    /// Hands on what is held.
    pub(crate) fn flush(
        &mut self,
        sink: &mut dyn RestoreSink,
        collection: &CollectionName,
    ) -> Result<()> {
        self.bytes = 0;
        if self.records.is_empty() {
            return Ok(());
        }
        sink.put_batch(collection, std::mem::take(&mut self.records))
    }
}

fn remove_store(factory: &dyn StoreFactory, path: &Path) {
    for p in factory.store_files(path) {
        // Best effort: the temporary store is ours and the error that got us here matters more.
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}
