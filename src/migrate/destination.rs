//! `haul serve`: the destination.
//!
//! The accept loop authenticates every connection before reading anything else from it
//! (bounded time, bounded number of connections being authenticated at once). A control
//! connection runs one migration's state machine; a memory connection is handed to the
//! migration that asked for it, by migration id and round.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Connected: handshake ok
//!     Connected --> Prepared: Begin (versions, CPU, space ok) / Ready
//!     Prepared --> Prepared: StartPageServer, EndPageServer, ImageChunk
//!     Prepared --> Running: Restore / Restored (post-copy: RestoreHeld, Resume first)
//!     Running --> Running: LazyDone / LazyFinished
//!     Running --> [*]: Finish
//!     Prepared --> [*]: Finish(abandoned), Error, connection lost
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::criu::pb::{self as cpb, CriuReqType};
use crate::criu::service::{CriuOperation, CriuService};
use crate::criu::{options, stats, Criu, CriuVersion, Event, Features};
use crate::wire::auth::{self, Purpose};
use crate::wire::frame::Conn;
use crate::wire::pb::{self, message::Body};
use crate::wire::Key;

use super::images::{self, MigrationDir, RoundDir};
use super::transfer::ImageReceiver;
use super::MigrateError;

/// How long a peer may take to authenticate.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a migration may stay silent before the destination gives up on it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections being authenticated at once; more are closed at once.
pub const MAX_PENDING: usize = 256;
/// Extra free space required beyond the announced memory size.
pub const SPACE_MARGIN: u64 = 64 << 20;

/// The destination's settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The shared key.
    pub key: Key,
    /// Where migrations' images go.
    pub img_path: PathBuf,
    /// CRIU.
    pub criu: Criu,
    /// Stop after this many migrations (tests); `None`: serve forever.
    pub max_migrations: Option<usize>,
}

type MemoryKey = (String, u32, bool);
type MemorySlots = Arc<Mutex<MemoryChannels>>;

/// Memory channels meeting the migrations that asked for them. The source opens a channel
/// right after the command that announces it, so the channel may be authenticated before the
/// destination's migration has processed that command: an early channel is parked until the
/// migration asks for it.
#[derive(Default)]
struct MemoryChannels {
    waiting: HashMap<MemoryKey, oneshot::Sender<TcpStream>>,
    parked: HashMap<MemoryKey, TcpStream>,
}

/// Early channels kept at most (they come from authenticated peers only).
const MAX_PARKED: usize = 64;

impl MemoryChannels {
    /// A migration asks for channel `key`; the receiver yields it once it is there.
    fn expect(&mut self, key: MemoryKey) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        match self.parked.remove(&key) {
            Some(stream) => {
                let _ = tx.send(stream);
            }
            None => {
                self.waiting.insert(key, tx);
            }
        }
        rx
    }

    /// An authenticated channel `key` arrived: hand it over, or park it; `false` when refused.
    fn deliver(&mut self, key: MemoryKey, stream: TcpStream) -> bool {
        if let Some(tx) = self.waiting.remove(&key) {
            return tx.send(stream).is_ok();
        }
        if self.parked.len() >= MAX_PARKED || self.parked.contains_key(&key) {
            return false;
        }
        self.parked.insert(key, stream);
        true
    }

    /// Drops whatever belongs to migration `id`.
    fn forget(&mut self, id: &str) {
        self.waiting.retain(|k, _| k.0 != id);
        self.parked.retain(|k, _| k.0 != id);
    }
}

struct Shared {
    cfg: ServeConfig,
    criu: Arc<dyn CriuService>,
    version: CriuVersion,
    features: Features,
    slots: MemorySlots,
}

impl Shared {
    /// Asks `criu` for its version and features; makes the image directory.
    async fn new(cfg: ServeConfig, criu: Arc<dyn CriuService>) -> Result<Shared, MigrateError> {
        let version = criu.version().await?;
        let features = criu.features().await?;
        std::fs::create_dir_all(&cfg.img_path)
            .map_err(|e| MigrateError::io("cannot create image directory", &cfg.img_path, e))?;
        Ok(Shared {
            cfg,
            criu,
            version,
            features,
            slots: Arc::default(),
        })
    }
}

