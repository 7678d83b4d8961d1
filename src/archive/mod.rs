//! Archives: where objects live beyond this machine's cache.
//!
//! One small, object-safe, streaming trait; the implementation is picked from
//! the archive URL at run time. It is shaped for remote stores: the batch
//! methods take many objects at once (one Git LFS Batch API request per
//! `batch_size()` objects) and hand back one transfer handle per object,
//! which callers run in parallel (`parallelism()` at a time). A handle
//! streams: `Download::read` writes into a sink, `Upload::send` reads from a
//! file, so a transfer can be retried or resumed inside the handle and no
//! object is ever held whole in memory. Callers verify what arrives before
//! trusting it; an archive error is an error, never a silent miss.
//!
//! The one-object forms (`contains`, `get`, `put`) are sugar on `dyn Archive`.

mod dir;
mod http;
mod s3;

use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::dir::DirArchive;
pub use self::http::{HttpArchive, HttpOptions, MULTI_TRANSFER};
pub use self::s3::S3Archive;
use crate::config::Config;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::transfer::{self, Progress};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("object {id} is not in archive {archive}")]
    NotFound { archive: String, id: ObjectId },
    #[error("archive {archive}: I/O error on {path}")]
    Io {
        archive: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive {archive}: content sent for {expected} hashes to {actual}; nothing stored")]
    WrongContent {
        archive: String,
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("archive {archive}: object {id} has {actual} bytes, expected {expected}")]
    WrongSize {
        archive: String,
        id: ObjectId,
        expected: u64,
        actual: u64,
    },
    #[error("cannot write object {id} out of archive {archive}")]
    Sink {
        archive: String,
        id: ObjectId,
        #[source]
        source: io::Error,
    },
    #[error("archive {archive}: {message}")]
    Remote {
        archive: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error(
        "unsupported archive location {0:?}: use a directory path, a file:// URL, an http(s):// Git LFS endpoint or s3://bucket[/prefix]"
    )]
    Unsupported(String),
    #[error("invalid archive location {location:?}: {reason}")]
    BadLocation { location: String, reason: String },
}

impl ArchiveError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ArchiveError::NotFound { .. })
    }
}

/// Per-object results of a batch call, in the order of the objects asked for.
pub type Batch<T> = Vec<Result<T, ArchiveError>>;

pub trait Archive: Send + Sync {
    /// The location as the user configured it, for messages.
    fn location(&self) -> &str;

    /// Which of `objects` the archive holds, in order.
    fn contains_many(&self, objects: &[Marker]) -> Result<Vec<bool>, ArchiveError>;

    /// A download handle per object, in order; an object the archive lacks
    /// gets `ArchiveError::NotFound` in its slot.
    fn downloads(&self, objects: &[Marker]) -> Result<Batch<Box<dyn Download>>, ArchiveError>;

    /// An upload handle per object the archive lacks, in order; `None` where
    /// the archive holds it already.
    fn uploads(&self, objects: &[Marker]) -> Result<Batch<Option<Box<dyn Upload>>>, ArchiveError>;

    /// How many objects one call of the batch methods should carry.
    fn batch_size(&self) -> usize {
        100
    }

    /// How many transfers callers should run at once.
    fn parallelism(&self) -> usize {
        4
    }

