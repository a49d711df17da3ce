//! Errors of the backup engine and of the backends it drives.

use std::path::PathBuf;

/// Everything that can go wrong in a backup, restore or verify, and in a backend.
///
/// Every variant names what it concerns (a path, a collection, a key) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "write", "rename" …).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store cannot give the changes after a checkpoint any more (log trimmed, WAL purged,
    /// a different or restored store). The engine answers with a full backup.
    #[error("changes after position {from} are no longer available{}: {reason}",
            earliest.map(|e| format!(" (earliest available: {e})")).unwrap_or_default())]
    ChangesUnavailable {
        /// The position the changes were asked from.
        from: u64,
        /// The earliest position changes can still be given from, if any.
        earliest: Option<u64>,
        /// Why.
        reason: String,
    },
    /// The store reported an error.
    #[error("{}", store_text(store, message, source.as_deref()))]
    Store {
        /// The store (kind and path) concerned.
        store: String,
        /// What failed (and why, when there is no `source`).
        message: String,
        /// The store's own error, when one caused it (RocksDB's, SQLite's, sled's, an object
        /// store's): its text follows the message.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A path or URL given by the user is not usable.
    #[error("{}", store_text(&path.display().to_string(), cause, source.as_deref()))]
    BadInput {
        /// The path concerned.
        path: PathBuf,
        /// Why it cannot be used (and why, when there is no `source`).
        cause: String,
        /// The error that made it unusable, when one did (a store's, a URL parser's): its
        /// text follows the cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A backup's manifest is missing, unreadable or damaged.
    #[error("manifest {path}: {cause}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        cause: String,
    },
    /// A document or archive entry is damaged or does not match its checksum.
    #[error("{path}: {cause}")]
    Damaged {
        /// The file (and entry) concerned.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
    /// A restore target already holds data and `force` was not given.
    #[error("restore target {path} is not empty (use --force to replace it)")]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// A restore target is open in another process.
    #[error("restore target {path} is open in another process ({holder}): stop it first, so that its writes are not lost to the replaced store")]
    TargetInUse {
        /// The target.
        path: PathBuf,
        /// Which process holds it.
        holder: String,
    },
    /// Another run holds the destination's lock (one writer per destination).
    #[error(
        "{path} is in use by another tidemark run ({holder}); wait for it to finish, or stop it"
    )]
    Locked {
        /// The destination.
        path: PathBuf,
        /// Who holds it: pid, host, start time, command.
        holder: String,
    },
    /// An encrypted backup's key could not be made or opened: no key given, a wrong
    /// passphrase or identity, a damaged key file, or an archive sealed with another key.
    #[error("{path}: {cause}")]
    Key {
        /// The key file or archive concerned.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
    /// A backup written by a newer tidemark (its manifest checks out, but names a format or
    /// version this one does not read): not damage, and nothing of it is read as an older
    /// format or written after it.
    #[error(
        "{path}: {cause}: written by a newer tidemark? (this one reads versions up to {reads})"
    )]
    NewerFormat {
        /// The manifest (a local archive's entry, an object store's seal, a folder's).
        path: PathBuf,
        /// What in it this tidemark does not know.
        cause: String,
        /// The newest version of that format (archive or folder) this tidemark reads.
        reads: u32,
    },
    /// A backup was stopped on request before it finished.
    #[error("stopped before the backup finished")]
    Stopped,
    /// A scan read in steps (letting the store's writers in between) could not be set right
    /// by the store's change log ([`crate::View::settle`]): the engine reads the store again
    /// in one snapshot ([`crate::View::read_in_one_snapshot`]).
    #[error("{store}: {reason}")]
    StepsUnsettled {
        /// The store (kind and path) concerned.
        store: String,
        /// Why (the schema changed, the log was trimmed meanwhile).
        reason: String,
    },
}

impl Error {
    /// Builds an [`Error::Io`] (use with `map_err(|e| Error::io("write", path, e))`).
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Store`] that no other error caused.
    pub fn store(store: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Store {
            store: store.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Builds an [`Error::BadInput`] whose path could not be used for `why` ("cannot open as
    /// a SQLite database"), caused by `cause`: shown as `PATH: WHY: CAUSE`, the cause kept as
    /// the error's source.
    pub fn bad_input_cause(
        path: impl Into<PathBuf>,
        why: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::BadInput {
            path: path.into(),
            cause: why.into(),
            source: Some(Box::new(cause)),
        }
    }

    /// Builds an [`Error::Store`] caused by the store's error `cause` while doing `what`
    /// ("reading the change log"): shown as `STORE: WHAT: CAUSE`, the cause kept as the
    /// error's source.
    pub fn store_cause(
        store: impl Into<String>,
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Store {
            store: store.into(),
            message: what.into(),
            source: Some(Box::new(cause)),
        }
    }
}

/// [`Error::Store`]'s and [`Error::BadInput`]'s text: the store or path, what failed, and the
/// error that caused it, each when there.
fn store_text(
    store: &str,
    message: &str,
    source: Option<&(dyn std::error::Error + Send + Sync)>,
) -> String {
    let mut text = store.to_string();
    if !message.is_empty() {
        text = format!("{text}: {message}");
    }
    if let Some(source) = source {
        text = format!("{text}: {source}");
    }
    text
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::Error;
    use std::error::Error as _;

    #[test]
    fn a_store_error_keeps_the_stores_error_as_its_source() {
        let e = Error::store_cause(
            "sqlite:a.db",
            "reading the change log",
            std::io::Error::other("disk I/O error"),
        );
        assert_eq!(
            e.to_string(),
            "sqlite:a.db: reading the change log: disk I/O error"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk I/O error")
        );
        let bare = Error::store_cause("sled:db", "", std::io::Error::other("corrupted"));
        assert_eq!(bare.to_string(), "sled:db: corrupted");
        let plain = Error::store("rocksdb:db", "column family `x` was not opened");
        assert_eq!(
            plain.to_string(),
            "rocksdb:db: column family `x` was not opened"
        );
        assert!(plain.source().is_none());
    }

    #[test]
    fn bad_input_keeps_the_error_that_made_the_path_unusable_as_its_source() {
        let e = Error::bad_input_cause(
            "/srv/app.db",
            "cannot open as a SQLite database",
            std::io::Error::other("file is not a database"),
        );
        assert_eq!(
            e.to_string(),
            "/srv/app.db: cannot open as a SQLite database: file is not a database"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("file is not a database")
        );
        let plain = Error::BadInput {
            path: "/srv/x".into(),
            cause: "is a directory".into(),
            source: None,
        };
        assert_eq!(plain.to_string(), "/srv/x: is a directory");
        assert!(plain.source().is_none());
    }
}
