//! sparse-map: a huge sparse anonymous mapping (`MAP_NORESERVE`) with little of it resident.
//!
//! ```text
//! sparse-map [--map BYTES] [--resident BYTES] [--spread] [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Maps `--map` bytes (default 1t) private, anonymous, `MAP_NORESERVE`, and writes `--resident`
//! bytes (default 64m) of it: the first pages, or with `--spread` pages spread evenly over the
//! whole mapping. Each written page holds 512 words derived from its number and a generation
//! kept in a one-byte-per-page shadow. Logs `Holds: sparse-map addr=0x<a> mapped=<bytes>
//! resident=<bytes> stride=<pages>`; every heartbeat rewrites one page (next generation) and
//! checks another; when the stop file appears it checks every written page and 64 never-written
//! ones (must read zero), logs `Summary: beats=<n> failures=<f> pages=<written pages>` and
//! `Finish`, exits 0 when all matched. CRIU 4.2.1's lazy dump (post-copy) prepares the whole
//! mapped size while the process is frozen (19 s for 1 TiB); a plain dump only the resident
//! pages.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{SPARSE_MAP_LOG, SPARSE_MAP_STOP};
use haul_workloads::holder::{parse_size, setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

const PAGE: u64 = 4096;
const WORDS: usize = (PAGE / 8) as usize;

/// Map a huge sparse region, keep part of it resident, and check it.
#[derive(Debug, Parser)]
#[command(name = "sparse-map", version)]
struct Args {
    /// Size of the mapping.
    #[arg(long, default_value = "1t", value_parser = parse_size)]
    map: u64,
    /// Bytes of it written (resident).
    #[arg(long, default_value = "64m", value_parser = parse_size)]
    resident: u64,
    /// Spread the written pages over the whole mapping instead of the first ones.
    #[arg(long)]
    spread: bool,
    /// Log file.
    #[arg(long, default_value = SPARSE_MAP_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = SPARSE_MAP_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

struct Sparse {
    base: *mut u64,
    pages: u64,
    stride: u64,
    shadow: Vec<u8>,
}

fn word(page: u64, generation: u8, i: usize) -> u64 {
    (page << 24) ^ (u64::from(generation) << 16) ^ i as u64 ^ 0x5a5a_0000_0000_0000
}

impl Sparse {
    fn page_ptr(&self, n: u64) -> *mut u64 {
        // SAFETY: n < pages, and page n * stride lies inside the mapping (stride * pages is
        // at most the mapped pages), so the offset stays within one allocation.
        unsafe { self.base.add((n * self.stride * PAGE / 8) as usize) }
    }

    fn write(&mut self, n: u64) {
        let g = self.shadow[n as usize].wrapping_add(1).max(1);
        self.shadow[n as usize] = g;
        let p = self.page_ptr(n);
        for i in 0..WORDS {
            // SAFETY: p points at a page of the mapping, writable, 512 words long.
            unsafe { p.add(i).write_volatile(word(n, g, i)) };
        }
    }

    fn check(&self, n: u64) -> Result<(), String> {
        let g = self.shadow[n as usize];
        let p = self.page_ptr(n);
        for i in 0..WORDS {
            // SAFETY: as in `write`.
            let found = unsafe { p.add(i).read_volatile() };
            if found != word(n, g, i) {
                return Err(format!(
                    "written page {n} (offset {:#x}) word {i} is {found:#x}, expected {:#x}",
                    n * self.stride * PAGE,
                    word(n, g, i)
                ));
            }
        }
        Ok(())
    }

    /// A page never written: one between two written ones (or past them); must read zero.
    fn check_hole(&self, k: u64, mapped_pages: u64) -> Result<(), String> {
        let page = if self.stride > 1 {
            (k * 7919 % self.pages) * self.stride + 1
        } else {
            self.pages + (k * 7_919_999) % (mapped_pages - self.pages)
        };
        // SAFETY: page < mapped_pages: inside the mapping; reading maps the zero page.
        let found = unsafe { self.base.add((page * PAGE / 8) as usize).read_volatile() };
        if found != 0 {
            return Err(format!(
                "never-written page at offset {:#x} holds {found:#x}",
                page * PAGE
            ));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("sparse-map", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let mapped_pages = args.map / PAGE;
    let pages = (args.resident / PAGE).clamp(1, mapped_pages / 2);
    // SAFETY: a fresh private anonymous mapping; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            args.map as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        log.fail(format_args!("mmap of {} bytes: {e}", args.map))?;
        log.finish()?;
        reporter.report(StartCode::MapFailed)?;
        return Ok(false);
    }
    // No transparent huge pages: the resident size is what was written, 4 KiB at a time.
    // SAFETY: madvise on the mapping just made.
    unsafe { libc::madvise(base, args.map as usize, libc::MADV_NOHUGEPAGE) };
    let stride = if args.spread { mapped_pages / pages } else { 1 };
    let mut s = Sparse {
        base: base as *mut u64,
        pages,
        stride,
        shadow: vec![0; pages as usize],
    };
    for n in 0..pages {
        s.write(n);
    }
    if pages == 0 {
        return setup_failed(log, reporter, "nothing to write");
    }
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "sparse-map",
        format_args!(
            "addr={:#x} mapped={} resident={} stride={stride}",
            base as u64,
            args.map,
            pages * PAGE
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    h.run(|beat| {
        s.write(beat * 7919 % pages);
        s.check((beat * 104_729 + 13) % pages)
    })?;
    let check = (0..pages)
        .try_for_each(|n| s.check(n))
        .and_then(|()| (0..64).try_for_each(|k| s.check_hole(k, mapped_pages)));
    h.finish(check, format_args!("pages={pages}"))
}
