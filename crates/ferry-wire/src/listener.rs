//! The accepting side: a TCP listener that hands out only authenticated connections.
//!
//! Handshakes run concurrently (at most [`MAX_PENDING_HANDSHAKES`] at a time), so a peer that
//! stalls its handshake until the timeout does not hold up the others. [`Listener::accept`]
//! returns the next connection whose handshake completed, or the next failure (with the
//! peer's address) for the caller to log; failures are never connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinSet;

use crate::conn::Connection;
use crate::error::WireError;
use crate::handshake::AcceptConfig;
use crate::secret::ClusterSecret;

/// Handshakes in progress at most; further TCP connections wait in the kernel's backlog.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Why [`Listener::accept`] returned no connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Accepting a TCP connection failed (e.g. out of file descriptors); the listener stays
    /// usable.
    #[error("cannot accept a connection: {0}")]
    Listen(#[source] io::Error),
    /// A peer failed its handshake; its connection was dropped.
    #[error("handshake with {peer} failed: {source}")]
    Handshake {
        peer: SocketAddr,
        #[source]
        source: WireError,
    },
}

/// Accepts TCP connections and authenticates them.
pub struct Listener {
    tcp: TcpListener,
    secret: Arc<ClusterSecret>,
    config: Arc<AcceptConfig>,
    pending: JoinSet<(SocketAddr, Result<Connection, WireError>)>,
}

impl Listener {
    /// Binds to `addr`.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        secret: ClusterSecret,
        config: AcceptConfig,
    ) -> io::Result<Listener> {
        Ok(Self::from_tcp(
            TcpListener::bind(addr).await?,
            secret,
            config,
        ))
    }

    /// Wraps a bound listener.
    pub fn from_tcp(tcp: TcpListener, secret: ClusterSecret, config: AcceptConfig) -> Listener {
        Listener {
            tcp,
            secret: Arc::new(secret),
            config: Arc::new(config),
            pending: JoinSet::new(),
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The next authenticated connection, or the next failure. Cancel-safe: handshakes in
    /// progress continue and are returned by a later call. Dropping the listener aborts them.
    pub async fn accept(&mut self) -> Result<Connection, AcceptError> {
        loop {
            if self.pending.len() >= MAX_PENDING_HANDSHAKES
                && let Some(done) = self.pending.join_next().await
            {
                return finished(done);
            }
            tokio::select! {
                biased;
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    return finished(done);
                }
                r = self.tcp.accept() => match r {
                    Ok((stream, peer)) => {
                        let secret = Arc::clone(&self.secret);
                        let config = Arc::clone(&self.config);
                        self.pending.spawn(async move {
                            (peer, Connection::accept(stream, &secret, &config).await)
                        });
                    }
                    Err(e) => return Err(AcceptError::Listen(e)),
                },
            }
        }
    }
}

fn finished(
    done: Result<(SocketAddr, Result<Connection, WireError>), tokio::task::JoinError>,
) -> Result<Connection, AcceptError> {
    match done {
        Ok((_, Ok(conn))) => Ok(conn),
        Ok((peer, Err(source))) => Err(AcceptError::Handshake { peer, source }),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Tasks are aborted only when the listener is dropped.
        Err(e) => Err(AcceptError::Listen(io::Error::other(e))),
    }
}
