//! Lazy pages on the destination, from one of two sources ([`LazyMemory`]):
//!
//! - haul's memory path ([`crate::memory`]): `haul lazy-engine` takes the restored tasks'
//!   userfaultfds and fills them from the source's memory streams (one priority, N bulk);
//! - CRIU's own: `criu lazy-pages`, connected to a relay on this node's 127.0.0.1, which
//!   carries its traffic over the source's authenticated lazy memory channel.
//!
//! The relay is its own process (`haul lazy-relay`, in its own session, started from
//! `/proc/self/exe`): the copy's memory keeps coming even if `haul serve` dies, and if the
//! source's side ends while pages are still owed, it kills the restored tree before the
//! daemon notices (a daemon that exits releases its userfaultfd, and the kernel then
//! zero-fills every missing page).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tracing::{info, warn};

use crate::memory::process::{self as engine, EngineProcess};

use super::super::error::PathError;
use super::super::images::RoundDir;
use super::super::limits;
use super::channels::ChannelKey;
use super::error::LazyError;
use super::Service;

/// The restored tree's root pid, for the relay (in the final round's directory).
pub const TREE_PID_FILE: &str = "restored.pid";
/// The relay process's log (in the final round's directory).
pub const RELAY_LOG: &str = "lazy-relay.log";
/// The lazy-pages daemon's log (in the final round's directory).
pub const DAEMON_LOG: &str = "lazy-pages.log";

/// Where a restored copy's missing memory comes from.
pub enum LazyMemory {
    /// CRIU's lazy-pages daemon, relayed over the authenticated memory channel.
    Daemon(LazyPages),
    /// haul's own engine, on the source's memory streams.
    Engine(EngineProcess),
}

