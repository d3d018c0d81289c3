//! haul's strategies as methods: `haul pid --strategy S` to the harness's `haul serve`, its
//! JSON report read through haul's own type ([`haul::migrate::MigrationReport`]).

use haul::migrate::MigrationReport;

use super::{strategy_unsupported, Method, MethodError, MigrationContext, Moved};
use crate::probe::Capabilities;
use crate::record::{Figures, Round, SyncRound, Tool};
use crate::workload::Workload;

/// `haul pid --strategy <strategy>`.
#[derive(Debug, Clone)]
pub struct HaulStrategy {
    strategy: String,
    /// What `auto` resolves to on the source (for its twin).
    auto: Option<String>,
}

impl HaulStrategy {
    /// The strategy as `haul pid --strategy` takes it; `auto` is what `auto` resolves to.
    pub fn new(strategy: &str, auto: Option<&str>) -> HaulStrategy {
        HaulStrategy {
            strategy: strategy.into(),
            auto: auto.map(str::to_string),
        }
    }
}

/// The plain-CRIU twin of a (resolved) strategy.
pub fn twin_of(strategy: &str) -> &'static str {
    match strategy {
        "post-copy" => "criu post-copy",
        "pre-copy" | "hybrid" => "criu pre-copy",
        _ => "criu stop-copy",
    }
}

