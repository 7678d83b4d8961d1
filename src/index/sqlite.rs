//! The SQLite index, `.git/fcache/index.sqlite`: one table,
//!
//! ```sql
//! CREATE TABLE entries (
//!     identifier TEXT PRIMARY KEY NOT NULL,  -- 64 lowercase hex digits
//!     size       INTEGER NOT NULL,
//!     added      TEXT NOT NULL,              -- RFC 3339 UTC, 2026-01-02T03:04:05Z
//!     last_used  TEXT NOT NULL
//! ) WITHOUT ROWID;
//! ```
//!
//! with `PRAGMA user_version = 1`. Nothing is loaded on open: lookups and
//! listings query the file, and `save` writes only the entries added since
//! opening, in one transaction (SQLite's journal makes a killed save roll
//! back; its locks and a busy timeout let concurrent writers take turns).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{Entry, Index, IndexError};
use crate::clock;
use crate::oid::ObjectId;

pub const FILE_NAME: &str = "index.sqlite";
pub const VERSION: i64 = 1;

/// Long enough for any other fcache process's save to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

const CREATE: &str = "CREATE TABLE IF NOT EXISTS entries (
    identifier TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    added TEXT NOT NULL,
    last_used TEXT NOT NULL
) WITHOUT ROWID";

// Timestamps are written in one canonical form (UTC, `Z`, whole seconds),
// which sorts as text, so SQLite merges them without parsing.
const UPSERT: &str = "INSERT INTO entries (identifier, size, added, last_used)
VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (identifier) DO UPDATE SET
    size = excluded.size,
    added = min(added, excluded.added),
    last_used = max(last_used, excluded.last_used)";

const COLUMNS: &str = "SELECT identifier, size, added, last_used FROM entries";

/// Where SQLite keeps a transaction's rollback journal for the database at `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-journal");
    PathBuf::from(name)
}

fn sql_error(path: &Path, source: rusqlite::Error) -> IndexError {
    match source.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => IndexError::Corrupt {
            path: path.to_owned(),
            at: None,
            reason: source.to_string(),
        },
        _ => IndexError::Sqlite {
            path: path.to_owned(),
            source,
        },
    }
}

fn connect(path: &Path, create: bool) -> Result<Connection, IndexError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sql_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error(path, e))?;
    Ok(conn)
}

/// Which file a connection opened, to notice when the path was since removed
/// or replaced (by a carry-over to another format, or a rebuild).
#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    path.exists().then_some((0, 0))
}

struct Db {
    conn: Connection,
    identity: Option<(u64, u64)>,
    /// The table exists (a file just created has none until the first save).
    has_table: bool,
}

impl Db {
    fn open(path: &Path, create: bool) -> Result<Self, IndexError> {
        let conn = connect(path, create)?;
        let has_table = check_schema(path, &conn)?;
        Ok(Self {
            identity: file_identity(path),
            conn,
            has_table,
        })
    }
}

/// Whether the file holds fcache's table: a new file holds nothing yet
/// (`false`); anything else must be ours.
fn check_schema(path: &Path, conn: &Connection) -> Result<bool, IndexError> {
    // One statement, one snapshot: another process may be creating the
    // table right now, and the version and the table must be seen together.
    let (version, objects, has_table): (i64, i64, bool) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), \
                    (SELECT count(*) FROM sqlite_schema), \
                    (SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'entries') > 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| sql_error(path, e))?;
    if version > VERSION {
        return Err(IndexError::UnsupportedVersion {
            path: path.to_owned(),
            version,
            supported: VERSION,
        });
    }
    let corrupt = |reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        at: None,
        reason,
    };
    match (version, has_table) {
        (0, false) if objects == 0 => Ok(false),
        (VERSION, true) => conn
            .prepare(&format!("{COLUMNS} LIMIT 0"))
            .map(|_| true)
            .map_err(|e| corrupt(format!("the entries table is not fcache's: {e}"))),
        (VERSION, false) => Err(corrupt("the entries table is missing".to_owned())),
        (v, _) => Err(corrupt(format!(
            "not an fcache index (user_version {v}, expected {VERSION})"
        ))),
    }
}

fn read_row(path: &Path, row: &rusqlite::Row<'_>) -> Result<Entry, IndexError> {
    let corrupt = |at: String, reason: String| IndexError::Corrupt {
        path: path.to_owned(),
        at: Some(at),
        reason,
    };
    let text = |i: usize| -> Result<String, IndexError> {
        row.get::<_, String>(i).map_err(|e| {
            corrupt(
                format!("column {i} of a row"),
                format!("expected text: {e}"),
            )
        })
    };
    let identifier = text(0)?;
    let at = || format!("the row for identifier {identifier:?}");
    let id: ObjectId = identifier
        .parse()
        .map_err(|e: crate::oid::InvalidObjectId| corrupt(at(), e.to_string()))?;
    let size = row
        .get::<_, i64>(1)
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| corrupt(at(), "invalid size".to_owned()))?;
    let time = |i: usize, name: &str| {
        let s = text(i)?;
        clock::parse(&s).ok_or_else(|| {
            corrupt(
                at(),
                format!("invalid {name} timestamp {s:?} (expected RFC 3339)"),
            )
        })
    };
    Ok(Entry {
        id,
        size,
        added: time(2, "added")?,
        last_used: time(3, "last_used")?,
    })
}

