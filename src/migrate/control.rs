//! The control channel as both sides use it: typed sends, and receives bounded by a named
//! [`Wait`] that expect one message type.
//!
//! An `Error` message from the peer ends the wait as [`ChannelError::PeerFailed`], carrying
//! the peer's error kind and message as they were sent: neither side wraps the other's words.

use tokio::net::TcpStream;

use crate::criu::diagnosis::Diagnosis;
use crate::preflight::{Finding, Severity};
use crate::wire::auth::{self, AuthError, Purpose};
use crate::wire::frame::{Conn, FrameError};
use crate::wire::pb::{self, message::Body};
use crate::wire::{Key, Variant};

use super::limits::{self, Wait};

/// A control connection's byte stream (TCP, or an in-memory pipe in tests).
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What failed on a control or memory connection.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ChannelError {
    /// cannot connect to {peer} (is `haul serve` running there, and is the address reachable from this node?)
    Connect {
        /// The address.
        peer: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// authentication with {peer} failed
    Auth {
        /// The peer.
        peer: String,
        /// What failed.
        #[source]
        source: AuthError,
    },
    /// the control channel with {peer} failed
    Frame {
        /// The peer.
        peer: String,
        /// What failed.
        #[source]
        source: FrameError,
    },
    /// {peer} did not answer within {secs} s while haul waited for {what}
    Timeout {
        /// The peer.
        peer: String,
        /// What haul waited for.
        what: &'static str,
        /// The bound (s).
        secs: u64,
    },
    /// {peer} sent {got} while haul waited for {what} ({want} expected): a peer of another haul version, or a bug
    Unexpected {
        /// The peer.
        peer: String,
        /// What haul waited for.
        what: &'static str,
        /// The message type expected.
        want: &'static str,
        /// The message type received.
        got: &'static str,
    },
    /// {peer} failed the migration ({kind}): {message}
    PeerFailed {
        /// The peer.
        peer: String,
        /// The error kind it sent, by name.
        kind: &'static str,
        /// What it said: its diagnosis of a failed CRIU run, or its pre-flight refusals, or
        /// its message as sent.
        message: String,
        /// Its pre-flight findings, when it refused.
        findings: Vec<Finding>,
        /// Its diagnosis of a failed CRIU run, when it had one.
        diagnosis: Option<Box<Diagnosis>>,
    },
}

impl ChannelError {
    /// The error kind a peer sent, when the peer failed the migration.
    pub fn peer_kind(&self) -> Option<&'static str> {
        match self {
            ChannelError::PeerFailed { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// The peer's failure as it sent it: its findings and diagnosis decoded (malformed JSON
    /// is dropped: the message still says what happened).
    fn peer_failed(peer: &str, e: pb::Error) -> ChannelError {
        let findings: Vec<Finding> = serde_json::from_str(&e.findings_json).unwrap_or_default();
        let diagnosis: Option<Box<Diagnosis>> = serde_json::from_str(&e.diagnosis_json).ok();
        let refusals: Vec<String> = findings
            .iter()
            .filter(|f| f.severity == Severity::Refuse)
            .map(|f| f.to_string())
            .collect();
        let message = match (&diagnosis, refusals.is_empty()) {
            (Some(d), _) => d.to_string(),
            (None, false) => refusals.join("; "),
            (None, true) => e.message,
        };
        ChannelError::PeerFailed {
            peer: peer.to_string(),
            kind: kind_name(e.kind),
            message,
            findings,
            diagnosis,
        }
    }
}

/// A human name of a wire error kind.
pub fn kind_name(kind: i32) -> &'static str {
    match pb::ErrorKind::try_from(kind) {
        Ok(pb::ErrorKind::Auth) => "authentication",
        Ok(pb::ErrorKind::Protocol) => "protocol",
        Ok(pb::ErrorKind::Version) => "CRIU version",
        Ok(pb::ErrorKind::Cpu) => "CPU",
        Ok(pb::ErrorKind::Space) => "disk space",
        Ok(pb::ErrorKind::Criu) => "CRIU",
        Ok(pb::ErrorKind::Io) => "I/O",
        Ok(pb::ErrorKind::Busy) => "busy",
        Ok(pb::ErrorKind::Refused) => "pre-flight",
        Ok(pb::ErrorKind::Unspecified) | Err(_) => "unspecified",
    }
}

/// One side's end of an authenticated control connection.
pub struct Control<S> {
    conn: Conn<S>,
    peer: String,
}

impl<S: Stream> Control<S> {
    /// Wraps an authenticated connection to `peer` (named in errors).
    pub fn new(conn: Conn<S>, peer: impl Into<String>) -> Control<S> {
        Control {
            conn,
            peer: peer.into(),
        }
    }

    /// The peer's name (its address).
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The connection, to hand over (a memory channel becomes CRIU's socket).
    pub fn into_conn(self) -> Conn<S> {
        self.conn
    }

    /// Sends one message. When the send fails, the peer may have failed first and said why
    /// before it closed (an `Error` while this side was still streaming images): that
    /// answer, read within [`limits::PEER_LAST_WORD`], is the error, not the broken pipe.
    pub async fn send(&mut self, body: impl Into<Body>) -> Result<(), ChannelError> {
        let Err(source) = self.conn.send(&pb::Message::of(body.into())).await else {
            return Ok(());
        };
        if let Ok(Ok(msg)) =
            tokio::time::timeout(limits::PEER_LAST_WORD.limit, self.conn.recv()).await
        {
            if let Some(Body::Error(e)) = msg.body {
                return Err(ChannelError::peer_failed(&self.peer, e));
            }
        }
        Err(ChannelError::Frame {
            peer: self.peer.clone(),
            source,
        })
    }

    /// Sends an `Error` message (best effort: the connection may already be gone).
    pub async fn send_error(&mut self, error: pb::Error) {
        let _ = self.conn.send(&pb::Message::of(Body::Error(error))).await;
    }

    /// Receives the next message within `wait`; the peer's `Error` becomes
    /// [`ChannelError::PeerFailed`].
    pub async fn recv(&mut self, wait: Wait) -> Result<Body, ChannelError> {
        let msg = match tokio::time::timeout(wait.limit, self.conn.recv()).await {
            Err(_) => {
                return Err(ChannelError::Timeout {
                    peer: self.peer.clone(),
                    what: wait.what,
                    secs: wait.limit.as_secs(),
                })
            }
            Ok(r) => r.map_err(|source| ChannelError::Frame {
                peer: self.peer.clone(),
                source,
            })?,
        };
        match msg.body {
            Some(Body::Error(e)) => Err(ChannelError::peer_failed(&self.peer, e)),
            Some(b) => Ok(b),
            None => Err(ChannelError::Unexpected {
                peer: self.peer.clone(),
                what: wait.what,
                want: "a message",
                got: "an empty message",
            }),
        }
    }

    /// Receives a message of type `M` within `wait`; any other type is
    /// [`ChannelError::Unexpected`].
    pub async fn expect<M: Variant>(&mut self, wait: Wait) -> Result<M, ChannelError> {
        let body = self.recv(wait).await?;
        M::from_body(body).map_err(|other| self.unexpected(wait, M::NAME, &other))
    }

    /// Sends `body` and expects an `M` in answer within `wait`.
    pub async fn request<M: Variant>(
        &mut self,
        body: impl Into<Body>,
        wait: Wait,
    ) -> Result<M, ChannelError> {
        self.send(body).await?;
        self.expect(wait).await
    }

    /// The error for `got` arriving while `wait` expected `want`.
    pub fn unexpected(&self, wait: Wait, want: &'static str, got: &Body) -> ChannelError {
        ChannelError::Unexpected {
            peer: self.peer.clone(),
            what: wait.what,
            want,
            got: pb::Message::of(got.clone()).kind_name(),
        }
    }
}

/// Connects to `peer` and authenticates for `purpose`, within [`limits::CONNECT`].
pub async fn connect(
    peer: &str,
    key: &Key,
    purpose: Purpose,
) -> Result<Conn<TcpStream>, ChannelError> {
    let dial = async {
        let s = TcpStream::connect(peer)
            .await
            .map_err(|source| ChannelError::Connect {
                peer: peer.to_string(),
                source,
            })?;
        super::sockopt::harden(&s);
        let mut c = Conn::new(s);
        auth::client(&mut c, key, purpose)
            .await
            .map_err(|source| ChannelError::Auth {
                peer: peer.to_string(),
                source,
            })?;
        Ok(c)
    };
    tokio::time::timeout(limits::CONNECT, dial)
        .await
        .map_err(|_| ChannelError::Timeout {
            peer: peer.to_string(),
            what: "connecting and authenticating",
            secs: limits::CONNECT.as_secs(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair() -> (
        Control<tokio::io::DuplexStream>,
        Control<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        // each end is named by its peer
        (
            Control::new(Conn::new(a), "b"),
            Control::new(Conn::new(b), "a"),
        )
    }

    const W: Wait = Wait {
        what: "a test message",
        limit: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn typed_request_and_reply() {
        let (mut a, mut b) = pair();
        let server = tokio::spawn(async move {
            let s: pb::StartPageServer = b.expect(W).await.unwrap();
            b.send(pb::PageServerStarted { round: s.round })
                .await
                .unwrap();
        });
        let r: pb::PageServerStarted = a
            .request(pb::StartPageServer { round: 3 }, W)
            .await
            .unwrap();
        assert_eq!(r.round, 3);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn another_type_is_unexpected_and_an_error_is_the_peers() {
        let (mut a, mut b) = pair();
        b.send(pb::Finished {}).await.unwrap();
        let e = a.expect::<pb::Ready>(W).await.unwrap_err();
        assert!(
            matches!(
                e,
                ChannelError::Unexpected {
                    want: "Ready",
                    got: "Finished",
                    ..
                }
            ),
            "{e}"
        );
        b.send_error(pb::Error {
            kind: pb::ErrorKind::Space as i32,
            message: "no room".into(),
            ..Default::default()
        })
        .await;
        let e = a.expect::<pb::Ready>(W).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "b failed the migration (disk space): no room"
        );
        assert_eq!(e.peer_kind(), Some("disk space"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_with_the_wait_named() {
        let (mut a, _b) = pair();
        let e = a.recv(W).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "b did not answer within 5 s while haul waited for a test message"
        );
    }
}