/// The figures of haul's report.
pub fn figures_from_report(r: &MigrationReport) -> Figures {
    Figures {
        total_secs: Some(r.total_secs),
        frozen_secs: Some(r.frozen_secs),
        restore_secs: Some(r.restore_secs),
        downtime_secs: Some(r.downtime_secs),
        postcopy_window_secs: r.postcopy_window_secs,
        pages_sent: Some(r.pages_sent),
        memory_bytes_sent: Some(r.memory_bytes_sent),
        image_bytes_sent: Some(r.image_bytes_sent),
        strategy_used: Some(r.strategy.clone()),
        rounds: r
            .rounds
            .iter()
            .map(|x| Round {
                round: x.round,
                pages: x.stats.pages_written,
                bytes: x.bytes,
                secs: x.secs,
            })
            .collect(),
        sync_bytes: r
            .sync
            .as_ref()
            .map(|s| s.rounds.iter().map(|x| x.payload_bytes).sum()),
        sync_final_secs: r.sync.as_ref().map(|s| s.final_round_secs),
        sync_final_share: r.sync.as_ref().and_then(|s| s.final_share_of_downtime),
        sync_rounds: r
            .sync
            .as_ref()
            .map(|s| {
                s.rounds
                    .iter()
                    .map(|x| SyncRound {
                        round: x.round,
                        final_round: x.final_round,
                        bytes: x.payload_bytes,
                        files: x.files,
                        secs: x.secs,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

impl Method for HaulStrategy {
    fn name(&self) -> String {
        format!("haul {}", self.strategy)
    }

    fn tool(&self) -> Tool {
        Tool::Haul
    }

    fn twin(&self) -> Option<String> {
        let resolved = match (self.strategy.as_str(), &self.auto) {
            ("auto", Some(a)) => a.as_str(),
            (s, _) => s,
        };
        Some(twin_of(resolved).into())
    }

    fn unsupported(&self, source: &Capabilities, destination: &Capabilities) -> Option<String> {
        if self.strategy == "auto" {
            return None;
        }
        strategy_unsupported(&self.strategy, source, destination)
    }

    fn migrate(&self, cx: &MigrationContext<'_>, w: &Workload) -> Result<Moved, MethodError> {
        let (src, dst) = (cx.provider.source(), cx.provider.destination());
        let report = format!("{}/report-{:03}.json", src.work_dir(), cx.seq);
        let mut argv = vec![
            src.bin("haul"),
            "pid".into(),
            w.source_pid.to_string(),
            format!("{}:{}", dst.addr(), cx.serve.port),
            "--key".into(),
            cx.serve.source_key.clone(),
            "--img-path".into(),
            format!("{}/img", src.work_dir()),
            "--strategy".into(),
            self.strategy.clone(),
            "--report".into(),
            report.clone(),
            "--no-progress".into(),
        ];
        if let Some(d) = cx.sync_dir {
            argv.extend(["--sync".into(), d.to_string()]);
        }
        argv.extend(cx.scenario.haul_args.iter().cloned());
        let estimate = if cx.scenario.dry_run_first {
            Some(self.dry_run(cx, &argv, &report)?)
        } else {
            None
        };
        let mark = cx.serve.log_mark();
        let t = std::time::Instant::now();
        let out = src.exec(&argv, None, cx.timeout)?;
        if !out.success() {
            return Err(MethodError::Failed(format!(
                "haul pid {} after {:.1} s: {} || haul serve's log ends: {}",
                out.status_text(),
                t.elapsed().as_secs_f64(),
                out.tail(6),
                cx.serve.log_since(mark, 4)
            )));
        }
        let bytes = src.read_file(&report)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| MethodError::Failed(format!("haul's report {report}: {e}")))?;
        let parsed: MigrationReport = serde_json::from_value(value.clone())
            .map_err(|e| MethodError::Failed(format!("haul's report {report}: {e}")))?;
        let mut figures = figures_from_report(&parsed);
        if let Some(dry) = estimate {
            // the estimate of the strategy that ran (auto's choice may differ between the two)
            if let Some(e) = dry.estimate_for(&parsed.strategy) {
                figures.estimated_downtime_secs = Some(e.downtime_secs);
                figures.estimated_total_secs = Some(e.total_secs);
            }
        }
        Ok(Moved {
            figures,
            destination_pid: Some(parsed.destination_pid),
            haul_report: Some(value),
            criu: None,
        })
    }
}

/// A `haul pid --dry-run` report's estimates.
struct DryRun(Vec<haul::preflight::cost::Estimate>);

impl DryRun {
    fn estimate_for(&self, strategy: &str) -> Option<&haul::preflight::cost::Estimate> {
        self.0.iter().find(|e| e.strategy.name() == strategy)
    }
}

impl HaulStrategy {
    /// Runs `argv` (the migration's own `haul pid`) with `--dry-run` and its report beside
    /// the migration's; exit 3 (refused) is an answer too, its estimates are kept.
    fn dry_run(
        &self,
        cx: &MigrationContext<'_>,
        argv: &[String],
        report: &str,
    ) -> Result<DryRun, MethodError> {
        let src = cx.provider.source();
        let dry_report = report.replace(".json", "-dry-run.json");
        let mut dry: Vec<String> = argv.to_vec();
        if let Some(i) = dry.iter().position(|a| a == report) {
            dry[i] = dry_report.clone();
        }
        dry.push("--dry-run".into());
        let out = src.exec(&dry, None, cx.timeout)?;
        if !out.success() && out.code != Some(3) {
            return Err(MethodError::Failed(format!(
                "haul pid --dry-run {}: {}",
                out.status_text(),
                out.tail(6)
            )));
        }
        let bytes = src.read_file(&dry_report)?;
        let parsed: MigrationReport = serde_json::from_slice(&bytes)
            .map_err(|e| MethodError::Failed(format!("haul's dry-run report {dry_report}: {e}")))?;
        Ok(DryRun(
            parsed
                .preflight
                .map(|p| p.strategy.estimates)
                .unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_figures_through_haul_s_type() {
        let mut v = serde_json::to_value(MigrationReport::default()).unwrap();
        let round = serde_json::to_value(haul::migrate::report::RoundReport {
            round: 1,
            bytes: 245760,
            secs: 0.5,
            stats: haul::criu::DumpStats {
                pages_written: 60,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        for (k, x) in [
            ("total_secs", serde_json::json!(2.0)),
            ("strategy", serde_json::json!("pre-copy")),
            ("pages_sent", serde_json::json!(100)),
            ("rounds", serde_json::json!([round])),
        ] {
            v[k] = x;
        }
        let r: MigrationReport = serde_json::from_value(v).unwrap();
        let f = figures_from_report(&r);
        assert_eq!(f.total_secs, Some(2.0));
        assert_eq!(f.postcopy_window_secs, None);
        assert_eq!(f.pages_sent, Some(100));
        assert_eq!(f.strategy_used.as_deref(), Some("pre-copy"));
        assert_eq!(f.rounds[0].pages, 60);
    }

    #[test]
    fn auto_takes_the_twin_of_what_it_resolves_to() {
        assert_eq!(
            HaulStrategy::new("auto", Some("post-copy"))
                .twin()
                .as_deref(),
            Some("criu post-copy")
        );
        assert_eq!(
            HaulStrategy::new("hybrid", None).twin().as_deref(),
            Some("criu pre-copy")
        );
    }
}
