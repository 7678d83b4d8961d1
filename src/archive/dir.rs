//! An archive in a directory: `<root>/objects/aa/bb/<id>`, read-only files.
//!
//! Objects are copied in (never hardlinked, so no writable alias of a cached
//! object can change the archive), hashed on the way, synced, then renamed
//! into place: the archive is the copy of record.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Archive, ArchiveError};
use crate::hashing::{self, HashingWriter};
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

    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
        let path = path.to_owned();
        move |source| ArchiveError::Io {
            archive: self.location.clone(),
            path,
            source,
        }
    }
}

impl Archive for DirArchive {
    fn location(&self) -> &str {
        &self.location
    }

    fn contains(&self, id: &ObjectId) -> Result<bool, ArchiveError> {
        let path = self.object_path(id);
        match fs_err::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(&path)(e)),
        }
    }

    fn put(&self, id: &ObjectId, source: &Path) -> Result<(), ArchiveError> {
        let dest = self.object_path(id);
        if self.contains(id)? {
            return Ok(());
        }
        let tmp_dir = self.root.join("tmp");
        fs_err::create_dir_all(&tmp_dir).map_err(self.io(&tmp_dir))?;
        let tmp = tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(&tmp_dir)
            .map_err(self.io(&tmp_dir))?;
        let mut input = fs_err::File::open(source).map_err(self.io(source))?;
        let mut writer = HashingWriter::new(tmp);
        hashing::copy(&mut input, &mut writer).map_err(self.io(source))?;
        let (actual, _, tmp) = writer.finish();
        if actual != *id {
            return Err(ArchiveError::WrongContent {
                archive: self.location.clone(),
                expected: *id,
                actual,
            });
        }
        tmp.as_file().sync_all().map_err(self.io(tmp.path()))?;
        let mut perms = tmp
            .as_file()
            .metadata()
            .map_err(self.io(tmp.path()))?
            .permissions();
        perms.set_readonly(true);
        tmp.as_file()
            .set_permissions(perms)
            .map_err(self.io(tmp.path()))?;
        let parent = dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(parent).map_err(self.io(parent))?;
        tmp.persist(&dest).map_err(|e| self.io(&dest)(e.error))?;
        Ok(())
    }

    fn get(&self, id: &ObjectId, sink: &mut dyn Write) -> Result<u64, ArchiveError> {
        let path = self.object_path(id);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArchiveError::NotFound {
                    archive: self.location.clone(),
                    id: *id,
                });
            }
            Err(e) => return Err(self.io(&path)(e)),
        };
        // Tell apart a failing read of the archive from a failing write of the sink.
        let mut buf = vec![0u8; hashing::CHUNK];
        let mut total = 0u64;
        loop {
            let n = match io::Read::read(&mut file, &mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io(&path)(e)),
            };
            sink.write_all(&buf[..n])
                .map_err(|source| ArchiveError::Sink {
                    archive: self.location.clone(),
                    id: *id,
                    source,
                })?;
            total += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new("test", dir.path().to_owned());
        super::super::conformance::run(&archive);
    }
}
