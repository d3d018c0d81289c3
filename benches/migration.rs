//! Whole migrations on the local provider: mtouch at the HOWTO's dirty rate (everything
//! pre-touched, one random page every 100 ms) moved between two network namespaces by each
//! strategy this kernel supports, beside plain CRIU (dump to a page server, copy the other
//! images, restore) of the same workload.
//!
//! ```text
//! cargo build --release --workspace        # haul, mtouch and haul-launch
//! cargo bench --bench migration            # 64 MiB, 256 MiB, 1 GiB: about ten minutes
//! HAUL_BENCH_SIZES=256m cargo bench --bench migration -- stop-copy
//! ```
//!
//! Every migration is measured once and gives two values: `downtime` (the longest pause
//! the workload saw between two touches, from its own log) and `total` (the whole
//! migration, wall clock). Throughput is the workload's memory. Every moved workload must
//! pass its own check on the destination, or the bench panics. Criterion's warm-up and
//! measurement times are set tiny on purpose: each sample is one migration, ten per bench.
//!
//! At the end a table of medians beside the physical floor (memory / link bandwidth, the
//! link measured with a TCP stream between two other namespaces) is printed and written to
//! `target/haul-bench/`. Under `cargo test --all-targets` (criterion's test mode) one
//! migration per strategy at 64 MiB runs: the quick mode that keeps this bench alive in CI.
//! Skips, with the reason, without root, CRIU or the built binaries.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use haul_harness::provider::{self, local::LocalConfig, ProviderConfig};
use haul_harness::record::Figures;
use haul_harness::runner::Runner;
use haul_harness::scenario::{Scenario, WorkloadCase};
use haul_harness::NodePair;

/// The methods measured: haul's strategies, then plain CRIU as `criu`.
const METHODS: &[&str] = &["stop-copy", "post-copy", "pre-copy", "hybrid", "criu"];

/// Why this machine cannot run the bench, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces and CRIU)".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(haul::criu::Criu::locate_checked()) {
        return Some(format!("no usable CRIU: {e}"));
    }
    let tree = provider::local::source_tree()?;
    for b in ["haul", "mtouch", "haul-launch"] {
        let p = tree.join("target/release").join(b);
        if !p.is_file() {
            return Some(format!(
                "{} is missing: run `cargo build --release --workspace` first",
                p.display()
            ));
        }
    }
    None
}

/// Criterion's test mode (`cargo test --all-targets`) runs without `--bench`.
fn quick_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The memory sizes: `HAUL_BENCH_SIZES` (`64m 256m`), else all three, or 64m in quick mode.
fn sizes() -> Vec<String> {
    match std::env::var("HAUL_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ if quick_mode() => vec!["64m".into()],
        _ => vec!["64m".into(), "256m".into(), "1g".into()],
    }
}

fn scenario(sizes: &[String]) -> Scenario {
    let list = sizes
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
name = "bench"
description = "cargo bench --bench migration"
repetitions = 1
strategies = ["stop-copy", "post-copy", "pre-copy", "hybrid"]
baseline = true
settle_secs = 0.5
after_secs = 0.5
timeout_secs = 180
[provider]
kind = "local"
[[workloads]]
name = "size"
program = "mtouch"
sizes = [{list}]
pre = "all"
pauses = [100000]
pattern = "random"
"#
    );
    Scenario::parse(&text, "benches/migration.rs").expect("the bench's scenario")
}

/// One migration's figures, as recorded.
#[derive(Debug, Clone, Copy)]
struct Sample {
    downtime: f64,
    total: f64,
    frozen: Option<f64>,
    restore: Option<f64>,
}

/// Runs migrations, keeps each one's figures for the second value and the summary.
struct Bench<'a> {
    runner: Runner<'a>,
    seq: RefCell<u32>,
    /// Figures not yet reported as `total`, per (size, method).
    unreported: RefCell<BTreeMap<(String, String), VecDeque<Sample>>>,
    /// Every sample, per (size, method).
    all: RefCell<BTreeMap<(String, String), Vec<Sample>>>,
}

