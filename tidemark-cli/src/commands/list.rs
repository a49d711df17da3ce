//! `tidemark list`: list the archives in a directory: full or incremental, checkpoint range, time, size.

use crate::output::human_bytes;
use crate::place::{self, Place};
use anyhow::{Context, Result};
use std::process::ExitCode;

/// List the archives in a directory: full or incremental, checkpoint range, time, size.
#[derive(clap::Args)]
pub struct Args {
    /// The archive directory or URL.
    pub dir: Place,
}

/// Runs `tidemark list`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args { dir } = args;
    let chain = place::chain(&dir).with_context(|| format!("list {dir}"))?;
    if chain.is_empty() {
        anyhow::bail!("{dir}: no tidemark archives here");
    }
    println!(
        "{:<40} {:<12} {:>12} {:>12} {:>10} {:>10} {:<6}  captured",
        "archive", "kind", "from", "to", "records", "size", "format"
    );
    for item in chain {
        let m = &item.manifest;
        println!(
            "{:<40} {:<12} {:>12} {:>12} {:>10} {:>10} {:<6}  {}",
            item.path.file_name().unwrap_or_default().to_string_lossy(),
            m.kind.to_string(),
            m.from
                .as_ref()
                .map_or("-".to_string(), |f| f.position.to_string()),
            m.to.position,
            m.collections.iter().map(|c| c.records).sum::<u64>(),
            human_bytes(item.size),
            format!("v{}", m.format_version),
            m.captured_at
        );
    }
    Ok(ExitCode::SUCCESS)
}
