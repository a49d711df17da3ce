//! `tidemark`: back up and restore embedded databases (RocksDB, sled, SQLite) while they run.

mod alloc;
mod commands;
mod metrics;
mod output;
mod place;
mod schedule;
mod stores;
mod timing;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Back up and restore RocksDB, sled and SQLite databases while they run"
)]
pub(crate) struct Cli {
    /// Say more on stderr: -v what each step did (archives written, the restore's path,
    /// compaction), -vv each request to an object store and each archive checked.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back a store up into a folder: full the first time, incremental after.
    Backup(commands::backup::Args),
    /// Rebuild a store from a backup (into any kind of store).
    Restore(commands::restore::Args),
    /// Install change tracking in a SQLite database (needed for incremental backups).
    Track(commands::track::Args),
    /// Check a backup end to end (every checksum, every count) without restoring it.
    Verify(commands::verify::Args),
    /// List the archives in a directory: full or incremental, checkpoint range, time, size.
    List(commands::list::Args),
    /// Run the scheduled backup jobs of a TOML file until stopped (Ctrl-C or SIGTERM): each
    /// job every `interval` (from `first_time`) or by `cron`, a full archive every `full_every`
    /// incrementals, retention after each run, failed runs retried, a missed run run once.
    Run(commands::run::Args),
    /// Remove old archives that no kept backup depends on (never breaks a chain; the newest
    /// archive is always kept).
    Prune(commands::prune::Args),
    /// Merge runs of small archives (live backups) into compacted ones, in levels, so that a
    /// restore at any point reads few archives; every point stays restorable.
    Compact(commands::compact::Args),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(commands::completions::CompletionsArgs),
    /// Print the man page (roff).
    Man(commands::completions::ManArgs),
}

/// Retention rules (restic-style); at least one is required.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct RetentionArgs {
    /// Keep the newest N backups.
    #[arg(long, value_name = "N")]
    pub(crate) keep_last: Option<usize>,
    /// Keep the newest backup of each of the newest N days (UTC) that have backups.
    #[arg(long, value_name = "N")]
    pub(crate) keep_daily: Option<usize>,
    /// Keep the newest backup of each of the newest N ISO weeks (UTC) that have backups.
    #[arg(long, value_name = "N")]
    pub(crate) keep_weekly: Option<usize>,
    /// Keep every backup captured within this long before the newest one (12h, 30d, 2w).
    #[arg(long, value_name = "DURATION", value_parser = backup_core::parse_within)]
    pub(crate) keep_within: Option<u64>,
}

impl From<RetentionArgs> for backup_core::Retention {
    fn from(r: RetentionArgs) -> Self {
        backup_core::Retention {
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_within: r.keep_within,
        }
    }
}

/// Encryption at rest (archive chains, local or remote). A new chain is encrypted when a
/// passphrase file or a recipient is given: its key is made, wrapped and stored with it. An
/// encrypted chain is read (and continued) with the passphrase file or an identity.
#[derive(clap::Args, Clone, Debug, Default)]
pub(crate) struct KeyArgs {
    /// A file whose first line is the passphrase: encrypts a new chain with it, and opens an
    /// encrypted chain.
    #[arg(long, value_name = "FILE")]
    pub(crate) encrypt_passphrase_file: Option<std::path::PathBuf>,
    /// An age recipient (age1…) a new chain's key is encrypted to (repeat for several).
    #[arg(long, value_name = "RECIPIENT")]
    pub(crate) encrypt_recipient: Vec<String>,
    /// An age identity file (AGE-SECRET-KEY-1…, as age-keygen writes) that opens an encrypted
    /// chain whose key was encrypted to its recipient (repeat for several).
    #[arg(long, value_name = "FILE")]
    pub(crate) encrypt_identity: Vec<std::path::PathBuf>,
}

impl KeyArgs {
    /// The key options these flags give (the passphrase file is read here).
    pub(crate) fn options(&self) -> Result<backup_core::KeyOptions> {
        Ok(backup_core::KeyOptions {
            passphrase: self
                .encrypt_passphrase_file
                .as_deref()
                .map(backup_core::KeyOptions::read_passphrase)
                .transpose()?,
            recipients: self.encrypt_recipient.clone(),
            identity_files: self.encrypt_identity.clone(),
            remembered: None,
        })
    }
}

/// The backup format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Folder,
    Archive,
}

/// The archive codec.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Codec {
    Deflate,
    Zstd,
    None,
}

