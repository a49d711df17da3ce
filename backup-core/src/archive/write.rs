//! Writing archives (format 2): the engine streams records straight into the archive, with no
//! working copy of the data.
//!
//! Records gather per collection into parts of about [`PART_BYTES`]; each full part goes to a
//! pipeline of `threads` workers that encode its JSON lines and compress them, and comes back,
//! in order, to this thread, which appends it to the zip. Memory: the open parts (at most
//! [`PENDING_BYTES`] in all) and `2 × threads` parts in flight.
//!
//! What the next incremental needs is kept in the *key state* (`DIR/.tidemark-state/`): per
//! collection, a key index (every key with its record CRC32 and length, sorted, checksummed;
//! docs/FORMAT.md §1.8), and `state.json` naming the archive they match. It is a cache: when it
//! is missing, damaged or not the newest archive's, the next archive is full and says why.

use super::chain::{ArchiveOutput, ChainStore, LocalChain, Slot};
use super::v2::{
    encode_line, part_name, value_name, Apart, Decoded, Line, Place, Stored, APART_BYTES,
    VALUE_CHUNK,
};
use super::{
    file_name_of, manifest_text, ArchiveCollection, ArchiveManifest, ArchiveOptions,
    ArchiveSummary, ChainItem, Compression, ARCHIVE_FORMAT, ARCHIVE_FORMAT_VERSION,
    LEGACY_MIRROR_DIR, MANIFEST_ENTRY,
};
use crate::backend::StorageBackend;
use crate::durable;
use crate::engine::{
    self, BackupOptions, BackupSummary, Completed, Event, FullReason, RunWriter, Target,
};
use crate::error::{Error, Result};
use crate::folder::{collection_dir_name, WriteEvent};
use crate::keyindex::Entry;
use crate::manifest::{now_rfc3339, FolderManifest, RunKind};
use crate::model::{CollectionName, Field, Key, Record, Value};
use crate::pipeline::Pipeline;
use crate::zipstream::{self, Packed, Packer, StreamWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The key state's directory inside a local archive directory.
pub const STATE_DIR: &str = ".tidemark-state";
const STATE_FILE: &str = "state.json";
const STATE_FORMAT: &str = "tidemark-archive-state";
/// Uncompressed bytes at which a part is cut. 2 MiB (4 MiB until 2026-12-02): the parts in
/// flight are most of a full backup's and a restore's memory, and zstd's window at the usual
/// levels is 2 MiB or less, so larger parts compressed no better (1M records of 100 B: 57 MiB
/// peak instead of 70, an archive 0.7% smaller, as fast).
const PART_BYTES: usize = 2 << 20;
/// A collection's first part is cut at this many bytes, and each next one at twice the last
/// until [`PART_BYTES`]: the workers start compressing while the records are still being read,
/// which an incremental of a few MiB otherwise left to the end, all at once.
const FIRST_PART_BYTES: usize = 256 << 10;
/// The most bytes all collections' open parts may hold before they are all cut.
const PENDING_BYTES: usize = 16 << 20;
/// Memory a record costs in an open part beyond its key and payload.
const RECORD_OVERHEAD: usize = 64;

/// The key state: which archive it matches, and the backup as of that archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArchiveState {
    /// The archive's name in the chain.
    archive: String,
    /// Its sequence.
    sequence: u64,
    /// The checkpoint, collections, counts and key index files.
    backup: FolderManifest,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    crc32: u32,
    state: serde_json::Value,
}

fn read_state(dir: &Path) -> Result<Option<ArchiveState>> {
    let path = dir.join(STATE_FILE);
    let Some(bytes) = durable::read_if_exists(&path)? else {
        return Ok(None);
    };
    let bad = |cause: String| Error::Manifest {
        path: path.clone(),
        cause,
    };
    let file: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("unreadable: {e}")))?;
    let crc = crc32fast::hash(&serde_json::to_vec(&file.state).unwrap_or_default());
    if crc != file.crc32 {
        return Err(bad("its CRC32 does not match".into()));
    }
    let state: ArchiveState =
        serde_json::from_value(file.state).map_err(|e| bad(format!("unexpected content: {e}")))?;
    if state.backup.format != STATE_FORMAT {
        return Err(bad(format!("format `{}`", state.backup.format)));
    }
    Ok(Some(state))
}

