//! The cache and the archive together: how an object is stored, found,
//! fetched again when the cache lost or spoiled it, and sent to the archive.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::{self, Archive, ArchiveError};
use crate::cache::{Cache, CacheError, Lookup};
use crate::config::Config;
use crate::hashing;
use crate::marker::Marker;
use crate::oid::ObjectId;

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
        self.get_checked(&marker.id, Some(marker.size))
    }

    /// As `get`, checking the size only when one is expected.
    pub fn get_checked(
        &self,
        id: &ObjectId,
        expected_size: Option<u64>,
    ) -> Result<Result<Verified, Unavailable>, StoreError> {
        let v = match self.cache.open_verified(id)? {
            Lookup::Hit { file, size } => Verified {
                file,
                size,
                downloaded: false,
            },
            Lookup::Absent => match self.download(id)? {
                Ok(v) => v,
                Err(unavailable) => return Ok(Err(unavailable)),
            },
            Lookup::Corrupt { quarantined } => match self.download(id)? {
                Ok(v) => v,
                Err(unavailable) => {
                    return Ok(Err(Unavailable {
                        quarantined: Some(quarantined),
                        ..unavailable
                    }));
                }
            },
        };
        if let Some(expected) = expected_size
            && v.size != expected
        {
            return Err(StoreError::SizeMismatch {
                id: *id,
                expected,
                actual: v.size,
            });
        }
        Ok(Ok(v))
    }

    /// Fetch an object from the archive into the cache, verified on the way.
    pub fn download(&self, id: &ObjectId) -> Result<Result<Verified, Unavailable>, StoreError> {
        let mut pending = self.cache.begin_write()?;
        if let Err(reason) = self.archive.get(id, &mut pending) {
            return Ok(Err(Unavailable {
                id: *id,
                reason,
                quarantined: None,
            }));
        }
        let (_, size) = match self.cache.commit(pending, Some(id)) {
            Ok(done) => done,
            Err(CacheError::WrongContent { expected, actual }) => {
                return Ok(Err(Unavailable {
                    id: *id,
                    reason: ArchiveError::WrongContent {
                        archive: self.archive.location().to_owned(),
                        expected,
                        actual,
                    },
                    quarantined: None,
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let path = self.cache.object_path(id);
        let file = fs_err::File::open(&path)
            .map_err(|source| CacheError::Io { path, source })?
            .into_parts()
            .0;
        Ok(Ok(Verified {
            file,
            size,
            downloaded: true,
        }))
    }

    /// Send an object from the cache to the archive unless the archive has it.
    /// Returns whether it was sent.
    pub fn push(&self, id: &ObjectId) -> Result<bool, StoreError> {
        if self.archive.contains(id)? {
            return Ok(false);
        }
        if !self.cache.contains(id) {
            return Err(StoreError::NotCached {
                id: *id,
                archive: self.archive.location().to_owned(),
            });
        }
        // The archive verifies what it receives against the identifier, so a
        // cache copy that rotted is refused there rather than archived; it is
        // then moved out of the way like any corrupt object.
        match self.archive.put(id, &self.cache.object_path(id)) {
            Ok(()) => Ok(true),
            Err(ArchiveError::WrongContent { .. }) => {
                let quarantined = self.cache.quarantine(id)?;
                Err(StoreError::CorruptCached {
                    id: *id,
                    quarantined,
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}
