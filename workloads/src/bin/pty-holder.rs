//! pty-holder: holds both ends of a pseudo-terminal and passes data through it.
//!
//! ```text
//! pty-holder [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Opens a pty master (`/dev/ptmx`) and its slave (`/dev/pts/<n>`, raw mode), logs `Holds: pty
//! master_fd=<m> slave_fd=<s> index=<n>`; every heartbeat writes `ping <beat>` into the master
//! and reads it from the slave, then `pong <beat>` back the other way, each within 5 s; when
//! the stop file appears it does that once more, logs `Summary: beats=<n> failures=<f>
//! index=<n>` and `Finish`, and exits 0 when every exchange was exact. CRIU restores a pty
//! under the same index: on a node where that index is open (as it is on the same kernel
//! while the original is frozen) the restore fails.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{PTY_HOLDER_LOG, PTY_HOLDER_STOP};
use haul_workloads::holder::{setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

/// Hold a pty pair and pass data through it.
#[derive(Debug, Parser)]
#[command(name = "pty-holder", version)]
struct Args {
    /// Log file.
    #[arg(long, default_value = PTY_HOLDER_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = PTY_HOLDER_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn os(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// Opens a pty pair: (master, slave, index).
fn open_pty() -> Result<(File, File, u32), String> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ioctl(TIOCGPTN) on the fd just opened; the slave
    // path is built from the index the kernel returned; tcgetattr/tcsetattr on the slave fd
    // with a termios it fills in.
    unsafe {
        let m =
            libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC);
        if m < 0 {
            return Err(os("posix_openpt"));
        }
        let master = File::from_raw_fd(m);
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(os("grantpt/unlockpt"));
        }
        let mut index: libc::c_uint = 0;
        if libc::ioctl(m, libc::TIOCGPTN, &mut index) != 0 {
            return Err(os("TIOCGPTN"));
        }
        let path = std::ffi::CString::new(format!("/dev/pts/{index}")).expect("no NUL");
        let s = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(os("open /dev/pts/N"));
        }
        let slave = File::from_raw_fd(s);
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(s, &mut t) != 0 {
            return Err(os("tcgetattr"));
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(s, libc::TCSANOW, &t) != 0 {
            return Err(os("tcsetattr"));
        }
        Ok((master, slave, index))
    }
}

/// Writes `msg` into `from` and reads exactly it from `to` within 5 s.
fn pass(mut from: &File, mut to: &File, msg: &[u8]) -> Result<(), String> {
    from.write_all(msg).map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    while got.len() < msg.len() {
        match to.read(&mut buf) {
            Ok(0) => return Err("end of file on the pty".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} of {} bytes arrived within 5 s",
                        got.len(),
                        msg.len()
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if got != msg {
        return Err(format!(
            "sent {:?}, received {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&got)
        ));
    }
    Ok(())
}

fn exchange(master: &File, slave: &File, beat: u64) -> Result<(), String> {
    pass(master, slave, format!("ping {beat}\n").as_bytes())
        .map_err(|e| format!("master to slave: {e}"))?;
    pass(slave, master, format!("pong {beat}\n").as_bytes())
        .map_err(|e| format!("slave to master: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("pty-holder", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let (master, slave, index) = match open_pty() {
        Ok(p) => p,
        Err(e) => return setup_failed(log, reporter, e),
    };
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "pty",
        format_args!(
            "master_fd={} slave_fd={} index={index}",
            master.as_raw_fd(),
            slave.as_raw_fd()
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    h.run(|beat| exchange(&master, &slave, beat))?;
    let check = exchange(&master, &slave, u64::MAX);
    h.finish(check, format_args!("index={index}"))
}
