//! Scratch directories in the system's temporary directory that a killed process does not
//! leave behind: each holds an exclusive `flock` on itself for as long as its owner lives, and
//! the next [`ScratchDir::new`] with the same prefix removes those whose lock is free.
//!
//! A process stopped by `kill -9`, the OOM killer or a power cut never runs the destructor
//! that removes its temporary directory. A RocksDB secondary instance (one per run that reads
//! a RocksDB source) left one behind each time; the kernel releases the lock of a dead process,
//! which is how the next run tells those apart from the directories of runs still going.
//!
//! The owner creates its directory, locks it, and only then writes the [`OWNER_FILE`] marker
//! in it: a directory without the marker is being created right now (or was made by a tidemark
//! before this module, whose lock state is unknown) and is left alone.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The marker an owner writes into its directory once it holds the lock.
pub const OWNER_FILE: &str = ".tidemark-scratch-owner";

/// A directory under the system's temporary directory, removed when dropped (as
/// `tempfile::TempDir`), and by a later [`ScratchDir::new`] if its process dies first.
#[derive(Debug)]
pub struct ScratchDir {
    // Declared first: removed before the lock is released, so no other process removes it
    // while this one still uses it.
    dir: tempfile::TempDir,
    _lock: File,
}

impl ScratchDir {
    /// Removes the directories that dead processes left under `prefix` (best effort: a
    /// directory that cannot be removed is left), then creates and locks a new one.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// [`ScratchDir::new`] under `parent` instead of the system's temporary directory.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        let removed = remove_abandoned(parent, prefix);
        if removed > 0 {
            tracing::info!(
                "removed {removed} temporary director{} that stopped runs left in {}",
                if removed == 1 { "y" } else { "ies" },
                parent.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| Error::io("create a temporary directory", parent, e))?;
        let lock = File::open(dir.path())
            .map_err(|e| Error::io("open a temporary directory", dir.path(), e))?;
        crate::lock::flock(&lock, true, false)
            .and_then(|held| {
                held.then_some(())
                    .ok_or_else(|| std::io::Error::other("another process holds its lock"))
            })
            .map_err(|e| Error::io("lock a temporary directory", dir.path(), e))?;
        let owner = dir.path().join(OWNER_FILE);
        std::fs::write(&owner, crate::lock::holder_line("scratch"))
            .map_err(|e| Error::io("write", &owner, e))?;
        Ok(ScratchDir { dir, _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the directories named `prefix*` in `parent` that carry the owner marker and whose
/// lock is free (their process is gone). Returns how many it removed.
fn remove_abandoned(parent: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let candidates: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        // A directory itself, never a symbolic link to one (the temporary directory is shared).
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    let mut removed = 0;
    for dir in candidates {
        if !dir.join(OWNER_FILE).is_file() {
            continue;
        }
        let Ok(handle) = File::open(&dir) else {
            continue;
        };
        // Free only when no process holds it: its owner died (or just removed it).
        if !matches!(crate::lock::flock(&handle, true, false), Ok(true)) {
            continue;
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_live_directory_is_kept_and_an_abandoned_one_removed() {
        let parent = tempfile::tempdir().unwrap();
        let live = ScratchDir::new_in(parent.path(), "t-").unwrap();
        assert!(live.path().join(OWNER_FILE).is_file());
        // What a killed owner leaves: the marker, its lock released with the process.
        let dead = parent.path().join("t-dead");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(OWNER_FILE), "pid 1").unwrap();
        std::fs::write(dead.join("LOG"), "x").unwrap();
        // Being created by another process (no marker yet), and another prefix: left alone.
        let creating = parent.path().join("t-creating");
        std::fs::create_dir(&creating).unwrap();
        let other = parent.path().join("u-dead");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER_FILE), "pid 1").unwrap();

        let second = ScratchDir::new_in(parent.path(), "t-").unwrap();
        assert!(!dead.exists(), "the abandoned directory was kept");
        assert!(
            live.path().join(OWNER_FILE).is_file(),
            "a live one was removed"
        );
        assert!(creating.exists() && other.exists());
        let (a, b) = (live.path().to_path_buf(), second.path().to_path_buf());
        drop(live);
        drop(second);
        assert!(!a.exists() && !b.exists(), "not removed when dropped");
    }
}
