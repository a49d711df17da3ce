//! Verifying a chain of archives, in either format.

use super::chain::{archive_files, check_continuity, check_head, read_head, read_manifest};
use super::{v1, v2, ChainItem};
use crate::error::{Error, Result};
use crate::verify::VerifyReport;
use std::fs;
use std::path::Path;

/// Verifies every archive in `dir`: file CRC32s, entry and record CRC32s, counts, entry names and
/// the chain's continuity. Damage is listed in the report.
pub fn verify_archives(dir: &Path) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let head = read_head(dir).unwrap_or_else(|e| {
        report.problems.push(e);
        None
    });
    let files = archive_files(dir)?;
    if files.is_empty() && head.is_none() && report.problems.is_empty() {
        // Nothing to call intact (a first backup that never completed): restore refuses it too.
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "no tidemark archives in this directory".into(),
        });
    }
    let mut chain = Vec::new();
    for path in files {
        match read_manifest(&path) {
            Ok(manifest) => {
                let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                chain.push(ChainItem {
                    path,
                    manifest,
                    size,
                });
            }
            Err(e) => report.problems.push(e),
        }
    }
    for item in &chain {
        report.collections = report.collections.max(item.manifest.collections.len());
        let read = match item.manifest.format_version {
            1 => v1::read_archive(item, &mut |_, _, _| Ok(())),
            _ => v2::verify_archive(item),
        };
        match read {
            Ok(n) => report.records += n,
            Err(e) => report.problems.push(e),
        }
    }
    if report.problems.is_empty() {
        report.problems.extend(check_continuity(
            &chain,
            &crate::prune::pruned_sequences(dir)?,
        ));
    }
    report
        .problems
        .extend(check_head(dir, head.as_ref(), &chain));
    Ok(report)
}
