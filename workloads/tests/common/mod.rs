//! Helpers shared by the integration tests: root check, launched-workload guards that kill
//! what they started (also when a test fails), polling with generous deadlines, network
//! namespaces that are removed with everything in them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use haul_launch::{launch, LaunchSpec, Launched};
pub use haul_test_support::LoopbackNetns;

pub use haul_test_support::wait::PATIENCE;
pub use haul_test_support::wait_for;

/// True when running as root; otherwise reports the running test as skipped (ignored, with
/// the reason) through haul_test_support's runner.
pub fn root_or_skip(_test: &str) -> bool {
    if let Some(why) = haul_test_support::Need::Root.missing() {
        haul_test_support::skip(format!(
            "{why} (pid namespaces, /proc/PID/mem, network namespaces)"
        ));
    }
    true
}

/// Path of one of this crate's programs.
pub fn bin(name: &str) -> PathBuf {
    let p = match name {
        "mtouch" => env!("CARGO_BIN_EXE_mtouch"),
        "mt-threads" => env!("CARGO_BIN_EXE_mt-threads"),
        "ptree" => env!("CARGO_BIN_EXE_ptree"),
        "tcp-echo" => env!("CARGO_BIN_EXE_tcp-echo"),
        "tcp-client" => env!("CARGO_BIN_EXE_tcp-client"),
        "rec-writer" => env!("CARGO_BIN_EXE_rec-writer"),
        "ghost-file" => env!("CARGO_BIN_EXE_ghost-file"),
        "unix-peer" => env!("CARGO_BIN_EXE_unix-peer"),
        "port-listener" => env!("CARGO_BIN_EXE_port-listener"),
        "sysv-ipc" => env!("CARGO_BIN_EXE_sysv-ipc"),
        "uring-user" => env!("CARGO_BIN_EXE_uring-user"),
        "file-follower" => env!("CARGO_BIN_EXE_file-follower"),
        "pty-holder" => env!("CARGO_BIN_EXE_pty-holder"),
        "lock-holder" => env!("CARGO_BIN_EXE_lock-holder"),
        "sparse-map" => env!("CARGO_BIN_EXE_sparse-map"),
        "file-churn" => env!("CARGO_BIN_EXE_file-churn"),
        other => panic!("no program {other}"),
    };
    PathBuf::from(p)
}

/// A fresh working directory (the "shared directory"), removed on drop.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haul-workloads-test.")
        .tempdir()
        .expect("create a temp dir")
}

/// A launched workload that is killed (whole pid namespace) and reaped on drop.
pub struct Running {
    pub launched: Launched,
    pub dir: PathBuf,
}

impl Running {
    /// Launch `program args` in `dir` (optionally in a netns); asserts it reports `O`.
    pub fn start(program: &str, args: &[&str], dir: &Path, netns: Option<&str>) -> Running {
        let mut spec = LaunchSpec::new(bin(program))
            .args(args)
            .cwd(dir)
            .start_timeout(PATIENCE);
        if let Some(ns) = netns {
            spec = spec.netns(ns);
        }
        let launched = launch(&spec).unwrap_or_else(|e| panic!("launching {program}: {e}"));
        let running = Running {
            launched,
            dir: dir.to_path_buf(),
        };
        assert_eq!(
            running.launched.code, 'O',
            "{program} reported start code {}",
            running.launched.code
        );
        running
    }

    pub fn pid(&self) -> i32 {
        self.launched.host_pid
    }

    /// Wait for the workload to exit on its own; its exit status.
    pub fn wait_exit(&mut self) -> haul_launch::WorkloadExit {
        self.launched
            .wait_timeout(PATIENCE)
            .expect("waitpid")
            .unwrap_or_else(|| panic!("workload {} did not exit within {PATIENCE:?}", self.pid()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.launched.kill();
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a process this test started.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The state letter of `pid` (`T` when stopped).
pub fn wait_state(pid: i32, state: char) {
    wait_for(&format!("pid {pid} in state {state}"), PATIENCE, || {
        haul_workloads::procfs::state(pid) == Some(state)
    });
}

/// Count the `t ` lines of a log (how far a workload got).
pub fn ticks(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().filter(|l| l.starts_with("t ")).count())
        .unwrap_or(0)
}

/// A network namespace with loopback up for one test (removed with every process in it
/// on drop).
pub fn netns() -> LoopbackNetns {
    LoopbackNetns::new("wl").expect("network namespace")
}

/// Run a command that must succeed.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Print a log (for failure messages).
pub fn show(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("<{e}>"));
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("t ")).collect();
    format!("{} (without t lines):\n{}", log.display(), lines.join("\n"))
}
