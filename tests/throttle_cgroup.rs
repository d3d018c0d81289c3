//! The throttle on this node's real cgroups (issue #15): a rate-mode toucher in its own pid
//! namespace is moved into haul's cgroup, slowed, released; it must end exactly where it was
//! (every thread, every hierarchy), unthrottled, with haul's cgroup gone, and its dirty rate
//! back, also when the owning code fails, panics or is killed, when a member exits and when
//! tasks are forked meanwhile. Needs root and a cgroup mechanism; reported as ignored, with
//! the reason, otherwise.
//!
//! The rate figures are printed (`--nocapture`); thresholds are loose because the machine is
//! shared (2 cores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use haul::migrate::converge::ThrottleLevel;
use haul::migrate::tree;
use haul::throttle::cgroup::CgroupDir;
use haul::throttle::membership::threads_of;
use haul::throttle::{
    sweep_stale, tracer_pid, Layout, Mechanism, MechanismKind, Throttle, ThrottleConfig,
    ThrottleError,
};
use haul_launch::{launch, LaunchSpec, Launched, StartProtocol};
use haul_test_support::skip;
use haul_workloads::rate_log;
use haul_workloads::worklog::Timestamp;

/// One test at a time: they measure rates on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_haul"))
        .parent()
        .expect("target dir")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// The mechanism of `kind` on this node, or why the test cannot run.
fn mechanism(kind: impl Fn(MechanismKind) -> bool) -> Result<Mechanism, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (cgroups)".into());
    }
    let layout = Layout::discover().map_err(|e| e.to_string())?;
    layout
        .mechanisms()
        .into_iter()
        .find(|m| kind(m.kind))
        .ok_or_else(|| format!("no such mechanism on this node ({})", layout.describe()))
}

macro_rules! need {
    ($kind:expr) => {
        match mechanism($kind) {
            Ok(m) => m,
            Err(why) => skip(why),
        }
    };
}

fn cpu_quota(k: MechanismKind) -> bool {
    k.is_cpu_quota()
}

/// A workload in its own pid namespace, killed on drop.
struct Workload {
    launched: Launched,
    dir: tempfile::TempDir,
}

impl Workload {
    fn start(program: PathBuf, args: &[&str], protocol: StartProtocol) -> Workload {
        let dir = tempfile::tempdir().unwrap();
        let spec = LaunchSpec::new(program)
            .args(args.iter().copied())
            .cwd(dir.path())
            .protocol(protocol);
        let launched = launch(&spec).expect("launch");
        assert!(launched.started(), "{}", launched.report_line());
        Workload { launched, dir }
    }

    /// mtouch dirtying `rate` with `cpu_us` of CPU per page, logging its rate.
    fn toucher(rate: &str, cpu_us: &str) -> Workload {
        Workload::start(
            bin("mtouch"),
            &[
                "mt.log",
                "16m:16m:0",
                "--rate",
                rate,
                "--cpu-per-page",
                cpu_us,
                "--rate-log",
                "rate.log",
            ],
            StartProtocol::StartFd,
        )
    }

    /// `sh` as pid 1 of its namespace running `script`.
    fn shell(script: &str) -> Workload {
        Workload::start("/bin/sh".into(), &["-c", script], StartProtocol::Exec)
    }

    fn pid(&self) -> i32 {
        self.launched.host_pid
    }

    fn rate_log(&self) -> Vec<rate_log::RateSample> {
        rate_log::read(self.dir.path().join("rate.log")).unwrap_or_default()
    }

    /// Stops mtouch through its stop file and checks its verdict.
    fn stop_toucher(mut self) {
        std::fs::write(self.dir.path().join("mem-touch-stop"), b"").unwrap();
        let exit = self.launched.wait_timeout(Duration::from_secs(30)).unwrap();
        let v = haul_workloads::mtouch_log::analyze(self.dir.path().join("mt.log")).unwrap();
        assert!(v.passed(), "{v}");
        assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.launched.kill();
    }
}

/// Every thread of the tree and its whole `/proc/.../cgroup` (every hierarchy).
fn snapshot(root: i32) -> BTreeMap<i32, String> {
    let mut m = BTreeMap::new();
    for p in tree::descendants(root) {
        for t in threads_of(p) {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/task/{t}/cgroup")) {
                m.insert(t, s);
            }
        }
    }
    m
}

