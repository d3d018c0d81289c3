//! `haul pid`'s side of the memory path, as one object: the hold on CRIU's lazy page server
//! and the serving threads, started once the lazy dump is ready.

use std::path::Path;

use super::hold::CriuLazyHold;
use super::image::LazyImages;
use super::server::{self, PidMap, ServeReport, Serving};

/// Settings of the memory path (`haul pid --memory-path`, `--memory-streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPath {
    /// Use haul's engine where it is estimated to pay (`false`: CRIU's lazy-pages daemon
    /// through the relay, and CRIU's page server for stop-and-copy).
    pub engine: bool,
    /// Use it for stop-and-copy whatever the estimates say (`--memory-path haul`).
    pub forced: bool,
    /// Bulk streams (besides the priority stream).
    pub streams: u32,
    /// The bulk streams carry CRIU's lazy page server's answers, spliced (no copy through user
    /// space); otherwise each bulk stream's thread reads the frozen tasks' memory itself.
    pub via_criu: bool,
}

impl Default for MemoryPath {
    fn default() -> Self {
        MemoryPath {
            engine: true,
            forced: false,
            streams: DEFAULT_STREAMS,
            via_criu: true,
        }
    }
}

impl MemoryPath {
    /// What these settings allow the cost model, which decides each strategy's path.
    pub fn engine_use(&self) -> crate::preflight::EngineUse {
        use crate::preflight::EngineUse;
        match (self.engine, self.forced) {
            (false, _) => EngineUse::Off,
            (true, false) => EngineUse::Auto,
            (true, true) => EngineUse::Forced,
        }
    }
}

/// Bulk streams by default: two keep both cores of a small node busy (one stream's thread
/// copies while the other's waits on the link).
pub const DEFAULT_STREAMS: u32 = 2;

/// The source's running memory path.
pub struct SourcePath {
    hold: CriuLazyHold,
    serving: Serving,
    lazy_pages: u64,
}

impl SourcePath {
    /// Keeps `hold` on CRIU's lazy page server and starts pushing the lazy pages the images
    /// in `dir` name, read from the frozen tree rooted at host pid `root`.
    pub fn start(
        hold: CriuLazyHold,
        dir: &Path,
        root: i32,
        bulk: Vec<std::net::TcpStream>,
        priority: std::net::TcpStream,
        via_criu: bool,
    ) -> std::io::Result<SourcePath> {
        let images = LazyImages::load(dir).map_err(std::io::Error::other)?;
        let pids = PidMap::of_tree(root)?;
        let criu = if via_criu {
            Some(hold.try_clone()?)
        } else {
            None
        };
        let serving = server::serve(&images, &pids, bulk, priority, criu)?;
        Ok(SourcePath {
            hold,
            serving,
            lazy_pages: images.pages(),
        })
    }

    /// Lazy pages the images name (what the streams will carry).
    pub fn lazy_pages(&self) -> u64 {
        self.lazy_pages
    }

    /// The destination runs the process now (see [`CriuLazyHold::destination_runs`]).
    pub fn destination_runs(&self) -> std::io::Result<()> {
        self.hold.destination_runs()
    }

    /// Blocks until every page was pushed.
    pub fn wait_pushed(&mut self) -> std::io::Result<()> {
        self.serving.wait_pushed()
    }

    /// Every page arrived: CRIU may end the tasks.
    pub fn done(self) -> (std::io::Result<()>, ServeReport) {
        let r = self.hold.release_done();
        (r, self.serving.stop())
    }

    /// The migration failed before the destination ran the process: CRIU resumes the tasks.
    pub fn failed(self) -> ServeReport {
        self.hold.release_failed();
        self.serving.stop()
    }
}
