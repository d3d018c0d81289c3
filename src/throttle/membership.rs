//! Moving a tree into haul's cgroup and back, remembering where every thread came from.
//!
//! In cgroup v1 each hierarchy is separate and each *thread* has its own cgroup in each, so
//! the origin is kept per thread for the one hierarchy haul moves the tree in (the other
//! hierarchies, e.g. this host's `memory`, are never touched). Moving in writes each process
//! to `cgroup.procs`, which takes all its threads atomically with respect to `clone()`; the
//! tree is re-read until a pass finds no new process, so a child forked during the move is
//! caught. Children forked later are born in haul's cgroup (cgroups are inherited) and have
//! no recorded origin: on the way out each process goes where its nearest recorded ancestor
//! came from. Moving out repeats until haul's cgroup is empty, so forks racing the release are
//! caught too. A vanished original cgroup sends its tasks to the nearest existing ancestor
//! (reported).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cgroup::CgroupDir;
use super::error::ThrottleError;
use super::layout::{task_cgroups, CgroupVersion, Hierarchy};
use crate::migrate::tree;

/// Passes over the tree when moving it in (each pass catches the children forked during the
/// previous one).
const ENTER_PASSES: usize = 20;
/// Passes over haul's cgroup when moving out.
const LEAVE_PASSES: usize = 50;

/// Where one thread was before haul moved it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOrigin {
    /// Its process.
    pub pid: i32,
    /// The thread.
    pub tid: i32,
    /// Its cgroup in the hierarchy, as `/proc/PID/task/TID/cgroup` showed it.
    pub cgroup: String,
}

/// The tree's membership in one hierarchy: haul's cgroup there and every thread's origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// haul's cgroup in it.
    pub cgroup: CgroupDir,
    /// The root of the tree.
    pub root_pid: i32,
    /// tid -> where it was.
    pub origins: BTreeMap<i32, TaskOrigin>,
    /// Processes moved in.
    pub moved: BTreeSet<i32>,
}

/// What moving the tree out did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveReport {
    /// Processes moved back to their recorded cgroup.
    pub moved_back: usize,
    /// Processes born in haul's cgroup (forked while throttled), moved to their nearest
    /// recorded ancestor's cgroup.
    pub born_inside: usize,
    /// v1: threads moved back individually (their cgroup differed from their process's).
    pub threads_fixed: usize,
    /// Tasks that exited before they could be moved.
    pub gone: usize,
    /// Tasks whose original cgroup had vanished: `pid: wanted -> used`.
    pub fell_back: Vec<String>,
    /// Tasks still in haul's cgroup afterwards (empty when all went well).
    pub remaining: Vec<i32>,
    /// The first error met, if any.
    pub first_error: Option<String>,
}

impl Membership {
    /// Nothing moved yet.
    pub fn new(hierarchy: Hierarchy, cgroup: CgroupDir, root_pid: i32) -> Membership {
        Membership {
            hierarchy,
            cgroup,
            root_pid,
            origins: BTreeMap::new(),
            moved: BTreeSet::new(),
        }
    }

    /// haul's cgroup as `/proc/PID/cgroup` shows it.
    pub fn cgroup_path(&self) -> String {
        self.hierarchy
            .path_of(&self.cgroup.path)
            .unwrap_or_else(|| self.cgroup.path.display().to_string())
    }

    /// The cgroup `tid` of `pid` is in now, in this hierarchy (`None`: gone).
    pub fn current(&self, pid: i32, tid: i32) -> Option<String> {
        let lines = task_cgroups(pid, tid).ok()?;
        lines
            .0
            .into_iter()
            .find(|l| self.hierarchy.matches(l))
            .map(|l| l.pathname)
    }

