//! Results: one JSON object per migration, one line each, in one file per run of a scenario
//! (`results/runs/<scenario>-<UTC time>-<git rev>.jsonl`), never overwritten.
//!
//! Each line is self-contained: every parameter of the workload, the method (`haul
//! stop-copy`, or a plain-CRIU twin such as `criu post-copy`), every figure of haul's
//! migration report (the whole report is kept under `haul_report`), what the workload itself
//! saw (its largest pause between two touches, its page check), the bytes that crossed the
//! link, the link floor (resident memory / the bandwidth measured in the same run), the
//! ratios to the method's plain-CRIU twin of the same repetition, and where it ran: git
//! revision, CRIU versions, kernels, provider.
//!
//! A leaf of the harness (it uses only [`crate::case`]): local runs, VM runs and the
//! whole-migration benchmark all write this one format. Schema 1 files (before the twins)
//! still read: their `haul` records become `haul <strategy>`, their `criu` records
//! `criu stop-copy`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::case::WorkloadCase;
use haul::criu::stats::{DumpStats, RestoreStats};

/// The version of this record layout.
pub const SCHEMA: u32 = 2;

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

/// Which tool moved the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// `haul pid --strategy S`.
    Haul,
    /// Plain CRIU, driven step by step by the harness (a twin of a haul strategy).
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
    /// What `auto` resolves to on this node (`haul check`).
    #[serde(default)]
    pub auto: Option<String>,
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
    /// TCP bandwidth from the source to the destination over the migration link, measured
    /// at the start of the run (bytes/s); the link floor of every record is computed from it.
    #[serde(default)]
    pub link_bytes_per_sec: Option<f64>,
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
    /// Bytes that crossed the link during the migration, both ways (the source's interface
    /// counters, so haul and plain CRIU are counted alike, shared-storage traffic included
    /// where the shared directory is on the link).
    #[serde(default)]
    pub wire_bytes: Option<u64>,
    /// The workload's resident memory just before the migration (bytes, `VmRSS`).
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    /// The link floor: resident memory / the run's measured link bandwidth (s), the time
    /// just to move the memory once.
    #[serde(default)]
    pub floor_secs: Option<f64>,
    /// `haul pid --dry-run`'s estimated downtime (s) for the strategy that then ran, taken
    /// just before the migration (scenarios with `dry_run_first`).
    #[serde(default)]
    pub estimated_downtime_secs: Option<f64>,
    /// The same dry run's estimated total time (s).
    #[serde(default)]
    pub estimated_total_secs: Option<f64>,
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
            "wire_bytes" => self.wire_bytes.map(|p| p as f64),
            "floor_secs" => self.floor_secs,
            "estimated_downtime_secs" => self.estimated_downtime_secs,
            "estimated_total_secs" => self.estimated_total_secs,
            _ => None,
        }
    }
}

/// The figures reports and comparisons look at: key, title, unit.
pub const FIGURES: [(&str, &str, &str); 9] = [
    ("total_secs", "total", "s"),
    ("frozen_secs", "frozen", "s"),
    ("restore_secs", "restore", "s"),
    ("downtime_secs", "downtime", "s"),
    ("observed_downtime_secs", "observed downtime", "s"),
    ("postcopy_window_secs", "post-copy window", "s"),
    ("pages_sent", "pages sent", "pages"),
    ("sync_final_secs", "final file sync (frozen)", "s"),
    ("wire_bytes", "bytes on the wire", "bytes"),
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
    /// Pre-dumps before the final dump (the pre-copy twin), each with CRIU's stats.
    #[serde(default)]
    pub pre_dumps: Vec<DumpStats>,
    /// Post-copy twin: from the dump's start until the source's `criu dump --lazy-pages`
    /// exited, i.e. every page had been pulled (s).
    #[serde(default)]
    pub lazy_done_secs: Option<f64>,
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
    /// The method: `haul <strategy>` or `criu <what it mirrors>`.
    pub method: String,
    /// The tool behind it.
    pub tool: Tool,
    /// For a haul method: its plain-CRIU twin's method, which its ratios are against.
    #[serde(default)]
    pub twin: Option<String>,
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
    /// This figure / the twin's, same workload and repetition.
    #[serde(default)]
    pub ratio_to_twin: BTreeMap<String, f64>,
    /// haul's whole JSON report.
    pub haul_report: Option<serde_json::Value>,
    /// Plain CRIU's details.
    pub criu: Option<CriuDetail>,
    /// Where it ran.
    pub env: Environment,
}

