//! Helpers of the launcher's tests: root check, a stand-in workload that speaks the start
//! protocol, guards that kill what a test started (also when it fails), network namespaces
//! removed with everything in them, and the few `/proc` reads the tests need.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use haul_launch::{launch, LaunchSpec, Launched};
pub use haul_test_support::LoopbackNetns;

pub use haul_test_support::wait::PATIENCE;
pub use haul_test_support::wait_for;

/// The log the stand-in workload holds open (relative to its working directory).
pub const STAND_IN_LOG: &str = "stand-in.log";

/// A workload written in sh that behaves like haul's workloads at start: it opens its log
/// (fd 4, appended to), reports `O` on the start pipe (fd 3), closes the pipe, and runs until
/// killed. `haul-workloads`' programs are not built with this crate, so the launcher's tests
/// use this instead of `mtouch`.
pub const STAND_IN: [&str; 2] = [
    "-c",
    "exec 4>>stand-in.log; printf O >&3; exec 3>&-; exec sleep 600",
];

/// True when running as root; otherwise reports the running test as skipped (ignored, with
/// the reason) through haul_test_support's runner.
pub fn root_or_skip(_test: &str) -> bool {
    if let Some(why) = haul_test_support::Need::Root.missing() {
        haul_test_support::skip(format!("{why} (pid and network namespaces)"));
    }
    true
}

/// The `haul-launch` program of this crate.
pub fn haul_launch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_haul-launch"))
}

/// A fresh working directory, removed on drop.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("haul-launch-test.")
        .tempdir()
        .expect("create a temp dir")
}

/// A launched workload that is killed (whole pid namespace) and reaped on drop.
pub struct Running {
    pub launched: Launched,
}

impl Running {
    /// Launch the stand-in in `dir` (optionally in a netns); asserts it reports `O`.
    pub fn stand_in(dir: &Path, netns: Option<&str>) -> Running {
        let mut spec = LaunchSpec::new("sh")
            .args(STAND_IN)
            .cwd(dir)
            .start_timeout(PATIENCE);
        if let Some(ns) = netns {
            spec = spec.netns(ns);
        }
        let launched = launch(&spec).unwrap_or_else(|e| panic!("launching the stand-in: {e}"));
        let running = Running { launched };
        assert_eq!(running.launched.code, 'O');
        running
    }

    pub fn pid(&self) -> i32 {
        self.launched.host_pid
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.launched.kill();
    }
}

fn proc_text(pid: i32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn is_alive(pid: i32) -> bool {
    let state = proc_text(pid, "stat").and_then(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
    });
    matches!(state, Some(s) if s != 'Z' && s != 'X')
}

/// A network namespace with loopback up for one test (removed with every process in it
/// on drop).
pub fn netns() -> LoopbackNetns {
    LoopbackNetns::new("launch").expect("network namespace")
}
