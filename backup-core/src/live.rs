//! Live backups: follow a store as it changes until stopped.
//!
//! [`LiveBackup::start`] runs the backup once (the initial backup: full or incremental, as
//! [`crate::backup_folder`] decides), then, every flush interval in which the store changed, an
//! incremental run: the folder is updated in place, or one small archive is added per interval.
//! Every run is atomic, so stopping (or a crash) always leaves a backup that the next run
//! continues. [`LiveBackup::stop`] lets the run in progress finish, takes one last run so that
//! everything committed before the stop is durable, and returns.

use crate::archive::{
    backup_archive, backup_archive_to, compact_recent, slot_of_name, ArchiveOptions,
    ArchiveSummary, ChainStore, CompactOptions, LocalChain,
};
use crate::backend::StorageBackend;
use crate::checkpoint::Checkpoint;
use crate::engine::{backup_folder, BackupMode, BackupOptions, BackupSummary, Event};
use crate::error::Result;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a live backup writes.
#[derive(Debug, Clone)]
pub enum LiveFormat {
    /// A folder backup, updated in place.
    Folder,
    /// An archive chain: one incremental archive per flush interval with changes.
    Archive(ArchiveOptions),
    /// An archive chain kept by a [`ChainStore`] (an object store: one small archive per
    /// interval, sealed when complete); the live backup's directory holds only its key state.
    /// A run that fails (a network outage) is retried with backoff: the failed archive never
    /// joined the chain and the key state did not move, so nothing is lost or written twice.
    Chain(Arc<dyn ChainStore>, ArchiveOptions),
}

/// The first wait before a failed run of a [`LiveFormat::Chain`] backup is retried; each
/// failure doubles it, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Retries of the last run after a stop request, before the live backup gives up and reports
/// the error (so that a stop during a long outage still ends).
pub const RETRIES_AFTER_STOP: u32 = 5;

/// Options of a live backup.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Folder or archive.
    pub format: LiveFormat,
    /// How often changes are made durable in the backup.
    pub flush_interval: Duration,
    /// Options of each run (the first run uses `backup.mode`; later runs are automatic).
    pub backup: BackupOptions,
    /// Archive formats: compact as the chain grows ([`compact_recent`] after each archive), so
    /// that a restore at any point reads few archives. A compaction that fails is reported as
    /// a notice and left to `tidemark compact`; the backup goes on.
    pub compact: Option<CompactOptions>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            format: LiveFormat::Folder,
            flush_interval: Duration::from_secs(1),
            backup: BackupOptions::default(),
            compact: None,
        }
    }
}

/// Something a live backup reports.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// An event of the run in progress (write events, notices, progress).
    Run(Event),
    /// A run completed; its summary. The first one is the initial backup.
    Completed(Box<BackupSummary>),
}

/// What a live backup did in all.
#[derive(Debug, Clone, Default)]
pub struct LiveSummary {
    /// Runs completed (the initial backup included).
    pub runs: u64,
    /// The last run's summary.
    pub last: Option<BackupSummary>,
}

/// A running live backup.
pub struct LiveBackup {
    stop: Arc<AtomicBool>,
    events: Receiver<LiveEvent>,
    thread: Option<JoinHandle<Result<LiveSummary>>>,
}

impl LiveBackup {
    /// Starts following `backend` into `dir` (for [`LiveFormat::Chain`], the directory of the
    /// chain's key state).
    pub fn start(backend: Arc<dyn StorageBackend>, dir: PathBuf, options: LiveOptions) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tidemark-live".into())
            .spawn(move || follow(backend.as_ref(), &dir, &options, &flag, &tx))
            .expect("a thread can be spawned");
        LiveBackup {
            stop,
            events: rx,
            thread: Some(thread),
        }
    }

    /// The live backup's events (write events like RxDB's `writeEvents$`, progress, summaries).
    pub fn events(&self) -> &Receiver<LiveEvent> {
        &self.events
    }

    /// Blocks until the initial backup is complete, returning its summary. Events received
    /// meanwhile are passed to `on_event`.
    pub fn wait_initial(&self, on_event: &mut dyn FnMut(&LiveEvent)) -> Option<BackupSummary> {
        for event in self.events.iter() {
            on_event(&event);
            if let LiveEvent::Completed(s) = event {
                return Some(*s);
            }
        }
        None
    }

    /// A flag that stops the backup when set (e.g. from a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Whether the live backup has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops: the run in progress finishes, one last run makes everything committed so far
    /// durable, and the summary (or the error that ended the backup) is returned.
    pub fn stop(mut self) -> Result<LiveSummary> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits for the backup to end (after the stop flag was set elsewhere, or on an error).
    pub fn join(&mut self) -> Result<LiveSummary> {
        match self.thread.take() {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(crate::Error::store(
                    "live backup",
                    "the backup thread panicked",
                ))
            }),
            None => Ok(LiveSummary::default()),
        }
    }
}

