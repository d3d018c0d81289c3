//! The `ssh` provider (any two hosts) and the `vagrant` provider (the two VMs of `vagrant/`,
//! which is ssh configured from the VMs' state directory).
//!
//! Both hosts need, as the user the harness logs in as (root): haul's programs in `bin_dir`
//! (`haul`, `mtouch`, `haul-launch`), CRIU >= 4.1, and a directory both mount at the same
//! path (`shared_dir`, e.g. NFS), where the workloads keep their logs and plain CRIU's
//! non-page images travel. The migration traffic goes between `source.addr` and
//! `destination.addr`; the harness itself only talks ssh.
//!
//! ```toml
//! [provider]
//! kind = "ssh"
//! source = { host = "root@node-a", addr = "10.0.0.1" }
//! destination = { host = "root@node-b", addr = "10.0.0.2" }
//! shared_dir = "/srv/haul-shared"
//! ssh = ["ssh", "-o", "BatchMode=yes", "-i", "/root/.ssh/haul"]   # optional
//! ```
//!
//! `kind = "vagrant"` needs no more than `vagrant/vm.sh up && vagrant/vm.sh provision`: it
//! reads `ssh_config` from the state directory (`state_dir`, else `$HAUL_VM_STATE`, else
//! `/var/tmp/haul-vm`) and uses hosts `src` (192.168.77.1) and `dst` (192.168.77.2) and the
//! NFS mount `/srv/haul-shared`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{removable, run_local, shell_join, shell_quote, Node, Output, Provider, ProviderError};

/// One host of the `ssh` provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SshHost {
    /// What `ssh` connects to: `user@host`, a host name, or a `Host` of an ssh config.
    pub host: String,
    /// The host's address on the link the migration uses (the other host reaches it there).
    pub addr: String,
}

fn default_ssh() -> Vec<String> {
    vec!["ssh".into(), "-o".into(), "BatchMode=yes".into()]
}
fn default_remote_root() -> String {
    "/var/tmp/haul-harness".into()
}
fn default_bin_dir() -> String {
    "/usr/local/bin".into()
}
fn default_criu() -> String {
    "criu".into()
}

/// The `[provider]` table for `kind = "ssh"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The node the workload starts on.
    pub source: SshHost,
    /// The node it moves to.
    pub destination: SshHost,
    /// The directory both hosts mount at this path.
    pub shared_dir: String,
    /// Each host's own directory for images and keys (the run's directory goes inside).
    #[serde(default = "default_remote_root")]
    pub work_root: String,
    /// Where haul's programs are on both hosts.
    #[serde(default = "default_bin_dir")]
    pub bin_dir: String,
    /// CRIU on both hosts (a name on root's PATH, or a path).
    #[serde(default = "default_criu")]
    pub criu: String,
    /// The ssh program and its options; the host and the command are appended.
    #[serde(default = "default_ssh")]
    pub ssh: Vec<String>,
}

impl SshConfig {
    /// Check the configuration without connecting.
    pub fn validate(&self) -> Result<(), String> {
        for (what, v) in [
            ("source.host", &self.source.host),
            ("source.addr", &self.source.addr),
            ("destination.host", &self.destination.host),
            ("destination.addr", &self.destination.addr),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{what} is empty"));
            }
        }
        for (what, v) in [
            ("shared_dir", &self.shared_dir),
            ("work_root", &self.work_root),
            ("bin_dir", &self.bin_dir),
        ] {
            if !v.starts_with('/') {
                return Err(format!("{what} must be an absolute path, not {v:?}"));
            }
        }
        if self.ssh.is_empty() {
            return Err("ssh must name the ssh program".into());
        }
        Ok(())
    }
}

/// The `[provider]` table for `kind = "vagrant"`: the VMs of `vagrant/vm.sh`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VagrantConfig {
    /// The VMs' state directory (default `$HAUL_VM_STATE`, else `/var/tmp/haul-vm`).
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The NFS mount both VMs share (default `/srv/haul-shared`).
    #[serde(default)]
    pub shared_dir: Option<String>,
    /// Where `vagrant/vm.sh provision` put haul's programs (default `/usr/local/bin`).
    #[serde(default)]
    pub bin_dir: Option<String>,
}

/// The VMs' link addresses and shared mount (vagrant/lib.sh).
pub const VAGRANT_SRC_ADDR: &str = "192.168.77.1";
/// See [`VAGRANT_SRC_ADDR`].
pub const VAGRANT_DST_ADDR: &str = "192.168.77.2";
/// See [`VAGRANT_SRC_ADDR`].
pub const VAGRANT_SHARED: &str = "/srv/haul-shared";

impl VagrantConfig {
    /// The state directory in use.
    pub fn state_dir(&self) -> String {
        self.state_dir
            .clone()
            .or_else(|| std::env::var("HAUL_VM_STATE").ok())
            .unwrap_or_else(|| "/var/tmp/haul-vm".into())
    }

