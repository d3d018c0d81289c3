//! The classifier on real CRIU 4.2.1 logs, recorded from the trouble workloads by
//! tests/fixtures/criu-logs/record.sh (trimmed excerpts; line numbers are the excerpts').

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/criu-logs/",
            $name
        ))
    };
}

fn diag(log: &str) -> Diagnosis {
    diagnose(log).expect("a failure")
}

fn option_flag(d: &Diagnosis) -> &str {
    match &d.remedy {
        Remedy::Option { flag, .. } => flag,
        other => panic!("expected an option remedy, got {other:?}"),
    }
}

#[test]
fn successful_runs_have_no_diagnosis_despite_their_error_lines() {
    for log in [
        fixture!("success.dump.log"),
        fixture!("success.restore.log"),
        fixture!("pty.dump.log"),
    ] {
        assert!(
            log.contains("rlimit: Can't setup RLIMIT_NOFILE for self"),
            "the fixture has the harmless line"
        );
        assert_eq!(diagnose(log), None);
    }
}

#[test]
fn the_harmless_first_error_is_never_blamed() {
    let all = [
        fixture!("ghost-file.dump.log"),
        fixture!("unix-peer.dump.log"),
        fixture!("unix-peer-ext.dump.log"),
        fixture!("tcp-established.dump.log"),
        fixture!("port-taken.restore.log"),
        fixture!("pid-taken.restore.log"),
        fixture!("sysv-ipc.dump.log"),
        fixture!("io-uring.dump.log"),
        fixture!("file-changed.restore.log"),
        fixture!("pty.restore.log"),
        fixture!("file-locks.dump.log"),
        fixture!("session-outside.dump.log"),
    ];
    for log in all {
        let d = diag(log);
        assert_ne!(d.kind, ObstacleKind::Unrecognised, "{d}");
        for h in HARMLESS {
            assert!(!d.cause_line.contains(h.contains), "{d}");
            assert!(
                d.last_errors.iter().all(|e| !e.contains(h.contains)),
                "{d:?}"
            );
        }
        assert!(log
            .lines()
            .nth(d.cause_line_no - 1)
            .unwrap()
            .contains(&d.cause_line));
    }
}

#[test]
fn ghost_file_names_fd_path_and_size() {
    let d = diag(fixture!("ghost-file.dump.log"));
    assert_eq!(
        (d.kind, d.operation),
        (ObstacleKind::GhostFileTooBig, Operation::Dump)
    );
    let Some(Resource::Fd {
        pid: Some(_),
        fd: Some(5),
        path,
    }) = &d.resource
    else {
        panic!("{:?}", d.resource)
    };
    assert!(
        path.ends_with("/ghost/ghost-file.dat (deleted, 4194304 bytes allocated)"),
        "{path}"
    );
    assert_eq!(option_flag(&d), "--ghost-limit");
    assert!(d.to_string().contains("fd 5 of pid"), "{d}");
}

#[test]
fn external_unix_stream_names_socket_and_peer() {
    for log in [
        fixture!("unix-peer.dump.log"),
        fixture!("unix-peer-ext.dump.log"),
    ] {
        let d = diag(log);
        assert_eq!(d.kind, ObstacleKind::ExternalUnixStream, "{d}");
        let Some(Resource::Socket {
            ino: Some(ours),
            peer_ino: Some(theirs),
            peer: Some(peer),
            ..
        }) = &d.resource
        else {
            panic!("{:?}", d.resource)
        };
        assert_ne!(ours, theirs);
        assert!(peer.ends_with("/peer.sock"), "{peer}");
        assert!(
            matches!(d.remedy, Remedy::RunDifferently { .. }),
            "no option helps: {}",
            d.remedy
        );
    }
    let d = diag(fixture!("unix-peer.dump.log"));
    assert_eq!(
        d.resource,
        Some(Resource::Socket {
            ino: Some(90019),
            local: None,
            peer_ino: Some(91613),
            peer: Some("/var/tmp/haul-criu-logs.vIksfn/unix/peer.sock".into())
        })
    );
}

