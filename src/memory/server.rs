//! The source's side of the memory path: it pushes every lazy page of the frozen tree to the
//! destination's engine over the bulk streams, lowest address first, and answers the engine's
//! requests for faulted pages on the priority stream at once.
//!
//! After a lazy dump CRIU keeps the tasks frozen (ptrace-stopped, the parasite gone) and their
//! pages in its page pipes until its page server's client says it is done; haul is that client
//! (see `hold`). Bulk pages come from CRIU: haul asks its lazy page server (`PS_IOV_GET`, two
//! asks in flight, up to 4 MiB each) and splices the answers into the bulk streams, so they are
//! not copied through user space on this node. Faulted pages are read straight from the frozen
//! tasks (`process_vm_readv`): their memory is exactly what the dump saw, and the answer never
//! queues behind bulk data. Without CRIU's page server (CRIU before 4.2, or `--no-criu-splice`)
//! the bulk threads read the tasks' memory the same way. Only pages the dump's pagemap marks
//! lazy are ever read, and only for tasks of the dumped tree.
//!
//! Each page goes out once: a bulk thread takes the next unsent chunk under the lock, a
//! request takes its pages out of the unsent set before answering.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::image::LazyImages;
use super::ranges::{Missing, PAGE};
use super::wire::{Header, Kind, HEADER_LEN, MAX_PAGES};

/// Pages per bulk message (1 MiB): large enough for full-speed copies on both sides, small
/// enough that a priority answer never waits long for the link.
pub const BULK_CHUNK_PAGES: u64 = 256;

/// Maps the tree's pids in the images (its own pid namespace) to host pids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidMap(pub HashMap<u32, i32>);

impl PidMap {
    /// Walks the tree rooted at host pid `root` (children via /proc/PID/task/*/children) and
    /// pairs each process's innermost pid (the last `NSpid` field) with its host pid.
    pub fn of_tree(root: i32) -> io::Result<PidMap> {
        let mut map = HashMap::new();
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| io::Error::other(format!("no NSpid for pid {pid}")))?;
            map.insert(inner, pid);
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                    todo.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        Ok(PidMap(map))
    }
}

/// Counters of one serving.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Pages sent on bulk streams.
    pub bulk_pages: AtomicU64,
    /// Pages sent on the priority stream.
    pub priority_pages: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

/// What a finished serving reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServeReport {
    /// Pages sent on bulk streams.
    pub bulk_pages: u64,
    /// Pages sent on the priority stream.
    pub priority_pages: u64,
    /// Requests answered.
    pub requests: u64,
    /// From the start until every bulk stream sent its end (s).
    pub push_secs: f64,
    /// CPU seconds this process used while serving.
    pub cpu_secs: f64,
}

impl ServeReport {
    /// Pages sent in all.
    pub fn pages(&self) -> u64 {
        self.bulk_pages + self.priority_pages
    }
}

struct Source {
    /// image pid -> (host pid, original lazy ranges)
    tasks: HashMap<u32, (i32, Missing)>,
    /// image pid -> pages not sent yet; pids in pstree order for the bulk order
    unsent: Mutex<(Vec<u32>, HashMap<u32, Missing>)>,
    stats: ServeStats,
    stop: AtomicBool,
}

impl Source {
    /// Reads `npages` pages of image pid `pid` at `addr` into `buf`, when they are lazy pages
    /// of that task.
    fn read(&self, pid: u32, addr: u64, npages: u32, buf: &mut [u8]) -> io::Result<bool> {
        let Some((host, lazy)) = self.tasks.get(&pid) else {
            return Ok(false);
        };
        let len = npages as usize * PAGE as usize;
        let covered = lazy
            .by_img(addr, addr + len as u64)
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>();
        if covered != len as u64 {
            return Ok(false);
        }
        read_memory(*host, addr, &mut buf[..len])?;
        Ok(true)
    }

    /// The next chunk to push: (pid, addr, pages).
    fn next_chunk(&self) -> Option<(u32, u64, u32)> {
        self.next_chunk_max(BULK_CHUNK_PAGES)
    }

