//! Running a scenario: build (local), provision the nodes, measure the link, start `haul
//! serve`, then for every workload case and repetition, every method of [`method::plan`]
//! (each haul strategy right after its plain-CRIU twin) on a fresh workload: start it, move
//! it, check it on the destination ([`verify`]), append one [`Record`] to the results file.
//! The run stops at the next migration when the [`CancelToken`] is cancelled, and tears
//! everything down through the providers' `Drop`s, whichever way it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::build::{self, BuildError};
use crate::cancel::CancelToken;
use crate::case::WorkloadCase;
use crate::link;
use crate::method::{self, Method, MigrationContext, Moved};
use crate::probe::{self, Capabilities};
use crate::provider::{self, LocalConfig, Provider, ProviderConfig, ProviderError};
use crate::record::{
    self, Check, Environment, Figures, Outcome, Record, RecordError, Writer, FIGURES, SCHEMA,
};
use crate::scenario::Scenario;
use crate::serve::{HaulServe, ServeError};
use crate::verify;
use crate::workload::{self, Workload, WorkloadError};

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The nodes.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The results file.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Building haul's binaries.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// `haul serve` on the destination.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Cancelled (SIGINT/SIGTERM); the results so far are in the file.
    #[error("cancelled; {0} migrations recorded in {1}")]
    Cancelled(usize, String),
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where results files go (`results/runs`).
    pub results_dir: PathBuf,
    /// Use this provider instead of the scenario's.
    pub provider: Option<ProviderConfig>,
    /// The port `haul serve` listens on, on the destination (the link probe uses the next).
    pub port: u16,
    /// Build haul's binaries first (`cargo build --release -p haul -p haul-launch -p haul-workloads`), when
    /// running inside the source tree and no `bin_dir` is given.
    pub build: bool,
    /// haul's binaries on this machine (default: the source tree's `target/release`); the
    /// local nodes run them, the VMs get copies.
    pub bin_dir: Option<PathBuf>,
    /// Keep the nodes' directories (images, logs) for inspection.
    pub keep: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// The run's cancellation.
    pub cancel: CancelToken,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            results_dir: PathBuf::from("results/runs"),
            provider: None,
            port: 27600,
            build: false,
            bin_dir: None,
            keep: false,
            progress: false,
            cancel: CancelToken::new(),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The results file.
    pub path: PathBuf,
    /// Its records.
    pub records: Vec<Record>,
}

/// This migration's figures over its twin's (same case and repetition).
pub fn ratios(f: &Figures, twin: &Figures) -> BTreeMap<String, f64> {
    FIGURES
        .iter()
        .filter_map(|(k, _, _)| {
            let r = crate::stats::ratio(f.get(k), twin.get(k))?;
            Some((k.to_string(), r))
        })
        .collect()
}

/// A running scenario: the nodes, what they can do, `haul serve`, the link.
pub struct Runner<'a> {
    scenario: &'a Scenario,
    provider: &'a dyn Provider,
    env: Environment,
    caps: (Capabilities, Capabilities),
    methods: Vec<Box<dyn Method>>,
    serve: HaulServe<'a>,
    link_dev: Option<String>,
    set: String,
    timeout: Duration,
    cancel: CancelToken,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner").field("set", &self.set).finish()
    }
}

