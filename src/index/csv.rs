//! The CSV index, `.git/fcache/index.csv`, with the header
//! `identifier,size,added,last_used`, one entry per line.

use std::io::{self, Write};
use std::path::Path;

use super::file::{Codec, Entries, FileIndex, merge_into};
use super::{Entry, IndexError};
use crate::clock;

pub const FILE_NAME: &str = "index.csv";
const HEADER: [&str; 4] = ["identifier", "size", "added", "last_used"];

pub type CsvIndex = FileIndex<Csv>;

pub struct Csv;

impl Codec for Csv {
    const FILE_NAME: &'static str = FILE_NAME;

    fn parse(path: &Path, bytes: &[u8]) -> Result<Entries, IndexError> {
        let corrupt = |line: u64, reason: String| IndexError::Corrupt {
            path: path.to_owned(),
            at: Some(format!("line {line}")),
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);
        let mut entries = Entries::new();
        let mut record = csv::StringRecord::new();
        loop {
            let more = reader.read_record(&mut record).map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                corrupt(line, e.to_string())
            })?;
            if !more {
                break;
            }
            let line = record.position().map_or(0, |p| p.line());
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
                return Err(corrupt(
                    line,
                    format!(
                        "expected {} fields ({}), found {}",
                        HEADER.len(),
                        HEADER.join(","),
                        record.len()
                    ),
                ));
            }
            let id = record[0]
                .parse()
                .map_err(|e| corrupt(line, format!("{e}")))?;
            let size = record[1]
                .parse()
                .map_err(|_| corrupt(line, format!("invalid size {:?}", &record[1])))?;
            let time = |i: usize| {
                clock::parse(&record[i]).ok_or_else(|| {
                    corrupt(
                        line,
                        format!(
                            "invalid {} timestamp {:?} (expected RFC 3339)",
                            HEADER[i], &record[i]
                        ),
                    )
                })
            };
            let entry = Entry {
                id,
                size,
                added: time(2)?,
                last_used: time(3)?,
            };
            merge_into(&mut entries, &entry);
        }
        Ok(entries)
    }

    fn write_start(out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", HEADER.join(","))
    }

    // Identifiers, sizes and timestamps never need CSV quoting.
    fn write_entry(out: &mut dyn Write, e: &Entry, _first: bool) -> io::Result<()> {
        writeln!(
            out,
            "{},{},{},{}",
            e.id,
            e.size,
            clock::format(&e.added),
            clock::format(&e.last_used)
        )
    }

    fn write_end(_out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;
    use crate::oid::ObjectId;

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

    fn error_for(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, text).unwrap();
        let err = CsvIndex::open(dir.path())
            .unwrap()
            .entries()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("fcache index rebuild"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        err
    }

    #[test]
    fn corrupt_file_names_file_and_line() {
        let good = format!(
            "{},1,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z",
            ObjectId::of_bytes(b"x")
        );
        let err = error_for(&format!(
            "identifier,size,added,last_used\n{good}\nnot-an-id,1,2026-01-01T00:00:00Z,2026-01-01T00:00:00Z\n"
        ));
        assert!(err.contains("at line 3"), "{err}");
        assert!(err.contains("not-an-id"), "{err}");

        let err = error_for(&format!(
            "identifier,size,added,last_used\n{good}\n{good},extra\n"
        ));
        assert!(
            err.contains("at line 3") && err.contains("found 5"),
            "{err}"
        );
        let err = error_for(&format!(
            "identifier,size,added,last_used\n{}\n",
            good.replace(",1,", ",-1,")
        ));
        assert!(
            err.contains("at line 2") && err.contains("invalid size"),
            "{err}"
        );
        let err = error_for(&format!(
            "identifier,size,added,last_used\n{}\n",
            good.replacen("2026-01-01T00:00:00Z", "yesterday", 1)
        ));
        assert!(err.contains("at line 2") && err.contains("added"), "{err}");
        let err = error_for("id,size\n");
        assert!(err.contains("at line 1") && err.contains("header"), "{err}");
    }

    #[test]
    fn a_killed_writers_temporary_file_is_removed_by_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(".index.csv.abc123");
        std::fs::write(&leftover, "identifier,size,ad").unwrap();
        let mut index = CsvIndex::open(dir.path()).unwrap();
        index.touch(
            ObjectId::of_bytes(b"x"),
            1,
            clock::parse("2026-01-01T00:00:00Z").unwrap(),
        );
        index.save().unwrap();
        assert!(!leftover.exists());
        assert_eq!(
            CsvIndex::open(dir.path()).unwrap().entries().unwrap().len(),
            1
        );
    }
}
