//! haul's own source <-> destination protocol.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source (haul pid)
//!     participant D as destination (haul serve)
//!     S->>D: Hello{version, nonce, purpose=control}
//!     D->>S: Challenge{version, nonce}
//!     S->>D: Proof{HMAC(key, client | hello | challenge)}
//!     D->>S: Welcome{HMAC(key, server | hello | challenge)}
//!     Note over S,D: from here every frame carries an HMAC tag (session key, sequence)
//!     S->>D: Begin{id, CRIU version, strategy, cpuinfo}
//!     D->>S: Ready{CRIU version, features, free space}
//!     S->>D: StartPageServer{round}
//!     D->>S: PageServerStarted
//!     S-->>D: memory channel: Hello{purpose=memory{id, round}} ... then raw CRIU pages
//!     S->>D: ImageChunk* (the other images)
//!     S->>D: Restore
//!     D->>S: Restored{pid, stats}
//!     S->>D: Finish{ok}
//! ```
//!
//! - [`frame`]: the frame layout, bounded lengths, per-frame tags;
//! - [`auth`]: the shared key and the challenge-response handshake;
//! - [`names`]: validation of image file names a peer sends;
//! - [`convert`]: CRIU figures to and from their wire forms.
//!
//! Every message type converts into a [`pb::message::Body`] (`Body::from(pb::Ready { .. })`),
//! and [`Variant::from_body`] takes one back out, so that a side sends and expects messages by
//! type.

pub mod auth;
pub mod convert;
pub mod frame;
pub mod names;

/// The prost types generated from `proto/haul/wire.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/haul.wire.rs"));
}

pub use auth::{Key, KeyError};
pub use frame::{Conn, FrameError, Header};

/// The memory channel "round" of a bandwidth probe (`Probe`): no page server round uses it.
pub const PROBE_ROUND: u32 = u32::MAX;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest protocol version this build accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// A message type that is one variant of [`pb::message::Body`].
pub trait Variant: Sized {
    /// The variant's name, as [`pb::Message::kind_name`] gives it.
    const NAME: &'static str;
    /// The message, when `body` is this variant; `body` back otherwise.
    // The body comes back whole by design (the caller names it in its error); it is moved,
    // not copied, so its size costs nothing.
    #[allow(clippy::result_large_err)]
    fn from_body(body: pb::message::Body) -> Result<Self, pb::message::Body>;
}

macro_rules! variants {
    ($($ty:ident),* $(,)?) => {$(
        variants!(@one pb::$ty => $ty);
    )*};
    (@one $path:ty => $ty:ident) => {
        impl From<$path> for pb::message::Body {
            fn from(m: $path) -> Self {
                pb::message::Body::$ty(m)
            }
        }
        impl Variant for $path {
            const NAME: &'static str = stringify!($ty);
            fn from_body(body: pb::message::Body) -> Result<Self, pb::message::Body> {
                match body {
                    pb::message::Body::$ty(m) => Ok(m),
                    other => Err(other),
                }
            }
        }
    };
}

variants!(
    Begin,
    Ready,
    StartPageServer,
    PageServerStarted,
    EndPageServer,
    PageServerEnded,
    ImageChunk,
    Restore,
    RestoreHeld,
    Resume,
    Restored,
    LazyDone,
    LazyFinished,
    Finish,
    Finished,
    Probe,
    ProbeDone,
    ImagesDone,
    Error,
);

// File sync (issue #18): the messages of `proto/haul/sync.proto`, carried as Message 40-45.
variants!(@one crate::sync::pb::SyncOpen => SyncOpen);
variants!(@one crate::sync::pb::SyncOpened => SyncOpened);
variants!(@one crate::sync::pb::CheckFiles => CheckFiles);
variants!(@one crate::sync::pb::FilesChecked => FilesChecked);
variants!(@one Box<crate::sync::pb::SyncMessage> => SyncMessage);

impl From<crate::sync::pb::SyncMessage> for pb::message::Body {
    fn from(m: crate::sync::pb::SyncMessage) -> Self {
        pb::message::Body::SyncMessage(Box::new(m))
    }
}
variants!(@one crate::sync::pb::RoundApplied => RoundApplied);

impl pb::Message {
    /// Wraps a body into a message.
    pub fn of(body: pb::message::Body) -> pb::Message {
        pb::Message { body: Some(body) }
    }

    /// An error message.
    pub fn error(kind: pb::ErrorKind, message: impl Into<String>) -> pb::Message {
        pb::Message::of(pb::message::Body::Error(pb::Error {
            kind: kind as i32,
            message: message.into(),
            ..Default::default()
        }))
    }

    /// The name of the body's variant, for logs and protocol errors.
    pub fn kind_name(&self) -> &'static str {
        use pb::message::Body::*;
        match &self.body {
            None => "empty",
            Some(Hello(_)) => "Hello",
            Some(Challenge(_)) => "Challenge",
            Some(Proof(_)) => "Proof",
            Some(Welcome(_)) => "Welcome",
            Some(Begin(_)) => "Begin",
            Some(Ready(_)) => "Ready",
            Some(StartPageServer(_)) => "StartPageServer",
            Some(PageServerStarted(_)) => "PageServerStarted",
            Some(EndPageServer(_)) => "EndPageServer",
            Some(PageServerEnded(_)) => "PageServerEnded",
            Some(ImageChunk(_)) => "ImageChunk",
            Some(Restore(_)) => "Restore",
            Some(RestoreHeld(_)) => "RestoreHeld",
            Some(Resume(_)) => "Resume",
            Some(Restored(_)) => "Restored",
            Some(LazyDone(_)) => "LazyDone",
            Some(LazyFinished(_)) => "LazyFinished",
            Some(Finish(_)) => "Finish",
            Some(Finished(_)) => "Finished",
            Some(Probe(_)) => "Probe",
            Some(ProbeDone(_)) => "ProbeDone",
            Some(ImagesDone(_)) => "ImagesDone",
            Some(Error(_)) => "Error",
            Some(SyncOpen(_)) => "SyncOpen",
            Some(SyncOpened(_)) => "SyncOpened",
            Some(CheckFiles(_)) => "CheckFiles",
            Some(FilesChecked(_)) => "FilesChecked",
            Some(SyncMessage(_)) => "SyncMessage",
            Some(RoundApplied(_)) => "RoundApplied",
        }
    }
}
