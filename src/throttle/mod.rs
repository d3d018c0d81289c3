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
//! ## Wiring into the pre-copy loop (`migrate::source`)
//!
//! ```text
//! at start of `haul pid` / `haul serve`: sweep_stale(Path::new(journal::DEFAULT_DIR))
//! before round 1:
//!   mech   = throttle::mechanism()                        (Err: can_throttle = false)
//!   policy = PreCopyPolicy { convergence, throttle: --throttle, can_throttle,
//!            postcopy_fallback: converge::postcopy_fallback_allowed(requested, src, dst), .. }
//!   guard  = policy.cap().and(mech.ok()).map(|m| Throttle::engage(ThrottleConfig::new(pid, id, m)))
//!            (an engage error: warn, go on unthrottled, can_throttle = false)
//! each round:
//!   level = guard.level() (NONE without a guard); started = t0.elapsed()
//!   options::pre_dump_mode(&mut opts, mode)
//!   guard.around_pre_dump(op.run_to_end()).await            (or op.run_to_end() without a guard)
//!   rounds.push(PreCopyRound { pages_written, bytes, secs, started_secs: started, throttle: level })
//!   info!(converge::estimates(&rounds).last().log_line())
//!   match converge::decide_round(&policy, &rounds):
//!     Continue { throttle, .. } -> guard.set_level(throttle)
//!     FinalDump    -> guard.release(), final dump (lazy only for --strategy hybrid)
//!     PostCopyRest -> guard.release(), lazy final dump
//!     Cancel       -> guard.release(), Err(NotConverged)
//! every failure path: guard.release() first thing (Drop does it too, later)
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
