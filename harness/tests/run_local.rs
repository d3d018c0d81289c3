//! End to end: a tiny scenario (16 MiB, post-copy, one repetition, plus the plain-CRIU
//! baseline) run by the `haul-harness` binary on the local provider, then its results file
//! and report checked; and the same through the ssh provider, with an `ssh` stand-in that
//! runs the "remote" command in a local network namespace (the whole ssh code path but the
//! network login).
//!
//! Reported as ignored, with the reason, when not root, when CRIU does not pass `criu check`,
//! or when haul's binaries are not built (`cargo build --release -p haul -p haul-launch -p haul-workloads`,
//! which `cargo test --workspace --release` does).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use haul_harness::provider::{ProviderConfig, SshConfig, SshHost};
use haul_harness::record::{self, Outcome, Tool};
use haul_harness::runner::{self, RunOptions};
use haul_harness::scenario::Scenario;
use haul_test_support::{test, Need};

/// The directory with haul, mtouch and haul-launch: this test's profile dir, else release.
fn bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?.to_path_buf();
    let release = profile.parent()?.join("release");
    [profile, release].into_iter().find(|d| {
        haul_harness::HAUL_PROGRAMS
            .iter()
            .all(|b| d.join(b).is_file())
    })
}

fn criu() -> String {
    haul_harness::provider::local::find_criu()
}

/// What these tests need: haul's binaries built.
fn binaries() -> Option<String> {
    bin_dir().is_none().then(|| {
        "needs haul's binaries: cargo build --release -p haul -p haul-launch -p haul-workloads"
            .to_string()
    })
}

const SMOKE: &str = r#"
name = "itest"
repetitions = 1
strategies = ["post-copy"]
twins = true
link_probe_bytes = 16777216
settle_secs = 0.5
after_secs = 0.5
timeout_secs = 30

[[workloads]]
name = "tiny"
sizes = ["16m"]
pre = "all"
pauses = [1000]
"#;

fn check_records(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let records = record::read(path).unwrap();
    let criu = records.iter().find(|r| r.tool == Tool::Criu).unwrap();
    let haul = records.iter().find(|r| r.tool == Tool::Haul).unwrap();
    for r in [criu, haul] {
        assert_eq!(r.outcome, Outcome::Ok, "{:?}", r.error);
        assert!(r.check.passed && r.check.finished && r.check.mismatches == 0);
        assert!(r.check.destination_pid.is_some() && !r.check.left_on_source);
        assert!(r.figures.total_secs.unwrap() > 0.0);
        assert!(r.figures.observed_downtime_secs.unwrap() > 0.0);
        assert!(
            r.tool == Tool::Criu || r.figures.pages_sent.unwrap() >= 4096,
            "{:?}",
            r.figures
        );
        assert_eq!(r.workload.case.size_bytes, 16 << 20);
        assert!(!r.env.source.kernel.is_empty() && !r.env.source.criu_version.is_empty());
    }
    assert_eq!(haul.method, "haul post-copy");
    assert_eq!(criu.method, "criu post-copy");
    assert_eq!(haul.twin.as_deref(), Some("criu post-copy"));
    assert_eq!(haul.figures.strategy_used.as_deref(), Some("post-copy"));
    assert!(haul.haul_report.as_ref().unwrap()["total_secs"].is_f64());
    assert!(haul.ratio_to_twin.contains_key("observed_downtime_secs"));
    let detail = criu.criu.as_ref().unwrap();
    assert!(detail.dump.is_some() && detail.lazy_done_secs.is_some());
    assert!(criu.figures.restore_secs.is_some());
    for r in [criu, haul] {
        assert!(r.figures.floor_secs.unwrap() > 0.0, "{:?}", r.figures);
        assert!(r.figures.wire_bytes.unwrap() >= 16 << 20, "{:?}", r.figures);
    }
    assert!(haul.env.link_bytes_per_sec.unwrap() > 0.0);
}