    /// The ssh configuration this amounts to; fails when the VMs are not up.
    pub fn to_ssh(&self) -> Result<SshConfig, ProviderError> {
        let state = self.state_dir();
        let cfg = Path::new(&state).join("ssh_config");
        if !cfg.is_file() {
            return Err(ProviderError::Config(format!(
                "no {} : start the VMs first (vagrant/vm.sh up && vagrant/vm.sh provision)",
                cfg.display()
            )));
        }
        Ok(SshConfig {
            source: SshHost {
                host: "src".into(),
                addr: VAGRANT_SRC_ADDR.into(),
            },
            destination: SshHost {
                host: "dst".into(),
                addr: VAGRANT_DST_ADDR.into(),
            },
            shared_dir: self
                .shared_dir
                .clone()
                .unwrap_or_else(|| VAGRANT_SHARED.into()),
            work_root: default_remote_root(),
            bin_dir: self.bin_dir.clone().unwrap_or_else(default_bin_dir),
            criu: default_criu(),
            ssh: vec!["ssh".into(), "-F".into(), cfg.display().to_string()],
        })
    }
}

/// One host reached over ssh.
#[derive(Debug)]
pub struct SshNode {
    role: &'static str,
    host: SshHost,
    ssh: Vec<String>,
    bin_dir: String,
    criu: String,
    work_dir: String,
    run_dir: String,
    spawned: std::sync::Mutex<Vec<i32>>,
}

impl SshNode {
    /// The local command that runs `argv` on the host.
    pub fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new(&self.ssh[0]);
        c.args(&self.ssh[1..])
            .arg(&self.host.host)
            .arg("--")
            .arg(shell_join(argv));
        c
    }
}

impl Node for SshNode {
    fn describe(&self) -> String {
        format!("{} ({}, {})", self.role, self.host.host, self.host.addr)
    }

    fn addr(&self) -> &str {
        &self.host.addr
    }

    fn bin(&self, program: &str) -> String {
        format!("{}/{program}", self.bin_dir)
    }

    fn criu(&self) -> String {
        self.criu.clone()
    }

    fn work_dir(&self) -> &str {
        &self.work_dir
    }

    fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, ProviderError> {
        let out = run_local(self.command(argv), stdin, timeout)?;
        if out.code == Some(255) && String::from_utf8_lossy(&out.stderr).contains("ssh:") {
            return Err(self.failed("ssh", &out));
        }
        Ok(out)
    }

    fn spawn(&self, argv: &[String], log: &str) -> Result<i32, ProviderError> {
        let script = format!(
            "nohup {} >>{} 2>&1 </dev/null & echo $!",
            shell_join(argv),
            shell_quote(log)
        );
        let text = self.sh_ok(&script, Duration::from_secs(60))?;
        let pid: i32 = text.trim().parse().map_err(|_| ProviderError::Command {
            node: self.describe(),
            command: script.clone(),
            why: format!("printed {text:?} instead of a pid"),
        })?;
        if let Ok(mut s) = self.spawned.lock() {
            s.push(pid);
        }
        Ok(pid)
    }

    fn terminate(&self, pid: i32) {
        let script = format!(
            "kill {pid} 2>/dev/null; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -9 {pid} 2>/dev/null; true"
        );
        let _ = self.sh(&script, Duration::from_secs(30));
        if let Ok(mut s) = self.spawned.lock() {
            s.retain(|p| *p != pid);
        }
    }
}

/// Two hosts over ssh, with `<work_root>/<tag>/a` on the source, `<work_root>/<tag>/b` on the
/// destination, and
/// `<shared_dir>/haul-harness/<tag>` on the shared mount.
#[derive(Debug)]
pub struct SshProvider {
    kind: &'static str,
    a: SshNode,
    b: SshNode,
    shared: String,
    keep: bool,
}

impl SshProvider {
    /// Connect to both hosts, check haul's programs are there, make the directories.
    pub fn new(kind: &'static str, c: &SshConfig, tag: &str) -> Result<SshProvider, ProviderError> {
        c.validate().map_err(ProviderError::Config)?;
        let node = |role, host: &SshHost, sub: &str| SshNode {
            role,
            host: host.clone(),
            ssh: c.ssh.clone(),
            bin_dir: c.bin_dir.clone(),
            criu: c.criu.clone(),
            work_dir: format!("{}/{tag}/{sub}", c.work_root),
            run_dir: format!("{}/{tag}", c.work_root),
            spawned: std::sync::Mutex::new(Vec::new()),
        };
        let p = SshProvider {
            kind,
            a: node("source", &c.source, "a"),
            b: node("destination", &c.destination, "b"),
            shared: format!("{}/haul-harness/{tag}", c.shared_dir.trim_end_matches('/')),
            keep: false,
        };
        for d in [&p.a.run_dir, &p.b.run_dir, &p.shared] {
            if !removable(d) {
                return Err(ProviderError::Config(format!(
                    "{d}: directories must be absolute and under one named haul-harness*"
                )));
            }
        }
        for n in [&p.a, &p.b] {
            let script = format!(
                "set -e; for p in haul mtouch haul-launch; do test -x {bin}/$p || {{ echo \"$p missing in {bin}\" >&2; exit 1; }}; done; mkdir -p {dir}",
                bin = shell_quote(&c.bin_dir),
                dir = shell_quote(&n.work_dir)
            );
            n.sh_ok(&script, Duration::from_secs(60))?;
        }
        p.a.sh_ok(
            &format!("mkdir -p {}", shell_quote(&p.shared)),
            Duration::from_secs(60),
        )?;
        // the destination must see what the source writes there
        let probe = format!("{}/.probe", p.shared);
        p.a.write_file(&probe, b"haul-harness")?;
        let seen = p.b.read_file(&probe).unwrap_or_default();
        if seen != b"haul-harness" {
            return Err(ProviderError::Config(format!(
                "{} is not shared: the destination does not see what the source wrote there",
                c.shared_dir
            )));
        }
        Ok(p)
    }
}

