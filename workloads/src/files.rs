//! Default file names the workloads use in their working directory.
//!
//! Every workload runs with its working directory on the directory both nodes share, writes
//! its log there and polls for its stop file there, so a harness on either node finds both by
//! these names (each program also takes `--log` / `--stop-file` to change them).

/// Stop file of `mtouch`: the name P.Haul's `mem-touch` polls for.
pub const MTOUCH_STOP: &str = "mem-touch-stop";
/// Log of `mtouch` in P.Haul's HOWTO (mtouch takes the log path as its first argument).
pub const MTOUCH_LOG: &str = "mem-touch.log";

/// Log of `mt-threads`.
pub const MT_THREADS_LOG: &str = "mt-threads.log";
/// Stop file of `mt-threads`.
pub const MT_THREADS_STOP: &str = "mt-threads-stop";

/// Log of `ptree`.
pub const PTREE_LOG: &str = "ptree.log";
/// Stop file of `ptree`.
pub const PTREE_STOP: &str = "ptree-stop";

/// Log of `tcp-echo`.
pub const TCP_ECHO_LOG: &str = "tcp-echo.log";
/// Stop file of `tcp-echo`.
pub const TCP_ECHO_STOP: &str = "tcp-echo-stop";

/// Log of `tcp-client`.
pub const TCP_CLIENT_LOG: &str = "tcp-client.log";
/// Stop file of `tcp-client`.
pub const TCP_CLIENT_STOP: &str = "tcp-client-stop";

/// Log of `rec-writer`.
pub const REC_WRITER_LOG: &str = "rec-writer.log";
/// Stop file of `rec-writer`.
pub const REC_WRITER_STOP: &str = "rec-writer-stop";
/// Record file `rec-writer` appends to.
pub const REC_WRITER_DATA: &str = "records.dat";

/// Log of `ghost-file`.
pub const GHOST_FILE_LOG: &str = "ghost-file.log";
/// Stop file of `ghost-file`.
pub const GHOST_FILE_STOP: &str = "ghost-file-stop";
/// Log of `unix-peer` (the client inside the migrated tree).
pub const UNIX_PEER_LOG: &str = "unix-peer.log";
/// Stop file of `unix-peer`.
pub const UNIX_PEER_STOP: &str = "unix-peer-stop";
/// Log of `port-listener`.
pub const PORT_LISTENER_LOG: &str = "port-listener.log";
/// Stop file of `port-listener`.
pub const PORT_LISTENER_STOP: &str = "port-listener-stop";
/// Log of `sysv-ipc`.
pub const SYSV_IPC_LOG: &str = "sysv-ipc.log";
/// Stop file of `sysv-ipc`.
pub const SYSV_IPC_STOP: &str = "sysv-ipc-stop";
/// Log of `uring-user`.
pub const URING_USER_LOG: &str = "uring-user.log";
/// Stop file of `uring-user`.
pub const URING_USER_STOP: &str = "uring-user-stop";
/// Log of `file-follower`.
pub const FILE_FOLLOWER_LOG: &str = "file-follower.log";
/// Stop file of `file-follower`.
pub const FILE_FOLLOWER_STOP: &str = "file-follower-stop";
/// The file `file-follower` follows (and `file-follower --write` appends to).
pub const FOLLOWED_FILE: &str = "followed.txt";
/// Log of `pty-holder`.
pub const PTY_HOLDER_LOG: &str = "pty-holder.log";
/// Stop file of `pty-holder`.
pub const PTY_HOLDER_STOP: &str = "pty-holder-stop";
/// Log of `lock-holder`.
pub const LOCK_HOLDER_LOG: &str = "lock-holder.log";
/// Stop file of `lock-holder`.
pub const LOCK_HOLDER_STOP: &str = "lock-holder-stop";
/// Log of `sparse-map`.
pub const SPARSE_MAP_LOG: &str = "sparse-map.log";
/// Stop file of `sparse-map`.
pub const SPARSE_MAP_STOP: &str = "sparse-map-stop";
/// Log of `file-churn`.
pub const FILE_CHURN_LOG: &str = "file-churn.log";
/// Stop file of `file-churn`.
pub const FILE_CHURN_STOP: &str = "file-churn-stop";
/// Directory `file-churn` keeps its files in.
pub const FILE_CHURN_DIR: &str = "churn";
