//! What the rounds tell: per round, the bandwidth the link showed, the rate the tree dirtied
//! memory at (and would unthrottled), and the downtime a final dump would cost now: its
//! memory part and its frozen non-memory part.
//!
//! ```text
//! after round i (pages_i written, bytes_i sent in secs_i, at throttle level L_i; CRIU's
//! frozen_time f_i and memdump_time m_i of the round):
//!   bw_i        = bytes_i / secs_i                          the round's bandwidth
//!   link_i      = max(bw_1 .. bw_i)                         the link, as the best round showed it
//!   fixed_i     = secs_i - bytes_i / link_i                 the round's fixed part (wall)
//!   rate_i      = pages_i * 4096 / (start_i - start_{i-1})  dirtied while round i-1 ran (at L_{i-1})
//!   rate0_i     = rate_i / (1 - L_{i-1})                    model: dirtying scales with CPU share
//!   mem_i       = rate0_i * (1 - L_i) * secs_i / link_i     what a final dump now would move, in s
//!   other_i     = max(0, f_i - m_i)                         the round's frozen non-memory part
//!   frz_i       = median(other_1 .. other_i)                the final dump's, estimated
//!   est_i       = mem_i + frz_i                             the downtime the freeze would cost
//! ```
//!
//! A round is a fixed part (CRIU starting, seizing the tree, the page server's set-up; about
//! 6 s a round in the TCG guests, milliseconds on hardware) plus its bytes over the link. The
//! largest round, usually the first, is the least diluted by the fixed part, so its bandwidth
//! stands for the link's (an underestimate by its own fixed part: on the safe side). The
//! memory part is cloud-hypervisor's estimate (bytes left over bandwidth). The wall fixed part
//! matters to the stop rule as a floor (the tree keeps dirtying during it, so no round can
//! shrink the dirty set below `rate x fixed`, see [`super::decide_round`]) but not as
//! downtime: most of it (CRIU starting, the page server's set-up) comes before the freeze.
//!
//! **The frozen non-memory part** is what the freeze costs besides moving pages: seizing the
//! tree, collecting its mappings, the parasite's set-up and cure, and in the final dump the
//! rest of the tree's state and the hand-off to the destination. Every pre-dump round
//! measures the first few: CRIU's `frozen_time` minus its `memdump_time` (in splice mode the
//! pages are drained into pipes while frozen, `criu/mem.c`, and written out after the thaw,
//! `cr_pre_dump_finish` in `criu/cr-dump.c`). Their median (a throttled or disturbed round
//! does not move it) stands for the final dump's; it is a lower bound of it, since the final
//! dump also dumps files, sockets and the rest (results/vm/throttle-2026-11-30: 0.06 to
//! 0.40 s per pre-dump round in the TCG guests, against 0.8 to 2.6 s of the final dump's
//! downtime that neither its memory nor the restore explains). A round without CRIU's stats
//! counts 0 s. Restore time is outside the estimate: `--max-downtime` bounds the freeze on the
//! source, the restore adds to it on the destination.
//!
//! Round 1 has no dirty rate (it moved all memory); its memory part is its own pages over its
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
    /// Time CRIU kept the tree frozen in the round (s; CRIU's `frozen_time`, 0 if unknown).
    pub frozen_secs: f64,
    /// The part of that freeze spent draining memory (s; CRIU's `memdump_time`).
    pub memory_frozen_secs: f64,
}

impl PreCopyRound {
    /// The round's frozen non-memory part (s): `frozen - memdump`, at least 0.
    pub fn frozen_other_secs(&self) -> f64 {
        (self.frozen_secs - self.memory_frozen_secs).max(0.0)
    }
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
    /// The memory part of a final dump right now: what it would move, over the link's
    /// bandwidth (s). Round 1 (dirty rate unknown): its own pages over the link's bandwidth.
    pub est_memory_secs: f64,
    /// This round's frozen non-memory part: CRIU's frozen time minus its memory part (s).
    pub frozen_other_secs: f64,
    /// The final dump's frozen non-memory part, estimated: the median of the rounds' so far
    /// (s; a lower bound, see the module's doc).
    pub est_frozen_secs: f64,
    /// The downtime a final dump right now would cost on the source: `est_memory_secs +
    /// est_frozen_secs` (s); what the stop rule holds against `--max-downtime`.
    pub est_downtime_secs: f64,
}

impl RoundEstimate {
    /// The dirty rate at `level`, by the model (`None` before round 2).
    pub fn rate_at(&self, level: ThrottleLevel) -> Option<f64> {
        self.unthrottled_rate.map(|r| r * level.remaining())
    }

