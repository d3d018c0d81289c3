//! Pre-flight: everything haul can learn before it freezes anything, on both nodes.
//!
//! ```text
//! source (haul pid, before the first freeze)          destination (haul serve, on Begin)
//!  inspect::inspect_tree(pid) -> TreeInspection
//!  assess(&inspection, &asked) -> Assessment
//!    findings (refuse / option turned on / warning)
//!    options CRIU needs (TreeOptions + ghost limit)
//!  DestinationRequirements::from_inspection ──Begin──▶ destination::observe_node(&req, img_path)
//!                                                       destination::check(&req, &node) -> findings
//!                                            ◀─Ready── (a refusal: Error with the findings)
//!  cost::choose_strategy(&CostInputs) -> Choice
//! ```
//!
//! Every function here but the two that read `/proc` ([`inspect::inspect_tree`],
//! [`destination::observe_node`]) is pure over plain serde data, so that the state machines
//! call them in one line and the JSON report carries their results as they are.

pub mod cost;
pub mod destination;
pub mod inspect;
pub mod node;
pub mod report;
pub mod unix_diag;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::criu::options::TreeOptions;
use crate::obstacle::{ObstacleKind, Remedy, Resource};

pub use cost::{choose_strategy, Choice, CostInputs, CostModel, EngineUse, Estimate};
pub use destination::DestinationRequirements;
pub use inspect::{inspect_tree, TreeInspection};
pub use report::{PreflightReport, SourcePreflight};

/// CRIU's default ghost limit (`--ghost-limit`, bytes): deleted files up to this size travel
/// in the images (criu/include/cr_options.h, `DEFAULT_GHOST_LIMIT`).
pub const CRIU_DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// The largest ghost limit pre-flight turns on by itself (bytes): a deleted file's content is
/// copied into the images while the process is frozen, so a bigger one is for the user to
/// allow (`--ghost-limit`). 256 MiB moves in well under a second on the links measured here.
pub const MAX_AUTO_GHOST_LIMIT: u64 = 256 << 20;

/// A mapping this many times larger than the process's resident memory, and larger than
/// [`SPARSE_MIN_MAPPED`], is reported as sparse (it decides between post-copy and stop-copy).
pub const SPARSE_RATIO: u64 = 16;
/// See [`SPARSE_RATIO`] (bytes).
pub const SPARSE_MIN_MAPPED: u64 = 1 << 30;

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Nothing to do; recorded for the report.
    Info,
    /// The migration goes on, but may fail or behave differently; says why.
    Warning,
    /// A safe CRIU option the tree needs was turned on (named in the finding).
    OptionOn,
    /// The migration would fail: refused before anything is frozen.
    Refuse,
}

/// One thing pre-flight found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What kind of obstacle.
    pub kind: ObstacleKind,
    /// How much it weighs.
    pub severity: Severity,
    /// What it is about.
    pub resource: Resource,
    /// The finding in a sentence.
    pub detail: String,
    /// What makes it work.
    pub remedy: Remedy,
    /// Which node found it (`source` or `destination`).
    pub node: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::OptionOn => "option turned on",
            Severity::Refuse => "refused",
        };
        write!(
            f,
            "{sev} ({}): {}: {}",
            self.node, self.resource, self.detail
        )?;
        if self.severity >= Severity::Warning && self.remedy != Remedy::Unknown {
            write!(f, "; remedy: {}", self.remedy)?;
        }
        Ok(())
    }
}

/// Findings that refuse a migration, as an error: every finding of the node that made them
/// (so that the report has them all), displayed as the refusing ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Every finding (the refusing ones first).
    pub findings: Vec<Finding>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let refusals: Vec<String> = self
            .findings
            .iter()
            .filter(|x| x.severity == Severity::Refuse)
            .map(|x| x.to_string())
            .collect();
        f.write_str(&refusals.join("; "))
    }
}

impl std::error::Error for Refusal {}

