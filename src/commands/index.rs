//! `index convert` and `index rebuild`: the repository's index itself.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};

use crate::cache::Cache;
use crate::config::Config;
use crate::index::{self, Entry, Format};
use crate::oid::ObjectId;
use crate::repo::Repo;

/// Move every entry into `to`'s file and make `to` this repository's format.
pub fn convert(to: Format) -> anyhow::Result<ExitCode> {
    let repo = Repo::discover()?;
    let config = Config::load(Some(&repo.config()?))?;
    let dir = repo.fcache_dir();
    // The entries move first: interrupted before the config changes, the
    // next command simply carries them back, losing nothing.
    let moved = index::carry_over(&dir, to)?;
    let index = index::open(&dir, to)?;
    let count = index.entries()?.len();
    if config.index_format != to {
        let status = Command::new("git")
            .args(["config", "--local", "fcache.index", to.name()])
            .status()
            .context("cannot run `git config`")?;
        if !status.success() {
            bail!(
                "`git config --local fcache.index {to}` failed; the index is now {} (set fcache.index = {to} by hand)",
                index.path().display()
            );
        }
    }
    let from: Vec<String> = moved.iter().map(|p| p.display().to_string()).collect();
    if from.is_empty() {
        println!(
            "Index {}: {count} entries, already {to}",
            index.path().display()
        );
    } else {
        println!(
            "Index {}: {count} entries, converted from {}",
            index.path().display(),
            from.join(" and ")
        );
    }
    if config.index_format != to {
        println!("Set fcache.index = {to} in this repository's git config");
    }
    Ok(ExitCode::SUCCESS)
}

/// Recover the index from what the repository references (every commit
/// reachable from a ref or HEAD, and git's index) and the cache. Entries the
/// index still has keep their timestamps; an unreadable index file is set
/// aside, not deleted.
pub fn rebuild() -> anyhow::Result<ExitCode> {
    let repo = Repo::discover()?;
    let config = Config::load(Some(&repo.config()?))?;
    let now = config.clock.current_time();
    let dir = repo.fcache_dir();
    for aside in index::set_aside_unreadable(&dir, now)? {
        eprintln!(
            "fcache: index {} could not be read; moved it to {}",
            aside.from.display(),
            aside.to.display()
        );
    }
    let mut index = index::open(&dir, config.index_format)?;

    let mut referenced: BTreeMap<ObjectId, u64> = BTreeMap::new();
    let mut tips = repo.all_ref_tips()?;
    if let Ok(head) = repo.resolve_commit("HEAD") {
        tips.push(head);
    }
    for m in repo.markers_in_commits(&tips, &[])?.into_keys() {
        referenced.insert(m.id, m.size);
    }
    if repo.workdir().is_some() {
        for (_, m, _) in repo.index_markers()? {
            referenced.insert(m.id, m.size);
        }
    }

    let cache = Cache::new(&config.cache_dir);
    let mut recovered = 0usize;
    for (id, size) in referenced {
        if index.contains(&id)? {
            continue;
        }
        // When the cache has the object, its file tells when it arrived on
        // this machine (created) and when it was last used (modified).
        let (added, last_used) = cache.times(&id).unwrap_or((now, now));
        index.add(Entry {
            id,
            size,
            added,
            last_used: last_used.max(added),
        });
        recovered += 1;
    }
    index.save()?;
    println!(
        "Index {}: {} entries, {recovered} recovered from the repository",
        index.path().display(),
        index.entries()?.len()
    );
    Ok(ExitCode::SUCCESS)
}
