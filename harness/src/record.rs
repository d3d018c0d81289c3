//! Results: one JSON object per migration, one line each, in one file per run of a scenario
//! (`results/runs/<scenario>-<UTC time>-<git rev>.jsonl`), never overwritten.
//!
//! Each line is self-contained: every parameter of the workload, the method (haul with a
//! strategy, or plain CRIU), every figure of haul's migration report (the whole report is
//! kept under `haul_report`), what the workload itself saw (its largest pause between two
//! touches, its page check), the ratios to the plain-CRIU baseline of the same repetition, and
//! where it ran: git revision, CRIU versions, kernels, provider.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::WorkloadCase;
use haul::criu::stats::{DumpStats, RestoreStats};

/// The version of this record layout.
pub const SCHEMA: u32 = 1;

/// Results that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("{path}:{line}: not a result record: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The line number (1-based).
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
}

/// How the workload was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `haul pid --strategy S`.
    Haul,
    /// Plain CRIU: `criu dump --page-server`, copy the other images, `criu restore -d`.
    Criu,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Migrated, running on the destination, and its self-check passed.
    Ok,
    /// Something failed (see `error`).
    Failed,
    /// The strategy cannot run on these nodes (`haul check` says why); nothing was run.
    Unsupported,
}

/// One node as the run found it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node (role, host, address).
    pub node: String,
    /// `uname -r`.
    pub kernel: String,
    /// `criu --version`'s version.
    pub criu_version: String,
    /// `haul --version`.
    pub haul_version: String,
    /// Strategies `haul check` says this node cannot run, with why.
    pub unavailable: BTreeMap<String, String>,
}

/// Where and with what a run happened (the same on every line of a run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// `git rev-parse HEAD` of the source tree (or `unknown`).
    pub git_rev: String,
    /// Whether the tree had uncommitted changes.
    pub git_dirty: bool,
    /// The harness's version.
    pub harness_version: String,
    /// `local`, `ssh` or `vagrant`.
    pub provider: String,
    /// The provider's nodes in a line.
    pub provider_detail: String,
    /// The machine the harness ran on (`uname -n`, cores).
    pub harness_host: String,
    /// The source node.
    pub source: NodeInfo,
    /// The destination node.
    pub destination: NodeInfo,
}

/// The workload's parameters, flattened for tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadParams {
    /// The case as the scenario expanded it.
    #[serde(flatten)]
    pub case: WorkloadCase,
    /// `SIZE:PRE:PAUSE`.
    pub spec: String,
    /// A short label for reports.
    pub label: String,
    /// Dirty rate in bytes per second (absent for `max`).
    pub dirty_rate_bytes_per_sec: Option<f64>,
}

impl From<&WorkloadCase> for WorkloadParams {
    fn from(c: &WorkloadCase) -> Self {
        WorkloadParams {
            spec: c.spec(),
            label: c.label(),
            dirty_rate_bytes_per_sec: c.dirty_rate(),
            case: c.clone(),
        }
    }
}

/// One pre-copy round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// Its number (1, 2, ...).
    pub round: u32,
    /// Pages CRIU wrote in it.
    pub pages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// Its wall time (s).
    pub secs: f64,
}

/// The figures of one migration, the same names for haul and plain CRIU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Whole migration, wall clock (s). Plain CRIU: dump + copy + restore.
    pub total_secs: Option<f64>,
    /// CRIU's frozen time of the dumps (s), P.Haul's "frozen time".
    pub frozen_secs: Option<f64>,
    /// CRIU's restore time (s), P.Haul's "restore time".
    pub restore_secs: Option<f64>,
    /// From the final freeze until the process runs on the destination (s). Plain CRIU:
    /// dump + copy + restore, the tree being frozen or gone throughout.
    pub downtime_secs: Option<f64>,
    /// The largest pause between two touches in the workload's own log (s): the downtime
    /// the workload saw.
    pub observed_downtime_secs: Option<f64>,
    /// Post-copy: how long the source served pages after the process ran on the destination.
    pub postcopy_window_secs: Option<f64>,
    /// Pages written by all dumps.
    pub pages_sent: Option<u64>,
    /// Bytes sent over memory channels.
    pub memory_bytes_sent: Option<u64>,
    /// Bytes of other images.
    pub image_bytes_sent: Option<u64>,
    /// The strategy used (auto resolves to one).
    pub strategy_used: Option<String>,
    /// Pre-dump rounds.
    pub rounds: Vec<Round>,
    /// File sync (`--sync`): file content bytes of every round.
    #[serde(default)]
    pub sync_bytes: Option<u64>,
    /// File sync: seconds of the final round, while the process was frozen.
    #[serde(default)]
    pub sync_final_secs: Option<f64>,
    /// File sync: the final round's share of haul's downtime (0..1).
    #[serde(default)]
    pub sync_final_share: Option<f64>,
    /// File sync: every round.
    #[serde(default)]
    pub sync_rounds: Vec<SyncRound>,
}

