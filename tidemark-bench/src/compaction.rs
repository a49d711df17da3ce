//! `compaction`: how many archives (objects) a restore reads after a long live backup,
//! compacted as `backup --live --compact` does it. A SQLite database gets a few changes per
//! interval (new rows and updates of hot rows); after each interval one incremental archive is
//! written and [`backup_core::compact_recent`] builds the blocks it closed. Then restores at
//! random points (and at the newest) count the archives they read and check the row count.

use anyhow::{Context, Result};
use backend_sqlite::{SqliteBackend, SqliteFactory};
use backup_core::RestorePoint;
use backup_core::{
    backup_archive_to, compact_recent, restore_chain, ArchiveOptions, BackupOptions, ChainStore,
    CompactOptions, Compression, LocalChain, RestoreOptions,
};
use std::time::{Duration, Instant};

/// Options of the compaction benchmark.
#[derive(clap::Args, Debug)]
pub struct CompactionArgs {
    /// Live intervals (archives after the full one).
    #[arg(long, default_value_t = 10_000)]
    pub intervals: u64,
    /// The compaction fanout.
    #[arg(long, default_value_t = backup_core::DEFAULT_FANOUT)]
    pub fanout: u64,
    /// Random restore points to measure.
    #[arg(long, default_value_t = 100)]
    pub points: usize,
    /// Keep the chain on S3 (moto's server on loopback) instead of a local directory.
    #[arg(long)]
    pub s3: bool,
}

