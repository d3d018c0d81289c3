//! The `local` provider: two network namespaces on this machine, joined by a veth pair
//! ([`NodePair`]), sharing this machine's file system (which stands in for the HOWTO's NFS
//! mount). Commands run through `nsenter --net=/run/netns/NAME`, so a workload, `haul serve`
//! and CRIU's page server each live in their node's network namespace.
//!
//! With `node_local` (set for scenarios whose workloads sync their files) each node also gets
//! a mount namespace of its own ([`crate::mntns::NodeDisks`]) in which `<root>/local` shows
//! that node's `<root>/a/local` or `<root>/b/local`, and every command of the node runs there
//! (`nsenter --mount=...`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{removable, Node, Output, Provider, ProviderError};
use crate::cancel::CancelToken;
use crate::node::{run_local, NodeError};
use haul_test_support::NodePair;

/// The `[provider]` table for `kind = "local"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Where `haul`, `mtouch` and `haul-launch` are (default: `target/release` of the
    /// source tree the harness runs in).
    #[serde(default)]
    pub bin_dir: Option<String>,
    /// Where the run's directories go (default `/var/tmp/haul-harness`).
    #[serde(default)]
    pub work_root: Option<String>,
    /// The CRIU binary (default: `criu` on PATH, else `/usr/local/sbin/criu`).
    #[serde(default)]
    pub criu: Option<String>,
    /// Give each node a disk of its own at `<root>/local` (a mount namespace per node); the
    /// runner sets it for scenarios with synced workloads.
    #[serde(default)]
    pub node_local: bool,
}

/// The default root of the local provider's directories.
pub const LOCAL_WORK_ROOT: &str = "/var/tmp/haul-harness";

/// The source tree the harness runs in: the nearest ancestor of the working directory with
/// `harness/Cargo.toml`, else the one this harness was built from.
pub fn source_tree() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join("harness/Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .or_else(|| {
            let built = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
            built
                .join("harness/Cargo.toml")
                .is_file()
                .then(|| built.to_path_buf())
        })
}

/// The CRIU binary: `criu` on PATH, else `/usr/local/sbin/criu` (where scripts/setup.sh puts it).
pub fn find_criu() -> String {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("criu").is_file()))
        .unwrap_or(false);
    if on_path || !Path::new("/usr/local/sbin/criu").is_file() {
        "criu".into()
    } else {
        "/usr/local/sbin/criu".into()
    }
}

/// One namespace of the pair.
#[derive(Debug)]
pub struct LocalNode {
    role: &'static str,
    netns: String,
    addr: String,
    bin_dir: String,
    criu: String,
    work_dir: String,
    children: Mutex<Vec<Child>>,
    /// Node-local disk: (its mount namespace file, the path both nodes use, this node's
    /// directory behind it).
    local: Option<(PathBuf, String, String)>,
    cancel: CancelToken,
}

impl LocalNode {
    fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns));
        if let Some((ns, _, _)) = &self.local {
            c.arg(format!("--mount={}", ns.display()));
        }
        c.arg("--").args(argv);
        c
    }

    /// `path` as this machine sees it: under the node-local path, this node's directory.
    fn host_path(&self, path: &str) -> String {
        match &self.local {
            Some((_, common, own)) => match path.strip_prefix(common.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("{own}{rest}"),
                _ => path.to_string(),
            },
            None => path.to_string(),
        }
    }

    fn stop_child(mut child: Child) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn terminate_all(&self) {
        let children: Vec<Child> = self
            .children
            .lock()
            .map(|mut c| c.drain(..).collect())
            .unwrap_or_default();
        for c in children {
            Self::stop_child(c);
        }
    }
}

impl Node for LocalNode {
    fn describe(&self) -> String {
        format!("{} ({}, {})", self.role, self.netns, self.addr)
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn bin(&self, program: &str) -> String {
        format!("{}/{program}", self.bin_dir)
    }

    fn criu(&self) -> String {
        self.criu.clone()
    }

    fn work_dir(&self) -> &str {
        &self.work_dir
    }

    fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, NodeError> {
        run_local(self.command(argv), stdin, timeout, &self.cancel)
    }

    fn spawn(&self, argv: &[String], log: &str) -> Result<i32, NodeError> {
        let io = |source| NodeError::Io {
            what: format!("cannot open {log}"),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io)?;
        let f2 = f.try_clone().map_err(io)?;
        let child = self
            .command(argv)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|source| NodeError::Spawn {
                program: argv.first().cloned().unwrap_or_default(),
                source,
            })?;
        let pid = child.id() as i32;
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
        }
        Ok(pid)
    }

    fn terminate(&self, pid: i32) {
        let child = self.children.lock().ok().and_then(|mut c| {
            let i = c.iter().position(|ch| ch.id() as i32 == pid)?;
            Some(c.swap_remove(i))
        });
        if let Some(c) = child {
            Self::stop_child(c);
        }
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, NodeError> {
        let path = self.host_path(path);
        std::fs::read(&path).map_err(|source| NodeError::Io {
            what: format!("cannot read {path}"),
            source,
        })
    }
}

