//! The source side: scans the synced trees each round, diffs them against what it already
//! sent, and produces the round's messages one at a time, each bounded
//! ([`super::limits::MAX_MESSAGE`]), reading file data only when the message that carries it
//! is asked for (memory: one segment and its delta at a time).
//!
//! Regular files travel in segments of [`SEGMENT_LEN`] bytes. For each segment the source
//! keeps the BLAKE3 hash and the rsync signature (fast_rsync, MD4 blocks of
//! [`RSYNC_BLOCK`] bytes) of what it sent, so that a later round sends only the segments
//! whose hash changed, each as an rsync delta against the copy the destination already has;
//! a segment with no previous copy goes as literal bytes of its data extents (holes are never
//! sent). Every segment is verified with BLAKE3 on the destination.
//!
//! The source only reads: files are opened `O_RDONLY | O_NOFOLLOW | O_NOATIME` through
//! confined descriptors, so a failed migration leaves them (and their access times) as
//! they were.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use fast_rsync::{Signature, SignatureOptions};
use prost::Message as _;
use rustix::fs::{self as rfs, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::confine::{self, file_type};
use super::error::SyncError;
use super::limits::{
    CHUNK, MAX_MESSAGE, MAX_ROOTS, RACY_WINDOW_NS, RSYNC_BLOCK, RSYNC_STRONG, SEGMENT_LEN,
};
use super::manifest::{self, Entry, Kind, KnownLinks, Manifest, Meta, Stamp, SymlinkPolicy, Time};
use super::path::{RelPath, RootPath};
use super::pb::{self, sync_message::Body};
use super::plan::{self, Basis, Op, SentEntry};
use super::stats::RoundStats;

/// What the source syncs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The migration id: names the destination's staging directories (a plain file name).
    pub session: String,
    /// The trees (`--sync PATH`), absolute and canonical (`realpath`), none inside another.
    pub roots: Vec<PathBuf>,
    /// What to do with symlinks that point out of a tree.
    pub symlinks: SymlinkPolicy,
}

/// The content the destination holds of one regular file: its segments that hold data, by
/// index (a segment not listed is all holes there). Sparse files cost nothing for their holes.
#[derive(Debug, Clone, Default)]
struct Content {
    segs: BTreeMap<u64, Seg>,
}

#[derive(Debug, Clone)]
struct Seg {
    len: u64,
    hash: [u8; 32],
    sig: Signature,
}

#[derive(Debug, Clone)]
struct Sent {
    rec: SentEntry,
    content: Option<Content>,
}

struct SourceRoot {
    path: RootPath,
    fd: OwnedFd,
    sent: BTreeMap<RelPath, Sent>,
}

/// The source side of one sync session: a sequence of rounds, the last one final.
///
/// ```text
/// let (mut src, open) = SyncSource::open(cfg)?;      // send `open`, get SyncOpened
/// loop {
///     let mut round = src.round(false)?;            // process running
///     while let Some(m) = round.next_message()? { send(m) }
///     src.applied(&recv_round_applied())?;
///     if policy.decide(src.history()) is Freeze { break }
/// }
/// // freeze the process, then
/// let mut round = src.round(true)?; ...              // final round, frozen
/// ```
pub struct SyncSource {
    session: String,
    symlinks: SymlinkPolicy,
    roots: Vec<SourceRoot>,
    next_round: u32,
    final_done: bool,
    poisoned: bool,
    first_scan: Option<Vec<Manifest>>,
    history: Vec<RoundStats>,
}

impl std::fmt::Debug for SyncSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSource")
            .field("session", &self.session)
            .field(
                "roots",
                &self.roots.iter().map(|r| &r.path).collect::<Vec<_>>(),
            )
            .field("next_round", &self.next_round)
            .finish()
    }
}

