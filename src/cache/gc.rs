//! Keeping a limited cache within its limits.
//!
//! The rule that matters: an object leaves the cache only when the archive
//! holds it, as the archive itself says (asked, never assumed from a log).
//! An object the archive lacks is sent there first; if that fails (the
//! archive cannot be reached), the object stays and the cache stays over its
//! limit until it can.
//!
//! Two phases, so that slow archive traffic never happens under the
//! exclusive lock: first, holding nothing, pick the least recently used
//! objects that must go and make sure the archive has each; then, under the
//! exclusive lock, list the cache again and evict, in the fresh order, only
//! objects the first phase saw archived. "The archive holds it" stays true
//! once true (archives never delete), so what phase one learnt still holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::{Cache, CacheError, CacheLock, CachedObject, Limits};
use crate::archive::{Archive, ArchiveError};
use crate::diagnostics::one_line;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::transfer::NoProgress;

/// Temporary files older than this were left by killed processes.
pub const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub struct GcReport {
    /// Objects and bytes before.
    pub before: (u64, u64),
    /// Objects and bytes after.
    pub after: (u64, u64),
    /// Evicted (or, in a dry run, to be evicted), least recently used first.
    pub evicted: Vec<CachedObject>,
    /// Sent to the archive so that they could be evicted (in a dry run: to be sent).
    pub archived: Vec<ObjectId>,
    /// Cached copies found corrupt when sent to the archive, and where they went.
    pub quarantined: Vec<(ObjectId, std::path::PathBuf)>,
    /// Objects that had to stay although the limits wanted them gone, and why.
    pub kept: Vec<(ObjectId, String)>,
    /// Stale temporary files removed.
    pub swept: usize,
    /// Another process held the cache lock, and this was a try, not a wait.
    pub skipped: bool,
}

pub struct Options {
    pub dry_run: bool,
    /// Wait this long for the exclusive lock; `None`: give up at once if busy.
    pub wait: Option<Duration>,
}

fn totals(objects: &[CachedObject]) -> (u64, u64) {
    (objects.len() as u64, objects.iter().map(|o| o.size).sum())
}

