//! Load: 20 migrations one after another and 4 at once through one `haul serve`; every
//! workload arrives on node B exactly once and passes its own check.
//!
//! Needs root and CRIU >= 4.1; reported as ignored otherwise.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use haul_test_support::NodePair;

fn verify_on_b(nodes: &NodePair, pid: i32, wd: &Path, what: &str) {
    let t = std::time::Instant::now();
    while haul::migrate::tree::alive(pid) {
        assert!(
            t.elapsed().as_secs() < 10,
            "{what}: the source process {pid} still exists"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !nodes.b.pids_named("mtouch").is_empty(),
        "{what}: no mtouch in B"
    );
    let v = stop_and_verify(wd);
    assert!(v.mismatch_lines.is_empty(), "{what}: pages differ");
}

fn twenty_in_a_row_then_four_at_once_through_one_service() {
    skip_unless_runnable!();
    let tmp = tempfile::tempdir().unwrap();
    let nodes = NodePair::new("load").expect("nodes");
    let key = keygen(tmp.path(), "key");
    let serve = start_serve(&nodes, &key, tmp.path());
    for i in 0..20 {
        let dir = tmp.path().join(format!("seq-{i}"));
        let (pid, wd) = start_mtouch(&nodes, &dir, "8m:8m:1000");
        let strategy = if i % 2 == 0 { "stop-copy" } else { "post-copy" };
        let out = haul_pid(
            &nodes,
            &serve,
            &key,
            &dir,
            pid,
            &["--strategy", strategy, "--no-progress"],
        );
        assert!(
            out.status.success(),
            "migration {i} ({strategy}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        verify_on_b(&nodes, pid, &wd, &format!("migration {i}"));
    }
    // four at once
    let mut running = Vec::new();
    for i in 0..4 {
        let dir = tmp.path().join(format!("par-{i}"));
        let (pid, wd) = start_mtouch(&nodes, &dir, "16m:16m:1000");
        running.push((pid, wd, dir));
    }
    let children: Vec<_> = running
        .iter()
        .enumerate()
        .map(|(i, (pid, _, dir))| {
            let strategy = if i % 2 == 0 { "stop-copy" } else { "post-copy" };
            haul_pid_command(
                &nodes,
                &serve,
                &key,
                dir,
                *pid,
                &["--strategy", strategy, "--no-progress"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "concurrent migration {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        nodes.b.pids_named("mtouch").len(),
        4,
        "expected the 4 concurrent ones in B"
    );
    assert!(nodes.a.pids_named("mtouch").is_empty(), "mtouch left in A");
    for (i, (pid, wd, _)) in running.iter().enumerate() {
        verify_on_b(&nodes, *pid, wd, &format!("concurrent migration {i}"));
    }
}

fn main() -> std::process::ExitCode {
    haul_test_support::run(vec![haul_test_support::test!(
        twenty_in_a_row_then_four_at_once_through_one_service,
        common::NEEDS[0],
        common::NEEDS[1]
    )])
}
