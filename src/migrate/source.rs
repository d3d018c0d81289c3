//! `haul pid`: the source.
//!
//! The process is never lost: the final dump's `post-dump` notification (tasks frozen, not yet
//! killed) is held until the destination says the process runs there; only then is it
//! acknowledged and CRIU kills the source tasks. Every failure before that answers `post-dump`
//! with a failure, and CRIU resumes the tasks where they were.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::criu::options::{self, TreeOptions};
use crate::criu::pb::CriuReqType;
use crate::criu::{stats, Criu, CriuVersion, Event, Features, Operation};
use crate::wire::auth::{self, Purpose};
use crate::wire::frame::Conn;
use crate::wire::pb::{self, message::Body};
use crate::wire::Key;

use super::error::{SourceFailure, Whereabouts};
use super::images::{self, MigrationDir, RoundDir};
use super::report::{MigrationReport, RoundReport};
use super::strategy::{decide, Convergence, Decision, RoundFigures, Strategy};
use super::{relay, transfer, tree, MigrateError};

/// How long connecting and authenticating may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the destination may take to answer one command (restores of large trees are slow).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// The source's settings.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The root of the tree to migrate.
    pub pid: i32,
    /// The destination's `haul serve` address (`HOST:PORT`).
    pub destination: String,
    /// The shared key.
    pub key: Key,
    /// Where this node keeps the images and logs.
    pub img_path: PathBuf,
    /// The strategy asked for.
    pub strategy: Strategy,
    /// What the tree needs from CRIU.
    pub tree: TreeOptions,
    /// Pre-copy: when the rounds stop (rounds, dirty-set rules, downtime target, on-timeout).
    pub convergence: Convergence,
    /// Show a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
}

type Control = Conn<TcpStream>;

/// Migrates `cfg.pid` to `cfg.destination`. On failure, says where the process is.
pub async fn migrate(cfg: SourceConfig) -> Result<MigrationReport, SourceFailure> {
    let pid = cfg.pid;
    let mut run = Run::new(cfg);
    match run.go().await {
        Ok(()) => Ok(run.report),
        Err(error) => {
            let whereabouts = run.whereabouts();
            if let Some(conn) = run.conn.as_mut() {
                let _ = conn
                    .send(&pb::Message::of(Body::Finish(pb::Finish {
                        ok: false,
                        reason: error.to_string(),
                    })))
                    .await;
            }
            let _ = pid;
            Err(SourceFailure { error, whereabouts })
        }
    }
}

/// How far a migration got (decides where the process is after a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing frozen yet.
    Running,
    /// The final dump started; CRIU resumes the tasks if it fails or is nacked.
    Frozen,
    /// The final dump's failure was answered; the tasks were resumed.
    Resumed,
    /// Post-copy: the destination runs the process (pid there) while its memory still comes
    /// from here, since the instant given.
    Serving(i32, Instant),
    /// The destination runs the process.
    Moved(i32),
}

struct Run {
    cfg: SourceConfig,
    criu: Option<Criu>,
    conn: Option<Control>,
    dir: Option<MigrationDir>,
    stage: Stage,
    report: MigrationReport,
    t0: Instant,
}

impl Run {
    fn new(cfg: SourceConfig) -> Run {
        let report = MigrationReport {
            pid: cfg.pid,
            destination: cfg.destination.clone(),
            strategy_requested: cfg.strategy.name().into(),
            started_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            ..Default::default()
        };
        Run {
            cfg,
            criu: None,
            conn: None,
            dir: None,
            stage: Stage::Running,
            report,
            t0: Instant::now(),
        }
    }

    fn whereabouts(&self) -> Whereabouts {
        let pid = self.cfg.pid;
        match self.stage {
            Stage::Running => Whereabouts::Untouched(pid),
            Stage::Frozen | Stage::Resumed if tree::alive(pid) && tree::state(pid) != Some('T') => {
                Whereabouts::ResumedOnSource(pid)
            }
            Stage::Moved(p) => Whereabouts::OnDestination(p),
            Stage::Serving(p, since) => Whereabouts::LostInPostCopy {
                pid: p,
                window_secs: since.elapsed().as_secs_f64(),
            },
            _ => Whereabouts::Unknown(pid),
        }
    }

