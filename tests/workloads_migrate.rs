//! Every self-checking workload moved from node A to node B with `haul pid`, then told to
//! check itself on B: a workload that only runs proves nothing.
//!
//! | test | workload | what must hold on B |
//! |---|---|---|
//! | `mt_threads_*` | `mt-threads`, 3 workers | same tids and thread names, every ballast and ring word, the shared counter, 4 threads |
//! | `ptree_*` | `ptree`, 3 children, a grandchild, a zombie | pids, ppids, sessions, groups, ping counts; the zombie still a zombie with status 42 |
//! | `tcp_*` | `tcp-echo` with `tcp-client` (2 connections) on a client node | the same connections carry on (`--tcp-established`): 0 failed requests, 0 reconnects, every reply right |
//! | `rec_writer_*` | `rec-writer` on the shared directory | every record whole, in sequence, none missing (also re-checked by the test) |
//! | `redis_*` | `redis-server` (Debian's), 10 000 keys, `redis-load` writing | every key of the data set and every acknowledged write there, 0 client errors |
//!
//! Each runs under stop-and-copy and post-copy; the multi-threaded ones (`mt_threads_*`,
//! `tcp_*`, `redis_*`) with `--memory-path haul`, where they once hung (the TCP ones take it
//! under post-copy only: stop-copy of established connections keeps CRIU's page-server
//! dump). The TCP servers listen on a service address
//! that moves from A to B with the workload; the clients run on a third namespace whose route
//! follows it (see `common/workloads.rs`). Each test prints one `figures:` line (haul's
//! downtime, and the longest pause the workload and its client saw).
//!
//! Needs root and CRIU >= 4.1 (scripts/setup.sh), redis-server for the redis tests, and the
//! workloads' binaries (`cargo test --workspace`, or `cargo build -p haul-workloads` first);
//! reported as ignored otherwise.

mod common;
#[path = "common/workloads.rs"]
mod wl;

use std::process::Stdio;
use std::time::Duration;

use haul_launch::WorkloadExit;
use haul_workloads::files::*;
use haul_workloads::{procfs, records};
use wl::*;

/// Reports the test as skipped (ignored, with the reason) when this machine cannot run it
/// or the strategy.
macro_rules! skip_unless {
    ($strategy:expr) => {
        skip_unless_runnable!();
        if let Some(why) = strategy_unavailable($strategy) {
            haul_test_support::skip(why);
        }
    };
}

/// haul's own memory path (the engine on B), asked for: multi-threaded trees (mt-threads,
/// tcp-echo, redis) once hung over it with the process frozen (a fault at the top of a
/// thread's stack filled with one copy across two VMAs; see `memory::ranges::Missing`).
const MEMORY_PATH_HAUL: &[&str] = &["--memory-path", "haul"];

/// The migration went over haul's memory path, as asked.
fn assert_haul_memory_path(workload: &str, moved: &Moved) {
    assert_memory_path(workload, moved, "haul");
}

/// The memory path the report names.
fn assert_memory_path(workload: &str, moved: &Moved, path: &str) {
    assert_eq!(
        moved.report["memory_path"].as_str(),
        Some(path),
        "{workload} should have moved over {path}'s memory path"
    );
}

/// With established TCP connections, `--memory-path haul` holds for post-copy only:
/// stop-copy keeps CRIU's page-server dump, since a failed lazy dump would resume the tree
/// with its connections locked (`preflight::CostInputs::tcp_established`).
fn path_with_tcp(strategy: &str) -> &'static str {
    if strategy == "stop-copy" {
        "criu"
    } else {
        "haul"
    }
}

/// One line of figures per test (`cargo test -- --nocapture` shows them).
fn figures(
    workload: &str,
    strategy: &str,
    moved: &Moved,
    pause: Option<Duration>,
    client: Option<u64>,
) {
    let pause = pause
        .map(|p| format!(", workload's longest pause {:.3} s", p.as_secs_f64()))
        .unwrap_or_default();
    let client = client
        .map(|ms| format!(", client's longest reply gap {ms} ms"))
        .unwrap_or_default();
    eprintln!(
        "figures: {workload} {strategy}: haul downtime {:.3} s, total {:.3} s{pause}{client}",
        moved.downtime(),
        moved.total(),
    );
}

fn mt_threads_move_and_check_their_memory_on_b(strategy: &str) {
    skip_unless!(strategy);
    let st = Stage::new("wlmt");
    let w = st.start_in_a("mt-threads", &["--threads", "3", "--ballast", "256k"]);
    let log = st.wd.join(MT_THREADS_LOG);
    wait_progress(&log, 20);
    let moved = st.migrate(w.pid(), strategy, MEMORY_PATH_HAUL, "mt-threads");
    assert_haul_memory_path("mt-threads", &moved);
    assert_eq!(
        procfs::threads(moved.dest_pid).map(|t| t.len()).ok(),
        Some(4),
        "mt-threads on B should have its 3 workers and its main thread"
    );
    wait_progress(&log, 20);
    let v = stop_and_judge(&st.wd, MT_THREADS_STOP, MT_THREADS_LOG);
    assert!(v.passed(), "{v}\n{}", show(&log));
    assert_eq!(v.summary_value("threads"), Some(3), "{}", show(&log));
    assert_eq!(v.summary_value("failures"), Some(0), "{}", show(&log));
    figures("mt-threads", strategy, &moved, Some(v.largest_gap), None);
}

