//! A service that keeps its sled database open and backs it up live beside its writers.
//!
//! sled has no change log of its own, so the service writes through a [`TrackedDb`]: the same
//! sled handle, which also records every write in a log tree, atomically with it. The live
//! backup reads that handle in-process (sled allows one process per database) and keeps a
//! folder backup up to date. On shutdown the writers stop, then the backup takes a last run;
//! the example restores it into a new sled database and compares every tree.
//!
//! `cargo run -p tidemark --example sled_service --features sled [-- DIR]`
//!
//! [`TrackedDb`]: tidemark::sled::TrackedDb

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark::sled::{SledBackend, SledFactory, TrackedDb};
use tidemark::{restore_folder_to_path, LiveBackup, LiveOptions, RestoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let backup = dir.join("cache-backup");

    let db = TrackedDb::open(&dir.join("cache"))?;
    let live = LiveBackup::start(
        Arc::new(SledBackend::new(db.clone())),
        backup.clone(),
        LiveOptions {
            flush_interval: Duration::from_millis(200),
            ..LiveOptions::default()
        },
    );
    live.wait_initial(&mut |_| {})
        .ok_or("the initial backup failed")?;

    let stopping = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stopping) = (db.clone(), stopping.clone());
        std::thread::spawn(move || -> tidemark::Result<u64> {
            let mut n = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                db.insert(
                    "pages",
                    format!("page-{}", n % 300).as_bytes(),
                    &n.to_be_bytes(),
                )?;
                if n % 5 == 0 {
                    db.remove("pages", format!("page-{}", (n / 5) % 300).as_bytes())?;
                }
                db.insert("hits", &n.to_be_bytes(), b"1")?;
                n += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    stopping.store(true, Ordering::SeqCst);
    let written = writer.join().map_err(|_| "the writer panicked")??;
    let summary = live.stop()?;
    println!(
        "stopped: {written} write rounds, {} runs, {} records in the backup",
        summary.runs,
        summary.last.map_or(0, |s| s.records_total)
    );

    let target = dir.join("restored");
    let _ = std::fs::remove_dir_all(&target);
    restore_folder_to_path(&backup, &SledFactory, &target, &RestoreOptions::default())?;
    let copy = sled::open(&target)?;
    for tree in ["pages", "hits"] {
        let want: Vec<_> = db.tree(tree)?.iter().collect::<Result<_, _>>()?;
        let got: Vec<_> = copy.open_tree(tree)?.iter().collect::<Result<_, _>>()?;
        if want != got {
            return Err(format!("tree {tree}: the restore differs").into());
        }
        println!(
            "{tree}: {} keys restored, equal to the service's",
            got.len()
        );
    }
    Ok(())
}
