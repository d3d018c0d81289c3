//! Pre-flight (issue #18, 2.): every regular file the process tree holds open or maps (and
//! its working and root directories) must be under a synced root or present on the
//! destination with the same size and mode; otherwise the migration is refused before the
//! freeze, naming the files.
//!
//! Source: [`held_files`] from `/proc`, [`outside_roots`], [`check_requests`] to send.
//! Destination: [`check_files`] answers with the mismatches. Source: [`refuse_on`] turns them
//! into the error. Files the process holds open but has deleted are CRIU's (ghost files) and
//! are left out.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::error::SyncError;
use super::limits::{MAX_CHECK_FILES, MAX_MESSAGE, MAX_PATH};
use super::path::RootPath;
use super::pb;

/// A file the tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFile {
    /// Its path, as `/proc` shows it (canonical).
    pub path: PathBuf,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    /// How the tree holds it (`"pid 12 fd 3"`, `"pid 12 mapping"`, `"pid 12 cwd"`, ...), the
    /// first holder found.
    pub how: String,
}

/// The regular files the processes `pids` hold open (`/proc/PID/fd`), map
/// (`/proc/PID/map_files`, or `/proc/PID/maps` without the capability to read it) or run
/// (`/proc/PID/exe`), and their working and root directories; deleted files left out.
pub fn held_files(pids: &[i32]) -> Result<Vec<HeldFile>, SyncError> {
    let mut out: BTreeMap<PathBuf, HeldFile> = BTreeMap::new();
    for &pid in pids {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let mut links: Vec<(PathBuf, String)> = Vec::new();
        for (dir, what) in [("fd", "fd"), ("map_files", "mapping")] {
            match std::fs::read_dir(base.join(dir)) {
                Ok(rd) => {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let how = if what == "fd" {
                            format!("pid {pid} fd {name}")
                        } else {
                            format!("pid {pid} mapping")
                        };
                        links.push((e.path(), how));
                    }
                }
                Err(e) if dir == "map_files" => {
                    tracing::debug!(pid, "map_files unreadable ({e}); reading maps");
                    for p in mapped_paths(pid) {
                        links.push((p, format!("pid {pid} mapping")));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break, // gone
                Err(e) => {
                    return Err(SyncError::io(
                        "list",
                        base.join(dir).display().to_string(),
                        e,
                    ))
                }
            }
        }
        for (l, what) in [("exe", "exe"), ("cwd", "cwd"), ("root", "root")] {
            links.push((base.join(l), format!("pid {pid} {what}")));
        }
        for (link, how) in links {
            let Ok(target) = std::fs::read_link(&link) else {
                // a mapping path from `maps` is itself the file
                if link.starts_with("/proc") {
                    continue;
                }
                add(&mut out, &link, &link, how);
                continue;
            };
            if !target.is_absolute() {
                continue; // socket:[..], pipe:[..], anon_inode:..
            }
            add(&mut out, &target, &link, how);
        }
    }
    Ok(out.into_values().collect())
}

fn add(out: &mut BTreeMap<PathBuf, HeldFile>, target: &Path, via: &Path, how: String) {
    if out.contains_key(target) {
        return;
    }
    // stat through the /proc link: the very file the process holds
    let Ok(md) = std::fs::metadata(via) else {
        return;
    };
    if md.nlink() == 0 {
        return; // deleted: a ghost file, CRIU's
    }
    let ft = md.file_type();
    if !(ft.is_file() || ft.is_dir()) {
        return; // devices, fifos, sockets: not files to copy
    }
    out.insert(
        target.to_path_buf(),
        HeldFile {
            path: target.to_path_buf(),
            size: if ft.is_file() { md.len() } else { 0 },
            mode: md.mode(),
            how,
        },
    );
}

/// Paths of file mappings in `/proc/PID/maps`.
fn mapped_paths(pid: i32) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let p = l.splitn(6, ' ').nth(5)?.trim_start();
            (p.starts_with('/') && !p.ends_with(" (deleted)")).then(|| PathBuf::from(p))
        })
        .collect()
}

/// The held files outside every root (a root's own directory counts as inside).
pub fn outside_roots(held: &[HeldFile], roots: &[RootPath]) -> Vec<HeldFile> {
    held.iter()
        .filter(|h| !roots.iter().any(|r| h.path.starts_with(r.as_path())))
        .cloned()
        .collect()
}

/// The files to ask the destination about, in messages of at most [`MAX_CHECK_FILES`] files
/// and half of [`MAX_MESSAGE`] bytes.
pub fn check_requests(files: &[HeldFile]) -> Vec<pb::CheckFiles> {
    let mut out = Vec::new();
    let mut cur = pb::CheckFiles::default();
    for f in files {
        let h = pb::HeldFile {
            path: f.path.as_os_str().as_bytes().to_vec(),
            size: f.size,
            mode: f.mode,
        };
        if cur.files.len() >= MAX_CHECK_FILES
            || cur.encoded_len() + h.encoded_len() + 8 > MAX_MESSAGE / 2
        {
            out.push(std::mem::take(&mut cur));
        }
        cur.files.push(h);
    }
    if !cur.files.is_empty() {
        out.push(cur);
    }
    out
}

