//! # tidemark-remote
//!
//! Archive chains on object storage (`s3://bucket/prefix`, and the other stores the
//! `object_store` crate speaks: `gs://`, `az://`, …), with credentials from the usual environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_…`, `AZURE_…`).
//!
//! Object stores have no rename, so an archive is two objects under the prefix:
//!
//! ```text
//! tidemark-000001-full.zip       the archive, streamed up as a multipart upload
//! tidemark-000001-full.json      its seal, written after it: file name (with CRC32), size, manifest
//! .tidemark-head                 the newest archive written (as in a local directory), last
//! .tidemark-pruned               the prune log (as in a local directory)
//! .tidemark-key                  an encrypted chain's key file (docs/FORMAT.md §5)
//! .tidemark-uploads/<uuid>.json  an upload under way (S3): aborted by the next writer if its
//!                                process died (see `marked`)
//! ```
//!
//! A reader lists seals only: an archive without one (an upload cut short) is not part of the
//! chain, and the next backup removes it. Verify, restore and prune are backup-core's, over the
//! [`ChainStore`] this crate implements: sealed archives are read in place by ranged GETs.

use backup_core::PRUNED_LOG;
use backup_core::{
    slot_of_name, ArchiveManifest, ArchiveRead, ChainItem, ChainLock, ChainStore, Head, Listing,
    Slot, Survey, HEAD_FILE,
};
use backup_core::{ArchiveOutput, Error, PartSink, PartWriter, Result};
use backup_core::{SharedKey, KEY_FILE, KEY_FILE_COPY, NEEDS_KEY};
use futures::StreamExt;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::runtime::Runtime;

mod marked;
mod underway;
pub use underway::abandon_all;

/// S3's smallest part (all but the last); parts are at least this big.
pub const MIN_PART: usize = 5 << 20;

/// The most a restore fetches in one ranged GET when it needs entries that lie next to each
/// other: a few parts at a time (a request costs more than its bytes, on S3 and more so on
/// servers that read a whole object per ranged GET), while memory holds at most a few spans.
pub const SPAN: usize = 8 << 20;

/// Whether a destination names an object store (`scheme://…`) rather than a local directory.
pub fn is_remote(destination: &str) -> bool {
    destination.contains("://")
}

/// The seal object of an archive: written after the archive is complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    /// The archive's name in the chain (carries the CRC32 of the whole file).
    archive: String,
    /// The object that holds it, relative to the prefix.
    object: String,
    size: u64,
    crc32: u32,
    /// The archive's manifest (a plain chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    manifest: Option<ArchiveManifest>,
    /// The manifest's JSON sealed with the chain's key, in standard base64 (an encrypted
    /// chain: the seal shows only the names, sizes and CRC32s the object listing shows too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_manifest: Option<String>,
}

/// An archive chain under a prefix of an object store.
#[derive(Clone)]
pub struct RemoteChain {
    url: String,
    store: Arc<dyn ObjectStore>,
    /// The same store's low-level multipart interface, where it has one (S3): uploads are then
    /// marked, so that the next writer aborts one its process left (see `marked`).
    parts_store: Option<Arc<dyn object_store::multipart::MultipartStore>>,
    prefix: ObjectPath,
    rt: Arc<Runtime>,
    /// The token of the lock this handle took (see [`RemoteChain::lock`]): an archive is
    /// sealed only while the lock object still carries it.
    held: Arc<std::sync::Mutex<Option<String>>>,
    /// The lock token under which this (keyless) handle found no key file: while that lock is
    /// held no key file can appear (one is only written under the lock), so a live backup's
    /// archives do not each cost a GET of it.
    no_key_under: Arc<std::sync::Mutex<Option<String>>>,
    /// The chain's key, when it is encrypted: archives and the manifests in seals are sealed
    /// with it.
    key: Option<SharedKey>,
    /// An S3 chain given no credentials ([`no_credentials`]): its errors say which to set
    /// ([`NO_AWS_CREDENTIALS`]).
    no_credentials: bool,
}

/// Said with the errors of an S3 chain given no credentials: object_store then asks the EC2
/// instance metadata service, and its error named that service's address, nothing the user
/// had set.
const NO_AWS_CREDENTIALS: &str = "no AWS credentials are set, so the instance metadata \
     service was asked for some: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
     AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), or AWS_SKIP_SIGNATURE=true for a public \
     bucket";

/// Whether an S3 builder has no source of credentials but the EC2 instance metadata service
/// (object_store's last resort), which was not set explicitly either.
fn no_credentials(builder: &object_store::aws::AmazonS3Builder) -> bool {
    use object_store::aws::AmazonS3ConfigKey as K;
    let set = |k: K| builder.get_config_value(&k).is_some_and(|v| !v.is_empty());
    !(set(K::AccessKeyId)
        || set(K::SecretAccessKey)
        || (set(K::WebIdentityTokenFile) && set(K::RoleArn))
        || set(K::ContainerCredentialsRelativeUri)
        || (set(K::ContainerCredentialsFullUri) && set(K::ContainerAuthorizationTokenFile))
        || set(K::MetadataEndpoint)
        || builder
            .get_config_value(&K::SkipSignature)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")))
}

impl std::fmt::Debug for RemoteChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteChain")
            .field("url", &self.url)
            .finish()
    }
}

