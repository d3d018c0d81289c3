//! The final dump. CRIU dumps the tree and stops at `post-dump`: the tasks are frozen and
//! not yet killed. While frozen, the images go to the destination and (stop-copy, pre-copy)
//! it restores; only once it says the process runs there is `post-dump` acknowledged and
//! CRIU kills the tasks here. Any failure before that answers `post-dump` with failure, and
//! CRIU resumes the tasks.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use tracing::{info, warn};

use crate::criu::pb::CriuReqType;
use crate::criu::service::{CriuOperation, Until};
use crate::criu::{client, options, stats, Event, Hook};
use crate::fault::{self, Phase};
use crate::wire::pb;

use super::super::images::RoundDir;
use super::super::limits;
use super::super::report::FinalDumpParts;
use super::super::{relay, transfer};
use super::progress;
use super::session::{Session, Stage};
use super::SourceError;

/// How memory leaves in the final dump.
enum Memory {
    /// Through the round's page server on an authenticated memory channel (`ps.fd`).
    PageServer(OwnedFd),
    /// Served by CRIU on this node's 127.0.0.1:port after the freeze (post-copy).
    Lazy(u16),
}

/// What the destination said while the tasks were frozen.
enum HandOver {
    /// The process runs there.
    Restored(pb::Restored),
    /// Post-copy: the images are there; the restore waits for CRIU to serve pages on this
    /// node's 127.0.0.1 at the port given.
    LazyReady(u16),
}

