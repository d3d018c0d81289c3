//! Two real VMs: `vagrant/e2e.sh --with-haul` builds (or reuses) the Debian guest image, boots
//! both guests under QEMU with an NFS share, migrates mtouch from src to dst with every
//! strategy the guest kernel supports (it tracks dirty memory: pre-copy and hybrid run there),
//! checks each on dst, collects the reports, and tears everything down.
//!
//! Several minutes: it runs when `CI` or `HAUL_VM_TESTS` is set, and skips otherwise (with the
//! reason printed). Needs root and the host's CRIU >= 4.1 (scripts/setup.sh).

use std::path::Path;
use std::process::Command;

#[test]
fn every_strategy_migrates_between_two_vms() {
    if std::env::var_os("CI").is_none() && std::env::var_os("HAUL_VM_TESTS").is_none() {
        eprintln!(
            "skipped: the two-VM end-to-end run takes minutes; set HAUL_VM_TESTS=1 (CI sets CI)"
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: VMs and their network need root");
        return;
    }
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
