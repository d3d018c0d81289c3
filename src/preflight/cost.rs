//! `auto` by estimated cost: each strategy's downtime from the tree's resident and mapped
//! memory, the memory channel's bandwidth and what each strategy is known to cost on this
//! CRIU, and the choice among them.
//!
//! The model (every constant is in [`CostModel::CRIU_4_2_1`], with where it comes from; the
//! measurements are in `results/cost-model-2026-11-30.md`):
//!
//! ```text
//! stop-copy  downtime = sc_fixed + R / min(dump_rate, bw) + R * restore_per_byte
//! post-copy  downtime = pc_fixed + M * lazy_setup_per_byte + R * lazy_resident_per_byte
//!            window   = R / min(lazy_rate, bw)            (the source must stay up)
//! pre-copy   downtime = sc_fixed + D / min(dump_rate, bw) + R * restore_per_byte
//! hybrid     downtime = pc_fixed + M * lazy_setup_per_byte + D * lazy_resident_per_byte
//!            window   = D / min(lazy_rate, bw)
//! R = resident bytes, M = mapped bytes, D = the final round's dirty bytes:
//!     min(R, dirty_rate * round_secs), or R * default_dirty_fraction when the rate is unknown
//! ```
//!
//! The one trap this model exists for: CRIU 4.2.1's lazy dump prepares page pipes for the
//! whole MAPPED size while the process is frozen (19 s for a 1 TiB `MAP_NORESERVE` mapping
//! with 64 MiB resident), while a plain dump's freeze grows with the RESIDENT size.
//!
//! [`choose_strategy`] picks, among the strategies both nodes can run: with a downtime target,
//! the ones that meet it, preferring those without a post-copy window (the source need not
//! outlive the freeze), then the lowest downtime; without a target, the lowest downtime, but a
//! strategy without a post-copy window when it is within [`CostModel::similar_secs`] or
//! [`CostModel::similar_ratio`] of the lowest.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::criu::Features;
use crate::migrate::Strategy;

const GIB: f64 = (1u64 << 30) as f64;

/// What each strategy costs on one CRIU and kind of machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    /// Stop-copy's downtime with no memory (s): freeze, parasite, non-memory images, the
    /// restore's fixed part, haul's held post-dump handshake.
    pub sc_fixed_secs: f64,
    /// CRIU's dump rate into a page server (bytes/s), when the link is faster.
    pub dump_rate: f64,
    /// Restore time per resident byte (s/byte): pages read back and mapped while frozen.
    pub restore_secs_per_byte: f64,
    /// Post-copy's downtime with no memory (s).
    pub pc_fixed_secs: f64,
    /// The lazy dump's set-up per MAPPED byte (s/byte), spent frozen.
    pub lazy_setup_secs_per_mapped_byte: f64,
    /// Post-copy's downtime per resident byte (s/byte) beyond the set-up (the hot pages the
    /// workload faults on first).
    pub lazy_secs_per_resident_byte: f64,
    /// The rate at which the lazy-pages daemon pulls the rest (bytes/s), when the link is faster.
    pub lazy_rate: f64,
    /// Pre-copy: the final round's dirty share of resident memory when the dirty rate is unknown.
    pub default_dirty_fraction: f64,
    /// Pre-copy: the duration of a converged round (s), over which the final dirty set accrues.
    pub round_secs: f64,
    /// Total time outside the freeze with nothing to move (s): connecting, both nodes' checks,
    /// the goodbye.
    pub setup_secs: f64,
    /// Post-copy's total time after the last page arrived (s): the lazy-pages daemon's exit
    /// and its verdict.
    pub lazy_tail_secs: f64,
    /// haul's memory path: post-copy's downtime with no memory (s): the lazy dump, the early
    /// restore's rest, the engine taking the userfaultfds.
    pub engine_pc_fixed_secs: f64,
    /// haul's memory path: downtime per resident byte (s/byte): the lazy dump's page pipes
    /// and the restore's mappings.
    pub engine_secs_per_resident_byte: f64,
    /// haul's memory path: stop-and-copy's downtime with no memory (s).
    pub engine_sc_fixed_secs: f64,
    /// haul's memory path: the rate at which the engine fills memory (bytes/s), when the
    /// link is faster.
    pub engine_rate: f64,
    /// Differences up to this many seconds count as small.
    pub similar_secs: f64,
    /// Differences up to this share of the lowest estimate count as small.
    pub similar_ratio: f64,
}

