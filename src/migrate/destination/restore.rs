//! The two-phase restore. `Restore` runs CRIU's RESTORE up to its `post-restore`
//! notification: the tree is restored but does not run ([`Held`]). Only when the source says
//! `Resume` (it is about to let CRIU kill its tasks) is `post-restore` acknowledged and the
//! copy runs here ([`Running`]); any other answer, silence or a lost connection answers it
//! with failure, CRIU kills this copy, and the source keeps (or resumes) the original.

use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::criu::pb::CriuReqType;
use crate::criu::service::{CriuOperation, Until};
use crate::criu::{client, options, stats, Hook};
use crate::wire::pb;

use super::super::images::{MigrationDir, RoundDir};
use super::super::limits;
use super::error::RestoreError;
use super::lazy::LazyPages;
use super::prepare::Prepared;
use super::Service;

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
    /// Post-copy's daemon and relay.
    lazy: Option<LazyPages>,
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
    /// Post-copy: the daemon still fetching pages.
    pub lazy: Option<LazyPages>,
    /// The synced trees, in place, committed when the migration closes (after `Restored`
    /// went out, so that removing what the trees held before is not part of the downtime).
    pub sync: super::sync::FileSync,
}

/// Restores the final round's images and holds the tree at `post-restore`. On failure the
/// prepared migration is left as it was, for its clean-up.
pub async fn restore(
    service: &Arc<Service>,
    prepared: &mut Prepared,
    r: pb::Restore,
) -> Result<Held, RestoreError> {
    if let Some(round) = prepared.page_servers.keys().next() {
        return Err(RestoreError::PageServerRunning(*round));
    }
    if prepared.receivers.get(&0).is_some_and(|rx| !rx.complete()) {
        return Err(RestoreError::ImagesIncomplete);
    }
    let rd = prepared.dir.round(0)?;
    let lazy = match r.lazy {
        true => Some(LazyPages::start(service, &prepared.id, &rd).await?),
        false => None,
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
    let started = service.criu.start_request(req, &[], Some(log)).await;
    let mut op = match started {
        Ok(op) => op,
        Err(e) => {
            stop(lazy).await;
            return Err(RestoreError::Criu(e));
        }
    };
    let pid = match op.run_until(&Hook::PostRestore).await {
        Ok(Until::Reached(n)) => n.pid.unwrap_or(0),
        Ok(Until::Done(_)) => {
            // A restore that ends without post-restore ran its tree already: never the case
            // with notifications on; treat it as a failure rather than hold nothing.
            op.finish().await;
            stop(lazy).await;
            return Err(RestoreError::Criu(crate::criu::CriuError::Refused {
                request: "RESTORE".into(),
                errno: None,
                message: "the restore ended without a post-restore notification".into(),
                log: None,
            }));
        }
        Err(e) => {
            op.finish().await;
            stop(lazy).await;
            return Err(RestoreError::Criu(e));
        }
    };
    if let Some(l) = &lazy {
        l.restored_as(pid);
    }
    Ok(Held {
        id: prepared.id.clone(),
        dir: prepared.dir.clone(),
        round: rd,
        op,
        pid,
        t0,
        lazy,
        sync: std::mem::take(&mut prepared.sync),
    })
}

async fn stop(lazy: Option<LazyPages>) {
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
