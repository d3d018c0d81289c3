//! The Markdown report of a results set: where and with what it ran, medians and spread of
//! every figure per workload and method, each haul strategy next to its plain-CRIU twin as
//! ratios, the link floor on every table and plot, the plots
//! ([`crate::plot`]) embedded, and what was unsupported or failed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::group::{case_names, floor_of, groups, twin_of, Group};
use crate::plot::{self, PlotError};
use crate::record::{self, Outcome, Record, RecordError};
use crate::stats::{self, Summary};

/// A report that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the results.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Drawing the plots.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// Writing the report.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing to report.
    #[error("no records in {0}")]
    Empty(String),
}

fn fmt_value(x: f64, unit: &str) -> String {
    match unit {
        "s" => format!("{x:.3}"),
        "MB" => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}

/// `median [q1–q3]` of a summary, or `—`.
pub fn cell(s: Option<Summary>, unit: &str) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.n == 1 => fmt_value(s.median, unit),
        Some(s) => format!(
            "{} [{}–{}]",
            fmt_value(s.median, unit),
            fmt_value(s.q1, unit),
            fmt_value(s.q3, unit)
        ),
    }
}

/// A summary with every value multiplied by `k` (bytes as MB).
fn scale(s: Summary, k: f64) -> Summary {
    Summary {
        median: s.median * k,
        q1: s.q1 * k,
        q3: s.q3 * k,
        min: s.min * k,
        max: s.max * k,
        mean: s.mean * k,
        ..s
    }
}

fn ratio_cell(g: &Group<'_>, base: Option<&Group<'_>>, figure: &str) -> String {
    match base.and_then(|b| stats::ratio(g.median(figure), b.median(figure))) {
        Some(r) => format!("×{r:.2}"),
        None => "—".into(),
    }
}

fn node_line(n: &record::NodeInfo) -> String {
    format!(
        "{}: kernel {}, CRIU {}, {}",
        n.node,
        if n.kernel.is_empty() { "?" } else { &n.kernel },
        if n.criu_version.is_empty() {
            "?"
        } else {
            &n.criu_version
        },
        if n.haul_version.is_empty() {
            "haul ?"
        } else {
            &n.haul_version
        }
    )
}

