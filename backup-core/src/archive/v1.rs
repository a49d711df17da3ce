//! Reading archive format 1: one zip entry per document (`<collection>/<id>/document.json`,
//! attachments, `deleted` markers), cut from a working folder by tidemark before format 2.

use super::chain::{read_whole, ArchiveRead, ChainStore};
use super::{damaged, ArchiveCollection, ChainItem, MANIFEST_ENTRY};
use crate::docid;
use crate::error::Result;
use crate::folder::{ATTACHMENTS_DIR, DOCUMENT_FILE};
use crate::manifest::RunKind;
use crate::model::CollectionName;
use crate::restore::{RestoreOptions, RestoreSummary};
use crate::zipstream::{self, Refused};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Instant;

/// The empty entry that marks a deleted document.
const DELETED_ENTRY: &str = "deleted";

/// What one entry name means.
enum EntryName {
    Document { dir: String, id: String },
    Attachment,
    Deleted { dir: String, id: String },
    Manifest,
}

/// Parses and vets an entry name: no absolute paths, no `..`, nothing outside the layout.
fn entry_name(name: &str) -> Option<EntryName> {
    if name == MANIFEST_ENTRY {
        return Some(EntryName::Manifest);
    }
    let parts: Vec<&str> = name.split('/').collect();
    let safe = |s: &&str| !s.is_empty() && *s != "." && *s != ".." && !s.contains('\\');
    if name.starts_with('/') || !parts.iter().all(safe) {
        return None;
    }
    match parts.as_slice() {
        [dir, id, DOCUMENT_FILE] => Some(EntryName::Document {
            dir: dir.to_string(),
            id: id.to_string(),
        }),
        [_, _, ATTACHMENTS_DIR, _] => Some(EntryName::Attachment),
        [dir, id, DELETED_ENTRY] => Some(EntryName::Deleted {
            dir: dir.to_string(),
            id: id.to_string(),
        }),
        _ => None,
    }
}

/// Receives an archive's entries: the collection, the record (`None` for a deletion) and the
/// document id.
pub(super) type EntryVisitor<'a> =
    dyn FnMut(&ArchiveCollection, Option<crate::model::Record>, &str) -> Result<()> + 'a;

/// Reads every entry of one archive, checking the file's CRC32 (from its name), every entry's
/// zip CRC32, every document's record CRC32 and the counts, and hands documents and deletions
/// to `visit` in order. Errors name the file and entry.
pub(super) fn read_archive(
    item: &ChainItem,
    archive: &dyn ArchiveRead,
    visit: &mut EntryVisitor<'_>,
) -> Result<u64> {
    read_whole(&item.path, archive, &mut |_| {}, |file| {
        read_entries(item, file, visit)
    })
}

fn read_entries(
    item: &ChainItem,
    file: &mut dyn Read,
    visit: &mut EntryVisitor<'_>,
) -> Result<u64> {
    let path = &item.path;
    let m = &item.manifest;
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut records = 0u64;
    // Attachments precede their document.json (the writer's order, docs/FORMAT.md §3); they are
    // held until it arrives, and dropped with it.
    let mut attachments: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    zipstream::read_entries(
        file,
        |r: Refused| match r.entry {
            Some(e) => damaged(&path.join(e), r.cause),
            None => damaged(path, r.cause),
        },
        &mut |ename, data| {
            let epath = path.join(ename);
            let Some(kind) = entry_name(ename) else {
                return Err(damaged(
                    &epath,
                    "entry name outside the archive layout (refused)",
                ));
            };
            let collection = |dir: &str| {
                m.collections.iter().find(|c| c.dir == dir).ok_or_else(|| {
                    damaged(&epath, "entry of a collection the manifest does not list")
                })
            };
            match kind {
                EntryName::Manifest => {}
                EntryName::Attachment => {
                    attachments.insert(ename.to_string(), data);
                }
                EntryName::Deleted { dir, id } => {
                    let c = collection(&dir)?;
                    counts.entry(dir.clone()).or_default().1 += 1;
                    visit(c, None, &id)?;
                }
                EntryName::Document { dir, id } => {
                    let c = collection(&dir)?;
                    let prefix = format!("{dir}/{id}/{ATTACHMENTS_DIR}/");
                    let record = crate::document::decode(&data, &mut |att| {
                        attachments
                            .remove(&format!("{prefix}{att}"))
                            .ok_or_else(|| {
                                format!(
                                    "attachment `{att}` is not in the archive before its document"
                                )
                            })
                    })
                    .map_err(|cause| damaged(&epath, cause))?;
                    attachments.clear();
                    if docid::encode(record.key.as_bytes()) != id {
                        return Err(damaged(
                            &epath,
                            "the document's key does not match its name",
                        ));
                    }
                    counts.entry(dir.clone()).or_default().0 += 1;
                    records += 1;
                    visit(c, Some(record), &id)?;
                }
            }
            Ok(())
        },
    )?;
    for c in &m.collections {
        let (d, x) = counts.get(&c.dir).copied().unwrap_or_default();
        if (d, x) != (c.documents, c.deletions) {
            return Err(damaged(
                path,
                format!(
                    "collection `{}` has {d} documents and {x} deletions, the manifest says {} and {}",
                    c.info.name, c.documents, c.deletions
                ),
            ));
        }
    }
    Ok(records)
}

