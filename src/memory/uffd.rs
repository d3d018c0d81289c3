//! userfaultfd(2), as the lazy-pages side uses it: fill missing pages of another process
//! (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`), wake it, stop watching a range, and read what happened
//! (page faults and the non-cooperative events fork, remap, remove, unmap). The uffds come
//! from `criu restore --lazy-pages` over CRIU's lazy-pages socket ([`LazySocket`]).
//!
//! Struct layouts and ioctl numbers are the kernel's (`include/uapi/linux/userfaultfd.h`,
//! x86-64).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Range {
    start: u64,
    len: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Copy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ZeroPage {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xAA << 8) | nr
}

const UFFDIO_API: u64 = iowr(0x3F, std::mem::size_of::<Api>());
const UFFDIO_REGISTER: u64 = iowr(0x00, std::mem::size_of::<Register>());
const UFFDIO_UNREGISTER: u64 = ior(0x01, std::mem::size_of::<Range>());
const UFFDIO_WAKE: u64 = ior(0x02, std::mem::size_of::<Range>());
const UFFDIO_COPY: u64 = iowr(0x03, std::mem::size_of::<Copy>());
const UFFDIO_ZEROPAGE: u64 = iowr(0x04, std::mem::size_of::<ZeroPage>());

const UFFD_API: u64 = 0xAA;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

/// Bytes of one `struct uffd_msg`.
pub const MSG_LEN: usize = 32;

