//! The `vagrant` provider: the two VMs of `vagrant/` through Vagrant itself, with
//! vagrant-libvirt and the box built locally from Debian's packages (`vagrant/build-box.sh`).
//! libvirtd, its networks and the guests' taps live in a network namespace the run makes
//! (`vagrant/libvirt-ns.sh`, named after the harness's pid), so nothing touches the machine's
//! own interfaces; Vagrant and ssh run inside it too.
//!
//! The harness owns the whole life: `libvirt-ns.sh start` (installing Vagrant, libvirt and
//! QEMU from Debian when missing), `build-box.sh`, `vagrant up` (the Vagrantfile provisions
//! haul's binaries, this machine's CRIU and a key, and mounts the NFS share), and when the
//! provider is dropped, whatever ended the run, `vagrant destroy -f` and `libvirt-ns.sh
//! stop`. Vagrant's machine state goes in the run's directory (`VAGRANT_DOTFILE_PATH`).
//!
//! ```toml
//! [provider]
//! kind = "vagrant"
//! memory_mib = 1024     # per guest (default 768)
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::qemu::{guests_over_ssh, remove_state, state_dir, sync_clocks};
use super::ssh::SshProvider;
use super::{step, Node, Provider, ProviderError, ProvisionContext};
use crate::cancel::CancelToken;

/// The `[provider]` table for `kind = "vagrant"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VagrantConfig {
    /// Memory per guest in MiB (default: the Vagrantfile's 768).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// The `vagrant/` directory (default: the source tree's).
    #[serde(default)]
    pub vagrant_dir: Option<String>,
}

/// libvirt in its namespace, and the Vagrant machines; destroyed when dropped.
#[derive(Debug)]
struct Machines {
    vagrant_dir: PathBuf,
    netns: String,
    state: PathBuf,
    log: PathBuf,
    host_bin_dir: Option<String>,
    memory_mib: Option<u32>,
    /// `vagrant up` was started (so there may be machines to destroy).
    up_started: bool,
    /// `libvirt-ns.sh start` was started.
    libvirt_started: bool,
    /// Everything came up: the run's directory goes after the tear-down.
    up: bool,
    /// Keep the run's directory (`--keep`).
    keep: bool,
}

impl Machines {
    fn script(&self, name: &str, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(self.vagrant_dir.join(name))
            .args(args)
            .env("HAUL_LIBVIRT_NETNS", &self.netns);
        c
    }

    /// `vagrant ARGS` inside the namespace, with the run's state and binaries.
    fn vagrant(&self, args: &[&str]) -> Command {
        let mut c = self.script("libvirt-ns.sh", &["exec", "vagrant"]);
        c.args(args)
            .env("VAGRANT_CWD", &self.vagrant_dir)
            .env("VAGRANT_DOTFILE_PATH", self.state.join("dotfile"))
            .env("HAUL_KEY_FILE", self.state.join("haul.key"));
        if let Some(b) = &self.host_bin_dir {
            c.env("HAUL_BIN_DIR", b);
        }
        if let Some(m) = self.memory_mib {
            c.env("HAUL_VM_MEM", m.to_string());
        }
        c
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        let t = CancelToken::new();
        if self.up_started {
            let cmd = self.vagrant(&["destroy", "-f"]);
            if let Err(e) = step::run(
                "vagrant destroy -f",
                cmd,
                Duration::from_secs(300),
                &self.log,
                &t,
            ) {
                eprintln!("haul-harness: {e}");
            }
        }
        if self.libvirt_started {
            let cmd = self.script("libvirt-ns.sh", &["stop"]);
            match step::run(
                "libvirt-ns.sh stop",
                cmd,
                Duration::from_secs(180),
                &self.log,
                &t,
            ) {
                Ok(_) => remove_state(&self.state, self.up, self.keep),
                Err(e) => eprintln!("haul-harness: {e}"),
            }
        }
    }
}

/// Two Vagrant machines, reached over ssh inside libvirt's namespace.
#[derive(Debug)]
pub struct VagrantProvider {
    // dropped first: the harness's processes and directories in the guests go before them
    nodes: SshProvider,
    _machines: Machines,
    /// The guests' clock offsets after they were set.
    clocks: String,
}

impl VagrantProvider {
    /// libvirt, the box, `vagrant up`, then one ssh master per guest.
    pub fn up(c: &VagrantConfig, cx: &ProvisionContext) -> Result<VagrantProvider, ProviderError> {
        let state = state_dir(&cx.tag, "vagrant")?;
        let mut m = Machines {
            vagrant_dir: step::vagrant_dir(c.vagrant_dir.as_deref())?,
            netns: format!("haul-lv-{}", std::process::id()),
            log: state.join("vagrant.log"),
            state,
            host_bin_dir: cx.host_bin_dir.clone(),
            memory_mib: c.memory_mib,
            up_started: false,
            libvirt_started: false,
            up: false,
            keep: false,
        };
        m.libvirt_started = true;
        let start = m.script("libvirt-ns.sh", &["start"]);
        step::run(
            "libvirt-ns.sh start",
            start,
            Duration::from_secs(900),
            &m.log,
            &cx.cancel,
        )?;
        let boxes = m.script("build-box.sh", &[]);
        step::run(
            "build-box.sh",
            boxes,
            Duration::from_secs(1500),
            &m.log,
            &cx.cancel,
        )?;
        m.up_started = true;
        let up = m.vagrant(&["up", "--no-tty"]);
        step::run(
            "vagrant up",
            up,
            Duration::from_secs(1200),
            &m.log,
            &cx.cancel,
        )?;
        let out = step::run(
            "vagrant ssh-config",
            m.vagrant(&["ssh-config"]),
            Duration::from_secs(120),
            &m.log,
            &cx.cancel,
        )?;
        let cfg_path = m.state.join("ssh_config");
        std::fs::write(&cfg_path, &out.stdout).map_err(|source| crate::node::NodeError::Io {
            what: format!("cannot write {}", cfg_path.display()),
            source,
        })?;
        let cfg = guests_over_ssh(vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", m.netns),
            "ssh".into(),
            "-F".into(),
            cfg_path.display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]);
        let nodes = SshProvider::new("vagrant", &cfg, &cx.tag, &cx.cancel)?;
        m.up = true;
        let clocks = sync_clocks(&nodes);
        eprintln!("  guests' clocks set from this machine's; left: {clocks}");
        Ok(VagrantProvider {
            nodes,
            _machines: m,
            clocks,
        })
    }
}

impl Provider for VagrantProvider {
    fn kind(&self) -> &'static str {
        "vagrant"
    }
    fn describe(&self) -> String {
        format!(
            "{} (Vagrant with libvirt in network namespace {}, TCG guests; clocks: {})",
            self.nodes.describe(),
            self._machines.netns,
            self.clocks
        )
    }
    fn source(&self) -> &dyn Node {
        self.nodes.source()
    }
    fn destination(&self) -> &dyn Node {
        self.nodes.destination()
    }
    fn shared_dir(&self) -> &str {
        self.nodes.shared_dir()
    }
    fn keep_files(&mut self, keep: bool) {
        self.nodes.keep_files(keep);
        self._machines.keep = keep;
    }
}
