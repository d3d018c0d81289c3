//! uring-user: an io_uring instance in use (CRIU cannot dump io_uring).
//!
//! ```text
//! uring-user [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Sets up an io_uring (8 entries), writes `uring-user.dat` (64 KiB of a known pattern) in the
//! working directory, and logs `Holds: io-uring fd=<ring fd> file=<path>`. Every heartbeat
//! submits a NOP and waits for its completion; every 10th reads a 4 KiB block of the file
//! through the ring and checks it; when the stop file appears it reads the whole file through
//! the ring, logs `Summary: beats=<n> failures=<f> ops=<completions>` and `Finish`, and exits 0
//! when every operation completed right.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{URING_USER_LOG, URING_USER_STOP};
use haul_workloads::holder::{fill_pattern, pattern_mismatch, setup_failed, Holder};
use haul_workloads::worklog::LogWriter;
use io_uring::{opcode, types, IoUring};

const SEED: u64 = 0x0075_7269_6e67;
const FILE_LEN: usize = 64 << 10;
const BLOCK: usize = 4096;

/// Use an io_uring and check its completions.
#[derive(Debug, Parser)]
#[command(name = "uring-user", version)]
struct Args {
    /// Log file.
    #[arg(long, default_value = URING_USER_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = URING_USER_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

struct Ring {
    ring: IoUring,
    file: File,
    ops: u64,
}

impl Ring {
    /// Submits `entry` with `user_data` and waits for its completion; its result.
    fn one(&mut self, entry: io_uring::squeue::Entry, user_data: u64) -> Result<i32, String> {
        // SAFETY: every buffer an entry points to outlives the wait below (the caller's).
        unsafe { self.ring.submission().push(&entry.user_data(user_data)) }
            .map_err(|_| "the submission queue is full".to_string())?;
        self.ring
            .submit_and_wait(1)
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or("no completion after io_uring_enter")?;
        if cqe.user_data() != user_data {
            return Err(format!(
                "completion for {}, expected {user_data}",
                cqe.user_data()
            ));
        }
        self.ops += 1;
        Ok(cqe.result())
    }

    fn nop(&mut self, beat: u64) -> Result<(), String> {
        match self.one(opcode::Nop::new().build(), beat)? {
            0 => Ok(()),
            r => Err(format!("NOP completed with {r}")),
        }
    }

    fn read_block(&mut self, block: usize, tag: u64) -> Result<(), String> {
        let mut buf = vec![0u8; BLOCK];
        let off = (block * BLOCK % FILE_LEN) as u64;
        let e = opcode::Read::new(
            types::Fd(self.file.as_raw_fd()),
            buf.as_mut_ptr(),
            BLOCK as u32,
        )
        .offset(off)
        .build();
        let r = self.one(e, tag)?;
        if r != BLOCK as i32 {
            return Err(format!("read at {off} through the ring returned {r}"));
        }
        match pattern_mismatch(SEED, off, &buf) {
            None => Ok(()),
            Some(at) => Err(format!("byte {at} read through the ring is wrong")),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("uring-user", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let path = std::env::current_dir()?.join("uring-user.dat");
    let mut data = vec![0u8; FILE_LEN];
    fill_pattern(SEED, 0, &mut data);
    if let Err(e) = std::fs::write(&path, &data) {
        return setup_failed(
            log,
            reporter,
            format_args!("cannot write {}: {e}", path.display()),
        );
    }
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return setup_failed(log, reporter, format_args!("io_uring_setup: {e}")),
    };
    let mut r = Ring {
        ring,
        file: File::open(&path)?,
        ops: 0,
    };
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "io-uring",
        format_args!("fd={} file={}", r.ring.as_raw_fd(), path.display()),
    )?;
    reporter.report(StartCode::Ok)?;
    h.run(|beat| {
        r.nop(beat)?;
        if beat % 10 == 0 {
            r.read_block(beat as usize / 10, u64::MAX - beat)?;
        }
        Ok(())
    })?;
    let check = (0..FILE_LEN / BLOCK).try_for_each(|b| r.read_block(b, 1 << 40 | b as u64));
    let ops = r.ops;
    h.finish(check, format_args!("ops={ops}"))
}
