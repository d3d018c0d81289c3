//! A synced tree as the source sees it: one [`Entry`] per path (type, owner, mode, times, the
//! stat fields that say whether it changed, symlink targets, hard-link groups), scanned
//! through descriptors (see [`super::confine`]) so that the walk never leaves the tree.
//!
//! File contents are not part of the manifest: the source reads them when it sends them, and
//! takes a file's size and data extents (`SEEK_DATA`/`SEEK_HOLE`) from the descriptor it reads
//! ([`data_extents`]).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

use super::confine::{self, file_type};
use super::error::SyncError;
use super::limits::{MAX_ENTRIES, MAX_EXTENTS, MAX_LINK_TARGET};
use super::path::{link_stays_inside, RelPath, RootPath};
use super::pb;

/// A point in time, as file systems store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds, below 1e9.
    pub nsec: u32,
}

impl Time {
    /// Nanoseconds since the epoch.
    pub fn as_nanos(self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }

    /// The wall clock now.
    pub fn now() -> Time {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    pub(crate) fn to_pb(self) -> pb::Time {
        pb::Time {
            sec: self.sec,
            nsec: self.nsec,
        }
    }

    pub(crate) fn from_pb(t: Option<&pb::Time>) -> Time {
        t.map(|t| Time {
            sec: t.sec,
            nsec: t.nsec.min(999_999_999),
        })
        .unwrap_or_default()
    }

    pub(crate) fn to_timespec(self) -> rustix::fs::Timespec {
        rustix::fs::Timespec {
            tv_sec: self.sec,
            tv_nsec: self.nsec as _,
        }
    }
}

/// Owner, permission bits and times: what the destination applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Meta {
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: Time,
    /// Last modification.
    pub mtime: Time,
}

impl Meta {
    /// From a `stat`.
    pub fn of(st: &rfs::Stat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: Time {
                sec: st.st_atime,
                nsec: st.st_atime_nsec as u32,
            },
            mtime: Time {
                sec: st.st_mtime,
                nsec: st.st_mtime_nsec as u32,
            },
        }
    }

    /// As a message.
    pub fn to_pb(&self) -> pb::Meta {
        pb::Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime: Some(self.atime.to_pb()),
            mtime: Some(self.mtime.to_pb()),
        }
    }

    /// From a message (a missing meta is all zeros: mode 0, root, the epoch).
    pub fn from_pb(m: Option<&pb::Meta>) -> Meta {
        match m {
            Some(m) => Meta {
                mode: m.mode & 0o7777,
                uid: m.uid,
                gid: m.gid,
                atime: Time::from_pb(m.atime.as_ref()),
                mtime: Time::from_pb(m.mtime.as_ref()),
            },
            None => Meta::default(),
        }
    }
}

/// The stat fields that change when an entry's content or identity changes (`ctime` changes
/// on every write, chmod, chown and rename and cannot be set back by a process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Stamp {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last status change.
    pub ctime: Time,
    /// Allocated bytes (`st_blocks * 512`).
    pub allocated: u64,
    /// Links.
    pub nlink: u64,
}

impl Stamp {
    /// From a `stat`.
    pub fn of(st: &rfs::Stat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            ctime: Time {
                sec: st.st_ctime,
                nsec: st.st_ctime_nsec as u32,
            },
            allocated: (st.st_blocks as u64).saturating_mul(512),
            nlink: st.st_nlink,
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory (the root is one).
    Dir,
    /// A regular file; `leader` is set when it is another name of an earlier file of the
    /// same tree (a hard link), which then carries the content.
    File {
        /// The first path (bytewise order) of the same inode in this tree.
        leader: Option<RelPath>,
    },
    /// A symlink and its target (never followed).
    Symlink {
        /// The target, as stored.
        target: Vec<u8>,
    },
    /// A named pipe.
    Fifo,
}

impl Kind {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File { .. } => "regular file",
            Kind::Symlink { .. } => "symlink",
            Kind::Fifo => "fifo",
        }
    }

    /// Whether `self` and `other` are the same type of entry (a hard link and a plain file
    /// are both regular files).
    pub fn same_type(&self, other: &Kind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// What the destination applies.
    pub meta: Meta,
    /// What says it changed.
    pub stamp: Stamp,
}