/// Writes `state.json` aside (see [`durable::Unsynced`]): its fsync and rename are the caller's.
fn write_state_aside(dir: &Path, state: &ArchiveState) -> Result<durable::Unsynced> {
    let path = dir.join(STATE_FILE);
    let body = serde_json::to_value(state).map_err(|e| Error::Manifest {
        path: path.clone(),
        cause: e.to_string(),
    })?;
    let crc32 = crc32fast::hash(&serde_json::to_vec(&body).unwrap_or_default());
    let bytes = serde_json::to_vec_pretty(&StateFile { crc32, state: body }).map_err(|e| {
        Error::Manifest {
            path: path.clone(),
            cause: e.to_string(),
        }
    })?;
    durable::write_aside(&path, &bytes)
}

/// Removes every file of the state directory that `keep` does not name (indexes of older or
/// interrupted runs).
fn clean_state(dir: &Path, keep: &[&str]) -> Result<()> {
    for entry in fs::read_dir(dir)
        .map_err(|e| Error::io("read directory", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != STATE_FILE && !keep.contains(&name.as_str()) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io("remove", &p, e))?;
        }
    }
    Ok(())
}

/// Backs `backend` up as the next archive in `dir`: full the first time (or with
/// `BackupMode::Full`), incremental after.
pub fn backup_archive(
    backend: &dyn StorageBackend,
    dir: &Path,
    options: &BackupOptions,
    archive: &ArchiveOptions,
    events: &mut dyn FnMut(Event),
) -> Result<ArchiveSummary> {
    // The lock refuses a path that is not a directory.
    let _lock = crate::lock::DestinationLock::acquire(dir, "backup")?;
    crate::destination::claim_format(dir, crate::destination::DestFormat::Archive)?;
    // Format-1 runs kept a per-record working copy here; nothing reads it any more.
    durable::remove_dir_all_if_exists(&dir.join(LEGACY_MIRROR_DIR))?;
    backup_archive_to(
        backend,
        &LocalChain::new(dir),
        &dir.join(STATE_DIR),
        options,
        archive,
        events,
    )
}

