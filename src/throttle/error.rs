//! What can fail while throttling a tree, with the path and pid it was about and what to do.

use std::path::PathBuf;

/// One failure of the throttle machinery.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// A cgroup file operation failed.
    #[error("cannot {op} {path}{}: {source}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Cgroup {
        /// What was being done ("create", "write", "read", "remove").
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The task it was about, if any.
        pid: Option<i32>,
        /// The OS error.
        source: std::io::Error,
    },
    /// This node offers no way to slow a tree down.
    #[error("this node cannot throttle a process tree: {why} (pre-copy then relies on its fallback; see `--throttle`)")]
    NoMechanism {
        /// What is missing.
        why: String,
    },
    /// A mounted hierarchy does not fit what the mechanism needs.
    #[error("cgroup hierarchy at {mount}: {why}")]
    Hierarchy {
        /// Its mount point.
        mount: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The tree to throttle is gone.
    #[error("no process with pid {0} to throttle (check `ps -p {0}`)")]
    NoSuchPid(i32),
    /// A cgroup by that name already exists: a previous haul left it (or two migrations share
    /// an id).
    #[error("{0} already exists: a haul killed earlier may have left it; `haul` sweeps stale throttle cgroups at start, or remove it by hand after moving its tasks out")]
    Exists(PathBuf),
    /// Reading /proc failed.
    #[error("cannot read {what} of pid {pid}: {source}")]
    Proc {
        /// What was read.
        what: &'static str,
        /// The pid.
        pid: i32,
        /// The error.
        source: procfs::ProcError,
    },
    /// The throttle was already released; it cannot be set again.
    #[error("the throttle on pid {0} was already released")]
    Released(i32),
    /// Releasing left something behind. The limit itself was lifted first, so the tasks run
    /// at full speed; what remains is cgroup membership.
    #[error("releasing the throttle left {} task(s) in {cgroup} ({remaining:?}){}: {why}; move each back with `echo PID > ORIGINAL/cgroup.procs` (their original cgroups are in the journal {journal}) and `rmdir {cgroup}`", remaining.len(), if *limit_lifted { "; the limit was lifted" } else { "; THE LIMIT COULD NOT BE LIFTED" })]
    NotReleased {
        /// haul's cgroup.
        cgroup: PathBuf,
        /// Tasks still in it.
        remaining: Vec<i32>,
        /// Whether the CPU limit / freeze was lifted.
        limit_lifted: bool,
        /// The first error met.
        why: String,
        /// The journal that records where each task came from.
        journal: String,
    },
    /// The journal of a throttle could not be written or read.
    #[error("throttle journal {path}: {why}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

impl ThrottleError {
    /// A cgroup file error.
    pub fn cgroup(
        op: &'static str,
        path: impl Into<PathBuf>,
        pid: Option<i32>,
        source: std::io::Error,
    ) -> Self {
        ThrottleError::Cgroup {
            op,
            path: path.into(),
            pid,
            source,
        }
    }

    /// Whether this is "the task is gone" (ESRCH when moving it).
    pub fn is_gone(&self) -> bool {
        matches!(self, ThrottleError::Cgroup { source, .. } if source.raw_os_error() == Some(libc::ESRCH))
    }
}
