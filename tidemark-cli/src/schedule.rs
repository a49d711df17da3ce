//! `tidemark run --config FILE`: scheduled backups, like OrientDB's automatic backup plugin.
//! Each job backs one store (or each store a glob matches) up on its schedule — every
//! `interval` (from `first_time`), or by `cron` —, takes a full archive after every
//! `full_every` incrementals, applies its retention after each successful run, and retries a
//! failed run `retries` times `retry_delay` apart before waiting for the next time. Every run
//! is logged with its summary; a failed or interrupted run never leaves a half backup behind (the
//! engine writes aside and renames; the next run carries on). A run missed while the machine
//! slept runs once when it wakes.

use crate::metrics::{Metrics, RunReport};
use crate::place::Place;
use crate::stores::{self, StoreUrl};
use crate::timing::{Clock, When};
use anyhow::{bail, Context, Result};
use backup_core::{
    backup_folder, ArchiveOptions, BackupMode, BackupOptions, Checkpoint, Compression, Event,
    Retention,
};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Whether the job runs (default true): `enabled = false` keeps a job in the file without
    /// running it.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// The store, `KIND:PATH`; the path may be a glob (`sqlite:/data/*.db`): the job then
    /// backs up every store it matches, each to its own destination (`${DBNAME}` in `to`).
    pub source: String,
    /// With a glob source: only stores whose name (file name without extension) matches one
    /// of these globs (OrientDB's `dbInclude`).
    #[serde(default)]
    pub include: Vec<String>,
    /// With a glob source: not the stores whose name matches one of these (`dbExclude`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The backup directory, or an object store URL (archives only). May name the store and
    /// the run's date: `${DBNAME}`, `${DATE:yyyy-MM-dd}` (expanded at each run).
    pub to: String,
    /// Remote destinations: the local directory of the key state incrementals continue from.
    pub cache: Option<PathBuf>,
    /// `archive` (default) or `folder`.
    #[serde(default = "default_format")]
    pub format: String,
    /// `deflate`, `zstd` or `none`. Default, when neither this nor `level` is set: an existing
    /// chain's own codec (as `tidemark backup` without `--compression`), deflate for a new one.
    #[serde(default)]
    pub compression: Option<String>,
    /// Compression level (deflate 0-9, default 9; zstd 1-22, default 3).
    pub level: Option<u8>,
    /// Time between runs: seconds, or a number with `s`, `m`, `h` or `d` (or set `cron`).
    pub interval: Option<Duration_>,
    /// With `interval`: the local time of day of the first run (`"03:00"`), the grid the
    /// later runs keep (OrientDB's `firstTime`).
    pub first_time: Option<String>,
    /// Instead of `interval`: a cron expression in local time, five fields (`"0 3 * * *"`) or
    /// six with seconds first (`"*/30 * * * * *"`), or `@daily`, `@hourly`….
    pub cron: Option<String>,
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
    /// Called (HTTP GET) after each successful run, e.g. a healthchecks.io check URL.
    pub heartbeat_url: Option<String>,
    /// Called (HTTP GET) after a run failed (once its retries are spent).
    pub failure_url: Option<String>,
    /// Archives: a file whose first line is the passphrase that encrypts the chain (as
    /// `--encrypt-passphrase-file`).
    pub encrypt_passphrase_file: Option<PathBuf>,
    /// Archives: age recipients (`age1…`) a new chain's key is encrypted to.
    #[serde(default)]
    pub encrypt_recipients: Vec<String>,
    /// Archives: age identity files that open the chain's key (as `--encrypt-identity`).
    #[serde(default)]
    pub encrypt_identities: Vec<PathBuf>,
}

