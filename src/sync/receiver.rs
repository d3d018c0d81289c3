//! The destination side: applies a source's rounds into a staging directory inside each
//! synced root, puts the copy in place when the migration restores ([`SyncReceiver::install`]),
//! and keeps or undoes it when the migration commits or fails.
//!
//! ```text
//!   R/                              the synced root (created when missing: then removed on failure)
//!   R/.haul-sync.<session>/tree/    the copy being built, round after round
//!   R/.haul-sync.<session>/tmp/     new files, written here and renamed into tree/ when complete
//!   R/.haul-sync-old.<session>/     at install: what R held before (restored on rollback,
//!                                   removed on commit)
//! ```
//!
//! States (consuming methods, so a state's operations cannot be called out of order):
//!
//! ```text
//!   SyncReceiver::open ──▶ SyncReceiver ──handle(round messages)*──▶ (final round done)
//!                              │ rollback()/drop                        │ install()
//!                              ▼                                        ▼
//!                    staging removed, R as before             InstalledSync ──commit()──▶ backup removed
//!                                                                 │ rollback()/drop
//!                                                                 ▼
//!                                                       R's old entries back, copy removed
//! ```
//!
//! Every write goes through [`super::confine`]: paths are validated ([`RelPath`]) and resolved
//! beneath the staging tree with no symlink on the way; the last component is never followed.
//! Sizes are bounded: each message ([`super::limits`]), each file (`max_file_size`), each delta
//! (`MAX_DELTA`), and each round's writes against the free space of the root's file system
//! less a reserve.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use rustix::fs::{
    self as rfs, AtFlags, FallocateFlags, FileType, Gid, Mode, OFlags, RenameFlags, Timestamps, Uid,
};
use rustix::io::Errno;

use super::confine::{self, file_type};
use super::error::SyncError;
use super::limits::{
    CHUNK, MAX_DELTA, MAX_EXTENTS, MAX_FILE_SIZE, MAX_LINK_TARGET, MAX_ROOTS, RESERVE_BYTES,
    RESERVE_PERCENT, SEGMENT_LEN,
};
use super::manifest::{Meta, SymlinkPolicy};
use super::path::{link_stays_inside, RelPath, RootPath};
use super::pb::{self, sync_message::Body};

/// What the destination accepts.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Resolve every root below this local directory instead of `/` (the stand-in for a
    /// node's own disk when both "nodes" are on one machine, and for tests). `None` in
    /// production.
    pub dest_prefix: Option<PathBuf>,
    /// When not empty, every root must lie within one of these (`haul serve` option).
    pub allowed: Vec<PathBuf>,
    /// Roots may neither lie within nor contain any of these (the image directory, ...).
    pub protected: Vec<PathBuf>,
    /// Symlinks that point out of their tree.
    pub symlinks: SymlinkPolicy,
    /// On failure keep the staging directory (the partial copy) for inspection.
    pub keep_partial: bool,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Free space kept back on each file system, in bytes (plus `reserve_percent`).
    pub reserve_bytes: u64,
    /// Free space kept back, as a percentage of the file system's size.
    pub reserve_percent: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            dest_prefix: None,
            allowed: Vec::new(),
            protected: Vec::new(),
            symlinks: SymlinkPolicy::default(),
            keep_partial: false,
            max_file_size: MAX_FILE_SIZE,
            reserve_bytes: RESERVE_BYTES,
            reserve_percent: RESERVE_PERCENT,
        }
    }
}

/// Name of the staging directory inside a root.
pub fn staging_name(session: &str) -> String {
    format!(".haul-sync.{session}")
}

/// Name of the directory that holds a root's previous entries between install and commit.
pub fn backup_name(session: &str) -> String {
    format!(".haul-sync-old.{session}")
}

struct RecvRoot {
    path: RootPath,
    /// The root's parent directory (to remove a root this session created).
    parent: OwnedFd,
    name: Vec<u8>,
    dir: OwnedFd,
    dev: u64,
    created: bool,
    /// The root's own metadata before this session touched it (when it existed): restored by
    /// a rollback, times included.
    orig: Option<Meta>,
    staging: Vec<u8>,
    tree: OwnedFd,
    tmp: OwnedFd,
    root_meta: Option<Meta>,
    dir_meta: HashMap<RelPath, Meta>,
}

impl RecvRoot {
    fn show(&self, p: &RelPath) -> String {
        self.path.display_entry(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegState {
    Idle,
    Literal(u32),
    Delta(u32),
}

struct FileCtx {
    root: usize,
    path: RelPath,
    fd: OwnedFd,
    /// The temporary name in the root's tmp directory, when the file is new or a copy.
    tmp: Option<Vec<u8>>,
    basis: pb::Basis,
    meta: Meta,
    size: u64,
    extents: Vec<(u64, u64)>,
    old_len: u64,
    seg: SegState,
    delta: Vec<u8>,
    next_seg: u32,
    touched: Vec<u32>,
}

struct RoundCtx {
    round: u32,
    final_round: bool,
    started: Instant,
    messages: u64,
    entries: u64,
    removed: u64,
    written: u64,
    /// per root: bytes written this round, and the most allowed
    budget: Vec<(u64, u64)>,
    file: Option<FileCtx>,
    /// (root, dir) whose metadata must be (re)applied at the end of the round
    dirs: BTreeSet<(usize, RelPath)>,
}

enum State {
    Idle { last_round: u32, final_done: bool },
    Round(Box<RoundCtx>),
    Broken(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Idle {
                final_done: false, ..
            } => "between rounds",
            State::Idle {
                final_done: true, ..
            } => "after the final round",
            State::Round(r) if r.file.is_some() => "receiving a file",
            State::Round(_) => "in a round",
            State::Broken(_) => "after an error",
        }
    }
}

/// The destination's side of one sync session (see the module doc). Dropping it without
/// [`SyncReceiver::install`] rolls back.
pub struct SyncReceiver {
    cfg: ReceiverConfig,
    session: String,
    roots: Vec<RecvRoot>,
    state: State,
    tmp_seq: u64,
    done: bool,
}

impl std::fmt::Debug for SyncReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncReceiver")
            .field("session", &self.session)
            .field(
                "roots",
                &self.roots.iter().map(|r| &r.path).collect::<Vec<_>>(),
            )
            .field("state", &self.state.name())
            .finish()
    }
}

/// Install failed; everything was rolled back.
#[derive(Debug)]
pub struct InstallError {
    /// What failed.
    pub error: SyncError,
    /// What the rollback did.
    pub report: RollbackReport,
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "install failed: {} (rolled back: {:?})",
            self.error, self.report
        )
    }
}

impl std::error::Error for InstallError {}

/// What a rollback did, per root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackReport {
    /// Roots restored to what they held before (or removed, when this session created them).
    pub restored: Vec<PathBuf>,
    /// Staging directories kept on request (`keep_partial`).
    pub kept: Vec<PathBuf>,
    /// What could not be undone, with the path to clean up by hand.
    pub problems: Vec<String>,
}

fn io_err(op: &'static str, path: impl Into<String>) -> impl FnOnce(Errno) -> SyncError {
    let path = path.into();
    move |e| SyncError::io(op, path, e.into())
}

