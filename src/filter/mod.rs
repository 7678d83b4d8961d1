//! The clean and smudge filters: what git hands fcache and what it gets back.
//! Shared by the one-shot `clean`/`smudge` commands and, later, the
//! long-running filter process.

use std::io::{self, Read, Write};

use crate::clock::Timestamp;
use crate::hashing;
use crate::index::Index;
use crate::marker::{self, Marker};
use crate::oid::ObjectId;
use crate::store::{Store, StoreError, Unavailable};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read from git")]
    Input(#[source] io::Error),
    #[error("cannot write to git")]
    Output(#[source] io::Error),
    #[error(
        "object {id} is not in the cache and could not be fetched: {reason}; fcache.strict is set, so this fails (run `fcache pull` once the archive has it)"
    )]
    StrictMissing {
        id: ObjectId,
        #[source]
        reason: crate::archive::ArchiveError,
    },
}

#[derive(Debug)]
pub enum Cleaned {
    /// Empty content stays empty, as in git-lfs.
    Empty,
    /// The input already was a marker; it is returned unchanged.
    AlreadyMarker(Marker),
    Stored(Marker),
}

#[derive(Debug)]
pub enum Smudged {
    /// Not a marker: passed through byte for byte.
    PassedThrough,
    /// `FCACHE_SKIP_SMUDGE`: the marker was passed through.
    Skipped(Marker),
    Restored(Marker),
    /// Neither cache nor archive could give the object: the marker was left.
    Missing(Marker, Unavailable),
}

/// Read the first bytes of the input, enough to tell whether it is a marker.
fn peek(input: &mut dyn Read) -> Result<(Vec<u8>, Option<Marker>), FilterError> {
    let mut head = vec![0u8; marker::MAX_LEN];
    let n = hashing::read_up_to(input, &mut head).map_err(FilterError::Input)?;
    head.truncate(n);
    let parsed = Marker::parse(&head);
    Ok((head, parsed))
}

pub fn clean(
    store: &Store,
    index: &mut dyn Index,
    now: Timestamp,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<Cleaned, FilterError> {
    let (head, parsed) = peek(input)?;
    if head.is_empty() {
        return Ok(Cleaned::Empty);
    }
    if let Some(m) = parsed {
        output.write_all(&head).map_err(FilterError::Output)?;
        index.touch(m.id, m.size, now);
        return Ok(Cleaned::AlreadyMarker(m));
    }
    let m = store.add(&head, input)?;
    index.touch(m.id, m.size, now);
    output
        .write_all(m.to_string().as_bytes())
        .map_err(FilterError::Output)?;
    Ok(Cleaned::Stored(m))
}

pub fn smudge(
    store: &Store,
    index: &mut dyn Index,
    now: Timestamp,
    input: &mut dyn Read,
    output: &mut dyn Write,
) -> Result<Smudged, FilterError> {
    let (head, parsed) = peek(input)?;
    let Some(m) = parsed else {
        output.write_all(&head).map_err(FilterError::Output)?;
        hashing::copy(input, output).map_err(FilterError::Output)?;
        return Ok(Smudged::PassedThrough);
    };
    if store.config.skip_smudge {
        output.write_all(&head).map_err(FilterError::Output)?;
        return Ok(Smudged::Skipped(m));
    }
    index.touch(m.id, m.size, now);
    if m.size == 0 && m.id == ObjectId::empty() {
        return Ok(Smudged::Restored(m));
    }
    match store.get(&m)? {
        Ok(mut v) => {
            io::copy(&mut v.file, output).map_err(FilterError::Output)?;
            Ok(Smudged::Restored(m))
        }
        Err(unavailable) if store.config.strict => Err(FilterError::StrictMissing {
            id: unavailable.id,
            reason: unavailable.reason,
        }),
        Err(unavailable) => {
            output.write_all(&head).map_err(FilterError::Output)?;
            Ok(Smudged::Missing(m, unavailable))
        }
    }
}
