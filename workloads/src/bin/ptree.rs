//! ptree: a process tree (children, a grandchild, a zombie) that checks itself after migration.
//!
//! ```text
//! ptree [--children N] [--tick-ms MS] [--log F] [--stop-file F]
//! ```
//!
//! The root (pid 1 of its namespace) forks a child that exits at once with status 42 and is
//! never reaped until the end (a zombie CRIU must carry over), then N children connected to it
//! by socketpairs; child 0 forks a grandchild of its own, child 1 moves into its own process
//! group. Every tick (20 ms by default) the root pings each child, which answers with its ping
//! count, pid, ppid, sid and pgid (child 0 pings its grandchild first and reports whether it
//! answered right); the root logs `t <sec>.<nsec> <round>`. The root logs a `Fail:` line when
//! a child stops answering, answers wrong (pids, session, group, count), or ends, or when the
//! zombie is no longer a zombie with status 42. When the stop file appears, each member checks
//! its ballast memory and exits, the root reaps everyone (the zombie last, expecting 42), logs
//! `Summary: children=N rounds=<r> failures=<k>`, `Finish`, and exits 0 when nothing failed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{PTREE_LOG, PTREE_STOP};
use haul_workloads::stop::StopFile;
use haul_workloads::worklog::{LogWriter, Timestamp};

/// A process tree with a zombie, checked after migration.
#[derive(Debug, Parser)]
#[command(name = "ptree", version)]
struct Args {
    /// Children of the root (at least 2: child 0 has a grandchild, child 1 its own group).
    #[arg(long, default_value_t = 3)]
    children: usize,
    /// Milliseconds between two ping rounds.
    #[arg(long, default_value_t = 20)]
    tick_ms: u64,
    /// Log file.
    #[arg(long, default_value = PTREE_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = PTREE_STOP)]
    stop_file: PathBuf,
}

/// Exit status of the zombie.
const ZOMBIE_STATUS: i32 = 42;
/// How long a member may take to answer (generous: a loaded machine, a slow restore).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
const PING: u8 = b'P';
const QUIT: u8 = b'Q';
const BALLAST_WORDS: usize = 8192;

/// A member's answer: [count, pid, ppid, sid, pgid, sub_ok, failures].
type Answer = [i64; 7];

fn ids() -> (i64, i64, i64, i64) {
    // SAFETY: these calls take no pointers and cannot fail for the calling process.
    unsafe {
        (
            i64::from(libc::getpid()),
            i64::from(libc::getppid()),
            i64::from(libc::getsid(0)),
            i64::from(libc::getpgid(0)),
        )
    }
}

fn send_answer(sock: &mut UnixStream, a: &Answer) -> std::io::Result<()> {
    let mut b = [0u8; 56];
    for (i, v) in a.iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    sock.write_all(&b)
}

