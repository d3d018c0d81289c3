//! Pre-copy: pre-dump rounds while the process runs, each into its own round directory on
//! both nodes (pages through the round's page server, the previous round as parent), until
//! the convergence policy ([`decide`]) says the final dump may come.

use std::os::fd::AsRawFd;
use std::time::Instant;

use tracing::info;

use crate::criu::pb::CriuReqType;
use crate::criu::{client, options, stats};

use super::super::convergence::{decide, Decision, RoundFigures};
use super::super::images;
use super::super::report::RoundReport;
use super::session::Session;
use super::SourceError;

impl Session {
    /// Pre-dump rounds until the dirty set converges; returns the last round's directory
    /// name (the final dump's parent).
    pub async fn pre_copy(&mut self) -> Result<Option<String>, SourceError> {
        let mut parent: Option<String> = None;
        let mut history: Vec<RoundFigures> = Vec::new();
        for round in 1.. {
            let t = Instant::now();
            let rd = self.dir.round(round)?;
            let fd = self.start_round(round).await?;
            let mut opts = options::base(rd.fd(), "pre-dump.log");
            opts.pid = Some(self.cfg.pid);
            opts.track_mem = Some(true);
            if let Some(p) = &parent {
                opts.parent_img = Some(format!("../{p}"));
            }
            self.assessment.apply(&mut opts);
            options::page_server_fd(&mut opts, fd.as_raw_fd());
            let req = client::new_request(CriuReqType::PreDump, Some(opts));
            let log = rd.path().join("pre-dump.log");
            let op = self
                .criu
                .start_request(req, &[fd.as_raw_fd()], Some(log))
                .await?;
            op.run_to_end().await.map_err(SourceError::from_criu)?;
            drop(fd);
            let bytes = self.end_round(round).await?;
            let st = stats::read_dump(rd.path()).unwrap_or_default();
            let secs = t.elapsed().as_secs_f64();
            let bw = bytes as f64 / secs.max(1e-6);
            let est = st.pages_written as f64 * 4096.0 / bw.max(1.0);
            info!(
                "round={round} pages_written={} pages_skipped={} bytes={bytes} bw={:.1}MiB/s est_downtime={est:.3}s",
                st.pages_written,
                st.pages_skipped_parent,
                bw / 1048576.0
            );
            self.report.pages_sent += st.pages_written;
            self.report.memory_bytes_sent += bytes;
            self.report.frozen_secs += f64::from(st.frozen_time_us) / 1e6;
            self.report.rounds.push(RoundReport {
                round,
                stats: st,
                bytes,
                secs,
                bandwidth: bw,
                est_downtime_secs: est,
            });
            history.push(RoundFigures {
                pages_written: st.pages_written,
                est_downtime_secs: est,
            });
            parent = Some(images::round_name(round));
            match decide(&self.cfg.convergence, &history) {
                Decision::Continue => {}
                Decision::FinalDump(why) => {
                    info!("pre-copy stops after round {round}: {why}");
                    self.report.convergence = why;
                    break;
                }
                Decision::Cancel(why) => return Err(SourceError::NotConverged(why)),
            }
        }
        Ok(parent)
    }
}
