//! `haul pid --sync PATH` (issue #18): the trees the process works in travel with it, for
//! nodes that share no storage. The file-level work is [`crate::sync`]'s; this module drives it
//! over the control channel at the right moments of a migration:
//!
//! ```text
//! before the freeze (Session::sync_before_freeze, nothing frozen: a failure leaves the
//! process running here and the destination removes its partial copy)
//!   scan the trees (SyncSource::open: device nodes, mount points, symlinks out refused)
//!   held files outside the trees ──CheckFiles──▶ stat there ◀──FilesChecked── refuse naming them
//!   SyncOpen{roots, bytes} ───────────────────▶ roots checked, staged ◀──SyncOpened──
//!   rounds while the process runs: RoundBegin … RoundEnd ──▶ ◀── RoundApplied
//!     until RoundPolicy says freeze (small enough, no longer shrinking, or max rounds)
//! [pre-copy's memory rounds, then one more file round to catch up (sync_catch_up)]
//! frozen, after post-dump, before the images (Session::sync_final)
//!   the final round: only what changed since the last one ──▶ ◀── RoundApplied
//! Restore: the destination installs the copy before CRIU restores, commits it once the
//! process runs there, and rolls it back on any failure before that
//! ```
//!
//! File I/O is blocking: each round runs on a blocking thread that hands its messages to
//! the control channel through a channel of [`limits::SYNC_QUEUE`] messages (at most that
//! many, each at most [`crate::sync::limits::MAX_MESSAGE`] bytes, wait in memory), so reading
//! the next file overlaps sending the last one.

use std::path::PathBuf;
use std::time::Instant;

use tracing::info;

use crate::sync::pb as spb;
use crate::sync::preflight::{check_requests, held_files, outside_roots, refuse_on};
use crate::sync::stats::{SyncReport, SyncRoundReport};
use crate::sync::{Decision, RoundPolicy, RoundStats, SymlinkPolicy, SyncError, SyncSource};

use super::super::control::ChannelError;
use super::super::limits::{self, Wait};
use super::super::tree;
use super::session::Session;
use super::SourceError;

/// What `haul pid` syncs, and how.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// The trees (`--sync PATH`, repeatable), as the user named them; none: shared storage.
    pub paths: Vec<PathBuf>,
    /// When the rounds that run while the process runs stop (`--sync-max-rounds`,
    /// `--sync-target`).
    pub policy: RoundPolicy,
    /// Symlinks that point out of a tree: refused by default (`--sync-any-symlink` copies
    /// them as they are).
    pub symlinks: SymlinkPolicy,
}

/// A failed file sync on the source.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum FileSyncError {
    /// the destination {peer} runs a haul without file sync: upgrade haul there, or keep the trees on shared storage and drop --sync
    Unsupported {
        /// The destination.
        peer: String,
    },
    /// --sync {path}: {source}
    Path {
        /// The path as given.
        path: PathBuf,
        /// Why it cannot be synced.
        #[source]
        source: std::io::Error,
    },
    /// file sync: {0}
    Sync(#[from] SyncError),
    /// file sync: the round's reader thread failed: {0}
    Worker(String),
}

/// The source's side of the sync across the migration's phases.
#[derive(Debug, Default)]
pub struct FileSync {
    /// The destination said it speaks file sync (`Ready.features.file_sync`).
    destination_speaks_sync: bool,
    /// Between `SyncOpen` and the final round.
    source: Option<SyncSource>,
    /// Why the rounds stopped.
    decision: String,
}

impl FileSync {
    /// The sync of a migration whose destination does (`true`) or does not speak file sync.
    pub fn new(destination_speaks_sync: bool) -> FileSync {
        FileSync {
            destination_speaks_sync,
            ..FileSync::default()
        }
    }
}

/// The canonical path of each `--sync` argument (the path the process sees, without
/// symlinks): what the destination recreates.
pub fn canonical_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FileSyncError> {
    paths
        .iter()
        .map(|p| {
            let c = std::fs::canonicalize(p).map_err(|source| FileSyncError::Path {
                path: p.clone(),
                source,
            })?;
            if !c.is_dir() {
                return Err(FileSyncError::Path {
                    path: p.clone(),
                    source: std::io::Error::other("not a directory (--sync names directories)"),
                });
            }
            crate::sync::path::RootPath::from_path(&c)
                .map_err(|e| SyncError::path(format!("--sync {}", p.display()), e))?;
            Ok(c)
        })
        .collect()
}

