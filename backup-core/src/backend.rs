//! The [`StorageBackend`] trait every store implements, and the views and sinks it hands out.

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::model::{Change, CollectionInfo, CollectionName, Record, StoreKind, StoreSchema};
use std::time::Duration;

/// A store tidemark can back up and restore into.
///
/// # Contract
///
/// The conformance suite (`conformance-tests`) is the executable form of this contract; a
/// backend is done when it passes the whole suite.
///
/// - **Checkpoints** are positions in the store's stream of committed changes. They carry the
///   store's identity, and positions only grow.
/// - **Views** ([`StorageBackend::view`]) are consistent: everything a view returns (collections,
///   scans, changes) is the store's state at exactly [`View::checkpoint`], whatever writers do
///   meanwhile.
/// - **Changes** ([`View::changes_since`]) between a checkpoint `from` and the view's checkpoint
///   are delivered in commit order, in batches of bounded size. Applying them, in order, over
///   the state at `from` gives the state at the view's checkpoint. A backend may coalesce
///   the changes of every key into its last one, with the value as of the view; each key
///   then comes once, and the keys may come in any order (the result of applying them does
///   not depend on it: SQLite hands them on in key order, the order of its row lookups). It never
///   returns a shorter stream: when the changes cannot all be given (log trimmed, WAL purged,
///   another store) it returns [`crate::Error::ChangesUnavailable`].
/// - **Capture is durable**: a change is recorded in the same transaction as the write, so no
///   change is lost across a crash or restart.
/// - **Restore** ([`StorageBackend::restore_sink`]) writes records into the store; the engine
///   only restores into an empty store.
/// - Nothing holds a whole store in memory: scans and changes stream to a callback.
pub trait StorageBackend: Send + Sync {
    /// The kind of store.
    fn kind(&self) -> StoreKind;

    /// A short description for messages, e.g. `sqlite:/var/db/app.db`.
    fn describe(&self) -> String;

    /// Makes change capture complete before a backup (e.g. SQLite: install capture on tables
    /// created since tracking was installed). Where capture had a gap, later calls to
    /// [`View::changes_since`] for positions before the gap return `ChangesUnavailable`.
    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// The current checkpoint.
    fn current_checkpoint(&self) -> Result<Checkpoint>;

    /// Opens a consistent read view as of the current checkpoint.
    fn view(&self) -> Result<Box<dyn View + '_>>;

    /// A view that reads only the store's change log, cheaper to take than
    /// [`StorageBackend::view`] (RocksDB: its WAL files and MANIFEST read directly, without
    /// opening the database), for a run that means to be incremental; `None` (the default)
    /// where there is none or it cannot be taken now. The engine uses it for the checks of
    /// [`View::changes_outside_log`] and for [`View::changes_since`] only; when the incremental
    /// cannot be taken through it, for any reason, the engine takes a [`StorageBackend::view`]
    /// and tries again from the start. So it may fail anything else (a scan, a value read).
    fn log_view(&self) -> Result<Option<Box<dyn View + '_>>> {
        Ok(None)
    }

    /// Blocks until the store has changes after `after`, or `timeout` passes. Returns whether
    /// there are changes. Used by live backups.
    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool>;

    /// Allows the backend to forget changes at or before `upto`, which a completed backup
    /// holds. Backends without a change log of their own ignore it.
    fn trim_changes(&self, upto: &Checkpoint) -> Result<()>;

    /// Whether the store holds no records (restore refuses non-empty targets).
    fn is_empty(&self) -> Result<bool>;

    /// A sink that writes restored records into this store.
    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>>;
}

/// A consistent read view of a store, as of one checkpoint.
pub trait View {
    /// The checkpoint this view shows.
    fn checkpoint(&self) -> &Checkpoint;

    /// The collections, with their schemas.
    fn collections(&mut self) -> Result<Vec<CollectionInfo>>;

    /// Store-level schema (indexes, views, triggers …), opaque to the engine.
    fn store_schema(&mut self) -> Result<StoreSchema> {
        Ok(StoreSchema::default())
    }

    /// Streams every record of `collection` to `visit` (in ascending key order where
    /// [`View::scans_in_key_order`] says so).
    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()>;

    /// Streams the changes after `from` up to this view's checkpoint, in commit order (or
    /// each key once, in any order), to `visit` in batches of at most `batch_size` changes.
    /// See the trait's contract.
    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()>;

    /// For stores without snapshots (sled): called after every collection was scanned. Moves
    /// the view to a later checkpoint such that the scans, with the changes between the old
    /// checkpoint and the new one applied over them (in order), are exactly the state at the new
    /// checkpoint; returns whether it moved (then [`View::collections`] is refreshed too).
    /// Stores whose views are snapshots keep the default.
    fn settle(&mut self) -> Result<bool> {
        Ok(false)
    }

    /// Whether [`View::scan`] yields keys in ascending byte order (needed for the diff-based
    /// incremental, which merges the scan with the previous backup's sorted key index).
    fn scans_in_key_order(&self) -> bool {
        false
    }

    /// Whether two scans of a collection through this view give the same records (it reads
    /// one snapshot throughout, and [`View::settle`] has nothing to replay). A view that does
    /// not scan in key order can then still take a diff-based incremental, in two scans: one
    /// that sorts the keys and finds what changed, one that writes it.
    fn scans_alike(&self) -> bool {
        false
    }

