//! Plots of a results set, each as PNG and SVG (plotters; text through `ab_glyph` with a
//! TrueType font found on the system, so no fontconfig or freetype library is linked):
//!
//! - `downtime-vs-size`: downtime vs memory size, one line per method (each haul strategy
//!   and its plain-CRIU twin in a lighter shade of the same colour) and the link floor
//!   (haul's own figure on the left, what the workload saw on the right);
//! - `total-vs-rate`: total migration time vs dirty rate;
//! - `precopy-rounds`: pages per pre-copy round, one line per migration;
//! - `haul-vs-criu`: per workload, bars of every haul strategy next to its plain-CRIU twin,
//!   and the link floor.
//! - `sync-cost` (only for sets with synced workloads): MiB per file-sync round, one line per
//!   migration (the frozen final round marked), and per workload and strategy the downtime
//!   with the final sync's share of it.
//!
//! Points are medians over repetitions; error bars span the interquartile range.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::group::{case_names, floor_of, series_names, Group};
use crate::record::Record;

/// A plot that could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No TrueType font was found.
    #[error("no TrueType font found for the plots: install fonts-dejavu-core (or set HAUL_HARNESS_FONT=/path/to/font.ttf)")]
    NoFont,
    /// The font file is not a usable font.
    #[error("{0} is not a usable TrueType font")]
    BadFont(String),
    /// plotters failed.
    #[error("drawing {file}: {why}")]
    Draw {
        /// The file being drawn.
        file: String,
        /// plotters' error.
        why: String,
    },
}

/// Where a font for the plots is: `$HAUL_HARNESS_FONT`, DejaVu Sans (fonts-dejavu-core),
/// `fc-match sans-serif`, then any `.ttf` under `/usr/share/fonts`.
pub fn find_font() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HAUL_HARNESS_FONT") {
        return Some(PathBuf::from(p));
    }
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ] {
        if Path::new(p).is_file() {
            return Some(p.into());
        }
    }
    if let Ok(o) = std::process::Command::new("fc-match")
        .args(["-f", "%{file}", "sans-serif:fontformat=TrueType"])
        .output()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && p.is_file() {
            return Some(p);
        }
    }
    fn walk(d: &Path, depth: u32) -> Option<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in &entries {
            if p.extension().is_some_and(|x| x == "ttf") {
                return Some(p.clone());
            }
        }
        if depth == 0 {
            return None;
        }
        entries
            .iter()
            .filter(|p| p.is_dir())
            .find_map(|p| walk(p, depth - 1))
    }
    walk(Path::new("/usr/share/fonts"), 4)
}

/// Register the font under the family names plotters asks for (once per process).
pub fn init_fonts() -> Result<(), PlotError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = find_font().ok_or_else(String::new)?;
        let bytes = std::fs::read(&path).map_err(|_| path.display().to_string())?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        for family in ["sans-serif", "serif", "monospace"] {
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font(family, style, bytes)
                    .map_err(|_| path.display().to_string())?;
            }
        }
        Ok(())
    })
    .clone()
    .map_err(|p| {
        if p.is_empty() {
            PlotError::NoFont
        } else {
            PlotError::BadFont(p)
        }
    })
}

/// The name of the link floor's line and bars.
pub const FLOOR: &str = "link floor";

/// The colour of a series, fixed per strategy so plots of different runs match: a haul
/// strategy's full colour, its plain-CRIU twin a lighter shade of it, the floor black.
pub fn color(series: &str) -> RGBColor {
    if series == FLOOR {
        return RGBColor(0, 0, 0);
    }
    let (twin, strategy) = match series.split_once(' ') {
        Some(("criu", s)) => (true, s),
        Some((_, s)) => (false, s),
        None => (false, series),
    };
    let RGBColor(r, g, b) = match strategy {
        "stop-copy" => RGBColor(31, 119, 180),
        "post-copy" => RGBColor(255, 127, 14),
        "auto" => RGBColor(44, 160, 44),
        "pre-copy" => RGBColor(214, 39, 40),
        "hybrid" => RGBColor(148, 103, 189),
        _ => RGBColor(23, 190, 207),
    };
    if twin {
        let light = |c: u8| c + ((255 - c) as f64 * 0.55) as u8;
        RGBColor(light(r), light(g), light(b))
    } else {
        RGBColor(r, g, b)
    }
}

