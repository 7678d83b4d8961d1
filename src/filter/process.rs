//! git's long-running filter protocol, version 2 (gitattributes(5), "Long
//! Running Filter Process"): one fcache process serves every file of a git
//! command, so the cost of starting a process, opening the store and saving
//! the index is paid once, not per file.
//!
//! Capabilities: `clean`, `smudge` and `delay`. With `delay`, a smudge whose
//! object must come from the archive is answered `status=delayed`; a fetcher
//! thread downloads such objects in batches, several at once
//! (`Store::fetch_many`), while git goes on with other files, and git gets
//! them back through `list_available_blobs`. A large object that is cached is
//! delayed too: a verifier thread checks it against its identifier (which
//! must happen before git gets a byte of it) while git writes the other
//! files, instead of git waiting for the check.
//!
//! A failure on one file answers that file `status=error` and the process
//! carries on; only a broken protocol stream ends it. Nothing but protocol
//! bytes is written to the output.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use super::pktline::{ContentReader, ContentWriter, PktLineError, PktReader, PktWriter};
use super::statcache::{Stat, StatCache};
use super::{Cleaned, FilterError, Smudged};
use crate::archive::ArchiveError;
use crate::hashing;
use crate::index::Index;
use crate::marker::{self, Marker};
use crate::oid::ObjectId;
use crate::store::{Store, Unavailable};
use crate::transfer::Progress;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Protocol(#[from] PktLineError),
    #[error("git's filter handshake ended early")]
    HandshakeEnded,
    #[error("unexpected filter handshake from git: {0:?} (expected git-filter-client, version=2)")]
    Handshake(String),
    #[error("git sent unknown filter command {0:?}")]
    UnknownCommand(String),
    #[error("git sent filter command {0:?} without a pathname")]
    NoPathname(String),
}

/// What the process reports as it goes; the command layer decides what to
/// show (stderr, a debug log). Nothing here may write to git's stdout.
pub trait Observer {
    /// A file failed; git was told `status=error` for it.
    fn failed(&mut self, _command: &str, _path: &str, _error: &dyn std::error::Error) {}
    /// Smudge left the marker in place: neither cache nor archive had the object.
    fn missing(&mut self, _path: &str, _unavailable: &Unavailable) {}
    /// What clean did with a file.
    fn cleaned(&mut self, _path: &str, _outcome: &Cleaned) {}
    /// Smudge answered `status=delayed` for a file.
    fn delayed(&mut self, _path: &str, _marker: &Marker) {}
}

/// Counts of what one process did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub cleaned: u64,
    /// Cleaned files whose content had to be hashed.
    pub hashed: u64,
    pub smudged: u64,
    pub delayed: u64,
    pub missing: u64,
    pub failed: u64,
}

/// Everything the protocol works with.
pub struct Filter<'a> {
    pub store: &'a Store,
    pub index: &'a mut dyn Index,
    pub stat_cache: &'a mut StatCache,
    /// The work tree whose paths git names; stat data comes from there.
    pub workdir: Option<&'a Path>,
    pub progress: &'a dyn Progress,
    pub observer: &'a mut dyn Observer,
}

/// Cached objects from this size on are verified ahead, on the verifier
/// thread, while git goes on; smaller ones are checked as git asks for them,
/// which costs less than the extra round trip.
const VERIFY_AHEAD_FROM: u64 = 8 << 20;

enum FetchMsg {
    Fetch(Marker),
    /// git asked for what is available: fetch whatever is queued now.
    Go,
}

/// Per object: why it could not be had, if so, and whether this process
/// verified every byte of it moments ago (it downloaded or checked it).
type Fetched = Vec<(Marker, Option<Unavailable>, bool)>;

