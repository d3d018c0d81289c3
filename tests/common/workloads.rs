//! Helpers for `tests/workloads_migrate.rs`: a stage to migrate self-checking workloads on
//! (two nodes, `haul serve` in B, a shared directory), a client node whose route to the
//! service address follows the workload from A to B, workload guards that clean up, and
//! verdicts read from the workloads' logs.
//!
//! # The service address
//!
//! A TCP server restored on B must find its addresses there (CRIU binds the listening and the
//! established sockets back to them: "Can't bind inet socket back" otherwise), and its clients
//! must reach it there under the same address. So the servers listen on a service address,
//! [`SERVICE_ADDR`], that moves with the workload, the way a floating IP moves between two
//! machines:
//!
//! ```text
//!                     node C (client node; created here)
//!                     lo: 172.31.0.1/32 (CLIENT_ADDR, the clients' source)
//!                     route 172.31.255.1/32 dev <to A> src 172.31.0.1  (before)
//!                     route 172.31.255.1/32 dev <to B> src 172.31.0.1  (after)
//!                      /                                    \
//!                veth /                                      \ veth
//!   node A           /                                        \          node B
//!   lo: 172.31.255.1/32 (until the move)      lo: 172.31.255.1/32 (added before the move)
//!   route 172.31.0.1/32 dev <to C>            route 172.31.0.1/32 dev <to C>
//!   haul pid  ─────────── NodePair veth 10.x.y.1 <-> 10.x.y.2 ──────────── haul serve
//! ```
//!
//! - The clients run in a third namespace, C, so that they are neither part of the tree that
//!   moves nor on either node: their connections cross a link before and after the move.
//! - The address is a /32 on `lo` of A (no dummy module needed); C reaches it by a device
//!   route (A answers ARP for it on the veth), A and B reach the client's /32 the same way.
//! - [`ClientNode::before_move`] adds the address to B's `lo` before `haul pid` runs (the
//!   restore binds to it); C's route still points to A, so nothing reaches B yet.
//! - [`ClientNode::after_move`] deletes it from A and points C's route at B, as soon as the
//!   tree shows up restored in B ([`Stage::migrate_then`]), while `haul pid` may still be at
//!   work (the two-phase commit, post-copy pages). Until then the clients' segments go to A,
//!   where CRIU's network lock drops them: after a successful dump CRIU leaves its
//!   per-connection DROP rules in A (seen with `iptables-save` there), so A never answers with
//!   a reset; B's lock drops them too until the restored tree runs. The clients' TCP
//!   retransmits, and the first retransmission after the change and the unlock reaches the
//!   restored socket on B. The clients see a pause, never an error.
//! - This models a floating address moved by whoever drives the migration; haul itself moves
//!   no address (a deployment does it from its orchestration, or with a routing change).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haul_launch::{launch, LaunchSpec, Launched, StartProtocol};
use haul_test_support::nodes::procs_in_netns;
use haul_test_support::NodePair;
use haul_workloads::worklog::{self, SelfCheckVerdict};

use crate::common::{alive, bin, haul_pid_command, keygen, start_serve, Serve};

/// The address the TCP workloads serve on, on A before the move and on B after it.
pub const SERVICE_ADDR: &str = "172.31.255.1";
/// The client node's own address (the source of every client connection).
pub const CLIENT_ADDR: &str = "172.31.0.1";
/// Generous: 2 cores shared with builds and other tests.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub use haul_test_support::wait_for;

/// Runs `ip ARGS`, panicking with what it said when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Why a post-copy case cannot run here, if it cannot.
pub fn strategy_unavailable(strategy: &str) -> Option<&'static str> {
    if strategy == "post-copy" && !crate::common::criu_features().lazy_pages {
        return Some("the kernel has no userfaultfd lazy pages (post-copy)");
    }
    None
}

/// Why redis cannot be tested here, if it cannot.
pub fn no_redis() -> Option<String> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    (!found).then(|| "no redis-server on PATH (scripts/setup.sh installs it)".to_string())
}

// ------------------------------------------------------------------ workloads

/// A launched workload (the init of its own pid namespace); on drop it is killed if it still
/// runs where it was launched, and its reaper is reaped.
pub struct Workload {
    /// What the launcher returned.
    pub launched: Launched,
    /// The program's name (for messages).
    pub name: String,
}

impl Workload {
    /// Host pid of the workload where it was launched.
    pub fn pid(&self) -> i32 {
        self.launched.host_pid
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // After a migration the init is gone (CRIU killed it) and this only reaps the reaper.
        let _ = self.launched.kill();
    }
}

