//! Each workload through a real CRIU dump and restore (on this host, the stand-in for a
//! migration): launched by `launch()`, it must be dumpable as it is (no extra CRIU options
//! beyond `--tcp-established`), keep running after the restore, and pass its self-check.
//! Skipped, with the reason, when CRIU is missing or `criu check` fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;
use haul_workloads::files::*;
use haul_workloads::stop::StopFile;
use haul_workloads::{mtouch_log, procfs, records, worklog};

/// One CRIU run at a time (2 cores; the network lock of --tcp-established is global state).
static CRIU: Mutex<()> = Mutex::new(());

fn criu_or_skip(test: &str) -> Option<PathBuf> {
    if !root_or_skip(test) {
        return None;
    }
    let criu = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/local/sbin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("criu"))
        .find(|p| p.is_file());
    let Some(criu) = criu else {
        haul_test_support::skip(format!("{test}: needs criu on PATH"));
    };
    let check = Command::new(&criu).arg("check").output();
    match check {
        Ok(out) if out.status.success() => Some(criu),
        Ok(out) => haul_test_support::skip(format!(
            "needs a CRIU that passes `criu check` here: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => {
            haul_test_support::skip(format!("needs criu: cannot run {}: {e}", criu.display()))
        }
    }
}

/// A restored workload: not our child; SIGKILLed on drop if still there.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        if procfs::is_alive(self.0) {
            // SAFETY: kill(2) of the workload this test restored.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
}

fn criu_cmd(criu: &Path, netns: Option<&LoopbackNetns>) -> Command {
    match netns {
        None => Command::new(criu),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.path().display()))
                .arg("--")
                .arg(criu);
            c
        }
    }
}

fn errors(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `criu dump` then `criu restore -d` of `pid`; the restored host pid.
fn dump_restore(
    criu: &Path,
    pid: i32,
    dir: &Path,
    netns: Option<&LoopbackNetns>,
    tcp: bool,
) -> Restored {
    let _one = CRIU.lock().unwrap_or_else(|e| e.into_inner());
    let img = dir.join(format!("img-{pid}"));
    std::fs::create_dir(&img).unwrap();
    let mut dump = criu_cmd(criu, netns);
    dump.args([
        "dump",
        "-t",
        &pid.to_string(),
        "-v4",
        "-o",
        "dump.log",
        "-D",
    ])
    .arg(&img);
    if tcp {
        dump.arg("--tcp-established");
    }
    let st = dump.status().unwrap();
    assert!(
        st.success(),
        "criu dump of {pid} failed:\n{}",
        errors(&img.join("dump.log"))
    );
    let pidfile = img.join("restored.pid");
    let mut restore = criu_cmd(criu, netns);
    restore
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&img)
        .arg("--pidfile")
        .arg(&pidfile);
    if tcp {
        restore.arg("--tcp-established");
    }
    let st = restore.status().unwrap();
    assert!(
        st.success(),
        "criu restore failed:\n{}",
        errors(&img.join("restore.log"))
    );
    let restored: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(procfs::is_alive(restored), "restored pid {restored} runs");
    assert_eq!(
        procfs::ns_pid(restored),
        Some(1),
        "still pid 1 of its pid namespace"
    );
    Restored(restored)
}

/// Wait until the log has `more` ticks beyond what it has now.
fn keeps_ticking(log: &Path, more: usize) {
    let now = ticks(log);
    wait_for(
        &format!("{more} more ticks in {}", log.display()),
        PATIENCE,
        || ticks(log) >= now + more,
    );
}

fn wait_finish(log: &Path) {
    wait_for(&format!("Finish in {}", log.display()), PATIENCE, || {
        worklog::analyze(log).map(|v| v.finished).unwrap_or(false)
    });
}

fn mtouch_through_criu() {
    let Some(criu) = criu_or_skip("mtouch_through_criu") else {
        return;
    };
    let dir = workdir();
    let log = dir.path().join(MTOUCH_LOG);
    let r = Running::start("mtouch", &[MTOUCH_LOG, "16m:16m:1000"], dir.path(), None);
    wait_for("touches", PATIENCE, || ticks(&log) >= 50);
    let _restored = dump_restore(&criu, r.pid(), dir.path(), None, false);
    keeps_ticking(&log, 50);
    StopFile::new(dir.path().join(MTOUCH_STOP))
        .request()
        .unwrap();
    wait_finish(&log);
    let v = mtouch_log::analyze(&log).unwrap();
    assert!(v.passed(), "{v}\n{}", show(&log));
    // The dump and restore froze it: the longest pause is longer than the 1 ms pace.
    assert!(v.largest_gap > std::time::Duration::from_millis(5), "{v}");
    eprintln!("mtouch through CRIU: {v}");
}

