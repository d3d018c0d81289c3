//! Pre-copy: pre-dump rounds while the process runs, each into its own round directory on
//! both nodes (pages through the round's page server, the previous round as parent), until
//! the stop rule ([`converge::decide_round`]) says the final dump may come; meanwhile, with a
//! `--max-downtime` target, the tree is throttled ([`crate::throttle`]) as hard as the rule
//! says.
//!
//! ```text
//! round N: [level L_N] PRE_DUMP(track_mem, parent, ps.fd, pre_dump_mode)   limit lifted while seized
//!          stats-dump + the page server's bytes -> PreCopyRound -> estimates -> one log line
//!          decide_round: Continue{L_N+1} | FinalDump | PostCopyRest | Proceed | Cancel
//! final dump: DUMP ... CRIU's `pre-dump` notification: throttle released, then answered;
//!             CRIU seizes the tree and records its cgroups only after that
//! any failure: throttle released first thing (here, or in `Session::fail`)
//! ```
//!
//! The throttle is engaged at the first level above zero, so a tree that converges alone is
//! never moved; the CPU quota's baseline is the tree's CPU use since the rounds began, less
//! the time CRIU kept it frozen. It is held until the final dump's `pre-dump` notification:
//! released any earlier, the tree dirties at full speed while the last page server starts and
//! CRIU sets up (seconds in the TCG guests: the final dump then wrote 2.5 times the last
//! round's pages), and any later, CRIU would record haul's cgroup in the images and the
//! destination would re-create it, throttle and all. On any failure it is released first
//! thing, so the process left on the source runs at full speed in its own cgroups. A haul
//! killed meanwhile leaves a journal that the next `haul pid` on the node undoes
//! ([`sweep_stale_throttles`]).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::criu::options::{self, PreDumpMode};
use crate::criu::pb::CriuReqType;
use crate::criu::{client, stats};
use crate::throttle::meter::CpuSample;
use crate::throttle::{self, journal, Mechanism, Throttle, ThrottleConfig, ThrottleError};

use super::super::converge::{
    self, decide_round, PreCopyPolicy, PreCopyRound, ThrottleLevel, ThrottleSetting, Verdict,
};
use super::super::images;
use super::super::report::RoundReport;
use super::super::strategy::Strategy;
use super::session::Session;
use super::SourceError;

impl Session {
    /// Pre-dump rounds until the stop rule ends them; returns the last round's directory name
    /// (the final dump's parent). A throttle the rounds engaged is left in
    /// [`Session::throttle`] for the final dump to release; on failure it is released before
    /// this returns.
    pub async fn pre_copy(&mut self) -> Result<Option<String>, SourceError> {
        let mode = self.pre_dump_mode()?;
        self.report.pre_dump_mode = Some(mode);
        self.report.throttle_setting = self.cfg.throttle.to_string();
        let mut throttle = PreCopyThrottle::new(&self.cfg, self.cfg.pid);
        let mut policy = PreCopyPolicy {
            convergence: self.cfg.convergence,
            throttle: self.cfg.throttle,
            can_throttle: throttle.mechanism.is_some(),
            // Post-copy may take the rest when the user let haul choose (auto, which resolved
            // to hybrid because both nodes have lazy pages) or asked for hybrid: either way the
            // strategy is hybrid now, whose final dump is lazy anyway.
            postcopy_fallback: self.strategy == Strategy::Hybrid,
            ..Default::default()
        };
        let rounds = self.rounds(mode, &mut policy, &mut throttle).await;
        self.report.throttle_note = throttle.note.clone();
        self.report.warnings.append(&mut throttle.warnings);
        if throttle.guard.is_some() {
            self.throttle = Some(throttle);
        }
        if rounds.is_err() {
            self.release_throttle_after_failure();
        }
        rounds
    }

    /// Releases pre-copy's throttle, if one is held, and records it in the report; the final
    /// dump calls this at CRIU's `pre-dump` notification. A release that fails is an error:
    /// the tree must not be dumped from inside haul's cgroup (its guard's `Drop` tries again).
    pub fn release_throttle(&mut self) -> Result<(), ThrottleError> {
        let Some(mut t) = self.throttle.take() else {
            return Ok(());
        };
        let released = t.release();
        self.report.throttle = t.report();
        self.report.warnings.append(&mut t.warnings);
        released
    }

    /// [`Session::release_throttle`] on the way out of a failure: a release that fails too is
    /// logged and kept in the report's warnings (the original failure is what `haul pid` says).
    pub fn release_throttle_after_failure(&mut self) {
        if let Err(e) = self.release_throttle() {
            error!("{e}");
            self.report.warnings.push(e.to_string());
        }
    }

    /// `--pre-dump-mode` (splice when not given), if haul may use it with this CRIU.
    fn pre_dump_mode(&self) -> Result<PreDumpMode, SourceError> {
        let mode = self.cfg.pre_dump_mode.unwrap_or_default();
        if let Some(v) = self.report.source_criu {
            mode.check(v).map_err(SourceError::PreDumpMode)?;
        }
        Ok(mode)
    }

