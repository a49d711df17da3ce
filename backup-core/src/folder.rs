//! The folder format (RxDB-style): `DIR/<collection>/<document-id>/document.json` plus
//! `attachments/<name>`, and `DIR/.tidemark/manifest.json`. See `docs/FORMAT.md`.
//!
//! A full run into an empty (or interrupted) folder writes into `.tidemark/staging/` and swaps
//! each collection into place at the end. A full run into a folder that holds a completed
//! backup refreshes it in place instead: it compares every record with its document, rewrites
//! only those that differ and removes the documents the store no longer has, so that it costs
//! no more than a full run into an empty folder (no second tree to write, no old tree to
//! delete). An incremental run updates documents in place, one atomic file replacement per
//! file. In-place runs save what they replace in an undo area, so a failed run puts the folder
//! back. In all of them, the manifest (and its checkpoint) is written last, after one `syncfs`
//! made every document durable.

use crate::docid;
use crate::document;
use crate::durable::{self, Sync};
use crate::error::{Error, Result};
use crate::manifest::{FolderManifest, RunKind};
use crate::model::{CollectionName, Key, Record};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

/// The hidden directory holding the manifest and work areas.
pub const META_DIR: &str = ".tidemark";
/// The manifest's file name inside [`META_DIR`].
pub const MANIFEST_FILE: &str = "manifest.json";
/// The marker inside [`META_DIR`] that an in-place run or a full run's swap is in progress.
const DIRTY_FILE: &str = "dirty";
/// The document file inside a document's directory.
pub const DOCUMENT_FILE: &str = "document.json";
/// The attachments directory inside a document's directory.
pub const ATTACHMENTS_DIR: &str = "attachments";

/// What a backup wrote for one document (like RxDB's `writeEvents$`).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteEvent {
    /// The collection.
    pub collection: CollectionName,
    /// The document id (the encoded key, also the directory name).
    pub document_id: String,
    /// The files written (empty for a deletion).
    pub files: Vec<PathBuf>,
    /// Whether the document was deleted.
    pub deleted: bool,
}

/// A folder backup directory.
#[derive(Debug, Clone)]
pub struct FolderBackup {
    root: PathBuf,
    /// Readers: a shared lock on the run lock, so that no run changes the folder while it is
    /// read (see [`RUN_LOCK_FILE`]).
    _reading: Option<std::sync::Arc<fs::File>>,
}

/// The run lock inside [`META_DIR`]: a run holds it exclusively from its start to its manifest
/// (`flock`), readers (verify, restore) hold it shared, so they read a folder between runs,
/// never in the middle of one.
pub const RUN_LOCK_FILE: &str = "run.lock";

/// The marker ([`DIRTY_FILE`]) of the folder backup at `root`.
fn dirty_marker_at(root: &Path) -> PathBuf {
    root.join(META_DIR).join(DIRTY_FILE)
}

/// Whether a folder destination has anything at its root besides tidemark's own hidden files
/// (`.tidemark*`): the collection directories a completed run swaps into place.
fn holds_documents(root: &Path) -> Result<bool> {
    for entry in fs::read_dir(root).map_err(|e| Error::io("read directory", root, e))? {
        let entry = entry.map_err(|e| Error::io("read directory", root, e))?;
        if !entry.file_name().to_string_lossy().starts_with(".tidemark") {
            return Ok(true);
        }
    }
    Ok(false)
}

impl FolderBackup {
    /// Opens (creating if needed) a folder backup at `root`, and repairs what an interrupted
    /// run left behind.
    pub fn open(root: &Path) -> Result<Self> {
        if root.exists() && !root.is_dir() {
            return Err(Error::BadInput {
                path: root.to_path_buf(),
                cause: "exists and is not a directory".into(),
                source: None,
            });
        }
        durable::create_dir_all(&root.join(META_DIR))?;
        let folder = FolderBackup {
            root: root.to_path_buf(),
            _reading: None,
        };
        folder.recover()?;
        Ok(folder)
    }

