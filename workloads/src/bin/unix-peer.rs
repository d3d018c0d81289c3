//! unix-peer: a unix stream socket whose peer lives outside the migrated tree.
//!
//! ```text
//! unix-peer --serve PATH [--log F] [--stop-file F]     the peer (its own tree; not migrated)
//! unix-peer PATH [--log F] [--stop-file F] [--interval-ms MS]   the client (migrated)
//! ```
//!
//! The peer listens on the unix socket PATH and answers every request
//! (`haul_workloads::tcp_proto` frames) with the sequence number, the connection's running sum
//! and its served count. The client connects once, logs `Holds: unix-socket fd=<n> peer=<PATH>
//! ino=<socket inode>`, sends one request per heartbeat and checks each reply against its own
//! count; when the stop file appears it logs `Summary: beats=<n> failures=<f> requests=<r>` and
//! `Finish`, and exits 0 when every reply was right. CRIU dumps a connected unix socket whose
//! peer is outside the tree only with `--ext-unix-sk` (and the peer must then be there at
//! restore).

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{UNIX_PEER_LOG, UNIX_PEER_STOP};
use haul_workloads::holder::{setup_failed, Holder};
use haul_workloads::stop::StopFile;
use haul_workloads::tcp_proto::{Reply, Request};
use haul_workloads::worklog::LogWriter;

/// A unix stream socket connected to a peer outside the tree.
#[derive(Debug, Parser)]
#[command(name = "unix-peer", version)]
struct Args {
    /// The socket path (served with --serve, connected to otherwise).
    path: PathBuf,
    /// Be the peer: listen on PATH and answer.
    #[arg(long)]
    serve: bool,
    /// Log file (default unix-peer.log, or unix-peer-server.log with --serve).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Stop file to poll for.
    #[arg(long, default_value = UNIX_PEER_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two requests.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log = args.log.clone().unwrap_or_else(|| {
        PathBuf::from(if args.serve {
            "unix-peer-server.log"
        } else {
            UNIX_PEER_LOG
        })
    });
    haul_workloads::worklog::workload_main("unix-peer", &log, |log, reporter| {
        if args.serve {
            serve(&args, log, reporter)
        } else {
            client(&args, log, reporter)
        }
    })
}

fn serve(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let _ = std::fs::remove_file(&args.path);
    let listener = match UnixListener::bind(&args.path) {
        Ok(l) => l,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot listen on {}: {e}", args.path.display()),
            )
        }
    };
    listener.set_nonblocking(true)?;
    log.line(format_args!("Listening on {}", args.path.display()))?;
    reporter.report(StartCode::Ok)?;
    let stop = StopFile::new(&args.stop_file);
    let mut conns = 0u64;
    while !stop.requested() {
        match listener.accept() {
            Ok((mut s, _)) => {
                conns += 1;
                s.set_nonblocking(false)?;
                std::thread::spawn(move || {
                    let (mut served, mut sum) = (0u64, 0u64);
                    while let Ok(Some(req)) = Request::read_from(&mut s) {
                        served += 1;
                        sum = sum.wrapping_add(req.value);
                        let reply = Reply {
                            seq: req.seq,
                            sum,
                            served,
                        };
                        if reply.write_to(&mut s).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e),
        }
    }
    log.summary(format_args!("connections={conns}"))?;
    log.finish()?;
    Ok(true)
}

fn client(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let mut s = match UnixStream::connect(&args.path) {
        Ok(s) => s,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot connect to {}: {e}", args.path.display()),
            )
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let ino = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))?.ino();
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "unix-socket",
        format_args!(
            "fd={} peer={} ino={ino}",
            s.as_raw_fd(),
            args.path.display()
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    let (mut seq, mut sum) = (0u64, 0u64);
    let mut exchange = |s: &mut UnixStream| -> Result<(), String> {
        let value = seq.wrapping_mul(31).wrapping_add(7);
        let req = Request {
            seq: seq + 1,
            value,
        };
        req.write_to(s)
            .map_err(|e| format!("send request {}: {e}", req.seq))?;
        let reply = Reply::read_from(s)
            .map_err(|e| format!("reply to {}: {e}", req.seq))?
            .ok_or_else(|| {
                format!(
                    "the peer closed the socket before answering request {}",
                    req.seq
                )
            })?;
        seq += 1;
        sum = sum.wrapping_add(value);
        let want = Reply {
            seq,
            sum,
            served: seq,
        };
        if reply != want {
            return Err(format!("reply {reply:?}, expected {want:?}"));
        }
        Ok(())
    };
    h.run(|_| exchange(&mut s))?;
    let check = exchange(&mut s);
    h.finish(check, format_args!("requests={seq}"))
}