/// Backs `backend` up as the next archive of `chain_store` (a local directory or an object
/// store), keeping the key state in the local directory `state_dir`: full the first time (or
/// with `BackupMode::Full`, or when the state is not the newest archive's), incremental after.
pub fn backup_archive_to(
    backend: &dyn StorageBackend,
    chain_store: &dyn ChainStore,
    state_dir: &Path,
    options: &BackupOptions,
    archive: &ArchiveOptions,
    events: &mut dyn FnMut(Event),
) -> Result<ArchiveSummary> {
    let started = Instant::now();
    // What a killed run left half-written is never part of the chain: remove it.
    chain_store.clean_partial()?;
    // Only the newest archive's manifest is read: a live backup's chain grows by thousands of
    // archives a day.
    let (newest, unreadable) = newest_or_damage(chain_store)?;
    let head = newest.as_ref();
    tracing::debug!(
        chain = %chain_store.location().display(),
        newest = ?head.map(|h| file_name_of(&h.path)),
        "continuing the chain"
    );
    durable::create_dir_all(state_dir)?;
    let (previous, sequence) = match &unreadable {
        // A damaged newest archive must not stop every backup after it (bit rot in one file
        // would leave the store unprotected until someone deletes it): the run is a full
        // archive after it, which depends on nothing before. The damaged file stays, for
        // verify to report and the user to look at.
        Some((last, e)) => (
            Err(FullReason::PreviousDamaged(format!(
                "the chain's newest archive cannot be read ({e}), so this backup does not \
                 continue it"
            ))),
            last + 1,
        ),
        None => (
            previous_state(state_dir, head),
            head.map_or(1, |h| h.manifest.sequence + 1),
        ),
    };
    let (compression, unread) = next_codec(chain_store, head, archive);
    if let (Some(e), Some(h)) = (unread, head) {
        events(Event::Notice(format!(
            "the codec of {} could not be read ({e}): this archive is {compression}",
            file_name_of(&h.path)
        )));
    }
    let archive = &ArchiveOptions {
        compression,
        ..*archive
    };
    let target = ArchiveTarget {
        chain: chain_store,
        state_dir,
        sequence,
        options: *archive,
    };
    let done = engine::run(
        backend,
        &target,
        previous.as_ref().map(|(_, s)| &s.backup),
        false,
        options,
        events,
    )?;
    let Completed {
        outcome,
        reason,
        captured_at,
        store_schema,
        store_marks,
    } = done;
    let kind = outcome.method.kind();
    let (parent, from) = match (kind, head) {
        (RunKind::Incremental, Some(h)) => {
            (Some(file_name_of(&h.path)), Some(h.manifest.to.clone()))
        }
        _ => (None, None),
    };
    let mut run = outcome.run;
    run.flush_all()?;
    let count = |c: &CollectionName| outcome.counts.get(c).copied().unwrap_or(0);
    let collections: Vec<ArchiveCollection> = outcome
        .collections
        .iter()
        .map(|c| {
            let part = run.collections.get(&c.name);
            ArchiveCollection {
                info: c.clone(),
                dir: collection_dir_name(&c.name),
                records: count(&c.name),
                documents: part.map_or(0, |p| p.documents),
                deletions: part.map_or(0, |p| p.deletions),
                parts: Some(part.map_or(0, |p| p.parts)),
                scan_parts: Some(part.map_or(0, |p| match (kind, p.scan_parts) {
                    (RunKind::Incremental, _) => 0,
                    (RunKind::Full, Some(n)) => n,
                    (RunKind::Full, None) => p.parts,
                })),
            }
        })
        .collect();
    let dropped: BTreeMap<String, u64> = run
        .dropped
        .iter()
        .filter(|(_, p)| p.parts > 0)
        .map(|(_, p)| (p.dir.clone(), p.parts))
        .collect();
    let entries = collections.iter().map(|c| c.documents + c.deletions).sum();
    let manifest = ArchiveManifest {
        format: ARCHIVE_FORMAT.into(),
        format_version: ARCHIVE_FORMAT_VERSION,
        sequence,
        kind,
        parent,
        from,
        to: outcome.checkpoint.clone(),
        store_kind: backend.kind(),
        source: backend.describe(),
        created_at: now_rfc3339(),
        captured_at: captured_at.clone(),
        collections,
        store_schema: store_schema.clone(),
        bytes: 0,
        dropped_parts: (!dropped.is_empty()).then_some(dropped),
        covers: None,
    };
    // The key state's new files (written aside, their writeback started) and the new
    // `state.json`, written aside once the archive has its name, are fsynced with the archive
    // and renamed after it, `state.json` last (`ArchiveOutput::finish_with`).
    let mut unsynced = Some(outcome.unsynced);
    let state_of = |archive: &str| {
        let now = now_rfc3339();
        ArchiveState {
            archive: archive.to_string(),
            sequence,
            backup: FolderManifest {
                format: STATE_FORMAT.into(),
                format_version: 1,
                store_kind: backend.kind(),
                source: backend.describe(),
                checkpoint: outcome.checkpoint.clone(),
                created_at: now.clone(),
                updated_at: now,
                last_run: kind,
                collections: outcome
                    .collections
                    .iter()
                    .map(|c| engine::manifest_collection(c, &outcome.indexes, &outcome.counts))
                    .collect(),
                store_schema: store_schema.clone(),
                store_marks: store_marks.clone(),
            },
        }
    };
    let mut state = None;
    // Read after the finish: parts still in the pipeline count too.
    let (name, size, bytes_written) = run.finish(manifest.clone(), &mut |archive| {
        let st = state_of(archive);
        let mut files = unsynced.take().unwrap_or_default();
        files.push(write_state_aside(state_dir, &st)?);
        state = Some(st);
        Ok(files)
    })?;
    tracing::info!(
        archive = %name,
        kind = %kind,
        size,
        entries,
        seconds = started.elapsed().as_secs_f64(),
        "archive written"
    );
    let state = state.ok_or_else(|| Error::Io {
        op: "write",
        path: state_dir.join(STATE_FILE),
        source: std::io::Error::other("the archive was finished without its key state"),
    })?;
    let keep: Vec<&str> = state
        .backup
        .collections
        .iter()
        .flat_map(|c| c.key_index.iter().chain(&c.key_deltas))
        .map(String::as_str)
        .collect();
    clean_state(state_dir, &keep)?;
    engine::trim(backend, options, &outcome.checkpoint, events);
    let records_total = state.backup.collections.iter().map(|c| c.records).sum();
    Ok(ArchiveSummary {
        compression: archive.compression,
        backup: BackupSummary {
            kind,
            method: outcome.method,
            full_reason: reason,
            checkpoint: outcome.checkpoint,
            captured_at,
            records_written: outcome.written,
            records_unchanged: 0,
            records_deleted: outcome.deleted,
            bytes_written,
            records_total,
            elapsed: started.elapsed(),
        },
        file: chain_store.location_of(&name),
        kind,
        size,
        entries,
        elapsed: started.elapsed(),
    })
}

