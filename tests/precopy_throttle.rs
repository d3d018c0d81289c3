//! Pre-copy's rounds and their throttle, whole migrations against a scripted CRIU on both
//! sides (no soft-dirty needed): a real `haul serve` on 127.0.0.1 and `haul pid`'s migration
//! of a `sleep` child, whose pre-dump rounds report the pages a script gives them. The stop
//! rule sees real round times, so the scripts keep the dirty set far from or close to the
//! link's speed rather than at a boundary.
//!
//! Without a target nothing is throttled. With one, the throttle is real: the child goes into
//! haul's cgroup on this node (root and a cgroup CPU controller or freezer needed; without
//! them those tests are reported as ignored, with the reason) and must be back in exactly its own cgroups, with
//! haul's cgroup and journal gone, before the final dump, after a failed round and after a
//! cancel.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use haul::criu::options::PreDumpMode;
use haul::criu::scripted::{Script, ScriptedCriu};
use haul::criu::Criu;
use haul::migrate::converge::{Convergence, OnTimeout, ThrottleLevel, ThrottleSetting};
use haul::migrate::destination::{self, ServeConfig};
use haul::migrate::source::{self, SourceConfig, SourceError, SourceFailure, Whereabouts};
use haul::migrate::strategy::Strategy;
use haul::migrate::MigrationReport;
use haul::throttle::journal::DEFAULT_DIR;
use haul::wire::Key;

/// A process to migrate (the scripted CRIU never touches it), killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn cgroups(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).expect("its cgroups")
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why this node cannot throttle (no cgroup CPU controller or freezer), or `None` when it can.
/// Root is a need of its own.
fn throttle_missing() -> Option<String> {
    haul::throttle::mechanism()
        .err()
        .map(|e| format!("this node cannot throttle: {e}"))
}

/// One test at a time: the throttle tests move processes between this node's cgroups.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Run {
    outcome: Result<MigrationReport, SourceFailure>,
    source: ScriptedCriu,
    img: tempfile::TempDir,
}

/// Pre-copy of `pid` with both sides scripted to write `pages` per round.
async fn migrate(
    pid: i32,
    pages: &[u64],
    convergence: Convergence,
    throttle: ThrottleSetting,
    fails_at: Option<usize>,
) -> Run {
    migrate_in(
        pid,
        pages,
        convergence,
        throttle,
        fails_at,
        PreDumpMode::Splice,
    )
    .await
}

async fn migrate_in(
    pid: i32,
    pages: &[u64],
    convergence: Convergence,
    throttle: ThrottleSetting,
    fails_at: Option<usize>,
    mode: PreDumpMode,
) -> Run {
    let img = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let listener = destination::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Script {
        round_pages: pages.to_vec(),
        pre_dump_secs: 0.1,
        // 0.5 ms frozen a round, all of it besides memory (the script reports no memdump
        // time): the frozen part of the estimate, below the tests' 1 ms targets
        pre_dump_frozen_us: 500,
        ..Script::default()
    };
    let destination = ScriptedCriu::new(script.clone());
    let served = tokio::spawn(destination::serve_with(
        listener,
        ServeConfig {
            listen: addr,
            key: key.clone(),
            img_path: img.path().join("dst"),
            criu: Criu::at("/nonexistent/criu"),
            max_migrations: Some(1),
            sync: Default::default(),
        },
        Arc::new(destination.clone()),
    ));
    let source = ScriptedCriu::new(Script {
        pre_dump_fails_at: fails_at,
        ..script
    });
    let cfg = SourceConfig {
        pid,
        destination: addr.to_string(),
        key,
        img_path: img.path().join("src"),
        strategy: Strategy::PreCopy,
        tree: Default::default(),
        ghost_limit: None,
        // The tree shares the kernel with the destination (its pids are taken there); the
        // pre-flight tests are elsewhere.
        ignore_preflight: true,
        dry_run: false,
        convergence,
        throttle,
        pre_dump_mode: Some(mode),
        progress: false,
        // The scripted CRIU does not do lazy dumps: CRIU's own memory path.
        memory: haul::memory::MemoryPath {
            engine: false,
            ..Default::default()
        },
        sync: Default::default(),
    };
    let outcome = source::migrate_with(cfg, Arc::new(source.clone())).await;
    if outcome.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
    } else {
        let t = std::time::Instant::now();
        while destination.open_operations() > 0 && t.elapsed().as_secs() < 30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        served.abort();
    }
    Run {
        outcome,
        source,
        img,
    }
}

