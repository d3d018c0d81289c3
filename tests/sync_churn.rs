//! File sync against a live writer: `file-churn` keeps rewriting and appending to its files
//! while rounds run; then it is stopped (SIGSTOP, standing in for CRIU's freeze), the final
//! round and the install run, the destination's copy must equal the source tree, and the
//! writer, resumed and told to stop, must find every block it wrote.
//!
//! Figures per round (files, bytes, time) and the frozen part are printed; with
//! `HAUL_SYNC_RESULTS=FILE` they are also appended to FILE as a markdown table (what
//! results/sync-<date>.md holds). `HAUL_SYNC_SIZE` (default 32m) and `HAUL_SYNC_RATE` (default
//! 4m) set the workload; the recorded runs use 200m.

mod sync_support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haul::sync::{loopback, Decision, RoundPolicy, RoundStats};
use haul_workloads::files::{FILE_CHURN_LOG, FILE_CHURN_STOP};
use haul_workloads::worklog::analyze;
use sync_support::*;

fn churn_bin() -> PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_haul")).with_file_name("file-churn")
}

/// Why the test cannot run (file-churn not built), or `None`.
fn churn_missing() -> Option<String> {
    (!churn_bin().exists()).then(|| {
        "needs file-churn built next to haul (run the tests with `cargo test --workspace`)".into()
    })
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn a_live_writer_moves_with_its_files() {
    let bin = churn_bin();
    let size = std::env::var("HAUL_SYNC_SIZE").unwrap_or_else(|_| "32m".into());
    let rate = std::env::var("HAUL_SYNC_RATE").unwrap_or_else(|_| "4m".into());
    let pair = Pair::new();
    let log = pair.src.join(FILE_CHURN_LOG);
    let child = Child(
        Command::new(&bin)
            .args(["--size", &size, "--rate", &rate])
            .current_dir(&pair.src)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while analyze(&log).map(|v| v.ticks).unwrap_or(0) < 20 {
        assert!(Instant::now() < deadline, "file-churn did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let (mut src, mut dst, _) = loopback::open(pair.src_cfg("churn"), pair.dst_cfg()).unwrap();
    let policy = RoundPolicy::default();
    let mut rounds: Vec<RoundStats> = Vec::new();
    let decision = loop {
        rounds.push(loopback::run_round(&mut src, &mut dst, false).unwrap());
        if let Decision::Freeze(why) = policy.decide(src.history()) {
            break why;
        }
    };
    // the freeze
    let frozen_at = Instant::now();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let last = loopback::run_round(&mut src, &mut dst, true).unwrap();
    let final_round = frozen_at.elapsed();
    let t = Instant::now();
    let installed = dst.install().map_err(|f| f.to_string()).unwrap();
    let install = t.elapsed();
    let frozen = frozen_at.elapsed();
    rounds.push(last);
    // the copy equals the (frozen) source tree
    let want = snapshot(&pair.src);
    let got = snapshot(&pair.dst());
    assert_same(&want, &got, "the destination's copy");
    installed.commit().unwrap();
    let total = started.elapsed();

    // the writer finds every block it wrote (on the tree equal to the copy)
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    std::fs::write(pair.src.join(FILE_CHURN_STOP), b"").unwrap();
    let mut child = child;
    let status = child.0.wait().unwrap();
    let v = analyze(&log).unwrap();
    assert!(v.passed() && status.success(), "{v}");

    let mut table = String::new();
    table.push_str(&format!(
        "\nfile-churn --size {size} --rate {rate}; rounds until: {decision}\n\n\
         | round | frozen | files sent | payload MiB | literal MiB | delta MiB | wire MiB | source s | dest write MiB | dest apply s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n"
    ));
    for r in &rounds {
        let a = r.applied.unwrap_or_default();
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.3} |\n",
            r.round,
            if r.final_round { "yes" } else { "no" },
            r.files_sent,
            r.payload_bytes() as f64 / 1048576.0,
            r.literal_bytes as f64 / 1048576.0,
            r.delta_bytes as f64 / 1048576.0,
            r.wire_bytes as f64 / 1048576.0,
            r.elapsed.as_secs_f64(),
            a.bytes_written as f64 / 1048576.0,
            a.apply_micros as f64 / 1e6,
        ));
    }
    table.push_str(&format!(
        "\nfrozen: final round {:.3} s + install {:.3} s = {:.3} s; whole sync {:.3} s; \
         the frozen part is {:.1} % of it; writer: {}\n",
        final_round.as_secs_f64(),
        install.as_secs_f64(),
        frozen.as_secs_f64(),
        total.as_secs_f64(),
        100.0 * frozen.as_secs_f64() / total.as_secs_f64(),
        v.summary.clone().unwrap_or_default(),
    ));
    println!("{table}");
    if let Ok(out) = std::env::var("HAUL_SYNC_RESULTS") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .unwrap();
        f.write_all(table.as_bytes()).unwrap();
    }
    // a converging writer: the final round moves much less than the first (at the default
    // rate; an unoptimised build is too slow for the rounds to outpace the writer, and a
    // faster writer may outpace any build: then the policy stops at a plateau)
    if !cfg!(debug_assertions) && std::env::var("HAUL_SYNC_RATE").is_err() {
        assert!(
            rounds.last().unwrap().payload_bytes() * 4 < rounds[0].payload_bytes(),
            "{table}"
        );
    }
}

fn main() -> std::process::ExitCode {
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![test!(
        a_live_writer_moves_with_its_files,
        Check(churn_missing)
    )])
}
