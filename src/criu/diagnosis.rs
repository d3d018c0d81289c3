//! Why a CRIU dump or restore failed, read from its log: the error that caused the failure
//! (never one of the lines CRIU logs on every run), the resource it was about, and the remedy.
//!
//! ```text
//! (00.123323) Error (criu/files-reg.c:1031): Can't dump ghost file /srv/x of 4194304 size, increase limit
//!  ^time       ^level ^source                ^message
//! (00.074739)      1: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket (id 7): Address already in use
//!              ^restored task's pid (restore logs)
//! ```
//!
//! [`diagnose`] walks the log's error lines in order, skips the [`HARMLESS`] ones, and takes the
//! first that a [`Rule`] recognises as the cause; the lines around it (the fd CRIU was dumping,
//! the socket it was restoring) name the resource. A failure no rule knows is
//! [`ObstacleKind::Unrecognised`], with CRIU's own last error lines and the log's path, so the
//! user is never worse off than reading the log. Every rule and every harmless line is tested
//! on real CRIU 4.2.1 logs (tests/fixtures/criu-logs/, made by its record.sh).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::obstacle::{ObstacleKind, Remedy, Resource};

/// A line CRIU logs as an error although nothing failed, and why it is harmless.
#[derive(Debug, Clone, Copy)]
pub struct HarmlessLine {
    /// A substring of the message that identifies it.
    pub contains: &'static str,
    /// Why it never causes a failure.
    pub why: &'static str,
}

/// Error lines that are never the cause of a failure.
pub const HARMLESS: &[HarmlessLine] = &[
    HarmlessLine {
        contains: "rlimit: Can't setup RLIMIT_NOFILE for self",
        why: "logged first on every run without CAP_SYS_RESOURCE (CRIU keeps the soft limit); success and failure alike",
    },
    HarmlessLine {
        contains: "Will restore",
        why: "a warning that an interrupted system call is restarted",
    },
];

/// What the failed CRIU run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// `criu dump` / DUMP / PRE_DUMP.
    Dump,
    /// `criu restore` / RESTORE.
    Restore,
    /// Anything else (page server, lazy pages, check).
    Other,
}

/// The diagnosis of one failed CRIU run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// What kind of obstacle.
    pub kind: ObstacleKind,
    /// Dump or restore (from the log's last line).
    pub operation: Operation,
    /// What it is about, when the log names it.
    pub resource: Option<Resource>,
    /// The line that caused the failure (without its timestamp).
    pub cause_line: String,
    /// Its line number in the log (1-based; in an excerpt, of the excerpt).
    pub cause_line_no: usize,
    /// What makes it work.
    pub remedy: Remedy,
    /// CRIU's own last error lines (harmless ones left out), for the unrecognised case and
    /// for anyone who wants to check.
    pub last_errors: Vec<String>,
    /// The log, when it came from a file.
    pub log: Option<PathBuf>,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.operation {
            Operation::Dump => "dump",
            Operation::Restore => "restore",
            Operation::Other => "run",
        };
        if self.kind == ObstacleKind::Unrecognised {
            write!(f, "CRIU's {op} failed: {}", self.cause_line)?;
            if self.last_errors.len() > 1 {
                write!(f, " (then: {})", self.last_errors[1..].join(" | "))?;
            }
        } else {
            write!(f, "CRIU's {op} failed on {}", self.kind)?;
            if let Some(r) = &self.resource {
                write!(f, ": {r}")?;
            }
            write!(
                f,
                "; remedy: {}. CRIU said: {}",
                self.remedy, self.cause_line
            )?;
        }
        if let Some(log) = &self.log {
            write!(f, " (log: {})", log.display())?;
        }
        Ok(())
    }
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogLine<'a> {
    /// 1-based line number.
    no: usize,
    /// The text after the timestamp (and a restore's task pid).
    text: &'a str,
    /// Whether it is an `Error (...)` line.
    error: bool,
}

