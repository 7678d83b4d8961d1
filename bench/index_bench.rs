//! Index formats at scale: how long loading, looking up, adding and saving
//! take with 100,000 entries in each format, as fcache's commands do them.
//!
//! Run with `bench/index.sh` (or `cargo run --release --example index_bench -- [ENTRIES]`).
//! Prints a Markdown table for the README.

use std::path::Path;
use std::time::{Duration, Instant};

use fcache::clock;
use fcache::index::{self, Entry, Format, Index};
use fcache::oid::ObjectId;

fn id(n: u64) -> ObjectId {
    ObjectId::of_bytes(&n.to_le_bytes())
}

fn entry(n: u64) -> Entry {
    let t = clock::parse("2026-01-01T00:00:00Z").expect("a valid time")
        + chrono::Duration::seconds(n as i64);
    Entry::new(id(n), n * 1000, t)
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut(usize)) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|r| {
            let start = Instant::now();
            f(r);
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn open(dir: &Path, format: Format) -> Box<dyn Index> {
    index::open(dir, format).expect("open the index")
}

struct Row {
    format: Format,
    create: Duration,
    load_all: Duration,
    lookup: Duration,
    add_one: Duration,
    add_batch: Duration,
    convert: Duration,
    bytes: u64,
}

fn measure(format: Format, entries: u64, batch: u64) -> Row {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let dir = dir.path();

    // Every entry added in one process and saved once (a large first import).
    let start = Instant::now();
    let mut index = open(dir, format);
    for n in 0..entries {
        index.add(entry(n));
    }
    index.save().expect("save");
    let create = start.elapsed();
    drop(index);
    let bytes = std::fs::metadata(dir.join(format.file_name()))
        .expect("the index file")
        .len();

    // `fcache status`: open and list every entry.
    let load_all = median(5, |_| {
        let all = open(dir, format).entries().expect("entries");
        assert_eq!(all.len() as u64, entries);
    });
    // `fcache cat ID`: open and look one identifier up.
    let lookup = median(5, |r| {
        let found = open(dir, format)
            .get(&id(r as u64 * 7919 % entries))
            .expect("get");
        assert!(found.is_some());
    });
    // One `fcache clean` process: open, add one new entry, save.
    let mut next = entries;
    let add_one = median(9, |_| {
        let mut index = open(dir, format);
        index.touch(
            id(next),
            1,
            clock::parse("2026-02-01T00:00:00Z").expect("a valid time"),
        );
        index.save().expect("save");
        next += 1;
    });
    // One filter process handling a checkout of `batch` files: open, touch
    // that many (half known, half new), save once.
    let add_batch = median(5, |r| {
        let mut index = open(dir, format);
        let now = clock::parse("2026-03-01T00:00:00Z").expect("a valid time");
        for k in 0..batch {
            let n = if k % 2 == 0 {
                k * 31 % entries
            } else {
                next + k
            };
            index.touch(id(n), 1, now);
        }
        index.save().expect("save");
        next += batch + r as u64;
    });

    // Switching `fcache.index` to this format from a CSV index of that size.
    let convert = {
        let other = tempfile::tempdir().expect("a temporary directory");
        let source = if format == Format::Csv {
            Format::Json
        } else {
            Format::Csv
        };
        let mut index = open(other.path(), source);
        for n in 0..entries {
            index.add(entry(n));
        }
        index.save().expect("save");
        drop(index);
        let start = Instant::now();
        let index = open(other.path(), format);
        let took = start.elapsed();
        assert_eq!(index.entries().expect("entries").len() as u64, entries);
        took
    };

    Row {
        format,
        create,
        load_all,
        lookup,
        add_one,
        add_batch,
        convert,
        bytes,
    }
}

fn main() {
    let entries: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ENTRIES must be a number"))
        .unwrap_or(100_000);
    let batch = 1000;
    println!(
        "Index with {entries} entries (median of 5-9 runs; convert: from CSV, or JSON for CSV)\n"
    );
    println!(
        "| format | file size | create (one save) | open + list all | open + look up one | open + add 1 + save | open + touch {batch} + save | convert to it |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for format in Format::ALL {
        let r = measure(format, entries, batch);
        println!(
            "| {} | {:.1} MB | {} | {} | {} | {} | {} | {} |",
            r.format,
            r.bytes as f64 / 1e6,
            ms(r.create),
            ms(r.load_all),
            ms(r.lookup),
            ms(r.add_one),
            ms(r.add_batch),
            ms(r.convert),
        );
    }
}
