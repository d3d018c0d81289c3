//! File sync (`haul pid --sync`) through the real protocol, against a scripted CRIU: no root,
//! no CRIU. The destination writes below a prefix directory (`haul serve`'s hidden
//! `--sync-root-prefix`), the stand-in for the other node's own disk.
//!
//! - a whole migration: the trees arrive, equal, and the report has the rounds;
//! - roots the destination will not write (outside `--sync-allow`, over its image directory,
//!   through a symlink on its side) are refused before anything is frozen;
//! - a hostile source (paths that climb out, a symlink swapped in on the destination between
//!   rounds) gets an error and the destination is as it was, nothing written outside;
//! - an interrupted sync (the source's connection gone mid-round) leaves the destination as it
//!   was, or its staging directory only with `--keep-partial-sync`;
//! - a `Restore` before the final round is refused;
//! - a migration that ends between the final round (the copy is in place) and `Resume` (the
//!   source gone, abandoned, a stray sync message) leaves the destination as it was and the
//!   source's tree untouched.

mod sync_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haul::criu::scripted::{Script, ScriptedCriu};
use haul::criu::Criu;
use haul::migrate::converge::Convergence;
use haul::migrate::destination::sync::SyncServeOptions;
use haul::migrate::destination::{self, control_session, ServeConfig};
use haul::migrate::source::sync::SyncOptions;
use haul::migrate::source::{self, SourceConfig, SourceFailure, Whereabouts};
use haul::migrate::strategy::Strategy;
use haul::migrate::MigrationReport;
use haul::sync::pb as spb;
use haul::sync::pb::sync_message::Body as SBody;
use haul::sync::{RoundPolicy, SyncSource};
use haul::wire::frame::Conn;
use haul::wire::pb::{self, message::Body};
use haul::wire::Key;
use sync_support::*;

/// The source's held-file check reads this very process's open files, which other tests of
/// this file create and delete: one test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn me() -> i32 {
    std::process::id() as i32
}

/// A tree with a bit of everything: files of several sizes and modes, a sparse file, a
/// subdirectory, a symlink inside, a hard link, a FIFO, an empty directory.
fn fill(root: &Path) {
    std::fs::create_dir_all(root.join("sub/empty")).unwrap();
    std::fs::write(root.join("small"), b"hello").unwrap();
    std::fs::write(root.join("sub/big"), bytes(7, 3 << 20)).unwrap();
    write_at(&root.join("sparse"), 5 << 20, &bytes(9, 70_000));
    std::os::unix::fs::symlink("sub/big", root.join("link")).unwrap();
    std::fs::hard_link(root.join("small"), root.join("sub/small-again")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("small"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Run {
    outcome: Result<MigrationReport, SourceFailure>,
    source: ScriptedCriu,
}

/// `haul serve` (scripted CRIU, synced trees below `pair.prefix`) and `haul pid --sync
/// pair.src` of this process.
async fn migrate(pair: &Pair, serve: SyncServeOptions, strategy: Strategy) -> Run {
    migrate_img(pair, serve, strategy, &pair.base.path().join("dst-img")).await
}

/// [`migrate`] with the destination's image directory at `img`.
async fn migrate_img(pair: &Pair, serve: SyncServeOptions, strategy: Strategy, img: &Path) -> Run {
    let key = Key::generate();
    let listener = destination::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let serve_cfg = ServeConfig {
        listen: addr,
        key: key.clone(),
        img_path: img.to_path_buf(),
        criu: Criu::at("/nonexistent/criu"),
        max_migrations: Some(1),
        sync: SyncServeOptions {
            root_prefix: Some(pair.prefix.clone()),
            ..serve
        },
    };
    let destination = ScriptedCriu::new(Script::default());
    let served = tokio::spawn(destination::serve_with(
        listener,
        serve_cfg,
        Arc::new(destination.clone()),
    ));
    let source = ScriptedCriu::new(Script::default());
    let cfg = SourceConfig {
        pid: me(),
        destination: addr.to_string(),
        key,
        img_path: pair.base.path().join("src-img"),
        strategy,
        tree: Default::default(),
        convergence: Convergence::default(),
        progress: false,
        ghost_limit: None,
        // this test process is the "tree": what it holds (sockets, the test binary) is not
        // what these tests are about
        ignore_preflight: true,
        dry_run: false,
        sync: SyncOptions {
            paths: vec![pair.src.clone()],
            policy: RoundPolicy::default(),
            ..Default::default()
        },
        throttle: Default::default(),
        pre_dump_mode: None,
        // The scripted CRIU does not do lazy dumps: CRIU's own memory path.
        memory: haul::memory::MemoryPath {
            engine: false,
            ..Default::default()
        },
    };
    let outcome = source::migrate_with(cfg, Arc::new(source.clone())).await;
    if outcome.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
    } else {
        // the destination closes the failed session (and rolls its sync back) on its own
        let t = std::time::Instant::now();
        while destination.open_operations() > 0 && t.elapsed().as_secs() < 30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        served.abort();
    }
    Run { outcome, source }
}

/// Whether `dir` holds a staging or backup directory of a sync.
fn sync_leftovers(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".haul-sync"))
        .collect()
}

