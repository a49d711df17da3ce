//! Restore: rebuild a store from a backup, into any backend.

use crate::backend::{RestoreSink, StorageBackend};
use crate::durable;
use crate::error::{Error, Result};
use crate::folder::FolderBackup;
use crate::manifest::FolderManifest;
use crate::model::{CollectionInfo, CollectionName, Record, StoreKind, StoreSchema};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Creates stores at paths, for restores that build a new store aside and rename it into place.
pub trait StoreFactory {
    /// The kind of store this factory makes.
    fn kind(&self) -> StoreKind;
    /// Whether a store at `path` holds data (a missing path holds none).
    fn holds_data(&self, path: &Path) -> Result<bool>;
    /// Creates a new, empty store at `path` (which does not exist).
    fn create(&self, path: &Path) -> Result<Box<dyn StorageBackend>>;
    /// Creates a new, empty store at `path` to restore a backup of a `source` store whose
    /// store-level schema was `schema` into, so that the new store can match the source's
    /// on-disk format (RocksDB: its table format version). Defaults to [`StoreFactory::create`].
    fn create_like(
        &self,
        path: &Path,
        schema: &StoreSchema,
        source: StoreKind,
    ) -> Result<Box<dyn StorageBackend>> {
        let _ = (schema, source);
        self.create(path)
    }
    /// The files or directories that make up the store at `path` (the path itself first, then
    /// companions such as SQLite's `-wal` and `-shm`).
    fn store_files(&self, path: &Path) -> Vec<PathBuf> {
        vec![path.to_path_buf()]
    }
    /// Refuses a `path` that exists and is not a store of this kind at all (a directory of other
    /// files, a file that is not a database), which a restore must not replace even with
    /// `--force`: it replaces a store, never anything else. Defaults to accepting any path.
    fn check_replaceable(&self, path: &Path) -> Result<()> {
        let _ = path;
        Ok(())
    }
    /// Called before a single-file store at `path` (not a directory) is replaced by renaming
    /// the new file over it: fold companion files (SQLite: checkpoint and remove an emptied
    /// `-wal`, remove `-shm`) into the main file, so that nothing of the old store can be
    /// replayed onto the new one. The old store stays complete. Defaults to nothing.
    fn prepare_replace(&self, path: &Path) -> Result<()> {
        let _ = path;
        Ok(())
    }
}

/// Whether the file at `path` begins as a SQLite database does (its 16-byte header string).
pub fn starts_as_sqlite(path: &Path) -> bool {
    let mut head = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head == b"SQLite format 3\0")
}

/// For stores that live in a directory (RocksDB, sled): checks that `path` is such a store,
/// recognized by its `marker` file, naming the problem otherwise.
pub fn check_store_dir(path: &Path, marker: &str, what: &str) -> Result<()> {
    if path.join(marker).is_file() {
        return Ok(());
    }
    Err(Error::BadInput {
        path: path.to_path_buf(),
        cause: if path.is_dir() {
            format!("not a {what} database (no {marker} file)")
        } else if path.exists() {
            if starts_as_sqlite(path) {
                format!(
                    "a file, and a {what} database is a directory: this is a SQLite database \
                     (sqlite:{})",
                    path.display()
                )
            } else {
                format!("a file, and a {what} database is a directory")
            }
        } else {
            "no such directory".into()
        },
        source: None,
    })
}

/// What a restore target of a store that lives in a directory is.
enum DirTarget {
    /// Nothing at the path.
    Missing,
    /// An empty directory.
    Empty,
    /// A directory with the store's marker file.
    Store,
    /// A directory of other files.
    Other,
}

/// Looks at a restore target for a store recognized by its `marker` file; a file is refused.
fn dir_target(path: &Path, marker: &str, what: &str) -> Result<DirTarget> {
    if !path.exists() {
        return Ok(DirTarget::Missing);
    }
    if !path.is_dir() {
        return Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: format!("is a file, not a {what} directory"),
            source: None,
        });
    }
    let mut entries = std::fs::read_dir(path).map_err(|e| Error::io("read", path, e))?;
    Ok(if entries.next().is_none() {
        DirTarget::Empty
    } else if path.join(marker).is_file() {
        DirTarget::Store
    } else {
        DirTarget::Other
    })
}

