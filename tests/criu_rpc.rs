//! The CRIU RPC client against the real CRIU: version and features, a refused request's
//! typed error, and a real dump and restore of a running process that keeps running.
//!
//! Needs root and CRIU >= 4.1 (scripts/setup.sh); reported as ignored otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use haul::criu::pb::CriuReqType;
use haul::criu::{options, stats, Criu, CriuError, Event};
use haul_launch::{launch, LaunchSpec};
use haul_workloads::mtouch_log;

async fn criu_or_skip() -> Option<Criu> {
    match Criu::locate_checked().await {
        Ok((c, _)) => Some(c),
        Err(e) => haul_test_support::skip(format!("no usable CRIU: {e}")),
    }
}

async fn version_check_and_features() {
    let Some(criu) = criu_or_skip().await else {
        return;
    };
    let v = criu.version().await.unwrap();
    assert!((v.major, v.minor) >= haul::criu::MIN_CRIU_VERSION, "{v}");
    criu.check()
        .await
        .expect("criu check passes on this kernel");
    let f = criu.features().await.unwrap();
    eprintln!("features: {f:?}");
    // The machines this project targets (this host, the VMs) all have userfaultfd;
    // soft-dirty varies and is only reported.
    assert!(
        f.lazy_pages,
        "CRIU reports no lazy pages: userfaultfd missing?"
    );
}

async fn dumping_a_missing_pid_gives_a_typed_error_with_the_log() {
    let Some(criu) = criu_or_skip().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fd = std::fs::File::open(dir.path()).unwrap();
    let mut opts = options::base(std::os::fd::AsRawFd::as_raw_fd(&fd), "dump.log");
    opts.pid = Some(i32::MAX - 1); // above pid_max: cannot exist
    let op = criu
        .start(
            CriuReqType::Dump,
            opts,
            &[],
            Some(dir.path().join("dump.log")),
        )
        .await
        .unwrap();
    match op.run_to_end().await {
        Err(CriuError::Refused { request, log, .. }) => {
            assert_eq!(request, "DUMP");
            assert_eq!(log.as_deref(), Some(dir.path().join("dump.log").as_path()));
            assert!(dir.path().join("dump.log").exists(), "CRIU wrote no log");
        }
        other => panic!("expected a refused DUMP, got {other:?}"),
    }
}

async fn dump_and_restore_a_running_process_through_rpc() {
    let Some(criu) = criu_or_skip().await else {
        return;
    };
    let mtouch = Path::new(env!("CARGO_BIN_EXE_haul"))
        .parent()
        .unwrap()
        .join("mtouch");
    assert!(mtouch.exists(), "run with `cargo test --workspace`");
    let tmp = tempfile::tempdir().unwrap();
    let wd = tmp.path().join("work");
    let img = tmp.path().join("img");
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::create_dir_all(&img).unwrap();
    let l = launch(
        &LaunchSpec::new(&mtouch)
            .args(["mem-touch.log", "16m:16m:1000"])
            .cwd(&wd),
    )
    .unwrap();
    let pid = l.host_pid;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // DUMP, holding post-dump to show that notifications reach the caller.
    let dirf = std::fs::File::open(&img).unwrap();
    let dfd = std::os::fd::AsRawFd::as_raw_fd(&dirf);
    let mut opts = options::base(dfd, "dump.log");
    opts.pid = Some(pid);
    let mut op = criu
        .start(CriuReqType::Dump, opts, &[], None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        match op.next().await.unwrap() {
            Event::Notify(n) => {
                if n.hook == haul::criu::Hook::PostDump {
                    // frozen, not killed: the process still exists, stopped
                    assert!(haul::migrate::tree::alive(pid));
                }
                seen.push(n.hook.name().to_string());
                op.ack(true).await.unwrap();
            }
            Event::Done(r) => {
                assert!(r.success);
                break;
            }
        }
    }
    op.finish().await;
    assert!(
        seen.iter().any(|s| s == "post-dump"),
        "notifications seen: {seen:?}"
    );
    let t = Instant::now();
    while haul::migrate::tree::alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "dumped process not killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = stats::read_dump(&img).unwrap();
    assert!(
        st.pages_written >= 16 * 256,
        "16 MiB touched, {} pages written",
        st.pages_written
    );

    // RESTORE: the process comes back (new host pid, its own pid 1) and keeps touching.
    let opts = options::base(dfd, "restore.log");
    let resp = criu
        .start(CriuReqType::Restore, opts, &[], None)
        .await
        .unwrap()
        .run_to_end()
        .await
        .unwrap();
    let new_pid = resp.restore.unwrap().pid;
    assert!(haul::migrate::tree::alive(new_pid));
    let rs = stats::read_restore(&img).unwrap();
    assert!(rs.pages_restored > 0 || rs.restore_time_us > 0);
    let before = mtouch_log::analyze(wd.join("mem-touch.log"))
        .unwrap()
        .touches;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = mtouch_log::analyze(wd.join("mem-touch.log"))
        .unwrap()
        .touches;
    assert!(after > before, "the restored process does not run");
    std::fs::write(wd.join("mem-touch-stop"), b"").unwrap();
    let t = Instant::now();
    loop {
        let v = mtouch_log::analyze(wd.join("mem-touch.log")).unwrap();
        if v.finished {
            assert!(v.mismatch_lines.is_empty(), "memory differs after restore");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no Finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(f)
}

fn main() -> std::process::ExitCode {
    use haul_test_support::{Need::*, Test};
    haul_test_support::run(vec![
        Test::new("version_check_and_features", || {
            block_on(version_check_and_features())
        })
        .needs([Root, Criu]),
        Test::new(
            "dumping_a_missing_pid_gives_a_typed_error_with_the_log",
            || block_on(dumping_a_missing_pid_gives_a_typed_error_with_the_log()),
        )
        .needs([Root, Criu]),
        Test::new("dump_and_restore_a_running_process_through_rpc", || {
            block_on(dump_and_restore_a_running_process_through_rpc())
        })
        .needs([Root, Criu]),
    ])
}
