//! Refused migrations explain themselves, before the freeze wherever the problem can be seen
//! beforehand (issue #13). Each case launches a workload that holds one resource CRIU has
//! trouble with in node A, runs `haul pid` to node B, and checks:
//! - a refused migration: `haul pid` fails, its message names the cause, the resource and the
//!   remedy (never CRIU's harmless RLIMIT_NOFILE line); where pre-flight can see the problem
//!   nothing was frozen (no dump ran: no `final/dump.log`, and the workload's own heartbeats
//!   show no pause); the workload then passes its own check on A;
//! - a migration that goes through: the workload passes its own check on B.
//!
//! Needs root, CRIU and the workload programs; skips with the reason printed otherwise.

mod common;
#[path = "common/workloads.rs"]
mod w;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use haul_workloads::files::*;
use w::Stage;

/// A pause longer than this in a workload's 10 ms heartbeat means it was frozen (a dump
/// freezes for at least a few hundred ms here; scheduling noise on a loaded 2-core machine
/// stays well below it).
const FROZEN_GAP: Duration = Duration::from_millis(1000);

/// One `haul pid` attempt.
struct Attempt {
    out: Output,
    stderr: String,
    stdout: String,
    report: Option<serde_json::Value>,
    src_img: PathBuf,
}

impl Attempt {
    fn failed(&self) -> bool {
        !self.out.status.success()
    }

    /// Whether CRIU's final dump ran on the source (it writes `final/dump.log`).
    fn dumped(&self) -> bool {
        dump_logs(&self.src_img) > 0
    }
}

fn dump_logs(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .filter(|m| m.path().join("final/dump.log").exists())
        .count()
}

fn attempt(st: &Stage, pid: i32, extra: &[&str]) -> Attempt {
    let dir = st.tmp.path();
    let report = dir.join(format!("report-{pid}.json"));
    let mut args = vec![
        "--no-progress",
        "--report",
        report.to_str().expect("utf-8 temp path"),
    ];
    args.extend_from_slice(extra);
    let out = common::haul_pid_command(&st.nodes, &st.serve, &st.key, dir, pid, &args)
        .output()
        .expect("run haul pid");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !stderr.contains("RLIMIT_NOFILE"),
        "haul blamed CRIU's harmless line:\n{stderr}"
    );
    Attempt {
        report: std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
        out,
        stderr,
        stdout,
        src_img: dir.join("src-img"),
    }
}

/// A refused migration: nothing frozen, the message says `cause` and `remedy`, the workload
/// runs on untouched and passes its own check.
fn assert_refused_before_freeze(a: &Attempt, cause: &[&str], remedy: &str) {
    assert!(a.failed(), "the migration went through:\n{}", a.stdout);
    for c in cause {
        assert!(a.stderr.contains(c), "no {c:?} in:\n{}", a.stderr);
    }
    assert!(
        a.stderr.contains(remedy),
        "no remedy {remedy:?} in:\n{}",
        a.stderr
    );
    assert!(
        a.stderr.contains("nothing was frozen"),
        "not said to be untouched:\n{}",
        a.stderr
    );
    assert!(!a.dumped(), "CRIU dumped although pre-flight refused");
}

/// The workload's log shows it never paused and it passes its own check (on the node where
/// it runs now).
fn assert_ran_on_untouched(st: &Stage, stop: &str, log: &str) {
    w::wait_progress(&st.wd.join(log), 5);
    let v = w::stop_and_judge(&st.wd, stop, log);
    assert!(v.passed(), "{}", w::show(&st.wd.join(log)));
    assert!(
        v.largest_gap < FROZEN_GAP,
        "the workload paused {:?}: was it frozen?\n{}",
        v.largest_gap,
        w::show(&st.wd.join(log))
    );
}

