//! The record file `rec-writer` appends to, and its verifier.
//!
//! Records follow each other with no file header; each is written with one `write(2)` on an
//! `O_APPEND` fd, so a migration can lose or tear one only if something is wrong:
//!
//! ```text
//! offset    size  field
//! 0         4     magic "HREC"
//! 4         8     seq, little endian: 0, 1, 2, ... in file order
//! 12        4     len, little endian: payload bytes, at most MAX_PAYLOAD
//! 16        len   payload: payload_byte(seq, i), a function of seq and the position
//! 16+len    4     CRC-32 (IEEE) of bytes 0 .. 16+len, little endian
//! ```
//!
//! [`verify_file`] reads it back: every record whole, checksummed, in sequence, with the
//! payload its sequence number implies, and (when the writer says how many it wrote) none
//! missing at the end.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"HREC";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;
/// Bytes after the payload (the checksum).
pub const TRAILER_LEN: usize = 4;
/// The largest payload a record may carry (a larger length field means garbage).
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// Size of a record with `payload` payload bytes.
pub fn record_len(payload: u32) -> usize {
    HEADER_LEN + payload as usize + TRAILER_LEN
}

/// Byte `i` of the payload of record `seq` (splitmix64 of both).
pub fn payload_byte(seq: u64, i: u32) -> u8 {
    let mut z = seq
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(i / 8).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> ((i % 8) * 8)) as u8
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The bytes of record `seq` with `payload` payload bytes.
pub fn encode(seq: u64, payload: u32) -> Vec<u8> {
    let mut rec = Vec::with_capacity(record_len(payload));
    rec.extend_from_slice(&MAGIC);
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(&payload.to_le_bytes());
    rec.extend((0..payload).map(|i| payload_byte(seq, i)));
    let crc = crc32(&rec);
    rec.extend_from_slice(&crc.to_le_bytes());
    rec
}

/// What a verified file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReport {
    /// The file.
    pub path: PathBuf,
    /// Whole, valid records.
    pub records: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Offset of the last record (None when empty).
    pub last_offset: Option<u64>,
}

impl fmt::Display for RecordReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} records, {} bytes, all valid",
            self.path.display(),
            self.records,
            self.bytes
        )
    }
}

/// What is wrong with a record file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file cannot be read.
    #[error("cannot read record file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read said.
        #[source]
        source: io::Error,
    },
    /// The file ends inside a record.
    #[error("{path:?}: record {seq} at offset {offset} is torn: the file ends after {have} of its {need} bytes")]
    Torn {
        /// The file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// Its expected sequence number.
        seq: u64,
        /// Bytes present.
        have: u64,
        /// Bytes it needs (the header alone when even that is incomplete).
        need: u64,
    },
    /// No magic where a record should start.
    #[error("{path:?}: no record magic at offset {offset} (record {seq} expected there)")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The expected sequence number.
        seq: u64,
    },
    /// A length field beyond [`MAX_PAYLOAD`].
    #[error("{path:?}: record {seq} at offset {offset} claims {len} payload bytes (at most {MAX_PAYLOAD})")]
    TooLong {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The sequence number.
        seq: u64,
        /// The length field.
        len: u32,
    },
    /// A sequence number out of order: a record lost, repeated or from elsewhere.
    #[error("{path:?}: record at offset {offset} has sequence {found}, expected {expected} (a record was lost or repeated)")]
    Sequence {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The expected sequence number.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The checksum does not match.
    #[error("{path:?}: record {seq} at offset {offset} fails its checksum (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The sequence number.
        seq: u64,
        /// The stored CRC.
        stored: u32,
        /// The computed CRC.
        computed: u32,
    },
    /// The checksum matches but the payload is not the one the sequence implies.
    #[error("{path:?}: record {seq} at offset {offset} has a payload that is not its own")]
    Payload {
        /// The file.
        path: PathBuf,
        /// The offset.
        offset: u64,
        /// The sequence number.
        seq: u64,
    },
    /// Fewer or more records than the writer wrote.
    #[error("{path:?}: holds {found} valid records, the writer wrote {expected} (records lost at the end)")]
    Count {
        /// The file.
        path: PathBuf,
        /// Records the writer wrote.
        expected: u64,
        /// Records in the file.
        found: u64,
    },
}

