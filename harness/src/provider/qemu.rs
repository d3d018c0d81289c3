//! The `qemu` provider: the two VMs of `vagrant/` under plain QEMU (TCG), through
//! `vagrant/vm.sh`. The harness owns their life: `vm.sh up` and `vm.sh provision` (haul's
//! binaries from this machine, its CRIU >= 4.1, a key) when the run starts, `vm.sh down`
//! when the provider is dropped, whatever ended the run. The VMs' state (pids, monitors,
//! ssh config, consoles) lives in the run's directory, so two runs never share VMs.
//!
//! ```toml
//! [provider]
//! kind = "qemu"
//! memory_mib = 1024     # per guest (default 768; a workload needs 2 x its size + ~300 MiB)
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ssh::{SshConfig, SshHost, SshProvider};
use super::{step, Node, Provider, ProviderError, ProvisionContext};
use crate::cancel::CancelToken;

/// The guests' link addresses and shared mount (vagrant/lib.sh, guest/haul-node-setup).
pub const VM_SRC_ADDR: &str = "192.168.77.1";
/// See [`VM_SRC_ADDR`].
pub const VM_DST_ADDR: &str = "192.168.77.2";
/// See [`VM_SRC_ADDR`].
pub const VM_SHARED: &str = "/srv/haul-shared";
/// Where the guests' provisioning puts haul's programs.
pub const VM_BIN_DIR: &str = "/usr/local/bin";

/// The `[provider]` table for `kind = "qemu"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// Memory per guest in MiB (default: vm.sh's 768).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// The `vagrant/` directory (default: the source tree's).
    #[serde(default)]
    pub vagrant_dir: Option<String>,
}

/// The ssh view of the two guests, from an ssh config naming hosts `src` and `dst`.
pub fn guests_over_ssh(ssh: Vec<String>) -> SshConfig {
    SshConfig {
        source: SshHost {
            host: "src".into(),
            addr: VM_SRC_ADDR.into(),
        },
        destination: SshHost {
            host: "dst".into(),
            addr: VM_DST_ADDR.into(),
        },
        shared_dir: VM_SHARED.into(),
        work_root: "/var/tmp/haul-harness".into(),
        bin_dir: VM_BIN_DIR.into(),
        criu: "criu".into(),
        ssh,
        multiplex: true,
    }
}

/// Set both guests' clocks from this machine's (they boot from the RTC, whole seconds apart,
/// and TCG guests drift; the workload's log is written on src, then on dst, so a pause
/// across the migration is only right when both clocks agree), then measure what is left:
/// each guest's clock minus this machine's at the middle of one round trip, in ms.
pub fn sync_clocks(nodes: &SshProvider) -> String {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let t = Duration::from_secs(30);
    let mut out = Vec::new();
    for n in [nodes.source(), nodes.destination()] {
        // the command's own round trip (tens of ms on a multiplexed connection) is the error
        let _ = n.exec(
            &["date".into(), "-s".into(), format!("@{:.3}", now())],
            None,
            t,
        );
        let before = now();
        let theirs = n
            .exec(&["date".into(), "+%s.%N".into()], None, t)
            .ok()
            .and_then(|o| o.stdout_text().trim().parse::<f64>().ok());
        let mid = (before + now()) / 2.0;
        out.push(match theirs {
            Some(x) => format!("{} {:+.0} ms", n.describe(), (x - mid) * 1000.0),
            None => format!("{} unknown", n.describe()),
        });
    }
    out.join(", ")
}

/// The run's directory on this machine for a VM provider's state.
pub fn state_dir(tag: &str, what: &str) -> Result<PathBuf, ProviderError> {
    let d = PathBuf::from(super::local::LOCAL_WORK_ROOT)
        .join(tag)
        .join(what);
    std::fs::create_dir_all(&d).map_err(|source| crate::node::NodeError::Io {
        what: format!("cannot make {}", d.display()),
        source,
    })?;
    Ok(d)
}

