//! The two-phase restore. `Restore` runs CRIU's RESTORE up to its `post-restore`
//! notification: the tree is restored but does not run ([`Held`]). Only when the source says
//! `Resume` (it is about to let CRIU kill its tasks) is `post-restore` acknowledged and the
//! copy runs here ([`Running`]); any other answer, silence or a lost connection answers it
//! with failure, CRIU kills this copy, and the source keeps (or resumes) the original.
//!
//! Over haul's memory path the restore can start early ([`Gated`]): before the source freezes
//! anything, CRIU's restore starts and waits at its first image read (a FIFO in place of
//! `inventory.img`, [`crate::memory::gate`]) while the final dump's images arrive; `ImagesDone`
//! opens the gate. A stop-and-copy restore over the memory path is held until every page is
//! in before the source is told `RestoreHeld`.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::criu::pb::CriuReqType;
use crate::criu::service::{CriuOperation, Until};
use crate::criu::{client, options, stats, CriuError, Hook};
use crate::fault::{self, Phase};
use crate::memory::gate::{RestoreGate, INVENTORY, MAX_INVENTORY};
use crate::memory::parents;
use crate::wire::pb;

use super::super::error::PathError;
use super::super::images::{self, MigrationDir, RoundDir};
use super::super::limits;
use super::error::{RestoreError, ServeError};
use super::lazy::{LazyMemory, LazyPages};
use super::prepare::Prepared;
use super::Service;

/// A restore started before its images are all here, waiting at its first image read.
pub struct Gated {
    restore: Restoring,
    gate: RestoreGate,
    /// `inventory.img` as it arrives (kept here: the gate feeds it to CRIU).
    inventory: Vec<u8>,
}

/// CRIU's RESTORE in progress, before `post-restore`.
struct Restoring {
    round: RoundDir,
    op: Box<dyn CriuOperation>,
    t0: Instant,
    lazy: Option<LazyMemory>,
    hold: bool,
}

/// Restored, held at `post-restore` until the source says go.
pub struct Held {
    /// The migration id.
    pub id: String,
    /// Its directory.
    pub dir: MigrationDir,
    /// The final round's directory.
    round: RoundDir,
    /// CRIU's RESTORE, waiting for the answer to `post-restore`.
    op: Box<dyn CriuOperation>,
    /// The restored root's pid.
    pub pid: i32,
    /// When the restore started.
    t0: Instant,
    /// Post-copy's daemon or engine.
    lazy: Option<LazyMemory>,
    /// The synced trees, in place: kept with `Resume` (committed once the migration closes),
    /// rolled back otherwise.
    sync: super::sync::FileSync,
}

/// The process runs on this node.
pub struct Running {
    /// The migration id.
    pub id: String,
    /// Its directory.
    pub dir: MigrationDir,
    /// The restored root's pid.
    pub pid: i32,
    /// Post-copy: the daemon or engine still fetching pages.
    pub lazy: Option<LazyMemory>,
    /// The synced trees, in place, committed when the migration closes (after `Restored`
    /// went out, so that removing what the trees held before is not part of the downtime).
    pub sync: super::sync::FileSync,
}

/// Starts CRIU's RESTORE of the final round with what `r` asks (lazy pages from CRIU's
/// daemon or haul's engine). On failure whatever was started is stopped.
async fn start(
    service: &Arc<Service>,
    prepared: &mut Prepared,
    r: &pb::Restore,
) -> Result<Restoring, RestoreError> {
    let rd = prepared.dir.round(0)?;
    // A lazy final dump after pre-copy rounds names pages of the parent rounds, which CRIU's
    // restore finds through `parent` (haul's memory path sends each page once).
    if let (true, Some(p)) = (r.lazy, prepared.parent_round) {
        parents::link_parent(rd.path(), &images::round_name(p))
            .map_err(|e| PathError::new("cannot link the parent round in", rd.path(), e))?;
    }
    let lazy = match (r.lazy, r.memory_streams) {
        (false, _) => None,
        (true, 0) => Some(LazyMemory::Daemon(
            LazyPages::start(service, &prepared.id, &rd).await?,
        )),
        (true, n) => Some(
            LazyMemory::start_engine(service, &prepared.id, &rd, n, r.hold_until_complete).await?,
        ),
    };
    let mut opts = options::base(rd.fd(), "restore.log");
    options::TreeOptions {
        tcp_established: r.tcp_established,
        shell_job: r.shell_job,
        file_locks: r.file_locks,
        link_remap: false,
        ext_unix_sk: r.ext_unix_sk,
    }
    .apply(&mut opts);
    if r.lazy {
        opts.lazy_pages = Some(true);
    }
    let t0 = Instant::now();
    let log = rd.path().join("restore.log");
    let req = client::new_request(CriuReqType::Restore, Some(opts));
    match service.criu.start_request(req, &[], Some(log)).await {
        Ok(op) => Ok(Restoring {
            round: rd,
            op,
            t0,
            lazy,
            hold: r.hold_until_complete,
        }),
        Err(e) => {
            stop(lazy).await;
            Err(RestoreError::Criu(e))
        }
    }
}

