//! The programs that hold a resource CRIU has trouble with (issue #13), each both ways: its
//! self-check passes when the resource stays intact and fails when the resource is damaged
//! from outside (where that is meaningful; `port-listener` and `uring-user` are checked intact
//! only: nothing outside the process can damage a listening socket or a ring it holds).

mod common;

use std::path::Path;

use common::*;
use haul_launch::WorkloadExit;
use haul_workloads::files::*;
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{analyze, find_line, SelfCheckVerdict};

/// Waits for `beats` heartbeats in `log`.
fn beats(log: &Path, beats: usize) {
    wait_for(
        &format!("{beats} beats in {}", log.display()),
        PATIENCE,
        || ticks(log) >= beats,
    );
}

/// Stops `r` and reads its verdict.
fn finish(r: &mut Running, stop_file: &str, log: &str) -> (SelfCheckVerdict, WorkloadExit, String) {
    let stop = StopFile::new(r.dir.join(stop_file));
    stop.request().unwrap();
    let exit = r.wait_exit();
    // The next run in the same directory must not stop at once.
    stop.clear().unwrap();
    let path = r.dir.join(log);
    (analyze(&path).unwrap(), exit, show(&path))
}

fn passes(r: &mut Running, stop_file: &str, log: &str) -> SelfCheckVerdict {
    let (v, exit, text) = finish(r, stop_file, log);
    assert!(v.passed(), "{v}\n{text}");
    assert_eq!(exit, WorkloadExit::Code(0), "{text}");
    assert!(v.summary_value("beats").unwrap() > 0, "{text}");
    v
}

fn fails(r: &mut Running, stop_file: &str, log: &str, expect: &str) {
    let (v, exit, text) = finish(r, stop_file, log);
    assert!(v.finished && !v.passed(), "{text}");
    assert_eq!(exit, WorkloadExit::Code(1), "{text}");
    assert!(
        v.failures.iter().any(|f| f.contains(expect)),
        "expected a failure with {expect:?}:\n{text}"
    );
}

/// `key=value` from the `Holds:` line of `log`.
fn held(log: &Path, kind: &str, key: &str) -> String {
    let line = find_line(log, &format!("Holds: {kind} "))
        .unwrap()
        .unwrap_or_else(|| panic!("no Holds line in {}", log.display()));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_string()
}

fn start(program: &str, args: &[&str], dir: &Path) -> Running {
    Running::start(program, args, dir, None)
}

fn ghost_file_both_ways() {
    if !root_or_skip("ghost_file_both_ways") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(GHOST_FILE_LOG);
    let mut r = start("ghost-file", &["--size", "2m"], dir.path());
    beats(&log, 10);
    assert!(
        !dir.path().join("ghost-file.dat").exists(),
        "the file is deleted"
    );
    let v = passes(&mut r, GHOST_FILE_STOP, GHOST_FILE_LOG);
    assert_eq!(v.summary_value("size"), Some(2 << 20));

    let dir = workdir();
    let log = dir.path().join(GHOST_FILE_LOG);
    let mut r = start("ghost-file", &["--size", "2m"], dir.path());
    beats(&log, 5);
    let fd = held(&log, "ghost-file", "fd");
    // Damage: write into the deleted file through the process's fd.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/fd/{fd}", r.pid()))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"damage", 1 << 20).unwrap();
    fails(
        &mut r,
        GHOST_FILE_STOP,
        GHOST_FILE_LOG,
        "differs from its pattern",
    );
}

