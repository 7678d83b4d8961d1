//! The content-addressed cache shared by every repository of a user.
//!
//! Objects live at `<root>/objects/aa/bb/<id>.cache`, read-only. Writes go to
//! a temporary file under `<root>/tmp` while being hashed, then are renamed
//! into place, so a reader sees a whole object or none, whatever other
//! processes do. Every read is verified against the identifier first; a
//! corrupt object is moved to `<root>/quarantine` and never handed out.
//!
//! An object's modification time is when it was last added or used: that is
//! the cache's own record for least-recently-used eviction (one timestamp per
//! object, written atomically by the kernel, shared by every repository).
//! Eviction itself (which needs the archive) is in `store.rs`; the limits and
//! the order are in `limits.rs`. Every operation on objects holds
//! `<root>/lock` shared; gc holds it exclusive.

mod gc;
mod limits;

use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::gc::{GcReport, Options as GcOptions, STALE_TEMP, collect as collect_garbage};
pub use self::limits::{CachedObject, Limits};
use crate::clock::Clock;
use crate::hashing::{self, HashingWriter};
use crate::lock::{self, LockError, Mode};
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
    #[error("cache {}", root.display())]
    Lock {
        root: PathBuf,
        #[source]
        source: LockError,
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
    clock: Clock,
}

/// The cache lock, held while it lives.
#[must_use = "the lock is released when this is dropped"]
pub struct CacheLock {
    _file: File,
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
        Self {
            root: root.into(),
            clock: Clock::System,
        }
    }

    /// The clock that stamps each object's last use (tests fix it).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn lock_path(&self) -> Result<PathBuf, CacheError> {
        fs_err::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        Ok(self.root.join("lock"))
    }

    /// Wait up to `timeout` for the cache lock.
    pub fn lock(&self, mode: Mode, timeout: Duration) -> Result<CacheLock, CacheError> {
        let file = lock::acquire(&self.lock_path()?, mode, timeout).map_err(|source| {
            CacheError::Lock {
                root: self.root.clone(),
                source,
            }
        })?;
        Ok(CacheLock { _file: file })
    }

    /// The exclusive lock if nobody else holds the lock now.
    pub fn try_lock_exclusive(&self) -> Result<Option<CacheLock>, CacheError> {
        let file = lock::try_acquire(&self.lock_path()?, Mode::Exclusive).map_err(|source| {
            CacheError::Lock {
                root: self.root.clone(),
                source,
            }
        })?;
        Ok(file.map(|file| CacheLock { _file: file }))
    }

    /// Where objects are written before they are put in place.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
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
        let tmp_dir = self.tmp_dir();
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
    /// the object in place, stamped as used now. An object already present is
    /// left as it is (and stamped). Returns the object, open for reading.
    pub fn commit(
        &self,
        pending: PendingObject,
        expected: Option<&ObjectId>,
    ) -> Result<Committed, CacheError> {
        self.commit_healing(pending, expected, None)
    }

    /// `commit`, but if the content turns out to be `suspect`, whose cached
    /// copy is known to be damaged, the new, verified bytes replace it.
    pub fn commit_healing(
        &self,
        pending: PendingObject,
        expected: Option<&ObjectId>,
        suspect: Option<&ObjectId>,
    ) -> Result<Committed, CacheError> {
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
        if suspect != Some(&id)
            && let Ok(file) = File::open(&dest)
            && file.metadata().is_ok_and(|m| m.len() == size)
        {
            self.stamp(&file);
            return Ok(Committed { id, size, file });
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
        let mut file = tmp.persist(&dest).map_err(|e| CacheError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        self.stamp(&file);
        file.rewind().map_err(io_err(&dest))?;
        Ok(Committed { id, size, file })
    }

    /// When an object arrived in the cache (its file's creation time, where
    /// the file system keeps one) and when it was last used.
    pub fn times(
        &self,
        id: &ObjectId,
    ) -> Option<(crate::clock::Timestamp, crate::clock::Timestamp)> {
        let meta = fs_err::metadata(self.object_path(id)).ok()?;
        let used = meta.modified().ok()?;
        let added = meta.created().unwrap_or(used).min(used);
        Some((added.into(), used.into()))
    }

    /// Record that an object was used now (for least-recently-used eviction).
    /// An object that is gone meanwhile needs no stamp.
    pub fn touch(&self, id: &ObjectId) {
        if let Ok(file) = File::open(self.object_path(id)) {
            self.stamp(&file);
        }
    }

    /// `touch` for an object already open.
    pub fn touch_open(&self, file: &File) {
        self.stamp(file);
    }

    fn stamp(&self, file: &File) {
        // Best effort: a stamp that fails only makes the object look older.
        let _ = file.set_modified(SystemTime::from(self.clock.current_time()));
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

    /// Every object in the cache with its size and last use.
    pub fn objects(&self) -> Result<Vec<CachedObject>, CacheError> {
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
                    let meta = match fs_err::metadata(&file) {
                        Ok(m) => m,
                        // Evicted by another process since the listing.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&file)(e)),
                    };
                    out.push(CachedObject {
                        id,
                        size: meta.len(),
                        last_used: meta.modified().unwrap_or(UNIX_EPOCH),
                    });
                }
            }
        }
        out.sort_by_key(|o| o.id);
        Ok(out)
    }

    /// Remove an object (the caller made sure the archive holds it), and the
    /// fan-out directories it leaves empty.
    pub fn evict(&self, id: &ObjectId) -> Result<(), CacheError> {
        let path = self.object_path(id);
        match fs_err::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        }
        // Another process may be filling the same directory: removing a
        // directory that is not empty fails harmlessly.
        let mut dir = path.parent();
        for _ in 0..2 {
            match dir {
                Some(d) if std::fs::remove_dir(d).is_ok() => dir = d.parent(),
                _ => break,
            }
        }
        Ok(())
    }

    /// Delete temporary files older than `max_age` (left by killed
    /// processes). Returns how many went.
    pub fn sweep_temp(&self, max_age: Duration) -> Result<usize, CacheError> {
        let now = SystemTime::now();
        let mut swept = 0;
        for path in read_dir_or_empty(&self.tmp_dir())? {
            let old = fs_err::metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age);
            if old && fs_err::remove_file(&path).is_ok() {
                swept += 1;
            }
        }
        Ok(swept)
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

