//! An archive in a directory: `<root>/objects/aa/bb/<id>`, read-only files.
//!
//! Objects are copied in (never hardlinked, so no writable alias of a cached
//! object can change the archive) to a temporary file next to where they go,
//! hashed on the way. The archive is the copy of record, so an object gets
//! its name only once its bytes are on disk: `flush` syncs the batch's
//! temporary files (many at once), renames them into place, and syncs their
//! directories so that the names last too. A crash at any point leaves each
//! object whole under its name or not there at all (then it is sent again),
//! never named with bytes missing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Archive, ArchiveError, Batch, Download, Upload, check_stored};
use crate::hashing::{self, HashingWriter};
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::transfer;
use crate::writeback::WriteBehind;

pub struct DirArchive {
    location: String,
    root: PathBuf,
    /// Objects received and not yet named.
    pending: Arc<Pending>,
}

/// Objects received by uploads and waiting for `flush` to make them durable
/// and name them. Flushes may be called at once (`fcache serve` flushes each
/// upload); they commit as a group: one at a time syncs and names everything
/// received so far, and the others wait for it (their objects are then done)
/// or take over whatever arrived meanwhile. The leader syncs the lot at once
/// and each directory once, where flushes each syncing their own would
/// queue behind one another and sync shared directories again and again.
#[derive(Default)]
struct Pending {
    state: Mutex<PendingState>,
    finished: std::sync::Condvar,
}

#[derive(Default)]
struct PendingState {
    /// Received and not yet taken by a flush: the objects numbered from
    /// `done_below` to `next`, in order (only one flush takes at a time).
    received: Vec<(tempfile::TempPath, PathBuf)>,
    /// The next object's sequence number.
    next: u64,
    /// Every object numbered below this is done: named, or failed.
    done_below: u64,
    /// A flush is syncing and naming objects now.
    syncing: bool,
    /// Objects a flush failed to name.
    failed: std::collections::BTreeSet<u64>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state
            .lock()
            .expect("no thread panics holding the list")
    }

    fn add(&self, tmp: tempfile::TempPath, dest: PathBuf) {
        let mut state = self.lock();
        state.next += 1;
        state.received.push((tmp, dest));
    }
}

