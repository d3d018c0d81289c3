//! Statistics over repetitions: medians, quantiles, spread, and a permutation test on the
//! difference of two medians. Pure functions on `f64` samples; NaN values are ignored
//! everywhere (a figure a run did not produce).
//!
//! The permutation test answers "could these two sets of repetitions come from the same
//! distribution?": it pools both samples, splits them again in every possible way (or in
//! many random ways when there are too many), and counts how often the split's difference of
//! medians is at least as large as the observed one. Few repetitions cannot reach a small
//! p-value however large the change ([`min_p_value`]: 0.2 for 3 against 3, 0.03 for 5
//! against 5); the compare mode says so instead of guessing.

/// Summary of one figure over repetitions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Number of (non-NaN) values.
    pub n: usize,
    /// The median.
    pub median: f64,
    /// First quartile (25 %).
    pub q1: f64,
    /// Third quartile (75 %).
    pub q3: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// The interquartile range `q3 - q1`.
    pub fn iqr(&self) -> f64 {
        self.q3 - self.q1
    }
}

/// The values, without NaN, sorted ascending.
pub fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Quantile `q` (0..=1) of sorted values, linearly interpolated between order statistics
/// (R's type 7, numpy's default). `None` for no values.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Quantile `q` (0..=1) of the values (see [`quantile_sorted`]).
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    quantile_sorted(&sorted(xs), q)
}

/// The median of the values (the mean of the two middle ones for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    quantile(xs, 0.5)
}

/// Median, quartiles, extremes and mean; `None` for no values.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let s = sorted(xs);
    Some(Summary {
        n: s.len(),
        median: quantile_sorted(&s, 0.5)?,
        q1: quantile_sorted(&s, 0.25)?,
        q3: quantile_sorted(&s, 0.75)?,
        min: *s.first()?,
        max: *s.last()?,
        mean: s.iter().sum::<f64>() / s.len() as f64,
    })
}

/// `a / b`, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// `C(n, k)` as a float (exact for the sizes a harness sees; saturates to infinity).
pub fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// About the smallest two-sided p-value the permutation test on the difference of medians
/// gives with `n` and `m` values: its p-value for two completely separated, evenly spread
/// samples. A median ignores the values beyond it, so several splits are as extreme as the
/// observed one: 0.2 for 3 against 3 (a test on means would reach 0.1), 0.057 for 4 against
/// 4, 0.048 for 5 against 5, 0.013 for 6 against 6.
pub fn min_p_value(n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let b: Vec<f64> = (n..n + m).map(|i| i as f64).collect();
    test_medians(&a, &b, PermutationOptions::default()).1
}

/// How a permutation test is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermutationOptions {
    /// Enumerate every split when there are at most this many; sample otherwise.
    pub max_exact: u64,
    /// Random splits when sampling.
    pub resamples: u32,
    /// Seed of the random splits (results are reproducible).
    pub seed: u64,
}

impl Default for PermutationOptions {
    fn default() -> Self {
        PermutationOptions {
            max_exact: 200_000,
            resamples: 20_000,
            seed: 0x5eed_4a75,
        }
    }
}

/// The outcome of a permutation test.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PermutationResult {
    /// `median(b) - median(a)`.
    pub difference: f64,
    /// Two-sided p-value: the share of splits whose |difference of medians| is at least the
    /// observed one (with the observed split counted, so never 0).
    pub p_value: f64,
    /// Whether every split was enumerated (else `resamples` random ones).
    pub exact: bool,
    /// The smallest p-value these sample sizes allow ([`min_p_value`]).
    pub min_p: f64,
}

