//! `checkout`: replace work-tree files that hold a marker with their content.

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

use super::Context;
use super::smudge::missing_warning;
use crate::filter::statcache::{Stat, StatCache};
use crate::hashing;
use crate::marker::Marker;
use crate::repo::file_holds_marker;
use crate::store::Verified;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let Some(workdir) = ctx.repo.workdir().map(Path::to_owned) else {
        bail!("this repository has no work tree");
    };
    let now = ctx.store.config.clock.current_time();
    let mut restored = Vec::new();
    let mut missing = 0usize;
    let mut stat_cache = StatCache::open(&ctx.repo.stat_cache_dir());
    for (path, m, mode) in ctx.repo.index_markers()? {
        let file = workdir.join(&path);
        // Only a file that still holds exactly git's marker is replaced: never
        // a file the user changed.
        if file_holds_marker(&file) != Some(m) {
            continue;
        }
        ctx.index.touch(m.id, m.size, now);
        let content = if m.size == 0 {
            None
        } else {
            match ctx.store.get(&m)? {
                Ok(v) => Some(v),
                Err(u) => {
                    missing += 1;
                    eprintln!("{}", missing_warning(&path.display().to_string(), &u));
                    continue;
                }
            }
        };
        replace(&file, &m, content, mode)?;
        // git re-cleans the file below: it then compares with the object
        // instead of hashing it again.
        if let Some(stat) = Stat::of(&file) {
            stat_cache.record(path.as_os_str().as_encoded_bytes(), stat, m.id);
        }
        restored.push(path);
    }
    ctx.finish()?;
    stat_cache.save(Some(&workdir))?;
    update_git_index(&workdir, &restored)?;
    eprintln!("fcache: checked out {} file(s)", restored.len());
    if missing > 0 {
        if ctx.store.config.strict {
            bail!("{missing} file(s) could not be checked out and fcache.strict is set");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The files changed size under git's index, and git takes a changed size as
/// changed content without looking. Re-adding them (clean gives the same
/// marker, so the staged content is unchanged) records their new stat data,
/// so that `git status` stays clean.
fn update_git_index(workdir: &Path, paths: &[std::path::PathBuf]) -> anyhow::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("git")
        .args(["update-index", "-q", "-z", "--stdin"])
        .current_dir(workdir)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run `git update-index`")?;
    {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        for p in paths {
            stdin.write_all(p.as_os_str().as_encoded_bytes())?;
            stdin.write_all(b"\0")?;
        }
    }
    let status = child.wait().context("cannot run `git update-index`")?;
    if !status.success() {
        bail!("`git update-index` failed in {}", workdir.display());
    }
    Ok(())
}

/// Write the content next to `file`, then rename it over the marker.
fn replace(file: &Path, m: &Marker, content: Option<Verified>, mode: u32) -> anyhow::Result<()> {
    let dir = file.parent().expect("a work-tree file has a parent");
    let mut tmp = tempfile::Builder::new()
        .prefix(".fcache-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    if let Some(mut v) = content {
        hashing::copy(&mut v.file, tmp.as_file_mut())
            .with_context(|| format!("cannot write {} (object {})", file.display(), m.id))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perms = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(perms))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.persist(file)
        .with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}