/// A newest archive that cannot be read: the highest sequence number among the archives'
/// names, and the damage.
type Unreadable = (u64, Error);

/// The chain's newest archive (what a backup continues), or, when its manifest (or seal)
/// cannot be read because it is damaged, the highest sequence number among the archives' names
/// and the damage.
fn newest_or_damage(
    chain_store: &dyn ChainStore,
) -> Result<(Option<ChainItem>, Option<Unreadable>)> {
    match chain_store.newest() {
        Ok(newest) => Ok((newest, None)),
        Err(e @ (Error::Damaged { .. } | Error::Manifest { .. })) => {
            // The listing reads names (and the head): if even that fails, the damage is what
            // the user needs to hear about.
            let Ok(listing) = chain_store.listing() else {
                return Err(e);
            };
            let last = listing.slots.iter().map(|s| s.sequence).max().unwrap_or(0);
            Ok((None, Some((last, e))))
        }
        Err(e) => Err(e),
    }
}

/// The state to continue from, or why the next archive is full.
fn previous_state(
    state_dir: &Path,
    head: Option<&ChainItem>,
) -> std::result::Result<(PathBuf, ArchiveState), FullReason> {
    let Some(head) = head else {
        return Err(FullReason::FirstBackup);
    };
    if head.manifest.format_version < ARCHIVE_FORMAT_VERSION {
        return Err(FullReason::OlderArchiveFormat(head.manifest.format_version));
    }
    let state = match read_state(state_dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(FullReason::PreviousDamaged(format!(
                "the key state {} is missing",
                state_dir.display()
            )))
        }
        Err(e) => {
            return Err(FullReason::PreviousDamaged(format!(
                "the key state is damaged: {e}"
            )))
        }
    };
    if state.archive != file_name_of(&head.path)
        || state.sequence != head.manifest.sequence
        || state.backup.checkpoint != head.manifest.to
    {
        return Err(FullReason::PreviousDamaged(format!(
            "the key state matches {}, not the newest archive {}",
            state.archive,
            file_name_of(&head.path)
        )));
    }
    for c in &state.backup.collections {
        let ok = c
            .key_index
            .as_deref()
            .is_some_and(|n| state_dir.join(n).is_file())
            && c.key_deltas.iter().all(|n| state_dir.join(n).is_file());
        if !ok {
            return Err(FullReason::PreviousDamaged(format!(
                "the key index of collection `{}` is missing",
                c.info.name
            )));
        }
    }
    Ok((state_dir.to_path_buf(), state))
}

/// Starts archive runs for the engine.
struct ArchiveTarget<'a> {
    chain: &'a dyn ChainStore,
    state_dir: &'a Path,
    sequence: u64,
    options: ArchiveOptions,
}

impl<'a> Target for ArchiveTarget<'a> {
    type Run = ArchiveRun;

    fn begin(&self, kind: RunKind, _previous: Option<&FolderManifest>) -> Result<ArchiveRun> {
        start_archive(
            self.chain,
            Slot::single(self.sequence, kind),
            self.state_dir,
            &self.options,
        )
    }
}

/// Starts writing the archive `slot` names into `chain`.
fn start_archive(
    chain: &dyn ChainStore,
    slot: Slot,
    state_dir: &Path,
    options: &ArchiveOptions,
) -> Result<ArchiveRun> {
    let kind = slot.kind;
    {
        let out = chain.begin(slot, options.buffer_size.max(4096))?;
        let what = chain.location_of(&format!("archive {}", slot.stem()));
        let method = match options.compression {
            // Level 0 is "no compression" (as in OrientDB).
            Compression::Deflate(0) | Compression::None => zipstream::Method::Stored,
            Compression::Deflate(level) => zipstream::Method::Deflate(u32::from(level.min(9))),
            Compression::Zstd(level) => zipstream::Method::Zstd(level),
        };
        // Checked here, on this thread: a worker cannot report a bad level as clearly.
        Packer::new(method).map_err(|e| Error::io("start compressing", &what, e))?;
        let zip = StreamWriter::new(out, method).map_err(|e| Error::io("write", &what, e))?;
        let pipeline = Pipeline::new(options.threads, move || Packer::new(method).ok(), pack_part);
        Ok(ArchiveRun {
            zip: Some(zip),
            what,
            pipeline,
            collections: BTreeMap::new(),
            dropped: BTreeMap::new(),
            pending: 0,
            bytes: 0,
            state_dir: state_dir.to_path_buf(),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            kind,
            replaying: false,
        })
    }
}

