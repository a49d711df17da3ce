//! The chain as a graph of archives. Each archive covers a range of sequences (a backup's
//! archive its own; a compacted one `first..=sequence`) and leads from the state at
//! `first - 1` to the state at `sequence`. A restore point is reachable along any path of
//! archives from a full archive; compaction adds longer edges beside the short ones, and a
//! restore takes the path with the fewest archives.

use super::chain::Slot;
use super::{damaged, file_name_of, ChainItem};
use crate::error::Error;
use crate::manifest::RunKind;
use crate::prune::PrunedEntry;
use std::collections::{BTreeSet, HashMap};

/// Sorts archives by the sequence they end at, then (for one end) the longest first: a
/// backup's own archive comes last among those ending at its sequence.
pub fn sort_chain(items: &mut [ChainItem]) {
    items.sort_by(|a, b| {
        (a.manifest.sequence, a.manifest.first()).cmp(&(b.manifest.sequence, b.manifest.first()))
    });
}

/// The name an incremental written right after `item` gives as its parent: the file name of
/// the archive written at `item`'s last sequence.
pub(crate) fn end_name(item: &ChainItem) -> String {
    match &item.manifest.covers {
        Some(c) => c.last_archive.clone(),
        None => file_name_of(&item.path),
    }
}

/// Whether incremental `item` continues `prev`: it starts right after `prev`'s last sequence,
/// at its checkpoint, and names it (or the archive it ends as) as its parent.
pub(crate) fn continues(prev: &ChainItem, item: &ChainItem) -> bool {
    let m = &item.manifest;
    m.kind == RunKind::Incremental
        && m.first() == prev.manifest.sequence + 1
        && m.parent.as_deref() == Some(end_name(prev).as_str())
        && m.from.as_ref() == Some(&prev.manifest.to)
}

/// The cheapest way to reach an archive's end: how many archives are read, their bytes, and
/// the archive before it on the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Best {
    /// Archives read.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The previous archive on the path (index), `None` at the start.
    pub prev: Option<usize>,
}

/// For each archive of `items` (sorted by [`sort_chain`]), the cheapest path (fewest
/// archives, then fewest bytes) that ends with it, using only archives `allowed` and starting
/// at one that `start` accepts (a full archive, for a restore); `None` where there is none.
pub(crate) fn shortest(
    items: &[ChainItem],
    allowed: &dyn Fn(usize) -> bool,
    start: &dyn Fn(usize) -> bool,
) -> Vec<Option<Best>> {
    let slots: Vec<Slot> = items.iter().map(|i| Slot::of(&i.manifest)).collect();
    cheapest(&slots, &|i| items[i].size, allowed, start, &|p, i| {
        continues(&items[p], &items[i])
    })
}

/// The search behind [`shortest`], over slots (sorted by sequence, then first) that may be
/// known only by name: `links(p, i)` says whether `i` may follow `p` (which ends right before
/// `i` starts), `cost(i)` is what reading `i` costs beside being one more archive.
pub(crate) fn cheapest(
    slots: &[Slot],
    cost: &dyn Fn(usize) -> u64,
    allowed: &dyn Fn(usize) -> bool,
    start: &dyn Fn(usize) -> bool,
    links: &dyn Fn(usize, usize) -> bool,
) -> Vec<Option<Best>> {
    let mut best: Vec<Option<Best>> = vec![None; slots.len()];
    let mut ending: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, slot) in slots.iter().enumerate() {
        if !allowed(i) {
            continue;
        }
        let mut here = start(i).then_some(Best {
            objects: 1,
            bytes: cost(i),
            prev: None,
        });
        let before = slot.first.checked_sub(1);
        for &p in before.and_then(|b| ending.get(&b)).into_iter().flatten() {
            let Some(b) = best[p] else { continue };
            if !links(p, i) {
                continue;
            }
            let candidate = Best {
                objects: b.objects + 1,
                bytes: b.bytes + cost(i),
                prev: Some(p),
            };
            if here.is_none_or(|h| (candidate.objects, candidate.bytes) < (h.objects, h.bytes)) {
                here = Some(candidate);
            }
        }
        best[i] = here;
        ending.entry(slot.sequence).or_default().push(i);
    }
    best
}

/// The path [`shortest`] found to archive `i`, first archive first.
pub(crate) fn path_to(best: &[Option<Best>], i: usize) -> Vec<usize> {
    let mut path = Vec::new();
    let mut at = best[i].map(|_| i);
    while let Some(j) = at {
        path.push(j);
        at = best[j].and_then(|b| b.prev);
    }
    path.reverse();
    path
}

/// Cheapest paths from a full archive, over every archive.
pub(crate) fn from_full(items: &[ChainItem]) -> Vec<Option<Best>> {
    shortest(items, &|_| true, &|i| {
        items[i].manifest.kind == RunKind::Full
    })
}

