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
//! in it; it removes the marker last. A directory without the marker is being created right
//! now, or was emptied by an owner killed while removing it, or was made by a tidemark before
//! this module (whose lock state is unknown): only an empty one a minute old is removed.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The marker an owner writes into its directory once it holds the lock.
pub const OWNER_FILE: &str = ".tidemark-scratch-owner";

/// How old a directory without the owner marker must be before an empty one is removed.
const EMPTY_AGE: std::time::Duration = std::time::Duration::from_secs(60);

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
        // Only its owner may read it: it may hold a copy of a database whose own directory
        // keeps others out.
        let mut builder = tempfile::Builder::new();
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = builder
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

    /// Copies the file `from` to `to` in this directory. A full temporary directory names the
    /// copy and how to point it elsewhere (it named the file copied, as if the database's own
    /// disk were full).
    pub fn copy_in(&self, from: &Path, to: &Path) -> Result<()> {
        match std::fs::copy(from, to) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => {
                Err(Error::io(
                    "copy into the temporary directory (set TMPDIR to a directory with room for \
                     a copy of the database)",
                    to,
                    e,
                ))
            }
            Err(e) => Err(Error::io("copy", from, e)),
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // What it holds first, the owner marker last (with the directory, as `TempDir` is
        // dropped): a process killed while removing it leaves a directory that the next run
        // still recognises.
        remove_contents_but_marker(self.dir.path());
    }
}

/// Removes everything in `dir` but [`OWNER_FILE`] (best effort).
fn remove_contents_but_marker(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name() == OWNER_FILE {
            continue;
        }
        let path = entry.path();
        let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
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
            // Empty: its owner was killed after removing the marker, or is creating it right
            // now (for microseconds). Removed once it is a minute old (`rmdir` removes only an
            // empty directory).
            let old = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= EMPTY_AGE));
            if old && std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
            continue;
        }
        let Ok(handle) = File::open(&dir) else {
            continue;
        };
        // Free only when no process holds it: its owner died (or just removed it).
        if !matches!(crate::lock::flock(&handle, true, false), Ok(true)) {
            continue;
        }
        // The marker last, as when its owner removes it.
        remove_contents_but_marker(&dir);
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
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(live.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "readable by others: {mode:o}");
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

        // Left empty by a kill after its marker was removed: removed once a minute old.
        let emptied = parent.path().join("t-emptied");
        std::fs::create_dir(&emptied).unwrap();
        let a_while_ago = std::time::SystemTime::now() - 2 * EMPTY_AGE;
        std::fs::File::open(&emptied)
            .unwrap()
            .set_modified(a_while_ago)
            .unwrap();

        let second = ScratchDir::new_in(parent.path(), "t-").unwrap();
        assert!(!emptied.exists(), "the emptied directory was kept");
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
