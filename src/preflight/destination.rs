//! The destination's pre-flight: what it can know before the source freezes anything.
//!
//! The source cuts [`DestinationRequirements`] from its inspection and sends it with `Begin`;
//! the destination reads its own state for exactly those things ([`observe_node`]: its
//! network namespace's listening sockets, whether each pid is taken, each file's size and
//! mode, the free space of its image directory) and [`check`] compares the two. `check` is
//! pure, so the rules are tested without a second node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::inspect::TreeInspection;
use super::Finding;
use crate::obstacle::{ObstacleKind, Resource};

/// Extra space the destination needs beyond the images' estimated size (the same margin
/// `haul serve` keeps: `migrate::destination::SPACE_MARGIN`).
pub const SPACE_MARGIN: u64 = 64 << 20;

/// A port the tree listens on or is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortUse {
    /// `tcp` or `udp` (IPv4 and IPv6 alike).
    pub proto: String,
    /// The local address (unspecified = every address).
    pub addr: IpAddr,
    /// The port.
    pub port: u16,
}

/// A regular file the tree holds open (or maps), as the source sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileRequirement {
    /// Absolute path.
    pub path: String,
    /// Size (bytes): CRIU refuses to restore a file of another size (unless `size_checked`
    /// is false: a log open `O_WRONLY | O_APPEND`).
    pub size: u64,
    /// Whether the size must match.
    pub size_checked: bool,
    /// `st_mode`.
    pub mode: u32,
    /// Whether it is held by an fd (`false`: only mapped, e.g. a library).
    pub open: bool,
}

/// What the source sends the destination for its checks (in `Begin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRequirements {
    /// Listening TCP and bound UDP ports: they must be free in the destination's netns.
    pub ports: Vec<PortUse>,
    /// Host pids and tids that must be free (empty when the tree has its own pid namespace).
    pub pids: Vec<i32>,
    /// Regular files that must be there with the same size and mode.
    pub files: Vec<FileRequirement>,
    /// Bytes the images will take (resident memory plus deleted files' content).
    pub image_bytes: u64,
    /// Files the tree holds locks on: nobody may hold a lock on them on the destination.
    #[serde(default)]
    pub locked_files: Vec<String>,
}