/// `vm.sh down` when dropped.
#[derive(Debug)]
struct Guests {
    vm_sh: PathBuf,
    state: PathBuf,
    log: PathBuf,
    /// Everything came up: the run's directory goes after the tear-down (else it stays,
    /// with the log the error names).
    up: bool,
    /// Keep the run's directory (`--keep`).
    keep: bool,
}

/// Remove a VM provider's directory on this machine (`dir`, and its parent, the run's, once
/// empty) after a tear-down, unless the VMs never came up (its log is then what is left to
/// read) or the run keeps its files.
pub fn remove_state(dir: &std::path::Path, up: bool, keep: bool) {
    if !up || keep || !super::removable(&dir.display().to_string()) {
        return;
    }
    let _ = std::fs::remove_dir_all(dir);
    if let Some(run) = dir.parent() {
        let _ = std::fs::remove_dir(run);
    }
}

impl Guests {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.vm_sh)
            .args(args)
            .env("HAUL_VM_STATE", &self.state);
        c
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        // a fresh token: the guests go down even after the run was cancelled
        let cmd = self.command(&["down"]);
        match step::run(
            "vm.sh down",
            cmd,
            Duration::from_secs(180),
            &self.log,
            &CancelToken::new(),
        ) {
            Ok(_) => remove_state(
                self.state.parent().unwrap_or(&self.state),
                self.up,
                self.keep,
            ),
            Err(e) => eprintln!("haul-harness: {e}"),
        }
    }
}

/// Two guests under plain QEMU, reached over ssh.
#[derive(Debug)]
pub struct QemuProvider {
    // dropped first: the harness's processes and directories in the guests go before them
    nodes: SshProvider,
    _guests: Guests,
    /// The guests' clock offsets after they were set.
    clocks: String,
}

impl QemuProvider {
    /// Boot both guests (`vm.sh up`), provision them (`vm.sh provision`), connect.
    pub fn up(c: &QemuConfig, cx: &ProvisionContext) -> Result<QemuProvider, ProviderError> {
        let vagrant = step::vagrant_dir(c.vagrant_dir.as_deref())?;
        let state = state_dir(&cx.tag, "qemu")?;
        let vm_state = state.join("vm");
        let log = state.join("vm.log");
        let mut guests = Guests {
            vm_sh: vagrant.join("vm.sh"),
            state: vm_state.clone(),
            log: log.clone(),
            up: false,
            keep: false,
        };
        let mut up = guests.command(&["up"]);
        if let Some(m) = c.memory_mib {
            up.env("HAUL_VM_MEM", m.to_string());
        }
        step::run("vm.sh up", up, Duration::from_secs(1500), &log, &cx.cancel)?;
        let mut prov = guests.command(&["provision"]);
        if let Some(b) = &cx.host_bin_dir {
            prov.env("HAUL_BIN_DIR", b);
        }
        prov.env("HAUL_KEY_FILE", state.join("haul.key"));
        step::run(
            "vm.sh provision",
            prov,
            Duration::from_secs(600),
            &log,
            &cx.cancel,
        )?;
        let cfg = guests_over_ssh(vec![
            "ssh".into(),
            "-F".into(),
            vm_state.join("ssh_config").display().to_string(),
        ]);
        let nodes = SshProvider::new("qemu", &cfg, &cx.tag, &cx.cancel)?;
        guests.up = true;
        let clocks = sync_clocks(&nodes);
        eprintln!("  guests' clocks set from this machine's; left: {clocks}");
        Ok(QemuProvider {
            nodes,
            _guests: guests,
            clocks,
        })
    }
}

impl Provider for QemuProvider {
    fn kind(&self) -> &'static str {
        "qemu"
    }
    fn describe(&self) -> String {
        format!(
            "{} (plain QEMU, TCG guests; clocks: {})",
            self.nodes.describe(),
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
        self._guests.keep = keep;
    }
}
