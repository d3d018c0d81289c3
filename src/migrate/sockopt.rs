//! Socket settings for haul's connections, and what the kernel says of them
//! ([`tcp_bytes_acked`]): a peer that vanishes without a word (its node died,
//! the link was cut) is noticed within [`PEER_TIMEOUT`], not after the kernel's default of
//! many minutes. The memory channels that CRIU writes to directly carry the same settings, so a
//! dump streaming pages into a dead link fails in bounded time and the tasks are resumed.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// How long unacknowledged data or a silent peer is tolerated.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// No Nagle delay; keepalive probes after 5 s idle, every 2 s, 4 of them; unacknowledged data
/// fails the connection after [`PEER_TIMEOUT`]. Best effort: failures are ignored (the
/// connection still works, only failure detection is slower).
pub fn harden(sock: &impl AsFd) {
    let _ = setsockopt(sock, sockopt::TcpNoDelay, &true);
    let _ = setsockopt(sock, sockopt::KeepAlive, &true);
    let _ = setsockopt(sock, sockopt::TcpKeepIdle, &5);
    let _ = setsockopt(sock, sockopt::TcpKeepInterval, &2);
    let _ = setsockopt(sock, sockopt::TcpKeepCount, &4);
    let _ = setsockopt(
        sock,
        sockopt::TcpUserTimeout,
        &(PEER_TIMEOUT.as_millis() as u32),
    );
}

/// Bytes the kernel has seen acknowledged on a TCP socket (progress of a memory channel that
/// CRIU writes to directly).
pub fn tcp_bytes_acked(sock: &impl AsRawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (r == 0).then_some(info.tcpi_bytes_acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;

    #[test]
    fn settings_are_applied() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        harden(&s);
        assert!(getsockopt(&s, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&s, sockopt::TcpUserTimeout).unwrap(), 20_000);
        assert!(getsockopt(&s, sockopt::TcpNoDelay).unwrap());
    }
}
