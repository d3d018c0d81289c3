//! File sync round trips: a tree with every kind of entry, and random trees with random
//! changes between rounds, come out equal on the destination (type, mode, owner, times,
//! content, sparse extents, hard links, symlinks); later rounds send only what changed.

mod sync_support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use haul::sync::loopback;
use haul::sync::receiver::{backup_name, staging_name};
use proptest::prelude::*;
use sync_support::*;

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    if is_root() {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with one of everything.
fn build_everything(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/small"), b"hello").unwrap();
    std::fs::write(root.join("a/empty"), b"").unwrap();
    // a large file across several segments
    std::fs::write(root.join("a/big"), bytes(1, 9 << 20)).unwrap();
    // sparse: holes at the start, the middle and the end
    write_at(&root.join("sparse"), 5 << 20, &bytes(2, 100_000));
    write_at(&root.join("sparse"), 12 << 20, &bytes(3, 4096));
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("sparse"))
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    // hard links within the tree
    std::fs::hard_link(root.join("a/small"), root.join("a/b/small-link")).unwrap();
    std::fs::hard_link(root.join("a/small"), root.join("0-first-link")).unwrap();
    symlink("../small", root.join("a/b/to-small")).unwrap();
    symlink("dangling-but-inside", root.join("a/dangling")).unwrap();
    mkfifo(&root.join("a/b/pipe"));
    chmod(&root.join("a/b/c"), 0o1777);
    chmod(&root.join("a/big"), 0o4755);
    chmod(&root.join("a/empty"), 0o000);
    chown(&root.join("a/big"), 1000, 1000);
    chown(&root.join("a/b/to-small"), 65534, 65534);
    chown(&root.join("a/b/pipe"), 1000, 0);
    set_times(
        &root.join("a/small"),
        (1_600_000_000, 5),
        (1_500_000_000, 999_999_999),
    );
    set_times(
        &root.join("a/b/to-small"),
        (1_400_000_000, 1),
        (1_400_000_001, 2),
    );
    set_times(&root.join("a/b/c"), (1_300_000_000, 0), (1_300_000_000, 7));
    set_times(&root.join("a/b"), (1_300_000_000, 0), (1_300_000_100, 7));
    set_times(&root.join("a"), (1_200_000_000, 0), (1_200_000_100, 7));
    chmod(root, 0o750);
    set_times(root, (1_100_000_000, 0), (1_100_000_100, 7));
}

#[test]
fn everything_round_trips_and_commits() {
    let pair = Pair::new();
    build_everything(&pair.src);
    let before = snapshot(&pair.src);
    let (mut src, mut dst, opened) = loopback::open(pair.src_cfg("m1"), pair.dst_cfg()).unwrap();
    assert!(opened.free_bytes > 0);
    let r1 = loopback::run_round(&mut src, &mut dst, false).unwrap();
    assert!(r1.literal_bytes >= (9 << 20) + 100_000 + 4096 + 5);
    assert!(
        r1.literal_bytes < (9 << 20) + (1 << 20),
        "holes are not sent: {r1:?}"
    );
    let r2 = loopback::run_round(&mut src, &mut dst, true).unwrap();
    assert_eq!(r2.payload_bytes(), 0, "nothing changed: {}", r2.log_line());
    let installed = dst.install().map_err(|f| f.to_string()).unwrap();
    let want = snapshot(&pair.src);
    assert_same(&want, &snapshot(&pair.dst()), "after install");
    assert_same_but_link_atimes(&before, &want, "the source is untouched");
    installed.commit().unwrap();
    assert_same_but_link_atimes(&want, &snapshot(&pair.dst()), "after commit");
    assert!(!pair.dst().join(staging_name("m1")).exists());
}

