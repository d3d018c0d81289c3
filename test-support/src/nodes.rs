//! Two nodes on one machine: network namespaces `<prefix>-a` and `<prefix>-b` joined by a veth
//! pair (`10.<x>.<y>.1` and `.2`, a /24 that only these namespaces use). Both see the same file
//! system, which stands in for the shared NFS mount of the HOWTO. Everything is removed on drop,
//! also when a test fails: the namespaces, and every process still inside them (all of which
//! the test started).

use std::process::{Command, Stdio};
use std::time::Duration;

/// Why the nodes could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr} (network namespaces need root and iproute2)")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
}

/// One node of a pair.
#[derive(Debug, Clone)]
pub struct Node {
    /// The namespace's name (`/run/netns/NAME`).
    pub netns: String,
    /// Its address on the veth link.
    pub addr: String,
    /// Its own mount namespace (a namespace file of [`crate::mntns::NodeDisks`]), when it
    /// has node-local disks; commands run there too.
    pub mntns: Option<std::path::PathBuf>,
}

impl Node {
    /// A command run inside this node (`nsenter --net=/run/netns/NAME [--mount=NS] PROGRAM`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns));
        if let Some(m) = &self.mntns {
            c.arg(format!("--mount={}", m.display()));
        }
        c.arg(program);
        c
    }

    /// Pids of the live processes inside this node whose command name is `comm`.
    pub fn pids_named(&self, comm: &str) -> Vec<i32> {
        procs_in_netns(&self.netns)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| c.trim() == comm)
                    .unwrap_or(false)
            })
            .collect()
    }
}

/// Two nodes joined by a veth pair.
#[derive(Debug)]
pub struct NodePair {
    /// The source node.
    pub a: Node,
    /// The destination node.
    pub b: Node,
    /// The veth ends in `a` and `b`.
    links: (String, String),
}

pub(crate) fn ip(args: &[&str]) -> Result<(), NodeError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NodeError::Ip {
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NodeError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

impl NodePair {
    /// Makes `haul-<tag>-<pid>-a/b`; the subnet comes from the pid so parallel tests differ.
    pub fn new(tag: &str) -> Result<NodePair, NodeError> {
        let me = std::process::id();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("haul-{tag}-{me}-{seq}");
        let (x, y) = (100 + (me % 100) as u8, (seq % 250) as u8 + 1);
        let (va, vb) = (
            format!("hv{seq}a{}", me % 100000),
            format!("hv{seq}b{}", me % 100000),
        );
        let pair = NodePair {
            links: (va.clone(), vb.clone()),
            a: Node {
                netns: format!("{prefix}-a"),
                addr: format!("10.{x}.{y}.1"),
                mntns: None,
            },
            b: Node {
                netns: format!("{prefix}-b"),
                addr: format!("10.{x}.{y}.2"),
                mntns: None,
            },
        };
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &pair.a.netns])?;
        ip(&["netns", "add", &pair.b.netns])?;
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            &pair.a.netns,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            &pair.b.netns,
        ])?;
        for (n, dev) in [(&pair.a, &va), (&pair.b, &vb)] {
            ip(&[
                "-n",
                &n.netns,
                "addr",
                "add",
                &format!("{}/24", n.addr),
                "dev",
                dev,
            ])?;
            ip(&["-n", &n.netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &n.netns, "link", "set", dev, "up"])?;
        }
        Ok(pair)
    }
}

impl NodePair {
    /// Cuts the link between the nodes (both veth ends down): packets vanish without a reset,
    /// as when a cable is pulled.
    pub fn cut_link(&self) -> Result<(), NodeError> {
        ip(&["-n", &self.a.netns, "link", "set", &self.links.0, "down"])?;
        ip(&["-n", &self.b.netns, "link", "set", &self.links.1, "down"])
    }
}

/// Live (non-zombie) processes whose network namespace is `/run/netns/NAME` (procfs).
pub fn procs_in_netns(name: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(format!("/run/netns/{name}")) else {
        return vec![];
    };
    let Ok(all) = procfs::process::all_processes() else {
        return vec![];
    };
    all.flatten()
        .filter(|p| {
            p.namespaces().ok().is_some_and(|n| {
                n.0.get(std::ffi::OsStr::new("net"))
                    .is_some_and(|e| e.identifier == ns.ino() && e.device_id == ns.dev())
            })
        })
        .filter(|p| {
            p.stat()
                .ok()
                .is_some_and(|st| !matches!(st.state, 'Z' | 'X'))
        })
        .map(|p| p.pid())
        .collect()
}

/// Kills every process left in network namespace `name` (all of them started by the caller's
/// run), waiting up to 5 s for them to go, then deletes the namespace.
pub fn destroy_netns(name: &str) {
    for _ in 0..50 {
        let pids = procs_in_netns(name);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = ip(&["netns", "del", name]);
}

impl Drop for NodePair {
    fn drop(&mut self) {
        destroy_netns(&self.a.netns);
        destroy_netns(&self.b.netns);
    }
}
