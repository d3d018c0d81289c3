//! A stand-in for CRIU that answers from a script: every request succeeds (or fails, where
//! the script says so) without touching a process. It lets both sides' state machines run
//! without root or CRIU, under the fuzz target and the protocol-state tests, and it counts
//! operations that were started but never finished (a leaked `criu swrk` worker in real
//! life).
//!
//! What it does per request: CPUINFO_DUMP writes a `cpuinfo.img`; PRE_DUMP takes
//! [`Script::pre_dump_secs`], writes a `stats-dump` with the round's [`Script::round_pages`]
//! (nothing when that is empty) and succeeds, unless it is [`Script::pre_dump_fails_at`];
//! DUMP (not lazy) writes two small image files, notifies `pre-dump` and `post-dump`, and
//! succeeds when those are answered with success or fails as CRIU does (the tasks resume)
//! when one is answered with failure; PAGE_SERVER_CHLD answers at once and WAIT_PID says
//! status 0; RESTORE notifies `post-restore` and succeeds. A page server (PAGE_SERVER_CHLD)
//! leaves a sparse `pages-1.img` of its round's [`Script::round_pages`], so the destination
//! reports those bytes for the round. A lazy DUMP is not scripted (it fails).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::client::{type_name, CriuVersion, Event, Features, Notification};
use super::error::CriuError;
use super::hook::Hook;
use super::pb::{self, CriuReqType};
use super::service::{BoxFuture, CriuOperation, CriuService};

/// What the scripted CRIU does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// CPUINFO_CHECK fails (the CPUs differ).
    pub cpu_mismatch: bool,
    /// RESTORE fails before its post-restore notification.
    pub restore_fails: bool,
    /// The pid a RESTORE reports (0 by default: no real process).
    pub restored_pid: i32,
    /// DUMP fails before `post-dump` (as when CRIU cannot dump a resource of the tree).
    pub dump_fails: bool,
    /// Pages each pre-dump round writes, round 1 first (the last entry repeats): the source's
    /// PRE_DUMP number k reports entry k in its `stats-dump`, the destination's page server
    /// number k writes that many pages. Empty: no stats, no pages.
    pub round_pages: Vec<u64>,
    /// CRIU's frozen time each PRE_DUMP reports (µs).
    pub pre_dump_frozen_us: u32,
    /// How long each PRE_DUMP takes (s).
    pub pre_dump_secs: f64,
    /// PRE_DUMP number k (1-based) fails, as when its page server went away.
    pub pre_dump_fails_at: Option<usize>,
}

/// The image files a scripted DUMP writes (name, contents).
pub const DUMP_IMAGES: [(&str, &[u8]); 2] = [("core-1.img", b"core"), ("pstree.img", b"pstree")];

/// The scripted CRIU; clones share their record.
#[derive(Debug, Clone)]
pub struct ScriptedCriu {
    script: Script,
    requests: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
    /// PRE_DUMP and PAGE_SERVER_CHLD requests so far (each side counts its own).
    rounds: Arc<AtomicUsize>,
}

impl ScriptedCriu {
    /// A CRIU 4.2.0 with memory tracking and lazy pages, following `script`.
    pub fn new(script: Script) -> ScriptedCriu {
        ScriptedCriu {
            script,
            requests: Arc::default(),
            open: Arc::default(),
            rounds: Arc::default(),
        }
    }

    /// Round `k`'s pages (1-based; the last entry repeats).
    fn pages_of(&self, k: usize) -> Option<u64> {
        let p = &self.script.round_pages;
        p.get(k - 1).or(p.last()).copied()
    }

    /// The requests made so far, by type name (`RESTORE`, `PAGE_SERVER_CHLD`, `NOTIFY(ok)`...).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// Operations started and not finished.
    pub fn open_operations(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn note(&self, what: String) {
        self.requests.lock().expect("requests lock").push(what);
    }

    fn refused(request: &str, message: &str) -> CriuError {
        CriuError::Refused {
            request: request.into(),
            errno: None,
            message: message.into(),
            log: None,
        }
    }
}

impl CriuService for ScriptedCriu {
    fn path(&self) -> &Path {
        Path::new("/nonexistent/scripted-criu")
    }