/// [`StoreFactory::check_replaceable`] for stores that live in a directory, recognized by their
/// `marker` file: a missing path or an empty directory is fine, and so is a store; a file, or a
/// directory of anything else, is refused.
pub fn check_dir_store_replaceable(path: &Path, marker: &str, what: &str) -> Result<()> {
    match dir_target(path, marker, what)? {
        DirTarget::Missing | DirTarget::Empty | DirTarget::Store => Ok(()),
        DirTarget::Other => Err(Error::BadInput {
            path: path.to_path_buf(),
            cause: format!(
                "holds files but no {what} database (no {marker} file): a restore replaces a \
                 {what} database, never another directory, even with --force; restore into a \
                 new path"
            ),
            source: None,
        }),
    }
}

/// Refuses a restore target that is not a store of `factory`'s kind
/// ([`StoreFactory::check_replaceable`]), and one that holds data unless `options.force`.
pub(crate) fn check_target(
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
) -> Result<()> {
    factory.check_replaceable(target)?;
    if !options.force && factory.holds_data(target)? {
        return Err(Error::TargetNotEmpty {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

/// [`StoreFactory::holds_data`] for stores that live in a directory: a missing or empty
/// directory holds nothing; a store (recognized by `marker`) holds data unless `is_empty` says
/// otherwise; anything else holds data, so it is never overwritten unasked.
pub fn dir_store_holds_data(
    path: &Path,
    marker: &str,
    what: &str,
    is_empty: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    Ok(match dir_target(path, marker, what)? {
        DirTarget::Missing | DirTarget::Empty => false,
        DirTarget::Other => true,
        // A store that cannot be opened is not known to be empty.
        DirTarget::Store => !is_empty().unwrap_or(false),
    })
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Restore only these collections (all when `None`).
    pub collections: Option<Vec<CollectionName>>,
    /// Replace a target that holds data.
    pub force: bool,
    /// Records handed to the store at once.
    pub batch_size: usize,
    /// Told, as records are written, how many so far and how many in all (when known).
    pub progress: Option<RestoreProgress>,
    /// Partial recovery: restore everything intact and skip what is damaged (a document, an
    /// archive's part or a whole archive), listing it in [`RestoreSummary::skipped`], instead
    /// of refusing the restore. Archive format 2 and folder backups.
    pub skip_damaged: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            collections: None,
            force: false,
            batch_size: 4096,
            progress: None,
            skip_damaged: false,
        }
    }
}

impl RestoreOptions {
    /// Whether the restore takes collection `name` (every one unless `collections` is given).
    pub fn wants(&self, name: &CollectionName) -> bool {
        self.collections.as_ref().is_none_or(|w| w.contains(name))
    }
}

/// A restore's progress report: called with the records written so far and the total the
/// backup says the restored collections hold (when it says).
#[derive(Clone)]
pub struct RestoreProgress(pub std::sync::Arc<dyn Fn(u64, Option<u64>) + Send + Sync>);

impl std::fmt::Debug for RestoreProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestoreProgress")
    }
}

/// A sink that reports each batch to a [`RestoreProgress`] before handing it on.
struct Counting<'a> {
    inner: Box<dyn RestoreSink + 'a>,
    progress: RestoreProgress,
    total: Option<u64>,
    done: u64,
}

