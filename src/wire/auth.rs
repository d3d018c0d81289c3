//! The shared key and the challenge-response handshake every connection starts with.
//!
//! Both sides hold the same 32-byte key (`haul keygen FILE`). The client sends `Hello` (its
//! nonce and the connection's purpose), the server answers `Challenge` (its own fresh nonce),
//! the client proves it holds the key with `Proof = HMAC(key, "haul client proof" | Hello |
//! Challenge)`, and the server proves it too with `Welcome`. A replayed `Proof` fails, because
//! the server's nonce is new on every connection. Both sides then derive one session key per
//! direction from the same transcript and tag every further frame.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{Conn, FrameError};
use super::pb::{self, message::Body};
use super::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

const KEY_PREFIX: &str = "haul-key-v1 ";
const NONCE_LEN: usize = 32;

/// A shared secret.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key file could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("key file {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a haul key file.
    #[error("{path} is not a haul key file (expected one line `haul-key-v1 <64 hex digits>`; make one with `haul keygen FILE`)")]
    Format {
        /// The key file.
        path: PathBuf,
    },
    /// Readable by others.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

impl Key {
    /// A new random key.
    pub fn generate() -> Key {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Key(k)
    }

    /// A key from raw bytes (tests, benches).
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// Writes a new key file with mode 0600; refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(f, "{KEY_PREFIX}{}", hex::encode(self.0)).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Reads a key file; refuses one that group or others can read.
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let format = || KeyError::Format {
            path: path.to_path_buf(),
        };
        let hexpart = text.trim().strip_prefix(KEY_PREFIX).ok_or_else(format)?;
        let bytes = hex::decode(hexpart).map_err(|_| format())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| format())?;
        Ok(Key(arr))
    }

    fn mac(&self, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("any key length");
        m.update(label);
        for p in parts {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        m
    }

    fn derive(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        self.mac(label, parts).finalize().into_bytes().into()
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer does not hold the key.
    #[error("the peer's proof is wrong: it does not hold this key (check that both sides use the same --key file)")]
    WrongKey,
    /// The peer speaks no common protocol version.
    #[error("protocol version mismatch: peer speaks {peer}, this build {min}..={ours}; upgrade the older side")]
    Version {
        /// The peer's version.
        peer: u32,
        /// Our lowest.
        min: u32,
        /// Our highest.
        ours: u32,
    },
    /// The peer sent something else than the handshake expects.
    #[error("handshake: expected {expected}, got {got}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The peer refused us with an error message.
    #[error("the peer refused the handshake: {0}")]
    Refused(String),
    /// The frames themselves failed.
    #[error("handshake")]
    Frame(#[from] FrameError),
}

/// What an authenticated client asked the connection to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// The control channel of a migration.
    Control,
    /// A memory channel of a migration.
    Memory(pb::MemoryPurpose),
}

fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut n);
    n
}

fn session_keys(key: &Key, hello: &[u8], challenge: &[u8]) -> ([u8; 32], [u8; 32]) {
    (
        key.derive(b"haul session client->server", &[hello, challenge]),
        key.derive(b"haul session server->client", &[hello, challenge]),
    )
}

/// Client side: authenticates `conn` for `purpose` and turns on frame tags.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    key: &Key,
    purpose: Purpose,
) -> Result<(), AuthError> {
    let purpose = match purpose {
        Purpose::Control => pb::hello::Purpose::Control(pb::ControlPurpose {}),
        Purpose::Memory(m) => pb::hello::Purpose::Memory(m),
    };
    let hello = pb::Message::of(Body::Hello(pb::Hello {
        version: PROTOCOL_VERSION,
        client_nonce: nonce(),
        purpose: Some(purpose),
    }));
    let hello_bytes = conn.send(&hello).await?;
    let (msg, challenge_bytes) = conn.recv_with_bytes().await?;
    let challenge = match msg.body {
        Some(Body::Challenge(c)) => c,
        Some(Body::Error(e)) => return Err(AuthError::Refused(e.message)),
        _ => {
            return Err(AuthError::Unexpected {
                expected: "Challenge",
                got: msg.kind_name().into(),
            })
        }
    };
    if challenge.version < MIN_PROTOCOL_VERSION || challenge.version > PROTOCOL_VERSION {
        return Err(AuthError::Version {
            peer: challenge.version,
            min: MIN_PROTOCOL_VERSION,
            ours: PROTOCOL_VERSION,
        });
    }
    let proof = key.derive(b"haul client proof", &[&hello_bytes, &challenge_bytes]);
    conn.send(&pb::Message::of(Body::Proof(pb::Proof {
        mac: proof.to_vec(),
    })))
    .await?;
    let msg = conn.recv().await?;
    match msg.body {
        Some(Body::Welcome(w)) => {
            key.mac(b"haul server proof", &[&hello_bytes, &challenge_bytes])
                .verify_slice(&w.mac)
                .map_err(|_| AuthError::WrongKey)?;
        }
        Some(Body::Error(e)) => return Err(AuthError::Refused(e.message)),
        _ => {
            return Err(AuthError::Unexpected {
                expected: "Welcome",
                got: msg.kind_name().into(),
            })
        }
    }
    let (c2s, s2c) = session_keys(key, &hello_bytes, &challenge_bytes);
    conn.enable_tags(c2s, s2c);
    Ok(())
}

