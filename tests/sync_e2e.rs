//! Migration without shared storage (issue #18), end to end on two local nodes: real
//! `haul serve`, real `haul pid --sync`, real CRIU, and `file-churn` writing in its working
//! directory, which is node-local: each node has a mount namespace of its own
//! ([`haul_harness::mntns::NodeDisks`]) in which the same path shows a different directory
//! (node A's disk, node B's disk), so only what `--sync` carries reaches B.
//!
//! - file-churn moves with its files and finds every block it wrote on B (stop-copy with
//!   200 MiB of files, post-copy with 64 MiB); files it does not touch arrive identical;
//! - `haul pid` killed in the middle of the sync: the process runs on at home, the
//!   destination's partial copy is removed, its tree is as it was;
//! - a file the process holds outside the synced trees that B does not have, and a synced
//!   path B refuses (outside its `--sync-allow`), are refused before anything is frozen.
//!
//! Needs root and CRIU >= 4.1 (scripts/setup.sh); reported as ignored, with the reason,
//! otherwise (a libtest-mimic runner, `harness = false`).

mod common;
mod sync_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use haul_harness::mntns::NodeDisks;
use haul_launch::{launch, LaunchSpec};
use haul_test_support::NodePair;
use haul_workloads::files::{FILE_CHURN_LOG, FILE_CHURN_STOP};
use haul_workloads::worklog::{self, SelfCheckVerdict};

/// Two nodes with node-local disks at `work`, `haul serve` in B, file-churn in A.
struct SyncScene {
    serve: Serve,
    /// file-churn's host pid in node A.
    pid: i32,
    /// The node-local working directory (the same path on both nodes).
    work: PathBuf,
    key: PathBuf,
    nodes: NodePair,
    disks: NodeDisks,
    tmp: tempfile::TempDir,
}

