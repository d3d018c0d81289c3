//! After the fork: the reaper and the namespace init, up to `execve`.
//!
//! **Async-signal-safe only.** The caller may be multi-threaded (a test harness, a tokio
//! runtime): `fork` copies only the calling thread, so any lock another thread held at that
//! moment (the allocator's, stdio's, the environment's) stays locked forever in the child.
//! Until `execve` (the init) or `_exit` (the reaper), this module therefore makes only plain
//! `libc` system calls, which POSIX lists as async-signal-safe, on data prepared before the
//! fork ([`ChildPlan`]): no allocation, no locks, no `std` I/O, no panics, no unwinding back
//! into the caller's code. That is also why it calls `libc` directly rather than `nix`: nix's
//! wrappers may allocate (paths, error conversions), and proving otherwise call by call is
//! not worth it here. Failures go to the caller over the status pipe ([`crate::status`]) as
//! fixed-size writes, then the child `_exit`s.
//!
//! What each child does is drawn in the crate documentation.

use std::ffi::CStr;
use std::os::fd::RawFd;

use crate::plan::ChildPlan;
use crate::start_code::START_FD;
use crate::status::{Report, Stage};

/// The name the reaper gives itself (`/proc/PID/comm`, at most 15 bytes).
const REAPER_COMM: &CStr = c"haul-reaper";

/// Exit status of a child whose step failed (reported on the status pipe first).
const EXIT_FAILED_STEP: i32 = 127;

/// Exit status of the reaper when `waitpid` on the init fails (it cannot, short of a bug).
const EXIT_WAIT_FAILED: i32 = 126;

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

/// Report a failed step on the status pipe and end this child.
fn child_fail(status_w: RawFd, stage: Stage, errno: i32) -> ! {
    Report::Failed { stage, errno }.send(status_w);
    // SAFETY: _exit(2) ends this child without running the caller's code (no atexit
    // handlers, no destructors, no flushing of buffers copied from the caller).
    unsafe { libc::_exit(EXIT_FAILED_STEP) }
}

/// close_range(first, last); on kernels without it, close(2) one by one.
fn close_fds(first: u32, last: u32) {
    if first > last {
        return;
    }
    // SAFETY: close_range only closes fds of this process; every fd in the range is either
    // unused by this child or one it means to drop.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return;
    }
    // SAFETY: getrlimit writes into the struct we pass.
    let limit = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur.min(1 << 20) as u32
        } else {
            1024
        }
    };
    for fd in first..=last.min(limit) {
        // SAFETY: as for close_range above.
        unsafe {
            libc::close(fd as RawFd);
        }
    }
}

/// Default dispositions for every signal and an empty signal mask (the caller may ignore
/// SIGCHLD or SIGPIPE, which would break the reaper's waitpid and the workload).
fn reset_signals() {
    // SAFETY: sigaction/sigprocmask on stack-allocated, initialised structures; both are
    // async-signal-safe. Errors (for the signals glibc reserves) are ignored on purpose.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// The reaper: the caller's child. Leaves the caller's session, enters the mount namespace
/// (reopening /dev/null and the output file there) and the network namespace,
/// unshares the pid namespace, forks the init, reports its host pid, drops every fd of the
/// caller's, waits for the init and ends the way it did. Never returns.
pub(crate) fn reaper_main(plan: &ChildPlan) -> ! {
    reset_signals();
    // SAFETY: setsid takes no arguments and only changes this process's session.
    if unsafe { libc::setsid() } < 0 {
        child_fail(plan.status_w, Stage::ReaperSetsid, errno());
    }
    if plan.mntns >= 0 {
        enter_mntns(plan);
    }
    // SAFETY: setns on an fd opened before the fork; it changes only this process.
    if plan.netns >= 0 && unsafe { libc::setns(plan.netns, libc::CLONE_NEWNET) } < 0 {
        child_fail(plan.status_w, Stage::Setns, errno());
    }
    // SAFETY: unshare(CLONE_NEWPID) affects only the children this process forks later.
    if plan.new_pidns && unsafe { libc::unshare(libc::CLONE_NEWPID) } < 0 {
        child_fail(plan.status_w, Stage::Unshare, errno());
    }
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, REAPER_COMM.as_ptr());
    }
    // SAFETY: this process has a single thread (fork copies only the calling one); the child
    // runs init_main, which execs or _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        child_fail(plan.status_w, Stage::Fork, errno());
    }
    if pid == 0 {
        init_main(plan);
    }
    Report::InitForked { host_pid: pid }.send(plan.status_w);
    // SAFETY: dup2/close of this process's own fds, so that the reaper holds nothing of the
    // caller's (its stdout would keep a `$(haul-launch ...)` waiting).
    unsafe {
        libc::dup2(plan.null, 0);
        libc::dup2(plan.null, 1);
        libc::dup2(plan.null, 2);
    }
    close_fds(3, u32::MAX);
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into our stack variable.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && errno() != libc::EINTR {
            // SAFETY: _exit ends this process without running the caller's code.
            unsafe { libc::_exit(EXIT_WAIT_FAILED) }
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: no core file, default action for `sig`, then deliver it to ourselves so the
        // caller's waitpid sees the same death as the init's; plain system calls.
        unsafe {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig)
        }
    }
    // SAFETY: _exit ends this process without running the caller's code.
    unsafe { libc::_exit(libc::WEXITSTATUS(status)) }
}