#[test]
fn later_rounds_send_deltas_of_what_changed() {
    let pair = Pair::new();
    std::fs::create_dir(pair.src.join("d")).unwrap();
    for i in 0..8 {
        std::fs::write(pair.src.join(format!("d/f{i}")), bytes(i, 3 << 20)).unwrap();
    }
    std::fs::write(pair.src.join("log"), bytes(99, 1 << 20)).unwrap();
    let (mut src, mut dst, _) = loopback::open(pair.src_cfg("m2"), pair.dst_cfg()).unwrap();
    let r1 = loopback::run_round(&mut src, &mut dst, false).unwrap();
    assert_eq!(r1.literal_bytes, 25 << 20);
    // rewrite 64 KiB in two files, append 100 KB to the log
    write_at(&pair.src.join("d/f1"), 1 << 20, &bytes(7, 65536));
    write_at(&pair.src.join("d/f5"), 0, &bytes(8, 65536));
    write_at(&pair.src.join("log"), 1 << 20, &bytes(9, 100_000));
    // make sure the stat changes are visible whatever the timestamp granularity
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r2 = loopback::run_round(&mut src, &mut dst, false).unwrap();
    // the two rewrites as deltas, the append (a segment of its own) as literal data
    assert_eq!(
        (r2.segments_delta, r2.segments_literal),
        (2, 1),
        "{}",
        r2.log_line()
    );
    assert!(
        r2.payload_bytes() < 400_000,
        "only the changes travel: {}",
        r2.log_line()
    );
    let r3 = loopback::run_round(&mut src, &mut dst, true).unwrap();
    assert!(r3.payload_bytes() < 400_000, "{}", r3.log_line());
    let installed = dst.install().map_err(|f| f.to_string()).unwrap();
    assert_same(
        &snapshot(&pair.src),
        &snapshot(&pair.dst()),
        "after install",
    );
    installed.commit().unwrap();
}

#[test]
fn a_root_with_old_content_gets_it_back_on_rollback_and_loses_it_on_commit() {
    for commit in [false, true] {
        let pair = Pair::new();
        build_everything(&pair.src);
        let dst = pair.dst();
        std::fs::create_dir_all(dst.join("old-dir")).unwrap();
        std::fs::write(dst.join("old-file"), b"old").unwrap();
        std::fs::write(dst.join("small"), b"would clash").unwrap();
        let old = snapshot(&dst);
        let (mut s, mut d, _) = loopback::open(pair.src_cfg("m3"), pair.dst_cfg()).unwrap();
        // (one round before the final one: a symlink's access time moves when it is first read)
        loopback::run_round(&mut s, &mut d, false).unwrap();
        loopback::run_round(&mut s, &mut d, true).unwrap();
        let installed = d.install().map_err(|f| f.to_string()).unwrap();
        let new = snapshot(&pair.src);
        let mut seen = snapshot(&dst);
        // between install and commit the old content waits aside
        let backup = std::path::PathBuf::from(backup_name("m3"));
        seen.retain(|p, _| !p.starts_with(&backup));
        let mut expect = new.clone();
        expect.remove(Path::new("")); // the root's times changed with the backup inside
        seen.remove(Path::new(""));
        assert_same(&expect, &seen, "installed");
        if commit {
            installed.commit().unwrap();
            assert_same_but_link_atimes(&new, &snapshot(&dst), "committed");
        } else {
            let report = installed.rollback();
            assert!(report.problems.is_empty(), "{report:?}");
            assert_same(&old, &snapshot(&dst), "rolled back");
        }
    }
}

// ------------------------------------------------------------------ random trees

#[derive(Debug, Clone)]
enum Content {
    /// (hole before, data length, seed) pieces
    Pieces(Vec<(u32, u32, u64)>),
}

#[derive(Debug, Clone)]
struct FileSpec {
    dir: usize,
    content: Content,
    mode: u32,
    owner: u32,
    mtime: i64,
}

#[derive(Debug, Clone)]
struct TreeSpec {
    /// parent index (0 = root) per directory 1..
    dirs: Vec<usize>,
    files: Vec<FileSpec>,
    /// (file index, dir) extra names
    links: Vec<(usize, usize)>,
    /// (dir, target file index, dangling)
    symlinks: Vec<(usize, usize, bool)>,
    fifos: Vec<usize>,
    dir_modes: Vec<u32>,
}

