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
    /// Leave it to a later [`sync_filesystem`] (batched durability).
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

/// Renames `from` to `to` (a [`crash_point`] first).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    crash_point("rename", from);
    fs::rename(from, to).map_err(|e| Error::io("rename", from, e))
}

/// fsyncs an open file (a [`crash_point`] first).
pub fn sync_file(f: &File, path: &Path) -> Result<()> {
    crash_point("fsync", path);
    f.sync_all().map_err(|e| Error::io("fsync", path, e))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: Sync) -> Result<()> {
    let tmp = temp_path(path);
    {
        let mut f = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        if sync == Sync::Now {
            sync_file(&f, &tmp)?;
        }
    }
    rename(&tmp, path)?;
    if sync == Sync::Now {
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
    }
    Ok(())
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
