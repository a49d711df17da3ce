//! # conformance-tests
//!
//! The executable form of the [`StorageBackend`] contract: plain public functions, each taking a
//! [`Harness`] that makes fresh stores of one kind. Every backend crate runs all of them with
//! [`conformance_suite!`]; a backend is done when it passes the whole suite unchanged.
//!
//! ```text
//! conformance_tests::conformance_suite!(my_backend_tests, MyHarness);
//! ```
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

pub mod chain_store;
pub mod memory;
pub mod s3;

use backup_core::{
    backup_folder, verify_folder, BackupMode, BackupOptions, Change, ChangeOp, Checkpoint, Error,
    Record, RestoreOptions, RunKind, StorageBackend, StoreFactory, StoreId,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One write in a test transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Set `key` to `value` in `collection`.
    Put {
        /// Collection.
        collection: String,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `collection`.
    Delete {
        /// Collection.
        collection: String,
        /// Key bytes.
        key: Vec<u8>,
    },
}

/// Writes transactions into a store, from any thread.
pub type Writer = Box<dyn FnMut(&[Op]) + Send>;

/// A store under test, with the store-specific means to write into it the way an application
/// would.
pub trait TestStore: Send + Sync {
    /// The backend under test.
    fn backend(&self) -> &dyn StorageBackend;
    /// Creates a collection, if it does not exist.
    fn create_collection(&self, name: &str);
    /// Commits `ops` as one transaction.
    fn write(&self, ops: &[Op]);
    /// A writer for another thread (its own connection or handle).
    fn writer(&self) -> Writer;
    /// The (key, value) bytes a record read back from this store stands for.
    fn decode(&self, record: &Record) -> (Vec<u8>, Vec<u8>);
}

/// Makes stores of one kind.
pub trait Harness: Sync {
    /// The store type.
    type Store: TestStore;
    /// Creates a new, empty store under `dir`, with change capture on.
    fn create(&self, dir: &Path) -> Self::Store;
    /// Opens a store at a path a restore made.
    fn open(&self, path: &Path) -> Self::Store;
    /// Makes restore targets of this kind.
    fn factory(&self) -> Box<dyn StoreFactory>;
    /// Whether completed backups trim the store's change log (so older checkpoints become
    /// unavailable).
    fn trims_changes(&self) -> bool;
    /// Reads the whole store at `path` with the store's own library (rusqlite, rocksdb, sled:
    /// no tidemark code), as the collections that exist and every key and value. Restores are
    /// checked this way, so that a bug shared by tidemark's writer and reader cannot hide.
    fn read_plain(&self, path: &Path) -> (Model, BTreeSet<String>);
}

/// The expected content of a store: (collection, key) → value.
pub type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// Applies ops to a model.
pub fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put {
                collection,
                key,
                value,
            } => {
                model.insert((collection.clone(), key.clone()), value.clone());
            }
            Op::Delete { collection, key } => {
                model.remove(&(collection.clone(), key.clone()));
            }
        }
    }
}

/// Reads a whole store through a view, as a model (collections that exist but are empty are
/// returned separately).
pub fn read_all(store: &dyn TestStore) -> (Model, BTreeSet<String>) {
    let backend = store.backend();
    let mut view = backend.view().unwrap();
    let mut model = Model::new();
    let mut names = BTreeSet::new();
    for c in view.collections().unwrap() {
        names.insert(c.name.to_string());
        view.scan(&c.name, &mut |r| {
            let (k, v) = store.decode(&r);
            assert!(
                model.insert((c.name.to_string(), k), v).is_none(),
                "scan returned a key twice"
            );
            Ok(())
        })
        .unwrap();
    }
    (model, names)
}

