//! The requests haul makes of CRIU, and long-running operations whose notifications the caller
//! acknowledges.

use std::fmt;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::CriuError;
use super::hook::Hook;
use super::pb::{self, CriuReqType};
use super::worker::Worker;
use super::MIN_CRIU_VERSION;

/// A CRIU version as CRIU reports it over RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CriuVersion {
    /// Major number.
    pub major: i32,
    /// Minor number.
    pub minor: i32,
    /// Sublevel (patch) number.
    pub sublevel: i32,
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

/// Kernel and CRIU features that decide which migration strategies can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// Memory dirty tracking (soft-dirty): needed by pre-dump, so by pre-copy and hybrid.
    pub mem_track: bool,
    /// userfaultfd lazy pages: needed by post-copy and hybrid.
    pub lazy_pages: bool,
}

/// A notification CRIU sent during an operation (a "script" hook in CRIU's terms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The hook: `post-dump`, `post-restore`, `status-ready`, ...
    pub hook: Hook,
    /// The pid CRIU attached, for restore hooks (the restored root task).
    pub pid: Option<i32>,
}

/// What an [`Operation`] produced next.
#[derive(Debug)]
pub enum Event {
    /// CRIU waits for [`Operation::ack`] before it goes on.
    Notify(Notification),
    /// The final response: the operation is over.
    Done(pb::CriuResp),
}

/// A located CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
}

