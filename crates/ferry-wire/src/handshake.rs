//! The handshake: mutual authentication with the cluster secret, then role, mode and names.
//!
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`: both sides mix the cluster secret into the key
//! schedule before the first message, so only holders of the secret can produce or read any
//! handshake payload; fresh X25519 ephemerals on both sides give the session keys forward
//! secrecy. The prologue binds the protocol name and the wire version, so peers of different
//! versions or protocols cannot complete a handshake even if the preamble were rewritten.
//!
//! ```text
//!  initiator                                                 responder
//!  preamble ‖ u16 len ‖ msg1 [-> psk, e]  {role, mode}  ───▶  check preamble, decrypt msg1
//!                                                             (fails without the secret:
//!                                                              drop, no DH was computed)
//!         ◀───  preamble ‖ u16 len ‖ msg2 [<- e, ee]  {status, mode, responder name}
//!  u16 len ‖ msg3 [transport, nonce 0]  {initiator name}  ───▶  decrypt msg3: the initiator
//!                                                              holds the ephemeral key of
//!                                                              msg1, so msg1 was not replayed
//!  ═══════════════════ frames (Encrypted or Plain mode) ═══════════════════
//! ```
//!
//! The responder delivers nothing before msg3 has been authenticated: `msg1` alone could be a
//! recording replayed by an attacker (it is encrypted under the secret only), `msg3` proves
//! knowledge of the ephemeral key pair of this very handshake. Every read has the handshake
//! timeout; every failure drops the connection.
//!
//! The preamble is `b"FERRYW"`, the wire version (u8) and a zero byte, in clear, so that a
//! version mismatch is reported as such instead of as an authentication failure. The
//! responder answers a preamble of another version with its own preamble and closes.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snow::{Builder, HandshakeState, StatelessTransportState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::WireError;
use crate::secret::ClusterSecret;
use crate::{DEFAULT_HANDSHAKE_TIMEOUT, WIRE_VERSION};

/// The Noise protocol of every ferry connection.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// The clear-text preamble: magic, version, zero.
const PREAMBLE_MAGIC: [u8; 6] = *b"FERRYW";
pub(crate) const PREAMBLE_LEN: usize = 8;

/// Longest Noise message.
const MAX_NOISE_MSG: usize = 65535;

/// Longest node name in bytes.
pub const MAX_NODE_NAME: usize = 255;

/// msg2 status: accepted.
const STATUS_ACCEPT: u8 = 0;
/// msg2 status: the requested mode is not allowed.
const STATUS_MODE_REFUSED: u8 = 1;

/// What a connection is for, declared by the initiator in the handshake (STYLE: extra
/// connections announce their role first). The responder dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Role {
    /// Control messages (and fault replies) of a migration.
    Control = 1,
    /// A bulk page stream.
    Pages = 2,
    /// Access to a page store.
    Store = 4,
    /// Load sharing between daemons: bids, drafts, remote execution, drain and owner
    /// requests (one request, one answer).
    Cluster = 5,
    /// Message links between daemons: deliveries, links moving with their process, name
    /// lookups (long-lived, numbered requests and answers).
    Messages = 6,
}

impl Role {
    fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Control),
            2 => Some(Role::Pages),
            4 => Some(Role::Store),
            5 => Some(Role::Cluster),
            6 => Some(Role::Messages),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Control => "control",
            Role::Pages => "pages",
            Role::Store => "store",
            Role::Cluster => "cluster",
            Role::Messages => "messages",
        })
    }
}

/// How frames travel after the (always authenticated) handshake; chosen by the initiator,
/// allowed or refused by the responder, bound into the handshake transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Mode {
    /// Every frame, header and payload, in ChaCha20-Poly1305 Noise transport messages.
    Encrypted = 1,
    /// Every frame in clear on the TCP stream: for links nobody else can read or write.
    Plain = 2,
}

impl Mode {
    fn from_u8(v: u8) -> Option<Mode> {
        match v {
            1 => Some(Mode::Encrypted),
            2 => Some(Mode::Plain),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Encrypted => "encrypted",
            Mode::Plain => "plain",
        })
    }
}

/// What the accepting side needs for the handshake.
#[derive(Debug, Clone)]
pub struct AcceptConfig {
    /// This node's name, sent to the peer.
    pub node_name: String,
    /// Limit for every handshake read and write.
    pub timeout: Duration,
    /// Whether initiators may choose [`Mode::Plain`].
    pub allow_plain: bool,
}

