//! CRIU's statistics images (`stats-dump`, `stats-restore`), read for the plain-CRIU
//! baseline: the same figures haul's report takes from them (frozen time, restore time,
//! pages written).
//!
//! Layout (little-endian u32s): `IMG_SERVICE_MAGIC`, `STATS_MAGIC`, the length of one
//! protobuf `stats_entry`, then the entry (CRIU's `images/stats.proto`; times in µs).

use serde::{Deserialize, Serialize};

/// Magic of CRIU's service images.
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// Magic of the stats images.
pub const STATS_MAGIC: u32 = 0x5709_3306;

/// CRIU's `dump_stats_entry` (the fields the harness records).
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct DumpStats {
    /// Time to freeze the tree (µs).
    #[prost(uint32, tag = "1")]
    pub freezing_time: u32,
    /// Time the tree was frozen during the dump (µs).
    #[prost(uint32, tag = "2")]
    pub frozen_time: u32,
    /// Time to dump memory (µs).
    #[prost(uint32, tag = "3")]
    pub memdump_time: u32,
    /// Time to write memory out (µs).
    #[prost(uint32, tag = "4")]
    pub memwrite_time: u32,
    /// Pages scanned.
    #[prost(uint64, tag = "5")]
    pub pages_scanned: u64,
    /// Pages skipped (unchanged since a parent dump).
    #[prost(uint64, tag = "6")]
    pub pages_skipped_parent: u64,
    /// Pages written (to the images or the page server).
    #[prost(uint64, tag = "7")]
    pub pages_written: u64,
    /// Pages left for lazy transfer.
    #[prost(uint64, tag = "9")]
    pub pages_lazy: u64,
}

/// CRIU's `restore_stats_entry`.
#[derive(Clone, PartialEq, prost::Message, Serialize, Deserialize)]
pub struct RestoreStats {
    /// Pages compared.
    #[prost(uint64, tag = "1")]
    pub pages_compared: u64,
    /// Pages skipped thanks to copy-on-write.
    #[prost(uint64, tag = "2")]
    pub pages_skipped_cow: u64,
    /// Time forking the tree (µs).
    #[prost(uint32, tag = "3")]
    pub forking_time: u32,
    /// Whole restore (µs).
    #[prost(uint32, tag = "4")]
    pub restore_time: u32,
    /// Pages restored.
    #[prost(uint64, tag = "5")]
    pub pages_restored: u64,
}

/// CRIU's `stats_entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsEntry {
    /// Present in `stats-dump`.
    #[prost(message, optional, tag = "1")]
    pub dump: Option<DumpStats>,
    /// Present in `stats-restore`.
    #[prost(message, optional, tag = "2")]
    pub restore: Option<RestoreStats>,
}

/// A stats image that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Too short, or the magics are wrong.
    #[error("not a CRIU stats image: {0}")]
    Format(String),
    /// The protobuf entry does not decode.
    #[error("bad stats entry: {0}")]
    Decode(#[from] prost::DecodeError),
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decode a stats image's bytes.
pub fn decode(image: &[u8]) -> Result<StatsEntry, StatsError> {
    let (m1, m2, len) = match (u32_at(image, 0), u32_at(image, 4), u32_at(image, 8)) {
        (Some(a), Some(b), Some(c)) => (a, b, c as usize),
        _ => return Err(StatsError::Format(format!("{} bytes", image.len()))),
    };
    if m1 != IMG_SERVICE_MAGIC || m2 != STATS_MAGIC {
        return Err(StatsError::Format(format!("magics {m1:#x} {m2:#x}")));
    }
    let body = image
        .get(12..12 + len)
        .ok_or_else(|| StatsError::Format(format!("entry of {len} bytes is cut short")))?;
    Ok(<StatsEntry as prost::Message>::decode(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn image(e: &StatsEntry) -> Vec<u8> {
        let body = e.encode_to_vec();
        let mut v = Vec::new();
        v.extend(IMG_SERVICE_MAGIC.to_le_bytes());
        v.extend(STATS_MAGIC.to_le_bytes());
        v.extend((body.len() as u32).to_le_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn round_trip_and_errors() {
        let e = StatsEntry {
            dump: Some(DumpStats {
                frozen_time: 123_456,
                pages_written: 65_536,
                ..Default::default()
            }),
            restore: None,
        };
        let img = image(&e);
        assert_eq!(decode(&img).unwrap(), e);
        assert!(decode(&img[..6]).is_err());
        assert!(decode(&img[..img.len() - 1]).is_err());
        let mut bad = img.clone();
        bad[0] ^= 1;
        assert!(decode(&bad).unwrap_err().to_string().contains("magics"));
    }
}
