//! Multipart uploads that leave a marker object while under way, so that the parts of an
//! upload whose process was killed (`kill -9`, a crash, a lost machine: nothing ran to abort
//! it) are found and aborted by the next writer of the chain.
//!
//! object_store's high-level `put_multipart` keeps the upload's id to itself, and S3 keeps an
//! unfinished upload's parts (stored, and paid for, but listed nowhere but in
//! `ListMultipartUploads`) until a lifecycle rule removes them. Where the store offers the
//! low-level [`MultipartStore`] (S3), an upload is created through it, and its id written to
//! `.tidemark-uploads/<uuid>.json` under the chain's prefix before any part is sent. The
//! marker is removed when the upload completes or is aborted. A writer that takes the chain's
//! lock aborts the upload of every marker it finds, then removes the marker
//! ([`abort_leftovers`]): under the lock no other process uploads.
//!
//! A process killed between creating the upload and writing its marker (one request's time)
//! still leaves its parts, which are none yet.

use futures::future::BoxFuture;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    MultipartId, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, PutResult,
};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Where the markers are, under the chain's prefix (not a chain object: the chain's listing
/// takes the prefix's direct children only).
pub(crate) const MARKERS: &str = ".tidemark-uploads";

/// A marker's content: which upload of which object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    /// The object being uploaded, relative to the prefix.
    object: String,
    /// The store's id of the upload.
    upload_id: String,
}

/// A multipart upload created through [`MultipartStore`], with its marker.
pub(crate) struct MarkedUpload {
    parts_store: Arc<dyn MultipartStore>,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    id: MultipartId,
    marker: ObjectPath,
    /// Each part's id, by its index, as its upload finishes.
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
    next: usize,
}

impl std::fmt::Debug for MarkedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkedUpload")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish()
    }
}

impl MarkedUpload {
    /// Creates the upload of `object` (under `prefix`), then its marker. If the marker
    /// cannot be written, the upload is aborted and the error returned.
    pub(crate) async fn start(
        parts_store: Arc<dyn MultipartStore>,
        store: Arc<dyn ObjectStore>,
        prefix: &ObjectPath,
        object: &str,
    ) -> object_store::Result<Self> {
        let path = prefix.clone().join(object);
        let id = parts_store.create_multipart(&path).await?;
        let marker = prefix
            .clone()
            .join(MARKERS)
            .join(format!("{}.json", uuid::Uuid::new_v4().simple()));
        let body = serde_json::to_vec(&Marker {
            object: object.to_string(),
            upload_id: id.clone(),
        })
        .unwrap_or_default();
        if let Err(e) = store.put(&marker, PutPayload::from(body)).await {
            let _ = parts_store.abort_multipart(&path, &id).await;
            return Err(e);
        }
        Ok(MarkedUpload {
            parts_store,
            store,
            path,
            id,
            marker,
            parts: Arc::default(),
            next: 0,
        })
    }

    /// Removes the marker (gone already is fine).
    async fn unmark(&self) -> object_store::Result<()> {
        match self.store.delete(&self.marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl MultipartUpload for MarkedUpload {
    fn put_part(&mut self, data: PutPayload) -> BoxFuture<'static, object_store::Result<()>> {
        let index = self.next;
        self.next += 1;
        let (parts_store, path, id, parts) = (
            self.parts_store.clone(),
            self.path.clone(),
            self.id.clone(),
            self.parts.clone(),
        );
        Box::pin(async move {
            let part = parts_store.put_part(&path, &id, index, data).await?;
            let mut parts = parts.lock().unwrap_or_else(|p| p.into_inner());
            if parts.len() <= index {
                parts.resize(index + 1, None);
            }
            parts[index] = Some(part);
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Vec<PartId> = {
            let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            if parts.len() != self.next || parts.iter().any(Option::is_none) {
                return Err(object_store::Error::Generic {
                    store: "tidemark",
                    source: format!(
                        "{}: completing with {} of {} parts uploaded",
                        self.path,
                        parts.iter().flatten().count(),
                        self.next
                    )
                    .into(),
                });
            }
            parts.iter().flatten().cloned().collect()
        };
        let done = self
            .parts_store
            .complete_multipart(&self.path, &self.id, parts)
            .await?;
        // A marker left by a failure here only makes the next writer abort a completed upload,
        // which the store answers with "no such upload".
        let _ = self.unmark().await;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.parts_store
            .abort_multipart(&self.path, &self.id)
            .await?;
        self.unmark().await
    }
}

/// Aborts the uploads of the markers `markers` (paths of objects under `prefix`/[`MARKERS`]),
/// left by processes that ended without finishing them, and removes the markers. Returns how
/// many uploads were aborted. The caller holds the chain's lock.
pub(crate) async fn abort_leftovers(
    parts_store: &dyn MultipartStore,
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    markers: &[ObjectPath],
) -> object_store::Result<usize> {
    let mut aborted = 0;
    for marker in markers {
        let body = match store.get(marker).await {
            Ok(got) => got.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        // A marker that does not parse names no upload: removed (tidemark wrote it, cut
        // short; the store's own lifecycle rule is left to deal with the parts).
        if let Ok(m) = serde_json::from_slice::<Marker>(&body) {
            let path = prefix.clone().join(m.object.as_str());
            match parts_store.abort_multipart(&path, &m.upload_id).await {
                Ok(()) => aborted += 1,
                // Completed (the process died before removing its marker), or aborted already.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(upload = %m.upload_id, object = %path, error = %e,
                        "could not abort an upload left by an earlier run");
                    continue;
                }
            }
            tracing::debug!(upload = %m.upload_id, object = %path, "aborted a leftover upload");
        }
        match store.delete(marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(aborted)
}
