//! `tidemark`: back up and restore embedded databases (RocksDB, sled, SQLite) while they run.

mod place;
mod schedule;
mod stores;

use anyhow::{Context, Result};
use backup_core::archive;
use backup_core::{
    backup_archive, backup_folder, restore_archives_to_path, restore_chain, restore_folder_to_path,
    verify_archives, verify_chain, verify_folder, ArchiveOptions, BackupMode, BackupOptions,
    Compression, Event, RestoreOptions,
};
use clap::{Parser, Subcommand};
use place::Place;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use stores::StoreUrl;

#[derive(Parser)]
#[command(
    name = "tidemark",
    version,
    about = "Back up and restore RocksDB, sled and SQLite databases while they run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back a store up into a folder: full the first time, incremental after.
    Backup {
        /// The store: sqlite:PATH, rocksdb:PATH or sled:PATH.
        #[arg(long)]
        source: StoreUrl,
        /// The backup directory, or an object store URL for archives (s3://bucket/prefix).
        /// Repeat it to back up to several destinations in one run: each gets its own
        /// backup, in the order given, and one's failure does not stop the others.
        #[arg(long, required = true)]
        to: Vec<Place>,
        /// Remote destinations: the local directory of the key state that incrementals
        /// continue from (default under ~/.cache/tidemark/state/).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Take a full backup even if an incremental is possible.
        #[arg(long)]
        full: bool,
        /// `folder` (plain JSON files, updated in place) or `archive` (one compressed zip per
        /// backup, chained).
        #[arg(long, value_enum, default_value_t = Format::Folder)]
        format: Format,
        /// Archive codec.
        #[arg(long, value_enum, default_value_t = Codec::Deflate)]
        compression: Codec,
        /// Archive compression level: 0-9 for deflate (default 9), 1-22 for zstd (default 3).
        #[arg(long)]
        level: Option<u8>,
        /// Archive output buffer size in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        buffer_size: usize,
        /// Archives: threads that encode and compress (default: every core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Keep following the store until stopped (Ctrl-C or SIGTERM), making changes durable
        /// in the backup every `--interval` seconds.
        #[arg(long)]
        live: bool,
        /// Live mode: the flush interval in seconds.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print only errors.
        #[arg(long, short)]
        quiet: bool,
        /// Print one JSON object per line (write events, notices, the summary).
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a store from a backup (into any kind of store).
    Restore {
        /// The backup directory or archive chain URL.
        #[arg(long)]
        from: Place,
        /// The store to create: sqlite:PATH, rocksdb:PATH or sled:PATH.
        #[arg(long)]
        to: StoreUrl,
        /// Replace a target that already holds data.
        #[arg(long)]
        force: bool,
        /// Restore only these collections (comma-separated).
        #[arg(long, value_delimiter = ',')]
        collections: Option<Vec<String>>,
        /// Archives: restore the state at this checkpoint (see `tidemark list`) or RFC 3339 time
        /// (the newest backup captured at or before it), not the newest.
        #[arg(long)]
        at: Option<archive::RestorePoint>,
        /// RocksDB targets: write SST files in this block-based table format_version (2-7)
        /// instead of the source's (recorded in the backup) or, when unknown, 4 (read by RocksDB
        /// 5.16 and later).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(2..=7))]
        rocksdb_format_version: Option<i32>,
        /// Archives: threads that decompress (default: every core).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Print only errors.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Install change tracking in a SQLite database (needed for incremental backups).
    Track {
        /// The database: sqlite:PATH.
        #[arg(long)]
        source: StoreUrl,
        /// Remove tracking instead.
        #[arg(long)]
        remove: bool,
    },
    /// Check a backup end to end (every checksum, every count) without restoring it.
    Verify {
        /// The backup directory or archive chain URL.
        dir: Place,
    },
    /// List the archives in a directory: full or incremental, checkpoint range, time, size.
    List {
        /// The archive directory or URL.
        dir: Place,
    },
    /// Run the scheduled backup jobs of a TOML file until stopped (Ctrl-C or SIGTERM): each
    /// job every `interval`, a full archive every `full_every` incrementals, retention after
    /// each run, failed runs retried.
    Run {
        /// The configuration file (see the README).
        #[arg(long)]
        config: PathBuf,
        /// Run every job once and exit (for cron and tests).
        #[arg(long)]
        once: bool,
    },
    /// Remove old archives that no kept backup depends on (never breaks a chain; the newest
    /// archive is always kept).
    Prune {
        /// The archive directory or URL.
        dir: Place,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Retention rules (restic-style); at least one is required.
#[derive(clap::Args, Clone, Debug)]
struct RetentionArgs {
    /// Keep the newest N backups.
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep the newest backup of each of the newest N days (UTC) that have backups.
    #[arg(long, value_name = "N")]
    keep_daily: Option<usize>,
    /// Keep the newest backup of each of the newest N ISO weeks (UTC) that have backups.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<usize>,
}

impl From<RetentionArgs> for backup_core::Retention {
    fn from(r: RetentionArgs) -> Self {
        backup_core::Retention {
            keep_last: r.keep_last,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
        }
    }
}

/// The backup format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Folder,
    Archive,
}

/// The archive codec.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Codec {
    Deflate,
    Zstd,
    None,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: library errors already name their
/// cause in their message (`write PATH: No space left on device`), so a cause whose text is
/// already there is not repeated.
pub(crate) fn plain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Backup {
            source,
            to,
            cache,
            full,
            format,
            compression,
            level,
            buffer_size,
            threads,
            live,
            interval,
            quiet,
            json,
        } => {
            for place in &to {
                place::require_archive(place, format == Format::Archive)?;
                if let Place::Local(dir) = place {
                    stores::check_backup_dir(dir)?;
                }
            }
            let backend = stores::open_source(&source)?;
            let options = BackupOptions {
                mode: if full {
                    BackupMode::Full
                } else {
                    BackupMode::Auto
                },
                ..BackupOptions::default()
            };
            if live {
                let [to] = &to[..] else {
                    anyhow::bail!(
                        "--live takes one --to (several destinations: one live backup each)"
                    );
                };
                return run_live(
                    backend,
                    &source,
                    to,
                    cache.as_deref(),
                    options,
                    format,
                    codec(compression, level)?,
                    buffer_size,
                    interval,
                    quiet,
                    json,
                );
            }
            let archive_options = ArchiveOptions {
                compression: codec(compression, level)?,
                buffer_size,
                threads: threads.map_or_else(backup_core::default_threads, usize::from),
            };
            // Several destinations: the change log is trimmed once, after every destination
            // holds the changes (to the oldest of their checkpoints), so that no destination's
            // next incremental finds its changes gone.
            let several = to.len() > 1;
            let per_destination = BackupOptions {
                trim_changes: options.trim_changes && !several,
                ..options.clone()
            };
            let job = BackupJob {
                backend: backend.as_ref(),
                source: &source,
                cache: cache.as_deref(),
                options: &per_destination,
                archive: &archive_options,
                format,
                quiet,
                json,
            };
            if let [only] = &to[..] {
                job.run(only)?;
                return Ok(ExitCode::SUCCESS);
            }
            // Several destinations: each in turn; a failure is reported and the others go on.
            let mut failed = 0;
            let mut oldest: Option<backup_core::Checkpoint> = None;
            for place in &to {
                match job.run(place) {
                    Ok(c) => {
                        if oldest.as_ref().is_none_or(|o| c.position < o.position) {
                            oldest = Some(c);
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("tidemark: error: {e:#}");
                    }
                }
            }
            if let (0, Some(oldest), true) = (failed, &oldest, options.trim_changes) {
                if let Err(e) = backend.trim_changes(oldest) {
                    eprintln!(
                        "tidemark: backups complete, but trimming the change log failed: {e}"
                    );
                }
            }
            if failed > 0 {
                eprintln!(
                    "tidemark: error: {failed} of {} destinations failed",
                    to.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            from,
            to,
            force,
            collections,
            at,
            rocksdb_format_version,
            threads,
            quiet,
        } => {
            if rocksdb_format_version.is_some() && to.kind != backup_core::StoreKind::Rocksdb {
                anyhow::bail!(
                    "--rocksdb-format-version applies to rocksdb: targets only, not {to}"
                );
            }
            let factory = stores::factory(to.kind, rocksdb_format_version)?;
            // Ctrl-C or SIGTERM: remove the unfinished store beside the target (the target is
            // untouched until the swap), then exit.
            ctrlc::set_handler(|| {
                if backup_core::restore::abandon_in_progress() {
                    eprintln!("tidemark: restore interrupted; the target is unchanged");
                } else {
                    eprintln!("tidemark: restore interrupted");
                }
                std::process::exit(130);
            })
            .context("installing the Ctrl-C / SIGTERM handler")?;
            let options = RestoreOptions {
                force,
                collections: collections
                    .map(|c| c.into_iter().map(backup_core::CollectionName).collect()),
                ..RestoreOptions::default()
            };
            let point = at.clone().unwrap_or(archive::RestorePoint::Latest);
            let archive = ArchiveOptions {
                threads: threads.map_or_else(backup_core::default_threads, usize::from),
                ..ArchiveOptions::default()
            };
            let summary = (|| -> anyhow::Result<_> {
                Ok(match &from {
                    Place::Remote(url) => restore_chain(
                        &*place::open_remote(url)?,
                        &point,
                        factory.as_ref(),
                        &to.path,
                        &options,
                        &archive,
                    )?,
                    Place::Local(dir) if is_archive(dir)? => restore_archives_to_path(
                        dir,
                        &point,
                        factory.as_ref(),
                        &to.path,
                        &options,
                        &archive,
                    )?,
                    Place::Local(_) if at.is_some() => {
                        anyhow::bail!("--at needs an archive directory; {from} is not one")
                    }
                    Place::Local(dir) => {
                        restore_folder_to_path(dir, factory.as_ref(), &to.path, &options)?
                    }
                })
            })()
            .with_context(|| format!("restore of {from} to {to}"))?;
            if !quiet {
                println!(
                    "Restore of {from} to {to}: {} records in {} collections, {} in {:.2} seconds",
                    summary.records,
                    summary.collections,
                    human_bytes(summary.bytes),
                    summary.elapsed.as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Track { source, remove } => {
            println!("{}", stores::track(&source, remove)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { dir } => {
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
        Command::List { dir } => {
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
        Command::Run { config, once } => {
            let stop = Arc::new(AtomicBool::new(false));
            if !once {
                let flag = stop.clone();
                ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
                    .context("installing the Ctrl-C / SIGTERM handler")?;
            }
            let log: Arc<Mutex<dyn Write + Send>> = Arc::new(Mutex::new(std::io::stdout()));
            let all_ok = schedule::run(&config, once, stop, log)?;
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Prune {
            dir,
            retention,
            dry_run,
        } => {
            let retention: backup_core::Retention = retention.into();
            let plan =
                place::prune(&dir, &retention, dry_run).with_context(|| format!("prune {dir}"))?;
            print_prune(&plan, dry_run);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a prune plan: every archive kept (with why) or removed, and a total.
fn print_prune(plan: &backup_core::PrunePlan, dry_run: bool) {
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
                i.item.manifest.captured_at,
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

/// A progress bar on stderr for long work, shown only when stderr is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    collection: String,
}

impl Progress {
    fn new(hidden: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (!hidden && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>20} [{bar:40}] {pos}/{len} records ({per_sec}, {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            collection: String::new(),
        }
    }

    fn update(&mut self, event: &Event) {
        let Some(bar) = &self.bar else { return };
        match event {
            Event::Progress {
                collection,
                done,
                total,
            } => {
                if *collection != self.collection {
                    self.collection = collection.clone();
                    bar.reset();
                    bar.set_length(total.unwrap_or(*done));
                    bar.set_message(collection.clone());
                }
                bar.set_length(total.unwrap_or(*done).max(*done));
                bar.set_position(*done);
            }
            Event::Written(_) => {}
            Event::Notice(msg) => bar.println(msg),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The archive codec from the flags.
/// The compression a config file names (`deflate`, `zstd`, `none`) at a level.
pub(crate) fn compression_of(name: &str, level: Option<u8>) -> Result<Compression> {
    let c = <Codec as clap::ValueEnum>::from_str(name, true)
        .map_err(|_| anyhow::anyhow!("compression `{name}` is not deflate, zstd or none"))?;
    codec(c, level)
}

fn codec(compression: Codec, level: Option<u8>) -> Result<Compression> {
    Ok(match (compression, level) {
        (Codec::Deflate, l) if l.unwrap_or(9) <= 9 => Compression::Deflate(l.unwrap_or(9)),
        (Codec::Zstd, l) if (1..=22).contains(&l.unwrap_or(3)) => {
            Compression::Zstd(i32::from(l.unwrap_or(3)))
        }
        (Codec::None, None) => Compression::None,
        _ => anyhow::bail!(
            "--level {} is out of range for this codec (deflate 0-9, zstd 1-22, none takes no level)",
            level.unwrap_or_default()
        ),
    })
}

/// One backup of an open store, to one destination at a time.
struct BackupJob<'a> {
    backend: &'a dyn backup_core::StorageBackend,
    source: &'a StoreUrl,
    cache: Option<&'a std::path::Path>,
    options: &'a BackupOptions,
    archive: &'a ArchiveOptions,
    format: Format,
    quiet: bool,
    json: bool,
}

impl BackupJob<'_> {
    /// Backs up to `to`, printing events and the summary; returns the checkpoint backed up.
    fn run(&self, to: &Place) -> Result<backup_core::Checkpoint> {
        let BackupJob {
            backend,
            source,
            cache,
            options,
            archive: archive_options,
            format,
            quiet,
            json,
        } = *self;
        let mut out = std::io::stdout().lock();
        let mut bar = Progress::new(quiet || json);
        let mut on_event = |event: Event| {
            bar.update(&event);
            report(&mut out, &event, quiet, json)
        };
        let (summary, archive) = match (format, to) {
            (Format::Folder, Place::Local(dir)) => {
                let s = backup_folder(backend, dir, options, &mut on_event)
                    .with_context(|| format!("backup of {source} to {to}"))?;
                (s, None)
            }
            (Format::Archive, Place::Local(dir)) => {
                let a = backup_archive(backend, dir, options, archive_options, &mut on_event)
                    .with_context(|| format!("backup of {source} to {to}"))?;
                (a.backup.clone(), Some(a))
            }
            (_, Place::Remote(url)) => {
                let a = place::backup_remote(
                    backend,
                    url,
                    cache,
                    options,
                    archive_options,
                    &mut on_event,
                )
                .with_context(|| format!("backup of {source} to {to}"))?;
                (a.backup.clone(), Some(a))
            }
        };
        if json {
            let line = serde_json::json!({
                "type": "summary",
                "kind": summary.kind.to_string(),
                "method": summary.method.to_string(),
                "full_reason": summary.full_reason.as_ref().map(ToString::to_string),
                "checkpoint": summary.checkpoint.position,
                "records_written": summary.records_written,
                "records_deleted": summary.records_deleted,
                "records_total": summary.records_total,
                "bytes_written": summary.bytes_written,
                "seconds": summary.elapsed.as_secs_f64(),
                "archive": archive.as_ref().map(|a| a.file.display().to_string()),
                "archive_bytes": archive.as_ref().map(|a| a.size),
            });
            writeln!(out, "{line}")?;
        } else if !quiet {
            if let (Some(reason), backup_core::Method::Full) =
                (&summary.full_reason, summary.method)
            {
                writeln!(out, "Full backup: {reason}")?;
            }
            writeln!(
                    out,
                    "Backup ({kind}) of {source} to {dir}: {w} records written, {d} deleted, {t} in backup, {b} in {s:.2} seconds (checkpoint {c})",
                    kind = summary.method,
                    dir = to,
                    w = summary.records_written,
                    d = summary.records_deleted,
                    t = summary.records_total,
                    b = human_bytes(summary.bytes_written),
                    s = summary.elapsed.as_secs_f64(),
                    c = summary.checkpoint.position,
                )?;
            if let Some(a) = &archive {
                writeln!(
                    out,
                    "Archive ({}) {}: {} entries, {}",
                    a.kind,
                    a.file.display(),
                    a.entries,
                    human_bytes(a.size)
                )?;
            }
        }
        Ok(summary.checkpoint)
    }
}

/// `tidemark backup --live`: follows the store until Ctrl-C or SIGTERM, then makes everything
/// committed so far durable and exits 0.
#[allow(clippy::too_many_arguments)]
fn run_live(
    backend: Box<dyn backup_core::StorageBackend>,
    source: &StoreUrl,
    to: &Place,
    cache: Option<&std::path::Path>,
    options: BackupOptions,
    format: Format,
    compression: Compression,
    buffer_size: usize,
    interval: f64,
    quiet: bool,
    json: bool,
) -> Result<ExitCode> {
    use backup_core::{LiveBackup, LiveEvent, LiveFormat, LiveOptions};
    if !(interval.is_finite() && interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds");
    }
    let archive = ArchiveOptions {
        compression,
        buffer_size,
        ..ArchiveOptions::default()
    };
    let (dir, format) = match (to, format) {
        (Place::Local(dir), Format::Folder) => (dir.clone(), LiveFormat::Folder),
        (Place::Local(dir), Format::Archive) => (dir.clone(), LiveFormat::Archive(archive)),
        (Place::Remote(url), _) => (
            place::state_dir(url, cache)?,
            LiveFormat::Chain(std::sync::Arc::from(place::open_remote(url)?), archive),
        ),
    };
    let live = LiveBackup::start(
        std::sync::Arc::from(backend),
        dir,
        LiveOptions {
            format,
            flush_interval: std::time::Duration::from_secs_f64(interval),
            backup: options,
        },
    );
    let flag = live.stop_flag();
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("installing the Ctrl-C / SIGTERM handler")?;
    let mut out = std::io::stdout().lock();
    let mut live = live;
    let mut runs = 0u64;
    for event in live.events().iter() {
        match event {
            LiveEvent::Run(e) => report(&mut out, &e, quiet, json),
            LiveEvent::Completed(s) => {
                runs += 1;
                let _ = if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "type": "run", "method": s.method.to_string(),
                            "checkpoint": s.checkpoint.position, "captured_at": s.captured_at,
                            "records_written": s.records_written,
                            "records_deleted": s.records_deleted,
                            "records_total": s.records_total,
                        })
                    )
                } else if !quiet {
                    writeln!(
                        out,
                        "{} run {runs} ({}) of {source}: {} written, {} deleted, {} in backup (checkpoint {})",
                        s.captured_at, s.method, s.records_written, s.records_deleted,
                        s.records_total, s.checkpoint.position
                    )
                } else {
                    Ok(())
                };
                let _ = out.flush();
            }
        }
    }
    // The channel closed: the backup ended, after a stop request or on an error.
    let summary = live
        .join()
        .with_context(|| format!("live backup of {source} to {to}"))?;
    if !quiet && !json {
        let _ = writeln!(
            out,
            "Live backup of {source} stopped after {} runs (checkpoint {})",
            summary.runs,
            summary
                .last
                .map(|s| s.checkpoint.position)
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(out: &mut impl Write, event: &Event, quiet: bool, json: bool) {
    // Output errors (a closed pipe) must not abort a backup; the summary reports the outcome.
    let _ = match event {
        Event::Notice(msg) if json => {
            writeln!(
                out,
                "{}",
                serde_json::json!({"type": "notice", "message": msg})
            )
        }
        Event::Notice(msg) if !quiet => writeln!(out, "{msg}"),
        Event::Written(w) if json => writeln!(
            out,
            "{}",
            serde_json::json!({
                "type": "write",
                "collectionName": w.collection.as_str(),
                "documentId": w.document_id,
                "files": w.files,
                "deleted": w.deleted,
            })
        ),
        Event::Progress {
            collection,
            done,
            total,
        } if json => writeln!(
            out,
            "{}",
            serde_json::json!({"type": "progress", "collection": collection, "done": done, "total": total})
        ),
        _ => Ok(()),
    };
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Whether the backup directory `dir` holds an archive chain (its format marker, or for older
/// directories, what it holds).
fn is_archive(dir: &std::path::Path) -> Result<bool> {
    Ok(backup_core::detect_format(dir)? == Some(backup_core::DestFormat::Archive))
}
