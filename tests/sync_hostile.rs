//! The destination against a hostile or broken source, and interrupted syncs: paths that
//! escape (`..`, absolute names, symlinks pointing out, a symlink swapped in mid-sync, a
//! synced root that is a symlink), oversized claims, messages out of order; a receiver or a
//! source dropped mid-round leaves the destination (and the source) as they were.

mod sync_support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use haul::sync::pb::{self, sync_message::Body};
use haul::sync::receiver::staging_name;
use haul::sync::{loopback, ReceiverConfig, SymlinkPolicy, SyncError, SyncReceiver, SyncSource};
use prost::Message as _;
use sync_support::*;

const SEG: u64 = haul::sync::limits::SEGMENT_LEN;

fn m(body: Body) -> pb::SyncMessage {
    pb::SyncMessage { body: Some(body) }
}

fn open_msg(pair: &Pair, session: &str) -> pb::SyncOpen {
    use std::os::unix::ffi::OsStrExt;
    pb::SyncOpen {
        session: session.into(),
        roots: vec![pair.src.as_os_str().as_bytes().to_vec()],
        data_bytes: 0,
        entries: 0,
    }
}

static SESSION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A receiver for `pair`'s root, in round 1 (each with its own session id, `h<n>`).
fn in_round(pair: &Pair, cfg: ReceiverConfig) -> SyncReceiver {
    let n = SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut rx, _) = SyncReceiver::open(cfg, &open_msg(pair, &format!("h{n}"))).unwrap();
    rx.handle(m(Body::RoundBegin(pb::RoundBegin {
        round: 1,
        r#final: false,
    })))
    .unwrap();
    rx
}

fn meta() -> Option<pb::Meta> {
    Some(pb::Meta {
        mode: 0o644,
        ..Default::default()
    })
}

fn file_begin(path: &[u8], size: u64, extents: &[(u64, u64)], basis: pb::Basis) -> Body {
    Body::FileBegin(pb::FileBegin {
        root: 0,
        path: path.to_vec(),
        meta: meta(),
        size,
        extents: extents
            .iter()
            .map(|&(offset, len)| pb::Extent { offset, len })
            .collect(),
        basis: basis as i32,
        segment_len: SEG,
    })
}

/// A directory outside the tree with a file that must never change.
fn outside(pair: &Pair) -> PathBuf {
    let o = pair.base.path().join("outside");
    std::fs::create_dir_all(&o).unwrap();
    std::fs::write(o.join("victim"), b"untouched").unwrap();
    o
}

fn assert_outside_untouched(o: &Path) {
    assert_eq!(names(o), vec!["victim".to_string()]);
    assert_eq!(std::fs::read(o.join("victim")).unwrap(), b"untouched");
}

#[test]
fn escaping_paths_are_refused() {
    let bad: &[&[u8]] = &[
        b"../x",
        b"/etc/passwd",
        b"a/../../x",
        b"a//b",
        b"./x",
        b"x/",
        b"a\0b",
    ];
    let pair = Pair::new();
    let out = outside(&pair);
    for p in bad {
        let bodies = [
            Body::Remove(pb::Remove {
                root: 0,
                path: p.to_vec(),
            }),
            Body::Dir(pb::Dir {
                root: 0,
                path: p.to_vec(),
                meta: meta(),
            }),
            file_begin(p, 1, &[(0, 1)], pb::Basis::None),
            Body::Symlink(pb::Symlink {
                root: 0,
                path: p.to_vec(),
                target: b"x".to_vec(),
                meta: meta(),
            }),
            Body::HardLink(pb::HardLink {
                root: 0,
                path: b"ok".to_vec(),
                leader: p.to_vec(),
            }),
        ];
        for b in bodies {
            let mut rx = in_round(&pair, pair.dst_cfg());
            let e = rx.handle(m(b.clone())).unwrap_err();
            assert!(matches!(e, SyncError::Path { .. }), "{b:?}: {e}");
            // broken from now on
            assert!(rx.handle(m(b)).is_err());
            drop(rx);
            assert!(!pair.dst().exists(), "the root this session made is gone");
        }
    }
    // the root itself cannot be removed, nor a root index beyond the roots
    let mut rx = in_round(&pair, pair.dst_cfg());
    assert!(rx
        .handle(m(Body::Remove(pb::Remove {
            root: 0,
            path: vec![]
        })))
        .is_err());
    let mut rx = in_round(&pair, pair.dst_cfg());
    assert!(rx
        .handle(m(Body::Dir(pb::Dir {
            root: 7,
            path: b"x".to_vec(),
            meta: meta()
        })))
        .is_err());
    assert_outside_untouched(&out);
}

