//! The launcher: what CRIU needs of a workload (pid 1 of a new pid namespace, its own session,
//! no inherited fds, no new mount namespace, the requested netns, mount namespace and cwd), the
//! start codes, the exit status relayed by the reaper, errors that name what failed, and
//! `haul-launch`.
//! The workload where one is needed is a shell stand-in that speaks the start protocol
//! (`common::STAND_IN`); `haul-workloads`' tests launch the real programs.

mod common;

use std::process::Command;

use common::*;
use haul_launch::{launch, LaunchError, LaunchSpec, Stage, StartProtocol, WorkloadExit};
use haul_test_support::dumpable::{assert_dumpable, fds, ns_inode, ns_pid, Launched};

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
    let r = Running::stand_in(dir.path(), Some(&ns.name));
    let log = dir.path().canonicalize().unwrap().join(STAND_IN_LOG);
    assert_dumpable(&Launched {
        pid: r.pid(),
        reaper: r.launched.reaper_pid,
        netns: &ns.path(),
        cwd: dir.path(),
        files: &[log],
    });
    drop(stray);
}

fn exit_status_is_relayed() {
    if !root_or_skip("exit_status_is_relayed") {
        return;
    }
    let dir = workdir();
    let spec = LaunchSpec::new("sh")
        .args(["-c", "echo out; echo err >&2; exit 7"])
        .cwd(dir.path())
        .output(dir.path().join("out.txt"))
        .protocol(StartProtocol::Exec);
    let mut l = launch(&spec).unwrap();
    assert_eq!(l.code, 'O');
    assert_eq!(
        l.wait_timeout(PATIENCE).unwrap(),
        Some(WorkloadExit::Code(7))
    );
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert_eq!(out, "out\nerr\n");

    let spec = LaunchSpec::new("sleep")
        .arg("600")
        .cwd(dir.path())
        .protocol(StartProtocol::Exec);
    let mut l = launch(&spec).unwrap();
    assert!(is_alive(l.host_pid));
    assert_eq!(l.kill().unwrap(), WorkloadExit::Signal(libc::SIGKILL));
    assert!(!WorkloadExit::Signal(9).success() && WorkloadExit::Code(0).success());
}

fn environment_and_signals_are_clean() {
    if !root_or_skip("environment_and_signals_are_clean") {
        return;
    }
    let dir = workdir();
    // The workload sees the extra variable, not the start-fd variable (Exec protocol), and its
    // SIGPIPE is back to the default (Rust ignores it in the caller).
    let spec = LaunchSpec::new("sh")
        .args([
            "-c",
            "echo \"$HAUL_TEST_VAR ${HAUL_START_FD:-none}\"; grep -E '^Sig(Ign|Blk)' /proc/self/status; ls /proc/self/fd",
        ])
        .cwd(dir.path())
        .env("HAUL_TEST_VAR", "hello")
        .output(dir.path().join("out.txt"))
        .protocol(StartProtocol::Exec);
    let mut l = launch(&spec).unwrap();
    assert_eq!(
        l.wait_timeout(PATIENCE).unwrap(),
        Some(WorkloadExit::Code(0))
    );
    let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello none"));
    for l in lines.by_ref().take(2) {
        let mask = u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
        // sh itself may ignore a few job-control signals; SIGPIPE (bit 12) must not be.
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{out}");
    }
    // fds: 0 1 2 and the one ls opens for /proc/self/fd
    let fds: Vec<&str> = lines.collect();
    assert_eq!(fds.len(), 4, "{out}");
}

fn failures_name_what_failed() {
    if !root_or_skip("failures_name_what_failed") {
        return;
    }
    let dir = workdir();
    let e = launch(&LaunchSpec::new("no-such-program-xyz")).unwrap_err();
    assert!(matches!(e, LaunchError::ProgramNotFound { .. }), "{e}");
    let e = launch(&LaunchSpec::new("sh").netns("haulwl-missing")).unwrap_err();
    assert!(e.to_string().contains("/run/netns/haulwl-missing"), "{e}");
    // A file that is not a namespace: setns fails in the reaper.
    let not_ns = dir.path().join("plain");
    std::fs::write(&not_ns, "").unwrap();
    let e = launch(&LaunchSpec::new("sh").netns(not_ns.to_str().unwrap())).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::Setup {
                stage: Stage::Setns,
                ..
            }
        ),
        "{e}"
    );
    // A program that ends without a start code.
    let e = launch(&LaunchSpec::new("true").cwd(dir.path())).unwrap_err();
    match e {
        LaunchError::NoStartCode { exit, .. } => assert_eq!(exit, Some(WorkloadExit::Code(0))),
        other => panic!("{other}"),
    }
    // Exec of a binary the kernel refuses (a script without interpreter line, but executable).
    let bad = dir.path().join("bad");
    std::fs::write(&bad, [0x7f, b'E', b'L', b'F', 0, 0, 0]).unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let e = launch(&LaunchSpec::new(&bad).protocol(StartProtocol::Exec)).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::Setup {
                stage: Stage::Exec,
                ..
            }
        ),
        "{e}"
    );
    // A program that reports but keeps the start pipe open: refused (CRIU would be), killed.
    let e = launch(
        &LaunchSpec::new("sh")
            .args(["-c", "printf O >&3; exec sleep 600"])
            .start_timeout(std::time::Duration::from_millis(500)),
    )
    .unwrap_err();
    match e {
        LaunchError::StartPipeKept { host_pid, .. } => {
            wait_for("the workload to be gone", PATIENCE, || !is_alive(host_pid))
        }
        other => panic!("{other}"),
    }
    // The same program closing fd 3 after its report is fine.
    let mut l =
        launch(&LaunchSpec::new("sh").args(["-c", "printf M >&3; exec 3>&-; exec sleep 600"]))
            .unwrap();
    assert_eq!(l.code, 'M');
    assert_eq!(l.kill().unwrap(), WorkloadExit::Signal(libc::SIGKILL));
    // A program that never reports: timed out and killed.
    let e = launch(
        &LaunchSpec::new("sleep")
            .arg("600")
            .start_timeout(std::time::Duration::from_millis(300)),
    )
    .unwrap_err();
    match e {
        LaunchError::StartTimeout { host_pid, .. } => {
            wait_for("the timed-out workload to be gone", PATIENCE, || {
                !is_alive(host_pid)
            })
        }
        other => panic!("{other}"),
    }
}

