//! `haul-harness`: run migration experiments, report on them, compare two sets of results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use haul_harness::cancel::CancelToken;
use haul_harness::compare::{self, CompareOptions};
use haul_harness::provider::ProviderConfig;
use haul_harness::runner::{self, RunOptions};
use haul_harness::scenario::Scenario;
use haul_harness::{method, probe, record, report};

/// Run haul's migration experiments and report on them.
///
/// `run` provisions two nodes (local network namespaces, two ssh hosts, or two VMs it boots
/// with plain QEMU or with Vagrant and libvirt, and tears down at the end), measures the link,
/// migrates the scenario's workloads with haul under every strategy, each beside its
/// plain-CRIU twin, checks each workload on the destination, appends one JSON line per
/// migration to a new file in results/runs/, and writes a report with plots to
/// results/reports/. `report` redraws a report from results files; `compare` says which
/// figures changed between two results sets beyond the noise.
///
/// Example, from the source tree, as root:
///   cargo run --release -p haul-harness -- run harness/scenarios/default.toml
#[derive(Parser)]
#[command(name = "haul-harness", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario: migrate, check, record, then write the report.
    Run {
        /// The scenario file (TOML), e.g. harness/scenarios/default.toml.
        scenario: PathBuf,
        /// Use this provider (local, qemu, vagrant, ssh) instead of the scenario's; ssh needs
        /// its hosts in the scenario's [provider] table.
        #[arg(long)]
        provider: Option<String>,
        /// Directory of the results files [default: results/runs of the source tree].
        #[arg(long)]
        results: Option<PathBuf>,
        /// Directory the report goes into [default: results/reports/<results file's name>].
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Do not write the report.
        #[arg(long)]
        no_report: bool,
        /// Take haul's binaries from this directory (e.g. a clean checkout's target/release)
        /// instead of building this tree's (the VMs get copies); the records name the git
        /// revision of the checkout it is in.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Run every case this many times instead of the scenario's repetitions.
        #[arg(long)]
        repetitions: Option<u32>,
        /// Port of the harness's own `haul serve` on the destination.
        #[arg(long, default_value_t = 27600)]
        port: u16,
        /// Do not build haul's binaries first (they are built with
        /// `cargo build --release -p haul -p haul-launch -p haul-workloads` otherwise).
        #[arg(long)]
        no_build: bool,
        /// Keep the nodes' directories (images, CRIU logs, workload logs) for inspection.
        #[arg(long)]
        keep: bool,
        /// No progress bar (one line per migration still goes to stderr).
        #[arg(long)]
        no_progress: bool,
    },
    /// Show what a scenario would run, without running it.
    Plan {
        /// The scenario file (TOML).
        scenario: PathBuf,
    },
    /// Write the report (Markdown, PNG and SVG plots) of one or more results files.
    Report {
        /// Results files (JSON lines).
        #[arg(required = true)]
        results: Vec<PathBuf>,
        /// Output directory [default: results/reports/<first file's name>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare two results sets (e.g. two git revisions): which figures changed beyond the noise.
    Compare {
        /// The earlier results (A).
        a: PathBuf,
        /// The later results (B).
        b: PathBuf,
        /// Largest p-value (permutation test on the medians) that counts as a change.
        #[arg(long, default_value_t = 0.10)]
        alpha: f64,
        /// Smallest relative change of a median that counts (0.10 = 10 %).
        #[arg(long, default_value_t = 0.10)]
        threshold: f64,
        /// Also write the comparison as Markdown to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Exit with status 1 when a figure regressed (for CI).
        #[arg(long)]
        fail_on_regression: bool,
    },
}

fn results_root() -> PathBuf {
    haul_harness::provider::local::source_tree()
        .map(|t| t.join("results"))
        .unwrap_or_else(|| PathBuf::from("results"))
}