/// SplitMix64: a small, seedable generator, good enough to draw permutations.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// Advance `comb` (a strictly increasing k-subset of `0..n`) to the next one in lexicographic
/// order; false after the last.
fn next_combination(comb: &mut [usize], n: usize) -> bool {
    let k = comb.len();
    let mut i = k;
    while i > 0 {
        i -= 1;
        if comb[i] < i + n - k {
            comb[i] += 1;
            for j in i + 1..k {
                comb[j] = comb[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

fn median_of(pool: &[f64], idx: impl Iterator<Item = usize>) -> f64 {
    let v: Vec<f64> = idx.map(|i| pool[i]).collect();
    median(&v).unwrap_or(f64::NAN)
}

/// Two-sided permutation test of `median(b) - median(a)`. `None` when either sample has no
/// values.
pub fn permutation_test(
    a: &[f64],
    b: &[f64],
    opts: PermutationOptions,
) -> Option<PermutationResult> {
    let a = sorted(a);
    let b = sorted(b);
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (difference, p_value, exact) = test_medians(&a, &b, opts);
    Some(PermutationResult {
        difference,
        p_value,
        exact,
        min_p: min_p_value(a.len(), b.len()),
    })
}

/// The test on two non-empty samples without NaN: (observed difference, p, exact).
fn test_medians(a: &[f64], b: &[f64], opts: PermutationOptions) -> (f64, f64, bool) {
    let observed = median(b).unwrap_or(f64::NAN) - median(a).unwrap_or(f64::NAN);
    let pool: Vec<f64> = a.iter().chain(b.iter()).copied().collect();
    let (n, k) = (pool.len(), a.len());
    // Relative tolerance, so that a split equal to the observed one counts despite rounding.
    let scale = pool.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    let threshold = observed.abs() - 1e-9 * scale;
    let total = binomial(n, k);
    let (mut extreme, mut count) = (0u64, 0u64);
    let exact = total <= opts.max_exact as f64;
    if exact {
        // Every k-subset of 0..n as the first group, in lexicographic order.
        let mut comb: Vec<usize> = (0..k).collect();
        let mut in_a = vec![false; n];
        loop {
            in_a.iter_mut().for_each(|x| *x = false);
            comb.iter().for_each(|&i| in_a[i] = true);
            let ma = median_of(&pool, comb.iter().copied());
            let mb = median_of(&pool, (0..n).filter(|&i| !in_a[i]));
            count += 1;
            if (mb - ma).abs() >= threshold {
                extreme += 1;
            }
            if !next_combination(&mut comb, n) {
                break;
            }
        }
    } else {
        let mut rng = SplitMix64::new(opts.seed);
        let mut idx: Vec<usize> = (0..n).collect();
        extreme = 1; // the observed split
        count = 1;
        for _ in 0..opts.resamples {
            // partial Fisher-Yates: the first k positions are a random k-subset
            for i in 0..k {
                let j = i + rng.below(n - i);
                idx.swap(i, j);
            }
            let ma = median_of(&pool, idx[..k].iter().copied());
            let mb = median_of(&pool, idx[k..].iter().copied());
            count += 1;
            if (mb - ma).abs() >= threshold {
                extreme += 1;
            }
        }
    }
    (observed, extreme as f64 / count as f64, exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn medians_and_quartiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0, 3.0]), Some(2.0));
        let s = summarize(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((s.q1, s.median, s.q3), (2.0, 3.0, 4.0));
        assert_eq!((s.min, s.max, s.n), (1.0, 5.0, 5));
        assert_eq!(s.iqr(), 2.0);
        assert_eq!(s.mean, 3.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), Some(2.5));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }

    #[test]
    fn binomials_and_min_p() {
        assert_eq!(binomial(6, 3), 20.0);
        assert_eq!(binomial(5, 0), 1.0);
        assert_eq!(binomial(3, 5), 0.0);
        assert!((min_p_value(3, 3) - 0.2).abs() < 1e-12);
        assert!(min_p_value(5, 5) < 0.05, "{}", min_p_value(5, 5));
        assert_eq!(min_p_value(0, 3), 1.0);
    }

    #[test]
    fn separated_samples_reach_the_smallest_p() {
        let r = permutation_test(&[1.0, 1.1, 0.9], &[2.0, 2.1, 1.9], Default::default()).unwrap();
        assert!(r.exact);
        assert!((r.difference - 1.0).abs() < 1e-12);
        assert!((r.p_value - 0.2).abs() < 1e-12, "{r:?}");
        assert_eq!(r.p_value, r.min_p);
        let r = permutation_test(
            &[1.0, 1.1, 0.9, 1.05, 0.95],
            &[2.0, 2.1, 1.9, 2.05, 1.95],
            Default::default(),
        )
        .unwrap();
        assert!(r.p_value < 0.05, "{r:?}");
    }

    #[test]
    fn sampled_test_agrees_with_exact() {
        let a: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let b: Vec<f64> = (0..8).map(|i| i as f64 + 3.0).collect();
        let exact = permutation_test(&a, &b, Default::default()).unwrap();
        let sampled = permutation_test(
            &a,
            &b,
            PermutationOptions {
                max_exact: 10,
                resamples: 20_000,
                seed: 7,
            },
        )
        .unwrap();
        assert!(exact.exact && !sampled.exact);
        assert!(
            (exact.p_value - sampled.p_value).abs() < 0.02,
            "{exact:?} {sampled:?}"
        );
    }

    #[test]
    fn empty_samples_have_no_test() {
        assert!(permutation_test(&[], &[1.0], Default::default()).is_none());
        assert!(permutation_test(&[f64::NAN], &[1.0], Default::default()).is_none());
    }

    fn sample() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(-1e6f64..1e6, 1..8)
    }

    proptest! {
        #[test]
        fn median_lies_between_extremes_and_quartiles(xs in sample()) {
            let s = summarize(&xs).unwrap();
            prop_assert!(s.min <= s.q1 && s.q1 <= s.median && s.median <= s.q3 && s.q3 <= s.max);
            prop_assert!(s.iqr() >= 0.0);
            prop_assert!(s.min <= s.mean + 1e-6 && s.mean <= s.max + 1e-6);
        }

        #[test]
        fn median_ignores_order(mut xs in sample(), seed in any::<u64>()) {
            let m = median(&xs).unwrap();
            let mut rng = SplitMix64::new(seed);
            for i in (1..xs.len()).rev() {
                let j = rng.below(i + 1);
                xs.swap(i, j);
            }
            prop_assert_eq!(median(&xs).unwrap(), m);
        }

        #[test]
        fn median_moves_with_a_shift(xs in sample(), c in -1e3f64..1e3) {
            let shifted: Vec<f64> = xs.iter().map(|x| x + c).collect();
            let d = median(&shifted).unwrap() - (median(&xs).unwrap() + c);
            prop_assert!(d.abs() < 1e-6);
        }

        #[test]
        fn p_value_is_a_probability_and_symmetric(a in sample(), b in sample()) {
            let opts = PermutationOptions { resamples: 500, ..Default::default() };
            let ab = permutation_test(&a, &b, opts).unwrap();
            let ba = permutation_test(&b, &a, opts).unwrap();
            prop_assert!(ab.p_value > 0.0 && ab.p_value <= 1.0);
            prop_assert!((ab.difference + ba.difference).abs() < 1e-6);
            if ab.exact {
                prop_assert!((ab.p_value - ba.p_value).abs() < 1e-12);
            }
        }

        #[test]
        fn identical_samples_are_never_different(a in sample()) {
            let r = permutation_test(&a, &a, Default::default()).unwrap();
            prop_assert_eq!(r.difference, 0.0);
            prop_assert_eq!(r.p_value, 1.0);
        }
    }
}
