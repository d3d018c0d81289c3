//! The memory streams' format: what travels on haul's lazy memory channels once they are
//! authenticated (see `wire::auth`; the channels carry no frames after the handshake).
//!
//! Every message is a fixed 24-byte header, little-endian, then, for `Pages`, the pages:
//! ```text
//! +-----------+---------+---------+---------+------------+----------------+
//! | magic u32 | kind u16| zero u16| pid u32 | npages u32 | addr u64       |  + npages * 4096 bytes
//! +-----------+---------+---------+---------+------------+----------------+
//! ```
//! - `Pages` (source -> destination): `npages` pages of task `pid` (its pid in the images)
//!   at dump-time address `addr`; on a bulk stream (pushed in the background) or on the
//!   priority stream (an answer to a `Request`).
//! - `Request` (destination -> source, priority stream only): send `npages` pages at `addr`
//!   of task `pid` now (the restored task faulted on them).
//! - `End` (source -> destination): this stream sent everything it will; `addr` holds the
//!   number of pages it sent. Nothing follows.
//! - `Refused` (source -> destination, priority stream): the source has no such lazy pages.
//!   The destination cannot complete the task: it kills it.
//!
//! A header is checked before anything it announces is read: the magic, a known kind, the
//! zero field, a page-aligned address, 1..=[`MAX_PAGES`] pages, no wrap-around.

use super::ranges::PAGE;

/// "HLMP" on the wire (little-endian).
pub const MAGIC: u32 = 0x504d_4c48;
/// Header bytes.
pub const HEADER_LEN: usize = 24;
/// At most this many pages per `Pages` or `Request` message (4 MiB).
pub const MAX_PAGES: u32 = 1024;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Pages follow.
    Pages,
    /// A request for pages.
    Request,
    /// The stream is complete.
    End,
    /// The source cannot serve a request.
    Refused,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::Pages => 1,
            Kind::Request => 2,
            Kind::End => 3,
            Kind::Refused => 4,
        }
    }

    fn from_code(c: u16) -> Option<Kind> {
        Some(match c {
            1 => Kind::Pages,
            2 => Kind::Request,
            3 => Kind::End,
            4 => Kind::Refused,
            _ => return None,
        })
    }
}

/// One header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What it is.
    pub kind: Kind,
    /// The task's pid in the images.
    pub pid: u32,
    /// Pages announced (`Pages`, `Request`, `Refused`); 0 for `End`.
    pub npages: u32,
    /// Dump-time address (`Pages`, `Request`, `Refused`); the stream's page count for `End`.
    pub addr: u64,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a haul memory stream (or out of step).
    #[error("bad magic {0:#010x} on a memory stream")]
    Magic(u32),
    /// An unknown message kind.
    #[error("unknown memory stream message kind {0}")]
    Kind(u16),
    /// The reserved field was not zero.
    #[error("reserved field {0:#x} is not zero")]
    Reserved(u16),
    /// An address that is not page-aligned, or a range that wraps around.
    #[error("bad page range {addr:#x} + {npages} pages")]
    Range {
        /// The address.
        addr: u64,
        /// The page count.
        npages: u32,
    },
}

impl Header {
    /// `npages` pages of `pid` at `addr` follow.
    pub fn pages(pid: u32, addr: u64, npages: u32) -> Header {
        Header {
            kind: Kind::Pages,
            pid,
            npages,
            addr,
        }
    }

    /// Asks for `npages` pages of `pid` at `addr`.
    pub fn request(pid: u32, addr: u64, npages: u32) -> Header {
        Header {
            kind: Kind::Request,
            pid,
            npages,
            addr,
        }
    }

    /// The stream ends; it carried `pages` pages.
    pub fn end(pages: u64) -> Header {
        Header {
            kind: Kind::End,
            pid: 0,
            npages: 0,
            addr: pages,
        }
    }

    /// The source has no lazy pages at `pid`/`addr`.
    pub fn refused(pid: u32, addr: u64, npages: u32) -> Header {
        Header {
            kind: Kind::Refused,
            pid,
            npages,
            addr,
        }
    }

    /// Bytes of page data that follow this header.
    pub fn payload_len(&self) -> usize {
        match self.kind {
            Kind::Pages => self.npages as usize * PAGE as usize,
            _ => 0,
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&self.kind.code().to_le_bytes());
        b[8..12].copy_from_slice(&self.pid.to_le_bytes());
        b[12..16].copy_from_slice(&self.npages.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr.to_le_bytes());
        b
    }

    /// Parses and checks a header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(WireError::Magic(magic));
        }
        let code = u16_at(4);
        let kind = Kind::from_code(code).ok_or(WireError::Kind(code))?;
        let reserved = u16_at(6);
        if reserved != 0 {
            return Err(WireError::Reserved(reserved));
        }
        let pid = u32_at(8);
        let npages = u32_at(12);
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[16..24]);
        let addr = u64::from_le_bytes(a);
        let h = Header {
            kind,
            pid,
            npages,
            addr,
        };
        if kind != Kind::End {
            let bad = addr % PAGE != 0
                || npages == 0
                || npages > MAX_PAGES
                || addr.checked_add(u64::from(npages) * PAGE).is_none();
            if bad {
                return Err(WireError::Range { addr, npages });
            }
        } else if npages != 0 || pid != 0 {
            return Err(WireError::Range { addr, npages });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_what_it_must() {
        let ok = Header::pages(7, 0x1000, 4).encode();
        assert_eq!(Header::decode(&ok).unwrap(), Header::pages(7, 0x1000, 4));
        let mut b = ok;
        b[0] ^= 1;
        assert!(matches!(Header::decode(&b), Err(WireError::Magic(_))));
        let mut b = ok;
        b[4] = 9;
        assert_eq!(Header::decode(&b), Err(WireError::Kind(9)));
        let mut b = ok;
        b[6] = 1;
        assert!(matches!(Header::decode(&b), Err(WireError::Reserved(_))));
        for h in [
            Header::pages(1, 0x1001, 1),
            Header::pages(1, 0x1000, 0),
            Header::pages(1, 0x1000, MAX_PAGES + 1),
            Header::request(1, u64::MAX - 4095, 2),
        ] {
            assert!(
                matches!(Header::decode(&h.encode()), Err(WireError::Range { .. })),
                "{h:?}"
            );
        }
        assert_eq!(
            Header::decode(&[0u8; HEADER_LEN]),
            Err(WireError::Magic(0)),
            "an all-zero header is never valid"
        );
        assert_eq!(Header::pages(1, 0, 3).payload_len(), 3 * 4096);
        assert_eq!(Header::request(1, 0, 3).payload_len(), 0);
    }

    proptest! {
        #[test]
        fn valid_headers_roundtrip(pid: u32, page in 0u64..(1 << 40), n in 1u32..=MAX_PAGES, k in 0usize..3) {
            let h = match k {
                0 => Header::pages(pid, page * PAGE, n),
                1 => Header::request(pid, page * PAGE, n),
                _ => Header::refused(pid, page * PAGE, n),
            };
            prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            let e = Header::end(page);
            prop_assert_eq!(Header::decode(&e.encode()).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::array::uniform24(any::<u8>())) {
            if let Ok(h) = Header::decode(&b) {
                prop_assert!(h.payload_len() <= MAX_PAGES as usize * 4096);
                prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
            }
        }
    }
}
