//! Paths a peer may name: roots (absolute, normalised) and entries below them (relative).
//!
//! Both are bytes, as Linux names are. A [`RelPath`] has components joined by `/`, none
//! empty, `.` or `..`, none with a NUL, each at most [`MAX_COMPONENT`] bytes, at most
//! [`MAX_DEPTH`] of them, at most [`MAX_PATH`] bytes in all; the root itself is the empty path.
//! Checking the text is the first fence only: the receiver also resolves every path with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (see [`super::confine`]), so a symlink
//! on disk cannot lead it out of the tree either.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::limits::{MAX_COMPONENT, MAX_DEPTH, MAX_PATH};

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH`].
    #[error("path of {0} bytes is longer than {MAX_PATH}")]
    TooLong(usize),
    /// Deeper than [`MAX_DEPTH`].
    #[error("path with {0} components is deeper than {MAX_DEPTH}")]
    TooDeep(usize),
    /// A component longer than [`MAX_COMPONENT`].
    #[error("path component of {0} bytes is longer than {MAX_COMPONENT}")]
    ComponentTooLong(usize),
    /// An absolute path where a relative one belongs.
    #[error("absolute path {0:?} where a path relative to a synced root belongs")]
    Absolute(String),
    /// An empty component (`a//b`, a trailing `/`), `.` or `..`.
    #[error("path {0:?} has an empty, '.' or '..' component")]
    NotNormal(String),
    /// A NUL byte.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// A root that is not absolute.
    #[error("synced root {0:?} is not an absolute path")]
    RootNotAbsolute(String),
    /// `/` as a root.
    #[error("the file system root '/' cannot be a synced root: name the directory to copy")]
    RootIsSlash,
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A validated path relative to a synced root (`""` is the root itself).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The root itself.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Validates `bytes` (see the module doc).
    pub fn parse(bytes: &[u8]) -> Result<RelPath, PathError> {
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        if bytes.len() > MAX_PATH {
            return Err(PathError::TooLong(bytes.len()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(show(bytes)));
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(show(bytes)));
        }
        let mut depth = 0;
        for c in bytes.split(|&b| b == b'/') {
            if c.is_empty() || c == b"." || c == b".." {
                return Err(PathError::NotNormal(show(bytes)));
            }
            if c.len() > MAX_COMPONENT {
                return Err(PathError::ComponentTooLong(c.len()));
            }
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep(depth));
        }
        Ok(RelPath(bytes.to_vec()))
    }

    /// `self/name` (validated).
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if self.0.is_empty() {
            return RelPath::parse(name);
        }
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        RelPath::parse(&v)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent directory's path and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(&[u8], &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[][..], &self.0[..]),
        })
    }

    /// The parent (the root's parent is `None`).
    pub fn parent(&self) -> Option<RelPath> {
        self.split_last().map(|(p, _)| RelPath(p.to_vec()))
    }

    /// Components.
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|&&b| b == b'/').count() + 1
        }
    }

    /// Whether `self` is `other` or below it.
    pub fn is_within(&self, other: &RelPath) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0[other.0.len()] == b'/')
    }

    /// As a relative `Path` (for joining onto a root in messages and tests).
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", show(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&show(&self.0))
        }
    }
}

/// A validated synced root: absolute, normalised (no empty, `.` or `..` component, no
/// trailing `/`), not `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RootPath(PathBuf);

impl RootPath {
    /// Validates `bytes` (see the type doc).
    pub fn parse(bytes: &[u8]) -> Result<RootPath, PathError> {
        if bytes.len() > MAX_PATH {
            return Err(PathError::TooLong(bytes.len()));
        }
        if bytes.first() != Some(&b'/') {
            return Err(PathError::RootNotAbsolute(show(bytes)));
        }
        if bytes == b"/" {
            return Err(PathError::RootIsSlash);
        }
        RelPath::parse(&bytes[1..])?;
        Ok(RootPath(PathBuf::from(OsStr::from_bytes(bytes))))
    }

    /// From a path on this machine (the source's `--sync` argument, after canonicalisation).
    pub fn from_path(p: &Path) -> Result<RootPath, PathError> {
        RootPath::parse(p.as_os_str().as_bytes())
    }

    /// The path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }

    /// The path without its leading `/` (what `openat2` resolves from `/`).
    pub fn relative_to_slash(&self) -> &[u8] {
        &self.as_bytes()[1..]
    }

    /// Whether `self` is `other` or below it (path-wise).
    pub fn is_within(&self, other: &RootPath) -> bool {
        self.0.starts_with(&other.0)
    }