impl Bench<'_> {
    /// One migration of a fresh workload; panics when it fails or the workload's check does.
    fn migrate(&self, case: &WorkloadCase, method: &str) -> Sample {
        let seq = {
            let mut s = self.seq.borrow_mut();
            *s += 1;
            *s
        };
        let a = if method == "criu" {
            self.runner.criu_once(case, seq)
        } else {
            self.runner.haul_once(case, method, seq)
        };
        if let Some(e) = &a.error {
            panic!("{method} of mtouch {}: {e}", case.label());
        }
        assert!(
            a.check.passed,
            "{method} of mtouch {}: the workload's check failed ({:?})",
            case.label(),
            a.check
        );
        let f: &Figures = &a.figures;
        let s = Sample {
            downtime: f
                .observed_downtime_secs
                .expect("the workload's log gives its longest pause"),
            total: f.total_secs.expect("every migration has a total"),
            frozen: f.frozen_secs,
            restore: f.restore_secs,
        };
        let key = (size_label(case), method.to_string());
        self.all.borrow_mut().entry(key).or_default().push(s);
        s
    }

    /// `iters` downtimes; their totals are kept for [`Bench::totals`].
    fn downtimes(&self, case: &WorkloadCase, method: &str, iters: u64) -> Duration {
        let mut sum = 0.0;
        for _ in 0..iters {
            let s = self.migrate(case, method);
            sum += s.downtime;
            self.unreported
                .borrow_mut()
                .entry((size_label(case), method.to_string()))
                .or_default()
                .push_back(s);
        }
        Duration::from_secs_f64(sum)
    }

    /// `iters` totals: those of migrations already made for `downtime`, then new ones.
    fn totals(&self, case: &WorkloadCase, method: &str, iters: u64) -> Duration {
        let mut sum = 0.0;
        for _ in 0..iters {
            let kept = self
                .unreported
                .borrow_mut()
                .get_mut(&(size_label(case), method.to_string()))
                .and_then(VecDeque::pop_front);
            sum += kept.unwrap_or_else(|| self.migrate(case, method)).total;
        }
        Duration::from_secs_f64(sum)
    }
}

fn size_label(case: &WorkloadCase) -> String {
    haul_harness::scenario::human_size(case.size_bytes)
}

/// TCP bandwidth between two fresh namespaces joined like the provider's (bytes/s): the
/// median of three 1 GiB streams.
fn link_bandwidth() -> Option<f64> {
    use nix::sched::{setns, CloneFlags};
    let pair = NodePair::new("bw").ok()?;
    let enter = |ns: &str| -> std::io::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
        setns(f, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
    };
    const BYTES: usize = 1 << 30;
    let addr = format!("{}:27499", pair.b.addr);
    let (ns_a, ns_b) = (pair.a.netns.clone(), pair.b.netns.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn({
        let addr = addr.clone();
        move || -> std::io::Result<()> {
            enter(&ns_b)?;
            let l = std::net::TcpListener::bind(&addr)?;
            let _ = ready_tx.send(());
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..3 {
                let (mut s, _) = l.accept()?;
                while s.read(&mut buf)? > 0 {}
                s.write_all(b"k")?;
            }
            Ok(())
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).ok()?;
    let client = std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
        enter(&ns_a)?;
        let buf = vec![0x5au8; 1 << 20];
        let mut rates = Vec::new();
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(&addr)?;
            let t = Instant::now();
            for _ in 0..BYTES / buf.len() {
                s.write_all(&buf)?;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)?;
            rates.push(BYTES as f64 / t.elapsed().as_secs_f64());
        }
        Ok(rates)
    });
    let mut rates = client.join().ok()?.ok()?;
    server.join().ok()?.ok()?;
    rates.sort_by(f64::total_cmp);
    rates.get(1).copied()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn secs(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.3} s"))
}

