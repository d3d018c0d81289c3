//! The destination's lazy-pages engine: haul's own stand-in for `criu lazy-pages`.
//!
//! `criu restore --lazy-pages` hands it each restored task's userfaultfd over the lazy-pages
//! socket; the source pushes every lazy page over one or more bulk streams at link speed and
//! answers, on a separate priority stream, the pages a restored task faulted on, so a fault
//! never waits behind the bulk transfer (QEMU's post-copy "preempt" channel). Pages land with
//! `UFFDIO_COPY` straight from the receive buffer, up to [`wire::MAX_PAGES`] at a time.
//!
//! ```text
//!   restore ──(pid, uffd)──▶ main thread ──▶ State { tasks: missing pages per task }
//!   bulk stream 1..N ──Pages──▶ bulk threads ──UFFDIO_COPY──▶ restored tasks
//!   uffds ──fault──▶ fault thread ──Request──▶ priority stream ──Pages──▶ fault thread ──COPY
//! ```
//!
//! A copy whose memory stops coming is killed, never left to run: when a stream fails or ends
//! while pages are still missing, the engine SIGKILLs the restored tree (its root pid is in
//! the tree-pid file) before it closes the uffds — a released uffd makes the kernel fill every
//! missing page with zeros. Progress goes to the status fd as lines (`tasks N`, `complete`,
//! `failed: why`) for `haul serve`, which holds a stop-and-copy restore until `complete`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::image::LazyImages;
use super::ranges::{Missing, PAGE};
use super::uffd::{Announce, Event, Fill, LazySocket, Uffd};
use super::wire::{Header, Kind, HEADER_LEN, MAX_PAGES};

/// Pages asked for around a faulting page (it and the missing pages right after it).
pub const FAULT_CLUSTER_PAGES: u64 = 16;
/// How long the engine waits for the restore's announcements and its "finished" word.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long pages may stay unfillable once the restore finished (`EAGAIN`: an event the fault
/// thread has not read yet; `ENOENT` on a single page: its VMA is not registered) before the
/// engine fails and kills the copy instead of leaving them missing: by then every lazy VMA is
/// registered and the fault thread reads events within milliseconds, so only a stuck engine
/// or a page the restore never registered reaches it. Until the restore finished there is no
/// limit: a stop-and-copy's bulk pages arrive before the restorer registered their VMAs.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// A bulk thread's first pause before it tries pages that could not be filled yet again; the
/// pause doubles up to [`RETRY_PAUSE_MAX`]. A stop-and-copy's bulk pages wait there until the
/// restorer registered their VMAs (a second and more at 1 GiB): retried every 200 µs, the
/// two bulk threads spent about 1.7 CPU-s more per GiB on a 2-core node, the cores CRIU's
/// restore needed (results/memory-path-final-2026-11-30.md).
const RETRY_PAUSE_MIN: Duration = Duration::from_micros(200);
/// The longest pause between such tries (what it adds at most once the VMAs are there).
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(5);

/// What the engine is given.
pub struct EngineConfig {
    /// The final dump's images (pstree, mm, pagemap) on this node.
    pub dir: PathBuf,
    /// The listening lazy-pages socket the restore connects to.
    pub listener: std::os::unix::net::UnixListener,
    /// The priority stream (requests out, faulted pages in).
    pub priority: std::net::TcpStream,
    /// The bulk streams (pages pushed in the background).
    pub bulk: Vec<std::net::TcpStream>,
    /// Status lines for `haul serve`.
    pub status: Option<OwnedFd>,
    /// Where `haul serve` writes the restored tree's root pid (after the restore).
    pub tree_pid_file: PathBuf,
    /// Stop-and-copy: the copy is held until every page is in, so the bulk streams fill it
    /// at once. Post-copy: the bulk streams wait until the restore is finished (the process is
    /// about to run), so the restore's last steps do not share the CPUs with the bulk
    /// transfer; faults are served all along.
    pub hold: bool,
}

/// What the engine did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineReport {
    /// Tasks that got a uffd.
    pub tasks: usize,
    /// Lazy pages in the images.
    pub lazy_pages: u64,
    /// Pages filled from bulk streams.
    pub bulk_pages: u64,
    /// Pages filled from the priority stream.
    pub priority_pages: u64,
    /// Page faults that needed a request.
    pub faults: u64,
    /// Pages that came twice (already there when they arrived).
    pub duplicate_pages: u64,
    /// From the first task announced until every page was in (s).
    pub fill_secs: f64,
    /// CPU seconds the engine process used.
    pub cpu_secs: f64,
}

