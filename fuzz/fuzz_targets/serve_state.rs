//! Arbitrary command sequences into the destination's state machine (`haul serve`'s side
//! of one authenticated control connection), with a scripted CRIU and virtual time. Whatever
//! the order, rounds, names and flags: no panic, no hang, nothing written outside the image
//! directory, every CRIU operation it started is finished, and RESTORE is asked of CRIU only
//! after a Begin that passed the CPU check.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use haul::criu::scripted::{Script, ScriptedCriu};
use haul::criu::Criu;
use haul::migrate::destination::{control_session, ServeConfig};
use haul::wire::frame::Conn;
use haul::wire::pb::{self, message::Body};
use haul::wire::Key;
use libfuzzer_sys::fuzz_target;

/// A command from the source, over a small domain so that sequences reach deep states.
#[derive(Arbitrary, Debug)]
enum Cmd {
    Begin { id: u8, newer_criu: bool, huge: bool },
    StartPageServer { round: u8 },
    EndPageServer { round: u8 },
    Chunk { round: u8, name: u8, offset: u8, data: Vec<u8>, last: bool },
    RawName { name: String, data: Vec<u8> },
    Restore { lazy: bool, tcp: bool },
    Resume,
    LazyDone,
    Finish { ok: bool },
    Error,
    /// A message that only the destination sends.
    Backwards,
    Empty,
    /// A dry run's Begin, with pre-flight requirements as the source would send them (or not
    /// quite: arbitrary text).
    DryBegin { id: u8, requirements: String },
    /// A bandwidth probe (its memory channel never comes here).
    Probe,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cpu_mismatch: bool,
    restore_fails: bool,
    cmds: Vec<Cmd>,
}

const NAMES: &[&str] = &[
    "core-1.img", "pstree.img", "pages-1.img", "../x.img", "", ".", "inventory.img", "a/b",
];

fn body(c: &Cmd) -> Option<Body> {
    Some(match c {
        Cmd::Begin { id, newer_criu, huge } => Body::Begin(pb::Begin {
            migration_id: if *id < 200 { format!("m{id}") } else { format!("../m{id}") },
            criu_version: Some(pb::CriuVersion {
                major: if *newer_criu { 9 } else { 4 },
                minor: 1,
                sublevel: 0,
            }),
            strategy: "stop-copy".into(),
            memory_bytes: if *huge { u64::MAX / 2 } else { 1 << 20 },
            cpuinfo: b"cpu".to_vec(),
            ..Default::default()
        }),
        Cmd::DryBegin { id, requirements } => Body::Begin(pb::Begin {
            migration_id: format!("d{id}"),
            criu_version: Some(pb::CriuVersion { major: 4, minor: 1, sublevel: 0 }),
            strategy: "auto".into(),
            memory_bytes: 1 << 20,
            cpuinfo: b"cpu".to_vec(),
            requirements_json: requirements.chars().take(4096).collect(),
            dry_run: true,
        }),
        Cmd::Probe => Body::Probe(pb::Probe { round: u32::MAX }),
        Cmd::StartPageServer { round } => {
            Body::StartPageServer(pb::StartPageServer { round: u32::from(*round % 4) })
        }
        Cmd::EndPageServer { round } => {
            Body::EndPageServer(pb::EndPageServer { round: u32::from(*round % 4) })
        }
        Cmd::Chunk { round, name, offset, data, last } => Body::ImageChunk(pb::ImageChunk {
            round: u32::from(*round % 3),
            name: NAMES[usize::from(*name) % NAMES.len()].into(),
            offset: u64::from(*offset),
            data: data.iter().take(4096).copied().collect(),
            last: *last,
        }),
        Cmd::RawName { name, data } => Body::ImageChunk(pb::ImageChunk {
            round: 0,
            name: name.clone(),
            offset: 0,
            data: data.iter().take(4096).copied().collect(),
            last: true,
        }),
        Cmd::Restore { lazy, tcp } => Body::Restore(pb::Restore {
            lazy: *lazy,
            tcp_established: *tcp,
            ..Default::default()
        }),
        Cmd::Resume => Body::Resume(pb::Resume {}),
        Cmd::LazyDone => Body::LazyDone(pb::LazyDone {}),
        Cmd::Finish { ok } => Body::Finish(pb::Finish { ok: *ok, reason: "fuzz".into() }),
        Cmd::Error => Body::Error(pb::Error { kind: 0, message: "fuzz".into(), ..Default::default() }),
        Cmd::Backwards => Body::Finished(pb::Finished {}),
        Cmd::Empty => return None,
    })
}

fuzz_target!(|input: Input| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let criu = ScriptedCriu::new(Script {
        cpu_mismatch: input.cpu_mismatch,
        restore_fails: input.restore_fails,
        restored_pid: 0,
        ..Script::default()
    });
    let cfg = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        key: Key::generate(),
        img_path: tmp.path().join("img"),
        criu: Criu::at("/nonexistent/criu"),
        max_migrations: None,
        // (no sync command is generated; were one, its trees stay in this directory)
        sync: haul::migrate::destination::sync::SyncServeOptions {
            root_prefix: Some(tmp.path().join("sync")),
            ..Default::default()
        },
    };
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 20);
        let service = Arc::new(criu.clone());
        let dst = tokio::spawn(async move {
            let _ = control_session(Conn::new(b), cfg, service).await;
        });
        let mut src = Conn::new(a);
        let cmds: Vec<Body> = input.cmds.iter().take(32).filter_map(body).collect();
        // The answers wait in the pipe's buffer; the source stays connected (silent once its
        // commands are out) until the destination gives up on it.
        let send = async {
            for m in cmds {
                if src.send(&pb::Message::of(m)).await.is_err() {
                    break;
                }
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(24 * 3600), async {
            send.await;
            dst.await
        })
        .await;
        assert!(ended.is_ok(), "the state machine hung");
    });
    assert_eq!(criu.open_operations(), 0, "a CRIU operation was never finished");
    let reqs = criu.requests();
    if let Some(i) = reqs.iter().position(|r| r == "RESTORE") {
        assert!(
            reqs[..i].iter().any(|r| r == "CPUINFO_CHECK") && !input.cpu_mismatch,
            "RESTORE without a CPU check that passed: {reqs:?}"
        );
    }
    let outside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        outside.is_empty() || outside == [std::ffi::OsString::from("img")],
        "something was written outside the image directory: {outside:?}"
    );
});
