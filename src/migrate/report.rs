//! The migration report: JSON for tools (`--report FILE`), P.Haul's summary for people.

use serde::{Deserialize, Serialize};

use crate::criu::options::PreDumpMode;
use crate::criu::{CriuVersion, DumpStats, RestoreStats};
use crate::throttle::ThrottleReport;

use super::converge::ThrottleLevel;

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
    /// Estimated downtime if the final dump came next (s): its memory part plus its frozen
    /// non-memory part (`converge::estimate`), what the stop rule holds against
    /// `--max-downtime`. Reports written before the frozen part was counted hold the memory
    /// part alone here (and neither field below).
    pub est_downtime_secs: f64,
    /// The memory part: what is dirty now (by the dirty rate, at the level of the next round)
    /// over the link's bandwidth (s).
    #[serde(default)]
    pub est_memory_secs: Option<f64>,
    /// The final dump's fixed (non-memory) part, estimated: the median of the rounds' wall
    /// time besides writing pages so far (`converge::estimate`; reports before 2026-11-30's
    /// runs-T3b: the median of the rounds' CRIU frozen time less memdump, a lower bound).
    #[serde(default)]
    pub est_frozen_secs: Option<f64>,
    /// The rate CRIU wrote this round's pages at: pages over its `memwrite_time` (bytes/s).
    #[serde(default)]
    pub write_rate: Option<f64>,
    /// The round's wall time besides writing its pages: `secs - memwrite_time` (s).
    #[serde(default)]
    pub rest_secs: Option<f64>,
    /// The page rate the final dump's memory part is estimated at (bytes/s): the slowest
    /// write rate of the rounds so far that wrote at least 4 MiB (before runs-T3b: the best
    /// round's bandwidth).
    #[serde(default)]
    pub link_bandwidth: f64,
    /// The round's fixed part: its time the bytes do not explain (s).
    #[serde(default)]
    pub fixed_secs: f64,
    /// The throttle level in force while the round ran (0: none).
    #[serde(default)]
    pub throttle: ThrottleLevel,
    /// The rate the tree dirtied memory at before this round's freeze (bytes/s): the round's
    /// pages over the time since the previous round started; `None` for round 1.
    #[serde(default)]
    pub dirty_rate: Option<f64>,
    /// The throttle level in force while that dirtying happened.
    #[serde(default)]
    pub dirty_rate_throttle: Option<ThrottleLevel>,
    /// Time CRIU kept the tree frozen in this round (s, CRIU's `frozen_time`).
    #[serde(default)]
    pub frozen_secs: f64,
    /// How the pre-dump copied memory.
    #[serde(default)]
    pub pre_dump_mode: Option<PreDumpMode>,
    /// What the stop rule decided after the round, and why.
    #[serde(default)]
    pub verdict: String,
}

/// Where the final dump's downtime went: from haul's request to CRIU (where `downtime_secs`
/// starts) to the destination's answer that the process runs, in order (s, on the source's
/// clock). What the stop rule's fixed-part estimate (`converge::estimate`) aims at is their sum
/// less CRIU's memdump and restore times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalDumpParts {
    /// Until CRIU's `pre-dump` notification, when a throttle was released there (CRIU
    /// starting; the tree is not frozen yet); `None` without a throttle.
    pub until_pre_dump_secs: Option<f64>,
    /// Until CRIU's `post-dump` notification: the tree dumped, memory included (from the
    /// request, or from the `pre-dump` notification when there was one).
    pub dump_secs: f64,
    /// Haul's hand-off after `post-dump`: the page server's end, the final sync, the images
    /// sent, until the restore is requested.
    pub handoff_secs: f64,
    /// The restore request until the destination's answer (its restore wall time plus the
    /// round trip).
    pub restore_call_secs: f64,
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
    /// Where the final dump's downtime went, on the source's clock (`None` in reports before
    /// results/vm/throttle-2026-11-30/runs-T3b; with a lazy final dump only the parts up to
    /// `post-dump`, the others 0).
    #[serde(default)]
    pub final_parts: Option<FinalDumpParts>,
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
    /// When the rounds stopped without meeting `--max-downtime` (post-copy for the rest, or
    /// the final dump anyway): why.
    #[serde(default)]
    pub fallback: Option<String>,
    /// `--throttle` as given (`off`, `auto`, `60%`).
    #[serde(default)]
    pub throttle_setting: String,
    /// The throttle, if pre-copy engaged one: mechanism, haul's cgroup, baseline CPU use,
    /// levels, CPU limit, and its release (always before the final dump).
    #[serde(default)]
    pub throttle: Option<ThrottleReport>,
    /// Why the throttle was, or was not, engaged.
    #[serde(default)]
    pub throttle_note: String,
    /// How the pre-dumps copied memory (pre-copy, hybrid).
    #[serde(default)]
    pub pre_dump_mode: Option<PreDumpMode>,
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
    /// How memory moved: `haul` (haul's memory path) or `criu` (CRIU's page server and
    /// lazy-pages daemon).
    #[serde(default)]
    pub memory_path: String,
    /// A failed migration's report (kept in the image directory): what failed and where the
    /// process is.
    #[serde(default)]
    pub failure: Option<String>,
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
        if let Some(line) = self.throttle_line() {
            s.push_str(&line);
            s.push('\n');
        }
        if let Some(f) = &self.fallback {
            s.push_str(&format!("pre-copy missed its downtime target: {f}\n"));
        }
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

    /// The summary's line about pre-copy's rounds and the throttle (`None` without rounds).
    pub fn throttle_line(&self) -> Option<String> {
        if self.rounds.is_empty() {
            return None;
        }
        let mode = self
            .pre_dump_mode
            .map(|m| format!(" ({m} pre-dumps)"))
            .unwrap_or_default();
        let throttle = match &self.throttle {
            Some(t) => {
                let released = match &t.release {
                    Some(r) => format!("released before the final dump in {:.2} s", r.secs),
                    None => "NOT released (see the warnings)".into(),
                };
                format!("up to {} ({}), {released}", t.max_level, t.mechanism)
            }
            None => format!("never engaged: {}", self.throttle_note),
        };
        Some(format!(
            "pre-copy {} rounds{mode}; throttle {}: {throttle}",
            self.rounds.len(),
            self.throttle_setting
        ))
    }
}
