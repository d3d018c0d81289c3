//! The baseline: the same workload moved with plain CRIU, the way the HOWTO's user would
//! without haul (stop-and-copy):
//!
//! ```text
//! destination: criu page-server --address B --port P -D DST --daemon
//! source:      criu dump -t PID -D SRC --page-server --address B --port P   (pages go to DST)
//! destination: cp SRC/*.img DST/                                            (SRC is on the shared mount)
//! destination: criu restore -D DST -d --pidfile DST/restore.pid
//! ```
//!
//! Each step is timed on its own node (`date +%s.%N` around it), so ssh's latency is not
//! counted. The figures get haul's names: `total` = dump + copy + restore, `frozen` and
//! `restore` from CRIU's own `stats-dump` / `stats-restore`, `downtime` = `total` (the tree
//! is frozen, then gone, from the dump's start until the restore returns), `pages_sent` =
//! the pages the dump wrote.

use std::time::Duration;

use crate::provider::{shell_quote, Node, Provider, ProviderError};
use crate::record::{CriuDetail, Figures};
use haul::criu::stats::{self as criu_stats, DumpStats, RestoreStats};

/// Why the plain-CRIU migration failed.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// A node command could not run.
    #[error(transparent)]
    Node(#[from] ProviderError),
    /// A CRIU step failed.
    #[error("plain CRIU: {step} failed ({status}): {log}")]
    Step {
        /// Which step.
        step: &'static str,
        /// Its exit status.
        status: String,
        /// The errors from its log.
        log: String,
    },
}

/// Where the images go.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// The dump's directory (on the shared mount: the destination copies from it).
    pub src: String,
    /// The destination's directory (the page server writes the pages there).
    pub dst: String,
    /// The page server's port.
    pub port: u16,
}

/// A successful plain-CRIU migration.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The figures, named as haul's.
    pub figures: Figures,
    /// CRIU's own.
    pub detail: CriuDetail,
    /// The restored tree's pid on the destination.
    pub destination_pid: i32,
}

/// Parse the timing line the step scripts print: floats, then the exit status.
pub fn parse_times(text: &str) -> Option<(Vec<f64>, i32)> {
    let line = text.lines().rev().find(|l| l.starts_with("HARNESS "))?;
    let mut f: Vec<&str> = line.split_whitespace().skip(1).collect();
    let rc = f.pop()?.parse().ok()?;
    let times = f
        .iter()
        .map(|t| t.parse::<f64>().ok())
        .collect::<Option<Vec<_>>>()?;
    Some((times, rc))
}

fn log_errors(node: &dyn Node, log: &str) -> String {
    let script = format!(
        "grep -E 'Error|error' {} 2>/dev/null | tail -n 5; true",
        shell_quote(log)
    );
    node.sh(&script, Duration::from_secs(30))
        .map(|o| o.stdout_text().trim().replace('\n', " | "))
        .unwrap_or_default()
}

fn stats(node: &dyn Node, path: &str) -> Option<haul::criu::pb::StatsEntry> {
    node.read_file(path)
        .ok()
        .and_then(|b| criu_stats::parse(&b).ok())
}

