//! The `ssh` provider: any two hosts, each reached through one multiplexed ssh connection
//! (OpenSSH's ControlMaster: one master per host for the whole run, every command a new
//! channel on it, so a wait or a check costs a round trip, not a handshake). The `qemu` and
//! `vagrant` providers hand their VMs to it.
//!
//! Both hosts need, as the user the harness logs in as (root): haul's programs in `bin_dir`
//! (`haul`, `mtouch`, `haul-launch`, `link-probe`), CRIU >= 4.1, and a directory both mount at
//! the same path (`shared_dir`, e.g. NFS), where the workloads keep their logs and plain
//! CRIU's non-page images travel. The migration traffic goes between `source.addr` and
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

use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{removable, Node, Output, Provider, ProviderError};
use crate::cancel::CancelToken;
use crate::node::{run_local, shell_join, shell_quote, NodeError};

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
    /// One ControlMaster connection per host for the whole run (OpenSSH); `false` runs a
    /// new connection per command (for an `ssh` stand-in that knows no `-o`).
    #[serde(default = "default_true")]
    pub multiplex: bool,
}

fn default_true() -> bool {
    true
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

/// One host reached over ssh.
#[derive(Debug)]
pub struct SshNode {
    role: &'static str,
    host: SshHost,
    ssh: Vec<String>,
    /// The ControlMaster's socket, once the master runs.
    control: Option<String>,
    cancel: CancelToken,
    bin_dir: String,
    criu: String,
    work_dir: String,
    run_dir: String,
    spawned: std::sync::Mutex<Vec<i32>>,
}

impl SshNode {
    /// The local command that runs `argv` on the host (on the master's connection).
    pub fn command(&self, argv: &[String]) -> Command {
        let mut c = Command::new(&self.ssh[0]);
        c.args(&self.ssh[1..]);
        if let Some(path) = &self.control {
            c.args(["-o", "ControlMaster=no", "-o"])
                .arg(format!("ControlPath={path}"));
        }
        c.arg(&self.host.host).arg("--").arg(shell_join(argv));
        c
    }

    /// Start this host's ControlMaster on socket `path`: `ssh -f -N -o ControlMaster=yes`
    /// returns once the connection is authenticated (the event itself, no polling).
    fn start_master(&mut self, path: String) -> Result<(), NodeError> {
        let mut c = Command::new(&self.ssh[0]);
        c.args(&self.ssh[1..])
            .args([
                "-f",
                "-N",
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=yes",
            ])
            .args([
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=12",
                "-o",
            ])
            .arg(format!("ControlPath={path}"))
            .arg(&self.host.host);
        let out = run_local(c, None, Duration::from_secs(120), &self.cancel)?;
        if !out.success() {
            return Err(self.failed(
                "ssh -f -N -o ControlMaster=yes (the master connection)",
                &out,
            ));
        }
        self.control = Some(path);
        Ok(())
    }

    /// Close the master (`ssh -O exit`); every channel on it ends.
    fn stop_master(&mut self) {
        let Some(path) = self.control.take() else {
            return;
        };
        let mut c = Command::new(&self.ssh[0]);
        c.args(&self.ssh[1..])
            .args(["-O", "exit", "-o"])
            .arg(format!("ControlPath={path}"))
            .arg(&self.host.host);
        // not the run's token: the master must go even after a cancellation
        let _ = run_local(c, None, Duration::from_secs(30), &CancelToken::new());
    }
}

impl SshNode {
    /// A script run even after the run was cancelled (clean-up).
    fn sh_uncancelled(&self, script: &str, timeout: Duration) -> Result<Output, NodeError> {
        let argv = ["sh".to_string(), "-c".into(), script.into()];
        run_local(self.command(&argv), None, timeout, &CancelToken::new())
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
    ) -> Result<Output, NodeError> {
        let out = run_local(self.command(argv), stdin, timeout, &self.cancel)?;
        if out.code == Some(255) && String::from_utf8_lossy(&out.stderr).contains("ssh:") {
            return Err(self.failed("ssh", &out));
        }
        Ok(out)
    }

    fn spawn(&self, argv: &[String], log: &str) -> Result<i32, NodeError> {
        let script = format!(
            "nohup {} >>{} 2>&1 </dev/null & echo $!",
            shell_join(argv),
            shell_quote(log)
        );
        let text = self.sh_ok(&script, Duration::from_secs(60))?;
        let pid: i32 = text.trim().parse().map_err(|_| NodeError::Command {
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
        let _ = self.sh_uncancelled(&script, Duration::from_secs(30));
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
    /// Where the ControlMaster sockets are (removed after the masters).
    control_dir: Option<tempfile::TempDir>,
}

impl SshProvider {
    /// Connect to both hosts (one master connection each), check haul's programs are
    /// there, make the directories.
    pub fn new(
        kind: &'static str,
        c: &SshConfig,
        tag: &str,
        cancel: &CancelToken,
    ) -> Result<SshProvider, ProviderError> {
        c.validate().map_err(ProviderError::Config)?;
        let node = |role, host: &SshHost, sub: &str| SshNode {
            role,
            host: host.clone(),
            ssh: c.ssh.clone(),
            control: None,
            cancel: cancel.clone(),
            bin_dir: c.bin_dir.clone(),
            criu: c.criu.clone(),
            work_dir: format!("{}/{tag}/{sub}", c.work_root),
            run_dir: format!("{}/{tag}", c.work_root),
            spawned: std::sync::Mutex::new(Vec::new()),
        };
        let mut p = SshProvider {
            kind,
            a: node("source", &c.source, "a"),
            b: node("destination", &c.destination, "b"),
            shared: format!("{}/haul-harness/{tag}", c.shared_dir.trim_end_matches('/')),
            keep: false,
            control_dir: None,
        };
        if c.multiplex {
            // a private directory for the two sockets (short: a socket path has 108 bytes)
            let dir = tempfile::Builder::new()
                .prefix("haul-ssh-")
                .tempdir_in("/tmp")
                .map_err(|source| NodeError::Io {
                    what: "cannot make a directory for the ssh control sockets".into(),
                    source,
                })?;
            let base = dir.path().display().to_string();
            p.control_dir = Some(dir);
            p.a.start_master(format!("{base}/a"))?;
            p.b.start_master(format!("{base}/b"))?;
        }
        for d in [&p.a.run_dir, &p.b.run_dir, &p.shared] {
            if !removable(d) {
                return Err(ProviderError::Config(format!(
                    "{d}: directories must be absolute and under one named haul-harness*"
                )));
            }
        }
        for n in [&p.a, &p.b] {
            let script = format!(
                "set -e; for p in {progs}; do test -x {bin}/$p || {{ echo \"$p missing in {bin}\" >&2; exit 1; }}; done; mkdir -p {dir}",
                progs = crate::HAUL_PROGRAMS.join(" "),
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
        if !self.keep {
            for (n, d) in [
                (&self.a, &self.a.run_dir),
                (&self.b, &self.b.run_dir),
                (&self.a, &self.shared),
            ] {
                if removable(d) {
                    let _ = n.sh_uncancelled(
                        &format!("rm -rf {}", shell_quote(d)),
                        Duration::from_secs(120),
                    );
                }
            }
        }
        self.a.stop_master();
        self.b.stop_master();
        drop(self.control_dir.take());
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
            multiplex: true,
        }
    }

    #[test]
    fn ssh_command_line() {
        let c = cfg();
        let n = SshNode {
            role: "source",
            host: c.source.clone(),
            ssh: c.ssh.clone(),
            control: Some("/tmp/haul-ssh-x/a".into()),
            cancel: CancelToken::new(),
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
                "-o",
                "ControlMaster=no",
                "-o",
                "ControlPath=/tmp/haul-ssh-x/a",
                "root@a",
                "--",
                &shell_join(&["sh".into(), "-c".into(), "echo 'hi' $X".into()]),
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
    fn toml_tables() {
        let p: crate::provider::ProviderConfig = toml::from_str(
            "kind = \"ssh\"\nshared_dir = \"/srv/s\"\nsource = { host = \"a\", addr = \"1.2.3.4\" }\ndestination = { host = \"b\", addr = \"1.2.3.5\" }\n",
        )
        .unwrap();
        let crate::provider::ProviderConfig::Ssh(s) = p else {
            panic!("not ssh")
        };
        assert_eq!(s.bin_dir, "/usr/local/bin");
        assert!(s.multiplex);
        let v: crate::provider::ProviderConfig = toml::from_str("kind = \"vagrant\"\n").unwrap();
        assert_eq!(v.kind(), "vagrant");
    }
}
