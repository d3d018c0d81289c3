//! Memory channels meeting the migrations that asked for them.
//!
//! The source opens a memory channel right after the command that announces it, so the
//! channel may be authenticated before the destination's migration has processed that
//! command: an early channel is parked (at most [`limits::MAX_PARKED`]) until its migration
//! asks for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::super::limits;

/// Which channel: the migration, the page-server round (0 = final dump), and whether it
/// carries post-copy's lazy-pages traffic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The migration id.
    pub migration_id: String,
    /// The round.
    pub round: u32,
    /// Post-copy traffic.
    pub lazy: bool,
}

/// The rendezvous, shared by the accept loop and every migration.
#[derive(Default, Clone)]
pub struct MemoryChannels {
    inner: Arc<Mutex<Rendezvous>>,
}

#[derive(Default)]
struct Rendezvous {
    waiting: HashMap<ChannelKey, oneshot::Sender<TcpStream>>,
    parked: HashMap<ChannelKey, TcpStream>,
}

impl MemoryChannels {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rendezvous> {
        // A poisoned lock only means a panic elsewhere; the maps stay consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A migration asks for channel `key`; the receiver yields it once it is there.
    pub fn expect(&self, key: ChannelKey) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        let mut r = self.lock();
        match r.parked.remove(&key) {
            Some(stream) => {
                let _ = tx.send(stream);
            }
            None => {
                r.waiting.insert(key, tx);
            }
        }
        rx
    }

    /// Waits up to `limit` for channel `key`; `None` when it did not come.
    pub async fn wait_for(&self, key: ChannelKey, limit: std::time::Duration) -> Option<TcpStream> {
        let rx = self.expect(key.clone());
        let r = tokio::time::timeout(limit, rx).await;
        self.lock().waiting.remove(&key);
        r.ok().and_then(Result::ok)
    }

    /// An authenticated channel `key` arrived: hand it over, or park it; `false` when refused
    /// (a duplicate, or too many early channels).
    pub fn deliver(&self, key: ChannelKey, stream: TcpStream) -> bool {
        let mut r = self.lock();
        if let Some(tx) = r.waiting.remove(&key) {
            return tx.send(stream).is_ok();
        }
        if r.parked.len() >= limits::MAX_PARKED || r.parked.contains_key(&key) {
            return false;
        }
        r.parked.insert(key, stream);
        true
    }

    /// Drops whatever belongs to migration `id`.
    pub fn forget(&self, id: &str) {
        let mut r = self.lock();
        r.waiting.retain(|k, _| k.migration_id != id);
        r.parked.retain(|k, _| k.migration_id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(round: u32) -> ChannelKey {
        ChannelKey {
            migration_id: "m".into(),
            round,
            lazy: false,
        }
    }

    async fn stream() -> TcpStream {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap());
        let (c, _a) = tokio::join!(c, l.accept());
        c.unwrap()
    }

    #[tokio::test]
    async fn early_channels_are_parked_and_duplicates_refused() {
        let ch = MemoryChannels::default();
        assert!(ch.deliver(key(1), stream().await));
        assert!(!ch.deliver(key(1), stream().await), "a duplicate");
        let got = ch.wait_for(key(1), std::time::Duration::from_secs(1)).await;
        assert!(got.is_some(), "the parked one is handed over");
        assert!(ch
            .wait_for(key(2), std::time::Duration::from_millis(10))
            .await
            .is_none());
        ch.forget("m");
        assert!(ch.lock().waiting.is_empty() && ch.lock().parked.is_empty());
    }
}