impl SyncReceiver {
    /// Checks and stages the roots of `open`; returns the receiver and the answer for the
    /// source. Refuses (creating nothing) a root that is `/`, not normalised, overlapping
    /// another, outside `allowed`, overlapping `protected`, a symlink or below one, whose
    /// parent is missing, that exists as something other than a directory, or that already
    /// has a staging directory of this session; and a claim larger than the free space.
    pub fn open(
        cfg: ReceiverConfig,
        open: &pb::SyncOpen,
    ) -> Result<(SyncReceiver, pb::SyncOpened), SyncError> {
        crate::wire::names::validate(&open.session).map_err(|e| SyncError::Root {
            root: PathBuf::from(&open.session),
            reason: format!("session id: {e}"),
        })?;
        if open.roots.len() > MAX_ROOTS {
            return Err(SyncError::limit(
                "number of synced roots",
                open.roots.len() as u64,
                MAX_ROOTS as u64,
            ));
        }
        let mut rx = SyncReceiver {
            cfg,
            session: open.session.clone(),
            roots: Vec::new(),
            state: State::Idle {
                last_round: 0,
                final_done: false,
            },
            tmp_seq: 0,
            done: false,
        };
        let mut paths: Vec<RootPath> = Vec::new();
        for raw in &open.roots {
            let path = RootPath::parse(raw).map_err(|e| SyncError::path("root in SyncOpen", e))?;
            rx.check_root(&path, &paths)?;
            paths.push(path);
        }
        for path in paths {
            let root = rx.stage_root(path)?; // on error, `rx` drops and unstages the others
            rx.roots.push(root);
        }
        // free space, per file system
        let mut free_total = 0u64;
        let mut seen = HashSet::new();
        for r in &rx.roots {
            if seen.insert(r.dev) {
                free_total = free_total.saturating_add(rx.budget(r)?);
            }
        }
        if open.data_bytes > free_total {
            return Err(SyncError::Space {
                root: rx
                    .roots
                    .first()
                    .map(|r| r.path.as_path().to_path_buf())
                    .unwrap_or_default(),
                wanted: open.data_bytes,
                limit: free_total,
            });
        }
        let staging = rx
            .roots
            .iter()
            .map(|r| {
                let mut p = r.path.as_bytes().to_vec();
                p.push(b'/');
                p.extend_from_slice(&r.staging);
                p
            })
            .collect();
        Ok((
            rx,
            pb::SyncOpened {
                free_bytes: free_total,
                staging,
            },
        ))
    }

