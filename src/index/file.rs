//! What the formats kept in one plain file (CSV, JSON) share: the whole file
//! is read on first use, additions wait in memory, and `save` re-reads the
//! file under a lock, merges them in and replaces it atomically (temporary
//! file, sync, rename), so concurrent writers lose nothing and a killed one
//! leaves the old file.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use super::{Entry, Index, IndexError};
use crate::oid::ObjectId;

pub type Entries = BTreeMap<ObjectId, Entry>;

/// How one format reads and writes its file.
pub trait Codec {
    const FILE_NAME: &'static str;

    /// Parse the whole file; `path` is for errors.
    fn parse(path: &Path, bytes: &[u8]) -> Result<Entries, IndexError>;

    fn write_start(out: &mut dyn Write) -> io::Result<()>;
    fn write_entry(out: &mut dyn Write, entry: &Entry, first: bool) -> io::Result<()>;
    fn write_end(out: &mut dyn Write) -> io::Result<()>;
}

/// Add `entry` to `map`, merging with a record of the same identifier.
pub fn merge_into(map: &mut Entries, entry: &Entry) {
    map.entry(entry.id)
        .and_modify(|e| e.merge(entry))
        .or_insert_with(|| entry.clone());
}

/// The lock every writer of `file_name` in `dir` holds while it saves.
pub fn lock(dir: &Path, file_name: &str) -> Result<std::fs::File, IndexError> {
    let path = dir.join(format!("{file_name}.lock"));
    crate::lock::exclusive(&path).map_err(|source| IndexError::Write { path, source })
}

pub struct FileIndex<C: Codec> {
    dir: PathBuf,
    path: PathBuf,
    /// The file as read on first use (or as last saved).
    loaded: OnceCell<Entries>,
    /// What this process added since opening; merged into the file on save.
    pending: Entries,
    codec: PhantomData<C>,
}

impl<C: Codec> FileIndex<C> {
    /// Nothing is read yet: a process that only adds (the clean filter) reads
    /// the file once, when it saves.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        Ok(Self {
            dir: dir.to_owned(),
            path: dir.join(C::FILE_NAME),
            loaded: OnceCell::new(),
            pending: Entries::new(),
            codec: PhantomData,
        })
    }

    fn read(&self) -> Result<Entries, IndexError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => C::parse(&self.path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entries::new()),
            Err(source) => Err(IndexError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn loaded(&self) -> Result<&Entries, IndexError> {
        if let Some(entries) = self.loaded.get() {
            return Ok(entries);
        }
        let entries = self.read()?;
        Ok(self.loaded.get_or_init(|| entries))
    }

    fn write_err(&self) -> impl Fn(io::Error) -> IndexError + '_ {
        |source| IndexError::Write {
            path: self.path.clone(),
            source,
        }
    }

    /// Temporary files of writers that were killed: under the lock no live
    /// writer has one, so any that is there is left over.
    fn remove_leftover_temporaries(&self) {
        let prefix = format!(".{}.", C::FILE_NAME);
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                // Best effort: a leftover that cannot be removed harms nothing.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn write_file(&self, entries: &Entries) -> Result<(), IndexError> {
        let write_err = self.write_err();
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", C::FILE_NAME))
            .tempfile_in(&self.dir)
            .map_err(&write_err)?;
        {
            let mut out = io::BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
            C::write_start(&mut out).map_err(&write_err)?;
            let half = entries.len().div_ceil(2);
            for (n, entry) in entries.values().enumerate() {
                C::write_entry(&mut out, entry, n == 0).map_err(&write_err)?;
                if n + 1 == half {
                    out.flush().map_err(&write_err)?;
                    super::pause_in_save_if_asked();
                }
            }
            C::write_end(&mut out).map_err(&write_err)?;
            out.flush().map_err(&write_err)?;
        }
        tmp.as_file().sync_data().map_err(&write_err)?;
        tmp.persist(&self.path).map_err(|e| write_err(e.error))?;
        // The rename itself is durable only once the directory is synced.
        #[cfg(unix)]
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(&write_err)?;
        Ok(())
    }
}

impl<C: Codec> Index for FileIndex<C> {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, id: &ObjectId) -> Result<Option<Entry>, IndexError> {
        let mut found = self.loaded()?.get(id).cloned();
        if let Some(added) = self.pending.get(id) {
            match &mut found {
                Some(e) => e.merge(added),
                None => found = Some(added.clone()),
            }
        }
        Ok(found)
    }

    fn entries(&self) -> Result<Vec<Entry>, IndexError> {
        let mut all = self.loaded()?.clone();
        for entry in self.pending.values() {
            merge_into(&mut all, entry);
        }
        Ok(all.into_values().collect())
    }

    fn add(&mut self, entry: Entry) {
        merge_into(&mut self.pending, &entry);
    }

    fn save(&mut self) -> Result<(), IndexError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(self.write_err())?;
        // Another process may have saved since we loaded: hold the lock,
        // re-read, merge our additions in, and replace the file atomically.
        let _lock = lock(&self.dir, C::FILE_NAME)?;
        self.remove_leftover_temporaries();
        let mut merged = self.read()?;
        for entry in self.pending.values() {
            merge_into(&mut merged, entry);
        }
        self.write_file(&merged)?;
        self.loaded = OnceCell::from(merged);
        self.pending.clear();
        Ok(())
    }
}