#[test]
fn symlinks_out_of_the_tree_are_refused_and_never_followed() {
    let pair = Pair::new();
    let out = outside(&pair);
    // the default policy refuses a link that leaves the tree
    let mut rx = in_round(&pair, pair.dst_cfg());
    let e = rx
        .handle(m(Body::Symlink(pb::Symlink {
            root: 0,
            path: b"l".to_vec(),
            target: b"../../../outside".to_vec(),
            meta: meta(),
        })))
        .unwrap_err();
    assert!(matches!(e, SyncError::SymlinkOutside { .. }), "{e}");
    drop(rx);
    // allowed as a link, it is still never followed
    let cfg = ReceiverConfig {
        symlinks: SymlinkPolicy::Any,
        ..pair.dst_cfg()
    };
    let link = |rx: &mut SyncReceiver| {
        rx.handle(m(Body::Symlink(pb::Symlink {
            root: 0,
            path: b"l".to_vec(),
            target: out.as_os_str().as_encoded_bytes().to_vec(),
            meta: meta(),
        })))
        .unwrap();
    };
    let through: Vec<Body> = vec![
        Body::Dir(pb::Dir {
            root: 0,
            path: b"l/x".to_vec(),
            meta: meta(),
        }),
        file_begin(b"l/victim", 3, &[(0, 3)], pb::Basis::None),
        file_begin(b"l/victim", 3, &[(0, 3)], pb::Basis::InPlace),
        file_begin(b"l", 3, &[(0, 3)], pb::Basis::InPlace),
        Body::Remove(pb::Remove {
            root: 0,
            path: b"l/victim".to_vec(),
        }),
        Body::Fifo(pb::Fifo {
            root: 0,
            path: b"l/fifo".to_vec(),
            meta: meta(),
        }),
        Body::HardLink(pb::HardLink {
            root: 0,
            path: b"h".to_vec(),
            leader: b"l/victim".to_vec(),
        }),
    ];
    for b in through {
        let mut rx = in_round(&pair, cfg.clone());
        link(&mut rx);
        let e = rx
            .handle(m(b.clone()))
            .expect_err(&format!("{b:?} went through"));
        assert!(
            matches!(e, SyncError::Escape { .. } | SyncError::Protocol { .. }),
            "{b:?}: {e}"
        );
        assert_outside_untouched(&out);
    }
    assert!(!pair.dst().exists());
}

/// Round 1 of a file `d/f` holding `data`.
fn send_file(rx: &mut SyncReceiver, round: u32, path: &[u8], data: &[u8], basis: pb::Basis) {
    rx.handle(m(file_begin(
        path,
        data.len() as u64,
        &[(0, data.len() as u64)],
        basis,
    )))
    .unwrap();
    rx.handle(m(Body::Literal(pb::Literal {
        offset: 0,
        data: data.to_vec(),
    })))
    .unwrap();
    rx.handle(m(Body::SegmentEnd(pb::SegmentEnd {
        segment: 0,
        len: data.len() as u64,
        blake3: blake3::hash(data).as_bytes().to_vec(),
        delta: false,
    })))
    .unwrap();
    rx.handle(m(Body::FileEnd(pb::FileEnd {}))).unwrap();
    let _ = round;
}

