//! Records grouped by workload case and series (a method: `haul post-copy`, `criu
//! post-copy`): what reports, plots and comparisons summarize. A haul group's twin is the
//! group of its plain-CRIU twin for the same case; the link floor of a case is the median of
//! its records' floors.

use crate::record::{Outcome, Record, Tool};
use crate::stats::{self, Summary};

/// The records of one workload case and one series.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// The case's label (`256m:256m:100000`).
    pub case: String,
    /// The series (`haul post-copy`, `criu post-copy`).
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

    /// Whether this is a plain-CRIU twin.
    pub fn is_twin(&self) -> bool {
        self.first().tool == Tool::Criu
    }

    /// The twin's method, for a haul group.
    pub fn twin_name(&self) -> Option<&'a str> {
        self.records.iter().find_map(|r| r.twin.as_deref())
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

/// Group records by (case, series): cases and series in order of first appearance (a run
/// writes each twin right before the first strategy it is the twin of).
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

/// The twin group of `g` (same case), for a haul group.
pub fn twin_of<'g, 'a>(groups: &'g [Group<'a>], g: &Group<'a>) -> Option<&'g Group<'a>> {
    let t = g.twin_name()?;
    groups.iter().find(|x| x.case == g.case && x.series == t)
}

/// The link floor of a case: the median over its records' floors (s).
pub fn floor_of(groups: &[Group<'_>], case: &str) -> Option<crate::stats::Summary> {
    let v: Vec<f64> = groups
        .iter()
        .filter(|g| g.case == case)
        .flat_map(|g| g.records.iter().filter_map(|r| r.figures.floor_secs))
        .collect();
    stats::summarize(&v)
}
