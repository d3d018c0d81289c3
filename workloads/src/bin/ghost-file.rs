//! ghost-file: holds an open file that was deleted (CRIU's "ghost file"), bigger than CRIU's
//! default ghost limit (1 MiB), and checks its content.
//!
//! ```text
//! ghost-file [--size BYTES] [--name F] [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Writes `--size` bytes (default 4m) of a known pattern to F (default `ghost-file.dat`) in the
//! working directory, unlinks it and keeps the fd; logs `Holds: ghost-file fd=<n> path=<path>
//! size=<bytes>`. Every heartbeat reads one 4 KiB block back through the fd; when the stop file
//! appears it reads the whole file (still unlinked, same size, every byte right), logs
//! `Summary: beats=<n> failures=<f> size=<bytes>` and `Finish`, and exits 0 when nothing failed.
//! CRIU dumps such a file into its images only up to `--ghost-limit` (1 MiB by default).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{GHOST_FILE_LOG, GHOST_FILE_STOP};
use haul_workloads::holder::{fill_pattern, parse_size, pattern_mismatch, setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

/// Seed of the file's pattern.
const SEED: u64 = 0x0067_686f_7374;
const BLOCK: u64 = 4096;

/// Hold a deleted file bigger than CRIU's ghost limit, and check it.
#[derive(Debug, Parser)]
#[command(name = "ghost-file", version)]
struct Args {
    /// Size of the file (k, m, g suffixes).
    #[arg(long, default_value = "4m", value_parser = parse_size)]
    size: u64,
    /// The file, created and deleted in the working directory.
    #[arg(long, default_value = "ghost-file.dat")]
    name: PathBuf,
    /// Log file.
    #[arg(long, default_value = GHOST_FILE_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = GHOST_FILE_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("ghost-file", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn create(args: &Args) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args.name)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < args.size {
        let n = (args.size - off).min(buf.len() as u64) as usize;
        fill_pattern(SEED, off, &mut buf[..n]);
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
    f.sync_all()?;
    std::fs::remove_file(&args.name)?;
    Ok(f)
}

fn check_block(f: &File, size: u64, block: u64) -> Result<(), String> {
    let off = block * BLOCK;
    let len = BLOCK.min(size.saturating_sub(off)) as usize;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, off)
        .map_err(|e| format!("read of {len} bytes at {off}: {e}"))?;
    match pattern_mismatch(SEED, off, &buf) {
        None => Ok(()),
        Some(at) => Err(format!(
            "byte {at} of the deleted file differs from its pattern"
        )),
    }
}

fn last_check(f: &File, size: u64) -> Result<(), String> {
    let st = f.metadata().map_err(|e| format!("fstat: {e}"))?;
    if st.nlink() != 0 {
        return Err(format!(
            "the file has {} links: it is no longer deleted",
            st.nlink()
        ));
    }
    if st.len() != size {
        return Err(format!("the file holds {} bytes, {size} written", st.len()));
    }
    (0..size.div_ceil(BLOCK)).try_for_each(|b| check_block(f, size, b))
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> std::io::Result<bool> {
    let f = match create(args) {
        Ok(f) => f,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot create {}: {e}", args.name.display()),
            )
        }
    };
    let path = std::env::current_dir()?.join(&args.name);
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "ghost-file",
        format_args!(
            "fd={} path={} size={}",
            f.as_raw_fd(),
            path.display(),
            args.size
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    let blocks = args.size.div_ceil(BLOCK).max(1);
    h.run(|beat| check_block(&f, args.size, beat % blocks))?;
    let check = last_check(&f, args.size);
    h.finish(check, format_args!("size={}", args.size))
}