impl SyncSource {
    /// Checks the roots (absolute, canonical, no symlink on the way, none inside another, at
    /// most [`MAX_ROOTS`]), scans them once (refusing device nodes, mount points and, by
    /// default, symlinks out of a tree: the pre-flight, before anything is frozen), and returns
    /// the session with the [`pb::SyncOpen`] to send.
    pub fn open(cfg: SourceConfig) -> Result<(SyncSource, pb::SyncOpen), SyncError> {
        crate::wire::names::validate(&cfg.session).map_err(|e| SyncError::Root {
            root: PathBuf::from(&cfg.session),
            reason: format!("session id: {e}"),
        })?;
        if cfg.roots.len() > MAX_ROOTS {
            return Err(SyncError::limit(
                "number of --sync roots",
                cfg.roots.len() as u64,
                MAX_ROOTS as u64,
            ));
        }
        let mut roots: Vec<SourceRoot> = Vec::new();
        for r in &cfg.roots {
            let path = RootPath::from_path(r)
                .map_err(|e| SyncError::path(format!("--sync {}", r.display()), e))?;
            for other in &roots {
                if path.is_within(&other.path) || other.path.is_within(&path) {
                    return Err(SyncError::Root {
                        root: r.clone(),
                        reason: format!("it overlaps --sync {}: name each tree once", other.path),
                    });
                }
            }
            let fd = manifest::open_root(&path)?;
            roots.push(SourceRoot {
                path,
                fd,
                sent: BTreeMap::new(),
            });
        }
        let mut scans = Vec::new();
        for r in &roots {
            scans.push(manifest::scan(
                &r.path,
                r.fd.as_fd(),
                cfg.symlinks,
                &KnownLinks::new(),
            )?);
        }
        let open = pb::SyncOpen {
            session: cfg.session.clone(),
            roots: roots.iter().map(|r| r.path.as_bytes().to_vec()).collect(),
            data_bytes: scans.iter().map(|m| m.data_bytes()).sum(),
            entries: scans.iter().map(|m| m.entries.len() as u64).sum(),
        };
        Ok((
            SyncSource {
                session: cfg.session,
                symlinks: cfg.symlinks,
                roots,
                next_round: 1,
                final_done: false,
                poisoned: false,
                first_scan: Some(scans),
                history: Vec::new(),
            },
            open,
        ))
    }

    /// Starts the next round: scans every root, plans what changed since the previous round,
    /// and returns the round, whose messages are produced on demand. `final_round` is the one
    /// run while the process is frozen; no round follows it.
    pub fn round(&mut self, final_round: bool) -> Result<Round<'_>, SyncError> {
        if self.poisoned {
            return Err(SyncError::protocol(
                "a previous round was abandoned",
                "another round (start the sync over: the destination's copy is unknown)",
            ));
        }
        if self.final_done {
            return Err(SyncError::protocol(
                "the final round is done",
                "another round",
            ));
        }
        let started = Instant::now();
        let scans = match self.first_scan.take() {
            Some(s) => s,
            None => {
                let mut v = Vec::new();
                for r in &self.roots {
                    let known: KnownLinks = r
                        .sent
                        .iter()
                        .filter_map(|(p, s)| match &s.rec.entry.kind {
                            Kind::Symlink { target } => {
                                Some((p.clone(), (s.rec.entry.stamp, target.clone())))
                            }
                            _ => None,
                        })
                        .collect();
                    v.push(manifest::scan(
                        &r.path,
                        r.fd.as_fd(),
                        self.symlinks,
                        &known,
                    )?);
                }
                v
            }
        };
        let mut queue = VecDeque::new();
        let mut entries_scanned = 0;
        for (i, (r, m)) in self.roots.iter().zip(&scans).enumerate() {
            entries_scanned += m.entries.len() as u64;
            let sent: BTreeMap<RelPath, SentEntry> = r
                .sent
                .iter()
                .map(|(p, s)| (p.clone(), s.rec.clone()))
                .collect();
            for op in plan::plan(&sent, m) {
                queue.push_back((i, op));
            }
        }
        let round = self.next_round;
        self.next_round += 1;
        self.poisoned = true; // until the round completes
        let stats = RoundStats {
            round,
            final_round,
            entries_scanned,
            scan_time: started.elapsed(),
            ..Default::default()
        };
        Ok(Round {
            src: self,
            scans,
            queue,
            started,
            stats,
            phase: Phase::Begin,
            file: None,
            pending: VecDeque::new(),
        })
    }

    /// Records the destination's answer to a round (its figures join the round's stats).
    pub fn applied(&mut self, reply: &pb::RoundApplied) -> Result<(), SyncError> {
        match self.history.last_mut() {
            Some(s) if s.round == reply.round && s.applied.is_none() => {
                s.applied = Some(*reply);
                Ok(())
            }
            _ => Err(SyncError::protocol(
                "no round waits for its answer",
                format!("RoundApplied for round {}", reply.round),
            )),
        }
    }

    /// Every completed round's figures, in order.
    pub fn history(&self) -> &[RoundStats] {
        &self.history
    }

    /// Whether the final round has completed.
    pub fn final_done(&self) -> bool {
        self.final_done
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The roots.
    pub fn roots(&self) -> Vec<RootPath> {
        self.roots.iter().map(|r| r.path.clone()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Begin,
    Ops,
    Done,
}

/// One round in progress: call [`Round::next_message`] until it returns `None`; the last
/// message is a `RoundEnd`. Dropping a round before that abandons the session (the source no
/// longer knows what the destination holds).
pub struct Round<'a> {
    src: &'a mut SyncSource,
    scans: Vec<Manifest>,
    queue: VecDeque<(usize, Op)>,
    started: Instant,
    stats: RoundStats,
    phase: Phase,
    file: Option<FileCursor>,
    pending: VecDeque<pb::SyncMessage>,
}

impl std::fmt::Debug for Round<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Round")
            .field("round", &self.stats.round)
            .field("final", &self.stats.final_round)
            .field("queued", &self.queue.len())
            .finish()
    }
}

