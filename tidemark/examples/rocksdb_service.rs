//! A service that keeps its RocksDB open and backs it up live beside its writers.
//!
//! The backup reads the service's own `DB` handle (no second process, no secondary instance),
//! follows its write-ahead log, and writes an archive chain: one small archive per flush
//! interval with changes, compacted as it grows. On shutdown the writers stop, then the live
//! backup takes one last run. The example restores the newest point into a new RocksDB and
//! compares every key with the service's database.
//!
//! `cargo run -p tidemark --example rocksdb_service --features rocksdb [-- DIR]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark::rocksdb::{Db, RocksBackend, RocksFactory};
use tidemark::{
    restore_archives_to_path, ArchiveOptions, CompactOptions, LiveBackup, LiveFormat, LiveOptions,
    RestoreOptions, RestorePoint,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let chain = dir.join("sessions-archives");

    // The service's database: its own options and handle, kept open for its whole life.
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let db = Arc::new(Db::open_cf(
        &opts,
        dir.join("sessions"),
        ["sessions", "audit"],
    )?);

    let live = LiveBackup::start(
        Arc::new(RocksBackend::from_db(db.clone())),
        chain.clone(),
        LiveOptions {
            format: LiveFormat::Archive(ArchiveOptions::default()),
            flush_interval: Duration::from_millis(200),
            compact: Some(CompactOptions::default()),
            ..LiveOptions::default()
        },
    );
    live.wait_initial(&mut |_| {})
        .ok_or("the initial backup failed")?;

    let stopping = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (db, stopping) = (db.clone(), stopping.clone());
            std::thread::spawn(move || -> Result<u64, rocksdb::Error> {
                let (sessions, audit) = (
                    db.cf_handle("sessions").expect("created at open"),
                    db.cf_handle("audit").expect("created at open"),
                );
                let mut n = 0u64;
                while !stopping.load(Ordering::SeqCst) {
                    let key = format!("w{w}-s{}", n % 500);
                    db.put_cf(&sessions, &key, format!("{{\"seen\": {n}}}"))?;
                    db.put_cf(&audit, format!("w{w}-{n:08}"), b"login")?;
                    if n % 7 == 0 {
                        db.delete_cf(&sessions, format!("w{w}-s{}", (n / 7) % 500))?;
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                Ok(n)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    // Clean shutdown: writers first, then the backup's last run.
    stopping.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().map_err(|_| "a writer panicked")??;
    }
    let summary = live.stop()?;
    println!(
        "stopped after {} runs; {} records in the backup",
        summary.runs,
        summary.last.map_or(0, |s| s.records_total)
    );
    let archives = std::fs::read_dir(&chain)?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "zip"))
        })
        .count();
    println!("{archives} archives in {}", chain.display());

    let target = dir.join("restored");
    let _ = std::fs::remove_dir_all(&target);
    restore_archives_to_path(
        &chain,
        &RestorePoint::Latest,
        &RocksFactory::default(),
        &target,
        &RestoreOptions::default(),
        &ArchiveOptions::default(),
    )?;
    let copy = Db::open_cf(&rocksdb::Options::default(), &target, ["sessions", "audit"])?;
    for cf in ["sessions", "audit"] {
        let (a, b) = (db.cf_handle(cf).ok_or(cf)?, copy.cf_handle(cf).ok_or(cf)?);
        let want: Vec<_> = db
            .iterator_cf(&a, rocksdb::IteratorMode::Start)
            .collect::<Result<_, _>>()?;
        let got: Vec<_> = copy
            .iterator_cf(&b, rocksdb::IteratorMode::Start)
            .collect::<Result<_, _>>()?;
        if want != got {
            return Err(format!("column family {cf}: the restore differs").into());
        }
        println!("{cf}: {} keys restored, equal to the service's", got.len());
    }
    Ok(())
}
