//! Property tests: every encoder/decoder pair of haul's public API gives back what it was
//! given. The unit tests inside src/ cover the frame header and a one-variant message
//! (src/wire/frame.rs) and a dump-only stats image (src/criu/stats.rs); this file covers the
//! rest through the public API:
//!
//! - every `pb::Message` variant, through prost and through framed connections (plain and
//!   HMAC-tagged, several in a row); a header the decoder accepts re-encodes to the same bytes;
//! - CRIU's stats images with both entries and every optional field;
//! - the handshake: the purpose the client asked for is the one the server returns;
//! - key files: the bytes written are the bytes read;
//! - image directories: `send_images` then `ImageReceiver` rebuild the images exactly;
//! - `CriuVersion` <-> its wire form, `TreeOptions` -> CRIU's `criu_opts` -> bytes -> back;
//! - strategy names (CLI, `Display`, serde) and the JSON report (`report.json`).

use std::path::Path;

use haul::criu::options::PreDumpMode;
use haul::criu::options::{self, TreeOptions};
use haul::criu::{stats, CriuVersion, DumpStats, Features, RestoreStats};
use haul::migrate::control::Control;
use haul::migrate::converge::{OnTimeout, ThrottleLevel, MAX_PERCENT};
use haul::migrate::images::{new_migration_id, valid_migration_id};
use haul::migrate::report::{FinalDumpParts, MigrationReport, RoundReport};
use haul::migrate::strategy::Strategy as Migration;
use haul::migrate::transfer::{is_image, send_images, ImageReceiver, CHUNK};
use haul::sync::stats::{SyncReport, SyncRoundReport};
use haul::throttle::ThrottleReport;
use haul::wire::auth::{self, Purpose};
use haul::wire::frame::{Conn, Header, HEADER_LEN};
use haul::wire::names::MAX_NAME;
use haul::wire::pb::{self, message::Body};
use haul::wire::Key;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::strategy::Union;
use prost::Message as _;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

/// Any f64 but NaN (NaN != NaN; prost carries it bit for bit all the same).
fn not_nan() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN", |f| !f.is_nan())
}

fn wire_criu_version() -> impl Strategy<Value = pb::CriuVersion> {
    (any::<i32>(), any::<i32>(), any::<i32>()).prop_map(|(major, minor, sublevel)| {
        pb::CriuVersion {
            major,
            minor,
            sublevel,
        }
    })
}

fn memory_purpose() -> impl Strategy<Value = pb::MemoryPurpose> {
    (text(), any::<u32>(), any::<bool>()).prop_map(|(migration_id, round, lazy)| {
        pb::MemoryPurpose {
            migration_id,
            round,
            lazy,
        }
    })
}

