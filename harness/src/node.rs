//! One node of a pair, as the harness drives it: run a command (with a timeout and the run's
//! [`CancelToken`]), start one in the background, read and write files. [`Node`] is the
//! interface every provider implements (network namespaces, ssh hosts, VMs); everything
//! above it (the workload, haul serve, the methods) only ever talks to a `dyn Node`.

use std::fmt;
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;

/// Why a command could not be run on a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A program could not be started on this machine.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command on a node failed.
    #[error("on node {node}: `{command}` {why}")]
    Command {
        /// The node.
        node: String,
        /// The command (shortened).
        command: String,
        /// Exit status and the end of its stderr.
        why: String,
    },
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The run was cancelled while the command ran.
    #[error("{0}")]
    Cancelled(#[from] crate::cancel::Cancelled),
}

/// What a command did.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its exit status; `None` when killed by a signal or after the timeout.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Whether it was killed because the timeout passed.
    pub timed_out: bool,
    /// Whether it was killed because the run was cancelled.
    pub cancelled: bool,
}

impl Output {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last `n` lines of standard error (and of standard output when stderr is empty).
    pub fn tail(&self, n: usize) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            String::from_utf8_lossy(&self.stderr).into_owned()
        } else {
            self.stdout_text()
        };
        let text = strip_ansi(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How it ended, in words.
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.code) {
            _ if self.cancelled => "was stopped (cancelled)".into(),
            (true, _) => "timed out".into(),
            (false, Some(c)) => format!("exited with status {c}"),
            (false, None) => "was killed by a signal".into(),
        }
    }
}

/// `text` without terminal colour codes (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quote `s` for a POSIX shell (shlex); a NUL byte, which no shell word can hold, is dropped.
pub fn shell_quote(s: &str) -> String {
    match shlex::try_quote(s) {
        Ok(q) => q.into_owned(),
        Err(_) => shell_quote(&s.replace('\0', "")),
    }
}

/// `argv` as one shell command line.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One node of a pair: runs commands, holds a work directory, knows where haul's binaries are.
pub trait Node: fmt::Debug + Send + Sync {
    /// Its role and host, for messages (`source (haul-h-12-0-a)`).
    fn describe(&self) -> String;
    /// The address the other node reaches it at (where `haul serve` and CRIU's page server
    /// listen on the destination).
    fn addr(&self) -> &str;
    /// The path of one of haul's programs (`haul`, `mtouch`, `haul-launch`) on this node.
    fn bin(&self, program: &str) -> String;
    /// The CRIU binary on this node.
    fn criu(&self) -> String;
    /// A directory of this node's own (images, keys, reports), made by the provider.
    fn work_dir(&self) -> &str;
    /// Run `argv` on the node and wait for it (at most `timeout`, then it is killed), feeding
    /// it `stdin` when given.
    fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, NodeError>;
    /// Start `argv` on the node in the background, its stdout and stderr going to `log` (a
    /// path on the node); returns its pid there. The provider stops it when dropped, if
    /// [`Node::terminate`] did not.
    fn spawn(&self, argv: &[String], log: &str) -> Result<i32, NodeError>;
    /// Stop a process [`Node::spawn`] started (SIGTERM, then SIGKILL after 5 s).
    fn terminate(&self, pid: i32);

    /// Run a shell script on the node (`sh -c SCRIPT`).
    fn sh(&self, script: &str, timeout: Duration) -> Result<Output, NodeError> {
        self.exec(&["sh".into(), "-c".into(), script.into()], None, timeout)
    }

    /// Wait on the node until the shell condition `cond` holds (true), `pid` (when given) is
    /// gone (false), or `timeout` passes (false). One command on the node that checks
    /// every 50 ms there: over ssh it is one round trip, not one per check.
    fn wait_until(
        &self,
        cond: &str,
        pid: Option<i32>,
        timeout: Duration,
    ) -> Result<bool, NodeError> {
        let gone = pid
            .map(|p| format!("kill -0 {p} 2>/dev/null || exit 3; "))
            .unwrap_or_default();
        let script = format!(
            "end=$(($(date +%s) + {secs})); until {{ {cond} ; }}; do {gone}[ $(date +%s) -ge $end ] && exit 4; sleep 0.05; done",
            secs = timeout.as_secs().max(1)
        );
        let out = self.sh(&script, timeout + Duration::from_secs(30))?;
        match out.code {
            Some(0) => Ok(true),
            Some(3) | Some(4) => Ok(false),
            _ => Err(self.failed(&script, &out)),
        }
    }

    /// Run a shell script on the node; its stdout, or an error naming the script unless it
    /// exited 0.
    fn sh_ok(&self, script: &str, timeout: Duration) -> Result<String, NodeError> {
        let out = self.sh(script, timeout)?;
        if out.success() {
            Ok(out.stdout_text())
        } else {
            Err(self.failed(script, &out))
        }
    }

    /// The error for a command that did not succeed.
    fn failed(&self, command: &str, out: &Output) -> NodeError {
        let mut command = command.replace('\n', "; ");
        if command.len() > 160 {
            let mut cut = 157;
            while !command.is_char_boundary(cut) {
                cut -= 1;
            }
            command.truncate(cut);
            command.push_str("...");
        }
        NodeError::Command {
            node: self.describe(),
            command,
            why: format!("{}: {}", out.status_text(), out.tail(6)),
        }
    }