fn remote_err(url: &str, what: &str, why: &str) -> Error {
    Error::store(url, format!("{what}: {why}"))
}

impl RemoteChain {
    /// Opens the chain at `url` (`s3://bucket/prefix`, …), configured from the environment.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, std::env::vars())
    }

    /// Opens the chain at `url`, configured from `options` (the environment's keys:
    /// `AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …).
    pub fn open_with(
        url: &str,
        options: impl IntoIterator<Item = (impl AsRef<str>, impl Into<String>)>,
    ) -> Result<Self> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::bad_input_cause(url, "not a URL", e))?;
        let unusable =
            |e: object_store::Error| Error::bad_input_cause(url, "cannot use this object store", e);
        let options: Vec<(String, String)> = options
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.into()))
            .collect();
        let (scheme, path) =
            object_store::ObjectStoreScheme::parse(&parsed).map_err(|e| unusable(e.into()))?;
        let mut without_credentials = false;
        let (store, parts_store, prefix): (
            Arc<dyn ObjectStore>,
            Option<Arc<dyn MultipartStore>>,
            _,
        ) = if scheme == object_store::ObjectStoreScheme::AmazonS3 {
            // Built as `parse_url_opts` builds it, kept as the S3 type for its multipart
            // interface.
            let builder = options.iter().fold(
                object_store::aws::AmazonS3Builder::new().with_url(url),
                |b, (k, v)| match k.to_ascii_lowercase().parse() {
                    Ok(k) => b.with_config(k, v.clone()),
                    Err(_) => b,
                },
            );
            without_credentials = no_credentials(&builder);
            let s3 = builder.build().map_err(unusable)?;
            let prefix = ObjectPath::parse(path).map_err(|e| unusable(e.into()))?;
            let s3 = Arc::new(s3);
            (s3.clone(), Some(s3), prefix)
        } else {
            let (store, prefix) =
                object_store::parse_url_opts(&parsed, options).map_err(unusable)?;
            (Arc::from(store), None, prefix)
        };
        // Several threads read at once (a restore's workers): a small pool serves them.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::store_cause(url, "starting the I/O runtime", e))?;
        Ok(RemoteChain {
            url: url.trim_end_matches('/').to_string(),
            store,
            parts_store,
            prefix,
            rt: Arc::new(rt),
            held: Arc::default(),
            no_key_under: Arc::default(),
            key: None,
            no_credentials: without_credentials,
        })
    }

    /// The same chain, encrypted with `key`: archives are sealed on their way up, and read
    /// back through it (see `backup_core::ChainKey`).
    pub fn with_key(mut self, key: SharedKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The archive a seal (object `name`) makes part of the chain, its manifest opened with
    /// the chain's key if sealed. A plain manifest in an encrypted chain is refused: nothing
    /// unsealed may join a sealed chain.
    fn item(&self, name: &str, seal: Seal) -> Result<ChainItem> {
        let location = self.location_of(name);
        let manifest = match (seal.manifest, seal.sealed_manifest, &self.key) {
            (Some(m), None, None) => m,
            (None, Some(sealed), Some(key)) => {
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    sealed.as_bytes(),
                )
                .map_err(|e| Error::Damaged {
                    path: location.clone(),
                    cause: format!("the sealed manifest is not base64: {e}"),
                })?;
                let json = key.open_bytes(&location, &bytes)?;
                serde_json::from_slice(&json).map_err(|e| Error::Damaged {
                    path: location.clone(),
                    cause: format!("not a tidemark manifest: {e}"),
                })?
            }
            (None, Some(_), None) => {
                return Err(Error::Key {
                    path: location,
                    cause: NEEDS_KEY.into(),
                })
            }
            (Some(_), None, Some(_)) => {
                return Err(Error::Damaged {
                    path: location,
                    cause: "a plain seal in an encrypted chain (not written by this chain's \
                            key)"
                        .into(),
                })
            }
            _ => {
                return Err(Error::Damaged {
                    path: location,
                    cause: "a seal holds one manifest, plain or sealed".into(),
                })
            }
        };
        // A newer tidemark's archive is refused as a local one is, not read as this format.
        backup_core::check_manifest_format(&location, &manifest)?;
        Ok(ChainItem {
            path: PathBuf::from(&seal.archive),
            size: seal.size,
            manifest,
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    fn err(&self, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        if self.no_credentials {
            return Error::store_cause(&self.url, format!("{what} ({NO_AWS_CREDENTIALS})"), e);
        }
        Error::store_cause(&self.url, what, e)
    }

    /// Every object name directly under the prefix.
    fn names(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.listed()?.0)
    }

    /// Every object name directly under the prefix, with its size, and the upload markers
    /// (see `marked`), from one listing.
    fn listed(&self) -> Result<Listed> {
        tracing::debug!(prefix = %self.prefix, "LIST");
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut markers = Vec::new();
            let mut list = self.store.list(Some(&self.prefix));
            while let Some(meta) = list.next().await {
                let meta = meta.map_err(|e| self.err("list", e))?;
                let rel = meta
                    .location
                    .prefix_match(&self.prefix)
                    .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>());
                match rel.as_deref() {
                    Some([name]) => out.push((name.clone(), meta.size)),
                    Some([dir, _]) if dir == marked::MARKERS => markers.push(meta.location),
                    _ => {}
                }
            }
            out.sort();
            Ok((out, markers))
        })
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        tracing::debug!(object = name, "GET");
        self.rt.block_on(async {
            match self.store.get(&self.path(name)).await {
                Ok(r) => Ok(Some(
                    r.bytes()
                        .await
                        .map_err(|e| self.err(&format!("read {name}"), e))?
                        .to_vec(),
                )),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(&format!("read {name}"), e)),
            }
        })
    }

    fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        tracing::debug!(object = name, bytes = bytes.len(), "PUT");
        self.rt
            .block_on(self.store.put(&self.path(name), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.err(&format!("write {name}"), e))
    }

    fn delete(&self, name: &str) -> Result<()> {
        tracing::debug!(object = name, "DELETE");
        match self.rt.block_on(self.store.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(&format!("delete {name}"), e)),
        }
    }

    /// The seal object `name` (`None` if it is gone).
    fn seal(&self, name: &str) -> Result<Option<Seal>> {
        let Some(bytes) = self.get(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Damaged {
                path: self.location_of(name),
                cause: format!("not a tidemark seal: {e}"),
            })
    }

    /// The archives the seals `names` make part of the chain (a seal gone meanwhile is
    /// skipped), sorted.
    fn sealed(&self, names: &[String]) -> Result<Vec<ChainItem>> {
        let mut out = Vec::new();
        for (name, seal) in names.iter().zip(self.seals_named(names)) {
            if let Some(seal) = seal? {
                out.push(self.item(name, seal)?);
            }
        }
        backup_core::sort_chain(&mut out);
        Ok(out)
    }

    /// The names of every seal under the prefix.
    fn seal_names(&self) -> Result<Vec<String>> {
        Ok(self
            .names()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("tidemark-") && n.ends_with(".json"))
            .collect())
    }

    /// The seals `names`, [`SEALS_IN_FLIGHT`] GETs at a time (a chain of a long live backup
    /// has thousands), in the order of `names`; `None` for one that is gone.
    fn seals_named(&self, names: &[String]) -> Vec<Result<Option<Seal>>> {
        use futures::stream::{self, StreamExt as _};
        let fetched: Vec<(String, object_store::Result<Vec<u8>>)> = self.rt.block_on(
            stream::iter(names.iter().cloned())
                .map(|name| {
                    let store = self.store.clone();
                    let path = self.path(&name);
                    async move {
                        let got = match store.get(&path).await {
                            Ok(r) => r.bytes().await.map(|b| b.to_vec()),
                            Err(e) => Err(e),
                        };
                        (name, got)
                    }
                })
                .buffered(SEALS_IN_FLIGHT)
                .collect(),
        );
        fetched
            .into_iter()
            .map(|(name, got)| match got {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::Damaged {
                        path: self.location_of(&name),
                        cause: format!("not a tidemark seal: {e}"),
                    }),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(&format!("read {name}"), e)),
            })
            .collect()
    }
}

