//! The loop shared by the resource-holding workloads (issue #13's "trouble kinds").
//!
//! Each of `ghost-file`, `unix-peer`, `port-listener`, `sysv-ipc`, `uring-user`,
//! `file-follower`, `pty-holder`, `lock-holder` and `sparse-map` sets up one resource that
//! CRIU has trouble with, logs what it holds (the `Holds:` line a test or a pre-flight
//! comparison reads), reports its start code, then probes the resource on every heartbeat
//! until its stop file appears, checks it once more, and ends its log with `Summary:` and
//! `Finish` (exit 0 only when every probe and the last check passed):
//!
//! ```text
//! Holds: <kind> <key>=<value> ...      what the workload holds (fd numbers, paths, ports, ids)
//! t <sec>.<nsec> <beat>                one per heartbeat, after a successful probe
//! Fail: <text>                         a probe or the last check failed (at most 20 lines)
//! Summary: beats=<n> failures=<f> ...  counts
//! Finish
//! ```

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::stop::StopFile;
use crate::worklog::{LogWriter, Timestamp};

/// `Fail:` lines written before failures are only counted.
pub const MAX_FAIL_LINES: u64 = 20;

/// The heartbeat loop's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HoldOutcome {
    /// Heartbeats whose probe passed.
    pub beats: u64,
    /// Probes and checks that failed.
    pub failures: u64,
}

/// Probes a resource every `interval` until the stop file appears.
#[derive(Debug)]
pub struct Holder<'a> {
    log: &'a LogWriter,
    stop: StopFile,
    interval: Duration,
    outcome: HoldOutcome,
}

impl<'a> Holder<'a> {
    /// A holder logging to `log`, stopped by `stop_file`, beating every `interval`.
    pub fn new(log: &'a LogWriter, stop_file: impl Into<PathBuf>, interval: Duration) -> Self {
        Holder {
            log,
            stop: StopFile::new(stop_file.into()),
            interval,
            outcome: HoldOutcome::default(),
        }
    }

    /// Logs `Holds: <kind> <details>`.
    pub fn holds(&self, kind: &str, details: impl fmt::Display) -> io::Result<()> {
        self.log.line(format_args!("Holds: {kind} {details}"))
    }

    /// Records one failure (a `Fail:` line while fewer than [`MAX_FAIL_LINES`] were written).
    pub fn fail(&mut self, text: impl fmt::Display) -> io::Result<()> {
        self.outcome.failures += 1;
        if self.outcome.failures <= MAX_FAIL_LINES {
            self.log.fail(text)?;
        }
        Ok(())
    }

    /// Runs `probe(beat)` every interval until the stop file appears; a probe's `Err` is a
    /// failure, an `Ok` a heartbeat line.
    pub fn run(&mut self, mut probe: impl FnMut(u64) -> Result<(), String>) -> io::Result<()> {
        let mut beat = 0u64;
        while !self.stop.requested() {
            beat += 1;
            match probe(beat) {
                Ok(()) => {
                    self.outcome.beats += 1;
                    self.log.tick(Timestamp::now(), beat, 1)?;
                }
                Err(e) => self.fail(format_args!("beat {beat}: {e}"))?,
            }
            std::thread::sleep(self.interval);
        }
        Ok(())
    }

    /// The final check's result, then `Summary: beats=.. failures=.. <extra>` and `Finish`;
    /// `Ok(true)` when nothing failed.
    pub fn finish(
        mut self,
        last_check: Result<(), String>,
        extra: impl fmt::Display,
    ) -> io::Result<bool> {
        if let Err(e) = last_check {
            self.fail(format_args!("last check: {e}"))?;
        }
        let o = &self.outcome;
        self.log.summary(format_args!(
            "beats={} failures={}{}{extra}",
            o.beats,
            o.failures,
            if extra.to_string().is_empty() {
                ""
            } else {
                " "
            }
        ))?;
        self.log.finish()?;
        Ok(self.outcome.failures == 0)
    }

    /// The counts so far.
    pub fn outcome(&self) -> &HoldOutcome {
        &self.outcome
    }
}

/// A set-up step failed: logs it, ends the log, reports start code `F`; `Ok(false)`.
pub fn setup_failed(
    log: &LogWriter,
    reporter: haul_launch::start_code::StartReporter,
    what: impl fmt::Display,
) -> io::Result<bool> {
    log.fail(what)?;
    log.finish()?;
    reporter.report(haul_launch::start_code::StartCode::Failed)?;
    Ok(false)
}

/// A deterministic byte for position `i` of a pattern seeded by `seed` (ghost-file, sysv-ipc).
pub fn pattern_byte(seed: u64, i: u64) -> u8 {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x ^ (x >> 32)) as u8
}

/// Fills `buf` (which starts at byte `offset` of the pattern) with [`pattern_byte`]s.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

/// The first position where `buf` (at `offset` of the pattern) differs from it.
pub fn pattern_mismatch(seed: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    buf.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern_byte(seed, offset + *i as u64))
        .map(|(i, _)| offset + i as u64)
}

/// Parses sizes such as `4096`, `64k`, `2m`, `1g`, `1t` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        Some('t' | 'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size {s:?}: a number with an optional k, m, g or t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_sizes() {
        let mut buf = vec![0u8; 100];
        fill_pattern(7, 1000, &mut buf);
        assert_eq!(pattern_mismatch(7, 1000, &buf), None);
        buf[42] ^= 1;
        assert_eq!(pattern_mismatch(7, 1000, &buf), Some(1042));
        assert!((0..64).any(|i| pattern_byte(1, i) != pattern_byte(1, 0)));
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn holder_logs_a_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogWriter::create(dir.path().join("h.log")).unwrap();
        let stop = dir.path().join("h-stop");
        let mut h = Holder::new(&log, &stop, Duration::from_millis(1));
        h.holds("thing", "fd=3").unwrap();
        let mut n = 0;
        h.run(|b| {
            n += 1;
            if n == 3 {
                StopFile::new(&stop).request().unwrap();
            }
            if b == 2 {
                Err("broken".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(h.outcome().beats, 2);
        assert!(!h.finish(Ok(()), "x=1").unwrap());
        let v = crate::worklog::analyze(dir.path().join("h.log")).unwrap();
        assert!(v.finished && !v.passed());
        assert_eq!(v.summary_value("x"), Some(1));
        assert_eq!(
            crate::worklog::find_line(dir.path().join("h.log"), "Holds: thing ")
                .unwrap()
                .as_deref(),
            Some("fd=3")
        );
    }
}
