//! file-follower: follows a file that another process keeps appending to (as `tail -f` does).
//!
//! ```text
//! file-follower [FILE] [--log F] [--stop-file F] [--interval-ms MS]            the follower
//! file-follower [FILE] --write [--log F] [--stop-file F] [--interval-ms MS]    the writer
//! ```
//!
//! The writer truncates FILE (default `followed.txt`) and appends one line `<n>\n` (n = 0, 1,
//! ...) per interval until its stop file appears. The follower opens FILE read-only, logs
//! `Holds: followed-file fd=<n> path=<path>`, and on every heartbeat reads what was appended
//! since, checking that the lines are 0, 1, 2, ... in order; when the stop file appears it
//! reads to the end, logs `Summary: beats=<n> failures=<f> lines=<l> offset=<bytes>` and
//! `Finish`, and exits 0 when every line was the next one. CRIU records the size of every file
//! a tree holds open and refuses to restore one whose size changed (`has bad size`): here the
//! writer changes it while the follower is frozen.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{FILE_FOLLOWER_LOG, FILE_FOLLOWER_STOP, FOLLOWED_FILE};
use haul_workloads::holder::{setup_failed, Holder};
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Follow a growing file, or be the process that grows it.
#[derive(Debug, Parser)]
#[command(name = "file-follower", version)]
struct Args {
    /// The followed file.
    #[arg(default_value = FOLLOWED_FILE)]
    file: PathBuf,
    /// Be the writer.
    #[arg(long)]
    write: bool,
    /// Log file (default file-follower.log, file-writer.log with --write).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Stop file to poll for (default file-follower-stop, file-writer-stop with --write).
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Milliseconds between two heartbeats (lines, for the writer).
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (log, _) = names(&args);
    haul_workloads::worklog::workload_main("file-follower", &log, |log, reporter| {
        if args.write {
            write(&args, log, reporter)
        } else {
            follow(&args, log, reporter)
        }
    })
}

fn names(args: &Args) -> (PathBuf, PathBuf) {
    let (log, stop) = if args.write {
        ("file-writer.log", "file-writer-stop")
    } else {
        (FILE_FOLLOWER_LOG, FILE_FOLLOWER_STOP)
    };
    (
        args.log.clone().unwrap_or_else(|| log.into()),
        args.stop_file.clone().unwrap_or_else(|| stop.into()),
    )
}

fn write(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let (_, stop) = names(args);
    let mut f = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_APPEND)
        .open(&args.file)
    {
        Ok(f) => f,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot open {}: {e}", args.file.display()),
            )
        }
    };
    reporter.report(StartCode::Ok)?;
    let stop = StopFile::new(stop);
    let mut n = 0u64;
    while !stop.requested() {
        f.write_all(format!("{n}\n").as_bytes())?;
        log.tick(Timestamp::now(), n, 1)?;
        n += 1;
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    log.summary(format_args!("lines={n}"))?;
    log.finish()?;
    Ok(true)
}

/// What the follower has read so far.
struct Follower {
    file: File,
    partial: Vec<u8>,
    lines: u64,
    offset: u64,
}

impl Follower {
    fn read_new(&mut self) -> Result<(), String> {
        let mut buf = [0u8; 8192];
        loop {
            let n = self
                .file
                .read(&mut buf)
                .map_err(|e| format!("read at {}: {e}", self.offset))?;
            if n == 0 {
                return Ok(());
            }
            self.offset += n as u64;
            self.partial.extend_from_slice(&buf[..n]);
            while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                let expected = self.lines;
                // Resynchronise after a bad line, so one change is one failure.
                self.lines = text.parse::<u64>().map_or(expected, |n| n) + 1;
                if text.parse::<u64>().ok() != Some(expected) {
                    return Err(format!(
                        "line {} of the file is {text:?}, expected \"{expected}\" (the file changed under the follower)",
                        expected + 1
                    ));
                }
            }
        }
    }
}

fn follow(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let (_, stop) = names(args);
    let file = match File::open(&args.file) {
        Ok(f) => f,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot open {}: {e}", args.file.display()),
            )
        }
    };
    let path = std::env::current_dir()?.join(&args.file);
    let mut h = Holder::new(log, stop, Duration::from_millis(args.interval_ms));
    h.holds(
        "followed-file",
        format_args!("fd={} path={}", file.as_raw_fd(), path.display()),
    )?;
    reporter.report(StartCode::Ok)?;
    let mut f = Follower {
        file,
        partial: Vec::new(),
        lines: 0,
        offset: 0,
    };
    h.run(|_| f.read_new())?;
    let check = f.read_new();
    h.finish(check, format_args!("lines={} offset={}", f.lines, f.offset))
}
