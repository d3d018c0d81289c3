//! rec-writer: appends checksummed records to a file on the shared directory, and verifies it.
//!
//! ```text
//! rec-writer [FILE] [--payload BYTES] [--interval-us US] [--log F] [--stop-file F]
//! ```
//!
//! Appends record 0, 1, 2, ... (`haul_workloads::records` has the layout) to FILE (default
//! `records.dat`, truncated at start), each in one `write(2)` on an `O_APPEND` fd, logging
//! `t <sec>.<nsec> <seq>` per record. When the stop file appears it reads the file back: every
//! record whole, checksummed, in sequence, none missing (it knows how many it wrote), and logs
//! `Summary: records=<n> bytes=<b>` (a harness can re-check the file later with
//! `records::verify_file(FILE, Some(n))`) or a `Fail:` line saying which record at which offset
//! is wrong, then `Finish`; exits 0 when the file is intact.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{REC_WRITER_DATA, REC_WRITER_LOG, REC_WRITER_STOP};
use haul_workloads::records::{encode, record_len, verify_file, MAX_PAYLOAD};
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Append checksummed records to a file, then verify it.
#[derive(Debug, Parser)]
#[command(name = "rec-writer", version)]
struct Args {
    /// The record file (relative to the working directory).
    #[arg(default_value = REC_WRITER_DATA)]
    file: PathBuf,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_PAYLOAD)))]
    payload: u32,
    /// Microseconds between two records.
    #[arg(long, default_value_t = 10_000)]
    interval_us: u64,
    /// Log file.
    #[arg(long, default_value = REC_WRITER_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = REC_WRITER_STOP)]
    stop_file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("rec-writer", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> std::io::Result<bool> {
    log.line(format_args!(
        "rec-writer: pid {}, file {}, {} payload bytes ({} per record)",
        std::process::id(),
        args.file.display(),
        args.payload,
        record_len(args.payload)
    ))?;
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_APPEND)
        .open(&args.file)
    {
        Ok(f) => f,
        Err(e) => {
            log.fail(format_args!("cannot open {}: {e}", args.file.display()))?;
            log.finish()?;
            reporter.report(StartCode::Failed)?;
            return Ok(false);
        }
    };
    reporter.report(StartCode::Ok)?;

    let stop = StopFile::new(&args.stop_file);
    let mut seq = 0u64;
    let mut fails = Vec::new();
    while !stop.requested() {
        let rec = encode(seq, args.payload);
        match file.write(&rec) {
            Ok(n) if n == rec.len() => {}
            Ok(n) => {
                fails.push(format!(
                    "short write of record {seq}: {n} of {} bytes",
                    rec.len()
                ));
                break;
            }
            Err(e) => {
                fails.push(format!("cannot append record {seq}: {e}"));
                break;
            }
        }
        log.tick(Timestamp::now(), seq, 1)?;
        seq += 1;
        std::thread::sleep(Duration::from_micros(args.interval_us));
    }
    drop(file);
    let bytes = seq * record_len(args.payload) as u64;
    match verify_file(&args.file, Some(seq)) {
        Ok(report) if report.bytes == bytes => {}
        Ok(report) => fails.push(format!(
            "{} holds {} bytes, {bytes} written",
            args.file.display(),
            report.bytes
        )),
        Err(e) => fails.push(e.to_string()),
    }
    for f in &fails {
        log.fail(f)?;
    }
    log.summary(format_args!("records={seq} bytes={bytes}"))?;
    log.finish()?;
    Ok(fails.is_empty())
}
