//! The errors of a connection: handshake, framing, transport.
//!
//! One enum, [`WireError`], for everything a [`Connection`](crate::Connection) or its halves can
//! report, because the daemon handles them the same way (drop the connection, abort what ran on
//! it). [`WireError::is_closed`] tells an orderly end of the stream from a failure. Errors of the
//! secret file are [`SecretError`](crate::SecretError); the listener wraps handshake errors with
//! the peer's address in [`AcceptError`](crate::AcceptError).

use std::io;
use std::time::Duration;

use crate::frame::FrameKind;

/// Everything that can go wrong on a ferry connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// The TCP connection was not made within the timeout.
    #[error("cannot connect to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },

    /// A handshake read (or write) did not complete within the handshake timeout.
    #[error("handshake timed out after {timeout:?} ({stage})")]
    HandshakeTimeout {
        stage: &'static str,
        timeout: Duration,
    },

    /// The peer closed (or reset) the connection before the handshake completed.
    #[error(
        "peer closed the connection during the handshake ({stage}): it does not accept us \
         (different cluster secret, refused, or not a ferry daemon)"
    )]
    HandshakeClosed { stage: &'static str },

    /// The first bytes were not a ferry preamble.
    #[error("peer is not a ferry daemon: it sent {got:02x?} instead of the ferry preamble")]
    BadPreamble { got: [u8; 8] },

    /// The peer speaks another version of this protocol.
    #[error("peer speaks ferry wire protocol version {theirs}, this node speaks version {ours}")]
    VersionMismatch { ours: u8, theirs: u8 },

    /// A handshake message failed its authentication: the peer does not hold the cluster secret
    /// (or replayed a recorded message, or the bytes were corrupted).
    #[error(
        "peer failed authentication ({stage}): it does not hold this cluster's secret, or the \
         handshake was replayed or corrupted"
    )]
    AuthenticationFailed { stage: &'static str },

    /// An authenticated handshake message did not make sense (a bug or a hostile cluster member).
    #[error("malformed handshake message ({stage}): {reason}")]
    BadHandshake { stage: &'static str, reason: String },

    /// The responder refused the data mode the initiator asked for.
    #[error("peer refused the connection: it does not allow {mode} mode")]
    ModeRefused { mode: crate::Mode },

    /// A node name that cannot be sent (empty, longer than 255 bytes, control characters).
    #[error("invalid node name {name:?}: {reason}")]
    BadNodeName { name: String, reason: &'static str },

    /// The Noise library failed outside of authentication (a bug).
    #[error("noise protocol error: {0}")]
    Noise(#[from] snow::Error),

    /// The peer ended the stream between two frames. `graceful`: it sent a Close frame (in
    /// Encrypted mode that is authenticated); otherwise the TCP stream just ended.
    #[error("{}", if *graceful { "connection closed by the peer" } else { "connection closed by the peer (without a close frame)" })]
    Closed { graceful: bool },

    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({during}): unexpected end of stream")]
    Truncated { during: &'static str },

    /// Reading from or writing to the socket failed.
    #[error("{during}: {source}")]
    Io {
        during: &'static str,
        #[source]
        source: io::Error,
    },

    /// A frame header was invalid (the stream is out of step or the peer is broken).
    #[error("invalid frame header: {reason}")]
    BadFrame { reason: String },

    /// A payload length beyond the limit of its frame kind; nothing was allocated for it.
    #[error("{kind} frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        kind: FrameKind,
        len: u64,
        max: usize,
    },

    /// A frame of another kind than the caller expected.
    #[error("expected a {expected} frame, received a {got} frame")]
    UnexpectedFrame {
        expected: &'static str,
        got: FrameKind,
    },

    /// The caller's page buffer cannot hold the page frame that arrived.
    #[error("page frame of {need} bytes does not fit the receive buffer of {have} bytes")]
    BufferTooSmall { need: usize, have: usize },

    /// An encrypted record failed authentication: corrupted, forged, replayed or reordered data.
    #[error("received data failed authentication: corrupted or forged")]
    Decrypt,

    /// A control message could not be encoded.
    #[error("cannot encode control message: {0}")]
    Encode(#[source] postcard::Error),

    /// A control message could not be decoded as the expected type.
    #[error("cannot decode control message: {0}")]
    Decode(#[source] postcard::Error),

    /// A control message decoded, but left bytes over (the peer sent another type).
    #[error("cannot decode control message: {extra} bytes left over after decoding")]
    TrailingBytes { extra: usize },

    /// An earlier call on this half failed or was cancelled in the middle of a frame; the
    /// stream is out of step and the connection must be dropped.
    #[error(
        "connection unusable: an earlier send or receive failed or was cancelled in the middle \
         of a frame"
    )]
    Poisoned,
}

impl WireError {
    /// Whether this is the orderly end of the stream (the peer closed between frames).
    pub fn is_closed(&self) -> bool {
        matches!(self, WireError::Closed { .. })
    }

    pub(crate) fn io(during: &'static str) -> impl FnOnce(io::Error) -> WireError {
        move |source| WireError::Io { during, source }
    }
}
