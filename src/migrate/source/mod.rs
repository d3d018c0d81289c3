//! `haul pid`: the source.
//!
//! The process is never lost: the final dump's `post-dump` notification (tasks frozen, not
//! yet killed) is held until the destination says the process runs there; only then is it
//! acknowledged and CRIU kills the source tasks. Every failure before that answers
//! `post-dump` with a failure, and CRIU resumes the tasks where they were.
//!
//! - [`preflight`]: what is checked on this node before anything else (pid, CRIU, CPU, and
//!   the tree itself: [`crate::preflight`]);
//! - [`probe`]: the memory channel's measured bandwidth, for `auto`'s estimates;
//! - [`dry_run`]: `--dry-run`: both nodes' checks and the estimates, nothing frozen;
//! - [`session`]: one migration with the destination, from `Begin` to `Finish`, and the
//!   [`Stage`] that says where the process is at each point;
//! - [`precopy`]: pre-dump rounds while the process runs;
//! - [`final_dump`]: the freeze, the hand-over while frozen, and the answer to `post-dump`;
//! - [`postcopy`]: serving the pages after the process runs on the destination through
//!   CRIU's lazy page server;
//! - [`memory_path`]: the same, and stop-and-copy, through haul's own memory path;
//! - [`sync`]: `--sync` trees copied before the freeze and once more while frozen;
//! - [`progress`]: the progress bar of the final dump;
//! - [`error`]: what can fail, and [`Whereabouts`].
//!
//! ```text
//! Preflight ──Begin/Ready──▶ Session ──rounds──▶ final dump: Frozen ──Restored──▶ Moved
//!                                                      │          └─post-copy─▶ Serving ─▶ Moved
//!                                                      └─ any failure: post-dump nacked ─▶ Resumed
//! ```

pub mod dry_run;
pub mod error;
pub mod final_dump;
pub mod memory_path;
pub mod postcopy;
pub mod precopy;
pub mod preflight;
pub mod probe;
pub mod progress;
pub mod session;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::criu::options::{PreDumpMode, TreeOptions};
use crate::criu::service::CriuService;
use crate::criu::Criu;
use crate::wire::Key;

use super::converge::{Convergence, ThrottleSetting};
use super::report::MigrationReport;
use super::strategy::Strategy;

pub use error::{SourceError, SourceFailure, Whereabouts};
pub use session::Stage;

/// The source's settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The root of the tree to migrate.
    pub pid: i32,
    /// The destination's `haul serve` address (`HOST:PORT`).
    pub destination: String,
    /// The shared key.
    pub key: Key,
    /// Where this node keeps the images and logs.
    pub img_path: PathBuf,
    /// The strategy asked for.
    pub strategy: Strategy,
    /// What the tree needs from CRIU, as the user asked (pre-flight adds the safe options the
    /// tree needs).
    pub tree: TreeOptions,
    /// `--ghost-limit` (bytes): deleted files up to this size travel in the images.
    pub ghost_limit: Option<u64>,
    /// `--dry-run`: check both nodes, estimate, freeze nothing.
    pub dry_run: bool,
    /// `--ignore-preflight`: go on although pre-flight refused (CRIU then fails, diagnosed).
    pub ignore_preflight: bool,
    /// Pre-copy: when the rounds stop (rounds, dirty-set rules, downtime target, on-timeout).
    pub convergence: Convergence,
    /// Pre-copy: whether, and how far, the rounds may slow the tree toward the downtime
    /// target (`--throttle`; only with `convergence.max_downtime_secs`).
    pub throttle: ThrottleSetting,
    /// Pre-copy: how the pre-dumps copy memory (`--pre-dump-mode`); `None`: splice
    /// ([`PreDumpMode`] says why).
    pub pre_dump_mode: Option<PreDumpMode>,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
    /// How memory moves after a lazy dump: haul's engine, or CRIU's page server and
    /// lazy-pages daemon (`--memory-path`).
    pub memory: crate::memory::MemoryPath,
    /// File sync (`--sync`): the trees that travel with the process; none: shared storage.
    pub sync: sync::SyncOptions,
}

/// Migrates `cfg.pid` to `cfg.destination` with this node's CRIU. On failure, says where the
/// process is. First undoes what a killed haul's throttle left on this node.
pub async fn migrate(cfg: SourceConfig) -> Result<MigrationReport, SourceFailure> {
    let pid = cfg.pid;
    precopy::sweep_stale_throttles();
    match Criu::locate() {
        Ok(criu) => migrate_with(cfg, Arc::new(criu)).await,
        Err(e) => Err(SourceFailure {
            error: e.into(),
            whereabouts: Whereabouts::Untouched(pid),
        }),
    }
}

/// [`migrate`] with `criu` standing in for CRIU (the scripted one in root-free tests).
pub async fn migrate_with(
    cfg: SourceConfig,
    criu: Arc<dyn CriuService>,
) -> Result<MigrationReport, SourceFailure> {
    let t0 = Instant::now();
    let pid = cfg.pid;
    let untouched = |error| SourceFailure {
        error,
        whereabouts: Whereabouts::Untouched(pid),
    };
    let checked = preflight::check(&cfg, criu.as_ref())
        .await
        .map_err(untouched)?;
    if cfg.dry_run {
        return dry_run::run(cfg, checked, t0).await.map_err(untouched);
    }
    let mut session = session::Session::begin(cfg, criu, checked, t0)
        .await
        .map_err(untouched)?;
    match session.run().await {
        Ok(()) => Ok(session.into_report()),
        Err(error) => Err(session.fail(error).await),
    }
}
