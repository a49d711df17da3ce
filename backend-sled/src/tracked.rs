//! The tracked handle: writes that record themselves in a change log, in the same transaction.
//!
//! sled keeps no history. Every write made through [`TrackedDb`] also appends an entry to the
//! `__tidemark_log` tree, keyed by a sequence number taken from `__tidemark_meta` inside the same
//! multi-tree transaction; sled serializes such transactions, so sequence order is commit order.
//! An entry holds the tree, the key and the new value (or a tombstone).
//!
//! Writes that go around the handle (plain `sled::Tree::insert`) are invisible to the log. A
//! handle cannot know what happened while the database was closed, so opening one raises the
//! log's `floor` past every earlier position: the first backup after an open compares every
//! record (a diff-based incremental) instead of trusting the log.

use backup_core::{Error, Result};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::{IVec, Transactional, Tree};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`open_db`] waits for sled's file lock.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The page cache tidemark asks for when it opens a database to back it up. sled's default
/// is 1 GiB, which a backup reading each record once does not use: at 1M records of 1 KiB a
/// full archive measured 992 MiB RSS with the default and 188 MiB with this, and ran faster.
pub const TOOL_CACHE_BYTES: u64 = 64 << 20;

/// The page cache of a restore target. Writing pays for a small cache: at 1M records of 1 KiB
/// an archive restore took 25.0 s (313 MiB RSS) with 64 MiB, 15.6 s (604 MiB) with this, and
/// 14.1 s (1103 MiB) with sled's default 1 GiB.
pub const RESTORE_CACHE_BYTES: u64 = 256 << 20;

/// Opens the sled database at `path` with sled's default configuration, waiting up to
/// `LOCK_WAIT` (3 s) for its file lock.
///
/// sled releases the lock only when the last of its background tasks lets go of the
/// database, which can be a moment after the handle was dropped: opening the same path again
/// right away (a restore target checked, then written; a store reopened after a restore) can
/// find it still held. sled's own test builds block on the lock for that reason. A lock held
/// by another process is still an error, after the wait.
pub fn open_db(path: &Path) -> sled::Result<sled::Db> {
    open_config(sled::Config::new().path(path))
}

/// [`open_db`] with a page cache of `cache_bytes`.
pub fn open_db_with_cache(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
    open_config(sled::Config::new().path(path).cache_capacity(cache_bytes))
}

fn open_config(config: sled::Config) -> sled::Result<sled::Db> {
    retry_while_locked(|| config.open(), |r| matches!(r, Err(e) if lock_held(e)))
}

/// Calls `attempt` until `locked` says its answer is not "the lock is held", for up to
/// [`LOCK_WAIT`], 10 ms apart; returns the last answer.
fn retry_while_locked<T>(mut attempt: impl FnMut() -> T, locked: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let answer = attempt();
        if !locked(&answer) || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Takes the lock sled takes on the database at `path` (an exclusive `flock` on its `db`
/// file) without opening the database, waiting up to `LOCK_WAIT` as [`open_db_with_cache`]
/// does: held, no application opens the database, and the backup reads it unchanged.
pub fn lock_as_sled_does(path: &Path) -> Result<std::fs::File> {
    let file_path = path.join("db");
    let file = std::fs::File::open(&file_path).map_err(|e| Error::io("open", &file_path, e))?;
    let held = retry_while_locked(
        || backup_core::flock(&file, true, false),
        |r| matches!(r, Ok(false)),
    );
    match held {
        Ok(true) => Ok(file),
        Ok(false) => Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: format!(
                "the sled database is open in another process (sled allows one at a time: stop \
                 it, or back up from inside it through the library): {} is locked",
                file_path.display()
            ),
            source: None,
        }),
        Err(e) => Err(Error::io("lock", &file_path, e)),
    }
}

