//! [`Throttle`]: the guard that holds a tree in haul's cgroup at a throttle level, and gives
//! it back exactly as it was on release, on drop, on a panic, and (through its journal) after
//! a killed haul.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cgroup::{CgroupDir, CpuLimit, CpuThrottling};
use super::duty::{DutyCycle, DEFAULT_PERIOD};
use super::error::ThrottleError;
use super::journal::{start_time, Journal, DEFAULT_DIR};
use super::layout::{CgroupVersion, Mechanism};
use super::membership::{LeaveReport, Membership};
use super::meter::CpuSample;
use crate::migrate::converge::ThrottleLevel;
use crate::migrate::tree;

/// The shortest window over which the baseline CPU use is measured; a shorter one is
/// topped up (blocking) when the first level is set.
const MIN_BASELINE_WINDOW: Duration = Duration::from_millis(200);
/// How often [`Throttle::around_pre_dump`] looks at the root's tracer.
const TRACER_POLL: Duration = Duration::from_millis(1);

/// What a throttle is set up with.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// The root of the tree.
    pub root_pid: i32,
    /// A name unique on this node for this throttle (the migration id); haul's cgroup is
    /// `haul-<name>` (characters outside `[A-Za-z0-9._-]` become `_`).
    pub name: String,
    /// How to slow the tree ([`super::Layout::mechanism`]).
    pub mechanism: Mechanism,
    /// Where the journal goes (`None`: no journal, tests only).
    pub journal_dir: Option<PathBuf>,
    /// The CPU quota's period or the duty cycle's (100 ms; a quota that would fall under the
    /// kernel's 1 ms minimum gets a longer period).
    pub period: Duration,
    /// The tree's CPU use to take a share of, in CPUs; `None` measures it between
    /// [`Throttle::engage`] and the first level set (the first pre-dump round).
    pub baseline_cpus: Option<f64>,
}

impl ThrottleConfig {
    /// The defaults: journal in [`DEFAULT_DIR`], 100 ms period, measured baseline.
    pub fn new(root_pid: i32, name: impl Into<String>, mechanism: Mechanism) -> Self {
        ThrottleConfig {
            root_pid,
            name: name.into(),
            mechanism,
            journal_dir: Some(PathBuf::from(DEFAULT_DIR)),
            period: DEFAULT_PERIOD,
            baseline_cpus: None,
        }
    }
}

/// What releasing did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReport {
    /// Moving the tasks out.
    pub leave: LeaveReport,
    /// Whether haul's cgroup was removed.
    pub cgroup_removed: bool,
    /// How long the CPU quota held the tree back in all (CPU quota only).
    pub throttling: Option<CpuThrottling>,
    /// Time the release took (s).
    pub secs: f64,
}

/// A throttle's figures, for the migration report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThrottleReport {
    /// The mechanism, in words (`CPU quota (cpu.cfs_quota_us) in cgroup v1 cpu at ...`).
    pub mechanism: String,
    /// haul's cgroup.
    pub cgroup: PathBuf,
    /// The tree's CPU use before throttling (CPUs), the base of the quota.
    pub baseline_cpus: Option<f64>,
    /// The level now.
    pub level: ThrottleLevel,
    /// The highest level set.
    pub max_level: ThrottleLevel,
    /// The CPU limit in force (CPU quota only).
    pub limit: Option<CpuLimit>,
    /// Processes moved in.
    pub processes: usize,
    /// Threads whose origin was recorded.
    pub threads: usize,
    /// The release, once done.
    pub release: Option<ReleaseReport>,
    /// Things that went wrong without stopping the throttle.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
struct Inner {
    membership: Membership,
    duty: Option<DutyCycle>,
    level: ThrottleLevel,
    max_level: ThrottleLevel,
    lifted: bool,
    since: CpuSample,
    /// Time CRIU held the tree seized since `since` (not counted in the baseline's window:
    /// a frozen tree uses no CPU, which is not its appetite).
    seized: Duration,
    baseline_cpus: Option<f64>,
    limit: Option<CpuLimit>,
    warnings: Vec<String>,
    released: Option<ReleaseReport>,
    journal: Option<PathBuf>,
}

/// The tree of one migration held in haul's cgroup. Every task (all threads of all
/// processes) is moved in at [`Throttle::engage`]; children forked later are born inside.
/// Levels are set with [`Throttle::set_level`]; [`Throttle::release`] (or dropping the guard,
/// also while unwinding from a panic) lifts the limit, moves every task back to the cgroup it
/// came from and removes haul's cgroup. Releasing twice is harmless. All methods take
/// `&self` (the state is behind a mutex), so the guard can be shared with a task that
/// watches a pre-dump.
#[derive(Debug)]
pub struct Throttle {
    root_pid: i32,
    mechanism: Mechanism,
    period: Duration,
    cgroup: CgroupDir,
    inner: Mutex<Inner>,
}