/// What the source does with symlinks that point out of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SymlinkPolicy {
    /// Refuse them (the default): a tree copied to a machine that shares nothing should not
    /// depend on what lies outside it. Checked lexically ([`link_stays_inside`]).
    #[default]
    WithinTree,
    /// Copy them as they are (never followed by haul on either side).
    Any,
}

/// A scanned tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The root.
    pub root: RootPath,
    /// Every entry by path; the root itself is [`RelPath::root`]. Bytewise order puts every
    /// directory before what it holds.
    pub entries: BTreeMap<RelPath, Entry>,
    /// Sockets found and left out (CRIU recreates bound sockets itself).
    pub skipped_sockets: Vec<RelPath>,
}

impl Manifest {
    /// Allocated bytes of all regular files (hard links counted once): what the destination
    /// needs at most for a first copy.
    pub fn data_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| matches!(e.kind, Kind::File { leader: None }))
            .map(|e| e.stamp.allocated.min(e.stamp.size.max(4096)))
            .sum()
    }

    /// The followers of `leader` (paths whose leader it is), in order.
    pub fn followers(&self, leader: &RelPath) -> Vec<RelPath> {
        self.entries
            .iter()
            .filter(|(_, e)| matches!(&e.kind, Kind::File { leader: Some(l) } if l == leader))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Opens a root on the source: absolute, every component a real directory (no symlink on the
/// way: the process's open files show the canonical path, so a root reached through a
/// symlink would not contain them).
pub fn open_root(root: &RootPath) -> Result<OwnedFd, SyncError> {
    confine::open_abs_dir(None, root.relative_to_slash()).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            SyncError::Root {
                root: root.as_path().to_path_buf(),
                reason: "it is, or lies below, a symlink: name the directory it points to (see `realpath`)".into(),
            }
        } else {
            SyncError::io("open synced root", root.to_string(), e)
        }
    })
}

/// Symlink targets already known, by path, with the stamp of the link they were read from.
/// Reading a symlink updates its access time (there is no `O_NOATIME` for `readlink`), so
/// the source reads each link once: a link's target cannot change without a new inode.
pub type KnownLinks = HashMap<RelPath, (Stamp, Vec<u8>)>;