#[tokio::test]
async fn files_move_with_the_process_and_the_copy_is_committed() {
    let _one = ONE_AT_A_TIME.lock().await;
    // (the scripted CRIU has no lazy dump; pre-copy adds a catch-up round after its rounds)
    for strategy in [Strategy::StopCopy, Strategy::PreCopy] {
        let pair = Pair::new();
        fill(&pair.src);
        let before = snapshot(&pair.src);
        let run = migrate(&pair, SyncServeOptions::default(), strategy).await;
        let report = run.outcome.as_ref().expect("migrated");
        // the source's files are as they were (it only reads, without touching access times)
        assert_same_but_link_atimes(&before, &snapshot(&pair.src), "the source after");
        // and the destination has them, every byte, mode, time, link
        assert_same_but_link_atimes(&before, &snapshot(&pair.dst()), "the copy");
        assert!(
            sync_leftovers(&pair.dst()).is_empty(),
            "{:?}",
            names(&pair.dst())
        );
        let sync = report.sync.as_ref().expect("the report has the sync");
        assert_eq!(sync.roots, [pair.src.display().to_string()]);
        let last = sync.rounds.last().unwrap();
        let least = if strategy == Strategy::PreCopy { 3 } else { 2 };
        assert!(last.final_round && sync.rounds.len() >= least, "{sync:?}");
        assert!(
            sync.rounds[0].payload_bytes >= (3 << 20) + 70_000,
            "round 1 carries the data: {sync:?}"
        );
        assert_eq!(last.payload_bytes, 0, "nothing changed in between");
        assert!(sync
            .final_share_of_downtime
            .is_some_and(|s| s > 0.0 && s <= 1.0));
        assert!(
            report.summary().contains("file sync of"),
            "{}",
            report.summary()
        );
        assert_eq!(
            run.source.requests().last().map(String::as_str),
            Some("NOTIFY(ok)"),
            "{strategy}: post-dump acknowledged"
        );
    }
}

fn failure(run: &Run) -> &SourceFailure {
    match &run.outcome {
        Ok(r) => panic!("the migration succeeded: {r:?}"),
        Err(f) => f,
    }
}

#[tokio::test]
async fn roots_the_destination_will_not_write_are_refused_before_the_freeze() {
    let _one = ONE_AT_A_TIME.lock().await;
    // outside --sync-allow
    let pair = Pair::new();
    fill(&pair.src);
    let allow = SyncServeOptions {
        allow: vec![PathBuf::from("/srv/elsewhere")],
        ..Default::default()
    };
    let run = migrate(&pair, allow, Strategy::StopCopy).await;
    let f = failure(&run);
    assert_eq!(f.whereabouts, Whereabouts::Untouched(me()));
    let text = f.to_string();
    assert!(text.contains(&pair.src.display().to_string()), "{text}");
    assert!(
        text.contains("outside the directories this destination accepts"),
        "{text}"
    );
    assert!(text.contains("nothing was frozen"), "{text}");
    assert_eq!(run.source.requests(), ["CPUINFO_DUMP"], "no dump");
    assert!(!pair.dst().exists(), "nothing made on the destination");

    // a symlink on the way on the destination's side: refused, never written through
    let pair = Pair::new();
    fill(&pair.src);
    let elsewhere = pair.base.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, pair.dst()).unwrap();
    let run = migrate(&pair, SyncServeOptions::default(), Strategy::StopCopy).await;
    let text = failure(&run).to_string();
    assert!(text.contains("symlink"), "{text}");
    assert!(names(&elsewhere).is_empty(), "written through the symlink");

    // a root over the destination's own image directory
    let pair = Pair::new();
    fill(&pair.src);
    let img = pair.src.join("images");
    let run = migrate_img(&pair, SyncServeOptions::default(), Strategy::StopCopy, &img).await;
    let f = failure(&run);
    assert!(
        f.to_string().contains("which the destination protects"),
        "{f}"
    );
    assert_eq!(f.whereabouts, Whereabouts::Untouched(me()));
    assert!(!pair.dst().exists(), "nothing made on the destination");
}

