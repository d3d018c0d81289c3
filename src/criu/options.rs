//! Building `criu_opts` for haul's requests.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use super::pb;

/// CRIU's log verbosity for every request haul makes (4 = debug: the logs are kept for
/// inspection next to the images, as P.Haul did).
pub const LOG_LEVEL: i32 = 4;

/// Options every request starts from: the images directory (an fd CRIU opens through
/// `/proc/<haul>/fd/N`), CRIU's log file name inside it, and notifications on.
pub fn base(images_dir_fd: RawFd, log_file: &str) -> pb::CriuOpts {
    pb::CriuOpts {
        images_dir_fd,
        log_level: Some(LOG_LEVEL),
        log_file: Some(log_file.to_string()),
        notify_scripts: Some(true),
        ..Default::default()
    }
}

/// What the dumped tree needs from CRIU, on dump and restore alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeOptions {
    /// Dump and restore established TCP connections (TCP repair).
    pub tcp_established: bool,
    /// The tree is a shell job (its session leader is outside it).
    pub shell_job: bool,
    /// Dump and restore file locks.
    pub file_locks: bool,
    /// Allow link-remap files for unlinked-but-open files.
    pub link_remap: bool,
    /// Allow external unix sockets.
    pub ext_unix_sk: bool,
}

impl TreeOptions {
    /// Writes these options into `opts`.
    pub fn apply(&self, opts: &mut pb::CriuOpts) {
        let set = |b: bool| if b { Some(true) } else { None };
        opts.tcp_established = set(self.tcp_established);
        opts.shell_job = set(self.shell_job);
        opts.file_locks = set(self.file_locks);
        opts.link_remap = set(self.link_remap);
        opts.ext_unix_sk = set(self.ext_unix_sk);
        if self.tcp_established {
            opts.tcp_skip_in_flight = Some(true);
        }
    }
}

/// Page-server settings: an already-connected socket CRIU inherits (`ps.fd`).
pub fn page_server_fd(opts: &mut pb::CriuOpts, fd: RawFd) {
    opts.ps = Some(pb::CriuPageServerInfo {
        fd: Some(fd),
        ..Default::default()
    });
}

/// Page-server settings: a TCP endpoint (CRIU's lazy-pages server listens there).
pub fn page_server_addr(opts: &mut pb::CriuOpts, address: &str, port: u16) {
    opts.ps = Some(pb::CriuPageServerInfo {
        address: Some(address.to_string()),
        port: Some(i32::from(port)),
        ..Default::default()
    });
}
