//! The cache and the archive together: how an object is stored, found,
//! fetched again when the cache lost or spoiled it, and sent to the archive.
//! Transfers of many objects go in batches, several at once.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::{self, Archive, ArchiveError, Download};
use crate::cache::{Cache, CacheError, Lookup};
use crate::config::Config;
use crate::hashing;
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
        write!(f, "{}", self.reason)?;
        let mut source = std::error::Error::source(&self.reason);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
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
        let archive = archive::open(&config.archive)?;
        Ok(Self {
            cache: Cache::new(&config.cache_dir),
            archive,
            config,
        })
    }

    /// Stream `input` into the cache; returns its marker.
    pub fn add(&self, prefix: &[u8], input: &mut dyn Read) -> Result<Marker, StoreError> {
        let mut pending = self.cache.begin_write()?;
        io::Write::write_all(&mut pending, prefix).map_err(StoreError::Input)?;
        hashing::copy(input, &mut pending).map_err(StoreError::Input)?;
        let (id, size) = self.cache.commit(pending, None)?;
        Ok(Marker::new(id, size))
    }

    /// The object's verified content, from the cache, or from the archive
    /// into the cache when the cache lacks it or holds a corrupt copy.
    /// `Ok(Err(_))` means neither has it (or the archive could not give it).
    pub fn get(&self, marker: &Marker) -> Result<Result<Verified, Unavailable>, StoreError> {
        let v = match self.cache.open_verified(&marker.id)? {
            Lookup::Hit { file, size } => Verified {
                file,
                size,
                downloaded: false,
            },
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
        if v.size != marker.size {
            return Err(StoreError::SizeMismatch {
                id: marker.id,
                expected: marker.size,
                actual: v.size,
            });
        }
        Ok(Ok(v))
    }

    /// Fetch one object from the archive into the cache, verified on the way.
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
        if let Err(reason) =
            self.download_into_cache(marker, download.as_ref(), &transfer::NoProgress)?
        {
            return Ok(Err(unavailable(reason)));
        }
        let path = self.cache.object_path(&marker.id);
        let file = fs_err::File::open(&path)
            .map_err(|source| CacheError::Io { path, source })?
            .into_parts()
            .0;
        Ok(Ok(Verified {
            file,
            size: marker.size,
            downloaded: true,
        }))
    }

    /// Stream one download into the cache, verifying identifier and size
    /// before the object is put in place. `Ok(Err(_))`: the archive failed or
    /// sent the wrong bytes, and nothing entered the cache.
    fn download_into_cache(
        &self,
        marker: &Marker,
        download: &dyn Download,
        progress: &dyn Progress,
    ) -> Result<Result<(), ArchiveError>, StoreError> {
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
            Ok(_) => Ok(Ok(())),
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
        let missing: Vec<Marker> = wanted
            .iter()
            .filter(|m| m.size > 0 && !self.cache.contains(&m.id))
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
            let r = self.download_into_cache(&m, d.as_ref(), progress);
            progress.object_done();
            (m, r)
        });
        for (m, r) in results {
            if let Err(reason) = r? {
                unavailable.push(Unavailable {
                    id: m.id,
                    reason,
                    quarantined: None,
                });
            }
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
        let mut results: Vec<Option<Result<Pushed, StoreError>>> =
            objects.iter().map(|_| None).collect();
        let mut todo = Vec::new();
        let nonempty: Vec<(usize, Marker)> = objects
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
            .collect();
        for chunk in nonempty.chunks(self.archive.batch_size().max(1)) {
            let markers: Vec<Marker> = chunk.iter().map(|(_, m)| *m).collect();
            let batch = self.archive.uploads(&markers)?;
            for ((i, m), upload) in chunk.iter().zip(batch) {
                match upload {
                    Ok(None) => results[*i] = Some(Ok(Pushed::AlreadyThere)),
                    Ok(Some(u)) if self.cache.contains(&m.id) => todo.push((*i, *m, u)),
                    Ok(Some(_)) => {
                        results[*i] = Some(Err(StoreError::NotCached {
                            id: m.id,
                            archive: self.archive.location().to_owned(),
                        }))
                    }
                    Err(e) => results[*i] = Some(Err(e.into())),
                }
            }
        }
        progress.start(todo.len() as u64, todo.iter().map(|(_, m, _)| m.size).sum());
        let sent = transfer::parallel_map(todo, self.parallelism(), |(i, m, upload)| {
            let r = self.send(&m, upload.as_ref());
            progress.bytes(m.size);
            progress.object_done();
            (i, r)
        });
        let any_sent = sent.iter().any(|(_, r)| r.is_ok());
        for (i, r) in sent {
            results[i] = Some(r.map(|()| Pushed::Sent));
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

    /// Send one cached object through its upload handle.
    fn send(&self, m: &Marker, upload: &dyn archive::Upload) -> Result<(), StoreError> {
        // The archive verifies what it receives against the identifier, so a
        // cache copy that rotted is refused there rather than archived; it is
        // then moved out of the way like any corrupt object.
        match upload.send(&self.cache.object_path(&m.id)) {
            Ok(()) => Ok(()),
            Err(ArchiveError::WrongContent { .. } | ArchiveError::WrongSize { .. }) => {
                let quarantined = self.cache.quarantine(&m.id)?;
                Err(StoreError::CorruptCached {
                    id: m.id,
                    quarantined,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The same failure, for each object of a batch that failed as a whole.
fn repeat(archive: &str, e: &ArchiveError) -> ArchiveError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let prefix = format!("archive {archive}: ");
    ArchiveError::Remote {
        archive: archive.to_owned(),
        message: message.strip_prefix(&prefix).unwrap_or(&message).to_owned(),
        source: None,
    }
}
