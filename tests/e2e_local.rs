//! End to end on two local nodes (network namespaces): real `haul serve`, real `haul pid`, real
//! CRIU, and the memory toucher checking its own memory after the move.
//!
//! Needs root and CRIU >= 4.1 (scripts/setup.sh); reported as ignored otherwise.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use haul_test_support::NodePair;

fn mtouch_moves_from_a_to_b_and_verifies(strategy: &str) {
    skip_unless_runnable!();
    let features = criu_features();
    if strategy == "post-copy" && !features.lazy_pages {
        haul_test_support::skip("needs userfaultfd lazy pages in the kernel");
    }
    let sc = Scene::new("e2e", "32m:32m:1000");
    let (nodes, serve, pid, wd) = (&sc.nodes, &sc.serve, sc.pid, sc.wd.clone());
    let report = sc.tmp.path().join("report.json");
    let out = sc.migrate(&["--strategy", strategy, "--report", report.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "haul pid failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
        std::fs::read_to_string(&serve.log).unwrap_or_default()
    );
    for line in [
        "Migration succeeded",
        "total time is ~",
        "frozen time is ~",
        "restore time is ~",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // The source is gone; exactly one toucher runs in B, and it keeps touching.
    let t = Instant::now();
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "source pid {pid} still exists after the migration"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        nodes.b.pids_named("mtouch").len(),
        1,
        "expected one mtouch in node B"
    );
    assert!(
        nodes.a.pids_named("mtouch").is_empty(),
        "mtouch still runs in node A"
    );
    let n0 = touches(&wd);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        touches(&wd) > n0,
        "mtouch stopped touching after the migration"
    );
    let v = stop_and_verify(&wd);
    assert!(
        v.mismatch_lines.is_empty(),
        "pages differ after the migration: {:?}",
        &v.mismatch_lines[..v.mismatch_lines.len().min(5)]
    );
    // The report says what happened.
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let used = rep["strategy"].as_str().unwrap().to_string();
    if strategy != "auto" {
        assert_eq!(used, strategy);
    }
    assert!(rep["destination_pid"].as_i64().unwrap() > 0);
    // 32 MiB were touched: at least that many pages moved, whichever way.
    let pages = rep["pages_sent"].as_u64().unwrap();
    assert!(
        pages >= 32 * 256,
        "only {pages} pages reported sent for a 32 MiB toucher"
    );
    assert!(rep["downtime_secs"].as_f64().unwrap() > 0.0);
    assert!(rep["total_secs"].as_f64().unwrap() >= rep["downtime_secs"].as_f64().unwrap());
    if used == "post-copy" {
        assert!(
            rep["postcopy_window_secs"].as_f64().is_some(),
            "post-copy report lacks its window"
        );
    }
}

fn a_wrong_key_is_refused_before_anything_is_frozen() {
    skip_unless_runnable!();
    let tmp = tempfile::tempdir().unwrap();
    let nodes = NodePair::new("key").expect("nodes");
    let good = keygen(tmp.path(), "good");
    let bad = keygen(tmp.path(), "bad");
    let serve = start_serve(&nodes, &good, tmp.path());
    let (pid, wd) = start_mtouch(&nodes, tmp.path(), "16m:16m:1000");
    let out = haul_pid(
        &nodes,
        &serve,
        &bad,
        tmp.path(),
        pid,
        &["--strategy", "stop-copy"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong key must fail");
    assert!(stderr.contains("authentication"), "{stderr}");
    assert!(stderr.contains("nothing was frozen"), "{stderr}");
    assert!(alive(pid) && haul::migrate::tree::state(pid) != Some('T'));
    assert!(nodes.b.pids_named("mtouch").is_empty());
    // nothing reached the destination's image directory
    let dst = tmp.path().join("dst-img");
    let entries = std::fs::read_dir(&dst).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        entries, 0,
        "the destination wrote something for an unauthenticated peer"
    );
    let v = stop_and_verify(&wd);
    assert!(v.mismatch_lines.is_empty());
}

fn pre_copy_without_memory_tracking_is_refused_clearly() {
    skip_unless_runnable!();
    let features = criu_features();
    if features.mem_track {
        haul_test_support::skip("this kernel tracks dirty memory, so pre-copy is not refused here");
    }
    let sc = Scene::new("pre", "16m:16m:1000");
    let (pid, wd) = (sc.pid, sc.wd.clone());
    let out = sc.migrate(&["--strategy", "pre-copy"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("memory dirty tracking"), "{stderr}");
    assert!(stderr.contains("nothing was frozen"), "{stderr}");
    assert!(alive(pid));
    let v = stop_and_verify(&wd);
    assert!(v.mismatch_lines.is_empty());
}

fn a_destination_killed_mid_transfer_leaves_the_process_running_at_home() {
    skip_unless_runnable!();
    let mut sc = Scene::new("kill", "512m:512m:1000");
    let (pid, wd) = (sc.pid, sc.wd.clone());
    let mig = sc
        .pid_command(&["--strategy", "stop-copy", "--no-progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the destination once the dump is under way (the toucher is seized by CRIU).
    let t = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let traced = status
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"));
        if traced || t.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    sc.serve.child.kill().unwrap();
    let nodes = &sc.nodes;
    let out = mig.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "haul pid must fail when the destination dies"
    );
    assert!(stderr.contains("still runs on the source"), "{stderr}");
    // The toucher runs at home, not frozen, and nothing runs in B.
    assert!(alive(pid), "the process was lost");
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(haul::migrate::tree::state(pid), Some('T'), "left stopped");
    let n0 = touches(&wd);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        touches(&wd) > n0,
        "the process does not run after the failed migration"
    );
    assert!(nodes.b.pids_named("mtouch").is_empty(), "a copy runs in B");
    let v = stop_and_verify(&wd);
    assert!(v.mismatch_lines.is_empty());
}

fn main() -> std::process::ExitCode {
    use haul_test_support::{test, Test};
    let [root, criu] = common::NEEDS;
    let mut tests: Vec<Test> = ["stop-copy", "post-copy", "auto"]
        .into_iter()
        .map(|s| {
            Test::new(
                format!("mtouch_moves_from_a_to_b_and_verifies::{s}"),
                move || mtouch_moves_from_a_to_b_and_verifies(s),
            )
            .needs([root, criu])
        })
        .collect();
    tests.extend([
        test!(a_wrong_key_is_refused_before_anything_is_frozen, root, criu),
        test!(
            pre_copy_without_memory_tracking_is_refused_clearly,
            root,
            criu
        ),
        test!(
            a_destination_killed_mid_transfer_leaves_the_process_running_at_home,
            root,
            criu
        ),
    ]);
    haul_test_support::run(tests)
}
