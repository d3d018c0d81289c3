//! Accepting connections: every connection is authenticated before anything else is read
//! from it, within [`limits::HANDSHAKE`], with at most [`limits::MAX_PENDING`] being
//! authenticated at once. An authenticated connection is a migration's control channel (its
//! session runs here) or a memory channel (handed to the migration that asked for it).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::info;

use crate::wire::auth::{self, Purpose};
use crate::wire::frame::Conn;

use super::super::control::{ChannelError, Control};
use super::super::limits;
use super::channels::ChannelKey;
use super::session;
use super::{ServeError, Service};

/// Connections still authenticating, oldest first. When one more would exceed
/// [`limits::MAX_PENDING`], the oldest is told to give up: a real client authenticates within
/// milliseconds, so a flood of idle connections only ever evicts itself.
#[derive(Default)]
pub struct Pending {
    next: u64,
    queue: VecDeque<(u64, Arc<Notify>)>,
}

/// A connection's place in [`Pending`]; leaves it when dropped (authenticated or failed).
pub struct Ticket {
    id: u64,
    evicted: Arc<Notify>,
    pending: Arc<Mutex<Pending>>,
}

impl Pending {
    /// Admits one more connection, evicting the oldest when the queue is full.
    pub fn admit(pending: &Arc<Mutex<Pending>>) -> Ticket {
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.queue.len() >= limits::MAX_PENDING {
            if let Some((_, oldest)) = p.queue.pop_front() {
                oldest.notify_one();
            }
        }
        p.next += 1;
        let id = p.next;
        let evicted = Arc::new(Notify::new());
        p.queue.push_back((id, evicted.clone()));
        Ticket {
            id,
            evicted,
            pending: pending.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.queue.retain(|(id, _)| *id != self.id);
        }
    }
}

/// What one accepted connection turned out to be.
#[derive(Debug)]
pub enum Outcome {
    /// A migration's control channel; its session ran to the end.
    Migration,
    /// A memory channel, handed over.
    MemoryChannel,
}

/// Why a connection was dropped before it became anything.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum AdmitError {
    /// {peer}: closed, still not authenticated when {pending} newer connections were waiting
    Evicted {
        /// The peer.
        peer: SocketAddr,
        /// How many were waiting.
        pending: usize,
    },
    /// {0}
    Channel(#[from] ChannelError),
    /// {peer}: memory channel refused for migration {migration_id:?} round {round} (a duplicate, or too many early channels)
    MemoryRefused {
        /// The peer.
        peer: SocketAddr,
        /// The migration it named.
        migration_id: String,
        /// The round it named.
        round: u32,
    },
    /// {0}
    Migration(#[from] ServeError),
}

/// Authenticates one connection and runs what it is for.
pub async fn handle(
    service: Arc<Service>,
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
) -> Result<Outcome, AdmitError> {
    super::super::sockopt::harden(&stream);
    crate::fault::point(crate::fault::Phase::Handshake).await;
    let mut conn = Conn::new(stream);
    let handshake =
        tokio::time::timeout(limits::HANDSHAKE, auth::server(&mut conn, &service.cfg.key));
    let evicted = ticket.evicted.clone();
    let purpose = tokio::select! {
        r = handshake => match r {
            Err(_) => return Err(ChannelError::Timeout {
                peer: peer.to_string(),
                what: "authentication",
                secs: limits::HANDSHAKE.as_secs(),
            }.into()),
            Ok(Err(source)) => return Err(ChannelError::Auth { peer: peer.to_string(), source }.into()),
            Ok(Ok(p)) => p,
        },
        _ = evicted.notified() => {
            return Err(AdmitError::Evicted { peer, pending: limits::MAX_PENDING })
        }
    };
    drop(ticket);
    match purpose {
        Purpose::Memory(m) => {
            let key = ChannelKey {
                migration_id: m.migration_id,
                round: m.round,
                lazy: m.lazy,
            };
            if service.channels.deliver(key.clone(), conn.into_inner()) {
                Ok(Outcome::MemoryChannel)
            } else {
                Err(AdmitError::MemoryRefused {
                    peer,
                    migration_id: key.migration_id,
                    round: key.round,
                })
            }
        }
        Purpose::Control => {
            info!("{peer}: authenticated; migration starts");
            let mut ctl = Control::new(conn, peer.to_string());
            session::run(service, &mut ctl).await?;
            Ok(Outcome::Migration)
        }
    }
}