#[test]
fn a_symlink_swapped_in_mid_sync_is_not_followed_on_the_destination() {
    let pair = Pair::new();
    let out = outside(&pair);
    let mut rx = in_round(&pair, pair.dst_cfg());
    rx.handle(m(Body::Dir(pb::Dir {
        root: 0,
        path: b"d".to_vec(),
        meta: meta(),
    })))
    .unwrap();
    send_file(&mut rx, 1, b"d/victim", b"new", pb::Basis::None);
    rx.handle(m(Body::RoundEnd(pb::RoundEnd {
        round: 1,
        messages: 6,
        ..Default::default()
    })))
    .unwrap();
    // something on the destination swaps the staged directory for a symlink out
    let staging = names(&pair.dst()).pop().unwrap();
    assert!(staging.starts_with(".haul-sync.h"), "{staging}");
    let tree = pair.dst().join(staging).join("tree");
    std::fs::rename(tree.join("d"), tree.join("d.moved")).unwrap();
    symlink(&out, tree.join("d")).unwrap();
    rx.handle(m(Body::RoundBegin(pb::RoundBegin {
        round: 2,
        r#final: false,
    })))
    .unwrap();
    let e = rx
        .handle(m(file_begin(b"d/victim", 3, &[(0, 3)], pb::Basis::InPlace)))
        .unwrap_err();
    assert!(matches!(e, SyncError::Escape { .. }), "{e}");
    drop(rx);
    assert_outside_untouched(&out);
    assert!(!pair.dst().exists());
}

#[test]
fn a_symlink_swapped_in_mid_sync_is_not_followed_on_the_source() {
    let pair = Pair::new();
    let out = outside(&pair);
    std::fs::write(out.join("secret"), b"SECRET-SECRET-SECRET").unwrap();
    std::fs::create_dir(pair.src.join("d")).unwrap();
    std::fs::write(pair.src.join("d/secret"), b"public").unwrap();
    let (mut src, mut dst, _) = loopback::open(pair.src_cfg("s"), pair.dst_cfg()).unwrap();
    loopback::run_round(&mut src, &mut dst, false).unwrap();
    std::fs::write(pair.src.join("d/secret"), b"public2").unwrap();
    let mut round = src.round(false).unwrap(); // scanned: d is a directory
                                               // the process swaps d for a symlink to a directory it should not reach
    std::fs::rename(pair.src.join("d"), pair.src.join("d.old")).unwrap();
    symlink(&out, pair.src.join("d")).unwrap();
    let mut msgs = Vec::new();
    while let Some(x) = round.next_message().unwrap() {
        msgs.push(x.encode_to_vec());
    }
    drop(round);
    let all: Vec<u8> = msgs.concat();
    assert!(
        !all.windows(6).any(|w| w == b"SECRET"),
        "the source read through the swapped-in symlink"
    );
    // the next scan sees the link and refuses it (it points out of the tree)
    let e = src.round(false).unwrap_err();
    assert!(matches!(e, SyncError::SymlinkOutside { .. }), "{e}");
}

#[test]
fn oversized_claims_are_refused() {
    let pair = Pair::new();
    oversized_claims(&pair);
    // every receiver above is dropped: nothing is left on the destination
    assert!(!pair.dst().exists());
}

