//! The JSON index, `.git/fcache/index.json`:
//!
//! ```json
//! {
//!   "version": 1,
//!   "entries": [
//!     {"identifier":"<64 hex>","size":123,"added":"2026-01-01T00:00:00Z","last_used":"2026-01-02T00:00:00Z"}
//!   ]
//! }
//! ```
//!
//! One entry per line, so that an error's line number points at the entry
//! and diffs of the file stay readable. `version` changes only when the shape
//! does; a newer version is refused rather than misread.

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::file::{Codec, Entries, FileIndex, merge_into};
use super::{Entry, IndexError};
use crate::clock::{self, Timestamp};
use crate::oid::ObjectId;

pub const FILE_NAME: &str = "index.json";
pub const VERSION: i64 = 1;

pub type JsonIndex = FileIndex<Json>;

pub struct Json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: i64,
    entries: Vec<JsonEntry>,
}

/// Read when a file does not parse, so that a newer version is reported as
/// such and not as whatever its new shape fails to match.
#[derive(Deserialize)]
struct VersionOnly {
    version: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEntry {
    identifier: ObjectId,
    size: u64,
    #[serde(deserialize_with = "timestamp", serialize_with = "rfc3339")]
    added: Timestamp,
    #[serde(deserialize_with = "timestamp", serialize_with = "rfc3339")]
    last_used: Timestamp,
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    clock::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("invalid timestamp {s:?} (expected RFC 3339)"))
    })
}

fn rfc3339<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&clock::format(t))
}

fn corrupt(path: &Path, e: &serde_json::Error) -> IndexError {
    // serde_json puts the position at the end of its message; it goes in `at`.
    let message = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    IndexError::Corrupt {
        path: path.to_owned(),
        at: (e.line() > 0).then(|| format!("line {}, column {}", e.line(), e.column())),
        reason: message
            .strip_suffix(&position)
            .unwrap_or(&message)
            .to_owned(),
    }
}

impl Codec for Json {
    const FILE_NAME: &'static str = FILE_NAME;

    fn parse(path: &Path, bytes: &[u8]) -> Result<Entries, IndexError> {
        let newer = |version: i64| IndexError::UnsupportedVersion {
            path: path.to_owned(),
            version,
            supported: VERSION,
        };
        let doc = match serde_json::from_slice::<Document>(bytes) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(match serde_json::from_slice::<VersionOnly>(bytes) {
                    Ok(VersionOnly { version: Some(v) }) if v > VERSION => newer(v),
                    _ => corrupt(path, &e),
                });
            }
        };
        if doc.version > VERSION {
            return Err(newer(doc.version));
        }
        if doc.version != VERSION {
            return Err(IndexError::Corrupt {
                path: path.to_owned(),
                at: None,
                reason: format!("unknown version {} (expected {VERSION})", doc.version),
            });
        }
        let mut entries = Entries::new();
        for e in doc.entries {
            merge_into(
                &mut entries,
                &Entry {
                    id: e.identifier,
                    size: e.size,
                    added: e.added,
                    last_used: e.last_used,
                },
            );
        }
        Ok(entries)
    }

    fn write_start(out: &mut dyn Write) -> io::Result<()> {
        write!(out, "{{\n  \"version\": {VERSION},\n  \"entries\": [")
    }

    fn write_entry(out: &mut dyn Write, e: &Entry, first: bool) -> io::Result<()> {
        out.write_all(if first { b"\n    " } else { b",\n    " })?;
        let entry = JsonEntry {
            identifier: e.id,
            size: e.size,
            added: e.added,
            last_used: e.last_used,
        };
        serde_json::to_writer(out, &entry).map_err(io::Error::from)
    }

    fn write_end(out: &mut dyn Write) -> io::Result<()> {
        out.write_all(b"\n  ]\n}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    fn t(s: &str) -> Timestamp {
        clock::parse(s).unwrap()
    }

    #[test]
    fn conformance() {
        super::super::conformance::run(&|dir| Box::new(JsonIndex::open(dir).unwrap()));
    }

    #[test]
    fn writes_the_documented_versioned_shape_one_entry_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = JsonIndex::open(dir.path()).unwrap();
        let (x, y) = (ObjectId::of_bytes(b"x"), ObjectId::of_bytes(b"y"));
        index.touch(x, 1, t("2026-11-24T10:00:00+02:00"));
        index.touch(y, 22, t("2026-11-25T00:00:00Z"));
        index.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        let (first, second) = if x < y { (x, y) } else { (y, x) };
        let line = |id: ObjectId| {
            if id == x {
                format!(
                    r#"{{"identifier":"{x}","size":1,"added":"2026-11-24T08:00:00Z","last_used":"2026-11-24T08:00:00Z"}}"#
                )
            } else {
                format!(
                    r#"{{"identifier":"{y}","size":22,"added":"2026-11-25T00:00:00Z","last_used":"2026-11-25T00:00:00Z"}}"#
                )
            }
        };
        assert_eq!(
            text,
            format!(
                "{{\n  \"version\": 1,\n  \"entries\": [\n    {},\n    {}\n  ]\n}}\n",
                line(first),
                line(second)
            )
        );
        // Any JSON reader sees the same thing.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["entries"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn an_index_with_no_entries_is_valid_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{\"version\":1,\"entries\":[]}").unwrap();
        assert!(
            JsonIndex::open(dir.path())
                .unwrap()
                .entries()
                .unwrap()
                .is_empty()
        );
    }

    fn error_for(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, text).unwrap();
        let err = JsonIndex::open(dir.path())
            .unwrap()
            .entries()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains('\n'), "{err}");
        err
    }

    #[test]
    fn corrupt_file_names_file_line_and_column() {
        let id = ObjectId::of_bytes(b"x");
        let good = format!(
            r#"{{"identifier":"{id}","size":1,"added":"2026-01-01T00:00:00Z","last_used":"2026-01-01T00:00:00Z"}}"#
        );
        let doc = |second: &str| {
            format!("{{\n  \"version\": 1,\n  \"entries\": [\n    {good},\n    {second}\n  ]\n}}\n")
        };
        let cases = [
            (
                doc(&good.replace(&id.to_hex(), "abc")),
                "line 5",
                "invalid object identifier",
            ),
            (
                doc(&good.replace("\"size\":1", "\"size\":-1")),
                "line 5",
                "invalid value",
            ),
            (
                doc(&good.replace("2026-01-01T00:00:00Z", "soon")),
                "line 5",
                "invalid timestamp",
            ),
            (
                doc(&good.replace("last_used", "last_use")),
                "line 5",
                "unknown field",
            ),
            (doc(&good[..40]), "line 6", ""),
            (
                "{\"version\": 1, \"entries\": [".to_owned(),
                "line 1",
                "EOF",
            ),
            ("".to_owned(), "line 1", "EOF"),
        ];
        for (text, at, reason) in cases {
            let err = error_for(&text);
            assert!(err.contains(&format!("at {at}, column")), "{err}");
            assert!(err.contains(reason), "{err}");
            assert!(err.contains("fcache index rebuild"), "{err}");
        }
    }

    #[test]
    fn a_newer_version_is_refused_not_misread() {
        let err = error_for("{\"version\": 2, \"objects\": {}}");
        assert!(
            err.contains("version 2") && err.contains("upgrade fcache"),
            "{err}"
        );
        let err = error_for("{\"version\": 0, \"entries\": []}");
        assert!(err.contains("unknown version 0"), "{err}");
    }
}
