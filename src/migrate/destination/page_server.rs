//! CRIU page servers on the destination, one per round: CRIU's `PAGE_SERVER_CHLD` on an
//! authenticated memory channel handed over as `ps.fd` (CRIU's socket never faces the
//! network), writing `pages-*.img` into the round's directory; `WAIT_PID` reaps it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use tracing::info;

use crate::criu::pb::{self as cpb, CriuReqType};
use crate::criu::service::CriuOperation;
use crate::criu::{client, options, Event};

use super::super::error::PathError;
use super::super::images::{self, MigrationDir, RoundDir};
use super::super::limits;
use super::channels::ChannelKey;
use super::error::PageServerError;
use super::Service;

/// A page server serving one round.
pub struct PageServer {
    round: u32,
    op: Box<dyn CriuOperation>,
    pid: i32,
    dir: RoundDir,
    _sock: OwnedFd,
}

impl PageServer {
    /// Waits for the round's memory channel and starts CRIU's page server on it. With
    /// `parent` (the previous round), the page server tells the source's dump that it has a
    /// parent, and only then does the dump skip pages not dirtied since: without it every
    /// pre-copy round (and the final dump) would send all of memory again.
    pub async fn start(
        service: &Arc<Service>,
        migration_id: &str,
        dir: &MigrationDir,
        round: u32,
        parent: Option<u32>,
    ) -> Result<PageServer, PageServerError> {
        let rd = dir.round(round)?;
        let key = ChannelKey {
            migration_id: migration_id.to_string(),
            round,
            lazy: false,
        };
        let stream = service
            .channels
            .wait_for(key, limits::MEMORY_CHANNEL)
            .await
            .ok_or(PageServerError::NoMemoryChannel {
                round,
                secs: limits::MEMORY_CHANNEL.as_secs(),
            })?;
        let sock: OwnedFd = stream
            .into_std()
            .map_err(|e| PathError::new("cannot take over the memory channel of", rd.path(), e))?
            .into();
        let criu_err = |source| PageServerError::Criu { round, source };
        crate::criu::worker::set_blocking(sock.as_raw_fd()).map_err(criu_err)?;
        let mut opts = options::base(rd.fd(), "page-server.log");
        // No notifications: the page server is a forked child sharing the RPC socket; its
        // status-ready could come after the parent's answer and would then wait for an
        // acknowledgement forever (and the parent would read that acknowledgement as a request).
        opts.notify_scripts = None;
        if let Some(p) = parent {
            opts.parent_img = Some(format!("../{}", images::round_name(p)));
        }
        options::page_server_fd(&mut opts, sock.as_raw_fd());
        let mut req = client::new_request(CriuReqType::PageServerChld, Some(opts));
        req.keep_open = Some(true);
        let log = rd.path().join("page-server.log");
        let mut op = service
            .criu
            .start_request(req, &[sock.as_raw_fd()], Some(log))
            .await
            .map_err(criu_err)?;
        // PAGE_SERVER_CHLD answers once the page server serves.
        let resp = loop {
            match op.next().await {
                Ok(Event::Done(r)) => break r,
                Ok(Event::Notify(_)) => {
                    if let Err(e) = op.ack(true).await {
                        op.finish().await;
                        return Err(criu_err(e));
                    }
                }
                Err(e) => {
                    op.finish().await;
                    return Err(criu_err(e));
                }
            }
        };
        let pid = resp.ps.and_then(|p| p.pid).unwrap_or(0);
        info!("migration {migration_id}: page server for round {round} is pid {pid}");
        Ok(PageServer {
            round,
            op,
            pid,
            dir: rd,
            _sock: sock,
        })
    }

    /// Waits (at most [`limits::PAGE_SERVER_EXIT`]) for the page server to exit once the
    /// source's dump ended; returns the bytes of pages it wrote.
    pub async fn end(mut self) -> Result<u64, PageServerError> {
        let round = self.round;
        let req = cpb::CriuReq {
            r#type: CriuReqType::WaitPid as i32,
            pid: Some(self.pid as u32),
            ..Default::default()
        };
        let waited = tokio::time::timeout(limits::PAGE_SERVER_EXIT, self.op.request(req)).await;
        let resp = match waited {
            Err(_) => {
                self.kill().await;
                return Err(PageServerError::Stuck {
                    round,
                    secs: limits::PAGE_SERVER_EXIT.as_secs(),
                });
            }
            Ok(Err(source)) => {
                self.op.finish().await;
                return Err(PageServerError::Criu { round, source });
            }
            Ok(Ok(r)) => r,
        };
        let PageServer { op, dir, .. } = self;
        op.finish().await;
        let status = resp.status.unwrap_or(-1);
        if status != 0 {
            return Err(PageServerError::Exit {
                round,
                status,
                log: dir.path().join("page-server.log"),
            });
        }
        Ok(dir_bytes(dir.path(), |n| n.starts_with("pages-")))
    }

    /// Kills the page server (a migration that ends without its round ending).
    pub async fn kill(self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.op.finish().await;
    }
}

/// Bytes of the files of `dir` whose names `pick` accepts.
fn dir_bytes(dir: &std::path::Path, pick: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| pick(&e.file_name().to_string_lossy()))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
