//! Helpers for the file-sync tests: a source tree and a destination "disk" (a directory that
//! stands in for the other node's `/`), and snapshots of trees that compare everything the
//! sync promises to keep: type, mode, owner, times, content, sparse extents, hard-link groups,
//! symlink targets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use haul::sync::manifest::data_extents;
use haul::sync::{ReceiverConfig, SourceConfig, SymlinkPolicy};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// Whether we are root (owners can be set; some tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A source root and a destination prefix on the same file system (so extents compare).
pub struct Pair {
    pub base: tempfile::TempDir,
    /// The source root (canonical).
    pub src: PathBuf,
    /// The destination's stand-in for `/`.
    pub prefix: PathBuf,
}

impl Pair {
    /// `base/src/tree` (created) and `base/dst` holding the parent of the same path.
    pub fn new() -> Pair {
        let base = tempfile::Builder::new()
            .prefix("haul-sync-test.")
            .tempdir()
            .unwrap();
        let src = base.path().canonicalize().unwrap().join("src/tree");
        std::fs::create_dir_all(&src).unwrap();
        let prefix = base.path().canonicalize().unwrap().join("dst");
        std::fs::create_dir_all(prefix.join(src.parent().unwrap().strip_prefix("/").unwrap()))
            .unwrap();
        Pair { base, src, prefix }
    }

    /// Where the destination's copy of the root lies.
    pub fn dst(&self) -> PathBuf {
        self.prefix.join(self.src.strip_prefix("/").unwrap())
    }

    pub fn src_cfg(&self, session: &str) -> SourceConfig {
        SourceConfig {
            session: session.into(),
            roots: vec![self.src.clone()],
            symlinks: SymlinkPolicy::WithinTree,
        }
    }

    pub fn dst_cfg(&self) -> ReceiverConfig {
        ReceiverConfig {
            dest_prefix: Some(self.prefix.clone()),
            ..Default::default()
        }
    }
}

/// One entry of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u64),
    pub mtime: (i64, u64),
    pub size: u64,
    pub content: Option<String>,
    pub extents: Option<Vec<(u64, u64)>>,
    pub target: Option<Vec<u8>>,
    /// The first path (bytewise) of the same inode in this tree, for regular files with
    /// more than one link.
    pub group: Option<PathBuf>,
}

/// Everything below `root` (root included as `""`), read without following symlinks and
/// without touching access times (metadata first, contents after).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut stats: Vec<(PathBuf, rfs::Stat)> = Vec::new();
    let top = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME,
        Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", root.display()));
    stats.push((PathBuf::new(), rfs::fstat(&top).unwrap()));
    let mut stack = vec![(PathBuf::new(), top)];
    while let Some((rel, fd)) = stack.pop() {
        let mut names = Vec::new();
        let mut d = rfs::Dir::read_from(&fd).unwrap();
        while let Some(e) = d.read() {
            let n = e.unwrap().file_name().to_bytes().to_vec();
            if n != b"." && n != b".." {
                names.push(n);
            }
        }
        for n in names {
            let p = rel.join(OsStr::from_bytes(&n));
            let st = rfs::statat(&fd, n.as_slice(), AtFlags::SYMLINK_NOFOLLOW).unwrap();
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let sub = rfs::openat(
                    &fd,
                    n.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME,
                    Mode::empty(),
                )
                .unwrap();
                stack.push((p.clone(), sub));
            }
            stats.push((p, st));
        }
    }
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    let mut first: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, st) in stats {
        let ft = FileType::from_raw_mode(st.st_mode);
        let full = root.join(&p);
        let mut n = Node {
            kind: match ft {
                FileType::Directory => "dir",
                FileType::RegularFile => "file",
                FileType::Symlink => "symlink",
                FileType::Fifo => "fifo",
                _ => "other",
            },
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            size: if ft == FileType::Directory {
                0
            } else {
                st.st_size as u64
            },
            content: None,
            extents: None,
            target: None,
            group: None,
        };
        match ft {
            FileType::RegularFile => {
                if st.st_nlink > 1 {
                    let g = first.entry((st.st_dev, st.st_ino)).or_insert(p.clone());
                    n.group = Some(g.clone());
                }
                let f = rfs::open(&full, OFlags::RDONLY | OFlags::NOATIME, Mode::empty()).unwrap();
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                loop {
                    let k = rustix::io::pread(&f, &mut buf, off).unwrap();
                    if k == 0 {
                        break;
                    }
                    h.update(&buf[..k]);
                    off += k as u64;
                }
                n.content = Some(h.finalize().to_hex().to_string());
                n.extents = Some(data_extents(f.as_fd(), st.st_size as u64).unwrap());
            }
            FileType::Symlink => {
                n.target = Some(
                    std::fs::read_link(&full)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                );
            }
            _ => {}
        }
        out.insert(p, n);
    }
    out
}

/// Asserts two snapshots are equal but for symlinks' access times (Linux updates those on
/// every `readlink`, a snapshot's included; compare them with [`assert_same`] on the first
/// snapshot after a sync only).
pub fn assert_same_but_link_atimes(
    a: &BTreeMap<PathBuf, Node>,
    b: &BTreeMap<PathBuf, Node>,
    what: &str,
) {
    let strip = |m: &BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
        m.iter()
            .map(|(p, n)| {
                let mut n = n.clone();
                if n.kind == "symlink" {
                    n.atime = (0, 0);
                }
                (p.clone(), n)
            })
            .collect()
    };
    assert_same(&strip(a), &strip(b), what);
}

/// Asserts two snapshots are equal, naming the first difference.
pub fn assert_same(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>, what: &str) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "{what}: different entries");
    for (p, x) in a {
        assert_eq!(Some(x), b.get(p), "{what}: {} differs", p.display());
    }
}

/// The names directly in `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Sets a file's times without following symlinks.
pub fn set_times(p: &Path, atime: (i64, u32), mtime: (i64, u32)) {
    let ts = rfs::Timestamps {
        last_access: rfs::Timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1 as _,
        },
        last_modification: rfs::Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        },
    };
    rfs::utimensat(rfs::CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Writes `data` at `offset` (creating the file).
pub fn write_at(p: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)
        .unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// Deterministic bytes.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
