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

use super::MigrateError;

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

/// A new migration id: time, pid and a random suffix, e.g. `20261125-201501-4242-9f3a`.
pub fn new_migration_id(pid: i32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    // civil time (UTC) without a date crate
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{pid}-{:04x}",
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        rand::random::<u16>()
    )
}

/// Checks a migration id a peer sent: used as a directory name.
pub fn valid_migration_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl MigrationDir {
    /// Creates `<img_path>/<id>/` (and `img_path` when missing).
    pub fn create(img_path: &Path, id: &str) -> Result<MigrationDir, MigrateError> {
        let root = img_path.join(id);
        std::fs::create_dir_all(&root)
            .map_err(|e| MigrateError::io("cannot create image directory", &root, e))?;
        Ok(MigrationDir { root })
    }

    /// The migration's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and opens a round's directory.
    pub fn round(&self, round: u32) -> Result<RoundDir, MigrateError> {
        self.sub(&round_name(round))
    }

    /// Creates and opens the subdirectory `name` (e.g. `cpuinfo`).
    pub fn sub(&self, name: &str) -> Result<RoundDir, MigrateError> {
        let path = self.root.join(name);
        std::fs::create_dir_all(&path)
            .map_err(|e| MigrateError::io("cannot create round directory", &path, e))?;
        let fd = File::open(&path)
            .map_err(|e| MigrateError::io("cannot open round directory", &path, e))?;
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
pub fn free_bytes(path: &Path) -> Result<u64, MigrateError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| MigrateError::io("cannot statvfs", path, e.into()))?;
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
