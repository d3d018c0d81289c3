//! One migration with the destination, from `Begin` to `Finish`, and where the process is
//! at each point ([`Stage`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::criu::service::CriuService;
use crate::criu::{CriuVersion, Features};
use crate::wire::auth::Purpose;
use crate::wire::pb;

use super::super::control::{self, ChannelError, Control};
use super::super::error::{chain, PathError};
use super::super::images::MigrationDir;
use super::super::limits::{self, Wait};
use super::super::report::MigrationReport;
use super::super::strategy::Strategy;
use super::super::tree;
use super::preflight::Checked;
use super::probe;
use super::{SourceConfig, SourceError, SourceFailure, Whereabouts};
use crate::preflight::report::SourcePreflight;
use crate::preflight::{
    choose_strategy, Assessment, Choice, CostModel, Finding, PreflightReport, Severity,
};

/// Where the process is, as far as the source knows (decides the [`Whereabouts`] of a
/// failure).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stage {
    /// Nothing frozen yet.
    Running,
    /// The final dump started; CRIU resumes the tasks if it fails or is nacked.
    Frozen,
    /// The final dump's failure was answered; the tasks were resumed.
    Resumed,
    /// Post-copy: the destination runs the process (pid there) while its memory still comes
    /// from here, since the instant given.
    Serving(i32, Instant),
    /// The destination runs the process (pid there).
    Moved(i32),
}

/// A migration in progress: connected to the destination, which accepted `Begin`.
pub struct Session {
    /// The settings.
    pub cfg: SourceConfig,
    /// CRIU on this node.
    pub criu: Arc<dyn CriuService>,
    /// The control channel.
    pub ctl: Control<TcpStream>,
    /// Pre-flight's verdict on both nodes, and the CRIU options it set (asked and safe ones).
    pub assessment: Assessment,
    /// The migration's directory on this node.
    pub dir: MigrationDir,
    /// What is measured, as it is measured.
    pub report: MigrationReport,
    /// Where the process is.
    pub stage: Stage,
    /// The strategy in use.
    pub strategy: Strategy,
    /// The tree's resident memory when the migration began (bytes).
    pub memory_bytes: u64,
    /// Memory moves over haul's memory path (lazy dump, haul's engine) rather than CRIU's.
    pub memory_engine: bool,
    /// Stop-and-copy over the memory path: the destination holds the copy until every page
    /// is in.
    pub hold_until_complete: bool,
    /// Pre-copy's throttle, from its first level above zero until the final dump's `pre-dump`
    /// notification or a failure, whichever comes first.
    pub throttle: Option<super::precopy::PreCopyThrottle>,
    /// File sync (`--sync`): see [`super::sync`].
    pub sync: super::sync::FileSync,
    t0: Instant,
}