/// One listing of the prefix: its direct children (name, size) and the upload markers.
type Listed = (Vec<(String, u64)>, Vec<ObjectPath>);

/// The object holding an archive's bytes: `tidemark-000002-incr.zip`.
fn object_name(slot: Slot) -> String {
    format!("{}.zip", slot.stem())
}

/// The seal that makes an archive part of the chain: `tidemark-000002-incr.json`.
fn seal_name(slot: Slot) -> String {
    format!("{}.json", slot.stem())
}

impl ChainStore for RemoteChain {
    fn location(&self) -> PathBuf {
        PathBuf::from(&self.url)
    }

    fn survey(&self) -> Result<Survey> {
        let mut survey = Survey::default();
        // The head first: a backup writes it after the seal, so a head read before the listing
        // never names an archive the listing misses.
        let head = match self.get(HEAD_FILE)? {
            Some(bytes) => match Head::decode(&self.location_of(HEAD_FILE), &bytes) {
                Ok(h) => Some(h),
                Err(e) => {
                    survey.problems.push(e);
                    None
                }
            },
            None => None,
        };
        survey.anything = head.is_some();
        let names = self.seal_names()?;
        survey.anything |= !names.is_empty();
        for (name, seal) in names.iter().zip(self.seals_named(&names)) {
            match seal.and_then(|s| s.map(|s| self.item(name, s)).transpose()) {
                Ok(Some(item)) => survey.items.push(item),
                Ok(None) => {} // pruned meanwhile
                // Nothing of a chain a newer tidemark continued is read or written.
                Err(e @ Error::NewerFormat { .. }) => return Err(e),
                Err(e) => survey.problems.push(e),
            }
        }
        survey
            .problems
            .extend(Head::problem(head.as_ref(), &survey.items, &|name| {
                self.location_of(name)
            }));
        survey.settle(
            &self.location_of(PRUNED_LOG),
            self.read_prune_log()?.as_deref(),
        )?;
        Ok(survey)
    }

