//! Scenario files (TOML): what to migrate, how, how often, and between which nodes.
//!
//! ```toml
//! name = "default"
//! description = "The HOWTO's memory toucher at three sizes and three dirty rates"
//! repetitions = 3
//! strategies = ["stop-copy", "post-copy", "auto", "pre-copy", "hybrid"]
//! baseline = true            # also migrate each workload with plain CRIU (dump, copy, restore)
//! settle_secs = 1.0          # the workload touches memory this long before it is migrated
//! after_secs = 1.0           # and this long on the destination before it checks itself
//!
//! [provider]                 # see crate::provider::ProviderConfig
//! kind = "local"
//!
//! [[workloads]]              # every size x every pause (or rate) is one workload case
//! name = "howto"
//! program = "mtouch"
//! sizes = ["64m", "256m", "1g"]
//! pre = "all"                # bytes to pre-touch: "all", a size ("64m") or a share ("25%")
//! pauses = [100000]          # microseconds between touches (the HOWTO's dirty rate)
//! pattern = "random"
//!
//! [[workloads]]              # migration without shared storage (issue #18)
//! name = "files"
//! program = "file-churn"     # rewrites and appends to SIZE of files in its working directory
//! sizes = ["200m"]
//! rates = ["4m"]             # bytes of files changed per second
//! sync = true                # its working directory is node-local; `haul pid --sync` carries it
//! ```
//!
//! A workload with `sync = true` works in a directory each node keeps on its own disk: the
//! `local` provider makes one with a mount namespace per node ([`crate::mntns`]); for `ssh`
//! and `vagrant` nodes the scenario names it (`node_local_dir`, a path on each host's own
//! disk whose name contains `haul-harness`). Plain CRIU has no file sync: such scenarios run
//! without the baseline.
//!
//! [`Scenario::cases`] expands the workloads into [`WorkloadCase`]s (duplicates across
//! entries are dropped), each of which runs `repetitions` times per strategy.

use std::collections::BTreeSet;
use std::path::Path;

use haul_workloads::mtouch_spec::{parse_size, PAGE_SIZE};
use serde::{Deserialize, Serialize};

use crate::provider::ProviderConfig;

/// The strategies `haul pid --strategy` knows.
pub const STRATEGIES: [&str; 5] = ["stop-copy", "pre-copy", "post-copy", "hybrid", "auto"];

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("scenario {path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// What the parser said.
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("scenario {name}: {why}")]
    Invalid {
        /// The scenario's name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

fn default_repetitions() -> u32 {
    3
}
fn default_true() -> bool {
    true
}
fn default_settle() -> f64 {
    1.0
}
fn default_after() -> f64 {
    1.0
}
fn default_timeout() -> f64 {
    300.0
}
fn default_strategies() -> Vec<String> {
    vec!["auto".into()]
}

/// A whole scenario file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name (the results file is named after it).
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Repetitions of every (workload case, strategy).
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    /// Strategies to run, as `haul pid --strategy` takes them.
    #[serde(default = "default_strategies")]
    pub strategies: Vec<String>,
    /// Also migrate every case with plain CRIU (dump to a page server, copy, restore).
    #[serde(default = "default_true")]
    pub baseline: bool,
    /// Seconds the workload runs (after its first touch) before it is migrated.
    #[serde(default = "default_settle")]
    pub settle_secs: f64,
    /// Seconds the workload runs on the destination before it is told to check itself.
    #[serde(default = "default_after")]
    pub after_secs: f64,
    /// Upper bound of one step (a migration, a workload's check), in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// The nodes.
    #[serde(default)]
    pub provider: ProviderConfig,
    /// A directory at the same path on both nodes that each keeps on its own disk, for
    /// workloads with `sync = true` on `ssh` and `vagrant` nodes (the `local` provider makes
    /// its own). Its path must contain a component starting with `haul-harness`.
    #[serde(default)]
    pub node_local_dir: Option<String>,
    /// The workloads.
    pub workloads: Vec<WorkloadSpec>,
}

