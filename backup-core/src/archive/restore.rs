//! Restoring a chain of archives, in either format.

use super::chain::{check_continuity, check_head, plan, read_chain, read_head, RestorePoint};
use super::{damaged, v1, v2, ArchiveOptions};
use crate::error::{Error, Result};
use crate::restore::{RestoreOptions, RestoreSummary, StoreFactory};
use std::collections::BTreeSet;
use std::path::Path;

/// Restores the archive chain in `dir`, at `at`, into a new store at `target`. The archives
/// are read straight into a new store beside the target, checking every CRC32 and count on
/// the way; the new store replaces the target only when complete, and is removed if any check
/// fails (the target is never touched). `archive.threads` threads decompress.
pub fn restore_archives_to_path(
    dir: &Path,
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
    let head = read_head(dir)?;
    let chain = read_chain(dir)?;
    if let Some(problem) = check_head(dir, head.as_ref(), &chain) {
        return Err(problem);
    }
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
    crate::restore::restore_to_path(
        factory,
        target,
        (&last.store_schema, last.store_kind),
        &mut |sink| match version {
            1 => v1::replay_newest_first(items, sink, options),
            _ => v2::replay(items, sink, options, archive.threads),
        },
    )
}
