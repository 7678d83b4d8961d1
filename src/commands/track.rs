//! `track` / `untrack`: lines in the work tree's top-level `.gitattributes`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use crate::repo::Repo;

const ATTRIBUTES: &str = "filter=fcache diff=fcache merge=fcache -text";

/// Where `.gitattributes` is, and the current directory relative to the work tree.
fn locate(repo: &Repo) -> anyhow::Result<(PathBuf, PathBuf)> {
    let Some(workdir) = repo.workdir() else {
        bail!("this repository has no work tree; run track in a checkout");
    };
    let workdir = workdir.canonicalize()?;
    let cwd = std::env::current_dir()?.canonicalize()?;
    let relative = cwd
        .strip_prefix(&workdir)
        .unwrap_or(Path::new(""))
        .to_owned();
    Ok((workdir.join(".gitattributes"), relative))
}

/// A pattern as `.gitattributes` needs it: spaces as `[[:space:]]` (as git-lfs
/// writes them), a leading `#` escaped, and made relative to the top level.
fn escape(pattern: &str, relative: &Path) -> String {
    let mut p = pattern.replace(' ', "[[:space:]]");
    if p.starts_with('#') {
        p.insert(0, '\\');
    }
    if relative.as_os_str().is_empty() || p.starts_with('/') {
        p
    } else {
        let prefix = relative
            .to_string_lossy()
            .replace('\\', "/")
            .replace(' ', "[[:space:]]");
        format!("{prefix}/{p}")
    }
}

fn tracked_pattern(line: &str) -> Option<&str> {
    let mut fields = line.split_whitespace();
    let pattern = fields.next()?;
    if pattern.starts_with('#') {
        return None;
    }
    fields.any(|f| f == "filter=fcache").then_some(pattern)
}

fn read(path: &Path) -> anyhow::Result<String> {
    match fs_err::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e.into()),
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().expect(".gitattributes has a parent");
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn track(patterns: &[String]) -> anyhow::Result<ExitCode> {
    let repo = Repo::discover()?;
    let (path, relative) = locate(&repo)?;
    let mut text = read(&path)?;
    if patterns.is_empty() {
        let tracked: Vec<&str> = text.lines().filter_map(tracked_pattern).collect();
        if tracked.is_empty() {
            println!("No patterns tracked by fcache in {}", path.display());
        } else {
            println!("Patterns tracked by fcache ({}):", path.display());
            for p in tracked {
                println!("    {p}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut changed = false;
    for pattern in patterns {
        let escaped = escape(pattern, &relative);
        if text.lines().any(|l| tracked_pattern(l) == Some(&escaped)) {
            eprintln!("fcache: {pattern:?} is already tracked");
            continue;
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{escaped} {ATTRIBUTES}\n"));
        eprintln!("fcache: tracking {pattern:?}");
        changed = true;
    }
    if changed {
        write(&path, &text)?;
    }
    // Tracking is the moment a repository starts needing its objects pushed:
    // make sure the pre-push hook is there (a clone does not bring hooks along).
    super::install::install_hooks(&repo)?;
    Ok(ExitCode::SUCCESS)
}

pub fn untrack(patterns: &[String]) -> anyhow::Result<ExitCode> {
    let (path, relative) = locate(&Repo::discover()?)?;
    let text = read(&path)?;
    let escaped: Vec<String> = patterns.iter().map(|p| escape(p, &relative)).collect();
    let mut kept = String::with_capacity(text.len());
    let mut removed = Vec::new();
    for line in text.split_inclusive('\n') {
        match tracked_pattern(line) {
            Some(p) if escaped.iter().any(|e| e == p) => removed.push(p.to_owned()),
            _ => kept.push_str(line),
        }
    }
    for (pattern, escaped) in patterns.iter().zip(&escaped) {
        if removed.contains(escaped) {
            eprintln!("fcache: untracked {pattern:?}");
        } else {
            eprintln!("fcache: {pattern:?} was not tracked");
        }
    }
    if !removed.is_empty() {
        write(&path, &kept)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_git_lfs() {
        assert_eq!(escape("*.csv", Path::new("")), "*.csv");
        assert_eq!(
            escape("my data.bin", Path::new("")),
            "my[[:space:]]data.bin"
        );
        assert_eq!(escape("#x", Path::new("")), "\\#x");
        assert_eq!(
            escape("*.csv", Path::new("sub dir")),
            "sub[[:space:]]dir/*.csv"
        );
    }

    #[test]
    fn recognises_only_fcache_lines() {
        assert_eq!(
            tracked_pattern("*.csv filter=fcache diff=fcache"),
            Some("*.csv")
        );
        assert_eq!(tracked_pattern("*.csv filter=lfs"), None);
        assert_eq!(tracked_pattern("# *.csv filter=fcache"), None);
    }
}
