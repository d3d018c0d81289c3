//! The source's states against a scripted CRIU: no root, no CRIU. Each test runs a real
//! `haul serve` (its own scripted CRIU) on 127.0.0.1 and `haul pid`'s migration of this very
//! test process (the scripted CRIU dumps nothing for real), then checks the outcome, where
//! the process is said to be, which CRIU requests each side made, and that every CRIU
//! operation was finished.

use std::sync::Arc;

use haul::criu::scripted::{Script, ScriptedCriu, DUMP_IMAGES};
use haul::criu::Criu;
use haul::memory::MemoryPath;
use haul::migrate::converge::{Convergence, ThrottleSetting};
use haul::migrate::destination::{self, ServeConfig};
use haul::migrate::source::{self, SourceConfig, SourceFailure, Whereabouts};
use haul::migrate::strategy::Strategy;
use haul::migrate::MigrationReport;
use haul::wire::Key;

struct Run {
    outcome: Result<MigrationReport, SourceFailure>,
    source: ScriptedCriu,
    destination: ScriptedCriu,
    tmp: tempfile::TempDir,
}

async fn migrate(strategy: Strategy, src: Script, dst: Script, same_key: bool) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let listener = destination::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let destination = ScriptedCriu::new(dst);
    let serve_cfg = ServeConfig {
        listen: addr,
        key: key.clone(),
        img_path: tmp.path().join("dst"),
        criu: Criu::at("/nonexistent/criu"),
        max_migrations: Some(1),
        sync: Default::default(),
    };
    let served = tokio::spawn(destination::serve_with(
        listener,
        serve_cfg,
        Arc::new(destination.clone()),
    ));
    let source = ScriptedCriu::new(src);
    let cfg = SourceConfig {
        pid: std::process::id() as i32,
        destination: addr.to_string(),
        key: if same_key { key } else { Key::generate() },
        img_path: tmp.path().join("src"),
        strategy,
        tree: Default::default(),
        ghost_limit: None,
        // This test process is its own "tree": it shares the kernel with the destination
        // (its pids are taken there) and listens for it; the pre-flight tests are elsewhere.
        ignore_preflight: true,
        dry_run: false,
        convergence: Convergence::default(),
        throttle: ThrottleSetting::Auto,
        pre_dump_mode: None,
        progress: false,
        // The scripted CRIU does not do lazy dumps: CRIU's own memory path.
        memory: MemoryPath {
            engine: false,
            ..MemoryPath::default()
        },
        sync: Default::default(),
    };
    let outcome = source::migrate_with(cfg, Arc::new(source.clone())).await;
    // The destination counts only migrations that succeeded: after a failure it goes on
    // serving, so wait for it to have closed what the failed session held, then stop it.
    if outcome.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), served).await;
    } else {
        let t = std::time::Instant::now();
        while destination.open_operations() > 0 && t.elapsed().as_secs() < 30 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        served.abort();
    }
    Run {
        outcome,
        source,
        destination,
        tmp,
    }
}

fn failure(run: &Run) -> &SourceFailure {
    match &run.outcome {
        Ok(r) => panic!("the migration succeeded: {r:?}"),
        Err(f) => f,
    }
}

fn me() -> i32 {
    std::process::id() as i32
}

#[tokio::test]
async fn stop_copy_goes_through_every_state() {
    let dst = Script {
        restored_pid: 4242,
        ..Script::default()
    };
    let run = migrate(Strategy::StopCopy, Script::default(), dst, true).await;
    let report = run.outcome.as_ref().expect("migrated");
    assert_eq!(report.strategy, "stop-copy");
    assert_eq!(report.destination_pid, 4242);
    assert!(report.downtime_secs > 0.0);
    assert_eq!(
        run.source.requests(),
        ["CPUINFO_DUMP", "DUMP", "NOTIFY(ok)", "NOTIFY(ok)"],
        "post-dump is acknowledged once the destination runs the process"
    );
    assert_eq!(
        run.destination.requests(),
        [
            "CPUINFO_CHECK",
            "PAGE_SERVER_CHLD",
            "WAIT_PID",
            "RESTORE",
            "NOTIFY(ok)"
        ]
    );
    assert_eq!(run.source.open_operations(), 0);
    assert_eq!(run.destination.open_operations(), 0);
    let final_dir = run
        .tmp
        .path()
        .join("dst")
        .join(&report.migration_id)
        .join("final");
    for (name, data) in DUMP_IMAGES {
        assert_eq!(std::fs::read(final_dir.join(name)).unwrap(), data, "{name}");
    }
    let kept = run
        .tmp
        .path()
        .join("src")
        .join(&report.migration_id)
        .join("report.json");
    assert!(kept.exists(), "the report is kept beside the images");
}

