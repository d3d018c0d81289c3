//! Conversions between the CRIU figures haul keeps ([`crate::criu`]) and their wire forms
//! ([`super::pb`]), in one place for both sides of a migration.

use crate::criu::{CriuVersion, Features, RestoreStats};

use super::pb;

impl From<CriuVersion> for pb::CriuVersion {
    fn from(v: CriuVersion) -> Self {
        pb::CriuVersion {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        }
    }
}

impl From<pb::CriuVersion> for CriuVersion {
    fn from(v: pb::CriuVersion) -> Self {
        CriuVersion {
            major: v.major,
            minor: v.minor,
            sublevel: v.sublevel,
        }
    }
}

impl From<Features> for pb::Features {
    fn from(f: Features) -> Self {
        pb::Features {
            mem_track: f.mem_track,
            lazy_pages: f.lazy_pages,
            // not CRIU's: every haul of this version receives `--sync` trees (issue #18)
            file_sync: true,
        }
    }
}

impl From<pb::Features> for Features {
    fn from(f: pb::Features) -> Self {
        Features {
            mem_track: f.mem_track,
            lazy_pages: f.lazy_pages,
        }
    }
}

impl From<RestoreStats> for pb::RestoreStats {
    fn from(s: RestoreStats) -> Self {
        pb::RestoreStats {
            pages_compared: s.pages_compared,
            pages_skipped_cow: s.pages_skipped_cow,
            forking_time_us: s.forking_time_us,
            restore_time_us: s.restore_time_us,
            pages_restored: s.pages_restored,
        }
    }
}

impl From<pb::RestoreStats> for RestoreStats {
    fn from(s: pb::RestoreStats) -> Self {
        RestoreStats {
            pages_compared: s.pages_compared,
            pages_skipped_cow: s.pages_skipped_cow,
            forking_time_us: s.forking_time_us,
            restore_time_us: s.restore_time_us,
            pages_restored: s.pages_restored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v = CriuVersion {
            major: 4,
            minor: 2,
            sublevel: 1,
        };
        assert_eq!(CriuVersion::from(pb::CriuVersion::from(v)), v);
        let f = Features {
            mem_track: true,
            lazy_pages: false,
        };
        assert_eq!(Features::from(pb::Features::from(f)), f);
        let s = RestoreStats {
            pages_compared: 1,
            pages_skipped_cow: 2,
            forking_time_us: 3,
            restore_time_us: 4,
            pages_restored: 5,
        };
        assert_eq!(RestoreStats::from(pb::RestoreStats::from(s)), s);
    }
}
