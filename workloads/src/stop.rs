//! Stop files: how a harness tells a workload to check itself and exit.
//!
//! A workload polls for a file (relative to its working directory, i.e. on the shared
//! directory) and, once it exists, verifies its state, logs the verdict and `Finish`, and
//! exits. A file works the same on the source and on the destination node, needs no signal
//! (a pid namespace's init ignores signals it has no handler for), and survives migration.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// A stop file at a fixed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopFile {
    path: PathBuf,
}

impl StopFile {
    /// A stop file at `path` (relative paths are resolved against the caller's working
    /// directory at each check, as `access(2)` does).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StopFile { path: path.into() }
    }

    /// Where the stop file is looked for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the stop file exists (what the workload polls).
    pub fn requested(&self) -> bool {
        self.path.symlink_metadata().is_ok()
    }

    /// Create the stop file (what a harness does to stop the workload).
    pub fn request(&self) -> io::Result<()> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map(drop)
    }

    /// Remove the stop file, if present (before starting a workload in a reused directory).
    pub fn clear(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let stop = StopFile::new(dir.path().join("x-stop"));
        assert!(!stop.requested());
        stop.request().unwrap();
        assert!(stop.requested());
        stop.request().unwrap();
        stop.clear().unwrap();
        assert!(!stop.requested());
        stop.clear().unwrap();
    }
}
