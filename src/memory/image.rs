//! What the final dump's images say about lazy memory: the tasks (`pstree.img`), each task's
//! VMAs (`mm-<pid>.img`) and its pagemap (`pagemap-<pid>.img`), whose entries flagged
//! `PE_LAZY` are the pages CRIU left out of the images for the lazy-pages side to fill.
//!
//! An image is `IMG_COMMON_MAGIC`, the image's own magic, then entries, each a u32 length
//! (little-endian) and that many bytes of protobuf:
//! ```text
//! +------------+-------------+---------+-----------+---------+-----------+ ...
//! | 0x54564319 | image magic | len u32 | entry     | len u32 | entry     |
//! +------------+-------------+---------+-----------+---------+-----------+ ...
//! ```
//! A pagemap's first entry is its `pagemap_head`. Lazy ranges are split at VMA boundaries:
//! `UFFDIO_COPY` works within one VMA.

use std::path::{Path, PathBuf};

use prost::Message;

use super::ranges::PAGE;
use crate::criu::pb;

/// Every CRIU image (but the inventory and service files) starts with this.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// `pstree.img`.
pub const PSTREE_MAGIC: u32 = 0x5027_3030;
/// `pagemap-<pid>.img`.
pub const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// `mm-<pid>.img`.
pub const MM_MAGIC: u32 = 0x5749_2820;
/// Pagemap flag: the pages are in the parent images.
pub const PE_PARENT: u32 = 1 << 0;
/// Pagemap flag: the pages are to be restored lazily.
pub const PE_LAZY: u32 = 1 << 1;
/// Pagemap flag: the pages are in this image set's pages file.
pub const PE_PRESENT: u32 = 1 << 2;
/// One entry larger than this is not a CRIU image entry haul reads.
pub const MAX_ENTRY: usize = 64 << 20;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read CRIU image {path}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not what CRIU writes.
    #[error("CRIU image {path} is malformed: {detail}")]
    Malformed {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn malformed(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::Malformed {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Splits an image's bytes into its protobuf entries, after checking both magics.
pub fn entries<'a>(path: &Path, bytes: &'a [u8], magic: u32) -> Result<Vec<&'a [u8]>, ImageError> {
    let u32_at = |i: usize| -> Option<u32> {
        bytes
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match (u32_at(0), u32_at(4)) {
        (Some(IMG_COMMON_MAGIC), Some(m)) if m == magic => {}
        (a, b) => {
            return Err(malformed(
                path,
                format!("magics {a:x?} {b:x?}, expected {IMG_COMMON_MAGIC:#x} {magic:#x}"),
            ))
        }
    }
    let mut out = Vec::new();
    let mut off = 8;
    while off < bytes.len() {
        let len = u32_at(off).ok_or_else(|| malformed(path, "truncated entry length"))? as usize;
        if len > MAX_ENTRY {
            return Err(malformed(path, format!("entry of {len} bytes")));
        }
        let body = bytes
            .get(off + 4..off + 4 + len)
            .ok_or_else(|| malformed(path, format!("entry at {off} runs past the end")))?;
        out.push(body);
        off += 4 + len;
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A pagemap entry, normalised (old images: `in_parent`, `compat_nr_pages`, no flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapRange {
    /// Dump-time address.
    pub vaddr: u64,
    /// Pages.
    pub nr_pages: u64,
    /// `PE_*` flags.
    pub flags: u32,
}

/// Parses a pagemap image's entries (after its head).
pub fn pagemap(path: &Path, bytes: &[u8]) -> Result<Vec<PagemapRange>, ImageError> {
    let ents = entries(path, bytes, PAGEMAP_MAGIC)?;
    let (head, rest) = ents
        .split_first()
        .ok_or_else(|| malformed(path, "no pagemap head"))?;
    pb::PagemapHead::decode(*head).map_err(|e| malformed(path, format!("pagemap head: {e}")))?;
    rest.iter()
        .map(|b| {
            let e = pb::PagemapEntry::decode(*b)
                .map_err(|e| malformed(path, format!("pagemap entry: {e}")))?;
            let mut flags = e.flags.unwrap_or(0);
            if e.in_parent == Some(true) {
                flags |= PE_PARENT;
            } else if e.flags.is_none() {
                flags = PE_PRESENT;
            }
            let nr_pages = e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages));
            if e.vaddr % PAGE != 0 || e.vaddr.checked_add(nr_pages.saturating_mul(PAGE)).is_none() {
                return Err(malformed(
                    path,
                    format!("entry {:#x}+{nr_pages} pages", e.vaddr),
                ));
            }
            Ok(PagemapRange {
                vaddr: e.vaddr,
                nr_pages,
                flags,
            })
        })
        .collect()
}

/// The `[start, end)` of every VMA in an mm image.
pub fn vmas(path: &Path, bytes: &[u8]) -> Result<Vec<(u64, u64)>, ImageError> {
    let ents = entries(path, bytes, MM_MAGIC)?;
    let first = ents.first().ok_or_else(|| malformed(path, "no mm entry"))?;
    let mm = pb::MmEntry::decode(*first).map_err(|e| malformed(path, format!("mm entry: {e}")))?;
    Ok(mm.vmas.iter().map(|v| (v.start, v.end)).collect())
}

/// The pids of the tasks in a pstree image, in its order (the restore's order).
pub fn pstree(path: &Path, bytes: &[u8]) -> Result<Vec<u32>, ImageError> {
    entries(path, bytes, PSTREE_MAGIC)?
        .iter()
        .map(|b| {
            pb::PstreeEntry::decode(*b)
                .map(|e| e.pid)
                .map_err(|e| malformed(path, format!("pstree entry: {e}")))
        })
        .collect()
}

/// The lazy pages of one task as `[start, end)` ranges, each inside one VMA, sorted.
pub fn lazy_ranges(
    path: &Path,
    pagemap: &[PagemapRange],
    vmas: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>, ImageError> {
    let mut vmas = vmas.to_vec();
    vmas.sort_unstable();
    let mut out = Vec::new();
    for pe in pagemap.iter().filter(|p| p.flags & PE_LAZY != 0) {
        let mut s = pe.vaddr;
        let end = pe.vaddr + pe.nr_pages * PAGE;
        while s < end {
            let i = vmas.partition_point(|&(_, ve)| ve <= s);
            let (vs, ve) = match vmas.get(i) {
                Some(&(vs, ve)) if vs <= s => (vs, ve),
                _ => {
                    return Err(malformed(
                        path,
                        format!("lazy page {s:#x} lies in no VMA of the task"),
                    ))
                }
            };
            let _ = vs;
            let e = end.min(ve);
            out.push((s, e));
            s = e;
        }
    }
    out.sort_unstable();
    if out.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(malformed(path, "lazy ranges overlap"));
    }
    Ok(out)
}

/// One task's lazy memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMemory {
    /// Its pid in the images.
    pub pid: u32,
    /// Its lazy ranges (dump-time addresses, each inside one VMA).
    pub lazy: Vec<(u64, u64)>,
}

impl TaskMemory {
    /// Lazy pages in all.
    pub fn pages(&self) -> u64 {
        self.lazy.iter().map(|(s, e)| (e - s) / PAGE).sum()
    }
}

/// What one image directory says about lazy memory: every task of the tree (zombies and
/// tasks without memory images have no lazy ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyImages {
    /// Tasks in pstree order.
    pub tasks: Vec<TaskMemory>,
}

impl LazyImages {
    /// Reads `pstree.img`, and each task's `mm-<pid>.img` and `pagemap-<pid>.img`, in `dir`.
    pub fn load(dir: &Path) -> Result<LazyImages, ImageError> {
        let p = dir.join("pstree.img");
        let pids = pstree(&p, &read(&p)?)?;
        let mut tasks = Vec::with_capacity(pids.len());
        for pid in pids {
            let mm = dir.join(format!("mm-{pid}.img"));
            let pm = dir.join(format!("pagemap-{pid}.img"));
            if !mm.exists() || !pm.exists() {
                tasks.push(TaskMemory { pid, lazy: vec![] });
                continue;
            }
            let v = vmas(&mm, &read(&mm)?)?;
            let m = pagemap(&pm, &read(&pm)?)?;
            tasks.push(TaskMemory {
                pid,
                lazy: lazy_ranges(&pm, &m, &v)?,
            });
        }
        Ok(LazyImages { tasks })
    }

    /// Lazy pages of every task.
    pub fn pages(&self) -> u64 {
        self.tasks.iter().map(TaskMemory::pages).sum()
    }

    /// The task with image pid `pid`.
    pub fn task(&self, pid: u32) -> Option<&TaskMemory> {
        self.tasks.iter().find(|t| t.pid == pid)
    }
}

/// Encodes entries as CRIU does (for tests and tools).
pub fn encode_image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    out.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm_entry(vaddr: u64, n: u64, flags: u32) -> Vec<u8> {
        pb::PagemapEntry {
            vaddr,
            compat_nr_pages: n as u32,
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(n),
        }
        .encode_to_vec()
    }

    fn vma(start: u64, end: u64) -> pb::VmaEntry {
        pb::VmaEntry {
            start,
            end,
            pgoff: 0,
            shmid: 0,
            prot: 3,
            flags: 0x22,
            status: 0,
            fd: -1,
        }
    }

    #[test]
    fn a_directory_of_images() {
        let d = tempfile::tempdir().unwrap();
        let pstree = encode_image(
            PSTREE_MAGIC,
            &[
                pb::PstreeEntry {
                    pid: 1,
                    ppid: 0,
                    pgid: 1,
                    sid: 1,
                    threads: vec![1],
                }
                .encode_to_vec(),
                pb::PstreeEntry {
                    pid: 2,
                    ppid: 1,
                    pgid: 1,
                    sid: 1,
                    threads: vec![2],
                }
                .encode_to_vec(),
            ],
        );
        std::fs::write(d.path().join("pstree.img"), pstree).unwrap();
        let mm = pb::MmEntry {
            vmas: vec![vma(0x10000, 0x14000), vma(0x14000, 0x20000)],
        };
        std::fs::write(
            d.path().join("mm-1.img"),
            encode_image(MM_MAGIC, &[mm.encode_to_vec()]),
        )
        .unwrap();
        let head = pb::PagemapHead { pages_id: 1 }.encode_to_vec();
        std::fs::write(
            d.path().join("pagemap-1.img"),
            encode_image(
                PAGEMAP_MAGIC,
                &[
                    head,
                    pm_entry(0x10000, 1, PE_PRESENT),
                    // crosses the VMA boundary at 0x14000
                    pm_entry(0x12000, 6, PE_LAZY),
                    pm_entry(0x19000, 1, PE_PARENT),
                ],
            ),
        )
        .unwrap();
        let l = LazyImages::load(d.path()).unwrap();
        assert_eq!(l.tasks.len(), 2);
        assert_eq!(
            l.task(1).unwrap().lazy,
            vec![(0x12000, 0x14000), (0x14000, 0x18000)]
        );
        assert!(l.task(2).unwrap().lazy.is_empty(), "no memory images");
        assert_eq!(l.pages(), 6);
    }

    #[test]
    fn refuses_bad_images() {
        let p = Path::new("x.img");
        assert!(entries(p, &[1, 2, 3], PSTREE_MAGIC).is_err());
        let mut img = encode_image(PSTREE_MAGIC, &[vec![1, 2, 3]]);
        img.truncate(img.len() - 1);
        assert!(entries(p, &img, PSTREE_MAGIC).is_err(), "truncated");
        assert!(entries(p, &encode_image(MM_MAGIC, &[]), PSTREE_MAGIC).is_err());
        let huge = {
            let mut v = encode_image(PSTREE_MAGIC, &[]);
            v.extend_from_slice(&u32::MAX.to_le_bytes());
            v
        };
        assert!(entries(p, &huge, PSTREE_MAGIC).is_err());
        let pm = [PagemapRange {
            vaddr: 0x1000,
            nr_pages: 1,
            flags: PE_LAZY,
        }];
        assert!(
            lazy_ranges(p, &pm, &[(0x2000, 0x3000)]).is_err(),
            "outside VMAs"
        );
    }

    #[test]
    fn old_pagemaps_are_normalised() {
        let p = Path::new("pagemap-1.img");
        let old = pb::PagemapEntry {
            vaddr: 0x1000,
            compat_nr_pages: 2,
            in_parent: Some(true),
            flags: None,
            nr_pages: None,
        }
        .encode_to_vec();
        let img = encode_image(
            PAGEMAP_MAGIC,
            &[pb::PagemapHead { pages_id: 1 }.encode_to_vec(), old],
        );
        assert_eq!(
            pagemap(p, &img).unwrap(),
            vec![PagemapRange {
                vaddr: 0x1000,
                nr_pages: 2,
                flags: PE_PARENT
            }]
        );
    }
}