fn main() -> ExitCode {
    alloc::configure();
    // A RocksDB source's secondary instance keeps every SST file open.
    backup_core::raise_open_files_limit();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    {
        use tracing_subscriber::prelude::*;
        // tidemark's own crates at the level asked for; dependencies (object_store, hyper)
        // only warn.
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("backup_core", level)
            .with_target("backend_rocksdb", level)
            .with_target("backend_sqlite", level)
            .with_target("backend_sled", level)
            .with_target("tidemark_remote", level)
            .with_target("tidemark", level)
            .with_default(tracing::Level::WARN);
        if cli.verbose == 0 {
            // Only warnings and errors: said as the CLI says its errors, without the clock.
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(PlainWarnings)
                .with_filter(targets);
            let _ = tracing_subscriber::registry().with(layer).try_init();
        } else {
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(false)
                .with_timer(tracing_subscriber::fmt::time::uptime())
                .with_filter(targets);
            let _ = tracing_subscriber::registry().with(layer).try_init();
        }
    }
    let result = run(cli);
    if result.is_err() && commands::interrupted() {
        // The Ctrl-C handler is cleaning up and exits with status 130 when done.
        loop {
            std::thread::park();
        }
    }
    if result.is_err() {
        // A failed run's unfinished files (an archive being written, a key state's new files):
        // nothing renamed into place is among them, so the destination is as the last
        // complete run left it, without debris for the next run to remove.
        backup_core::remove_temp_files();
    }
    alloc::exiting();
    let code = match result {
        Ok(code) => code,
        // A reader that went away (`tidemark … | head`) is not a failed backup: the work is done.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidemark: error: {}", plain(&e));
            if is_damage(&e) {
                ExitCode::from(EXIT_DAMAGED)
            } else {
                ExitCode::FAILURE
            }
        }
    };
    exit_now(code)
}

/// Ends the process with `code` once stdout and stderr are flushed, without the exit handlers
/// a return from `main` runs: they are RocksDB's static destructors (its option tables, freed
/// node by node), 0.6 ms of user time before `exit_group` in every command of a binary with
/// RocksDB (`perf trace`: 0.67–0.77 ms from the last write to `exit_group`, 0.09–0.15 ms
/// without them). The command's own files are closed, renamed and synced by then: `run` has
/// returned and dropped its handles (a store's, which waits for its background work; a
/// destination's lock). Threads still running are ended either way. An exit code this does not
/// know, or output that cannot be flushed, takes the usual way out.
fn exit_now(code: ExitCode) -> ExitCode {
    use std::io::Write;
    let known = [
        (ExitCode::SUCCESS, 0),
        (ExitCode::FAILURE, 1),
        (ExitCode::from(EXIT_DAMAGED), i32::from(EXIT_DAMAGED)),
    ];
    let raw = known
        .into_iter()
        .find_map(|(known, raw)| (known == code).then_some(raw));
    let flushed = std::io::stdout().flush().is_ok() && std::io::stderr().flush().is_ok();
    match raw {
        Some(raw) if flushed => {
            #[allow(unsafe_code)]
            // SAFETY: `_exit` ends the process at once and nothing after it runs; what the
            // command wrote was closed and synced before `run` returned (see above).
            unsafe {
                libc::_exit(raw)
            }
        }
        _ => code,
    }
}

/// Log events at the default verbosity (warnings and errors) as `tidemark: warning: …`, the way
/// the CLI prints its errors, instead of the `-v` log's clock and level columns.
struct PlainWarnings;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainWarnings
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let what = if *event.metadata().level() == tracing::Level::ERROR {
            "error"
        } else {
            "warning"
        };
        write!(writer, "tidemark: {what}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The exit status when a backup was found damaged (verify found a problem; restore refused a
/// damaged backup), apart from 1 for every other error and 2 for a command line clap refused,
/// so that cron and monitoring can tell lost data from a failed run.
pub(crate) const EXIT_DAMAGED: u8 = 3;

/// Whether the error is a backup found damaged (a checksum, count or chain problem).
pub(crate) fn is_damage(e: &anyhow::Error) -> bool {
    any_cause(e, |c| {
        matches!(
            c,
            backup_core::Error::Damaged { .. } | backup_core::Error::Manifest { .. }
        )
    })
}

/// Whether `e` is damage of an encrypted chain's key files (the key file, and its copy when
/// there is one), which every archive needs.
pub(crate) fn is_key_damage(e: &anyhow::Error) -> bool {
    any_cause(e, |c| {
        matches!(
            c,
            backup_core::Error::Damaged { path, .. }
                if path.file_name().is_some_and(|n| {
                    n == backup_core::KEY_FILE || n == backup_core::KEY_FILE_COPY
                })
        )
    })
}

/// Whether `e` or one of its causes is a [`backup_core::Error`] that `is` accepts.
fn any_cause(e: &anyhow::Error, is: impl Fn(&backup_core::Error) -> bool) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<backup_core::Error>().is_some_and(&is))
}

/// An error and its causes on one line, each cause once: library errors already name their
/// cause in their message (`write PATH: No space left on device`), so a cause whose text is
/// already there is not repeated.
pub(crate) fn plain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    let hint = e.downcast_ref::<Hint>().map(|Hint(h)| h.as_str());
    for cause in e.chain() {
        let text = cause.to_string();
        if Some(text.as_str()) == hint {
            continue;
        }
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    if let Some(hint) = hint {
        line.push_str("\n  ");
        line.push_str(hint);
    }
    line
}

/// What the user can do about an error, attached as its context: [`plain`] prints it on a line
/// of its own after the error and its causes, instead of before them.
#[derive(Debug)]
pub(crate) struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Backup(args) => commands::backup::run(args),
        Command::Restore(args) => commands::restore::run(args),
        Command::Track(args) => commands::track::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::List(args) => commands::list::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Prune(args) => commands::prune::run(args),
        Command::Compact(args) => commands::compact::run(args),
        Command::Completions(args) => commands::completions::completions(args),
        Command::Man(args) => commands::completions::man(args),
    }
}