/// One file-sync round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRound {
    /// Its number (1, 2, ...).
    pub round: u32,
    /// The round while the process was frozen.
    pub final_round: bool,
    /// File content bytes sent (literal and delta).
    pub bytes: u64,
    /// Files sent.
    pub files: u64,
    /// From its start to the destination's answer (s).
    pub secs: f64,
}

impl Figures {
    /// A figure by name (the keys of [`FIGURES`]); `None` when absent.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "total_secs" => self.total_secs,
            "frozen_secs" => self.frozen_secs,
            "restore_secs" => self.restore_secs,
            "downtime_secs" => self.downtime_secs,
            "observed_downtime_secs" => self.observed_downtime_secs,
            "postcopy_window_secs" => self.postcopy_window_secs,
            "pages_sent" => self.pages_sent.map(|p| p as f64),
            "memory_bytes_sent" => self.memory_bytes_sent.map(|p| p as f64),
            "sync_bytes" => self.sync_bytes.map(|p| p as f64),
            "sync_final_secs" => self.sync_final_secs,
            "sync_final_share" => self.sync_final_share,
            _ => None,
        }
    }
}

/// The figures reports and comparisons look at: key, title, unit.
pub const FIGURES: [(&str, &str, &str); 8] = [
    ("total_secs", "total", "s"),
    ("frozen_secs", "frozen", "s"),
    ("restore_secs", "restore", "s"),
    ("downtime_secs", "downtime", "s"),
    ("observed_downtime_secs", "observed downtime", "s"),
    ("postcopy_window_secs", "post-copy window", "s"),
    ("pages_sent", "pages sent", "pages"),
    ("sync_final_secs", "final file sync (frozen)", "s"),
];

/// What the check on the destination found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The workload ran on the destination after the migration (its pid there).
    pub destination_pid: Option<i32>,
    /// It still ran on the source afterwards (expected only after a failure).
    pub left_on_source: bool,
    /// Its log reached `Finish`.
    pub finished: bool,
    /// `Mismatch` lines (pages that differ from the workload's shadow copy).
    pub mismatches: u64,
    /// Pages touched in the whole run.
    pub touches: u64,
    /// Touches logged after the migration, before the check.
    pub touches_after: u64,
    /// Finished with no mismatch.
    pub passed: bool,
}

/// Plain CRIU's own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CriuDetail {
    /// `criu dump` wall time on the source (s).
    pub dump_secs: f64,
    /// Copying the non-page images to the destination's directory (s).
    pub copy_secs: f64,
    /// `criu restore -d` wall time on the destination (s).
    pub restore_wall_secs: f64,
    /// `stats-dump`.
    pub dump: Option<DumpStats>,
    /// `stats-restore`.
    pub restore: Option<RestoreStats>,
}

/// One migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The results set (the file's stem).
    pub set: String,
    /// The scenario's name.
    pub scenario: String,
    /// Position in the run (0, 1, ...).
    pub seq: u32,
    /// When it started (UTC, RFC 3339).
    pub started_at: String,
    /// Repetition (1-based).
    pub rep: u32,
    /// haul or plain CRIU.
    pub method: Method,
    /// The strategy asked for (`criu` for the baseline).
    pub strategy: String,
    /// The workload.
    pub workload: WorkloadParams,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed or is unsupported.
    pub error: Option<String>,
    /// The figures.
    pub figures: Figures,
    /// The check on the destination.
    pub check: Check,
    /// This figure / the plain-CRIU baseline's, same workload and repetition.
    pub ratio_to_criu: BTreeMap<String, f64>,
    /// haul's whole JSON report.
    pub haul_report: Option<serde_json::Value>,
    /// Plain CRIU's details.
    pub criu: Option<CriuDetail>,
    /// Where it ran.
    pub env: Environment,
}

