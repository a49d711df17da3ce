//! Restoring a chain of archives, in either format.

use super::chain::{plan, ChainStore, LocalChain, RestorePoint, Slot};
use super::{damaged, file_name_of, v1, v2, ArchiveOptions};
use crate::error::{Error, Result};
use crate::restore::{RestoreOptions, RestoreSummary, StoreFactory};
use std::path::Path;

/// Restores the archive chain in `dir`, at `at`, into a new store at `target`: see
/// [`restore_chain`].
pub fn restore_archives_to_path(
    dir: &Path,
    at: &RestorePoint,
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
    archive: &ArchiveOptions,
) -> Result<RestoreSummary> {
    restore_chain(&LocalChain::new(dir), at, factory, target, options, archive)
}

/// Restores the archive chain in `store` (a local directory or an object store), at `at`, into
/// a new store at `target`. The archives are read straight into a new store beside the target
/// (only the entries the point needs, by ranged reads, `archive.threads` at once, each
/// decompressed and checked on the worker that read it), checking every CRC32 and count on the
/// way; the new store replaces the target only when complete, and is removed if any check fails
/// (the target is never touched).
pub fn restore_chain(
    store: &dyn ChainStore,
    at: &RestorePoint,
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
    archive: &ArchiveOptions,
) -> Result<RestoreSummary> {
    if !options.force && factory.holds_data(target)? {
        return Err(Error::TargetNotEmpty {
            path: target.to_path_buf(),
        });
    }
    let survey = store.survey()?;
    if let Some(problem) = survey.problems.into_iter().next() {
        return Err(problem);
    }
    let mut chain = survey.items;
    if chain.is_empty() {
        return Err(Error::BadInput {
            path: store.location(),
            cause: "no tidemark archives here".into(),
        });
    }
    // A damaged compacted archive has a way around it (the archives it covers): the restore is
    // planned again without it, and says so.
    let mut avoided = Vec::new();
    loop {
        let items = plan(&chain, at)?;
        match restore_path(store, &items, factory, target, options, archive) {
            Err(e) => {
                let text = e.to_string();
                let culprit = items.iter().find(|i| {
                    i.manifest.covers.is_some() && text.contains(&Slot::of(&i.manifest).stem())
                });
                match (culprit, &e) {
                    (Some(c), Error::Damaged { .. }) => {
                        let path = c.path.clone();
                        avoided.push(format!(
                            "{}: {text}; restored through the archives it covers",
                            file_name_of(&path)
                        ));
                        chain.retain(|i| i.path != path);
                    }
                    _ => return Err(e),
                }
            }
            Ok(mut summary) => {
                summary.avoided = avoided;
                return Ok(summary);
            }
        }
    }
}

/// Restores the archives of one path (a full archive and what follows it) into `target`.
fn restore_path(
    store: &dyn ChainStore,
    items: &[super::ChainItem],
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
    archive: &ArchiveOptions,
) -> Result<RestoreSummary> {
    let last = &items[items.len() - 1].manifest;
    let version = items[0].manifest.format_version;
    if let Some(other) = items.iter().find(|i| i.manifest.format_version != version) {
        return Err(damaged(
            &other.path,
            format!(
                "archive format {} in a chain that starts in format {version}: a chain never \
                 mixes formats",
                other.manifest.format_version
            ),
        ));
    }
    crate::restore::check_collections(
        &|n| last.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    let wanted = last
        .collections
        .iter()
        .filter(|c| options.wants(&c.info.name));
    let total = wanted.map(|c| c.records).sum();
    crate::restore::restore_to_path(
        factory,
        target,
        (&last.store_schema, last.store_kind),
        (options.progress.as_ref(), Some(total)),
        &mut |sink| match version {
            1 => v1::replay_newest_first(store, items, sink, options),
            _ => v2::replay(store, items, sink, options, archive.threads),
        },
    )
}
