//! `haul serve`'s handle on the engine: `haul lazy-engine` runs as its own process, in its own
//! session, on inherited fds, so that a restored copy gets the rest of its memory (or is
//! killed, never zero-filled) whatever happens to `haul serve`. It reports over a pipe, one
//! line per step (`tasks N`, `complete`, `failed: why`).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::AsyncBufReadExt;

/// The lazy-pages socket's name: `criu restore --lazy-pages` connects to it in its work dir.
pub const LAZY_SOCKET: &str = "lazy-pages.socket";
/// The engine's log, in the final round's directory.
pub const ENGINE_LOG: &str = "lazy-engine.log";

/// What the engine said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStatus {
    /// Started, nothing reported yet.
    Starting,
    /// Every task's uffd arrived.
    Tasks(usize),
    /// Every lazy page is in.
    Complete,
    /// It failed (the restored copy was killed).
    Failed(String),
}

/// A running `haul lazy-engine`.
pub struct EngineProcess {
    child: tokio::process::Child,
    status: tokio::sync::watch::Receiver<EngineStatus>,
    log: PathBuf,
}

/// Binds the lazy-pages socket in `dir` (the restore's work directory) before the restore.
///
/// CRIU's restore connects to it by the relative name `lazy-pages.socket` from its work
/// directory (criu/uffd.c, `prepare_sock_addr`), so only the socket's place matters, not the
/// path it is bound by. A unix socket's path must fit `sun_path` (108 bytes with its NUL);
/// an image directory deeper than that (a harness's per-run directories reach 120) is bound
/// through `/proc/self/fd/<dir fd>/lazy-pages.socket`, which names the same place.
pub fn bind_lazy_socket(dir: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::ffi::OsStrExt;
    /// `sizeof(sockaddr_un.sun_path)` less its NUL.
    const SUN_PATH_MAX: usize = 107;
    let p = dir.join(LAZY_SOCKET);
    let _ = std::fs::remove_file(&p);
    if p.as_os_str().as_bytes().len() <= SUN_PATH_MAX {
        return std::os::unix::net::UnixListener::bind(&p);
    }
    let d = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let short = format!(
        "/proc/self/fd/{}/{LAZY_SOCKET}",
        std::os::fd::AsRawFd::as_raw_fd(&d)
    );
    std::os::unix::net::UnixListener::bind(short)
}

/// Starts `haul lazy-engine` (this very binary) on the images in `dir`.
pub fn spawn(
    dir: &Path,
    listener: std::os::unix::net::UnixListener,
    priority: OwnedFd,
    bulk: Vec<OwnedFd>,
    tree_pid_file: &Path,
    hold: bool,
) -> std::io::Result<EngineProcess> {
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let listener: OwnedFd = listener.into();
    let log = dir.join(ENGINE_LOG);
    let log_file = std::fs::File::create(&log)?;
    let mut fds = vec![
        listener.as_raw_fd(),
        priority.as_raw_fd(),
        status_w.as_raw_fd(),
    ];
    fds.extend(bulk.iter().map(|b| b.as_raw_fd()));
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("lazy-engine")
        .arg("--dir")
        .arg(dir)
        .arg("--listen-fd")
        .arg(fds[0].to_string())
        .arg("--priority-fd")
        .arg(fds[1].to_string())
        .arg("--status-fd")
        .arg(fds[2].to_string())
        .arg("--tree-pid-file")
        .arg(tree_pid_file);
    for b in &bulk {
        cmd.arg("--bulk-fd").arg(b.as_raw_fd().to_string());
    }
    if hold {
        cmd.arg("--hold");
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(false);
    let keep = fds.clone();
    // SAFETY: runs in the forked child before exec; fcntl(2) and setsid(2) are
    // async-signal-safe and touch no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            crate::criu::worker::keep_across_exec(&keep)?;
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop((listener, priority, bulk, status_w));
    let (tx, rx) = tokio::sync::watch::channel(EngineStatus::Starting);
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(status_r)?;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let st = if l == "complete" {
                EngineStatus::Complete
            } else if let Some(n) = l.strip_prefix("tasks ") {
                EngineStatus::Tasks(n.parse().unwrap_or(0))
            } else if let Some(why) = l.strip_prefix("failed: ") {
                EngineStatus::Failed(why.to_string())
            } else {
                continue;
            };
            let _ = tx.send(st);
        }
        // the pipe closed: the engine exited; a silent exit before completion is a failure
        tx.send_if_modified(|s| {
            if matches!(s, EngineStatus::Complete | EngineStatus::Failed(_)) {
                false
            } else {
                *s = EngineStatus::Failed("the lazy engine exited".into());
                true
            }
        });
    });
    Ok(EngineProcess {
        child,
        status: rx,
        log,
    })
}