/// Checks that the restore may start now: no page server runs, and (unless it starts early)
/// every image file that began has ended.
fn ready(prepared: &Prepared, early: bool) -> Result<(), RestoreError> {
    if let Some(round) = prepared.page_servers.keys().next() {
        return Err(RestoreError::PageServerRunning(*round));
    }
    if !early && prepared.receivers.get(&0).is_some_and(|rx| !rx.complete()) {
        return Err(RestoreError::ImagesIncomplete);
    }
    Ok(())
}

/// Restores the final round's images and holds the tree at `post-restore`. On failure the
/// prepared migration is left as it was, for its clean-up.
pub async fn restore(
    service: &Arc<Service>,
    prepared: &mut Prepared,
    r: pb::Restore,
) -> Result<Held, RestoreError> {
    ready(prepared, false)?;
    let restoring = start(service, prepared, &r).await?;
    restoring.until_held(prepared).await
}

/// Starts the restore early (`Restore{early}`, before the source's final dump): CRIU starts
/// and waits at its first image read until [`Gated::open`].
pub async fn gate(
    service: &Arc<Service>,
    prepared: &mut Prepared,
    r: pb::Restore,
) -> Result<Gated, RestoreError> {
    ready(prepared, true)?;
    let rd = prepared.dir.round(0)?;
    let gate = RestoreGate::create(rd.path())
        .map_err(|e| PathError::new("cannot make the restore gate in", rd.path(), e))?;
    match start(service, prepared, &r).await {
        Ok(restore) => Ok(Gated {
            restore,
            gate,
            inventory: Vec::new(),
        }),
        Err(e) => {
            gate.abort();
            Err(e)
        }
    }
}

impl Gated {
    /// One image chunk of the final round while the restore waits: `inventory.img` is kept
    /// for the gate, the others are written as usual.
    pub fn receive(
        &mut self,
        prepared: &mut Prepared,
        c: &pb::ImageChunk,
    ) -> Result<(), ServeError> {
        if c.round != 0 || c.name != INVENTORY {
            return prepared.receive(c);
        }
        if c.offset != self.inventory.len() as u64
            || self.inventory.len() + c.data.len() > MAX_INVENTORY
        {
            return Err(ServeError::Chunk {
                round: 0,
                source: super::super::transfer::ChunkError::Order {
                    name: INVENTORY.into(),
                    got: c.offset,
                    want: self.inventory.len() as u64,
                },
            });
        }
        self.inventory.extend_from_slice(&c.data);
        Ok(())
    }

    /// `ImagesDone`: every image is here; CRIU goes on and the restore runs to
    /// `post-restore`.
    pub async fn open(self, prepared: &mut Prepared) -> Result<Held, RestoreError> {
        let Gated {
            mut restore,
            gate,
            inventory,
        } = self;
        let complete = prepared.receivers.get(&0).map_or(true, |rx| rx.complete());
        if !complete || inventory.is_empty() {
            restore.abandon(gate).await;
            return Err(RestoreError::ImagesIncomplete);
        }
        // every image is here, CRIU not yet past its first read
        fault::point(Phase::Restore).await;
        let dir = restore.round.path().to_path_buf();
        let released = tokio::task::spawn_blocking(move || gate.release(&inventory))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = released {
            restore.fail().await;
            return Err(PathError::new("cannot open the restore gate in", dir, e).into());
        }
        restore.t0 = Instant::now();
        restore.until_held(prepared).await
    }

    /// Anything but the images and `ImagesDone`: the waiting restore fails (its read of the
    /// gate ends empty) and what it started stops.
    pub async fn abandon(self) {
        let Gated { restore, gate, .. } = self;
        restore.abandon(gate).await;
    }
}

