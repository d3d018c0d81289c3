//! End to end on two local nodes (network namespaces): real `haul serve`, real `haul pid`, real
//! CRIU, and the memory toucher checking its own memory after the move.
//!
//! Needs root and CRIU >= 4.1 (scripts/setup.sh); skips with a printed reason otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haul_harness::NodePair;
use haul_workloads::launch::{launch, LaunchSpec};
use haul_workloads::mtouch_log;

const HAUL: &str = env!("CARGO_BIN_EXE_haul");

fn bin(name: &str) -> PathBuf {
    let p = Path::new(HAUL).parent().expect("target dir").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (CRIU and network namespaces)".into());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Err(e) = rt.block_on(haul::criu::Criu::locate_checked()) {
        return Some(format!("no usable CRIU: {e}"));
    }
    None
}

macro_rules! skip_unless_runnable {
    () => {
        if let Some(why) = cannot_run() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// A `haul serve` in node B, killed on drop.
struct Serve {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(name);
    let st = Command::new(HAUL)
        .arg("keygen")
        .arg(&k)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    k
}

fn start_serve(nodes: &NodePair, key: &Path, dir: &Path) -> Serve {
    let port = 27600 + (std::process::id() % 300) as u16;
    let log = dir.join("serve.log");
    let child = nodes
        .b
        .command(HAUL)
        .args(["serve", "--listen", &format!("{}:{port}", nodes.b.addr)])
        .arg("--key")
        .arg(key)
        .arg("--img-path")
        .arg(dir.join("dst-img"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let serve = Serve { child, port, log };
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&serve.log).unwrap_or_default();
        if text.contains("haul serve on") {
            return serve;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "haul serve did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts mtouch in node A in its own pid namespace; returns (host pid, workdir).
fn start_mtouch(nodes: &NodePair, dir: &Path, spec: &str) -> (i32, PathBuf) {
    let wd = dir.join("work");
    std::fs::create_dir_all(&wd).unwrap();
    let launched = launch(
        &LaunchSpec::new(bin("mtouch"))
            .args(["mem-touch.log", spec])
            .cwd(&wd)
            .netns(nodes.a.netns.clone()),
    )
    .expect("launch mtouch");
    assert_eq!(launched.code, 'O', "mtouch did not start");
    // wait until it touches
    let t = Instant::now();
    while touches(&wd) < 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mtouch never started touching"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (launched.host_pid, wd)
}

fn touches(wd: &Path) -> usize {
    std::fs::File::open(wd.join("mem-touch.log"))
        .map(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("t "))
                .count()
        })
        .unwrap_or(0)
}

fn haul_pid(
    nodes: &NodePair,
    serve: &Serve,
    key: &Path,
    dir: &Path,
    pid: i32,
    extra: &[&str],
) -> std::process::Output {
    nodes
        .a
        .command(HAUL)
        .args([
            "pid",
            &pid.to_string(),
            &format!("{}:{}", nodes.b.addr, serve.port),
        ])
        .arg("--key")
        .arg(key)
        .arg("--img-path")
        .arg(dir.join("src-img"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Stops mtouch with its stop file and returns its verdict.
fn stop_and_verify(wd: &Path) -> mtouch_log::MtouchVerdict {
    std::fs::write(wd.join("mem-touch-stop"), b"").unwrap();
    let t = Instant::now();
    loop {
        let v = mtouch_log::analyze(wd.join("mem-touch.log")).unwrap();
        if v.finished {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "mtouch never logged Finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    haul::migrate::tree::alive(pid)
}

#[rstest::rstest]
#[case("stop-copy")]
#[case("post-copy")]
#[case("auto")]
fn mtouch_moves_from_a_to_b_and_verifies(#[case] strategy: &str) {
    skip_unless_runnable!();
    let features = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            haul::criu::Criu::locate_checked()
                .await
                .unwrap()
                .0
                .features()
                .await
                .unwrap()
        });
    if strategy == "post-copy" && !features.lazy_pages {
        eprintln!("skipped: the kernel has no userfaultfd lazy pages");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nodes = NodePair::new("e2e").expect("nodes");
    let key = keygen(tmp.path(), "key");
    let serve = start_serve(&nodes, &key, tmp.path());
    let (pid, wd) = start_mtouch(&nodes, tmp.path(), "32m:32m:1000");
    let report = tmp.path().join("report.json");
    let out = haul_pid(
        &nodes,
        &serve,
        &key,
        tmp.path(),
        pid,
        &["--strategy", strategy, "--report", report.to_str().unwrap()],
    );
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

#[test]
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

#[test]
fn pre_copy_without_memory_tracking_is_refused_clearly() {
    skip_unless_runnable!();
    let features = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            haul::criu::Criu::locate_checked()
                .await
                .unwrap()
                .0
                .features()
                .await
                .unwrap()
        });
    if features.mem_track {
        eprintln!("skipped: this kernel tracks dirty memory, so pre-copy is not refused here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nodes = NodePair::new("pre").expect("nodes");
    let key = keygen(tmp.path(), "key");
    let serve = start_serve(&nodes, &key, tmp.path());
    let (pid, wd) = start_mtouch(&nodes, tmp.path(), "16m:16m:1000");
    let out = haul_pid(
        &nodes,
        &serve,
        &key,
        tmp.path(),
        pid,
        &["--strategy", "pre-copy"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("memory dirty tracking"), "{stderr}");
    assert!(stderr.contains("nothing was frozen"), "{stderr}");
    assert!(alive(pid));
    let v = stop_and_verify(&wd);
    assert!(v.mismatch_lines.is_empty());
}

#[test]
fn a_destination_killed_mid_transfer_leaves_the_process_running_at_home() {
    skip_unless_runnable!();
    let tmp = tempfile::tempdir().unwrap();
    let nodes = NodePair::new("kill").expect("nodes");
    let key = keygen(tmp.path(), "key");
    let mut serve = start_serve(&nodes, &key, tmp.path());
    let (pid, wd) = start_mtouch(&nodes, tmp.path(), "512m:512m:1000");
    let mig = nodes
        .a
        .command(HAUL)
        .args([
            "pid",
            &pid.to_string(),
            &format!("{}:{}", nodes.b.addr, serve.port),
        ])
        .arg("--key")
        .arg(&key)
        .arg("--img-path")
        .arg(tmp.path().join("src-img"))
        .args(["--strategy", "stop-copy", "--no-progress"])
        .stdin(Stdio::null())
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
    serve.child.kill().unwrap();
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