    fn version(&self) -> BoxFuture<'_, Result<CriuVersion, CriuError>> {
        Box::pin(async {
            Ok(CriuVersion {
                major: 4,
                minor: 2,
                sublevel: 0,
            })
        })
    }

    fn features(&self) -> BoxFuture<'_, Result<Features, CriuError>> {
        Box::pin(async {
            Ok(Features {
                mem_track: true,
                lazy_pages: true,
            })
        })
    }

    fn cpuinfo_dump(
        &self,
        opts: pb::CriuOpts,
        _log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>> {
        self.note("CPUINFO_DUMP".into());
        let r = write_image(opts.images_dir_fd, "cpuinfo.img", b"scripted cpuinfo");
        Box::pin(async move { r })
    }

    fn cpuinfo_check(
        &self,
        _opts: pb::CriuOpts,
        _log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>> {
        self.note("CPUINFO_CHECK".into());
        let mismatch = self.script.cpu_mismatch;
        Box::pin(async move {
            if mismatch {
                Err(Self::refused(
                    "CPUINFO_CHECK",
                    "CPU features differ (scripted)",
                ))
            } else {
                Ok(())
            }
        })
    }

    fn start_request<'a>(
        &'a self,
        req: pb::CriuReq,
        _inherit: &'a [RawFd],
        _log: Option<PathBuf>,
    ) -> BoxFuture<'a, Result<Box<dyn CriuOperation>, CriuError>> {
        let name = type_name(req.r#type);
        self.note(name.clone());
        let ok = |t: CriuReqType| pb::CriuResp {
            r#type: t as i32,
            success: true,
            ..Default::default()
        };
        let mut events = VecDeque::new();
        let kind = CriuReqType::try_from(req.r#type).ok();
        let mut delay = None;
        let dir = req.opts.as_ref().map(|o| o.images_dir_fd).unwrap_or(-1);
        match kind {
            Some(CriuReqType::PageServerChld) => {
                let k = self.rounds.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(pages) = self.pages_of(k) {
                    if let Err(e) = sparse_pages(dir, pages) {
                        events
                            .push_back(Err(("PAGE_SERVER_CHLD", "cannot write pages (scripted)")));
                        tracing::warn!("{e}");
                    }
                }
                let mut r = ok(CriuReqType::PageServer);
                r.ps = Some(pb::CriuPageServerInfo {
                    pid: Some(0),
                    ..Default::default()
                });
                events.push_back(Ok(Event::Done(r)));
            }
            Some(CriuReqType::PreDump) => {
                let k = self.rounds.fetch_add(1, Ordering::SeqCst) + 1;
                delay = Some(std::time::Duration::from_secs_f64(
                    self.script.pre_dump_secs,
                ));
                let stats = self.pages_of(k).map(|pages| {
                    let entry = pb::StatsEntry {
                        dump: Some(pb::DumpStatsEntry {
                            frozen_time: self.script.pre_dump_frozen_us,
                            pages_written: pages,
                            ..Default::default()
                        }),
                        restore: None,
                    };
                    write_image(dir, "stats-dump", &super::stats::encode(&entry))
                });
                if self.script.pre_dump_fails_at == Some(k) {
                    events.push_back(Err(("PRE_DUMP", "pre-dump failed (scripted)")));
                } else if let Some(Err(_)) = stats {
                    events.push_back(Err(("PRE_DUMP", "cannot write stats-dump (scripted)")));
                } else {
                    events.push_back(Ok(Event::Done(ok(CriuReqType::PreDump))));
                }
            }
            Some(CriuReqType::Dump)
                if req.opts.as_ref().and_then(|o| o.lazy_pages) == Some(true) =>
            {
                events.push_back(Err(("DUMP", "a lazy dump is not scripted")));
            }
            Some(CriuReqType::Dump) if self.script.dump_fails => {
                events.push_back(Err(("DUMP", "dump failed (scripted)")));
            }
            Some(CriuReqType::Dump) => {
                let written = DUMP_IMAGES
                    .iter()
                    .try_for_each(|(name, data)| write_image(dir, name, data));
                if written.is_err() {
                    events.push_back(Err(("DUMP", "cannot write the images (scripted)")));
                } else {
                    events.push_back(Ok(Event::Notify(Notification {
                        hook: Hook::PreDump,
                        pid: None,
                    })));
                    events.push_back(Ok(Event::Notify(Notification {
                        hook: Hook::PostDump,
                        pid: None,
                    })));
                    events.push_back(Ok(Event::Done(ok(CriuReqType::Dump))));
                }
            }
            Some(CriuReqType::Restore) if self.script.restore_fails => {
                events.push_back(Err(("RESTORE", "restore failed (scripted)")));
            }
            Some(CriuReqType::Restore) => {
                events.push_back(Ok(Event::Notify(Notification {
                    hook: Hook::PostRestore,
                    pid: Some(self.script.restored_pid),
                })));
                let mut r = ok(CriuReqType::Restore);
                r.restore = Some(pb::CriuRestoreResp {
                    pid: self.script.restored_pid,
                });
                events.push_back(Ok(Event::Done(r)));
            }
            _ => events.push_back(Err(("request", "not scripted"))),
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        let op = ScriptedOperation {
            criu: self.clone(),
            request: name,
            events,
            refused: false,
            delay,
        };
        Box::pin(async move { Ok(Box::new(op) as Box<dyn CriuOperation>) })
    }
}

/// Writes `name` into the images directory open as `dir_fd` in this process, as CRIU writes
/// into the directory it was handed.
fn write_image(dir_fd: RawFd, name: &str, data: &[u8]) -> Result<(), CriuError> {
    let path = PathBuf::from(format!("/proc/self/fd/{dir_fd}")).join(name);
    std::fs::write(&path, data).map_err(|e| {
        ScriptedCriu::refused("image", &format!("cannot write {}: {e}", path.display()))
    })
}

/// A sparse `pages-1.img` of `pages` pages in the directory open as `dir_fd` (what a page
/// server leaves; only its length is read).
fn sparse_pages(dir_fd: RawFd, pages: u64) -> std::io::Result<()> {
    let path = PathBuf::from(format!("/proc/self/fd/{dir_fd}")).join("pages-1.img");
    std::fs::File::create(path)?.set_len(pages * 4096)
}

/// One scripted operation.
struct ScriptedOperation {
    criu: ScriptedCriu,
    /// The request's type name.
    request: String,
    events: VecDeque<Result<Event, (&'static str, &'static str)>>,
    /// A notification was answered `false`: CRIU fails the operation.
    refused: bool,
    /// Time the operation takes before its first event.
    delay: Option<std::time::Duration>,
}

impl CriuOperation for ScriptedOperation {
    fn next(&mut self) -> BoxFuture<'_, Result<Event, CriuError>> {
        let delay = self.delay.take();
        let e = if self.refused {
            Err(ScriptedCriu::refused(
                &self.request,
                "a notification was answered with failure",
            ))
        } else {
            match self.events.pop_front() {
                Some(Ok(e)) => Ok(e),
                Some(Err((r, m))) => Err(ScriptedCriu::refused(r, m)),
                None => Err(ScriptedCriu::refused("operation", "already answered")),
            }
        };
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            e
        })
    }

    fn request(&mut self, req: pb::CriuReq) -> BoxFuture<'_, Result<pb::CriuResp, CriuError>> {
        let name = type_name(req.r#type);
        self.criu.note(name.clone());
        let r = if req.r#type == CriuReqType::WaitPid as i32 {
            Ok(pb::CriuResp {
                r#type: req.r#type,
                success: true,
                status: Some(0),
                ..Default::default()
            })
        } else {
            Err(ScriptedCriu::refused(&name, "not scripted"))
        };
        Box::pin(async move { r })
    }

    fn ack(&mut self, success: bool) -> BoxFuture<'_, Result<(), CriuError>> {
        self.criu
            .note(format!("NOTIFY({})", if success { "ok" } else { "no" }));
        self.refused |= !success;
        Box::pin(async { Ok(()) })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.criu.open.fetch_sub(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}
