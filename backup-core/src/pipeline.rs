//! Work spread over threads with results in submission order and bounded memory: the shape of
//! both the archive writer (encode and compress chunks of records) and the archive reader
//! (decompress and parse parts).
//!
//! The caller submits jobs from one thread; `threads` workers run them; results come back to
//! the caller in the order the jobs were submitted. At most `2 × threads` jobs are in flight,
//! so memory stays at a few jobs whatever the size of the stream. With `threads <= 1` the work
//! runs on the caller's thread.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

type Work<S, J, R> = Arc<dyn Fn(&mut S, J) -> R + Send + Sync>;

/// An ordered pipeline of jobs `J` giving results `R`.
pub(crate) struct Pipeline<S, J: Send + 'static, R: Send + 'static> {
    mode: Mode<S, J, R>,
    submitted: u64,
    delivered: u64,
    waiting: BTreeMap<u64, R>,
    max_in_flight: u64,
}

enum Mode<S, J: Send + 'static, R: Send + 'static> {
    Inline {
        state: S,
        work: Work<S, J, R>,
    },
    Threads {
        jobs: Option<SyncSender<(u64, J)>>,
        results: Receiver<(u64, R)>,
        workers: Vec<JoinHandle<()>>,
    },
}

impl<S: 'static, J: Send + 'static, R: Send + 'static> Pipeline<S, J, R> {
    /// A pipeline of `threads` workers, each with its own state from `init` (e.g. a
    /// compression context), running `work`.
    pub(crate) fn new(
        threads: usize,
        init: impl Fn() -> S + Send + Sync + 'static,
        work: impl Fn(&mut S, J) -> R + Send + Sync + 'static,
    ) -> Self {
        let work: Work<S, J, R> = Arc::new(work);
        let threads = threads.max(1);
        let mode = if threads == 1 {
            Mode::Inline {
                state: init(),
                work,
            }
        } else {
            let (job_tx, job_rx) = mpsc::sync_channel::<(u64, J)>(threads);
            let (res_tx, res_rx) = mpsc::channel::<(u64, R)>();
            let job_rx = Arc::new(Mutex::new(job_rx));
            let init = Arc::new(init);
            let workers = (0..threads)
                .map(|_| {
                    let (job_rx, res_tx, init, work) =
                        (job_rx.clone(), res_tx.clone(), init.clone(), work.clone());
                    std::thread::spawn(move || {
                        lower_priority();
                        let mut state = init();
                        loop {
                            let job = {
                                let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                                rx.recv()
                            };
                            let Ok((n, job)) = job else { return };
                            if res_tx.send((n, work(&mut state, job))).is_err() {
                                return;
                            }
                        }
                    })
                })
                .collect();
            Mode::Threads {
                jobs: Some(job_tx),
                results: res_rx,
                workers,
            }
        };
        Pipeline {
            mode,
            submitted: 0,
            delivered: 0,
            waiting: BTreeMap::new(),
            max_in_flight: 2 * threads as u64,
        }
    }

    /// Submits a job; hands results that are ready, in order, to `out` (waiting for one when
    /// too many jobs are in flight).
    pub(crate) fn submit(&mut self, job: J, out: &mut dyn FnMut(R) -> Result<()>) -> Result<()> {
        let n = self.submitted;
        self.submitted += 1;
        match &mut self.mode {
            Mode::Inline { state, work } => {
                let r = work(state, job);
                self.delivered += 1;
                return out(r);
            }
            Mode::Threads { jobs, .. } => {
                let tx = jobs.as_ref().ok_or_else(gone)?;
                tx.send((n, job)).map_err(|_| gone())?;
            }
        }
        while self.submitted - self.delivered >= self.max_in_flight {
            self.deliver_one(out)?;
        }
        Ok(())
    }

    /// Waits for every job submitted and hands the remaining results to `out`, in order.
    pub(crate) fn finish(&mut self, out: &mut dyn FnMut(R) -> Result<()>) -> Result<()> {
        while self.delivered < self.submitted {
            self.deliver_one(out)?;
        }
        Ok(())
    }

    /// Receives results until the next one in order is there, and hands it on.
    fn deliver_one(&mut self, out: &mut dyn FnMut(R) -> Result<()>) -> Result<()> {
        let Mode::Threads { results, .. } = &self.mode else {
            return Ok(());
        };
        while !self.waiting.contains_key(&self.delivered) {
            let (n, r) = results.recv().map_err(|_| gone())?;
            self.waiting.insert(n, r);
        }
        let r = self.waiting.remove(&self.delivered).expect("checked");
        self.delivered += 1;
        out(r)
    }
}

