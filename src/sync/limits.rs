//! Every bound of file synchronisation in one place (design principle 3: bounded everything).
//!
//! Each constant says where its number comes from. The destination enforces all of them on
//! what it receives; the source keeps to them when it produces messages, so a tree that needs
//! more (a deeper tree, a longer name) is refused before the freeze, naming the entry.

/// Largest encoded [`super::pb::SyncMessage`], in bytes: 1 MiB, so that the message plus the
/// control protocol's own wrapper stays under the frame limit
/// ([`crate::wire::frame::MAX_PAYLOAD`] = 1 MiB + 4 KiB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Literal or delta bytes per message: 512 KiB (half of [`MAX_MESSAGE`], leaving room for a
/// path of [`MAX_PATH`] bytes and the fields around it).
pub const CHUNK: usize = 512 << 10;

/// Length of a segment in bytes (256 KiB): the unit of change detection (a BLAKE3 hash each)
/// and of rsync deltas. A delta is computed per segment so that both sides hold at most one
/// segment (and its delta) in memory whatever the file's size, and so that a rewritten block
/// costs an rsync pass over its segment only (4 MiB segments made a 200 MiB tree with a few
/// MiB/s of rewrites spend over a second per round in MD4 and rolling checksums). The
/// source keeps a hash and an rsync signature (64 blocks x 12 bytes) per data segment: about
/// 0.3 % of the data.
pub const SEGMENT_LEN: u64 = 256 << 10;

/// rsync block length inside a segment, in bytes (4 KiB, the page size: the workloads this
/// tool moves rewrite pages and append, so a changed page costs one block).
pub const RSYNC_BLOCK: u32 = 4096;

/// Bytes of the MD4 strong hash kept per block (8 of 16; librsync's default). Every
/// reconstructed segment is verified with BLAKE3 as well.
pub const RSYNC_STRONG: u32 = 8;

/// The largest delta accepted for one segment: the segment sent as one literal plus
/// fast_rsync's command overhead (at most 9 bytes per command, one command per block), with
/// margin.
pub const MAX_DELTA: usize = SEGMENT_LEN as usize + SEGMENT_LEN as usize / 8 + (64 << 10);

/// Longest relative path, in bytes (Linux's PATH_MAX is 4096 including the NUL).
pub const MAX_PATH: usize = 4095;

/// Longest path component, in bytes (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;

/// Deepest entry below a root, in components (bounds the receiver's recursion and open
/// directory descriptors).
pub const MAX_DEPTH: usize = 128;

/// Most synced roots in one migration.
pub const MAX_ROOTS: usize = 64;

/// Most entries in one tree (a scan of more is refused: the manifest lives in memory, about
/// 200 bytes per entry).
pub const MAX_ENTRIES: usize = 1_000_000;

/// Most data extents recorded for one sparse file; beyond this the rest of the file is
/// treated as data (its content stays right, only its holes are filled).
pub const MAX_EXTENTS: usize = 4096;

/// Largest regular file the destination accepts by default, in bytes (1 TiB); the free-space
/// budget usually refuses earlier.
pub const MAX_FILE_SIZE: u64 = 1 << 40;

/// Free space the destination keeps for itself, in bytes (64 MiB), on top of the
/// percentage in [`RESERVE_PERCENT`].
pub const RESERVE_BYTES: u64 = 64 << 20;

/// Percentage of the file system the destination keeps free.
pub const RESERVE_PERCENT: u64 = 2;

/// Most held files in one [`super::pb::CheckFiles`] message (each at most [`MAX_PATH`] + a few
/// bytes: 4096 of them stay far below [`MAX_MESSAGE`] only for typical paths, so the sender
/// also splits by size).
pub const MAX_CHECK_FILES: usize = 4096;

/// Bytes of a symlink target (PATH_MAX).
pub const MAX_LINK_TARGET: usize = 4095;

/// A file whose ctime or mtime lies less than this before the moment the source opened it
/// may change again within the same timestamp tick without its stat showing it (Linux
/// stamps files from a coarse clock that lags by up to one jiffy, 1-10 ms): it is read and
/// compared again in the next round whatever its stat says ("racily clean", as git calls
/// it). 100 ms is ten times the longest jiffy (HZ=100).
pub const RACY_WINDOW_NS: i128 = 100_000_000;