/// Reads a restored store back with the store's own library ([`Harness::read_plain`]), after
/// checking that tidemark's backend reads the same from it.
pub fn read_restored<H: Harness>(h: &H, path: &Path) -> (Model, BTreeSet<String>) {
    let via_backend = read_all(&h.open(path));
    let plain = h.read_plain(path);
    assert_eq!(
        plain.0,
        via_backend.0,
        "the store's own API and tidemark's backend read different records from {}",
        path.display()
    );
    assert_eq!(
        plain.1,
        via_backend.1,
        "the store's own API and tidemark's backend see different collections in {}",
        path.display()
    );
    plain
}

fn put(c: &str, k: &[u8], v: &[u8]) -> Op {
    Op::Put {
        collection: c.into(),
        key: k.to_vec(),
        value: v.to_vec(),
    }
}

fn del(c: &str, k: &[u8]) -> Op {
    Op::Delete {
        collection: c.into(),
        key: k.to_vec(),
    }
}

/// A scratch directory with a store and a backup folder.
pub struct Scene<H: Harness> {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The store.
    pub store: H::Store,
    /// The model of what the store holds.
    pub model: Model,
}

impl<H: Harness> Scene<H> {
    /// A new scene with a fresh store.
    pub fn new(h: &H) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = h.create(&dir.path().join("store"));
        Scene {
            dir,
            store,
            model: Model::new(),
        }
    }

    /// Writes a transaction into store and model.
    pub fn write(&mut self, ops: &[Op]) {
        for op in ops {
            let c = match op {
                Op::Put { collection, .. } | Op::Delete { collection, .. } => collection,
            };
            self.store.create_collection(c);
        }
        self.store.write(ops);
        apply(&mut self.model, ops);
    }

    /// The backup folder.
    pub fn backup_dir(&self) -> PathBuf {
        self.dir.path().join("backup")
    }

    /// Runs a backup into the scene's folder.
    pub fn backup(&self, mode: BackupMode) -> backup_core::BackupSummary {
        let options = BackupOptions {
            mode,
            batch_size: 7,
            ..BackupOptions::default()
        };
        backup_folder(
            self.store.backend(),
            &self.backup_dir(),
            &options,
            &mut |_| {},
        )
        .unwrap()
    }

    /// Restores the folder into a new store and returns what it holds.
    pub fn restore(&self, h: &H, name: &str) -> (Model, BTreeSet<String>) {
        let report = verify_folder(&self.backup_dir()).unwrap();
        assert!(report.is_ok(), "verify found {:?}", report.problems);
        let target = self.dir.path().join(name);
        let factory = h.factory();
        backup_core::restore_folder_to_path(
            &self.backup_dir(),
            factory.as_ref(),
            &target,
            &RestoreOptions::default(),
        )
        .unwrap();
        read_restored(h, &target)
    }

    /// Asserts that a restore of the backup holds exactly the model.
    pub fn assert_restores_to_model(&self, h: &H, name: &str) {
        let (restored, _) = self.restore(h, name);
        assert_models_equal(&restored, &self.model);
    }
}

/// Compares two models, reporting the first difference readably.
pub fn assert_models_equal(got: &Model, want: &Model) {
    if got == want {
        return;
    }
    for (k, v) in want {
        match got.get(k) {
            None => panic!("missing {}/{:?}", k.0, show(&k.1)),
            Some(g) if g != v => panic!(
                "{}/{:?}: got {} bytes {:?}, want {} bytes {:?}",
                k.0,
                show(&k.1),
                g.len(),
                show(g),
                v.len(),
                show(v)
            ),
            _ => {}
        }
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    panic!("unexpected records: {extra:?}");
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(40)]);
    s.into_owned()
}

/// An empty store backs up, verifies and restores to an empty store.
pub fn empty_store<H: Harness>(h: &H) {
    let s = Scene::new(h);
    let summary = s.backup(BackupMode::Auto);
    assert_eq!(summary.kind, RunKind::Full);
    assert_eq!(summary.records_total, 0);
    let (restored, _) = s.restore(h, "restored");
    assert!(restored.is_empty());
    // A second run with nothing new is incremental and writes nothing.
    let again = s.backup(BackupMode::Auto);
    assert_eq!(again.kind, RunKind::Incremental);
    assert_eq!(again.records_written, 0);
}

