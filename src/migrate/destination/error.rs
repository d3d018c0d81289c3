//! What can fail on the destination, one enum per operation, and the wire error kind each
//! failure is reported to the source with.

use std::path::PathBuf;

use crate::criu::diagnosis::{diagnose_error, Diagnosis};
use crate::criu::{CriuError, CriuVersion};
use crate::preflight::Refusal;
use crate::wire::pb::{self, ErrorKind};

use super::super::control::ChannelError;
use super::super::error::PathError;
use super::super::transfer::ChunkError;

/// A migration refused at `Begin`, before anything is frozen on the source.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum PrepareError {
    /// invalid migration id {0:?}: at most 64 letters, digits, `-` and `_`
    BadMigrationId(String),
    /// the source's CRIU {source_version} is newer than this node's {ours}: its images may not restore here; upgrade CRIU on the destination
    CriuTooOld {
        /// The source's CRIU.
        source_version: CriuVersion,
        /// This node's CRIU.
        ours: CriuVersion,
    },
    /// not enough space in {path}: {free_mib} MiB free, the migration needs about {need_mib} MiB; free space there or serve with another --img-path
    NoSpace {
        /// The image path.
        path: PathBuf,
        /// Free space (MiB).
        free_mib: u64,
        /// Space needed (MiB).
        need_mib: u64,
    },
    /// this node's CPU cannot run the source's process (CRIU's CPUINFO_CHECK failed): migrate between nodes with the same CPU features
    CpuMismatch(#[source] CriuError),
    /// the source's pre-flight requirements do not decode (a source of another haul version?)
    BadRequirements(#[source] serde_json::Error),
    /// {0}
    Refused(Refusal),
    /// {0}
    Io(#[from] PathError),
}

/// A CRIU page server round failed.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum PageServerError {
    /// the source started the page server for round {0} twice
    StartedTwice(u32),
    /// the source ended round {0}, which has no page server
    NotStarted(u32),
    /// the memory channel for round {round} did not arrive within {secs} s
    NoMemoryChannel {
        /// The round.
        round: u32,
        /// The bound (s).
        secs: u64,
    },
    /// CRIU's page server for round {round} failed
    Criu {
        /// The round.
        round: u32,
        /// CRIU's error.
        #[source]
        source: CriuError,
    },
    /// CRIU's page server for round {round} did not exit within {secs} s
    Stuck {
        /// The round.
        round: u32,
        /// The bound (s).
        secs: u64,
    },
    /// CRIU's page server for round {round} exited with status {status:#x} (see {log})
    Exit {
        /// The round.
        round: u32,
        /// Its wait status.
        status: i32,
        /// Its log.
        log: PathBuf,
    },
    /// {0}
    Io(#[from] PathError),
}

/// The restore failed, or was discarded before the process ran.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RestoreError {
    /// the source asked for the restore while the page server of round {0} still runs
    PageServerRunning(u32),
    /// the source asked for the restore before every image file was complete
    ImagesIncomplete,
    /// CRIU could not restore the process
    Criu(#[source] CriuError),
    /// post-copy's lazy pages could not be set up
    Lazy(#[from] LazyError),
    /// the held copy's memory did not all arrive: {0}
    Incomplete(String),
    /// {0}
    Io(#[from] PathError),
}

/// Post-copy's lazy-pages daemon and relay.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LazyError {
    /// cannot set up the local end of a memory channel (the relay's loopback listener or a
    /// stream handed to the engine)
    LocalEnd(#[source] std::io::Error),
    /// cannot set up the lazy pages' local socket in {dir}
    Bind {
        /// The restore's work directory the socket goes into.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// cannot start haul lazy-engine in {dir}
    EngineSpawn {
        /// The final round's directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// the memory stream {round} did not arrive within {secs} s
    NoMemoryChannel {
        /// The stream (lazy round).
        round: u32,
        /// The bound (s).
        secs: u64,
    },
    /// cannot start `{criu} lazy-pages`
    Spawn {
        /// The CRIU binary.
        criu: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// criu lazy-pages did not create its socket within {secs} s (see {log})
    NotStarted {
        /// The bound (s).
        secs: u64,
        /// Its log.
        log: PathBuf,
    },
}

/// One migration on the destination failed.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ServeError {
    /// {0}
    Channel(#[from] ChannelError),
    /// migration refused
    Prepare(#[from] PrepareError),
    /// {0}
    PageServer(#[from] PageServerError),
    /// restore failed
    Restore(#[from] RestoreError),
    /// an image file of round {round} was refused
    Chunk {
        /// The round.
        round: u32,
        /// Why.
        #[source]
        source: ChunkError,
    },
    /// {got} is not valid in state {state}
    InvalidCommand {
        /// The destination's state.
        state: &'static str,
        /// The message received.
        got: &'static str,
    },
    /// the source abandoned the migration: {0}
    Abandoned(String),
    /// {0}
    Io(#[from] PathError),
    /// this node cannot serve
    Node(#[from] super::StartError),
    /// {0}
    Sync(#[from] super::sync::FileSyncError),
}

impl ServeError {
    /// The `Error` message the source is told: the kind, the whole cause chain, and the
    /// findings or CRIU diagnosis behind it, typed (JSON of haul's own types).
    pub fn to_wire(&self) -> pb::Error {
        let findings_json = match self {
            ServeError::Prepare(PrepareError::Refused(r)) => {
                serde_json::to_string(&r.findings).unwrap_or_default()
            }
            _ => String::new(),
        };
        let diagnosis_json = self
            .diagnosis()
            .and_then(|d| serde_json::to_string(&d).ok())
            .unwrap_or_default();
        pb::Error {
            kind: self.wire_kind() as i32,
            message: super::super::error::chain(self),
            findings_json,
            diagnosis_json,
        }
    }

    /// The diagnosis of the CRIU run behind this failure, from its log.
    pub fn diagnosis(&self) -> Option<Diagnosis> {
        match self {
            ServeError::Restore(RestoreError::Criu(e))
            | ServeError::PageServer(PageServerError::Criu { source: e, .. }) => diagnose_error(e),
            _ => None,
        }
    }

    /// The kind the source is told.
    pub fn wire_kind(&self) -> ErrorKind {
        match self {
            ServeError::Channel(ChannelError::Auth { .. }) => ErrorKind::Auth,
            ServeError::Channel(_) | ServeError::InvalidCommand { .. } => ErrorKind::Protocol,
            ServeError::Abandoned(_) => ErrorKind::Protocol,
            ServeError::Prepare(p) => match p {
                PrepareError::BadMigrationId(_) => ErrorKind::Protocol,
                PrepareError::CriuTooOld { .. } => ErrorKind::Version,
                PrepareError::NoSpace { .. } => ErrorKind::Space,
                PrepareError::CpuMismatch(_) => ErrorKind::Cpu,
                PrepareError::BadRequirements(_) => ErrorKind::Protocol,
                PrepareError::Refused(_) => ErrorKind::Refused,
                PrepareError::Io(_) => ErrorKind::Io,
            },
            ServeError::PageServer(p) => match p {
                PageServerError::StartedTwice(_) | PageServerError::NotStarted(_) => {
                    ErrorKind::Protocol
                }
                PageServerError::Io(_) => ErrorKind::Io,
                _ => ErrorKind::Criu,
            },
            ServeError::Restore(r) => match r {
                RestoreError::PageServerRunning(_) | RestoreError::ImagesIncomplete => {
                    ErrorKind::Protocol
                }
                RestoreError::Io(_) => ErrorKind::Io,
                RestoreError::Criu(_) | RestoreError::Lazy(_) | RestoreError::Incomplete(_) => {
                    ErrorKind::Criu
                }
            },
            ServeError::Chunk { source, .. } => match source {
                ChunkError::Budget { .. } => ErrorKind::Space,
                ChunkError::Io { .. } => ErrorKind::Io,
                _ => ErrorKind::Protocol,
            },
            ServeError::Io(_) => ErrorKind::Io,
            ServeError::Node(_) => ErrorKind::Busy,
            ServeError::Sync(s) => s.wire_kind(),
        }
    }
}
