//! When pre-copy stops: P.Haul's rules (at most 8 rounds, a dirty set of 64 pages or less,
//! growth by more than 10 %), a plateau rule measured in the VMs (results/vm/), and a
//! downtime target as in cloud-hypervisor; a pure function of the rounds so far.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What happens when pre-copy never meets its downtime target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Give up: nothing is frozen, the process keeps running on the source.
    Cancel,
    /// Do the final dump anyway, with a downtime above the target.
    Proceed,
}

impl FromStr for OnTimeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cancel" => Ok(OnTimeout::Cancel),
            "proceed" => Ok(OnTimeout::Proceed),
            o => Err(format!("unknown --on-timeout {o:?}: cancel or proceed")),
        }
    }
}

/// When pre-copy stops (P.Haul's rules, plus a downtime target as in cloud-hypervisor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// At most this many pre-dump rounds.
    pub max_rounds: u32,
    /// A dirty set this small (pages) is small enough.
    pub small_pages: u64,
    /// Stop when a round wrote more than this many percent over the previous one.
    pub growth_percent: u64,
    /// Without a downtime target: stop when a round shrank the dirty set by less than this
    /// many percent (a plateau at the workload's own dirty rate: more rounds only freeze it
    /// again for nothing).
    pub min_shrink_percent: u64,
    /// Stop as soon as the estimated downtime is within this target (seconds).
    pub max_downtime_secs: Option<f64>,
    /// What to do at `max_rounds` when a target was set and not met.
    pub on_timeout: OnTimeout,
}

impl Default for Convergence {
    fn default() -> Self {
        Convergence {
            max_rounds: 8,
            small_pages: 64,
            growth_percent: 10,
            min_shrink_percent: 10,
            max_downtime_secs: None,
            on_timeout: OnTimeout::Proceed,
        }
    }
}

/// One finished round as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundFigures {
    /// Pages the round wrote (the dirty set since the previous round).
    pub pages_written: u64,
    /// Estimated downtime if the final dump came next: its pages / measured bandwidth (s).
    pub est_downtime_secs: f64,
}

/// The policy's verdict after a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Another round.
    Continue,
    /// Final dump now; why.
    FinalDump(String),
    /// Give up (the target cannot be met and `--on-timeout cancel`); why.
    Cancel(String),
}

/// Decides after each pre-dump round (a pure function of the rounds so far).
pub fn decide(policy: &Convergence, rounds: &[RoundFigures]) -> Decision {
    let Some(last) = rounds.last() else {
        return Decision::Continue;
    };
    let n = rounds.len();
    if let Some(target) = policy.max_downtime_secs {
        if last.est_downtime_secs <= target {
            return Decision::FinalDump(format!(
                "estimated downtime {:.3}s is within the {target:.3}s target",
                last.est_downtime_secs
            ));
        }
    }
    if last.pages_written <= policy.small_pages {
        return Decision::FinalDump(format!("only {} pages dirty", last.pages_written));
    }
    if n >= 2 {
        let prev = rounds[n - 2].pages_written;
        if last.pages_written * 100 > prev * (100 + policy.growth_percent) {
            return Decision::FinalDump(format!(
                "the dirty set grew from {prev} to {} pages: it no longer shrinks",
                last.pages_written
            ));
        }
        // With a target, a plateau above it is "not converged": rounds go on to the limit,
        // where --on-timeout decides.
        if policy.max_downtime_secs.is_none()
            && last.pages_written * 100 > prev * (100 - policy.min_shrink_percent.min(100))
        {
            return Decision::FinalDump(format!(
                "the dirty set went from {prev} to {} pages: it stopped shrinking",
                last.pages_written
            ));
        }
    }
    if n as u32 >= policy.max_rounds.max(1) {
        return match (policy.max_downtime_secs, policy.on_timeout) {
            (Some(t), OnTimeout::Cancel) => Decision::Cancel(format!(
                "after {n} rounds the estimated downtime is still {:.3}s, above the {t:.3}s target (--on-timeout cancel)",
                last.est_downtime_secs
            )),
            _ => Decision::FinalDump(format!("{n} rounds, the most allowed")),
        };
    }
    Decision::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pages: u64, est: f64) -> RoundFigures {
        RoundFigures {
            pages_written: pages,
            est_downtime_secs: est,
        }
    }

    #[test]
    fn convergence_policy() {
        let p = Convergence::default();
        assert_eq!(decide(&p, &[]), Decision::Continue);
        assert!(
            matches!(decide(&p, &[r(10, 0.0)]), Decision::FinalDump(_)),
            "converges at once"
        );
        assert_eq!(
            decide(&p, &[r(30000, 1.0), r(20000, 0.7)]),
            Decision::Continue,
            "still shrinking"
        );
        assert!(
            matches!(decide(&p, &[r(30000, 1.0), r(20000, 0.7), r(23000, 0.8)]), Decision::FinalDump(ref w) if w.contains("grew")),
            "a growing dirty set stops"
        );
        assert!(
            matches!(decide(&p, &[r(1000, 1.0); 8]), Decision::FinalDump(_)),
            "8 rounds at most"
        );
        // the VMs' 256 MiB toucher: 65596, 786, 92, 68, 65, ... pages
        let plateau = [
            r(65596, 9.6),
            r(786, 0.9),
            r(92, 0.6),
            r(68, 0.6),
            r(65, 0.6),
        ];
        assert_eq!(
            decide(&p, &plateau[..4]),
            Decision::Continue,
            "still shrinking fast"
        );
        assert!(
            matches!(decide(&p, &plateau), Decision::FinalDump(ref w) if w.contains("stopped shrinking")),
            "a plateau stops: {:?}",
            decide(&p, &plateau)
        );
    }

    #[test]
    fn downtime_target_and_timeout_strategies() {
        let target = Convergence {
            max_downtime_secs: Some(0.3),
            ..Default::default()
        };
        assert!(
            matches!(decide(&target, &[r(5000, 0.2)]), Decision::FinalDump(ref w) if w.contains("target"))
        );
        // a workload that never converges: dirtying as fast as it is copied
        let never = [r(9000, 1.0); 8];
        let cancel = Convergence {
            on_timeout: OnTimeout::Cancel,
            ..target
        };
        assert!(matches!(decide(&cancel, &never), Decision::Cancel(_)));
        let proceed = Convergence {
            on_timeout: OnTimeout::Proceed,
            ..target
        };
        assert!(matches!(decide(&proceed, &never), Decision::FinalDump(_)));
        assert_eq!("cancel".parse::<OnTimeout>(), Ok(OnTimeout::Cancel));
        assert!("maybe".parse::<OnTimeout>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn every_workload_stops_within_max_rounds(
            pages in proptest::collection::vec(0u64..1_000_000, 1..20),
            max_rounds in 1u32..12,
            cancel in proptest::bool::ANY,
        ) {
            let p = Convergence {
                max_rounds,
                max_downtime_secs: Some(0.001),
                on_timeout: if cancel { OnTimeout::Cancel } else { OnTimeout::Proceed },
                ..Default::default()
            };
            let mut seen = Vec::new();
            for &pg in &pages {
                seen.push(r(pg, pg as f64 / 1e4));
                match decide(&p, &seen) {
                    Decision::Continue => proptest::prop_assert!((seen.len() as u32) < max_rounds),
                    Decision::Cancel(_) => {
                        proptest::prop_assert!(cancel);
                        break;
                    }
                    Decision::FinalDump(_) => break,
                }
            }
        }
    }
}