/// Many collections, each with records, round-trip.
pub fn many_collections<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    let ops: Vec<Op> = (0..24)
        .flat_map(|c| {
            (0..5).map(move |k| {
                put(
                    &format!("coll-{c:02}"),
                    format!("k{k}").as_bytes(),
                    format!("{{\"c\":{c},\"k\":{k}}}").as_bytes(),
                )
            })
        })
        .collect();
    s.write(&ops);
    s.store.create_collection("empty-one");
    let summary = s.backup(BackupMode::Auto);
    assert_eq!(summary.records_total, 24 * 5);
    let (restored, names) = s.restore(h, "restored");
    assert_models_equal(&restored, &s.model);
    assert!(
        names.contains("empty-one"),
        "empty collections survive: {names:?}"
    );
}

/// Binary, non-UTF-8, empty and long keys; empty, binary and JSON values.
pub fn awkward_keys_and_values<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    let long = vec![b'k'; 4096];
    let long_bin: Vec<u8> = (0..1500u32).map(|i| (i * 7 % 256) as u8).collect();
    s.write(&[
        put("c", b"", b"empty key"),
        put("c", &[0, 0xff, 0xfe, b'/', b'.'], b"\x00\x01binary\xff"),
        put("c", b"..", b""),
        put("c", "ключ/🙂".as_bytes(), "значение".as_bytes()),
        put("c", &long, b"{\"long\": true}"),
        put("c", &long_bin, &[0u8; 300]),
        put("c", b"spaces and %", b"  {\"padded\": 1}  "),
        put("c", b"CaseSensitive", b"1"),
        put("c", b"nothing", b"null"),
    ]);
    s.backup(BackupMode::Auto);
    s.assert_restores_to_model(h, "r1");
    // And through an incremental: change and delete some of them.
    s.write(&[
        del("c", b""),
        put("c", &long, b"changed"),
        del("c", &long_bin),
    ]);
    assert_eq!(s.backup(BackupMode::Auto).kind, RunKind::Incremental);
    s.assert_restores_to_model(h, "r2");
}

/// Values up to 8 MiB.
pub fn large_values<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    let big: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let text = "x".repeat(1 << 20);
    s.write(&[
        put("big", b"8MiB", &big),
        put("big", b"1MiB-text", text.as_bytes()),
    ]);
    s.backup(BackupMode::Auto);
    s.assert_restores_to_model(h, "r");
}

/// Deletes and re-inserts across incrementals.
pub fn deletes_and_reinserts<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[
        put("a", b"1", b"one"),
        put("a", b"2", b"two"),
        put("b", b"x", b"ex"),
    ]);
    s.backup(BackupMode::Auto);
    s.write(&[del("a", b"1")]);
    s.write(&[del("b", b"x")]);
    let inc = s.backup(BackupMode::Auto);
    assert_eq!(inc.kind, RunKind::Incremental);
    assert_eq!(inc.records_deleted, 2);
    s.assert_restores_to_model(h, "r1");
    s.write(&[put("a", b"1", b"one again")]);
    s.write(&[
        put("b", b"x", b"ex again"),
        del("a", b"2"),
        put("a", b"2", b"two again"),
    ]);
    assert_eq!(s.backup(BackupMode::Auto).kind, RunKind::Incremental);
    s.assert_restores_to_model(h, "r2");
}