fn default_enabled() -> bool {
    true
}
fn default_format() -> String {
    "archive".into()
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

/// How the log and `run --check` show a local time.
const LOCAL_TIME: &str = "%Y-%m-%d %H:%M:%S %:z";

/// A job checked and ready to run.
struct Ready {
    name: String,
    source: StoreUrl,
    /// The store's name for `${DBNAME}`.
    db_name: String,
    when: When,
    job: Job,
    compression: Option<Compression>,
    /// Archives: an existing chain goes on in its own codec (the job names no codec or level).
    follow_chain: bool,
    /// The encryption options (empty for a plain chain).
    keys: backup_core::KeyOptions,
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

impl Ready {
    /// The destination of a run at `now` (the job's `to`, its variables expanded).
    fn place(&self, now: chrono::DateTime<chrono::Local>) -> Result<Place> {
        let to = crate::timing::expand(&self.job.to, &self.db_name, now)?;
        to.parse().map_err(anyhow::Error::msg)
    }
}

/// A store's name: its file or directory name without the extension.
fn db_name(url: &StoreUrl) -> String {
    url.path
        .file_stem()
        .unwrap_or(url.path.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// The stores a job's `source` names: one, or each one its glob matches (filtered by
/// `include` and `exclude`), in path order.
fn sources(job: &Job) -> Result<Vec<StoreUrl>> {
    let url: StoreUrl = job.source.parse().map_err(anyhow::Error::msg)?;
    let pattern = url.path.to_string_lossy().into_owned();
    if !pattern.contains(['*', '?', '[']) {
        if !job.include.is_empty() || !job.exclude.is_empty() {
            bail!("`include` and `exclude` choose among the stores a glob source matches (e.g. sqlite:/data/*.db)");
        }
        return Ok(vec![url]);
    }
    let globs = |list: &[String], what: &str| -> Result<Vec<glob::Pattern>> {
        list.iter()
            .map(|g| glob::Pattern::new(g).with_context(|| format!("{what} glob `{g}`")))
            .collect()
    };
    let (include, exclude) = (
        globs(&job.include, "include")?,
        globs(&job.exclude, "exclude")?,
    );
    let mut out = Vec::new();
    for path in glob::glob(&pattern).with_context(|| format!("source glob `{pattern}`"))? {
        let path = path.with_context(|| format!("source glob `{pattern}`"))?;
        let store = StoreUrl {
            kind: url.kind,
            path,
        };
        let name = db_name(&store);
        if (include.is_empty() || include.iter().any(|p| p.matches(&name)))
            && !exclude.iter().any(|p| p.matches(&name))
        {
            out.push(store);
        }
    }
    if out.is_empty() {
        bail!(
            "`{}` matches no store (after include and exclude)",
            job.source
        );
    }
    if out.len() > 1 && !job.to.contains("${DBNAME}") {
        bail!(
            "`{}` matches {} stores, which would share one destination: put ${{DBNAME}} in `to`",
            job.source,
            out.len()
        );
    }
    Ok(out)
}

/// Reads and checks a configuration file (every job, before anything runs). Also returns the
/// names of the jobs that are disabled.
fn load(path: &Path, clock: &dyn Clock) -> Result<(Vec<Ready>, Vec<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if config.jobs.is_empty() {
        bail!("{}: no [[job]] in the file", path.display());
    }
    let mut out = Vec::new();
    let mut disabled = Vec::new();
    for (i, job) in config.jobs.into_iter().enumerate() {
        let name = job.name.clone().unwrap_or_else(|| job.to.clone());
        let ctx = || format!("{}: job {} ({name})", path.display(), i + 1);
        let when = When::of(
            job.interval.map(|d| d.0),
            job.first_time.as_deref(),
            job.cron.as_deref(),
        )
        .with_context(ctx)?;
        let (compression, follow_chain) = match job.format.as_str() {
            "folder" => {
                if job.retention.is_some() || job.full_every > 0 {
                    bail!(
                        "{}: retention and full_every apply to the archive format",
                        ctx()
                    );
                }
                (None, false)
            }
            "archive" => {
                let (c, follow) =
                    crate::commands::backup::compression_of(job.compression.as_deref(), job.level)
                        .with_context(ctx)?;
                (Some(c), follow)
            }
            other => bail!("{}: format `{other}` is not folder or archive", ctx()),
        };
        if let Some(r) = &job.retention {
            if r.is_empty() {
                bail!(
                    "{}: [job.retention] sets no keep_last, keep_daily, keep_weekly or keep_within",
                    ctx()
                );
            }
        }
        for url in [&job.heartbeat_url, &job.failure_url].into_iter().flatten() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{}: `{url}` is not an http:// or https:// URL", ctx());
            }
            if !cfg!(feature = "remote") {
                bail!(
                    "{}: heartbeats need the HTTP client of the `remote` feature (rebuild with `--features remote`)",
                    ctx()
                );
            }
        }
        let mut keys = crate::KeyArgs {
            encrypt_passphrase_file: job.encrypt_passphrase_file.clone(),
            encrypt_recipient: job.encrypt_recipients.clone(),
            encrypt_identity: job.encrypt_identities.clone(),
        }
        .options()
        .with_context(ctx)?;
        // The job opens its chain at every run (and again to prune or compact it): its key is
        // unwrapped once, where a passphrase costs age's scrypt (a second and hundreds of MiB)
        // at every unwrap.
        keys.remembered = Some(Default::default());
        if keys.any() && compression.is_none() {
            bail!(
                "{}: encryption applies to the archive format (a folder backup is plain files)",
                ctx()
            );
        }
        let stores = sources(&job).with_context(ctx)?;
        let several = stores.len() > 1;
        for source in stores {
            let db_name = db_name(&source);
            let ready = Ready {
                name: if several {
                    format!("{name} ({db_name})")
                } else {
                    name.clone()
                },
                source,
                db_name,
                when: when.clone(),
                job: job.clone(),
                compression,
                follow_chain,
                keys: keys.clone(),
                shared_log: None,
            };
            // The destination as of now: checked here, expanded again at each run.
            let to = ready.place(clock.now()).with_context(ctx)?;
            crate::place::require_archive(&to, job.format == "archive").with_context(ctx)?;
            if job.enabled {
                out.push(ready);
            } else {
                disabled.push(ready.name);
            }
        }
    }
    if out.is_empty() {
        bail!(
            "{}: every job is disabled (`enabled = false`)",
            path.display()
        );
    }
    group_by_store(&mut out);
    Ok((out, disabled))
}

/// `tidemark run --check`: the jobs as the scheduler reads them, each with its next `n` run
/// times (local), without running anything.
pub fn check(path: &Path, n: usize, out: &mut dyn Write) -> Result<()> {
    let clock = crate::timing::SystemClock;
    let (jobs, disabled) = load(path, &clock)?;
    let now = clock.now();
    writeln!(out, "{}: {} job(s) ready", path.display(), jobs.len())?;
    for job in &jobs {
        writeln!(
            out,
            "job {}: {} -> {} ({}, {})",
            job.name,
            job.source,
            job.place(now)?,
            job.job.format,
            job.when.describe()
        )?;
        for t in job.when.upcoming(now, n) {
            writeln!(out, "  {}", t.format(LOCAL_TIME))?;
        }
    }
    for name in disabled {
        writeln!(out, "job {name}: disabled")?;
    }
    Ok(())
}

/// Runs every job until `stop` is set; with `once`, runs each job once and returns. Returns
/// whether every job's last run succeeded.
pub fn run(
    path: &Path,
    once: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<dyn Write + Send>>,
    metrics_addr: Option<&str>,
) -> Result<bool> {
    let metrics = match metrics_addr {
        Some(addr) => {
            let m = Arc::new(Metrics::default());
            let bound = crate::metrics::serve(addr, m.clone())?;
            say(&log, &format!("metrics at http://{bound}/metrics"));
            Some(m)
        }
        None => None,
    };
    let ok = run_with(
        path,
        once,
        stop,
        log,
        Arc::new(crate::timing::SystemClock),
        metrics,
    );
    crate::metrics::wait_for_heartbeats();
    ok
}

/// [`run`] on a given clock (tests use a fake one).
pub(crate) fn run_with(
    path: &Path,
    once: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<dyn Write + Send>>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
) -> Result<bool> {
    let (jobs, disabled) = load(path, clock.as_ref())?;
    for name in disabled {
        say(
            &log,
            &format!("job {name}: disabled (enabled = false), not run"),
        );
    }
    let mut threads = Vec::new();
    for ready in jobs {
        let stop = stop.clone();
        let log = log.clone();
        let clock = clock.clone();
        let metrics = metrics.clone();
        if let Some(m) = &metrics {
            m.declare(&ready.name);
        }
        threads.push(std::thread::spawn(move || {
            job_loop(
                &ready,
                once,
                &stop,
                &log,
                clock.as_ref(),
                metrics.as_deref(),
            )
        }));
    }
    let mut all_ok = true;
    for t in threads {
        all_ok &= t.join().unwrap_or(false);
    }
    Ok(all_ok)
}

/// `run --json`: the log as JSON lines (set once, before the jobs start).
static JSON_LOG: AtomicBool = AtomicBool::new(false);

/// Makes the log JSON lines: each log line becomes `{"type": "log", "time", "message"}`, and
/// each run also gives a `job_run` object with its figures (as the metrics count them).
pub fn json_log() {
    JSON_LOG.store(true, Ordering::SeqCst);
}

fn say(log: &Mutex<dyn Write + Send>, line: &str) {
    let now = backup_core::now_rfc3339();
    if JSON_LOG.load(Ordering::SeqCst) {
        emit(
            log,
            serde_json::json!({"schema": 1, "type": "log", "time": now, "message": line}),
        );
    } else if let Ok(mut w) = log.lock() {
        let _ = writeln!(w, "{now} {line}");
        let _ = w.flush();
    }
}

/// Writes one JSON object as a line of the log.
fn emit(log: &Mutex<dyn Write + Send>, value: serde_json::Value) {
    if let Ok(mut w) = log.lock() {
        let _ = writeln!(w, "{value}");
        let _ = w.flush();
    }
}

/// Incrementals since the newest full archive of the chain at `place`.
fn incrementals_since_full(place: &Place, keys: &backup_core::KeyOptions) -> u32 {
    let (chain, _) = crate::place::chain(place, keys).unwrap_or_default();
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

fn job_loop(
    job: &Ready,
    once: bool,
    stop: &AtomicBool,
    log: &Mutex<dyn Write + Send>,
    clock: &dyn Clock,
    metrics: Option<&Metrics>,
) -> bool {
    let j = &job.job;
    let anchor = clock.now();
    let mut due = if once { anchor } else { job.when.first(anchor) };
    if !once {
        say(
            log,
            &format!(
                "job {}: {}, first run {}",
                job.name,
                job.when.describe(),
                due.format(LOCAL_TIME)
            ),
        );
    }
    loop {
        if !once && !clock.sleep_until(due, stop) {
            return true;
        }
        let started = clock.now();
        if !once && started - due > chrono::Duration::seconds(1) {
            // One run now, however many times were missed; the schedule goes on from here.
            say(
                log,
                &format!(
                    "job {}: the run due at {} was missed (the machine slept, or a run \
                     outlasted the schedule): running once now",
                    job.name,
                    due.format(LOCAL_TIME)
                ),
            );
        }
        let mut attempt = 0;
        let mut last_ok;
        let mut done = None;
        let timer = std::time::Instant::now();
        let to = match job.place(started) {
            Ok(to) => to,
            Err(e) => {
                say(log, &format!("job {}: {e:#}", job.name));
                return false;
            }
        };
        loop {
            attempt += 1;
            match run_once(job, &to, log) {
                Ok(run) => {
                    say(log, &format!("job {}: {}", job.name, run.line));
                    done = Some(run);
                    last_ok = true;
                    if j.compact {
                        // In the job's codec (or the chain's, as its backups), not the
                        // default deflate-9.
                        let options = backup_core::CompactOptions {
                            fanout: j.fanout.unwrap_or(backup_core::DEFAULT_FANOUT),
                            archive: ArchiveOptions {
                                compression: job.compression.unwrap_or_default(),
                                follow_chain: job.follow_chain,
                                ..ArchiveOptions::default()
                            },
                            ..Default::default()
                        };
                        match crate::place::compact(&to, &job.keys, &options) {
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
                        let pruned = crate::place::prune(&to, &job.keys, r, false);
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
                                "; giving up until the next run".into()
                            }
                        ),
                    );
                    let retry_at = clock.now()
                        + chrono::Duration::from_std(j.retry_delay.0)
                            .unwrap_or(chrono::Duration::MAX);
                    if left == 0 || !clock.sleep_until(retry_at, stop) {
                        break;
                    }
                }
            }
        }
        report(job, &to, done, timer.elapsed(), last_ok, log, metrics);
        if once || stop.load(Ordering::SeqCst) {
            return last_ok;
        }
        let next = job.when.next(anchor, started, clock.now());
        due = next;
    }
}

/// What a successful run of a job did.
struct Done {
    line: String,
    bytes: u64,
    records: u64,
    captured_at: String,
}

/// Tells the metrics and the heartbeat URLs how a run (with its retries, compaction and
/// retention) went.
fn report(
    job: &Ready,
    to: &Place,
    done: Option<Done>,
    took: Duration,
    ok: bool,
    log: &Mutex<dyn Write + Send>,
    metrics: Option<&Metrics>,
) {
    if let Some(m) = metrics {
        match &done {
            Some(d) => {
                let chain_length = (job.compression.is_some())
                    .then(|| {
                        crate::place::chain(to, &job.keys)
                            .ok()
                            .map(|(c, _)| c.len() as u64)
                    })
                    .flatten();
                m.success(
                    &job.name,
                    &RunReport {
                        duration: took,
                        bytes: d.bytes,
                        records: d.records,
                        captured_at: &d.captured_at,
                        chain_length,
                    },
                );
            }
            None => m.failure(&job.name),
        }
    }
    if JSON_LOG.load(Ordering::SeqCst) {
        emit(
            log,
            serde_json::json!({
                "schema": 1,
                "type": "job_run",
                "time": backup_core::now_rfc3339(),
                "job": job.name,
                "destination": to.to_string(),
                "result": if ok { "success" } else { "failure" },
                "seconds": took.as_secs_f64(),
                "records_written": done.as_ref().map(|d| d.records),
                "bytes_written": done.as_ref().map(|d| d.bytes),
                "captured_at": done.as_ref().map(|d| d.captured_at.clone()),
            }),
        );
    }
    let url = if ok {
        &job.job.heartbeat_url
    } else {
        &job.job.failure_url
    };
    if let Some(url) = url {
        let name = job.name.clone();
        let log_line = move |msg: String| {
            // The log is the process's stdout: a heartbeat's failure goes to stderr.
            eprintln!("tidemark: job {name}: {msg}");
        };
        crate::metrics::ping(url.clone(), Box::new(log_line));
    }
}

/// One run of a job: the backup, then its retention. Returns the log line.
fn run_once(job: &Ready, to: &Place, log: &Mutex<dyn Write + Send>) -> Result<Done> {
    let j = &job.job;
    // Notices (why a run is full, a diff instead of the change log) go to the log as they come.
    let mut notice = |e: Event| {
        if let Event::Notice(n) = e {
            say(log, &format!("job {}: {n}", job.name));
        }
    };
    let backend = stores::open_source(&job.source, false)?;
    if let Place::Local(dir) = to {
        stores::check_backup_dir(dir, &job.source)?;
    }
    let full = j.full_every > 0 && incrementals_since_full(to, &job.keys) >= j.full_every;
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
    let (done, reached) = match (job.compression, to) {
        (None, Place::Local(dir)) => {
            let s = backup_folder(backend.as_ref(), dir, &options, &mut notice)
                .with_context(|| format!("backup of {} to {}", job.source, to))?;
            let line = format!(
                "Backup ({}) of {} to {}: {} records written, {} deleted, {} in backup (checkpoint {})",
                s.method, job.source, to, s.records_written, s.records_deleted,
                s.records_total, s.checkpoint.position
            );
            (
                Done {
                    line,
                    bytes: s.bytes_written,
                    records: s.records_written,
                    captured_at: s.captured_at,
                },
                s.checkpoint,
            )
        }
        (None, Place::Remote(url)) => bail!("{url}: remote destinations take archives"),
        (Some(compression), place) => {
            let archive_options = ArchiveOptions {
                compression,
                follow_chain: job.follow_chain,
                ..ArchiveOptions::default()
            };
            let a = crate::place::backup_archive(
                backend.as_ref(),
                place,
                j.cache.as_deref(),
                &job.keys,
                &options,
                &archive_options,
                &mut notice,
            )
            .with_context(|| format!("backup of {} to {}", job.source, to))?;
            let line = format!(
                "Archive ({}) {}: {} records written, {} deleted, {} in backup, {} bytes (checkpoint {})",
                a.kind,
                a.file.file_name().unwrap_or_default().to_string_lossy(),
                a.backup.records_written,
                a.backup.records_deleted,
                a.backup.records_total,
                a.size,
                a.backup.checkpoint.position
            );
            (
                Done {
                    line,
                    bytes: a.size,
                    records: a.backup.records_written,
                    captured_at: a.backup.captured_at.clone(),
                },
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
    Ok(done)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::timing::tests::at;
    use chrono::{DateTime, Local};

    /// A clock whose sleeps return at once, at the time slept to (plus, after the n-th sleep,
    /// the time the machine "slept" in `asleep`), and that stops the scheduler after `sleeps`.
    struct FakeClock {
        now: Mutex<DateTime<Local>>,
        sleeps: Mutex<Vec<DateTime<Local>>>,
        asleep: Vec<(usize, chrono::Duration)>,
        stop_after: usize,
        stop: Arc<AtomicBool>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> DateTime<Local> {
            *self.now.lock().unwrap()
        }
        fn sleep_until(&self, t: DateTime<Local>, stop: &AtomicBool) -> bool {
            let mut sleeps = self.sleeps.lock().unwrap();
            if sleeps.len() == self.stop_after {
                self.stop.store(true, Ordering::SeqCst);
            }
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let mut now = self.now.lock().unwrap();
            let extra = self
                .asleep
                .iter()
                .find(|(n, _)| *n == sleeps.len())
                .map_or(chrono::Duration::zero(), |(_, d)| *d);
            *now = (*now).max(t) + extra;
            sleeps.push(*now);
            true
        }
    }

    /// A daily cron job under a fake clock, with real backups of a real SQLite database: it
    /// runs at each 03:00; after the machine slept over three of them it runs once at the
    /// wake-up, then at the next 03:00; each run's destination is named by its date; a
    /// disabled job never runs.
    #[test]
    fn a_daily_job_runs_on_time_and_once_after_a_sleep() {
        let d = tempfile::tempdir().unwrap();
        let db = d.path().join("orders.db");
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .unwrap();
        let config = d.path().join("jobs.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[[job]]
name = "nightly"
source = "sqlite:{db}"
to = "{dir}/bk/${{DBNAME}}-${{DATE:yyyy-MM-dd}}"
cron = "0 3 * * *"

[[job]]
name = "off"
enabled = false
source = "sqlite:{db}"
to = "{dir}/never"
interval = "1m"
"#,
                db = db.display(),
                dir = d.path().display()
            ),
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let clock = Arc::new(FakeClock {
            now: Mutex::new(at("2026-12-02 10:00:00")),
            sleeps: Mutex::new(Vec::new()),
            // The second sleep (to the 4th, 03:00) wakes on the 6th at 08:00.
            asleep: vec![(1, chrono::Duration::hours(53))],
            stop_after: 3,
            stop: stop.clone(),
        });
        let log: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let ok = run_with(&config, false, stop, log.clone(), clock.clone(), None).unwrap();
        assert!(ok);
        let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        // Woken at 03:00 on the 3rd, 08:00 on the 6th (the 4th, 5th and 6th missed), then
        // 03:00 on the 7th.
        let sleeps: Vec<String> = clock
            .sleeps
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.format("%d %H:%M").to_string())
            .collect();
        assert_eq!(sleeps, ["03 03:00", "06 08:00", "07 03:00"], "{text}");
        assert_eq!(text.matches("job nightly: Archive").count(), 3, "{text}");
        assert_eq!(text.matches("was missed").count(), 1, "{text}");
        assert!(text.contains("job off: disabled"), "{text}");
        let mut dirs: Vec<String> = std::fs::read_dir(d.path().join("bk"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        assert_eq!(
            dirs,
            [
                "orders-2026-12-03",
                "orders-2026-12-06",
                "orders-2026-12-07"
            ]
        );
        assert!(!d.path().join("never").exists());
    }
}
