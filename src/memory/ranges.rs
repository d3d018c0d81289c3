//! Page bookkeeping: which pages of one restored task are still missing, at the addresses the
//! task uses now, and where each one's contents lie in the images (the address at dump time).
//!
//! The two differ only after the task moved memory with `mremap` (userfaultfd's `REMAP`
//! event); until then every run maps to itself and lookups by image address are range queries.
//! Addresses are bytes, always page-aligned; lengths are whole pages.

use std::collections::BTreeMap;

/// The page size haul's engine works in (x86-64, CRIU's `PAGE_SIZE`).
pub const PAGE: u64 = 4096;

/// A run of missing pages: `[start, end)` in the task's address space now, whose contents are
/// at `img..img + (end - start)` in the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First byte, run-time address.
    pub start: u64,
    /// One past the last byte, run-time address.
    pub end: u64,
    /// Where `start`'s contents are in the images (dump-time address).
    pub img: u64,
}

impl Run {
    /// Pages in the run.
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
    }
}

/// The missing pages of one task. Runs never overlap, and are never merged: each range
/// given to [`Missing::from_ranges`] lies inside one VMA (see `image::lazy_ranges`), and
/// `UFFDIO_COPY` refuses (`ENOENT`) a range that is not inside ONE VMA. Two adjacent
/// VMAs are common (a thread's stack and the mapping right above it, which holds its TLS and
/// rseq area): a merged run across them made the engine's copies fail there and the faulting
/// thread sleep forever.
#[derive(Debug, Clone, Default)]
pub struct Missing {
    /// start -> (end, img)
    runs: BTreeMap<u64, (u64, u64)>,
    pages: u64,
    /// Some run was moved by a remap (image lookups scan instead of range-querying).
    moved: bool,
}

