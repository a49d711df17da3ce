//! A live backup following a sled database written in-process through the tracked handle.
#![allow(clippy::unwrap_used, missing_docs)]

use backend_sled::{SledBackend, SledFactory, TrackedDb};
use backup_core::{restore_folder_to_path, LiveBackup, LiveOptions, RestoreOptions};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn live_backup_follows_tracked_writes_and_stops_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let db = TrackedDb::open(&t.path().join("db")).unwrap();
    db.insert("t", b"seed", b"0").unwrap();
    let live = LiveBackup::start(
        Arc::new(SledBackend::new(db.clone())),
        t.path().join("bk"),
        LiveOptions {
            flush_interval: Duration::from_millis(100),
            ..LiveOptions::default()
        },
    );
    live.wait_initial(&mut |_| {}).unwrap();
    for i in 0..300u32 {
        db.transaction(&["t", "u"], |tx| {
            tx.insert("t", &i.to_be_bytes(), b"x")?;
            tx.insert("u", &i.to_be_bytes(), b"y")?;
            Ok(())
        })
        .unwrap();
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    let summary = live.stop().unwrap();
    assert!(summary.runs >= 2, "{}", summary.runs);
    restore_folder_to_path(
        &t.path().join("bk"),
        &SledFactory,
        &t.path().join("r"),
        &RestoreOptions::default(),
    )
    .unwrap();
    let restored = backend_sled::tracked::open_db(&t.path().join("r")).unwrap();
    assert_eq!(restored.open_tree("t").unwrap().len(), 301);
    assert_eq!(restored.open_tree("u").unwrap().len(), 300);
}
