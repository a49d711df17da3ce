//! A live backup following a RocksDB database written in-process.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_rocksdb::{Db, RocksBackend, RocksFactory};
use backup_core::{restore_folder_to_path, LiveBackup, LiveOptions, RestoreOptions};
use rocksdb::Options;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn live_backup_follows_the_wal_and_stops_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_wal_ttl_seconds(3600);
    let db = Arc::new(Db::open(&opts, t.path().join("db")).unwrap());
    db.put(b"seed", b"0").unwrap();
    let live = LiveBackup::start(
        Arc::new(RocksBackend::from_db(db.clone())),
        t.path().join("bk"),
        LiveOptions {
            flush_interval: Duration::from_millis(100),
            ..LiveOptions::default()
        },
    );
    live.wait_initial(&mut |_| {}).unwrap();
    for i in 0..500u32 {
        db.put(i.to_be_bytes(), b"v").unwrap();
        if i % 100 == 0 {
            db.delete(b"seed").unwrap();
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    let summary = live.stop().unwrap();
    assert!(summary.runs >= 2, "{}", summary.runs);
    assert_eq!(
        summary.last.unwrap().checkpoint.position,
        db.latest_sequence_number()
    );
    let target = t.path().join("r");
    restore_folder_to_path(
        &t.path().join("bk"),
        &RocksFactory::default(),
        &target,
        &RestoreOptions::default(),
    )
    .unwrap();
    let r = Db::open_default(&target).unwrap();
    assert_eq!(r.iterator(rocksdb::IteratorMode::Start).count(), 500);
    assert!(r.get(b"seed").unwrap().is_none());
}