impl Missing {
    /// Every page of `ranges` (dump-time addresses, `[start, end)`) is missing; ranges may
    /// touch but must not overlap.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Missing {
        let mut m = Missing::default();
        for (s, e) in ranges {
            m.insert(Run {
                start: s,
                end: e,
                img: s,
            });
        }
        m
    }

    /// Pages still missing.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (fragmentation; for tests and logs).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The runs, lowest address first.
    pub fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        self.runs
            .iter()
            .map(|(&start, &(end, img))| Run { start, end, img })
    }

    /// Adds a run that overlaps nothing already missing (never merged with its neighbours:
    /// see [`Missing`]).
    fn insert(&mut self, r: Run) {
        if r.end <= r.start {
            return;
        }
        debug_assert!(r.start % PAGE == 0 && r.end % PAGE == 0 && r.img % PAGE == 0);
        debug_assert!(
            self.runs
                .range(..r.end)
                .next_back()
                .map_or(true, |(_, &(pe, _))| pe <= r.start),
            "overlapping insert"
        );
        self.pages += r.pages();
        self.runs.insert(r.start, (r.end, r.img));
    }

    /// The image address of run-time page `addr`, when it is missing.
    pub fn lookup(&self, addr: u64) -> Option<u64> {
        let (&s, &(e, img)) = self.runs.range(..=addr).next_back()?;
        (addr < e).then(|| img + (addr - s))
    }

    /// Removes `[start, end)` (run-time addresses); returns the pieces that were missing.
    pub fn remove(&mut self, start: u64, end: u64) -> Vec<Run> {
        let mut out = Vec::new();
        if end <= start {
            return out;
        }
        let first = match self.runs.range(..=start).next_back() {
            Some((&s, &(e, _))) if e > start => s,
            _ => start,
        };
        let keys: Vec<u64> = self.runs.range(first..end).map(|(&k, _)| k).collect();
        for s in keys {
            let (e, img) = self.runs.remove(&s).expect("key listed");
            let cut_s = s.max(start);
            let cut_e = e.min(end);
            if cut_s >= cut_e {
                self.runs.insert(s, (e, img));
                continue;
            }
            if s < cut_s {
                self.runs.insert(s, (cut_s, img));
            }
            if cut_e < e {
                self.runs.insert(cut_e, (e, img + (cut_e - s)));
            }
            let piece = Run {
                start: cut_s,
                end: cut_e,
                img: img + (cut_s - s),
            };
            self.pages -= piece.pages();
            out.push(piece);
        }
        out
    }

    /// The missing pieces whose contents are at image addresses `[img_start, img_end)`.
    pub fn by_img(&self, img_start: u64, img_end: u64) -> Vec<Run> {
        let clip = |s: u64, e: u64, img: u64| {
            let lo = img.max(img_start);
            let hi = (img + (e - s)).min(img_end);
            (lo < hi).then(|| Run {
                start: s + (lo - img),
                end: s + (hi - img),
                img: lo,
            })
        };
        if !self.moved {
            let first = match self.runs.range(..=img_start).next_back() {
                Some((&s, &(e, _))) if e > img_start => s,
                _ => img_start,
            };
            return self
                .runs
                .range(first..img_end)
                .filter_map(|(&s, &(e, img))| clip(s, e, img))
                .collect();
        }
        let mut v: Vec<Run> = self
            .runs
            .iter()
            .filter_map(|(&s, &(e, img))| clip(s, e, img))
            .collect();
        v.sort_by_key(|r| r.img);
        v
    }

    /// The task moved `[from, from + len)` to `to` (`mremap`): missing pages there move along.
    /// Whatever was missing at the destination range is dropped first (the kernel unmapped it).
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.remove(from, from + len);
        self.remove(to, to + len);
        for r in moved {
            if to != from {
                self.moved = true;
            }
            self.insert(Run {
                start: r.start - from + to,
                end: r.end - from + to,
                img: r.img,
            });
        }
    }

    /// At most `max_pages` pages from the lowest missing run.
    pub fn first(&self, max_pages: u64) -> Option<Run> {
        let (&s, &(e, img)) = self.runs.iter().next()?;
        Some(Run {
            start: s,
            end: e.min(s + max_pages.max(1) * PAGE),
            img,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;

    const P: u64 = PAGE;

    fn model_of(m: &Missing) -> Model<u64, u64> {
        let mut out = Model::new();
        for r in m.iter() {
            for i in 0..r.pages() {
                out.insert(r.start + i * P, r.img + i * P);
            }
        }
        out
    }

    #[test]
    fn remove_splits_and_reports() {
        let mut m = Missing::from_ranges([(0, 10 * P), (20 * P, 30 * P)]);
        assert_eq!(m.pages(), 20);
        let got = m.remove(5 * P, 25 * P);
        assert_eq!(
            got,
            vec![
                Run {
                    start: 5 * P,
                    end: 10 * P,
                    img: 5 * P
                },
                Run {
                    start: 20 * P,
                    end: 25 * P,
                    img: 20 * P
                }
            ]
        );
        assert_eq!(m.pages(), 10);
        assert_eq!(m.lookup(4 * P), Some(4 * P));
        assert_eq!(m.lookup(5 * P), None);
        assert_eq!(m.lookup(25 * P), Some(25 * P));
        assert!(m.remove(100 * P, 200 * P).is_empty());
    }

    #[test]
    fn remap_keeps_image_addresses() {
        let mut m = Missing::from_ranges([(10 * P, 20 * P)]);
        m.remove(12 * P, 13 * P);
        m.remap(10 * P, 100 * P, 10 * P);
        assert_eq!(m.lookup(100 * P), Some(10 * P));
        assert_eq!(m.lookup(102 * P), None);
        assert_eq!(m.lookup(109 * P), Some(19 * P));
        let by = m.by_img(11 * P, 14 * P);
        assert_eq!(
            by,
            vec![
                Run {
                    start: 101 * P,
                    end: 102 * P,
                    img: 11 * P
                },
                Run {
                    start: 103 * P,
                    end: 104 * P,
                    img: 13 * P
                }
            ]
        );
    }

    /// Two adjacent ranges are two VMAs: a run (hence one `UFFDIO_COPY`) never spans both.
    #[test]
    fn adjacent_ranges_stay_apart() {
        let m = Missing::from_ranges([(0, 4 * P), (4 * P, 8 * P)]);
        assert_eq!(m.runs(), 2);
        assert_eq!(
            m.first(8),
            Some(Run {
                start: 0,
                end: 4 * P,
                img: 0
            })
        );
        assert_eq!(
            m.by_img(3 * P, 5 * P),
            vec![
                Run {
                    start: 3 * P,
                    end: 4 * P,
                    img: 3 * P
                },
                Run {
                    start: 4 * P,
                    end: 5 * P,
                    img: 4 * P
                }
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Remove(u64, u64),
        Remap(u64, u64, u64),
        ByImg(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..64, 1u64..16).prop_map(|(s, n)| Op::Remove(s * P, (s + n) * P)),
            (0u64..64, 0u64..64, 1u64..16).prop_map(|(f, t, n)| Op::Remap(f * P, t * P, n * P)),
            (0u64..64, 1u64..16).prop_map(|(s, n)| Op::ByImg(s * P, (s + n) * P)),
        ]
    }

    proptest! {
        /// Against a page-by-page model: removals report exactly the missing pages they cut,
        /// remaps carry image addresses along, image lookups find every moved page.
        #[test]
        fn matches_a_page_model(
            ranges in proptest::collection::vec((0u64..32, 1u64..8), 1..6),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            // disjoint initial ranges
            let mut used = std::collections::BTreeSet::new();
            let mut init = Vec::new();
            for (s, n) in ranges {
                let pages: Vec<u64> = (s..s + n).collect();
                if pages.iter().any(|p| used.contains(p)) { continue; }
                used.extend(pages.iter().copied());
                init.push((s * P, (s + n) * P));
            }
            let mut m = Missing::from_ranges(init.clone());
            let mut model: Model<u64, u64> = Model::new();
            for (s, e) in &init {
                let mut a = *s;
                while a < *e { model.insert(a, a); a += P; }
            }
            for o in ops {
                match o {
                    Op::Remove(s, e) => {
                        let got = m.remove(s, e);
                        let mut want = Vec::new();
                        let mut a = s;
                        while a < e { if let Some(i) = model.remove(&a) { want.push((a, i)); } a += P; }
                        let mut gotp = Vec::new();
                        for r in got { for i in 0..r.pages() { gotp.push((r.start + i * P, r.img + i * P)); } }
                        prop_assert_eq!(gotp, want);
                    }
                    Op::Remap(f, t, len) => {
                        m.remap(f, t, len);
                        let mut moved = Vec::new();
                        let mut a = f;
                        while a < f + len { if let Some(i) = model.remove(&a) { moved.push((a - f + t, i)); } a += P; }
                        let mut a = t;
                        while a < t + len { model.remove(&a); a += P; }
                        for (k, v) in moved { model.insert(k, v); }
                    }
                    Op::ByImg(s, e) => {
                        let got = m.by_img(s, e);
                        let mut gotp: Vec<(u64, u64)> = Vec::new();
                        for r in got { for i in 0..r.pages() { gotp.push((r.img + i * P, r.start + i * P)); } }
                        gotp.sort();
                        let mut want: Vec<(u64, u64)> = model.iter().filter(|(_, &i)| i >= s && i < e).map(|(&k, &i)| (i, k)).collect();
                        want.sort();
                        prop_assert_eq!(gotp, want);
                    }
                }
                prop_assert_eq!(model_of(&m), model.clone());
                prop_assert_eq!(m.pages(), model.len() as u64);
            }
        }
    }
}
