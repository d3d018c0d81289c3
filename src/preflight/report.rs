//! Pre-flight as one call per side, and its JSON form (`haul pid --dry-run`, the report's
//! `preflight` section, `haul check --json`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cost::{choose_strategy, Choice, CostInputs, CostModel, EngineUse};
use super::destination::{self, DestinationRequirements, NodeState};
use super::inspect::{inspect_tree, InspectError, TreeInspection};
use super::{assess, Asked, Assessment, Finding, Severity};
use crate::criu::Features;

/// The source's pre-flight: what the tree holds, the verdict, what the destination must check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcePreflight {
    /// What the tree holds.
    pub inspection: TreeInspection,
    /// Findings and the CRIU options the tree needs.
    pub assessment: Assessment,
    /// What the destination must check (goes into `Begin`).
    pub requirements: DestinationRequirements,
}

/// Runs the source's pre-flight on the tree rooted at `pid` (reads `/proc`; freezes nothing).
pub fn source(pid: i32, asked: &Asked) -> Result<SourcePreflight, InspectError> {
    let inspection = inspect_tree(pid)?;
    let assessment = assess(&inspection, asked);
    let requirements = DestinationRequirements::from_inspection(&inspection);
    Ok(SourcePreflight {
        inspection,
        assessment,
        requirements,
    })
}

impl SourcePreflight {
    /// The cost model's inputs for this tree (bandwidth, dirty rate and the nodes' features
    /// from the caller; `memory_path`: what `--memory-path` allows).
    ///
    /// Multi-threaded trees take haul's memory path like any other (they once hung there: the
    /// engine filled a faulted thread-stack page with one copy across two VMAs; see
    /// `memory::ranges::Missing`).
    pub fn cost_inputs(
        &self,
        source: Features,
        destination: Features,
        bandwidth: Option<f64>,
        max_downtime_secs: Option<f64>,
        memory_path: EngineUse,
    ) -> CostInputs {
        CostInputs {
            memory_engine: memory_path != EngineUse::Off
                && source.lazy_pages
                && destination.lazy_pages,
            stop_copy_engine_forced: memory_path == EngineUse::Forced,
            tcp_established: self.assessment.options.tcp_established,
            resident_bytes: self.inspection.resident(),
            mapped_bytes: self.inspection.mapped(),
            bandwidth,
            dirty_rate: None,
            source,
            destination,
            max_downtime_secs,
        }
    }
}

/// The destination's pre-flight on `Begin`: observes this node for `req` and judges it. An
/// empty result means go ahead; any finding refuses (each one would fail the restore).
pub fn destination(req: &DestinationRequirements, img_path: &Path) -> (NodeState, Vec<Finding>) {
    let node = destination::observe_node(req, img_path);
    let findings = destination::check(req, &node);
    (node, findings)
}

/// Everything pre-flight says about one migration, for the JSON report and `--dry-run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// Every finding of both nodes, refusals first.
    pub findings: Vec<Finding>,
    /// Whether the migration is refused (and nothing was frozen).
    pub refused: bool,
    /// The options turned on for CRIU (asked and safe ones).
    pub options: crate::criu::options::TreeOptions,
    /// CRIU's ghost limit, when not the default.
    pub ghost_limit: Option<u64>,
    /// Resident and mapped bytes of the tree.
    pub resident_bytes: u64,
    /// See `resident_bytes`.
    pub mapped_bytes: u64,
    /// `auto`'s choice with every strategy's estimate.
    pub strategy: Choice,
    /// The memory channel's measured bandwidth (bytes/s), when it was measured.
    #[serde(default)]
    pub bandwidth: Option<f64>,
}

impl PreflightReport {
    /// Puts the source's pre-flight, the destination's findings and the choice together.
    pub fn new(src: &SourcePreflight, destination_findings: Vec<Finding>, choice: Choice) -> Self {
        let mut a = src.assessment.clone();
        a.extend(destination_findings);
        PreflightReport {
            refused: a.refused(),
            findings: a.findings,
            options: a.options,
            ghost_limit: a.ghost_limit,
            resident_bytes: src.inspection.resident(),
            mapped_bytes: src.inspection.mapped(),
            strategy: choice,
            bandwidth: None,
        }
    }

    /// The source-only report of `haul pid --dry-run` without a destination: findings and
    /// estimates for both nodes having the source's features.
    pub fn dry_run(
        src: &SourcePreflight,
        features: Features,
        max_downtime_secs: Option<f64>,
    ) -> Self {
        let inputs = src.cost_inputs(features, features, None, max_downtime_secs, EngineUse::Auto);
        PreflightReport::new(
            src,
            Vec::new(),
            choose_strategy(&CostModel::default(), &inputs),
        )
    }

    /// The text `haul pid --dry-run` prints: one line per finding (infos left out), the
    /// estimates, the choice.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for f in self.findings.iter().filter(|f| f.severity > Severity::Info) {
            s.push_str(&format!("{f}\n"));
        }
        s.push_str(&format!(
            "memory: {} MiB resident, {} MiB mapped\n",
            self.resident_bytes >> 20,
            self.mapped_bytes >> 20
        ));
        match self.bandwidth {
            Some(bw) => s.push_str(&format!(
                "memory channel: {:.0} MiB/s measured\n",
                bw / f64::from(1u32 << 20)
            )),
            None => s.push_str("memory channel: not measured\n"),
        }
        for e in &self.strategy.estimates {
            s.push_str(&format!("  {e}\n"));
        }
        s.push_str(&format!(
            "strategy {}: {}\n",
            self.strategy.strategy, self.strategy.reason
        ));
        s.push_str(if self.refused {
            "the migration would be REFUSED (nothing frozen)\n"
        } else {
            "the migration can go ahead\n"
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_of_this_process() {
        let me = std::process::id() as i32;
        let src = source(me, &Asked::default()).unwrap();
        let f = Features {
            mem_track: false,
            lazy_pages: true,
        };
        let r = PreflightReport::dry_run(&src, f, None);
        assert_eq!(r.resident_bytes, src.inspection.resident());
        assert_eq!(r.strategy.estimates.len(), 4);
        let text = r.summary();
        assert!(
            text.contains("strategy ") && text.contains("MiB resident"),
            "{text}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert!(j["strategy"]["estimates"].is_array());
        let (node, findings) = destination(&src.requirements, Path::new("/tmp"));
        // The same node: this test's executable is there, the same (other tests' temporary
        // files may come and go meanwhile), and its pids are taken (no pid namespace of its own).
        let exe = std::env::current_exe().unwrap().display().to_string();
        assert!(src.requirements.files.iter().any(|f| f.path == exe));
        assert!(
            !findings.iter().any(|f| f.to_string().contains(&exe)),
            "{findings:?}"
        );
        assert!(findings
            .iter()
            .any(|f| f.kind == crate::obstacle::ObstacleKind::PidTaken));
        assert!(node.free_bytes > 0);
    }
}
