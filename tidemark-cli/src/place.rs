//! Where a backup lives: a local directory or an object store URL (`s3://bucket/prefix`).
//! Remote places take the archive format: archives stream up as multipart uploads, the working
//! key state stays in a local cache directory, and verify, restore, list and prune read the
//! sealed archives in place, through the same code as a local directory (see the
//! `tidemark-remote` crate).

use anyhow::{bail, Context, Result};
use backup_core::ChainItem;
use backup_core::SharedKey;
use backup_core::{
    ArchiveOptions, ArchiveSummary, BackupOptions, ChainStore, Event, KeyOptions, LocalChain,
    PrunePlan, Retention, StorageBackend, KEY_FILE_COPY,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    use tidemark_remote::RemoteChain;

    fn open(url: &str) -> Result<RemoteChain> {
        RemoteChain::open(url).with_context(|| format!("opening {url}"))
    }

    /// `plain` (opened without a key) with its key, if it is encrypted (see [`chain_key`]).
    fn keyed(plain: RemoteChain, keys: &KeyOptions, usage: KeyUse) -> Result<RemoteChain> {
        Ok(match chain_key(&plain, keys, usage)? {
            Some(key) => plain.with_key(key),
            None => plain,
        })
    }

    pub fn backup(
        backend: &dyn StorageBackend,
        url: &str,
        cache: Option<&Path>,
        keys: &KeyOptions,
        options: &BackupOptions,
        archive: &ArchiveOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<ArchiveSummary> {
        let plain = open(url)?;
        // One writer per destination, remotely too: held for the whole run.
        let _lock = plain.lock("backup")?;
        let chain = keyed(plain, keys, KeyUse::Create)?;
        let state = state_dir(url, cache)?;
        Ok(backup_core::backup_archive_to(
            backend, &chain, &state, options, archive, events,
        )?)
    }

    /// The chain at `url`, read and written through the same code as a local directory (with
    /// its key, if it is encrypted; `usage` says whether a new chain may get one).
    pub fn open_remote(url: &str, keys: &KeyOptions, usage: KeyUse) -> Result<Box<dyn ChainStore>> {
        Ok(Box::new(keyed(open(url)?, keys, usage)?))
    }

    /// The chain at `url` opened without a key, if it is encrypted.
    pub fn sealed(url: &str) -> Result<Option<Box<dyn ChainStore>>> {
        let plain = open(url)?;
        Ok(if plain.is_encrypted()? {
            Some(Box::new(plain))
        } else {
            None
        })
    }

    /// The chain at `url` for a writer that starts later (a live backup): a new chain's key is
    /// made now, under the destination's lock.
    pub fn writable(url: &str, keys: &KeyOptions) -> Result<Box<dyn ChainStore>> {
        let plain = open(url)?;
        let _lock = plain.lock("backup")?;
        Ok(Box::new(keyed(plain, keys, KeyUse::Create)?))
    }

    pub fn prune(
        url: &str,
        keys: &KeyOptions,
        retention: &Retention,
        dry_run: bool,
    ) -> Result<PrunePlan> {
        backup_core::check_retention(Path::new(url), retention)?;
        let chain = open_remote(url, keys, KeyUse::Open)?;
        let _lock = if dry_run {
            None
        } else {
            Some(chain.lock("prune")?)
        };
        Ok(backup_core::prune_chain(&*chain, retention, dry_run)?)
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
        _: &KeyOptions,
        _: &BackupOptions,
        _: &ArchiveOptions,
        _: &mut dyn FnMut(Event),
    ) -> Result<ArchiveSummary> {
        not_built(url)
    }
    pub fn open_remote(url: &str, _: &KeyOptions, _: KeyUse) -> Result<Box<dyn ChainStore>> {
        not_built(url)
    }
    pub fn prune(url: &str, _: &KeyOptions, _: &Retention, _: bool) -> Result<PrunePlan> {
        not_built(url)
    }
    pub fn writable(url: &str, _: &KeyOptions) -> Result<Box<dyn ChainStore>> {
        not_built(url)
    }
    pub fn sealed(url: &str) -> Result<Option<Box<dyn ChainStore>>> {
        not_built(url)
    }
}

pub use imp::{backup as backup_remote, prune as prune_remote};

pub use imp::open_remote;

/// The default key state of a chain that keeps it outside the destination (an object store,
/// or an encrypted directory): under `$XDG_CACHE_HOME` (or `~/.cache`)`/tidemark/state/`,
/// named after `name` (the URL, or the directory's absolute path).
pub fn default_cache(name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("tidemark")
        .join("state")
        .join(backup_core::encode_docid(name.as_bytes()))
}

/// The directory of the key state that `name`'s incrementals continue from (`cache`, or the
/// default one), created if missing.
pub fn state_dir(name: &str, cache: Option<&Path>) -> Result<PathBuf> {
    let state = cache.map_or_else(|| default_cache(name), Path::to_path_buf);
    std::fs::create_dir_all(&state)
        .with_context(|| format!("creating the key state {}", state.display()))?;
    Ok(state)
}

/// What a command may do about a chain's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Open the key of an encrypted chain (reading, pruning, compacting).
    Open,
    /// Also make one for a new chain when encryption options are given (a backup, under
    /// the destination's lock).
    Create,
}