/// The Markdown text of a report over `records`; `plots` are the image files' names (PNG
/// and SVG) relative to the report.
pub fn markdown(records: &[Record], sources: &[PathBuf], plots: &[String]) -> String {
    let gs = groups(records);
    let first = &records[0];
    let mut md = String::new();
    let mut scen: Vec<&str> = records.iter().map(|r| r.scenario.as_str()).collect();
    scen.dedup();
    let mut sets: Vec<&str> = records.iter().map(|r| r.set.as_str()).collect();
    sets.dedup();
    let _ = writeln!(md, "# haul experiments: {}\n", scen.join(", "));
    let mut revs: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{}{}",
                r.env.git_rev,
                if r.env.git_dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                }
            )
        })
        .collect();
    revs.dedup();
    let (ok, failed, unsup) = (
        records.iter().filter(|r| r.outcome == Outcome::Ok).count(),
        records
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .count(),
        records
            .iter()
            .filter(|r| r.outcome == Outcome::Unsupported)
            .count(),
    );
    let _ = writeln!(
        md,
        "- results: {}",
        sources
            .iter()
            .map(|p| format!("`{}`", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "- run: {} to {}, git {}",
        first.started_at,
        records.last().map_or("", |r| r.started_at.as_str()),
        revs.join(", ")
    );
    let _ = writeln!(md, "- provider: {}", first.env.provider_detail);
    let _ = writeln!(md, "- source: {}", node_line(&first.env.source));
    let _ = writeln!(md, "- destination: {}", node_line(&first.env.destination));
    let _ = writeln!(md, "- harness host: {}", first.env.harness_host);
    let reps = records.iter().map(|r| r.rep).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "- {} migrations: {ok} succeeded and checked on the destination, {failed} failed, {unsup} not run (unsupported on these nodes); {reps} repetitions",
        records.len()
    );

    if let Some(bw) = first.env.link_bytes_per_sec {
        let _ = writeln!(
            md,
            "- link: {:.1} MB/s (TCP, source to destination, measured at the start of the run)\n",
            bw / 1e6
        );
    }
    md.push_str("## What the figures are\n\n");
    md.push_str("Every migration moves a fresh `mtouch` (P.Haul's memory toucher: maps SIZE, pre-touches PRE, then touches one random page every PAUSE µs, or at a dirty rate) started in its own pid namespace on the source, with its working directory on the shared directory. After the move it must run on the destination, keep touching, and find every page intact when told to stop (`Finish`, no `Mismatch`); a migration counts as succeeded only then.\n\n");
    md.push_str("Each haul strategy runs beside its plain-CRIU twin, the same kind of migration done with CRIU's own tools: `criu stop-copy` (page-server dump, copy, restore) for stop-copy, `criu post-copy` (lazy dump, lazy-pages daemon, lazy restore) for post-copy, `criu pre-copy` (pre-dump rounds to a page server by P.Haul's rules, final dump, restore) for pre-copy and hybrid; `auto` is compared with the twin of what it resolved to.\n\n");
    md.push_str("| figure | haul | plain-CRIU twin |\n|---|---|---|\n");
    md.push_str("| total | wall clock of `haul pid` (post-copy: until every page arrived) | first CRIU step until the restore returned (post-copy: until the lazy dump exited, every page pulled) |\n");
    md.push_str("| frozen | CRIU's frozen time, summed over the dumps (P.Haul's \"frozen time\") | the same (lazy dump: the harness's clock, CRIU's is wrong there) |\n");
    md.push_str("| restore | CRIU's restore time on the destination | the same |\n");
    md.push_str("| downtime | final freeze until the destination said the process runs (source's clock) | final dump's start until the restore returned |\n");
    md.push_str("| observed downtime | the largest pause between two touches in the workload's own log: the downtime the workload saw | the same |\n");
    md.push_str("| pages | pages sent by all dumps | the same |\n");
    md.push_str("| bytes on the wire | bytes in and out of the source's link interface during the migration | the same |\n");
    md.push_str("| floor | the workload's resident memory / the link's bandwidth measured in this run: the time just to move the memory once | the same |\n\n");
    md.push_str("The observed downtime is only as fine as the workload's touch interval: one page every PAUSE µs, so at the HOWTO's PAUSE of 100000 µs it can be up to 0.1 s more than the real pause.\n\n");
    md.push_str("Cells are `median [q1–q3]` over the successful repetitions (seconds unless said otherwise); ratios are a haul strategy's median over its twin's median for the same workload (below 1: haul is faster), never over another mode.\n\n");

    md.push_str("## Results\n\n");
    md.push_str("| workload | method | ok/runs | total | frozen | restore | downtime | observed downtime | post-copy window | pages | MB on the wire | floor | observed downtime vs twin | total vs twin |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for g in &gs {
        if g.unsupported().is_some() {
            continue;
        }
        let (ok, f, _) = g.counts();
        let twin = twin_of(&gs, g);
        let vs = |fig: &str| {
            if g.is_twin() {
                "—".to_string()
            } else {
                ratio_cell(g, twin, fig)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {ok}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.case,
            g.series,
            ok + f,
            cell(g.summary("total_secs"), "s"),
            cell(g.summary("frozen_secs"), "s"),
            cell(g.summary("restore_secs"), "s"),
            cell(g.summary("downtime_secs"), "s"),
            cell(g.summary("observed_downtime_secs"), "s"),
            cell(g.summary("postcopy_window_secs"), "s"),
            cell(g.summary("pages_sent"), "pages"),
            cell(g.summary("wire_bytes").map(|s| scale(s, 1e-6)), "MB"),
            cell(g.summary("floor_secs"), "s"),
            vs("observed_downtime_secs"),
            vs("total_secs"),
        );
    }
    md.push('\n');

    md.push_str("## haul vs its plain-CRIU twin\n\n");
    md.push_str("The downtime the workload saw and the total time, haul's median and its twin's, with haul's over the twin's, beside the link floor (`auto` resolves to the strategy in brackets):\n\n");
    md.push_str("| workload | strategy | twin | observed downtime: haul / twin | total: haul / twin | floor |\n|---|---|---|---|---|---|\n");
    for c in case_names(&gs) {
        for g in gs.iter().filter(|g| g.case == c && !g.is_twin()) {
            if g.unsupported().is_some() {
                continue;
            }
            let twin = twin_of(&gs, g);
            let used = g
                .ok()
                .find_map(|r| r.figures.strategy_used.clone())
                .filter(|u| !g.series.ends_with(u.as_str()))
                .map(|u| format!(" ({u})"))
                .unwrap_or_default();
            let pair = |fig: &str| {
                format!(
                    "{} / {} ({})",
                    g.median(fig).map_or("—".into(), |m| fmt_value(m, "s")),
                    twin.and_then(|t| t.median(fig))
                        .map_or("—".into(), |m| fmt_value(m, "s")),
                    ratio_cell(g, twin, fig)
                )
            };
            let _ = writeln!(
                md,
                "| {c} | {}{used} | {} | {} | {} | {} |",
                g.series,
                g.twin_name().unwrap_or("—"),
                pair("observed_downtime_secs"),
                pair("total_secs"),
                cell(floor_of(&gs, &c), "s"),
            );
        }
    }
    md.push('\n');

    sync_section(&mut md, &gs);

    md.push_str("## Plots\n\n");
    for (name, caption) in [
        ("downtime-vs-size", "Downtime vs memory size per strategy"),
        ("total-vs-rate", "Total time vs dirty rate"),
        ("precopy-rounds", "Pages per pre-copy round"),
        (
            "haul-vs-criu",
            "haul vs its plain-CRIU twin, and the link floor",
        ),
        ("sync-cost", "What the file sync costs"),
    ] {
        let png = format!("{name}.png");
        if plots.contains(&png) {
            let _ = writeln!(
                md,
                "### {caption}\n\n![{caption}]({png})\n\n([SVG]({name}.svg))\n"
            );
        }
    }

    let unsupported: Vec<&Group<'_>> = gs.iter().filter(|g| g.unsupported().is_some()).collect();
    if !unsupported.is_empty() {
        md.push_str("## Not run\n\n");
        let mut seen: Vec<String> = Vec::new();
        for g in unsupported {
            let line = format!("- {}: {}", g.series, g.unsupported().unwrap_or(""));
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
        md.push_str(&seen.join("\n"));
        md.push_str("\n\n");
    }
    let failures: Vec<&Record> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    md.push_str("## Failures\n\n");
    if failures.is_empty() {
        md.push_str("None: every migration that ran succeeded and the workload checked every page on the destination.\n");
    } else {
        for r in failures {
            let _ = writeln!(
                md,
                "- #{} {} {} repetition {}: {}",
                r.seq,
                r.workload.label,
                r.series(),
                r.rep,
                r.error.as_deref().unwrap_or("").replace('\n', " ")
            );
        }
    }
    md
}

/// The file-sync section (workloads whose files travelled with `haul pid --sync`), when the
/// set has any.
fn sync_section(md: &mut String, gs: &[Group<'_>]) {
    let synced: Vec<&Group<'_>> = gs
        .iter()
        .filter(|g| g.ok().any(|r| !r.figures.sync_rounds.is_empty()))
        .collect();
    if synced.is_empty() {
        return;
    }
    md.push_str("## File sync\n\n");
    md.push_str("Workloads on a node-local directory that `haul pid --sync` carried: rounds while the process ran (each only what changed since the one before), then the final round while it was frozen. The final round's time is part of the downtime; its share is of haul's downtime.\n\n");
    md.push_str("| workload | method | rounds | synced MiB | final round MiB | final round files | final sync (frozen) | share of downtime | downtime | observed downtime |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for g in synced {
        let med = |f: &dyn Fn(&Record) -> Option<f64>| {
            let v: Vec<f64> = g.ok().filter_map(f).collect();
            stats::summarize(&v)
        };
        let rounds = med(&|r| Some(r.figures.sync_rounds.len() as f64));
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let total = med(&|r| r.figures.sync_bytes.map(mib));
        let last = |r: &Record| {
            r.figures
                .sync_rounds
                .iter()
                .find(|x| x.final_round)
                .cloned()
        };
        let final_mib = med(&|r| last(r).map(|x| mib(x.bytes)));
        let final_files = med(&|r| last(r).map(|x| x.files as f64));
        let share = med(&|r| r.figures.sync_final_share.map(|s| s * 100.0));
        let two = |s: Option<Summary>| s.map_or("—".into(), |s| format!("{:.2}", s.median));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            g.case,
            g.series,
            cell(rounds, ""),
            two(total),
            two(final_mib),
            cell(final_files, ""),
            cell(g.summary("sync_final_secs"), "s"),
            share.map_or("—".into(), |s| format!("{:.0} %", s.median)),
            cell(g.summary("downtime_secs"), "s"),
            cell(g.summary("observed_downtime_secs"), "s"),
        );
    }
    md.push('\n');
}

/// Read `inputs`, draw the plots and write `report.md` into `out`; returns the report's path.
pub fn write(inputs: &[PathBuf], out: &Path) -> Result<PathBuf, ReportError> {
    let records = record::read_all(inputs)?;
    if records.is_empty() {
        return Err(ReportError::Empty(
            inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.display().to_string(),
        source,
    })?;
    let gs = groups(&records);
    let files = plot::draw_all(&records, &gs, out)?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    // name the inputs relative to the report when they are in the same tree
    let sources: Vec<PathBuf> = inputs.iter().map(|p| relative_to(p, out)).collect();
    let md = markdown(&records, &sources, &names);
    let path = out.join("report.md");
    std::fs::write(&path, md).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// `path` relative to directory `base` when both are in one tree (`../../runs/x.jsonl`).
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (Ok(p), Ok(b)) = (path.canonicalize(), base.canonicalize()) else {
        return path.to_path_buf();
    };
    let pc: Vec<_> = p.components().collect();
    let bc: Vec<_> = b.components().collect();
    let common = pc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common <= 1 {
        return path.to_path_buf();
    }
    let mut r = PathBuf::new();
    for _ in common..bc.len() {
        r.push("..");
    }
    for c in &pc[common..] {
        r.push(c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(cell(None, "s"), "—");
        assert_eq!(cell(stats::summarize(&[0.5]), "s"), "0.500");
        assert_eq!(
            cell(stats::summarize(&[1.0, 2.0, 3.0]), "s"),
            "2.000 [1.500–2.500]"
        );
        assert_eq!(cell(stats::summarize(&[10.0, 20.0]), "pages"), "15 [12–18]");
    }

    #[test]
    fn relative_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("runs")).unwrap();
        std::fs::create_dir_all(d.path().join("reports/x")).unwrap();
        std::fs::write(d.path().join("runs/x.jsonl"), "").unwrap();
        assert_eq!(
            relative_to(&d.path().join("runs/x.jsonl"), &d.path().join("reports/x")),
            PathBuf::from("../../runs/x.jsonl")
        );
    }
}
