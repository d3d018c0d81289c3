use super::inspect::*;
use super::*;

fn tree() -> TreeInspection {
    TreeInspection {
        root: 100,
        processes: vec![TreeProcess {
            pid: 100,
            ns_pid: 1,
            tids: vec![100],
            comm: "w".into(),
            sid: 100,
        }],
        own_pid_namespace: true,
        own_ipc_namespace: true,
        memory: vec![ProcessMemory {
            pid: 100,
            mapped: 80 << 20,
            resident: 64 << 20,
            largest_mapping: 64 << 20,
        }],
        ..Default::default()
    }
}

fn kinds(a: &Assessment) -> Vec<(ObstacleKind, Severity)> {
    a.findings.iter().map(|f| (f.kind, f.severity)).collect()
}

#[test]
fn a_plain_tree_has_nothing_to_say() {
    let a = assess(&tree(), &Asked::default());
    assert_eq!(a, Assessment::default());
    assert!(!a.refused());
}

#[test]
fn a_ghost_file_over_the_default_limit_turns_a_fitting_limit_on() {
    let mut t = tree();
    t.deleted.push(DeletedFile {
        path: "/srv/x".into(),
        size: 4 << 20,
        allocated: (4 << 20) + 4096,
        links: 0,
        pid: 100,
        fd: Some(3),
    });
    let a = assess(&t, &Asked::default());
    assert_eq!(
        kinds(&a),
        [(ObstacleKind::GhostFileTooBig, Severity::OptionOn)]
    );
    assert_eq!(
        a.ghost_limit,
        Some(5 << 20),
        "rounded up to whole MiB above the allocation"
    );
    assert!(
        a.findings[0]
            .to_string()
            .contains("fd 3 of pid 100 (/srv/x (deleted))"),
        "{}",
        a.findings[0]
    );
    // A limit the user set is never raised behind their back.
    let a = assess(
        &t,
        &Asked {
            ghost_limit: Some(1 << 20),
            ..Default::default()
        },
    );
    assert!(a.refused());
    assert_eq!(a.ghost_limit, Some(1 << 20));
    // Too big to copy while frozen without being asked.
    t.deleted[0].allocated = 2 << 30;
    let a = assess(&t, &Asked::default());
    assert!(
        a.refused() && a.findings[0].detail.contains("--ghost-limit"),
        "{:?}",
        a.findings
    );
}

