//! Hostile input to a real `haul serve` on loopback: each probe gets a clear refusal, the
//! service keeps serving, and nothing is written outside its image directory.
//!
//! Needs root and CRIU >= 4.1 (the service checks CRIU at start); reported as ignored otherwise.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{keygen, HAUL};
use haul::wire::auth::{self, Purpose};
use haul::wire::frame::Conn;
use haul::wire::pb::{self, message::Body};
use haul::wire::Key;

struct Serve {
    child: Child,
    addr: String,
}
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(key: &Path, img: &Path, log: &Path) -> Serve {
    let port = 28000 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(HAUL)
        .args(["serve", "--listen", &addr])
        .arg("--key")
        .arg(key)
        .arg("--img-path")
        .arg(img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while StdStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "haul serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve { child, addr }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The service is alive, small, and authenticates a good client.
async fn still_serving(s: &mut Serve, key: &Key) {
    assert!(s.child.try_wait().unwrap().is_none(), "haul serve died");
    let rss = rss_kib(s.child.id());
    assert!(rss < 256 * 1024, "haul serve uses {rss} KiB");
    let stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut c = Conn::new(stream);
    auth::client(&mut c, key, Purpose::Control)
        .await
        .expect("a good client is still served");
}

async fn authed(s: &Serve, key: &Key) -> Conn<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let mut c = Conn::new(stream);
    auth::client(&mut c, key, Purpose::Control).await.unwrap();
    c
}

fn expect_error(m: Result<pb::Message, haul::wire::FrameError>, what: &str) -> String {
    match m {
        Ok(pb::Message {
            body: Some(Body::Error(e)),
        }) => e.message,
        other => panic!("{what}: expected an Error message, got {other:?}"),
    }
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn the_service_survives_hostile_input_and_writes_only_in_its_directory() {
    skip_unless_runnable!();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(probes());
}

async fn probes() {
    let tmp = tempfile::tempdir().unwrap();
    let keyfile = keygen(tmp.path(), "key");
    let key = Key::load(&keyfile).unwrap();
    let img = tmp.path().join("img");
    let mut s = start(&keyfile, &img, &tmp.path().join("serve.log"));

    // 1. 64 KiB of noise: not a haul frame.
    {
        let mut c = StdStream::connect(&s.addr).unwrap();
        let noise: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = c.write_all(&noise);
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap_or(0);
        // it either says why (an Error frame) or closes; it never waits for more
        assert!(
            n == 0 || buf.starts_with(b"HL"),
            "unexpected answer to noise"
        );
    }
    still_serving(&mut s, &key).await;

    // 2. A frame that claims 4 GiB: refused before anything is allocated.
    {
        let mut c = StdStream::connect(&s.addr).unwrap();
        c.write_all(b"HL\x01\x00\xff\xff\xff\xff").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let _ = c.read(&mut buf);
    }
    still_serving(&mut s, &key).await;

    // 3. A command before authentication, and a half-closed connection.
    {
        let stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let mut c = Conn::new(stream);
        c.send(&pb::Message::of(Body::Restore(pb::Restore::default())))
            .await
            .unwrap();
        let msg = expect_error(c.recv().await, "command before Hello");
        assert!(msg.contains("expected Hello"), "{msg}");
        let half = StdStream::connect(&s.addr).unwrap();
        half.shutdown(std::net::Shutdown::Write).unwrap();
    }
    still_serving(&mut s, &key).await;

    // 4. The wrong key.
    {
        let stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
        let mut c = Conn::new(stream);
        let r = auth::client(&mut c, &Key::generate(), Purpose::Control).await;
        assert!(
            matches!(r, Err(auth::AuthError::Refused(ref m)) if m.contains("authentication failed")),
            "{r:?}"
        );
    }
    still_serving(&mut s, &key).await;

    // 5. Authenticated, but commands in the wrong state.
    {
        let mut c = authed(&s, &key).await;
        c.send(&pb::Message::of(Body::Restore(pb::Restore::default())))
            .await
            .unwrap();
        let msg = expect_error(c.recv().await, "Restore before Begin");
        assert!(msg.contains("is not valid in state Connected"), "{msg}");
    }
    {
        let mut c = authed(&s, &key).await;
        c.send(&pb::Message::of(Body::Begin(pb::Begin {
            migration_id: "../../etc".into(),
            ..Default::default()
        })))
        .await
        .unwrap();
        let msg = expect_error(c.recv().await, "a migration id with a path");
        assert!(msg.contains("invalid migration id"), "{msg}");
    }
    still_serving(&mut s, &key).await;

    // 6. Image names that leave the directory, after a valid Begin (with a CPU description the
    //    destination accepts: its own).
    for bad in ["../escape.img", "/tmp/escape.img", "..", "a/b.img"] {
        let mut c = authed(&s, &key).await;
        let cpu = tmp.path().join("cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        let d = std::fs::File::open(&cpu).unwrap();
        let (criu, v) = haul::criu::Criu::locate_checked().await.unwrap();
        criu.cpuinfo_dump(
            haul::criu::options::base(std::os::fd::AsRawFd::as_raw_fd(&d), "c.log"),
            None,
        )
        .await
        .unwrap();
        c.send(&pb::Message::of(Body::Begin(pb::Begin {
            migration_id: format!("probe-{}", bad.len()),
            criu_version: Some(v.into()),
            strategy: "stop-copy".into(),
            memory_bytes: 0,
            cpuinfo: std::fs::read(cpu.join("cpuinfo.img")).unwrap(),
            ..Default::default()
        })))
        .await
        .unwrap();
        match c.recv().await.unwrap().body {
            Some(Body::Ready(_)) => {}
            other => panic!("Begin refused: {other:?}"),
        }
        c.send(&pb::Message::of(Body::ImageChunk(pb::ImageChunk {
            round: 0,
            name: bad.into(),
            offset: 0,
            data: b"payload".to_vec(),
            last: true,
        })))
        .await
        .unwrap();
        let msg = expect_error(c.recv().await, bad);
        assert!(msg.contains("refused"), "{bad}: {msg}");
    }
    assert!(!tmp.path().join("escape.img").exists());
    assert!(!Path::new("/tmp/escape.img").exists());
    still_serving(&mut s, &key).await;

    // 7. A flood: 300 idle connections at once; a good client is still served meanwhile.
    {
        let mut idle = Vec::new();
        for _ in 0..300 {
            if let Ok(c) = StdStream::connect(&s.addr) {
                idle.push(c);
            }
        }
        assert!(
            idle.len() >= 250,
            "only {} connections accepted",
            idle.len()
        );
        still_serving(&mut s, &key).await;
        drop(idle);
    }
    still_serving(&mut s, &key).await;

    // Nothing outside the image directory: everything the service wrote is under `img`.
    for f in files_under(tmp.path()) {
        let ok = f.starts_with(&img)
            || f.starts_with(tmp.path().join("cpu"))
            || f.ends_with("serve.log")
            || f.ends_with("key");
        assert!(ok, "unexpected file {}", f.display());
    }
}

fn main() -> std::process::ExitCode {
    haul_test_support::run(vec![haul_test_support::test!(
        the_service_survives_hostile_input_and_writes_only_in_its_directory,
        common::NEEDS[0],
        common::NEEDS[1]
    )])
}
