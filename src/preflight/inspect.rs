//! The source's look at the tree before anything is frozen: what it holds, from `/proc`.
//!
//! [`inspect_tree`] reads, for every process of the tree rooted at a pid: its fds (files,
//! deleted files with their sizes, sockets, pipes, io_uring, ptys), the TCP/UDP sockets of its
//! network namespace that it owns (listening ports, established connections), its unix
//! sockets and their peers (sock_diag), the file locks it holds (`/proc/locks`), the SysV IPC
//! objects it is known to use when it shares the node's IPC namespace, its namespaces, its
//! session, and its memory (mapped and resident). The result is plain data
//! ([`TreeInspection`], serde) that [`super::assess`] turns into findings, and from which
//! [`super::DestinationRequirements`] is cut for the destination's own checks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use procfs::process::{FDTarget, MMapPath, Process};
use serde::{Deserialize, Serialize};

use super::unix_diag;
use crate::migrate::tree;

/// A process of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeProcess {
    /// Host pid (as this node's initial pid namespace sees it).
    pub pid: i32,
    /// Its pid inside its own pid namespace (the last `NSpid` field).
    pub ns_pid: i32,
    /// Its threads' host tids (the pid included).
    pub tids: Vec<i32>,
    /// `comm`.
    pub comm: String,
    /// Session id (host pid of the session leader, 0 when outside our pid namespace).
    pub sid: i32,
}

/// A regular file the tree holds open or maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUse {
    /// Absolute path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// One holder: host pid.
    pub pid: i32,
    /// The fd, or `None` for a mapped file (libraries, the executable).
    pub fd: Option<i32>,
    /// Whether CRIU checks its size on restore: always, except for a file open
    /// `O_WRONLY | O_APPEND` (a log; criu/files-reg.c `should_check_size`).
    pub size_checked: bool,
}

/// A deleted-but-open file (CRIU's ghost file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedFile {
    /// The path it had (without the kernel's ` (deleted)` suffix).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes allocated (`st_blocks * 512`): what CRIU compares with its ghost limit.
    pub allocated: u64,
    /// Its remaining hard links (`st_nlink`): 0 for a file gone from the file system (CRIU
    /// copies it: a ghost file); more when it lives on under another name (CRIU links it
    /// back: link-remap).
    pub links: u64,
    /// Host pid holding it.
    pub pid: i32,
    /// The fd, or `None` when it is only mapped.
    pub fd: Option<i32>,
}

/// A TCP or UDP socket of the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address and port.
    pub local: std::net::SocketAddr,
    /// Remote address and port (unspecified for a listener).
    pub remote: std::net::SocketAddr,
    /// `listen`, `established`, `bound` (UDP), or the kernel's state name.
    pub state: String,
    /// Socket inode.
    pub ino: u64,
    /// Host pid and fd holding it.
    pub pid: i32,
    /// The fd.
    pub fd: i32,
}

/// A unix socket of the tree and where its peer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixUse {
    /// Socket inode.
    pub ino: u64,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2) or `SOCK_SEQPACKET` (5).
    pub sock_type: u8,
    /// Connected (a stream socket whose peer may not have accepted it yet has no peer inode).
    pub connected: bool,
    /// Its bound name, if any.
    pub name: Option<String>,
    /// The peer's inode, for a connected socket.
    pub peer_ino: Option<u64>,
    /// The peer's bound name, if any.
    pub peer_name: Option<String>,
    /// Whether the peer is a socket of the tree too (CRIU dumps both ends).
    pub peer_in_tree: bool,
    /// Host pid and fd holding it.
    pub pid: i32,
    /// The fd.
    pub fd: i32,
}

/// A file lock held by the tree (a line of `/proc/locks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockUse {
    /// `FLOCK`, `POSIX`, `OFDLCK`, `LEASE`.
    pub class: String,
    /// Host pid holding it.
    pub pid: i32,
    /// The locked file's inode.
    pub inode: u64,
    /// Its path, when an fd of the holder points at that inode.
    pub path: Option<String>,
}

/// A SysV IPC object of the node's IPC namespace that the tree is seen to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcUse {
    /// `shm`, `msg` or `sem`.
    pub class: String,
    /// Its id.
    pub id: i32,
    /// How the tree is tied to it ("attached by pid 12", "created by pid 12", ...).
    pub why: String,
}

/// An fd of a kind CRIU cannot dump or restores only in some conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialFd {
    /// Host pid.
    pub pid: i32,
    /// The fd.
    pub fd: i32,
    /// What `/proc/PID/fd/N` points at.
    pub target: String,
}