fn follow(
    backend: &dyn StorageBackend,
    dir: &std::path::Path,
    options: &LiveOptions,
    stop: &AtomicBool,
    tx: &Sender<LiveEvent>,
) -> Result<LiveSummary> {
    // One writer for the whole live run, not only during each run.
    let _lock: Box<dyn std::any::Any> = match &options.format {
        LiveFormat::Chain(store, _) => Box::new(store.lock("backup --live")?),
        _ => Box::new(crate::lock::DestinationLock::acquire(dir, "backup --live")?),
    };
    let mut summary = LiveSummary::default();
    let mut mode = options.backup.mode;
    let mut final_run = false;
    // The codec of the first archive written (the chain's, with `follow_chain`): the later
    // runs use it without reading the newest archive again, and so does compaction.
    let mut codec: Option<crate::archive::Compression> = None;
    loop {
        let run_options = BackupOptions {
            mode,
            ..options.backup.clone()
        };
        let resolved = |a: &ArchiveOptions| match codec {
            Some(compression) => ArchiveOptions {
                compression,
                follow_chain: false,
                ..*a
            },
            None => *a,
        };
        let mut forward = |e: Event| {
            // A receiver that went away only means nobody listens; the backup goes on.
            let _ = tx.send(LiveEvent::Run(e));
        };
        let done = match &options.format {
            LiveFormat::Folder => backup_folder(backend, dir, &run_options, &mut forward)?,
            LiveFormat::Archive(a) => {
                let s = backup_archive(backend, dir, &run_options, &resolved(a), &mut forward)?;
                codec = Some(s.compression);
                compact_after(&LocalChain::new(dir), options, &s, &mut forward);
                s.backup
            }
            LiveFormat::Chain(store, a) => {
                let mut delay = RETRY_FIRST;
                let mut attempts_after_stop = 0;
                loop {
                    let a = resolved(a);
                    match backup_archive_to(backend, &**store, dir, &run_options, &a, &mut forward)
                    {
                        Ok(s) => {
                            codec = Some(s.compression);
                            compact_after(&**store, options, &s, &mut forward);
                            break s.backup;
                        }
                        Err(e) => {
                            if stop.load(Ordering::SeqCst) {
                                attempts_after_stop += 1;
                                if attempts_after_stop > RETRIES_AFTER_STOP {
                                    return Err(e);
                                }
                            }
                            forward(Event::Notice(format!(
                                "this run failed ({e}); nothing of it joined the chain; \
                                 retrying in {} s",
                                delay.as_secs()
                            )));
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(RETRY_MAX);
                        }
                    }
                }
            }
        };
        mode = BackupMode::Auto;
        let last = done.checkpoint.clone();
        summary.runs += 1;
        summary.last = Some(done.clone());
        let _ = tx.send(LiveEvent::Completed(Box::new(done)));
        if stop.load(Ordering::SeqCst) {
            // The stop came during this run: one more run if the store moved meanwhile (only
            // one, so a writer that never stops cannot keep the backup from ending).
            if final_run || !moved_since(backend, &last)? {
                return Ok(summary);
            }
            final_run = true;
            continue;
        }
        // Wait for the next interval with changes, checking the stop flag often.
        let deadline = Instant::now() + options.flush_interval;
        let mut changed = false;
        loop {
            let now = Instant::now();
            if stop.load(Ordering::SeqCst) {
                // One last run if anything changed: everything committed before the stop is
                // then in the backup.
                changed = changed || moved_since(backend, &last)?;
                if !changed {
                    return Ok(summary);
                }
                final_run = true;
                break;
            }
            if now >= deadline && changed {
                break;
            }
            let slice = Duration::from_millis(50).min(deadline.saturating_duration_since(now));
            let slice = if slice.is_zero() {
                Duration::from_millis(50)
            } else {
                slice
            };
            if changed {
                // Known to have changed: only the interval's end is awaited. Asking the store
                // again returned at once, and the loop spun a core until the deadline: SQLite
                // took and dropped its shared lock every 0.2 ms, and in rollback-journal mode
                // an application's writes that do not wait (no busy timeout) failed most of
                // the time.
                std::thread::sleep(slice);
            } else {
                changed = backend.wait_for_changes(&last, slice)?;
            }
        }
    }
}

/// Whether the store holds anything `last` does not: a new position, or what the backend's
/// [`StorageBackend::wait_for_changes`] sees besides (RocksDB: a file ingested with sequence
/// number 0, which moves no position).
fn moved_since(backend: &dyn StorageBackend, last: &Checkpoint) -> Result<bool> {
    Ok(backend.current_checkpoint()?.position != last.position
        || backend.wait_for_changes(last, Duration::ZERO)?)
}

/// Compacts what the archive of `run` closed, if the live backup compacts; a failure is a
/// notice (the chain is whole either way: compaction only adds archives).
fn compact_after(
    store: &dyn ChainStore,
    options: &LiveOptions,
    run: &ArchiveSummary,
    forward: &mut dyn FnMut(Event),
) {
    let Some(compact) = &options.compact else {
        return;
    };
    // Compacted archives are written in the codec of the archives they merge, when those
    // follow the chain's (a chain of zstd archives is not compacted into deflate).
    let follows = match &options.format {
        LiveFormat::Archive(a) | LiveFormat::Chain(_, a) => a.follow_chain,
        LiveFormat::Folder => false,
    };
    let compact = &CompactOptions {
        archive: ArchiveOptions {
            compression: if follows {
                run.compression
            } else {
                compact.archive.compression
            },
            ..compact.archive
        },
        ..*compact
    };
    let name = run
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(slot) = slot_of_name(&name) else {
        return;
    };
    let mut written = Vec::new();
    match compact_recent(store, compact, slot.sequence, &mut |c| {
        written.push(format!("{}..{}", c.first, c.last))
    }) {
        Ok(summary) => {
            if !written.is_empty() {
                forward(Event::Notice(format!(
                    "compacted sequences {}",
                    written.join(", ")
                )));
            }
            for why in summary.skipped {
                forward(Event::Notice(format!("not compacted: {why}")));
            }
        }
        Err(e) => forward(Event::Notice(format!(
            "compaction failed ({e}); the chain is whole, `tidemark compact` catches up"
        ))),
    }
}