/// What the user asked for on the command line (the options that change what the process
/// experiences are only ever turned on here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    /// `--tcp-established`, `--shell-job`, `--file-locks`, `--ext-unix-sk`, `--link-remap`.
    pub tree: TreeOptions,
    /// `--ghost-limit` (bytes), when given.
    pub ghost_limit: Option<u64>,
}

/// Pre-flight's verdict on the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// Everything found, refusals first.
    pub findings: Vec<Finding>,
    /// The options CRIU needs on dump and restore: the asked ones plus the safe ones turned on.
    pub options: TreeOptions,
    /// CRIU's `ghost_limit` (bytes) when it must differ from CRIU's default.
    pub ghost_limit: Option<u64>,
}

impl Assessment {
    /// The findings that refuse the migration.
    pub fn refusals(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Refuse)
    }

    /// Whether the migration is refused.
    pub fn refused(&self) -> bool {
        self.refusals().next().is_some()
    }

    /// Writes the options into a dump's (or pre-dump's) `criu_opts`: the tree's options and
    /// the ghost limit (CRIU's field is 32 bits; `assess` refuses a larger one).
    pub fn apply(&self, opts: &mut crate::criu::pb::CriuOpts) {
        self.options.apply(opts);
        if let Some(limit) = self.ghost_limit {
            opts.ghost_limit = Some(u32::try_from(limit).unwrap_or(u32::MAX));
        }
    }

    /// Adds the destination's findings (they come back in its refusal or in Ready).
    pub fn extend(&mut self, more: impl IntoIterator<Item = Finding>) {
        self.findings.extend(more);
        self.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    }
}

fn finding(kind: ObstacleKind, severity: Severity, resource: Resource, detail: String) -> Finding {
    Finding {
        kind,
        severity,
        resource,
        detail,
        remedy: kind.remedy(),
        node: "source".into(),
    }
}

fn fd_resource(pid: i32, fd: Option<i32>, path: impl Into<String>) -> Resource {
    Resource::Fd {
        pid: Some(pid),
        fd,
        path: path.into(),
    }
}