pub struct SqliteIndex {
    dir: PathBuf,
    path: PathBuf,
    /// `None` until the file exists: read-only commands create nothing.
    db: Option<Db>,
    /// What this process added since opening; written on save.
    pending: BTreeMap<ObjectId, Entry>,
}

impl SqliteIndex {
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let path = dir.join(FILE_NAME);
        let db = if path.exists() {
            Some(Db::open(&path, false)?)
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_owned(),
            path,
            db,
            pending: BTreeMap::new(),
        })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> IndexError + '_ {
        |e| sql_error(&self.path, e)
    }

    /// One attempt at writing `pending`; `false` if the file was replaced
    /// under this connection (the caller reopens and tries again).
    fn write_pending(&mut self) -> Result<bool, IndexError> {
        let path = self.path.clone();
        let sql = |e| sql_error(&path, e);
        let db = match &mut self.db {
            Some(db) => db,
            None => self.db.insert(Db::open(&path, true)?),
        };
        let opened = db.identity;
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Holding the write lock: if the file at `path` is no longer the one
        // opened, writing here would go to a removed file and be lost.
        if opened.is_none() || file_identity(&path) != opened {
            drop(tx);
            self.db = None;
            return Ok(false);
        }
        tx.execute_batch(CREATE).map_err(sql)?;
        tx.pragma_update(None, "user_version", VERSION)
            .map_err(sql)?;
        {
            let mut upsert = tx.prepare_cached(UPSERT).map_err(sql)?;
            let half = self.pending.len().div_ceil(2);
            for (n, e) in self.pending.values().enumerate() {
                upsert
                    .execute(rusqlite::params![
                        e.id.to_hex(),
                        // SQLite integers are i64; no file reaches 8 EiB.
                        i64::try_from(e.size).unwrap_or(i64::MAX),
                        clock::format(&e.added),
                        clock::format(&e.last_used),
                    ])
                    .map_err(sql)?;
                if n + 1 == half {
                    super::pause_in_save_if_asked();
                }
            }
        }
        tx.commit().map_err(sql)?;
        db.has_table = true;
        Ok(true)
    }
}

impl Index for SqliteIndex {
    fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, id: &ObjectId) -> Result<Option<Entry>, IndexError> {
        let mut found = match &self.db {
            Some(db) if db.has_table => {
                let mut stmt = db
                    .conn
                    .prepare_cached(&format!("{COLUMNS} WHERE identifier = ?1"))
                    .map_err(self.sql())?;
                let mut rows = stmt.query([id.to_hex()]).map_err(self.sql())?;
                match rows.next().map_err(self.sql())? {
                    Some(row) => Some(read_row(&self.path, row)?),
                    None => None,
                }
            }
            _ => None,
        };
        if let Some(added) = self.pending.get(id) {
            match &mut found {
                Some(e) => e.merge(added),
                None => found = Some(added.clone()),
            }
        }
        Ok(found)
    }

    fn entries(&self) -> Result<Vec<Entry>, IndexError> {
        let mut all = BTreeMap::new();
        if let Some(db) = self.db.as_ref().filter(|db| db.has_table) {
            let mut stmt = db
                .conn
                .prepare(&format!("{COLUMNS} ORDER BY identifier"))
                .map_err(self.sql())?;
            let mut rows = stmt.query([]).map_err(self.sql())?;
            while let Some(row) = rows.next().map_err(self.sql())? {
                let entry = read_row(&self.path, row)?;
                super::file::merge_into(&mut all, &entry);
            }
        }
        for entry in self.pending.values() {
            super::file::merge_into(&mut all, entry);
        }
        Ok(all.into_values().collect())
    }

    fn add(&mut self, entry: Entry) {
        super::file::merge_into(&mut self.pending, &entry);
    }

    fn save(&mut self) -> Result<(), IndexError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| IndexError::Write {
            path: self.path.clone(),
            source,
        })?;
        // A file replaced under us twice in a row is a carry-over racing with
        // us; a third try finds the new file settled.
        for _ in 0..3 {
            if self.write_pending()? {
                self.pending.clear();
                return Ok(());
            }
        }
        Err(IndexError::Write {
            path: self.path.clone(),
            source: std::io::Error::other("the file kept being replaced while saving"),
        })
    }
}