/// Writes the compacted archive `slot` into `chain`: the merge of `inputs` (consecutive
/// format-2 incrementals covering `slot.first..=slot.sequence`, with the same collections),
/// each key once, in its state at the last input. Returns it as the chain lists it, and the
/// lines it holds.
pub(super) fn write_compacted(
    chain: &dyn ChainStore,
    slot: Slot,
    inputs: &[ChainItem],
    options: &ArchiveOptions,
) -> Result<(ChainItem, u64)> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(Error::BadInput {
            path: chain.location(),
            cause: "nothing to compact".into(),
            source: None,
        });
    };
    let (first, last) = (&first.manifest, &last.manifest);
    // The key state is not touched: a compacted archive is never the newest.
    let mut run = start_archive(chain, slot, Path::new(""), options)?;
    let names: Vec<CollectionName> = last
        .collections
        .iter()
        .map(|c| c.info.name.clone())
        .collect();
    for name in &names {
        run.part(name);
    }
    super::v2::merge(chain, inputs, options.threads, &mut |ci, line| {
        let name = &names[ci];
        match line {
            Decoded::Put(record) => {
                let crc = crate::document::record_crc32(&record);
                run.push_record(name, record, crc)
            }
            Decoded::Delete(key) => {
                let size = key.as_bytes().len() + RECORD_OVERHEAD;
                run.push(name, Line::Delete(key), size, |p| p.deletions += 1)
            }
            // `merge` reads every value kept apart in before it hands a line on.
            Decoded::Apart(record, _, _) => Err(super::damaged(
                &chain.location(),
                format!("key {}: a value kept apart was not read", record.key),
            )),
        }
    })?;
    run.flush_all()?;
    let collections: Vec<ArchiveCollection> = last
        .collections
        .iter()
        .map(|c| {
            let part = run.collections.get(&c.info.name);
            ArchiveCollection {
                documents: part.map_or(0, |p| p.documents),
                deletions: part.map_or(0, |p| p.deletions),
                parts: Some(part.map_or(0, |p| p.parts)),
                scan_parts: Some(0),
                ..c.clone()
            }
        })
        .collect();
    let entries = collections.iter().map(|c| c.documents + c.deletions).sum();
    let manifest = ArchiveManifest {
        format: ARCHIVE_FORMAT.into(),
        format_version: ARCHIVE_FORMAT_VERSION,
        sequence: slot.sequence,
        kind: RunKind::Incremental,
        parent: first.parent.clone(),
        from: first.from.clone(),
        to: last.to.clone(),
        store_kind: last.store_kind,
        source: last.source.clone(),
        created_at: now_rfc3339(),
        captured_at: last.captured_at.clone(),
        collections,
        store_schema: last.store_schema.clone(),
        bytes: 0,
        dropped_parts: None,
        covers: Some(super::Covers {
            first: slot.first,
            last_archive: super::graph::end_name(&inputs[inputs.len() - 1]),
        }),
    };
    let (name, size, bytes) = run.finish(manifest.clone(), &mut |_| Ok(Vec::new()))?;
    let manifest = ArchiveManifest { bytes, ..manifest };
    let item = ChainItem {
        path: chain.location_of(&name),
        manifest,
        size,
    };
    Ok((item, entries))
}

/// A part on its way to a worker.
struct Chunk {
    name: String,
    body: Body,
}

/// What an entry on its way to a worker holds.
enum Body {
    /// A part's lines.
    Lines(Vec<Line>),
    /// One entry of a value kept apart: these bytes of it (shared by its entries, freed with
    /// the last).
    Value(Arc<Vec<u8>>, std::ops::Range<usize>),
}

/// A part encoded and compressed, ready to append.
struct PackedPart {
    name: String,
    packed: Packed,
    bytes: Vec<u8>,
}