#[test]
fn options_that_change_the_process_are_only_turned_on_when_asked() {
    let mut t = tree();
    t.inet.push(InetSocket {
        proto: "tcp".into(),
        local: "10.0.0.1:4000".parse().unwrap(),
        remote: "10.0.0.2:5000".parse().unwrap(),
        state: "established".into(),
        ino: 77,
        pid: 100,
        fd: 5,
    });
    // A datagram socket connected to a named socket outside (e.g. /dev/log).
    t.unix.push(UnixUse {
        ino: 88,
        sock_type: libc::SOCK_DGRAM as u8,
        connected: true,
        name: None,
        peer_ino: Some(99),
        peer_name: Some("/run/peer.sock".into()),
        peer_in_tree: false,
        pid: 100,
        fd: 6,
    });
    t.sessions_outside.push(7);
    let a = assess(&t, &Asked::default());
    assert_eq!(a.refusals().count(), 3, "{:#?}", a.findings);
    assert_eq!(
        a.options,
        TreeOptions::default(),
        "nothing turned on by itself"
    );
    let tcp = a
        .findings
        .iter()
        .find(|f| f.kind == ObstacleKind::EstablishedTcp)
        .unwrap();
    assert!(
        tcp.detail.contains("10.0.0.1:4000 -> 10.0.0.2:5000"),
        "{tcp}"
    );
    assert!(
        matches!(&tcp.remedy, crate::obstacle::Remedy::Option { flag, .. } if flag == "--tcp-established")
    );
    let unix = a
        .findings
        .iter()
        .find(|f| f.kind == ObstacleKind::ExternalUnixSocket)
        .unwrap();
    assert!(unix.to_string().contains("/run/peer.sock"), "{unix}");

    let asked = Asked {
        tree: TreeOptions {
            tcp_established: true,
            ext_unix_sk: true,
            shell_job: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = assess(&t, &asked);
    assert!(!a.refused(), "{:#?}", a.findings);
    assert_eq!(a.options, asked.tree);
}

#[test]
fn locks_turn_file_locks_on() {
    let mut t = tree();
    t.locks.push(LockUse {
        class: "FLOCK".into(),
        pid: 100,
        inode: 5,
        path: Some("/srv/l".into()),
    });
    let a = assess(&t, &Asked::default());
    assert_eq!(kinds(&a), [(ObstacleKind::FileLocks, Severity::OptionOn)]);
    assert!(a.options.file_locks);
}

#[test]
fn what_criu_cannot_move_is_refused() {
    let mut t = tree();
    t.io_uring.push(SpecialFd {
        pid: 100,
        fd: 4,
        target: "anon_inode:[io_uring]".into(),
    });
    t.own_ipc_namespace = false;
    t.ipc.push(IpcUse {
        class: "shm".into(),
        id: 32769,
        why: "attached by pid 100".into(),
    });
    let a = assess(&t, &Asked::default());
    assert_eq!(
        kinds(&a),
        [
            (ObstacleKind::IoUring, Severity::Refuse),
            (ObstacleKind::SysvIpcHostNamespace, Severity::Refuse)
        ]
    );
    assert!(matches!(
        a.findings[0].remedy,
        crate::obstacle::Remedy::NotMigratable { .. }
    ));
    assert_eq!(
        a.findings[1].resource,
        Resource::Ipc {
            class: "shm".into(),
            id: 32769
        }
    );
}

#[test]
fn warnings_and_infos() {
    let mut t = tree();
    t.own_pid_namespace = false;
    t.ptys.push(SpecialFd {
        pid: 100,
        fd: 3,
        target: "/dev/ptmx".into(),
    });
    t.memory[0] = ProcessMemory {
        pid: 100,
        mapped: 1 << 40,
        resident: 64 << 20,
        largest_mapping: 1 << 40,
    };
    t.inet.push(InetSocket {
        proto: "tcp".into(),
        local: "127.0.0.1:8080".parse().unwrap(),
        remote: "0.0.0.0:0".parse().unwrap(),
        state: "listen".into(),
        ino: 1,
        pid: 100,
        fd: 3,
    });
    let a = assess(&t, &Asked::default());
    assert!(!a.refused());
    let k = kinds(&a);
    assert!(k.contains(&(ObstacleKind::Pty, Severity::Warning)));
    assert!(k.contains(&(ObstacleKind::PidTaken, Severity::Warning)));
    assert!(k.contains(&(ObstacleKind::SparseMapping, Severity::Info)));
    assert!(k.contains(&(ObstacleKind::PortTaken, Severity::Info)));
    assert!(
        a.findings
            .windows(2)
            .all(|w| w[0].severity >= w[1].severity),
        "sorted by weight"
    );
    let req = DestinationRequirements::from_inspection(&t);
    assert_eq!(req.pids, vec![100]);
    assert_eq!(req.ports.len(), 1);
    assert_eq!(req.ports[0].port, 8080);
}

#[test]
fn assessment_serialises_for_the_report() {
    let mut t = tree();
    t.io_uring.push(SpecialFd {
        pid: 100,
        fd: 4,
        target: "anon_inode:[io_uring]".into(),
    });
    let a = assess(&t, &Asked::default());
    let j = serde_json::to_value(&a).unwrap();
    assert_eq!(j["findings"][0]["kind"], "io-uring");
    assert_eq!(j["findings"][0]["severity"], "refuse");
    assert_eq!(j["findings"][0]["resource"]["fd"], 4);
    assert_eq!(serde_json::from_value::<Assessment>(j).unwrap(), a);
}

#[test]
fn a_deleted_file_with_other_links_turns_link_remap_on() {
    let mut t = tree();
    for (path, links) in [
        ("/srv/moved", 1),
        ("/shared/.nfs0000000001b2c3d400000001", 0),
    ] {
        t.deleted.push(DeletedFile {
            path: path.into(),
            size: 1 << 30,
            allocated: 1 << 30,
            links,
            pid: 100,
            fd: Some(3),
        });
    }
    let a = assess(&t, &Asked::default());
    assert_eq!(
        kinds(&a),
        [
            (ObstacleKind::LinkRemap, Severity::OptionOn),
            (ObstacleKind::LinkRemap, Severity::OptionOn)
        ]
    );
    assert!(a.options.link_remap && a.ghost_limit.is_none(), "{a:?}");
}

#[test]
fn the_assessment_writes_criu_s_options() {
    let mut t = tree();
    t.deleted.push(DeletedFile {
        path: "/srv/x".into(),
        size: 3 << 20,
        allocated: 3 << 20,
        links: 0,
        pid: 100,
        fd: Some(3),
    });
    t.locks.push(LockUse {
        class: "FLOCK".into(),
        pid: 100,
        inode: 5,
        path: None,
    });
    let a = assess(&t, &Asked::default());
    let mut opts = crate::criu::pb::CriuOpts::default();
    a.apply(&mut opts);
    assert_eq!(opts.ghost_limit, Some(3 << 20));
    assert_eq!(opts.file_locks, Some(true));
    let big = Asked {
        ghost_limit: Some(8 << 30),
        ..Default::default()
    };
    assert!(assess(&t, &big).refused(), "over 32 bits");
}

#[test]
fn an_outside_stream_peer_is_refused_even_with_ext_unix_sk() {
    let mut t = tree();
    let stream = |ino, peer_ino| UnixUse {
        ino,
        sock_type: libc::SOCK_STREAM as u8,
        connected: true,
        name: None,
        peer_ino,
        peer_name: None,
        peer_in_tree: false,
        pid: 100,
        fd: 7,
    };
    t.unix.push(stream(1, Some(2)));
    t.unix.push(stream(3, None)); // not accepted yet by its peer
    let mut pair = stream(4, Some(5));
    pair.peer_in_tree = true;
    t.unix.push(pair);
    let asked = Asked {
        tree: TreeOptions {
            ext_unix_sk: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let a = assess(&t, &asked);
    assert_eq!(
        kinds(&a),
        [
            (ObstacleKind::ExternalUnixStream, Severity::Refuse),
            (ObstacleKind::ExternalUnixStream, Severity::Refuse)
        ]
    );
    assert!(matches!(
        a.findings[0].remedy,
        crate::obstacle::Remedy::RunDifferently { .. }
    ));
}
