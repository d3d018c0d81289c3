//! The plain-CRIU twins of haul's strategies, each driven step by step with CRIU's own
//! command line on the two nodes, the way a user of CRIU alone would migrate:
//!
//! - [`CriuStopCopy`]: `criu page-server` on the destination, `criu dump --page-server` on
//!   the source, the other images copied through the shared directory, `criu restore -d`;
//! - [`CriuPostCopy`]: `criu dump --lazy-pages` on the source (it then serves the pages),
//!   images copied, `criu lazy-pages --page-server` + `criu restore --lazy-pages -d` on the
//!   destination; done when the source's dump exits, i.e. every page arrived;
//! - [`CriuPreCopy`]: rounds of `criu pre-dump --track-mem` to a page server on the
//!   destination, each with the previous round as parent, stopping by P.Haul's rules (a
//!   round wrote <= 64 pages, the dirty set grew by more than 10 %, or `criu_max_rounds`),
//!   then the final `criu dump --track-mem` with the last round as parent, and the restore.
//!
//! Times are the harness's clock around each step (one command per step); the downtime is
//! from the final dump's start until the restore returned (the tree is frozen, then gone,
//! throughout). The workload's own log gives what it saw, as for haul.

use std::time::{Duration, Instant};

use haul::criu::stats::{self as criu_stats, DumpStats, RestoreStats};

use super::{strategy_unsupported, Method, MethodError, MigrationContext, Moved};
use crate::node::{shell_quote, Node};
use crate::probe::Capabilities;
use crate::record::{CriuDetail, Figures, Round, Tool};
use crate::workload::Workload;

/// The twin named `name` (`criu stop-copy`, `criu post-copy`, `criu pre-copy`).
pub fn twin_named(name: &str) -> Option<Box<dyn Method>> {
    match name {
        "criu stop-copy" => Some(Box::new(CriuStopCopy)),
        "criu post-copy" => Some(Box::new(CriuPostCopy)),
        "criu pre-copy" => Some(Box::new(CriuPreCopy)),
        _ => None,
    }
}

/// Where one plain-CRIU migration keeps its images.
struct Dirs {
    /// The source's images (on the shared directory: the destination copies from it).
    src: String,
    /// The destination's (the page server and the lazy-pages daemon write there).
    dst: String,
    /// The first port of this migration's CRIU servers (page server, lazy pages).
    port: u16,
}

impl Dirs {
    fn new(cx: &MigrationContext<'_>) -> Dirs {
        Dirs {
            src: format!("{}/{:03}-criu-images", cx.provider.shared_dir(), cx.seq),
            dst: format!(
                "{}/criu-{:03}",
                cx.provider.destination().work_dir(),
                cx.seq
            ),
            port: 28_000 + ((cx.seq % 400) * 16) as u16,
        }
    }

    fn remove(&self, cx: &MigrationContext<'_>) {
        for (n, d) in [
            (cx.provider.source(), &self.src),
            (cx.provider.destination(), &self.dst),
        ] {
            if crate::provider::removable(d) {
                let _ = n.sh(
                    &format!("rm -rf {}", shell_quote(d)),
                    Duration::from_secs(120),
                );
            }
        }
    }
}

/// The last error lines of a CRIU log (its first error line here is always the harmless
/// RLIMIT_NOFILE one).
fn log_errors(node: &dyn Node, log: &str) -> String {
    let script = format!(
        "grep -E 'Error|error' {} 2>/dev/null | grep -v RLIMIT_NOFILE | tail -n 5; true",
        shell_quote(log)
    );
    node.sh(&script, Duration::from_secs(30))
        .map(|o| o.stdout_text().trim().replace('\n', " | "))
        .unwrap_or_default()
}

fn step_failed(what: &str, node: &dyn Node, out: &crate::node::Output, log: &str) -> MethodError {
    MethodError::Failed(format!(
        "plain CRIU: {what} {} on {}: {} (log {log})",
        out.status_text(),
        node.describe(),
        log_errors(node, log)
    ))
}

fn dump_stats(node: &dyn Node, dir: &str) -> Option<DumpStats> {
    node.read_file(&format!("{dir}/stats-dump"))
        .ok()
        .and_then(|b| criu_stats::parse(&b).ok())
        .and_then(|e| e.dump.map(Into::into))
}