impl CostModel {
    /// CRIU 4.2.1 on this project's 2-core machines (results/cost-model-2026-11-30.md):
    /// - `sc_fixed_secs`, `dump_rate`, `restore_secs_per_byte`: a least-squares line through
    ///   haul's stop-copy downtime and restore time for mtouch at 64 MiB / 256 MiB / 1 GiB
    ///   (results/bench/migration-2026-11-26.md: 0.512 / 0.792 / 2.009 s downtime, 0.054 /
    ///   0.145 / 0.746 s restore, 25 migrations each, link 2.18 GiB/s);
    /// - `pc_fixed_secs`, `lazy_secs_per_resident_byte`: the same bench's post-copy downtime
    ///   (0.211 / 0.214 / 0.272 s) once the mapped-size set-up is taken out;
    /// - `lazy_setup_secs_per_mapped_byte`: plain `criu dump --lazy-pages` of `sparse-map`
    ///   at 64 GiB / 256 GiB / 1 TiB mapped, 64 MiB resident, measured here;
    /// - `lazy_rate`: the bench's post-copy total minus downtime at 1 GiB (about 300 MB/s
    ///   through haul's two relays);
    /// - `default_dirty_fraction`, `round_secs`: pre-copy cannot run on this kernel (no
    ///   soft-dirty); from the VM runs (results/vm: the 256 MiB toucher's final round wrote
    ///   731 of 32784 pages, 2.2 %; 5 % is the conservative guess) and a round's length there;
    /// - `setup_secs`: the same bench's stop-copy total minus downtime (0.107 / 0.126 / 0.161 s);
    /// - `lazy_tail_secs`: its post-copy total minus downtime minus resident / `lazy_rate`
    ///   (0.51 / 0.34 / 0.06 s at 64 MiB / 256 MiB / 1 GiB: 0.5 s, the small sizes' figure);
    /// - the `engine_*` figures: haul's memory path on the local nodes, fitted to
    ///   `harness/scenarios/dry-run.toml`'s migrations of mtouch (results/dry-run-2026-11-30.md,
    ///   medians of 3, the machine loaded, link 1.08 GiB/s), between haul's own downtime and
    ///   the pause the toucher saw (which adds up to one touch interval): stop-copy
    ///   0.178–0.239 / 0.426–0.488 / 1.341–1.383 s at 64 MiB / 256 MiB / 1 GiB, i.e. 0.13 s
    ///   plus 1.23 s/GiB (0.105 s/GiB of page pipes and mappings, the rest the fill at
    ///   0.89 GiB/s); post-copy 0.07–0.16 / 0.09–0.17 / 0.15–0.28 s, i.e. 0.09 s plus the
    ///   per-byte part.
    pub const CRIU_4_2_1: CostModel = CostModel {
        sc_fixed_secs: 0.41,
        dump_rate: 1.16 * GIB,
        restore_secs_per_byte: 0.74 / GIB,
        pc_fixed_secs: 0.205,
        lazy_setup_secs_per_mapped_byte: 0.020 / GIB,
        lazy_secs_per_resident_byte: 0.047 / GIB,
        lazy_rate: 0.3 * GIB,
        default_dirty_fraction: 0.05,
        round_secs: 0.5,
        setup_secs: 0.12,
        lazy_tail_secs: 0.5,
        engine_pc_fixed_secs: 0.09,
        engine_secs_per_resident_byte: 0.105 / GIB,
        engine_sc_fixed_secs: 0.13,
        engine_rate: 0.89 * GIB,
        similar_secs: 0.1,
        similar_ratio: 0.25,
    };
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel::CRIU_4_2_1
    }
}

