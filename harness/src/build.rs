//! Building haul's binaries for a run (`cargo build --release -p haul -p haul-launch
//! -p haul-workloads` in the source tree; a no-op when they are up to date).

use std::path::Path;

/// Building failed.
#[derive(Debug, thiserror::Error)]
#[error("building haul's binaries failed: {0}")]
pub struct BuildError(pub String);

/// Build haul's binaries in `tree`.
pub fn build_binaries(tree: &Path) -> Result<(), BuildError> {
    eprintln!(
        "building haul's binaries (cargo build --release -p haul -p haul-launch -p haul-workloads)"
    );
    let st = std::process::Command::new("cargo")
        .current_dir(tree)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "haul",
            "-p",
            "haul-launch",
            "-p",
            "haul-workloads",
        ])
        .status()
        .map_err(|e| BuildError(format!("cannot run cargo: {e}")))?;
    if !st.success() {
        return Err(BuildError(format!("cargo exited with {st}")));
    }
    Ok(())
}