    /// Opens an existing folder backup for reading; fails if it has no manifest.
    pub fn open_existing(root: &Path) -> Result<(Self, FolderManifest)> {
        // No lock file (no run of this version ever wrote here, or a read-only copy): nothing
        // to wait for.
        let reading = match fs::File::open(root.join(META_DIR).join(RUN_LOCK_FILE)) {
            Ok(f) => {
                crate::lock::flock(&f, false, true)
                    .map_err(|e| Error::io("lock (shared)", root.join(META_DIR), e))?;
                Some(std::sync::Arc::new(f))
            }
            Err(_) => None,
        };
        let folder = FolderBackup {
            root: root.to_path_buf(),
            _reading: reading,
        };
        if !root.is_dir() {
            return Err(Error::BadInput {
                path: root.to_path_buf(),
                cause: "no such backup directory".into(),
                source: None,
            });
        }
        if !root.join(META_DIR).is_dir() {
            // Nothing of a backup here (an empty directory, or what a first backup stopped
            // before its first record leaves): not a damaged backup, so not `Manifest`.
            return Err(crate::destination::no_backup(root));
        }
        let manifest = folder.manifest()?;
        // A first backup stopped before its collections were swapped into place left only its
        // work area: still nothing to restore. Documents without a manifest are another matter
        // (a first backup stopped during its swap or before its manifest, or a manifest
        // removed): they are reported below, not called empty.
        if manifest.is_none() && !holds_documents(root)? {
            return Err(crate::destination::no_backup(root));
        }
        if folder.was_interrupted() {
            return Err(Error::Damaged {
                path: folder.root().to_path_buf(),
                cause: "a backup into this folder was interrupted and its documents may be \
                        newer than its manifest: run `tidemark backup` again to repair it"
                    .into(),
            });
        }
        let Some(manifest) = manifest else {
            return Err(Error::Manifest {
                path: folder.manifest_path(),
                cause: "missing: collection directories are here but no completed tidemark \
                        folder backup describes them (a first backup stopped before writing \
                        its manifest, or the manifest was removed): run `tidemark backup` again"
                    .into(),
            });
        };
        Ok((folder, manifest))
    }