/// The lines of a `/proc/.../cgroup` for the hierarchies haul moves tasks in: cgroup v2
/// (`0::`) and the v1 hierarchies with the `cpu` or `freezer` controller. Others (memory,
/// pids, name=systemd, …) haul never touches, and the machine's own agents may move tasks
/// there while a test runs (seen: a sandbox moving a just-forked child out of its memory
/// cgroup), so they are not haul's to restore.
fn haul_lines(cgroup: &str) -> String {
    cgroup
        .lines()
        .filter(|l| {
            let controllers = l.split(':').nth(1).unwrap_or("");
            controllers.is_empty() || controllers.split(',').any(|c| c == "cpu" || c == "freezer")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Asserts that every task still there is in the cgroups it had in `before` (the
/// hierarchies haul moves tasks in), and that tasks born since sit where their tree root
/// sits.
fn assert_restored(root: i32, before: &BTreeMap<i32, String>) {
    let now = snapshot(root);
    let root_cg = before.get(&root).expect("root in snapshot");
    for (tid, cg) in &now {
        let want = before.get(tid).unwrap_or(root_cg);
        assert_eq!(
            haul_lines(cg),
            haul_lines(want),
            "task {tid} is not back where it was (all hierarchies now:\n{cg}before:\n{want})"
        );
    }
}

fn config(w: &Workload, name: &str, m: &Mechanism, journal: &Path) -> ThrottleConfig {
    ThrottleConfig {
        journal_dir: Some(journal.to_path_buf()),
        ..ThrottleConfig::new(
            w.pid(),
            format!("test-{}-{name}", std::process::id()),
            m.clone(),
        )
    }
}

fn level(p: u8) -> ThrottleLevel {
    ThrottleLevel::new(p).unwrap()
}

fn no_journals(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// Rate phases: unthrottled inside haul's cgroup, throttled at `lvl`, released.
fn rate_phases(m: &Mechanism, lvl: u8) -> (f64, f64, f64) {
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::toucher("4m", "400");
    let before = snapshot(w.pid());
    std::thread::sleep(Duration::from_secs(1));
    let t = Throttle::engage(config(&w, "rate", m, journal.path())).expect("engage");
    assert!(
        t.outside().is_empty(),
        "every task inside: {:?}",
        t.outside()
    );
    assert!(!no_journals(journal.path()), "journal written");
    let start = Timestamp::now();
    std::thread::sleep(Duration::from_millis(3200));
    let t1 = Timestamp::now();
    t.set_level(level(lvl)).unwrap();
    std::thread::sleep(Duration::from_millis(4200));
    let t2 = Timestamp::now();
    let report = t.report();
    let cg = t.cgroup().to_path_buf();
    let released = t.release().expect("release");
    assert!(released.cgroup_removed);
    assert_eq!(
        released.leave.moved_back, 1,
        "mtouch went back: {released:?}"
    );
    assert!(!cg.exists(), "{} removed", cg.display());
    assert!(no_journals(journal.path()), "journal removed");
    assert_restored(w.pid(), &before);
    let t3 = Timestamp::now();
    std::thread::sleep(Duration::from_millis(3200));
    let t4 = Timestamp::now();
    let samples = w.rate_log();
    let skip = |t: Timestamp| Timestamp {
        sec: t.sec + 1,
        nsec: t.nsec,
    };
    let base = rate_log::mean_rate(&samples, skip(start), t1).expect("baseline windows");
    let slowed = rate_log::mean_rate(&samples, skip(t1), t2).expect("throttled windows");
    let after = rate_log::mean_rate(&samples, skip(t3), t4).expect("released windows");
    eprintln!(
        "{m}: level {lvl}%: {:.2} MiB/s in haul's cgroup, {:.2} MiB/s throttled ({:.0}%), {:.2} MiB/s released; baseline {:?} CPUs, limit {:?}; release {:?}",
        base / 1048576.0,
        slowed / 1048576.0,
        100.0 * slowed / base,
        after / 1048576.0,
        report.baseline_cpus,
        report.limit,
        released
    );
    drop(t);
    w.stop_toucher();
    (base, slowed, after)
}

fn a_cpu_quota_slows_the_tree_and_the_release_restores_it() {
    let _s = serial();
    let m = need!(cpu_quota);
    let (base, slowed, after) = rate_phases(&m, 30);
    let ratio = slowed / base;
    assert!(
        (0.4..=0.88).contains(&ratio),
        "at 30 % the rate should fall to about 70 %: {ratio:.2}"
    );
    assert!(
        after / base >= 0.85,
        "the rate recovers: {:.2}",
        after / base
    );
}

fn a_freezer_duty_cycle_v1_slows_the_tree_and_the_release_thaws_it() {
    let _s = serial();
    let m = need!(|k| k == MechanismKind::Freezer);
    let (base, slowed, after) = rate_phases(&m, 50);
    // frozen half of each 100 ms; mtouch catches up 10 ms of backlog after each freeze
    assert!(slowed / base <= 0.8, "{:.2}", slowed / base);
    assert!(
        after / base >= 0.85,
        "the rate recovers: {:.2}",
        after / base
    );
}

fn a_freezer_duty_cycle_v2_slows_the_tree_and_the_release_thaws_it() {
    let _s = serial();
    let m = need!(|k| k == MechanismKind::Freeze);
    let (base, slowed, after) = rate_phases(&m, 50);
    assert!(slowed / base <= 0.8, "{:.2}", slowed / base);
    assert!(
        after / base >= 0.85,
        "the rate recovers: {:.2}",
        after / base
    );
}

fn engage_then_fail(w: &Workload, m: &Mechanism, journal: &Path) -> Result<(), ThrottleError> {
    let t = Throttle::engage(config(w, "err", m, journal))?;
    t.set_level(level(60))?;
    // something in the owning code fails: `?` drops the guard
    Err(ThrottleError::NoSuchPid(-1))
}

fn an_error_in_the_owning_code_releases_the_throttle() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let before = snapshot(w.pid());
    assert!(before.len() >= 3, "sh and two sleeps: {before:?}");
    assert!(engage_then_fail(&w, &m, journal.path()).is_err());
    assert_restored(w.pid(), &before);
    assert!(no_journals(journal.path()));
    let leftover = m
        .hierarchy
        .mount
        .join(format!("haul-test-{}-err", std::process::id()));
    assert!(!leftover.exists());
}

fn a_panic_in_the_owning_code_releases_the_throttle() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let before = snapshot(w.pid());
    let cg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Throttle::engage(config(&w, "panic", &m, journal.path())).unwrap();
        t.set_level(level(90)).unwrap();
        let cg = CgroupDir::at(t.cgroup(), m.hierarchy.version);
        assert!(cg.cpu_limit().unwrap().is_some());
        panic!("the owner panics while the tree is throttled");
    }));
    assert!(cg.is_err(), "it panicked");
    assert_restored(w.pid(), &before);
    assert!(no_journals(journal.path()));
    assert!(!m
        .hierarchy
        .mount
        .join(format!("haul-test-{}-panic", std::process::id()))
        .exists());
}