    /// The rounds themselves.
    async fn rounds(
        &mut self,
        mode: PreDumpMode,
        policy: &mut PreCopyPolicy,
        throttle: &mut PreCopyThrottle,
    ) -> Result<Option<String>, SourceError> {
        let mut parent: Option<String> = None;
        let mut rounds: Vec<PreCopyRound> = Vec::new();
        let t_pre = Instant::now();
        for round in 1.. {
            let level = throttle.level();
            let started_secs = t_pre.elapsed().as_secs_f64();
            let t = Instant::now();
            let rd = self.dir.round(round)?;
            let fd = self.start_round(round).await?;
            let mut opts = options::base(rd.fd(), "pre-dump.log");
            opts.pid = Some(self.cfg.pid);
            opts.track_mem = Some(true);
            if let Some(p) = &parent {
                opts.parent_img = Some(format!("../{p}"));
            }
            self.assessment.apply(&mut opts);
            options::page_server_fd(&mut opts, fd.as_raw_fd());
            options::pre_dump_mode(&mut opts, mode);
            let req = client::new_request(CriuReqType::PreDump, Some(opts));
            let log = rd.path().join("pre-dump.log");
            let op = self
                .criu
                .start_request(req, &[fd.as_raw_fd()], Some(log))
                .await?;
            match &throttle.guard {
                Some(g) => g.around_pre_dump(op.run_to_end()).await,
                None => op.run_to_end().await,
            }
            .map_err(SourceError::from_criu)?;
            drop(fd);
            let bytes = self.end_round(round).await?;
            let st = stats::read_dump(rd.path()).unwrap_or_default();
            let secs = t.elapsed().as_secs_f64();
            rounds.push(PreCopyRound {
                pages_written: st.pages_written,
                bytes,
                secs,
                started_secs,
                throttle: level,
                frozen_secs: f64::from(st.frozen_time_us) / 1e6,
                memory_frozen_secs: f64::from(st.memdump_time_us) / 1e6,
                memory_write_secs: f64::from(st.memwrite_time_us) / 1e6,
            });
            let est = *converge::estimates(&rounds)
                .last()
                .expect("one estimate per round");
            let frozen_secs = f64::from(st.frozen_time_us) / 1e6;
            throttle.frozen_secs += frozen_secs;
            let verdict = decide_round(policy, &rounds);
            info!(
                "{} frozen={frozen_secs:.3}s skipped={} mode={mode}",
                est.log_line(),
                st.pages_skipped_parent
            );
            self.report.pages_sent += st.pages_written;
            self.report.memory_bytes_sent += bytes;
            self.report.frozen_secs += frozen_secs;
            self.report.rounds.push(RoundReport {
                round,
                stats: st,
                bytes,
                secs,
                bandwidth: est.bandwidth,
                est_downtime_secs: est.est_downtime_secs,
                est_memory_secs: Some(est.est_memory_secs),
                est_frozen_secs: Some(est.est_frozen_secs),
                write_rate: est.write_rate,
                rest_secs: est.rest_secs,
                link_bandwidth: est.link_bandwidth,
                fixed_secs: est.fixed_secs,
                throttle: level,
                dirty_rate: est.dirty_rate,
                dirty_rate_throttle: est.dirty_rate_throttle,
                frozen_secs,
                pre_dump_mode: Some(mode),
                verdict: verdict_text(&verdict),
            });
            parent = Some(images::round_name(round));
            match verdict {
                Verdict::Continue {
                    throttle: next,
                    why,
                } => {
                    info!("pre-copy goes on after round {round}: {why}");
                    if next != level {
                        let name = self.report.migration_id.clone();
                        if let Err(why) = throttle.set(next, &name) {
                            warn!("{why}; the rounds go on unthrottled");
                            policy.can_throttle = false;
                        }
                    }
                }
                Verdict::FinalDump { why } => {
                    info!("pre-copy stops after round {round}: {why}");
                    self.report.convergence = why;
                    break;
                }
                Verdict::PostCopyRest { why } | Verdict::Proceed { why } => {
                    warn!("pre-copy stops after round {round} above its target: {why}");
                    self.report.convergence = why.clone();
                    self.report.fallback = Some(why);
                    break;
                }
                Verdict::Cancel { why } => return Err(SourceError::NotConverged(why)),
            }
        }
        Ok(parent)
    }
}

/// The report's word for a verdict: `continue at 40%: why`, `final dump: why`, ...
fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Continue { throttle, why } => format!("continue at {throttle}: {why}"),
        Verdict::FinalDump { why } => format!("final dump: {why}"),
        Verdict::PostCopyRest { why } => format!("post-copy for the rest: {why}"),
        Verdict::Proceed { why } => format!("final dump above the target: {why}"),
        Verdict::Cancel { why } => format!("cancel: {why}"),
    }
}