/// The key of the chain `plain` (opened without one): [`backup_core::open_chain_key`], a
/// [`KeyUse::Create`] being its writer; says what it found and did. `None` for a plain chain.
pub fn chain_key(
    plain: &dyn ChainStore,
    keys: &KeyOptions,
    usage: KeyUse,
) -> Result<Option<SharedKey>> {
    let Some(opened) = backup_core::open_chain_key(plain, keys, usage == KeyUse::Create)? else {
        return Ok(None);
    };
    let by = opened.path.display();
    if opened.made {
        tracing::info!(key = %opened.key.id(), file = %by, "new chain key");
    }
    for problem in &opened.problems {
        if usage == KeyUse::Create {
            tracing::warn!("{problem}; written again from {by}");
        } else {
            tracing::warn!(
                "{problem}; the chain was opened with {by} (the next backup writes it again; \
                 `tidemark verify` reports it until then)"
            );
        }
    }
    if !opened.made && opened.problems.is_empty() && !opened.written.is_empty() {
        tracing::info!(file = %plain.location_of(KEY_FILE_COPY).display(), "key file copy made");
    }
    Ok(Some(Arc::new(opened.key)))
}

/// The local chain in `dir`, with its key if it is encrypted.
fn local_chain(dir: &Path, keys: &KeyOptions, usage: KeyUse) -> Result<LocalChain> {
    let plain = LocalChain::new(dir);
    Ok(match chain_key(&plain, keys, usage)? {
        Some(key) => LocalChain::encrypted(dir, key),
        None => plain,
    })
}

/// The archive chain in `dir` for a backup: its lock taken, its format claimed, and its key
/// (made now for a new encrypted chain, under the lock).
fn claim_local(
    dir: &Path,
    keys: &KeyOptions,
) -> Result<(backup_core::DestinationLock, LocalChain)> {
    let lock = backup_core::DestinationLock::acquire(dir, "backup")?;
    backup_core::claim_format(dir, backup_core::DestFormat::Archive)?;
    let chain = local_chain(dir, keys, KeyUse::Create)?;
    Ok((lock, chain))
}

/// Backs up into the archive chain at `place`. A local directory keeps its key state inside
/// it, unless the chain is encrypted: then, as for an object store, the key state (which
/// names every key) stays in the local cache (`cache`, or the default one).
pub fn backup_archive(
    backend: &dyn StorageBackend,
    place: &Place,
    cache: Option<&Path>,
    keys: &KeyOptions,
    options: &BackupOptions,
    archive: &ArchiveOptions,
    events: &mut dyn FnMut(Event),
) -> Result<ArchiveSummary> {
    match place {
        Place::Remote(url) => backup_remote(backend, url, cache, keys, options, archive, events),
        Place::Local(dir) if !keys.any() => Ok(backup_core::backup_archive(
            backend, dir, options, archive, events,
        )?),
        Place::Local(dir) => {
            let (_lock, chain) = claim_local(dir, keys)?;
            let state = local_state_dir(dir, cache)?;
            Ok(backup_core::backup_archive_to(
                backend, &chain, &state, options, archive, events,
            )?)
        }
    }
}

