//! Errors of the CRIU client.

use std::path::PathBuf;

/// What went wrong while talking to CRIU. Every variant says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// No `criu` binary was found.
    #[error(
        "criu not found (looked for {looked}); run scripts/setup.sh or put CRIU >= {need} on PATH"
    )]
    NotFound {
        /// Where haul looked.
        looked: String,
        /// The minimum version needed.
        need: String,
    },
    /// The CRIU found is too old.
    #[error(
        "{path} is CRIU {found}, haul needs >= {need}; run scripts/setup.sh to build a newer one"
    )]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: String,
        /// The minimum version.
        need: String,
    },
    /// `criu swrk` could not be started.
    #[error("cannot start `{path} swrk`")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A system call on the RPC socket failed.
    #[error("CRIU RPC socket: {op} failed")]
    Socket {
        /// The call that failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// CRIU closed the RPC socket (it exited or crashed).
    #[error("criu (pid {pid}) closed the RPC connection while {during}{}", log_hint(.log))]
    WorkerExited {
        /// The criu worker's pid.
        pid: u32,
        /// What haul was waiting for.
        during: String,
        /// CRIU's log, when one was written.
        log: Option<PathBuf>,
    },
    /// A message from CRIU could not be decoded.
    #[error("cannot decode CRIU's RPC response")]
    Decode(#[from] prost::DecodeError),
    /// CRIU answered with a response of another type than the request.
    #[error("CRIU answered a {request} request with a {got} response")]
    UnexpectedResponse {
        /// The request type.
        request: String,
        /// The response type.
        got: String,
    },
    /// CRIU refused or failed the request.
    #[error("CRIU {request} failed{}: {message}{}", errno_hint(*.errno), log_hint(.log))]
    Refused {
        /// The request type.
        request: String,
        /// CRIU's errno (cr_errno), when it gave one.
        errno: Option<i32>,
        /// CRIU's first error message, or a summary.
        message: String,
        /// CRIU's log for this request.
        log: Option<PathBuf>,
    },
    /// The kernel (or CRIU) lacks a feature that the request needs.
    #[error("this kernel/CRIU lacks {feature}: {why}")]
    FeatureMissing {
        /// The feature (e.g. `mem_track`).
        feature: &'static str,
        /// What it is needed for and what to do instead.
        why: String,
    },
    /// A stats image could not be read.
    #[error("cannot read CRIU stats image {path}: {why}")]
    Stats {
        /// The image file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

fn log_hint(log: &Option<PathBuf>) -> String {
    match log {
        Some(p) => format!(" (see CRIU's log {})", p.display()),
        None => String::new(),
    }
}

fn errno_hint(errno: Option<i32>) -> String {
    match errno {
        Some(e) if e != 0 => format!(" (errno {e}: {})", std::io::Error::from_raw_os_error(e)),
        _ => String::new(),
    }
}
