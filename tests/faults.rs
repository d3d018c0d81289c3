//! Fault injection: each fault at each phase of a migration, and where the process is after.
//!
//! A fault point (`HAUL_FAULT`, see src/fault.rs) pauses `haul serve` or `haul pid` at a phase;
//! the test then injects a real fault (kills a side, cuts the link, fills the destination's
//! disk, damages an image so CRIU's restore fails) and lets it go on. Every case asserts: the
//! workload runs exactly once, where expected, not stopped, still touching; its own check
//! passes; no CRIU process stays behind; `haul pid` exits non-zero saying where the process
//! is. The table goes to target/fault-table.md (and results/ with HAUL_RECORD_RESULTS=1).
//!
//! Needs root and CRIU >= 4.1; reported as ignored otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillDestination,
    CutLink,
    DiskFull,
    CriuFailsRestore,
    KillSource,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Source,
    Destination,
}

struct Case {
    phase: &'static str,
    paused: Side,
    fault: Fault,
    strategy: &'static str,
}

const fn case(phase: &'static str, paused: Side, fault: Fault, strategy: &'static str) -> Case {
    Case {
        phase,
        paused,
        fault,
        strategy,
    }
}

const CASES: &[Case] = &[
    case(
        "handshake",
        Side::Destination,
        Fault::KillDestination,
        "stop-copy",
    ),
    case("handshake", Side::Destination, Fault::CutLink, "stop-copy"),
    case(
        "final-dump",
        Side::Destination,
        Fault::KillDestination,
        "stop-copy",
    ),
    case("final-dump", Side::Destination, Fault::CutLink, "stop-copy"),
    case(
        "final-dump",
        Side::Destination,
        Fault::KillSource,
        "stop-copy",
    ),
    case("frozen", Side::Source, Fault::KillSource, "stop-copy"),
    case("frozen", Side::Source, Fault::KillDestination, "post-copy"),
    // haul's memory path: the source holds CRIU's lazy page server (tasks frozen after the
    // lazy dump), no page has gone yet. A killed `haul pid` resets the hold and CRIU resumes
    // the tasks; a killed destination fails the path and haul makes CRIU resume them.
    case("lazy-held", Side::Source, Fault::KillSource, "stop-copy"),
    case("lazy-held", Side::Source, Fault::KillSource, "post-copy"),
    case(
        "lazy-held",
        Side::Source,
        Fault::KillDestination,
        "stop-copy",
    ),
    case(
        "image-transfer",
        Side::Destination,
        Fault::KillDestination,
        "stop-copy",
    ),
    case(
        "image-transfer",
        Side::Destination,
        Fault::CutLink,
        "stop-copy",
    ),
    case(
        "image-transfer",
        Side::Destination,
        Fault::DiskFull,
        "stop-copy",
    ),
    case(
        "image-transfer",
        Side::Destination,
        Fault::KillSource,
        "stop-copy",
    ),
    case(
        "restore",
        Side::Destination,
        Fault::KillDestination,
        "stop-copy",
    ),
    case(
        "restore",
        Side::Destination,
        Fault::CriuFailsRestore,
        "stop-copy",
    ),
    case(
        "restore",
        Side::Destination,
        Fault::CriuFailsRestore,
        "post-copy",
    ),
    case("restore", Side::Destination, Fault::KillSource, "stop-copy"),
    // After the restore, in post-copy's window: the source's tasks are gone, so the process
    // either runs on the destination (every page had arrived) or is lost, and said so.
    case(
        "post-copy-serving",
        Side::Source,
        Fault::KillDestination,
        "post-copy",
    ),
    case(
        "post-copy-serving",
        Side::Source,
        Fault::CutLink,
        "post-copy",
    ),
    case(
        "post-copy-serving",
        Side::Source,
        Fault::KillSource,
        "post-copy",
    ),
];