fn a_member_that_exits_meanwhile_does_not_stop_the_release() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let before = snapshot(w.pid());
    let t = Throttle::engage(config(&w, "exit", &m, journal.path())).unwrap();
    t.set_level(level(50)).unwrap();
    let victim = *tree::descendants(w.pid()).last().unwrap();
    assert_ne!(victim, w.pid());
    // SAFETY: kill(2) on a process of the tree this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    let end = Instant::now() + Duration::from_secs(5);
    while tree::alive(victim) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = t.release().expect("release");
    assert!(r.cgroup_removed);
    assert_eq!(r.leave.moved_back, 2, "sh and the sleep left: {r:?}");
    assert!(!tree::alive(victim));
    assert_restored(w.pid(), &before);
    // twice is harmless
    assert_eq!(t.release().unwrap(), r);
    assert!(matches!(
        t.set_level(level(10)),
        Err(ThrottleError::Released(_))
    ));
}

fn tasks_forked_while_throttled_go_back_too() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    // forks a short-lived child every 20 ms, and keeps a long one
    let w = Workload::shell("sleep 1000 & while :; do sleep 0.02; done");
    std::thread::sleep(Duration::from_millis(200));
    let before = snapshot(w.pid());
    let t = Throttle::engage(config(&w, "fork", &m, journal.path())).unwrap();
    t.set_level(level(20)).unwrap();
    let recorded: Vec<i32> = t.origins().iter().map(|(tid, _)| *tid).collect();
    // a child born inside haul's cgroup
    let end = Instant::now() + Duration::from_secs(5);
    let born = loop {
        let procs = CgroupDir::at(t.cgroup(), m.hierarchy.version)
            .procs()
            .unwrap();
        if let Some(p) = procs.iter().find(|p| !recorded.contains(p)) {
            break *p;
        }
        assert!(Instant::now() < end, "no child forked while throttled");
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("pid {born} was born in haul's cgroup");
    let r = t.release().expect("release while the tree keeps forking");
    eprintln!("release: {r:?}");
    assert!(r.cgroup_removed);
    assert_restored(w.pid(), &before);
    // and the children it forks from now on are outside haul's cgroup too
    std::thread::sleep(Duration::from_millis(100));
    assert_restored(w.pid(), &before);
}