/// The memory of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Host pid.
    pub pid: i32,
    /// Bytes mapped (`VmSize`).
    pub mapped: u64,
    /// Bytes resident (`VmRSS`).
    pub resident: u64,
    /// The largest single mapping (bytes).
    pub largest_mapping: u64,
}

/// Everything the source learned about the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeInspection {
    /// The root's host pid.
    pub root: i32,
    /// Every process, root first.
    pub processes: Vec<TreeProcess>,
    /// The root is in a pid namespace other than the node's (its pids cannot collide).
    pub own_pid_namespace: bool,
    /// The root is in an IPC namespace other than the node's.
    pub own_ipc_namespace: bool,
    /// The root is in a network namespace other than haul's.
    pub own_net_namespace: bool,
    /// The session ids of the tree whose leader is not in the tree.
    pub sessions_outside: Vec<i32>,
    /// Regular files held open or mapped (one entry per path).
    pub files: Vec<FileUse>,
    /// Deleted files held open or mapped.
    pub deleted: Vec<DeletedFile>,
    /// TCP and UDP sockets.
    pub inet: Vec<InetSocket>,
    /// Unix sockets.
    pub unix: Vec<UnixUse>,
    /// File locks.
    pub locks: Vec<LockUse>,
    /// SysV objects of the node's IPC namespace the tree uses.
    pub ipc: Vec<IpcUse>,
    /// io_uring instances.
    pub io_uring: Vec<SpecialFd>,
    /// Pty masters and slaves.
    pub ptys: Vec<SpecialFd>,
    /// Memory per process.
    pub memory: Vec<ProcessMemory>,
    /// What could not be read (the inspection goes on without it).
    pub unreadable: Vec<String>,
}

impl TreeInspection {
    /// Resident bytes of the whole tree.
    pub fn resident(&self) -> u64 {
        self.memory.iter().map(|m| m.resident).sum()
    }

    /// Mapped bytes of the whole tree.
    pub fn mapped(&self) -> u64 {
        self.memory.iter().map(|m| m.mapped).sum()
    }