/// Strips `(00.123) ` and a restore's `     1: ` prefix; `pie: 1: ` lines are kept whole.
fn parse(no: usize, line: &str) -> LogLine<'_> {
    let mut text = line.trim_end();
    if text.starts_with('(') {
        if let Some(end) = text.find(") ") {
            text = text[end + 2..].trim_start();
        }
    }
    if let Some((pid, rest)) = text.split_once(": ") {
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            text = rest.trim_start();
        }
    }
    let error = text.starts_with("Error (") || text.contains(": Error (");
    LogLine { no, text, error }
}

/// The message of an error line, after `Error (file:line): `.
fn message<'a>(l: &LogLine<'a>) -> &'a str {
    l.text.split_once("): ").map_or(l.text, |(_, m)| m)
}

fn harmless(l: &LogLine<'_>) -> bool {
    HARMLESS.iter().any(|h| l.text.contains(h.contains))
}

/// A classifier rule: a message fragment, the obstacle it means, and how to find the resource.
pub struct Rule {
    /// Fragments of the error message, all of which must be present.
    pub contains: &'static [&'static str],
    /// The obstacle.
    pub kind: ObstacleKind,
    /// Reads the resource from the cause line and the lines before it.
    resource: fn(&str, &[LogLine<'_>]) -> Option<Resource>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("contains", &self.contains)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The rules, most specific first. Those above the comment in the list were seen in real
/// CRIU 4.2.1 logs (tests/fixtures/criu-logs/); the rest are CRIU's messages from its source.
pub const RULES: &[Rule] = &[
    Rule {
        contains: &["Can't dump ghost file"],
        kind: ObstacleKind::GhostFileTooBig,
        resource: ghost_file,
    },
    Rule {
        contains: &["External socket is used"],
        kind: ObstacleKind::ExternalUnixSocket,
        resource: external_socket,
    },
    Rule {
        contains: &["External socket found in image"],
        kind: ObstacleKind::ExternalUnixSocket,
        resource: nothing,
    },
    Rule {
        contains: &["Can't dump half of stream unix connection"],
        kind: ObstacleKind::ExternalUnixStream,
        resource: external_socket,
    },
    Rule {
        contains: &["Connected TCP socket"],
        kind: ObstacleKind::EstablishedTcp,
        resource: tcp_socket,
    },
    Rule {
        contains: &["Can't bind inet socket", "Address already in use"],
        kind: ObstacleKind::PortTaken,
        resource: bound_port,
    },
    Rule {
        contains: &["Can't fork for", "File exists"],
        kind: ObstacleKind::PidTaken,
        resource: forked_pid,
    },
    Rule {
        contains: &["has bad size"],
        kind: ObstacleKind::FileDiffers,
        resource: bad_file,
    },
    Rule {
        contains: &["has bad mode"],
        kind: ObstacleKind::FileDiffers,
        resource: bad_file,
    },
    Rule {
        contains: &["Can't open file", "No such file or directory"],
        kind: ObstacleKind::FileMissing,
        resource: missing_file,
    },
    Rule {
        contains: &["file locks are hold"],
        kind: ObstacleKind::FileLocks,
        resource: nothing,
    },
    Rule {
        contains: &["Unresolved lock found"],
        kind: ObstacleKind::FileLocks,
        resource: nothing,
    },
    Rule {
        contains: &["io_uring"],
        kind: ObstacleKind::IoUring,
        resource: io_uring,
    },
    Rule {
        contains: &["SysVIPC shmem map", "doesn't live in IPC ns"],
        kind: ObstacleKind::SysvIpcHostNamespace,
        resource: sysv_map,
    },
    Rule {
        contains: &["Unable to open dev/ptmx with specified index"],
        kind: ObstacleKind::Pty,
        resource: pty_index,
    },
    Rule {
        contains: &["A session leader of", "is outside of its pid namespace"],
        kind: ObstacleKind::SessionOutside,
        resource: session_pid,
    },
    Rule {
        contains: &["is not a session leader", "--shell-job"],
        kind: ObstacleKind::SessionOutside,
        resource: nothing,
    },
    // The rules below come from CRIU 4.2's source (the file:line in each comment) and
    // ENVIRONMENT.md's observations; no workload here produces them yet.
    // criu/files-reg.c:1122
    Rule {
        contains: &["Can't create link remap for"],
        kind: ObstacleKind::LinkRemap,
        resource: link_remap_file,
    },
    // criu/files-reg.c:1790
    Rule {
        contains: &["Can't lookup mount="],
        kind: ObstacleKind::UnreachableMount,
        resource: nothing,
    },
    // criu/arch/x86/cpu.c:223, 247, 262, 274, 297
    Rule {
        contains: &["capabilities do not match run time"],
        kind: ObstacleKind::CpuMismatch,
        resource: nothing,
    },
    Rule {
        contains: &["FPU feature required by image"],
        kind: ObstacleKind::CpuMismatch,
        resource: nothing,
    },
    Rule {
        contains: &["CPU xfeatures has unsupported bits"],
        kind: ObstacleKind::CpuMismatch,
        resource: nothing,
    },
    Rule {
        contains: &["CPU xsave size mismatch"],
        kind: ObstacleKind::CpuMismatch,
        resource: nothing,
    },
    // ENVIRONMENT.md: lazy pages without a raised fs.pipe-max-size
    Rule {
        contains: &["page-pipe: splice"],
        kind: ObstacleKind::PipeSizeLimit,
        resource: nothing,
    },
];

fn link_remap_file(cause: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    // "Can't create link remap for PATH. Use --link-remap option."
    let path = between(cause, "Can't create link remap for ", ". Use")?;
    Some(Resource::Fd {
        pid: dumping_pid(before),
        fd: dumped_fd(before, path),
        path: format!("/{}", path.trim_start_matches('/')),
    })
}

fn session_pid(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    let pid = between(cause, "A session leader of ", "(")?
        .trim()
        .parse()
        .ok()?;
    Some(Resource::Pid { pid })
}

fn nothing(_: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    None
}

/// The text between `after` and the next `until` in `s`.
fn between<'a>(s: &'a str, after: &str, until: &str) -> Option<&'a str> {
    let start = s.find(after)? + after.len();
    let rest = &s[start..];
    Some(rest.find(until).map_or(rest, |e| &rest[..e]))
}

