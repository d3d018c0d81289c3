//! What this node can do, as data: `haul check --json` prints it, and either side can send it.

use serde::{Deserialize, Serialize};

use super::cost::CostModel;
use crate::criu::{Criu, CriuVersion, Features, MIN_CRIU_VERSION};
use crate::migrate::{tree, Strategy};

/// The pipe size lazy pages need (bytes): without it CRIU's page pipes cannot grow
/// (ENVIRONMENT.md: `page-pipe: splice: -1: Bad file descriptor`).
pub const LAZY_PIPE_SIZE: u64 = 4 << 20;

/// One strategy on this node (as source and destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyAvailability {
    /// The strategy.
    pub strategy: Strategy,
    /// What it needs that this node lacks; `None` when it can run.
    pub missing: Option<String>,
}

/// What `haul check` finds on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCheck {
    /// CRIU's binary.
    pub criu_path: String,
    /// Its version.
    pub criu_version: Option<CriuVersion>,
    /// Whether it is new enough for haul.
    pub criu_new_enough: bool,
    /// `criu check`'s verdict: `None` when it passed, the error otherwise.
    pub criu_check_error: Option<String>,
    /// Memory tracking and lazy pages.
    pub features: Features,
    /// Transparent huge pages (`always`, `madvise`, `never`).
    pub thp: Option<String>,
    /// `fs.pipe-max-size` (bytes); lazy pages need [`LAZY_PIPE_SIZE`] without CAP_SYS_RESOURCE.
    pub pipe_max_size: Option<u64>,
    /// Each strategy.
    pub strategies: Vec<StrategyAvailability>,
    /// The cost model `auto` uses here.
    pub cost_model: CostModel,
    /// Problems found (each a sentence with what to do).
    pub problems: Vec<String>,
}

/// Checks this node with `criu` (version, `criu check`, features, THP, pipe size).
pub async fn check_node(criu: &Criu) -> NodeCheck {
    let mut problems = Vec::new();
    let version = match criu.version().await {
        Ok(v) => Some(v),
        Err(e) => {
            problems.push(format!("cannot ask CRIU for its version: {e}"));
            None
        }
    };
    let new_enough = version.is_some_and(|v| (v.major, v.minor) >= MIN_CRIU_VERSION);
    if version.is_some() && !new_enough {
        problems.push(format!(
            "CRIU is older than {}.{}: run scripts/setup.sh",
            MIN_CRIU_VERSION.0, MIN_CRIU_VERSION.1
        ));
    }
    let check_error = criu.check().await.err().map(|e| e.to_string());
    if let Some(e) = &check_error {
        problems.push(format!("criu check failed: {e}"));
    }
    let features = criu.features().await.unwrap_or_default();
    let pipe_max_size = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if features.lazy_pages && pipe_max_size.is_some_and(|p: u64| p < LAZY_PIPE_SIZE) {
        problems.push(format!(
            "fs.pipe-max-size is below {LAZY_PIPE_SIZE}: post-copy fails without CAP_SYS_RESOURCE; `sysctl fs.pipe-max-size={LAZY_PIPE_SIZE}`"
        ));
    }
    let strategies = [
        Strategy::StopCopy,
        Strategy::PreCopy,
        Strategy::PostCopy,
        Strategy::Hybrid,
    ]
    .into_iter()
    .map(|s| StrategyAvailability {
        strategy: s,
        missing: s.missing(features, features),
    })
    .collect();
    NodeCheck {
        criu_path: criu.path().display().to_string(),
        criu_version: version,
        criu_new_enough: new_enough,
        criu_check_error: check_error,
        features,
        thp: tree::thp_mode(),
        pipe_max_size,
        strategies,
        cost_model: CostModel::default(),
        problems,
    }
}
