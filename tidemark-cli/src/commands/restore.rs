//! `tidemark restore`: rebuilds a store from a backup (into any kind of store).

use crate::commands::{open_backup, Backup};
use crate::output::human_bytes;
use crate::stores::{self, StoreUrl};
use anyhow::{Context, Result};
use backup_core::{
    restore_chain, restore_folder_to_path, ArchiveOptions, RestoreOptions, RestorePoint,
};
use std::process::ExitCode;

/// Rebuild a store from a backup (into any kind of store).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub backup: super::BackupPlace,
    /// The store to create: sqlite:PATH, rocksdb:PATH or sled:PATH.
    #[arg(long)]
    pub to: StoreUrl,
    /// Replace a target that already holds data.
    #[arg(long)]
    pub force: bool,
    /// Restore only these collections (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub collections: Option<Vec<String>>,
    /// Archives: restore the state at this checkpoint (see `tidemark list`) or time (the newest
    /// backup captured at or before it), not the newest. A time is RFC 3339
    /// (2026-12-01T03:29:47Z), a local date and time (2026-12-01 03:29:47) or a time ago (-2h,
    /// -30m, -1d).
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<RestorePoint>,
    /// RocksDB targets: write SST files in this block-based table format_version (2-7)
    /// instead of the source's (recorded in the backup) or, when unknown, 4 (read by RocksDB
    /// 5.16 and later).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(2..=7))]
    pub rocksdb_format_version: Option<i32>,
    /// Archives: threads that decompress (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Partial recovery: restore everything intact, leave out what is damaged (a document, a
    /// part of an archive, a whole archive), list it, and exit 3.
    #[arg(long)]
    pub skip_damaged: bool,
    /// Print only errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as one JSON object (`{"schema": 1, "type": "summary", …}`).
    #[arg(long)]
    pub json: bool,
}

/// Runs `tidemark restore`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        backup,
        to,
        force,
        collections,
        at,
        rocksdb_format_version,
        threads,
        skip_damaged,
        quiet,
        json,
    } = args;
    let from = backup.place()?;
    let keys = backup.keys()?;
    if rocksdb_format_version.is_some() && to.kind != backup_core::StoreKind::Rocksdb {
        anyhow::bail!("--rocksdb-format-version applies to rocksdb: targets only, not {to}");
    }
    let factory = stores::factory(to.kind, rocksdb_format_version)?;
    // Ctrl-C or SIGTERM: remove the unfinished store beside the target (the target is
    // untouched until the swap), then exit.
    ctrlc::set_handler(|| {
        if backup_core::abandon_in_progress() {
            eprintln!("tidemark: restore interrupted; the target is unchanged");
        } else {
            eprintln!("tidemark: restore interrupted");
        }
        std::process::exit(130);
    })
    .context("installing the Ctrl-C / SIGTERM handler")?;
    let bar = crate::output::restore_bar(quiet || json);
    let options = RestoreOptions {
        force,
        skip_damaged,
        collections: collections.map(|c| {
            c.into_iter()
                .map(backup_core::CollectionName::new)
                .collect()
        }),
        progress: bar.clone().map(|bar| {
            backup_core::RestoreProgress(std::sync::Arc::new(move |done, total| {
                if let Some(total) = total {
                    bar.set_length(total.max(done));
                }
                bar.set_position(done);
            }))
        }),
        ..RestoreOptions::default()
    };
    let point = at.clone().unwrap_or(RestorePoint::Latest);
    let archive = ArchiveOptions {
        threads: threads.map_or_else(backup_core::default_threads, usize::from),
        ..ArchiveOptions::default()
    };
    let summary = (|| -> anyhow::Result<_> {
        Ok(match open_backup(&from, &keys)? {
            Backup::Chain(chain) => restore_chain(
                &*chain,
                &point,
                factory.as_ref(),
                &to.path,
                &options,
                &archive,
            )?,
            Backup::Folder(_) if at.is_some() => {
                anyhow::bail!("--at needs an archive directory; {from} is not one")
            }
            Backup::Folder(dir) => {
                restore_folder_to_path(&dir, factory.as_ref(), &to.path, &options)?
            }
        })
    })()
    .with_context(|| format!("restore of {from} to {to}"));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = summary.map_err(|e| {
        // Leaving out damaged archives cannot help when the chain's key file is the damage.
        if crate::is_damage(&e) && !skip_damaged && !crate::is_key_damage(&e) {
            e.context(crate::Hint(
                "restore --skip-damaged restores what is intact and lists what it leaves out"
                    .into(),
            ))
        } else {
            e
        }
    })?;
    for note in &summary.avoided {
        eprintln!("tidemark: warning: damaged archive {note}; run `tidemark verify {from}`");
    }
    for note in &summary.skipped {
        eprintln!("tidemark: left out (damaged): {note}");
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "summary",
                "command": "restore",
                "from": from.to_string(),
                "to": to.to_string(),
                "records": summary.records,
                "collections": summary.collections,
                "bytes": summary.bytes,
                "archives": summary.archives,
                "avoided": summary.avoided,
                "skipped": summary.skipped,
                "sequence": summary.point.as_ref().map(|p| p.0),
                "captured_at": summary.point.as_ref().map(|p| p.1.clone()),
                "seconds": summary.elapsed.as_secs_f64(),
            })
        );
    } else if !quiet {
        let read = match summary.archives {
            0 => String::new(),
            1 => ", from 1 archive".to_string(),
            n => format!(", from {n} archives"),
        };
        println!(
            "Restore of {from} to {to}: {} records in {} collections, {}{read} in {:.2} seconds",
            summary.records,
            summary.collections,
            human_bytes(summary.bytes),
            summary.elapsed.as_secs_f64()
        );
        if let (Some(at), Some((sequence, captured))) = (&at, &summary.point) {
            let asked = match at {
                RestorePoint::Time(t) => format!(
                    "the newest backup captured at or before {}",
                    t.format(time::macros::format_description!(
                        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
                    ))
                    .unwrap_or_default()
                ),
                RestorePoint::Checkpoint(c) => format!("checkpoint {c}"),
                RestorePoint::Latest => "the newest backup".into(),
            };
            println!(
                "Restore point: {asked}: archive {sequence:06}, captured {}",
                crate::output::to_second(captured)
            );
        }
        if to.kind == backup_core::StoreKind::Sqlite {
            println!(
                "Note: {to} has no change tracking (a restore does not copy it): run `tidemark \
                 track --source {to}` before backing it up, or each backup will read the whole \
                 database"
            );
        }
    }
    if !summary.skipped.is_empty() {
        eprintln!(
            "tidemark: error: restored what is intact; {} damaged part(s) left out (listed above)",
            summary.skipped.len()
        );
        return Ok(ExitCode::from(crate::EXIT_DAMAGED));
    }
    Ok(ExitCode::SUCCESS)
}