/// Serve git on `input`/`output` until git closes the stream.
pub fn serve(
    filter: Filter<'_>,
    input: impl Read,
    output: impl Write,
) -> Result<Summary, ProcessError> {
    let mut reader = PktReader::new(input);
    let mut writer = PktWriter::new(output);
    let caps = handshake(&mut reader, &mut writer)?;
    let store = filter.store;
    let progress = filter.progress;
    let over = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (to_fetcher, queue) = mpsc::channel::<FetchMsg>();
        let (to_verifier, verify_queue) = mpsc::channel::<Marker>();
        let (fetched_tx, fetched) = mpsc::channel::<Fetched>();
        let over = &over;
        let verified_tx = fetched_tx.clone();
        scope.spawn(move || fetcher(store, progress, queue, fetched_tx, over));
        scope.spawn(move || verifier(store, verify_queue, verified_tx, over));
        let mut session = Session {
            f: filter,
            caps,
            summary: Summary::default(),
            to_fetcher,
            to_verifier,
            fetched,
            delayed: HashMap::new(),
            requested: HashSet::new(),
            outstanding: 0,
            results: HashMap::new(),
            verified: HashSet::new(),
            announced: HashSet::new(),
        };
        // The fetcher and the verifier end when `session` (holding their
        // senders) is dropped, without starting on what is still queued:
        // nobody will collect it.
        let served = session.run(&mut reader, &mut writer);
        over.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(session);
        served
    })
}

#[derive(Clone, Copy, Debug)]
struct Caps {
    clean: bool,
    smudge: bool,
    delay: bool,
}

fn handshake<R: Read, W: Write>(
    reader: &mut PktReader<R>,
    writer: &mut PktWriter<W>,
) -> Result<Caps, ProcessError> {
    let welcome = reader.read_list()?.ok_or(ProcessError::HandshakeEnded)?;
    let shown = |lines: &[Vec<u8>]| {
        lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if welcome.first().map(Vec::as_slice) != Some(b"git-filter-client")
        || !welcome.iter().any(|l| l == b"version=2")
    {
        return Err(ProcessError::Handshake(shown(&welcome)));
    }
    writer.list(&["git-filter-server", "version=2"])?;
    let offered = reader.read_list()?.ok_or(ProcessError::HandshakeEnded)?;
    let has = |cap: &[u8]| {
        offered
            .iter()
            .any(|l| l.strip_prefix(b"capability=") == Some(cap))
    };
    let caps = Caps {
        clean: has(b"clean"),
        smudge: has(b"smudge"),
        delay: has(b"delay"),
    };
    for (on, line) in [
        (caps.clean, "capability=clean"),
        (caps.smudge, "capability=smudge"),
        (caps.delay, "capability=delay"),
    ] {
        if on {
            writer.line(line)?;
        }
    }
    writer.flush_pkt()?;
    Ok(caps)
}

/// Downloads delayed objects: queued markers go to the archive in batches,
/// each batch with `Store::parallelism()` transfers at once.
fn fetcher(
    store: &Store,
    progress: &dyn Progress,
    queue: mpsc::Receiver<FetchMsg>,
    fetched: mpsc::Sender<Fetched>,
    over: &std::sync::atomic::AtomicBool,
) {
    let batch_size = store.archive.batch_size().max(1);
    let mut batch: Vec<Marker> = Vec::new();
    let run = |batch: &mut Vec<Marker>| {
        if batch.is_empty() {
            return true;
        }
        let markers = std::mem::take(batch);
        // Objects already cached were put there by someone else: smudge
        // verifies those as usual.
        let present: HashSet<ObjectId> = markers
            .iter()
            .filter(|m| store.cache.contains(&m.id))
            .map(|m| m.id)
            .collect();
        let mut failed: HashMap<ObjectId, Unavailable> = match store.fetch_many(&markers, progress)
        {
            Ok(unavailable) => unavailable.into_iter().map(|u| (u.id, u)).collect(),
            // The cache itself failed (a full disk, say): every object of the
            // batch is unavailable for that reason.
            Err(e) => markers
                .iter()
                .map(|m| {
                    (
                        m.id,
                        unavailable(store, m.id, crate::diagnostics::one_line(&e)),
                    )
                })
                .collect(),
        };
        let done = markers
            .into_iter()
            .map(|m| {
                let u = failed.remove(&m.id);
                let downloaded = u.is_none() && !present.contains(&m.id);
                (m, u, downloaded)
            })
            .collect();
        fetched.send(done).is_ok()
    };
    while let Ok(msg) = queue.recv() {
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let go = match msg {
            FetchMsg::Fetch(m) => {
                batch.push(m);
                batch.len() >= batch_size
            }
            FetchMsg::Go => true,
        };
        if go && !run(&mut batch) {
            return;
        }
    }
}

/// Verifies large cached objects ahead of git's asking for them, one at a
/// time, as they come: `Store::get` checks the object against its identifier
/// (a damaged copy is quarantined and fetched again from the archive).
fn verifier(
    store: &Store,
    queue: mpsc::Receiver<Marker>,
    verified: mpsc::Sender<Fetched>,
    over: &std::sync::atomic::AtomicBool,
) {
    while let Ok(m) = queue.recv() {
        if over.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let result = match store.get(&m) {
            Ok(Ok(_)) => (m, None, true),
            Ok(Err(unavailable)) => (m, Some(unavailable), false),
            // Trouble on this side (a lock that timed out, a full disk):
            // smudge meets it again when git asks, and fails that file.
            Err(_) => (m, None, false),
        };
        if verified.send(vec![result]).is_err() {
            return;
        }
    }
}

fn unavailable(store: &Store, id: ObjectId, message: String) -> Unavailable {
    Unavailable {
        id,
        reason: ArchiveError::Remote {
            archive: store.archive.location().to_owned(),
            message,
            source: None,
        },
        quarantined: None,
    }
}

struct Session<'a> {
    f: Filter<'a>,
    caps: Caps,
    summary: Summary,
    to_fetcher: mpsc::Sender<FetchMsg>,
    to_verifier: mpsc::Sender<Marker>,
    fetched: mpsc::Receiver<Fetched>,
    /// Delayed paths git has not had back yet, with their markers.
    delayed: HashMap<Vec<u8>, Marker>,
    /// Objects handed to the fetcher or the verifier.
    requested: HashSet<ObjectId>,
    /// Of those, how many have no result yet.
    outstanding: usize,
    /// Fetch results: `None` fetched, `Some` why not.
    results: HashMap<ObjectId, Option<Unavailable>>,
    /// Objects this process downloaded or verified itself.
    verified: HashSet<ObjectId>,
    /// Delayed paths already listed as available to git.
    announced: HashSet<Vec<u8>>,
}

