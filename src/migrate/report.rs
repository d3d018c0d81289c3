//! The migration report: JSON for tools (`--report FILE`), P.Haul's summary for people.

use serde::{Deserialize, Serialize};

use crate::criu::{CriuVersion, DumpStats, RestoreStats};

/// One pre-dump round (pre-copy, hybrid).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundReport {
    /// Round number (1, 2, ...).
    pub round: u32,
    /// CRIU's stats for the round.
    pub stats: DumpStats,
    /// Bytes sent over the round's memory channel.
    pub bytes: u64,
    /// Wall time of the round.
    pub secs: f64,
    /// Measured bandwidth (bytes/s).
    pub bandwidth: f64,
    /// Estimated downtime if the final dump came next (s).
    pub est_downtime_secs: f64,
}

/// Everything measured in one migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The migration id (the image directories' name on both nodes).
    pub migration_id: String,
    /// The migrated pid on the source.
    pub pid: i32,
    /// The tree's pid on the destination.
    pub destination_pid: i32,
    /// The destination address.
    pub destination: String,
    /// The strategy asked for.
    pub strategy_requested: String,
    /// The strategy used.
    pub strategy: String,
    /// Why that strategy.
    pub strategy_reason: String,
    /// CRIU on the source.
    pub source_criu: Option<CriuVersion>,
    /// CRIU on the destination.
    pub destination_criu: Option<CriuVersion>,
    /// Wall clock of the whole migration (s), as P.Haul's "total time".
    pub total_secs: f64,
    /// Sum of CRIU's frozen_time over every dump (s), as P.Haul's "frozen time". For a final
    /// dump held at post-dump it includes image transfer and the remote restore.
    pub frozen_secs: f64,
    /// CRIU's restore_time on the destination (s), as P.Haul's "restore time".
    pub restore_secs: f64,
    /// Client-visible downtime, on the source's clock: from the final freeze until the
    /// destination said the process runs (s).
    pub downtime_secs: f64,
    /// The destination's wall time for the restore request (s).
    pub restore_wall_secs: f64,
    /// Post-copy: from "running on the destination" until the last page left the source (s).
    /// While it lasts, losing the source loses the process.
    pub postcopy_window_secs: Option<f64>,
    /// CRIU's stats of the final dump.
    pub dump: DumpStats,
    /// CRIU's stats of the restore.
    pub restore: RestoreStats,
    /// Pre-dump rounds.
    pub rounds: Vec<RoundReport>,
    /// Why the pre-dump rounds stopped (pre-copy, hybrid).
    pub convergence: String,
    /// Pages written by all dumps (rounds and final).
    pub pages_sent: u64,
    /// Bytes sent over memory channels.
    pub memory_bytes_sent: u64,
    /// Bytes of image files sent over the control channel.
    pub image_bytes_sent: u64,
    /// The image directory on the source.
    pub source_img_dir: String,
    /// The image directory on the destination.
    pub destination_img_dir: String,
    /// Warnings (e.g. transparent huge pages).
    pub warnings: Vec<String>,
    /// Unix time the migration started.
    pub started_at_unix: f64,
    /// File sync (`--sync`): rounds, bytes, files, the frozen final round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<crate::sync::stats::SyncReport>,
    /// A dry run (`--dry-run`): nothing was frozen; `preflight` says what would happen.
    #[serde(default)]
    pub dry_run: bool,
    /// Pre-flight on both nodes: findings, the options it turned on, every strategy's
    /// estimate and `auto`'s choice.
    #[serde(default)]
    pub preflight: Option<crate::preflight::PreflightReport>,
}

impl MigrationReport {
    /// The summary `haul pid` prints, in P.Haul's words.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Migration succeeded\ntotal time is ~{:.2} sec\nfrozen time is ~{:.2} sec\nrestore time is ~{:.2} sec\n",
            self.total_secs, self.frozen_secs, self.restore_secs
        );
        s.push_str(&format!(
            "downtime is ~{:.2} sec (freeze until running on the destination, on the source's clock)\n",
            self.downtime_secs
        ));
        s.push_str(&format!(
            "strategy {} ({}); pages {}; destination pid {}\n",
            self.strategy, self.strategy_reason, self.pages_sent, self.destination_pid
        ));
        if let Some(w) = self.postcopy_window_secs {
            s.push_str(&format!(
                "post-copy window {w:.2} sec (the source served the remaining pages; losing it then would lose the process)\n"
            ));
        }
        if let Some(sync) = &self.sync {
            s.push_str(&sync.summary());
        }
        s
    }
}
