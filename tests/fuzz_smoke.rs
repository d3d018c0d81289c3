//! A short run of every cargo fuzz target over its committed corpus: a crash, a leak, a
//! timeout or an out-of-memory that libFuzzer reports (a non-zero exit) fails the test, with
//! the failing input's path printed.
//!
//! The targets are the `[[bin]]`s of fuzz/Cargo.toml, so a new target is picked up as it is
//! added. Each runs `HAUL_FUZZ_SECS` seconds (10 by default; 0 skips the test) as
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -O`, on a temporary copy of `fuzz/corpus/<target>`: the
//! committed corpus is never written (the test checks it), and new inputs and artifacts go to
//! a temporary directory, kept and printed only when a target fails. The fuzz build goes to
//! `target/fuzz` (gitignored), beside the workspace's own build.
//!
//! Skips, with the reason printed, where cargo-fuzz is not installed (scripts/setup.sh
//! installs it) or this toolchain cannot build and run an AddressSanitizer binary (not
//! x86_64/aarch64 Linux, no sanitizer runtime).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds each target runs when `HAUL_FUZZ_SECS` is not set.
const DEFAULT_SECS: u64 = 10;
/// libFuzzer's limit for one input (seconds): longer is reported as a timeout.
const INPUT_TIMEOUT_SECS: u64 = 30;
/// Time allowed beyond `-max_total_time` for one run (cargo's up-to-date check, start-up).
const RUN_SLACK: Duration = Duration::from_secs(300);
/// Time allowed for the fuzz crate's build (about 2 minutes from scratch on 2 cores).
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes to the real stderr, past the test harness's capture: skips and timings show in
/// CI's log even when the test passes.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "fuzz_smoke: {msg}");
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The names of the `[[bin]]` targets of a cargo-fuzz manifest, in order.
fn fuzz_targets(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
            continue;
        }
        if !in_bin {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "name" {
                out.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    out
}

/// The seconds each target runs, or `None` when `HAUL_FUZZ_SECS=0`.
fn seconds() -> Option<u64> {
    match std::env::var("HAUL_FUZZ_SECS") {
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => panic!("HAUL_FUZZ_SECS={v:?} is not a number of seconds"),
        },
        Err(_) => Some(DEFAULT_SECS),
    }
}

/// Why this machine cannot run the fuzz targets, if it cannot.
fn cannot_fuzz() -> Option<String> {
    if !cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        return Some(format!(
            "cargo fuzz with AddressSanitizer needs x86_64 or aarch64 Linux, not {} {}",
            std::env::consts::ARCH,
            std::env::consts::OS
        ));
    }
    let version = cargo()
        .args(["fuzz", "--version"])
        .stdin(Stdio::null())
        .output();
    match version {
        Ok(o) if o.status.success() => {}
        _ => {
            return Some(
                "cargo-fuzz is not installed (scripts/setup.sh installs it: \
                 cargo install --locked cargo-fuzz --version 0.13.2)"
                    .into(),
            )
        }
    }
    // The toolchain must build and run an AddressSanitizer binary (a stable toolchain does
    // with RUSTC_BOOTSTRAP=1 where the target has the sanitizer runtime).
    let dir = tempfile::tempdir().expect("temporary directory");
    let src = dir.path().join("probe.rs");
    std::fs::write(
        &src,
        "fn main() { let v = vec![1u8; 8]; assert_eq!(v.len(), 8); }\n",
    )
    .expect("write the probe");
    let exe = dir.path().join("probe");
    let built = Command::new("rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["-Zsanitizer=address", "--edition", "2021", "-o"])
        .arg(&exe)
        .arg(&src)
        .stdin(Stdio::null())
        .output();
    match built {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Some(format!(
                "this toolchain cannot build with AddressSanitizer: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
        Err(e) => return Some(format!("cannot run rustc: {e}")),
    }
    match Command::new(&exe).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "an AddressSanitizer binary does not run here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("an AddressSanitizer binary does not run here: {e}")),
    }
}

/// Runs `cmd` in its own process group with stdout and stderr into `log`; kills the whole
/// group past `limit`. Returns the exit status, or `None` on a timeout.
fn run_logged(
    mut cmd: Command,
    log: &Path,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if t0.elapsed() > limit {
            // the group: cargo fuzz, cargo run and the fuzz target itself
            let pgid = child.id() as libc::pid_t;
            // SAFETY: kill(2) with a negative pid signals the process group `child` leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every file of a corpus directory with its length (to check it was left alone).
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// One target's run: `Ok(summary)` or `Err(what failed, with the artifact's path)`.
fn fuzz_one(target: &str, secs: u64, target_dir: &Path) -> Result<String, String> {
    let committed = repo().join("fuzz/corpus").join(target);
    let work = tempfile::Builder::new()
        .prefix(&format!("haul-fuzz-{target}-"))
        .tempdir()
        .expect("temporary directory");
    let corpus = work.path().join("corpus");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir(&corpus).unwrap();
    std::fs::create_dir(&artifacts).unwrap();
    let seeds = listing(&committed);
    for (name, _) in &seeds {
        std::fs::copy(committed.join(name), corpus.join(name)).expect("copy the corpus");
    }
    let log = work.path().join("libfuzzer.log");
    let mut cmd = cargo();
    cmd.current_dir(repo())
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "-O", "--target-dir"])
        .arg(target_dir)
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg("-print_final_stats=1")
        // after cargo fuzz's own -artifact_prefix (fuzz/artifacts/): the last one counts
        .arg(format!("-artifact_prefix={}/", artifacts.display()));
    let t0 = Instant::now();
    let status = run_logged(cmd, &log, Duration::from_secs(secs) + RUN_SLACK)
        .map_err(|e| format!("{target}: cannot run cargo fuzz: {e}"))?;
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(
        listing(&committed),
        seeds,
        "{target}: the committed corpus {} changed",
        committed.display()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(st) if st.success() => {
            let runs = text
                .lines()
                .rev()
                .find(|l| l.starts_with("Done ") && l.contains(" runs in "))
                .unwrap_or("(no run count)")
                .to_string();
            Ok(format!(
                "{target}: {} seeds, {took:.1}s: {runs}",
                seeds.len()
            ))
        }
        st => {
            let why = match st {
                Some(st) => format!("libFuzzer exited with {st}"),
                None => format!(
                    "no end after {}s: killed",
                    (Duration::from_secs(secs) + RUN_SLACK).as_secs()
                ),
            };
            let kept = work.keep();
            let artifacts = kept.join("artifacts");
            let mut found: Vec<String> = listing(&artifacts)
                .into_iter()
                .map(|(n, _)| artifacts.join(n).display().to_string())
                .collect();
            if found.is_empty() {
                found = text
                    .lines()
                    .filter_map(|l| l.split_once("Test unit written to "))
                    .map(|(_, p)| p.trim().to_string())
                    .collect();
            }
            let artifact = if found.is_empty() {
                "no artifact written (a build or start-up failure?)".to_string()
            } else {
                format!("artifact: {}", found.join(", "))
            };
            Err(format!(
                "{target}: {why}; {artifact}\n  log: {}\n  reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O {target} <artifact>\n--- last lines of the log ---\n{}",
                kept.join("libfuzzer.log").display(),
                tail(&kept.join("libfuzzer.log"), 40)
            ))
        }
    }
}