    fn open(&self, item: &ChainItem) -> Result<Box<dyn ArchiveRead>> {
        let object = object_name(Slot::of(&item.manifest));
        let path = self.path(&object);
        let location = self.location_of(&object);
        let meta = match self.rt.block_on(self.store.head(&path)) {
            Ok(meta) => meta,
            // Its seal still there: the archive object is lost (damage, as a local archive
            // that cannot be read), not removed by a prune.
            Err(object_store::Error::NotFound { .. })
                if self.get(&seal_name(Slot::of(&item.manifest)))?.is_some() =>
            {
                return Err(Error::Damaged {
                    path: location,
                    cause: "missing, while its seal is there".into(),
                });
            }
            // Removed since the chain was listed (a prune beside a verify): said as a local
            // file's removal is, so that the reader lists the chain again.
            Err(e @ object_store::Error::NotFound { .. }) => {
                return Err(Error::Io {
                    op: "read",
                    path: location,
                    source: io_error(e),
                })
            }
            Err(e) => return Err(self.err(&format!("read {object}"), e)),
        };
        if meta.size != item.size {
            return Err(Error::Damaged {
                path: location,
                cause: format!("{} bytes; its seal says {} bytes", meta.size, item.size),
            });
        }
        let archive = Box::new(RemoteArchive {
            store: self.store.clone(),
            rt: self.rt.clone(),
            path,
            location,
            size: item.size,
        });
        Ok(match &self.key {
            Some(k) => Box::new(backup_core::SealedArchive::new(k, archive)?),
            None => archive,
        })
    }

    fn read_key(&self) -> Result<Option<Vec<u8>>> {
        self.get(KEY_FILE)
    }

    fn stored(&self) -> Result<Vec<(PathBuf, Box<dyn ArchiveRead>)>> {
        let names = self.seal_names()?;
        let mut out: Vec<(PathBuf, Box<dyn ArchiveRead>)> = Vec::new();
        for seal in self.seals_named(&names) {
            let Some(seal) = seal? else { continue };
            let archive = RemoteArchive {
                store: self.store.clone(),
                rt: self.rt.clone(),
                path: self.path(&seal.object),
                location: self.location_of(&seal.object),
                size: seal.size,
            };
            out.push((PathBuf::from(&seal.archive), Box::new(archive)));
        }
        Ok(out)
    }

    fn write_key(&self, bytes: &[u8]) -> Result<()> {
        if self.get(KEY_FILE)?.is_some() {
            return Err(Error::Key {
                path: self.location_of(KEY_FILE),
                cause: "the chain has a key file already; it is never replaced".into(),
            });
        }
        self.put(KEY_FILE, bytes.to_vec())
    }

    fn read_key_copy(&self) -> Result<Option<Vec<u8>>> {
        self.get(KEY_FILE_COPY)
    }

