//! mtouch: P.Haul's memory toucher, with dirty rates, touch patterns and a timestamp per touch.
//!
//! ```text
//! mtouch LOG SIZE:PRE:PAUSE [--rate BYTES/s|max] [--pattern random|sequential|hot:PERCENT]
//!        [--rate-log FILE] [--cpu-per-page USEC] [--fill] [--no-hugepages]
//! ```
//!
//! Maps SIZE bytes of anonymous memory, pre-touches PRE/4096 random pages (every page in order
//! when PRE >= SIZE), then touches one page every PAUSE microseconds until the file
//! `mem-touch-stop` appears in its working directory. Each touch writes a random non-zero
//! byte to the page and to a one-byte-per-page shadow, and logs `t <sec>.<nsec> <pfn>`. On
//! stop it compares every page with the shadow, logs `\tMismatch <pfn> <expected> != <found>`
//! per differing page (the first 1000), `Checked ...: <n> mismatches`, then `Finish`, and
//! exits 0 when nothing differed. The log format is in `haul_workloads::mtouch_log`.
//!
//! Run by hand (no launcher), it does what P.Haul's `mem-touch` did: starts itself as pid 1 of
//! a new pid namespace in its own session, in the current directory, and prints
//! `Child <pid> done, code <C>` (`O` running, `L` log not opened, `M` mmap failed). Under
//! `haul-launch` (which sets `HAUL_START_FD`), as pid 1 of a namespace some other launcher
//! made, or with `--foreground`, it runs in place (reporting its code on fd 3 when there is
//! one).
//!
//! Beyond the original: `--rate` paces touches to a dirty rate in bytes per second (batched,
//! one `t` line per millisecond at most, with the batch's page count as a fourth field) or
//! `max` for as fast as memory allows; `--pattern` chooses sequential pages or a hot set;
//! `--fill` writes whole pages (real memory bandwidth) and checks every byte.
//!
//! For throttling (issue #15): `--rate-log FILE` writes what was really dirtied each second
//! (`haul_workloads::rate_log`), so a test sees the rate drop under a throttle and return after
//! it; `--cpu-per-page USEC` spends that much of the thread's own CPU time (not wall time) per
//! touched page, like a program that computes what it writes: its dirty rate then scales with
//! the CPU it gets, which is what a CPU quota acts on (a toucher that only stores one byte per
//! page dirties 64 MiB/s on 0.2 % of a CPU and no quota could slow it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_launch::{launch, LaunchSpec};
use haul_workloads::files::MTOUCH_STOP;
use haul_workloads::mtouch_spec::{
    PageChooser, Pattern, PreTouch, Rate, TouchRng, TouchSpec, PAGE_SIZE,
};
use haul_workloads::rate_log::RateMeter;
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// Touch memory until told to stop, then check every page.
#[derive(Debug, Parser)]
#[command(name = "mtouch", version)]
struct Args {
    /// Log file (relative to the working directory).
    log: PathBuf,
    /// SIZE:PRE:PAUSE, e.g. 256m:64m:100000 (k/m/g suffixes; PAUSE in microseconds).
    #[arg(value_name = "SIZE:PRE:PAUSE")]
    spec: TouchSpec,
    /// Dirty rate in bytes per second (k/m/g suffixes), or `max`; replaces PAUSE.
    #[arg(long, value_name = "BYTES/s|max")]
    rate: Option<Rate>,
    /// Which pages the loop touches: random, sequential, or hot:PERCENT (random pages within
    /// the first PERCENT of the mapping).
    #[arg(long, default_value = "random")]
    pattern: Pattern,
    /// Write whole pages instead of their first byte, and check every byte.
    #[arg(long)]
    fill: bool,
    /// Also log the dirty rate, once a second, to this file (see `haul_workloads::rate_log`).
    #[arg(long, value_name = "FILE")]
    rate_log: Option<PathBuf>,
    /// CPU time (of this thread, in microseconds) spent per touched page, like a program that
    /// computes what it writes; the dirty rate then follows the CPU share the toucher gets.
    #[arg(long, value_name = "USEC", default_value_t = 0.0)]
    cpu_per_page: f64,
    /// Ask for small pages (MADV_NOHUGEPAGE), so that dirty tracking works per 4 KiB page.
    #[arg(long)]
    no_hugepages: bool,
    /// The stop file to poll for.
    #[arg(long, value_name = "PATH", default_value = MTOUCH_STOP)]
    stop_file: PathBuf,
    /// Random seed (default: from the clock and pid).
    #[arg(long)]
    seed: Option<u64>,
    /// Run in place even without a launcher (no new pid namespace, no `Child` line).
    #[arg(long)]
    foreground: bool,
}