impl AcceptConfig {
    /// Defaults: 5 s handshake timeout, Plain mode allowed.
    pub fn new(node_name: impl Into<String>) -> AcceptConfig {
        AcceptConfig {
            node_name: node_name.into(),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            allow_plain: true,
        }
    }
}

/// What both sides know after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// This node's name.
    pub local_node: String,
    /// The name the (authenticated) peer declared.
    pub peer_node: String,
    /// The peer's socket address.
    pub peer_addr: SocketAddr,
    /// The role the initiator declared.
    pub role: Role,
    /// The agreed data mode.
    pub mode: Mode,
    /// Whether this side opened the connection.
    pub initiator: bool,
}

/// A completed handshake.
pub(crate) struct Established {
    pub stream: TcpStream,
    pub transport: StatelessTransportState,
    /// Next transport nonce this side sends with / expects.
    pub send_nonce: u64,
    pub recv_nonce: u64,
    pub info: ConnInfo,
}

pub(crate) fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..6].copy_from_slice(&PREAMBLE_MAGIC);
    p[6] = WIRE_VERSION;
    p
}

pub(crate) fn prologue() -> Vec<u8> {
    format!("ferry-wire v{WIRE_VERSION} {NOISE_PATTERN}").into_bytes()
}

fn builder(
    secret: &ClusterSecret,
    prologue: &[u8],
    initiator: bool,
) -> Result<HandshakeState, WireError> {
    let params = NOISE_PATTERN.parse()?;
    let b = Builder::new(params)
        .psk(0, secret.as_bytes())?
        .prologue(prologue)?;
    Ok(if initiator {
        b.build_initiator()?
    } else {
        b.build_responder()?
    })
}

/// Checks a node name before it is sent or after it was received.
pub(crate) fn check_node_name(name: &str) -> Result<(), WireError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NODE_NAME {
        "longer than 255 bytes"
    } else if name.chars().any(char::is_control) {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(WireError::BadNodeName {
        name: name.to_owned(),
        reason,
    })
}

/// Reads exactly `buf.len()` bytes within `timeout`.
async fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    timeout: Duration,
    stage: &'static str,
) -> Result<(), WireError> {
    let r = tokio::time::timeout(timeout, stream.read_exact(buf)).await;
    handshake_io(r.map(|r| r.map(drop)), timeout, stage)
}

async fn write_all(
    stream: &mut TcpStream,
    buf: &[u8],
    timeout: Duration,
    stage: &'static str,
) -> Result<(), WireError> {
    let r = tokio::time::timeout(timeout, stream.write_all(buf)).await;
    handshake_io(r, timeout, stage)
}

/// A handshake read or write as an error of this crate: a timeout, the peer hanging up (end
/// of stream, broken pipe, reset), or another I/O error.
fn handshake_io(
    r: Result<std::io::Result<()>, tokio::time::error::Elapsed>,
    timeout: Duration,
    stage: &'static str,
) -> Result<(), WireError> {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    match r {
        Err(_) => Err(WireError::HandshakeTimeout { stage, timeout }),
        Ok(Ok(())) => Ok(()),
        Ok(Err(e))
            if matches!(
                e.kind(),
                UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted
            ) =>
        {
            Err(WireError::HandshakeClosed { stage })
        }
        Ok(Err(e)) => Err(WireError::Io {
            during: stage,
            source: e,
        }),
    }
}

/// Reads a u16-length-prefixed Noise message into `buf`, returns its length.
async fn read_noise_msg(
    stream: &mut TcpStream,
    buf: &mut [u8],
    timeout: Duration,
    stage: &'static str,
) -> Result<usize, WireError> {
    let mut len = [0u8; 2];
    read_exact(stream, &mut len, timeout, stage).await?;
    let len = usize::from(u16::from_le_bytes(len));
    read_exact(stream, &mut buf[..len], timeout, stage).await?;
    Ok(len)
}

/// Appends a u16-length-prefixed Noise message to `out`.
fn push_noise_msg(out: &mut Vec<u8>, msg: &[u8]) {
    // Noise messages are at most 65535 bytes.
    out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    out.extend_from_slice(msg);
}