/// The throttle of one pre-copy: engaged at the first level above zero, released at the
/// final dump's `pre-dump` notification or first thing on a failure (and by [`Throttle`]'s
/// own `Drop` should this be dropped first, e.g. when a signal drops the migration).
#[derive(Debug)]
pub struct PreCopyThrottle {
    root_pid: i32,
    /// How this node slows a tree, when pre-copy may throttle at all.
    mechanism: Option<Mechanism>,
    guard: Option<Throttle>,
    /// The tree's CPU time when the rounds began: the quota's baseline runs from here.
    since: CpuSample,
    /// CRIU's frozen time over the rounds so far (s), left out of the baseline's window (a
    /// frozen tree uses no CPU, which is not its appetite).
    frozen_secs: f64,
    /// Why the throttle is, or is not, engaged.
    note: String,
    warnings: Vec<String>,
}

impl PreCopyThrottle {
    /// Finds the mechanism when pre-copy may throttle (a target, and `--throttle` not off).
    fn new(cfg: &super::SourceConfig, root_pid: i32) -> PreCopyThrottle {
        let (mechanism, note) = if cfg.convergence.max_downtime_secs.is_none() {
            (
                None,
                "no --max-downtime target (the throttle only works toward one)".to_string(),
            )
        } else if cfg.throttle == ThrottleSetting::Off {
            (None, "--throttle off".to_string())
        } else {
            match throttle::mechanism() {
                Ok(m) => (
                    Some(m),
                    "the target was in reach without slowing the tree".to_string(),
                ),
                Err(e) => (None, format!("this node cannot throttle: {e}")),
            }
        };
        PreCopyThrottle {
            root_pid,
            mechanism,
            guard: None,
            since: CpuSample::take(root_pid),
            frozen_secs: 0.0,
            note,
            warnings: Vec::new(),
        }
    }

    /// The level in force now.
    fn level(&self) -> ThrottleLevel {
        self.guard
            .as_ref()
            .map_or(ThrottleLevel::NONE, Throttle::level)
    }

    /// Sets `level`, engaging the throttle (haul's cgroup `haul-<name>`) the first time.
    fn set(&mut self, level: ThrottleLevel, name: &str) -> Result<(), String> {
        if self.guard.is_none() {
            let Some(mechanism) = self.mechanism.clone() else {
                return Err(format!("no way to throttle the tree ({})", self.note));
            };
            let now = CpuSample::take(self.root_pid);
            let wall = now.secs_since(&self.since);
            let running = (wall - self.frozen_secs).max(wall * 0.1);
            let mut cfg = ThrottleConfig::new(self.root_pid, name, mechanism);
            cfg.baseline_cpus = Some(now.cpus_since(&self.since) * wall / running.max(1e-6));
            match Throttle::engage(cfg) {
                Ok(g) => {
                    info!(
                        "throttling pid {}'s tree: {} in {}",
                        self.root_pid,
                        g.mechanism(),
                        g.cgroup().display()
                    );
                    self.guard = Some(g);
                }
                Err(e) => {
                    self.mechanism = None;
                    self.note = format!("engaging it failed: {e}");
                    self.warnings.push(self.note.clone());
                    return Err(format!("cannot throttle pid {}: {e}", self.root_pid));
                }
            }
        }
        let g = self.guard.as_ref().expect("engaged above");
        g.set_level(level)
            .map_err(|e| format!("cannot set the throttle to {level}: {e}"))?;
        self.note = "engaged".into();
        Ok(())
    }

    /// Releases the throttle if one was engaged (idempotent).
    fn release(&mut self) -> Result<(), ThrottleError> {
        match &self.guard {
            Some(g) => {
                let r = g.release()?;
                info!(
                    "throttle released in {:.3}s: {} processes back in their own cgroups, {} removed",
                    r.secs,
                    r.leave.moved_back + r.leave.born_inside,
                    g.cgroup().display()
                );
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The throttle's figures, if one was engaged.
    fn report(&self) -> Option<throttle::ThrottleReport> {
        self.guard.as_ref().map(Throttle::report)
    }
}

/// Undoes the throttles of hauls that were killed on this node (their journals in
/// [`journal::DEFAULT_DIR`]) and says what it did: run at the start of `haul pid`, so a tree a
/// killed haul left slowed runs at full speed in its own cgroups again.
pub fn sweep_stale_throttles() {
    for o in throttle::sweep_stale(Path::new(journal::DEFAULT_DIR)) {
        let cg = o
            .cgroup
            .as_ref()
            .map_or_else(|| "?".into(), |c| c.display().to_string());
        match o.result {
            Ok(l) => info!(
                "undid the throttle a killed haul left in {cg}: {} processes back in their own cgroups",
                l.moved_back + l.born_inside
            ),
            Err(e) => warn!(
                "a killed haul's throttle ({}) could not be undone: {e}",
                o.journal.display()
            ),
        }
    }
}