    fn replace_key_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.put(name, bytes.to_vec())
    }

    fn read_prune_log(&self) -> Result<Option<Vec<u8>>> {
        self.get(PRUNED_LOG)
    }

    fn write_prune_log(&self, bytes: &[u8]) -> Result<()> {
        self.put(PRUNED_LOG, bytes.to_vec())
    }

    fn remove(&self, items: &[&ChainItem]) -> Result<()> {
        for item in items {
            // The seal first: the archive leaves the chain, then its object goes.
            let slot = Slot::of(&item.manifest);
            self.delete(&seal_name(slot))?;
            self.delete(&object_name(slot))?;
        }
        Ok(())
    }

    fn lock(&self, command: &str) -> Result<ChainLock> {
        Ok(Box::new(RemoteChain::lock(self, command)?))
    }

    fn location_of(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}/{name}", self.url))
    }

    fn read_chain(&self) -> Result<Vec<ChainItem>> {
        self.sealed(&self.seal_names()?)
    }

    fn clean_partial(&self) -> Result<()> {
        let (names, markers) = self.listed()?;
        // Uploads a killed process left (their parts are stored, and paid for, until aborted).
        if let (Some(parts_store), false) = (&self.parts_store, markers.is_empty()) {
            let aborted = self
                .rt
                .block_on(marked::abort_leftovers(
                    parts_store.as_ref(),
                    self.store.as_ref(),
                    &self.prefix,
                    &markers,
                ))
                .map_err(|e| self.err("abort the uploads of an earlier run", e))?;
            if aborted > 0 {
                tracing::info!(aborted, "aborted uploads an earlier run left unfinished");
            }
        }
        // An archive's object and its seal share a stem: no seal, no archive.
        let sealed: std::collections::HashSet<&str> = names
            .iter()
            .filter_map(|(n, _)| n.strip_suffix(".json"))
            .collect();
        for (name, _) in &names {
            if let Some(stem) = name.strip_suffix(".zip") {
                if name.starts_with("tidemark-") && !sealed.contains(stem) {
                    self.delete(name)?;
                }
            }
        }
        Ok(())
    }

    fn listing(&self) -> Result<Listing> {
        let head = match self.get(HEAD_FILE)? {
            Some(bytes) => Some(Head::decode(&self.location_of(HEAD_FILE), &bytes)?),
            None => None,
        };
        let slots = self
            .seal_names()?
            .iter()
            .filter_map(|n| slot_of_name(n))
            .collect();
        Ok(Listing { head, slots })
    }

    fn read_slots(&self, slots: &[Slot]) -> Result<Vec<ChainItem>> {
        let names: Vec<String> = slots.iter().map(|s| seal_name(*s)).collect();
        self.sealed(&names)
    }

    fn newest(&self) -> Result<Option<ChainItem>> {
        let newest = self
            .names()?
            .into_iter()
            .filter(|(n, _)| n.ends_with(".json"))
            .filter_map(|(n, _)| slot_of_name(&n).map(|s| (s, n)))
            .filter(|(s, _)| !s.compacted())
            .max_by_key(|(s, _)| s.sequence);
        match newest {
            Some((_, name)) => self.seal(&name)?.map(|s| self.item(&name, s)).transpose(),
            None => Ok(None),
        }
    }

    fn read_range(&self, first: u64, last: u64) -> Result<Vec<ChainItem>> {
        let names: Vec<String> = self
            .seal_names()?
            .into_iter()
            .filter(|n| slot_of_name(n).is_some_and(|s| s.first >= first && s.sequence <= last))
            .collect();
        self.sealed(&names)
    }

    fn begin(&self, slot: Slot, buffer_size: usize) -> Result<Box<dyn ArchiveOutput>> {
        // A plain archive never joins an encrypted chain.
        if self.key.is_none() {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut seen = self.no_key_under.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() || *seen != held {
                if self.is_encrypted()? {
                    return Err(Error::Key {
                        path: self.location_of(KEY_FILE),
                        cause: NEEDS_KEY.into(),
                    });
                }
                *seen = held;
            }
        }
        let object = object_name(slot);
        let interrupted = || {
            remote_err(
                &self.url,
                &format!("start uploading {object}"),
                "interrupted",
            )
        };
        let Some(starting) = underway::start_upload() else {
            return Err(interrupted());
        };
        let upload: Box<dyn MultipartUpload> = match &self.parts_store {
            Some(parts_store) => self
                .rt
                .block_on(marked::MarkedUpload::start(
                    parts_store.clone(),
                    self.store.clone(),
                    &self.prefix,
                    &object,
                ))
                .map(|u| Box::new(u) as _),
            None => self
                .rt
                .block_on(self.store.put_multipart(&self.path(&object))),
        }
        .map_err(|e| self.err(&format!("start uploading {object}"), e))?;
        let upload: underway::SharedUpload = Arc::new(std::sync::Mutex::new(Some(upload)));
        // Registered for a Ctrl-C handler's `abandon_all`; one that runs meanwhile aborts it
        // (or this upload's drop does: whichever takes it first).
        let registered = starting.started(&self.rt, &upload);
        let sink = Upload {
            rt: self.rt.clone(),
            upload,
            registered,
            what: format!("{}/{object}", self.url),
            in_flight: std::collections::VecDeque::new(),
        };
        if registered.is_none() {
            drop(sink);
            return Err(interrupted());
        }
        let out = Box::new(RemoteOutput {
            chain: self.clone(),
            slot,
            object,
            writer: Some(PartWriter::new(sink, buffer_size.max(MIN_PART))),
        });
        match &self.key {
            Some(k) => backup_core::seal_output(k, out),
            None => Ok(out),
        }
    }
}

/// A multipart upload fed part by part, up to [`PARTS_IN_FLIGHT`] parts uploading at once
/// while the archive's next part is compressed; aborted if dropped before completion, or by
/// [`abandon_all`].
struct Upload {
    rt: Arc<Runtime>,
    /// Taken out by whoever completes or aborts it first.
    upload: underway::SharedUpload,
    /// Its registration for [`abandon_all`].
    registered: Option<u64>,
    what: String,
    in_flight: std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>,
}

/// Seals read at once when a chain is listed.
pub const SEALS_IN_FLIGHT: usize = 32;

/// Parts of one archive uploading at once (memory: this many parts).
pub const PARTS_IN_FLIGHT: usize = 4;

