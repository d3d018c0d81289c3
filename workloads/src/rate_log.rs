//! The memory toucher's dirty-rate log (`mtouch --rate-log FILE`): one line per second of
//! what it really dirtied, so a test sees the rate drop while the tree is throttled and come
//! back afterwards (and a migration's per-round figures can be set beside it).
//!
//! ```text
//! <sec>.<nsec> <pages> <window> <bytes/s>
//! ```
//! `<sec>.<nsec>`: CLOCK_REALTIME at the end of the window (the clock the main log uses);
//! `<pages>`: pages touched in the window; `<window>`: its length in seconds (a little over
//! 1, longer when the toucher was frozen); `<bytes/s>`: pages x 4096 / window. Each line is one
//! `write(2)` (see [`crate::worklog`]).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::mtouch_spec::PAGE_SIZE;
use crate::worklog::{LogError, LogWriter, Timestamp};

/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// One window of the rate log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSample {
    /// End of the window (CLOCK_REALTIME).
    pub at: Timestamp,
    /// Pages touched in it.
    pub pages: u64,
    /// Its length (s).
    pub secs: f64,
    /// Dirty rate over it (bytes/s).
    pub bytes_per_sec: f64,
}

impl RateSample {
    /// Parses one line; `None` when it is not one.
    pub fn parse(line: &str) -> Option<RateSample> {
        let mut f = line.split_ascii_whitespace();
        let at = Timestamp::parse(f.next()?)?;
        let pages = f.next()?.parse().ok()?;
        let secs = f.next()?.parse().ok()?;
        let bytes_per_sec = f.next()?.parse().ok()?;
        f.next().is_none().then_some(RateSample {
            at,
            pages,
            secs,
            bytes_per_sec,
        })
    }
}

/// Counts touches and writes a line per [`WINDOW`].
#[derive(Debug)]
pub struct RateMeter {
    log: LogWriter,
    start: Instant,
    pages: u64,
}

impl RateMeter {
    /// Writes to `path` (created or appended to).
    pub fn create(path: impl AsRef<Path>) -> io::Result<RateMeter> {
        Ok(RateMeter {
            log: LogWriter::create(path)?,
            start: Instant::now(),
            pages: 0,
        })
    }

    /// Counts `pages` touched; writes the window's line when it is over.
    pub fn add(&mut self, pages: u64) -> io::Result<()> {
        self.pages += pages;
        self.flush_if_due(Instant::now())
    }

    /// Writes the window's line if the window is over (also with nothing touched: a frozen or
    /// throttled toucher shows as a low rate, not as a gap).
    pub fn flush_if_due(&mut self, now: Instant) -> io::Result<()> {
        let secs = now.duration_since(self.start);
        if secs < WINDOW {
            return Ok(());
        }
        let s = secs.as_secs_f64();
        self.log.line(format_args!(
            "{} {} {:.6} {:.0}",
            Timestamp::now(),
            self.pages,
            s,
            self.pages as f64 * PAGE_SIZE as f64 / s
        ))?;
        self.start = now;
        self.pages = 0;
        Ok(())
    }
}

/// Reads a rate log (a partial last line is skipped).
pub fn read(path: impl AsRef<Path>) -> Result<Vec<RateSample>, LogError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| LogError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(RateSample::parse)
        .collect())
}

/// The mean dirty rate (bytes/s) over the windows that ended after `from` and by `to`
/// (pages over time, not a mean of rates); `None` when there is none.
pub fn mean_rate(samples: &[RateSample], from: Timestamp, to: Timestamp) -> Option<f64> {
    let (pages, secs) = samples
        .iter()
        .filter(|s| s.at > from && s.at <= to)
        .fold((0u64, 0f64), |(p, t), s| (p + s.pages, t + s.secs));
    (secs > 0.0).then(|| pages as f64 * PAGE_SIZE as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let s = RateSample::parse("1764460800.000000123 256 1.000500 1048051").unwrap();
        assert_eq!(s.pages, 256);
        assert_eq!(s.at.nsec, 123);
        assert!((s.secs - 1.0005).abs() < 1e-9);
        assert!(RateSample::parse("t 1.000000000 5").is_none());
        assert!(RateSample::parse("1.0 1 1 1 extra").is_none());
    }

    #[test]
    fn the_meter_writes_a_line_per_window_and_the_reader_averages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rate.log");
        let mut m = RateMeter::create(&path).unwrap();
        m.add(100).unwrap();
        assert!(
            read(&path).unwrap().is_empty(),
            "no line before a window ends"
        );
        // pretend the window is over
        m.start -= WINDOW;
        m.add(0).unwrap();
        m.start -= WINDOW * 2;
        m.flush_if_due(Instant::now()).unwrap();
        let v = read(&path).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].pages, 100);
        assert_eq!(v[1].pages, 0);
        assert!(v[1].secs >= 2.0);
        let all = mean_rate(&v, Timestamp { sec: 0, nsec: 0 }, Timestamp::now()).unwrap();
        let want = 100.0 * 4096.0 / (v[0].secs + v[1].secs);
        assert!((all - want).abs() < 1.0, "{all} vs {want}");
        assert_eq!(mean_rate(&v, Timestamp::now(), Timestamp::now()), None);
    }
}
