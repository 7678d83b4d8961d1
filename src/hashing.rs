//! Streaming SHA-256: content is hashed as it moves, never held whole.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};

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

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (ObjectId, u64, W) {
        (ObjectId::from_digest(self.hasher), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
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