/// Verify a record file held in memory (`path` only names it in messages).
pub fn verify_bytes(
    path: &Path,
    data: &[u8],
    expected: Option<u64>,
) -> Result<RecordReport, RecordError> {
    let path_buf = || path.to_path_buf();
    let mut off = 0usize;
    let mut seq = 0u64;
    let mut last_offset = None;
    while off < data.len() {
        let rest = &data[off..];
        let offset = off as u64;
        if rest.len() < HEADER_LEN {
            return Err(RecordError::Torn {
                path: path_buf(),
                offset,
                seq,
                have: rest.len() as u64,
                need: HEADER_LEN as u64,
            });
        }
        if rest[..4] != MAGIC {
            return Err(RecordError::BadMagic {
                path: path_buf(),
                offset,
                seq,
            });
        }
        let found = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(RecordError::TooLong {
                path: path_buf(),
                offset,
                seq: found,
                len,
            });
        }
        let need = record_len(len);
        if rest.len() < need {
            return Err(RecordError::Torn {
                path: path_buf(),
                offset,
                seq,
                have: rest.len() as u64,
                need: need as u64,
            });
        }
        let body = &rest[..HEADER_LEN + len as usize];
        let stored = u32::from_le_bytes(rest[need - 4..need].try_into().expect("4 bytes"));
        let computed = crc32(body);
        if stored != computed {
            return Err(RecordError::Checksum {
                path: path_buf(),
                offset,
                seq: found,
                stored,
                computed,
            });
        }
        if found != seq {
            return Err(RecordError::Sequence {
                path: path_buf(),
                offset,
                expected: seq,
                found,
            });
        }
        if !(0..len).all(|i| body[HEADER_LEN + i as usize] == payload_byte(seq, i)) {
            return Err(RecordError::Payload {
                path: path_buf(),
                offset,
                seq,
            });
        }
        last_offset = Some(offset);
        off += need;
        seq += 1;
    }
    if let Some(expected) = expected {
        if expected != seq {
            return Err(RecordError::Count {
                path: path_buf(),
                expected,
                found: seq,
            });
        }
    }
    Ok(RecordReport {
        path: path_buf(),
        records: seq,
        bytes: data.len() as u64,
        last_offset,
    })
}

/// Verify the record file at `path`; `expected` is how many records the writer says it wrote
/// (its `Summary:` line), when known.
pub fn verify_file(
    path: impl AsRef<Path>,
    expected: Option<u64>,
) -> Result<RecordReport, RecordError> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    verify_bytes(path, &data, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64, payload: u32) -> Vec<u8> {
        (0..n).flat_map(|s| encode(s, payload)).collect()
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn intact_file_verifies() {
        let p = Path::new("r.dat");
        let data = file(10, 40);
        let r = verify_bytes(p, &data, Some(10)).unwrap();
        assert_eq!(r.records, 10);
        assert_eq!(r.last_offset, Some(9 * record_len(40) as u64));
        assert_eq!(verify_bytes(p, &[], Some(0)).unwrap().records, 0);
    }

    #[test]
    fn damage_is_found() {
        let p = Path::new("r.dat");
        let data = file(10, 40);
        let rl = record_len(40);
        // torn at the end
        let e = verify_bytes(p, &data[..data.len() - 3], None).unwrap_err();
        assert!(matches!(e, RecordError::Torn { seq: 9, .. }), "{e}");
        let e = verify_bytes(p, &data[..9 * rl + 5], None).unwrap_err();
        assert!(matches!(e, RecordError::Torn { need: 16, .. }), "{e}");
        // a flipped payload byte
        let mut bad = data.clone();
        bad[3 * rl + 20] ^= 1;
        let e = verify_bytes(p, &bad, None).unwrap_err();
        assert!(matches!(e, RecordError::Checksum { seq: 3, .. }), "{e}");
        // a record missing in the middle
        let mut gap = data[..2 * rl].to_vec();
        gap.extend_from_slice(&data[3 * rl..]);
        let e = verify_bytes(p, &gap, None).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::Sequence {
                    expected: 2,
                    found: 3,
                    ..
                }
            ),
            "{e}"
        );
        // records missing at the end
        let e = verify_bytes(p, &data, Some(11)).unwrap_err();
        assert!(
            matches!(
                e,
                RecordError::Count {
                    expected: 11,
                    found: 10,
                    ..
                }
            ),
            "{e}"
        );
        // garbage
        let mut junk = data.clone();
        junk[rl] = b'X';
        assert!(matches!(
            verify_bytes(p, &junk, None),
            Err(RecordError::BadMagic { seq: 1, .. })
        ));
        // a foreign payload with a valid checksum
        let mut forged = encode(0, 8);
        forged[HEADER_LEN] ^= 0xff;
        let crc = crc32(&forged[..HEADER_LEN + 8]);
        forged[HEADER_LEN + 8..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            verify_bytes(p, &forged, None),
            Err(RecordError::Payload { .. })
        ));
    }

    #[test]
    fn messages_name_the_file() {
        let e = verify_file("/no/such/records.dat", None).unwrap_err();
        assert!(e.to_string().contains("/no/such/records.dat"));
    }
}
