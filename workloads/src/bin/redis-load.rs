//! redis-load: loads a redis server with a known data set, keeps writing to it through a
//! migration, and checks afterwards that every key is there.
//!
//! ```text
//! redis-load ADDR:PORT [--preload N] [--value-bytes B] [--interval-ms MS] [--timeout-ms MS]
//!            [--log F] [--stop-file F]
//! ```
//!
//! Speaks RESP (redis's protocol) on one connection, with nothing but the standard library.
//! First `FLUSHALL`, then the data set: `SET d:<i> <value>` for i in 0..N, pipelined in
//! batches, every reply checked; the log says `Loaded N keys` and the start code `O` goes to
//! the launcher. Then a write every interval: `SET w:<seq> <value>` (seq 0, 1, ...), waiting
//! for `+OK` each time. A write fails when the send, the reply (within the timeout) or the
//! reply's content fails; the connection is then dropped and re-opened before the next write
//! (a reconnect means the original connection did not survive). The first 50 failures get a
//! `Fail:` line. A heartbeat `t <sec>.<nsec> <acknowledged writes>` every 10 ms.
//!
//! When the stop file appears the writes stop and the check runs (on a fresh connection if the
//! old one broke): every key of the data set and every write that got `+OK` is read back with
//! `MGET` and compared with the value its name implies; `DBSIZE` must be the data set plus the
//! acknowledged writes (plus at most the writes whose reply was lost: they may or may not have
//! landed). Then `Summary: preloaded=<n> written=<w> failed=<f> reconnects=<r> missing=<m>
//! wrong=<k> dbsize=<d> max_reply_gap_ms=<g>` (the longest wait between two acknowledged
//! writes: the server's downtime as the client saw it), `Finish`, and exit 0 when nothing
//! failed, nothing reconnected and every key was found intact.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Default log file.
const LOG: &str = "redis-load.log";
/// Default stop file.
const STOP: &str = "redis-load-stop";
/// Fail lines logged before failures are only counted.
const MAX_FAIL_LINES: u64 = 50;
/// Commands per pipelined batch (loading and checking).
const BATCH: u64 = 256;

/// Load redis with a known data set, write through a migration, check every key.
#[derive(Debug, Clone, Parser)]
#[command(name = "redis-load", version)]
struct Args {
    /// The redis server.
    server: SocketAddr,
    /// Keys in the data set loaded before the writes start.
    #[arg(long, default_value_t = 10_000)]
    preload: u64,
    /// Bytes in each value.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Milliseconds between two writes.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Milliseconds to wait for a connection or a reply before counting a failure.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Log file.
    #[arg(long, default_value = LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = STOP)]
    stop_file: PathBuf,
}

// ------------------------------------------------------------------ RESP

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resp {
    /// `+text`
    Simple(String),
    /// `-text`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$len` + bytes, or `$-1` (None).
    Bulk(Option<Vec<u8>>),
    /// `*n` + elements, or `*-1` (None).
    Array(Option<Vec<Resp>>),
}

/// Append one command (an array of bulk strings) to `out`.
fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(text: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, text)
}

/// One line up to CRLF, without it.
fn read_line(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(64);
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a reply",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_len(text: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("bad length {:?}", String::from_utf8_lossy(text))))
}

/// Read one reply.
fn read_reply(r: &mut impl BufRead) -> io::Result<Resp> {
    let line = read_line(r)?;
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| bad("empty reply line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    Ok(match kind {
        b'+' => Resp::Simple(text()),
        b'-' => Resp::Error(text()),
        b':' => Resp::Int(parse_len(rest)?),
        b'$' => {
            let n = parse_len(rest)?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut data = vec![0u8; n as usize + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(bad("bulk string without its CRLF".into()));
                }
                data.truncate(n as usize);
                Resp::Bulk(Some(data))
            }
        }
        b'*' => {
            let n = parse_len(rest)?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        other => return Err(bad(format!("unknown reply type {:?}", char::from(*other)))),
    })
}

/// A connection to redis.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(args: &Args) -> io::Result<Conn> {
        let timeout = Duration::from_millis(args.timeout_ms);
        let s = TcpStream::connect_timeout(&args.server, timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Send the encoded commands in `buf` and read `n` replies.
    fn pipeline(&mut self, buf: &[u8], n: usize) -> io::Result<Vec<Resp>> {
        self.writer.write_all(buf)?;
        (0..n).map(|_| read_reply(&mut self.reader)).collect()
    }

    /// One command, one reply.
    fn call(&mut self, parts: &[&[u8]]) -> io::Result<Resp> {
        let mut buf = Vec::new();
        encode_command(&mut buf, parts);
        Ok(self.pipeline(&buf, 1)?.remove(0))
    }
}

// ------------------------------------------------------------------ the data

