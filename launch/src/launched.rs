//! The caller's side of the fork: [`launch`] forks the reaper, reads the status pipe and the
//! start code, and hands back a [`Launched`] workload, which the caller waits for or kills.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Pid};

use crate::child::reaper_main;
use crate::error::LaunchError;
use crate::plan::{prepare, ChildPlan};
use crate::read::{read_some, read_to_eof};
use crate::spec::LaunchSpec;
use crate::start_code::StartCode;
use crate::status::Reports;

/// How long [`Launched::kill`] waits for the reaper after SIGKILL to the workload.
const KILL_PATIENCE: Duration = Duration::from_secs(30);

/// How long [`launch`] waits for a workload that closed its start pipe without a code to end
/// (so that [`LaunchError::NoStartCode`] can say how it ended).
const NO_CODE_PATIENCE: Duration = Duration::from_secs(5);

/// How often [`Launched::wait_timeout`] polls the reaper.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// How the workload (the namespace init) ended, as relayed by its reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadExit {
    /// It exited with this status.
    Code(i32),
    /// It was killed by this signal (SIGKILL at the end of a CRIU dump, for instance).
    Signal(i32),
}

impl WorkloadExit {
    /// Whether it exited with status 0.
    pub fn success(self) -> bool {
        self == WorkloadExit::Code(0)
    }

    fn from_wait_status(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            WorkloadExit::Signal(libc::WTERMSIG(status))
        } else {
            WorkloadExit::Code(libc::WEXITSTATUS(status))
        }
    }
}

impl fmt::Display for WorkloadExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadExit::Code(c) => write!(f, "exit status {c}"),
            WorkloadExit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A started workload.
///
/// Its reaper is the caller's child: [`try_wait`](Self::try_wait),
/// [`wait_timeout`](Self::wait_timeout) and [`kill`](Self::kill) reap it. Dropping a
/// `Launched` leaves the workload running; its reaper then stays a zombie child of the caller
/// once the workload ends, until the caller exits (as `haul-launch` does at once).
#[derive(Debug)]
pub struct Launched {
    /// Host pid of the namespace init: the pid `haul pid PID` takes.
    pub host_pid: i32,
    /// The start code it reported (`O` when it runs; see [`crate::start_code`]).
    pub code: char,
    /// Host pid of the reaper, the caller's child that waits for the init.
    pub reaper_pid: i32,
    exit: Option<WorkloadExit>,
}

impl Launched {
    /// Whether the workload reported `O`.
    pub fn started(&self) -> bool {
        self.code == 'O'
    }

    /// The start code as one of ours, if it is.
    pub fn start_code(&self) -> Option<StartCode> {
        StartCode::from_char(self.code)
    }

    /// The line P.Haul's launcher printed: `Child <host pid> done, code <C>`.
    pub fn report_line(&self) -> String {
        format!("Child {} done, code {}", self.host_pid, self.code)
    }

    /// How the workload ended, if it has (reaps the reaper; never blocks).
    pub fn try_wait(&mut self) -> Result<Option<WorkloadExit>, LaunchError> {
        if self.exit.is_none() {
            self.exit = wait_pid(self.reaper_pid, libc::WNOHANG)
                .map_err(|source| LaunchError::Wait {
                    pid: self.reaper_pid,
                    source,
                })?
                .map(WorkloadExit::from_wait_status);
        }
        Ok(self.exit)
    }

    /// Wait up to `timeout` for the workload to end; `None` when it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<WorkloadExit>, LaunchError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_wait()? {
                return Ok(Some(exit));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// Kill the workload's whole pid namespace (SIGKILL to its init) unless it already ended,
    /// and reap it. Only valid on the node it was launched on, before it was migrated away.
    pub fn kill(&mut self) -> Result<WorkloadExit, LaunchError> {
        if let Some(exit) = self.try_wait()? {
            return Ok(exit);
        }
        // While the reaper has not been reaped, the init's pid is not reused by anyone else:
        // either the init still runs, or it just ended and the reaper is about to exit (then
        // ESRCH, which changes nothing).
        let _ = kill(Pid::from_raw(self.host_pid), Signal::SIGKILL);
        match self.wait_timeout(KILL_PATIENCE)? {
            Some(exit) => Ok(exit),
            None => Err(LaunchError::Wait {
                pid: self.reaper_pid,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the reaper did not exit within {} s of SIGKILL to the workload",
                        KILL_PATIENCE.as_secs()
                    ),
                ),
            }),
        }
    }
}

