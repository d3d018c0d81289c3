//! One bounded step of bringing VMs up or down (a script of `vagrant/`, `vagrant up`): run on
//! this machine with a time limit and the run's cancellation, its output kept in a log file
//! named in the error when it fails.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::ProviderError;
use crate::cancel::CancelToken;
use crate::node::{run_local, Output};

/// Run `cmd` as the step `name` (at most `limit`), appending its output to `log`.
pub fn run(
    name: &str,
    cmd: Command,
    limit: Duration,
    log: &Path,
    cancel: &CancelToken,
) -> Result<Output, ProviderError> {
    let t = Instant::now();
    eprintln!(
        "  {name} (limit {} s; log {})",
        limit.as_secs(),
        log.display()
    );
    let out = run_local(cmd, None, limit, cancel)?;
    let mut text = format!(
        "==== {name}: {} after {:.1} s\n",
        out.status_text(),
        t.elapsed().as_secs_f64()
    );
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = f.write_all(text.as_bytes());
    }
    if !out.success() {
        return Err(ProviderError::Step {
            step: name.into(),
            why: format!(
                "{} after {:.0} s: {} (whole output: {})",
                out.status_text(),
                t.elapsed().as_secs_f64(),
                out.tail(8).replace('\n', " | "),
                log.display()
            ),
        });
    }
    eprintln!("  {name}: done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(out)
}

/// The `vagrant/` directory of the source tree (its scripts bring the VMs up).
pub fn vagrant_dir(configured: Option<&str>) -> Result<std::path::PathBuf, ProviderError> {
    match configured {
        Some(d) => Ok(d.into()),
        None => super::local::source_tree()
            .map(|t| t.join("vagrant"))
            .filter(|d| d.join("lib.sh").is_file())
            .ok_or_else(|| {
                ProviderError::Config(
                    "the VM providers need haul's source tree (its vagrant/ scripts): run from it or set vagrant_dir".into(),
                )
            }),
    }
}