    fn peer(&self) -> String {
        self.cfg.destination.clone()
    }

    fn conn(&mut self) -> &mut Control {
        self.conn.as_mut().expect("connected")
    }

    async fn send(&mut self, body: Body) -> Result<(), MigrateError> {
        let peer = self.peer();
        self.conn()
            .send(&pb::Message::of(body))
            .await
            .map(drop)
            .map_err(|source| MigrateError::Channel { peer, source })
    }

    async fn recv(&mut self, waiting_for: &'static str) -> Result<Body, MigrateError> {
        let peer = self.peer();
        let msg = match tokio::time::timeout(REPLY_TIMEOUT, self.conn().recv()).await {
            Err(_) => {
                return Err(MigrateError::Timeout {
                    peer,
                    phase: waiting_for,
                    secs: REPLY_TIMEOUT.as_secs(),
                })
            }
            Ok(r) => r.map_err(|source| MigrateError::Channel {
                peer: peer.clone(),
                source,
            })?,
        };
        match msg.body {
            Some(Body::Error(e)) => Err(MigrateError::Remote {
                peer,
                message: e.message,
            }),
            Some(b) => Ok(b),
            None => Err(MigrateError::Protocol {
                peer,
                detail: "empty message".into(),
            }),
        }
    }

    fn unexpected(&self, want: &str, got: &Body) -> MigrateError {
        MigrateError::Protocol {
            peer: self.peer(),
            detail: format!(
                "expected {want}, got {}",
                pb::Message::of(got.clone()).kind_name()
            ),
        }
    }

    async fn connect(&self, purpose: Purpose) -> Result<Control, MigrateError> {
        let peer = self.peer();
        let fut = async {
            let s = TcpStream::connect(&peer)
                .await
                .map_err(|source| MigrateError::Connect {
                    peer: peer.clone(),
                    source,
                })?;
            super::sockopt::harden(&s);
            let mut c = Conn::new(s);
            auth::client(&mut c, &self.cfg.key, purpose)
                .await
                .map_err(|source| MigrateError::Auth {
                    peer: peer.clone(),
                    source,
                })?;
            Ok(c)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| MigrateError::Timeout {
                peer: peer.clone(),
                phase: "connecting and authenticating",
                secs: CONNECT_TIMEOUT.as_secs(),
            })?
    }

    /// A memory channel for round `round`, as an fd for CRIU (blocking, owned).
    async fn memory_channel(&self, round: u32, lazy: bool) -> Result<TcpStream, MigrateError> {
        let c = self
            .connect(Purpose::Memory(pb::MemoryPurpose {
                migration_id: self.report.migration_id.clone(),
                round,
                lazy,
            }))
            .await?;
        Ok(c.into_inner())
    }

