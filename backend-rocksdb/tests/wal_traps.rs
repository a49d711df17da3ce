//! The RocksDB change-capture traps of STORE-NOTES.md, each proven on a real database.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_rocksdb::{Db, RocksBackend, RocksFactory};
use backup_core::{
    backup_folder, restore_folder_to_path, BackupOptions, Error, Event, FullReason, Method,
    RestoreOptions, RunKind, StorageBackend,
};
use rocksdb::{IteratorMode, MergeOperands, Options};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

type Content = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn content(db: &Db, path: &Path) -> Content {
    let mut out = Content::new();
    for name in Db::list_cf(&Options::default(), path).unwrap() {
        let cf = db.cf_handle(&name).unwrap();
        for item in db.iterator_cf(&cf, IteratorMode::Start) {
            let (k, v) = item.unwrap();
            out.insert((name.clone(), k.to_vec()), v.to_vec());
        }
    }
    out
}

fn concat_merge(_: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let mut v = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for op in ops {
        v.extend_from_slice(op);
    }
    Some(v)
}

fn options(keep_wal: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_merge_operator_associative("concat", concat_merge);
    if keep_wal {
        opts.set_wal_ttl_seconds(3600);
    }
    opts
}

fn open(path: &Path, keep_wal: bool) -> Arc<Db> {
    let names = Db::list_cf(&Options::default(), path).unwrap_or_else(|_| vec!["default".into()]);
    // Every column family needs the merge operator, not just the database options.
    let cfs = names
        .into_iter()
        .map(|n| rocksdb::ColumnFamilyDescriptor::new(n, options(keep_wal)));
    Arc::new(Db::open_cf_descriptors(&options(keep_wal), path, cfs).unwrap())
}

fn backup(db: &Arc<Db>, dir: &Path) -> (backup_core::BackupSummary, Vec<String>) {
    let backend = RocksBackend::from_db(db.clone());
    let mut notices = Vec::new();
    let summary = backup_folder(&backend, dir, &BackupOptions::default(), &mut |e| {
        if let Event::Notice(n) = e {
            notices.push(n)
        }
    })
    .unwrap();
    (summary, notices)
}

/// Restores `dir` into a fresh database and compares it with `want`.
fn assert_restores(dir: &Path, scratch: &Path, want: &Content) {
    let target = scratch.join(format!("restored-{}", want.len()));
    restore_folder_to_path(
        dir,
        &RocksFactory::default(),
        &target,
        &RestoreOptions::default(),
    )
    .unwrap();
    let db = open(&target, false);
    assert_eq!(&content(&db, &target), want);
}

#[test]
fn merges_are_resolved_to_their_values() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let db = open(&path, true);
    db.put(b"log", b"a").unwrap();
    let bk = t.path().join("bk");
    backup(&db, &bk);
    db.merge(b"log", b"b").unwrap();
    db.merge(b"log", b"c").unwrap();
    db.merge(b"new", b"x").unwrap();
    let (s, _) = backup(&db, &bk);
    assert_eq!(s.kind, RunKind::Incremental);
    let want = content(&db, &path);
    assert_eq!(want[&("default".to_string(), b"log".to_vec())], b"abc");
    assert_restores(&bk, t.path(), &want);
}

#[test]
fn single_deletes_are_recorded() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let db = open(&path, true);
    db.put(b"once", b"1").unwrap();
    db.put(b"stay", b"2").unwrap();
    let bk = t.path().join("bk");
    backup(&db, &bk);
    let mut batch = rocksdb::WriteBatch::default();
    batch.single_delete(b"once");
    db.write(batch).unwrap();
    let (s, _) = backup(&db, &bk);
    assert_eq!((s.kind, s.records_deleted), (RunKind::Incremental, 1));
    assert_restores(&bk, t.path(), &content(&db, &path));
}

#[test]
fn range_deletes_fall_back_to_a_diff_and_say_so() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let db = open(&path, true);
    for i in 0..20u8 {
        db.put([b'k', i], [i]).unwrap();
    }
    let bk = t.path().join("bk");
    backup(&db, &bk);
    let cf = db.cf_handle("default").unwrap();
    db.delete_range_cf(&cf, [b'k', 5], [b'k', 15]).unwrap();
    drop(cf);
    let (s, notices) = backup(&db, &bk);
    assert_eq!(s.method, Method::Diff, "compares every record instead");
    assert!(
        notices.iter().any(|n| n.contains("range deletion")),
        "{notices:?}"
    );
    assert_eq!((s.records_written, s.records_deleted), (0, 10));
    assert_restores(&bk, t.path(), &content(&db, &path));
}

#[test]
fn a_purged_wal_is_detected_not_skipped() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let db = open(&path, false); // default options: WAL files deleted once flushed
    db.put(b"a", b"1").unwrap();
    let bk = t.path().join("bk");
    backup(&db, &bk);
    db.put(b"b", b"2").unwrap();
    db.flush().unwrap(); // the WAL holding `b` becomes obsolete and is deleted
    db.put(b"c", b"3").unwrap();
    let backend = RocksBackend::from_db(db.clone());
    let mut view = backend.view().unwrap();
    let manifest = backup_core::FolderManifest::read(&bk.join(".tidemark/manifest.json"))
        .unwrap()
        .unwrap();
    let r = view.changes_since(&manifest.checkpoint, 100, &mut |_| Ok(()));
    assert!(matches!(r, Err(Error::ChangesUnavailable { .. })), "{r:?}");
    drop(view);
    let (s, notices) = backup(&db, &bk);
    assert_eq!(s.method, Method::Diff, "{notices:?}");
    assert_eq!((s.records_written, s.records_deleted), (2, 0));
    assert_restores(&bk, t.path(), &content(&db, &path));
}

#[test]
fn a_recreated_column_family_is_not_mistaken_for_the_old_one() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let db = open(&path, true);
    db.create_cf("c", &Options::default()).unwrap();
    db.put_cf(&db.cf_handle("c").unwrap(), b"old", b"1")
        .unwrap();
    let bk = t.path().join("bk");
    backup(&db, &bk);
    db.drop_cf("c").unwrap(); // its keys vanish without a delete in the WAL
    db.create_cf("c", &Options::default()).unwrap();
    db.put_cf(&db.cf_handle("c").unwrap(), b"new", b"2")
        .unwrap();
    let (s, _) = backup(&db, &bk);
    assert_eq!(s.method, Method::Diff);
    assert!(
        matches!(&s.full_reason, Some(FullReason::SchemaChanged(c)) if c.as_str() == "c"),
        "{:?}",
        s.full_reason
    );
    assert_eq!((s.records_written, s.records_deleted), (1, 1));
    assert_restores(&bk, t.path(), &content(&db, &path));
}

#[test]
fn a_different_database_is_never_continued() {
    let t = tempfile::tempdir().unwrap();
    let bk = t.path().join("bk");
    let a = open(&t.path().join("a"), true);
    a.put(b"k", b"a").unwrap();
    backup(&a, &bk);
    let b = open(&t.path().join("b"), true);
    b.put(b"k", b"b").unwrap();
    b.put(b"k2", b"b").unwrap();
    let (s, _) = backup(&b, &bk);
    // Never the other database's WAL, and never a diff against it: a new full backup.
    assert_eq!(s.method, Method::Full);
    assert!(
        matches!(s.full_reason, Some(FullReason::StoreReplaced { .. })),
        "{:?}",
        s.full_reason
    );
    assert_eq!((s.records_written, s.records_deleted), (2, 0));
    assert_restores(&bk, t.path(), &content(&b, &t.path().join("b")));
}
