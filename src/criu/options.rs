//! Building `criu_opts` for haul's requests.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};

use super::client::CriuVersion;
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

/// How a pre-dump copies memory (`criu_opts.pre_dump_mode`, field 61; `--pre-dump-mode`).
///
/// From CRIU's source (criu/mem.c, criu/page-xfer.c, criu/cr-dump.c):
/// - `splice` (CRIU's default, and haul's): the parasite, running inside the frozen tasks,
///   vmsplices every dirty page into pipes; the tasks stay frozen until all of it is in the
///   pipes, then the pipes drain to the page server after they resume. The parasite also adds
///   PROT_READ to unreadable mappings for the copy.
/// - `read` (`VM_READ`): while frozen, only the mappings and the pagemap are collected and the
///   dirty bits are reset; the tasks resume, and CRIU copies the pages with
///   `process_vm_readv(2)` from its own process into a buffer, then vmsplices that (a page
///   unmapped meanwhile is skipped). Mappings without PROT_READ are left to the final dump.
///
/// Measured in the VMs (results/vm/throttle-2026-11-30/): `read` is both slower and unsafe
/// there. Its rounds moved 3.0 MiB/s against splice's 4.7 MiB/s (the copy through a buffer
/// costs CPU the single-CPU guest lacks) and froze the tree no less (0.2-0.4 s a round
/// either way, the freeze being mostly seizing and collecting mappings under TCG). And with
/// CRIU 4.2.1, `read` pre-dumps sent through a page server, as haul's always are, restore a
/// broken process: it died within a second of the restore, every time, with haul and with
/// plain CRIU alike (a page server on the same node reproduces it; the same pre-dumps into
/// local images restore intact). Hence [`PreDumpMode::check`].
///
/// What `read` needs besides: a kernel with `process_vm_readv` (CONFIG_CROSS_MEMORY_ATTACH,
/// in every Debian kernel; [`vm_read_supported`]) and ptrace access to the tree, which a root
/// CRIU has anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PreDumpMode {
    /// The parasite splices pages while the tasks are frozen.
    Splice,
    /// CRIU reads pages with `process_vm_readv` after the tasks resume.
    Read,
}

impl PreDumpMode {
    /// The CLI / report name.
    pub fn name(self) -> &'static str {
        match self {
            PreDumpMode::Splice => "splice",
            PreDumpMode::Read => "read",
        }
    }

    /// Whether haul may use this mode with `criu` on this kernel: `read` is refused with a CRIU
    /// up to [`READ_BROKEN_UP_TO`] (its pre-dumps through a page server restore a broken
    /// process) and on a kernel without `process_vm_readv`; `Err` says why.
    pub fn check(self, criu: CriuVersion) -> Result<(), String> {
        if self == PreDumpMode::Splice {
            return Ok(());
        }
        let (major, minor, sublevel) = READ_BROKEN_UP_TO;
        let broken = CriuVersion {
            major,
            minor,
            sublevel,
        };
        if criu <= broken {
            return Err(format!(
                "CRIU {criu}'s read pre-dumps through a page server (haul's rounds always use one) restore a broken process: the migrated toucher died right after the restore in the VM runs, with haul and with plain CRIU (results/vm/throttle-2026-11-30/); use --pre-dump-mode splice"
            ));
        }
        vm_read_supported()
    }
}

/// The newest CRIU whose `read` pre-dumps through a page server were seen to restore a
/// broken process (4.2.1, the newest measured).
pub const READ_BROKEN_UP_TO: (i32, i32, i32) = (4, 2, 1);

impl Default for PreDumpMode {
    /// `splice`: faster in the VMs, and sound (see [`PreDumpMode`]).
    fn default() -> Self {
        PreDumpMode::Splice
    }
}

impl std::fmt::Display for PreDumpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PreDumpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(PreDumpMode::Splice),
            "read" => Ok(PreDumpMode::Read),
            o => Err(format!("unknown --pre-dump-mode {o:?}: splice or read")),
        }
    }
}

/// Sets the pre-dump mode of a PRE_DUMP request (pure).
pub fn pre_dump_mode(opts: &mut pb::CriuOpts, mode: PreDumpMode) {
    let m = match mode {
        PreDumpMode::Splice => pb::CriuPreDumpMode::Splice,
        PreDumpMode::Read => pb::CriuPreDumpMode::VmRead,
    };
    opts.pre_dump_mode = Some(m as i32);
}

/// Whether this kernel lets a process read another's memory with `process_vm_readv` (what
/// `read` pre-dumps need): reads a few bytes of this process's own memory through it.
/// `Err` says why not (ENOSYS: a kernel without CONFIG_CROSS_MEMORY_ATTACH).
pub fn vm_read_supported() -> Result<(), String> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let source = [0x5au8; 16];
    let mut dest = [0u8; 16];
    let remote = [RemoteIoVec {
        base: source.as_ptr() as usize,
        len: source.len(),
    }];
    let mut local = [std::io::IoSliceMut::new(&mut dest)];
    match process_vm_readv(nix::unistd::getpid(), &mut local, &remote) {
        Ok(16) if dest == source => Ok(()),
        Ok(n) => Err(format!("process_vm_readv read {n} of 16 bytes of this process")),
        Err(e) => Err(format!(
            "process_vm_readv fails here ({e}): `read` pre-dumps need a kernel with CONFIG_CROSS_MEMORY_ATTACH; use --pre-dump-mode splice"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_dump_mode_sets_field_61() {
        let mut o = base(3, "pre-dump.log");
        assert_eq!(
            o.pre_dump_mode, None,
            "CRIU's default (splice) unless asked"
        );
        pre_dump_mode(&mut o, PreDumpMode::Read);
        assert_eq!(o.pre_dump_mode, Some(2), "VM_READ is 2 on the wire");
        pre_dump_mode(&mut o, PreDumpMode::Splice);
        assert_eq!(o.pre_dump_mode, Some(1));
        let bytes = prost::Message::encode_to_vec(&o);
        // field 61, varint: key = (61 << 3) | 0 = 488 = 0xe8 0x03
        assert!(
            bytes.windows(3).any(|w| w == [0xe8, 0x03, 0x01]),
            "{bytes:02x?}"
        );
        for m in [PreDumpMode::Splice, PreDumpMode::Read] {
            assert_eq!(m.name().parse::<PreDumpMode>(), Ok(m));
        }
        assert!("fast".parse::<PreDumpMode>().is_err());
        assert_eq!(PreDumpMode::default(), PreDumpMode::Splice);
        let v = |major, minor, sublevel| CriuVersion {
            major,
            minor,
            sublevel,
        };
        assert_eq!(PreDumpMode::Splice.check(v(4, 2, 1)), Ok(()));
        let refused = PreDumpMode::Read.check(v(4, 2, 1)).unwrap_err();
        assert!(refused.contains("restore a broken process"), "{refused}");
        assert!(PreDumpMode::Read.check(v(3, 17, 1)).is_err());
        if vm_read_supported().is_ok() {
            assert_eq!(PreDumpMode::Read.check(v(4, 3, 0)), Ok(()));
        }
    }

    #[test]
    fn this_kernel_has_process_vm_readv() {
        // Debian's kernels and this host's have CONFIG_CROSS_MEMORY_ATTACH.
        assert_eq!(vm_read_supported(), Ok(()));
    }
}