impl Session {
    /// Dumps the tree (its memory lazily when `lazy`) with `parent` as the last pre-copy
    /// round, hands it over while frozen, and answers `post-dump`.
    pub async fn final_dump(
        &mut self,
        lazy: bool,
        parent: Option<String>,
    ) -> Result<(), SourceError> {
        let rd = self.dir.round(0)?;
        let mut opts = options::base(rd.fd(), "dump.log");
        opts.pid = Some(self.cfg.pid);
        self.assessment.apply(&mut opts);
        if let Some(p) = &parent {
            opts.parent_img = Some(format!("../{p}"));
            opts.track_mem = Some(true);
        }
        let memory = if lazy {
            let port = relay::free_local_port()
                .map_err(|source| SourceError::LazyServer { port: 0, source })?;
            opts.lazy_pages = Some(true);
            options::page_server_addr(&mut opts, "127.0.0.1", port);
            Memory::Lazy(port)
        } else {
            let fd = self.start_round(0).await?;
            options::page_server_fd(&mut opts, fd.as_raw_fd());
            Memory::PageServer(fd)
        };
        // haul's memory path: its streams, authenticated before anything is frozen, and the
        // destination's restore started already (CRIU's start-up there overlaps the dump; it
        // waits for ImagesDone).
        let streams = match &memory {
            Memory::Lazy(_) if self.memory_engine => {
                let streams = self.open_memory_streams().await?;
                self.ctl.send(self.engine_restore(true)).await?;
                Some(streams)
            }
            _ => None,
        };
        let early = streams.is_some();
        let inherit: Vec<_> = match &memory {
            Memory::PageServer(fd) => vec![fd.as_raw_fd()],
            Memory::Lazy(_) => Vec::new(),
        };
        let bar = match &memory {
            Memory::PageServer(fd) if self.cfg.progress => {
                Some(progress::dump_bar(self.memory_bytes, fd.as_raw_fd()))
            }
            _ => None,
        };
        let log = rd.path().join("dump.log");
        let req = client::new_request(CriuReqType::Dump, Some(opts));
        let t_freeze = Instant::now();
        self.stage = Stage::Frozen;
        let mut op = self.criu.start_request(req, &inherit, Some(log)).await?;
        let mut parts = FinalDumpParts::default();
        let mut t_part = t_freeze;
        if self.throttle.is_some() {
            if let Err(e) = self.release_throttle_at_pre_dump(&mut op).await {
                // Answered with failure: CRIU gives up before it seizes the tree.
                nack(op).await;
                self.stage = Stage::Resumed;
                if let Some(b) = bar {
                    b.abandon();
                }
                return Err(e);
            }
            parts.until_pre_dump_secs = Some(t_part.elapsed().as_secs_f64());
            t_part = Instant::now();
        }
        // Wait for post-dump: everything dumped, tasks frozen.
        let reached = op.run_until(&Hook::PostDump).await;
        parts.dump_secs = t_part.elapsed().as_secs_f64();
        self.report.final_parts = Some(parts);
        if !matches!(reached, Ok(Until::Reached(_))) {
            // CRIU resumes the tasks when a dump fails.
            op.finish().await;
            self.stage = Stage::Resumed;
            if let Some(b) = bar {
                b.abandon();
            }
            return Err(match reached {
                Err(e) => SourceError::from_criu(e),
                _ => SourceError::NoPostDump,
            });
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        fault::point(Phase::Frozen).await;
        let handed = self.while_frozen(&rd, &memory, early, t_freeze).await;
        drop(memory);
        match handed {
            Err(e) => {
                warn!(
                    "migration failed while frozen: {}; resuming the process on the source",
                    super::super::error::chain(&e)
                );
                nack(op).await;
                self.stage = Stage::Resumed;
                Err(e)
            }
            Ok(HandOver::Restored(restored)) => {
                self.record_restore(&restored, t_freeze);
                self.stage = Stage::Moved(restored.pid);
                op.ack(true).await?;
                let r = op.run_to_end().await;
                self.record_dump(&rd);
                if let Err(e) = r {
                    warn!("CRIU reported after the process moved: {e}");
                }
                Ok(())
            }
            Ok(HandOver::LazyReady(port)) => match streams {
                Some(streams) => {
                    self.post_copy_engine(op, port, t_freeze, &rd, streams)
                        .await
                }
                None => self.post_copy(op, port, t_freeze).await,
            },
        }
    }

    /// Waits for the final dump's `pre-dump` notification (CRIU has started and is about to
    /// seize the tree; it records the tree's cgroups only later) and releases pre-copy's
    /// throttle before answering it (see [`super::precopy`]). On error the notification is
    /// left for the caller to refuse.
    async fn release_throttle_at_pre_dump(
        &mut self,
        op: &mut Box<dyn CriuOperation>,
    ) -> Result<(), SourceError> {
        loop {
            match op.next().await? {
                Event::Notify(n) if n.hook == Hook::PreDump => break,
                Event::Notify(n) if n.hook == Hook::PostDump => return Err(SourceError::NoPreDump),
                Event::Notify(_) => op.ack(true).await?,
                Event::Done(_) => return Err(SourceError::NoPostDump),
            }
        }
        self.release_throttle()
            .map_err(SourceError::ThrottleNotReleased)?;
        Ok(op.ack(true).await?)
    }

    /// The part of the final dump that happens while the tasks are frozen.
    async fn while_frozen(
        &mut self,
        rd: &RoundDir,
        memory: &Memory,
        early: bool,
        t_freeze: Instant,
    ) -> Result<HandOver, SourceError> {
        let t_handoff = Instant::now();
        if let Memory::PageServer(_) = memory {
            let bytes = self.end_round(0).await?;
            self.report.memory_bytes_sent += bytes;
        }
        self.sync_final(t_freeze).await?;
        let sent = transfer::send_images(&mut self.ctl, rd.path(), 0).await?;
        self.report.image_bytes_sent += sent;
        if early {
            // the early restore waits for this before it reads its first image
            self.ctl.send(pb::ImagesDone { round: 0 }).await?;
        }
        match memory {
            // Post-copy restores only once CRIU serves the pages (the restore faults on them).
            Memory::Lazy(port) => Ok(HandOver::LazyReady(*port)),
            Memory::PageServer(_) => {
                let handoff_secs = t_handoff.elapsed().as_secs_f64();
                let t_restore = Instant::now();
                let restored = self.restore(false).await?;
                if let Some(p) = &mut self.report.final_parts {
                    p.handoff_secs = handoff_secs;
                    p.restore_call_secs = t_restore.elapsed().as_secs_f64();
                    info!(
                        "final dump's parts: CRIU until pre-dump {}, dump until post-dump {:.3}s, hand-off {handoff_secs:.3}s, restore call {:.3}s (destination's wall {:.3}s)",
                        p.until_pre_dump_secs
                            .map_or_else(|| "-".to_string(), |s| format!("{s:.3}s")),
                        p.dump_secs,
                        p.restore_call_secs,
                        restored.restore_wall_secs
                    );
                }
                Ok(HandOver::Restored(restored))
            }
        }
    }

    /// Records the final (not lazy) dump's figures from CRIU's `stats-dump`.
    fn record_dump(&mut self, rd: &RoundDir) {
        match stats::read_dump(rd.path()) {
            Ok(st) => {
                self.report.dump = st;
                self.report.pages_sent += st.pages_written;
                self.report.frozen_secs += f64::from(st.frozen_time_us) / 1e6;
            }
            Err(e) => {
                warn!("{e}");
                self.report.frozen_secs += self.report.downtime_secs;
            }
        }
    }
}

/// Answers `post-dump` with failure: CRIU resumes the tasks; waits (bounded) for it to end.
pub async fn nack(mut op: Box<dyn CriuOperation>) {
    let _ = op.ack(false).await;
    let _ = tokio::time::timeout(limits::CRIU_SETTLE, op.next()).await;
    op.finish().await;
}