/// Two namespaces and their directories under `<work_root>/<tag>/`: `a/`, `b/` (each node's
/// own) and `shared/`.
#[derive(Debug)]
pub struct LocalProvider {
    pair: Option<NodePair>,
    disks: Option<crate::mntns::NodeDisks>,
    local: Option<String>,
    a: LocalNode,
    b: LocalNode,
    root: String,
    shared: String,
    keep: bool,
}

impl LocalProvider {
    /// Make the namespaces and directories; needs root.
    pub fn new(
        config: &LocalConfig,
        cx: &super::ProvisionContext,
    ) -> Result<LocalProvider, ProviderError> {
        let tag = cx.tag.as_str();
        if !nix::unistd::geteuid().is_root() {
            return Err(ProviderError::Config(
                "the local provider needs root (network namespaces, CRIU)".into(),
            ));
        }
        let bin_dir = match config.bin_dir.as_ref().or(cx.host_bin_dir.as_ref()) {
            Some(d) => d.clone(),
            None => source_tree()
                .map(|t| t.join("target/release").display().to_string())
                .ok_or_else(|| {
                    ProviderError::Config(
                        "no bin_dir given and not inside haul's source tree".into(),
                    )
                })?,
        };
        for p in crate::HAUL_PROGRAMS {
            if !Path::new(&bin_dir).join(p).is_file() {
                return Err(ProviderError::Config(format!(
                    "{bin_dir}/{p} is missing: build it (cargo build --release -p haul -p haul-launch -p haul-workloads)"
                )));
            }
        }
        let criu = config.criu.clone().unwrap_or_else(find_criu);
        let root = format!(
            "{}/{tag}",
            config.work_root.as_deref().unwrap_or(LOCAL_WORK_ROOT)
        );
        if !removable(&root) {
            return Err(ProviderError::Config(format!(
                "work_root {root} must be absolute and contain a directory named haul-harness*"
            )));
        }
        let pair = NodePair::new("hx")?;
        let local = format!("{root}/local");
        let disks = if config.node_local {
            let d = crate::mntns::NodeDisks::new(
                Path::new(&local),
                Path::new(&format!("{root}/a/local")),
                Path::new(&format!("{root}/b/local")),
            )
            .map_err(|e| ProviderError::Config(e.to_string()))?;
            Some(d)
        } else {
            None
        };
        let node = |role, n: &haul_test_support::Node, sub: &str| LocalNode {
            role,
            netns: n.netns.clone(),
            addr: n.addr.clone(),
            bin_dir: bin_dir.clone(),
            criu: criu.clone(),
            work_dir: format!("{root}/{sub}"),
            children: Mutex::new(Vec::new()),
            local: disks.as_ref().map(|d| {
                let (ns, own) = if sub == "a" {
                    (&d.a_ns, &d.a_dir)
                } else {
                    (&d.b_ns, &d.b_dir)
                };
                (ns.clone(), local.clone(), own.display().to_string())
            }),
            cancel: cx.cancel.clone(),
        };
        let a = node("source", &pair.a, "a");
        let b = node("destination", &pair.b, "b");
        let p = LocalProvider {
            shared: format!("{root}/shared"),
            local: disks.as_ref().map(|_| local.clone()),
            disks,
            pair: Some(pair),
            a,
            b,
            root,
            keep: false,
        };
        for d in [&p.a.work_dir, &p.b.work_dir, &p.shared] {
            std::fs::create_dir_all(d).map_err(|source| NodeError::Io {
                what: format!("cannot make {d}"),
                source,
            })?;
        }
        Ok(p)
    }
}

impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> String {
        format!(
            "local: network namespaces {} ({}) -> {} ({}), shared directory {}{}",
            self.a.netns,
            self.a.addr,
            self.b.netns,
            self.b.addr,
            self.shared,
            match &self.local {
                Some(l) => format!(
                    ", node-local directory {l} (a mount namespace per node: {l} is {}/a/local on the source, {}/b/local on the destination)",
                    self.root, self.root
                ),
                None => String::new(),
            }
        )
    }

    fn source(&self) -> &dyn Node {
        &self.a
    }

    fn destination(&self) -> &dyn Node {
        &self.b
    }

    fn shared_dir(&self) -> &str {
        &self.shared
    }

    fn keep_files(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn node_local_dir(&self) -> Option<&str> {
        self.local.as_deref()
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        self.a.terminate_all();
        self.b.terminate_all();
        // kills whatever still runs in the namespaces (a workload left behind by a failure),
        // then deletes them
        drop(self.pair.take());
        drop(self.disks.take());
        if !self.keep && removable(&self.root) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
