//! `tidemark verify`: check a backup end to end (every checksum, every count) without restoring it.

use crate::commands::is_archive;
use crate::place::{self, Place};
use anyhow::{Context, Result};
use backup_core::{verify_archives, verify_chain, verify_folder};
use std::process::ExitCode;

/// Check a backup end to end (every checksum, every count) without restoring it.
#[derive(clap::Args)]
pub struct Args {
    /// The backup directory or archive chain URL.
    pub dir: Place,
}

/// Runs `tidemark verify`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args { dir } = args;
    let report = (|| -> anyhow::Result<_> {
        Ok(match &dir {
            Place::Remote(url) => verify_chain(&*place::open_remote(url)?)?,
            Place::Local(d) if is_archive(d)? => verify_archives(d)?,
            Place::Local(d) => verify_folder(d)?,
        })
    })()
    .with_context(|| format!("verify {dir}"))?;
    for problem in &report.problems {
        eprintln!("damaged: {problem}");
    }
    if report.is_ok() {
        println!(
            "Backup {dir} is intact: {} records in {} collections, every checksum matches",
            report.records, report.collections
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "tidemark: error: backup {dir} is damaged ({} problems)",
            report.problems.len()
        );
        Ok(ExitCode::FAILURE)
    }
}
