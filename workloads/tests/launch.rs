//! A real workload launched the way CRIU can dump it: `mtouch` started by `haul_launch` is
//! pid 1 of a new pid namespace and its own session, in the requested netns and cwd, with no
//! new mount namespace, holding only stdio and its log (the start pipe closed after `O`),
//! under a reaper that holds nothing. The launcher's own tests are in `launch/tests/`.

mod common;

use common::*;
use haul_test_support::dumpable::{assert_dumpable, Launched};

fn workload_is_what_criu_can_dump() {
    if !root_or_skip("workload_is_what_criu_can_dump") {
        return;
    }
    let dir = workdir();
    let ns = netns();
    // A stray inheritable fd in the caller must not reach the workload.
    let stray = std::fs::File::open("/etc/hostname").unwrap();
    // SAFETY: clears close-on-exec on an fd this test owns.
    unsafe {
        libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&stray), libc::F_SETFD, 0);
    }
    let r = Running::start(
        "mtouch",
        &["mem-touch.log", "1m:1m:1000"],
        dir.path(),
        Some(&ns.name),
    );
    let log = dir.path().canonicalize().unwrap().join("mem-touch.log");
    assert_dumpable(&Launched {
        pid: r.pid(),
        reaper: r.launched.reaper_pid,
        netns: &ns.path(),
        cwd: dir.path(),
        files: &[log],
    });
    drop(stray);
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![test!(workload_is_what_criu_can_dump, Root)])
}