/// The medians per size and method beside the floor, as markdown.
fn summary(bench: &Bench, cases: &[WorkloadCase], bandwidth: Option<f64>) -> String {
    let env = bench.runner.environment();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mut out = format!(
        "# cargo bench --bench migration\n\n\
         - git {}{}; {}; CPU {cpu}\n\
         - source kernel {}, CRIU {}; destination kernel {}, CRIU {}\n\
         - provider: {}\n\
         - link: TCP between two namespaces over a veth pair, {}\n\
         - workload: mtouch, everything pre-touched, one random page every 100 ms (the HOWTO)\n\
         - downtime: the longest pause the workload saw; floor: memory / link bandwidth, \
         the time just to move the pages once\n\n\
         | memory | method | n | downtime | total | frozen | restore | floor |\n\
         |---|---|---|---|---|---|---|---|\n",
        env.git_rev,
        if env.git_dirty {
            " (uncommitted changes)"
        } else {
            ""
        },
        env.harness_host,
        env.source.kernel,
        env.source.criu_version,
        env.destination.kernel,
        env.destination.criu_version,
        env.provider_detail,
        bandwidth.map_or("not measured".into(), |b| format!(
            "{:.2} GiB/s",
            b / (1u64 << 30) as f64
        )),
    );
    let all = bench.all.borrow();
    for case in cases {
        let size = size_label(case);
        for m in METHODS {
            let Some(s) = all.get(&(size.clone(), m.to_string())) else {
                continue;
            };
            let col = |f: fn(&Sample) -> Option<f64>| median(s.iter().filter_map(f).collect());
            out += &format!(
                "| {size} | {} | {} | {} | {} | {} | {} | {} |\n",
                if *m == "criu" { "plain CRIU" } else { m },
                s.len(),
                secs(col(|x| Some(x.downtime))),
                secs(col(|x| Some(x.total))),
                secs(col(|x| x.frozen)),
                secs(col(|x| x.restore)),
                secs(bandwidth.map(|b| case.size_bytes as f64 / b)),
            );
        }
    }
    out
}

fn migration(c: &mut Criterion) {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: migration benches: {why}");
        return;
    }
    let sizes = sizes();
    let scenario = scenario(&sizes);
    let cases = scenario.cases();
    let tag = format!("bench-{}", std::process::id());
    let prov = provider::provision(&ProviderConfig::Local(LocalConfig::default()), &tag)
        .expect("the local provider's two nodes");
    let tree = provider::local::source_tree();
    let runner = Runner::new(&scenario, prov.as_ref(), &tag, 27590, tree.as_deref())
        .expect("haul serve on the destination node");
    let unavailable: BTreeMap<String, String> = runner
        .environment()
        .source
        .unavailable
        .iter()
        .chain(&runner.environment().destination.unavailable)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (s, why) in &unavailable {
        eprintln!("skipped: {s}: {why}");
    }
    let bench = Bench {
        runner,
        seq: RefCell::new(0),
        unreported: RefCell::default(),
        all: RefCell::default(),
    };
    for case in &cases {
        let mut g = c.benchmark_group(format!("migrate/{}", size_label(case)));
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(1))
            .throughput(Throughput::Bytes(case.size_bytes));
        for &m in METHODS {
            if unavailable.contains_key(m) {
                continue;
            }
            g.bench_function(BenchmarkId::new(m, "downtime"), |b| {
                b.iter_custom(|iters| bench.downtimes(case, m, iters))
            });
            g.bench_function(BenchmarkId::new(m, "total"), |b| {
                b.iter_custom(|iters| bench.totals(case, m, iters))
            });
        }
        g.finish();
    }
    let bandwidth = link_bandwidth();
    let text = summary(&bench, &cases, bandwidth);
    println!("\n{text}");
    if let Some(t) = &tree {
        let dir = t.join("target/haul-bench");
        let name = format!(
            "migration-{}.md",
            haul_harness::record::utc(haul_harness::record::now_unix() as u64, true)
        );
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(dir.join(&name), &text).is_ok() {
            println!("written to {}", dir.join(name).display());
        }
    }
    drop(bench);
    drop(prov);
}

criterion::criterion_group! {
    name = benches;
    // criterion's own plots need fonts these machines lack; the summary table is the report
    config = Criterion::default().without_plots();
    targets = migration
}
criterion::criterion_main!(benches);
