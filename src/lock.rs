//! Advisory file locks, released when the returned file is dropped.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

pub fn exclusive(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("lock file {}: {e}", path.display())))?;
    file.lock()
        .map_err(|e| io::Error::new(e.kind(), format!("lock file {}: {e}", path.display())))?;
    Ok(file)
}