fn restore_stats(node: &dyn Node, dir: &str) -> Option<RestoreStats> {
    node.read_file(&format!("{dir}/stats-restore"))
        .ok()
        .and_then(|b| criu_stats::parse(&b).ok())
        .and_then(|e| e.restore.map(Into::into))
}

/// Run `script` on `node` as one timed step; its wall time on the harness's clock.
fn timed(
    node: &dyn Node,
    script: &str,
    timeout: Duration,
) -> Result<(crate::node::Output, f64), MethodError> {
    let t = Instant::now();
    let out = node.sh(script, timeout)?;
    Ok((out, t.elapsed().as_secs_f64()))
}

/// Start a page server on the destination into `dir` (parent `parent`, relative), port `port`.
fn page_server(
    cx: &MigrationContext<'_>,
    dir: &str,
    parent: Option<&str>,
    port: u16,
) -> Result<(), MethodError> {
    let dst = cx.provider.destination();
    let parent = parent
        .map(|p| format!(" --prev-images-dir {}", shell_quote(p)))
        .unwrap_or_default();
    let d = shell_quote(dir);
    let script = format!(
        "mkdir -p {d} && {criu} page-server -D {d}{parent} --address {addr} --port {port} -v4 -o ps.log --daemon --pidfile {d}/ps.pid </dev/null >/dev/null 2>&1",
        criu = shell_quote(&dst.criu()),
        addr = shell_quote(dst.addr()),
    );
    let out = dst.sh(&script, Duration::from_secs(60))?;
    if !out.success() {
        return Err(step_failed(
            "criu page-server",
            dst,
            &out,
            &format!("{dir}/ps.log"),
        ));
    }
    Ok(())
}

/// A dump (or pre-dump) of `pid` on the source into `dir`, pages to the page server.
fn dump_to_page_server(
    cx: &MigrationContext<'_>,
    what: &str,
    pid: i32,
    dir: &str,
    parent: Option<&str>,
    port: u16,
) -> Result<(DumpStats, f64), MethodError> {
    let (src, dst) = (cx.provider.source(), cx.provider.destination());
    let d = shell_quote(dir);
    // memory tracking for every round of a pre-copy, and for a final dump that has a parent
    let extra = match parent {
        Some(p) => format!(" --track-mem --prev-images-dir {}", shell_quote(p)),
        None if what == "pre-dump" => " --track-mem".into(),
        None => String::new(),
    };
    let script = format!(
        "mkdir -p {d} && {criu} {what} -t {pid} -D {d}{extra} --page-server --address {addr} --port {port} -v4 -o {what}.log </dev/null >/dev/null 2>&1",
        criu = shell_quote(&src.criu()),
        addr = shell_quote(dst.addr()),
    );
    let (out, secs) = timed(src, &script, cx.timeout)?;
    if !out.success() {
        // the page server waits for a dump that will not come
        let _ = dst.sh(
            &format!(
                "kill $(cat {}/ps.pid 2>/dev/null) 2>/dev/null; true",
                shell_quote(&dst_dir_of(cx, dir))
            ),
            Duration::from_secs(30),
        );
        return Err(step_failed(
            &format!("criu {what}"),
            src,
            &out,
            &format!("{dir}/{what}.log"),
        ));
    }
    Ok((dump_stats(src, dir).unwrap_or_default(), secs))
}

/// The destination's directory that mirrors the source's `dir` (same suffix after the
/// migration's own directory).
fn dst_dir_of(cx: &MigrationContext<'_>, dir: &str) -> String {
    let d = Dirs::new(cx);
    format!("{}{}", d.dst, dir.strip_prefix(&d.src).unwrap_or(""))
}