    /// Store each object from its file unless the archive holds it; per
    /// object, in order, whether it was sent. `workers` transfers run at
    /// once, and `progress` hears of each object sent. As with `Upload`, the
    /// objects are durable only after `flush`. An archive that can carry
    /// many objects in one request does so; the default sends each through
    /// its own upload handle.
    fn put_many(
        &self,
        objects: &[(Marker, PathBuf)],
        workers: usize,
        progress: &dyn Progress,
    ) -> Result<Batch<bool>, ArchiveError> {
        let mut results: Vec<Option<Result<bool, ArchiveError>>> =
            objects.iter().map(|_| None).collect();
        let mut todo = Vec::new();
        let batch = self.batch_size().max(1);
        for (n, chunk) in objects.chunks(batch).enumerate() {
            let markers: Vec<Marker> = chunk.iter().map(|(m, _)| *m).collect();
            for (i, upload) in (n * batch..).zip(self.uploads(&markers)?) {
                match upload {
                    Ok(Some(upload)) => todo.push((i, upload)),
                    Ok(None) => results[i] = Some(Ok(false)),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
        }
        progress.start(
            todo.len() as u64,
            todo.iter().map(|(i, _)| objects[*i].0.size).sum(),
        );
        for (i, r) in send_each(objects, todo, workers, progress) {
            results[i] = Some(r);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every object has a result"))
            .collect())
    }

    /// Make every object sent so far durable and visible, for archives where
    /// that is a step of its own (a directory: the batch's files and their
    /// directories synced all at once, rather than an upload at a time). Callers call it after
    /// a batch of uploads, before anything relies on the objects (a ref that
    /// names them, an eviction from the cache).
    fn flush(&self) -> Result<(), ArchiveError> {
        Ok(())
    }
}

/// One object, ready to be read out of the archive.
pub trait Download: Send + Sync {
    /// Stream the bytes `range` of the object into `sink` (the whole object is
    /// `0..size`); returns how many were written. An implementation that can
    /// resume an interrupted transfer does so itself, so the sink sees each
    /// byte once.
    fn read(&self, range: Range<u64>, sink: &mut dyn Write) -> Result<u64, ArchiveError>;
}

/// One object the archive lacks, ready to be sent.
pub trait Upload: Send + Sync {
    /// Send the object's content from the file `source`. The archive refuses
    /// content that does not hash to the identifier or has the wrong size,
    /// and stores nothing for it. The archive holds the object for sure only
    /// after `Archive::flush`.
    fn send(&self, source: &Path) -> Result<(), ArchiveError>;

    /// Send the object from `file`, a temporary file whose content the
    /// caller has already checked against the identifier and size (as
    /// `fcache serve` does while receiving it). An archive that can take the
    /// file itself (a directory on the same filesystem: a rename) does so
    /// instead of copying and hashing it again; any other sends it.
    fn adopt(self: Box<Self>, file: tempfile::TempPath) -> Result<(), ArchiveError> {
        self.send(&file)
    }

    /// Send the object from `bytes`, the whole of its content, which the
    /// caller has already checked against the identifier and size (as
    /// `fcache serve` does with a small object it received into memory). An
    /// archive of files writes it straight where it goes; any other gets it
    /// through a temporary file in `tmp_dir`.
    fn send_checked(self: Box<Self>, bytes: &[u8], tmp_dir: &Path) -> Result<(), ArchiveError> {
        let io = |source| ArchiveError::Io {
            archive: "(temporary file)".to_owned(),
            path: tmp_dir.to_owned(),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(io)?;
        tmp.write_all(bytes).map_err(io)?;
        self.adopt(tmp.into_temp_path())
    }
}

/// Send `todo`'s objects (indices into `objects`), each through its own
/// upload handle, `workers` at once.
pub(crate) fn send_each(
    objects: &[(Marker, PathBuf)],
    mut todo: Vec<(usize, Box<dyn Upload>)>,
    workers: usize,
    progress: &dyn Progress,
) -> Vec<(usize, Result<bool, ArchiveError>)> {
    // Largest first, so that a large object is not left to run alone at the
    // end while the other workers idle.
    todo.sort_by_key(|(i, _)| std::cmp::Reverse(objects[*i].0.size));
    transfer::parallel_map(todo, workers, |(i, upload)| {
        let (m, source) = &objects[i];
        let r = upload.send(source);
        progress.bytes(m.size);
        progress.object_done();
        (i, r.map(|()| true))
    })
}

impl dyn Archive + '_ {
    pub fn contains(&self, object: &Marker) -> Result<bool, ArchiveError> {
        Ok(self.contains_many(std::slice::from_ref(object))?[0])
    }

    /// Stream the whole object into `sink`; returns the bytes written.
    pub fn get(&self, object: &Marker, sink: &mut dyn Write) -> Result<u64, ArchiveError> {
        let download = one(self.downloads(std::slice::from_ref(object))?)?;
        download.read(0..object.size, sink)
    }

    /// Store the object whose content is in `source`, unless the archive has
    /// it, durably (`flush` included). Returns whether it was sent.
    pub fn put(&self, object: &Marker, source: &Path) -> Result<bool, ArchiveError> {
        self.put_with(object, |upload| upload.send(source))
    }

    /// `put` for content already checked against `object` and held in a
    /// temporary file, which the archive may take instead of copying
    /// (`Upload::adopt`). Returns whether it was sent.
    pub fn put_checked(
        &self,
        object: &Marker,
        file: tempfile::TempPath,
    ) -> Result<bool, ArchiveError> {
        self.put_with(object, |upload| upload.adopt(file))
    }

    fn put_with(
        &self,
        object: &Marker,
        send: impl FnOnce(Box<dyn Upload>) -> Result<(), ArchiveError>,
    ) -> Result<bool, ArchiveError> {
        match one(self.uploads(std::slice::from_ref(object))?)? {
            Some(upload) => {
                send(upload)?;
                self.flush()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Whether an object stored with `stored` bytes (`None`: absent) can be
/// handed out for `object`: absent is `NotFound`, the wrong size is damage.
pub(crate) fn check_stored(
    archive: &str,
    object: &Marker,
    stored: Option<u64>,
) -> Result<(), ArchiveError> {
    match stored {
        None => Err(ArchiveError::NotFound {
            archive: archive.to_owned(),
            id: object.id,
        }),
        Some(actual) if actual != object.size => Err(ArchiveError::WrongSize {
            archive: archive.to_owned(),
            id: object.id,
            expected: object.size,
            actual,
        }),
        Some(_) => Ok(()),
    }
}

fn one<T>(batch: Batch<T>) -> Result<T, ArchiveError> {
    batch
        .into_iter()
        .next()
        .expect("a batch answers every object asked for")
}

/// Open the archive named by `location`: a directory path, a `file://` URL,
/// an `http://` / `https://` Git LFS endpoint, or `s3://bucket[/prefix]`,
/// with the settings each takes from `config` (HTTP credentials; the S3
/// endpoint, region and credentials). The one place a location becomes an
/// archive.
pub fn open(location: &str, config: &Config) -> Result<Arc<dyn Archive>, ArchiveError> {
    let http = HttpOptions {
        token: config.http_token.clone(),
        ..Default::default()
    };
    open_with(location, config, &http)
}

/// `open`, with the HTTP options given rather than taken from `config`.
pub fn open_with(
    location: &str,
    config: &Config,
    http: &HttpOptions,
) -> Result<Arc<dyn Archive>, ArchiveError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(Arc::new(HttpArchive::new(location, http)?));
    }
    if location.starts_with("s3://") {
        return Ok(Arc::new(S3Archive::new(location, &config.s3)?));
    }
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Arc::new(DirArchive::new(location, PathBuf::from(path))));
    }
    if location.contains("://") || location.is_empty() {
        return Err(ArchiveError::Unsupported(location.to_owned()));
    }
    Ok(Arc::new(DirArchive::new(location, PathBuf::from(location))))
}

/// A tokio runtime an archive owns for its async client. Dropped where
/// blocking is not allowed (the last handle to an archive can go inside
/// `fcache serve`'s runtime), a plain runtime panics; this one lets its
/// threads wind down in the background instead.
pub(crate) struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    pub(crate) fn new(runtime: tokio::runtime::Runtime) -> Self {
        Self(Some(runtime))
    }
}

impl std::ops::Deref for OwnedRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("only Drop takes the runtime")
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A sink that writes only the bytes `skip..skip + len` of what it is given:
/// ranged reads for archives whose storage can only stream from the start.
pub struct RangeSink<'a> {
    inner: &'a mut dyn Write,
    skip: u64,
    left: u64,
}