#[derive(Debug, Clone)]
enum Change {
    Rewrite {
        file: usize,
        at: u32,
        len: u32,
        seed: u64,
    },
    Append {
        file: usize,
        len: u32,
        seed: u64,
    },
    Truncate {
        file: usize,
        to: u32,
    },
    Delete {
        file: usize,
    },
    Replace {
        file: usize,
        seed: u64,
    },
    Chmod {
        file: usize,
        mode: u32,
    },
    Touch {
        file: usize,
        mtime: i64,
    },
    NewFile {
        dir: usize,
        seed: u64,
        len: u32,
    },
    FileBecomesDir {
        file: usize,
    },
    RemoveDir {
        dir: usize,
    },
    Punch {
        file: usize,
    },
}

fn content_strategy() -> impl Strategy<Value = Content> {
    let piece = (
        prop_oneof![3 => Just(0u32), 1 => 0u32..200_000, 1 => (4u32 << 20)..(9u32 << 20)],
        prop_oneof![4 => 0u32..20_000, 1 => 20_000u32..300_000],
        any::<u64>(),
    );
    proptest::collection::vec(piece, 0..3).prop_map(Content::Pieces)
}

fn tree_strategy() -> impl Strategy<Value = TreeSpec> {
    let modes = prop_oneof![
        Just(0o644u32),
        Just(0o600),
        Just(0o755),
        Just(0o4711),
        Just(0o000)
    ];
    let dir_modes = prop_oneof![Just(0o755u32), Just(0o700), Just(0o1777), Just(0o555)];
    (1usize..5).prop_flat_map(move |ndirs| {
        (
            proptest::collection::vec(0usize..1000, ndirs - 1),
            proptest::collection::vec(
                (
                    0usize..ndirs,
                    content_strategy(),
                    modes.clone(),
                    0u32..3,
                    1_000_000_000i64..2_000_000_000,
                ),
                0..7,
            ),
            proptest::collection::vec((0usize..100, 0usize..ndirs), 0..3),
            proptest::collection::vec((0usize..ndirs, 0usize..100, any::<bool>()), 0..3),
            proptest::collection::vec(0usize..ndirs, 0..2),
            proptest::collection::vec(dir_modes.clone(), ndirs),
        )
            .prop_map(move |(parents, files, links, symlinks, fifos, dir_modes)| {
                TreeSpec {
                    dirs: parents
                        .iter()
                        .enumerate()
                        .map(|(i, p)| p % (i + 1))
                        .collect(),
                    files: files
                        .into_iter()
                        .map(|(dir, content, mode, owner, mtime)| FileSpec {
                            dir,
                            content,
                            mode,
                            owner,
                            mtime,
                        })
                        .collect(),
                    links,
                    symlinks,
                    fifos,
                    dir_modes,
                }
            })
    })
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..100, 0u32..(10 << 20), 1u32..200_000, any::<u64>()).prop_map(
            |(file, at, len, seed)| Change::Rewrite {
                file,
                at,
                len,
                seed
            }
        ),
        (0usize..100, 1u32..300_000, any::<u64>()).prop_map(|(file, len, seed)| Change::Append {
            file,
            len,
            seed
        }),
        (0usize..100, 0u32..(6 << 20)).prop_map(|(file, to)| Change::Truncate { file, to }),
        (0usize..100).prop_map(|file| Change::Delete { file }),
        (0usize..100, any::<u64>()).prop_map(|(file, seed)| Change::Replace { file, seed }),
        (0usize..100, prop_oneof![Just(0o600u32), Just(0o2755)])
            .prop_map(|(file, mode)| Change::Chmod { file, mode }),
        (0usize..100, 1_000_000_000i64..2_000_000_000)
            .prop_map(|(file, mtime)| Change::Touch { file, mtime }),
        (0usize..10, any::<u64>(), 0u32..100_000).prop_map(|(dir, seed, len)| Change::NewFile {
            dir,
            seed,
            len
        }),
        (0usize..100).prop_map(|file| Change::FileBecomesDir { file }),
        (1usize..10).prop_map(|dir| Change::RemoveDir { dir }),
        (0usize..100).prop_map(|file| Change::Punch { file }),
    ]
}