fn haul_launch_prints_the_child_line() {
    if !root_or_skip("haul_launch_prints_the_child_line") {
        return;
    }
    let dir = workdir();
    let ns = netns();
    let pidfile = dir.path().join("pid");
    // output() returns only when every copy of the stdout pipe is closed: the reaper and the
    // workload must not keep it.
    let out = Command::new(haul_launch_bin())
        .args(["--netns", &ns.name, "--cwd"])
        .arg(dir.path())
        .arg("--pidfile")
        .arg(&pidfile)
        .args(["--", "sh"])
        .args(STAND_IN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(stdout, format!("Child {pid} done, code O\n"));
    assert_eq!(ns_pid(pid), Some(1));
    assert_eq!(
        ns.processes().len(),
        2,
        "the reaper and the workload run in the netns"
    );
    // the LoopbackNetns guard kills both

    let out = Command::new(haul_launch_bin())
        .arg("--cwd")
        .arg(dir.path())
        .args(["--", "no-such-program-xyz"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-program-xyz"));
}

/// A process holding a mount namespace of its own, in which `dir/node` is a tmpfs (empty in
/// the caller's namespace): a node's own disk, as `haul_harness::mntns` makes them. Killed
/// and reaped on drop (the namespace and its tmpfs go with it).
struct NodeMntns {
    holder: std::process::Child,
    node: std::path::PathBuf,
}

impl NodeMntns {
    fn new(dir: &std::path::Path) -> NodeMntns {
        use std::io::BufRead;
        let node = dir.join("node");
        std::fs::create_dir(&node).unwrap();
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs haul-launch-test '{}' && echo ready && exec sleep 600",
                node.display()
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "unshare --mount and tmpfs mount");
        NodeMntns { holder, node }
    }

    fn ns_file(&self) -> std::path::PathBuf {
        format!("/proc/{}/ns/mnt", self.holder.id()).into()
    }

    /// `path` (absolute) as the namespace sees it.
    fn inside(&self, path: &std::path::Path) -> std::path::PathBuf {
        std::path::Path::new(&format!("/proc/{}/root", self.holder.id()))
            .join(path.strip_prefix("/").unwrap())
    }
}

impl Drop for NodeMntns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn runs_in_a_mount_namespace() {
    if !root_or_skip("runs_in_a_mount_namespace") {
        return;
    }
    let dir = workdir();
    let ns = NodeMntns::new(dir.path());
    let out = ns.node.join("out.log");
    let mut w = launch(
        &LaunchSpec::new("sh")
            .args(["-c", "echo in-node; pwd > here; exec sleep 600"])
            .cwd(&ns.node)
            .mntns(ns.ns_file())
            .output(&out)
            .protocol(StartProtocol::Exec),
    )
    .unwrap();
    let pid = w.host_pid;
    assert_eq!(
        ns_inode(&pid.to_string(), "mnt"),
        ns_inode(&ns.holder.id().to_string(), "mnt"),
        "in the node's mount namespace"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let inside = ns.inside(&out);
    while std::fs::read_to_string(&inside)
        .unwrap_or_default()
        .is_empty()
        || !ns.inside(&ns.node.join("here")).exists()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no output in {inside:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "in-node\n");
    assert!(
        !out.exists(),
        "the output file is the namespace's, not the caller's"
    );
    assert!(!ns.node.join("here").exists(), "the cwd is the namespace's");
    // stdin /dev/null and stdout/stderr the output file, both opened in the namespace
    let fds = fds(pid);
    assert_eq!(fds[0], (0, "/dev/null".to_string()), "{fds:?}");
    assert_eq!(fds[1], (1, out.display().to_string()), "{fds:?}");
    assert_eq!(fds[2], (2, out.display().to_string()), "{fds:?}");
    assert_eq!(w.kill().unwrap(), WorkloadExit::Signal(libc::SIGKILL));

    // A namespace file that cannot be opened, and a file that is no namespace.
    let e = launch(&LaunchSpec::new("sh").mntns(dir.path().join("missing"))).unwrap_err();
    assert!(matches!(e, LaunchError::Mntns { .. }), "{e}");
    let not_ns = dir.path().join("plain");
    std::fs::write(&not_ns, "").unwrap();
    let e = launch(&LaunchSpec::new("sh").mntns(&not_ns)).unwrap_err();
    assert!(
        matches!(
            e,
            LaunchError::Setup {
                stage: Stage::SetnsMnt,
                ..
            }
        ),
        "{e}"
    );
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![
        test!(workload_is_what_criu_can_dump, Root),
        test!(exit_status_is_relayed, Root),
        test!(environment_and_signals_are_clean, Root),
        test!(failures_name_what_failed, Root),
        test!(haul_launch_prints_the_child_line, Root),
        test!(runs_in_a_mount_namespace, Root),
    ])
}
