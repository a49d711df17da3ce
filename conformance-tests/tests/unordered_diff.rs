//! The engine's diff-based incremental in two scans, for a view that does not scan in key order
//! but scans alike twice (as SQLite's does), through the in-memory reference store behind a
//! view that hands records out in reverse key order and has no usable change log: the diff
//! writes exactly what changed and restores equal, whether it reads the changed records in a
//! second scan or looks them up (`View::lookup`, as SQLite's view does); a second reading that
//! differs from the first (another value, a record missing, one record twice) gives the diff
//! up, and a full backup is taken instead, never a half-recorded run.
#![allow(clippy::unwrap_used, missing_docs)]

use backup_core::{
    BackupMode, BackupOptions, BackupSummary, Change, Checkpoint, CollectionInfo, CollectionName,
    Error, Method, Record, RestoreOptions, RestorePoint, RestoreSink, Result, StorageBackend,
    StoreKind, Value, View,
};
use conformance_tests::memory::{MemoryBackend, MemoryFactory, MemoryStore};
use conformance_tests::Op;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How a view looks records up ([`View::lookup`]).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Lookups {
    /// It cannot: the engine scans a second time.
    None,
    /// It gives each record asked for that it holds.
    Honest,
    /// It gives record `k3` another value.
    Tamper,
    /// It leaves the first record asked for out.
    Drop,
    /// Asked for two or more, it gives the first record twice and leaves the second out.
    Twice,
}

/// A memory store whose views scan in reverse key order and cannot read the change log; with
/// `tamper`, a view's second scan gives record `k6` another value; `lookups` says how its
/// views look records up.
struct Unordered {
    inner: MemoryBackend,
    tamper: AtomicBool,
    lookups: Lookups,
    /// Scans its views made.
    scans: Arc<AtomicUsize>,
}

struct UnorderedView<'a> {
    inner: Box<dyn View + 'a>,
    tamper: bool,
    scans: usize,
    lookups: Lookups,
    counted: Arc<AtomicUsize>,
}

impl StorageBackend for Unordered {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn current_checkpoint(&self) -> Result<Checkpoint> {
        self.inner.current_checkpoint()
    }
    fn view(&self) -> Result<Box<dyn View + '_>> {
        Ok(Box::new(UnorderedView {
            inner: self.inner.view()?,
            tamper: self.tamper.load(Ordering::SeqCst),
            scans: 0,
            lookups: self.lookups,
            counted: self.scans.clone(),
        }))
    }
    fn wait_for_changes(&self, after: &Checkpoint, timeout: Duration) -> Result<bool> {
        self.inner.wait_for_changes(after, timeout)
    }
    fn trim_changes(&self, upto: &Checkpoint) -> Result<()> {
        self.inner.trim_changes(upto)
    }
    fn is_empty(&self) -> Result<bool> {
        self.inner.is_empty()
    }
    fn restore_sink(&self) -> Result<Box<dyn RestoreSink + '_>> {
        self.inner.restore_sink()
    }
}

