//! The haul harness: one experiment pipeline for local, VM and bench runs. It provisions two
//! nodes, launches a workload in a pid namespace on the shared directory, moves it with each
//! method (haul's strategies, and each one's plain-CRIU twin), checks it on the destination,
//! records every figure in one results format, and turns the records into plots, a Markdown
//! report, and comparisons between two sets.
//!
//! Layers, each using only those above it (no cycle):
//!
//! | module | concern |
//! |---|---|
//! | [`cancel`] | the run's cancellation token (SIGINT/SIGTERM), handed down to every wait (leaf) |
//! | [`case`] | one workload case: program, size, pre-touched memory, dirty rate (leaf) |
//! | [`record`] | the results schema (JSON lines) (leaf, with [`case`]) |
//! | [`stats`] | medians, quartiles, the permutation test (leaf) |
//! | [`node`] | one node: run a command with a timeout and the token, spawn, files |
//! | [`provider`] | where the nodes come from: `local`, `ssh`, `qemu`, `vagrant` (VM lifecycle) |
//! | [`mntns`] | node-local disks on one machine: a mount namespace per node (`--sync` scenarios) |
//! | [`scenario`] | scenario files (TOML): workloads, strategies, repetitions, provider |
//! | [`probe`] | what each node is: kernel, CRIU, what `haul check` says it supports |
//! | [`build`] | building haul's binaries for a run |
//! | [`serve`] | the shared key and the harness's own `haul serve` on the destination |
//! | [`link`] | the link: its bandwidth (for the floor) and the bytes that crossed it |
//! | [`workload`] | starting `mtouch` or `file-churn`, finding it after the move, its self-check |
//! | [`method`] | the [`method::Method`] trait: haul's strategies and their plain-CRIU twins |
//! | [`verify`] | after a move: the workload runs on the destination and finds every page intact |
//! | [`runner`] | the job loop: every case x repetition x method, checked and recorded |
//! | [`group`], [`plot`], [`report`], [`compare`] | reading records back: groups, plots, the report, two sets compared |

pub mod build;
pub mod cancel;
pub mod case;
pub mod compare;
pub mod group;
pub mod link;
pub mod method;
pub mod mntns;
pub mod node;
pub mod plot;
pub mod probe;
pub mod provider;
pub mod record;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod serve;
pub mod stats;
pub mod verify;
pub mod workload;

/// haul's programs every node needs (`bin_dir`): the migrator, the workloads (memory and
/// files), their launcher, and the link probe.
pub const HAUL_PROGRAMS: [&str; 5] = ["haul", "mtouch", "file-churn", "haul-launch", "link-probe"];
