//! The file set `file-churn` keeps changing, and its verifier: every byte of every file is a
//! function of (file, block, generation), and the writer keeps the generations in memory (so
//! they migrate with the process), so it can check each file on whatever node it runs on.
//!
//! ```text
//! DIR/data-NNN     regular files of whole blocks, rewritten in place (one block per write)
//! DIR/sparse       a file of `SPARSE_STRIDE` x its data: one data block every
//!                  `SPARSE_STRIDE` blocks, holes between, rewritten in place
//! DIR/log-N        appended one block at a time; at its cap it is renamed to log-N.old
//!                  (replacing the previous one) and starts again (a new inode each time)
//! ```
//!
//! A block of `len` bytes: `"HFCB" | file u32 | block u64 | generation u32` (20 bytes, little
//! endian) then bytes from a splitmix64 stream seeded by those three numbers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Magic at the start of every block.
pub const MAGIC: [u8; 4] = *b"HFCB";
/// Bytes of a block header.
pub const HEADER: usize = 20;
/// Distance between two data blocks of the sparse file, in blocks.
pub const SPARSE_STRIDE: u64 = 16;

/// The bytes of block `block` of file `file` at generation `gen`.
pub fn block_bytes(file: u32, block: u64, gen: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&file.to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&gen.to_le_bytes());
    let mut x = (u64::from(file) << 40) ^ (block << 8) ^ u64::from(gen).rotate_left(29) ^ 0x5EED;
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sizes of the file set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChurnSpec {
    /// Bytes of data in all (about; whole blocks).
    pub total: u64,
    /// Rewritten data files.
    pub data_files: u32,
    /// Appended log files.
    pub logs: u32,
    /// Block size in bytes (at least [`HEADER`]).
    pub block: u32,
}

impl ChurnSpec {
    /// Blocks of each data file.
    pub fn data_blocks(&self) -> u64 {
        let share = self.total * 7 / 10 / u64::from(self.data_files.max(1));
        (share / u64::from(self.block)).max(1)
    }

    /// Data blocks of the sparse file.
    pub fn sparse_blocks(&self) -> u64 {
        (self.total / 10 / u64::from(self.block)).max(1)
    }

    /// Blocks a log holds before it rotates.
    pub fn log_cap(&self) -> u64 {
        (self.total / 10 / u64::from(self.logs.max(1)) / u64::from(self.block)).max(1)
    }
}

/// One appended log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogState {
    /// Rotations so far (the generation of the blocks of `log-N`).
    pub epoch: u32,
    /// Blocks in `log-N`.
    pub blocks: u64,
    /// Blocks in `log-N.old` (generation `epoch - 1`), when it exists.
    pub old_blocks: Option<u64>,
}

/// What the files must hold: the generation of every block.
#[derive(Debug, Clone)]
pub struct ChurnState {
    /// Sizes.
    pub spec: ChurnSpec,
    /// The directory.
    pub dir: PathBuf,
    /// Generations per data file, per block.
    pub data: Vec<Vec<u32>>,
    /// Generations of the sparse file's data blocks.
    pub sparse: Vec<u32>,
    /// The logs.
    pub logs: Vec<LogState>,
    /// Block rewrites so far.
    pub rewrites: u64,
    /// Block appends so far.
    pub appends: u64,
    /// Log rotations so far.
    pub rotations: u64,
}

/// File ids in block headers: data files 0.., the sparse file 10000, log N 20000 + N.
const SPARSE_ID: u32 = 10_000;
const LOG_ID: u32 = 20_000;