/// The changes since a checkpoint are exactly the committed ones, in bounded batches, and
/// applying them gives the state at the view's checkpoint: in commit order, or, where a
/// backend coalesces every key's changes into its last one, each key once in any order.
pub fn changes_since_are_exact_and_ordered<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[put("a", b"k1", b"v1"), put("b", b"k2", b"v2")]);
    let start_model = s.model.clone();
    let from = s.store.backend().current_checkpoint().unwrap();
    let txns: Vec<Vec<Op>> = vec![
        vec![put("a", b"k3", b"v3")],
        vec![put("b", b"k2", b"v2b"), del("a", b"k1")],
        vec![put("a", b"k4", b"v4")],
        vec![put("a", b"k3", b"v3b")],
        vec![del("a", b"k4"), put("b", b"k5", b"v5")],
    ];
    for t in &txns {
        s.write(t);
    }
    let backend = s.store.backend();
    let mut view = backend.view().unwrap();
    let to = view.checkpoint().clone();
    assert!(to.position > from.position);
    let mut changes: Vec<Change> = Vec::new();
    view.changes_since(&from, 2, &mut |batch| {
        assert!(
            !batch.is_empty() && batch.len() <= 2,
            "batch of {}",
            batch.len()
        );
        changes.extend(batch);
        Ok(())
    })
    .unwrap();
    // Positions stay inside (from, to].
    for c in &changes {
        assert!(c.position > from.position && c.position <= to.position);
    }
    let keys: Vec<(String, Vec<u8>)> = changes
        .iter()
        .map(|c| (c.collection.to_string(), key_bytes(&s.store, c)))
        .collect();
    let coalesced = {
        let mut k = keys.clone();
        k.sort();
        k.dedup();
        k.len() == keys.len()
    };
    // A stream that holds a key twice is in commit order: positions rise strictly.
    if !coalesced {
        for w in changes.windows(2) {
            assert!(
                w[0].position < w[1].position,
                "not in commit order: {changes:?}"
            );
        }
    }
    // The keys' last changes come in commit order (compare with the model's order), or, each
    // key once, they are the keys that changed.
    let mut last: Vec<(String, Vec<u8>)> = Vec::new();
    for op in txns.iter().flatten() {
        let k = match op {
            Op::Put {
                collection, key, ..
            }
            | Op::Delete { collection, key } => (collection.clone(), key.clone()),
        };
        last.retain(|x| x != &k);
        last.push(k);
    }
    let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
    for k in keys {
        seen.retain(|x| x != &k);
        seen.push(k);
    }
    if coalesced {
        seen.sort();
        last.sort();
    }
    assert_eq!(seen, last, "the last change of each key");
    // Applying the stream over the state at `from` gives the state at `to`.
    let mut model = start_model;
    for c in &changes {
        let key = key_bytes(&s.store, c);
        match &c.op {
            ChangeOp::Put(value) => {
                let (_, v) = s.store.decode(&Record {
                    key: c.key.clone(),
                    value: value.clone(),
                });
                model.insert((c.collection.to_string(), key), v);
            }
            ChangeOp::Delete => {
                model.remove(&(c.collection.to_string(), key));
            }
        }
    }
    assert_models_equal(&model, &s.model);
    // Nothing after the view's own checkpoint.
    let mut none = 0;
    view.changes_since(&to, 10, &mut |b| {
        none += b.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(none, 0);
}

fn key_bytes(store: &dyn TestStore, c: &Change) -> Vec<u8> {
    match &c.op {
        ChangeOp::Put(value) => {
            store
                .decode(&Record {
                    key: c.key.clone(),
                    value: value.clone(),
                })
                .0
        }
        ChangeOp::Delete => store.decode_key(&c.key),
    }
}

/// Decoding a bare key (for deletions), derived from [`TestStore::decode`] where possible.
pub trait DecodeKey {
    /// The key bytes a record key stands for.
    fn decode_key(&self, key: &backup_core::Key) -> Vec<u8>;
}

impl<T: TestStore + ?Sized> DecodeKey for T {
    fn decode_key(&self, key: &backup_core::Key) -> Vec<u8> {
        self.decode(&Record {
            key: key.clone(),
            value: backup_core::Value::Bytes(Vec::new()),
        })
        .0
    }
}

/// A checkpoint from another store, or one the log no longer reaches, is `ChangesUnavailable`
/// and the engine answers with a full backup.
pub fn unavailable_changes_are_an_error<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[put("a", b"1", b"x")]);
    let backend = s.store.backend();
    let here = backend.current_checkpoint().unwrap();
    let foreign = Checkpoint::new(StoreId("some-other-store".into()), here.position);
    let mut view = backend.view().unwrap();
    let r = view.changes_since(&foreign, 10, &mut |_| Ok(()));
    assert!(matches!(r, Err(Error::ChangesUnavailable { .. })), "{r:?}");
    drop(view);
    if h.trims_changes() {
        let old = backend.current_checkpoint().unwrap();
        s.write(&[put("a", b"2", b"y")]);
        s.backup(BackupMode::Auto); // completes and trims up to here
        s.write(&[put("a", b"3", b"z")]);
        let mut view = s.store.backend().view().unwrap();
        let r = view.changes_since(&old, 10, &mut |_| Ok(()));
        assert!(matches!(r, Err(Error::ChangesUnavailable { .. })), "{r:?}");
    }
}

