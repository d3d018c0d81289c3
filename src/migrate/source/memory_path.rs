//! The source's side of haul's memory path ([`crate::memory`]): after a lazy dump the tasks
//! stay frozen under CRIU's idle lazy page server while haul pushes their lazy pages to the
//! destination's engine over the memory streams opened before the freeze (faulted pages
//! first, on the priority stream). Post-copy lets the process run on the destination at
//! once; stop-and-copy has the destination hold it until every page is in. Until the
//! destination runs the process, a failure makes CRIU resume the tasks here.

use std::time::Instant;

use tracing::{info, warn};

use crate::criu::service::{CriuOperation, Until};
use crate::criu::{DumpStats, Hook};
use crate::fault::{self, Phase};
use crate::memory::criu_ps;
use crate::memory::hold::CriuLazyHold;
use crate::memory::source_path::SourcePath;
use crate::wire::pb;

use super::super::error::PathError;
use super::super::images::RoundDir;
use super::super::limits;
use super::super::relay;
use super::session::{Session, Stage};
use super::SourceError;

impl Session {
    /// The memory streams of the engine, authenticated before anything is frozen: the
    /// priority stream (lazy round 0), then the bulk streams (lazy rounds 1..=N); blocking
    /// std sockets for the serving threads.
    pub async fn open_memory_streams(&self) -> Result<Vec<std::net::TcpStream>, SourceError> {
        let mut out = Vec::new();
        for round in 0..=self.memory_streams() {
            let s = self
                .memory_channel(round, true)
                .await?
                .into_std()
                .map_err(|e| {
                    PathError::new("cannot take over memory stream", round.to_string(), e)
                })?;
            s.set_nonblocking(false).map_err(|e| {
                PathError::new("cannot block on memory stream", round.to_string(), e)
            })?;
            out.push(s);
        }
        Ok(out)
    }

    /// Bulk streams asked for, within [`limits::MAX_MEMORY_STREAMS`].
    fn memory_streams(&self) -> u32 {
        self.cfg.memory.streams.clamp(1, limits::MAX_MEMORY_STREAMS)
    }

    /// The `Restore` of the memory path (`early`: sent before the final dump).
    pub fn engine_restore(&self, early: bool) -> pb::Restore {
        let t = &self.assessment.options;
        pb::Restore {
            lazy: true,
            tcp_established: t.tcp_established,
            shell_job: t.shell_job,
            file_locks: t.file_locks,
            ext_unix_sk: t.ext_unix_sk,
            memory_streams: self.memory_streams(),
            hold_until_complete: self.hold_until_complete,
            early,
        }
    }

    /// Serves the lazy dump's pages over the memory streams until every page is in, and
    /// answers `post-dump`'s CRIU accordingly.
    pub async fn post_copy_engine(
        &mut self,
        mut op: Box<dyn CriuOperation>,
        port: u16,
        t_freeze: Instant,
        rd: &RoundDir,
        mut streams: Vec<std::net::TcpStream>,
    ) -> Result<(), SourceError> {
        let dir = rd.path().to_path_buf();
        op.ack(true).await?;
        let started = async {
            // Connected while CRIU waits for the answer to status-ready, so no moment is left
            // in which a killed `haul pid` leaves CRIU in accept() with the tasks frozen (see
            // CriuLazyHold::connect); a fault-matrix run in CI once caught that moment.
            let hold = match op.run_until(&Hook::StatusReady).await? {
                Until::Reached(_) => {
                    let hold = CriuLazyHold::connect(port)
                        .map_err(|source| SourceError::LazyServer { port, source });
                    op.ack(hold.is_ok()).await?;
                    hold?
                }
                Until::Done(_) => return Err(SourceError::LazyDumpEnded),
            };
            fault::point(Phase::LazyHeld).await;
            let priority = streams.remove(0);
            let splice = self.cfg.memory.via_criu
                && self.report.source_criu.is_some_and(criu_ps::speaks_layout);
            let (pid, at) = (self.cfg.pid, dir.clone());
            tokio::task::spawn_blocking(move || {
                SourcePath::start(hold, &at, pid, streams, priority, splice)
            })
            .await
            .map_err(|e| PathError::new("memory path", &dir, std::io::Error::other(e)))?
            .map_err(|e| PathError::new("cannot start the memory path on", &dir, e).into())
        }
        .await;
        let path = match started {
            Ok(p) => p,
            Err(e) => {
                let _ = relay::abort_lazy_server(port).await;
                let _ = tokio::time::timeout(limits::CRIU_SETTLE, op.run_to_end()).await;
                self.stage = Stage::Resumed;
                return Err(e);
            }
        };
        let restored = match self.recv_restored().await {
            Ok(r) => r,
            Err(e) => {
                // The process never ran on the destination: CRIU resumes the source tasks.
                let _ = tokio::task::spawn_blocking(move || path.failed()).await;
                let _ = tokio::time::timeout(limits::CRIU_SETTLE, op.run_to_end()).await;
                self.stage = Stage::Resumed;
                return Err(e);
            }
        };
        let _ = path.destination_runs();
        self.record_restore(&restored, t_freeze);
        let t_running = Instant::now();
        self.stage = Stage::Serving(restored.pid, t_running);
        fault::point(Phase::PostCopyServing).await;
        let lazy_pages = path.lazy_pages();
        let (path, pushed) = tokio::task::spawn_blocking(move || {
            let mut path = path;
            let r = path.wait_pushed();
            (path, r)
        })
        .await
        .map_err(|e| PathError::new("memory path", &dir, std::io::Error::other(e)))?;
        let verdict = match pushed {
            Ok(()) => {
                let wait = limits::REPLY.named("the destination's lazy engine");
                match self
                    .ctl
                    .request::<pb::LazyFinished>(pb::LazyDone {}, wait)
                    .await
                {
                    Ok(f) if f.ok => Ok(()),
                    Ok(f) => Err(SourceError::LazyFailed(f.detail)),
                    Err(e) => Err(e.into()),
                }
            }
            Err(source) => Err(SourceError::PageFlow {
                peer: self.cfg.destination.clone(),
                source,
            }),
        };
        // Either way the process is the destination's now: CRIU ends the source tasks.
        let (released, served) = tokio::task::spawn_blocking(move || path.done())
            .await
            .map_err(|e| PathError::new("memory path", &dir, std::io::Error::other(e)))?;
        let ended = tokio::time::timeout(limits::CRIU_SETTLE, op.run_to_end()).await;
        self.report.postcopy_window_secs =
            (!self.hold_until_complete).then(|| t_running.elapsed().as_secs_f64());
        self.report.memory_bytes_sent += served.pages() * 4096;
        self.report.dump = DumpStats {
            pages_lazy: lazy_pages,
            ..Default::default()
        };
        self.report.pages_sent += served.pages();
        self.report.frozen_secs += self.report.downtime_secs;
        info!(
            "memory path: {} pages pushed on {} bulk streams in {:.3}s, {} pages on request ({} requests), {:.3} CPU-s",
            served.bulk_pages,
            self.memory_streams(),
            served.push_secs,
            served.priority_pages,
            served.requests,
            served.cpu_secs
        );
        verdict?;
        if let Err(e) = released {
            warn!("releasing CRIU's lazy page server: {e}");
        }
        match ended {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("CRIU reported after the process moved: {e}"),
            Err(_) => warn!(
                "CRIU's lazy dump did not end within {} s after the last page",
                limits::CRIU_SETTLE.as_secs()
            ),
        }
        self.stage = Stage::Moved(restored.pid);
        Ok(())
    }
}
