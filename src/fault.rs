//! Fault injection points, for tests.
//!
//! With `HAUL_FAULT=<phase>` and `HAUL_FAULT_DIR=<dir>` in its environment, a `haul serve` or
//! `haul pid` that reaches `<phase>` writes `<dir>/<phase>.reached` and waits (at most 120 s)
//! until `<dir>/<phase>.go` exists. Meanwhile the test injects a real fault: kills a side, cuts
//! the link, fills the disk, damages an image. Without `HAUL_FAULT` a point costs one check of
//! a value read once.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where a migration can be paused for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Destination: a connection was accepted, before the handshake.
    Handshake,
    /// Destination: a pre-copy round's page server started.
    PreCopyRound,
    /// Destination: the final dump's page server started (pages are streaming).
    FinalDump,
    /// Source: the final dump reached post-dump (tasks frozen), before the images go.
    Frozen,
    /// Destination: the first image file of the final dump arrived.
    ImageTransfer,
    /// Destination: every image is there, before CRIU restores.
    Restore,
    /// Source: haul's memory path holds CRIU's lazy page server (tasks frozen after a lazy
    /// dump), before the pages go.
    LazyHeld,
    /// Source: post-copy, the process runs on the destination, pages still flow.
    PostCopyServing,
}

impl Phase {
    /// The name used in `HAUL_FAULT` and the marker files.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::PreCopyRound => "pre-copy-round",
            Phase::FinalDump => "final-dump",
            Phase::Frozen => "frozen",
            Phase::ImageTransfer => "image-transfer",
            Phase::Restore => "restore",
            Phase::LazyHeld => "lazy-held",
            Phase::PostCopyServing => "post-copy-serving",
        }
    }
}

struct Config {
    phase: String,
    dir: PathBuf,
}

fn config() -> Option<&'static Config> {
    static CFG: OnceLock<Option<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        let phase = std::env::var("HAUL_FAULT").ok()?;
        let dir = std::env::var_os("HAUL_FAULT_DIR").map(PathBuf::from)?;
        Some(Config { phase, dir })
    })
    .as_ref()
}

/// A fault point: pauses here when `HAUL_FAULT` names `phase` (once per process).
pub async fn point(phase: Phase) {
    let Some(cfg) = config() else { return };
    if cfg.phase != phase.name() {
        return;
    }
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if FIRED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let reached = cfg.dir.join(format!("{}.reached", phase.name()));
    let go = cfg.dir.join(format!("{}.go", phase.name()));
    let _ = std::fs::write(&reached, std::process::id().to_string());
    tracing::warn!(
        "fault point {}: paused until {} exists",
        phase.name(),
        go.display()
    );
    let t = Instant::now();
    while !go.exists() && t.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