/// Full backups taken while a writer thread keeps committing are consistent: each restores to
/// a state where every transaction is wholly in or wholly out, and the next incremental
/// completes the backup. (Views of stores with snapshots are checked directly too.)
pub fn snapshot_consistent_under_writer<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[put("left", b"seed", b"0"), put("right", b"seed", b"0")]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = s.store.writer();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        // Paced and capped, so the test's size does not depend on how fast the store is.
        let mut i = 0u64;
        while (!flag.load(Ordering::Relaxed) || i < 50) && i < 5_000 {
            std::thread::sleep(std::time::Duration::from_micros(200));
            let k = format!("k{i:06}");
            writer(&[
                put("left", k.as_bytes(), i.to_string().as_bytes()),
                put("right", k.as_bytes(), i.to_string().as_bytes()),
            ]);
            if i % 3 == 0 && i > 0 {
                let old = format!("k{:06}", i - 1);
                writer(&[del("left", old.as_bytes()), del("right", old.as_bytes())]);
            }
            i += 1;
        }
        i
    });
    let sides_equal = |m: &Model| {
        let side = |name: &str| -> BTreeMap<Vec<u8>, Vec<u8>> {
            m.iter()
                .filter(|((c, _), _)| c == name)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        };
        side("left") == side("right")
    };
    for round in 0..3 {
        let dir = s.dir.path().join(format!("under-writer-{round}"));
        let summary = backup_folder(
            s.store.backend(),
            &dir,
            &BackupOptions::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(summary.kind, RunKind::Full);
        let target = s.dir.path().join(format!("restored-under-writer-{round}"));
        backup_core::restore_folder_to_path(
            &dir,
            h.factory().as_ref(),
            &target,
            &RestoreOptions::default(),
        )
        .unwrap();
        let (restored, _) = read_restored(h, &target);
        assert!(
            sides_equal(&restored),
            "round {round}: a backup holds half of a transaction"
        );
        assert!(restored.len() >= 2);
    }
    stop.store(true, Ordering::Relaxed);
    let n = thread.join().unwrap();
    assert!(n >= 50);
    // The last of those backups, continued incrementally, catches up with everything.
    let (now, _) = read_all(&s.store);
    assert!(sides_equal(&now));
    let dir = s.dir.path().join("under-writer-2");
    let inc = backup_folder(
        s.store.backend(),
        &dir,
        &BackupOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(inc.kind, RunKind::Incremental, "{:?}", inc.full_reason);
    let target = s.dir.path().join("restored-final");
    backup_core::restore_folder_to_path(
        &dir,
        h.factory().as_ref(),
        &target,
        &RestoreOptions::default(),
    )
    .unwrap();
    let (restored, _) = read_restored(h, &target);
    assert_models_equal(&restored, &now);
    s.model = now;
}

/// A full backup, then several incrementals, restore to exactly the store at the last
/// checkpoint; a forced full over an existing folder does too.
pub fn full_then_incrementals_restore_exactly<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..5 {
        for _ in 0..40 {
            let c = ["users", "orders", "events"][(next() % 3) as usize];
            let k = format!("key-{}", next() % 60);
            if next() % 4 == 0 {
                s.write(&[del(c, k.as_bytes())]);
            } else {
                let v = format!("{{\"round\":{round},\"n\":{}}}", next() % 1000);
                s.write(&[put(c, k.as_bytes(), v.as_bytes())]);
            }
        }
        let summary = s.backup(BackupMode::Auto);
        let expected = if round == 0 {
            RunKind::Full
        } else {
            RunKind::Incremental
        };
        assert_eq!(
            summary.kind, expected,
            "round {round}: {:?}",
            summary.full_reason
        );
        assert_eq!(summary.records_total as usize, s.model.len());
    }
    s.assert_restores_to_model(h, "after-incrementals");
    // A forced full over the folder refreshes it in place: it writes only what differs
    // (new keys, changed values, a value turned binary, which moves it into an attachment),
    // removes what the store no longer has, and finds the rest as it is.
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let gone = s
        .model
        .keys()
        .find(|(c, _)| c == "orders")
        .cloned()
        .expect("the rounds leave orders");
    s.write(&[
        put("users", b"late", b"1"),
        put("users", b"late-binary", &binary),
        del("orders", &gone.1),
    ]);
    let refreshed = s.backup(BackupMode::Full);
    assert_eq!(refreshed.kind, RunKind::Full);
    assert_eq!(refreshed.records_total as usize, s.model.len());
    assert_eq!(
        (refreshed.records_written, refreshed.records_deleted),
        (2, 1),
        "a forced full over a folder rewrites only what changed"
    );
    assert_eq!(refreshed.records_unchanged as usize, s.model.len() - 2);
    s.assert_restores_to_model(h, "after-forced-full");
    // The binary value turns back into text (its attachment goes), and nothing else changed.
    s.write(&[put("users", b"late-binary", b"\"text again\"")]);
    let again = s.backup(BackupMode::Full);
    assert_eq!(
        (
            again.records_written,
            again.records_deleted,
            again.records_unchanged as usize
        ),
        (1, 0, s.model.len() - 1)
    );
    s.assert_restores_to_model(h, "after-second-forced-full");
}

