//! file-churn: keeps appending to and rewriting files in its working directory, and checks
//! every byte of them when told to stop (issue #18: migration without shared storage).
//!
//! ```text
//! file-churn [--dir churn] [--size 200m] [--files 40] [--logs 2] [--block 64k]
//!            [--rate 4m] [--tick-ms 10] [--seed N] [--log F] [--stop-file F]
//! ```
//!
//! Creates `--size` bytes of files in `--dir` (rewritten data files, a sparse file, appended
//! logs that rotate by rename: the layout is in `haul_workloads::churn`), reports start code
//! `O`, then every `--tick-ms` changes `--rate` bytes per second of it, one block per write:
//! about 70 % in-place rewrites of random blocks, 30 % appends, logging `t <sec>.<nsec> <ops>`
//! per tick. It keeps the generation of every block in memory, so wherever it runs when its
//! stop file appears (the node it migrated to) it reads every file back and checks every
//! block, then logs one `Fail:` line per differing file (the first 20), `Summary: files=..
//! bytes=.. rewrites=.. appends=.. rotations=.. bad_files=..`, `PASS` or `FAIL: <n> file(s)
//! differ`, and `Finish`; exits 0 when every file holds what it wrote.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::churn::{ChurnSpec, ChurnState, HEADER};
use haul_workloads::files::{FILE_CHURN_DIR, FILE_CHURN_LOG, FILE_CHURN_STOP};
use haul_workloads::mtouch_spec::parse_size;
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Rewrite and append to files until told to stop, then check every byte.
#[derive(Debug, Parser)]
#[command(name = "file-churn", version)]
struct Args {
    /// Directory of the files (relative to the working directory).
    #[arg(long, default_value = FILE_CHURN_DIR)]
    dir: PathBuf,
    /// Bytes of files in all (k/m/g suffixes).
    #[arg(long, default_value = "200m", value_parser = size)]
    size: u64,
    /// Rewritten data files.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    files: u32,
    /// Appended (and rotated) log files.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    logs: u32,
    /// Bytes per write (k/m suffixes).
    #[arg(long, default_value = "64k", value_parser = size)]
    block: u64,
    /// Bytes changed per second (k/m/g suffixes).
    #[arg(long, default_value = "4m", value_parser = size)]
    rate: u64,
    /// Milliseconds between two ticks.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Log file.
    #[arg(long, default_value = FILE_CHURN_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = FILE_CHURN_STOP)]
    stop_file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("file-churn", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> std::io::Result<bool> {
    if args.block < HEADER as u64 || args.block > 16 << 20 {
        log.fail(format_args!(
            "--block {} is outside {HEADER}..16m",
            args.block
        ))?;
        log.finish()?;
        reporter.report(StartCode::Failed)?;
        return Ok(false);
    }
    let spec = ChurnSpec {
        total: args.size,
        data_files: args.files,
        logs: args.logs,
        block: args.block as u32,
    };
    let started = Instant::now();
    let mut st = match ChurnState::create(&args.dir, spec) {
        Ok(s) => s,
        Err(e) => {
            log.fail(format_args!("cannot create {}: {e}", args.dir.display()))?;
            log.finish()?;
            reporter.report(StartCode::Failed)?;
            return Ok(false);
        }
    };
    log.line(format_args!(
        "file-churn: pid {}, {} bytes in {} data files, a sparse file and {} logs under {}, blocks of {}, {} bytes/s changed; created in {:.3}s",
        std::process::id(),
        st.bytes(),
        args.files,
        args.logs,
        args.dir.display(),
        args.block,
        args.rate,
        started.elapsed().as_secs_f64()
    ))?;
    reporter.report(StartCode::Ok)?;

    let stop = StopFile::new(&args.stop_file);
    let mut rng = args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let tick = Duration::from_millis(args.tick_ms.max(1));
    let mut budget = 0f64;
    let mut last = Instant::now();
    let mut fails = Vec::new();
    let mut ops = 0u64;
    while !stop.requested() {
        let now = Instant::now();
        budget += args.rate as f64 * now.duration_since(last).as_secs_f64();
        last = now;
        let mut n = 0;
        while budget >= args.block as f64 {
            budget -= args.block as f64;
            let r = next();
            let res = if args.logs > 0 && r % 10 < 3 {
                st.append((r >> 8) as usize)
            } else {
                st.rewrite(r >> 8)
            };
            if let Err(e) = res {
                fails.push(format!("cannot write: {e}"));
                break;
            }
            n += 1;
        }
        if !fails.is_empty() {
            break;
        }
        ops += n;
        log.tick(Timestamp::now(), ops, 1)?;
        std::thread::sleep(tick);
    }
    let bad = st.verify();
    for f in fails.iter().chain(bad.iter()).take(20) {
        log.fail(f)?;
    }
    log.summary(format_args!(
        "files={} bytes={} rewrites={} appends={} rotations={} bad_files={}",
        st.data.len()
            + 1
            + st.logs.len()
            + st.logs.iter().filter(|l| l.old_blocks.is_some()).count(),
        st.bytes(),
        st.rewrites,
        st.appends,
        st.rotations,
        bad.len()
    ))?;
    let ok = fails.is_empty() && bad.is_empty();
    if ok {
        log.line(format_args!("PASS: every file holds what file-churn wrote"))?;
    } else {
        log.line(format_args!(
            "FAIL: {} file(s) differ from what file-churn wrote",
            bad.len() + fails.len()
        ))?;
    }
    log.finish()?;
    Ok(ok)
}