/// Launches `spec` (a program of the workloads crate, or any program with `Exec`), asserting
/// that it started.
pub fn start(spec: LaunchSpec) -> Workload {
    let name = spec
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let launched =
        launch(&spec.start_timeout(PATIENCE)).unwrap_or_else(|e| panic!("launching {name}: {e}"));
    assert_eq!(
        launched.code, 'O',
        "{name} reported start code {}",
        launched.code
    );
    Workload { launched, name }
}

/// A workload program of this repository, in `netns`, with `dir` as working directory.
pub fn spec(program: &str, args: &[&str], dir: &Path, netns: &str) -> LaunchSpec {
    LaunchSpec::new(bin(program))
        .args(args)
        .cwd(dir)
        .netns(netns.to_string())
}

/// The verdict of the log at `log` so far.
pub fn verdict(log: &Path) -> SelfCheckVerdict {
    worklog::analyze(log).unwrap_or_else(|e| panic!("{e}"))
}

/// Heartbeat lines in the log so far (0 when it does not exist yet).
pub fn ticks(log: &Path) -> u64 {
    worklog::analyze(log).map(|v| v.ticks).unwrap_or(0)
}

/// Waits until `log` has `n` more heartbeats than it had (the workload makes progress).
pub fn wait_progress(log: &Path, n: u64) {
    let start = ticks(log);
    wait_for(
        &format!("{n} heartbeats in {} after {start}", log.display()),
        PATIENCE,
        || ticks(log) >= start + n,
    );
}