/// Server side: checks the client's proof, proves the key in turn, turns on frame tags, and
/// returns the purpose the client asked for. On a wrong proof it tells the client and fails.
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    key: &Key,
) -> Result<Purpose, AuthError> {
    let (msg, hello_bytes) = conn.recv_with_bytes().await?;
    let hello = match msg.body {
        Some(Body::Hello(h)) => h,
        _ => {
            let got = msg.kind_name();
            let _ = conn
                .send(&pb::Message::error(
                    pb::ErrorKind::Protocol,
                    format!("expected Hello, got {got}"),
                ))
                .await;
            return Err(AuthError::Unexpected {
                expected: "Hello",
                got: got.into(),
            });
        }
    };
    if hello.version < MIN_PROTOCOL_VERSION {
        let _ = conn
            .send(&pb::Message::error(
                pb::ErrorKind::Version,
                format!(
                    "protocol version {} is too old (need >= {MIN_PROTOCOL_VERSION})",
                    hello.version
                ),
            ))
            .await;
        return Err(AuthError::Version {
            peer: hello.version,
            min: MIN_PROTOCOL_VERSION,
            ours: PROTOCOL_VERSION,
        });
    }
    let purpose = match hello.purpose.clone() {
        Some(pb::hello::Purpose::Control(_)) => Purpose::Control,
        Some(pb::hello::Purpose::Memory(m)) => Purpose::Memory(m),
        None => {
            return Err(AuthError::Unexpected {
                expected: "Hello with a purpose",
                got: "Hello without one".into(),
            })
        }
    };
    let challenge = pb::Message::of(Body::Challenge(pb::Challenge {
        version: hello.version.min(PROTOCOL_VERSION),
        server_nonce: nonce(),
    }));
    let challenge_bytes = conn.send(&challenge).await?;
    let msg = conn.recv().await?;
    let proof = match msg.body {
        Some(Body::Proof(p)) => p,
        _ => {
            return Err(AuthError::Unexpected {
                expected: "Proof",
                got: msg.kind_name().into(),
            })
        }
    };
    if key
        .mac(b"haul client proof", &[&hello_bytes, &challenge_bytes])
        .verify_slice(&proof.mac)
        .is_err()
    {
        let _ = conn
            .send(&pb::Message::error(
                pb::ErrorKind::Auth,
                "authentication failed: the client does not hold this server's key",
            ))
            .await;
        return Err(AuthError::WrongKey);
    }
    let welcome = key.derive(b"haul server proof", &[&hello_bytes, &challenge_bytes]);
    conn.send(&pb::Message::of(Body::Welcome(pb::Welcome {
        mac: welcome.to_vec(),
    })))
    .await?;
    let (c2s, s2c) = session_keys(key, &hello_bytes, &challenge_bytes);
    conn.enable_tags(s2c, c2s);
    Ok(purpose)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(ck: Key, sk: Key) -> (Result<(), AuthError>, Result<Purpose, AuthError>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut c, mut s) = (Conn::new(a), Conn::new(b));
        tokio::join!(client(&mut c, &ck, Purpose::Control), server(&mut s, &sk))
    }

    #[tokio::test]
    async fn same_key_authenticates_and_tags_work() {
        let k = Key::generate();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut c, mut s) = (Conn::new(a), Conn::new(b));
        let (rc, rs) = tokio::join!(client(&mut c, &k, Purpose::Control), server(&mut s, &k));
        rc.unwrap();
        assert_eq!(rs.unwrap(), Purpose::Control);
        let m = pb::Message::of(Body::Resume(pb::Resume {}));
        c.send(&m).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), m);
        s.send(&m).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), m);
    }

    #[tokio::test]
    async fn wrong_key_is_refused_on_both_sides() {
        let (rc, rs) = pair(Key::generate(), Key::generate()).await;
        assert!(matches!(rs, Err(AuthError::WrongKey)));
        assert!(matches!(rc, Err(AuthError::Refused(_))), "{rc:?}");
    }

    #[tokio::test]
    async fn a_replayed_proof_fails() {
        // Record a genuine client's Hello and Proof, then replay them to a new server session.
        let k = Key::generate();
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut c, mut s) = (Conn::new(a), Conn::new(b));
        let (rc, rs) = tokio::join!(client(&mut c, &k, Purpose::Control), server(&mut s, &k));
        rc.unwrap();
        rs.unwrap();
        // A replay carries the old Proof, which was computed over the old server nonce.
        let (a2, b2) = tokio::io::duplex(1 << 16);
        let (mut attacker, mut s2) = (Conn::new(a2), Conn::new(b2));
        let attack = async {
            attacker
                .send(&pb::Message::of(Body::Hello(pb::Hello {
                    version: PROTOCOL_VERSION,
                    client_nonce: vec![0; 32],
                    purpose: Some(pb::hello::Purpose::Control(pb::ControlPurpose {})),
                })))
                .await
                .unwrap();
            let _challenge = attacker.recv().await.unwrap();
            let stale = k.derive(b"haul client proof", &[b"old hello", b"old challenge"]);
            attacker
                .send(&pb::Message::of(Body::Proof(pb::Proof {
                    mac: stale.to_vec(),
                })))
                .await
                .unwrap();
        };
        let (_, rs2) = tokio::join!(attack, server(&mut s2, &k));
        assert!(matches!(rs2, Err(AuthError::WrongKey)));
    }

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = Key::generate();
        k.write_new(&p).unwrap();
        assert_eq!(Key::load(&p).unwrap().0, k.0);
        assert!(k.write_new(&p).is_err(), "must not overwrite");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Key::load(&p), Err(KeyError::Permissions { .. })));
        let q = dir.path().join("bad");
        std::fs::write(&q, "nonsense").unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Key::load(&q), Err(KeyError::Format { .. })));
    }
}