impl ChurnState {
    /// Creates the files in `dir` (made if missing; existing files are replaced).
    pub fn create(dir: &Path, spec: ChurnSpec) -> io::Result<ChurnState> {
        std::fs::create_dir_all(dir)?;
        let st = ChurnState {
            spec,
            dir: dir.to_path_buf(),
            data: vec![vec![0; spec.data_blocks() as usize]; spec.data_files as usize],
            sparse: vec![0; spec.sparse_blocks() as usize],
            logs: vec![LogState::default(); spec.logs as usize],
            rewrites: 0,
            appends: 0,
            rotations: 0,
        };
        let b = spec.block as usize;
        for (i, blocks) in st.data.iter().enumerate() {
            let f = create(&st.data_path(i))?;
            let mut buf = Vec::with_capacity(b * 16);
            for blk in 0..blocks.len() as u64 {
                buf.extend_from_slice(&block_bytes(i as u32, blk, 0, b));
                if buf.len() >= b * 16 {
                    write_all_at(&f, &buf, (blk + 1) * b as u64 - buf.len() as u64)?;
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                write_all_at(&f, &buf, blocks.len() as u64 * b as u64 - buf.len() as u64)?;
            }
        }
        let f = create(&st.sparse_path())?;
        for k in 0..st.sparse.len() as u64 {
            write_all_at(
                &f,
                &block_bytes(SPARSE_ID, k, 0, b),
                k * SPARSE_STRIDE * b as u64,
            )?;
        }
        f.set_len(st.sparse.len() as u64 * SPARSE_STRIDE * b as u64)?;
        for n in 0..st.logs.len() {
            create(&st.log_path(n, false))?;
            let _ = std::fs::remove_file(st.log_path(n, true));
        }
        Ok(st)
    }

    /// `DIR/data-NNN`.
    pub fn data_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("data-{i:03}"))
    }

    /// `DIR/sparse`.
    pub fn sparse_path(&self) -> PathBuf {
        self.dir.join("sparse")
    }

    /// `DIR/log-N` or `DIR/log-N.old`.
    pub fn log_path(&self, n: usize, old: bool) -> PathBuf {
        self.dir
            .join(format!("log-{n}{}", if old { ".old" } else { "" }))
    }

    /// Bytes the files hold now.
    pub fn bytes(&self) -> u64 {
        let b = u64::from(self.spec.block);
        let data: u64 = self.data.iter().map(|v| v.len() as u64).sum();
        let logs: u64 = self
            .logs
            .iter()
            .map(|l| l.blocks + l.old_blocks.unwrap_or(0))
            .sum();
        (data + self.sparse.len() as u64 + logs) * b
    }

    /// Rewrites one block: `pick` chooses among the data files' and the sparse file's blocks.
    pub fn rewrite(&mut self, pick: u64) -> io::Result<()> {
        let b = self.spec.block as usize;
        let per = self.data.first().map_or(0, |v| v.len() as u64);
        let all = per * self.data.len() as u64 + self.sparse.len() as u64;
        let k = pick % all.max(1);
        if k < per * self.data.len() as u64 {
            let (i, blk) = ((k / per) as usize, k % per);
            let gen = self.data[i][blk as usize] + 1;
            let f = OpenOptions::new().write(true).open(self.data_path(i))?;
            write_all_at(&f, &block_bytes(i as u32, blk, gen, b), blk * b as u64)?;
            self.data[i][blk as usize] = gen;
        } else {
            let s = k - per * self.data.len() as u64;
            let gen = self.sparse[s as usize] + 1;
            let f = OpenOptions::new().write(true).open(self.sparse_path())?;
            write_all_at(
                &f,
                &block_bytes(SPARSE_ID, s, gen, b),
                s * SPARSE_STRIDE * b as u64,
            )?;
            self.sparse[s as usize] = gen;
        }
        self.rewrites += 1;
        Ok(())
    }

    /// Appends one block to log `n` (rotating it first when full).
    pub fn append(&mut self, n: usize) -> io::Result<()> {
        let n = n % self.logs.len().max(1);
        if self.logs.is_empty() {
            return Ok(());
        }
        let b = self.spec.block as usize;
        if self.logs[n].blocks >= self.spec.log_cap() {
            std::fs::rename(self.log_path(n, false), self.log_path(n, true))?;
            create(&self.log_path(n, false))?;
            let l = &mut self.logs[n];
            l.old_blocks = Some(l.blocks);
            l.blocks = 0;
            l.epoch += 1;
            self.rotations += 1;
        }
        let l = &self.logs[n];
        let f = OpenOptions::new()
            .append(true)
            .open(self.log_path(n, false))?;
        let data = block_bytes(LOG_ID + n as u32, l.blocks, l.epoch, b);
        // one write(2) on an O_APPEND descriptor: the block lands whole at the end
        let written = io::Write::write(&mut &f, &data)?;
        if written != data.len() {
            return Err(io::Error::other("short append"));
        }
        self.logs[n].blocks += 1;
        self.appends += 1;
        Ok(())
    }

    /// Checks every file against the generations: one text per file that differs (what and
    /// where, the first difference), empty when all hold what was written.
    pub fn verify(&self) -> Vec<String> {
        let b = self.spec.block as usize;
        let mut fails = Vec::new();
        for (i, gens) in self.data.iter().enumerate() {
            let p = self.data_path(i);
            let want = gens.len() as u64 * b as u64;
            if let Err(e) = check_file(
                &p,
                want,
                |blk, got| {
                    let blk = blk as usize;
                    (got == block_bytes(i as u32, blk as u64, gens[blk], b).as_slice())
                        .then_some(())
                        .ok_or_else(|| describe(got, i as u32, blk as u64, gens[blk]))
                },
                b,
            ) {
                fails.push(e);
            }
        }
        // the sparse file: data blocks at their stride, zeros between
        let p = self.sparse_path();
        let want = self.sparse.len() as u64 * SPARSE_STRIDE * b as u64;
        if let Err(e) = check_file(
            &p,
            want,
            |blk, got| {
                if blk % SPARSE_STRIDE == 0 {
                    let s = blk / SPARSE_STRIDE;
                    let gen = self.sparse[s as usize];
                    (got == block_bytes(SPARSE_ID, s, gen, b).as_slice())
                        .then_some(())
                        .ok_or_else(|| describe(got, SPARSE_ID, s, gen))
                } else if got.iter().all(|&x| x == 0) {
                    Ok(())
                } else {
                    Err("data where a hole (zeros) belongs".into())
                }
            },
            b,
        ) {
            fails.push(e);
        }
        for (n, l) in self.logs.iter().enumerate() {
            let id = LOG_ID + n as u32;
            if let Err(e) = check_file(
                &self.log_path(n, false),
                l.blocks * b as u64,
                |blk, got| {
                    (got == block_bytes(id, blk, l.epoch, b).as_slice())
                        .then_some(())
                        .ok_or_else(|| describe(got, id, blk, l.epoch))
                },
                b,
            ) {
                fails.push(e);
            }
            if let Some(old) = l.old_blocks {
                let epoch = l.epoch - 1;
                if let Err(e) = check_file(
                    &self.log_path(n, true),
                    old * b as u64,
                    |blk, got| {
                        (got == block_bytes(id, blk, epoch, b).as_slice())
                            .then_some(())
                            .ok_or_else(|| describe(got, id, blk, epoch))
                    },
                    b,
                ) {
                    fails.push(e);
                }
            }
        }
        fails
    }
}