/// Copy the source's images of `src_dir` into `dst_dir` (through the shared directory) and
/// restore there; (copy seconds, restore seconds, destination pid).
fn copy_and_restore(
    cx: &MigrationContext<'_>,
    src_dir: &str,
    dst_dir: &str,
    lazy: bool,
) -> Result<(f64, f64, Option<i32>), MethodError> {
    let dst = cx.provider.destination();
    let (s, d) = (shell_quote(src_dir), shell_quote(dst_dir));
    let criu = shell_quote(&dst.criu());
    let (copy_out, copy_secs) = timed(
        dst,
        &format!("mkdir -p {d} && cp {s}/*.img {d}/"),
        cx.timeout,
    )?;
    if !copy_out.success() {
        return Err(MethodError::Failed(format!(
            "plain CRIU: copying the images {src_dir} -> {dst_dir} on {}: {}",
            dst.describe(),
            copy_out.tail(3)
        )));
    }
    if lazy {
        let port = cx_port_lazy(cx);
        let addr = shell_quote(cx.provider.source().addr());
        let out = dst.sh(
            &format!("{criu} lazy-pages --page-server --address {addr} --port {port} -D {d} -v4 -o lazy.log --daemon --pidfile {d}/lazy.pid </dev/null >/dev/null 2>&1"),
            Duration::from_secs(60),
        )?;
        if !out.success() {
            return Err(step_failed(
                "criu lazy-pages",
                dst,
                &out,
                &format!("{dst_dir}/lazy.log"),
            ));
        }
    }
    let lazy_arg = if lazy { " --lazy-pages" } else { "" };
    let (out, restore_secs) = timed(
        dst,
        &format!("{criu} restore -D {d}{lazy_arg} -d -v4 -o restore.log --pidfile {d}/restore.pid </dev/null >/dev/null 2>&1"),
        cx.timeout,
    )?;
    if !out.success() {
        return Err(step_failed(
            "criu restore",
            dst,
            &out,
            &format!("{dst_dir}/restore.log"),
        ));
    }
    let pid = dst
        .read_file(&format!("{dst_dir}/restore.pid"))
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok());
    Ok((copy_secs, restore_secs, pid))
}

fn cx_port_lazy(cx: &MigrationContext<'_>) -> u16 {
    Dirs::new(cx).port + 15
}

fn figures(
    total: f64,
    downtime: f64,
    last: &DumpStats,
    restore: &Option<RestoreStats>,
    pages: u64,
    used: &str,
) -> Figures {
    Figures {
        total_secs: Some(total),
        frozen_secs: Some(last.frozen_time_us as f64 / 1e6),
        restore_secs: restore.as_ref().map(|r| r.restore_time_us as f64 / 1e6),
        downtime_secs: Some(downtime),
        pages_sent: Some(pages),
        memory_bytes_sent: Some(pages * 4096),
        strategy_used: Some(used.into()),
        ..Default::default()
    }
}

/// Plain CRIU stop-and-copy: page-server dump, copy, restore.
#[derive(Debug, Clone, Copy)]
pub struct CriuStopCopy;

impl Method for CriuStopCopy {
    fn name(&self) -> String {
        "criu stop-copy".into()
    }
    fn tool(&self) -> Tool {
        Tool::Criu
    }
    fn twin(&self) -> Option<String> {
        None
    }
    fn unsupported(&self, s: &Capabilities, d: &Capabilities) -> Option<String> {
        strategy_unsupported("stop-copy", s, d)
    }
    fn migrate(&self, cx: &MigrationContext<'_>, w: &Workload) -> Result<Moved, MethodError> {
        let dirs = Dirs::new(cx);
        let r = (|| {
            page_server(cx, &dirs.dst, None, dirs.port)?;
            let (st, dump_secs) =
                dump_to_page_server(cx, "dump", w.source_pid, &dirs.src, None, dirs.port)?;
            let (copy_secs, restore_wall, pid) = copy_and_restore(cx, &dirs.src, &dirs.dst, false)?;
            let rs = restore_stats(cx.provider.destination(), &dirs.dst);
            let total = dump_secs + copy_secs + restore_wall;
            Ok(Moved {
                figures: figures(
                    total,
                    total,
                    &st,
                    &rs,
                    st.pages_written,
                    "plain CRIU stop-copy",
                ),
                destination_pid: pid,
                haul_report: None,
                criu: Some(CriuDetail {
                    dump_secs,
                    copy_secs,
                    restore_wall_secs: restore_wall,
                    dump: Some(st),
                    restore: rs,
                    ..Default::default()
                }),
            })
        })();
        dirs.remove(cx);
        r
    }
}

/// Plain CRIU post-copy: lazy dump, lazy-pages daemon, lazy restore.
#[derive(Debug, Clone, Copy)]
pub struct CriuPostCopy;

