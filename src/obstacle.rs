//! What can stop a process tree from migrating: the kinds of obstacle, the resource each is
//! about, and the remedy haul proposes.
//!
//! Two places find obstacles and share these types: the pre-flight ([`crate::preflight`]),
//! which looks at the tree and at the destination before anything is frozen, and the
//! diagnosis of a CRIU log ([`crate::criu::diagnosis`]), which explains a dump or restore
//! that failed anyway. Both say the same thing about the same obstacle: its [`ObstacleKind`]
//! decides the [`Remedy`] (through [`ObstacleKind::remedy`]), and a [`Resource`] names the
//! fd, socket, port, pid or file it is about.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One kind of obstacle to a migration (issue #13's list, and the classics of CRIU's users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObstacleKind {
    /// A deleted-but-open file bigger than CRIU's ghost limit (CRIU copies deleted files into
    /// its images only up to that size; 1 MiB by default).
    GhostFileTooBig,
    /// A deleted file that still has links elsewhere, or an NFS "silly rename" (`.nfsXXXX`,
    /// what NFS makes of an open file deleted on shared storage): CRIU needs `--link-remap`.
    LinkRemap,
    /// A unix datagram socket connected to a peer outside the tree (CRIU reconnects it by
    /// the peer's name with `--ext-unix-sk`).
    ExternalUnixSocket,
    /// One end of a unix stream (or seqpacket) connection whose other end is outside the tree:
    /// CRIU cannot dump it, not even with `--ext-unix-sk`.
    ExternalUnixStream,
    /// An established TCP connection (needs TCP repair: `--tcp-established`).
    EstablishedTcp,
    /// A listening (or bound) port that is taken on the destination.
    PortTaken,
    /// The tree has no pid namespace of its own and one of its pids is taken on the destination.
    PidTaken,
    /// A file the tree holds open is on the destination with another size or mode (or
    /// changed since the dump).
    FileDiffers,
    /// A file the tree holds open is not on the destination at its path.
    FileMissing,
    /// The tree holds file locks (CRIU needs `--file-locks`).
    FileLocks,
    /// A file the tree holds a lock on is locked on the destination already (on storage both
    /// nodes share, by the frozen original itself): the restore would wait for it forever.
    LockTaken,
    /// The tree uses io_uring, which CRIU cannot dump.
    IoUring,
    /// The tree uses SysV IPC objects of the node's IPC namespace (not its own).
    SysvIpcHostNamespace,
    /// The tree holds a pseudo-terminal.
    Pty,
    /// The tree's session leader is outside it (a shell job: `--shell-job`).
    SessionOutside,
    /// An fd on a mount CRIU cannot see from the tree (typically one inherited from the
    /// launcher).
    UnreachableMount,
    /// The destination's CPU lacks features the source's process may use.
    CpuMismatch,
    /// Not enough space on the destination for the images.
    NoSpace,
    /// Lazy pages (post-copy) cannot grow CRIU's pipes (`fs.pipe-max-size` too small).
    PipeSizeLimit,
    /// A big sparse mapping: post-copy's set-up (proportional to the mapped size) would
    /// freeze the process far longer than a plain dump of its resident memory.
    SparseMapping,
    /// CRIU failed for a reason haul does not recognise.
    Unrecognised,
}

