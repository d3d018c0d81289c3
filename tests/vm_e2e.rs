//! Two real VMs: `vagrant/e2e.sh --with-haul` builds (or reuses) the Debian guest image, boots
//! both guests under QEMU with an NFS share, migrates mtouch from src to dst with every
//! strategy the guest kernel supports (it tracks dirty memory: pre-copy and hybrid run there),
//! checks each on dst, collects the reports, and tears everything down.
//!
//! Then migration without shared storage: file-churn on each guest's own disk moves with
//! `haul pid --sync` (harness/scenarios/sync-vagrant.toml, one repetition, through
//! `haul-harness`'s vagrant provider on VMs from `vagrant/vm.sh`), and checks every block it
//! wrote on dst.
//!
//! Several minutes: it runs when `CI` or `HAUL_VM_TESTS` is set, and skips otherwise (with the
//! reason printed). Needs root and the host's CRIU >= 4.1 (scripts/setup.sh). The two tests
//! take turns (each brings up its own pair of guests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One pair of guests at a time: two cores cannot run four TCG guests within the limits.
static ONE_PAIR: Mutex<()> = Mutex::new(());

fn vm_tests_wanted() -> bool {
    if std::env::var_os("CI").is_none() && std::env::var_os("HAUL_VM_TESTS").is_none() {
        eprintln!(
            "skipped: the two-VM end-to-end run takes minutes; set HAUL_VM_TESTS=1 (CI sets CI)"
        );
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: VMs and their network need root");
        return false;
    }
    true
}

#[test]
fn every_strategy_migrates_between_two_vms() {
    if !vm_tests_wanted() {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target").join("vm-e2e");
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new("bash")
        .arg(root.join("vagrant/e2e.sh"))
        .args(["--with-haul", "--limit", "1200", "--out"])
        .arg(&out)
        .current_dir(root)
        .status()
        .expect("run vagrant/e2e.sh");
    let summary = std::fs::read_to_string(out.join("summary")).unwrap_or_default();
    eprintln!("{summary}");
    assert!(
        status.success(),
        "vagrant/e2e.sh failed ({status}); logs in {}",
        out.display()
    );
    let last = summary
        .lines()
        .rev()
        .find(|l| l.starts_with("e2e:"))
        .unwrap_or("");
    assert!(
        last.ends_with(" 0 failed") && !last.contains(" 0 passed"),
        "{last}"
    );
    // one line per migration: "<name>\tok|FAIL\t<figures>"
    let results = std::fs::read_to_string(out.join("results.tsv")).unwrap_or_default();
    eprintln!("{results}");
    for strategy in ["stop-copy", "pre-copy", "post-copy", "hybrid"] {
        let name = format!("haul-{strategy}\t");
        let line = results.lines().find(|l| l.starts_with(&name));
        assert!(
            line.is_some_and(|l| l.split('\t').nth(1) == Some("ok")),
            "haul {strategy} did not pass between the VMs:\n{results}"
        );
    }
}

/// `vagrant/vm.sh` with this test's own state directory.
fn vm_sh(root: &Path, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(root.join("vagrant/vm.sh"))
        .args(args)
        .env("HAUL_VM_STATE", state)
        .current_dir(root);
    c
}

/// Takes the guests down whatever happens.
struct Down<'a>(&'a Path, PathBuf);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = vm_sh(self.0, &self.1, &["down"]).status();
    }
}

#[test]
fn file_churn_moves_with_sync_between_two_vms() {
    if !vm_tests_wanted() {
        return;
    }
    let _one = ONE_PAIR.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let state = root.join("target").join("vm-sync-state");
    let out = root.join("target").join("vm-sync");
    let _ = std::fs::remove_dir_all(&out);
    let _down = Down(root, state.clone());
    let up = vm_sh(root, &state, &["up"]).status().expect("vm.sh up");
    assert!(up.success(), "vagrant/vm.sh up failed ({up})");
    let prov = vm_sh(root, &state, &["provision"])
        .status()
        .expect("vm.sh provision");
    assert!(prov.success(), "vagrant/vm.sh provision failed ({prov})");
    // both clocks from the host's: file-churn's log is written on src, then on dst
    for n in ["src", "dst"] {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let _ = vm_sh(
            root,
            &state,
            &["ssh", n, &format!("date -s @{now:.3} >/dev/null")],
        )
        .status();
    }
    let harness = Path::new(env!("CARGO_BIN_EXE_haul"))
        .parent()
        .unwrap()
        .join("haul-harness");
    let status = Command::new(&harness)
        .args([
            "run",
            "harness/scenarios/sync-vagrant.toml",
            "--repetitions",
            "1",
        ])
        .args(["--no-build", "--no-progress", "--results"])
        .arg(out.join("runs"))
        .arg("--report-dir")
        .arg(out.join("report"))
        .env("HAUL_VM_STATE", &state)
        .current_dir(root)
        .status()
        .expect("run haul-harness");
    assert!(status.success(), "haul-harness failed ({status})");
    let runs: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let text = std::fs::read_to_string(&runs[0]).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let what = format!("{} {}", r["strategy"], r["workload"]["label"]);
        assert_eq!(r["outcome"], "ok", "{what}: {}", r["error"]);
        assert_eq!(r["check"]["passed"], true, "{what}: {}", r["check"]);
        let rounds = r["figures"]["sync_rounds"].as_array().unwrap();
        assert!(rounds.len() >= 2, "{what}: {rounds:?}");
        assert!(rounds.last().unwrap()["final_round"].as_bool().unwrap());
        eprintln!(
            "{what}: downtime {} s, final sync {} s, observed {} s, rounds {}",
            r["figures"]["downtime_secs"],
            r["figures"]["sync_final_secs"],
            r["figures"]["observed_downtime_secs"],
            rounds.len()
        );
        n += 1;
    }
    assert!(n >= 2, "{n} migrations recorded");
    eprintln!("report: {}", out.join("report/report.md").display());
}
