//! Every bound of a migration in one place (DESIGN.md: "bounded everything"): how long each
//! side waits for what, and how much it admits. A wait on the control channel is a [`Wait`]:
//! what is awaited (for the error message) and for how long.

use std::time::Duration;

/// One named wait on the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// What is awaited, as an error message says it ("the destination's restore").
    pub what: &'static str,
    /// How long.
    pub limit: Duration,
}

impl Wait {
    /// The same wait with another name.
    pub const fn named(self, what: &'static str) -> Wait {
        Wait {
            what,
            limit: self.limit,
        }
    }
}

/// Connecting to the destination and authenticating, per connection.
pub const CONNECT: Duration = Duration::from_secs(10);

/// A peer has this long to authenticate on the destination.
pub const HANDSHAKE: Duration = Duration::from_secs(10);

/// The source waits this long for any answer of the destination: a restore of a large tree
/// and CRIU's page server finishing a large round are the slow ones.
pub const REPLY: Wait = Wait {
    what: "the destination's answer",
    limit: Duration::from_secs(600),
};

/// After a send failed, how long a side still reads for the peer's last word (its `Error`,
/// sent before it closed): long enough for a frame already on its way, short enough not to
/// hold a failing migration (the process may be frozen).
pub const PEER_LAST_WORD: Wait = Wait {
    what: "the peer's error after a failed send",
    limit: Duration::from_millis(500),
};

/// The destination waits this long for the source's next command before it gives up on the
/// migration (pre-copy rounds of a large tree come slowly).
pub const IDLE: Wait = Wait {
    what: "the source's next command",
    limit: Duration::from_secs(600),
};

/// The destination waits this long for a memory channel it asked for (the source opens it
/// right after the command that announces it; twice the handshake bound).
pub const MEMORY_CHANNEL: Duration = Duration::from_secs(20);

/// CRIU's page server has this long to exit once the source ended its round.
pub const PAGE_SERVER_EXIT: Duration = Duration::from_secs(120);

/// After a failed answer to `post-dump` / `post-restore`, CRIU has this long to resume (or
/// kill) the tasks and end the operation.
pub const CRIU_SETTLE: Duration = Duration::from_secs(60);

/// `criu lazy-pages` has this long to create its socket.
pub const LAZY_DAEMON_START: Duration = Duration::from_secs(30);

/// The lazy-pages daemon has this long to connect to the destination's relay, and the
/// source's lazy memory channel this long to arrive.
pub const LAZY_CONNECT: Duration = Duration::from_secs(120);

/// The lazy-pages daemon has this long to fetch every page once the process runs.
pub const LAZY_DAEMON_FINISH: Duration = Duration::from_secs(600);

/// The destination's relay task has this long to end after the daemon did.
pub const LAZY_RELAY_JOIN: Duration = Duration::from_secs(10);

/// The source's relay has this long to end after CRIU's lazy dump ended.
pub const SOURCE_RELAY_END: Duration = Duration::from_secs(30);

/// At the end of a migration, a still running lazy daemon has this long to exit.
pub const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// Connections being authenticated at once on the destination; the oldest is evicted when
/// one more arrives.
pub const MAX_PENDING: usize = 256;

/// Memory channels that arrived before their migration asked for them, kept at most.
pub const MAX_PARKED: usize = 64;

/// Extra free space the destination requires beyond the announced memory size (bytes).
pub const SPACE_MARGIN: u64 = 64 << 20;

/// File sync: messages of a round the source's reader thread may have produced ahead of the
/// control channel (each at most [`crate::sync::limits::MAX_MESSAGE`] = 1 MiB: at most
/// 16 MiB in memory), enough to keep the channel busy while the next file is read.
pub const SYNC_QUEUE: usize = 16;

/// The source writes into a bandwidth probe for this long.
pub const PROBE_SECS: Duration = Duration::from_millis(300);

/// A bandwidth probe carries at most this many bytes.
pub const PROBE_BYTES: u64 = 1 << 30;

/// The destination reads a bandwidth probe for at most this long.
pub const PROBE_WAIT: Duration = Duration::from_secs(10);

/// At most this many bulk memory streams of haul's memory path (besides its priority stream).
pub const MAX_MEMORY_STREAMS: u32 = 16;