/// The reaper enters the mount namespace (it is single-threaded, as `setns(CLONE_NEWNS)`
/// requires) and reopens /dev/null and the output file there, onto the fd numbers the plan
/// gave them, so that no fd of the tree points into the caller's mounts.
fn enter_mntns(plan: &ChildPlan) {
    let st = plan.status_w;
    // SAFETY: setns on an fd opened before the fork; it changes only this process.
    if unsafe { libc::setns(plan.mntns, libc::CLONE_NEWNS) } < 0 {
        child_fail(st, Stage::SetnsMnt, errno());
    }
    reopen(st, plan.null_path, libc::O_RDWR, plan.null);
    if let Some(out) = &plan.output_path {
        reopen(
            st,
            out,
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
            plan.output,
        );
    }
}

/// Open `path` with `flags` (close-on-exec, mode 0644 when created) onto the fd number `onto`,
/// replacing what it held; a failure ends the child as [`Stage::SetnsMnt`].
fn reopen(st: RawFd, path: &CStr, flags: libc::c_int, onto: RawFd) {
    // SAFETY: open of a NUL-terminated path prepared before the fork, dup3 onto an fd number
    // this child owns (close-on-exec like the one it replaces), close of the temporary: plain
    // system calls.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        );
        if fd < 0 || libc::dup3(fd, onto, libc::O_CLOEXEC) < 0 {
            child_fail(st, Stage::SetnsMnt, errno());
        }
        libc::close(fd);
    }
}

/// The namespace init: pid 1 of the new pid namespace (when asked for). Becomes a session
/// leader, changes directory, sets up stdio and the start pipe, closes every other fd but the
/// status pipe (close-on-exec) and `execve`s the program. Never returns.
fn init_main(plan: &ChildPlan) -> ! {
    let st = plan.status_w;
    // SAFETY: setsid only changes this process's session (it is not a group leader: its
    // process group is the reaper's).
    if unsafe { libc::setsid() } < 0 {
        child_fail(st, Stage::InitSetsid, errno());
    }
    // SAFETY: chdir reads the NUL-terminated path prepared before the fork.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } < 0 {
        child_fail(st, Stage::Chdir, errno());
    }
    // SAFETY: dup2 of fds opened before the fork (all >= FIRST_PLAN_FD) onto 0, 1, 2.
    let stdio_ok = unsafe {
        libc::dup2(plan.null, 0) >= 0
            && libc::dup2(plan.output, 1) >= 0
            && libc::dup2(plan.output, 2) >= 0
    };
    if !stdio_ok {
        child_fail(st, Stage::Stdio, errno());
    }
    let mut first_closed = START_FD as u32;
    if plan.start_w >= 0 {
        // SAFETY: dup2 of the start pipe (>= FIRST_PLAN_FD) onto fd 3; the copy is not
        // close-on-exec.
        if unsafe { libc::dup2(plan.start_w, START_FD) } < 0 {
            child_fail(st, Stage::StartFd, errno());
        }
        first_closed = START_FD as u32 + 1;
    }
    // Keep only 0..=2, the start pipe, and the status pipe (close-on-exec: it closes when
    // execve succeeds, which tells the caller the program runs).
    close_fds(first_closed, st as u32 - 1);
    close_fds(st as u32 + 1, u32::MAX);
    // SAFETY: execve with NUL-terminated path, argv and envp arrays prepared before the fork;
    // on success it does not return.
    unsafe {
        libc::execve(
            plan.path.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
    }
    child_fail(st, Stage::Exec, errno())
}
