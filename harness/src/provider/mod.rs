//! Node providers: where the two nodes of a migration come from. One interface for all:
//!
//! | kind | nodes | shared directory | reached by |
//! |---|---|---|---|
//! | `local` | two network namespaces on this machine ([`haul_test_support::NodePair`]) | a directory of this machine | `nsenter --net` |
//! | `ssh` | any two hosts the scenario names | a directory both mount (NFS) at the same path | ssh, one multiplexed connection per host |
//! | `qemu` | the two VMs of `vagrant/` under plain QEMU (`vagrant/vm.sh`), started and stopped by the harness | `/srv/haul-shared` (NFS from `dst`) | ssh, configured from the VMs' state directory |
//! | `vagrant` | the same two VMs through Vagrant with libvirt (`vagrant up`, the box built locally), libvirt inside a network namespace of the run's own; started and destroyed by the harness | `/srv/haul-shared` | ssh from `vagrant ssh-config`, inside that namespace |
//!
//! A [`Provider`] hands out a source and a destination [`Node`]; the harness runs everything
//! through [`Node::exec`] and [`Node::spawn`], so it never knows which kind it drives. Every
//! provider makes its own directories (named after the results set) and removes them, and
//! whatever it started (processes, VMs, daemons, namespaces), when dropped: on success, on
//! an error, on a panic and after SIGINT/SIGTERM (the run's [`CancelToken`] unwinds to the
//! drop).

pub mod local;
pub mod qemu;
pub mod ssh;
pub mod step;
pub mod vagrant;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cancel::CancelToken;
pub use crate::node::{Node, NodeError, Output};
pub use local::{LocalConfig, LocalProvider};
pub use qemu::QemuConfig;
pub use ssh::{SshConfig, SshHost, SshProvider};
pub use vagrant::VagrantConfig;

/// Why a pair of nodes could not be made or reached.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The local nodes could not be made.
    #[error(transparent)]
    Netns(#[from] haul_test_support::NodeError),
    /// A command on a node, or a local program, failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The provider is not usable as configured.
    #[error("{0}")]
    Config(String),
    /// A step of bringing the VMs up failed (its log is named).
    #[error("{step} failed: {why}")]
    Step {
        /// The step (`vagrant up`, `vm.sh up`, ...).
        step: String,
        /// Exit status, the end of its output, where its log is.
        why: String,
    },
}

/// The `[provider]` table of a scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderConfig {
    /// Two network namespaces on this machine.
    Local(LocalConfig),
    /// Two hosts reached over ssh.
    Ssh(SshConfig),
    /// The two VMs of `vagrant/` under plain QEMU.
    Qemu(QemuConfig),
    /// The two VMs of `vagrant/` through Vagrant and libvirt.
    Vagrant(VagrantConfig),
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig::Local(LocalConfig::default())
    }
}

impl ProviderConfig {
    /// The kind's name (`local`, `ssh`, `qemu`, `vagrant`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Local(_) => "local",
            ProviderConfig::Ssh(_) => "ssh",
            ProviderConfig::Qemu(_) => "qemu",
            ProviderConfig::Vagrant(_) => "vagrant",
        }
    }

    /// The default configuration of a kind (`ssh` has none: it needs hosts).
    pub fn default_of(kind: &str) -> Result<ProviderConfig, String> {
        match kind {
            "local" => Ok(ProviderConfig::Local(LocalConfig::default())),
            "qemu" => Ok(ProviderConfig::Qemu(QemuConfig::default())),
            "vagrant" => Ok(ProviderConfig::Vagrant(VagrantConfig::default())),
            "ssh" => Err("the ssh provider needs its hosts: give them in the scenario's [provider] table (kind = \"ssh\", source, destination, shared_dir)".into()),
            other => Err(format!("unknown provider {other:?} (local, ssh, qemu or vagrant)")),
        }
    }

    /// Whether the nodes are VMs this run boots (their figures are TCG's, not the host's).
    pub fn is_vm(&self) -> bool {
        matches!(self, ProviderConfig::Qemu(_) | ProviderConfig::Vagrant(_))
    }

    /// Check the configuration without touching any node.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ProviderConfig::Local(_) | ProviderConfig::Qemu(_) | ProviderConfig::Vagrant(_) => {
                Ok(())
            }
            ProviderConfig::Ssh(c) => c.validate(),
        }
    }
}

/// A pair of nodes, ready: a source, a destination and a directory both see.
pub trait Provider: fmt::Debug {
    /// `local`, `ssh`, `qemu` or `vagrant`.
    fn kind(&self) -> &'static str;
    /// Which nodes, in a line (recorded with every result).
    fn describe(&self) -> String;
    /// The node the workload starts on.
    fn source(&self) -> &dyn Node;
    /// The node it moves to.
    fn destination(&self) -> &dyn Node;
    /// A directory both nodes see at this path (the workloads' working directories go here).
    fn shared_dir(&self) -> &str;
    /// Keep the directories when dropped (for inspection) instead of removing them.
    fn keep_files(&mut self, keep: bool);
    /// A directory at the same path on both nodes that each keeps on its own disk (synced
    /// workloads, `haul pid --sync`), when the provider makes one.
    fn node_local_dir(&self) -> Option<&str> {
        None
    }
}

/// What a provider needs besides its configuration.
#[derive(Debug, Clone)]
pub struct ProvisionContext {
    /// Names the run's directories, namespaces and VMs (the results set).
    pub tag: String,
    /// The run's cancellation.
    pub cancel: CancelToken,
    /// Where haul's binaries are on this machine (the VMs get them from here).
    pub host_bin_dir: Option<String>,
}

/// Make the nodes a configuration names (boots VMs for `qemu` and `vagrant`).
pub fn provision(
    config: &ProviderConfig,
    cx: &ProvisionContext,
) -> Result<Box<dyn Provider>, ProviderError> {
    Ok(match config {
        ProviderConfig::Local(c) => Box::new(LocalProvider::new(c, cx)?),
        ProviderConfig::Ssh(c) => Box::new(SshProvider::new("ssh", c, &cx.tag, &cx.cancel)?),
        ProviderConfig::Qemu(c) => Box::new(qemu::QemuProvider::up(c, cx)?),
        ProviderConfig::Vagrant(c) => Box::new(vagrant::VagrantProvider::up(c, cx)?),
    })
}

/// Whether `path` is safe to `rm -rf`: absolute, and inside a directory this harness names.
pub fn removable(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("/../")
        && !path.ends_with("/..")
        && path.split('/').any(|c| c.starts_with("haul-harness"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removable_paths() {
        assert!(removable("/var/tmp/haul-harness/x"));
        assert!(removable("/srv/shared/haul-harness-x/y"));
        assert!(!removable("/var/tmp"));
        assert!(!removable("relative/haul-harness"));
        assert!(!removable("/var/tmp/haul-harness/../.."));
    }

    #[test]
    fn provider_kinds() {
        assert_eq!(ProviderConfig::default().kind(), "local");
        assert_eq!(
            ProviderConfig::default_of("vagrant").unwrap().kind(),
            "vagrant"
        );
        assert_eq!(ProviderConfig::default_of("qemu").unwrap().kind(), "qemu");
        assert!(ProviderConfig::default_of("vagrant").unwrap().is_vm());
        assert!(ProviderConfig::default_of("ssh").is_err());
        assert!(ProviderConfig::default_of("cloud").is_err());
    }
}
