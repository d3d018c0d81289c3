//! mt-threads: a multi-threaded workload whose threads check their own state after migration.
//!
//! ```text
//! mt-threads [--threads N] [--ballast BYTES] [--words N] [--pause-us US] [--log F] [--stop-file F]
//! ```
//!
//! N worker threads (named `mt-w<i>`) each own a ballast (written once at start, a function of
//! the worker's seed) and a ring of words that iteration n overwrites at `n % words` with a
//! function of (seed, n); every iteration also bumps a counter shared under a mutex. The main
//! thread logs a heartbeat `t <sec>.<nsec> <iterations>` every 10 ms and, for each worker,
//! `worker <i> tid <tid> ballast 0x<address> bytes <n>` at start. When the stop file appears,
//! every worker checks, and the log gets a `Fail:` line for each thing wrong:
//! - its thread id is the one it had at start (CRIU restores tids in the pid namespace) and
//!   its name is still `mt-w<i>`;
//! - every ballast word and every ring word is what its seed and iteration count imply;
//!
//! and the main thread checks that the process still has N+1 threads and that the shared
//! counter equals the sum of the workers' own counts. Then `Summary: threads=N
//! iterations=<n> failures=<k>`, `Finish`, exit 0 when nothing failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{MT_THREADS_LOG, MT_THREADS_STOP};
use haul_workloads::mtouch_spec::parse_size;
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Threads with verifiable memory, checked after migration.
#[derive(Debug, Clone, Parser)]
#[command(name = "mt-threads", version)]
struct Args {
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Ballast per worker, bytes (k/m/g suffixes).
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    ballast: u64,
    /// Words in each worker's ring.
    #[arg(long, default_value_t = 4096)]
    words: u64,
    /// Microseconds each worker sleeps between iterations.
    #[arg(long, default_value_t = 1000)]
    pause_us: u64,
    /// Log file.
    #[arg(long, default_value = MT_THREADS_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = MT_THREADS_STOP)]
    stop_file: PathBuf,
}

/// A value derived from a seed and an index (splitmix64).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// The ring word `j` after `n` iterations: the last iteration m <= n with m % words == j.
fn ring_expected(seed: u64, words: u64, n: u64, j: u64) -> u64 {
    let back = (n % words + words - j) % words;
    match n.checked_sub(back) {
        Some(m) if m >= 1 => mix(seed, m),
        _ => 0,
    }
}

fn gettid() -> i64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// What a worker tells the main thread at start.
struct WorkerInfo {
    index: usize,
    tid: i64,
    ballast_addr: usize,
    ballast_bytes: usize,
}

/// Shared between the workers and the main thread.
struct Shared {
    stop: AtomicBool,
    total: Mutex<u64>,
    iterations: Vec<AtomicU64>,
}