// ------------------------------------------------------------------ a hand-played source

/// The source's side of one control session, played by the test.
struct Peer {
    conn: Conn<tokio::io::DuplexStream>,
    dst: tokio::task::JoinHandle<Result<(), destination::ServeError>>,
}

impl Peer {
    /// A destination session (scripted CRIU) writing synced trees below `pair.prefix`,
    /// and its `Begin` of migration `id` answered.
    async fn start(pair: &Pair, id: &str, keep_partial: bool) -> Peer {
        let cfg = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            key: Key::generate(),
            img_path: pair.base.path().join("dst-img"),
            criu: Criu::at("/nonexistent/criu"),
            max_migrations: None,
            sync: SyncServeOptions {
                root_prefix: Some(pair.prefix.clone()),
                keep_partial,
                ..Default::default()
            },
        };
        let (a, b) = tokio::io::duplex(8 << 20);
        let criu = Arc::new(ScriptedCriu::new(Script::default()));
        let dst = tokio::spawn(async move { control_session(Conn::new(b), cfg, criu).await });
        let mut p = Peer {
            conn: Conn::new(a),
            dst,
        };
        p.send(pb::Begin {
            migration_id: id.into(),
            criu_version: Some(pb::CriuVersion {
                major: 4,
                minor: 1,
                sublevel: 0,
            }),
            strategy: "stop-copy".into(),
            memory_bytes: 1 << 20,
            cpuinfo: b"cpuinfo".to_vec(),
            requirements_json: String::new(),
            dry_run: false,
        })
        .await;
        let ready = p.recv().await;
        let Some(Body::Ready(r)) = ready else {
            panic!("no Ready: {ready:?}")
        };
        assert!(r.features.unwrap().file_sync, "the destination speaks sync");
        p
    }

    async fn send(&mut self, b: impl Into<Body>) {
        self.conn.send(&pb::Message::of(b.into())).await.unwrap();
    }

    /// The next answer; `None` when the destination closed.
    async fn recv(&mut self) -> Option<Body> {
        match tokio::time::timeout(Duration::from_secs(60), self.conn.recv()).await {
            Ok(Ok(m)) => m.body,
            _ => None,
        }
    }

    /// Sends one round of `src` (and checks its answer).
    async fn round(&mut self, src: &mut SyncSource, final_round: bool) {
        let msgs: Vec<spb::SyncMessage> = {
            let mut r = src.round(final_round).unwrap();
            let mut v = Vec::new();
            while let Some(m) = r.next_message().unwrap() {
                v.push(m);
            }
            v
        };
        for m in msgs {
            self.send(m).await;
        }
        match self.recv().await {
            Some(Body::RoundApplied(a)) => src.applied(&a).unwrap(),
            other => panic!("no RoundApplied: {other:?}"),
        }
    }

    /// Waits for the destination's `Error` and the end of its session; returns the error.
    async fn expect_error(mut self) -> (pb::Error, String) {
        let err = loop {
            match self.recv().await {
                Some(Body::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("the destination closed without an Error"),
            }
        };
        let outcome = match self.dst.await.unwrap() {
            Ok(()) => "ok".into(),
            Err(e) => haul::migrate::error::chain(&e),
        };
        (err, outcome)
    }
}

fn sm(b: SBody) -> spb::SyncMessage {
    spb::SyncMessage { body: Some(b) }
}

fn open_sync(pair: &Pair, id: &str) -> (SyncSource, spb::SyncOpen) {
    SyncSource::open(pair.src_cfg(id)).unwrap()
}