/// The archive options the archive cases use: zstd over two threads, so the pipeline's
/// ordering is exercised whatever the machine.
fn archive_options() -> backup_core::ArchiveOptions {
    backup_core::ArchiveOptions {
        compression: backup_core::Compression::Zstd(3),
        threads: 2,
        ..backup_core::ArchiveOptions::default()
    }
}

/// Backs the scene's store up as the next archive of `dir`.
fn archive_backup<H: Harness>(
    s: &Scene<H>,
    dir: &Path,
    mode: BackupMode,
) -> backup_core::ArchiveSummary {
    let options = BackupOptions {
        mode,
        batch_size: 7,
        ..BackupOptions::default()
    };
    backup_core::backup_archive(
        s.store.backend(),
        dir,
        &options,
        &archive_options(),
        &mut |_| {},
    )
    .unwrap()
}

/// Restores an archive chain at `at` into a new store and returns what it holds.
fn archive_restore<H: Harness>(
    h: &H,
    dir: &Path,
    at: backup_core::RestorePoint,
    target: &Path,
) -> (Model, BTreeSet<String>) {
    backup_core::restore_archives_to_path(
        dir,
        &at,
        h.factory().as_ref(),
        target,
        &RestoreOptions::default(),
        &archive_options(),
    )
    .unwrap();
    read_restored(h, target)
}