/// Creates `stop_file` in `dir` and waits until `log` ends with `Finish`; returns its verdict
/// (the whole log in the panic message when it never finishes).
pub fn stop_and_judge(dir: &Path, stop_file: &str, log: &str) -> SelfCheckVerdict {
    haul_workloads::stop::StopFile::new(dir.join(stop_file))
        .request()
        .expect("create stop file");
    let path = dir.join(log);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = verdict(&path);
        if v.finished {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{log} never logged Finish after {stop_file}:\n{}",
            show(&path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A log without its heartbeat lines (for assertion messages).
pub fn show(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("t ")).collect();
    format!("--- {} ---\n{}", path.display(), kept.join("\n"))
}

// ------------------------------------------------------------------ the stage

/// One test's stage: a temp dir (the shared directory), two nodes, a key, `haul serve` in B.
/// Fields drop in order: the server, the nodes (killing what remains in them), the files.
pub struct Stage {
    /// `haul serve` in node B.
    pub serve: Serve,
    /// The key file.
    pub key: PathBuf,
    /// The workloads' working directory (logs, stop files, data).
    pub wd: PathBuf,
    /// The nodes.
    pub nodes: NodePair,
    /// Everything on disk.
    pub tmp: tempfile::TempDir,
}

/// A finished migration.
pub struct Moved {
    /// The JSON report of `haul pid`.
    pub report: serde_json::Value,
    /// Its stdout (P.Haul's summary).
    pub stdout: String,
    /// The tree's root on the destination (host pid).
    pub dest_pid: i32,
}

impl Moved {
    /// haul's downtime (freeze until running on B), seconds.
    pub fn downtime(&self) -> f64 {
        self.report["downtime_secs"].as_f64().unwrap_or(f64::NAN)
    }

    /// haul's total time, seconds.
    pub fn total(&self) -> f64 {
        self.report["total_secs"].as_f64().unwrap_or(f64::NAN)
    }
}

impl Stage {
    /// Nodes `tag`, a key, `haul serve` in B, a working directory.
    pub fn new(tag: &str) -> Stage {
        let tmp = tempfile::tempdir().expect("temp dir");
        let nodes = NodePair::new(tag).expect("nodes");
        let key = keygen(tmp.path(), "key");
        let serve = start_serve(&nodes, &key, tmp.path());
        let wd = tmp.path().join("work");
        std::fs::create_dir_all(&wd).expect("work dir");
        Stage {
            serve,
            key,
            wd,
            nodes,
            tmp,
        }
    }

    /// A workload program in node A, in the shared directory.
    pub fn start_in_a(&self, program: &str, args: &[&str]) -> Workload {
        start(spec(program, args, &self.wd, &self.nodes.a.netns))
    }

    /// `haul pid PID --strategy S --report R EXTRA...` from A to B; asserts it succeeded,
    /// that the source process is gone and that a process named `comm` runs in B.
    pub fn migrate(&self, pid: i32, strategy: &str, extra: &[&str], comm: &str) -> Moved {
        self.migrate_then(pid, strategy, extra, comm, || {})
    }

    /// [`migrate`](Self::migrate), calling `on_restored` as soon as the tree shows up
    /// restored in B (its root named `comm`, neither stopped nor traced), or once `haul pid`
    /// succeeded if that was not seen first. That is while haul may still hold the tree at
    /// CRIU's post-restore (the two-phase commit) or serve post-copy pages: B's network lock
    /// drops the clients' segments until the tree runs, so moving the service address then
    /// costs nothing, and the clients' pause is the migration's, not `haul pid`'s whole run.
    pub fn migrate_then(
        &self,
        pid: i32,
        strategy: &str,
        extra: &[&str],
        comm: &str,
        on_restored: impl FnOnce(),
    ) -> Moved {
        let dir = self.tmp.path();
        let report = dir.join("report.json");
        let (stdout_path, stderr_path) = (dir.join("haul-pid.out"), dir.join("haul-pid.err"));
        let mut args = vec![
            "--strategy",
            strategy,
            "--no-progress",
            "--report",
            report.to_str().expect("utf-8 temp path"),
        ];
        args.extend_from_slice(extra);
        let mut child = haul_pid_command(&self.nodes, &self.serve, &self.key, dir, pid, &args)
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn haul pid");
        let mut on_restored = Some(on_restored);
        let deadline = Instant::now() + Duration::from_secs(150);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for haul pid") {
                break status;
            }
            if on_restored.is_some() && self.restored_on_b(comm) {
                (on_restored.take().expect("checked"))();
            }
            if Instant::now() > deadline {
                let procs = self.processes();
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "haul pid {pid} ({comm}, {strategy}) did not end within 150 s\nprocesses:\n{procs}\nstdout:\n{}\nstderr:\n{}\nserve log:\n{}\n{}",
                    std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    std::fs::read_to_string(&self.serve.log).unwrap_or_default(),
                    criu_log_tails(dir)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        assert!(
            status.success(),
            "haul pid {pid} ({comm}, {strategy}) failed\nstdout:\n{stdout}\nstderr:\n{}\nserve log:\n{}\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            std::fs::read_to_string(&self.serve.log).unwrap_or_default(),
            criu_log_tails(dir)
        );
        if let Some(f) = on_restored {
            f();
        }
        assert!(stdout.contains("Migration succeeded"), "{stdout}");
        wait_for(
            &format!("source pid {pid} to end after the migration"),
            PATIENCE,
            || !alive(pid),
        );
        assert!(
            self.nodes.a.pids_named(comm).is_empty(),
            "{comm} still runs in node A after the migration"
        );
        assert!(
            !self.nodes.b.pids_named(comm).is_empty(),
            "no {comm} runs in node B after the migration"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).expect("report file"))
                .expect("report JSON");
        assert_eq!(
            report["strategy"].as_str(),
            Some(strategy),
            "haul used another strategy than asked"
        );
        let dest_pid = report["destination_pid"].as_i64().unwrap_or(0) as i32;
        assert!(dest_pid > 0, "no destination pid in the report: {report}");
        Moved {
            report,
            stdout,
            dest_pid,
        }
    }

    /// Every process in A and B: pid, state, wait channel, command line (for a hang's message).
    pub fn processes(&self) -> String {
        let mut out = String::new();
        for (name, node) in [("A", &self.nodes.a), ("B", &self.nodes.b)] {
            for p in procs_in_netns(&node.netns) {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next())
                    .unwrap_or("?")
                    .to_string();
                let wchan = std::fs::read_to_string(format!("/proc/{p}/wchan")).unwrap_or_default();
                let cmd = std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                out.push_str(&format!("{name} {p} {state} {wchan} {cmd}\n"));
            }
        }
        out
    }

    /// Whether a process named `comm` is in B, neither stopped nor traced (CRIU traces the
    /// tasks while it restores them).
    fn restored_on_b(&self, comm: &str) -> bool {
        self.nodes.b.pids_named(comm).into_iter().any(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let state = field("State:").unwrap_or_default();
            field("TracerPid:").as_deref() == Some("0")
                && !state.starts_with('t')
                && !state.starts_with('T')
                && !state.is_empty()
        })
    }
}