#[test]
fn an_external_datagram_peer_can_use_ext_unix_sk() {
    // unix-peer.dump.log with its peer made a datagram socket (type 2): the line CRIU prints.
    let log = fixture!("unix-peer.dump.log")
        .replace("type    1 state  1 name", "type    2 state  1 name");
    let d = diag(&log);
    assert_eq!(d.kind, ObstacleKind::ExternalUnixSocket);
    assert_eq!(option_flag(&d), "--ext-unix-sk");
}

#[test]
fn established_tcp_names_the_fd() {
    let d = diag(fixture!("tcp-established.dump.log"));
    assert_eq!(d.kind, ObstacleKind::EstablishedTcp);
    assert_eq!(
        d.resource,
        Some(Resource::Socket {
            ino: Some(0x16764),
            local: Some("fd 3 of pid 25772".into()),
            peer_ino: None,
            peer: None
        })
    );
    assert_eq!(option_flag(&d), "--tcp-established");
}

#[test]
fn port_taken_on_restore_names_the_port() {
    let d = diag(fixture!("port-taken.restore.log"));
    assert_eq!(
        (d.kind, d.operation),
        (ObstacleKind::PortTaken, Operation::Restore)
    );
    assert_eq!(
        d.resource,
        Some(Resource::Port {
            proto: "tcp".into(),
            addr: "127.0.0.1".into(),
            port: 47613
        })
    );
    assert!(
        d.cause_line
            .starts_with("inet: Can't bind inet socket (id 7)"),
        "{}",
        d.cause_line
    );
    assert!(matches!(d.remedy, Remedy::RunDifferently { .. }));
}

#[test]
fn pid_taken_names_the_pid() {
    let d = diag(fixture!("pid-taken.restore.log"));
    assert_eq!(d.kind, ObstacleKind::PidTaken);
    assert_eq!(d.resource, Some(Resource::Pid { pid: 26127 }));
    assert!(
        d.remedy.to_string().contains("own pid namespace"),
        "{}",
        d.remedy
    );
}

#[test]
fn sysv_ipc_in_the_node_namespace() {
    let d = diag(fixture!("sysv-ipc.dump.log"));
    assert_eq!(d.kind, ObstacleKind::SysvIpcHostNamespace);
    assert_eq!(
        d.resource,
        Some(Resource::Other {
            text: "SysV shared memory attached at 0x7f1477708000 by pid 26255".into()
        })
    );
    assert!(d.remedy.to_string().contains("IPC namespace of its own"));
}

#[test]
fn io_uring_cannot_be_migrated() {
    let d = diag(fixture!("io-uring.dump.log"));
    assert_eq!(d.kind, ObstacleKind::IoUring);
    assert!(matches!(d.remedy, Remedy::NotMigratable { .. }));
    assert!(d.cause_line.contains("anon_inode:[io_uring]"));
}

#[test]
fn changed_file_names_path_and_sizes() {
    let d = diag(fixture!("file-changed.restore.log"));
    assert_eq!(d.kind, ObstacleKind::FileDiffers);
    let Some(Resource::File {
        path,
        size: Some(434),
        expected_size: Some(206),
        ..
    }) = &d.resource
    else {
        panic!("{:?}", d.resource)
    };
    assert!(
        path.starts_with("/var/tmp/") && path.ends_with("/follow/followed.txt"),
        "{path}"
    );
}

#[test]
fn pty_index_taken() {
    let d = diag(fixture!("pty.restore.log"));
    assert_eq!(d.kind, ObstacleKind::Pty);
    assert_eq!(d.resource, Some(Resource::Pty { index: 0 }));
}

#[test]
fn file_locks_need_the_option() {
    let d = diag(fixture!("file-locks.dump.log"));
    assert_eq!(d.kind, ObstacleKind::FileLocks);
    assert_eq!(option_flag(&d), "--file-locks");
}

#[test]
fn session_leader_outside() {
    let d = diag(fixture!("session-outside.dump.log"));
    assert_eq!(d.kind, ObstacleKind::SessionOutside);
    assert!(
        matches!(d.resource, Some(Resource::Pid { .. })),
        "{:?}",
        d.resource
    );
}