/// One request's header.
struct Request {
    command: String,
    pathname: Vec<u8>,
    can_delay: bool,
}

fn parse_request(lines: Vec<Vec<u8>>) -> Result<Request, ProcessError> {
    let mut command = None;
    let mut pathname = None;
    let mut can_delay = false;
    for line in lines {
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&line[..eq], &line[eq + 1..]);
        match key {
            b"command" => command = Some(String::from_utf8_lossy(value).into_owned()),
            b"pathname" => pathname = Some(value.to_vec()),
            b"can-delay" => can_delay = value == b"1",
            // ref, treeish, blob and whatever git adds later: not needed.
            _ => {}
        }
    }
    let command = command.ok_or_else(|| ProcessError::UnknownCommand(String::new()))?;
    Ok(Request {
        pathname: pathname.unwrap_or_default(),
        command,
        can_delay,
    })
}

impl Session<'_> {
    fn run<R: Read, W: Write>(
        &mut self,
        reader: &mut PktReader<R>,
        writer: &mut PktWriter<W>,
    ) -> Result<Summary, ProcessError> {
        while let Some(lines) = reader.read_list()? {
            let req = parse_request(lines)?;
            match req.command.as_str() {
                "clean" if self.caps.clean => self.clean(&req, reader, writer)?,
                "smudge" if self.caps.smudge => self.smudge(&req, reader, writer)?,
                "list_available_blobs" if self.caps.delay => self.list_available(writer)?,
                other => return Err(ProcessError::UnknownCommand(other.to_owned())),
            }
        }
        Ok(self.summary)
    }

    fn stat(&self, path: &[u8]) -> Option<Stat> {
        Stat::of(&self.f.workdir?.join(bytes_to_path(path)))
    }

    fn clean<R: Read, W: Write>(
        &mut self,
        req: &Request,
        reader: &mut PktReader<R>,
        writer: &mut PktWriter<W>,
    ) -> Result<(), ProcessError> {
        if req.pathname.is_empty() {
            return Err(ProcessError::NoPathname(req.command.clone()));
        }
        let shown = String::from_utf8_lossy(&req.pathname).into_owned();
        let stat = self.stat(&req.pathname);
        let hint = stat.and_then(|s| self.f.stat_cache.candidate(&req.pathname, &s));
        let mut content = reader.content();
        let mut marker = Vec::new();
        let now = self.f.store.config.clock.current_time();
        let result = super::clean_with_hint(
            self.f.store,
            self.f.index,
            now,
            &mut content,
            &mut marker,
            hint,
        );
        finish_content(&mut content)?;
        self.summary.cleaned += 1;
        match result {
            Ok(outcome) => {
                self.f.observer.cleaned(&shown, &outcome);
                if matches!(outcome, Cleaned::Stored(_)) {
                    self.summary.hashed += 1;
                }
                if let (Some(m), Some(stat)) = (outcome.marker(), stat)
                    && m.size == stat.size
                {
                    self.f.stat_cache.record(&req.pathname, stat, m.id);
                }
                respond_success(writer, &marker)?;
            }
            Err(e) => {
                self.summary.failed += 1;
                self.f.observer.failed("clean", &shown, &e);
                respond_error(writer)?;
            }
        }
        Ok(())
    }

    fn smudge<R: Read, W: Write>(
        &mut self,
        req: &Request,
        reader: &mut PktReader<R>,
        writer: &mut PktWriter<W>,
    ) -> Result<(), ProcessError> {
        let shown = String::from_utf8_lossy(&req.pathname).into_owned();
        // git must have sent all of its content before it reads an answer,
        // so take it all in first: a marker fits in a small buffer; anything
        // longer is content passing through, kept in a temporary file.
        let mut content = reader.content();
        let spooled = spool(&mut content, self.f.store);
        finish_content(&mut content)?;
        let mut spooled = match spooled {
            Ok(s) => s,
            Err(e) => {
                self.summary.failed += 1;
                self.f.observer.failed("smudge", &shown, &e);
                return respond_error(writer);
            }
        };
        self.summary.smudged += 1;

        if spooled.is_empty()
            && let Some(m) = self.delayed.remove(&req.pathname)
        {
            // git is back for a file delayed earlier.
            self.announced.remove(&req.pathname);
            return self.smudge_delayed(&req.pathname, &shown, m, writer);
        }
        if req.can_delay
            && self.caps.delay
            && !self.f.store.config.skip_smudge
            && let Some(m) = spooled.marker()
            && m.size > 0
            && let cached = self.f.store.cache.contains(&m.id)
            && (!cached || m.size >= VERIFY_AHEAD_FROM)
        {
            self.delayed.insert(req.pathname.clone(), m);
            if self.requested.insert(m.id) {
                self.outstanding += 1;
                // Both threads only stop when we drop the senders.
                if cached {
                    let _ = self.to_verifier.send(m);
                } else {
                    let _ = self.to_fetcher.send(FetchMsg::Fetch(m));
                }
            }
            self.summary.delayed += 1;
            self.f.observer.delayed(&shown, &m);
            writer.list(&["status=delayed"])?;
            return Ok(());
        }
        let now = self.f.store.config.clock.current_time();
        let mut out = ContentWriter::after_status(writer, "status=success");
        let result = super::smudge(
            self.f.store,
            self.f.index,
            now,
            &mut spooled.reader(),
            &mut out,
        );
        self.after_smudge(&req.pathname, &shown, result, out)
    }

    /// Answer a smudge git asked for again after `list_available_blobs`.
    fn smudge_delayed<W: Write>(
        &mut self,
        path: &[u8],
        shown: &str,
        m: Marker,
        writer: &mut PktWriter<W>,
    ) -> Result<(), ProcessError> {
        let now = self.f.store.config.clock.current_time();
        let text = m.to_string();
        let strict = self.f.store.config.strict;
        let mut out = ContentWriter::after_status(writer, "status=success");
        let result = match self.results.get(&m.id) {
            // Downloaded or checked by this process, which verified every
            // byte moments ago: no need to hash it a second time.
            Some(None)
                if self.verified.contains(&m.id)
                    && let Some(mut file) = self.f.store.cache.open_sized(&m) =>
            {
                self.f.index.touch(m.id, m.size, now);
                match hashing::copy_apart(&mut file, &mut out) {
                    Ok(_) => Ok(Smudged::Restored(m)),
                    Err(e) => Err(super::read_or_write(m.id, e)),
                }
            }
            // Otherwise read (and verify) it as usual.
            Some(None) | None => super::smudge(
                self.f.store,
                self.f.index,
                now,
                &mut text.as_bytes(),
                &mut out,
            ),
            Some(Some(_)) if strict => {
                let u = self
                    .results
                    .remove(&m.id)
                    .flatten()
                    .expect("the object's result was just seen");
                Err(FilterError::StrictMissing {
                    id: m.id,
                    reason: u.reason,
                })
            }
            Some(Some(u)) => {
                self.f.index.touch(m.id, m.size, now);
                // The marker stays in the file: git writes what it gets.
                out.write_all(text.as_bytes())
                    .map_err(|e| ProcessError::Protocol(PktLineError::Write(e)))?;
                self.summary.missing += 1;
                self.f.observer.missing(shown, u);
                return end_content(out, false);
            }
        };
        self.after_smudge(path, shown, result, out)
    }

    fn after_smudge<W: Write>(
        &mut self,
        path: &[u8],
        shown: &str,
        result: Result<Smudged, FilterError>,
        out: ContentWriter<'_, W>,
    ) -> Result<(), ProcessError> {
        match result {
            Ok(outcome) => {
                match &outcome {
                    Smudged::Missing(_, u) => {
                        self.summary.missing += 1;
                        self.f.observer.missing(shown, u);
                    }
                    Smudged::Restored(m) => {
                        // git is about to write exactly this object to `path`:
                        // the next clean of it has a candidate to compare with.
                        let stat = Stat {
                            size: m.size,
                            ..Stat::default()
                        };
                        self.f.stat_cache.record(path, stat, m.id);
                    }
                    Smudged::PassedThrough | Smudged::Skipped(_) => {}
                }
                end_content(out, false)
            }
            Err(FilterError::Output(e)) => Err(PktLineError::Write(e).into()),
            Err(e) => {
                self.summary.failed += 1;
                self.f.observer.failed("smudge", shown, &e);
                end_content(out, true)
            }
        }
    }

    fn list_available<W: Write>(&mut self, writer: &mut PktWriter<W>) -> Result<(), ProcessError> {
        let _ = self.to_fetcher.send(FetchMsg::Go);
        loop {
            while let Ok(done) = self.fetched.try_recv() {
                self.take_results(done);
            }
            let ready: Vec<Vec<u8>> = self
                .delayed
                .iter()
                .filter(|(p, m)| self.results.contains_key(&m.id) && !self.announced.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            // git wants at least one path while any is on its way; an empty
            // list tells git there is nothing more to wait for.
            if !ready.is_empty() || self.outstanding == 0 {
                for p in &ready {
                    let mut line = b"pathname=".to_vec();
                    line.extend_from_slice(p);
                    writer.line(&line)?;
                    self.announced.insert(p.clone());
                }
                writer.flush_pkt()?;
                writer.list(&["status=success"])?;
                return Ok(());
            }
            match self.fetched.recv() {
                Ok(done) => self.take_results(done),
                // The fetcher is gone: nothing more will come.
                Err(_) => self.outstanding = 0,
            }
        }
    }

    fn take_results(&mut self, done: Fetched) {
        for (m, u, verified) in done {
            self.outstanding = self.outstanding.saturating_sub(1);
            if verified {
                self.verified.insert(m.id);
            }
            self.results.insert(m.id, u);
        }
    }
}

