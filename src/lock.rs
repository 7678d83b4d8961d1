//! Advisory file locks, released when the returned file is dropped.
//!
//! The cache is guarded by one lock file: every operation that reads or
//! writes objects holds it shared, gc holds it exclusive. Waits are bounded,
//! and the error on timeout names the lock file.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "timed out after {}s waiting for the lock {} (another fcache process holds it; try again, or look for a stuck fcache process)",
        waited.as_secs(), path.display()
    )]
    Timeout { path: PathBuf, waited: Duration },
    #[error("lock file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Take the lock without waiting: `None` if another holder is in the way.
pub fn try_acquire(path: &Path, mode: Mode) -> Result<Option<File>, LockError> {
    let file = open(path)?;
    let attempt = match mode {
        Mode::Shared => file.try_lock_shared(),
        Mode::Exclusive => file.try_lock(),
    };
    match attempt {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(LockError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Take the lock, waiting up to `timeout` for other holders.
pub fn acquire(path: &Path, mode: Mode, timeout: Duration) -> Result<File, LockError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(file) = try_acquire(path, mode)? {
            return Ok(file);
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LockError::Timeout {
                path: path.to_owned(),
                waited,
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// How long short critical sections (an index save) wait for each other.
pub const SHORT_WAIT: Duration = Duration::from_secs(300);

/// Take an exclusive lock for a short critical section such as an index
/// save, waiting up to `SHORT_WAIT`; the error names the lock file.
pub fn exclusive(path: &Path) -> io::Result<File> {
    acquire(path, Mode::Exclusive, SHORT_WAIT).map_err(|e| match e {
        LockError::Io { source, .. } => io::Error::new(
            source.kind(),
            format!("lock file {}: {source}", path.display()),
        ),
        timeout @ LockError::Timeout { .. } => {
            io::Error::new(io::ErrorKind::TimedOut, timeout.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_coexist_and_exclusive_times_out_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = acquire(&path, Mode::Shared, Duration::from_secs(1)).unwrap();
        let _b = acquire(&path, Mode::Shared, Duration::from_secs(1)).unwrap();
        assert!(try_acquire(&path, Mode::Exclusive).unwrap().is_none());
        let err = acquire(&path, Mode::Exclusive, Duration::from_millis(30)).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(a);
        drop(_b);
        let x = try_acquire(&path, Mode::Exclusive).unwrap();
        assert!(x.is_some());
        assert!(try_acquire(&path, Mode::Shared).unwrap().is_none());
    }
}
