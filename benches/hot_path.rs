//! The parts of a migration on haul's own hot path: frames, image streaming, stats parsing.
//!
//! `cargo bench --bench hot_path`. Image streaming is measured against a plain
//! `tokio::io::copy` of the same bytes over the same kind of socket: the ceiling.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use haul::criu::{pb as cpb, stats};
use haul::migrate::control::Control;
use haul::migrate::transfer::{send_images, ImageReceiver};
use haul::wire::frame::Conn;
use haul::wire::pb::{self, message::Body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn chunk(len: usize) -> pb::Message {
    pb::Message::of(Body::ImageChunk(pb::ImageChunk {
        round: 0,
        name: "pages-1.img".into(),
        offset: 0,
        data: vec![0x5a; len],
        last: false,
    }))
}

fn frames(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("frame");
    g.noise_threshold(0.05);
    for &len in &[64usize, 64 << 10, 1 << 20] {
        for tagged in [false, true] {
            g.throughput(Throughput::Bytes(len as u64));
            let id = format!(
                "roundtrip/{len}B/{}",
                if tagged { "tagged" } else { "plain" }
            );
            g.bench_function(id, |b| {
                let msg = chunk(len);
                b.to_async(&rt).iter_batched(
                    || {
                        let (a, bb) = tokio::io::duplex(4 << 20);
                        let (mut tx, mut rx) = (Conn::new(a), Conn::new(bb));
                        if tagged {
                            tx.enable_tags([1; 32], [2; 32]);
                            rx.enable_tags([2; 32], [1; 32]);
                        }
                        (tx, rx)
                    },
                    |(mut tx, mut rx)| {
                        let msg = msg.clone();
                        async move {
                            tx.send(&msg).await.unwrap();
                            rx.recv().await.unwrap()
                        }
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

fn image_streaming(c: &mut Criterion) {
    let rt = rt();
    let size = 64usize << 20;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("pages-1.img"), vec![7u8; size]).unwrap();
    let mut g = c.benchmark_group("image-stream");
    g.throughput(Throughput::Bytes(size as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("haul-frames/64MiB", |b| {
        b.to_async(&rt).iter_batched(
            || tempfile::tempdir().unwrap(),
            |dst| {
                let src = src.path().to_path_buf();
                async move {
                    let (a, bb) = tcp_pair().await;
                    let (mut tx, mut rx) = (Conn::new(a), Conn::new(bb));
                    tx.enable_tags([1; 32], [2; 32]);
                    let mut tx = Control::new(tx, "bench");
                    rx.enable_tags([2; 32], [1; 32]);
                    let recv = async {
                        let mut r = ImageReceiver::new(dst.path(), u64::MAX);
                        loop {
                            let Some(Body::ImageChunk(c)) = rx.recv().await.unwrap().body else {
                                panic!()
                            };
                            r.accept(&c).unwrap();
                            if c.last {
                                break;
                            }
                        }
                    };
                    let (sent, ()) = tokio::join!(send_images(&mut tx, &src, 0), recv);
                    assert_eq!(sent.unwrap(), size as u64);
                    dst
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("plain-copy-ceiling/64MiB", |b| {
        b.to_async(&rt).iter_batched(
            || tempfile::tempdir().unwrap(),
            |dst| {
                let src = src.path().join("pages-1.img");
                async move {
                    let (mut a, mut bb) = tcp_pair().await;
                    let send = async {
                        let mut f = tokio::fs::File::open(&src).await.unwrap();
                        tokio::io::copy(&mut f, &mut a).await.unwrap();
                        a.shutdown().await.unwrap();
                    };
                    let recv = async {
                        let mut f = tokio::fs::File::create(dst.path().join("pages-1.img"))
                            .await
                            .unwrap();
                        let mut buf = vec![0u8; 1 << 20];
                        loop {
                            let n = bb.read(&mut buf).await.unwrap();
                            if n == 0 {
                                break;
                            }
                            f.write_all(&buf[..n]).await.unwrap();
                        }
                        f.flush().await.unwrap();
                    };
                    tokio::join!(send, recv);
                    dst
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn stats_parsing(c: &mut Criterion) {
    let bytes = stats::encode(&cpb::StatsEntry {
        dump: Some(cpb::DumpStatsEntry {
            freezing_time: 1234,
            frozen_time: 567_890,
            memdump_time: 1000,
            memwrite_time: 2000,
            pages_scanned: 65_536,
            pages_skipped_parent: 60_000,
            pages_written: 5536,
            pages_lazy: 0,
            ..Default::default()
        }),
        restore: None,
    });
    c.bench_function("stats/parse-dump", |b| {
        b.iter(|| stats::parse(std::hint::black_box(&bytes)).unwrap())
    });
}

criterion_group! {
    name = benches;
    // criterion's own plots need system fonts; haul's plots come from the harness.
    config = Criterion::default().without_plots();
    targets = frames, image_streaming, stats_parsing
}
criterion_main!(benches);
