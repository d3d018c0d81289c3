//! Post-copy on the source: CRIU serves the pages on this node's 127.0.0.1 (the tasks stay
//! frozen until the last one left), the destination restores with lazy pages and the process
//! runs there at once; haul relays the page traffic over an authenticated memory channel.
//! Until the destination says the process runs, a failure makes CRIU's page server fail, and
//! CRIU resumes the tasks here.

use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::criu::service::{CriuOperation, Until};
use crate::criu::{DumpStats, Hook};
use crate::fault::{self, Phase};
use crate::wire::pb;

use super::super::limits;
use super::super::relay;
use super::session::{Session, Stage};
use super::SourceError;

impl Session {
    /// Serves the lazy dump's pages through the restore and until every page left.
    pub async fn post_copy(
        &mut self,
        mut op: Box<dyn CriuOperation>,
        port: u16,
        t_freeze: Instant,
    ) -> Result<(), SourceError> {
        op.ack(true).await?;
        let (decide, decision) = watch::channel(None);
        let started = async {
            match op.run_until(&Hook::StatusReady).await? {
                Until::Reached(_) => op.ack(true).await?,
                Until::Done(_) => return Err(SourceError::LazyDumpEnded),
            }
            // The destination expects the lazy memory channel once it has the Restore command.
            self.send_restore(true).await?;
            let relay = self.start_lazy_relay(port, decision).await?;
            let restored = self.recv_restored().await?;
            Ok::<_, SourceError>((relay, restored))
        }
        .await;
        let (relay, restored) = match started {
            Ok(x) => x,
            Err(e) => {
                // The process never ran on the destination: fail CRIU's page server, and CRIU
                // resumes the source tasks.
                if decide.send(Some(false)).is_err() || decide.receiver_count() == 0 {
                    let _ = relay::abort_lazy_server(port).await;
                }
                let _ = tokio::time::timeout(limits::CRIU_SETTLE, op.run_to_end()).await;
                self.stage = Stage::Resumed;
                return Err(e);
            }
        };
        let _ = decide.send(Some(true));
        self.record_restore(&restored, t_freeze);
        let t_running = Instant::now();
        self.stage = Stage::Serving(restored.pid, t_running);
        fault::point(Phase::PostCopyServing).await;
        // The dump ends when the destination has pulled every page.
        let served = op.run_to_end().await;
        self.report.postcopy_window_secs = Some(t_running.elapsed().as_secs_f64());
        let relayed = match tokio::time::timeout(limits::SOURCE_RELAY_END, relay).await {
            Ok(Ok(Ok(sent))) => {
                self.report.memory_bytes_sent += sent;
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other(format!(
                "the relay did not end in {} s",
                limits::SOURCE_RELAY_END.as_secs()
            ))),
        };
        self.record_lazy_dump();
        served?;
        // Every page left here in order: the copy on the destination is whole.
        relayed.map_err(|source| SourceError::PageFlow {
            peer: self.cfg.destination.clone(),
            source,
        })?;
        self.stage = Stage::Moved(restored.pid);
        let wait = limits::REPLY.named("the destination's lazy-pages daemon");
        let finished: pb::LazyFinished = self.ctl.request(pb::LazyDone {}, wait).await?;
        if !finished.ok {
            return Err(SourceError::LazyFailed(finished.detail));
        }
        Ok(())
    }

    /// Connects the relay: CRIU's lazy-pages server here, the lazy memory channel there.
    async fn start_lazy_relay(
        &self,
        port: u16,
        decision: watch::Receiver<Option<bool>>,
    ) -> Result<JoinHandle<std::io::Result<u64>>, SourceError> {
        let local = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| SourceError::LazyServer { port, source })?;
        super::super::sockopt::harden(&local);
        let remote = self.memory_channel(0, true).await?;
        Ok(tokio::spawn(relay::source_relay(local, remote, decision)))
    }

    /// Records a lazy dump's figures. CRIU's `stats-dump` of a lazy dump is not usable (its
    /// counters are zero and its frozen time wraps): they come from haul's own clock and from
    /// the bytes the relay carried.
    fn record_lazy_dump(&mut self) {
        let pages = self.report.memory_bytes_sent / 4096;
        self.report.dump = DumpStats {
            pages_lazy: pages,
            ..Default::default()
        };
        self.report.pages_sent += pages;
        self.report.frozen_secs += self.report.downtime_secs;
    }
}
