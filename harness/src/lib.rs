//! The haul harness: node pairs to migrate between, and the plumbing to run `haul serve` and
//! `haul pid` on them.
//!
//! - [`netns`]: the `local` provider: two network namespaces joined by a veth pair.

pub mod netns;

pub use netns::NodePair;