    /// Every host pid and tid of the tree.
    pub fn all_tids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .processes
            .iter()
            .flat_map(|p| p.tids.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Why the tree could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The root process is gone or cannot be read.
    #[error("cannot inspect pid {pid}: {source}; is it running, and is haul root?")]
    Root {
        /// The pid.
        pid: i32,
        /// What /proc said.
        source: procfs::ProcError,
    },
}

fn ns_inode(pid: &str, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

/// Inspects the tree rooted at `root`. Only a missing root is an error; anything else that
/// cannot be read is listed in [`TreeInspection::unreadable`].
pub fn inspect_tree(root: i32) -> Result<TreeInspection, InspectError> {
    let root_proc =
        Process::new(root).map_err(|source| InspectError::Root { pid: root, source })?;
    root_proc
        .stat()
        .map_err(|source| InspectError::Root { pid: root, source })?;
    let mut t = TreeInspection {
        root,
        ..Default::default()
    };
    let pids = tree::descendants(root);
    let rs = root.to_string();
    // haul runs in the node's namespaces (init's are not always readable, e.g. in a
    // container): "its own" means other than haul's.
    t.own_pid_namespace = ns_inode(&rs, "pid") != ns_inode("self", "pid");
    t.own_ipc_namespace = ns_inode(&rs, "ipc") != ns_inode("self", "ipc");
    t.own_net_namespace = ns_inode(&rs, "net") != ns_inode("self", "net");

    let mut socket_owner: HashMap<u64, (i32, i32)> = HashMap::new();
    let mut inode_paths: HashMap<(i32, u64), String> = HashMap::new();
    let mut seen_files: HashSet<String> = HashSet::new();
    let mut sids = BTreeSet::new();
    for &pid in &pids {
        let Ok(p) = Process::new(pid) else { continue };
        inspect_process(
            &p,
            &mut t,
            &mut socket_owner,
            &mut inode_paths,
            &mut seen_files,
            &mut sids,
        );
    }
    let members: HashSet<i32> = t.processes.iter().map(|p| p.pid).collect();
    t.sessions_outside = sids.into_iter().filter(|s| !members.contains(s)).collect();

    inspect_inet(&root_proc, &socket_owner, &mut t);
    inspect_unix(root, &socket_owner, &mut t);
    inspect_locks(&members, &inode_paths, &mut t);
    if !t.own_ipc_namespace {
        inspect_ipc(&members, &mut t);
    }
    Ok(t)
}

fn inspect_process(
    p: &Process,
    t: &mut TreeInspection,
    socket_owner: &mut HashMap<u64, (i32, i32)>,
    inode_paths: &mut HashMap<(i32, u64), String>,
    seen_files: &mut HashSet<String>,
    sids: &mut BTreeSet<i32>,
) {
    let pid = p.pid;
    let note = |t: &mut TreeInspection, what: &str, e: &dyn std::fmt::Display| {
        t.unreadable.push(format!("pid {pid}: {what}: {e}"))
    };
    let (comm, sid) = match p.stat() {
        Ok(s) => (s.comm, s.session),
        Err(e) => return note(t, "stat", &e),
    };
    sids.insert(sid);
    let ns_pid = p
        .status()
        .ok()
        .and_then(|s| s.nspid.and_then(|v| v.last().copied()))
        .unwrap_or(pid);
    let tids = p
        .tasks()
        .map(|it| it.flatten().map(|task| task.tid).collect())
        .unwrap_or_else(|_| vec![pid]);
    t.processes.push(TreeProcess {
        pid,
        ns_pid,
        tids,
        comm,
        sid,
    });

    match p.fd() {
        Ok(fds) => {
            for fd in fds.flatten() {
                let n = fd.fd;
                match &fd.target {
                    FDTarget::Socket(ino) => {
                        socket_owner.entry(*ino).or_insert((pid, n));
                    }
                    FDTarget::AnonInode(name) if name.contains("io_uring") => {
                        t.io_uring.push(SpecialFd {
                            pid,
                            fd: n,
                            target: format!("anon_inode:{name}"),
                        })
                    }
                    FDTarget::Path(path) => {
                        let s = path.to_string_lossy().into_owned();
                        let link = format!("/proc/{pid}/fd/{n}");
                        if s == "/dev/ptmx" || s.starts_with("/dev/pts/") {
                            t.ptys.push(SpecialFd {
                                pid,
                                fd: n,
                                target: s.clone(),
                            });
                        }
                        let Ok(st) = std::fs::metadata(&link) else {
                            continue;
                        };
                        inode_paths.insert((pid, st.ino()), s.clone());
                        if !st.file_type().is_file() {
                            continue;
                        }
                        if let Some(orig) = s.strip_suffix(" (deleted)") {
                            t.deleted.push(DeletedFile {
                                path: orig.to_string(),
                                size: st.len(),
                                allocated: st.blocks() * 512,
                                links: st.nlink(),
                                pid,
                                fd: Some(n),
                            });
                        } else {
                            let size_checked = size_checked(pid, n);
                            if seen_files.insert(s.clone()) {
                                t.files.push(FileUse {
                                    path: s,
                                    size: st.len(),
                                    mode: st.mode(),
                                    pid,
                                    fd: Some(n),
                                    size_checked,
                                });
                            } else if size_checked {
                                // Held twice: one fd whose size CRIU checks is enough.
                                if let Some(f) = t.files.iter_mut().find(|f| f.path == s) {
                                    f.size_checked = true;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Err(e) => note(t, "fds", &e),
    }

    let mut largest = 0;
    match p.maps() {
        Ok(maps) => {
            for m in maps.iter() {
                largest = largest.max(m.address.1 - m.address.0);
                if let MMapPath::Path(path) = &m.pathname {
                    let s = path.to_string_lossy().into_owned();
                    if s.starts_with("/SYSV") {
                        continue;
                    }
                    if let Some(orig) = s.strip_suffix(" (deleted)") {
                        if !t.deleted.iter().any(|d| d.path == orig && d.pid == pid) {
                            let (size, allocated, links) =
                                map_file_size(pid, m.address).unwrap_or((0, 0, 0));
                            t.deleted.push(DeletedFile {
                                path: orig.to_string(),
                                size,
                                allocated,
                                links,
                                pid,
                                fd: None,
                            });
                        }
                    } else if seen_files.insert(s.clone()) {
                        if let Ok(st) = std::fs::metadata(&s) {
                            if st.file_type().is_file() {
                                t.files.push(FileUse {
                                    path: s,
                                    size: st.len(),
                                    mode: st.mode(),
                                    pid,
                                    fd: None,
                                    size_checked: true,
                                });
                            }
                        }
                    }
                }
            }
        }
        Err(e) => note(t, "maps", &e),
    }
    match p.statm() {
        Ok(sm) => {
            let page = procfs::page_size();
            t.memory.push(ProcessMemory {
                pid,
                mapped: sm.size * page,
                resident: sm.resident * page,
                largest_mapping: largest,
            });
        }
        Err(e) => note(t, "statm", &e),
    }
}

/// Whether CRIU records (and on restore checks) the size of `pid`'s fd `fd`: not for a file
/// open write-only with `O_APPEND` (the `flags:` of `/proc/PID/fdinfo/FD`, octal).
fn size_checked(pid: i32, fd: i32) -> bool {
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
        });
    match flags {
        Some(f) => !((f & libc::O_ACCMODE) == libc::O_WRONLY && f & libc::O_APPEND != 0),
        None => true,
    }
}

/// Size and allocation of a mapped file, through `/proc/PID/map_files/START-END`.
fn map_file_size(pid: i32, (start, end): (u64, u64)) -> Option<(u64, u64, u64)> {
    let st = std::fs::metadata(format!("/proc/{pid}/map_files/{start:x}-{end:x}")).ok()?;
    Some((st.len(), st.blocks() * 512, st.nlink()))
}

fn inspect_inet(root: &Process, owners: &HashMap<u64, (i32, i32)>, t: &mut TreeInspection) {
    use procfs::net::TcpState;
    let tcp = [("tcp", root.tcp()), ("tcp6", root.tcp6())];
    for (proto, entries) in tcp {
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                t.unreadable
                    .push(format!("/proc/{}/net/{proto}: {e}", root.pid));
                continue;
            }
        };
        for e in entries {
            let Some(&(pid, fd)) = owners.get(&e.inode) else {
                continue;
            };
            let state = match e.state {
                TcpState::Listen => "listen".to_string(),
                TcpState::Established => "established".to_string(),
                other => format!("{other:?}").to_lowercase(),
            };
            t.inet.push(InetSocket {
                proto: proto.into(),
                local: e.local_address,
                remote: e.remote_address,
                state,
                ino: e.inode,
                pid,
                fd,
            });
        }
    }
    let udp = [("udp", root.udp()), ("udp6", root.udp6())];
    for (proto, entries) in udp {
        let Ok(entries) = entries else { continue };
        for e in entries {
            let Some(&(pid, fd)) = owners.get(&e.inode) else {
                continue;
            };
            t.inet.push(InetSocket {
                proto: proto.into(),
                local: e.local_address,
                remote: e.remote_address,
                state: "bound".into(),
                ino: e.inode,
                pid,
                fd,
            });
        }
    }
}

fn inspect_unix(root: i32, owners: &HashMap<u64, (i32, i32)>, t: &mut TreeInspection) {
    let all = if t.own_net_namespace {
        unix_diag::unix_sockets_in(Path::new(&format!("/proc/{root}/ns/net")))
    } else {
        unix_diag::unix_sockets()
    };
    let all = match all {
        Ok(a) => a,
        Err(e) => {
            t.unreadable.push(format!("unix sockets (sock_diag): {e}"));
            return;
        }
    };
    let mut mine: Vec<(&u64, &(i32, i32))> = owners
        .iter()
        .filter(|(ino, _)| all.contains_key(ino))
        .collect();
    mine.sort();
    for (ino, &(pid, fd)) in mine {
        let s = &all[ino];
        t.unix.push(UnixUse {
            ino: *ino,
            sock_type: s.sock_type,
            connected: s.state == 1,
            name: s.name.clone(),
            peer_ino: s.peer,
            peer_name: s
                .peer
                .and_then(|p| all.get(&p))
                .and_then(|p| p.name.clone()),
            peer_in_tree: s.peer.is_some_and(|p| owners.contains_key(&p)),
            pid,
            fd,
        });
    }
}

fn inspect_locks(
    members: &HashSet<i32>,
    paths: &HashMap<(i32, u64), String>,
    t: &mut TreeInspection,
) {
    let locks = match procfs::locks() {
        Ok(l) => l,
        Err(e) => {
            t.unreadable.push(format!("/proc/locks: {e}"));
            return;
        }
    };
    for l in locks {
        let Some(pid) = l.pid.filter(|p| members.contains(p)) else {
            continue;
        };
        t.locks.push(LockUse {
            class: format!("{:?}", l.lock_type).to_uppercase(),
            pid,
            inode: l.inode,
            path: paths.get(&(pid, l.inode)).cloned(),
        });
    }
}

/// SysV objects of the node's IPC namespace tied to the tree: shared memory it has attached
/// (`/SYSV` mappings) or created or last attached, message queues it last sent to or received
/// from. Semaphores carry no pid in `/proc/sysvipc/sem`, so they cannot be attributed.
fn inspect_ipc(members: &HashSet<i32>, t: &mut TreeInspection) {
    let table = |name: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(format!("/proc/sysvipc/{name}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let num = |row: &[String], i: usize| row.get(i).and_then(|v| v.parse::<i64>().ok());
    // A pid column names whoever did it last, and pids are reused: it counts only when that
    // happened after the tree's process of that pid started (a segment left by an exited
    // program whose pid a tree member has now is not the tree's).
    let started: HashMap<i32, i64> = members
        .iter()
        .filter_map(|&p| started_at(p).map(|s| (p, s)))
        .collect();
    let by_member = |pid: Option<i64>, when: Option<i64>| -> Option<i32> {
        let p = i32::try_from(pid?).ok()?;
        let start = *started.get(&p)?;
        (when? + 1 >= start).then_some(p)
    };
    // shm: key shmid perms size cpid lpid nattch uid gid cuid cgid atime dtime ctime ...
    for row in table("shm") {
        let Some(id) = num(&row, 1).and_then(|v| i32::try_from(v).ok()) else {
            continue;
        };
        let last_use = num(&row, 11).max(num(&row, 12));
        let seen = [
            ("created", by_member(num(&row, 4), num(&row, 13))),
            (
                "last attached or detached",
                by_member(num(&row, 5), last_use),
            ),
        ];
        if let Some((what, Some(p))) = seen.into_iter().find(|(_, p)| p.is_some()) {
            t.ipc.push(IpcUse {
                class: "shm".into(),
                id,
                why: format!("{what} by pid {p}"),
            });
        }
    }
    // msg: key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime rtime ctime
    for row in table("msg") {
        let Some(id) = num(&row, 1).and_then(|v| i32::try_from(v).ok()) else {
            continue;
        };
        let seen = [
            ("last sent to", by_member(num(&row, 5), num(&row, 11))),
            ("last received from", by_member(num(&row, 6), num(&row, 12))),
        ];
        if let Some((what, Some(p))) = seen.into_iter().find(|(_, p)| p.is_some()) {
            t.ipc.push(IpcUse {
                class: "msg".into(),
                id,
                why: format!("{what} by pid {p}"),
            });
        }
    }
    // Attached segments show as /SYSV<key> mappings; their shmid is the mapping's inode.
    for p in t.processes.iter().map(|p| p.pid).collect::<Vec<_>>() {
        let Ok(maps) = Process::new(p).and_then(|p| p.maps()) else {
            continue;
        };
        for m in maps.iter() {
            if let MMapPath::Path(path) = &m.pathname {
                if path.to_string_lossy().starts_with("/SYSV") {
                    let id = m.inode as i32;
                    if !t.ipc.iter().any(|i| i.class == "shm" && i.id == id) {
                        t.ipc.push(IpcUse {
                            class: "shm".into(),
                            id,
                            why: format!("attached by pid {p}"),
                        });
                    }
                }
            }
        }
    }
}

/// When process `pid` started (Unix seconds), from its start time in ticks since boot.
fn started_at(pid: i32) -> Option<i64> {
    let ticks = Process::new(pid).ok()?.stat().ok()?.starttime;
    let boot = procfs::boot_time_secs().ok()?;
    let hz = procfs::ticks_per_second();
    i64::try_from(boot + ticks / hz.max(1)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_after_boot_and_not_in_the_future() {
        let me = started_at(std::process::id() as i32).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(me <= now + 1 && me > now - 3600, "{me} vs {now}");
    }

    #[test]
    fn inspects_this_test_process() {
        let me = std::process::id() as i32;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"hello").unwrap();
        let held = std::fs::File::open(file.path()).unwrap();
        let t = inspect_tree(me).unwrap();
        assert_eq!(t.root, me);
        assert_eq!(t.processes[0].pid, me);
        assert!(t.resident() > 0 && t.mapped() >= t.resident());
        let path = file.path().to_string_lossy().into_owned();
        let f = t
            .files
            .iter()
            .find(|f| f.path == path)
            .expect("the open file is listed");
        assert_eq!(f.size, 5);
        assert!(f.fd.is_some());
        assert!(
            t.files.iter().any(|f| f.fd.is_none()),
            "mapped files (the test binary) are listed"
        );
        drop(held);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(inspect_tree(i32::MAX).is_err());
    }
}
