//! `Begin`: the destination's checks before the source freezes anything, and the state they
//! lead to, [`Prepared`]: a migration directory, image receivers, page servers per round.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::criu::{options, CriuVersion};
use crate::wire::pb;

use super::super::images::{self, MigrationDir};
use super::super::limits;
use super::super::transfer::ImageReceiver;
use super::error::{PageServerError, PrepareError, ServeError};
use super::page_server::PageServer;
use super::Service;

/// A migration that passed the checks: where its images go and what runs for it.
pub struct Prepared {
    /// The migration id (its directory's name).
    pub id: String,
    /// Its directory on this node.
    pub dir: MigrationDir,
    /// Bytes of images it may still write (free space at `Begin`, less a margin).
    pub budget: u64,
    /// Image receivers per round.
    pub receivers: HashMap<u32, ImageReceiver>,
    /// Page servers running, per round.
    pub page_servers: HashMap<u32, PageServer>,
    /// The last round a page server was started for: the next round's parent.
    pub parent_round: Option<u32>,
    /// File sync (`--sync`), when the source asked for one.
    pub sync: super::sync::FileSync,
}

/// Checks what the source announced: the migration id, CRIU versions (source <= this node,
/// as P.Haul required), free space for the announced memory plus [`limits::SPACE_MARGIN`],
/// and the source's `cpuinfo.img` against this CPU (CRIU's CPUINFO_CHECK).
pub async fn prepare(
    service: &Arc<Service>,
    begin: pb::Begin,
    peer: &str,
) -> Result<(Prepared, pb::Ready), PrepareError> {
    if !images::valid_migration_id(&begin.migration_id) {
        return Err(PrepareError::BadMigrationId(begin.migration_id));
    }
    let src: CriuVersion = begin.criu_version.unwrap_or_default().into();
    let ours = service.version;
    if src > ours {
        return Err(PrepareError::CriuTooOld {
            source_version: src,
            ours,
        });
    }
    let img_path = &service.cfg.img_path;
    let free = images::free_bytes(img_path)?;
    let need = begin.memory_bytes.saturating_add(limits::SPACE_MARGIN);
    if free < need {
        return Err(PrepareError::NoSpace {
            path: img_path.clone(),
            free_mib: free >> 20,
            need_mib: need >> 20,
        });
    }
    let dir = MigrationDir::create(img_path, &begin.migration_id)?;
    let cpu = dir.sub("cpuinfo")?;
    let img = cpu.path().join("cpuinfo.img");
    std::fs::write(&img, &begin.cpuinfo)
        .map_err(|e| super::super::error::PathError::new("cannot write", &img, e))?;
    let log = cpu.path().join("cpuinfo-check.log");
    service
        .criu
        .cpuinfo_check(options::base(cpu.fd(), "cpuinfo-check.log"), Some(log))
        .await
        .map_err(PrepareError::CpuMismatch)?;
    info!(
        "{peer}: migration {} prepared in {} (strategy {}, source CRIU {src})",
        begin.migration_id,
        dir.root().display(),
        begin.strategy
    );
    let ready = pb::Ready {
        criu_version: Some(ours.into()),
        features: Some(service.features.into()),
        free_bytes: free,
        img_dir: dir.root().display().to_string(),
    };
    let prepared = Prepared {
        id: begin.migration_id,
        dir,
        budget: free.saturating_sub(limits::SPACE_MARGIN / 2),
        receivers: HashMap::new(),
        page_servers: HashMap::new(),
        parent_round: None,
        sync: Default::default(),
    };
    Ok((prepared, ready))
}

impl Prepared {
    /// Writes one image chunk into its round's directory (created on the first chunk).
    pub fn receive(&mut self, chunk: &pb::ImageChunk) -> Result<(), ServeError> {
        let round = chunk.round;
        let receiver = match self.receivers.entry(round) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let rd = self.dir.round(round)?;
                v.insert(ImageReceiver::new(rd.path(), self.budget))
            }
        };
        receiver
            .accept(chunk)
            .map_err(|source| ServeError::Chunk { round, source })
    }

    /// Starts CRIU's page server for `round` on its memory channel; the previous round is
    /// its parent.
    pub async fn start_page_server(
        &mut self,
        service: &Arc<Service>,
        round: u32,
    ) -> Result<(), PageServerError> {
        if self.page_servers.contains_key(&round) {
            return Err(PageServerError::StartedTwice(round));
        }
        let ps = PageServer::start(service, &self.id, &self.dir, round, self.parent_round).await?;
        self.parent_round = Some(round);
        self.page_servers.insert(round, ps);
        Ok(())
    }

    /// Ends the page server of `round`; returns the bytes of pages it wrote.
    pub async fn end_page_server(&mut self, round: u32) -> Result<u64, PageServerError> {
        let ps = self
            .page_servers
            .remove(&round)
            .ok_or(PageServerError::NotStarted(round))?;
        ps.end().await
    }

    /// Stops every page server still running.
    pub async fn stop_page_servers(&mut self) {
        for (_, ps) in self.page_servers.drain() {
            ps.kill().await;
        }
    }
}