impl Method for CriuPostCopy {
    fn name(&self) -> String {
        "criu post-copy".into()
    }
    fn tool(&self) -> Tool {
        Tool::Criu
    }
    fn twin(&self) -> Option<String> {
        None
    }
    fn unsupported(&self, s: &Capabilities, d: &Capabilities) -> Option<String> {
        strategy_unsupported("post-copy", s, d)
    }
    fn migrate(&self, cx: &MigrationContext<'_>, w: &Workload) -> Result<Moved, MethodError> {
        let dirs = Dirs::new(cx);
        let src = cx.provider.source();
        let r = (|| {
            let port = cx_port_lazy(cx);
            let s = shell_quote(&dirs.src);
            let rc = format!("{}/dump.rc", dirs.src);
            // the dump stays after the freeze, serving pages, until every page was pulled
            let script = format!(
                "{criu} dump -t {pid} -D {s} --lazy-pages --address {addr} --port {port} -v4 -o dump.log </dev/null >/dev/null 2>&1; echo $? > {rcq}",
                criu = shell_quote(&src.criu()),
                pid = w.source_pid,
                addr = shell_quote(src.addr()),
                rcq = shell_quote(&rc),
            );
            src.sh_ok(&format!("mkdir -p {s}"), Duration::from_secs(60))?;
            let t0 = Instant::now();
            let dumper = src.spawn(
                &["sh".into(), "-c".into(), script],
                &format!("{}/dump.out", dirs.src),
            )?;
            let log = shell_quote(&format!("{}/dump.log", dirs.src));
            let ready = src.wait_until(
                &format!("grep -q 'Running status-ready scripts' {log} 2>/dev/null"),
                Some(dumper),
                cx.timeout,
            )?;
            if !ready {
                let out = crate::node::Output::default();
                src.terminate(dumper);
                return Err(step_failed(
                    "criu dump --lazy-pages (never ready to serve pages)",
                    src,
                    &out,
                    &format!("{}/dump.log", dirs.src),
                ));
            }
            let dump_secs = t0.elapsed().as_secs_f64();
            let (copy_secs, restore_wall, pid) =
                match copy_and_restore(cx, &dirs.src, &dirs.dst, true) {
                    Ok(x) => x,
                    Err(e) => {
                        src.terminate(dumper);
                        return Err(e);
                    }
                };
            let downtime = t0.elapsed().as_secs_f64();
            let done =
                src.wait_until(&format!("test -s {}", shell_quote(&rc)), None, cx.timeout)?;
            let lazy_done = t0.elapsed().as_secs_f64();
            let code = src
                .read_file(&rc)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string());
            if !done || code.as_deref() != Some("0") {
                src.terminate(dumper);
                return Err(MethodError::Failed(format!(
                    "plain CRIU: criu dump --lazy-pages ended with {} after {lazy_done:.1} s: {}",
                    code.unwrap_or_else(|| "no exit status (still serving pages)".into()),
                    log_errors(src, &format!("{}/dump.log", dirs.src))
                )));
            }
            let st = dump_stats(src, &dirs.src).unwrap_or_default();
            let rs = restore_stats(cx.provider.destination(), &dirs.dst);
            let mut f = figures(
                lazy_done,
                downtime,
                &st,
                &rs,
                st.pages_written + st.pages_lazy,
                "plain CRIU lazy pages",
            );
            // a lazy dump's stats count no pages (they move after it): unknown, not zero
            if st.pages_written + st.pages_lazy == 0 {
                f.pages_sent = None;
                f.memory_bytes_sent = None;
            }
            // CRIU's frozen time of a lazy dump is wrong (negative); the harness's clock it is
            f.frozen_secs = Some(downtime);
            f.postcopy_window_secs = Some(lazy_done - downtime);
            Ok(Moved {
                figures: f,
                destination_pid: pid,
                haul_report: None,
                criu: Some(CriuDetail {
                    dump_secs,
                    copy_secs,
                    restore_wall_secs: restore_wall,
                    lazy_done_secs: Some(lazy_done),
                    dump: Some(st),
                    restore: rs,
                    ..Default::default()
                }),
            })
        })();
        dirs.remove(cx);
        r
    }
}

/// Plain CRIU pre-copy: pre-dump rounds to a page server, then the final dump.
#[derive(Debug, Clone, Copy)]
pub struct CriuPreCopy;

