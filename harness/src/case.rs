//! One workload case: exactly what one launch of the workload runs (program, memory size,
//! pre-touched memory, dirty rate, pattern). A leaf of the harness: the scenario expands its
//! grid into cases, the record schema stores them, nothing here knows either.

use haul_workloads::mtouch_spec::{parse_size, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// One point of a workload grid: exactly what one launch of the workload runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadCase {
    /// The `[[workloads]]` entry it came from.
    pub name: String,
    /// The program.
    pub program: String,
    /// Mapped memory (bytes).
    pub size_bytes: u64,
    /// Pre-touched memory (bytes).
    pub pre_bytes: u64,
    /// Microseconds between touches (also set, to 1, when a rate is given; mtouch ignores it).
    pub pause_us: u64,
    /// mtouch's `--rate` as given (`4m`, `max`), when the case is rate-driven.
    pub rate: Option<String>,
    /// Touch pattern.
    pub pattern: String,
    /// More arguments.
    pub args: Vec<String>,
    /// Node-local working directory, synced (`haul pid --sync`).
    #[serde(default)]
    pub sync: bool,
}

impl WorkloadCase {
    /// `SIZE:PRE:PAUSE` as mtouch takes it (sizes in bytes, or `k`/`m`/`g` when whole).
    pub fn spec(&self) -> String {
        format!(
            "{}:{}:{}",
            human_size(self.size_bytes),
            human_size(self.pre_bytes),
            self.pause_us
        )
    }

    /// A short label: `256m:256m:100000` or `256m:256m@4m/s`, plus the pattern when not random;
    /// file-churn: `files 200m@4m/s`, plus ` sync` for a synced working directory.
    pub fn label(&self) -> String {
        if self.program == "file-churn" {
            return format!(
                "files {}@{}/s{}",
                human_size(self.size_bytes),
                self.rate.as_deref().unwrap_or("4m"),
                if self.sync { " sync" } else { "" }
            );
        }
        let mut s = match &self.rate {
            Some(r) => format!(
                "{}:{}@{r}/s",
                human_size(self.size_bytes),
                human_size(self.pre_bytes)
            ),
            None => self.spec(),
        };
        if self.pattern != "random" {
            s.push_str(&format!(" {}", self.pattern));
        }
        s
    }

    /// The workload's arguments (mtouch: after the log file name).
    pub fn argv(&self) -> Vec<String> {
        if self.program == "file-churn" {
            let mut v = vec!["--size".into(), human_size(self.size_bytes)];
            if let Some(r) = &self.rate {
                v.push("--rate".into());
                v.push(r.clone());
            }
            v.extend(self.args.iter().cloned());
            return v;
        }
        let mut v = vec![self.spec()];
        if let Some(r) = &self.rate {
            v.push("--rate".into());
            v.push(r.clone());
        }
        v.push("--pattern".into());
        v.push(self.pattern.clone());
        v.extend(self.args.iter().cloned());
        v
    }

    /// The dirty rate in bytes per second (`None` for `max`, which has no fixed rate).
    pub fn dirty_rate(&self) -> Option<f64> {
        match &self.rate {
            Some(r) if r == "max" => None,
            Some(r) => parse_size(r).ok().map(|b| b as f64),
            None if self.pause_us > 0 => Some(PAGE_SIZE as f64 * 1e6 / self.pause_us as f64),
            None => None,
        }
    }
}

/// `n` as `<k>g`, `<k>m`, `<k>k` when a whole multiple, else plain bytes.
pub fn human_size(n: u64) -> String {
    for (shift, suffix) in [(30, "g"), (20, "m"), (10, "k")] {
        if n > 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// Pre-touched bytes for `pre` (`all`, a size, or `N%`) of `size` bytes, at most `size`.
pub fn pre_bytes(pre: &str, size: u64) -> Result<u64, String> {
    if pre == "all" {
        return Ok(size);
    }
    if let Some(p) = pre.strip_suffix('%') {
        let p: f64 = p
            .parse()
            .map_err(|_| format!("pre {pre:?}: not a percentage"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("pre {pre:?}: percentage out of 0..100"));
        }
        let b = (size as f64 * p / 100.0) as u64;
        return Ok(b / PAGE_SIZE * PAGE_SIZE);
    }
    let b = parse_size(pre).map_err(|e| e.to_string())?;
    Ok(b.min(size))
}
