//! `tidemark compact`: merges runs of small archives (a live backup writes one per interval)
//! into compacted archives, in levels, so that a restore reads few archives; with `--keep-…`,
//! then prunes what no kept point needs.

use crate::output::human_bytes;
use crate::place;
use crate::{Codec, RetentionArgs};
use anyhow::{Context, Result};
use backup_core::{ChainStore, CompactOptions};
use std::process::ExitCode;

/// Merge consecutive incrementals into compacted archives, in levels (each covering `--fanout`
/// archives of the level below), so that a restore at any point reads few archives. Every point
/// stays restorable; with `--keep-…` rules, the archives no kept point needs are then removed
/// as `tidemark prune` would.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub backup: super::BackupPlace,
    /// Archives of one level that one compacted archive of the next level covers.
    #[arg(long, default_value_t = backup_core::DEFAULT_FANOUT,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub fanout: u64,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Codec of the compacted archives. Default, when neither this nor `--level` is given: the
    /// chain's (its newest archive's, at that codec's default level).
    #[arg(long, value_enum)]
    pub compression: Option<Codec>,
    /// Compression level: 0-9 for deflate (default 9), 1-22 for zstd (default 3).
    #[arg(long)]
    pub level: Option<u8>,
    /// Threads that decompress, merge and compress (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Print what would be written (and removed), write and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per compacted archive, then a summary.
    #[arg(long)]
    pub json: bool,
    /// Print only errors.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
}

/// Runs `tidemark compact`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        backup,
        fanout,
        retention,
        compression,
        level,
        threads,
        dry_run,
        json,
        quiet,
    } = args;
    let dir = backup.place()?;
    let keys = backup.keys()?;
    super::stop_cleanly_on_interrupt("compact")?;
    let retention: backup_core::Retention = retention.into();
    let store: Box<dyn ChainStore> =
        place::open_chain(&dir, &keys).with_context(|| format!("compact {dir}"))?;
    let _lock = if dry_run {
        None
    } else {
        Some(
            store
                .lock("compact")
                .with_context(|| format!("compact {dir}"))?,
        )
    };
    let (compression, follow_chain) = super::backup::chosen_codec(compression, level)?;
    let options = CompactOptions {
        fanout,
        archive: backup_core::ArchiveOptions {
            compression,
            threads: threads.map_or_else(backup_core::default_threads, usize::from),
            follow_chain,
            ..Default::default()
        },
        dry_run,
    };
    let spinner = crate::output::spinner(quiet || json, "compacting");
    let mut written = 0usize;
    let summary = backup_core::compact_chain(&*store, &options, &mut |c| {
        written += 1;
        if let Some(s) = &spinner {
            s.set_message(format!(
                "compacting: {written} written, the last {:06}..{:06}",
                c.first, c.last
            ));
        }
        let name = c.file.file_name().unwrap_or_default().to_string_lossy();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "schema": 1,
                    "type": "compacted",
                    "name": name,
                    "first": c.first,
                    "last": c.last,
                    "inputs": c.inputs,
                    "input_bytes": c.input_bytes,
                    "size": c.size,
                    "entries": c.entries,
                })
            );
        } else if !quiet {
            let line = if dry_run {
                format!(
                    "would compact {:06}..{:06}  ({} archives, {})",
                    c.first,
                    c.last,
                    c.inputs,
                    human_bytes(c.input_bytes)
                )
            } else {
                format!(
                    "compacted {:06}..{:06} into {name}  ({} archives, {} → {}, {} records)",
                    c.first,
                    c.last,
                    c.inputs,
                    human_bytes(c.input_bytes),
                    human_bytes(c.size),
                    c.entries
                )
            };
            // Printed while the spinner is out of the way, on a terminal.
            match &spinner {
                Some(s) => s.suspend(|| println!("{line}")),
                None => println!("{line}"),
            }
        }
    })
    .with_context(|| format!("compact {dir}"));
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let summary = summary?;
    for why in &summary.skipped {
        eprintln!("tidemark: not compacted: {why}");
    }
    let pruned = if retention.is_empty() {
        None
    } else {
        backup_core::check_retention(&store.location(), &retention)?;
        Some(
            backup_core::prune_chain(&*store, &retention, dry_run)
                .with_context(|| format!("prune {dir}"))?,
        )
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "summary",
                "command": "compact",
                "dry_run": dry_run,
                "compacted": summary.written.len(),
                "skipped": summary.skipped,
                "removed": pruned.as_ref().map_or(0, |p| p.removed().count()),
                "freed_bytes": pruned.as_ref().map_or(0, |p| p.freed_bytes()),
                "seconds": summary.elapsed.as_secs_f64(),
            })
        );
    } else if !quiet {
        println!(
            "{} {} compacted archive{} in {:.1} s",
            if dry_run { "Would write" } else { "Wrote" },
            summary.written.len(),
            if summary.written.len() == 1 { "" } else { "s" },
            summary.elapsed.as_secs_f64()
        );
        if let Some(plan) = &pruned {
            super::prune::print_prune(plan, dry_run);
        }
    }
    Ok(ExitCode::SUCCESS)
}