impl DestinationRequirements {
    /// The requirements without the files under `roots` (the `--sync` trees, canonical):
    /// they travel with the migration, so the destination need not have them (the sync's own
    /// pre-flight checks every held file outside the trees, `crate::sync::preflight`).
    pub fn without_synced(&self, roots: &[std::path::PathBuf]) -> Self {
        let synced = |p: &str| roots.iter().any(|r| std::path::Path::new(p).starts_with(r));
        DestinationRequirements {
            files: self
                .files
                .iter()
                .filter(|f| !synced(&f.path))
                .cloned()
                .collect(),
            locked_files: self
                .locked_files
                .iter()
                .filter(|f| !synced(f))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// Cuts the requirements out of the source's inspection.
    pub fn from_inspection(t: &TreeInspection) -> Self {
        let ports: BTreeSet<PortUse> = t
            .inet
            .iter()
            .filter(|s| s.state == "listen" || s.state == "bound")
            .map(|s| PortUse {
                proto: s.proto.trim_end_matches('6').to_string(),
                addr: s.local.ip(),
                port: s.local.port(),
            })
            .collect();
        let files: BTreeSet<FileRequirement> = t
            .files
            .iter()
            .map(|f| FileRequirement {
                path: f.path.clone(),
                size: f.size,
                size_checked: f.size_checked,
                mode: f.mode,
                open: f.fd.is_some(),
            })
            .collect();
        DestinationRequirements {
            ports: ports.into_iter().collect(),
            pids: if t.own_pid_namespace {
                Vec::new()
            } else {
                t.all_tids()
            },
            files: files.into_iter().collect(),
            image_bytes: t.resident() + t.deleted.iter().map(|d| d.size).sum::<u64>(),
            locked_files: t
                .locks
                .iter()
                .filter_map(|l| l.path.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }
}

/// One file as the destination finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Size (bytes).
    pub size: u64,
    /// `st_mode`.
    pub mode: u32,
}

/// What the destination observed for the requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Listening TCP and bound UDP ports of its network namespace.
    pub ports: Vec<PortUse>,
    /// Which of the required pids are taken.
    pub taken_pids: BTreeSet<i32>,
    /// Each required file: its state, or `None` when missing.
    pub files: BTreeMap<String, Option<FileState>>,
    /// Each required locked file: the pid holding a lock on it here, when one does (`0`:
    /// a holder /proc/locks does not name).
    #[serde(default)]
    pub locks_held: BTreeMap<String, i32>,
    /// Free bytes in the image directory.
    pub free_bytes: u64,
    /// The image directory.
    pub img_path: String,
}

/// Listening TCP sockets and bound UDP sockets of the calling process's network namespace.
pub fn local_ports() -> Vec<PortUse> {
    use procfs::net::TcpState;
    let mut out = Vec::new();
    for e in [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.state == TcpState::Listen {
            out.push(PortUse {
                proto: "tcp".into(),
                addr: e.local_address.ip(),
                port: e.local_address.port(),
            });
        }
    }
    for e in [procfs::net::udp(), procfs::net::udp6()]
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push(PortUse {
            proto: "udp".into(),
            addr: e.local_address.ip(),
            port: e.local_address.port(),
        });
    }
    out.sort();
    out.dedup();
    out
}

/// Reads this node's state for `req` (the restore runs in this process's network namespace,
/// so its ports are the ones that count).
pub fn observe_node(req: &DestinationRequirements, img_path: &Path) -> NodeState {
    NodeState {
        ports: if req.ports.is_empty() {
            Vec::new()
        } else {
            local_ports()
        },
        taken_pids: req
            .pids
            .iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect(),
        files: req
            .files
            .iter()
            .map(|f| {
                let st = std::fs::metadata(&f.path).ok().map(|m| FileState {
                    size: m.len(),
                    mode: m.mode(),
                });
                (f.path.clone(), st)
            })
            .collect(),
        locks_held: locks_held(&req.locked_files),
        free_bytes: crate::migrate::images::free_bytes(img_path).unwrap_or(0),
        img_path: img_path.display().to_string(),
    }
}

/// Which of `paths` someone holds a lock on in this kernel (`/proc/locks`, by device and
/// inode), with the holder's pid.
pub fn locks_held(paths: &[String]) -> BTreeMap<String, i32> {
    let mut out = BTreeMap::new();
    if paths.is_empty() {
        return out;
    }
    let Ok(locks) = procfs::locks() else {
        return out;
    };
    for path in paths {
        let Ok(m) = std::fs::metadata(path) else {
            continue;
        };
        let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
        if let Some(l) = locks
            .iter()
            .find(|l| l.inode == m.ino() && l.devmaj == maj && l.devmin == min)
        {
            out.insert(path.clone(), l.pid.unwrap_or(0));
        }
    }
    out
}

/// Whether a socket bound to `b` would collide with `a` (same protocol and port, and the same
/// address or either on every address).
pub fn ports_collide(a: &PortUse, b: &PortUse) -> bool {
    a.proto == b.proto
        && a.port == b.port
        && (a.addr == b.addr || a.addr.is_unspecified() || b.addr.is_unspecified())
}

fn dest(kind: ObstacleKind, resource: Resource, detail: String) -> Finding {
    Finding {
        kind,
        severity: super::Severity::Refuse,
        resource,
        detail,
        remedy: kind.remedy(),
        node: "destination".into(),
    }
}

/// The destination's findings: every one refuses the migration (each would fail the restore
/// after the freeze). Pure.
pub fn check(req: &DestinationRequirements, node: &NodeState) -> Vec<Finding> {
    let mut out = Vec::new();
    for want in &req.ports {
        if let Some(there) = node.ports.iter().find(|p| ports_collide(want, p)) {
            out.push(dest(
                ObstacleKind::PortTaken,
                Resource::Port { proto: want.proto.clone(), addr: want.addr.to_string(), port: want.port },
                format!(
                    "{} port {} ({}) is taken on the destination (a socket on {}:{} there): the restore could not bind it",
                    want.proto, want.port, want.addr, there.addr, there.port
                ),
            ));
        }
    }
    for (path, holder) in &node.locks_held {
        out.push(dest(
            ObstacleKind::LockTaken,
            Resource::File {
                path: path.clone(),
                size: None,
                expected_size: None,
                mode: None,
                expected_mode: None,
            },
            format!(
                "{path} is locked on the destination already (by pid {holder} there): the restore would wait for the lock forever"
            ),
        ));
    }
    for pid in req.pids.iter().filter(|p| node.taken_pids.contains(p)) {
        out.push(dest(
            ObstacleKind::PidTaken,
            Resource::Pid { pid: *pid },
            format!("pid {pid} is taken on the destination and the tree has no pid namespace of its own: the restore could not recreate it"),
        ));
    }
    for f in &req.files {
        let file = |size, mode| Resource::File {
            path: f.path.clone(),
            size,
            expected_size: Some(f.size),
            mode,
            expected_mode: Some(f.mode),
        };
        match node.files.get(&f.path).copied().flatten() {
            None => out.push(dest(
                ObstacleKind::FileMissing,
                file(None, None),
                format!(
                    "{} ({}) is not on the destination",
                    f.path,
                    if f.open { "open" } else { "mapped" }
                ),
            )),
            Some(st) if (f.size_checked && st.size != f.size) || st.mode != f.mode => {
                out.push(dest(
                    ObstacleKind::FileDiffers,
                    file(Some(st.size), Some(st.mode)),
                    format!(
                    "{} differs on the destination: size {} (source {}), mode {:o} (source {:o})",
                    f.path, st.size, f.size, st.mode, f.mode
                ),
                ))
            }
            Some(_) => {}
        }
    }
    let needed = req.image_bytes.saturating_add(SPACE_MARGIN);
    if node.free_bytes < needed {
        out.push(dest(
            ObstacleKind::NoSpace,
            Resource::Space {
                path: node.img_path.clone(),
                free: node.free_bytes,
                needed,
            },
            format!(
                "{} has {} MiB free, the images need about {} MiB",
                node.img_path,
                node.free_bytes >> 20,
                needed >> 20
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(proto: &str, addr: &str, port: u16) -> PortUse {
        PortUse {
            proto: proto.into(),
            addr: addr.parse().unwrap(),
            port,
        }
    }

    fn req() -> DestinationRequirements {
        DestinationRequirements {
            ports: vec![port("tcp", "127.0.0.1", 8080)],
            pids: vec![4242, 4243],
            files: vec![FileRequirement {
                path: "/srv/a".into(),
                size: 10,
                size_checked: true,
                mode: 0o100644,
                open: true,
            }],
            image_bytes: 1 << 20,
            locked_files: vec!["/srv/a".into()],
        }
    }

    fn fine() -> NodeState {
        NodeState {
            ports: vec![port("tcp", "127.0.0.1", 22), port("udp", "0.0.0.0", 8080)],
            taken_pids: BTreeSet::new(),
            files: [(
                "/srv/a".to_string(),
                Some(FileState {
                    size: 10,
                    mode: 0o100644,
                }),
            )]
            .into(),
            locks_held: BTreeMap::new(),
            free_bytes: 1 << 30,
            img_path: "/var/local/haul".into(),
        }
    }

    #[test]
    fn files_under_the_synced_trees_are_not_required() {
        let mut r = req();
        r.files.push(FileRequirement {
            path: "/srv/data/log".into(),
            size: 1,
            size_checked: false,
            mode: 0o100644,
            open: true,
        });
        r.locked_files.push("/srv/data/db".into());
        let cut = r.without_synced(&["/srv/data".into()]);
        assert!(cut.files.iter().all(|f| !f.path.starts_with("/srv/data/")));
        assert_eq!(cut.files.len(), r.files.len() - 1);
        assert_eq!(cut.locked_files, ["/srv/a"]);
        // a sibling whose name only starts like a root is not under it
        assert_eq!(r.without_synced(&["/srv/dat".into()]), r);
        assert_eq!(r.without_synced(&[]), r);
    }

    #[test]
    fn a_free_destination_has_no_findings() {
        assert_eq!(check(&req(), &fine()), vec![]);
    }

    #[test]
    fn each_conflict_refuses_with_its_resource() {
        let mut n = fine();
        n.ports.push(port("tcp", "0.0.0.0", 8080));
        n.taken_pids.insert(4243);
        n.files.insert(
            "/srv/a".into(),
            Some(FileState {
                size: 11,
                mode: 0o100644,
            }),
        );
        n.free_bytes = 10 << 20;
        let f = check(&req(), &n);
        let kinds: Vec<_> = f.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                ObstacleKind::PortTaken,
                ObstacleKind::PidTaken,
                ObstacleKind::FileDiffers,
                ObstacleKind::NoSpace
            ]
        );
        assert!(f
            .iter()
            .all(|f| f.severity == super::super::Severity::Refuse && f.node == "destination"));
        assert_eq!(f[1].resource, Resource::Pid { pid: 4243 });
        assert!(
            f[2].detail.contains("size 11 (source 10)"),
            "{}",
            f[2].detail
        );
        let mut log = req();
        log.files[0].size_checked = false;
        let mut grown = fine();
        grown.files.insert(
            "/srv/a".into(),
            Some(FileState {
                size: 99,
                mode: 0o100644,
            }),
        );
        assert_eq!(
            check(&log, &grown),
            vec![],
            "a log's size is not checked (CRIU does not)"
        );
        n.files.insert("/srv/a".into(), None);
        assert!(check(&req(), &n)
            .iter()
            .any(|f| f.kind == ObstacleKind::FileMissing));
    }

    #[test]
    fn port_collisions() {
        assert!(ports_collide(
            &port("tcp", "127.0.0.1", 80),
            &port("tcp", "0.0.0.0", 80)
        ));
        assert!(ports_collide(
            &port("tcp", "::", 80),
            &port("tcp", "10.0.0.1", 80)
        ));
        assert!(!ports_collide(
            &port("tcp", "127.0.0.1", 80),
            &port("tcp", "127.0.0.2", 80)
        ));
        assert!(!ports_collide(
            &port("tcp", "0.0.0.0", 80),
            &port("udp", "0.0.0.0", 80)
        ));
        assert!(!ports_collide(
            &port("tcp", "0.0.0.0", 80),
            &port("tcp", "0.0.0.0", 81)
        ));
    }

    #[test]
    fn observes_this_node() {
        let me = std::process::id() as i32;
        let r = DestinationRequirements {
            ports: vec![],
            pids: vec![me, i32::MAX],
            files: vec![FileRequirement {
                path: "/proc/self/exe-does-not-exist".into(),
                size: 0,
                size_checked: true,
                mode: 0,
                open: true,
            }],
            image_bytes: 0,
            locked_files: vec![],
        };
        let n = observe_node(&r, Path::new("/tmp"));
        assert_eq!(n.taken_pids, [me].into());
        assert_eq!(n.files.values().next(), Some(&None));
        assert!(n.free_bytes > 0);
    }

    #[test]
    fn a_lock_held_here_refuses_the_file_and_names_its_holder() {
        use std::os::fd::AsRawFd;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("locked");
        let f = std::fs::File::create(&path).unwrap();
        // SAFETY: flock on an fd this test owns; no memory is passed.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        let p = path.display().to_string();
        let held = locks_held(std::slice::from_ref(&p));
        assert_eq!(held.get(&p), Some(&(std::process::id() as i32)));
        let mut node = fine();
        node.locks_held = held;
        let f = check(&req(), &node);
        assert!(
            f.iter()
                .any(|x| x.kind == ObstacleKind::LockTaken && x.detail.contains(&p)),
            "{f:?}"
        );
        assert!(locks_held(&["/nonexistent/x".to_string()]).is_empty());
    }

    #[test]
    fn requirements_round_trip_through_json() {
        let r = req();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<DestinationRequirements>(&j).unwrap(),
            r
        );
    }
}