impl DirArchive {
    pub fn new(location: &str, root: PathBuf) -> Self {
        Self {
            location: location.to_owned(),
            root,
            pending: Arc::default(),
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
                let stored = self.size_of(&m.id)?;
                Ok(check_stored(&self.location, m, stored).map(|()| {
                    Box::new(DirDownload {
                        location: self.location.clone(),
                        id: m.id,
                        path: self.object_path(&m.id),
                    }) as Box<dyn Download>
                }))
            })
            .collect()
    }

    fn uploads(&self, objects: &[Marker]) -> Result<Batch<Option<Box<dyn Upload>>>, ArchiveError> {
        objects
            .iter()
            .map(|m| {
                Ok(match self.size_of(&m.id)? {
                    Some(size) if size == m.size => Ok(None),
                    // Absent, or damaged (cut short): the right bytes replace it.
                    _ => Ok(Some(Box::new(DirUpload {
                        location: self.location.clone(),
                        object: *m,
                        dest: self.object_path(&m.id),
                        pending: Arc::clone(&self.pending),
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
        // Everything received before this call is owed: synced and named
        // here, or by the flush under way, which this one then waits for.
        let mut state = self.pending.lock();
        // Objects below `from` were done before this call, and their own
        // flushes reported how; a failure there is not this call's.
        let (from, owed) = (state.done_below, state.next);
        while state.done_below < owed {
            if state.syncing {
                state = self
                    .pending
                    .finished
                    .wait(state)
                    .expect("no thread panics holding the list");
                continue;
            }
            // Lead: take everything received so far, this call's and others'.
            let received = std::mem::take(&mut state.received);
            let taken = state.done_below..state.next;
            state.syncing = true;
            drop(state);
            let named = self.name_durably(received);
            state = self.pending.lock();
            state.syncing = false;
            state.done_below = taken.end;
            if named.is_err() {
                state.failed.extend(taken);
            }
            self.pending.finished.notify_all();
            named?;
        }
        if state.failed.range(from..owed).next().is_some() {
            return Err(ArchiveError::Remote {
                archive: self.location.clone(),
                message: "a flush running alongside could not store its objects; send again"
                    .to_owned(),
                source: None,
            });
        }
        Ok(())
    }
}

impl DirArchive {
    /// Make the objects' bytes durable, then give them their names, then
    /// make the names durable: a crash leaves each whole or absent.
    ///
    /// Each file and each directory is synced on its own (many at once, so
    /// that the disk's cache flushes are shared), never the whole
    /// filesystem: `syncfs` would also write out every other dirty file on
    /// it, and on a machine shared with other work (or with the client
    /// that is pushing) an upload would wait for gigabytes not its own.
    fn name_durably(
        &self,
        received: Vec<(tempfile::TempPath, PathBuf)>,
    ) -> Result<(), ArchiveError> {
        let loc = self.location.as_str();
        sync_all_at_once(loc, received.iter().map(|(tmp, _)| tmp.as_ref()).collect())?;
        let dirs = directories_to_sync(&self.root, received.iter().map(|(_, dest)| dest));
        for (tmp, dest) in received {
            tmp.persist(&dest)
                .map_err(|e| io_err(loc, &dest)(e.error))?;
        }
        // A directory can be opened and synced on Unix only; elsewhere the
        // filesystem keeps renames on its own (NTFS journals them).
        if cfg!(unix) {
            sync_all_at_once(loc, dirs.iter().map(PathBuf::as_path).collect())?;
        }
        Ok(())
    }
}

/// The directories whose entries must be synced once objects are named at
/// `dests`: each one's directory and every directory above it up to the
/// archive's root, which naming may have created. Each only once.
fn directories_to_sync<'a>(root: &Path, dests: impl Iterator<Item = &'a PathBuf>) -> Vec<PathBuf> {
    let mut dirs = std::collections::BTreeSet::new();
    for dest in dests {
        for dir in dest.ancestors().skip(1) {
            // Above the root is not the archive's; a directory seen before
            // had its ancestors added then.
            if !dir.starts_with(root) || !dirs.insert(dir.to_path_buf()) {
                break;
            }
        }
    }
    dirs.into_iter().collect()
}

/// Syncs in flight at once. A sync mostly waits for the disk, and the
/// kernel shares one cache flush among the syncs waiting for it, so many
/// at once cost little more than one (2000 small files here: 0.36 s with 8
/// at once, 0.17 s with 32).
const SYNCS_AT_ONCE: usize = 32;

/// Sync every file or directory at `paths`, `SYNCS_AT_ONCE` at a time; the
/// first failure, in order, names its path.
fn sync_all_at_once(loc: &str, paths: Vec<&Path>) -> Result<(), ArchiveError> {
    transfer::parallel_map(paths, SYNCS_AT_ONCE, |path| {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(loc, path))
    })
    .into_iter()
    .collect()
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
    pending: Arc<Pending>,
}

impl DirUpload {
    /// Write the object into a temporary file next to where it goes, with
    /// `write`, which returns the content's identifier and length; it is
    /// named at `flush`, once the bytes are on disk. Nothing is kept unless
    /// they are the object's.
    fn receive(
        &self,
        write: impl FnOnce(&mut dyn Write) -> io::Result<(ObjectId, u64)>,
        source: &Path,
    ) -> Result<(), ArchiveError> {
        let loc = self.location.as_str();
        // Written next to where it goes, as git does with its objects:
        // parallel uploads then do not queue on one directory's lock.
        let tmp_dir = self.dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(tmp_dir).map_err(io_err(loc, tmp_dir))?;
        let mut tmp = tempfile::Builder::new()
            .prefix("incoming-")
            .tempfile_in(tmp_dir)
            .map_err(io_err(loc, tmp_dir))?;
        let (actual, len) =
            write(&mut WriteBehind::new(tmp.as_file_mut())).map_err(io_err(loc, source))?;
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
            .map_err(io_err(loc, tmp.path()))?
            .permissions();
        perms.set_readonly(true);
        tmp.as_file()
            .set_permissions(perms)
            .map_err(io_err(loc, tmp.path()))?;
        self.pending.add(tmp.into_temp_path(), self.dest.clone());
        Ok(())
    }
}

impl Upload for DirUpload {
    fn send(&self, source: &Path) -> Result<(), ArchiveError> {
        let mut input = fs_err::File::open(source).map_err(io_err(&self.location, source))?;
        self.receive(
            |out| {
                let mut writer = HashingWriter::new(out);
                hashing::copy(&mut input, &mut writer)?;
                let (actual, len, _) = writer.finish();
                Ok((actual, len))
            },
            source,
        )
    }

    fn send_checked(self: Box<Self>, bytes: &[u8], _tmp_dir: &Path) -> Result<(), ArchiveError> {
        let checked = (self.object.id, bytes.len() as u64);
        self.receive(
            |out| {
                out.write_all(bytes)?;
                Ok(checked)
            },
            &self.dest,
        )
    }

    fn adopt(self: Box<Self>, file: tempfile::TempPath) -> Result<(), ArchiveError> {
        let loc = self.location.as_str();
        let dir = self.dest.parent().expect("object paths have a parent");
        fs_err::create_dir_all(dir).map_err(io_err(loc, dir))?;
        let mut perms = fs_err::metadata(&file)
            .map_err(io_err(loc, &file))?
            .permissions();
        perms.set_readonly(true);
        fs_err::set_permissions(&file, perms).map_err(io_err(loc, &file))?;
        // Moved next to where it goes under a temporary name, so that
        // `flush` names it with a rename that cannot cross filesystems.
        let moved = tempfile::Builder::new()
            .prefix("incoming-")
            .make_in(dir, |path| std::fs::rename(&file, path));
        match moved {
            Ok(moved) => {
                // The file lives on under its new name; the old one is gone.
                let _ = file.keep();
                self.pending.add(moved.into_temp_path(), self.dest.clone());
                Ok(())
            }
            // Another filesystem: copied (and hashed once more) instead.
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => self.send(&file),
            Err(e) => Err(io_err(loc, dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_held_as_soon_as_its_put_returns_whatever_runs_alongside() {
        // A put's flush that finds nothing pending must still wait for a
        // flush under way that took its object (as in `fcache serve`).
        let dir = tempfile::tempdir().unwrap();
        let archive = DirArchive::new("test", dir.path().join("archive"));
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let (archive, dir) = (&archive, dir.path());
                s.spawn(move || {
                    let archive: &dyn Archive = archive;
                    for i in 0..60u8 {
                        let bytes = vec![t, i, 7];
                        let m = Marker::new(ObjectId::of_bytes(&bytes), 3);
                        let src = dir.join(format!("src-{t}-{i}"));
                        fs_err::write(&src, &bytes).unwrap();
                        assert!(archive.put(&m, &src).unwrap());
                        assert!(archive.contains(&m).unwrap(), "{t}/{i} not held after put");
                    }
                });
            }
        });
    }

    #[test]
    fn naming_syncs_each_directory_up_to_the_root_once_and_none_above() {
        let root = Path::new("/srv/archive");
        let dests: Vec<PathBuf> = [
            "objects/aa/bb/1",
            "objects/aa/bb/2",
            "objects/aa/cc/3",
            "objects/dd/ee/4",
        ]
        .iter()
        .map(|p| root.join(p))
        .collect();
        let dirs = directories_to_sync(root, dests.iter());
        let expected: Vec<PathBuf> = [
            "",
            "objects",
            "objects/aa",
            "objects/aa/bb",
            "objects/aa/cc",
            "objects/dd",
            "objects/dd/ee",
        ]
        .iter()
        .map(|p| {
            if p.is_empty() {
                root.to_owned()
            } else {
                root.join(p)
            }
        })
        .collect();
        assert_eq!(dirs, expected);
    }

    #[test]
    fn syncing_many_at_once_names_the_path_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..100).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            fs_err::write(p, b"x").unwrap();
        }
        let all: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        sync_all_at_once("test", all.clone()).unwrap();
        fs_err::remove_file(&paths[57]).unwrap();
        let e = sync_all_at_once("test", all).unwrap_err().to_string();
        assert!(e.contains("f57"), "{e}");
    }

    #[test]
    fn a_failed_flush_fails_its_own_puts_not_later_ones() {
        // `fcache serve` keeps one archive for its whole life: an object
        // that could not be stored once must not fail every upload after it.
        let dir = tempfile::tempdir().unwrap();
        let archive: &dyn Archive = &DirArchive::new("test", dir.path().join("archive"));
        let put = |bytes: &[u8]| {
            let m = Marker::new(ObjectId::of_bytes(bytes), bytes.len() as u64);
            let src = dir.path().join("src");
            fs_err::write(&src, bytes).unwrap();
            (m, archive.put(&m, &src))
        };
        // A directory stands where the first object goes: naming it fails.
        let blocked = b"blocked";
        let path = dir
            .path()
            .join("archive/objects")
            .join(ObjectId::of_bytes(blocked).fan_out_path(""));
        fs_err::create_dir_all(path.join("in-the-way")).unwrap();
        let (_, failed) = put(blocked);
        assert!(failed.is_err());
        let (m, stored) = put(b"fine");
        assert!(stored.unwrap());
        assert!(archive.contains(&m).unwrap());
    }

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
    fn an_adopted_file_is_moved_in_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let archive: &dyn Archive = &DirArchive::new("test", dir.path().join("archive"));
        let bytes = b"checked by the caller".to_vec();
        let m = Marker::new(ObjectId::of_bytes(&bytes), bytes.len() as u64);
        let received = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        fs_err::write(received.path(), &bytes).unwrap();
        let received = received.into_temp_path();
        let from = received.to_path_buf();
        let inode = std::os::unix::fs::MetadataExt::ino(&fs_err::metadata(&from).unwrap());
        assert!(archive.put_checked(&m, received).unwrap());
        assert!(!from.exists(), "the file was moved");
        let stored = dir
            .path()
            .join("archive/objects")
            .join(m.id.fan_out_path(""));
        let meta = fs_err::metadata(&stored).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), inode);
        assert!(meta.permissions().readonly());
        let mut out = Vec::new();
        archive.get(&m, &mut out).unwrap();
        assert_eq!(out, bytes);
        // Held already: nothing is taken.
        let again = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        fs_err::write(again.path(), &bytes).unwrap();
        assert!(!archive.put_checked(&m, again.into_temp_path()).unwrap());
    }

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