impl ObstacleKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ObstacleKind; 21] = [
        ObstacleKind::GhostFileTooBig,
        ObstacleKind::LinkRemap,
        ObstacleKind::ExternalUnixSocket,
        ObstacleKind::ExternalUnixStream,
        ObstacleKind::EstablishedTcp,
        ObstacleKind::PortTaken,
        ObstacleKind::PidTaken,
        ObstacleKind::FileDiffers,
        ObstacleKind::FileMissing,
        ObstacleKind::FileLocks,
        ObstacleKind::LockTaken,
        ObstacleKind::IoUring,
        ObstacleKind::SysvIpcHostNamespace,
        ObstacleKind::Pty,
        ObstacleKind::SessionOutside,
        ObstacleKind::UnreachableMount,
        ObstacleKind::CpuMismatch,
        ObstacleKind::NoSpace,
        ObstacleKind::PipeSizeLimit,
        ObstacleKind::SparseMapping,
        ObstacleKind::Unrecognised,
    ];

    /// A short phrase for people ("a deleted file over CRIU's ghost limit").
    pub fn describe(self) -> &'static str {
        match self {
            ObstacleKind::GhostFileTooBig => {
                "a deleted-but-open file bigger than CRIU's ghost limit"
            }
            ObstacleKind::LinkRemap => {
                "a deleted file still linked elsewhere (or an NFS silly-rename)"
            }
            ObstacleKind::ExternalUnixSocket => {
                "a unix datagram socket whose peer is outside the tree"
            }
            ObstacleKind::ExternalUnixStream => {
                "a unix stream connection whose other end is outside the tree"
            }
            ObstacleKind::EstablishedTcp => "an established TCP connection",
            ObstacleKind::PortTaken => "a port taken on the destination",
            ObstacleKind::PidTaken => "a pid taken on the destination",
            ObstacleKind::FileDiffers => "an open file that differs on the destination",
            ObstacleKind::FileMissing => "an open file missing on the destination",
            ObstacleKind::FileLocks => "file locks",
            ObstacleKind::LockTaken => "a locked file already locked on the destination",
            ObstacleKind::IoUring => "an io_uring instance",
            ObstacleKind::SysvIpcHostNamespace => "SysV IPC objects of the node's IPC namespace",
            ObstacleKind::Pty => "a pseudo-terminal",
            ObstacleKind::SessionOutside => "a session leader outside the tree",
            ObstacleKind::UnreachableMount => "an fd on a mount CRIU cannot reach",
            ObstacleKind::CpuMismatch => "CPU features missing on the destination",
            ObstacleKind::NoSpace => "too little space on the destination",
            ObstacleKind::PipeSizeLimit => "pipes too small for lazy pages",
            ObstacleKind::SparseMapping => "a big sparse mapping",
            ObstacleKind::Unrecognised => "a failure haul does not recognise",
        }
    }

    /// What makes the migration work, or why nothing can.
    pub fn remedy(self) -> Remedy {
        use Remedy::*;
        match self {
            ObstacleKind::GhostFileTooBig => Option {
                flag: "--ghost-limit".into(),
                what: "raise CRIU's ghost limit above the deleted file's size (the file's content then travels in the images); or keep the file linked while migrating".into(),
                changes_behaviour: false,
            },
            ObstacleKind::LinkRemap => Option {
                flag: "--link-remap".into(),
                what: "CRIU links the file back under a temporary name where it was, until the restore (nothing is copied; the directory must be writable and shared with the destination)".into(),
                changes_behaviour: false,
            },
            ObstacleKind::ExternalUnixSocket => Option {
                flag: "--ext-unix-sk".into(),
                what: "CRIU reconnects the socket by its peer's name on the destination, where a socket of that name must exist (e.g. /dev/log)".into(),
                changes_behaviour: true,
            },
            ObstacleKind::ExternalUnixStream => RunDifferently {
                how: "CRIU cannot dump one end of a stream connection (not even with --ext-unix-sk): start the peer inside the tree so that both ends move, or let the program close the connection before and reconnect after the migration".into(),
            },
            ObstacleKind::EstablishedTcp => Option {
                flag: "--tcp-established".into(),
                what: "move the connection with TCP repair (the destination needs the same IP address for the peer to reach it); without it the connection cannot be dumped".into(),
                changes_behaviour: true,
            },
            ObstacleKind::PortTaken => RunDifferently {
                how: "free the port on the destination, or run the workload in a network namespace of its own so that its ports cannot collide".into(),
            },
            ObstacleKind::PidTaken => RunDifferently {
                how: "run the workload in its own pid namespace (`haul-launch -- CMD`, or `setsid unshare -pf setsid CMD`): its pids then never collide".into(),
            },
            ObstacleKind::FileDiffers | ObstacleKind::FileMissing => RunDifferently {
                how: "keep the files the process holds open on storage both nodes see at the same path (a shared mount), or carry the directory that holds them with --sync PATH, and do not let another node's writer change them during the migration".into(),
            },
            ObstacleKind::FileLocks => Option {
                flag: "--file-locks".into(),
                what: "dump and restore the locks (the locked files must be the same files on the destination)".into(),
                changes_behaviour: false,
            },
            ObstacleKind::LockTaken => RunDifferently {
                how: "CRIU restores the locks before the original's tasks are killed, so a lock on storage both nodes share is still held by the frozen original and the restore would wait for it forever: let the program release its locks before the migration, or keep the locked files node-local and move them with --sync".into(),
            },
            ObstacleKind::IoUring => NotMigratable {
                why: "CRIU cannot checkpoint io_uring instances: stop using io_uring in the process (e.g. a fallback to epoll) or restart it on the destination instead of migrating it".into(),
            },
            ObstacleKind::SysvIpcHostNamespace => RunDifferently {
                how: "run the workload in an IPC namespace of its own (`unshare --ipc`): CRIU then moves its SysV objects with it; objects of the node's namespace stay on the node".into(),
            },
            ObstacleKind::Pty => RunDifferently {
                how: "CRIU restores a pty under the same index, which must be free on the destination (two nodes on one kernel always collide): run the workload without terminals (stdio on files), or migrate between separate machines".into(),
            },
            ObstacleKind::SessionOutside => Option {
                flag: "--shell-job".into(),
                what: "dump a tree whose session leader is outside it; or start it as its own session leader (`setsid`)".into(),
                changes_behaviour: true,
            },
            ObstacleKind::UnreachableMount => RunDifferently {
                how: "start the workload without inherited fds (`haul-launch` closes them)".into(),
            },
            ObstacleKind::CpuMismatch => RunDifferently {
                how: "migrate to a node whose CPU has the source's features (or restrict the workload's CPU features on both)".into(),
            },
            ObstacleKind::NoSpace => RunDifferently {
                how: "free space in the destination's --img-path, or point it at a larger file system".into(),
            },
            ObstacleKind::PipeSizeLimit => RunDifferently {
                how: "raise fs.pipe-max-size to 4194304 on the source (`sysctl fs.pipe-max-size=4194304`), or use stop-copy".into(),
            },
            ObstacleKind::SparseMapping => Option {
                flag: "--strategy stop-copy".into(),
                what: "a plain dump moves only resident pages; CRIU's lazy dump prepares the whole mapped size while frozen".into(),
                changes_behaviour: false,
            },
            ObstacleKind::Unrecognised => Unknown,
        }
    }
}

