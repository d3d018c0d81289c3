//! File synchronisation for migrations without shared storage (issue #18).
//!
//! `haul pid … --sync PATH` copies the named trees to the same paths on the destination over
//! haul's authenticated control channel: in rounds while the process runs (each sending only
//! what changed since the round before, found by size, mtime and ctime and confirmed by
//! per-segment BLAKE3 hashes, changed segments sent as rsync deltas), then once more while it
//! is frozen, then the destination puts the copy in place before CRIU restores.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source (SyncSource)
//!     participant D as destination (SyncReceiver)
//!     S->>D: SyncOpen{session, roots, data bytes}
//!     D->>S: SyncOpened{free bytes}  (roots checked, R/.haul-sync.<id>/ made)
//!     loop while the process runs (RoundPolicy decides when to stop)
//!         S->>D: RoundBegin, Remove/Dir/Symlink/Fifo/HardLink/FileBegin+segments+FileEnd…, RoundEnd
//!         D->>S: RoundApplied{bytes written, apply time}
//!     end
//!     Note over S: freeze the process (CRIU dump)
//!     S->>D: final round (RoundBegin{final}) … RoundEnd
//!     D->>S: RoundApplied
//!     Note over D: install(): staged copy moved into R (R's old entries aside)
//!     Note over D: CRIU restore
//!     Note over D: migration commits: commit() / fails: rollback() (or drop)
//! ```
//!
//! | module | concern |
//! |---|---|
//! | [`path`] | paths a peer may name: roots and entries below them |
//! | [`confine`] | `openat2(RESOLVE_BENEATH \| RESOLVE_NO_SYMLINKS)` access, never leaving a root |
//! | [`manifest`] | scanning a tree: types, owners, modes, times, hard-link groups, extents |
//! | [`plan`] | the diff between what was sent and a new scan, in applicable order |
//! | [`source`] | the source side: rounds of bounded messages (literal data, rsync deltas) |
//! | [`receiver`] | the destination side: confined writes into staging; install, commit, rollback |
//! | [`stats`] | per-round figures and the convergence rule |
//! | [`preflight`] | open and mapped files of the tree, checked against the roots and the destination |
//! | [`loopback`] | both sides in one process (tests) |
//! | [`limits`] | every bound |
//!
//! The sides are transport-agnostic: the source yields [`pb::SyncMessage`]s, the receiver
//! consumes them and answers a round's end with a [`pb::RoundApplied`]. Both do blocking file
//! I/O: run them on a blocking thread (`tokio::task::spawn_blocking`).

pub mod confine;
pub mod error;
pub mod limits;
pub mod loopback;
pub mod manifest;
pub mod path;
pub mod plan;
pub mod preflight;
pub mod receiver;
pub mod source;
pub mod stats;

/// The prost types generated from `proto/haul/sync.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/haul.sync.rs"));
}

pub use error::SyncError;
pub use manifest::SymlinkPolicy;
pub use receiver::{InstallError, InstalledSync, ReceiverConfig, RollbackReport, SyncReceiver};
pub use source::{Round, SourceConfig, SyncSource};
pub use stats::{Decision, RoundPolicy, RoundStats};