fn check_report(dir: &Path) {
    for f in [
        "report.md",
        "downtime-vs-size.png",
        "downtime-vs-size.svg",
        "total-vs-rate.png",
        "total-vs-rate.svg",
        "precopy-rounds.png",
        "precopy-rounds.svg",
        "haul-vs-criu.png",
        "haul-vs-criu.svg",
    ] {
        let len = std::fs::metadata(dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .len();
        assert!(len > 0, "{f} is empty");
    }
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("![Downtime vs memory size per strategy](downtime-vs-size.png)"));
    assert!(md.contains("| 16m:16m:1000 | haul post-copy | "), "{md}");
    assert!(md.contains("| 16m:16m:1000 | criu post-copy | "), "{md}");
    let png = std::fs::read(dir.join("haul-vs-criu.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

fn tiny_scenario_on_the_local_provider() {
    let bins = bin_dir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let scenario = tmp.path().join("itest.toml");
    std::fs::write(
        &scenario,
        format!(
            "{SMOKE}\n[provider]\nkind = \"local\"\nbin_dir = \"{}\"\ncriu = \"{}\"\n",
            bins.display(),
            criu()
        ),
    )
    .unwrap();
    // haul itself sometimes hangs (a migration then fails after timeout_secs and is recorded
    // as failed): that is haul's to fix, not the harness's, so try up to three times
    let mut files = Vec::new();
    let report = tmp.path().join("report");
    for attempt in 1..=3 {
        let runs = tmp.path().join(format!("runs-{attempt}"));
        let _ = std::fs::remove_dir_all(&report);
        let out = Command::new(env!("CARGO_BIN_EXE_haul-harness"))
            .arg("run")
            .arg(&scenario)
            .args(["--no-build", "--no-progress", "--port", "27611"])
            .arg("--results")
            .arg(&runs)
            .arg("--report-dir")
            .arg(&report)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // exit 2: the run completed, some migration failed
        assert!(matches!(out.status.code(), Some(0 | 2)), "{stderr}");
        files = std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].extension().unwrap() == "jsonl");
        check_report(&report);
        if out.status.success() {
            break;
        }
        eprintln!("attempt {attempt}: a migration failed:\n{stderr}");
    }
    check_records(&files[0]);
    // the nodes' directories are gone
    let set = files[0].file_stem().unwrap().to_string_lossy().into_owned();
    assert!(!Path::new("/var/tmp/haul-harness").join(&set).exists());
    // a report can be redrawn from the results alone, and a set compares with itself
    let again = tmp.path().join("again");
    let st = Command::new(env!("CARGO_BIN_EXE_haul-harness"))
        .arg("report")
        .arg(&files[0])
        .arg("--out")
        .arg(&again)
        .status()
        .unwrap();
    assert!(st.success());
    check_report(&again);
    let out = Command::new(env!("CARGO_BIN_EXE_haul-harness"))
        .arg("compare")
        .arg(&files[0])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("No figure changed"));
}

fn tiny_scenario_through_the_ssh_provider() {
    let bins = bin_dir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // `ssh [options] HOST -- COMMAND` runs COMMAND with sh in the network namespace HOST
    let fake = tmp.path().join("fake-ssh");
    std::fs::write(
        &fake,
        "#!/bin/sh\nhost=$1; shift\n[ \"$1\" = -- ] && shift\nexec nsenter --net=/run/netns/$host sh -c \"$*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pair = haul_test_support::NodePair::new("ssht").unwrap();
    let shared = tmp.path().join("nfs");
    std::fs::create_dir_all(&shared).unwrap();
    let ssh = SshConfig {
        source: SshHost {
            host: pair.a.netns.clone(),
            addr: pair.a.addr.clone(),
        },
        destination: SshHost {
            host: pair.b.netns.clone(),
            addr: pair.b.addr.clone(),
        },
        shared_dir: shared.display().to_string(),
        work_root: format!("/var/tmp/haul-harness-ssh-test-{}", std::process::id()),
        bin_dir: bins.display().to_string(),
        criu: criu(),
        ssh: vec![fake.display().to_string()],
        multiplex: false,
    };
    let scenario = Scenario::parse(SMOKE, "itest").unwrap();
    let opts = RunOptions {
        results_dir: tmp.path().join("runs"),
        provider: Some(ProviderConfig::Ssh(ssh.clone())),
        port: 27612,
        ..Default::default()
    };
    let mut summary = runner::run(&scenario, &opts).unwrap();
    for attempt in 2..=3 {
        if summary.records.iter().all(|r| r.outcome == Outcome::Ok) {
            break;
        }
        eprintln!(
            "attempt {}: a migration failed: {:?}",
            attempt - 1,
            summary.records.iter().map(|r| &r.error).collect::<Vec<_>>()
        );
        summary = runner::run(&scenario, &opts).unwrap();
    }
    check_records(&summary.path);
    assert!(summary.records.iter().all(|r| r.env.provider == "ssh"));
    // everything the provider made on the "hosts" is gone
    assert!(!Path::new(&ssh.work_root)
        .join(&summary.records[0].set)
        .exists());
    assert_eq!(
        std::fs::read_dir(shared.join("haul-harness"))
            .unwrap()
            .count(),
        0
    );
    let _ = std::fs::remove_dir_all(&ssh.work_root);
}

fn main() -> std::process::ExitCode {
    let needs = [Need::Root, Need::Criu, Need::Check(binaries)];
    haul_test_support::run(vec![
        test!(
            tiny_scenario_on_the_local_provider,
            needs[0],
            needs[1],
            needs[2]
        ),
        test!(
            tiny_scenario_through_the_ssh_provider,
            needs[0],
            needs[1],
            needs[2]
        ),
    ])
}