/// Runs the benchmark.
pub fn compaction(args: &CompactionArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("live.db");
    let conn = rusqlite::Connection::open(&db)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO t SELECT i, printf('row %d', i) FROM n;",
    )?;
    let backend = SqliteBackend::open(&db)?;
    backend.track()?;
    let chain: Box<dyn ChainStore> = if args.s3 {
        let url = format!("{}/compaction", conformance_tests::s3::bucket("compaction"));
        Box::new(tidemark_remote::RemoteChain::open_with(
            &url,
            conformance_tests::s3::env(),
        )?)
    } else {
        let d = dir.path().join("chain");
        std::fs::create_dir_all(&d)?;
        Box::new(LocalChain::new(&d))
    };
    let state = dir.path().join("state");
    let archive = ArchiveOptions {
        compression: Compression::Zstd(3),
        threads: 2,
        ..ArchiveOptions::default()
    };
    let compact = CompactOptions {
        fanout: args.fanout,
        archive,
        dry_run: false,
    };
    let run = BackupOptions::default();
    // Rows in the table after each archive (sequence - 1).
    let mut rows = vec![1000u64];
    let (mut backup_time, mut compact_time) = (Duration::ZERO, Duration::ZERO);
    let mut compacted = 0usize;
    let mut leaves_bytes = 0u64;
    let started = Instant::now();
    for i in 0..=args.intervals {
        if i > 0 {
            // Two new rows, three updates of hot rows.
            let tx = conn.unchecked_transaction()?;
            for k in 0..2 {
                tx.execute(
                    "INSERT INTO t(v) VALUES (?1)",
                    [format!("interval {i} row {k}")],
                )?;
            }
            for k in 0..3u64 {
                tx.execute(
                    "UPDATE t SET v = ?1 WHERE id = ?2",
                    rusqlite::params![format!("hot {i}"), (i * 7 + k * 13) % 50 + 1],
                )?;
            }
            tx.commit()?;
            rows.push(rows[rows.len() - 1] + 2);
        }
        let t = Instant::now();
        let s = backup_archive_to(&backend, &*chain, &state, &run, &archive, &mut |_| {})
            .with_context(|| format!("backup {i}"))?;
        backup_time += t.elapsed();
        leaves_bytes += s.size;
        let sequence = i + 1;
        let t = Instant::now();
        let done = compact_recent(&*chain, &compact, sequence, &mut |_| {})?;
        compact_time += t.elapsed();
        compacted += done.written.len();
        if !done.skipped.is_empty() {
            anyhow::bail!("not compacted: {:?}", done.skipped);
        }
        if i > 0 && i % 1000 == 0 {
            eprintln!(
                "  {i} intervals, {compacted} compacted archives, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let survey = chain.survey()?;
    anyhow::ensure!(survey.problems.is_empty(), "{:?}", survey.problems);
    let objects = survey.items.len();
    let total_bytes: u64 = survey.items.iter().map(|i| i.size).sum();
    // sequence → checkpoint position.
    let mut position = vec![0u64; (args.intervals + 2) as usize];
    for item in &survey.items {
        position[item.manifest.sequence as usize] = item.manifest.to.position;
    }
    // Deterministic "random" points (an LCG), then the newest.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut points: Vec<u64> = (0..args.points)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % (args.intervals + 1) + 1
        })
        .collect();
    points.push(args.intervals + 1);
    let mut read = Vec::new();
    let mut times = Vec::new();
    for (n, &seq) in points.iter().enumerate() {
        let target = dir.path().join(format!("r{n}.db"));
        let t = Instant::now();
        let summary = restore_chain(
            &*chain,
            &RestorePoint::Checkpoint(position[seq as usize]),
            &SqliteFactory,
            &target,
            &RestoreOptions::default(),
            &archive,
        )
        .with_context(|| format!("restore at sequence {seq}"))?;
        times.push(t.elapsed());
        let got: u64 =
            rusqlite::Connection::open(&target)?
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        anyhow::ensure!(
            got == rows[(seq - 1) as usize],
            "restore at {seq}: {got} rows, the table had {}",
            rows[(seq - 1) as usize]
        );
        read.push(summary.archives);
        std::fs::remove_file(&target)?;
    }
    let newest = read.pop().unwrap_or_default();
    let newest_time = times.pop().unwrap_or_default();
    let mut sorted = read.clone();
    sorted.sort_unstable();
    let mean = read.iter().sum::<usize>() as f64 / read.len().max(1) as f64;
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let max = sorted.last().copied().unwrap_or_default();
    times.sort();
    let where_ = if args.s3 {
        "S3 (moto on loopback)"
    } else {
        "a local directory"
    };
    println!(
        "compaction: SQLite, {} live intervals into {where_}, fanout {}",
        args.intervals, args.fanout
    );
    println!(
        "  backups {:.1} s, compaction {:.1} s ({compacted} compacted archives); chain: {objects} \
         archives, {:.1} MiB ({:.2}x the backups' own {:.1} MiB)",
        backup_time.as_secs_f64(),
        compact_time.as_secs_f64(),
        total_bytes as f64 / 1048576.0,
        total_bytes as f64 / leaves_bytes.max(1) as f64,
        leaves_bytes as f64 / 1048576.0
    );
    println!(
        "  archives read by a restore at {} random points: mean {mean:.1}, p50 {p50}, max {max}; \
         at the newest: {newest} (goal <= 15, floor <= 30: {}); restore p50 {:.0} ms, at the \
         newest {:.0} ms",
        read.len(),
        if max <= 15 {
            "goal met"
        } else if max <= 30 {
            "floor met"
        } else {
            "MISSED"
        },
        times
            .get(times.len() / 2)
            .map_or(0.0, |t| t.as_secs_f64() * 1e3),
        newest_time.as_secs_f64() * 1e3
    );
    println!(
        "{}",
        serde_json::json!({
            "benchmark": "compaction", "store": "sqlite", "destination": if args.s3 { "s3" } else { "local" },
            "intervals": args.intervals, "fanout": args.fanout, "points": read.len(),
            "objects_read_mean": mean, "objects_read_p50": p50, "objects_read_max": max,
            "objects_read_newest": newest, "chain_objects": objects, "chain_bytes": total_bytes,
            "backup_bytes": leaves_bytes, "backup_s": backup_time.as_secs_f64(),
            "compaction_s": compact_time.as_secs_f64(), "compacted": compacted,
            "restore_p50_ms": times.get(times.len() / 2).map_or(0.0, |t| t.as_secs_f64() * 1e3),
            "restore_newest_ms": newest_time.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}
