//! haul: live migration of Linux processes between machines, driven through CRIU.
//!
//! See ARCHITECTURE.md for the crates and the path of one migration.

pub mod criu;
pub mod fault;
pub mod memory;
pub mod migrate;
pub mod obstacle;
pub mod preflight;
pub mod sync;
pub mod throttle;
pub mod wire;
