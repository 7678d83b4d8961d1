//! `install` / `uninstall`: the filter driver in git config, and the hooks.

use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::repo::{Repo, RepoError};

const PRE_PUSH: &str = include_str!("../../hooks/pre-push");
/// Identifies a hook fcache wrote, so that it may be updated or removed.
const HOOK_SIGNATURE: &str = "# Installed by fcache";
const HOOKS: [(&str, &str); 1] = [("pre-push", PRE_PUSH)];

const FILTER: [(&str, &str); 4] = [
    ("filter.fcache.clean", "fcache clean -- %f"),
    ("filter.fcache.smudge", "fcache smudge -- %f"),
    // git prefers the long-running process when it is set: one fcache for all files.
    ("filter.fcache.process", "fcache filter-process"),
    ("filter.fcache.required", "true"),
];

fn git_config(scope: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("git")
        .arg("config")
        .arg(scope)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `git config {scope} {}`", args.join(" ")))
}

fn scope(local: bool, repo: &Option<Repo>) -> anyhow::Result<&'static str> {
    if local && repo.is_none() {
        bail!("--local needs a repository: run it inside one");
    }
    Ok(if local { "--local" } else { "--global" })
}

fn discover() -> anyhow::Result<Option<Repo>> {
    match Repo::discover() {
        Ok(r) => Ok(Some(r)),
        Err(RepoError::NotARepository) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn install(local: bool) -> anyhow::Result<ExitCode> {
    let repo = discover()?;
    let scope = scope(local, &repo)?;
    for (key, value) in FILTER {
        let out = git_config(scope, &[key, value])?;
        if !out.status.success() {
            bail!(
                "`git config {scope} {key}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    eprintln!("fcache: filter configured in {} git config", &scope[2..]);
    if let Some(repo) = repo {
        install_hooks(&repo)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Install fcache's hooks into the repository, leaving a user's own hooks alone.
pub(super) fn install_hooks(repo: &Repo) -> anyhow::Result<()> {
    let dir = repo.hooks_dir()?;
    for (name, content) in HOOKS {
        let path = dir.join(name);
        match fs_err::read_to_string(&path) {
            Ok(existing) if existing == content => {}
            // A user's hook that already calls fcache.
            Ok(existing)
                if !existing.contains(HOOK_SIGNATURE) && existing.contains("fcache push") => {}
            Ok(existing) if !existing.contains(HOOK_SIGNATURE) => {
                eprintln!(
                    "fcache: warning: {} already exists and was left alone; add the line `fcache push \"$@\"` to it so that pushes send objects to the archive",
                    path.display()
                );
                continue;
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            Ok(_) | Err(_) => {
                write_hook(&path, content)?;
                eprintln!("fcache: installed {}", path.display());
            }
        }
    }
    Ok(())
}

fn write_hook(path: &Path, content: &str) -> anyhow::Result<()> {
    let dir = path.parent().expect("a hook path has a parent");
    fs_err::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, content.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    }
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn uninstall(local: bool) -> anyhow::Result<ExitCode> {
    let repo = discover()?;
    let scope = scope(local, &repo)?;
    let out = git_config(scope, &["--remove-section", "filter.fcache"])?;
    // Exit status 128 with "no such section" means there was nothing to remove.
    if out.status.success() {
        eprintln!("fcache: filter removed from {} git config", &scope[2..]);
    }
    if let Some(repo) = repo {
        let dir = repo.hooks_dir()?;
        for (name, _) in HOOKS {
            let path = dir.join(name);
            if fs_err::read_to_string(&path).is_ok_and(|c| c.contains(HOOK_SIGNATURE)) {
                fs_err::remove_file(&path)?;
                eprintln!("fcache: removed {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
