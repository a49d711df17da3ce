//! What this process has under way on object stores (multipart uploads, held locks), so that
//! a Ctrl-C or SIGTERM handler that exits the process at once can first abort the uploads and
//! remove the locks ([`abandon_all`]): otherwise an upload's parts stay in the bucket,
//! invisible but stored (and paid for) until a lifecycle rule removes them, and the lock
//! object stays until it expires.
//!
//! Each upload and lock registers itself when it starts and leaves when it completes or is
//! dropped; [`abandon_all`] also refuses uploads started after it ([`start_upload`]). Two
//! windows are closed so that no upload escapes: an upload whose creation request is under way
//! when the handler runs is waited for (it registers, and is aborted), and an upload being
//! completed keeps its registration's lock until the completion's answer, so the handler
//! either sees it completed or aborts it.

use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::runtime::Runtime;

/// A multipart upload, shared with the registry: whoever takes it out of the `Option` first
/// (the upload's completion, its drop, or [`abandon_all`]) finishes or aborts it.
pub(crate) type SharedUpload = Arc<Mutex<Option<Box<dyn MultipartUpload>>>>;

/// A held lock: the store, the lock object and the token that makes it this process's.
pub(crate) struct HeldLock {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: ObjectPath,
    pub(crate) token: String,
}

#[derive(Default)]
struct UnderWay {
    /// Set by [`abandon_all`]: no upload starts after it.
    closing: bool,
    /// Uploads whose creation request is under way (not registered yet).
    starting: usize,
    next: u64,
    uploads: BTreeMap<u64, (Arc<Runtime>, SharedUpload)>,
    locks: BTreeMap<u64, Arc<HeldLock>>,
}

static UNDER_WAY: Mutex<Option<UnderWay>> = Mutex::new(None);

fn under_way() -> MutexGuard<'static, Option<UnderWay>> {
    UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long [`abandon_all`] waits for each request: an unreachable server must not keep an
/// interrupted process from exiting.
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

/// An upload about to be created ([`start_upload`]): registers it ([`Starting::started`]), or
/// on drop (its creation failed) lets [`abandon_all`] stop waiting for it.
pub(crate) struct Starting {
    done: bool,
}

impl Starting {
    /// Registers the upload that was just created; `None` if [`abandon_all`] ran meanwhile
    /// (it aborts the upload, or the caller does by dropping it: whoever takes it first).
    /// Returns its registration, to [`finished_upload`].
    pub(crate) fn started(mut self, rt: &Arc<Runtime>, upload: &SharedUpload) -> Option<u64> {
        self.done = true;
        let mut guard = under_way();
        let u = guard.get_or_insert_with(UnderWay::default);
        u.starting -= 1;
        u.next += 1;
        u.uploads.insert(u.next, (rt.clone(), upload.clone()));
        (!u.closing).then_some(u.next)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if !self.done {
            if let Some(u) = under_way().as_mut() {
                u.starting -= 1;
            }
        }
    }
}

/// An upload is about to be created: `None` once [`abandon_all`] ran (no upload starts then).
/// [`abandon_all`] waits for the returned [`Starting`] to register its upload or be dropped.
pub(crate) fn start_upload() -> Option<Starting> {
    let mut guard = under_way();
    let u = guard.get_or_insert_with(UnderWay::default);
    if u.closing {
        return None;
    }
    u.starting += 1;
    Some(Starting { done: false })
}

/// An upload completed or was dropped.
pub(crate) fn finished_upload(id: u64) {
    if let Some(u) = under_way().as_mut() {
        u.uploads.remove(&id);
    }
}

/// Registers a lock this process took; returns its registration, to [`released_lock`].
pub(crate) fn took_lock(lock: Arc<HeldLock>) -> u64 {
    let mut guard = under_way();
    let u = guard.get_or_insert_with(UnderWay::default);
    u.next += 1;
    u.locks.insert(u.next, lock);
    u.next
}

/// A lock was released (its object removed by its owner).
pub(crate) fn released_lock(id: u64) {
    if let Some(u) = under_way().as_mut() {
        u.locks.remove(&id);
    }
}

/// Aborts every multipart upload under way and removes every lock object this process holds
/// (one that still carries its token), each request given at most 10 seconds; from then on no
/// upload starts. An upload whose creation is under way is waited for and aborted; one being
/// completed is waited for and left complete. For a Ctrl-C or SIGTERM handler that exits the
/// process right after. Returns the number of uploads aborted.
pub fn abandon_all() -> usize {
    let deadline = std::time::Instant::now() + ABANDON_TIMEOUT;
    {
        let mut guard = under_way();
        guard.get_or_insert_with(UnderWay::default).closing = true;
    }
    // Creation requests under way register their uploads (or fail) within their request's time.
    while under_way().as_ref().is_some_and(|u| u.starting > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (uploads, locks) = {
        let mut guard = under_way();
        let u = guard.get_or_insert_with(UnderWay::default);
        (std::mem::take(&mut u.uploads), std::mem::take(&mut u.locks))
    };
    let mut aborted = 0;
    for (rt, upload) in uploads.into_values() {
        // A completion holds the upload's lock until the server answers: wait for it (bounded).
        let taken = loop {
            match upload.try_lock() {
                Ok(mut u) => break u.take(),
                Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner().take(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline + ABANDON_TIMEOUT {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        };
        if let Some(mut upload) = taken {
            let abort = async { tokio::time::timeout(ABANDON_TIMEOUT, upload.abort()).await };
            if let Ok(Ok(())) = rt.block_on(abort) {
                aborted += 1;
            }
        }
    }
    for l in locks.into_values() {
        let remove = crate::remove_own_lock(l.store.as_ref(), &l.path, &l.token);
        let _ =
            l.rt.block_on(async { tokio::time::timeout(ABANDON_TIMEOUT, remove).await });
    }
    aborted
}
