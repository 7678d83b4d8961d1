//! Files that are about to be made durable: the disk write of their bytes
//! starts while more bytes are still coming, so that the sync which makes
//! the file durable (an archive's `flush`) finds little left to write, and
//! the disk works while the network or the hashing does.

use std::io::{self, Write};

/// Bytes written between two write-back starts.
const STEP: u64 = 8 << 20;

/// A file writer that asks the kernel to start writing each `STEP` of
/// bytes to disk as soon as it has been written (Linux: `sync_file_range`
/// with `SYNC_FILE_RANGE_WRITE`, which does not wait for the disk).
/// Durability still comes from the fsync that follows; this only
/// moves the work earlier. Elsewhere it is a plain writer.
pub struct WriteBehind<W> {
    inner: W,
    written: u64,
    started: u64,
}

impl<W> WriteBehind<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            written: 0,
            started: 0,
        }
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &impl std::os::fd::AsFd, offset: u64, len: u64) {
    use std::os::fd::AsRawFd as _;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps
    // open. It is a hint: a failure here shows up in the sync that follows.
    unsafe {
        libc::sync_file_range(
            file.as_fd().as_raw_fd(),
            offset,
            len,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback<F>(_file: &F, _offset: u64, _len: u64) {}

#[cfg(unix)]
impl<W: Write + std::os::fd::AsFd> Write for WriteBehind<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= STEP {
            start_writeback(&self.inner, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(not(unix))]
impl<W: Write> Write for WriteBehind<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