/// Key of the data set's `i`th entry.
fn data_key(i: u64) -> String {
    format!("d:{i}")
}

/// Key of the `seq`th write.
fn write_key(seq: u64) -> String {
    format!("w:{seq}")
}

/// The value a key must hold: `bytes` hex digits derived from the key (FNV-1a, then
/// splitmix64), so a checker needs nothing but the key's name.
fn value_for(key: &str, bytes: usize) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = Vec::with_capacity(bytes + 16);
    while out.len() < bytes {
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(format!("{z:016x}").as_bytes());
    }
    out.truncate(bytes);
    out
}

fn is_ok(reply: &Resp) -> bool {
    matches!(reply, Resp::Simple(s) if s == "OK")
}

// ------------------------------------------------------------------ the run

#[derive(Default)]
struct Stats {
    stop: AtomicBool,
    written: AtomicU64,
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

/// What the writer leaves for the check.
struct Written {
    /// Writes that got `+OK`.
    acked: Vec<u64>,
    /// Writes whose outcome is unknown (the reply was lost).
    uncertain: u64,
    /// The connection, when it is still usable.
    conn: Option<Conn>,
}

fn write_loop(first: Conn, args: &Args, log: &LogWriter, stats: &Stats) -> Written {
    let mut conn = Some(first);
    let mut acked = Vec::new();
    let mut uncertain = 0;
    let mut seq = 0u64;
    let mut last_ok: Option<Timestamp> = None;
    while !stats.stop.load(Ordering::Acquire) {
        let Some(c) = conn.as_mut() else {
            match Conn::open(args) {
                Ok(c) => {
                    conn = Some(c);
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    let _ = log.line(format_args!("reconnected"));
                }
                Err(e) => stats.fail(log, format!("reconnect to {} failed: {e}", args.server)),
            }
            std::thread::sleep(Duration::from_millis(args.interval_ms));
            continue;
        };
        let key = write_key(seq);
        let value = value_for(&key, args.value_bytes);
        match c.call(&[b"SET", key.as_bytes(), &value]) {
            Ok(r) if is_ok(&r) => {
                acked.push(seq);
                stats.written.fetch_add(1, Ordering::Relaxed);
                let now = Timestamp::now();
                if let Some(prev) = last_ok {
                    let gap = now.since(prev).as_nanos() as u64;
                    stats.max_gap_ns.fetch_max(gap, Ordering::Relaxed);
                }
                last_ok = Some(now);
            }
            Ok(r) => {
                // The server answered: it did not store the key.
                stats.fail(log, format!("SET {key}: unexpected reply {r:?}"));
            }
            Err(e) => {
                uncertain += 1;
                stats.fail(log, format!("SET {key}: {e}"));
                conn = None;
                last_ok = None;
            }
        }
        seq += 1;
        std::thread::sleep(Duration::from_millis(args.interval_ms));
    }
    Written {
        acked,
        uncertain,
        conn,
    }
}

/// FLUSHALL, then the data set, pipelined; `Err` says what went wrong.
fn load(conn: &mut Conn, args: &Args) -> Result<(), String> {
    match conn.call(&[b"FLUSHALL"]) {
        Ok(r) if is_ok(&r) => {}
        Ok(r) => return Err(format!("FLUSHALL: unexpected reply {r:?}")),
        Err(e) => return Err(format!("FLUSHALL: {e}")),
    }
    let mut i = 0;
    while i < args.preload {
        let end = (i + BATCH).min(args.preload);
        let mut buf = Vec::new();
        for k in i..end {
            let key = data_key(k);
            encode_command(
                &mut buf,
                &[b"SET", key.as_bytes(), &value_for(&key, args.value_bytes)],
            );
        }
        let replies = conn
            .pipeline(&buf, (end - i) as usize)
            .map_err(|e| format!("loading keys {i}..{end}: {e}"))?;
        if let Some((k, r)) = replies.iter().enumerate().find(|(_, r)| !is_ok(r)) {
            return Err(format!(
                "loading {}: unexpected reply {r:?}",
                data_key(i + k as u64)
            ));
        }
        i = end;
    }
    Ok(())
}

/// What the check found.
#[derive(Debug, Default)]
struct Check {
    missing: u64,
    wrong: u64,
    dbsize: i64,
}

/// Read back every key in `keys` with MGET; log the first few problems.
fn check(conn: &mut Conn, keys: &[String], args: &Args, log: &LogWriter) -> io::Result<Check> {
    let mut c = Check::default();
    let mut reported = 0;
    for chunk in keys.chunks(BATCH as usize) {
        let mut parts: Vec<&[u8]> = vec![b"MGET"];
        parts.extend(chunk.iter().map(|k| k.as_bytes()));
        let values = match conn.call(&parts)? {
            Resp::Array(Some(v)) if v.len() == chunk.len() => v,
            other => return Err(bad(format!("MGET: unexpected reply {other:?}"))),
        };
        for (key, v) in chunk.iter().zip(values) {
            let problem = match v {
                Resp::Bulk(Some(data)) if data == value_for(key, args.value_bytes) => continue,
                Resp::Bulk(None) => {
                    c.missing += 1;
                    format!("key {key} is missing")
                }
                other => {
                    c.wrong += 1;
                    format!("key {key} holds {other:?}, not its value")
                }
            };
            if reported < MAX_FAIL_LINES {
                log.fail(problem)?;
                reported += 1;
            }
        }
    }
    c.dbsize = match conn.call(&[b"DBSIZE"])? {
        Resp::Int(n) => n,
        other => return Err(bad(format!("DBSIZE: unexpected reply {other:?}"))),
    };
    Ok(c)
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("redis-load", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &Arc<LogWriter>, reporter: StartReporter) -> io::Result<bool> {
    log.line(format_args!(
        "redis-load: pid {}, server {}, {} keys of {} bytes",
        std::process::id(),
        args.server,
        args.preload,
        args.value_bytes
    ))?;
    let loaded = Conn::open(args)
        .map_err(|e| format!("cannot connect to {}: {e}", args.server))
        .and_then(|mut c| load(&mut c, args).map(|()| c));
    let conn = match loaded {
        Ok(c) => c,
        Err(e) => {
            log.fail(e)?;
            log.finish()?;
            reporter.report(StartCode::Failed)?;
            return Ok(false);
        }
    };
    log.line(format_args!("Loaded {} keys", args.preload))?;
    reporter.report(StartCode::Ok)?;

    let stats = Arc::new(Stats::default());
    let worker = {
        let (args, log, stats) = (args.clone(), log.clone(), stats.clone());
        std::thread::spawn(move || write_loop(conn, &args, &log, &stats))
    };
    let stop = StopFile::new(&args.stop_file);
    while !stop.requested() {
        std::thread::sleep(Duration::from_millis(10));
        log.tick(Timestamp::now(), stats.written.load(Ordering::Relaxed), 1)?;
    }
    stats.stop.store(true, Ordering::Release);
    let written = worker
        .join()
        .map_err(|_| io::Error::other("the writer thread panicked"))?;

    let keys: Vec<String> = (0..args.preload)
        .map(data_key)
        .chain(written.acked.iter().map(|s| write_key(*s)))
        .collect();
    let mut conn = match written.conn {
        Some(c) => c,
        None => Conn::open(args)?,
    };
    let c = check(&mut conn, &keys, args, log)?;
    let expected = keys.len() as i64;
    let dbsize_ok = c.dbsize >= expected && c.dbsize <= expected + written.uncertain as i64;
    if !dbsize_ok {
        log.fail(format_args!(
            "DBSIZE is {}, expected {expected} (+ at most {} writes whose reply was lost)",
            c.dbsize, written.uncertain
        ))?;
    }
    let failed = stats.failed.load(Ordering::Relaxed);
    let reconnects = stats.reconnects.load(Ordering::Relaxed);
    log.summary(format_args!(
        "preloaded={} written={} failed={failed} reconnects={reconnects} missing={} wrong={} dbsize={} max_reply_gap_ms={}",
        args.preload,
        written.acked.len(),
        c.missing,
        c.wrong,
        c.dbsize,
        stats.max_gap_ns.load(Ordering::Relaxed) / 1_000_000
    ))?;
    log.finish()?;
    Ok(failed == 0 && reconnects == 0 && c.missing == 0 && c.wrong == 0 && dbsize_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Resp> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"hello"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Resp::Simple("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Resp::Error("ERR no".into()));
        assert_eq!(parse(b":42\r\n").unwrap(), Resp::Int(42));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Resp::Bulk(None));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").unwrap(),
            Resp::Bulk(Some(b"he\r\no".to_vec()))
        );
        assert_eq!(
            parse(b"*2\r\n$1\r\na\r\n$-1\r\n").unwrap(),
            Resp::Array(Some(vec![
                Resp::Bulk(Some(b"a".to_vec())),
                Resp::Bulk(None)
            ]))
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Resp::Array(None));
    }

    #[test]
    fn truncated_replies_are_errors() {
        assert!(parse(b"").is_err());
        assert!(parse(b"+OK").is_err());
        assert!(parse(b"$5\r\nhel").is_err());
        assert!(parse(b"*2\r\n$1\r\na\r\n").is_err());
        assert!(parse(b"?x\r\n").is_err());
    }

    #[test]
    fn values_follow_from_keys() {
        let a = value_for("d:1", 64);
        assert_eq!(a.len(), 64);
        assert_eq!(a, value_for("d:1", 64));
        assert_ne!(a, value_for("d:2", 64));
        assert!(a.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(value_for("w:0", 5).len(), 5);
    }
}
