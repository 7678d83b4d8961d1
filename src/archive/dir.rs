//! An archive in a directory: `<root>/objects/aa/bb/<id>`, read-only files.
//!
//! Objects are copied in (never hardlinked, so no writable alias of a cached
//! object can change the archive), hashed on the way, then renamed into
//! place. The archive is the copy of record, so what was sent is made durable
//! by `flush`, with one filesystem sync per batch instead of an fsync per
//! object. A crash before that can leave an object short (ext4 and the like
//! never leave it with the wrong bytes at the right length); such an object is
//! not counted as present, so the next push sends it again.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Archive, ArchiveError, Batch, Download, Upload};
use crate::hashing::{self, HashingWriter};
use crate::marker::Marker;
use crate::oid::ObjectId;

pub struct DirArchive {
    location: String,
    root: PathBuf,
    /// Objects put in place since the last `flush`.
    unsynced: Arc<Mutex<Vec<PathBuf>>>,
}

impl DirArchive {
    pub fn new(location: &str, root: PathBuf) -> Self {
        Self {
            location: location.to_owned(),
            root,
            unsynced: Arc::default(),
        }
    }

    fn object_path(&self, id: &ObjectId) -> PathBuf {
        self.root.join("objects").join(id.fan_out_path(""))
    }

    fn size_of(&self, id: &ObjectId) -> Result<Option<u64>, ArchiveError> {
        let path = self.object_path(id);
        match fs_err::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&self.location, &path)(e)),
        }
    }
}

fn io_err<'a>(archive: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        archive: archive.to_owned(),
        path: path.to_owned(),
        source,
    }
}

impl Archive for DirArchive {
    fn location(&self) -> &str {
        &self.location
    }

    fn contains_many(&self, objects: &[Marker]) -> Result<Vec<bool>, ArchiveError> {
        objects
            .iter()
            .map(|m| Ok(self.size_of(&m.id)?.is_some()))
            .collect()
    }

    fn downloads(&self, objects: &[Marker]) -> Result<Batch<Box<dyn Download>>, ArchiveError> {
        objects
            .iter()
            .map(|m| {
                Ok(match self.size_of(&m.id)? {
                    None => Err(ArchiveError::NotFound {
                        archive: self.location.clone(),
                        id: m.id,
                    }),
                    Some(actual) if actual != m.size => Err(ArchiveError::WrongSize {
                        archive: self.location.clone(),
                        id: m.id,
                        expected: m.size,
                        actual,
                    }),
                    Some(_) => Ok(Box::new(DirDownload {
                        location: self.location.clone(),
                        id: m.id,
                        path: self.object_path(&m.id),
                    }) as Box<dyn Download>),
                })
            })
            .collect()
    }

    fn uploads(&self, objects: &[Marker]) -> Result<Batch<Option<Box<dyn Upload>>>, ArchiveError> {
        objects
            .iter()
            .map(|m| {
                Ok(match self.size_of(&m.id)? {
                    Some(size) if size == m.size => Ok(None),
                    // Absent, or cut short by a crash before it was synced.
                    _ => Ok(Some(Box::new(DirUpload {
                        location: self.location.clone(),
                        object: *m,
                        dest: self.object_path(&m.id),
                        unsynced: Arc::clone(&self.unsynced),
                    }) as Box<dyn Upload>)),
                })
            })
            .collect()
    }

    fn parallelism(&self) -> usize {
        // A local disk gains little from more than a couple of streams.
        2
    }

    fn flush(&self) -> Result<(), ArchiveError> {
        let written = std::mem::take(
            &mut *self
                .unsynced
                .lock()
                .expect("no thread panics holding the list"),
        );
        let Some(first) = written.first() else {
            return Ok(());
        };
        sync_all_of(first, &written).map_err(|(path, e)| io_err(&self.location, &path)(e))
    }
}

/// Make the files `written` (and their directory entries) durable.
#[cfg(target_os = "linux")]
fn sync_all_of(first: &Path, _written: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    use std::os::fd::AsRawFd;
    // One syncfs covers every file of the batch, on the archive's filesystem.
    let file = File::open(first).map_err(|e| (first.to_owned(), e))?;
    // SAFETY: syncfs only reads the descriptor, which `file` keeps open.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err((first.to_owned(), io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_all_of(_first: &Path, written: &[PathBuf]) -> Result<(), (PathBuf, io::Error)> {
    for path in written {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| (path.clone(), e))?;
    }
    Ok(())
}

