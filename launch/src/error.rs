//! Why a launch failed: each variant names the program, the pid or path involved, and what
//! to do where there is something to do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::launched::WorkloadExit;
use crate::status::Stage;

fn exit_suffix(exit: &Option<WorkloadExit>) -> String {
    exit.map(|e| format!(" ({e})")).unwrap_or_default()
}

/// Why a workload could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program is not an executable file, or not found in `PATH`.
    #[error(
        "program {program:?} not found or not executable (PATH is searched when it has no '/')"
    )]
    ProgramNotFound {
        /// The program as given.
        program: PathBuf,
    },
    /// The working directory cannot be used.
    #[error("working directory {path:?} is not usable: {source}")]
    Cwd {
        /// The directory.
        path: PathBuf,
        /// What `stat` said.
        #[source]
        source: io::Error,
    },
    /// The network namespace file cannot be opened.
    #[error("network namespace {path:?} cannot be opened: {source} (create it with `ip netns add NAME`)")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// The mount namespace file cannot be opened.
    #[error("mount namespace {path:?} cannot be opened: {source}")]
    Mntns {
        /// The namespace file.
        path: PathBuf,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// The output file cannot be opened.
    #[error("output file {path:?} cannot be opened: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// What `open` said.
        #[source]
        source: io::Error,
    },
    /// An argument, path or variable holds a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which string.
        what: String,
    },
    /// A system call in the caller failed.
    #[error("{call} failed while launching {program:?}: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The program being launched.
        program: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A step in the reaper or the init failed before the program ran.
    #[error("launching {program:?}: {stage} failed: {source}")]
    Setup {
        /// The program being launched.
        program: PathBuf,
        /// The step.
        stage: Stage,
        /// The error of that step.
        #[source]
        source: io::Error,
    },
    /// The reaper ended without reporting the init's pid.
    #[error("launching {program:?}: the reaper (pid {reaper_pid}) ended before reporting the workload's pid{}", exit_suffix(.exit))]
    ReaperVanished {
        /// The program being launched.
        program: PathBuf,
        /// The reaper's pid.
        reaper_pid: i32,
        /// How the reaper ended, if known.
        exit: Option<WorkloadExit>,
    },
    /// The workload closed its start pipe (or ended) without writing a start code.
    #[error("{program:?} (host pid {host_pid}) ended or closed fd 3 without reporting a start code{}; see its log", exit_suffix(.exit))]
    NoStartCode {
        /// The program.
        program: PathBuf,
        /// Host pid of the namespace init.
        host_pid: i32,
        /// How it ended, if it did within a few seconds.
        exit: Option<WorkloadExit>,
    },
    /// No start code within the timeout; the workload was killed.
    #[error(
        "no start code from {program:?} (host pid {host_pid}) within {waited:?}; it was killed"
    )]
    StartTimeout {
        /// The program.
        program: PathBuf,
        /// Host pid of the namespace init (killed).
        host_pid: i32,
        /// The timeout.
        waited: Duration,
    },
    /// The workload reported its start code but kept fd 3 open: CRIU would refuse to dump a
    /// pipe leading outside its tree. Killed.
    #[error("{program:?} (host pid {host_pid}) reported its start code but kept fd 3 (the start pipe) open for {waited:?}; it must close it (StartReporter::report does); it was killed")]
    StartPipeKept {
        /// The program.
        program: PathBuf,
        /// Host pid of the namespace init (killed).
        host_pid: i32,
        /// The timeout.
        waited: Duration,
    },
    /// Waiting for the reaper failed.
    #[error("waitpid({pid}) failed: {source}")]
    Wait {
        /// The reaper's pid.
        pid: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}