impl Record {
    /// The series a record belongs to in reports: the strategy, or `plain CRIU`.
    pub fn series(&self) -> String {
        match self.method {
            Method::Criu => "plain CRIU".into(),
            Method::Haul => self.strategy.clone(),
        }
    }
}

/// Appends records to a new file, one line each, flushed after every line.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: File,
}

impl Writer {
    /// Create `<dir>/<stem>.jsonl`, or `<stem>-2.jsonl`, ... if taken: never overwrites.
    pub fn create(dir: &Path, stem: &str) -> Result<Writer, RecordError> {
        let io = |path: &Path, source| RecordError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for n in 1.. {
            let name = if n == 1 {
                format!("{stem}.jsonl")
            } else {
                format!("{stem}-{n}.jsonl")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Writer { path, file }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path, e)),
            }
        }
        unreachable!("the loop returns")
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record.
    pub fn write(&mut self, r: &Record) -> Result<(), RecordError> {
        let mut line = serde_json::to_vec(r).map_err(|e| RecordError::Io {
            path: self.path.display().to_string(),
            source: e.into(),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(|source| RecordError::Io {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// Read every record of a JSONL file (blank lines skipped).
pub fn read(path: &Path) -> Result<Vec<Record>, RecordError> {
    let f = File::open(path).map_err(|source| RecordError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|source| RecordError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|source| RecordError::Parse {
                path: path.display().to_string(),
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(out)
}

/// Read several files' records, in order.
pub fn read_all(paths: &[PathBuf]) -> Result<Vec<Record>, RecordError> {
    let mut v = Vec::new();
    for p in paths {
        v.extend(read(p)?);
    }
    Ok(v)
}

/// UTC time of `unix` seconds as RFC 3339 (`2026-11-25T20:31:07Z`); `compact` gives
/// `20261125T203107Z` for file names.
pub fn utc(unix: u64, compact: bool) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (hh, mm, ss) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if compact {
        format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(seq: u32) -> Record {
        Record {
            schema: SCHEMA,
            set: "t".into(),
            scenario: "t".into(),
            seq,
            started_at: utc(0, false),
            rep: 1,
            method: Method::Haul,
            strategy: "post-copy".into(),
            workload: (&WorkloadCase {
                name: "w".into(),
                program: "mtouch".into(),
                size_bytes: 16 << 20,
                pre_bytes: 16 << 20,
                pause_us: 1000,
                rate: None,
                pattern: "random".into(),
                args: vec![],
                sync: false,
            })
                .into(),
            outcome: Outcome::Ok,
            error: None,
            figures: Figures {
                total_secs: Some(1.5),
                pages_sent: Some(4096),
                ..Default::default()
            },
            check: Check::default(),
            ratio_to_criu: BTreeMap::new(),
            haul_report: Some(serde_json::json!({"total_secs": 1.5})),
            criu: None,
            env: Environment::default(),
        }
    }

    #[test]
    fn never_overwrites_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w1 = Writer::create(dir.path(), "x").unwrap();
        w1.write(&sample(0)).unwrap();
        w1.write(&sample(1)).unwrap();
        let w2 = Writer::create(dir.path(), "x").unwrap();
        assert_eq!(w2.path().file_name().unwrap(), "x-2.jsonl");
        let back = read(w1.path()).unwrap();
        assert_eq!(back, vec![sample(0), sample(1)]);
        assert_eq!(back[0].figures.get("pages_sent"), Some(4096.0));
        assert_eq!(back[0].workload.spec, "16m:16m:1000");
        // flattened parameters are plain keys of the line
        let line = std::fs::read_to_string(w1.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(v["workload"]["size_bytes"], 16 << 20);
        assert_eq!(v["method"], "haul");
        std::fs::write(dir.path().join("bad.jsonl"), "{}\n").unwrap();
        let e = read(&dir.path().join("bad.jsonl")).unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_552_267, true), "20261124T203107Z");
    }
}