/// Scans the tree below `root_fd` (the directory of `root`).
pub fn scan(
    root: &RootPath,
    root_fd: BorrowedFd<'_>,
    symlinks: SymlinkPolicy,
    known: &KnownLinks,
) -> Result<Manifest, SyncError> {
    let show = |p: &RelPath| root.display_entry(p);
    let st = rfs::fstat(root_fd).map_err(|e| SyncError::io("stat", root.to_string(), e.into()))?;
    let dev = st.st_dev;
    let mut entries = BTreeMap::new();
    entries.insert(
        RelPath::root(),
        Entry {
            kind: Kind::Dir,
            meta: Meta::of(&st),
            stamp: Stamp::of(&st),
        },
    );
    let mut skipped_sockets = Vec::new();
    let top = open_dir_noatime(root_fd, None)
        .map_err(|e| SyncError::io("open", root.to_string(), e.into()))?;
    let mut stack: Vec<(RelPath, OwnedFd)> = vec![(RelPath::root(), top)];
    while let Some((dir, fd)) = stack.pop() {
        let names = match confine::list_dir(fd.as_fd()) {
            Ok(n) => n,
            // removed while we walked: the next round sees it gone
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(SyncError::io("list", show(&dir), e)),
        };
        for name in names {
            let path = dir
                .join(&name)
                .map_err(|e| SyncError::path(format!("entry in {}", show(&dir)), e))?;
            let st = match rfs::statat(fd.as_fd(), name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(s) => s,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(SyncError::io("stat", show(&path), e.into())),
            };
            if st.st_dev != dev {
                return Err(SyncError::MountPoint { path: show(&path) });
            }
            let kind = match file_type(st.st_mode) {
                FileType::Directory => {
                    let sub = match open_dir_noatime(fd.as_fd(), Some(name.as_slice())) {
                        Ok(s) => s,
                        // gone, or replaced by something else since the stat: next round
                        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                        Err(e) => return Err(SyncError::io("open", show(&path), e.into())),
                    };
                    let st = rfs::fstat(&sub)
                        .map_err(|e| SyncError::io("stat", show(&path), e.into()))?;
                    if st.st_dev != dev {
                        return Err(SyncError::MountPoint { path: show(&path) });
                    }
                    entries.insert(
                        path.clone(),
                        Entry {
                            kind: Kind::Dir,
                            meta: Meta::of(&st),
                            stamp: Stamp::of(&st),
                        },
                    );
                    stack.push((path, sub));
                    check_count(root, entries.len())?;
                    continue;
                }
                FileType::RegularFile => Kind::File { leader: None },
                FileType::Symlink => {
                    let stamp = Stamp::of(&st);
                    let cached = known.get(&path).filter(|(s, _)| {
                        s.dev == stamp.dev && s.ino == stamp.ino && s.ctime == stamp.ctime
                    });
                    let target = match cached {
                        Some((_, t)) => t.clone(),
                        None => match rfs::readlinkat(fd.as_fd(), name.as_slice(), Vec::new()) {
                            Ok(t) => t.into_bytes(),
                            Err(Errno::NOENT | Errno::INVAL) => continue,
                            Err(e) => {
                                return Err(SyncError::io("read link", show(&path), e.into()))
                            }
                        },
                    };
                    if target.len() > MAX_LINK_TARGET {
                        return Err(SyncError::limit(
                            format!("target length of symlink {}", show(&path)),
                            target.len() as u64,
                            MAX_LINK_TARGET as u64,
                        ));
                    }
                    if symlinks == SymlinkPolicy::WithinTree && !link_stays_inside(&path, &target) {
                        return Err(SyncError::SymlinkOutside {
                            path: show(&path),
                            target: String::from_utf8_lossy(&target).into_owned(),
                        });
                    }
                    Kind::Symlink { target }
                }
                FileType::Fifo => Kind::Fifo,
                FileType::Socket => {
                    skipped_sockets.push(path);
                    continue;
                }
                FileType::CharacterDevice => {
                    return Err(SyncError::Unsupported {
                        path: show(&path),
                        kind: "character device",
                    })
                }
                FileType::BlockDevice => {
                    return Err(SyncError::Unsupported {
                        path: show(&path),
                        kind: "block device",
                    })
                }
                FileType::Unknown => {
                    return Err(SyncError::Unsupported {
                        path: show(&path),
                        kind: "file of unknown type",
                    })
                }
            };
            entries.insert(
                path,
                Entry {
                    kind,
                    meta: Meta::of(&st),
                    stamp: Stamp::of(&st),
                },
            );
            check_count(root, entries.len())?;
        }
    }
    group_hard_links(&mut entries);
    Ok(Manifest {
        root: root.clone(),
        entries,
        skipped_sockets,
    })
}

/// Opens the directory `name` in `dir` (or `dir` itself) for listing, without following a
/// symlink, and without updating its access time when allowed (the source's files stay as
/// they were, access times included).
fn open_dir_noatime(dir: BorrowedFd<'_>, name: Option<&[u8]>) -> Result<OwnedFd, Errno> {
    let name: &[u8] = name.unwrap_or(b".");
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(Errno::PERM) => rfs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

fn check_count(root: &RootPath, n: usize) -> Result<(), SyncError> {
    if n > MAX_ENTRIES {
        return Err(SyncError::limit(
            format!("number of entries in {root}"),
            n as u64,
            MAX_ENTRIES as u64,
        ));
    }
    Ok(())
}

/// Regular files with more than one link that share an inode become a group: the first path
/// in bytewise order leads, the others name it.
fn group_hard_links(entries: &mut BTreeMap<RelPath, Entry>) {
    let mut first: HashMap<(u64, u64), RelPath> = HashMap::new();
    for (path, e) in entries.iter_mut() {
        if let Kind::File { leader } = &mut e.kind {
            if e.stamp.nlink > 1 {
                match first.get(&(e.stamp.dev, e.stamp.ino)) {
                    Some(l) => *leader = Some(l.clone()),
                    None => {
                        first.insert((e.stamp.dev, e.stamp.ino), path.clone());
                    }
                }
            }
        }
    }
}

/// The data extents of the open file `fd` of `size` bytes, as `(offset, len)` pairs, sorted and
/// disjoint, found with `SEEK_DATA`/`SEEK_HOLE` (a file system without them reports one extent
/// for the whole file). At most [`MAX_EXTENTS`]: the rest of the file is then one extent.
pub fn data_extents(fd: BorrowedFd<'_>, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rfs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break, // only a hole up to the end
            Err(Errno::INVAL) if pos == 0 => return Ok(vec![(0, size)]), // no SEEK_DATA
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        if out.len() + 1 >= MAX_EXTENTS {
            out.push((start, size - start));
            break;
        }
        let end = match rfs::seek(fd, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            // the file changed under us; treat the rest as data
            out.push((start, size - start));
            break;
        }
        out.push((start, end - start));
        pos = end;
    }
    Ok(out)
}