/// The pid CRIU was dumping files of, from `Dumping opened files (pid: N)` before the cause.
fn dumping_pid(before: &[LogLine<'_>]) -> Option<i32> {
    before
        .iter()
        .rev()
        .find_map(|l| between(l.text, "(pid: ", ")")?.parse().ok())
}

/// The fd whose `Dumping path for N fd via self M [PATH]` line precedes the cause, when the
/// path contains `needle`.
fn dumped_fd(before: &[LogLine<'_>], needle: &str) -> Option<i32> {
    before.iter().rev().find_map(|l| {
        let rest = l.text.strip_prefix("Dumping path for ")?;
        let (fd, tail) = rest.split_once(" fd via self ")?;
        tail.contains(needle).then(|| fd.parse().ok()).flatten()
    })
}

/// The last `PID fdinfo N:` line before the cause (the fd CRIU was dumping).
fn last_fdinfo(before: &[LogLine<'_>]) -> Option<(i32, i32)> {
    before.iter().rev().find_map(|l| {
        let (pid, rest) = l.text.split_once(" fdinfo ")?;
        let fd = rest.split(':').next()?;
        Some((pid.parse().ok()?, fd.parse().ok()?))
    })
}

fn ghost_file(cause: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    // "Can't dump ghost file PATH of SIZE size, increase limit"
    let rest = cause.split_once("Can't dump ghost file ")?.1;
    let (path, size) = rest.rsplit_once(" of ")?;
    let size: u64 = size.split_whitespace().next()?.parse().ok()?;
    Some(Resource::Fd {
        pid: dumping_pid(before),
        fd: dumped_fd(before, path),
        path: format!("{path} (deleted, {size} bytes allocated)"),
    })
}

/// The line CRIU prints about the PEER of an external unix socket ("Runaway socket" without
/// --ext-unix-sk, "Ext stream not supported" with it): `ino` is the peer's, `peer_ino` ours.
fn external_peer_line<'a>(before: &'a [LogLine<'a>]) -> Option<&'a LogLine<'a>> {
    before.iter().rev().find(|l| {
        l.text.contains("Runaway socket:") || l.text.contains("Ext stream not supported:")
    })
}

fn external_socket(_: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    // "unix: \tRunaway socket: ino 91613 peer_ino 90019 family    1 type    1 state  1 name /x/peer.sock"
    let l = external_peer_line(before)?;
    let word = |k: &str| between(l.text, k, " ").and_then(|v| v.trim().parse::<u64>().ok());
    let name = l
        .text
        .split_once(" name ")
        .map(|(_, n)| n.trim().to_string())
        .filter(|n| !n.is_empty() && n != "(null)");
    Some(Resource::Socket {
        ino: word("peer_ino "),
        local: None,
        peer_ino: word(": ino "),
        peer: name,
    })
}

/// An external unix socket is a stream one (no option helps) unless CRIU's line about its
/// peer says `type 2` (datagram).
fn external_kind(msg: &str, before: &[LogLine<'_>]) -> ObstacleKind {
    if msg.contains("half of stream") {
        return ObstacleKind::ExternalUnixStream;
    }
    let dgram = external_peer_line(before)
        .and_then(|l| between(l.text, " type ", " state"))
        .is_some_and(|t| t.trim() == "2");
    if dgram {
        ObstacleKind::ExternalUnixSocket
    } else {
        ObstacleKind::ExternalUnixStream
    }
}

fn tcp_socket(_: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    let (pid, fd) = last_fdinfo(before)?;
    let ino = before
        .iter()
        .rev()
        .find_map(|l| between(l.text, "Searching for socket 0x", " "))
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    Some(Resource::Socket {
        ino,
        local: Some(format!("fd {fd} of pid {pid}")),
        peer_ino: None,
        peer: None,
    })
}

fn bound_port(_: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    // "inet: 	Restore: family AF_INET    type SOCK_STREAM    proto IPPROTO_TCP      port 47613 state TCP_LISTEN       src_addr 127.0.0.1"
    let l = before
        .iter()
        .rev()
        .find(|l| l.text.contains("Restore: family"))?;
    let words: Vec<&str> = l.text.split_whitespace().collect();
    let after = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let proto = match (after("proto")?, after("family")?) {
        ("IPPROTO_TCP", "AF_INET6") => "tcp6",
        ("IPPROTO_TCP", _) => "tcp",
        (_, "AF_INET6") => "udp6",
        _ => "udp",
    };
    Some(Resource::Port {
        proto: proto.into(),
        addr: after("src_addr").unwrap_or("?").to_string(),
        port: after("port")?.parse().ok()?,
    })
}

fn forked_pid(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    let pid = between(cause, "Can't fork for ", ":")?
        .trim()
        .parse()
        .ok()?;
    Some(Resource::Pid { pid })
}

fn bad_file(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    // "File PATH has bad size 434 (expect 206)" / "File PATH has bad mode 0100644 (expect 0100600)"
    let rest = cause.split_once("File ")?.1;
    let (path, tail) = rest.split_once(" has bad ")?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let (what, nums) = tail.split_once(' ')?;
    let found = nums.split_whitespace().next()?;
    let expect = between(nums, "(expect ", ")")?;
    let mut r = Resource::File {
        path,
        size: None,
        expected_size: None,
        mode: None,
        expected_mode: None,
    };
    if let Resource::File {
        size,
        expected_size,
        mode,
        expected_mode,
        ..
    } = &mut r
    {
        if what == "size" {
            *size = found.parse().ok();
            *expected_size = expect.parse().ok();
        } else {
            *mode = u32::from_str_radix(found, 8).ok();
            *expected_mode = u32::from_str_radix(expect, 8).ok();
        }
    }
    Some(r)
}

fn missing_file(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    let path = between(cause, "Can't open file ", ":")?;
    let path = path.split(" on restore").next()?.to_string();
    Some(Resource::File {
        path,
        size: None,
        expected_size: None,
        mode: None,
        expected_mode: None,
    })
}

fn io_uring(cause: &str, before: &[LogLine<'_>]) -> Option<Resource> {
    let pid = before.iter().rev().find_map(|l| {
        between(l.text, "Collecting mappings (pid: ", ")")?
            .parse()
            .ok()
    });
    Some(Resource::Fd {
        pid,
        fd: None,
        path: if cause.contains("anon_inode") {
            "anon_inode:[io_uring] (mapped rings)".into()
        } else {
            "io_uring".into()
        },
    })
}

fn sysv_map(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    // "Task 26255 with SysVIPC shmem map @7f1477708000 doesn't live in IPC ns"
    let pid: i32 = between(cause, "Task ", " ")?.parse().ok()?;
    let at = between(cause, "map @", " ")?;
    Some(Resource::Other {
        text: format!("SysV shared memory attached at 0x{at} by pid {pid}"),
    })
}

fn pty_index(cause: &str, _: &[LogLine<'_>]) -> Option<Resource> {
    let index = cause.split_whitespace().last()?.parse().ok()?;
    Some(Resource::Pty { index })
}

/// How many of CRIU's last error lines a diagnosis keeps.
pub const LAST_ERRORS: usize = 5;

/// Diagnoses a CRIU log's text; `None` when it shows no failure (no error line but harmless
/// ones, and no `FAILED`).
pub fn diagnose(log: &str) -> Option<Diagnosis> {
    let lines: Vec<LogLine<'_>> = log
        .lines()
        .enumerate()
        .map(|(i, l)| parse(i + 1, l))
        .collect();
    let errors: Vec<&LogLine<'_>> = lines.iter().filter(|l| l.error && !harmless(l)).collect();
    if errors.is_empty() {
        return None;
    }
    let operation = if log.contains("Restoring FAILED") {
        Operation::Restore
    } else if log.contains("Dumping FAILED") || log.contains("Pre-dumping FAILED") {
        Operation::Dump
    } else {
        Operation::Other
    };
    let last_errors: Vec<String> = errors[errors.len().saturating_sub(LAST_ERRORS)..]
        .iter()
        .map(|l| message(l).to_string())
        .collect();
    for e in &errors {
        let msg = message(e);
        if let Some(rule) = RULES
            .iter()
            .find(|r| r.contains.iter().all(|c| msg.contains(c)))
        {
            let before = &lines[..e.no - 1];
            let kind = match rule.kind {
                ObstacleKind::ExternalUnixSocket if msg.contains("External socket is used") => {
                    external_kind(msg, before)
                }
                k => k,
            };
            return Some(Diagnosis {
                kind,
                operation,
                resource: (rule.resource)(msg, before),
                cause_line: msg.to_string(),
                cause_line_no: e.no,
                remedy: kind.remedy(),
                last_errors,
                log: None,
            });
        }
    }
    let first = errors[0];
    Some(Diagnosis {
        kind: ObstacleKind::Unrecognised,
        operation,
        resource: None,
        cause_line: message(first).to_string(),
        cause_line_no: first.no,
        remedy: Remedy::Unknown,
        last_errors,
        log: None,
    })
}

/// The diagnosis of a failed CRIU request, from the log its error names (`None` when the
/// error names no log, the log cannot be read, or it shows no failure).
pub fn diagnose_error(e: &super::CriuError) -> Option<Diagnosis> {
    let log = match e {
        super::CriuError::Refused { log, .. } | super::CriuError::WorkerExited { log, .. } => {
            log.as_ref()?
        }
        _ => return None,
    };
    diagnose_file(log).ok().flatten()
}

/// [`diagnose`] of a log file (its path goes into the diagnosis).
pub fn diagnose_file(path: &Path) -> std::io::Result<Option<Diagnosis>> {
    let bytes = std::fs::read(path)?;
    Ok(
        diagnose(&String::from_utf8_lossy(&bytes)).map(|d| Diagnosis {
            log: Some(path.to_path_buf()),
            ..d
        }),
    )
}

#[cfg(test)]
mod tests;