/// A few entries file-churn never touches: they must arrive exactly as they are.
fn fixed_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("fixed/sub")).unwrap();
    std::fs::write(dir.join("fixed/notes"), b"written before the migration\n").unwrap();
    std::fs::write(dir.join("fixed/sub/blob"), sync_support::bytes(3, 1 << 20)).unwrap();
    std::os::unix::fs::symlink("sub/blob", dir.join("fixed/link")).unwrap();
    std::fs::hard_link(dir.join("fixed/notes"), dir.join("fixed/sub/notes-again")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("fixed/notes"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

impl SyncScene {
    fn new(tag: &str, size: &str, serve_args: &[&str]) -> SyncScene {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let work = base.join("work");
        let mut nodes = NodePair::new(tag).expect("nodes");
        let disks = NodeDisks::new(&work, &base.join("disk-a"), &base.join("disk-b"))
            .expect("node-local disks");
        nodes.a.mntns = Some(disks.a_ns.clone());
        nodes.b.mntns = Some(disks.b_ns.clone());
        let key = keygen(&base, "key");
        let serve = start_serve_with(&nodes, &key, &base, &[], serve_args);
        fixed_files(&disks.a_dir);
        let launched = launch(
            &LaunchSpec::new(bin("file-churn"))
                .args(["--size", size, "--rate", "4m"])
                .cwd(&work)
                .output(work.join("file-churn.out"))
                .netns(nodes.a.netns.clone())
                .mntns(&disks.a_ns),
        )
        .expect("launch file-churn");
        assert_eq!(launched.code, 'O', "file-churn did not start");
        let sc = SyncScene {
            serve,
            pid: launched.host_pid,
            work,
            key,
            nodes,
            disks,
            tmp,
        };
        sc.wait_ticking(&sc.disks.a_dir, 20);
        sc
    }

    /// file-churn's log as node `dir` holds it.
    fn verdict(&self, dir: &Path) -> SelfCheckVerdict {
        worklog::analyze(dir.join(FILE_CHURN_LOG)).unwrap_or_default()
    }

    /// Waits until the log in `dir` has `more` ticks beyond what it has now.
    fn wait_ticking(&self, dir: &Path, more: u64) {
        let n0 = self.verdict(dir).ticks;
        let t = Instant::now();
        while self.verdict(dir).ticks < n0 + more {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "file-churn does not tick in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops file-churn through `dir` (the node it runs on) and returns its verdict.
    fn stop(&self, dir: &Path) -> SelfCheckVerdict {
        std::fs::write(dir.join(FILE_CHURN_STOP), b"").unwrap();
        let t = Instant::now();
        loop {
            let v = self.verdict(dir);
            if v.finished {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "file-churn never logged Finish in {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid_command(&self, extra: &[&str]) -> std::process::Command {
        haul_pid_command(
            &self.nodes,
            &self.serve,
            &self.key,
            self.tmp.path(),
            self.pid,
            extra,
        )
    }

    fn sync_arg(&self) -> String {
        self.work.display().to_string()
    }
}

fn sync_leftovers(dir: &Path) -> Vec<String> {
    sync_support::names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".haul-sync"))
        .collect()
}

fn assert_passed(v: &SelfCheckVerdict, where_: &str) {
    assert!(
        v.passed() && v.summary_value("bad_files") == Some(0),
        "file-churn's check on {where_}: {v} (summary {:?})",
        v.summary
    );
    let log = std::fs::read_to_string(&v.path).unwrap();
    assert!(
        log.lines().any(|l| l.starts_with("PASS")),
        "no PASS in {}",
        v.path.display()
    );
}

fn file_churn_of_200m_moves_with_its_files_by_stop_copy_and_checks_them_on_b() {
    file_churn_moves_with_its_files_and_checks_them_on_b("stop-copy", "200m");
}

fn file_churn_of_64m_moves_with_its_files_by_post_copy_and_checks_them_on_b() {
    file_churn_moves_with_its_files_and_checks_them_on_b("post-copy", "64m");
}

fn file_churn_moves_with_its_files_and_checks_them_on_b(strategy: &str, size: &str) {
    skip_unless_runnable!();
    if strategy == "post-copy" && !criu_features().lazy_pages {
        haul_test_support::skip("the kernel has no userfaultfd lazy pages");
    }
    let sc = SyncScene::new("sync", size, &[]);
    let (a, b) = (sc.disks.a_dir.clone(), sc.disks.b_dir.clone());
    let report = sc.tmp.path().join("report.json");
    let sync = sc.sync_arg();
    let out = sc
        .pid_command(&[
            "--strategy",
            strategy,
            "--sync",
            &sync,
            "--report",
            report.to_str().unwrap(),
            "--no-progress",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "haul pid failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
        std::fs::read_to_string(&sc.serve.log).unwrap_or_default()
    );
    println!("{stdout}");
    // The source is gone; file-churn runs in B, in B's view of the files.
    let t = Instant::now();
    while alive(sc.pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "source pid still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_b = sc.nodes.b.pids_named("file-churn");
    assert_eq!(on_b.len(), 1, "expected one file-churn in node B");
    let ns = std::fs::metadata(format!("/proc/{}/ns/mnt", on_b[0])).unwrap();
    let b_ns = std::fs::metadata(&sc.disks.b_ns).unwrap();
    assert_eq!(
        ns.ino(),
        b_ns.ino(),
        "file-churn is not in node B's mount namespace"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", on_b[0])).unwrap(),
        sc.work
    );
    sc.wait_ticking(&b, 20);
    assert!(
        sync_leftovers(&b).is_empty(),
        "{:?}",
        sync_support::names(&b)
    );
    // What file-churn does not touch arrived as it is.
    sync_support::assert_same_but_link_atimes(
        &sync_support::snapshot(&a.join("fixed")),
        &sync_support::snapshot(&b.join("fixed")),
        "the untouched files",
    );
    // Every block file-churn wrote, before, during and after the move, is right on B.
    let v = sc.stop(&b);
    assert_passed(&v, "node B");
    println!(
        "file-churn's longest pause: {:.3} s ({} ticks)",
        v.largest_gap.as_secs_f64(),
        v.ticks
    );
    // The report has the rounds and the frozen share of the final one.
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let s = &rep["sync"];
    let rounds = s["rounds"].as_array().expect("sync rounds in the report");
    assert!(rounds.len() >= 2, "{s}");
    assert!(rounds.last().unwrap()["final_round"].as_bool().unwrap());
    assert!(
        rounds[0]["payload_bytes"].as_u64().unwrap() > 32 << 20,
        "{s}"
    );
    assert!(s["final_share_of_downtime"].as_f64().unwrap() > 0.0);
    assert!(stdout.contains("file sync of"), "{stdout}");
}

fn a_sync_interrupted_by_killing_haul_pid_leaves_both_nodes_as_they_were() {
    skip_unless_runnable!();
    let mut sc = SyncScene::new("synck", "200m", &[]);
    let (a, b) = (sc.disks.a_dir.clone(), sc.disks.b_dir.clone());
    std::fs::write(b.join("old"), b"B's own file").unwrap();
    let before = sync_support::snapshot(&b);
    let sync = sc.sync_arg();
    let mut mig = sc
        .pid_command(&["--strategy", "stop-copy", "--sync", &sync, "--no-progress"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the first round is writing into B's staging directory.
    let t = Instant::now();
    let staged = loop {
        let staging: Vec<PathBuf> = sync_leftovers(&b).into_iter().map(|n| b.join(n)).collect();
        let bytes: u64 = staging
            .iter()
            .map(|s| du(&s.join("tree")) + du(&s.join("tmp")))
            .sum();
        if bytes > 8 << 20 {
            break bytes;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the sync never started writing on B"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    mig.kill().unwrap();
    let status = mig.wait().unwrap();
    println!(
        "killed haul pid with {} MiB staged on B ({status})",
        staged >> 20
    );
    // The process never stopped running at home.
    assert!(alive(sc.pid));
    assert_ne!(haul::migrate::tree::state(sc.pid), Some('T'));
    sc.wait_ticking(&a, 20);
    // B removes the partial copy and keeps serving.
    let t = Instant::now();
    while !sync_leftovers(&b).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the partial copy stays on B: {:?}\nserve log:\n{}",
            sync_support::names(&b),
            std::fs::read_to_string(&sc.serve.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (the root directory's access time is this test's own: it listed the directory)
    let no_root_atime = |mut m: std::collections::BTreeMap<PathBuf, sync_support::Node>| {
        if let Some(root) = m.get_mut(Path::new("")) {
            root.atime = (0, 0);
        }
        m
    };
    sync_support::assert_same(
        &no_root_atime(before),
        &no_root_atime(sync_support::snapshot(&b)),
        "node B's disk",
    );
    assert!(sc.nodes.b.pids_named("file-churn").is_empty());
    assert!(
        sc.serve.child.try_wait().unwrap().is_none(),
        "haul serve died"
    );
    let log = std::fs::read_to_string(&sc.serve.log).unwrap_or_default();
    assert!(log.contains("file sync rolled back"), "{log}");
    let v = sc.stop(&a);
    assert_passed(&v, "node A");
}

/// Bytes of regular files below `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn what_b_lacks_or_refuses_is_refused_before_the_freeze() {
    skip_unless_runnable!();
    let sc = SyncScene::new("syncr", "16m", &["--sync-allow", "/srv/haul-nowhere"]);
    let (a, b) = (sc.disks.a_dir.clone(), sc.disks.b_dir.clone());
    let untouched = |out: &std::process::Output, must: &[&str]| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "haul pid must fail");
        for m in must {
            assert!(stderr.contains(m), "{m:?} not in:\n{stderr}");
        }
        assert!(stderr.contains("nothing was frozen"), "{stderr}");
        assert!(alive(sc.pid));
        assert_ne!(haul::migrate::tree::state(sc.pid), Some('T'));
        assert!(
            sync_support::names(&b).is_empty(),
            "B got {:?}",
            sync_support::names(&b)
        );
    };
    // Only the data directory synced: the log file-churn holds open in its working
    // directory is on A's disk alone (refused by the destination's pre-flight at Begin,
    // which leaves out only the files under the synced trees).
    let churn = sc.work.join("churn").display().to_string();
    let out = sc
        .pid_command(&["--strategy", "stop-copy", "--sync", &churn])
        .output()
        .unwrap();
    let log = sc.work.join(FILE_CHURN_LOG).display().to_string();
    untouched(&out, &[&log, "not on the destination", "--sync"]);
    // The whole directory: outside what B accepts (--sync-allow).
    let sync = sc.sync_arg();
    let out = sc
        .pid_command(&["--strategy", "stop-copy", "--sync", &sync])
        .output()
        .unwrap();
    untouched(
        &out,
        &[&sync, "outside the directories this destination accepts"],
    );
    // A synced root that escapes the tree's own storage: `/` itself.
    let out = sc
        .pid_command(&["--strategy", "stop-copy", "--sync", "/"])
        .output()
        .unwrap();
    untouched(&out, &["/"]);
    sc.wait_ticking(&a, 10);
    assert_passed(&sc.stop(&a), "node A");
}

fn main() -> std::process::ExitCode {
    use haul_test_support::test;
    let [root, criu] = common::NEEDS;
    haul_test_support::run(vec![
        test!(
            file_churn_of_200m_moves_with_its_files_by_stop_copy_and_checks_them_on_b,
            root,
            criu
        ),
        test!(
            file_churn_of_64m_moves_with_its_files_by_post_copy_and_checks_them_on_b,
            root,
            criu
        ),
        test!(
            a_sync_interrupted_by_killing_haul_pid_leaves_both_nodes_as_they_were,
            root,
            criu
        ),
        test!(
            what_b_lacks_or_refuses_is_refused_before_the_freeze,
            root,
            criu
        ),
    ])
}
