//! The process side: an [`Endpoint`] is one connection to the local daemon, used with blocking
//! calls. Every call is one request and one reply, matched by id; replies to earlier ids (a
//! daemon replays its last reply after a reconnection) are skipped.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::protocol::{
    self, Answer, DEFAULT_SOCKET, EndpointId, FromDaemon, MAX_DATAGRAM, MAX_MESSAGE, MsgError, Op,
    SOCKET_ENV, ToDaemon,
};

/// How long a call waits for a restarted daemon before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// How long [`Endpoint::recv`] waits for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Return at once.
    NoWait,
    Forever,
    For(Duration),
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: EndpointId,
    pub data: Vec<u8>,
}

/// One endpoint of this process.
#[derive(Debug)]
pub struct Endpoint {
    fd: OwnedFd,
    socket: String,
    id: EndpointId,
    key: [u8; 16],
    next: u64,
    buf: Vec<u8>,
}

impl Endpoint {
    /// Opens an endpoint at the local daemon (the one whose abstract socket is named by
    /// `FERRY_MSG_SOCKET`, default `ferry-msg`). A name must be unique in the cluster.
    pub fn open(name: Option<&str>) -> Result<Endpoint, MsgError> {
        let socket = std::env::var(SOCKET_ENV).unwrap_or_else(|_| DEFAULT_SOCKET.to_string());
        Endpoint::open_at(&socket, name)
    }

    /// Opens an endpoint at the daemon listening on abstract socket `socket`.
    pub fn open_at(socket: &str, name: Option<&str>) -> Result<Endpoint, MsgError> {
        if let Some(n) = name {
            protocol::check_name(n)?;
        }
        let fd = connect(socket)?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let hello = ToDaemon::Open {
            name: name.map(str::to_string),
            fd: fd.as_raw_fd(),
        };
        send_datagram(&fd, &protocol::encode(&hello)?).map_err(io)?;
        let n = recv_datagram(&fd, &mut buf).map_err(io)?;
        if n == 0 {
            return Err(MsgError::Io("the daemon closed the connection".into()));
        }
        match protocol::decode::<FromDaemon>(&buf[..n])? {
            FromDaemon::Opened { endpoint, key } => Ok(Endpoint {
                fd,
                socket: socket.to_string(),
                id: endpoint,
                key,
                next: 1,
                buf,
            }),
            FromDaemon::Refused(e) => Err(e),
            other => Err(MsgError::Protocol(format!("{other:?} instead of Opened"))),
        }
    }

    /// This endpoint's cluster-wide id.
    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    /// The connection's fd (for `poll`: readable does not mean a message, call `recv`).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends `data` to `to` (an id `node:n` or a name). Returns once the local daemon holds the
    /// message: from there it is delivered once, in order, wherever either end moves.
    pub fn send(&mut self, to: &str, data: &[u8]) -> Result<(), MsgError> {
        if data.len() > MAX_MESSAGE {
            return Err(MsgError::TooLarge {
                size: data.len(),
                max: MAX_MESSAGE,
            });
        }
        if to.parse::<EndpointId>().is_err() {
            protocol::check_name(to).map_err(|_| MsgError::BadAddress(to.to_string()))?;
        }
        match self.call(Op::Send {
            to: to.to_string(),
            data: data.to_vec(),
        })? {
            Answer::Sent => Ok(()),
            other => Err(MsgError::Protocol(format!("{other:?} after a send"))),
        }
    }

    /// The next message, in arrival order (per sender: in sending order). `None` when the wait
    /// ended without one.
    pub fn recv(&mut self, wait: Wait) -> Result<Option<Message>, MsgError> {
        let wait_ms = match wait {
            Wait::NoWait => Some(0),
            Wait::Forever => None,
            // A positive wait never becomes "do not wait".
            Wait::For(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
        };
        match self.call(Op::Recv { wait_ms })? {
            Answer::Message { from, data } => Ok(Some(Message { from, data })),
            Answer::Empty => Ok(None),
            Answer::Sent => Err(MsgError::Protocol("Sent after a receive".into())),
        }
    }

    /// One request, its reply. Survives the daemon restarting under it (the request is sent
    /// again on the new connection and answered once).
    fn call(&mut self, op: Op) -> Result<Answer, MsgError> {
        let id = self.next;
        self.next += 1;
        let request = protocol::encode(&ToDaemon::Request { id, op })?;
        let mut sent = false;
        loop {
            if !sent {
                match send_datagram(&self.fd, &request) {
                    Ok(()) => sent = true,
                    Err(e) if lost(e) => {
                        self.reconnect()?;
                        continue;
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            match recv_datagram(&self.fd, &mut self.buf) {
                Ok(0) => {
                    self.reconnect()?;
                    sent = false;
                }
                Ok(n) => match protocol::decode::<FromDaemon>(&self.buf[..n])? {
                    FromDaemon::Reply { id: r, result } if r == id => return result,
                    // A replayed reply to an earlier call.
                    FromDaemon::Reply { .. } => {}
                    other => {
                        return Err(MsgError::Protocol(format!("{other:?} instead of a reply")));
                    }
                },
                Err(e) if lost(e) => {
                    self.reconnect()?;
                    sent = false;
                }
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// A new connection to the (restarted) daemon, at this endpoint's fd number.
    fn reconnect(&mut self) -> Result<(), MsgError> {
        let deadline = Instant::now() + RECONNECT_FOR;
        let mut pause = Duration::from_millis(10);
        loop {
            match connect(&self.socket) {
                Ok(fresh) => {
                    let resume = ToDaemon::Resume {
                        endpoint: self.id.clone(),
                        key: self.key,
                    };
                    nix::unistd::dup3(&fresh, &mut self.fd, OFlag::O_CLOEXEC).map_err(io)?;
                    drop(fresh);
                    match send_datagram(&self.fd, &protocol::encode(&resume)?) {
                        Ok(()) => return Ok(()),
                        Err(e) if lost(e) => {}
                        Err(e) => return Err(io(e)),
                    }
                }
                Err(MsgError::NoDaemon { .. }) if Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

fn io(e: Errno) -> MsgError {
    MsgError::Io(e.desc().to_string())
}

/// The daemon went away (it restarted): reconnect.
fn lost(e: Errno) -> bool {
    matches!(e, Errno::ECONNRESET | Errno::EPIPE | Errno::ENOTCONN)
}

fn connect(socket: &str) -> Result<OwnedFd, MsgError> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io)?;
    let addr = UnixAddr::new_abstract(socket.as_bytes()).map_err(io)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(|e| MsgError::NoDaemon {
        socket: socket.to_string(),
        detail: e.desc().to_string(),
    })?;
    Ok(fd)
}

fn send_datagram(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Errno> {
    loop {
        match socket::send(fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
    }
}

fn recv_datagram(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