/// The error for a database at `path` that sled would not open.
pub fn open_error(path: &Path, e: sled::Error) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        cause: if lock_held(&e) {
            format!(
                "the sled database is open in another process (sled allows one at a time: \
                 stop it, or back up from inside it through the library): {e}"
            )
        } else {
            format!("cannot open as a sled database: {e}")
        },
        source: None,
    }
}

/// Whether sled refused to open because another handle holds the database's file lock (sled
/// reports it only as an I/O error with this text).
fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// The change-log tree.
pub const LOG_TREE: &str = "__tidemark_log";
/// The meta tree (identity, last sequence, floor).
pub const META_TREE: &str = "__tidemark_meta";
/// sled's default tree.
pub const DEFAULT_TREE: &str = "__sled__default";
/// The file [`TrackedDb`] puts in its database's directory (sled leaves other names alone): a
/// backup of a database that has it opens the database in place, as it opens any tracked one,
/// without first reading a copy to find the tracking trees (for 1 GB of records the copy, its
/// open and its removal took 3.5 s).
pub const TRACKED_MARKER: &str = "tidemark-tracked";

const NEXT: &[u8] = b"last_seq";
const FLOOR: &[u8] = b"floor";
const STORE_ID: &[u8] = b"store_id";

/// Whether a tree is the backend's own.
pub fn is_internal(name: &[u8]) -> bool {
    name.starts_with(b"__tidemark_")
}

/// A sled database whose writes are recorded in a change log.
#[derive(Debug, Clone)]
pub struct TrackedDb {
    db: sled::Db,
    log: Tree,
    meta: Tree,
    path: PathBuf,
}