fn finding_kinds(a: &Attempt) -> Vec<String> {
    a.report
        .as_ref()
        .and_then(|r| r["preflight"]["findings"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f["kind"].as_str().unwrap_or(""),
                f["severity"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn a_ghost_file_over_the_limit_moves_with_a_fitting_limit() {
    let st = Stage::new("xp-ghost");
    let g = st.start_in_a("ghost-file", &["--size", "4m"]);
    w::wait_progress(&st.wd.join(GHOST_FILE_LOG), 3);
    let a = attempt(&st, g.pid(), &["--strategy", "stop-copy"]);
    assert!(!a.failed(), "{}\n{}", a.stdout, a.stderr);
    assert!(
        finding_kinds(&a).contains(&"ghost-file-too-big:option-on".to_string()),
        "{:?}",
        finding_kinds(&a)
    );
    let v = w::stop_and_judge(&st.wd, GHOST_FILE_STOP, GHOST_FILE_LOG);
    assert!(v.passed(), "{}", w::show(&st.wd.join(GHOST_FILE_LOG)));
}

fn a_ghost_file_too_big_to_copy_is_refused_with_the_limit_to_set() {
    let st = Stage::new("xp-ghost-big");
    let g = st.start_in_a("ghost-file", &["--size", "300m"]);
    w::wait_progress(&st.wd.join(GHOST_FILE_LOG), 3);
    let a = attempt(&st, g.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["deleted"], "--ghost-limit");
    assert_ran_on_untouched(&st, GHOST_FILE_STOP, GHOST_FILE_LOG);
}

fn a_unix_stream_to_the_outside_is_refused() {
    let st = Stage::new("xp-unix");
    let sock = st.wd.join("peer.sock");
    let sock = sock.to_str().expect("utf-8");
    let _peer = st.start_in_a("unix-peer", &["--serve", sock, "--stop-file", "peer-stop"]);
    let waited = Instant::now();
    while !Path::new(sock).exists() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = st.start_in_a("unix-peer", &[sock]);
    w::wait_progress(&st.wd.join(UNIX_PEER_LOG), 3);
    let a = attempt(&st, c.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["unix", "peer"], "inside the tree");
    assert_ran_on_untouched(&st, UNIX_PEER_STOP, UNIX_PEER_LOG);
}

fn established_tcp_is_refused_unless_asked_for() {
    let st = Stage::new("xp-tcp");
    let server = st.start_in_a("tcp-echo", &["--listen", "127.0.0.1:7100"]);
    let _client = st.start_in_a(
        "tcp-client",
        &["127.0.0.1:7100", "--conns", "1", "--interval-ms", "10"],
    );
    w::wait_progress(&st.wd.join(TCP_CLIENT_LOG), 5);
    let a = attempt(&st, server.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["established", "127.0.0.1:7100"], "--tcp-established");
    assert!(common::alive(server.pid()));
}

fn a_port_taken_on_the_destination_is_refused_before_the_freeze() {
    let st = Stage::new("xp-port");
    let mine = st.start_in_a("port-listener", &["--listen", "0.0.0.0:7200"]);
    let theirs_dir = st.tmp.path().join("b");
    std::fs::create_dir_all(&theirs_dir).unwrap();
    let _theirs = w::start(w::spec(
        "port-listener",
        &["--listen", "0.0.0.0:7200"],
        &theirs_dir,
        &st.nodes.b.netns,
    ));
    w::wait_progress(&st.wd.join(PORT_LISTENER_LOG), 3);
    let a = attempt(&st, mine.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["7200", "taken"], "remedy");
    assert!(a.stderr.contains("pre-flight"), "{}", a.stderr);
    assert_ran_on_untouched(&st, PORT_LISTENER_STOP, PORT_LISTENER_LOG);
}

fn a_pid_taken_on_the_destination_is_refused_before_the_freeze() {
    let st = Stage::new("xp-pid");
    // No pid namespace of its own: its host pid must be free on B, and on one kernel the
    // original holds it.
    let r = w::start(
        w::spec(
            "rec-writer",
            &["--interval-us", "10000"],
            &st.wd,
            &st.nodes.a.netns,
        )
        .in_callers_pid_namespace(),
    );
    w::wait_progress(&st.wd.join(REC_WRITER_LOG), 3);
    let a = attempt(&st, r.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &[&format!("pid {}", r.pid())], "pid namespace");
    assert_ran_on_untouched(&st, REC_WRITER_STOP, REC_WRITER_LOG);
}

fn sysv_ipc_in_the_nodes_namespace_is_refused() {
    let st = Stage::new("xp-ipc");
    let s = st.start_in_a("sysv-ipc", &[]);
    w::wait_progress(&st.wd.join(SYSV_IPC_LOG), 3);
    let a = attempt(&st, s.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["SysV"], "IPC namespace");
    assert_ran_on_untouched(&st, SYSV_IPC_STOP, SYSV_IPC_LOG);
}

fn io_uring_is_refused_as_not_migratable() {
    let st = Stage::new("xp-uring");
    let u = st.start_in_a("uring-user", &[]);
    w::wait_progress(&st.wd.join(URING_USER_LOG), 3);
    let a = attempt(&st, u.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["io_uring"], "cannot");
    assert_ran_on_untouched(&st, URING_USER_STOP, URING_USER_LOG);
}

fn a_file_another_writer_changes_is_refused_or_diagnosed_and_the_process_resumes() {
    let st = Stage::new("xp-follow");
    let _writer = st.start_in_a("file-follower", &["--write", "--interval-ms", "5"]);
    let f = st.start_in_a("file-follower", &[]);
    w::wait_progress(&st.wd.join(FILE_FOLLOWER_LOG), 5);
    // The destination's pre-flight finds the file grown since the source looked at it.
    let a = attempt(&st, f.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &[FOLLOWED_FILE, "differs"], "storage both nodes see");
    // Without pre-flight the restore on B fails on it after the freeze; B's diagnosis comes
    // back typed (the file, the remedy) and the process is resumed on A.
    let a = attempt(
        &st,
        f.pid(),
        &["--strategy", "stop-copy", "--ignore-preflight"],
    );
    assert!(a.failed(), "the migration went through:\n{}", a.stdout);
    assert!(a.dumped(), "the dump did not run");
    assert!(a.stderr.contains(FOLLOWED_FILE), "{}", a.stderr);
    assert!(a.stderr.contains("remedy"), "{}", a.stderr);
    assert!(a.stderr.contains("restore.log"), "{}", a.stderr);
    assert!(
        a.stderr.contains("resumed and still runs on the source"),
        "{}",
        a.stderr
    );
    let v = w::stop_and_judge(&st.wd, FILE_FOLLOWER_STOP, FILE_FOLLOWER_LOG);
    assert!(v.passed(), "{}", w::show(&st.wd.join(FILE_FOLLOWER_LOG)));
}

fn a_pty_is_diagnosed_when_its_index_is_taken_and_the_process_resumes() {
    let st = Stage::new("xp-pty");
    let p = st.start_in_a("pty-holder", &[]);
    w::wait_progress(&st.wd.join(PTY_HOLDER_LOG), 3);
    // Pre-flight warns (the index must be free on the destination, which it cannot see);
    // on one kernel the frozen original holds the index, so the restore fails on it.
    let a = attempt(&st, p.pid(), &["--strategy", "stop-copy"]);
    assert!(a.failed(), "the migration went through:\n{}", a.stdout);
    assert!(
        a.stderr.contains("pty") || a.stderr.contains("terminal"),
        "{}",
        a.stderr
    );
    assert!(a.stderr.contains("remedy"), "{}", a.stderr);
    assert!(
        a.stderr.contains("still runs on the source"),
        "{}",
        a.stderr
    );
    let v = w::stop_and_judge(&st.wd, PTY_HOLDER_STOP, PTY_HOLDER_LOG);
    assert!(v.passed(), "{}", w::show(&st.wd.join(PTY_HOLDER_LOG)));
}

fn locks_on_shared_storage_are_refused_before_the_restore_could_wait_for_them() {
    let st = Stage::new("xp-locks");
    let l = st.start_in_a("lock-holder", &[]);
    w::wait_progress(&st.wd.join(LOCK_HOLDER_LOG), 3);
    // CRIU restores the locks while the frozen original still holds them: on storage both
    // nodes share (here, one kernel's) the restore would wait forever. Pre-flight turns
    // --file-locks on for the tree, and the destination sees its files locked already.
    let a = attempt(&st, l.pid(), &["--strategy", "stop-copy"]);
    assert_refused_before_freeze(&a, &["lock-holder", "locked on the destination"], "--sync");
    assert_ran_on_untouched(&st, LOCK_HOLDER_STOP, LOCK_HOLDER_LOG);
}

fn auto_picks_stop_copy_for_a_sparse_mapping_and_pauses_it_far_less_than_a_lazy_dump() {
    let st = Stage::new("xp-sparse");
    let s = st.start_in_a("sparse-map", &[]);
    w::wait_progress(&st.wd.join(SPARSE_MAP_LOG), 3);
    let a = attempt(&st, s.pid(), &["--strategy", "auto"]);
    assert!(!a.failed(), "{}\n{}", a.stdout, a.stderr);
    let report = a.report.as_ref().expect("a report");
    assert_eq!(
        report["strategy"], "stop-copy",
        "{}",
        report["strategy_reason"]
    );
    let estimates = &report["preflight"]["strategy"]["estimates"];
    let estimates = estimates.as_array().expect("estimates");
    assert_eq!(estimates.len(), 4, "{estimates:?}");
    let post_copy = estimates
        .iter()
        .find(|e| e["strategy"] == "post-copy")
        .and_then(|e| e["downtime_secs"].as_f64())
        .expect("a post-copy estimate");
    let v = w::stop_and_judge(&st.wd, SPARSE_MAP_STOP, SPARSE_MAP_LOG);
    assert!(v.passed(), "{}", w::show(&st.wd.join(SPARSE_MAP_LOG)));
    eprintln!(
        "sparse-map under auto: {} (post-copy estimated {post_copy:.3} s); haul's downtime {} s, the workload's largest gap {:.3} s",
        report["strategy"], report["downtime_secs"], v.largest_gap.as_secs_f64()
    );
    // The figure (under 1 s of downtime, idle machine) is measured in
    // results/sparse-auto-*.md; here, under a loaded test run, the pause must be of
    // stop-copy's order, well below the lazy dump auto turned down (19 s when #13 was filed).
    assert!(
        v.largest_gap.as_secs_f64() < 5.0,
        "the sparse process paused {:?} under auto (post-copy estimated {post_copy:.2} s)",
        v.largest_gap
    );
}

fn a_dry_run_estimates_and_freezes_nothing() {
    let st = Stage::new("xp-dry");
    let r = st.start_in_a("rec-writer", &["--interval-us", "10000"]);
    w::wait_progress(&st.wd.join(REC_WRITER_LOG), 3);
    let a = attempt(&st, r.pid(), &["--dry-run"]);
    assert!(!a.failed(), "{}\n{}", a.stdout, a.stderr);
    for want in [
        "strategy ",
        "downtime ~",
        "total ~",
        "memory channel: ",
        "can go ahead",
    ] {
        assert!(a.stdout.contains(want), "no {want:?} in:\n{}", a.stdout);
    }
    let report = a.report.as_ref().expect("a report");
    assert_eq!(report["dry_run"], serde_json::Value::Bool(true));
    assert!(report["preflight"]["bandwidth"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(!a.dumped());
    assert_eq!(
        std::fs::read_dir(st.tmp.path().join("dst-img"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "a dry run keeps nothing on the destination"
    );
    assert_ran_on_untouched(&st, REC_WRITER_STOP, REC_WRITER_LOG);
}

fn main() -> std::process::ExitCode {
    use haul_test_support::test;
    let [root, criu] = common::NEEDS;
    haul_test_support::run(vec![
        test!(
            a_ghost_file_over_the_limit_moves_with_a_fitting_limit,
            root,
            criu
        ),
        test!(
            a_ghost_file_too_big_to_copy_is_refused_with_the_limit_to_set,
            root,
            criu
        ),
        test!(a_unix_stream_to_the_outside_is_refused, root, criu),
        test!(established_tcp_is_refused_unless_asked_for, root, criu),
        test!(
            a_port_taken_on_the_destination_is_refused_before_the_freeze,
            root,
            criu
        ),
        test!(
            a_pid_taken_on_the_destination_is_refused_before_the_freeze,
            root,
            criu
        ),
        test!(sysv_ipc_in_the_nodes_namespace_is_refused, root, criu),
        test!(io_uring_is_refused_as_not_migratable, root, criu),
        test!(
            a_file_another_writer_changes_is_refused_or_diagnosed_and_the_process_resumes,
            root,
            criu
        ),
        test!(
            a_pty_is_diagnosed_when_its_index_is_taken_and_the_process_resumes,
            root,
            criu
        ),
        test!(
            locks_on_shared_storage_are_refused_before_the_restore_could_wait_for_them,
            root,
            criu
        ),
        test!(
            auto_picks_stop_copy_for_a_sparse_mapping_and_pauses_it_far_less_than_a_lazy_dump,
            root,
            criu
        ),
        test!(a_dry_run_estimates_and_freezes_nothing, root, criu),
    ])
}