fn oversized_claims(pair: &Pair) {
    // a file larger than the limit
    let cfg = ReceiverConfig {
        max_file_size: 1 << 20,
        ..pair.dst_cfg()
    };
    let mut rx = in_round(pair, cfg);
    let e = rx
        .handle(m(file_begin(b"f", 2 << 20, &[], pb::Basis::None)))
        .unwrap_err();
    assert!(matches!(e, SyncError::Limit { .. }), "{e}");
    // more data than the free space (less the reserve) allows
    let tight = ReceiverConfig {
        reserve_bytes: u64::MAX / 2,
        ..pair.dst_cfg()
    };
    let mut rx = in_round(pair, tight.clone());
    let e = rx
        .handle(m(file_begin(
            b"f",
            1 << 20,
            &[(0, 1 << 20)],
            pb::Basis::None,
        )))
        .unwrap_err();
    assert!(matches!(e, SyncError::Space { .. }), "{e}");
    let mut open = open_msg(pair, "big");
    open.data_bytes = 1 << 50;
    assert!(matches!(
        SyncReceiver::open(pair.dst_cfg(), &open),
        Err(SyncError::Space { .. })
    ));
    // extents beyond the size, overlapping, or empty
    for ext in [&[(0u64, 5u64)][..], &[(0, 2), (1, 2)], &[(1, 0)]] {
        let mut rx = in_round(pair, pair.dst_cfg());
        assert!(rx
            .handle(m(file_begin(b"f", 4, ext, pb::Basis::None)))
            .is_err());
    }
    // literal data beyond the size, across a segment, outside the extents, too large
    let lit = |offset: u64, len: usize| {
        Body::Literal(pb::Literal {
            offset,
            data: vec![1; len],
        })
    };
    let size = SEG + 10;
    for (what, body) in [
        ("beyond the size", lit(size - 2, 5)),
        ("across a segment", lit(SEG - 2, 4)),
        ("outside the extents", lit(100, 4)),
        ("too large", lit(0, haul::sync::limits::CHUNK + 1)),
    ] {
        let mut rx = in_round(pair, pair.dst_cfg());
        rx.handle(m(file_begin(
            b"f",
            size,
            &[(0, 50), (SEG - 10, 20)],
            pb::Basis::None,
        )))
        .unwrap();
        assert!(rx.handle(m(body)).is_err(), "{what}");
    }
    // a delta larger than any segment's
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(file_begin(b"f", 10, &[(0, 10)], pb::Basis::None)))
        .unwrap();
    let mut e = None;
    for _ in 0..12 {
        if let Err(x) = rx.handle(m(Body::Delta(pb::Delta {
            segment: 0,
            data: vec![0; haul::sync::limits::CHUNK],
        }))) {
            e = Some(x);
            break;
        }
    }
    assert!(matches!(e, Some(SyncError::Limit { .. })), "{e:?}");
    // a delta that expands beyond its segment's length
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(file_begin(b"f", 10, &[(0, 10)], pb::Basis::None)))
        .unwrap();
    let sig = fast_rsync::Signature::calculate(
        b"",
        fast_rsync::SignatureOptions {
            block_size: 4096,
            crypto_hash_size: 8,
        },
    );
    let mut delta = Vec::new();
    fast_rsync::diff(&sig.index(), &[7u8; 5000], &mut delta).unwrap();
    rx.handle(m(Body::Delta(pb::Delta {
        segment: 0,
        data: delta,
    })))
    .unwrap();
    let e = rx
        .handle(m(Body::SegmentEnd(pb::SegmentEnd {
            segment: 0,
            len: 10,
            blake3: vec![0; 32],
            delta: true,
        })))
        .unwrap_err();
    assert!(matches!(e, SyncError::Delta { .. }), "{e}");
    // data that does not hash to what the source claims
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(file_begin(b"f", 3, &[(0, 3)], pb::Basis::None)))
        .unwrap();
    rx.handle(m(lit(0, 3))).unwrap();
    let e = rx
        .handle(m(Body::SegmentEnd(pb::SegmentEnd {
            segment: 0,
            len: 3,
            blake3: blake3::hash(b"abc").as_bytes().to_vec(),
            delta: false,
        })))
        .unwrap_err();
    assert!(matches!(e, SyncError::Verify { .. }), "{e}");
}

#[test]
fn messages_out_of_order_are_refused() {
    let pair = Pair::new();
    out_of_order(&pair);
    assert!(!pair.dst().exists());
}