impl RestoreSink for Counting<'_> {
    fn create_collection(&mut self, info: &CollectionInfo, source: StoreKind) -> Result<()> {
        self.inner.create_collection(info, source)
    }
    fn put_batch(&mut self, collection: &CollectionName, records: Vec<Record>) -> Result<()> {
        let n = records.len() as u64;
        self.inner.put_batch(collection, records)?;
        self.done += n;
        (self.progress.0)(self.done, self.total);
        Ok(())
    }
    fn finish(self: Box<Self>, schema: &StoreSchema, source: StoreKind) -> Result<()> {
        self.inner.finish(schema, source)
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreSummary {
    /// Collections restored.
    pub collections: usize,
    /// Records restored.
    pub records: u64,
    /// Payload bytes restored.
    pub bytes: u64,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Archives read (0 for a folder backup).
    pub archives: usize,
    /// Archives: the point restored, as the sequence of the archive it ends at and when that
    /// backup read the store (RFC 3339). `None` for a folder backup.
    pub point: Option<(u64, String)>,
    /// Damaged compacted archives the restore went around (through the archives each covers),
    /// one message each.
    pub avoided: Vec<String>,
    /// With [`RestoreOptions::skip_damaged`]: what was damaged and left out, one message each.
    /// Empty when the restore is complete.
    pub skipped: Vec<String>,
}

/// Restores the folder backup at `dir` into a new store at `target`, built aside and renamed
/// into place once complete: a damaged backup leaves the target untouched. Refuses a target
/// holding data unless `options.force`.
pub fn restore_folder_to_path(
    dir: &Path,
    factory: &dyn StoreFactory,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    check_target(factory, target, options)?;
    let (folder, manifest) = FolderBackup::open_existing(dir)?;
    check_collections(
        &|n| manifest.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    let wanted = manifest
        .collections
        .iter()
        .filter(|c| options.wants(&c.info.name));
    let total = wanted.map(|c| c.records).sum();
    restore_to_path(
        factory,
        target,
        options.force,
        (&manifest.store_schema, manifest.store_kind),
        (options.progress.as_ref(), Some(total)),
        &mut |sink| write_all(&folder, &manifest, sink, options),
    )
}

/// Fills a new store beside `target` through `fill`, then swaps it into place (the old store,
/// if any, moved aside and removed only after the new one is in); on error the new store is
/// removed and the target is untouched. Without `force`, a target that holds data by the time
/// of the swap is refused (see [`swap_into_place`]).
pub(crate) fn restore_to_path(
    factory: &dyn StoreFactory,
    target: &Path,
    force: bool,
    origin: (&StoreSchema, StoreKind),
    progress: (Option<&RestoreProgress>, Option<u64>),
    fill: &mut dyn FnMut(Box<dyn RestoreSink + '_>) -> Result<RestoreSummary>,
) -> Result<RestoreSummary> {
    let resolved = resolve_links(target)?;
    let target = resolved.as_path();
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::BadInput {
            path: target.to_path_buf(),
            cause: format!("the directory {} does not exist", parent.display()),
            source: None,
        });
    }
    let name = target
        .file_name()
        .ok_or_else(|| Error::BadInput {
            path: target.to_path_buf(),
            cause: "not a file path".into(),
            source: None,
        })?
        .to_string_lossy()
        .into_owned();
    // A target in use is refused before anything is written: replacing a database under an
    // application that has it open would send its later writes to an unlinked file.
    if let Some(holder) = in_use(&factory.store_files(target)) {
        return Err(Error::TargetInUse {
            path: target.to_path_buf(),
            holder,
        });
    }
    if !force {
        // Refused before the work rather than at the swap.
        if let Some(orphan) = orphan_companions(factory, target).first() {
            return Err(orphan_error(orphan));
        }
    }
    remove_debris(factory, &parent, &name);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tmp = parent.join(format!(".{name}.{RESTORE_TAG}{tag}"));
    register_in_progress(factory.store_files(&tmp), true);
    let result = (|| {
        let backend = factory.create_like(&tmp, origin.0, origin.1)?;
        let sink = backend.restore_sink()?;
        let sink: Box<dyn RestoreSink + '_> = match progress {
            (Some(p), total) => Box::new(Counting {
                inner: sink,
                progress: p.clone(),
                total,
                done: 0,
            }),
            (None, _) => sink,
        };
        let summary = fill(sink)?;
        drop(backend);
        Ok(summary)
    })();
    let swapped = result.and_then(|summary| {
        // Held through the swap: an interrupt handler (`abandon_in_progress`) removes the
        // temporary store either before the swap starts or not at all.
        let _guard = IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner());
        swap_into_place(factory, &tmp, target, &parent, force)?;
        Ok(summary)
    });
    register_in_progress(factory.store_files(&tmp), false);
    // The new store is in place (or the restore failed and the target is untouched): what is
    // left at `tmp` is the old store, or the unfinished new one.
    remove_store(factory, &tmp);
    swapped
}

