//! The memory channel's bandwidth, measured (`Probe`): the source writes zeros into a memory
//! channel for [`limits::PROBE_SECS`] (at most [`limits::PROBE_BYTES`]), the destination
//! counts what arrives on its own clock and answers `ProbeDone`. `auto`'s cost estimates and
//! `--dry-run` use it; it costs about a third of a second of total time, none of downtime.

use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::wire::{pb, PROBE_ROUND};

use super::super::control::Control;
use super::super::limits;
use super::session::memory_channel;
use super::{SourceConfig, SourceError};

/// Measures the memory channel to the destination of migration `migration_id`; bytes/s.
pub async fn bandwidth(
    ctl: &mut Control<TcpStream>,
    cfg: &SourceConfig,
    migration_id: &str,
) -> Result<f64, SourceError> {
    ctl.send(pb::Probe { round: PROBE_ROUND }).await?;
    let mut mem = memory_channel(cfg, migration_id, PROBE_ROUND, false).await?;
    let zeros = vec![0u8; 1 << 20];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < limits::PROBE_SECS && sent < limits::PROBE_BYTES {
        if mem.write_all(&zeros).await.is_err() {
            break;
        }
        sent += zeros.len() as u64;
    }
    let _ = mem.shutdown().await;
    let done: pb::ProbeDone = ctl
        .expect(limits::REPLY.named("the destination's bandwidth probe"))
        .await?;
    Ok(if done.secs > 0.0 {
        done.bytes as f64 / done.secs
    } else {
        0.0
    })
}
