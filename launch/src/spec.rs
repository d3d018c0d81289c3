//! What the caller asks for: the program, its arguments, where it runs, and how it reports
//! its start.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where named network namespaces live (`ip netns add NAME` creates `/run/netns/NAME`).
pub const NETNS_DIR: &str = "/run/netns";

/// How the launcher learns that the workload started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartProtocol {
    /// The workload reports one byte on fd 3 (named by `HAUL_START_FD`) and closes it; see
    /// [`crate::start_code`]. All the programs of `haul-workloads` do.
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

/// The namespace file for `netns`: a path when it holds a `/`, else a name under
/// [`NETNS_DIR`].
pub(crate) fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new(NETNS_DIR).join(netns)
    }
}