/// Why the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The images could not be read.
    #[error(transparent)]
    Images(#[from] super::image::ImageError),
    /// A stream or the lazy-pages socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The source broke the protocol, or pages were still missing when it ended.
    #[error("{0}")]
    Protocol(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EngineError {
    move |source| EngineError::Io {
        what: what.into(),
        source,
    }
}

/// One restored task.
struct Task {
    /// Its pid in the images (a forked child keeps its parent's: its pages are the parent's).
    pid: u32,
    uffd: Arc<Uffd>,
    missing: Missing,
    gone: bool,
}

#[derive(Default)]
struct State {
    tasks: Vec<Task>,
    /// Every announcement arrived.
    announced: bool,
    /// (image pid, image page) asked for on the priority stream and not answered yet.
    requested: std::collections::HashSet<(u32, u64)>,
    report: EngineReport,
    failed: Option<String>,
    complete: bool,
    /// The restore sent its "finished" word.
    restore_finished: bool,
    /// When it did (every lazy VMA of every task is registered from then on).
    restore_finished_at: Option<Instant>,
    /// When the restore was seen at `post-restore` (its tree's pid file written): every lazy
    /// VMA is registered from then on.
    registered_at: Option<Instant>,
    /// The engine is about to exit: the fault thread stops.
    exiting: bool,
    started: Option<Instant>,
}

impl State {
    fn missing_pages(&self) -> u64 {
        self.tasks
            .iter()
            .filter(|t| !t.gone)
            .map(|t| t.missing.pages())
            .sum()
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Written to when tasks change, so the fault thread polls the new uffds.
    wake_w: OwnedFd,
    status: Mutex<Option<std::fs::File>>,
    tree_pid_file: PathBuf,
    /// Bulk streams, and how many sent their end.
    bulk_total: usize,
    bulk_ended: std::sync::atomic::AtomicUsize,
    /// Clones of the streams, shut down on failure so no thread stays blocked on them.
    streams: Vec<std::net::TcpStream>,
}

impl Shared {
    fn status(&self, line: &str) {
        if let Ok(mut s) = self.status.lock() {
            if let Some(f) = s.as_mut() {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        }
    }

    fn poke(&self) {
        // SAFETY: writes one byte from a local buffer to our own pipe.
        let _ = unsafe { libc::write(self.wake_w.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// Records a failure: the restored tree is killed first (its memory cannot be completed).
    fn fail(&self, why: String) {
        let mut st = self.state.lock().expect("engine state");
        if st.complete || st.failed.is_some() {
            return;
        }
        kill_tree(&self.tree_pid_file, &why);
        st.failed = Some(why.clone());
        drop(st);
        for s in &self.streams {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.status(&format!("failed: {why}"));
        self.changed.notify_all();
        self.poke();
    }

    fn check_complete(&self, st: &mut State) {
        if st.complete || st.failed.is_some() || !st.announced {
            return;
        }
        if st.missing_pages() == 0 {
            st.complete = true;
            if let Some(t) = st.started {
                st.report.fill_secs = t.elapsed().as_secs_f64();
            }
            self.status("complete");
            self.changed.notify_all();
        }
    }

    /// One pass of copying `data` (the pages at image address `img` of image pid `pid`) into
    /// every live task of that pid that still misses them. Each copy stays inside one run of
    /// missing pages, and a copy the kernel refuses as not lying inside one registered VMA
    /// (`ENOENT`) is redone page by page, so a run that spans two VMAs still fills. Pages are
    /// never given up here: what cannot be filled yet (`EAGAIN`: an event is unread; `ENOENT`
    /// on one page: its VMA is not registered yet, as in a stop-and-copy before the restorer
    /// got there) is left missing and `again` set. Pages leave the missing set only filled,
    /// found there already, or by the task's own events (unmap, remove, remap).
    fn fill_pass(&self, pid: u32, img: u64, data: &[u8]) -> FillPass {
        let end = img + data.len() as u64;
        let mut pass = FillPass::default();
        let work: Vec<(usize, Arc<Uffd>, Vec<super::ranges::Run>)> = {
            let st = self.state.lock().expect("engine state");
            st.tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.pid == pid && !t.gone)
                .map(|(i, t)| (i, t.uffd.clone(), t.missing.by_img(img, end)))
                .filter(|(_, _, r)| !r.is_empty())
                .collect()
        };
        'tasks: for (i, uffd, runs) in work {
            for r in runs {
                let mut at = r.start;
                let mut page_wise = false;
                while at < r.end {
                    let stop = if page_wise { at + PAGE } else { r.end };
                    let off = (r.img + (at - r.start) - img) as usize;
                    let len = (stop - at) as usize;
                    let res = uffd.copy(at, &data[off..off + len]);
                    tracing::debug!(
                        "lazy engine: copy task#{i} pid {pid} {at:#x}+{} pages: {res:?}",
                        len as u64 / PAGE
                    );
                    let mut st = self.state.lock().expect("engine state");
                    let t = &mut st.tasks[i];
                    match res {
                        Fill::Done => {
                            pass.filled += pages_in(&t.missing.remove(at, stop));
                            at = stop;
                        }
                        Fill::Exists(n) => {
                            let n = n - n % PAGE;
                            pass.filled += pages_in(&t.missing.remove(at, at + n));
                            // the page at at+n was there already: whoever put it, it is in
                            let p = at + n;
                            pass.dup += pages_in(&t.missing.remove(p, p + PAGE));
                            drop(st);
                            let _ = uffd.wake(p, PAGE);
                            at = p + PAGE;
                        }
                        Fill::Again(n) if n >= PAGE => {
                            let n = n - n % PAGE;
                            pass.filled += pages_in(&t.missing.remove(at, at + n));
                            at += n;
                        }
                        Fill::Again(_) => {
                            // a remap/remove/unmap/fork event waits on this uffd: the rest
                            // of these pages after it has been read
                            pass.again = true;
                            break;
                        }
                        Fill::NoVma if !page_wise && stop - at > PAGE => {
                            // the run crosses a VMA boundary, or part of it is not registered
                            // (yet): page by page
                            page_wise = true;
                        }
                        Fill::NoVma => {
                            // this page is in no registered VMA now: the restorer has not
                            // registered it yet, or an unmap's event is about to take it out
                            pass.again = true;
                            break;
                        }
                        Fill::Gone => {
                            t.gone = true;
                            t.missing = Missing::default();
                            continue 'tasks;
                        }
                    }
                }
            }
        }
        let mut st = self.state.lock().expect("engine state");
        self.check_complete(&mut st);
        pass
    }

    /// Whether pages that could not be filled since `since` have waited too long: every lazy
    /// VMA is registered, and both that and `since` are more than [`SETTLE_LIMIT`] ago.
    ///
    /// Every VMA is registered once the restore finished, or once it reached `post-restore`
    /// (the restorer is done), which the destination marks by writing the tree's pid file:
    /// a held stop-and-copy answers `post-restore` only when every page is in, so its restore
    /// cannot finish before that, and without the mark a page that never fills would hold the
    /// copy (and the frozen source) until the destination's 600 s wait (review of
    /// 2026-11-30).
    fn settle_overdue(&self, since: Instant) -> bool {
        let mut st = self.state.lock().expect("engine state");
        if st.restore_finished_at.is_none()
            && st.registered_at.is_none()
            && self.tree_pid_file.exists()
        {
            st.registered_at = Some(Instant::now());
        }
        since.elapsed() > SETTLE_LIMIT
            && st
                .restore_finished_at
                .or(st.registered_at)
                .is_some_and(|f| f.elapsed() > SETTLE_LIMIT)
    }

    /// [`Shared::fill_pass`] until every page could be filled (bulk threads: the fault thread
    /// reads the events meanwhile, the restorer registers its VMAs). Fails the engine (the
    /// copy is killed) when that is overdue ([`Shared::settle_overdue`]).
    fn fill(&self, pid: u32, img: u64, data: &[u8]) -> FillPass {
        let t0 = Instant::now();
        let mut total = FillPass::default();
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            let pass = self.fill_pass(pid, img, data);
            total.add(&pass);
            if !pass.again || self.state.lock().expect("engine state").failed.is_some() {
                return total;
            }
            if self.settle_overdue(t0) {
                self.fail(format!(
                    "pages of task {pid} at {img:#x}..{:#x} could not be filled for {} s after the restore finished (their VMA not registered, or the address space kept changing)",
                    img + data.len() as u64,
                    SETTLE_LIMIT.as_secs()
                ));
                return total;
            }
            // the fault thread reads the pending event
            self.poke();
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
        }
    }
}

/// What one fill did.
#[derive(Debug, Default, Clone, Copy)]
struct FillPass {
    /// Pages filled.
    filled: u64,
    /// Pages found there already.
    dup: u64,
    /// Some pages could not be filled yet (an unread event, a VMA not registered yet): try
    /// again later.
    again: bool,
}

impl FillPass {
    fn add(&mut self, o: &FillPass) {
        self.filled += o.filled;
        self.dup += o.dup;
        self.again = o.again;
    }
}

fn pages_in(runs: &[super::ranges::Run]) -> u64 {
    runs.iter().map(|r| r.pages()).sum()
}

/// SIGKILLs the restored tree's root named in `file` (its pid namespace ends with it).
fn kill_tree(file: &std::path::Path, why: &str) {
    let pid = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1);
    match pid {
        Some(p) => {
            tracing::warn!(
                "lazy engine: {why}; killing the restored copy (pid {p}) before its missing memory could be zero-filled"
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        None => tracing::warn!("lazy engine: {why} (the restore had not named its tree yet)"),
    }
}

fn read_header(s: &mut impl Read) -> io::Result<Option<Header>> {
    let mut b = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match s.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Header::decode(&b)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A page-aligned buffer for one message's pages.
fn page_buffer() -> Vec<u8> {
    vec![0u8; MAX_PAGES as usize * PAGE as usize]
}

/// Runs the engine until every lazy page is in and the restore said it finished, or until it
/// fails (the restored tree is then killed). Blocking; spawns its own threads.
pub fn run(cfg: EngineConfig) -> Result<EngineReport, EngineError> {
    // an early restore waits at its gate: hold it until the restore is past it
    let gate = super::gate::GateGuard::hold(&cfg.dir);
    let (wake_r, wake_w) = nix::unistd::pipe().map_err(|e| io_err("pipe")(e.into()))?;
    let status = cfg.status.map(std::fs::File::from);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        wake_w,
        status: Mutex::new(status),
        tree_pid_file: cfg.tree_pid_file.clone(),
        bulk_total: cfg.bulk.len(),
        bulk_ended: std::sync::atomic::AtomicUsize::new(0),
        streams: cfg
            .bulk
            .iter()
            .chain(std::iter::once(&cfg.priority))
            .filter_map(|s| s.try_clone().ok())
            .collect(),
    });
    for s in cfg.bulk.iter().chain(std::iter::once(&cfg.priority)) {
        crate::migrate::sockopt::harden(s);
    }

    // The fault thread: uffd events and the priority stream.
    let fault = {
        let shared = shared.clone();
        let prio = cfg
            .priority
            .try_clone()
            .map_err(io_err("priority stream"))?;
        std::thread::Builder::new()
            .name("lazy-faults".into())
            .spawn(move || {
                if let Err(e) = fault_loop(&shared, prio, wake_r) {
                    shared.fail(format!("priority stream: {e}"));
                }
            })
            .map_err(io_err("spawn"))?
    };

    // Announcements: every task of the tree, in pstree order.
    let mut gate = gate;
    let lazy = match accept_with_timeout(&cfg.listener, &cfg.priority, &mut gate, RESTORE_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            if let Some(g) = gate {
                g.fail();
            }
            shared.fail(format!(
                "the restore never connected to the lazy-pages socket: {e}"
            ));
            return finish(&shared, fault, vec![]);
        }
    };
    // The restore connects once it has read its images: they are all here now (an early
    // restore is held until they are).
    let images = match LazyImages::load(&cfg.dir) {
        Ok(i) => i,
        Err(e) => {
            shared.fail(format!("{e}"));
            return finish(&shared, fault, vec![]);
        }
    };
    shared.state.lock().expect("engine state").report.lazy_pages = images.pages();
    for _ in 0..images.tasks.len() {
        match lazy.next_task() {
            Ok(Announce::Task(pid, uffd)) => {
                tracing::debug!("lazy engine: restore announced task {pid}");
                let lazy_ranges = images.task(pid).map(|t| t.lazy.clone()).unwrap_or_default();
                let mut st = shared.state.lock().expect("engine state");
                st.started.get_or_insert_with(Instant::now);
                st.tasks.push(Task {
                    pid,
                    uffd: Arc::new(uffd),
                    missing: Missing::from_ranges(lazy_ranges),
                    gone: false,
                });
                st.report.tasks += 1;
                drop(st);
                shared.poke();
            }
            Ok(Announce::Zombie(pid)) => tracing::debug!("lazy engine: zombie {pid}"),
            Err(e) => {
                shared.fail(format!("lazy-pages socket: {e}"));
                return finish(&shared, fault, vec![]);
            }
        }
    }
    {
        let mut st = shared.state.lock().expect("engine state");
        st.announced = true;
        let n = st.tasks.len();
        drop(st);
        shared.status(&format!("tasks {n}"));
        let mut st = shared.state.lock().expect("engine state");
        shared.check_complete(&mut st);
    }

    // Bulk streams: one thread each.
    let mut bulk = Vec::new();
    let hold = cfg.hold;
    for (i, s) in cfg.bulk.into_iter().enumerate() {
        let shared = shared.clone();
        bulk.push(
            std::thread::Builder::new()
                .name(format!("lazy-bulk-{i}"))
                .spawn(move || {
                    if !hold {
                        let mut st = shared.state.lock().expect("engine state");
                        while !st.restore_finished && st.failed.is_none() && !st.complete {
                            st = shared.changed.wait(st).expect("engine state");
                        }
                    }
                    if let Err(e) = bulk_loop(&shared, s) {
                        shared.fail(format!("bulk stream {i}: {e}"));
                    }
                })
                .map_err(io_err("spawn"))?,
        );
    }

    // The restore's last word (it comes after the restore is complete: for a stop-and-copy,
    // after every page is in); meanwhile pages flow.
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("lazy-restore".into())
            .spawn(move || match lazy.wait_finished() {
                Ok(()) => {
                    let mut st = shared.state.lock().expect("engine state");
                    st.restore_finished = true;
                    st.restore_finished_at = Some(Instant::now());
                    shared.changed.notify_all();
                }
                Err(e) => shared.fail(format!("the restore did not finish: {e}")),
            })
            .map_err(io_err("spawn"))?;
    }
    finish(&shared, fault, bulk)
}

/// Accepts the restore's connection; gives up after `limit`, when the source ends the
/// priority stream first (it gave up on the migration: no restore will come), or when
/// `haul serve` (the parent) dies before the restore connected.
fn accept_with_timeout(
    l: &std::os::unix::net::UnixListener,
    source: &std::net::TcpStream,
    gate: &mut Option<super::gate::GateGuard>,
    limit: Duration,
) -> io::Result<LazySocket> {
    // SAFETY: plain system calls; a pidfd of our parent, or -1 (then poll ignores it).
    let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getppid(), 0) } as i32;
    let parent = (parent >= 0).then(|| {
        // SAFETY: a fresh fd owned by nobody else.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(parent) }
    });
    let deadline = Instant::now() + limit;
    loop {
        // the gate is let go of as soon as haul serve opened it
        if gate.as_ref().is_some_and(|g| g.opened()) {
            if let Some(g) = gate.take() {
                g.passed();
            }
        }
        let mut pfds = [
            libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: source.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: parent.as_ref().map_or(-1, |p| p.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no connection"));
        }
        let wait = if gate.is_some() {
            Duration::from_millis(1)
        } else {
            left
        };
        // SAFETY: a live array of three pollfds.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 3, wait.as_millis().max(1) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfds[0].revents & libc::POLLIN != 0 {
            break;
        }
        if pfds[1].revents != 0 || pfds[2].revents != 0 {
            let who = if pfds[2].revents != 0 {
                "haul serve ended before the restore connected"
            } else {
                "the source ended its streams first"
            };
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, who));
        }
    }
    if let Some(g) = gate.take() {
        g.passed();
    }
    LazySocket::accept(l)
}

