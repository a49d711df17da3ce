//! Verifying a chain of archives, in either format, wherever it is kept.

use super::chain::{ChainStore, LocalChain, RETRIES_AFTER_REMOVAL};
use super::graph::check_continuity;
use super::{v1, v2};
use crate::error::Result;
use crate::verify::VerifyReport;
use std::path::Path;

/// Verifies every archive in `dir`: file CRC32s, entry and record CRC32s, counts, entry names and
/// the chain's continuity. Damage is listed in the report.
pub fn verify_archives(dir: &Path) -> Result<VerifyReport> {
    verify_chain(&LocalChain::new(dir))
}

/// Verifies every archive of the chain in `store` (a local directory or an object store), each
/// read once, front to back: the whole file's CRC32, every entry's and record's CRC32, the
/// counts, entry names and the chain's continuity. Damage is listed in the report.
pub fn verify_chain(store: &dyn ChainStore) -> Result<VerifyReport> {
    verify_chain_with(store, &mut |_, _| {})
}

/// [`verify_chain`], telling `progress` the bytes read so far and the chain's total as it goes.
///
/// A prune or a compaction may remove archives while this reads (they hold the destination's
/// writer lock, which readers do not take): a file that was listed and is gone when it is read
/// was not damage. The chain is then listed and verified again as it now stands (a few times at
/// most; a file that keeps going missing is reported).
pub fn verify_chain_with(
    store: &dyn ChainStore,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let mut report = verify_survey(store, store.survey()?, progress)?;
    for _ in 0..RETRIES_AFTER_REMOVAL {
        if !report.problems.iter().any(super::chain::is_gone) {
            break;
        }
        tracing::debug!("archives were removed while they were verified: verifying again");
        report = verify_survey(store, store.survey()?, progress)?;
    }
    // An encrypted chain's key file and its copy: one damaged, the other opened the chain.
    report
        .problems
        .extend(crate::crypt::key_file_problems(store)?);
    Ok(report)
}

/// Verifies the archives of `survey`, one listing of `store`.
fn verify_survey(
    store: &dyn ChainStore,
    survey: super::chain::Survey,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        problems: survey.problems,
        ..VerifyReport::default()
    };
    if !survey.anything && report.problems.is_empty() {
        // Nothing to call intact (a first backup that never completed): restore refuses it too.
        return Err(crate::destination::no_backup(&store.location()));
    }
    let chain = survey.items;
    report.archives = chain.len();
    report.records_in_backup = chain.last().map_or(0, |newest| {
        newest.manifest.collections.iter().map(|c| c.records).sum()
    });
    let listing_ok = report.problems.is_empty();
    let mut damaged_files = 0;
    let total: u64 = chain.iter().map(|i| i.size).sum();
    let mut before = 0u64;
    for item in &chain {
        report.collections = report.collections.max(item.manifest.collections.len());
        let read = store
            .open(item)
            .and_then(|archive| match item.manifest.format_version {
                1 => v1::read_archive(item, &*archive, &mut |_, _, _| Ok(())),
                _ => v2::verify_archive(item, &*archive, &mut |n| progress(before + n, total)),
            });
        before += item.size;
        progress(before, total);
        match read {
            Ok(n) => {
                tracing::debug!(archive = %item.path.display(), records = n, "verified");
                report.records += n
            }
            Err(e) => {
                damaged_files += 1;
                report.problems.push(e)
            }
        }
    }
    if listing_ok && damaged_files == 0 {
        let broken = check_continuity(&chain, &survey.pruned);
        if broken.is_empty() {
            // A chain a restore can walk may still have lost points: an archive deleted under
            // a compacted archive that covers it.
            for m in super::graph::lost_points(&chain, &survey.pruned, &[]) {
                report.problems.push(crate::Error::Damaged {
                    path: store.location(),
                    cause: format!(
                        "{}: its point can no longer be restored",
                        super::chain::archive_gone(m)
                    ),
                });
            }
        }
        report.problems.extend(broken);
    }
    Ok(report)
}