struct FileCursor {
    root: usize,
    path: RelPath,
    fd: OwnedFd,
    entry: Entry,
    racy: bool,
    extents: Vec<(u64, u64)>,
    prev: Option<Content>,
    new: Content,
    check: bool,
    /// The last segment visited.
    done_seg: Option<u64>,
    nseg: u64,
}

impl FileCursor {
    /// The next segment to look at: one that holds data now (an extent overlaps it) or held
    /// data before (it may have become a hole), below the end of the file.
    fn next_segment(&self) -> Option<u64> {
        let from = self.done_seg.map_or(0, |d| d + 1);
        let byte = from.saturating_mul(SEGMENT_LEN);
        let i = self.extents.partition_point(|&(o, n)| o + n <= byte);
        let by_extent = self
            .extents
            .get(i)
            .map(|&(o, _)| (o / SEGMENT_LEN).max(from));
        let by_prev = self
            .prev
            .as_ref()
            .and_then(|c| c.segs.range(from..).next().map(|(k, _)| *k));
        let next = match (by_extent, by_prev) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        (next < self.nseg).then_some(next)
    }
}

fn msg(body: Body) -> pb::SyncMessage {
    pb::SyncMessage { body: Some(body) }
}

impl Round<'_> {
    /// The figures so far (complete once the `RoundEnd` went out).
    pub fn stats(&self) -> &RoundStats {
        &self.stats
    }

    /// The next message of the round, `None` after `RoundEnd`. Blocking: it reads files.
    pub fn next_message(&mut self) -> Result<Option<pb::SyncMessage>, SyncError> {
        let m = match self.produce() {
            Ok(m) => m,
            Err(e) => {
                self.phase = Phase::Done;
                return Err(e);
            }
        };
        if let Some(m) = &m {
            let len = m.encoded_len();
            debug_assert!(len <= MAX_MESSAGE, "message of {len} bytes");
            self.stats.wire_bytes += len as u64;
            if matches!(m.body, Some(Body::RoundEnd(_))) {
                self.src.history.push(self.stats.clone());
            } else {
                self.stats.messages += 1;
            }
        }
        Ok(m)
    }

    fn produce(&mut self) -> Result<Option<pb::SyncMessage>, SyncError> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            match self.phase {
                Phase::Done => return Ok(None),
                Phase::Begin => {
                    self.phase = Phase::Ops;
                    return Ok(Some(msg(Body::RoundBegin(pb::RoundBegin {
                        round: self.stats.round,
                        r#final: self.stats.final_round,
                    }))));
                }
                Phase::Ops => {}
            }
            if self.file.is_some() {
                self.file_step()?;
                continue;
            }
            match self.queue.pop_front() {
                Some((root, op)) => self.start_op(root, op)?,
                None => {
                    self.phase = Phase::Done;
                    self.stats.elapsed = self.started.elapsed();
                    let end = msg(Body::RoundEnd(pb::RoundEnd {
                        round: self.stats.round,
                        messages: self.stats.messages,
                        entries: self.stats.entries_sent,
                        payload_bytes: self.stats.literal_bytes + self.stats.delta_bytes,
                    }));
                    self.src.poisoned = false;
                    if self.stats.final_round {
                        self.src.final_done = true;
                    }
                    return Ok(Some(end));
                }
            }
        }
    }

    fn show(&self, root: usize, p: &RelPath) -> String {
        self.src.roots[root].path.display_entry(p)
    }

    fn entry(&self, root: usize, p: &RelPath) -> &Entry {
        &self.scans[root].entries[p]
    }

    fn record(&mut self, root: usize, p: &RelPath, entry: Entry, content: Option<Content>) {
        self.src.roots[root].sent.insert(
            p.clone(),
            Sent {
                rec: SentEntry { entry, racy: false },
                content,
            },
        );
    }

    fn start_op(&mut self, root: usize, op: Op) -> Result<(), SyncError> {
        let r = root as u32;
        match op {
            Op::Remove(p) => {
                self.forget_below(root, &p);
                self.stats.removed += 1;
                self.pending.push_back(msg(Body::Remove(pb::Remove {
                    root: r,
                    path: p.as_bytes().to_vec(),
                })));
            }
            Op::Dir(p) => {
                let e = self.entry(root, &p).clone();
                self.pending.push_back(msg(Body::Dir(pb::Dir {
                    root: r,
                    path: p.as_bytes().to_vec(),
                    meta: Some(e.meta.to_pb()),
                })));
                self.record(root, &p, e, None);
                self.stats.entries_sent += 1;
            }
            Op::Symlink(p) => {
                let e = self.entry(root, &p).clone();
                let Kind::Symlink { target } = &e.kind else {
                    unreachable!("planned as a symlink")
                };
                self.pending.push_back(msg(Body::Symlink(pb::Symlink {
                    root: r,
                    path: p.as_bytes().to_vec(),
                    target: target.clone(),
                    meta: Some(e.meta.to_pb()),
                })));
                self.record(root, &p, e, None);
                self.stats.entries_sent += 1;
            }
            Op::Fifo(p) => {
                let e = self.entry(root, &p).clone();
                self.pending.push_back(msg(Body::Fifo(pb::Fifo {
                    root: r,
                    path: p.as_bytes().to_vec(),
                    meta: Some(e.meta.to_pb()),
                })));
                self.record(root, &p, e, None);
                self.stats.entries_sent += 1;
            }
            Op::Link { path, leader } => {
                let leader_there = self.src.roots[root]
                    .sent
                    .get(&leader)
                    .is_some_and(|s| matches!(s.rec.entry.kind, Kind::File { leader: None }));
                if !leader_there {
                    // the leader vanished this round: so does this name, until the next round
                    self.vanished(root, &path);
                    return Ok(());
                }
                let e = self.entry(root, &path).clone();
                self.pending.push_back(msg(Body::HardLink(pb::HardLink {
                    root: r,
                    path: path.as_bytes().to_vec(),
                    leader: leader.as_bytes().to_vec(),
                })));
                self.record(root, &path, e, None);
                self.stats.entries_sent += 1;
            }
            Op::File {
                path,
                basis,
                content,
            } => self.start_file(root, path, basis, content)?,
        }
        Ok(())
    }

    /// Drops `p` and everything below it from the record of what was sent.
    fn forget_below(&mut self, root: usize, p: &RelPath) {
        let sent = &mut self.src.roots[root].sent;
        let below: Vec<RelPath> = sent
            .range(p.clone()..)
            .take_while(|(q, _)| q.as_bytes().starts_with(p.as_bytes()))
            .filter(|(q, _)| q.is_within(p))
            .map(|(q, _)| q.clone())
            .collect();
        for q in below {
            sent.remove(&q);
        }
    }

    /// An entry that disappeared (or changed type) between the scan and its read: removed on
    /// the destination too if it was there; the next round sends what is there then.
    fn vanished(&mut self, root: usize, p: &RelPath) {
        if self.src.roots[root].sent.contains_key(p) {
            self.forget_below(root, p);
            self.stats.removed += 1;
            self.pending.push_back(msg(Body::Remove(pb::Remove {
                root: root as u32,
                path: p.as_bytes().to_vec(),
            })));
        }
    }

    fn start_file(
        &mut self,
        root: usize,
        path: RelPath,
        mut basis: Basis,
        check: bool,
    ) -> Result<(), SyncError> {
        let show = self.show(root, &path);
        let fd = match open_for_read(self.src.roots[root].fd.as_fd(), &path) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::ENXIO)
                ) =>
            {
                self.vanished(root, &path);
                return Ok(());
            }
            Err(e) => return Err(SyncError::io("open", show, e)),
        };
        let opened_at = Time::now();
        let st = rfs::fstat(&fd).map_err(|e| SyncError::io("stat", show.clone(), e.into()))?;
        if file_type(st.st_mode) != FileType::RegularFile {
            self.vanished(root, &path);
            return Ok(());
        }
        let entry = Entry {
            kind: Kind::File { leader: None },
            meta: Meta::of(&st),
            stamp: Stamp::of(&st),
        };
        let size = entry.stamp.size;
        let changed_since = opened_at.as_nanos()
            - entry
                .stamp
                .ctime
                .as_nanos()
                .max(entry.meta.mtime.as_nanos());
        let racy = changed_since < RACY_WINDOW_NS;
        let prev_sent = self.src.roots[root].sent.get(&path).cloned();
        let prev = match (&basis, prev_sent) {
            (Basis::None, _) => None,
            (_, Some(s)) => s.content,
            (_, None) => None,
        };
        if prev.is_none() {
            basis = Basis::None;
        }
        // the scan's stamp may be older than the descriptor's: look again
        let check = check
            || prev_sent_stamp_differs(
                self.src.roots[root].sent.get(&path).map(|s| &s.rec.entry),
                &entry,
            );
        let extents = manifest::data_extents(fd.as_fd(), size)
            .map_err(|e| SyncError::io("find data extents of", show.clone(), e))?;
        self.pending.push_back(msg(Body::FileBegin(pb::FileBegin {
            root: root as u32,
            path: path.as_bytes().to_vec(),
            meta: Some(entry.meta.to_pb()),
            size,
            extents: extents
                .iter()
                .map(|&(offset, len)| pb::Extent { offset, len })
                .collect(),
            basis: match basis {
                Basis::None => pb::Basis::None,
                Basis::InPlace => pb::Basis::InPlace,
                Basis::Copy => pb::Basis::Copy,
            } as i32,
            segment_len: SEGMENT_LEN,
        })));
        self.stats.entries_sent += 1;
        self.stats.files_sent += 1;
        let check = check || basis == Basis::None;
        self.file = Some(FileCursor {
            root,
            path,
            fd,
            entry,
            racy,
            extents,
            new: if check {
                Content::default()
            } else {
                prev.clone().unwrap_or_default()
            },
            prev,
            check,
            done_seg: None,
            nseg: size.div_ceil(SEGMENT_LEN),
        });
        Ok(())
    }

    /// One segment of the current file, or its end.
    fn file_step(&mut self) -> Result<(), SyncError> {
        let f = self.file.as_mut().expect("a file is open");
        let next = if f.check { f.next_segment() } else { None };
        let Some(i) = next else {
            let f = self.file.take().expect("a file is open");
            self.pending.push_back(msg(Body::FileEnd(pb::FileEnd {})));
            let FileCursor {
                root,
                path,
                entry,
                racy,
                new,
                ..
            } = f;
            self.src.roots[root].sent.insert(
                path,
                Sent {
                    rec: SentEntry { entry, racy },
                    content: Some(new),
                },
            );
            return Ok(());
        };
        f.done_seg = Some(i);
        let start = i * SEGMENT_LEN;
        let len = SEGMENT_LEN.min(f.entry.stamp.size - start);
        let ranges: Vec<(u64, u64)> = clip(&f.extents, start, len);
        let prev_seg = f.prev.as_ref().and_then(|c| c.segs.get(&i)).cloned();
        let show = self.src.roots[f.root].path.display_entry(&f.path);
        let seg_index = u32::try_from(i)
            .map_err(|_| SyncError::limit(format!("segments of {show}"), i, u32::MAX as u64))?;
        if ranges.is_empty() {
            // it held data on the destination: make it a hole there (checked as zeros)
            f.new.segs.remove(&i);
            self.pending.push_back(msg(Body::SegmentEnd(pb::SegmentEnd {
                segment: seg_index,
                len,
                blake3: zero_hash(len).to_vec(),
                delta: false,
            })));
            self.stats.segments_literal += 1;
            return Ok(());
        }
        let mut buf = vec![0u8; len as usize];
        for &(off, n) in &ranges {
            let dst = &mut buf[(off - start) as usize..(off - start + n) as usize];
            read_at(f.fd.as_fd(), dst, off).map_err(|e| SyncError::io("read", show.clone(), e))?;
        }
        let hash: [u8; 32] = *blake3::hash(&buf).as_bytes();
        if let Some(p) = &prev_seg {
            if p.len == len && p.hash == hash {
                f.new.segs.insert(i, p.clone());
                return Ok(());
            }
        }
        let sig = Signature::calculate(
            &buf,
            SignatureOptions {
                block_size: RSYNC_BLOCK,
                crypto_hash_size: RSYNC_STRONG,
            },
        );
        let data_bytes: u64 = ranges.iter().map(|r| r.1).sum();
        let mut sent_delta = false;
        if let Some(Seg { sig: base_sig, .. }) = &prev_seg {
            let mut delta = Vec::new();
            fast_rsync::diff(&base_sig.index(), &buf, &mut delta).map_err(|e| {
                SyncError::Delta {
                    path: show.clone(),
                    segment: seg_index,
                    detail: e.to_string(),
                }
            })?;
            if (delta.len() as u64) < data_bytes {
                for piece in delta.chunks(CHUNK) {
                    self.pending.push_back(msg(Body::Delta(pb::Delta {
                        segment: seg_index,
                        data: piece.to_vec(),
                    })));
                }
                self.stats.delta_bytes += delta.len() as u64;
                self.stats.segments_delta += 1;
                sent_delta = true;
            }
        }
        if !sent_delta {
            for &(off, n) in &ranges {
                let mut o = off;
                while o < off + n {
                    let k = (off + n - o).min(CHUNK as u64);
                    let s = (o - start) as usize;
                    self.pending.push_back(msg(Body::Literal(pb::Literal {
                        offset: o,
                        data: buf[s..s + k as usize].to_vec(),
                    })));
                    o += k;
                }
            }
            self.stats.literal_bytes += data_bytes;
            self.stats.segments_literal += 1;
        }
        self.pending.push_back(msg(Body::SegmentEnd(pb::SegmentEnd {
            segment: seg_index,
            len,
            blake3: hash.to_vec(),
            delta: sent_delta,
        })));
        f.new.segs.insert(i, Seg { len, hash, sig });
        Ok(())
    }
}