fn read_answer(sock: &mut UnixStream) -> std::io::Result<Answer> {
    let mut b = [0u8; 56];
    sock.read_exact(&mut b)?;
    let mut a = [0i64; 7];
    for (i, v) in a.iter_mut().enumerate() {
        *v = i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    Ok(a)
}

/// The parent's handle on one member of the tree.
struct Member {
    name: String,
    pid: i32,
    sock: UnixStream,
    pings: i64,
    expect_ppid: i64,
    expect_sid: i64,
    expect_pgid: i64,
    has_sub: bool,
    /// No longer answering: not pinged any more.
    dead: bool,
    /// Answered wrong once (logged once; still pinged).
    wrong: bool,
}

/// Why a ping failed.
enum PingError {
    /// The member does not answer (ended, or its socket broke).
    Gone(String),
    /// It answers, but not what it should.
    Wrong(String),
}

impl Member {
    fn new(
        name: String,
        pid: i32,
        sock: UnixStream,
        expect: (i64, i64, i64),
        has_sub: bool,
    ) -> Member {
        Member {
            name,
            pid,
            sock,
            pings: 0,
            expect_ppid: expect.0,
            expect_sid: expect.1,
            expect_pgid: expect.2,
            has_sub,
            dead: false,
            wrong: false,
        }
    }

    /// Ping once, unless it is gone; what to log, at most once per member and kind.
    fn round(&mut self) -> Option<String> {
        if self.dead {
            return None;
        }
        match self.ping() {
            Ok(()) => None,
            Err(PingError::Gone(e)) => {
                self.dead = true;
                Some(e)
            }
            Err(PingError::Wrong(e)) if !self.wrong => {
                self.wrong = true;
                Some(e)
            }
            Err(PingError::Wrong(_)) => None,
        }
    }

    /// Answering, and right every time so far.
    fn healthy(&self) -> bool {
        !self.dead && !self.wrong
    }

    /// Ping once and check the answer.
    fn ping(&mut self) -> Result<(), PingError> {
        self.pings += 1;
        self.sock
            .write_all(&[PING])
            .map_err(|e| PingError::Gone(format!("{}: ping failed: {e}", self.name)))?;
        let a = read_answer(&mut self.sock)
            .map_err(|e| PingError::Gone(format!("{}: no answer: {e}", self.name)))?;
        let [count, pid, ppid, sid, pgid, sub_ok, _] = a;
        let mut wrong = Vec::new();
        if count != self.pings {
            wrong.push(format!("ping count {count}, sent {}", self.pings));
        }
        if pid != i64::from(self.pid) {
            wrong.push(format!("pid {pid}, was {}", self.pid));
        }
        if ppid != self.expect_ppid {
            wrong.push(format!("ppid {ppid}, expected {}", self.expect_ppid));
        }
        if sid != self.expect_sid {
            wrong.push(format!("sid {sid}, expected {}", self.expect_sid));
        }
        if pgid != self.expect_pgid {
            wrong.push(format!("pgid {pgid}, expected {}", self.expect_pgid));
        }
        if self.has_sub && sub_ok != 1 {
            wrong.push("its own child answered wrong or not at all".to_string());
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(PingError::Wrong(format!(
                "{}: {}",
                self.name,
                wrong.join(", ")
            )))
        }
    }

    /// Ask it to check itself and exit; returns its failure count.
    fn quit(&mut self) -> Result<i64, String> {
        self.sock
            .write_all(&[QUIT])
            .map_err(|e| format!("{}: quit failed: {e}", self.name))?;
        let a = read_answer(&mut self.sock)
            .map_err(|e| format!("{}: no answer to quit: {e}", self.name))?;
        Ok(a[6])
    }
}

/// waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT): how `pid` ended, without reaping it;
/// `Ok(None)` while it runs.
fn peek_exit(pid: i32) -> std::io::Result<Option<(i32, i32)>> {
    // SAFETY: waitid writes into the zeroed siginfo we pass.
    let info = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        if libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        info
    };
    // SAFETY: si_pid and si_status are valid fields for a SIGCHLD siginfo filled by waitid.
    let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if si_pid == 0 {
        return Ok(None);
    }
    Ok(Some((info.si_code, status)))
}

fn describe_exit(code: i32, status: i32) -> String {
    match code {
        libc::CLD_EXITED => format!("exited with status {status}"),
        libc::CLD_KILLED | libc::CLD_DUMPED => format!("was killed by signal {status}"),
        _ => format!("ended (code {code}, status {status})"),
    }
}

