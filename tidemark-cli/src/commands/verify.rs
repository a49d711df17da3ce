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
    let summary = serde_json::json!({
        "schema": 1,
        "type": "summary",
        "command": "verify",
        "intact": report.is_ok(),
        "records": report.records,
        "records_in_backup": report.records_in_backup,
        "collections": report.collections,
        "archives": report.archives,
        "problems": report.problems.len(),
    });
    let intact = if report.archives == 0 {
        format!(
            "Backup {dir} is intact: {} records in {} collections, every checksum matches",
            report.records, report.collections
        )
    } else {
        format!(
            "Backup {dir} is intact: {} records in {} collections; {} archive(s) with {} record \
             lines checked, every checksum matches",
            report.records_in_backup, report.collections, report.archives, report.records
        )
    };
    Ok(finish(
        &dir,
        &report.problems,
        summary,
        &intact,
        quiet,
        json,
    ))
}

/// Moves a progress bar (if shown) to `done` of `total`.
fn show(bar: &Option<indicatif::ProgressBar>, done: u64, total: u64) {
    if let Some(bar) = bar {
        bar.set_length(total);
        bar.set_position(done);
    }
}

/// Prints what verify found and gives the exit status: with `json` one `problem` line per
/// problem and then `summary`; otherwise each problem on stderr, then `intact` (unless `quiet`)
/// or an error line. 0 if nothing was found, [`crate::EXIT_DAMAGED`] otherwise.
fn finish(
    dir: &crate::place::Place,
    problems: &[backup_core::Error],
    summary: serde_json::Value,
    intact: &str,
    quiet: bool,
    json: bool,
) -> ExitCode {
    if json {
        for problem in problems {
            println!(
                "{}",
                serde_json::json!({"schema": 1, "type": "problem", "message": problem.to_string()})
            );
        }
        println!("{summary}");
    } else {
        for problem in problems {
            eprintln!("damaged: {problem}");
        }
        if problems.is_empty() {
            if !quiet {
                println!("{intact}");
            }
        } else {
            eprintln!(
                "tidemark: error: backup {dir} is damaged ({} problems)",
                problems.len()
            );
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_DAMAGED)
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
    let report = backup_core::verify_sealed(chain, &mut |done, total| show(&bar, done, total))
        .with_context(|| format!("verify {dir}"));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    const NEEDS_KEY: &str = "the records are encrypted: give --encrypt-passphrase-file or \
                             --encrypt-identity to check every record and the chain's continuity";
    let summary = serde_json::json!({
        "schema": 1,
        "type": "summary",
        "command": "verify",
        "intact": report.problems.is_empty(),
        "records": null,
        "records_checked": false,
        "archives": report.archives,
        "problems": report.problems.len(),
        "note": NEEDS_KEY,
    });
    let intact = format!(
        "Backup {dir}: {} encrypted archives ({}) intact as stored, every file's CRC32 matches; \
         {NEEDS_KEY}",
        report.archives,
        crate::output::human_bytes(report.bytes)
    );
    Ok(finish(dir, &report.problems, summary, &intact, quiet, json))
}