/// Characters allowed in haul's cgroup name.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("x{s}")
    } else {
        s
    }
}

impl Throttle {
    /// Creates haul's cgroup `haul-<name>` at the top of the mechanism's hierarchy, unlimited,
    /// and moves the whole tree into it (recording where each thread was, in the journal too).
    /// On failure nothing is left behind: what was moved goes back, the cgroup is removed.
    pub fn engage(cfg: ThrottleConfig) -> Result<Throttle, ThrottleError> {
        if !tree::alive(cfg.root_pid) {
            return Err(ThrottleError::NoSuchPid(cfg.root_pid));
        }
        let h = &cfg.mechanism.hierarchy;
        let cg_name = format!("haul-{}", sanitize(&cfg.name));
        let mut warnings = Vec::new();
        if cfg.mechanism.kind.is_cpu_quota() && h.version == CgroupVersion::V2 {
            enable_v2_cpu(&h.mount, &mut warnings)?;
        }
        let cgroup = CgroupDir::create(&h.mount, &cg_name, h.version)?;
        let journal = cfg.journal_dir.as_ref().map(|d| Journal::path(d, &cg_name));
        let throttle = Throttle {
            root_pid: cfg.root_pid,
            mechanism: cfg.mechanism.clone(),
            period: cfg.period,
            cgroup: cgroup.clone(),
            inner: Mutex::new(Inner {
                membership: Membership::new(h.clone(), cgroup.clone(), cfg.root_pid),
                duty: None,
                level: ThrottleLevel::NONE,
                max_level: ThrottleLevel::NONE,
                lifted: false,
                since: CpuSample::take(cfg.root_pid),
                seized: Duration::ZERO,
                baseline_cpus: cfg.baseline_cpus,
                limit: None,
                warnings,
                released: None,
                journal,
            }),
        };
        // From here on, Drop undoes whatever happened.
        throttle.setup()?;
        Ok(throttle)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn setup(&self) -> Result<(), ThrottleError> {
        let mut g = self.lock();
        match self.mechanism.kind.is_cpu_quota() {
            true => self.cgroup.set_cpu_limit(None)?,
            false => g.duty = Some(DutyCycle::start(self.cgroup.clone(), self.period)?),
        }
        let owner_pid = std::process::id() as i32;
        let owner_start = start_time(owner_pid).unwrap_or(0);
        let mechanism = self.mechanism.clone();
        let journal = g.journal.clone();
        let write = |m: &Membership| -> Result<(), ThrottleError> {
            match &journal {
                Some(path) => Journal {
                    owner_pid,
                    owner_start,
                    mechanism: mechanism.clone(),
                    membership: m.clone(),
                }
                .write(path),
                None => Ok(()),
            }
        };
        g.membership.enter(write)?;
        // Write once more with every process marked moved.
        write(&g.membership)?;
        g.since = CpuSample::take(self.root_pid);
        Ok(())
    }

    /// The root of the tree.
    pub fn root_pid(&self) -> i32 {
        self.root_pid
    }

    /// haul's cgroup directory.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup.path
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> &Mechanism {
        &self.mechanism
    }

    /// The level set last.
    pub fn level(&self) -> ThrottleLevel {
        self.lock().level
    }

    /// Sets the throttle level. CPU quota: `(1 - level) x baseline` CPUs, the baseline
    /// measured since [`Throttle::engage`] at the first non-zero level (at least 200 ms,
    /// topped up by blocking when shorter). Freezer: frozen `level` percent of each period.
    pub fn set_level(&self, level: ThrottleLevel) -> Result<(), ThrottleError> {
        let mut g = self.lock();
        if g.released.is_some() {
            return Err(ThrottleError::Released(self.root_pid));
        }
        if self.mechanism.kind.is_cpu_quota() {
            let limit = if level.is_none() {
                None
            } else {
                let base = match g.baseline_cpus {
                    Some(b) => b,
                    None => {
                        let mut now = CpuSample::take(self.root_pid);
                        let window = now.secs_since(&g.since);
                        if window < MIN_BASELINE_WINDOW.as_secs_f64() {
                            std::thread::sleep(
                                MIN_BASELINE_WINDOW.saturating_sub(Duration::from_secs_f64(window)),
                            );
                            now = CpuSample::take(self.root_pid);
                        }
                        let window = now.secs_since(&g.since);
                        let running = (window - g.seized.as_secs_f64()).max(window * 0.1);
                        let b = now.cpus_since(&g.since) * window / running;
                        g.baseline_cpus = Some(b);
                        b
                    }
                };
                Some(CpuLimit::for_cpus(
                    base * level.remaining(),
                    self.period.as_micros() as u64,
                ))
            };
            if !g.lifted {
                self.cgroup.set_cpu_limit(limit)?;
            }
            g.limit = limit;
        } else if let Some(d) = &g.duty {
            d.set_level(level);
        }
        g.level = level;
        g.max_level = g.max_level.max(level);
        Ok(())
    }

    /// Lifts the limit for now, keeping the level ([`Throttle::reapply`] restores it): CRIU's
    /// parasite runs inside the tree's tasks and would be throttled with them.
    pub fn lift(&self) -> Result<(), ThrottleError> {
        let mut g = self.lock();
        if g.released.is_some() || g.lifted {
            return Ok(());
        }
        g.lifted = true;
        if self.mechanism.kind.is_cpu_quota() {
            self.cgroup.set_cpu_limit(None)
        } else if let Some(d) = &g.duty {
            d.pause()
        } else {
            Ok(())
        }
    }

    /// Puts back the level lifted by [`Throttle::lift`].
    pub fn reapply(&self) -> Result<(), ThrottleError> {
        let mut g = self.lock();
        if g.released.is_some() || !g.lifted {
            return Ok(());
        }
        g.lifted = false;
        if self.mechanism.kind.is_cpu_quota() {
            self.cgroup.set_cpu_limit(g.limit)
        } else {
            if let Some(d) = &g.duty {
                d.resume();
            }
            Ok(())
        }
    }

    /// Runs one pre-dump (`pre_dump`, e.g. `op.run_to_end()`) with the limit lifted while
    /// CRIU has the tree seized: CRIU's parasite runs inside the tree's tasks and would be
    /// slowed with them. A CPU quota is lifted once the root is seen traced (polled every
    /// millisecond), not before: CRIU takes a while to start and seize, and a tree freed before
    /// then dirties memory at full speed for nothing (seen in the VMs: a second of it per round
    /// at 97 %). A freezer duty cycle is paused before the request instead, so that CRIU never
    /// meets a frozen cgroup. Either is put back as soon as the root's tracer is gone again
    /// (CRIU let the tasks run and copies on: in `read` mode that is most of the round) or
    /// when `pre_dump` ends, whichever comes first. Errors lifting or re-applying are kept as
    /// warnings in the report (the round then runs at a different level; the next
    /// [`Throttle::set_level`] sets it again). Also unthrottled rounds go through here: the
    /// time the tree spends seized is left out of the baseline CPU measurement.
    pub async fn around_pre_dump<F: Future>(&self, pre_dump: F) -> F::Output {
        let throttled = !self.level().is_none();
        let lift_on_seize = self.mechanism.kind.is_cpu_quota();
        let mut lifted = false;
        if throttled && !lift_on_seize {
            self.lift_or_warn();
            lifted = true;
        }
        let mut pre_dump = std::pin::pin!(pre_dump);
        let mut traced_since: Option<Instant> = None;
        let mut released = false;
        let mut tick = tokio::time::interval(TRACER_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut pre_dump => {
                    if !released {
                        if let Some(t) = traced_since {
                            self.lock().seized += t.elapsed();
                        }
                        if lifted {
                            self.reapply_or_warn();
                        }
                    }
                    return out;
                }
                _ = tick.tick(), if !released => {
                    let traced = tracer_pid(self.root_pid).is_some_and(|t| t != 0);
                    match (traced, traced_since) {
                        (true, None) => {
                            traced_since = Some(Instant::now());
                            if throttled && !lifted {
                                self.lift_or_warn();
                                lifted = true;
                            }
                        }
                        (false, Some(t)) => {
                            self.lock().seized += t.elapsed();
                            if lifted {
                                self.reapply_or_warn();
                            }
                            released = true;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn lift_or_warn(&self) {
        if let Err(e) = self.lift() {
            self.warn(format!("lifting the throttle for a pre-dump: {e}"));
        }
    }

    fn reapply_or_warn(&self) {
        if let Err(e) = self.reapply() {
            self.warn(format!(
                "re-applying the throttle after a pre-dump's freeze: {e}"
            ));
        }
    }

    fn warn(&self, w: String) {
        tracing::warn!("{w}");
        self.lock().warnings.push(w);
    }

    /// Lifts the limit, moves every task back where it came from, removes haul's cgroup and
    /// the journal. Idempotent: once it succeeded, later calls return the same report. On
    /// error the limit is lifted as far as possible and a later call (or the drop) tries again.
    pub fn release(&self) -> Result<ReleaseReport, ThrottleError> {
        let mut g = self.lock();
        if let Some(r) = &g.released {
            return Ok(r.clone());
        }
        let t0 = Instant::now();
        let throttling = if self.mechanism.kind.is_cpu_quota() {
            self.cgroup.cpu_throttling().ok()
        } else {
            None
        };
        // 1. nothing slows the tree any more
        let lifted = if self.mechanism.kind.is_cpu_quota() {
            self.cgroup.set_cpu_limit(None)
        } else {
            match g.duty.as_mut() {
                Some(d) => d.stop(),
                None => self.cgroup.set_frozen(false),
            }
        };
        let lift_error = lifted.err().map(|e| e.to_string());
        // 2. every task back
        let leave = g.membership.leave();
        // 3. haul's cgroup and journal gone
        let mut why = leave.first_error.clone().or(lift_error.clone());
        let removed = if leave.remaining.is_empty() {
            match self.cgroup.remove(Duration::from_millis(500)) {
                Ok(()) => true,
                Err(e) => {
                    why.get_or_insert(e.to_string());
                    false
                }
            }
        } else {
            false
        };
        let report = ReleaseReport {
            leave: leave.clone(),
            cgroup_removed: removed,
            throttling,
            secs: t0.elapsed().as_secs_f64(),
        };
        if removed && lift_error.is_none() {
            if let Some(j) = &g.journal {
                let _ = std::fs::remove_file(j);
            }
            g.duty = None;
            g.released = Some(report.clone());
            return Ok(report);
        }
        Err(ThrottleError::NotReleased {
            cgroup: self.cgroup.path.clone(),
            remaining: leave.remaining,
            limit_lifted: lift_error.is_none() || !self.cgroup.exists(),
            why: why.unwrap_or_else(|| "unknown".into()),
            journal: g
                .journal
                .as_ref()
                .map_or_else(|| "(none kept)".into(), |p| p.display().to_string()),
        })
    }

    /// Whether [`Throttle::release`] succeeded.
    pub fn is_released(&self) -> bool {
        self.lock().released.is_some()
    }

    /// The figures so far, for the migration report.
    pub fn report(&self) -> ThrottleReport {
        let g = self.lock();
        let mut warnings = g.warnings.clone();
        if let Some(e) = g.duty.as_ref().and_then(|d| d.error()) {
            warnings.push(format!("freezer duty cycle: {e}"));
        }
        ThrottleReport {
            mechanism: self.mechanism.to_string(),
            cgroup: self.cgroup.path.clone(),
            baseline_cpus: g.baseline_cpus,
            level: g.level,
            max_level: g.max_level,
            limit: g.limit,
            processes: g.membership.moved.len(),
            threads: g.membership.origins.len(),
            release: g.released.clone(),
            warnings,
        }
    }

    /// The recorded origin of every thread (tid, cgroup path), for checks.
    pub fn origins(&self) -> Vec<(i32, String)> {
        self.lock()
            .membership
            .origins
            .values()
            .map(|o| (o.tid, o.cgroup.clone()))
            .collect()
    }

    /// Tasks of the tree outside haul's cgroup right now (none, normally).
    pub fn outside(&self) -> Vec<i32> {
        self.lock().membership.outside()
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if self.is_released() {
            return;
        }
        if let Err(e) = self.release() {
            tracing::error!("releasing the throttle on pid {}: {e}", self.root_pid);
        }
    }
}

/// The pid tracing `pid` (0: none), from `/proc/PID/status`.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// cgroup v2: `cpu.max` exists in a child only when the root delegates `cpu` to its
/// children; enables it when needed (left enabled afterwards: other cgroups may rely on it
/// by then) and says so.
fn enable_v2_cpu(mount: &Path, warnings: &mut Vec<String>) -> Result<(), ThrottleError> {
    let path = mount.join("cgroup.subtree_control");
    let now = std::fs::read_to_string(&path)
        .map_err(|e| ThrottleError::cgroup("read", &path, None, e))?;
    if now.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    std::fs::write(&path, "+cpu").map_err(|e| ThrottleError::cgroup("write", &path, None, e))?;
    warnings.push(format!(
        "enabled the cpu controller for {}'s children (+cpu in {})",
        mount.display(),
        path.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_names_are_plain() {
        assert_eq!(sanitize("20261130-abc.1"), "20261130-abc.1");
        assert_eq!(sanitize("a/b c"), "a_b_c");
        assert_eq!(sanitize(".."), "x..");
        assert_eq!(sanitize(""), "x");
        assert_eq!(sanitize(&"y".repeat(200)).len(), 80);
    }

    #[test]
    fn this_process_has_no_tracer() {
        assert_eq!(tracer_pid(std::process::id() as i32), Some(0));
        assert_eq!(tracer_pid(i32::MAX), None);
    }
}
