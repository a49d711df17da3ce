//! One module per subcommand: its arguments (`Args`) and `run`.

pub mod backup;
pub mod list;
pub mod prune;
pub mod restore;
pub mod run;
pub mod track;
pub mod verify;

use anyhow::Result;

/// Whether the backup directory `dir` holds an archive chain (its format marker, or for older
/// directories, what it holds).
pub(crate) fn is_archive(dir: &std::path::Path) -> Result<bool> {
    Ok(backup_core::detect_format(dir)? == Some(backup_core::DestFormat::Archive))
}
