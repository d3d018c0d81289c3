//! The diff between what the destination holds (the source's record of what it sent) and a
//! fresh scan: which entries to remove, create, update or re-link in one round, in an order
//! the destination can apply (removals deepest first, then parents before children, hard
//! links after the files they name).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::manifest::{Entry, Kind, Manifest};
use super::path::RelPath;

/// How the destination gets a regular file's new content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// It has no usable copy: a fresh file.
    None,
    /// It changes the copy it has where it stands (no other name of that copy must keep the
    /// old content).
    InPlace,
    /// It changes a fresh copy of what it has (other names keep the old content).
    Copy,
}

/// One step of a round for one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove the entry and everything below it.
    Remove(RelPath),
    /// Create the directory if missing; apply its metadata.
    Dir(RelPath),
    /// Create or replace the symlink.
    Symlink(RelPath),
    /// Create or replace the FIFO.
    Fifo(RelPath),
    /// Send the file: content when `content` (else metadata only, after checking the stat).
    File {
        /// The file.
        path: RelPath,
        /// How the destination gets it.
        basis: Basis,
        /// Whether its content may have changed.
        content: bool,
    },
    /// Make the path another name of its leader.
    Link {
        /// The follower.
        path: RelPath,
        /// The leader.
        leader: RelPath,
    },
}

/// What the source recorded about one entry it sent.
#[derive(Debug, Clone)]
pub struct SentEntry {
    /// The entry as it was when sent (for files: from the descriptor it was read through).
    pub entry: Entry,
    /// Whether it may have changed again within the timestamp tick of its read (it is read
    /// again in the next round whatever its stat says).
    pub racy: bool,
}

/// Whether `a` and `b` (same type) differ in a way that may have changed the content.
fn content_may_differ(a: &Entry, b: &Entry) -> bool {
    a.stamp.dev != b.stamp.dev
        || a.stamp.ino != b.stamp.ino
        || a.stamp.size != b.stamp.size
        || a.stamp.ctime != b.stamp.ctime
        || a.meta.mtime != b.meta.mtime
}

fn followers_by_leader<'a>(
    it: impl Iterator<Item = (&'a RelPath, &'a Entry)>,
) -> HashMap<RelPath, Vec<RelPath>> {
    let mut m: HashMap<RelPath, Vec<RelPath>> = HashMap::new();
    for (p, e) in it {
        if let Kind::File { leader: Some(l) } = &e.kind {
            m.entry(l.clone()).or_default().push(p.clone());
        }
    }
    m
}