impl EngineProcess {
    /// Waits until every page is in (`Ok`) or the engine failed (`Err(why)`), at most `limit`.
    pub async fn wait_complete(&mut self, limit: std::time::Duration) -> Result<(), String> {
        let log = self.log.display().to_string();
        let r = tokio::time::timeout(
            limit,
            self.status
                .wait_for(|s| matches!(s, EngineStatus::Complete | EngineStatus::Failed(_))),
        )
        .await;
        match r {
            Ok(Ok(s)) => match &*s {
                EngineStatus::Complete => Ok(()),
                EngineStatus::Failed(why) => Err(format!("lazy engine: {why} (see {log})")),
                _ => unreachable!("waited for an end state"),
            },
            Ok(Err(_)) => Err(format!("lazy engine vanished (see {log})")),
            Err(_) => Err(format!(
                "lazy engine not complete after {} s (see {log})",
                limit.as_secs()
            )),
        }
    }

    /// Waits for the engine to exit: `(true, _)` when every page arrived.
    pub async fn wait_exit(&mut self, limit: std::time::Duration) -> (bool, String) {
        let log = self.log.display().to_string();
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(st)) if st.success() => (true, "every page arrived".into()),
            Ok(Ok(st)) => (
                false,
                format!("haul lazy-engine exited with {st} (see {log})"),
            ),
            Ok(Err(e)) => (false, format!("cannot wait for haul lazy-engine: {e}")),
            Err(_) => {
                let _ = self.child.start_kill();
                (
                    false,
                    format!("haul lazy-engine did not finish in {} s", limit.as_secs()),
                )
            }
        }
    }

    /// Kills the engine (the migration ended before a restore).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.child.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore directory whose socket path does not fit `sun_path` (the harness's are 120
    /// bytes deep): the socket is still bound in it, and a client that connects by the
    /// relative name from there (as CRIU's restore does) reaches it.
    #[test]
    fn the_lazy_socket_binds_in_a_directory_too_deep_for_sun_path() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.join(LAZY_SOCKET).as_os_str().len() > 108);
        let listener = bind_lazy_socket(&deep).unwrap();
        assert!(deep.join(LAZY_SOCKET).exists());
        let client = std::thread::spawn({
            let dir = deep.clone();
            move || {
                // connect through a short path to the same place, as a process whose cwd is
                // `dir` does with the bare name
                let d = std::fs::File::open(&dir).unwrap();
                let p = format!(
                    "/proc/self/fd/{}/{LAZY_SOCKET}",
                    std::os::fd::AsRawFd::as_raw_fd(&d)
                );
                std::os::unix::net::UnixStream::connect(p).unwrap()
            }
        });
        let (_conn, _) = listener.accept().unwrap();
        client.join().unwrap();
    }

    #[test]
    fn a_short_directory_binds_directly() {
        let tmp = tempfile::tempdir().unwrap();
        let _l = bind_lazy_socket(tmp.path()).unwrap();
        assert!(tmp.path().join(LAZY_SOCKET).exists());
    }
}