/// After a request: the content must have been read to its flush packet,
/// whatever the filter did with it; a broken stream ends the process.
fn finish_content<R: Read>(content: &mut ContentReader<'_, R>) -> Result<(), ProcessError> {
    if let Some(e) = content.take_error() {
        return Err(e.into());
    }
    content.drain()?;
    Ok(())
}

fn respond_success<W: Write>(
    writer: &mut PktWriter<W>,
    content: &[u8],
) -> Result<(), ProcessError> {
    writer.line("status=success")?;
    writer.flush_pkt_buffered();
    writer.data(content)?;
    writer.flush_pkt_buffered();
    writer.flush_pkt()?;
    Ok(())
}

fn respond_error<W: Write>(writer: &mut PktWriter<W>) -> Result<(), ProcessError> {
    writer.list(&["status=error"])?;
    Ok(())
}

/// End a smudge answer whose content went through `out`: a failure before
/// the first byte is a plain `status=error`; after it, the content is closed
/// and the status changed to error, as the protocol allows.
fn end_content<W: Write>(out: ContentWriter<'_, W>, failed: bool) -> Result<(), ProcessError> {
    let started = out.started();
    let writer = out.finish()?;
    match (started, failed) {
        (false, true) => respond_error(writer),
        (false, false) => respond_success(writer, &[]),
        (true, failed) => {
            writer.flush_pkt_buffered();
            if failed {
                writer.list(&["status=error"])?;
            } else {
                writer.flush_pkt()?;
            }
            Ok(())
        }
    }
}

