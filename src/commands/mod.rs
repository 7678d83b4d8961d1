//! The command line: one module per subcommand. Only this layer prints.

mod cat;
mod checkout;
mod clean;
mod fetch;
mod filter_process;
mod fsck;
mod gc;
mod index;
mod install;
mod progress;
mod push;
mod serve;
mod smudge;
mod status;
mod track;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::index::Index;
use crate::repo::Repo;
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "fcache",
    version,
    about = "Keep large data files out of git history: a shared, verified cache and an archive behind git's clean/smudge filters"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configure the fcache filter in git config (global by default) and, inside a repository, install its hooks.
    Install {
        /// Write the repository's config instead of the global one.
        #[arg(long)]
        local: bool,
    },
    /// Undo `install`.
    Uninstall {
        #[arg(long)]
        local: bool,
    },
    /// Track files matching PATTERN with fcache (.gitattributes); with no pattern, list tracked patterns.
    Track { patterns: Vec<String> },
    /// Stop tracking PATTERN.
    Untrack {
        #[arg(required = true)]
        patterns: Vec<String>,
    },
    /// Git clean filter: content on stdin into the cache, marker on stdout.
    Clean { path: Option<PathBuf> },
    /// Git smudge filter: marker on stdin, content on stdout.
    Smudge { path: Option<PathBuf> },
    /// Git's long-running filter protocol (clean, smudge, delay) on stdin/stdout.
    FilterProcess,
    /// The objects this repository knows and where they are.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write an object's verified content to stdout.
    Cat {
        /// A tracked path or a 64-digit identifier.
        path_or_id: String,
    },
    /// Send the objects of commits being pushed to the archive (called by the pre-push hook).
    Push {
        /// Every object referenced from any ref, not only the current branch.
        #[arg(long)]
        all: bool,
        /// Set by git's pre-push hook: the remote's name (the refs being pushed come on stdin).
        remote: Option<String>,
        /// Set by git's pre-push hook: the remote's URL.
        url: Option<String>,
    },
    /// Download the objects HEAD's markers need into the cache.
    Fetch,
    /// Replace markers in the work tree with their content.
    Checkout,
    /// `fetch`, then `checkout`.
    Pull,
    /// Evict least recently used objects until the cache is within its limits
    /// (objects the archive does not hold are sent there first, never lost).
    Gc {
        /// List what would be evicted, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash cached objects; report and quarantine corrupt ones.
    Fsck {
        /// Also re-hash the archive's copies of the objects this repository knows.
        #[arg(long)]
        archive: bool,
    },
    /// The repository's index: convert it to another format, or rebuild it.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Serve an archive over the Git LFS Batch API (basic transfers); its URL
    /// is both fcache's archive and git-lfs's lfs.url.
    Serve(serve::ServeArgs),
}

#[derive(Debug, Subcommand)]
enum IndexCommand {
    /// Move every entry into FORMAT's file and set fcache.index = FORMAT in this repository.
    Convert {
        /// csv, json or sqlite.
        #[arg(long, value_name = "FORMAT")]
        to: crate::index::Format,
    },
    /// Recover the index from every commit's markers, git's index and the cache; an unreadable index file is set aside, not deleted.
    Rebuild,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Install { local } => install::install(local),
        Command::Uninstall { local } => install::uninstall(local),
        Command::Track { patterns } => track::track(&patterns),
        Command::Untrack { patterns } => track::untrack(&patterns),
        Command::Clean { path } => clean::run(path),
        Command::Smudge { path } => smudge::run(path),
        Command::FilterProcess => filter_process::run(),
        Command::Status { json } => status::run(json),
        Command::Cat { path_or_id } => cat::run(&path_or_id),
        Command::Push { all, remote, url } => push::run(all, remote, url),
        Command::Fetch => fetch::run(),
        Command::Checkout => checkout::run(),
        Command::Pull => {
            let fetched = fetch::run()?;
            let checked_out = checkout::run()?;
            Ok(if fetched == ExitCode::SUCCESS {
                checked_out
            } else {
                fetched
            })
        }
        Command::Gc { dry_run } => gc::run(dry_run),
        Command::Fsck { archive } => fsck::run(archive),
        Command::Index {
            command: IndexCommand::Convert { to },
        } => index::convert(to),
        Command::Index {
            command: IndexCommand::Rebuild,
        } => index::rebuild(),
        Command::Serve(args) => serve::run(args),
    }
}

/// What most commands work with: the repository, the store, and the index.
struct Context {
    repo: Repo,
    store: Store,
    index: Box<dyn Index>,
}

impl Context {
    fn open() -> anyhow::Result<Self> {
        let repo = Repo::discover()?;
        let config = Config::load(Some(&repo.config()?))?;
        let index = crate::index::open(&repo.fcache_dir(), config.index_format)?;
        let store = Store::open(config)?;
        Ok(Self { repo, store, index })
    }

    /// The end of every command that used objects: save the index, keep the
    /// cache within its limits, and tell the user what they should know.
    fn finish(&mut self) -> anyhow::Result<()> {
        // Each step runs whatever the one before did; the first failure is
        // the one reported.
        let saved = self.index.save();
        let enforced = self.store.finish();
        for notice in self.store.take_notices() {
            eprintln!("fcache: warning: {notice}");
        }
        saved?;
        enforced?;
        Ok(())
    }
}

/// stdin and stdout as plain files: no line buffering in the way of binary
/// content, and large reads and writes go straight to the pipe.
#[cfg(unix)]
fn stdio() -> anyhow::Result<(File, File)> {
    use std::os::fd::AsFd;
    let stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot open stdin")?;
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot open stdout")?;
    Ok((File::from(stdin), File::from(stdout)))
}

#[cfg(windows)]
fn stdio() -> anyhow::Result<(File, File)> {
    use std::os::windows::io::AsHandle;
    let stdin = io::stdin()
        .as_handle()
        .try_clone_to_owned()
        .context("cannot open stdin")?;
    let stdout = io::stdout()
        .as_handle()
        .try_clone_to_owned()
        .context("cannot open stdout")?;
    Ok((File::from(stdin), File::from(stdout)))
}

/// A path for messages: what git passed, or a placeholder.
fn shown(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<stdin>".to_owned())
}