    /// The next chunk of at most `max` pages: (pid, addr, pages).
    fn next_chunk_max(&self, max: u64) -> Option<(u32, u64, u32)> {
        let mut g = self.unsent.lock().expect("unsent");
        let (order, unsent) = &mut *g;
        for pid in order.iter() {
            let m = unsent.get_mut(pid).expect("listed");
            if let Some(r) = m.first(max) {
                m.remove(r.start, r.end);
                return Some((*pid, r.img, r.pages() as u32));
            }
        }
        None
    }
}

/// Reads `buf.len()` bytes at `addr` of host process `pid` (frozen) with process_vm_readv.
pub fn read_memory(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` describes the unfilled tail of `buf`; `remote` is only read by the
        // kernel in the other process, which checks it.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "process_vm_readv of pid {pid} at {:#x}: {e}",
                    addr as usize + done
                ),
            ));
        }
        if n == 0 {
            return Err(io::Error::other(format!(
                "pid {pid} has no memory at {:#x}",
                addr as usize + done
            )));
        }
        done += n as usize;
    }
    Ok(())
}

/// A running serving: threads pushing and answering; [`Serving::wait_pushed`] returns once
/// every bulk stream sent its end, [`Serving::stop`] ends the priority thread.
pub struct Serving {
    source: Arc<Source>,
    bulk: Vec<std::thread::JoinHandle<io::Result<()>>>,
    priority: Option<std::thread::JoinHandle<io::Result<()>>>,
    priority_sock: Option<std::net::TcpStream>,
    started: Instant,
    push_secs: Arc<Mutex<Option<f64>>>,
    cpu0: f64,
}

/// Starts serving the lazy pages of `images` (the source's copy of the final dump's images),
/// read from the tasks `pids` names, on `bulk` and `priority`.
pub fn serve(
    images: &LazyImages,
    pids: &PidMap,
    bulk: Vec<std::net::TcpStream>,
    priority: std::net::TcpStream,
    criu: Option<std::net::TcpStream>,
) -> io::Result<Serving> {
    let mut tasks = HashMap::new();
    let mut order = Vec::new();
    let mut unsent = HashMap::new();
    for t in &images.tasks {
        if t.lazy.is_empty() {
            continue;
        }
        let host = *pids.0.get(&t.pid).ok_or_else(|| {
            io::Error::other(format!(
                "task {} of the images is not in the frozen tree",
                t.pid
            ))
        })?;
        let m = Missing::from_ranges(t.lazy.iter().copied());
        tasks.insert(t.pid, (host, m.clone()));
        unsent.insert(t.pid, m);
        order.push(t.pid);
    }
    let source = Arc::new(Source {
        tasks,
        unsent: Mutex::new((order, unsent)),
        stats: ServeStats::default(),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let push_secs = Arc::new(Mutex::new(None));
    // with CRIU's page server: one thread splices its answers round the bulk streams;
    // without: one thread per stream reads the tasks' memory itself
    let groups: Vec<(Option<std::net::TcpStream>, Vec<std::net::TcpStream>)> = match criu {
        Some(c) => vec![(Some(c), bulk)],
        None => bulk.into_iter().map(|s| (None, vec![s])).collect(),
    };
    let remaining = Arc::new(AtomicU64::new(groups.len() as u64));
    let mut handles = Vec::new();
    for (i, (via, outs)) in groups.into_iter().enumerate() {
        for s in &outs {
            crate::migrate::sockopt::harden(s);
        }
        let src = source.clone();
        let remaining = remaining.clone();
        let push_secs = push_secs.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("push-{i}"))
                .spawn(move || {
                    let r = match via {
                        Some(c) => push_via_criu(&src, c, outs),
                        None => push(&src, outs.into_iter().next().expect("one stream")),
                    };
                    if remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
                        *push_secs.lock().expect("push time") =
                            Some(started.elapsed().as_secs_f64());
                    }
                    r
                })?,
        );
    }
    crate::migrate::sockopt::harden(&priority);
    let psock = priority.try_clone()?;
    let src = source.clone();
    let prio = std::thread::Builder::new()
        .name("answer".into())
        .spawn(move || answer(&src, priority))?;
    Ok(Serving {
        source,
        bulk: handles,
        priority: Some(prio),
        priority_sock: Some(psock),
        started,
        push_secs,
        cpu0: super::cpu_secs(),
    })
}

/// A pipe for splicing CRIU's answers into a bulk stream, as large as the system lets it be
/// (CRIU's pipe buffers are 4 MiB: one answer fits).
struct SplicePipe {
    r: std::os::fd::OwnedFd,
    w: std::os::fd::OwnedFd,
}

impl SplicePipe {
    fn new() -> io::Result<SplicePipe> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: fcntl on our own pipe; failure only leaves the default size.
        unsafe {
            libc::fcntl(
                w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                MAX_PAGES as i32 * PAGE as i32,
            )
        };
        Ok(SplicePipe { r, w })
    }

    /// Moves exactly `len` bytes from `from` to `to` through the pipe, never through user
    /// space.
    fn relay(&self, from: RawFd, to: RawFd, mut len: usize) -> io::Result<()> {
        let flags = libc::SPLICE_F_MOVE;
        while len > 0 {
            // SAFETY: plain splice(2) between fds we hold; no user memory involved.
            let n = unsafe {
                libc::splice(
                    from,
                    std::ptr::null_mut(),
                    self.w.as_raw_fd(),
                    std::ptr::null_mut(),
                    len,
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "CRIU's page server closed mid-answer",
                ));
            }
            let mut left = n as usize;
            len -= left;
            while left > 0 {
                let more = if len > 0 { libc::SPLICE_F_MORE } else { 0 };
                // SAFETY: as above.
                let m = unsafe {
                    libc::splice(
                        self.r.as_raw_fd(),
                        std::ptr::null_mut(),
                        to,
                        std::ptr::null_mut(),
                        left,
                        flags | more,
                    )
                };
                if m < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                left -= m as usize;
            }
        }
        Ok(())
    }
}

/// Pushes through CRIU's lazy page server (`criu`, the held connection): asks for each chunk
/// with `PS_IOV_GET` (two asks in flight, so CRIU never idles) and splices its answer's pages
/// into the bulk stream. The pages go from CRIU's page pipes to the socket without being
/// copied through user space on this node.
fn push_via_criu(
    src: &Source,
    criu: std::net::TcpStream,
    mut outs: Vec<std::net::TcpStream>,
) -> io::Result<()> {
    use super::criu_ps::{Iov, IOV_LEN, PS_IOV_ADD_F};
    let pipe = SplicePipe::new()?;
    let mut asked: std::collections::VecDeque<(u32, u64, u64)> = std::collections::VecDeque::new();
    let mut sent = vec![0u64; outs.len()];
    let mut k = 0usize;
    let mut criu_w = criu.try_clone()?;
    let mut criu_r = criu;
    let mut get = |asked: &mut std::collections::VecDeque<(u32, u64, u64)>,
                   chunk: Option<(u32, u64, u64)>|
     -> io::Result<()> {
        if let Some((pid, addr, n)) = chunk {
            criu_w.write_all(&Iov::get(pid, addr, n).encode())?;
            asked.push_back((pid, addr, n));
        }
        Ok(())
    };
    let next = || {
        src.next_chunk_max(u64::from(MAX_PAGES))
            .map(|(p, a, n)| (p, a, u64::from(n)))
    };
    for _ in 0..2 {
        get(&mut asked, next())?;
    }
    while let Some((pid, addr, n)) = asked.pop_front() {
        if src.stop.load(Ordering::SeqCst) {
            return Err(io::Error::other("serving stopped"));
        }
        let mut hb = [0u8; IOV_LEN];
        criu_r.read_exact(&mut hb)?;
        let a = Iov::decode(&hb);
        if a.op() != PS_IOV_ADD_F
            || a.vaddr != addr
            || a.dst_id != u64::from(pid)
            || a.nr_pages == 0
            || a.nr_pages > n
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "CRIU answered {a:?} to a request for {n} pages at {addr:#x} of task {pid}"
                ),
            ));
        }
        let got = a.nr_pages;
        if got < n {
            // CRIU stops at the end of one of its pipe buffers: ask again for the rest
            get(&mut asked, Some((pid, addr + got * PAGE, n - got)))?;
        }
        // answers go round the bulk streams: one thread splices, the destination fills on
        // as many threads as there are streams
        k = (k + 1) % outs.len();
        let s = &mut outs[k];
        s.write_all(&Header::pages(pid, addr, got as u32).encode())?;
        pipe.relay(criu_r.as_raw_fd(), s.as_raw_fd(), (got * PAGE) as usize)?;
        sent[k] += got;
        src.stats.bulk_pages.fetch_add(got, Ordering::Relaxed);
        if asked.len() < 2 {
            get(&mut asked, next())?;
        }
    }
    for (s, n) in outs.iter_mut().zip(sent) {
        s.write_all(&Header::end(n).encode())?;
        s.flush()?;
    }
    Ok(())
}

fn push(src: &Source, mut s: std::net::TcpStream) -> io::Result<()> {
    let mut buf =
        vec![0u8; (HEADER_LEN + BULK_CHUNK_PAGES as usize * PAGE as usize).max(HEADER_LEN)];
    let mut sent = 0u64;
    while let Some((pid, addr, n)) = src.next_chunk() {
        if src.stop.load(Ordering::SeqCst) {
            return Err(io::Error::other("serving stopped"));
        }
        let len = n as usize * PAGE as usize;
        buf[..HEADER_LEN].copy_from_slice(&Header::pages(pid, addr, n).encode());
        if !src.read(pid, addr, n, &mut buf[HEADER_LEN..HEADER_LEN + len])? {
            return Err(io::Error::other(format!(
                "bulk chunk {addr:#x}+{n} of task {pid} is not lazy"
            )));
        }
        s.write_all(&buf[..HEADER_LEN + len])?;
        sent += u64::from(n);
        src.stats
            .bulk_pages
            .fetch_add(u64::from(n), Ordering::Relaxed);
    }
    s.write_all(&Header::end(sent).encode())?;
    s.flush()
}

fn answer(src: &Source, mut s: std::net::TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; HEADER_LEN + MAX_PAGES as usize * PAGE as usize];
    loop {
        let mut hb = [0u8; HEADER_LEN];
        match s.read_exact(&mut hb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if src.stop.load(Ordering::SeqCst) => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let h = Header::decode(&hb).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if h.kind != Kind::Request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} on the priority stream", h.kind),
            ));
        }
        {
            let mut g = src.unsent.lock().expect("unsent");
            if let Some(m) = g.1.get_mut(&h.pid) {
                m.remove(h.addr, h.addr + u64::from(h.npages) * PAGE);
            }
        }
        let len = h.npages as usize * PAGE as usize;
        let ok = src.read(
            h.pid,
            h.addr,
            h.npages,
            &mut buf[HEADER_LEN..HEADER_LEN + len],
        )?;
        src.stats.requests.fetch_add(1, Ordering::Relaxed);
        if ok {
            buf[..HEADER_LEN].copy_from_slice(&Header::pages(h.pid, h.addr, h.npages).encode());
            s.write_all(&buf[..HEADER_LEN + len])?;
            src.stats
                .priority_pages
                .fetch_add(u64::from(h.npages), Ordering::Relaxed);
        } else {
            s.write_all(&Header::refused(h.pid, h.addr, h.npages).encode())?;
        }
    }
}

impl Serving {
    /// Blocks until every bulk stream sent its end (or one failed).
    pub fn wait_pushed(&mut self) -> io::Result<()> {
        let mut first_err = None;
        for h in self.bulk.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(io::Error::other("a push thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => {
                self.source.stop.store(true, Ordering::SeqCst);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Ends the priority thread (the destination closes the stream once complete; this makes
    /// sure) and reports.
    pub fn stop(mut self) -> ServeReport {
        self.source.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.priority_sock.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(h) = self.priority.take() {
            let _ = h.join();
        }
        for h in self.bulk.drain(..) {
            let _ = h.join();
        }
        let st = &self.source.stats;
        ServeReport {
            bulk_pages: st.bulk_pages.load(Ordering::Relaxed),
            priority_pages: st.priority_pages.load(Ordering::Relaxed),
            requests: st.requests.load(Ordering::Relaxed),
            push_secs: self
                .push_secs
                .lock()
                .expect("push time")
                .unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
            cpu_secs: super::cpu_secs() - self.cpu0,
        }
    }
}
