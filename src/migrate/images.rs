//! Per-migration image directories, kept after the migration for inspection (as P.Haul did).
//!
//! ```text
//! <img-path>/<migration-id>/
//!     round-1/ round-2/ ...  pre-dump rounds (pre-copy, hybrid)
//!     final/                 the final dump (images + dump.log, or on the destination the
//!                            received images, page-server.log, restore.log, stats-restore)
//!     report.json            the source's report
//! ```

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use super::error::PathError;

/// The directory of one migration on one node.
#[derive(Debug, Clone)]
pub struct MigrationDir {
    root: PathBuf,
}

/// The final dump's directory name.
pub const FINAL: &str = "final";

/// A round's directory name: `final` for round 0, `round-N` otherwise.
pub fn round_name(round: u32) -> String {
    if round == 0 {
        FINAL.to_string()
    } else {
        format!("round-{round}")
    }
}

/// A new migration id: UTC time, pid and a random suffix, e.g. `20261125-201501-4242-9f3a`.
pub fn new_migration_id(pid: i32) -> String {
    let stamp = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    let now = time::OffsetDateTime::now_utc()
        .format(&stamp)
        .unwrap_or_else(|_| "00000000-000000".into());
    format!("{now}-{pid}-{:04x}", rand::random::<u16>())
}

/// Checks a migration id a peer sent: used as a directory name.
pub fn valid_migration_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl MigrationDir {
    /// Creates `<img_path>/<id>/` (and `img_path` when missing).
    pub fn create(img_path: &Path, id: &str) -> Result<MigrationDir, PathError> {
        let root = img_path.join(id);
        std::fs::create_dir_all(&root)
            .map_err(|e| PathError::new("cannot create image directory", &root, e))?;
        Ok(MigrationDir { root })
    }

    /// The migration's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and opens a round's directory.
    pub fn round(&self, round: u32) -> Result<RoundDir, PathError> {
        self.sub(&round_name(round))
    }

    /// Creates and opens the subdirectory `name` (e.g. `cpuinfo`).
    pub fn sub(&self, name: &str) -> Result<RoundDir, PathError> {
        let path = self.root.join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| PathError::new("cannot create round directory", &path, e))?;
        let fd = File::open(&path)
            .map_err(|e| PathError::new("cannot open round directory", &path, e))?;
        Ok(RoundDir { path, fd })
    }
}

/// One round's image directory, held open (CRIU gets it as `images_dir_fd`).
#[derive(Debug)]
pub struct RoundDir {
    path: PathBuf,
    fd: File,
}

impl RoundDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open directory's fd.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Bytes available on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, PathError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| PathError::new("cannot statvfs", path, e.into()))?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_directory_names() {
        let id = new_migration_id(42);
        assert!(valid_migration_id(&id), "{id}");
        assert!(!valid_migration_id("../x"));
        assert!(!valid_migration_id(""));
        assert!(!valid_migration_id("a/b"));
    }
}
