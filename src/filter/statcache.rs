//! The stat cache: which object each work-tree path held when fcache last
//! saw it, with the file's stat data then (size, mtime, ctime, inode).
//!
//! git re-cleans a file whenever its stat data differs from git's index
//! (after `touch`, a checkout, or when the entry is racily clean), although
//! its bytes are usually unchanged. The stat cache names the object the bytes
//! most likely are; clean then compares the bytes git sends with the cached
//! object instead of hashing and storing them again (see `filter::clean`).
//!
//! An entry is only ever a hint: clean never answers from stat data alone,
//! because the bytes git sends need not be the file's (`git hash-object
//! --stdin --path=...`, a renormalizing merge) and stat data cannot tell a
//! `touch` from an edit of the same size. So an entry that is stale, racy or
//! from another machine costs a comparison, never a wrong marker, and no
//! timestamp reasoning (racy-git) is needed for correctness. The size decides
//! which entry is worth a comparison; the rest of the stat data is kept so
//! that an unchanged entry is not rewritten, and for a future policy that
//! trusts it further.
//!
//! The file is `stat-cache.csv` in the work tree's own git directory
//! (`.git/fcache/` for the main work tree), one row per path:
//! `path,size,mtime_ns,ctime_ns,inode,identifier`. It is a cache: a missing or
//! unreadable file is an empty cache, and saving merges with what other
//! processes saved meanwhile.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::marker::Marker;
use crate::oid::ObjectId;

pub const FILE_NAME: &str = "stat-cache.csv";
const HEADER: [&str; 6] = [
    "path",
    "size",
    "mtime_ns",
    "ctime_ns",
    "inode",
    "identifier",
];

#[derive(Debug, thiserror::Error)]
pub enum StatCacheError {
    #[error("cannot write stat cache {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The parts of a file's stat data that change when it is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
}

impl Stat {
    /// The stat data of a regular file; `None` for anything else.
    pub fn of(path: &Path) -> Option<Stat> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        Some(Self::from_metadata(&meta))
    }

    #[cfg(unix)]
    fn from_metadata(meta: &std::fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            size: meta.size(),
            // Wrapping: a date past 2262 must not panic; the value only
            // needs to change when the file's time does.
            mtime_ns: meta
                .mtime()
                .wrapping_mul(1_000_000_000)
                .wrapping_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .wrapping_mul(1_000_000_000)
                .wrapping_add(meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }

    #[cfg(not(unix))]
    fn from_metadata(meta: &std::fs::Metadata) -> Stat {
        let ns = |t: io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64)
                .unwrap_or_default()
        };
        Stat {
            size: meta.len(),
            mtime_ns: ns(meta.modified()),
            ctime_ns: ns(meta.created()),
            inode: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub stat: Stat,
    pub id: ObjectId,
}

pub struct StatCache {
    path: PathBuf,
    entries: HashMap<Vec<u8>, Entry>,
    /// What this process recorded; merged into the file on save.
    changed: HashMap<Vec<u8>, Entry>,
}

impl StatCache {
    /// Load the stat cache in `dir`; a missing or unreadable one is empty.
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        Self {
            entries: read(&path).unwrap_or_default(),
            path,
            changed: HashMap::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The object that `path`, whose stat data is now `now`, most likely
    /// holds: the last one seen there, if the size still fits.
    pub fn candidate(&self, path: &[u8], now: &Stat) -> Option<Marker> {
        let e = self.entries.get(path)?;
        (e.stat.size == now.size).then(|| Marker::new(e.id, e.stat.size))
    }

    /// Record that `path` held object `id` when its stat data was `stat`.
    pub fn record(&mut self, path: &[u8], stat: Stat, id: ObjectId) {
        let entry = Entry { stat, id };
        if self.entries.get(path) == Some(&entry) {
            return;
        }
        self.entries.insert(path.to_vec(), entry);
        self.changed.insert(path.to_vec(), entry);
    }

    /// Write what changed, merged with what other processes saved meanwhile.
    /// With the work tree given, entries of files no longer there are dropped,
    /// so that the stat cache does not grow with every file ever seen.
    pub fn save(&mut self, workdir: Option<&Path>) -> Result<(), StatCacheError> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let write_err = |source| StatCacheError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .expect("the stat cache is in a directory");
        fs_err::create_dir_all(dir).map_err(write_err)?;
        let _lock = crate::lock::exclusive(&dir.join("stat-cache.lock")).map_err(write_err)?;
        let mut merged = read(&self.path).unwrap_or_default();
        merged.extend(self.changed.drain());
        if let Some(workdir) = workdir {
            merged.retain(|path, _| {
                std::fs::symlink_metadata(workdir.join(crate::repo::bytes_to_path(path))).is_ok()
            });
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".stat-cache.")
            .tempfile_in(dir)
            .map_err(write_err)?;
        {
            let mut w = csv::Writer::from_writer(io::BufWriter::new(tmp.as_file_mut()));
            let csv_err = |e: csv::Error| write_err(e.into());
            w.write_record(HEADER).map_err(csv_err)?;
            for (path, e) in &merged {
                w.write_record([
                    &path[..],
                    e.stat.size.to_string().as_bytes(),
                    e.stat.mtime_ns.to_string().as_bytes(),
                    e.stat.ctime_ns.to_string().as_bytes(),
                    e.stat.inode.to_string().as_bytes(),
                    e.id.to_hex().as_bytes(),
                ])
                .map_err(csv_err)?;
            }
            w.flush().map_err(write_err)?;
        }
        // No fsync: a cache lost in a crash only costs a comparison or a hash.
        tmp.persist(&self.path).map_err(|e| write_err(e.error))?;
        self.entries = merged;
        Ok(())
    }
}