/// A directory next to the destination's prefix that nothing may write into.
fn outside(pair: &Pair) -> PathBuf {
    let o = pair.base.path().join("outside");
    std::fs::create_dir_all(&o).unwrap();
    std::fs::write(o.join("precious"), b"keep").unwrap();
    o
}

fn assert_untouched(o: &Path) {
    assert_eq!(names(o), ["precious"], "something was written outside");
    assert_eq!(std::fs::read(o.join("precious")).unwrap(), b"keep");
}

#[tokio::test]
async fn a_hostile_source_cannot_write_outside_the_synced_roots() {
    let _one = ONE_AT_A_TIME.lock().await;
    // paths that climb out or are absolute, inside an otherwise proper round
    for bad in [&b"../../../outside/evil"[..], b"/etc/evil", b"sub/../../x"] {
        let pair = Pair::new();
        fill(&pair.src);
        let out = outside(&pair);
        std::fs::create_dir_all(pair.dst()).unwrap();
        std::fs::write(pair.dst().join("old"), b"old").unwrap();
        let mut p = Peer::start(&pair, "m1", false).await;
        let (_src, open) = open_sync(&pair, "m1");
        p.send(open).await;
        assert!(matches!(p.recv().await, Some(Body::SyncOpened(_))));
        p.send(sm(SBody::RoundBegin(spb::RoundBegin {
            round: 1,
            r#final: false,
        })))
        .await;
        p.send(sm(SBody::Fifo(spb::Fifo {
            root: 0,
            path: bad.to_vec(),
            meta: None,
        })))
        .await;
        let (err, outcome) = p.expect_error().await;
        assert_eq!(err.kind, pb::ErrorKind::Protocol as i32, "{err:?}");
        assert!(outcome.contains("file sync refused"), "{outcome}");
        assert_untouched(&out);
        assert_eq!(names(&pair.dst()), ["old"], "the root is as it was");
    }

    // a symlink swapped in on the destination between two rounds is not followed
    let pair = Pair::new();
    fill(&pair.src);
    let out = outside(&pair);
    let mut p = Peer::start(&pair, "m2", false).await;
    let (mut src, open) = open_sync(&pair, "m2");
    p.send(open).await;
    assert!(matches!(p.recv().await, Some(Body::SyncOpened(_))));
    p.round(&mut src, false).await;
    let staged_sub = pair.dst().join(".haul-sync.m2/tree/sub");
    assert!(staged_sub.join("big").exists(), "round 1 is staged");
    std::fs::rename(&staged_sub, pair.base.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&out, &staged_sub).unwrap();
    write_at(&pair.src.join("sub/big"), 0, b"changed");
    let msgs: Vec<_> = {
        let mut r = src.round(false).unwrap();
        std::iter::from_fn(|| r.next_message().unwrap()).collect()
    };
    for m in msgs {
        p.send(m).await;
    }
    let (err, outcome) = p.expect_error().await;
    assert_eq!(err.kind, pb::ErrorKind::Protocol as i32, "{err:?}");
    assert!(outcome.contains("leave the synced root"), "{outcome}");
    assert_untouched(&out);
    assert!(
        !pair.dst().exists(),
        "the root this session made is gone again"
    );
}

