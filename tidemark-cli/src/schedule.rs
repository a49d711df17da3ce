//! `tidemark run --config FILE`: scheduled backups, like OrientDB's automatic backup plugin.
//! Each job backs one store up every `interval`, takes a full archive after every
//! `full_every` incrementals, applies its retention after each successful run, and retries a
//! failed run `retries` times `retry_delay` apart before waiting for the next interval. Every run
//! is logged with its summary; a failed or interrupted run never leaves a half backup behind (the
//! engine writes aside and renames; the next run carries on).

use crate::place::Place;
use crate::stores::{self, StoreUrl};
use anyhow::{bail, Context, Result};
use backup_core::{
    backup_archive, backup_folder, ArchiveOptions, BackupMode, BackupOptions, Checkpoint,
    Compression, Event, Retention,
};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The jobs (`[[job]]` tables).
    #[serde(rename = "job")]
    pub jobs: Vec<Job>,
}

/// One scheduled backup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// A name for the log (default: the destination).
    pub name: Option<String>,
    /// The store, `KIND:PATH`.
    pub source: String,
    /// The backup directory, or an object store URL (archives only).
    pub to: String,
    /// Remote destinations: the local directory of the key state incrementals continue from.
    pub cache: Option<PathBuf>,
    /// `archive` (default) or `folder`.
    #[serde(default = "default_format")]
    pub format: String,
    /// `deflate` (default), `zstd` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Compression level (deflate 0-9, default 9; zstd 1-22, default 3).
    pub level: Option<u8>,
    /// Time between runs: seconds, or a number with `s`, `m`, `h` or `d`.
    pub interval: Duration_,
    /// Take a full archive after this many incrementals (0 or absent: only when needed).
    #[serde(default)]
    pub full_every: u32,
    /// Retries of a failed run before waiting for the next interval.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Time between retries.
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Duration_,
    /// Retention applied after each successful run (archive format only).
    pub retention: Option<Retention>,
    /// Compact the chain after each successful run (archive format only), before retention.
    #[serde(default)]
    pub compact: bool,
    /// With `compact`: archives of one level a compacted archive covers (default 8).
    pub fanout: Option<u64>,
}

fn default_format() -> String {
    "archive".into()
}
fn default_compression() -> String {
    "deflate".into()
}
fn default_retries() -> u32 {
    3
}
fn default_retry_delay() -> Duration_ {
    Duration_(Duration::from_secs(30))
}

/// A duration in the config: a number of seconds or a string like `90s`, `15m`, `6h`, `1d`.
#[derive(Debug, Clone, Copy)]
pub struct Duration_(pub Duration);

impl<'de> Deserialize<'de> for Duration_ {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        let secs = match Raw::deserialize(d)? {
            Raw::Seconds(s) => s,
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?,
        };
        if !(secs.is_finite() && secs > 0.0) {
            return Err(serde::de::Error::custom("a duration must be more than 0"));
        }
        Ok(Duration_(Duration::from_secs_f64(secs)))
    }
}