impl Session {
    /// Connects to the destination, sends `Begin`, and resolves the strategy from both
    /// nodes' features once the destination is `Ready`.
    pub async fn begin(
        cfg: SourceConfig,
        criu: Arc<dyn CriuService>,
        checked: Checked,
        t0: Instant,
    ) -> Result<Session, SourceError> {
        let conn = control::connect(&cfg.destination, &cfg.key, Purpose::Control).await?;
        let mut ctl = Control::new(conn, cfg.destination.clone());
        let mut report = new_report(&cfg, &checked.migration_id);
        report.source_criu = Some(checked.version);
        report.source_img_dir = checked.dir.root().display().to_string();
        report.warnings = checked.warnings.clone();
        let begin = begin_message(&cfg, &checked, false);
        let wait = limits::REPLY.named("the destination's pre-flight checks");
        let ready: pb::Ready = ctl.request(begin, wait).await?;
        let sync = super::sync::FileSync::new(ready.features.is_some_and(|f| f.file_sync));
        let dst_version: CriuVersion = ready.criu_version.unwrap_or_default().into();
        report.destination_criu = Some(dst_version);
        report.destination_img_dir = ready.img_dir.clone();
        let dst_features: Features = ready.features.unwrap_or_default().into();
        let dst_findings = destination_findings(&ready);
        // The estimates need the link's bandwidth where they decide something: `auto`'s
        // strategy, and stop-copy's memory path under `--memory-path auto` (as `--dry-run`
        // measures it, so both name the same path). It costs total time, not downtime.
        let estimates_decide = cfg.strategy == Strategy::Auto
            || (cfg.strategy == Strategy::StopCopy
                && cfg.memory.engine_use() == crate::preflight::EngineUse::Auto);
        let bandwidth = if estimates_decide {
            match probe::bandwidth(&mut ctl, &cfg, &checked.migration_id).await {
                Ok(bw) => Some(bw),
                Err(e) => {
                    warn!("cannot measure the memory channel: {}", chain(&e));
                    None
                }
            }
        } else {
            None
        };
        let (strategy, why, choice) = pick_strategy(
            &cfg,
            &checked.tree,
            checked.features,
            dst_features,
            bandwidth,
        )?;
        let mut assessment = checked.tree.assessment.clone();
        assessment.extend(dst_findings.clone());
        for f in assessment
            .findings
            .iter()
            .filter(|f| f.severity > Severity::Info)
        {
            info!("pre-flight: {f}");
        }
        let memory_engine = choice.over_haul_path(strategy);
        if cfg.memory.forced && strategy == Strategy::StopCopy && !memory_engine {
            let why = if !(checked.features.lazy_pages && dst_features.lazy_pages) {
                "both nodes need lazy pages (userfaultfd) for it"
            } else {
                "the tree has established TCP connections, which a failed lazy dump would leave locked (see CostInputs::tcp_established)"
            };
            warn!(
                "--memory-path haul is not taken for pid {}: {why}; memory moves over CRIU's page-server dump",
                cfg.pid
            );
        }
        if matches!(strategy, Strategy::PostCopy | Strategy::Hybrid)
            && checked.tree.assessment.options.tcp_established
        {
            warn!(
                "pid {}'s tree has established TCP connections and {strategy} dumps lazily: should the migration fail after the freeze, the process resumes here with those connections still locked (CRIU{} unlocks the network only before the lazy part of a dump); --strategy stop-copy keeps them safe",
                cfg.pid,
                report.source_criu.map(|v| format!(" {v}")).unwrap_or_default()
            );
        }
        report.memory_path = if memory_engine { "haul" } else { "criu" }.into();
        report.preflight = Some(PreflightReport::new(&checked.tree, dst_findings, choice));
        report.strategy = strategy.name().into();
        report.strategy_reason = why;
        info!(
            "migrating pid {} ({} MiB resident) to {} with {strategy}; images in {}",
            cfg.pid,
            checked.memory_bytes >> 20,
            cfg.destination,
            checked.dir.root().display()
        );
        Ok(Session {
            cfg,
            criu,
            ctl,
            assessment,
            dir: checked.dir,
            report,
            stage: Stage::Running,
            strategy,
            memory_bytes: checked.memory_bytes,
            memory_engine,
            hold_until_complete: memory_engine && strategy == Strategy::StopCopy,
            throttle: None,
            sync,
            t0,
        })
    }

    /// Pre-copy rounds (where the strategy has them), the final dump, `Finish`; the report
    /// is written into the migration's directory.
    pub async fn run(&mut self) -> Result<(), SourceError> {
        self.sync_before_freeze().await?;
        let parent = match self.strategy {
            Strategy::PreCopy | Strategy::Hybrid => {
                let parent = self.pre_copy().await?;
                self.sync_catch_up().await?;
                parent
            }
            _ => None,
        };
        // Over haul's memory path stop-and-copy is a lazy dump too, whose copy the destination
        // holds until every page is in.
        let lazy = matches!(self.strategy, Strategy::PostCopy | Strategy::Hybrid)
            || self.hold_until_complete;
        self.final_dump(lazy, parent).await?;
        self.sync_account();
        let finish = pb::Finish {
            ok: true,
            reason: String::new(),
        };
        let _: pb::Finished = self
            .ctl
            .request(finish, limits::REPLY.named("the destination's goodbye"))
            .await?;
        self.keep_report();
        Ok(())
    }

    /// Writes the report into the migration's directory (kept for inspection, as the images).
    fn keep_report(&mut self) {
        self.report.total_secs = self.t0.elapsed().as_secs_f64();
        let path = self.dir.root().join("report.json");
        if let Ok(json) = serde_json::to_vec_pretty(&self.report) {
            let _ = std::fs::write(&path, json);
        }
    }

    /// The report of a finished migration.
    pub fn into_report(self) -> MigrationReport {
        self.report
    }