impl Provider for SshProvider {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn describe(&self) -> String {
        format!(
            "{}: {} ({}) -> {} ({}) over ssh, shared directory {}",
            self.kind,
            self.a.host.host,
            self.a.host.addr,
            self.b.host.host,
            self.b.host.addr,
            self.shared
        )
    }

    fn source(&self) -> &dyn Node {
        &self.a
    }

    fn destination(&self) -> &dyn Node {
        &self.b
    }

    fn shared_dir(&self) -> &str {
        &self.shared
    }

    fn keep_files(&mut self, keep: bool) {
        self.keep = keep;
    }
}

impl Drop for SshProvider {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let pids: Vec<i32> = n.spawned.lock().map(|s| s.clone()).unwrap_or_default();
            for pid in pids {
                n.terminate(pid);
            }
        }
        if self.keep {
            return;
        }
        for (n, d) in [
            (&self.a, &self.a.run_dir),
            (&self.b, &self.b.run_dir),
            (&self.a, &self.shared),
        ] {
            if removable(d) {
                let _ = n.sh(
                    &format!("rm -rf {}", shell_quote(d)),
                    Duration::from_secs(120),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SshConfig {
        SshConfig {
            source: SshHost {
                host: "root@a".into(),
                addr: "10.0.0.1".into(),
            },
            destination: SshHost {
                host: "root@b".into(),
                addr: "10.0.0.2".into(),
            },
            shared_dir: "/srv/shared".into(),
            work_root: default_remote_root(),
            bin_dir: default_bin_dir(),
            criu: default_criu(),
            ssh: default_ssh(),
        }
    }

    #[test]
    fn ssh_command_line() {
        let c = cfg();
        let n = SshNode {
            role: "source",
            host: c.source.clone(),
            ssh: c.ssh.clone(),
            bin_dir: c.bin_dir.clone(),
            criu: c.criu.clone(),
            work_dir: "/var/tmp/haul-harness/x/a".into(),
            run_dir: "/var/tmp/haul-harness/x".into(),
            spawned: Default::default(),
        };
        let cmd = n.command(&["sh".into(), "-c".into(), "echo 'hi' $X".into()]);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cmd.get_program(), "ssh");
        assert_eq!(
            args,
            [
                "-o",
                "BatchMode=yes",
                "root@a",
                "--",
                r"sh -c 'echo '\''hi'\'' $X'"
            ]
        );
        assert_eq!(n.bin("haul"), "/usr/local/bin/haul");
    }

    #[test]
    fn validation() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.shared_dir = "srv".into();
        assert!(c.validate().unwrap_err().contains("shared_dir"));
        let mut c = cfg();
        c.source.addr = " ".into();
        assert!(c.validate().unwrap_err().contains("source.addr"));
    }

    #[test]
    fn vagrant_reads_the_vm_state() {
        let dir = tempfile::tempdir().unwrap();
        let v = VagrantConfig {
            state_dir: Some(dir.path().display().to_string()),
            ..Default::default()
        };
        assert!(v.to_ssh().unwrap_err().to_string().contains("vm.sh up"));
        std::fs::write(dir.path().join("ssh_config"), "Host src\n").unwrap();
        let s = v.to_ssh().unwrap();
        assert_eq!(s.source.host, "src");
        assert_eq!(s.destination.addr, VAGRANT_DST_ADDR);
        assert_eq!(s.shared_dir, VAGRANT_SHARED);
        assert_eq!(
            s.ssh[1..],
            [
                "-F".to_string(),
                dir.path().join("ssh_config").display().to_string()
            ]
        );
    }

    #[test]
    fn toml_tables() {
        let p: crate::provider::ProviderConfig = toml::from_str(
            "kind = \"ssh\"\nshared_dir = \"/srv/s\"\nsource = { host = \"a\", addr = \"1.2.3.4\" }\ndestination = { host = \"b\", addr = \"1.2.3.5\" }\n",
        )
        .unwrap();
        let crate::provider::ProviderConfig::Ssh(s) = p else {
            panic!("not ssh")
        };
        assert_eq!(s.bin_dir, "/usr/local/bin");
        let v: crate::provider::ProviderConfig =
            toml::from_str("kind = \"vagrant\"\nstate_dir = \"/x\"\n").unwrap();
        assert_eq!(v.kind(), "vagrant");
    }
}