impl<'a> RangeSink<'a> {
    pub fn new(inner: &'a mut dyn Write, range: Range<u64>) -> Self {
        Self {
            inner,
            skip: range.start,
            left: range.end.saturating_sub(range.start),
        }
    }
}

impl Write for RangeSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let skipped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.skip -= skipped as u64;
        let rest = &buf[skipped..];
        let take = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        self.inner.write_all(&rest[..take])?;
        self.left -= take as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! What every archive must do; each implementation's tests call `run`
    //! (git-annex's `testremote` is the model).
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Sizes every archive is tested with; `big` adds a 100 MiB object.
    pub fn sizes(big: bool) -> Vec<usize> {
        let mut sizes = vec![0usize, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1];
        if big {
            sizes.push(100 << 20);
        }
        sizes
    }

    pub fn run(archive: &dyn Archive, big: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = Vec::new();
        for len in sizes(big) {
            let bytes = sample(len);
            let m = Marker::new(ObjectId::of_bytes(&bytes), len as u64);
            let src = dir.path().join(format!("obj-{len}"));
            std::fs::write(&src, &bytes).unwrap();

            assert!(!archive.contains(&m).unwrap(), "{len}: contains before put");
            let err = archive.get(&m, &mut Vec::new()).unwrap_err();
            assert!(err.is_not_found(), "{len}: {err}");

            assert!(archive.put(&m, &src).unwrap(), "{len}: first put sends");
            archive.flush().unwrap();
            assert!(
                !archive.put(&m, &src).unwrap(),
                "{len}: second put finds it"
            );
            assert!(archive.contains(&m).unwrap(), "{len}: contains after put");
            let mut out = Vec::new();
            assert_eq!(archive.get(&m, &mut out).unwrap(), len as u64);
            assert!(out == bytes, "round trip of {len} bytes");

            // Ranged reads: a middle slice, the tail, and an empty range.
            if len > 2 {
                let mid = (len / 3) as u64..(2 * len / 3) as u64;
                let download = one(archive.downloads(&[m]).unwrap()).unwrap();
                let mut part = Vec::new();
                assert_eq!(
                    download.read(mid.clone(), &mut part).unwrap(),
                    mid.end - mid.start
                );
                assert!(part == bytes[mid.start as usize..mid.end as usize]);
                let mut tail = Vec::new();
                download
                    .read(len as u64 - 1..len as u64, &mut tail)
                    .unwrap();
                assert_eq!(tail, bytes[len - 1..]);
            }
            stored.push(m);
        }
        // Batch forms answer every object, in order.
        let absent = Marker::new(ObjectId::of_bytes(b"never stored"), 12);
        let mut asked = stored.clone();
        asked.insert(1, absent);
        let found = archive.contains_many(&asked).unwrap();
        assert_eq!(found.len(), asked.len());
        assert!(!found[1]);
        assert!(found.iter().enumerate().all(|(i, &f)| f == (i != 1)));
        let downloads = archive.downloads(&asked).unwrap();
        assert_eq!(downloads.len(), asked.len());
        assert!(downloads[1].as_ref().err().unwrap().is_not_found());
        let uploads = archive.uploads(&asked).unwrap();
        assert!(uploads[1].as_ref().unwrap().is_some());
        assert!(uploads[0].as_ref().unwrap().is_none());

        // Content that does not match its identifier, or its size, is refused
        // and nothing is stored.
        let liar = dir.path().join("liar");
        std::fs::write(&liar, b"actual").unwrap();
        let claimed = Marker::new(ObjectId::of_bytes(b"claimed"), 6);
        assert!(archive.put(&claimed, &liar).is_err());
        assert!(!archive.contains(&claimed).unwrap());
        let short = Marker::new(ObjectId::of_bytes(b"actual"), 7);
        assert!(archive.put(&short, &liar).is_err());
        assert!(!archive.contains(&short).unwrap());

        // Many at once: per object, in order, whether sent; a stored one is
        // not sent again, content that lies is refused alone, and after the
        // flush every object sent is held whole.
        let mut many: Vec<(Marker, PathBuf)> = (0..30usize)
            .map(|i| {
                let bytes = sample(1000 + i * 7919);
                let m = Marker::new(ObjectId::of_bytes(&bytes), bytes.len() as u64);
                let src = dir.path().join(format!("many-{i}"));
                std::fs::write(&src, &bytes).unwrap();
                (m, src)
            })
            .collect();
        let big = sample(3 << 20);
        let big_src = dir.path().join("many-big");
        std::fs::write(&big_src, &big).unwrap();
        many.insert(
            3,
            (
                Marker::new(ObjectId::of_bytes(&big), big.len() as u64),
                big_src,
            ),
        );
        many.insert(5, (stored[1], dir.path().join("obj-1")));
        many.insert(7, (claimed, liar.clone()));
        let results = archive.put_many(&many, 4, &transfer::NoProgress).unwrap();
        assert_eq!(results.len(), many.len());
        archive.flush().unwrap();
        for (i, ((m, src), result)) in many.iter().zip(&results).enumerate() {
            match i {
                5 => assert!(!result.as_ref().unwrap(), "a held object is not sent"),
                7 => assert!(
                    matches!(result, Err(ArchiveError::WrongContent { .. })),
                    "{result:?}"
                ),
                _ => {
                    assert!(result.as_ref().unwrap(), "object {i} is sent");
                    let mut out = Vec::new();
                    archive.get(m, &mut out).unwrap();
                    assert!(out == std::fs::read(src).unwrap(), "object {i} is whole");
                }
            }
        }
        assert!(!archive.contains(&claimed).unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sink_keeps_only_the_range_across_writes() {
        let mut out = Vec::new();
        {
            let mut sink = RangeSink::new(&mut out, 3..8);
            for chunk in b"0123456789".chunks(2) {
                sink.write_all(chunk).unwrap();
            }
        }
        assert_eq!(out, b"34567");
    }
}
