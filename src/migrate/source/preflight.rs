//! What the source checks on its own node before it contacts the destination: the pid, its
//! CRIU (version >= [`MIN_CRIU_VERSION`], features), transparent huge pages, this CPU's
//! description for the destination's CPUINFO_CHECK, and the tree itself (what it holds that
//! CRIU cannot move, the options it needs, what the destination must check:
//! [`crate::preflight`]). Nothing is frozen here: a problem found refuses the migration with
//! its cause and remedy, and the process runs on untouched.

use crate::criu::service::CriuService;
use crate::criu::{options, CriuError, CriuVersion, Features, MIN_CRIU_VERSION};
use crate::preflight::{report::SourcePreflight, Asked, Refusal};

use super::super::error::PathError;
use super::super::images::{self, MigrationDir};
use super::super::strategy::Strategy;
use super::super::tree as proc_tree;
use super::{SourceConfig, SourceError};

/// What the checks found, for the migration that follows.
#[derive(Debug)]
pub struct Checked {
    /// This node's CRIU version.
    pub version: CriuVersion,
    /// This node's CRIU features.
    pub features: Features,
    /// The new migration's id.
    pub migration_id: String,
    /// Its directory on this node.
    pub dir: MigrationDir,
    /// This CPU, as CRIU's CPUINFO_DUMP wrote it (`cpuinfo.img`).
    pub cpuinfo: Vec<u8>,
    /// The tree's resident memory (bytes), for the destination's space check.
    pub memory_bytes: u64,
    /// Warnings for the report.
    pub warnings: Vec<String>,
    /// What the tree holds, pre-flight's verdict and what the destination must check.
    pub tree: SourcePreflight,
}

/// Checks this node and prepares the migration's directory.
pub async fn check(cfg: &SourceConfig, criu: &dyn CriuService) -> Result<Checked, SourceError> {
    let pid = cfg.pid;
    if !proc_tree::alive(pid) {
        return Err(SourceError::NoSuchPid(pid));
    }
    let version = criu.version().await?;
    if (version.major, version.minor) < MIN_CRIU_VERSION {
        return Err(CriuError::TooOld {
            path: criu.path().to_path_buf(),
            found: version.to_string(),
            need: format!("{}.{}", MIN_CRIU_VERSION.0, MIN_CRIU_VERSION.1),
        }
        .into());
    }
    let features = criu.features().await?;
    let asked = Asked {
        tree: cfg.tree.clone(),
        ghost_limit: cfg.ghost_limit,
    };
    let tree = crate::preflight::report::source(pid, &asked)?;
    if tree.assessment.refused() && !cfg.dry_run && !cfg.ignore_preflight {
        return Err(SourceError::Refused(Refusal {
            findings: tree.assessment.findings.clone(),
        }));
    }
    let mut warnings = Vec::new();
    if proc_tree::thp_mode().as_deref() == Some("always") && cfg.strategy != Strategy::StopCopy {
        warnings.push(
            "transparent huge pages are `always` on this node: dirty tracking works per 2 MiB and pre-copy saves little; set /sys/kernel/mm/transparent_hugepage/enabled to never".into(),
        );
    }
    let migration_id = images::new_migration_id(pid);
    let dir = MigrationDir::create(&cfg.img_path, &migration_id)?;
    let cpu = dir.sub("cpuinfo")?;
    criu.cpuinfo_dump(
        options::base(cpu.fd(), "cpuinfo-dump.log"),
        Some(cpu.path().join("cpuinfo-dump.log")),
    )
    .await?;
    let cpuinfo_path = cpu.path().join("cpuinfo.img");
    let cpuinfo = std::fs::read(&cpuinfo_path)
        .map_err(|e| PathError::new("cannot read", &cpuinfo_path, e))?;
    Ok(Checked {
        version,
        features,
        migration_id,
        dir,
        cpuinfo,
        memory_bytes: proc_tree::resident_bytes(pid),
        warnings,
        tree,
    })
}
