//! The memory path: haul's own lazy-pages machinery, in place of CRIU's lazy-pages daemon and
//! page server, for post-copy and for stop-and-copy alike.
//!
//! After a lazy dump the source's tasks stay frozen; [`server`] reads their lazy pages
//! directly and pushes them over one or more bulk streams at link speed, and answers faulted
//! pages first on a priority stream. On the destination, [`engine`] receives the restored
//! tasks' userfaultfds from `criu restore --lazy-pages` and fills their memory with
//! `UFFDIO_COPY` as pages arrive. A post-copy migration lets the process run at once; a
//! stop-and-copy one holds it (at CRIU's post-restore) until the engine says `complete`.
//!
//! - [`ranges`]: which pages of a task are still missing (pure bookkeeping);
//! - [`image`]: the lazy ranges the final dump's images name;
//! - [`wire`]: the memory streams' message format;
//! - [`criu_ps`]: CRIU's page-server messages (the source asks CRIU's lazy page server);
//! - [`uffd`]: userfaultfd and CRIU's lazy-pages socket;
//! - [`engine`]: the destination's engine (`haul lazy-engine`);
//! - [`server`]: the source's pusher and answerer;
//! - [`hold`]: holding CRIU's lazy page server on the source (the tasks stay frozen);
//! - [`process`]: `haul serve`'s handle on the `haul lazy-engine` process;
//! - [`source_path`]: `haul pid`'s side as one object (hold + serving);
//! - [`gate`]: a restore started before its images are all there (held at its first read);
//! - [`parents`]: pre-copy rounds' pagemaps on the source, so hybrid sends each page once.

pub mod criu_ps;
pub mod engine;
pub mod gate;
pub mod hold;
pub mod image;
pub mod parents;
pub mod process;
pub mod ranges;
pub mod server;
pub mod source_path;
pub mod uffd;
pub mod wire;

pub use source_path::MemoryPath;

/// CPU seconds (user + system) this process used so far (getrusage(RUSAGE_SELF)).
pub fn cpu_secs() -> f64 {
    // SAFETY: rusage is plain data getrusage fills in.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