/// An archive chain (a full archive and incrementals with puts, deletions, awkward keys, a
/// value larger than a part and a collection that appears later) verifies, and restores
/// exactly at every checkpoint.
pub fn archive_chain_restores_at_every_checkpoint<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    let dir = s.dir.path().join("archives");
    let mut states: Vec<(u64, Model)> = Vec::new();
    let big: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..5u64 {
        for _ in 0..60 {
            let c = ["users", "orders"][(next() % 2) as usize];
            let k = format!("key-{}", next() % 80);
            if next() % 4 == 0 {
                s.write(&[del(c, k.as_bytes())]);
            } else {
                let v = format!("{{\"round\":{round},\"n\":{}}}", next() % 1000);
                s.write(&[put(c, k.as_bytes(), v.as_bytes())]);
            }
        }
        match round {
            1 => s.write(&[
                put("users", &[0, 0xff, b'\n'], b"\x00binary\n"),
                put("users", b"", b"  not exact json "),
                put("orders", b"big", &big),
                // A JSON document store's null: the line holds it as `"value":null`.
                put("users", b"nothing", b"null"),
            ]),
            2 => s.write(&[put("late", b"a", b"1"), del("orders", b"big")]),
            3 => s.write(&[del("users", &[0, 0xff, b'\n']), put("late", b"b", b"{}")]),
            _ => {}
        }
        let summary = archive_backup(&s, &dir, BackupMode::Auto);
        let want = if round == 0 {
            RunKind::Full
        } else {
            RunKind::Incremental
        };
        assert_eq!(
            summary.kind, want,
            "round {round}: {:?}",
            summary.backup.full_reason
        );
        assert_eq!(
            summary.backup.records_total as usize,
            s.model.len(),
            "round {round}"
        );
        states.push((summary.backup.checkpoint.position, s.model.clone()));
    }
    let report = backup_core::verify_archives(&dir).unwrap();
    assert!(report.is_ok(), "verify found {:?}", report.problems);
    for (i, (position, model)) in states.iter().enumerate() {
        let target = s.dir.path().join(format!("at-{i}"));
        let (restored, _) = archive_restore(
            h,
            &dir,
            backup_core::RestorePoint::Checkpoint(*position),
            &target,
        );
        assert_models_equal(&restored, model);
    }
    // A forced full starts a new chain segment that restores the same.
    s.write(&[put("users", b"after", b"1")]);
    assert_eq!(
        archive_backup(&s, &dir, BackupMode::Full).kind,
        RunKind::Full
    );
    let (restored, _) = archive_restore(
        h,
        &dir,
        backup_core::RestorePoint::Latest,
        &s.dir.path().join("latest"),
    );
    assert_models_equal(&restored, &s.model);
}