    /// One log line: `round=3 throttle=40% pages=1234 bw=12.3MiB/s link=20.1MiB/s fixed=0.20s
    /// dirty_rate=30.1MiB/s est_downtime=0.562s (memory 0.412s + frozen 0.150s)`.
    pub fn log_line(&self) -> String {
        let mib = |b: f64| b / 1_048_576.0;
        let rate = self
            .dirty_rate
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}MiB/s", mib(r)));
        format!(
            "round={} throttle={} pages={} bw={:.1}MiB/s link={:.1}MiB/s fixed={:.2}s dirty_rate={rate} est_downtime={:.3}s (memory {:.3}s + frozen {:.3}s)",
            self.round,
            self.throttle,
            self.pages_written,
            mib(self.bandwidth),
            mib(self.link_bandwidth),
            self.fixed_secs,
            self.est_downtime_secs,
            self.est_memory_secs,
            self.est_frozen_secs
        )
    }
}

/// The median of `xs` (0 for none).
fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// The figures of every round (pure).
pub fn estimates(rounds: &[PreCopyRound]) -> Vec<RoundEstimate> {
    let mut link = 0.0f64;
    let mut others: Vec<f64> = Vec::with_capacity(rounds.len());
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
            let est_memory_secs = if est_bytes <= 0.0 {
                0.0
            } else if link > 0.0 {
                est_bytes / link
            } else {
                f64::INFINITY
            };
            let frozen_other_secs = r.frozen_other_secs();
            if r.frozen_secs > 0.0 {
                others.push(frozen_other_secs);
            }
            let est_frozen_secs = median(&mut others.clone());
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
                est_memory_secs,
                frozen_other_secs,
                est_frozen_secs,
                est_downtime_secs: est_memory_secs + est_frozen_secs,
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
                frozen_secs: 0.5,
                memory_frozen_secs: 0.3,
            },
            PreCopyRound {
                // 100 MiB dirtied over the 5 s round 1 ran at 30 %: 20 MiB/s
                pages_written: 25600,
                bytes: 100 << 20,
                secs: 2.0,
                started_secs: 5.0,
                throttle: l50,
                frozen_secs: 0.4,
                memory_frozen_secs: 0.0,
            },
        ];
        let e = estimates(&rounds);
        assert_eq!(e[0].dirty_rate, None);
        assert!(
            (e[0].est_memory_secs - 4.0).abs() < 1e-9,
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
        assert!((e[1].est_memory_secs - want).abs() < 1e-9);
        // frozen non-memory parts 0.2 s and 0.4 s: the median of the two is 0.3 s
        assert!((e[0].frozen_other_secs - 0.2).abs() < 1e-9);
        assert!((e[0].est_frozen_secs - 0.2).abs() < 1e-9);
        assert!((e[1].frozen_other_secs - 0.4).abs() < 1e-9);
        assert!((e[1].est_frozen_secs - 0.3).abs() < 1e-9);
        assert!((e[1].est_downtime_secs - (want + 0.3)).abs() < 1e-9);
        let line = e[1].log_line();
        assert!(
            line.starts_with(
                "round=2 throttle=50% pages=25600 bw=50.0MiB/s link=64.0MiB/s fixed=0.44s dirty_rate=20.0MiB/s est_downtime="
            ),
            "{line}"
        );
        assert!(
            line.ends_with(&format!("(memory {want:.3}s + frozen 0.300s)")),
            "{line}"
        );
        assert!(e[0].log_line().contains("dirty_rate=-"));
    }

    #[test]
    fn the_frozen_part_is_the_median_of_the_rounds_that_have_stats() {
        let round = |frozen: f64, memory: f64| PreCopyRound {
            pages_written: 100,
            bytes: 409_600,
            secs: 1.0,
            started_secs: 0.0,
            throttle: ThrottleLevel::NONE,
            frozen_secs: frozen,
            memory_frozen_secs: memory,
        };
        // no stats (0 frozen) counts as unknown, a memory time above the frozen one as 0 s,
        // and one disturbed round (3 s) does not move the median
        let rounds = [
            round(0.0, 0.0),
            round(0.3, 0.1),
            round(0.1, 0.5),
            round(3.5, 0.5),
        ];
        let e = estimates(&rounds);
        assert_eq!(e[0].est_frozen_secs, 0.0);
        assert!((e[1].est_frozen_secs - 0.2).abs() < 1e-9);
        assert_eq!(e[2].frozen_other_secs, 0.0);
        assert!((e[2].est_frozen_secs - 0.1).abs() < 1e-9);
        assert!((e[3].est_frozen_secs - 0.2).abs() < 1e-9, "{:?}", e[3]);
        for x in &e {
            assert_eq!(x.est_downtime_secs, x.est_memory_secs + x.est_frozen_secs);
        }
    }
}
