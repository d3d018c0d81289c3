//! Starting a workload the way CRIU can checkpoint it.
//!
//! CRIU dumps a process tree only when nothing in it leads outside: the workload must be the
//! init (pid 1) of its own pid namespace, so that its pids can be restored on a node where
//! they are taken, and the leader of its own session, so that its session is inside the
//! tree; it must hold no fd inherited from whoever started it. [`launch`] does what
//! `setsid unshare --pid --fork -- setsid CMD` does, optionally inside a network namespace
//! (what `nsenter --net=/run/netns/NAME` does, never `ip netns exec`, which also makes a mount
//! namespace CRIU then refuses), without a new mount namespace:
//!
//! ```text
//! caller ── fork ─▶ reaper                    host pid namespace, comm "haul-reaper"
//!                    setsid()                 its own session, no controlling terminal
//!                    setns(MNT, NEWNS)        optional: a node's own view of the files
//!                                             (/dev/null and the output reopened there)
//!                    setns(NAME, NEWNET)      optional: /run/netns/NAME
//!                    unshare(CLONE_NEWPID)    its children go into a new pid namespace
//!                    fork ─▶ init             pid 1 there; its host pid is reported
//!                    │        setsid()        session leader inside the dumped tree
//!                    │        chdir(cwd); stdin /dev/null, stdout+stderr /dev/null or a file
//!                    │        fd 3 = start pipe (optional), every other fd closed
//!                    │        signal mask and dispositions reset; execve(program)
//!                    waitpid(init), then exits the way the init did
//! ```
//!
//! **The reaper stays**, as the `unshare --fork` parent of the acceptance launcher does: it
//! holds no fd (stdio on /dev/null, all others closed), sits in the host pid namespace outside
//! the dumped tree (CRIU dumps the tree rooted at the init and does not care about its
//! parent), and reaps the init when it ends (also when CRIU kills it at the end of a
//! migration), exiting with the init's status, so the caller of [`launch`] learns how the
//! workload ended with [`Launched::wait_timeout`]. When the caller exits first (the
//! `haul-launch` program does, right after printing the pid), the reaper is reparented to the
//! host's init or subreaper and goes on reaping. The workload on the destination node, once
//! restored by `criu restore -d`, is a child of the host's init there.
//!
//! The start code: with [`StartProtocol::StartFd`] the init gets the write end of a pipe as
//! fd 3, named by `HAUL_START_FD=3` ([`crate::start_code`]); the workload writes one byte
//! (`O`, `L`, `M`) and closes it, so no fd outside the tree remains when it is dumped. With
//! [`StartProtocol::Exec`] (programs that know nothing of it, e.g. redis-server) the code is
//! `O` as soon as `execve` succeeded.
//!
//! Everything between `fork` and `execve` is async-signal-safe (plain system calls on data
//! prepared before the fork): the caller may be multi-threaded, as a test harness is.

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::start_code::{StartCode, START_FD, START_FD_ENV};

/// Where named network namespaces live (`ip netns add NAME` creates `/run/netns/NAME`).
pub const NETNS_DIR: &str = "/run/netns";

/// How the launcher learns that the workload started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartProtocol {
    /// The workload reports one byte on fd 3 (named by `HAUL_START_FD`) and closes it; see
    /// [`crate::start_code`]. All the programs of this crate do.
    StartFd,
    /// The program knows nothing of a start pipe: a successful `execve` counts as `O`.
    Exec,
}

