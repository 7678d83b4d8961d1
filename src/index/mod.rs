//! The repository's index: which identifiers it knows, with their size and
//! when each was added and last used.
//!
//! One small trait; every storage format implements it and is picked at run
//! time (`fcache.index`). Loading and creating are each format's own business
//! (its `open`); `open` here also carries entries over from any other format's
//! file it finds, so switching formats loses nothing.

mod csv;
mod file;
mod json;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};

pub use self::csv::CsvIndex;
pub use self::json::JsonIndex;
pub use self::sqlite::SqliteIndex;
use crate::clock::{self, Timestamp};
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

/// The command that recovers an unreadable index; every corruption error names it.
pub const REBUILD_HINT: &str = "run `fcache index rebuild` to recover it";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot read index {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index {path} is corrupt{}: {reason}; fix it by hand or {REBUILD_HINT}", at_text(.at))]
    Corrupt {
        path: PathBuf,
        /// Where in the file, when the format has such a place ("line 3, column 7").
        at: Option<String>,
        reason: String,
    },
    #[error(
        "index {path} has format version {version}, newer than this fcache reads ({supported}); upgrade fcache"
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: i64,
        supported: i64,
    },
    #[error("cannot write index {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index {path}: SQLite failed")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

fn at_text(at: &Option<String>) -> String {
    at.as_ref()
        .map(|at| format!(" at {at}"))
        .unwrap_or_default()
}

pub trait Index {
    /// The directory the index lives in (`.git/fcache`).
    fn dir(&self) -> &Path;

    /// The index's file in `dir` (which need not exist before the first save).
    fn path(&self) -> &Path;

    /// The entry of `id`, including what was added since opening.
    fn get(&self, id: &ObjectId) -> Result<Option<Entry>, IndexError>;

    fn contains(&self, id: &ObjectId) -> Result<bool, IndexError> {
        Ok(self.get(id)?.is_some())
    }

    /// Every known entry, including what was added since opening, ordered by identifier.
    fn entries(&self) -> Result<Vec<Entry>, IndexError>;

    /// Add an identifier with its timestamps; an entry already known is merged
    /// (earliest `added`, latest `last_used`). Nothing is written until `save`,
    /// so a process adding many entries writes once.
    fn add(&mut self, entry: Entry);

    /// Make every `add` since opening durable, writing only what changed where
    /// the format allows it. Safe against other processes saving the same
    /// index at the same time (nothing either added is lost) and against being
    /// killed (the old state or the new, never a torn file).
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
    Json,
    Sqlite,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Csv, Format::Json, Format::Sqlite];

    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Sqlite => "sqlite",
        }
    }

    /// The file this format keeps in `.git/fcache`.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Csv => csv::FILE_NAME,
            Format::Json => json::FILE_NAME,
            Format::Sqlite => sqlite::FILE_NAME,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        Format::ALL
            .into_iter()
            .find(|f| f.name() == lower)
            .ok_or_else(|| format!("unknown index format {s:?}: expected csv, json or sqlite"))
    }
}

/// Open the index of the format asked for, in `dir`, first carrying over the
/// entries of any other format's file there (see `carry_over`).
pub fn open(dir: &Path, format: Format) -> Result<Box<dyn Index>, IndexError> {
    carry_over(dir, format)?;
    open_only(dir, format)
}

fn open_only(dir: &Path, format: Format) -> Result<Box<dyn Index>, IndexError> {
    Ok(match format {
        Format::Csv => Box::new(CsvIndex::open(dir)?),
        Format::Json => Box::new(JsonIndex::open(dir)?),
        Format::Sqlite => Box::new(SqliteIndex::open(dir)?),
    })
}

/// Holds off every writer of one format's file while it is carried over or
/// set aside; the lock is released when this is dropped (never read).
#[allow(dead_code)]
enum WriterLock {
    File(std::fs::File),
    Sqlite(sqlite::WriteLock),
    /// The file is too damaged to lock (only when setting it aside).
    None,
}

fn lock_writers(dir: &Path, format: Format) -> Result<WriterLock, IndexError> {
    Ok(match format {
        Format::Csv => WriterLock::File(file::lock(dir, csv::FILE_NAME)?),
        Format::Json => WriterLock::File(file::lock(dir, json::FILE_NAME)?),
        Format::Sqlite => WriterLock::Sqlite(sqlite::WriteLock::acquire(dir)?),
    })
}