/// Waits until complete or failed, then for the streams to end.
fn finish(
    shared: &Arc<Shared>,
    fault: std::thread::JoinHandle<()>,
    bulk: Vec<std::thread::JoinHandle<()>>,
) -> Result<EngineReport, EngineError> {
    {
        let mut st = shared.state.lock().expect("engine state");
        while !(st.complete && st.restore_finished) && st.failed.is_none() {
            st = shared.changed.wait(st).expect("engine state");
        }
    }
    for b in bulk {
        let _ = b.join();
    }
    shared.state.lock().expect("engine state").exiting = true;
    shared.poke();
    let _ = fault.join();
    let st = shared.state.lock().expect("engine state");
    match &st.failed {
        Some(why) => Err(EngineError::Protocol(why.clone())),
        None => Ok(EngineReport {
            cpu_secs: super::cpu_secs(),
            ..st.report.clone()
        }),
    }
}

fn bulk_loop(shared: &Shared, mut s: std::net::TcpStream) -> io::Result<()> {
    let mut buf = page_buffer();
    loop {
        let h = match read_header(&mut s)? {
            Some(h) => h,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source closed the stream before its end",
                ))
            }
        };
        match h.kind {
            Kind::Pages => {
                let len = h.payload_len();
                s.read_exact(&mut buf[..len])?;
                let pass = shared.fill(h.pid, h.addr, &buf[..len]);
                let mut st = shared.state.lock().expect("engine state");
                st.report.bulk_pages += pass.filled;
                st.report.duplicate_pages += pass.dup;
                if st.failed.is_some() {
                    return Ok(());
                }
            }
            Kind::End => {
                // Everything this stream will carry came. Missing pages, if any, are the
                // priority stream's to fetch (the fault thread asks once bulk is done).
                shared
                    .bulk_ended
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                shared.poke();
                return Ok(());
            }
            k => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{k:?} on a bulk stream"),
                ))
            }
        }
    }
}