fn mt_threads_through_criu() {
    let Some(criu) = criu_or_skip("mt_threads_through_criu") else {
        return;
    };
    let dir = workdir();
    let log = dir.path().join(MT_THREADS_LOG);
    let r = Running::start("mt-threads", &["--threads", "3"], dir.path(), None);
    wait_for("heartbeats", PATIENCE, || ticks(&log) >= 20);
    let restored = dump_restore(&criu, r.pid(), dir.path(), None, false);
    assert_eq!(procfs::threads(restored.0).unwrap().len(), 4);
    keeps_ticking(&log, 20);
    StopFile::new(dir.path().join(MT_THREADS_STOP))
        .request()
        .unwrap();
    wait_finish(&log);
    let v = worklog::analyze(&log).unwrap();
    assert!(v.passed(), "{v}\n{}", show(&log));
}

fn ptree_through_criu() {
    let Some(criu) = criu_or_skip("ptree_through_criu") else {
        return;
    };
    let dir = workdir();
    let log = dir.path().join(PTREE_LOG);
    let r = Running::start("ptree", &[], dir.path(), None);
    wait_for("rounds", PATIENCE, || ticks(&log) >= 10);
    let restored = dump_restore(&criu, r.pid(), dir.path(), None, false);
    assert_eq!(
        procfs::children(restored.0).unwrap().len(),
        4,
        "3 children and the zombie"
    );
    keeps_ticking(&log, 10);
    StopFile::new(dir.path().join(PTREE_STOP))
        .request()
        .unwrap();
    wait_finish(&log);
    let v = worklog::analyze(&log).unwrap();
    assert!(v.passed(), "{v}\n{}", show(&log));
}

fn rec_writer_through_criu() {
    let Some(criu) = criu_or_skip("rec_writer_through_criu") else {
        return;
    };
    let dir = workdir();
    let log = dir.path().join(REC_WRITER_LOG);
    let r = Running::start("rec-writer", &["--interval-us", "2000"], dir.path(), None);
    wait_for("records", PATIENCE, || ticks(&log) >= 20);
    let _restored = dump_restore(&criu, r.pid(), dir.path(), None, false);
    keeps_ticking(&log, 20);
    StopFile::new(dir.path().join(REC_WRITER_STOP))
        .request()
        .unwrap();
    wait_finish(&log);
    let v = worklog::analyze(&log).unwrap();
    assert!(v.passed(), "{v}\n{}", show(&log));
    let n = v.summary_value("records").unwrap();
    records::verify_file(dir.path().join(REC_WRITER_DATA), Some(n)).unwrap();
}

fn tcp_connections_survive_criu() {
    let Some(criu) = criu_or_skip("tcp_connections_survive_criu") else {
        return;
    };
    let ns = netns();
    let dir = workdir();
    let server = Running::start("tcp-echo", &[], dir.path(), Some(&ns.name));
    let addr = worklog::find_line(dir.path().join(TCP_ECHO_LOG), "Listening on ")
        .unwrap()
        .unwrap();
    let mut client = Running::start("tcp-client", &[&addr], dir.path(), Some(&ns.name));
    let clog = dir.path().join(TCP_CLIENT_LOG);
    wait_for("replies", PATIENCE, || {
        worklog::analyze(&clog).unwrap().last_value.unwrap_or(0) >= 20
    });
    let _restored = dump_restore(&criu, server.pid(), dir.path(), Some(&ns), true);
    let ok_then = worklog::analyze(&clog).unwrap().last_value.unwrap_or(0);
    wait_for("replies after the restore", PATIENCE, || {
        worklog::analyze(&clog).unwrap().last_value.unwrap_or(0) >= ok_then + 20
    });
    StopFile::new(dir.path().join(TCP_CLIENT_STOP))
        .request()
        .unwrap();
    client.wait_exit();
    let v = worklog::analyze(&clog).unwrap();
    assert!(v.passed(), "{v}\n{}", show(&clog));
    assert_eq!(v.summary_value("reconnects"), Some(0));
    let slog = dir.path().join(TCP_ECHO_LOG);
    StopFile::new(dir.path().join(TCP_ECHO_STOP))
        .request()
        .unwrap();
    wait_finish(&slog);
    let s = worklog::analyze(&slog).unwrap();
    assert!(s.passed(), "{s}\n{}", show(&slog));
    eprintln!(
        "tcp through CRIU: client {}, longest wait for a reply {} ms",
        v.summary.as_deref().unwrap_or_default(),
        v.summary_value("max_reply_gap_ms").unwrap_or(0)
    );
}

fn main() -> std::process::ExitCode {
    #[allow(unused_imports)]
    use haul_test_support::{test, Need::*};
    haul_test_support::run(vec![
        test!(mtouch_through_criu, Root, Criu),
        test!(mt_threads_through_criu, Root, Criu),
        test!(ptree_through_criu, Root, Criu),
        test!(rec_writer_through_criu, Root, Criu),
        test!(tcp_connections_survive_criu, Root, Criu),
    ])
}
