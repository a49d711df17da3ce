//! Verify: check a backup end to end without restoring it.

use crate::error::{Error, Result};
use crate::folder::FolderBackup;
use std::path::Path;

/// The most problems a verify run lists before it stops looking.
pub const MAX_PROBLEMS: usize = 100;

/// The outcome of verifying a backup.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Collections checked.
    pub collections: usize,
    /// Records checked: a folder's documents; in a chain, the record lines of every archive
    /// (a record changed by an incremental is counted once in each archive that holds it).
    pub records: u64,
    /// Records the backup holds in its newest state: a folder's; a chain's newest archive's
    /// (its manifest's counts, which verify checks against its lines).
    pub records_in_backup: u64,
    /// Archives checked (0 for a folder backup).
    pub archives: usize,
    /// Every problem found (at most `MAX_PROBLEMS`), each naming the file and cause.
    pub problems: Vec<Error>,
}

impl VerifyReport {
    /// Whether the backup is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a folder backup: the manifest's CRC32, every document's and attachment's CRC32,
/// that each document sits in the folder its key names, and the record counts.
///
/// Returns `Err` only when the backup cannot be read at all (no manifest); damage is listed in
/// the report.
pub fn verify_folder(dir: &Path) -> Result<VerifyReport> {
    verify_folder_with(dir, &mut |_, _| {})
}

/// [`verify_folder`], telling `progress` the documents checked so far and the backup's total
/// as it goes.
pub fn verify_folder_with(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
    let (folder, manifest) = FolderBackup::open_existing(dir)?;
    let mut report = VerifyReport::default();
    let total: u64 = manifest.collections.iter().map(|c| c.records).sum();
    report.records_in_backup = total;
    let mut before = 0u64;
    for c in &manifest.collections {
        report.collections += 1;
        let mut n = 0u64;
        let mut problems = Vec::new();
        let result = folder.read_collection(
            &c.dir,
            &mut |_, _| {
                n += 1;
                if n % 1024 == 0 {
                    progress(before + n, total);
                }
                Ok(())
            },
            &mut Err,
        );
        // A damaged document stops read_collection; re-walk document by document to list all.
        if let Err(first) = result {
            n = 0;
            problems.push(first);
            let cdir = folder.root().join(&c.dir);
            if let Ok(entries) = std::fs::read_dir(&cdir) {
                problems.clear();
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".tmp") {
                        continue;
                    }
                    match check_one(&entry.path()) {
                        Ok(()) => n += 1,
                        Err(e) => problems.push(e),
                    }
                    if problems.len() >= MAX_PROBLEMS {
                        break;
                    }
                }
            }
        } else if n != c.records {
            problems.push(Error::Damaged {
                path: folder.root().join(&c.dir),
                cause: format!(
                    "holds {n} documents, the manifest says {}: documents are missing or extra",
                    c.records
                ),
            });
        }
        report.records += n;
        before += c.records;
        progress(before, total);
        report.problems.extend(problems);
        if report.problems.len() >= MAX_PROBLEMS {
            report.problems.truncate(MAX_PROBLEMS);
            break;
        }
    }
    Ok(report)
}

fn check_one(docdir: &Path) -> Result<()> {
    let record = crate::folder::read_document(docdir)?;
    let name = docdir.file_name().unwrap_or_default().to_string_lossy();
    if crate::docid::encode(record.key.as_bytes()) != name {
        return Err(Error::Damaged {
            path: docdir.join(crate::folder::DOCUMENT_FILE),
            cause: format!(
                "the key {} does not belong in the folder `{name}`",
                record.key
            ),
        });
    }
    Ok(())
}
