//! Chain compaction (`tidemark compact`): live backups write an archive per interval, and a
//! restore reads every archive from the full one to its point. Compaction adds *compacted*
//! archives beside them, in levels: each covers `fanout` archives of the level below (a
//! block of `fanout^level` sequences, aligned on sequence numbers, within one full archive's
//! segment) and holds each key once, in its state at the block's end. A restore then takes the
//! path with the fewest archives, at most about `(fanout - 1)` per level.
//!
//! Compaction only adds archives: every point stays restorable, and an archive counts only
//! once it is complete (renamed, or sealed on an object store), so a kill at any moment leaves
//! the chain as it was, plus perhaps a finished compacted archive. Which points to give up is
//! retention's decision (`tidemark prune`, or `compact --keep-…`), which then removes the
//! archives no kept point needs, the covered ones included.

use super::chain::{load_chain, ChainStore, Slot};
use super::graph::{path_to, shortest};
use super::{ArchiveOptions, ChainItem};
use crate::error::{Error, Result};
use crate::manifest::RunKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of a compaction.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Archives of one level that a compacted archive of the next level covers (≥ 2).
    pub fanout: u64,
    /// Compression and threads of the archives written.
    pub archive: ArchiveOptions,
    /// Only plan: report what would be written.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            fanout: DEFAULT_FANOUT,
            archive: ArchiveOptions::default(),
            dry_run: false,
        }
    }
}

/// The default fanout.
pub const DEFAULT_FANOUT: u64 = 8;

/// A compacted archive a compaction wrote (or, in a dry run, would write).
#[derive(Debug, Clone)]
pub struct Compacted {
    /// Where it is (empty in a dry run).
    pub file: PathBuf,
    /// The first and last sequence it covers.
    pub first: u64,
    /// The last sequence.
    pub last: u64,
    /// How many archives it merged.
    pub inputs: usize,
    /// Their bytes.
    pub input_bytes: u64,
    /// Its size (in a dry run, its inputs' size).
    pub size: u64,
    /// Lines (records and deletions) it holds.
    pub entries: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Default)]
