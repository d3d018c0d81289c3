//! Whole migrations, as harness scenarios: `cargo bench --bench migration` runs mtouch at the
//! HOWTO's dirty rate (everything pre-touched, one random page every 100 ms) between two
//! local nodes with every haul strategy this kernel supports, each beside its plain-CRIU
//! twin, through `haul-harness`'s own runner, and prints the harness's report: one results
//! format and one statistics code path for local, VM and bench runs. Criterion keeps the
//! micro-benchmarks (benches/hot_path.rs).
//!
//! ```text
//! cargo build --release --workspace        # haul, mtouch, haul-launch, link-probe
//! cargo bench --bench migration            # 64 MiB, 256 MiB, 1 GiB, 5 repetitions
//! HAUL_BENCH_SIZES=256m HAUL_BENCH_REPS=3 cargo bench --bench migration -- post-copy
//! ```
//!
//! Arguments after `--` that are not options pick strategies by substring. The results file
//! and the report (Markdown, plots) go to `target/haul-bench/`. Under `cargo test
//! --all-targets` (no `--bench` argument) one repetition at 64 MiB runs: the quick mode that
//! keeps this bench alive in CI. Without root, CRIU or the built binaries it says why and
//! does nothing.

use std::path::PathBuf;
use std::process::ExitCode;

use haul_harness::cancel::CancelToken;
use haul_harness::runner::{self, RunOptions};
use haul_harness::scenario::Scenario;
use haul_harness::{provider, report};
use haul_test_support::Need;

const STRATEGIES: [&str; 4] = ["stop-copy", "post-copy", "pre-copy", "hybrid"];

fn quick_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.into())
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn scenario() -> Scenario {
    let quick = quick_mode();
    let sizes = list(
        "HAUL_BENCH_SIZES",
        if quick { "64m" } else { "64m 256m 1g" },
    );
    let reps: u32 = std::env::var("HAUL_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 1 } else { 5 });
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let strategies: Vec<String> = STRATEGIES
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.contains(f.as_str())))
        .map(|s| format!("{s:?}"))
        .collect();
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        r#"
name = "bench"
description = "cargo bench --bench migration: mtouch at the HOWTO's dirty rate, every strategy beside its twin"
repetitions = {reps}
strategies = [{}]
twins = true
settle_secs = 0.5
after_secs = 0.5
timeout_secs = 180
link_probe_bytes = {}
[provider]
kind = "local"
[[workloads]]
name = "size"
program = "mtouch"
sizes = [{}]
pre = "all"
pauses = [100000]
pattern = "random"
"#,
        strategies.join(", "),
        if quick { 64 << 20 } else { 1u64 << 30 },
        q(&sizes),
    );
    Scenario::parse(&text, "benches/migration.rs").expect("the bench's scenario")
}

fn cannot_run(bins: &std::path::Path) -> Option<String> {
    if let Some(why) = [Need::Root, Need::Criu].iter().find_map(Need::missing) {
        return Some(why);
    }
    haul_harness::HAUL_PROGRAMS
        .iter()
        .map(|b| bins.join(b))
        .find(|p| !p.is_file())
        .map(|p| {
            format!(
                "{} is missing: cargo build --release --workspace",
                p.display()
            )
        })
}

fn main() -> ExitCode {
    let Some(tree) = provider::local::source_tree() else {
        eprintln!("skipped: migration bench: not inside haul's source tree");
        return ExitCode::SUCCESS;
    };
    let bins = tree.join("target/release");
    if let Some(why) = cannot_run(&bins) {
        println!("skipped: migration bench: {why}");
        return ExitCode::SUCCESS;
    }
    let scenario = scenario();
    let out = tree.join("target/haul-bench");
    let cancel = CancelToken::new();
    if let Err(e) = cancel.on_signals() {
        eprintln!("migration bench: cannot catch signals: {e}");
    }
    let opts = RunOptions {
        results_dir: out.join("runs"),
        port: 27590,
        bin_dir: Some(bins),
        progress: !quick_mode(),
        cancel,
        ..Default::default()
    };
    let summary = match runner::run(&scenario, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("migration bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir: PathBuf = out.join("reports").join(
        summary
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bench".into()),
    );
    match report::write(std::slice::from_ref(&summary.path), &dir) {
        Ok(p) => {
            println!("{}", std::fs::read_to_string(&p).unwrap_or_default());
            println!(
                "report: {}\nresults: {}",
                p.display(),
                summary.path.display()
            );
        }
        Err(e) => {
            eprintln!("migration bench: the report: {e}");
            return ExitCode::FAILURE;
        }
    }
    let failed: Vec<String> = summary
        .records
        .iter()
        .filter(|r| r.outcome == haul_harness::record::Outcome::Failed)
        .map(|r| {
            format!(
                "{} {}: {}",
                r.method,
                r.workload.label,
                r.error.as_deref().unwrap_or("")
            )
        })
        .collect();
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "migration bench: {} migrations failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
        ExitCode::FAILURE
    }
}