impl Record {
    /// The series a record belongs to in reports: its method.
    pub fn series(&self) -> String {
        self.method.clone()
    }
}

/// A schema-1 line (before the twins) as a schema-2 one: `method` `haul` + `strategy` S
/// becomes `haul S` with the twin of S, `criu` becomes `criu stop-copy`; `ratio_to_criu`
/// becomes `ratio_to_twin` only where stop-copy was the twin.
fn upgrade_v1(mut v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let Some(o) = v.as_object_mut() else {
        return v;
    };
    let strategy = o
        .remove("strategy")
        .and_then(|s| s.as_str().map(str::to_string))
        .unwrap_or_default();
    let tool = o
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("haul")
        .to_string();
    let ratios = o.remove("ratio_to_criu");
    let (method, twin) = if tool == "criu" {
        ("criu stop-copy".to_string(), None)
    } else {
        let twin = match strategy.as_str() {
            "post-copy" => "criu post-copy",
            "pre-copy" | "hybrid" => "criu pre-copy",
            _ => "criu stop-copy",
        };
        (format!("haul {strategy}"), Some(twin.to_string()))
    };
    if twin.as_deref() == Some("criu stop-copy") {
        if let Some(r) = ratios {
            o.insert("ratio_to_twin".into(), r);
        }
    }
    o.insert("tool".into(), Value::from(tool));
    o.insert("method".into(), Value::from(method));
    o.insert("twin".into(), twin.map_or(Value::Null, Value::from));
    o.insert("schema".into(), Value::from(SCHEMA));
    v
}

/// Parse one line of a results file, of this schema or of schema 1.
pub fn parse_line(line: &str) -> Result<Record, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(line)?;
    let v = if v.get("schema").and_then(serde_json::Value::as_u64) == Some(1) {
        upgrade_v1(v)
    } else {
        v
    };
    serde_json::from_value(v)
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
        out.push(parse_line(&line).map_err(|source| RecordError::Parse {
            path: path.display().to_string(),
            line: i + 1,
            source,
        })?);
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
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    if compact {
        s.replace(['-', ':'], "")
    } else {
        s
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
            method: "haul post-copy".into(),
            tool: Tool::Haul,
            twin: Some("criu post-copy".into()),
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
            ratio_to_twin: BTreeMap::new(),
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
        assert_eq!(v["method"], "haul post-copy");
        std::fs::write(dir.path().join("bad.jsonl"), "{}\n").unwrap();
        let e = read(&dir.path().join("bad.jsonl")).unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
    }

    #[test]
    fn schema_1_lines_still_read() {
        let mut v = serde_json::to_value(sample(3)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.insert("schema".into(), 1.into());
        o.insert("method".into(), "haul".into());
        o.insert("strategy".into(), "stop-copy".into());
        o.remove("tool");
        o.remove("twin");
        o.remove("ratio_to_twin");
        o.insert(
            "ratio_to_criu".into(),
            serde_json::json!({"total_secs": 0.5}),
        );
        let line = v.to_string();
        let r = parse_line(&line).unwrap();
        assert_eq!(r.method, "haul stop-copy");
        assert_eq!(r.twin.as_deref(), Some("criu stop-copy"));
        assert_eq!(r.ratio_to_twin.get("total_secs"), Some(&0.5));
        let line = line
            .replace("\"method\":\"haul\"", "\"method\":\"criu\"")
            .replace("\"strategy\":\"stop-copy\"", "\"strategy\":\"criu\"");
        let r = parse_line(&line).unwrap();
        assert_eq!(
            (r.method.as_str(), r.tool, r.twin),
            ("criu stop-copy", Tool::Criu, None)
        );
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400, false), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_552_267, true), "20261124T203107Z");
    }
}