impl<S, J: Send + 'static, R: Send + 'static> Drop for Pipeline<S, J, R> {
    fn drop(&mut self) {
        if let Mode::Threads { jobs, workers, .. } = &mut self.mode {
            jobs.take(); // workers see the channel close and stop
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

fn gone() -> Error {
    Error::Io {
        op: "run",
        path: "worker threads".into(),
        source: std::io::Error::other("a worker thread stopped (it panicked)"),
    }
}

/// How many nice steps below the caller's its workers run. The one thread that feeds or
/// drains a pipeline (a store's scan, a restore's inserts) is the stream's bottleneck, and
/// workers sharing its core at the same priority slowed it: a full backup of 1M records of
/// 100 bytes on 2 cores took 0.80 s with equal priorities and 0.74 s with this (medians of 8).
const WORKER_NICENESS: i32 = 5;

/// Lowers the calling thread's scheduling priority by [`WORKER_NICENESS`] (Linux: nice values
/// are per thread). Best effort: a failure leaves the priority as it was.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: gettid, getpriority and setpriority act on the calling thread only, and errno is
    // the calling thread's.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + WORKER_NICENESS).min(19));
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// The number of threads to use by default: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Drops values on a thread of its own, so that the thread that used them goes on: a restore's
/// store thread is its critical path, and freeing a batch of decoded records (several
/// allocations each, made on the decoders' threads) was an eighth of its time.
///
/// At most two values wait, so memory stays bounded; if the thread cannot start, values are
/// dropped where they are handed over. Dropping a `DropBehind` waits for what it holds.
pub struct DropBehind<T: Send + 'static> {
    tx: Option<SyncSender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> DropBehind<T> {
    /// Starts the thread, named `name`.
    pub fn new(name: &str) -> Self {
        let (tx, rx) = mpsc::sync_channel::<T>(2);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok();
        DropBehind {
            tx: thread.is_some().then_some(tx),
            thread,
        }
    }

    /// Drops `value` on the thread (or here, without one).
    pub fn later(&self, value: T) {
        if let Some(tx) = &self.tx {
            // A send fails only if the thread is gone, handing the value back to drop here.
            if let Err(mpsc::SendError(v)) = tx.send(value) {
                drop(v);
            }
        }
    }
}

impl<T: Send + 'static> Drop for DropBehind<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value handed over is dropped, on another thread, by the time the `DropBehind` is.
    #[test]
    fn values_are_dropped_behind_and_waited_for() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counted(Arc<AtomicUsize>, Arc<Mutex<Vec<std::thread::ThreadId>>>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
                self.1
                    .lock()
                    .expect("not poisoned")
                    .push(std::thread::current().id());
            }
        }
        let (dropped, threads) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let behind = DropBehind::new("test-free");
        for _ in 0..100 {
            behind.later(Counted(dropped.clone(), Arc::clone(&threads)));
        }
        drop(behind);
        assert_eq!(dropped.load(Ordering::SeqCst), 100);
        let here = std::thread::current().id();
        assert!(threads
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|t| *t != here));
    }

    /// The calling thread's nice value (Linux: per thread).
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn niceness() -> i32 {
        // SAFETY: acts on the calling thread only.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    /// Workers run below the thread that feeds them, which keeps its own priority.
    #[cfg(target_os = "linux")]
    #[test]
    fn workers_yield_to_the_caller() {
        let caller = niceness();
        let mut p = Pipeline::new(2, || (), |(), ()| niceness());
        let mut seen = Vec::new();
        for _ in 0..4 {
            p.submit((), &mut |n| {
                seen.push(n);
                Ok(())
            })
            .expect("submitted");
        }
        p.finish(&mut |n| {
            seen.push(n);
            Ok(())
        })
        .expect("finished");
        let want = (caller + WORKER_NICENESS).min(19);
        assert_eq!(seen, vec![want; 4], "the caller runs at {caller}");
        assert_eq!(niceness(), caller);
    }

    /// Results come back in submission order whatever the workers' timing, with any number
    /// of threads.
    #[test]
    fn results_keep_their_order() {
        for threads in [1, 2, 5] {
            let mut p = Pipeline::new(
                threads,
                || 0u64,
                |count: &mut u64, x: u64| {
                    *count += 1;
                    std::thread::sleep(std::time::Duration::from_micros((x * 7919) % 300));
                    x * 2
                },
            );
            let mut got = Vec::new();
            for i in 0..200u64 {
                p.submit(i, &mut |r| {
                    got.push(r);
                    Ok(())
                })
                .expect("submit");
            }
            p.finish(&mut |r| {
                got.push(r);
                Ok(())
            })
            .expect("finish");
            assert_eq!(
                got,
                (0..200).map(|i| i * 2).collect::<Vec<_>>(),
                "{threads}"
            );
        }
    }
}
