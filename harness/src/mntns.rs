//! Node-local disks for two nodes on one machine: one path, a different directory behind it
//! on each node, the way two machines each have their own disk at `/srv/work`.
//!
//! Each node gets a mount namespace of its own (persisted in a namespace file, as
//! `ip netns` persists network namespaces), in which `path` is a bind mount of that node's
//! directory; this machine's own view of `path` stays an empty directory. Everything of a
//! node runs in its namespace (`nsenter --mount=FILE`, `haul-launch --mntns FILE`): the
//! workload, `haul pid` and so CRIU's dump on A; `haul serve` and so CRIU's restore on B. The
//! tree and CRIU then share a mount namespace, so CRIU dumps none (as between two machines)
//! and restores the process into B's, where `path` shows B's directory.
//!
//! ```text
//!   this machine:  PATH/ (empty)          A_DIR/ (node A's disk)      B_DIR/ (node B's disk)
//!   node A's mntns: PATH = bind A_DIR     (propagation: slave of this machine's mounts)
//!   node B's mntns: PATH = bind B_DIR
//! ```
//!
//! CRIU 4.2.1 restores a tree with a mount namespace of its own only with `--root`; sharing
//! CRIU's namespace needs no such thing. A workload must not hold a file opened outside its
//! node's namespace (`haul-launch --mntns` reopens /dev/null and its output file inside).
//! Dropping a [`NodeDisks`] unmounts the namespace files (processes still inside keep their
//! namespace until they end) and removes what it made, but not the two directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why the node-local disks could not be made.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{command}` failed: {stderr} (node-local disks need root, util-linux's unshare and mount)"
)]
pub struct MntnsError {
    /// The command.
    pub command: String,
    /// What it said.
    pub stderr: String,
}

/// One path, a directory of each node's own behind it.
#[derive(Debug)]
pub struct NodeDisks {
    /// The path both nodes use (an empty directory in this machine's own view).
    pub path: PathBuf,
    /// What node A sees at `path`.
    pub a_dir: PathBuf,
    /// What node B sees at `path`.
    pub b_dir: PathBuf,
    /// Node A's mount namespace file.
    pub a_ns: PathBuf,
    /// Node B's mount namespace file.
    pub b_ns: PathBuf,
    ns_dir: PathBuf,
    mounted: Vec<PathBuf>,
}

fn run(args: &[&str]) -> Result<(), MntnsError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| MntnsError {
            command: args.join(" "),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(MntnsError {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("")
}

impl NodeDisks {
    /// Makes `path`, `a_dir` and `b_dir` (when missing) and the two namespaces. The
    /// namespace files go to `/run/haul-mntns-<pid>-<n>/`.
    pub fn new(path: &Path, a_dir: &Path, b_dir: &Path) -> Result<NodeDisks, MntnsError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns_dir = PathBuf::from(format!("/run/haul-mntns-{}-{seq}", std::process::id()));
        for d in [path, a_dir, b_dir, ns_dir.as_path()] {
            std::fs::create_dir_all(d).map_err(|e| MntnsError {
                command: format!("mkdir -p {}", d.display()),
                stderr: e.to_string(),
            })?;
        }
        let mut disks = NodeDisks {
            path: path.to_path_buf(),
            a_dir: a_dir.to_path_buf(),
            b_dir: b_dir.to_path_buf(),
            a_ns: ns_dir.join("a"),
            b_ns: ns_dir.join("b"),
            ns_dir: ns_dir.clone(),
            mounted: Vec::new(),
        };
        // From here on, Drop undoes whatever was made.
        // A namespace file must sit on a mount that does not propagate (unshare(1)).
        run(&["mount", "--bind", s(&ns_dir), s(&ns_dir)])?;
        disks.mounted.push(ns_dir.clone());
        run(&["mount", "--make-private", s(&ns_dir)])?;
        for (ns, dir) in [
            (disks.a_ns.clone(), disks.a_dir.clone()),
            (disks.b_ns.clone(), disks.b_dir.clone()),
        ] {
            std::fs::write(&ns, b"").map_err(|e| MntnsError {
                command: format!("touch {}", ns.display()),
                stderr: e.to_string(),
            })?;
            let mount_ns = format!("--mount={}", s(&ns));
            run(&[
                "unshare",
                &mount_ns,
                "--propagation",
                "slave",
                "mount",
                "--bind",
                s(&dir),
                s(path),
            ])?;
            disks.mounted.insert(0, ns);
        }
        Ok(disks)
    }

    /// `nsenter --mount=NS [--net=/run/netns/NETNS] PROGRAM`: a command in node A's (`a`) or
    /// B's namespace.
    pub fn command(
        &self,
        a: bool,
        netns: Option<&str>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!(
            "--mount={}",
            if a { &self.a_ns } else { &self.b_ns }.display()
        ));
        if let Some(n) = netns {
            c.arg(format!("--net=/run/netns/{n}"));
        }
        c.arg("--").arg(program);
        c
    }
}

impl Drop for NodeDisks {
    fn drop(&mut self) {
        for m in std::mem::take(&mut self.mounted) {
            let _ = run(&["umount", s(&m)]);
        }
        let _ = std::fs::remove_file(&self.a_ns);
        let _ = std::fs::remove_file(&self.b_ns);
        let _ = std::fs::remove_dir(&self.ns_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_sees_its_own_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: node-local disks need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (p, a, b) = (
            tmp.path().join("work"),
            tmp.path().join("disk-a"),
            tmp.path().join("disk-b"),
        );
        let d = NodeDisks::new(&p, &a, &b).unwrap();
        std::fs::write(a.join("f"), b"A").unwrap();
        std::fs::write(b.join("f"), b"B").unwrap();
        let cat = |node_a: bool| {
            let out = d
                .command(node_a, None, "cat")
                .arg(p.join("f"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(cat(true), "A");
        assert_eq!(cat(false), "B");
        assert!(
            !p.join("f").exists(),
            "this machine sees the empty mount point"
        );
        let ns_dir = d.ns_dir.clone();
        drop(d);
        assert!(!ns_dir.exists(), "the namespace directory is gone");
    }
}
