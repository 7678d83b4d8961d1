//! `checkout`: replace work-tree files that hold a marker with their content.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, bail};

use super::Context;
use super::smudge::missing_warning;
use crate::filter::statcache::{Stat, StatCache};
use crate::hashing::{self, HashingWriter};
use crate::marker::Marker;
use crate::repo::file_holds_marker;
use crate::store::{Store, Unavailable};
use crate::transfer;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let Some(workdir) = ctx.repo.workdir().map(Path::to_owned) else {
        bail!("this repository has no work tree");
    };
    let now = ctx.store.config.clock.current_time();
    // Only a file that still holds exactly git's marker is replaced: never a
    // file the user changed.
    let wanted: Vec<(PathBuf, Marker, u32)> = ctx
        .repo
        .index_markers()?
        .into_iter()
        .filter(|(path, m, _)| file_holds_marker(&workdir.join(path)) == Some(*m))
        .collect();
    // Several files at once: most of the cost of small files is the file
    // system's, and a large one is hashed on a thread of its own anyway.
    let store = &ctx.store;
    let results = transfer::parallel_map(wanted, RESTORERS, |(path, m, mode)| {
        let restored = restore(store, &workdir.join(&path), &m, mode);
        (path, m, restored)
    });
    let mut restored = Vec::new();
    let mut missing = 0usize;
    let mut stat_cache = StatCache::open(&ctx.repo.stat_cache_dir());
    for (path, m, result) in results {
        ctx.index.touch(m.id, m.size, now);
        if let Err(u) = result? {
            missing += 1;
            eprintln!("{}", missing_warning(&path.display().to_string(), &u));
            continue;
        }
        // git re-cleans the file below: it then compares with the object
        // instead of hashing it again.
        if let Some(stat) = Stat::of(&workdir.join(&path)) {
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

/// Files restored at once.
const RESTORERS: usize = 4;

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

/// Write the object's content next to `file`, then rename it over the
/// marker. The cached copy is checked against the identifier as it is
/// copied (one read, not a check and then a copy), and renamed into view
/// only if it matches; a damaged or absent one is got as smudge gets it,
/// verified, from the archive.
fn restore(
    store: &Store,
    file: &Path,
    m: &Marker,
    mode: u32,
) -> anyhow::Result<Result<(), Unavailable>> {
    let dir = file.parent().expect("a work-tree file has a parent");
    let mut tmp = tempfile::Builder::new()
        .prefix(".fcache-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let cannot_write = || format!("cannot write {} (object {})", file.display(), m.id);
    let copied_from_cache =
        m.size == 0 || copy_if_intact(store, m, tmp.as_file_mut()).with_context(cannot_write)?;
    if !copied_from_cache {
        match store.get(m)? {
            Ok(mut v) => {
                let out = tmp.as_file_mut();
                out.set_len(0).with_context(cannot_write)?;
                out.rewind().with_context(cannot_write)?;
                hashing::copy(&mut v.file, out).with_context(cannot_write)?;
            }
            Err(u) => return Ok(Err(u)),
        }
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
    Ok(Ok(()))
}

/// Copy the cached object into `out`, hashing it on the way: whether it was
/// there and matched its identifier (if not, `out` holds bytes to discard).
fn copy_if_intact(store: &Store, m: &Marker, out: &mut std::fs::File) -> std::io::Result<bool> {
    let Some(mut cached) = store.cache.open_sized(m) else {
        return Ok(false);
    };
    let mut out = HashingWriter::new(out);
    hashing::copy(&mut cached, &mut out)?;
    let (id, _, _) = out.finish();
    if id == m.id {
        store.cache.touch_open(&cached);
    }
    Ok(id == m.id)
}
