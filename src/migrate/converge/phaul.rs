//! The limits every pre-copy keeps ([`Convergence`]), and P.Haul's rules, which decide alone
//! when there is no downtime target: at most 8 rounds, a dirty set of 64 pages or less is
//! small enough, a dirty set that grew by more than 10 % stops the rounds, and (measured in
//! the VMs, results/vm/) one that shrank by less than 10 % has reached the workload's own
//! plateau, where more rounds only freeze it again for nothing.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What happens when pre-copy cannot meet its downtime target.
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

/// The limits of the rounds (`--max-rounds`, `--max-downtime`, `--on-timeout`, and P.Haul's
/// constants).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convergence {
    /// At most this many pre-dump rounds (P.Haul: 8).
    pub max_rounds: u32,
    /// A dirty set this small (pages) is small enough (P.Haul: 64).
    pub small_pages: u64,
    /// Without a target: stop when a round wrote more than this many percent over the
    /// previous one (P.Haul: 10).
    pub growth_percent: u64,
    /// Without a target: stop when a round shrank the dirty set by less than this many
    /// percent (10; the VMs' toucher plateaued at 65-68 pages a round).
    pub min_shrink_percent: u64,
    /// The downtime target (s): the rounds go on, throttling where allowed, until the
    /// estimated downtime is within it. `None`: P.Haul's rules alone, never a throttle.
    pub max_downtime_secs: Option<f64>,
    /// What to do when the target cannot be met (and post-copy cannot take the rest).
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

/// P.Haul's rules over the pages each round wrote: why the rounds stop now, or `None` to go
/// on (pure).
pub fn stop(c: &Convergence, pages: &[u64]) -> Option<String> {
    let &last = pages.last()?;
    let n = pages.len();
    if last <= c.small_pages {
        return Some(format!("only {last} pages dirty"));
    }
    if n >= 2 {
        let prev = pages[n - 2];
        if last * 100 > prev * (100 + c.growth_percent) {
            return Some(format!(
                "the dirty set grew from {prev} to {last} pages: it no longer shrinks"
            ));
        }
        if last * 100 > prev * (100 - c.min_shrink_percent.min(100)) {
            return Some(format!(
                "the dirty set went from {prev} to {last} pages: it stopped shrinking"
            ));
        }
    }
    if n as u32 >= c.max_rounds.max(1) {
        return Some(format!("{n} rounds, the most allowed"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phauls_rules() {
        let p = Convergence::default();
        assert_eq!(stop(&p, &[]), None);
        assert!(stop(&p, &[10]).is_some(), "converges at once");
        assert_eq!(stop(&p, &[30000, 20000]), None, "still shrinking");
        assert!(
            matches!(stop(&p, &[30000, 20000, 23000]), Some(ref w) if w.contains("grew")),
            "a growing dirty set stops"
        );
        let shrinking: Vec<u64> = (0..8).map(|i| 100_000 >> i).collect();
        assert!(
            matches!(stop(&p, &shrinking), Some(ref w) if w.contains("8 rounds")),
            "8 rounds at most"
        );
        assert_eq!(stop(&p, &shrinking[..7]), None);
        // the VMs' 256 MiB toucher: 65596, 786, 92, 68, 65, ... pages
        let plateau = [65596, 786, 92, 68, 65];
        assert_eq!(stop(&p, &plateau[..4]), None, "still shrinking fast");
        assert!(
            matches!(stop(&p, &plateau), Some(ref w) if w.contains("stopped shrinking")),
            "a plateau stops: {:?}",
            stop(&p, &plateau)
        );
    }

    #[test]
    fn on_timeout_parses() {
        assert_eq!("cancel".parse::<OnTimeout>(), Ok(OnTimeout::Cancel));
        assert_eq!("proceed".parse::<OnTimeout>(), Ok(OnTimeout::Proceed));
        assert!("maybe".parse::<OnTimeout>().is_err());
    }
}
