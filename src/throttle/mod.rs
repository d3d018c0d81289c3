//! Slowing a process tree down so that pre-copy converges (issue #15), and giving it back
//! untouched.
//!
//! QEMU's auto-converge slows a guest's vCPUs until its dirty rate fits the link; haul slows
//! the tree of one migration by moving it into a cgroup of its own for the migration:
//!
//! ```text
//! Layout::discover() ── mechanism() ──▶ Mechanism   best first:
//!                                         cgroup v2 cpu.max            (the VMs' Debian 12)
//!                                         cgroup v1 cpu.cfs_quota_us   (this host)
//!                                         cgroup v2 cgroup.freeze  ┐ duty cycle: frozen
//!                                         cgroup v1 freezer.state  ┘ level% of each 100 ms
//! Throttle::engage(cfg)   mkdir <hierarchy>/haul-<id>; journal; every process of the tree
//!                         (all threads) -> cgroup.procs; children forked later are born inside
//! set_level(L)            quota = (1 - L) x the tree's measured CPU use; or freeze L% of time
//! around_pre_dump(fut)    limit lifted while CRIU has the tree seized (its parasite runs in it)
//!                         (a CPU quota once the root is seen traced; a duty cycle paused before)
//! release() / Drop        limit lifted, every task back to its own original cgroup (per
//!                         thread on v1), new children to their ancestor's, rmdir, journal gone
//! sweep_stale(dir)        the same from the journal, for a haul that was killed
//! ```
//!
//! Only the one hierarchy the mechanism lives in is touched: on v1 each controller is its own
//! hierarchy and a task's cgroups in the others (memory, pids, ...) stay as they are.
//! The throttle must be released before the final dump: CRIU records each task's cgroups in
//! the images and, by default, re-creates them on restore with their limits (its "soft"
//! cgroup mode), so a tree dumped inside haul's cgroup would be restored throttled.
//!
//! ## Where the pre-copy loop uses it (`migrate::source::precopy`)
//!
//! ```text
//! start of `haul pid`: sweep_stale(journal::DEFAULT_DIR)      a killed haul's throttle undone
//! before round 1: mechanism() when --max-downtime is given and --throttle is not off
//! each round:  guard.around_pre_dump(PRE_DUMP)               (plain PRE_DUMP without a guard)
//! converge::decide_round -> Continue { throttle: L }:
//!     first L > 0: Throttle::engage(ThrottleConfig { baseline_cpus: the tree's CPU use since
//!                  round 1 began, less CRIU's frozen time, .. })   (error: warn, go on unthrottled)
//!     set_level(L)
//! rounds end, any way (final dump, post-copy for the rest, cancel, an error): release(), its
//!     report into the migration report; a release that fails stops the migration before the
//!     final dump (the tree would be dumped inside haul's cgroup)
//! ```
//!
//! Modules: [`layout`] (which hierarchies, which mechanism), [`cgroup`] (one directory's
//! files), [`membership`] (the tree in and out, origins per thread), [`meter`] (the tree's CPU
//! use), [`duty`] (the freezer duty cycle), [`journal`] (undo after a killed haul), [`error`].

pub mod cgroup;
pub mod duty;
pub mod error;
mod guard;
pub mod journal;
pub mod layout;
pub mod membership;
pub mod meter;

pub use error::ThrottleError;
pub use guard::{tracer_pid, ReleaseReport, Throttle, ThrottleConfig, ThrottleReport};
pub use journal::{sweep_stale, Journal, SweepOutcome};
pub use layout::{CgroupVersion, Hierarchy, Layout, Mechanism, MechanismKind};

/// The best way to throttle on this node, or why there is none (what
/// `PreCopyPolicy::can_throttle` is set from).
pub fn mechanism() -> Result<Mechanism, ThrottleError> {
    Layout::discover()?.mechanism()
}
