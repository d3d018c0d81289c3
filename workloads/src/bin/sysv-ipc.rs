//! sysv-ipc: SysV shared memory, a semaphore and a message queue in the IPC namespace the
//! process was started in (the node's own, unless it was given one).
//!
//! ```text
//! sysv-ipc [--shm-size BYTES] [--log F] [--stop-file F] [--interval-ms MS]
//! ```
//!
//! Creates a shared-memory segment (default 1m) filled with a known pattern and attached, a
//! semaphore set with one semaphore at 42, and a message queue holding 3 messages; logs
//! `Holds: sysv-ipc shm=<id> sem=<id> msg=<id> shm_bytes=<n> ipcns=<inode>`. Every heartbeat
//! checks one page of the segment, the semaphore's value and the queue's message count;
//! when the stop file appears it checks the whole segment and reads the three messages back,
//! removes all three objects, logs `Summary: beats=<n> failures=<f>` and `Finish`, and exits 0
//! when nothing failed. CRIU dumps SysV objects only as part of an IPC namespace of the tree's
//! own: in the node's namespace they are the node's, and a restored copy elsewhere finds
//! none of them (or other ones under the same ids).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use haul_launch::start_code::{StartCode, StartReporter};
use haul_workloads::files::{SYSV_IPC_LOG, SYSV_IPC_STOP};
use haul_workloads::holder::{fill_pattern, parse_size, pattern_mismatch, setup_failed, Holder};
use haul_workloads::worklog::LogWriter;

const SEED: u64 = 0x7379_7376;
const SEM_VALUE: i32 = 42;
const MESSAGES: [&[u8; 8]; 3] = [b"msg-one\0", b"msg-two\0", b"msg-thr\0"];
const PAGE: usize = 4096;

/// Hold SysV IPC objects and check them.
#[derive(Debug, Parser)]
#[command(name = "sysv-ipc", version)]
struct Args {
    /// Size of the shared-memory segment.
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    shm_size: u64,
    /// Log file.
    #[arg(long, default_value = SYSV_IPC_LOG)]
    log: PathBuf,
    /// Stop file to poll for.
    #[arg(long, default_value = SYSV_IPC_STOP)]
    stop_file: PathBuf,
    /// Milliseconds between two heartbeats.
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
}

#[repr(C)]
struct Msg {
    mtype: libc::c_long,
    mtext: [u8; 8],
}

struct Objects {
    shm: i32,
    sem: i32,
    msg: i32,
    mem: *mut u8,
    len: usize,
}

fn check(r: libc::c_int, what: &str) -> Result<libc::c_int, String> {
    if r < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(r)
    }
}

impl Objects {
    fn create(len: usize) -> Result<Objects, String> {
        let perm = libc::IPC_CREAT | 0o600;
        // SAFETY: plain SysV IPC calls on objects this process creates; shmat's result is
        // checked before use and the mapping is `len` bytes long.
        unsafe {
            let shm = check(libc::shmget(libc::IPC_PRIVATE, len, perm), "shmget")?;
            let mem = libc::shmat(shm, std::ptr::null(), 0);
            if mem as isize == -1 {
                return Err(format!("shmat: {}", io::Error::last_os_error()));
            }
            let mem = mem as *mut u8;
            fill_pattern(SEED, 0, std::slice::from_raw_parts_mut(mem, len));
            let sem = check(libc::semget(libc::IPC_PRIVATE, 1, perm), "semget")?;
            check(
                libc::semctl(sem, 0, libc::SETVAL, SEM_VALUE),
                "semctl SETVAL",
            )?;
            let msg = check(libc::msgget(libc::IPC_PRIVATE, perm), "msgget")?;
            for (i, text) in MESSAGES.iter().enumerate() {
                let m = Msg {
                    mtype: i as libc::c_long + 1,
                    mtext: **text,
                };
                check(
                    libc::msgsnd(
                        msg,
                        &m as *const Msg as *const libc::c_void,
                        8,
                        libc::IPC_NOWAIT,
                    ),
                    "msgsnd",
                )?;
            }
            Ok(Objects {
                shm,
                sem,
                msg,
                mem,
                len,
            })
        }
    }

