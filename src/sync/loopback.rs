//! Drives a source and a receiver in one process, every message encoded and decoded as it
//! would be on the control channel: the tests' transport, and the reference for how the
//! protocol code calls the two sides.

use prost::Message as _;

use super::error::SyncError;
use super::limits::MAX_MESSAGE;
use super::pb;
use super::receiver::{ReceiverConfig, SyncReceiver};
use super::source::{SourceConfig, SyncSource};
use super::stats::RoundStats;

/// Opens both sides: the source's `SyncOpen` goes through an encode/decode.
pub fn open(
    src: SourceConfig,
    dst: ReceiverConfig,
) -> Result<(SyncSource, SyncReceiver, pb::SyncOpened), SyncError> {
    let (source, open) = SyncSource::open(src)?;
    let open = pb::SyncOpen::decode(open.encode_to_vec().as_slice()).expect("own encoding");
    let (receiver, opened) = SyncReceiver::open(dst, &open)?;
    Ok((source, receiver, opened))
}

/// Runs one round from `src` into `dst`; returns the source's figures, with the
/// destination's answer recorded in them.
pub fn run_round(
    src: &mut SyncSource,
    dst: &mut SyncReceiver,
    final_round: bool,
) -> Result<RoundStats, SyncError> {
    let mut round = src.round(final_round)?;
    let mut reply = None;
    while let Some(m) = round.next_message()? {
        let bytes = m.encode_to_vec();
        assert!(
            bytes.len() <= MAX_MESSAGE,
            "a message of {} bytes exceeds MAX_MESSAGE",
            bytes.len()
        );
        let m = pb::SyncMessage::decode(bytes.as_slice()).expect("own encoding");
        if let Some(r) = dst.handle(m)? {
            reply = Some(r);
        }
    }
    drop(round);
    let reply = reply.ok_or_else(|| SyncError::protocol("after RoundEnd", "no RoundApplied"))?;
    src.applied(&reply)?;
    Ok(src
        .history()
        .last()
        .cloned()
        .expect("the round was recorded"))
}