/// Reap `pid`, waiting up to `timeout`; its exit status, or why not.
fn reap(pid: i32, timeout: Duration) -> Result<i32, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes into our stack variable.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if libc::WIFEXITED(status) {
                return Ok(libc::WEXITSTATUS(status));
            }
            return Err(format!("was killed by signal {}", libc::WTERMSIG(status)));
        }
        if r < 0 {
            return Err(format!(
                "cannot be reaped: {}",
                std::io::Error::last_os_error()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("did not exit within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ballast(seed: u64) -> Vec<u64> {
    (0..BALLAST_WORDS as u64)
        .map(|i| (seed ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        .collect()
}

/// Fork; in the child, run `body` and exit with what it returns (never returning here).
fn fork_member(body: impl FnOnce() -> i32) -> std::io::Result<i32> {
    // SAFETY: the process is single-threaded (ptree never starts threads), so the child may
    // go on running ordinary Rust code; it leaves through process::exit.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => std::process::exit(body()),
        pid => Ok(pid),
    }
}

/// Start child `i`: its own loop (and, for child 0, a grandchild); returns its pid and the
/// root's end of its socket. `in_child` runs first in the child (dropping the start pipe).
fn spawn_child(
    i: usize,
    root: (i64, i64, i64),
    log: &LogWriter,
    others: &[Member],
    in_child: &dyn Fn(),
) -> std::io::Result<(i32, UnixStream)> {
    let (_, sid, pgid) = root;
    let (ours, theirs) = UnixStream::pair()?;
    ours.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let ours_fd = ours.as_raw_fd();
    let others_fds: Vec<i32> = others.iter().map(|m| m.sock.as_raw_fd()).collect();
    let pid = fork_member(|| {
        in_child();
        // SAFETY: the child closes its copies of the root's sockets (to this child and to the
        // others), which it never uses and never drops (it leaves through process::exit).
        unsafe {
            libc::close(ours_fd);
            for fd in &others_fds {
                libc::close(*fd);
            }
        }
        let (cpid, ..) = ids();
        let sub = if i == 0 {
            let Ok((sub_ours, sub_theirs)) = UnixStream::pair() else {
                return 2;
            };
            if sub_ours.set_read_timeout(Some(ANSWER_TIMEOUT)).is_err() {
                return 2;
            }
            let close_in_grandchild = [sub_ours.as_raw_fd(), theirs.as_raw_fd()];
            let gpid = fork_member(|| {
                // SAFETY: the grandchild never uses its copies of child 0's sockets (and never
                // drops them); closing them lets each side see the other's end of stream.
                unsafe {
                    for fd in close_in_grandchild {
                        libc::close(fd);
                    }
                }
                member_main("grandchild", sub_theirs, None, log)
            });
            let Ok(gpid) = gpid else {
                return 2;
            };
            Some(Member::new(
                format!("grandchild (pid {gpid})"),
                gpid,
                sub_ours,
                (cpid, sid, pgid),
                false,
            ))
        } else {
            if i == 1 {
                // SAFETY: setpgid(0, 0) only moves this process into a group of its own.
                unsafe {
                    libc::setpgid(0, 0);
                }
            }
            None
        };
        member_main(&format!("child {i}"), theirs, sub, log)
    })?;
    Ok((pid, ours))
}

/// The loop of a child or grandchild: answer pings until told to quit.
fn member_main(name: &str, mut sock: UnixStream, mut sub: Option<Member>, log: &LogWriter) -> i32 {
    let seed = u64::from(std::process::id()) << 20 | name.len() as u64;
    let mem = ballast(seed);
    let mut count = 0i64;
    let mut failures = 0i64;
    let mut op = [0u8; 1];
    loop {
        if sock.read_exact(&mut op).is_err() {
            // The parent is gone: nothing to answer to.
            return 1;
        }
        let mut sub_ok = -1;
        if let Some(s) = sub.as_mut() {
            if let Some(e) = s.round() {
                let _ = log.fail(&e);
                failures += 1;
            }
            sub_ok = i64::from(s.healthy());
        }
        if op[0] == QUIT {
            if mem != ballast(seed) {
                let _ = log.fail(format_args!(
                    "{name}: its memory differs from what it wrote"
                ));
                failures += 1;
            }
            if let Some(s) = sub.as_mut().filter(|s| !s.dead) {
                match s.quit() {
                    Ok(f) => failures += f,
                    Err(e) => {
                        let _ = log.fail(&e);
                        failures += 1;
                    }
                }
                match reap(s.pid, ANSWER_TIMEOUT) {
                    Ok(0) => {}
                    Ok(c) => {
                        let _ = log.fail(format_args!("{} exited with status {c}", s.name));
                        failures += 1;
                    }
                    Err(e) => {
                        let _ = log.fail(format_args!("{} {e}", s.name));
                        failures += 1;
                    }
                }
            }
        }
        count += 1;
        let (pid, ppid, sid, pgid) = ids();
        if send_answer(&mut sock, &[count, pid, ppid, sid, pgid, sub_ok, failures]).is_err() {
            return 1;
        }
        if op[0] == QUIT {
            return i32::from(failures != 0);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("ptree", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> std::io::Result<bool> {
    let (me, _, my_sid, my_pgid) = ids();
    log.line(format_args!(
        "ptree: pid {me}, {} children",
        args.children.max(2)
    ))?;
    let reporter = std::cell::Cell::new(Some(reporter));
    let discard = || {
        if let Some(r) = reporter.take() {
            r.discard();
        }
    };

    let zombie = fork_member(|| {
        discard();
        ZOMBIE_STATUS
    })?;
    log.line(format_args!("zombie pid {zombie}"))?;

    let mut members: Vec<Member> = Vec::new();
    for i in 0..args.children.max(2) {
        let (pid, sock) = spawn_child(i, (me, my_sid, my_pgid), log, &members, &discard)?;
        let name = format!("child {i}");
        log.line(format_args!("{name} pid {pid}"))?;
        let pgid = if i == 1 { i64::from(pid) } else { my_pgid };
        members.push(Member::new(
            format!("{name} (pid {pid})"),
            pid,
            sock,
            (me, my_sid, pgid),
            i == 0,
        ));
    }

    let mut fails: Vec<String> = Vec::new();
    let mut fail = |log: &LogWriter, text: String| -> std::io::Result<()> {
        log.fail(&text)?;
        fails.push(text);
        Ok(())
    };
    // One round before reporting: the tree is complete and answering.
    for m in members.iter_mut() {
        if let Some(e) = m.round() {
            fail(log, e)?;
        }
    }
    if let Some(r) = reporter.take() {
        r.report(StartCode::Ok)?;
    }

    let stop = StopFile::new(&args.stop_file);
    let mut rounds = 1u64;
    let mut zombie_ok = true;
    while !stop.requested() {
        std::thread::sleep(Duration::from_millis(args.tick_ms));
        rounds += 1;
        for m in members.iter_mut().filter(|m| !m.dead) {
            if let Ok(Some((code, status))) = peek_exit(m.pid) {
                fail(log, format!("{} {}", m.name, describe_exit(code, status)))?;
                m.dead = true;
                continue;
            }
            if let Some(e) = m.round() {
                fail(log, e)?;
            }
        }
        if zombie_ok {
            match peek_exit(zombie) {
                Ok(Some((libc::CLD_EXITED, ZOMBIE_STATUS))) => {}
                Ok(Some((code, status))) => {
                    fail(
                        log,
                        format!(
                            "the zombie (pid {zombie}) {}, expected status {ZOMBIE_STATUS}",
                            describe_exit(code, status)
                        ),
                    )?;
                    zombie_ok = false;
                }
                Ok(None) => {
                    fail(log, format!("the zombie (pid {zombie}) is running again"))?;
                    zombie_ok = false;
                }
                Err(e) => {
                    fail(log, format!("the zombie (pid {zombie}) is gone: {e}"))?;
                    zombie_ok = false;
                }
            }
        }
        log.tick(Timestamp::now(), rounds, 1)?;
    }

    for m in members.iter_mut() {
        if !m.dead {
            match m.quit() {
                Ok(0) => {}
                Ok(n) => fail(log, format!("{} found {n} problem(s) in itself", m.name))?,
                Err(e) => fail(log, e)?,
            }
        } else if peek_exit(m.pid).ok().flatten().is_none() {
            // Gone silent but still there: end it, it was already reported.
            // SAFETY: kill(2) of our own child.
            unsafe {
                libc::kill(m.pid, libc::SIGKILL);
            }
        }
        match reap(m.pid, ANSWER_TIMEOUT) {
            Ok(0) => {}
            Ok(c) if !m.dead => fail(log, format!("{} exited with status {c}", m.name))?,
            Err(e) if !m.dead => fail(log, format!("{} {e}", m.name))?,
            _ => {}
        }
    }
    match reap(zombie, ANSWER_TIMEOUT) {
        Ok(ZOMBIE_STATUS) => {}
        Ok(c) if zombie_ok => fail(
            log,
            format!("the zombie (pid {zombie}) exited with status {c}, expected {ZOMBIE_STATUS}"),
        )?,
        Err(e) if zombie_ok => fail(log, format!("the zombie (pid {zombie}) {e}"))?,
        _ => {}
    }
    log.summary(format_args!(
        "children={} rounds={rounds} failures={}",
        members.len(),
        fails.len()
    ))?;
    log.finish()?;
    Ok(fails.is_empty())
}