/// Judges an inspection: what refuses the migration, which safe options to turn on, what to
/// warn about. Pure: the same inspection and request always give the same assessment.
pub fn assess(t: &TreeInspection, asked: &Asked) -> Assessment {
    use ObstacleKind as K;
    use Severity as S;
    let mut a = Assessment {
        options: asked.tree.clone(),
        ..Default::default()
    };

    // Deleted files: a ghost limit that fits them is safe (their content travels in the images).
    // A deleted file still linked elsewhere, or NFS's silly rename of one (`.nfsXXXX`): CRIU
    // links it back (--link-remap) instead of copying it; safe, nothing else changes.
    let relinked = |d: &inspect::DeletedFile| {
        d.links > 0
            || std::path::Path::new(&d.path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".nfs"))
    };
    for d in t.deleted.iter().filter(|d| relinked(d)) {
        let res = fd_resource(d.pid, d.fd, format!("{} (deleted)", d.path));
        let detail = format!(
            "deleted file with {} other link(s){}: --link-remap turned on",
            d.links,
            if d.links == 0 {
                " (an NFS silly rename)"
            } else {
                ""
            }
        );
        a.options.link_remap = true;
        a.findings
            .push(finding(K::LinkRemap, S::OptionOn, res, detail));
    }
    let mut push = |f: Finding| a.findings.push(f);
    let ghosts: Vec<&inspect::DeletedFile> = t.deleted.iter().filter(|d| !relinked(d)).collect();
    let biggest = ghosts.iter().map(|d| d.allocated).max().unwrap_or(0);
    let mut ghost_limit = None;
    for d in ghosts {
        let limit = asked.ghost_limit.unwrap_or(CRIU_DEFAULT_GHOST_LIMIT);
        let res = fd_resource(d.pid, d.fd, format!("{} (deleted)", d.path));
        if d.allocated <= limit {
            push(finding(
                K::GhostFileTooBig,
                S::Info,
                res,
                format!(
                    "deleted file of {} bytes travels in the images (ghost limit {limit})",
                    d.allocated
                ),
            ));
        } else if asked.ghost_limit.is_some() {
            push(finding(
                K::GhostFileTooBig,
                S::Refuse,
                res,
                format!(
                    "deleted file of {} bytes allocated is over the --ghost-limit of {limit} bytes",
                    d.allocated
                ),
            ));
        } else if d.allocated <= MAX_AUTO_GHOST_LIMIT {
            let fits = biggest.next_multiple_of(1 << 20);
            ghost_limit = Some(fits);
            push(finding(K::GhostFileTooBig, S::OptionOn, res, format!(
                "deleted file of {} bytes allocated is over CRIU's default ghost limit (1 MiB): ghost limit set to {} MiB",
                d.allocated, fits >> 20)));
        } else {
            push(finding(K::GhostFileTooBig, S::Refuse, res, format!(
                "deleted file of {} MiB would be copied into the images while frozen; more than haul allows by itself ({} MiB): pass --ghost-limit to allow it",
                d.allocated >> 20, MAX_AUTO_GHOST_LIMIT >> 20)));
        }
    }
    a.ghost_limit = asked.ghost_limit.or(ghost_limit);
    if let Some(limit) = asked.ghost_limit.filter(|l| *l > u64::from(u32::MAX)) {
        push(finding(
            K::GhostFileTooBig,
            S::Refuse,
            Resource::Other {
                text: format!("--ghost-limit {limit}"),
            },
            format!(
                "CRIU's ghost limit is a 32-bit byte count: at most {} bytes",
                u32::MAX
            ),
        ));
    }

    // A connected stream socket with no peer inode has a peer that has not accepted it yet:
    // outside the tree as far as CRIU can tell.
    for u in t
        .unix
        .iter()
        .filter(|u| (u.peer_ino.is_some() || u.connected) && !u.peer_in_tree)
    {
        let res = Resource::Socket {
            ino: Some(u.ino),
            local: u.name.clone(),
            peer_ino: u.peer_ino,
            peer: u.peer_name.clone(),
        };
        let peer = u
            .peer_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let at = format!("fd {} of pid {}", u.fd, u.pid);
        let dgram = u.sock_type == libc::SOCK_DGRAM as u8;
        let (kind, severity, detail) = match (dgram, u.peer_name.is_some(), asked.tree.ext_unix_sk) {
            (false, _, _) => (
                K::ExternalUnixStream,
                S::Refuse,
                format!("{at} is one end of a unix stream connection whose other end{peer} is outside the tree"),
            ),
            (true, false, _) => (
                K::ExternalUnixStream,
                S::Refuse,
                format!("{at} is a datagram socket connected to a nameless socket outside the tree: CRIU cannot reconnect it"),
            ),
            (true, true, true) => (
                K::ExternalUnixSocket,
                S::Warning,
                format!("{at} is connected to{peer} outside the tree; CRIU reconnects it by name (--ext-unix-sk): the name must exist on the destination"),
            ),
            (true, true, false) => (
                K::ExternalUnixSocket,
                S::Refuse,
                format!("{at} is a datagram socket connected to{peer} outside the tree"),
            ),
        };
        push(finding(kind, severity, res, detail));
    }

    for s in &t.inet {
        let port = Resource::Port {
            proto: s.proto.clone(),
            addr: s.local.ip().to_string(),
            port: s.local.port(),
        };
        match s.state.as_str() {
            "established" => {
                let res = Resource::Socket {
                    ino: Some(s.ino),
                    local: Some(s.local.to_string()),
                    peer_ino: None,
                    peer: Some(s.remote.to_string()),
                };
                if asked.tree.tcp_established {
                    push(finding(
                        K::EstablishedTcp,
                        S::Info,
                        res,
                        format!(
                            "fd {} of pid {}: TCP connection moved with TCP repair",
                            s.fd, s.pid
                        ),
                    ));
                } else {
                    push(finding(
                        K::EstablishedTcp,
                        S::Refuse,
                        res,
                        format!(
                            "fd {} of pid {} is an established TCP connection {} -> {}",
                            s.fd, s.pid, s.local, s.remote
                        ),
                    ));
                }
            }
            "listen" | "bound" => push(finding(
                K::PortTaken,
                S::Info,
                port,
                format!(
                    "fd {} of pid {} {} {}: the destination checks the port is free",
                    s.fd,
                    s.pid,
                    if s.state == "listen" {
                        "listens on"
                    } else {
                        "is bound to"
                    },
                    s.local
                ),
            )),
            _ => {}
        }
    }

    if !t.locks.is_empty() {
        let l = &t.locks[0];
        let res = Resource::File {
            path: l
                .path
                .clone()
                .unwrap_or_else(|| format!("inode {}", l.inode)),
            size: None,
            expected_size: None,
            mode: None,
            expected_mode: None,
        };
        let what = format!(
            "{} file lock(s) held (first: {} by pid {})",
            t.locks.len(),
            l.class,
            l.pid
        );
        if asked.tree.file_locks {
            push(finding(
                K::FileLocks,
                S::Info,
                res,
                format!("{what}: moved (--file-locks)"),
            ));
        } else {
            a.options.file_locks = true;
            push(finding(
                K::FileLocks,
                S::OptionOn,
                res,
                format!("{what}: --file-locks turned on"),
            ));
        }
    }

    for u in &t.io_uring {
        push(finding(
            K::IoUring,
            S::Refuse,
            fd_resource(u.pid, Some(u.fd), u.target.clone()),
            format!("fd {} of pid {} is an io_uring instance", u.fd, u.pid),
        ));
    }

    for i in &t.ipc {
        push(finding(
            K::SysvIpcHostNamespace,
            S::Refuse,
            Resource::Ipc {
                class: i.class.clone(),
                id: i.id,
            },
            format!(
                "SysV {} {} of the node's IPC namespace, {}: it would not exist on the destination",
                i.class, i.id, i.why
            ),
        ));
    }

    for p in &t.ptys {
        push(finding(K::Pty, S::Warning, fd_resource(p.pid, Some(p.fd), p.target.clone()), format!(
            "fd {} of pid {} is a pty ({}): CRIU restores it under the same index, which must be free on the destination (two nodes on one kernel always collide)",
            p.fd, p.pid, p.target)));
    }

    for sid in &t.sessions_outside {
        let res = Resource::Pid { pid: *sid };
        if asked.tree.shell_job {
            push(finding(
                K::SessionOutside,
                S::Info,
                res,
                format!("session {sid} leads from outside the tree (--shell-job)"),
            ));
        } else {
            push(finding(
                K::SessionOutside,
                S::Refuse,
                res,
                format!("the tree's session leader (pid {sid}) is outside the tree"),
            ));
        }
    }

    if !t.own_pid_namespace {
        let tids = t.all_tids();
        push(finding(K::PidTaken, S::Warning, Resource::Pid { pid: t.root }, format!(
            "the tree has no pid namespace of its own: its {} pid(s)/tid(s) must all be free on the destination (checked there)",
            tids.len())));
    }

    for m in &t.memory {
        if m.largest_mapping >= SPARSE_MIN_MAPPED
            && m.largest_mapping > SPARSE_RATIO * m.resident.max(1)
        {
            push(finding(K::SparseMapping, S::Info, Resource::Mapping { pid: m.pid, mapped: m.mapped, resident: m.resident },
                format!("pid {} maps {} MiB with {} MiB resident: post-copy's set-up grows with the mapped size (see the strategy estimates)",
                    m.pid, m.mapped >> 20, m.resident >> 20)));
        }
    }

    a.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    a
}

#[cfg(test)]
mod tests;
