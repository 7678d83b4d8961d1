//! The repository's index: which identifiers it knows, with their size and
//! when each was added and last used.
//!
//! One small trait; every storage format implements it and is picked at run
//! time. Loading and creating are each format's own business (its `open`).

mod csv;

use std::path::{Path, PathBuf};

pub use self::csv::CsvIndex;
use crate::clock::Timestamp;
use crate::oid::ObjectId;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub id: ObjectId,
    pub size: u64,
    pub added: Timestamp,
    pub last_used: Timestamp,
}

impl Entry {
    pub fn new(id: ObjectId, size: u64, now: Timestamp) -> Self {
        Self {
            id,
            size,
            added: now,
            last_used: now,
        }
    }

    /// Combine two records of one identifier: the earliest `added`, the latest `last_used`.
    pub fn merge(&mut self, other: &Entry) {
        self.added = self.added.min(other.added);
        self.last_used = self.last_used.max(other.last_used);
        self.size = other.size;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot read index {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index {path} is corrupt at line {line}: {reason}; fix or delete that line")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("cannot write index {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub trait Index {
    /// The directory the index lives in (`.git/fcache`).
    fn dir(&self) -> &Path;

    fn get(&self, id: &ObjectId) -> Option<Entry>;

    fn contains(&self, id: &ObjectId) -> bool {
        self.get(id).is_some()
    }

    /// Every known entry, ordered by identifier.
    fn entries(&self) -> Vec<Entry>;

    /// Add an identifier with its timestamps; an entry already known is merged
    /// (earliest `added`, latest `last_used`).
    fn add(&mut self, entry: Entry);

    /// Make every `add` since opening durable. Safe against other processes
    /// saving the same index at the same time: nothing either added is lost.
    fn save(&mut self) -> Result<(), IndexError>;

    /// Record that `id` was used now, adding it if it is new.
    fn touch(&mut self, id: ObjectId, size: u64, now: Timestamp) {
        self.add(Entry::new(id, size, now));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            other => Err(format!(
                "unknown index format {other:?}: this version supports csv"
            )),
        }
    }
}

/// Open the index of the format asked for, in `dir`.
pub fn open(dir: &Path, format: Format) -> Result<Box<dyn Index>, IndexError> {
    match format {
        Format::Csv => Ok(Box::new(CsvIndex::open(dir)?)),
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every format must show; each format's tests call `run`.
    use super::*;
    use crate::clock;

    fn t(s: &str) -> Timestamp {
        clock::parse(s).unwrap()
    }

    pub fn run(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let dir = tempfile::tempdir().unwrap();
        let a = ObjectId::of_bytes(b"a");
        let b = ObjectId::of_bytes(b"b");

        let mut index = open(dir.path());
        assert_eq!(index.dir(), dir.path());
        assert!(index.entries().is_empty());
        assert!(!index.contains(&a));

        index.touch(a, 1, t("2026-01-01T00:00:00Z"));
        index.touch(b, 2, t("2026-01-02T00:00:00Z"));
        index.touch(a, 1, t("2026-01-03T00:00:00Z"));
        index.save().unwrap();

        let reopened = open(dir.path());
        assert!(reopened.contains(&a));
        assert!(!reopened.contains(&ObjectId::of_bytes(b"c")));
        let ea = reopened.get(&a).unwrap();
        assert_eq!(ea.added, t("2026-01-01T00:00:00Z"));
        assert_eq!(ea.last_used, t("2026-01-03T00:00:00Z"));
        assert_eq!(ea.size, 1);
        let mut ids: Vec<_> = reopened.entries().iter().map(|e| e.id).collect();
        let mut expected = vec![a, b];
        expected.sort();
        ids.sort();
        assert_eq!(ids, expected);

        // Two writers that opened the same state both keep their additions.
        let mut first = open(dir.path());
        let mut second = open(dir.path());
        let c = ObjectId::of_bytes(b"c");
        let d = ObjectId::of_bytes(b"d");
        first.touch(c, 3, t("2026-01-04T00:00:00Z"));
        second.touch(d, 4, t("2026-01-05T00:00:00Z"));
        first.save().unwrap();
        second.save().unwrap();
        let merged = open(dir.path());
        for id in [a, b, c, d] {
            assert!(merged.contains(&id), "lost {id}");
        }
    }
}