struct Built {
    dirs: Vec<std::path::PathBuf>,
    files: Vec<std::path::PathBuf>,
    dir_modes: Vec<u32>,
    dir_times: Vec<i64>,
}

fn build(root: &Path, t: &TreeSpec) -> Built {
    let mut dirs = vec![root.to_path_buf()];
    for (i, &p) in t.dirs.iter().enumerate() {
        let d = dirs[p].join(format!("d{}", i + 1));
        std::fs::create_dir(&d).unwrap();
        dirs.push(d);
    }
    let mut files = Vec::new();
    for (i, f) in t.files.iter().enumerate() {
        let p = dirs[f.dir].join(format!("f{i}"));
        std::fs::write(&p, b"").unwrap();
        let Content::Pieces(pieces) = &f.content;
        let mut off = 0u64;
        for &(hole, len, seed) in pieces {
            off += hole as u64;
            write_at(&p, off, &bytes(seed, len as usize));
            off += len as u64;
        }
        if off > 0 && pieces.last().is_some_and(|x| x.1 == 0) {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(off)
                .unwrap();
        }
        files.push(p);
    }
    for (i, &(f, d)) in t.links.iter().enumerate() {
        if !files.is_empty() {
            std::fs::hard_link(&files[f % files.len()], dirs[d].join(format!("h{i}"))).unwrap();
        }
    }
    for (i, &(d, f, dangling)) in t.symlinks.iter().enumerate() {
        let target = if dangling || files.is_empty() {
            "nothing-here".to_string()
        } else {
            // relative to the link's directory: up to the root, then down
            let depth = dirs[d].strip_prefix(root).unwrap().components().count();
            let rel = files[f % files.len()].strip_prefix(root).unwrap();
            format!("{}{}", "../".repeat(depth), rel.display())
        };
        let l = dirs[d].join(format!("s{i}"));
        symlink(&target, &l).unwrap();
        chown(&l, 1000, 1000);
        set_times(&l, (1_234_567_890, 1), (1_234_567_891, 2));
    }
    for (i, &d) in t.fifos.iter().enumerate() {
        mkfifo(&dirs[d].join(format!("p{i}")));
    }
    for (f, p) in t.files.iter().zip(&files) {
        chown(
            p,
            [0, 1000, 65534][f.owner as usize],
            [0, 100, 65534][f.owner as usize],
        );
        chmod(p, f.mode);
        set_times(p, (f.mtime - 7, 11), (f.mtime, 123));
    }
    let b = Built {
        dir_times: (0..dirs.len()).map(|i| 1_100_000_000 + i as i64).collect(),
        dir_modes: t.dir_modes.clone(),
        dirs,
        files,
    };
    seal_dirs(&b);
    b
}

/// Directory modes and times, deepest first (what the changes disturb).
fn seal_dirs(b: &Built) {
    for i in (0..b.dirs.len()).rev() {
        if !b.dirs[i].is_dir() || b.dirs[i].is_symlink() {
            continue;
        }
        chmod(&b.dirs[i], b.dir_modes[i]);
        set_times(&b.dirs[i], (b.dir_times[i], 3), (b.dir_times[i], 4));
    }
}