/// One `[[workloads]]` entry: a workload program and the grid of its parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// A name for the entry (shown in reports).
    pub name: String,
    /// The program: `mtouch` (memory), or `file-churn` (files in its working directory).
    #[serde(default = "default_program")]
    pub program: String,
    /// Memory sizes (`64m`, `1g`, ...); file-churn: bytes of files.
    pub sizes: Vec<String>,
    /// Pre-touched memory: `all`, a size, or a percentage of the size.
    #[serde(default = "default_pre")]
    pub pre: String,
    /// Microseconds between two touches (mtouch's PAUSE); one case per value.
    #[serde(default)]
    pub pauses: Vec<u64>,
    /// Dirty rates in bytes per second (`4m`, `max`), mtouch's `--rate`; one case per value.
    #[serde(default)]
    pub rates: Vec<String>,
    /// Touch pattern (`random`, `sequential`, `hot:P`).
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// More arguments for the program (e.g. `--no-hugepages`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Its working directory is node-local and travels with `haul pid --sync`.
    #[serde(default)]
    pub sync: bool,
}

/// The programs a scenario can run.
pub const PROGRAMS: [&str; 2] = ["mtouch", "file-churn"];

fn default_program() -> String {
    "mtouch".into()
}
fn default_pre() -> String {
    "all".into()
}
fn default_pattern() -> String {
    "random".into()
}

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

