//! Records grouped by workload case and series (a strategy, or plain CRIU): what reports,
//! plots and comparisons summarize.

use crate::record::{Method, Outcome, Record};
use crate::stats::{self, Summary};

/// The records of one workload case and one series.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// The case's label (`256m:256m:100000`).
    pub case: String,
    /// The series (`post-copy`, `plain CRIU`).
    pub series: String,
    /// Its records, in file order.
    pub records: Vec<&'a Record>,
}

impl<'a> Group<'a> {
    /// The first record (for the workload's parameters).
    pub fn first(&self) -> &'a Record {
        self.records[0]
    }

    /// Records that succeeded.
    pub fn ok(&self) -> impl Iterator<Item = &'a Record> + '_ {
        self.records
            .iter()
            .copied()
            .filter(|r| r.outcome == Outcome::Ok)
    }

    /// Whether this is the plain-CRIU baseline.
    pub fn is_baseline(&self) -> bool {
        self.first().method == Method::Criu
    }

    /// A figure's values over the successful records.
    pub fn values(&self, figure: &str) -> Vec<f64> {
        self.ok().filter_map(|r| r.figures.get(figure)).collect()
    }

    /// A figure's summary over the successful records.
    pub fn summary(&self, figure: &str) -> Option<Summary> {
        stats::summarize(&self.values(figure))
    }

    /// A figure's median.
    pub fn median(&self, figure: &str) -> Option<f64> {
        self.summary(figure).map(|s| s.median)
    }

    /// How many records ended each way: (ok, failed, unsupported).
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = |o| self.records.iter().filter(|r| r.outcome == o).count();
        (c(Outcome::Ok), c(Outcome::Failed), c(Outcome::Unsupported))
    }

    /// Why the series is unsupported, if every record says so.
    pub fn unsupported(&self) -> Option<&'a str> {
        if self
            .records
            .iter()
            .all(|r| r.outcome == Outcome::Unsupported)
        {
            self.first().error.as_deref()
        } else {
            None
        }
    }
}

/// Group records by (case, series): cases in order of first appearance, plain CRIU first
/// within a case, then the strategies in order of first appearance.
pub fn groups(records: &[Record]) -> Vec<Group<'_>> {
    let mut cases: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for r in records {
        if !cases.contains(&r.workload.label) {
            cases.push(r.workload.label.clone());
        }
        let s = r.series();
        if !series.contains(&s) {
            series.push(s);
        }
    }
    series.sort_by_key(|s| s != "plain CRIU");
    let mut out = Vec::new();
    for c in &cases {
        for s in &series {
            let rs: Vec<&Record> = records
                .iter()
                .filter(|r| &r.workload.label == c && &r.series() == s)
                .collect();
            if !rs.is_empty() {
                out.push(Group {
                    case: c.clone(),
                    series: s.clone(),
                    records: rs,
                });
            }
        }
    }
    out
}

/// The series names in report order.
pub fn series_names(groups: &[Group<'_>]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for g in groups {
        if !v.contains(&g.series) {
            v.push(g.series.clone());
        }
    }
    v
}

/// The case labels in report order.
pub fn case_names(groups: &[Group<'_>]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for g in groups {
        if !v.contains(&g.case) {
            v.push(g.case.clone());
        }
    }
    v
}

/// The baseline group of a case.
pub fn baseline_of<'g, 'a>(groups: &'g [Group<'a>], case: &str) -> Option<&'g Group<'a>> {
    groups.iter().find(|g| g.case == case && g.is_baseline())
}
