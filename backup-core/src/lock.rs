//! One writer per destination: an exclusive kernel lock (`flock`) on `DIR/.tidemark-lock`,
//! held for the whole of a backup, live run or prune.
//!
//! The kernel drops the lock when its holder exits, however it exits, so a killed run never
//! blocks the next one. The file holds a line naming the holder (pid, host, start time,
//! command), read by whoever is refused. The file itself is never removed: removing it would
//! let a second writer lock a new file while the first still holds the old one.
//!
//! Within one process the lock is reentrant for the thread that holds it (a live backup holds
//! it for its whole run and calls the engine, which takes it for every run); another thread of
//! the same process is refused like another process.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::ThreadId;

/// The lock file's name in a destination directory.
pub const LOCK_FILE: &str = ".tidemark-lock";

/// Locks this process holds: canonical destination → (holding thread, depth).
static HELD: Mutex<Option<HashMap<PathBuf, (ThreadId, usize)>>> = Mutex::new(None);

/// An exclusive lock on a destination directory; released when dropped.
#[derive(Debug)]
pub struct DestinationLock {
    key: PathBuf,
    /// The locked file (`None` for a reentrant acquisition by the holding thread).
    _file: Option<File>,
}

impl DestinationLock {
    /// Takes the lock on the destination directory `dir` (created if missing) for `command`
    /// (e.g. "backup"), or fails at once with [`Error::Locked`] naming the holder.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::BadInput {
                path: dir.to_path_buf(),
                cause: "exists and is not a directory".into(),
                source: None,
            });
        }
        crate::durable::create_dir_all(dir)?;
        let key = dir
            .canonicalize()
            .map_err(|e| Error::io("resolve", dir, e))?;
        let me = std::thread::current().id();
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let map = held.get_or_insert_with(HashMap::new);
        if let Some((thread, depth)) = map.get_mut(&key) {
            if *thread == me {
                *depth += 1;
                return Ok(DestinationLock { key, _file: None });
            }
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                holder: format!(
                    "another thread of this process (pid {})",
                    std::process::id()
                ),
            });
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match flock(&file, true, false) {
            Ok(true) => {}
            Ok(false) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "a process that has not written its name yet".into()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(e) => return Err(Error::io("lock", &path, e)),
        }
        let line = format!("{}\n", holder_line(command));
        // Best effort: the lock is the flock, the text only names its holder.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(line.as_bytes()));
        map.insert(key.clone(), (me, 1));
        Ok(DestinationLock {
            key,
            _file: Some(file),
        })
    }
}

impl Drop for DestinationLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = held.as_mut() {
            if let Some((_, depth)) = map.get_mut(&self.key) {
                *depth -= 1;
                if *depth == 0 {
                    map.remove(&self.key);
                }
            }
        }
        // The file (if this is the outermost acquisition) closes after this, releasing flock.
    }
}

/// `flock(2)` on `file`, exclusive or shared. With `wait`, blocks until it is granted;
/// without, returns `Ok(false)` at once when another open file holds a conflicting lock.
#[allow(unsafe_code)]
pub fn flock(file: &File, exclusive: bool, wait: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock only takes the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

/// The line a lock holder writes about itself, local or remote: `pid N on HOST, since TIME:
/// tidemark COMMAND`.
pub fn holder_line(command: &str) -> String {
    format!(
        "pid {} on {}, since {}: tidemark {command}",
        std::process::id(),
        hostname(),
        crate::manifest::now_rfc3339()
    )
}

/// Whether process `pid` of this machine still runs (`kill(pid, 0)`).
#[allow(unsafe_code)]
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name (for lock holder lines).
#[allow(unsafe_code)]
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named_and_the_lock_frees_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DestinationLock::acquire(dir.path(), "backup").expect("first");
        // Reentrant on this thread.
        let again = DestinationLock::acquire(dir.path(), "backup").expect("reentrant");
        drop(again);
        // Another thread is refused, with the holder named.
        let d = dir.path().to_path_buf();
        let err = std::thread::spawn(move || DestinationLock::acquire(&d, "prune").map(|_| ()))
            .join()
            .expect("join")
            .expect_err("refused");
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        // Another open file description (as another process would have) is refused by the
        // kernel, and reads the holder line.
        let other = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .expect("open");
        assert!(!flock(&other, true, false).expect("flock"));
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).expect("read");
        assert!(
            text.contains(&format!("pid {}", std::process::id())) && text.contains("backup"),
            "{text}"
        );
        drop(first);
        assert!(
            flock(&other, true, false).expect("flock"),
            "released on drop"
        );
    }
}
