//! Running a scenario: provision the nodes, start `haul serve` on the destination, then for
//! every workload case and repetition migrate a fresh workload with plain CRIU (the
//! baseline, [`crate::baseline`]) and with haul under every strategy, check it on the
//! destination, and append one [`Record`] per migration to the results file.
//!
//! The order within a repetition is baseline first, then the strategies in the scenario's
//! order, so that slow drifts of the machine spread over all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::baseline;
use crate::provider::{
    self, shell_quote, LocalConfig, Node, Provider, ProviderConfig, ProviderError,
};
use crate::record::{
    self, Check, Environment, Figures, Method, NodeInfo, Outcome, Record, RecordError, Round,
    SyncRound, Writer, FIGURES, SCHEMA,
};
use crate::scenario::{Scenario, WorkloadCase};
use crate::workload::{self, Workload, WorkloadError};

/// Set by SIGINT/SIGTERM: the run stops after the current migration and cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The nodes.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The results file.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Building haul's binaries failed.
    #[error("building haul's binaries failed: {0}")]
    Build(String),
    /// `haul serve` did not come up on the destination.
    #[error("haul serve did not start on the destination: {0}")]
    Serve(String),
    /// Interrupted (SIGINT/SIGTERM); the results so far are in the file.
    #[error("interrupted; {0} migrations recorded in {1}")]
    Interrupted(usize, String),
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where results files go (`results/runs`).
    pub results_dir: PathBuf,
    /// Use this provider instead of the scenario's.
    pub provider: Option<ProviderConfig>,
    /// The port `haul serve` listens on, on the destination.
    pub port: u16,
    /// Build haul's binaries first (`cargo build --release -p haul -p haul-workloads`), for
    /// the local provider inside the source tree.
    pub build: bool,
    /// Keep the nodes' directories (images, logs) for inspection.
    pub keep: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The results file.
    pub path: PathBuf,
    /// Its records.
    pub records: Vec<Record>,
}

/// The short git revision and dirtiness of `tree`.
pub fn git_revision(tree: Option<&Path>) -> (String, bool) {
    let Some(tree) = tree else {
        return ("unknown".into(), false);
    };
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(tree)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    (rev, dirty)
}

/// Strategies `haul check` says the node cannot run, with its reason.
pub fn parse_unavailable(check_output: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in check_output.lines() {
        let t = line.trim();
        let Some((name, rest)) = t.split_once(char::is_whitespace) else {
            continue;
        };
        if let Some(why) = rest.trim().strip_prefix("unavailable:") {
            m.insert(name.to_string(), why.trim().to_string());
        }
    }
    m
}

fn node_info(n: &dyn Node) -> NodeInfo {
    let t = Duration::from_secs(60);
    let text = |argv: Vec<String>| {
        n.exec(&argv, None, t)
            .map(|o| o.stdout_text().trim().to_string())
            .unwrap_or_default()
    };
    let criu = text(vec![n.criu(), "--version".into()]);
    let check = text(vec![n.bin("haul"), "check".into()]);
    NodeInfo {
        node: n.describe(),
        kernel: text(vec!["uname".into(), "-r".into()]),
        criu_version: criu
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .unwrap_or(&criu)
            .trim()
            .to_string(),
        haul_version: text(vec![n.bin("haul"), "--version".into()]),
        unavailable: parse_unavailable(&check),
    }
}

/// Build haul's binaries in `tree` (a no-op when up to date).
pub fn build_binaries(tree: &Path) -> Result<(), RunError> {
    let out = std::process::Command::new("cargo")
        .current_dir(tree)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "haul",
            "-p",
            "haul-workloads",
        ])
        .status()
        .map_err(|e| RunError::Build(format!("cannot run cargo: {e}")))?;
    if !out.success() {
        return Err(RunError::Build(format!("cargo exited with {out}")));
    }
    Ok(())
}

/// One migration's outcome before it becomes a record.
#[derive(Debug, Default)]
pub struct Attempt {
    /// The figures.
    pub figures: Figures,
    /// The check.
    pub check: Check,
    /// haul's JSON report.
    pub haul_report: Option<serde_json::Value>,
    /// Plain CRIU's details.
    pub criu: Option<record::CriuDetail>,
    /// What failed.
    pub error: Option<String>,
}

