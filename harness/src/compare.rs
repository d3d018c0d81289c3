//! Compare two results sets (two git revisions, two machines): for every workload, method
//! and figure both sets have, the medians, their relative change, and a permutation test
//! ([`crate::stats::permutation_test`]). A figure *changed* when its median moved by at
//! least the threshold (10 % by default) and the test's p-value is at most alpha (0.10 by
//! default); every figure is a time or a count, so a rise is a regression. The verdicts are
//! sentences, changed ones first.

use std::fmt::Write as _;

use serde::Serialize;

use crate::group::groups;
use crate::record::{Record, FIGURES};
use crate::stats::{self, PermutationOptions};

/// How to decide.
#[derive(Debug, Clone, Copy)]
pub struct CompareOptions {
    /// Largest p-value that counts as a change.
    pub alpha: f64,
    /// Smallest relative change of the median that counts (0.10 = 10 %).
    pub threshold: f64,
    /// The permutation test's settings.
    pub permutation: PermutationOptions,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            alpha: 0.10,
            threshold: 0.10,
            permutation: PermutationOptions::default(),
        }
    }
}

/// What one figure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Rose beyond the noise: worse.
    Regression,
    /// Fell beyond the noise: better.
    Improvement,
    /// Moved less than the threshold.
    Unchanged,
    /// Moved more than the threshold, but not beyond the noise (p > alpha).
    Noise,
    /// Moved more than the threshold, and these few repetitions cannot reach alpha at all.
    TooFewRuns,
}

/// One figure of one workload and method in both sets.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Workload label.
    pub case: String,
    /// The method (`haul post-copy`, `criu post-copy`).
    pub series: String,
    /// Figure key.
    pub figure: String,
    /// Its title.
    pub title: String,
    /// Its unit.
    pub unit: String,
    /// Values in A.
    pub n_a: usize,
    /// Values in B.
    pub n_b: usize,
    /// Median in A.
    pub median_a: f64,
    /// Median in B.
    pub median_b: f64,
    /// `(median_b - median_a) / median_a`.
    pub relative: f64,
    /// The permutation test's p-value.
    pub p_value: f64,
    /// The smallest p-value these repetitions allow.
    pub min_p: f64,
    /// The threshold the verdict used.
    pub threshold: f64,
    /// The verdict.
    pub verdict: Verdict,
}

impl Comparison {
    /// The sentence for this comparison.
    pub fn sentence(&self, a: &str, b: &str) -> String {
        let v = |x: f64| match self.unit.as_str() {
            "s" => format!("{x:.3} s"),
            u => format!("{x:.0} {u}"),
        };
        let what = format!("{} {}: {}", self.series, self.case, self.title);
        let pct = self.relative * 100.0;
        let stat = format!(
            "({pct:+.0} %, p = {:.3}, {} vs {} runs)",
            self.p_value, self.n_a, self.n_b
        );
        match self.verdict {
            Verdict::Regression => format!(
                "REGRESSION: {what} rose from {} ({a}) to {} ({b}) {stat}.",
                v(self.median_a),
                v(self.median_b)
            ),
            Verdict::Improvement => format!(
                "IMPROVEMENT: {what} fell from {} ({a}) to {} ({b}) {stat}.",
                v(self.median_a),
                v(self.median_b)
            ),
            Verdict::Unchanged => format!(
                "unchanged: {what} {} -> {} {stat}, within the {:.0} % threshold.",
                v(self.median_a),
                v(self.median_b),
                self.threshold * 100.0
            ),
            Verdict::Noise => format!(
                "noise: {what} {} -> {} {stat}: not beyond the noise (p > alpha).",
                v(self.median_a),
                v(self.median_b)
            ),
            Verdict::TooFewRuns => format!(
                "cannot tell: {what} {} -> {} {stat}: with so few repetitions p cannot go below {:.3}; run more repetitions.",
                v(self.median_a),
                v(self.median_b),
                self.min_p
            ),
        }
    }
}

/// Compare every (workload, method, figure) present in both sets.
pub fn compare(a: &[Record], b: &[Record], opts: &CompareOptions) -> Vec<Comparison> {
    let (ga, gb) = (groups(a), groups(b));
    let mut out = Vec::new();
    for x in &ga {
        let Some(y) = gb.iter().find(|g| g.case == x.case && g.series == x.series) else {
            continue;
        };
        for (key, title, unit) in FIGURES {
            let (va, vb) = (x.values(key), y.values(key));
            if va.is_empty() || vb.is_empty() {
                continue;
            }
            let (Some(ma), Some(mb)) = (stats::median(&va), stats::median(&vb)) else {
                continue;
            };
            let Some(t) = stats::permutation_test(&va, &vb, opts.permutation) else {
                continue;
            };
            let relative = if ma != 0.0 {
                (mb - ma) / ma.abs()
            } else if mb == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            let verdict = if relative.abs() < opts.threshold {
                Verdict::Unchanged
            } else if t.p_value <= opts.alpha {
                if mb > ma {
                    Verdict::Regression
                } else {
                    Verdict::Improvement
                }
            } else if t.min_p > opts.alpha {
                Verdict::TooFewRuns
            } else {
                Verdict::Noise
            };
            out.push(Comparison {
                case: x.case.clone(),
                series: x.series.clone(),
                figure: key.into(),
                title: title.into(),
                unit: unit.into(),
                n_a: va.len(),
                n_b: vb.len(),
                median_a: ma,
                median_b: mb,
                relative,
                p_value: t.p_value,
                min_p: t.min_p,
                threshold: opts.threshold,
                verdict,
            });
        }
    }
    out
}