fn pack_part(packer: &mut Option<Packer>, chunk: Chunk) -> Result<PackedPart> {
    let packer = packer.as_mut().ok_or_else(|| Error::Io {
        op: "compress",
        path: PathBuf::from(&chunk.name),
        source: std::io::Error::other("the compressor could not be made"),
    })?;
    let mut out = Vec::new();
    let pack = |packer: &mut Packer, raw: &[u8], out: &mut Vec<u8>| {
        packer
            .pack_into(raw, out)
            .map_err(|e| Error::io("compress", &chunk.name, e))
    };
    let (packed, bytes) = match chunk.body {
        Body::Lines(lines) => {
            let mut raw = Vec::with_capacity(PART_BYTES + PART_BYTES / 4);
            for line in &lines {
                encode_line(&mut raw, line);
            }
            drop(lines);
            let packed = pack(packer, &raw, &mut out)?;
            (packed, if out.is_empty() { raw } else { out })
        }
        Body::Value(value, range) => {
            let raw = &value[range];
            let packed = pack(packer, raw, &mut out)?;
            (packed, if out.is_empty() { raw.to_vec() } else { out })
        }
    };
    Ok(PackedPart {
        name: chunk.name,
        packed,
        bytes,
    })
}

/// One collection's parts in the archive being written.
struct PartState {
    dir: String,
    open: Vec<Line>,
    open_bytes: usize,
    parts: u64,
    scan_parts: Option<u64>,
    documents: u64,
    deletions: u64,
    /// Values kept apart so far.
    values: u64,
}

/// Where a collection's part is cut once it has `parts` before it.
fn part_bytes(parts: u64) -> usize {
    FIRST_PART_BYTES
        .checked_shl(parts.min(16) as u32)
        .map_or(PART_BYTES, |n| n.min(PART_BYTES))
}

/// The codec of the next archive of `chain`, whose newest is `head`: with `follow_chain`, the
/// head's ([`chain_codec`]), otherwise (or when it tells none) `archive.compression`. The
/// codec is a preference: when the head's directory cannot be read (damage `verify`
/// reports), the error comes back beside `archive.compression`, for the caller to tell.
pub(super) fn next_codec(
    chain: &dyn ChainStore,
    head: Option<&ChainItem>,
    archive: &ArchiveOptions,
) -> (Compression, Option<Error>) {
    let Some(head) = head.filter(|_| archive.follow_chain) else {
        return (archive.compression, None);
    };
    match chain_codec(chain, head) {
        Ok(codec) => (codec.unwrap_or(archive.compression), None),
        Err(e) => (archive.compression, Some(e)),
    }
}

/// The codec the chain's archive `head` was written with, at that codec's default level (a zip
/// records the method, not the level), from the method of its manifest entry (never empty, so
/// never stored unless the codec stores everything). `None` for a format-1 archive (a backup
/// onto one starts a new chain) or an entry of another method.
pub(super) fn chain_codec(chain: &dyn ChainStore, head: &ChainItem) -> Result<Option<Compression>> {
    if head.manifest.format_version < 2 {
        return Ok(None);
    }
    let archive = chain.open(head)?;
    let list = zipstream::read_directory(
        &mut super::chain::RangeReader::new(&*archive, 1 << 16),
        10_000_000,
    )
    .map_err(|r| super::damaged(&head.path, r.cause))?;
    let method = list
        .iter()
        .find(|e| e.name == MANIFEST_ENTRY)
        .map(|e| e.method);
    let codec = match method {
        Some(0) => Some(Compression::None),
        Some(8) => Some(Compression::default()),
        Some(93) => Some(Compression::Zstd(3)),
        _ => None,
    };
    tracing::debug!(archive = %file_name_of(&head.path), ?codec, "the chain's codec");
    Ok(codec)
}

/// An archive being written by the engine.
pub(crate) struct ArchiveRun {
    zip: Option<StreamWriter<Box<dyn ArchiveOutput>>>,
    what: PathBuf,
    pipeline: Pipeline<Option<Packer>, Chunk, Result<PackedPart>>,
    collections: BTreeMap<CollectionName, PartState>,
    /// Collections dropped during the run after parts of theirs were written.
    dropped: BTreeMap<CollectionName, PartState>,
    pending: usize,
    bytes: u64,
    state_dir: PathBuf,
    run_id: String,
    kind: RunKind,
    replaying: bool,
}

