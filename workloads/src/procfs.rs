//! Looking at, and damaging, a running workload through `/proc` (host pids).
//!
//! The tests that prove a self-check fails on damaged state use these: find the processes of
//! a workload's tree, read its mappings, and overwrite its memory through `/proc/PID/mem` (root
//! may write there without stopping the process; stopping it first with SIGSTOP makes the
//! damage deterministic).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A `/proc` file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path:?}: {source}")]
pub struct ProcError {
    /// What was attempted.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What the system said.
    #[source]
    pub source: io::Error,
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

fn read_text(pid: i32, rest: &str) -> Result<String, ProcError> {
    let path = proc_path(pid, rest);
    std::fs::read_to_string(&path).map_err(|source| ProcError {
        op: "read",
        path,
        source,
    })
}

/// The process state letter (`R`, `S`, `T`, `Z`, ...), or `None` when there is no such pid.
pub fn state(pid: i32) -> Option<char> {
    let stat = read_text(pid, "stat").ok()?;
    // comm may hold spaces and parentheses: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn is_alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// The command name (`comm`) of `pid`.
pub fn comm(pid: i32) -> Option<String> {
    read_text(pid, "comm")
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Thread ids of `pid` (host view).
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = proc_path(pid, "task");
    let dir = std::fs::read_dir(&path).map_err(|source| ProcError {
        op: "list",
        path: path.clone(),
        source,
    })?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// Children of `pid` (of all its threads), host pids, sorted.
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut kids = Vec::new();
    for tid in threads(pid)? {
        if let Ok(text) = read_text(pid, &format!("task/{tid}/children")) {
            kids.extend(
                text.split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    kids.sort_unstable();
    kids.dedup();
    Ok(kids)
}

/// `pid` as its innermost pid namespace sees it (the last `NSpid` field).
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = read_text(pid, "status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_ascii_whitespace()
        .last()?
        .parse()
        .ok()
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `rw-p`.
    pub perms: String,
    /// The backing path or pseudo-name (`[heap]`), empty for anonymous memory.
    pub name: String,
}

/// The mappings of `pid`.
pub fn mappings(pid: i32) -> Result<Vec<Mapping>, ProcError> {
    let text = read_text(pid, "maps")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let name = f.nth(3).unwrap_or("").to_string();
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                perms,
                name,
            })
        })
        .collect())
}

/// Read `len` bytes at `addr` of `pid`'s memory.
pub fn read_mem(pid: i32, addr: u64, len: usize) -> Result<Vec<u8>, ProcError> {
    let path = proc_path(pid, "mem");
    let err = |source| ProcError {
        op: "read",
        path: path.clone(),
        source,
    };
    let f = std::fs::File::open(&path).map_err(err)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, addr).map_err(err)?;
    Ok(buf)
}

/// Overwrite `pid`'s memory at `addr` with `data`.
pub fn write_mem(pid: i32, addr: u64, data: &[u8]) -> Result<(), ProcError> {
    let path = proc_path(pid, "mem");
    let err = |source| ProcError {
        op: "write",
        path: path.clone(),
        source,
    };
    let f = OpenOptions::new().write(true).open(&path).map_err(err)?;
    f.write_all_at(data, addr).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_at_itself() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(threads(me).unwrap().contains(&me));
        assert!(ns_pid(me).is_some());
        assert!(comm(me).is_some());
        let maps = mappings(me).unwrap();
        let value = Box::new(0x5a5a_u64);
        let addr = &*value as *const u64 as u64;
        assert!(maps.iter().any(|m| m.start <= addr && addr < m.end));
        assert_eq!(read_mem(me, addr, 8).unwrap(), 0x5a5a_u64.to_ne_bytes());
        assert!(!is_alive(i32::MAX));
        let e = threads(i32::MAX).unwrap_err();
        assert!(e.to_string().contains(&format!("/proc/{}/task", i32::MAX)));
    }
}
