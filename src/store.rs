//! The cache and the archive together: how an object is stored, found,
//! fetched again when the cache lost or spoiled it, and sent to the archive.
//! Transfers of many objects go in batches, several at once.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::archive::{self, Archive, ArchiveError, Download};
use crate::cache::{self, Cache, CacheError, GcOptions, GcReport, Lookup};
use crate::config::Config;
use crate::diagnostics::one_line;
use crate::hashing;
use crate::lock::Mode;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::transfer::{self, Progress, ProgressWriter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("object {id} has {actual} bytes but its marker says {expected}")]
    SizeMismatch {
        id: ObjectId,
        expected: u64,
        actual: u64,
    },
    #[error("object {id} is not in the cache; it cannot be sent to archive {archive}")]
    NotCached { id: ObjectId, archive: String },
    #[error(
        "the cached copy of object {id} is corrupt and was moved to {}; it cannot be sent to the archive",
        quarantined.display()
    )]
    CorruptCached { id: ObjectId, quarantined: PathBuf },
    #[error("cannot read input")]
    Input(#[source] io::Error),
}

pub struct Store {
    pub config: Config,
    pub cache: Cache,
    pub archive: Arc<dyn Archive>,
    /// Objects and bytes the cache took in since its limits were last enforced.
    growth: Mutex<(u64, u64)>,
    notices: Mutex<Vec<Notice>>,
}

/// Something the user should hear about that is not an error: the command
/// layer prints these (`Store::take_notices`).
#[derive(Debug)]
pub enum Notice {
    /// A limited cache could not archive a new object, so it cannot evict it
    /// until the archive can be reached.
    NotArchived { id: ObjectId, reason: String },
    /// An object larger than the whole cache limit lives in the archive only.
    TooLargeForCache { id: ObjectId, size: u64, limit: u64 },
    /// Enforcing the limits had to keep objects the limits wanted gone.
    OverLimit { kept: usize, reason: String },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::NotArchived { id, reason } => write!(
                f,
                "object {id} could not be sent to the archive ({reason}); the limited cache keeps it, over its limit if need be, until `fcache gc` can archive it"
            ),
            Notice::TooLargeForCache { id, size, limit } => write!(
                f,
                "object {id} ({size} bytes) is larger than the whole cache limit ({limit} bytes): it is kept in the archive only, and checkouts stream it from there"
            ),
            Notice::OverLimit { kept, reason } => write!(
                f,
                "the cache stays over its limit: {kept} object(s) could not be archived, so they cannot be evicted ({reason}); `fcache gc` retries"
            ),
        }
    }
}

/// An object's content, verified and ready to stream.
pub struct Verified {
    pub file: File,
    pub size: u64,
    /// It had to come from the archive.
    pub downloaded: bool,
}

/// Why an object could not be had.
#[derive(Debug)]
pub struct Unavailable {
    pub id: ObjectId,
    pub reason: ArchiveError,
    /// Where the cache's corrupt copy was moved, if there was one.
    pub quarantined: Option<PathBuf>,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", one_line(&self.reason))?;
        if let Some(q) = &self.quarantined {
            write!(
                f,
                "; the cached copy was corrupt and was moved to {}",
                q.display()
            )?;
        }
        Ok(())
    }
}

/// What `push_many` did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Sent,
    AlreadyThere,
}

impl Store {
    pub fn open(config: Config) -> Result<Self, StoreError> {
        let archive = archive::open(&config.archive, &config)?;
        Ok(Self {
            cache: Cache::new(&config.cache_dir).with_clock(config.clock.clone()),
            archive,
            config,
            growth: Mutex::new((0, 0)),
            notices: Mutex::new(Vec::new()),
        })
    }

    /// The shared cache lock, held by every operation on objects.
    fn shared(&self) -> Result<cache::CacheLock, StoreError> {
        Ok(self.cache.lock(Mode::Shared, self.config.lock_timeout)?)
    }

    fn notice(&self, n: Notice) {
        self.notices.lock().expect("no panic while noting").push(n);
    }

