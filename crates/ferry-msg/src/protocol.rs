//! What a process and its local daemon say to each other: one postcard-encoded datagram per
//! message on a `SOCK_SEQPACKET` connection (atomic: a process frozen by a migration has either
//! sent a whole request or none of it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest message body, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Longest endpoint name, in bytes.
pub const MAX_NAME: usize = 64;

/// The abstract Unix socket name the daemon's message service listens on (each network
/// namespace, hence each test host, has its own).
pub const DEFAULT_SOCKET: &str = "ferry-msg";

/// Environment variable that overrides [`DEFAULT_SOCKET`] for the library.
pub const SOCKET_ENV: &str = "FERRY_MSG_SOCKET";

/// Largest datagram either side sends: a full message plus its envelope.
pub const MAX_DATAGRAM: usize = MAX_MESSAGE + 1024;

/// A cluster-wide endpoint id: the node that created it and a number unique there. Written
/// `node:number`; the node part is where senders look first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EndpointId {
    pub node: String,
    pub n: u64,
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.n)
    }
}

impl FromStr for EndpointId {
    type Err = MsgError;
    fn from_str(s: &str) -> Result<EndpointId, MsgError> {
        let bad = || MsgError::BadAddress(s.to_string());
        let (node, n) = s.rsplit_once(':').ok_or_else(bad)?;
        if node.is_empty() {
            return Err(bad());
        }
        Ok(EndpointId {
            node: node.to_string(),
            n: n.parse().map_err(|_| bad())?,
        })
    }
}

/// Checks an endpoint name: 1–64 bytes of letters, digits, `-`, `_`, `.` (no `:`, which marks
/// an id).
pub fn check_name(name: &str) -> Result<(), MsgError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(MsgError::BadName(name.to_string()))
    }
}

/// Process → daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToDaemon {
    /// First datagram of a new connection: a new endpoint, named or not. `fd` is the socket's
    /// number in the process, for the migration that will re-create it.
    Open { name: Option<String>, fd: i32 },
    /// First datagram of a re-established connection (sent by the restorer after a migration,
    /// or by the library after a daemon restart).
    Resume { endpoint: EndpointId, key: [u8; 16] },
    /// Requests carry increasing ids; a request repeated after a reconnection is answered from
    /// the daemon's record, never executed twice.
    Request { id: u64, op: Op },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `to`: an endpoint id (`node:n`) or a name.
    Send { to: String, data: Vec<u8> },
    /// `wait_ms`: `None` blocks until a message comes, `Some(0)` does not block.
    Recv { wait_ms: Option<u64> },
}

/// Daemon → process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromDaemon {
    Opened {
        endpoint: EndpointId,
        key: [u8; 16],
    },
    Refused(MsgError),
    Reply {
        id: u64,
        result: Result<Answer, MsgError>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Sent,
    Message {
        from: EndpointId,
        data: Vec<u8>,
    },
    /// The wait ended without a message.
    Empty,
}

/// Everything that can go wrong, for the process (and on the wire between it and its daemon).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MsgError {
    #[error("message of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("bad endpoint name {0:?}: 1-64 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("bad endpoint address {0:?}: a name or an id written node:number")]
    BadAddress(String),
    #[error("an endpoint named {0:?} already exists in the cluster")]
    NameTaken(String),
    #[error("no endpoint named {0:?} in the cluster")]
    NoSuchName(String),
    #[error("endpoint {0} is closed")]
    Closed(String),
    #[error("no ferry message service on this host (abstract socket @{socket}): {detail}")]
    NoDaemon { socket: String, detail: String },
    #[error("the connection to the ferry daemon failed: {0}")]
    Io(String),
    #[error("the daemon sent something this library does not understand: {0}")]
    Protocol(String),
    #[error("the daemon refused: {0}")]
    Daemon(String),
}

/// Encodes one datagram.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, MsgError> {
    postcard::to_allocvec(msg).map_err(|e| MsgError::Protocol(e.to_string()))
}

/// Decodes one datagram.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, MsgError> {
    postcard::from_bytes(bytes).map_err(|e| MsgError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_are_checked() {
        let id: EndpointId = "n1:42".parse().expect("valid id");
        assert_eq!(
            id,
            EndpointId {
                node: "n1".into(),
                n: 42
            }
        );
        assert_eq!(id.to_string(), "n1:42");
        for bad in ["", "n1", ":4", "n1:x", "n1:-1"] {
            assert!(bad.parse::<EndpointId>().is_err(), "{bad:?} parsed");
        }
        assert!(check_name("pong-1.a_b").is_ok());
        for bad in ["", "a:b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_full_message_fits_a_datagram() {
        let req = ToDaemon::Request {
            id: u64::MAX,
            op: Op::Send {
                to: "x".repeat(MAX_NAME),
                data: vec![0xff; MAX_MESSAGE],
            },
        };
        assert!(encode(&req).expect("encodes").len() <= MAX_DATAGRAM);
        let reply = FromDaemon::Reply {
            id: u64::MAX,
            result: Ok(Answer::Message {
                from: EndpointId {
                    node: "x".repeat(255),
                    n: u64::MAX,
                },
                data: vec![0xff; MAX_MESSAGE],
            }),
        };
        let bytes = encode(&reply).expect("encodes");
        assert!(bytes.len() <= MAX_DATAGRAM);
        assert_eq!(decode::<FromDaemon>(&bytes).expect("decodes"), reply);
    }
}
