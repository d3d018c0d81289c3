//! Helpers shared by the end-to-end tests: nodes, `haul serve`, mtouch, verdicts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haul_launch::{launch, LaunchSpec};
use haul_test_support::NodePair;
use haul_workloads::mtouch_log;

pub const HAUL: &str = env!("CARGO_BIN_EXE_haul");

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(HAUL).parent().expect("target dir").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// What the end-to-end tests need: root (namespaces) and a CRIU >= 4.1 that passes
/// `criu check`; a test lacking either is reported as ignored, with the reason.
pub const NEEDS: [haul_test_support::Need; 2] =
    [haul_test_support::Need::Root, haul_test_support::Need::Criu];

/// Reports the running test as skipped (ignored, with the reason) unless haul's own CRIU
/// lookup finds a usable CRIU (a stricter check than [`NEEDS`], done by the test itself).
#[macro_export]
macro_rules! skip_unless_runnable {
    () => {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        if let Err(e) = rt.block_on(haul::criu::Criu::locate_checked()) {
            haul_test_support::skip(format!("no usable CRIU: {e}"));
        }
    };
}

/// A `haul serve` in node B, killed on drop.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(name);
    let st = Command::new(HAUL)
        .arg("keygen")
        .arg(&k)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    k
}

pub fn start_serve(nodes: &NodePair, key: &Path, dir: &Path) -> Serve {
    start_serve_env(nodes, key, dir, &[])
}

/// `haul serve` in node B with extra environment (e.g. a fault point).
pub fn start_serve_env(nodes: &NodePair, key: &Path, dir: &Path, env: &[(&str, &Path)]) -> Serve {
    start_serve_with(nodes, key, dir, env, &[])
}

/// `haul serve` in node B with extra environment and arguments (e.g. `--sync-allow DIR`).
pub fn start_serve_with(
    nodes: &NodePair,
    key: &Path,
    dir: &Path,
    env: &[(&str, &Path)],
    args: &[&str],
) -> Serve {
    let port = 27600 + (std::process::id() % 300) as u16;
    let log = dir.join("serve.log");
    let mut child = nodes
        .b
        .command(HAUL)
        .args(["serve", "--listen", &format!("{}:{port}", nodes.b.addr)])
        .arg("--key")
        .arg(key)
        .arg("--img-path")
        .arg(dir.join("dst-img"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // its log lines are copied to serve.log as they come; the one saying it listens is the
    // event waited for (no polling of the file)
    let pipe = child.stderr.take().expect("haul serve's stderr");
    let mut file = std::fs::File::create(&log).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        let mut ready = Some(ready_tx);
        while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = file.write_all(&line);
            if ready.is_some() && String::from_utf8_lossy(&line).contains("haul serve on") {
                let _ = ready.take().map(|tx| tx.send(()));
            }
            line.clear();
        }
    });
    let serve = Serve { child, port, log };
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        panic!(
            "haul serve did not start:\n{}",
            std::fs::read_to_string(&serve.log).unwrap_or_default()
        );
    }
    serve
}

/// Starts mtouch in node A in its own pid namespace; returns (host pid, workdir).
pub fn start_mtouch(nodes: &NodePair, dir: &Path, spec: &str) -> (i32, PathBuf) {
    let wd = dir.join("work");
    std::fs::create_dir_all(&wd).unwrap();
    let launched = launch(
        &LaunchSpec::new(bin("mtouch"))
            .args(["mem-touch.log", spec])
            .cwd(&wd)
            .netns(nodes.a.netns.clone()),
    )
    .expect("launch mtouch");
    assert_eq!(launched.code, 'O', "mtouch did not start");
    // wait until it touches
    let t = Instant::now();
    while touches(&wd) < 20 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mtouch never started touching"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (launched.host_pid, wd)
}

pub fn touches(wd: &Path) -> usize {
    std::fs::File::open(wd.join("mem-touch.log"))
        .map(|f| {
            BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("t "))
                .count()
        })
        .unwrap_or(0)
}

/// `haul pid PID B:PORT --key KEY --img-path DIR/src-img EXTRA...`, run in node A.
pub fn haul_pid_command(
    nodes: &NodePair,
    serve: &Serve,
    key: &Path,
    dir: &Path,
    pid: i32,
    extra: &[&str],
) -> Command {
    let mut c = nodes.a.command(HAUL);
    c.args([
        "pid",
        &pid.to_string(),
        &format!("{}:{}", nodes.b.addr, serve.port),
    ])
    .arg("--key")
    .arg(key)
    .arg("--img-path")
    .arg(dir.join("src-img"))
    .args(extra)
    .stdin(Stdio::null());
    c
}

/// Runs [`haul_pid_command`] to the end.
pub fn haul_pid(
    nodes: &NodePair,
    serve: &Serve,
    key: &Path,
    dir: &Path,
    pid: i32,
    extra: &[&str],
) -> std::process::Output {
    haul_pid_command(nodes, serve, key, dir, pid, extra)
        .output()
        .unwrap()
}

/// This machine's CRIU features.
pub fn criu_features() -> haul::criu::Features {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            haul::criu::Criu::locate_checked()
                .await
                .unwrap()
                .0
                .features()
                .await
                .unwrap()
        })
}

/// Stops mtouch with its stop file and returns its verdict.
pub fn stop_and_verify(wd: &Path) -> mtouch_log::MtouchVerdict {
    std::fs::write(wd.join("mem-touch-stop"), b"").unwrap();
    let t = Instant::now();
    loop {
        let v = mtouch_log::analyze(wd.join("mem-touch.log")).unwrap();
        if v.finished {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "mtouch never logged Finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn alive(pid: i32) -> bool {
    haul::migrate::tree::alive(pid)
}

/// One migration's stage: a temp dir, two nodes, a key, `haul serve` in B, mtouch in A.
pub struct Scene {
    /// `haul serve` in node B (dropped before the nodes).
    pub serve: Serve,
    /// mtouch's host pid in node A.
    pub pid: i32,
    /// mtouch's working directory (its log and stop file).
    pub wd: PathBuf,
    /// The key file.
    pub key: PathBuf,
    /// The nodes.
    pub nodes: NodePair,
    /// Everything on disk (dropped last).
    pub tmp: tempfile::TempDir,
}

impl Scene {
    /// Sets the stage with mtouch `SIZE:PRE:PAUSE` = `spec`.
    pub fn new(tag: &str, spec: &str) -> Scene {
        Scene::with_serve_env(tag, spec, &[])
    }

    /// The same, with extra environment for `haul serve`.
    pub fn with_serve_env(tag: &str, spec: &str, env: &[(&str, &Path)]) -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let nodes = NodePair::new(tag).expect("nodes");
        let key = keygen(tmp.path(), "key");
        let serve = start_serve_env(&nodes, &key, tmp.path(), env);
        let (pid, wd) = start_mtouch(&nodes, tmp.path(), spec);
        Scene {
            serve,
            pid,
            wd,
            key,
            nodes,
            tmp,
        }
    }

    /// `haul pid` for this scene's toucher, with the scene's key (see [`haul_pid_command`]).
    pub fn pid_command(&self, extra: &[&str]) -> Command {
        haul_pid_command(
            &self.nodes,
            &self.serve,
            &self.key,
            self.tmp.path(),
            self.pid,
            extra,
        )
    }

    /// Runs `haul pid` to the end.
    pub fn migrate(&self, extra: &[&str]) -> std::process::Output {
        self.pid_command(extra).output().unwrap()
    }
}