/// The figures of haul's JSON report (the field names of `haul::migrate::report`).
pub fn figures_from_report(v: &serde_json::Value) -> Figures {
    let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let rounds = v
        .get("rounds")
        .and_then(|r| r.as_array())
        .map(|rs| {
            rs.iter()
                .map(|r| Round {
                    round: r.get("round").and_then(|x| x.as_u64()).unwrap_or(0) as u32,
                    pages: r
                        .pointer("/stats/pages_written")
                        .and_then(|x| x.as_u64())
                        .unwrap_or(0),
                    bytes: r.get("bytes").and_then(|x| x.as_u64()).unwrap_or(0),
                    secs: r.get("secs").and_then(|x| x.as_f64()).unwrap_or(0.0),
                })
                .collect()
        })
        .unwrap_or_default();
    Figures {
        total_secs: f("total_secs"),
        frozen_secs: f("frozen_secs"),
        restore_secs: f("restore_secs"),
        downtime_secs: f("downtime_secs"),
        observed_downtime_secs: None,
        postcopy_window_secs: f("postcopy_window_secs"),
        pages_sent: u("pages_sent"),
        memory_bytes_sent: u("memory_bytes_sent"),
        image_bytes_sent: u("image_bytes_sent"),
        sync_bytes: v
            .pointer("/sync/rounds")
            .and_then(|r| r.as_array())
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r.get("payload_bytes").and_then(|x| x.as_u64()))
                    .sum()
            }),
        sync_final_secs: v.pointer("/sync/final_round_secs").and_then(|x| x.as_f64()),
        sync_final_share: v
            .pointer("/sync/final_share_of_downtime")
            .and_then(|x| x.as_f64()),
        sync_rounds: v
            .pointer("/sync/rounds")
            .and_then(|r| r.as_array())
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let u = |k: &str| r.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
                        SyncRound {
                            round: u("round") as u32,
                            final_round: r
                                .get("final_round")
                                .and_then(|x| x.as_bool())
                                .unwrap_or(false),
                            bytes: u("payload_bytes"),
                            files: u("files"),
                            secs: r.get("secs").and_then(|x| x.as_f64()).unwrap_or(0.0),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        strategy_used: v
            .get("strategy")
            .and_then(|s| s.as_str())
            .map(str::to_string),
        rounds,
    }
}

/// This migration's figures over the baseline's (same case and repetition).
pub fn ratios(f: &Figures, base: &Figures) -> BTreeMap<String, f64> {
    FIGURES
        .iter()
        .filter_map(|(k, _, _)| {
            let r = crate::stats::ratio(f.get(k), base.get(k))?;
            Some((k.to_string(), r))
        })
        .collect()
}

/// Which migration of the run.
#[derive(Debug, Clone)]
struct Job {
    seq: u32,
    rep: u32,
    method: Method,
    strategy: String,
    started: f64,
}

/// A running scenario: the nodes, `haul serve`, the results file.
pub struct Runner<'a> {
    scenario: &'a Scenario,
    provider: &'a dyn Provider,
    env: Environment,
    set: String,
    port: u16,
    key: (String, String),
    serve_pid: Option<i32>,
    timeout: Duration,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("set", &self.set).finish()
    }
}

