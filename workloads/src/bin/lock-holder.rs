//! lock-holder: holds a `flock(2)` lock and a POSIX (`fcntl`) record lock.
//!
//! ```text
//! lock-holder [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Locks `lock-holder.flock` (flock, exclusive) and `lock-holder.fcntl` (fcntl write lock on
//! the whole file) in the working directory, logs `Holds: file-locks flock_fd=<n>
//! flock_path=<p> fcntl_fd=<n> fcntl_path=<p>`; every 50th heartbeat, and once more when the
//! stop file appears, a forked child opens both paths afresh and must find both locked (flock
//! with LOCK_NB fails, F_GETLK names the parent). Then `Summary: beats=<n> failures=<f>
//! checks=<c>`, `Finish`, exit 0 when the locks held throughout. CRIU dumps locks only with
//! `--file-locks`, and restores them only when the files are the same ones on the destination.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{LOCK_HOLDER_LOG, LOCK_HOLDER_STOP};
use haul_workloads::holder::{setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

const FLOCK_FILE: &str = "lock-holder.flock";
const FCNTL_FILE: &str = "lock-holder.fcntl";

/// Hold file locks and check nobody else can take them.
#[derive(Debug, Parser)]
#[command(name = "lock-holder", version)]
struct Args {
    /// Log file.
    #[arg(long, default_value = LOCK_HOLDER_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = LOCK_HOLDER_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn whole_file_lock(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l
}

fn lock(flock_file: &File, fcntl_file: &File) -> Result<(), String> {
    // SAFETY: flock and fcntl(F_SETLK) on fds this process owns, with a valid struct flock.
    unsafe {
        if libc::flock(flock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 {
            return Err(format!(
                "flock {FLOCK_FILE}: {}",
                io::Error::last_os_error()
            ));
        }
        let l = whole_file_lock(libc::F_WRLCK);
        if libc::fcntl(fcntl_file.as_raw_fd(), libc::F_SETLK, &l) != 0 {
            return Err(format!(
                "fcntl F_SETLK {FCNTL_FILE}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// In a forked child: both locks must be held by someone else (the parent).
fn child_check() -> i32 {
    let (Ok(a), Ok(b)) = (open(Path::new(FLOCK_FILE)), open(Path::new(FCNTL_FILE))) else {
        return 3;
    };
    // SAFETY: flock/fcntl(F_GETLK) on fds the child just opened; getppid cannot fail.
    unsafe {
        if libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 {
            return 1;
        }
        let mut l = whole_file_lock(libc::F_WRLCK);
        if libc::fcntl(b.as_raw_fd(), libc::F_GETLK, &mut l) != 0
            || l.l_type != libc::F_WRLCK as libc::c_short
            || l.l_pid != libc::getppid()
        {
            return 2;
        }
    }
    0
}

fn check_locks() -> Result<(), String> {
    // SAFETY: the process is single-threaded; the child only makes system calls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = child_check();
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 if libc::WIFEXITED(status) => Ok(()),
        1 => Err(format!(
            "another process could flock {FLOCK_FILE}: the lock is gone"
        )),
        2 => Err(format!(
            "F_GETLK finds no write lock of this process on {FCNTL_FILE}"
        )),
        _ => Err(format!("the checking child failed (status {status:#x})")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("lock-holder", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let files = open(Path::new(FLOCK_FILE)).and_then(|a| Ok((a, open(Path::new(FCNTL_FILE))?)));
    let (a, b) = match files {
        Ok(f) => f,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot open the lock files: {e}"),
            )
        }
    };
    if let Err(e) = lock(&a, &b) {
        return setup_failed(log, reporter, e);
    }
    let cwd = std::env::current_dir()?;
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "file-locks",
        format_args!(
            "flock_fd={} flock_path={} fcntl_fd={} fcntl_path={}",
            a.as_raw_fd(),
            cwd.join(FLOCK_FILE).display(),
            b.as_raw_fd(),
            cwd.join(FCNTL_FILE).display()
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    let mut checks = 0u64;
    h.run(|beat| {
        if beat % 50 == 0 {
            checks += 1;
            check_locks()?;
        }
        Ok(())
    })?;
    let check = check_locks();
    h.finish(check, format_args!("checks={}", checks + 1))
}
