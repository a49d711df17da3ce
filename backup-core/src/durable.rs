//! Durable file writes: write aside, fsync, rename into place, fsync the directory.

use crate::error::{Error, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether a write must be on disk before the call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// fsync the file and its directory.
    Now,
    /// Leave it to a later `sync_filesystem` (batched durability).
    Later,
}

/// The temporary name a file is written under before it is renamed to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The environment variable that arms [`crash_point`]: `TIDEMARK_CRASH_AT=N` aborts the
/// process at the N-th crash point it reaches (1-based).
pub const CRASH_AT_ENV: &str = "TIDEMARK_CRASH_AT";

/// A fault-injection point before every rename and fsync that durability depends on. Unarmed
/// (the normal case) it costs one atomic load. Armed by [`CRASH_AT_ENV`], the N-th point
/// reached aborts the process on the spot, as `kill -9` would (no destructor, no flush): the
/// fault suite runs a command once per point and checks that the next run repairs the
/// destination. `TIDEMARK_CRASH_TRACE=1` prints every point reached to stderr.
pub fn crash_point(what: &str, path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static ARMED: OnceLock<(Option<u64>, bool)> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let (at, trace) = *ARMED.get_or_init(|| {
        (
            std::env::var(CRASH_AT_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
            std::env::var_os("TIDEMARK_CRASH_TRACE").is_some(),
        )
    });
    if at.is_none() && !trace {
        return;
    }
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if trace {
        eprintln!("tidemark: crash point {n}: {what} {}", path.display());
    }
    if at == Some(n) {
        eprintln!(
            "tidemark: crash point {n} reached ({what} {}): aborting",
            path.display()
        );
        std::process::abort();
    }
}

/// Renames `from` to `to` (a [`crash_point`] first). A temporary file renamed into place is no
/// longer one ([`track_temp`]).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    crash_point("rename", from);
    // Under the temporary files' lock: a rename never races [`remove_temp_files`], which could
    // otherwise remove `from` before it is renamed and miss `to`, and none starts after it.
    let mut files = temp_files();
    refuse_when_closing(&files, from)?;
    fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
    files.paths.remove(from);
    Ok(())
}

/// The temporary files this process has created and not renamed into place yet (an
/// archive being written, key state files, a manifest's new version), and whether
/// [`remove_temp_files`] has run, after which no temporary file is created or renamed.
struct TempFiles {
    paths: std::collections::BTreeSet<PathBuf>,
    closing: bool,
}

static TEMP_FILES: std::sync::Mutex<TempFiles> = std::sync::Mutex::new(TempFiles {
    paths: std::collections::BTreeSet::new(),
    closing: false,
});

fn temp_files() -> std::sync::MutexGuard<'static, TempFiles> {
    // A panic while holding it leaves a set of paths, which stays usable.
    TEMP_FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses to create or rename `path` once [`remove_temp_files`] has run (the process is
/// being interrupted and exits).
fn refuse_when_closing(files: &TempFiles, path: &Path) -> Result<()> {
    if files.closing {
        return Err(Error::io(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::Interrupted, "the run was interrupted"),
        ));
    }
    Ok(())
}

/// Records `path` as a temporary file of this process until [`rename`] puts it in place, so
/// that [`remove_temp_files`] can remove it if the process is interrupted first.
pub fn track_temp(path: &Path) {
    temp_files().paths.insert(path.to_path_buf());
}

/// Creates the temporary file `path` and records it ([`track_temp`]) in one step under the
/// temporary files' lock, so that an interrupt ([`remove_temp_files`]) never falls between the
/// two and leaves the file behind; refused once the process is being interrupted.
pub fn create_temp(path: &Path) -> Result<File> {
    let mut files = temp_files();
    refuse_when_closing(&files, path)?;
    let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
    files.paths.insert(path.to_path_buf());
    Ok(file)
}

/// Removes a temporary file that is no longer needed (best effort: a leftover is removed by the
/// next run), and forgets it ([`track_temp`]).
pub fn remove_temp(path: &Path) {
    let _ = fs::remove_file(path);
    temp_files().paths.remove(path);
}

/// Removes the temporary files this process created and has not renamed into place, for a
/// Ctrl-C handler or a failed command that exits right after: an interrupted backup leaves no
/// temporary files (one of a killed process is removed by the next run). From then on no
/// temporary file is created (`create_temp`) and nothing is renamed (`rename`), so another
/// thread of the run cannot leave one behind before the process exits. Returns how many were
/// removed.
pub fn remove_temp_files() -> usize {
    let mut files = temp_files();
    files.closing = true;
    let removed = files
        .paths
        .iter()
        .filter(|p| fs::remove_file(p).is_ok())
        .count();
    files.paths.clear();
    removed
}

