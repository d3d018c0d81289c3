//! How hard pre-copy may slow the tree: the throttle level (QEMU's `cpu-throttle-percentage`),
//! the `--throttle` setting that caps it, and how the level climbs from round to round.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The highest throttle level (QEMU's `max-cpu-throttle` default): 1 % of the CPU time left.
pub const MAX_PERCENT: u8 = 99;

/// A throttle level: the percentage of the tree's CPU time taken away, 0 (none) to 99.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub struct ThrottleLevel(u8);

impl ThrottleLevel {
    /// Unthrottled.
    pub const NONE: ThrottleLevel = ThrottleLevel(0);
    /// The highest level, [`MAX_PERCENT`].
    pub const MAX: ThrottleLevel = ThrottleLevel(MAX_PERCENT);

    /// `percent` of the CPU time taken away; `None` above [`MAX_PERCENT`].
    pub const fn new(percent: u8) -> Option<ThrottleLevel> {
        if percent <= MAX_PERCENT {
            Some(ThrottleLevel(percent))
        } else {
            None
        }
    }

    /// `percent`, clamped to [`MAX_PERCENT`].
    pub fn saturating(percent: u32) -> ThrottleLevel {
        ThrottleLevel(percent.min(u32::from(MAX_PERCENT)) as u8)
    }

    /// The level in percent.
    pub const fn percent(self) -> u8 {
        self.0
    }

    /// Whether this is no throttle at all.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The share of CPU time the tree keeps, `1 - percent / 100` (0.01 to 1).
    pub fn remaining(self) -> f64 {
        1.0 - f64::from(self.0) / 100.0
    }
}

impl TryFrom<u8> for ThrottleLevel {
    type Error = String;
    fn try_from(p: u8) -> Result<Self, String> {
        ThrottleLevel::new(p).ok_or_else(|| format!("throttle level {p}% is above {MAX_PERCENT}%"))
    }
}

impl From<ThrottleLevel> for u8 {
    fn from(l: ThrottleLevel) -> u8 {
        l.0
    }
}

impl fmt::Display for ThrottleLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// `--throttle off|auto|MAX%`: whether pre-copy may slow the tree, and how far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThrottleSetting {
    /// Never throttle.
    Off,
    /// Throttle when a downtime target needs it, up to [`ThrottleLevel::MAX`] (QEMU's default).
    #[default]
    Auto,
    /// Throttle when a downtime target needs it, up to this level.
    UpTo(ThrottleLevel),
}

impl ThrottleSetting {
    /// The highest level allowed; `None` when throttling is off.
    pub fn cap(self) -> Option<ThrottleLevel> {
        match self {
            ThrottleSetting::Off => None,
            ThrottleSetting::Auto => Some(ThrottleLevel::MAX),
            ThrottleSetting::UpTo(l) => Some(l),
        }
    }
}

impl fmt::Display for ThrottleSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleSetting::Off => f.write_str("off"),
            ThrottleSetting::Auto => f.write_str("auto"),
            ThrottleSetting::UpTo(l) => write!(f, "{l}"),
        }
    }
}

impl FromStr for ThrottleSetting {
    type Err = String;
    /// `off`, `auto`, or a cap in percent, `1%` to `99%` (the `%` is optional).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(ThrottleSetting::Off),
            "auto" => Ok(ThrottleSetting::Auto),
            _ => s
                .strip_suffix('%')
                .unwrap_or(s)
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=MAX_PERCENT).contains(p))
                .and_then(ThrottleLevel::new)
                .map(ThrottleSetting::UpTo)
                .ok_or_else(|| {
                    format!(
                        "bad --throttle {s:?}: off, auto, or the highest level in percent (1% to {MAX_PERCENT}%)"
                    )
                }),
        }
    }
}

/// How the level climbs (QEMU's auto-converge: `cpu-throttle-initial` 20,
/// `cpu-throttle-increment` 10, `throttle-trigger-threshold` 50).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSteps {
    /// The first level.
    pub initial: ThrottleLevel,
    /// Percentage points added per round while the target is out of reach.
    pub increment: u8,
    /// Throttle when the dirty rate is above this share of the measured bandwidth (the dirty
    /// set then shrinks by less than half per round).
    pub trigger_ratio: f64,
    /// Jump straight to the level the measured rates say reaches the target in the next round
    /// when that is above the next step (QEMU steps only; rounds are dearer here: each one
    /// freezes the process).
    pub skip_ahead: bool,
}

impl Default for ThrottleSteps {
    fn default() -> Self {
        ThrottleSteps {
            initial: ThrottleLevel(20),
            increment: 10,
            trigger_ratio: 0.5,
            skip_ahead: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!("off".parse(), Ok(ThrottleSetting::Off));
        assert_eq!("auto".parse(), Ok(ThrottleSetting::Auto));
        assert_eq!(
            "60%".parse(),
            Ok(ThrottleSetting::UpTo(ThrottleLevel::new(60).unwrap()))
        );
        assert_eq!(
            "60".parse(),
            Ok(ThrottleSetting::UpTo(ThrottleLevel::new(60).unwrap()))
        );
        for bad in ["0%", "100%", "-5", "fast", "", "50%%"] {
            let err = bad.parse::<ThrottleSetting>().unwrap_err();
            assert!(err.contains("--throttle"), "{bad}: {err}");
        }
        for s in ["off", "auto", "75%"] {
            assert_eq!(s.parse::<ThrottleSetting>().unwrap().to_string(), s);
        }
        assert_eq!(ThrottleSetting::Auto.cap(), Some(ThrottleLevel::MAX));
        assert_eq!(ThrottleSetting::Off.cap(), None);
        assert_eq!(ThrottleSetting::default(), ThrottleSetting::Auto);
        assert!(ThrottleLevel::new(100).is_none());
        assert_eq!(ThrottleLevel::saturating(250), ThrottleLevel::MAX);
        assert!((ThrottleLevel::new(30).unwrap().remaining() - 0.7).abs() < 1e-12);
        let json = serde_json::to_string(&ThrottleLevel::new(40).unwrap()).unwrap();
        assert_eq!(json, "40");
        assert!(serde_json::from_str::<ThrottleLevel>("120").is_err());
    }
}
