//! CRIU's notification hooks ("action scripts"), by name.
//!
//! CRIU sends a NOTIFY message at each hook when `notify_scripts` is set, and waits for the
//! client's answer. The names are CRIU's own table (`criu/action-scripts.c`, `action_names[]`
//! in CRIU 4.2): haul never compares them as strings, only as [`Hook`]s.

use std::fmt;

/// One of CRIU's hooks, as a NOTIFY message names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `pre-stream`: before the image streamer is used.
    PreStream,
    /// `pre-dump`: before the tree is frozen.
    PreDump,
    /// `post-dump`: every image is written, the tasks are frozen and not yet killed (or, on a
    /// failed answer, resumed). haul holds this one while the destination restores.
    PostDump,
    /// `pre-restore`: before the restore starts.
    PreRestore,
    /// `post-restore`: the tree is restored and not yet running. The destination holds this
    /// one until the source says go (the two-phase commit).
    PostRestore,
    /// `network-lock`.
    NetworkLock,
    /// `network-unlock`.
    NetworkUnlock,
    /// `setup-namespaces`.
    SetupNamespaces,
    /// `post-setup-namespaces`.
    PostSetupNamespaces,
    /// `pre-resume`.
    PreResume,
    /// `post-resume`.
    PostResume,
    /// `orphan-pts-master`.
    OrphanPtsMaster,
    /// `status-ready`: a page server or lazy dump serves now.
    StatusReady,
    /// `query-ext-files`.
    QueryExtFiles,
    /// A name this table does not know (a newer CRIU).
    Other(String),
}

/// The name table: every known hook and CRIU's name for it.
const NAMES: [(Hook, &str); 14] = [
    (Hook::PreStream, "pre-stream"),
    (Hook::PreDump, "pre-dump"),
    (Hook::PostDump, "post-dump"),
    (Hook::PreRestore, "pre-restore"),
    (Hook::PostRestore, "post-restore"),
    (Hook::NetworkLock, "network-lock"),
    (Hook::NetworkUnlock, "network-unlock"),
    (Hook::SetupNamespaces, "setup-namespaces"),
    (Hook::PostSetupNamespaces, "post-setup-namespaces"),
    (Hook::PreResume, "pre-resume"),
    (Hook::PostResume, "post-resume"),
    (Hook::OrphanPtsMaster, "orphan-pts-master"),
    (Hook::StatusReady, "status-ready"),
    (Hook::QueryExtFiles, "query-ext-files"),
];

impl Hook {
    /// The hook CRIU means by `name`.
    pub fn from_name(name: &str) -> Hook {
        NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(h, _)| h.clone())
            .unwrap_or_else(|| Hook::Other(name.to_string()))
    }

    /// CRIU's name for the hook.
    pub fn name(&self) -> &str {
        match self {
            Hook::Other(n) => n,
            known => NAMES
                .iter()
                .find(|(h, _)| h == known)
                .map(|(_, n)| *n)
                .unwrap_or("unknown"),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (hook, name) in NAMES.iter() {
            assert_eq!(Hook::from_name(name), *hook);
            assert_eq!(hook.name(), *name);
        }
        assert_eq!(
            Hook::from_name("new-hook"),
            Hook::Other("new-hook".to_string())
        );
        assert_eq!(Hook::from_name("new-hook").name(), "new-hook");
    }
}
