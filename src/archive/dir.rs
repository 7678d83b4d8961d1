//! An archive in a directory: `<root>/objects/aa/bb/<id>`, read-only files.
//!
//! Objects are copied in (never hardlinked, so no writable alias of a cached
//! object can change the archive), hashed on the way, synced, then renamed
//! into place: the archive is the copy of record.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::{Archive, ArchiveError, Batch, Download, Upload};
use crate::hashing::{self, HashingWriter};
use crate::marker::Marker;
use crate::oid::ObjectId;

pub struct DirArchive {
    location: String,
    root: PathBuf,
}

impl DirArchive {
    pub fn new(location: &str, root: PathBuf) -> Self {
        Self {
            location: location.to_owned(),
            root,
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
        // An object of the wrong size is damaged, not held.
        objects
            .iter()
            .map(|m| Ok(self.size_of(&m.id)? == Some(m.size)))
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
                    // Absent, or damaged: the right bytes replace it.
                    _ => Ok(Some(Box::new(DirUpload {
                        location: self.location.clone(),
                        root: self.root.clone(),
                        object: *m,
                        dest: self.object_path(&m.id),
                    }) as Box<dyn Upload>)),
                })
            })
            .collect()
    }

    fn parallelism(&self) -> usize {
        // A local disk gains little from more than a couple of streams.
        2
    }
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
        let mut buf = vec![0u8; hashing::CHUNK];
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
    root: PathBuf,
    object: Marker,
    dest: PathBuf,
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
        let tmp_dir = self.root.join("tmp");
        fs_err::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&tmp_dir)
            .map_err(io(&tmp_dir))?;
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
        // The archive is the copy of record: on disk before it is in place.
        tmp.as_file().sync_all().map_err(io(tmp.path()))?;
        let mut perms = tmp
            .as_file()
            .metadata()
            .map_err(io(tmp.path()))?
            .permissions();
        perms.set_readonly(true);
        tmp.as_file()
            .set_permissions(perms)
            .map_err(io(tmp.path()))?;
        let parent = self.dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(parent).map_err(io(parent))?;
        tmp.persist(&self.dest)
            .map_err(|e| io(&self.dest)(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_object_is_not_held_and_a_put_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new("test", dir.path().to_owned());
        let archive: &dyn Archive = &archive;
        let bytes = b"the whole object".to_vec();
        let m = Marker::new(ObjectId::of_bytes(&bytes), bytes.len() as u64);
        let src = dir.path().join("src");
        fs_err::write(&src, &bytes).unwrap();
        assert!(archive.put(&m, &src).unwrap());
        // Cut short behind fcache's back: no longer held, so gc would not
        // evict a good cached copy for it, and a push sends it again.
        let stored = dir.path().join("objects").join(m.id.fan_out_path(""));
        let mut perms = fs_err::metadata(&stored).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs_err::set_permissions(&stored, perms).unwrap();
        fs_err::write(&stored, &bytes[..5]).unwrap();
        assert!(!archive.contains(&m).unwrap());
        assert!(
            archive.put(&m, &src).unwrap(),
            "a damaged object is sent again"
        );
        assert!(archive.contains(&m).unwrap());
        assert_eq!(fs_err::read(&stored).unwrap(), bytes);
    }

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new("test", dir.path().to_owned());
        super::super::conformance::run(&archive, true);
        // Nothing refused was left behind in the archive's temporary area.
        assert_eq!(fs_err::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