/// The path a restore writes for `target`: `target` itself, or, where it is a symbolic link
/// (to a file or directory, there or not yet), the path the link names, links resolved. A
/// restore renames its new store into place: renamed over the link, it replaced the link with
/// the store, in the link's directory, and left the store the link named as it was (the
/// application's data on another volume, say), which is not what "restore into this path"
/// means.
fn resolve_links(target: &Path) -> Result<PathBuf> {
    let mut path = target.to_path_buf();
    // As the kernel allows (ELOOP past 40).
    for _ in 0..40 {
        let is_link = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link {
            return Ok(path);
        }
        if let Ok(real) = std::fs::canonicalize(&path) {
            return Ok(real);
        }
        // A link to nothing yet: the path it names, relative to the link's directory.
        let named = std::fs::read_link(&path).map_err(|e| Error::io("read the link", &path, e))?;
        path = match path.parent() {
            Some(dir) => dir.join(named),
            None => named,
        };
    }
    Err(Error::BadInput {
        path: target.to_path_buf(),
        cause: "too many levels of symbolic links".into(),
        source: None,
    })
}

/// The name part of a restore's temporary store: `.NAME.tidemark-restore-TAG`.
const RESTORE_TAG: &str = "tidemark-restore-";

/// Puts the complete new store at `tmp` in place of `target`. At every instant `target` holds
/// the complete old store or the complete new one: a directory store is exchanged atomically
/// (`renameat2(RENAME_EXCHANGE)`, the old one is then at `tmp`); a file store is renamed over
/// the old file, after its companions were folded in.
///
/// The target was checked when the restore began, but a restore takes a while: another process
/// may have opened the target since, or (without `force`) put data there, such as a second
/// restore to the same path or the application creating its database. Both are checked again
/// here. A target that is still missing is filled by a rename that fails if anything has
/// appeared (`RENAME_NOREPLACE`), and a directory exchanged without `force` is exchanged back
/// if what was swapped out holds data.
fn swap_into_place(
    factory: &dyn StoreFactory,
    tmp: &Path,
    target: &Path,
    parent: &Path,
    force: bool,
) -> Result<()> {
    let new_files = factory.store_files(tmp);
    let old_files = factory.store_files(target);
    // Make the new store durable before it becomes visible.
    durable::sync_filesystem(parent)?;
    if let Some(holder) = in_use(&old_files) {
        return Err(Error::TargetInUse {
            path: target.to_path_buf(),
            holder,
        });
    }
    let not_empty = || Error::TargetNotEmpty {
        path: target.to_path_buf(),
    };
    // Refused without `force`; with it they go, as part of the target they belong to.
    for orphan in orphan_companions(factory, target) {
        if !force {
            return Err(orphan_error(&orphan));
        }
        durable::crash_point("remove", &orphan);
        std::fs::remove_file(&orphan).map_err(|e| Error::io("remove", &orphan, e))?;
    }
    if !force {
        // A closed store has no companions: the new store is its main path alone.
        let alone = new_files.iter().skip(1).all(|f| !f.exists());
        if alone && std::fs::symlink_metadata(target).is_err() {
            durable::crash_point("rename (no replace)", tmp);
            match renameat2(tmp, target, libc::RENAME_NOREPLACE) {
                Ok(()) => return durable::sync_dir(parent),
                // Something appeared at the target: checked below like any existing target.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // A file system without RENAME_NOREPLACE (some network and FUSE ones): the
                // check below, then the plain rename, as before it was used.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                    ) => {}
                Err(e) => {
                    return Err(Error::Io {
                        op: "rename without replacing (renameat2 RENAME_NOREPLACE)",
                        path: target.to_path_buf(),
                        source: e,
                    })
                }
            }
        }
        if factory.holds_data(target)? {
            return Err(not_empty());
        }
    }
    if target.is_dir() {
        exchange(tmp, target)?;
        // Without `force`, what was swapped out must have stayed empty up to the exchange; if
        // not, it goes back, and the new store is removed with the temporary directory.
        if !force && factory.holds_data(tmp).unwrap_or(true) {
            exchange(tmp, target)?;
            return Err(not_empty());
        }
    } else {
        if target.exists() {
            factory.prepare_replace(target)?;
        }
        // Companions first (a closed store has none), the main file last and atomically.
        for (from, to) in new_files.iter().zip(&old_files).skip(1) {
            if from.exists() {
                durable::rename(from, to)?;
            }
        }
        durable::rename(&new_files[0], &old_files[0])?;
    }
    durable::sync_dir(parent)
}