/// Every body of `pb::Message`, with arbitrary fields.
fn body() -> impl Strategy<Value = Body> {
    let purpose = prop_oneof![
        Just(pb::hello::Purpose::Control(pb::ControlPurpose {})),
        memory_purpose().prop_map(pb::hello::Purpose::Memory),
    ];
    let restore_stats = (
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(a, b, c, d, e)| pb::RestoreStats {
            pages_compared: a,
            pages_skipped_cow: b,
            forking_time_us: c,
            restore_time_us: d,
            pages_restored: e,
        });
    Union::new(vec![
        (any::<u32>(), bytes(64), option::of(purpose))
            .prop_map(|(version, client_nonce, purpose)| {
                Body::Hello(pb::Hello {
                    version,
                    client_nonce,
                    purpose,
                })
            })
            .boxed(),
        (any::<u32>(), bytes(64))
            .prop_map(|(version, server_nonce)| {
                Body::Challenge(pb::Challenge {
                    version,
                    server_nonce,
                })
            })
            .boxed(),
        bytes(64)
            .prop_map(|mac| Body::Proof(pb::Proof { mac }))
            .boxed(),
        bytes(64)
            .prop_map(|mac| Body::Welcome(pb::Welcome { mac }))
            .boxed(),
        (
            text(),
            option::of(wire_criu_version()),
            text(),
            any::<u64>(),
            bytes(4096),
            (text(), any::<bool>()),
        )
            .prop_map(
                |(
                    migration_id,
                    criu_version,
                    strategy,
                    memory_bytes,
                    cpuinfo,
                    (requirements_json, dry_run),
                )| {
                    Body::Begin(pb::Begin {
                        migration_id,
                        criu_version,
                        strategy,
                        memory_bytes,
                        cpuinfo,
                        requirements_json,
                        dry_run,
                    })
                },
            )
            .boxed(),
        (
            option::of(wire_criu_version()),
            option::of((any::<bool>(), any::<bool>(), any::<bool>())),
            any::<u64>(),
            text(),
            text(),
        )
            .prop_map(|(criu_version, f, free_bytes, img_dir, findings_json)| {
                Body::Ready(pb::Ready {
                    criu_version,
                    features: f.map(|(mem_track, lazy_pages, file_sync)| pb::Features {
                        mem_track,
                        lazy_pages,
                        file_sync,
                    }),
                    free_bytes,
                    img_dir,
                    findings_json,
                })
            })
            .boxed(),
        any::<u32>()
            .prop_map(|round| Body::Probe(pb::Probe { round }))
            .boxed(),
        (any::<u64>(), not_nan())
            .prop_map(|(bytes, secs)| Body::ProbeDone(pb::ProbeDone { bytes, secs }))
            .boxed(),
        any::<u32>()
            .prop_map(|round| Body::StartPageServer(pb::StartPageServer { round }))
            .boxed(),
        any::<u32>()
            .prop_map(|round| Body::PageServerStarted(pb::PageServerStarted { round }))
            .boxed(),
        any::<u32>()
            .prop_map(|round| Body::EndPageServer(pb::EndPageServer { round }))
            .boxed(),
        (any::<u32>(), any::<u64>())
            .prop_map(|(round, bytes)| {
                Body::PageServerEnded(pb::PageServerEnded {
                    round,
                    bytes,
                    pagemaps: vec![pb::ImageFile {
                        name: "pagemap-1.img".into(),
                        data: vec![1, 2, 3],
                    }],
                })
            })
            .boxed(),
        (
            any::<u32>(),
            text(),
            any::<u64>(),
            bytes(8192),
            any::<bool>(),
        )
            .prop_map(|(round, name, offset, data, last)| {
                Body::ImageChunk(pb::ImageChunk {
                    round,
                    name,
                    offset,
                    data,
                    last,
                })
            })
            .boxed(),
        (any::<[bool; 7]>(), any::<u32>())
            .prop_map(
                |(
                    [lazy, tcp_established, shell_job, file_locks, ext_unix_sk, hold_until_complete, early],
                    memory_streams,
                )| {
                    Body::Restore(pb::Restore {
                        lazy,
                        tcp_established,
                        shell_job,
                        file_locks,
                        ext_unix_sk,
                        memory_streams,
                        hold_until_complete,
                        early,
                    })
                },
            )
            .boxed(),
        any::<i32>()
            .prop_map(|pid| Body::RestoreHeld(pb::RestoreHeld { pid }))
            .boxed(),
        Just(Body::Resume(pb::Resume {})).boxed(),
        (any::<i32>(), option::of(restore_stats), not_nan())
            .prop_map(|(pid, stats, restore_wall_secs)| {
                Body::Restored(pb::Restored {
                    pid,
                    stats,
                    restore_wall_secs,
                })
            })
            .boxed(),
        Just(Body::LazyDone(pb::LazyDone {})).boxed(),
        (any::<bool>(), text())
            .prop_map(|(ok, detail)| Body::LazyFinished(pb::LazyFinished { ok, detail }))
            .boxed(),
        (any::<bool>(), text())
            .prop_map(|(ok, reason)| Body::Finish(pb::Finish { ok, reason }))
            .boxed(),
        Just(Body::Finished(pb::Finished {})).boxed(),
        any::<u32>()
            .prop_map(|round| Body::ImagesDone(pb::ImagesDone { round }))
            .boxed(),
        // any i32: an ErrorKind this build does not know must survive too (proto3 enums are open)
        (any::<i32>(), text(), text(), text())
            .prop_map(|(kind, message, findings_json, diagnosis_json)| {
                Body::Error(pb::Error {
                    kind,
                    message,
                    findings_json,
                    diagnosis_json,
                })
            })
            .boxed(),
    ])
}

fn message() -> impl Strategy<Value = pb::Message> {
    body().prop_map(pb::Message::of)
}