fn out_of_order(pair: &Pair) {
    let (mut rx, _) = SyncReceiver::open(pair.dst_cfg(), &open_msg(pair, "o")).unwrap();
    assert!(rx
        .handle(m(Body::Dir(pb::Dir {
            root: 0,
            path: b"x".to_vec(),
            meta: meta()
        })))
        .is_err());
    let (mut rx, _) = SyncReceiver::open(pair.dst_cfg(), &open_msg(pair, "o2")).unwrap();
    assert!(rx
        .handle(m(Body::RoundBegin(pb::RoundBegin {
            round: 2,
            r#final: false
        })))
        .is_err());
    let mut rx = in_round(pair, pair.dst_cfg());
    assert!(rx.handle(m(Body::FileEnd(pb::FileEnd {}))).is_err());
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(file_begin(b"f", 3, &[(0, 3)], pb::Basis::None)))
        .unwrap();
    assert!(rx
        .handle(m(Body::Dir(pb::Dir {
            root: 0,
            path: b"x".to_vec(),
            meta: meta()
        })))
        .is_err());
    // a RoundEnd that does not count the messages that came
    let mut rx = in_round(pair, pair.dst_cfg());
    assert!(rx
        .handle(m(Body::RoundEnd(pb::RoundEnd {
            round: 1,
            messages: 5,
            ..Default::default()
        })))
        .is_err());
    // install before the final round rolls back
    let rx = in_round(pair, pair.dst_cfg());
    let failed = rx.install().unwrap_err();
    assert!(
        matches!(failed.error, SyncError::Protocol { .. }),
        "{failed}"
    );
    assert!(failed.report.problems.is_empty());
    // basis on a directory, a hard link to a directory
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(Body::Dir(pb::Dir {
        root: 0,
        path: b"d".to_vec(),
        meta: meta(),
    })))
    .unwrap();
    assert!(rx
        .handle(m(file_begin(b"d", 3, &[(0, 3)], pb::Basis::InPlace)))
        .is_err());
    let mut rx = in_round(pair, pair.dst_cfg());
    rx.handle(m(Body::Dir(pb::Dir {
        root: 0,
        path: b"d".to_vec(),
        meta: meta(),
    })))
    .unwrap();
    assert!(rx
        .handle(m(Body::HardLink(pb::HardLink {
            root: 0,
            path: b"h".to_vec(),
            leader: b"d".to_vec()
        })))
        .is_err());
}

#[test]
fn roots_the_destination_refuses() {
    let pair = Pair::new();
    let mk = |roots: Vec<&[u8]>| pb::SyncOpen {
        session: "r".into(),
        roots: roots.into_iter().map(|r| r.to_vec()).collect(),
        data_bytes: 0,
        entries: 0,
    };
    for bad in [&b"/"[..], b"relative", b"/a/../b", b"/a//b", b"/a/"] {
        assert!(
            SyncReceiver::open(pair.dst_cfg(), &mk(vec![bad])).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    use std::os::unix::ffi::OsStrExt;
    let root = pair.src.as_os_str().as_bytes().to_vec();
    // overlapping roots
    let mut inner = root.clone();
    inner.extend_from_slice(b"/sub");
    assert!(SyncReceiver::open(pair.dst_cfg(), &mk(vec![&root, &inner])).is_err());
    // outside what the destination allows, or overlapping what it protects
    let cfg = ReceiverConfig {
        allowed: vec![PathBuf::from("/srv")],
        ..pair.dst_cfg()
    };
    assert!(matches!(
        SyncReceiver::open(cfg, &mk(vec![&root])),
        Err(SyncError::Root { .. })
    ));
    let cfg = ReceiverConfig {
        protected: vec![pair.src.parent().unwrap().to_path_buf()],
        ..pair.dst_cfg()
    };
    assert!(matches!(
        SyncReceiver::open(cfg, &mk(vec![&root])),
        Err(SyncError::Root { .. })
    ));
    // a root that is a symlink on the destination, or lies below one
    let out = outside(&pair);
    symlink(&out, pair.dst()).unwrap();
    let e = SyncReceiver::open(pair.dst_cfg(), &mk(vec![&root])).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    let mut below = root.clone();
    below.extend_from_slice(b"-x/y");
    let mut via = root.clone();
    via.extend_from_slice(b"/y");
    let e = SyncReceiver::open(pair.dst_cfg(), &mk(vec![&via])).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    std::fs::remove_file(pair.dst()).unwrap();
    // a root whose parent is missing
    let e = SyncReceiver::open(pair.dst_cfg(), &mk(vec![&below])).unwrap_err();
    assert!(e.to_string().contains("parent directory"), "{e}");
    // a second session with the same id while the first holds its staging
    let (rx, _) = SyncReceiver::open(pair.dst_cfg(), &mk(vec![&root])).unwrap();
    let e = SyncReceiver::open(pair.dst_cfg(), &mk(vec![&root])).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    drop(rx);
    assert_outside_untouched(&out);
    assert!(!pair.dst().exists());
}

// ------------------------------------------------------------------ interrupted syncs

fn big_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d")).unwrap();
    for i in 0..6 {
        std::fs::write(root.join(format!("d/f{i}")), bytes(i, 2 << 20)).unwrap();
    }
    symlink("d/f0", root.join("link")).unwrap();
}

/// Runs the first `n` messages of round 1 into the receiver, then drops both.
fn interrupt_after(pair: &Pair, cfg: ReceiverConfig, n: usize) -> (SyncSource, SyncReceiver) {
    let (mut src, open) = SyncSource::open(pair.src_cfg("int")).unwrap();
    let (mut rx, _) = SyncReceiver::open(cfg, &open).unwrap();
    {
        let mut round = src.round(false).unwrap();
        for _ in 0..n {
            let msg = round.next_message().unwrap().unwrap();
            rx.handle(msg).unwrap();
        }
    }
    (src, rx)
}

#[test]
fn a_receiver_dropped_mid_round_leaves_the_destination_as_it_was() {
    let pair = Pair::new();
    big_tree(&pair.src);
    let dst = pair.dst();
    // a root that exists on the destination, with content of its own
    std::fs::create_dir_all(dst.join("mine")).unwrap();
    std::fs::write(dst.join("mine/file"), b"mine").unwrap();
    std::fs::write(dst.join("f0"), b"mine too").unwrap();
    set_times(&dst.join("mine"), (1_000_000_000, 0), (1_000_000_001, 0));
    set_times(&dst, (1_000_000_000, 0), (1_000_000_002, 0));
    let before = snapshot(&dst);
    let src_before = snapshot(&pair.src);
    for n in [1, 3, 5, 9] {
        let (src, rx) = interrupt_after(&pair, pair.dst_cfg(), n);
        drop(rx);
        assert_same(&before, &snapshot(&dst), &format!("after {n} messages"));
        drop(src);
    }
    assert_same_but_link_atimes(&src_before, &snapshot(&pair.src), "the source");
    // a root this session created disappears
    std::fs::remove_dir_all(&dst).unwrap();
    let (_src, rx) = interrupt_after(&pair, pair.dst_cfg(), 7);
    let report = rx.rollback();
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!dst.exists());
}

