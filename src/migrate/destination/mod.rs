//! `haul serve`: the destination.
//!
//! - [`accept`]: the accept loop's admission and authentication of every connection;
//! - [`channels`]: memory channels meeting the migrations that asked for them;
//! - [`session`]: one migration's typed states ([`session::State`]) and its one step function;
//! - [`prepare`]: the checks at `Begin` (versions, space, CPU);
//! - [`probe`]: measuring the memory channel for the source's cost estimates;
//! - [`page_server`]: CRIU page servers, one per round, on an authenticated memory channel;
//! - [`restore`]: the two-phase restore (held at `post-restore` until the source says go);
//! - [`lazy`]: post-copy's `criu lazy-pages` daemon and its relay process;
//! - [`sync`]: `--sync` trees received into staging, installed at `Restore`, committed or
//!   rolled back with the migration;
//! - [`error`]: what can fail, per operation, and the wire kind of each failure.
//!
//! One migration's states, as [`session::State`] names them:
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Connected: handshake ok
//!     Connected --> Prepared: Begin (versions, space, CPU, tree requirements ok) / Ready
//!     Connected --> DryRun: Begin{dry_run} / Ready
//!     Prepared --> Prepared: Probe / ProbeDone
//!     DryRun --> DryRun: Probe / ProbeDone
//!     DryRun --> [*]: Finish / Finished (nothing kept)
//!     Prepared --> Prepared: StartPageServer / PageServerStarted, EndPageServer / PageServerEnded, ImageChunk
//!     Prepared --> Held: Restore / RestoreHeld (restored, held at post-restore)
//!     Held --> Running: Resume / Restored (post-restore acknowledged: it runs here)
//!     Held --> [*]: anything else, silence, connection lost (CRIU kills the copy)
//!     Running --> Running: LazyDone / LazyFinished (post-copy: every page arrived)
//!     Running --> [*]: Finish / Finished
//!     Connected --> [*]: Finish, Error, connection lost
//!     Prepared --> [*]: Finish(abandoned) / Finished, Error, connection lost
//! ```

pub mod accept;
pub mod channels;
pub mod error;
pub mod lazy;
pub mod page_server;
pub mod prepare;
pub mod probe;
pub mod restore;
pub mod session;
pub mod sync;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::criu::service::CriuService;
use crate::criu::{Criu, CriuError, CriuVersion, Features};
use crate::wire::Key;

use super::control::{Control, Stream};
use super::error::PathError;
use channels::MemoryChannels;

pub use error::{LazyError, PageServerError, PrepareError, RestoreError, ServeError};

/// The destination's settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The shared key.
    pub key: Key,
    /// Where migrations' images go, one directory per migration.
    pub img_path: PathBuf,
    /// CRIU.
    pub criu: Criu,
    /// Stop after this many migrations (tests); `None`: serve forever.
    pub max_migrations: Option<usize>,
    /// What file syncs (`haul pid --sync`) may write here.
    pub sync: sync::SyncServeOptions,
}

/// Why `haul serve` could not start.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum StartError {
    /// cannot listen on {addr}
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// CRIU on this node does not answer
    Criu(#[from] CriuError),
    /// {0}
    Io(#[from] PathError),
}

/// What every migration on this node shares: settings, CRIU and its features, the memory
/// channel rendezvous.
pub struct Service {
    /// The settings.
    pub cfg: ServeConfig,
    /// CRIU, real or scripted.
    pub criu: Arc<dyn CriuService>,
    /// This node's CRIU version.
    pub version: CriuVersion,
    /// This node's CRIU features.
    pub features: Features,
    /// Memory channels waiting for their migrations.
    pub channels: MemoryChannels,
}

impl Service {
    /// Asks `criu` for its version and features; makes the image directory.
    pub async fn new(cfg: ServeConfig, criu: Arc<dyn CriuService>) -> Result<Service, StartError> {
        let version = criu.version().await?;
        let features = criu.features().await?;
        std::fs::create_dir_all(&cfg.img_path)
            .map_err(|e| PathError::new("cannot create image directory", &cfg.img_path, e))?;
        Ok(Service {
            cfg,
            criu,
            version,
            features,
            channels: MemoryChannels::default(),
        })
    }
}

/// Binds the listening socket (separate from [`serve`] so callers know the port at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Serves migrations one after another (and side by side) until `max_migrations` are done.
pub async fn serve(listener: TcpListener, cfg: ServeConfig) -> Result<(), StartError> {
    let criu: Arc<dyn CriuService> = Arc::new(cfg.criu.clone());
    serve_with(listener, cfg, criu).await
}

/// [`serve`] with `criu` standing in for CRIU (the scripted one in root-free tests).
pub async fn serve_with(
    listener: TcpListener,
    cfg: ServeConfig,
    criu: Arc<dyn CriuService>,
) -> Result<(), StartError> {
    let service = Arc::new(Service::new(cfg, criu).await?);
    info!(
        "haul serve on {} (CRIU {}, mem_track {}, lazy_pages {}), images in {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        service.version,
        service.features.mem_track,
        service.features.lazy_pages,
        service.cfg.img_path.display()
    );
    let pending = Arc::new(Mutex::new(accept::Pending::default()));
    let mut connections = tokio::task::JoinSet::new();
    let mut done = 0usize;
    loop {
        if service.cfg.max_migrations.is_some_and(|max| done >= max) {
            break;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ticket = accept::Pending::admit(&pending);
                let service = service.clone();
                connections.spawn(async move {
                    let r = accept::handle(service, stream, peer, ticket).await;
                    if let Err(e) = &r {
                        warn!("{}", super::error::chain(e));
                    }
                    matches!(r, Ok(accept::Outcome::Migration))
                });
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if matches!(joined, Ok(true)) {
                    done += 1;
                }
            }
        }
    }
    Ok(())
}

/// The session of one migration alone: `conn` is taken as authenticated (tag keys already
/// set, or none), `criu` stands in for CRIU, and no memory channel ever arrives (a page
/// server waits for one until it times out). For the fuzz target and the root-free tests of
/// the protocol's states; `haul serve` itself goes through [`serve`].
#[doc(hidden)]
pub async fn control_session<S: Stream>(
    conn: crate::wire::frame::Conn<S>,
    cfg: ServeConfig,
    criu: Arc<dyn CriuService>,
) -> Result<(), ServeError> {
    let service = Arc::new(Service::new(cfg, criu).await?);
    let mut ctl = Control::new(conn, "source");
    session::run(service, &mut ctl).await
}