fn ptree_moves_with_its_children_and_zombie(strategy: &str) {
    skip_unless!(strategy);
    let st = Stage::new("wlpt");
    let w = st.start_in_a("ptree", &["--children", "3"]);
    let log = st.wd.join(PTREE_LOG);
    wait_progress(&log, 10);
    let moved = st.migrate(w.pid(), strategy, &[], "ptree");
    // The shape on B: three live children, one zombie, one grandchild; five live members.
    let kids = procfs::children(moved.dest_pid).expect("children of the root on B");
    let (zombies, live): (Vec<i32>, Vec<i32>) = kids
        .into_iter()
        .partition(|p| procfs::state(*p) == Some('Z'));
    assert_eq!(
        (live.len(), zombies.len()),
        (3, 1),
        "the root on B should have 3 children and a zombie"
    );
    let grandchildren: usize = live
        .iter()
        .map(|c| procfs::children(*c).map(|g| g.len()).unwrap_or(0))
        .sum();
    assert_eq!(grandchildren, 1, "child 0's grandchild is missing on B");
    assert_eq!(st.nodes.b.pids_named("ptree").len(), 5);
    wait_progress(&log, 10);
    let v = stop_and_judge(&st.wd, PTREE_STOP, PTREE_LOG);
    assert!(v.passed(), "{v}\n{}", show(&log));
    assert_eq!(v.summary_value("children"), Some(3), "{}", show(&log));
    assert_eq!(v.summary_value("failures"), Some(0), "{}", show(&log));
    figures("ptree", strategy, &moved, Some(v.largest_gap), None);
}

fn tcp_connections_survive_the_move(strategy: &str) {
    skip_unless!(strategy);
    let st = Stage::new("wltcp");
    let c = ClientNode::new(&st.nodes);
    let listen = format!("{SERVICE_ADDR}:7000");
    let server = st.start_in_a("tcp-echo", &["--listen", &listen]);
    let mut client = c.start(
        "tcp-client",
        &[&listen, "--conns", "2", "--interval-ms", "10"],
        &st.wd,
    );
    let clog = st.wd.join(TCP_CLIENT_LOG);
    let slog = st.wd.join(TCP_ECHO_LOG);
    let answered = || verdict(&clog).last_value.unwrap_or(0);
    wait_for("50 answered requests", PATIENCE, || answered() >= 50);
    c.before_move();
    let moved = st.migrate_then(
        server.pid(),
        strategy,
        &[
            "--tcp-established",
            MEMORY_PATH_HAUL[0],
            MEMORY_PATH_HAUL[1],
        ],
        "tcp-echo",
        || c.after_move(),
    );
    assert_memory_path("tcp-echo", &moved, path_with_tcp(strategy));
    // The same connections carry on, answered by the server on B.
    let after = answered();
    wait_for("50 requests answered on B", PATIENCE, || {
        answered() >= after + 50
    });
    let cv = stop_and_judge(&st.wd, TCP_CLIENT_STOP, TCP_CLIENT_LOG);
    let logs = || format!("{}\n{}", show(&clog), show(&slog));
    assert!(cv.passed(), "{cv}\n{}", logs());
    assert_eq!(cv.summary_value("failed"), Some(0), "{}", logs());
    assert_eq!(cv.summary_value("reconnects"), Some(0), "{}", logs());
    let exit = client.launched.wait_timeout(PATIENCE).expect("waitpid");
    assert_eq!(exit, Some(WorkloadExit::Code(0)), "tcp-client's exit");
    let sv = stop_and_judge(&st.wd, TCP_ECHO_STOP, TCP_ECHO_LOG);
    assert!(sv.passed(), "{sv}\n{}", logs());
    // No connection was opened on B: the two from before the move served everything.
    assert_eq!(sv.summary_value("connections"), Some(2), "{}", logs());
    assert_eq!(sv.summary_value("failures"), Some(0), "{}", logs());
    assert_eq!(
        sv.summary_value("requests"),
        cv.summary_value("ok"),
        "the server served a different number of requests than the client got answers for\n{}",
        logs()
    );
    figures(
        "tcp-echo",
        strategy,
        &moved,
        Some(sv.largest_gap),
        cv.summary_value("max_reply_gap_ms"),
    );
}

