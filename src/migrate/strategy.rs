//! Migration strategies and how `auto` picks one. When pre-copy's rounds stop is
//! [`super::converge`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::criu::Features;

/// How memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Freeze, move everything, restore.
    StopCopy,
    /// Pre-dump rounds with memory tracking while the process runs, then a final dump of what changed.
    PreCopy,
    /// Freeze, move everything but memory, restore at once; memory follows on demand (lazy pages).
    PostCopy,
    /// Pre-copy rounds, then post-copy for what is left.
    Hybrid,
    /// Choose from both nodes' features.
    Auto,
}

impl Strategy {
    /// The CLI / report name.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::StopCopy => "stop-copy",
            Strategy::PreCopy => "pre-copy",
            Strategy::PostCopy => "post-copy",
            Strategy::Hybrid => "hybrid",
            Strategy::Auto => "auto",
        }
    }

    /// Features a strategy needs, with what is missing; `None` when both nodes can run it.
    pub fn missing(self, src: Features, dst: Features) -> Option<String> {
        let mut missing = Vec::new();
        let tracking = matches!(self, Strategy::PreCopy | Strategy::Hybrid);
        let lazy = matches!(self, Strategy::PostCopy | Strategy::Hybrid);
        if tracking && !src.mem_track {
            missing.push("memory dirty tracking (soft-dirty) on the source kernel");
        }
        if lazy && !src.lazy_pages {
            missing.push("lazy pages (userfaultfd) on the source");
        }
        if lazy && !dst.lazy_pages {
            missing.push("lazy pages (userfaultfd) on the destination");
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// Resolves `auto` (other strategies stay as they are); returns the choice and why.
    pub fn resolve(self, src: Features, dst: Features) -> (Strategy, String) {
        if self != Strategy::Auto {
            return (self, "asked for on the command line".into());
        }
        let lazy = src.lazy_pages && dst.lazy_pages;
        match (src.mem_track, lazy) {
            (true, true) => (
                Strategy::Hybrid,
                "both nodes have memory tracking and lazy pages: pre-copy rounds, then post-copy".into(),
            ),
            (false, true) => (
                Strategy::PostCopy,
                "no memory tracking on the source (pre-copy impossible); lazy pages on both nodes: post-copy keeps downtime independent of memory size".into(),
            ),
            (true, false) => (
                Strategy::PreCopy,
                "memory tracking on the source, no lazy pages on both nodes: pre-copy".into(),
            ),
            (false, false) => (
                Strategy::StopCopy,
                "neither memory tracking nor lazy pages on both nodes: stop-and-copy".into(),
            ),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stop-copy" | "stop-and-copy" => Strategy::StopCopy,
            "pre-copy" => Strategy::PreCopy,
            "post-copy" => Strategy::PostCopy,
            "hybrid" => Strategy::Hybrid,
            "auto" => Strategy::Auto,
            other => {
                return Err(format!(
                "unknown strategy {other:?}: one of stop-copy, pre-copy, post-copy, hybrid, auto"
            ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Features = Features {
        mem_track: false,
        lazy_pages: false,
    };
    const LAZY: Features = Features {
        mem_track: false,
        lazy_pages: true,
    };
    const ALL: Features = Features {
        mem_track: true,
        lazy_pages: true,
    };

    #[rstest::rstest]
    #[case(LAZY, LAZY, Strategy::PostCopy)]
    #[case(ALL, ALL, Strategy::Hybrid)]
    #[case(ALL, NONE, Strategy::PreCopy)]
    #[case(NONE, NONE, Strategy::StopCopy)]
    fn auto_picks_from_features(#[case] s: Features, #[case] d: Features, #[case] want: Strategy) {
        let (got, why) = Strategy::Auto.resolve(s, d);
        assert_eq!(got, want, "{why}");
        assert!(Strategy::missing(got, s, d).is_none());
    }

    #[test]
    fn pre_copy_without_tracking_says_why() {
        let why = Strategy::PreCopy.missing(LAZY, LAZY).unwrap();
        assert!(why.contains("memory dirty tracking"), "{why}");
        assert!(Strategy::StopCopy.missing(NONE, NONE).is_none());
    }

    #[test]
    fn names_round_trip() {
        for s in [
            Strategy::StopCopy,
            Strategy::PreCopy,
            Strategy::PostCopy,
            Strategy::Hybrid,
            Strategy::Auto,
        ] {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
        }
        assert!("fast".parse::<Strategy>().is_err());
    }
}
