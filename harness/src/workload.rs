//! The workload on the nodes: start `mtouch` (or `file-churn`) in its own pid namespace on the
//! source (with `haul-launch`, in a directory on the shared mount, or on a node-local one for
//! `--sync`), wait until it touches memory (writes files), find it on the destination after
//! the move, and have it check every page (block) (stop file, `Finish`, no `Mismatch` or
//! `Fail:`). Everything goes through [`Node`], so it works on any provider; every
//! wait is one command on the node ([`Node::wait_until`]).

use std::time::{Duration, Instant};

use haul_workloads::files::{FILE_CHURN_LOG, FILE_CHURN_STOP, MTOUCH_LOG, MTOUCH_STOP};
use haul_workloads::mtouch_log::analyze;
use haul_workloads::worklog;

use crate::case::WorkloadCase;
use crate::node::{shell_quote, Node, NodeError};

/// Why a workload could not be started or checked.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A node command failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// `haul-launch` did not report a started workload.
    #[error("haul-launch did not start the workload: {0}")]
    Launch(String),
    /// The workload stopped or never touched memory.
    #[error("{0}")]
    NotRunning(String),
    /// Its log could not be read.
    #[error("cannot read the workload's log: {0}")]
    Log(String),
}

const SHORT: Duration = Duration::from_secs(60);

/// A workload started by the harness.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its working directory, on the shared mount (log, stop file), or node-local (synced).
    pub dir: String,
    /// Its host pid on the source node.
    pub source_pid: i32,
    /// The program (`mtouch`, `file-churn`).
    pub program: String,
}

/// What a workload's self-check said, whichever the program.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Its log reached `Finish`.
    pub finished: bool,
    /// What differed: pages (mtouch) or files (file-churn).
    pub mismatches: u64,
    /// Pages touched (mtouch) or blocks written (file-churn) in the whole run.
    pub touches: u64,
    /// Finished with nothing wrong.
    pub passed: bool,
    /// The longest pause between two ticks of its log: the downtime it saw.
    pub largest_gap: Duration,
    /// The verdict in words.
    pub text: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn log_name(program: &str) -> &'static str {
    if program == "file-churn" {
        FILE_CHURN_LOG
    } else {
        MTOUCH_LOG
    }
}

fn stop_name(program: &str) -> &'static str {
    if program == "file-churn" {
        FILE_CHURN_STOP
    } else {
        MTOUCH_STOP
    }
}

/// Parse `haul-launch`'s `Child <pid> done, code <C>` line.
pub fn parse_child_line(text: &str) -> Option<(i32, char)> {
    let line = text.lines().find(|l| l.starts_with("Child "))?;
    let mut f = line.split_whitespace();
    let pid = f.nth(1)?.parse().ok()?;
    let code = f.last()?.chars().next()?;
    Some((pid, code))
}

/// Whether `pid` is a live (non-zombie) process on the node.
pub fn alive(node: &dyn Node, pid: i32) -> bool {
    let script = format!(
        "test -r /proc/{pid}/status && ! grep -q '^State:[[:space:]]*[ZX]' /proc/{pid}/status"
    );
    node.sh(&script, SHORT)
        .map(|o| o.success())
        .unwrap_or(false)
}

/// Kill `pid` on the node (SIGKILL), if it lives.
pub fn kill(node: &dyn Node, pid: i32) {
    let _ = node.sh(&format!("kill -9 {pid} 2>/dev/null; true"), SHORT);
}

impl Workload {
    /// Start the case's program on `node` in `dir` (made if missing).
    pub fn start(
        node: &dyn Node,
        dir: &str,
        case: &WorkloadCase,
        timeout: Duration,
    ) -> Result<Workload, WorkloadError> {
        node.sh_ok(&format!("mkdir -p {}", shell_quote(dir)), SHORT)?;
        let mut argv = vec![
            node.bin("haul-launch"),
            "--cwd".into(),
            dir.into(),
            "--output".into(),
            format!("{dir}/{}.out", case.program),
            "--".into(),
            node.bin(&case.program),
        ];
        if case.program == "mtouch" {
            argv.push(MTOUCH_LOG.into());
        }
        argv.extend(case.argv());
        let out = node.exec(&argv, None, timeout)?;
        match parse_child_line(&out.stdout_text()) {
            Some((pid, 'O')) if out.success() => Ok(Workload {
                dir: dir.into(),
                source_pid: pid,
                program: case.program.clone(),
            }),
            Some((pid, code)) => Err(WorkloadError::Launch(format!(
                "pid {pid} reported code {code}: {}",
                out.tail(5)
            ))),
            None => Err(WorkloadError::Launch(format!(
                "{}: {}",
                out.status_text(),
                out.tail(5)
            ))),
        }
    }

    /// The log's path.
    pub fn log(&self) -> String {
        format!("{}/{}", self.dir, log_name(&self.program))
    }

    /// Touch lines logged so far (read on `node`).
    pub fn touches(&self, node: &dyn Node) -> u64 {
        let script = format!(
            "grep -c '^t ' {} 2>/dev/null; true",
            shell_quote(&self.log())
        );
        node.sh(&script, SHORT)
            .ok()
            .and_then(|o| o.stdout_text().trim().parse().ok())
            .unwrap_or(0)
    }