/// The steps that bring a destination holding `sent` to `cur`, in order. `Link` steps whose
/// leader is sent fresh this round (basis `None` or `Copy`) are always included; the caller
/// drops those whose leader could not be sent.
pub fn plan(sent: &BTreeMap<RelPath, SentEntry>, cur: &Manifest) -> Vec<Op> {
    let mut ops = Vec::new();

    // 1. removals: entries gone or of another type, top-most only, deepest first
    let mut removed: HashSet<RelPath> = HashSet::new();
    let under_removed = |removed: &HashSet<RelPath>, p: &RelPath| {
        let mut cur = p.parent();
        while let Some(q) = cur {
            if removed.contains(&q) {
                return true;
            }
            cur = q.parent();
        }
        false
    };
    let mut order = Vec::new();
    for (p, s) in sent {
        if p.is_root() {
            continue;
        }
        let gone = match cur.entries.get(p) {
            None => true,
            Some(c) => !c.kind.same_type(&s.entry.kind),
        };
        if gone && !under_removed(&removed, p) {
            removed.insert(p.clone());
            order.push(p.clone());
        }
    }
    for r in order.into_iter().rev() {
        ops.push(Op::Remove(r));
    }
    let is_removed = |p: &RelPath| removed.contains(p) || under_removed(&removed, p);

    // what the destination holds of each path after the removals
    let held = |p: &RelPath| -> Option<&SentEntry> {
        if is_removed(p) {
            None
        } else {
            sent.get(p)
        }
    };
    let sent_followers = followers_by_leader(
        sent.iter()
            .filter(|(p, _)| !is_removed(p))
            .map(|(p, s)| (p, &s.entry)),
    );
    let cur_followers = followers_by_leader(cur.entries.iter());
    let none: Vec<RelPath> = Vec::new();

    // 2. everything but hard links, parents first
    let mut fresh: HashSet<RelPath> = HashSet::new();
    for (p, c) in &cur.entries {
        let s = held(p);
        match &c.kind {
            Kind::Dir => {
                if s.map_or(true, |s| s.entry.meta != c.meta) {
                    ops.push(Op::Dir(p.clone()));
                }
            }
            Kind::Symlink { .. } => {
                if s.map_or(true, |s| s.entry.kind != c.kind || s.entry.meta != c.meta) {
                    ops.push(Op::Symlink(p.clone()));
                }
            }
            Kind::Fifo => {
                if s.map_or(true, |s| s.entry.meta != c.meta) {
                    ops.push(Op::Fifo(p.clone()));
                }
            }
            Kind::File { leader: None } => {
                let usable = s.filter(|s| matches!(s.entry.kind, Kind::File { leader: None }));
                match usable {
                    None => {
                        fresh.insert(p.clone());
                        ops.push(Op::File {
                            path: p.clone(),
                            basis: Basis::None,
                            content: true,
                        });
                    }
                    Some(s) => {
                        let same_group = sent_followers.get(p).unwrap_or(&none)
                            == cur_followers.get(p).unwrap_or(&none);
                        let content = s.racy || content_may_differ(&s.entry, c) || !same_group;
                        if content || s.entry.meta != c.meta {
                            let basis = if same_group {
                                Basis::InPlace
                            } else {
                                fresh.insert(p.clone());
                                Basis::Copy
                            };
                            ops.push(Op::File {
                                path: p.clone(),
                                basis,
                                content,
                            });
                        }
                    }
                }
            }
            Kind::File { leader: Some(_) } => {}
        }
    }

    // 3. hard links, after every leader
    for (p, c) in &cur.entries {
        if let Kind::File { leader: Some(l) } = &c.kind {
            let unchanged = held(p).is_some_and(|s| s.entry.kind == c.kind) && !fresh.contains(l);
            if !unchanged {
                ops.push(Op::Link {
                    path: p.clone(),
                    leader: l.clone(),
                });
            }
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::manifest::{Meta, Stamp, Time};
    use crate::sync::path::RootPath;

    fn rp(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).unwrap()
    }

    fn entry(kind: Kind, ino: u64, size: u64) -> Entry {
        Entry {
            kind,
            meta: Meta {
                mode: 0o644,
                ..Default::default()
            },
            stamp: Stamp {
                ino,
                size,
                ..Default::default()
            },
        }
    }

    fn file(ino: u64, size: u64) -> Entry {
        entry(Kind::File { leader: None }, ino, size)
    }

    fn follower(l: &str, ino: u64) -> Entry {
        entry(
            Kind::File {
                leader: Some(rp(l)),
            },
            ino,
            0,
        )
    }

    fn manifest(entries: Vec<(&str, Entry)>) -> Manifest {
        let mut m = Manifest {
            root: RootPath::parse(b"/r").unwrap(),
            entries: Default::default(),
            skipped_sockets: vec![],
        };
        m.entries.insert(RelPath::root(), entry(Kind::Dir, 1, 0));
        for (p, e) in entries {
            m.entries.insert(rp(p), e);
        }
        m
    }

    fn sent_of(m: &Manifest) -> BTreeMap<RelPath, SentEntry> {
        m.entries
            .iter()
            .map(|(p, e)| {
                (
                    p.clone(),
                    SentEntry {
                        entry: e.clone(),
                        racy: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn first_round_sends_everything_in_order() {
        let m = manifest(vec![
            ("d", entry(Kind::Dir, 2, 0)),
            ("d/f", file(3, 10)),
            ("d/g", follower("d/f", 3)),
        ]);
        let ops = plan(&BTreeMap::new(), &m);
        assert_eq!(
            ops,
            vec![
                Op::Dir(RelPath::root()),
                Op::Dir(rp("d")),
                Op::File {
                    path: rp("d/f"),
                    basis: Basis::None,
                    content: true
                },
                Op::Link {
                    path: rp("d/g"),
                    leader: rp("d/f")
                },
            ]
        );
        assert!(plan(&sent_of(&m), &m).is_empty(), "nothing changed");
    }

    #[test]
    fn changes_removals_and_type_changes() {
        let before = manifest(vec![
            ("a", entry(Kind::Dir, 2, 0)),
            ("a/x", file(3, 1)),
            ("a/y", file(4, 1)),
            ("b", file(5, 1)),
            ("c", file(6, 1)),
        ]);
        let after = manifest(vec![("b", entry(Kind::Dir, 7, 0)), ("c", file(6, 2))]);
        let ops = plan(&sent_of(&before), &after);
        assert_eq!(
            ops,
            vec![
                Op::Remove(rp("b")),
                Op::Remove(rp("a")),
                Op::Dir(rp("b")),
                Op::File {
                    path: rp("c"),
                    basis: Basis::InPlace,
                    content: true
                },
            ]
        );
    }

    #[test]
    fn a_broken_hard_link_group_gets_a_fresh_copy() {
        let before = manifest(vec![("a", file(3, 1)), ("b", follower("a", 3))]);
        // the source rewrote `a` into a new inode; `b` keeps the old one
        let after = manifest(vec![("a", file(9, 1)), ("b", file(3, 1))]);
        let ops = plan(&sent_of(&before), &after);
        assert_eq!(
            ops,
            vec![
                Op::File {
                    path: rp("a"),
                    basis: Basis::Copy,
                    content: true
                },
                Op::File {
                    path: rp("b"),
                    basis: Basis::None,
                    content: true
                },
            ]
        );
        // and a file that joins a group is re-linked
        let after2 = manifest(vec![
            ("a", file(3, 1)),
            ("b", follower("a", 3)),
            ("c", follower("a", 3)),
        ]);
        let ops = plan(&sent_of(&before), &after2);
        assert_eq!(
            ops,
            vec![
                Op::File {
                    path: rp("a"),
                    basis: Basis::Copy,
                    content: true
                },
                Op::Link {
                    path: rp("b"),
                    leader: rp("a")
                },
                Op::Link {
                    path: rp("c"),
                    leader: rp("a")
                },
            ]
        );
    }

    #[test]
    fn racy_files_are_checked_again_and_atime_alone_is_metadata() {
        let m = manifest(vec![("a", file(3, 1))]);
        let mut sent = sent_of(&m);
        sent.get_mut(&rp("a")).unwrap().racy = true;
        assert_eq!(
            plan(&sent, &m),
            vec![Op::File {
                path: rp("a"),
                basis: Basis::InPlace,
                content: true
            }]
        );
        let mut m2 = m.clone();
        m2.entries.get_mut(&rp("a")).unwrap().meta.atime = Time { sec: 5, nsec: 0 };
        assert_eq!(
            plan(&sent_of(&m), &m2),
            vec![Op::File {
                path: rp("a"),
                basis: Basis::InPlace,
                content: false
            }]
        );
    }
}