fn target(ms: u64, on_timeout: OnTimeout) -> Convergence {
    Convergence {
        max_downtime_secs: Some(ms as f64 / 1000.0),
        on_timeout,
        ..Default::default()
    }
}

/// haul's cgroups and journals on this node that name `id`.
fn leftovers(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(layout) = haul::throttle::Layout::discover() {
        for h in layout.hierarchies {
            let cg = h.mount.join(format!("haul-{id}"));
            if cg.exists() {
                found.push(cg.display().to_string());
            }
        }
    }
    let journal = Path::new(DEFAULT_DIR).join(format!("haul-{id}.json"));
    if journal.exists() {
        found.push(journal.display().to_string());
    }
    found
}

/// The migration id a failed run left in its source image directory.
fn failed_id(run: &Run) -> String {
    let dir = std::fs::read_dir(run.img.path().join("src"))
        .expect("the source's image directory")
        .flatten()
        .next()
        .expect("one migration directory");
    dir.file_name().to_string_lossy().into_owned()
}

fn kept_report(run: &Run, id: &str) -> MigrationReport {
    let path = run.img.path().join("src").join(id).join("report.json");
    serde_json::from_slice(&std::fs::read(&path).expect("report.json kept")).expect("a report")
}

async fn without_a_target_the_rounds_follow_phaul_and_nothing_is_throttled() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let before = child.cgroups();
    // round 3 shrank by less than 10 %: the plateau rule stops the rounds
    let run = migrate(
        child.pid(),
        &[16384, 8000, 7900],
        Convergence::default(),
        ThrottleSetting::Auto,
        None,
    )
    .await;
    let report = run.outcome.as_ref().expect("migrated");
    assert_eq!(report.rounds.len(), 3, "{:?}", report.rounds);
    assert!(
        report.convergence.contains("stopped shrinking"),
        "{}",
        report.convergence
    );
    assert_eq!(report.fallback, None);
    assert!(report.throttle.is_none());
    assert!(
        report.throttle_note.contains("no --max-downtime"),
        "{}",
        report.throttle_note
    );
    assert_eq!(report.throttle_setting, "auto");
    assert_eq!(report.pre_dump_mode, Some(PreDumpMode::Splice));
    for (i, r) in report.rounds.iter().enumerate() {
        assert_eq!(r.throttle, ThrottleLevel::NONE);
        assert_eq!(r.pre_dump_mode, Some(PreDumpMode::Splice));
        assert!((r.frozen_secs - 0.0005).abs() < 1e-9, "{}", r.frozen_secs);
        assert!(r.bandwidth > 0.0 && r.est_downtime_secs > 0.0, "{r:?}");
        // the estimate's two parts: the fixed one is CRIU's frozen time less its memdump (the
        // script reports no write time, so not the round's time besides moving pages)
        let (mem, frz) = (r.est_memory_secs.unwrap(), r.est_frozen_secs.unwrap());
        assert!((frz - 0.0005).abs() < 1e-9, "{r:?}");
        assert!((r.est_downtime_secs - (mem + frz)).abs() < 1e-12, "{r:?}");
        assert_eq!(r.dirty_rate.is_some(), i > 0, "round 1 has no dirty rate");
        assert!(!r.verdict.is_empty());
    }
    assert!(report.rounds[0].verdict.starts_with("continue at 0%"));
    assert!(report.rounds[2].verdict.starts_with("final dump"));
    assert_eq!(
        report.rounds[1].bytes,
        8000 * 4096,
        "the page server's bytes"
    );
    let rounds_frozen: f64 = report.rounds.iter().map(|r| r.frozen_secs).sum();
    assert!((rounds_frozen - 0.0015).abs() < 1e-6, "{rounds_frozen}");
    assert!(
        report.frozen_secs >= rounds_frozen,
        "the final dump's adds to it"
    );
    let summary = report.summary();
    assert!(
        summary.contains("pre-copy 3 rounds (splice pre-dumps); throttle auto: never engaged"),
        "{summary}"
    );
    assert_eq!(child.cgroups(), before);
    assert_eq!(
        run.source.requests(),
        [
            "CPUINFO_DUMP",
            "PRE_DUMP",
            "PRE_DUMP",
            "PRE_DUMP",
            "DUMP",
            "NOTIFY(ok)",
            "NOTIFY(ok)"
        ]
    );
    assert_eq!(run.source.open_operations(), 0);
}