/// Splits what a listing found into the chain and the *leftovers*: archives the prune log
/// records as removed but which are still there (a prune killed before it deleted them all).
/// They belong to no chain; the next prune or compaction deletes them.
pub(crate) fn settle(
    items: Vec<ChainItem>,
    log: &[PrunedEntry],
) -> (Vec<ChainItem>, Vec<ChainItem>) {
    let removed: BTreeSet<&str> = log.iter().map(|e| e.file.as_str()).collect();
    let (mut leftovers, mut chain): (Vec<ChainItem>, Vec<ChainItem>) = items
        .into_iter()
        .partition(|i| removed.contains(file_name_of(&i.path).as_str()));
    sort_chain(&mut chain);
    sort_chain(&mut leftovers);
    (chain, leftovers)
}

/// The sequences the prune log accounts for (a pruned compacted archive accounts for every
/// sequence it covered).
pub(crate) fn pruned_sequences(log: &[PrunedEntry]) -> BTreeSet<u64> {
    log.iter()
        .flat_map(|e| e.first.unwrap_or(e.sequence)..=e.sequence)
        .collect()
}

/// The sequences up to the newest archive of `chain` at which no archive ends, that were not
/// `pruned` and are not the archives `problems` name (there but unreadable): points lost, whose
/// archives are gone. A compacted archive that covers a sequence holds its changes, not its
/// point (it ends later), so a continuous chain may still have lost points.
pub(crate) fn lost_points(
    chain: &[ChainItem],
    pruned: &BTreeSet<u64>,
    problems: &[Error],
) -> Vec<u64> {
    let damaged: BTreeSet<u64> = problems
        .iter()
        .filter_map(super::chain::problem_sequence)
        .collect();
    let ends: BTreeSet<u64> = chain.iter().map(|i| i.manifest.sequence).collect();
    let newest = ends.last().copied().unwrap_or(0);
    (1..=newest)
        .filter(|s| !ends.contains(s) && !pruned.contains(s) && !damaged.contains(s))
        .collect()
}

/// Checks that every archive of `chain` (settled and sorted) is where a restore can reach it:
/// each incremental continues an archive that ends right before it (same checkpoint, named as
/// its parent); sequences no archive covers were pruned and a full archive follows them; no two
/// archives cover the same sequences.
pub(crate) fn check_continuity(chain: &[ChainItem], pruned: &BTreeSet<u64>) -> Vec<Error> {
    let mut problems = Vec::new();
    let mut covered_to = 0u64; // every sequence up to here is covered (or pruned)
    let same = |a: &ChainItem, b: &ChainItem| {
        (a.manifest.sequence, a.manifest.first()) == (b.manifest.sequence, b.manifest.first())
    };
    for (i, item) in chain.iter().enumerate() {
        let m = &item.manifest;
        let first = m.first();
        // Sorted: archives covering the same sequences lie next to each other (the first of
        // them is named).
        let twins = chain[..i]
            .iter()
            .rev()
            .take_while(|o| same(o, item))
            .count();
        if let Some(twin) = (twins > 0).then(|| &chain[i - twins]) {
            problems.push(damaged(
                &item.path,
                format!(
                    "covers the same sequences as {} (sequence {} does not follow {})",
                    file_name_of(&twin.path),
                    m.sequence,
                    twin.manifest.sequence
                ),
            ));
            continue;
        }
        let before = first.saturating_sub(1);
        // Sorted by sequence: the archives ending at or before `before` are a prefix, those
        // ending exactly there its tail.
        let upto = chain[..i].partition_point(|o| o.manifest.sequence <= before);
        let prev_end = upto
            .checked_sub(1)
            .map_or(0, |p| chain[p].manifest.sequence);
        if first > covered_to + 1 && first > 1 {
            // A gap: only pruned archives may be missing, and only before a full archive.
            let from = covered_to.max(prev_end) + 1;
            let lost: Vec<u64> = (from..first).filter(|s| !pruned.contains(s)).collect();
            if from < first && (!lost.is_empty() || m.kind != RunKind::Full) {
                problems.push(damaged(
                    &item.path,
                    format!(
                        "sequence {first} where {from} was expected (archives {from}..{} are \
                         missing{})",
                        first - 1,
                        if lost.is_empty() {
                            " and this incremental needs them"
                        } else {
                            ", not pruned"
                        }
                    ),
                ));
                covered_to = covered_to.max(m.sequence);
                continue;
            }
        }
        covered_to = covered_to.max(m.sequence);
        if m.kind == RunKind::Full {
            continue;
        }
        let ending_before = chain[..upto].partition_point(|o| o.manifest.sequence < before);
        let candidates = &chain[ending_before..upto];
        if candidates.iter().any(|p| continues(p, item)) {
            continue;
        }
        match candidates.last() {
            Some(prev) => problems.push(damaged(
                &item.path,
                format!(
                    "does not continue {}: it starts at {:?}, which ended at {}",
                    file_name_of(&prev.path),
                    m.from.as_ref().map(|f| f.to_string()),
                    prev.manifest.to
                ),
            )),
            None if prev_end == 0 => problems.push(damaged(
                &item.path,
                "an incremental without a full archive before it",
            )),
            None => {} // the gap was reported above
        }
    }
    problems
}