/// Remove a format's file (and what belongs to it) once its entries are safe elsewhere.
fn remove_files(dir: &Path, format: Format) -> Result<(), IndexError> {
    let path = dir.join(format.file_name());
    let companions = match format {
        Format::Sqlite => vec![sqlite::journal_path(&path)],
        Format::Csv | Format::Json => Vec::new(),
    };
    for p in std::iter::once(&path).chain(&companions) {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(IndexError::Write { path, source }),
        }
    }
    Ok(())
}

/// Move the entries of every other format's file in `dir` into `format`'s, then
/// remove those files; returns the files carried over.
///
/// The target is saved before a source is removed, so a process killed in
/// between leaves both and the next run merges again (merging is idempotent).
/// Each source's writers are held off from reading it until it is removed, so
/// a process still configured for the old format either saved before (and is
/// carried over) or saves after into a new file (carried over next time).
pub fn carry_over(dir: &Path, format: Format) -> Result<Vec<PathBuf>, IndexError> {
    let exists = |f: Format| dir.join(f.file_name()).exists();
    if !Format::ALL.into_iter().any(|f| f != format && exists(f)) {
        return Ok(Vec::new());
    }
    // One carry-over at a time: two processes configured for different
    // formats would otherwise take each other's source locks in opposite order.
    let serial = dir.join("index.carry-over.lock");
    let _serial = crate::lock::exclusive(&serial).map_err(|source| IndexError::Write {
        path: serial.clone(),
        source,
    })?;
    let mut target = open_only(dir, format)?;
    let mut sources = Vec::new();
    for f in Format::ALL
        .into_iter()
        .filter(|&f| f != format && exists(f))
    {
        let lock = lock_writers(dir, f)?;
        // Checked under the lock: another process may just have carried it over.
        if !exists(f) {
            continue;
        }
        for entry in open_only(dir, f)?.entries()? {
            target.add(entry);
        }
        sources.push((f, lock));
    }
    target.save()?;
    let mut moved = Vec::new();
    for (f, lock) in sources {
        remove_files(dir, f)?;
        drop(lock);
        moved.push(dir.join(f.file_name()));
    }
    Ok(moved)
}

/// An index file that could not be read, moved out of the way by `set_aside_unreadable`.
#[derive(Debug)]
pub struct SetAside {
    pub from: PathBuf,
    pub to: PathBuf,
    pub why: IndexError,
}

