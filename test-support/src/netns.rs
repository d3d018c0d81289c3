//! One network namespace with only loopback up: a workload started in it can reach nothing
//! but itself. Removed, with every process in it, on drop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::nodes::{destroy_netns, ip, procs_in_netns, NodeError};

/// A network namespace `haul<tag>-<pid>-<n>` with loopback up; on drop every process in it is
/// killed (all of them started by the test) and it is deleted.
#[derive(Debug)]
pub struct LoopbackNetns {
    /// Its name under /run/netns.
    pub name: String,
}

impl LoopbackNetns {
    /// Makes the namespace; `tag` names the test crate (`launch`, `wl`).
    pub fn new(tag: &str) -> Result<LoopbackNetns, NodeError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "haul{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on, Drop removes it.
        let ns = LoopbackNetns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Host pids of the live (non-zombie) processes inside.
    pub fn processes(&self) -> Vec<i32> {
        procs_in_netns(&self.name)
    }
}

impl Drop for LoopbackNetns {
    fn drop(&mut self) {
        destroy_netns(&self.name);
    }
}
