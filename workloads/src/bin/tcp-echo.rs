//! tcp-echo: a TCP server whose connections must survive migration (CRIU `tcp_established`).
//!
//! ```text
//! tcp-echo [--listen ADDR:PORT] [--log F] [--stop-file F]
//! ```
//!
//! Listens (port 0 picks a free one; the log says `Listening on <addr>:<port>`), serves each
//! connection in a thread: every request (`haul_workloads::tcp_proto`) must carry the next
//! sequence number, and gets back that number, the running sum of the connection's values and
//! the count of requests served, so the client can tell a server that lost its state or a
//! byte of the stream. Logs `conn <n> from <peer>` per connection, a `Fail:` line per
//! protocol violation, a heartbeat `t <sec>.<nsec> <requests served>` every 10 ms; when the
//! stop file appears, `Summary: connections=<c> requests=<r> failures=<f>`, `Finish`, and
//! exits 0 when no request broke the protocol.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{TCP_ECHO_LOG, TCP_ECHO_STOP};
use haul_workloads::stop::StopFile;
use haul_workloads::tcp_proto::{Reply, Request};
use haul_workloads::worklog::{LogWriter, Timestamp};

/// A TCP server with per-connection state, checked by its clients.
#[derive(Debug, Parser)]
#[command(name = "tcp-echo", version)]
struct Args {
    /// Address to listen on (port 0: any free port, see the log).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Log file.
    #[arg(long, default_value = TCP_ECHO_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = TCP_ECHO_STOP)]
    stop_file: PathBuf,
}

/// Counters shared by the connection threads.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    failures: AtomicU64,
}

fn serve(id: u64, mut stream: TcpStream, log: &LogWriter, stats: &Stats) {
    let _ = stream.set_nodelay(true);
    let (mut served, mut sum) = (0u64, 0u64);
    let end = loop {
        let req = match Request::read_from(&mut stream) {
            Ok(Some(r)) => r,
            Ok(None) => break "closed by the client".to_string(),
            Err(e) => break format!("ended: {e}"),
        };
        if req.seq != served + 1 {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            let _ = log.fail(format_args!(
                "conn {id}: request with sequence {}, expected {} (the stream lost or repeated data)",
                req.seq,
                served + 1
            ));
        }
        served += 1;
        sum = sum.wrapping_add(req.value);
        let reply = Reply {
            seq: req.seq,
            sum,
            served,
        };
        if let Err(e) = reply.write_to(&mut stream) {
            break format!("ended: {e}");
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
    };
    let _ = log.line(format_args!("conn {id} {end} after {served} requests"));
}

fn main() -> ExitCode {
    let reporter = StartReporter::from_env();
    let args = Args::parse();
    let log = match LogWriter::create(&args.log) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("tcp-echo: cannot open log {}: {e}", args.log.display());
            let _ = reporter.report(StartCode::LogFailed);
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(args.listen).and_then(|l| {
        l.set_nonblocking(true)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            let _ = log.fail(format_args!("cannot listen on {}: {e}", args.listen));
            let _ = log.finish();
            let _ = reporter.report(StartCode::Failed);
            return ExitCode::FAILURE;
        }
    };
    match run(&args, &log, listener, reporter) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let _ = log.fail(format_args!("{e}"));
            let _ = log.finish();
            ExitCode::FAILURE
        }
    }
}

fn run(
    args: &Args,
    log: &Arc<LogWriter>,
    listener: TcpListener,
    reporter: StartReporter,
) -> std::io::Result<bool> {
    let local = listener.local_addr()?;
    log.line(format_args!("tcp-echo: pid {}", std::process::id()))?;
    log.line(format_args!("Listening on {local}"))?;
    reporter.report(StartCode::Ok)?;

    let stats = Arc::new(Stats::default());
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let mut workers = Vec::new();
    let mut next_id = 0u64;
    let stop = StopFile::new(&args.stop_file);
    while !stop.requested() {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    next_id += 1;
                    let id = next_id;
                    log.line(format_args!("conn {id} from {peer}"))?;
                    stream.set_nonblocking(false)?;
                    if let Ok(clone) = stream.try_clone() {
                        conns.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
                    }
                    let (log, stats) = (log.clone(), stats.clone());
                    workers.push(std::thread::spawn(move || serve(id, stream, &log, &stats)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log.line(format_args!("accept failed: {e}"))?;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        log.tick(Timestamp::now(), stats.requests.load(Ordering::Relaxed), 1)?;
    }
    for c in conns.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    for w in workers {
        let _ = w.join();
    }
    let failures = stats.failures.load(Ordering::Relaxed);
    log.summary(format_args!(
        "connections={next_id} requests={} failures={failures}",
        stats.requests.load(Ordering::Relaxed)
    ))?;
    log.finish()?;
    Ok(failures == 0)
}
