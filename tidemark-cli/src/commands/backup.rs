//! `tidemark backup`: one backup of a store, to one or several destinations (folder or
//! archive, local or an object store), or a live backup that follows the store until stopped.

use crate::output::{human_bytes, report, Progress};
use crate::place::{self, Place};
use crate::stores::{self, StoreUrl};
use crate::{Codec, Format};
use anyhow::{Context, Result};
use backup_core::{
    backup_folder, ArchiveOptions, BackupMode, BackupOptions, Compression, DestFormat, Event,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Back a store up into a folder: full the first time, incremental after.
#[derive(clap::Args)]
pub struct Args {
    /// The store: sqlite:PATH, rocksdb:PATH or sled:PATH.
    #[arg(long)]
    pub source: StoreUrl,
    /// The backup directory, or an object store URL for archives (s3://bucket/prefix).
    /// Repeat it to back up to several destinations in one run: each gets its own
    /// backup, in the order given, and one's failure does not stop the others.
    #[arg(long, required = true)]
    pub to: Vec<Place>,
    /// Remote destinations: the local directory of the key state that incrementals
    /// continue from (default under ~/.cache/tidemark/state/).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Take a full backup even if an incremental is possible.
    #[arg(long)]
    pub full: bool,
    /// `folder` (plain JSON files, updated in place) or `archive` (one compressed zip per
    /// backup, chained). Default: the format the destination already holds; for a new one,
    /// `folder`, or `archive` when every destination is an object store (which holds archives
    /// only).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Archive codec. Default, when neither this nor `--level` is given: an existing chain's
    /// own (its newest archive's, at that codec's default level); otherwise, and for a new
    /// chain, deflate (which any `unzip` reads).
    #[arg(long, value_enum)]
    pub compression: Option<Codec>,
    /// Archive compression level: 0-9 for deflate (default 9), 1-22 for zstd (default 3).
    #[arg(long)]
    pub level: Option<u8>,
    /// Archive output buffer size in bytes.
    #[arg(long, default_value_t = DEFAULT_BUFFER)]
    pub buffer_size: usize,
    /// Archives: threads that encode and compress (default: every core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Keep following the store until stopped (Ctrl-C or SIGTERM), making changes durable
    /// in the backup every `--interval` seconds.
    #[arg(long)]
    pub live: bool,
    /// Live mode: the flush interval in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Live archive backups: compact the chain as it grows (as `tidemark compact` does, a
    /// block at a time as each closes), so that a restore at any point reads few archives.
    #[arg(long)]
    pub compact: bool,
    /// Live backups: serve Prometheus metrics at http://ADDR/metrics (runs, last success,
    /// bytes and records written, backup lag), one series per destination.
    #[arg(long, value_name = "ADDR", requires = "live")]
    pub metrics_addr: Option<String>,
    /// With `--compact`: archives of one level that a compacted archive covers.
    #[arg(long, default_value_t = backup_core::DEFAULT_FANOUT,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub fanout: u64,
    /// Print only errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON object per line (write events, notices, the summary).
    #[arg(long)]
    pub json: bool,
    /// Encryption at rest (archives).
    #[command(flatten)]
    pub keys: crate::KeyArgs,
}

/// The format of a backup run without `--format`: what the local destinations already hold
/// (each holds one format, so the runs after the first need no flag), else archives when every
/// destination is an object store (which holds archives only), else folders.
fn default_format(to: &[Place]) -> Result<Format> {
    let mut held = Vec::new();
    for place in to {
        if let Place::Local(dir) = place {
            if let Some(format) = backup_core::detect_format(dir)? {
                held.push((dir, format));
            }
        }
    }
    let held = match held.as_slice() {
        [(a, first), rest @ ..] => {
            if let Some((b, other)) = rest.iter().find(|(_, f)| f != first) {
                anyhow::bail!(
                    "{} holds {first} backups and {} {other} backups (one format per \
                     destination): back them up in separate runs",
                    a.display(),
                    b.display()
                );
            }
            Some(*first)
        }
        [] => None,
    };
    Ok(match held {
        Some(DestFormat::Archive) => Format::Archive,
        Some(DestFormat::Folder) => Format::Folder,
        None if to.iter().all(|p| matches!(p, Place::Remote(_))) => Format::Archive,
        None => Format::Folder,
    })
}

/// The archive output buffer's default size.
const DEFAULT_BUFFER: usize = 1 << 20;

/// Runs `tidemark backup`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
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
        compact,
        fanout,
        quiet,
        json,
        metrics_addr,
        keys,
    } = args;
    let keys = keys.options()?;
    let remote = to.iter().any(|p| matches!(p, Place::Remote(_)));
    let format = match format {
        Some(format) => format,
        None => default_format(&to)?,
    };
    if format == Format::Folder && !remote {
        let archive_only = [
            ("--compression", compression.is_some()),
            ("--level", level.is_some()),
            ("--threads", threads.is_some()),
            ("--buffer-size", buffer_size != DEFAULT_BUFFER),
        ];
        let given: Vec<&str> = archive_only
            .iter()
            .filter(|(_, given)| *given)
            .map(|(flag, _)| *flag)
            .collect();
        if !given.is_empty() {
            anyhow::bail!(
                "{} apply to archives (--format archive); the folder format (the default) \
                 writes plain files and takes no compression",
                given.join(", ")
            );
        }
    }
    if keys.any() && format == Format::Folder && !remote {
        anyhow::bail!(
            "encryption applies to archives (--format archive): a folder backup is plain files"
        );
    }
    if compact && !(live && (format == Format::Archive || remote)) {
        anyhow::bail!(
            "--compact applies to live archive backups (--live --format archive, or --live to \
             an object store); after other backups, run `tidemark compact`"
        );
    }
    if cache.is_some() && to.iter().filter(|p| matches!(p, Place::Remote(_))).count() > 1 {
        anyhow::bail!(
            "--cache names one key state: with several object-store destinations leave it out \
             (each gets its own default cache)"
        );
    }
    for place in &to {
        place::require_archive(place, format == Format::Archive)?;
        if let Place::Local(dir) = place {
            stores::check_backup_dir(dir, &source)?;
        }
    }
    let backend = stores::open_source(&source, live)?;
    let options = BackupOptions {
        mode: if full {
            BackupMode::Full
        } else {
            BackupMode::Auto
        },
        ..BackupOptions::default()
    };
    if live {
        return run_live(
            backend,
            &source,
            &to,
            cache.as_deref(),
            &keys,
            options,
            format,
            {
                let (compression, follow_chain) = chosen_codec(compression, level)?;
                ArchiveOptions {
                    compression,
                    buffer_size,
                    follow_chain,
                    ..ArchiveOptions::default()
                }
            },
            interval,
            compact.then_some(fanout),
            metrics_addr.as_deref(),
            quiet,
            json,
        );
    }
    // Ctrl-C or SIGTERM: remove the unfinished files (the archive being written, the key
    // state's new files) and abort uploads, then exit. What is already in place is complete.
    super::stop_cleanly_on_interrupt("backup")?;
    let (compression, follow_chain) = chosen_codec(compression, level)?;
    let archive_options = ArchiveOptions {
        compression,
        buffer_size,
        threads: threads.map_or_else(backup_core::default_threads, usize::from),
        follow_chain,
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
        keys: &keys,
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
            eprintln!("tidemark: backups complete, but trimming the change log failed: {e}");
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

/// The archive codec from the flags.
pub(crate) fn codec(compression: Codec, level: Option<u8>) -> Result<Compression> {
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

/// The codec of a new chain's archives from the codec and level given (deflate when no codec
/// is), and whether an existing chain goes on in its own codec instead: when neither is given.
pub(crate) fn chosen_codec(
    compression: Option<Codec>,
    level: Option<u8>,
) -> Result<(Compression, bool)> {
    let follow_chain = compression.is_none() && level.is_none();
    Ok((
        codec(compression.unwrap_or(Codec::Deflate), level)?,
        follow_chain,
    ))
}

/// [`chosen_codec`] for the compression a config file names (`deflate`, `zstd`, `none`), if it
/// names one.
pub(crate) fn compression_of(name: Option<&str>, level: Option<u8>) -> Result<(Compression, bool)> {
    let c = name
        .map(|name| {
            <Codec as clap::ValueEnum>::from_str(name, true)
                .map_err(|_| anyhow::anyhow!("compression `{name}` is not deflate, zstd or none"))
        })
        .transpose()?;
    chosen_codec(c, level)
}

/// One backup of an open store, to one destination at a time.
struct BackupJob<'a> {
    backend: &'a dyn backup_core::StorageBackend,
    source: &'a StoreUrl,
    cache: Option<&'a std::path::Path>,
    keys: &'a backup_core::KeyOptions,
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
            keys,
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
            // The summary's `Full backup: <reason>` line says this once, at the end.
            let said_later =
                !json && matches!(&event, Event::Notice(m) if m.contains("taking a full backup: "));
            if !said_later {
                report(&mut out, &event, quiet, json)
            }
        };
        let (summary, archive) = match (format, to) {
            (Format::Folder, Place::Local(dir)) => {
                let s = backup_folder(backend, dir, options, &mut on_event)
                    .with_context(|| format!("backup of {source} to {to}"))?;
                (s, None)
            }
            (Format::Archive, _) | (_, Place::Remote(_)) => {
                let a = place::backup_archive(
                    backend,
                    to,
                    cache,
                    keys,
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
                "schema": 1,
                "type": "summary",
                "command": "backup",
                "destination": to.to_string(),
                "kind": summary.kind.to_string(),
                "method": summary.method.to_string(),
                "full_reason": summary.full_reason.as_ref().map(ToString::to_string),
                "checkpoint": summary.checkpoint.position,
                "records_written": summary.records_written,
                "records_unchanged": summary.records_unchanged,
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
                // Once, at the first backup: how to get incrementals.
                if matches!(reason, backup_core::FullReason::FirstBackup) {
                    if let Some(hint) = stores::untracked(source, &summary.checkpoint) {
                        writeln!(out, "Note: {hint}")?;
                    }
                }
            }
            writeln!(
                    out,
                    "Backup ({kind}) of {source} to {dir}: {w} records written{u}, {d} deleted, {t} in backup, {b} in {s:.2} seconds (checkpoint {c})",
                    kind = summary.method,
                    dir = to,
                    w = summary.records_written,
                    u = match summary.records_unchanged {
                        0 => String::new(),
                        n => format!(" ({n} already in the backup as they are)"),
                    },
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
/// committed so far durable and exits 0. With several destinations, one live backup follows
/// the store into each (each continues its own chain; one that fails is reported and the others
/// go on), and the change log is trimmed only to the oldest checkpoint all of them hold.
#[allow(clippy::too_many_arguments)]
fn run_live(
    backend: Box<dyn backup_core::StorageBackend>,
    source: &StoreUrl,
    to: &[Place],
    cache: Option<&std::path::Path>,
    keys: &backup_core::KeyOptions,
    options: BackupOptions,
    format: Format,
    archive: ArchiveOptions,
    interval: f64,
    fanout: Option<u64>,
    metrics_addr: Option<&str>,
    quiet: bool,
    json: bool,
) -> Result<ExitCode> {
    use backup_core::{CompactOptions, LiveBackup, LiveEvent, LiveFormat, LiveOptions};
    let metrics = match metrics_addr {
        Some(addr) => {
            let m = Arc::new(crate::metrics::Metrics::default());
            let bound = crate::metrics::serve(addr, m.clone())?;
            if !quiet && !json {
                println!("Metrics at http://{bound}/metrics");
            }
            for place in to {
                m.declare(&format!("live {place}"));
            }
            Some(m)
        }
        None => None,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !(interval.is_finite() && interval > 0.0) {
        anyhow::bail!("--interval must be a positive number of seconds");
    }
    let backend: Arc<dyn backup_core::StorageBackend> = Arc::from(backend);
    let several = to.len() > 1;
    // Several followers: none trims the change log on its own (another may still need what
    // it would remove); this loop trims to the oldest checkpoint they all hold.
    let per_destination = BackupOptions {
        trim_changes: options.trim_changes && !several,
        ..options.clone()
    };
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Option<LiveEvent>, Option<Result<()>>)>();
    let mut stops: Vec<Arc<AtomicBool>> = Vec::new();
    let mut followers = Vec::new();
    for (i, place) in to.iter().enumerate() {
        let (dir, format) = match (place, format) {
            (Place::Local(dir), Format::Folder) => (dir.clone(), LiveFormat::Folder),
            (Place::Local(dir), Format::Archive) if !keys.any() => {
                (dir.clone(), LiveFormat::Archive(archive))
            }
            // An encrypted directory keeps its key state outside, as an object store does.
            (Place::Local(dir), _) => (
                place::local_state_dir(dir, cache)?,
                LiveFormat::Chain(Arc::from(place::writable_chain(place, keys)?), archive),
            ),
            (Place::Remote(url), _) => (
                place::state_dir(url, cache)?,
                LiveFormat::Chain(Arc::from(place::writable_chain(place, keys)?), archive),
            ),
        };
        let mut live = LiveBackup::start(
            backend.clone(),
            dir,
            LiveOptions {
                format,
                flush_interval: std::time::Duration::from_secs_f64(interval),
                backup: per_destination.clone(),
                compact: fanout.map(|fanout| CompactOptions {
                    fanout,
                    archive,
                    dry_run: false,
                }),
            },
        );
        stops.push(live.stop_flag());
        let tx = tx.clone();
        followers.push(std::thread::spawn(move || {
            for event in live.events().iter() {
                let _ = tx.send((i, Some(event), None));
            }
            let done = live.join().map(|_| ()).map_err(anyhow::Error::from);
            let _ = tx.send((i, None, Some(done)));
        }));
    }
    drop(tx);
    {
        let stops = stops.clone();
        ctrlc::set_handler(move || {
            for s in &stops {
                s.store(true, Ordering::SeqCst);
            }
        })
        .context("installing the Ctrl-C / SIGTERM handler")?;
    }
    let mut out = std::io::stdout().lock();
    let mut runs = vec![0u64; to.len()];
    let mut held: Vec<Option<backup_core::Checkpoint>> = vec![None; to.len()];
    let mut trimmed: Option<u64> = None;
    let mut failed = 0;
    // The notice each destination printed last: one that every run repeats (an untracked
    // SQLite database's diff, say) is printed once, until another takes its place. `--json`
    // gives every one.
    let mut last_notice: Vec<Option<String>> = vec![None; to.len()];
    let mut hinted = false;
    for (i, event, done) in rx.iter() {
        let dest = &to[i];
        if let Some(done) = done {
            if let Err(e) = done.with_context(|| format!("live backup of {source} to {dest}")) {
                failed += 1;
                if let Some(m) = &metrics {
                    m.failure(&format!("live {dest}"));
                }
                eprintln!(
                    "tidemark: error: {}{}",
                    crate::plain(&e),
                    if several {
                        "; the other destinations go on"
                    } else {
                        ""
                    }
                );
            } else if !quiet && !json {
                let _ = writeln!(
                    out,
                    "Live backup of {source} to {dest} stopped after {} runs (checkpoint {})",
                    runs[i],
                    held[i].as_ref().map(|c| c.position).unwrap_or_default()
                );
            }
            continue;
        }
        match event {
            Some(LiveEvent::Run(Event::Notice(m)))
                if !json && last_notice[i].as_deref() == Some(m.as_str()) => {}
            Some(LiveEvent::Run(e)) => {
                if let Event::Notice(m) = &e {
                    last_notice[i] = Some(m.clone());
                }
                report(&mut out, &e, quiet, json)
            }
            Some(LiveEvent::Completed(s)) => {
                runs[i] += 1;
                if let Some(m) = &metrics {
                    m.success(
                        &format!("live {dest}"),
                        &crate::metrics::RunReport {
                            duration: s.elapsed,
                            bytes: s.bytes_written,
                            records: s.records_written,
                            captured_at: &s.captured_at,
                            chain_length: None,
                        },
                    );
                }
                let _ = if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({
                            "schema": 1, "type": "run", "method": s.method.to_string(),
                            "destination": dest.to_string(),
                            "checkpoint": s.checkpoint.position, "captured_at": s.captured_at,
                            "records_written": s.records_written,
                            "records_deleted": s.records_deleted,
                            "records_total": s.records_total,
                        })
                    )
                } else if !quiet {
                    writeln!(
                        out,
                        "{} run {} ({}) of {source}{}: {} written, {} deleted, {} in backup (checkpoint {})",
                        crate::output::to_second(&s.captured_at), runs[i], s.method,
                        if several { format!(" to {dest}") } else { String::new() },
                        s.records_written, s.records_deleted,
                        s.records_total, s.checkpoint.position
                    )
                } else {
                    Ok(())
                };
                // Once, after the first run: how to get runs that read only what changed.
                if !quiet && !json && !hinted {
                    hinted = true;
                    if let Some(hint) = stores::untracked(source, &s.checkpoint) {
                        let _ = writeln!(out, "Note: {hint}");
                    }
                }
                let _ = out.flush();
                held[i] = Some(s.checkpoint.clone());
                // Trim to what every destination holds, once it moved.
                if several && options.trim_changes {
                    let oldest = held
                        .iter()
                        .all(Option::is_some)
                        .then(|| held.iter().flatten().min_by_key(|c| c.position))
                        .flatten()
                        .filter(|c| trimmed.is_none_or(|t| c.position > t));
                    if let Some(at) = oldest {
                        if let Err(e) = backend.trim_changes(at) {
                            eprintln!("tidemark: trimming the change log failed: {e}");
                        }
                        trimmed = Some(at.position);
                    }
                }
            }
            None => {}
        }
    }
    for f in followers {
        let _ = f.join();
    }
    if failed > 0 {
        if several {
            eprintln!(
                "tidemark: error: {failed} of {} destinations failed",
                to.len()
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
