//! What can fail in file synchronisation. Every variant names the root and entry it is about
//! and, where there is one, what the user can do.

use std::path::PathBuf;

use super::path::PathError;

/// One failure of a sync step (source scan, message production, or the destination applying
/// a message).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A path or root that a peer (or the user) named is not acceptable.
    #[error("{what}: {source}")]
    Path {
        /// Where the path came from (`"--sync argument"`, `"Remove message"`, ...).
        what: String,
        /// Why it was refused.
        source: PathError,
    },
    /// A synced root that cannot be used as such.
    #[error("synced root {root}: {reason}")]
    Root {
        /// The root.
        root: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Resolving an entry would leave its root (a symlink on the way, a mount crossing, `..`).
    #[error("{path}: refused, resolving it would leave the synced root ({detail})")]
    Escape {
        /// The entry (root joined with the relative path).
        path: String,
        /// The kernel's answer.
        detail: String,
    },
    /// A system call failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done (`"create"`, `"read"`, ...).
        op: &'static str,
        /// The entry.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An entry of a kind that is not synced (device nodes).
    #[error("{path} is a {kind}; synced trees may hold regular files, directories, symlinks and FIFOs only (move it out of the tree, or leave the tree on shared storage)")]
    Unsupported {
        /// The entry.
        path: String,
        /// Its kind.
        kind: &'static str,
    },
    /// A mount point inside a synced tree.
    #[error(
        "{path} is a mount point inside a synced tree; name it with its own --sync (or unmount it)"
    )]
    MountPoint {
        /// The entry.
        path: String,
    },
    /// A symlink whose target leaves the tree, under the policy that forbids them.
    #[error("symlink {path} -> {target} points out of the synced tree (the destination refuses it; allow such links explicitly if the process needs them)")]
    SymlinkOutside {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A bound of [`super::limits`] was exceeded.
    #[error("{what} is {value}, above the limit of {limit}")]
    Limit {
        /// What was counted or claimed.
        what: String,
        /// Its value.
        value: u64,
        /// The bound.
        limit: u64,
    },
    /// The destination would need more space than it has.
    #[error("sync needs {wanted} bytes on the destination, which accepts {limit} (free space less its reserve): free space on {root} or sync less")]
    Space {
        /// The root being written.
        root: PathBuf,
        /// Bytes needed so far.
        wanted: u64,
        /// Bytes accepted.
        limit: u64,
    },
    /// A reconstructed segment does not hash to what the source sent.
    #[error("{path}: segment {segment} does not match the source's BLAKE3 after {how} (the destination's copy differs from what the source sent before)")]
    Verify {
        /// The file.
        path: String,
        /// The segment index.
        segment: u32,
        /// `"delta"` or `"literal data"`.
        how: &'static str,
    },
    /// A delta that does not apply.
    #[error("{path}: delta of segment {segment} does not apply: {detail}")]
    Delta {
        /// The file.
        path: String,
        /// The segment index.
        segment: u32,
        /// fast_rsync's error.
        detail: String,
    },
    /// A message that does not fit the receiver's state.
    #[error("sync protocol: {got} while {state}")]
    Protocol {
        /// The receiver's state.
        state: &'static str,
        /// The message, with what is wrong with it.
        got: String,
    },
    /// Pre-flight: files the process holds that are neither under a synced root nor on the
    /// destination as on the source.
    #[error("the process holds {count} file(s) that are neither under a --sync path nor present on the destination with the same size and mode: {list}; add --sync for their directories or copy them to the destination first")]
    HeldFiles {
        /// How many.
        count: usize,
        /// `path (problem)`, comma-separated (the first 20).
        list: String,
    },
    /// The tree changed under the source in a way one round cannot follow; the next round
    /// will.
    #[error("{path} changed while it was read")]
    Changed {
        /// The entry.
        path: String,
    },
}

impl SyncError {
    /// A path error with its origin.
    pub fn path(what: impl Into<String>, source: PathError) -> SyncError {
        SyncError::Path {
            what: what.into(),
            source,
        }
    }

    /// An I/O error on an entry. `ELOOP` and `EXDEV` from a confined resolution mean the path
    /// would have left the root: they become [`SyncError::Escape`].
    pub fn io(op: &'static str, path: impl Into<String>, source: std::io::Error) -> SyncError {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ELOOP) => SyncError::Escape {
                path,
                detail: format!("a symlink on the way: {source}"),
            },
            Some(libc::EXDEV) => SyncError::Escape {
                path,
                detail: format!("a mount point or '..' on the way: {source}"),
            },
            _ => SyncError::Io { op, path, source },
        }
    }

    /// A protocol error.
    pub fn protocol(state: &'static str, got: impl Into<String>) -> SyncError {
        SyncError::Protocol {
            state,
            got: got.into(),
        }
    }

    /// A limit error.
    pub fn limit(what: impl Into<String>, value: u64, limit: u64) -> SyncError {
        SyncError::Limit {
            what: what.into(),
            value,
            limit,
        }
    }
}
