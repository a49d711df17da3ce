//! Where a backup lives: a local directory or an object store URL (`s3://bucket/prefix`).
//! Remote places take the archive format: archives stream up as multipart uploads, the working
//! key state stays in a local cache directory, and verify, restore, list and prune read the
//! sealed archives in place, through the same code as a local directory (see the
//! `tidemark-remote` crate).

use anyhow::{bail, Result};
use backup_core::archive::ChainItem;
use backup_core::{
    ArchiveOptions, ArchiveSummary, BackupOptions, ChainStore, Event, PrunePlan, Retention,
    StorageBackend,
};
use std::path::{Path, PathBuf};

/// A backup location.
#[derive(Debug, Clone)]
pub enum Place {
    /// A directory on this machine.
    Local(PathBuf),
    /// An object store URL.
    Remote(String),
}

impl std::str::FromStr for Place {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty destination".into());
        }
        Ok(if s.contains("://") {
            Place::Remote(s.to_string())
        } else {
            Place::Local(PathBuf::from(s))
        })
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local(p) => write!(f, "{}", p.display()),
            Place::Remote(u) => f.write_str(u),
        }
    }
}

#[cfg(feature = "remote")]
mod imp {
    use super::*;
    use anyhow::Context;
    use tidemark_remote::RemoteChain;

    fn open(url: &str) -> Result<RemoteChain> {
        RemoteChain::open(url).with_context(|| format!("opening {url}"))
    }

    /// The default key state of a remote chain (what its next incremental continues from):
    /// under `$XDG_CACHE_HOME` (or `~/.cache`)`/tidemark/state/`, named after the URL.
    pub fn default_cache(url: &str) -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("tidemark")
            .join("state")
            .join(backup_core::docid::encode(url.as_bytes()))
    }

    pub fn backup(
        backend: &dyn StorageBackend,
        url: &str,
        cache: Option<&Path>,
        options: &BackupOptions,
        archive: &ArchiveOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<ArchiveSummary> {
        let chain = open(url)?;
        // One writer per destination, remotely too: held for the whole run.
        let _lock = chain.lock("backup")?;
        let state = state_dir(url, cache)?;
        Ok(backup_core::backup_archive_to(
            backend, &chain, &state, options, archive, events,
        )?)
    }

    /// The directory of the key state that `url`'s incrementals continue from (`cache`, or the
    /// default one), created if missing.
    pub fn state_dir(url: &str, cache: Option<&Path>) -> Result<PathBuf> {
        let state = cache.map_or_else(|| default_cache(url), Path::to_path_buf);
        std::fs::create_dir_all(&state)
            .with_context(|| format!("creating the key state {}", state.display()))?;
        Ok(state)
    }

    /// The chain at `url`, read and written through the same code as a local directory.
    pub fn open_remote(url: &str) -> Result<Box<dyn ChainStore>> {
        Ok(Box::new(open(url)?))
    }

    pub fn list(url: &str) -> Result<(Vec<ChainItem>, Vec<ChainItem>)> {
        Ok(backup_core::archive::settled_chain(&open(url)?)?)
    }

    pub fn prune(url: &str, retention: &Retention, dry_run: bool) -> Result<PrunePlan> {
        backup_core::check_retention(Path::new(url), retention)?;
        let chain = open(url)?;
        let _lock = if dry_run {
            None
        } else {
            Some(chain.lock("prune")?)
        };
        Ok(backup_core::prune_chain(&chain, retention, dry_run)?)
    }
}

#[cfg(not(feature = "remote"))]
mod imp {
    use super::*;

    fn not_built<T>(url: &str) -> Result<T> {
        bail!("{url}: this tidemark was built without remote destinations (rebuild with `--features remote`)")
    }
    pub fn backup(
        _: &dyn StorageBackend,
        url: &str,
        _: Option<&Path>,
        _: &BackupOptions,
        _: &ArchiveOptions,
        _: &mut dyn FnMut(Event),
    ) -> Result<ArchiveSummary> {
        not_built(url)
    }
    pub fn open_remote(url: &str) -> Result<Box<dyn ChainStore>> {
        not_built(url)
    }
    pub fn state_dir(url: &str, _: Option<&Path>) -> Result<PathBuf> {
        not_built(url)
    }
    pub fn list(url: &str) -> Result<(Vec<ChainItem>, Vec<ChainItem>)> {
        not_built(url)
    }
    pub fn prune(url: &str, _: &Retention, _: bool) -> Result<PrunePlan> {
        not_built(url)
    }
}

pub use imp::{backup as backup_remote, list as list_remote, prune as prune_remote};

pub use imp::{open_remote, state_dir};

/// Prunes the chain at `place` (holding its lock unless `dry_run`).
pub fn prune(place: &Place, retention: &Retention, dry_run: bool) -> Result<PrunePlan> {
    match place {
        Place::Local(d) => Ok(backup_core::prune_archives(d, retention, dry_run)?),
        Place::Remote(url) => prune_remote(url, retention, dry_run),
    }
}

/// The archive chain at `place`, local (refused unless the directory holds the archive format)
/// or remote, to read or maintain through the one interface.
pub fn open_chain(place: &Place) -> Result<Box<dyn ChainStore>> {
    match place {
        Place::Remote(url) => open_remote(url),
        Place::Local(d) => {
            if backup_core::detect_format(d)? != Some(backup_core::DestFormat::Archive) {
                bail!("{place}: not an archive chain (compaction applies to --format archive)");
            }
            Ok(Box::new(backup_core::LocalChain::new(d)))
        }
    }
}

/// Compacts the chain at `place`, holding its lock.
pub fn compact(
    place: &Place,
    options: &backup_core::CompactOptions,
) -> Result<backup_core::CompactSummary> {
    let store = open_chain(place)?;
    let _lock = store.lock("compact")?;
    Ok(backup_core::compact_chain(&*store, options, &mut |_| {})?)
}

/// The archives of a chain, local or remote, and apart from them the leftovers of an
/// interrupted prune.
pub fn chain(place: &Place) -> Result<(Vec<ChainItem>, Vec<ChainItem>)> {
    match place {
        Place::Local(p) => {
            if !p.is_dir() {
                return Ok(Default::default());
            }
            Ok(backup_core::archive::settled_chain(
                &backup_core::LocalChain::new(p),
            )?)
        }
        Place::Remote(url) => list_remote(url),
    }
}

/// Refuses what a remote place cannot do.
pub fn require_archive(place: &Place, archive: bool) -> Result<()> {
    if let Place::Remote(url) = place {
        if !archive {
            bail!("{url}: remote destinations take archives (--format archive)");
        }
    }
    Ok(())
}