/// cgroup v1: a thread of a multi-threaded process sits in a cgroup of its own; it must get
/// back to it, not to its process's.
fn threads_go_back_to_their_own_cgroups() {
    let _s = serial();
    let m = need!(|k| k == MechanismKind::CfsQuota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::start(
        bin("mt-threads"),
        &["--threads", "3", "--pause-us", "2000"],
        StartProtocol::StartFd,
    );
    std::thread::sleep(Duration::from_millis(300));
    let threads = threads_of(w.pid());
    assert!(threads.len() >= 4, "{threads:?}");
    let side = CgroupDir::create(
        &m.hierarchy.mount,
        &format!("haul-test-{}-side", std::process::id()),
        m.hierarchy.version,
    )
    .unwrap();
    struct Cleanup(CgroupDir, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let root = CgroupDir::at(&self.1, self.0.version);
            for t in self.0.threads().unwrap_or_default() {
                let _ = root.move_thread(t);
            }
            let _ = self.0.remove(Duration::from_secs(1));
        }
    }
    let _cleanup = Cleanup(side.clone(), m.hierarchy.mount.clone());
    let odd = threads[2];
    side.move_thread(odd).unwrap();
    let before = snapshot(w.pid());
    assert_ne!(
        before[&odd],
        before[&w.pid()],
        "the thread has a cgroup of its own"
    );
    let t = Throttle::engage(config(&w, "threads", &m, journal.path())).unwrap();
    assert!(t.outside().is_empty(), "all threads inside");
    t.set_level(level(40)).unwrap();
    let r = t.release().unwrap();
    assert!(r.leave.threads_fixed >= 1, "{r:?}");
    assert_eq!(r.leave.moved_back, 1, "{r:?}");
    assert_restored(w.pid(), &before);
}

/// The child half of `a_killed_haul_is_swept` (not a test: `main` runs it instead of the tests
/// when the parent's environment variables are set): engages and waits to be killed.
fn killed_haul_child(pid: String, dir: String, name: String) {
    let m = mechanism(cpu_quota).unwrap();
    let cfg = ThrottleConfig {
        journal_dir: Some(dir.into()),
        ..ThrottleConfig::new(pid.parse().unwrap(), name, m)
    };
    let t = Throttle::engage(cfg).unwrap();
    t.set_level(level(80)).unwrap();
    println!("ENGAGED {}", t.cgroup().display());
    std::thread::sleep(Duration::from_secs(120));
}

