//! The line-oriented log every workload writes, and its analysis.
//!
//! Each line goes out in a single `write(2)` on a file opened with `O_APPEND`, so a line is
//! whole whatever happens to the process (frozen, killed, migrated) and whichever node reads
//! the shared file. The grammar, common to all workloads:
//!
//! ```text
//! t <sec>.<nsec> <value>[ <count>]   a tick, CLOCK_REALTIME, nsec with 9 digits: mtouch logs
//!                                    one per touch (value = page number; count = pages touched
//!                                    since the previous line, when more than 1), the others a
//!                                    heartbeat (value = their progress counter)
//! Fail: <text>                       one problem the self-check found
//! \tMismatch <pfn> <expected> != <found>   (mtouch) one page that differs from its shadow
//! Summary: <text>                    the self-check's counts (mtouch: "Checked ... mismatches")
//! Finish                             the last line: the self-check is complete
//! anything else                      information (start-up lines, addresses, pids)
//! ```
//!
//! The largest interval between two consecutive `t` lines is the longest pause the workload
//! itself saw: with a tick every millisecond, a migration's downtime to within a millisecond,
//! read on the workload's own clock (the acceptance checks compute it the same way).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A CLOCK_REALTIME instant as logged: `<sec>.<nsec>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    /// Parse `<sec>.<nsec>` (the fraction is read as decimal digits of a second).
    pub fn parse(s: &str) -> Option<Self> {
        let (sec, frac) = s.split_once('.')?;
        let sec = sec.parse::<i64>().ok()?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nsec = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
        Some(Timestamp { sec, nsec })
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        let a = self.sec as i128 * 1_000_000_000 + self.nsec as i128;
        let b = earlier.sec as i128 * 1_000_000_000 + earlier.nsec as i128;
        let d = (a - b).max(0);
        Duration::new((d / 1_000_000_000) as u64, (d % 1_000_000_000) as u32)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.sec, self.nsec)
    }
}

/// An append-only log written one `write(2)` per line; shareable between threads.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
}

impl LogWriter {
    /// Create (or truncate) the log at `path`, `O_APPEND | O_CLOEXEC`, mode 0644.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_APPEND | libc::O_CLOEXEC)
            .open(path)?;
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one line (a newline is added) in a single `write(2)`.
    pub fn line(&self, args: fmt::Arguments<'_>) -> io::Result<()> {
        let mut buf = String::with_capacity(96);
        fmt::write(&mut buf, args).map_err(|_| io::Error::other("formatting a log line"))?;
        buf.push('\n');
        let n = (&self.file).write(buf.as_bytes())?;
        if n != buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write to {}: {n} of {} bytes",
                    self.path.display(),
                    buf.len()
                ),
            ));
        }
        Ok(())
    }

    /// `t <sec>.<nsec> <value>[ <count>]` (the count only when it is not 1).
    pub fn tick(&self, at: Timestamp, value: u64, count: u64) -> io::Result<()> {
        if count == 1 {
            self.line(format_args!("t {at} {value}"))
        } else {
            self.line(format_args!("t {at} {value} {count}"))
        }
    }

    /// `Fail: <text>`.
    pub fn fail(&self, text: impl fmt::Display) -> io::Result<()> {
        self.line(format_args!("Fail: {text}"))
    }

    /// `Summary: <text>`.
    pub fn summary(&self, text: impl fmt::Display) -> io::Result<()> {
        self.line(format_args!("Summary: {text}"))
    }

    /// `Finish`.
    pub fn finish(&self) -> io::Result<()> {
        self.line(format_args!("Finish"))
    }
}

/// A `t` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// When.
    pub at: Timestamp,
    /// The page number (mtouch) or progress counter (others).
    pub value: u64,
    /// How many touches or events the line stands for (1 when the field is absent).
    pub count: u64,
}

/// A `Mismatch` line of mtouch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// The page.
    pub pfn: u64,
    /// The byte the shadow holds.
    pub expected: u8,
    /// The byte found in the page.
    pub found: u8,
}

/// One parsed log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// `t <sec>.<nsec> <value>[ <count>]`
    Tick(Tick),
    /// `Fail: <text>`
    Fail(&'a str),
    /// `\tMismatch <pfn> <expected> != <found>` (a malformed one still counts, with zeros).
    Mismatch(Mismatch),
    /// `Summary: <text>`
    Summary(&'a str),
    /// `Finish`
    Finish,
    /// Anything else.
    Other(&'a str),
}

/// Parse one line (without its newline).
pub fn parse_line(line: &str) -> Line<'_> {
    if let Some(rest) = line.strip_prefix("t ") {
        let mut f = rest.split_ascii_whitespace();
        let at = f.next().and_then(Timestamp::parse);
        let value = f.next().and_then(|v| v.parse::<u64>().ok());
        let count = match f.next() {
            None => Some(1),
            Some(c) => c.parse::<u64>().ok(),
        };
        if let (Some(at), Some(value), Some(count), None) = (at, value, count, f.next()) {
            return Line::Tick(Tick { at, value, count });
        }
        return Line::Other(line);
    }
    if let Some(rest) = line.strip_prefix("Fail:") {
        return Line::Fail(rest.trim());
    }
    if let Some(rest) = line.strip_prefix("Summary:") {
        return Line::Summary(rest.trim());
    }
    if line == "Finish" {
        return Line::Finish;
    }
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix("Mismatch") {
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        return Line::Mismatch(Mismatch {
            pfn: num(0),
            expected: num(1) as u8,
            found: num(3) as u8,
        });
    }
    Line::Other(line)
}

/// Reading a log failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read workload log {path:?}: {source}")]
pub struct LogError {
    /// The log.
    pub path: PathBuf,
    /// What the read said.
    #[source]
    pub source: io::Error,
}

/// Feed every complete line of the log at `path` to `each` (a last line without its newline
/// is still being written and is skipped).
pub fn for_each_line(path: &Path, mut each: impl FnMut(Line<'_>)) -> Result<(), LogError> {
    let err = |source| LogError {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(err)?);
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(());
        }
        buf.pop();
        let text = String::from_utf8_lossy(&buf);
        each(parse_line(&text));
    }
}