impl fmt::Display for ObstacleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// What makes a migration work despite an obstacle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Remedy {
    /// A haul option (some exist: `--tcp-established`, `--file-locks`, `--shell-job`; the
    /// others are for the lead to add: `--ghost-limit`, `--ext-unix-sk`).
    Option {
        /// The option.
        flag: String,
        /// What it does and what it needs.
        what: String,
        /// Whether it changes what the process experiences (then haul turns it on only when
        /// the user asked; otherwise pre-flight may turn it on by itself and report it).
        changes_behaviour: bool,
    },
    /// Run the workload another way.
    RunDifferently {
        /// How.
        how: String,
    },
    /// CRIU cannot migrate it.
    NotMigratable {
        /// Why, and what to do instead.
        why: String,
    },
    /// haul does not know.
    Unknown,
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remedy::Option { flag, what, .. } => write!(f, "use {flag}: {what}"),
            Remedy::RunDifferently { how } => f.write_str(how),
            Remedy::NotMigratable { why } => write!(f, "cannot be migrated: {why}"),
            Remedy::Unknown => f.write_str("no known remedy; read CRIU's log"),
        }
    }
}

/// The thing an obstacle is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Resource {
    /// A file descriptor of a process (pid as the node sees it).
    Fd {
        /// The process (host pid), when known.
        pid: Option<i32>,
        /// The fd number, when known.
        fd: Option<i32>,
        /// What it points at (`/proc/PID/fd/N`'s link, or CRIU's name for it).
        path: String,
    },
    /// A file by path, with sizes when they matter.
    File {
        /// The path.
        path: String,
        /// Its size where it was looked at (bytes).
        size: Option<u64>,
        /// The size expected (bytes): the source's, or CRIU's record from the dump.
        expected_size: Option<u64>,
        /// Its mode where it was looked at (`st_mode`).
        mode: Option<u32>,
        /// The mode expected.
        expected_mode: Option<u32>,
    },
    /// A socket and its peer.
    Socket {
        /// The socket's inode.
        ino: Option<u64>,
        /// Its address or name.
        local: Option<String>,
        /// The peer's inode, when known.
        peer_ino: Option<u64>,
        /// The peer's address or name (or who holds it).
        peer: Option<String>,
    },
    /// A TCP or UDP port.
    Port {
        /// `tcp`, `tcp6`, `udp`, `udp6`.
        proto: String,
        /// The local address.
        addr: String,
        /// The port.
        port: u16,
    },
    /// A pid (as the node's pid namespace sees it).
    Pid {
        /// The pid.
        pid: i32,
    },
    /// A SysV IPC object.
    Ipc {
        /// `shm`, `sem` or `msg`.
        class: String,
        /// Its id.
        id: i32,
    },
    /// A pty by index (`/dev/pts/N`).
    Pty {
        /// The index.
        index: u32,
    },
    /// A memory mapping.
    Mapping {
        /// The process.
        pid: i32,
        /// Bytes mapped.
        mapped: u64,
        /// Bytes resident.
        resident: u64,
    },
    /// Free space on the destination.
    Space {
        /// Where.
        path: String,
        /// Free bytes.
        free: u64,
        /// Needed bytes.
        needed: u64,
    },
    /// Something named only by text.
    Other {
        /// What it is.
        text: String,
    },
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Fd { pid, fd, path } => {
                match (pid, fd) {
                    (Some(p), Some(n)) => write!(f, "fd {n} of pid {p}")?,
                    (None, Some(n)) => write!(f, "fd {n}")?,
                    (Some(p), None) => write!(f, "an fd of pid {p}")?,
                    (None, None) => write!(f, "an fd")?,
                }
                write!(f, " ({path})")
            }
            Resource::File {
                path,
                size,
                expected_size,
                mode,
                expected_mode,
            } => {
                write!(f, "{path}")?;
                if let (Some(s), Some(e)) = (size, expected_size) {
                    write!(f, " (size {s}, expected {e})")?;
                } else if let Some(s) = size {
                    write!(f, " ({s} bytes)")?;
                }
                if let (Some(m), Some(e)) = (mode, expected_mode) {
                    if m != e {
                        write!(f, " (mode {m:o}, expected {e:o})")?;
                    }
                }
                Ok(())
            }
            Resource::Socket {
                ino,
                local,
                peer_ino,
                peer,
            } => {
                write!(f, "socket")?;
                if let Some(i) = ino {
                    write!(f, " {i}")?;
                }
                if let Some(l) = local {
                    write!(f, " ({l})")?;
                }
                match (peer_ino, peer) {
                    (_, Some(p)) => write!(f, ", peer {p}"),
                    (Some(i), None) => write!(f, ", peer socket {i}"),
                    _ => Ok(()),
                }
            }
            Resource::Port { proto, addr, port } => write!(f, "{proto} port {port} ({addr})"),
            Resource::Pid { pid } => write!(f, "pid {pid}"),
            Resource::Ipc { class, id } => write!(f, "SysV {class} id {id}"),
            Resource::Pty { index } => write!(f, "/dev/pts/{index}"),
            Resource::Mapping {
                pid,
                mapped,
                resident,
            } => write!(
                f,
                "pid {pid}: {} MiB mapped, {} MiB resident",
                mapped >> 20,
                resident >> 20
            ),
            Resource::Space { path, free, needed } => write!(
                f,
                "{path}: {} MiB free, {} MiB needed",
                free >> 20,
                needed >> 20
            ),
            Resource::Other { text } => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_but_unrecognised_has_a_remedy() {
        for k in ObstacleKind::ALL {
            assert_eq!(
                k.remedy() == Remedy::Unknown,
                k == ObstacleKind::Unrecognised,
                "{k:?}"
            );
            assert!(!k.describe().is_empty());
        }
    }

    #[test]
    fn serialises_for_the_report() {
        let j = serde_json::to_string(&ObstacleKind::GhostFileTooBig).unwrap();
        assert_eq!(j, "\"ghost-file-too-big\"");
        let r = Resource::Port {
            proto: "tcp".into(),
            addr: "127.0.0.1".into(),
            port: 8080,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["type"], "port");
        assert_eq!(r.to_string(), "tcp port 8080 (127.0.0.1)");
        let j = serde_json::to_value(ObstacleKind::FileLocks.remedy()).unwrap();
        assert_eq!(j["flag"], "--file-locks");
    }
}
