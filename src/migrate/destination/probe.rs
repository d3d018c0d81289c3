//! Measuring the memory channel for the source (`Probe`): the source opens a memory channel
//! for round [`crate::wire::PROBE_ROUND`] and writes for a short while; this side reads and
//! discards what comes until the source closes its end, and says how many bytes came in how
//! long, on its own clock (from the first byte to the end). At most [`limits::PROBE_BYTES`]
//! bytes are read, within [`limits::PROBE_WAIT`].

use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;

use crate::wire::{pb, PROBE_ROUND};

use super::super::limits;
use super::channels::ChannelKey;
use super::error::PageServerError;
use super::Service;

/// Receives one probe of migration `migration_id`.
pub async fn receive(
    service: &Arc<Service>,
    migration_id: &str,
) -> Result<pb::ProbeDone, PageServerError> {
    let key = ChannelKey {
        migration_id: migration_id.to_string(),
        round: PROBE_ROUND,
        lazy: false,
    };
    let mut stream = service
        .channels
        .wait_for(key, limits::MEMORY_CHANNEL)
        .await
        .ok_or(PageServerError::NoMemoryChannel {
            round: PROBE_ROUND,
            secs: limits::MEMORY_CHANNEL.as_secs(),
        })?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let mut first: Option<Instant> = None;
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    first.get_or_insert_with(Instant::now);
                    bytes += n as u64;
                    if bytes >= limits::PROBE_BYTES {
                        break;
                    }
                }
            }
        }
    };
    let _ = tokio::time::timeout(limits::PROBE_WAIT, read).await;
    let secs = first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
    Ok(pb::ProbeDone { bytes, secs })
}
