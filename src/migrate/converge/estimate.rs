//! What the rounds tell: per round, the bandwidth the link showed, the rate the tree dirtied
//! memory at (and would unthrottled), and the downtime a final dump would cost now: its
//! memory part and its fixed (non-memory) part.
//!
//! ```text
//! after round i (pages_i written, bytes_i sent in secs_i, at throttle level L_i; CRIU's
//! frozen_time f_i, memdump_time m_i and memwrite_time w_i of the round):
//!   bw_i        = bytes_i / secs_i                          the round's bandwidth
//!   wr_i        = pages_i * 4096 / w_i                      the rate CRIU wrote its pages at
//!   link_i      = min(wr_j : j <= i, pages_j >= 1024)       the final dump's page rate, estimated
//!                 (all rounds' wr when none is that large; max(bw_1 .. bw_i) without stats)
//!   fixed_i     = secs_i - bytes_i / link_i                 the round's fixed part (wall)
//!   rate_i      = pages_i * 4096 / (start_i - start_{i-1})  dirtied while round i-1 ran (at L_{i-1})
//!   rate0_i     = rate_i / (1 - L_{i-1})                    model: dirtying scales with CPU share
//!   mem_i       = rate0_i * (1 - L_i) * secs_i / link_i     what a final dump now would move, in s
//!   other_i     = max(0, f_i - m_i)                         the round's frozen non-memory part
//!   rest_i      = max(0, secs_i - w_i - m_i, other_i)       the round's time besides moving pages
//!                 (other_i alone when CRIU reports no w_i for a round that wrote pages)
//!   frz_i       = max(rest_1 .. rest_i)                     the final dump's fixed part, estimated
//!   est_i       = mem_i + frz_i                             the downtime the freeze would cost
//! ```
//!
//! **The fixed part.** What the final dump costs besides moving its pages, from haul's
//! `Instant` before CRIU's request to the destination's "runs" less CRIU's restore time:
//! CRIU starting (before it seizes the tree), seizing it and dumping everything but memory
//! (files, sockets, the rest of the state, the images), haul's hand-off (the page server's
//! end, the images, the restore request), the destination starting CRIU's restore, and the
//! answer. In results/vm/throttle-2026-11-30 (TCG guests) that was 0.68 to 2.6 s, of which
//! CRIU's start before the freeze 0.11 to 0.24 s, the dump and hand-off up to the restore
//! request 0.6 to 1.5 s (memory excluded), the restore's start 0.1 to 0.3 s. A pre-dump
//! round's CRIU frozen time less memdump (what estimated it before: 0.05 to 0.4 s) sees only
//! the seizing and the parasite. A pre-dump round as a whole goes through the same kinds of
//! steps (a CRIU started on each node, the tree seized, haul's round trips, the page
//! server's end), its pages drained into pipes while frozen (`memdump_time`) and written
//! after the thaw (`memwrite_time`): its time besides those two tracked the final dump's
//! fixed part in those runs, though the final dump has steps the rounds lack (the non-memory
//! state, the images, the restore's start): the median over a run's rounds fell below it in
//! 9 of 14 runs (by up to 0.5 s), the slowest round in 3 of 13 (by 0.05 to 0.23 s; a 14th,
//! spoiled by the toucher's stall, 1.8 s). The slowest round so far stands for it: on the
//! safe side (up to 1.3 s above in those runs), at the price of throttling harder. On
//! hardware both are milliseconds; a tree whose non-memory state is large (many files,
//! sockets) costs the final dump more than the rounds show, which this does not see.
//!
//! **The page rate.** The final dump moves its pages while frozen through the same page
//! server as the rounds' writes after the thaw. The best round's bandwidth (what the link
//! was before) over-predicted it by up to 2.3x there (its big first round is the fastest);
//! each round's own write rate, `pages / memwrite_time`, is the closer measure, and the
//! slowest of the rounds that wrote at least 4 MiB (smaller ones are dominated by per-write
//! latency) was at or below the final dump's in 11 of 14 runs (at most 19 % above). A
//! round without CRIU's stats falls back to the best round's bandwidth, as before.
//!
//! The wall fixed part (`fixed_i`) matters to the stop rule as a floor (the tree keeps
//! dirtying during it, so no round can shrink the dirty set below `rate x fixed`, see
//! [`super::decide_round`]). Restore time is outside the estimate: `--max-downtime` bounds
//! the freeze on the source, the restore adds to it on the destination.
//!
//! Round 1 has no dirty rate (it moved all memory); its memory part is its own pages over
//! the page rate.

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
    /// Time CRIU spent writing the round's pages out to the page server after the thaw (s;
    /// CRIU's `memwrite_time`, 0 if unknown).
    pub memory_write_secs: f64,
}

