//! Figures of each round (for the migration report) and the rule that decides when the
//! rounds have converged enough to freeze the process for the final one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pb;

/// What one round sent, measured on the source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundStats {
    /// 1, 2, ...
    pub round: u32,
    /// Whether it ran while the process was frozen.
    pub final_round: bool,
    /// Entries found by the scan (all roots).
    pub entries_scanned: u64,
    /// Entries sent (created, updated or re-linked), files included.
    pub entries_sent: u64,
    /// Regular files sent (content or metadata).
    pub files_sent: u64,
    /// Entries removed on the destination.
    pub removed: u64,
    /// Segments sent as literal data (or made holes).
    pub segments_literal: u64,
    /// Segments sent as rsync deltas.
    pub segments_delta: u64,
    /// Literal file bytes sent.
    pub literal_bytes: u64,
    /// Delta bytes sent.
    pub delta_bytes: u64,
    /// Messages before the `RoundEnd`.
    pub messages: u64,
    /// Encoded bytes of every message, `RoundEnd` included (what the control channel carries,
    /// before framing).
    pub wire_bytes: u64,
    /// Time to scan the trees.
    #[serde(with = "secs")]
    pub scan_time: Duration,
    /// Time from the start of the round to its `RoundEnd` (scan included; the source's share
    /// of the round, not counting the destination's apply after the last message).
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// The destination's answer, once recorded with [`super::SyncSource::applied`].
    #[serde(skip)]
    pub applied: Option<pb::RoundApplied>,
}

impl RoundStats {
    /// Literal and delta bytes: the file payload of the round.
    pub fn payload_bytes(&self) -> u64 {
        self.literal_bytes + self.delta_bytes
    }

    /// One log line: `sync round=2 final=false files=12 payload=1.2MiB (literal .. delta ..) wire=.. scan=..s total=..s`.
    pub fn log_line(&self) -> String {
        format!(
            "sync round={} final={} scanned={} files={} entries={} removed={} payload={} (literal {} in {} segments, delta {} in {} segments) wire={} scan={:.3}s round={:.3}s{}",
            self.round,
            self.final_round,
            self.entries_scanned,
            self.files_sent,
            self.entries_sent,
            self.removed,
            mib(self.payload_bytes()),
            mib(self.literal_bytes),
            self.segments_literal,
            mib(self.delta_bytes),
            self.segments_delta,
            mib(self.wire_bytes),
            self.scan_time.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            match &self.applied {
                Some(a) => format!(
                    " dest: written={} apply={:.3}s",
                    mib(a.bytes_written),
                    a.apply_micros as f64 / 1e6
                ),
                None => String::new(),
            }
        )
    }
}

fn mib(b: u64) -> String {
    format!("{:.2}MiB", b as f64 / (1 << 20) as f64)
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// One round as the migration report gives it (`MigrationReport::sync`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRoundReport {
    /// 1, 2, ...
    pub round: u32,
    /// The round that ran while the process was frozen.
    pub final_round: bool,
    /// Regular files sent (content or metadata).
    pub files: u64,
    /// Entries sent (files, directories, links, FIFOs).
    pub entries: u64,
    /// Entries removed on the destination.
    pub removed: u64,
    /// Literal and delta bytes of file content sent.
    pub payload_bytes: u64,
    /// Of which literal bytes.
    pub literal_bytes: u64,
    /// Of which rsync delta bytes.
    pub delta_bytes: u64,
    /// Encoded bytes of the round's messages (what the control channel carried, before
    /// framing).
    pub wire_bytes: u64,
    /// Bytes the destination wrote into files.
    pub written_bytes: u64,
    /// Seconds the source spent scanning the trees.
    pub scan_secs: f64,
    /// Seconds from the start of the round to the destination's answer.
    pub secs: f64,
    /// Seconds the destination spent applying it (from `RoundBegin` to `RoundEnd`).
    pub apply_secs: f64,
    /// The final round: seconds the destination spent putting the copy in place after it.
    #[serde(default)]
    pub install_secs: f64,
}

impl SyncRoundReport {
    /// The report of a completed round (with the destination's answer recorded).
    pub fn from_stats(st: &RoundStats) -> SyncRoundReport {
        let a = st.applied.unwrap_or_default();
        SyncRoundReport {
            round: st.round,
            final_round: st.final_round,
            files: st.files_sent,
            entries: st.entries_sent,
            removed: st.removed,
            payload_bytes: st.payload_bytes(),
            literal_bytes: st.literal_bytes,
            delta_bytes: st.delta_bytes,
            wire_bytes: st.wire_bytes,
            written_bytes: a.bytes_written,
            scan_secs: st.scan_time.as_secs_f64(),
            secs: st.elapsed.as_secs_f64(),
            apply_secs: a.apply_micros as f64 / 1e6,
            install_secs: a.install_micros as f64 / 1e6,
        }
    }
}

