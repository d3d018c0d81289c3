//! What can fail in a migration, and where the process is afterwards.

use std::path::PathBuf;

use crate::criu::CriuError;
use crate::wire::auth::AuthError;
use crate::wire::frame::FrameError;
use crate::wire::KeyError;

/// One failure of a migration step. The source adds where the process is ([`Whereabouts`]).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The pid to migrate does not exist.
    #[error("no process with pid {0} (check `ps -p {0}`)")]
    NoSuchPid(i32),
    /// CRIU failed locally.
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// The key file.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The destination could not be reached.
    #[error("cannot connect to {peer}: {source} (is `haul serve` running there, and is the address reachable from this node?)")]
    Connect {
        /// The destination address.
        peer: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A phase took longer than its bound.
    #[error("{phase} with {peer} did not finish within {secs} s")]
    Timeout {
        /// The peer.
        peer: String,
        /// The phase.
        phase: &'static str,
        /// The bound.
        secs: u64,
    },
    /// The handshake failed.
    #[error("authentication with {peer} failed: {source}")]
    Auth {
        /// The peer.
        peer: String,
        /// What failed.
        source: AuthError,
    },
    /// The control channel failed.
    #[error("control channel with {peer}: {source}")]
    Channel {
        /// The peer.
        peer: String,
        /// What failed.
        source: FrameError,
    },
    /// The peer sent a message that does not fit the protocol state.
    #[error("protocol error with {peer}: {detail}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What was wrong.
        detail: String,
    },
    /// Post-copy: the memory channel failed while pages were still owed to the destination.
    #[error("post-copy memory channel with {peer} broke before every page had arrived: {source}")]
    PageFlow {
        /// The destination.
        peer: String,
        /// What the channel said.
        source: std::io::Error,
    },
    /// The peer reported an error.
    #[error("{peer} reported: {message}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its message.
        message: String,
    },
    /// The requested strategy cannot run on these nodes.
    #[error("strategy {strategy} cannot run here: missing {why} (run `haul check` on both nodes; --strategy auto picks one that can)")]
    StrategyUnavailable {
        /// The strategy.
        strategy: &'static str,
        /// What is missing.
        why: String,
    },
    /// Pre-copy did not reach the downtime target and `--on-timeout cancel` was asked for.
    #[error("pre-copy did not converge: {0}; raise --max-downtime, or use --on-timeout proceed or --strategy post-copy")]
    NotConverged(String),
    /// A file or directory operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What haul was doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl MigrateError {
    /// An I/O error about `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MigrateError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Where the migrated process is after a failed migration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Whereabouts {
    /// Nothing was frozen: the process ran on the source throughout.
    Untouched(i32),
    /// The process was frozen and has been resumed on the source.
    ResumedOnSource(i32),
    /// The process runs on the destination (the failure came after a successful restore).
    OnDestination(i32),
    /// Post-copy: the process ran on the destination (pid there) but its memory stopped
    /// coming before every page had arrived; CRIU ends a copy whose pages cannot come.
    LostInPostCopy {
        /// The pid on the destination.
        pid: i32,
        /// How long the post-copy window had lasted when the page flow broke.
        window_secs: f64,
    },
    /// haul could not confirm where the process is.
    Unknown(i32),
}

impl std::fmt::Display for Whereabouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Whereabouts::Untouched(p) => write!(f, "nothing was frozen: the process still runs on the source (pid {p})"),
            Whereabouts::ResumedOnSource(p) => write!(f, "the process was resumed and still runs on the source (pid {p})"),
            Whereabouts::OnDestination(p) => write!(f, "the process runs on the destination (pid {p} there)"),
            Whereabouts::LostInPostCopy { pid, window_secs } => write!(f, "the process ran on the destination (pid {pid} there), but {window_secs:.2} s into the post-copy window its memory stopped coming with pages still missing: CRIU ends that copy, and the original's tasks were already gone, so the process is lost (post-copy's known risk; --strategy stop-copy never takes it)"),
            Whereabouts::Unknown(p) => write!(f, "haul could not confirm where the process is: check pid {p} on the source and the destination's log"),
        }
    }
}

/// A failed `haul pid`: the error and where the process is.
#[derive(Debug, thiserror::Error)]
#[error("migration failed: {error}\n{whereabouts}")]
pub struct SourceFailure {
    /// What failed.
    pub error: MigrateError,
    /// Where the process is now.
    pub whereabouts: Whereabouts,
}
