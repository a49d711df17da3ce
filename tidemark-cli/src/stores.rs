//! Store URLs (`KIND:PATH`) and the backends compiled into this binary.

use anyhow::{anyhow, bail, Result};
use backup_core::{StorageBackend, StoreFactory, StoreKind};
use std::path::{Path, PathBuf};

/// A parsed `KIND:PATH`.
#[derive(Debug, Clone)]
pub struct StoreUrl {
    pub kind: StoreKind,
    pub path: PathBuf,
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not KIND:PATH (e.g. sqlite:app.db)"))?;
        if path.is_empty() {
            return Err(format!("`{s}` has no path after `{kind}:`"));
        }
        if let Some(rest) = path.strip_prefix("//") {
            // `sqlite://app.db` (URL habit): the store is KIND:PATH, without `//`.
            return Err(format!(
                "`{s}`: a store is KIND:PATH, without `//`; did you mean `{kind}:{rest}`?"
            ));
        }
        Ok(StoreUrl {
            kind: kind.parse()?,
            path: PathBuf::from(path),
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.path.display())
    }
}

fn not_built(kind: StoreKind) -> anyhow::Error {
    if kind == StoreKind::Memory {
        return anyhow!("memory stores exist only inside tidemark's tests");
    }
    anyhow!("this tidemark was built without the {kind} backend (rebuild with `--features {kind}`)")
}

/// Opens an existing store to back it up (`live`: to follow it with a live backup).
pub fn open_source(url: &StoreUrl, live: bool) -> Result<Box<dyn StorageBackend>> {
    // sled allows one process at a time, and the backup holds the database's lock while it
    // reads: a live backup held it for its whole run, so the application could not open its
    // own database, and nothing it followed ever changed.
    if live && url.kind == StoreKind::Sled {
        return Err(anyhow!(
            "{url}: a live backup of a sled database from another process would hold its lock \
             (sled allows one process at a time) for as long as it runs, and the application \
             could not open its database: follow it from inside the application \
             (backend_sled::TrackedDb with backup_core::LiveBackup), or take one-off backups \
             while the application is stopped"
        ));
    }
    #[cfg(not(feature = "sqlite"))]
    let _ = live;
    match url.kind {
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite if live => Ok(Box::new(backend_sqlite::SqliteBackend::open_for_live(
            &url.path,
        )?)),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => Ok(Box::new(backend_sqlite::SqliteBackend::open_for_backup(
            &url.path,
        )?)),
        #[cfg(feature = "rocksdb")]
        StoreKind::Rocksdb => Ok(Box::new(backend_rocksdb::RocksBackend::open(&url.path)?)),
        #[cfg(feature = "sled")]
        StoreKind::Sled => Ok(Box::new(backend_sled::SledBackend::open(&url.path)?)),
        #[allow(unreachable_patterns)]
        kind => Err(not_built(kind)),
    }
}

/// Why every backup of `url` will read the whole database, and how to change that: a SQLite
/// database without change tracking (`tidemark track` installs it), as the checkpoint of its
/// backup names it. `None` when its backups can read only what changed.
pub fn untracked(url: &StoreUrl, checkpoint: &backup_core::Checkpoint) -> Option<String> {
    #[cfg(feature = "sqlite")]
    if url.kind == StoreKind::Sqlite && checkpoint.store_id.0 == backend_sqlite::UNTRACKED_ID {
        return Some(format!(
            "{url} has no change tracking, so every backup of it reads the whole database (a \
             full backup, or into an archive chain a diff-based incremental): run `tidemark \
             track --source {url}` once (it adds a change log and triggers to the database) to \
             make the next ones read only what changed"
        ));
    }
    let _ = (url, checkpoint);
    None
}

/// The factory that makes restore targets of a kind; `rocksdb_format` overrides the table
/// format version a RocksDB target is written in.
pub fn factory(kind: StoreKind, rocksdb_format: Option<i32>) -> Result<Box<dyn StoreFactory>> {
    #[cfg(not(feature = "rocksdb"))]
    let _ = rocksdb_format;
    match kind {
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => Ok(Box::new(backend_sqlite::SqliteFactory)),
        #[cfg(feature = "rocksdb")]
        StoreKind::Rocksdb => Ok(Box::new(backend_rocksdb::RocksFactory {
            format_version: rocksdb_format,
        })),
        #[cfg(feature = "sled")]
        StoreKind::Sled => Ok(Box::new(backend_sled::SledFactory)),
        #[allow(unreachable_patterns)]
        kind => Err(not_built(kind)),
    }
}

/// The most newly tracked tables `track` names.
#[cfg(feature = "sqlite")]
const NAMED_TABLES: usize = 20;

/// Installs (or removes) SQLite change tracking.
// Without the SQLite backend no store can be tracked, and `remove` goes unused.
#[cfg_attr(not(feature = "sqlite"), allow(unused_variables))]
pub fn track(url: &StoreUrl, remove: bool) -> Result<String> {
    match url.kind {
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => {
            let backend = backend_sqlite::SqliteBackend::open(&url.path)?;
            if remove {
                let was = backend.is_tracked()?;
                // Run even when not tracked: it also removes triggers a partial removal left.
                backend.untrack()?;
                return Ok(if was {
                    format!("Change tracking removed from {url}")
                } else {
                    format!("{url} had no change tracking; nothing to remove")
                });
            }
            let report = backend.track()?;
            Ok(format!(
                "Change tracking {} on {url}: {} tables tracked{}",
                if report.first_install {
                    "installed"
                } else {
                    "checked"
                },
                report.tables,
                match report.newly_tracked.len() {
                    0 => String::new(),
                    // A database of thousands of tables named them all on one line.
                    n if n > NAMED_TABLES => format!(
                        " (new: {}, and {} more)",
                        report.newly_tracked[..NAMED_TABLES].join(", "),
                        n - NAMED_TABLES
                    ),
                    _ => format!(" (new: {})", report.newly_tracked.join(", ")),
                }
            ))
        }
        #[cfg(not(feature = "sqlite"))]
        StoreKind::Sqlite => Err(not_built(StoreKind::Sqlite)),
        other => bail!(
            "`track` is for SQLite; {other} changes are captured {}",
            match other {
                StoreKind::Rocksdb => "from its write-ahead log",
                _ => "through the backend's tracked handle",
            }
        ),
    }
}

/// Whether `dir` can be a backup directory of `source`: missing or a directory, and not inside
/// the source's own directory (RocksDB, sled).
pub fn check_backup_dir(dir: &Path, source: &StoreUrl) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: exists and is not a directory", dir.display());
    }
    // A RocksDB or sled database is a directory: a backup inside it would be written into the
    // store it protects (and go with it when the store is replaced or removed).
    if matches!(source.kind, StoreKind::Rocksdb | StoreKind::Sled) {
        let absolute = |p: &Path| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        // The destination may not exist yet: its nearest existing ancestor decides.
        let mut existing = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        let mut resolved = absolute(&existing);
        resolved.extend(rest.iter().rev());
        if resolved.starts_with(absolute(&source.path)) {
            bail!(
                "{}: inside the database it would back up ({source}): a backup goes outside \
                 the store's directory",
                dir.display()
            );
        }
    }
    Ok(())
}