type DrawResult = Result<(), String>;

fn e<T: std::fmt::Display>(x: T) -> String {
    x.to_string()
}

/// Something drawn the same way on any backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

fn render(dir: &Path, name: &str, fig: &impl Figure) -> Result<Vec<PathBuf>, PlotError> {
    let png = dir.join(format!("{name}.png"));
    let svg = dir.join(format!("{name}.svg"));
    let fail = |file: &Path, why: String| PlotError::Draw {
        file: file.display().to_string(),
        why,
    };
    {
        let root = BitMapBackend::new(&png, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(&png, e(x)))?;
        fig.draw(&root).map_err(|x| fail(&png, x))?;
        root.present().map_err(|x| fail(&png, e(x)))?;
    }
    {
        let root = SVGBackend::new(&svg, fig.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(&svg, e(x)))?;
        fig.draw(&root).map_err(|x| fail(&svg, x))?;
        root.present().map_err(|x| fail(&svg, e(x)))?;
    }
    Ok(vec![png, svg])
}

fn note<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, title: &str, msg: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        title.to_string(),
        (20, 20),
        ("sans-serif", 22).into_font(),
    ))
    .map_err(e)?;
    for (i, line) in msg.lines().enumerate() {
        area.draw(&Text::new(
            line.to_string(),
            (40, (h as i32) / 2 - 20 + 24 * i as i32),
            ("sans-serif", 18).into_font().color(&RGBColor(90, 90, 90)),
        ))
        .map_err(e)?;
    }
    let _ = w;
    Ok(())
}

/// One series of points: x, median, q1, q3.
#[derive(Debug, Clone)]
struct Line {
    series: String,
    points: Vec<(f64, f64, f64, f64)>,
}

fn axis_max(lines: &[Line]) -> f64 {
    let m = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.3.max(p.1)))
        .fold(0.0f64, f64::max);
    if m > 0.0 {
        m * 1.15
    } else {
        1.0
    }
}

/// How the x axis is scaled: the values are drawn at `log_base(x)` on a linear axis, and
/// labelled (at whole powers only) by `label`.
struct LogAxis {
    base: f64,
    label: fn(f64) -> String,
}

