//! One cgroup directory: thin operations on its files, each error naming the file and task.
//!
//! Thin code over the files rather than `cgroups-rs`: that crate models one hierarchy kind
//! per node (its `auto()` sees this host's tmpfs `/sys/fs/cgroup` and picks v1 for
//! everything, with no way to use v1's cpu beside v2's `cgroup.freeze`), creates a cgroup in
//! every v1 hierarchy unless told otherwise (this host's memory hierarchy belongs to the
//! machine's supervisor and must not be touched), and has no notion of where each task came
//! from. What haul needs is a dozen file writes whose failures must name the file and pid.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::ThrottleError;
use super::layout::CgroupVersion;

/// The smallest CFS quota the kernel accepts (µs), v1 and v2 alike.
pub const MIN_QUOTA_US: u64 = 1000;
/// The longest CFS period the kernel accepts (µs).
pub const MAX_PERIOD_US: u64 = 1_000_000;
/// The shortest CFS period the kernel accepts (µs).
pub const MIN_PERIOD_US: u64 = 1000;

/// A CPU bandwidth limit: at most `quota_us` of CPU time per `period_us` (both µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimit {
    /// CPU time allowed per period (µs), at least [`MIN_QUOTA_US`].
    pub quota_us: u64,
    /// The period (µs), [`MIN_PERIOD_US`] to [`MAX_PERIOD_US`].
    pub period_us: u64,
}

impl CpuLimit {
    /// The limit giving `cpus` CPUs (e.g. 0.35), with `period_us` as the preferred period:
    /// when the quota would fall below the kernel's 1 ms minimum the period grows (up to 1 s);
    /// below 0.001 CPU the limit stays at 1 ms per second.
    pub fn for_cpus(cpus: f64, period_us: u64) -> CpuLimit {
        let mut period_us = period_us.clamp(MIN_PERIOD_US, MAX_PERIOD_US);
        let cpus = if cpus.is_finite() { cpus.max(0.0) } else { 0.0 };
        let mut quota = cpus * period_us as f64;
        if quota < MIN_QUOTA_US as f64 {
            let needed = if cpus > 0.0 {
                (MIN_QUOTA_US as f64 / cpus).ceil() as u64
            } else {
                MAX_PERIOD_US
            };
            period_us = needed.clamp(period_us, MAX_PERIOD_US);
            quota = cpus * period_us as f64;
        }
        CpuLimit {
            quota_us: (quota.round() as u64).max(MIN_QUOTA_US),
            period_us,
        }
    }

    /// The CPUs this limit allows.
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }
}

/// How often and how long a cgroup's tasks were held back by their quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuThrottling {
    /// Periods in which the quota ran out.
    pub nr_throttled: u64,
    /// Time the tasks waited for the next period (µs).
    pub throttled_us: u64,
}

/// One cgroup directory in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    /// The directory.
    pub path: PathBuf,
    /// Its hierarchy's version (which files exist).
    pub version: CgroupVersion,
}

fn io_err(op: &'static str, path: &Path, pid: Option<i32>, e: std::io::Error) -> ThrottleError {
    ThrottleError::cgroup(op, path, pid, e)
}

impl CgroupDir {
    /// An existing directory.
    pub fn at(path: impl Into<PathBuf>, version: CgroupVersion) -> CgroupDir {
        CgroupDir {
            path: path.into(),
            version,
        }
    }

    /// Creates `parent/name`; fails with [`ThrottleError::Exists`] when it is already there.
    pub fn create(
        parent: &Path,
        name: &str,
        version: CgroupVersion,
    ) -> Result<CgroupDir, ThrottleError> {
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => Ok(CgroupDir { path, version }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(ThrottleError::Exists(path)),
            Err(e) => Err(io_err("create", &path, None, e)),
        }
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `value` to a control file in one `write(2)` (cgroup files take one value per
    /// write).
    fn write(&self, name: &str, value: &str, pid: Option<i32>) -> Result<(), ThrottleError> {
        let path = self.file(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, pid, e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| io_err("write", &path, pid, e))
    }

    fn read(&self, name: &str) -> Result<String, ThrottleError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|e| io_err("read", &path, None, e))
    }

