//! tcp-client: keeps connections to tcp-echo busy through a migration and counts failures.
//!
//! ```text
//! tcp-client ADDR:PORT [--conns N] [--interval-ms MS] [--timeout-ms MS] [--log F] [--stop-file F]
//! ```
//!
//! Opens N connections (reports `O` once all are up), then on each sends a request every
//! interval and waits for its reply (`haul_workloads::tcp_proto`), checking the sequence
//! number, the server's running sum and its served count against its own. A request fails
//! when the send, the reply (within the timeout) or the check fails; the connection is then
//! dropped and re-opened at the next interval (each failed attempt is a failed request, each
//! success a reconnect, which means the original connection did not survive). The first 50
//! failures get a `Fail:` line. Logs a heartbeat `t <sec>.<nsec> <ok replies>` every 10 ms;
//! when the stop file appears, `Summary: requests=<n> ok=<n> failed=<f> reconnects=<r>
//! max_reply_gap_ms=<g>` (the longest wait between two good replies on one connection: the
//! server's downtime as the client saw it), `Finish`, and exits 0 when nothing failed.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{TCP_CLIENT_LOG, TCP_CLIENT_STOP};
use haul_workloads::mtouch_spec::TouchRng;
use haul_workloads::stop::StopFile;
use haul_workloads::tcp_proto::{Reply, Request};
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Keep TCP connections busy and count the requests that fail.
#[derive(Debug, Clone, Parser)]
#[command(name = "tcp-client", version)]
struct Args {
    /// The tcp-echo server.
    server: SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 2)]
    conns: usize,
    /// Milliseconds between two requests on a connection.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    /// Milliseconds to wait for a connection or a reply before counting a failure.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Log file.
    #[arg(long, default_value = TCP_CLIENT_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = TCP_CLIENT_STOP)]
    stop_file: PathBuf,
}

/// Fail lines logged before failures are only counted.
const MAX_FAIL_LINES: u64 = 50;

#[derive(Default)]
struct Stats {
    stop: AtomicBool,
    requests: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    max_gap_ns: AtomicU64,
    fail_lines: AtomicU64,
}

impl Stats {
    fn fail(&self, log: &LogWriter, text: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let n = self.fail_lines.fetch_add(1, Ordering::Relaxed);
        if n < MAX_FAIL_LINES {
            let _ = log.fail(text);
        } else if n == MAX_FAIL_LINES {
            let _ = log.line(format_args!("(more failures are counted, not logged)"));
        }
    }
}

fn connect(args: &Args) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&args.server, Duration::from_millis(args.timeout_ms))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_millis(args.timeout_ms)))?;
    s.set_write_timeout(Some(Duration::from_millis(args.timeout_ms)))?;
    Ok(s)
}

/// One request/reply; `Err` says what went wrong.
fn exchange(stream: &mut TcpStream, req: Request, sum: u64) -> Result<(), String> {
    req.write_to(stream)
        .map_err(|e| format!("send failed: {e}"))?;
    let reply = match Reply::read_from(stream) {
        Ok(Some(r)) => r,
        Ok(None) => return Err("the server closed the connection".to_string()),
        Err(e) => return Err(format!("no reply: {e}")),
    };
    if reply.seq != req.seq || reply.sum != sum || reply.served != req.seq {
        return Err(format!(
            "wrong reply: seq {} sum {:#x} served {}, expected seq {} sum {sum:#x} served {}",
            reply.seq, reply.sum, reply.served, req.seq, req.seq
        ));
    }
    Ok(())
}

fn conn_loop(id: usize, first: TcpStream, args: &Args, log: &LogWriter, stats: &Stats) {
    let mut rng = TouchRng::new(0xC11E_0000 + id as u64 + u64::from(std::process::id()));
    let mut stream = Some(first);
    let (mut seq, mut sum) = (0u64, 0u64);
    let mut last_ok: Option<Timestamp> = None;
    while !stats.stop.load(Ordering::Acquire) {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let Some(s) = stream.as_mut() else {
            match connect(args) {
                Ok(s) => {
                    stream = Some(s);
                    (seq, sum) = (0, 0);
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    let _ = log.line(format_args!("conn {id} reconnected"));
                }
                Err(e) => stats.fail(
                    log,
                    format!("conn {id}: reconnect to {} failed: {e}", args.server),
                ),
            }
            // A reconnect attempt stands in for this interval's request.
            std::thread::sleep(Duration::from_millis(args.interval_ms));
            continue;
        };
        seq += 1;
        let value = rng.next_u64();
        sum = sum.wrapping_add(value);
        match exchange(s, Request { seq, value }, sum) {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                let now = Timestamp::now();
                if let Some(prev) = last_ok {
                    let gap = now.since(prev).as_nanos() as u64;
                    stats.max_gap_ns.fetch_max(gap, Ordering::Relaxed);
                }
                last_ok = Some(now);
            }
            Err(e) => {
                stats.fail(log, format!("conn {id} request {seq}: {e}"));
                stream = None;
                last_ok = None;
            }
        }
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("tcp-client", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &Arc<LogWriter>, reporter: StartReporter) -> std::io::Result<bool> {
    log.line(format_args!(
        "tcp-client: pid {}, {} connections to {}",
        std::process::id(),
        args.conns,
        args.server
    ))?;
    let mut streams = Vec::new();
    for id in 0..args.conns.max(1) {
        match connect(args) {
            Ok(s) => {
                log.line(format_args!("conn {id} from {}", s.local_addr()?))?;
                streams.push(s);
            }
            Err(e) => {
                log.fail(format_args!(
                    "conn {id}: cannot connect to {}: {e}",
                    args.server
                ))?;
                log.finish()?;
                reporter.report(StartCode::Failed)?;
                return Ok(false);
            }
        }
    }
    reporter.report(StartCode::Ok)?;

    let stats = Arc::new(Stats::default());
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(id, s)| {
            let (args, log, stats) = (args.clone(), log.clone(), stats.clone());
            std::thread::spawn(move || conn_loop(id, s, &args, &log, &stats))
        })
        .collect();
    let stop = StopFile::new(&args.stop_file);
    while !stop.requested() {
        std::thread::sleep(Duration::from_millis(10));
        log.tick(Timestamp::now(), stats.ok.load(Ordering::Relaxed), 1)?;
    }
    stats.stop.store(true, Ordering::Release);
    for w in workers {
        let _ = w.join();
    }
    let failed = stats.failed.load(Ordering::Relaxed);
    let reconnects = stats.reconnects.load(Ordering::Relaxed);
    log.summary(format_args!(
        "requests={} ok={} failed={failed} reconnects={reconnects} max_reply_gap_ms={}",
        stats.requests.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.max_gap_ns.load(Ordering::Relaxed) / 1_000_000
    ))?;
    log.finish()?;
    Ok(failed == 0 && reconnects == 0)
}
