//! What CRIU needs of a launched workload, checked from `/proc`: the one check both the
//! launcher's tests (with a shell stand-in) and the workloads' tests (with `mtouch`) make.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Inode of `/proc/<pid>/ns/<ns>` (`pid` may be `"self"`).
pub fn ns_inode(pid: &str, ns: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
        .ino()
}

/// The open fds of `pid` and what each points to, sorted by fd.
pub fn fds(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Some((fd, target))
        })
        .collect();
    v.sort();
    v
}

fn stat(pid: i32) -> procfs::process::Stat {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"))
}

/// `pid` as its innermost pid namespace sees it (the last `NSpid` field).
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = procfs::process::Process::new(pid).ok()?.status().ok()?;
    status.nspid?.last().copied()
}

/// A workload as `haul_launch` starts it for CRIU.
#[derive(Debug)]
pub struct Launched<'a> {
    /// Its host pid.
    pub pid: i32,
    /// The launcher's reaper (its parent).
    pub reaper: i32,
    /// The network namespace it was asked into (`/run/netns/<name>`).
    pub netns: &'a Path,
    /// The working directory it was asked into.
    pub cwd: &'a Path,
    /// The files it holds open after stdio (its log), in fd order.
    pub files: &'a [PathBuf],
}

/// Asserts what CRIU needs: pid 1 of a new pid namespace, session and process-group leader,
/// no new mount namespace, in the requested netns and cwd, stdio on /dev/null and only its own
/// files after them (no inherited fd, the start pipe closed); its parent the reaper
/// `haul-reaper`, a session leader in the host pid namespace holding only stdio.
pub fn assert_dumpable(w: &Launched<'_>) {
    let pid = w.pid;
    let me = pid.to_string();
    assert_eq!(ns_pid(pid), Some(1), "pid 1 of a new pid namespace");
    assert_ne!(ns_inode(&me, "pid"), ns_inode("self", "pid"));
    let st = stat(pid);
    assert_eq!(st.session, pid, "session leader (sid == host pid)");
    assert_eq!(st.pgrp, pid, "process group leader");
    assert_eq!(
        ns_inode(&me, "mnt"),
        ns_inode("self", "mnt"),
        "no new mount namespace"
    );
    let want_net = std::fs::metadata(w.netns)
        .unwrap_or_else(|e| panic!("{}: {e}", w.netns.display()))
        .ino();
    assert_eq!(ns_inode(&me, "net"), want_net, "in the requested netns");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        w.cwd.canonicalize().unwrap()
    );
    let open = fds(pid);
    let targets: Vec<&str> = open.iter().map(|(_, t)| t.as_str()).collect();
    assert!(targets.len() >= 3, "{open:?}");
    assert_eq!(
        &targets[..3],
        ["/dev/null", "/dev/null", "/dev/null"],
        "{open:?}"
    );
    let files: Vec<String> = w.files.iter().map(|f| f.display().to_string()).collect();
    assert_eq!(&targets[3..], files, "{open:?}");
    assert_eq!(st.ppid, w.reaper, "the reaper is the parent");
    let reaper = stat(w.reaper);
    assert_eq!(reaper.session, w.reaper, "the reaper leads its own session");
    assert_eq!(reaper.comm, "haul-reaper");
    let reaper_fds = fds(w.reaper);
    assert!(
        reaper_fds
            .iter()
            .all(|(fd, t)| *fd <= 2 && t == "/dev/null"),
        "{reaper_fds:?}"
    );
}
