//! Which cgroup hierarchies this node mounts, and which way of slowing a tree they offer.
//!
//! cgroup v1 mounts each controller (or a few together) as its own hierarchy
//! (`/sys/fs/cgroup/cpu`, `/sys/fs/cgroup/freezer`, ...); a task sits in one cgroup per
//! hierarchy. cgroup v2 is one hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` beside
//! v1 ones) whose controllers are those not bound to a v1 mount; `cgroup.freeze` is part of its
//! core (Linux 5.2), with no controller to enable. This host: v1 `cpu` and `freezer`, and a v2
//! mount with no controllers; the VMs' Debian 12: v2 with `cpu`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ThrottleError;

/// cgroup v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupVersion {
    /// One hierarchy per controller (group).
    V1,
    /// The unified hierarchy.
    V2,
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// v1 or v2.
    pub version: CgroupVersion,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The cgroup shown at the mount point (`/` unless a sub-tree is mounted, as in a
    /// container).
    pub mount_root: String,
    /// v1: the controllers bound to it (sorted, e.g. `["cpu"]` or `["cpu", "cpuacct"]`);
    /// v2: the controllers its root offers (`cgroup.controllers`).
    pub controllers: Vec<String>,
}

impl Hierarchy {
    /// Whether `controller` is bound to (v1) or offered by (v2) this hierarchy.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// Whether a line of `/proc/PID/cgroup` is about this hierarchy.
    pub fn matches(&self, line: &procfs::ProcessCGroup) -> bool {
        match self.version {
            CgroupVersion::V2 => line.hierarchy == 0 && line.controllers.is_empty(),
            CgroupVersion::V1 => {
                if line.hierarchy == 0 {
                    return false;
                }
                // named hierarchies show as "name=systemd"; controllers by name
                let mut c: Vec<&str> = line.controllers.iter().map(String::as_str).collect();
                c.sort_unstable();
                let mut mine: Vec<&str> = self.controllers.iter().map(String::as_str).collect();
                mine.sort_unstable();
                c == mine
            }
        }
    }

    /// The directory of the cgroup `path` (as `/proc/PID/cgroup` shows it); `None` when it
    /// lies outside what this mount shows.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let root = self.mount_root.trim_end_matches('/');
        let rel = if root.is_empty() {
            path
        } else if path == root {
            "/"
        } else {
            path.strip_prefix(root).filter(|r| r.starts_with('/'))?
        };
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rel)
        })
    }

    /// The cgroup path (as `/proc/PID/cgroup` shows it) of a directory of this mount.
    pub fn path_of(&self, dir: &Path) -> Option<String> {
        let rel = dir.strip_prefix(&self.mount).ok()?;
        let root = self.mount_root.trim_end_matches('/');
        let rel = rel.to_str()?;
        Some(if rel.is_empty() {
            if root.is_empty() {
                "/".to_string()
            } else {
                root.to_string()
            }
        } else {
            format!("{root}/{rel}")
        })
    }
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            CgroupVersion::V1 => write!(
                f,
                "cgroup v1 {} at {}",
                self.controllers.join(","),
                self.mount.display()
            ),
            CgroupVersion::V2 => write!(
                f,
                "cgroup v2 at {} (controllers: {})",
                self.mount.display(),
                if self.controllers.is_empty() {
                    "none".to_string()
                } else {
                    self.controllers.join(" ")
                }
            ),
        }
    }
}

/// How a tree is slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MechanismKind {
    /// cgroup v2 `cpu.max`: a CPU quota per period.
    CpuMax,
    /// cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`: the same on v1.
    CfsQuota,
    /// cgroup v2 `cgroup.freeze`, toggled in a duty cycle.
    Freeze,
    /// cgroup v1 `freezer.state`, toggled in a duty cycle.
    Freezer,
}

impl MechanismKind {
    /// Whether this is a CPU quota (as opposed to a freezer duty cycle).
    pub fn is_cpu_quota(self) -> bool {
        matches!(self, MechanismKind::CpuMax | MechanismKind::CfsQuota)
    }
}

/// A way to slow a tree on this node: the kind and the hierarchy it works in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    /// What is used.
    pub kind: MechanismKind,
    /// Where.
    pub hierarchy: Hierarchy,
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            MechanismKind::CpuMax => "CPU quota (cpu.max)",
            MechanismKind::CfsQuota => "CPU quota (cpu.cfs_quota_us)",
            MechanismKind::Freeze => "freezer duty cycle (cgroup.freeze)",
            MechanismKind::Freezer => "freezer duty cycle (freezer.state)",
        };
        write!(f, "{what} in {}", self.hierarchy)
    }
}

