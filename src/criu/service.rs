//! CRIU as the destination sees it: a trait over the few requests `haul serve` makes, so its
//! state machine can run against something other than `criu swrk` (the fuzz target and the
//! root-free state-machine tests use a scripted stand-in). [`Criu`] is the real one.

use std::future::Future;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use super::client::{Criu, CriuVersion, Event, Features, Operation};
use super::error::CriuError;
use super::pb;

/// A boxed future, `Send`, borrowing for `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The CRIU requests `haul serve` makes.
pub trait CriuService: Send + Sync + std::fmt::Debug {
    /// The binary's path (`criu lazy-pages` is started from it).
    fn path(&self) -> &Path;
    /// VERSION.
    fn version(&self) -> BoxFuture<'_, Result<CriuVersion, CriuError>>;
    /// FEATURE_CHECK.
    fn features(&self) -> BoxFuture<'_, Result<Features, CriuError>>;
    /// CPUINFO_CHECK of the `cpuinfo.img` in `opts`' images directory.
    fn cpuinfo_check(
        &self,
        opts: pb::CriuOpts,
        log: Option<PathBuf>,
    ) -> BoxFuture<'_, Result<(), CriuError>>;
    /// Starts `req` (RESTORE, PAGE_SERVER_CHLD, ...), the worker holding the fds in `inherit`.
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