    /// The backup's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the manifest lives.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join(META_DIR).join(MANIFEST_FILE)
    }

    /// The manifest of the last completed run, if any.
    pub fn manifest(&self) -> Result<Option<FolderManifest>> {
        FolderManifest::read(&self.manifest_path())
    }

    fn staging(&self) -> PathBuf {
        self.root.join(META_DIR).join("staging")
    }

    fn undo_dir(&self) -> PathBuf {
        self.root.join(META_DIR).join("undo")
    }

    fn dirty_marker(&self) -> PathBuf {
        dirty_marker_at(&self.root)
    }

    /// Whether an in-place (incremental) run was interrupted: its documents may be newer than
    /// the manifest, so the key index must not be trusted for a diff.
    pub fn was_interrupted(&self) -> bool {
        Self::interrupted_at(&self.root)
    }

    /// [`FolderBackup::was_interrupted`] for the folder backup at `root`, without opening it
    /// (for `list`, which shows the manifest's state and says when it is not to be trusted).
    pub fn interrupted_at(root: &Path) -> bool {
        dirty_marker_at(root).exists()
    }

    /// The directory of key index files.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join(META_DIR).join("index")
    }

    fn trash(&self) -> PathBuf {
        self.root.join(META_DIR).join("trash")
    }

    /// Undoes what a run interrupted during its final swap left: a collection moved to the
    /// trash but not replaced goes back; the rest of the trash and staging is removed.
    fn recover(&self) -> Result<()> {
        let trash = self.trash();
        // Without the marker, the run that left a trash completed (its manifest is written):
        // the trash only waits for removal.
        let entries = match fs::read_dir(&trash) {
            Ok(entries) if self.was_interrupted() => Some(entries),
            _ => None,
        };
        if let Some(entries) = entries {
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("read directory", &trash, e))?;
                let live = self.root.join(entry.file_name());
                if !live.exists() {
                    durable::rename(&entry.path(), &live)?;
                }
            }
        }
        durable::remove_dir_all_if_exists(&trash)?;
        durable::remove_dir_all_if_exists(&self.staging())
    }

    /// Starts a run. A full run writes into staging; an incremental run starts from the
    /// previous manifest's collections and counts.
    pub fn begin(&self, kind: RunKind, previous: Option<&FolderManifest>) -> Result<FolderRun> {
        let lock_path = self.root.join(META_DIR).join(RUN_LOCK_FILE);
        let run_lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        // Waits for readers in progress (they hold it shared).
        crate::lock::flock(&run_lock, true, true).map_err(|e| Error::io("lock", &lock_path, e))?;
        let counts = match (kind, previous) {
            (RunKind::Incremental, Some(p)) => p
                .collections
                .iter()
                .map(|c| (c.info.name.clone(), c.records))
                .collect(),
            _ => BTreeMap::new(),
        };
        // A full run over a completed backup of moderate size refreshes it in place.
        let refresh = match kind {
            RunKind::Full if !self.was_interrupted() => match self.manifest() {
                Ok(Some(m))
                    if m.collections.iter().map(|c| c.records).sum::<u64>()
                        <= REFRESH_MAX_DOCUMENTS =>
                {
                    Some(Refresh::new(&m))
                }
                _ => None,
            },
            _ => None,
        };
        let base = match kind {
            RunKind::Full if refresh.is_none() => {
                let staging = self.staging();
                durable::remove_dir_all_if_exists(&staging)?;
                durable::create_dir_all(&staging)?;
                staging
            }
            _ => {
                durable::remove_dir_all_if_exists(&self.undo_dir())?;
                durable::write_atomic(
                    &self.dirty_marker(),
                    if refresh.is_some() {
                        &b"a full run is refreshing the documents in place\n"[..]
                    } else {
                        &b"an incremental run is in progress\n"[..]
                    },
                    Sync::Now,
                )?;
                self.root.clone()
            }
        };
        Ok(FolderRun {
            folder: self.clone(),
            _run_lock: run_lock,
            kind,
            base,
            counts,
            dropped: Vec::new(),
            created: Vec::new(),
            bytes: 0,
            refresh,
            undo_dirs: HashSet::new(),
            committed: false,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        })
    }

    /// Streams every record of one collection of the manifest to `visit`, checking each
    /// document (CRC32s, key matches its folder). A damaged document goes to `on_damaged`,
    /// which stops the read by returning its error or skips the document. Errors name the
    /// document's path. Returns the documents visited.
    pub fn read_collection(
        &self,
        dir: &str,
        visit: &mut dyn FnMut(Record, &Path) -> Result<()>,
        on_damaged: &mut dyn FnMut(Error) -> Result<()>,
    ) -> Result<u64> {
        let cdir = self.root.join(dir);
        let entries = fs::read_dir(&cdir).map_err(|e| Error::io("read directory", &cdir, e))?;
        let mut n = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &cdir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                continue;
            }
            let docdir = entry.path();
            let record = match read_document(&docdir) {
                Ok(r) => r,
                Err(e @ Error::Damaged { .. }) => {
                    on_damaged(e)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if docid::encode(record.key.as_bytes()) != name {
                on_damaged(Error::Damaged {
                    path: docdir.join(DOCUMENT_FILE),
                    cause: format!(
                        "the key {} does not belong in the folder `{name}`",
                        record.key
                    ),
                })?;
                continue;
            }
            visit(record, &docdir)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Reads and checks one document directory.
pub fn read_document(docdir: &Path) -> Result<Record> {
    let path = docdir.join(DOCUMENT_FILE);
    let json = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let attdir = docdir.join(ATTACHMENTS_DIR);
    document::decode(&json, &mut |name| {
        let p = attdir.join(name);
        fs::read(&p).map_err(|e| format!("attachment {}: {e}", p.display()))
    })
    .map_err(|cause| Error::Damaged { path, cause })
}

/// One backup run writing into a folder.
#[derive(Debug)]
pub struct FolderRun {
    folder: FolderBackup,
    /// Held exclusively until the run is committed or dropped.
    _run_lock: fs::File,
    kind: RunKind,
    base: PathBuf,
    counts: BTreeMap<CollectionName, u64>,
    dropped: Vec<CollectionName>,
    /// Collections this (incremental) run created: removed again if the run fails.
    created: Vec<CollectionName>,
    bytes: u64,
    run_id: String,
    /// A full run refreshing a completed backup in place: which documents it has seen.
    refresh: Option<Refresh>,
    /// Collection directories made under `undo/old/` by this run.
    undo_dirs: HashSet<String>,
    committed: bool,
}

/// The largest backup (in documents) that a full run refreshes in place: the documents seen
/// are remembered as 16-byte hashes (about 32 MiB at this size). A larger backup is replaced
/// through staging, which needs no memory per document.
pub const REFRESH_MAX_DOCUMENTS: u64 = 2_000_000;

/// The documents a refreshing full run has written or found identical: a keyed 128-bit hash of
/// (collection, document id), so that the documents it has not seen can be removed at the end.
#[derive(Debug)]
struct Refresh {
    seen: HashSet<u128>,
    /// Records found as they are (not written).
    unchanged: u64,
    keys: [std::collections::hash_map::RandomState; 2],
    /// The collection directories of the previous manifest (those the sweep looks into).
    previous_dirs: Vec<String>,
}

impl Refresh {
    fn new(previous: &FolderManifest) -> Self {
        Refresh {
            seen: HashSet::new(),
            unchanged: 0,
            keys: [Default::default(), Default::default()],
            previous_dirs: previous.collections.iter().map(|c| c.dir.clone()).collect(),
        }
    }

    fn hash(&self, cdir: &str, id: &str) -> u128 {
        let half = |k: &std::collections::hash_map::RandomState| k.hash_one((cdir, id)) as u128;
        (half(&self.keys[0]) << 64) | half(&self.keys[1])
    }
}

impl FolderRun {
    /// Whether the run changes the live documents (saving what it replaces for undo) rather
    /// than writing into staging.
    fn in_place(&self) -> bool {
        self.kind == RunKind::Incremental || self.refresh.is_some()
    }

    /// In-place runs: moves the document `id` of the collection directory `cdir` out of the
    /// way before the run changes it, into `.tidemark/undo/old/` (its state before the run, kept
    /// once) or, for a document the run creates, a marker in `.tidemark/undo/new/`. With
    /// `keep_dir` (the run is about to write the document again, without attachments), a
    /// document without attachments moves only its `document.json`, to `.tidemark/undo/file/`,
    /// and keeps its directory: one rename instead of a directory moved, made again and removed
    /// later. A run that fails puts everything back ([`FolderRun::roll_back`]), so a failed
    /// incremental (a full disk, a store error) leaves the backup exactly as its manifest says.
    /// Renames only: no space is needed to save or to put back.
    fn save_for_undo(&mut self, cdir: &str, id: &str, docdir: &Path, keep_dir: bool) -> Result<()> {
        let undo = self.folder.undo_dir();
        let changed_earlier = ["old", "new", "file"]
            .iter()
            .any(|side| undo.join(side).join(cdir).join(id).exists());
        if changed_earlier {
            // What is there now is this run's own.
            return durable::remove_dir_all_if_exists(docdir);
        }
        if docdir.exists() {
            self.undo_original(cdir, id, docdir, keep_dir)
        } else {
            let new = undo.join("new").join(cdir).join(id);
            durable::create_dir_all(new.parent().unwrap_or(&undo))?;
            durable::write_new(&new, b"")
        }
    }

    /// [`FolderRun::save_for_undo`] for a document known to be as the previous run left it
    /// (a refreshing run's first sight of it, or after the checks): one rename.
    fn undo_original(&mut self, cdir: &str, id: &str, docdir: &Path, keep_dir: bool) -> Result<()> {
        let undo = self.folder.undo_dir();
        if keep_dir && fs::symlink_metadata(docdir.join(ATTACHMENTS_DIR)).is_err() {
            let parent = undo.join("file").join(cdir);
            if self.undo_dirs.insert(format!("file/{cdir}")) {
                durable::create_dir_all(&parent)?;
            }
            let from = docdir.join(DOCUMENT_FILE);
            durable::crash_point("rename", &from);
            match fs::rename(&from, parent.join(id)) {
                Ok(()) => return Ok(()),
                // A directory without its document (damaged): moved whole, below.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("rename", &from, e)),
            }
        }
        let parent = undo.join("old").join(cdir);
        if self.undo_dirs.insert(format!("old/{cdir}")) {
            durable::create_dir_all(&parent)?;
        }
        durable::rename(docdir, &parent.join(id))
    }

    /// Puts back what this (failed, incremental) run changed: documents it created go, the
    /// ones it replaced or deleted come back, collections it created go. Then the backup is
    /// its manifest's again and the dirty marker goes too.
    fn roll_back(&mut self) -> Result<()> {
        let undo = self.folder.undo_dir();
        let root = self.folder.root.clone();
        // `new`: documents the run created go. `old`: saved directories come back. `file`:
        // a saved `document.json` comes back into its directory, made as it was (a document
        // without attachments holds nothing else).
        for side in ["new", "old", "file"] {
            let base = undo.join(side);
            let Ok(cdirs) = fs::read_dir(&base) else {
                continue;
            };
            for cdir in cdirs {
                let cdir = cdir.map_err(|e| Error::io("read directory", &base, e))?;
                let name = cdir.file_name();
                let entries = fs::read_dir(cdir.path())
                    .map_err(|e| Error::io("read directory", cdir.path(), e))?;
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io("read directory", cdir.path(), e))?;
                    let docdir = root.join(&name).join(entry.file_name());
                    durable::remove_dir_all_if_exists(&docdir)?;
                    match side {
                        "old" => {
                            durable::create_dir_all(&root.join(&name))?;
                            durable::rename(&entry.path(), &docdir)?;
                        }
                        "file" => {
                            durable::create_dir_all(&docdir)?;
                            durable::rename(&entry.path(), &docdir.join(DOCUMENT_FILE))?;
                        }
                        _ => {}
                    }
                }
            }
        }
        for c in std::mem::take(&mut self.created) {
            durable::remove_dir_all_if_exists(&root.join(collection_dir_name(&c)))?;
        }
        durable::remove_dir_all_if_exists(&undo)?;
        durable::sync_filesystem(&root)?;
        fs::remove_file(self.folder.dirty_marker())
            .map_err(|e| Error::io("remove", self.folder.dirty_marker(), e))
    }

    /// A new key index file for a collection in this run: (file name, path).
    pub fn new_index(&self, collection: &CollectionName, tag: &str) -> (String, PathBuf) {
        let name = format!(
            "{}.{}{tag}.idx",
            collection_dir_name(collection),
            self.run_id
        );
        let path = self.folder.index_dir().join(&name);
        (name, path)
    }

    /// The path of an existing key index file named in a manifest.
    pub fn index_path(&self, name: &str) -> PathBuf {
        self.folder.index_dir().join(name)
    }

    /// Makes sure a collection exists in the backup (an empty collection still has a folder).
    pub fn create_collection(&mut self, collection: &CollectionName) -> Result<()> {
        if !self.counts.contains_key(collection) {
            let dir = self.collection_dir(collection);
            if self.in_place() && !dir.exists() {
                self.created.push(collection.clone());
            }
            durable::create_dir_all(&dir)?;
            self.counts.insert(collection.clone(), 0);
        }
        Ok(())
    }

    /// Removes a collection that no longer exists in the store.
    pub fn drop_collection(&mut self, collection: &CollectionName) {
        self.counts.remove(collection);
        self.dropped.push(collection.clone());
    }

    /// Writes (or replaces) one record's document. `None` when a refreshing full run found the
    /// document already as the record says, and wrote nothing.
    pub fn put(
        &mut self,
        collection: &CollectionName,
        record: &Record,
    ) -> Result<Option<WriteEvent>> {
        self.create_collection(collection)?;
        let id = docid::encode(record.key.as_bytes());
        let cdir = collection_dir_name(collection);
        let docdir = self.collection_dir(collection).join(&id);
        let doc_path = docdir.join(DOCUMENT_FILE);
        let enc = document::encode(record);
        let keep_dir = enc.attachments.is_empty();
        // Whether the backup's count holds the document already (in-place runs; a run into
        // staging knows it from the mkdir below).
        let counted = match self.refresh.as_mut() {
            Some(r) => {
                let h = r.hash(&cdir, &id);
                if r.seen.insert(h) {
                    match compare_document(&docdir, &enc) {
                        Compared::Same => {
                            r.unchanged += 1;
                            *self.counts.entry(collection.clone()).or_insert(0) += 1;
                            return Ok(None);
                        }
                        // The document as the previous run left it, untouched by this one:
                        // it goes to the undo area, where nothing of it can be yet.
                        Compared::Differs => {
                            self.undo_original(&cdir, &id, &docdir, keep_dir)?;
                            Some(false)
                        }
                        Compared::Missing => {
                            self.save_for_undo(&cdir, &id, &docdir, keep_dir)?;
                            Some(false)
                        }
                    }
                } else {
                    self.save_for_undo(&cdir, &id, &docdir, keep_dir)?;
                    Some(true)
                }
            }
            None if self.kind == RunKind::Incremental => {
                // The document is in the backup already (or was put earlier in this run).
                let existed = doc_path.exists();
                // The old document goes to the undo area; the new one is written afresh.
                self.save_for_undo(&cdir, &id, &docdir, keep_dir)?;
                Some(existed)
            }
            None => None,
        };
        // Full runs into staging can overwrite too: a store without snapshots replays changes
        // after its scan. One mkdir tells whether the document is there already.
        let existed = match fs::create_dir(&docdir) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                durable::create_dir_all(&docdir)?;
                false
            }
            Err(e) => return Err(Error::io("create directory", &docdir, e)),
        };
        let mut files = Vec::with_capacity(1 + enc.attachments.len());
        let attdir = docdir.join(ATTACHMENTS_DIR);
        if !enc.attachments.is_empty() {
            durable::create_dir_all(&attdir)?;
        }
        for (name, bytes) in &enc.attachments {
            let p = attdir.join(name);
            self.write_file(&p, bytes)?;
            self.bytes += bytes.len() as u64;
            files.push(p);
        }
        self.write_file(&doc_path, &enc.json)?;
        self.bytes += enc.json.len() as u64;
        files.insert(0, doc_path);
        if !self.in_place() {
            // Report where the files will be once the run's collections are swapped into place.
            for f in &mut files {
                if let Ok(rel) = f.strip_prefix(&self.base) {
                    *f = self.folder.root.join(rel);
                }
            }
            if existed {
                remove_stale_attachments(&attdir, &enc.attachments)?;
            }
        }
        if !counted.unwrap_or(existed) {
            *self.counts.entry(collection.clone()).or_insert(0) += 1;
        }
        Ok(Some(WriteEvent {
            collection: collection.clone(),
            document_id: id,
            files,
            deleted: false,
        }))
    }

    /// Removes one record's document, if the backup holds it.
    pub fn delete(&mut self, collection: &CollectionName, key: &Key) -> Result<Option<WriteEvent>> {
        let id = docid::encode(key.as_bytes());
        let docdir = self.collection_dir(collection).join(&id);
        if !docdir.exists() {
            return Ok(None);
        }
        self.remove_document(collection, &id, &docdir)?;
        self.uncount(collection, &id);
        Ok(Some(WriteEvent {
            collection: collection.clone(),
            document_id: id,
            files: Vec::new(),
            deleted: true,
        }))
    }

    /// Takes a removed document off the collection's count, if the count holds it: a
    /// refreshing full run counts only the documents it has seen.
    fn uncount(&mut self, collection: &CollectionName, id: &str) {
        if let Some(r) = self.refresh.as_mut() {
            let h = r.hash(&collection_dir_name(collection), id);
            if !r.seen.remove(&h) {
                return;
            }
        }
        if let Some(n) = self.counts.get_mut(collection) {
            *n = n.saturating_sub(1);
        }
    }

    fn remove_document(
        &mut self,
        collection: &CollectionName,
        id: &str,
        docdir: &Path,
    ) -> Result<()> {
        if self.in_place() {
            // Moving it to the undo area is the deletion.
            self.save_for_undo(&collection_dir_name(collection), id, docdir, false)
        } else {
            durable::remove_dir_all_if_exists(docdir)
        }
    }

    /// How many records the backup holds in `collection` after this run's writes so far.
    pub fn count(&self, collection: &CollectionName) -> u64 {
        self.counts.get(collection).copied().unwrap_or(0)
    }

    /// Records a refreshing full run found as they are and did not write.
    pub fn unchanged(&self) -> u64 {
        self.refresh.as_ref().map_or(0, |r| r.unchanged)
    }

    /// Bytes of documents and attachments written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Completes the run: swaps a full run's collections into place, makes everything durable,
    /// then writes the manifest. The manifest's checkpoint never runs ahead of durable data.
    /// Returns the documents a refreshing full run removed because the store no longer has
    /// them (0 for other runs).
    pub fn commit(mut self, manifest: &FolderManifest) -> Result<u64> {
        let root = self.folder.root.clone();
        let mut gone_dirs = Vec::new();
        let mut swept = 0;
        if let Some(r) = self.refresh.take() {
            let new_dirs: Vec<&str> = manifest
                .collections
                .iter()
                .map(|c| c.dir.as_str())
                .collect();
            for dir in &r.previous_dirs {
                if !new_dirs.contains(&dir.as_str()) {
                    // Removed once the manifest no longer names it.
                    gone_dirs.push(root.join(dir));
                    continue;
                }
                // The documents the store no longer has (and whatever else is not the store's)
                // go to the undo area, as an incremental's deletions do.
                let cdir = root.join(dir);
                let entries = match fs::read_dir(&cdir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("read directory", &cdir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| Error::io("read directory", &cdir, e))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if !r.seen.contains(&r.hash(dir, &name)) {
                        self.undo_original(dir, &name, &entry.path(), false)?;
                        swept += 1;
                    }
                }
            }
            // Back in place for `Drop`, should anything below fail.
            self.refresh = Some(r);
        } else if self.kind == RunKind::Full {
            // From the first rename until the manifest, the collections and the manifest may
            // disagree: readers refuse the backup, and the next run takes a full backup.
            durable::write_atomic(
                &self.folder.dirty_marker(),
                b"a full run is swapping its collections in\n",
                Sync::Now,
            )?;
            durable::sync_filesystem(&self.base)?;
            let trash = self.folder.trash();
            durable::create_dir_all(&trash)?;
            let previous = self.folder.manifest().ok().flatten();
            let old_dirs = previous
                .iter()
                .flat_map(|p| p.collections.iter().map(|c| c.dir.clone()));
            let new_dirs: Vec<String> =
                manifest.collections.iter().map(|c| c.dir.clone()).collect();
            for dir in old_dirs.chain(new_dirs.iter().cloned()) {
                let live = root.join(&dir);
                if live.exists() {
                    durable::rename(&live, &trash.join(&dir))?;
                }
            }
            for dir in &new_dirs {
                let staged = self.base.join(dir);
                durable::rename(&staged, &root.join(dir))?;
            }
        }
        durable::sync_filesystem(&root)?;
        durable::sync_dir(&root)?;
        manifest.write(&self.folder.manifest_path())?;
        self.committed = true;
        // Only now may what the previous manifest referenced go (and until the dirty marker
        // goes, a reader still refuses the folder).
        if self.in_place() {
            for c in &self.dropped {
                durable::remove_dir_all_if_exists(&self.collection_dir(c))?;
            }
            for dir in &gone_dirs {
                durable::remove_dir_all_if_exists(dir)?;
            }
        }
        // What an earlier, killed incremental saved is no longer needed either.
        let undo = self.folder.undo_dir();
        remove_documents(&undo.join("old"))?;
        remove_documents(&undo.join("new"))?;
        remove_documents(&undo.join("file"))?;
        durable::remove_dir_all_if_exists(&undo)?;
        let _ = fs::remove_file(self.folder.dirty_marker());
        remove_documents(&self.folder.trash())?;
        durable::remove_dir_all_if_exists(&self.folder.staging())?;
        let keep: Vec<&str> = manifest
            .collections
            .iter()
            .filter_map(|c| c.key_index.as_deref())
            .collect();
        if let Ok(entries) = fs::read_dir(self.folder.index_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !keep.iter().any(|k| name.to_str() == Some(k)) {
                    let p = entry.path();
                    fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
                }
            }
        }
        Ok(swept)
    }

    fn collection_dir(&self, collection: &CollectionName) -> PathBuf {
        self.base.join(collection_dir_name(collection))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        // Both kinds write into directories of their own: staging (full), or a document
        // directory made afresh after the old one went to the undo area (incremental).
        durable::write_new(path, bytes)
    }
}

