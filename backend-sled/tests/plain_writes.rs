//! Writes that go around the tracked handle, and the log's lifecycle, on real sled databases.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sled::{SledBackend, SledFactory, TrackedDb};
use backup_core::{
    backup_folder, restore_folder_to_path, BackupOptions, BackupSummary, Method, RestoreOptions,
};
use std::collections::BTreeMap;
use std::path::Path;

type Content = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn content(db: &sled::Db) -> Content {
    let mut out = Content::new();
    for name in db.tree_names() {
        if name.starts_with(b"__tidemark_") {
            continue;
        }
        let tree = db.open_tree(&name).unwrap();
        for item in tree.iter() {
            let (k, v) = item.unwrap();
            out.insert(
                (String::from_utf8_lossy(&name).into_owned(), k.to_vec()),
                v.to_vec(),
            );
        }
    }
    out
}

fn backup(backend: &SledBackend, dir: &Path) -> (BackupSummary, Vec<String>) {
    let mut notices = Vec::new();
    let s = backup_folder(backend, dir, &BackupOptions::default(), &mut |e| {
        if let backup_core::Event::Notice(n) = e {
            notices.push(n);
        }
    })
    .unwrap();
    (s, notices)
}

fn restored(dir: &Path, target: &Path) -> Content {
    restore_folder_to_path(dir, &SledFactory, target, &RestoreOptions::default()).unwrap();
    content(&backend_sled::tracked::open_db(target).unwrap())
}

#[test]
fn writes_with_plain_sled_are_caught_by_the_diff() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let bk = t.path().join("bk");
    {
        let db = TrackedDb::open(&path).unwrap();
        for i in 0..50u32 {
            db.insert("users", &i.to_be_bytes(), format!("user {i}").as_bytes())
                .unwrap();
        }
        db.insert("__sled__default", b"config", b"{}").unwrap();
        let (s, _) = backup(&SledBackend::new(db.clone()), &bk);
        assert_eq!(s.method, Method::Full);
        // Tracked writes in the same session come from the log.
        db.remove("users", &7u32.to_be_bytes()).unwrap();
        let (s, _) = backup(&SledBackend::new(db.clone()), &bk);
        assert_eq!((s.method, s.records_deleted), (Method::ChangeLog, 1));
        db.flush().unwrap();
    }
    {
        // The application now writes with plain sled: nothing reaches the log.
        let db = backend_sled::tracked::open_db(&path).unwrap();
        let users = db.open_tree("users").unwrap();
        users
            .insert(3u32.to_be_bytes(), b"changed".to_vec())
            .unwrap();
        users.remove(4u32.to_be_bytes()).unwrap();
        db.open_tree("orders")
            .unwrap()
            .insert(b"o1", b"new tree".to_vec())
            .unwrap();
        db.insert(b"config", b"{\"v\":2}".to_vec()).unwrap();
        db.flush().unwrap();
    }
    let backend = SledBackend::open(&path).unwrap();
    let (s, notices) = backup(&backend, &bk);
    assert_eq!(s.method, Method::Diff, "{notices:?}");
    assert!(
        notices.iter().any(|n| n.contains("reopened")),
        "{notices:?}"
    );
    assert_eq!((s.records_written, s.records_deleted), (3, 1));
    let want = content(backend.tracked().unwrap().db());
    assert_eq!(restored(&bk, &t.path().join("r")), want);
    // After the diff, tracked writes are incremental again.
    backend
        .tracked()
        .unwrap()
        .insert("orders", b"o2", b"x")
        .unwrap();
    let (s, _) = backup(&backend, &bk);
    assert_eq!((s.method, s.records_written), (Method::ChangeLog, 1));
    assert_eq!(
        restored(&bk, &t.path().join("r2")),
        content(backend.tracked().unwrap().db())
    );
}

#[test]
fn the_log_is_trimmed_only_up_to_a_completed_backup() {
    let t = tempfile::tempdir().unwrap();
    let db = TrackedDb::open(&t.path().join("db")).unwrap();
    let backend = SledBackend::new(db.clone());
    for i in 0..10u8 {
        db.insert("t", &[i], &[i]).unwrap();
    }
    let (s, _) = backup(&backend, &t.path().join("bk"));
    for i in 10..15u8 {
        db.insert("t", &[i], &[i]).unwrap();
    }
    let remaining: Vec<u64> = db
        .log()
        .iter()
        .map(|r| u64::from_be_bytes(r.unwrap().0.as_ref().try_into().unwrap()))
        .collect();
    assert_eq!(remaining.len(), 5, "entries after the checkpoint stay");
    assert!(remaining.iter().all(|&p| p > s.checkpoint.position));
    assert_eq!(db.floor().unwrap(), s.checkpoint.position);
}

#[test]
fn multi_tree_transactions_are_logged_atomically() {
    let t = tempfile::tempdir().unwrap();
    let db = TrackedDb::open(&t.path().join("db")).unwrap();
    let backend = SledBackend::new(db.clone());
    let bk = t.path().join("bk");
    backup(&backend, &bk);
    db.transaction(&["accounts", "ledger"], |tx| {
        tx.insert("accounts", b"ann", b"90")?;
        tx.insert("ledger", b"0001", b"ann -10")?;
        Ok(())
    })
    .unwrap();
    let (s, _) = backup(&backend, &bk);
    assert_eq!((s.method, s.records_written), (Method::ChangeLog, 2));
    assert_eq!(restored(&bk, &t.path().join("r")), content(db.db()));
}

#[test]
fn a_damaged_key_index_leads_to_a_full_backup_not_a_failure() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("db");
    let bk = t.path().join("bk");
    {
        let db = TrackedDb::open(&path).unwrap();
        for i in 0..20u8 {
            db.insert("t", &[i], &[i; 10]).unwrap();
        }
        backup(&SledBackend::new(db.clone()), &bk);
        db.flush().unwrap();
    }
    for entry in std::fs::read_dir(bk.join(".tidemark/index")).unwrap() {
        let p = entry.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
    }
    let backend = SledBackend::open(&path).unwrap();
    backend
        .tracked()
        .unwrap()
        .insert("t", &[99], b"new")
        .unwrap();
    let (s, notices) = backup(&backend, &bk);
    assert_eq!(s.method, Method::Full, "{notices:?}");
    assert!(
        notices.iter().any(|n| n.contains("diff not possible")),
        "{notices:?}"
    );
    assert_eq!(
        restored(&bk, &t.path().join("r")),
        content(backend.tracked().unwrap().db())
    );
}
