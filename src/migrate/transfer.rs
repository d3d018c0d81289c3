//! Image files over the control channel: the sender walks a round directory, the receiver
//! writes validated names into its own round directory and nowhere else.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::wire::names;
use crate::wire::pb;

use super::control::{ChannelError, Control, Stream};
use super::error::PathError;

/// Image data per chunk.
pub const CHUNK: usize = 1 << 20;

/// Whether a file of a round directory goes to the destination: CRIU's images, not its logs
/// or the source's own stats.
pub fn is_image(name: &str) -> bool {
    !(name.ends_with(".log") || name.starts_with("stats-") || name == "report.json")
}

/// Why the images could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// An image could not be read.
    #[error(transparent)]
    Read(#[from] PathError),
    /// The control channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Sends every image file of `dir` as round `round`; returns the bytes sent.
pub async fn send_images<S: Stream>(
    ctl: &mut Control<S>,
    dir: &Path,
    round: u32,
) -> Result<u64, SendError> {
    let mut names: Vec<String> = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| PathError::new("cannot list images in", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| PathError::new("cannot list images in", dir, e))?;
        let ft = entry
            .file_type()
            .map_err(|e| PathError::new("cannot stat", entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ft.is_file() && is_image(&name) {
            names.push(name);
        }
    }
    names.sort();
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for name in names {
        let path = dir.join(&name);
        let mut f = File::open(&path).map_err(|e| PathError::new("cannot open image", &path, e))?;
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf)
                .map_err(|e| PathError::new("cannot read image", &path, e))?;
            let last = n < CHUNK;
            ctl.send(pb::ImageChunk {
                round,
                name: name.clone(),
                offset,
                data: buf[..n].to_vec(),
                last,
            })
            .await?;
            offset += n as u64;
            if last {
                break;
            }
        }
        total += offset;
    }
    Ok(total)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Why a chunk was refused.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ChunkError {
    /// {0}
    Name(#[from] names::NameError),
    /// chunk of {name} at offset {got}, expected {want} (out of order, or a file sent twice)
    Order {
        /// The file.
        name: String,
        /// The chunk's offset.
        got: u64,
        /// The file's length so far.
        want: u64,
    },
    /// images exceed the {limit}-byte budget for this migration (the destination's free space)
    Budget {
        /// The budget.
        limit: u64,
    },
    /// cannot write {path}
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes received chunks into one directory.
pub struct ImageReceiver {
    dir: PathBuf,
    open: HashMap<String, (File, u64)>,
    done: std::collections::HashSet<String>,
    total: u64,
    limit: u64,
}

impl ImageReceiver {
    /// Receives into `dir`, at most `limit` bytes in all.
    pub fn new(dir: &Path, limit: u64) -> ImageReceiver {
        ImageReceiver {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
            done: Default::default(),
            total: 0,
            limit,
        }
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Writes one chunk. A file is created at offset 0 (never over an existing file or through
    /// a symlink), extended in order, and closed by its `last` chunk.
    pub fn accept(&mut self, c: &pb::ImageChunk) -> Result<(), ChunkError> {
        let name = names::validate(&c.name)?.to_string();
        if self.done.contains(&name) {
            return Err(ChunkError::Order {
                name,
                got: c.offset,
                want: 0,
            });
        }
        self.total = self.total.saturating_add(c.data.len() as u64);
        if self.total > self.limit {
            return Err(ChunkError::Budget { limit: self.limit });
        }
        let path = self.dir.join(&name);
        if !self.open.contains_key(&name) {
            if c.offset != 0 {
                return Err(ChunkError::Order {
                    name,
                    got: c.offset,
                    want: 0,
                });
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
                .map_err(|source| ChunkError::Io {
                    path: path.clone(),
                    source,
                })?;
            self.open.insert(name.clone(), (f, 0));
        }
        let (f, len) = self.open.get_mut(&name).expect("just inserted");
        if c.offset != *len {
            return Err(ChunkError::Order {
                name,
                got: c.offset,
                want: *len,
            });
        }
        f.write_all(&c.data).map_err(|source| ChunkError::Io {
            path: path.clone(),
            source,
        })?;
        *len += c.data.len() as u64;
        if c.last {
            self.open.remove(&name);
            self.done.insert(name);
        }
        Ok(())
    }

    /// Whether every file that was started has been completed.
    pub fn complete(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Conn;
    use crate::wire::pb::message::Body;

    fn chunk(name: &str, offset: u64, data: &[u8], last: bool) -> pb::ImageChunk {
        pb::ImageChunk {
            round: 0,
            name: name.into(),
            offset,
            data: data.to_vec(),
            last,
        }
    }

    #[test]
    fn writes_in_order_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let mut r = ImageReceiver::new(d.path(), 1 << 20);
        r.accept(&chunk("core-1.img", 0, b"abc", false)).unwrap();
        r.accept(&chunk("core-1.img", 3, b"def", true)).unwrap();
        assert_eq!(
            std::fs::read(d.path().join("core-1.img")).unwrap(),
            b"abcdef"
        );
        assert!(r.complete());
        assert!(
            r.accept(&chunk("core-1.img", 0, b"x", true)).is_err(),
            "no second copy"
        );
        assert!(r.accept(&chunk("../evil", 0, b"x", true)).is_err());
        assert!(r.accept(&chunk("/etc/passwd", 0, b"x", true)).is_err());
        assert!(r.accept(&chunk("gap.img", 5, b"x", true)).is_err());
    }

    #[test]
    fn refuses_symlinks_and_budget_overruns() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("target"), d.path().join("link.img"))
            .unwrap();
        let mut r = ImageReceiver::new(d.path(), 4);
        assert!(r.accept(&chunk("link.img", 0, b"x", true)).is_err());
        assert!(!outside.path().join("target").exists());
        assert!(matches!(
            r.accept(&chunk("big.img", 0, b"12345", true)),
            Err(ChunkError::Budget { .. })
        ));
    }

    #[tokio::test]
    async fn send_and_receive_a_directory() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.path().join("pages-1.img"), &big).unwrap();
        std::fs::write(src.path().join("empty.img"), b"").unwrap();
        std::fs::write(src.path().join("dump.log"), b"not sent").unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut tx, mut rx) = (Control::new(Conn::new(a), "test"), Conn::new(b));
        let send = send_images(&mut tx, src.path(), 0);
        let recv = async {
            let mut r = ImageReceiver::new(dst.path(), u64::MAX);
            let mut files = 0;
            while files < 2 {
                let m = rx.recv().await.unwrap();
                let Some(Body::ImageChunk(c)) = m.body else {
                    panic!("not a chunk")
                };
                r.accept(&c).unwrap();
                if c.last {
                    files += 1;
                }
            }
            r.total()
        };
        let (sent, got) = tokio::join!(send, recv);
        assert_eq!(sent.unwrap(), big.len() as u64);
        assert_eq!(got, big.len() as u64);
        assert_eq!(std::fs::read(dst.path().join("pages-1.img")).unwrap(), big);
        assert!(dst.path().join("empty.img").exists());
        assert!(!dst.path().join("dump.log").exists());
    }
}
