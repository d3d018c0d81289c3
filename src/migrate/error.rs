//! Error pieces both sides share. Each operation has its own error enum
//! ([`super::source::SourceError`] for `haul pid`, [`super::destination::ServeError`] for
//! `haul serve`, [`super::control::ChannelError`] for the connections); a message says only
//! its own level, and [`chain`] joins it with its causes.

use std::path::PathBuf;

/// {what} {path}
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub struct PathError {
    /// What haul was doing ("cannot create image directory").
    pub what: &'static str,
    /// The path.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl PathError {
    /// An I/O error about `path`.
    pub fn new(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PathError {
            what,
            path: path.into(),
            source,
        }
    }
}

/// `err` and its causes, joined by `": "` (each level says only its own part).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A cause whose text is already in the message (a transparent wrapper) adds nothing.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_every_level_once() {
        let e = PathError::new(
            "cannot open",
            "/x/y",
            std::io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(
            chain(&e),
            "cannot open /x/y: No such file or directory (os error 2)"
        );
    }
}