fn worker(e: tokio::task::JoinError) -> SourceError {
    FileSyncError::Worker(e.to_string()).into()
}

impl Session {
    /// Whether this migration syncs files.
    fn syncs(&self) -> bool {
        !self.cfg.sync.paths.is_empty()
    }

    /// Before anything is frozen: the trees are scanned, the files the process holds outside
    /// them are checked on the destination, the destination stages the roots, and rounds run
    /// while the process runs until the policy says the final one may come. A no-op without
    /// `--sync`.
    pub async fn sync_before_freeze(&mut self) -> Result<(), SourceError> {
        if !self.syncs() {
            return Ok(());
        }
        if !self.sync.destination_speaks_sync {
            return Err(FileSyncError::Unsupported {
                peer: self.cfg.destination.clone(),
            }
            .into());
        }
        let roots = canonical_roots(&self.cfg.sync.paths)?;
        let img = std::fs::canonicalize(&self.cfg.img_path).unwrap_or(self.cfg.img_path.clone());
        if let Some(r) = roots
            .iter()
            .find(|r| img.starts_with(r) || r.starts_with(&img))
        {
            return Err(FileSyncError::Path {
                path: r.clone(),
                source: std::io::Error::other(format!(
                    "it overlaps haul's image directory {} (written during the migration): sync another directory or give --img-path elsewhere",
                    img.display()
                )),
            }
            .into());
        }
        self.check_held_files(&roots).await?;
        let cfg = crate::sync::SourceConfig {
            session: self.report.migration_id.clone(),
            roots: roots.clone(),
            symlinks: self.cfg.sync.symlinks,
        };
        let (source, open) = tokio::task::spawn_blocking(move || SyncSource::open(cfg))
            .await
            .map_err(worker)?
            .map_err(FileSyncError::from)?;
        let (data_bytes, entries) = (open.data_bytes, open.entries);
        let opened: spb::SyncOpened = self
            .ctl
            .request(
                open,
                limits::REPLY.named("the destination to stage the synced trees"),
            )
            .await?;
        info!(
            "syncing {} ({} entries, {} MiB of data) to {}; the destination accepts {} MiB",
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            entries,
            data_bytes >> 20,
            self.cfg.destination,
            opened.free_bytes >> 20
        );
        self.report.sync = Some(SyncReport {
            roots: roots.iter().map(|r| r.display().to_string()).collect(),
            data_bytes,
            entries,
            ..SyncReport::default()
        });
        self.sync.source = Some(source);
        self.sync_rounds(false).await
    }

    /// After pre-copy's memory rounds (which took time while files kept changing): at least
    /// one more round, then as many as the policy wants. A no-op without `--sync`.
    pub async fn sync_catch_up(&mut self) -> Result<(), SourceError> {
        if self.sync.source.is_none() {
            return Ok(());
        }
        self.sync_rounds(true).await
    }

    /// While frozen (after `post-dump`, before the images and `Restore`): the final round,
    /// only what changed since the last one. Its time is part of the downtime; the report
    /// gives its share. A no-op without `--sync`.
    pub async fn sync_final(&mut self, t_freeze: Instant) -> Result<(), SourceError> {
        if self.sync.source.is_none() {
            return Ok(());
        }
        let frozen_before = t_freeze.elapsed().as_secs_f64();
        let st = self.sync_round(true).await?;
        if let Some(r) = self.report.sync.as_mut() {
            r.final_round_secs = st.elapsed.as_secs_f64();
            r.frozen_before_final_secs = frozen_before;
            r.decision = std::mem::take(&mut self.sync.decision);
        }
        Ok(())
    }

    /// Once the process runs on the destination: the final round's share of the downtime.
    pub fn sync_account(&mut self) {
        let downtime = self.report.downtime_secs;
        if let Some(r) = self.report.sync.as_mut() {
            if downtime > 0.0 {
                r.final_share_of_downtime = Some(r.final_round_secs / downtime);
            }
        }
    }