    fn check_root(&self, path: &RootPath, earlier: &[RootPath]) -> Result<(), SyncError> {
        let refuse = |reason: String| SyncError::Root {
            root: path.as_path().to_path_buf(),
            reason,
        };
        for o in earlier {
            if path.is_within(o) || o.is_within(path) {
                return Err(refuse(format!("it overlaps root {o}")));
            }
        }
        if !self.cfg.allowed.is_empty()
            && !self
                .cfg
                .allowed
                .iter()
                .any(|a| path.as_path().starts_with(a))
        {
            return Err(refuse(format!(
                "it is outside the directories this destination accepts ({})",
                self.cfg
                    .allowed
                    .iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for p in &self.cfg.protected {
            if path.as_path().starts_with(p) || p.starts_with(path.as_path()) {
                return Err(refuse(format!(
                    "it overlaps {}, which the destination protects",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    fn stage_root(&self, path: RootPath) -> Result<RecvRoot, SyncError> {
        let refuse = |reason: String| SyncError::Root {
            root: path.as_path().to_path_buf(),
            reason,
        };
        let rel = path.relative_to_slash().to_vec();
        let (parent_rel, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&[][..], &rel[..]),
        };
        let parent = confine::open_abs_dir(self.cfg.dest_prefix.as_deref(), parent_rel).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP) => refuse(
                    "a symlink lies on its path on the destination; the process expects the \
                     same real path on both nodes"
                        .into(),
                ),
                Some(libc::ENOENT) => refuse(
                    "its parent directory does not exist on the destination: create it first"
                        .into(),
                ),
                _ => SyncError::io("open the parent of", path.to_string(), e),
            },
        )?;
        let mut created = false;
        match rfs::statat(&parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match file_type(st.st_mode) {
                FileType::Directory => {}
                FileType::Symlink => {
                    return Err(refuse(
                        "it is a symlink on the destination; refusing to write through it".into(),
                    ))
                }
                other => {
                    return Err(refuse(format!(
                        "it exists on the destination as a {other:?}, not a directory"
                    )))
                }
            },
            Err(Errno::NOENT) => {
                rfs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                    .map_err(io_err("create", path.to_string()))?;
                created = true;
            }
            Err(e) => return Err(SyncError::io("stat", path.to_string(), e.into())),
        }
        let undo_created = |parent: &OwnedFd| {
            if created {
                let _ = rfs::unlinkat(parent, name, AtFlags::REMOVEDIR);
            }
        };
        let dir = match rfs::openat(
            &parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => d,
            Err(e) => {
                undo_created(&parent);
                return Err(SyncError::io("open", path.to_string(), e.into()));
            }
        };
        let st = rfs::fstat(&dir).map_err(io_err("stat", path.to_string()))?;
        let orig = (!created).then(|| Meta::of(&st));
        let staging = staging_name(&self.session).into_bytes();
        if let Err(e) = rfs::mkdirat(&dir, staging.as_slice(), Mode::from_raw_mode(0o700)) {
            undo_created(&parent);
            return Err(if e == Errno::EXIST {
                refuse(format!(
                    "{} already exists there: a migration with the same id runs, or one failed \
                     and kept its copy; remove it",
                    String::from_utf8_lossy(&staging)
                ))
            } else {
                SyncError::io("create staging in", path.to_string(), e.into())
            });
        }
        let made = (|| -> Result<(OwnedFd, OwnedFd), Errno> {
            let s = rfs::openat(
                &dir,
                staging.as_slice(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rfs::mkdirat(&s, "tree", Mode::from_raw_mode(0o700))?;
            rfs::mkdirat(&s, "tmp", Mode::from_raw_mode(0o700))?;
            let open = |n: &str| {
                rfs::openat(
                    &s,
                    n,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            Ok((open("tree")?, open("tmp")?))
        })();
        let (tree, tmp) = match made {
            Ok(t) => t,
            Err(e) => {
                let _ = confine::remove_tree(dir.as_fd(), &staging);
                undo_created(&parent);
                return Err(SyncError::io(
                    "create staging in",
                    path.to_string(),
                    e.into(),
                ));
            }
        };
        Ok(RecvRoot {
            path,
            parent,
            name: name.to_vec(),
            dir,
            dev: st.st_dev,
            created,
            orig,
            staging,
            tree,
            tmp,
            root_meta: None,
            dir_meta: HashMap::new(),
        })
    }

    /// Bytes this root's file system accepts now: free space less the reserve.
    fn budget(&self, r: &RecvRoot) -> Result<u64, SyncError> {
        let (free, size) = confine::free_bytes(r.dir.as_fd())
            .map_err(|e| SyncError::io("statvfs", r.path.to_string(), e))?;
        let reserve = self
            .cfg
            .reserve_bytes
            .max(size / 100 * self.cfg.reserve_percent.min(100));
        Ok(free.saturating_sub(reserve))
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Whether the final round has been applied (then [`SyncReceiver::install`] may run).
    pub fn final_done(&self) -> bool {
        matches!(
            self.state,
            State::Idle {
                final_done: true,
                ..
            }
        )
    }

    /// Applies one message. Returns the answer to send back, if any (a `RoundApplied` after
    /// a `RoundEnd`). Any error leaves the receiver broken: only rollback (or drop) remains.
    pub fn handle(&mut self, m: pb::SyncMessage) -> Result<Option<pb::RoundApplied>, SyncError> {
        if let State::Broken(why) = &self.state {
            return Err(SyncError::protocol(
                "after an error",
                format!("another message (the sync failed earlier: {why})"),
            ));
        }
        match self.step(m) {
            Ok(r) => Ok(r),
            Err(e) => {
                if let State::Round(ctx) = &mut self.state {
                    if let Some(f) = ctx.file.take() {
                        if let Some(t) = &f.tmp {
                            let _ = rfs::unlinkat(
                                &self.roots[f.root].tmp,
                                t.as_slice(),
                                AtFlags::empty(),
                            );
                        }
                    }
                }
                self.state = State::Broken(e.to_string());
                Err(e)
            }
        }
    }

    fn step(&mut self, m: pb::SyncMessage) -> Result<Option<pb::RoundApplied>, SyncError> {
        let Some(body) = m.body else {
            return Err(SyncError::protocol(self.state.name(), "an empty message"));
        };
        if let Body::RoundBegin(b) = &body {
            return self.round_begin(b).map(|_| None);
        }
        let State::Round(ctx) = &mut self.state else {
            return Err(SyncError::protocol(
                self.state.name(),
                format!("{} outside a round", body_name(&body)),
            ));
        };
        ctx.messages += 1;
        let in_file = ctx.file.is_some();
        match body {
            Body::Literal(l) => return self.literal(l).map(|_| None),
            Body::Delta(d) => return self.delta(d).map(|_| None),
            Body::SegmentEnd(s) => return self.segment_end(s).map(|_| None),
            Body::FileEnd(_) => return self.file_end().map(|_| None),
            other if in_file => {
                return Err(SyncError::protocol(
                    "receiving a file",
                    format!("{} before its FileEnd", body_name(&other)),
                ))
            }
            Body::RoundEnd(e) => return self.round_end(e).map(Some),
            Body::Remove(r) => self.remove(r)?,
            Body::Dir(d) => self.dir(d)?,
            Body::Symlink(s) => self.symlink(s)?,
            Body::Fifo(f) => self.fifo(f)?,
            Body::HardLink(h) => self.hard_link(h)?,
            Body::FileBegin(f) => self.file_begin(f)?,
            Body::RoundBegin(_) => unreachable!("handled above"),
        }
        Ok(None)
    }

    fn ctx(&mut self) -> &mut RoundCtx {
        match &mut self.state {
            State::Round(c) => c,
            _ => unreachable!("checked by step"),
        }
    }

    fn root_of(&self, root: u32, what: &str) -> Result<usize, SyncError> {
        let i = root as usize;
        if i >= self.roots.len() {
            return Err(SyncError::protocol(
                "in a round",
                format!("{what} for root #{root} of {}", self.roots.len()),
            ));
        }
        Ok(i)
    }

    fn rel(&self, root: usize, raw: &[u8], what: &str) -> Result<RelPath, SyncError> {
        RelPath::parse(raw)
            .map_err(|e| SyncError::path(format!("{what} below {}", self.roots[root].path), e))
    }

    /// The parent directory of `p` in the staging tree (confined) and the last component.
    fn parent_of<'p>(&self, root: usize, p: &'p RelPath) -> Result<(OwnedFd, &'p [u8]), SyncError> {
        let (parent, name) = p
            .split_last()
            .ok_or_else(|| SyncError::protocol("in a round", "an operation on the root itself"))?;
        let r = &self.roots[root];
        let fd = confine::open_dir_path(r.tree.as_fd(), parent)
            .map_err(|e| SyncError::io("open the directory of", r.show(p), e))?;
        Ok((fd, name))
    }

    fn touch_parent(&mut self, root: usize, p: &RelPath) {
        if let Some(parent) = p.parent() {
            self.ctx().dirs.insert((root, parent));
        }
    }

    fn round_begin(&mut self, b: &pb::RoundBegin) -> Result<(), SyncError> {
        let State::Idle {
            last_round,
            final_done,
        } = self.state
        else {
            return Err(SyncError::protocol(self.state.name(), "RoundBegin"));
        };
        if final_done || b.round != last_round + 1 {
            return Err(SyncError::protocol(
                self.state.name(),
                format!(
                    "RoundBegin for round {} (expected {}{})",
                    b.round,
                    last_round + 1,
                    if final_done {
                        ", but the final round is over"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut budget = Vec::new();
        for r in &self.roots {
            budget.push((0, self.budget(r)?));
        }
        self.state = State::Round(Box::new(RoundCtx {
            round: b.round,
            final_round: b.r#final,
            started: Instant::now(),
            messages: 1, // the RoundBegin
            entries: 0,
            removed: 0,
            written: 0,
            budget,
            file: None,
            dirs: BTreeSet::new(),
        }));
        Ok(())
    }

    /// Accounts for `n` bytes about to be written below `root`.
    fn spend(&mut self, root: usize, n: u64) -> Result<(), SyncError> {
        let path = self.roots[root].path.as_path().to_path_buf();
        let ctx = self.ctx();
        let (used, limit) = &mut ctx.budget[root];
        if used.saturating_add(n) > *limit {
            return Err(SyncError::Space {
                root: path,
                wanted: used.saturating_add(n),
                limit: *limit,
            });
        }
        *used += n;
        ctx.written += n;
        Ok(())
    }

    fn remove(&mut self, r: pb::Remove) -> Result<(), SyncError> {
        let root = self.root_of(r.root, "Remove")?;
        let p = self.rel(root, &r.path, "Remove")?;
        let (dir, name) = self.parent_of(root, &p)?;
        confine::remove_tree(dir.as_fd(), name)
            .map_err(|e| SyncError::io("remove", self.roots[root].show(&p), e))?;
        self.roots[root].dir_meta.retain(|q, _| !q.is_within(&p));
        self.touch_parent(root, &p);
        let ctx = self.ctx();
        ctx.removed += 1;
        ctx.dirs.retain(|(r, q)| *r != root || !q.is_within(&p));
        Ok(())
    }

    fn dir(&mut self, d: pb::Dir) -> Result<(), SyncError> {
        let root = self.root_of(d.root, "Dir")?;
        let p = self.rel(root, &d.path, "Dir")?;
        let meta = Meta::from_pb(d.meta.as_ref());
        self.ctx().entries += 1;
        if p.is_root() {
            self.roots[root].root_meta = Some(meta);
            return Ok(());
        }
        let (dir, name) = self.parent_of(root, &p)?;
        let show = self.roots[root].show(&p);
        match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => self.touch_parent(root, &p),
            Err(Errno::EXIST) => {
                let st = rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(io_err("stat", show.clone()))?;
                if file_type(st.st_mode) != FileType::Directory {
                    return Err(SyncError::protocol(
                        "in a round",
                        format!(
                            "Dir for {show}, which exists as a {:?} (no Remove came first)",
                            file_type(st.st_mode)
                        ),
                    ));
                }
            }
            Err(e) => return Err(SyncError::io("create directory", show, e.into())),
        }
        self.roots[root].dir_meta.insert(p.clone(), meta);
        self.ctx().dirs.insert((root, p));
        Ok(())
    }

    fn tmp_name(&mut self) -> Vec<u8> {
        self.tmp_seq += 1;
        format!("t{}", self.tmp_seq).into_bytes()
    }

    /// Renames the finished entry `tmp` (in the root's tmp directory) over `p`.
    fn put_in_place(&mut self, root: usize, tmp: &[u8], p: &RelPath) -> Result<(), SyncError> {
        let (dir, name) = self.parent_of(root, p)?;
        let r = &self.roots[root];
        if let Err(e) = rfs::renameat(&r.tmp, tmp, &dir, name) {
            let _ = rfs::unlinkat(&r.tmp, tmp, AtFlags::empty());
            return Err(SyncError::io("put in place", r.show(p), e.into()));
        }
        self.touch_parent(root, p);
        Ok(())
    }

    fn symlink(&mut self, s: pb::Symlink) -> Result<(), SyncError> {
        let root = self.root_of(s.root, "Symlink")?;
        let p = self.rel(root, &s.path, "Symlink")?;
        let show = self.roots[root].show(&p);
        if p.is_root() {
            return Err(SyncError::protocol(
                "in a round",
                "Symlink for the root itself",
            ));
        }
        if s.target.is_empty() || s.target.len() > MAX_LINK_TARGET || s.target.contains(&0) {
            return Err(SyncError::protocol(
                "in a round",
                format!("Symlink {show} with an empty, oversized or NUL-holding target"),
            ));
        }
        if self.cfg.symlinks == SymlinkPolicy::WithinTree && !link_stays_inside(&p, &s.target) {
            return Err(SyncError::SymlinkOutside {
                path: show,
                target: String::from_utf8_lossy(&s.target).into_owned(),
            });
        }
        let meta = Meta::from_pb(s.meta.as_ref());
        drop(self.parent_of(root, &p)?);
        let tmp = self.tmp_name();
        let r = &self.roots[root];
        rfs::symlinkat(s.target.as_slice(), &r.tmp, tmp.as_slice())
            .map_err(io_err("create symlink", show.clone()))?;
        let applied = rfs::chownat(
            &r.tmp,
            tmp.as_slice(),
            Some(Uid::from_raw_unchecked(meta.uid)),
            Some(Gid::from_raw_unchecked(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .and_then(|_| {
            rfs::utimensat(
                &r.tmp,
                tmp.as_slice(),
                &times(&meta),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        });
        if let Err(e) = applied {
            let _ = rfs::unlinkat(&r.tmp, tmp.as_slice(), AtFlags::empty());
            return Err(SyncError::io("set owner and times of", show, e.into()));
        }
        self.put_in_place(root, &tmp, &p)?;
        self.ctx().entries += 1;
        Ok(())
    }

    fn fifo(&mut self, f: pb::Fifo) -> Result<(), SyncError> {
        let root = self.root_of(f.root, "Fifo")?;
        let p = self.rel(root, &f.path, "Fifo")?;
        let show = self.roots[root].show(&p);
        if p.is_root() {
            return Err(SyncError::protocol(
                "in a round",
                "Fifo for the root itself",
            ));
        }
        let meta = Meta::from_pb(f.meta.as_ref());
        drop(self.parent_of(root, &p)?);
        let tmp = self.tmp_name();
        let r = &self.roots[root];
        rfs::mknodat(
            &r.tmp,
            tmp.as_slice(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(io_err("create fifo", show.clone()))?;
        let applied = rfs::openat(
            &r.tmp,
            tmp.as_slice(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| apply_meta(fd.as_fd(), &meta));
        if let Err(e) = applied {
            let _ = rfs::unlinkat(&r.tmp, tmp.as_slice(), AtFlags::empty());
            return Err(SyncError::io("set metadata of", show, e.into()));
        }
        self.put_in_place(root, &tmp, &p)?;
        self.ctx().entries += 1;
        Ok(())
    }

    fn hard_link(&mut self, h: pb::HardLink) -> Result<(), SyncError> {
        let root = self.root_of(h.root, "HardLink")?;
        let p = self.rel(root, &h.path, "HardLink")?;
        let leader = self.rel(root, &h.leader, "HardLink leader")?;
        let show = self.roots[root].show(&p);
        if p.is_root() || leader.is_root() || p == leader {
            return Err(SyncError::protocol(
                "in a round",
                format!("HardLink {show} to {leader}"),
            ));
        }
        let (ldir, lname) = self.parent_of(root, &leader)?;
        let st = rfs::statat(&ldir, lname, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("stat link leader", self.roots[root].show(&leader)))?;
        if file_type(st.st_mode) != FileType::RegularFile {
            return Err(SyncError::protocol(
                "in a round",
                format!("HardLink {show} to {leader}, which is not a regular file"),
            ));
        }
        let (dir, name) = self.parent_of(root, &p)?;
        match rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(st.st_mode) == FileType::Directory => {
                return Err(SyncError::protocol(
                    "in a round",
                    format!("HardLink over the directory {show} (no Remove came first)"),
                ))
            }
            Ok(_) => rfs::unlinkat(&dir, name, AtFlags::empty())
                .map_err(io_err("replace", show.clone()))?,
            Err(Errno::NOENT) => {}
            Err(e) => return Err(SyncError::io("stat", show, e.into())),
        }
        rfs::linkat(&ldir, lname, &dir, name, AtFlags::empty()).map_err(io_err("link", show))?;
        self.touch_parent(root, &p);
        self.ctx().entries += 1;
        Ok(())
    }

    fn file_begin(&mut self, f: pb::FileBegin) -> Result<(), SyncError> {
        let root = self.root_of(f.root, "FileBegin")?;
        let p = self.rel(root, &f.path, "FileBegin")?;
        let show = self.roots[root].show(&p);
        if p.is_root() {
            return Err(SyncError::protocol(
                "in a round",
                "FileBegin for the root itself",
            ));
        }
        if f.size > self.cfg.max_file_size {
            return Err(SyncError::limit(
                format!("size claimed for {show}"),
                f.size,
                self.cfg.max_file_size,
            ));
        }
        if f.segment_len != SEGMENT_LEN {
            return Err(SyncError::protocol(
                "in a round",
                format!(
                    "FileBegin {show} with segments of {} bytes (this build: {SEGMENT_LEN})",
                    f.segment_len
                ),
            ));
        }
        if f.extents.len() > MAX_EXTENTS {
            return Err(SyncError::limit(
                format!("extents of {show}"),
                f.extents.len() as u64,
                MAX_EXTENTS as u64,
            ));
        }
        let mut extents = Vec::with_capacity(f.extents.len());
        let mut end = 0u64;
        let mut data = 0u64;
        for e in &f.extents {
            let stop = e.offset.checked_add(e.len);
            if e.len == 0 || e.offset < end || stop.map_or(true, |v| v > f.size) {
                return Err(SyncError::protocol(
                    "in a round",
                    format!("FileBegin {show}: extents not sorted, overlapping, empty or beyond its size"),
                ));
            }
            end = e.offset + e.len;
            data += e.len;
            extents.push((e.offset, e.len));
        }
        // where it will go must be reachable now (refused early, before any data comes)
        drop(self.parent_of(root, &p)?);
        let basis = pb::Basis::try_from(f.basis).unwrap_or(pb::Basis::Unspecified);
        let meta = Meta::from_pb(f.meta.as_ref());
        let r = &self.roots[root];
        let (fd, tmp, old_len) = match basis {
            pb::Basis::None => {
                let tmp = self.tmp_name();
                let r = &self.roots[root];
                let fd = rfs::openat(
                    &r.tmp,
                    tmp.as_slice(),
                    OFlags::RDWR
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err("create", show.clone()))?;
                (fd, Some(tmp), 0)
            }
            pb::Basis::InPlace | pb::Basis::Copy => {
                let old = confine::open_beneath(
                    r.tree.as_fd(),
                    p.as_bytes(),
                    if basis == pb::Basis::InPlace {
                        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK
                    } else {
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK
                    },
                    Mode::empty(),
                )
                .map_err(|e| SyncError::io("open the copy of", show.clone(), e))?;
                let st = rfs::fstat(&old).map_err(io_err("stat", show.clone()))?;
                if file_type(st.st_mode) != FileType::RegularFile {
                    return Err(SyncError::protocol(
                        "in a round",
                        format!("FileBegin {show} against a basis that is not a regular file"),
                    ));
                }
                let old_len = st.st_size as u64;
                if basis == pb::Basis::InPlace {
                    (old, None, old_len)
                } else {
                    self.spend(root, old_len)?;
                    let tmp = self.tmp_name();
                    let r = &self.roots[root];
                    let fd = rfs::openat(
                        &r.tmp,
                        tmp.as_slice(),
                        OFlags::RDWR
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                    .map_err(io_err("create", show.clone()))?;
                    if let Err(e) = copy_all(old.as_fd(), fd.as_fd(), old_len) {
                        let _ = rfs::unlinkat(&r.tmp, tmp.as_slice(), AtFlags::empty());
                        return Err(SyncError::io("copy", show, e));
                    }
                    (fd, Some(tmp), old_len)
                }
            }
            pb::Basis::Unspecified => {
                return Err(SyncError::protocol(
                    "in a round",
                    format!("FileBegin {show} without a basis"),
                ))
            }
        };
        // an early answer for oversized claims: the data must fit this round's budget
        let (used, limit) = self.ctx().budget[root];
        if used.saturating_add(data.saturating_sub(old_len)) > limit {
            if let Some(t) = &tmp {
                let _ = rfs::unlinkat(&self.roots[root].tmp, t.as_slice(), AtFlags::empty());
            }
            return Err(SyncError::Space {
                root: self.roots[root].path.as_path().to_path_buf(),
                wanted: used.saturating_add(data),
                limit,
            });
        }
        let ctx = self.ctx();
        ctx.entries += 1;
        ctx.file = Some(FileCtx {
            root,
            path: p,
            fd,
            tmp,
            basis,
            meta,
            size: f.size,
            extents,
            old_len,
            seg: SegState::Idle,
            delta: Vec::new(),
            next_seg: 0,
            touched: Vec::new(),
        });
        Ok(())
    }

    fn file_show(&mut self) -> String {
        let ctx = self.ctx();
        let f = ctx.file.as_ref().expect("in a file");
        let (root, p) = (f.root, f.path.clone());
        self.roots[root].show(&p)
    }

    fn file(&mut self, what: &str) -> Result<&mut FileCtx, SyncError> {
        let ctx = self.ctx();
        ctx.file
            .as_mut()
            .ok_or_else(|| SyncError::protocol("in a round", format!("{what} outside a file")))
    }

    fn literal(&mut self, l: pb::Literal) -> Result<(), SyncError> {
        let f = self.file("Literal")?;
        let len = l.data.len() as u64;
        let seg = l.offset / SEGMENT_LEN;
        let bad = |why: &str| {
            SyncError::protocol(
                "receiving a file",
                format!("Literal at {}: {why}", l.offset),
            )
        };
        if len == 0 || len > CHUNK as u64 {
            return Err(bad("empty or larger than a chunk"));
        }
        let stop = l
            .offset
            .checked_add(len)
            .ok_or_else(|| bad("offset overflows"))?;
        if stop > f.size || (stop - 1) / SEGMENT_LEN != seg {
            return Err(bad("beyond the file's size or across a segment boundary"));
        }
        if !within_extents(&f.extents, l.offset, len) {
            return Err(bad("outside the file's data extents"));
        }
        let seg = seg as u32;
        match f.seg {
            SegState::Idle if seg >= f.next_seg => f.seg = SegState::Literal(seg),
            SegState::Literal(s) if s == seg => {}
            _ => return Err(bad("out of segment order")),
        }
        let root = f.root;
        let fd =
            f.fd.try_clone()
                .map_err(|e| SyncError::io("dup", "file", e))?;
        let show = self.file_show();
        self.spend(root, len)?;
        write_at(fd.as_fd(), &l.data, l.offset).map_err(|e| SyncError::io("write", show, e))
    }

    fn delta(&mut self, d: pb::Delta) -> Result<(), SyncError> {
        let f = self.file("Delta")?;
        let nseg = f.size.div_ceil(SEGMENT_LEN);
        match f.seg {
            SegState::Idle if d.segment >= f.next_seg && (d.segment as u64) < nseg => {
                f.seg = SegState::Delta(d.segment);
            }
            SegState::Delta(s) if s == d.segment => {}
            _ => {
                return Err(SyncError::protocol(
                    "receiving a file",
                    format!("Delta for segment {} out of order", d.segment),
                ))
            }
        }
        if f.delta.len() + d.data.len() > MAX_DELTA {
            return Err(SyncError::limit(
                format!("delta of segment {}", d.segment),
                (f.delta.len() + d.data.len()) as u64,
                MAX_DELTA as u64,
            ));
        }
        f.delta.extend_from_slice(&d.data);
        Ok(())
    }

    fn segment_end(&mut self, s: pb::SegmentEnd) -> Result<(), SyncError> {
        let root = self.file("SegmentEnd")?.root;
        let show = self.file_show();
        let f = self.file("SegmentEnd")?;
        let start = s.segment as u64 * SEGMENT_LEN;
        let want_len = SEGMENT_LEN.min(f.size.saturating_sub(start));
        if start >= f.size || s.len != want_len || s.blake3.len() != 32 {
            return Err(SyncError::protocol(
                "receiving a file",
                format!(
                    "SegmentEnd {} of {show}: length {} (expected {want_len}) or hash length {}",
                    s.segment,
                    s.len,
                    s.blake3.len()
                ),
            ));
        }
        match (f.seg, s.delta) {
            (SegState::Delta(i), true) if i == s.segment => {}
            (SegState::Literal(i), false) if i == s.segment => {}
            (SegState::Idle, false) if s.segment >= f.next_seg => {}
            _ => {
                return Err(SyncError::protocol(
                    "receiving a file",
                    format!("SegmentEnd {} of {show} out of order", s.segment),
                ))
            }
        }
        let len = want_len as usize;
        if s.delta {
            let base_len = f.old_len.saturating_sub(start).min(SEGMENT_LEN) as usize;
            let mut base = vec![0u8; base_len];
            read_at(f.fd.as_fd(), &mut base, start)
                .map_err(|e| SyncError::io("read", show.clone(), e))?;
            let mut out = Vec::with_capacity(len);
            fast_rsync::apply_limited(&base, &f.delta, &mut out, len).map_err(|e| {
                SyncError::Delta {
                    path: show.clone(),
                    segment: s.segment,
                    detail: e.to_string(),
                }
            })?;
            f.delta = Vec::new();
            if out.len() != len || blake3::hash(&out).as_bytes()[..] != s.blake3[..] {
                return Err(SyncError::Verify {
                    path: show,
                    segment: s.segment,
                    how: "delta",
                });
            }
            // write only the pages that differ from what the file holds (an in-place rewrite
            // of a few blocks costs a few pages, not the segment)
            let runs = changed_runs(&base, &out, WRITE_GRAIN);
            let fd =
                f.fd.try_clone()
                    .map_err(|e| SyncError::io("dup", show.clone(), e))?;
            self.spend(root, runs.iter().map(|r| r.1 as u64).sum())?;
            for (o, n) in runs {
                write_at(fd.as_fd(), &out[o..o + n], start + o as u64)
                    .map_err(|e| SyncError::io("write", show.clone(), e))?;
            }
        } else {
            let mut buf = vec![0u8; len];
            read_at(f.fd.as_fd(), &mut buf, start)
                .map_err(|e| SyncError::io("read back", show.clone(), e))?;
            zero_outside(&mut buf, start, &f.extents);
            if blake3::hash(&buf).as_bytes()[..] != s.blake3[..] {
                return Err(SyncError::Verify {
                    path: show,
                    segment: s.segment,
                    how: "literal data",
                });
            }
        }
        let f = self.file("SegmentEnd")?;
        f.seg = SegState::Idle;
        f.next_seg = s.segment + 1;
        f.touched.push(s.segment);
        Ok(())
    }

    fn file_end(&mut self) -> Result<(), SyncError> {
        let f = self.file("FileEnd")?;
        if f.seg != SegState::Idle {
            return Err(SyncError::protocol(
                "receiving a file",
                "FileEnd inside a segment",
            ));
        }
        let f = self.ctx().file.take().expect("checked");
        let show = self.roots[f.root].show(&f.path);
        let fd = f.fd.as_fd();
        rfs::ftruncate(fd, f.size).map_err(io_err("truncate", show.clone()))?;
        // holes: a fresh file has them already; a changed copy gets them where it changed
        let holes = holes(&f.extents, f.size);
        let punch: Vec<(u64, u64)> = match f.basis {
            pb::Basis::None => Vec::new(),
            pb::Basis::Copy => holes,
            _ => holes
                .into_iter()
                .flat_map(|(o, n)| {
                    f.touched.iter().filter_map(move |&s| {
                        let a = o.max(s as u64 * SEGMENT_LEN);
                        let b = (o + n).min((s as u64 + 1) * SEGMENT_LEN);
                        (a < b).then(|| (a, b - a))
                    })
                })
                .collect(),
        };
        for (o, n) in punch {
            // a hole up to the end covers the last partial block too (beyond the end with
            // KEEP_SIZE changes nothing else), as on the source
            let n = if o + n >= f.size { n + 65536 } else { n };
            punch_hole(fd, o, n).map_err(|e| SyncError::io("punch a hole in", show.clone(), e))?;
        }
        apply_meta(fd, &f.meta).map_err(io_err("set metadata of", show.clone()))?;
        if let Some(tmp) = &f.tmp {
            self.put_in_place(f.root, tmp, &f.path)?;
        }
        Ok(())
    }

    fn round_end(&mut self, e: pb::RoundEnd) -> Result<pb::RoundApplied, SyncError> {
        let ctx = self.ctx();
        // the RoundEnd itself was counted
        if e.round != ctx.round || e.messages + 1 != ctx.messages {
            return Err(SyncError::protocol(
                "in a round",
                format!(
                    "RoundEnd for round {} after {} messages (this round is {}, {} messages came)",
                    e.round,
                    e.messages,
                    ctx.round,
                    ctx.messages - 1
                ),
            ));
        }
        let dirs: Vec<(usize, RelPath)> = {
            let mut v: Vec<_> = std::mem::take(&mut ctx.dirs).into_iter().collect();
            v.sort_by_key(|(_, p)| std::cmp::Reverse(p.depth()));
            v
        };
        for (root, p) in dirs {
            if p.is_root() {
                continue; // the root's own metadata goes onto R at install
            }
            let Some(meta) = self.roots[root].dir_meta.get(&p).copied() else {
                continue;
            };
            let r = &self.roots[root];
            let fd = confine::open_dir_read(r.tree.as_fd(), p.as_bytes())
                .map_err(|e| SyncError::io("open directory", r.show(&p), e))?;
            apply_meta(fd.as_fd(), &meta).map_err(io_err("set metadata of", r.show(&p)))?;
        }
        let State::Round(ctx) = std::mem::replace(
            &mut self.state,
            State::Idle {
                last_round: e.round,
                final_done: false,
            },
        ) else {
            unreachable!()
        };
        self.state = State::Idle {
            last_round: ctx.round,
            final_done: ctx.final_round,
        };
        Ok(pb::RoundApplied {
            round: ctx.round,
            entries: ctx.entries,
            bytes_written: ctx.written,
            removed: ctx.removed,
            apply_micros: ctx.started.elapsed().as_micros() as u64,
            install_micros: 0,
        })
    }

    /// Puts the copies in place: in each root, what it held before moves to
    /// `.haul-sync-old.<session>`, the staged entries move in, the root gets the source's
    /// metadata. Only after the final round. On failure everything is undone (and the error
    /// returned with the rollback's report).
    pub fn install(mut self) -> Result<InstalledSync, Box<InstallError>> {
        if !self.final_done() {
            let error = SyncError::protocol(self.state.name(), "install before the final round");
            let report = self.rollback_now();
            return Err(Box::new(InstallError { error, report }));
        }
        let mut undo: Vec<RootUndo> = Vec::new();
        for i in 0..self.roots.len() {
            let mut u = RootUndo::default();
            let r = &self.roots[i];
            let res = install_root(r, &self.session, &mut u);
            undo.push(u);
            if let Err(e) = res {
                let mut report = RollbackReport::default();
                for (r, u) in self.roots.iter().zip(undo.iter()).rev() {
                    undo_root(r, u, &self.session, self.cfg.keep_partial, &mut report);
                }
                self.done = true;
                return Err(Box::new(InstallError { error: e, report }));
            }
        }
        self.done = true;
        let roots = std::mem::take(&mut self.roots);
        Ok(InstalledSync {
            session: self.session.clone(),
            keep_partial: self.cfg.keep_partial,
            roots: roots.into_iter().zip(undo).collect(),
            done: false,
        })
    }

    /// Abandons the sync: removes the staging directories (or keeps them with
    /// `keep_partial`) and every root this session created; roots that existed are left as
    /// they were (nothing outside the staging directory was written).
    pub fn rollback(mut self) -> RollbackReport {
        self.rollback_now()
    }

    fn rollback_now(&mut self) -> RollbackReport {
        let mut report = RollbackReport::default();
        if self.done {
            return report;
        }
        self.done = true;
        for r in self.roots.iter().rev() {
            let staging = r.path.as_path().join(std::ffi::OsStr::new(
                std::str::from_utf8(&r.staging).unwrap_or("?"),
            ));
            if self.cfg.keep_partial {
                report.kept.push(staging);
                continue;
            }
            if let Err(e) = confine::remove_tree(r.dir.as_fd(), &r.staging) {
                report
                    .problems
                    .push(format!("cannot remove {}: {e}", staging.display()));
                continue;
            }
            if r.created {
                match rfs::unlinkat(&r.parent, r.name.as_slice(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => report.problems.push(format!(
                        "cannot remove {} (created by this migration): {e}",
                        r.path
                    )),
                }
            } else if let Some(meta) = &r.orig {
                if let Err(e) = apply_meta(r.dir.as_fd(), meta) {
                    report
                        .problems
                        .push(format!("cannot restore the metadata of {}: {e}", r.path));
                }
            }
            report.restored.push(r.path.as_path().to_path_buf());
        }
        report
    }
}

impl Drop for SyncReceiver {
    fn drop(&mut self) {
        if !self.done {
            let report = self.rollback_now();
            tracing::warn!(session = %self.session, ?report, "sync receiver dropped before install: rolled back");
        }
    }
}

/// What install changed in one root, to undo it.
#[derive(Debug, Default)]
struct RootUndo {
    backup: bool,
    moved_old: Vec<Vec<u8>>,
    moved_in: Vec<Vec<u8>>,
}

fn install_root(r: &RecvRoot, session: &str, u: &mut RootUndo) -> Result<(), SyncError> {
    let show = r.path.to_string();
    let backup = backup_name(session).into_bytes();
    let old: Vec<Vec<u8>> = confine::list_dir(r.dir.as_fd())
        .map_err(|e| SyncError::io("list", show.clone(), e))?
        .into_iter()
        .filter(|n| *n != r.staging)
        .collect();
    if !old.is_empty() {
        rfs::mkdirat(&r.dir, backup.as_slice(), Mode::from_raw_mode(0o700))
            .map_err(io_err("create backup directory in", show.clone()))?;
        u.backup = true;
        let b = rfs::openat(
            &r.dir,
            backup.as_slice(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err("open backup directory in", show.clone()))?;
        for n in old {
            rfs::renameat_with(
                &r.dir,
                n.as_slice(),
                &b,
                n.as_slice(),
                RenameFlags::NOREPLACE,
            )
            .map_err(io_err("move aside an old entry of", show.clone()))?;
            u.moved_old.push(n);
        }
    }
    for n in confine::list_dir(r.tree.as_fd())
        .map_err(|e| SyncError::io("list staging of", show.clone(), e))?
    {
        rfs::renameat_with(
            &r.tree,
            n.as_slice(),
            &r.dir,
            n.as_slice(),
            RenameFlags::NOREPLACE,
        )
        .map_err(io_err("move into place in", show.clone()))?;
        u.moved_in.push(n);
    }
    // the moved directories keep their times? set them again to be sure
    for n in &u.moved_in {
        if let Ok(p) = RelPath::parse(n) {
            if let Some(meta) = r.dir_meta.get(&p) {
                let fd = rfs::openat(
                    &r.dir,
                    n.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err("open", r.path.display_entry(&p)))?;
                apply_meta(fd.as_fd(), meta)
                    .map_err(io_err("set metadata of", r.path.display_entry(&p)))?;
            }
        }
    }
    // the staging directory is empty but for leftovers in tmp/: gone before the root's times
    // are set, so that nothing changes the root after install unless a backup must go
    confine::remove_tree(r.dir.as_fd(), &r.staging)
        .map_err(|e| SyncError::io("remove staging of", show.clone(), e))?;
    if let Some(meta) = &r.root_meta {
        apply_meta(r.dir.as_fd(), meta).map_err(io_err("set metadata of", show))?;
    }
    Ok(())
}

fn undo_root(r: &RecvRoot, u: &RootUndo, session: &str, keep: bool, report: &mut RollbackReport) {
    let show = r.path.to_string();
    let mut ok = true;
    // the new entries: back into a staging tree (kept) or removed
    let kept_tree = if keep && !u.moved_in.is_empty() {
        match reopen_staging_tree(r) {
            Ok(fd) => Some(fd),
            Err(e) => {
                report.problems.push(format!(
                    "cannot recreate the staging directory in {show}: {e}"
                ));
                None
            }
        }
    } else {
        None
    };
    for n in u.moved_in.iter().rev() {
        let res = if let Some(tree) = &kept_tree {
            rfs::renameat_with(
                &r.dir,
                n.as_slice(),
                tree,
                n.as_slice(),
                RenameFlags::NOREPLACE,
            )
            .map_err(std::io::Error::from)
        } else {
            confine::remove_tree(r.dir.as_fd(), n).map(|_| ())
        };
        if let Err(e) = res {
            ok = false;
            report.problems.push(format!(
                "cannot take back {}/{}: {e}",
                show,
                String::from_utf8_lossy(n)
            ));
        }
    }
    let backup = backup_name(session).into_bytes();
    if u.backup {
        match rfs::openat(
            &r.dir,
            backup.as_slice(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(b) => {
                for n in u.moved_old.iter().rev() {
                    if let Err(e) = rfs::renameat_with(
                        &b,
                        n.as_slice(),
                        &r.dir,
                        n.as_slice(),
                        RenameFlags::NOREPLACE,
                    ) {
                        ok = false;
                        report.problems.push(format!(
                            "cannot restore {}/{} from {}: {e}",
                            show,
                            String::from_utf8_lossy(n),
                            String::from_utf8_lossy(&backup)
                        ));
                    }
                }
                if ok {
                    let _ = rfs::unlinkat(&r.dir, backup.as_slice(), AtFlags::REMOVEDIR);
                }
            }
            Err(e) => {
                ok = false;
                report.problems.push(format!(
                    "cannot open {show}/{}: {e}",
                    String::from_utf8_lossy(&backup)
                ));
            }
        }
    }
    let staging_path = r
        .path
        .as_path()
        .join(String::from_utf8_lossy(&r.staging).as_ref());
    if keep {
        report.kept.push(staging_path);
    } else if let Err(e) = confine::remove_tree(r.dir.as_fd(), &r.staging) {
        ok = false;
        report
            .problems
            .push(format!("cannot remove {}: {e}", staging_path.display()));
    }
    if r.created && !keep && ok {
        match rfs::unlinkat(&r.parent, r.name.as_slice(), AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => {
                ok = false;
                report.problems.push(format!(
                    "cannot remove {show} (created by this migration): {e}"
                ));
            }
        }
    } else if let Some(meta) = &r.orig {
        if let Err(e) = apply_meta(r.dir.as_fd(), meta) {
            report
                .problems
                .push(format!("cannot restore the metadata of {show}: {e}"));
        }
    }
    if ok {
        report.restored.push(r.path.as_path().to_path_buf());
    }
}

/// The staging tree of `r`, created again when install already removed it.
fn reopen_staging_tree(r: &RecvRoot) -> Result<OwnedFd, Errno> {
    match rfs::mkdirat(&r.dir, r.staging.as_slice(), Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    let s = rfs::openat(
        &r.dir,
        r.staging.as_slice(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match rfs::mkdirat(&s, "tree", Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    rfs::openat(
        &s,
        "tree",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The copies are in place; the migration has not committed yet. [`InstalledSync::commit`]
/// when it does, [`InstalledSync::rollback`] (or drop) when it fails.
pub struct InstalledSync {
    session: String,
    keep_partial: bool,
    roots: Vec<(RecvRoot, RootUndo)>,
    done: bool,
}

impl std::fmt::Debug for InstalledSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstalledSync")
            .field("session", &self.session)
            .field(
                "roots",
                &self.roots.iter().map(|(r, _)| &r.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl InstalledSync {
    /// The migration committed: removes what the roots held before and the staging
    /// directories. The roots' times are set once more afterwards (removing the backup
    /// changed them), which may undo a change the restored process made to a root's own
    /// mtime in between.
    pub fn commit(mut self) -> Result<(), SyncError> {
        self.done = true;
        let mut first_err = None;
        for (r, u) in &self.roots {
            let show = r.path.to_string();
            if u.backup {
                if let Err(e) =
                    confine::remove_tree(r.dir.as_fd(), backup_name(&self.session).as_bytes())
                {
                    first_err.get_or_insert(SyncError::io(
                        "remove the previous content of",
                        show.clone(),
                        e,
                    ));
                }
                // removing the backup changed the root's times: set them again
                if let Some(meta) = &r.root_meta {
                    if let Err(e) = rfs::futimens(&r.dir, &times(meta)) {
                        first_err.get_or_insert(SyncError::io("set times of", show, e.into()));
                    }
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// The migration failed after install: the roots get back what they held, the copies are
    /// removed (or kept in the staging directories with `keep_partial`), roots this session
    /// created are removed.
    pub fn rollback(mut self) -> RollbackReport {
        self.rollback_now()
    }

    fn rollback_now(&mut self) -> RollbackReport {
        let mut report = RollbackReport::default();
        if self.done {
            return report;
        }
        self.done = true;
        for (r, u) in self.roots.iter().rev() {
            undo_root(r, u, &self.session, self.keep_partial, &mut report);
        }
        report
    }
}

impl Drop for InstalledSync {
    fn drop(&mut self) {
        if !self.done {
            let report = self.rollback_now();
            tracing::warn!(session = %self.session, ?report, "installed sync dropped before commit: rolled back");
        }
    }
}

fn body_name(b: &Body) -> &'static str {
    match b {
        Body::RoundBegin(_) => "RoundBegin",
        Body::Remove(_) => "Remove",
        Body::Dir(_) => "Dir",
        Body::Symlink(_) => "Symlink",
        Body::Fifo(_) => "Fifo",
        Body::HardLink(_) => "HardLink",
        Body::FileBegin(_) => "FileBegin",
        Body::Literal(_) => "Literal",
        Body::Delta(_) => "Delta",
        Body::SegmentEnd(_) => "SegmentEnd",
        Body::FileEnd(_) => "FileEnd",
        Body::RoundEnd(_) => "RoundEnd",
    }
}

fn times(m: &Meta) -> Timestamps {
    Timestamps {
        last_access: m.atime.to_timespec(),
        last_modification: m.mtime.to_timespec(),
    }
}

/// Owner, then mode (a chown clears set-id bits), then times (last: the others change ctime
/// only).
fn apply_meta(fd: BorrowedFd<'_>, m: &Meta) -> Result<(), Errno> {
    rfs::fchown(
        fd,
        Some(Uid::from_raw_unchecked(m.uid)),
        Some(Gid::from_raw_unchecked(m.gid)),
    )?;
    rfs::fchmod(fd, Mode::from_raw_mode(m.mode & 0o7777))?;
    rfs::futimens(fd, &times(m))
}

/// Granularity of the comparison before writing a delta's output: a page.
const WRITE_GRAIN: usize = 4096;

/// The runs `(offset, len)` of `new` that differ from `old` (compared in `grain`-byte
/// pieces; bytes beyond `old` always differ), adjacent pieces joined.
fn changed_runs(old: &[u8], new: &[u8], grain: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut o = 0;
    while o < new.len() {
        let n = grain.min(new.len() - o);
        let same = o + n <= old.len() && old[o..o + n] == new[o..o + n];
        if !same {
            match runs.last_mut() {
                Some((s, l)) if *s + *l == o => *l += n,
                _ => runs.push((o, n)),
            }
        }
        o += n;
    }
    runs
}

fn within_extents(extents: &[(u64, u64)], off: u64, len: u64) -> bool {
    // the extent starting at or before `off`
    let i = extents.partition_point(|&(o, _)| o <= off);
    i > 0 && {
        let (o, n) = extents[i - 1];
        off + len <= o + n
    }
}

fn holes(extents: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(o, n) in extents {
        if o > pos {
            out.push((pos, o - pos));
        }
        pos = o + n;
    }
    if size > pos {
        out.push((pos, size - pos));
    }
    out
}

/// Zeroes the bytes of `buf` (the file's bytes from `start`) that lie outside `extents`.
fn zero_outside(buf: &mut [u8], start: u64, extents: &[(u64, u64)]) {
    let end = start + buf.len() as u64;
    let mut pos = start;
    for &(o, n) in extents {
        if o + n <= start {
            continue;
        }
        if o >= end {
            break;
        }
        if o > pos {
            buf[(pos - start) as usize..(o - start) as usize].fill(0);
        }
        pos = pos.max(o + n);
    }
    if pos < end {
        buf[(pos - start) as usize..].fill(0);
    }
}

fn punch_hole(fd: BorrowedFd<'_>, off: u64, len: u64) -> std::io::Result<()> {
    match rfs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) => {
            // no holes on this file system: zeros keep the content right (never past the end)
            let end = (off + len).min(rfs::fstat(fd)?.st_size as u64);
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut o = off;
            while o < end {
                let k = (end - o).min(zeros.len() as u64) as usize;
                write_at(fd, &zeros[..k], o)?;
                o += k as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn copy_all(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: u64) -> std::io::Result<()> {
    let (mut a, mut b) = (0u64, 0u64);
    while a < len {
        let want = (len - a).min(1 << 30) as usize;
        let n = rfs::copy_file_range(from, Some(&mut a), to, Some(&mut b), want)?;
        if n == 0 {
            break;
        }
    }
    Ok(())
}

fn write_at(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(fd, &buf[done..], offset + done as u64) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_pages_are_written() {
        let old = vec![1u8; 10_000];
        let mut new = old.clone();
        new[5000] = 2;
        assert_eq!(changed_runs(&old, &new, 4096), vec![(4096, 4096)]);
        new.extend_from_slice(&[3; 100]);
        assert_eq!(changed_runs(&old, &new, 4096), vec![(4096, 6004)]);
        new[9000] = 2;
        assert_eq!(changed_runs(&old, &new, 4096), vec![(4096, 6004)]);
        assert_eq!(changed_runs(&[], &[1, 2, 3], 2), vec![(0, 3)]);
        assert!(changed_runs(&old, &old, 4096).is_empty());
    }

    #[test]
    fn extent_helpers() {
        let e = [(10, 10), (30, 5)];
        assert!(within_extents(&e, 10, 10));
        assert!(within_extents(&e, 31, 4));
        assert!(!within_extents(&e, 19, 2));
        assert!(!within_extents(&e, 0, 1));
        assert_eq!(holes(&e, 40), vec![(0, 10), (20, 10), (35, 5)]);
        assert_eq!(holes(&[], 7), vec![(0, 7)]);
        let mut buf = vec![1u8; 30];
        zero_outside(&mut buf, 5, &e);
        let want: Vec<u8> = (5..35)
            .map(|i| u8::from((10..20).contains(&i) || (30..35).contains(&i)))
            .collect();
        assert_eq!(buf, want);
    }
}
