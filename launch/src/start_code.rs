//! The one-byte start report a workload sends its launcher.
//!
//! P.Haul's `mem-touch` told its launcher how its start went through a pipe: `O` (running),
//! `L` (the log could not be opened), `M` (mmap failed); the launcher printed
//! `Child <pid> done, code <C>`. Here the launcher ([`crate::launch`]) passes the write end of
//! such a pipe as fd [`START_FD`] and names it in the environment variable [`START_FD_ENV`].
//! The workload takes it with [`StartReporter::from_env`], writes one byte with
//! [`StartReporter::report`] and the fd is closed right away, so no fd leading outside the
//! workload's process tree is left for CRIU to trip over. A process the workload forks before
//! reporting must drop its copy with [`StartReporter::discard`].

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// Environment variable naming the fd of the start pipe (set by [`crate::launch`]).
pub const START_FD_ENV: &str = "HAUL_START_FD";

/// The fd number the launcher gives the start pipe in the workload.
pub const START_FD: i32 = 3;

/// How a workload's start went, as one byte on the start pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartCode {
    /// `O`: started and running (for mtouch: memory mapped and pre-touched).
    Ok,
    /// `L`: the log file could not be opened.
    LogFailed,
    /// `M`: the memory could not be mapped.
    MapFailed,
    /// `F`: any other start failure (the workload's log or stderr says which).
    Failed,
}

impl StartCode {
    /// The byte sent on the pipe (and printed by the launcher).
    pub fn as_char(self) -> char {
        match self {
            StartCode::Ok => 'O',
            StartCode::LogFailed => 'L',
            StartCode::MapFailed => 'M',
            StartCode::Failed => 'F',
        }
    }

    /// The code a byte stands for, if it is one of ours.
    pub fn from_char(c: char) -> Option<Self> {
        match c {
            'O' => Some(StartCode::Ok),
            'L' => Some(StartCode::LogFailed),
            'M' => Some(StartCode::MapFailed),
            'F' => Some(StartCode::Failed),
            _ => None,
        }
    }
}

/// The workload's end of the start pipe (or nothing, when not started by a launcher).
#[derive(Debug)]
pub struct StartReporter {
    pipe: Option<File>,
}

impl StartReporter {
    /// Take the start pipe named by [`START_FD_ENV`], and remove the variable so that programs
    /// this one executes do not see it. Call it first thing in `main`, while the process has
    /// one thread. Without the variable, or when the fd it names is not a pipe, the reporter
    /// is disconnected and [`report`](Self::report) does nothing.
    pub fn from_env() -> Self {
        let Some(value) = std::env::var_os(START_FD_ENV) else {
            return StartReporter { pipe: None };
        };
        std::env::remove_var(START_FD_ENV);
        let Some(fd) = value.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            return StartReporter { pipe: None };
        };
        if fd < 0 {
            return StartReporter { pipe: None };
        }
        // SAFETY: fstat only writes into the zeroed stat buffer we pass; an invalid fd makes
        // it fail with EBADF, which we check.
        let is_fifo = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
        };
        if !is_fifo {
            return StartReporter { pipe: None };
        }
        // SAFETY: the launcher handed this fd to us for this purpose only; nothing else in the
        // process owns it (the variable is consumed above, so it is taken at most once).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        set_cloexec(&file);
        StartReporter { pipe: Some(file) }
    }

    /// A reporter that reports to nobody (a workload run by hand).
    pub fn disconnected() -> Self {
        StartReporter { pipe: None }
    }

    /// Whether a launcher is waiting for the report.
    pub fn is_connected(&self) -> bool {
        self.pipe.is_some()
    }

    /// Send `code` and close the pipe.
    pub fn report(self, code: StartCode) -> io::Result<()> {
        if let Some(mut pipe) = self.pipe {
            pipe.write_all(&[code.as_char() as u8])?;
        }
        Ok(())
    }

    /// Close the pipe without reporting (in a child forked before the parent reported).
    pub fn discard(self) {
        drop(self.pipe);
    }
}

fn set_cloexec(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on an fd we own changes only its close-on-exec flag.
    unsafe {
        libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            StartCode::Ok,
            StartCode::LogFailed,
            StartCode::MapFailed,
            StartCode::Failed,
        ] {
            assert_eq!(StartCode::from_char(c.as_char()), Some(c));
        }
        assert_eq!(StartCode::from_char('x'), None);
    }

    #[test]
    fn disconnected_reports_nothing() {
        let r = StartReporter::disconnected();
        assert!(!r.is_connected());
        r.report(StartCode::Ok).unwrap();
    }
}