/// What to start and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The program: a path, or a name looked up in the caller's `PATH`.
    pub program: PathBuf,
    /// Its arguments (without argv\[0\], which is `program` as given).
    pub args: Vec<OsString>,
    /// Its working directory (the shared directory, where its logs and stop files live).
    pub cwd: PathBuf,
    /// A network namespace to run in: a name under [`NETNS_DIR`] or a path to a namespace file.
    pub netns: Option<String>,
    /// A mount namespace to run in (a namespace file: a bind-mounted `/proc/PID/ns/mnt`), the
    /// stand-in for a node's own disks when two nodes share one machine. `cwd`, `output`
    /// and the program are resolved there (give absolute paths); `haul pid` must run in the
    /// same namespace, so that CRIU dumps no mount namespace.
    pub mntns: Option<PathBuf>,
    /// A file for its stdout and stderr (appended to); `None` puts them on `/dev/null`.
    pub output: Option<PathBuf>,
    /// Environment variables set for it on top of the caller's environment.
    pub env: Vec<(OsString, OsString)>,
    /// How the start is reported.
    pub protocol: StartProtocol,
    /// How long to wait for the start code before giving up (and killing the workload).
    pub start_timeout: Duration,
    /// Start it as pid 1 of a new pid namespace (the default). `false` leaves it in the
    /// caller's pid namespace, with a host pid that a restore elsewhere needs free (a
    /// workload for haul's pre-flight "pid taken" check).
    pub own_pid_namespace: bool,
}

