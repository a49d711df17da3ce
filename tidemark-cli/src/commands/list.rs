//! `tidemark list`: the archives of a chain (a directory or a bucket): kind, checkpoint
//! range, records, size, capture time; `--json` for scripts.

use crate::output::human_bytes;
use crate::place::{self, Place};
use anyhow::{Context, Result};
use std::process::ExitCode;

/// List the archives in a directory: full or incremental, checkpoint range, time, size.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub backup: super::BackupPlace,
    /// One JSON object per archive (`{"schema": 1, "type": "archive", …}`; see the README).
    #[arg(long)]
    pub json: bool,
}

/// Runs `tidemark list`.
pub fn run(args: Args) -> Result<ExitCode> {
    let Args { backup, json } = args;
    let dir = backup.place()?;
    let keys = backup.keys()?;
    if let Place::Local(d) = &dir {
        backup_core::not_a_file(d).with_context(|| format!("list {dir}"))?;
        let path = d
            .join(backup_core::META_DIR)
            .join(backup_core::MANIFEST_FILE);
        if let Some(m) =
            backup_core::FolderManifest::read(&path).with_context(|| format!("list {dir}"))?
        {
            return list_folder(&dir, &m, json);
        }
    }
    let (chain, leftovers, damage) =
        place::chain_and_damage(&dir, &keys).with_context(|| format!("list {dir}"))?;
    if chain.is_empty() && damage.is_empty() {
        // As verify and restore say it, for a directory or a bucket's prefix.
        let at = match &dir {
            Place::Local(d) => d.clone(),
            Place::Remote(_) => std::path::PathBuf::from(dir.to_string()),
        };
        return Err(backup_core::no_backup(&at)).with_context(|| format!("list {dir}"));
    }
    if !leftovers.is_empty() && !json {
        eprintln!(
            "tidemark: {} archive(s) left over by an interrupted prune are not listed (the next \
             prune or compact deletes them)",
            leftovers.len()
        );
    }
    if json {
        // Damage first, as `verify --json` says it: the file and what is wrong.
        for problem in &damage {
            println!(
                "{}",
                serde_json::json!({"schema": 1, "type": "problem", "message": problem.to_string()})
            );
        }
        for item in chain {
            let m = &item.manifest;
            let sum = |f: fn(&backup_core::ArchiveCollection) -> u64| {
                m.collections.iter().map(f).sum::<u64>()
            };
            println!(
                "{}",
                serde_json::json!({
                    "schema": 1,
                    "type": "archive",
                    "name": item.path.file_name().unwrap_or_default().to_string_lossy(),
                    "sequence": m.sequence,
                    "first": m.first(),
                    "compacted": m.covers.is_some(),
                    "kind": m.kind.to_string(),
                    "from": m.from.as_ref().map(|f| f.position),
                    "to": m.to.position,
                    "records_in_backup": sum(|c| c.records),
                    "records_in_archive": sum(|c| c.documents),
                    "deletions_in_archive": sum(|c| c.deletions),
                    "size": item.size,
                    "format_version": m.format_version,
                    "captured_at": m.captured_at,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<12} {:>12} {:>12} {:>10} {:>10} {:<6}  captured",
        "archive", "kind", "from", "to", "records", "size", "format"
    );
    // Times to the second, unless backups of different points share that second: then the
    // exact time, so that every time shown names its backup under `restore --at`.
    let second = |c: &backup_core::ChainItem| crate::output::to_second(&c.manifest.captured_at);
    let shared = |c: &backup_core::ChainItem| {
        chain
            .iter()
            .any(|o| o.manifest.sequence != c.manifest.sequence && second(o) == second(c))
    };
    // Rows in the order of their file names (the sequence number leads them): an archive that
    // cannot be read is shown where it lies, as damaged, with what is wrong with it.
    let mut rows: Vec<(String, String)> = Vec::with_capacity(chain.len() + damage.len());
    for problem in &damage {
        let (path, cause) = match problem {
            backup_core::Error::Damaged { path, cause }
            | backup_core::Error::Manifest { path, cause } => (path, cause.as_str()),
            _ => continue,
        };
        let name = damaged_name(path);
        let line = if cause == backup_core::LOST_POINT {
            format!(
                "{name:<40} {:<12} {cause} (`tidemark verify` reports it)",
                "MISSING"
            )
        } else {
            format!(
                "{name:<40} {:<12} {cause} (`tidemark verify` reports it; restore goes around \
                 it with --skip-damaged)",
                "DAMAGED"
            )
        };
        rows.push((name, line));
    }
    for item in &chain {
        let m = &item.manifest;
        let when = if shared(item) {
            m.captured_at.clone()
        } else {
            second(item)
        };
        let name = item
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let line = format!(
            "{:<40} {:<12} {:>12} {:>12} {:>10} {:>10} {:<6}  {}",
            name,
            if m.covers.is_some() {
                "compacted".to_string()
            } else {
                m.kind.to_string()
            },
            m.from
                .as_ref()
                .map_or("-".to_string(), |f| f.position.to_string()),
            m.to.position,
            m.collections.iter().map(|c| c.records).sum::<u64>(),
            human_bytes(item.size),
            format!("v{}", m.format_version),
            when
        );
        rows.push((name, line));
    }
    rows.sort();
    for (_, line) in rows {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The archive a damage report names: the file itself, or the archive holding the entry
/// named (`…/tidemark-000003-incr-1a2b3c4d.zip/manifest.json`).
fn damaged_name(path: &std::path::Path) -> String {
    path.ancestors()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .find(|n| n.starts_with("tidemark-"))
        .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string())
}

/// A folder backup holds one state, updated in place: one line about it.
fn list_folder(dir: &Place, m: &backup_core::FolderManifest, json: bool) -> Result<ExitCode> {
    let records: u64 = m.collections.iter().map(|c| c.records).sum();
    let interrupted = match dir {
        Place::Local(d) => backup_core::FolderBackup::interrupted_at(d),
        _ => false,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "schema": 1,
                "type": "folder",
                "source": m.source,
                "last_run": m.last_run.to_string(),
                "checkpoint": m.checkpoint.position,
                "records_in_backup": records,
                "collections": m.collections.len(),
                "created_at": m.created_at,
                "updated_at": m.updated_at,
                "interrupted": interrupted,
            })
        );
    } else {
        println!(
            "Folder backup {dir} of {}: {records} records in {} collections at checkpoint {}, \
             last run {} at {} (first at {}); a folder holds one state, updated in place",
            m.source,
            m.collections.len(),
            m.checkpoint.position,
            m.last_run,
            m.updated_at,
            m.created_at
        );
        if interrupted {
            eprintln!(
                "tidemark: a backup into this folder was interrupted, so its documents may not \
                 match the line above: verify and restore refuse it until `tidemark backup` \
                 runs again and repairs it"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