impl Criu {
    /// Uses the CRIU binary at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Criu {
        Criu { path: path.into() }
    }

    /// Finds CRIU: `$HAUL_CRIU`, else `criu` on PATH, else `/usr/local/sbin/criu`, `/usr/sbin/criu`.
    pub fn locate() -> Result<Criu, CriuError> {
        if let Some(p) = std::env::var_os("HAUL_CRIU") {
            return Ok(Criu::at(p));
        }
        let mut looked = vec!["$HAUL_CRIU".to_string()];
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let mut candidates: Vec<PathBuf> = std::env::split_paths(&path_var)
            .map(|d| d.join("criu"))
            .collect();
        candidates.push("/usr/local/sbin/criu".into());
        candidates.push("/usr/sbin/criu".into());
        for c in candidates {
            if is_executable(&c) {
                return Ok(Criu::at(c));
            }
            looked.push(c.display().to_string());
        }
        Err(CriuError::NotFound {
            looked: "PATH, /usr/local/sbin, /usr/sbin".into(),
            need: format!("{}.{}", MIN_CRIU_VERSION.0, MIN_CRIU_VERSION.1),
        })
    }

    /// Finds CRIU and checks that it is recent enough.
    pub async fn locate_checked() -> Result<(Criu, CriuVersion), CriuError> {
        let criu = Criu::locate()?;
        let v = criu.version().await?;
        if (v.major, v.minor) < MIN_CRIU_VERSION {
            return Err(CriuError::TooOld {
                path: criu.path.clone(),
                found: v.to_string(),
                need: format!("{}.{}", MIN_CRIU_VERSION.0, MIN_CRIU_VERSION.1),
            });
        }
        Ok((criu, v))
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and waits for its response (no notifications expected).
    async fn call(
        &self,
        req: pb::CriuReq,
        log: Option<PathBuf>,
    ) -> Result<pb::CriuResp, CriuError> {
        let mut op = Operation::start(self, req, &[], log).await?;
        loop {
            match op.next().await? {
                Event::Done(resp) => {
                    op.finish().await;
                    return Ok(resp);
                }
                // Not asked for: acknowledge anything CRIU sends anyway.
                Event::Notify(_) => op.ack(true).await?,
            }
        }
    }

    /// VERSION: the CRIU version.
    pub async fn version(&self) -> Result<CriuVersion, CriuError> {
        let resp = self
            .call(new_request(CriuReqType::Version, None), None)
            .await?;
        let v = resp.version.ok_or_else(|| CriuError::Refused {
            request: "VERSION".into(),
            errno: None,
            message: "the response carried no version".into(),
            log: None,
        })?;
        Ok(CriuVersion {
            major: v.major_number,
            minor: v.minor_number,
            sublevel: v.sublevel.unwrap_or(0),
        })
    }

    /// CHECK: whether CRIU works on this kernel (`criu check`).
    pub async fn check(&self) -> Result<(), CriuError> {
        self.call(new_request(CriuReqType::Check, None), None)
            .await
            .map(drop)
    }

    /// FEATURE_CHECK: memory tracking and lazy pages.
    pub async fn features(&self) -> Result<Features, CriuError> {
        let mut req = new_request(CriuReqType::FeatureCheck, None);
        req.features = Some(pb::CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: None,
        });
        let resp = self.call(req, None).await?;
        let f = resp.features.unwrap_or_default();
        Ok(Features {
            mem_track: f.mem_track.unwrap_or(false),
            lazy_pages: f.lazy_pages.unwrap_or(false),
        })
    }

    /// CPUINFO_DUMP: writes this CPU's description (`cpuinfo.img`) into `opts`' images dir.
    pub async fn cpuinfo_dump(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> Result<(), CriuError> {
        self.call(new_request(CriuReqType::CpuinfoDump, Some(opts)), log)
            .await
            .map(drop)
    }

    /// CPUINFO_CHECK: whether the `cpuinfo.img` in `opts`' images dir is compatible with this CPU.
    pub async fn cpuinfo_check(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> Result<(), CriuError> {
        self.call(new_request(CriuReqType::CpuinfoCheck, Some(opts)), log)
            .await
            .map(drop)
    }

    /// Starts a request built by the caller (e.g. with `keep_open`); see [`Criu::start`].
    pub async fn start_request(
        &self,
        req: pb::CriuReq,
        inherit: &[RawFd],
        log: Option<PathBuf>,
    ) -> Result<Operation, CriuError> {
        Operation::start(self, req, inherit, log).await
    }

    /// Starts a request that sends notifications (DUMP, PRE_DUMP, RESTORE, PAGE_SERVER_CHLD);
    /// `inherit` are fds the worker must hold (e.g. `ps.fd`); `log` is CRIU's log file, for
    /// error messages.
    pub async fn start(
        &self,
        kind: CriuReqType,
        opts: pb::CriuOpts,
        inherit: &[RawFd],
        log: Option<PathBuf>,
    ) -> Result<Operation, CriuError> {
        Operation::start(self, new_request(kind, Some(opts)), inherit, log).await
    }
}

/// A request of type `kind` with `opts`.
pub fn new_request(kind: CriuReqType, opts: Option<pb::CriuOpts>) -> pb::CriuReq {
    pb::CriuReq {
        r#type: kind as i32,
        opts,
        ..Default::default()
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Human name of a request type.
pub fn type_name(t: i32) -> String {
    CriuReqType::try_from(t)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type {t}"))
}

/// One request in flight on its own `criu swrk` worker.
pub struct Operation {
    worker: Worker,
    kind: i32,
    awaiting_ack: bool,
}

impl Operation {
    async fn start(
        criu: &Criu,
        req: pb::CriuReq,
        inherit: &[RawFd],
        log: Option<PathBuf>,
    ) -> Result<Operation, CriuError> {
        let mut worker = Worker::spawn(&criu.path, inherit)?;
        worker.log = log;
        let kind = req.r#type;
        worker.send(&req).await?;
        Ok(Operation {
            worker,
            kind,
            awaiting_ack: false,
        })
    }

    /// The worker's pid (the criu process serving this request).
    pub fn worker_pid(&self) -> u32 {
        self.worker.pid()
    }

    /// Waits for the next notification or the final response. A final response that says
    /// `success = false` becomes [`CriuError::Refused`].
    pub async fn next(&mut self) -> Result<Event, CriuError> {
        assert!(
            !self.awaiting_ack,
            "Operation::next called before ack of the last notification"
        );
        let during = format!("serving {}", type_name(self.kind));
        let resp = self.worker.recv(&during).await?;
        if resp.r#type == CriuReqType::Notify as i32 {
            let n = resp.notify.unwrap_or_default();
            self.awaiting_ack = true;
            return Ok(Event::Notify(Notification {
                hook: Hook::from_name(n.script.as_deref().unwrap_or_default()),
                pid: n.pid,
            }));
        }
        if !resp.success {
            return Err(CriuError::Refused {
                request: type_name(self.kind),
                errno: resp.cr_errno,
                message: failure_message(resp.cr_errmsg.as_deref(), self.worker.log.as_deref()),
                log: self.worker.log.clone(),
            });
        }
        // PAGE_SERVER_CHLD is answered with a PAGE_SERVER response.
        let same = resp.r#type == self.kind
            || (self.kind == CriuReqType::PageServerChld as i32
                && resp.r#type == CriuReqType::PageServer as i32);
        if !same && resp.r#type != CriuReqType::Empty as i32 {
            return Err(CriuError::UnexpectedResponse {
                request: type_name(self.kind),
                got: type_name(resp.r#type),
            });
        }
        Ok(Event::Done(resp))
    }

    /// Sends a further request on this worker (after one sent with `keep_open`) and waits for
    /// its response; e.g. WAIT_PID for a page server started with PAGE_SERVER_CHLD.
    pub async fn request(&mut self, req: pb::CriuReq) -> Result<pb::CriuResp, CriuError> {
        self.kind = req.r#type;
        self.worker.send(&req).await?;
        match self.next().await? {
            Event::Done(r) => Ok(r),
            Event::Notify(n) => Err(CriuError::UnexpectedResponse {
                request: type_name(self.kind),
                got: format!("notification {}", n.hook),
            }),
        }
    }

    /// Answers the last notification: `true` lets CRIU go on; `false` makes it fail the
    /// operation (after `post-dump`: the dumped tasks resume).
    pub async fn ack(&mut self, success: bool) -> Result<(), CriuError> {
        assert!(
            self.awaiting_ack,
            "Operation::ack without a pending notification"
        );
        self.awaiting_ack = false;
        let req = pb::CriuReq {
            r#type: CriuReqType::Notify as i32,
            notify_success: Some(success),
            ..Default::default()
        };
        self.worker.send(&req).await
    }

    /// Acknowledges every notification until the final response.
    pub async fn run_to_end(mut self) -> Result<pb::CriuResp, CriuError> {
        loop {
            match self.next().await {
                Ok(Event::Notify(_)) => self.ack(true).await?,
                Ok(Event::Done(r)) => {
                    self.finish().await;
                    return Ok(r);
                }
                Err(e) => {
                    self.finish().await;
                    return Err(e);
                }
            }
        }
    }

    /// Closes the connection and reaps the worker.
    pub async fn finish(self) {
        self.worker.finish().await;
    }
}

/// CRIU's first error line is often a harmless one (`rlimit: Can't setup RLIMIT_NOFILE` on
/// machines without CAP_SYS_RESOURCE): say the last error line of the log as well.
fn failure_message(first: Option<&str>, log: Option<&Path>) -> String {
    let first = first.map(str::trim).filter(|m| !m.is_empty());
    let last = log
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
                .map(|l| l.trim().to_string())
        });
    match (first, last) {
        (Some(f), Some(l)) if !f.contains(l.as_str()) && !l.contains(f) => {
            format!("{l} (first error: {f})")
        }
        (_, Some(l)) => l,
        (Some(f), None) => f.to_string(),
        (None, None) => "CRIU reported failure without a message".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_real_error_of_the_log_leads() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("restore.log");
        std::fs::write(
            &log,
            "(0.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n(0.2) ok\n(0.3) Error (criu/files-reg.c:2142): File a has bad size 3 (expect 4)\n",
        )
        .unwrap();
        let m = failure_message(
            Some("Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self"),
            Some(&log),
        );
        assert!(m.starts_with("(0.3) Error (criu/files-reg.c"), "{m}");
        assert!(m.contains("first error: "), "{m}");
        assert_eq!(failure_message(Some("boom"), None), "boom");
    }
}