impl LaunchSpec {
    /// Start `program` with no arguments in the caller's working directory, outside any
    /// network namespace, with the [`StartProtocol::StartFd`] protocol and a 60 s timeout.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        LaunchSpec {
            program: program.into(),
            args: Vec::new(),
            cwd: PathBuf::from("."),
            netns: None,
            mntns: None,
            output: None,
            env: Vec::new(),
            protocol: StartProtocol::StartFd,
            start_timeout: Duration::from_secs(60),
            own_pid_namespace: true,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Set the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = dir.into();
        self
    }

    /// Run inside the network namespace `name` (under [`NETNS_DIR`], or a path).
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Run inside the mount namespace of the namespace file `path` (see
    /// [`mntns`](Self::mntns)).
    pub fn mntns(mut self, path: impl Into<PathBuf>) -> Self {
        self.mntns = Some(path.into());
        self
    }

    /// Send stdout and stderr to `path` (appended to).
    pub fn output(mut self, path: impl Into<PathBuf>) -> Self {
        self.output = Some(path.into());
        self
    }

    /// Set an environment variable for the workload.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Choose the start protocol.
    pub fn protocol(mut self, protocol: StartProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Run it in the caller's pid namespace instead of a new one (see
    /// [`own_pid_namespace`](Self::own_pid_namespace)).
    pub fn in_callers_pid_namespace(mut self) -> Self {
        self.own_pid_namespace = false;
        self
    }

    /// Set the start timeout.
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }
}

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
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the workload's whole pid namespace (SIGKILL to its init) unless it already ended,
    /// and reap it. Only valid on the node it was launched on, before it was migrated away.
    pub fn kill(&mut self) -> Result<WorkloadExit, LaunchError> {
        if let Some(exit) = self.try_wait()? {
            return Ok(exit);
        }
        // While the reaper has not been reaped, the init's pid is not reused by anyone else:
        // either the init still runs, or it just ended and the reaper is about to exit.
        // SAFETY: kill(2) with a pid we started; no memory is involved.
        unsafe {
            libc::kill(self.host_pid, libc::SIGKILL);
        }
        match self.wait_timeout(Duration::from_secs(30))? {
            Some(exit) => Ok(exit),
            None => Err(LaunchError::Wait {
                pid: self.reaper_pid,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the reaper did not exit within 30 s of SIGKILL to the workload",
                ),
            }),
        }
    }
}

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
    fn from_u8(v: u8) -> Option<Stage> {
        [
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
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
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

/// Start `spec.program` as pid 1 of a new pid namespace, in its own session, and wait for its
/// start code. See the module documentation for the process layout.
///
/// Returns once the workload reported its code (any code: check [`Launched::started`]) and
/// closed the start pipe, so it can be dumped right away. On a start timeout the workload is
/// killed and reaped.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    let program = resolve_program(&spec.program)?;
    let plan_io = open_io(spec)?;
    let plan = ChildPlan::new(spec, &program, &plan_io)?;
    let sys = |call: &'static str| {
        let program = spec.program.clone();
        move |source| LaunchError::Sys {
            call,
            program,
            source,
        }
    };

    // SAFETY: the child runs only async-signal-safe system calls on memory prepared above
    // (`plan`), then execs or `_exit`s; it never returns into Rust code of the caller.
    let reaper_pid = unsafe { libc::fork() };
    if reaper_pid < 0 {
        return Err(sys("fork")(io::Error::last_os_error()));
    }
    if reaper_pid == 0 {
        reaper_main(&plan);
    }
    // The caller keeps only the read ends.
    let PlanIo {
        status_r,
        start_r,
        status_w,
        start_w,
        null,
        output,
        netns,
        mntns,
    } = plan_io;
    drop((status_w, start_w, null, output, netns, mntns));

    let deadline = Instant::now() + spec.start_timeout;
    let (status, timed_out) = read_to_eof(&status_r, deadline).map_err(sys("read status pipe"))?;
    let mut host_pid = None;
    let mut failure = None;
    for msg in status.chunks(6) {
        if msg.len() != 6 {
            break;
        }
        let value = i32::from_le_bytes([msg[2], msg[3], msg[4], msg[5]]);
        match msg[0] {
            b'P' => host_pid = Some(value),
            b'E' => failure = Some((msg[1], value)),
            _ => {}
        }
    }
    if let Some((stage, errno)) = failure {
        let _ = wait_pid(reaper_pid, 0);
        let stage = Stage::from_u8(stage).unwrap_or(Stage::Exec);
        return Err(LaunchError::Setup {
            program: spec.program.clone(),
            stage,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let Some(host_pid) = host_pid else {
        if timed_out {
            // SAFETY: kill(2) of our own child, the reaper.
            unsafe {
                libc::kill(reaper_pid, libc::SIGKILL);
            }
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
    if timed_out {
        // execve did not happen in time (the status pipe stayed open): give up.
        let _ = launched.kill();
        return Err(LaunchError::StartTimeout {
            program: spec.program.clone(),
            host_pid,
            waited: spec.start_timeout,
        });
    }
    let Some(start_r) = start_r else {
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
            let exit = launched.wait_timeout(Duration::from_secs(5)).ok().flatten();
            Err(LaunchError::NoStartCode {
                program: spec.program.clone(),
                host_pid,
                exit,
            })
        }
        None => {
            let _ = launched.kill();
            Err(LaunchError::StartTimeout {
                program: spec.program.clone(),
                host_pid,
                waited: spec.start_timeout,
            })
        }
    }
}

// ------------------------------------------------------------------ before the fork

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The absolute path `execve` gets (the init changes directory before exec'ing).
fn resolve_program(program: &Path) -> Result<PathBuf, LaunchError> {
    let not_found = || LaunchError::ProgramNotFound {
        program: program.to_path_buf(),
    };
    if program.as_os_str().as_bytes().contains(&b'/') {
        let abs = if program.is_absolute() {
            program.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|_| not_found())?
                .join(program)
        };
        return if is_executable(&abs) {
            Ok(abs)
        } else {
            Err(not_found())
        };
    }
    if program.as_os_str().is_empty() {
        return Err(not_found());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| {
        OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    });
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        })
        .ok_or_else(not_found)
}

/// Every fd the children use, moved to numbers >= 10 so that the `dup2` to 0..=3 in the init
/// never meets one of them (all close-on-exec).
struct PlanIo {
    status_r: OwnedFd,
    status_w: OwnedFd,
    start_r: Option<OwnedFd>,
    start_w: Option<OwnedFd>,
    null: OwnedFd,
    output: Option<OwnedFd>,
    netns: Option<OwnedFd>,
    mntns: Option<OwnedFd>,
}

fn move_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we own; the new fd is returned to us alone.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe_high() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((move_high(r)?, move_high(w)?))
}

fn open_io(spec: &LaunchSpec) -> Result<PlanIo, LaunchError> {
    let sys = |call: &'static str| {
        move |source| LaunchError::Sys {
            call,
            program: spec.program.clone(),
            source,
        }
    };
    match spec.cwd.metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(LaunchError::Cwd {
                path: spec.cwd.clone(),
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            })
        }
        Err(source) => {
            return Err(LaunchError::Cwd {
                path: spec.cwd.clone(),
                source,
            })
        }
    }
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(sys("open /dev/null"))?;
    let null = move_high(null.into()).map_err(sys("fcntl"))?;
    let output = match &spec.output {
        None => None,
        // in a mount namespace the file is opened there (a file of the caller's mounts is one
        // CRIU cannot find in the tree's namespace): /dev/null holds its fd number until then
        Some(_) if spec.mntns.is_some() => {
            let f = OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(sys("open /dev/null"))?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
        Some(path) => {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(path)
                .map_err(|source| LaunchError::Output {
                    path: path.clone(),
                    source,
                })?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
    };
    let netns = match &spec.netns {
        None => None,
        Some(name) => {
            let path = if name.contains('/') {
                PathBuf::from(name)
            } else {
                Path::new(NETNS_DIR).join(name)
            };
            let f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|source| LaunchError::Netns { path, source })?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
    };
    let mntns =
        match &spec.mntns {
            None => None,
            Some(path) => {
                let f = OpenOptions::new().read(true).open(path).map_err(|source| {
                    LaunchError::Mntns {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(move_high(f.into()).map_err(sys("fcntl"))?)
            }
        };
    let (status_r, status_w) = pipe_high().map_err(sys("pipe2"))?;
    let (start_r, start_w) = match spec.protocol {
        StartProtocol::StartFd => {
            let (r, w) = pipe_high().map_err(sys("pipe2"))?;
            (Some(r), Some(w))
        }
        StartProtocol::Exec => (None, None),
    };
    Ok(PlanIo {
        status_r,
        status_w,
        start_r,
        start_w,
        null,
        output,
        netns,
        mntns,
    })
}

/// Everything the children need, prepared before the fork (no allocation after it).
struct ChildPlan {
    path: CString,
    cwd: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    null: RawFd,
    output: RawFd,
    netns: RawFd,
    mntns: RawFd,
    /// In a mount namespace: `/dev/null` and the output file (absolute), opened there.
    null_path: CString,
    output_path: Option<CString>,
    new_pidns: bool,
    status_w: RawFd,
    start_w: RawFd,
}

fn cstring(bytes: &[u8], what: impl FnOnce() -> String) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| LaunchError::Nul { what: what() })
}

impl ChildPlan {
    fn new(spec: &LaunchSpec, program: &Path, io: &PlanIo) -> Result<ChildPlan, LaunchError> {
        let path = cstring(program.as_os_str().as_bytes(), || {
            format!("program path {program:?}")
        })?;
        // in a mount namespace the reaper starts at its root: relative paths mean the caller's
        let absolute = |p: &Path| match (&spec.mntns, p.is_relative()) {
            (Some(_), true) => std::env::current_dir().unwrap_or_default().join(p),
            _ => p.to_path_buf(),
        };
        let cwd_path = absolute(&spec.cwd);
        let cwd = cstring(cwd_path.as_os_str().as_bytes(), || {
            format!("working directory {:?}", spec.cwd)
        })?;
        let mut argv = vec![cstring(spec.program.as_os_str().as_bytes(), || {
            format!("program {:?}", spec.program)
        })?];
        for a in &spec.args {
            argv.push(cstring(a.as_bytes(), || format!("argument {a:?}"))?);
        }
        let overridden = |k: &OsStr| {
            k == OsStr::new(START_FD_ENV) || spec.env.iter().any(|(key, _)| key.as_os_str() == k)
        };
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !overridden(k))
            .collect();
        vars.extend(spec.env.iter().cloned());
        if spec.protocol == StartProtocol::StartFd {
            vars.push((START_FD_ENV.into(), START_FD.to_string().into()));
        }
        let mut envp = Vec::with_capacity(vars.len());
        for (k, v) in vars {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstring(&kv, || format!("environment variable {k:?}"))?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        Ok(ChildPlan {
            path,
            cwd,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            null: io.null.as_raw_fd(),
            output: io
                .output
                .as_ref()
                .map_or(io.null.as_raw_fd(), |f| f.as_raw_fd()),
            netns: raw(&io.netns),
            mntns: raw(&io.mntns),
            null_path: c"/dev/null".to_owned(),
            output_path: match (&spec.mntns, &spec.output) {
                (Some(_), Some(o)) => Some(cstring(absolute(o).as_os_str().as_bytes(), || {
                    format!("output file {o:?}")
                })?),
                _ => None,
            },
            new_pidns: spec.own_pid_namespace,
            status_w: io.status_w.as_raw_fd(),
            start_w: raw(&io.start_w),
        })
    }
}

// ------------------------------------------------------------------ after the fork (children)
//
// Only async-signal-safe system calls from here to the end of the section: no allocation,
// no locks, no panics.

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

/// Report a failed step on the status pipe and end this child.
fn child_fail(status_w: RawFd, stage: Stage, err: i32) -> ! {
    let e = err.to_le_bytes();
    let msg = [b'E', stage as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) of a 6-byte stack buffer (atomic on a pipe), then _exit(2): both
    // async-signal-safe; the child never returns into the caller's code.
    unsafe {
        libc::write(status_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// close_range(first, last); on kernels without it, close(2) one by one.
fn close_fds(first: u32, last: u32) {
    if first > last {
        return;
    }
    // SAFETY: close_range only closes fds of this process; every fd in the range is either
    // unused by this child or one it means to drop.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return;
    }
    // SAFETY: getrlimit writes into the struct we pass.
    let limit = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur.min(1 << 20) as u32
        } else {
            1024
        }
    };
    for fd in first..=last.min(limit) {
        // SAFETY: as for close_range above.
        unsafe {
            libc::close(fd as RawFd);
        }
    }
}

/// Default dispositions for every signal and an empty signal mask (the caller may ignore
/// SIGCHLD or SIGPIPE, which would break the reaper's waitpid and the workload).
fn reset_signals() {
    // SAFETY: sigaction/sigprocmask on stack-allocated, initialised structures; both are
    // async-signal-safe. Errors (for the signals glibc reserves) are ignored on purpose.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

fn reaper_main(plan: &ChildPlan) -> ! {
    reset_signals();
    // SAFETY: setsid takes no arguments and only changes this process's session.
    if unsafe { libc::setsid() } < 0 {
        child_fail(plan.status_w, Stage::ReaperSetsid, errno());
    }
    if plan.mntns >= 0 {
        enter_mntns(plan);
    }
    // SAFETY: setns on an fd opened before the fork; it changes only this process.
    if plan.netns >= 0 && unsafe { libc::setns(plan.netns, libc::CLONE_NEWNET) } < 0 {
        child_fail(plan.status_w, Stage::Setns, errno());
    }
    // SAFETY: unshare(CLONE_NEWPID) affects only the children this process forks later.
    if plan.new_pidns && unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
        child_fail(plan.status_w, Stage::Unshare, errno());
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"haul-reaper".as_ptr());
    }
    // SAFETY: this process has a single thread (fork copies only the calling one); the child
    // runs init_main, which execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        child_fail(plan.status_w, Stage::Fork, errno());
    }
    if pid == 0 {
        init_main(plan);
    }
    let p = pid.to_le_bytes();
    let msg = [b'P', 0, p[0], p[1], p[2], p[3]];
    // SAFETY: write of a stack buffer, then dup2/close of this process's own fds, so that the
    // reaper holds nothing of the caller's (its stdout would keep a `$(haul-launch ...)`
    // waiting).
    unsafe {
        libc::write(plan.status_w, msg.as_ptr().cast(), msg.len());
        libc::dup2(plan.null, 0);
        libc::dup2(plan.null, 1);
        libc::dup2(plan.null, 2);
    }
    close_fds(3, u32::MAX);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into our stack variable.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && errno() != libc::EINTR {
            // SAFETY: _exit ends this process without running the caller's code.
            unsafe { libc::_exit(126) }
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: no core file, default action for `sig`, then deliver it to ourselves so the
        // caller's waitpid sees the same death as the init's; plain system calls.
        unsafe {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
    }
    // SAFETY: _exit ends this process without running the caller's code.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// The reaper enters the mount namespace (it is single-threaded, as `setns(CLONE_NEWNS)`
/// requires) and reopens /dev/null and the output file there, onto the fd numbers the plan
/// gave them, so that no fd of the tree points into the caller's mounts.
fn enter_mntns(plan: &ChildPlan) {
    let st = plan.status_w;
    // SAFETY: setns on an fd opened before the fork; it changes only this process.
    if unsafe { libc::setns(plan.mntns, libc::CLONE_NEWNS) } < 0 {
        child_fail(st, Stage::SetnsMnt, errno());
    }
    let reopen = |path: &CString, flags: libc::c_int, onto: RawFd| {
        // SAFETY: open of a NUL-terminated path prepared before the fork, dup3 onto an fd
        // number this child owns (close-on-exec like the one it replaces), close of the
        // temporary: plain system calls.
        unsafe {
            let fd = libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644);
            if fd < 0 || libc::dup3(fd, onto, libc::O_CLOEXEC) < 0 {
                child_fail(st, Stage::SetnsMnt, errno());
            }
            libc::close(fd);
        }
    };
    reopen(&plan.null_path, libc::O_RDWR, plan.null);
    if let Some(out) = &plan.output_path {
        reopen(
            out,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            plan.output,
        );
    }
}

fn init_main(plan: &ChildPlan) -> ! {
    let st = plan.status_w;
    // SAFETY: setsid only changes this process's session (it is not a group leader: its
    // process group is the reaper's).
    if unsafe { libc::setsid() } < 0 {
        child_fail(st, Stage::InitSetsid, errno());
    }
    // SAFETY: chdir reads the NUL-terminated path prepared before the fork.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } < 0 {
        child_fail(st, Stage::Chdir, errno());
    }
    // SAFETY: dup2 of fds opened before the fork (all >= 10) onto 0, 1, 2.
    let stdio_ok = unsafe {
        libc::dup2(plan.null, 0) >= 0
            && libc::dup2(plan.output, 1) >= 0
            && libc::dup2(plan.output, 2) >= 0
    };
    if !stdio_ok {
        child_fail(st, Stage::Stdio, errno());
    }
    let mut first_closed = 3;
    if plan.start_w >= 0 {
        // SAFETY: dup2 of the start pipe (>= 10) onto fd 3; the copy is not close-on-exec.
        if unsafe { libc::dup2(plan.start_w, START_FD) } < 0 {
            child_fail(st, Stage::StartFd, errno());
        }
        first_closed = 4;
    }
    // Keep only 0..=2, the start pipe, and the status pipe (close-on-exec: it closes when
    // execve succeeds, which tells the caller the program runs).
    close_fds(first_closed, st as u32 - 1);
    close_fds(st as u32 + 1, u32::MAX);
    // SAFETY: execve with NUL-terminated path, argv and envp arrays prepared before the fork;
    // on success it does not return.
    unsafe {
        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
    }
    child_fail(st, Stage::Exec, errno())
}