impl<'a> Runner<'a> {
    /// Look at the nodes, measure the link, start `haul serve` on the destination. `tree` is
    /// the source tree whose git revision the records name.
    pub fn new(
        scenario: &'a Scenario,
        provider: &'a dyn Provider,
        set: &str,
        port: u16,
        tree: Option<&Path>,
        cancel: &CancelToken,
    ) -> Result<Runner<'a>, RunError> {
        let (src, dst) = (provider.source(), provider.destination());
        let (git_rev, git_dirty) = probe::git_revision(tree);
        let (si, di) = (probe::node_info(src), probe::node_info(dst));
        let caps = (
            Capabilities {
                unavailable: si.unavailable.clone(),
                auto: si.auto.clone(),
            },
            Capabilities {
                unavailable: di.unavailable.clone(),
                auto: di.auto.clone(),
            },
        );
        let link_bytes_per_sec = if scenario.link_probe_bytes > 0 {
            match link::bandwidth(provider, port + 1, scenario.link_probe_bytes) {
                Ok(b) => Some(b),
                Err(e) => {
                    eprintln!("haul-harness: the link probe failed ({e}): no link floor");
                    None
                }
            }
        } else {
            None
        };
        let env = Environment {
            git_rev,
            git_dirty,
            harness_version: env!("CARGO_PKG_VERSION").into(),
            provider: provider.kind().into(),
            provider_detail: provider.describe(),
            harness_host: probe::harness_host(),
            source: si,
            destination: di,
            link_bytes_per_sec,
        };
        let serve = HaulServe::start(provider, port)?;
        Ok(Runner {
            scenario,
            provider,
            methods: method::plan(scenario, &caps.0),
            caps,
            env,
            serve,
            link_dev: link::interface(src),
            set: set.into(),
            timeout: Duration::from_secs_f64(scenario.timeout_secs),
            cancel: cancel.clone(),
        })
    }

    /// What the run found out about the nodes.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// The methods, in the order each repetition runs them.
    pub fn methods(&self) -> &[Box<dyn Method>] {
        &self.methods
    }

    /// Migrations the whole scenario makes (unsupported ones included, which take no time).
    pub fn migrations(&self) -> usize {
        self.scenario.cases().len() * self.scenario.repetitions as usize * self.methods.len()
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

    /// Makes a synced workload's directory on the source and its parent on the destination
    /// (where the synced tree is made).
    fn make_node_local(&self, seq: u32, what: &str) -> Result<String, String> {
        let d = self.node_local_dir(seq, what)?;
        let parent = d.rsplit_once('/').map_or("/", |(p, _)| p).to_string();
        let t = Duration::from_secs(60);
        let q = crate::node::shell_quote;
        self.provider
            .source()
            .sh_ok(&format!("mkdir -p {}", q(&d)), t)
            .and_then(|_| {
                self.provider
                    .destination()
                    .sh_ok(&format!("mkdir -p {}", q(&parent)), t)
            })
            .map_err(|e| e.to_string())?;
        Ok(d)
    }

    /// Removes a synced workload's directory from both nodes' disks.
    fn remove_node_local(&self, dir: &str) {
        if !provider::removable(dir) {
            return;
        }
        for n in [self.provider.source(), self.provider.destination()] {
            let _ = n.sh(
                &format!("rm -rf {}", crate::node::shell_quote(dir)),
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

    /// One migration of a fresh workload with method `m`: start, move, check.
    pub fn migrate_once(&self, m: &dyn Method, case: &WorkloadCase, seq: u32) -> Attempt {
        let mut a = Attempt::default();
        let src = self.provider.source();
        let what = m.name().replace(' ', "-");
        let dir = if case.sync {
            match self.make_node_local(seq, &what) {
                Ok(d) => d,
                Err(e) => {
                    a.error = Some(e);
                    return a;
                }
            }
        } else {
            format!("{}/{seq:03}-{what}", self.provider.shared_dir())
        };
        let w = match self.start_workload(case, &dir) {
            Ok(w) => w,
            Err(e) => {
                a.error = Some(e.to_string());
                return a;
            }
        };
        let resident = w.resident_bytes(src, w.source_pid);
        let wire0 = self
            .link_dev
            .as_deref()
            .and_then(|d| link::counters(src, d));
        let cx = MigrationContext {
            provider: self.provider,
            serve: &self.serve,
            scenario: self.scenario,
            timeout: self.timeout,
            cancel: &self.cancel,
            seq,
            sync_dir: case.sync.then_some(dir.as_str()),
        };
        let mut dest_pid = None;
        match m.migrate(&cx, &w) {
            Ok(Moved {
                figures,
                destination_pid,
                haul_report,
                criu,
            }) => {
                a.figures = figures;
                dest_pid = destination_pid;
                a.haul_report = haul_report;
                a.criu = criu;
            }
            Err(e) => a.error = Some(e.to_string()),
        }
        let wire1 = self
            .link_dev
            .as_deref()
            .and_then(|d| link::counters(src, d));
        a.figures.wire_bytes = wire0.zip(wire1).map(|(x, y)| y.saturating_sub(x));
        a.figures.resident_bytes = resident;
        a.figures.floor_secs = resident
            .zip(self.env.link_bytes_per_sec)
            .map(|(r, bw)| r as f64 / bw);
        verify::after_move(
            self.provider,
            &w,
            case,
            dest_pid,
            self.scenario.after_secs,
            self.timeout,
            &mut a.check,
            &mut a.figures,
            &mut a.error,
        );
        if case.sync {
            self.remove_node_local(&dir);
        }
        self.clean_images();
        a
    }

    /// Empty haul's image directories on both nodes (a 1 GiB workload leaves 1 GiB).
    fn clean_images(&self) {
        for n in [self.provider.source(), self.provider.destination()] {
            let d = format!("{}/img", n.work_dir());
            if provider::removable(&d) {
                let _ = n.sh(
                    &format!(
                        "rm -rf {}/* 2>/dev/null; true",
                        crate::node::shell_quote(&d)
                    ),
                    Duration::from_secs(120),
                );
            }
        }
    }

    fn record(
        &self,
        job: Job,
        m: &dyn Method,
        case: &WorkloadCase,
        a: Attempt,
        outcome: Outcome,
    ) -> Record {
        let Job { seq, rep, started } = job;
        Record {
            schema: SCHEMA,
            set: self.set.clone(),
            scenario: self.scenario.name.clone(),
            seq,
            started_at: record::utc(started as u64, false),
            rep,
            method: m.name(),
            tool: m.tool(),
            twin: m.twin(),
            workload: case.into(),
            outcome,
            error: a.error,
            figures: a.figures,
            check: a.check,
            ratio_to_twin: BTreeMap::new(),
            haul_report: a.haul_report,
            criu: a.criu,
            env: self.env.clone(),
        }
    }

    /// Every migration of the scenario, each record written as soon as it is made.
    pub fn run_all(&self, out: &mut Writer, bar: &ProgressBar) -> Result<Vec<Record>, RunError> {
        let mut records: Vec<Record> = Vec::new();
        let mut seq = 0u32;
        let say = |line: String| {
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        };
        let path = out_path(out);
        let cancelled = |n: usize| RunError::Cancelled(n, path.clone());
        for case in self.scenario.cases() {
            for rep in 1..=self.scenario.repetitions {
                let mut done: BTreeMap<String, Figures> = BTreeMap::new();
                for m in &self.methods {
                    if self.cancel.is_cancelled() {
                        return Err(cancelled(records.len()));
                    }
                    bar.set_message(format!("{} {} #{rep}", case.label(), m.name()));
                    let started = record::now_unix();
                    let (a, outcome) = match m.unsupported(&self.caps.0, &self.caps.1) {
                        Some(why) => (
                            Attempt {
                                error: Some(why),
                                ..Default::default()
                            },
                            Outcome::Unsupported,
                        ),
                        None => {
                            let a = self.migrate_once(m.as_ref(), &case, seq);
                            let o = if a.error.is_none() {
                                Outcome::Ok
                            } else {
                                Outcome::Failed
                            };
                            (a, o)
                        }
                    };
                    if self.cancel.is_cancelled() {
                        // cut short by the signal: not a result
                        return Err(cancelled(records.len()));
                    }
                    let mut r =
                        self.record(Job { seq, rep, started }, m.as_ref(), &case, a, outcome);
                    if let Some(t) = r.twin.as_ref().and_then(|t| done.get(t)) {
                        r.ratio_to_twin = ratios(&r.figures, t);
                    }
                    if outcome == Outcome::Ok {
                        done.insert(r.method.clone(), r.figures.clone());
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

fn out_path(out: &Writer) -> String {
    out.path().display().to_string()
}

/// Which migration of the run.
#[derive(Debug, Clone, Copy)]
struct Job {
    /// Its number in the run.
    seq: u32,
    /// The repetition (1-based).
    rep: u32,
    /// When it started (Unix seconds).
    started: f64,
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
                "  ok {what}: total {}, downtime {}, observed {}, floor {}",
                secs(f.total_secs),
                secs(f.downtime_secs),
                secs(f.observed_downtime_secs),
                secs(f.floor_secs),
            );
            if let (Some(x), Some(t)) = (r.ratio_to_twin.get("observed_downtime_secs"), &r.twin) {
                s.push_str(&format!(" (x{x:.2} of {t})"));
            }
            s
        }
    }
}

/// Run a scenario from start to end: build (local), provision, migrate, record, tear down.
pub fn run(scenario: &Scenario, opts: &RunOptions) -> Result<RunSummary, RunError> {
    let tree = provider::local::source_tree();
    let config = opts
        .provider
        .clone()
        .unwrap_or_else(|| scenario.provider.clone());
    let local_bin = match &config {
        ProviderConfig::Local(LocalConfig {
            bin_dir: Some(d), ..
        }) => Some(PathBuf::from(d)),
        _ => opts.bin_dir.clone(),
    };
    if opts.build && local_bin.is_none() && !matches!(config, ProviderConfig::Ssh(_)) {
        if let Some(t) = &tree {
            build::build_binaries(t)?;
        }
    }
    let host_bin = local_bin
        .clone()
        .or_else(|| tree.as_ref().map(|t| t.join("target/release")));
    // the revision recorded is the one of the tree the binaries come from
    let git_tree = match &local_bin {
        Some(d) => d
            .ancestors()
            .find(|a| a.join(".git").exists())
            .map(Path::to_path_buf),
        None => tree.clone(),
    };
    let (rev, _) = probe::git_revision(git_tree.as_deref());
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
    let cx = provider::ProvisionContext {
        tag: stem.clone(),
        cancel: opts.cancel.clone(),
        host_bin_dir: host_bin.map(|p| p.display().to_string()),
    };
    let mut prov = provider::provision(&config, &cx)?;
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
        &opts.cancel,
    )?;
    let env = runner.environment();
    eprintln!(
        "git {}{}; source: kernel {}, CRIU {}; destination: kernel {}, CRIU {}; link {}",
        env.git_rev,
        if env.git_dirty {
            " (uncommitted changes)"
        } else {
            ""
        },
        env.source.kernel,
        env.source.criu_version,
        env.destination.kernel,
        env.destination.criu_version,
        env.link_bytes_per_sec
            .map_or("not measured".into(), |b| format!("{:.1} MB/s", b / 1e6)),
    );
    eprintln!(
        "methods: {}",
        runner
            .methods()
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("results: {}", out.path().display());
    let bar = if opts.progress {
        ProgressBar::new(runner.migrations() as u64)
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
    fn ratios_need_both_figures() {
        let f = Figures {
            total_secs: Some(2.0),
            pages_sent: Some(100),
            ..Default::default()
        };
        let twin = Figures {
            total_secs: Some(4.0),
            pages_sent: Some(0),
            ..Default::default()
        };
        let r = ratios(&f, &twin);
        assert_eq!(r.get("total_secs"), Some(&0.5));
        assert!(!r.contains_key("pages_sent"));
    }
}