impl PreCopyRound {
    /// The round's frozen non-memory part (s): `frozen - memdump`, at least 0.
    pub fn frozen_other_secs(&self) -> f64 {
        (self.frozen_secs - self.memory_frozen_secs).max(0.0)
    }

    /// Whether CRIU's stats of the round are known (a round without them counts 0 s frozen).
    pub fn has_stats(&self) -> bool {
        self.frozen_secs > 0.0
    }

    /// The rate CRIU wrote the round's pages at (bytes/s): `pages * 4096 / memwrite`; `None`
    /// without stats or pages.
    pub fn write_rate(&self) -> Option<f64> {
        (self.memory_write_secs > 0.0 && self.pages_written > 0)
            .then(|| self.pages_written as f64 * PAGE_SIZE as f64 / self.memory_write_secs)
    }

    /// The round's wall time besides moving its pages (s): `secs - memwrite - memdump`, at
    /// least its frozen non-memory part; `None` without stats. A round that wrote pages but
    /// reports no write time (a CRIU that does not time it) counts its frozen non-memory part
    /// alone, as the estimate did before: its wall time would count the pages' transfer as
    /// fixed.
    pub fn rest_secs(&self) -> Option<f64> {
        if !self.has_stats() {
            return None;
        }
        if self.memory_write_secs <= 0.0 && self.pages_written > 0 {
            return Some(self.frozen_other_secs());
        }
        Some(
            (self.secs - self.memory_write_secs - self.memory_frozen_secs)
                .max(self.frozen_other_secs()),
        )
    }
}

