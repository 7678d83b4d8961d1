//! The CSV index, `.git/fcache/index.csv`, with the header
//! `identifier,size,added,last_used`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Entry, Index, IndexError};
use crate::clock;
use crate::oid::ObjectId;

pub const FILE_NAME: &str = "index.csv";
const HEADER: [&str; 4] = ["identifier", "size", "added", "last_used"];

pub struct CsvIndex {
    dir: PathBuf,
    entries: BTreeMap<ObjectId, Entry>,
    /// What this process added since opening; merged into the file on save.
    pending: BTreeMap<ObjectId, Entry>,
}

impl CsvIndex {
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let path = dir.join(FILE_NAME);
        Ok(Self {
            dir: dir.to_owned(),
            entries: read(&path)?,
            pending: BTreeMap::new(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }
}

fn read(path: &Path) -> Result<BTreeMap<ObjectId, Entry>, IndexError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(IndexError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |line: u64, reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        line,
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(file);
    let mut entries = BTreeMap::new();
    for (n, record) in reader.records().enumerate() {
        let line = n as u64 + 1;
        let record = record.map_err(|e| corrupt(line, e.to_string()))?;
        if line == 1 {
            if record.iter().ne(HEADER) {
                return Err(corrupt(
                    line,
                    format!("expected the header {:?}", HEADER.join(",")),
                ));
            }
            continue;
        }
        if record.len() != HEADER.len() {
            return Err(corrupt(line, format!("expected {} fields", HEADER.len())));
        }
        let id: ObjectId = record[0]
            .parse()
            .map_err(|e| corrupt(line, format!("{e}")))?;
        let size = record[1]
            .parse()
            .map_err(|_| corrupt(line, format!("invalid size {:?}", &record[1])))?;
        let time = |i: usize| {
            clock::parse(&record[i]).ok_or_else(|| {
                corrupt(
                    line,
                    format!("invalid {} timestamp {:?}", HEADER[i], &record[i]),
                )
            })
        };
        let entry = Entry {
            id,
            size,
            added: time(2)?,
            last_used: time(3)?,
        };
        entries
            .entry(id)
            .and_modify(|e: &mut Entry| e.merge(&entry))
            .or_insert(entry);
    }
    Ok(entries)
}

impl Index for CsvIndex {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn get(&self, id: &ObjectId) -> Option<Entry> {
        self.entries.get(id).cloned()
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.values().cloned().collect()
    }

    fn add(&mut self, entry: Entry) {
        for map in [&mut self.entries, &mut self.pending] {
            map.entry(entry.id)
                .and_modify(|e| e.merge(&entry))
                .or_insert_with(|| entry.clone());
        }
    }

    fn save(&mut self) -> Result<(), IndexError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path();
        let write_err = |source| IndexError::Write {
            path: path.clone(),
            source,
        };
        fs_err::create_dir_all(&self.dir).map_err(write_err)?;
        // Another process may have saved since we loaded: hold the lock, re-read,
        // merge our additions in, and replace the file atomically.
        let _lock = crate::lock::exclusive(&self.dir.join("index.lock")).map_err(write_err)?;
        let mut merged = read(&path)?;
        for entry in self.pending.values() {
            merged
                .entry(entry.id)
                .and_modify(|e| e.merge(entry))
                .or_insert_with(|| entry.clone());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".index.csv.")
            .tempfile_in(&self.dir)
            .map_err(write_err)?;
        {
            let mut w = csv::Writer::from_writer(std::io::BufWriter::new(tmp.as_file_mut()));
            let csv_err = |e: csv::Error| write_err(e.into());
            w.write_record(HEADER).map_err(csv_err)?;
            for e in merged.values() {
                w.write_record([
                    e.id.to_hex(),
                    e.size.to_string(),
                    clock::format(&e.added),
                    clock::format(&e.last_used),
                ])
                .map_err(csv_err)?;
            }
            w.flush().map_err(write_err)?;
        }
        tmp.as_file().sync_data().map_err(write_err)?;
        tmp.persist(&path).map_err(|e| write_err(e.error))?;
        self.entries = merged;
        self.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| Box::new(CsvIndex::open(dir).unwrap()));
    }

    #[test]
    fn writes_the_documented_header_and_rfc3339_utc() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = CsvIndex::open(dir.path()).unwrap();
        let now = clock::parse("2026-11-24T10:00:00+02:00").unwrap();
        index.touch(ObjectId::of_bytes(b"x"), 1, now);
        index.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(
            text,
            format!(
                "identifier,size,added,last_used\n{},1,2026-11-24T08:00:00Z,2026-11-24T08:00:00Z\n",
                ObjectId::of_bytes(b"x")
            )
        );
    }

    #[test]
    fn corrupt_file_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            "identifier,size,added,last_used\nnot-an-id,1,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z\n",
        )
        .unwrap();
        let err = CsvIndex::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }
}