    /// Where a process should go back to: its leader's recorded origin, else its nearest
    /// recorded ancestor's (born inside), else the root's, else the hierarchy's root.
    pub fn origin_for(&self, pid: i32) -> (String, bool) {
        if let Some(o) = self.origins.get(&pid) {
            return (o.cgroup.clone(), true);
        }
        let mut p = pid;
        for _ in 0..64 {
            let Some(pp) = ppid(p) else { break };
            if pp <= 1 {
                break;
            }
            if let Some(o) = self.origins.get(&pp) {
                return (o.cgroup.clone(), false);
            }
            p = pp;
        }
        if let Some(o) = self.origins.get(&self.root_pid) {
            return (o.cgroup.clone(), false);
        }
        (
            self.hierarchy
                .path_of(&self.hierarchy.mount)
                .unwrap_or_else(|| "/".into()),
            false,
        )
    }

    /// Moves the tree in. `recorded` runs after each pass's origins are known and before its
    /// processes move (the journal is written there). On error, what was moved stays moved:
    /// the caller's [`Membership::leave`] undoes it.
    pub fn enter(
        &mut self,
        mut recorded: impl FnMut(&Membership) -> Result<(), ThrottleError>,
    ) -> Result<(), ThrottleError> {
        if !tree::alive(self.root_pid) {
            return Err(ThrottleError::NoSuchPid(self.root_pid));
        }
        let mine = self.cgroup_path();
        for _ in 0..ENTER_PASSES {
            let new: Vec<i32> = tree::descendants(self.root_pid)
                .into_iter()
                .filter(|p| !self.moved.contains(p))
                .collect();
            if new.is_empty() {
                return Ok(());
            }
            for &pid in &new {
                for tid in threads_of(pid) {
                    if self.origins.contains_key(&tid) {
                        continue;
                    }
                    let Some(now) = self.current(pid, tid) else {
                        continue;
                    };
                    let cgroup = if now == mine {
                        // forked by a task already moved: it belongs where its parent came from
                        self.origin_for(pid).0
                    } else {
                        now
                    };
                    self.origins.insert(tid, TaskOrigin { pid, tid, cgroup });
                }
            }
            recorded(self)?;
            for &pid in &new {
                match self.cgroup.move_process(pid) {
                    Ok(()) => {
                        self.moved.insert(pid);
                    }
                    Err(e) if e.is_gone() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Moves every task out of haul's cgroup to where it came from (see the module doc).
    /// Never stops at the first error: it moves all it can and reports the rest.
    pub fn leave(&self) -> LeaveReport {
        let mut r = LeaveReport::default();
        let mut seen_back = BTreeSet::new();
        let mut seen_born = BTreeSet::new();
        for pass in 0..LEAVE_PASSES {
            if !self.cgroup.exists() {
                break;
            }
            let procs = match self.cgroup.procs() {
                Ok(p) => p,
                Err(e) => {
                    r.first_error.get_or_insert(e.to_string());
                    break;
                }
            };
            let stray_threads = match self.cgroup.version {
                CgroupVersion::V1 => self.cgroup.threads().unwrap_or_default(),
                CgroupVersion::V2 => Vec::new(),
            };
            if procs.is_empty() && stray_threads.is_empty() {
                break;
            }
            if pass > 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            for pid in procs {
                let (target, recorded) = self.origin_for(pid);
                match self.move_to(&target, pid, false) {
                    Ok(used) => {
                        if used != target {
                            r.fell_back.push(format!("{pid}: {target} -> {used}"));
                        }
                        if recorded {
                            seen_back.insert(pid);
                        } else {
                            seen_born.insert(pid);
                        }
                    }
                    Err(e) if e.is_gone() => r.gone += 1,
                    Err(e) => {
                        r.first_error.get_or_insert(e.to_string());
                        continue;
                    }
                }
                if self.cgroup.version == CgroupVersion::V1 {
                    for tid in threads_of(pid) {
                        let Some(o) = self.origins.get(&tid) else {
                            continue;
                        };
                        if o.cgroup == target {
                            continue;
                        }
                        match self.move_to(&o.cgroup, tid, true) {
                            Ok(_) => r.threads_fixed += 1,
                            Err(e) if e.is_gone() => {}
                            Err(e) => {
                                r.first_error.get_or_insert(e.to_string());
                            }
                        }
                    }
                }
            }
            // v1: a thread left behind (its process already elsewhere)
            for tid in stray_threads {
                let Some(pid) = tgid(tid) else { continue };
                let target = self
                    .origins
                    .get(&tid)
                    .map(|o| o.cgroup.clone())
                    .unwrap_or_else(|| self.origin_for(pid).0);
                if let Err(e) = self.move_to(&target, tid, true) {
                    if !e.is_gone() {
                        r.first_error.get_or_insert(e.to_string());
                    }
                }
            }
        }
        r.moved_back = seen_back.len();
        r.born_inside = seen_born.len();
        if self.cgroup.exists() {
            let mut rem = self.cgroup.procs().unwrap_or_default();
            if self.cgroup.version == CgroupVersion::V1 {
                rem.extend(self.cgroup.threads().unwrap_or_default());
                rem.sort_unstable();
                rem.dedup();
            }
            r.remaining = rem;
        }
        r
    }

    /// Moves `id` (a process, or with `thread` one v1 thread) to the cgroup `path`, or to its
    /// nearest existing ancestor when it vanished or refuses (v2's no-internal-process rule);
    /// returns the path used.
    fn move_to(&self, path: &str, id: i32, thread: bool) -> Result<String, ThrottleError> {
        let mut p = path.to_string();
        let mut first_err: Option<ThrottleError> = None;
        loop {
            let Some(dir) = self.hierarchy.dir_of(&p) else {
                return Err(first_err.unwrap_or_else(|| ThrottleError::Hierarchy {
                    mount: self.hierarchy.mount.clone(),
                    why: format!("cgroup {path} of task {id} lies outside this mount"),
                }));
            };
            let cg = CgroupDir::at(dir, self.cgroup.version);
            let res = if thread {
                cg.move_thread(id)
            } else {
                cg.move_process(id)
            };
            match res {
                Ok(()) => return Ok(p),
                Err(e) if e.is_gone() => return Err(e),
                Err(e) => {
                    let retry = matches!(&e, ThrottleError::Cgroup { source, .. }
                        if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::EBUSY | libc::EOPNOTSUPP)));
                    if !retry {
                        return Err(e);
                    }
                    first_err.get_or_insert(e);
                    match parent_of(&p) {
                        Some(up) => p = up,
                        None => return Err(first_err.expect("set")),
                    }
                }
            }
        }
    }

    /// Tasks of the tree that are not in haul's cgroup (after [`Membership::enter`]: none,
    /// unless one moved itself away).
    pub fn outside(&self) -> Vec<i32> {
        let mine = self.cgroup_path();
        tree::descendants(self.root_pid)
            .into_iter()
            .flat_map(|p| threads_of(p).into_iter().map(move |t| (p, t)))
            .filter(|&(p, t)| self.current(p, t).is_some_and(|c| c != mine))
            .map(|(_, t)| t)
            .collect()
    }

    /// The directory of a recorded origin.
    pub fn origin_dir(&self, tid: i32) -> Option<PathBuf> {
        self.origins
            .get(&tid)
            .and_then(|o| self.hierarchy.dir_of(&o.cgroup))
    }
}

/// The parent of a cgroup path (`None` for `/`).
fn parent_of(path: &str) -> Option<String> {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        return None;
    }
    let i = t.rfind('/')?;
    Some(if i == 0 { "/".into() } else { t[..i].into() })
}

/// The threads of a process (empty when it is gone).
pub fn threads_of(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The parent pid of `pid`.
pub fn ppid(pid: i32) -> Option<i32> {
    procfs::process::Process::new(pid)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.ppid)
}

/// The process (thread group) of a thread.
fn tgid(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_of_cgroup_paths() {
        assert_eq!(parent_of("/a/b").as_deref(), Some("/a"));
        assert_eq!(parent_of("/a").as_deref(), Some("/"));
        assert_eq!(parent_of("/"), None);
        assert_eq!(parent_of(""), None);
    }

    #[test]
    fn this_process_has_threads_and_a_parent() {
        let me = std::process::id() as i32;
        assert!(threads_of(me).contains(&me));
        assert!(ppid(me).is_some());
        assert_eq!(tgid(me), Some(me));
        assert!(threads_of(i32::MAX).is_empty());
    }
}
