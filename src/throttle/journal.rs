//! The on-disk record of a throttle, so that a haul killed while throttling (SIGKILL runs no
//! `Drop`) does not leave the tree slowed or in its cgroup: the next haul on the node
//! ([`sweep_stale`]) lifts the limit, moves every task back and removes the cgroup.
//!
//! One JSON file per throttle in [`DEFAULT_DIR`] (tmpfs: a reboot clears it together with the
//! cgroups), written before any task moves and rewritten as origins are added, removed once
//! the throttle is released.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroup::CgroupDir;
use super::error::ThrottleError;
use super::layout::Mechanism;
use super::membership::{LeaveReport, Membership};

/// Where journals live.
pub const DEFAULT_DIR: &str = "/run/haul/throttle";

/// What a throttle did to the node, enough to undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// The haul process that throttles.
    pub owner_pid: i32,
    /// Its start time (clock ticks after boot, `/proc/PID/stat` field 22): a pid reused by
    /// another process does not count as the owner.
    pub owner_start: u64,
    /// How the tree is slowed.
    pub mechanism: Mechanism,
    /// haul's cgroup and every task's origin.
    pub membership: Membership,
}

/// A process's start time, `None` when it is gone.
pub fn start_time(pid: i32) -> Option<u64> {
    procfs::process::Process::new(pid)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}

impl Journal {
    /// The journal file for haul's cgroup `cgroup_name` in `dir`.
    pub fn path(dir: &Path, cgroup_name: &str) -> PathBuf {
        dir.join(format!("{cgroup_name}.json"))
    }

    /// Writes it atomically (a temporary file renamed over the old one).
    pub fn write(&self, path: &Path) -> Result<(), ThrottleError> {
        let err = |why: String| ThrottleError::Journal {
            path: path.to_path_buf(),
            why,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create its directory: {e}")))?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| err(format!("cannot write: {e}")))?;
        std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename into place: {e}")))
    }

    /// Reads one.
    pub fn read(path: &Path) -> Result<Journal, ThrottleError> {
        let err = |why: String| ThrottleError::Journal {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        serde_json::from_slice(&text).map_err(|e| err(format!("not a throttle journal: {e}")))
    }

    /// Whether the haul that wrote it still runs.
    pub fn owner_alive(&self) -> bool {
        start_time(self.owner_pid) == Some(self.owner_start)
    }

    /// Lifts the limit, moves every task back, removes the cgroup (what a release does,
    /// from the record alone).
    pub fn undo(&self) -> Result<LeaveReport, ThrottleError> {
        let cg: &CgroupDir = &self.membership.cgroup;
        if !cg.exists() {
            return Ok(LeaveReport::default());
        }
        let lifted = if self.mechanism.kind.is_cpu_quota() {
            cg.set_cpu_limit(None)
        } else {
            cg.set_frozen(false)
        };
        let leave = self.membership.leave();
        if leave.remaining.is_empty() {
            cg.remove(std::time::Duration::from_millis(500))?;
            return Ok(leave);
        }
        Err(ThrottleError::NotReleased {
            cgroup: cg.path.clone(),
            remaining: leave.remaining.clone(),
            limit_lifted: lifted.is_ok(),
            why: leave
                .first_error
                .clone()
                .unwrap_or_else(|| "tasks kept appearing".into()),
            journal: "this journal".into(),
        })
    }
}

/// What [`sweep_stale`] did with one journal.
#[derive(Debug)]
pub struct SweepOutcome {
    /// The journal.
    pub journal: PathBuf,
    /// The cgroup it named.
    pub cgroup: Option<PathBuf>,
    /// What undoing it did.
    pub result: Result<LeaveReport, ThrottleError>,
}

/// Undoes every throttle in `dir` whose haul is gone (run at the start of `haul pid` and
/// `haul serve`); journals of running hauls are left alone. A journal is removed once its
/// throttle is fully undone.
pub fn sweep_stale(dir: &Path) -> Vec<SweepOutcome> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let journal = match Journal::read(&path) {
            Ok(j) => j,
            Err(err) => {
                out.push(SweepOutcome {
                    journal: path,
                    cgroup: None,
                    result: Err(err),
                });
                continue;
            }
        };
        if journal.owner_alive() {
            continue;
        }
        let result = journal.undo();
        if result.is_ok() {
            let _ = std::fs::remove_file(&path);
        }
        out.push(SweepOutcome {
            journal: path,
            cgroup: Some(journal.membership.cgroup.path.clone()),
            result,
        });
    }
    out
}
