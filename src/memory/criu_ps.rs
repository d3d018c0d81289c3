//! CRIU's page-server messages, as its lazy page server on the source speaks them
//! (criu/page-xfer.c): a `struct page_server_iov`, native-endian, 32 bytes with the padding
//! after `cmd`:
//! ```text
//! +---------+---------+--------------+-----------+-----------+
//! | cmd u32 | pad u32 | nr_pages u64 | vaddr u64 | dst_id u64|
//! +---------+---------+--------------+-----------+-----------+
//! ```
//! haul asks for pages with `PS_IOV_GET` (dst_id = the task's pid in the images); CRIU answers
//! `PS_IOV_ADD_F` with flags `PE_PRESENT` in the upper 16 bits of `cmd`, the pages it has from
//! `vaddr` on (at most up to the end of one of its pipe buffers, so possibly fewer), then the
//! pages' bytes. A request for pages it has not kept lazily fails its lazy dump (and CRIU
//! resumes the tasks): only ask for pages the dump's pagemap marks lazy.

/// Whether CRIU `v` lays `struct page_server_iov` out as haul does (u64 `nr_pages`, checked
/// against 4.2's source; older releases had a u32 there and get no requests from haul).
pub fn speaks_layout(v: crate::criu::CriuVersion) -> bool {
    (v.major, v.minor) >= (4, 2)
}

/// Bytes of one `struct page_server_iov`.
pub const IOV_LEN: usize = 32;
/// `PS_IOV_ADD_F`: pages follow (flags in the upper bits).
pub const PS_IOV_ADD_F: u32 = 6;
/// `PS_IOV_GET`: send me pages.
pub const PS_IOV_GET: u32 = 7;
/// The command's low bits (the flags live above them).
pub const PS_CMD_BITS: u32 = 16;

/// One `struct page_server_iov`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iov {
    /// Command (and flags above [`PS_CMD_BITS`]).
    pub cmd: u32,
    /// Pages.
    pub nr_pages: u64,
    /// Dump-time address.
    pub vaddr: u64,
    /// For `PS_IOV_GET`: the task's pid in the images.
    pub dst_id: u64,
}

impl Iov {
    /// A request for `nr_pages` pages of task `pid` at `vaddr`.
    pub fn get(pid: u32, vaddr: u64, nr_pages: u64) -> Iov {
        Iov {
            cmd: PS_IOV_GET,
            nr_pages,
            vaddr,
            dst_id: u64::from(pid),
        }
    }

    /// The bytes CRIU reads.
    pub fn encode(&self) -> [u8; IOV_LEN] {
        let mut b = [0u8; IOV_LEN];
        b[0..4].copy_from_slice(&self.cmd.to_ne_bytes());
        b[8..16].copy_from_slice(&self.nr_pages.to_ne_bytes());
        b[16..24].copy_from_slice(&self.vaddr.to_ne_bytes());
        b[24..32].copy_from_slice(&self.dst_id.to_ne_bytes());
        b
    }

    /// Parses CRIU's bytes.
    pub fn decode(b: &[u8; IOV_LEN]) -> Iov {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(a)
        };
        Iov {
            cmd: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }

    /// The command without its flags.
    pub fn op(&self) -> u32 {
        self.cmd & ((1 << PS_CMD_BITS) - 1)
    }
}

/// A command CRIU's page server does not know: it fails the lazy dump, and CRIU resumes the
/// tasks.
pub fn bogus() -> [u8; IOV_LEN] {
    Iov {
        cmd: 0xdead,
        nr_pages: 0,
        vaddr: 0,
        dst_id: 0,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_criu_s() {
        let b = Iov::get(1, 0x7f00_0000_0000, 1024).encode();
        assert_eq!(&b[0..4], &7u32.to_ne_bytes());
        assert_eq!(&b[4..8], &[0, 0, 0, 0], "padding after cmd");
        assert_eq!(&b[8..16], &1024u64.to_ne_bytes());
        assert_eq!(&b[24..32], &1u64.to_ne_bytes());
        let answer = Iov {
            cmd: (4 << PS_CMD_BITS) | PS_IOV_ADD_F,
            ..Iov::get(1, 0, 1)
        };
        assert_eq!(answer.op(), PS_IOV_ADD_F);
        assert_eq!(Iov::decode(&bogus()).op(), 0xdead);
    }

    proptest! {
        #[test]
        fn roundtrip(cmd: u32, n: u64, v: u64, d: u64) {
            let i = Iov { cmd, nr_pages: n, vaddr: v, dst_id: d };
            prop_assert_eq!(Iov::decode(&i.encode()), i);
        }
    }
}
