//! The destination's side of `haul pid --sync` (issue #18): the copy of the source's trees is
//! built in staging directories inside each synced root while the process still runs on the
//! source, put in place right before CRIU restores, and kept or undone with the migration.
//!
//! ```text
//! Prepared:  SyncOpen ──▶ SyncReceiver::open (roots checked: not `/`, not the image directory
//!                         or a system directory, inside --sync-allow when given, no symlink
//!                         on the way; R/.haul-sync.<id>/ made)            ◀── SyncOpened
//!            CheckFiles ──▶ the held files' size and mode here           ◀── FilesChecked
//!            SyncMessage* ──▶ SyncReceiver::handle (confined writes)      ◀── RoundApplied per round
//!            after the final round: install(): the staged copy moves into each root (old
//!            entries aside), then RoundApplied{install time}
//! Restore:   (installed, checked) CRIU
//! Held:      discard ──▶ rollback (old entries back, the copy removed)
//!            Resume ──▶ post-restore acknowledged: the copy stays, it is the process's now
//! Running:   closed (Finish, or the source gone) ──▶ commit (old entries removed), after
//!            `Restored` went out so that removing them is not part of the downtime
//! any failure before Running (the source gone, an error, a refused path): State::close or
//! Held::discard rolls back
//! ```
//!
//! [`FileSync`] lives in the state that owns the migration ([`super::prepare::Prepared`],
//! then [`super::restore::Held`] and [`super::restore::Running`]), so whatever ends a migration early ends its sync the same
//! way. Everything that touches files runs on a blocking thread. `haul serve
//! --keep-partial-sync` keeps a failed migration's staging directories for inspection
//! (the roots themselves get back what they held).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::sync::receiver::{InstalledSync, ReceiverConfig, RollbackReport, SyncReceiver};
use crate::sync::SyncError;
use crate::wire::pb::message::Body;
use crate::wire::pb::ErrorKind;

use super::Service;

/// Directories no synced root may lie in or contain, besides `/` and the image directory:
/// the system's own (a source may only recreate its process's working trees).
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
    "/sbin", "/sys", "/usr",
];

/// What `haul serve` accepts of file syncs.
#[derive(Debug, Clone, Default)]
pub struct SyncServeOptions {
    /// When not empty, every synced root must lie within one of these (`--sync-allow DIR`).
    pub allow: Vec<PathBuf>,
    /// Keep a failed migration's staging directories (`--keep-partial-sync`).
    pub keep_partial: bool,
    /// Resolve synced roots below this directory instead of `/` (two "nodes" on one file
    /// system in root-free tests; hidden option). Held files are still checked from `/`.
    pub root_prefix: Option<PathBuf>,
}

/// A file sync the destination cannot go on with.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum FileSyncError {
    /// file sync refused: {0}
    Sync(#[from] SyncError),
    /// file sync: SyncOpen names session {got:?}, this migration is {want:?}
    WrongSession {
        /// The migration's id.
        want: String,
        /// The session the source named.
        got: String,
    },
    /// file sync: {got} while {state}
    OutOfOrder {
        /// Where the sync was.
        state: &'static str,
        /// What came.
        got: &'static str,
    },
    /// file sync: the restore came before the final sync round
    NotFinal,
    /// file sync: putting the copy in place failed: {error} (rolled back: {report})
    Install {
        /// What failed.
        error: SyncError,
        /// What the rollback did.
        report: String,
    },
    /// file sync: its worker thread failed: {0}
    Worker(String),
}

impl FileSyncError {
    /// The wire kind the source is told: no space is SPACE, a failed system call IO, the rest
    /// (refused paths, broken messages) PROTOCOL.
    pub fn wire_kind(&self) -> ErrorKind {
        let e = match self {
            FileSyncError::Sync(e) | FileSyncError::Install { error: e, .. } => e,
            FileSyncError::Worker(_) => return ErrorKind::Io,
            _ => return ErrorKind::Protocol,
        };
        match e {
            SyncError::Space { .. } => ErrorKind::Space,
            SyncError::Io { .. } => ErrorKind::Io,
            _ => ErrorKind::Protocol,
        }
    }
}

/// Where one migration's sync is.
#[derive(Debug, Default)]
pub enum FileSync {
    /// No sync (shared storage), or it is over.
    #[default]
    None,
    /// Rounds arrive into the staging directories.
    Receiving(SyncReceiver),
    /// The copy is in place; the migration has not committed.
    Installed(InstalledSync),
}

impl FileSync {
    fn name(&self) -> &'static str {
        match self {
            FileSync::None => "no sync session is open",
            FileSync::Receiving(_) => "receiving",
            FileSync::Installed(_) => "the copy is installed",
        }
    }
}

/// Whether `body` is a file-sync command (handled by [`step`] in the `Prepared` state).
pub fn is_sync(body: &Body) -> bool {
    matches!(
        body,
        Body::SyncOpen(_) | Body::CheckFiles(_) | Body::SyncMessage(_)
    )
}

fn worker(e: tokio::task::JoinError) -> FileSyncError {
    FileSyncError::Worker(e.to_string())
}

/// The receiver's configuration on this node for migration images in `img_dir`.
pub fn receiver_config(service: &Service, img_dir: &Path) -> ReceiverConfig {
    let opts = &service.cfg.sync;
    let mut protected: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    for p in [service.cfg.img_path.as_path(), img_dir] {
        protected.push(std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()));
    }
    ReceiverConfig {
        dest_prefix: opts.root_prefix.clone(),
        allowed: opts.allow.clone(),
        protected,
        keep_partial: opts.keep_partial,
        ..ReceiverConfig::default()
    }
}

