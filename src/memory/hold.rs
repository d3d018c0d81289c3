//! Holding CRIU's lazy page server on the source while haul moves the memory itself.
//!
//! After a lazy dump CRIU serves pages on a local TCP port and keeps the tasks frozen until
//! its client ends the connection: an orderly end (FIN) means "every page went", and CRIU
//! kills the tasks; a failure (an unknown command, a reset) fails the dump, and CRIU resumes
//! them. haul connects, sends nothing, and decides which end CRIU sees:
//!
//! - until the destination runs the process, the socket lingers 0: if `haul pid` dies, the
//!   kernel resets the connection and CRIU resumes the tasks here (the process is never lost);
//! - once the destination runs it, the linger is cleared: a dying `haul pid` then closes in
//!   order and CRIU ends the tasks (the process never runs twice) — the same window as
//!   stop-and-copy's acknowledgement of post-dump;
//! - [`CriuLazyHold::release_done`] when every page arrived; [`CriuLazyHold::release_failed`]
//!   to make CRIU resume the tasks.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};

use nix::sys::socket::{setsockopt, sockopt};

/// The connection to CRIU's lazy page server on 127.0.0.1 of this node.
#[derive(Debug)]
pub struct CriuLazyHold {
    sock: TcpStream,
}

fn linger(sock: &TcpStream, on: bool) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: i32::from(on),
        l_linger: 0,
    };
    setsockopt(sock, sockopt::Linger, &l).map_err(io::Error::from)
}

impl CriuLazyHold {
    /// Connects to CRIU's lazy page server on `127.0.0.1:port`, resetting on death.
    ///
    /// The linger is set before the connection exists, so there is no moment in which a
    /// dying `haul pid` would close it in order (and make CRIU kill the tasks). CRIU listens
    /// before it sends `status-ready` (`cr_page_server` in criu/page-xfer.c, `run_tcp_server`
    /// in criu/util.c), so the caller connects while it holds that notification: killed before
    /// answering it, `haul pid` fails the notification and CRIU resumes the tasks; killed
    /// after, CRIU accepts this connection and sees the reset.
    pub fn connect(port: u16) -> io::Result<CriuLazyHold> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        let sock = TcpStream::from(fd);
        linger(&sock, true)?;
        connect(sock.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).map_err(io::Error::from)?;
        Ok(CriuLazyHold { sock })
    }

    /// A second handle on the connection (the pusher that asks CRIU for pages).
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        self.sock.try_clone()
    }

    /// The destination runs the process: from now on an end of this connection (even
    /// `haul pid` dying) tells CRIU to end the tasks.
    pub fn destination_runs(&self) -> io::Result<()> {
        linger(&self.sock, false)
    }

    /// Every page arrived: CRIU's page server sees the end, and CRIU kills the frozen tasks.
    pub fn release_done(self) -> io::Result<()> {
        linger(&self.sock, false)?;
        self.sock.shutdown(Shutdown::Write)
    }

    /// The migration failed before the destination ran the process: CRIU fails the dump and
    /// resumes the tasks.
    pub fn release_failed(mut self) {
        let _ = linger(&self.sock, true);
        let _ = self.sock.write_all(&super::criu_ps::bogus());
        let _ = self.sock.flush();
        // dropped with linger 0: a reset, in case the command did not reach it
    }
}
