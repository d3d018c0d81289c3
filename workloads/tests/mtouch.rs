//! mtouch, both ways: an intact run verifies clean; pages corrupted through /proc/PID/mem are
//! reported as `Mismatch` lines and a failing verdict. Plus rates, patterns and start codes.

mod common;

use std::collections::HashSet;

use common::*;
use haul_launch::{launch, LaunchSpec, WorkloadExit};
use haul_workloads::files::MTOUCH_STOP;
use haul_workloads::mtouch_log::{analyze, MtouchVerdict};
use haul_workloads::procfs;
use haul_workloads::stop::StopFile;

const LOG: &str = "mem-touch.log";

fn start(dir: &std::path::Path, spec: &str, extra: &[&str]) -> Running {
    let mut args = vec![LOG, spec];
    args.extend_from_slice(extra);
    let r = Running::start("mtouch", &args, dir, None);
    wait_for("20 touches", PATIENCE, || ticks(&dir.join(LOG)) >= 20);
    r
}

fn stop_and_verdict(r: &mut Running) -> (MtouchVerdict, WorkloadExit) {
    StopFile::new(r.dir.join(MTOUCH_STOP)).request().unwrap();
    let exit = r.wait_exit();
    (analyze(r.dir.join(LOG)).unwrap(), exit)
}

fn intact_run_verifies_clean() {
    if !root_or_skip("intact_run_verifies_clean") {
        return;
    }
    let dir = workdir();
    let mut r = start(dir.path(), "16m:16m:1000", &[]);
    assert_eq!(
        procfs::ns_pid(r.pid()),
        Some(1),
        "mtouch is pid 1 of its namespace"
    );
    let (v, exit) = stop_and_verdict(&mut r);
    let log = show(&dir.path().join(LOG));
    assert!(v.finished, "{v}\n{log}");
    assert_eq!(v.mismatches, 0, "{v}\n{log}");
    assert_eq!(v.reported_mismatches, Some(0), "{log}");
    assert!(v.passed());
    assert_eq!(exit, WorkloadExit::Code(0));
    assert_eq!(v.pages, Some(4096));
    assert_eq!(v.pid, Some(1));
    assert!(v.mapping.is_some(), "{log}");
    assert!(v.touches >= 20 && v.touches == v.touch_lines, "{v}");
    assert!(v.largest_gap > std::time::Duration::ZERO);
}

fn corrupted_pages_are_reported() {
    if !root_or_skip("corrupted_pages_are_reported") {
        return;
    }
    let dir = workdir();
    let mut r = start(dir.path(), "16m:16m:1000", &[]);
    let log_path = dir.path().join(LOG);
    let base = analyze(&log_path).unwrap().mapping.expect("Created line");
    assert!(
        procfs::mappings(r.pid())
            .unwrap()
            .iter()
            .any(|m| m.start == base),
        "the logged address starts a mapping of the process"
    );
    // Stopped, so that at most one more touch (1 in 4096 to hit one of ours) happens
    // between the damage and the check.
    signal(r.pid(), libc::SIGSTOP);
    wait_state(r.pid(), 'T');
    let victims = [5u64, 1000, 2047, 4000];
    for pfn in victims {
        let addr = base + pfn * 4096;
        let old = procfs::read_mem(r.pid(), addr, 1).unwrap()[0];
        assert_ne!(old, 0, "every page was pre-touched with a non-zero byte");
        procfs::write_mem(r.pid(), addr, &[old ^ 0xff]).unwrap();
    }
    StopFile::new(dir.path().join(MTOUCH_STOP))
        .request()
        .unwrap();
    signal(r.pid(), libc::SIGCONT);
    let exit = r.wait_exit();
    let v = analyze(&log_path).unwrap();
    let log = show(&log_path);
    assert!(v.finished, "{log}");
    assert!(v.mismatches >= victims.len() - 1, "{log}");
    let victims: HashSet<u64> = victims.into_iter().collect();
    assert!(
        v.mismatch_lines.iter().all(|m| victims.contains(&m.pfn)),
        "{log}"
    );
    assert!(!v.passed());
    assert_eq!(exit, WorkloadExit::Code(1));
}

fn fill_mode_finds_a_byte_inside_a_page() {
    if !root_or_skip("fill_mode_finds_a_byte_inside_a_page") {
        return;
    }
    let dir = workdir();
    let mut r = start(dir.path(), "4m:4m:2000", &["--fill"]);
    let base = analyze(dir.path().join(LOG)).unwrap().mapping.unwrap();
    signal(r.pid(), libc::SIGSTOP);
    wait_state(r.pid(), 'T');
    let addr = base + 300 * 4096 + 1234;
    let old = procfs::read_mem(r.pid(), addr, 1).unwrap()[0];
    procfs::write_mem(r.pid(), addr, &[old ^ 0x55]).unwrap();
    StopFile::new(dir.path().join(MTOUCH_STOP))
        .request()
        .unwrap();
    signal(r.pid(), libc::SIGCONT);
    r.wait_exit();
    let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
    // Either the whole page was rewritten by the one possible extra touch, or byte 1234 shows.
    let v = analyze(dir.path().join(LOG)).unwrap();
    if v.last_pfn != Some(300) {
        assert!(
            log.contains("\tMismatch 300 ") && log.contains("(byte 1234 differs)"),
            "{log}"
        );
        assert!(!v.passed());
    }
}

