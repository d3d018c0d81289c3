//! CRIU, driven over its RPC protocol (`criu swrk <fd>`).
//!
//! - [`worker`]: one `criu swrk` child process and the SOCK_SEQPACKET socket to it;
//! - [`client`]: the requests haul makes (version, check, features, cpuinfo, dump, restore,
//!   page server) and [`client::Operation`], which hands every notification to the caller, who
//!   decides when to acknowledge it (the migration holds `post-dump` while it restores);
//! - [`hook`]: CRIU's notification hooks by name;
//! - [`service`]: the [`service::CriuService`] trait both sides drive CRIU through, and
//!   [`scripted`], a stand-in for tests;
//! - [`options`]: building `criu_opts` for each request;
//! - [`stats`]: the `stats-dump` / `stats-restore` images;
//! - [`error`]: what can go wrong, with CRIU's errno, message and log path;
//! - [`diagnosis`]: why a dump or restore failed, read from CRIU's log (cause, resource, remedy).

pub mod client;
pub mod diagnosis;
pub mod error;
pub mod hook;
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
pub use hook::Hook;
pub use stats::{DumpStats, RestoreStats};

/// The oldest CRIU haul works with (3.17 fails on recent kernels; 4.1 has what haul uses).
pub const MIN_CRIU_VERSION: (i32, i32) = (4, 1);