/// Checks a received preamble.
fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(), WireError> {
    if p[..6] != PREAMBLE_MAGIC || p[7] != 0 {
        return Err(WireError::BadPreamble { got: *p });
    }
    if p[6] != WIRE_VERSION {
        return Err(WireError::VersionMismatch {
            ours: WIRE_VERSION,
            theirs: p[6],
        });
    }
    Ok(())
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    // Checked by check_node_name: at most 255 bytes.
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

fn decode_name(b: &[u8], stage: &'static str) -> Result<String, WireError> {
    let bad = |reason: &str| WireError::BadHandshake {
        stage,
        reason: reason.to_owned(),
    };
    let (&len, rest) = b.split_first().ok_or_else(|| bad("no node name"))?;
    if rest.len() != usize::from(len) {
        return Err(bad("node name length does not match the message"));
    }
    let name = std::str::from_utf8(rest)
        .map_err(|_| bad("node name is not UTF-8"))?
        .to_owned();
    check_node_name(&name).map_err(|e| bad(&e.to_string()))?;
    Ok(name)
}

/// The initiator's side: `stream` is a fresh TCP connection to the responder.
pub(crate) async fn initiate(
    mut stream: TcpStream,
    secret: &ClusterSecret,
    role: Role,
    mode: Mode,
    node_name: &str,
    timeout: Duration,
) -> Result<Established, WireError> {
    check_node_name(node_name)?;
    let peer_addr = stream
        .peer_addr()
        .map_err(WireError::io("reading the peer address"))?;
    let _ = stream.set_nodelay(true);
    let prologue = prologue();
    let mut hs = builder(secret, &prologue, true)?;
    let mut buf = vec![0u8; MAX_NOISE_MSG];
    let mut out = Vec::with_capacity(256);

    // msg1: -> psk, e {role, mode}
    let n = hs.write_message(&[role as u8, mode as u8], &mut buf)?;
    out.extend_from_slice(&preamble());
    push_noise_msg(&mut out, &buf[..n]);
    write_all(
        &mut stream,
        &out,
        timeout,
        "sending the first handshake message",
    )
    .await?;

    // msg2: <- e, ee {status, mode, name}
    let stage = "waiting for the responder's reply";
    let mut p = [0u8; PREAMBLE_LEN];
    read_exact(&mut stream, &mut p, timeout, stage).await?;
    check_preamble(&p)?;
    let mut msg = vec![0u8; MAX_NOISE_MSG];
    let len = read_noise_msg(&mut stream, &mut msg, timeout, stage).await?;
    let stage = "responder's handshake reply";
    let n = hs
        .read_message(&msg[..len], &mut buf)
        .map_err(|_| WireError::AuthenticationFailed { stage })?;
    let reply = &buf[..n];
    let bad = |reason: &str| WireError::BadHandshake {
        stage,
        reason: reason.to_owned(),
    };
    let [status, agreed, name @ ..] = reply else {
        return Err(bad("too short"));
    };
    match *status {
        STATUS_ACCEPT => {}
        STATUS_MODE_REFUSED => return Err(WireError::ModeRefused { mode }),
        s => return Err(bad(&format!("unknown status {s}"))),
    }
    if *agreed != mode as u8 {
        return Err(bad(&format!(
            "responder answered mode {agreed}, we asked for {}",
            mode as u8
        )));
    }
    let peer_node = decode_name(name, stage)?;
    if !hs.is_handshake_finished() {
        return Err(bad("handshake not finished after two messages"));
    }
    let transport = hs.into_stateless_transport_mode()?;

    // msg3: transport message 0 {name}: proves we hold msg1's ephemeral key.
    let mut payload = Vec::with_capacity(1 + node_name.len());
    encode_name(&mut payload, node_name);
    let n = transport.write_message(0, &payload, &mut buf)?;
    out.clear();
    push_noise_msg(&mut out, &buf[..n]);
    write_all(
        &mut stream,
        &out,
        timeout,
        "sending the handshake confirmation",
    )
    .await?;

    tracing::debug!(peer = %peer_addr, peer_node, %role, %mode, "connected and authenticated");
    Ok(Established {
        stream,
        transport,
        send_nonce: 1,
        recv_nonce: 0,
        info: ConnInfo {
            local_node: node_name.to_owned(),
            peer_node,
            peer_addr,
            role,
            mode,
            initiator: true,
        },
    })
}

/// The responder's side: `stream` was just accepted. Nothing the peer sends after its
/// handshake is read before the handshake has been authenticated completely.
pub(crate) async fn respond(
    mut stream: TcpStream,
    secret: &ClusterSecret,
    config: &AcceptConfig,
) -> Result<Established, WireError> {
    check_node_name(&config.node_name)?;
    let timeout = config.timeout;
    let peer_addr = stream
        .peer_addr()
        .map_err(WireError::io("reading the peer address"))?;
    let _ = stream.set_nodelay(true);

    let mut p = [0u8; PREAMBLE_LEN];
    read_exact(&mut stream, &mut p, timeout, "waiting for the preamble").await?;
    if let Err(e) = check_preamble(&p) {
        if let WireError::VersionMismatch { .. } = e {
            // Tell the peer which version we speak; it reports the mismatch on its side.
            let _ = write_all(&mut stream, &preamble(), timeout, "answering the preamble").await;
        }
        return Err(e);
    }

    // msg1: -> psk, e {role, mode}
    let prologue = prologue();
    let mut hs = builder(secret, &prologue, false)?;
    let mut msg = vec![0u8; MAX_NOISE_MSG];
    let mut buf = vec![0u8; MAX_NOISE_MSG];
    let len = read_noise_msg(
        &mut stream,
        &mut msg,
        timeout,
        "waiting for the first handshake message",
    )
    .await?;
    let stage = "first handshake message";
    let n = hs
        .read_message(&msg[..len], &mut buf)
        .map_err(|_| WireError::AuthenticationFailed { stage })?;
    let bad = |stage, reason: String| WireError::BadHandshake { stage, reason };
    let &[role, mode] = &buf[..n] else {
        return Err(bad(stage, format!("{n} bytes instead of 2")));
    };
    let role = Role::from_u8(role).ok_or_else(|| bad(stage, format!("unknown role {role}")))?;
    let mode = Mode::from_u8(mode).ok_or_else(|| bad(stage, format!("unknown mode {mode}")))?;

    // msg2: <- e, ee {status, mode, name}
    let refused = mode == Mode::Plain && !config.allow_plain;
    let mut payload = Vec::with_capacity(3 + config.node_name.len());
    payload.push(if refused {
        STATUS_MODE_REFUSED
    } else {
        STATUS_ACCEPT
    });
    payload.push(mode as u8);
    encode_name(&mut payload, &config.node_name);
    let n = hs.write_message(&payload, &mut buf)?;
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 2 + n);
    out.extend_from_slice(&preamble());
    push_noise_msg(&mut out, &buf[..n]);
    write_all(&mut stream, &out, timeout, "sending the handshake reply").await?;
    if refused {
        return Err(WireError::ModeRefused { mode });
    }
    if !hs.is_handshake_finished() {
        return Err(bad(
            stage,
            "handshake not finished after two messages".into(),
        ));
    }
    let transport = hs.into_stateless_transport_mode()?;

    // msg3: transport message 0 {name}
    let len = read_noise_msg(
        &mut stream,
        &mut msg,
        timeout,
        "waiting for the handshake confirmation",
    )
    .await?;
    let stage = "handshake confirmation";
    let n = transport
        .read_message(0, &msg[..len], &mut buf)
        .map_err(|_| WireError::AuthenticationFailed { stage })?;
    let peer_node = decode_name(&buf[..n], stage)?;

    tracing::debug!(peer = %peer_addr, peer_node, %role, %mode, "accepted and authenticated");
    Ok(Established {
        stream,
        transport,
        send_nonce: 0,
        recv_nonce: 1,
        info: ConnInfo {
            local_node: config.node_name.clone(),
            peer_node,
            peer_addr,
            role,
            mode,
            initiator: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_checked() {
        assert!(check_node_name("node-1.example").is_ok());
        assert!(check_node_name(&"x".repeat(255)).is_ok());
        assert_eq!(
            check_node_name("").unwrap_err().to_string(),
            "invalid node name \"\": empty"
        );
        assert_eq!(
            check_node_name("a\nb").unwrap_err().to_string(),
            "invalid node name \"a\\nb\": contains control characters"
        );
        assert!(check_node_name(&"é".repeat(128)).is_err());
    }

    #[test]
    fn preamble_checks() {
        assert!(check_preamble(&preamble()).is_ok());
        let mut p = preamble();
        p[6] = 7;
        assert_eq!(
            check_preamble(&p).unwrap_err().to_string(),
            "peer speaks ferry wire protocol version 7, this node speaks version 1"
        );
        assert_eq!(
            check_preamble(b"GET / HT").unwrap_err().to_string(),
            "peer is not a ferry daemon: it sent [47, 45, 54, 20, 2f, 20, 48, 54] instead of \
             the ferry preamble"
        );
    }

    #[test]
    fn prologue_names_version_and_protocol() {
        assert_eq!(
            prologue(),
            b"ferry-wire v1 Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".to_vec()
        );
    }
}