/// What a uffd reported.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page at `addr` (not yet page-aligned).
    PageFault {
        /// The faulting address.
        addr: u64,
    },
    /// The process forked; the child's memory is watched through `uffd`.
    Fork {
        /// The child's uffd.
        uffd: Uffd,
    },
    /// `mremap` moved `[from, from + len)` to `to`.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Bytes.
        len: u64,
    },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`: it reads as zeros now.
    Remove {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
    /// `munmap` removed `[start, end)`.
    Unmap {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
}

/// Decodes one `struct uffd_msg` (32 bytes). Unknown events are an error.
pub fn decode_msg(b: &[u8; MSG_LEN]) -> io::Result<Event> {
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    Ok(match b[0] {
        EVENT_PAGEFAULT => Event::PageFault { addr: u64_at(16) },
        EVENT_FORK => {
            let fd = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as RawFd;
            if fd < 0 {
                return Err(io::Error::other("fork event with a bad uffd"));
            }
            // SAFETY: the kernel installed this fd in our table for us with the event; nothing
            // else owns it.
            let uffd = Uffd(unsafe { OwnedFd::from_raw_fd(fd) });
            uffd.set_nonblocking()?;
            Event::Fork { uffd }
        }
        EVENT_REMAP => Event::Remap {
            from: u64_at(8),
            to: u64_at(16),
            len: u64_at(24),
        },
        EVENT_REMOVE => Event::Remove {
            start: u64_at(8),
            end: u64_at(16),
        },
        EVENT_UNMAP => Event::Unmap {
            start: u64_at(8),
            end: u64_at(16),
        },
        e => {
            return Err(io::Error::other(format!(
                "unknown userfaultfd event {e:#x}"
            )))
        }
    })
}

/// How a fill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Every byte was filled.
    Done,
    /// `n` bytes were filled, then a page already present stopped it (`EEXIST`).
    Exists(u64),
    /// `EAGAIN`: `n` bytes were filled, then the fill stopped. With `n == 0` the address
    /// space is changing (the kernel refuses fills while a non-cooperative event — remap,
    /// remove, unmap, fork — is queued on this uffd and not read yet): read the uffd's events,
    /// look again at what is missing, retry. With `n > 0`, go on from `n` (the next try says
    /// what stopped it).
    Again(u64),
    /// `ENOENT`: nothing was filled because `[dst, dst + len)` does not lie inside ONE
    /// registered VMA: it crosses a VMA boundary (a range the images call contiguous can be
    /// two VMAs, e.g. a thread's stack and the mapping above it, or a VMA split later by
    /// `mprotect`), or it is not registered (yet: the restorer registers the lazy VMAs only
    /// after the uffd was handed over) or no longer mapped. Fill page by page to tell.
    NoVma,
    /// The process (its memory) is gone (`ESRCH`, `ENOSPC`) or the fd is unusable.
    Gone,
}

/// One process's userfaultfd.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl From<OwnedFd> for Uffd {
    fn from(fd: OwnedFd) -> Self {
        Uffd(fd)
    }
}

fn ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the #[repr(C)] struct this request reads and writes; the kernel
    // touches no memory beyond it (the copy's source buffer is the caller's, checked there).
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Uffd {
    /// Makes reads return at once when no event is queued (the engine polls; CRIU opens its
    /// uffds non-blocking already, a forked child's uffd may not be).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL on our own fd.
        unsafe {
            let fl = libc::fcntl(self.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(self.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// A new userfaultfd for this very process (tests), with the non-cooperative events.
    pub fn open_own(nonblocking: bool) -> io::Result<Uffd> {
        let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
        // SAFETY: plain system call; the result is a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let u = Uffd(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        let mut api = Api {
            api: UFFD_API,
            ..Default::default()
        };
        ioctl(u.as_raw_fd(), UFFDIO_API, &mut api)?;
        Ok(u)
    }

    /// Watches `[start, start + len)` for missing pages (tests; CRIU's restorer does this for
    /// restored tasks).
    pub fn register(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Register {
            range: Range { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(self.as_raw_fd(), UFFDIO_REGISTER, &mut r)
    }

    /// Copies `src` into the process at `dst` (page-aligned, whole pages) and wakes threads
    /// waiting there.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Fill {
        let mut c = Copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode: 0,
            copy: 0,
        };
        match ioctl(self.as_raw_fd(), UFFDIO_COPY, &mut c) {
            Ok(()) => Fill::Done,
            Err(e) => Self::outcome(e, c.copy),
        }
    }

    /// Maps zero pages at `[dst, dst + len)` and wakes threads waiting there.
    pub fn zero(&self, dst: u64, len: u64) -> Fill {
        let mut z = ZeroPage {
            range: Range { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        match ioctl(self.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => Fill::Done,
            Err(e) => Self::outcome(e, z.zeropage),
        }
    }

    fn outcome(e: io::Error, done: i64) -> Fill {
        let n = done.max(0) as u64;
        match e.raw_os_error() {
            Some(libc::EEXIST) => Fill::Exists(n),
            Some(libc::EAGAIN) => Fill::Again(n),
            Some(libc::ENOENT) => Fill::NoVma,
            _ if done == -i64::from(libc::EEXIST) => Fill::Exists(0),
            _ if done == -i64::from(libc::EAGAIN) => Fill::Again(0),
            _ => Fill::Gone,
        }
    }

    /// Wakes threads waiting on `[start, start + len)`.
    pub fn wake(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        ioctl(self.as_raw_fd(), UFFDIO_WAKE, &mut r)
    }

    /// Stops watching `[start, start + len)`.
    pub fn unregister(&self, start: u64, len: u64) -> io::Result<()> {
        let mut r = Range { start, len };
        ioctl(self.as_raw_fd(), UFFDIO_UNREGISTER, &mut r)
    }

    /// Reads one event; `Ok(None)` when there is none now (`EAGAIN`) or the process is gone.
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut b = [0u8; MSG_LEN];
        // SAFETY: reading at most MSG_LEN bytes into a buffer of that size.
        let n = unsafe { libc::read(self.as_raw_fd(), b.as_mut_ptr().cast(), MSG_LEN) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(None);
        }
        if n as usize != MSG_LEN {
            return Err(io::Error::other(format!(
                "short userfaultfd message ({n} bytes)"
            )));
        }
        decode_msg(&b).map(Some)
    }
}

/// The value `criu restore` sends on the lazy-pages socket once the restore is complete
/// ("ReSTore Finished").
pub const RESTORE_FINISHED: u32 = 0x5253_5446;

/// What arrives on CRIU's lazy-pages socket (`lazy-pages.socket` in the restore's work
/// directory): for every task in `pstree.img` order, its pid as a native i32, then (for live
/// tasks; zombies send a negative pid and nothing else) one byte carrying the task's uffd as
/// `SCM_RIGHTS`; at the end of the restore, [`RESTORE_FINISHED`] as a u32.
pub struct LazySocket {
    conn: OwnedFd,
}

/// One task's announcement.
#[derive(Debug)]
pub enum Announce {
    /// A live task (pid in the images) and its uffd.
    Task(u32, Uffd),
    /// A zombie: no memory.
    Zombie(u32),
}

impl LazySocket {
    /// Accepts the restore's connection on `listener` (blocking).
    pub fn accept(listener: &std::os::unix::net::UnixListener) -> io::Result<LazySocket> {
        let (s, _) = listener.accept()?;
        Ok(LazySocket { conn: s.into() })
    }

    /// Wraps an already-connected socket (tests).
    pub fn from_fd(conn: OwnedFd) -> LazySocket {
        LazySocket { conn }
    }

    fn recv_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            // SAFETY: reads into the unfilled tail of `buf`.
            let n = unsafe {
                libc::recv(
                    self.conn.as_raw_fd(),
                    buf[got..].as_mut_ptr().cast(),
                    buf.len() - got,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the restore closed the lazy-pages socket",
                ));
            }
            got += n as usize;
        }
        Ok(())
    }

    /// The next task's announcement.
    pub fn next_task(&self) -> io::Result<Announce> {
        let mut p = [0u8; 4];
        self.recv_exact(&mut p)?;
        let pid = i32::from_ne_bytes(p);
        if pid < 0 {
            return Ok(Announce::Zombie(pid.unsigned_abs()));
        }
        let u = Uffd(self.recv_fd()?);
        u.set_nonblocking()?;
        Ok(Announce::Task(pid as u32, u))
    }

    fn recv_fd(&self) -> io::Result<OwnedFd> {
        let mut byte = [0u8; 1];
        // space for one fd
        let mut cbuf = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: msghdr is plain data; every pointer in it is to a live local buffer.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: recvmsg writes into the buffers described by `msg`.
        let n = unsafe { libc::recvmsg(self.conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the restore closed the lazy-pages socket before sending a uffd",
            ));
        }
        // SAFETY: CMSG_* walk the control buffer recvmsg filled in, within msg_controllen.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null()
                || (*c).cmsg_level != libc::SOL_SOCKET
                || (*c).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(io::Error::other("no uffd came with the task's pid"));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    }

    /// Waits for the restore's "finished" word (then the restore closes the socket).
    pub fn wait_finished(&self) -> io::Result<()> {
        let mut w = [0u8; 4];
        self.recv_exact(&mut w)?;
        let v = u32::from_ne_bytes(w);
        if v != RESTORE_FINISHED {
            return Err(io::Error::other(format!(
                "unexpected word {v:#x} on the lazy-pages socket"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }

    #[test]
    fn decodes_events() {
        let mut b = [0u8; MSG_LEN];
        b[0] = EVENT_PAGEFAULT;
        b[16..24].copy_from_slice(&0x1234u64.to_le_bytes());
        assert!(matches!(
            decode_msg(&b).unwrap(),
            Event::PageFault { addr: 0x1234 }
        ));
        b[0] = EVENT_REMAP;
        b[8..16].copy_from_slice(&1u64.to_le_bytes());
        b[16..24].copy_from_slice(&2u64.to_le_bytes());
        b[24..32].copy_from_slice(&3u64.to_le_bytes());
        assert!(matches!(
            decode_msg(&b).unwrap(),
            Event::Remap {
                from: 1,
                to: 2,
                len: 3
            }
        ));
        b[0] = 0x7f;
        assert!(decode_msg(&b).is_err());
    }

    /// A userfaultfd of this process and a fresh private anonymous mapping of `pages` pages
    /// registered with it (the caller unmaps it); `None` where userfaultfd is unavailable.
    fn registered_mapping(pages: usize) -> Option<(Uffd, *mut libc::c_void, usize)> {
        let u = match Uffd::open_own(true) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("SKIP: userfaultfd unavailable here: {e}");
                return None;
            }
        };
        let len = pages * 4096;
        // SAFETY: a fresh private anonymous mapping, unmapped by the caller.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        u.register(p as u64, len as u64).unwrap();
        Some((u, p, len))
    }

    /// The real thing on this process's own memory: a registered mapping gets pages copied in,
    /// a second copy over them reports `Exists`, zero pages fill the rest.
    #[test]
    fn copy_and_zero_into_own_memory() {
        let Some((u, p, len)) = registered_mapping(4) else {
            return;
        };
        let a = p as u64;
        let src = vec![7u8; 2 * 4096];
        assert_eq!(u.copy(a, &src), Fill::Done);
        assert_eq!(u.copy(a + 4096, &src), Fill::Exists(0));
        assert_eq!(u.zero(a + 2 * 4096, 2 * 4096), Fill::Done);
        // SAFETY: all four pages are present now (no fault can block).
        let mem = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        assert!(mem[..2 * 4096].iter().all(|&b| b == 7));
        assert!(mem[2 * 4096..].iter().all(|&b| b == 0));
        assert!(u.read_event().unwrap().is_none(), "no fault happened");
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
    }

    /// One copy over two adjacent VMAs is refused as a whole (`ENOENT`, nothing filled); each
    /// VMA's part fills on its own. (The engine once took this for "the address space is
    /// changing", retried, gave up, and left the faulting thread asleep.)
    #[test]
    fn a_copy_across_two_vmas_is_no_vma() {
        let Some((u, p, len)) = registered_mapping(4) else {
            return;
        };
        let a = p as u64;
        // SAFETY: advice on the upper half of that mapping: it becomes a VMA of its own.
        let r = unsafe {
            libc::madvise(
                (a + 2 * 4096) as *mut libc::c_void,
                2 * 4096,
                libc::MADV_DONTFORK,
            )
        };
        assert_eq!(r, 0);
        let src = vec![9u8; len];
        assert_eq!(u.copy(a + 4096, &src[..2 * 4096]), Fill::NoVma);
        assert_eq!(u.copy(a + 4096, &src[..4096]), Fill::Done);
        assert_eq!(u.copy(a + 2 * 4096, &src[..4096]), Fill::Done);
        assert_eq!(u.copy(a, &src[..4096]), Fill::Done);
        assert_eq!(u.copy(a + 3 * 4096, &src[..4096]), Fill::Done);
        // SAFETY: all four pages are present now.
        let mem = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        assert!(mem.iter().all(|&b| b == 9));
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, len) };
    }
}