/// One file-sync command of migration `id` (images in `img_dir`): the reply to send, if any.
pub async fn step(
    service: &Service,
    sync: &mut FileSync,
    id: &str,
    img_dir: &Path,
    body: Body,
) -> Result<Option<Body>, FileSyncError> {
    match body {
        Body::CheckFiles(req) => {
            let answer = tokio::task::spawn_blocking(move || {
                crate::sync::preflight::check_files(&req, None)
            })
            .await
            .map_err(worker)??;
            Ok(Some(answer.into()))
        }
        Body::SyncOpen(open) => {
            if !matches!(sync, FileSync::None) {
                return Err(FileSyncError::OutOfOrder {
                    state: sync.name(),
                    got: "SyncOpen",
                });
            }
            if open.session != id {
                return Err(FileSyncError::WrongSession {
                    want: id.into(),
                    got: open.session,
                });
            }
            let cfg = receiver_config(service, img_dir);
            let (rx, opened) = tokio::task::spawn_blocking(move || SyncReceiver::open(cfg, &open))
                .await
                .map_err(worker)??;
            info!(
                "migration {id}: file sync of {:?} staged ({} MiB accepted)",
                rx,
                opened.free_bytes >> 20
            );
            *sync = FileSync::Receiving(rx);
            Ok(Some(opened.into()))
        }
        Body::SyncMessage(m) => {
            let mut rx = match std::mem::take(sync) {
                FileSync::Receiving(rx) => rx,
                other => {
                    // put back as it was (an installed copy included): closing the migration
                    // undoes it
                    let state = other.name();
                    *sync = other;
                    return Err(FileSyncError::OutOfOrder {
                        state,
                        got: "SyncMessage",
                    });
                }
            };
            let (rx, handled) = tokio::task::spawn_blocking(move || {
                let r = rx.handle(*m);
                (rx, r)
            })
            .await
            .map_err(worker)?;
            // kept also after an error: closing the migration rolls it back
            let final_done = rx.final_done();
            *sync = FileSync::Receiving(rx);
            let Some(mut applied) = handled? else {
                return Ok(None);
            };
            if final_done {
                // the process is frozen on the source: the copy goes in place now, and the
                // answer says so (and how long it took)
                let t = std::time::Instant::now();
                install(sync).await?;
                applied.install_micros = t.elapsed().as_micros() as u64;
            }
            Ok(Some(applied.into()))
        }
        other => Err(FileSyncError::OutOfOrder {
            state: sync.name(),
            got: crate::wire::pb::Message::of(other).kind_name(),
        }),
    }
}

/// Puts the copy in place once the final round is applied (right after it, and checked again
/// at `Restore`, before CRIU: nothing to do when it is in place or there is no sync). On failure
/// everything is rolled back already.
pub async fn install(sync: &mut FileSync) -> Result<(), FileSyncError> {
    match std::mem::take(sync) {
        FileSync::None => Ok(()),
        installed @ FileSync::Installed(_) => {
            *sync = installed;
            Ok(())
        }
        FileSync::Receiving(rx) => {
            if !rx.final_done() {
                *sync = FileSync::Receiving(rx);
                return Err(FileSyncError::NotFinal);
            }
            let session = rx.session().to_string();
            match tokio::task::spawn_blocking(move || rx.install())
                .await
                .map_err(worker)?
            {
                Ok(installed) => {
                    info!("migration {session}: synced trees in place");
                    *sync = FileSync::Installed(installed);
                    Ok(())
                }
                Err(e) => {
                    let e = *e;
                    Err(FileSyncError::Install {
                        error: e.error,
                        report: describe(&e.report),
                    })
                }
            }
        }
    }
}

/// The process runs here: the copy stays, what the roots held before goes.
pub async fn commit(sync: FileSync) {
    match sync {
        FileSync::None => {}
        FileSync::Installed(installed) => {
            let r = tokio::task::spawn_blocking(move || installed.commit()).await;
            match r {
                Ok(Ok(())) => info!("synced trees committed"),
                Ok(Err(e)) => warn!("synced trees committed, but: {e}"),
                Err(e) => warn!("committing the synced trees failed: {e}"),
            }
        }
        FileSync::Receiving(rx) => {
            // a migration that ran without installing: nothing of it is in place
            rollback(
                FileSync::Receiving(rx),
                "the migration ended before its restore",
            )
            .await;
        }
    }
}

/// The migration failed: the roots get back what they held, the copy goes (or its staging
/// directories stay with `--keep-partial-sync`).
pub async fn rollback(sync: FileSync, why: &str) {
    let report = match sync {
        FileSync::None => return,
        FileSync::Receiving(rx) => tokio::task::spawn_blocking(move || rx.rollback()).await,
        FileSync::Installed(i) => tokio::task::spawn_blocking(move || i.rollback()).await,
    };
    match report {
        Ok(r) if r.problems.is_empty() => {
            info!("file sync rolled back ({why}): {}", describe(&r))
        }
        Ok(r) => warn!(
            "file sync rolled back ({why}) with problems: {}",
            describe(&r)
        ),
        Err(e) => warn!("rolling back the file sync failed: {e}"),
    }
}

/// A rollback's report in words.
fn describe(r: &RollbackReport) -> String {
    let list = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !r.restored.is_empty() {
        parts.push(format!("restored {}", list(&r.restored)));
    }
    if !r.kept.is_empty() {
        parts.push(format!("partial copy kept in {}", list(&r.kept)));
    }
    if !r.problems.is_empty() {
        parts.push(format!("problems: {}", r.problems.join("; ")));
    }
    if parts.is_empty() {
        "nothing to undo".into()
    } else {
        parts.join("; ")
    }
}
