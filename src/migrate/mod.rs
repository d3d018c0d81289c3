//! One migration, both sides of it.
//!
//! - [`source`]: `haul pid`: pre-flight, the dump, holding `post-dump` until the destination
//!   runs the process, resuming it at home on any failure;
//! - [`destination`]: `haul serve`: the accept loop and one state machine per migration;
//! - [`strategy`]: which way memory moves, and how `auto` chooses;
//! - [`converge`]: pre-copy forced to converge: throttle levels, dirty rate, estimated downtime, the stop rule and its fallback;
//! - [`images`]: the per-migration image directories on both nodes;
//! - [`transfer`]: image files over the control channel;
//! - [`relay`]: post-copy page traffic between CRIU's local endpoints, over an authenticated channel;
//! - [`sockopt`]: bounded failure detection on every connection;
//! - [`tree`]: the process tree being migrated, as /proc shows it;
//! - [`report`]: the JSON report and the P.Haul-style summary;
//! - [`error`]: what can fail, and where the process is afterwards.

pub mod converge;
pub mod destination;
pub mod error;
pub mod images;
pub mod relay;
pub mod report;
pub mod sockopt;
pub mod source;
pub mod strategy;
pub mod transfer;
pub mod tree;

pub use error::MigrateError;
pub use report::MigrationReport;
pub use strategy::Strategy;

use crate::criu::CriuVersion;
use crate::wire::pb;

impl From<CriuVersion> for pb::CriuVersion {
    fn from(v: CriuVersion) -> Self {
        pb::CriuVersion {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        }
    }
}

impl From<pb::CriuVersion> for CriuVersion {
    fn from(v: pb::CriuVersion) -> Self {
        CriuVersion {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        }
    }
}

/// The default image directory on both nodes.
pub const DEFAULT_IMG_PATH: &str = "/var/local/haul";