/// `waitpid(pid, flags)`, retrying on EINTR; `None` when WNOHANG found it still running.
///
/// Plain libc rather than `nix::sys::wait::waitpid`: nix decodes the status into its
/// `Signal` enum, which has no real-time signals, and fails with EINVAL *after* the child was
/// reaped when one killed it; the reaper relays the init's signal, whichever it was.
fn wait_pid(pid: i32, flags: libc::c_int) -> io::Result<Option<libc::c_int>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into our stack variable.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return Ok(Some(status));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Start `spec.program` as pid 1 of a new pid namespace, in its own session, and wait for its
/// start code. See the crate documentation for the process layout.
///
/// Returns once the workload reported its code (any code: check [`Launched::started`]) and
/// closed the start pipe, so it can be dumped right away. On a start timeout the workload is
/// killed and reaped.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let (program, fds) = prepare(spec)?;
    let plan = ChildPlan::new(spec, &program, &fds)?;
    let sys = |call: &'static str| {
        let program = spec.program.clone();
        move |source| LaunchError::Sys {
            call,
            program,
            source,
        }
    };

    // SAFETY: the child runs only async-signal-safe system calls on memory prepared above
    // (`plan`), then execs or `_exit`s; it never returns into Rust code of the caller
    // (crate::child).
    let reaper_pid = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => reaper_main(&plan),
        Ok(ForkResult::Parent { child }) => child.as_raw(),
        Err(e) => return Err(sys("fork")(e.into())),
    };
    // The caller keeps only the read ends.
    drop(plan);
    let ends = fds.into_caller_ends();

    let deadline = Instant::now() + spec.start_timeout;
    let (status, timed_out) =
        read_to_eof(&ends.status_r, deadline).map_err(sys("read status pipe"))?;
    let reports = Reports::decode(&status);
    if let Some((stage, errno)) = reports.failure {
        let _ = wait_pid(reaper_pid, 0);
        return Err(LaunchError::Setup {
            program: spec.program.clone(),
            stage,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let Some(host_pid) = reports.host_pid else {
        if timed_out {
            let _ = kill(Pid::from_raw(reaper_pid), Signal::SIGKILL);
        }
        let exit = wait_pid(reaper_pid, 0)
            .ok()
            .flatten()
            .map(WorkloadExit::from_wait_status);
        return Err(LaunchError::ReaperVanished {
            program: spec.program.clone(),
            reaper_pid,
            exit,
        });
    };
    let mut launched = Launched {
        host_pid,
        code: 'O',
        reaper_pid,
        exit: None,
    };
    let start_timeout = || LaunchError::StartTimeout {
        program: spec.program.clone(),
        host_pid,
        waited: spec.start_timeout,
    };
    if timed_out {
        // execve did not happen in time (the status pipe stayed open): give up.
        let _ = launched.kill();
        return Err(start_timeout());
    }
    let Some(start_r) = ends.start_r else {
        return Ok(launched);
    };
    let mut byte = [0u8; 1];
    match read_some(&start_r, &mut byte, deadline).map_err(sys("read start pipe"))? {
        Some(1) => {
            launched.code = byte[0] as char;
            // Return only once the workload closed fd 3 (end of file on the pipe): a dump
            // right after launch() must not find it holding a pipe to the launcher.
            loop {
                match read_some(&start_r, &mut byte, deadline).map_err(sys("read start pipe"))? {
                    Some(0) => return Ok(launched),
                    Some(_) => {}
                    None => {
                        let _ = launched.kill();
                        return Err(LaunchError::StartPipeKept {
                            program: spec.program.clone(),
                            host_pid,
                            waited: spec.start_timeout,
                        });
                    }
                }
            }
        }
        Some(_) => {
            let exit = launched.wait_timeout(NO_CODE_PATIENCE).ok().flatten();
            Err(LaunchError::NoStartCode {
                program: spec.program.clone(),
                host_pid,
                exit,
            })
        }
        None => {
            let _ = launched.kill();
            Err(start_timeout())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_cwd_and_netns_are_named() {
        let e = launch(&LaunchSpec::new("sh").cwd("/no/such/dir")).unwrap_err();
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
        let e = launch(&LaunchSpec::new("sh").netns("haul-no-such-netns")).unwrap_err();
        assert!(
            e.to_string().contains("/run/netns/haul-no-such-netns"),
            "{e}"
        );
    }

    #[test]
    fn exits_read_like_the_shell_says() {
        assert_eq!(
            WorkloadExit::from_wait_status(7 << 8),
            WorkloadExit::Code(7)
        );
        assert_eq!(
            WorkloadExit::from_wait_status(libc::SIGKILL),
            WorkloadExit::Signal(libc::SIGKILL)
        );
        assert_eq!(WorkloadExit::Code(7).to_string(), "exit status 7");
        assert_eq!(WorkloadExit::Signal(9).to_string(), "killed by signal 9");
    }
}