/// Binds the listening socket (separate from [`serve`] so callers know the port at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MigrateError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MigrateError::Connect {
            peer: format!("listen address {addr}"),
            source,
        })
}

/// Serves migrations one after another (and side by side) until `max_migrations` are done.
pub async fn serve(listener: TcpListener, cfg: ServeConfig) -> Result<(), MigrateError> {
    let criu: Arc<dyn CriuService> = Arc::new(cfg.criu.clone());
    let shared = Arc::new(Shared::new(cfg, criu).await?);
    info!(
        "haul serve on {} (CRIU {}, mem_track {}, lazy_pages {}), images in {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        shared.version,
        shared.features.mem_track,
        shared.features.lazy_pages,
        shared.cfg.img_path.display()
    );
    let pending = Arc::new(Mutex::new(Pending::default()));
    let mut migrations = tokio::task::JoinSet::new();
    let mut done = 0usize;
    loop {
        if let Some(max) = shared.cfg.max_migrations {
            if done >= max {
                break;
            }
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
                let permit = Pending::admit(&pending);
                let shared = shared.clone();
                migrations.spawn(async move {
                    let r = handle_connection(shared, stream, peer, permit).await;
                    if let Err(e) = &r {
                        warn!("{peer}: {e}");
                    }
                    r.unwrap_or(false)
                });
            }
            Some(joined) = migrations.join_next(), if !migrations.is_empty() => {
                if matches!(joined, Ok(true)) {
                    done += 1;
                }
            }
        }
    }
    Ok(())
}

/// Connections still authenticating, oldest first. When one more would exceed
/// [`MAX_PENDING`], the oldest is told to give up: a real client authenticates within
/// milliseconds, so a flood of idle connections only ever evicts itself.
#[derive(Default)]
struct Pending {
    next: u64,
    queue: std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>,
}

/// A connection's place in [`Pending`]; leaves it when dropped (authenticated or failed).
struct Ticket {
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
    pending: Arc<Mutex<Pending>>,
}

impl Pending {
    fn admit(pending: &Arc<Mutex<Pending>>) -> Ticket {
        let mut p = pending.lock().expect("pending lock");
        if p.queue.len() >= MAX_PENDING {
            if let Some((_, oldest)) = p.queue.pop_front() {
                oldest.notify_one();
            }
        }
        p.next += 1;
        let id = p.next;
        let evicted = Arc::new(tokio::sync::Notify::new());
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

/// Authenticates one connection and runs what it is for; `Ok(true)` when it was a migration.
async fn handle_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Ticket,
) -> Result<bool, MigrateError> {
    super::sockopt::harden(&stream);
    crate::fault::point(crate::fault::Phase::Handshake).await;
    let mut conn = Conn::new(stream);
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, auth::server(&mut conn, &shared.cfg.key));
    let evicted = permit.evicted.clone();
    let outcome = tokio::select! {
        r = handshake => r,
        _ = evicted.notified() => {
            return Err(MigrateError::Protocol {
                peer: peer.to_string(),
                detail: format!("closed: still not authenticated when {MAX_PENDING} newer connections were waiting"),
            })
        }
    };
    let purpose = match outcome {
        Err(_) => {
            return Err(MigrateError::Timeout {
                peer: peer.to_string(),
                phase: "authentication",
                secs: HANDSHAKE_TIMEOUT.as_secs(),
            })
        }
        Ok(Err(source)) => {
            return Err(MigrateError::Auth {
                peer: peer.to_string(),
                source,
            })
        }
        Ok(Ok(p)) => p,
    };
    drop(permit);
    match purpose {
        Purpose::Memory(m) => {
            let key = (m.migration_id.clone(), m.round, m.lazy);
            let accepted = shared
                .slots
                .lock()
                .expect("slots lock")
                .deliver(key.clone(), conn.into_inner());
            if accepted {
                Ok(false)
            } else {
                Err(MigrateError::Protocol {
                    peer: peer.to_string(),
                    detail: format!("memory channel for {key:?} refused (duplicate, or too many early channels)"),
                })
            }
        }
        Purpose::Control => {
            info!("{peer}: authenticated; migration starts");
            run_migration(shared, &mut conn, peer.to_string())
                .await
                .map(|()| true)
        }
    }
}

