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
    for u in &unavailable {
        let path = wanted
            .iter()
            .find_map(|(m, p)| (m.id == u.id).then_some(p.as_str()))
            .unwrap_or("?");
        eprintln!("fcache: error: {path}: cannot fetch object {}: {u}", u.id);
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
