//! Frames: how one protobuf message travels over a byte stream.
//!
//! ```text
//! 0      2         3       4                8                 8+len          8+len+32
//! +------+---------+-------+----------------+-----------------+---------------+
//! | "HL" | version | flags | len: u32 (BE)  | payload (prost) | tag (if flag) |
//! +------+---------+-------+----------------+-----------------+---------------+
//! ```
//! - `len` is at most [`MAX_PAYLOAD`]; a larger claim is refused before anything is allocated;
//! - flag bit 0 (`TAGGED`): a 32-byte HMAC-SHA256 tag follows, over the sequence number, the
//!   header and the payload, with the direction's session key (set after the handshake). Once
//!   tags are on, an untagged frame is refused, and so is a tagged one before;
//! - an all-zero header is never valid (the magic).

use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pb;

/// Frame magic.
pub const MAGIC: [u8; 2] = *b"HL";
/// Frame layout version.
pub const FRAME_VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted: image chunks are at most 1 MiB of data plus a few bytes.
pub const MAX_PAYLOAD: u32 = (1 << 20) + 4096;
/// Tag length (HMAC-SHA256).
pub const TAG_LEN: usize = 32;
/// The flag saying a tag follows the payload.
pub const FLAG_TAGGED: u8 = 1;

type HmacSha256 = Hmac<Sha256>;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flags (bit 0: tagged).
    pub flags: u8,
    /// Payload length.
    pub len: u32,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// A read or write failed.
    #[error("reading or writing the connection failed")]
    Io(#[from] std::io::Error),
    /// Not a haul frame.
    #[error("not a haul frame (magic {0:02x?}): is the peer a haul?")]
    BadMagic([u8; 2]),
    /// Unknown frame layout version.
    #[error("frame layout version {0} is not supported (this build: {FRAME_VERSION})")]
    BadVersion(u8),
    /// Unknown flags.
    #[error("unknown frame flags {0:#04x}")]
    BadFlags(u8),
    /// Length above the limit.
    #[error("frame of {0} bytes is larger than the limit of {MAX_PAYLOAD}")]
    TooLarge(u32),
    /// A tag was missing, unexpected, or wrong.
    #[error("frame authentication failed: {0}")]
    BadTag(&'static str),
    /// The payload does not decode.
    #[error("undecodable message")]
    Decode(#[from] prost::DecodeError),
    /// A message with no body.
    #[error("empty message")]
    Empty,
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..2].copy_from_slice(&MAGIC);
        h[2] = FRAME_VERSION;
        h[3] = self.flags;
        h[4..].copy_from_slice(&self.len.to_be_bytes());
        h
    }

    /// Decodes and checks a header (magic, version, flags, length limit).
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if h[..2] != MAGIC {
            return Err(FrameError::BadMagic([h[0], h[1]]));
        }
        if h[2] != FRAME_VERSION {
            return Err(FrameError::BadVersion(h[2]));
        }
        if h[3] & !FLAG_TAGGED != 0 {
            return Err(FrameError::BadFlags(h[3]));
        }
        let len = u32::from_be_bytes(h[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        Ok(Header { flags: h[3], len })
    }
}

/// Per-direction tag state: the session key and the next sequence number.
#[derive(Clone)]
struct TagState {
    key: [u8; 32],
    seq: u64,
}

impl TagState {
    fn tag(&self, header: &[u8; HEADER_LEN], payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(&self.seq.to_be_bytes());
        mac.update(header);
        mac.update(payload);
        mac
    }
}

/// A framed connection; `S` is a TCP stream in haul, any byte stream in tests.
pub struct Conn<S> {
    io: S,
    send_tags: Option<TagState>,
    recv_tags: Option<TagState>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Wraps a stream (tags off until [`Conn::enable_tags`]).
    pub fn new(io: S) -> Conn<S> {
        Conn {
            io,
            send_tags: None,
            recv_tags: None,
        }
    }

    /// Turns on per-frame tags with one session key per direction.
    pub fn enable_tags(&mut self, send_key: [u8; 32], recv_key: [u8; 32]) {
        self.send_tags = Some(TagState {
            key: send_key,
            seq: 0,
        });
        self.recv_tags = Some(TagState {
            key: recv_key,
            seq: 0,
        });
    }

    /// Sends one message; returns its encoded payload (the handshake hashes it).
    pub async fn send(&mut self, msg: &pb::Message) -> Result<Vec<u8>, FrameError> {
        let payload = msg.encode_to_vec();
        let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let flags = if self.send_tags.is_some() {
            FLAG_TAGGED
        } else {
            0
        };
        let header = Header { flags, len }.encode();
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        if let Some(t) = &mut self.send_tags {
            out.extend_from_slice(&t.tag(&header, &payload).finalize().into_bytes());
            t.seq += 1;
        }
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(payload)
    }

    /// Receives one message and its payload bytes.
    pub async fn recv_with_bytes(&mut self) -> Result<(pb::Message, Vec<u8>), FrameError> {
        let mut header = [0u8; HEADER_LEN];
        match self.io.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(FrameError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        let h = Header::decode(&header)?;
        let tagged = h.flags & FLAG_TAGGED != 0;
        match (&self.recv_tags, tagged) {
            (Some(_), false) => {
                return Err(FrameError::BadTag("untagged frame after the handshake"))
            }
            (None, true) => return Err(FrameError::BadTag("tagged frame before the handshake")),
            _ => {}
        }
        let mut payload = vec![0u8; h.len as usize];
        self.io
            .read_exact(&mut payload)
            .await
            .map_err(eof_is_closed)?;
        if let Some(t) = &mut self.recv_tags {
            let mut tag = [0u8; TAG_LEN];
            self.io.read_exact(&mut tag).await.map_err(eof_is_closed)?;
            t.tag(&header, &payload).verify_slice(&tag).map_err(|_| {
                FrameError::BadTag("tag mismatch (tampered, replayed or reordered frame)")
            })?;
            t.seq += 1;
        }
        let msg = pb::Message::decode(payload.as_slice())?;
        if msg.body.is_none() {
            return Err(FrameError::Empty);
        }
        Ok((msg, payload))
    }

    /// Receives one message.
    pub async fn recv(&mut self) -> Result<pb::Message, FrameError> {
        Ok(self.recv_with_bytes().await?.0)
    }

    /// The underlying stream (e.g. to hand a memory channel's socket to CRIU).
    pub fn into_inner(self) -> S {
        self.io
    }

    /// The underlying stream, borrowed.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

fn eof_is_closed(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(data: Vec<u8>, name: String) -> pb::Message {
        pb::Message::of(pb::message::Body::ImageChunk(pb::ImageChunk {
            round: 3,
            name,
            offset: 7,
            data,
            last: true,
        }))
    }

    #[test]
    fn zero_header_is_invalid() {
        assert!(matches!(
            Header::decode(&[0; 8]),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let h = Header {
            flags: 0,
            len: u32::MAX,
        }
        .encode();
        assert!(matches!(
            Header::decode(&h),
            Err(FrameError::TooLarge(u32::MAX))
        ));
    }

    #[tokio::test]
    async fn tampered_frame_is_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut tx = Conn::new(a);
        tx.enable_tags([1; 32], [2; 32]);
        tx.send(&chunk(vec![9; 10], "x".into())).await.unwrap();
        let mut raw = b;
        let mut buf = vec![0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
            .await
            .unwrap();
        buf.truncate(n);
        buf[HEADER_LEN + 2] ^= 1; // flip a payload bit
        let (c, mut d) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut d, &buf)
            .await
            .unwrap();
        let mut rx = Conn::new(c);
        rx.enable_tags([2; 32], [1; 32]);
        assert!(matches!(rx.recv().await, Err(FrameError::BadTag(_))));
    }

    #[tokio::test]
    async fn replayed_frame_is_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut tx = Conn::new(a);
        tx.enable_tags([1; 32], [2; 32]);
        let msg = chunk(vec![1, 2, 3], "pages-1.img".into());
        tx.send(&msg).await.unwrap();
        let mut raw = b;
        let mut buf = vec![0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut raw, &mut buf)
            .await
            .unwrap();
        buf.truncate(n);
        let mut twice = buf.clone();
        twice.extend_from_slice(&buf);
        let (c, mut d) = tokio::io::duplex(1 << 16);
        tokio::io::AsyncWriteExt::write_all(&mut d, &twice)
            .await
            .unwrap();
        let mut rx = Conn::new(c);
        rx.enable_tags([2; 32], [1; 32]);
        assert_eq!(rx.recv().await.unwrap(), msg);
        assert!(matches!(rx.recv().await, Err(FrameError::BadTag(_))));
    }

    proptest! {
        #[test]
        fn header_round_trips(flags in 0u8..2, len in 0u32..=MAX_PAYLOAD) {
            let h = Header { flags, len };
            prop_assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::array::uniform8(any::<u8>())) {
            let _ = Header::decode(&bytes);
        }

        #[test]
        fn messages_round_trip_tagged_or_not(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            name in "[a-z0-9.-]{1,40}",
            tagged in any::<bool>(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (a, b) = tokio::io::duplex(1 << 20);
                let (mut tx, mut rx) = (Conn::new(a), Conn::new(b));
                if tagged {
                    tx.enable_tags([7; 32], [8; 32]);
                    rx.enable_tags([8; 32], [7; 32]);
                }
                let msg = chunk(data, name);
                for _ in 0..3 {
                    tx.send(&msg).await.unwrap();
                    assert_eq!(rx.recv().await.unwrap(), msg.clone());
                }
            });
        }
    }
}
