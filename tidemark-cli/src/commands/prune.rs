//! `tidemark prune`: removes old archives that no kept backup depends on (never breaks a
//! chain; the newest archive is always kept).

use crate::output::human_bytes;
use crate::place;
use crate::RetentionArgs;
use anyhow::{Context, Result};
use std::process::ExitCode;

/// Remove old archives that no kept backup depends on (never breaks a chain; the newest
/// archive is always kept).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub backup: super::BackupPlace,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per archive (kept, with why, or removed), then a summary.
    #[arg(long)]
    pub json: bool,
    /// Print only errors.
    #[arg(long, short, conflicts_with = "json")]
    pub quiet: bool,
}

/// Runs `tidemark prune`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        backup,
        retention,
        dry_run,
        json,
        quiet,
    } = args;
    let dir = backup.place()?;
    let keys = backup.keys()?;
    super::stop_cleanly_on_interrupt("prune")?;
    let retention: backup_core::Retention = retention.into();
    // Planning reads the chain's manifests (a GET each on an object store) and removal deletes
    // one archive at a time: a spinner on a terminal says the command is at work.
    let spinner = crate::output::spinner(
        quiet || json,
        if dry_run {
            "pruning (dry run): reading the chain"
        } else {
            "pruning: reading the chain, removing what no kept backup needs"
        },
    );
    let plan =
        place::prune(&dir, &keys, &retention, dry_run).with_context(|| format!("prune {dir}"));
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let plan = plan?;
    if json {
        for i in &plan.items {
            println!(
                "{}",
                serde_json::json!({
                    "schema": 1,
                    "type": "archive",
                    "name": i.item.path.file_name().unwrap_or_default().to_string_lossy(),
                    "sequence": i.item.manifest.sequence,
                    "kept": i.kept(),
                    "reasons": i.reasons,
                    "size": i.item.size,
                })
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "summary",
                "command": "prune",
                "dry_run": dry_run,
                "removed": plan.removed().count(),
                "archives": plan.items.len(),
                "freed_bytes": plan.freed_bytes(),
            })
        );
    } else if !quiet {
        print_prune(&plan, dry_run);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a prune plan: every archive kept (with why) or removed, and a total.
pub(crate) fn print_prune(plan: &backup_core::PrunePlan, dry_run: bool) {
    for i in &plan.items {
        let name = i
            .item
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        if i.kept() {
            println!("keep    {name}  ({})", i.reasons.join(", "));
        } else {
            println!(
                "{} {name}  ({}, {})",
                if dry_run { "would remove" } else { "remove " },
                crate::output::to_second(&i.item.manifest.captured_at),
                human_bytes(i.item.size)
            );
        }
    }
    let n = plan.removed().count();
    println!(
        "{} {n} of {} archives, {}",
        if dry_run { "Would remove" } else { "Removed" },
        plan.items.len(),
        human_bytes(plan.freed_bytes())
    );
}