/// Polls every uffd, the wake pipe and the priority stream.
fn fault_loop(shared: &Shared, mut prio: std::net::TcpStream, wake: OwnedFd) -> io::Result<()> {
    let mut buf = page_buffer();
    let mut sweep_at: Option<Instant> = None;
    let mut prio_open = true;
    // fills the kernel refused while an event was queued (EAGAIN): retried once it is read
    let mut deferred: Vec<Deferred> = Vec::new();
    loop {
        let uffds: Vec<(usize, Arc<Uffd>)> = {
            let st = shared.state.lock().expect("engine state");
            if st.exiting || st.failed.is_some() {
                return Ok(());
            }
            st.tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.gone)
                .map(|(i, t)| (i, t.uffd.clone()))
                .collect()
        };
        let mut pfds: Vec<libc::pollfd> = vec![
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if prio_open { prio.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        pfds.extend(uffds.iter().map(|(_, u)| libc::pollfd {
            fd: u.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let timeout = if deferred.is_empty() { 100 } else { 1 };
        // SAFETY: `pfds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfds[0].revents != 0 {
            let mut b = [0u8; 64];
            // SAFETY: drains our own nonblocking-or-ready pipe into a local buffer.
            let _ = unsafe { libc::read(wake.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        }
        for (k, (i, u)) in uffds.iter().enumerate() {
            let re = pfds[k + 2].revents;
            if re & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                let mut st = shared.state.lock().expect("engine state");
                st.tasks[*i].gone = true;
                st.tasks[*i].missing = Missing::default();
                shared.check_complete(&mut st);
                continue;
            }
            if re & libc::POLLIN != 0 {
                while let Some(ev) = u.read_event()? {
                    handle_event(shared, &mut prio, *i, u, ev, &mut deferred)?;
                }
            }
        }
        if !deferred.is_empty() {
            let waiting = std::mem::take(&mut deferred);
            for d in waiting {
                if let Some(d) = d.retry(shared) {
                    if shared.settle_overdue(d.since()) {
                        return Err(io::Error::other(format!(
                            "{d}: not possible for {} s after the restore finished",
                            SETTLE_LIMIT.as_secs()
                        )));
                    }
                    deferred.push(d);
                }
            }
        }
        if pfds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            match read_header(&mut prio)? {
                None if shared.state.lock().expect("engine state").complete => {
                    // done with it; keep serving faults on holes until the engine exits
                    prio_open = false;
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source closed it with pages missing",
                    ))
                }
                Some(h) if h.kind == Kind::Pages => {
                    let len = h.payload_len();
                    prio.read_exact(&mut buf[..len])?;
                    tracing::debug!(
                        "lazy engine: priority answer pid {} {:#x}+{}",
                        h.pid,
                        h.addr,
                        h.npages
                    );
                    // never wait here for the address space to settle: the events that
                    // settle it are this thread's to read (deferred, retried after them)
                    let d = Deferred::Pages {
                        pid: h.pid,
                        img: h.addr,
                        data: buf[..len].to_vec(),
                        since: Instant::now(),
                    };
                    if let Some(d) = d.retry(shared) {
                        deferred.push(d);
                    }
                }
                Some(h) if h.kind == Kind::Refused => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the source has no lazy pages at {:#x} of task {}",
                            h.addr, h.pid
                        ),
                    ))
                }
                Some(h) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{:?} on the priority stream", h.kind),
                    ))
                }
            }
        }
        // Once every bulk stream is done, fetch whatever is still missing (pages a remap or a
        // fork moved out of the bulk order) over the priority stream.
        let now = Instant::now();
        if sweep_at.map_or(true, |t| now >= t) {
            sweep_at = Some(now + Duration::from_millis(50));
            sweep(shared, &mut prio)?;
        }
    }
}

