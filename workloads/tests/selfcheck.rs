//! Every workload's self-check, both ways: it passes on an intact run and fails when its state
//! is damaged (memory overwritten, a process killed, the server gone, the file torn).

mod common;

use std::path::Path;

use common::*;
use haul_launch::WorkloadExit;
use haul_workloads::files::*;
use haul_workloads::procfs;
use haul_workloads::records::{self, RecordError};
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{analyze, find_line, SelfCheckVerdict};

fn stop(dir: &Path, stop_file: &str) {
    StopFile::new(dir.join(stop_file)).request().unwrap();
}

fn finish(r: &mut Running, stop_file: &str, log: &str) -> (SelfCheckVerdict, WorkloadExit) {
    stop(&r.dir, stop_file);
    let exit = r.wait_exit();
    (analyze(r.dir.join(log)).unwrap(), exit)
}

// ------------------------------------------------------------------ mt-threads

fn mt_threads_intact() {
    if !root_or_skip("mt_threads_intact") {
        return;
    }
    let dir = workdir();
    let mut r = Running::start(
        "mt-threads",
        &["--threads", "3", "--ballast", "256k"],
        dir.path(),
        None,
    );
    wait_for("heartbeats", PATIENCE, || {
        ticks(&dir.path().join(MT_THREADS_LOG)) >= 20
    });
    assert_eq!(procfs::threads(r.pid()).unwrap().len(), 4);
    let (v, exit) = finish(&mut r, MT_THREADS_STOP, MT_THREADS_LOG);
    let log = show(&dir.path().join(MT_THREADS_LOG));
    assert!(v.passed(), "{v}\n{log}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert_eq!(v.summary_value("threads"), Some(3), "{log}");
    assert!(v.summary_value("iterations").unwrap() > 0, "{log}");
}

fn mt_threads_damaged_memory_fails() {
    if !root_or_skip("mt_threads_damaged_memory_fails") {
        return;
    }
    let dir = workdir();
    let log_path = dir.path().join(MT_THREADS_LOG);
    let mut r = Running::start(
        "mt-threads",
        &["--threads", "3", "--ballast", "256k"],
        dir.path(),
        None,
    );
    wait_for("heartbeats", PATIENCE, || ticks(&log_path) >= 5);
    // "worker 1 tid <tid> ballast 0x<addr> bytes <n>"
    let line = find_line(&log_path, "worker 1 tid ")
        .unwrap()
        .expect("worker line");
    let addr = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.strip_prefix("0x"))
        .map(|a| u64::from_str_radix(a, 16).unwrap())
        .unwrap_or_else(|| panic!("bad worker line {line:?}"));
    procfs::write_mem(r.pid(), addr + 8 * 1000, &0xdead_beef_u64.to_ne_bytes()).unwrap();
    let (v, exit) = finish(&mut r, MT_THREADS_STOP, MT_THREADS_LOG);
    let log = show(&log_path);
    assert!(v.finished && !v.passed(), "{log}");
    assert_eq!(exit, WorkloadExit::Code(1));
    assert_eq!(v.failures.len(), 1, "{log}");
    assert!(
        v.failures[0]
            .starts_with("worker 1: 1 ballast words differ, first word 1000 is 0xdeadbeef"),
        "{log}"
    );
}

// ------------------------------------------------------------------ ptree

/// The root's live children (not the zombie), and the zombie.
fn tree(root: i32) -> (Vec<i32>, Vec<i32>) {
    let kids = procfs::children(root).unwrap();
    let (zombies, live): (Vec<i32>, Vec<i32>) = kids
        .into_iter()
        .partition(|p| procfs::state(*p) == Some('Z'));
    (live, zombies)
}