/// A name for a results set: its git revision(s), else `fallback`.
pub fn set_name(records: &[Record], fallback: &str) -> String {
    let mut revs: Vec<&str> = records.iter().map(|r| r.env.git_rev.as_str()).collect();
    revs.dedup();
    match revs.as_slice() {
        [one] if !one.is_empty() && *one != "unknown" => one.to_string(),
        _ => fallback.to_string(),
    }
}

/// The comparison as Markdown: the changes as sentences, then every figure in a table.
pub fn markdown(cs: &[Comparison], a: &str, b: &str, opts: &CompareOptions) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {a} vs {b}\n");
    let _ = writeln!(
        md,
        "A figure changed when its median moved by at least {:.0} % and a permutation test on the difference of medians gives p <= {:.2}. Lower is better for every figure.\n",
        opts.threshold * 100.0,
        opts.alpha
    );
    let changed: Vec<&Comparison> = cs
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Regression | Verdict::Improvement))
        .collect();
    let unsure: Vec<&Comparison> = cs
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::TooFewRuns | Verdict::Noise))
        .collect();
    let _ = writeln!(
        md,
        "{} figures compared: at p <= {:.2}, about {:.1} of them would pass the test by chance alone (before the threshold), so read a lone change with care and repeat the run.\n",
        cs.len(),
        opts.alpha,
        cs.len() as f64 * opts.alpha
    );
    if changed.is_empty() {
        let _ = writeln!(
            md,
            "No figure changed beyond the noise ({} compared).\n",
            cs.len()
        );
    } else {
        for c in &changed {
            let _ = writeln!(md, "- {}", c.sentence(a, b));
        }
        md.push('\n');
    }
    if !unsure.is_empty() {
        let _ = writeln!(
            md,
            "Moved by more than the threshold, but not beyond the noise:\n"
        );
        for c in &unsure {
            let _ = writeln!(md, "- {}", c.sentence(a, b));
        }
        md.push('\n');
    }
    md.push_str("| workload | method | figure | median A | median B | change | p | verdict |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    for c in cs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.4} | {:.4} | {:+.1} % | {:.3} | {:?} |",
            c.case,
            c.series,
            c.title,
            c.median_a,
            c.median_b,
            c.relative * 100.0,
            c.p_value,
            c.verdict
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::WorkloadCase;
    use crate::record::{
        Check, Environment, Figures, Outcome, Record, Tool, WorkloadParams, SCHEMA,
    };

    fn rec(total: f64, downtime: f64, rev: &str) -> Record {
        let case = WorkloadCase {
            name: "w".into(),
            program: "mtouch".into(),
            size_bytes: 64 << 20,
            pre_bytes: 64 << 20,
            pause_us: 1000,
            rate: None,
            pattern: "random".into(),
            args: vec![],
            sync: false,
        };
        Record {
            schema: SCHEMA,
            set: rev.into(),
            scenario: "t".into(),
            seq: 0,
            started_at: String::new(),
            rep: 1,
            method: "haul post-copy".into(),
            tool: Tool::Haul,
            twin: Some("criu post-copy".into()),
            workload: WorkloadParams::from(&case),
            outcome: Outcome::Ok,
            error: None,
            figures: Figures {
                total_secs: Some(total),
                downtime_secs: Some(downtime),
                ..Default::default()
            },
            check: Check::default(),
            ratio_to_twin: Default::default(),
            haul_report: None,
            criu: None,
            env: Environment {
                git_rev: rev.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_clear_regression_is_a_sentence() {
        let a: Vec<Record> = [1.0, 1.1, 0.9, 1.05, 0.95]
            .iter()
            .map(|&t| rec(t, 0.1, "aaa"))
            .collect();
        let b: Vec<Record> = [2.0, 2.1, 1.9, 2.05, 1.95]
            .iter()
            .map(|&t| rec(t, 0.1001, "bbb"))
            .collect();
        let opts = CompareOptions::default();
        let cs = compare(&a, &b, &opts);
        let total = cs.iter().find(|c| c.figure == "total_secs").unwrap();
        assert_eq!(total.verdict, Verdict::Regression);
        assert!(total.p_value < 0.05);
        let down = cs.iter().find(|c| c.figure == "downtime_secs").unwrap();
        assert_eq!(down.verdict, Verdict::Unchanged);
        let md = markdown(&cs, &set_name(&a, "A"), &set_name(&b, "B"), &opts);
        assert!(md.contains("REGRESSION: haul post-copy 64m:64m:1000: total rose from 1.000 s (aaa) to 2.000 s (bbb)"), "{md}");
        // and backwards it is an improvement
        let cs = compare(&b, &a, &opts);
        assert!(cs.iter().any(|c| c.verdict == Verdict::Improvement));
    }

    #[test]
    fn noise_and_too_few_runs() {
        let a: Vec<Record> = [1.0, 2.0, 0.5, 1.5]
            .iter()
            .map(|&t| rec(t, 0.1, "a"))
            .collect();
        let b: Vec<Record> = [1.9, 0.7, 2.4, 1.3]
            .iter()
            .map(|&t| rec(t, 0.1, "b"))
            .collect();
        let opts = CompareOptions::default();
        let total = compare(&a, &b, &opts)
            .into_iter()
            .find(|c| c.figure == "total_secs")
            .unwrap();
        assert_eq!(total.verdict, Verdict::Noise);
        let a = vec![rec(1.0, 0.1, "a")];
        let b = vec![rec(3.0, 0.1, "b")];
        let total = compare(&a, &b, &opts)
            .into_iter()
            .find(|c| c.figure == "total_secs")
            .unwrap();
        assert_eq!(total.verdict, Verdict::TooFewRuns);
        assert!(total.sentence("a", "b").starts_with("cannot tell"));
    }
}
