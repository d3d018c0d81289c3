//! Before the fork: everything the children will need, prepared while allocating and
//! failing are still allowed.
//!
//! [`prepare`] checks what the caller asked for and turns it into a [`ChildPlan`]: the
//! program resolved to an absolute path (the init changes directory before `execve`), argv
//! and envp as NUL-terminated arrays, and every fd the children use (the status and start
//! pipes, `/dev/null`, the output file, the network and mount namespaces) opened close-on-exec
//! and moved to numbers >= [`FIRST_PLAN_FD`], so that the init's `dup2` onto 0..=3 never lands
//! on one of them. After the fork the children only read this plan (see [`crate::child`]).
//!
//! With a mount namespace, `/dev/null` and the output file must be the namespace's own (a
//! file of the caller's mounts is one CRIU cannot find in the tree's namespace): the plan
//! then holds their absolute paths too, and the reaper reopens them there onto the fd numbers
//! prepared here (the output's number held by a `/dev/null` until then).

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::error::LaunchError;
use crate::spec::{netns_path, LaunchSpec, StartProtocol};
use crate::start_code::{START_FD, START_FD_ENV};

/// The lowest fd number the plan's fds get: above 0..=2 (stdio) and [`START_FD`], which the
/// init `dup2`s onto.
pub(crate) const FIRST_PLAN_FD: RawFd = 10;

/// The `PATH` searched when the caller has none (glibc's default for root).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every fd the launch uses, all close-on-exec and numbered >= [`FIRST_PLAN_FD`].
pub(crate) struct PlanFds {
    status_r: OwnedFd,
    status_w: OwnedFd,
    start_r: Option<OwnedFd>,
    start_w: Option<OwnedFd>,
    null: OwnedFd,
    output: Option<OwnedFd>,
    netns: Option<OwnedFd>,
    mntns: Option<OwnedFd>,
}

/// The read ends the caller keeps after the fork.
pub(crate) struct CallerEnds {
    /// The status pipe ([`crate::status`]).
    pub(crate) status_r: OwnedFd,
    /// The start pipe, with [`StartProtocol::StartFd`].
    pub(crate) start_r: Option<OwnedFd>,
}

impl PlanFds {
    /// After the fork, in the caller: close everything but the read ends, so that end of file
    /// on them means the children closed theirs.
    pub(crate) fn into_caller_ends(self) -> CallerEnds {
        CallerEnds {
            status_r: self.status_r,
            start_r: self.start_r,
        }
    }
}

/// Everything the reaper and the init read after the fork: plain data and raw fds, borrowed
/// from the [`PlanFds`] that own them (`'fds`), so that no fd closes while a plan refers to it.
pub(crate) struct ChildPlan<'fds> {
    /// Absolute path of the program.
    pub(crate) path: CString,
    /// The working directory.
    pub(crate) cwd: CString,
    _argv: Vec<CString>,
    /// NULL-terminated pointers into `_argv`.
    pub(crate) argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    /// NULL-terminated pointers into `_envp`.
    pub(crate) envp_ptrs: Vec<*const libc::c_char>,
    /// `/dev/null`, read-write: the init's stdin, and the reaper's stdio.
    pub(crate) null: RawFd,
    /// The init's stdout and stderr (`null` unless an output file was asked for).
    pub(crate) output: RawFd,
    /// The network namespace to enter, or -1.
    pub(crate) netns: RawFd,
    /// The mount namespace to enter, or -1.
    pub(crate) mntns: RawFd,
    /// `/dev/null`, reopened onto `null` once in the mount namespace.
    pub(crate) null_path: &'static CStr,
    /// In a mount namespace: the output file (absolute), reopened onto `output` there.
    pub(crate) output_path: Option<CString>,
    /// Whether the reaper unshares a new pid namespace for the init.
    pub(crate) new_pidns: bool,
    /// Write end of the status pipe.
    pub(crate) status_w: RawFd,
    /// Write end of the start pipe, or -1.
    pub(crate) start_w: RawFd,
    _fds: PhantomData<&'fds PlanFds>,
}

/// The absolute program path, the fds, in that order: check `spec` and open what it needs.
/// The [`ChildPlan`] is made from them with [`ChildPlan::new`].
pub(crate) fn prepare(spec: &LaunchSpec) -> Result<(PathBuf, PlanFds), LaunchError> {
    let program = resolve_program(&spec.program)?;
    let fds = open_fds(spec)?;
    Ok((program, fds))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The absolute path `execve` gets (the init changes directory before exec'ing).
pub(crate) fn resolve_program(program: &Path) -> Result<PathBuf, LaunchError> {
    let not_found = || LaunchError::ProgramNotFound {
        program: program.to_path_buf(),
    };
    if program.as_os_str().as_bytes().contains(&b'/') {
        let abs = if program.is_absolute() {
            program.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|_| not_found())?
                .join(program)
        };
        return if is_executable(&abs) {
            Ok(abs)
        } else {
            Err(not_found())
        };
    }
    if program.as_os_str().is_empty() {
        return Err(not_found());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        })
        .ok_or_else(not_found)
}