    async fn go(&mut self) -> Result<(), MigrateError> {
        let pid = self.cfg.pid;
        // ---- pre-flight: nothing is frozen until all of this passed
        if !tree::alive(pid) {
            return Err(MigrateError::NoSuchPid(pid));
        }
        let (criu, version) = Criu::locate_checked().await?;
        let features = criu.features().await?;
        self.report.source_criu = Some(version);
        if let Some(mode) = tree::thp_mode() {
            if mode == "always" && self.cfg.strategy != Strategy::StopCopy {
                self.report.warnings.push(
                    "transparent huge pages are `always` on this node: dirty tracking works per 2 MiB and pre-copy saves little; set /sys/kernel/mm/transparent_hugepage/enabled to never".into(),
                );
            }
        }
        self.report.migration_id = images::new_migration_id(pid);
        let dir = MigrationDir::create(&self.cfg.img_path, &self.report.migration_id)?;
        self.report.source_img_dir = dir.root().display().to_string();
        let cpu = dir.sub("cpuinfo")?;
        criu.cpuinfo_dump(
            options::base(cpu.fd(), "cpuinfo-dump.log"),
            Some(cpu.path().join("cpuinfo-dump.log")),
        )
        .await?;
        let cpuinfo_path = cpu.path().join("cpuinfo.img");
        let cpuinfo = std::fs::read(&cpuinfo_path)
            .map_err(|e| MigrateError::io("cannot read", &cpuinfo_path, e))?;
        self.conn = Some(self.connect(Purpose::Control).await?);
        let memory_bytes = tree::resident_bytes(pid);
        self.send(Body::Begin(pb::Begin {
            migration_id: self.report.migration_id.clone(),
            criu_version: Some(version.into()),
            strategy: self.cfg.strategy.name().into(),
            memory_bytes,
            cpuinfo,
        }))
        .await?;
        let ready = match self.recv("the destination's pre-flight checks").await? {
            Body::Ready(r) => r,
            other => return Err(self.unexpected("Ready", &other)),
        };
        let dst_version: CriuVersion = ready.criu_version.unwrap_or_default().into();
        self.report.destination_criu = Some(dst_version);
        self.report.destination_img_dir = ready.img_dir.clone();
        let dst_features = ready
            .features
            .map(|f| Features {
                mem_track: f.mem_track,
                lazy_pages: f.lazy_pages,
            })
            .unwrap_or_default();
        let (strategy, why) = self.cfg.strategy.resolve(features, dst_features);
        if let Some(missing) = strategy.missing(features, dst_features) {
            return Err(MigrateError::StrategyUnavailable {
                strategy: strategy.name(),
                why: missing,
            });
        }
        self.report.strategy = strategy.name().into();
        self.report.strategy_reason = why;
        info!(
            "migrating pid {pid} ({} MiB resident) to {} with {strategy}; images in {}",
            memory_bytes >> 20,
            self.peer(),
            dir.root().display()
        );
        self.criu = Some(criu);
        self.dir = Some(dir);

        // ---- pre-copy rounds while the process runs
        let mut parent = None;
        if matches!(strategy, Strategy::PreCopy | Strategy::Hybrid) {
            parent = self.pre_copy().await?;
        }
        // ---- the final dump
        let lazy = matches!(strategy, Strategy::PostCopy | Strategy::Hybrid);
        self.final_dump(lazy, parent, memory_bytes).await?;
        self.send(Body::Finish(pb::Finish {
            ok: true,
            reason: String::new(),
        }))
        .await?;
        match self.recv("the destination's goodbye").await? {
            Body::Finished(_) => {}
            other => return Err(self.unexpected("Finished", &other)),
        }
        self.report.total_secs = self.t0.elapsed().as_secs_f64();
        let dir = self.dir.as_ref().expect("dir");
        let path = dir.root().join("report.json");
        if let Ok(json) = serde_json::to_vec_pretty(&self.report) {
            let _ = std::fs::write(&path, json);
        }
        Ok(())
    }