fn rec_writer_file_has_no_lost_or_torn_record(strategy: &str) {
    skip_unless!(strategy);
    let st = Stage::new("wlrec");
    let w = st.start_in_a("rec-writer", &["--interval-us", "5000"]);
    let log = st.wd.join(REC_WRITER_LOG);
    wait_progress(&log, 20);
    let moved = st.migrate(w.pid(), strategy, &[], "rec-writer");
    let before = ticks(&log);
    wait_progress(&log, 20);
    let v = stop_and_judge(&st.wd, REC_WRITER_STOP, REC_WRITER_LOG);
    assert!(v.passed(), "{v}\n{}", show(&log));
    let n = v.summary_value("records").expect("records in the summary");
    assert!(
        n >= before + 20,
        "{n} records: too few written on B\n{}",
        show(&log)
    );
    // The test's own check of the file, as another node would read it.
    let file = st.wd.join(REC_WRITER_DATA);
    let rep = records::verify_file(&file, Some(n)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.records, n);
    assert_eq!(Some(rep.bytes), v.summary_value("bytes"));
    figures("rec-writer", strategy, &moved, Some(v.largest_gap), None);
}

fn redis_keeps_every_key_while_a_client_writes(strategy: &str) {
    skip_unless!(strategy);
    if let Some(why) = no_redis() {
        haul_test_support::skip(why);
    }
    const KEYS: u64 = 10_000;
    let st = Stage::new("wlredis");
    let c = ClientNode::new(&st.nodes);
    let redis = start_redis(&st.nodes, &st.wd, 6379);
    let addr = format!("{SERVICE_ADDR}:6379");
    // Returns once the data set is loaded.
    let mut load = c.start(
        "redis-load",
        &[&addr, "--preload", &KEYS.to_string(), "--interval-ms", "5"],
        &st.wd,
    );
    let llog = st.wd.join("redis-load.log");
    let rlog = st.wd.join("redis.out");
    let written = || verdict(&llog).last_value.unwrap_or(0);
    wait_for("50 acknowledged writes", PATIENCE, || written() >= 50);
    c.before_move();
    let moved = st.migrate_then(
        redis.pid(),
        strategy,
        &[
            "--tcp-established",
            MEMORY_PATH_HAUL[0],
            MEMORY_PATH_HAUL[1],
        ],
        "redis-server",
        || c.after_move(),
    );
    assert_memory_path("redis", &moved, path_with_tcp(strategy));
    let after = written();
    wait_for("50 writes acknowledged by redis on B", PATIENCE, || {
        written() >= after + 50
    });
    let v = stop_and_judge(&st.wd, "redis-load-stop", "redis-load.log");
    let logs = || format!("{}\n{}", show(&llog), show(&rlog));
    assert!(v.passed(), "{v}\n{}", logs());
    for (key, want) in [
        ("preloaded", KEYS),
        ("failed", 0),
        ("reconnects", 0),
        ("missing", 0),
        ("wrong", 0),
    ] {
        assert_eq!(v.summary_value(key), Some(want), "{key}\n{}", logs());
    }
    let w = v.summary_value("written").expect("written in the summary");
    assert!(w >= after + 50, "{w} writes acknowledged\n{}", logs());
    assert_eq!(v.summary_value("dbsize"), Some(KEYS + w), "{}", logs());
    let exit = load.launched.wait_timeout(PATIENCE).expect("waitpid");
    assert_eq!(exit, Some(WorkloadExit::Code(0)), "redis-load's exit");
    // And from outside, with redis's own client: the server on B holds them all.
    let out = c
        .command("redis-cli")
        .args(["-h", SERVICE_ADDR, "-p", "6379", "DBSIZE"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (KEYS + w).to_string(),
        "redis-cli DBSIZE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    figures(
        "redis-server",
        strategy,
        &moved,
        None,
        v.summary_value("max_reply_gap_ms"),
    );
    // The restored server is ours: stop it (the nodes' drop would, too).
    if procfs::comm(moved.dest_pid).as_deref() == Some("redis-server") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(moved.dest_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn main() -> std::process::ExitCode {
    use haul_test_support::Test;
    type Case = (&'static str, fn(&str));
    let tests: [Case; 5] = [
        (
            "mt_threads_move_and_check_their_memory_on_b",
            mt_threads_move_and_check_their_memory_on_b,
        ),
        (
            "ptree_moves_with_its_children_and_zombie",
            ptree_moves_with_its_children_and_zombie,
        ),
        (
            "tcp_connections_survive_the_move",
            tcp_connections_survive_the_move,
        ),
        (
            "rec_writer_file_has_no_lost_or_torn_record",
            rec_writer_file_has_no_lost_or_torn_record,
        ),
        (
            "redis_keeps_every_key_while_a_client_writes",
            redis_keeps_every_key_while_a_client_writes,
        ),
    ];
    let mut all = Vec::new();
    for (name, f) in tests {
        for (case, strategy) in [("stop_copy", "stop-copy"), ("post_copy", "post-copy")] {
            all.push(
                Test::new(format!("{name}::case_{case}"), move || f(strategy)).needs(common::NEEDS),
            );
        }
    }
    haul_test_support::run(all)
}
