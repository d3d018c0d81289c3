//! What the rounds tell: per round, the bandwidth the link showed, the rate the tree dirtied
//! memory at (and would unthrottled), and the downtime a final dump would cost now.
//!
//! ```text
//! after round i (pages_i written, bytes_i sent in secs_i, at throttle level L_i):
//!   bw_i        = bytes_i / secs_i                          the round's bandwidth
//!   link_i      = max(bw_1 .. bw_i)                         the link, as the best round showed it
//!   fixed_i     = secs_i - bytes_i / link_i                 the round's fixed part
//!   rate_i      = pages_i * 4096 / (start_i - start_{i-1})  dirtied while round i-1 ran (at L_{i-1})
//!   rate0_i     = rate_i / (1 - L_{i-1})                    model: dirtying scales with CPU share
//!   est_i       = rate0_i * (1 - L_i) * secs_i / link_i     what a final dump now would move, in s
//! ```
//!
//! A round is a fixed part (CRIU starting, seizing the tree, the page server's set-up; about
//! 6 s a round in the TCG guests, milliseconds on hardware) plus its bytes over the link. The
//! largest round, usually the first, is the least diluted by the fixed part, so its bandwidth
//! stands for the link's (an underestimate by its own fixed part: on the safe side). The
//! estimated downtime is the memory part only (as cloud-hypervisor's: bytes left over
//! bandwidth); the final dump adds its own fixed part and the restore. The fixed part still
//! matters to the stop rule: the tree keeps dirtying during it, so no round can shrink the
//! dirty set below `rate x fixed` (see [`super::decide_round`]).
//!
//! Round 1 has no dirty rate (it moved all memory); its estimate is its own pages over its
//! bandwidth.

use serde::{Deserialize, Serialize};

use super::level::ThrottleLevel;

/// Bytes per page in CRIU's page counts.
pub const PAGE_SIZE: u64 = 4096;

/// One finished pre-dump round, as the source measured it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreCopyRound {
    /// Pages the round wrote (CRIU's `pages_written`): those dirtied since the previous
    /// round's freeze.
    pub pages_written: u64,
    /// Bytes sent over the round's memory channel.
    pub bytes: u64,
    /// Wall time of the round, from its request to its end (s).
    pub secs: f64,
    /// When the round started, on any monotonic clock of the source (s); the interval
    /// between two rounds' starts is the time their dirty set accumulated over.
    pub started_secs: f64,
    /// The throttle level in force while the round ran.
    pub throttle: ThrottleLevel,
}

/// What the rounds tell, per round (for the log line and the report).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RoundEstimate {
    /// Round number, 1-based.
    pub round: u32,
    /// The level in force while the round ran.
    pub throttle: ThrottleLevel,
    /// Pages the round wrote.
    pub pages_written: u64,
    /// Bandwidth the round saw: bytes / wall time (bytes/s).
    pub bandwidth: f64,
    /// The link's bandwidth: the best any round so far saw (bytes/s).
    pub link_bandwidth: f64,
    /// The round's fixed part: its time the bytes do not explain, `secs - bytes / link` (s).
    pub fixed_secs: f64,
    /// Dirty rate over the interval before this round's freeze (bytes/s); unknown for round 1.
    pub dirty_rate: Option<f64>,
    /// The level in force during that interval.
    pub dirty_rate_throttle: Option<ThrottleLevel>,
    /// The dirty rate the tree would have unthrottled (model: proportional to CPU share).
    pub unthrottled_rate: Option<f64>,
    /// What a final dump right now would move, over the link's bandwidth (s). Round 1 (dirty
    /// rate unknown): its own pages over the link's bandwidth.
    pub est_downtime_secs: f64,
}

impl RoundEstimate {
    /// The dirty rate at `level`, by the model (`None` before round 2).
    pub fn rate_at(&self, level: ThrottleLevel) -> Option<f64> {
        self.unthrottled_rate.map(|r| r * level.remaining())
    }

    /// One log line: `round=3 throttle=40% pages=1234 bw=12.3MiB/s link=20.1MiB/s fixed=0.20s
    /// dirty_rate=30.1MiB/s est_downtime=0.412s`.
    pub fn log_line(&self) -> String {
        let mib = |b: f64| b / 1_048_576.0;
        let rate = self
            .dirty_rate
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}MiB/s", mib(r)));
        format!(
            "round={} throttle={} pages={} bw={:.1}MiB/s link={:.1}MiB/s fixed={:.2}s dirty_rate={rate} est_downtime={:.3}s",
            self.round,
            self.throttle,
            self.pages_written,
            mib(self.bandwidth),
            mib(self.link_bandwidth),
            self.fixed_secs,
            self.est_downtime_secs
        )
    }
}