    /// The contents of a file on the node.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, NodeError> {
        let argv = vec!["cat".to_string(), path.to_string()];
        let out = self.exec(&argv, None, Duration::from_secs(120))?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(&shell_join(&argv), &out))
        }
    }

    /// Write a file on the node (mode 0600), replacing it.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<(), NodeError> {
        let script = format!("umask 077 && cat > {}", shell_quote(path));
        let argv = vec!["sh".to_string(), "-c".to_string(), script.clone()];
        let out = self.exec(&argv, Some(data), Duration::from_secs(60))?;
        if out.success() {
            Ok(())
        } else {
            Err(self.failed(&script, &out))
        }
    }
}

/// A file for a child's output that has no name (unlinked at once): nothing is left behind
/// whatever happens, and no pipe stays open in the child's own children (which would keep a
/// reader waiting).
fn anonymous_file() -> Result<std::fs::File, NodeError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(".haul-harness-out-{}-{seq}", std::process::id()));
    let io = |source| NodeError::Io {
        what: format!("cannot make {}", path.display()),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn read_back(mut f: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut v = Vec::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_end(&mut v);
    v
}

/// Run a command of this machine with a timeout (SIGKILL after it, or at once when `cancel`
/// is set), feeding it `stdin`, collecting its output. The exit is waited for in a thread
/// (`wait(2)`, no polling); the caller wakes on it, on the timeout or on cancellation.
pub fn run_local(
    mut cmd: std::process::Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    cancel: &CancelToken,
) -> Result<Output, NodeError> {
    use std::process::Stdio;
    cancel.check()?;
    let (out, err) = (anonymous_file()?, anonymous_file()?);
    let dup = |f: &std::fs::File| {
        f.try_clone().map_err(|source| NodeError::Io {
            what: "cannot duplicate an output file".into(),
            source,
        })
    };
    cmd.stdout(Stdio::from(dup(&out)?))
        .stderr(Stdio::from(dup(&err)?))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|source| NodeError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let st = child.wait();
        let _ = tx.send(());
        st
    });
    let start = Instant::now();
    let (mut timed_out, mut cancelled) = (false, false);
    loop {
        // the child's exit wakes this at once; cancellation is looked at every 50 ms
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        cancelled = cancel.is_cancelled();
        timed_out = start.elapsed() >= timeout;
        if cancelled || timed_out {
            // not reaped yet (the waiter reaps it only after it exits): the pid is still ours
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            break;
        }
    }
    let status = waiter.join().ok().and_then(Result::ok);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let killed = timed_out || cancelled;
    Ok(Output {
        code: if killed {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout: read_back(out),
        stderr: read_back(err),
        timed_out: timed_out && !cancelled,
        cancelled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain-word_1.2/x:y"), "plain-word_1.2/x:y");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "\"it's\"");
        assert_eq!(shell_quote("a\0b"), "ab");
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "echo $HOME; ls".into()]),
            "sh -c 'echo $HOME; ls'"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s {}",
                shell_quote("a'b \"c\" $d `e` \\ !x")
            ))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b \"c\" $d `e` \\ !x");
    }

    #[test]
    fn colours_go() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
    }

    #[test]
    fn local_commands_and_timeouts() {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let t = CancelToken::new();
        let o = run_local(c, Some(b"in"), Duration::from_secs(10), &t).unwrap();
        assert_eq!(
            (o.code, o.stdout.as_slice(), o.stderr.as_slice()),
            (Some(3), &b"in"[..], &b"err\n"[..])
        );
        // a background child holding stdout does not keep the caller waiting
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "sleep 5 & echo started"]);
        let started = std::time::Instant::now();
        let o = run_local(c, None, Duration::from_secs(10), &t).unwrap();
        assert!(o.success() && started.elapsed() < Duration::from_secs(4));
        let mut c = std::process::Command::new("sleep");
        c.arg("10");
        let o = run_local(c, None, Duration::from_millis(200), &t).unwrap();
        assert!(o.timed_out && !o.success());
        // cancellation stops a running command at once
        let t2 = t.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            t2.cancel();
        });
        let mut c = std::process::Command::new("sleep");
        c.arg("10");
        let started = std::time::Instant::now();
        let o = run_local(c, None, Duration::from_secs(30), &t).unwrap();
        assert!(o.cancelled && started.elapsed() < Duration::from_secs(5));
        assert_eq!(o.status_text(), "was stopped (cancelled)");
    }

    #[test]
    fn output_tail() {
        let o = Output {
            code: Some(1),
            stdout: b"out\n".to_vec(),
            stderr: b"a\nb\n\nc\n".to_vec(),
            timed_out: false,
            cancelled: false,
        };
        assert_eq!(o.tail(2), "b\nc");
        assert_eq!(o.status_text(), "exited with status 1");
        let o = Output {
            stderr: vec![],
            ..o
        };
        assert_eq!(o.tail(2), "out");
    }
}