fn parse_duration(t: &str) -> std::result::Result<f64, String> {
    let t = t.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{t}` is not a duration (e.g. 30s, 15m, 6h, 1d)"))?;
    Ok(n * match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("`{t}`: unknown unit `{unit}` (s, m, h, d)")),
    })
}

/// A job checked and ready to run.
struct Ready {
    name: String,
    source: StoreUrl,
    to: Place,
    job: Job,
    compression: Option<Compression>,
    /// Set when other jobs follow the same store: the store's change log is then trimmed only
    /// to the oldest checkpoint among them, never past what one of them still needs.
    shared_log: Option<SharedLog>,
}

/// The checkpoints reached by the jobs that follow one store, by job index within the group.
#[derive(Clone)]
struct SharedLog {
    slot: usize,
    reached: Arc<Mutex<Vec<Option<Checkpoint>>>>,
}

impl SharedLog {
    /// Records this job's new checkpoint and returns how far the log may now be trimmed: the
    /// oldest checkpoint of the group, once every job has one and all are of the same store.
    fn reached(&self, at: &Checkpoint) -> Option<Checkpoint> {
        let mut reached = self.reached.lock().ok()?;
        reached[self.slot] = Some(at.clone());
        let all: Option<Vec<&Checkpoint>> = reached.iter().map(Option::as_ref).collect();
        let all = all?;
        if all.iter().any(|c| c.store_id != at.store_id) {
            return None;
        }
        all.into_iter().min_by_key(|c| c.position).cloned()
    }
}

/// The identity of a store for grouping jobs: its kind and canonical path.
fn store_key(s: &StoreUrl) -> String {
    let path = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
    format!("{:?}:{}", s.kind, path.display())
}

/// Gives every job whose store another job also follows its slot in a shared log record.
fn group_by_store(jobs: &mut [Ready]) {
    let mut groups: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, j) in jobs.iter().enumerate() {
        groups.entry(store_key(&j.source)).or_default().push(i);
    }
    for members in groups.values().filter(|m| m.len() > 1) {
        let reached = Arc::new(Mutex::new(vec![None; members.len()]));
        for (slot, &i) in members.iter().enumerate() {
            jobs[i].shared_log = Some(SharedLog {
                slot,
                reached: reached.clone(),
            });
        }
    }
}

/// Reads and checks a configuration file (every job, before anything runs).
fn load(path: &Path) -> Result<Vec<Ready>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if config.jobs.is_empty() {
        bail!("{}: no [[job]] in the file", path.display());
    }
    let mut out = Vec::new();
    for (i, job) in config.jobs.into_iter().enumerate() {
        let name = job.name.clone().unwrap_or_else(|| job.to.clone());
        let ctx = || format!("{}: job {} ({name})", path.display(), i + 1);
        let source: StoreUrl = job
            .source
            .parse()
            .map_err(anyhow::Error::msg)
            .with_context(ctx)?;
        let to: Place = job
            .to
            .parse()
            .map_err(anyhow::Error::msg)
            .with_context(ctx)?;
        crate::place::require_archive(&to, job.format == "archive").with_context(ctx)?;
        let compression = match job.format.as_str() {
            "folder" => {
                if job.retention.is_some() || job.full_every > 0 {
                    bail!(
                        "{}: retention and full_every apply to the archive format",
                        ctx()
                    );
                }
                None
            }
            "archive" => Some(
                crate::commands::backup::compression_of(&job.compression, job.level)
                    .with_context(ctx)?,
            ),
            other => bail!("{}: format `{other}` is not folder or archive", ctx()),
        };
        if let Some(r) = &job.retention {
            if r.is_empty() {
                bail!(
                    "{}: [job.retention] sets no keep_last, keep_daily or keep_weekly",
                    ctx()
                );
            }
        }
        out.push(Ready {
            name,
            source,
            to,
            job,
            compression,
            shared_log: None,
        });
    }
    group_by_store(&mut out);
    Ok(out)
}

/// Runs every job until `stop` is set; with `once`, runs each job once and returns. Returns
/// whether every job's last run succeeded.
pub fn run(
    path: &Path,
    once: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<dyn Write + Send>>,
) -> Result<bool> {
    let jobs = load(path)?;
    let mut threads = Vec::new();
    for ready in jobs {
        let stop = stop.clone();
        let log = log.clone();
        threads.push(std::thread::spawn(move || {
            job_loop(&ready, once, &stop, &log)
        }));
    }
    let mut all_ok = true;
    for t in threads {
        all_ok &= t.join().unwrap_or(false);
    }
    Ok(all_ok)
}

fn say(log: &Mutex<dyn Write + Send>, line: &str) {
    if let Ok(mut w) = log.lock() {
        let _ = writeln!(w, "{} {line}", backup_core::manifest::now_rfc3339());
        let _ = w.flush();
    }
}

/// Sleeps until `until` or a stop; returns false on a stop.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
    }
    !stop.load(Ordering::SeqCst)
}

/// Incrementals since the newest full archive of the chain at `place`.
fn incrementals_since_full(place: &Place) -> u32 {
    let (chain, _) = crate::place::chain(place).unwrap_or_default();
    // Sequences, not archives: compacted archives cover several backups each.
    let newest = chain.last().map_or(0, |c| c.manifest.sequence);
    let full = chain
        .iter()
        .filter(|c| c.manifest.kind == backup_core::RunKind::Full)
        .map(|c| c.manifest.sequence)
        .max()
        .unwrap_or(0);
    u32::try_from(newest - full.min(newest)).unwrap_or(u32::MAX)
}

fn job_loop(job: &Ready, once: bool, stop: &AtomicBool, log: &Mutex<dyn Write + Send>) -> bool {
    let j = &job.job;
    loop {
        let started = Instant::now();
        let mut attempt = 0;
        let mut last_ok;
        loop {
            attempt += 1;
            match run_once(job, log) {
                Ok(summary) => {
                    say(log, &format!("job {}: {summary}", job.name));
                    last_ok = true;
                    if j.compact {
                        let options = backup_core::CompactOptions {
                            fanout: j.fanout.unwrap_or(backup_core::DEFAULT_FANOUT),
                            ..Default::default()
                        };
                        match crate::place::compact(&job.to, &options) {
                            Ok(done) if !done.written.is_empty() => {
                                let blocks: Vec<String> = done
                                    .written
                                    .iter()
                                    .map(|c| format!("{:06}..{:06}", c.first, c.last))
                                    .collect();
                                say(
                                    log,
                                    &format!("job {}: compacted {}", job.name, blocks.join(", ")),
                                );
                            }
                            Ok(_) => {}
                            Err(e) => {
                                last_ok = false;
                                say(log, &format!("job {}: compaction failed: {e:#}", job.name));
                            }
                        }
                    }
                    // Retention runs after a good backup only; a failure is reported, and the
                    // next run tries again (nothing is removed unless the log of it is durable).
                    if let Some(r) = &j.retention {
                        let pruned = crate::place::prune(&job.to, r, false);
                        match pruned {
                            Ok(plan) => {
                                let removed: Vec<String> = plan
                                    .removed()
                                    .map(|i| {
                                        i.path
                                            .file_name()
                                            .unwrap_or_default()
                                            .to_string_lossy()
                                            .into_owned()
                                    })
                                    .collect();
                                if !removed.is_empty() {
                                    say(
                                        log,
                                        &format!("job {}: pruned {}", job.name, removed.join(", ")),
                                    );
                                }
                            }
                            Err(e) => {
                                last_ok = false;
                                say(log, &format!("job {}: prune failed: {e}", job.name));
                            }
                        }
                    }
                    break;
                }
                Err(e) => {
                    last_ok = false;
                    let left = j.retries + 1 - attempt;
                    say(
                        log,
                        &format!(
                            "job {}: run failed (attempt {attempt} of {}): {}{}",
                            job.name,
                            j.retries + 1,
                            crate::plain(&e),
                            if left > 0 {
                                format!("; retrying in {:.0} s", j.retry_delay.0.as_secs_f64())
                            } else {
                                "; giving up until the next interval".into()
                            }
                        ),
                    );
                    if left == 0 || !sleep_until(Instant::now() + j.retry_delay.0, stop) {
                        break;
                    }
                }
            }
        }
        if once || !sleep_until(started + j.interval.0, stop) {
            return last_ok;
        }
    }
}

/// One run of a job: the backup, then its retention. Returns the log line.
fn run_once(job: &Ready, log: &Mutex<dyn Write + Send>) -> Result<String> {
    let j = &job.job;
    // Notices (why a run is full, a diff instead of the change log) go to the log as they come.
    let mut notice = |e: Event| {
        if let Event::Notice(n) = e {
            say(log, &format!("job {}: {n}", job.name));
        }
    };
    let backend = stores::open_source(&job.source)?;
    if let Place::Local(dir) = &job.to {
        stores::check_backup_dir(dir)?;
    }
    let full = j.full_every > 0 && incrementals_since_full(&job.to) >= j.full_every;
    let options = BackupOptions {
        mode: if full {
            BackupMode::Full
        } else {
            BackupMode::Auto
        },
        // A store followed by several jobs: the log is trimmed below, for all of them.
        trim_changes: job.shared_log.is_none(),
        ..BackupOptions::default()
    };
    let (line, reached) = match (job.compression, &job.to) {
        (None, Place::Local(dir)) => {
            let s = backup_folder(backend.as_ref(), dir, &options, &mut notice)
                .with_context(|| format!("backup of {} to {}", job.source, job.to))?;
            (
                format!(
                    "Backup ({}) of {} to {}: {} records written, {} deleted, {} in backup (checkpoint {})",
                    s.method, job.source, job.to, s.records_written, s.records_deleted,
                    s.records_total, s.checkpoint.position
                ),
                s.checkpoint,
            )
        }
        (None, Place::Remote(url)) => bail!("{url}: remote destinations take archives"),
        (Some(compression), place) => {
            let archive_options = ArchiveOptions {
                compression,
                ..ArchiveOptions::default()
            };
            let a = match place {
                Place::Local(dir) => backup_archive(
                    backend.as_ref(),
                    dir,
                    &options,
                    &archive_options,
                    &mut notice,
                )
                .map_err(anyhow::Error::from),
                Place::Remote(url) => crate::place::backup_remote(
                    backend.as_ref(),
                    url,
                    j.cache.as_deref(),
                    &options,
                    &archive_options,
                    &mut notice,
                ),
            }
            .with_context(|| format!("backup of {} to {}", job.source, job.to))?;
            (
                format!(
                    "Archive ({}) {}: {} records written, {} deleted, {} in backup, {} bytes (checkpoint {})",
                    a.kind,
                    a.file.file_name().unwrap_or_default().to_string_lossy(),
                    a.backup.records_written,
                    a.backup.records_deleted,
                    a.backup.records_total,
                    a.size,
                    a.backup.checkpoint.position
                ),
                a.backup.checkpoint,
            )
        }
    };
    // As in a single backup, a failed trim costs only log space: it is reported, not fatal.
    if let Some(upto) = job.shared_log.as_ref().and_then(|g| g.reached(&reached)) {
        if let Err(e) = backend.trim_changes(&upto) {
            notice(Event::Notice(format!(
                "backup complete, but trimming the change log failed: {e}"
            )));
        }
    }
    Ok(line)
}