impl<'a> Runner<'a> {
    /// Look at the nodes, share a key, start `haul serve` on the destination. `tree` is the
    /// source tree whose git revision the records name.
    pub fn new(
        scenario: &'a Scenario,
        provider: &'a dyn Provider,
        set: &str,
        port: u16,
        tree: Option<&Path>,
    ) -> Result<Runner<'a>, RunError> {
        let (src, dst) = (provider.source(), provider.destination());
        let (git_rev, git_dirty) = git_revision(tree);
        let host = std::process::Command::new("uname")
            .arg("-n")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let env = Environment {
            git_rev,
            git_dirty,
            harness_version: env!("CARGO_PKG_VERSION").into(),
            provider: provider.kind().into(),
            provider_detail: provider.describe(),
            harness_host: format!(
                "{host}, {} cores",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ),
            source: node_info(src),
            destination: node_info(dst),
        };
        let t = Duration::from_secs(60);
        let key = (
            format!("{}/key", src.work_dir()),
            format!("{}/key", dst.work_dir()),
        );
        let out = src.exec(&[src.bin("haul"), "keygen".into(), key.0.clone()], None, t)?;
        if !out.success() {
            return Err(src.failed("haul keygen", &out).into());
        }
        let bytes = src.read_file(&key.0)?;
        if key.1 != key.0 {
            dst.write_file(&key.1, &bytes)?;
        }
        let mut r = Runner {
            scenario,
            provider,
            env,
            set: set.into(),
            port,
            key,
            serve_pid: None,
            timeout: Duration::from_secs_f64(scenario.timeout_secs),
        };
        r.start_serve()?;
        Ok(r)
    }

    fn start_serve(&mut self) -> Result<(), RunError> {
        let dst = self.provider.destination();
        let log = format!("{}/serve.log", dst.work_dir());
        let argv = vec![
            dst.bin("haul"),
            "serve".into(),
            "--listen".into(),
            format!("{}:{}", dst.addr(), self.port),
            "--key".into(),
            self.key.1.clone(),
            "--img-path".into(),
            format!("{}/img", dst.work_dir()),
        ];
        let pid = dst.spawn(&argv, &log)?;
        self.serve_pid = Some(pid);
        for _ in 0..100 {
            let text = dst
                .sh(
                    &format!("cat {} 2>/dev/null; true", shell_quote(&log)),
                    Duration::from_secs(30),
                )
                .map(|o| o.stdout_text())
                .unwrap_or_default();
            if text.contains("haul serve on") {
                return Ok(());
            }
            if !workload::alive(dst, pid) {
                return Err(RunError::Serve(text.trim().to_string()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(RunError::Serve("not listening after 10 s".into()))
    }

    /// What the run found out about the nodes.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    fn unsupported(&self, strategy: &str) -> Option<String> {
        if strategy == "auto" {
            return None;
        }
        for (role, info) in [
            ("source", &self.env.source),
            ("destination", &self.env.destination),
        ] {
            if let Some(why) = info.unavailable.get(strategy) {
                return Some(format!(
                    "unsupported on this provider ({role} node, haul check): needs {}",
                    why.trim_start_matches("needs ")
                ));
            }
        }
        None
    }

    fn migration_dir(&self, seq: u32, what: &str) -> String {
        format!("{}/{seq:03}-{what}", self.provider.shared_dir())
    }

    /// A synced workload's working directory: on the nodes' own disks (the provider's, else
    /// the scenario's `node_local_dir`).
    fn node_local_dir(&self, seq: u32, what: &str) -> Result<String, String> {
        let base = self
            .provider
            .node_local_dir()
            .map(str::to_string)
            .or_else(|| self.scenario.node_local_dir.clone())
            .ok_or_else(|| {
                format!(
                    "the workload syncs its files, but the {} provider has no node-local directory: set node_local_dir in the scenario",
                    self.provider.kind()
                )
            })?;
        if !provider::removable(&base) {
            return Err(format!(
                "node_local_dir {base} must be absolute and contain a directory named haul-harness*"
            ));
        }
        Ok(format!("{base}/{seq:03}-{what}"))
    }

    /// Removes a synced workload's directory from both nodes' disks.
    fn remove_node_local(&self, dir: &str) {
        if !provider::removable(dir) {
            return;
        }
        for n in [self.provider.source(), self.provider.destination()] {
            let _ = n.sh(
                &format!("rm -rf {}", shell_quote(dir)),
                Duration::from_secs(120),
            );
        }
    }

    /// Start the workload and wait until it settled.
    fn start_workload(&self, case: &WorkloadCase, dir: &str) -> Result<Workload, WorkloadError> {
        let src = self.provider.source();
        let w = Workload::start(src, dir, case, self.timeout)?;
        if let Err(e) = w.wait_touching(
            src,
            w.source_pid,
            0,
            3,
            self.scenario.settle_secs,
            self.timeout,
        ) {
            workload::kill(src, w.source_pid);
            return Err(e);
        }
        Ok(w)
    }

    /// After a move: the workload runs on the destination as `pid`, keeps touching, and
    /// checks every page; or, after a failure, the same on the source.
    pub fn check_after(
        &self,
        w: &Workload,
        case: &WorkloadCase,
        dest_pid: Option<i32>,
        a: &mut Attempt,
    ) {
        let (src, dst) = (self.provider.source(), self.provider.destination());
        a.check.left_on_source = workload::alive(src, w.source_pid);
        let (node, pid): (&dyn Node, i32) = match dest_pid {
            Some(p) if workload::alive(dst, p) && w.is_at(dst, p, &case.program) => {
                a.check.destination_pid = Some(p);
                (dst, p)
            }
            _ => {
                if a.error.is_none() {
                    a.error = Some(format!(
                        "the workload does not run on the destination (pid {dest_pid:?})"
                    ));
                }
                (src, w.source_pid)
            }
        };
        if a.check.left_on_source && a.check.destination_pid.is_some() {
            a.error.get_or_insert_with(|| {
                "the workload still runs on the source after the migration".into()
            });
        }
        // After a failed migration the workload should resume on the source at once; one
        // that does not (still frozen by a stuck dump) is not waited for long.
        let failed = a.error.is_some();
        let check_timeout = self.timeout.min(Duration::from_secs(60));
        let wait = if failed {
            check_timeout.min(Duration::from_secs(10))
        } else {
            check_timeout
        };
        let before = w.touches(node);
        let touching = match w.wait_touching(node, pid, before, 3, self.scenario.after_secs, wait) {
            Ok(n) => {
                a.check.touches_after = n - before;
                true
            }
            Err(e) => {
                a.error.get_or_insert(e.to_string());
                false
            }
        };
        if touching || !failed {
            match w.stop_and_check(node, check_timeout) {
                Ok(v) => {
                    a.check.finished = v.finished;
                    a.check.mismatches = v.mismatches;
                    a.check.touches = v.touches;
                    a.check.passed = v.passed;
                    a.figures.observed_downtime_secs = Some(v.largest_gap.as_secs_f64());
                    if !v.passed {
                        a.error
                            .get_or_insert_with(|| format!("the workload's check failed: {v}"));
                    }
                }
                Err(e) => {
                    a.error.get_or_insert(e.to_string());
                }
            }
        }
        // whatever is left of it goes
        for _ in 0..50 {
            if !workload::alive(node, pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (n, p) in [(src, w.source_pid), (dst, dest_pid.unwrap_or(0))] {
            if p > 0 && workload::alive(n, p) && w.is_at(n, p, &case.program) {
                workload::kill(n, p);
            }
        }
    }

    /// One haul migration of a fresh workload.
    pub fn haul_once(&self, case: &WorkloadCase, strategy: &str, seq: u32) -> Attempt {
        let mut a = Attempt::default();
        let (src, dst) = (self.provider.source(), self.provider.destination());
        let dir = if case.sync {
            // the directory on the source; its parent on the destination (where the synced
            // tree is made)
            let made = self.node_local_dir(seq, strategy).and_then(|d| {
                let parent = d.rsplit_once('/').map_or("/", |(p, _)| p).to_string();
                let t = Duration::from_secs(60);
                src.sh_ok(&format!("mkdir -p {}", shell_quote(&d)), t)
                    .and_then(|_| dst.sh_ok(&format!("mkdir -p {}", shell_quote(&parent)), t))
                    .map(|_| d)
                    .map_err(|e| e.to_string())
            });
            match made {
                Ok(d) => d,
                Err(e) => {
                    a.error = Some(e);
                    return a;
                }
            }
        } else {
            self.migration_dir(seq, strategy)
        };
        let w = match self.start_workload(case, &dir) {
            Ok(w) => w,
            Err(e) => {
                a.error = Some(e.to_string());
                return a;
            }
        };
        let report = format!("{}/report-{seq:03}.json", src.work_dir());
        let argv = vec![
            src.bin("haul"),
            "pid".into(),
            w.source_pid.to_string(),
            format!("{}:{}", dst.addr(), self.port),
            "--key".into(),
            self.key.0.clone(),
            "--img-path".into(),
            format!("{}/img", src.work_dir()),
            "--strategy".into(),
            strategy.into(),
            "--report".into(),
            report.clone(),
            "--no-progress".into(),
        ];
        let mut argv = argv;
        if case.sync {
            argv.extend(["--sync".into(), dir.clone()]);
        }
        let mut dest_pid = None;
        let serve_log = format!("{}/serve.log", dst.work_dir());
        let serve_mark: u64 = dst
            .sh(
                &format!("wc -c < {} 2>/dev/null; true", shell_quote(&serve_log)),
                Duration::from_secs(30),
            )
            .ok()
            .and_then(|o| o.stdout_text().trim().parse().ok())
            .unwrap_or(0);
        let started = record::now_unix();
        match src.exec(&argv, None, self.timeout) {
            Ok(out) if out.success() => match src.read_file(&report) {
                Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(v) => {
                        a.figures = figures_from_report(&v);
                        dest_pid = v
                            .get("destination_pid")
                            .and_then(|p| p.as_i64())
                            .map(|p| p as i32);
                        a.haul_report = Some(v);
                    }
                    Err(e) => a.error = Some(format!("haul's report {report}: {e}")),
                },
                Err(e) => a.error = Some(e.to_string()),
            },
            Ok(out) => {
                // what haul serve logged during this migration only
                let serve = dst
                    .sh(
                        &format!(
                            "tail -c +{} {} 2>/dev/null | tail -n 4; true",
                            serve_mark + 1,
                            shell_quote(&serve_log)
                        ),
                        Duration::from_secs(30),
                    )
                    .map(|o| o.tail(4))
                    .unwrap_or_default();
                a.error = Some(format!(
                    "haul pid {} after {:.1} s: {} || haul serve's log ends: {}",
                    out.status_text(),
                    record::now_unix() - started,
                    out.tail(6),
                    serve
                ));
            }
            Err(e) => a.error = Some(e.to_string()),
        }
        self.check_after(&w, case, dest_pid, &mut a);
        if case.sync {
            self.remove_node_local(&dir);
        }
        self.clean_images(&[
            format!("{}/img", src.work_dir()),
            format!("{}/img", dst.work_dir()),
        ]);
        a
    }

    /// Remove image directories' contents on both nodes (pages of a 1 GiB workload are 1 GiB).
    pub fn clean_images(&self, dirs: &[String]) {
        for n in [self.provider.source(), self.provider.destination()] {
            for d in dirs {
                if provider::removable(d) {
                    let _ = n.sh(
                        &format!("rm -rf {}/* 2>/dev/null; true", shell_quote(d)),
                        Duration::from_secs(120),
                    );
                }
            }
        }
    }

    /// One plain-CRIU migration of a fresh workload.
    pub fn criu_once(&self, case: &WorkloadCase, seq: u32) -> Attempt {
        let mut a = Attempt::default();
        let dir = self.migration_dir(seq, "criu");
        let w = match self.start_workload(case, &dir) {
            Ok(w) => w,
            Err(e) => {
                a.error = Some(e.to_string());
                return a;
            }
        };
        let dirs = baseline::Dirs {
            src: format!("{}/{seq:03}-criu-images", self.provider.shared_dir()),
            dst: format!("{}/criu-{seq:03}", self.provider.destination().work_dir()),
            port: 28_000 + (seq % 2000) as u16,
        };
        let mut dest_pid = None;
        match baseline::migrate(self.provider, w.source_pid, &dirs, self.timeout) {
            Ok(m) => {
                a.figures = m.figures;
                a.criu = Some(m.detail);
                dest_pid = Some(m.destination_pid);
            }
            Err(e) => a.error = Some(e.to_string()),
        }
        self.check_after(&w, case, dest_pid, &mut a);
        let (src, dst) = (self.provider.source(), self.provider.destination());
        for (n, d) in [(src, &dirs.src), (dst, &dirs.dst)] {
            if provider::removable(d) {
                let _ = n.sh(
                    &format!("rm -rf {}", shell_quote(d)),
                    Duration::from_secs(120),
                );
            }
        }
        a
    }

    fn record(&self, job: &Job, case: &WorkloadCase, a: Attempt, outcome: Outcome) -> Record {
        Record {
            schema: SCHEMA,
            set: self.set.clone(),
            scenario: self.scenario.name.clone(),
            seq: job.seq,
            started_at: record::utc(job.started as u64, false),
            rep: job.rep,
            method: job.method,
            strategy: job.strategy.clone(),
            workload: case.into(),
            outcome,
            error: a.error,
            figures: a.figures,
            check: a.check,
            ratio_to_criu: BTreeMap::new(),
            haul_report: a.haul_report,
            criu: a.criu,
            env: self.env.clone(),
        }
    }

    /// Every migration of the scenario, each record written as soon as it is made.
    pub fn run_all(&self, out: &mut Writer, bar: &ProgressBar) -> Result<Vec<Record>, RunError> {
        let mut records = Vec::new();
        let mut seq = 0u32;
        let say = |line: String| {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        };
        for case in self.scenario.cases() {
            for rep in 1..=self.scenario.repetitions {
                let mut base: Option<Figures> = None;
                let mut jobs: Vec<(Method, String)> = Vec::new();
                if self.scenario.baseline {
                    jobs.push((Method::Criu, "criu".into()));
                }
                jobs.extend(
                    self.scenario
                        .strategies
                        .iter()
                        .map(|s| (Method::Haul, s.clone())),
                );
                for (method, strategy) in jobs {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        return Err(RunError::Interrupted(
                            records.len(),
                            out.path().display().to_string(),
                        ));
                    }
                    bar.set_message(format!(
                        "{} {} #{rep}",
                        case.label(),
                        if method == Method::Criu {
                            "plain CRIU"
                        } else {
                            &strategy
                        }
                    ));
                    let started = record::now_unix();
                    let (a, outcome) = match (method, self.unsupported(&strategy)) {
                        (Method::Haul, Some(why)) => (
                            Attempt {
                                error: Some(why),
                                ..Default::default()
                            },
                            Outcome::Unsupported,
                        ),
                        _ => {
                            let a = match method {
                                Method::Criu => self.criu_once(&case, seq),
                                Method::Haul => self.haul_once(&case, &strategy, seq),
                            };
                            let outcome = if a.error.is_none() {
                                Outcome::Ok
                            } else {
                                Outcome::Failed
                            };
                            (a, outcome)
                        }
                    };
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        // the migration was cut short by the signal: not a result
                        return Err(RunError::Interrupted(
                            records.len(),
                            out.path().display().to_string(),
                        ));
                    }
                    let job = Job {
                        seq,
                        rep,
                        method,
                        strategy: strategy.clone(),
                        started,
                    };
                    let mut r = self.record(&job, &case, a, outcome);
                    if method == Method::Criu && outcome == Outcome::Ok {
                        base = Some(r.figures.clone());
                    }
                    if let (Method::Haul, Some(b)) = (method, &base) {
                        r.ratio_to_criu = ratios(&r.figures, b);
                    }
                    say(progress_line(&r));
                    out.write(&r)?;
                    records.push(r);
                    bar.inc(1);
                    seq += 1;
                }
            }
        }
        Ok(records)
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.serve_pid.take() {
            self.provider.destination().terminate(pid);
        }
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3} s"))
}

/// The line printed when a migration is done.
pub fn progress_line(r: &Record) -> String {
    let what = format!("{} {} #{}", r.workload.label, r.series(), r.rep);
    match r.outcome {
        Outcome::Unsupported => format!("  -  {what}: {}", r.error.as_deref().unwrap_or("")),
        Outcome::Failed => format!(
            "FAIL {what}: {}",
            r.error.as_deref().unwrap_or("").replace('\n', " | ")
        ),
        Outcome::Ok => {
            let f = &r.figures;
            let mut s = format!(
                "  ok {what}: total {}, frozen {}, downtime {}, observed {}",
                secs(f.total_secs),
                secs(f.frozen_secs),
                secs(f.downtime_secs),
                secs(f.observed_downtime_secs)
            );
            if let Some(x) = r.ratio_to_criu.get("observed_downtime_secs") {
                s.push_str(&format!(" (x{x:.2} of plain CRIU)"));
            }
            s
        }
    }
}

/// Run a scenario from start to end: build (local), provision, migrate, record, clean up.
pub fn run(scenario: &Scenario, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let tree = provider::local::source_tree();
    let config = opts
        .provider
        .clone()
        .unwrap_or_else(|| scenario.provider.clone());
    if opts.build {
        if let (ProviderConfig::Local(c), Some(t)) = (&config, &tree) {
            if c.bin_dir.is_none() {
                eprintln!(
                    "building haul's binaries (cargo build --release -p haul -p haul-workloads)"
                );
                build_binaries(t)?;
            }
        }
    }
    // the revision recorded is the one of the tree the binaries come from
    let git_tree = match &config {
        ProviderConfig::Local(LocalConfig {
            bin_dir: Some(d), ..
        }) => Path::new(d)
            .ancestors()
            .find(|a| a.join(".git").exists())
            .map(Path::to_path_buf),
        _ => tree.clone(),
    };
    let (rev, _) = git_revision(git_tree.as_deref());
    let stem = format!(
        "{}-{}-{}",
        scenario.name,
        record::utc(record::now_unix() as u64, true),
        rev
    );
    // a local provider gives synced workloads node-local disks of their own
    let mut config = config;
    if let ProviderConfig::Local(c) = &mut config {
        c.node_local |= scenario.syncs();
    }
    eprintln!("provisioning the {} provider", config.kind());
    let mut prov = provider::provision(&config, &stem)?;
    prov.keep_files(opts.keep);
    eprintln!("{}", prov.describe());
    let mut out = Writer::create(&opts.results_dir, &stem)?;
    let set = out
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(stem);
    let runner = Runner::new(
        scenario,
        prov.as_ref(),
        &set,
        opts.port,
        git_tree.as_deref(),
    )?;
    let env = runner.environment();
    eprintln!(
        "git {}{}; source: kernel {}, CRIU {}; destination: kernel {}, CRIU {}",
        env.git_rev,
        if env.git_dirty {
            " (uncommitted changes)"
        } else {
            ""
        },
        env.source.kernel,
        env.source.criu_version,
        env.destination.kernel,
        env.destination.criu_version
    );
    eprintln!("results: {}", out.path().display());
    let bar = if opts.progress {
        ProgressBar::new(scenario.migrations() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} (eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let result = runner.run_all(&mut out, &bar);
    bar.finish_and_clear();
    drop(runner);
    drop(prov);
    let records = result?;
    Ok(RunSummary {
        path: out.path().to_path_buf(),
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haul_check_output() {
        let text = "CRIU version 4.2.1 at /usr/local/sbin/criu\n\
strategies on this node (as source and destination):\n  stop-copy  available\n  pre-copy   unavailable: needs memory dirty tracking (soft-dirty) on the source kernel\n  post-copy  available\n  hybrid     unavailable: needs memory dirty tracking (soft-dirty) on the source kernel\n  auto       -> post-copy: no memory tracking\n";
        let m = parse_unavailable(text);
        assert_eq!(m.len(), 2);
        assert!(m["pre-copy"].starts_with("needs memory dirty tracking"));
        assert!(m.contains_key("hybrid"));
    }

    #[test]
    fn report_figures() {
        let v = serde_json::json!({
            "total_secs": 2.0, "frozen_secs": 0.1, "restore_secs": 0.01, "downtime_secs": 0.12,
            "postcopy_window_secs": null, "pages_sent": 100, "memory_bytes_sent": 409600,
            "image_bytes_sent": 5000, "strategy": "pre-copy",
            "rounds": [{"round": 1, "stats": {"pages_written": 60}, "bytes": 245760, "secs": 0.5, "bandwidth": 1.0}]
        });
        let f = figures_from_report(&v);
        assert_eq!(f.total_secs, Some(2.0));
        assert_eq!(f.postcopy_window_secs, None);
        assert_eq!(f.pages_sent, Some(100));
        assert_eq!(f.strategy_used.as_deref(), Some("pre-copy"));
        assert_eq!(f.rounds[0].pages, 60);
        let base = Figures {
            total_secs: Some(4.0),
            pages_sent: Some(0),
            ..Default::default()
        };
        let r = ratios(&f, &base);
        assert_eq!(r.get("total_secs"), Some(&0.5));
        assert!(!r.contains_key("pages_sent"));
    }
}