    /// What the user should hear about since the last call.
    pub fn take_notices(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().expect("no panic while noting"))
    }

    /// Stream `input` into the cache; returns its marker. A limited cache
    /// also puts the new object in the archive at once, so that it can be
    /// evicted later; an object larger than the whole limit then leaves the
    /// cache again.
    pub fn add(&self, prefix: &[u8], input: &mut dyn Read) -> Result<Marker, StoreError> {
        self.add_healing(prefix, input, None)
    }

    /// `add`, where the cached copy of `suspect` is known to be damaged: if
    /// the input is that object, its bytes replace the damaged copy.
    pub fn add_healing(
        &self,
        prefix: &[u8],
        input: &mut dyn Read,
        suspect: Option<&ObjectId>,
    ) -> Result<Marker, StoreError> {
        let lock = self.shared()?;
        let mut pending = self.cache.begin_write()?;
        io::Write::write_all(&mut pending, prefix).map_err(StoreError::Input)?;
        hashing::copy(input, &mut pending).map_err(StoreError::Input)?;
        let committed = self.cache.commit_healing(pending, None, suspect)?;
        let m = Marker::new(committed.id, committed.size);
        drop(committed.file);
        let limits = self.config.limits;
        if limits.is_limited() && m.size > 0 {
            match self.archive.put(&m, &self.cache.object_path(&m.id)) {
                Ok(_) if !limits.fits(m.size) => {
                    self.cache.evict(&m.id)?;
                    self.notice(Notice::TooLargeForCache {
                        id: m.id,
                        size: m.size,
                        limit: limits.bytes.unwrap_or_default(),
                    });
                }
                Ok(_) => {}
                Err(e) => self.notice(Notice::NotArchived {
                    id: m.id,
                    reason: one_line(&e),
                }),
            }
        }
        drop(lock);
        self.grew(m.size)?;
        Ok(m)
    }

    /// Count what the cache took in; once it is a fair share of the limits,
    /// enforce them (when no other process holds the cache lock; otherwise
    /// one of them, or `finish`, does it later).
    fn grew(&self, bytes: u64) -> Result<(), StoreError> {
        let limits = self.config.limits;
        if !limits.is_limited() {
            return Ok(());
        }
        let due = {
            let mut g = self.growth.lock().expect("no panic while counting");
            g.0 += 1;
            g.1 += bytes;
            limits.files.is_some_and(|max| g.0 > max / 8)
                || limits.bytes.is_some_and(|max| g.1 > max / 8)
        };
        if due {
            self.enforce_limits(false)?;
        }
        Ok(())
    }

    /// Enforce the limits if the cache took anything in since they last were:
    /// call once at the end of a command.
    pub fn finish(&self) -> Result<(), StoreError> {
        let grown = self.growth.lock().expect("no panic while counting").0 > 0;
        if grown {
            self.enforce_limits(false)?;
        }
        Ok(())
    }

    /// Bring the cache within its limits now: `wait` for the exclusive lock
    /// (gc), or give up at once if another process holds the lock.
    pub fn enforce_limits(&self, wait: bool) -> Result<GcReport, StoreError> {
        self.collect(false, wait)
    }

    /// `fcache gc`: enforce the limits, or with `dry_run` say what would go.
    pub fn collect(&self, dry_run: bool, wait: bool) -> Result<GcReport, StoreError> {
        let report = cache::collect_garbage(
            &self.cache,
            self.archive.as_ref(),
            &self.config.limits,
            &GcOptions {
                dry_run,
                wait: wait.then_some(self.config.lock_timeout),
            },
        )?;
        // Growth is forgotten once a collection has done what it could. One
        // that left the cache over its limits with nothing kept for a reason
        // (objects became candidates while it ran: downloads on other
        // threads) leaves the next chance, `finish` at the latest, to
        // collect again; objects the archive could not take wait for more
        // growth, as before.
        let (count, bytes) = report.after;
        let settled = self.config.limits.within(count, bytes) || !report.kept.is_empty();
        if !report.skipped && !dry_run && settled {
            *self.growth.lock().expect("no panic while counting") = (0, 0);
        }
        if !report.kept.is_empty() && !wait {
            self.notice(Notice::OverLimit {
                kept: report.kept.len(),
                reason: report.kept[0].1.clone(),
            });
        }
        Ok(report)
    }

    /// The object's verified content, from the cache, or from the archive
    /// into the cache when the cache lacks it or holds a corrupt copy.
    /// `Ok(Err(_))` means neither has it (or the archive could not give it).
    pub fn get(&self, marker: &Marker) -> Result<Result<Verified, Unavailable>, StoreError> {
        let lock = self.shared()?;
        let v = match self.cache.open_verified(&marker.id)? {
            Lookup::Hit { file, size } => {
                self.cache.touch(&marker.id);
                Verified {
                    file,
                    size,
                    downloaded: false,
                }
            }
            Lookup::Absent => match self.download(marker)? {
                Ok(v) => v,
                Err(unavailable) => return Ok(Err(unavailable)),
            },
            Lookup::Corrupt { quarantined } => match self.download(marker)? {
                Ok(v) => v,
                Err(unavailable) => {
                    return Ok(Err(Unavailable {
                        quarantined: Some(quarantined),
                        ..unavailable
                    }));
                }
            },
        };
        drop(lock);
        if v.size != marker.size {
            return Err(StoreError::SizeMismatch {
                id: marker.id,
                expected: marker.size,
                actual: v.size,
            });
        }
        if v.downloaded && self.config.limits.fits(v.size) {
            self.grew(v.size)?;
        }
        Ok(Ok(v))
    }

    /// Fetch one object from the archive into the cache, verified on the way.
    /// An object larger than the whole cache limit goes to an unnamed
    /// temporary file instead (verified all the same, gone once closed), so
    /// that it never fills the cache.
    pub fn download(&self, marker: &Marker) -> Result<Result<Verified, Unavailable>, StoreError> {
        let unavailable = |reason| Unavailable {
            id: marker.id,
            reason,
            quarantined: None,
        };
        let download = match self.archive.downloads(std::slice::from_ref(marker)) {
            Ok(mut batch) => match batch.pop().expect("a batch answers every object") {
                Ok(d) => d,
                Err(reason) => return Ok(Err(unavailable(reason))),
            },
            Err(reason) => return Ok(Err(unavailable(reason))),
        };
        let fetched = if self.config.limits.fits(marker.size) {
            self.download_into_cache(marker, download.as_ref(), &transfer::NoProgress)?
        } else {
            self.download_transient(marker, download.as_ref())?
        };
        match fetched {
            Ok(file) => Ok(Ok(Verified {
                file,
                size: marker.size,
                downloaded: true,
            })),
            Err(reason) => Ok(Err(unavailable(reason))),
        }
    }

    fn download_transient(
        &self,
        marker: &Marker,
        download: &dyn Download,
    ) -> Result<Result<File, ArchiveError>, StoreError> {
        let dir = self.cache.tmp_dir();
        let io_err = |source| CacheError::Io {
            path: dir.clone(),
            source,
        };
        fs_err::create_dir_all(&dir).map_err(io_err)?;
        let file = tempfile::tempfile_in(&dir).map_err(io_err)?;
        let mut writer = hashing::HashingWriter::new(file);
        if let Err(reason) = download.read(0..marker.size, &mut writer) {
            return Ok(Err(reason));
        }
        let (actual, len, mut file) = writer.finish();
        if let Err(reason) = self.check_arrival(marker, actual, len) {
            return Ok(Err(reason));
        }
        file.rewind().map_err(io_err)?;
        Ok(Ok(file))
    }

    /// Did what arrived for `marker` have its identifier and size?
    fn check_arrival(
        &self,
        marker: &Marker,
        actual: ObjectId,
        len: u64,
    ) -> Result<(), ArchiveError> {
        if len != marker.size {
            return Err(ArchiveError::WrongSize {
                archive: self.archive.location().to_owned(),
                id: marker.id,
                expected: marker.size,
                actual: len,
            });
        }
        if actual != marker.id {
            return Err(ArchiveError::WrongContent {
                archive: self.archive.location().to_owned(),
                expected: marker.id,
                actual,
            });
        }
        Ok(())
    }

    /// Stream one download into the cache, verifying identifier and size
    /// before the object is put in place; returns it open for reading.
    /// `Ok(Err(_))`: the archive failed or sent the wrong bytes, and nothing
    /// entered the cache.
    fn download_into_cache(
        &self,
        marker: &Marker,
        download: &dyn Download,
        progress: &dyn Progress,
    ) -> Result<Result<File, ArchiveError>, StoreError> {
        let mut pending = self.cache.begin_write()?;
        let read = download.read(
            0..marker.size,
            &mut ProgressWriter::new(&mut pending, progress),
        );
        if let Err(reason) = read {
            return Ok(Err(reason));
        }
        if pending.len() != marker.size {
            return Ok(Err(ArchiveError::WrongSize {
                archive: self.archive.location().to_owned(),
                id: marker.id,
                expected: marker.size,
                actual: pending.len(),
            }));
        }
        match self.cache.commit(pending, Some(&marker.id)) {
            Ok(committed) => Ok(Ok(committed.file)),
            Err(CacheError::WrongContent { expected, actual }) => {
                Ok(Err(ArchiveError::WrongContent {
                    archive: self.archive.location().to_owned(),
                    expected,
                    actual,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Make sure every object in `wanted` is in the cache, downloading those
    /// it lacks in batches, several at once. Returns, in order, what could
    /// not be had; empty objects and objects already cached need nothing.
    pub fn fetch_many(
        &self,
        wanted: &[Marker],
        progress: &dyn Progress,
    ) -> Result<Vec<Unavailable>, StoreError> {
        // An object larger than the whole cache limit is never fetched ahead:
        // `get` streams it from the archive when it is needed.
        let limits = self.config.limits;
        let missing: Vec<Marker> = wanted
            .iter()
            .filter(|m| m.size > 0 && limits.fits(m.size) && !self.cache.contains(&m.id))
            .copied()
            .collect();
        progress.start(missing.len() as u64, missing.iter().map(|m| m.size).sum());
        let mut unavailable = Vec::new();
        let mut ready = Vec::new();
        for chunk in missing.chunks(self.archive.batch_size().max(1)) {
            match self.archive.downloads(chunk) {
                Ok(batch) => {
                    for (m, d) in chunk.iter().zip(batch) {
                        match d {
                            Ok(d) => ready.push((*m, d)),
                            Err(reason) => {
                                progress.object_done();
                                unavailable.push(Unavailable {
                                    id: m.id,
                                    reason,
                                    quarantined: None,
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    for m in chunk {
                        progress.object_done();
                        unavailable.push(Unavailable {
                            id: m.id,
                            reason: repeat(self.archive.location(), &e),
                            quarantined: None,
                        });
                    }
                }
            }
        }
        let results = transfer::parallel_map(ready, self.parallelism(), |(m, d)| {
            let r = self.shared().and_then(|lock| {
                let r = self.download_into_cache(&m, d.as_ref(), progress);
                drop(lock);
                if let Ok(Ok(_)) = &r {
                    self.grew(m.size)?;
                }
                r
            });
            progress.object_done();
            (m, r)
        });
        for (m, r) in results {
            // One object's trouble on this side (a lock that timed out, a
            // full disk) is that object's, not the whole batch's.
            let reason = match r {
                Ok(Ok(_)) => continue,
                Ok(Err(reason)) => reason,
                Err(e) => ArchiveError::Remote {
                    archive: self.archive.location().to_owned(),
                    message: format!(
                        "could not put object {} in the cache: {}",
                        m.id,
                        one_line(&e)
                    ),
                    source: None,
                },
            };
            unavailable.push(Unavailable {
                id: m.id,
                reason,
                quarantined: None,
            });
        }
        progress.finish();
        Ok(unavailable)
    }

    /// Send to the archive every object of `objects` it lacks, in batches,
    /// several at once. Results are per object, in order; empty objects are
    /// never sent (they need no content).
    pub fn push_many(
        &self,
        objects: &[Marker],
        progress: &dyn Progress,
    ) -> Result<Vec<Result<Pushed, StoreError>>, StoreError> {
        // Held throughout, so that no gc evicts an object between the
        // archive saying it lacks it and the upload reading it.
        let _lock = self.shared()?;
        let mut results: Vec<Option<Result<Pushed, StoreError>>> =
            objects.iter().map(|_| None).collect();
        let nonempty: Vec<(usize, (Marker, PathBuf))> = objects
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, m)| {
                let empty = m.size == 0;
                if empty {
                    results[*i] = Some(Ok(Pushed::AlreadyThere));
                }
                !empty
            })
            .map(|(i, m)| (i, (m, self.cache.object_path(&m.id))))
            .collect();
        let (indices, sources): (Vec<usize>, Vec<(Marker, PathBuf)>) = nonempty.into_iter().unzip();
        let sent = self
            .archive
            .put_many(&sources, self.parallelism(), progress)?;
        let mut any_sent = false;
        for ((i, (m, _)), r) in indices.into_iter().zip(&sources).zip(sent) {
            any_sent |= matches!(r, Ok(true));
            results[i] = Some(self.pushed(m, r));
        }
        // Durable before the push goes on to update refs that name them.
        if any_sent {
            self.archive.flush()?;
        }
        progress.finish();
        Ok(results
            .into_iter()
            .map(|r| r.expect("every object has a result"))
            .collect())
    }

    /// How many transfers to run at once: the user's setting, else the archive's.
    pub fn parallelism(&self) -> usize {
        self.config
            .concurrent_transfers
            .unwrap_or_else(|| self.archive.parallelism())
    }

    /// What became of one cached object sent to the archive.
    fn pushed(&self, m: &Marker, sent: Result<bool, ArchiveError>) -> Result<Pushed, StoreError> {
        match sent {
            Ok(true) => Ok(Pushed::Sent),
            Ok(false) => Ok(Pushed::AlreadyThere),
            // The archive verifies what it receives, so a cache copy that
            // rotted is refused there rather than archived; it is then moved
            // out of the way like any corrupt object.
            Err(ArchiveError::WrongContent { .. } | ArchiveError::WrongSize { .. }) => {
                let quarantined = self.cache.quarantine(&m.id)?;
                Err(StoreError::CorruptCached {
                    id: m.id,
                    quarantined,
                })
            }
            // The archive lacks it and so does the cache.
            Err(_) if !self.cache.contains(&m.id) => Err(StoreError::NotCached {
                id: m.id,
                archive: self.archive.location().to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The same failure, for each object of a batch that failed as a whole.
fn repeat(archive: &str, e: &ArchiveError) -> ArchiveError {
    let message = one_line(e);
    let prefix = format!("archive {archive}: ");
    ArchiveError::Remote {
        archive: archive.to_owned(),
        message: message.strip_prefix(&prefix).unwrap_or(&message).to_owned(),
        source: None,
    }
}