/// What the estimates are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostInputs {
    /// Resident bytes of the tree.
    pub resident_bytes: u64,
    /// Mapped bytes of the tree.
    pub mapped_bytes: u64,
    /// The memory channel's measured bandwidth (bytes/s); `None`: not measured (taken as
    /// faster than CRIU).
    pub bandwidth: Option<f64>,
    /// The workload's dirty rate (bytes/s), when known (pre-copy rounds measure it).
    pub dirty_rate: Option<f64>,
    /// The source's CRIU/kernel features.
    pub source: Features,
    /// The destination's.
    pub destination: Features,
    /// `--max-downtime` (s).
    pub max_downtime_secs: Option<f64>,
    /// haul's memory path may move the memory (lazy pages on both nodes, not turned off):
    /// post-copy and hybrid use it; stop-copy uses it when
    /// [`CostInputs::stop_copy_engine_forced`] or when it is estimated cheaper than CRIU's
    /// page-server dump (not for a sparse tree: a lazy dump's set-up grows with the mapped
    /// size), and never for a tree with established TCP connections
    /// ([`CostInputs::tcp_established`]). The estimate's [`Estimate::memory_path`] is the path
    /// the migration takes.
    #[serde(default)]
    pub memory_engine: bool,
    /// `--memory-path haul`: stop-copy moves the memory over haul's path whatever the
    /// estimates say (when [`CostInputs::memory_engine`], and not for
    /// [`CostInputs::tcp_established`]).
    #[serde(default)]
    pub stop_copy_engine_forced: bool,
    /// The tree's established TCP connections move with it (CRIU's `tcp_established`). haul's
    /// path dumps lazily, and a lazy dump that fails after the freeze resumes the tasks
    /// without unlocking the network: CRIU's `cr_dump_finish` (criu/cr-dump.c, 4.2.1) calls
    /// `network_unlock` before `cr_lazy_mem_dump`, and not again when that fails, so the
    /// connections stay blocked and in repair mode (seen on this host, review of
    /// 2026-11-30). Stop-copy then keeps CRIU's page-server dump, whose failures unlock;
    /// post-copy and hybrid are lazy on either path.
    #[serde(default)]
    pub tcp_established: bool,
}

/// What `--memory-path` allows the cost model (see [`CostInputs::memory_engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineUse {
    /// `--memory-path criu`: CRIU's page server and lazy-pages daemon only.
    Off,
    /// `--memory-path auto`: haul's path for post-copy and hybrid, and for stop-copy where it
    /// is estimated cheaper.
    Auto,
    /// `--memory-path haul`: haul's path for stop-copy too, whatever the estimate.
    Forced,
}

/// One strategy's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The strategy.
    pub strategy: Strategy,
    /// Estimated downtime (s): freeze until the process runs on the destination.
    pub downtime_secs: f64,
    /// Estimated post-copy window (s): how long the source must still serve pages afterwards.
    pub postcopy_window_secs: Option<f64>,
    /// Estimated total time (s): set-up, pre-copy rounds, the freeze, the post-copy window.
    #[serde(default)]
    pub total_secs: f64,
    /// Why it cannot run on these nodes, if it cannot.
    pub unavailable: Option<String>,
    /// How its memory moves: `haul` (haul's memory path) or `criu` (CRIU's page server or
    /// lazy-pages daemon).
    #[serde(default)]
    pub memory_path: String,
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<9} downtime ~{:.2}s, total ~{:.2}s",
            self.strategy.name(),
            self.downtime_secs,
            self.total_secs
        )?;
        if let Some(w) = self.postcopy_window_secs {
            write!(f, ", post-copy window ~{w:.2}s")?;
        }
        if let Some(u) = &self.unavailable {
            write!(f, " (unavailable: needs {u})")?;
        }
        Ok(())
    }
}

