//! ferry's message API, for processes that ferry manages: open a named endpoint, send to any
//! other endpoint of the cluster by name or id, receive. Messages keep their per-sender order
//! and are neither lost nor duplicated while either end migrates.
//!
//! The process holds one connection (an `AF_UNIX` `SOCK_SEQPACKET` socket) per endpoint to the
//! local daemon's message service, which keeps the endpoint's queues and sequence numbers —
//! the communication region — outside the process. When the process migrates, the restorer
//! connects the same fd to the new host's daemon and the link state follows separately; when
//! the daemon restarts, this library reconnects by itself. Either way the program does not
//! notice: a call in progress completes exactly once.
//!
//! ```no_run
//! let mut ep = ferry_msg::Endpoint::open(Some("pong"))?;
//! let m = ep.recv(ferry_msg::Wait::Forever)?.expect("a message");
//! ep.send(&m.from.to_string(), &m.data)?;
//! # Ok::<(), ferry_msg::MsgError>(())
//! ```

pub mod protocol;

mod client;

pub use client::{Endpoint, Message, Wait};
pub use protocol::{EndpointId, MAX_MESSAGE, MsgError};