#[tokio::test]
async fn pre_copy_rounds_give_the_final_dump_a_parent() {
    let run = migrate(
        Strategy::PreCopy,
        Script::default(),
        Script::default(),
        true,
    )
    .await;
    let report = run.outcome.as_ref().expect("migrated");
    assert_eq!(report.rounds.len(), 1, "{:?}", report.rounds);
    assert!(
        report.convergence.contains("pages dirty"),
        "{}",
        report.convergence
    );
    assert_eq!(
        run.source.requests(),
        [
            "CPUINFO_DUMP",
            "PRE_DUMP",
            "DUMP",
            "NOTIFY(ok)",
            "NOTIFY(ok)"
        ]
    );
    let dst = run.destination.requests();
    assert_eq!(
        dst.iter().filter(|r| *r == "PAGE_SERVER_CHLD").count(),
        2,
        "one page server per round: {dst:?}"
    );
    assert_eq!(run.destination.open_operations(), 0);
}

#[tokio::test]
async fn a_failed_restore_resumes_the_process_on_the_source() {
    let dst = Script {
        restore_fails: true,
        ..Script::default()
    };
    let run = migrate(Strategy::StopCopy, Script::default(), dst, true).await;
    let f = failure(&run);
    assert_eq!(f.whereabouts, Whereabouts::ResumedOnSource(me()));
    let msg = f.to_string();
    assert!(msg.contains("failed the migration (CRIU)"), "{msg}");
    assert!(msg.contains("restore failed (scripted)"), "{msg}");
    assert!(
        !msg.contains("reported: destination reported"),
        "never wrapped twice: {msg}"
    );
    assert_eq!(
        run.source.requests(),
        ["CPUINFO_DUMP", "DUMP", "NOTIFY(ok)", "NOTIFY(no)"],
        "post-dump answered no: CRIU resumes the tasks"
    );
    assert_eq!(run.source.open_operations(), 0);
    assert_eq!(run.destination.open_operations(), 0);
}

#[tokio::test]
async fn a_cpu_that_does_not_fit_refuses_before_anything_is_frozen() {
    let dst = Script {
        cpu_mismatch: true,
        ..Script::default()
    };
    let run = migrate(Strategy::StopCopy, Script::default(), dst, true).await;
    let f = failure(&run);
    assert_eq!(f.whereabouts, Whereabouts::Untouched(me()));
    assert!(f.to_string().contains("(CPU)"), "{f}");
    assert_eq!(run.source.requests(), ["CPUINFO_DUMP"], "no dump");
}

#[tokio::test]
async fn a_failed_dump_leaves_the_process_where_it_was() {
    let src = Script {
        dump_fails: true,
        ..Script::default()
    };
    let run = migrate(Strategy::StopCopy, src, Script::default(), true).await;
    let f = failure(&run);
    assert_eq!(f.whereabouts, Whereabouts::ResumedOnSource(me()));
    assert!(f.to_string().contains("dump failed (scripted)"), "{f}");
    assert_eq!(run.source.open_operations(), 0);
    assert_eq!(
        run.destination.open_operations(),
        0,
        "the destination's page server was stopped"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_before_anything_happens() {
    let run = migrate(
        Strategy::StopCopy,
        Script::default(),
        Script::default(),
        false,
    )
    .await;
    let f = failure(&run);
    assert_eq!(f.whereabouts, Whereabouts::Untouched(me()));
    assert!(f.to_string().contains("authentication"), "{f}");
    assert!(run.destination.requests().is_empty());
}

#[tokio::test]
async fn no_destination_no_migration() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SourceConfig {
        pid: me(),
        destination: addr.to_string(),
        key: Key::generate(),
        img_path: tmp.path().to_path_buf(),
        strategy: Strategy::StopCopy,
        tree: Default::default(),
        ghost_limit: None,
        // This test process is its own "tree": it shares the kernel with the destination
        // (its pids are taken there) and listens for it; the pre-flight tests are elsewhere.
        ignore_preflight: true,
        dry_run: false,
        convergence: Convergence::default(),
        throttle: ThrottleSetting::Auto,
        pre_dump_mode: None,
        progress: false,
        // The scripted CRIU does not do lazy dumps: CRIU's own memory path.
        memory: MemoryPath {
            engine: false,
            ..MemoryPath::default()
        },
        sync: Default::default(),
    };
    let criu = ScriptedCriu::new(Script::default());
    let f = source::migrate_with(cfg, Arc::new(criu.clone()))
        .await
        .unwrap_err();
    assert_eq!(f.whereabouts, Whereabouts::Untouched(me()));
    assert!(
        f.to_string().contains("is `haul serve` running there"),
        "{f}"
    );
    let pid_gone = SourceConfig {
        pid: i32::MAX,
        destination: addr.to_string(),
        key: Key::generate(),
        img_path: tmp.path().to_path_buf(),
        strategy: Strategy::StopCopy,
        tree: Default::default(),
        ghost_limit: None,
        // This test process is its own "tree": it shares the kernel with the destination
        // (its pids are taken there) and listens for it; the pre-flight tests are elsewhere.
        ignore_preflight: true,
        dry_run: false,
        convergence: Convergence::default(),
        throttle: ThrottleSetting::Auto,
        pre_dump_mode: None,
        progress: false,
        // The scripted CRIU does not do lazy dumps: CRIU's own memory path.
        memory: MemoryPath {
            engine: false,
            ..MemoryPath::default()
        },
        sync: Default::default(),
    };
    let f = source::migrate_with(pid_gone, Arc::new(criu))
        .await
        .unwrap_err();
    assert!(f.to_string().contains("no process with pid"), "{f}");
}
