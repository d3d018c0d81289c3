//! The memory toucher's log and its verdict.
//!
//! `mtouch` writes (one `write(2)` per line; see [`crate::worklog`] for the shared grammar):
//!
//! ```text
//! Mapping <pages> pages (<MiB> MiB), pid <pid>
//! Created 0x<address> vma
//! Pre-touching <MiB> MiB
//! Done
//! Pattern <random|sequential|hot:P>
//! Touch 1 page per <PAUSE> usec          (or: Touch <N> pages per sec, <B> bytes/s | Touch as fast as possible)
//! t <sec>.<nsec> <pfn>[ <count>]         one per touch (one per batch of <count> at high rates)
//! \tMismatch <pfn> <expected> != <found> one per page that differs from the shadow (first 1000)
//! Checked <pages> pages after <touches> touches: <n> mismatches
//! Finish
//! ```
//!
//! That is the acceptance checks' toucher format, so the same tooling reads both; the
//! `Created` line gives the mapping's address (page `pfn` is at `address + pfn * 4096`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::worklog::{for_each_line, GapTracker, Line, LogError, Mismatch, Timestamp};

/// What an mtouch log says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MtouchVerdict {
    /// The log read.
    pub path: PathBuf,
    /// Pages touched in the loop (the sum of the `t` lines' counts).
    pub touches: u64,
    /// `t` lines.
    pub touch_lines: u64,
    /// Time of the first `t` line.
    pub first_touch: Option<Timestamp>,
    /// Time of the last `t` line.
    pub last_touch: Option<Timestamp>,
    /// The largest interval between two consecutive `t` lines: the longest pause the workload
    /// saw (a migration's downtime, on the workload's own clock).
    pub largest_gap: Duration,
    /// When that pause began (the `t` line before it).
    pub largest_gap_at: Option<Timestamp>,
    /// The page of the latest `t` line.
    pub last_pfn: Option<u64>,
    /// Pages mapped, from the `Mapping` line.
    pub pages: Option<u64>,
    /// The toucher's pid as it saw it (1 in its own pid namespace), from the `Mapping` line.
    pub pid: Option<i32>,
    /// Address of the touched mapping, from the `Created 0x... vma` line.
    pub mapping: Option<u64>,
    /// `Mismatch` lines seen (at most 1000 are logged; see `reported_mismatches`).
    pub mismatches: usize,
    /// The `Mismatch` lines.
    pub mismatch_lines: Vec<Mismatch>,
    /// The count from the `Checked ... mismatches` line (not capped at 1000 like the lines).
    pub reported_mismatches: Option<u64>,
    /// Whether the log reached `Finish`.
    pub finished: bool,
}

impl MtouchVerdict {
    /// Finished with no mismatch.
    pub fn passed(&self) -> bool {
        self.finished && self.mismatches == 0 && self.reported_mismatches.unwrap_or(0) == 0
    }
}

impl fmt::Display for MtouchVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, {} touches in {} lines, largest gap {:.3}s, {} mismatch line(s)",
            self.path.display(),
            if self.finished {
                "finished"
            } else {
                "not finished"
            },
            self.touches,
            self.touch_lines,
            self.largest_gap.as_secs_f64(),
            self.mismatches
        )
    }
}

fn parse_mapping_line(text: &str, v: &mut MtouchVerdict) {
    // "Mapping <pages> pages (<MiB> MiB), pid <pid>"
    let f: Vec<&str> = text.split_ascii_whitespace().collect();
    v.pages = f.get(1).and_then(|p| p.parse().ok());
    if let Some(i) = f.iter().position(|w| *w == "pid") {
        v.pid = f.get(i + 1).and_then(|p| p.parse().ok());
    }
}

fn parse_created_line(text: &str, v: &mut MtouchVerdict) {
    // "Created 0x<address> vma"
    v.mapping = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|a| a.strip_prefix("0x"))
        .and_then(|a| u64::from_str_radix(a, 16).ok());
}

fn parse_checked_line(text: &str, v: &mut MtouchVerdict) {
    // "Checked <pages> pages after <touches> touches: <n> mismatches"
    let f: Vec<&str> = text.split_ascii_whitespace().collect();
    if f.last() == Some(&"mismatches") && f.len() >= 2 {
        v.reported_mismatches = f[f.len() - 2].parse().ok();
    }
}

/// Read an mtouch log (also one being written: a partial last line is skipped).
pub fn analyze(path: impl AsRef<Path>) -> Result<MtouchVerdict, LogError> {
    let path = path.as_ref();
    let mut v = MtouchVerdict {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut gaps = GapTracker::default();
    for_each_line(path, |line| match line {
        Line::Tick(t) => {
            gaps.add(t.at);
            v.touches += t.count;
            v.last_pfn = Some(t.value);
        }
        Line::Mismatch(m) => v.mismatch_lines.push(m),
        Line::Finish => v.finished = true,
        Line::Other(text) if text.starts_with("Mapping ") => parse_mapping_line(text, &mut v),
        Line::Other(text) if text.starts_with("Created ") => parse_created_line(text, &mut v),
        Line::Other(text) | Line::Summary(text) if text.starts_with("Checked ") => {
            parse_checked_line(text, &mut v)
        }
        _ => {}
    })?;
    v.touch_lines = gaps.ticks;
    v.first_touch = gaps.first;
    v.last_touch = gaps.last;
    v.largest_gap = gaps.largest;
    v.largest_gap_at = gaps.largest_at;
    v.mismatches = v.mismatch_lines.len();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTACT: &str = "Mapping 4096 pages (16 MiB), pid 1\n\
Created 0x7f0000000000 vma\n\
Pre-touching 16 MiB\n\
Done\n\
Pattern random\n\
Touch 1 page per 1000 usec\n\
t 100.000000000 5\n\
t 100.001000000 9\n\
t 100.501000000 11 3\n\
t 100.502000000 12\n\
Checked 4096 pages after 6 touches: 0 mismatches\n\
Finish\n";

    #[test]
    fn intact_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mem-touch.log");
        std::fs::write(&p, INTACT).unwrap();
        let v = analyze(&p).unwrap();
        assert!(v.passed(), "{v}");
        assert_eq!(v.touches, 6);
        assert_eq!(v.touch_lines, 4);
        assert_eq!(v.pages, Some(4096));
        assert_eq!(v.pid, Some(1));
        assert_eq!(v.mapping, Some(0x7f00_0000_0000));
        assert_eq!(v.last_pfn, Some(12));
        assert_eq!(v.largest_gap, Duration::from_millis(500));
        assert_eq!(v.largest_gap_at, Timestamp::parse("100.001000000"));
        assert_eq!(v.reported_mismatches, Some(0));
    }

    #[test]
    fn damaged_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mem-touch.log");
        let text = INTACT.replace(
            "Checked 4096 pages after 6 touches: 0 mismatches\n",
            "\tMismatch 7 200 != 0\nChecked 4096 pages after 6 touches: 1 mismatches\n",
        );
        std::fs::write(&p, text).unwrap();
        let v = analyze(&p).unwrap();
        assert!(!v.passed());
        assert_eq!(v.mismatches, 1);
        assert_eq!(v.mismatch_lines[0].pfn, 7);
        assert_eq!(v.reported_mismatches, Some(1));
        std::fs::write(&p, "Mapping 1 pages (0 MiB), pid 1\nt 1.0 0\n").unwrap();
        let v = analyze(&p).unwrap();
        assert!(!v.finished && !v.passed());
    }
}
