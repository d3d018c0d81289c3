//! Scenario files (TOML): what to migrate, how, how often, and between which nodes.
//!
//! ```toml
//! name = "default"
//! description = "The HOWTO's memory toucher at three sizes and three dirty rates"
//! repetitions = 3
//! strategies = ["stop-copy", "post-copy", "auto", "pre-copy", "hybrid"]
//! twins = true               # also each strategy's plain-CRIU twin (see the method module)
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
//! and VM nodes the scenario names it (`node_local_dir`, a path on each host's own disk whose
//! name contains `haul-harness`). Plain CRIU has no file sync: such scenarios run without the
//! twins.
//!
//! [`Scenario::cases`] expands the workloads into [`WorkloadCase`]s (duplicates across
//! entries are dropped), each of which runs `repetitions` times per strategy.

use std::collections::BTreeSet;
use std::path::Path;

use haul_workloads::mtouch_spec::{parse_size, PAGE_SIZE};
use serde::{Deserialize, Serialize};

pub use crate::case::{human_size, pre_bytes, WorkloadCase};
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
fn default_criu_rounds() -> u32 {
    8
}
fn default_probe_bytes() -> u64 {
    256 << 20
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
    /// Also migrate every case with each strategy's plain-CRIU twin (stop-copy: page-server
    /// dump + restore; post-copy: lazy pages; pre-copy and hybrid: the pre-dump loop).
    /// `baseline` is the old name.
    #[serde(default = "default_true", alias = "baseline")]
    pub twins: bool,
    /// More `haul pid` options for every haul migration (e.g. `["--max-rounds", "2"]`).
    #[serde(default)]
    pub haul_args: Vec<String>,
    /// Before every haul migration, run the same `haul pid` with `--dry-run` (nothing frozen)
    /// and record its estimates beside the measured figures (`estimated_downtime_secs`,
    /// `estimated_total_secs`): how well `--dry-run` predicts (issue #13 asks ±50 %).
    #[serde(default)]
    pub dry_run_first: bool,
    /// Plain CRIU's pre-dump loop: at most this many pre-dumps before the final dump (it
    /// stops earlier by P.Haul's rules: <= 64 pages written, or the dirty set grew).
    #[serde(default = "default_criu_rounds")]
    pub criu_max_rounds: u32,
    /// Bytes the link probe streams from the source to the destination to measure the
    /// bandwidth the link floor is computed from (0: no probe, no floor).
    #[serde(default = "default_probe_bytes")]
    pub link_probe_bytes: u64,
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
    /// workloads with `sync = true` on `ssh` and VM nodes (the `local` provider makes its
    /// own). Its path must contain a component starting with `haul-harness`.
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
    /// Memory sizes (`64m`, `1g`, ...).
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
        if self.strategies.is_empty() {
            return Err(self.invalid("no strategies: nothing to run"));
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
            if w.sync && self.twins {
                return Err(bad(
                    "sync = true needs twins = false (plain CRIU has no file sync)".into(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_churn_with_sync() {
        let text = r#"
name = "files"
twins = false
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
        let e = Scenario::parse(&text.replace("twins = false\n", ""), "t")
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
        assert!(s.twins);
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
            for c in s.cases() {
                prop_assert_eq!(c.pre_bytes, c.size_bytes);
                prop_assert!(c.dirty_rate().unwrap() > 0.0);
            }
        }
    }
}
