//! port-listener: a listening TCP socket on a fixed port (which may be taken on the destination).
//!
//! ```text
//! port-listener [--listen ADDR:PORT] [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Listens on ADDR:PORT (default 127.0.0.1:0: a free port), logs `Holds: tcp-listen fd=<n>
//! addr=<ADDR:PORT>` and a heartbeat; every 100th heartbeat, and once more when the stop file
//! appears, it connects to its own address, accepts that connection and passes a byte both
//! ways (so the socket is still bound to the same port and still listening, as a client would
//! find it); then `Summary: beats=<n> failures=<f> port=<p> accepted=<a>`, `Finish`, exit 0 when
//! every check passed. CRIU restores the socket bound to the same port: when another process
//! listens there on the destination the restore fails (`Address already in use`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{PORT_LISTENER_LOG, PORT_LISTENER_STOP};
use haul_workloads::holder::{setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

/// Listen on a TCP port and check it still accepts.
#[derive(Debug, Parser)]
#[command(name = "port-listener", version)]
struct Args {
    /// Address to listen on (port 0: a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Log file.
    #[arg(long, default_value = PORT_LISTENER_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = PORT_LISTENER_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("port-listener", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

/// Connects to `addr`, accepts on `l`, and passes one byte each way.
fn self_connect(l: &TcpListener, addr: SocketAddr) -> Result<(), String> {
    let now = l.local_addr().map_err(|e| format!("getsockname: {e}"))?;
    if now != addr {
        return Err(format!("the socket is bound to {now}, not {addr}"));
    }
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let me = c.local_addr().map_err(|e| e.to_string())?;
    // Other clients may be waiting in the backlog: accept until this connection comes.
    l.set_nonblocking(false).map_err(|e| e.to_string())?;
    let accepted = (0..64)
        .map(|_| l.accept())
        .find(|r| !matches!(r, Ok((_, peer)) if *peer != me));
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (mut a, _) = accepted
        .ok_or_else(|| format!("accept on {addr}: 64 other connections before this one"))?
        .map_err(|e| format!("accept on {addr}: {e}"))?;
    let io = |e: io::Error| format!("exchange on {addr}: {e}");
    c.write_all(b"p").map_err(io)?;
    let mut b = [0u8; 1];
    a.read_exact(&mut b).map_err(io)?;
    a.write_all(b"q").map_err(io)?;
    c.read_exact(&mut b).map_err(io)?;
    if &b != b"q" {
        return Err(format!("got {b:?} back on {addr}"));
    }
    Ok(())
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let l = match TcpListener::bind(args.listen) {
        Ok(l) => l,
        Err(e) => {
            return setup_failed(
                log,
                reporter,
                format_args!("cannot listen on {}: {e}", args.listen),
            )
        }
    };
    l.set_nonblocking(true)?;
    let addr = l.local_addr()?;
    log.line(format_args!("Listening on {addr}"))?;
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "tcp-listen",
        format_args!("fd={} addr={addr}", l.as_raw_fd()),
    )?;
    reporter.report(StartCode::Ok)?;
    let mut accepted = 0u64;
    h.run(|beat| {
        if beat % 100 == 0 {
            self_connect(&l, addr)?;
            accepted += 1;
        }
        Ok(())
    })?;
    let check = self_connect(&l, addr);
    accepted += u64::from(check.is_ok());
    h.finish(
        check,
        format_args!("port={} accepted={accepted}", addr.port()),
    )
}
