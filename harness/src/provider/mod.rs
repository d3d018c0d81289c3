//! Node providers: where the two nodes of a migration come from. One interface for all:
//!
//! | kind | nodes | shared directory | reached by |
//! |---|---|---|---|
//! | `local` | two network namespaces on this machine ([`crate::netns::NodePair`]) | a directory of this machine | `nsenter --net` |
//! | `ssh` | any two hosts the scenario names | a directory both mount (NFS) at the same path | `ssh HOST CMD` |
//! | `vagrant` | the two VMs of `vagrant/` (`vagrant/vm.sh up`, `provision`) | `/srv/haul-shared` (NFS from `dst`) | ssh, configured from the VMs' state directory |
//!
//! A [`Provider`] hands out a source and a destination [`Node`]; the harness runs everything
//! through [`Node::exec`] and [`Node::spawn`], so it never knows which kind it drives. Every
//! provider makes its own directories (named after the results set) and removes them, and
//! whatever it started, when dropped, also after a failure.

pub mod local;
pub mod ssh;

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use local::{LocalConfig, LocalProvider};
pub use ssh::{SshConfig, SshHost, SshProvider, VagrantConfig};

/// Why a node could not be made or reached, or a command could not run on it.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The local nodes could not be made.
    #[error(transparent)]
    Netns(#[from] crate::netns::NodeError),
    /// A program could not be started on this machine.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command on a node failed.
    #[error("on node {node}: `{command}` {why}")]
    Command {
        /// The node.
        node: String,
        /// The command (shortened).
        command: String,
        /// Exit status and the end of its stderr.
        why: String,
    },
    /// The provider is not usable as configured.
    #[error("{0}")]
    Config(String),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
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
    /// The two VMs of `vagrant/`, reached over ssh.
    Vagrant(VagrantConfig),
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig::Local(LocalConfig::default())
    }
}

impl ProviderConfig {
    /// The kind's name (`local`, `ssh`, `vagrant`).
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Local(_) => "local",
            ProviderConfig::Ssh(_) => "ssh",
            ProviderConfig::Vagrant(_) => "vagrant",
        }
    }

    /// The default configuration of a kind (`ssh` has none: it needs hosts).
    pub fn default_of(kind: &str) -> Result<ProviderConfig, String> {
        match kind {
            "local" => Ok(ProviderConfig::Local(LocalConfig::default())),
            "vagrant" => Ok(ProviderConfig::Vagrant(VagrantConfig::default())),
            "ssh" => Err("the ssh provider needs its hosts: give them in the scenario's [provider] table (kind = \"ssh\", source, destination, shared_dir)".into()),
            other => Err(format!("unknown provider {other:?} (local, ssh or vagrant)")),
        }
    }

    /// Check the configuration without touching any node.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ProviderConfig::Local(_) | ProviderConfig::Vagrant(_) => Ok(()),
            ProviderConfig::Ssh(c) => c.validate(),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Its exit status; `None` when killed by a signal or after the timeout.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// Whether it was killed because the timeout passed.
    pub timed_out: bool,
}

impl Output {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last `n` lines of standard error (and of standard output when stderr is empty).
    pub fn tail(&self, n: usize) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            String::from_utf8_lossy(&self.stderr).into_owned()
        } else {
            self.stdout_text()
        };
        let text = strip_ansi(&text);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How it ended, in words.
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.code) {
            (true, _) if crate::runner::INTERRUPTED.load(Ordering::SeqCst) => {
                "was stopped (interrupted)".into()
            }
            (true, _) => "timed out".into(),
            (false, Some(c)) => format!("exited with status {c}"),
            (false, None) => "was killed by a signal".into(),
        }
    }
}

/// `text` without terminal colour codes (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Quote `s` for a POSIX shell (single quotes, `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `argv` as one shell command line.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One node of a pair: runs commands, holds a work directory, knows where haul's binaries are.
pub trait Node: fmt::Debug + Send + Sync {
    /// Its role and host, for messages (`source (haul-h-12-0-a)`).
    fn describe(&self) -> String;
    /// The address the other node reaches it at (where `haul serve` and CRIU's page server
    /// listen on the destination).
    fn addr(&self) -> &str;
    /// The path of one of haul's programs (`haul`, `mtouch`, `haul-launch`) on this node.
    fn bin(&self, program: &str) -> String;
    /// The CRIU binary on this node.
    fn criu(&self) -> String;
    /// A directory of this node's own (images, keys, reports), made by the provider.
    fn work_dir(&self) -> &str;
    /// Run `argv` on the node and wait for it (at most `timeout`, then it is killed), feeding
    /// it `stdin` when given.
    fn exec(
        &self,
        argv: &[String],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, ProviderError>;
    /// Start `argv` on the node in the background, its stdout and stderr going to `log` (a
    /// path on the node); returns its pid there. The provider stops it when dropped, if
    /// [`Node::terminate`] did not.
    fn spawn(&self, argv: &[String], log: &str) -> Result<i32, ProviderError>;
    /// Stop a process [`Node::spawn`] started (SIGTERM, then SIGKILL after 5 s).
    fn terminate(&self, pid: i32);

    /// Run a shell script on the node (`sh -c SCRIPT`).
    fn sh(&self, script: &str, timeout: Duration) -> Result<Output, ProviderError> {
        self.exec(&["sh".into(), "-c".into(), script.into()], None, timeout)
    }

    /// Run a shell script on the node; its stdout, or an error naming the script unless it
    /// exited 0.
    fn sh_ok(&self, script: &str, timeout: Duration) -> Result<String, ProviderError> {
        let out = self.sh(script, timeout)?;
        if out.success() {
            Ok(out.stdout_text())
        } else {
            Err(self.failed(script, &out))
        }
    }

    /// The error for a command that did not succeed.
    fn failed(&self, command: &str, out: &Output) -> ProviderError {
        let mut command = command.replace('\n', "; ");
        if command.len() > 160 {
            let mut cut = 157;
            while !command.is_char_boundary(cut) {
                cut -= 1;
            }
            command.truncate(cut);
            command.push_str("...");
        }
        ProviderError::Command {
            node: self.describe(),
            command,
            why: format!("{}: {}", out.status_text(), out.tail(6)),
        }
    }

    /// The contents of a file on the node.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, ProviderError> {
        let argv = vec!["cat".to_string(), path.to_string()];
        let out = self.exec(&argv, None, Duration::from_secs(120))?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(&shell_join(&argv), &out))
        }
    }

    /// Write a file on the node (mode 0600), replacing it.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<(), ProviderError> {
        let script = format!("umask 077 && cat > {}", shell_quote(path));
        let argv = vec!["sh".to_string(), "-c".to_string(), script.clone()];
        let out = self.exec(&argv, Some(data), Duration::from_secs(60))?;
        if out.success() {
            Ok(())
        } else {
            Err(self.failed(&script, &out))
        }
    }
}