fn apply(b: &mut Built, changes: &[Change]) {
    let n = b.files.len();
    let file = |i: usize| -> Option<std::path::PathBuf> {
        (n > 0)
            .then(|| b.files[i % n].clone())
            .filter(|p| p.is_file() && !p.is_symlink())
    };
    for c in changes {
        match c {
            Change::Rewrite {
                file: f,
                at,
                len,
                seed,
            } => {
                if let Some(p) = file(*f) {
                    let size = std::fs::metadata(&p).unwrap().len();
                    let at = if size == 0 { 0 } else { *at as u64 % size };
                    write_at(&p, at, &bytes(*seed, *len as usize));
                }
            }
            Change::Append { file: f, len, seed } => {
                if let Some(p) = file(*f) {
                    let size = std::fs::metadata(&p).unwrap().len();
                    write_at(&p, size, &bytes(*seed, *len as usize));
                }
            }
            Change::Truncate { file: f, to } => {
                if let Some(p) = file(*f) {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_len(*to as u64)
                        .unwrap();
                }
            }
            Change::Delete { file: f } => {
                if let Some(p) = file(*f) {
                    std::fs::remove_file(&p).unwrap();
                }
            }
            Change::Replace { file: f, seed } => {
                // atomic rewrite: a new inode under the same name (hard links keep the old)
                if let Some(p) = file(*f) {
                    let tmp = p.with_extension("tmp-new");
                    std::fs::write(&tmp, bytes(*seed, 50_000)).unwrap();
                    std::fs::rename(&tmp, &p).unwrap();
                }
            }
            Change::Chmod { file: f, mode } => {
                if let Some(p) = file(*f) {
                    chmod(&p, *mode);
                }
            }
            Change::Touch { file: f, mtime } => {
                if let Some(p) = file(*f) {
                    set_times(&p, (*mtime, 0), (*mtime, 1));
                }
            }
            Change::NewFile { dir, seed, len } => {
                let d = &b.dirs[dir % b.dirs.len()];
                if d.is_dir() {
                    let p = d.join(format!("new{seed}"));
                    std::fs::write(&p, bytes(*seed, *len as usize)).unwrap();
                }
            }
            Change::FileBecomesDir { file: f } => {
                if let Some(p) = file(*f) {
                    std::fs::remove_file(&p).unwrap();
                    std::fs::create_dir(&p).unwrap();
                    std::fs::write(p.join("inside"), b"now a directory").unwrap();
                }
            }
            Change::RemoveDir { dir } => {
                let i = dir % b.dirs.len();
                if i > 0 && b.dirs[i].is_dir() {
                    std::fs::remove_dir_all(&b.dirs[i]).unwrap();
                }
            }
            Change::Punch { file: f } => {
                if let Some(p) = file(*f) {
                    let fd = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                    let size = fd.metadata().unwrap().len();
                    let _ = rustix::fs::fallocate(
                        &fd,
                        rustix::fs::FallocateFlags::PUNCH_HOLE
                            | rustix::fs::FallocateFlags::KEEP_SIZE,
                        0,
                        size / 2,
                    );
                }
            }
        }
    }
    seal_dirs(b);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn random_trees_and_changes_round_trip(
        tree in tree_strategy(),
        changes1 in proptest::collection::vec(change_strategy(), 0..6),
        changes2 in proptest::collection::vec(change_strategy(), 0..4),
    ) {
        let pair = Pair::new();
        let mut built = build(&pair.src, &tree);
        let (mut src, mut dst, _) = loopback::open(pair.src_cfg("prop"), pair.dst_cfg()).unwrap();
        loopback::run_round(&mut src, &mut dst, false).unwrap();
        apply(&mut built, &changes1);
        loopback::run_round(&mut src, &mut dst, false).unwrap();
        apply(&mut built, &changes2);
        let last = loopback::run_round(&mut src, &mut dst, true).unwrap();
        let installed = dst.install().map_err(|f| f.to_string()).unwrap();
        let want = snapshot(&pair.src);
        assert_same(&want, &snapshot(&pair.dst()), &format!("after install (last round: {})", last.log_line()));
        installed.commit().unwrap();
        assert_same_but_link_atimes(&want, &snapshot(&pair.dst()), "after commit");
        prop_assert_eq!(names(&pair.dst()), names(&pair.src));
    }
}
