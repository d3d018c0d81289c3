//! The haul harness: drives the migrator the way the HOWTO's user did by hand, for any number
//! of runs. It provisions two nodes, launches a workload in a pid namespace on the shared
//! directory, migrates it with haul (every strategy asked for) and with plain CRIU (the
//! baseline), checks it on the destination, records every figure, and turns the records into
//! plots, a Markdown report, and comparisons between two sets.
//!
//! | module | concern |
//! |---|---|
//! | [`netns`] | two network namespaces joined by a veth pair (the `local` provider's nodes) |
//! | [`mntns`] | node-local disks on one machine: a mount namespace per node (`--sync` scenarios) |
//! | [`provider`] | the node interface and its providers: `local`, `ssh`, `vagrant` |
//! | [`scenario`] | scenario files (TOML): workloads, their parameters, strategies, repetitions, provider |
//! | [`workload`] | starting `mtouch` on a node, finding it after the move, its self-check |
//! | [`runner`] | running a scenario: `haul serve`, `haul pid`, records, progress |
//! | [`baseline`] | the plain-CRIU migration (dump to a page server, copy, restore) |
//! | [`record`] | the results files (JSON lines) |
//! | [`stats`] | medians, quartiles, the permutation test |
//! | [`group`] | records grouped by workload and method |
//! | [`plot`] | the plots (PNG and SVG) |
//! | [`report`] | the Markdown report |
//! | [`compare`] | two results sets: which figures changed beyond the noise |

pub mod baseline;
pub mod compare;
pub mod group;
pub mod mntns;
pub mod netns;
pub mod plot;
pub mod provider;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod workload;

pub use netns::NodePair;