/// `auto`'s choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// The strategy picked.
    pub strategy: Strategy,
    /// Every strategy's estimate (the unavailable ones too, marked).
    pub estimates: Vec<Estimate>,
    /// Why, in a sentence.
    pub reason: String,
    /// With `--max-downtime`: whether the choice is estimated to meet it.
    pub meets_target: Option<bool>,
}

impl Choice {
    /// The estimate of the chosen strategy.
    pub fn chosen(&self) -> &Estimate {
        self.estimates
            .iter()
            .find(|e| e.strategy == self.strategy)
            .expect("the chosen strategy has an estimate")
    }

    /// Whether `strategy`'s memory moves over haul's memory path (its estimate's
    /// [`Estimate::memory_path`]): the one place the path is decided is [`estimates`].
    pub fn over_haul_path(&self, strategy: Strategy) -> bool {
        self.estimates
            .iter()
            .any(|e| e.strategy == strategy && e.memory_path == "haul")
    }
}

/// Every concrete strategy's estimate (pure).
pub fn estimates(model: &CostModel, inputs: &CostInputs) -> Vec<Estimate> {
    let r = inputs.resident_bytes as f64;
    let m = (inputs.mapped_bytes as f64).max(r);
    let bw = inputs
        .bandwidth
        .filter(|b| *b > 0.0)
        .unwrap_or(f64::INFINITY);
    let dump = model.dump_rate.min(bw);
    let lazy = model.lazy_rate.min(bw);
    let dirty = match inputs.dirty_rate {
        Some(d) => (d * model.round_secs).min(r),
        None => r * model.default_dirty_fraction,
    };
    let lazy_setup = model.pc_fixed_secs + m * model.lazy_setup_secs_per_mapped_byte;
    // Pre-copy's rounds before the freeze: the first moves everything, the others the dirty
    // set, about `round_secs` each (three of them, the VMs' typical count).
    let rounds = r / dump + 3.0 * model.round_secs;
    let estimate = |strategy: Strategy, downtime: f64, window: Option<f64>, path: &str| {
        let before = match strategy {
            Strategy::PreCopy | Strategy::Hybrid => rounds,
            _ => 0.0,
        };
        let tail = if path == "haul" {
            0.0
        } else {
            model.lazy_tail_secs
        };
        let after = window.map_or(0.0, |w| w + tail);
        Estimate {
            strategy,
            downtime_secs: downtime,
            postcopy_window_secs: window,
            total_secs: model.setup_secs + before + downtime + after,
            unavailable: strategy.missing(inputs.source, inputs.destination),
            memory_path: path.to_string(),
        }
    };
    // haul's memory path: a lazy dump (its set-up grows with the mapped size), pages at the
    // engine's rate.
    let engine = model.engine_rate.min(bw);
    let engine_setup = m * model.lazy_setup_secs_per_mapped_byte;
    let criu_stop_copy = model.sc_fixed_secs + r / dump + r * model.restore_secs_per_byte;
    let engine_stop_copy = model.engine_sc_fixed_secs
        + engine_setup
        + r * model.engine_secs_per_resident_byte
        + r / engine;
    let stop_copy = if inputs.memory_engine
        && !inputs.tcp_established
        && (inputs.stop_copy_engine_forced || engine_stop_copy < criu_stop_copy)
    {
        estimate(Strategy::StopCopy, engine_stop_copy, None, "haul")
    } else {
        estimate(Strategy::StopCopy, criu_stop_copy, None, "criu")
    };
    let (post_copy, hybrid) = if inputs.memory_engine {
        let fixed = model.engine_pc_fixed_secs + engine_setup;
        (
            estimate(
                Strategy::PostCopy,
                fixed + r * model.engine_secs_per_resident_byte,
                Some(r / engine),
                "haul",
            ),
            estimate(
                Strategy::Hybrid,
                fixed + dirty * model.engine_secs_per_resident_byte,
                Some(dirty / engine),
                "haul",
            ),
        )
    } else {
        (
            estimate(
                Strategy::PostCopy,
                lazy_setup + r * model.lazy_secs_per_resident_byte,
                Some(r / lazy),
                "criu",
            ),
            estimate(
                Strategy::Hybrid,
                lazy_setup + dirty * model.lazy_secs_per_resident_byte,
                Some(dirty / lazy),
                "criu",
            ),
        )
    };
    vec![
        stop_copy,
        estimate(
            Strategy::PreCopy,
            model.sc_fixed_secs + dirty / dump + r * model.restore_secs_per_byte,
            None,
            "criu",
        ),
        post_copy,
        hybrid,
    ]
}

