//! Restoring a chain of archives, in either format.

use super::chain::{
    not_the_point, plan, problem_sequence, slot_of_name, ChainStore, LocalChain, RestorePoint, Slot,
};
use super::{damaged, file_name_of, v1, v2, ArchiveOptions, ChainItem};
use crate::error::{Error, Result};
use crate::manifest::RunKind;
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
    crate::restore::check_target(factory, target, options)?;
    // The newest point is planned from the archives' names, reading only its path's
    // manifests (a live backup's chain has thousands of archives); any other point, or a
    // listing that does not add up, takes the full survey.
    let mut survey = Surveyed::default();
    let mut avoided = Vec::new();
    loop {
        let fast = match (at, &survey.chain) {
            (RestorePoint::Latest, None) => newest_path(store),
            _ => None,
        };
        let planned_fast = fast.is_some();
        let items = match fast {
            Some(items) => items,
            None => plan(survey.chain(store, options, at)?, at)?,
        };
        tracing::info!(
            archives = items.len(),
            from_names = planned_fast,
            path = %items
                .iter()
                .map(|i| file_name_of(&i.path))
                .collect::<Vec<_>>()
                .join(" "),
            "restore path"
        );
        match restore_path(store, &items, factory, target, options, archive) {
            Err(e) => {
                let damaged = damaged_slot(&e);
                let culprit = items.iter().find(|i| {
                    i.manifest.covers.is_some() && Some(Slot::of(&i.manifest)) == damaged
                });
                match culprit {
                    Some(c) => {
                        let path = c.path.clone();
                        avoided.push(format!(
                            "{}: {e}; restored through the archives it covers",
                            file_name_of(&path)
                        ));
                        survey.chain(store, options, at)?.retain(|i| i.path != path);
                    }
                    None => return Err(e),
                }
            }
            Ok(mut summary) => {
                avoided.append(&mut survey.beyond);
                summary.avoided = avoided;
                survey.skipped.append(&mut summary.skipped);
                summary.skipped = survey.skipped;
                return Ok(summary);
            }
        }
    }
}

/// The archive a damage report is about: the slot of the last component of its path that
/// names an archive (a local `…/tidemark-000003-000007-incr-….zip/data/…` or an object store's
/// `…/tidemark-000003-000007-incr.zip`); `None` for any other error.
fn damaged_slot(e: &Error) -> Option<Slot> {
    let Error::Damaged { path, .. } = e else {
        return None;
    };
    path.components()
        .rev()
        .find_map(|c| slot_of_name(&c.as_os_str().to_string_lossy()))
}

/// The chain as the full survey ([`surveyed`]) finds it, surveyed on first use, and what the
/// survey went around: with `--skip-damaged` (`skipped`), or damaged or lost archives that
/// cannot be the point restored, which it never reads (`beyond`, warnings).
#[derive(Default)]
struct Surveyed {
    chain: Option<Vec<ChainItem>>,
    skipped: Vec<String>,
    beyond: Vec<String>,
}

impl Surveyed {
    /// The surveyed chain, surveyed now if it was not yet.
    fn chain(
        &mut self,
        store: &dyn ChainStore,
        options: &RestoreOptions,
        at: &RestorePoint,
    ) -> Result<&mut Vec<ChainItem>> {
        if self.chain.is_none() {
            let (items, skipped, beyond) = surveyed(store, options.skip_damaged, at)?;
            self.skipped = skipped;
            self.beyond = beyond;
            self.chain = Some(items);
        }
        Ok(self.chain.get_or_insert_with(Vec::new))
    }
}