/// The touched anonymous mapping.
struct Arena {
    base: *mut u8,
    pages: u64,
}

impl Arena {
    fn map(pages: u64, no_hugepages: bool) -> std::io::Result<Arena> {
        let len = pages as usize * PAGE_SIZE as usize;
        // SAFETY: an anonymous private mapping at an address the kernel picks; nothing else
        // refers to it until we store the pointer.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        if no_hugepages {
            // SAFETY: madvise on the mapping just created, over its exact length.
            unsafe {
                libc::madvise(base, len, libc::MADV_NOHUGEPAGE);
            }
        }
        Ok(Arena {
            base: base.cast(),
            pages,
        })
    }

    fn page_ptr(&self, pfn: u64) -> *mut u8 {
        assert!(pfn < self.pages, "page {pfn} outside the mapping");
        // SAFETY: pfn < pages, so the offset stays inside the mapping.
        unsafe { self.base.add((pfn * PAGE_SIZE) as usize) }
    }

    fn set(&self, pfn: u64, value: u8) {
        // SAFETY: page_ptr is inside our mapping; volatile so that the store is never elided
        // (the page must really be dirtied).
        unsafe { self.page_ptr(pfn).write_volatile(value) }
    }

    fn fill(&self, pfn: u64, value: u8) {
        // SAFETY: the page is inside our mapping (page_ptr checks) and 4096 bytes long. A plain
        // memset (the fastest way to dirty memory) cannot be elided: the mapping came from
        // mmap, so the compiler must assume others read it.
        unsafe { self.page_ptr(pfn).write_bytes(value, PAGE_SIZE as usize) }
    }

    fn get(&self, pfn: u64) -> u8 {
        // SAFETY: page_ptr is inside our mapping; volatile because the point is to see what
        // is really there (a migration, or a test through /proc/PID/mem, may have changed it).
        unsafe { self.page_ptr(pfn).read_volatile() }
    }

    /// The offset of the first byte of the page that differs from `value`.
    fn first_difference(&self, pfn: u64, value: u8) -> Option<usize> {
        let want = u64::from_ne_bytes([value; 8]);
        let words = self.page_ptr(pfn).cast::<u64>();
        let word = (0..(PAGE_SIZE / 8) as usize).find(|&i| {
            // SAFETY: i < 512: inside the page, inside our mapping, 8-byte aligned (pages are
            // 4096-byte aligned); volatile to see what memory really holds.
            unsafe { words.add(i).read_volatile() != want }
        })?;
        // SAFETY: as above, for the word found.
        let bytes = unsafe { words.add(word).read_volatile() }.to_ne_bytes();
        bytes.iter().position(|b| *b != value).map(|b| word * 8 + b)
    }
}

/// The toucher's state: memory, shadow, page choice, and what the loop reports.
struct Toucher {
    arena: Arena,
    shadow: Vec<u8>,
    rng: TouchRng,
    chooser: PageChooser,
    fill: bool,
    /// Thread CPU time to spend per page in the loop.
    cpu_per_page: Duration,
    rate: Option<RateMeter>,
}