fn a_killed_haul_is_swept() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let before = snapshot(w.pid());
    let name = format!("test-{}-killed", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("HAUL_THROTTLE_CHILD_PID", w.pid().to_string())
        .env("HAUL_THROTTLE_CHILD_JOURNAL", journal.path())
        .env("HAUL_THROTTLE_CHILD_NAME", &name)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cg = m.hierarchy.mount.join(format!("haul-{name}"));
    let end = Instant::now() + Duration::from_secs(20);
    let quota = loop {
        let cgd = CgroupDir::at(&cg, m.hierarchy.version);
        if let Ok(Some(l)) = cgd.cpu_limit() {
            if !no_journals(journal.path()) {
                break l;
            }
        }
        assert!(Instant::now() < end, "the child never throttled");
        std::thread::sleep(Duration::from_millis(20));
    };
    // a sweep leaves a running owner alone
    assert!(sweep_stale(journal.path()).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("haul killed while the tree was held at {quota:?}");
    assert!(
        cg.exists(),
        "SIGKILL ran no Drop: the cgroup is still there"
    );
    let swept = sweep_stale(journal.path());
    assert_eq!(swept.len(), 1, "{swept:?}");
    let r = swept.into_iter().next().unwrap().result.expect("swept");
    eprintln!("sweep: {r:?}");
    assert_eq!(r.moved_back, 2, "sh and sleep: {r:?}");
    assert!(!cg.exists());
    assert!(no_journals(journal.path()));
    assert_restored(w.pid(), &before);
}

/// CRIU's parasite runs inside the tree: the limit is lifted while the tree is seized (not
/// before: a tree freed while CRIU starts up dirties memory unthrottled) and put back once it
/// runs again. Here the test itself seizes the root the way CRIU does (PTRACE_SEIZE +
/// PTRACE_INTERRUPT, then PTRACE_DETACH).
fn the_limit_is_lifted_while_the_tree_is_seized() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let t = Throttle::engage(config(&w, "seize", &m, journal.path())).unwrap();
    t.set_level(level(70)).unwrap();
    let cg = CgroupDir::at(t.cgroup(), m.hierarchy.version);
    let throttled = cg.cpu_limit().unwrap();
    assert!(throttled.is_some());
    let root = w.pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (during, after_detach) = rt.block_on(t.around_pre_dump(async {
        let cg2 = cg.clone();
        tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(30));
            let held_before_the_seize = cg2.cpu_limit().unwrap().is_some();
            // SAFETY: ptrace on a process of the tree this test started; the calls carry no
            // pointers (addr and data 0) except waitpid's status, which points to a local.
            unsafe {
                assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, root, 0, 0), 0);
                assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, root, 0, 0), 0);
                let mut st = 0;
                libc::waitpid(root, &mut st, libc::__WALL);
            }
            assert_ne!(tracer_pid(root), Some(0));
            std::thread::sleep(Duration::from_millis(30));
            let lifted_while_seized = cg2.cpu_limit().unwrap().is_none();
            // SAFETY: as above.
            unsafe {
                assert_eq!(libc::ptrace(libc::PTRACE_DETACH, root, 0, 0), 0);
            }
            std::thread::sleep(Duration::from_millis(50));
            let back = cg2.cpu_limit().unwrap();
            (held_before_the_seize && lifted_while_seized, back)
        })
        .await
        .unwrap()
    }));
    assert!(
        during,
        "held until the tree was seized, lifted while it was"
    );
    assert_eq!(after_detach, throttled, "put back once the tree runs again");
    assert_eq!(cg.cpu_limit().unwrap(), throttled);
    t.release().unwrap();
}

/// The cgroup a task came from is removed while it is throttled: it goes to the nearest
/// ancestor that exists, and the report says so.
fn a_vanished_original_cgroup_sends_tasks_to_its_parent() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::shell("sleep 1000 & wait");
    std::thread::sleep(Duration::from_millis(200));
    let side = CgroupDir::create(
        &m.hierarchy.mount,
        &format!("haul-test-{}-origin", std::process::id()),
        m.hierarchy.version,
    )
    .unwrap();
    struct Cleanup(CgroupDir);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.0.remove(Duration::from_secs(1));
        }
    }
    let _cleanup = Cleanup(side.clone());
    let root_cg = CgroupDir::at(&m.hierarchy.mount, m.hierarchy.version);
    for p in tree::descendants(w.pid()) {
        side.move_process(p).unwrap();
    }
    let t = Throttle::engage(config(&w, "gone", &m, journal.path())).unwrap();
    t.set_level(level(30)).unwrap();
    // the tree's cgroup disappears meanwhile (it is empty: the tree is in haul's)
    side.remove(Duration::from_secs(1)).unwrap();
    let r = t.release().unwrap();
    eprintln!("release: {r:?}");
    assert_eq!(r.leave.fell_back.len(), 2, "{r:?}");
    assert!(r.leave.fell_back[0].ends_with("-origin -> /"), "{r:?}");
    let in_root = root_cg.procs().unwrap();
    for p in tree::descendants(w.pid()) {
        assert!(in_root.contains(&p), "{p} went to the hierarchy's root");
    }
}

/// Seizes `root` as CRIU does for `hold`, then lets it go.
fn seize_for(root: i32, hold: Duration) {
    // SAFETY: ptrace on a process of the tree this test started; the calls carry no pointers
    // (addr and data 0) except waitpid's status, which points to a local.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, root, 0, 0), 0);
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, root, 0, 0), 0);
        let mut st = 0;
        libc::waitpid(root, &mut st, libc::__WALL);
    }
    std::thread::sleep(hold);
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, root, 0, 0), 0);
    }
}