/// The archive chain at `place` for a writer that starts later (a live backup), with its key
/// if it is encrypted; a new chain's key is made now, under the destination's lock.
pub fn writable_chain(place: &Place, keys: &KeyOptions) -> Result<Box<dyn ChainStore>> {
    match place {
        Place::Remote(url) => imp::writable(url, keys),
        Place::Local(dir) => Ok(Box::new(claim_local(dir, keys)?.1)),
    }
}

/// The chain at `place` opened without its key, if it is encrypted (what verify can check of
/// it without the key: [`backup_core::verify_sealed`]); `None` for anything else.
pub fn sealed_chain(place: &Place) -> Result<Option<Box<dyn ChainStore>>> {
    match place {
        Place::Remote(url) => imp::sealed(url),
        Place::Local(dir) if backup_core::is_encrypted_dir(dir) => {
            Ok(Some(Box::new(LocalChain::new(dir))))
        }
        Place::Local(_) => Ok(None),
    }
}

/// The key state of the encrypted local chain in `dir` (outside it).
pub fn local_state_dir(dir: &Path, cache: Option<&Path>) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    state_dir(&abs.to_string_lossy(), cache)
}

/// Prunes the chain at `place` (holding its lock unless `dry_run`).
pub fn prune(
    place: &Place,
    keys: &KeyOptions,
    retention: &Retention,
    dry_run: bool,
) -> Result<PrunePlan> {
    match place {
        Place::Local(d) if backup_core::is_encrypted_dir(d) => Ok(backup_core::prune_local(
            &local_chain(d, keys, KeyUse::Open)?,
            retention,
            dry_run,
        )?),
        Place::Local(d) => Ok(backup_core::prune_archives(d, retention, dry_run)?),
        Place::Remote(url) => prune_remote(url, keys, retention, dry_run),
    }
}

/// The archive chain at `place`, local (refused unless the directory holds the archive format)
/// or remote, to read or maintain through the one interface (opened with its key if it is
/// encrypted).
pub fn open_chain(place: &Place, keys: &KeyOptions) -> Result<Box<dyn ChainStore>> {
    match place {
        Place::Remote(url) => open_remote(url, keys, KeyUse::Open),
        Place::Local(d) => {
            if backup_core::detect_format(d)? != Some(backup_core::DestFormat::Archive) {
                bail!("{place}: not an archive chain (compaction applies to --format archive)");
            }
            Ok(Box::new(local_chain(d, keys, KeyUse::Open)?))
        }
    }
}

/// The archive chain at `place` as restore and verify read it: like [`open_chain`], for a
/// directory known to hold archives.
pub fn open_archives(place: &Place, keys: &KeyOptions) -> Result<Box<dyn ChainStore>> {
    match place {
        Place::Remote(url) => open_remote(url, keys, KeyUse::Open),
        Place::Local(d) => Ok(Box::new(local_chain(d, keys, KeyUse::Open)?)),
    }
}

/// Compacts the chain at `place`, holding its lock.
pub fn compact(
    place: &Place,
    keys: &KeyOptions,
    options: &backup_core::CompactOptions,
) -> Result<backup_core::CompactSummary> {
    let store = open_chain(place, keys)?;
    let _lock = store.lock("compact")?;
    Ok(backup_core::compact_chain(&*store, options, &mut |_| {})?)
}

/// The archives of a chain, local or remote, and apart from them the leftovers of an
/// interrupted prune.
pub fn chain(place: &Place, keys: &KeyOptions) -> Result<(Vec<ChainItem>, Vec<ChainItem>)> {
    read_chain(place, keys, backup_core::settled_chain)
}

/// The archive chain at `place` as `list` shows it: the archives, the leftovers of an
/// interrupted prune, and the damage found (see [`backup_core::chain_and_damage`]).
pub fn chain_and_damage(
    place: &Place,
    keys: &KeyOptions,
) -> Result<(Vec<ChainItem>, Vec<ChainItem>, Vec<backup_core::Error>)> {
    read_chain(place, keys, backup_core::chain_and_damage)
}

/// What `read` makes of the chain at `place`; nothing (the default) for a local directory
/// that does not exist.
fn read_chain<T: Default>(
    place: &Place,
    keys: &KeyOptions,
    read: impl FnOnce(&dyn ChainStore) -> backup_core::Result<T>,
) -> Result<T> {
    if let Place::Local(p) = place {
        if !p.is_dir() {
            return Ok(T::default());
        }
    }
    Ok(read(&*open_archives(place, keys)?)?)
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
