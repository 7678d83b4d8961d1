//! `fetch`: download what HEAD's markers need into the cache.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::Context;

pub fn run() -> anyhow::Result<ExitCode> {
    let ctx = Context::open()?;
    let mut wanted = BTreeMap::new();
    for (path, m) in ctx.repo.head_markers()? {
        wanted.entry(m).or_insert(path);
    }
    let (mut downloaded, mut failed) = (0usize, 0usize);
    for (m, path) in &wanted {
        if m.size == 0 || ctx.store.cache.contains(&m.id) {
            continue;
        }
        match ctx.store.download(&m.id)? {
            Ok(_) => downloaded += 1,
            Err(u) => {
                failed += 1;
                eprintln!(
                    "fcache: error: {path}: cannot fetch object {}: {}",
                    m.id, u.reason
                );
            }
        }
    }
    eprintln!(
        "fcache: fetched {downloaded} object(s) from {}; {} already cached",
        ctx.store.archive.location(),
        wanted.len() - downloaded - failed
    );
    if failed > 0 {
        eprintln!("fcache: error: {failed} object(s) could not be fetched");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