#[test]
fn an_unrecognised_failure_shows_criu_s_own_errors_and_the_log() {
    // The io_uring log without the line that names io_uring: what is left is not recognised.
    let log: String = fixture!("io-uring.dump.log")
        .lines()
        .filter(|l| !l.contains("io_uring"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dump.log");
    std::fs::write(&path, log).unwrap();
    let d = diagnose_file(&path).unwrap().unwrap();
    assert_eq!(
        (d.kind, d.remedy.clone()),
        (ObstacleKind::Unrecognised, Remedy::Unknown)
    );
    assert!(
        d.cause_line.starts_with("Can't open 26349's mapfile link"),
        "{}",
        d.cause_line
    );
    assert_eq!(
        d.last_errors.last().map(String::as_str),
        Some("Dumping FAILED.")
    );
    let text = d.to_string();
    assert!(
        text.contains("Collect mappings (pid: 26349) failed")
            && text.contains(&path.display().to_string()),
        "{text}"
    );
    assert!(!text.contains("RLIMIT"), "{text}");
}

#[test]
fn rules_from_criu_s_source_match_its_messages() {
    let cases = [
        ("(00.1) Error (criu/files-reg.c:1790): Can't lookup mount=23 for fd=3 path=/x", ObstacleKind::UnreachableMount),
        ("(00.1) Error (criu/files-reg.c:1122): Can't create link remap for shared/.nfs0000000001. Use --link-remap option.", ObstacleKind::LinkRemap),
        ("(00.1) Error (criu/arch/x86/cpu.c:274): CPU xsave size mismatch (1088/832)", ObstacleKind::CpuMismatch),
        ("(00.1) Error (criu/page-pipe.c:12): page-pipe: splice: -1: Bad file descriptor", ObstacleKind::PipeSizeLimit),
        ("(00.1)      1: Error (criu/files-reg.c:2353): Can't open file srv/x on restore: No such file or directory", ObstacleKind::FileMissing),
        ("(00.1) Error (criu/pstree.c:304): The root process 7 is not a session leader. Consider using --shell-job option", ObstacleKind::SessionOutside),
    ];
    for (line, kind) in cases {
        let log = format!("(00.0) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n{line}\n");
        assert_eq!(diag(&log).kind, kind, "{line}");
    }
}

#[test]
fn diagnosis_serialises_for_the_report() {
    let d = diag(fixture!("port-taken.restore.log"));
    let j = serde_json::to_value(&d).unwrap();
    assert_eq!(j["kind"], "port-taken");
    assert_eq!(j["resource"]["port"], 47613);
    assert_eq!(j["operation"], "restore");
    assert_eq!(serde_json::from_value::<Diagnosis>(j).unwrap(), d);
}

#[test]
fn a_refused_request_is_diagnosed_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restore.log");
    std::fs::write(&path, fixture!("pid-taken.restore.log")).unwrap();
    let e = crate::criu::CriuError::Refused {
        request: "RESTORE".into(),
        errno: None,
        message: "restore failed".into(),
        log: Some(path.clone()),
    };
    let d = diagnose_error(&e).unwrap();
    assert_eq!((d.kind, d.log), (ObstacleKind::PidTaken, Some(path)));
    let no_log = crate::criu::CriuError::Stats {
        path: "x".into(),
        why: "y".into(),
    };
    assert_eq!(diagnose_error(&no_log), None);
}

#[test]
fn every_recognised_diagnosis_reads_as_cause_resource_remedy() {
    for (name, log) in [
        ("ghost-file", fixture!("ghost-file.dump.log")),
        ("unix-peer", fixture!("unix-peer.dump.log")),
        ("tcp", fixture!("tcp-established.dump.log")),
        ("port", fixture!("port-taken.restore.log")),
        ("pid", fixture!("pid-taken.restore.log")),
        ("sysv", fixture!("sysv-ipc.dump.log")),
        ("uring", fixture!("io-uring.dump.log")),
        ("file", fixture!("file-changed.restore.log")),
        ("pty", fixture!("pty.restore.log")),
        ("locks", fixture!("file-locks.dump.log")),
        ("session", fixture!("session-outside.dump.log")),
    ] {
        let d = diag(log);
        let text = d.to_string();
        eprintln!("{name}: {text}");
        assert!(text.starts_with("CRIU's "), "{text}");
        assert!(
            text.contains("; remedy: ") && text.contains(". CRIU said: "),
            "{text}"
        );
        if let Some(r) = &d.resource {
            assert!(text.contains(&r.to_string()), "{text}");
        }
    }
}