    /// The path of `p` below this root, for messages.
    pub fn display_entry(&self, p: &RelPath) -> String {
        if p.is_root() {
            self.0.display().to_string()
        } else {
            self.0.join(p.as_path()).display().to_string()
        }
    }
}

impl fmt::Debug for RootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for RootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// Whether a symlink at `link` (relative to its root) with `target` stays inside the tree
/// when read lexically: not absolute, and no `..` climbs above the root. Lexical only: a
/// chain through another link that leaves the tree is that link's own problem (it is
/// checked too); the receiver never follows any symlink whatever this says.
pub fn link_stays_inside(link: &RelPath, target: &[u8]) -> bool {
    if target.is_empty() || target[0] == b'/' {
        return false;
    }
    // the directory holding the link
    let mut depth = link.depth().saturating_sub(1) as i64;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[rstest::rstest]
    #[case(b"a")]
    #[case(b"a/b/c")]
    #[case(b".hidden/..x/x..")]
    #[case(b"\xff\xfe/name")]
    fn accepts(#[case] p: &[u8]) {
        assert_eq!(RelPath::parse(p).unwrap().as_bytes(), p);
    }

    #[rstest::rstest]
    #[case(b"/etc/passwd")]
    #[case(b"..")]
    #[case(b"a/../../b")]
    #[case(b"a/./b")]
    #[case(b"a//b")]
    #[case(b"a/")]
    #[case(b"a\0b")]
    fn refuses(#[case] p: &[u8]) {
        assert!(
            RelPath::parse(p).is_err(),
            "{:?}",
            String::from_utf8_lossy(p)
        );
    }

    #[test]
    fn bounds() {
        let long = vec![b'a'; MAX_COMPONENT + 1];
        assert!(matches!(
            RelPath::parse(&long),
            Err(PathError::ComponentTooLong(_))
        ));
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(matches!(
            RelPath::parse(deep.as_bytes()),
            Err(PathError::TooDeep(_))
        ));
        let huge = vec![b'a'; MAX_PATH + 1];
        assert!(matches!(RelPath::parse(&huge), Err(PathError::TooLong(_))));
    }

    #[test]
    fn roots() {
        assert!(RootPath::parse(b"/srv/work").is_ok());
        assert_eq!(RootPath::parse(b"/"), Err(PathError::RootIsSlash));
        assert!(RootPath::parse(b"srv").is_err());
        assert!(RootPath::parse(b"/srv/../etc").is_err());
        assert!(RootPath::parse(b"/srv/").is_err());
        assert!(RootPath::parse(b"//srv").is_err());
        let r = RootPath::parse(b"/srv/work").unwrap();
        assert!(r.is_within(&RootPath::parse(b"/srv").unwrap()));
        assert!(!r.is_within(&RootPath::parse(b"/sr").unwrap()));
    }

    #[test]
    fn relations() {
        let p = RelPath::parse(b"a/b/c").unwrap();
        assert_eq!(p.split_last(), Some((&b"a/b"[..], &b"c"[..])));
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(
            RelPath::parse(b"a").unwrap().parent(),
            Some(RelPath::root())
        );
        assert_eq!(RelPath::root().parent(), None);
        assert_eq!(p.depth(), 3);
        assert!(p.is_within(&RelPath::parse(b"a/b").unwrap()));
        assert!(!RelPath::parse(b"a/bc")
            .unwrap()
            .is_within(&RelPath::parse(b"a/b").unwrap()));
        assert!(p.is_within(&RelPath::root()));
    }

    #[test]
    fn symlink_targets() {
        let at = |p: &[u8]| RelPath::parse(p).unwrap();
        assert!(link_stays_inside(&at(b"a/l"), b"../b"));
        assert!(link_stays_inside(&at(b"l"), b"b/c"));
        assert!(!link_stays_inside(&at(b"l"), b"../x"));
        assert!(!link_stays_inside(&at(b"a/l"), b"../../x"));
        assert!(!link_stays_inside(&at(b"a/l"), b"/etc"));
        assert!(!link_stays_inside(&at(b"a/l"), b""));
        assert!(link_stays_inside(&at(b"a/b/l"), b"./../../c"));
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_below_the_root(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(rel) = RelPath::parse(&p) {
                let joined = Path::new("/root").join(rel.as_path());
                prop_assert!(joined.starts_with("/root"));
                prop_assert!(joined.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
            }
        }

        #[test]
        fn sorting_puts_parents_first(a in "[a-c]{1,3}(/[a-c]{1,3}){0,3}") {
            let p = RelPath::parse(a.as_bytes()).unwrap();
            let mut cur = p.clone();
            while let Some(parent) = cur.parent() {
                prop_assert!(parent < cur);
                cur = parent;
            }
        }
    }
}
