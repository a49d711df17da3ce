//! The process's limit on open files (`RLIMIT_NOFILE`).

/// The limits on open files: `None` for unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit, the one enforced.
    pub soft: Option<u64>,
    /// The hard limit, which the soft one may be raised to.
    pub hard: Option<u64>,
}

/// The process's limits on open files; `None` if they cannot be read.
pub fn open_files_limit() -> Option<OpenFilesLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit writes the limits into `limit`, a valid rlimit owned by this frame.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let finite = |n: libc::rlim_t| (n != libc::RLIM_INFINITY).then_some(n);
    (rc == 0).then(|| OpenFilesLimit {
        soft: finite(limit.rlim_cur),
        hard: finite(limit.rlim_max),
    })
}

/// Raises the soft limit on open files to the hard one, as servers that hold many files open
/// do: a RocksDB source's secondary instance keeps every SST file open, and the usual soft
/// limit (1024) is below the SST count of a database of some size. Best effort: an error
/// leaves the limit as it was.
///
/// It changes a setting of the whole process, so the library never calls it itself (as
/// [`crate::release_large_buffers_promptly`]); the `tidemark` command does at start.
pub fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: getrlimit and setrlimit read and write a valid rlimit owned by this frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
