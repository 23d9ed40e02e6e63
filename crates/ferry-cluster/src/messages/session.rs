//! Processes' connections to the message service: the abstract `SOCK_SEQPACKET` socket
//! `@ferry-msg` of this daemon's network namespace. The first datagram opens an endpoint or
//! resumes one; every later one is a request, answered through the link (which may outlive
//! the connection).

use std::sync::Arc;

use ferry_msg::EndpointId;
use ferry_msg::protocol::{self, FromDaemon, MAX_DATAGRAM, MsgError, ToDaemon};
use tokio::sync::mpsc;
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};
use tracing::{debug, warn};

use super::{Service, ToSession};

/// Listens on abstract socket `name`.
pub fn bind(name: &str) -> std::io::Result<UnixSeqpacketListener> {
    let mut path = vec![0u8];
    path.extend_from_slice(name.as_bytes());
    let path = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(path);
    UnixSeqpacketListener::bind(path)
}

pub async fn accept_loop(service: Arc<Service>, mut listener: UnixSeqpacketListener) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                tokio::spawn(serve(Arc::clone(&service), conn));
            }
            Err(e) => {
                warn!(error = %e, "message socket accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(service: Arc<Service>, conn: UnixSeqpacket) {
    let pid = conn.peer_cred().ok().and_then(|c| c.pid()).unwrap_or(0);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = match conn.recv(&mut buf).await {
        Ok(info) if info.bytes_read() > 0 => info.bytes_read(),
        _ => return,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<ToSession>();
    let endpoint: EndpointId = match protocol::decode::<ToDaemon>(&buf[..n]) {
        Ok(ToDaemon::Open { name, fd }) => match service.open(pid, name, fd, tx).await {
            Ok((endpoint, key)) => {
                if write(
                    &conn,
                    &FromDaemon::Opened {
                        endpoint: endpoint.clone(),
                        key,
                    },
                )
                .await
                .is_err()
                {
                    service.disconnected(&endpoint);
                    return;
                }
                endpoint
            }
            Err(e) => {
                let _ = write(&conn, &FromDaemon::Refused(e)).await;
                return;
            }
        },
        Ok(ToDaemon::Resume { endpoint, key }) => {
            match service.resume(pid, &endpoint, key, tx).await {
                Ok(()) => endpoint,
                Err(e) => {
                    let _ = write(&conn, &FromDaemon::Refused(e)).await;
                    return;
                }
            }
        }
        Ok(ToDaemon::Request { .. }) => {
            let e = MsgError::Protocol("a request before Open or Resume".into());
            let _ = write(&conn, &FromDaemon::Refused(e)).await;
            return;
        }
        Err(e) => {
            let _ = write(&conn, &FromDaemon::Refused(e)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            // Replies first: a process waits for them.
            biased;
            cmd = rx.recv() => match cmd {
                Some(ToSession::Write(bytes)) => {
                    if conn.send(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(ToSession::Drain(done)) => {
                    // The process is stopped: whatever it sent is queued on the socket now.
                    while let Some(n) = try_recv(&conn, &mut buf) {
                        handle(&service, &endpoint, &buf[..n]).await;
                    }
                    let _ = done.send(());
                    debug!(endpoint = %endpoint, "connection handed over");
                    return;
                }
                // The link went elsewhere.
                None => return,
            },
            got = conn.recv(&mut buf) => match got {
                Ok(info) if info.bytes_read() > 0 => {
                    handle(&service, &endpoint, &buf[..info.bytes_read()]).await;
                }
                _ => break,
            },
        }
    }
    service.disconnected(&endpoint);
}

async fn handle(service: &Arc<Service>, endpoint: &EndpointId, bytes: &[u8]) {
    match protocol::decode::<ToDaemon>(bytes) {
        Ok(ToDaemon::Request { id, op }) => service.request(endpoint, id, op).await,
        other => warn!(endpoint = %endpoint, ?other, "unexpected datagram from a process"),
    }
}

/// A datagram already queued, without waiting. A real non-blocking read: the reactor may not
/// have seen the socket become readable yet.
fn try_recv(conn: &UnixSeqpacket, buf: &mut [u8]) -> Option<usize> {
    use nix::sys::socket::{MsgFlags, recv};
    loop {
        match recv(conn.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) if n > 0 => return Some(n),
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return None,
        }
    }
}

async fn write(conn: &UnixSeqpacket, msg: &FromDaemon) -> Result<(), ()> {
    let bytes = protocol::encode(msg).map_err(|_| ())?;
    conn.send(&bytes).await.map(|_| ()).map_err(|_| ())
}