/// Runs one migration's state machine on an authenticated control connection; on failure
/// tells the source why. Whatever it started is stopped before it returns.
async fn run_migration<S: Stream>(
    shared: Arc<Shared>,
    conn: &mut Conn<S>,
    peer: String,
) -> Result<(), MigrateError> {
    let mut m = Migration::new(shared, peer);
    let r = m.run(conn).await;
    if let Err(e) = &r {
        let _ = conn
            .send(&pb::Message::error(
                pb::ErrorKind::Unspecified,
                e.to_string(),
            ))
            .await;
    }
    m.cleanup().await;
    r
}

/// A control connection's byte stream.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// The state machine of one migration alone: `conn` is taken as authenticated (tag keys
/// already set, or none), `criu` stands in for CRIU, and no memory channel ever arrives
/// (a page server waits for one until it times out). For the fuzz target and the root-free
/// tests of the protocol's states; `haul serve` itself goes through [`serve`].
#[doc(hidden)]
pub async fn control_session<S: Stream>(
    conn: &mut Conn<S>,
    cfg: ServeConfig,
    criu: Arc<dyn CriuService>,
) -> Result<(), MigrateError> {
    let shared = Arc::new(Shared::new(cfg, criu).await?);
    run_migration(shared, conn, "fuzz".into()).await
}

/// A page server serving one round.
struct PageServer {
    op: Box<dyn CriuOperation>,
    pid: i32,
    _dir: RoundDir,
    _sock: OwnedFd,
}

/// One migration on the destination.
struct Migration {
    shared: Arc<Shared>,
    peer: String,
    id: String,
    dir: Option<MigrationDir>,
    receivers: HashMap<u32, ImageReceiver>,
    page_servers: HashMap<u32, PageServer>,
    /// The last round a page server was started for: the next round's parent.
    parent_round: Option<u32>,
    budget: u64,
    lazy_daemon: Option<tokio::process::Child>,
    lazy_relay: Option<tokio::task::JoinHandle<()>>,
    restored_pid: Option<i32>,
}

enum Step {
    Continue,
    Finished,
}

impl Migration {
    fn new(shared: Arc<Shared>, peer: String) -> Migration {
        Migration {
            shared,
            peer,
            id: String::new(),
            dir: None,
            receivers: HashMap::new(),
            page_servers: HashMap::new(),
            parent_round: None,
            budget: 0,
            lazy_daemon: None,
            lazy_relay: None,
            restored_pid: None,
        }
    }

    fn protocol(&self, detail: impl Into<String>) -> MigrateError {
        MigrateError::Protocol {
            peer: self.peer.clone(),
            detail: detail.into(),
        }
    }

    async fn send<S: Stream>(&self, conn: &mut Conn<S>, body: Body) -> Result<(), MigrateError> {
        conn.send(&pb::Message::of(body))
            .await
            .map(drop)
            .map_err(|source| MigrateError::Channel {
                peer: self.peer.clone(),
                source,
            })
    }

    async fn recv<S: Stream>(&self, conn: &mut Conn<S>) -> Result<pb::Message, MigrateError> {
        match tokio::time::timeout(IDLE_TIMEOUT, conn.recv()).await {
            Err(_) => Err(MigrateError::Timeout {
                peer: self.peer.clone(),
                phase: "waiting for the source",
                secs: IDLE_TIMEOUT.as_secs(),
            }),
            Ok(r) => r.map_err(|source| MigrateError::Channel {
                peer: self.peer.clone(),
                source,
            }),
        }
    }

    async fn run<S: Stream>(&mut self, conn: &mut Conn<S>) -> Result<(), MigrateError> {
        loop {
            let msg = self.recv(conn).await?;
            match self.step(conn, msg).await? {
                Step::Continue => {}
                Step::Finished => return Ok(()),
            }
        }
    }