/// A close-on-exec copy of `fd` numbered >= [`FIRST_PLAN_FD`] (`fd` itself is closed).
fn move_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    let new = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(FIRST_PLAN_FD))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// A close-on-exec pipe (read end, write end), both moved high.
fn pipe_high() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((move_high(r)?, move_high(w)?))
}

fn open_fds(spec: &LaunchSpec) -> Result<PlanFds, LaunchError> {
    let sys = |call: &'static str| {
        move |source| LaunchError::Sys {
            call,
            program: spec.program.clone(),
            source,
        }
    };
    match spec.cwd.metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(LaunchError::Cwd {
                path: spec.cwd.clone(),
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            })
        }
        Err(source) => {
            return Err(LaunchError::Cwd {
                path: spec.cwd.clone(),
                source,
            })
        }
    }
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(sys("open /dev/null"))?;
    let null = move_high(null.into()).map_err(sys("fcntl"))?;
    let output = match &spec.output {
        None => None,
        // in a mount namespace the file is opened there (by the reaper): /dev/null holds its
        // fd number until then
        Some(_) if spec.mntns.is_some() => {
            let f = OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(sys("open /dev/null"))?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
        Some(path) => {
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(path)
                .map_err(|source| LaunchError::Output {
                    path: path.clone(),
                    source,
                })?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
    };
    let netns = match &spec.netns {
        None => None,
        Some(name) => {
            let path = netns_path(name);
            let f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|source| LaunchError::Netns { path, source })?;
            Some(move_high(f.into()).map_err(sys("fcntl"))?)
        }
    };
    let mntns =
        match &spec.mntns {
            None => None,
            Some(path) => {
                let f = OpenOptions::new().read(true).open(path).map_err(|source| {
                    LaunchError::Mntns {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(move_high(f.into()).map_err(sys("fcntl"))?)
            }
        };
    let (status_r, status_w) = pipe_high().map_err(sys("pipe2"))?;
    let (start_r, start_w) = match spec.protocol {
        StartProtocol::StartFd => {
            let (r, w) = pipe_high().map_err(sys("pipe2"))?;
            (Some(r), Some(w))
        }
        StartProtocol::Exec => (None, None),
    };
    Ok(PlanFds {
        status_r,
        status_w,
        start_r,
        start_w,
        null,
        output,
        netns,
        mntns,
    })
}

fn cstring(bytes: &[u8], what: impl FnOnce() -> String) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| LaunchError::Nul { what: what() })
}

impl<'fds> ChildPlan<'fds> {
    /// The plan for launching `program` (resolved from `spec.program`) with `fds`: argv with
    /// `spec.program` as given as argv\[0\], the caller's environment with `spec.env` on top
    /// and, with [`StartProtocol::StartFd`], [`START_FD_ENV`]`=3`.
    pub(crate) fn new(
        spec: &LaunchSpec,
        program: &Path,
        fds: &'fds PlanFds,
    ) -> Result<ChildPlan<'fds>, LaunchError> {
        let path = cstring(program.as_os_str().as_bytes(), || {
            format!("program path {program:?}")
        })?;
        // in a mount namespace the reaper starts at its root: relative paths mean the caller's
        let absolute = |p: &Path| match (&spec.mntns, p.is_relative()) {
            (Some(_), true) => std::env::current_dir().unwrap_or_default().join(p),
            _ => p.to_path_buf(),
        };
        let cwd = cstring(absolute(&spec.cwd).as_os_str().as_bytes(), || {
            format!("working directory {:?}", spec.cwd)
        })?;
        let mut argv = vec![cstring(spec.program.as_os_str().as_bytes(), || {
            format!("program {:?}", spec.program)
        })?];
        for a in &spec.args {
            argv.push(cstring(a.as_bytes(), || format!("argument {a:?}"))?);
        }
        let overridden = |k: &OsStr| {
            k == OsStr::new(START_FD_ENV) || spec.env.iter().any(|(key, _)| key.as_os_str() == k)
        };
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !overridden(k))
            .collect();
        vars.extend(spec.env.iter().cloned());
        if spec.protocol == StartProtocol::StartFd {
            vars.push((START_FD_ENV.into(), START_FD.to_string().into()));
        }
        let mut envp = Vec::with_capacity(vars.len());
        for (k, v) in vars {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstring(&kv, || format!("environment variable {k:?}"))?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        Ok(ChildPlan {
            path,
            cwd,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            null: fds.null.as_raw_fd(),
            output: fds
                .output
                .as_ref()
                .map_or(fds.null.as_raw_fd(), |f| f.as_raw_fd()),
            netns: raw(&fds.netns),
            mntns: raw(&fds.mntns),
            null_path: c"/dev/null",
            output_path: match (&spec.mntns, &spec.output) {
                (Some(_), Some(o)) => Some(cstring(absolute(o).as_os_str().as_bytes(), || {
                    format!("output file {o:?}")
                })?),
                _ => None,
            },
            new_pidns: spec.own_pid_namespace,
            status_w: fds.status_w.as_raw_fd(),
            start_w: raw(&fds.start_w),
            _fds: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs() {
        assert!(resolve_program(Path::new("sh")).unwrap().is_absolute());
        assert!(matches!(
            resolve_program(Path::new("no-such-program-here")),
            Err(LaunchError::ProgramNotFound { .. })
        ));
        assert!(matches!(
            resolve_program(Path::new("/etc/passwd")),
            Err(LaunchError::ProgramNotFound { .. })
        ));
    }

    #[test]
    fn every_plan_fd_is_high_and_close_on_exec() {
        let dir = std::env::temp_dir();
        let spec = LaunchSpec::new("sh").cwd(&dir).netns("/proc/self/ns/net");
        let (program, fds) = prepare(&spec).unwrap();
        let plan = ChildPlan::new(&spec, &program, &fds).unwrap();
        for fd in [plan.null, plan.netns, plan.status_w, plan.start_w] {
            assert!(fd >= FIRST_PLAN_FD, "{fd}");
            // SAFETY: F_GETFD on an fd `fds` owns reads its flags only.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "fd {fd}");
        }
        assert_eq!(plan.output, plan.null);
        assert_eq!(plan.argv_ptrs.last(), Some(&std::ptr::null()));
        let envp: Vec<&[u8]> = plan.envp_ptrs[..plan.envp_ptrs.len() - 1]
            .iter()
            // SAFETY: every pointer but the last points into a CString the plan owns.
            .map(|p| unsafe { std::ffi::CStr::from_ptr(*p) }.to_bytes())
            .collect();
        assert_eq!(envp.last(), Some(&&b"HAUL_START_FD=3"[..]));
    }

    #[test]
    fn in_a_mount_namespace_the_output_is_opened_there() {
        // cargo runs unit tests in the package's directory
        let dir = std::env::current_dir().unwrap();
        let spec = LaunchSpec::new("sh")
            .cwd(".")
            .mntns("/proc/self/ns/mnt")
            .output("haul-launch-plan-test-never-created.log");
        let (program, fds) = prepare(&spec).unwrap();
        let plan = ChildPlan::new(&spec, &program, &fds).unwrap();
        for fd in [plan.mntns, plan.output] {
            assert!(fd >= FIRST_PLAN_FD, "{fd}");
            // SAFETY: F_GETFD on an fd `fds` owns reads its flags only.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "fd {fd}");
        }
        // the output's fd number is held by /dev/null until the reaper reopens it
        assert_ne!(plan.output, plan.null);
        let held = std::fs::read_link(format!("/proc/self/fd/{}", plan.output)).unwrap();
        assert_eq!(held, Path::new("/dev/null"));
        assert!(!dir.join("haul-launch-plan-test-never-created.log").exists());
        // relative paths are the caller's, made absolute for the namespace
        assert_eq!(plan.cwd.as_bytes(), dir.join(".").as_os_str().as_bytes());
        let out = dir.join("haul-launch-plan-test-never-created.log");
        assert_eq!(
            plan.output_path.as_deref().map(CStr::to_bytes),
            Some(out.as_os_str().as_bytes())
        );
        assert_eq!(plan.null_path, c"/dev/null");
    }

    #[test]
    fn a_missing_mount_namespace_is_named() {
        let spec = LaunchSpec::new("sh").mntns("/haul-no-such-mntns");
        let e = prepare(&spec).err().unwrap();
        assert!(matches!(e, LaunchError::Mntns { .. }), "{e}");
        assert!(e.to_string().contains("/haul-no-such-mntns"), "{e}");
    }

    #[test]
    fn nul_bytes_are_named() {
        let spec = LaunchSpec::new("sh").arg("a\0b");
        let (program, fds) = prepare(&spec).unwrap();
        let e = ChildPlan::new(&spec, &program, &fds).err().unwrap();
        assert!(e.to_string().contains("argument"), "{e}");
    }
}
