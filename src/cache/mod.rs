//! The content-addressed cache shared by every repository of a user.
//!
//! Objects live at `<root>/objects/aa/bb/<id>.cache`, read-only. Writes go to
//! a temporary file under `<root>/tmp` while being hashed, then are renamed
//! into place, so a reader sees a whole object or none, whatever other
//! processes do. Every read is verified against the identifier first; a
//! corrupt object is moved to `<root>/quarantine` and never handed out.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hashing::{self, HashingWriter};
use crate::oid::ObjectId;

const SUFFIX: &str = ".cache";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content for {expected} hashed to {actual}: refusing to store it")]
    WrongContent {
        expected: ObjectId,
        actual: ObjectId,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

/// What a verified lookup found.
pub enum Lookup {
    /// The object, verified, positioned at its start.
    Hit {
        file: File,
        size: u64,
    },
    Absent,
    /// The object did not match its identifier and was moved aside.
    Corrupt {
        quarantined: PathBuf,
    },
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("objects").join(id.fan_out_path(SUFFIX))
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.object_path(id).is_file()
    }

    /// Start writing a new object; its identifier is known only when it is committed.
    pub fn begin_write(&self) -> Result<PendingObject, CacheError> {
        let tmp_dir = self.root.join("tmp");
        let mut builder = tempfile::Builder::new();
        builder.prefix("incoming-");
        // Read-only from birth (the descriptor stays writable): no chmod later.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444));
        // The directory usually exists: try first, create it only when missing,
        // rather than asking the filesystem twice for every object.
        let file = match builder.tempfile_in(&tmp_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs_err::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
                builder.tempfile_in(&tmp_dir)
            }
            other => other,
        }
        .map_err(io_err(&tmp_dir))?;
        Ok(PendingObject {
            writer: HashingWriter::new(file),
        })
    }

    /// Finish a write: check the content against `expected` if given, then put
    /// the object in place. An object already present is left as it is.
    pub fn commit(
        &self,
        pending: PendingObject,
        expected: Option<&ObjectId>,
    ) -> Result<(ObjectId, u64), CacheError> {
        let (id, size, tmp) = pending.writer.finish();
        if let Some(expected) = expected
            && *expected != id
        {
            return Err(CacheError::WrongContent {
                expected: *expected,
                actual: id,
            });
        }
        let dest = self.object_path(&id);
        if fs_err::metadata(&dest).is_ok_and(|m| m.len() == size) {
            return Ok((id, size));
        }
        let parent = dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(parent).map_err(io_err(parent))?;
        #[cfg(not(unix))]
        {
            let mut perms = tmp
                .as_file()
                .metadata()
                .map_err(io_err(tmp.path()))?
                .permissions();
            perms.set_readonly(true);
            tmp.as_file()
                .set_permissions(perms)
                .map_err(io_err(tmp.path()))?;
        }
        tmp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok((id, size))
    }

    /// Open an object without hashing it, if it is there with the marker's
    /// size: only for an object the caller itself verified moments ago (a
    /// file in place is only ever replaced, by rename, with verified content).
    pub fn open_sized(&self, marker: &crate::marker::Marker) -> Option<File> {
        let file = File::open(self.object_path(&marker.id)).ok()?;
        (file.metadata().ok()?.len() == marker.size).then_some(file)
    }

    /// Open an object after checking that its content hashes to its identifier.
    pub fn open_verified(&self, id: &ObjectId) -> Result<Lookup, CacheError> {
        let path = self.object_path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Absent),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (actual, size) = hashing::hash_reader(&mut file).map_err(io_err(&path))?;
        if actual != *id {
            drop(file);
            let quarantined = self.quarantine(id)?;
            return Ok(Lookup::Corrupt { quarantined });
        }
        file.rewind().map_err(io_err(&path))?;
        Ok(Lookup::Hit { file, size })
    }

    /// Move a (corrupt) object out of the way, keeping it for inspection.
    pub fn quarantine(&self, id: &ObjectId) -> Result<PathBuf, CacheError> {
        let dir = self.root.join("quarantine");
        fs_err::create_dir_all(&dir).map_err(io_err(&dir))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dest = dir.join(format!("{id}.{nanos}.{}", std::process::id()));
        let src = self.object_path(id);
        match fs_err::rename(&src, &dest) {
            Ok(()) => Ok(dest),
            // Another process got there first: the object is out of the way all the same.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dest),
            Err(e) => Err(io_err(&src)(e)),
        }
    }

    /// Every object in the cache with its size on disk.
    pub fn objects(&self) -> Result<Vec<(ObjectId, u64)>, CacheError> {
        let mut out = Vec::new();
        let objects = self.root.join("objects");
        for level1 in read_dir_or_empty(&objects)? {
            for level2 in read_dir_or_empty(&level1)? {
                for file in read_dir_or_empty(&level2)? {
                    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                        continue;
                    };
                    let Some(Ok(id)) = name.strip_suffix(SUFFIX).map(str::parse::<ObjectId>) else {
                        continue;
                    };
                    let len = fs_err::metadata(&file).map_err(io_err(&file))?.len();
                    out.push((id, len));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<PathBuf>, CacheError> {
    match fs_err::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// An object being written: bytes go to a temporary file and through SHA-256.
/// Dropped without `Cache::commit`, it leaves nothing behind.
pub struct PendingObject {
    writer: HashingWriter<tempfile::NamedTempFile>,
}

impl PendingObject {
    pub fn len(&self) -> u64 {
        self.writer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writer.is_empty()
    }
}

impl Write for PendingObject {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn store(cache: &Cache, bytes: &[u8]) -> ObjectId {
        let mut p = cache.begin_write().unwrap();
        p.write_all(bytes).unwrap();
        cache.commit(p, None).unwrap().0
    }

    #[test]
    fn stores_once_and_reads_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let id = store(&cache, b"hello");
        assert_eq!(id, ObjectId::of_bytes(b"hello"));
        let path = cache.object_path(&id);
        assert!(fs_err::metadata(&path).unwrap().permissions().readonly());
        let inode_before = fs_err::metadata(&path).unwrap();
        assert_eq!(store(&cache, b"hello"), id);
        let inode_after = fs_err::metadata(&path).unwrap();
        assert_eq!(
            inode_before.modified().unwrap(),
            inode_after.modified().unwrap()
        );
        assert_eq!(cache.objects().unwrap(), vec![(id, 5)]);
        match cache.open_verified(&id).unwrap() {
            Lookup::Hit { mut file, size } => {
                let mut s = String::new();
                file.read_to_string(&mut s).unwrap();
                assert_eq!((s.as_str(), size), ("hello", 5));
            }
            _ => panic!("expected a hit"),
        }
        // Nothing is left in tmp.
        assert_eq!(fs_err::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn refuses_content_that_does_not_match_the_expected_id() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let mut p = cache.begin_write().unwrap();
        p.write_all(b"evil").unwrap();
        let expected = ObjectId::of_bytes(b"good");
        assert!(matches!(
            cache.commit(p, Some(&expected)),
            Err(CacheError::WrongContent { .. })
        ));
        assert!(!cache.contains(&expected));
        assert!(cache.objects().unwrap().is_empty());
    }

    #[test]
    fn corrupt_object_is_quarantined_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let id = store(&cache, b"precious");
        let path = cache.object_path(&id);
        let mut perms = fs_err::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs_err::set_permissions(&path, perms).unwrap();
        fs_err::write(&path, b"precioUs").unwrap();
        assert!(matches!(
            cache.open_verified(&id).unwrap(),
            Lookup::Corrupt { .. }
        ));
        assert!(!cache.contains(&id));
        assert!(matches!(cache.open_verified(&id).unwrap(), Lookup::Absent));
    }
}
