//! `tidemark verify`: checks a backup end to end (every checksum, every count) without
//! restoring it; `--json` for scripts, exit status 1 on damage.

use crate::commands::{open_backup, Backup};
use anyhow::{Context, Result};
use backup_core::{verify_chain_with, verify_folder_with};
use std::process::ExitCode;

/// Check a backup end to end (every checksum, every count) without restoring it.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub backup: super::BackupPlace,
    /// One JSON object per problem found, then a summary (`{"schema": 1, "type": "summary",
    /// "intact": …}`; see the README).
    #[arg(long)]
    pub json: bool,
    /// Print only problems (the exit status tells the rest).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `tidemark verify`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        backup,
        json,
        quiet,
    } = args;
    let dir = backup.place()?;
    let keys = backup.keys()?;
    let hidden = quiet || json;
    if !keys.can_open() {
        if let Some(chain) =
            crate::place::sealed_chain(&dir).with_context(|| format!("verify {dir}"))?
        {
            return verify_sealed(&dir, &*chain, quiet, json);
        }
    }
    let mut bar = None;
    let show = |bar: &Option<indicatif::ProgressBar>, done: u64, total: u64| {
        if let Some(bar) = bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let report = (|| -> anyhow::Result<_> {
        Ok(match open_backup(&dir, &keys)? {
            Backup::Chain(chain) => {
                let b = bar.insert(crate::output::bytes_bar(hidden, "verifying"));
                verify_chain_with(&*chain, &mut |done, total| show(b, done, total))?
            }
            Backup::Folder(d) => {
                let b = bar.insert(crate::output::records_bar_on_terminal(hidden, "verifying"));
                verify_folder_with(&d, &mut |done, total| show(b, done, total))?
            }
        })
    })()
    .with_context(|| format!("verify {dir}"));
    if let Some(bar) = bar.flatten() {
        bar.finish_and_clear();
    }
    let report = report?;
    if json {
        for problem in &report.problems {
            println!(
                "{}",
                serde_json::json!({"schema": 1, "type": "problem", "message": problem.to_string()})
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "summary",
                "command": "verify",
                "intact": report.is_ok(),
                "records": report.records,
                "collections": report.collections,
                "problems": report.problems.len(),
            })
        );
        return Ok(if report.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::EXIT_DAMAGED)
        });
    }
    for problem in &report.problems {
        eprintln!("damaged: {problem}");
    }
    if report.is_ok() {
        if !quiet {
            println!(
                "Backup {dir} is intact: {} records in {} collections, every checksum matches",
                report.records, report.collections
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "tidemark: error: backup {dir} is damaged ({} problems)",
            report.problems.len()
        );
        Ok(ExitCode::from(crate::EXIT_DAMAGED))
    }
}

/// Verify of an encrypted chain without its key: every archive's stored bytes against the
/// CRC32 in its name (and an object's size against its seal). The records are sealed: the
/// message says that checking them needs the key.
fn verify_sealed(
    dir: &crate::place::Place,
    chain: &dyn backup_core::ChainStore,
    quiet: bool,
    json: bool,
) -> Result<ExitCode> {
    let bar = crate::output::bytes_bar(quiet || json, "verifying (stored bytes)");
    let report = backup_core::crypt::verify_sealed(chain, &mut |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    })
    .with_context(|| format!("verify {dir}"));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let intact = report.problems.is_empty();
    const NEEDS_KEY: &str = "the records are encrypted: give --encrypt-passphrase-file or \
                             --encrypt-identity to check every record and the chain's continuity";
    if json {
        for problem in &report.problems {
            println!(
                "{}",
                serde_json::json!({"schema": 1, "type": "problem", "message": problem.to_string()})
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "summary",
                "command": "verify",
                "intact": intact,
                "records": null,
                "records_checked": false,
                "archives": report.archives,
                "problems": report.problems.len(),
                "note": NEEDS_KEY,
            })
        );
    } else {
        for problem in &report.problems {
            eprintln!("damaged: {problem}");
        }
        if intact && !quiet {
            println!(
                "Backup {dir}: {} encrypted archives ({}) intact as stored, every file's CRC32 \
                 matches; {NEEDS_KEY}",
                report.archives,
                crate::output::human_bytes(report.bytes)
            );
        }
    }
    if intact {
        Ok(ExitCode::SUCCESS)
    } else {
        if !json {
            eprintln!(
                "tidemark: error: backup {dir} is damaged ({} problems)",
                report.problems.len()
            );
        }
        Ok(ExitCode::from(crate::EXIT_DAMAGED))
    }
}
