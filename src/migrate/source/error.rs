//! What can fail in `haul pid`, and where the process is afterwards.

use crate::criu::diagnosis::{diagnose_error, Diagnosis};
use crate::criu::CriuError;
use crate::preflight::inspect::InspectError;
use crate::preflight::Refusal;

use super::super::control::ChannelError;
use super::super::error::PathError;
use super::super::transfer::SendError;

/// One failure of `haul pid`. [`SourceFailure`] adds where the process is.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SourceError {
    /// no process with pid {0} (check `ps -p {0}`)
    NoSuchPid(i32),
    /// {0}
    Criu(#[from] CriuError),
    /// {0}
    CriuFailed(Box<Diagnosis>),
    /// cannot inspect the process tree
    Inspect(#[from] InspectError),
    /// pre-flight refused the migration, nothing was frozen: {0}
    Refused(Refusal),
    /// {0}
    Channel(#[from] ChannelError),
    /// {0}
    Io(#[from] PathError),
    /// strategy {strategy} cannot run here: missing {why} (run `haul check` on both nodes; --strategy auto picks one that can)
    StrategyUnavailable {
        /// The strategy.
        strategy: &'static str,
        /// What is missing.
        why: String,
    },
    /// pre-copy did not converge: {0}; raise --max-downtime, or use --on-timeout proceed or --strategy post-copy
    NotConverged(String),
    /// --pre-dump-mode read cannot run here: {0}
    PreDumpMode(String),
    /// the throttle could not be released before the final dump, so the dump was refused and the tree runs on here: {0}
    ThrottleNotReleased(#[source] crate::throttle::ThrottleError),
    /// CRIU's dump ended without its post-dump notification (is this CRIU >= 4.1?)
    NoPostDump,
    /// CRIU's dump reached post-dump without its pre-dump notification while pre-copy's throttle was held, so the tree was dumped inside haul's cgroup: the dump was refused and CRIU resumes the tree (is this CRIU >= 4.1?)
    NoPreDump,
    /// CRIU's lazy dump ended before it served pages
    LazyDumpEnded,
    /// cannot reach CRIU's lazy-pages server on 127.0.0.1:{port}
    LazyServer {
        /// Its port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// the post-copy memory channel with {peer} broke before every page had arrived
    PageFlow {
        /// The destination.
        peer: String,
        /// What the channel said.
        #[source]
        source: std::io::Error,
    },
    /// the destination's lazy-pages daemon did not get every page: {0}
    LazyFailed(String),
    /// the destination's pagemaps of pre-copy round {round} are not valid: {detail}
    BadPagemaps {
        /// The round.
        round: u32,
        /// What is wrong.
        detail: String,
    },
    /// {0}
    Sync(#[from] super::sync::FileSyncError),
}

impl SourceError {
    /// A failed CRIU request, diagnosed from its log when it can be (the cause, the resource,
    /// the remedy: never a line CRIU logs on every run).
    pub fn from_criu(e: CriuError) -> SourceError {
        match diagnose_error(&e) {
            Some(d) => SourceError::CriuFailed(Box::new(d)),
            None => SourceError::Criu(e),
        }
    }
}

impl From<SendError> for SourceError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Read(p) => SourceError::Io(p),
            SendError::Channel(c) => SourceError::Channel(c),
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
#[error("migration failed: {}\n{whereabouts}", super::super::error::chain(.error))]
pub struct SourceFailure {
    /// What failed.
    pub error: SourceError,
    /// Where the process is now.
    pub whereabouts: Whereabouts,
}
