//! `tidemark track`: installs (or removes) change tracking in a SQLite database.

use crate::stores::{self, StoreUrl};
use anyhow::Result;
use std::process::ExitCode;

/// Install change tracking in a SQLite database (needed for incremental backups).
#[derive(clap::Args)]
pub struct Args {
    /// The database: sqlite:PATH.
    #[arg(long)]
    pub source: StoreUrl,
    /// Remove tracking instead.
    #[arg(long)]
    pub remove: bool,
}

/// Runs `tidemark track`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args { source, remove } = args;
    println!("{}", stores::track(&source, remove)?);
    Ok(ExitCode::SUCCESS)
}