    /// Rounds while the process runs until the policy says freeze; `at_least_one` runs one
    /// whatever the rounds before said.
    async fn sync_rounds(&mut self, mut at_least_one: bool) -> Result<(), SourceError> {
        let policy = self.cfg.sync.policy;
        loop {
            if !at_least_one {
                let history = self
                    .sync
                    .source
                    .as_ref()
                    .map(|s| s.history().to_vec())
                    .unwrap_or_default();
                if let Decision::Freeze(why) = policy.decide(&history) {
                    info!("sync rounds stop: {why}");
                    self.sync.decision = why;
                    return Ok(());
                }
            }
            at_least_one = false;
            self.sync_round(false).await?;
        }
    }

    /// One round: the blocking reader produces its messages, this task sends them, then the
    /// destination's `RoundApplied` completes the round's figures.
    async fn sync_round(&mut self, final_round: bool) -> Result<RoundStats, SourceError> {
        let Some(mut source) = self.sync.source.take() else {
            return Err(
                FileSyncError::Sync(SyncError::protocol("no sync session", "a round")).into(),
            );
        };
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<spb::SyncMessage>(limits::SYNC_QUEUE);
        let reader = tokio::task::spawn_blocking(move || {
            let produced = (|| {
                let mut round = source.round(final_round)?;
                while let Some(m) = round.next_message()? {
                    if tx.blocking_send(m).is_err() {
                        // the sending side gave up (the channel failed): it says why
                        return Ok(());
                    }
                }
                Ok::<(), SyncError>(())
            })();
            (source, produced)
        });
        let mut sent: Result<(), ChannelError> = Ok(());
        while let Some(m) = rx.recv().await {
            if let Err(e) = self.ctl.send(m).await {
                sent = Err(e);
                break;
            }
        }
        drop(rx);
        let (source, produced) = reader.await.map_err(worker)?;
        if let Err(e) = sent {
            // the destination may have said why before it closed
            return Err(self.peer_reason().await.unwrap_or(e).into());
        }
        produced.map_err(FileSyncError::from)?;
        let wait = Wait {
            what: if final_round {
                "the destination to apply the final sync round"
            } else {
                "the destination to apply a sync round"
            },
            limit: limits::REPLY.limit,
        };
        let applied: spb::RoundApplied = self.ctl.expect(wait).await?;
        let mut source = source;
        source.applied(&applied).map_err(FileSyncError::from)?;
        let mut st = source
            .history()
            .last()
            .cloned()
            .ok_or_else(|| FileSyncError::Sync(SyncError::protocol("a round", "no figures")))?;
        // the round as the migration saw it: from its start to the destination's answer
        st.elapsed = t0.elapsed();
        info!("{}", st.log_line());
        if let Some(r) = self.report.sync.as_mut() {
            r.rounds.push(SyncRoundReport::from_stats(&st));
        }
        if !final_round {
            self.sync.source = Some(source);
        }
        Ok(st)
    }

    /// The peer's `Error`, if it sent one before the channel failed (waits briefly).
    async fn peer_reason(&mut self) -> Option<ChannelError> {
        let wait = Wait {
            what: "the destination's reason",
            limit: std::time::Duration::from_secs(2),
        };
        match self.ctl.recv(wait).await {
            Err(e @ ChannelError::PeerFailed { .. }) => Some(e),
            _ => None,
        }
    }

    /// Pre-flight: every regular file the tree holds open, maps or runs outside the synced
    /// trees must be on the destination with the same size and mode; refuses naming them.
    async fn check_held_files(&mut self, roots: &[PathBuf]) -> Result<(), SourceError> {
        let pid = self.cfg.pid;
        let roots_owned = roots.to_vec();
        let outside = tokio::task::spawn_blocking(move || -> Result<_, SyncError> {
            let pids = tree::descendants(pid);
            let held = held_files(&pids)?;
            let parsed: Vec<_> = roots_owned
                .iter()
                .filter_map(|r| crate::sync::path::RootPath::from_path(r).ok())
                .collect();
            Ok(outside_roots(&held, &parsed))
        })
        .await
        .map_err(worker)?
        .map_err(FileSyncError::from)?;
        let mut answers = Vec::new();
        for req in check_requests(&outside) {
            let wait = limits::REPLY.named("the destination's check of the held files");
            let a: spb::FilesChecked = self.ctl.request(req, wait).await?;
            answers.push(a);
        }
        refuse_on(&answers).map_err(FileSyncError::from)?;
        info!(
            "pre-flight: the tree holds {} file(s) outside the synced trees, all present on the destination",
            outside.len()
        );
        Ok(())
    }
}