/// An object put in place by `Cache::commit`.
pub struct Committed {
    pub id: ObjectId,
    pub size: u64,
    /// The object, open for reading from its start.
    pub file: File,
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
        cache.commit(p, None).unwrap().id
    }

    #[test]
    fn stores_once_and_reads_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let id = store(&cache, b"hello");
        assert_eq!(id, ObjectId::of_bytes(b"hello"));
        let path = cache.object_path(&id);
        assert!(fs_err::metadata(&path).unwrap().permissions().readonly());
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // Storing it again does not write it again: the same file stays.
            let inode_before = fs_err::metadata(&path).unwrap().ino();
            assert_eq!(store(&cache, b"hello"), id);
            assert_eq!(fs_err::metadata(&path).unwrap().ino(), inode_before);
        }
        let listed = cache.objects().unwrap();
        assert_eq!((listed.len(), listed[0].id, listed[0].size), (1, id, 5));
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
    fn commit_and_touch_stamp_last_use_with_the_clock_and_evict_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let at = |s: &str| Clock::Fixed(crate::clock::parse(s).unwrap());
        let cache = Cache::new(dir.path()).with_clock(at("2026-01-01T00:00:00Z"));
        let id = store(&cache, b"stamped");
        let when = |c: &Cache| c.objects().unwrap()[0].last_used;
        assert_eq!(
            when(&cache),
            SystemTime::from(crate::clock::parse("2026-01-01T00:00:00Z").unwrap())
        );
        let later = cache.clone().with_clock(at("2026-02-01T00:00:00Z"));
        later.touch(&id);
        assert_eq!(
            when(&cache),
            SystemTime::from(crate::clock::parse("2026-02-01T00:00:00Z").unwrap())
        );
        cache.evict(&id).unwrap();
        assert!(cache.objects().unwrap().is_empty());
        // The emptied fan-out directories went too; evicting again is fine.
        assert_eq!(
            fs_err::read_dir(dir.path().join("objects"))
                .unwrap()
                .count(),
            0
        );
        cache.evict(&id).unwrap();
    }

    #[test]
    fn sweep_removes_only_old_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let pending = cache.begin_write().unwrap();
        let stale = cache.tmp_dir().join("incoming-stale");
        fs_err::write(&stale, b"left by a killed process").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(cache.sweep_temp(Duration::from_secs(3600)).unwrap(), 1);
        assert!(!stale.exists());
        // The write in progress is still there and can finish.
        assert!(cache.commit(pending, None).is_ok());
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