/// A smudge request's content, held until git has sent all of it.
enum Spooled {
    Memory(Vec<u8>),
    File(std::fs::File),
}

/// Content up to this size is held in memory; more goes to a temporary file.
const SPOOL_MEMORY: usize = 1 << 20;

fn spool<R: Read>(
    content: &mut ContentReader<'_, R>,
    store: &Store,
) -> Result<Spooled, FilterError> {
    // Grown as content arrives: most of what comes here is a marker.
    let mut head = Vec::new();
    let n = content
        .by_ref()
        .take(SPOOL_MEMORY as u64)
        .read_to_end(&mut head)
        .map_err(FilterError::Input)?;
    if n < SPOOL_MEMORY {
        return Ok(Spooled::Memory(head));
    }
    let tmp_dir = store.cache.root().join("tmp");
    let io_err = |source| {
        FilterError::Store(crate::store::StoreError::Cache(
            crate::cache::CacheError::Io {
                path: tmp_dir.clone(),
                source,
            },
        ))
    };
    fs_err::create_dir_all(&tmp_dir).map_err(io_err)?;
    // Unnamed: it vanishes with the process, whatever happens.
    let mut file = tempfile::tempfile_in(&tmp_dir).map_err(io_err)?;
    file.write_all(&head).map_err(io_err)?;
    hashing::copy(content, &mut file).map_err(FilterError::Input)?;
    io::Seek::rewind(&mut file).map_err(io_err)?;
    Ok(Spooled::File(file))
}

impl Spooled {
    fn is_empty(&self) -> bool {
        matches!(self, Spooled::Memory(v) if v.is_empty())
    }

    fn marker(&self) -> Option<Marker> {
        match self {
            Spooled::Memory(v) if v.len() < marker::MAX_LEN => Marker::parse(v),
            _ => None,
        }
    }

    fn reader(&mut self) -> Box<dyn Read + '_> {
        match self {
            Spooled::Memory(v) => Box::new(&v[..]),
            Spooled::File(f) => Box::new(f),
        }
    }
}

#[cfg(unix)]
fn bytes_to_path(bytes: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: &[u8]) -> std::path::PathBuf {
    std::path::PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}
