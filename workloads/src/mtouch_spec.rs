//! What the memory toucher is asked to do: `SIZE:PRE:PAUSE`, the touch pattern, the dirty rate.
//!
//! `SIZE:PRE:PAUSE` keeps P.Haul's meaning: map SIZE bytes of anonymous memory, pre-touch
//! PRE/4096 random pages (every page in order when PRE >= SIZE), then touch one page every
//! PAUSE microseconds. Sizes take `k`, `m`, `g` suffixes (powers of 1024) and a `0x` prefix.
//! A [`Rate`] replaces PAUSE when given (`--rate`), and a [`Pattern`] chooses the pages.

use std::fmt;
use std::str::FromStr;

/// The page size the toucher works in (one shadow byte per page).
pub const PAGE_SIZE: u64 = 4096;

/// A malformed toucher argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A size is not `<number>[k|m|g]`.
    #[error("bad size {text:?}: expected a number with an optional k, m or g suffix")]
    Size {
        /// The text.
        text: String,
    },
    /// `SIZE:PRE:PAUSE` is malformed.
    #[error("bad SIZE:PRE:PAUSE {text:?}: {why} (e.g. 256m:64m:100000)")]
    Spec {
        /// The text.
        text: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The pattern is not `random`, `sequential` or `hot:PERCENT`.
    #[error("bad pattern {text:?}: expected random, sequential or hot:PERCENT (1-100)")]
    Pattern {
        /// The text.
        text: String,
    },
    /// The rate is not a size per second or `max`.
    #[error("bad rate {text:?}: expected bytes per second (k/m/g suffixes) or max")]
    Rate {
        /// The text.
        text: String,
    },
}

/// Parse `<number>[k|m|g]` (decimal, or hexadecimal with `0x`).
pub fn parse_size(text: &str) -> Result<u64, SpecError> {
    let bad = || SpecError::Size {
        text: text.to_string(),
    };
    let (digits, shift) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 10),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 20),
        Some(b'g' | b'G') => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).map_err(|_| bad())?
    } else {
        digits.parse::<u64>().map_err(|_| bad())?
    };
    value.checked_mul(1 << shift).ok_or_else(bad)
}

/// How the memory is pre-touched before the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTouch {
    /// Every page, in order (PRE >= SIZE).
    All,
    /// This many touches of random pages (PRE / 4096).
    Random(u64),
}

/// `SIZE:PRE:PAUSE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TouchSpec {
    /// Bytes of anonymous memory to map.
    pub size: u64,
    /// Bytes to pre-touch.
    pub pre: u64,
    /// Microseconds between two touches.
    pub pause_us: u64,
}

impl TouchSpec {
    /// Pages mapped (SIZE rounded up to a page).
    pub fn pages(&self) -> u64 {
        self.size.div_ceil(PAGE_SIZE)
    }

    /// The pre-touch this spec asks for.
    pub fn pre_touch(&self) -> PreTouch {
        if self.pre >= self.size {
            PreTouch::All
        } else {
            PreTouch::Random(self.pre / PAGE_SIZE)
        }
    }
}

impl FromStr for TouchSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let bad = |why| SpecError::Spec {
            text: text.to_string(),
            why,
        };
        let mut parts = text.split(':');
        let (Some(size), Some(pre), Some(pause), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected three fields separated by ':'"));
        };
        let size = parse_size(size)?;
        let pre = parse_size(pre)?;
        let pause_us = pause
            .parse::<u64>()
            .map_err(|_| bad("PAUSE must be a number of microseconds"))?;
        if size < PAGE_SIZE {
            return Err(bad("SIZE must be at least one page (4096)"));
        }
        Ok(TouchSpec {
            size,
            pre,
            pause_us,
        })
    }
}

/// Which pages the loop touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// A uniformly random page each time (P.Haul's mtouch).
    Random,
    /// Page after page, wrapping around.
    Sequential,
    /// Random pages within the first PERCENT of the mapping (a hot working set; the rest
    /// stays clean after the pre-touch, which pre-copy should converge on).
    Hot {
        /// Size of the hot set in percent of the mapping, 1 to 100.
        percent: u8,
    },
}

impl Pattern {
    /// How many pages the loop may touch in a mapping of `pages` pages.
    pub fn span(&self, pages: u64) -> u64 {
        match self {
            Pattern::Hot { percent } => (pages * u64::from(*percent) / 100).max(1),
            _ => pages,
        }
    }
}

impl FromStr for Pattern {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        match text {
            "random" => Ok(Pattern::Random),
            "sequential" => Ok(Pattern::Sequential),
            _ => {
                let percent = text
                    .strip_prefix("hot:")
                    .and_then(|p| p.trim_end_matches('%').parse::<u8>().ok())
                    .filter(|p| (1..=100).contains(p));
                percent
                    .map(|percent| Pattern::Hot { percent })
                    .ok_or_else(|| SpecError::Pattern {
                        text: text.to_string(),
                    })
            }
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Random => f.write_str("random"),
            Pattern::Sequential => f.write_str("sequential"),
            Pattern::Hot { percent } => write!(f, "hot:{percent}"),
        }
    }
}

