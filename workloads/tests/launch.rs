//! A real workload launched the way CRIU can dump it: `mtouch` started by `haul_launch` is
//! pid 1 of a new pid namespace and its own session, in the requested netns and cwd, with no
//! new mount namespace, holding only stdio and its log (the start pipe closed after `O`),
//! under a reaper that holds nothing. The launcher's own tests are in `launch/tests/`.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;
use haul_workloads::procfs;

fn ns_inode(pid: &str, ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap()
        .ino()
}

fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let fd = e.file_name().to_str().unwrap().parse().unwrap();
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (fd, target)
        })
        .collect();
    v.sort();
    v
}

fn stat_field(pid: i32, index: usize) -> i32 {
    // fields after "(comm)": state ppid pgrp session ...
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(index).unwrap().parse().unwrap()
}

fn workload_is_what_criu_can_dump() {
    if !root_or_skip("workload_is_what_criu_can_dump") {
        return;
    }
    let dir = workdir();
    let ns = Netns::new();
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
    let pid = r.pid();
    assert_eq!(procfs::ns_pid(pid), Some(1), "pid 1 of a new pid namespace");
    assert_ne!(ns_inode(&pid.to_string(), "pid"), ns_inode("self", "pid"));
    assert_eq!(stat_field(pid, 3), pid, "session leader (sid == host pid)");
    assert_eq!(stat_field(pid, 2), pid, "process group leader");
    assert_eq!(
        ns_inode(&pid.to_string(), "mnt"),
        ns_inode("self", "mnt"),
        "no new mount namespace"
    );
    let want_net = std::fs::metadata(ns.path()).unwrap().ino();
    assert_eq!(
        ns_inode(&pid.to_string(), "net"),
        want_net,
        "in the requested netns"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        dir.path().canonicalize().unwrap()
    );
    // stdio on /dev/null, the log, and nothing else: the start pipe is closed after `O`.
    let log = dir.path().canonicalize().unwrap().join("mem-touch.log");
    let open = fds(pid);
    let targets: Vec<&str> = open.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        &targets[..3],
        ["/dev/null", "/dev/null", "/dev/null"],
        "{open:?}"
    );
    assert_eq!(
        &targets[3..],
        [log.display().to_string().as_str()],
        "{open:?}"
    );
    // The reaper: the workload's parent, its own session, in the host pid namespace, no fds.
    let reaper = r.launched.reaper_pid;
    assert_eq!(stat_field(pid, 1), reaper);
    assert_eq!(stat_field(reaper, 3), reaper);
    assert_eq!(procfs::comm(reaper).as_deref(), Some("haul-reaper"));
    let reaper_fds = fds(reaper);
    assert!(
        reaper_fds
            .iter()
            .all(|(fd, t)| *fd <= 2 && t == "/dev/null"),
        "{reaper_fds:?}"
    );
    drop(stray);
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![test!(workload_is_what_criu_can_dump, Root)])
}
