//! Unix domain sockets of ferry's network namespace as the kernel reports them through
//! `sock_diag` (`NETLINK_SOCK_DIAG`, `AF_UNIX`): type, state, peer, name, queued bytes and
//! shutdown state, by inode number. This is how ferry learns which socket is the other end of
//! a socket pair, which `/proc` does not say.

use std::collections::HashMap;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::nlas::Nla;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{Result, SysError};

/// One unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Bytes waiting to be read (stream), or queued datagrams' bytes.
    pub rqueue: u32,
    /// `RCV_SHUTDOWN` (1) and `SEND_SHUTDOWN` (2) bits.
    pub shutdown: u8,
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
            show_flags: ShowFlags::NAME | ShowFlags::PEER | ShowFlags::RQLEN,
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
                        rqueue: 0,
                        shutdown: 0,
                    };
                    for nla in &r.nlas {
                        match nla {
                            Nla::Name(_) => s.named = true,
                            Nla::Peer(p) if *p != 0 => s.peer = Some(u64::from(*p)),
                            Nla::ReceiveQueueLength(rq, _) => s.rqueue = *rq,
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