/// How fast the loop dirties memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// One page, then sleep this many microseconds (PAUSE; P.Haul's behaviour).
    Pause {
        /// Microseconds between touches.
        micros: u64,
    },
    /// Paced to this many dirtied bytes per second (pages per second = bytes / 4096), touched
    /// in batches when the pace is faster than the clock's resolution.
    BytesPerSec(u64),
    /// As fast as the CPU and memory allow.
    Max,
}

impl Rate {
    /// Pages per second for [`Rate::BytesPerSec`] (at least one).
    pub fn pages_per_sec(bytes: u64) -> u64 {
        (bytes / PAGE_SIZE).max(1)
    }
}

impl FromStr for Rate {
    type Err = SpecError;

    /// `max`, or bytes per second with k/m/g suffixes (a trailing `/s` is allowed).
    fn from_str(text: &str) -> Result<Self, SpecError> {
        if text == "max" {
            return Ok(Rate::Max);
        }
        let bytes = parse_size(text.trim_end_matches("/s")).map_err(|_| SpecError::Rate {
            text: text.to_string(),
        })?;
        if bytes == 0 {
            return Err(SpecError::Rate {
                text: text.to_string(),
            });
        }
        Ok(Rate::BytesPerSec(bytes))
    }
}

/// A small fast generator (xorshift64*) for page numbers and touch values.
#[derive(Debug, Clone)]
pub struct TouchRng(u64);

impl TouchRng {
    /// Seeded with `seed` (any value; zero is replaced).
    pub fn new(seed: u64) -> Self {
        TouchRng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }

    /// A non-zero byte (so that a page that lost its contents reads as a mismatch).
    pub fn nonzero_byte(&mut self) -> u8 {
        1 + (self.below(255) as u8)
    }
}

/// Chooses the next page according to a [`Pattern`].
#[derive(Debug, Clone)]
pub struct PageChooser {
    pattern: Pattern,
    span: u64,
    next_seq: u64,
}

impl PageChooser {
    /// For a mapping of `pages` pages.
    pub fn new(pattern: Pattern, pages: u64) -> Self {
        PageChooser {
            pattern,
            span: pattern.span(pages).min(pages).max(1),
            next_seq: 0,
        }
    }

    /// The next page to touch.
    pub fn next(&mut self, rng: &mut TouchRng) -> u64 {
        match self.pattern {
            Pattern::Sequential => {
                let p = self.next_seq;
                self.next_seq = (p + 1) % self.span;
                p
            }
            Pattern::Random | Pattern::Hot { .. } => rng.below(self.span),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("16k").unwrap(), 16 << 10);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("0x10").unwrap(), 16);
        assert!(parse_size("").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("12q").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn howto_spec() {
        let s: TouchSpec = "256m:64m:100000".parse().unwrap();
        assert_eq!(s.size, 256 << 20);
        assert_eq!(s.pages(), 65536);
        assert_eq!(s.pre_touch(), PreTouch::Random(16384));
        assert_eq!(s.pause_us, 100000);
        let all: TouchSpec = "16m:16m:1000".parse().unwrap();
        assert_eq!(all.pre_touch(), PreTouch::All);
        let odd: TouchSpec = "5000:0:0".parse().unwrap();
        assert_eq!(odd.pages(), 2);
        assert_eq!(odd.pre_touch(), PreTouch::Random(0));
        for bad in ["256m:64m", "1k:0:0", "256m:64m:x", "256m:64m:1:2", "a:1:1"] {
            assert!(bad.parse::<TouchSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_and_rates() {
        assert_eq!("random".parse::<Pattern>().unwrap(), Pattern::Random);
        assert_eq!(
            "hot:10".parse::<Pattern>().unwrap(),
            Pattern::Hot { percent: 10 }
        );
        assert_eq!(
            "hot:10%".parse::<Pattern>().unwrap(),
            Pattern::Hot { percent: 10 }
        );
        assert!("hot:0".parse::<Pattern>().is_err());
        assert!("hot:101".parse::<Pattern>().is_err());
        assert!("zigzag".parse::<Pattern>().is_err());
        assert_eq!(Pattern::Hot { percent: 10 }.to_string(), "hot:10");
        assert_eq!(Pattern::Hot { percent: 1 }.span(50), 1);
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert_eq!("64m".parse::<Rate>().unwrap(), Rate::BytesPerSec(64 << 20));
        assert_eq!("1g/s".parse::<Rate>().unwrap(), Rate::BytesPerSec(1 << 30));
        assert!("0".parse::<Rate>().is_err());
        assert_eq!(Rate::pages_per_sec(100), 1);
    }

    #[test]
    fn choosers_stay_in_range() {
        let mut rng = TouchRng::new(7);
        let mut seq = PageChooser::new(Pattern::Sequential, 3);
        let got: Vec<u64> = (0..5).map(|_| seq.next(&mut rng)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1]);
        let mut hot = PageChooser::new(Pattern::Hot { percent: 10 }, 1000);
        assert!((0..10_000).all(|_| hot.next(&mut rng) < 100));
        let mut rnd = PageChooser::new(Pattern::Random, 1000);
        let mut seen = [false; 1000];
        for _ in 0..100_000 {
            seen[rnd.next(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert!((0..10_000).all(|_| rng.nonzero_byte() != 0));
    }
}