/// One logged change as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// The tree written.
    pub tree: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` for a removal.
    pub value: Option<Vec<u8>>,
}

fn store_err(path: &Path) -> impl Fn(sled::Error) -> Error + '_ {
    move |e| Error::store_cause(format!("sled:{}", path.display()), "", e)
}

impl TrackedDb {
    /// Opens (or creates) a sled database with tracking. Raises the floor: changes from before
    /// this open cannot be proven complete.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, open_db(path))
    }

    /// [`TrackedDb::open`] with a page cache of `cache_bytes` instead of sled's default 1 GiB.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self> {
        Self::open_with(path, open_db_with_cache(path, cache_bytes))
    }

    fn open_with(path: &Path, opened: sled::Result<sled::Db>) -> Result<Self> {
        let db = opened.map_err(|e| open_error(path, e))?;
        Self::from_db(db, path)
    }

    /// Tracks an already open database that lives at `path` (same floor rule as
    /// [`TrackedDb::open`]).
    pub fn from_db(db: sled::Db, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let err = store_err(&path);
        let log = db.open_tree(LOG_TREE).map_err(&err)?;
        let meta = db.open_tree(META_TREE).map_err(&err)?;
        let tracked = TrackedDb {
            db,
            log,
            meta,
            path: path.clone(),
        };
        let id = uuid::Uuid::new_v4().to_string();
        (&tracked.log, &tracked.meta)
            .transaction(|(_, meta)| {
                if meta.get(STORE_ID)?.is_none() {
                    meta.insert(STORE_ID, id.as_bytes())?;
                }
                let next = read_u64(meta.get(NEXT)?) + 1;
                meta.insert(NEXT, &next.to_be_bytes())?;
                meta.insert(FLOOR, &next.to_be_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| tx_err(&path, e))?;
        tracked.db.flush().map_err(&err)?;
        let marker = path.join(TRACKED_MARKER);
        if !marker.is_file() {
            // Best effort: without it a backup finds the tracking by reading a copy first.
            if let Err(e) = backup_core::write_atomic(
                &marker,
                b"This sled database is written through tidemark's TrackedDb (its change log is \
                  in the __tidemark_ trees): a backup opens it in place.\n",
                backup_core::SyncMode::Now,
            ) {
                tracing::warn!("{e}; a backup of this database reads a copy of it first");
            }
        }
        Ok(tracked)
    }

    /// The underlying database, for reads. Writes made through it are not tracked (the next
    /// backup then compares every record).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Opens a tree for reading (writes go through this handle's methods).
    pub fn tree(&self, name: &str) -> Result<Tree> {
        self.db.open_tree(name).map_err(store_err(&self.path))
    }

    /// Inserts a value, logged. Returns the previous value.
    pub fn insert(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Option<IVec>> {
        self.transaction(&[tree], |tx| tx.insert(tree, key, value))
    }

    /// Removes a key, logged. Returns the previous value.
    pub fn remove(&self, tree: &str, key: &[u8]) -> Result<Option<IVec>> {
        self.transaction(&[tree], |tx| tx.remove(tree, key))
    }

    /// Applies several writes to one tree atomically (sled's `Batch`), logged.
    pub fn apply_batch(&self, tree: &str, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        self.transaction(&[tree], |tx| {
            for (k, v) in ops {
                match v {
                    Some(v) => tx.insert(tree, k, v)?,
                    None => tx.remove(tree, k)?,
                };
            }
            Ok(())
        })
    }

    /// Runs `f` as one sled transaction over `trees` (and the log), retrying on conflict like
    /// sled does. Every write made through the [`TrackedTx`] is logged in the same transaction.
    pub fn transaction<A>(
        &self,
        trees: &[&str],
        f: impl Fn(&TrackedTx<'_>) -> std::result::Result<A, UnabortableTransactionError>,
    ) -> Result<A> {
        let path = &self.path;
        let err = store_err(path);
        let mut names: Vec<&str> = trees.to_vec();
        names.sort_unstable();
        names.dedup();
        if let Some(bad) = names.iter().find(|n| is_internal(n.as_bytes())) {
            return Err(Error::store(
                format!("sled:{}", path.display()),
                format!("tree `{bad}` is tidemark's own"),
            ));
        }
        let mut handles: Vec<Tree> = names
            .iter()
            .map(|n| self.db.open_tree(n))
            .collect::<sled::Result<_>>()
            .map_err(&err)?;
        handles.push(self.log.clone());
        handles.push(self.meta.clone());
        let refs: Vec<&Tree> = handles.iter().collect();
        refs.as_slice()
            .transaction(|txs: &Vec<TransactionalTree>| {
                let n = names.len();
                let tx = TrackedTx {
                    names: &names,
                    trees: &txs[..n],
                    log: &txs[n],
                    meta: &txs[n + 1],
                };
                f(&tx).map_err(ConflictableTransactionError::from)
            })
            .map_err(|e: TransactionError<()>| tx_err(path, e))
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(store_err(&self.path))
    }

    /// The store's identity.
    pub fn store_id(&self) -> Result<String> {
        let id = self.meta.get(STORE_ID).map_err(store_err(&self.path))?;
        Ok(id
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default())
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> Result<u64> {
        self.meta
            .get(NEXT)
            .map(read_u64)
            .map_err(store_err(&self.path))
    }

    /// The position after which the log is complete.
    pub fn floor(&self) -> Result<u64> {
        self.meta
            .get(FLOOR)
            .map(read_u64)
            .map_err(store_err(&self.path))
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log tree.
    pub fn log(&self) -> &Tree {
        &self.log
    }

    /// Forgets log entries at or before `upto` and raises the floor to it.
    pub fn trim(&self, upto: u64) -> Result<()> {
        let path = &self.path;
        let err = store_err(path);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.log.range(..=upto.to_be_bytes()) {
            let (k, _) = item.map_err(&err)?;
            batch.remove(k);
            n += 1;
            if n % 10_000 == 0 {
                self.log
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(&err)?;
            }
        }
        self.log.apply_batch(batch).map_err(&err)?;
        self.meta
            .fetch_and_update(FLOOR, |old| {
                Some(
                    read_u64(old.map(IVec::from))
                        .max(upto)
                        .to_be_bytes()
                        .to_vec(),
                )
            })
            .map_err(&err)?;
        self.flush()
    }
}

/// A transaction through a [`TrackedDb`]: reads and logged writes.
pub struct TrackedTx<'a> {
    names: &'a [&'a str],
    trees: &'a [TransactionalTree],
    log: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

impl TrackedTx<'_> {
    fn tree(
        &self,
        name: &str,
    ) -> std::result::Result<&TransactionalTree, UnabortableTransactionError> {
        let i = self.names.iter().position(|n| *n == name).ok_or_else(|| {
            UnabortableTransactionError::Storage(sled::Error::Unsupported(format!(
                "tree `{name}` is not part of this transaction"
            )))
        })?;
        Ok(&self.trees[i])
    }

    fn log_change(
        &self,
        tree: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> std::result::Result<(), UnabortableTransactionError> {
        let seq = read_u64(self.meta.get(NEXT)?) + 1;
        self.meta.insert(NEXT, &seq.to_be_bytes())?;
        self.log
            .insert(&seq.to_be_bytes(), encode_entry(tree, key, value))?;
        Ok(())
    }

    /// Reads a key.
    pub fn get(
        &self,
        tree: &str,
        key: &[u8],
    ) -> std::result::Result<Option<IVec>, UnabortableTransactionError> {
        self.tree(tree)?.get(key)
    }

    /// Inserts a value (logged).
    pub fn insert(
        &self,
        tree: &str,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<Option<IVec>, UnabortableTransactionError> {
        let old = self.tree(tree)?.insert(key, value)?;
        self.log_change(tree, key, Some(value))?;
        Ok(old)
    }

    /// Removes a key (logged).
    pub fn remove(
        &self,
        tree: &str,
        key: &[u8],
    ) -> std::result::Result<Option<IVec>, UnabortableTransactionError> {
        let old = self.tree(tree)?.remove(key)?;
        self.log_change(tree, key, None)?;
        Ok(old)
    }
}

/// Log entry layout: `op(1: put, 0: delete) | u32 BE tree len | tree | u32 BE key len | key |
/// value (rest, puts only)`.
pub fn encode_entry(tree: &str, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + tree.len() + key.len() + value.map_or(0, <[u8]>::len));
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&(tree.len() as u32).to_be_bytes());
    out.extend_from_slice(tree.as_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    out
}

