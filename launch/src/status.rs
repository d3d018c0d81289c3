//! The status pipe: how the two forked children tell the caller what became of the launch.
//!
//! The caller creates the pipe (close-on-exec) before the fork; the reaper and the init
//! inherit the write end, the caller keeps the read end and reads until end of file, which
//! comes when every write end is closed: the reaper closes its copy once it reported the
//! init's pid, the init's copy closes itself when `execve` succeeds. So end of file with a
//! pid and no failure means "the program runs".
//!
//! Every message is 6 bytes (`MSG_LEN`), written with one `write(2)` of a stack buffer (atomic
//! on a pipe, below `PIPE_BUF`, and async-signal-safe, so the children can send it):
//!
//! ```text
//! byte   0      1       2..6
//!        'P'    0       host pid of the init (i32, little endian)     sent by the reaper
//!        'E'    stage   errno of the failed step (i32, little endian) sent by either child
//! ```
//!
//! The stage byte is a [`Stage`]'s number, in the order of the enum. Both ends of the pipe are
//! the same build (the children are forks of the caller), so the numbers are internal to one
//! launch and never stored: a new stage goes where it reads best.
//!
//! A failure ends the child that sent it (`_exit(127)`); the caller reports it as
//! [`LaunchError::Setup`](crate::LaunchError::Setup) with the [`Stage`] and the errno.

use std::fmt;
use std::os::fd::RawFd;

/// The size of every message on the status pipe, in bytes.
pub(crate) const MSG_LEN: usize = 6;

// One write(2) of a message is atomic on a pipe only up to PIPE_BUF bytes.
const _: () = assert!(MSG_LEN <= libc::PIPE_BUF);

const TAG_PID: u8 = b'P';
const TAG_FAILED: u8 = b'E';

/// The step of the launch that failed in a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// `setsid()` in the reaper.
    ReaperSetsid = 1,
    /// `setns(CLONE_NEWNET)` into the network namespace.
    Setns,
    /// `setns(CLONE_NEWNS)` into the mount namespace, or reopening /dev/null and the output
    /// file there.
    SetnsMnt,
    /// `unshare(CLONE_NEWPID)`.
    Unshare,
    /// `fork()` of the namespace init.
    Fork,
    /// `setsid()` in the namespace init.
    InitSetsid,
    /// `chdir()` to the working directory.
    Chdir,
    /// `dup2()` of stdin/stdout/stderr.
    Stdio,
    /// `dup2()` of the start pipe to fd 3.
    StartFd,
    /// `execve()` of the program.
    Exec,
}

impl Stage {
    const ALL: [Stage; 10] = [
        Stage::ReaperSetsid,
        Stage::Setns,
        Stage::SetnsMnt,
        Stage::Unshare,
        Stage::Fork,
        Stage::InitSetsid,
        Stage::Chdir,
        Stage::Stdio,
        Stage::StartFd,
        Stage::Exec,
    ];

    fn from_u8(v: u8) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::ReaperSetsid => "setsid() in the reaper",
            Stage::Setns => "setns(CLONE_NEWNET) into the network namespace",
            Stage::SetnsMnt => {
                "setns(CLONE_NEWNS) into the mount namespace (or reopening /dev/null and the output file there)"
            }
            Stage::Unshare => "unshare(CLONE_NEWPID)",
            Stage::Fork => "fork() of the namespace init",
            Stage::InitSetsid => "setsid() in the namespace init",
            Stage::Chdir => "chdir() to the working directory",
            Stage::Stdio => "dup2() of stdin/stdout/stderr",
            Stage::StartFd => "dup2() of the start pipe to fd 3",
            Stage::Exec => "execve()",
        })
    }
}

/// One message on the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The reaper forked the init, whose pid in the host pid namespace this is.
    InitForked {
        /// Host pid of the init.
        host_pid: i32,
    },
    /// A step failed in the reaper or the init, with this errno.
    Failed {
        /// The step.
        stage: Stage,
        /// `errno` after it.
        errno: i32,
    },
}

impl Report {
    /// The bytes on the pipe (no allocation: callable after the fork).
    pub(crate) const fn encode(self) -> [u8; MSG_LEN] {
        let (tag, stage, value) = match self {
            Report::InitForked { host_pid } => (TAG_PID, 0, host_pid),
            Report::Failed { stage, errno } => (TAG_FAILED, stage as u8, errno),
        };
        let v = value.to_le_bytes();
        [tag, stage, v[0], v[1], v[2], v[3]]
    }