    fn read_ids(&self, name: &str) -> Result<Vec<i32>, ThrottleError> {
        Ok(self
            .read(name)?
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect())
    }

    /// The processes with at least one thread in this cgroup (`cgroup.procs`).
    pub fn procs(&self) -> Result<Vec<i32>, ThrottleError> {
        self.read_ids("cgroup.procs")
    }

    /// The threads in this cgroup (v1 `tasks`, v2 `cgroup.threads`).
    pub fn threads(&self) -> Result<Vec<i32>, ThrottleError> {
        match self.version {
            CgroupVersion::V1 => self.read_ids("tasks"),
            CgroupVersion::V2 => self.read_ids("cgroup.threads"),
        }
    }

    /// Moves process `pid` with all its threads here (`cgroup.procs`). A task that exited
    /// meanwhile gives an error for which [`ThrottleError::is_gone`] holds.
    pub fn move_process(&self, pid: i32) -> Result<(), ThrottleError> {
        self.write("cgroup.procs", &pid.to_string(), Some(pid))
    }

    /// Moves one thread here (v1 `tasks`; v2 moves whole processes, so this moves `tid`'s
    /// process there).
    pub fn move_thread(&self, tid: i32) -> Result<(), ThrottleError> {
        match self.version {
            CgroupVersion::V1 => self.write("tasks", &tid.to_string(), Some(tid)),
            CgroupVersion::V2 => self.move_process(tid),
        }
    }

    /// Sets the CPU limit (`None`: unlimited): v2 `cpu.max`, v1 `cpu.cfs_period_us` then
    /// `cpu.cfs_quota_us`.
    pub fn set_cpu_limit(&self, limit: Option<CpuLimit>) -> Result<(), ThrottleError> {
        match (self.version, limit) {
            (CgroupVersion::V2, None) => self.write("cpu.max", "max", None),
            (CgroupVersion::V2, Some(l)) => {
                self.write("cpu.max", &format!("{} {}", l.quota_us, l.period_us), None)
            }
            (CgroupVersion::V1, None) => self.write("cpu.cfs_quota_us", "-1", None),
            (CgroupVersion::V1, Some(l)) => {
                // Lift the quota first so that no intermediate (quota, period) pair is refused.
                self.write("cpu.cfs_quota_us", "-1", None)?;
                self.write("cpu.cfs_period_us", &l.period_us.to_string(), None)?;
                self.write("cpu.cfs_quota_us", &l.quota_us.to_string(), None)
            }
        }
    }

    /// The CPU limit in force (`None`: unlimited).
    pub fn cpu_limit(&self) -> Result<Option<CpuLimit>, ThrottleError> {
        match self.version {
            CgroupVersion::V2 => {
                let s = self.read("cpu.max")?;
                let mut f = s.split_whitespace();
                let quota = f.next().unwrap_or("max");
                let period = f.next().and_then(|p| p.parse().ok()).unwrap_or(100_000);
                Ok(quota.parse().ok().map(|quota_us| CpuLimit {
                    quota_us,
                    period_us: period,
                }))
            }
            CgroupVersion::V1 => {
                let quota: i64 = self.read("cpu.cfs_quota_us")?.trim().parse().unwrap_or(-1);
                let period: u64 = self
                    .read("cpu.cfs_period_us")?
                    .trim()
                    .parse()
                    .unwrap_or(100_000);
                Ok((quota > 0).then_some(CpuLimit {
                    quota_us: quota as u64,
                    period_us: period,
                }))
            }
        }
    }