struct DirDownload {
    location: String,
    id: ObjectId,
    path: PathBuf,
}

impl Download for DirDownload {
    fn read(&self, range: Range<u64>, sink: &mut dyn Write) -> Result<u64, ArchiveError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArchiveError::NotFound {
                    archive: self.location.clone(),
                    id: self.id,
                });
            }
            Err(e) => return Err(io_err(&self.location, &self.path)(e)),
        };
        file.seek(SeekFrom::Start(range.start))
            .map_err(io_err(&self.location, &self.path))?;
        let mut file = file.take(range.end.saturating_sub(range.start));
        // Tell apart a failing read of the archive from a failing write of the sink.
        let mut buf = hashing::ChunkBuf::take();
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(&self.location, &self.path)(e)),
            };
            sink.write_all(&buf[..n])
                .map_err(|source| ArchiveError::Sink {
                    archive: self.location.clone(),
                    id: self.id,
                    source,
                })?;
            total += n as u64;
        }
    }
}

struct DirUpload {
    location: String,
    object: Marker,
    dest: PathBuf,
    unsynced: Arc<Mutex<Vec<PathBuf>>>,
}

impl Upload for DirUpload {
    fn send(&self, source: &Path) -> Result<(), ArchiveError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            let archive = self.location.clone();
            move |source| ArchiveError::Io {
                archive,
                path,
                source,
            }
        };
        // Written next to where it goes, as git does with its objects:
        // parallel uploads then do not queue on one directory's lock.
        let tmp_dir = self.dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(tmp_dir).map_err(io(tmp_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(tmp_dir)
            .map_err(io(tmp_dir))?;
        let mut input = fs_err::File::open(source).map_err(io(source))?;
        let mut writer = HashingWriter::new(tmp);
        hashing::copy(&mut input, &mut writer).map_err(io(source))?;
        let (actual, len, tmp) = writer.finish();
        if actual != self.object.id {
            return Err(ArchiveError::WrongContent {
                archive: self.location.clone(),
                expected: self.object.id,
                actual,
            });
        }
        if len != self.object.size {
            return Err(ArchiveError::WrongSize {
                archive: self.location.clone(),
                id: self.object.id,
                expected: self.object.size,
                actual: len,
            });
        }
        let mut perms = tmp
            .as_file()
            .metadata()
            .map_err(io(tmp.path()))?
            .permissions();
        perms.set_readonly(true);
        tmp.as_file()
            .set_permissions(perms)
            .map_err(io(tmp.path()))?;
        tmp.persist(&self.dest)
            .map_err(|e| io(&self.dest)(e.error))?;
        self.unsynced
            .lock()
            .expect("no thread panics holding the list")
            .push(self.dest.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new("test", dir.path().to_owned());
        super::super::conformance::run(&archive, true);
        // Nothing refused was left behind.
        let mut leftovers = Vec::new();
        let mut dirs = vec![dir.path().to_owned()];
        while let Some(d) = dirs.pop() {
            for e in fs_err::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("incoming-")
                {
                    leftovers.push(p);
                }
            }
        }
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn an_object_cut_short_by_a_crash_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let archive: &dyn Archive = &DirArchive::new("test", dir.path().to_owned());
        let src = dir.path().join("src");
        std::fs::write(&src, b"precious bytes").unwrap();
        let m = Marker::new(ObjectId::of_bytes(b"precious bytes"), 14);
        assert!(archive.put(&m, &src).unwrap());
        archive.flush().unwrap();
        // What a crash between rename and sync can leave: the name, no data.
        let path = dir.path().join("objects").join(m.id.fan_out_path(""));
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&path, perms).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(archive.put(&m, &src).unwrap(), "a short object is replaced");
        let mut out = Vec::new();
        archive.get(&m, &mut out).unwrap();
        assert_eq!(out, b"precious bytes");
    }
}