impl Restoring {
    /// Runs the restore to `post-restore`; with `hold`, waits there until every page is in.
    async fn until_held(mut self, prepared: &mut Prepared) -> Result<Held, RestoreError> {
        let pid = match self.op.run_until(&Hook::PostRestore).await {
            Ok(Until::Reached(n)) => n.pid.unwrap_or(0),
            Ok(Until::Done(_)) => {
                // A restore that ends without post-restore ran its tree already: never the
                // case with notifications on; treat it as a failure rather than hold nothing.
                self.fail().await;
                return Err(RestoreError::Criu(CriuError::Refused {
                    request: "RESTORE".into(),
                    errno: None,
                    message: "the restore ended without a post-restore notification".into(),
                    log: None,
                }));
            }
            Err(e) => {
                self.fail().await;
                return Err(RestoreError::Criu(e));
            }
        };
        if let Some(l) = &self.lazy {
            l.restored_as(self.round.path(), pid);
        }
        if self.hold {
            // Stop-and-copy over the memory path: the final dump's pages stream into the held
            // copy (its "final dump" phase); it runs only once every page is in.
            fault::point(Phase::FinalDump).await;
            let complete = match self.lazy.as_mut() {
                Some(l) => l.wait_complete(limits::IDLE.limit).await,
                None => Err("hold_until_complete without lazy pages".to_string()),
            };
            if let Err(why) = complete {
                let _ = self.op.ack(false).await;
                let _ = tokio::time::timeout(limits::CRIU_SETTLE, self.op.next()).await;
                self.fail().await;
                return Err(RestoreError::Incomplete(why));
            }
        }
        Ok(Held {
            id: prepared.id.clone(),
            dir: prepared.dir.clone(),
            round: self.round,
            op: self.op,
            pid,
            t0: self.t0,
            lazy: self.lazy,
            sync: std::mem::take(&mut prepared.sync),
        })
    }

    /// The restore failed: its operation and what it started end.
    async fn fail(self) {
        self.op.finish().await;
        stop(self.lazy).await;
    }

    /// A gated restore that will not be given its images.
    async fn abandon(mut self, gate: RestoreGate) {
        let _ = tokio::task::spawn_blocking(move || gate.abort()).await;
        let _ = tokio::time::timeout(limits::CRIU_SETTLE, self.op.next()).await;
        self.fail().await;
    }
}

async fn stop(lazy: Option<LazyMemory>) {
    if let Some(l) = lazy {
        l.stop().await;
    }
}

impl Held {
    /// The source said go: the copy runs here. Returns the running state and what the
    /// source is told (pid, CRIU's restore stats, the restore's wall time).
    pub async fn resume(mut self) -> Result<(Running, pb::Restored), RestoreError> {
        let ran = async {
            self.op.ack(true).await?;
            loop {
                match self.op.next().await? {
                    crate::criu::Event::Notify(_) => self.op.ack(true).await?,
                    crate::criu::Event::Done(resp) => return Ok(resp),
                }
            }
        }
        .await;
        let Held {
            id,
            dir,
            round,
            op,
            pid: held_pid,
            t0,
            lazy,
            sync,
        } = self;
        op.finish().await;
        let resp = match ran {
            Ok(r) => r,
            Err(e) => {
                stop(lazy).await;
                super::sync::rollback(sync, "the restore failed").await;
                return Err(RestoreError::Criu(e));
            }
        };
        let wall = t0.elapsed().as_secs_f64();
        let pid = resp.restore.map(|r| r.pid).unwrap_or(held_pid);
        let st = stats::read_restore(round.path()).unwrap_or_default();
        info!("migration {id} restored as pid {pid} in {wall:.3}s");
        let restored = pb::Restored {
            pid,
            stats: Some(st.into()),
            restore_wall_secs: wall,
        };
        Ok((
            Running {
                id,
                dir,
                pid,
                lazy,
                sync,
            },
            restored,
        ))
    }

    /// Anything but `Resume`: CRIU kills the copy (`post-restore` answered with failure);
    /// the source keeps the original.
    pub async fn discard(mut self, why: &str) {
        warn!(
            "migration {}: restored copy (pid {}) discarded: {why}",
            self.id, self.pid
        );
        let _ = self.op.ack(false).await;
        let _ = tokio::time::timeout(limits::CRIU_SETTLE, self.op.next()).await;
        self.op.finish().await;
        stop(self.lazy).await;
        super::sync::rollback(self.sync, why).await;
    }
}