/// The cgroup hierarchies mounted on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Every cgroup mount (v1 and v2), in mount order; the first mount of a hierarchy wins.
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// Reads this process's mount table and each v2 root's `cgroup.controllers`.
    pub fn discover() -> Result<Layout, ThrottleError> {
        let me = procfs::process::Process::myself().map_err(|source| ThrottleError::Proc {
            what: "the process",
            pid: std::process::id() as i32,
            source,
        })?;
        let mounts = me.mountinfo().map_err(|source| ThrottleError::Proc {
            what: "mountinfo",
            pid: std::process::id() as i32,
            source,
        })?;
        let mut layout = Layout::default();
        for m in mounts {
            let h = match m.fs_type.as_str() {
                "cgroup2" => {
                    let controllers =
                        std::fs::read_to_string(m.mount_point.join("cgroup.controllers"))
                            .map(|s| s.split_whitespace().map(String::from).collect())
                            .unwrap_or_default();
                    Hierarchy {
                        version: CgroupVersion::V2,
                        mount: m.mount_point.clone(),
                        mount_root: m.root.clone(),
                        controllers,
                    }
                }
                "cgroup" => {
                    let mut controllers: Vec<String> = m
                        .super_options
                        .keys()
                        .filter(|k| is_v1_controller(k))
                        .cloned()
                        .collect();
                    if let Some(Some(name)) = m.super_options.get("name") {
                        controllers.push(format!("name={name}"));
                    }
                    controllers.sort();
                    Hierarchy {
                        version: CgroupVersion::V1,
                        mount: m.mount_point.clone(),
                        mount_root: m.root.clone(),
                        controllers,
                    }
                }
                _ => continue,
            };
            let dup = layout
                .hierarchies
                .iter()
                .any(|o| o.version == h.version && o.controllers == h.controllers);
            if !dup {
                layout.hierarchies.push(h);
            }
        }
        Ok(layout)
    }

    /// The v2 hierarchy, if mounted.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == CgroupVersion::V2)
    }

    /// The v1 hierarchy `controller` is bound to, if any.
    pub fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| h.version == CgroupVersion::V1 && h.has(controller))
    }

    /// Every way to throttle on this node, best first: a CPU quota (v2, then v1) slows the
    /// tree smoothly; a freezer duty cycle (v2, then v1) stops it in slices.
    pub fn mechanisms(&self) -> Vec<Mechanism> {
        let mut out = Vec::new();
        if let Some(h) = self.v2().filter(|h| h.has("cpu")) {
            out.push(Mechanism {
                kind: MechanismKind::CpuMax,
                hierarchy: h.clone(),
            });
        }
        if let Some(h) = self.v1("cpu") {
            out.push(Mechanism {
                kind: MechanismKind::CfsQuota,
                hierarchy: h.clone(),
            });
        }
        if let Some(h) = self.v2() {
            out.push(Mechanism {
                kind: MechanismKind::Freeze,
                hierarchy: h.clone(),
            });
        }
        if let Some(h) = self.v1("freezer") {
            out.push(Mechanism {
                kind: MechanismKind::Freezer,
                hierarchy: h.clone(),
            });
        }
        out
    }

    /// The best way to throttle here, or why there is none.
    pub fn mechanism(&self) -> Result<Mechanism, ThrottleError> {
        self.mechanisms()
            .into_iter()
            .next()
            .ok_or_else(|| ThrottleError::NoMechanism {
                why: format!(
                    "no cgroup v2 mount and no v1 cpu or freezer hierarchy (mounted: {})",
                    self.describe()
                ),
            })
    }

    /// One line per hierarchy, for `haul check` and error messages.
    pub fn describe(&self) -> String {
        if self.hierarchies.is_empty() {
            return "no cgroup file system".into();
        }
        self.hierarchies
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The names of cgroup v1 controllers (the super options of a v1 mount also carry `rw`,
/// `relatime`, `name=...`, `release_agent=...`).
fn is_v1_controller(opt: &str) -> bool {
    matches!(
        opt,
        "cpu"
            | "cpuacct"
            | "cpuset"
            | "memory"
            | "devices"
            | "freezer"
            | "net_cls"
            | "net_prio"
            | "blkio"
            | "perf_event"
            | "hugetlb"
            | "pids"
            | "rdma"
            | "misc"
    )
}

/// Reads `/proc/PID/task/TID/cgroup` (or `/proc/PID/cgroup` when `tid == pid`... any tid).
pub fn task_cgroups(pid: i32, tid: i32) -> Result<procfs::ProcessCGroups, procfs::ProcError> {
    use procfs::FromRead;
    procfs::ProcessCGroups::from_file(format!("/proc/{pid}/task/{tid}/cgroup"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(ctl: &[&str], mount: &str) -> Hierarchy {
        Hierarchy {
            version: CgroupVersion::V1,
            mount: mount.into(),
            mount_root: "/".into(),
            controllers: ctl.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn v2(ctl: &[&str], mount: &str) -> Hierarchy {
        Hierarchy {
            version: CgroupVersion::V2,
            ..v1(ctl, mount)
        }
    }

    #[test]
    fn mechanisms_best_first() {
        // this host: v1 cpu and freezer, v2 without controllers
        let host = Layout {
            hierarchies: vec![
                v1(&["cpu"], "/sys/fs/cgroup/cpu"),
                v1(&["freezer"], "/sys/fs/cgroup/freezer"),
                v2(&[], "/sys/fs/cgroup/unified"),
            ],
        };
        let kinds: Vec<_> = host.mechanisms().iter().map(|m| m.kind).collect();
        assert_eq!(
            kinds,
            [
                MechanismKind::CfsQuota,
                MechanismKind::Freeze,
                MechanismKind::Freezer
            ]
        );
        // the VMs: v2 with cpu
        let vm = Layout {
            hierarchies: vec![v2(
                &["cpuset", "cpu", "io", "memory", "pids"],
                "/sys/fs/cgroup",
            )],
        };
        assert_eq!(vm.mechanism().unwrap().kind, MechanismKind::CpuMax);
        assert!(vm
            .mechanism()
            .unwrap()
            .to_string()
            .contains("(cpu.max) in cgroup v2 at /sys/fs/cgroup"));
        let none = Layout::default();
        let err = none.mechanism().unwrap_err().to_string();
        assert!(err.contains("no cgroup file system"), "{err}");
    }

    #[test]
    fn paths_map_both_ways() {
        let h = v1(&["cpu"], "/sys/fs/cgroup/cpu");
        assert_eq!(h.dir_of("/").unwrap(), Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(
            h.dir_of("/a/b").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/a/b")
        );
        assert_eq!(h.dir_of("/a/../../etc"), None);
        assert_eq!(
            h.path_of(Path::new("/sys/fs/cgroup/cpu/a/b")).unwrap(),
            "/a/b"
        );
        assert_eq!(h.path_of(Path::new("/sys/fs/cgroup/cpu")).unwrap(), "/");
        // a container's mount of a sub-tree
        let sub = Hierarchy {
            mount_root: "/lxc/c1".into(),
            ..v2(&["cpu"], "/sys/fs/cgroup")
        };
        assert_eq!(
            sub.dir_of("/lxc/c1/x").unwrap(),
            Path::new("/sys/fs/cgroup/x")
        );
        assert_eq!(sub.dir_of("/lxc/c1").unwrap(), Path::new("/sys/fs/cgroup"));
        assert_eq!(sub.dir_of("/lxc/c2/x"), None, "outside the mount");
        assert_eq!(sub.dir_of("/lxc/c1x"), None);
        assert_eq!(
            sub.path_of(Path::new("/sys/fs/cgroup/x")).unwrap(),
            "/lxc/c1/x"
        );
    }

    #[test]
    fn proc_lines_match_their_hierarchy() {
        let line = |h: u32, c: &[&str], p: &str| procfs::ProcessCGroup {
            hierarchy: h,
            controllers: c.iter().map(|s| s.to_string()).collect(),
            pathname: p.into(),
        };
        let cpu = v1(&["cpu", "cpuacct"], "/x");
        assert!(cpu.matches(&line(3, &["cpuacct", "cpu"], "/")));
        assert!(!cpu.matches(&line(3, &["cpu"], "/")));
        assert!(!cpu.matches(&line(0, &[], "/")));
        let u = v2(&[], "/y");
        assert!(u.matches(&line(0, &[], "/")));
        assert!(!u.matches(&line(1, &["cpu"], "/")));
    }

    #[test]
    fn this_node_is_discovered() {
        let l = Layout::discover().unwrap();
        let me = std::process::id() as i32;
        let lines = task_cgroups(me, me).unwrap();
        // every hierarchy found is one this process has a line for
        for h in &l.hierarchies {
            assert!(
                lines.0.iter().any(|x| h.matches(x)),
                "{h} has no line in /proc/self/cgroup: {lines:?}"
            );
        }
        eprintln!("this node: {}", l.describe());
    }
}
