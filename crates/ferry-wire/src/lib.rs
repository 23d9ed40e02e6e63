//! ferry-wire: the authenticated transport between ferry daemons.
//!
//! A daemon restores processes with their original credentials, so whoever can send it an
//! image owns the host. Every connection therefore starts with a mutual authentication by the
//! cluster secret ([`ClusterSecret`]); nothing a peer sends is delivered before it completed.
//! After that, frames: control messages (serde values, postcard) and page frames (raw bytes).
//! The message types belong to the daemon; this crate moves bytes. `docs/wire-protocol.md`
//! has these tables and the security argument.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_wire::{AcceptConfig, ClusterSecret, Connection, Listener, Mode, Role};
//! use std::time::Duration;
//! let secret = ClusterSecret::load("/run/ferry/secret")?;
//!
//! // Destination: authenticated connections only.
//! let mut listener = Listener::bind("0.0.0.0:7070", secret.clone(), AcceptConfig::new("n2")).await?;
//! # let dest = async move {
//! let conn = listener.accept().await?;
//! assert_eq!((conn.peer_node(), conn.role()), ("n1", Role::Pages));
//! let (_tx, mut rx) = conn.into_split();
//! let mut buf = vec![0u8; ferry_wire::MAX_PAGES_PAYLOAD];
//! let page = rx.recv_pages(&mut buf).await?;
//! # Ok::<_, Box<dyn std::error::Error>>(()) };
//!
//! // Source.
//! let conn = Connection::connect("n2:7070", &secret, Role::Pages, Mode::Plain, "n1",
//!                                Duration::from_secs(5)).await?;
//! let (mut tx, _rx) = conn.into_split();
//! tx.send_pages(0x7f00_0000_0000, 0, &[0u8; 4096]).await?;
//! # Ok(()) }
//! ```
//!
//! # Handshake
//!
//! Noise `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, the 32-byte cluster secret as `psk0`,
//! prologue `"ferry-wire v1 Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s"`. On the TCP stream, before
//! any frame:
//!
//! | step | from | bytes | Noise | payload (after decryption) |
//! |---|---|---|---|---|
//! | 1 | initiator | preamble (8) ‖ u16 len ‖ msg1 | `-> psk, e` | role u8, mode u8 |
//! | 2 | responder | preamble (8) ‖ u16 len ‖ msg2 | `<- e, ee` | status u8 (0 accepted, 1 mode refused), mode u8, name len u8, responder name |
//! | 3 | initiator | u16 len ‖ msg3 | transport, nonce 0 | name len u8, initiator name |
//!
//! - Preamble: `b"FERRYW"`, wire version (u8, now [`WIRE_VERSION`] = 1), 0. In clear so a
//!   version mismatch is reported as such; it is also bound by the prologue. A responder
//!   answers a preamble of another version with its own and closes.
//! - The responder returns a connection only after msg3 decrypted: msg1 could be a replay,
//!   msg3 proves the ephemeral key of this handshake. Any failure drops the connection.
//! - Every handshake read and write has the timeout (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
//! - Roles ([`Role`]): 1 control, 2 pages, 3 faults, 4 store. Modes ([`Mode`]): 1 encrypted,
//!   2 plain (the responder may refuse plain: [`AcceptConfig::allow_plain`]). Node names: 1 to
//!   255 bytes of UTF-8 without control characters.
//!
//! # Frames
//!
//! | offset | size | field | |
//! |---|---|---|---|
//! | 0 | 3 | magic | `b"FRY"` |
//! | 3 | 1 | version | [`WIRE_VERSION`] |
//! | 4 | 2 | kind (u16 LE) | 0 invalid, 1 control, 2 pages, 3 close ([`FrameKind`]) |
//! | 6 | 2 | flags (u16 LE) | none defined: must be 0 |
//! | 8 | 4 | len (u32 LE) | payload bytes: control ≤ 64 MiB, pages ≤ 16 MiB, close 0 |
//! | 12 | 4 | tag (u32 LE) | pages: caller-defined; otherwise 0 |
//! | 16 | 8 | addr (u64 LE) | pages: caller-defined (the address); otherwise 0 |
//! | 24 | len | payload | control: postcard; pages: raw bytes |
//!
//! A header is validated completely (including the length limit) before its payload is read
//! or any memory is allocated for it.
//!
//! # Modes
//!
//! | mode | on the wire after the handshake | protects |
//! |---|---|---|
//! | Encrypted | header as one Noise transport message (24 + 16 bytes), payload in messages of ≤ 65519 + 16 bytes; no length prefixes (sizes follow from the header); nonces count per direction | confidentiality and integrity of every frame, ordering, an authenticated close |
//! | Plain | header and payload in clear, control frames too | nothing after the handshake: only for links no one else can read or inject into |
//!
//! Both modes authenticate the peer at connect time; that is never optional. An end of the
//! stream between frames is [`WireError::Closed`] (`graceful` if a close frame came first),
//! inside a frame [`WireError::Truncated`].

#![forbid(unsafe_code)]

use std::time::Duration;

mod conn;
mod error;
mod frame;
mod handshake;
mod listener;
mod secret;

#[cfg(test)]
mod tests;

pub use conn::{Connection, Received, Receiver, Sender};
pub use error::WireError;
pub use frame::{
    FRAME_MAGIC, FrameKind, HEADER_LEN, MAX_CONTROL_PAYLOAD, MAX_PAGES_PAYLOAD, PageFrameHeader,
};
pub use handshake::{AcceptConfig, ConnInfo, MAX_NODE_NAME, Mode, NOISE_PATTERN, Role};
pub use listener::{AcceptError, Listener, MAX_PENDING_HANDSHAKES};
pub use secret::{ClusterSecret, SECRET_LEN, SecretError};

/// Version of the wire protocol (preamble, prologue, frame headers). Versioned apart from the
/// image format; both ends must speak the same.
pub const WIRE_VERSION: u8 = 1;

/// Default limit for each handshake read.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