impl Upload {
    /// Waits for the oldest part in flight.
    fn wait_one(&mut self) -> std::io::Result<()> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let done = self.rt.block_on(handle).map_err(|e| {
            std::io::Error::other(format!("uploading a part of {}: {e}", self.what))
        })?;
        done.map_err(|e| std::io::Error::other(format!("uploading a part of {}: {e}", self.what)))
    }

    /// Waits for every part in flight (before the upload is completed).
    fn wait_all(&mut self) -> std::io::Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_one()?;
        }
        Ok(())
    }
}

impl PartSink for Upload {
    fn put_part(&mut self, part: Vec<u8>) -> std::io::Result<()> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            self.wait_one()?;
        }
        let mut upload = self.upload.lock().unwrap_or_else(|p| p.into_inner());
        let upload = upload
            .as_mut()
            .ok_or_else(|| std::io::Error::other("upload already finished or interrupted"))?;
        // The part's number is fixed now, in order; the bytes go up in the background.
        let fut = upload.put_part(PutPayload::from(part));
        self.in_flight.push_back(self.rt.spawn(fut));
        Ok(())
    }
}

impl Upload {
    /// The upload, taken out to be aborted (`None` if it was completed or abandoned).
    fn take(&mut self) -> Option<Box<dyn MultipartUpload>> {
        self.upload.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Completes the upload. Its lock is held until the server answers, so that a Ctrl-C
    /// handler's [`abandon_all`] meanwhile waits and then finds it complete (or, if the
    /// completion failed, aborts it) rather than exiting with the upload still open.
    /// Completes the upload: `Err(None)` if a signal's handler aborted it first.
    fn complete(&mut self) -> std::result::Result<(), Option<object_store::Error>> {
        let mut guard = self.upload.lock().unwrap_or_else(|p| p.into_inner());
        let upload = guard.as_mut().ok_or(None)?;
        self.rt.block_on(upload.complete()).map_err(Some)?;
        *guard = None;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        for part in self.in_flight.drain(..) {
            part.abort();
        }
        if let Some(id) = self.registered.take() {
            underway::finished_upload(id);
        }
        if let Some(mut upload) = self.take() {
            // Best effort: the parts of an upload never completed stay invisible either way.
            let _ = self.rt.block_on(upload.abort());
        }
    }
}

struct RemoteOutput {
    chain: RemoteChain,
    slot: Slot,
    object: String,
    writer: Option<PartWriter<Upload>>,
}

impl RemoteOutput {
    fn w(&mut self) -> std::io::Result<&mut PartWriter<Upload>> {
        self.writer
            .as_mut()
            .ok_or_else(|| std::io::Error::other("archive already finished"))
    }
}

impl Write for RemoteOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w()?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w()?.flush()
    }
}

impl ArchiveOutput for RemoteOutput {
    fn finish(mut self: Box<Self>, manifest: &ArchiveManifest) -> Result<(String, u64)> {
        let what = self.chain.location_of(&self.object);
        let writer = self
            .writer
            .take()
            .ok_or_else(|| Error::io("write", &what, std::io::Error::other("finished twice")))?;
        let (mut sink, crc, size) = writer.finish().map_err(|e| Error::io("upload", &what, e))?;
        sink.wait_all().map_err(|e| Error::io("upload", &what, e))?;
        sink.complete().map_err(|e| {
            let what = format!("complete {}", self.object);
            match e {
                Some(e) => self.chain.err(&what, e),
                None => remote_err(&self.chain.url, &what, "interrupted"),
            }
        })?;
        // A writer whose lock expired (an outage longer than LOCK_TTL) and was taken over must
        // not seal: the other writer owns the chain now.
        self.chain.check_still_held()?;
        // The seal goes last: only now does the archive join the chain.
        let archive = self.slot.file_name(crc);
        let (plain, sealed) = match &self.chain.key {
            None => (Some(manifest.clone()), None),
            Some(k) => {
                let json = serde_json::to_vec(manifest).map_err(|e| self.chain.err("seal", e))?;
                let b64 = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    k.seal_bytes(&json),
                );
                (None, Some(b64))
            }
        };
        let seal = Seal {
            archive: archive.clone(),
            object: self.object.clone(),
            size,
            crc32: crc,
            manifest: plain,
            sealed_manifest: sealed,
        };
        let bytes = serde_json::to_vec_pretty(&seal).map_err(|e| self.chain.err("seal", e))?;
        self.chain.put(&seal_name(self.slot), bytes)?;
        // Then the head, so that a newest archive deleted later is noticed (a compacted
        // archive is never the newest).
        if !self.slot.compacted() {
            self.chain
                .put(HEAD_FILE, Head::encode(self.slot.sequence, &archive))?;
        }
        Ok((archive, size))
    }
}

/// The lock object's name under a chain's prefix (one writer per destination).
pub const LOCK_OBJECT: &str = ".tidemark-lock";