impl View for UnorderedView<'_> {
    fn checkpoint(&self) -> &Checkpoint {
        self.inner.checkpoint()
    }
    fn collections(&mut self) -> Result<Vec<CollectionInfo>> {
        self.inner.collections()
    }
    fn scan(
        &mut self,
        collection: &CollectionName,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<()> {
        let mut records = Vec::new();
        self.inner.scan(collection, &mut |r| {
            records.push(r);
            Ok(())
        })?;
        self.scans += 1;
        self.counted.fetch_add(1, Ordering::SeqCst);
        records.reverse();
        if self.tamper && self.scans == 2 {
            if let Some(r) = records.iter_mut().find(|r| r.key.0 == b"k6") {
                r.value = Value::Bytes(b"moved between the scans".to_vec());
            }
        }
        for r in records {
            visit(r)?;
        }
        Ok(())
    }
    fn changes_since(
        &mut self,
        from: &Checkpoint,
        _batch_size: usize,
        _visit: &mut dyn FnMut(Vec<Change>) -> Result<()>,
    ) -> Result<()> {
        Err(Error::ChangesUnavailable {
            from: from.position,
            earliest: None,
            reason: "this store keeps no change log".into(),
        })
    }
    fn scans_alike(&self) -> bool {
        true
    }
    fn lookup(
        &mut self,
        collection: &CollectionName,
        keys: &mut dyn Iterator<Item = &[u8]>,
        visit: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<bool> {
        if self.lookups == Lookups::None {
            return Ok(false);
        }
        let mut held = BTreeMap::new();
        self.inner.scan(collection, &mut |r| {
            held.insert(r.key.0.clone(), r);
            Ok(())
        })?;
        let asked: Vec<Vec<u8>> = keys.map(<[u8]>::to_vec).collect();
        for (i, key) in asked.iter().enumerate() {
            let Some(mut r) = held.get(key).cloned() else {
                continue;
            };
            // Twice where two or more are asked for: the count of records stays right.
            let twice = self.lookups == Lookups::Twice && asked.len() > 1;
            match (self.lookups, i) {
                (Lookups::Drop, 0) => continue,
                (Lookups::Twice, 1) if twice => continue,
                (Lookups::Twice, 0) if twice => visit(r.clone())?,
                (Lookups::Tamper, _) if key == b"k3" => {
                    r.value = Value::Bytes(b"moved between the readings".to_vec())
                }
                _ => {}
            }
            visit(r)?;
        }
        Ok(true)
    }
}

fn put(collection: &str, key: &str, value: &str) -> Op {
    Op::Put {
        collection: collection.into(),
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(collection: &str, key: &str) -> Op {
    Op::Delete {
        collection: collection.into(),
        key: key.as_bytes().to_vec(),
    }
}

/// Each collection's (key, value) pairs.
type Content = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every collection's (key, value) pairs, as a memory store's view scans them.
fn content(store: Arc<MemoryStore>) -> Content {
    let backend = MemoryBackend(store);
    let mut view = backend.view().unwrap();
    let mut out = BTreeMap::new();
    for c in view.collections().unwrap() {
        let mut rows = Vec::new();
        view.scan(&c.name, &mut |r| {
            if let Value::Bytes(b) = r.value {
                rows.push((r.key.0, b));
            }
            Ok(())
        })
        .unwrap();
        out.insert(c.name.to_string(), rows);
    }
    out
}

/// A backup of `backend` into the archive chain `chain` (full or diff, as the engine decides):
/// its summary and the notices it gave.
fn backup_into(backend: &Unordered, chain: &Path) -> (BackupSummary, Vec<String>) {
    let mut notices = Vec::new();
    let summary = backup_core::backup_archive(
        backend,
        chain,
        &BackupOptions {
            mode: BackupMode::Auto,
            ..BackupOptions::default()
        },
        &backup_core::ArchiveOptions::default(),
        &mut |e| {
            if let backup_core::Event::Notice(n) = e {
                notices.push(n);
            }
        },
    )
    .unwrap()
    .backup;
    (summary, notices)
}

/// The chain `chain` restored (its latest point) into a new memory store at `target`: its
/// content.
fn restore_into(chain: &Path, target: &Path) -> Content {
    backup_core::restore_archives_to_path(
        chain,
        &RestorePoint::Latest,
        &MemoryFactory,
        target,
        &RestoreOptions::default(),
        &backup_core::ArchiveOptions::default(),
    )
    .unwrap();
    content(MemoryStore::open(target).unwrap())
}

#[test]
fn a_diff_in_two_scans_writes_what_changed_and_gives_up_when_the_scans_differ() {
    diff_round_trip(Lookups::None);
}

#[test]
fn a_diff_that_looks_changed_records_up_writes_what_changed_and_gives_up_when_they_differ() {
    for lookups in [
        Lookups::Honest,
        Lookups::Tamper,
        Lookups::Drop,
        Lookups::Twice,
    ] {
        diff_round_trip(lookups);
    }
}

/// A full backup, then a diff of six changes that must write and delete exactly those and
/// restore equal, reading the changed records in a second scan (`Lookups::None`) or by looking
/// them up; then a diff whose second reading differs from the first, which must be given up
/// for a full backup.
fn diff_round_trip(lookups: Lookups) {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new(&dir.path().join("src"));
    store.create_collection("a");
    store.create_collection("b");
    let mut ops = Vec::new();
    for i in 0..300 {
        ops.push(put(
            if i % 3 == 0 { "a" } else { "b" },
            &format!("k{i}"),
            "v",
        ));
    }
    store.write(&ops);
    let backend = Unordered {
        inner: MemoryBackend(store.clone()),
        tamper: AtomicBool::new(false),
        lookups,
        scans: Arc::default(),
    };
    let chain = dir.path().join("chain");
    let backup = || backup_into(&backend, &chain);
    let restored = |name: &str| restore_into(&chain, &dir.path().join(name));
    let (first, _) = backup();
    assert_eq!(first.method, Method::Full);

    // Three changed, one added, two deleted.
    store.write(&[
        put("a", "k3", "changed"),
        put("b", "k10", "changed"),
        put("b", "k299", "changed"),
        put("b", "new", "added"),
        delete("a", "k0"),
        delete("b", "k1"),
    ]);
    backend.scans.store(0, Ordering::SeqCst);
    let (second, notices) = backup();
    if matches!(lookups, Lookups::None | Lookups::Honest) {
        assert_eq!(second.method, Method::Diff, "{lookups:?}: {second:?}");
        assert_eq!(
            (second.records_written, second.records_deleted),
            (4, 2),
            "{lookups:?}: {second:?}"
        );
        // Both collections changed: each is read a second time, unless its records are looked up.
        let scans = if lookups == Lookups::None { 4 } else { 2 };
        assert_eq!(backend.scans.load(Ordering::SeqCst), scans, "{lookups:?}");
    } else {
        // A looked-up record that is not the first scan's, or one missing or given twice.
        assert_eq!(second.method, Method::Full, "{lookups:?}: {second:?}");
        assert!(
            notices
                .iter()
                .any(|n| n.contains("read differently in the diff's two scans")),
            "{lookups:?}: {notices:?}"
        );
    }
    assert_eq!(restored("r1"), content(store.clone()), "{lookups:?}");
    let report = backup_core::verify_archives(&chain).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    if lookups != Lookups::None {
        return;
    }

    // A second scan that differs from the first: the diff is given up for a full backup.
    store.write(&[put("a", "k6", "changed again")]);
    backend.tamper.store(true, Ordering::SeqCst);
    let (third, notices) = backup();
    assert_eq!(third.method, Method::Full, "{third:?}");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("read differently in the diff's two scans")),
        "{notices:?}"
    );
    let report = backup_core::verify_archives(&chain).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(restored("r2"), content(store.clone()));
}

/// A change larger than the diff keeps in memory between its two readings (64 MiB of changed
/// keys, at 64 bytes and the key's length each: about 950,000 keys of eight bytes) is taken as
/// a full backup with the reason given, and the chain restores equal to the store.
#[test]
fn a_change_larger_than_the_diff_keeps_in_memory_is_taken_as_a_full_backup() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new(&dir.path().join("src"));
    store.create_collection("big");
    let n = 1_000_000;
    let ops: Vec<Op> = (0..n)
        .map(|i| put("big", &format!("{i:08}"), "v"))
        .collect();
    store.write(&ops);
    let backend = Unordered {
        inner: MemoryBackend(store.clone()),
        tamper: AtomicBool::new(false),
        lookups: Lookups::Honest,
        scans: Arc::default(),
    };
    let chain = dir.path().join("chain");
    let backup = || backup_into(&backend, &chain);
    assert_eq!(backup().0.method, Method::Full);
    // Every record changed.
    let ops: Vec<Op> = (0..n)
        .map(|i| put("big", &format!("{i:08}"), "w"))
        .collect();
    store.write(&ops);
    let (second, notices) = backup();
    assert_eq!(second.method, Method::Full, "{second:?}");
    assert_eq!(second.records_written, n as u64, "{second:?}");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("changed than a diff keeps in memory")),
        "{notices:?}"
    );
    assert_eq!(
        restore_into(&chain, &dir.path().join("restored")),
        content(store.clone())
    );
}
