//! A service that owns a SQLite database and backs it up live while it writes.
//!
//! The service keeps its own `rusqlite` connection and writes orders from a worker thread.
//! tidemark installs change tracking once (the service opts in: it is the only write tidemark
//! makes to the database), then a live backup makes every committed change durable in a folder
//! backup each `flush_interval`. On shutdown the writers stop first, then the live backup takes
//! one last run, so the backup holds everything the service wrote. The example then restores
//! the backup into a new file and checks it against the database with plain SQL.
//!
//! `cargo run -p tidemark --example sqlite_service --features sqlite [-- DIR]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidemark::sqlite::{SqliteBackend, SqliteFactory};
use tidemark::{restore_folder_to_path, LiveBackup, LiveEvent, LiveOptions, RestoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("orders.db");
    let backup = dir.join("orders-backup");

    // The service's own database and connection.
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INTEGER);",
    )?;

    // Once: change tracking, so that every run after the first is incremental.
    let backend = SqliteBackend::open(&db)?;
    backend.track()?;
    let live = LiveBackup::start(
        Arc::new(backend),
        backup.clone(),
        LiveOptions {
            flush_interval: Duration::from_millis(250),
            ..LiveOptions::default()
        },
    );
    let first = live
        .wait_initial(&mut |_| {})
        .ok_or("the initial backup failed")?;
    println!("initial backup: {} records", first.records_total);

    // The service at work: a writer thread, until shutdown is asked for.
    let stopping = Arc::new(AtomicBool::new(false));
    let writer = {
        let stopping = stopping.clone();
        let db = db.clone();
        std::thread::spawn(move || -> rusqlite::Result<u64> {
            let conn = rusqlite::Connection::open(&db)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let mut n = 0u64;
            while !stopping.load(Ordering::SeqCst) {
                conn.execute(
                    "INSERT INTO orders(item, qty) VALUES (?1, ?2)",
                    rusqlite::params![format!("item {n}"), n % 7],
                )?;
                if n % 10 == 0 {
                    conn.execute("UPDATE orders SET qty = qty + 1 WHERE id % 3 = 0", [])?;
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let runs = live
        .events()
        .try_iter()
        .filter(|e| matches!(e, LiveEvent::Completed(_)))
        .count();
    println!("while the service wrote: {runs} incremental runs");

    // Clean shutdown: writers first, then the backup's last run.
    stopping.store(true, Ordering::SeqCst);
    let written = writer.join().map_err(|_| "the writer panicked")??;
    let summary = live.stop()?;
    let last = summary.last.ok_or("no run completed")?;
    println!(
        "stopped: {written} inserts, {} runs, {} records in the backup",
        summary.runs, last.records_total
    );

    // The backup holds exactly what the database holds.
    let copy = dir.join("restored.db");
    let _ = std::fs::remove_file(&copy);
    restore_folder_to_path(&backup, &SqliteFactory, &copy, &RestoreOptions::default())?;
    let digest = |path: &std::path::Path| -> rusqlite::Result<(i64, i64)> {
        rusqlite::Connection::open(path)?.query_row(
            "SELECT count(*), total(qty * id) FROM orders",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)? as i64)),
        )
    };
    let (want, got) = (digest(&db)?, digest(&copy)?);
    println!("source {want:?}, restored {got:?}");
    if want != got {
        return Err("the restored database differs from the source".into());
    }
    println!("restored copy matches the database");
    drop(conn);
    Ok(())
}