    /// Ends a failed migration: says where the process is, and tells the destination.
    pub async fn fail(mut self, error: SourceError) -> SourceFailure {
        // First thing: the process that stays here runs at full speed in its own cgroups.
        self.release_throttle_after_failure();
        let whereabouts = self.whereabouts();
        self.report.failure = Some(format!("{}; {whereabouts}", chain(&error)));
        self.keep_report();
        let finish = pb::Finish {
            ok: false,
            reason: chain(&error),
        };
        let _ = self.ctl.send(finish).await;
        SourceFailure { error, whereabouts }
    }

    /// Where the process is now.
    pub fn whereabouts(&self) -> Whereabouts {
        let pid = self.cfg.pid;
        match self.stage {
            Stage::Running => Whereabouts::Untouched(pid),
            Stage::Frozen | Stage::Resumed if tree::alive(pid) && tree::state(pid) != Some('T') => {
                Whereabouts::ResumedOnSource(pid)
            }
            Stage::Moved(p) => Whereabouts::OnDestination(p),
            Stage::Serving(p, since) => Whereabouts::LostInPostCopy {
                pid: p,
                window_secs: since.elapsed().as_secs_f64(),
            },
            Stage::Frozen | Stage::Resumed => Whereabouts::Unknown(pid),
        }
    }

    /// A memory channel for `round`, authenticated and bound to this migration.
    pub async fn memory_channel(&self, round: u32, lazy: bool) -> Result<TcpStream, ChannelError> {
        memory_channel(&self.cfg, &self.report.migration_id, round, lazy).await
    }

    /// Asks the destination for a page server for `round` and opens its memory channel;
    /// returns the channel as a blocking fd for CRIU's `ps.fd`.
    pub async fn start_round(&mut self, round: u32) -> Result<OwnedFd, SourceError> {
        self.ctl.send(pb::StartPageServer { round }).await?;
        let mem = self.memory_channel(round, false).await?;
        let _: pb::PageServerStarted = self
            .ctl
            .expect(limits::REPLY.named("the destination's page server"))
            .await?;
        // Out of tokio, blocking: CRIU reads and writes it directly; haul only reads TCP_INFO.
        let fd: OwnedFd = mem
            .into_std()
            .map_err(|e| {
                PathError::new(
                    "cannot take over the memory channel of round",
                    round.to_string(),
                    e,
                )
            })?
            .into();
        crate::criu::worker::set_blocking(fd.as_raw_fd())?;
        Ok(fd)
    }

    /// Ends `round` on the destination; returns the bytes its page server wrote.
    pub async fn end_round(&mut self, round: u32) -> Result<u64, SourceError> {
        let wait = limits::REPLY.named("the destination's page server to finish");
        let ended: pb::PageServerEnded =
            self.ctl.request(pb::EndPageServer { round }, wait).await?;
        if round > 0 {
            // The round's pagemaps, for a lazy final dump (hybrid): without them CRIU marks
            // every page lazy and the rounds' pages cross the link twice (see memory::parents).
            let dir = self.dir.round(round)?;
            crate::memory::parents::install(dir.path(), &ended.pagemaps)
                .map_err(|detail| SourceError::BadPagemaps { round, detail })?;
        }
        Ok(ended.bytes)
    }

    /// The destination's two-phase restore: `RestoreHeld` (restored, not running), then haul
    /// says `Resume`, then `Restored` (running there). Only after `Restored` does the source
    /// acknowledge post-dump: a lost `Resume` leaves one copy (here, resumed), a lost
    /// `Restored` is the one window where both could run.
    pub async fn restore(&mut self, lazy: bool) -> Result<pb::Restored, SourceError> {
        self.send_restore(lazy).await?;
        self.recv_restored().await
    }

    /// Sends `Restore` with what the tree needs.
    pub async fn send_restore(&mut self, lazy: bool) -> Result<(), SourceError> {
        let t = &self.assessment.options;
        let restore = pb::Restore {
            lazy,
            tcp_established: t.tcp_established,
            shell_job: t.shell_job,
            file_locks: t.file_locks,
            ext_unix_sk: t.ext_unix_sk,
            ..Default::default()
        };
        Ok(self.ctl.send(restore).await?)
    }

