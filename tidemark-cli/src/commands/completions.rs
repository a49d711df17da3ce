//! `tidemark completions SHELL` and `tidemark man`: shell completions and the man page,
//! generated from the command line's own definition, so they never drift from it.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::process::ExitCode;

/// Print shell completions for `tidemark` (install: `tidemark completions bash >
/// /etc/bash_completion.d/tidemark`; zsh: into a directory of `$fpath` as `_tidemark`; fish:
/// `~/.config/fish/completions/tidemark.fish`).
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// Print the man page, roff (install: `tidemark man > /usr/local/share/man/man1/tidemark.1`,
/// and `tidemark man backup > …/man1/tidemark-backup.1` for each subcommand).
#[derive(clap::Args)]
pub struct ManArgs {
    /// A subcommand's page (`tidemark-backup(1)`) instead of the main one.
    pub command: Option<String>,
}

/// Runs `tidemark completions`.
pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "tidemark", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Runs `tidemark man`.
pub fn man(args: ManArgs) -> Result<ExitCode> {
    let cmd = crate::Cli::command();
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            let Some(sub) = cmd.find_subcommand(name) else {
                let names: Vec<&str> = cmd
                    .get_subcommands()
                    .filter(|s| !s.is_hide_set())
                    .map(|s| s.get_name())
                    .collect();
                anyhow::bail!("no subcommand `{name}` (there are: {})", names.join(", "));
            };
            sub.clone().display_name(format!("tidemark-{name}"))
        }
    };
    clap_mangen::Man::new(page)
        .render(&mut std::io::stdout().lock())
        .context("writing the man page")?;
    Ok(ExitCode::SUCCESS)
}