#[test]
fn keep_partial_keeps_the_staging_directory_only() {
    let pair = Pair::new();
    big_tree(&pair.src);
    let cfg = ReceiverConfig {
        keep_partial: true,
        ..pair.dst_cfg()
    };
    let (_src, rx) = interrupt_after(&pair, cfg, 6);
    let report = rx.rollback();
    assert_eq!(report.kept.len(), 1, "{report:?}");
    let staging = pair.dst().join(staging_name("int"));
    assert_eq!(report.kept[0], pair.src.join(staging_name("int")));
    assert_eq!(names(&pair.dst()), vec![staging_name("int")]);
    assert!(staging.join("tree/d").is_dir());
}

#[test]
fn a_source_round_dropped_mid_way_poisons_the_session() {
    let pair = Pair::new();
    big_tree(&pair.src);
    let before = snapshot(&pair.src);
    let (mut src, _) = SyncSource::open(pair.src_cfg("p")).unwrap();
    {
        let mut round = src.round(false).unwrap();
        for _ in 0..4 {
            round.next_message().unwrap().unwrap();
        }
    }
    let e = src.round(false).unwrap_err();
    assert!(e.to_string().contains("abandoned"), "{e}");
    assert_same_but_link_atimes(&before, &snapshot(&pair.src), "the source");
}

#[test]
fn an_installed_copy_dropped_before_commit_is_rolled_back() {
    let pair = Pair::new();
    big_tree(&pair.src);
    let (mut src, mut rx, _) = loopback::open(pair.src_cfg("i"), pair.dst_cfg()).unwrap();
    loopback::run_round(&mut src, &mut rx, true).unwrap();
    let installed = rx.install().map_err(|f| f.to_string()).unwrap();
    assert!(pair.dst().join("d/f3").is_file());
    drop(installed);
    assert!(!pair.dst().exists());
}