/// Move every index file in `dir` that is corrupt to `<file>.corrupt-<time>`
/// (kept, never deleted), so that the index can be rebuilt around it.
/// Any other failure to read (permissions, a newer format version) is an error.
pub fn set_aside_unreadable(dir: &Path, now: Timestamp) -> Result<Vec<SetAside>, IndexError> {
    let mut out = Vec::new();
    for f in Format::ALL {
        let from = dir.join(f.file_name());
        if !from.exists() {
            continue;
        }
        // A file too damaged to take SQLite's lock on is set aside unlocked.
        let lock = match lock_writers(dir, f) {
            Ok(lock) => lock,
            Err(IndexError::Corrupt { .. }) => WriterLock::None,
            Err(e) => return Err(e),
        };
        let why = match open_only(dir, f).and_then(|index| index.entries()) {
            Ok(_) => continue,
            Err(why @ IndexError::Corrupt { .. }) => why,
            Err(e) => return Err(e),
        };
        let stamp = clock::format(&now).replace(':', "");
        let base = format!("{}.corrupt-{stamp}", f.file_name());
        // Never over an earlier one set aside in the same second.
        let to = (0..)
            .map(|n| match n {
                0 => dir.join(&base),
                n => dir.join(format!("{base}-{n}")),
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        let moved = |from: &Path, to: &Path| {
            fs_err::rename(from, to).map_err(|source| IndexError::Write {
                path: from.to_owned(),
                source,
            })
        };
        moved(&from, &to)?;
        if f == Format::Sqlite {
            // A journal left next to a new database would be played back into it.
            let journal = sqlite::journal_path(&from);
            if journal.exists() {
                moved(&journal, &sqlite::journal_path(&to))?;
            }
        }
        drop(lock);
        out.push(SetAside { from, to, why });
    }
    Ok(out)
}

/// Test hook for the kill-mid-save tests: with `FCACHE_TEST_PAUSE_IN_SAVE=FILE`,
/// a save that is half written creates FILE and sleeps, so a test can kill
/// the process at exactly that point.
fn pause_in_save_if_asked() {
    if let Some(signal) = crate::config::test_pause_in_save() {
        // Best effort: the test waits for this file and fails if it never comes.
        let _ = std::fs::write(&signal, b"paused\n");
        std::thread::sleep(std::time::Duration::from_secs(60));
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

    fn id(n: u32) -> ObjectId {
        ObjectId::of_bytes(&n.to_le_bytes())
    }

    pub fn run(open: &(dyn Fn(&Path) -> Box<dyn Index> + Sync)) {
        created_on_first_use(open);
        round_trips_entries_and_timestamps(open);
        last_used_moves_forward_and_added_stays(open);
        known_and_unknown_identifiers(open);
        lists_in_identifier_order(open);
        two_writers_from_one_state_both_keep_their_additions(open);
        concurrent_writers_lose_nothing(open);
    }

    fn created_on_first_use(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let root = tempfile::tempdir().unwrap();
        // `.git/fcache` itself does not exist yet in a new repository.
        let dir = root.path().join("fcache");
        let mut index = open(&dir);
        assert_eq!(index.dir(), dir);
        assert_eq!(index.path().parent(), Some(dir.as_path()));
        assert!(index.entries().unwrap().is_empty());
        // Nothing to save writes nothing: read-only commands leave no file.
        index.save().unwrap();
        assert!(!index.path().exists());
        index.touch(id(1), 1, t("2026-01-01T00:00:00Z"));
        index.save().unwrap();
        assert!(index.path().is_file());
        assert_eq!(open(&dir).entries().unwrap().len(), 1);
    }

    fn round_trips_entries_and_timestamps(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = open(dir.path());
        let written = vec![
            Entry {
                id: id(1),
                size: 0,
                added: t("1999-12-31T23:59:59Z"),
                last_used: t("2026-06-30T12:00:00Z"),
            },
            Entry {
                id: id(2),
                size: u64::MAX >> 1,
                // Another offset is stored as the same instant in UTC.
                added: t("2026-11-24T10:00:00+02:00"),
                last_used: t("2026-11-24T08:00:01Z"),
            },
        ];
        for e in &written {
            index.add(e.clone());
        }
        // What was added is visible before it is saved, and after.
        let mut expected = written.clone();
        expected.sort_by_key(|e| e.id);
        assert_eq!(index.entries().unwrap(), expected);
        // Adding writes nothing: a process saves its additions once.
        assert!(open(dir.path()).entries().unwrap().is_empty());
        index.save().unwrap();
        assert_eq!(index.entries().unwrap(), expected);
        let reopened = open(dir.path());
        assert_eq!(reopened.entries().unwrap(), expected);
        assert_eq!(
            reopened.get(&id(2)).unwrap().unwrap().added,
            t("2026-11-24T08:00:00Z")
        );
    }

    fn last_used_moves_forward_and_added_stays(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = open(dir.path());
        index.touch(id(1), 1, t("2026-01-01T00:00:00Z"));
        index.save().unwrap();

        let mut index = open(dir.path());
        index.touch(id(1), 1, t("2026-01-03T00:00:00Z"));
        let seen = index.get(&id(1)).unwrap().unwrap();
        assert_eq!(seen.last_used, t("2026-01-03T00:00:00Z"));
        index.save().unwrap();
        let e = open(dir.path()).get(&id(1)).unwrap().unwrap();
        assert_eq!(e.added, t("2026-01-01T00:00:00Z"));
        assert_eq!(e.last_used, t("2026-01-03T00:00:00Z"));

        // A use recorded late with an earlier time moves nothing backwards.
        let mut index = open(dir.path());
        index.touch(id(1), 1, t("2026-01-02T00:00:00Z"));
        index.save().unwrap();
        let e = open(dir.path()).get(&id(1)).unwrap().unwrap();
        assert_eq!(e.added, t("2026-01-01T00:00:00Z"));
        assert_eq!(e.last_used, t("2026-01-03T00:00:00Z"));
        assert_eq!(open(dir.path()).entries().unwrap().len(), 1);
    }

    fn known_and_unknown_identifiers(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = open(dir.path());
        assert!(!index.contains(&id(1)).unwrap());
        assert_eq!(index.get(&id(1)).unwrap(), None);
        index.touch(id(1), 7, t("2026-01-01T00:00:00Z"));
        assert!(index.contains(&id(1)).unwrap());
        index.save().unwrap();
        let reopened = open(dir.path());
        assert!(reopened.contains(&id(1)).unwrap());
        assert_eq!(reopened.get(&id(1)).unwrap().unwrap().size, 7);
        assert!(!reopened.contains(&id(2)).unwrap());
        assert_eq!(reopened.get(&id(2)).unwrap(), None);
    }

    fn lists_in_identifier_order(open: &dyn Fn(&Path) -> Box<dyn Index>) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = open(dir.path());
        for n in 0..50 {
            index.touch(id(n), u64::from(n), t("2026-01-01T00:00:00Z"));
        }
        index.save().unwrap();
        let mut index = open(dir.path());
        for n in 50..100 {
            index.touch(id(n), u64::from(n), t("2026-01-02T00:00:00Z"));
        }
        // Saved and unsaved entries interleave in one ordered list.
        let listed: Vec<ObjectId> = index.entries().unwrap().iter().map(|e| e.id).collect();
        let mut expected: Vec<ObjectId> = (0..100).map(id).collect();
        expected.sort();
        assert_eq!(listed, expected);
        index.save().unwrap();
        let listed: Vec<ObjectId> = open(dir.path())
            .entries()
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(listed, expected);
    }

    fn two_writers_from_one_state_both_keep_their_additions(
        open: &dyn Fn(&Path) -> Box<dyn Index>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = open(dir.path());
        index.touch(id(1), 1, t("2026-01-01T00:00:00Z"));
        index.save().unwrap();
        let mut first = open(dir.path());
        let mut second = open(dir.path());
        // Both read the state before either saves.
        assert_eq!(first.entries().unwrap().len(), 1);
        assert_eq!(second.entries().unwrap().len(), 1);
        first.touch(id(2), 2, t("2026-01-04T00:00:00Z"));
        second.touch(id(3), 3, t("2026-01-05T00:00:00Z"));
        second.touch(id(1), 1, t("2026-01-06T00:00:00Z"));
        first.save().unwrap();
        second.save().unwrap();
        let merged = open(dir.path());
        for n in 1..=3 {
            assert!(merged.contains(&id(n)).unwrap(), "lost {n}");
        }
        assert_eq!(
            merged.get(&id(1)).unwrap().unwrap().last_used,
            t("2026-01-06T00:00:00Z")
        );
    }

    fn concurrent_writers_lose_nothing(open: &(dyn Fn(&Path) -> Box<dyn Index> + Sync)) {
        let dir = tempfile::tempdir().unwrap();
        let (writers, rounds, per_round) = (4u32, 5u32, 20u32);
        std::thread::scope(|s| {
            for w in 0..writers {
                let dir = dir.path();
                s.spawn(move || {
                    for r in 0..rounds {
                        let mut index = open(dir);
                        for k in 0..per_round {
                            let n = (w * rounds + r) * per_round + k;
                            index.touch(id(n), 1, t("2026-01-01T00:00:00Z"));
                        }
                        index.save().unwrap();
                    }
                });
            }
        });
        let all = open(dir.path()).entries().unwrap();
        assert_eq!(all.len() as u32, writers * rounds * per_round);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        clock::parse(s).unwrap()
    }

    #[test]
    fn format_names_parse_and_unknown_ones_are_refused() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
            assert_eq!(f.name().to_uppercase().parse::<Format>(), Ok(f));
        }
        let err = "yaml".parse::<Format>().unwrap_err();
        assert!(err.contains("csv, json or sqlite"), "{err}");
    }

    #[test]
    fn switching_between_every_pair_of_formats_keeps_every_entry() {
        for from in Format::ALL {
            for to in Format::ALL.into_iter().filter(|&f| f != from) {
                let dir = tempfile::tempdir().unwrap();
                let mut index = open(dir.path(), from).unwrap();
                for n in 0u32..30 {
                    index.touch(
                        ObjectId::of_bytes(&n.to_le_bytes()),
                        u64::from(n),
                        t("2026-01-01T00:00:00Z"),
                    );
                }
                index.save().unwrap();
                let before = index.entries().unwrap();

                let switched = open(dir.path(), to).unwrap();
                assert_eq!(switched.entries().unwrap(), before, "{from} -> {to}");
                assert!(
                    !dir.path().join(from.file_name()).exists(),
                    "{from} -> {to}"
                );
                assert!(dir.path().join(to.file_name()).exists(), "{from} -> {to}");
                // And back again.
                let back = open(dir.path(), from).unwrap();
                assert_eq!(back.entries().unwrap(), before, "{to} -> {from}");
            }
        }
    }

    #[test]
    fn files_of_several_formats_are_merged_into_the_configured_one() {
        // What an interrupted carry-over leaves: the target saved, a source not yet removed.
        let dir = tempfile::tempdir().unwrap();
        let a = ObjectId::of_bytes(b"a");
        let b = ObjectId::of_bytes(b"b");
        let mut csv = open_only(dir.path(), Format::Csv).unwrap();
        csv.touch(a, 1, t("2026-01-01T00:00:00Z"));
        csv.touch(b, 2, t("2026-01-01T00:00:00Z"));
        csv.save().unwrap();
        let mut sqlite = open_only(dir.path(), Format::Sqlite).unwrap();
        sqlite.touch(a, 1, t("2026-01-05T00:00:00Z"));
        sqlite.save().unwrap();
        let mut json = open_only(dir.path(), Format::Json).unwrap();
        json.touch(b, 2, t("2025-12-01T00:00:00Z"));
        json.save().unwrap();

        let moved = carry_over(dir.path(), Format::Json).unwrap();
        assert_eq!(moved.len(), 2);
        let merged = open(dir.path(), Format::Json).unwrap();
        let ea = merged.get(&a).unwrap().unwrap();
        assert_eq!(
            (ea.added, ea.last_used),
            (t("2026-01-01T00:00:00Z"), t("2026-01-05T00:00:00Z"))
        );
        let eb = merged.get(&b).unwrap().unwrap();
        assert_eq!(
            (eb.added, eb.last_used),
            (t("2025-12-01T00:00:00Z"), t("2026-01-01T00:00:00Z"))
        );
        for f in [Format::Csv, Format::Sqlite] {
            assert!(!dir.path().join(f.file_name()).exists());
        }
        assert!(carry_over(dir.path(), Format::Json).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_source_stops_the_carry_over_and_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join(Format::Csv.file_name());
        std::fs::write(&csv, "identifier,size,added,last_used\nbad\n").unwrap();
        let err = open(dir.path(), Format::Sqlite).err().unwrap().to_string();
        assert!(err.contains(&csv.display().to_string()), "{err}");
        assert!(err.contains("fcache index rebuild"), "{err}");
        assert!(csv.exists());
    }

    #[test]
    fn corrupt_files_are_set_aside_and_good_ones_left() {
        let dir = tempfile::tempdir().unwrap();
        let now = t("2026-03-04T05:06:07Z");
        let mut good = open_only(dir.path(), Format::Csv).unwrap();
        good.touch(ObjectId::of_bytes(b"a"), 1, now);
        good.save().unwrap();
        std::fs::write(dir.path().join(Format::Json.file_name()), "{\"version\":1,").unwrap();
        std::fs::write(
            dir.path().join(Format::Sqlite.file_name()),
            "not a database at all, no",
        )
        .unwrap();
        std::fs::write(dir.path().join("index.sqlite-journal"), "junk").unwrap();

        let aside = set_aside_unreadable(dir.path(), now).unwrap();
        let names: Vec<String> = aside
            .iter()
            .map(|s| s.to.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "index.json.corrupt-2026-03-04T050607Z",
                "index.sqlite.corrupt-2026-03-04T050607Z"
            ]
        );
        for s in &aside {
            assert!(s.to.exists() && !s.from.exists());
            assert!(s.why.to_string().contains(&s.from.display().to_string()));
        }
        assert!(!dir.path().join("index.sqlite-journal").exists());
        assert!(dir.path().join(Format::Csv.file_name()).exists());
        assert_eq!(
            open(dir.path(), Format::Csv)
                .unwrap()
                .entries()
                .unwrap()
                .len(),
            1
        );
    }
}