async fn throttling_off_never_touches_the_tree() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let before = child.cgroups();
    // a dirty set that never shrinks, 1 ms target: out of reach without a throttle
    let run = migrate(
        child.pid(),
        &[16384],
        target(1, OnTimeout::Proceed),
        ThrottleSetting::Off,
        None,
    )
    .await;
    let report = run.outcome.as_ref().expect("migrated anyway (proceed)");
    assert!(report.throttle.is_none());
    assert_eq!(report.throttle_note, "--throttle off");
    assert!(report.rounds.iter().all(|r| r.throttle.is_none()));
    let fallback = report.fallback.as_deref().expect("the target was missed");
    assert!(fallback.contains("with throttling off"), "{fallback}");
    assert!(
        report
            .summary()
            .contains("pre-copy missed its downtime target"),
        "{}",
        report.summary()
    );
    assert!(
        report.rounds.len() < 8,
        "hopeless rounds end early: {}",
        report.rounds.len()
    );
    assert_eq!(child.cgroups(), before);
}

async fn a_target_out_of_reach_throttles_the_tree_and_releases_it_before_the_final_dump() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let before = child.cgroups();
    let run = migrate(
        child.pid(),
        &[16384],
        target(1, OnTimeout::Proceed),
        ThrottleSetting::Auto,
        None,
    )
    .await;
    let report = run.outcome.as_ref().expect("migrated (proceed)");
    let t = report.throttle.as_ref().expect("the throttle was engaged");
    assert!(t.max_level > ThrottleLevel::NONE, "{t:?}");
    assert_eq!(t.processes, 1);
    let release = t.release.as_ref().expect("released");
    assert!(release.cgroup_removed, "{release:?}");
    assert!(release.leave.remaining.is_empty(), "{release:?}");
    let levels: Vec<u8> = report.rounds.iter().map(|r| r.throttle.percent()).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    assert_eq!(levels[0], 0, "round 1 runs unthrottled: {levels:?}");
    assert!(levels.iter().any(|l| *l > 0), "{levels:?}");
    assert_eq!(report.throttle_note, "engaged");
    assert!(report.fallback.is_some(), "a 1 ms target is out of reach");
    let summary = report.summary();
    assert!(summary.contains("throttle auto: up to"), "{summary}");
    assert!(
        summary.contains("released before the final dump"),
        "{summary}"
    );
    assert_eq!(child.cgroups(), before, "back in exactly its own cgroups");
    assert!(leftovers(&report.migration_id).is_empty());
}