/// Picks the strategy with the lowest estimated downtime among those both nodes can run,
/// honouring `max_downtime_secs` (see the module doc for the rules). Pure; never fails:
/// stop-copy needs nothing and is always available.
pub fn choose_strategy(model: &CostModel, inputs: &CostInputs) -> Choice {
    let all = estimates(model, inputs);
    let mut avail: Vec<&Estimate> = all.iter().filter(|e| e.unavailable.is_none()).collect();
    avail.sort_by(|a, b| a.downtime_secs.total_cmp(&b.downtime_secs));
    let best = avail[0];
    let (pick, reason, meets) = match inputs.max_downtime_secs {
        Some(target) => {
            let meeting: Vec<&&Estimate> =
                avail.iter().filter(|e| e.downtime_secs <= target).collect();
            if let Some(e) = meeting.iter().find(|e| no_window(e)).or(meeting.first()) {
                let why = if e.postcopy_window_secs.is_none() && e.strategy != best.strategy {
                    format!(
                        "estimated {:.2}s meets the {target:.2}s target without a post-copy window ({} would be {:.2}s)",
                        e.downtime_secs, best.strategy, best.downtime_secs
                    )
                } else {
                    format!(
                        "lowest estimated downtime {:.2}s meets the {target:.2}s target",
                        e.downtime_secs
                    )
                };
                (e.strategy, why, Some(true))
            } else {
                (
                    best.strategy,
                    format!(
                        "no strategy is estimated to meet the {target:.2}s target; the lowest is {} at {:.2}s",
                        best.strategy, best.downtime_secs
                    ),
                    Some(false),
                )
            }
        }
        None => {
            let margin = model
                .similar_secs
                .max(best.downtime_secs * model.similar_ratio);
            let calm = avail
                .iter()
                .filter(|e| no_window(e))
                .find(|e| e.downtime_secs <= best.downtime_secs + margin);
            match calm {
                Some(e) if e.strategy != best.strategy => (
                    e.strategy,
                    format!(
                        "estimated {:.2}s, within {:.2}s of {}'s {:.2}s, and without a post-copy window",
                        e.downtime_secs, margin, best.strategy, best.downtime_secs
                    ),
                    None,
                ),
                _ => (
                    best.strategy,
                    format!(
                        "lowest estimated downtime ({:.2}s){}",
                        best.downtime_secs,
                        next_best(&avail, best)
                    ),
                    None,
                ),
            }
        }
    };
    Choice {
        strategy: pick,
        estimates: all,
        reason,
        meets_target: meets,
    }
}

/// Whether a strategy ends with the process wholly on the destination (no post-copy window).
fn no_window(e: &Estimate) -> bool {
    e.postcopy_window_secs.is_none()
}

fn next_best(avail: &[&Estimate], best: &Estimate) -> String {
    match avail.iter().find(|e| e.strategy != best.strategy) {
        Some(e) => format!(", against {} at {:.2}s", e.strategy, e.downtime_secs),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests;