impl ArchiveRun {
    fn part(&mut self, collection: &CollectionName) -> &mut PartState {
        if !self.collections.contains_key(collection) {
            let state = self.dropped.remove(collection).unwrap_or(PartState {
                dir: collection_dir_name(collection),
                open: Vec::new(),
                open_bytes: 0,
                parts: 0,
                scan_parts: None,
                documents: 0,
                deletions: 0,
                values: 0,
            });
            self.collections.insert(collection.clone(), state);
        }
        self.collections
            .get_mut(collection)
            .expect("inserted above")
    }

    /// Adds a line, counted by `count` (so that a record looks its collection up once, through
    /// [`ArchiveRun::part`]); cuts the collection's part when it is full, and every part when
    /// too much is held.
    fn push(
        &mut self,
        collection: &CollectionName,
        line: Line,
        size: usize,
        count: fn(&mut PartState),
    ) -> Result<()> {
        let p = self.part(collection);
        count(p);
        p.open.push(line);
        p.open_bytes += size;
        let full = p.open_bytes >= part_bytes(p.parts);
        self.pending += size;
        if full {
            self.cut(collection)?;
        }
        if self.pending >= PENDING_BYTES {
            self.flush_all()?;
        }
        Ok(())
    }

    /// Sends a collection's open part to the workers.
    fn cut(&mut self, collection: &CollectionName) -> Result<()> {
        let ArchiveRun {
            collections,
            pipeline,
            zip,
            what,
            pending,
            bytes,
            ..
        } = self;
        let Some(p) = collections.get_mut(collection) else {
            return Ok(());
        };
        if p.open.is_empty() {
            return Ok(());
        }
        p.parts += 1;
        *pending -= p.open_bytes;
        p.open_bytes = 0;
        // The next part starts at the size this one reached (scaled to its larger cut): grown
        // from empty by doubling, each part's lines were moved again and again into fresh
        // memory, which faulted its pages in anew.
        let next = p.open.len() * part_bytes(p.parts) / part_bytes(p.parts - 1);
        let chunk = Chunk {
            name: part_name(&p.dir, p.parts),
            body: Body::Lines(std::mem::replace(&mut p.open, Vec::with_capacity(next))),
        };
        pipeline.submit(chunk, &mut |r| append(zip, what, bytes, r))
    }

    /// Adds a record's line, its values of [`APART_BYTES`] or more first sent to the workers
    /// as value entries of their own ([`VALUE_CHUNK`] bytes each, compressed in parallel); the
    /// part of such a line is cut at once, so that it follows its values closely.
    fn push_record(
        &mut self,
        collection: &CollectionName,
        mut record: Record,
        crc: u32,
    ) -> Result<()> {
        let size =
            record.key.as_bytes().len() + record.value.payload_len() as usize + RECORD_OVERHEAD;
        let mut large: Vec<(Place, Vec<u8>)> = Vec::new();
        match &mut record.value {
            Value::Bytes(b) if b.len() >= APART_BYTES => {
                large.push((Place::Value, std::mem::take(b)))
            }
            Value::Bytes(_) => {}
            Value::Row(row) => {
                for (i, (_, field)) in row.columns.iter_mut().enumerate() {
                    if let Field::Blob(b) | Field::Text(b) = field {
                        if b.len() >= APART_BYTES {
                            large.push((Place::Column(i), std::mem::take(b)));
                        }
                    }
                }
            }
        }
        if large.is_empty() {
            return self.push(collection, Line::Put(record, crc), size, |p| {
                p.documents += 1
            });
        }
        let mut apart = Vec::with_capacity(large.len());
        for (place, bytes) in large {
            let p = self.part(collection);
            p.values += 1;
            let (id, dir) = (p.values, p.dir.clone());
            let len = bytes.len();
            let value = Arc::new(bytes);
            let chunks = len.div_ceil(VALUE_CHUNK);
            for c in 0..chunks {
                let chunk = Chunk {
                    name: value_name(&dir, id, c as u64 + 1),
                    body: Body::Value(
                        value.clone(),
                        c * VALUE_CHUNK..len.min((c + 1) * VALUE_CHUNK),
                    ),
                };
                let ArchiveRun {
                    pipeline,
                    zip,
                    what,
                    bytes,
                    ..
                } = self;
                pipeline.submit(chunk, &mut |r| append(zip, what, bytes, r))?;
            }
            apart.push(Apart {
                place,
                stored: Stored {
                    id,
                    chunks: chunks as u64,
                    bytes: len as u64,
                },
            });
        }
        self.push(collection, Line::Apart(record, crc, apart), size, |p| {
            p.documents += 1
        })?;
        self.cut(collection)
    }