/// Holds SQLite's write lock on the index (if it exists), keeping every other
/// writer waiting, until dropped.
pub struct WriteLock {
    _conn: Option<Connection>,
}

impl WriteLock {
    pub fn acquire(dir: &Path) -> Result<Self, IndexError> {
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            return Ok(Self { _conn: None });
        }
        let conn = connect(&path, false)?;
        // Left open: dropping the connection rolls the empty transaction back.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| sql_error(&path, e))?;
        Ok(Self { _conn: Some(conn) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;

    fn t(s: &str) -> Timestamp {
        clock::parse(s).unwrap()
    }

    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| Box::new(SqliteIndex::open(dir).unwrap()));
    }

    #[test]
    fn stores_the_documented_table_with_rfc3339_utc_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SqliteIndex::open(dir.path()).unwrap();
        let x = ObjectId::of_bytes(b"x");
        index.touch(x, 5, t("2026-11-24T10:00:00+02:00"));
        index.save().unwrap();
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        let row: (String, i64, String, String) = conn
            .query_row(
                "SELECT identifier, size, added, last_used FROM entries",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                x.to_hex(),
                5,
                "2026-11-24T08:00:00Z".to_owned(),
                "2026-11-24T08:00:00Z".to_owned()
            )
        );
    }

    fn rows(dir: &Path) -> i64 {
        let conn = Connection::open(dir.join(FILE_NAME)).unwrap();
        conn.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_save_writes_only_what_was_added() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SqliteIndex::open(dir.path()).unwrap();
        for n in 0u32..1000 {
            index.touch(
                ObjectId::of_bytes(&n.to_le_bytes()),
                1,
                t("2026-01-01T00:00:00Z"),
            );
        }
        index.save().unwrap();
        assert_eq!(rows(dir.path()), 1000);

        let mut index = SqliteIndex::open(dir.path()).unwrap();
        index.touch(ObjectId::of_bytes(b"new"), 1, t("2026-01-02T00:00:00Z"));
        let db = index.db.as_ref().unwrap();
        let before = db.conn.total_changes();
        index.save().unwrap();
        let db = index.db.as_ref().unwrap();
        // SQLite's own count of rows written: the one added, not the 1000 already there.
        assert_eq!(db.conn.total_changes() - before, 1);
        assert_eq!(rows(dir.path()), 1001);
    }

    fn error_for(dir: &Path) -> String {
        let err = match SqliteIndex::open(dir) {
            Err(e) => e,
            Ok(index) => index.entries().err().unwrap(),
        };
        let err = format!("{:#}", anyhow::Error::from(err));
        assert!(
            err.contains(&dir.join(FILE_NAME).display().to_string()),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        err
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), vec![b'x'; 4096]).unwrap();
        let err = error_for(dir.path());
        assert!(err.contains("not a database"), "{err}");
        assert!(err.contains("fcache index rebuild"), "{err}");
    }

    #[test]
    fn hand_edited_rows_name_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = SqliteIndex::open(dir.path()).unwrap();
        index.touch(ObjectId::of_bytes(b"x"), 5, t("2026-01-01T00:00:00Z"));
        index.save().unwrap();
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.execute(
            "INSERT INTO entries VALUES ('not-an-id', 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
        let err = error_for(dir.path());
        assert!(
            err.contains("the row for identifier \"not-an-id\""),
            "{err}"
        );
        assert!(err.contains("fcache index rebuild"), "{err}");

        conn.execute("DELETE FROM entries WHERE identifier = 'not-an-id'", [])
            .unwrap();
        conn.execute("UPDATE entries SET last_used = 'later'", [])
            .unwrap();
        let err = error_for(dir.path());
        assert!(
            err.contains("invalid last_used timestamp \"later\""),
            "{err}"
        );
    }

    #[test]
    fn a_database_that_is_not_an_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        conn.execute_batch("CREATE TABLE photos (name TEXT)")
            .unwrap();
        let err = error_for(dir.path());
        assert!(err.contains("not an fcache index"), "{err}");

        conn.execute_batch("PRAGMA user_version = 7").unwrap();
        let err = error_for(dir.path());
        assert!(
            err.contains("version 7") && err.contains("upgrade fcache"),
            "{err}"
        );
    }

    #[test]
    fn a_save_after_the_file_was_carried_away_writes_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = SqliteIndex::open(dir.path()).unwrap();
        first.touch(ObjectId::of_bytes(b"a"), 1, t("2026-01-01T00:00:00Z"));
        first.save().unwrap();
        let mut late = SqliteIndex::open(dir.path()).unwrap();
        late.touch(ObjectId::of_bytes(b"b"), 1, t("2026-01-01T00:00:00Z"));
        // Another process moves the file's entries elsewhere and removes it.
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        late.save().unwrap();
        let now = SqliteIndex::open(dir.path()).unwrap().entries().unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[0].id, ObjectId::of_bytes(b"b"));
    }
}