/// The file sync of one migration (`haul pid --sync`), for the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The synced trees (canonical paths, the same on both nodes).
    pub roots: Vec<String>,
    /// Bytes of data in the trees when the sync began.
    pub data_bytes: u64,
    /// Entries in the trees when the sync began.
    pub entries: u64,
    /// Every round, the final one last.
    pub rounds: Vec<SyncRoundReport>,
    /// Why the rounds while the process ran stopped.
    pub decision: String,
    /// Seconds of the final round (frozen), from its scan to the destination's answer, which
    /// comes once the copy is in place: the sync's part of the downtime.
    pub final_round_secs: f64,
    /// Seconds from the freeze to the start of the final round (the dump's own work).
    pub frozen_before_final_secs: f64,
    /// The final round's share of the downtime (0..1), once the process runs there.
    pub final_share_of_downtime: Option<f64>,
}

impl SyncReport {
    /// Payload bytes of every round.
    pub fn payload_bytes(&self) -> u64 {
        self.rounds.iter().map(|r| r.payload_bytes).sum()
    }

    /// Summary lines for `haul pid`'s output.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "file sync of {}: {} round(s), {:.1} MiB in all ({})\n",
            self.roots.join(", "),
            self.rounds.len(),
            self.payload_bytes() as f64 / (1 << 20) as f64,
            self.decision
        );
        for r in &self.rounds {
            s.push_str(&format!(
                "  sync round {}{}: {} files, {:.2} MiB ({:.2} literal, {:.2} delta), {:.3} sec\n",
                r.round,
                if r.final_round { " (frozen)" } else { "" },
                r.files,
                r.payload_bytes as f64 / (1 << 20) as f64,
                r.literal_bytes as f64 / (1 << 20) as f64,
                r.delta_bytes as f64 / (1 << 20) as f64,
                r.secs
            ));
        }
        if let Some(share) = self.final_share_of_downtime {
            let install = self.rounds.last().map_or(0.0, |r| r.install_secs);
            s.push_str(&format!(
                "final sync {:.3} sec frozen (putting the copy in place {:.3} sec of it), {:.0} % of the downtime\n",
                self.final_round_secs,
                install,
                share * 100.0
            ));
        }
        s
    }
}

/// When to stop the rounds that run while the process does, and freeze it for the final one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundPolicy {
    /// Rounds before the final one, at most (default 8).
    pub max_rounds: u32,
    /// Freeze once a round's payload is at most this many bytes (default 4 MiB: at the
    /// destination's disk speed that is a few tens of milliseconds of frozen copying).
    pub target_bytes: u64,
    /// Freeze once a round's payload shrank by less than this percentage against the round
    /// before (default 10): the process dirties files about as fast as a round moves them,
    /// and more rounds only cost time.
    pub min_shrink_percent: u64,
}

impl Default for RoundPolicy {
    fn default() -> Self {
        RoundPolicy {
            max_rounds: 8,
            target_bytes: 4 << 20,
            min_shrink_percent: 10,
        }
    }
}

/// What to do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run another round while the process runs.
    AnotherRound,
    /// Freeze the process and run the final round; the text says which rule decided.
    Freeze(String),
}

impl RoundPolicy {
    /// Decides from the rounds run so far (at least one round always runs first).
    pub fn decide(&self, history: &[RoundStats]) -> Decision {
        let Some(last) = history.last() else {
            return Decision::AnotherRound;
        };
        let payload = last.payload_bytes();
        if payload <= self.target_bytes {
            return Decision::Freeze(format!(
                "round {} moved {payload} bytes, within the target of {}",
                last.round, self.target_bytes
            ));
        }
        if history.len() as u32 >= self.max_rounds {
            return Decision::Freeze(format!("{} rounds run, the most allowed", history.len()));
        }
        if history.len() >= 2 {
            let before = history[history.len() - 2].payload_bytes();
            if payload * 100 > before * (100 - self.min_shrink_percent.min(100)) {
                return Decision::Freeze(format!(
                    "round {} moved {payload} bytes against {before} before: shrinking by less than {}%",
                    last.round, self.min_shrink_percent
                ));
            }
        }
        Decision::AnotherRound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(round: u32, literal: u64) -> RoundStats {
        RoundStats {
            round,
            literal_bytes: literal,
            ..Default::default()
        }
    }

    #[test]
    fn policy() {
        let p = RoundPolicy::default();
        assert_eq!(p.decide(&[]), Decision::AnotherRound);
        assert_eq!(p.decide(&[r(1, 200 << 20)]), Decision::AnotherRound);
        assert!(matches!(
            p.decide(&[r(1, 200 << 20), r(2, 1 << 20)]),
            Decision::Freeze(_)
        ));
        assert!(matches!(
            p.decide(&[r(1, 200 << 20), r(2, 50 << 20), r(3, 48 << 20)]),
            Decision::Freeze(s) if s.contains("shrinking")
        ));
        let p3 = RoundPolicy { max_rounds: 3, ..p };
        let three = [r(1, 200 << 20), r(2, 100 << 20), r(3, 50 << 20)];
        assert_eq!(p.decide(&three), Decision::AnotherRound);
        assert!(matches!(p3.decide(&three), Decision::Freeze(s) if s.contains("3 rounds")));
        let line = r(2, 3 << 20).log_line();
        assert!(line.starts_with("sync round=2 final=false"), "{line}");
        assert!(line.contains("payload=3.00MiB"), "{line}");
    }
}