/// Move the tree rooted at `pid` from the provider's source to its destination with plain
/// CRIU. On failure the tree is resumed on the source by CRIU (dump) or is lost (restore),
/// as with CRIU by hand.
pub fn migrate(
    provider: &dyn Provider,
    pid: i32,
    dirs: &Dirs,
    timeout: Duration,
) -> Result<Migrated, BaselineError> {
    let (src, dst) = (provider.source(), provider.destination());
    let (criu_a, criu_b) = (shell_quote(&src.criu()), shell_quote(&dst.criu()));
    let (s, d) = (shell_quote(&dirs.src), shell_quote(&dirs.dst));
    let addr = shell_quote(dst.addr());
    let port = dirs.port;
    let short = Duration::from_secs(60);

    let ps = format!(
        "mkdir -p {d} && {criu_b} page-server --address {addr} --port {port} -D {d} -o ps.log -v4 --daemon --pidfile {d}/ps.pid </dev/null >/dev/null 2>&1"
    );
    let out = dst.sh(&ps, short)?;
    if !out.success() {
        return Err(BaselineError::Step {
            step: "criu page-server",
            status: out.status_text(),
            log: log_errors(dst, &format!("{}/ps.log", dirs.dst)),
        });
    }

    let dump = format!(
        "mkdir -p {s} && t0=$(date +%s.%N); {criu_a} dump -t {pid} -D {s} --page-server --address {addr} --port {port} -v4 -o dump.log </dev/null >/dev/null 2>&1; rc=$?; t1=$(date +%s.%N); echo \"HARNESS $t0 $t1 $rc\""
    );
    let out = src.sh(&dump, timeout)?;
    let times = parse_times(&out.stdout_text());
    let dump_secs = match times {
        Some((t, 0)) if t.len() == 2 => t[1] - t[0],
        _ => {
            let _ = dst.sh(
                &format!("kill $(cat {d}/ps.pid 2>/dev/null) 2>/dev/null; true"),
                short,
            );
            return Err(BaselineError::Step {
                step: "criu dump",
                status: times.map_or(out.status_text(), |(_, rc)| format!("exit {rc}")),
                log: log_errors(src, &format!("{}/dump.log", dirs.src)),
            });
        }
    };

    let restore = format!(
        "t0=$(date +%s.%N); cp {s}/*.img {d}/ && t1=$(date +%s.%N) && {criu_b} restore -D {d} -d -v4 -o restore.log --pidfile {d}/restore.pid </dev/null >/dev/null 2>&1; rc=$?; t2=$(date +%s.%N); echo \"HARNESS $t0 ${{t1:-$t2}} $t2 $rc\""
    );
    let out = dst.sh(&restore, timeout)?;
    let times = parse_times(&out.stdout_text());
    let (copy_secs, restore_wall_secs) = match times {
        Some((t, 0)) if t.len() == 3 => (t[1] - t[0], t[2] - t[1]),
        _ => {
            return Err(BaselineError::Step {
                step: "copy and criu restore",
                status: times.map_or(out.status_text(), |(_, rc)| format!("exit {rc}")),
                log: log_errors(dst, &format!("{}/restore.log", dirs.dst)),
            })
        }
    };
    let destination_pid = dst
        .read_file(&format!("{}/restore.pid", dirs.dst))
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
        .unwrap_or(0);

    let dump_stats: Option<DumpStats> =
        stats(src, &format!("{}/stats-dump", dirs.src)).and_then(|e| e.dump.map(Into::into));
    let restore_stats: Option<RestoreStats> =
        stats(dst, &format!("{}/stats-restore", dirs.dst)).and_then(|e| e.restore.map(Into::into));
    let total = dump_secs + copy_secs + restore_wall_secs;
    let pages = dump_stats.as_ref().map(|d| d.pages_written);
    let figures = Figures {
        total_secs: Some(total),
        frozen_secs: dump_stats.as_ref().map(|d| d.frozen_time_us as f64 / 1e6),
        restore_secs: restore_stats
            .as_ref()
            .map(|r| r.restore_time_us as f64 / 1e6),
        downtime_secs: Some(total),
        observed_downtime_secs: None,
        postcopy_window_secs: None,
        pages_sent: pages,
        memory_bytes_sent: pages.map(|p| p * 4096),
        image_bytes_sent: None,
        strategy_used: Some("plain CRIU (stop-copy)".into()),
        rounds: vec![],
        ..Figures::default()
    };
    Ok(Migrated {
        figures,
        detail: CriuDetail {
            dump_secs,
            copy_secs,
            restore_wall_secs,
            dump: dump_stats,
            restore: restore_stats,
        },
        destination_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines() {
        assert_eq!(
            parse_times("noise\nHARNESS 10.5 11.25 0\n"),
            Some((vec![10.5, 11.25], 0))
        );
        assert_eq!(
            parse_times("HARNESS 1 2 3 1"),
            Some((vec![1.0, 2.0, 3.0], 1))
        );
        assert_eq!(parse_times("HARNESS x 1"), None);
        assert_eq!(parse_times(""), None);
    }
}
