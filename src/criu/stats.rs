//! CRIU's statistics images, `stats-dump` and `stats-restore`.
//!
//! Layout (little-endian u32s): `IMG_SERVICE_MAGIC`, `STATS_MAGIC`, the length of one
//! protobuf `stats_entry`, then the entry.
//! ```text
//! +------------+------------+--------+------------------------+
//! | 0x55105940 | 0x57093306 | len:u32| stats_entry (len bytes) |
//! +------------+------------+--------+------------------------+
//! ```

use std::path::Path;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::error::CriuError;
use super::pb;

/// Magic of CRIU's service images (stats, irmap cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Magic of the stats images.
pub const STATS_MAGIC: u32 = 0x5709_3306;
/// A stats entry is a few dozen bytes; anything larger is not a stats image.
pub const MAX_ENTRY: usize = 4096;

/// What CRIU measured during a dump or pre-dump (times in microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpStats {
    /// Time to freeze the tree.
    #[serde(alias = "freezing_time")]
    pub freezing_time_us: u32,
    /// Time the tree was frozen (for a final dump held at post-dump: includes the hold).
    #[serde(alias = "frozen_time")]
    pub frozen_time_us: u32,
    /// Time to dump memory.
    #[serde(alias = "memdump_time")]
    pub memdump_time_us: u32,
    /// Time to write memory out.
    #[serde(alias = "memwrite_time")]
    pub memwrite_time_us: u32,
    /// Pages scanned.
    pub pages_scanned: u64,
    /// Pages skipped because the parent round already had them unchanged.
    pub pages_skipped_parent: u64,
    /// Pages written (to the images or the page server).
    pub pages_written: u64,
    /// Pages left for lazy transfer (post-copy).
    pub pages_lazy: u64,
}

/// What CRIU measured during a restore (times in microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStats {
    /// Pages compared (dedup).
    pub pages_compared: u64,
    /// Pages skipped thanks to copy-on-write.
    pub pages_skipped_cow: u64,
    /// Time forking the tree.
    #[serde(alias = "forking_time")]
    pub forking_time_us: u32,
    /// Whole restore time.
    #[serde(alias = "restore_time")]
    pub restore_time_us: u32,
    /// Pages restored.
    pub pages_restored: u64,
}

impl From<pb::DumpStatsEntry> for DumpStats {
    fn from(d: pb::DumpStatsEntry) -> Self {
        DumpStats {
            freezing_time_us: d.freezing_time,
            frozen_time_us: d.frozen_time,
            memdump_time_us: d.memdump_time,
            memwrite_time_us: d.memwrite_time,
            pages_scanned: d.pages_scanned,
            pages_skipped_parent: d.pages_skipped_parent,
            pages_written: d.pages_written,
            pages_lazy: d.pages_lazy,
        }
    }
}

impl From<pb::RestoreStatsEntry> for RestoreStats {
    fn from(r: pb::RestoreStatsEntry) -> Self {
        RestoreStats {
            pages_compared: r.pages_compared,
            pages_skipped_cow: r.pages_skipped_cow,
            forking_time_us: r.forking_time,
            restore_time_us: r.restore_time,
            pages_restored: r.pages_restored.unwrap_or(0),
        }
    }
}

/// Why a stats image could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsFormatError {
    /// Shorter than the 12-byte header.
    #[error("truncated header ({0} bytes)")]
    Truncated(usize),
    /// Wrong magic numbers.
    #[error("bad magic {0:#010x} {1:#010x}")]
    Magic(u32, u32),
    /// The entry's length is larger than the file or than any stats entry.
    #[error("entry length {0} does not fit (file has {1} bytes after the header)")]
    Length(usize, usize),
    /// The protobuf does not decode.
    #[error("protobuf: {0}")]
    Decode(String),
}

/// Parses a stats image.
pub fn parse(bytes: &[u8]) -> Result<pb::StatsEntry, StatsFormatError> {
    if bytes.len() < 12 {
        return Err(StatsFormatError::Truncated(bytes.len()));
    }
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let (m0, m1, len) = (word(0), word(4), word(8) as usize);
    if m0 != IMG_SERVICE_MAGIC || m1 != STATS_MAGIC {
        return Err(StatsFormatError::Magic(m0, m1));
    }
    let rest = &bytes[12..];
    if len > rest.len() || len > MAX_ENTRY {
        return Err(StatsFormatError::Length(len, rest.len()));
    }
    pb::StatsEntry::decode(&rest[..len]).map_err(|e| StatsFormatError::Decode(e.to_string()))
}

/// Encodes a stats image (the inverse of [`parse`]; used by tests and benches).
pub fn encode(entry: &pb::StatsEntry) -> Vec<u8> {
    let body = entry.encode_to_vec();
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes());
    out.extend_from_slice(&STATS_MAGIC.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn read(path: &Path) -> Result<pb::StatsEntry, CriuError> {
    let bytes = std::fs::read(path).map_err(|e| CriuError::Stats {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    parse(&bytes).map_err(|e| CriuError::Stats {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Reads `stats-dump` from a work directory.
pub fn read_dump(dir: &Path) -> Result<DumpStats, CriuError> {
    let path = dir.join("stats-dump");
    read(&path)?
        .dump
        .map(DumpStats::from)
        .ok_or(CriuError::Stats {
            path,
            why: "no dump entry".into(),
        })
}

/// Reads `stats-restore` from a work directory.
pub fn read_restore(dir: &Path) -> Result<RestoreStats, CriuError> {
    let path = dir.join("stats-restore");
    read(&path)?
        .restore
        .map(RestoreStats::from)
        .ok_or(CriuError::Stats {
            path,
            why: "no restore entry".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn dump_stats_round_trip(a in any::<u32>(), b in any::<u32>(), w in any::<u64>(), l in any::<u64>()) {
            let e = pb::StatsEntry {
                dump: Some(pb::DumpStatsEntry { freezing_time: a, frozen_time: b, pages_written: w, pages_lazy: l, ..Default::default() }),
                restore: None,
            };
            let parsed = parse(&encode(&e)).unwrap();
            prop_assert_eq!(DumpStats::from(parsed.dump.unwrap()), DumpStats::from(e.dump.unwrap()));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn bad_magic_and_lengths_are_refused() {
        assert!(matches!(
            parse(&[0; 4]),
            Err(StatsFormatError::Truncated(4))
        ));
        assert!(matches!(
            parse(&[0; 12]),
            Err(StatsFormatError::Magic(0, 0))
        ));
        let mut b = encode(&pb::StatsEntry::default());
        b[8..12].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(parse(&b), Err(StatsFormatError::Length(1000, 0))));
    }
}