/// A pre-dump's freeze is not the tree's appetite: the baseline leaves seized time out.
fn seized_time_is_left_out_of_the_baseline() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::toucher("4m", "400");
    std::thread::sleep(Duration::from_millis(500));
    let root = w.pid();
    // what the toucher uses when nobody stops it
    let a = haul::throttle::meter::CpuSample::take(root);
    std::thread::sleep(Duration::from_millis(1500));
    let free = haul::throttle::meter::CpuSample::take(root).cpus_since(&a);
    let t = Throttle::engage(config(&w, "baseline", &m, journal.path())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // a "pre-dump" that holds the tree for 1 s of a 1.5 s window
    rt.block_on(t.around_pre_dump(async {
        tokio::task::spawn_blocking(move || seize_for(root, Duration::from_millis(1000)))
            .await
            .unwrap()
    }));
    std::thread::sleep(Duration::from_millis(500));
    t.set_level(level(50)).unwrap();
    let base = t.report().baseline_cpus.unwrap();
    eprintln!("free-running {free:.3} CPUs; baseline with 1 s of 1.5 s seized {base:.3} CPUs");
    assert!(
        base > 0.7 * free,
        "the seized second is not counted as idle: {base:.3} vs {free:.3}"
    );
    t.release().unwrap();
}

/// The dirty rate against the level, for the record (`cargo test --release --test
/// throttle_cgroup -- --ignored --nocapture level_sweep`); asserts only that it falls. Opt-in
/// (`--ignored`), as `#[ignore]` was.
fn level_sweep() {
    let _s = serial();
    let m = need!(cpu_quota);
    let journal = tempfile::tempdir().unwrap();
    let w = Workload::toucher("4m", "400");
    std::thread::sleep(Duration::from_secs(1));
    let t = Throttle::engage(config(&w, "sweep", &m, journal.path())).unwrap();
    let mut marks = vec![(0u8, Timestamp::now())];
    std::thread::sleep(Duration::from_millis(3200));
    for l in [20u8, 40, 60, 80, 95] {
        t.set_level(level(l)).unwrap();
        marks.push((l, Timestamp::now()));
        std::thread::sleep(Duration::from_millis(3200));
    }
    marks.push((0, Timestamp::now()));
    let base_cpus = t.report().baseline_cpus;
    t.release().unwrap();
    let samples = w.rate_log();
    let skip = |t: Timestamp| Timestamp {
        sec: t.sec + 1,
        nsec: t.nsec,
    };
    let mut rates = Vec::new();
    for win in marks.windows(2) {
        let r = rate_log::mean_rate(&samples, skip(win[0].1), win[1].1).unwrap();
        rates.push((win[0].0, r));
    }
    eprintln!("{m}; baseline {base_cpus:?} CPUs");
    eprintln!("| level | dirty rate MiB/s | share of unthrottled | expected |");
    eprintln!("|---|---|---|---|");
    let base = rates[0].1;
    for (l, r) in &rates {
        eprintln!(
            "| {l}% | {:.2} | {:.0}% | {}% |",
            r / 1048576.0,
            100.0 * r / base,
            100 - l
        );
    }
    assert!(
        rates.windows(2).all(|w| w[1].1 < w[0].1 * 1.05),
        "{rates:?}"
    );
}

fn main() -> std::process::ExitCode {
    use haul_test_support::{test, Need::*};
    if let (Ok(pid), Ok(dir), Ok(name)) = (
        std::env::var("HAUL_THROTTLE_CHILD_PID"),
        std::env::var("HAUL_THROTTLE_CHILD_JOURNAL"),
        std::env::var("HAUL_THROTTLE_CHILD_NAME"),
    ) {
        killed_haul_child(pid, dir, name);
        return std::process::ExitCode::SUCCESS;
    }
    haul_test_support::run(vec![
        test!(a_cpu_quota_slows_the_tree_and_the_release_restores_it, Root),
        test!(
            a_freezer_duty_cycle_v1_slows_the_tree_and_the_release_thaws_it,
            Root
        ),
        test!(
            a_freezer_duty_cycle_v2_slows_the_tree_and_the_release_thaws_it,
            Root
        ),
        test!(an_error_in_the_owning_code_releases_the_throttle, Root),
        test!(a_panic_in_the_owning_code_releases_the_throttle, Root),
        test!(
            a_member_that_exits_meanwhile_does_not_stop_the_release,
            Root
        ),
        test!(tasks_forked_while_throttled_go_back_too, Root),
        test!(threads_go_back_to_their_own_cgroups, Root),
        test!(a_killed_haul_is_swept, Root),
        test!(the_limit_is_lifted_while_the_tree_is_seized, Root),
        test!(a_vanished_original_cgroup_sends_tasks_to_its_parent, Root),
        test!(seized_time_is_left_out_of_the_baseline, Root),
        test!(level_sweep, Root).opt_in(),
    ])
}
