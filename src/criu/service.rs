//! CRIU as both sides of a migration see it: a trait over the few requests `haul pid` and
//! `haul serve` make, so their state machines can run against something other than
//! `criu swrk` (the fuzz target and the root-free state tests use the scripted stand-in in
//! [`super::scripted`]). [`Criu`] is the real one.

use std::future::Future;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use super::client::{Criu, CriuVersion, Event, Features, Notification, Operation};
use super::error::CriuError;
use super::hook::Hook;
use super::pb;

/// A boxed future, `Send`, borrowing for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The CRIU requests haul makes, on either node.
pub trait CriuService: Send + Sync + std::fmt::Debug {
    /// The binary's path (`criu lazy-pages` is started from it).
    fn path(&self) -> &Path;
    /// VERSION.
    fn version(&self) -> BoxFuture<'_, Result<CriuVersion, CriuError>>;
    /// FEATURE_CHECK.
    fn features(&self) -> BoxFuture<'_, Result<Features, CriuError>>;
    /// CPUINFO_DUMP: writes this CPU's `cpuinfo.img` into `opts`' images directory.
    fn cpuinfo_dump(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>>;
    /// CPUINFO_CHECK of the `cpuinfo.img` in `opts`' images directory.
    fn cpuinfo_check(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>>;
    /// Starts `req` (DUMP, PRE_DUMP, RESTORE, PAGE_SERVER_CHLD, ...), the worker holding the
    /// fds in `inherit` under the same numbers; `log` is CRIU's log for error messages.
    fn start_request<'a>(
        &'a self,
        req: pb::CriuReq,
        inherit: &'a [RawFd],
        log: Option<PathBuf>,
    ) -> BoxFuture<'a, Result<Box<dyn CriuOperation>, CriuError>>;
}

/// One request in flight (see [`Operation`]).
pub trait CriuOperation: Send + Sync {
    /// The next notification or the final response.
    fn next(&mut self) -> BoxFuture<'_, Result<Event, CriuError>>;
    /// A further request on the same worker (WAIT_PID after PAGE_SERVER_CHLD).
    fn request(&mut self, req: pb::CriuReq) -> BoxFuture<'_, Result<pb::CriuResp, CriuError>>;
    /// Answers the last notification.
    fn ack(&mut self, success: bool) -> BoxFuture<'_, Result<(), CriuError>>;
    /// Closes the operation and reaps its worker.
    fn finish(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Where [`run_until`](dyn CriuOperation::run_until) stopped.
#[derive(Debug)]
pub enum Until {
    /// The hook was reached; CRIU waits for its answer.
    Reached(Notification),
    /// The operation ended before the hook (a response of success).
    Done(pb::CriuResp),
}

impl dyn CriuOperation {
    /// Answers every notification with success until `hook` (left unanswered) or the end.
    pub async fn run_until(&mut self, hook: &Hook) -> Result<Until, CriuError> {
        loop {
            match self.next().await? {
                Event::Notify(n) if n.hook == *hook => return Ok(Until::Reached(n)),
                Event::Notify(_) => self.ack(true).await?,
                Event::Done(resp) => return Ok(Until::Done(resp)),
            }
        }
    }

    /// Answers every notification with success until the final response, then finishes the
    /// operation (also when it failed).
    pub async fn run_to_end(mut self: Box<Self>) -> Result<pb::CriuResp, CriuError> {
        let r = loop {
            match self.next().await {
                Ok(Event::Notify(_)) => {
                    if let Err(e) = self.ack(true).await {
                        break Err(e);
                    }
                }
                Ok(Event::Done(resp)) => break Ok(resp),
                Err(e) => break Err(e),
            }
        };
        self.finish().await;
        r
    }
}

impl CriuService for Criu {
    fn path(&self) -> &Path {
        Criu::path(self)
    }

    fn version(&self) -> BoxFuture<'_, Result<CriuVersion, CriuError>> {
        Box::pin(Criu::version(self))
    }

    fn features(&self) -> BoxFuture<'_, Result<Features, CriuError>> {
        Box::pin(Criu::features(self))
    }

    fn cpuinfo_dump(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>> {
        Box::pin(Criu::cpuinfo_dump(self, opts, log))
    }

    fn cpuinfo_check(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>> {
        Box::pin(Criu::cpuinfo_check(self, opts, log))
    }

    fn start_request<'a>(
        &'a self,
        req: pb::CriuReq,
        inherit: &'a [RawFd],
        log: Option<PathBuf>,
    ) -> BoxFuture<'a, Result<Box<dyn CriuOperation>, CriuError>> {
        Box::pin(async move {
            let op = Criu::start_request(self, req, inherit, log).await?;
            Ok(Box::new(op) as Box<dyn CriuOperation>)
        })
    }
}

impl CriuOperation for Operation {
    fn next(&mut self) -> BoxFuture<'_, Result<Event, CriuError>> {
        Box::pin(Operation::next(self))
    }

    fn request(&mut self, req: pb::CriuReq) -> BoxFuture<'_, Result<pb::CriuResp, CriuError>> {
        Box::pin(Operation::request(self, req))
    }

    fn ack(&mut self, success: bool) -> BoxFuture<'_, Result<(), CriuError>> {
        Box::pin(Operation::ack(self, success))
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Operation::finish(*self))
    }
}