#[tokio::test]
async fn an_interrupted_sync_leaves_the_destination_as_it_was() {
    let _one = ONE_AT_A_TIME.lock().await;
    for keep_partial in [false, true] {
        let pair = Pair::new();
        fill(&pair.src);
        std::fs::create_dir_all(pair.dst()).unwrap();
        std::fs::write(pair.dst().join("old"), b"old").unwrap();
        let before = snapshot(&pair.dst());
        let mut p = Peer::start(&pair, "m3", keep_partial).await;
        let (mut src, open) = open_sync(&pair, "m3");
        p.send(open).await;
        assert!(matches!(p.recv().await, Some(Body::SyncOpened(_))));
        // half a round, then the source is gone
        let msgs: Vec<_> = {
            let mut r = src.round(false).unwrap();
            std::iter::from_fn(|| r.next_message().unwrap()).collect()
        };
        for m in msgs.iter().take(msgs.len() / 2) {
            p.send(m.clone()).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Peer { conn, dst } = p;
        drop(conn);
        let outcome = dst.await.unwrap();
        assert!(outcome.is_err(), "the session ends with the connection");
        let staging = pair.dst().join(".haul-sync.m3");
        if keep_partial {
            assert!(
                staging.join("tree").exists(),
                "--keep-partial-sync keeps it"
            );
            assert_eq!(names(&pair.dst()), [".haul-sync.m3", "old"]);
        } else {
            assert!(!staging.exists(), "the partial copy is removed");
            assert_same(&before, &snapshot(&pair.dst()), "the destination's root");
        }
    }
}

#[tokio::test]
async fn a_restore_before_the_final_round_is_refused_and_rolled_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pair = Pair::new();
    fill(&pair.src);
    let mut p = Peer::start(&pair, "m4", false).await;
    let (mut src, open) = open_sync(&pair, "m4");
    p.send(open).await;
    assert!(matches!(p.recv().await, Some(Body::SyncOpened(_))));
    p.round(&mut src, false).await;
    p.send(pb::Restore::default()).await;
    let (err, outcome) = p.expect_error().await;
    assert_eq!(err.kind, pb::ErrorKind::Protocol as i32, "{err:?}");
    assert!(outcome.contains("before the final sync round"), "{outcome}");
    assert!(!pair.dst().exists(), "rolled back");
}

/// How a migration ends between the final round (the copy is in place on the destination)
/// and `Resume`.
#[derive(Debug, Clone, Copy)]
enum EndAfterInstall {
    /// The source's connection is gone.
    SourceGone,
    /// The source abandons the migration (`Finish{ok: false}`).
    Abandoned,
    /// The source sends one more sync message (a broken or hostile source).
    StrayRound,
}

#[tokio::test]
async fn a_migration_that_fails_after_the_copy_is_in_place_rolls_it_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    for end in [
        EndAfterInstall::SourceGone,
        EndAfterInstall::Abandoned,
        EndAfterInstall::StrayRound,
    ] {
        let pair = Pair::new();
        fill(&pair.src);
        std::fs::create_dir_all(pair.dst()).unwrap();
        std::fs::write(pair.dst().join("old"), b"old").unwrap();
        let dst_before = snapshot(&pair.dst());
        let mut p = Peer::start(&pair, "m5", false).await;
        let (mut src, open) = open_sync(&pair, "m5");
        p.send(open).await;
        assert!(matches!(p.recv().await, Some(Body::SyncOpened(_))));
        p.round(&mut src, false).await;
        write_at(&pair.src.join("sub/big"), 0, b"changed while frozen");
        let src_before = snapshot(&pair.src);
        p.round(&mut src, true).await;
        // the final round's answer means the copy is in place, before any Restore
        assert_eq!(
            std::fs::read(pair.dst().join("sub/big")).unwrap()[..20],
            b"changed while frozen"[..],
            "{end:?}: the copy is installed after the final round"
        );
        assert!(
            !pair.dst().join("old").exists(),
            "{end:?}: the root's old entries are set aside"
        );
        match end {
            EndAfterInstall::SourceGone => {
                let Peer { conn, dst } = p;
                drop(conn);
                assert!(
                    dst.await.unwrap().is_err(),
                    "the session ends with the connection"
                );
            }
            EndAfterInstall::Abandoned => {
                p.send(pb::Finish {
                    ok: false,
                    reason: "the source gave up".into(),
                })
                .await;
                assert!(matches!(p.recv().await, Some(Body::Finished(_))));
                let Peer { conn, dst } = p;
                drop(conn);
                let _ = dst.await.unwrap();
            }
            EndAfterInstall::StrayRound => {
                p.send(sm(SBody::RoundBegin(spb::RoundBegin {
                    round: 9,
                    r#final: false,
                })))
                .await;
                let (err, outcome) = p.expect_error().await;
                assert_eq!(err.kind, pb::ErrorKind::Protocol as i32, "{err:?}");
                assert!(outcome.contains("the copy is installed"), "{outcome}");
            }
        }
        assert_same(
            &dst_before,
            &snapshot(&pair.dst()),
            &format!("{end:?}: the destination's root"),
        );
        assert!(
            sync_leftovers(&pair.dst()).is_empty(),
            "{end:?}: no staging or backup directory is left"
        );
        assert_same(
            &src_before,
            &snapshot(&pair.src),
            &format!("{end:?}: the source's tree"),
        );
    }
}