impl LazyMemory {
    /// haul's engine for migration `migration_id`: the lazy-pages socket the restore connects
    /// to in `rd`, the source's memory streams (priority = lazy round 0, bulk = lazy rounds
    /// `1..=streams`), and `haul lazy-engine` on them. With `hold`, the copy stays held until
    /// every page is in (stop-and-copy).
    pub async fn start_engine(
        service: &Arc<Service>,
        migration_id: &str,
        rd: &RoundDir,
        streams: u32,
        hold: bool,
    ) -> Result<LazyMemory, LazyError> {
        let dir = rd.path();
        let listener = engine::bind_lazy_socket(dir).map_err(|source| LazyError::Bind {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut chans: Vec<OwnedFd> = Vec::new();
        for round in 0..=streams.min(limits::MAX_MEMORY_STREAMS) {
            let key = ChannelKey {
                migration_id: migration_id.to_string(),
                round,
                lazy: true,
            };
            let s = service
                .channels
                .wait_for(key, limits::MEMORY_CHANNEL)
                .await
                .ok_or(LazyError::NoMemoryChannel {
                    round,
                    secs: limits::MEMORY_CHANNEL.as_secs(),
                })?;
            let fd: OwnedFd = s.into_std().map_err(LazyError::LocalEnd)?.into();
            crate::criu::worker::set_blocking(fd.as_raw_fd())
                .map_err(|e| LazyError::LocalEnd(std::io::Error::other(e.to_string())))?;
            chans.push(fd);
        }
        let priority = chans.remove(0);
        let child = engine::spawn(
            dir,
            listener,
            priority,
            chans,
            &dir.join(TREE_PID_FILE),
            hold,
        )
        .map_err(|source| LazyError::EngineSpawn {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(LazyMemory::Engine(child))
    }

    /// Tells the relay or engine which tree to kill should the source's pages stop coming.
    pub fn restored_as(&self, round: &Path, pid: i32) {
        let f = round.join(TREE_PID_FILE);
        if let Err(e) = std::fs::write(&f, pid.to_string()) {
            warn!("cannot write {}: {e}", f.display());
        }
    }

    /// Stop-and-copy over the engine: waits (at most `limit`) until every page is in.
    pub async fn wait_complete(&mut self, limit: std::time::Duration) -> Result<(), String> {
        match self {
            LazyMemory::Engine(e) => e.wait_complete(limit).await,
            LazyMemory::Daemon(_) => Err("only haul's engine holds a copy until complete".into()),
        }
    }

    /// Waits for every page to have arrived; `(true, ..)` when they did.
    pub async fn wait(self) -> (bool, String) {
        match self {
            LazyMemory::Daemon(d) => d.wait().await,
            LazyMemory::Engine(mut e) => e.wait_exit(limits::LAZY_DAEMON_FINISH).await,
        }
    }

    /// Ends what serves nobody (the process was never restored here).
    pub async fn stop(self) {
        match self {
            LazyMemory::Daemon(d) => d.stop().await,
            LazyMemory::Engine(mut e) => e.kill().await,
        }
    }

    /// Leaves what still fills a running copy's memory: it ends on its own.
    pub async fn detach(self) {
        match self {
            LazyMemory::Daemon(d) => d.detach().await,
            LazyMemory::Engine(_) => {}
        }
    }
}

/// A running lazy-pages daemon and the task that starts and waits for its relay.
pub struct LazyPages {
    daemon: Child,
    relay: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl LazyPages {
    /// Starts the relay task (it waits for the daemon's connection and the source's lazy
    /// memory channel, then runs `haul lazy-relay` on both) and `criu lazy-pages`, and waits
    /// until the daemon's socket exists (the restore connects to it).
    pub async fn start(
        service: &Arc<Service>,
        migration_id: &str,
        rd: &RoundDir,
    ) -> Result<LazyPages, LazyError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(LazyError::LocalEnd)?;
        let port = listener.local_addr().map_err(LazyError::LocalEnd)?.port();
        // Registers for the source's lazy memory channel now: it comes once the source's CRIU
        // serves pages.
        let remote = service.channels.expect(ChannelKey {
            migration_id: migration_id.to_string(),
            round: 0,
            lazy: true,
        });
        let dir = rd.path().to_path_buf();
        let relay_dir = dir.clone();
        let id = migration_id.to_string();
        let relay = tokio::spawn(async move {
            let local = match tokio::time::timeout(limits::LAZY_CONNECT, listener.accept()).await {
                Ok(Ok((s, _))) => s,
                _ => return warn!("migration {id}: the lazy-pages daemon never connected"),
            };
            let remote = match tokio::time::timeout(limits::LAZY_CONNECT, remote).await {
                Ok(Ok(s)) => s,
                _ => return warn!("migration {id}: the source's lazy memory channel never came"),
            };
            super::super::sockopt::harden(&local);
            match spawn_relay_process(local, remote, &relay_dir) {
                Ok(mut child) => match child.wait().await {
                    Ok(st) if st.success() => info!("migration {id}: lazy relay done"),
                    Ok(st) => warn!(
                        "migration {id}: lazy relay exited with {st} (see {})",
                        relay_dir.join(RELAY_LOG).display()
                    ),
                    Err(e) => warn!("migration {id}: cannot wait for the lazy relay: {e}"),
                },
                Err(e) => warn!("migration {id}: {}", super::super::error::chain(&e)),
            }
        });
        let criu = service.criu.path();
        let daemon = tokio::process::Command::new(criu)
            .arg("lazy-pages")
            .arg("--page-server")
            .arg("--address")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("-D")
            .arg(&dir)
            .arg("-W")
            .arg(&dir)
            .arg("-o")
            .arg(DAEMON_LOG)
            .arg("-v4")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let daemon = match daemon {
            Ok(d) => d,
            Err(source) => {
                relay.abort();
                return Err(LazyError::Spawn {
                    criu: criu.to_path_buf(),
                    source,
                });
            }
        };
        let lazy = LazyPages { daemon, relay, dir };
        // The daemon creates its socket in the work dir; the restore connects to it.
        let sock = lazy.dir.join("lazy-pages.socket");
        let t0 = Instant::now();
        while !sock.exists() {
            if t0.elapsed() > limits::LAZY_DAEMON_START {
                let log = lazy.dir.join(DAEMON_LOG);
                lazy.stop().await;
                return Err(LazyError::NotStarted {
                    secs: limits::LAZY_DAEMON_START.as_secs(),
                    log,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(lazy)
    }

    /// Waits (at most [`limits::LAZY_DAEMON_FINISH`]) for the daemon to exit after it fetched
    /// every page; `(true, ..)` when it did.
    pub async fn wait(mut self) -> (bool, String) {
        let r = match tokio::time::timeout(limits::LAZY_DAEMON_FINISH, self.daemon.wait()).await {
            Ok(Ok(st)) if st.success() => (true, "every page arrived".into()),
            Ok(Ok(st)) => (false, format!("criu lazy-pages exited with {st}")),
            Ok(Err(e)) => (false, format!("cannot wait for criu lazy-pages: {e}")),
            Err(_) => {
                let _ = self.daemon.start_kill();
                (
                    false,
                    format!(
                        "criu lazy-pages did not finish in {} s",
                        limits::LAZY_DAEMON_FINISH.as_secs()
                    ),
                )
            }
        };
        let _ = tokio::time::timeout(limits::LAZY_RELAY_JOIN, &mut self.relay).await;
        r
    }

    /// Ends a daemon that serves nobody (the process was never restored here).
    pub async fn stop(mut self) {
        let _ = self.daemon.start_kill();
        let _ = tokio::time::timeout(limits::CLEANUP_WAIT, self.daemon.wait()).await;
        self.relay.abort();
    }

    /// Leaves a daemon that still fetches pages for a running copy: it ends on its own.
    pub async fn detach(mut self) {
        let _ = tokio::time::timeout(limits::CLEANUP_WAIT, self.daemon.wait()).await;
        self.relay.abort();
    }
}

/// Starts `haul lazy-relay` on the two connections, in its own session: it outlives this
/// service, so that a restored copy gets the rest of its memory (or is killed, never
/// zero-filled) whatever happens to `haul serve`.
fn spawn_relay_process(
    local: TcpStream,
    remote: TcpStream,
    dir: &Path,
) -> Result<Child, PathError> {
    // This very binary, even if the file was replaced or deleted since it started (an
    // upgrade while `haul serve` runs): exec of /proc/self/exe reaches the running inode.
    let exe = PathBuf::from("/proc/self/exe");
    let take = |s: TcpStream| -> Result<OwnedFd, PathError> {
        Ok(s.into_std()
            .map_err(|e| PathError::new("cannot take over the lazy relay socket in", dir, e))?
            .into())
    };
    let (local, remote) = (take(local)?, take(remote)?);
    let log = dir.join(RELAY_LOG);
    let log_file =
        std::fs::File::create(&log).map_err(|e| PathError::new("cannot create", &log, e))?;
    let fds = [local.as_raw_fd(), remote.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("lazy-relay")
        .arg("--local-fd")
        .arg(fds[0].to_string())
        .arg("--remote-fd")
        .arg(fds[1].to_string())
        .arg("--tree-pid-file")
        .arg(dir.join(TREE_PID_FILE))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(false);
    // SAFETY: runs in the forked child before exec; fcntl(2) and setsid(2) are
    // async-signal-safe and touch no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            crate::criu::worker::keep_across_exec(&fds)?;
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| PathError::new("cannot start the lazy relay", &exe, e))?;
    drop((local, remote));
    Ok(child)
}