fn unix_peer_both_ways() {
    if !root_or_skip("unix_peer_both_ways") {
        return;
    }
    let dir = workdir();
    let sock = dir.path().join("peer.sock");
    let sock = sock.to_str().unwrap();
    let server = start(
        "unix-peer",
        &[sock, "--serve", "--stop-file", "server-stop"],
        dir.path(),
    );
    let log = dir.path().join(UNIX_PEER_LOG);
    let mut r = start("unix-peer", &[sock], dir.path());
    beats(&log, 20);
    assert_eq!(held(&log, "unix-socket", "peer"), sock);
    let v = passes(&mut r, UNIX_PEER_STOP, UNIX_PEER_LOG);
    assert!(v.summary_value("requests").unwrap() >= 20);

    // Damage: the peer goes away.
    let mut r = start("unix-peer", &[sock], dir.path());
    beats(&log, 5);
    drop(server);
    wait_for("a failed request", PATIENCE, || {
        !analyze(&log).unwrap().failures.is_empty()
    });
    fails(&mut r, UNIX_PEER_STOP, UNIX_PEER_LOG, "request");
}

fn port_listener_intact() {
    if !root_or_skip("port_listener_intact") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(PORT_LISTENER_LOG);
    let mut r = start("port-listener", &["--interval-ms", "2"], dir.path());
    beats(&log, 250);
    let addr = held(&log, "tcp-listen", "addr");
    assert!(
        std::net::TcpStream::connect(&addr).is_ok(),
        "{addr} accepts"
    );
    let v = passes(&mut r, PORT_LISTENER_STOP, PORT_LISTENER_LOG);
    assert!(v.summary_value("accepted").unwrap() >= 3, "{v}");
    assert_eq!(
        v.summary_value("port").unwrap().to_string(),
        addr.rsplit(':').next().unwrap()
    );
}

fn sysv_ipc_both_ways() {
    if !root_or_skip("sysv_ipc_both_ways") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(SYSV_IPC_LOG);
    let mut r = start("sysv-ipc", &[], dir.path());
    beats(&log, 10);
    let shm = held(&log, "sysv-ipc", "shm");
    assert!(std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&shm)));
    passes(&mut r, SYSV_IPC_STOP, SYSV_IPC_LOG);
    assert!(
        !std::fs::read_to_string("/proc/sysvipc/shm")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(&shm)),
        "removed at exit"
    );

    // Damage: someone removes the message queue.
    let mut r = start("sysv-ipc", &[], dir.path());
    beats(&log, 5);
    let msg = held(&log, "sysv-ipc", "msg");
    run("ipcrm", &["-q", &msg]);
    wait_for("a failed beat", PATIENCE, || {
        !analyze(&log).unwrap().failures.is_empty()
    });
    fails(&mut r, SYSV_IPC_STOP, SYSV_IPC_LOG, &format!("queue {msg}"));
}

fn uring_user_intact() {
    if !root_or_skip("uring_user_intact") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(URING_USER_LOG);
    let mut r = start("uring-user", &[], dir.path());
    beats(&log, 30);
    let fd = held(&log, "io-uring", "fd");
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", r.pid())).unwrap();
    assert_eq!(link.to_str(), Some("anon_inode:[io_uring]"));
    let v = passes(&mut r, URING_USER_STOP, URING_USER_LOG);
    assert!(v.summary_value("ops").unwrap() >= 30 + 3 + 16);
}

fn file_follower_both_ways() {
    if !root_or_skip("file_follower_both_ways") {
        return;
    }
    let dir = workdir();
    let _writer = start("file-follower", &["--write"], dir.path());
    wait_for("the followed file", PATIENCE, || {
        ticks(&dir.path().join("file-writer.log")) > 0
    });
    let log = dir.path().join(FILE_FOLLOWER_LOG);
    let mut r = start("file-follower", &[], dir.path());
    beats(&log, 20);
    let v = passes(&mut r, FILE_FOLLOWER_STOP, FILE_FOLLOWER_LOG);
    assert!(v.summary_value("lines").unwrap() >= 20, "{v}");

    // Damage: the file is rewritten under the follower (not appended to).
    let mut r = start("file-follower", &[], dir.path());
    beats(&log, 5);
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join(FOLLOWED_FILE))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"bogus\n"))
        .unwrap();
    wait_for("a failed beat", PATIENCE, || {
        !analyze(&log).unwrap().failures.is_empty()
    });
    fails(&mut r, FILE_FOLLOWER_STOP, FILE_FOLLOWER_LOG, "\"bogus\"");
}

