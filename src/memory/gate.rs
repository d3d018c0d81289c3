//! Starting CRIU's restore before its images are all there: `inventory.img`, the first image a
//! restore reads (right after CRIU's start-up: its kernel probes alone take tens of ms), is a
//! FIFO until every image of the final round has arrived. CRIU's open of it blocks; haul
//! writes the inventory into the FIFO once the rest is in place, and CRIU goes on at once.
//! Afterwards the FIFO is replaced by the regular file, so the images stay inspectable.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The image CRIU's restore reads first.
pub const INVENTORY: &str = "inventory.img";
/// An inventory is a few hundred bytes; more is not an inventory.
pub const MAX_INVENTORY: usize = 1 << 20;

/// A restore held at its first image read. haul holds the FIFO open for reading and writing
/// from the start, so CRIU's open never blocks and its read ends the moment haul's side
/// closes: with the inventory on release, empty on abort — or when `haul serve` dies, so a
/// held CRIU never outlives it.
#[derive(Debug)]
pub struct RestoreGate {
    fifo: PathBuf,
    end: std::fs::File,
}

impl RestoreGate {
    /// Puts the FIFO in place of `dir/inventory.img`.
    pub fn create(dir: &Path) -> io::Result<RestoreGate> {
        let fifo = dir.join(INVENTORY);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        // O_RDWR on a FIFO opens at once (Linux), and counts as its writer
        let end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&fifo)?;
        Ok(RestoreGate { fifo, end })
    }

    /// Lets CRIU go on: the inventory goes through the FIFO, then the FIFO is replaced by the
    /// regular file (blocking only while CRIU has not read a large inventory yet).
    pub fn release(self, inventory: &[u8]) -> io::Result<()> {
        let RestoreGate { fifo, mut end } = self;
        end.write_all(inventory)?;
        // CRIU reads the inventory, then the end of the FIFO once it is the last one open
        let t = Instant::now();
        while pending(&end) > 0 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(end);
        let tmp = fifo.with_extension("img.tmp");
        std::fs::write(&tmp, inventory)?;
        std::fs::rename(&tmp, &fifo)
    }

    /// Lets go of the FIFO without removing it (tests: `haul serve` dying).
    #[cfg(test)]
    fn abort_keep_fifo(self) {
        drop(self.end);
    }

    /// Makes the held restore fail (it reads an empty inventory) and removes the FIFO.
    pub fn abort(self) {
        let RestoreGate { fifo, end } = self;
        drop(end);
        let _ = std::fs::remove_file(&fifo);
    }
}

/// Bytes written into the FIFO and not read yet (FIONREAD).
fn pending(f: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 {
        n
    } else {
        0
    }
}

/// The engine's hold on a gate (it outlives `haul serve`): while it is held, CRIU's open of
/// the FIFO never blocks. If the migration ends before the restore got past the gate (the
/// restore never connects to the engine), [`GateGuard::fail`] puts an empty regular file in
/// the FIFO's place and lets go, so a restore still starting up, or waiting, fails at once
/// instead of waiting forever for an inventory nobody will write.
#[derive(Debug)]
pub struct GateGuard {
    fifo: PathBuf,
    end: std::fs::File,
}

impl GateGuard {
    /// Holds `dir/inventory.img` if it is a gate (a FIFO); `None` otherwise.
    pub fn hold(dir: &Path) -> Option<GateGuard> {
        use std::os::unix::fs::FileTypeExt;
        let fifo = dir.join(INVENTORY);
        if !std::fs::symlink_metadata(&fifo).ok()?.file_type().is_fifo() {
            return None;
        }
        let end = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&fifo)
            .ok()?;
        Some(GateGuard { fifo, end })
    }

    /// The restore got past the gate: let go.
    pub fn passed(self) {}

    /// Whether `haul serve` opened the gate (the inventory went through and the FIFO was
    /// replaced by the regular file): then this hold must go at once, or the restore would
    /// wait for the end of its inventory.
    pub fn opened(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        !std::fs::symlink_metadata(&self.fifo)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false)
    }

    /// The restore will never be let through: make it fail.
    pub fn fail(self) {
        use std::os::unix::fs::FileTypeExt;
        let still_fifo = std::fs::symlink_metadata(&self.fifo)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        if still_fifo {
            let tmp = self.fifo.with_extension("img.failed");
            if std::fs::write(&tmp, b"").is_ok() {
                let _ = std::fs::rename(&tmp, &self.fifo);
            }
        }
        drop(self.end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_reader_blocked_on_the_fifo_gets_the_inventory() {
        let d = tempfile::tempdir().unwrap();
        let g = RestoreGate::create(d.path()).unwrap();
        let p = d.path().join(INVENTORY);
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            std::fs::File::open(&p)
                .unwrap()
                .read_to_end(&mut s)
                .unwrap();
            s
        });
        g.release(b"inventory bytes").unwrap();
        assert_eq!(reader.join().unwrap(), b"inventory bytes");
        let meta = std::fs::metadata(d.path().join(INVENTORY)).unwrap();
        assert!(meta.is_file(), "a regular file again");
        assert_eq!(
            std::fs::read(d.path().join(INVENTORY)).unwrap(),
            b"inventory bytes"
        );
    }

    #[test]
    fn a_failed_guard_ends_a_reader_that_comes_late() {
        let d = tempfile::tempdir().unwrap();
        let g = RestoreGate::create(d.path()).unwrap();
        let guard = GateGuard::hold(d.path()).expect("a gate");
        g.abort_keep_fifo();
        guard.fail();
        // a restore that opens only now finds an empty regular file
        let mut s = Vec::new();
        std::fs::File::open(d.path().join(INVENTORY))
            .unwrap()
            .read_to_end(&mut s)
            .unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn an_aborted_gate_gives_the_reader_nothing() {
        let d = tempfile::tempdir().unwrap();
        let g = RestoreGate::create(d.path()).unwrap();
        let p = d.path().join(INVENTORY);
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            std::fs::File::open(&p)
                .unwrap()
                .read_to_end(&mut s)
                .unwrap();
            s
        });
        // let the reader reach its open
        std::thread::sleep(Duration::from_millis(50));
        g.abort();
        assert!(reader.join().unwrap().is_empty());
        assert!(!d.path().join(INVENTORY).exists());
    }
}