/// The chain as a full survey finds it. Its first problem (an unreadable manifest, a chain head
/// that is unreadable or names a newest archive gone missing) refuses the restore, unless
/// `skip_damaged`: then the problems are returned as messages, for the summary's skipped list,
/// and the restore goes on with the archives found (a flipped byte in the head, a file of 76
/// bytes, no longer stands between a user whose source is gone and the archives). An archive
/// that cannot be read and cannot be the point `at` names ([`not_the_point`]) is no problem
/// for that point, whose archives are all read and checked (a path through the damaged one is
/// not found): it is returned as a warning (the third list), and the restore is complete.
fn surveyed(
    store: &dyn ChainStore,
    skip_damaged: bool,
    at: &RestorePoint,
) -> Result<(Vec<ChainItem>, Vec<String>, Vec<String>)> {
    // An archive removed between the listing and the reading of its manifest (a prune beside
    // the restore) is not damage: the chain is surveyed again.
    let survey = super::chain::survey_settled(store)?;
    let mut skipped = Vec::new();
    let mut beyond = Vec::new();
    let missing = super::graph::lost_points(&survey.items, &survey.pruned, &survey.problems);
    for problem in survey.problems {
        if skip_damaged {
            skipped.push(problem.to_string());
        } else if problem_sequence(&problem).is_some_and(|d| not_the_point(&survey.items, at, d)) {
            beyond.push(format!("{problem}; not needed for the point restored"));
        } else {
            return Err(problem);
        }
    }
    if survey.items.is_empty() {
        return Err(crate::destination::no_backup(&store.location()));
    }
    // An archive that is gone (neither there nor pruned) may be the point asked for: a time
    // just after its capture would otherwise take the archive before it, an older state, as
    // the newest captured at or before that time. The newest point is planned from the head,
    // which names a newest archive gone missing; a full archive after the gap is checked by
    // the continuity of the path.
    if !matches!(at, RestorePoint::Latest) {
        for m in missing {
            let gone = super::chain::archive_gone(m);
            if not_the_point(&survey.items, at, m) {
                beyond.push(format!(
                    "{}: {gone}; not needed for the point restored",
                    store.location().display()
                ));
                continue;
            }
            let problem = Error::Damaged {
                path: store.location(),
                cause: format!("{gone}, and the point asked for may be its"),
            };
            if !skip_damaged {
                return Err(problem);
            }
            skipped.push(problem.to_string());
        }
    }
    Ok((survey.items, skipped, beyond))
}

/// The path to the newest point, planned from names (the head, the archives' slots, the prune
/// log) with only the path's manifests read: the fewest archives from a full archive to the
/// newest backup's. `None` when anything does not add up (a head the listing does not satisfy,
/// no unbroken path, an unreadable manifest on it): the full survey then decides, and says why.
fn newest_path(store: &dyn ChainStore) -> Option<Vec<ChainItem>> {
    let listing = store.listing().ok()?;
    // A damaged line of the log only explains an older gap less (verify reports it): the
    // path to the newest point does not depend on it.
    let (log, _) = crate::prune::parse_prune_log(
        &store.location_of(crate::prune::PRUNED_LOG),
        store.read_prune_log().ok()?.as_deref(),
    );
    let gone: Vec<Slot> = log.iter().filter_map(|e| slot_of_name(&e.file)).collect();
    let mut slots: Vec<Slot> = listing
        .slots
        .into_iter()
        .filter(|s| !gone.contains(s))
        .collect();
    slots.sort_by_key(|s| (s.sequence, s.first));
    slots.dedup();
    let newest = slots
        .iter()
        .rposition(|s| !s.compacted())
        .filter(|&i| slots[i].sequence == slots.last().map_or(0, |l| l.sequence))?;
    // Fewest archives from a full one, by sequence adjacency (continuity is checked on the
    // manifests of the path found).
    let best = super::graph::cheapest(
        &slots,
        &|_| 0,
        &|_| true,
        &|i| slots[i].kind == RunKind::Full,
        &|_, i| slots[i].kind == RunKind::Incremental,
    );
    let path: Vec<Slot> = super::graph::path_to(&best, newest)
        .into_iter()
        .map(|i| slots[i])
        .collect();
    if path.is_empty() {
        return None;
    }
    let items = store.read_slots(&path).ok()?;
    let in_order = items.len() == path.len()
        && items
            .iter()
            .zip(&path)
            .all(|(i, s)| Slot::of(&i.manifest) == *s);
    let continuous = items[1..]
        .iter()
        .zip(&items)
        .all(|(next, prev)| super::graph::continues(prev, next));
    let head_ok =
        super::chain::Head::problem(listing.head.as_ref(), &items, &|n| store.location_of(n))
            .is_none();
    (in_order && continuous && head_ok).then_some(items)
}

/// Restores the archives of one path (a full archive and what follows it) into `target`.
fn restore_path(
    store: &dyn ChainStore,
    items: &[ChainItem],
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
    archive: &ArchiveOptions,
) -> Result<RestoreSummary> {
    let last = &items[items.len() - 1].manifest;
    let version = items[0].manifest.format_version;
    if version == 1 && options.skip_damaged {
        return Err(Error::BadInput {
            path: items[0].path.clone(),
            cause: "partial recovery (--skip-damaged) reads archive format 2 and folder \
                    backups; this chain is in archive format 1"
                .into(),
            source: None,
        });
    }
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
        options.force,
        (&last.store_schema, last.store_kind),
        (options.progress.as_ref(), Some(total)),
        &mut |sink| match version {
            1 => v1::replay_newest_first(store, items, sink, options),
            _ => v2::replay(store, items, sink, options, archive.threads),
        },
    )
}