/// Asks for missing pages nobody asked for yet, when the bulk streams have all ended.
fn sweep(shared: &Shared, prio: &mut std::net::TcpStream) -> io::Result<()> {
    let asks: Vec<Header> = {
        let mut st = shared.state.lock().expect("engine state");
        let ended = shared.bulk_ended.load(std::sync::atomic::Ordering::SeqCst);
        if !st.announced || ended < shared.bulk_total {
            return Ok(());
        }
        let mut asks = Vec::new();
        let mut want = Vec::new();
        for t in st.tasks.iter().filter(|t| !t.gone) {
            for r in t.missing.iter() {
                let mut a = r.img;
                let end = r.img + (r.end - r.start);
                while a < end {
                    let n = ((end - a) / PAGE).min(u64::from(MAX_PAGES));
                    want.push((t.pid, a, n));
                    a += n * PAGE;
                }
            }
        }
        for (pid, a, n) in want {
            if st.requested.contains(&(pid, a)) {
                continue;
            }
            for p in 0..n {
                st.requested.insert((pid, a + p * PAGE));
            }
            asks.push(Header::request(pid, a, n as u32));
            if asks.len() >= 64 {
                break;
            }
        }
        asks
    };
    for h in asks {
        prio.write_all(&h.encode())?;
    }
    Ok(())
}

