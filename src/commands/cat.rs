//! `cat`: an object's verified content on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};

use super::{Context, stdio};
use crate::cache::Lookup;
use crate::hashing;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::repo::file_holds_marker;

pub fn run(path_or_id: &str) -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let marker = match path_or_id.parse::<ObjectId>() {
        Ok(id) if id == ObjectId::empty() => Marker::new(id, 0),
        Ok(id) => marker_for_id(&ctx, id)?,
        Err(_) => marker_for_path(&ctx, Path::new(path_or_id))?,
    };
    let (_, mut stdout) = stdio()?;
    if marker.size == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let id = marker.id;
    match ctx.store.get(&marker)? {
        Ok(mut v) => {
            hashing::copy(&mut v.file, &mut stdout).context("cannot write to stdout")?;
            ctx.finish()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(u) => bail!("cannot get object {id}: {u}"),
    }
}

/// An identifier with its size: from the cache, else from this repository's
/// index (an archive needs the size to hand an object out).
fn marker_for_id(ctx: &Context, id: ObjectId) -> anyhow::Result<Marker> {
    if let Lookup::Hit { size, .. } = ctx.store.cache.open_verified(&id)? {
        return Ok(Marker::new(id, size));
    }
    match ctx.index.get(&id)? {
        Some(entry) => Ok(Marker::new(id, entry.size)),
        None => bail!(
            "object {id} is not in the cache and this repository's index does not know it; name a tracked path instead"
        ),
    }
}

/// The marker git has for `path`: from git's index, or the file itself if it holds one.
fn marker_for_path(ctx: &Context, path: &Path) -> anyhow::Result<Marker> {
    let workdir = ctx
        .repo
        .workdir()
        .ok_or_else(|| anyhow!("{}: this repository has no work tree", path.display()))?
        .canonicalize()?;
    let absolute = std::env::current_dir()?.join(path);
    let parent = absolute.parent().unwrap_or(&absolute).canonicalize();
    let relative = parent
        .ok()
        .and_then(|p| {
            let name = absolute.file_name()?;
            Some(p.strip_prefix(&workdir).ok()?.join(name))
        })
        .ok_or_else(|| {
            anyhow!(
                "{}: not a path inside this repository and not a 64-digit identifier",
                path.display()
            )
        })?;
    let index = ctx.repo.git().index()?;
    if let Some(entry) = index.get_path(&relative, 0)
        && let Some(m) = ctx.repo.blob_marker(entry.id)?
    {
        return Ok(m);
    }
    if let Some(m) = file_holds_marker(&absolute) {
        return Ok(m);
    }
    bail!(
        "{}: not tracked by fcache (git's copy of it is not a marker)",
        path.display()
    )
}