/// How long a lock object holds without renewal: a holder that dies stops renewing it, and
/// the next writer takes it over once it has expired.
pub const LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The lock object's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockBody {
    /// Who holds it: pid, host, start time, command.
    holder: String,
    /// This holder's random token (only its holder renews or removes it).
    token: String,
    /// Unix seconds after which the lock counts as abandoned.
    expires_at: u64,
    /// The holder's host and process id: a holder on this host that no longer runs (a killed
    /// run) does not block until its lock expires.
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
}

impl LockBody {
    /// This process's lock body: `holder`, `token`, expiring [`LOCK_TTL`] from now.
    fn new(holder: &str, token: &str) -> Self {
        LockBody {
            holder: holder.to_string(),
            token: token.to_string(),
            expires_at: unix_now() + LOCK_TTL.as_secs(),
            host: backup_core::hostname(),
            pid: std::process::id(),
        }
    }

    /// Whether the lock still holds: not expired, and not held by a process of this host
    /// that has died.
    fn is_live(&self) -> bool {
        if self.expires_at <= unix_now() {
            return false;
        }
        if self.pid != 0 && self.host == backup_core::hostname() {
            return backup_core::process_alive(self.pid);
        }
        true
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A held lock on a remote destination: renewed in the background every third of
/// [`LOCK_TTL`], removed when dropped.
pub struct RemoteLock {
    stop: Arc<std::sync::atomic::AtomicBool>,
    renewer: Option<std::thread::JoinHandle<()>>,
    /// The lock object and its token, shared with the registry for [`abandon_all`].
    lock: Arc<underway::HeldLock>,
    held: Arc<std::sync::Mutex<Option<String>>>,
    /// Its registration for [`abandon_all`].
    registered: u64,
}

impl std::fmt::Debug for RemoteLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLock")
            .field("path", &self.lock.path)
            .finish()
    }
}

async fn read_lock(store: &dyn ObjectStore, path: &ObjectPath) -> Option<LockBody> {
    let r = store.get(path).await.ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

/// Removes the lock object at `path` if it still carries `token` (best effort).
async fn remove_own_lock(store: &dyn ObjectStore, path: &ObjectPath, token: &str) {
    if read_lock(store, path)
        .await
        .is_some_and(|b| b.token == token)
    {
        let _ = store.delete(path).await;
    }
}

impl RemoteChain {
    /// Takes the destination's lock for `command` (e.g. "backup"): the lock object is created
    /// with a conditional put (create-if-absent), so of two writers exactly one gets it; the
    /// other fails at once with [`Error::Locked`] naming the holder. A lock whose holder
    /// stopped renewing it (a killed run) is taken over after it expired.
    pub fn lock(&self, command: &str) -> Result<RemoteLock> {
        let path = self.path(LOCK_OBJECT);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let holder = backup_core::holder_line(command);
        for attempt in 0..2 {
            let created = self.rt.block_on(self.store.put_opts(
                &path,
                PutPayload::from(
                    serde_json::to_vec(&LockBody::new(&holder, &token)).unwrap_or_default(),
                ),
                object_store::PutOptions {
                    mode: object_store::PutMode::Create,
                    ..Default::default()
                },
            ));
            match created {
                Ok(_) => {
                    *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                    return Ok(self.start_renewing(path, token, holder));
                }
                Err(object_store::Error::AlreadyExists { .. }) if attempt == 0 => {
                    let current = self.rt.block_on(read_lock(self.store.as_ref(), &path));
                    match current {
                        Some(b) if b.is_live() => {
                            return Err(Error::Locked {
                                path: PathBuf::from(&self.url),
                                holder: b.holder,
                            });
                        }
                        // Expired, its holder on this host died, or unreadable: take it over.
                        _ => self.delete(LOCK_OBJECT)?,
                    }
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let holder = self
                        .rt
                        .block_on(read_lock(self.store.as_ref(), &path))
                        .map_or_else(|| "another writer".to_string(), |b| b.holder);
                    return Err(Error::Locked {
                        path: PathBuf::from(&self.url),
                        holder,
                    });
                }
                Err(e) => return Err(self.err("create the lock object", e)),
            }
        }
        Err(remote_err(
            &self.url,
            "create the lock object",
            "it keeps being taken",
        ))
    }

    /// Fails with [`Error::Locked`] when this handle took the lock and the lock object no
    /// longer carries its token (it expired and another writer took it over).
    fn check_still_held(&self) -> Result<()> {
        let Some(token) = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let current = self
            .rt
            .block_on(read_lock(self.store.as_ref(), &self.path(LOCK_OBJECT)));
        match current {
            Some(b) if b.token == token => Ok(()),
            other => Err(Error::Locked {
                path: PathBuf::from(&self.url),
                holder: format!(
                    "{} (this run's lock expired and was taken over; its archive was not sealed)",
                    other.map_or_else(|| "nobody".to_string(), |b| b.holder)
                ),
            }),
        }
    }

    fn start_renewing(&self, path: ObjectPath, token: String, holder: String) -> RemoteLock {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lock = Arc::new(underway::HeldLock {
            rt: self.rt.clone(),
            store: self.store.clone(),
            path,
            token,
        });
        let (flag, l) = (stop.clone(), lock.clone());
        let renewer = std::thread::Builder::new()
            .name("tidemark-lock-renewal".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let every = LOCK_TTL / 3;
                let mut last = std::time::Instant::now();
                while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if last.elapsed() < every {
                        continue;
                    }
                    last = std::time::Instant::now();
                    rt.block_on(async {
                        // Renew only a lock that is still ours.
                        if read_lock(l.store.as_ref(), &l.path)
                            .await
                            .is_some_and(|b| b.token == l.token)
                        {
                            if let Ok(bytes) = serde_json::to_vec(&LockBody::new(&holder, &l.token))
                            {
                                let _ = l.store.put(&l.path, PutPayload::from(bytes)).await;
                            }
                        }
                    });
                }
            })
            .ok();
        let registered = underway::took_lock(lock.clone());
        RemoteLock {
            stop,
            renewer,
            lock,
            held: self.held.clone(),
            registered,
        }
    }
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.as_deref() == Some(self.lock.token.as_str()) {
                *held = None;
            }
        }
        // Removed, then unregistered: a Ctrl-C or SIGTERM handler that runs in between
        // removes it too (it still carries the token) before the process exits. The other way
        // round, a handler that came after the unregistration exited while the removal was
        // under way, and the lock object stayed until it expired (a flake of
        // remote_cli::an_interrupted_upload_leaves_no_parts_behind under load).
        let l = &self.lock;
        l.rt.block_on(remove_own_lock(l.store.as_ref(), &l.path, &l.token));
        underway::released_lock(self.registered);
    }
}

