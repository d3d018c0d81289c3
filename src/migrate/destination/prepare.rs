//! `Begin`: the destination's checks before the source freezes anything, and the state they
//! lead to, [`Prepared`]: a migration directory, image receivers, page servers per round.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use tracing::info;

use crate::criu::{options, CriuVersion};
use crate::wire::pb;

use super::super::error::PathError;
use super::super::images::{self, MigrationDir};
use super::super::limits;
use super::super::transfer::ImageReceiver;
use super::error::{PageServerError, PrepareError, ServeError};
use super::page_server::PageServer;
use super::Service;
use crate::preflight::{DestinationRequirements, Refusal, Severity};

/// A migration that passed the checks: where its images go and what runs for it.
pub struct Prepared {
    /// A dry run (`haul pid --dry-run`): nothing but a probe comes, nothing is kept.
    pub dry_run: bool,
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
/// as P.Haul required), free space for the announced memory (or the images' estimated size)
/// plus [`limits::SPACE_MARGIN`], the source's `cpuinfo.img` against this CPU (CRIU's
/// CPUINFO_CHECK), and the tree's requirements (ports free in this network namespace, pids
/// free where the tree has no pid namespace of its own, the files it holds here with the same
/// size and mode: [`crate::preflight::destination`]). Every one of these would otherwise fail
/// the restore after the source froze the process.
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
    let requirements: DestinationRequirements = if begin.requirements_json.is_empty() {
        DestinationRequirements::default()
    } else {
        serde_json::from_str(&begin.requirements_json).map_err(PrepareError::BadRequirements)?
    };
    let img_path = &service.cfg.img_path;
    let free = images::free_bytes(img_path)?;
    let need = begin
        .memory_bytes
        .max(requirements.image_bytes)
        .saturating_add(limits::SPACE_MARGIN);
    if free < need {
        return Err(PrepareError::NoSpace {
            path: img_path.clone(),
            free_mib: free >> 20,
            need_mib: need >> 20,
        });
    }
    let dir = MigrationDir::create(img_path, &begin.migration_id)?;
    let checked = check_here(service, &dir, &begin.cpuinfo, &requirements).await;
    let findings = match checked {
        Ok(f) => f,
        Err(e) => {
            // A dry run keeps nothing; a refused migration keeps the CPU check's log.
            if begin.dry_run {
                let _ = std::fs::remove_dir_all(dir.root());
            }
            return Err(e);
        }
    };
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
        findings_json: if findings.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&findings).unwrap_or_default()
        },
    };
    let prepared = Prepared {
        dry_run: begin.dry_run,
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

/// The checks that need the migration's directory: CRIU's CPUINFO_CHECK of the source's
/// `cpuinfo.img`, then the tree's requirements. Returns the findings that do not refuse.
async fn check_here(
    service: &Arc<Service>,
    dir: &MigrationDir,
    cpuinfo: &[u8],
    requirements: &DestinationRequirements,
) -> Result<Vec<crate::preflight::Finding>, PrepareError> {
    let cpu = dir.sub("cpuinfo")?;
    let img = cpu.path().join("cpuinfo.img");
    std::fs::write(&img, cpuinfo).map_err(|e| PathError::new("cannot write", &img, e))?;
    let log = cpu.path().join("cpuinfo-check.log");
    service
        .criu
        .cpuinfo_check(options::base(cpu.fd(), "cpuinfo-check.log"), Some(log))
        .await
        .map_err(PrepareError::CpuMismatch)?;
    let (_, findings) = crate::preflight::report::destination(requirements, &service.cfg.img_path);
    if findings.iter().any(|f| f.severity == Severity::Refuse) {
        return Err(PrepareError::Refused(Refusal { findings }));
    }
    Ok(findings)
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

    /// Ends the page server of `round`: the bytes of pages it wrote and, for a pre-copy
    /// round, its pagemaps (the source's lazy final dump tells unchanged pages by them).
    pub async fn end_page_server(
        &mut self,
        round: u32,
    ) -> Result<pb::PageServerEnded, PageServerError> {
        let ps = self
            .page_servers
            .remove(&round)
            .ok_or(PageServerError::NotStarted(round))?;
        let bytes = ps.end().await?;
        let pagemaps = if round > 0 {
            let dir = self.dir.round(round)?;
            crate::memory::parents::collect(dir.path())
                .map_err(|e| PathError::new("cannot read the pagemaps in", dir.path(), e))?
        } else {
            Vec::new()
        };
        Ok(pb::PageServerEnded {
            round,
            bytes,
            pagemaps,
        })
    }

    /// Stops every page server still running.
    pub async fn stop_page_servers(&mut self) {
        for (_, ps) in self.page_servers.drain() {
            ps.kill().await;
        }
    }
}