    /// Wait until `pid` on `node` has logged `more` touch lines beyond `from` and at least
    /// `min_secs` passed; fails if it dies or `timeout` passes first. Returns the count.
    pub fn wait_touching(
        &self,
        node: &dyn Node,
        pid: i32,
        from: u64,
        more: u64,
        min_secs: f64,
        timeout: Duration,
    ) -> Result<u64, WorkloadError> {
        let start = Instant::now();
        let cond = format!(
            "[ \"$(grep -c '^t ' {} 2>/dev/null)\" -ge {} ]",
            shell_quote(&self.log()),
            from + more
        );
        let reached = node.wait_until(&cond, Some(pid), timeout)?;
        let n = self.touches(node);
        if !reached {
            if !alive(node, pid) {
                return Err(WorkloadError::NotRunning(format!(
                    "the workload (pid {pid} on {}) is gone after {n} touches; its output: {}",
                    node.describe(),
                    self.output_tail(node)
                )));
            }
            return Err(WorkloadError::NotRunning(format!(
                "the workload (pid {pid} on {}) logged {} touches in {:.0} s, wanted {more}",
                node.describe(),
                n.saturating_sub(from),
                timeout.as_secs_f64()
            )));
        }
        let left = min_secs - start.elapsed().as_secs_f64();
        if left > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(left));
        }
        Ok(self.touches(node))
    }

    /// Its resident memory on `node` now (bytes, `VmRSS`).
    pub fn resident_bytes(&self, node: &dyn Node, pid: i32) -> Option<u64> {
        let script = format!("awk '/^VmRSS:/ {{ print $2 * 1024 }}' /proc/{pid}/status");
        node.sh(&script, SHORT)
            .ok()
            .and_then(|o| o.stdout_text().trim().parse().ok())
    }

    fn output_tail(&self, node: &dyn Node) -> String {
        let script = format!(
            "tail -n 3 {dir}/*.out {log} 2>/dev/null; true",
            dir = shell_quote(&self.dir),
            log = shell_quote(&self.log())
        );
        node.sh(&script, SHORT)
            .map(|o| o.stdout_text().trim().replace('\n', " | "))
            .unwrap_or_default()
    }

    /// Whether `pid` on `node` is this workload: `mtouch`, working in [`Workload::dir`].
    pub fn is_at(&self, node: &dyn Node, pid: i32, program: &str) -> bool {
        let script = format!(
            "test \"$(cat /proc/{pid}/comm 2>/dev/null)\" = {} && test \"$(readlink /proc/{pid}/cwd)\" = {}",
            shell_quote(program),
            shell_quote(&self.dir)
        );
        node.sh(&script, SHORT)
            .map(|o| o.success())
            .unwrap_or(false)
    }

    /// Tell the workload to check itself (stop file), wait for `Finish` in its log (at most
    /// `timeout`), and read its verdict. `node` is any node that sees the shared directory.
    pub fn stop_and_check(
        &self,
        node: &dyn Node,
        timeout: Duration,
    ) -> Result<Verdict, WorkloadError> {
        let stop = format!("{}/{}", self.dir, stop_name(&self.program));
        node.sh_ok(&format!(": > {}", shell_quote(&stop)), SHORT)?;
        let wait = format!("grep -q '^Finish' {}", shell_quote(&self.log()));
        node.wait_until(&wait, None, timeout)?;
        self.verdict(node)
    }

    /// Read and judge the log as it is now.
    pub fn verdict(&self, node: &dyn Node) -> Result<Verdict, WorkloadError> {
        let bytes = node.read_file(&self.log())?;
        let tmp = std::env::temp_dir().join(format!(
            ".haul-harness-log-{}-{}",
            std::process::id(),
            self.source_pid
        ));
        std::fs::write(&tmp, &bytes).map_err(|e| WorkloadError::Log(e.to_string()))?;
        let v = if self.program == "file-churn" {
            worklog::analyze(&tmp).map(|v| {
                let sum = |k: &str| v.summary_value(k).unwrap_or(0);
                let bad = v
                    .summary_value("bad_files")
                    .unwrap_or(v.failures.len() as u64);
                Verdict {
                    finished: v.finished,
                    mismatches: bad,
                    touches: sum("rewrites") + sum("appends"),
                    passed: v.passed() && bad == 0,
                    largest_gap: v.largest_gap,
                    text: v.to_string(),
                }
            })
        } else {
            analyze(&tmp).map(|v| Verdict {
                finished: v.finished,
                mismatches: v.reported_mismatches.unwrap_or(v.mismatches as u64),
                touches: v.touches,
                passed: v.passed(),
                largest_gap: v.largest_gap,
                text: v.to_string(),
            })
        };
        let _ = std::fs::remove_file(&tmp);
        v.map_err(|e| WorkloadError::Log(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_lines() {
        assert_eq!(
            parse_child_line("Child 1234 done, code O\n"),
            Some((1234, 'O'))
        );
        assert_eq!(
            parse_child_line("noise\nChild 7 done, code L"),
            Some((7, 'L'))
        );
        assert_eq!(parse_child_line("haul-launch: error"), None);
    }
}