/// A pair of nodes, ready: a source, a destination and a directory both see.
pub trait Provider: fmt::Debug {
    /// `local`, `ssh` or `vagrant`.
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

/// Make the nodes a configuration names; `tag` names their directories (the results set).
pub fn provision(config: &ProviderConfig, tag: &str) -> Result<Box<dyn Provider>, ProviderError> {
    Ok(match config {
        ProviderConfig::Local(c) => Box::new(LocalProvider::new(c, tag)?),
        ProviderConfig::Ssh(c) => Box::new(SshProvider::new("ssh", c, tag)?),
        ProviderConfig::Vagrant(c) => Box::new(SshProvider::new("vagrant", &c.to_ssh()?, tag)?),
    })
}

/// Whether `path` is safe to `rm -rf`: absolute, and inside a directory this harness names.
pub fn removable(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("/../")
        && !path.ends_with("/..")
        && path.split('/').any(|c| c.starts_with("haul-harness"))
}

/// A file for a child's output that has no name (unlinked at once): nothing is left behind
/// whatever happens, and no pipe stays open in the child's own children (which would keep a
/// reader waiting).
fn anonymous_file() -> Result<std::fs::File, ProviderError> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(".haul-harness-out-{}-{seq}", std::process::id()));
    let io = |source| ProviderError::Io {
        what: format!("cannot make {}", path.display()),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let _ = std::fs::remove_file(&path);
    Ok(f)
}

fn read_back(mut f: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut v = Vec::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_end(&mut v);
    v
}

/// Run a command of this machine with a timeout (SIGKILL after it), feeding it `stdin`,
/// collecting its output.
pub(crate) fn run_local(
    mut cmd: std::process::Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, ProviderError> {
    use std::process::Stdio;
    let (out, err) = (anonymous_file()?, anonymous_file()?);
    let dup = |f: &std::fs::File| {
        f.try_clone().map_err(|source| ProviderError::Io {
            what: "cannot duplicate an output file".into(),
            source,
        })
    };
    cmd.stdout(Stdio::from(dup(&out)?))
        .stderr(Stdio::from(dup(&err)?))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd.spawn().map_err(|source| ProviderError::Spawn {
        program: program.clone(),
        source,
    })?;
    let feeder = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                use std::io::Write;
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let start = std::time::Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(source) => return Err(ProviderError::Spawn { program, source }),
        }
        if start.elapsed() >= timeout || crate::runner::INTERRUPTED.load(Ordering::SeqCst) {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        let nap = if start.elapsed() < Duration::from_millis(200) {
            1
        } else {
            10
        };
        std::thread::sleep(Duration::from_millis(nap));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Output {
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout: read_back(out),
        stderr: read_back(err),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("plain-word_1.2/x:y"), "plain-word_1.2/x:y");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(
            shell_join(&["sh".into(), "-c".into(), "echo $HOME; ls".into()]),
            "sh -c 'echo $HOME; ls'"
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("a'b \"c\" $d `e`")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"a'b \"c\" $d `e`");
    }

    #[test]
    fn colours_go() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x"),
            "2026  INFO x"
        );
    }

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
        assert!(ProviderConfig::default_of("ssh").is_err());
        assert!(ProviderConfig::default_of("cloud").is_err());
    }

    #[test]
    fn local_commands_and_timeouts() {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "cat; echo err >&2; exit 3"]);
        let o = run_local(c, Some(b"in"), Duration::from_secs(10)).unwrap();
        assert_eq!(
            (o.code, o.stdout.as_slice(), o.stderr.as_slice()),
            (Some(3), &b"in"[..], &b"err\n"[..])
        );
        // a background child holding stdout does not keep the caller waiting
        let mut c = std::process::Command::new("sh");
        c.args(["-c", "sleep 5 & echo started"]);
        let t = std::time::Instant::now();
        let o = run_local(c, None, Duration::from_secs(10)).unwrap();
        assert!(o.success() && t.elapsed() < Duration::from_secs(4));
        let mut c = std::process::Command::new("sleep");
        c.arg("10");
        let o = run_local(c, None, Duration::from_millis(200)).unwrap();
        assert!(o.timed_out && !o.success());
    }

    #[test]
    fn output_tail() {
        let o = Output {
            code: Some(1),
            stdout: b"out\n".to_vec(),
            stderr: b"a\nb\n\nc\n".to_vec(),
            timed_out: false,
        };
        assert_eq!(o.tail(2), "b\nc");
        assert_eq!(o.status_text(), "exited with status 1");
        let o = Output {
            stderr: vec![],
            ..o
        };
        assert_eq!(o.tail(2), "out");
    }
}