    /// Pre-dump rounds until the dirty set converges; returns the last round's directory name.
    async fn pre_copy(&mut self) -> Result<Option<String>, MigrateError> {
        let mut parent: Option<String> = None;
        let mut history: Vec<RoundFigures> = Vec::new();
        for round in 1.. {
            let t = Instant::now();
            let rd = self.dir.as_ref().expect("dir").round(round)?;
            let fd = self.start_round(round).await?;
            let mut opts = options::base(rd.fd(), "pre-dump.log");
            opts.pid = Some(self.cfg.pid);
            opts.track_mem = Some(true);
            if let Some(p) = &parent {
                opts.parent_img = Some(format!("../{p}"));
            }
            self.cfg.tree.apply(&mut opts);
            options::page_server_fd(&mut opts, fd.as_raw_fd());
            let op = self
                .criu()
                .start(
                    CriuReqType::PreDump,
                    opts,
                    &[fd.as_raw_fd()],
                    Some(rd.path().join("pre-dump.log")),
                )
                .await?;
            op.run_to_end().await?;
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
                Decision::Cancel(why) => return Err(MigrateError::NotConverged(why)),
            }
        }
        Ok(parent)
    }

    fn criu(&self) -> &Criu {
        self.criu.as_ref().expect("criu located")
    }

    /// Asks the destination for a page server for `round` and opens its memory channel.
    async fn start_round(&mut self, round: u32) -> Result<OwnedFd, MigrateError> {
        self.send(Body::StartPageServer(pb::StartPageServer { round }))
            .await?;
        let mem = self.memory_channel(round, false).await?;
        match self.recv("the destination's page server").await? {
            Body::PageServerStarted(_) => {}
            other => return Err(self.unexpected("PageServerStarted", &other)),
        }
        // Out of tokio, blocking: CRIU reads and writes it directly; haul only reads TCP_INFO.
        let std_stream = mem
            .into_std()
            .map_err(|e| MigrateError::io("cannot take the memory channel from", "tokio", e))?;
        let fd: OwnedFd = std_stream.into();
        crate::criu::worker::set_blocking(fd.as_raw_fd())?;
        Ok(fd)
    }

    async fn end_round(&mut self, round: u32) -> Result<u64, MigrateError> {
        self.send(Body::EndPageServer(pb::EndPageServer { round }))
            .await?;
        match self.recv("the destination's page server to finish").await? {
            Body::PageServerEnded(e) => Ok(e.bytes),
            other => Err(self.unexpected("PageServerEnded", &other)),
        }
    }

    async fn final_dump(
        &mut self,
        lazy: bool,
        parent: Option<String>,
        memory_bytes: u64,
    ) -> Result<(), MigrateError> {
        let rd = self.dir.as_ref().expect("dir").round(0)?;
        let mut opts = options::base(rd.fd(), "dump.log");
        opts.pid = Some(self.cfg.pid);
        self.cfg.tree.apply(&mut opts);
        if let Some(p) = &parent {
            opts.parent_img = Some(format!("../{p}"));
            opts.track_mem = Some(true);
        }
        let mut mem = None;
        let mut inherit = Vec::new();
        let mut lazy_port = 0;
        if lazy {
            lazy_port = relay::free_local_port()
                .map_err(|e| MigrateError::io("cannot find a free port on", "127.0.0.1", e))?;
            opts.lazy_pages = Some(true);
            options::page_server_addr(&mut opts, "127.0.0.1", lazy_port);
        } else {
            let fd = self.start_round(0).await?;
            options::page_server_fd(&mut opts, fd.as_raw_fd());
            inherit.push(fd.as_raw_fd());
            mem = Some(fd);
        }
        let log = rd.path().join("dump.log");
        let progress = self.progress_bar(memory_bytes, mem.as_ref().map(|m| m.as_raw_fd()));
        let t_freeze = Instant::now();
        self.stage = Stage::Frozen;
        let mut op = self
            .criu()
            .start(CriuReqType::Dump, opts, &inherit, Some(log))
            .await?;
        // Wait for post-dump: everything dumped, tasks frozen.
        loop {
            match op.next().await {
                Ok(Event::Notify(n)) if n.script == "post-dump" => break,
                Ok(Event::Notify(_)) => op.ack(true).await?,
                Ok(Event::Done(_)) => {
                    op.finish().await;
                    self.stage = Stage::Resumed;
                    return Err(MigrateError::Protocol {
                        peer: "local CRIU".into(),
                        detail: "the dump ended without a post-dump notification".into(),
                    });
                }
                Err(e) => {
                    // CRIU resumes the tasks when a dump fails.
                    op.finish().await;
                    self.stage = Stage::Resumed;
                    if let Some(p) = progress {
                        p.abandon();
                    }
                    return Err(e.into());
                }
            }
        }
        if let Some(p) = &progress {
            p.finish_and_clear();
        }
        crate::fault::point(crate::fault::Phase::Frozen).await;
        let held = self.while_frozen(&rd, lazy, mem.is_some()).await;
        drop(mem);
        match held {
            Err(e) => {
                // Nack post-dump: CRIU resumes the source tasks.
                warn!("migration failed while frozen: {e}; resuming the process on the source");
                let _ = op.ack(false).await;
                let _ = tokio::time::timeout(Duration::from_secs(60), op.next()).await;
                op.finish().await;
                self.stage = Stage::Resumed;
                Err(e)
            }
            Ok(Held::Restored(restored)) => {
                self.record_restore(&restored, t_freeze);
                self.stage = Stage::Moved(restored.pid);
                op.ack(true).await?;
                let r = op.run_to_end().await;
                self.record_dump(rd.path(), false);
                if let Err(e) = r {
                    warn!("CRIU reported after the process moved: {e}");
                }
                Ok(())
            }
            Ok(Held::LazyReady) => self.post_copy(op, lazy_port, t_freeze, rd.path()).await,
        }
    }

    /// The part of the final dump that happens while the tasks are frozen.
    async fn while_frozen(
        &mut self,
        rd: &RoundDir,
        lazy: bool,
        paged: bool,
    ) -> Result<Held, MigrateError> {
        if paged {
            let bytes = self.end_round(0).await?;
            self.report.memory_bytes_sent += bytes;
        }
        let peer = self.peer();
        let sent = transfer::send_images(self.conn(), &peer, rd.path(), 0).await?;
        self.report.image_bytes_sent += sent;
        if lazy {
            // Post-copy restores only once CRIU serves the pages (the restore faults on them).
            return Ok(Held::LazyReady);
        }
        Ok(Held::Restored(self.restore(false).await?))
    }

    /// Asks the destination to restore and waits until the process runs there.
    async fn restore(&mut self, lazy: bool) -> Result<pb::Restored, MigrateError> {
        self.send_restore(lazy).await?;
        self.recv_restored().await
    }

    async fn send_restore(&mut self, lazy: bool) -> Result<(), MigrateError> {
        let t = &self.cfg.tree;
        let restore = pb::Restore {
            lazy,
            tcp_established: t.tcp_established,
            shell_job: t.shell_job,
            file_locks: t.file_locks,
        };
        self.send(Body::Restore(restore)).await
    }

    /// The destination's two-phase restore: `RestoreHeld` (restored, not running), then haul
    /// says `Resume`, then `Restored` (running there). Only after `Restored` does the source
    /// acknowledge post-dump: a lost `Resume` leaves one copy (here, resumed), a lost
    /// `Restored` is the one window where both could run.
    async fn recv_restored(&mut self) -> Result<pb::Restored, MigrateError> {
        match self.recv("the destination's restore").await? {
            Body::RestoreHeld(_) => {}
            other => return Err(self.unexpected("RestoreHeld", &other)),
        }
        self.send(Body::Resume(pb::Resume {})).await?;
        match self.recv("the destination to resume the process").await? {
            Body::Restored(r) => Ok(r),
            other => Err(self.unexpected("Restored", &other)),
        }
    }

    /// Post-copy: CRIU serves the pages (the tasks stay frozen until the last one left), the
    /// destination restores with lazy pages and the process runs there at once. Until the
    /// destination says it runs, a failure makes CRIU's page server fail, and CRIU resumes the
    /// source tasks.
    async fn post_copy(
        &mut self,
        mut op: Operation,
        port: u16,
        t_freeze: Instant,
        dir: &Path,
    ) -> Result<(), MigrateError> {
        op.ack(true).await?;
        let (decide, decision) = tokio::sync::watch::channel(None);
        let started = async {
            loop {
                match op.next().await? {
                    Event::Notify(n) if n.script == "status-ready" => {
                        op.ack(true).await?;
                        break;
                    }
                    Event::Notify(_) => op.ack(true).await?,
                    Event::Done(_) => {
                        return Err(MigrateError::Protocol {
                            peer: "local CRIU".into(),
                            detail: "the lazy dump ended before serving pages".into(),
                        })
                    }
                }
            }
            // The destination expects the lazy memory channel once it has the Restore command.
            self.send_restore(true).await?;
            let relay = self.start_lazy_relay(port, decision).await?;
            let restored = self.recv_restored().await?;
            Ok::<_, MigrateError>((relay, restored))
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
                let _ = tokio::time::timeout(Duration::from_secs(60), op.run_to_end()).await;
                self.stage = Stage::Resumed;
                return Err(e);
            }
        };
        let _ = decide.send(Some(true));
        self.record_restore(&restored, t_freeze);
        let t_running = Instant::now();
        self.stage = Stage::Serving(restored.pid, t_running);
        crate::fault::point(crate::fault::Phase::PostCopyServing).await;
        // The dump ends when the destination has pulled every page.
        let r = op.run_to_end().await;
        self.report.postcopy_window_secs = Some(t_running.elapsed().as_secs_f64());
        let relayed = match tokio::time::timeout(Duration::from_secs(30), relay).await {
            Ok(Ok(Ok(sent))) => {
                self.report.memory_bytes_sent += sent;
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the relay did not end in 30 s")),
        };
        self.record_dump(dir, true);
        r?;
        // Every page left here in order: the copy on the destination is whole.
        relayed.map_err(|source| MigrateError::PageFlow {
            peer: self.peer(),
            source,
        })?;
        self.stage = Stage::Moved(restored.pid);
        self.send(Body::LazyDone(pb::LazyDone {})).await?;
        match self.recv("the destination's lazy-pages daemon").await? {
            Body::LazyFinished(f) if f.ok => Ok(()),
            Body::LazyFinished(f) => Err(MigrateError::Remote {
                peer: self.peer(),
                message: f.detail,
            }),
            other => Err(self.unexpected("LazyFinished", &other)),
        }
    }

    async fn start_lazy_relay(
        &self,
        port: u16,
        decision: tokio::sync::watch::Receiver<Option<bool>>,
    ) -> Result<tokio::task::JoinHandle<std::io::Result<u64>>, MigrateError> {
        let local = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| MigrateError::Connect {
                peer: format!("CRIU's lazy-pages server on 127.0.0.1:{port}"),
                source,
            })?;
        super::sockopt::harden(&local);
        let remote = self.memory_channel(0, true).await?;
        Ok(tokio::spawn(relay::source_relay(local, remote, decision)))
    }

    fn record_restore(&mut self, r: &pb::Restored, t_freeze: Instant) {
        self.report.downtime_secs = t_freeze.elapsed().as_secs_f64();
        self.report.destination_pid = r.pid;
        self.report.restore_wall_secs = r.restore_wall_secs;
        if let Some(s) = &r.stats {
            self.report.restore = crate::criu::RestoreStats {
                pages_compared: s.pages_compared,
                pages_skipped_cow: s.pages_skipped_cow,
                forking_time_us: s.forking_time_us,
                restore_time_us: s.restore_time_us,
                pages_restored: s.pages_restored,
            };
            self.report.restore_secs = f64::from(s.restore_time_us) / 1e6;
        }
        info!(
            "process runs on the destination as pid {} after {:.3}s frozen",
            r.pid, self.report.downtime_secs
        );
    }

    /// Records the final dump's figures. CRIU's `stats-dump` of a lazy dump is not usable (its
    /// counters are zero and its frozen time wraps): post-copy figures come from haul's own
    /// clock and from the bytes the relay carried.
    fn record_dump(&mut self, dir: &Path, lazy: bool) {
        if lazy {
            let pages = self.report.memory_bytes_sent / 4096;
            self.report.dump = crate::criu::DumpStats {
                pages_lazy: pages,
                ..Default::default()
            };
            self.report.pages_sent += pages;
            self.report.frozen_secs += self.report.downtime_secs;
            return;
        }
        match stats::read_dump(dir) {
            Ok(st) => {
                self.report.dump = st;
                self.report.pages_sent += st.pages_written;
                self.report.frozen_secs += f64::from(st.frozen_time_us) / 1e6;
            }
            Err(e) => {
                warn!("{e}");
                self.report.frozen_secs += self.report.downtime_secs;
            }
        }
    }

    fn progress_bar(&self, total: u64, sock: Option<std::os::fd::RawFd>) -> Option<ProgressBar> {
        let fd = sock?;
        if !self.cfg.progress {
            return None;
        }
        let pb = ProgressBar::with_draw_target(Some(total.max(1)), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} dumping memory {bytes}/{total_bytes} {bytes_per_sec} {wide_bar}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let p = pb.clone();
        let borrowed = BorrowedRaw(fd);
        tokio::spawn(async move {
            while !p.is_finished() {
                if let Some(b) = relay::tcp_bytes_acked(&borrowed) {
                    p.set_position(b);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(pb)
    }
}

/// What the destination said while the source was frozen.
enum Held {
    /// Stop-copy: the process runs there.
    Restored(pb::Restored),
    /// Post-copy: the images are there; the restore waits for CRIU to serve pages.
    LazyReady,
}

/// A raw fd read only for TCP_INFO; reading a closed or reused fd only fails the getsockopt.
struct BorrowedRaw(std::os::fd::RawFd);
impl AsRawFd for BorrowedRaw {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}