    /// How long the quota held the tasks back (`cpu.stat`: v1 `throttled_time` in ns, v2
    /// `throttled_usec`).
    pub fn cpu_throttling(&self) -> Result<CpuThrottling, ThrottleError> {
        let s = self.read("cpu.stat")?;
        let mut t = CpuThrottling::default();
        for line in s.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            match k {
                "nr_throttled" => t.nr_throttled = v,
                "throttled_time" => t.throttled_us = v / 1000,
                "throttled_usec" => t.throttled_us = v,
                _ => {}
            }
        }
        Ok(t)
    }

    /// Freezes (`true`) or thaws the cgroup's tasks: v2 `cgroup.freeze`, v1 `freezer.state`.
    /// Returns at once; [`CgroupDir::wait_frozen`] waits for the kernel to finish.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), ThrottleError> {
        match self.version {
            CgroupVersion::V2 => self.write("cgroup.freeze", if frozen { "1" } else { "0" }, None),
            CgroupVersion::V1 => self.write(
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                None,
            ),
        }
    }

    /// Whether every task is frozen (v2 `cgroup.events` `frozen 1`, v1 `FROZEN`); `false`
    /// while freezing or thawed.
    pub fn is_frozen(&self) -> Result<bool, ThrottleError> {
        match self.version {
            CgroupVersion::V2 => Ok(self
                .read("cgroup.events")?
                .lines()
                .any(|l| l.trim() == "frozen 1")),
            CgroupVersion::V1 => Ok(self.read("freezer.state")?.trim() == "FROZEN"),
        }
    }

    /// Whether the cgroup is thawed (v1 `THAWED`; v2 `cgroup.freeze` 0 and not frozen).
    pub fn is_thawed(&self) -> Result<bool, ThrottleError> {
        match self.version {
            CgroupVersion::V2 => {
                Ok(self.read("cgroup.freeze")?.trim() == "0" && !self.is_frozen()?)
            }
            CgroupVersion::V1 => Ok(self.read("freezer.state")?.trim() == "THAWED"),
        }
    }

    /// Waits until the cgroup reaches the frozen (`true`) or thawed state; `Ok(false)` at the
    /// timeout.
    pub fn wait_frozen(&self, frozen: bool, timeout: Duration) -> Result<bool, ThrottleError> {
        let end = Instant::now() + timeout;
        loop {
            let there = if frozen {
                self.is_frozen()?
            } else {
                self.is_thawed()?
            };
            if there {
                return Ok(true);
            }
            if Instant::now() >= end {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the (empty) directory, retrying for up to `patience` while the kernel still
    /// counts exiting tasks in it (EBUSY). Already gone counts as removed.
    pub fn remove(&self, patience: Duration) -> Result<(), ThrottleError> {
        let end = Instant::now() + patience;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io_err("remove", &self.path, None, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_limits_respect_the_kernels_bounds() {
        let l = CpuLimit::for_cpus(0.35, 100_000);
        assert_eq!(
            l,
            CpuLimit {
                quota_us: 35_000,
                period_us: 100_000
            }
        );
        assert!((l.cpus() - 0.35).abs() < 1e-9);
        // 0.5 % of a CPU: 500 µs per 100 ms is below the minimum, so the period grows
        let l = CpuLimit::for_cpus(0.005, 100_000);
        assert_eq!(l.period_us, 200_000);
        assert_eq!(l.quota_us, 1000);
        // nothing at all: 1 ms per second
        let l = CpuLimit::for_cpus(0.0, 100_000);
        assert_eq!(
            l,
            CpuLimit {
                quota_us: 1000,
                period_us: 1_000_000
            }
        );
        let l = CpuLimit::for_cpus(f64::NAN, 100_000);
        assert_eq!(l.quota_us, 1000);
        // several CPUs: quota above the period
        let l = CpuLimit::for_cpus(2.5, 100_000);
        assert_eq!(l.quota_us, 250_000);
        // a silly period is clamped
        assert_eq!(CpuLimit::for_cpus(1.0, 10).period_us, MIN_PERIOD_US);
    }
}
