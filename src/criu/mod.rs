//! CRIU, driven over its RPC protocol (`criu swrk <fd>`).
//!
//! - [`worker`]: one `criu swrk` child process and the SOCK_SEQPACKET socket to it;
//! - [`client`]: the requests haul makes (version, check, features, cpuinfo, dump, restore,
//!   page server) and [`client::Operation`], which hands every notification to the caller, who
//!   decides when to acknowledge it (the migration holds `post-dump` while it restores);
//! - [`options`]: building `criu_opts` for each request;
//! - [`stats`]: the `stats-dump` / `stats-restore` images;
//! - [`error`]: what can go wrong, with CRIU's errno, message and log path;
//! - [`diagnosis`]: why a dump or restore failed, read from CRIU's log (cause, resource, remedy).

pub mod client;
pub mod diagnosis;
pub mod error;
pub mod options;
pub mod scripted;
pub mod service;
pub mod stats;
pub mod worker;

/// The prost types generated from `proto/criu/*.proto` (CRIU's own field numbers).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

pub use client::{Criu, CriuVersion, Event, Features, Notification, Operation};
pub use error::CriuError;
pub use stats::{DumpStats, RestoreStats};

/// The oldest CRIU haul works with (3.17 fails on recent kernels; 4.1 has what haul uses).
pub const MIN_CRIU_VERSION: (i32, i32) = (4, 1);