/// The largest interval between consecutive ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapTracker {
    /// Ticks seen.
    pub ticks: u64,
    /// The first tick.
    pub first: Option<Timestamp>,
    /// The latest tick.
    pub last: Option<Timestamp>,
    /// The largest interval so far.
    pub largest: Duration,
    /// The tick that opened the largest interval.
    pub largest_at: Option<Timestamp>,
}

impl GapTracker {
    /// Account for one tick at `at`.
    pub fn add(&mut self, at: Timestamp) {
        if let Some(prev) = self.last {
            let gap = at.since(prev);
            if gap > self.largest {
                self.largest = gap;
                self.largest_at = Some(prev);
            }
        } else {
            self.first = Some(at);
        }
        self.last = Some(at);
        self.ticks += 1;
    }
}

/// What a workload's log says about its self-check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfCheckVerdict {
    /// The log read.
    pub path: PathBuf,
    /// Heartbeat (`t`) lines.
    pub ticks: u64,
    /// Time of the first tick.
    pub first_tick: Option<Timestamp>,
    /// Time of the last tick.
    pub last_tick: Option<Timestamp>,
    /// The largest interval between two consecutive ticks: the longest pause the workload
    /// saw (a migration's downtime, on the workload's own clock).
    pub largest_gap: Duration,
    /// When that pause began (the tick before it).
    pub largest_gap_at: Option<Timestamp>,
    /// The latest tick's value (the workload's progress counter).
    pub last_value: Option<u64>,
    /// Every `Fail:` line's text.
    pub failures: Vec<String>,
    /// The `Summary:` line's text.
    pub summary: Option<String>,
    /// Whether the log ends its self-check with `Finish`.
    pub finished: bool,
}

impl SelfCheckVerdict {
    /// Finished, with no `Fail:` line.
    pub fn passed(&self) -> bool {
        self.finished && self.failures.is_empty()
    }

    /// A `key=value` number from the `Summary:` line (e.g. `records` for rec-writer).
    pub fn summary_value(&self, key: &str) -> Option<u64> {
        summary_value(self.summary.as_deref()?, key)
    }
}

/// A `key=value` number from a summary text such as `requests=10 failed=0`.
pub fn summary_value(summary: &str, key: &str) -> Option<u64> {
    summary
        .split_ascii_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim_end_matches(',').parse().ok())
}

/// The first complete line of the log at `path` that starts with `prefix` (e.g. the
/// `Listening on ADDR` line of tcp-echo), without the prefix.
pub fn find_line(path: impl AsRef<Path>, prefix: &str) -> Result<Option<String>, LogError> {
    let mut found = None;
    for_each_line(path.as_ref(), |line| {
        if let (None, Line::Other(text)) = (&found, line) {
            if let Some(rest) = text.strip_prefix(prefix) {
                found = Some(rest.to_string());
            }
        }
    })?;
    Ok(found)
}

impl fmt::Display for SelfCheckVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, {} ticks, largest gap {:.3}s, {} failure(s)",
            self.path.display(),
            if self.finished {
                "finished"
            } else {
                "not finished"
            },
            self.ticks,
            self.largest_gap.as_secs_f64(),
            self.failures.len()
        )?;
        if let Some(first) = self.failures.first() {
            write!(f, ", first: {first}")?;
        }
        Ok(())
    }
}