/// The last lines of every CRIU log under `dir` (for a failed migration's message).
pub fn criu_log_tails(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log")
                && p.components()
                    .any(|c| c.as_os_str().to_string_lossy().ends_with("-img"))
            {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(25)..];
                out.push_str(&format!("--- {} ---\n{}\n", p.display(), tail.join("\n")));
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the client node

/// A third network namespace for the clients, joined to A and to B by veth pairs, with a
/// route to [`SERVICE_ADDR`] that [`after_move`](Self::after_move) points from A to B (see the
/// module documentation). On drop every process in it (all started by the test) is killed and
/// the namespace deleted, which removes the veths.
pub struct ClientNode {
    /// Its name (`/run/netns/NAME`).
    pub netns: String,
    a_netns: String,
    b_netns: String,
    /// C's ends of the links to A and to B.
    to_a: String,
    to_b: String,
}

impl ClientNode {
    /// Makes the client node and puts [`SERVICE_ADDR`] on A.
    pub fn new(nodes: &NodePair) -> ClientNode {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = std::process::id() % 100_000;
        let c = ClientNode {
            netns: format!("haul-wlc-{me}-{seq}"),
            a_netns: nodes.a.netns.clone(),
            b_netns: nodes.b.netns.clone(),
            to_a: format!("wc{seq}a{me}"),
            to_b: format!("wc{seq}b{me}"),
        };
        ip(&["netns", "add", &c.netns]);
        // From here on, Drop removes it.
        let client = format!("{CLIENT_ADDR}/32");
        let service = format!("{SERVICE_ADDR}/32");
        ip(&["-n", &c.netns, "link", "set", "lo", "up"]);
        ip(&["-n", &c.netns, "addr", "add", &client, "dev", "lo"]);
        for (node, dev) in [(&c.a_netns, &c.to_a), (&c.b_netns, &c.to_b)] {
            let peer = format!("{dev}p");
            ip(&[
                "link", "add", dev, "netns", &c.netns, "type", "veth", "peer", "name", &peer,
                "netns", node,
            ]);
            ip(&["-n", &c.netns, "link", "set", dev, "up"]);
            ip(&["-n", node, "link", "set", &peer, "up"]);
            ip(&["-n", node, "route", "add", &client, "dev", &peer]);
        }
        ip(&["-n", &c.a_netns, "addr", "add", &service, "dev", "lo"]);
        ip(&[
            "-n",
            &c.netns,
            "route",
            "add",
            &service,
            "dev",
            &c.to_a,
            "src",
            CLIENT_ADDR,
        ]);
        c
    }

    /// A program of this repository in the client node.
    pub fn start(&self, program: &str, args: &[&str], dir: &Path) -> Workload {
        start(spec(program, args, dir, &self.netns))
    }

    /// A command run in the client node.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(program);
        c
    }

    /// Before `haul pid`: the service address on B too (the restore binds to it); the
    /// clients' route still leads to A.
    pub fn before_move(&self) {
        ip(&[
            "-n",
            &self.b_netns,
            "addr",
            "add",
            &format!("{SERVICE_ADDR}/32"),
            "dev",
            "lo",
        ]);
    }

    /// Once the tree is restored on B: the address leaves A and the clients' route leads to B.
    pub fn after_move(&self) {
        ip(&[
            "-n",
            &self.a_netns,
            "addr",
            "del",
            &format!("{SERVICE_ADDR}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            &self.netns,
            "route",
            "replace",
            &format!("{SERVICE_ADDR}/32"),
            "dev",
            &self.to_b,
            "src",
            CLIENT_ADDR,
        ]);
    }
}

impl Drop for ClientNode {
    fn drop(&mut self) {
        haul_test_support::nodes::destroy_netns(&self.netns);
    }
}

/// redis-server in node A on `SERVICE_ADDR:port`: no persistence, its output in
/// `dir/redis.out`; returns once it accepts connections.
pub fn start_redis(nodes: &NodePair, dir: &Path, port: u16) -> Workload {
    let out = dir.join("redis.out");
    let port = port.to_string();
    let w = start(
        LaunchSpec::new("redis-server")
            .args([
                "--bind",
                SERVICE_ADDR,
                "--port",
                &port,
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "",
                "--dir",
            ])
            .arg(dir)
            .cwd(dir)
            .netns(nodes.a.netns.clone())
            .output(&out)
            .protocol(StartProtocol::Exec),
    );
    wait_for("redis-server to accept connections", PATIENCE, || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("Ready to accept connections")
    });
    w
}