    fn memory(&self) -> &[u8] {
        // SAFETY: `mem` is the attached segment of `len` bytes, attached until `remove`.
        unsafe { std::slice::from_raw_parts(self.mem, self.len) }
    }

    fn probe(&self, page: usize) -> Result<(), String> {
        let off = (page * PAGE) % self.len.max(1);
        let end = (off + PAGE).min(self.len);
        if let Some(at) = pattern_mismatch(SEED, off as u64, &self.memory()[off..end]) {
            return Err(format!("shared memory {} differs at byte {at}", self.shm));
        }
        // SAFETY: semctl GETVAL and msgctl IPC_STAT with a zeroed msqid_ds to fill.
        let (val, qnum) = unsafe {
            let val = check(libc::semctl(self.sem, 0, libc::GETVAL), "semctl GETVAL")?;
            let mut ds: libc::msqid_ds = std::mem::zeroed();
            check(
                libc::msgctl(self.msg, libc::IPC_STAT, &mut ds),
                &format!("msgctl IPC_STAT of queue {}", self.msg),
            )?;
            (val, ds.msg_qnum)
        };
        if val != SEM_VALUE {
            return Err(format!("semaphore {} is {val}, not {SEM_VALUE}", self.sem));
        }
        if qnum != MESSAGES.len() as libc::msgqnum_t {
            return Err(format!(
                "queue {} holds {qnum} messages, not {}",
                self.msg,
                MESSAGES.len()
            ));
        }
        Ok(())
    }

    fn last_check(&self) -> Result<(), String> {
        if let Some(at) = pattern_mismatch(SEED, 0, self.memory()) {
            return Err(format!("shared memory {} differs at byte {at}", self.shm));
        }
        self.probe(0)?;
        for (i, text) in MESSAGES.iter().enumerate() {
            let mut m = Msg {
                mtype: 0,
                mtext: [0; 8],
            };
            // SAFETY: msgrcv into a buffer with room for 8 bytes of text.
            let n = unsafe {
                libc::msgrcv(
                    self.msg,
                    &mut m as *mut Msg as *mut libc::c_void,
                    8,
                    0,
                    libc::IPC_NOWAIT,
                )
            };
            if n != 8 || m.mtype != i as libc::c_long + 1 || &m.mtext != *text {
                return Err(format!(
                    "message {} of queue {} is wrong or missing ({n} bytes)",
                    i + 1,
                    self.msg
                ));
            }
        }
        Ok(())
    }

    fn remove(&self) {
        // SAFETY: detaching our own segment and removing our own objects.
        unsafe {
            libc::shmdt(self.mem as *const libc::c_void);
            libc::shmctl(self.shm, libc::IPC_RMID, std::ptr::null_mut());
            libc::semctl(self.sem, 0, libc::IPC_RMID);
            libc::msgctl(self.msg, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    haul_workloads::worklog::workload_main("sysv-ipc", &args.log, |log, reporter| {
        run(&args, log, reporter)
    })
}

fn run(args: &Args, log: &LogWriter, reporter: StartReporter) -> io::Result<bool> {
    let objs = match Objects::create(args.shm_size as usize) {
        Ok(o) => o,
        Err(e) => return setup_failed(log, reporter, e),
    };
    let ipcns = std::fs::metadata("/proc/self/ns/ipc")?.ino();
    let mut h = Holder::new(
        log,
        &args.stop_file,
        Duration::from_millis(args.interval_ms),
    );
    h.holds(
        "sysv-ipc",
        format_args!(
            "shm={} sem={} msg={} shm_bytes={} ipcns={ipcns}",
            objs.shm, objs.sem, objs.msg, objs.len
        ),
    )?;
    reporter.report(StartCode::Ok)?;
    h.run(|beat| objs.probe(beat as usize))?;
    let check = objs.last_check();
    objs.remove();
    h.finish(check, "")
}