impl Scenario {
    /// Read and check a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parse and check scenario text (`origin` names it in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Toml {
            path: origin.to_string(),
            source,
        })?;
        s.validate()?;
        Ok(s)
    }

    fn invalid(&self, why: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            name: self.name.clone(),
            why: why.into(),
        }
    }

    /// Check ranges and names; [`Scenario::cases`] is then infallible.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid("name must be non-empty letters, digits, '-' or '_'"));
        }
        if self.repetitions == 0 {
            return Err(self.invalid("repetitions must be at least 1"));
        }
        if self.strategies.is_empty() && !self.baseline {
            return Err(self.invalid("no strategies and no baseline: nothing to run"));
        }
        for s in &self.strategies {
            if !STRATEGIES.contains(&s.as_str()) {
                return Err(self.invalid(format!(
                    "unknown strategy {s:?} (one of {})",
                    STRATEGIES.join(", ")
                )));
            }
        }
        for (what, v) in [
            ("settle_secs", self.settle_secs),
            ("after_secs", self.after_secs),
            ("timeout_secs", self.timeout_secs),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(self.invalid(format!("{what} must be a number >= 0")));
            }
        }
        if self.timeout_secs < 1.0 {
            return Err(self.invalid("timeout_secs must be at least 1"));
        }
        if self.workloads.is_empty() {
            return Err(self.invalid("no [[workloads]]"));
        }
        self.provider
            .validate()
            .map_err(|why| self.invalid(format!("[provider]: {why}")))?;
        for w in &self.workloads {
            let bad = |why: String| self.invalid(format!("workload {:?}: {why}", w.name));
            if !PROGRAMS.contains(&w.program.as_str()) {
                return Err(bad(format!(
                    "program {:?} is not supported ({}: their logs give the observed downtime and the check)",
                    w.program,
                    PROGRAMS.join(", ")
                )));
            }
            if w.sync && self.baseline {
                return Err(bad(
                    "sync = true needs baseline = false (plain CRIU has no file sync)".into(),
                ));
            }
            if w.program == "file-churn" && (w.rates.is_empty() || !w.pauses.is_empty()) {
                return Err(bad(
                    "file-churn takes rates (bytes of files changed per second), not pauses".into(),
                ));
            }
            if w.program == "file-churn" && w.rates.iter().any(|r| r == "max") {
                return Err(bad("file-churn needs a rate, not max".into()));
            }
            if w.sizes.is_empty() {
                return Err(bad("no sizes".into()));
            }
            for size in &w.sizes {
                let b = parse_size(size).map_err(|e| bad(e.to_string()))?;
                if b < PAGE_SIZE {
                    return Err(bad(format!("size {size} is smaller than a page")));
                }
                pre_bytes(&w.pre, b).map_err(bad)?;
            }
            if w.pauses.is_empty() && w.rates.is_empty() {
                return Err(bad("give pauses (microseconds) or rates (bytes/s)".into()));
            }
            for r in &w.rates {
                if r != "max" {
                    parse_size(r).map_err(|e| bad(e.to_string()))?;
                }
            }
            let pattern_ok = matches!(w.pattern.as_str(), "random" | "sequential")
                || w.pattern
                    .strip_prefix("hot:")
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|p| (1..=100).contains(&p));
            if !pattern_ok {
                return Err(bad(format!(
                    "pattern {:?}: random, sequential or hot:PERCENT",
                    w.pattern
                )));
            }
        }
        Ok(())
    }

    /// Every workload case, in file order, without duplicates.
    pub fn cases(&self) -> Vec<WorkloadCase> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for w in &self.workloads {
            for size in &w.sizes {
                let size_bytes = parse_size(size).unwrap_or(0);
                let pre = pre_bytes(&w.pre, size_bytes).unwrap_or(size_bytes);
                let mut points: Vec<(u64, Option<String>)> =
                    w.pauses.iter().map(|&p| (p, None)).collect();
                points.extend(w.rates.iter().map(|r| (1, Some(r.clone()))));
                for (pause_us, rate) in points {
                    let case = WorkloadCase {
                        name: w.name.clone(),
                        program: w.program.clone(),
                        size_bytes,
                        pre_bytes: pre,
                        pause_us,
                        rate,
                        pattern: w.pattern.clone(),
                        args: w.args.clone(),
                        sync: w.sync,
                    };
                    let key = (case.argv(), case.program.clone(), case.sync);
                    if seen.insert(key) {
                        out.push(case);
                    }
                }
            }
        }
        out
    }

    /// Whether a workload works in a node-local directory that `--sync` carries.
    pub fn syncs(&self) -> bool {
        self.workloads.iter().any(|w| w.sync)
    }

    /// Number of migrations a run makes (unsupported strategies included, which take no time).
    pub fn migrations(&self) -> usize {
        self.cases().len()
            * self.repetitions as usize
            * (self.strategies.len() + usize::from(self.baseline))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"
name = "t"
repetitions = 2
strategies = ["stop-copy", "post-copy"]

[provider]
kind = "local"

[[workloads]]
name = "size"
sizes = ["64m", "1g"]
pre = "25%"
pauses = [100000, 1000]

[[workloads]]
name = "rate"
sizes = ["64m"]
pre = "all"
pauses = [100000]
rates = ["4m", "max"]
pattern = "hot:10"
"#;

    #[test]
    fn parses_and_expands() {
        let s = Scenario::parse(FULL, "test").unwrap();
        assert!(s.baseline);
        assert_eq!(s.settle_secs, 1.0);
        let cases = s.cases();
        assert_eq!(cases.len(), 4 + 3);
        assert_eq!(cases[0].spec(), "64m:16m:100000");
        assert_eq!(cases[0].argv(), ["64m:16m:100000", "--pattern", "random"]);
        assert_eq!(cases[3].spec(), "1g:256m:1000");
        assert_eq!(cases[3].dirty_rate(), Some(4096.0 * 1000.0));
        let rate = &cases[5];
        assert_eq!(rate.rate.as_deref(), Some("4m"));
        assert_eq!(rate.dirty_rate(), Some(4.0 * 1048576.0));
        assert_eq!(rate.label(), "64m:64m@4m/s hot:10");
        assert_eq!(cases[6].dirty_rate(), None);
        assert_eq!(s.migrations(), 7 * 2 * 3);
    }

    #[test]
    fn duplicates_are_dropped() {
        let text = FULL
            .replace("pattern = \"hot:10\"", "")
            .replace("pre = \"all\"", "pre = \"25%\"");
        let s = Scenario::parse(&text, "test").unwrap();
        // 64m:16m:100000 appears in both entries
        assert_eq!(s.cases().len(), 6);
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!s.cases().is_empty());
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn rejects_mistakes() {
        let cases = [
            (
                "strategies = [\"stop-copy\", \"post-copy\"]",
                "strategies = [\"warp\"]",
                "unknown strategy",
            ),
            ("repetitions = 2", "repetitions = 0", "at least 1"),
            (
                "sizes = [\"64m\", \"1g\"]",
                "sizes = [\"lots\"]",
                "bad size",
            ),
            ("pre = \"25%\"", "pre = \"250%\"", "out of 0..100"),
            ("pattern = \"hot:10\"", "pattern = \"hot:0\"", "pattern"),
            (
                "name = \"size\"\n",
                "name = \"size\"\nprogram = \"redis\"\n",
                "not supported",
            ),
            ("name = \"t\"", "name = \"t x\"", "name must be"),
            (
                "repetitions = 2",
                "repetitions = 2\ncolour = 1",
                "unknown field",
            ),
            ("kind = \"local\"", "kind = \"ssh\"", "[provider]"),
        ];
        for (from, to, want) in cases {
            let text = FULL.replacen(from, to, 1);
            assert_ne!(text, FULL, "{from}");
            let e = Scenario::parse(&text, "test").unwrap_err().to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn file_churn_with_sync() {
        let text = r#"
name = "files"
baseline = false
strategies = ["stop-copy"]
[[workloads]]
name = "files"
program = "file-churn"
sizes = ["200m"]
rates = ["4m", "16m"]
sync = true
"#;
        let s = Scenario::parse(text, "test").unwrap();
        assert!(s.syncs());
        let c = s.cases();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].argv(), ["--size", "200m", "--rate", "4m"]);
        assert_eq!(c[0].label(), "files 200m@4m/s sync");
        assert_eq!(c[1].dirty_rate(), Some(16.0 * 1048576.0));
        let e = Scenario::parse(&text.replace("baseline = false\n", ""), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain CRIU has no file sync"), "{e}");
        let e = Scenario::parse(
            &text.replace("rates = [\"4m\", \"16m\"]", "pauses = [1]"),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("takes rates"), "{e}");
    }

    #[test]
    fn sizes_read_back() {
        assert_eq!(human_size(64 << 20), "64m");
        assert_eq!(human_size(1 << 30), "1g");
        assert_eq!(human_size(12 << 10), "12k");
        assert_eq!(human_size(4097), "4097");
        assert_eq!(pre_bytes("64m", 16 << 20), Ok(16 << 20));
        assert_eq!(pre_bytes("50%", 64 << 20), Ok(32 << 20));
    }

    proptest! {
        #[test]
        fn human_size_round_trips(n in 1u64..(1 << 40)) {
            prop_assert_eq!(parse_size(&human_size(n)).unwrap(), n);
        }

        #[test]
        fn any_grid_expands_to_its_product(
            sizes in prop::collection::btree_set(1u64..4096, 1..4),
            pauses in prop::collection::btree_set(1u64..1_000_000, 1..4),
            reps in 1u32..5,
        ) {
            let sizes: Vec<String> = sizes.iter().map(|s| format!("\"{s}m\"")).collect();
            let pauses: Vec<String> = pauses.iter().map(|p| p.to_string()).collect();
            let text = format!(
                "name = \"p\"\nrepetitions = {reps}\nstrategies = [\"auto\"]\n[[workloads]]\nname = \"w\"\nsizes = [{}]\npauses = [{}]\n",
                sizes.join(", "), pauses.join(", ")
            );
            let s = Scenario::parse(&text, "prop").unwrap();
            prop_assert_eq!(s.cases().len(), sizes.len() * pauses.len());
            prop_assert_eq!(s.migrations(), sizes.len() * pauses.len() * reps as usize * 2);
            for c in s.cases() {
                prop_assert_eq!(c.pre_bytes, c.size_bytes);
                prop_assert!(c.dirty_rate().unwrap() > 0.0);
            }
        }
    }
}