/// A fill the fault thread could not do yet: the kernel refuses fills into a task while one
/// of its non-cooperative events (remap, remove, unmap, fork) is queued and unread
/// (`EAGAIN`), and those events are the fault thread's to read; or part of an answer lies in
/// a VMA not registered yet. A faulting thread sleeps until its page is filled or woken, so
/// such a fill must be retried, never dropped.
enum Deferred {
    /// An answer from the priority stream.
    Pages {
        pid: u32,
        img: u64,
        data: Vec<u8>,
        since: Instant,
    },
    /// A fault on a page that is not lazy (zeros at dump time): a zero page.
    Zero {
        task: usize,
        uffd: Arc<Uffd>,
        page: u64,
        since: Instant,
    },
}

impl std::fmt::Display for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deferred::Pages { pid, img, data, .. } => write!(
                f,
                "filling {} faulted pages of task {pid} at {img:#x}",
                data.len() as u64 / PAGE
            ),
            Deferred::Zero { task, page, .. } => {
                write!(f, "a zero page at {page:#x} of task #{task}")
            }
        }
    }
}

impl Deferred {
    fn since(&self) -> Instant {
        match self {
            Deferred::Pages { since, .. } | Deferred::Zero { since, .. } => *since,
        }
    }

    /// Tries once; `Some(self)` when it must wait for the task's events to be read.
    fn retry(self, shared: &Shared) -> Option<Deferred> {
        match self {
            Deferred::Pages {
                pid, img, ref data, ..
            } => {
                let pass = shared.fill_pass(pid, img, data);
                let mut st = shared.state.lock().expect("engine state");
                st.report.priority_pages += pass.filled;
                st.report.duplicate_pages += pass.dup;
                if pass.again {
                    return Some(self);
                }
                for p in 0..data.len() as u64 / PAGE {
                    st.requested.remove(&(pid, img + p * PAGE));
                }
                None
            }
            Deferred::Zero {
                task,
                ref uffd,
                page,
                ..
            } => {
                let z = uffd.zero(page, PAGE);
                tracing::debug!("lazy engine: fault {page:#x} task#{task} not missing: zero {z:?}");
                match z {
                    Fill::Done => None,
                    Fill::Again(_) => Some(self),
                    Fill::Exists(_) | Fill::NoVma => {
                        // there already, or no longer in a registered VMA: the thread only
                        // needs waking (it faults again, or gets what the kernel gives)
                        let _ = uffd.wake(page, PAGE);
                        None
                    }
                    Fill::Gone => {
                        let mut st = shared.state.lock().expect("engine state");
                        st.tasks[task].gone = true;
                        st.tasks[task].missing = Missing::default();
                        shared.check_complete(&mut st);
                        None
                    }
                }
            }
        }
    }
}

