//! One `criu swrk` child process and the SOCK_SEQPACKET socket haul talks to it over.
//!
//! CRIU reads one protobuf message per packet. A message's size is learnt with
//! `recv(MSG_PEEK | MSG_TRUNC)` before it is read. File descriptors listed in `inherit` stay open
//! in the child under the same numbers: that is how CRIU gets an already-authenticated
//! page-server socket (`ps.fd`), which CRIU accepts only in swrk mode.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use prost::Message;
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

use super::error::CriuError;
use super::pb;

/// A running `criu swrk` worker.
pub struct Worker {
    sock: AsyncFd<OwnedFd>,
    child: Child,
    pid: u32,
    /// CRIU's log for the current request (for error messages).
    pub(crate) log: Option<PathBuf>,
}

/// Clears `FD_CLOEXEC` on `fds`, so that they stay open under the same numbers across the
/// coming exec. Only fcntl(2), which is async-signal-safe: for use in a `pre_exec` closure.
pub fn keep_across_exec(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl on an fd number has no memory effects; a bad fd is reported as an error.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) >= 0
        };
        if !ok {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Worker {
    /// Starts `criu swrk` with the fds in `inherit` left open in the child.
    pub fn spawn(criu: &Path, inherit: &[RawFd]) -> Result<Worker, CriuError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| CriuError::Socket {
            op: "socketpair",
            source: e.into(),
        })?;
        // The child's end must be blocking for CRIU; O_NONBLOCK lives on the open file, which
        // the two ends do not share.
        set_nonblocking(theirs.as_raw_fd(), false)?;
        let theirs_fd = theirs.as_raw_fd();
        let mut keep: Vec<RawFd> = inherit.to_vec();
        keep.push(theirs_fd);
        let mut cmd = Command::new(criu);
        cmd.arg("swrk").arg(theirs_fd.to_string());
        cmd.stdin(std::process::Stdio::null());
        cmd.stdout(std::process::Stdio::null());
        cmd.kill_on_drop(false);
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl(2),
        // which is async-signal-safe; it touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(move || keep_across_exec(&keep));
        }
        let child = cmd.spawn().map_err(|source| CriuError::Spawn {
            path: criu.to_path_buf(),
            source,
        })?;
        drop(theirs);
        let pid = child.id().unwrap_or(0);
        // SAFETY: `ours` is an OwnedFd moved into the AsyncFd, so its descriptor stays open and
        // the same for the AsyncFd's whole lifetime.
        let sock = unsafe { AsyncFd::register(ours) }.map_err(|e| CriuError::Socket {
            op: "register with tokio",
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Worker {
            sock,
            child,
            pid,
            log: None,
        })
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends one request.
    pub async fn send(&self, req: &pb::CriuReq) -> Result<(), CriuError> {
        let buf = req.encode_to_vec();
        loop {
            let mut guard = self.sock.writable().await.map_err(|e| CriuError::Socket {
                op: "poll for write",
                source: e,
            })?;
            match guard.try_io(|fd| {
                send(fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL).map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Err(self.exited("sending a request"))
                }
                Ok(Err(e)) => {
                    return Err(CriuError::Socket {
                        op: "send",
                        source: e,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one response or notification; `during` names what haul waits for.
    pub async fn recv(&self, during: &str) -> Result<pb::CriuResp, CriuError> {
        loop {
            let mut guard = self.sock.readable().await.map_err(|e| CriuError::Socket {
                op: "poll for read",
                source: e,
            })?;
            let res = guard.try_io(|fd| {
                let fd = fd.as_raw_fd();
                let mut empty = [0u8; 0];
                let len = recv(fd, &mut empty, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC)
                    .map_err(std::io::Error::from)?;
                let mut buf = vec![0u8; len.max(1)];
                let n = recv(fd, &mut buf, MsgFlags::empty()).map_err(std::io::Error::from)?;
                buf.truncate(n);
                Ok(buf)
            });
            match res {
                Ok(Ok(buf)) if buf.is_empty() => return Err(self.exited(during)),
                Ok(Ok(buf)) => return Ok(pb::CriuResp::decode(buf.as_slice())?),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    return Err(self.exited(during))
                }
                Ok(Err(e)) => {
                    return Err(CriuError::Socket {
                        op: "recv",
                        source: e,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn exited(&self, during: &str) -> CriuError {
        CriuError::WorkerExited {
            pid: self.pid,
            during: during.to_string(),
            log: self.log.clone(),
        }
    }

    /// Closes the socket and waits for the worker to exit (it exits once the socket closes).
    pub async fn finish(self) {
        let Worker {
            sock, mut child, ..
        } = self;
        drop(sock);
        let _ = child.wait().await;
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> Result<(), CriuError> {
    // SAFETY: fcntl on an fd this process owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(CriuError::Socket {
            op: "fcntl(O_NONBLOCK)",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes `fd` blocking or not (CRIU needs blocking sockets).
pub fn set_blocking(fd: RawFd) -> Result<(), CriuError> {
    set_nonblocking(fd, false)
}