    /// Sends every open part to the workers.
    pub(crate) fn flush_all(&mut self) -> Result<()> {
        let names: Vec<CollectionName> = self.collections.keys().cloned().collect();
        for c in names {
            self.cut(&c)?;
        }
        Ok(())
    }

    /// Appends the last parts and the manifest, and completes the archive, then puts the files
    /// that `companion` writes aside for the archive's name in place (see
    /// [`ArchiveOutput::finish_with`]); returns its name, its size and the payload bytes of its
    /// entries (before compression).
    fn finish(
        mut self,
        mut manifest: ArchiveManifest,
        companion: &mut dyn FnMut(&str) -> Result<Vec<durable::Unsynced>>,
    ) -> Result<(String, u64, u64)> {
        self.flush_all()?;
        let ArchiveRun {
            pipeline,
            zip,
            what,
            bytes,
            ..
        } = &mut self;
        pipeline.finish(&mut |r| append(zip, what, bytes, r))?;
        tracing::debug!(bytes = *bytes, "parts compressed");
        manifest.bytes = *bytes;
        let text = manifest_text(&manifest)?;
        let mut zip = zip.take().ok_or_else(|| Error::Io {
            op: "write",
            path: what.clone(),
            source: std::io::Error::other("the archive was already finished"),
        })?;
        zip.add(MANIFEST_ENTRY, &text)
            .map_err(|e| Error::io("write", &*what, e))?;
        let out = zip.finish().map_err(|e| Error::io("write", &*what, e))?;
        let (name, size) = out.finish_with(&manifest, companion)?;
        Ok((name, size, manifest.bytes))
    }
}

/// Appends a packed part to the zip.
fn append(
    zip: &mut Option<StreamWriter<Box<dyn ArchiveOutput>>>,
    what: &Path,
    bytes: &mut u64,
    part: Result<PackedPart>,
) -> Result<()> {
    let part = part?;
    let zip = zip.as_mut().ok_or_else(|| Error::Io {
        op: "write",
        path: what.to_path_buf(),
        source: std::io::Error::other("the archive was already finished"),
    })?;
    zip.add_packed(&part.name, &part.packed, &part.bytes)
        .map_err(|e| Error::io("write", what, e))?;
    *bytes += part.packed.size;
    Ok(())
}

impl RunWriter for ArchiveRun {
    fn create_collection(&mut self, collection: &CollectionName) -> Result<()> {
        let replaying = self.replaying;
        let p = self.part(collection);
        if replaying && p.scan_parts.is_none() {
            p.scan_parts = Some(0);
        }
        Ok(())
    }

    fn drop_collection(&mut self, collection: &CollectionName) {
        if let Some(mut p) = self.collections.remove(collection) {
            self.pending -= p.open_bytes;
            p.open.clear();
            p.open_bytes = 0;
            self.dropped.insert(collection.clone(), p);
        }
    }

    fn put(
        &mut self,
        collection: &CollectionName,
        record: Record,
        entry: Entry,
    ) -> Result<Option<WriteEvent>> {
        self.push_record(collection, record, entry.crc32)?;
        Ok(None)
    }

    fn delete(
        &mut self,
        collection: &CollectionName,
        key: &Key,
    ) -> Result<Option<Option<WriteEvent>>> {
        let size = key.as_bytes().len() + RECORD_OVERHEAD;
        self.push(collection, Line::Delete(key.clone()), size, |p| {
            p.deletions += 1
        })?;
        Ok(Some(None))
    }

    fn replaying(&mut self) -> Result<()> {
        // The scan's parts end here: what follows may repeat keys.
        self.flush_all()?;
        self.replaying = true;
        if self.kind == RunKind::Full {
            for p in self.collections.values_mut() {
                p.scan_parts = Some(p.parts);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.flush_all()
    }

    fn count(&self, _: &CollectionName) -> Option<u64> {
        None
    }

    fn new_index(&self, collection: &CollectionName, tag: &str) -> (String, PathBuf) {
        let name = format!(
            "{}.{}{tag}.idx",
            collection_dir_name(collection),
            self.run_id
        );
        let path = self.state_dir.join(&name);
        (name, path)
    }

    fn index_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    fn needs_index(&self) -> bool {
        true
    }

    fn index_deltas(&self) -> bool {
        true
    }
}
