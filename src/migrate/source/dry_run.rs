//! `haul pid --dry-run`: everything a migration would check, on both nodes, and what it would
//! cost, with nothing frozen and nothing kept. The source's pre-flight has run (refusals
//! included, not returned as errors); the destination runs its own checks on `Begin{dry_run}`
//! (versions, space, CPU, the tree's ports, pids and files), the memory channel is measured,
//! and the cost model says which strategy `auto` takes and what each would cost.

use std::time::Instant;

use tracing::warn;

use crate::preflight::{Finding, PreflightReport};
use crate::wire::pb;

use super::super::control::{self, ChannelError, Control};
use super::super::error::chain;
use super::super::limits;
use super::super::report::MigrationReport;
use super::preflight::Checked;
use super::session::{begin_message, destination_findings, pick_strategy};
use super::{probe, SourceConfig, SourceError};

/// Runs the dry run; the report's `preflight` says what a migration would do.
pub async fn run(
    cfg: SourceConfig,
    checked: Checked,
    t0: Instant,
) -> Result<MigrationReport, SourceError> {
    let conn = control::connect(
        &cfg.destination,
        &cfg.key,
        crate::wire::auth::Purpose::Control,
    )
    .await?;
    let mut ctl = Control::new(conn, cfg.destination.clone());
    let begin = begin_message(&cfg, &checked, true);
    let wait = limits::REPLY.named("the destination's pre-flight checks");
    let mut report = MigrationReport {
        migration_id: checked.migration_id.clone(),
        pid: cfg.pid,
        destination: cfg.destination.clone(),
        strategy_requested: cfg.strategy.name().into(),
        source_criu: Some(checked.version),
        warnings: checked.warnings.clone(),
        dry_run: true,
        ..Default::default()
    };
    let (dst_features, dst_findings, bandwidth) = match ctl.request::<pb::Ready>(begin, wait).await
    {
        Ok(ready) => {
            report.destination_criu = ready.criu_version.map(Into::into);
            let findings = destination_findings(&ready);
            let bw = match probe::bandwidth(&mut ctl, &cfg, &checked.migration_id).await {
                Ok(bw) => Some(bw),
                Err(e) => {
                    warn!("cannot measure the memory channel: {}", chain(&e));
                    None
                }
            };
            let finish = pb::Finish {
                ok: true,
                reason: "dry run".into(),
            };
            let _ = ctl
                .request::<pb::Finished>(finish, limits::REPLY.named("the destination's goodbye"))
                .await;
            (ready.features.unwrap_or_default().into(), findings, bw)
        }
        // The destination refused: its findings are part of the answer.
        Err(ChannelError::PeerFailed { findings, .. }) if !findings.is_empty() => {
            (checked.features, findings, None)
        }
        // Any other refusal (CPU, space, version) becomes the report's warning line.
        Err(ChannelError::PeerFailed { message, .. }) => {
            report
                .warnings
                .push(format!("the destination refused: {message}"));
            (checked.features, Vec::<Finding>::new(), None)
        }
        Err(e) => return Err(e.into()),
    };
    // An explicit strategy the nodes cannot run is a finding of the dry run, not its failure.
    let (strategy, why, choice) = match pick_strategy(
        &cfg,
        &checked.tree,
        checked.features,
        dst_features,
        bandwidth,
    ) {
        Ok(x) => x,
        Err(e) => {
            report.warnings.push(chain(&e));
            let mut auto = cfg.clone();
            auto.strategy = super::super::Strategy::Auto;
            pick_strategy(
                &auto,
                &checked.tree,
                checked.features,
                dst_features,
                bandwidth,
            )?
        }
    };
    report.memory_path = if choice.over_haul_path(strategy) {
        "haul"
    } else {
        "criu"
    }
    .into();
    report.strategy = strategy.name().into();
    report.strategy_reason = why;
    let mut preflight = PreflightReport::new(&checked.tree, dst_findings, choice);
    preflight.bandwidth = bandwidth;
    report.preflight = Some(preflight);
    report.total_secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(checked.dir.root());
    Ok(report)
}
