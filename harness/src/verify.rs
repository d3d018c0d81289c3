//! After a move, the same check for every method: the workload is gone from the source,
//! runs on the destination, keeps touching memory there, and finds every page intact when
//! told to stop; after a failed move, the same on the source (it must have been resumed
//! there). Whatever is left of it afterwards is killed.

use std::time::Duration;

use crate::case::WorkloadCase;
use crate::node::Node;
use crate::provider::Provider;
use crate::record::{Check, Figures};
use crate::workload::{self, Workload};

/// Check `w` after a move that left it as `dest_pid` on the destination (or failed with
/// `error`); fills `check`, the observed downtime in `figures`, and `error` if it failed.
#[allow(clippy::too_many_arguments)]
pub fn after_move(
    provider: &dyn Provider,
    w: &Workload,
    case: &WorkloadCase,
    dest_pid: Option<i32>,
    after_secs: f64,
    timeout: Duration,
    check: &mut Check,
    figures: &mut Figures,
    error: &mut Option<String>,
) {
    let (src, dst) = (provider.source(), provider.destination());
    check.left_on_source = workload::alive(src, w.source_pid);
    let (node, pid): (&dyn Node, i32) = match dest_pid {
        Some(p) if workload::alive(dst, p) && w.is_at(dst, p, &case.program) => {
            check.destination_pid = Some(p);
            (dst, p)
        }
        _ => {
            if error.is_none() {
                *error = Some(format!(
                    "the workload does not run on the destination (pid {dest_pid:?})"
                ));
            }
            (src, w.source_pid)
        }
    };
    if check.left_on_source && check.destination_pid.is_some() {
        error.get_or_insert_with(|| {
            "the workload still runs on the source after the migration".into()
        });
    }
    // after a failed migration the workload should resume on the source at once; one that
    // does not (still frozen by a stuck dump) is not waited for long
    let failed = error.is_some();
    let check_timeout = timeout.min(Duration::from_secs(120));
    let wait = if failed {
        check_timeout.min(Duration::from_secs(10))
    } else {
        check_timeout
    };
    let before = w.touches(node);
    let touching = match w.wait_touching(node, pid, before, 3, after_secs, wait) {
        Ok(n) => {
            check.touches_after = n - before;
            true
        }
        Err(e) => {
            error.get_or_insert(e.to_string());
            false
        }
    };
    if touching || !failed {
        match w.stop_and_check(node, check_timeout) {
            Ok(v) => {
                check.finished = v.finished;
                check.mismatches = v.mismatches;
                check.touches = v.touches;
                check.passed = v.passed;
                figures.observed_downtime_secs = Some(v.largest_gap.as_secs_f64());
                if !v.passed {
                    error.get_or_insert_with(|| format!("the workload's check failed: {v}"));
                }
            }
            Err(e) => {
                error.get_or_insert(e.to_string());
            }
        }
    }
    // whatever is left of it goes
    let _ = node.wait_until(
        &format!("! kill -0 {pid} 2>/dev/null"),
        None,
        Duration::from_secs(5),
    );
    for (n, p) in [(src, w.source_pid), (dst, dest_pid.unwrap_or(0))] {
        if p > 0 && workload::alive(n, p) && w.is_at(n, p, &case.program) {
            workload::kill(n, p);
        }
    }
}