fn read(path: &Path) -> Option<HashMap<Vec<u8>, Entry>> {
    let file = File::open(path).ok()?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(io::BufReader::new(file));
    if reader
        .byte_headers()
        .ok()?
        .iter()
        .ne(HEADER.map(str::as_bytes))
    {
        return None;
    }
    let mut entries = HashMap::new();
    for record in reader.byte_records() {
        let r = record.ok()?;
        if r.len() != HEADER.len() {
            return None;
        }
        let num = |i: usize| std::str::from_utf8(&r[i]).ok();
        let stat = Stat {
            size: num(1)?.parse().ok()?,
            mtime_ns: num(2)?.parse().ok()?,
            ctime_ns: num(3)?.parse().ok()?,
            inode: num(4)?.parse().ok()?,
        };
        let id = num(5)?.parse().ok()?;
        entries.insert(r[0].to_vec(), Entry { stat, id });
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_save_and_merge_with_other_processes() {
        let dir = tempfile::tempdir().unwrap();
        let a = ObjectId::of_bytes(b"a");
        let b = ObjectId::of_bytes(b"b");
        let stat = |size| Stat {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            inode: 3,
        };
        let mut first = StatCache::open(dir.path());
        let mut second = StatCache::open(dir.path());
        first.record(b"dir/a, with comma\n.bin", stat(1), a);
        second.record(b"b.bin", stat(1), b);
        first.save(None).unwrap();
        second.save(None).unwrap();
        let reopened = StatCache::open(dir.path());
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            reopened.candidate(b"dir/a, with comma\n.bin", &stat(1)),
            Some(Marker::new(a, 1))
        );
        // A different size is no candidate: the bytes cannot be the same.
        assert_eq!(reopened.candidate(b"b.bin", &stat(2)), None);
        assert_eq!(reopened.candidate(b"c.bin", &stat(1)), None);
    }

    #[test]
    fn an_unreadable_stat_cache_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "garbage\n\"unterminated").unwrap();
        let mut cache = StatCache::open(dir.path());
        assert!(cache.is_empty());
        cache.record(b"x", Stat::default(), ObjectId::of_bytes(b"x"));
        cache.save(None).unwrap();
        assert_eq!(StatCache::open(dir.path()).len(), 1);
    }

    #[test]
    fn entries_of_files_gone_from_the_work_tree_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let workdir = tempfile::tempdir().unwrap();
        std::fs::create_dir(workdir.path().join("sub")).unwrap();
        std::fs::write(workdir.path().join("sub/kept.bin"), b"k").unwrap();
        let mut cache = StatCache::open(dir.path());
        cache.record(b"sub/kept.bin", Stat::default(), ObjectId::of_bytes(b"k"));
        cache.record(b"gone.bin", Stat::default(), ObjectId::of_bytes(b"g"));
        cache.save(Some(workdir.path())).unwrap();
        let reopened = StatCache::open(dir.path());
        assert_eq!(reopened.len(), 1);
        assert!(
            reopened
                .candidate(b"sub/kept.bin", &Stat::default())
                .is_some()
        );
        assert!(reopened.candidate(b"gone.bin", &Stat::default()).is_none());
    }
}
