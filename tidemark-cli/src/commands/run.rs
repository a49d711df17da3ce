//! `tidemark run`: runs the scheduled backup jobs of a TOML file until stopped (Ctrl-C or
//! SIGTERM), or once.

use crate::schedule;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Run the scheduled backup jobs of a TOML file until stopped (Ctrl-C or SIGTERM): each
/// job every `interval` (from `first_time`) or by `cron`, a full archive every `full_every`
/// incrementals, retention after each run, failed runs retried, a missed run run once.
#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (see the README).
    #[arg(long)]
    pub config: PathBuf,
    /// Run every job once and exit (for cron and tests).
    #[arg(long, conflicts_with = "check")]
    pub once: bool,
    /// Check the file and print each job's next five run times (local); run nothing.
    #[arg(long)]
    pub check: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9184): last success
    /// time, run duration, bytes and records written, runs by result, backup lag and chain
    /// length, per job.
    #[arg(long, value_name = "ADDR", conflicts_with = "check")]
    pub metrics_addr: Option<String>,
    /// The log as JSON lines: `log` objects (time, message) and, after each run, a `job_run`
    /// object (job, destination, result, seconds, records and bytes written, captured_at).
    #[arg(long, conflicts_with = "check")]
    pub json: bool,
}

/// Runs `tidemark run`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        config,
        once,
        check,
        metrics_addr,
        json,
    } = args;
    if json {
        schedule::json_log();
    }
    if check {
        schedule::check(&config, 5, &mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    }
    let stop = Arc::new(AtomicBool::new(false));
    if !once {
        let flag = stop.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    let log: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
    let all_ok = schedule::run(&config, once, stop, log, metrics_addr.as_deref())?;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