fn prev_sent_stamp_differs(prev: Option<&Entry>, now: &Entry) -> bool {
    match prev {
        None => true,
        Some(p) => {
            p.stamp.ino != now.stamp.ino
                || p.stamp.size != now.stamp.size
                || p.stamp.ctime != now.stamp.ctime
                || p.meta.mtime != now.meta.mtime
        }
    }
}

/// The parts of `extents` inside `[start, start + len)`.
fn clip(extents: &[(u64, u64)], start: u64, len: u64) -> Vec<(u64, u64)> {
    let end = start + len;
    extents
        .iter()
        .filter_map(|&(o, n)| {
            let a = o.max(start);
            let b = (o + n).min(end);
            (a < b).then(|| (a, b - a))
        })
        .collect()
}

/// BLAKE3 of `len` zero bytes (the hash of a segment that is all holes).
pub(crate) fn zero_hash(len: u64) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    let compute = |len: u64| {
        let zeros = [0u8; 65536];
        let mut h = blake3::Hasher::new();
        let mut left = len;
        while left > 0 {
            let k = left.min(zeros.len() as u64) as usize;
            h.update(&zeros[..k]);
            left -= k as u64;
        }
        *h.finalize().as_bytes()
    };
    if len == SEGMENT_LEN {
        *FULL.get_or_init(|| compute(SEGMENT_LEN))
    } else {
        compute(len)
    }
}

/// Opens a file below a root for reading: confined, not following a final symlink, without
/// touching its access time when allowed, without blocking on a FIFO swapped in.
fn open_for_read(root: BorrowedFd<'_>, path: &RelPath) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    match confine::open_beneath(
        root,
        path.as_bytes(),
        flags | OFlags::NOATIME,
        Mode::empty(),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            confine::open_beneath(root, path.as_bytes(), flags, Mode::empty())
        }
        other => other,
    }
}

/// Fills `buf` from `offset`; a file that ends early leaves the rest zero (it changed while
/// read: the next round reads it again).
fn read_at(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
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
    fn clipping_and_zero_hashes() {
        assert_eq!(clip(&[(0, 10), (20, 10)], 5, 20), vec![(5, 5), (20, 5)]);
        assert!(clip(&[(0, 10)], 10, 5).is_empty());
        assert_eq!(zero_hash(3), *blake3::hash(&[0, 0, 0]).as_bytes());
        assert_eq!(
            zero_hash(SEGMENT_LEN),
            *blake3::hash(&vec![0u8; SEGMENT_LEN as usize]).as_bytes()
        );
    }
}