// ------------------------------------------------------------------ waiting (caller)

/// waitpid(pid, flags), retrying on EINTR; `None` when WNOHANG found it still running.
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

/// Wait until `fd` is readable or `deadline` passes; false on timeout.
fn poll_in(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd on our stack.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if left.is_zero() {
                return Ok(false);
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One read with a deadline: `Some(n)` (0 at EOF) or `None` on timeout.
fn read_some(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> io::Result<Option<usize>> {
    loop {
        if !poll_in(fd, deadline)? {
            return Ok(None);
        }
        // SAFETY: read into the caller's buffer, at most its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Everything until EOF or the deadline; the flag says whether the deadline passed.
fn read_to_eof(fd: &OwnedFd, deadline: Instant) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match read_some(fd, &mut buf, deadline)? {
            None => return Ok((out, true)),
            Some(0) => return Ok((out, false)),
            Some(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs() {
        assert!(resolve_program(Path::new("sh")).unwrap().is_absolute());
        assert!(matches!(
            resolve_program(Path::new("no-such-program-here")),
            Err(LaunchError::ProgramNotFound { .. })
        ));
        assert!(matches!(
            resolve_program(Path::new("/etc/passwd")),
            Err(LaunchError::ProgramNotFound { .. })
        ));
    }

    #[test]
    fn stages_round_trip() {
        for v in 1..=9u8 {
            assert_eq!(Stage::from_u8(v).unwrap() as u8, v);
        }
        assert_eq!(Stage::from_u8(0), None);
    }

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
}
