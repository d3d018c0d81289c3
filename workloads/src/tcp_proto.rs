//! Frames between `tcp-client` and `tcp-echo`.
//!
//! The client sends requests and waits for each reply on the same connection; the server keeps
//! per-connection state (requests served, running sum of the values) that must survive the
//! migration together with the connection (CRIU's `tcp_established`):
//!
//! ```text
//! request (20 bytes)                 reply (28 bytes)
//! 0   4  magic "HRQ1"                0   4  magic "HRP1"
//! 4   8  seq   (1, 2, 3, ... per     4   8  seq, echoed
//!               connection, LE)      12  8  sum: wrapping sum of every value received on
//! 12  8  value (random, LE)                  this connection, this one included (LE)
//!                                    20  8  served: requests served on this connection (LE)
//! ```
//!
//! The client checks each reply against its own count and sum: a server that lost its state
//! or a byte of the stream cannot answer right. An all-zero frame is never valid.

use std::io::{self, Read, Write};

/// Magic of a request.
pub const REQUEST_MAGIC: [u8; 4] = *b"HRQ1";
/// Magic of a reply.
pub const REPLY_MAGIC: [u8; 4] = *b"HRP1";
/// Bytes in a request.
pub const REQUEST_LEN: usize = 20;
/// Bytes in a reply.
pub const REPLY_LEN: usize = 28;

/// A frame with the wrong magic.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream does not carry our frames (or lost its framing).
    #[error("bad frame magic {found:?} (expected {expected:?}): the stream lost its framing")]
    BadMagic {
        /// The magic expected.
        expected: [u8; 4],
        /// The bytes found.
        found: [u8; 4],
    },
    /// Reading or writing the socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Sequence number on the connection, from 1.
    pub seq: u64,
    /// The value to add to the connection's sum.
    pub value: u64,
}

/// A reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The request's sequence number.
    pub seq: u64,
    /// Wrapping sum of every value received on the connection.
    pub sum: u64,
    /// Requests served on the connection.
    pub served: u64,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn check_magic(expected: [u8; 4], b: &[u8]) -> Result<(), ProtoError> {
    let found = [b[0], b[1], b[2], b[3]];
    if found != expected {
        return Err(ProtoError::BadMagic { expected, found });
    }
    Ok(())
}

impl Request {
    /// The frame's bytes.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC);
        b[4..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..20].copy_from_slice(&self.value.to_le_bytes());
        b
    }

    /// Parse a frame.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, ProtoError> {
        check_magic(REQUEST_MAGIC, b)?;
        Ok(Request {
            seq: u64_at(b, 4),
            value: u64_at(b, 12),
        })
    }

    /// Read one request; `Ok(None)` at a clean end of stream (before its first byte).
    pub fn read_from(r: &mut impl Read) -> Result<Option<Self>, ProtoError> {
        let mut b = [0u8; REQUEST_LEN];
        if !read_frame(r, &mut b)? {
            return Ok(None);
        }
        Self::decode(&b).map(Some)
    }

    /// Write one request.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }
}

impl Reply {
    /// The frame's bytes.
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut b = [0u8; REPLY_LEN];
        b[..4].copy_from_slice(&REPLY_MAGIC);
        b[4..12].copy_from_slice(&self.seq.to_le_bytes());
        b[12..20].copy_from_slice(&self.sum.to_le_bytes());
        b[20..28].copy_from_slice(&self.served.to_le_bytes());
        b
    }

    /// Parse a frame.
    pub fn decode(b: &[u8; REPLY_LEN]) -> Result<Self, ProtoError> {
        check_magic(REPLY_MAGIC, b)?;
        Ok(Reply {
            seq: u64_at(b, 4),
            sum: u64_at(b, 12),
            served: u64_at(b, 20),
        })
    }

    /// Read one reply; `Ok(None)` at a clean end of stream.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Self>, ProtoError> {
        let mut b = [0u8; REPLY_LEN];
        if !read_frame(r, &mut b)? {
            return Ok(None);
        }
        Self::decode(&b).map(Some)
    }

    /// Write one reply.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())
    }
}

/// Fill `buf`; false on EOF before the first byte, an error on EOF inside the frame.
fn read_frame(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a frame ({got} of {} bytes)",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let q = Request {
            seq: 7,
            value: u64::MAX - 3,
        };
        assert_eq!(Request::decode(&q.encode()).unwrap(), q);
        let p = Reply {
            seq: 7,
            sum: 12345,
            served: 7,
        };
        assert_eq!(Reply::decode(&p.encode()).unwrap(), p);
        assert!(Request::decode(&[0; REQUEST_LEN]).is_err());
        assert!(Reply::decode(&[0; REPLY_LEN]).is_err());
    }

    #[test]
    fn stream_reads() {
        let mut bytes = Vec::new();
        Request { seq: 1, value: 2 }.write_to(&mut bytes).unwrap();
        Request { seq: 2, value: 3 }.write_to(&mut bytes).unwrap();
        let mut r = &bytes[..];
        assert_eq!(Request::read_from(&mut r).unwrap().unwrap().seq, 1);
        assert_eq!(Request::read_from(&mut r).unwrap().unwrap().seq, 2);
        assert!(Request::read_from(&mut r).unwrap().is_none());
        let mut torn = &bytes[..25];
        Request::read_from(&mut torn).unwrap();
        assert!(Request::read_from(&mut torn).is_err());
    }
}
