//! An in-memory reference backend (as `object_store` has `InMemory`): the [`StorageBackend`]
//! contract in its simplest honest form, so that engine and format tests run in milliseconds
//! without a real store, and a reference any real backend's behaviour can be compared with.
//!
//! A store lives in memory with a change log; views are snapshots (a copy of the maps, as of
//! one position). A store that a restore built is written to its path as JSON by the restore
//! sink's `finish` (so a restore can build it aside and rename it into place like any other),
//! and [`MemoryStore::open`] reads it back.

use crate::{Harness, Model, Op, TestStore, Writer};
use backup_core::{
    Change, ChangeOp, Checkpoint, CollectionInfo, CollectionName, Error, Key, Record, RestoreSink,
    Result, StorageBackend, StoreFactory, StoreId, StoreKind, StoreSchema, Value, View,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Data = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A collection's (key, value) pairs in key order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Default)]
struct Inner {
    data: Data,
    log: Vec<Change>,
    position: u64,
    /// Changes at or before this position were trimmed.
    trimmed: u64,
}

/// A store held in memory, with a change log.
pub struct MemoryStore {
    id: String,
    path: PathBuf,
    inner: Mutex<Inner>,
    changed: Condvar,
}

/// A restored store on disk: per collection, its (key, value) pairs in key order (JSON objects
/// need text keys, so the pairs are arrays of byte arrays).
#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    id: String,
    data: BTreeMap<String, Pairs>,
}

impl MemoryStore {
    /// A new, empty store (its path is only used by restores and messages).
    pub fn new(path: &Path) -> Arc<Self> {
        Arc::new(MemoryStore {
            id: format!("memory-{}", uuid_like()),
            path: path.to_path_buf(),
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        })
    }

    /// Reads a store a restore wrote to `path` (a new identity: it is a restored store).
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| Error::Damaged {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        let store = MemoryStore::new(path);
        store.lock().data = disk
            .data
            .into_iter()
            .map(|(name, pairs)| (name, pairs.into_iter().collect()))
            .collect();
        Ok(store)
    }

    /// Writes the store to its path (aside, fsynced, renamed), as JSON.
    pub fn save(&self) -> Result<()> {
        self.save_with(backup_core::SyncMode::Now)
    }

    fn save_with(&self, sync: backup_core::SyncMode) -> Result<()> {
        let disk = OnDisk {
            id: self.id.clone(),
            data: self
                .lock()
                .data
                .iter()
                .map(|(name, c)| (name.clone(), c.clone().into_iter().collect()))
                .collect(),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| Error::Damaged {
            path: self.path.clone(),
            cause: e.to_string(),
        })?;
        backup_core::write_atomic(&self.path, &bytes, sync)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a collection if it does not exist.
    pub fn create_collection(&self, name: &str) {
        self.lock().data.entry(name.to_string()).or_default();
    }

    /// Commits `ops` as one transaction, logging each change.
    pub fn write(&self, ops: &[Op]) {
        let mut inner = self.lock();
        for op in ops {
            inner.position += 1;
            let position = inner.position;
            let change = match op {
                Op::Put {
                    collection,
                    key,
                    value,
                } => {
                    inner
                        .data
                        .entry(collection.clone())
                        .or_default()
                        .insert(key.clone(), value.clone());
                    Change {
                        position,
                        collection: CollectionName::new(collection),
                        key: Key(key.clone()),
                        op: ChangeOp::Put(Value::Bytes(value.clone())),
                    }
                }
                Op::Delete { collection, key } => {
                    if let Some(c) = inner.data.get_mut(collection) {
                        c.remove(key);
                    }
                    Change {
                        position,
                        collection: CollectionName::new(collection),
                        key: Key(key.clone()),
                        op: ChangeOp::Delete,
                    }
                }
            };
            inner.log.push(change);
        }
        drop(inner);
        self.changed.notify_all();
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{t:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The backend over a shared [`MemoryStore`].
pub struct MemoryBackend(pub Arc<MemoryStore>);

impl StorageBackend for MemoryBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    fn describe(&self) -> String {
        format!("memory:{}", self.0.path.display())
    }

    fn current_checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint::new(
            StoreId(self.0.id.clone()),
            self.0.lock().position,
        ))
    }

    fn view(&self) -> Result<Box<dyn View + '_>> {
        let inner = self.0.lock();
        let trimmed = inner.trimmed;
        Ok(Box::new(MemoryView {
            checkpoint: Checkpoint::new(StoreId(self.0.id.clone()), inner.position),
            data: inner.data.clone(),
            log: inner.log.clone(),
            trimmed,
        }))
    }

    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        let inner = self.0.lock();
        let (inner, _) = self
            .0
            .changed
            .wait_timeout_while(inner, timeout, |i| i.position <= after.position)
            .unwrap_or_else(|p| p.into_inner());
        Ok(inner.position > after.position)
    }

    fn trim_changes(&self, upto: &Checkpoint) -> Result<()> {
        if upto.store_id.0 != self.0.id {
            return Ok(());
        }
        let mut inner = self.0.lock();
        inner.log.retain(|c| c.position > upto.position);
        inner.trimmed = inner.trimmed.max(upto.position);
        Ok(())
    }

    fn is_empty(&self) -> Result<bool> {
        Ok(self.0.lock().data.values().all(BTreeMap::is_empty))
    }

    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        Ok(Box::new(MemorySink(self.0.clone())))
    }
}

