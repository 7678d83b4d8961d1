//! `gc`: bring the cache within its limits, least recently used first.

use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::clock;
use crate::config::Config;
use crate::repo::{Repo, RepoError};
use crate::store::Store;

pub fn run(dry_run: bool) -> anyhow::Result<ExitCode> {
    // The cache is shared by every repository: gc works outside one too,
    // with the user's global settings.
    let git_config = match Repo::discover() {
        Ok(repo) => repo.config()?,
        Err(RepoError::NotARepository) => git2::Config::open_default()?,
        Err(e) => return Err(e.into()),
    };
    let store = Store::open(Config::load(Some(&git_config))?)?;
    let limits = store.config.limits;
    let report = store.collect(dry_run, true)?;
    let verb = if dry_run { "would evict" } else { "evicted" };
    for o in &report.evicted {
        let used: DateTime<Utc> = o.last_used.into();
        println!(
            "{verb} {}  {:>12} bytes  last used {}",
            o.id,
            o.size,
            clock::format(&used)
        );
    }
    for id in &report.archived {
        let verb = if dry_run {
            "would first send to the archive"
        } else {
            "sent to the archive"
        };
        eprintln!("fcache: {verb} {id}");
    }
    for (id, path) in &report.quarantined {
        eprintln!(
            "fcache: warning: cached object {id} is corrupt (the archive refused it); moved to {}",
            path.display()
        );
    }
    for (id, why) in &report.kept {
        eprintln!("fcache: warning: kept {id} over the limit: {why}");
    }
    let (objects, bytes) = report.after;
    let limit = |l: Option<u64>| l.map_or_else(|| "unlimited".to_owned(), |l| l.to_string());
    eprintln!(
        "fcache: cache {}: {} of {} object(s) {verb}; {objects} object(s) (limit {}), {bytes} bytes (limit {}){}",
        store.cache.root().display(),
        report.evicted.len(),
        report.before.0,
        limit(limits.files),
        limit(limits.bytes),
        if report.swept > 0 {
            format!("; removed {} stale temporary file(s)", report.swept)
        } else {
            String::new()
        }
    );
    if !report.kept.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