/// Lines over a logarithmic x axis, error bars at q1..q3.
/// A chart of `labels.len()` categories along x (one label under each) and seconds from 0 to
/// `ymax` up, its mesh drawn: the frame of the bar charts.
fn category_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    ymax: f64,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    let n = labels.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("seconds")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    axis: &LogAxis,
) -> DrawResult {
    let to = |x: f64| x.log(axis.base);
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| to(p.0)))
        .collect();
    if xs.is_empty() {
        return note(area, title, "no successful migrations to plot");
    }
    let (lo, hi) = xs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let pad = ((hi - lo) * 0.08).max(0.5);
    let (lo, hi) = (lo - pad, hi + pad);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(lo..hi, 0f64..axis_max(lines))
        .map_err(e)?;
    let label = axis.label;
    let base = axis.base;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(((hi - lo).ceil() as usize + 1).max(2))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                label(base.powf(x.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .map_err(e)?;
    let n = lines.len().max(1) as f64;
    let spread = (hi - lo) * 0.006;
    for (i, l) in lines.iter().enumerate() {
        let c = color(&l.series);
        // spread the series a little along x so their error bars do not hide each other
        let shift = spread * (i as f64 - (n - 1.0) / 2.0);
        let pts: Vec<(f64, f64)> = l.points.iter().map(|p| (to(p.0) + shift, p.1)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(l.series.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(e)?;
        chart
            .draw_series(l.points.iter().map(|p| {
                ErrorBar::new_vertical(to(p.0) + shift, p.2, p.1, p.3, c.stroke_width(1), 8)
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Workload cases grouped into a family along one parameter: the family with the most
/// distinct values of `x` wins.
fn family<'a, K: PartialEq + Clone>(
    groups: &[Group<'a>],
    key: impl Fn(&Record) -> K,
    x: impl Fn(&Record) -> Option<f64>,
) -> Option<(K, Vec<Group<'a>>)> {
    let mut fams: Vec<(K, Vec<Group<'a>>)> = Vec::new();
    for g in groups {
        if x(g.first()).is_none() || g.unsupported().is_some() {
            continue;
        }
        let k = key(g.first());
        match fams.iter_mut().find(|(fk, _)| *fk == k) {
            Some((_, v)) => v.push(g.clone()),
            None => fams.push((k, vec![g.clone()])),
        }
    }
    let distinct = |v: &Vec<Group<'a>>| {
        let mut xs: Vec<u64> = v
            .iter()
            .filter_map(|g| x(g.first()).map(f64::to_bits))
            .collect();
        xs.sort();
        xs.dedup();
        xs.len()
    };
    let mut best: Option<(K, Vec<Group<'a>>)> = None;
    for f in fams {
        if best
            .as_ref()
            .is_none_or(|b| distinct(&f.1) > distinct(&b.1))
        {
            best = Some(f);
        }
    }
    best
}

fn lines_of(groups: &[Group<'_>], x: impl Fn(&Record) -> Option<f64>, figure: &str) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for s in series_names(groups) {
        let mut points: Vec<(f64, f64, f64, f64)> = groups
            .iter()
            .filter(|g| g.series == s)
            .filter_map(|g| {
                let sm = g.summary(figure)?;
                Some((x(g.first())?, sm.median, sm.q1, sm.q3))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            out.push(Line { series: s, points });
        }
    }
    // the link floor beside every time
    if figure.ends_with("_secs") {
        let mut points: Vec<(f64, f64, f64, f64)> = Vec::new();
        for c in case_names(groups) {
            let Some(g) = groups.iter().find(|g| g.case == c) else {
                continue;
            };
            if let (Some(xv), Some(f)) = (x(g.first()), floor_of(groups, &c)) {
                if !points.iter().any(|p| p.0 == xv) {
                    points.push((xv, f.median, f.q1, f.q3));
                }
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !points.is_empty() {
            out.push(Line {
                series: FLOOR.into(),
                points,
            });
        }
    }
    out
}

fn mib(r: &Record) -> Option<f64> {
    Some(r.workload.case.size_bytes as f64 / 1048576.0)
}

fn rate_mb(r: &Record) -> Option<f64> {
    r.workload.dirty_rate_bytes_per_sec.map(|b| b / 1e6)
}

fn size_label(x: f64) -> String {
    if x >= 1024.0 {
        format!("{} GiB", x / 1024.0)
    } else if x >= 1.0 {
        format!("{x:.0} MiB")
    } else {
        format!("{:.0} KiB", x * 1024.0)
    }
}

fn rate_label(x: f64) -> String {
    if x >= 1.0 {
        format!("{x:.0}")
    } else {
        let digits = (-x.log10()).ceil().max(1.0) as usize;
        format!("{x:.digits$}")
    }
}

const SIZE_AXIS: LogAxis = LogAxis {
    base: 2.0,
    label: size_label,
};

const RATE_AXIS: LogAxis = LogAxis {
    base: 10.0,
    label: rate_label,
};

/// One panel of a [`TwoPanels`] figure: its title and the record field on its y axis.
struct Panel {
    title: &'static str,
    field: &'static str,
}

/// A figure of two panels side by side over the same x axis (one line per series).
struct TwoPanels<'a> {
    groups: Vec<Group<'a>>,
    title: String,
    /// The x value of a record (None: left out).
    x: fn(&Record) -> Option<f64>,
    x_label: &'static str,
    axis: &'static LogAxis,
    panels: [Panel; 2],
}

impl TwoPanels<'_> {
    /// Downtime as the migrator measured it and as the workload saw it, over memory size.
    fn downtime_vs_size(groups: Vec<Group<'_>>, title: String) -> TwoPanels<'_> {
        TwoPanels {
            groups,
            title,
            x: mib,
            x_label: "memory size (log scale)",
            axis: &SIZE_AXIS,
            panels: [
                Panel {
                    title: "downtime as measured by the migrator",
                    field: "downtime_secs",
                },
                Panel {
                    title: "downtime the workload saw (largest touch gap)",
                    field: "observed_downtime_secs",
                },
            ],
        }
    }

    /// Total time and the downtime the workload saw, over its dirty rate.
    fn total_vs_rate(groups: Vec<Group<'_>>, title: String) -> TwoPanels<'_> {
        TwoPanels {
            groups,
            title,
            x: rate_mb,
            x_label: "dirty rate, MB/s (log scale)",
            axis: &RATE_AXIS,
            panels: [
                Panel {
                    title: "total migration time",
                    field: "total_secs",
                },
                Panel {
                    title: "downtime the workload saw",
                    field: "observed_downtime_secs",
                },
            ],
        }
    }
}

impl Figure for TwoPanels<'_> {
    fn size(&self) -> (u32, u32) {
        (1300, 520)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (top, rest) = root.split_vertically(34);
        top.draw(&Text::new(
            self.title.clone(),
            (14, 8),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(e)?;
        for (area, panel) in rest.split_evenly((1, 2)).iter().zip(&self.panels) {
            draw_lines(
                area,
                panel.title,
                self.x_label,
                "seconds",
                &lines_of(&self.groups, self.x, panel.field),
                self.axis,
            )?;
        }
        Ok(())
    }
}

struct PrecopyRounds<'a> {
    records: Vec<&'a Record>,
    why_none: String,
}

impl Figure for PrecopyRounds<'_> {
    fn size(&self) -> (u32, u32) {
        (900, 520)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let title = "pages per pre-copy round";
        if self.records.is_empty() {
            return note(root, title, &self.why_none);
        }
        let max_round = self
            .records
            .iter()
            .flat_map(|r| r.figures.rounds.iter().map(|x| x.round))
            .max()
            .unwrap_or(1)
            .max(2);
        let max_pages = self
            .records
            .iter()
            .flat_map(|r| r.figures.rounds.iter().map(|x| x.pages))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0.5f64..(max_round as f64 + 0.5), 0f64..max_pages * 1.15)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("pages written")
            .x_labels(max_round as usize)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        let mut labelled: Vec<String> = Vec::new();
        for r in &self.records {
            let name = format!("{} {}", r.method, r.workload.label);
            let c = color(&r.method);
            let pts: Vec<(f64, f64)> = r
                .figures
                .rounds
                .iter()
                .map(|x| (x.round as f64, x.pages as f64))
                .collect();
            let s = chart
                .draw_series(LineSeries::new(pts.clone(), c.mix(0.7).stroke_width(2)))
                .map_err(e)?;
            if !labelled.contains(&name) {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
                labelled.push(name);
            }
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(e)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

struct HaulVsCriu<'a> {
    groups: Vec<Group<'a>>,
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    groups: &[Group<'_>],
    figure: &str,
) -> DrawResult {
    let cases = case_names(groups);
    let mut series: Vec<String> = series_names(groups)
        .into_iter()
        .filter(|s| {
            groups
                .iter()
                .any(|g| &g.series == s && g.median(figure).is_some())
        })
        .collect();
    if cases.is_empty() || series.is_empty() {
        return note(area, title, "no successful migrations to plot");
    }
    let floors: Vec<Option<crate::stats::Summary>> =
        cases.iter().map(|c| floor_of(groups, c)).collect();
    if floors.iter().any(Option::is_some) {
        series.push(FLOOR.into());
    }
    let summary_of = |s: &str, ci: usize, case: &str| {
        if s == FLOOR {
            floors[ci]
        } else {
            groups
                .iter()
                .find(|g| g.case == case && g.series == s)
                .and_then(|g| g.summary(figure))
        }
    };
    let ymax = cases
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| series.iter().filter_map(move |s| summary_of(s, ci, c)))
        .map(|s| s.q3.max(s.median))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.2;
    let labels = cases.clone();
    let mut chart = category_chart(area, title, &labels, ymax)?;
    let width = 0.8 / series.len() as f64;
    for (si, s) in series.iter().enumerate() {
        let c = color(s);
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (ci, case) in cases.iter().enumerate() {
            let Some(sm) = summary_of(s, ci, case) else {
                continue;
            };
            let x0 = ci as f64 - 0.4 + si as f64 * width;
            bars.push(Rectangle::new(
                [(x0 + 0.05 * width, 0.0), (x0 + 0.95 * width, sm.median)],
                c.filled(),
            ));
            whiskers.push(ErrorBar::new_vertical(
                x0 + width / 2.0,
                sm.q1,
                sm.median,
                sm.q3,
                BLACK.stroke_width(1),
                6,
            ));
        }
        chart
            .draw_series(bars)
            .map_err(e)?
            .label(s.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        chart.draw_series(whiskers).map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    Ok(())
}

impl Figure for HaulVsCriu<'_> {
    fn size(&self) -> (u32, u32) {
        (1300, 560)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (top, rest) = root.split_vertically(34);
        top.draw(&Text::new(
            "haul vs its plain-CRIU twin, and the link floor, per workload (median, IQR)"
                .to_string(),
            (14, 8),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(e)?;
        let panels = rest.split_evenly((1, 2));
        draw_bars(
            &panels[0],
            "downtime the workload saw",
            &self.groups,
            "observed_downtime_secs",
        )?;
        draw_bars(
            &panels[1],
            "total migration time",
            &self.groups,
            "total_secs",
        )
    }
}

struct SyncCost<'a> {
    records: Vec<&'a Record>,
    groups: Vec<Group<'a>>,
}

/// A synced case's label without what every one of them says (`files`, `sync`).
fn short_case(label: &str) -> &str {
    label.trim_start_matches("files ").trim_end_matches(" sync")
}

/// The series colour, darker for each further workload case (so cases of one strategy differ).
fn shade(series: &str, case_index: usize) -> RGBColor {
    let RGBColor(r, g, b) = color(series);
    let f = 1.0 - 0.3 * (case_index % 3) as f64;
    RGBColor(
        (r as f64 * f) as u8,
        (g as f64 * f) as u8,
        (b as f64 * f) as u8,
    )
}

impl SyncCost<'_> {
    fn case_index(&self, label: &str) -> usize {
        let mut cases: Vec<&str> = Vec::new();
        for r in &self.records {
            if !cases.contains(&r.workload.label.as_str()) {
                cases.push(&r.workload.label);
            }
        }
        cases.iter().position(|c| *c == label).unwrap_or(0)
    }

    fn rounds<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let max_round = self
            .records
            .iter()
            .flat_map(|r| r.figures.sync_rounds.iter().map(|x| x.round))
            .max()
            .unwrap_or(1)
            .max(2);
        let max_mib = self
            .records
            .iter()
            .flat_map(|r| r.figures.sync_rounds.iter().map(|x| mib(x.bytes)))
            .fold(0.0f64, f64::max)
            .max(1.0);
        // a log scale: the first round is the whole tree, the others what changed
        let (lo, hi) = (0.01f64, max_mib * 2.0);
        let mut chart = ChartBuilder::on(area)
            .caption(
                "MiB per sync round (square: the final round, frozen)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.5f64..(max_round as f64 + 0.5), (lo..hi).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc("MiB sent (log scale)")
            .x_labels(max_round as usize)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(e)?;
        let mut labelled: Vec<String> = Vec::new();
        for r in &self.records {
            let name = format!("{} {}", r.method, short_case(&r.workload.label));
            let c = shade(&r.method, self.case_index(&r.workload.label));
            let pts: Vec<(f64, f64)> = r
                .figures
                .sync_rounds
                .iter()
                .map(|x| (x.round as f64, mib(x.bytes).max(lo)))
                .collect();
            let s = chart
                .draw_series(LineSeries::new(pts.clone(), c.mix(0.7).stroke_width(2)))
                .map_err(e)?;
            if !labelled.contains(&name) {
                s.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
                labelled.push(name);
            }
            for (x, p) in r.figures.sync_rounds.iter().zip(&pts) {
                if x.final_round {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(p.0 - 0.06, p.1 * 0.85), (p.0 + 0.06, p.1 * 1.15)],
                            c.filled(),
                        )))
                        .map_err(e)?;
                } else {
                    chart
                        .draw_series(std::iter::once(Circle::new(*p, 3, c.filled())))
                        .map_err(e)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(e)?;
        Ok(())
    }

    fn downtime<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult {
        let title = "downtime (light) and the final sync in it (dark), median";
        let bars: Vec<(String, String, f64, f64)> = self
            .groups
            .iter()
            .filter_map(|g| {
                Some((
                    g.case.clone(),
                    g.series.clone(),
                    g.median("downtime_secs")?,
                    g.median("sync_final_secs")?,
                ))
            })
            .collect();
        if bars.is_empty() {
            return note(area, title, "no successful synced migrations");
        }
        let ymax = bars.iter().map(|b| b.2.max(b.3)).fold(0.0f64, f64::max) * 1.2;
        let labels: Vec<String> = bars
            .iter()
            .map(|b| format!("{} {}", b.1, short_case(&b.0)))
            .collect();
        let mut chart = category_chart(area, title, &labels, ymax.max(1e-3))?;
        for (i, (case, series, down, sync)) in bars.iter().enumerate() {
            let c = shade(series, self.case_index(case));
            let x = i as f64;
            chart
                .draw_series([
                    Rectangle::new([(x - 0.3, 0.0), (x + 0.3, *down)], c.mix(0.35).filled()),
                    Rectangle::new([(x - 0.3, 0.0), (x + 0.3, *sync)], c.filled()),
                ])
                .map_err(e)?;
        }
        Ok(())
    }
}

impl Figure for SyncCost<'_> {
    fn size(&self) -> (u32, u32) {
        (1300, 560)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (top, rest) = root.split_vertically(34);
        top.draw(&Text::new(
            "What the file sync costs (haul pid --sync)".to_string(),
            (14, 8),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(e)?;
        let panels = rest.split_evenly((1, 2));
        self.rounds(&panels[0])?;
        self.downtime(&panels[1])
    }
}

/// Draw every plot of `records` into `dir`; returns the files (PNG and SVG of each).
pub fn draw_all(
    records: &[Record],
    groups: &[Group<'_>],
    dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    init_fonts()?;
    let mut files = Vec::new();

    let fam = family(
        groups,
        |r| {
            (
                r.workload.case.pause_us,
                r.workload.case.rate.clone(),
                r.workload.case.pattern.clone(),
            )
        },
        mib,
    );
    let (title, gs) = match fam {
        Some((k, gs)) => (
            format!(
                "Downtime vs memory size ({}, pattern {}; median and IQR over repetitions)",
                match &k.1 {
                    Some(r) => format!("dirty rate {r}/s"),
                    None => format!("one page touched every {} µs", k.0),
                },
                k.2
            ),
            gs,
        ),
        None => ("Downtime vs memory size".to_string(), vec![]),
    };
    files.extend(render(
        dir,
        "downtime-vs-size",
        &TwoPanels::downtime_vs_size(gs, title),
    )?);

    let fam = family(
        groups,
        |r| (r.workload.case.size_bytes, r.workload.case.pattern.clone()),
        rate_mb,
    );
    let (title, gs) = match fam {
        Some((k, gs)) => (
            format!(
                "Total time vs dirty rate ({} workload, pattern {}; median and IQR)",
                crate::case::human_size(k.0),
                k.1
            ),
            gs,
        ),
        None => ("Total time vs dirty rate".to_string(), vec![]),
    };
    files.extend(render(
        dir,
        "total-vs-rate",
        &TwoPanels::total_vs_rate(gs, title),
    )?);

    let pre: Vec<&Record> = records
        .iter()
        .filter(|r| !r.figures.rounds.is_empty() && r.outcome == crate::record::Outcome::Ok)
        .collect();
    let why_none = {
        let unsup = records.iter().find(|r| {
            (r.method.ends_with("pre-copy") || r.method.ends_with("hybrid"))
                && r.outcome == crate::record::Outcome::Unsupported
        });
        match unsup {
            Some(r) => format!(
                "No pre-copy rounds in this results set:\npre-copy and hybrid were {}",
                r.error.as_deref().unwrap_or("unsupported")
            ),
            None => "No pre-copy rounds in this results set\n(no pre-copy or hybrid migration made more than the final dump).".to_string(),
        }
    };
    let why_none = why_none.replace(" (", "\n(");
    files.extend(render(
        dir,
        "precopy-rounds",
        &PrecopyRounds {
            records: pre,
            why_none,
        },
    )?);

    files.extend(render(
        dir,
        "haul-vs-criu",
        &HaulVsCriu {
            groups: groups
                .iter()
                .filter(|g| g.unsupported().is_none())
                .cloned()
                .collect(),
        },
    )?);

    let synced: Vec<&Record> = records
        .iter()
        .filter(|r| !r.figures.sync_rounds.is_empty() && r.outcome == crate::record::Outcome::Ok)
        .collect();
    if !synced.is_empty() {
        files.extend(render(
            dir,
            "sync-cost",
            &SyncCost {
                records: synced,
                groups: groups
                    .iter()
                    .filter(|g| g.median("sync_final_secs").is_some())
                    .cloned()
                    .collect(),
            },
        )?);
    }
    Ok(files)
}