async fn a_failed_round_releases_the_throttle_first() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let before = child.cgroups();
    // the throttle is engaged after round 2; round 3's pre-dump fails
    let run = migrate(
        child.pid(),
        &[16384],
        target(1, OnTimeout::Proceed),
        ThrottleSetting::Auto,
        Some(3),
    )
    .await;
    let f = match &run.outcome {
        Ok(r) => panic!("the migration succeeded: {r:?}"),
        Err(f) => f,
    };
    assert_eq!(f.whereabouts, Whereabouts::Untouched(child.pid()));
    assert!(matches!(f.error, SourceError::Criu(_)), "{f}");
    assert!(f.to_string().contains("pre-dump failed (scripted)"), "{f}");
    assert_eq!(child.cgroups(), before, "back in exactly its own cgroups");
    let id = failed_id(&run);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    let kept = kept_report(&run, &id);
    assert_eq!(kept.rounds.len(), 2);
    let t = kept.throttle.expect("engaged after round 2");
    assert!(t.release.is_some(), "released");
    assert!(
        kept.failure
            .as_deref()
            .unwrap_or("")
            .contains("still runs on the source"),
        "{:?}",
        kept.failure
    );
    assert_eq!(
        run.source.requests(),
        ["CPUINFO_DUMP", "PRE_DUMP", "PRE_DUMP", "PRE_DUMP"],
        "no dump after the failure"
    );
    assert_eq!(run.source.open_operations(), 0);
}

async fn a_cancel_at_the_cap_releases_the_throttle() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let before = child.cgroups();
    let cap = ThrottleLevel::new(30).unwrap();
    let run = migrate(
        child.pid(),
        &[16384],
        target(1, OnTimeout::Cancel),
        ThrottleSetting::UpTo(cap),
        None,
    )
    .await;
    let f = match &run.outcome {
        Ok(r) => panic!("the migration succeeded: {r:?}"),
        Err(f) => f,
    };
    assert!(matches!(f.error, SourceError::NotConverged(_)), "{f}");
    assert!(f.to_string().contains("cap 30%"), "{f}");
    assert_eq!(f.whereabouts, Whereabouts::Untouched(child.pid()));
    assert_eq!(child.cgroups(), before);
    let id = failed_id(&run);
    assert!(leftovers(&id).is_empty(), "{:?}", leftovers(&id));
    let kept = kept_report(&run, &id);
    assert!(kept.rounds.iter().all(|r| r.throttle <= cap));
    assert_eq!(kept.throttle.expect("engaged").max_level, cap);
    assert!(!run.source.requests().iter().any(|r| r == "DUMP"));
}

async fn read_pre_dumps_are_refused_with_this_criu() {
    let _one = SERIAL.lock().await;
    let child = Sleeper::start();
    let run = migrate_in(
        child.pid(),
        &[16384],
        Convergence::default(),
        ThrottleSetting::Auto,
        None,
        PreDumpMode::Read,
    )
    .await;
    let f = match &run.outcome {
        Ok(r) => panic!("the migration succeeded: {r:?}"),
        Err(f) => f,
    };
    assert!(matches!(f.error, SourceError::PreDumpMode(_)), "{f}");
    assert!(f.to_string().contains("restore a broken process"), "{f}");
    assert_eq!(f.whereabouts, Whereabouts::Untouched(child.pid()));
    assert_eq!(run.source.requests(), ["CPUINFO_DUMP"], "no pre-dump");
}

/// A test of an `async fn`, on a runtime of its own (what `#[tokio::test]` builds).
macro_rules! test_async {
    ($f:ident $(, $need:expr)* $(,)?) => {
        haul_test_support::Test::new(stringify!($f), || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime")
                .block_on($f())
        })
        .needs([$($need),*])
    };
}

fn main() -> std::process::ExitCode {
    use haul_test_support::Need::*;
    haul_test_support::run(vec![
        test_async!(without_a_target_the_rounds_follow_phaul_and_nothing_is_throttled),
        test_async!(throttling_off_never_touches_the_tree),
        test_async!(
            a_target_out_of_reach_throttles_the_tree_and_releases_it_before_the_final_dump,
            Root,
            Check(throttle_missing)
        ),
        test_async!(
            a_failed_round_releases_the_throttle_first,
            Root,
            Check(throttle_missing)
        ),
        test_async!(
            a_cancel_at_the_cap_releases_the_throttle,
            Root,
            Check(throttle_missing)
        ),
        test_async!(read_pre_dumps_are_refused_with_this_criu),
    ])
}
