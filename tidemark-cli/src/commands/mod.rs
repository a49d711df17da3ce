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
use backup_core::{ChainStore, KeyOptions};

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a handler installed by [`stop_cleanly_on_interrupt`] is stopping the command: it
/// exits the process itself once the cleanup is done (the command's own error, e.g. an upload
/// that the handler aborted, is not the outcome).
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Ctrl-C or SIGTERM during a command that writes to a destination (`command`: "backup",
/// "compact", "prune"): removes its unfinished local files, aborts its uploads under way and
/// removes the remote lock it holds (an upload's parts would otherwise stay in the bucket,
/// invisible but stored), then exits with status 130. What is already in place is complete.
pub(crate) fn stop_cleanly_on_interrupt(command: &'static str) -> Result<()> {
    use anyhow::Context;
    ctrlc::set_handler(move || {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        backup_core::remove_temp_files();
        #[cfg(feature = "remote")]
        tidemark_remote::abandon_all();
        eprintln!("tidemark: {command} interrupted; its unfinished files were removed");
        std::process::exit(130);
    })
    .context("installing the Ctrl-C / SIGTERM handler")
}

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

/// Opens the backup at `place` (an encrypted chain with `keys`).
pub(crate) fn open_backup(place: &Place, keys: &KeyOptions) -> Result<Backup> {
    Ok(match place {
        Place::Local(dir) if !is_archive(dir)? => Backup::Folder(dir.clone()),
        _ => Backup::Chain(place::open_archives(place, keys)?),
    })
}

/// The backup a command reads or maintains (a directory, or an object store URL such as
/// `s3://bucket/prefix`), named positionally or with `--from`: every command that reads a
/// backup takes both (`tidemark verify bk`, `tidemark restore --from bk …`).
#[derive(clap::Args, Debug, Clone)]
pub struct BackupPlace {
    /// The backup: a directory, or an object store URL (s3://bucket/prefix).
    #[arg(
        value_name = "BACKUP",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    pub dir: Option<Place>,
    /// The backup, as a flag (the same as the positional BACKUP).
    #[arg(long, value_name = "BACKUP")]
    pub from: Option<Place>,
    /// How to open it, if it is encrypted.
    #[command(flatten)]
    pub keys: crate::KeyArgs,
}

impl BackupPlace {
    /// The place named either way.
    pub fn place(&self) -> Result<Place> {
        self.dir
            .clone()
            .or(self.from.clone())
            .ok_or_else(|| anyhow::anyhow!("name the backup (BACKUP or --from BACKUP)"))
    }

    /// The key options given (an encrypted chain opens with them).
    pub fn keys(&self) -> Result<KeyOptions> {
        self.keys.options()
    }
}
