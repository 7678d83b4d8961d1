//! Archives: where objects live beyond this machine's cache.
//!
//! One small, object-safe, streaming trait; the implementation is picked from
//! the archive URL at run time. Callers never hold whole objects: `put` reads
//! from a file (so a transfer can be retried or split), `get` streams into a
//! writer, and the caller verifies what arrives before trusting it.

mod dir;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::dir::DirArchive;
use crate::oid::ObjectId;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object {id} is not in archive {archive}")]
    NotFound { archive: String, id: ObjectId },
    #[error("archive {archive}: I/O error on {path}")]
    Io {
        archive: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive {archive}: content sent for {expected} hashes to {actual}; nothing stored")]
    WrongContent {
        archive: String,
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("cannot write object {id} out of archive {archive}")]
    Sink {
        archive: String,
        id: ObjectId,
        #[source]
        source: io::Error,
    },
    #[error("unsupported archive location {0:?}: use a directory path or file:// URL")]
    Unsupported(String),
}

pub trait Archive: Send + Sync {
    /// The location as the user configured it, for messages.
    fn location(&self) -> &str;

    fn contains(&self, id: &ObjectId) -> Result<bool, ArchiveError>;

    /// Store the object whose verified content is in the file `source`.
    /// Storing an object the archive already holds succeeds without rewriting it.
    fn put(&self, id: &ObjectId, source: &Path) -> Result<(), ArchiveError>;

    /// Stream the object's content into `sink`; returns the bytes written.
    /// A missing object is `ArchiveError::NotFound`, never an empty success.
    fn get(&self, id: &ObjectId, sink: &mut dyn Write) -> Result<u64, ArchiveError>;
}

impl ArchiveError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ArchiveError::NotFound { .. })
    }
}

/// Open the archive named by `location`: a directory path or a `file://` URL.
pub fn open(location: &str) -> Result<Arc<dyn Archive>, ArchiveError> {
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Arc::new(DirArchive::new(location, PathBuf::from(path))));
    }
    if location.contains("://") || location.is_empty() {
        return Err(ArchiveError::Unsupported(location.to_owned()));
    }
    Ok(Arc::new(DirArchive::new(location, PathBuf::from(location))))
}

#[cfg(test)]
pub(crate) mod conformance {
    //! What every archive must do; each implementation's tests call `run`.
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    pub fn run(archive: &dyn Archive) {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1] {
            let bytes = sample(len);
            let id = ObjectId::of_bytes(&bytes);
            let src = dir.path().join(format!("obj-{len}"));
            std::fs::write(&src, &bytes).unwrap();

            assert!(!archive.contains(&id).unwrap());
            let err = archive.get(&id, &mut Vec::new()).unwrap_err();
            assert!(err.is_not_found(), "{err}");

            archive.put(&id, &src).unwrap();
            archive.put(&id, &src).unwrap();
            assert!(archive.contains(&id).unwrap());
            let mut out = Vec::new();
            assert_eq!(archive.get(&id, &mut out).unwrap(), len as u64);
            assert!(out == bytes, "round trip of {len} bytes");
        }
        // Content that does not match its identifier is refused, nothing stored.
        let id = ObjectId::of_bytes(b"claimed");
        let src = dir.path().join("liar");
        std::fs::write(&src, b"actual").unwrap();
        assert!(archive.put(&id, &src).is_err());
        assert!(!archive.contains(&id).unwrap());
    }
}