fn pty_holder_both_ways() {
    if !root_or_skip("pty_holder_both_ways") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(PTY_HOLDER_LOG);
    let mut r = start("pty-holder", &[], dir.path());
    beats(&log, 20);
    passes(&mut r, PTY_HOLDER_STOP, PTY_HOLDER_LOG);

    // Damage: someone else writes into the terminal.
    let mut r = start("pty-holder", &["--interval-ms", "50"], dir.path());
    beats(&log, 3);
    let index = held(&log, "pty", "index");
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/pts/{index}"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"intruder"))
        .unwrap();
    wait_for("a failed beat", PATIENCE, || {
        !analyze(&log).unwrap().failures.is_empty()
    });
    fails(&mut r, PTY_HOLDER_STOP, PTY_HOLDER_LOG, "intruder");
}

fn lock_holder_both_ways() {
    if !root_or_skip("lock_holder_both_ways") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(LOCK_HOLDER_LOG);
    let mut r = start("lock-holder", &["--interval-ms", "2"], dir.path());
    beats(&log, 120);
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    assert!(
        locks
            .lines()
            .filter(|l| l.contains(&format!(" {} ", r.pid())))
            .count()
            >= 2,
        "{locks}"
    );
    let v = passes(&mut r, LOCK_HOLDER_STOP, LOCK_HOLDER_LOG);
    assert!(v.summary_value("checks").unwrap() >= 3);

    // Damage: the locked file is replaced by another one under the same name.
    let mut r = start("lock-holder", &[], dir.path());
    beats(&log, 5);
    let path = held(&log, "file-locks", "flock_path");
    std::fs::write(dir.path().join("new"), b"").unwrap();
    std::fs::rename(dir.path().join("new"), &path).unwrap();
    fails(
        &mut r,
        LOCK_HOLDER_STOP,
        LOCK_HOLDER_LOG,
        "the lock is gone",
    );
}

fn sparse_map_both_ways() {
    if !root_or_skip("sparse_map_both_ways") {
        return;
    }
    let dir = workdir();
    let log = dir.path().join(SPARSE_MAP_LOG);
    let mut r = start("sparse-map", &[], dir.path());
    beats(&log, 20);
    let statm = std::fs::read_to_string(format!("/proc/{}/statm", r.pid())).unwrap();
    let f: Vec<u64> = statm
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(f[0] * 4096 >= 1 << 40, "1 TiB mapped: {statm}");
    let rss = f[1] * 4096;
    assert!(
        (64 << 20..100 << 20).contains(&rss),
        "about 64 MiB resident: {rss}"
    );
    let v = passes(&mut r, SPARSE_MAP_STOP, SPARSE_MAP_LOG);
    assert_eq!(v.summary_value("pages"), Some(16384));

    // Damage: one word of a written page changes.
    let mut r = start(
        "sparse-map",
        &["--map", "64g", "--resident", "8m", "--spread"],
        dir.path(),
    );
    beats(&log, 5);
    let addr = u64::from_str_radix(
        held(&log, "sparse-map", "addr").trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let stride: u64 = held(&log, "sparse-map", "stride").parse().unwrap();
    // Several pages: a heartbeat may rewrite one of them (and so repair it) before the stop.
    for page in 5..25 {
        haul_workloads::procfs::write_mem(r.pid(), addr + page * stride * 4096 + 8, &[0xff; 8])
            .unwrap();
    }
    fails(&mut r, SPARSE_MAP_STOP, SPARSE_MAP_LOG, "written page ");
}

fn main() -> std::process::ExitCode {
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![
        test!(ghost_file_both_ways, Root),
        test!(unix_peer_both_ways, Root),
        test!(port_listener_intact, Root),
        test!(sysv_ipc_both_ways, Root),
        test!(uring_user_intact, Root),
        test!(file_follower_both_ways, Root),
        test!(pty_holder_both_ways, Root),
        test!(lock_holder_both_ways, Root),
        test!(sparse_map_both_ways, Root),
    ])
}