/// The `oneof body` fields of `Message` in wire.proto, as `kind_name` spells them.
fn bodies_in_proto() -> Vec<String> {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/haul/wire.proto"
    ))
    .unwrap();
    let start = proto.find("message Message {").expect("message Message");
    let block = &proto[start..];
    let block = &block[block.find("oneof body {").expect("oneof body")..];
    let block = &block[..block.find('}').unwrap()];
    block
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let field = l.split_whitespace().nth(1)?;
            l.ends_with(';').then(|| {
                field
                    .split('_')
                    .map(|w| w[..1].to_uppercase() + &w[1..])
                    .collect::<String>()
            })
        })
        .collect()
}

#[test]
fn the_generator_covers_every_message_of_the_protocol() {
    use proptest::strategy::ValueTree;
    let want = bodies_in_proto();
    assert!(want.len() >= 20, "{want:?}");
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5000 {
        seen.insert(
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .kind_name(),
        );
    }
    let missing: Vec<_> = want.iter().filter(|w| !seen.contains(w.as_str())).collect();
    assert!(
        missing.is_empty(),
        "wire.proto messages with no generator in body(): {missing:?}"
    );
}

proptest! {
    #[test]
    fn every_message_round_trips_through_prost(msg in message()) {
        let bytes = msg.encode_to_vec();
        prop_assert_eq!(pb::Message::decode(bytes.as_slice()).unwrap(), msg);
    }

    #[test]
    fn an_accepted_header_re_encodes_to_the_same_bytes(raw in any::<[u8; HEADER_LEN]>()) {
        if let Ok(h) = Header::decode(&raw) {
            prop_assert_eq!(h.encode(), raw);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn message_sequences_round_trip_through_frames(
        msgs in vec(message(), 1..6),
        tagged in any::<bool>(),
    ) {
        rt().block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (mut tx, mut rx) = (Conn::new(a), Conn::new(b));
            if tagged {
                tx.enable_tags([1; 32], [2; 32]);
                rx.enable_tags([2; 32], [1; 32]);
            }
            let sent = msgs.clone();
            let send = async move {
                for m in &sent {
                    tx.send(m).await.unwrap();
                }
                tx
            };
            let recv = async {
                let mut got = Vec::new();
                for _ in 0..msgs.len() {
                    got.push(rx.recv().await.unwrap());
                }
                got
            };
            let (_tx, got) = tokio::join!(send, recv);
            assert_eq!(got, msgs);
        });
    }

    #[test]
    fn stats_images_round_trip(
        dump in option::of((any::<[u32; 4]>(), any::<[u64; 4]>(), option::of(any::<u32>()), any::<[Option<u64>; 5]>())),
        restore in option::of((any::<[u64; 2]>(), any::<[u32; 2]>(), option::of(any::<u64>()))),
    ) {
        let entry = haul::criu::pb::StatsEntry {
            dump: dump.map(|(t, p, irmap, [pp, ppb, shs, shsp, shw])| haul::criu::pb::DumpStatsEntry {
                freezing_time: t[0],
                frozen_time: t[1],
                memdump_time: t[2],
                memwrite_time: t[3],
                pages_scanned: p[0],
                pages_skipped_parent: p[1],
                pages_written: p[2],
                irmap_resolve: irmap,
                pages_lazy: p[3],
                page_pipes: pp,
                page_pipe_bufs: ppb,
                shpages_scanned: shs,
                shpages_skipped_parent: shsp,
                shpages_written: shw,
            }),
            restore: restore.map(|(p, t, restored)| haul::criu::pb::RestoreStatsEntry {
                pages_compared: p[0],
                pages_skipped_cow: p[1],
                forking_time: t[0],
                restore_time: t[1],
                pages_restored: restored,
            }),
        };
        let parsed = stats::parse(&stats::encode(&entry)).unwrap();
        prop_assert_eq!(&parsed, &entry);
        // and what haul reads out of them is what CRIU wrote
        if let Some(d) = parsed.dump {
            let s = DumpStats::from(d);
            let d = entry.dump.unwrap();
            prop_assert_eq!(
                (s.freezing_time_us, s.frozen_time_us, s.memdump_time_us, s.memwrite_time_us),
                (d.freezing_time, d.frozen_time, d.memdump_time, d.memwrite_time)
            );
            prop_assert_eq!(
                (s.pages_scanned, s.pages_skipped_parent, s.pages_written, s.pages_lazy),
                (d.pages_scanned, d.pages_skipped_parent, d.pages_written, d.pages_lazy)
            );
        }
        if let Some(r) = parsed.restore {
            let s = RestoreStats::from(r);
            let r = entry.restore.unwrap();
            prop_assert_eq!(
                (s.pages_compared, s.pages_skipped_cow, s.forking_time_us, s.restore_time_us, s.pages_restored),
                (r.pages_compared, r.pages_skipped_cow, r.forking_time, r.restore_time, r.pages_restored.unwrap_or(0))
            );
        }
    }

    #[test]
    fn the_server_gets_the_purpose_the_client_asked_for(
        memory in option::of(memory_purpose()),
        key in any::<[u8; 32]>(),
        after in message(),
    ) {
        let purpose = match memory {
            Some(m) => Purpose::Memory(m),
            None => Purpose::Control,
        };
        let key = Key::from_bytes(key);
        let got = rt().block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (mut c, mut s) = (Conn::new(a), Conn::new(b));
            let (rc, rs) = tokio::join!(
                auth::client(&mut c, &key, purpose.clone()),
                auth::server(&mut s, &key)
            );
            rc.unwrap();
            // tagged frames flow both ways after it
            c.send(&after).await.unwrap();
            assert_eq!(s.recv().await.unwrap(), after);
            s.send(&after).await.unwrap();
            assert_eq!(c.recv().await.unwrap(), after);
            rs.unwrap()
        });
        prop_assert_eq!(got, purpose);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn key_files_give_back_the_key_written(bytes in any::<[u8; 32]>()) {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("k1"), dir.path().join("k2"));
        Key::from_bytes(bytes).write_new(&first).unwrap();
        let text = std::fs::read_to_string(&first).unwrap();
        prop_assert_eq!(&text, &format!("haul-key-v1 {}\n", hex::encode(bytes)));
        Key::load(&first).unwrap().write_new(&second).unwrap();
        prop_assert_eq!(std::fs::read_to_string(&second).unwrap(), text);
    }

    /// Image files (names up to the limit, sizes around the chunk size) sent by `send_images`
    /// and written by `ImageReceiver` come out identical; logs and stats stay behind.
    #[test]
    fn image_directories_round_trip(
        files in proptest::collection::btree_map(
            "[a-z0-9_.-]{1,128}".prop_filter("an image name", |n| n != "." && n != ".." && is_image(n)),
            prop_oneof![0usize..5000, (CHUNK - 1)..=(CHUNK + 1), (2 * CHUNK)..(2 * CHUNK + 3)],
            1..5,
        ),
        seed in any::<u8>(),
        round in any::<u32>(),
    ) {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let content = |name: &str, len: usize| -> Vec<u8> {
            let salt = name.len() as u8 ^ seed;
            (0..len).map(|i| (i as u8).wrapping_mul(31) ^ salt ^ (i >> 12) as u8).collect()
        };
        for (name, &len) in &files {
            prop_assert!(name.len() <= MAX_NAME);
            std::fs::write(src.path().join(name), content(name, len)).unwrap();
        }
        std::fs::write(src.path().join("dump.log"), b"stays").unwrap();
        std::fs::write(src.path().join("stats-dump"), b"stays").unwrap();
        let (sent, received) = rt().block_on(async {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (mut tx, mut rx) = (Control::new(Conn::new(a), "test"), Conn::new(b));
            let send = send_images(&mut tx, src.path(), round);
            let recv = async {
                let mut r = ImageReceiver::new(dst.path(), u64::MAX);
                let mut done = 0;
                while done < files.len() {
                    let m = rx.recv().await.unwrap();
                    let Some(Body::ImageChunk(c)) = m.body else {
                        panic!("not an image chunk: {}", m.kind_name())
                    };
                    assert_eq!(c.round, round);
                    r.accept(&c).unwrap();
                    done += usize::from(c.last);
                }
                assert!(r.complete());
                r.total()
            };
            let (sent, got) = tokio::join!(send, recv);
            (sent.unwrap(), got)
        });
        let total: usize = files.values().sum();
        prop_assert_eq!(sent, total as u64);
        prop_assert_eq!(received, total as u64);
        prop_assert_eq!(listing(dst.path()), files.keys().cloned().collect::<Vec<_>>());
        for (name, &len) in &files {
            prop_assert!(std::fs::read(dst.path().join(name)).unwrap() == content(name, len), "{name} differs");
        }
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Equal JSON values, floats to within a relative 1e-14 (a few ulps).
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= 1e-14 * x.abs().max(y.abs())
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn criu_version() -> impl Strategy<Value = CriuVersion> {
    (any::<i32>(), any::<i32>(), any::<i32>()).prop_map(|(major, minor, sublevel)| CriuVersion {
        major,
        minor,
        sublevel,
    })
}

fn tree_options() -> impl Strategy<Value = TreeOptions> {
    any::<[bool; 5]>().prop_map(
        |[tcp_established, shell_job, file_locks, link_remap, ext_unix_sk]| TreeOptions {
            tcp_established,
            shell_job,
            file_locks,
            link_remap,
            ext_unix_sk,
        },
    )
}

fn migration_strategy() -> impl Strategy<Value = Migration> {
    proptest::sample::select(vec![
        Migration::StopCopy,
        Migration::PreCopy,
        Migration::PostCopy,
        Migration::Hybrid,
        Migration::Auto,
    ])
}

/// A finite f64 (JSON has no NaN or infinity: serde_json writes them as `null`).
fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

fn dump_stats() -> impl Strategy<Value = DumpStats> {
    (any::<[u32; 4]>(), any::<[u64; 4]>()).prop_map(|(t, p)| DumpStats {
        freezing_time_us: t[0],
        frozen_time_us: t[1],
        memdump_time_us: t[2],
        memwrite_time_us: t[3],
        pages_scanned: p[0],
        pages_skipped_parent: p[1],
        pages_written: p[2],
        pages_lazy: p[3],
    })
}

fn restore_stats() -> impl Strategy<Value = RestoreStats> {
    (any::<[u64; 3]>(), any::<[u32; 2]>()).prop_map(|(p, t)| RestoreStats {
        pages_compared: p[0],
        pages_skipped_cow: p[1],
        forking_time_us: t[0],
        restore_time_us: t[1],
        pages_restored: p[2],
    })
}

fn level() -> impl Strategy<Value = ThrottleLevel> {
    (0u8..=MAX_PERCENT).prop_map(|p| ThrottleLevel::new(p).unwrap())
}

fn pre_dump_mode() -> impl Strategy<Value = PreDumpMode> {
    prop_oneof![Just(PreDumpMode::Splice), Just(PreDumpMode::Read)]
}

fn report() -> impl Strategy<Value = MigrationReport> {
    let round = (
        (any::<u32>(), dump_stats(), any::<u64>(), vec(finite(), 6)),
        (level(), option::of(finite()), option::of(level())),
        (option::of(pre_dump_mode()), text()),
    )
        .prop_map(
            |((round, stats, bytes, f), (throttle, rate, rate_level), (mode, verdict))| {
                RoundReport {
                    round,
                    stats,
                    bytes,
                    secs: f[0],
                    bandwidth: f[1],
                    est_downtime_secs: f[2],
                    est_memory_secs: rate,
                    est_frozen_secs: rate.map(|r| r / 2.0),
                    write_rate: rate.map(|r| r * 2.0),
                    rest_secs: rate.map(|r| r / 3.0),
                    link_bandwidth: f[4],
                    fixed_secs: f[5],
                    throttle,
                    dirty_rate: rate,
                    dirty_rate_throttle: rate_level,
                    frozen_secs: f[3],
                    pre_dump_mode: mode,
                    verdict,
                }
            },
        );
    let throttle = (
        text(),
        level(),
        level(),
        option::of(finite()),
        vec(text(), 0..2),
    )
        .prop_map(
            |(mechanism, level, max_level, baseline_cpus, warnings)| ThrottleReport {
                mechanism,
                cgroup: "/sys/fs/cgroup/haul-x".into(),
                baseline_cpus,
                level,
                max_level,
                processes: 1,
                threads: 2,
                warnings,
                ..Default::default()
            },
        );
    (
        (text(), any::<i32>(), any::<i32>(), vec(text(), 5)),
        (option::of(criu_version()), option::of(criu_version())),
        (vec(finite(), 6), option::of(finite())),
        (dump_stats(), restore_stats(), vec(round, 0..4)),
        (any::<[u64; 3]>(), vec(text(), 0..3)),
        (
            option::of(text()),
            option::of(throttle),
            option::of(pre_dump_mode()),
            option::of(text()),
            option::of(sync_report()),
        ),
    )
        .prop_map(|(ids, criu, secs, stats, counts, pre)| {
            let (migration_id, pid, destination_pid, t) = ids;
            MigrationReport {
                migration_id,
                pid,
                destination_pid,
                destination: t[0].clone(),
                strategy_requested: t[1].clone(),
                strategy: t[2].clone(),
                strategy_reason: t[3].clone(),
                source_criu: criu.0,
                destination_criu: criu.1,
                total_secs: secs.0[0],
                frozen_secs: secs.0[1],
                restore_secs: secs.0[2],
                downtime_secs: secs.0[3],
                restore_wall_secs: secs.0[4],
                final_parts: secs.1.map(|s| FinalDumpParts {
                    until_pre_dump_secs: Some(s / 5.0),
                    dump_secs: s,
                    handoff_secs: s / 7.0,
                    restore_call_secs: s * 3.0,
                }),
                postcopy_window_secs: secs.1,
                dump: stats.0,
                restore: stats.1,
                rounds: stats.2,
                convergence: t[4].clone(),
                pages_sent: counts.0[0],
                memory_bytes_sent: counts.0[1],
                image_bytes_sent: counts.0[2],
                source_img_dir: t[0].clone(),
                destination_img_dir: t[1].clone(),
                warnings: counts.1,
                started_at_unix: secs.0[5],
                fallback: pre.0,
                throttle_setting: t[2].clone(),
                throttle: pre.1,
                throttle_note: t[3].clone(),
                pre_dump_mode: pre.2,
                failure: pre.3,
                sync: pre.4,
                dry_run: false,
                preflight: None,
                memory_path: t[2].clone(),
            }
        })
}

fn sync_report() -> impl Strategy<Value = SyncReport> {
    let round = (
        any::<u32>(),
        any::<bool>(),
        any::<[u64; 8]>(),
        vec(finite(), 4),
    )
        .prop_map(|(round, final_round, n, f)| SyncRoundReport {
            round,
            final_round,
            files: n[0],
            entries: n[1],
            removed: n[2],
            payload_bytes: n[3],
            literal_bytes: n[4],
            delta_bytes: n[5],
            wire_bytes: n[6],
            written_bytes: n[7],
            scan_secs: f[0],
            secs: f[1],
            apply_secs: f[2],
            install_secs: f[3],
        });
    (
        vec(text(), 0..3),
        any::<[u64; 2]>(),
        vec(round, 0..4),
        text(),
        vec(finite(), 2),
        option::of(finite()),
    )
        .prop_map(|(roots, n, rounds, decision, f, share)| SyncReport {
            roots,
            data_bytes: n[0],
            entries: n[1],
            rounds,
            decision,
            final_round_secs: f[0],
            frozen_before_final_secs: f[1],
            final_share_of_downtime: share,
        })
}

proptest! {
    #[test]
    fn criu_versions_round_trip_through_the_wire_form(v in criu_version(), w in wire_criu_version()) {
        prop_assert_eq!(CriuVersion::from(pb::CriuVersion::from(v)), v);
        prop_assert_eq!(pb::CriuVersion::from(CriuVersion::from(w)), w);
    }

    /// `TreeOptions` -> `criu_opts` -> the bytes CRIU reads -> `criu_opts`: every option
    /// CRIU gets is the one asked for.
    #[test]
    fn tree_options_reach_criu_unchanged(
        t in tree_options(),
        fd in any::<i32>(),
        log in "[a-z.-]{1,20}",
        ps_fd in option::of(any::<i32>()),
    ) {
        let mut opts = options::base(fd, &log);
        t.apply(&mut opts);
        if let Some(p) = ps_fd {
            options::page_server_fd(&mut opts, p);
        }
        let back = haul::criu::pb::CriuOpts::decode(opts.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(&back, &opts);
        let on = |o: Option<bool>| o == Some(true);
        prop_assert_eq!(
            TreeOptions {
                tcp_established: on(back.tcp_established),
                shell_job: on(back.shell_job),
                file_locks: on(back.file_locks),
                link_remap: on(back.link_remap),
                ext_unix_sk: on(back.ext_unix_sk),
            },
            t.clone()
        );
        prop_assert_eq!(back.images_dir_fd, fd);
        prop_assert_eq!(back.log_file.as_deref(), Some(log.as_str()));
        prop_assert_eq!(back.ps.and_then(|p| p.fd), ps_fd);
        prop_assert_eq!(on(back.tcp_skip_in_flight), t.tcp_established);
    }

    /// A strategy's CLI name, `Display` and JSON name agree, and parse back to it; any string
    /// that parses names a strategy whose canonical name parses to the same.
    #[test]
    fn strategy_names_round_trip(s in migration_strategy(), other in "\\PC{0,16}") {
        prop_assert_eq!(s.name().parse::<Migration>(), Ok(s));
        prop_assert_eq!(s.to_string(), s.name());
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(&json, &format!("\"{}\"", s.name()));
        prop_assert_eq!(serde_json::from_str::<Migration>(&json).unwrap(), s);
        if let Ok(p) = other.parse::<Migration>() {
            prop_assert_eq!(p.name().parse::<Migration>(), Ok(p));
        }
    }

    #[test]
    fn on_timeout_names_agree(cancel in any::<bool>()) {
        let o = if cancel { OnTimeout::Cancel } else { OnTimeout::Proceed };
        let json = serde_json::to_string(&o).unwrap();
        prop_assert_eq!(json.trim_matches('"').parse::<OnTimeout>(), Ok(o));
        prop_assert_eq!(serde_json::from_str::<OnTimeout>(&json).unwrap(), o);
    }

    #[test]
    fn migration_ids_are_valid_directory_names(pid in any::<i32>()) {
        let id = new_migration_id(pid);
        prop_assert!(valid_migration_id(&id), "{}", id);
    }

    /// `report.json` (written with `to_vec_pretty`) reads back to the same report: integers
    /// and strings exactly, floats to within a few ulps: serde_json without its
    /// `float_roundtrip` feature may read a float back slightly off (seen: 7.610013458421651e230
    /// as 7.6100134584216504e230, 9.425738434050519e-268 as 9.425738434050521e-268).
    #[test]
    fn reports_round_trip_through_json(r in report()) {
        let json = serde_json::to_vec_pretty(&r).unwrap();
        let back: MigrationReport = serde_json::from_slice(&json).unwrap();
        let (want, got) = (serde_json::to_value(&r).unwrap(), serde_json::to_value(&back).unwrap());
        prop_assert!(same_json(&want, &got), "wrote {}\nread  {}", want, got);
        prop_assert_eq!(back.dump, r.dump);
        prop_assert_eq!(back.restore, r.restore);
    }

    #[test]
    fn small_serde_types_round_trip(
        f in any::<[bool; 2]>(),
        t in tree_options(),
        v in criu_version(),
        d in dump_stats(),
        r in restore_stats(),
    ) {
        let f = Features { mem_track: f[0], lazy_pages: f[1] };
        fn again<T: serde::Serialize + serde::de::DeserializeOwned>(x: &T) -> T {
            serde_json::from_str(&serde_json::to_string(x).unwrap()).unwrap()
        }
        prop_assert_eq!(again(&f), f);
        prop_assert_eq!(again(&t), t);
        prop_assert_eq!(again(&v), v);
        prop_assert_eq!(again(&d), d);
        prop_assert_eq!(again(&r), r);
    }
}

#[test]
fn an_image_chunk_of_full_size_with_the_longest_name_fits_in_a_frame() {
    // send_images' largest message: CHUNK bytes of data and a MAX_NAME-byte name
    let msg = pb::Message::of(Body::ImageChunk(pb::ImageChunk {
        round: u32::MAX,
        name: "n".repeat(MAX_NAME),
        offset: u64::MAX,
        data: vec![0xa5; CHUNK],
        last: true,
    }));
    rt().block_on(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut tx, mut rx) = (Conn::new(a), Conn::new(b));
        tx.enable_tags([5; 32], [6; 32]);
        rx.enable_tags([6; 32], [5; 32]);
        let expect = msg.clone();
        let send = async move { tx.send(&msg).await.map(drop) };
        let (sent, got) = tokio::join!(send, rx.recv());
        sent.unwrap();
        assert_eq!(got.unwrap(), expect);
    });
}