/// A sealed archive on the object store, read by ranged GETs.
struct RemoteArchive {
    store: Arc<dyn ObjectStore>,
    rt: Arc<Runtime>,
    path: ObjectPath,
    location: PathBuf,
    size: u64,
}

impl ArchiveRead for RemoteArchive {
    fn location(&self) -> &Path {
        &self.location
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let range = offset..offset + len as u64;
        tracing::debug!(object = %self.location.display(), offset, len, "ranged GET");
        let bytes = self
            .rt
            .block_on(self.store.get_range(&self.path, range))
            .map_err(io_error)?;
        if bytes.len() != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {} bytes at {offset} where {len} were asked for",
                    self.location.display(),
                    bytes.len()
                ),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn stream(&self) -> std::io::Result<Box<dyn Read + Send + '_>> {
        let got = self
            .rt
            .block_on(self.store.get(&self.path))
            .map_err(io_error)?;
        Ok(Box::new(BlockingStream {
            rt: &self.rt,
            stream: got.into_stream(),
            chunk: bytes::Bytes::new(),
            what: &self.location,
        }))
    }

    fn span(&self) -> usize {
        SPAN
    }

    fn check_before_restore(&self, _crc: u32) -> Result<()> {
        // Not downloaded twice: each entry's CRC32 is checked as it is read, the size by `open`.
        Ok(())
    }
}

/// An object store's error as an I/O error, the error kept as its cause: an object that is not
/// there is [`std::io::ErrorKind::NotFound`], as a local file's absence is (the callers add
/// which archive was read).
fn io_error(e: object_store::Error) -> std::io::Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, e)
}

/// A GET's body as a blocking `Read`.
struct BlockingStream<'a> {
    rt: &'a Runtime,
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
    what: &'a Path,
}

impl Read for BlockingStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "{}: {e}",
                        self.what.display()
                    )))
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An S3 chain given no credentials says how to give some with its errors; one given any
    /// source of them (or told to sign nothing) does not.
    #[test]
    fn an_s3_chain_without_credentials_is_told_so() {
        let with = |opts: &[(&str, &str)]| {
            let mut all = vec![("AWS_ALLOW_HTTP", "true")];
            all.extend_from_slice(opts);
            RemoteChain::open_with("s3://bucket/prefix", all.iter().copied())
                .unwrap()
                .no_credentials
        };
        assert!(with(&[]));
        assert!(with(&[("AWS_REGION", "eu-west-1")]));
        for opts in [
            &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")][..],
            &[("AWS_SKIP_SIGNATURE", "true")],
            &[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn"),
            ],
            &[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/creds")],
        ] {
            assert!(!with(opts), "{opts:?}");
        }
        // Not S3: nothing to say.
        let local = tempfile::tempdir().unwrap();
        let url = format!("file://{}", local.path().display());
        let chain = RemoteChain::open_with(&url, std::iter::empty::<(&str, &str)>()).unwrap();
        assert!(!chain.no_credentials);
        // The hint goes with the error's context; the cause is kept.
        let chain =
            RemoteChain::open_with("s3://bucket/prefix", [("AWS_ALLOW_HTTP", "true")]).unwrap();
        let e = chain.err("list", std::io::Error::other("denied"));
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }
}