impl Drop for FolderRun {
    fn drop(&mut self) {
        if self.committed || !self.in_place() {
            return;
        }
        // A failed in-place run: put the backup back as its manifest says. If that fails too,
        // the dirty marker stays, readers refuse the folder and the next run takes a full
        // backup.
        let _ = self.roll_back();
    }
}

/// Removes `root`, a directory of collection directories of document directories (the trash,
/// the undo area), if it exists. Most document directories hold one `document.json`: two calls
/// remove one (`remove_dir_all` would list each first); anything else is removed the slow way.
fn remove_documents(root: &Path) -> Result<()> {
    let cdirs = match fs::read_dir(root) {
        Ok(cdirs) => cdirs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read directory", root, e)),
    };
    for cdir in cdirs {
        let cdir = cdir
            .map_err(|e| Error::io("read directory", root, e))?
            .path();
        if !cdir.is_dir() {
            fs::remove_file(&cdir).map_err(|e| Error::io("remove", &cdir, e))?;
            continue;
        }
        if let Ok(docs) = fs::read_dir(&cdir) {
            for doc in docs {
                let doc = doc.map_err(|e| Error::io("read directory", &cdir, e))?;
                if doc.file_type().is_ok_and(|t| !t.is_dir()) {
                    // A saved `document.json` or a marker (`undo/file/`, `undo/new/`).
                    let doc = doc.path();
                    fs::remove_file(&doc).map_err(|e| Error::io("remove", &doc, e))?;
                    continue;
                }
                let doc = doc.path();
                let _ = fs::remove_file(doc.join(DOCUMENT_FILE));
                if fs::remove_dir(&doc).is_err() {
                    if doc.is_dir() {
                        durable::remove_dir_all_if_exists(&doc)?;
                    } else {
                        fs::remove_file(&doc).map_err(|e| Error::io("remove", &doc, e))?;
                    }
                }
            }
        }
        durable::remove_dir_all_if_exists(&cdir)?;
    }
    durable::remove_dir_all_if_exists(root)
}

