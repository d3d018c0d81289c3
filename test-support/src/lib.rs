//! What haul's tests share, in one place instead of a copy per test directory:
//!
//! | module | what |
//! |---|---|
//! | [`nodes`] | two nodes on one machine: network namespaces joined by a veth pair, removed with everything in them |
//! | [`dumpable`] | what CRIU needs of a launched workload, asserted from /proc |
//! | [`netns`] | one network namespace with only loopback, removed with everything in it |
//! | [`wait`] | waiting for a condition with a deadline that names what was waited for |
//! | [`skip`] | what a test needs (root, CRIU, a CRIU feature, an opt-in variable), and a test runner ([`skip::run`], libtest-mimic) that reports a test that cannot run here as `ignored` with the reason |
//!
//! Test files that need root or CRIU set `harness = false` in their crate's manifest and end
//! with a `main` that lists their tests for [`skip::run`]; `cargo test` without root then
//! shows, for example, `test e2e_local::post_copy ... ignored, needs root`.

pub mod dumpable;
pub mod netns;
pub mod nodes;
pub mod skip;
pub mod wait;

pub use netns::LoopbackNetns;
pub use nodes::{Node, NodeError, NodePair};
pub use skip::{run, skip, Need, Skipped, Test};
pub use wait::wait_for;