/// fsyncs an open file (a [`crash_point`] first).
pub fn sync_file(f: &File, path: &Path) -> Result<()> {
    crash_point("fsync", path);
    f.sync_all().map_err(|e| Error::io("fsync", path, e))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: Sync) -> Result<()> {
    let file = write_aside(path, bytes)?;
    if sync == Sync::Now {
        sync_file(&file.file, &file.tmp)?;
    }
    file.rename()?;
    if sync == Sync::Now {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// A file written aside (at its temporary path) whose fsync and rename into place are still to
/// come: several of them are made durable side by side ([`sync_all`], [`commit_all`]), so that
/// one fsync's wait overlaps the others' instead of following it.
#[must_use = "an unsynced file is neither durable nor in place"]
#[derive(Debug)]
pub struct Unsynced {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

impl Unsynced {
    /// `file`, written at `tmp`, to be renamed to `path` once fsynced.
    pub fn new(file: File, tmp: PathBuf, path: PathBuf) -> Self {
        Unsynced { file, tmp, path }
    }

    /// The path it is renamed to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts writing its bytes back (Linux `sync_file_range`), so that the fsync to come
    /// waits for less. Best effort: an error here is left to the fsync.
    #[allow(unsafe_code)]
    pub fn start_writeback(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: only reads the descriptor, which `self.file` keeps open for the call.
            let _ = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
    }

    /// Its length in bytes.
    pub fn size(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", &self.tmp, e))
    }

    /// Renames it into place; call after [`sync_all`] (the directory's fsync is the caller's).
    pub fn rename(self) -> Result<()> {
        drop(self.file);
        rename(&self.tmp, &self.path)
    }
}

/// Writes `bytes` aside for `path` without an fsync yet (see [`Unsynced`]).
pub fn write_aside(path: &Path, bytes: &[u8]) -> Result<Unsynced> {
    let tmp = temp_path(path);
    let mut f = create_temp(&tmp)?;
    f.write_all(bytes)
        .map_err(|e| Error::io("write", &tmp, e))?;
    Ok(Unsynced::new(f, tmp, path.to_path_buf()))
}

/// fsyncs every file side by side; the first error wins.
pub fn sync_all(files: &[&Unsynced]) -> Result<()> {
    side_by_side(files, |u| sync_file(&u.file, &u.tmp))
}

/// Runs `sync` on every item, one thread each beyond the first (fsyncs wait on the disk, not
/// the CPU); the first error wins.
fn side_by_side<T: std::marker::Sync>(
    items: &[T],
    sync: impl Fn(&T) -> Result<()> + std::marker::Sync,
) -> Result<()> {
    let Some((first, rest)) = items.split_first() else {
        return Ok(());
    };
    let sync = &sync;
    std::thread::scope(|s| {
        let others: Vec<_> = rest.iter().map(|i| s.spawn(move || sync(i))).collect();
        let mut result = sync(first);
        for t in others {
            let synced = t
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(synced);
        }
        result
    })
}

/// fsyncs every file side by side, then renames each into place (the directory's fsync is the
/// caller's).
pub fn commit_all(files: Vec<Unsynced>) -> Result<()> {
    sync_all(&files.iter().collect::<Vec<_>>())?;
    files.into_iter().try_for_each(Unsynced::rename)
}

/// Renames files that [`sync_all`] made durable into place, in order, then fsyncs the
/// directories that hold them, and `dirs`, side by side: renames that may become durable in
/// either order share one wait instead of one each.
pub fn place_all(files: Vec<Unsynced>, mut dirs: Vec<PathBuf>) -> Result<()> {
    for file in files {
        let dir = file.path.parent().unwrap_or(Path::new("")).to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
        file.rename()?;
    }
    side_by_side(&dirs, |d| sync_dir(d))
}

/// The bytes of the file at `path`, or `None` if there is none.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Writes `bytes` to a new file at `path` (no rename: for files in a staging area).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io("write", path, e))
}

/// fsyncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    crash_point("fsync directory", dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Makes everything written so far on the file system holding `path` durable, in one call
/// (`syncfs(2)` on Linux) rather than one fsync per file.
pub fn sync_filesystem(path: &Path) -> Result<()> {
    crash_point("syncfs", path);
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    sync_fs_of(&f).map_err(|e| Error::io("syncfs", path, e))
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn sync_fs_of(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
#[allow(unsafe_code)]
fn sync_fs_of(_f: &File) -> std::io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

/// Creates a directory and its parents, naming the path on failure.
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))
}

/// Removes a directory tree if it exists.
pub fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files committed side by side end up in place with their bytes, and their temporary
    /// files are gone; nothing is in place before the commit.
    #[test]
    fn files_committed_side_by_side_are_in_place_and_only_then() {
        let d = tempfile::tempdir().expect("tmp");
        let files: Vec<Unsynced> = (0..4)
            .map(|i| {
                write_aside(&d.path().join(format!("f{i}")), format!("{i}").as_bytes())
                    .expect("write aside")
            })
            .collect();
        for i in 0..4 {
            assert!(
                !d.path().join(format!("f{i}")).exists(),
                "f{i} before commit"
            );
        }
        commit_all(files).expect("commit");
        for i in 0..4 {
            let p = d.path().join(format!("f{i}"));
            assert_eq!(fs::read(&p).expect("read"), format!("{i}").as_bytes());
            assert!(!temp_path(&p).exists(), "f{i}'s temporary file is gone");
        }
    }

    /// A file whose temporary copy vanished fails the commit with an error naming it.
    #[test]
    fn a_commit_that_cannot_rename_names_the_file() {
        let d = tempfile::tempdir().expect("tmp");
        let a = write_aside(&d.path().join("a"), b"a").expect("a");
        let b = write_aside(&d.path().join("b"), b"b").expect("b");
        fs::remove_file(temp_path(&d.path().join("b"))).expect("remove");
        let e = commit_all(vec![a, b]).expect_err("b cannot be renamed");
        assert!(e.to_string().contains("b.tmp"), "{e}");
    }
}