/// How a document directory compares with an encoded record.
enum Compared {
    /// Its `document.json` and attachments are the record's, byte for byte, and it has no
    /// other attachment.
    Same,
    /// It exists and differs (or cannot be read).
    Differs,
    /// There is no such document.
    Missing,
}

fn compare_document(docdir: &Path, enc: &document::EncodedDocument<'_>) -> Compared {
    match fs::read(docdir.join(DOCUMENT_FILE)) {
        Ok(json) if json == enc.json => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !docdir.exists() => {
            return Compared::Missing
        }
        _ => return Compared::Differs,
    }
    let attdir = docdir.join(ATTACHMENTS_DIR);
    let same = if enc.attachments.is_empty() {
        fs::symlink_metadata(&attdir).is_err()
    } else {
        fs::read_dir(&attdir).is_ok_and(|entries| entries.count() == enc.attachments.len())
            && enc
                .attachments
                .iter()
                .all(|(name, bytes)| fs::read(attdir.join(name)).is_ok_and(|b| &b == bytes))
    };
    if same {
        Compared::Same
    } else {
        Compared::Differs
    }
}

/// The directory name of a collection (its encoded name).
pub fn collection_dir_name(collection: &CollectionName) -> String {
    docid::encode(collection.as_str().as_bytes())
}

fn remove_stale_attachments(attdir: &Path, keep: &[(String, &[u8])]) -> Result<()> {
    let Ok(entries) = fs::read_dir(attdir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", attdir, e))?;
        let name = entry.file_name();
        if !keep.iter().any(|(k, _)| name.to_str() == Some(k)) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    Ok(())
}