/// The data extents of the file at `path` (for tests and checks).
pub fn extents_of(path: &std::path::Path) -> std::io::Result<(u64, Vec<(u64, u64)>)> {
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    Ok((size, data_extents(f.as_fd(), size)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::symlink;

    fn scan_dir(d: &std::path::Path, p: SymlinkPolicy) -> Result<Manifest, SyncError> {
        let root = RootPath::from_path(&d.canonicalize().unwrap()).unwrap();
        let fd = open_root(&root)?;
        scan(&root, fd.as_fd(), p, &KnownLinks::new())
    }

    #[test]
    fn scans_types_links_and_extents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join("a/b")).unwrap();
        std::fs::write(p.join("a/f"), b"hello").unwrap();
        std::fs::hard_link(p.join("a/f"), p.join("a/b/g")).unwrap();
        std::fs::hard_link(p.join("a/f"), p.join("0first")).unwrap();
        symlink("../f", p.join("a/b/l")).unwrap();
        nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut f = std::fs::File::create(p.join("sparse")).unwrap();
        f.seek(std::io::SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let m = scan_dir(p, SymlinkPolicy::WithinTree).unwrap();
        let get = |s: &str| &m.entries[&RelPath::parse(s.as_bytes()).unwrap()];
        assert_eq!(get("a").kind, Kind::Dir);
        assert_eq!(get("0first").kind, Kind::File { leader: None });
        let lead = Some(RelPath::parse(b"0first").unwrap());
        assert_eq!(
            get("a/f").kind,
            Kind::File {
                leader: lead.clone()
            }
        );
        assert_eq!(get("a/b/g").kind, Kind::File { leader: lead });
        assert_eq!(
            get("a/b/l").kind,
            Kind::Symlink {
                target: b"../f".to_vec()
            }
        );
        assert_eq!(get("fifo").kind, Kind::Fifo);
        assert_eq!(m.entries.len(), 9);
        let (size, ext) = extents_of(&p.join("sparse")).unwrap();
        assert_eq!(size, (8 << 20) + 4);
        // tmpfs and ext4 both keep the hole; the data is in the last block
        assert_eq!(ext.len(), 1, "{ext:?}");
        assert!(ext[0].0 >= (8 << 20) - 4096 * 16);
    }

    #[test]
    fn refuses_devices_and_outside_links_and_symlinked_roots() {
        let d = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", d.path().join("out")).unwrap();
        assert!(matches!(
            scan_dir(d.path(), SymlinkPolicy::WithinTree),
            Err(SyncError::SymlinkOutside { .. })
        ));
        assert!(scan_dir(d.path(), SymlinkPolicy::Any).is_ok());
        let real = d.path().canonicalize().unwrap();
        let alias = tempfile::tempdir().unwrap();
        symlink(&real, alias.path().join("alias")).unwrap();
        let root =
            RootPath::from_path(&alias.path().canonicalize().unwrap().join("alias")).unwrap();
        assert!(matches!(open_root(&root), Err(SyncError::Root { .. })));
    }
}
