//! The clean and smudge filters: what git hands fcache and what it gets back.
//! Shared by the one-shot `clean`/`smudge` commands and the long-running
//! filter process (`process.rs`, framed by `pktline.rs`).

pub mod pktline;
pub mod process;
pub mod statcache;

use std::fs::File;
use std::io::{self, Read, Seek, Write};

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
    #[error("cannot read the cached copy of object {id}")]
    ReadObject {
        id: ObjectId,
        #[source]
        source: io::Error,
    },
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
    /// The content equals the cached object a hint named: nothing was
    /// hashed or written.
    Known(Marker),
}

impl Cleaned {
    /// The marker git gets, if any (empty content gets none).
    pub fn marker(&self) -> Option<Marker> {
        match self {
            Cleaned::Empty => None,
            Cleaned::AlreadyMarker(m) | Cleaned::Stored(m) | Cleaned::Known(m) => Some(*m),
        }
    }
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
    clean_with_hint(store, index, now, input, output, None)
}

/// `clean`, told which object the content most likely is (the stat cache's
/// guess). The guess is checked byte for byte against the cached object, so
/// a wrong or stale one costs a comparison, never a wrong marker; when it is
/// right, nothing is hashed or written.
pub fn clean_with_hint(
    store: &Store,
    index: &mut dyn Index,
    now: Timestamp,
    input: &mut dyn Read,
    output: &mut dyn Write,
    hint: Option<Marker>,
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
    let known = hint.filter(|h| h.size > 0).and_then(|h| {
        let file = store.cache.open_sized(&h)?;
        Some((h, file, store.cache.object_path(&h.id)))
    });
    let outcome = match known {
        Some((hint, file, path)) => compare_or_add(store, &head, input, hint, file, &path)?,
        None => Cleaned::Stored(store.add(&head, input)?),
    };
    let m = outcome.marker().expect("non-empty content has a marker");
    index.touch(m.id, m.size, now);
    output
        .write_all(m.to_string().as_bytes())
        .map_err(FilterError::Output)?;
    Ok(outcome)
}

/// Compare the input with the cached object `hint` as it streams in. At the
/// first difference, fall back to storing it: the part seen so far equals the
/// object's start, so it is copied from there, then the rest of the input follows.
fn compare_or_add(
    store: &Store,
    head: &[u8],
    input: &mut dyn Read,
    hint: Marker,
    mut object: File,
    object_path: &std::path::Path,
) -> Result<Cleaned, FilterError> {
    let cache_err = |source| {
        FilterError::Store(StoreError::Cache(crate::cache::CacheError::Io {
            path: object_path.to_owned(),
            source,
        }))
    };
    let mut theirs = hashing::ChunkBuf::take();
    let mut ours = hashing::ChunkBuf::take();
    let mut matched = 0u64;
    let mut in_head = true;
    // The input chunk in hand when the two differ (empty: the input ended early).
    let differing: Option<&[u8]> = loop {
        let chunk: &[u8] = if in_head {
            in_head = false;
            head
        } else {
            let n = hashing::read_up_to(input, &mut theirs).map_err(FilterError::Input)?;
            &theirs[..n]
        };
        if chunk.is_empty() {
            // The input ended: a match only if the object ends here too.
            let more = hashing::read_up_to(&mut object, &mut ours[..1]).map_err(cache_err)?;
            break (more != 0 || matched != hint.size).then_some(chunk);
        }
        let n = hashing::read_up_to(&mut object, &mut ours[..chunk.len()]).map_err(cache_err)?;
        if ours[..n] != *chunk {
            break Some(chunk);
        }
        matched += n as u64;
    };
    let Some(chunk) = differing else {
        // A use of the object, for least-recently-used eviction.
        store.cache.touch_open(&object);
        return Ok(Cleaned::Known(hint));
    };
    // Not the object: the content is the object's first `matched` bytes, the
    // chunk in hand, then the rest of the input.
    object.rewind().map_err(cache_err)?;
    let mut prefix = (&mut object).take(matched);
    let mut content = (&mut prefix).chain(chunk).chain(input);
    // Should the content hash to the hint after all, the cached copy (same
    // size, other bytes) is damaged: these bytes replace it.
    Ok(Cleaned::Stored(store.add_healing(
        &[],
        &mut content,
        Some(&hint.id),
    )?))
}

/// A failed copy of an object to git, as the filter's error.
pub(crate) fn read_or_write(id: ObjectId, e: hashing::CopyError) -> FilterError {
    match e {
        hashing::CopyError::Read(source) => FilterError::ReadObject { id, source },
        hashing::CopyError::Write(e) => FilterError::Output(e),
    }
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
        hashing::copy_apart(input, output).map_err(|e| match e {
            hashing::CopyError::Read(e) => FilterError::Input(e),
            hashing::CopyError::Write(e) => FilterError::Output(e),
        })?;
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
            hashing::copy_apart(&mut v.file, output).map_err(|e| read_or_write(m.id, e))?;
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