/// This thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer, which points to ours.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Toucher {
    /// The loop's work for one page: the CPU it costs, then the touch, then the count.
    fn touch_in_loop(&mut self) -> std::io::Result<u64> {
        if !self.cpu_per_page.is_zero() {
            let start = thread_cpu_time();
            let end = start + self.cpu_per_page;
            let mut x = 0u64;
            loop {
                let now = thread_cpu_time();
                // A thread's CPU clock restarts near zero when CRIU restores it (the restored
                // thread is a new one): a freeze inside this loop would otherwise spin until the
                // new thread has used as much CPU as the old one had (41 s and more in the VMs).
                if now >= end || now < start {
                    break;
                }
                for _ in 0..64 {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
        }
        let pfn = self.touch_next();
        if let Some(r) = self.rate.as_mut() {
            r.add(1)?;
        }
        Ok(pfn)
    }

    fn touch(&mut self, pfn: u64) {
        let value = self.rng.nonzero_byte();
        if self.fill {
            self.arena.fill(pfn, value);
        } else {
            self.arena.set(pfn, value);
        }
        self.shadow[pfn as usize] = value;
    }

    fn touch_next(&mut self) -> u64 {
        let pfn = self.chooser.next(&mut self.rng);
        self.touch(pfn);
        pfn
    }
}

fn self_launch() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mtouch: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = LaunchSpec::new(exe).args(std::env::args_os().skip(1));
    match launch(&spec) {
        Ok(mut launched) => {
            println!("{}", launched.report_line());
            if launched.started() {
                return ExitCode::SUCCESS;
            }
            println!("Waiting for it");
            let _ = launched.wait_timeout(Duration::from_secs(30));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mtouch: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let reporter = StartReporter::from_env();
    let args = Args::parse();
    // Already pid 1 of a namespace (another launcher, e.g. `unshare -pf setsid mtouch ...`):
    // launching again would nest a namespace that dies with this one.
    if !reporter.is_connected() && !args.foreground && std::process::id() != 1 {
        return self_launch();
    }
    match run(&args, reporter) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mtouch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the toucher; returns the number of mismatching pages.
fn run(args: &Args, reporter: StartReporter) -> std::io::Result<u64> {
    let spec = args.spec;
    let pages = spec.pages();
    let log = match LogWriter::create(&args.log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mtouch: cannot open log {}: {e}", args.log.display());
            reporter.report(StartCode::LogFailed)?;
            return Err(e);
        }
    };
    let pid = std::process::id();
    log.line(format_args!(
        "Mapping {pages} pages ({} MiB), pid {pid}",
        (pages * PAGE_SIZE) >> 20
    ))?;
    let arena = match Arena::map(pages, args.no_hugepages) {
        Ok(a) => a,
        Err(e) => {
            log.line(format_args!("mmap failed: {e}"))?;
            reporter.report(StartCode::MapFailed)?;
            return Err(e);
        }
    };
    log.line(format_args!("Created {:#x} vma", arena.base as usize))?;
    let seed = args.seed.unwrap_or_else(|| {
        let now = Timestamp::now();
        (now.nsec as u64) ^ ((now.sec as u64) << 32) ^ u64::from(pid)
    });
    let mut t = Toucher {
        arena,
        shadow: vec![0u8; pages as usize],
        rng: TouchRng::new(seed),
        chooser: PageChooser::new(args.pattern, pages),
        fill: args.fill,
        cpu_per_page: Duration::from_secs_f64(args.cpu_per_page.max(0.0) / 1e6),
        rate: None,
    };

    log.line(format_args!(
        "Pre-touching {} MiB",
        spec.pre.min(spec.size) >> 20
    ))?;
    match spec.pre_touch() {
        PreTouch::All => (0..pages).for_each(|pfn| t.touch(pfn)),
        PreTouch::Random(n) => {
            for _ in 0..n {
                let pfn = t.rng.below(pages);
                t.touch(pfn);
            }
        }
    }
    log.line(format_args!("Done"))?;
    reporter.report(StartCode::Ok)?;

    log.line(format_args!("Pattern {}", args.pattern))?;
    if let Some(path) = &args.rate_log {
        t.rate = Some(RateMeter::create(path)?);
    }
    if !t.cpu_per_page.is_zero() {
        log.line(format_args!("CPU per page {:.1} usec", args.cpu_per_page))?;
    }
    let stop = StopFile::new(&args.stop_file);
    let rate = args.rate.unwrap_or(Rate::Pause {
        micros: spec.pause_us,
    });
    let touches = match rate {
        Rate::Pause { micros } => {
            log.line(format_args!("Touch 1 page per {micros} usec"))?;
            touch_with_pause(&mut t, &log, &stop, micros)?
        }
        Rate::BytesPerSec(bytes) => {
            let per_sec = Rate::pages_per_sec(bytes);
            log.line(format_args!(
                "Touch {per_sec} pages per sec, {bytes} bytes/s"
            ))?;
            touch_paced(&mut t, &log, &stop, Some(per_sec))?
        }
        Rate::Max => {
            log.line(format_args!("Touch as fast as possible"))?;
            touch_paced(&mut t, &log, &stop, None)?
        }
    };

    let mut mismatches = 0u64;
    for pfn in 0..pages {
        let expected = t.shadow[pfn as usize];
        let found = t.arena.get(pfn);
        let differs =
            found != expected || (t.fill && t.arena.first_difference(pfn, expected).is_some());
        if differs {
            mismatches += 1;
            if mismatches <= 1000 {
                match (found == expected, t.fill) {
                    (true, true) => {
                        let at = t.arena.first_difference(pfn, expected).unwrap_or(0);
                        log.line(format_args!(
                            "\tMismatch {pfn} {expected} != {found} (byte {at} differs)"
                        ))?
                    }
                    _ => log.line(format_args!("\tMismatch {pfn} {expected} != {found}"))?,
                }
            }
        }
    }
    log.line(format_args!(
        "Checked {pages} pages after {touches} touches: {mismatches} mismatches"
    ))?;
    log.line(format_args!("Finish"))?;
    Ok(mismatches)
}

/// P.Haul's loop: sleep PAUSE, touch one page, log it; until the stop file appears.
fn touch_with_pause(
    t: &mut Toucher,
    log: &LogWriter,
    stop: &StopFile,
    micros: u64,
) -> std::io::Result<u64> {
    let mut touches = 0;
    while !stop.requested() {
        if micros > 0 {
            std::thread::sleep(Duration::from_micros(micros));
        }
        let pfn = t.touch_in_loop()?;
        touches += 1;
        log.tick(Timestamp::now(), pfn, 1)?;
    }
    Ok(touches)
}

/// Touches paced to `per_sec` pages per second (`None`: no pacing), in batches; one `t` line
/// per millisecond at most, carrying the batch's last page and its size.
fn touch_paced(
    t: &mut Toucher,
    log: &LogWriter,
    stop: &StopFile,
    per_sec: Option<u64>,
) -> std::io::Result<u64> {
    const LOG_EVERY: Duration = Duration::from_millis(1);
    const STOP_EVERY: Duration = Duration::from_millis(10);
    const MAX_SLEEP: Duration = Duration::from_millis(10);
    let start = Instant::now();
    let mut done = 0u64; // touches counted against the pace
    let mut touches = 0u64;
    let mut pending = 0u64; // touches not yet logged
    let mut last_pfn = 0u64;
    let mut last_log = start;
    let mut last_stop_check = start;
    // At most 10 ms of touches at once: after a freeze (a migration) the backlog is dropped
    // rather than caught up in a burst.
    let backlog_cap = per_sec.map_or(256, |r| (r / 100).max(1));
    loop {
        let now = Instant::now();
        if now.duration_since(last_stop_check) >= STOP_EVERY || per_sec.is_some_and(|r| r < 100) {
            last_stop_check = now;
            if stop.requested() {
                break;
            }
        }
        let due = match per_sec {
            None => backlog_cap,
            Some(r) => {
                let expected =
                    (now.duration_since(start).as_nanos() * u128::from(r) / 1_000_000_000) as u64;
                if expected.saturating_sub(done) > backlog_cap {
                    done = expected - backlog_cap;
                }
                expected.saturating_sub(done)
            }
        };
        if due == 0 {
            let r = per_sec.unwrap_or(1);
            let next = start
                + Duration::from_nanos(((done + 1) as u128 * 1_000_000_000 / u128::from(r)) as u64);
            let idle = next.saturating_duration_since(now);
            // Log what is pending before an idle stretch, so a line's time stays its touches'.
            if pending > 0 && (idle >= LOG_EVERY || now.duration_since(last_log) >= LOG_EVERY) {
                log.tick(Timestamp::now(), last_pfn, pending)?;
                pending = 0;
                last_log = now;
            }
            std::thread::sleep(idle.min(MAX_SLEEP));
            if let Some(r) = t.rate.as_mut() {
                r.flush_if_due(Instant::now())?;
            }
            continue;
        }
        for _ in 0..due {
            last_pfn = t.touch_in_loop()?;
        }
        done += due;
        touches += due;
        pending += due;
        let now = Instant::now();
        if now.duration_since(last_log) >= LOG_EVERY {
            log.tick(Timestamp::now(), last_pfn, pending)?;
            pending = 0;
            last_log = now;
        }
    }
    if pending > 0 {
        log.tick(Timestamp::now(), last_pfn, pending)?;
    }
    Ok(touches)
}