/// Writes the state at the last archive of `items` (a full archive and the incrementals after
/// it) into `sink` in one pass per archive, newest first: the first time a document id turns
/// up, its newest state (or deletion) is final and older entries for it are skipped. A
/// collection missing from an archive's manifest was dropped then, so entries older than that
/// are not its own. Memory: the ids found in the incrementals (the full archive adds none).
pub(super) fn replay_newest_first(
    store: &dyn ChainStore,
    items: &[ChainItem],
    mut sink: Box<dyn crate::backend::RestoreSink + '_>,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let started = Instant::now();
    let last = &items[items.len() - 1].manifest;
    let wanted = |n: &CollectionName| options.wants(n);
    let mut open: BTreeSet<CollectionName> = BTreeSet::new();
    for c in last.collections.iter().filter(|c| wanted(&c.info.name)) {
        sink.create_collection(&c.info, last.store_kind)?;
        open.insert(c.info.name.clone());
    }
    let mut seen: std::collections::HashSet<(CollectionName, String)> = Default::default();
    let mut written: BTreeMap<CollectionName, u64> = BTreeMap::new();
    let mut batches: BTreeMap<CollectionName, crate::restore::Batch> = BTreeMap::new();
    let mut bytes = 0u64;
    for item in items.iter().rev() {
        open.retain(|n| item.manifest.collections.iter().any(|c| &c.info.name == n));
        let base = item.manifest.kind == RunKind::Full;
        let archive = store.open(item)?;
        read_archive(item, &*archive, &mut |c, record, id| {
            let name = &c.info.name;
            if !open.contains(name) {
                return Ok(());
            }
            if base {
                if !seen.is_empty() && seen.contains(&(name.clone(), id.to_string())) {
                    return Ok(());
                }
            } else if !seen.insert((name.clone(), id.to_string())) {
                return Ok(());
            }
            if let Some(record) = record {
                *written.entry(name.clone()).or_default() += 1;
                let batch = batches
                    .entry(name.clone())
                    .or_insert_with(|| crate::restore::Batch::new(options));
                bytes += batch.push(&mut *sink, name, record)?;
            }
            Ok(())
        })?;
        if base {
            break;
        }
    }
    for (name, batch) in &mut batches {
        batch.flush(&mut *sink, name)?;
    }
    let path = &items[items.len() - 1].path;
    for c in last.collections.iter().filter(|c| wanted(&c.info.name)) {
        let n = written.get(&c.info.name).copied().unwrap_or(0);
        if n != c.records {
            return Err(damaged(
                path,
                format!(
                    "replaying the chain gives collection `{}` {n} records, the manifest says {}",
                    c.info.name, c.records
                ),
            ));
        }
    }
    sink.finish(&last.store_schema, last.store_kind)?;
    Ok(RestoreSummary {
        collections: last
            .collections
            .iter()
            .filter(|c| wanted(&c.info.name))
            .count(),
        records: written.values().sum(),
        bytes,
        elapsed: started.elapsed(),
        archives: items.len(),
        point: Some((last.sequence, last.captured_at.clone())),
        avoided: Vec::new(),
        skipped: Vec::new(),
    })
}