/// The companion files of a file store (SQLite's `-wal`, `-shm`, `-journal`) that are at
/// `target` while the store itself is not: left by a database deleted without them. SQLite
/// applies a `-wal` or hot journal it finds beside a database to it, so a database restored
/// beside them read as the deleted one's pages (a restore of one row read back as 50 rows of
/// the old database, `PRAGMA integrity_check` ok).
fn orphan_companions(factory: &dyn StoreFactory, target: &Path) -> Vec<PathBuf> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Vec::new();
    }
    let files = factory.store_files(target);
    files
        .into_iter()
        .skip(1)
        .filter(|f| std::fs::symlink_metadata(f).is_ok())
        .collect()
}

/// The refusal of a restore beside an orphan companion file (see [`orphan_companions`]).
fn orphan_error(orphan: &Path) -> Error {
    Error::BadInput {
        path: orphan.to_path_buf(),
        cause: "is there without the database it belongs to (deleted without it?), and the \
                database would read it as its own: remove it, or use --force to replace it \
                with the rest of the target"
            .into(),
        source: None,
    }
}

/// Linux `renameat2(from, to, flags)`.
#[allow(unsafe_code)]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both strings are valid, NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Atomically exchanges two paths (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    durable::crash_point("rename (exchange)", a);
    renameat2(a, b, libc::RENAME_EXCHANGE).map_err(|e| Error::Io {
        op: "swap atomically (renameat2 RENAME_EXCHANGE; the file system must support it)",
        path: b.to_path_buf(),
        source: e,
    })
}

/// Which other process has one of `files` (or, for a directory, a file inside it) open, if
/// any, read from `/proc/*/fd`: `pid N (command)`.
pub fn in_use(files: &[PathBuf]) -> Option<String> {
    let wanted: Vec<PathBuf> = files.iter().filter_map(|f| f.canonicalize().ok()).collect();
    if wanted.is_empty() {
        return None;
    }
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if wanted.iter().any(|w| link == *w || link.starts_with(w)) {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    None
}

/// Removes what interrupted restores to `parent/name` left behind (temporary stores that no
/// process has open).
fn remove_debris(factory: &dyn StoreFactory, parent: &Path, name: &str) {
    let prefix = format!(".{name}.{RESTORE_TAG}");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        // The main path of a temporary store (its companions go with it).
        let Some(tag) = file.strip_prefix(&prefix) else {
            continue;
        };
        if tag.len() != 32 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let path = e.path();
        if in_use(&factory.store_files(&path)).is_none() {
            remove_store(factory, &path);
        }
    }
}

/// The files of the temporary stores of restores in progress in this process (for
/// [`abandon_in_progress`]).
static IN_PROGRESS: std::sync::Mutex<Vec<Vec<PathBuf>>> = std::sync::Mutex::new(Vec::new());

fn register_in_progress(files: Vec<PathBuf>, add: bool) {
    let mut list = IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner());
    if add {
        list.push(files);
    } else {
        list.retain(|f| *f != files);
    }
}

/// Removes the temporary stores of the restores this process has in progress, for a Ctrl-C
/// handler that exits right after: an interrupted restore leaves no temporary files (and the
/// target untouched). What a removal misses is removed by the next restore to that target.
/// Returns whether a restore was in progress (false: none had started, or its new store is
/// already in place).
pub fn abandon_in_progress() -> bool {
    let list = IN_PROGRESS.lock().unwrap_or_else(|p| p.into_inner());
    for files in list.iter() {
        remove_files(files);
    }
    !list.is_empty()
}

/// Restores the folder backup at `dir` into an open, empty store (library use). The backup is
/// verified completely first, so a damaged backup writes nothing.
pub fn restore_folder_into(
    dir: &Path,
    backend: &dyn StorageBackend,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    if !options.force && !backend.is_empty()? {
        return Err(Error::TargetNotEmpty {
            path: PathBuf::from(backend.describe()),
        });
    }
    let (folder, manifest) = FolderBackup::open_existing(dir)?;
    check_collections(
        &|n| manifest.collections.iter().any(|c| &c.info.name == n),
        options,
    )?;
    let report = crate::verify::verify_folder(dir)?;
    if let Some(problem) = report.problems.into_iter().next() {
        return Err(problem);
    }
    write_all(&folder, &manifest, backend.restore_sink()?, options)
}