fn every_fuzz_target_survives_a_short_run() {
    let manifest =
        std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).expect("read fuzz/Cargo.toml");
    let targets = fuzz_targets(&manifest);
    assert!(!targets.is_empty(), "fuzz/Cargo.toml declares no [[bin]]");
    let Some(secs) = seconds() else {
        haul_test_support::skip("HAUL_FUZZ_SECS=0");
    };
    if let Some(why) = cannot_fuzz() {
        haul_test_support::skip(format!("{why} (targets {})", targets.join(", ")));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("fuzz");

    // One build of every target first, so that a compile error is reported as one.
    let t0 = Instant::now();
    let build_log = tempfile::NamedTempFile::new().expect("temporary file");
    let mut build = cargo();
    build
        .current_dir(repo())
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "build", "-O", "--target-dir"])
        .arg(&target_dir);
    match run_logged(build, build_log.path(), BUILD_LIMIT).expect("run cargo fuzz build") {
        Some(st) if st.success() => {}
        st => panic!(
            "cargo fuzz build -O failed ({st:?}): the fuzz targets no longer build\n{}",
            tail(build_log.path(), 60)
        ),
    }
    note(&format!(
        "built {} in {:.1}s ({})",
        targets.join(", "),
        t0.elapsed().as_secs_f64(),
        target_dir.display()
    ));

    let mut failures = Vec::new();
    for t in &targets {
        match fuzz_one(t, secs, &target_dir) {
            Ok(summary) => note(&summary),
            Err(e) => failures.push(e),
        }
    }
    note(&format!("total {:.1}s", t0.elapsed().as_secs_f64()));
    assert!(
        failures.is_empty(),
        "{} of {} fuzz targets failed:\n{}",
        failures.len(),
        targets.len(),
        failures.join("\n\n")
    );
}

fn targets_are_read_from_the_manifest() {
    let manifest =
        std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).expect("read fuzz/Cargo.toml");
    let targets = fuzz_targets(&manifest);
    for t in ["frame_decode", "image_receiver"] {
        assert!(
            targets.iter().any(|n| n == t),
            "{t} missing from {targets:?}"
        );
    }
    let sample = "[package]\nname = \"haul-fuzz\"\n\n[[bin]]\nname = \"a\" # first\npath = \"x.rs\"\n\n[dependencies]\nname = \"not-a-bin\"\n\n[[bin]]\n name=\"b\"\n";
    assert_eq!(fuzz_targets(sample), ["a", "b"]);
}

fn main() -> std::process::ExitCode {
    use haul_test_support::test;
    haul_test_support::run(vec![
        test!(every_fuzz_target_survives_a_short_run),
        test!(targets_are_read_from_the_manifest),
    ])
}
