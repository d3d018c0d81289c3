//! The process tree being migrated, as /proc shows it.

use std::path::PathBuf;

/// The state letter of a process (`R`, `S`, `T`, `t`, `Z`, ...), or `None` when it is gone.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: the state follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// The pids of the tree rooted at `pid` (root first).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let path: PathBuf = t.path().join("children");
                if let Ok(text) = std::fs::read_to_string(path) {
                    out.extend(
                        text.split_whitespace()
                            .filter_map(|c| c.parse::<i32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    out
}

/// Resident memory of the tree, in bytes (an estimate of what a dump writes).
pub fn resident_bytes(pid: i32) -> u64 {
    descendants(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/statm")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 4096
}

/// The transparent-huge-page mode (`always`, `madvise`, `never`), when the kernel has THP.
pub fn thp_mode() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = s.find('[')? + 1;
    let end = s[start..].find(']')? + start;
    Some(s[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_resident() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(resident_bytes(me) > 0);
        assert_eq!(descendants(me)[0], me);
    }

    #[test]
    fn a_missing_pid_is_not_alive() {
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(!alive(i32::MAX));
        assert_eq!(state(i32::MAX), None);
    }
}