struct MemoryView {
    checkpoint: Checkpoint,
    data: Data,
    log: Vec<Change>,
    trimmed: u64,
}

impl View for MemoryView {
    fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        Ok(self
            .data
            .keys()
            .map(|n| CollectionInfo {
                name: CollectionName::new(n),
                schema: serde_json::Value::Null,
            })
            .collect())
    }

    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        for (k, v) in self.data.get(collection.as_str()).into_iter().flatten() {
            visit(Record {
                key: Key(k.clone()),
                value: Value::Bytes(v.clone()),
            })?;
        }
        Ok(())
    }

    fn changes_since(
        &mut self,
        from: &Checkpoint,
        batch_size: usize,
        visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        if from.store_id != self.checkpoint.store_id || from.position < self.trimmed {
            return Err(Error::ChangesUnavailable {
                from: from.position,
                earliest: Some(self.trimmed),
                reason: "another store, or the log was trimmed".into(),
            });
        }
        let changes: Vec<Change> = self
            .log
            .iter()
            .filter(|c| c.position > from.position && c.position <= self.checkpoint.position)
            .cloned()
            .collect();
        for batch in changes.chunks(batch_size.max(1)) {
            visit(batch.to_vec())?;
        }
        Ok(())
    }

    fn scans_in_key_order(&self) -> bool {
        true
    }

    fn count(&mut self, collection: &CollectionName) -> Result<Option<u64>> {
        Ok(Some(
            self.data
                .get(collection.as_str())
                .map_or(0, |c| c.len() as u64),
        ))
    }
}

struct MemorySink(Arc<MemoryStore>);

impl RestoreSink for MemorySink {
    fn create_collection(&mut self, info: &CollectionInfo, _: StoreKind) -> Result<()> {
        self.0.create_collection(info.name.as_str());
        Ok(())
    }

    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        let mut inner = self.0.lock();
        let c = inner.data.entry(collection.to_string()).or_default();
        for r in records {
            let value = match r.value {
                Value::Bytes(b) => b,
                Value::Row(row) => backup_core::row_to_json_bytes(&row),
            };
            c.insert(r.key.0, value);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, _: &StoreSchema, _: StoreKind) -> Result<()> {
        self.0.save()
    }
}

/// Makes memory stores for restores (written to their path when complete).
pub struct MemoryFactory;

impl StoreFactory for MemoryFactory {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    fn holds_data(&self, path: &Path) -> Result<bool> {
        Ok(path.exists() && !MemoryBackend(MemoryStore::open(path)?).is_empty()?)
    }

    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>> {
        Ok(Box::new(MemoryBackend(MemoryStore::new(path))))
    }
}

/// A memory store under test. Closing it (dropping it) writes it to its path, so that a store
/// a test wrote is found there afterwards, as a real one would be.
pub struct MemoryTestStore {
    store: Arc<MemoryStore>,
    backend: MemoryBackend,
}

impl Drop for MemoryTestStore {
    fn drop(&mut self) {
        // A failed save shows as a missing or stale store in the test that reads it.
        let _ = self.store.save_with(backup_core::SyncMode::Later);
    }
}

impl TestStore for MemoryTestStore {
    fn backend(&self) -> &dyn StorageBackend {
        &self.backend
    }
    fn create_collection(&self, name: &str) {
        self.store.create_collection(name);
    }
    fn write(&self, ops: &[Op]) {
        self.store.write(ops);
    }
    fn writer(&self) -> Writer {
        let store = self.store.clone();
        Box::new(move |ops: &[Op]| store.write(ops))
    }
    fn decode(&self, record: &Record) -> (Vec<u8>, Vec<u8>) {
        match &record.value {
            Value::Bytes(b) => (record.key.0.clone(), b.clone()),
            Value::Row(row) => (record.key.0.clone(), backup_core::row_to_json_bytes(row)),
        }
    }
}

/// The harness of the memory backend.
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type Store = MemoryTestStore;

    fn create(&self, dir: &Path) -> MemoryTestStore {
        let store = MemoryStore::new(dir);
        MemoryTestStore {
            backend: MemoryBackend(store.clone()),
            store,
        }
    }

    fn open(&self, path: &Path) -> MemoryTestStore {
        let store = MemoryStore::open(path).expect("a restored memory store");
        MemoryTestStore {
            backend: MemoryBackend(store.clone()),
            store,
        }
    }

    fn factory(&self) -> Box<dyn StoreFactory> {
        Box::new(MemoryFactory)
    }

    fn trims_changes(&self) -> bool {
        true
    }

    fn read_plain(&self, path: &Path) -> (Model, BTreeSet<String>) {
        // The file a restore wrote, parsed as plain JSON (not through the backend).
        let disk: OnDisk = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut model = Model::new();
        for (name, pairs) in &disk.data {
            for (k, v) in pairs {
                model.insert((name.clone(), k.clone()), v.clone());
            }
        }
        (model, disk.data.into_keys().collect())
    }
}