/// Full archives taken while a writer keeps committing hold whole transactions only (stores
/// without snapshots replay the changes made during the scan into the archive), and the next
/// incremental catches up exactly.
pub fn archive_under_writer<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[put("left", b"seed", b"0"), put("right", b"seed", b"0")]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = s.store.writer();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut i = 0u64;
        while (!flag.load(Ordering::Relaxed) || i < 50) && i < 5_000 {
            std::thread::sleep(std::time::Duration::from_micros(200));
            let k = format!("k{i:06}");
            writer(&[
                put("left", k.as_bytes(), i.to_string().as_bytes()),
                put("right", k.as_bytes(), i.to_string().as_bytes()),
            ]);
            if i % 3 == 0 && i > 0 {
                let old = format!("k{:06}", i - 1);
                writer(&[del("left", old.as_bytes()), del("right", old.as_bytes())]);
            }
            i += 1;
        }
        i
    });
    let dir = s.dir.path().join("archives");
    for round in 0..3 {
        let mode = if round == 0 {
            BackupMode::Auto
        } else {
            BackupMode::Full
        };
        assert_eq!(archive_backup(&s, &dir, mode).kind, RunKind::Full);
        let (restored, _) = archive_restore(
            h,
            &dir,
            backup_core::RestorePoint::Latest,
            &s.dir.path().join(format!("r{round}")),
        );
        let side = |name: &str| -> BTreeMap<Vec<u8>, Vec<u8>> {
            restored
                .iter()
                .filter(|((c, _), _)| c == name)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect()
        };
        assert_eq!(
            side("left"),
            side("right"),
            "round {round}: half a transaction"
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(thread.join().unwrap() >= 50);
    let (now, _) = read_all(&s.store);
    let inc = archive_backup(&s, &dir, BackupMode::Auto);
    assert_eq!(
        inc.kind,
        RunKind::Incremental,
        "{:?}",
        inc.backup.full_reason
    );
    let report = backup_core::verify_archives(&dir).unwrap();
    assert!(report.is_ok(), "verify found {:?}", report.problems);
    let (restored, _) = archive_restore(
        h,
        &dir,
        backup_core::RestorePoint::Latest,
        &s.dir.path().join("final"),
    );
    assert_models_equal(&restored, &now);
    s.model = now;
}

/// A restore refuses a target that holds data unless forced, and a forced restore replaces it.
pub fn restore_refuses_non_empty_target<H: Harness>(h: &H) {
    let mut s = Scene::new(h);
    s.write(&[put("a", b"1", b"one")]);
    s.backup(BackupMode::Auto);
    let target = s.dir.path().join("occupied");
    {
        let other = h.create(&target);
        other.create_collection("z");
        other.write(&[put("z", b"keep", b"me")]);
    }
    let factory = h.factory();
    let r = backup_core::restore_folder_to_path(
        &s.backup_dir(),
        factory.as_ref(),
        &target,
        &RestoreOptions::default(),
    );
    assert!(matches!(r, Err(Error::TargetNotEmpty { .. })), "{r:?}");
    let (still, _) = read_restored(h, &target);
    assert_eq!(still.len(), 1, "the refused target is untouched");
    backup_core::restore_folder_to_path(
        &s.backup_dir(),
        factory.as_ref(),
        &target,
        &RestoreOptions {
            force: true,
            ..RestoreOptions::default()
        },
    )
    .unwrap();
    let (now, _) = read_restored(h, &target);
    assert_models_equal(&now, &s.model);
}

/// Random operation sequences, with backups in between, always restore to the model.
pub fn random_operations_match_model<H: Harness>(h: &H) {
    let op = (
        0..2usize,
        0..12u8,
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
    )
        .prop_map(|(c, k, v)| {
            let c = ["x", "y"][c];
            let k = vec![k; usize::from(k % 3) + 1];
            match v {
                Some(v) => put(c, &k, &v),
                None => del(c, &k),
            }
        });
    let step = (proptest::collection::vec(op, 1..6), 0..4u8);
    let cases = std::env::var("TIDEMARK_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(step, 1..8), |steps| {
            let mut s = Scene::new(h);
            for (ops, action) in &steps {
                s.write(ops);
                match action {
                    0 => {
                        s.backup(BackupMode::Auto);
                    }
                    1 => {
                        s.backup(BackupMode::Full);
                    }
                    _ => {}
                }
            }
            s.backup(BackupMode::Auto);
            let (restored, _) = s.restore(h, "r");
            prop_assert_eq!(restored, s.model.clone());
            Ok(())
        })
        .unwrap();
}

/// Generates one `#[test]` per conformance case for a harness.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $harness:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $harness;
                empty_store, many_collections, awkward_keys_and_values, large_values,
                deletes_and_reinserts, changes_since_are_exact_and_ordered,
                unavailable_changes_are_an_error, snapshot_consistent_under_writer,
                full_then_incrementals_restore_exactly, restore_refuses_non_empty_target,
                random_operations_match_model, archive_chain_restores_at_every_checkpoint,
                archive_under_writer);
        }
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                $crate::$case(&$harness);
            }
        )*
    };
}