    /// The message `msg` holds; `None` for an unknown tag. An unknown stage byte reads as
    /// [`Stage::Exec`] (the last step), so a failure is never lost.
    pub(crate) fn decode(msg: &[u8; MSG_LEN]) -> Option<Report> {
        let value = i32::from_le_bytes([msg[2], msg[3], msg[4], msg[5]]);
        match msg[0] {
            TAG_PID => Some(Report::InitForked { host_pid: value }),
            TAG_FAILED => Some(Report::Failed {
                stage: Stage::from_u8(msg[1]).unwrap_or(Stage::Exec),
                errno: value,
            }),
            _ => None,
        }
    }

    /// Child side: write the message to the status pipe with one `write(2)`. Async-signal-safe
    /// (a stack buffer and one system call); a failed write is ignored, as there is nobody
    /// left to tell (the caller then sees end of file without this report).
    pub(crate) fn send(self, status_w: RawFd) {
        let msg = self.encode();
        // SAFETY: write(2) of a MSG_LEN-byte stack buffer to an fd the child holds.
        unsafe {
            libc::write(status_w, msg.as_ptr().cast(), msg.len());
        }
    }
}

/// Caller side: what the children reported, from everything read off the status pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reports {
    /// The init's host pid, when the reaper reported it.
    pub(crate) host_pid: Option<i32>,
    /// The step that failed and its errno, when one did.
    pub(crate) failure: Option<(Stage, i32)>,
}

impl Reports {
    /// Decode every whole message in `bytes` (a trailing partial one and unknown tags are
    /// ignored; of repeated messages, the last counts).
    pub(crate) fn decode(bytes: &[u8]) -> Reports {
        let mut reports = Reports::default();
        for msg in bytes.chunks_exact(MSG_LEN) {
            let msg: &[u8; MSG_LEN] = msg.try_into().expect("chunks_exact yields MSG_LEN bytes");
            match Report::decode(msg) {
                Some(Report::InitForked { host_pid }) => reports.host_pid = Some(host_pid),
                Some(Report::Failed { stage, errno }) => reports.failure = Some((stage, errno)),
                None => {}
            }
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip() {
        for v in 1..=10u8 {
            assert_eq!(Stage::from_u8(v).unwrap() as u8, v);
        }
        assert_eq!(Stage::from_u8(0), None);
        assert_eq!(Stage::from_u8(11), None);
    }

    #[test]
    fn messages_are_fixed_size_and_little_endian() {
        let pid = Report::InitForked { host_pid: 4242 }.encode();
        assert_eq!(pid, [b'P', 0, 0x92, 0x10, 0, 0]);
        let failed = Report::Failed {
            stage: Stage::Setns,
            errno: libc::EINVAL,
        }
        .encode();
        assert_eq!(failed, [b'E', 2, 22, 0, 0, 0]);
    }

    #[test]
    fn reports_round_trip() {
        let mut reports = vec![Report::InitForked { host_pid: i32::MAX }];
        reports.extend(Stage::ALL.map(|stage| Report::Failed { stage, errno: -1 }));
        for r in reports {
            assert_eq!(Report::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn the_caller_decodes_the_stream() {
        let mut bytes = Vec::new();
        assert_eq!(Reports::decode(&bytes), Reports::default());
        bytes.extend(Report::InitForked { host_pid: 77 }.encode());
        assert_eq!(
            Reports::decode(&bytes),
            Reports {
                host_pid: Some(77),
                failure: None
            }
        );
        // The init's exec failed after the reaper reported its pid.
        bytes.extend(
            Report::Failed {
                stage: Stage::Exec,
                errno: libc::ENOEXEC,
            }
            .encode(),
        );
        // An unknown tag and a trailing partial message are ignored.
        bytes.extend([b'X', 0, 1, 2, 3, 4]);
        bytes.extend([b'E', 1, 0]);
        assert_eq!(
            Reports::decode(&bytes),
            Reports {
                host_pid: Some(77),
                failure: Some((Stage::Exec, libc::ENOEXEC))
            }
        );
    }

    #[test]
    fn an_unknown_stage_still_reads_as_a_failure() {
        let r = Report::decode(&[b'E', 200, 1, 0, 0, 0]);
        assert_eq!(
            r,
            Some(Report::Failed {
                stage: Stage::Exec,
                errno: 1
            })
        );
    }
}