fn default_report_dir(results: &Path) -> PathBuf {
    let stem = results
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    results_root().join("reports").join(stem)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("haul-harness: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode, String> {
    match cmd {
        Cmd::Run {
            scenario,
            provider,
            results,
            report_dir,
            no_report,
            bin_dir,
            repetitions,
            port,
            no_build,
            keep,
            no_progress,
        } => {
            let mut s = Scenario::load(&scenario).map_err(|e| e.to_string())?;
            if let Some(n) = repetitions {
                if n == 0 {
                    return Err("--repetitions must be at least 1".into());
                }
                s.repetitions = n;
            }
            let provider = provider
                .map(|k| ProviderConfig::default_of(&k))
                .transpose()?;
            let bin_dir = bin_dir
                .map(|dir| {
                    dir.canonicalize()
                        .map_err(|e| format!("--bin-dir {}: {e}", dir.display()))
                })
                .transpose()?;
            if !nix::unistd::geteuid().is_root() {
                return Err("run needs root (CRIU, network namespaces, VMs)".into());
            }
            let cancel = CancelToken::new();
            cancel
                .on_signals()
                .map_err(|e| format!("cannot catch SIGINT/SIGTERM: {e}"))?;
            let opts = RunOptions {
                results_dir: results.unwrap_or_else(|| results_root().join("runs")),
                provider,
                port,
                build: !no_build,
                bin_dir,
                keep,
                progress: !no_progress,
                cancel,
            };
            eprintln!(
                "scenario {}: {} workload cases x {} repetitions",
                s.name,
                s.cases().len(),
                s.repetitions,
            );
            let t0 = std::time::Instant::now();
            let summary = runner::run(&s, &opts).map_err(|e| e.to_string())?;
            let failed = summary
                .records
                .iter()
                .filter(|r| r.outcome == record::Outcome::Failed)
                .count();
            eprintln!(
                "{} migrations in {:.0} s ({failed} failed); results in {}",
                summary.records.len(),
                t0.elapsed().as_secs_f64(),
                summary.path.display()
            );
            if !no_report {
                let out = report_dir.unwrap_or_else(|| default_report_dir(&summary.path));
                let path = report::write(std::slice::from_ref(&summary.path), &out)
                    .map_err(|e| e.to_string())?;
                eprintln!("report: {}", path.display());
            }
            Ok(if failed > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Plan { scenario } => {
            let s = Scenario::load(&scenario).map_err(|e| e.to_string())?;
            println!(
                "scenario {} ({}): {}",
                s.name,
                s.provider.kind(),
                s.description
            );
            // `auto`'s twin is known once the nodes say what auto resolves to
            let methods = method::plan(&s, &probe::Capabilities::default());
            println!(
                "methods, in each repetition's order: {}",
                methods
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for c in s.cases() {
                println!(
                    "  {:<10} mtouch {}  ({}, {} repetitions)",
                    c.name,
                    c.argv().join(" "),
                    c.dirty_rate()
                        .map(|r| format!("dirty rate {:.2} MB/s", r / 1e6))
                        .unwrap_or_else(|| "dirty rate max".into()),
                    s.repetitions
                );
            }
            println!(
                "{} migrations",
                s.cases().len() * s.repetitions as usize * methods.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { results, out } => {
            let out = out.unwrap_or_else(|| default_report_dir(&results[0]));
            let path = report::write(&results, &out).map_err(|e| e.to_string())?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare {
            a,
            b,
            alpha,
            threshold,
            out,
            fail_on_regression,
        } => {
            let ra = record::read(&a).map_err(|e| e.to_string())?;
            let rb = record::read(&b).map_err(|e| e.to_string())?;
            let opts = CompareOptions {
                alpha,
                threshold,
                ..Default::default()
            };
            let cs = compare::compare(&ra, &rb, &opts);
            if cs.is_empty() {
                return Err(
                    "the two sets have no workload and method with successful runs in common"
                        .into(),
                );
            }
            let stem = |p: &PathBuf| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.display().to_string())
            };
            let mut na = compare::set_name(&ra, &stem(&a));
            let mut nb = compare::set_name(&rb, &stem(&b));
            if nb == na {
                // the same revision twice: name the sets by their files
                (na, nb) = (stem(&a), stem(&b));
            }
            let md = compare::markdown(&cs, &na, &nb, &opts);
            print!("{md}");
            if let Some(p) = out {
                std::fs::write(&p, &md).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            let regressed = cs.iter().any(|c| c.verdict == compare::Verdict::Regression);
            Ok(if regressed && fail_on_regression {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