fn create(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(p)
}

fn write_all_at(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    f.write_all_at(buf, off)
}

/// What a block holds instead, from its header.
fn describe(got: &[u8], file: u32, block: u64, gen: u32) -> String {
    let want = format!("file {file} block {block} generation {gen}");
    if got.len() < HEADER || got[..4] != MAGIC {
        return format!("expected {want}, found no block header");
    }
    let f = u32::from_le_bytes(got[4..8].try_into().expect("4"));
    let b = u64::from_le_bytes(got[8..16].try_into().expect("8"));
    let g = u32::from_le_bytes(got[16..20].try_into().expect("4"));
    if (f, b, g) == (file, block, gen) {
        format!("expected {want}, the header matches but the data differs")
    } else {
        format!("expected {want}, found file {f} block {b} generation {g}")
    }
}

/// Checks the file's size, then each block with `ok(block index, bytes)`.
fn check_file(
    p: &Path,
    size: u64,
    mut ok: impl FnMut(u64, &[u8]) -> Result<(), String>,
    block: usize,
) -> Result<(), String> {
    let f = File::open(p).map_err(|e| format!("{}: cannot open: {e}", p.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: cannot stat: {e}", p.display()))?
        .len();
    if len != size {
        return Err(format!("{}: {len} bytes, {size} written", p.display()));
    }
    let mut buf = vec![0u8; block];
    for blk in 0..size / block as u64 {
        f.read_exact_at(&mut buf, blk * block as u64)
            .map_err(|e| format!("{}: cannot read block {blk}: {e}", p.display()))?;
        ok(blk, &buf).map_err(|why| format!("{}: block {blk}: {why}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChurnSpec {
        ChurnSpec {
            total: 4 << 20,
            data_files: 3,
            logs: 2,
            block: 4096,
        }
    }

    #[test]
    fn written_files_verify_and_damage_is_named() {
        let d = tempfile::tempdir().unwrap();
        let mut st = ChurnState::create(&d.path().join("c"), spec()).unwrap();
        assert!(st.verify().is_empty(), "{:?}", st.verify());
        for i in 0..500u64 {
            st.rewrite(i.wrapping_mul(0x9E37_79B9)).unwrap();
            st.append(i as usize).unwrap();
        }
        assert!(st.rotations > 0, "logs rotated");
        let fails = st.verify();
        assert!(fails.is_empty(), "{fails:?}");
        assert!(st.bytes() > 2 << 20);
        // a flipped byte in a data file
        let p = st.data_path(1);
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut one = [0u8];
        f.read_exact_at(&mut one, 4096 * 3 + 100).unwrap();
        f.write_all_at(&[one[0] ^ 1], 4096 * 3 + 100).unwrap();
        let fails = st.verify();
        assert_eq!(fails.len(), 1, "{fails:?}");
        assert!(fails[0].contains("data-001: block 3"), "{fails:?}");
        assert!(
            fails[0].contains("header matches but the data differs"),
            "{fails:?}"
        );
        // an old generation (a lost rewrite), a truncated log, data in a hole
        f.write_all_at(&block_bytes(1, 3, 0, 4096), 4096 * 3)
            .unwrap();
        if st.data[1][3] == 0 {
            st.data[1][3] = 1;
        }
        let log = OpenOptions::new()
            .write(true)
            .open(st.log_path(0, false))
            .unwrap();
        log.set_len(st.logs[0].blocks * 4096 - 1).unwrap();
        let sp = OpenOptions::new()
            .write(true)
            .open(st.sparse_path())
            .unwrap();
        sp.write_all_at(b"x", 4096 * 5).unwrap();
        let fails = st.verify();
        assert_eq!(fails.len(), 3, "{fails:?}");
        assert!(
            fails[0].contains("found file 1 block 3 generation 0"),
            "{fails:?}"
        );
        assert!(
            fails[1].contains("sparse: block 5: data where a hole"),
            "{fails:?}"
        );
        assert!(
            fails[2].contains("log-0:") && fails[2].contains("written"),
            "{fails:?}"
        );
    }
}
