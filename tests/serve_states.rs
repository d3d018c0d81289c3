//! The destination's state machine against a scripted CRIU: no root, no CRIU, no network.
//! Each test plays the source's side of a control connection over an in-memory pipe and
//! checks what the destination answers, which CRIU requests it made, and that every CRIU
//! operation it started was finished.

use std::sync::Arc;
use std::time::Duration;

use haul::criu::scripted::{Script, ScriptedCriu};
use haul::criu::Criu;
use haul::migrate::destination::{control_session, ServeConfig};
use haul::wire::frame::Conn;
use haul::wire::pb::{self, message::Body};
use haul::wire::Key;

/// The destination's side runs `session`; the source's side sends `msgs` and collects every
/// answer until the destination closes.
async fn play(criu: &ScriptedCriu, msgs: Vec<Body>) -> (Vec<Body>, String, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        key: Key::generate(),
        img_path: tmp.path().join("img"),
        criu: Criu::at("/nonexistent/criu"),
        max_migrations: None,
        sync: Default::default(),
    };
    let (a, b) = tokio::io::duplex(8 << 20);
    let service = Arc::new(criu.clone());
    let dst = tokio::spawn(async move { control_session(Conn::new(b), cfg, service).await });
    let mut src = Conn::new(a);
    for m in msgs {
        src.send(&pb::Message::of(m)).await.unwrap();
    }
    let mut answers = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(900), src.recv()).await {
        answers.extend(m.body);
    }
    let outcome = match dst.await.unwrap() {
        Ok(()) => "ok".to_string(),
        Err(e) => haul::migrate::error::chain(&e),
    };
    (answers, outcome, tmp)
}

fn begin(id: &str) -> Body {
    Body::Begin(pb::Begin {
        migration_id: id.into(),
        criu_version: Some(pb::CriuVersion {
            major: 4,
            minor: 1,
            sublevel: 0,
        }),
        strategy: "stop-copy".into(),
        memory_bytes: 1 << 20,
        cpuinfo: b"cpuinfo".to_vec(),
        ..Default::default()
    })
}

fn chunk(name: &str, data: &[u8], last: bool) -> Body {
    Body::ImageChunk(pb::ImageChunk {
        round: 0,
        name: name.into(),
        offset: 0,
        data: data.to_vec(),
        last,
    })
}

fn restore() -> Body {
    Body::Restore(pb::Restore::default())
}

fn kinds(answers: &[Body]) -> Vec<&'static str> {
    answers
        .iter()
        .map(|b| pb::Message::of(b.clone()).kind_name())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_whole_migration_goes_through_every_state() {
    let criu = ScriptedCriu::new(Script {
        restored_pid: 0,
        ..Script::default()
    });
    let (answers, outcome, tmp) = play(
        &criu,
        vec![
            begin("m1"),
            chunk("core-1.img", b"core", true),
            restore(),
            Body::Resume(pb::Resume {}),
            Body::Finish(pb::Finish {
                ok: true,
                reason: String::new(),
            }),
        ],
    )
    .await;
    assert_eq!(outcome, "ok");
    assert_eq!(
        kinds(&answers),
        ["Ready", "RestoreHeld", "Restored", "Finished"]
    );
    assert_eq!(
        criu.requests(),
        ["CPUINFO_CHECK", "RESTORE", "NOTIFY(ok)"],
        "CRIU was asked for exactly this"
    );
    assert_eq!(criu.open_operations(), 0);
    let img = tmp.path().join("img/m1/final/core-1.img");
    assert_eq!(std::fs::read(&img).unwrap(), b"core");
}

#[tokio::test(start_paused = true)]
async fn commands_before_begin_reach_no_criu() {
    for early in [
        restore(),
        chunk("core-1.img", b"x", true),
        Body::StartPageServer(pb::StartPageServer { round: 0 }),
        Body::Resume(pb::Resume {}),
    ] {
        let criu = ScriptedCriu::new(Script::default());
        let (answers, outcome, _tmp) = play(&criu, vec![early.clone()]).await;
        assert!(
            outcome.contains("is not valid in state Connected"),
            "{early:?} before Begin: {outcome}"
        );
        assert_eq!(kinds(&answers), ["Error"], "the source is told why");
        assert!(criu.requests().is_empty(), "{:?}", criu.requests());
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_that_says_no_after_the_restore_discards_the_copy() {
    let criu = ScriptedCriu::new(Script::default());
    let (answers, outcome, _tmp) = play(
        &criu,
        vec![
            begin("m2"),
            chunk("core-1.img", b"core", true),
            restore(),
            Body::Error(pb::Error {
                kind: pb::ErrorKind::Unspecified as i32,
                message: "changed my mind".into(),
                ..Default::default()
            }),
        ],
    )
    .await;
    assert!(outcome.contains("changed my mind"), "{outcome}");
    assert_eq!(kinds(&answers), ["Ready", "RestoreHeld", "Error"]);
    assert_eq!(
        criu.requests(),
        ["CPUINFO_CHECK", "RESTORE", "NOTIFY(no)"],
        "post-restore answered no: CRIU kills the restored copy"
    );
    assert_eq!(criu.open_operations(), 0);
}

#[tokio::test(start_paused = true)]
async fn restore_waits_for_complete_images_and_a_cpu_that_fits() {
    let criu = ScriptedCriu::new(Script::default());
    let (_, outcome, _tmp) = play(
        &criu,
        vec![begin("m3"), chunk("core-1.img", b"co", false), restore()],
    )
    .await;
    assert!(outcome.contains("every image file"), "{outcome}");
    assert!(!criu.requests().contains(&"RESTORE".to_string()));

    let criu = ScriptedCriu::new(Script {
        cpu_mismatch: true,
        ..Script::default()
    });
    let (answers, outcome, tmp) = play(&criu, vec![begin("m4")]).await;
    assert!(outcome.contains("this node's CPU cannot run"), "{outcome}");
    assert_eq!(kinds(&answers), ["Error"]);
    let kept: Vec<_> = std::fs::read_dir(tmp.path().join("img/m4"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        kept,
        ["cpuinfo"],
        "only the CPU check is kept (for its log) when the CPU does not fit"
    );
}

#[tokio::test(start_paused = true)]
async fn a_page_server_without_its_memory_channel_times_out_and_is_never_started() {
    let criu = ScriptedCriu::new(Script::default());
    let (answers, outcome, _tmp) = play(
        &criu,
        vec![
            begin("m5"),
            Body::StartPageServer(pb::StartPageServer { round: 0 }),
        ],
    )
    .await;
    assert!(
        outcome.contains("the memory channel for round 0 did not arrive"),
        "{outcome}"
    );
    assert_eq!(kinds(&answers), ["Ready", "Error"]);
    assert_eq!(criu.requests(), ["CPUINFO_CHECK"]);
}

#[tokio::test(start_paused = true)]
async fn image_names_that_leave_the_directory_are_refused() {
    for name in ["../escape.img", "/etc/passwd", "a/b.img", "..", ""] {
        let criu = ScriptedCriu::new(Script::default());
        let (_, outcome, tmp) = play(&criu, vec![begin("m6"), chunk(name, b"x", true)]).await;
        assert!(outcome.contains("refused"), "{name:?}: {outcome}");
        let outside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(outside, ["img"], "{name:?} wrote outside the image dir");
        assert!(!tmp.path().join("img/m6/escape.img").exists());
    }
}