/// Bring the cache within `limits`.
pub fn collect(
    cache: &Cache,
    archive: &dyn Archive,
    limits: &Limits,
    options: &Options,
) -> Result<GcReport, CacheError> {
    let mut report = GcReport::default();
    let listed = cache.objects()?;
    report.before = totals(&listed);
    report.after = report.before;

    // Phase one: which objects must go, and does the archive hold each?
    let wanted_gone = limits.eviction_order(&listed);
    let mut archived = BTreeSet::new();
    let mut why_kept: BTreeMap<ObjectId, String> = BTreeMap::new();
    for chunk in wanted_gone.chunks(archive.batch_size().max(1)) {
        let markers: Vec<Marker> = chunk.iter().map(|o| Marker::new(o.id, o.size)).collect();
        let held = match archive.contains_many(&markers) {
            Ok(held) => held,
            Err(e) => {
                let reason = one_line(&e);
                for o in chunk {
                    why_kept.insert(o.id, reason.clone());
                }
                continue;
            }
        };
        let mut missing = Vec::new();
        for (m, held) in markers.iter().zip(held) {
            if held {
                archived.insert(m.id);
            } else if options.dry_run {
                report.archived.push(m.id);
                archived.insert(m.id);
            } else {
                missing.push(*m);
            }
        }
        if missing.is_empty() {
            continue;
        }
        // Send what the archive lacks, the whole batch made durable at once
        // before anything counts as archived.
        let sources: Vec<(Marker, PathBuf)> = missing
            .iter()
            .map(|m| (*m, cache.object_path(&m.id)))
            .collect();
        let results = match archive.put_many(&sources, archive.parallelism(), &NoProgress) {
            Ok(results) => results,
            Err(e) => {
                let reason = one_line(&e);
                for m in &missing {
                    why_kept.insert(m.id, reason.clone());
                }
                continue;
            }
        };
        let mut sent = Vec::new();
        for (m, result) in missing.iter().zip(results) {
            match result {
                // Sent, or stored meanwhile by someone else.
                Ok(_) => sent.push(m.id),
                // Gone meanwhile: another gc evicted it, so the archive has it.
                Err(_) if !cache.contains(&m.id) => {}
                // The archive verifies what it receives: this copy rotted.
                Err(ArchiveError::WrongContent { .. } | ArchiveError::WrongSize { .. }) => {
                    report.quarantined.push((m.id, cache.quarantine(&m.id)?));
                }
                Err(e) => {
                    why_kept.insert(m.id, one_line(&e));
                }
            }
        }
        match archive.flush() {
            Ok(()) => {
                archived.extend(sent.iter().copied());
                report.archived.extend(sent);
            }
            Err(e) => {
                let reason = one_line(&e);
                for id in sent {
                    why_kept.insert(id, reason.clone());
                }
            }
        }
    }

    // Phase two: evict under the exclusive lock.
    let _lock: Option<CacheLock> = if options.dry_run {
        None
    } else {
        match options.wait {
            Some(timeout) => Some(cache.lock(crate::lock::Mode::Exclusive, timeout)?),
            None => match cache.try_lock_exclusive()? {
                Some(lock) => Some(lock),
                None => {
                    report.skipped = true;
                    return Ok(report);
                }
            },
        }
    };
    let listed = if options.dry_run {
        listed
    } else {
        cache.objects()?
    };
    let (mut count, mut bytes) = totals(&listed);
    let mut by_age = listed;
    by_age.sort_by_key(|o| (o.last_used, o.id));
    for o in by_age {
        if limits.within(count, bytes) {
            break;
        }
        if !archived.contains(&o.id) {
            // A candidate the archive could not take stays; an object that
            // only became a candidate while gc ran goes next time.
            if let Some(reason) = why_kept.remove(&o.id) {
                report.kept.push((o.id, reason));
            }
            continue;
        }
        if !options.dry_run {
            cache.evict(&o.id)?;
        }
        count -= 1;
        bytes -= o.size;
        report.evicted.push(o);
    }
    report.after = (count, bytes);
    if !options.dry_run {
        report.swept = cache.sweep_temp(STALE_TEMP)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::archive::DirArchive;
    use crate::clock::{self, Clock};

    fn at(s: &str) -> Clock {
        Clock::Fixed(clock::parse(s).unwrap())
    }

    fn add(cache: &Cache, bytes: &[u8]) -> ObjectId {
        let mut p = cache.begin_write().unwrap();
        p.write_all(bytes).unwrap();
        cache.commit(p, None).unwrap().id
    }

    #[test]
    fn evicts_lru_only_after_the_archive_has_each_object() {
        let dir = tempfile::tempdir().unwrap();
        let base = Cache::new(dir.path().join("cache"));
        let archive = DirArchive::new("test archive", dir.path().join("archive"));
        let ids: Vec<ObjectId> = (0..5u8)
            .map(|i| {
                let c = base
                    .clone()
                    .with_clock(at(&format!("2026-01-0{}T00:00:00Z", i + 1)));
                add(&c, &[i; 10])
            })
            .collect();
        // Object 0 is used again last: it is the most recent now.
        base.clone()
            .with_clock(at("2026-01-09T00:00:00Z"))
            .touch(&ids[0]);
        let limits = Limits {
            bytes: Some(25),
            files: None,
        };
        let options = Options {
            dry_run: false,
            wait: Some(Duration::from_secs(5)),
        };
        let report = collect(&base, &archive, &limits, &options).unwrap();
        let gone: Vec<ObjectId> = report.evicted.iter().map(|o| o.id).collect();
        assert_eq!(gone, vec![ids[1], ids[2], ids[3]]);
        assert_eq!(report.after, (2, 20));
        // Each was archived before it went, and is whole there.
        for id in &gone {
            let mut out = Vec::new();
            (&archive as &dyn Archive)
                .get(&Marker::new(*id, 10), &mut out)
                .unwrap();
            assert_eq!(crate::oid::ObjectId::of_bytes(&out), *id);
        }
        let left: Vec<ObjectId> = base.objects().unwrap().iter().map(|o| o.id).collect();
        assert_eq!(left.len(), 2);
        assert!(left.contains(&ids[0]) && left.contains(&ids[4]));
    }

    #[test]
    fn keeps_objects_over_the_limit_when_the_archive_cannot_take_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        // An "archive" whose directory cannot be created: a file is in the way.
        fs_err::write(dir.path().join("blocked"), b"").unwrap();
        let archive = DirArchive::new("blocked archive", dir.path().join("blocked/archive"));
        for i in 0..3u8 {
            add(&cache, &[i; 4]);
        }
        let limits = Limits {
            bytes: None,
            files: Some(1),
        };
        let report = collect(
            &cache,
            &archive,
            &limits,
            &Options {
                dry_run: false,
                wait: None,
            },
        )
        .unwrap();
        assert!(report.evicted.is_empty());
        assert_eq!(report.kept.len(), 2);
        assert!(
            report.kept[0].1.contains("blocked archive"),
            "{:?}",
            report.kept
        );
        assert_eq!(cache.objects().unwrap().len(), 3);
    }

    #[test]
    fn dry_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let archive = DirArchive::new("a", dir.path().join("archive"));
        for i in 0..4u8 {
            add(&cache, &[i; 4]);
        }
        let limits = Limits {
            bytes: None,
            files: Some(2),
        };
        let report = collect(
            &cache,
            &archive,
            &limits,
            &Options {
                dry_run: true,
                wait: None,
            },
        )
        .unwrap();
        assert_eq!(report.evicted.len(), 2);
        assert_eq!(report.archived.len(), 2);
        assert_eq!(cache.objects().unwrap().len(), 4);
        assert!(!dir.path().join("archive/objects").exists());
    }
}