fn worker(
    index: usize,
    args: &Args,
    shared: &Shared,
    ready: mpsc::Sender<WorkerInfo>,
) -> (u64, Vec<String>) {
    let seed = mix(0x5EED, index as u64 + 1);
    let ballast: Vec<u64> = (0..(args.ballast / 8).max(1))
        .map(|j| mix(seed ^ 0xBA11A57, j))
        .collect();
    let words = args.words.max(1);
    let mut ring = vec![0u64; words as usize];
    let tid = gettid();
    let name = format!("mt-w{index}");
    let _ = ready.send(WorkerInfo {
        index,
        tid,
        ballast_addr: ballast.as_ptr() as usize,
        ballast_bytes: ballast.len() * 8,
    });
    drop(ready);
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        n += 1;
        ring[(n % words) as usize] = mix(seed, n);
        *shared.total.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        shared.iterations[index].store(n, Ordering::Release);
        if args.pause_us > 0 {
            std::thread::sleep(Duration::from_micros(args.pause_us));
        }
    }

    let mut fails = Vec::new();
    let now_tid = gettid();
    if now_tid != tid {
        fails.push(format!("worker {index}: thread id is {now_tid}, was {tid}"));
    }
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    if comm.trim_end() != name {
        fails.push(format!(
            "worker {index}: thread name is {:?}, was {name:?}",
            comm.trim_end()
        ));
    }
    let bad: Vec<usize> = (0..ballast.len())
        .filter(|&j| {
            // SAFETY: j < len; volatile because the point is what memory really holds now.
            let v = unsafe { std::ptr::read_volatile(ballast.as_ptr().add(j)) };
            v != mix(seed ^ 0xBA11A57, j as u64)
        })
        .collect();
    if let Some(&j) = bad.first() {
        // SAFETY: j < len, as above.
        let found = unsafe { std::ptr::read_volatile(ballast.as_ptr().add(j)) };
        fails.push(format!(
            "worker {index}: {} ballast words differ, first word {j} is {found:#x}, expected {:#x}",
            bad.len(),
            mix(seed ^ 0xBA11A57, j as u64)
        ));
    }
    let bad_ring: Vec<u64> = (0..words)
        .filter(|&j| ring[j as usize] != ring_expected(seed, words, n, j))
        .collect();
    if let Some(&j) = bad_ring.first() {
        fails.push(format!(
            "worker {index}: {} ring words differ after {n} iterations, first word {j} is {:#x}, expected {:#x}",
            bad_ring.len(),
            ring[j as usize],
            ring_expected(seed, words, n, j)
        ));
    }
    (n, fails)
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("mt-threads", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> std::io::Result<bool> {
    let n = args.threads.max(1);
    log.line(format_args!(
        "mt-threads: pid {}, {n} workers",
        std::process::id()
    ))?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        total: Mutex::new(0),
        iterations: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let (tx, rx) = mpsc::channel();
    let args = Arc::new(args.clone());
    let mut handles = Vec::new();
    for i in 0..n {
        let (shared, args, tx) = (shared.clone(), args.clone(), tx.clone());
        let h = std::thread::Builder::new()
            .name(format!("mt-w{i}"))
            .spawn(move || worker(i, &args, &shared, tx));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                let _ = reporter.report(StartCode::Failed);
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut infos: Vec<WorkerInfo> = rx.iter().collect();
    infos.sort_by_key(|w| w.index);
    for w in &infos {
        log.line(format_args!(
            "worker {} tid {} ballast {:#x} bytes {}",
            w.index, w.tid, w.ballast_addr, w.ballast_bytes
        ))?;
    }
    reporter.report(StartCode::Ok)?;

    let stop = StopFile::new(&args.stop_file);
    while !stop.requested() {
        std::thread::sleep(Duration::from_millis(10));
        let sum: u64 = shared
            .iterations
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum();
        log.tick(Timestamp::now(), sum, 1)?;
    }

    let mut fails = Vec::new();
    let tasks = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if tasks != n + 1 {
        fails.push(format!(
            "the process has {tasks} threads, expected {}",
            n + 1
        ));
    }
    shared.stop.store(true, Ordering::Release);
    let mut iterations = 0u64;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok((count, worker_fails)) => {
                iterations += count;
                fails.extend(worker_fails);
            }
            Err(_) => fails.push(format!("worker {i} panicked")),
        }
    }
    let total = *shared.total.lock().unwrap_or_else(|e| e.into_inner());
    if total != iterations {
        fails.push(format!(
            "the shared counter is {total}, the workers counted {iterations} iterations"
        ));
    }
    for f in &fails {
        log.fail(f)?;
    }
    log.summary(format_args!(
        "threads={n} iterations={iterations} failures={}",
        fails.len()
    ))?;
    log.finish()?;
    Ok(fails.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_model_matches_a_simulation() {
        let (seed, words) = (42, 7);
        let mut ring = vec![0u64; words as usize];
        for n in 0..50u64 {
            if n > 0 {
                ring[(n % words) as usize] = mix(seed, n);
            }
            for j in 0..words {
                assert_eq!(
                    ring[j as usize],
                    ring_expected(seed, words, n, j),
                    "n={n} j={j}"
                );
            }
        }
    }
}
