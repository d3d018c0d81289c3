//! The CPU time a tree uses: the baseline a CPU quota is a share of.
//!
//! A throttle level is the share of the tree's CPU time taken away (QEMU's meaning). A CPU
//! quota is absolute (CPU time per period), so haul measures how many CPUs the tree used
//! before throttling (its runtime per thread, `/proc/PID/task/TID/schedstat`, in ns) and gives
//! it `(1 - level) x baseline`. A tree that dirtied at 200 MiB/s on 0.6 CPU then dirties at
//! about 60 MiB/s on 0.18 CPU at 70 %.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::migrate::tree;

/// The runtime of every thread of a tree at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// (pid, tid) -> runtime (ns).
    runtime_ns: BTreeMap<(i32, i32), u64>,
}

impl CpuSample {
    /// Reads every thread of the tree rooted at `root` now (threads that vanish while read
    /// are skipped).
    pub fn take(root: i32) -> CpuSample {
        let mut runtime_ns = BTreeMap::new();
        for pid in tree::descendants(root) {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if let Some(ns) = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                {
                    runtime_ns.insert((pid, tid), ns);
                }
            }
        }
        CpuSample {
            at: Instant::now(),
            runtime_ns,
        }
    }

    /// The tree's CPU use between `earlier` and this sample, in CPUs (CPU-seconds per
    /// second): threads in both samples count their difference, threads born since count
    /// their whole runtime, threads that ended are lost (a short undercount).
    pub fn cpus_since(&self, earlier: &CpuSample) -> f64 {
        let secs = self.at.duration_since(earlier.at).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        let used: u64 = self
            .runtime_ns
            .iter()
            .map(|(k, now)| now.saturating_sub(earlier.runtime_ns.get(k).copied().unwrap_or(0)))
            .sum();
        used as f64 / 1e9 / secs
    }

    /// Seconds since `earlier`.
    pub fn secs_since(&self, earlier: &CpuSample) -> f64 {
        self.at.duration_since(earlier.at).as_secs_f64()
    }

    /// Threads seen.
    pub fn threads(&self) -> usize {
        self.runtime_ns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU time.
    fn thread_cpu() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec to the pointer, which points to ours.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }

    #[test]
    fn the_cpu_a_thread_burns_is_counted() {
        let me = std::process::id() as i32;
        let a = CpuSample::take(me);
        assert!(a.threads() >= 1);
        // burn 100 ms of this thread's own CPU time, however long the shared machine takes
        let t0 = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - t0 < 0.1 {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        let b = CpuSample::take(me);
        let used = b.cpus_since(&a) * b.secs_since(&a);
        // at least what this thread burnt (other test threads add theirs), at most all CPUs
        assert!(used >= 0.095, "{used}");
        assert!(b.cpus_since(&a) <= 1.1 * num_cpus(), "{}", b.cpus_since(&a));
    }

    fn num_cpus() -> f64 {
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
    }
}