/// Read a workload's log (any workload but mtouch, which has [`crate::mtouch_log`]).
pub fn analyze(path: impl AsRef<Path>) -> Result<SelfCheckVerdict, LogError> {
    let path = path.as_ref();
    let mut v = SelfCheckVerdict {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut gaps = GapTracker::default();
    for_each_line(path, |line| match line {
        Line::Tick(t) => {
            gaps.add(t.at);
            v.last_value = Some(t.value);
        }
        Line::Fail(text) => v.failures.push(text.to_string()),
        Line::Mismatch(m) => v.failures.push(format!(
            "page {} is {} instead of {}",
            m.pfn, m.found, m.expected
        )),
        Line::Summary(text) => v.summary = Some(text.to_string()),
        Line::Finish => v.finished = true,
        Line::Other(_) => {}
    })?;
    v.ticks = gaps.ticks;
    v.first_tick = gaps.first;
    v.last_tick = gaps.last;
    v.largest_gap = gaps.largest;
    v.largest_gap_at = gaps.largest_at;
    Ok(v)
}

/// The `main` of a self-checking workload: opens its log (reporting start code `L` when it
/// cannot), runs it, and turns its verdict into the exit code; an I/O error ends the log with a
/// `Fail:` line and `Finish`.
pub fn workload_main(
    name: &str,
    log_path: &Path,
    run: impl FnOnce(
        &std::sync::Arc<LogWriter>,
        haul_launch::start_code::StartReporter,
    ) -> io::Result<bool>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let reporter = haul_launch::start_code::StartReporter::from_env();
    let log = match LogWriter::create(log_path) {
        Ok(l) => std::sync::Arc::new(l),
        Err(e) => {
            eprintln!("{name}: cannot open log {}: {e}", log_path.display());
            let _ = reporter.report(haul_launch::start_code::StartCode::LogFailed);
            return ExitCode::FAILURE;
        }
    };
    match run(&log, reporter) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let _ = log.fail(format_args!("{e}"));
            let _ = log.finish();
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = Timestamp::parse("12.000000500").unwrap();
        assert_eq!(t, Timestamp { sec: 12, nsec: 500 });
        assert_eq!(t.to_string(), "12.000000500");
        assert_eq!(Timestamp::parse("1.5").unwrap().nsec, 500_000_000);
        assert!(Timestamp::parse("1").is_none());
        assert!(Timestamp::parse("1.").is_none());
        assert!(Timestamp::parse("1.1234567890").is_none());
        let a = Timestamp::parse("10.900000000").unwrap();
        let b = Timestamp::parse("12.100000000").unwrap();
        assert_eq!(b.since(a), Duration::from_millis(1200));
        assert_eq!(a.since(b), Duration::ZERO);
    }

    #[test]
    fn lines() {
        assert_eq!(
            parse_line("t 5.000000001 42"),
            Line::Tick(Tick {
                at: Timestamp { sec: 5, nsec: 1 },
                value: 42,
                count: 1
            })
        );
        assert!(matches!(
            parse_line("t 5.000000001 42 7"),
            Line::Tick(Tick { count: 7, .. })
        ));
        assert!(matches!(parse_line("t 5.0 x"), Line::Other(_)));
        assert!(matches!(parse_line("t 5.0 1 2 3"), Line::Other(_)));
        assert_eq!(parse_line("Fail: lost it"), Line::Fail("lost it"));
        assert_eq!(parse_line("Summary: 3 ok"), Line::Summary("3 ok"));
        assert_eq!(parse_line("Finish"), Line::Finish);
        assert_eq!(
            parse_line("\tMismatch 17 200 != 3"),
            Line::Mismatch(Mismatch {
                pfn: 17,
                expected: 200,
                found: 3
            })
        );
        assert!(matches!(parse_line("Mapping 4 pages"), Line::Other(_)));
    }

    #[test]
    fn writer_and_analyze() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let log = LogWriter::create(&path).unwrap();
        log.line(format_args!("hello pid {}", 1)).unwrap();
        log.tick(Timestamp { sec: 100, nsec: 0 }, 1, 1).unwrap();
        log.tick(
            Timestamp {
                sec: 100,
                nsec: 250_000_000,
            },
            2,
            1,
        )
        .unwrap();
        log.tick(Timestamp { sec: 101, nsec: 0 }, 3, 5).unwrap();
        let v = analyze(&path).unwrap();
        assert!(!v.finished && !v.passed());
        assert_eq!(v.ticks, 3);
        assert_eq!(v.largest_gap, Duration::from_millis(750));
        assert_eq!(
            v.largest_gap_at,
            Some(Timestamp {
                sec: 100,
                nsec: 250_000_000
            })
        );
        log.summary("beats=3 lost=0").unwrap();
        log.finish().unwrap();
        let v = analyze(&path).unwrap();
        assert!(v.passed(), "{v}");
        assert_eq!(v.summary.as_deref(), Some("beats=3 lost=0"));
        assert_eq!(v.summary_value("beats"), Some(3));
        assert_eq!(v.summary_value("lost"), Some(0));
        assert_eq!(v.summary_value("gone"), None);
        assert_eq!(
            find_line(&path, "hello pid ").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(find_line(&path, "nothing").unwrap(), None);
        assert_eq!(v.last_value, Some(3));
        log.fail("broken").unwrap();
        let v = analyze(&path).unwrap();
        assert!(!v.passed());
        assert_eq!(v.failures, vec!["broken".to_string()]);
    }

    #[test]
    fn partial_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.log");
        std::fs::write(&path, "t 1.000000000 1\nFini").unwrap();
        let v = analyze(&path).unwrap();
        assert_eq!(v.ticks, 1);
        assert!(!v.finished);
    }

    #[test]
    fn missing_log_names_its_path() {
        let e = analyze("/no/such/log").unwrap_err();
        assert!(e.to_string().contains("/no/such/log"));
    }
}