    /// Waits for `RestoreHeld`, says `Resume`, waits for `Restored`.
    pub async fn recv_restored(&mut self) -> Result<pb::Restored, SourceError> {
        let held = Wait {
            what: "the destination's restore",
            limit: limits::REPLY.limit,
        };
        let _: pb::RestoreHeld = self.ctl.expect(held).await?;
        let wait = limits::REPLY.named("the destination to resume the process");
        Ok(self.ctl.request(pb::Resume {}, wait).await?)
    }

    /// Records the restore: downtime on this node's clock from `t_freeze`, the
    /// destination's pid and CRIU's restore figures.
    pub fn record_restore(&mut self, r: &pb::Restored, t_freeze: Instant) {
        self.report.downtime_secs = t_freeze.elapsed().as_secs_f64();
        self.report.destination_pid = r.pid;
        self.report.restore_wall_secs = r.restore_wall_secs;
        if let Some(s) = r.stats {
            self.report.restore = s.into();
            self.report.restore_secs = f64::from(s.restore_time_us) / 1e6;
        }
        info!(
            "process runs on the destination as pid {} after {:.3}s frozen",
            r.pid, self.report.downtime_secs
        );
    }
}

/// The report of a migration that begins now.
fn new_report(cfg: &SourceConfig, migration_id: &str) -> MigrationReport {
    MigrationReport {
        migration_id: migration_id.to_string(),
        pid: cfg.pid,
        destination: cfg.destination.clone(),
        strategy_requested: cfg.strategy.name().into(),
        started_at_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        ..Default::default()
    }
}

/// A memory channel for `round` of migration `migration_id`, authenticated and bound to it.
pub async fn memory_channel(
    cfg: &SourceConfig,
    migration_id: &str,
    round: u32,
    lazy: bool,
) -> Result<TcpStream, ChannelError> {
    let purpose = Purpose::Memory(pb::MemoryPurpose {
        migration_id: migration_id.to_string(),
        round,
        lazy,
    });
    let conn = control::connect(&cfg.destination, &cfg.key, purpose).await?;
    Ok(conn.into_inner())
}

/// The `Begin` of a migration (or a dry run): what the destination must check.
pub fn begin_message(cfg: &SourceConfig, checked: &Checked, dry_run: bool) -> pb::Begin {
    pb::Begin {
        migration_id: checked.migration_id.clone(),
        criu_version: Some(checked.version.into()),
        strategy: cfg.strategy.name().into(),
        memory_bytes: checked.memory_bytes,
        cpuinfo: checked.cpuinfo.clone(),
        // --ignore-preflight: the destination checks nothing of the tree either.
        requirements_json: if cfg.ignore_preflight {
            String::new()
        } else {
            // files under the --sync trees travel with the process: not the destination's to have
            let roots: Vec<std::path::PathBuf> = cfg
                .sync
                .paths
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                .collect();
            let req = checked.tree.requirements.without_synced(&roots);
            serde_json::to_string(&req).unwrap_or_default()
        },
        dry_run,
    }
}

/// The destination's findings that did not refuse (sent in `Ready`).
pub fn destination_findings(ready: &pb::Ready) -> Vec<Finding> {
    serde_json::from_str(&ready.findings_json).unwrap_or_default()
}

/// Which strategy runs: `auto` by estimated cost ([`choose_strategy`]), any other as asked,
/// when both nodes can run it. Also returns the cost model's choice with every estimate,
/// for the report.
pub fn pick_strategy(
    cfg: &SourceConfig,
    tree: &SourcePreflight,
    source: Features,
    destination: Features,
    bandwidth: Option<f64>,
) -> Result<(Strategy, String, Choice), SourceError> {
    let inputs = tree.cost_inputs(
        source,
        destination,
        bandwidth,
        cfg.convergence.max_downtime_secs,
        cfg.memory.engine_use(),
    );
    let choice = choose_strategy(&CostModel::default(), &inputs);
    let (strategy, why) = match cfg.strategy {
        Strategy::Auto => (choice.strategy, choice.reason.clone()),
        asked => (asked, "asked for on the command line".to_string()),
    };
    if let Some(missing) = strategy.missing(source, destination) {
        return Err(SourceError::StrategyUnavailable {
            strategy: strategy.name(),
            why: missing,
        });
    }
    Ok((strategy, why, choice))
}
