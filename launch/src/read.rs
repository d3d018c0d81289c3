//! The caller's reads of its pipe ends with a deadline (`poll` then `read`, retried on
//! `EINTR`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Wait until `fd` is readable (or at end of file) or `deadline` passes; false on timeout.
fn poll_in(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, timeout) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One read with a deadline: `Some(n)` (0 at end of file) or `None` on timeout.
pub(crate) fn read_some(
    fd: &OwnedFd,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<Option<usize>> {
    loop {
        if !poll_in(fd, deadline)? {
            return Ok(None);
        }
        match nix::unistd::read(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Everything until end of file or the deadline; the flag says whether the deadline passed.
pub(crate) fn read_to_eof(fd: &OwnedFd, deadline: Instant) -> io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match read_some(fd, &mut buf, deadline)? {
            None => return Ok((out, true)),
            Some(0) => return Ok((out, false)),
            Some(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reads_until_eof_or_deadline() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"abc").unwrap();
        let (got, timed_out) = read_to_eof(&r, Instant::now() + Duration::from_millis(50)).unwrap();
        assert_eq!((got.as_slice(), timed_out), (&b"abc"[..], true));
        drop(w);
        let (got, timed_out) = read_to_eof(&r, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!((got.as_slice(), timed_out), (&b""[..], false));
    }
}
