//! Confined file-system access: every path below a root is resolved with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV` from a
//! descriptor of the root's directory, and the last component is then used with an `*at`
//! call that does not follow symlinks either (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, or calls
//! that never follow: `mkdirat`, `symlinkat`, `renameat`, `unlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`). A symlink, a `..` or a mount crossing anywhere on the way makes the
//! kernel refuse (`ELOOP`, `EXDEV`), so neither a hostile peer's path nor a symlink swapped in
//! on disk in the middle of a sync can make haul read or write outside the tree.
//!
//! Both sides use this: the source reads the process's files through it (a process could
//! swap one of its directories for a symlink to `/root` between haul's scan and its read;
//! haul runs as root), and the destination writes through it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::limits::MAX_DEPTH;

/// How every path below a root is resolved.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// `openat2` retries on `EAGAIN` (the kernel says so when a concurrent rename raced a
/// `RESOLVE_BENEATH` walk) at most this many times.
const EAGAIN_RETRIES: usize = 32;

fn openat2_retry(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let mut tries = 0;
    loop {
        match rfs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// Opens `path` (relative, possibly empty for `dir` itself) below `dir`, confined.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
) -> std::io::Result<OwnedFd> {
    Ok(openat2_retry(dir, path, flags, mode, BENEATH)?)
}

/// Opens the directory `path` below `dir`, confined, as an `O_PATH` descriptor usable with
/// the `*at` calls. A symlink as the last component is refused like any other (`ELOOP`).
pub fn open_dir_path(dir: BorrowedFd<'_>, path: &[u8]) -> std::io::Result<OwnedFd> {
    open_beneath(dir, path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
}

/// Opens the directory `path` below `dir`, confined, for reading (`readdir`, `fchown`,
/// `futimens`).
pub fn open_dir_read(dir: BorrowedFd<'_>, path: &[u8]) -> std::io::Result<OwnedFd> {
    open_beneath(dir, path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
}

/// Opens an absolute directory from `/` with no symlink anywhere on the way (`ELOOP`
/// otherwise), for reading. `base` replaces `/` when given (a trusted local directory, e.g.
/// the stand-in for a node's disk in tests).
pub fn open_abs_dir(base: Option<&std::path::Path>, rel: &[u8]) -> std::io::Result<OwnedFd> {
    let start = match base {
        Some(b) => rfs::open(
            b,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?,
        None => rfs::open(
            "/",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?,
    };
    Ok(openat2_retry(
        start.as_fd(),
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Free bytes for an unprivileged writer on the file system of `fd` (`f_bavail * f_frsize`)
/// and its size in bytes.
pub fn free_bytes(fd: BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    let s = rfs::fstatvfs(fd)?;
    Ok((
        s.f_bavail.saturating_mul(s.f_frsize),
        s.f_blocks.saturating_mul(s.f_frsize),
    ))
}

/// Removes `name` in `dir` and, when it is a directory, everything below it, without ever
/// following a symlink (a symlink is removed itself). Missing entries are fine. Refuses to
/// go deeper than [`MAX_DEPTH`] + 8 levels (what haul itself creates is at most
/// [`MAX_DEPTH`] deep).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<u64> {
    remove_tree_depth(dir, name, 0)
}

fn remove_tree_depth(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> std::io::Result<u64> {
    let st = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => s,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::Directory {
        return match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(1),
            Err(e) => Err(e.into()),
        };
    }
    if depth > MAX_DEPTH + 8 {
        return Err(std::io::Error::other(format!(
            "directory tree deeper than {} levels",
            MAX_DEPTH + 8
        )));
    }
    let sub = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0;
    for name in list_dir(sub.as_fd())? {
        removed += remove_tree_depth(sub.as_fd(), &name, depth + 1)?;
    }
    drop(sub);
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(removed + 1),
        Err(e) => Err(e.into()),
    }
}

/// The names in the directory `fd` (without `.` and `..`), sorted bytewise.
pub fn list_dir(fd: BorrowedFd<'_>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut d = rfs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// The file type of an `st_mode`.
pub fn file_type(mode: rfs::RawMode) -> rfs::FileType {
    rfs::FileType::from_raw_mode(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        symlink(outside.path(), d.path().join("link")).unwrap();
        let root = rfs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(open_dir_path(root.as_fd(), b"sub").is_ok());
        assert!(open_dir_path(root.as_fd(), b"").is_ok());
        let e = open_dir_path(root.as_fd(), b"link").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = open_beneath(
            root.as_fd(),
            b"link/x",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o600),
        )
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = open_dir_path(root.as_fd(), b"sub/../..").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        let e = open_dir_path(root.as_fd(), b"/etc").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn absolute_roots_refuse_symlinks_on_the_way() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        symlink("real", d.path().join("alias")).unwrap();
        assert!(open_abs_dir(Some(d.path()), b"real").is_ok());
        let e = open_abs_dir(Some(d.path()), b"alias").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("t/a/b")).unwrap();
        std::fs::write(d.path().join("t/a/b/f"), b"y").unwrap();
        symlink(outside.path(), d.path().join("t/a/out")).unwrap();
        let root = rfs::open(d.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert_eq!(remove_tree(root.as_fd(), b"t").unwrap(), 5);
        assert!(!d.path().join("t").exists());
        assert!(outside.path().join("keep").exists());
        assert_eq!(remove_tree(root.as_fd(), b"t").unwrap(), 0);
    }
}