fn rate_and_patterns() {
    if !root_or_skip("rate_and_patterns") {
        return;
    }
    // A hot set of 10% at 4 MiB/s: touches only the first 10% of the pages, batched lines.
    let dir = workdir();
    let mut r = start(
        dir.path(),
        "16m:0:0",
        &["--rate", "4m", "--pattern", "hot:10"],
    );
    wait_for("touches", PATIENCE, || ticks(&dir.path().join(LOG)) >= 200);
    let (v, exit) = stop_and_verdict(&mut r);
    assert!(v.passed(), "{}", show(&dir.path().join(LOG)));
    assert_eq!(exit, WorkloadExit::Code(0));
    let text = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
    assert!(
        text.contains("Pattern hot:10\nTouch 1024 pages per sec, 4194304 bytes/s\n"),
        "{text}"
    );
    let pfns: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("t "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        pfns.iter().all(|p| *p < 409),
        "hot set is the first 409 pages"
    );

    // Sequential, one per 500 us: consecutive pages.
    let dir = workdir();
    let mut r = start(dir.path(), "1m:0:500", &["--pattern", "sequential"]);
    let (v, _) = stop_and_verdict(&mut r);
    assert!(v.passed());
    let text = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
    let pfns: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("t "))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        pfns.windows(2).all(|w| w[1] == (w[0] + 1) % 256),
        "{pfns:?}"
    );

    // As fast as possible: many touches per line, still verified.
    let dir = workdir();
    let mut r = start(dir.path(), "64m:64m:0", &["--rate", "max"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (v, exit) = stop_and_verdict(&mut r);
    assert!(v.passed(), "{v}");
    assert_eq!(exit, WorkloadExit::Code(0));
    assert!(v.touches > 10 * v.touch_lines, "batched: {v}");
}

fn start_codes_reach_the_launcher() {
    if !root_or_skip("start_codes_reach_the_launcher") {
        return;
    }
    let dir = workdir();
    // L: the log cannot be opened.
    let spec = LaunchSpec::new(bin("mtouch"))
        .args(["no-such-dir/mem-touch.log", "1m:0:1000"])
        .cwd(dir.path());
    let mut l = launch(&spec).unwrap();
    assert_eq!(l.code, 'L');
    assert_eq!(
        l.report_line(),
        format!("Child {} done, code L", l.host_pid)
    );
    assert_eq!(
        l.wait_timeout(PATIENCE).unwrap(),
        Some(WorkloadExit::Code(1))
    );
    // M: the memory cannot be mapped (1 TiB with heuristic overcommit on a 24 GiB machine).
    let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    if overcommit.trim() != "1" {
        let spec = LaunchSpec::new(bin("mtouch"))
            .args([LOG, "1024g:0:1000"])
            .cwd(dir.path());
        let mut l = launch(&spec).unwrap();
        assert_eq!(l.code, 'M', "{}", show(&dir.path().join(LOG)));
        assert_eq!(
            l.wait_timeout(PATIENCE).unwrap(),
            Some(WorkloadExit::Code(1))
        );
        let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        assert!(log.contains("mmap failed"), "{log}");
    } else {
        eprintln!("vm.overcommit_memory=1: a 1 TiB mapping succeeds, code M not tested");
    }
}

fn runs_by_hand_like_the_original() {
    if !root_or_skip("runs_by_hand_like_the_original") {
        return;
    }
    // `mtouch LOG SPEC` from a shell: launches itself and prints P.Haul's line.
    let dir = workdir();
    let out = std::process::Command::new(bin("mtouch"))
        .args([LOG, "4m:1m:1000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = stdout
        .trim()
        .strip_prefix("Child ")
        .and_then(|s| s.strip_suffix(" done, code O"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    let guard = KillOnDrop(pid);
    assert_eq!(procfs::ns_pid(pid), Some(1));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        dir.path().canonicalize().unwrap()
    );
    wait_for("touches", PATIENCE, || ticks(&dir.path().join(LOG)) >= 10);
    StopFile::new(dir.path().join(MTOUCH_STOP))
        .request()
        .unwrap();
    wait_for("Finish", PATIENCE, || {
        analyze(dir.path().join(LOG)).unwrap().finished
    });
    let v = analyze(dir.path().join(LOG)).unwrap();
    assert!(v.passed(), "{v}");
    drop(guard);
}

/// SIGKILL a workload that is not our child (its reaper was the launcher's child).
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if procfs::is_alive(self.0) {
            // SAFETY: kill(2) of the workload this test started.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

fn runs_in_place_under_another_launcher() {
    if !root_or_skip("runs_in_place_under_another_launcher") {
        return;
    }
    // As pid 1 without HAUL_START_FD (what `unshare -pf setsid mtouch ...` gives), mtouch must
    // not launch itself again: it is the workload.
    let dir = workdir();
    let spec = LaunchSpec::new(bin("mtouch"))
        .args([LOG, "1m:1m:1000"])
        .cwd(dir.path())
        .protocol(haul_launch::StartProtocol::Exec);
    let mut r = Running {
        launched: launch(&spec).unwrap(),
        dir: dir.path().to_path_buf(),
    };
    wait_for("touches", PATIENCE, || ticks(&dir.path().join(LOG)) >= 10);
    assert_eq!(analyze(dir.path().join(LOG)).unwrap().pid, Some(1));
    assert!(procfs::is_alive(r.pid()));
    let (v, exit) = stop_and_verdict(&mut r);
    assert!(v.passed(), "{v}");
    assert_eq!(exit, WorkloadExit::Code(0));
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![
        test!(intact_run_verifies_clean, Root),
        test!(corrupted_pages_are_reported, Root),
        test!(fill_mode_finds_a_byte_inside_a_page, Root),
        test!(rate_and_patterns, Root),
        test!(start_codes_reach_the_launcher, Root),
        test!(runs_by_hand_like_the_original, Root),
        test!(runs_in_place_under_another_launcher, Root),
    ])
}