/// Refuses `--collections` names the backup does not hold.
pub(crate) fn check_collections(
    held: &dyn Fn(&CollectionName) -> bool,
    options: &RestoreOptions,
) -> Result<()> {
    for wanted in options.collections.iter().flatten() {
        if !held(wanted) {
            return Err(Error::BadInput {
                path: PathBuf::from(wanted.as_str()),
                cause: "no such collection in the backup".into(),
                source: None,
            });
        }
    }
    Ok(())
}

fn write_all(
    folder: &FolderBackup,
    manifest: &FolderManifest,
    mut sink: Box<dyn RestoreSink + '_>,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let (mut records, mut bytes, mut collections) = (0u64, 0u64, 0usize);
    let mut skipped = Vec::new();
    for c in &manifest.collections {
        if let Some(wanted) = &options.collections {
            if !wanted.contains(&c.info.name) {
                continue;
            }
        }
        sink.create_collection(&c.info, manifest.store_kind)?;
        let mut batch = Batch::new(options);
        let n = folder.read_collection(
            &c.dir,
            &mut |record, _| {
                bytes += batch.push(&mut *sink, &c.info.name, record)?;
                Ok(())
            },
            &mut |e| {
                if options.skip_damaged {
                    skipped.push(e.to_string());
                    Ok(())
                } else {
                    Err(e)
                }
            },
        )?;
        batch.flush(&mut *sink, &c.info.name)?;
        if n != c.records {
            let e = Error::Damaged {
                path: folder.root().join(&c.dir),
                cause: format!(
                    "holds {n} documents, the manifest says {}: documents are missing or extra",
                    c.records
                ),
            };
            if !options.skip_damaged {
                return Err(e);
            }
            skipped.push(e.to_string());
        }
        records += n;
        collections += 1;
    }
    sink.finish(&manifest.store_schema, manifest.store_kind)?;
    Ok(RestoreSummary {
        collections,
        records,
        bytes,
        elapsed: started.elapsed(),
        archives: 0,
        point: None,
        avoided: Vec::new(),
        skipped,
    })
}

/// Records on their way to a sink, handed on every `batch_size` records or 32 MiB.
pub(crate) struct Batch {
    records: Vec<Record>,
    bytes: u64,
    size: usize,
}

impl Batch {
    pub(crate) fn new(options: &RestoreOptions) -> Self {
        Batch {
            records: Vec::with_capacity(options.batch_size.clamp(1, 4096)),
            bytes: 0,
            size: options.batch_size.max(1),
        }
    }

    /// Adds a record of `collection`; returns its size in bytes (key and payload).
    pub(crate) fn push(
        &mut self,
        sink: &mut dyn RestoreSink,
        collection: &CollectionName,
        record: Record,
    ) -> Result<u64> {
        let len = record.value.payload_len() + record.key.as_bytes().len() as u64;
        self.bytes += len;
        self.records.push(record);
        if self.records.len() >= self.size || self.bytes >= 32 << 20 {
            self.flush(sink, collection)?;
        }
        Ok(len)
    }

    /// Hands on what is held.
    pub(crate) fn flush(
        &mut self,
        sink: &mut dyn RestoreSink,
        collection: &CollectionName,
    ) -> Result<()> {
        self.bytes = 0;
        if self.records.is_empty() {
            return Ok(());
        }
        // The next batch starts at full size: grown from empty, it was copied a dozen times.
        let full = Vec::with_capacity(self.records.capacity());
        sink.put_batch(collection, std::mem::replace(&mut self.records, full))
    }
}

fn remove_store(factory: &dyn StoreFactory, path: &Path) {
    remove_files(&factory.store_files(path));
}

/// Removes a temporary store's files and directories. Best effort: the store is ours, and the
/// error that got us here (or the interrupt) matters more.
fn remove_files(files: &[PathBuf]) {
    for p in files {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
}
