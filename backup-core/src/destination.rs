//! What a local destination directory holds: one format, recorded at its root.
//!
//! The first backup into a directory writes `DIR/.tidemark-format` (`folder` or `archive`,
//! written aside, fsynced, renamed). A backup in the other format is refused, and readers
//! (verify, restore, list) read the format from the file rather than guessing from what lies
//! in the directory. Directories written before the file existed are recognised by their
//! content (a folder manifest, or archive files), and a directory holding both is refused with
//! the way out.

use crate::durable::{self, Sync};
use crate::error::{Error, Result};
use crate::folder::META_DIR;
use std::path::Path;

/// The format marker's file name at a destination's root.
pub const FORMAT_FILE: &str = ".tidemark-format";

/// The format of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestFormat {
    /// A folder backup (`docs/FORMAT.md` §1).
    Folder,
    /// An archive chain (`docs/FORMAT.md` §3).
    Archive,
}

impl DestFormat {
    fn as_str(self) -> &'static str {
        match self {
            DestFormat::Folder => "folder",
            DestFormat::Archive => "archive",
        }
    }
}

impl std::fmt::Display for DestFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The format the destination `dir` holds: its marker, or for directories written before
/// markers existed, what it holds. `None` for a missing or empty destination.
pub fn detect_format(dir: &Path) -> Result<Option<DestFormat>> {
    not_a_file(dir)?;
    match read_marker(dir)? {
        Some(format) => Ok(Some(format)),
        None => infer_format(dir),
    }
}

/// The error for a destination that holds no completed backup (verify, restore and list say
/// the same): an empty or missing directory, or one where a first backup was stopped before it
/// finished (its format marker, or the marker's unfinished temporary file, or the folder
/// format's work area is there), which the next backup completes. Not damage: there is nothing
/// to restore, intact or not.
pub fn no_backup(dir: &Path) -> Error {
    let started = dir.join(FORMAT_FILE).exists()
        || durable::temp_path(&dir.join(FORMAT_FILE)).exists()
        || dir.join(META_DIR).is_dir();
    Error::BadInput {
        path: dir.to_path_buf(),
        cause: if started {
            "holds no tidemark backup: the first backup into it was stopped before it finished \
             (run `tidemark backup` again)"
        } else if dir.is_dir() {
            "holds no tidemark backup (no folder manifest, no archives)"
        } else {
            "holds no tidemark backup (no archives)"
        }
        .into(),
        source: None,
    }
}

/// Refuses a backup path that is something other than a directory (a database given where its
/// backup was meant, say), which reading its files would report as "Not a directory".
pub fn not_a_file(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "not a backup directory (a backup is a directory; this is a file)".into(),
            source: None,
        });
    }
    Ok(())
}

/// What the marker says, if it names a format. A damaged marker (anything but the two words)
/// is ignored: the directory's content says what it holds, and the next backup writes the
/// marker again.
fn read_marker(dir: &Path) -> Result<Option<DestFormat>> {
    let marker = dir.join(FORMAT_FILE);
    Ok(
        match crate::durable::read_if_exists(&marker)?
            .as_deref()
            .map(<[u8]>::trim_ascii)
        {
            Some(b"folder") => Some(DestFormat::Folder),
            Some(b"archive") => Some(DestFormat::Archive),
            _ => None,
        },
    )
}

/// The format a directory without a (valid) marker holds, from its content.
fn infer_format(dir: &Path) -> Result<Option<DestFormat>> {
    let folder = dir
        .join(META_DIR)
        .join(crate::folder::MANIFEST_FILE)
        .exists();
    let archive = crate::archive::is_archive_dir(dir);
    match (folder, archive) {
        (true, true) => Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: "holds both a folder backup and archive files, written by an older tidemark \
                    that did not keep one format per destination: move one of them to a \
                    directory of its own, then write `folder` or `archive` into \
                    DIR/.tidemark-format"
                .into(),
            source: None,
        }),
        (true, false) => Ok(Some(DestFormat::Folder)),
        (false, true) => Ok(Some(DestFormat::Archive)),
        (false, false) => Ok(None),
    }
}

/// Records that `dir` holds `format`, or refuses if it holds the other one (call with the
/// destination's lock held, before writing anything).
pub fn claim_format(dir: &Path, format: DestFormat) -> Result<()> {
    let marker = read_marker(dir)?;
    let found = match marker {
        Some(found) => Some(found),
        None => infer_format(dir)?,
    };
    match found {
        Some(found) if found != format => Err(Error::BadInput {
            path: dir.to_path_buf(),
            cause: format!(
                "holds {found} backups; a {format} backup cannot go here (one format per \
                 destination): back up with --format {found}, or to another directory"
            ),
            source: None,
        }),
        _ if marker == Some(format) => Ok(()),
        _ => write_marker(dir, format),
    }
}

/// Refuses to start a folder backup in a directory that holds something else. A folder backup
/// writes a directory per collection and replaces it whole on a full run, so a directory of
/// the same name that was there (`DIR/orders/` of the user's, say) would be lost. A directory
/// that holds only tidemark's own files (`.tidemark*`, `tidemark-*`) or `lost+found` is fine.
pub fn check_new_folder_destination(dir: &Path) -> Result<()> {
    if !dir.is_dir() || detect_format(dir)?.is_some() || dir.join(META_DIR).is_dir() {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut foreign = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(|e| Error::io("list", dir, e))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !(name.starts_with(".tidemark") || name.starts_with("tidemark-") || name == "lost+found")
        {
            foreign.push(name);
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign.len().min(3);
    Err(Error::BadInput {
        path: dir.to_path_buf(),
        cause: format!(
            "holds files that are not a tidemark backup ({}{}): a folder backup writes a \
             directory per collection and replaces it whole, so one of the same name would be \
             lost; back up into a new or empty directory",
            foreign[..shown].join(", "),
            if foreign.len() > shown {
                format!(" and {} more", foreign.len() - shown)
            } else {
                String::new()
            }
        ),
        source: None,
    })
}

fn write_marker(dir: &Path, format: DestFormat) -> Result<()> {
    durable::create_dir_all(dir)?;
    durable::write_atomic(
        &dir.join(FORMAT_FILE),
        format!("{format}\n").as_bytes(),
        Sync::Now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_format_sticks_and_the_other_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("dest");
        assert_eq!(detect_format(&dir).expect("detect"), None);
        claim_format(&dir, DestFormat::Folder).expect("claim");
        assert_eq!(
            detect_format(&dir).expect("detect"),
            Some(DestFormat::Folder)
        );
        claim_format(&dir, DestFormat::Folder).expect("same format again");
        let err = claim_format(&dir, DestFormat::Archive).expect_err("refused");
        assert!(err.to_string().contains("--format folder"), "{err}");
        // A damaged marker gives way to the content (none here), and is written again.
        std::fs::write(dir.join(FORMAT_FILE), "golder\n").expect("write");
        assert_eq!(detect_format(&dir).expect("detect"), None);
        claim_format(&dir, DestFormat::Folder).expect("claim");
        assert_eq!(
            std::fs::read_to_string(dir.join(FORMAT_FILE)).expect("read"),
            "folder\n"
        );
    }
}