    /// Hands `visit` the records of `collection` under `keys` that the view's snapshot holds,
    /// in any order, and returns true; or returns false, having handed on nothing, when it
    /// cannot look these keys up (the default). A diff in two scans ([`View::scans_alike`])
    /// reads the records it found changed this way instead of scanning again; the engine
    /// checks each record against what the first scan found, and gives the diff up when one
    /// differs or is missing.
    fn lookup(
        &mut self,
        collection: &CollectionName,
        keys: &mut dyn Iterator<Item = &[u8]>,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<bool> {
        let _ = (collection, keys, visit);
        Ok(false)
    }

    /// The number of records in `collection`, where the store can count cheaply (progress
    /// totals, and the check that an incremental saw every change); `None` otherwise.
    fn count(&mut self, collection: &CollectionName) -> Result<Option<u64>> {
        let _ = collection;
        Ok(None)
    }

    /// Why `collection`'s schema differs from `old`, the schema a previous backup recorded for
    /// it, where the store can say more than that it changed (SQLite: a new schema version
    /// alone, as a `VACUUM` leaves, may have renumbered the rowids its rows are keyed by). The
    /// engine prints it as the reason the change log was not used. The default says nothing.
    fn schema_change(
        &self,
        collection: &CollectionInfo,
        old: &serde_json::Value,
    ) -> Option<String> {
        let _ = (collection, old);
        None
    }

    /// Whether the store's change capture can miss a deletion in `collection` (SQLite: a
    /// `REPLACE` that removes another row on a UNIQUE conflict fires no delete trigger). After
    /// an incremental the engine then compares [`View::count`] with the records the backup
    /// holds, and takes a full backup when they differ. The default, `true`, checks wherever
    /// the store counts; a store answers `false` where nothing can be missed, to save the
    /// count (a scan of the whole table in SQLite).
    fn deletions_may_go_unseen(&mut self, collection: &CollectionName) -> Result<bool> {
        let _ = collection;
        Ok(true)
    }

    /// What the store needs to remember, per destination, to tell at the next backup whether
    /// its change log still holds every change since (RocksDB: the SST files this view holds,
    /// since an ingested file can add keys without a WAL record or a sequence number, and the
    /// WAL batch its reading ended with, which a database put back from an older copy no
    /// longer holds; SQLite:
    /// the last entries of its log, which a database restored from an older copy and written
    /// since no longer holds). Opaque to the engine, which keeps it with the destination's
    /// state (`store_marks`) and hands it back to [`View::changes_outside_log`]; `previous` is
    /// what the destination's previous backup of this same store kept. The engine asks after
    /// the run's reading, so a store may keep what that saw. The default keeps nothing.
    fn store_marks(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>> {
        let _ = previous;
        Ok(None)
    }

    /// Whether this view's snapshot keeps the store's writers waiting while it is held (SQLite
    /// in rollback-journal mode: its shared lock refuses every commit). The engine then reads an
    /// incremental's changes into memory first, up to a bound, and lets the snapshot go
    /// ([`View::release`]) before it writes them to the destination. The default: it does not.
    fn snapshot_blocks_writers(&self) -> bool {
        false
    }

    /// Asks the view to read everything in its one snapshot, even where it would read a scan in
    /// steps and settle it ([`View::settle`]): the engine's second try after a scan in steps
    /// could not be settled ([`crate::Error::StepsUnsettled`]). The default does nothing.
    fn read_in_one_snapshot(&mut self) {}

    /// Lets the view's snapshot go early: the engine asks nothing more of this view, and a store
    /// whose snapshot blocks its writers ([`View::snapshot_blocks_writers`]) ends its read here
    /// rather than when the view is dropped. The default does nothing.
    fn release(&mut self) -> Result<()> {
        Ok(())
    }

    /// Why the changes after the previous backup may not all be in the change log, given the
    /// marks that backup kept ([`View::store_marks`]; `None` from a destination written before
    /// marks were kept, or by a run that kept none). `Some` makes the engine take a diff-based
    /// (or full) backup instead of reading the log, and print the reason. The default: the log
    /// holds every change.
    fn changes_outside_log(
        &mut self,
        previous: Option<&serde_json::Value>,
    ) -> Result<Option<String>> {
        let _ = previous;
        Ok(None)
    }
}

/// Receives restored records and writes them into a store.
///
/// The engine calls [`RestoreSink::create_collection`] for every collection before it puts
/// records into it, then [`RestoreSink::finish`] once.
pub trait RestoreSink {
    /// Creates a collection. `source` is the kind of store the backup came from: a backend
    /// replays `info.schema` only when it understands it (same kind), and otherwise uses the
    /// cross-store mapping of `docs/FORMAT.md`.
    fn create_collection(&mut self, info: &CollectionInfo, source: StoreKind) -> Result<()>;

    /// Writes a batch of records into a collection created before.
    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()>;

    /// Completes the restore (indexes, triggers, a commit), making everything durable.
    fn finish(self: Box<Self>, schema: &StoreSchema, source: StoreKind) -> Result<()>;
}
