//! `fetch`: download what HEAD's markers need into the cache.

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::Context;
use super::progress::Bar;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let mut wanted = BTreeMap::new();
    for (path, m) in ctx.repo.head_markers()? {
        wanted.entry(m).or_insert(path);
    }
    let markers: Vec<_> = wanted.keys().copied().collect();
    let before = markers
        .iter()
        .filter(|m| m.size == 0 || ctx.store.cache.contains(&m.id))
        .count();
    let limits = ctx.store.config.limits;
    let too_large = markers
        .iter()
        .filter(|m| !limits.fits(m.size) && !ctx.store.cache.contains(&m.id))
        .count();
    let unavailable = ctx
        .store
        .fetch_many(&markers, &Bar::new(&ctx.store.config, "fetching"))?;
    ctx.finish()?;
    // One line per object; when the archive failed as a whole, every line
    // would say the same, so a few name their files and the count says the rest.
    const SHOWN: usize = 10;
    let paths: std::collections::HashMap<_, _> =
        wanted.iter().map(|(m, p)| (m.id, p.as_str())).collect();
    for u in unavailable.iter().take(SHOWN) {
        let path = paths.get(&u.id).copied().unwrap_or("?");
        eprintln!("fcache: error: {path}: cannot fetch object {}: {u}", u.id);
    }
    if unavailable.len() > SHOWN {
        eprintln!(
            "fcache: error: ... and {} more object(s) that could not be fetched",
            unavailable.len() - SHOWN
        );
    }
    let fetched = markers.len() - before - too_large - unavailable.len();
    eprintln!(
        "fcache: fetched {fetched} object(s) from {}; {before} already cached",
        ctx.store.archive.location(),
    );
    if too_large > 0 {
        eprintln!(
            "fcache: {too_large} object(s) larger than the whole cache limit stay in the archive; checkouts stream them from there"
        );
    }
    if !unavailable.is_empty() {
        eprintln!(
            "fcache: error: {} object(s) could not be fetched",
            unavailable.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