fn handle_event(
    shared: &Shared,
    prio: &mut std::net::TcpStream,
    i: usize,
    u: &Arc<Uffd>,
    ev: Event,
    deferred: &mut Vec<Deferred>,
) -> io::Result<()> {
    tracing::debug!("lazy engine: task#{i} event {ev:?}");
    let mut st = shared.state.lock().expect("engine state");
    match ev {
        Event::PageFault { addr } => {
            let page = addr & !(PAGE - 1);
            let t = &st.tasks[i];
            match t.missing.lookup(page) {
                Some(img) => {
                    let pid = t.pid;
                    // the faulting page and the missing pages right after it
                    let mut n = 1u64;
                    while n < FAULT_CLUSTER_PAGES
                        && t.missing.lookup(page + n * PAGE) == Some(img + n * PAGE)
                    {
                        n += 1;
                    }
                    st.report.faults += 1;
                    let already = st.requested.contains(&(pid, img));
                    tracing::debug!(
                        "lazy engine: fault {addr:#x} task#{i} pid {pid} img {img:#x} n {n} already requested {already}"
                    );
                    if st.requested.insert((pid, img)) {
                        for p in 1..n {
                            st.requested.insert((pid, img + p * PAGE));
                        }
                        drop(st);
                        prio.write_all(&Header::request(pid, img, n as u32).encode())?;
                    }
                }
                None => {
                    // Not a lazy page (absent at dump time: zeros), or it just arrived.
                    drop(st);
                    let d = Deferred::Zero {
                        task: i,
                        uffd: u.clone(),
                        page,
                        since: Instant::now(),
                    };
                    if let Some(d) = d.retry(shared) {
                        deferred.push(d);
                    }
                }
            }
        }
        Event::Fork { uffd } => {
            let parent = &st.tasks[i];
            let child = Task {
                pid: parent.pid,
                uffd: Arc::new(uffd),
                missing: parent.missing.clone(),
                gone: false,
            };
            st.tasks.push(child);
            st.report.tasks += 1;
        }
        Event::Remap { from, to, len } => st.tasks[i].missing.remap(from, to, len),
        Event::Remove { start, end } => {
            let _ = u.unregister(start, end - start);
            st.tasks[i].missing.remove(start, end);
            shared.check_complete(&mut st);
        }
        Event::Unmap { start, end } => {
            st.tasks[i].missing.remove(start, end);
            shared.check_complete(&mut st);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The engine against a scripted source and a scripted restore, on this process's own
    //! memory: a private mapping registered with a uffd stands in for a restored task.
    use super::*;
    use crate::criu::pb;
    use crate::memory::image::{encode_image, MM_MAGIC, PAGEMAP_MAGIC, PE_LAZY, PSTREE_MAGIC};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use prost::Message;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    const PAGES: u64 = 64;

    struct Scene {
        _dir: tempfile::TempDir,
        region: u64,
        uffd: Uffd,
        restore: UnixStream,
        bulk: TcpStream,
        prio: TcpStream,
        engine: std::thread::JoinHandle<Result<EngineReport, EngineError>>,
        victim: std::process::Child,
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn pattern(page: u64) -> u8 {
        (page % 251) as u8 + 1
    }

    /// None when userfaultfd is not available here (a visible skip).
    fn scene() -> Option<Scene> {
        scene_with_vmas(None, true)
    }

    /// The scene's region as two adjacent VMAs when `split` is `Some(k)`: pages `0..k` and
    /// `k..PAGES` (the second marked `MADV_DONTFORK`, so the kernel keeps them apart), named as
    /// two VMAs in the mm image and one lazy pagemap entry over both, as CRIU writes a
    /// thread's stack and the mapping above it. Unless `registered`, the region is not
    /// registered with the uffd yet (the restorer has not got there).
    fn scene_with_vmas(split: Option<u64>, registered: bool) -> Option<Scene> {
        let uffd = match Uffd::open_own(false) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("SKIP: userfaultfd unavailable: {e}");
                return None;
            }
        };
        let len = (PAGES * PAGE) as usize;
        // SAFETY: a fresh private anonymous mapping (left mapped: the test process ends soon).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let region = p as u64;
        if registered {
            uffd.register(region, len as u64).unwrap();
        }
        if let Some(k) = split {
            // SAFETY: advice on the tail of the mapping made above.
            let r = unsafe {
                libc::madvise(
                    (region + k * PAGE) as *mut libc::c_void,
                    ((PAGES - k) * PAGE) as usize,
                    libc::MADV_DONTFORK,
                )
            };
            assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
        }
        let vma = |start: u64, end: u64| pb::VmaEntry {
            start,
            end,
            pgoff: 0,
            shmid: 0,
            prot: 3,
            flags: 0x22,
            status: 0,
            fd: -1,
        };
        let vmas = match split {
            Some(k) => vec![
                vma(region, region + k * PAGE),
                vma(region + k * PAGE, region + len as u64),
            ],
            None => vec![vma(region, region + len as u64)],
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pstree = pb::PstreeEntry {
            pid: 1,
            ppid: 0,
            pgid: 1,
            sid: 1,
            threads: vec![1],
        };
        std::fs::write(
            d.join("pstree.img"),
            encode_image(PSTREE_MAGIC, &[pstree.encode_to_vec()]),
        )
        .unwrap();
        let mm = pb::MmEntry { vmas };
        std::fs::write(
            d.join("mm-1.img"),
            encode_image(MM_MAGIC, &[mm.encode_to_vec()]),
        )
        .unwrap();
        let pm = pb::PagemapEntry {
            vaddr: region,
            compat_nr_pages: PAGES as u32,
            in_parent: None,
            flags: Some(PE_LAZY),
            nr_pages: Some(PAGES),
        };
        std::fs::write(
            d.join("pagemap-1.img"),
            encode_image(
                PAGEMAP_MAGIC,
                &[
                    pb::PagemapHead { pages_id: 1 }.encode_to_vec(),
                    pm.encode_to_vec(),
                ],
            ),
        )
        .unwrap();
        let listener = std::os::unix::net::UnixListener::bind(d.join("lazy.sock")).unwrap();
        let restore = UnixStream::connect(d.join("lazy.sock")).unwrap();
        let (bulk_src, bulk_dst) = pair();
        let (prio_src, prio_dst) = pair();
        let victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(d.join("tree.pid"), victim.id().to_string()).unwrap();
        let cfg = EngineConfig {
            dir: d.to_path_buf(),
            listener,
            priority: prio_dst,
            bulk: vec![bulk_dst],
            status: None,
            tree_pid_file: d.join("tree.pid"),
            hold: true,
        };
        let engine = std::thread::spawn(move || run(cfg));
        // the restore announces task 1 with (a duplicate of) the uffd
        let pid = 1i32.to_ne_bytes();
        std::io::Write::write_all(&mut &restore, &pid).unwrap();
        let fds = [uffd.as_raw_fd()];
        sendmsg::<()>(
            restore.as_raw_fd(),
            &[std::io::IoSlice::new(&[0u8])],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        Some(Scene {
            _dir: dir,
            region,
            uffd,
            restore,
            bulk: bulk_src,
            prio: prio_src,
            engine,
            victim,
        })
    }

    fn send_pages(s: &mut TcpStream, region: u64, first: u64, n: u64) {
        let mut msg = Header::pages(1, region + first * PAGE, n as u32)
            .encode()
            .to_vec();
        for p in first..first + n {
            msg.extend(std::iter::repeat(pattern(p)).take(PAGE as usize));
        }
        s.write_all(&msg).unwrap();
    }

    fn finish_restore(restore: &UnixStream) {
        std::io::Write::write_all(
            &mut &*restore,
            &super::super::uffd::RESTORE_FINISHED.to_ne_bytes(),
        )
        .unwrap();
    }

    fn region_ok(region: u64) -> bool {
        // SAFETY: called only once every page is present (no fault can block).
        let mem =
            unsafe { std::slice::from_raw_parts(region as *const u8, (PAGES * PAGE) as usize) };
        (0..PAGES).all(|p| {
            mem[(p * PAGE) as usize..((p + 1) * PAGE) as usize]
                .iter()
                .all(|&b| b == pattern(p))
        })
    }

    #[test]
    fn bulk_pages_fill_the_task_and_a_fault_is_answered_first() {
        let Some(mut sc) = scene() else { return };
        // a thread touches the last page before any bulk page came: it must be asked for
        let region = sc.region;
        let toucher = std::thread::spawn(move || {
            // SAFETY: the page faults into the engine, which fills it; then it is readable.
            unsafe { std::ptr::read_volatile((region + (PAGES - 1) * PAGE) as *const u8) }
        });
        let mut hb = [0u8; HEADER_LEN];
        sc.prio.read_exact(&mut hb).unwrap();
        let req = Header::decode(&hb).unwrap();
        assert_eq!(req.kind, Kind::Request);
        assert_eq!(req.addr, region + (PAGES - 1) * PAGE);
        send_pages(&mut sc.prio, region, PAGES - 1, u64::from(req.npages));
        assert_eq!(toucher.join().unwrap(), pattern(PAGES - 1));
        // the rest in two bulk messages, one of them overlapping the faulted page
        send_pages(&mut sc.bulk, region, 0, 32);
        send_pages(&mut sc.bulk, region, 32, 32);
        sc.bulk.write_all(&Header::end(64).encode()).unwrap();
        finish_restore(&sc.restore);
        let rep = sc.engine.join().unwrap().unwrap();
        assert!(region_ok(region));
        assert_eq!(rep.tasks, 1);
        assert_eq!(rep.faults, 1);
        // each page counted once: filled from a stream, or found there already
        assert_eq!(
            rep.priority_pages + rep.bulk_pages + rep.duplicate_pages,
            PAGES
        );
        assert!(rep.bulk_pages >= PAGES - 1);
        assert!(
            sc.victim.try_wait().unwrap().is_none(),
            "a complete copy is left alone"
        );
        let _ = sc.victim.kill();
        drop(sc.uffd);
    }

    /// The hang of multi-threaded trees over the engine: a thread faults on the last page of
    /// one VMA (a thread's rseq area at the top of its stack), the fault's cluster runs into
    /// the adjacent VMA, and one `UFFDIO_COPY` over both is refused (`ENOENT`). The faulting
    /// thread must still get its page, and every page must land.
    #[test]
    fn a_fault_next_to_a_vma_boundary_is_answered() {
        const SPLIT: u64 = 40;
        let Some(mut sc) = scene_with_vmas(Some(SPLIT), true) else {
            return;
        };
        let region = sc.region;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: the page faults into the engine, which fills it; then it is readable.
            let v = unsafe { std::ptr::read_volatile((region + (SPLIT - 1) * PAGE) as *const u8) };
            let _ = tx.send(v);
        });
        let mut hb = [0u8; HEADER_LEN];
        sc.prio.read_exact(&mut hb).unwrap();
        let req = Header::decode(&hb).unwrap();
        assert_eq!(req.kind, Kind::Request);
        assert_eq!(req.addr, region + (SPLIT - 1) * PAGE);
        assert!(req.npages > 1, "the request's cluster crosses the boundary");
        send_pages(&mut sc.prio, region, SPLIT - 1, u64::from(req.npages));
        let got = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(
            got.ok(),
            Some(pattern(SPLIT - 1)),
            "the thread faulting next to the VMA boundary was never woken with its page"
        );
        // the rest in one bulk message across the boundary too
        send_pages(&mut sc.bulk, region, 0, PAGES);
        sc.bulk.write_all(&Header::end(PAGES).encode()).unwrap();
        finish_restore(&sc.restore);
        let rep = sc.engine.join().unwrap().unwrap();
        assert!(region_ok(region));
        assert_eq!(
            rep.priority_pages + rep.bulk_pages + rep.duplicate_pages,
            PAGES
        );
        let _ = sc.victim.kill();
        drop(sc.uffd);
    }

    /// Whether every page of the region is resident (mincore: no fault, so no hang when not).
    fn resident(region: u64) -> bool {
        let mut v = vec![0u8; PAGES as usize];
        // SAFETY: mincore reads the residency of our own mapping into a vector of one byte
        // per page.
        let r = unsafe {
            libc::mincore(
                region as *mut libc::c_void,
                (PAGES * PAGE) as usize,
                v.as_mut_ptr(),
            )
        };
        r == 0 && v.iter().all(|b| b & 1 == 1)
    }

    /// A stop-and-copy's bulk pages come before the restorer registered their VMAs with the
    /// uffd (`ENOENT`); they must wait for it, however long the restore takes to get there,
    /// never be given up (the task would later find zeros there).
    #[test]
    fn pages_that_come_before_their_vma_is_registered_wait_for_it() {
        let Some(mut sc) = scene_with_vmas(None, false) else {
            return;
        };
        let region = sc.region;
        send_pages(&mut sc.bulk, region, 0, PAGES);
        sc.bulk.write_all(&Header::end(PAGES).encode()).unwrap();
        // the restorer registers the VMA only now
        std::thread::sleep(Duration::from_millis(1500));
        sc.uffd.register(region, PAGES * PAGE).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !resident(region) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            resident(region),
            "pages that came before the registration were never filled"
        );
        assert!(region_ok(region));
        finish_restore(&sc.restore);
        let rep = sc.engine.join().unwrap().unwrap();
        assert_eq!(rep.bulk_pages, PAGES);
        let _ = sc.victim.kill();
        drop(sc.uffd);
    }

    #[test]
    fn a_source_that_dies_mid_stream_gets_the_copy_killed() {
        let Some(mut sc) = scene() else { return };
        send_pages(&mut sc.bulk, sc.region, 0, 8);
        // the source is gone: both streams end with 56 pages missing
        drop(sc.bulk);
        drop(sc.prio);
        let r = sc.engine.join().unwrap();
        assert!(r.is_err(), "the engine must fail");
        let st = sc.victim.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "the copy was killed");
        drop(sc.uffd);
    }
}
