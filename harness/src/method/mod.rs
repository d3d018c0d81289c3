//! Methods: the ways a workload moves from the source to the destination. haul's strategies
//! are [`haul::HaulStrategy`]; each has a plain-CRIU twin that does the same kind of
//! migration with CRIU's own tools, driven step by step by the harness ([`criu`]):
//!
//! | haul | its plain-CRIU twin |
//! |---|---|
//! | `haul stop-copy` | `criu stop-copy`: `criu page-server` on the destination, `criu dump --page-server`, copy the other images, `criu restore` |
//! | `haul post-copy` | `criu post-copy`: `criu dump --lazy-pages` (serves the pages), `criu lazy-pages` daemon + `criu restore --lazy-pages` |
//! | `haul pre-copy`, `haul hybrid` | `criu pre-copy`: `criu pre-dump --track-mem` rounds to a page server (P.Haul's rules), then the final dump and restore |
//! | `haul auto` | the twin of what `auto` resolves to on these nodes |
//!
//! Every ratio in a record or a report is a haul method's figure over its twin's, never over
//! another mode's. The runner starts the workload, runs [`Method::migrate`], then checks the
//! workload on the destination the same way for every method.
//!
//! Adding a method: implement [`Method`] and name it in [`plan`] (and, for a haul strategy, in
//! [`crate::scenario::STRATEGIES`]).

pub mod criu;
pub mod haul;

use std::fmt;
use std::time::Duration;

use crate::cancel::CancelToken;
use crate::node::NodeError;
use crate::probe::Capabilities;
use crate::provider::Provider;
use crate::record::{CriuDetail, Figures, Tool};
use crate::scenario::Scenario;
use crate::serve::HaulServe;
use crate::workload::Workload;

/// Why a migration failed (the workload is then checked on the source).
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// A node command could not run.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A step of the migration failed.
    #[error("{0}")]
    Failed(String),
}

/// What one migration run needs from the run.
#[derive(Debug)]
pub struct MigrationContext<'a> {
    /// The nodes.
    pub provider: &'a dyn Provider,
    /// The harness's `haul serve` on the destination (haul methods).
    pub serve: &'a HaulServe<'a>,
    /// The scenario (method parameters: `haul_args`, `criu_max_rounds`).
    pub scenario: &'a Scenario,
    /// Bound of one step.
    pub timeout: Duration,
    /// The run's cancellation.
    pub cancel: &'a CancelToken,
    /// The migration's number in the run (names its directories and ports).
    pub seq: u32,
    /// The workload's node-local working directory, which `haul pid --sync` carries (synced
    /// workloads only; the scenario has no plain-CRIU twins then).
    pub sync_dir: Option<&'a str>,
}

/// A migration that went through: its figures and where the workload runs now.
#[derive(Debug, Default)]
pub struct Moved {
    /// The figures the method measured (the runner adds what the workload saw).
    pub figures: Figures,
    /// The workload's pid on the destination, as the method knows it.
    pub destination_pid: Option<i32>,
    /// haul's whole JSON report.
    pub haul_report: Option<serde_json::Value>,
    /// Plain CRIU's details.
    pub criu: Option<CriuDetail>,
}

/// One way of moving a workload.
pub trait Method: fmt::Debug + Send + Sync {
    /// Its name in records and reports: `haul <strategy>` or `criu <what it mirrors>`.
    fn name(&self) -> String;
    /// The tool behind it.
    fn tool(&self) -> Tool;
    /// Its plain-CRIU twin's name, for a haul method.
    fn twin(&self) -> Option<String>;
    /// Why it cannot run on nodes with these capabilities (source, destination).
    fn unsupported(&self, source: &Capabilities, destination: &Capabilities) -> Option<String>;
    /// Move the workload `w` (running on the source) to the destination.
    fn migrate(&self, cx: &MigrationContext<'_>, w: &Workload) -> Result<Moved, MethodError>;
}

/// What `strategy` needs, as `haul check` names strategies: the first of the two nodes that
/// cannot run it, with why.
pub fn strategy_unsupported(
    strategy: &str,
    source: &Capabilities,
    destination: &Capabilities,
) -> Option<String> {
    for (role, caps) in [("source", source), ("destination", destination)] {
        if let Some(why) = caps.unavailable.get(strategy) {
            return Some(format!(
                "unsupported on these nodes ({role}, haul check): needs {}",
                why.trim_start_matches("needs ")
            ));
        }
    }
    None
}

/// The methods of a scenario, in the order they run within a repetition: each haul strategy
/// right after its twin (a twin shared by several strategies runs once, before the first).
/// `auto`'s twin is the twin of what it resolves to on the source (`haul check`).
pub fn plan(scenario: &Scenario, source: &Capabilities) -> Vec<Box<dyn Method>> {
    let mut out: Vec<Box<dyn Method>> = Vec::new();
    for s in &scenario.strategies {
        let m = haul::HaulStrategy::new(s, source.auto.as_deref());
        if scenario.twins {
            if let Some(t) = m.twin() {
                if !out.iter().any(|x| x.name() == t) {
                    if let Some(twin) = criu::twin_named(&t) {
                        out.push(twin);
                    }
                }
            }
        }
        out.push(Box::new(m));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_come_first_once() {
        let s = Scenario::parse(
            "name = \"t\"\nstrategies = [\"stop-copy\", \"pre-copy\", \"hybrid\", \"auto\", \"post-copy\"]\n[[workloads]]\nname = \"w\"\nsizes = [\"16m\"]\npauses = [1000]\n",
            "t",
        )
        .unwrap();
        let caps = Capabilities {
            auto: Some("post-copy".into()),
            ..Default::default()
        };
        let names: Vec<String> = plan(&s, &caps).iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "criu stop-copy",
                "haul stop-copy",
                "criu pre-copy",
                "haul pre-copy",
                "haul hybrid",
                "criu post-copy",
                "haul auto",
                "haul post-copy"
            ]
        );
        let mut no_twins = s.clone();
        no_twins.twins = false;
        assert_eq!(plan(&no_twins, &caps).len(), 5);
    }
}
