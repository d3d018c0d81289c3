//! Unix sockets and their peers, from the kernel's sock_diag interface (what `ss -x` and
//! CRIU itself use): `/proc/net/unix` names sockets but not who they are connected to.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_SOCK_DIAG` (linux/netlink.h).
const NETLINK_SOCK_DIAG: i32 = 4;
/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_NAME | UDIAG_SHOW_PEER` (linux/unix_diag.h).
const UDIAG_SHOW: u32 = 0x1 | 0x4;
/// `UNIX_DIAG_NAME`, `UNIX_DIAG_PEER` attribute types.
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 16;

/// One unix socket as sock_diag reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub sock_type: u8,
    /// TCP-like state (1 = established, 10 = listen).
    pub state: u8,
    /// The peer's inode, for a connected socket.
    pub peer: Option<u64>,
    /// The bound name (`@...` for the abstract namespace).
    pub name: Option<String>,
}

/// Every unix socket of the calling thread's network namespace, by inode.
pub fn unix_sockets() -> io::Result<HashMap<u64, UnixSocket>> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = [0u8; NLMSG_HDR + 24];
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    // unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
    req[NLMSG_HDR] = libc::AF_UNIX as u8;
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
    req[NLMSG_HDR + 12..NLMSG_HDR + 16].copy_from_slice(&UDIAG_SHOW.to_ne_bytes());
    // SAFETY: send of a stack buffer of its own length on our socket (the kernel is the
    // default destination of a netlink socket).
    let n = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: recv into our buffer, at most its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if parse_messages(&buf[..n as usize], &mut out)? {
            return Ok(out);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Parses one datagram of netlink messages into `out`; `Ok(true)` at `NLMSG_DONE`.
fn parse_messages(mut b: &[u8], out: &mut HashMap<u64, UnixSocket>) -> io::Result<bool> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0) as usize;
        let kind = u16_at(b, 4);
        if len < NLMSG_HDR || len > b.len() {
            return Err(io::Error::other(format!(
                "sock_diag: bad message length {len}"
            )));
        }
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                let errno = -(u32_at(b, NLMSG_HDR) as i32);
                return Err(io::Error::from_raw_os_error(errno));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY && len >= NLMSG_HDR + DIAG_MSG => {
                let m = &b[NLMSG_HDR..len];
                let ino = u64::from(u32_at(m, 4));
                let mut s = UnixSocket {
                    sock_type: m[1],
                    state: m[2],
                    ..Default::default()
                };
                let mut attrs = &m[DIAG_MSG..];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16_at(attrs, 0));
                    let atype = u16_at(attrs, 2);
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    let data = &attrs[4..alen];
                    match atype {
                        UNIX_DIAG_PEER if data.len() >= 4 => {
                            s.peer = Some(u64::from(u32_at(data, 0))).filter(|p| *p != 0)
                        }
                        UNIX_DIAG_NAME if !data.is_empty() => {
                            s.name = Some(if data[0] == 0 {
                                format!("@{}", String::from_utf8_lossy(&data[1..]))
                            } else {
                                String::from_utf8_lossy(data)
                                    .trim_end_matches('\0')
                                    .to_string()
                            })
                        }
                        _ => {}
                    }
                    attrs = &attrs[alen.next_multiple_of(4).min(attrs.len())..];
                }
                out.insert(ino, s);
            }
            _ => {}
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(false)
}

/// [`unix_sockets`] of another network namespace (given as `/proc/PID/ns/net`), read from a
/// short-lived thread that joins it (a network namespace is per thread).
pub fn unix_sockets_in(netns: &std::path::Path) -> io::Result<HashMap<u64, UnixSocket>> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an fd we opened; it moves only this short-lived thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            unix_sockets()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the sock_diag thread panicked")))
    })
}