/// The destination's answer: which files are missing or differ (size of regular files, and
/// the whole `st_mode`). Paths are resolved from `/` (or `prefix`), following symlinks as
/// the restored process will.
pub fn check_files(
    req: &pb::CheckFiles,
    prefix: Option<&Path>,
) -> Result<pb::FilesChecked, SyncError> {
    if req.files.len() > MAX_CHECK_FILES {
        return Err(SyncError::limit(
            "files in CheckFiles",
            req.files.len() as u64,
            MAX_CHECK_FILES as u64,
        ));
    }
    let mut mismatches = Vec::new();
    for f in &req.files {
        if f.path.len() > MAX_PATH || f.path.first() != Some(&b'/') || f.path.contains(&0) {
            return Err(SyncError::protocol(
                "pre-flight",
                format!(
                    "CheckFiles with the path {:?}",
                    String::from_utf8_lossy(&f.path)
                ),
            ));
        }
        let path = Path::new(OsStr::from_bytes(&f.path));
        let local = match prefix {
            Some(p) => p.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        };
        let problem = match std::fs::metadata(&local) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Some("missing on the destination".to_string())
            }
            Err(e) => Some(format!("cannot stat on the destination: {e}")),
            Ok(md) => {
                if md.mode() != f.mode {
                    Some(format!(
                        "mode {:o} on the destination, {:o} on the source",
                        md.mode(),
                        f.mode
                    ))
                } else if md.is_file() && md.len() != f.size {
                    Some(format!(
                        "{} bytes on the destination, {} on the source",
                        md.len(),
                        f.size
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            mismatches.push(pb::FileMismatch {
                path: f.path.clone(),
                problem,
            });
        }
    }
    Ok(pb::FilesChecked { mismatches })
}

/// The source's verdict from the destination's answers: `Ok` when nothing is missing.
pub fn refuse_on(answers: &[pb::FilesChecked]) -> Result<(), SyncError> {
    let all: Vec<&pb::FileMismatch> = answers.iter().flat_map(|a| &a.mismatches).collect();
    if all.is_empty() {
        return Ok(());
    }
    let list = all
        .iter()
        .take(20)
        .map(|m| format!("{} ({})", String::from_utf8_lossy(&m.path), m.problem))
        .collect::<Vec<_>>()
        .join(", ");
    Err(SyncError::HeldFiles {
        count: all.len(),
        list: if all.len() > 20 {
            format!("{list}, …")
        } else {
            list
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn finds_own_open_files_and_checks_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().canonicalize().unwrap().join("held");
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(b"12345").unwrap();
        let me = std::process::id() as i32;
        let held = held_files(&[me]).unwrap();
        let h = held.iter().find(|h| h.path == p).expect("the open file");
        assert_eq!(h.size, 5);
        assert!(h.how.contains("fd"), "{h:?}");
        // the test binary maps itself
        let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
        assert!(held.iter().any(|h| h.path == exe));
        // a deleted open file is CRIU's
        let gone = d.path().canonicalize().unwrap().join("ghost");
        let _g = std::fs::File::create(&gone).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let held = held_files(&[me]).unwrap();
        assert!(!held.iter().any(|h| h.path.starts_with(&gone)));

        let root = RootPath::from_path(&d.path().canonicalize().unwrap()).unwrap();
        assert!(outside_roots(std::slice::from_ref(h), std::slice::from_ref(&root)).is_empty());
        let outside = outside_roots(std::slice::from_ref(h), &[]);
        let reqs = check_requests(&outside);
        assert_eq!(reqs.len(), 1);
        // present as is: no mismatch
        let a = check_files(&reqs[0], None).unwrap();
        assert!(a.mismatches.is_empty(), "{a:?}");
        assert!(refuse_on(&[a]).is_ok());
        // changed size, and a destination without it
        f.write_all(b"6").unwrap();
        let a = check_files(&reqs[0], None).unwrap();
        assert!(
            a.mismatches[0]
                .problem
                .contains("6 bytes on the destination"),
            "{a:?}"
        );
        let empty = tempfile::tempdir().unwrap();
        let b = check_files(&reqs[0], Some(empty.path())).unwrap();
        assert_eq!(b.mismatches[0].problem, "missing on the destination");
        let e = refuse_on(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("2 file(s)") && e.contains("held"), "{e}");
    }

    #[test]
    fn requests_are_bounded() {
        let files: Vec<HeldFile> = (0..10_000)
            .map(|i| HeldFile {
                path: PathBuf::from(format!("/some/long/path/{}/{i}", "x".repeat(200))),
                size: 1,
                mode: 0o100644,
                how: String::new(),
            })
            .collect();
        let reqs = check_requests(&files);
        assert!(reqs.len() > 2);
        assert_eq!(reqs.iter().map(|r| r.files.len()).sum::<usize>(), 10_000);
        assert!(reqs
            .iter()
            .all(|r| r.files.len() <= MAX_CHECK_FILES && r.encoded_len() <= MAX_MESSAGE / 2));
        let bad = pb::CheckFiles {
            files: vec![pb::HeldFile {
                path: b"relative".to_vec(),
                size: 0,
                mode: 0,
            }],
        };
        assert!(check_files(&bad, None).is_err());
    }
}
