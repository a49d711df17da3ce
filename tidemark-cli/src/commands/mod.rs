//! One module per subcommand: its arguments (`Args`) and `run`.

pub mod backup;
pub mod compact;
pub mod completions;
pub mod list;
pub mod prune;
pub mod restore;
pub mod run;
pub mod track;
pub mod verify;

use crate::place::{self, Place};
use anyhow::Result;
use backup_core::{ChainStore, LocalChain};

/// Whether the backup directory `dir` holds an archive chain (its format marker, or for older
/// directories, what it holds).
pub(crate) fn is_archive(dir: &std::path::Path) -> Result<bool> {
    Ok(backup_core::detect_format(dir)? == Some(backup_core::DestFormat::Archive))
}

/// What a backup place holds, as restore and verify read it.
pub(crate) enum Backup {
    /// An archive chain (a bucket, or a directory in archive format), read through the one
    /// [`ChainStore`] interface.
    Chain(Box<dyn ChainStore>),
    /// A folder backup in this directory.
    Folder(std::path::PathBuf),
}

/// Opens the backup at `place`.
pub(crate) fn open_backup(place: &Place) -> Result<Backup> {
    Ok(match place {
        Place::Remote(url) => Backup::Chain(place::open_remote(url)?),
        Place::Local(dir) if is_archive(dir)? => Backup::Chain(Box::new(LocalChain::new(dir))),
        Place::Local(dir) => Backup::Folder(dir.clone()),
    })
}
