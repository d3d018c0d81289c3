//! One migration, both sides of it.
//!
//! - [`source`]: `haul pid`: pre-flight, the dump, holding `post-dump` until the destination
//!   runs the process, resuming it at home on any failure;
//! - [`destination`]: `haul serve`: the accept loop and one typed state machine per migration;
//! - [`control`]: the control channel both sides speak (typed sends, named waits);
//! - [`limits`]: every time and size bound, in one place;
//! - [`strategy`]: which way memory moves, and how `auto` chooses;
//! - [`converge`]: when pre-copy's rounds stop and how hard they throttle the tree: P.Haul's
//!   rules, dirty rate, estimated downtime, throttle levels, the fallback;
//! - [`images`]: the per-migration image directories on both nodes;
//! - [`transfer`]: image files over the control channel;
//! - [`relay`]: post-copy page traffic between CRIU's local endpoints, over an authenticated channel;
//! - [`sockopt`]: bounded failure detection on every connection;
//! - [`tree`]: the process tree being migrated, as /proc shows it;
//! - [`report`]: the JSON report and the P.Haul-style summary;
//! - [`error`]: error pieces both sides share.

pub mod control;
pub mod converge;
pub mod destination;
pub mod error;
pub mod images;
pub mod limits;
pub mod relay;
pub mod report;
pub mod sockopt;
pub mod source;
pub mod strategy;
pub mod transfer;
pub mod tree;

pub use report::MigrationReport;
pub use strategy::Strategy;

/// The default image directory on both nodes.
pub const DEFAULT_IMG_PATH: &str = "/var/local/haul";
