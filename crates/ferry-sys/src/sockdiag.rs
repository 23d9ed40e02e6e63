//! Unix domain sockets of ferry's network namespace as the kernel reports them through
//! `sock_diag` (`NETLINK_SOCK_DIAG`, `AF_UNIX`): type, state, peer, name and socket file,
//! queued bytes (or pending connections and backlog) and shutdown state, by inode number. This is how ferry learns which socket is the other end of
//! a socket pair, which `/proc` does not say.

use std::collections::HashMap;

use std::os::unix::ffi::OsStrExt;

use netlink_packet_core::{
    Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::nlas::{Nla, UnixDiagName, Vfs};
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{Result, SysError};

/// One unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: u8,
    /// `TCP_ESTABLISHED` (1) for a connected stream or seqpacket socket, `TCP_LISTEN`, or
    /// `TCP_CLOSE` (7).
    pub state: u8,
    /// The inode of the socket it is connected to.
    pub peer: Option<u64>,
    /// Bound to a name (a path or an abstract name).
    pub named: bool,
    /// The name it is bound to (an accepted socket shows its listener's).
    pub name: Option<UnixName>,
    /// For a socket bound to a path: the device (as `st_dev`) and inode of its socket file.
    pub file: Option<(u64, u64)>,
    /// Bytes waiting to be read (stream), or queued datagrams' bytes; for a listening socket,
    /// the connections not yet accepted.
    pub rqueue: u32,
    /// For a listening socket: its backlog (`listen`'s second argument).
    pub backlog: u32,
    /// `RCV_SHUTDOWN` (1) and `SEND_SHUTDOWN` (2) bits.
    pub shutdown: u8,
}

/// The name a unix socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixName {
    /// A path in the file system, as given to `bind`.
    Path(Vec<u8>),
    /// An abstract name (without its leading NUL byte).
    Abstract(Vec<u8>),
}

fn failed(detail: impl std::fmt::Display) -> SysError {
    SysError::Parse {
        path: "sock_diag (AF_UNIX)".into(),
        detail: detail.to_string(),
    }
}

/// Every unix socket of this network namespace, by inode number.
pub fn unix_sockets() -> Result<HashMap<u64, UnixSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| failed(format!("socket: {e}")))?;
    socket
        .bind_auto()
        .map_err(|e| failed(format!("bind: {e}")))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| failed(format!("connect: {e}")))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            // Every state: connected, listening, and unconnected (datagram) sockets.
            state_flags: StateFlags::from_bits_retain(u32::MAX),
            inode: 0,
            show_flags: ShowFlags::NAME | ShowFlags::VFS | ShowFlags::PEER | ShowFlags::RQLEN,
            cookie: [0xff; 8],
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(|e| failed(format!("send: {e}")))?;

    let mut out = HashMap::new();
    let mut reply = vec![0u8; 64 << 10];
    loop {
        let size = socket
            .recv(&mut &mut reply[..], 0)
            .map_err(|e| failed(format!("recv: {e}")))?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[offset..size])
                .map_err(|e| failed(format!("decoding a reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(r)) => {
                    let mut s = UnixSocket {
                        kind: r.header.kind,
                        state: r.header.state,
                        peer: None,
                        named: false,
                        name: None,
                        file: None,
                        rqueue: 0,
                        backlog: 0,
                        shutdown: 0,
                    };
                    for nla in &r.nlas {
                        match nla {
                            Nla::Name(n) => {
                                s.named = true;
                                s.name = Some(match n {
                                    UnixDiagName::Pathname(p) => {
                                        UnixName::Path(p.as_bytes().to_vec())
                                    }
                                    UnixDiagName::Abstract(a) => UnixName::Abstract(a.clone()),
                                });
                            }
                            Nla::Vfs(v) => s.file = Some(socket_file(v)),
                            Nla::Peer(p) if *p != 0 => s.peer = Some(u64::from(*p)),
                            Nla::ReceiveQueueLength(rq, wq) => {
                                s.rqueue = *rq;
                                if s.state == TCP_LISTEN {
                                    s.backlog = *wq;
                                }
                            }
                            Nla::Shutdown(b) => s.shutdown = *b,
                            _ => {}
                        }
                    }
                    out.insert(u64::from(r.header.inode), s);
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(failed(format!("the kernel said {e}"))),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// `TCP_LISTEN`: the state of a listening unix socket.
pub const TCP_LISTEN: u8 = 10;

/// The device (as `st_dev` encodes it) and inode of a socket's file (`UNIX_DIAG_VFS`, whose
/// device is the kernel's `s_dev`: major in the bits above 20).
fn socket_file(v: &Vfs) -> (u64, u64) {
    let mut raw = [0u8; 8];
    v.emit(&mut raw);
    let inode = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let dev = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (
        crate::host::makedev(dev >> 20, dev & 0xf_ffff),
        u64::from(inode),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &impl AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|m| m.ino())
            .unwrap_or(0)
    }

    #[test]
    fn a_socket_pair_names_its_peer_and_its_queue() {
        use std::io::Write;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        a.write_all(b"hello").expect("write");
        let all = unix_sockets().expect("sock_diag dump");
        let (ia, ib) = (inode(&a), inode(&b));
        let sa = all.get(&ia).expect("end a listed");
        let sb = all.get(&ib).expect("end b listed");
        assert_eq!(sa.peer, Some(ib));
        assert_eq!(sb.peer, Some(ia));
        assert_eq!(sa.kind, 1); // SOCK_STREAM
        assert_eq!(sb.rqueue, 5);
        assert_eq!(sa.rqueue, 0);
        assert!(!sa.named && sa.shutdown == 0);
        drop(a);
        let all = unix_sockets().expect("sock_diag dump");
        assert_ne!(all.get(&ib).map(|s| s.shutdown), Some(0));
    }
}