/// Rounds that wrote fewer pages than this do not count for the page rate when a larger
/// one exists: their write time is mostly per-write latency (4 MiB).
pub const RATE_MIN_PAGES: u64 = 1024;

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
    /// The rate CRIU wrote this round's pages at (bytes/s; `None` without stats).
    pub write_rate: Option<f64>,
    /// The rate the final dump's pages are predicted to move at (bytes/s): the slowest
    /// write rate of the rounds so far that wrote at least [`RATE_MIN_PAGES`] (any round's
    /// when none did), or the best round's bandwidth when no round has CRIU's stats.
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
    /// This round's wall time besides moving its pages: `secs - memwrite - memdump`, at
    /// least `frozen_other_secs` (s; `None` without stats).
    pub rest_secs: Option<f64>,
    /// The final dump's fixed (non-memory) part, estimated: the largest `rest_secs` of the
    /// rounds so far (s; see the module's doc).
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

    /// One log line: `round=3 throttle=40% pages=1234 bw=12.3MiB/s write=4.1MiB/s
    /// link=3.9MiB/s fixed=0.20s rest=1.52s dirty_rate=30.1MiB/s est_downtime=0.562s (memory
    /// 0.412s + frozen 0.150s)`.
    pub fn log_line(&self) -> String {
        let mib = |b: f64| b / 1_048_576.0;
        let rate = self
            .dirty_rate
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}MiB/s", mib(r)));
        let write = self
            .write_rate
            .map_or_else(|| "-".to_string(), |r| format!("{:.1}MiB/s", mib(r)));
        let rest = self
            .rest_secs
            .map_or_else(|| "-".to_string(), |s| format!("{s:.2}s"));
        format!(
            "round={} throttle={} pages={} bw={:.1}MiB/s write={write} link={:.1}MiB/s fixed={:.2}s rest={rest} dirty_rate={rate} est_downtime={:.3}s (memory {:.3}s + frozen {:.3}s)",
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

/// The page rate the final dump is predicted to move at after `rounds` (bytes/s): see
/// [`RoundEstimate::link_bandwidth`]; 0 when nothing was sent yet.
fn page_rate(rounds: &[PreCopyRound]) -> f64 {
    let min_of = |large: bool| {
        rounds
            .iter()
            .filter(|r| !large || r.pages_written >= RATE_MIN_PAGES)
            .filter_map(PreCopyRound::write_rate)
            .reduce(f64::min)
    };
    min_of(true).or_else(|| min_of(false)).unwrap_or_else(|| {
        rounds
            .iter()
            .filter(|r| r.bytes > 0)
            .map(|r| r.bytes as f64 / r.secs.max(1e-6))
            .fold(0.0, f64::max)
    })
}

/// The figures of every round (pure).
pub fn estimates(rounds: &[PreCopyRound]) -> Vec<RoundEstimate> {
    let mut est_frozen_secs = 0.0f64;
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
            let link = page_rate(&rounds[..=i]);
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
            let rest_secs = r.rest_secs();
            est_frozen_secs = est_frozen_secs.max(rest_secs.unwrap_or(0.0));
            RoundEstimate {
                round: i as u32 + 1,
                throttle: r.throttle,
                pages_written: r.pages_written,
                bandwidth,
                write_rate: r.write_rate(),
                link_bandwidth: link,
                fixed_secs,
                dirty_rate,
                dirty_rate_throttle,
                unthrottled_rate,
                est_memory_secs,
                frozen_other_secs,
                rest_secs,
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
                // 256 MiB in 4 s: 0.3 s drained while frozen (0.5 s), 2 s written (128 MiB/s)
                pages_written: 65536,
                bytes: 256 << 20,
                secs: 4.0,
                started_secs: 0.0,
                throttle: l30,
                frozen_secs: 0.5,
                memory_frozen_secs: 0.3,
                memory_write_secs: 2.0,
            },
            PreCopyRound {
                // 100 MiB dirtied over the 5 s round 1 ran at 30 %: 20 MiB/s; written in 1.25 s
                // (80 MiB/s, the slower round)
                pages_written: 25600,
                bytes: 100 << 20,
                secs: 2.0,
                started_secs: 5.0,
                throttle: l50,
                frozen_secs: 0.4,
                memory_frozen_secs: 0.1,
                memory_write_secs: 1.25,
            },
        ];
        let e = estimates(&rounds);
        assert_eq!(e[0].dirty_rate, None);
        assert!((e[0].write_rate.unwrap() - 128.0 * MIB).abs() < 1.0);
        assert!((e[0].link_bandwidth - 128.0 * MIB).abs() < 1.0);
        assert!(
            (e[0].est_memory_secs - 2.0).abs() < 1e-9,
            "round 1: own pages / its write rate"
        );
        let rate = e[1].dirty_rate.unwrap();
        assert!((rate - 20.0 * MIB).abs() < 1.0, "{rate}");
        assert_eq!(e[1].dirty_rate_throttle, Some(l30));
        let r0 = e[1].unthrottled_rate.unwrap();
        assert!((r0 - 20.0 * MIB / 0.7).abs() < 1.0);
        // the page rate: the slower round's 80 MiB/s; at 50 % during round 2 (2 s)
        assert!((e[1].link_bandwidth - 80.0 * MIB).abs() < 1.0);
        assert!((e[1].fixed_secs - (2.0 - 100.0 / 80.0)).abs() < 1e-9);
        let want = r0 * 0.5 * 2.0 / (80.0 * MIB);
        assert!((e[1].est_memory_secs - want).abs() < 1e-9);
        // the rounds' time besides moving pages: 4 - 2 - 0.3 = 1.7 s, 2 - 1.25 - 0.1 = 0.65 s;
        // the fixed part is the slowest round's
        assert!((e[0].rest_secs.unwrap() - 1.7).abs() < 1e-9);
        assert!((e[1].rest_secs.unwrap() - 0.65).abs() < 1e-9);
        assert!((e[0].frozen_other_secs - 0.2).abs() < 1e-9);
        assert!((e[1].frozen_other_secs - 0.3).abs() < 1e-9);
        assert!((e[0].est_frozen_secs - 1.7).abs() < 1e-9);
        assert!((e[1].est_frozen_secs - 1.7).abs() < 1e-9);
        assert!((e[1].est_downtime_secs - (want + 1.7)).abs() < 1e-9);
        let line = e[1].log_line();
        assert!(
            line.starts_with(
                "round=2 throttle=50% pages=25600 bw=50.0MiB/s write=80.0MiB/s link=80.0MiB/s fixed=0.75s rest=0.65s dirty_rate=20.0MiB/s est_downtime="
            ),
            "{line}"
        );
        assert!(
            line.ends_with(&format!("(memory {want:.3}s + frozen 1.700s)")),
            "{line}"
        );
        assert!(e[0].log_line().contains("dirty_rate=-"));
    }

    fn round(pages: u64, secs: f64, frozen: f64, memdump: f64, memwrite: f64) -> PreCopyRound {
        PreCopyRound {
            pages_written: pages,
            bytes: pages * PAGE_SIZE,
            secs,
            started_secs: 0.0,
            throttle: ThrottleLevel::NONE,
            frozen_secs: frozen,
            memory_frozen_secs: memdump,
            memory_write_secs: memwrite,
        }
    }

    #[test]
    fn the_fixed_part_is_the_slowest_rounds_time_besides_moving_pages() {
        // no stats (0 frozen) counts as unknown; then 3 - 1 - 0.5 = 1.5 s; then a round whose
        // time besides pages (0.1 s) is less than its frozen part besides memory (0.4 s); the
        // fixed part never falls
        let rounds = [
            round(2048, 9.0, 0.0, 0.0, 0.0),
            round(2048, 3.0, 0.6, 0.5, 1.0),
            round(2048, 1.0, 0.6, 0.2, 0.7),
            round(2048, 0.5, 0.1, 0.05, 0.2),
        ];
        let e = estimates(&rounds);
        // pages written but no write time: the frozen part besides memory alone (0.2 s), not
        // the round's 9 s; no pages and no write time: the whole round's time is fixed
        let no_write = estimates(&[round(2048, 9.0, 0.3, 0.1, 0.0)]);
        assert!((no_write[0].rest_secs.unwrap() - 0.2).abs() < 1e-9);
        let no_pages = estimates(&[round(0, 2.0, 0.3, 0.0, 0.0)]);
        assert!((no_pages[0].rest_secs.unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(e[0].rest_secs, None);
        assert_eq!(e[0].est_frozen_secs, 0.0);
        assert!((e[1].est_frozen_secs - 1.5).abs() < 1e-9);
        assert!((e[2].rest_secs.unwrap() - 0.4).abs() < 1e-9, "{:?}", e[2]);
        assert!((e[2].est_frozen_secs - 1.5).abs() < 1e-9);
        assert!((e[3].est_frozen_secs - 1.5).abs() < 1e-9);
        for x in &e {
            assert_eq!(x.est_downtime_secs, x.est_memory_secs + x.est_frozen_secs);
        }
    }

    #[test]
    fn the_page_rate_is_the_slowest_large_rounds_write_rate() {
        // no stats: the best round's bandwidth (8 MiB in 2 s, then in 1 s)
        let no_stats = [
            round(2048, 2.0, 0.0, 0.0, 0.0),
            round(2048, 1.0, 0.0, 0.0, 0.0),
        ];
        let e = estimates(&no_stats);
        assert!((e[0].link_bandwidth - 4.0 * MIB).abs() < 1.0);
        assert!((e[1].link_bandwidth - 8.0 * MIB).abs() < 1.0);
        // 8 MiB written in 2 s (4 MiB/s), then 8 MiB in 1 s; a small round's 2 MiB in 2 s
        // (1 MiB/s, mostly latency) does not count while a large one exists
        let rounds = [
            round(2048, 3.0, 0.1, 0.05, 2.0),
            round(2048, 2.0, 0.1, 0.05, 1.0),
            round(512, 3.0, 0.1, 0.05, 2.0),
        ];
        let e = estimates(&rounds);
        assert!((e[0].link_bandwidth - 4.0 * MIB).abs() < 1.0);
        assert!((e[1].write_rate.unwrap() - 8.0 * MIB).abs() < 1.0);
        assert!((e[1].link_bandwidth - 4.0 * MIB).abs() < 1.0);
        assert!((e[2].write_rate.unwrap() - MIB).abs() < 1.0);
        assert!((e[2].link_bandwidth - 4.0 * MIB).abs() < 1.0);
        // only small rounds: the slowest of them
        let small = [
            round(512, 3.0, 0.1, 0.05, 1.0),
            round(256, 3.0, 0.1, 0.05, 2.0),
        ];
        let e = estimates(&small);
        assert!((e[1].link_bandwidth - 0.5 * MIB).abs() < 1.0);
    }
}