pub struct CompactSummary {
    /// The compacted archives written, lowest level first.
    pub written: Vec<Compacted>,
    /// Blocks that could not be compacted, and why (a format-1 archive, a collection created
    /// or dropped inside the block, a gap).
    pub skipped: Vec<String>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

/// A block to compact: the sequences it covers and the archives merged.
struct Block {
    first: u64,
    last: u64,
    inputs: Vec<ChainItem>,
}

/// Compacts the chain in `store`: writes every compacted archive the levels call for that is
/// not there yet, lowest level first (each level merging the one below). Never covers the
/// newest archive (the next backup continues it). The caller holds the destination's lock.
pub fn compact_chain(
    store: &dyn ChainStore,
    options: &CompactOptions,
    progress: &mut dyn FnMut(&Compacted),
) -> Result<CompactSummary> {
    let started = Instant::now();
    if options.fanout < 2 {
        return Err(Error::BadInput {
            path: store.location(),
            cause: format!(
                "--fanout {} merges nothing: it must be at least 2",
                options.fanout
            ),
            source: None,
        });
    }
    let (mut chain, leftovers, _) = load_chain(store)?;
    // An interrupted prune's leftovers go first: a block written again could take one's name.
    if !options.dry_run && !leftovers.is_empty() {
        store.remove(&leftovers.iter().collect::<Vec<_>>())?;
    }
    let mut summary = CompactSummary::default();
    let Some(newest) = chain.last().map(|i| i.manifest.sequence) else {
        summary.elapsed = started.elapsed();
        return Ok(summary);
    };
    // Following the chain: compacted in the codec of its newest archive (a chain of zstd
    // archives is not merged into deflate-9, four times slower).
    let head = chain.iter().rev().find(|i| i.manifest.covers.is_none());
    let (compression, unread) = super::write::next_codec(store, head, &options.archive);
    if let Some(e) = unread {
        tracing::warn!(error = %e, "the chain's codec could not be read");
    }
    let options = &CompactOptions {
        archive: ArchiveOptions {
            compression,
            ..options.archive
        },
        ..*options
    };
    let mut size = options.fanout;
    while size < newest {
        let mut b = 0u64;
        while (b + 1) * size < newest {
            let (lo, hi) = (b * size + 1, (b + 1) * size);
            b += 1;
            let planned = block(&chain, lo, hi, false);
            if let Some(item) = summary.carry_out(store, options, planned, progress)? {
                // The next level builds on it: into its place in the sorted chain (no block
                // is written twice, so nothing there covers the same sequences).
                let key = |c: &ChainItem| (c.manifest.sequence, c.manifest.first());
                let at = chain.partition_point(|c| key(c) < key(&item));
                chain.insert(at, item);
            }
        }
        size = match size.checked_mul(options.fanout) {
            Some(s) => s,
            None => break,
        };
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Compacts what the backup that wrote archive `newest` just closed: at each level, the block
/// that ends right before it, if one does. Reads only the archives inside those blocks (a live
/// backup calls this after each archive). What it misses (an error, a chain that was not
/// compacted before) `compact_chain` catches up.
pub fn compact_recent(
    store: &dyn ChainStore,
    options: &CompactOptions,
    newest: u64,
    progress: &mut dyn FnMut(&Compacted),
) -> Result<CompactSummary> {
    let started = Instant::now();
    let mut summary = CompactSummary::default();
    let hi = newest.saturating_sub(1);
    let mut size = options.fanout.max(2);
    let mut log = None;
    while size <= hi && hi % size == 0 {
        let lo = hi - size + 1;
        let log = match &log {
            Some(l) => l,
            None => log.insert(
                crate::prune::parse_prune_log(
                    &store.location_of(crate::prune::PRUNED_LOG),
                    store.read_prune_log()?.as_deref(),
                )
                .0,
            ),
        };
        let (items, _) = super::graph::settle(store.read_range(lo, hi)?, log);
        summary.carry_out(store, options, block(&items, lo, hi, true), progress)?;
        size = match size.checked_mul(options.fanout) {
            Some(s) => s,
            None => break,
        };
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

impl CompactSummary {
    /// Carries out what [`block`] planned: writes the block (reporting it to `progress`), or
    /// notes why it cannot be; returns the chain item that now stands for a written block.
    fn carry_out(
        &mut self,
        store: &dyn ChainStore,
        options: &CompactOptions,
        planned: std::result::Result<Option<Block>, String>,
        progress: &mut dyn FnMut(&Compacted),
    ) -> Result<Option<ChainItem>> {
        match planned {
            Ok(Some(block)) => {
                let (done, item) = write_block(store, options, &block)?;
                tracing::info!(
                    first = done.first,
                    last = done.last,
                    inputs = done.inputs,
                    size = done.size,
                    "compacted"
                );
                progress(&done);
                self.written.push(done);
                Ok(Some(item))
            }
            Ok(None) => Ok(None),
            Err(why) => {
                tracing::info!(%why, "not compacted");
                self.skipped.push(why);
                Ok(None)
            }
        }
    }
}

/// Writes a block's compacted archive (in a dry run, only describes it); returns what was
/// written and the chain item that now stands for the block.
fn write_block(
    store: &dyn ChainStore,
    options: &CompactOptions,
    block: &Block,
) -> Result<(Compacted, ChainItem)> {
    let slot = Slot {
        sequence: block.last,
        first: block.first,
        kind: RunKind::Incremental,
    };
    let input_bytes = block.inputs.iter().map(|i| i.size).sum();
    let mut done = Compacted {
        file: PathBuf::new(),
        first: block.first,
        last: block.last,
        inputs: block.inputs.len(),
        input_bytes,
        size: input_bytes,
        entries: 0,
    };
    if !options.dry_run {
        let (item, entries) =
            super::write::write_compacted(store, slot, &block.inputs, &options.archive)?;
        done.file = item.path.clone();
        done.size = item.size;
        done.entries = entries;
        // The next level reads it through its own manifest: what each collection's parts
        // hold is the merge's, not the last input's.
        return Ok((done, item));
    }
    // A dry run plans on with a stand-in (never read).
    let last = &block.inputs[block.inputs.len() - 1];
    let mut item = last.clone();
    item.manifest.covers = Some(super::Covers {
        first: block.first,
        last_archive: super::graph::end_name(last),
    });
    item.manifest.parent = block.inputs[0].manifest.parent.clone();
    item.manifest.from = block.inputs[0].manifest.from.clone();
    item.size = done.size;
    item.path = done.file.clone();
    Ok((done, item))
}

/// The block `lo..=hi` (aligned), clipped to the segment of the full archive before `hi`
/// (`chain` may hold only the archives inside the block: with `full_before`, a block without
/// a full archive inside belongs to a segment that started before it). `Ok(None)` when there
/// is nothing to do (already compacted, one archive, a full archive at its end), `Err` with the
/// reason when it cannot be compacted.
fn block(
    chain: &[ChainItem],
    lo: u64,
    hi: u64,
    full_before: bool,
) -> std::result::Result<Option<Block>, String> {
    let full = chain
        .iter()
        .filter(|i| i.manifest.kind == RunKind::Full && i.manifest.sequence <= hi)
        .map(|i| i.manifest.sequence)
        .max()
        .or(full_before.then_some(0));
    let Some(full) = full else {
        return Ok(None); // nothing restorable yet (or only pruned history)
    };
    if full >= hi {
        return Ok(None);
    }
    let first = lo.max(full + 1);
    if chain
        .iter()
        .any(|i| i.manifest.first() == first && i.manifest.sequence == hi)
    {
        return Ok(None);
    }
    // The archives inside the block, and the cheapest path across it.
    let start = chain.partition_point(|i| i.manifest.sequence < first);
    let end = chain.partition_point(|i| i.manifest.sequence <= hi);
    let inside = &chain[start..end];
    let best = shortest(inside, &|i| inside[i].manifest.first() >= first, &|i| {
        inside[i].manifest.first() == first && inside[i].manifest.kind == RunKind::Incremental
    });
    let Some(to) = (0..inside.len())
        .filter(|&i| inside[i].manifest.sequence == hi)
        .filter_map(|i| best[i].map(|b| (b.objects, b.bytes, i)))
        .min()
        .map(|(_, _, i)| i)
    else {
        if inside.is_empty() {
            return Ok(None); // pruned
        }
        return Err(format!(
            "sequences {first}..{hi}: no unbroken run of incrementals (run `tidemark verify`)"
        ));
    };
    let inputs: Vec<ChainItem> = path_to(&best, to)
        .into_iter()
        .map(|i| inside[i].clone())
        .collect();
    if inputs.len() < 2 {
        return Ok(None);
    }
    if let Some(old) = inputs.iter().find(|i| i.manifest.format_version < 2) {
        return Err(format!(
            "sequences {first}..{hi}: {} is in archive format 1, which compaction does not \
             rewrite",
            super::file_name_of(&old.path)
        ));
    }
    fn dirs(i: &ChainItem) -> Vec<&str> {
        let mut d: Vec<&str> = i
            .manifest
            .collections
            .iter()
            .map(|c| c.dir.as_str())
            .collect();
        d.sort_unstable();
        d
    }
    let want = dirs(&inputs[inputs.len() - 1]);
    if let Some(other) = inputs.iter().find(|i| dirs(i) != want) {
        return Err(format!(
            "sequences {first}..{hi}: the collections change at {} (one was created or \
             dropped), so these archives stay as they are",
            super::file_name_of(&other.path)
        ));
    }
    Ok(Some(Block {
        first,
        last: hi,
        inputs,
    }))
}