    fn dir(&self) -> Result<&MigrationDir, MigrateError> {
        self.dir
            .as_ref()
            .ok_or_else(|| self.protocol("a command before Begin"))
    }

    /// One command: the state is which of `dir` / `restored_pid` are set.
    async fn step<S: Stream>(
        &mut self,
        conn: &mut Conn<S>,
        msg: pb::Message,
    ) -> Result<Step, MigrateError> {
        let kind = msg.kind_name();
        match (self.dir.is_some(), self.restored_pid.is_some(), msg.body) {
            (false, _, Some(Body::Begin(b))) => {
                let ready = self.begin(b).await?;
                self.send(conn, Body::Ready(ready)).await?;
            }
            (true, false, Some(Body::StartPageServer(s))) => {
                self.start_page_server(s.round).await?;
                self.send(
                    conn,
                    Body::PageServerStarted(pb::PageServerStarted { round: s.round }),
                )
                .await?;
                let phase = if s.round == 0 {
                    crate::fault::Phase::FinalDump
                } else {
                    crate::fault::Phase::PreCopyRound
                };
                crate::fault::point(phase).await;
            }
            (true, false, Some(Body::EndPageServer(e))) => {
                let bytes = self.end_page_server(e.round).await?;
                self.send(
                    conn,
                    Body::PageServerEnded(pb::PageServerEnded {
                        round: e.round,
                        bytes,
                    }),
                )
                .await?;
            }
            (true, false, Some(Body::ImageChunk(c))) => {
                if c.round == 0 {
                    crate::fault::point(crate::fault::Phase::ImageTransfer).await;
                }
                let dir = self.dir()?.root().join(images::round_name(c.round));
                if !self.receivers.contains_key(&c.round) {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| MigrateError::io("cannot create", &dir, e))?;
                    self.receivers
                        .insert(c.round, ImageReceiver::new(&dir, self.budget));
                }
                let r = self.receivers.get_mut(&c.round).expect("inserted");
                r.accept(&c)
                    .map_err(|e| self.protocol(format!("image chunk refused: {e}")))?;
            }
            (true, false, Some(Body::Restore(r))) => {
                crate::fault::point(crate::fault::Phase::Restore).await;
                let restored = self.restore(conn, r).await?;
                self.send(conn, Body::Restored(restored)).await?;
            }
            (true, true, Some(Body::LazyDone(_))) => {
                let (ok, detail) = self.wait_lazy_daemon().await;
                self.send(conn, Body::LazyFinished(pb::LazyFinished { ok, detail }))
                    .await?;
            }
            (_, _, Some(Body::Finish(f))) => {
                if f.ok {
                    info!("{}: migration {} finished", self.peer, self.id);
                } else {
                    warn!(
                        "{}: migration {} abandoned by the source: {}",
                        self.peer, self.id, f.reason
                    );
                }
                self.send(conn, Body::Finished(pb::Finished {})).await?;
                return Ok(Step::Finished);
            }
            (_, _, Some(Body::Error(e))) => {
                return Err(MigrateError::Remote {
                    peer: self.peer.clone(),
                    message: e.message,
                })
            }
            (has_dir, restored, _) => {
                return Err(self.protocol(format!(
                    "{kind} is not valid now (prepared: {has_dir}, restored: {restored})"
                )))
            }
        }
        Ok(Step::Continue)
    }

    async fn begin(&mut self, b: pb::Begin) -> Result<pb::Ready, MigrateError> {
        if !images::valid_migration_id(&b.migration_id) {
            return Err(self.protocol(format!("invalid migration id {:?}", b.migration_id)));
        }
        self.id = b.migration_id.clone();
        let src: CriuVersion = b.criu_version.unwrap_or_default().into();
        let ours = self.shared.version;
        if src > ours {
            return Err(MigrateError::Remote {
                peer: "destination".into(),
                message: format!(
                    "the source's CRIU {src} is newer than the destination's {ours}: images may not restore; upgrade CRIU on the destination"
                ),
            });
        }
        let free = images::free_bytes(&self.shared.cfg.img_path)?;
        if free < b.memory_bytes.saturating_add(SPACE_MARGIN) {
            return Err(MigrateError::Remote {
                peer: "destination".into(),
                message: format!(
                    "not enough space in {}: {} MiB free, the migration needs about {} MiB",
                    self.shared.cfg.img_path.display(),
                    free >> 20,
                    (b.memory_bytes + SPACE_MARGIN) >> 20
                ),
            });
        }
        self.budget = free.saturating_sub(SPACE_MARGIN / 2);
        let dir = MigrationDir::create(&self.shared.cfg.img_path, &self.id)?;
        // CPU compatibility: the source's cpuinfo.img against this CPU.
        let cpu = dir.sub("cpuinfo")?;
        let cpu_dir = cpu.path().to_path_buf();
        let img = cpu_dir.join("cpuinfo.img");
        std::fs::write(&img, &b.cpuinfo).map_err(|e| MigrateError::io("cannot write", &img, e))?;
        let opts = options::base(cpu.fd(), "cpuinfo-check.log");
        self.shared
            .criu
            .cpuinfo_check(opts, Some(cpu_dir.join("cpuinfo-check.log")))
            .await
            .map_err(|e| MigrateError::Remote {
                peer: "destination".into(),
                message: format!("this CPU cannot run the source's process: {e}"),
            })?;
        info!(
            "{}: migration {} prepared in {} (strategy {}, source CRIU {src})",
            self.peer,
            self.id,
            dir.root().display(),
            b.strategy
        );
        let ready = pb::Ready {
            criu_version: Some(ours.into()),
            features: Some(pb::Features {
                mem_track: self.shared.features.mem_track,
                lazy_pages: self.shared.features.lazy_pages,
            }),
            free_bytes: free,
            img_dir: dir.root().display().to_string(),
        };
        self.dir = Some(dir);
        Ok(ready)
    }

    /// Registers for the round's memory channel, waits for it, and starts CRIU's page server on it.
    async fn start_page_server(&mut self, round: u32) -> Result<(), MigrateError> {
        if self.page_servers.contains_key(&round) {
            return Err(self.protocol(format!("page server for round {round} started twice")));
        }
        let rd = self.dir()?.round(round)?;
        let stream = self.memory_channel(round, false).await?;
        let std_stream = stream
            .into_std()
            .map_err(|e| MigrateError::io("memory channel", rd.path(), e))?;
        let sock: OwnedFd = std_stream.into();
        crate::criu::worker::set_blocking(sock.as_raw_fd())?;
        let mut opts = options::base(rd.fd(), "page-server.log");
        // No notifications: the page server is a forked child sharing the RPC socket; its
        // status-ready could come after the parent's answer and would then wait for an
        // acknowledgement forever (and the parent would read that acknowledgement as a request).
        opts.notify_scripts = None;
        // The previous round is this one's parent: the page server tells the source's dump
        // that it has one, and only then does the dump skip pages not dirtied since. Without
        // it every pre-copy round (and the final dump) sends all of memory again.
        if let Some(p) = self.parent_round {
            opts.parent_img = Some(format!("../{}", images::round_name(p)));
        }
        self.parent_round = Some(round);
        options::page_server_fd(&mut opts, sock.as_raw_fd());
        let mut req = crate::criu::client::new_request(CriuReqType::PageServerChld, Some(opts));
        req.keep_open = Some(true);
        let log = rd.path().join("page-server.log");
        let mut op = self
            .shared
            .criu
            .start_request(req, &[sock.as_raw_fd()], Some(log))
            .await?;
        // The page server says status-ready once it serves; then PAGE_SERVER_CHLD answers.
        let resp = loop {
            match op.next().await? {
                Event::Done(r) => break r,
                Event::Notify(_) => op.ack(true).await?,
            }
        };
        let pid = resp.ps.and_then(|p| p.pid).unwrap_or(0);
        info!("{}: page server for round {round} is pid {pid}", self.peer);
        self.page_servers.insert(
            round,
            PageServer {
                op,
                pid,
                _dir: rd,
                _sock: sock,
            },
        );
        Ok(())
    }

    async fn memory_channel(&self, round: u32, lazy: bool) -> Result<TcpStream, MigrateError> {
        let key = (self.id.clone(), round, lazy);
        let rx = self
            .shared
            .slots
            .lock()
            .expect("slots lock")
            .expect(key.clone());
        let r = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, rx).await;
        self.shared
            .slots
            .lock()
            .expect("slots lock")
            .waiting
            .remove(&key);
        match r {
            Ok(Ok(s)) => Ok(s),
            _ => Err(MigrateError::Timeout {
                peer: self.peer.clone(),
                phase: "opening the memory channel",
                secs: (HANDSHAKE_TIMEOUT * 2).as_secs(),
            }),
        }
    }

    /// Waits for the round's page server to exit; returns the bytes of pages it wrote.
    async fn end_page_server(&mut self, round: u32) -> Result<u64, MigrateError> {
        let mut ps = self
            .page_servers
            .remove(&round)
            .ok_or_else(|| self.protocol(format!("no page server for round {round}")))?;
        let req = cpb::CriuReq {
            r#type: CriuReqType::WaitPid as i32,
            pid: Some(ps.pid as u32),
            ..Default::default()
        };
        let resp = tokio::time::timeout(Duration::from_secs(120), ps.op.request(req))
            .await
            .map_err(|_| MigrateError::Timeout {
                peer: self.peer.clone(),
                phase: "waiting for the page server",
                secs: 120,
            })??;
        ps.op.finish().await;
        let status = resp.status.unwrap_or(-1);
        if status != 0 {
            return Err(MigrateError::Remote {
                peer: "destination".into(),
                message: format!(
                    "CRIU page server for round {round} exited with status {status:#x} (see {})",
                    ps._dir.path().join("page-server.log").display()
                ),
            });
        }
        let bytes = dir_bytes(ps._dir.path(), |n| n.starts_with("pages-"));
        Ok(bytes)
    }

    async fn restore<S: Stream>(
        &mut self,
        conn: &mut Conn<S>,
        r: pb::Restore,
    ) -> Result<pb::Restored, MigrateError> {
        if !self.page_servers.is_empty() {
            return Err(self.protocol("Restore while a page server still runs"));
        }
        if let Some(rx) = self.receivers.get(&0) {
            if !rx.complete() {
                return Err(self.protocol("Restore before every image file was complete"));
            }
        }
        let rd = self.dir()?.round(0)?;
        if r.lazy {
            self.start_lazy_daemon(&rd).await?;
        }
        let mut opts = options::base(rd.fd(), "restore.log");
        crate::criu::options::TreeOptions {
            tcp_established: r.tcp_established,
            shell_job: r.shell_job,
            file_locks: r.file_locks,
            link_remap: false,
            ext_unix_sk: false,
        }
        .apply(&mut opts);
        if r.lazy {
            opts.lazy_pages = Some(true);
        }
        let t0 = Instant::now();
        let log = rd.path().join("restore.log");
        let req = crate::criu::client::new_request(CriuReqType::Restore, Some(opts));
        let mut op = self.shared.criu.start_request(req, &[], Some(log)).await?;
        let resp = loop {
            match op.next().await {
                Ok(Event::Notify(n)) if n.script == "post-restore" => {
                    // Two-phase commit: the tree is restored but does not run yet. Only when
                    // the source answers (it is about to kill its tasks) does it run here;
                    // if the source is gone or says no, CRIU kills this copy and the source
                    // keeps (or resumes) the original.
                    let pid = n.pid.unwrap_or(0);
                    // The post-copy relay kills this copy if its memory stops coming.
                    if r.lazy {
                        let f = rd.path().join(TREE_PID_FILE);
                        if let Err(e) = std::fs::write(&f, pid.to_string()) {
                            warn!("{}: cannot write {}: {e}", self.peer, f.display());
                        }
                    }
                    let go = async {
                        self.send(conn, Body::RestoreHeld(pb::RestoreHeld { pid }))
                            .await?;
                        match self.recv(conn).await?.body {
                            Some(Body::Resume(_)) => Ok(()),
                            Some(Body::Error(e)) => Err(MigrateError::Remote {
                                peer: self.peer.clone(),
                                message: e.message,
                            }),
                            Some(Body::Finish(f)) => Err(MigrateError::Remote {
                                peer: self.peer.clone(),
                                message: format!(
                                    "the source abandoned the migration: {}",
                                    f.reason
                                ),
                            }),
                            _ => Err(self.protocol("expected Resume after RestoreHeld")),
                        }
                    }
                    .await;
                    op.ack(go.is_ok()).await?;
                    if let Err(e) = go {
                        warn!("{}: restored copy (pid {pid}) discarded: {e}", self.peer);
                        let _ = tokio::time::timeout(Duration::from_secs(60), op.next()).await;
                        op.finish().await;
                        return Err(e);
                    }
                }
                Ok(Event::Notify(_)) => op.ack(true).await?,
                Ok(Event::Done(resp)) => break resp,
                Err(e) => {
                    op.finish().await;
                    return Err(e.into());
                }
            }
        };
        op.finish().await;
        let wall = t0.elapsed().as_secs_f64();
        let pid = resp.restore.map(|r| r.pid).unwrap_or(0);
        self.restored_pid = Some(pid);
        let st = stats::read_restore(rd.path()).unwrap_or_default();
        info!(
            "{}: migration {} restored as pid {pid} in {wall:.3}s",
            self.peer, self.id
        );
        Ok(pb::Restored {
            pid,
            stats: Some(pb::RestoreStats {
                pages_compared: st.pages_compared,
                pages_skipped_cow: st.pages_skipped_cow,
                forking_time_us: st.forking_time_us,
                restore_time_us: st.restore_time_us,
                pages_restored: st.pages_restored,
            }),
            restore_wall_secs: wall,
        })
    }

    /// Post-copy: a relay on 127.0.0.1 of this node, and `criu lazy-pages` connected to it.
    async fn start_lazy_daemon(&mut self, rd: &RoundDir) -> Result<(), MigrateError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| MigrateError::io("cannot bind the lazy-pages relay on", "127.0.0.1", e))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let shared = self.shared.clone();
        let id = self.id.clone();
        let peer = self.peer.clone();
        // Register for the source's lazy memory channel now; it arrives once the source's CRIU serves pages.
        let rx = shared
            .slots
            .lock()
            .expect("slots lock")
            .expect((id.clone(), 0, true));
        let relay_dir = rd.path().to_path_buf();
        self.lazy_relay = Some(tokio::spawn(async move {
            let local =
                match tokio::time::timeout(Duration::from_secs(120), listener.accept()).await {
                    Ok(Ok((s, _))) => s,
                    _ => {
                        warn!("{peer}: the lazy-pages daemon never connected");
                        return;
                    }
                };
            let remote = match tokio::time::timeout(Duration::from_secs(120), rx).await {
                Ok(Ok(s)) => s,
                _ => {
                    warn!("{peer}: the source's lazy memory channel never came");
                    return;
                }
            };
            super::sockopt::harden(&local);
            // Its own process: the copy's memory keeps coming even if this service dies.
            match spawn_relay_process(local, remote, &relay_dir) {
                Ok(mut child) => match child.wait().await {
                    Ok(st) if st.success() => info!("{peer}: lazy relay done"),
                    Ok(st) => warn!(
                        "{peer}: lazy relay exited with {st} (see {})",
                        relay_dir.join(RELAY_LOG).display()
                    ),
                    Err(e) => warn!("{peer}: cannot wait for the lazy relay: {e}"),
                },
                Err(e) => warn!("{peer}: {e}"),
            }
        }));
        let log = "lazy-pages.log";
        let child = tokio::process::Command::new(self.shared.criu.path())
            .arg("lazy-pages")
            .arg("--page-server")
            .arg("--address")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("-D")
            .arg(rd.path())
            .arg("-W")
            .arg(rd.path())
            .arg("-o")
            .arg(log)
            .arg("-v4")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                MigrateError::io(
                    "cannot start criu lazy-pages from",
                    self.shared.criu.path(),
                    e,
                )
            })?;
        self.lazy_daemon = Some(child);
        // The daemon creates its socket in the work dir; restore connects to it.
        let sock = rd.path().join("lazy-pages.socket");
        let t0 = Instant::now();
        while !sock.exists() {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(MigrateError::Remote {
                    peer: "destination".into(),
                    message: format!(
                        "criu lazy-pages did not start (see {})",
                        rd.path().join(log).display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn wait_lazy_daemon(&mut self) -> (bool, String) {
        let Some(mut child) = self.lazy_daemon.take() else {
            return (false, "no lazy-pages daemon ran".into());
        };
        let r = match tokio::time::timeout(Duration::from_secs(600), child.wait()).await {
            Ok(Ok(st)) if st.success() => (true, "every page arrived".into()),
            Ok(Ok(st)) => (false, format!("criu lazy-pages exited with {st}")),
            Ok(Err(e)) => (false, format!("cannot wait for criu lazy-pages: {e}")),
            Err(_) => {
                let _ = child.start_kill();
                (false, "criu lazy-pages did not finish in 600 s".into())
            }
        };
        if let Some(h) = self.lazy_relay.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
        r
    }

    /// Stops whatever this migration left running (page servers, lazy daemon, relay).
    async fn cleanup(&mut self) {
        for (_, ps) in self.page_servers.drain() {
            if ps.pid > 0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(ps.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            ps.op.finish().await;
        }
        if let Some(mut c) = self.lazy_daemon.take() {
            // A lazy daemon still running after the migration ended serves nobody.
            if self.restored_pid.is_none() {
                let _ = c.start_kill();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
        }
        if let Some(h) = self.lazy_relay.take() {
            h.abort();
        }
        self.shared
            .slots
            .lock()
            .expect("slots lock")
            .forget(&self.id);
    }
}

/// The restored tree's root pid, for the post-copy relay (in the final round's directory).
const TREE_PID_FILE: &str = "restored.pid";
/// The post-copy relay process's log (in the final round's directory).
const RELAY_LOG: &str = "lazy-relay.log";

/// Starts `haul lazy-relay` on the two connections, in its own session: it outlives this
/// service, so that a restored copy gets the rest of its memory (or is killed, never
/// zero-filled) whatever happens to `haul serve`.
fn spawn_relay_process(
    local: TcpStream,
    remote: TcpStream,
    dir: &std::path::Path,
) -> Result<tokio::process::Child, MigrateError> {
    // This very binary, even if the file was replaced or deleted since it started (an
    // upgrade while `haul serve` runs): exec of /proc/self/exe reaches the running inode.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    let (local, remote): (OwnedFd, OwnedFd) = (
        local
            .into_std()
            .map_err(|e| MigrateError::io("lazy relay socket", dir, e))?
            .into(),
        remote
            .into_std()
            .map_err(|e| MigrateError::io("lazy relay socket", dir, e))?
            .into(),
    );
    let log = dir.join(RELAY_LOG);
    let log_file =
        std::fs::File::create(&log).map_err(|e| MigrateError::io("cannot create", &log, e))?;
    let fds = [local.as_raw_fd(), remote.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("lazy-relay")
        .arg("--local-fd")
        .arg(fds[0].to_string())
        .arg("--remote-fd")
        .arg(fds[1].to_string())
        .arg("--tree-pid-file")
        .arg(dir.join(TREE_PID_FILE))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log_file)
        .kill_on_drop(false);
    // SAFETY: runs in the forked child before exec; fcntl(2) and setsid(2) are
    // async-signal-safe and touch no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            crate::criu::worker::keep_across_exec(&fds)?;
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| MigrateError::io("cannot start the lazy relay", &exe, e))?;
    drop((local, remote));
    Ok(child)
}

fn dir_bytes(dir: &std::path::Path, pick: impl Fn(&str) -> bool) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| pick(&e.file_name().to_string_lossy()))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