/// The figures of every round (pure).
pub fn estimates(rounds: &[PreCopyRound]) -> Vec<RoundEstimate> {
    let mut link = 0.0f64;
    rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bytes_dirty = r.pages_written as f64 * PAGE_SIZE as f64;
            let bandwidth = if r.bytes > 0 {
                r.bytes as f64 / r.secs.max(1e-6)
            } else {
                0.0
            };
            link = link.max(bandwidth);
            let fixed_secs = if link > 0.0 {
                (r.secs - r.bytes as f64 / link).max(0.0)
            } else {
                r.secs
            };
            let prev = i.checked_sub(1).map(|p| rounds[p]);
            let interval = prev.map(|p| (r.started_secs - p.started_secs).max(1e-6));
            let dirty_rate = interval.map(|t| bytes_dirty / t);
            let dirty_rate_throttle = prev.map(|p| p.throttle);
            let unthrottled_rate = dirty_rate
                .zip(dirty_rate_throttle)
                .map(|(d, l)| d / l.remaining());
            let est_bytes = match unthrottled_rate {
                Some(r0) => r0 * r.throttle.remaining() * r.secs,
                None => bytes_dirty,
            };
            let est_downtime_secs = if est_bytes <= 0.0 {
                0.0
            } else if link > 0.0 {
                est_bytes / link
            } else {
                f64::INFINITY
            };
            RoundEstimate {
                round: i as u32 + 1,
                throttle: r.throttle,
                pages_written: r.pages_written,
                bandwidth,
                link_bandwidth: link,
                fixed_secs,
                dirty_rate,
                dirty_rate_throttle,
                unthrottled_rate,
                est_downtime_secs,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1_048_576.0;

    #[test]
    fn estimates_follow_the_model() {
        let l30 = ThrottleLevel::new(30).unwrap();
        let l50 = ThrottleLevel::new(50).unwrap();
        let rounds = [
            PreCopyRound {
                pages_written: 65536,
                bytes: 256 << 20,
                secs: 4.0,
                started_secs: 0.0,
                throttle: l30,
            },
            PreCopyRound {
                // 100 MiB dirtied over the 5 s round 1 ran at 30 %: 20 MiB/s
                pages_written: 25600,
                bytes: 100 << 20,
                secs: 2.0,
                started_secs: 5.0,
                throttle: l50,
            },
        ];
        let e = estimates(&rounds);
        assert_eq!(e[0].dirty_rate, None);
        assert!(
            (e[0].est_downtime_secs - 4.0).abs() < 1e-9,
            "round 1: own pages / bw"
        );
        let rate = e[1].dirty_rate.unwrap();
        assert!((rate - 20.0 * MIB).abs() < 1.0, "{rate}");
        assert_eq!(e[1].dirty_rate_throttle, Some(l30));
        let r0 = e[1].unthrottled_rate.unwrap();
        assert!((r0 - 20.0 * MIB / 0.7).abs() < 1.0);
        // the link: round 1's 64 MiB/s (round 2 saw 50 MiB/s: 100 MiB in 2 s, 0.44 s of it
        // fixed); at 50 % during round 2 (2 s): r0 * 0.5 * 2 / 64 MiB
        assert!((e[1].link_bandwidth - 64.0 * MIB).abs() < 1.0);
        assert!((e[1].fixed_secs - (2.0 - 100.0 / 64.0)).abs() < 1e-9);
        assert_eq!(e[0].fixed_secs, 0.0, "the best round defines the link");
        let want = r0 * 0.5 * 2.0 / (64.0 * MIB);
        assert!((e[1].est_downtime_secs - want).abs() < 1e-9);
        let line = e[1].log_line();
        assert!(
            line.starts_with(
                "round=2 throttle=50% pages=25600 bw=50.0MiB/s link=64.0MiB/s fixed=0.44s dirty_rate=20.0MiB/s est_downtime="
            ),
            "{line}"
        );
        assert!(e[0].log_line().contains("dirty_rate=-"));
    }
}