fn ptree_intact() {
    if !root_or_skip("ptree_intact") {
        return;
    }
    let dir = workdir();
    let mut r = Running::start("ptree", &["--children", "3"], dir.path(), None);
    wait_for("ping rounds", PATIENCE, || {
        ticks(&dir.path().join(PTREE_LOG)) >= 10
    });
    let (live, zombies) = tree(r.pid());
    assert_eq!(
        (live.len(), zombies.len()),
        (3, 1),
        "three children and a zombie"
    );
    let grandchildren: usize = live
        .iter()
        .map(|c| procfs::children(*c).unwrap().len())
        .sum();
    assert_eq!(grandchildren, 1);
    let (v, exit) = finish(&mut r, PTREE_STOP, PTREE_LOG);
    let log = show(&dir.path().join(PTREE_LOG));
    assert!(v.passed(), "{v}\n{log}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert_eq!(v.summary_value("children"), Some(3));
    assert_eq!(v.summary_value("failures"), Some(0));
}

/// Kill the member `pick` chooses; the self-check must fail naming it ("<name> (pid N)",
/// N as the tree sees it).
fn ptree_with_a_kill(pick: impl Fn(&[i32], &Path) -> i32, name: &str) {
    let dir = workdir();
    let log_path = dir.path().join(PTREE_LOG);
    let mut r = Running::start("ptree", &["--children", "3"], dir.path(), None);
    wait_for("ping rounds", PATIENCE, || ticks(&log_path) >= 5);
    let (live, _) = tree(r.pid());
    let victim = pick(&live, &log_path);
    let expect = format!("{name} (pid {})", procfs::ns_pid(victim).unwrap());
    signal(victim, libc::SIGKILL);
    wait_for("a Fail line", PATIENCE, || {
        !analyze(&log_path).unwrap().failures.is_empty()
    });
    let (v, exit) = finish(&mut r, PTREE_STOP, PTREE_LOG);
    let log = show(&log_path);
    assert!(v.finished && !v.passed(), "{log}");
    assert_eq!(exit, WorkloadExit::Code(1));
    assert!(
        v.failures.iter().any(|f| f.starts_with(&expect)),
        "expected a failure about {expect:?} in\n{log}"
    );
}

fn ptree_killed_child_fails() {
    if !root_or_skip("ptree_killed_child_fails") {
        return;
    }
    // Child 2: no children of its own, in the root's process group.
    ptree_with_a_kill(
        |live, log| {
            let ns: i32 = find_line(log, "child 2 pid ")
                .unwrap()
                .unwrap()
                .parse()
                .unwrap();
            *live
                .iter()
                .find(|p| procfs::ns_pid(**p) == Some(ns))
                .unwrap()
        },
        "child 2",
    );
}

fn ptree_killed_grandchild_fails() {
    if !root_or_skip("ptree_killed_grandchild_fails") {
        return;
    }
    ptree_with_a_kill(
        |live, _| {
            live.iter()
                .flat_map(|c| procfs::children(*c).unwrap())
                .next()
                .expect("a grandchild")
        },
        "grandchild",
    );
}

// ------------------------------------------------------------------ tcp-echo + tcp-client

struct TcpPair {
    server: Running,
    client: Running,
    dir: tempfile::TempDir,
    _ns: LoopbackNetns,
}

fn tcp_pair() -> TcpPair {
    let ns = netns();
    let dir = workdir();
    let server = Running::start("tcp-echo", &[], dir.path(), Some(&ns.name));
    let addr = find_line(dir.path().join(TCP_ECHO_LOG), "Listening on ")
        .unwrap()
        .expect("Listening line");
    let client = Running::start(
        "tcp-client",
        &[&addr, "--conns", "2"],
        dir.path(),
        Some(&ns.name),
    );
    wait_for("requests answered", PATIENCE, || {
        analyze(dir.path().join(TCP_CLIENT_LOG))
            .unwrap()
            .last_value
            .unwrap_or(0)
            >= 20
    });
    TcpPair {
        server,
        client,
        dir,
        _ns: ns,
    }
}

fn tcp_intact() {
    if !root_or_skip("tcp_intact") {
        return;
    }
    let mut p = tcp_pair();
    let (v, exit) = finish(&mut p.client, TCP_CLIENT_STOP, TCP_CLIENT_LOG);
    let log = show(&p.dir.path().join(TCP_CLIENT_LOG));
    assert!(v.passed(), "{v}\n{log}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert_eq!(v.summary_value("failed"), Some(0), "{log}");
    assert_eq!(v.summary_value("reconnects"), Some(0), "{log}");
    let ok = v.summary_value("ok").unwrap();
    assert!(ok >= 20, "{log}");
    let (s, exit) = finish(&mut p.server, TCP_ECHO_STOP, TCP_ECHO_LOG);
    let slog = show(&p.dir.path().join(TCP_ECHO_LOG));
    assert!(s.passed(), "{s}\n{slog}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert_eq!(s.summary_value("connections"), Some(2), "{slog}");
    assert_eq!(s.summary_value("requests"), Some(ok), "{slog}");
}

fn tcp_server_killed_counts_failures() {
    if !root_or_skip("tcp_server_killed_counts_failures") {
        return;
    }
    let mut p = tcp_pair();
    let log_path = p.dir.path().join(TCP_CLIENT_LOG);
    p.server.launched.kill().unwrap();
    wait_for("the client to notice", PATIENCE, || {
        !analyze(&log_path).unwrap().failures.is_empty()
    });
    let (v, exit) = finish(&mut p.client, TCP_CLIENT_STOP, TCP_CLIENT_LOG);
    let log = show(&log_path);
    assert!(v.finished && !v.passed(), "{log}");
    assert_eq!(exit, WorkloadExit::Code(1));
    assert!(
        v.summary_value("failed").unwrap() >= 2,
        "both connections failed:\n{log}"
    );
    assert_eq!(
        v.summary_value("reconnects"),
        Some(0),
        "nobody to reconnect to:\n{log}"
    );
}

// ------------------------------------------------------------------ rec-writer

fn rec_writer_intact_and_verifier_both_ways() {
    if !root_or_skip("rec_writer_intact_and_verifier_both_ways") {
        return;
    }
    let dir = workdir();
    let mut r = Running::start(
        "rec-writer",
        &["--interval-us", "2000", "--payload", "64"],
        dir.path(),
        None,
    );
    wait_for("records", PATIENCE, || {
        ticks(&dir.path().join(REC_WRITER_LOG)) >= 50
    });
    let (v, exit) = finish(&mut r, REC_WRITER_STOP, REC_WRITER_LOG);
    let log = show(&dir.path().join(REC_WRITER_LOG));
    assert!(v.passed(), "{v}\n{log}");
    assert_eq!(exit, WorkloadExit::Code(0));
    let n = v.summary_value("records").unwrap();
    assert!(n >= 50, "{log}");
    let data = dir.path().join(REC_WRITER_DATA);
    let report = records::verify_file(&data, Some(n)).unwrap();
    assert_eq!(report.records, n);
    assert_eq!(report.bytes, v.summary_value("bytes").unwrap());

    // What a test on the other node checks, on damaged copies of the file.
    let bytes = std::fs::read(&data).unwrap();
    let rl = records::record_len(64);
    let copy = dir.path().join("copy.dat");
    std::fs::write(&copy, &bytes[..bytes.len() - 10]).unwrap();
    assert!(matches!(
        records::verify_file(&copy, Some(n)),
        Err(RecordError::Torn { .. })
    ));
    let mut flipped = bytes.clone();
    flipped[7 * rl + 30] ^= 0x01;
    std::fs::write(&copy, &flipped).unwrap();
    let e = records::verify_file(&copy, Some(n)).unwrap_err();
    assert!(matches!(e, RecordError::Checksum { seq: 7, .. }), "{e}");
    assert!(e.to_string().contains("copy.dat"), "{e}");
    std::fs::write(&copy, &bytes[..bytes.len() - rl]).unwrap();
    assert!(matches!(
        records::verify_file(&copy, Some(n)),
        Err(RecordError::Count { .. })
    ));
}

fn rec_writer_torn_file_fails_its_self_check() {
    if !root_or_skip("rec_writer_torn_file_fails_its_self_check") {
        return;
    }
    let dir = workdir();
    let log_path = dir.path().join(REC_WRITER_LOG);
    let mut r = Running::start("rec-writer", &["--interval-us", "2000"], dir.path(), None);
    wait_for("records", PATIENCE, || ticks(&log_path) >= 20);
    signal(r.pid(), libc::SIGSTOP);
    wait_state(r.pid(), 'T');
    let data = dir.path().join(REC_WRITER_DATA);
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    stop(dir.path(), REC_WRITER_STOP);
    signal(r.pid(), libc::SIGCONT);
    let exit = r.wait_exit();
    let v = analyze(&log_path).unwrap();
    let log = show(&log_path);
    assert!(v.finished && !v.passed(), "{log}");
    assert_eq!(exit, WorkloadExit::Code(1));
    assert!(v.failures[0].contains("records.dat"), "{log}");
}

// ------------------------------------------------------------------ file-churn

const CHURN_ARGS: &[&str] = &[
    "--size",
    "8m",
    "--files",
    "4",
    "--block",
    "16k",
    "--rate",
    "4m",
    "--tick-ms",
    "5",
];

fn file_churn_intact() {
    if !root_or_skip("file_churn_intact") {
        return;
    }
    let dir = workdir();
    let log_path = dir.path().join(FILE_CHURN_LOG);
    let mut r = Running::start("file-churn", CHURN_ARGS, dir.path(), None);
    wait_for("churn ticks", PATIENCE, || ticks(&log_path) >= 60);
    let (v, exit) = finish(&mut r, FILE_CHURN_STOP, FILE_CHURN_LOG);
    let log = show(&log_path);
    assert!(v.passed(), "{v}\n{log}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert!(v.summary_value("rewrites").unwrap() > 0, "{log}");
    assert!(v.summary_value("appends").unwrap() > 0, "{log}");
    assert_eq!(v.summary_value("bad_files"), Some(0), "{log}");
    assert!(log.contains("PASS: every file"), "{log}");
    assert!(dir.path().join(FILE_CHURN_DIR).join("sparse").is_file());
}

fn file_churn_damaged_file_fails_its_self_check() {
    if !root_or_skip("file_churn_damaged_file_fails_its_self_check") {
        return;
    }
    let dir = workdir();
    let log_path = dir.path().join(FILE_CHURN_LOG);
    let mut r = Running::start("file-churn", CHURN_ARGS, dir.path(), None);
    wait_for("churn ticks", PATIENCE, || ticks(&log_path) >= 20);
    signal(r.pid(), libc::SIGSTOP);
    wait_state(r.pid(), 'T');
    // one flipped byte in one data file
    let data = dir.path().join(FILE_CHURN_DIR).join("data-002");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    stop(dir.path(), FILE_CHURN_STOP);
    signal(r.pid(), libc::SIGCONT);
    let exit = r.wait_exit();
    let v = analyze(&log_path).unwrap();
    let log = show(&log_path);
    assert!(v.finished && !v.passed(), "{log}");
    assert_eq!(exit, WorkloadExit::Code(1));
    assert_eq!(v.failures.len(), 1, "{log}");
    assert!(v.failures[0].contains("data-002: block 0"), "{log}");
    assert_eq!(v.summary_value("bad_files"), Some(1), "{log}");
    assert!(log.contains("FAIL: 1 file(s) differ"), "{log}");
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![
        test!(mt_threads_intact, Root),
        test!(mt_threads_damaged_memory_fails, Root),
        test!(ptree_intact, Root),
        test!(ptree_killed_child_fails, Root),
        test!(ptree_killed_grandchild_fails, Root),
        test!(tcp_intact, Root),
        test!(tcp_server_killed_counts_failures, Root),
        test!(rec_writer_intact_and_verifier_both_ways, Root),
        test!(rec_writer_torn_file_fails_its_self_check, Root),
        test!(file_churn_intact, Root),
        test!(file_churn_damaged_file_fails_its_self_check, Root),
    ])
}
