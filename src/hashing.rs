//! Streaming SHA-256: content is hashed as it moves, never held whole.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::mpsc;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::oid::ObjectId;

/// Chunk size for streaming copies: large enough that hashing, not syscalls,
/// is the cost; small enough that memory stays flat.
pub const CHUNK: usize = 1 << 20;

/// A `CHUNK`-sized buffer, reused within a thread: a filter process handles
/// thousands of small files, and a fresh zeroed megabyte for each one would
/// cost more than the files themselves.
pub struct ChunkBuf(Option<Box<[u8]>>);

thread_local! {
    static SPARE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept per thread; more than a few in use at once is never needed.
const SPARE_MAX: usize = 3;

impl ChunkBuf {
    pub fn take() -> Self {
        let spare = SPARE.with(|s| s.borrow_mut().pop());
        Self(Some(
            spare.unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice()),
        ))
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_deref().expect("present until dropped")
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_deref_mut().expect("present until dropped")
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // During thread teardown the pool may be gone; then the buffer is simply freed.
            let _ = SPARE.try_with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < SPARE_MAX {
                    s.push(buf);
                }
            });
        }
    }
}

/// SHA-256 of a stream. Past `PARALLEL_FROM` bytes the hashing moves to a
/// thread of its own, so that it runs alongside the reading and writing of
/// the stream instead of after them; memory stays at a few chunks.
pub struct Hasher {
    len: u64,
    state: HasherState,
}

enum HasherState {
    Inline(Sha256),
    Threaded(Worker),
    /// Only while switching from one to the other.
    Switching,
}

struct Worker {
    staged: Box<[u8]>,
    filled: usize,
    full: mpsc::SyncSender<(Box<[u8]>, usize)>,
    free: mpsc::Receiver<Box<[u8]>>,
    buffers: usize,
    handle: JoinHandle<Sha256>,
}

/// Streams shorter than this are hashed inline: a thread costs more than it saves.
const PARALLEL_FROM: u64 = 8 * CHUNK as u64;
/// Chunks in flight between the stream and the hashing thread.
const BUFFERS: usize = 3;

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    pub fn new() -> Self {
        Self {
            len: 0,
            state: HasherState::Inline(Sha256::new()),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if let HasherState::Inline(h) = &mut self.state {
            if self.len < PARALLEL_FROM {
                h.update(data);
                return;
            }
            self.go_parallel();
        }
        let HasherState::Threaded(w) = &mut self.state else {
            unreachable!("the hasher is threaded from here on");
        };
        while !data.is_empty() {
            let n = data.len().min(w.staged.len() - w.filled);
            w.staged[w.filled..w.filled + n].copy_from_slice(&data[..n]);
            w.filled += n;
            data = &data[n..];
            if w.filled == w.staged.len() {
                w.send();
            }
        }
    }

    fn go_parallel(&mut self) {
        let HasherState::Inline(h) = std::mem::replace(&mut self.state, HasherState::Switching)
        else {
            unreachable!("only an inline hasher goes parallel");
        };
        let (full, full_rx) = mpsc::sync_channel::<(Box<[u8]>, usize)>(BUFFERS);
        let (free_tx, free) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut h = h;
            for (buf, n) in full_rx {
                h.update(&buf[..n]);
                // The writer may be gone (an error upstream): the buffer is then dropped.
                let _ = free_tx.send(buf);
            }
            h
        });
        self.state = HasherState::Threaded(Worker {
            staged: vec![0u8; CHUNK].into_boxed_slice(),
            filled: 0,
            full,
            free,
            buffers: 1,
            handle,
        });
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> ObjectId {
        match self.state {
            HasherState::Inline(h) => ObjectId::from_digest(h),
            HasherState::Threaded(mut w) => {
                if w.filled > 0 {
                    w.send();
                }
                let Worker { full, handle, .. } = w;
                drop(full);
                ObjectId::from_digest(handle.join().expect("the hashing thread does not panic"))
            }
            HasherState::Switching => unreachable!("never left switching"),
        }
    }
}

impl Worker {
    /// Hand the staged chunk to the thread and stage into a free one.
    fn send(&mut self) {
        let next = match self.free.try_recv() {
            Ok(buf) => buf,
            Err(_) if self.buffers < BUFFERS => {
                self.buffers += 1;
                vec![0u8; CHUNK].into_boxed_slice()
            }
            Err(_) => self
                .free
                .recv()
                .expect("the hashing thread lives while chunks are sent"),
        };
        let chunk = std::mem::replace(&mut self.staged, next);
        self.full
            .send((chunk, self.filled))
            .expect("the hashing thread lives while chunks are sent");
        self.filled = 0;
    }
}

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Hasher::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hasher.is_empty()
    }

    pub fn finish(self) -> (ObjectId, u64, W) {
        let len = self.hasher.len();
        (self.hasher.finish(), len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copy `reader` to `writer` in large chunks; returns bytes copied.
pub fn copy(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<u64> {
    let mut buf = ChunkBuf::take();
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Which side of a copy failed.
#[derive(Debug)]
pub enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `copy`, telling a failing read from a failing write: a bad cache file
/// is one file's failure, a closed pipe to git is everyone's.
pub fn copy_apart(reader: &mut dyn Read, writer: &mut dyn Write) -> Result<u64, CopyError> {
    let mut buf = ChunkBuf::take();
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
}

/// Hash everything `reader` yields.
pub fn hash_reader(reader: &mut dyn Read) -> io::Result<(ObjectId, u64)> {
    let mut sink = HashingWriter::new(io::sink());
    copy(reader, &mut sink)?;
    let (id, len, _) = sink.finish();
    Ok((id, len))
}

/// Read until `buf` is full or the input ends; returns how much was read.
pub fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threaded_hashing_gives_the_same_identifier_as_inline() {
        let data: Vec<u8> = (0..(PARALLEL_FROM as usize * 2 + 12_345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let expected = ObjectId::of_bytes(&data);
        // Odd write sizes cross chunk edges and the switch to the thread.
        for step in [1usize << 20, 65_516, 999_983] {
            let mut h = Hasher::new();
            for part in data.chunks(step) {
                h.update(part);
            }
            assert_eq!(h.len(), data.len() as u64);
            assert_eq!(h.finish(), expected, "step {step}");
        }
        let mut small = Hasher::new();
        small.update(b"abc");
        assert_eq!(small.finish(), ObjectId::of_bytes(b"abc"));
    }
}