/// P.Haul's rule: after a round that wrote `written` pages (the one before wrote `before`),
/// whether to stop pre-dumping.
pub fn converged(round: u32, written: u64, before: Option<u64>, max_rounds: u32) -> bool {
    written <= 64 || before.is_some_and(|b| written as f64 > b as f64 * 1.1) || round >= max_rounds
}

impl Method for CriuPreCopy {
    fn name(&self) -> String {
        "criu pre-copy".into()
    }
    fn tool(&self) -> Tool {
        Tool::Criu
    }
    fn twin(&self) -> Option<String> {
        None
    }
    fn unsupported(&self, s: &Capabilities, d: &Capabilities) -> Option<String> {
        strategy_unsupported("pre-copy", s, d)
    }
    fn migrate(&self, cx: &MigrationContext<'_>, w: &Workload) -> Result<Moved, MethodError> {
        let dirs = Dirs::new(cx);
        let r = (|| {
            let t0 = Instant::now();
            let mut pre: Vec<DumpStats> = Vec::new();
            let mut rounds: Vec<Round> = Vec::new();
            let mut before = None;
            let max = cx.scenario.criu_max_rounds.max(1);
            for i in 1..=max {
                cx.cancel.check().map_err(crate::node::NodeError::from)?;
                let parent = (i > 1).then(|| format!("../{}", i - 1));
                let (s, d) = (format!("{}/{i}", dirs.src), format!("{}/{i}", dirs.dst));
                let port = dirs.port + i as u16;
                page_server(cx, &d, parent.as_deref(), port)?;
                let (st, secs) =
                    dump_to_page_server(cx, "pre-dump", w.source_pid, &s, parent.as_deref(), port)?;
                rounds.push(Round {
                    round: i,
                    pages: st.pages_written,
                    bytes: st.pages_written * 4096,
                    secs,
                });
                let stop = converged(i, st.pages_written, before, max);
                before = Some(st.pages_written);
                pre.push(st);
                if stop {
                    break;
                }
            }
            let last = pre.len();
            let parent = format!("../{last}");
            let (s, d) = (format!("{}/final", dirs.src), format!("{}/final", dirs.dst));
            let port = dirs.port;
            page_server(cx, &d, Some(&parent), port)?;
            let t_final = Instant::now();
            let (st, dump_secs) =
                dump_to_page_server(cx, "dump", w.source_pid, &s, Some(&parent), port)?;
            let (copy_secs, restore_wall, pid) = copy_and_restore(cx, &s, &d, false)?;
            let downtime = t_final.elapsed().as_secs_f64();
            let rs = restore_stats(cx.provider.destination(), &d);
            let pages = pre.iter().map(|p| p.pages_written).sum::<u64>() + st.pages_written;
            let mut f = figures(
                t0.elapsed().as_secs_f64(),
                downtime,
                &st,
                &rs,
                pages,
                "plain CRIU pre-dump loop",
            );
            f.frozen_secs = Some(
                pre.iter()
                    .map(|p| p.frozen_time_us as f64 / 1e6)
                    .sum::<f64>()
                    + st.frozen_time_us as f64 / 1e6,
            );
            f.rounds = rounds;
            Ok(Moved {
                figures: f,
                destination_pid: pid,
                haul_report: None,
                criu: Some(CriuDetail {
                    pre_dumps: pre,
                    dump_secs,
                    copy_secs,
                    restore_wall_secs: restore_wall,
                    dump: Some(st),
                    restore: rs,
                    ..Default::default()
                }),
            })
        })();
        dirs.remove(cx);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_haul_s_convergence() {
        assert!(!converged(1, 16_000, None, 8));
        assert!(!converged(2, 900, Some(16_000), 8));
        assert!(converged(3, 1_000, Some(900), 8), "grew by more than 10 %");
        assert!(converged(3, 60, Some(900), 8), "64 pages or fewer");
        assert!(converged(8, 800, Some(900), 8), "the last round");
    }

    #[test]
    fn twins_by_name() {
        for n in ["criu stop-copy", "criu post-copy", "criu pre-copy"] {
            assert_eq!(twin_named(n).unwrap().name(), n);
        }
        assert!(twin_named("criu warp").is_none());
    }
}