/// Whether the case's fault comes after the process ran on the destination.
fn after_restore(c: &Case) -> bool {
    c.phase == "post-copy-serving"
}

/// The workload: post-copy's window must still be open when the fault comes, so those cases
/// move more memory than the background transfer carries in the moment the fault takes.
fn workload(c: &Case) -> &'static str {
    if after_restore(c) {
        "512m:512m:1000"
    } else {
        "64m:64m:1000"
    }
}

/// A tmpfs mounted for the destination's images (disk-full cases); unmounted on drop.
struct Tmpfs(PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn wait_for(path: &Path, secs: u64) -> bool {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Runs one case; returns (outcome for the table, problems found).
fn run_case(c: &Case) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let fault_dir = tempfile::tempdir().unwrap();
    let faults = fault_dir.path().to_path_buf();
    let phase_os = PathBuf::from(c.phase);
    let mut serve_env: Vec<(&str, &Path)> = vec![("HAUL_FAULT_DIR", faults.as_path())];
    if c.paused == Side::Destination {
        serve_env.push(("HAUL_FAULT", phase_os.as_path()));
    }
    let mut sc = Scene::with_serve_env("flt", workload(c), &serve_env);
    let pid = sc.pid;
    // serve made its image directory at start; a small tmpfs over it makes the disk fill up
    let dst_img = sc.tmp.path().join("dst-img");
    let _tmpfs = (c.fault == Fault::DiskFull).then(|| {
        nix::mount::mount(
            Some("tmpfs"),
            &dst_img,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=200m"),
        )
        .expect("mount tmpfs");
        Tmpfs(dst_img.clone())
    });
    let mut cmd = sc.pid_command(&["--strategy", c.strategy, "--no-progress"]);
    cmd.env("HAUL_FAULT_DIR", &faults)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if c.paused == Side::Source {
        cmd.env("HAUL_FAULT", c.phase);
    }
    let mig: Child = cmd.spawn().unwrap();
    let mig_pid = mig.id() as i32;
    let reached = faults.join(format!("{}.reached", c.phase));
    if !wait_for(&reached, 60) {
        problems.push(format!("phase {} never reached", c.phase));
    }
    match c.fault {
        Fault::KillDestination => {
            let _ = sc.serve.child.kill();
        }
        Fault::KillSource => sigkill(mig_pid),
        Fault::CutLink => sc.nodes.cut_link().expect("cut link"),
        Fault::DiskFull => {
            // leave no room for the images still to come
            let _ = std::fs::write(dst_img.join("filler"), vec![1u8; 200 << 20]);
        }
        Fault::CriuFailsRestore => {
            // damage the tree's core image: CRIU's restore then fails for real
            for e in walk(&dst_img) {
                if e.file_name()
                    .map(|n| n.to_string_lossy().starts_with("core-"))
                    .unwrap_or(false)
                {
                    std::fs::write(&e, b"garbage").unwrap();
                }
            }
        }
    }
    std::fs::write(faults.join(format!("{}.go", c.phase)), b"").unwrap();
    let out = wait_output(mig, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.1).to_string();
    let killed_source = c.fault == Fault::KillSource;
    std::thread::sleep(Duration::from_millis(500));
    let outcome = if after_restore(c) {
        check_after_restore(&sc, pid, &out, killed_source, &mut problems)
    } else {
        check_on_source(&sc, pid, &out, killed_source, &mut problems)
    };
    // CRIU processes left behind in either node (an orphaned page server ends with its socket).
    let nodes = &sc.nodes;
    let t = Instant::now();
    while !(nodes.a.pids_named("criu").is_empty() && nodes.b.pids_named("criu").is_empty()) {
        if t.elapsed() > Duration::from_secs(30) {
            problems.push("criu processes left behind".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !problems.is_empty() {
        let log = std::fs::read_to_string(&sc.serve.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(6).collect();
        eprintln!(
            "serve log tail:\n{}\nhaul pid stderr:\n{stderr}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let verdict = if problems.is_empty() {
        format!(
            "ok: {outcome}; exit {:?}; \"{}\"",
            out.0,
            last_line(&stderr)
        )
    } else {
        format!("FAILED: {}", problems.join("; "))
    };
    (verdict, problems)
}

/// Before the process ran on the destination: it must run exactly once, on the source,
/// touching and intact, and `haul pid` (unless killed) says so.
fn check_on_source(
    sc: &Scene,
    pid: i32,
    out: &(Option<i32>, Vec<u8>),
    killed_source: bool,
    problems: &mut Vec<String>,
) -> String {
    let stderr = String::from_utf8_lossy(&out.1);
    if !killed_source {
        if out.0 == Some(0) {
            problems.push("haul pid exited 0 after a fault".into());
        }
        if !stderr.contains("still runs on the source") {
            problems.push(format!(
                "haul pid did not say where the process is: {}",
                last_line(&stderr)
            ));
        }
    }
    let (in_a, in_b) = (
        sc.nodes.a.pids_named("mtouch"),
        sc.nodes.b.pids_named("mtouch"),
    );
    if in_a != vec![pid] {
        problems.push(format!("expected mtouch {pid} in A, found {in_a:?}"));
    }
    if !in_b.is_empty() {
        problems.push(format!("a copy runs in B: {in_b:?}"));
    }
    runs_intact(sc, pid, "the workload", in_a == vec![pid], problems);
    format!(
        "process runs once, on the source; A: {}, B: {}",
        in_a.len(),
        in_b.len()
    )
}

/// `pid` is not stopped and keeps touching; with `verify`, it is stopped and checks every
/// page. Problems are named after `what`.
fn runs_intact(sc: &Scene, pid: i32, what: &str, verify: bool, problems: &mut Vec<String>) {
    if haul::migrate::tree::state(pid) == Some('T') {
        problems.push(format!("{what} was left stopped"));
    }
    let n0 = touches(&sc.wd);
    std::thread::sleep(Duration::from_millis(300));
    if touches(&sc.wd) <= n0 {
        problems.push(format!("{what} does not run"));
    }
    if verify {
        let v = stop_and_verify(&sc.wd);
        if !v.mismatch_lines.is_empty() {
            problems.push(format!("{what}: {} pages differ", v.mismatch_lines.len()));
        }
    }
}

/// In post-copy's window: the source's tasks are gone; the process runs once on the
/// destination, touching and intact, or nowhere (lost: post-copy's known risk), never
/// stopped and never twice; `haul pid` (unless killed) says which.
fn check_after_restore(
    sc: &Scene,
    pid: i32,
    out: &(Option<i32>, Vec<u8>),
    killed_source: bool,
    problems: &mut Vec<String>,
) -> String {
    let stderr = String::from_utf8_lossy(&out.1);
    // a copy blocked on a page that cannot come ends when CRIU gives up on it
    let t = Instant::now();
    let mut in_b = sc.nodes.b.pids_named("mtouch");
    while !in_b.is_empty() && t.elapsed() < Duration::from_secs(40) {
        let n0 = touches(&sc.wd);
        std::thread::sleep(Duration::from_millis(500));
        if touches(&sc.wd) > n0 {
            break;
        }
        in_b = sc.nodes.b.pids_named("mtouch");
    }
    // The source's CRIU ends its tasks once its page server is done with them. When `haul
    // pid` itself is killed, CRIU may instead fail the lazy dump and resume them, with all
    // their memory; the copy on B was then killed by its relay when the source's side ended.
    let t = Instant::now();
    let mut in_a = sc.nodes.a.pids_named("mtouch");
    while !in_a.is_empty() && t.elapsed() < Duration::from_secs(30) {
        let n0 = touches(&sc.wd);
        std::thread::sleep(Duration::from_millis(300));
        if in_b.is_empty() && touches(&sc.wd) > n0 {
            break;
        }
        in_a = sc.nodes.a.pids_named("mtouch");
    }
    let resumed_on_a = killed_source && in_a == vec![pid] && in_b.is_empty();
    if !in_a.is_empty() && !resumed_on_a {
        problems.push(format!(
            "the source's tasks ({pid}) outlived a restore: {in_a:?}"
        ));
    }
    if in_b.len() > 1 {
        problems.push(format!("more than one copy in B: {in_b:?}"));
    }
    let runs_on_b = in_b.len() == 1;
    if resumed_on_a {
        runs_intact(sc, pid, "the workload resumed on A", true, problems);
        return "resumed on the source by CRIU (haul pid gone), the copy on B killed; A: 1, B: 0"
            .to_string();
    }
    if !killed_source {
        if out.0 == Some(0) {
            problems.push("haul pid exited 0 after a fault".into());
        }
        let says = if runs_on_b {
            "runs on the destination"
        } else {
            "the process is lost"
        };
        if !stderr.contains(says) {
            problems.push(format!(
                "haul pid should say \"{says}\": {}",
                last_line(&stderr)
            ));
        }
    }
    if runs_on_b {
        let b = in_b[0];
        runs_intact(sc, b, "the copy on B", true, problems);
        "runs once, on the destination, intact; A: 0, B: 1".to_string()
    } else {
        format!(
            "lost in the post-copy window (its known risk), no copy left; A: {}, B: 0",
            in_a.len()
        )
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

fn wait_output(mut child: Child, limit: Duration) -> (Option<i32>, Vec<u8>) {
    let t = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let o = child.wait_with_output().unwrap();
            return (o.status.code(), o.stderr);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            return (None, o.stderr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn every_fault_at_every_phase_leaves_the_process_running_once() {
    skip_unless_runnable!();
    let mut table = String::from(
        "# Fault injection: phase x fault x outcome\n\nWorkload: mtouch 64m:64m:1000 on two local nodes. \
         Expected before the restore: the process runs exactly once, on the source, and verifies. \
         In post-copy's window (post-copy-serving, mtouch 512m): it runs once on the destination \
         and verifies, or is lost and `haul pid` says so, or (only when `haul pid` itself was \
         killed) CRIU resumes it on the source and it verifies there; never twice, never stopped.\n\n\
         | phase | paused side | fault | strategy | outcome |\n|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    // HAUL_FAULT_CASES=text runs only the cases whose "phase/fault/strategy" contains it.
    let only = std::env::var("HAUL_FAULT_CASES").ok();
    for c in CASES {
        let name = format!("{}/{:?}/{}", c.phase, c.fault, c.strategy);
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let (verdict, problems) = run_case(c);
        eprintln!("{} / {:?} / {}: {verdict}", c.phase, c.fault, c.strategy);
        table.push_str(&format!(
            "| {} | {:?} | {:?} | {} | {} |\n",
            c.phase,
            c.paused,
            c.fault,
            c.strategy,
            verdict.replace('|', "/")
        ));
        if !problems.is_empty() {
            failures.push(format!(
                "{} / {:?} / {}: {}",
                c.phase,
                c.fault,
                c.strategy,
                problems.join("; ")
            ));
        }
    }
    table.push_str("\npre-copy-round: not run here (this kernel has no memory dirty tracking).\n");
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("fault-table.md");
    let _ = std::fs::write(&target, &table);
    if std::env::var_os("HAUL_RECORD_RESULTS").is_some() {
        let _ = std::fs::write(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("results")
                .join("fault-table.md"),
            &table,
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}\n\n{table}",
        failures.len(),
        failures.join("\n")
    );
}

fn main() -> std::process::ExitCode {
    haul_test_support::run(vec![haul_test_support::test!(
        every_fault_at_every_phase_leaves_the_process_running_once,
        common::NEEDS[0],
        common::NEEDS[1]
    )])
}