/// Decodes a log entry made by [`encode_entry`].
pub fn decode_entry(bytes: &[u8]) -> Option<LogEntry> {
    let (&op, rest) = bytes.split_first()?;
    let (tree, rest) = take_prefixed(rest)?;
    let (key, rest) = take_prefixed(rest)?;
    Some(LogEntry {
        tree: String::from_utf8(tree.to_vec()).ok()?,
        key: key.to_vec(),
        value: match op {
            1 => Some(rest.to_vec()),
            0 if rest.is_empty() => None,
            _ => return None,
        },
    })
}

fn take_prefixed(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(4..4 + len)?;
    Some((body, &b[4 + len..]))
}

fn read_u64(v: Option<IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

fn tx_err<E: std::fmt::Debug>(path: &Path, e: TransactionError<E>) -> Error {
    Error::store(
        format!("sled:{}", path.display()),
        format!("transaction: {e:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_garbage_is_refused() {
        let e = encode_entry("t", b"k\x00", Some(b"v"));
        assert_eq!(
            decode_entry(&e),
            Some(LogEntry {
                tree: "t".into(),
                key: b"k\x00".to_vec(),
                value: Some(b"v".to_vec())
            })
        );
        let d = encode_entry("t", b"", None);
        assert_eq!(decode_entry(&d).and_then(|e| e.value), None);
        for cut in 0..e.len() {
            let _ = decode_entry(&e[..cut]); // never panics
        }
        assert_eq!(
            decode_entry(&[7, 0, 0, 0, 1, b't', 0, 0, 0, 0]),
            None,
            "unknown op"
        );
    }
}
